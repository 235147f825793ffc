"""Autoscaling a chat model on tokens in flight, against the real vLLM engine of the shared farm.

The policy is held at one engine (min = max = 1), so the test reads what the autoscaler measures
without starting a second engine (tens of seconds and a second model's memory on 2 cores)."""

from __future__ import annotations

import threading
import time

from llm_support import TENANT_DEPLOYMENT, ChatFarm

QUESTION = [{"role": "user", "content": "Count from one to fifty in words."}]


def test_the_autoscaler_reads_a_chat_models_tokens_in_flight(chat_farm: ChatFarm) -> None:
    with chat_farm.client(chat_farm.tenant_key) as tenant:
        policy = {"min_replicas": 1, "max_replicas": 1, "metric": "tokens", "target": 1000,
                  "stable_window_s": 30, "panic_window_s": 2}
        patched = tenant.patch(f"/api/v1/deployments/{TENANT_DEPLOYMENT}", json={"autoscale": policy})
        assert patched.status_code == 200, patched.text
        try:
            chats = [threading.Thread(target=tenant.post, args=("/v1/chat/completions",), kwargs={"json": {
                "model": TENANT_DEPLOYMENT, "messages": QUESTION, "max_tokens": 96, "temperature": 0}})
                for _ in range(2)]
            for chat in chats:
                chat.start()
            for chat in chats:
                chat.join(120)
            time.sleep(1.2)  # one more reading after they finished
            state = tenant.get(f"/api/v1/deployments/{TENANT_DEPLOYMENT}").json()["autoscaler"]
            assert state["metric"] == "tokens" and state["target"] == 1000
            # two generations of prompt + 96 new tokens each were in flight for seconds of readings
            assert state["value"] is not None and state["value"] > 0
            assert state["desired"] == 1 and state["replicas"] == 1
        finally:
            off = tenant.patch(f"/api/v1/deployments/{TENANT_DEPLOYMENT}", json={"autoscale": None})
            assert off.status_code == 200, off.text


def test_policies_a_chat_model_cannot_follow_are_refused(chat_farm: ChatFarm) -> None:
    with chat_farm.client(chat_farm.tenant_key) as tenant:
        path = f"/api/v1/deployments/{TENANT_DEPLOYMENT}"
        zero = tenant.patch(path, json={"autoscale": {"min_replicas": 0, "max_replicas": 1}})
        assert zero.status_code == 422 and "keeps at least one engine" in zero.json()["error"]
        p99 = tenant.patch(path, json={"autoscale": {"metric": "p99", "target": 500}})
        assert p99.status_code == 422 and "scale a chat model on tokens" in p99.json()["error"]
        assert tenant.get(path).json()["autoscale"] is None
