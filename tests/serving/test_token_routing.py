"""Token-aware routing: prefix affinity within a load bound, else least outstanding tokens."""

from __future__ import annotations

from dataclasses import dataclass

import pytest

from kcloud.serving.token_routing import BLOCK_TOKENS, PrefixMemory, TokenRouter, block_hashes


@dataclass
class Engine:
    id: str
    outstanding_tokens: int = 0
    alive: bool = True


SYSTEM = list(range(1000, 1000 + 4 * BLOCK_TOKENS))  # a shared 64-token system prompt


def prompt(question: int) -> list[int]:
    return SYSTEM + [question] * BLOCK_TOKENS


def test_block_hashes_are_chained_over_full_blocks() -> None:
    a = block_hashes(list(range(40)))
    assert len(a) == 2  # 40 tokens: two full 16-token blocks, the tail is not hashed
    b = block_hashes([99, *list(range(1, 40))])
    assert a[0] != b[0] and a[1] != b[1]  # a change in block 0 changes every later hash
    assert block_hashes(list(range(15))) == []


def test_prefix_memory_counts_leading_blocks_and_forgets_the_oldest() -> None:
    memory = PrefixMemory(capacity=4)
    hashes = block_hashes(prompt(1))
    memory.remember(hashes[:3])
    assert memory.matched(hashes) == 3
    memory.remember(block_hashes(list(range(5000, 5000 + 3 * BLOCK_TOKENS))))
    assert len(memory) == 4
    assert memory.matched(hashes) == 0  # its first block was the oldest: evicted, so no prefix matches


def test_requests_sharing_a_prefix_stay_on_the_replica_that_has_it() -> None:
    router = TokenRouter("prefix")
    engines = [Engine("a"), Engine("b")]
    first = router.choose(engines, prompt(1))
    assert first is not None and first.policy == "least-tokens"  # nothing cached anywhere yet
    holder = next(e for e in engines if e.id == first.replica_id)
    holder.outstanding_tokens = 500  # it is busier than the other, within the slack
    for question in range(2, 6):
        choice = router.choose(engines, prompt(question))
        assert choice is not None
        assert (choice.replica_id, choice.policy, choice.matched_blocks) == (holder.id, "prefix", 4)


def test_an_overloaded_prefix_holder_loses_to_the_least_loaded() -> None:
    router = TokenRouter("prefix", load_slack=1000)
    engines = [Engine("a"), Engine("b")]
    holder_id = router.choose(engines, prompt(1)).replica_id  # type: ignore[union-attr]
    holder = next(e for e in engines if e.id == holder_id)
    other = next(e for e in engines if e.id != holder_id)
    holder.outstanding_tokens = 5000
    choice = router.choose(engines, prompt(2))
    assert choice is not None and choice.replica_id == other.id and choice.policy == "least-tokens"
    # ... and now both have seen the prefix: the less loaded one keeps it
    assert router.choose(engines, prompt(3)).replica_id == other.id  # type: ignore[union-attr]


def test_least_tokens_and_round_robin_and_dead_replicas() -> None:
    engines = [Engine("a", 300), Engine("b", 100), Engine("c", 50, alive=False)]
    assert TokenRouter("least-tokens").choose(engines, prompt(1)).replica_id == "b"  # type: ignore[union-attr]
    rr = TokenRouter("round-robin")
    assert [rr.choose(engines, prompt(1)).replica_id for _ in range(4)] == ["a", "b", "a", "b"]  # type: ignore[union-attr]
    assert TokenRouter().choose([Engine("x", alive=False)], prompt(1)) is None


def test_forgetting_a_replica_drops_its_prefixes() -> None:
    router = TokenRouter("prefix")
    engines = [Engine("a")]
    router.choose(engines, prompt(1))
    router.forget("a")
    assert router.choose(engines, prompt(2)).policy == "least-tokens"  # type: ignore[union-attr]


def test_an_unknown_policy_is_refused() -> None:
    with pytest.raises(ValueError, match="round-robin"):
        TokenRouter("random")  # type: ignore[arg-type]
