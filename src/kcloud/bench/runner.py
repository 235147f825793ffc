"""One `kcloud bench run`: check everything, run LoadGen, write the MLPerf-style run directory.

`prepare_run` does every check a user's input can fail (scenario, model, device, data set
against the model's signature, the gateway, settings) and raises `BenchError` before anything
is written or started. `execute_run` then starts the SUT, warms it up, runs LoadGen with a live
progress view and writes `result.json` beside LoadGen's logs in
`<out>/<system>/<model>/<scenario>/<mode>/`. A chat model is prepared by `kcloud.bench.llm_run`
and driven by the same `execute_run` through the hooks of its prepared run.

`result.json` exists from the moment LoadGen is about to start, marked `"complete": false`; it
is replaced by the full result when LoadGen returns. Ctrl-C (or any crash) therefore leaves an
incomplete result that never carries a validity.
"""

from __future__ import annotations

import re
import threading
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import mlperf_loadgen as lg
import numpy as np
from rich.console import Console

from kcloud.bench.accuracy import output_dtype, score_accuracy_log
from kcloud.bench.calibrate import Calibration, CalibrationError, apply_calibration, calibrate
from kcloud.bench.device_model import MIXED, device_model, offered_load
from kcloud.bench.energy import EnergyMeter, efficiency
from kcloud.bench.environment import environment_snapshot
from kcloud.bench.errors import BenchError, BenchInterrupted
from kcloud.bench.inprocess import InProcessBackend
from kcloud.bench.loadgen_logs import (
    ACCURACY_FILE,
    DETAIL_FILE,
    SUMMARY_FILE,
    TRACE_FILE,
    latency_stats_ns,
    parse_detail,
    parse_summary,
    power_window,
)
from kcloud.bench.network import GatewayEnergy, NetworkBackend
from kcloud.bench.profile import write_profile
from kcloud.bench.progress import RunProgress
from kcloud.bench.result import SCENARIO_METRIC, SCHEMA, TIMINGS_FILE, write_result
from kcloud.bench.rules import mlperf_rules
from kcloud.bench.settings import (
    CHAT_SETTINGS,
    MODES,
    SCENARIOS,
    BenchSettings,
    describe_loadgen_settings,
    to_loadgen,
)
from kcloud.bench.sut import AsyncSUT, Backend, LoadGenSUT
from kcloud.devices.device import Device
from kcloud.home import kcloud_home
from kcloud.models.datasets import Dataset, load_dataset
from kcloud.models.errors import ModelFileError, ModelNotFoundError
from kcloud.models.repository import ModelEntry, ModelRepository, default_repository_path

if TYPE_CHECKING:
    from kcloud.bench.llm_run import ChatPreparedRun

#: How long the warm-up measure may take before LoadGen (quick runs / full runs).
CALIBRATION_S = {True: 0.5, False: 5.0}
ENERGY_INTERVAL_S = 0.5
#: Requests the network SUT keeps in flight by default (best measured against a local gateway on 2 cores).
NETWORK_MAX_IN_FLIGHT = 16

_SAFE = re.compile(r"[^A-Za-z0-9._-]+")


def default_out_dir() -> Path:
    return kcloud_home() / "bench"


def safe_name(name: str) -> str:
    return _SAFE.sub("-", name).strip("-.") or "system"


@dataclass
class RunRequest:
    """What the user asked for; nothing here has been checked yet."""

    model: str
    scenario: str
    mode: str = "performance"
    device: str | None = None
    url: str | None = None
    api_key: str | None = None
    settings: BenchSettings = field(default_factory=BenchSettings)
    quick: bool = False
    #: With `quick`: the settings the user gave (file and flags), before the quick profile was
    #: merged into `settings`; a chat run applies its own quick profile under them.
    explicit: BenchSettings | None = None
    system: str | None = None
    out: Path | None = None
    farm_files: list[Path] = field(default_factory=list)
    isolation: str = "thread"
    repository: Path | None = None
    version: int | None = None
    #: Compile target whose artifact an in-process run serves (None: the source graph).
    target: str | None = None
    #: With `url`: the name the gateway serves the model under (a deployment's; None: the model's).
    served_name: str | None = None


@dataclass
class PreparedRun:
    """A checked run of a tensor model (data set samples, OIP outputs).

    `execute_run` drives any prepared run through these hooks; `llm_run.ChatPreparedRun` has the
    same ones for chat models."""

    request: RunRequest
    entry: ModelEntry
    dataset: Dataset
    backend: Backend
    run_dir: Path
    system: str
    device: Device | None
    inventory: Any = None
    max_in_flight: int = 1

    @property
    def sample_count(self) -> int:
        return len(self.dataset)

    def sample_set(self) -> dict[str, Any]:
        """The query sample library, for the environment snapshot."""
        return {"path": str(self.dataset.path), "samples": len(self.dataset), "metric": self.dataset.metric}

    def new_sut(self) -> AsyncSUT:
        return LoadGenSUT(
            self.backend, self.dataset.inputs, output=self.dataset.output, max_in_flight=self.max_in_flight
        )

    def warm_up(self, sut: AsyncSUT) -> Calibration:
        request = self.request
        return sut.run(
            calibrate(
                self.backend,
                self.dataset.inputs,
                request.scenario,
                mode=request.mode,
                budget_s=CALIBRATION_S[request.quick],
                samples_per_query=request.settings.samples_per_query or 8,
                max_in_flight=self.max_in_flight,
                output=self.dataset.output,
            )
        )

    def loadgen_settings(self, settings: BenchSettings) -> lg.TestSettings:
        return to_loadgen(self.entry.name, self.request.scenario, self.request.mode, settings)

    def reset_stats(self) -> None:
        if isinstance(self.backend, InProcessBackend):
            self.backend.reset_stats()

    def sut_stats(self, sut: AsyncSUT) -> dict[str, Any]:
        stats = sut_counts(sut)
        if isinstance(self.backend, InProcessBackend):
            stats["replica"] = self.backend.stats()
        return stats

    def finish(self, result: dict[str, Any], sut: AsyncSUT, meter: Meter | None) -> None:
        _finish(self, result, sut, meter)


def _open_repository(request: RunRequest) -> ModelRepository:
    """The repository, with the requested model built first when it is one of kcloud's built-ins."""
    repository = ModelRepository(request.repository or default_repository_path())
    from kcloud.models.builtin import BUILTINS, ensure_builtin_models

    # every built-in, buildable here or not: one whose extra is missing fails with what to install
    if request.model in BUILTINS:
        try:
            ensure_builtin_models(repository, include=[request.model])
        except Exception as exc:  # a failed build names the model and what went wrong
            raise BenchError(
                f"could not build the built-in model {request.model!r} into {repository.root}: {exc}"
            ) from None
    return repository


def _entry(request: RunRequest, repository: ModelRepository) -> ModelEntry:
    try:
        entry = repository.get(request.model, request.version)
    except ModelNotFoundError as exc:
        raise BenchError(f"unknown model: {exc}") from None
    except ModelFileError as exc:
        raise BenchError(f"model {request.model!r} is broken: {exc}") from None
    if request.target is None:
        return entry
    if request.url is not None:
        raise BenchError(
            "--target applies to in-process runs; behind a gateway, the deployment's "
            "precision picks the artifact (kcloud deploy create --precision)"
        )
    from kcloud.models.artifacts import with_artifact
    from kcloud.models.compiler import compile_model

    try:
        return with_artifact(entry, compile_model(entry, request.target).artifact)
    except ModelFileError as exc:
        raise BenchError(str(exc)) from None


def _dataset(entry: ModelEntry) -> Dataset:
    if entry.config.accuracy is None or not entry.config.accuracy.dataset:
        raise BenchError(
            f"model {entry.name!r} has no labelled data set (config `accuracy.dataset`); "
            "LoadGen needs one for its query sample library"
        )
    try:
        dataset = load_dataset(entry)
    except ModelFileError as exc:
        raise BenchError(f"data set of model {entry.name!r} does not fit it: {exc}") from None
    if not len(dataset):
        raise BenchError(f"data set {dataset.path} of model {entry.name!r} is empty")
    try:
        output_dtype(entry.config, dataset.output)
    except ValueError as exc:
        raise BenchError(f"model {entry.name!r}: {exc}") from None
    return dataset


def local_device(request: RunRequest) -> tuple[Any, Device]:
    from kcloud.devices.inventory import FarmFileError, Inventory

    try:
        inventory = Inventory.build(request.farm_files, include_local=True)
    except FarmFileError as exc:
        raise BenchError(f"farm file: {exc}") from None
    if request.device is None:
        cpus = [d for d in inventory.devices if d.spec.kind == "cpu" and not d.emulated]
        if not cpus:
            raise BenchError("no local CPU device found; name one with --device")
        return inventory, cpus[0]
    try:
        return inventory, inventory.get(request.device)
    except KeyError:
        known = ", ".join(d.uid + (" (emulated)" if d.emulated else "") for d in inventory.devices)
        hint = "" if request.farm_files else "; emulated devices need --farm FILE"
        raise BenchError(f"unknown device {request.device!r}; devices: {known or 'none'}{hint}") from None


def default_max_in_flight(entry: ModelEntry, replicas: int) -> int:
    """Enough samples in flight to fill every replica's batches twice, within its queue limit."""
    batching = entry.config.batching
    per_replica = min(max(batching.max_batch_size, 1) * 2, batching.queue_limit)
    return max(1, per_replica * replicas)


def prepare_run(request: RunRequest) -> PreparedRun | ChatPreparedRun:
    """Every check that a user's input can fail, before anything is started or written.

    A generative model goes to `kcloud.bench.llm_run` (chat samples, LoadGen's token latencies);
    everything before that (scenario, mode, SUT choice, the repository) is shared."""
    if request.scenario not in SCENARIOS:
        raise BenchError(f"unknown scenario {request.scenario!r}; choose one of {', '.join(SCENARIOS)}")
    if request.mode not in MODES:
        raise BenchError(f"unknown mode {request.mode!r}; choose one of {', '.join(MODES)}")
    if request.device is not None and request.url is not None:
        raise BenchError("give --device (in-process SUT) or --url (network SUT), not both")
    if request.served_name is not None and request.url is None:
        raise BenchError("--served-name names a deployment behind a gateway: it needs --url")
    if request.isolation not in ("thread", "process"):
        raise BenchError(f"--isolation must be thread or process, got {request.isolation!r}")
    repository = _open_repository(request)
    entry = _entry(request, repository)
    if entry.config.generation is not None:
        from kcloud.bench.llm_run import prepare_chat_run  # imports this module: not at the top

        return prepare_chat_run(request, repository, entry)
    chat_only = [key for key in CHAT_SETTINGS if key in request.settings.given()]
    if chat_only:
        raise BenchError(
            f"--{chat_only[0].replace('_', '-')} applies to chat models; {entry.name} is not one "
            f"(platform {entry.config.platform})"
        )
    dataset = _dataset(entry)
    # the settings must be acceptable to LoadGen before anything starts
    to_loadgen(entry.name, request.scenario, request.mode, request.settings)
    inventory = None
    device = None
    if request.url is not None:
        in_flight = request.settings.max_in_flight or NETWORK_MAX_IN_FLIGHT
        backend: Backend = NetworkBackend(
            request.url, entry, output=dataset.output, max_in_flight=in_flight, api_key=request.api_key,
            served_name=request.served_name,
        )
        backend.preflight()
        host = backend.url.split("://", 1)[1]
        system = request.system or f"gateway-{host}"
    else:
        inventory, device = local_device(request)
        from kcloud.runtimes.session import UnsupportedDeviceError, plan_for

        try:
            plan_for(device)
        except UnsupportedDeviceError as exc:
            raise BenchError(f"device {device.uid} cannot run ONNX models here: {exc}") from None
        if device.spec.kind not in entry.config.device_kinds:
            raise BenchError(
                f"model {entry.name} may run on {', '.join(entry.config.device_kinds)}; "
                f"device {device.uid} is a {device.spec.kind}"
            )
        backend = InProcessBackend(
            entry,
            device,
            repository,
            isolation=request.isolation,  # type: ignore[arg-type]
            emulation=inventory.emulated,
        )
        in_flight = request.settings.max_in_flight or default_max_in_flight(entry, backend.replicas)
        system = request.system or f"{device.node}-{device.id}" + ("-emulated" if device.emulated else "")
    system = safe_name(system)
    out = request.out or default_out_dir()
    run_dir = out / system / safe_name(entry.name) / request.scenario / request.mode
    if run_dir.exists() and not run_dir.is_dir():
        raise BenchError(f"{run_dir} exists and is not a directory")
    return PreparedRun(request, entry, dataset, backend, run_dir, system, device, inventory, in_flight)


# ------------------------------------------------------------------------------ execution


@dataclass
class Meter:
    meter: EnergyMeter | None
    reason: str | None
    source: str | None
    scope: str | None


_SCOPES = {
    "cpu": (
        "RAPL package energy, all packages summed: the whole CPU socket (other processes included), "
        "not wall power"
    ),
    "nvidia": "NVML total energy of the GPU board (host CPU work not included)",
    "emulated": (
        "MODELLED, not measured: idle share of the catalog TDP plus the dynamic share for the "
        "modelled busy time of the work given to the emulated device"
    ),
}


def _energy_meter(prepared: PreparedRun | ChatPreparedRun) -> Meter:
    backend = prepared.backend
    if isinstance(backend, GatewayEnergy):
        uids, reason = backend.serving_devices()
        if not uids:
            return Meter(None, reason, None, None)
        meter = EnergyMeter(uids, backend.read_energy, interval_s=ENERGY_INTERVAL_S)
        return Meter(
            meter,
            None,
            f"gateway {backend.url}/metrics (kcloud_device_energy_joules_total)",
            "device-level counters of the gateway's devices that served this model "
            "(any other work on them included)",
        )
    device = prepared.device
    assert device is not None and prepared.inventory is not None
    inventory = prepared.inventory
    meter = EnergyMeter.for_devices(
        {device.uid: lambda: inventory.sample(device)}, interval_s=ENERGY_INTERVAL_S
    )
    scope = _SCOPES.get(device.plugin, f"{device.plugin} plugin's energy counter")
    return Meter(meter, None, f"local inventory, {device.plugin} plugin", scope)


def _log_settings(run_dir: Path) -> lg.LogSettings:
    settings = lg.LogSettings()
    settings.log_output.outdir = str(run_dir)
    settings.log_output.prefix = "mlperf_log_"
    settings.log_output.suffix = ""
    settings.log_output.prefix_with_datetime = False
    settings.log_output.copy_summary_to_stdout = False
    settings.log_output.copy_detail_to_stdout = False
    settings.log_mode = lg.LoggingMode.AsyncPoll
    settings.enable_trace = False
    return settings


def _clear_previous(run_dir: Path) -> None:
    """A rerun replaces the previous run of the same directory; nothing else is touched."""
    for name in (SUMMARY_FILE, DETAIL_FILE, ACCURACY_FILE, TRACE_FILE, TIMINGS_FILE):
        (run_dir / name).unlink(missing_ok=True)


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds")


def _run_loadgen(
    sut: LoadGenSUT, total: int, ts: lg.TestSettings, run_dir: Path, progress: RunProgress | None
) -> None:
    """StartTest in a thread so that the main thread keeps the view live and receives Ctrl-C."""
    sut_handle = lg.ConstructSUT(sut.issue_query, sut.flush_queries)
    qsl_handle = lg.ConstructQSL(total, total, sut.load_samples, sut.unload_samples)
    failure: list[BaseException] = []

    def target() -> None:
        try:
            lg.StartTestWithLogSettings(sut_handle, qsl_handle, ts, _log_settings(run_dir))
        except BaseException as exc:  # surfaced in the main thread
            failure.append(exc)

    thread = threading.Thread(target=target, name="kcloud-bench-loadgen", daemon=True)
    thread.start()
    while thread.is_alive():
        thread.join(0.1)
        if progress is not None:
            progress.update(sut.issued, sut.completed)
    if progress is not None:
        progress.update(sut.issued, sut.completed)
    lg.DestroyQSL(qsl_handle)
    lg.DestroySUT(sut_handle)
    if failure:
        raise failure[0]


def _base_result(
    prepared: PreparedRun | ChatPreparedRun,
    settings: BenchSettings,
    calibration: Calibration | None,
    ts: lg.TestSettings | None,
    started_at: str,
) -> dict[str, Any]:
    entry, request = prepared.entry, prepared.request
    return {
        "schema": SCHEMA,
        "complete": False,
        "status": "running",
        "system": prepared.system,
        "model": {
            "name": entry.name,
            "version": entry.version,
            "sha256": entry.sha256,
            "artifact": f"{entry.artifact.target} {entry.artifact.key[:12]}" if entry.artifact else None,
        },
        "scenario": request.scenario,
        "mode": request.mode,
        "quick": request.quick,
        "started_at": started_at,
        "finished_at": None,
        "sut": prepared.backend.describe(),
        "loadgen": {"validity": None},
        "mlperf_rules": None if ts is None else mlperf_rules(entry.name, request.scenario, request.mode, ts),
        "metric": None,
        "latency_ns": {},
        "accuracy": None,
        "energy": None,
        "settings": {
            "defaults": "MLPerf rules from the mlperf.conf built into LoadGen",
            "requested": request.settings.given(),
            "used": settings.given(),
            "calibration": calibration.as_dict() if calibration else None,
            "loadgen_test_settings": describe_loadgen_settings(ts) if ts is not None else None,
            "effective": None,
        },
        "environment": environment_snapshot(entry, prepared.device, dataset=prepared.sample_set()),
        "notes": [],
    }


def execute_run(
    prepared: PreparedRun | ChatPreparedRun, console: Console, *, show_progress: bool = True
) -> Path:
    """Run it; returns the path of `result.json`. Ctrl-C raises `BenchInterrupted` after writing
    the incomplete result (LoadGen itself cannot be stopped: the caller ends the process)."""
    request = prepared.request
    run_dir = prepared.run_dir
    sut = prepared.new_sut()
    started_at = _now()
    result: dict[str, Any] | None = None
    calibration: Calibration | None = None
    settings = request.settings
    meter: Meter | None = None
    try:
        try:
            sut.start()
        except Exception as exc:
            raise BenchError(f"the SUT did not start: {type(exc).__name__}: {exc}") from None
        try:
            calibration = prepared.warm_up(sut)
        except CalibrationError as exc:
            raise BenchError(str(exc)) from None
        settings = apply_calibration(request.scenario, request.settings, calibration, quick=request.quick)
        ts = prepared.loadgen_settings(settings)
        run_dir.mkdir(parents=True, exist_ok=True)
        _clear_previous(run_dir)
        result = _base_result(prepared, settings, calibration, ts, started_at)
        write_result(run_dir, result)
        meter = (
            _energy_meter(prepared)
            if request.mode == "performance"
            else Meter(None, "accuracy mode: energy is measured in performance runs only", None, None)
        )
        sut.reset_counters()
        prepared.reset_stats()
        if meter.meter is not None:
            meter.meter.start()
        min_duration_s = ts.min_duration_ms / 1000.0
        title = f"{request.scenario} {request.mode}"
        with RunProgress(
            console, title=title, min_duration_s=min_duration_s, enabled=show_progress
        ) as progress:
            _run_loadgen(sut, prepared.sample_count, ts, run_dir, progress)
        if meter.meter is not None:
            meter.meter.stop()
    except KeyboardInterrupt:
        if meter is not None and meter.meter is not None:
            meter.meter.stop()
        result = result or _base_result(prepared, settings, calibration, None, started_at)
        result.update(status="interrupted", complete=False, finished_at=_now())
        result["loadgen"] = {
            "validity": None,
            "validity_note": "interrupted (Ctrl-C) before LoadGen finished: no validity",
        }
        result["sut_stats"] = prepared.sut_stats(sut)
        result["notes"].append("run interrupted with Ctrl-C; LoadGen's logs in this directory are partial")
        path = write_result(run_dir, result)
        raise BenchInterrupted(str(path)) from None
    except BaseException:
        sut.stop(timeout=10)
        raise
    sut.stop()
    assert result is not None
    prepared.finish(result, sut, meter)
    return write_result(run_dir, result)


def sut_counts(sut: AsyncSUT) -> dict[str, Any]:
    """What the SUT counted during LoadGen's run (the warm-up is forgotten)."""
    return {
        "issued": sut.issued,
        "completed": sut.completed,
        "errors": sut.errors,
        "first_error": sut.first_error,
        "max_in_flight": sut.max_in_flight,
    }


def read_loadgen(prepared: PreparedRun | ChatPreparedRun, result: dict[str, Any]) -> dict[str, Any]:
    """Copy LoadGen's verdict and figures from its logs into `result`; returns its detail events."""
    request, run_dir = prepared.request, prepared.run_dir
    summary_path, detail_path = run_dir / SUMMARY_FILE, run_dir / DETAIL_FILE
    summary = parse_summary(summary_path.read_text(encoding="utf-8")) if summary_path.exists() else None
    events = parse_detail(detail_path.read_text(encoding="utf-8")) if detail_path.exists() else {}
    result.update(status="finished", complete=summary is not None, finished_at=_now())
    result["settings"]["effective"] = {
        k.removeprefix("effective_"): v for k, v in events.items() if str(k).startswith("effective_")
    }
    loadgen: dict[str, Any] = {
        "version": events.get("loadgen_version"),
        "validity": None,
        "checks": summary.checks if summary else {},
        "recommendations": summary.recommendations if summary else [],
        "invalid_reason": (events.get("result_invalid_reason") or "").strip() or None,
        "early_stopping": summary.early_stopping if summary else [],
        "headline": {"name": summary.headline_name, "value": summary.headline_value} if summary else None,
        "result_query_count": events.get("result_query_count"),
        "errors": events.get("num_errors"),
        "files": {"summary": SUMMARY_FILE, "detail": DETAIL_FILE, "accuracy": ACCURACY_FILE},
    }
    if summary is None:
        loadgen["validity_note"] = "LoadGen wrote no summary"
        result["notes"].append("LoadGen wrote no mlperf_log_summary.txt; the run is incomplete")
    elif request.mode == "performance":
        loadgen["validity"] = summary.validity
        loadgen["validity_source"] = "mlperf_log_summary.txt, line 'Result is'"
        if events.get("result_validity") not in (None, summary.validity):
            result["notes"].append(
                f"LoadGen's detail log says {events.get('result_validity')} "
                f"while its summary says {summary.validity}"
            )
    else:
        loadgen["validity_note"] = (
            "LoadGen judges performance runs only; accuracy runs pass or fail on the target"
        )
    result["loadgen"] = loadgen
    result["latency_ns"] = latency_stats_ns(events)
    result["throughput"] = {
        k.removeprefix("result_"): v
        for k, v in events.items()
        if k
        in (
            "result_samples_per_second",
            "result_completed_samples_per_sec",
            "result_scheduled_samples_per_sec",
            "result_qps_with_loadgen_overhead",
            "result_qps_without_loadgen_overhead",
        )
    }
    if request.mode == "performance" and summary is not None:
        name, unit = SCENARIO_METRIC[request.scenario]
        value = summary.headline_value
        if value is not None and unit == "ms":
            value = value / 1e6
        result["metric"] = {
            "name": name,
            "unit": unit,
            "value": value,
            "source": f"{SUMMARY_FILE}: '{summary.headline_name}'",
        }
    return events


def note_sut(prepared: PreparedRun | ChatPreparedRun, result: dict[str, Any], sut: AsyncSUT) -> None:
    """The SUT's own counts, and the notes every reader of the result must see."""
    result["sut_stats"] = prepared.sut_stats(sut)
    result["sut_stats"]["latency_source"] = (
        f"{TIMINGS_FILE}: per-sample time from LoadGen's issue_query call to the SUT's QuerySamplesComplete, "
        "measured by kcloud's SUT (not LoadGen's own timestamps)"
    )
    if sut.errors:
        result["notes"].append(
            f"{sut.errors} samples failed in the SUT (first: {sut.first_error}); LoadGen counted them as "
            "answered with empty data"
        )
    if prepared.device is not None and prepared.device.emulated:
        result["notes"].append(
            f"{prepared.device.uid} is an EMULATED device: latency and throughput were measured on the "
            "host CPU that computes for it; the chip's own figures (throughput, service time, power, "
            "efficiency) are MODELLED from the catalog, in device_model, and under this run's load by the "
            "digital twin (device_model.under_load), never mixed with the host's"
        )


def read_run(
    prepared: PreparedRun | ChatPreparedRun, result: dict[str, Any], sut: AsyncSUT, **more_timings: np.ndarray
) -> dict[str, Any]:
    """What every finished run does first: read LoadGen's logs into `result`, note the SUT's
    counters, and keep its per-sample timings (plus `more_timings`) in `TIMINGS_FILE`.
    Returns LoadGen's events."""
    events = read_loadgen(prepared, result)
    note_sut(prepared, result, sut)
    times = sut.times
    np.savez_compressed(
        prepared.run_dir / TIMINGS_FILE,
        latency_ns=np.asarray(times.latency_ns, dtype=np.int64),
        issued_ns=np.asarray(times.issued_ns, dtype=np.int64),
        completed_at=np.asarray(times.completed_at, dtype=np.float64),
        **more_timings,
    )
    return events


def _finish(prepared: PreparedRun, result: dict[str, Any], sut: AsyncSUT, meter: Meter | None) -> None:
    request, run_dir = prepared.request, prepared.run_dir
    events = read_run(prepared, result, sut)
    if request.mode == "accuracy":
        try:
            accuracy = score_accuracy_log(run_dir / ACCURACY_FILE, prepared.dataset, prepared.entry.config)
        except ValueError as exc:
            accuracy = {"score": None, "passed": False, "reason": str(exc)}
        result["accuracy"] = accuracy
        result["metric"] = {
            "name": f"accuracy_{accuracy.get('metric', '')}",
            "unit": "ratio",
            "value": accuracy.get("score"),
            "source": f"{ACCURACY_FILE} scored by kcloud",
        }
    result["energy"] = energy_block(request.scenario, events, sut, meter, result)
    backend = prepared.backend
    if request.mode == "performance" and result["complete"] and isinstance(backend, InProcessBackend):
        result["profile"] = write_profile(result, backend, prepared.entry, str(run_dir))
    device = prepared.device
    if device is not None and device.emulated:
        per_query = request.settings.samples_per_query or 8
        offered = offered_load(request.scenario, request.mode, result["settings"]["effective"] or {},
                               result["loadgen"].get("result_query_count"))
        replicas = backend.replicas if isinstance(backend, InProcessBackend) else 1
        result["device_model"] = device_model(prepared.entry, device, request.scenario, per_query, offered,
                                              replicas=replicas)
        if result.get("metric"):
            result["metric"]["measured_on"] = f"the host CPU computing for emulated device {device.uid}"


def energy_block(
    scenario: str, events: dict[str, Any], sut: AsyncSUT, meter: Meter | None, result: dict[str, Any]
) -> dict[str, Any]:
    """Energy over LoadGen's window from the meter's counters, and MLPerf Power's per-sample figure."""
    block: dict[str, Any] = {
        "joules": None,
        "efficiency": efficiency(scenario, None, samples=None, queries=None),
    }
    if meter is None or meter.meter is None:
        block.update(reason=meter.reason if meter else "no energy meter", modelled=False, devices=[])
        return block
    window = power_window(events)
    window_source = "LoadGen's power_begin/power_end (mlperf_log_detail.txt)"
    if window is None:
        window = meter.meter.span
        window_source = "first and last counter readings around LoadGen's run"
    if window is None:
        block.update(reason="no run window to integrate over", modelled=False, devices=[])
        return block
    t0, t1 = window
    devices = meter.meter.energy(t0, t1)
    if any(d.modelled for d in devices):
        block.update(modelled=True, devices=[], source=meter.source, scope=meter.scope, reason=MIXED)
        return block
    known = [d.joules for d in devices if d.joules is not None]
    joules = sum(known) if devices and len(known) == len(devices) else None
    reasons = [f"{d.uid}: {d.reason}" for d in devices if d.reason]
    samples = sut.completed
    queries = events.get("result_query_count")
    window_s = t1 - t0
    block.update(
        joules=joules,
        window_s=window_s,
        window_source=window_source,
        average_power_watts=joules / window_s if joules is not None and window_s > 0 else None,
        samples=samples,
        queries=queries,
        efficiency=efficiency(scenario, joules, samples=samples, queries=queries),
        modelled=any(d.modelled for d in devices),
        devices=[d.as_dict() for d in devices],
        source=meter.source,
        scope=meter.scope,
        reason="; ".join(reasons) if joules is None else None,
    )
    return block
