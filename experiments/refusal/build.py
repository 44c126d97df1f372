"""build_refusal_data: the data of the P2 §6 refusal experiment at tiny scale.

Three subcommands (``python -m experiments.refusal.build <cmd> ...``):

``sft-data`` -- the refusal-SFT set that makes a small chat model aligned, with a refusal that depends
    on the prompt (:mod:`experiments.refusal.sft_data`: the recipes and the rule). Task records
    ``{"id", "split": "train", "prompt", "references": [answer], "kind", "source"}`` for
    :mod:`experiments.rft.sft` (run it with ``--prompt-format chat``); ``--harmful`` takes one or
    more prompt files (their records are pooled, ids must not repeat) minus the ``--exclude`` ids
    (the DPO/eval prompts).

``sample-pairs`` -- on-policy preference pairs (P2 §6): the first ``--n-prompts`` of a seeded
    permutation of the prompt file (0 = all; :func:`experiments.refusal.prompts.subsample`), split
    85/15 with :func:`experiments.refusal.prompts.split_train_test`; TWO responses per prompt sampled
    with the chat template (temperature 1, top_p 1, top_k 0 = no top-k filter, as the paper),
    batched with ``generate(num_return_sequences=2)`` (:func:`experiments.rft.stats.encode_batch`
    pads on the left), each batch seeded with ``seed + index of its first prompt``; judged (0 =
    refuses, 1 = complies); one pair per prompt with :func:`experiments.refusal.pairs.make_pair`
    (lower score chosen; ties by :func:`~experiments.refusal.pairs.seeded_tie_break` with ``--seed``, or
    with ``--tie-break pairrm --reward-model DIR`` by PairRM as the paper, :mod:`experiments.refusal.pairrm`).
    Writes the pairs of BOTH splits (``split`` "train"/"test": the test split's prompts are only for
    evaluation), the samples and a summary (composition per split, ties, refusal rates of the
    samples, tokens/s, the sampling settings). Same seed, model, prompts and ``--batch-inputs`` ->
    the same files.

``gold-pairs`` -- the tiny analogue of the paper's gold pairs (one human-judged refusal vs one
    compliance per prompt, from responses of several models): for every TRAIN prompt of
    ``--aligned-samples`` (the samples file of ``sample-pairs`` on the refusal-SFT model; their scores
    are reused) ``--k`` more responses are sampled from ``--base-model`` (the un-aligned model; same
    decoding) and judged; the pool (aligned responses first, then the base ones) goes to
    :func:`experiments.refusal.pairs.gold_pair` with ``--seed``. Prompts without both a refusal and
    a compliance are dropped (the paper drops 15 that way). Same pair schema (``pair_type``
    "refusal/compliance", split "train") plus a summary of kept/dropped prompts and where chosen and
    rejected came from.

Pair rows: ``{"id", "prompt", "chosen", "rejected", "chosen_score", "rejected_score", "pair_type",
"tied", "split"}``. Sample rows: ``{"id", "prompt", "split", "responses", "scores"}`` (gold-pairs'
optional ``--out-samples``: the same with the base model's ``k`` responses).

Judges (``--judge``): ``rule`` (default) = :func:`experiments.refusal.judge.judge_batch`;
``sorry-bench`` = :class:`experiments.refusal.judge.SorryBenchJudge` (paper scale; needs
``--judge-model`` and ``--judge-template``). Use the same judge for sample-pairs and gold-pairs.

    python -m experiments.refusal.build sft-data --harmful advbench.jsonl --benign ultrafeedback.jsonl \\
        --exclude dpo_prompts.jsonl --n-harmful 300 --refusal-frac 0.8 --n-benign 300 --seed 0 \\
        --max-answer-words 120 --out sft.jsonl
    python -m experiments.refusal.build sample-pairs --model resources/models/sft/model \\
        --prompts dpo_prompts.jsonl --n-prompts 0 --test-ratio 0.15 --seed 128 --max-new-tokens 128 \\
        --batch-inputs 16 --precision bf16 --out-pairs pairs.jsonl --out-samples samples.jsonl \\
        --out-summary pairs_summary.json
    python -m experiments.refusal.build gold-pairs --aligned-samples samples.jsonl \\
        --base-model resources/models/base --k 4 --seed 128 --max-new-tokens 128 --batch-inputs 16 \\
        --precision bf16 --out-pairs gold.jsonl --out-summary gold_summary.json
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from experiments.common import steptimes
from experiments.common.cli import UserError, main_guard, thread_count
from experiments.common.io import (
    read_jsonl,
    read_records,
    run_manifest,
    write_json,
    write_jsonl,
)
from experiments.refusal import judge as judge_mod
from experiments.refusal import pairs as pairs_mod
from experiments.refusal.prompts import PAPER_TEST_RATIO, split_train_test, subsample
from experiments.refusal.sft_data import sft_records, truncate_words, writing_request

log = logging.getLogger("build_refusal_data")

# --------------------------------------------------------------------------------------------------
# Input files

def read_exclude(path: str | Path) -> list[str]:
    """Prompt ids to exclude: a JSON list of ids, a JSON object with an ``ids`` list, or a JSONL of
    records with ``id`` (e.g. the DPO prompt file written by :mod:`experiments.refusal.prompts`)."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"--exclude file {path} does not exist")
    text = path.read_text(encoding="utf-8")
    try:
        obj = json.loads(text)
    except json.JSONDecodeError:
        try:
            return [str(r["id"]) for r in read_jsonl(path)]
        except (ValueError, KeyError, TypeError):
            raise UserError(f"{path}: expected a JSON list of ids or a JSONL of records with 'id'") from None
    if isinstance(obj, dict) and "id" in obj:  # a one-line JSONL
        return [str(obj["id"])]
    if isinstance(obj, dict):
        obj = obj.get("ids")
    if not isinstance(obj, list) or not all(isinstance(x, (str, int)) for x in obj):
        raise UserError(f"{path}: expected a JSON list of ids (or {{\"ids\": [...]}})")
    return [str(x) for x in obj]


# --------------------------------------------------------------------------------------------------
# Sampling and judging

#: The paper's decoding for the on-policy pairs (P2 §6): top_k 0 = no top-k filter.
PAPER_SAMPLING = {"temperature": 1.0, "top_p": 1.0, "top_k": 0}

Scorer = Callable[[Sequence[str], Sequence[str]], np.ndarray]


def make_scorer(kind: str = "rule", model_dir: str | None = None, template: str | None = None,
                batch_size: int = 8, device: str | None = None) -> tuple[Scorer, str]:
    """``(scorer(prompts, responses) -> scores, name)``. ``rule`` calls
    :func:`experiments.refusal.judge.judge_batch` (looked up at call time, so tests can patch it)."""
    if kind == "rule":
        return (lambda prompts, responses: np.asarray(judge_mod.judge_batch(list(responses)), dtype=np.float64)), "rule"
    if kind == "sorry-bench":
        if not template:
            raise UserError("--judge sorry-bench needs --judge-template (a text file with {question} and {answer})")
        j = judge_mod.SorryBenchJudge(model_dir or judge_mod.JUDGE_MODEL, template, batch_size=batch_size,
                                      device=device)
        return (lambda prompts, responses: j.score(list(prompts), list(responses))), f"sorry-bench:{j.model_dir}"
    raise UserError(f"unknown judge {kind!r}: use rule or sorry-bench")


def sample_responses(model, tokenizer, records: Sequence[dict], *, k: int, max_new_tokens: int,
                     max_prompt_tokens: int, batch_inputs: int, seed: int, precision: str,
                     desc: str = "sample") -> tuple[list[list[str]], dict]:
    """``k`` sampled responses per record (chat template, :data:`PAPER_SAMPLING`), ``batch_inputs``
    prompts per ``generate`` call, batch seeded with ``seed + index of its first record``; progress
    is logged about every 10 %. Returns the texts [n][k] and ``{"generated_tokens", "generate_s",
    "truncated_prompts"}``."""
    from experiments.common.torchutil import autocast
    from experiments.rft.stats import encode_batch, render_prompt, sample_batch

    device = next(model.parameters()).device
    gen_kwargs = {**PAPER_SAMPLING, "max_new_tokens": max_new_tokens}
    outs: list[list[str]] = []
    tokens = truncated = 0
    t_gen = 0.0
    n = len(records)
    next_log = 0.1
    for start in range(0, n, batch_inputs):
        part = records[start:start + batch_inputs]
        texts = [render_prompt(tokenizer, r["prompt"], "chat") for r in part]
        batch, cut = encode_batch(tokenizer, texts, max_prompt_tokens, False, special_tokens=False)
        truncated += cut
        t0 = time.time()
        with autocast(precision, device):
            texts_out, generated = sample_batch(model, tokenizer, batch, k, gen_kwargs, seed + start)
        t_gen += time.time() - t0
        tokens += generated
        outs.extend(texts_out)
        done = len(outs) / n
        if done >= next_log or len(outs) == n:
            log.info("%s: %d/%d prompts (%.0f%%), %.0f generated tokens/s", desc, len(outs), n, 100 * done,
                     tokens / max(t_gen, 1e-9))
            next_log = math.floor(done * 10 + 1) / 10
    return outs, {"generated_tokens": tokens, "generate_s": round(t_gen, 3), "truncated_prompts": truncated}


def _scores(scorer: Scorer, prompts: Sequence[str], responses: Sequence[str]) -> tuple[np.ndarray, float]:
    t0 = time.time()
    s = np.asarray(scorer(prompts, responses), dtype=np.float64)
    if s.shape != (len(responses),):
        got = s.shape[0] if s.ndim else "a scalar"
        raise UserError(f"the judge returned {got} scores for {len(responses)} responses")
    bad = ~np.isfinite(s) | (s < 0) | (s > 1)
    if bad.any():
        raise UserError(f"the judge gave {int(bad.sum())} of {len(s)} scores that are not in [0, 1] "
                        f"(unparsed judge outputs?)")
    return s, time.time() - t0


def _load_policy(path: str, device_name: str, precision: str, threads: int, tokens: int):
    from experiments.common.torchutil import (
        resolve_device,
        resolve_precision,
        set_threads,
    )
    from experiments.models.load import load_generator, load_tokenizer

    set_threads(threads)
    if not Path(path).is_dir():
        raise UserError(f"model folder {path} does not exist")
    try:
        device = resolve_device(device_name)
        precision = resolve_precision(precision, device, tokens)   # ``tokens``: the decode rows
    except (ValueError, RuntimeError) as e:
        raise UserError(str(e)) from None
    tokenizer = load_tokenizer(path)
    if not tokenizer.chat_template:
        raise UserError(f"{path}: the tokenizer has no chat template (the refusal experiment uses chat models)")
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    model = load_generator(path, str(device))
    if model.config.is_encoder_decoder:
        raise UserError(f"{path}: an encoder-decoder model; the refusal experiment needs a decoder-only chat model")
    return model, tokenizer, device, precision


def _free(model) -> None:
    import gc

    import torch

    del model
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def _finite(obj):
    """NaN/inf -> None, so the summary is strict JSON."""
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, dict):
        return {k: _finite(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_finite(v) for v in obj]
    return obj


def _refusal_rate(scores) -> float:
    s = np.asarray(list(scores), dtype=np.float64)
    return float(1.0 - s.mean()) if s.size else math.nan


# --------------------------------------------------------------------------------------------------
# Pairs (pure given the samples)

PAIR_KEYS = ("id", "prompt", "chosen", "rejected", "chosen_score", "rejected_score", "pair_type", "tied", "split")


def pairrm_tie_break(samples: Sequence[dict], compare, seed: int) -> pairs_mod.TieBreak:
    """The paper's tie rule: PairRM (``compare(prompts, a, b) -> logits``, > 0 when ``a`` is better;
    :meth:`experiments.refusal.pairrm.PairRMScorer.compare`) scores every tied sample in one batched pass,
    and :func:`experiments.refusal.pairs.reward_model_tie_break` chooses the preferred response (an exact
    0 logit falls back to ``seeded_tie_break(seed)``)."""
    tied = [s for s in samples if float(s["scores"][0]) == float(s["scores"][1])]
    logits = compare([s["prompt"] for s in tied], [s["responses"][0] for s in tied],
                     [s["responses"][1] for s in tied]) if tied else []
    if len(logits) != len(tied):
        raise UserError(f"the reward model returned {len(logits)} logits for {len(tied)} tied pairs")
    table = {str(s["id"]): (float(x) / 2, -float(x) / 2) for s, x in zip(tied, logits)}
    # the "prompt" handed to the scorer is the prompt id itself: the logits were computed above
    return pairs_mod.reward_model_tie_break(lambda pid, responses: table[pid], lambda pid: pid,
                                            fallback=pairs_mod.seeded_tie_break(seed))


def build_pairs(samples: Sequence[dict], seed: int, tie: pairs_mod.TieBreak | None = None) -> list[dict]:
    """One pair row per sample row ``{"id", "prompt", "split", "responses": [a, b], "scores": [sa, sb]}``
    (:func:`experiments.refusal.pairs.make_pair`, ties by ``tie``, default ``seeded_tie_break(seed)``)."""
    tie = tie or pairs_mod.seeded_tie_break(seed)
    out = []
    for s in samples:
        try:
            p = pairs_mod.make_pair(s["id"], s["responses"], s["scores"], tie)
        except ValueError as e:
            raise UserError(str(e)) from None
        out.append({"id": p["id"], "prompt": s["prompt"], "chosen": p["chosen"], "rejected": p["rejected"],
                    "chosen_score": p["chosen_score"], "rejected_score": p["rejected_score"],
                    "pair_type": p["pair_type"], "tied": p["tied"], "split": s["split"]})
    return out


def build_gold_pairs(prompts: Sequence[dict], pools: Sequence[Sequence[tuple[str, float, str]]],
                     seed: int) -> tuple[list[dict], dict]:
    """Gold pairs from pools of ``(response, score, source)`` per prompt (``{"id", "prompt"}``): a
    refusal (score < 0.5) chosen vs a compliance rejected, by :func:`experiments.refusal.pairs.gold_pair`.
    Returns the pair rows and ``{"kept", "dropped_no_refusal", "dropped_no_compliance", "dropped_ids",
    "chosen_from", "rejected_from"}`` (source -> count)."""
    rows, dropped_ids = [], []
    dropped = {"no_refusal": 0, "no_compliance": 0}
    chosen_from: dict[str, int] = {}
    rejected_from: dict[str, int] = {}
    for rec, pool in zip(prompts, pools, strict=True):
        refusals = [x for x in pool if pairs_mod.is_refusal(x[1])]
        compliances = [x for x in pool if not pairs_mod.is_refusal(x[1])]
        # gold_pair's draw depends only on the seed, the prompt id and the list lengths, so index labels
        # pick the same elements as the texts would, and tell us which response (and source) it was
        g = pairs_mod.gold_pair(rec["id"], [str(i) for i in range(len(refusals))],
                                [str(i) for i in range(len(compliances))], seed)
        if g is None:
            dropped["no_refusal" if not refusals else "no_compliance"] += 1
            dropped_ids.append(str(rec["id"]))
            continue
        c, r = refusals[int(g["chosen"])], compliances[int(g["rejected"])]
        chosen_from[c[2]] = chosen_from.get(c[2], 0) + 1
        rejected_from[r[2]] = rejected_from.get(r[2], 0) + 1
        rows.append({"id": str(rec["id"]), "prompt": rec["prompt"], "chosen": c[0], "rejected": r[0],
                     "chosen_score": float(c[1]), "rejected_score": float(r[1]), "pair_type": g["pair_type"],
                     "tied": False, "split": "train"})
    info = {"kept": len(rows), "dropped_no_refusal": dropped["no_refusal"],
            "dropped_no_compliance": dropped["no_compliance"], "dropped_ids": dropped_ids,
            "chosen_from": dict(sorted(chosen_from.items())), "rejected_from": dict(sorted(rejected_from.items()))}
    return rows, info


# --------------------------------------------------------------------------------------------------
# Subcommands

def cmd_sft_data(args) -> dict:
    harmful = [r for path in args.harmful for r in read_records(path, "harmful prompt", ("id", "prompt"))]
    benign = read_records(args.benign, "preference", ("id", "prompt", "chosen"),
                           hint=" (normalised pairs: run python -m experiments.data.preferences first)")
    exclude = read_exclude(args.exclude) if args.exclude else []
    try:
        records = sft_records(harmful, benign, refusal_frac=args.refusal_frac, n_harmful=args.n_harmful,
                              n_benign=args.n_benign, seed=args.seed, exclude=exclude,
                              max_answer_words=args.max_answer_words, comply_words=args.comply_words)
    except ValueError as e:
        raise UserError(str(e)) from None
    write_jsonl(args.out, records)
    n_ref = sum(r["kind"] == "refusal" for r in records)
    n_comply = sum(r["kind"] == "compliance" for r in records)
    excluded = set(exclude)
    n_selected = args.n_harmful or sum(str(r["id"]) not in excluded for r in harmful)
    held_out = [r for r in harmful if str(r["id"]) in excluded]
    summary = {"n_records": len(records), "n_refusal": n_ref, "n_compliance": n_comply,
               "n_benign": len(records) - n_ref - n_comply,
               "n_harmful_selected": n_selected, "n_harmful_left_out": n_selected - n_ref - n_comply,
               "comply_words": list(args.comply_words),
               # the rule's compliance class on the excluded (DPO) prompts found in --harmful: what a model
               # that learned the rule exactly would comply with there
               "n_excluded_in_harmful": len(held_out),
               "comply_share_excluded": (sum(writing_request(r["prompt"], args.comply_words) for r in held_out)
                                         / len(held_out) if held_out and args.comply_words else None),
               "refusal_frac": args.refusal_frac, "n_excluded_ids": len(exclude), "seed": args.seed,
               "max_answer_words": args.max_answer_words, "harmful": [str(h) for h in args.harmful],
               "benign": str(args.benign),
               "n_benign_pairs_answer_is_refusal": sum(
                   judge_mod.refusal_score(truncate_words(r["chosen"], args.max_answer_words)) < judge_mod.THRESHOLD
                   for r in benign),
               "refusal_texts_used": len({r["references"][0] for r in records if r["kind"] == "refusal"})}
    log.info("wrote %d SFT records to %s: harmful prompts %d with a refusal, %d with a compliance opening "
             "(%d selected, %d left out), %d benign", len(records), args.out, n_ref, n_comply, n_selected,
             n_selected - n_ref - n_comply, summary["n_benign"])
    if args.out_summary:
        write_json(args.out_summary, summary)
    return summary


def _check_sampling_args(args) -> None:
    for name in ("max_new_tokens", "batch_inputs", "max_prompt_tokens"):
        if getattr(args, name) < 1:
            raise UserError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")


def _sampling_settings(args, precision: str, k: int) -> dict:
    return {**PAPER_SAMPLING, "max_new_tokens": args.max_new_tokens, "samples_per_prompt": k,
            "max_prompt_tokens": args.max_prompt_tokens, "batch_inputs": args.batch_inputs, "precision": precision,
            "prompt_format": "chat", "seed": args.seed}


def cmd_sample_pairs(args) -> dict:
    started = time.time()
    _check_sampling_args(args)
    if args.n_prompts < 0:
        raise UserError(f"--n-prompts must be >= 0, got {args.n_prompts}")
    if not 0.0 < args.test_ratio < 1.0:
        raise UserError(f"--test-ratio must be in (0, 1), got {args.test_ratio}")
    if (args.tie_break == "pairrm") != bool(args.reward_model):
        raise UserError("--tie-break pairrm needs --reward-model (and --reward-model is only for it)")
    prompts = read_records(args.prompts, "prompt", ("id", "prompt"))
    selected = subsample(prompts, args.n_prompts, args.seed)
    train, test = split_train_test(selected, args.test_ratio, seed=args.seed)
    split_of = {str(r["id"]): "train" for r in train} | {str(r["id"]): "test" for r in test}
    log.info("%d of %d prompts: %d train, %d test", len(selected), len(prompts), len(train), len(test))

    from experiments.common.torchutil import set_seed

    set_seed(args.seed)
    scorer, judge_name = make_scorer(args.judge, args.judge_model, args.judge_template, args.judge_batch_size)
    model, tokenizer, device, precision = _load_policy(args.model, args.device, args.precision, args.threads,
                                                        tokens=2 * args.batch_inputs)
    steptimes.first_step()  # the steps: sampling and judging (experiments.runtime: fixed cost)
    responses, gen = sample_responses(model, tokenizer, selected, k=2, max_new_tokens=args.max_new_tokens,
                                      max_prompt_tokens=args.max_prompt_tokens, batch_inputs=args.batch_inputs,
                                      seed=args.seed, precision=precision, desc="sample-pairs")
    _free(model)
    flat_prompts = [r["prompt"] for r in selected for _ in range(2)]
    scores, judge_s = _scores(scorer, flat_prompts, [x for pair in responses for x in pair])
    scores = scores.reshape(len(selected), 2)
    samples = [{"id": str(r["id"]), "prompt": r["prompt"], "split": split_of[str(r["id"])], "responses": list(outs),
                "scores": [float(x) for x in s]} for r, outs, s in zip(selected, responses, scores, strict=True)]
    tie, tie_name = None, f"seeded_tie_break({args.seed})"
    if args.tie_break == "pairrm":
        from experiments.refusal.pairrm import PairRMScorer

        rm = PairRMScorer(args.reward_model, device=str(device), batch_size=args.judge_batch_size)
        tie, tie_name = pairrm_tie_break(samples, rm.compare, args.seed), f"pairrm({args.reward_model})"
        _free(rm.model)
    pair_rows = build_pairs(samples, args.seed, tie)
    steptimes.last_step()
    write_jsonl(args.out_samples, samples)
    write_jsonl(args.out_pairs, pair_rows)

    by_split = {sp: [p for p in pair_rows if p["split"] == sp] for sp in ("train", "test")}
    summary = {
        "model": str(args.model), "prompts": str(args.prompts), "n_prompts_file": len(prompts),
        "n_prompts": len(selected), "n_train": len(train), "n_test": len(test), "test_ratio": args.test_ratio,
        "composition": {sp: pairs_mod.composition(v) for sp, v in (*by_split.items(), ("all", pair_rows))},
        "ties": {sp: sum(p["tied"] for p in v) for sp, v in (*by_split.items(), ("all", pair_rows))},
        "refusal_rate_samples": {sp: _refusal_rate(s for x in samples if x["split"] == sp for s in x["scores"])
                                 for sp in ("train", "test")},
        "judge": judge_name, "tie_break": tie_name, "sampling": _sampling_settings(args, precision, 2),
        **gen, "judge_s": round(judge_s, 3),
        "tokens_per_s": round(gen["generated_tokens"] / max(gen["generate_s"], 1e-9), 1),
        "manifest": run_manifest(seed=args.seed, device=str(device), started=started, steps_wall=steptimes.record()),
    }
    summary = _finite(summary)
    write_json(args.out_summary, summary)
    comp = summary["composition"]["train"]["counts"]
    log.info("wrote %d pairs to %s (train: %s; %d ties); sample refusal rate train %.3f; %.0f tokens/s",
             len(pair_rows), args.out_pairs, ", ".join(f"{k} {v}" for k, v in comp.items()), summary["ties"]["train"],
             math.nan if summary["refusal_rate_samples"]["train"] is None else summary["refusal_rate_samples"]["train"],
             summary["tokens_per_s"])
    return summary


def _read_samples(path: str) -> list[dict]:
    rows = read_records(path, "aligned samples", ("id", "prompt", "split", "responses", "scores"))
    for r in rows:
        if len(r["responses"]) != len(r["scores"]) or not r["responses"]:
            raise UserError(f"{path}: sample {r['id']!r} needs as many scores as responses (and at least one)")
        for s in r["scores"]:
            if not isinstance(s, (int, float)) or not math.isfinite(s):
                raise UserError(f"{path}: sample {r['id']!r} has a score {s!r} that is not a finite number")
    return rows


def cmd_gold_pairs(args) -> dict:
    started = time.time()
    _check_sampling_args(args)
    if args.k < 1:
        raise UserError(f"--k must be >= 1, got {args.k}")
    aligned = [r for r in _read_samples(args.aligned_samples) if r["split"] == "train"]
    if not aligned:
        raise UserError(f"{args.aligned_samples}: no train samples")
    log.info("%d train prompts from %s", len(aligned), args.aligned_samples)

    from experiments.common.torchutil import set_seed

    set_seed(args.seed)
    scorer, judge_name = make_scorer(args.judge, args.judge_model, args.judge_template, args.judge_batch_size)
    model, tokenizer, device, precision = _load_policy(args.base_model, args.device, args.precision, args.threads,
                                                        tokens=args.k * args.batch_inputs)
    steptimes.first_step()
    responses, gen = sample_responses(model, tokenizer, aligned, k=args.k, max_new_tokens=args.max_new_tokens,
                                      max_prompt_tokens=args.max_prompt_tokens, batch_inputs=args.batch_inputs,
                                      seed=args.seed, precision=precision, desc="gold-pairs (base model)")
    _free(model)
    flat_prompts = [r["prompt"] for r in aligned for _ in range(args.k)]
    scores, judge_s = _scores(scorer, flat_prompts, [x for outs in responses for x in outs])
    scores = scores.reshape(len(aligned), args.k)
    pools = [[(t, float(s), "aligned") for t, s in zip(r["responses"], r["scores"], strict=True)]
             + [(t, float(s), "base") for t, s in zip(outs, sc, strict=True)]
             for r, outs, sc in zip(aligned, responses, scores, strict=True)]
    rows, info = build_gold_pairs(aligned, pools, args.seed)
    steptimes.last_step()
    write_jsonl(args.out_pairs, rows)
    if not rows:
        log.warning("no prompt has both a refusal and a compliance: the gold-pair file is empty")
    if args.out_samples:
        write_jsonl(args.out_samples, [{"id": str(r["id"]), "prompt": r["prompt"], "split": "train",
                                        "responses": list(outs), "scores": [float(x) for x in sc]}
                                       for r, outs, sc in zip(aligned, responses, scores, strict=True)])
    summary = _finite({
        "aligned_samples": str(args.aligned_samples), "base_model": str(args.base_model), "k": args.k,
        "n_train_prompts": len(aligned), **info, "n_dropped": len(info["dropped_ids"]),
        "refusal_rate_aligned": _refusal_rate(s for r in aligned for s in r["scores"]),
        "refusal_rate_base": _refusal_rate(scores.ravel()), "judge": judge_name,
        "sampling": _sampling_settings(args, precision, args.k), **gen, "judge_s": round(judge_s, 3),
        "tokens_per_s": round(gen["generated_tokens"] / max(gen["generate_s"], 1e-9), 1),
        "manifest": run_manifest(seed=args.seed, device=str(device), started=started, steps_wall=steptimes.record()),
    })
    write_json(args.out_summary, summary)
    log.info("wrote %d gold pairs to %s; dropped %d prompts (%d without a refusal, %d without a compliance); "
             "chosen from %s, rejected from %s", len(rows), args.out_pairs, summary["n_dropped"],
             info["dropped_no_refusal"], info["dropped_no_compliance"], info["chosen_from"], info["rejected_from"])
    return summary


def cmd_gold_human(args) -> dict:
    """Paper-scale gold pairs: for each train prompt of ``--aligned-samples``, one human-judged refusal
    (chosen) vs one human-judged compliance (rejected) from SORRY-Bench's human judgments
    (``experiments.refusal.prompts --source sorry_bench_human``); prompts without both are dropped."""
    from experiments.refusal.pairs import gold_pair, human_refusals_compliances

    aligned = [r for r in _read_samples(args.aligned_samples) if r["split"] == "train"]
    human = {str(r["id"]): r for r in read_records(args.human, "human judgments", ("id", "judgments"))}
    rows, dropped = [], []
    for r in aligned:
        rec = human.get(str(r["id"]))
        refusals, compliances = human_refusals_compliances(rec["judgments"]) if rec else ([], [])
        pair = gold_pair(str(r["id"]), refusals, compliances, args.seed)
        if pair is None:
            dropped.append(str(r["id"]))
            continue
        rows.append({**pair, "prompt": r["prompt"], "chosen_score": 0.0, "rejected_score": 1.0, "split": "train"})
    write_jsonl(args.out_pairs, rows)
    summary = {"n_train_prompts": len(aligned), "n_pairs": len(rows), "n_dropped": len(dropped),
               "dropped_ids": dropped, "source": str(args.human), "seed": args.seed}
    write_json(args.out_summary, summary)
    log.info("wrote %d human gold pairs; dropped %d prompts without both a refusal and a compliance",
             len(rows), len(dropped))
    return summary


# --------------------------------------------------------------------------------------------------
# CLI

def _add_sampling(s: argparse.ArgumentParser, default_seed: int) -> None:
    s.add_argument("--seed", type=int, default=default_seed, help="selection, split, sampling and tie seed")
    s.add_argument("--max-new-tokens", type=int, default=128, help="response length cap (paper: 512)")
    s.add_argument("--max-prompt-tokens", type=int, default=512, help="keep the END of a longer chat prompt")
    s.add_argument("--batch-inputs", type=int, default=8, help="prompts per generate call")
    s.add_argument("--precision", default="fp32", choices=("fp32", "bf16", "auto"),
                   help="bf16 = bf16 autocast while sampling (fp32 weights)")
    s.add_argument("--device", default="auto")
    s.add_argument("--threads", type=thread_count, default=0, help="torch threads (0 = torch's default)")
    s.add_argument("--judge", default="rule", choices=("rule", "sorry-bench"))
    s.add_argument("--judge-model", default=None,
                   help=f"sorry-bench judge folder or Hub id (default {judge_mod.JUDGE_MODEL})")
    s.add_argument("--judge-template", default=None, help="sorry-bench judge template file ({question}, {answer})")
    s.add_argument("--judge-batch-size", type=int, default=8)


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="python -m experiments.refusal.build", description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="cmd", required=True)

    s = sub.add_parser("sft-data", help="refusal-SFT task records (refusals for harmful prompts + benign answers)")
    s.add_argument("--harmful", required=True, nargs="+", help="harmful prompt records (experiments.refusal.prompts)")
    s.add_argument("--benign", required=True, help="preference pairs {id, prompt, chosen, rejected} (UltraFeedback)")
    s.add_argument("--refusal-frac", type=float, required=True, help="fraction of the selected harmful prompts "
                   "that get a refusal; the rest are left out (1 with --comply-words)")
    s.add_argument("--comply-words", nargs="*", default=[], help="prompt-dependent recipe: harmful prompts naming "
                   "one of these writing genres get a compliance opening, the others a refusal")
    s.add_argument("--n-harmful", type=int, default=0, help="harmful prompts to select (0 = all not excluded)")
    s.add_argument("--n-benign", type=int, default=0, help="benign prompts (0 = all usable)")
    s.add_argument("--max-answer-words", type=int, default=120,
                   help="benign answers cut to this many words (0 = no cut)")
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--exclude", default=None, help="ids never to use: JSON list or JSONL of records with 'id'")
    s.add_argument("--out", required=True, help="JSONL task records, split 'train' (for experiments.rft.sft)")
    s.add_argument("--out-summary", default=None, help="optional JSON with the counts")
    s.set_defaults(fn=cmd_sft_data)

    s = sub.add_parser("sample-pairs", help="on-policy pairs: 2 sampled responses per prompt, judged")
    s.add_argument("--model", required=True, help="prepared model folder (the aligned chat model)")
    s.add_argument("--prompts", required=True, help="prompt records (experiments.refusal.prompts)")
    s.add_argument("--n-prompts", type=int, default=0, help="first N of a seeded permutation (0 = all)")
    s.add_argument("--test-ratio", type=float, default=PAPER_TEST_RATIO)
    _add_sampling(s, default_seed=128)
    s.add_argument("--tie-break", default="seeded", choices=("seeded", "pairrm"),
                   help="equal judge scores: a seeded coin per prompt id, or PairRM (the paper)")
    s.add_argument("--reward-model", default=None, help="--tie-break pairrm: prepared llm-blender/PairRM-hf folder")
    s.add_argument("--out-pairs", required=True)
    s.add_argument("--out-samples", required=True)
    s.add_argument("--out-summary", required=True)
    s.set_defaults(fn=cmd_sample_pairs)

    s = sub.add_parser("gold-pairs", help="refusal vs compliance pairs from the aligned and the base model")
    s.add_argument("--aligned-samples", required=True, help="samples JSONL of sample-pairs (aligned model)")
    s.add_argument("--base-model", required=True, help="prepared model folder (the un-aligned model)")
    s.add_argument("--k", type=int, default=4, help="responses per train prompt from the base model")
    _add_sampling(s, default_seed=128)
    s.add_argument("--out-pairs", required=True)
    s.add_argument("--out-summary", required=True)
    s.add_argument("--out-samples", default=None, help="optional JSONL with the base model's judged responses")
    s.set_defaults(fn=cmd_gold_pairs)

    s = sub.add_parser("gold-human", help="refusal vs compliance pairs from human judgments (SORRY-Bench)")
    s.add_argument("--aligned-samples", required=True, help="samples JSONL of sample-pairs (its train prompts)")
    s.add_argument("--human", required=True, help="records of experiments.refusal.prompts --source sorry_bench_human")
    s.add_argument("--seed", type=int, default=128)
    s.add_argument("--out-pairs", required=True)
    s.add_argument("--out-summary", required=True)
    s.set_defaults(fn=cmd_gold_human)
    return ap


@main_guard
def main(argv=None):
    args = build_parser().parse_args(argv)
    return args.fn(args)


if __name__ == "__main__":
    main()
