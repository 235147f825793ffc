"""An emulated device's own figures in a bench result, modelled, never mixed with the host's.

A run on an emulated device computes on the host CPU: LoadGen's throughput and latency are the
host's. The device's energy counter is modelled from the chip's catalog figures, but over the
host's run window: dividing the host's samples by it (samples per joule) would describe neither
device. So a run on an emulated device reports two separate things:

- the host's measurements, as LoadGen gave them (`metric`, `latency_ns`), labelled as the host's;
- the chip's own figures for this model (`device_model`), all modelled from its catalog profile
  (`kcloud.farm.profiles.modelled_profile`: the roofline of the model's FLOPs over the chip's
  sourced peak and its weights over the chip's memory bandwidth, × the chip's efficiency factor;
  its TDP at full load): service time per batch, throughput at full load, power, and MLPerf
  Power's figure from those alone. Queueing under the run's load is not modelled here.
"""

from __future__ import annotations

from typing import Any

from kcloud.devices.device import Device
from kcloud.farm.profiles import modelled_profile
from kcloud.models.repository import ModelEntry

#: Why an emulated run's energy block carries no figure of its own.
MIXED = ("emulated device: its modelled energy over the host's run window would mix the host's "
         "speed with the chip's power, so no energy figure is given; a run in-process on the device "
         "reports the chip's own modelled figures (device_model)")


def device_model(entry: ModelEntry, device: Device, scenario: str, samples_per_query: int) -> dict[str, Any]:
    """The chip's modelled figures for `entry` in `scenario` (unknowns None, with the reason)."""
    batching = entry.config.batching
    largest = max(1, batching.batch_rows(device.spec.kind) or batching.max_batch_size or 1)
    profile = modelled_profile(device.spec, entry.name, entry.config.flops_per_sample, max_batch=largest,
                               weight_bytes=entry.config.memory_bytes)
    block: dict[str, Any] = {
        "modelled": True,
        "chip": device.spec.key,
        "basis": profile.basis,
        "reason": profile.unknown_reason,
        "scope": "service time at full load, without queueing under the run's load",
    }
    one, full = profile.latency_s(1), profile.latency_s(largest)
    per_query = profile.latency_s(samples_per_query if scenario == "MultiStream" else 1)
    watts = profile.busy_watts
    sps = profile.samples_per_second
    block["service_time_ms"] = {
        "batch_1": None if one is None else one * 1e3,
        f"batch_{largest}": None if full is None else full * 1e3,
    }
    block["samples_per_second"] = sps
    block["power_watts"] = watts
    if scenario in ("Offline", "Server"):
        value = sps / watts if sps is not None and watts else None
        block["efficiency"] = {"name": "samples_per_joule", "unit": "samples/J", "value": value}
    else:
        value = watts * per_query * 1e3 if watts is not None and per_query is not None else None
        block["efficiency"] = {"name": "millijoules_per_query", "unit": "mJ/query", "value": value}
    return block


def chat_device_model(entry: ModelEntry, device: Device) -> dict[str, Any]:
    """A generative model's tokens on the emulated chip, modelled from its catalog profile alone:
    each token's compute (`generation.flops_per_token`) over the chip's peak × efficiency, at TDP.
    Compute-bound by construction: decoding's memory-bandwidth limit is not modelled (the config's
    `memory_bytes` counts the KV cache with the weights, at the engine's own dtype)."""
    generation = entry.config.generation
    flops = generation.flops_per_token if generation is not None else None
    profile = modelled_profile(device.spec, entry.name, flops, max_batch=1)
    per_token, watts = profile.latency_s(1), profile.busy_watts
    return {
        "modelled": True,
        "chip": device.spec.key,
        "basis": profile.basis,
        "reason": profile.unknown_reason,
        "scope": "compute per token at full load; memory bandwidth and queueing not modelled",
        "tokens_per_second": None if not per_token else 1.0 / per_token,
        "power_watts": watts,
        "efficiency": {
            "name": "joules_per_token",
            "unit": "J/token",
            "value": watts * per_token if watts is not None and per_token is not None else None,
        },
    }
