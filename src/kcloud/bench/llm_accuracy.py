"""Accuracy of a chat model: its greedy output against the reference, token for token.

The reference (`kcloud.models.smollm.read_reference`) is transformers' greedy generation in
bf16 on a CPU, with the top-5 log-probabilities of every step. An engine computes the same model
with other kernels in the same precision, so the two greedy paths may part where two tokens are
(nearly) tied: a strict token-for-token gate fails for honest reasons. Each case is therefore
judged by its matched prefix and, where it diverges, by whether the divergence is a *tie*:

    At the first step k where the engine's token e differs from the reference's token r,
    the divergence is a tie when
      1. e is among the reference's top-5 at step k, and
      2. either side saw r and e as (nearly) equal:
         min(gap_ref, gap_engine) <= margin, where
           gap_ref    = logp_ref(r) - logp_ref(e)      (the reference's top-5 at step k)
           gap_engine = logp_eng(e) - logp_eng(r)      (the engine's top-5; infinite when r is
                                                        not among them)
    Otherwise it is a mismatch.

Why both sides: the reference's near-tie is the classic case (its greedy pick was decided by
rounding); the engine's own exact tie is the other (seen on vLLM-CPU with a batch: " Sc" and
" scattering" both at -0.746, where the reference had 0.625 nats between them). A wrong model
breaks condition 1 or diverges where both sides are sure.

Why 0.25 nats: a log-probability gap between two tokens is their logit gap, and the logits are
bf16. This model's top logits lie in [16, 32), where bf16 steps by 0.125; the observed gaps are
whole multiples of 0.0625 or 0.125. Two steps of 0.125 cover one rounding on each side of the
pair; the measured divergences of vLLM-CPU against the reference had min-gaps of 0 and 0.125
nats (the reference's "The" over "L" by 0.25, the engine's "L" over "The" by 0.125). 0.05 nats,
less than one bf16 step, would call that first one a failure. The reference rounds its
log-probabilities to 1e-4, so the comparison allows that much on top.

The gate: every case matches to the end or diverges first at a tie, and every case was answered.
The figures: exact-match rate, mean matched-prefix ratio (matched tokens / reference tokens),
ties, mismatches, and each case's divergence.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from kcloud.bench.loadgen_logs import read_accuracy_log
from kcloud.models.smollm import ChatReference, ReferenceCase

#: Largest min-gap (nats) between the two tokens of a divergence that still counts as a tie.
TIE_MARGIN_NATS = 0.25
#: The reference stores log-probabilities rounded to 4 decimals.
REFERENCE_ROUNDING = 1e-4
GATE = (
    "every case matches the reference to its end or first diverges at a tie (the engine's token "
    "in the reference's top-5 and min(reference gap, engine gap) <= margin)"
)

#: [token id, log-probability] pairs, best first.
TopLogprobs = list[list[float]]


@dataclass(frozen=True)
class EngineOutput:
    """What the engine generated for one case: token ids and its top log-probabilities per step."""

    token_ids: list[int]
    top_logprobs: list[TopLogprobs]

    def to_bytes(self) -> bytes:
        """The bytes LoadGen logs for the sample (JSON: the tie rule needs the top log-probabilities)."""
        return json.dumps({"token_ids": self.token_ids, "top_logprobs": self.top_logprobs}).encode()

    @classmethod
    def from_bytes(cls, raw: bytes) -> EngineOutput:
        data = json.loads(raw.decode("utf-8"))
        return cls([int(t) for t in data["token_ids"]], data.get("top_logprobs") or [])


@dataclass(frozen=True)
class Divergence:
    step: int
    reference_token: int
    engine_token: int
    #: logp_ref(r) - logp_ref(e); None when e is not in the reference's top-5.
    reference_gap: float | None
    #: logp_eng(e) - logp_eng(r); None when r is not in the engine's top-5 (or it sent none).
    engine_gap: float | None
    tie: bool
    why: str


def _logprob(top: TopLogprobs, token: int) -> float | None:
    return next((float(lp) for tid, lp in top if int(tid) == token), None)


def judge_divergence(
    step: int,
    reference_token: int,
    engine_token: int,
    reference_top: TopLogprobs,
    engine_top: TopLogprobs | None,
    margin: float = TIE_MARGIN_NATS,
) -> Divergence:
    """Tie or mismatch, by the rule in this module's docstring."""
    ref_r, ref_e = _logprob(reference_top, reference_token), _logprob(reference_top, engine_token)
    eng_e = _logprob(engine_top or [], engine_token)
    eng_r = _logprob(engine_top or [], reference_token)
    reference_gap = None if ref_r is None or ref_e is None else max(ref_r - ref_e, 0.0)
    engine_gap = None if eng_e is None or eng_r is None else max(eng_e - eng_r, 0.0)
    if ref_e is None:
        return Divergence(
            step,
            reference_token,
            engine_token,
            None,
            engine_gap,
            False,
            "the engine's token is not in the reference's top-5",
        )
    gaps = [g for g in (reference_gap, engine_gap) if g is not None]
    smallest = min(gaps) if gaps else math.inf
    tie = smallest <= margin + REFERENCE_ROUNDING
    side = "reference" if reference_gap is not None and smallest == reference_gap else "engine"
    why = (
        f"near tie: {smallest:.4f} nats apart in the {side}'s distribution (margin {margin})"
        if tie
        else f"not a tie: the tokens are {smallest:.4f} nats apart on both sides (margin {margin})"
    )
    return Divergence(step, reference_token, engine_token, reference_gap, engine_gap, tie, why)


@dataclass(frozen=True)
class CaseScore:
    index: int
    reference_tokens: int
    engine_tokens: int
    matched_prefix: int
    #: "match", "tie", "mismatch", "short" (the engine stopped early without a differing token).
    verdict: str
    divergence: Divergence | None = None

    @property
    def passed(self) -> bool:
        return self.verdict in ("match", "tie")

    def as_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["matched_prefix_ratio"] = (
            self.matched_prefix / self.reference_tokens if self.reference_tokens else 1.0
        )
        return data


def score_case(
    index: int, case: ReferenceCase, output: EngineOutput, margin: float = TIE_MARGIN_NATS
) -> CaseScore:
    """The matched prefix of one case and, where it diverges, whether that is a tie."""
    expected, got = case.output_token_ids, output.token_ids
    matched = 0
    while matched < min(len(expected), len(got)) and expected[matched] == got[matched]:
        matched += 1
    if matched == len(expected):
        return CaseScore(index, len(expected), len(got), matched, "match")
    if matched == len(got):
        return CaseScore(index, len(expected), len(got), matched, "short")
    engine_top = output.top_logprobs[matched] if matched < len(output.top_logprobs) else None
    divergence = judge_divergence(
        matched, expected[matched], got[matched], case.output_top_logprobs[matched], engine_top, margin
    )
    return CaseScore(
        index, len(expected), len(got), matched, "tie" if divergence.tie else "mismatch", divergence
    )


def score_outputs(
    reference: ChatReference, outputs: dict[int, EngineOutput], margin: float = TIE_MARGIN_NATS
) -> dict[str, Any]:
    """The accuracy block of `result.json` for a chat model (`outputs` by case index)."""
    scores = [
        score_case(i, case, outputs[i], margin) for i, case in enumerate(reference.cases) if i in outputs
    ]
    missing = [i for i in range(len(reference.cases)) if i not in outputs]
    total = len(reference.cases)
    exact = sum(s.verdict == "match" for s in scores)
    block: dict[str, Any] = {
        "kind": "chat-greedy",
        "metric": "exact_match_rate",
        "score": exact / total if total else None,
        "threshold": None,
        "exact_matches": exact,
        "mean_matched_prefix_ratio": (
            sum(s.matched_prefix / s.reference_tokens for s in scores if s.reference_tokens) / total
            if total
            else None
        ),
        "ties": sum(s.verdict == "tie" for s in scores),
        "mismatches": sum(s.verdict in ("mismatch", "short") for s in scores),
        "cases_answered": len(scores),
        "cases_in_reference": total,
        "max_new_tokens": reference.max_new_tokens,
        "tie_margin_nats": margin,
        "tie_rule": (
            "at the first differing step: the engine's token is in the reference's top-5, and "
            "min(logp_ref(ref) - logp_ref(eng), logp_eng(eng) - logp_eng(ref)) <= margin"
        ),
        "gate": GATE,
        "reference_generator": reference.generator,
        "cases": [s.as_dict() for s in scores],
    }
    failing = [s.index for s in scores if not s.passed]
    if missing:
        block.update(passed=False, reason=f"{len(missing)} of {total} cases have no answer (cases {missing})")
    elif failing:
        block.update(passed=False, reason=f"cases {failing} diverge from the reference where it is not a tie")
    else:
        block.update(passed=True, reason=None)
    return block


def read_outputs(path: Path) -> tuple[dict[int, EngineOutput], int]:
    """The engine outputs LoadGen logged (`mlperf_log_accuracy.json`), by sample index, and the
    number of samples logged empty (failed); ValueError when the log cannot be read."""
    outputs: dict[int, EngineOutput] = {}
    empty = 0
    for index, raw in read_accuracy_log(path):
        if not raw:
            empty += 1
            continue
        try:
            outputs[index] = EngineOutput.from_bytes(raw)
        except (ValueError, KeyError, TypeError) as exc:
            raise ValueError(f"{path}: sample {index} is not an engine output ({exc})") from None
    return outputs, empty
