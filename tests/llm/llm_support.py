"""What the LLM tests share: the farm a session fixture starts (`conftest.chat_farm`) and how to
read it. (A module with its own name rather than `conftest`, so that `from llm_support import ...`
cannot pick up another package's conftest.)"""

from __future__ import annotations

import time
from dataclasses import dataclass

import httpx

from kcloud.app.background import BackgroundGateway
from kcloud.models.builtin import SMOLLM
from kcloud.serving.engine import EngineReplica

TENANT = "acme"
#: The tenant's own deployment of the chat model, served to it as `chat` (TENANT:chat farm-wide).
TENANT_DEPLOYMENT = "chat"


@dataclass
class ChatFarm:
    gateway: BackgroundGateway
    admin_key: str
    tenant_key: str

    @property
    def url(self) -> str:
        return self.gateway.url

    def client(self, key: str | None = None, **kwargs: object) -> httpx.Client:
        headers = {"authorization": f"Bearer {key or self.admin_key}"}
        return httpx.Client(base_url=self.url, headers=headers, timeout=120, **kwargs)  # type: ignore[arg-type]

    def engines(self, served_name: str = SMOLLM) -> list[EngineReplica]:
        assert self.gateway.stack is not None
        return [r for r in self.gateway.stack.router.replicas(served_name) if isinstance(r, EngineReplica)]

    def engine_metric(self, name: str, served_name: str = SMOLLM) -> float:
        """The sum of an engine metric (vLLM's own /metrics) over the model's engines."""
        total = 0.0
        for engine in self.engines(served_name):
            text = httpx.get(engine.base_url + "/metrics", timeout=10).text
            for line in text.splitlines():
                if line.startswith(name + "{") or line.startswith(name + " "):
                    total += float(line.rsplit(" ", 1)[1])
        return total

    def wait_ready(self, served_name: str = SMOLLM, timeout_s: float = 300) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if any(e.alive for e in self.engines(served_name)):
                return
            time.sleep(0.5)
        raise TimeoutError(f"no live engine of {served_name} after {timeout_s:.0f} s")
