"""The network SUT: a model served by a kcloud gateway, over OIP v2 with binary tensors.

This is how a remote farm is verified from outside: LoadGen runs here, every sample is one HTTP
request (`POST /v2/models/{name}/versions/{v}/infer`, binary tensor data both ways) and the
sample completes when its answer arrives. Concurrency is the asyncio client's: up to
`max_in_flight` requests on a pool of keep-alive connections. The client is aiohttp: on this
project's 2-core machine it sustained about 1,800 requests/s against a local gateway at 16 in
flight where httpx's async client reached about 300 (it degrades past 8 connections), and the
SUT's client must not be what the run measures.

Before LoadGen starts, `preflight` checks that the gateway answers, speaks binary tensors,
serves the model and that the model's signature there is the one the local data set was built
for; each failure is a `BenchError` naming the gateway and what is wrong.

Energy: the devices behind a gateway cannot be read from here. When the gateway publishes its
devices' energy counters on `/metrics` (kcloud gateways do, `kcloud_device_energy_joules_total`)
we read those, for the devices its own serving metrics say computed this model, and label the
figures with that source; otherwise energy is `null` with the reason.
"""

from __future__ import annotations

import time
from typing import Any
from urllib.parse import urlsplit

import aiohttp
import httpx
import numpy as np
from prometheus_client.parser import text_string_to_metric_families

from kcloud.bench.errors import BenchError
from kcloud.bench.sut import Backend, Inputs
from kcloud.devices.device import Telemetry
from kcloud.models.repository import ModelEntry
from kcloud.serving.oip.client import decode_infer_response, encode_infer_request
from kcloud.serving.oip.tensors import parse_header_length

PREFLIGHT_TIMEOUT_S = 5.0
REQUEST_TIMEOUT_S = 120.0
ENERGY_METRIC = "kcloud_device_energy_joules"
COMPUTE_METRIC = "kcloud_compute_seconds"
#: Requests a gateway answered, by model and device (chat models: the engine replica's device).
REQUEST_METRIC = "kcloud_request_seconds"


def check_url(url: str) -> str:
    """`http(s)://host[:port]` without a path; returned without a trailing slash."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise BenchError(f"--url {url!r}: expected http://HOST:PORT (e.g. http://127.0.0.1:8000)")
    if parts.path not in ("", "/") or parts.query:
        raise BenchError(f"--url {url!r}: give the gateway's base URL only, without a path")
    return url.rstrip("/")


def _error_text(response: httpx.Response) -> str:
    try:
        body = response.json()
        if isinstance(body, dict) and "error" in body:
            return str(body["error"])
    except ValueError:
        pass
    return response.text[:200]


class GatewayEnergy:
    """Energy through a kcloud gateway's own `/metrics`, for a network SUT of either kind.

    The devices that served the model are those with a `serving_metric` count for it (batches
    computed for tensor models, requests answered for chat models); their energy counters are
    `kcloud_device_energy_joules_total`.
    """

    url: str
    auth_headers: dict[str, str]
    entry: ModelEntry
    #: The name the gateway serves the model under (a deployment's; default the model's).
    served_name: str
    serving_metric: str

    def scrape(self) -> dict[str, Any]:
        """The gateway's `/metrics`: energy counters by device uid, devices that served this model."""
        response = httpx.get(
            self.url + "/metrics", timeout=PREFLIGHT_TIMEOUT_S, trust_env=False, headers=self.auth_headers
        )
        if response.status_code != 200:
            raise RuntimeError(f"GET /metrics answered {response.status_code}")
        now = time.time()
        energy: dict[str, Telemetry] = {}
        serving: set[str] = set()
        for family in text_string_to_metric_families(response.text):
            if family.name == ENERGY_METRIC:
                for sample in family.samples:
                    if sample.name.endswith("_total"):
                        labels = sample.labels
                        uid = f"{labels.get('node')}/{labels.get('device')}"
                        energy[uid] = Telemetry(
                            uid,
                            timestamp=now,
                            energy_joules=sample.value,
                            modelled=labels.get("modelled") == "true",
                        )
            elif family.name == self.serving_metric:
                for sample in family.samples:
                    if (
                        sample.name.endswith("_count")
                        and sample.labels.get("model") == self.served_name
                        and sample.value > 0
                    ):
                        serving.add(sample.labels.get("device", ""))
        return {"energy": energy, "serving": sorted(serving)}

    def serving_devices(self) -> tuple[list[str], str | None]:
        """Uids of the gateway's devices that computed this model, or `([], reason)`."""
        try:
            scraped = self.scrape()
        except (httpx.HTTPError, RuntimeError, ValueError) as exc:
            return (
                [],
                f"the gateway's /metrics could not be read ({exc}); "
                "its devices' energy is not readable from outside",
            )
        if not scraped["serving"]:
            return [], "the gateway's /metrics names no device that computed this model"
        missing = [uid for uid in scraped["serving"] if uid not in scraped["energy"]]
        if len(missing) == len(scraped["serving"]):
            return [], (
                "the gateway publishes no energy counter for the devices serving this model "
                f"({', '.join(missing)})"
            )
        return scraped["serving"], None

    def read_energy(self) -> dict[str, Telemetry]:
        return self.scrape()["energy"]


class NetworkBackend(GatewayEnergy, Backend):
    kind = "network"
    serving_metric = COMPUTE_METRIC

    def __init__(
        self, url: str, entry: ModelEntry, *, output: str, max_in_flight: int, api_key: str | None = None,
        served_name: str | None = None,
    ) -> None:
        self.url = check_url(url)
        self.served_name = served_name or entry.name
        #: kcloud gateways want `Authorization: Bearer <key>` on every route but the health probes
        self.auth_headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self.entry = entry
        self.max_in_flight = max_in_flight
        #: the one output asked for: the one the accuracy script scores
        self.output = output
        self.path = f"/v2/models/{self.served_name}/versions/{entry.version}/infer"
        self.server: dict[str, Any] = {}
        self.client: aiohttp.ClientSession | None = None

    # -- before LoadGen ----------------------------------------------------------------------
    def preflight(self) -> None:
        """Check the gateway and the model there; `BenchError` on anything that would spoil a run."""
        name, version = self.served_name, self.entry.version
        try:
            with httpx.Client(
                base_url=self.url, timeout=PREFLIGHT_TIMEOUT_S, trust_env=False, headers=self.auth_headers
            ) as client:
                live = client.get("/v2/health/live")
                server = client.get("/v2")
                meta = client.get(f"/v2/models/{name}/versions/{version}")
                ready = (
                    client.get(f"/v2/models/{name}/versions/{version}/ready")
                    if meta.status_code == 200
                    else None
                )
        except httpx.HTTPError as exc:
            raise BenchError(f"gateway {self.url} is unreachable: {type(exc).__name__}: {exc}") from None
        if live.status_code != 200:
            raise BenchError(
                f"gateway {self.url} is not live (GET /v2/health/live answered {live.status_code})"
            )
        if server.status_code == 401:
            hint = "the key was refused" if self.auth_headers else "pass --api-key or set $KCLOUD_API_KEY"
            raise BenchError(f"gateway {self.url} requires an API key (GET /v2 answered 401): {hint}")
        if server.status_code == 200:
            self.server = server.json()
        extensions = self.server.get("extensions") or []
        if "binary_tensor_data" not in extensions:
            raise BenchError(f"gateway {self.url} does not list the binary_tensor_data extension (GET /v2)")
        if meta.status_code == 404:
            raise BenchError(
                f"gateway {self.url} does not serve model {name!r} version {version}: {_error_text(meta)}"
            )
        if meta.status_code != 200:
            raise BenchError(
                f"gateway {self.url}: model metadata answered {meta.status_code}: {_error_text(meta)}"
            )
        self._check_signature(meta.json())
        if ready is None or ready.status_code != 200:
            raise BenchError(f"gateway {self.url}: model {name!r} v{version} is not ready (no live replica)")

    def _check_signature(self, meta: dict[str, Any]) -> None:
        config = self.entry.config
        for side, local in (("inputs", config.inputs), ("outputs", config.outputs)):
            theirs = {
                t.get("name"): (t.get("datatype"), list(t.get("shape") or [])) for t in meta.get(side, [])
            }
            ours = {t.name: (t.datatype, list(t.shape)) for t in local}
            if theirs != ours:
                raise BenchError(
                    f"gateway {self.url}: model {self.served_name!r} has {side} {theirs}, but the local "
                    f"data set was built for {ours} (the gateway serves a different model under this name)"
                )

    # -- during the run ----------------------------------------------------------------------
    async def start(self) -> None:
        connector = aiohttp.TCPConnector(limit=self.max_in_flight)
        self.client = aiohttp.ClientSession(
            self.url,
            connector=connector,
            timeout=aiohttp.ClientTimeout(total=REQUEST_TIMEOUT_S),
            headers=self.auth_headers,
        )

    async def stop(self) -> None:
        if self.client is not None:
            await self.client.close()

    async def infer(self, inputs: Inputs) -> dict[str, np.ndarray]:
        assert self.client is not None
        body, headers = encode_infer_request(inputs, binary=True, outputs=[self.output], binary_outputs=True)
        async with self.client.post(self.path, data=body, headers=headers) as response:
            content = await response.read()
            if response.status != 200:
                raise RuntimeError(f"HTTP {response.status}: {content[:200].decode('utf-8', 'replace')}")
            length = parse_header_length(response.headers.get("inference-header-content-length"))
        outputs, _ = decode_infer_response(content, length)
        return outputs

    def describe(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "url": self.url,
            "protocol": "OIP v2 REST, binary tensor data",
            "served_name": self.served_name,
            "max_in_flight": self.max_in_flight,
            "server": self.server,
            "client": f"aiohttp {aiohttp.__version__}",
        }
