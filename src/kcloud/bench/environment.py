"""The environment snapshot of a run: what ran, on what, with which software.

A result is only comparable across vendors if it says what produced it: the kcloud version, the
device as the catalog describes it (each figure with its source), driver and SDK versions where
the plugins or installed packages tell them, the model file's hash and the host.
"""

from __future__ import annotations

import platform
import socket
from importlib import metadata
from typing import Any

import numpy as np
import onnxruntime as ort
import psutil

from kcloud import __version__
from kcloud.devices.device import Device
from kcloud.models.repository import ModelEntry

#: Distributions whose versions matter to a result when installed (runtime, driver bindings, vendor SDKs).
_PACKAGES = (
    "mlcommons-loadgen",
    "onnxruntime",
    "onnxruntime-gpu",
    "numpy",
    "tokenizers",
    "nvidia-ml-py",
    "rebel-compiler",
    "optimum-rbln",
    "furiosa-smi-py",
    "furiosa-sdk",
    "furiosa-llm",
    "httpx",
)


def _installed() -> dict[str, str]:
    versions = {}
    for name in _PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return versions


def _cpu_model() -> str | None:
    try:
        from kcloud.devices.plugins.cpu import cpu_model_name

        return cpu_model_name()
    except Exception:  # the snapshot must never fail a run
        return platform.processor() or None


def device_snapshot(device: Device) -> dict[str, Any]:
    """A device as `result.json` records it: catalog spec with sources, plugin attributes."""
    return {
        "uid": device.uid,
        "name": device.name,
        "vendor": device.vendor,
        "plugin": device.plugin,
        "kind": device.spec.kind,
        "emulated": device.emulated,
        "healthy": device.healthy,
        "memory_bytes": device.memory_bytes,
        "runtimes": list(device.runtimes),
        "attributes": dict(device.attributes),
        "spec": device.spec.model_dump(mode="json"),
    }


def model_snapshot(entry: ModelEntry) -> dict[str, Any]:
    return {
        "name": entry.name,
        "version": entry.version,
        "sha256": entry.sha256,
        "weights_path": str(entry.weights_path),
        "batching": entry.config.batching.model_dump(),
        "accuracy_target": entry.config.accuracy.model_dump() if entry.config.accuracy else None,
        "flops_per_sample": entry.config.flops_per_sample,
        # The compiled artifact the run served (target, key, gate), or None for the source graph.
        "artifact": {**entry.artifact.describe(), "accuracy": entry.artifact.record.get("accuracy")}
        if entry.artifact
        else None,
    }


def environment_snapshot(entry: ModelEntry, device: Device | None = None, **extra: Any) -> dict[str, Any]:
    memory = psutil.virtual_memory().total
    return {
        "kcloud_version": __version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "host": {
            "hostname": socket.gethostname(),
            "cpu": _cpu_model(),
            "logical_cores": psutil.cpu_count(logical=True),
            "physical_cores": psutil.cpu_count(logical=False),
            "memory_bytes": memory,
        },
        "packages": _installed(),
        "onnxruntime": {"version": ort.__version__, "providers": list(ort.get_available_providers())},
        "numpy": np.__version__,
        "device": device_snapshot(device) if device is not None else None,
        "model": model_snapshot(entry),
        **extra,
    }
