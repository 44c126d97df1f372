"""The refusal evaluation of :mod:`experiments.refusal.arms` (after training, and ``--eval-only``): the
unique prompts of the pairs, one sampled response per prompt, the judge, and the refusal rates with the
counts behind them (the module docstring of :mod:`experiments.refusal.arms` gives the settings).
"""

from __future__ import annotations

import hashlib
import logging
import math

import numpy as np

from experiments.common.cli import UserError
from experiments.common.torchutil import autocast

log = logging.getLogger("refusal.arms")  # the arms' logger: the evaluation is part of their run

JUDGES = ("rule", "sorry-bench")


def eval_prompts(rows: list[dict]) -> dict[str, list[dict]]:
    """The unique prompts of the pairs by split: ``{"train": [{"id", "prompt"}], "test": [...]}`` in file
    order; prompt id = ``prompt_id`` if the record has one, else ``id``."""
    seen: dict[tuple[str, str], str] = {}
    out: dict[str, list[dict]] = {"train": [], "test": []}
    for r in rows:
        split = r["split"]
        if split not in out:
            continue
        pid = str(r.get("prompt_id", r["id"]))
        if (split, pid) in seen:
            if seen[(split, pid)] != r["prompt"]:
                raise UserError(f"prompt id {pid!r} has two different prompt texts in split {split!r}")
            continue
        seen[(split, pid)] = r["prompt"]
        out[split].append({"id": pid, "prompt": r["prompt"]})
    return out


def subset_prompts(prompts: list[dict], n: int, seed: int) -> list[dict]:
    """The first ``n`` of ``default_rng(seed).permutation`` of ``prompts``, kept in their order (0 or
    ``n >= len``: all). The same ``n`` and ``seed`` give every arm and the initial model the same subset."""
    if n <= 0 or n >= len(prompts):
        return list(prompts)
    keep = set(np.random.default_rng(seed).permutation(len(prompts))[:n].tolist())
    return [p for i, p in enumerate(prompts) if i in keep]


def _gen_seed(seed: int, split: str, start: int) -> int:
    digest = hashlib.sha256(f"{seed}\0{split}\0{start}".encode()).digest()
    return int.from_bytes(digest[:4], "big") & 0x7FFFFFFF


def generate(model, tokenizer, prompts: list[dict], *, fmt: str, split: str, seed: int, gen_kwargs: dict,
             max_prompt_tokens: int, batch_inputs: int, precision: str) -> list[str]:
    """One sampled response per prompt (batched, left-padded; batch ``b`` seeded from (seed, split, b))."""
    from experiments.rft.stats import encode_batch, render_prompt, sample_batch

    model.eval()
    device = next(model.parameters()).device
    sides = tokenizer.padding_side, tokenizer.truncation_side
    out: list[str] = []
    truncated = 0
    try:
        for start in range(0, len(prompts), batch_inputs):
            part = prompts[start:start + batch_inputs]
            texts = [render_prompt(tokenizer, p["prompt"], "chat") if fmt == "chat" else p["prompt"] + "\n"
                     for p in part]
            batch, cut = encode_batch(tokenizer, texts, max_prompt_tokens, encoder_decoder=False,
                                      special_tokens=fmt == "plain")
            truncated += cut
            with autocast(precision, device):
                texts_out, _ = sample_batch(model, tokenizer, batch, 1, gen_kwargs, _gen_seed(seed, split, start))
            out.extend(t[0] for t in texts_out)
            log.info("generate %s: %d/%d prompts", split, len(out), len(prompts))
    finally:
        tokenizer.padding_side, tokenizer.truncation_side = sides
    if truncated:
        log.warning("%d %s prompt(s) cut to their last %d tokens for generation", truncated, split, max_prompt_tokens)
    return out


def make_judge(args):
    """``judge(prompts, responses) -> np.ndarray`` of harmfulness scores (0 = refuses, 1 = complies)."""
    from experiments.refusal import judge as judge_mod

    if args.judge == "rule":
        return lambda prompts, responses: judge_mod.judge_batch(responses)
    if args.judge == "sorry-bench":
        if not args.judge_template:
            raise UserError("--judge sorry-bench needs --judge-template (a text file with {question} and {answer})")
        j = judge_mod.SorryBenchJudge(args.judge_model or judge_mod.JUDGE_MODEL, args.judge_template,
                                      batch_size=args.eval_batch_inputs)
        return j.score
    raise UserError(f"unknown --judge {args.judge!r}: use one of {', '.join(JUDGES)}")


def refusal_rate(scores: np.ndarray) -> float | None:
    """1 − mean harmfulness score over the parsed (non-NaN) scores; None when there are none."""
    s = np.asarray(scores, dtype=np.float64)
    ok = s[~np.isnan(s)]
    return None if ok.size == 0 else float(1.0 - ok.mean())


def evaluate(model, tokenizer, prompts: dict[str, list[dict]], judge, *, seed: int, **gen) -> dict:
    """Generate + judge for every split; returns the response rows and the per-split rates."""
    rows, rates, unparsed, counts = [], {}, {}, {}
    for split in ("train", "test"):
        ps = prompts[split]
        if not ps:
            rates[split], unparsed[split], counts[split] = None, 0, (0, 0.0)
            continue
        responses = generate(model, tokenizer, ps, split=split, seed=seed, **gen)
        scores = np.asarray(judge([p["prompt"] for p in ps], responses), dtype=np.float64)
        if scores.shape != (len(ps),):
            raise UserError(f"the judge returned {scores.shape} scores for {len(ps)} responses")
        rates[split], unparsed[split] = refusal_rate(scores), int(np.isnan(scores).sum())
        ok = scores[~np.isnan(scores)]
        counts[split] = (int(ok.size), float((1.0 - ok).sum()))  # (judged responses, refusals among them)
        rows += [{"id": p["id"], "split": split, "response": r, "score": None if math.isnan(s) else float(s)}
                 for p, r, s in zip(ps, responses, scores.tolist())]
        log.info("%s refusal rate %s (%d prompts, %d unparsed)", split,
                 "n/a" if rates[split] is None else f"{rates[split]:.4f}", len(ps), unparsed[split])
    return {"rows": rows, "rates": rates, "unparsed": unparsed, "counts": counts}
