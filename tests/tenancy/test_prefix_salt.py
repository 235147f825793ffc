"""Each tenant's generations salt the engine's prefix cache with a secret of their own, so no
tenant can learn from a cached prefix's speed what another asked (the real engine: tests/llm)."""

from __future__ import annotations

import re

from kcloud.serving.generation import GenerationCall
from kcloud.tenancy.keys import prefix_cache_salt

SECRET = b"s" * 32


def test_one_secret_salt_per_tenant_in_the_form_engines_take():
    acme, globex, operator = (prefix_cache_salt(SECRET, t) for t in ("acme", "globex", None))
    assert len({acme, globex, operator}) == 3
    assert prefix_cache_salt(SECRET, "acme") == acme  # stable across restarts: same secret, same salt
    assert prefix_cache_salt(b"t" * 32, "acme") != acme  # unguessable without the server's secret
    for salt in (acme, globex, operator):  # vLLM: at most 128 characters, no '/', '@', '\\' or NUL
        assert re.fullmatch(r"[A-Za-z0-9_-]{43}", salt)


def _call(accepted: frozenset[str], body: dict) -> GenerationCall:
    return GenerationCall(route="chat", served=None, body=body, prompt_ids=[1], prompt_tokens=1,  # type: ignore[arg-type]
                          max_tokens=1, n=1, stream=False, include_usage=False, accepted=accepted)


def test_the_salt_replaces_a_clients_own_and_goes_only_to_engines_that_take_one():
    call = _call(frozenset({"messages", "cache_salt"}), {"messages": [], "cache_salt": "mine"})
    call.isolate_prefix_cache("tenant-salt")
    assert call.body["cache_salt"] == "tenant-salt"
    other = _call(frozenset({"messages"}), {"messages": []})  # e.g. furiosa-llm documents no salt
    other.isolate_prefix_cache("tenant-salt")
    assert "cache_salt" not in other.body
