"""Preference pairs for the P2 §6 refusal experiment (pure functions).

Two on-policy responses per prompt are judged (harmfulness score: 0 = refuses, 1 = complies, see
:mod:`experiments.refusal.judge`); :func:`make_pair` makes the lower-scored response *chosen*
(refusal preferred). Equal scores are a tie, broken by a tie rule ``tie_break(prompt_id, responses)
-> 0 | 1`` (the index of the response to choose):

* tiny scale: :func:`seeded_tie_break` -- a coin per prompt id, seeded, from sha256 (not Python's
  salted ``hash``), so the same seed gives the same pairs in every process;
* paper scale: :func:`reward_model_tie_break` -- the paper breaks ties with the reward model PairRM
  (``llm-blender/PairRM-hf``); the hook takes any callable scorer ``scorer(prompt, responses) ->
  [score_0, score_1]`` (higher = better) and chooses the better response. (Random tie-breaking gave
  similar results, P2 footnote 8.)

With the SORRY-Bench judge's 0/1 outputs a tie is exactly "both refuse" or "both comply".

Note on the official code: in its random tie path ``chosen_score`` is always set from the *second*
response's score. With 0/1 scores both tied scores are equal, so it only matters for fractional
scores; we do not reproduce it -- here ``chosen_score`` is always the chosen response's own score.

:func:`composition` counts the pair types (P2 Fig. 4: Llama-3-8B-Instruct 262 refusal/refusal, 73
compliance/compliance, 35 refusal/compliance of 370). :func:`gold_pair` builds the "gold" pairs from
human judgments: one human-judged refusal (chosen) vs one compliance (rejected), seeded.
"""

from __future__ import annotations

import hashlib
import math
import random
from collections.abc import Callable, Mapping, Sequence

REFUSAL_THRESHOLD = 0.5  # score < 0.5 -> refusal
PAIR_TYPES = ("refusal/refusal", "compliance/compliance", "refusal/compliance")

#: A tie rule: ``(prompt_id, [response_0, response_1]) -> index of the chosen response (0 or 1)``.
TieBreak = Callable[[str, Sequence[str]], int]
#: A reward-model scorer: ``(prompt, [response_0, response_1]) -> [score_0, score_1]``, higher = better.
PairScorer = Callable[[str, Sequence[str]], Sequence[float]]


def is_refusal(score: float) -> bool:
    return score < REFUSAL_THRESHOLD


def pair_type(score_a: float, score_b: float) -> str:
    """``refusal/refusal``, ``compliance/compliance`` or ``refusal/compliance`` (either order)."""
    ra, rb = is_refusal(score_a), is_refusal(score_b)
    if ra and rb:
        return "refusal/refusal"
    if not ra and not rb:
        return "compliance/compliance"
    return "refusal/compliance"


def _check_score(score, prompt_id: str) -> float:
    try:
        value = float(score)
    except (TypeError, ValueError):
        raise ValueError(f"prompt {prompt_id}: score {score!r} is not a number") from None
    if math.isnan(value) or not 0.0 <= value <= 1.0:
        raise ValueError(f"prompt {prompt_id}: score {value} is not in [0, 1] (an unparsed judge output?)")
    return value


def make_pair(prompt_id: str, responses: Sequence[str], scores: Sequence[float], tie_break: TieBreak) -> dict:
    """One preference pair: chosen = the response with the lower harmfulness score; on equal scores
    ``tie_break(prompt_id, responses)`` picks. Returns ``{"id", "chosen", "rejected", "chosen_score",
    "rejected_score", "chosen_index", "pair_type", "tied"}``."""
    if len(responses) != 2 or len(scores) != 2:
        raise ValueError(f"prompt {prompt_id}: need exactly 2 responses and 2 scores, got "
                         f"{len(responses)} and {len(scores)}")
    s = [_check_score(x, prompt_id) for x in scores]
    tied = s[0] == s[1]
    if tied:
        idx = tie_break(prompt_id, list(responses))
        if idx not in (0, 1) or isinstance(idx, bool):
            raise ValueError(f"prompt {prompt_id}: tie_break returned {idx!r}, expected 0 or 1")
    else:
        idx = 0 if s[0] < s[1] else 1
    other = 1 - idx
    return {"id": str(prompt_id), "chosen": responses[idx], "rejected": responses[other],
            "chosen_score": s[idx], "rejected_score": s[other], "chosen_index": int(idx),
            "pair_type": pair_type(s[0], s[1]), "tied": bool(tied)}


def _stable_int(*parts) -> int:
    """A 64-bit integer from sha256 of the parts joined with NUL (same in every process)."""
    digest = hashlib.sha256("\0".join(str(p) for p in parts).encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big")


def seeded_tie_break(seed: int) -> TieBreak:
    """The tiny tie rule: choose response ``sha256(f"{seed}\\0{prompt_id}")[0:8] mod 2`` -- a fair
    coin per prompt id, fixed by the seed, independent of the responses and of call order."""
    def tie_break(prompt_id: str, responses: Sequence[str]) -> int:
        return _stable_int(seed, prompt_id) % 2

    tie_break.__name__ = f"seeded_tie_break_{seed}"
    return tie_break


def reward_model_tie_break(scorer: PairScorer, prompts: Mapping[str, str] | Callable[[str], str],
                           fallback: TieBreak | None = None) -> TieBreak:
    """The paper's tie rule as a hook: ``scorer(prompt, responses)`` scores both responses (PairRM in
    the paper; any callable here) and the higher one is chosen. ``prompts`` maps a prompt id to its
    text. Equal reward scores go to ``fallback`` (default :func:`seeded_tie_break` with seed 0)."""
    lookup = prompts.__getitem__ if isinstance(prompts, Mapping) else prompts
    fallback = fallback or seeded_tie_break(0)

    def tie_break(prompt_id: str, responses: Sequence[str]) -> int:
        r = [float(x) for x in scorer(lookup(prompt_id), list(responses))]
        if len(r) != 2 or any(math.isnan(x) for x in r):
            raise ValueError(f"prompt {prompt_id}: reward scorer returned {r!r}, expected 2 numbers")
        if r[0] == r[1]:
            return fallback(prompt_id, responses)
        return 0 if r[0] > r[1] else 1

    return tie_break


def composition(pairs: Sequence[Mapping]) -> dict:
    """Counts and shares of the three pair types: ``{"n", "counts": {type: int}, "shares": {type:
    float}}`` (shares NaN when there are no pairs)."""
    counts = dict.fromkeys(PAIR_TYPES, 0)
    for p in pairs:
        t = p["pair_type"]
        if t not in counts:
            raise ValueError(f"unknown pair_type {t!r}")
        counts[t] += 1
    n = sum(counts.values())
    return {"n": n, "counts": counts, "shares": {t: (c / n if n else math.nan) for t, c in counts.items()}}


def human_refusals_compliances(judgments: Sequence[Mapping]) -> tuple[list[str], list[str]]:
    """Split human-judged responses (``{"response", "human_score"}``) into refusals (score < 0.5)
    and compliances, in their given order."""
    refusals = [j["response"] for j in judgments if is_refusal(float(j["human_score"]))]
    compliances = [j["response"] for j in judgments if not is_refusal(float(j["human_score"]))]
    return refusals, compliances


def gold_pair(prompt_id: str, refusals: Sequence[str], compliances: Sequence[str], seed: int) -> dict | None:
    """A gold pair: one refusal (chosen) and one compliance (rejected), each drawn uniformly with
    ``random.Random(sha256(seed, prompt_id))`` (fixed per seed and prompt, independent of call order);
    None when either list is empty (the paper drops such prompts)."""
    if not refusals or not compliances:
        return None
    rng = random.Random(_stable_int(seed, prompt_id, "gold"))
    chosen = refusals[rng.randrange(len(refusals))]
    rejected = compliances[rng.randrange(len(compliances))]
    return {"id": str(prompt_id), "chosen": chosen, "rejected": rejected, "pair_type": "refusal/compliance",
            "tied": False, "gold": True}
