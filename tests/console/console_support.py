"""What the console tests share: the farm they run against and the names it holds."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[2]
PHASE1 = ROOT / "examples" / "k-cloud-phase1.toml"
TWIN_PHASE1 = ROOT / "examples" / "twin-phase1.toml"
#: A name that is markup: wherever it is shown, the page must show these characters, never run them.
MARKUP = '<script>window.__kcPwned = 1</script><img src=x onerror="window.__kcPwned = 2">'
#: The deployments, by served name (a tenant's are TENANT:NAME): name -> (model, owning tenant or None).
DEPLOYMENTS = {"web-digits": ("digits-cnn", None), "alpha:mini": ("all-MiniLM-L6-v2", "alpha"),
               "beta:digits": ("digits-cnn", "beta")}


@dataclass
class ConsoleFarm:
    """The running gateway and who can use it."""

    url: str
    bench_root: Path
    #: role -> API key: admin, alpha (member), alpha-readonly, beta (member).
    keys: dict[str, str] = field(default_factory=dict)
    #: The ids of the benchmark runs under `bench_root`, as the console names them.
    runs: list[str] = field(default_factory=list)
    #: The id of the twin run the console lists.
    twin_run: str = ""

    def client(self, who: str | None = None, **kwargs) -> httpx.Client:
        headers = {"Authorization": f"Bearer {self.keys[who]}"} if who else {}
        return httpx.Client(base_url=self.url, headers=headers, timeout=60, **kwargs)
