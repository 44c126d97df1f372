"""The four training arms of P2 §6 (SORRY-Bench unintentional unalignment, Fig. 3, Table 16) through
TRL's ``DPOTrainer``, with the refusal evaluation after training.

Arms (``--arm``):

* ``dpo``            -- DPO (sigmoid loss) on the ``split == "train"`` pairs of ``--pairs``;
* ``dpo_sft``        -- the same pairs, loss ``["sigmoid", "sft"]`` with ``loss_weights [1, λ]``
  (``--sft-coef λ``; the paper picks λ from {0.01, 0.1, 1} by the highest mean train refusal rate:
  1 for Gemma-2B-IT, 0.1 for Llama-3-8B-Instruct);
* ``gold``           -- DPO on the ``split == "train"`` pairs of ``--gold-pairs`` (paper: lr 1e-6);
* ``dpo_rr``         -- DPO on the train pairs of ``--pairs`` whose ``pair_type`` is ``refusal/refusal``
  (both responses judged refusals): the paper's own ablation (P2 §6: "training only on two-refusal
  pairs ... still lowered refusal rates"), i.e. unalignment with no compliance ever preferred;
* ``ches_filtered``  -- DPO on the train pairs of ``--pairs`` whose ``--ches-measure`` (default
  ``ches_ln``, the length-normalised CHES of the scorer's CSV, joined by id) is among the lowest
  ``--keep-fraction`` (default 0.05): ``ceil(fraction·N)`` pairs, at least 1, ties broken by the order
  of the pairs file (:func:`experiments.ches.subsets.lowest_fraction`; 5 % of 370 = 19, as the paper).

The SFT term. TRL 1.16's ``loss_type="sft"`` is ``-chosen_per_token_logps[chosen_mask].mean()``: the
NLL of the chosen responses averaged over every chosen TOKEN of the batch (Σ_i Σ_k −ln π / Σ_i |y+_i|).
The paper's ``--sft_coeff λ`` adds −λ·mean_i ln π(y+_i|x_i) with SUMMED-token log-probs, i.e. |y+|
(up to 512 tokens) times more. ``--sft-norm sequence`` (default) reproduces the paper: the trainer
rescales the sft weight of every batch to ``λ · Σ_i |y+_i| / B`` so the term is λ × the mean summed
NLL; ``--sft-norm token`` keeps TRL's per-token mean (weight λ as given).

Tokens, reference log-probs, optimiser and seeds are those of :mod:`experiments.ches.dpo` (whose
helpers are reused): prompt = one user turn with the chat template (``--prompt-format``), trained
completion = response ids + EOS, reference = the initial model's log-probs computed once, RMSprop
with a constant lr, the seed ordering the pairs and the trainer's shuffling, the model reloaded from
disk for every seed. The metric is the mean over the training pairs of the summed-token change of
ln π(y+|x) (P2 Table 16), and of ln π(y−|x).

Evaluation (after training, per seed): one sampled response per unique TRAIN and TEST prompt of
``--pairs`` (prompt id = the pair's ``prompt_id`` if present, else its ``id``), temperature 0.7, top_p
1, ``--eval-top-k`` (default 50: the official eval passes no top_k, so transformers' default 50
applied), ``--eval-max-new-tokens`` 512, chat template, left-padded batches under bf16 autocast with
``--precision bf16`` (:mod:`experiments.rft.stats`). Judge: the rule judge
:func:`experiments.refusal.judge.judge_batch` (tiny) or the SORRY-Bench judge LLM (``--judge
sorry-bench``); refusal rate = 1 − mean score (unparsed judge outputs left out and counted).
The summary keeps the counts behind each rate, so rates of several seeds can be pooled:
``n_scored_<split>`` (judged responses = prompts − unparsed) and ``refused_<split>`` (Σ (1 − score)
over them: the number of refusals for a 0/1 judge), ``refusal_rate_<split> = refused / n_scored``.

``--eval-only`` evaluates ``--model`` as it is (the initial refusal rates): no training, Δ = 0; given
the arms' ``--seed`` list it samples with each of their seeds (the workflow does so).

    python -m experiments.refusal.arms --arm dpo_sft --sft-coef 0.1 --model DIR --pairs pairs.jsonl \\
        --seed 0 1 2 --lr 5e-6 --out-dir 'runs/dpo_sft/seed~{seed}'
    python -m experiments.refusal.arms --arm ches_filtered --ches-scores scores.csv --keep-fraction 0.05 ...
    python -m experiments.refusal.arms --eval-only --model DIR --pairs pairs.jsonl --seed 0 1 2 \\
        --out-dir 'runs/initial/seed~{seed}'

Output per seed: ``<out>/summary.json`` and ``<out>/responses.jsonl`` (``id``, ``split``, ``response``,
``score``).

Layout: this module reads and selects the training pairs, trains (TRL) and is the CLI; the
evaluation (prompts, sampling, judge, rates) is in :mod:`experiments.refusal.evaluation`.
"""

from __future__ import annotations

import argparse
import gc
import json
import logging
import shutil
import tempfile
import time
from pathlib import Path

import torch

from experiments.ches.dpo import (
    _out_dirs,
    _trainer_class,
    encode_subset,
    pair_logps,
)
from experiments.common.cli import UserError, main_guard, thread_count
from experiments.common.io import (
    read_records,
    run_manifest,
    write_json,
    write_jsonl,
)
from experiments.common.torchutil import (
    device_and_precision,
    set_seed,
    set_threads,
)
from experiments.refusal.evaluation import JUDGES, eval_prompts, evaluate, make_judge, subset_prompts

log = logging.getLogger("refusal.arms")

ARMS = ("dpo", "dpo_sft", "gold", "ches_filtered", "dpo_rr")
DEFAULT_LR = {"dpo": 5e-6, "dpo_sft": 5e-6, "gold": 1e-6, "ches_filtered": 5e-6, "dpo_rr": 5e-6}  # P2 §6 / App. I.3
SFT_NORMS = ("sequence", "token")
PAIR_KEYS = ("id", "prompt", "chosen", "rejected", "split")
SUMMARY_KEYS = ("arm", "seed", "n_pairs", "lr", "beta", "sft_coef", "delta_logp_chosen", "delta_logp_rejected",
                "refusal_rate_train", "refusal_rate_test", "train_loss_first", "train_loss_last", "steps",
                "manifest")


# ------------------------------------------------------------------------------------------ data
def read_pairs(path: str | Path, what: str = "--pairs", allow_empty: bool = False) -> list[dict]:
    """Preference pairs ``{"id", "prompt", "chosen", "rejected", "split", ...}`` of a JSONL file."""
    rows = read_records(path, what, PAIR_KEYS, allow_empty=allow_empty)
    for k, r in enumerate(rows, 1):
        bad = [key for key in ("prompt", "chosen", "rejected") if not isinstance(r[key], str)]
        if bad:
            raise UserError(f"{path}: record {k}: {', '.join(bad)} must be string(s)")
    return rows


def train_rows(rows: list[dict], path, what: str = "--pairs") -> list[dict]:
    out = [r for r in rows if r["split"] == "train"]
    if not out:
        raise UserError(f"{what} {path} has no split == 'train' records")
    return out


def read_lr_file(path: str | Path) -> float | None:
    """The learning rate chosen by :mod:`experiments.refusal.lr_rule` (its JSON's ``lr``); None when
    it had no pairs to choose on (the arm then has none to train on either)."""
    try:
        obj = json.loads(Path(path).read_text(encoding="utf-8"))
        lr = obj["lr"]
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise UserError(f"--lr-file {path}: expected the JSON of experiments.refusal.lr_rule with 'lr' ({e})") from None
    if obj.get("no_pairs"):
        return None
    if not isinstance(lr, (int, float)) or not lr > 0:
        raise UserError(f"--lr-file {path}: no learning rate passed the rule (lr = {lr!r}); see its 'tried' list")
    return float(lr)


def ches_filter(pairs: list[dict], scores: list[dict], fraction: float, measure: str = "ches_ln") -> list[dict]:
    """The pairs whose ``measure`` is among the lowest ``fraction`` (``ceil(fraction·N)``, at least 1;
    ties broken by the order of ``pairs``), returned in the order of ``pairs``. ``scores`` are the rows
    of the scorer's CSV (:func:`experiments.ches.scorer.read_scores`), joined by id; every pair needs one."""
    from experiments.ches.subsets import lowest_fraction

    if not 0.0 < fraction <= 1.0:
        raise UserError(f"--keep-fraction must be in (0, 1], got {fraction}")
    if not pairs:
        raise UserError("no pairs to filter")
    if measure not in scores[0]:
        raise UserError(f"the scores have no column {measure!r} (columns: {sorted(scores[0])})")
    by_id = {str(s["id"]): s[measure] for s in scores}
    missing = [str(p["id"]) for p in pairs if str(p["id"]) not in by_id]
    if missing:
        raise UserError(f"{len(missing)} train pair id(s) have no CHES score (first: {missing[0]!r}); "
                        "score the same pairs file")
    values = [float(by_id[str(p["id"])]) for p in pairs]
    return [pairs[i] for i in lowest_fraction(values, fraction)]


def refusal_refusal(pairs: list[dict], path) -> list[dict]:
    """The pairs whose two responses were both judged refusals (``pair_type == "refusal/refusal"``, as
    written by ``build sample-pairs``), in file order."""
    untyped = sum("pair_type" not in p for p in pairs)
    if untyped:
        raise UserError(f"--arm dpo_rr needs the pair_type of every pair; {untyped} pair(s) of {path} have none "
                        "(pairs of `python -m experiments.refusal.build sample-pairs` have it)")
    return [p for p in pairs if p["pair_type"] == "refusal/refusal"]


# -------------------------------------------------------------------------------------- training
def loss_config(arm: str, sft_coef: float | None) -> tuple[list[str], list[float] | None]:
    """TRL ``loss_type`` and ``loss_weights`` of an arm."""
    if arm not in ARMS:
        raise UserError(f"unknown --arm {arm!r}: use one of {', '.join(ARMS)}")
    if arm == "dpo_sft":
        if sft_coef is None or not sft_coef > 0:
            raise UserError("--arm dpo_sft needs --sft-coef > 0 (paper grid 0.01, 0.1, 1)")
        return ["sigmoid", "sft"], [1.0, float(sft_coef)]
    if sft_coef is not None:
        raise UserError(f"--sft-coef is only for --arm dpo_sft (got --arm {arm})")
    return ["sigmoid"], None


def arm_trainer_class(sft_norm: str = "sequence"):
    """The pre-tokenised DPO trainer of :mod:`experiments.ches.dpo`; with ``sft_norm="sequence"`` the
    weight of an ``sft`` loss is rescaled per batch by the mean number of chosen tokens, which turns
    TRL's per-token mean NLL into the paper's mean over pairs of the summed-token NLL."""
    if sft_norm not in SFT_NORMS:
        raise UserError(f"unknown --sft-norm {sft_norm!r}: use one of {', '.join(SFT_NORMS)}")
    base = _trainer_class()
    if sft_norm == "token":
        return base

    class SequenceSFTDPOTrainer(base):
        def _compute_loss(self, model, inputs, return_outputs):
            # TRL's batch is [chosen rows; rejected rows]; its sft term averages over the chosen tokens
            # completion_mask[:, 1:] (the shifted mask, as TRL's sft branch uses).
            chosen = inputs["completion_mask"].chunk(2, dim=0)[0][..., 1:]
            tokens_per_pair = float(chosen.sum()) / max(chosen.size(0), 1)
            weights = self.args.loss_weights or [1.0] * len(self.loss_types)
            self.loss_weights = [w * tokens_per_pair if t == "sft" else w
                                 for t, w in zip(self.loss_types, weights, strict=True)]
            return super()._compute_loss(model, inputs, return_outputs)

    return SequenceSFTDPOTrainer


def train(model, tokenizer, rows: list[dict], *, loss_type: list[str], loss_weights: list[float] | None,
          sft_norm: str, beta: float, lr: float, batch_size: int, epochs: int, seed: int, precision: str,
          device: torch.device, work_dir: Path) -> dict:
    """TRL's DPOTrainer over ``rows`` (with ``ref_*_logps``): :func:`experiments.ches.dpo.train` with this
    arm's ``loss_type``/``loss_weights`` and the SFT-term normalisation of ``sft_norm``."""
    from experiments.ches.dpo import train as dpo_train

    return dpo_train(model, tokenizer, rows, beta=beta, lr=lr, batch_size=batch_size, epochs=epochs, seed=seed,
                     precision=precision, device=device, work_dir=work_dir, loss_type=loss_type,
                     loss_weights=loss_weights, trainer_cls=arm_trainer_class(sft_norm))


# ------------------------------------------------------------------------------------------- run
def _check_args(args) -> None:
    if args.eval_only:
        if args.arm not in (None, *ARMS):
            raise UserError(f"unknown --arm {args.arm!r}: use one of {', '.join(ARMS)}")
    elif args.arm is None:
        raise UserError("--arm is required (or --eval-only)")
    if args.arm is not None and not args.eval_only:
        loss_config(args.arm, args.sft_coef)
        if args.arm == "gold" and not args.gold_pairs:
            raise UserError("--arm gold needs --gold-pairs")
        if args.arm == "ches_filtered" and not args.ches_scores:
            raise UserError("--arm ches_filtered needs --ches-scores (the CSV of `python -m experiments.ches score`)")
        if args.arm != "gold" and args.gold_pairs:
            raise UserError("--gold-pairs is only for --arm gold")
        if args.arm != "ches_filtered" and args.ches_scores:
            raise UserError("--ches-scores is only for --arm ches_filtered")
    if not 0.0 < args.keep_fraction <= 1.0:
        raise UserError(f"--keep-fraction must be in (0, 1], got {args.keep_fraction}")
    if args.lr is not None and not args.lr > 0:
        raise UserError("--lr must be > 0")
    if args.lr is not None and args.lr_file:
        raise UserError("give --lr or --lr-file, not both")
    if args.eval_train_prompts < 0:
        raise UserError("--eval-train-prompts must be >= 0 (0 = every train prompt)")
    if not args.beta > 0:
        raise UserError("--beta must be > 0")
    for name in ("batch_size", "epochs", "eval_batch_inputs", "eval_max_new_tokens"):
        if getattr(args, name) < 1:
            raise UserError(f"--{name.replace('_', '-')} must be >= 1")
    for name in ("max_prompt_tokens", "max_response_tokens"):
        if getattr(args, name) < 0:
            raise UserError(f"--{name.replace('_', '-')} must be >= 0 (0 = no limit)")
    if not args.eval_temperature > 0 or not 0.0 < args.eval_top_p <= 1.0 or args.eval_top_k < 0:
        raise UserError("--eval-temperature must be > 0, --eval-top-p in (0, 1], --eval-top-k >= 0")
    if args.sft_norm not in SFT_NORMS:
        raise UserError(f"unknown --sft-norm {args.sft_norm!r}: use one of {', '.join(SFT_NORMS)}")
    if args.judge not in JUDGES:
        raise UserError(f"unknown --judge {args.judge!r}: use one of {', '.join(JUDGES)}")


def select_training_pairs(args, pairs: list[dict]) -> list[dict]:
    """The training pairs of the arm (see the module docstring)."""
    if args.arm == "gold":
        gold = read_pairs(args.gold_pairs, "--gold-pairs", allow_empty=True)
        if not gold:  # no prompt had both a refusal and a compliance (e.g. a model that never refuses)
            log.warning("gold: %s has no pairs: the arm is evaluated without training", args.gold_pairs)
            return []
        rows = train_rows(gold, args.gold_pairs, "--gold-pairs")
        overlap = len({str(r.get("prompt_id", r["id"])) for r in rows}
                      & {str(r.get("prompt_id", r["id"])) for r in pairs if r["split"] == "train"})
        log.info("gold: %d train pairs from %s (%d share a prompt id with the train pairs of %s)",
                 len(rows), args.gold_pairs, overlap, args.pairs)
        return rows
    rows = train_rows(pairs, args.pairs)
    if args.arm == "ches_filtered":
        from experiments.ches.scorer import read_scores

        kept = ches_filter(rows, read_scores(args.ches_scores), args.keep_fraction, args.ches_measure)
        log.info("ches_filtered: kept %d of %d train pairs (lowest %s, fraction %s)", len(kept), len(rows),
                 args.ches_measure, args.keep_fraction)
        return kept
    if args.arm == "dpo_rr":
        kept = refusal_refusal(rows, args.pairs)
        log.info("dpo_rr: %d of %d train pairs are refusal/refusal", len(kept), len(rows))
        return kept
    return rows


def run(args) -> list[dict]:
    """Train the arm once per seed in one process (the data, tokenizer, judge and "before" log-probs
    once; the model reloaded from disk for every seed), then evaluate; or, with ``--eval-only``,
    evaluate ``--model`` once per seed."""
    from experiments.models.load import load_causal_lm, load_tokenizer
    from experiments.persona.prompts import resolve_format

    started = time.time()
    _check_args(args)
    out_dirs = _out_dirs(args.out_dir, list(args.seed))
    pairs = read_pairs(args.pairs)
    prompts = eval_prompts(pairs)
    n_train_prompts = len(prompts["train"])
    prompts["train"] = subset_prompts(prompts["train"], args.eval_train_prompts, args.eval_subset_seed)
    if not prompts["train"]:
        raise UserError(f"--pairs {args.pairs} has no split == 'train' records")
    if not prompts["test"]:
        log.warning("--pairs %s has no split == 'test' records: refusal_rate_test will be null", args.pairs)
    train_pairs = [] if args.eval_only else select_training_pairs(args, pairs)
    skipped = not args.eval_only and not train_pairs
    arm = "initial" if args.eval_only else (args.arm_name or args.arm)
    loss_type, loss_weights = (["sigmoid"], None) if args.eval_only else loss_config(args.arm, args.sft_coef)
    lr = (read_lr_file(args.lr_file) if args.lr_file else args.lr if args.lr is not None
          else DEFAULT_LR.get(args.arm or "dpo"))
    if lr is None and train_pairs:
        raise UserError(f"--lr-file {args.lr_file} chose no lr (it saw no train pairs) but this arm has "
                        f"{len(train_pairs)}: rerun experiments.refusal.lr_rule on the same pairs")

    set_threads(args.threads)
    # chosen at the DPO batch's rows (~85 % of an arm's FLOP; the 16-row decode probe sits near the 1.2x
    # threshold), and so also for --eval-only: the initial rates and the arms share one precision path
    seq = (args.max_prompt_tokens + args.max_response_tokens) or 256
    device, precision = device_and_precision(args.device, args.precision, 2 * args.batch_size * seq)

    def load_model():
        try:
            return load_causal_lm(args.model, device=str(device), dtype=torch.float32)
        except (FileNotFoundError, OSError) as e:
            raise UserError(str(e).splitlines()[0]) from None

    try:
        tokenizer = load_tokenizer(args.model)
    except (FileNotFoundError, OSError) as e:
        raise UserError(str(e).splitlines()[0]) from None
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    fmt = resolve_format(tokenizer, args.prompt_format)
    judge = make_judge(args)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    gen = {"fmt": fmt, "precision": precision, "batch_inputs": args.eval_batch_inputs,
           "max_prompt_tokens": args.max_prompt_tokens or 10 ** 9,
           "gen_kwargs": {"temperature": args.eval_temperature, "top_p": args.eval_top_p,
                          "top_k": args.eval_top_k or None, "max_new_tokens": args.eval_max_new_tokens}}

    def measure(model, rows):
        return pair_logps(model, rows, batch_size=args.batch_size, precision=precision, pad_id=pad)

    model = load_model()
    base_rows = []
    if not args.eval_only and not skipped:
        base_rows = encode_subset(tokenizer, train_pairs, fmt, args.max_prompt_tokens or None,
                                  args.max_response_tokens or None, eos=not args.no_eos)
        c0_all, r0_all = measure(model, base_rows)
        for r, a, b in zip(base_rows, c0_all.tolist(), r0_all.tolist()):
            r["ref_chosen_logps"], r["ref_rejected_logps"] = a, b
        log.info("%s: %d training pairs, mean ln π(y+) before %.4f", arm, len(base_rows), float(c0_all.mean()))

    from experiments.common import checkpoint, steptimes

    cache = checkpoint.SeedCache(args.checkpoint_dir)
    summaries, fresh = [], True  # fresh: the loaded model has not been trained yet
    for seed in args.seed:
        seed_started = time.time()
        out_dir = out_dirs[seed]
        restored = cache.restore(seed, out_dir)  # finished before this job was killed: no retraining
        if restored is not None:
            summaries.append(restored)
            continue
        if not fresh and not args.eval_only and not skipped:
            del model
            gc.collect()  # the last seed's model, trainer and optimizer state go before the next loads
            model = load_model()
        fresh = False
        set_seed(seed)
        out_dir.mkdir(parents=True, exist_ok=True)
        summary = {"arm": arm, "seed": seed, "n_pairs": len(base_rows), "lr": None if args.eval_only else lr,
                   "beta": args.beta, "sft_coef": args.sft_coef if arm == "dpo_sft" else None,
                   "sft_norm": args.sft_norm if arm == "dpo_sft" else None,
                   "loss_type": None if args.eval_only else loss_type, "loss_weights": loss_weights,
                   "batch_size": args.batch_size, "epochs": args.epochs, "precision": precision,
                   "prompt_format": fmt, "eos": not args.no_eos, "judge": args.judge,
                   "keep_fraction": args.keep_fraction if args.arm == "ches_filtered" else None,
                   "lr_file": args.lr_file, "eval_train_prompts": args.eval_train_prompts,
                   "eval_subset_seed": args.eval_subset_seed, "n_train_prompts_all": n_train_prompts,
                   "eval_generation": gen["gen_kwargs"]}
        if args.eval_only or skipped:
            summary.update({"delta_logp_chosen": 0.0 if args.eval_only else None,
                            "delta_logp_rejected": 0.0 if args.eval_only else None, "train_loss_first": None,
                            "train_loss_last": None, "train_losses": [], "steps": 0, "train_seconds": 0.0,
                            "skipped": "no training pairs" if skipped else None})
        else:
            perm = torch.randperm(len(base_rows), generator=torch.Generator().manual_seed(seed)).tolist()
            rows = [dict(base_rows[i]) for i in perm]
            c0, r0 = c0_all[perm], r0_all[perm]
            work = Path(tempfile.mkdtemp(prefix=".trainer.", dir=out_dir))
            t_train = time.time()
            try:
                result = train(model, tokenizer, rows, loss_type=loss_type, loss_weights=loss_weights,
                               sft_norm=args.sft_norm, beta=args.beta, lr=lr, batch_size=args.batch_size,
                               epochs=args.epochs, seed=seed, precision=precision, device=device, work_dir=work)
            finally:
                shutil.rmtree(work, ignore_errors=True)
            train_s = time.time() - t_train
            c1, r1 = measure(model, rows)
            if not (torch.isfinite(c1).all() and torch.isfinite(r1).all()):
                raise UserError(f"ln π is not finite after training ({result['steps']} steps, seed {seed}); "
                                "lower --lr or use fp32")
            losses = [h["loss"] for h in result["log_history"] if "loss" in h]
            if not losses:
                raise UserError("the trainer logged no loss (no training step ran)")
            summary.update({
                "logp_chosen_before": float(c0.mean()), "logp_chosen_after": float(c1.mean()),
                "delta_logp_chosen": float((c1 - c0).mean()),
                "logp_rejected_before": float(r0.mean()), "logp_rejected_after": float(r1.mean()),
                "delta_logp_rejected": float((r1 - r0).mean()),
                "train_loss_first": float(losses[0]), "train_loss_last": float(losses[-1]),
                "train_losses": [float(x) for x in losses], "steps": result["steps"],
                "train_seconds": round(train_s, 3)})
            del result  # the trainer holds the optimizer state and gradients
            gc.collect()
            model.zero_grad(set_to_none=True)
            log.info("%s seed=%d: n=%d steps=%d  Δ ln π(y+)=%.4f  Δ ln π(y−)=%.4f  loss %.4f -> %.4f", arm, seed,
                     len(rows), summary["steps"], summary["delta_logp_chosen"], summary["delta_logp_rejected"],
                     losses[0], losses[-1])
        t_eval = time.time()
        steptimes.first_step()  # an eval-only arm's steps start here (a trained one's at its first optimiser step)
        ev = evaluate(model, tokenizer, prompts, judge, seed=seed, **gen)
        steptimes.last_step()
        summary.update({
            "refusal_rate_train": ev["rates"]["train"], "refusal_rate_test": ev["rates"]["test"],
            "n_prompts_train": len(prompts["train"]), "n_prompts_test": len(prompts["test"]),
            "n_scored_train": ev["counts"]["train"][0], "refused_train": ev["counts"]["train"][1],
            "n_scored_test": ev["counts"]["test"][0], "refused_test": ev["counts"]["test"][1],
            "judge_unparsed": ev["unparsed"], "eval_seconds": round(time.time() - t_eval, 3),
            "manifest": run_manifest(seed=seed, device=str(device), started=seed_started if summaries else started,
                                     threads=args.threads, model=str(args.model), pairs=str(args.pairs),
                                     gold_pairs=args.gold_pairs, ches_scores=args.ches_scores,
                                     seeds_in_process=list(args.seed), steps_wall=steptimes.record()),
        })
        write_jsonl(out_dir / "responses.jsonl", ev["rows"])
        write_json(out_dir / "summary.json", summary)
        log.info("%s seed=%d: refusal rate train %s test %s -> %s", arm, seed, ev["rates"]["train"],
                 ev["rates"]["test"], out_dir)
        summaries.append(summary)
        cache.store(seed, out_dir)
    checkpoint.finished(args.checkpoint_dir)
    return summaries


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m experiments.refusal.arms", description=__doc__.splitlines()[0])
    p.add_argument("--arm", help=" | ".join(ARMS))
    p.add_argument("--eval-only", action="store_true",
                   help="evaluate --model without training (initial refusal rates; Δ = 0)")
    p.add_argument("--model", required=True, help="prepared model folder")
    p.add_argument("--pairs", required=True,
                   help="preference pairs JSONL {id, prompt, chosen, rejected, split}; eval prompts by split")
    p.add_argument("--gold-pairs", help="gold pairs JSONL (--arm gold; its split == 'train' rows)")
    p.add_argument("--ches-scores", help="scores CSV of `python -m experiments.ches score` on --pairs")
    p.add_argument("--ches-measure", default="ches_ln", help="score column to filter on (default ches_ln)")
    p.add_argument("--keep-fraction", type=float, default=0.05, help="lowest fraction kept (ches_filtered)")
    p.add_argument("--seed", type=int, nargs="+", default=[0],
                   help="one or more seeds, trained one after another in this process")
    p.add_argument("--lr", type=float, default=None,
                   help=f"learning rate (default per arm: {DEFAULT_LR})")
    p.add_argument("--lr-file", default=None,
                   help="JSON of experiments.refusal.lr_rule: train at its chosen 'lr' (the paper's rule)")
    p.add_argument("--arm-name", default=None,
                   help="the arm's name in the summary (default --arm; e.g. ches_filtered_p15 for a second fraction)")
    p.add_argument("--beta", type=float, default=0.1)
    p.add_argument("--sft-coef", type=float, default=None, help="λ of the SFT term (--arm dpo_sft)")
    p.add_argument("--sft-norm", default="sequence",
                   help="sequence: λ × mean summed-token NLL of y+ (paper); token: TRL's per-token mean")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--epochs", type=int, default=1)
    p.add_argument("--prompt-format", default="auto", help="auto | chat | plain")
    p.add_argument("--max-prompt-tokens", type=int, default=0,
                   help="prompt token budget for DPO (0 = all): over it, the template is kept and the middle of "
                        "the text dropped")
    p.add_argument("--max-response-tokens", type=int, default=0, help="keep the START of responses (0 = all)")
    p.add_argument("--no-eos", action="store_true", help="do not append EOS to untruncated responses")
    p.add_argument("--eval-max-new-tokens", type=int, default=512)
    p.add_argument("--eval-temperature", type=float, default=0.7)
    p.add_argument("--eval-top-p", type=float, default=1.0)
    p.add_argument("--eval-top-k", type=int, default=50, help="0 = no top-k filter")
    p.add_argument("--eval-batch-inputs", type=int, default=16, help="prompts per generate call")
    p.add_argument("--eval-train-prompts", type=int, default=0,
                   help="evaluate a fixed random subset of this many train prompts (0 = all; every test prompt always)")
    p.add_argument("--eval-subset-seed", type=int, default=0, help="seed of that subset (the same for every arm)")
    p.add_argument("--judge", default="rule", help="rule | sorry-bench")
    p.add_argument("--judge-model", help="SORRY-Bench judge folder or Hub id (--judge sorry-bench)")
    p.add_argument("--judge-template", help="judge prompt template file (--judge sorry-bench)")
    p.add_argument("--precision", default="fp32", help="auto | fp32 | bf16")
    p.add_argument("--device", default="auto")
    p.add_argument("--threads", type=thread_count, default=1)
    p.add_argument("--checkpoint-dir", default=None,
                   help="finished seeds are kept here too (outside --out-dir); a rerun restores them, not retrains")
    p.add_argument("--out-dir", required=True,
                   help="run folder; must contain '{seed}' (formatted per seed) when several seeds are given")
    return p


@main_guard
def main(argv=None):
    summaries = run(build_parser().parse_args(argv))
    return summaries[0] if len(summaries) == 1 else summaries


if __name__ == "__main__":
    main()
