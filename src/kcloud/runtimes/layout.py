"""How many replicas a device gets, and how many threads each: the session layout.

Measured on this project's 2-core machine by `benchmarks/runtime_layout.py` (see
`docs/runtime.md` for the figures): for batched inference on a CPU, N single-thread sessions
fed concurrently beat one N-thread session, because one intra-op thread pool synchronises at
every operator while independent sessions never wait for each other. So a CPU gets one replica
per core, one thread each.

- An emulated device computes on the host, next to the real CPU's replicas and every other
  emulated device, so it gets one replica of one thread: the host's cores are shared, and
  its modelled figures, not its host speed, are what it stands for.
- An NVIDIA GPU gets one replica: one session keeps the GPU busy with batches, and its one CPU
  thread only launches kernels. (Not measured here: no GPU on the development machine.)
- Any other device has no layout: no installed runtime serves it (`plan_for` refuses it).
"""

from __future__ import annotations

import os

from kcloud.devices.device import Device
from kcloud.runtimes.session import plan_for


def host_cores() -> int:
    """Cores this process may run on (its affinity mask, e.g. inside a container), at least 1."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not Linux
        return max(1, os.cpu_count() or 1)


def default_layout(device: Device, cores: int) -> tuple[int, int]:
    """`(replicas, threads_per_replica)` for serving on `device` with `cores` host cores."""
    if cores < 1:
        raise ValueError(f"cores must be >= 1, got {cores}")
    plan = plan_for(device)
    if device.emulated:
        return 1, 1
    if plan.on_host:
        return cores, 1
    return 1, 1
