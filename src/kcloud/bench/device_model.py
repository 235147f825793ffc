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
  Power's figure from those alone;
- inside it, the chip under this run's own load (`device_model.under_load`): the digital twin's
  simulation (`kcloud.twin.mlperf`) of the load LoadGen offered (its scenario, counts and
  effective settings) through the replica's batcher over the same profile: throughput, latency
  percentiles, the scenario's percentile and whether Server's latency bound holds, and the
  energy of the twin's power model over the modelled time, with MLPerf Power's figure from it.
  That figure is the like of a real device's, which is measured over its run at its load.
"""

from __future__ import annotations

from typing import Any

from kcloud.bench.energy import efficiency
from kcloud.devices.device import Device
from kcloud.farm.profiles import DeviceProfile, modelled_profile
from kcloud.models.repository import ModelEntry
from kcloud.twin.mlperf import ScenarioLoad, null_figures, simulate_scenario

#: Why an emulated run's energy block carries no figure of its own.
MIXED = ("emulated device: its modelled energy over the host's run window would mix the host's "
         "speed with the chip's power, so no energy figure is given; a run in-process on the device "
         "reports the chip's own modelled figures (device_model; under this run's load, where the twin "
         "models it, device_model.under_load)")
#: Why an accuracy run has no figures under its load.
ACCURACY_RUN = ("an accuracy run: LoadGen judges its answers, not its timing; the twin models the load "
                "of performance runs")
#: Why a chat model has no figures under its load.
NO_LLM = "the twin does not model LLM engines (continuous batching, tokens)"


def offered_load(
    scenario: str, mode: str, effective: dict[str, Any], query_count: int | None
) -> ScenarioLoad | str:
    """The load a finished LoadGen run offered, from the effective settings of its detail log and
    its query count; else why there is none."""
    if mode != "performance":
        return ACCURACY_RUN
    if not effective or not query_count:
        return "LoadGen's detail log gives no effective settings or query count: the run did not finish"
    bound_ns = effective.get("target_latency_ns") or 0
    percentile = effective.get("target_latency_percentile")
    return ScenarioLoad(
        scenario=scenario,
        queries=int(query_count),
        samples_per_query=int(effective.get("samples_per_query") or 1),
        target_qps=effective.get("target_qps") if scenario == "Server" else None,
        latency_bound_s=bound_ns / 1e9 if scenario == "Server" and bound_ns > 0 else None,
        percentile=None if scenario == "Offline" or percentile is None else float(percentile),
        seed=int(effective.get("schedule_rng_seed") or 0),
    )


def device_model(
    entry: ModelEntry,
    device: Device,
    scenario: str,
    samples_per_query: int,
    offered: ScenarioLoad | str,
    *,
    replicas: int = 1,
) -> dict[str, Any]:
    """The chip's modelled figures for `entry` in `scenario` (unknowns None, with the reason): at
    full load, and under the load the run `offered` (or why there are none) through `replicas`."""
    batching = entry.config.batching
    largest = max(1, batching.batch_rows(device.spec.kind) or batching.max_batch_size or 1)
    profile = _profile(entry, device, largest)
    block: dict[str, Any] = {
        "modelled": True,
        "chip": device.spec.key,
        "basis": profile.basis,
        "reason": profile.unknown_reason,
        "scope": ("service_time_ms, samples_per_second, power_watts, efficiency: the chip at full load, "
                  "without queueing; under_load: the twin's simulation of this run's load"),
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
    # the twin's service times go up to the model's largest batch (what the twin's replicas use)
    biggest = batching.max_batch_size
    whole = profile if largest >= biggest else _profile(entry, device, biggest)
    block["under_load"] = under_load(scenario, offered, device, whole, entry, replicas)
    return block


def _profile(entry: ModelEntry, device: Device, max_batch: int) -> DeviceProfile:
    return modelled_profile(device.spec, entry.name, entry.config.flops_per_sample, max_batch=max_batch,
                            weight_bytes=entry.config.memory_bytes)


def under_load(
    scenario: str,
    offered: ScenarioLoad | str,
    device: Device,
    profile: DeviceProfile,
    entry: ModelEntry,
    replicas: int,
) -> dict[str, Any]:
    """The twin's figures for the run's load, with MLPerf Power's figure from their energy."""
    if isinstance(offered, str):
        return null_figures(None, offered)
    figures = simulate_scenario(offered, device, profile, entry.config.batching, replicas=replicas)
    energy = figures.get("energy")
    if energy is not None:
        energy["efficiency"] = efficiency(
            scenario, energy["joules"], samples=energy["samples"], queries=energy["queries"]
        )
    return figures


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
        "under_load": null_figures(None, NO_LLM),
        "tokens_per_second": None if not per_token else 1.0 / per_token,
        "power_watts": watts,
        "efficiency": {
            "name": "joules_per_token",
            "unit": "J/token",
            "value": watts * per_token if watts is not None and per_token is not None else None,
        },
    }
