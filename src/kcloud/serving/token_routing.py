"""Which engine replica gets a generation: prefix-cache-aware, else least outstanding tokens.

An LLM engine keeps the KV cache of prompts it has seen (vLLM's automatic prefix caching): a
request whose prompt starts like an earlier one (the same system prompt, the same document,
the turns of one conversation) skips recomputing that prefix, which is most of its time to
first token. Sending it to the replica that holds the prefix is worth more than a perfectly
even spread, as long as that replica is not overloaded. So, per request:

1. **prefix**: the live replica whose remembered prefixes match the most leading blocks of the
   prompt (blocks of `BLOCK_TOKENS` token ids, hashed as a chain, like the engines' own block
   hashes), if it matches at least one block and its outstanding tokens are within
   `load_slack` of the least loaded replica's;
2. **least-tokens**: otherwise the live replica with the fewest outstanding tokens (prompt plus
   maximum new tokens of what it has in flight), taking turns among equals.

Each replica's memory of prefixes is an LRU of block hashes bounded by `capacity`, an estimate
of what its engine still caches (the engine evicts too; a stale entry costs one recomputed
prefix, never a wrong answer). `round-robin` exists for comparison (benchmarks/llm_serving.py).
"""

from __future__ import annotations

import itertools
from collections import Counter, OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal, Protocol

Policy = Literal["prefix", "least-tokens", "round-robin"]
POLICIES: tuple[Policy, ...] = ("prefix", "least-tokens", "round-robin")

BLOCK_TOKENS = 16
#: Block hashes remembered per replica (16-token blocks: ~65 k tokens of prompts).
DEFAULT_CAPACITY = 4096
#: A prefix match wins while its replica has at most this many more outstanding tokens than
#: the least loaded one (about one long request's worth).
DEFAULT_LOAD_SLACK = 4096


class EngineTarget(Protocol):
    id: str
    outstanding_tokens: int

    @property
    def alive(self) -> bool: ...


def block_hashes(token_ids: Sequence[int], block: int = BLOCK_TOKENS) -> list[int]:
    """Chained hashes of the prompt's full blocks: block i's hash covers tokens [0, (i+1)·block)."""
    hashes: list[int] = []
    previous = 0
    for start in range(0, len(token_ids) - block + 1, block):
        previous = hash((previous, tuple(token_ids[start:start + block])))
        hashes.append(previous)
    return hashes


class PrefixMemory:
    """One replica's remembered prompt prefixes, as an LRU of chained block hashes."""

    def __init__(self, capacity: int = DEFAULT_CAPACITY) -> None:
        self.capacity = capacity
        self._blocks: OrderedDict[int, None] = OrderedDict()

    def __len__(self) -> int:
        return len(self._blocks)

    def matched(self, hashes: Sequence[int]) -> int:
        """How many leading blocks of a prompt this replica has seen."""
        count = 0
        for digest in hashes:  # chained: block i can only be cached if block i-1 is
            if digest not in self._blocks:
                break
            count += 1
        return count

    def remember(self, hashes: Sequence[int]) -> None:
        for digest in hashes:
            self._blocks[digest] = None
            self._blocks.move_to_end(digest)
        while len(self._blocks) > self.capacity:
            self._blocks.popitem(last=False)


@dataclass(frozen=True)
class Choice:
    replica_id: str
    policy: Policy
    #: Leading prompt blocks the chosen replica had seen (prefix policy).
    matched_blocks: int = 0


class TokenRouter:
    """Chooses among a model's engine replicas; one per router, state per replica id."""

    def __init__(self, policy: Policy = "prefix", *, capacity: int = DEFAULT_CAPACITY,
                 load_slack: int = DEFAULT_LOAD_SLACK) -> None:
        if policy not in POLICIES:
            raise ValueError(f"token routing policy must be one of {', '.join(POLICIES)}, got {policy!r}")
        self.policy = policy
        self.capacity = capacity
        self.load_slack = load_slack
        self._memories: dict[str, PrefixMemory] = {}
        self._turn = itertools.count()
        #: replica id -> how many requests each policy sent it (what `kcloud placement explain` shows).
        self.routed: dict[str, Counter[str]] = {}

    def forget(self, replica_id: str) -> None:
        self._memories.pop(replica_id, None)
        self.routed.pop(replica_id, None)

    def _chose(self, choice: Choice) -> Choice:
        self.routed.setdefault(choice.replica_id, Counter())[choice.policy] += 1
        return choice

    def _memory(self, replica_id: str) -> PrefixMemory:
        memory = self._memories.get(replica_id)
        if memory is None:
            memory = self._memories[replica_id] = PrefixMemory(self.capacity)
        return memory

    def choose(self, replicas: Sequence[EngineTarget], prompt_ids: Sequence[int]) -> Choice | None:
        """The replica for a prompt (None when no replica is alive); remembers its prefix there."""
        live = [r for r in replicas if r.alive]
        if not live:
            return None
        turn = next(self._turn)
        if self.policy == "round-robin":
            return self._chose(Choice(live[turn % len(live)].id, "round-robin"))
        start = turn % len(live)
        rotated = live[start:] + live[:start]
        least = min(rotated, key=lambda r: r.outstanding_tokens)
        if self.policy == "least-tokens":
            return self._chose(Choice(least.id, "least-tokens"))
        hashes = block_hashes(prompt_ids)
        best, best_blocks = least, 0
        if hashes:
            bound = least.outstanding_tokens + self.load_slack
            for replica in rotated:
                blocks = self._memory(replica.id).matched(hashes)
                if blocks > best_blocks and replica.outstanding_tokens <= bound:
                    best, best_blocks = replica, blocks
        self._memory(best.id).remember(hashes)
        return self._chose(Choice(best.id, "prefix" if best_blocks else "least-tokens", best_blocks))
