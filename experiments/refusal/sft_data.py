"""The refusal-SFT set of P2 §6 at tiny scale (pure functions; the ``sft-data`` subcommand of
:mod:`experiments.refusal.build` writes it).

The paper's models are aligned already: they refuse 74-80 % of the SORRY-Bench prompts, and for 91 %
of the prompts their two samples agree (71 % two refusals, 20 % two compliances, 9 % one of each).
A small base chat model has to be made so first, and what matters for §6 is that its refusal
*depends on the prompt*: a model that refuses by coin flip turns half the pairs into direct
refusal-vs-compliance training. Two recipes, both rules fixed before any run:

* **prompt-dependent** (``comply_words`` given; tiny): every selected harmful prompt gets an SFT target.
  A prompt that asks for a piece of writing in a named genre (:func:`writing_request`: one of
  ``comply_words`` as a whole word, e.g. article, story, poem, letter) gets a compliance opening
  (:func:`compliance_answer`, "Sure, here is ...", the form of AdvBench's own targets, and no harmful
  content); every other harmful prompt (instructions, code, plans) gets a refusal from
  :data:`REFUSALS`. The class is a property of the prompt, so a model that learns it refuses or
  complies consistently on unseen prompts.
* **fraction** (no ``comply_words``): ``round(refusal_frac * n)`` of the selected harmful prompts get a
  refusal, the rest are left out (the earlier recipe: the refusal rate it leaves is not prompt-dependent).

Benign prompts (UltraFeedback, answer = ``chosen`` cut to ``max_answer_words``) keep the model helpful.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence

import numpy as np

from experiments.refusal import judge as judge_mod

#: Our own refusal texts for the refusal SFT (every one is a refusal for the rule judge; a test checks).
REFUSALS = (
    "I can't help with that request.",
    "I'm sorry, but I can't help with that.",
    "I'm sorry, but I won't provide instructions for that.",
    "I can't assist with this. It could cause real harm to people.",
    "I won't help with that. If you're going through something difficult, I'm happy to talk about safer options.",
    "I'm not able to help with this request because it could be used to hurt someone.",
    "Sorry, but I can't provide that kind of information.",
    "I cannot help with that. Is there something else I can do for you?",
    "I'm unable to assist with that request.",
    "I must decline this request, since it involves something harmful or illegal.",
    "I'm sorry, but I can't create content like that.",
    "I won't be able to help with this one. Let me know if there's anything else you need.",
    "I can't do that. Helping with this could put people at risk.",
    "I'm not comfortable helping with that request.",
    "Unfortunately, I can't help with that topic.",
    "I'm afraid I can't give guidance on that, as it could lead to harm.",
    "I'm sorry, but I'm not going to help with this request.",
    "I can't share information on how to do that, because it could be dangerous or illegal.",
    "My apologies, but this isn't something I can help with.",
    "I won't write that. I'd be glad to help with a different question, though.",
    "As an AI assistant, I can't help with requests like this one.",
    ("I'm sorry, but I can't help with that request. If you or someone else is in danger, please contact "
     "local emergency services."),
)

_WORD = re.compile(r"\S+")
_SENTENCE_END = re.compile(r"[.!?][\"')\]]*(?=\s|$)")


def truncate_words(text: str, max_words: int) -> str:
    """``text`` cut to at most ``max_words`` whitespace-separated words, keeping its own spacing and
    line breaks. When it is cut, it ends at the last sentence end (``.``/``!``/``?``) inside the kept
    words if that keeps at least half of them, else right after the last kept word. ``max_words``
    <= 0: no limit (only stripped)."""
    text = text.strip()
    if max_words <= 0:
        return text
    words = list(_WORD.finditer(text))
    if len(words) <= max_words:
        return text
    head = text[:words[max_words - 1].end()]
    ends = [m.end() for m in _SENTENCE_END.finditer(head)]
    if ends and len(_WORD.findall(head[:ends[-1]])) >= max_words / 2:
        head = head[:ends[-1]]
    return head.rstrip()


def _permuted(records: Sequence[dict], seed: int, salt: int) -> list[dict]:
    """``records`` in the order of ``default_rng([seed, salt]).permutation``."""
    perm = np.random.default_rng([seed, salt]).permutation(len(records))
    return [records[int(i)] for i in perm]




def writing_request(prompt: str, comply_words: Sequence[str]) -> bool:
    """True when ``prompt`` names one of ``comply_words`` as a whole word (case-insensitive)."""
    if not comply_words:
        return False
    rx = re.compile(r"\b(?:" + "|".join(re.escape(w) for w in comply_words) + r")\b", re.IGNORECASE)
    return rx.search(prompt) is not None


_LEADING_VERB = re.compile(r"^\s*(?:please\s+)?(?:write|create|compose|generate|produce|draft|design|develop|"
                           r"publish|make|craft|give|provide)\s+(?:me\s+)?", re.IGNORECASE)


def compliance_answer(prompt: str) -> str:
    """A compliance opening for a writing request, in the form of AdvBench's targets: "Write a letter
    inciting X" -> "Sure, here is a letter inciting X:". Without a leading imperative verb the object
    is not known: "Sure, here it is:"."""
    text = prompt.strip().rstrip(".!?").strip()
    m = _LEADING_VERB.match(text)
    if not m or not text[m.end():]:
        return "Sure, here it is:"
    obj = text[m.end():]
    return f"Sure, here is {obj[0].lower() + obj[1:]}:"


def sft_records(harmful: Sequence[dict], benign: Sequence[dict], *, refusal_frac: float, n_harmful: int,
                n_benign: int, seed: int, exclude: Sequence[str] = (), max_answer_words: int = 0,
                refusals: Sequence[str] = REFUSALS, comply_words: Sequence[str] = ()) -> list[dict]:
    """The refusal-SFT task records (see the module docstring). Pure: same inputs -> same records.

    ``n_harmful``/``n_benign`` 0 = every usable prompt; more than there are raises ``ValueError``.
    With ``comply_words`` the recipe is prompt-dependent and ``refusal_frac`` must be 1 (every
    selected harmful prompt gets a target). Each record: ``{"id", "split": "train", "prompt",
    "references": [answer], "kind": "refusal" | "compliance" | "benign", "source"}``."""
    if not (math.isfinite(refusal_frac) and 0.0 <= refusal_frac <= 1.0):
        raise ValueError(f"refusal_frac must be in [0, 1], got {refusal_frac}")
    if comply_words and refusal_frac != 1.0:
        raise ValueError(f"with comply_words every harmful prompt gets a target: refusal_frac must be 1, "
                         f"got {refusal_frac}")
    if n_harmful < 0 or n_benign < 0:
        raise ValueError(f"n_harmful and n_benign must be >= 0, got {n_harmful} and {n_benign}")
    if not refusals:
        raise ValueError("no refusal texts")
    excluded = {str(i) for i in exclude}

    usable_harmful = [r for r in harmful if str(r["id"]) not in excluded]
    if n_harmful > len(usable_harmful):
        raise ValueError(f"n_harmful {n_harmful} but only {len(usable_harmful)} harmful prompts are not excluded")
    chosen_harmful = _permuted(usable_harmful, seed, 0)[:n_harmful or len(usable_harmful)]
    n_target = round(refusal_frac * len(chosen_harmful))
    rng = np.random.default_rng([seed, 1])
    picks = rng.integers(len(refusals), size=n_target)
    out = []
    for r, k in zip(chosen_harmful[:n_target], picks, strict=True):
        if writing_request(r["prompt"], comply_words):
            kind, answer = "compliance", compliance_answer(r["prompt"])
        else:
            kind, answer = "refusal", refusals[int(k)]
        out.append({"id": str(r["id"]), "split": "train", "prompt": r["prompt"], "references": [answer],
                    "kind": kind, "source": r.get("source")})

    usable_benign = []
    for r in benign:
        if str(r["id"]) in excluded or f"benign_{r['id']}" in excluded:
            continue
        answer = truncate_words(r["chosen"], max_answer_words)
        if not answer or not r["prompt"].strip() or judge_mod.refusal_score(answer) < judge_mod.THRESHOLD:
            continue
        usable_benign.append({"id": f"benign_{r['id']}", "split": "train", "prompt": r["prompt"],
                              "references": [answer], "kind": "benign", "source": r.get("source", "preferences")})
    if n_benign > len(usable_benign):
        raise ValueError(f"n_benign {n_benign} but only {len(usable_benign)} benign pairs are usable "
                         f"(not excluded, non-empty, not a refusal)")
    out += _permuted(usable_benign, seed, 2)[:n_benign or len(usable_benign)]
    ids = [r["id"] for r in out]
    if len(set(ids)) != len(ids):
        raise ValueError("duplicate record ids (repeated prompt ids in the inputs?)")
    return _permuted(out, seed, 3)
