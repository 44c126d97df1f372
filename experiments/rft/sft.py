"""Supervised finetuning (SFT) on a GRUE task of P1: alone, as the init of SFT→RFT, and "cheap SFT".

The labelled pool is the ``--split`` records of a normalised task file (:mod:`experiments.rft.tasks`),
optionally capped to the first ``--max-pool`` of the official permutation (``--data-seed``, 7): the
RFT pool is the first N of the same permutation, so a pool of at least N holds every input RFT trains
and evaluates on, as the paper's SFT on the whole train set does. "Cheap SFT" (P1 §4.1) trains on a
fraction of the labelled inputs for a fraction of the steps:

* data: the official rule, the first ``int(n * data_frac)`` of ``np.random.RandomState(data_seed)
  .permutation(n)`` (:func:`subsample_indices`; seed 7 = ``train_samples_rnd_seed``); a smaller
  fraction's inputs are a prefix of a larger one's;
* steps: ``ceil(steps_frac * full)`` with ``full = ceil(epochs * ceil(n_examples_pool / batch))``
  computed on the FULL pool (:func:`sft_max_steps`), so with 1 % of the data the trainer cycles over
  the small subset until ``max_steps``.

Every (input, reference) pair is one example (``--references first``: the first reference only).

Tokens. Decoder-only models: the prompt is rendered with :func:`experiments.rft.stats.render_prompt`
and tokenised by :func:`experiments.rft.stats.encode_batch`, so the prompt ids are exactly those
generation sees (chat: no added special tokens; plain: the tokenizer's own; the END of the prompt is
kept, ``--max-prompt-tokens``); the completion is the target's ids (``add_special_tokens=False``, the
START kept, ``--max-target-tokens``) plus EOS. TRL's ``SFTTrainer`` gets them pre-tokenised as
``input_ids`` + ``completion_mask`` with ``completion_only_loss=True`` (it turns the mask into
``labels`` = -100 on the prompt; padding is -100 in its collator) and ``max_length=None`` (no second
truncation), no packing. Encoder-decoder models (T5): ``Seq2SeqTrainer`` with
``DataCollatorForSeq2Seq``; the prompt is truncated from the right as ``encode_batch`` does for
encoder-decoder models, labels = target ids + EOS.

Optimiser AdamW (the transformers default, ``max_grad_norm`` 1.0); bf16 = the trainer's autocast with
fp32 master weights. Outputs under ``--out-dir``: ``model/`` (safetensors, tokenizer and a
``prepare_manifest.json`` with the source's spec plus ``sft_from``/``sft_summary``, so
:mod:`experiments.models.load` loads it), ``train_log.csv`` (one row per step) and ``summary.json``
(written last).

    python -m experiments.rft.sft --model resources/models/M --data resources/data/grue/T.jsonl \\
        --data-frac 0.1 --steps-frac 0.5 --epochs 2 --batch-size 8 --lr 1e-5 --out-dir results/.../sft
"""

from __future__ import annotations

import argparse
import copy
import logging
import math
import shutil
import tempfile
import time
from fractions import Fraction
from pathlib import Path

import numpy as np

from experiments.common import steptimes
from experiments.common.cli import UserError, main_guard, thread_count
from experiments.common.io import (
    atomic_dir,
    read_jsonl,
    run_manifest,
    sha256_file,
    write_csv,
    write_json,
)

log = logging.getLogger("rft.sft")

SCHEDULERS = ("constant", "cosine", "constant_with_warmup", "linear")
REFERENCES = ("all", "first")
LOG_COLUMNS = ["step", "loss", "learning_rate", "grad_norm"]
SUMMARY_KEYS = ("n_pool", "n_examples_pool", "n_examples_used", "data_frac", "steps_frac", "max_steps", "steps",
                "epochs_over_subset", "loss_first", "loss_last", "train_seconds", "precision", "manifest")
MANIFEST_NAME = "prepare_manifest.json"


# ------------------------------------------------------------------------------------ pure helpers
def subsample_indices(n: int, frac: float, seed: int) -> np.ndarray:
    """The official selection of labelled inputs: ``RandomState(seed).permutation(n)[:int(n * frac)]``.

    ``frac`` must be in (0, 1]; ``frac == 1`` keeps all ``n`` (in permutation order). Since the
    permutation depends only on ``n`` and ``seed``, a smaller fraction's subset is a prefix of a larger
    one's (1 % ⊂ 10 % ⊂ 100 %). ``int(n * frac)`` is the plain float product, as in the official code
    (``int(100 * 0.29) == 28``). Raises ``ValueError`` when ``frac`` is out of range or keeps nothing.
    """
    if not isinstance(n, (int, np.integer)) or n < 0:
        raise ValueError(f"n must be a non-negative integer, got {n!r}")
    if not (math.isfinite(frac) and 0.0 < frac <= 1.0):
        raise ValueError(f"fraction must be in (0, 1], got {frac!r}")
    k = int(n * frac)
    if k == 0:
        raise ValueError(f"fraction {frac!r} of {n} keeps int({n} * {frac!r}) = 0 inputs")
    return np.random.RandomState(seed).permutation(n)[:k]


def _exact(x: float) -> Fraction:
    """The decimal a float was written as (``0.1`` -> 1/10), so ``0.1 * 30`` is exactly 3."""
    return Fraction(repr(float(x)))


def sft_max_steps(n_full_examples: int, batch_size: int, epochs: float, steps_frac: float) -> int:
    """Optimiser steps of one (cheap) SFT run.

    ``full = ceil(epochs * ceil(n_full_examples / batch_size))`` is the number of steps of the run on
    the FULL labelled pool (not on the subsample); the run takes ``max(1, ceil(steps_frac * full))``.
    Products are taken on the decimals as written (``0.1 * 30`` is 3, not 3.0000000000000004).
    """
    if n_full_examples < 1 or batch_size < 1:
        raise ValueError(f"n_full_examples and batch_size must be >= 1, got {n_full_examples}, {batch_size}")
    if not (math.isfinite(epochs) and epochs > 0):
        raise ValueError(f"epochs must be > 0, got {epochs!r}")
    if not (math.isfinite(steps_frac) and 0.0 < steps_frac <= 1.0):
        raise ValueError(f"steps_frac must be in (0, 1], got {steps_frac!r}")
    per_epoch = -(-n_full_examples // batch_size)
    full = math.ceil(_exact(epochs) * per_epoch)
    return max(1, math.ceil(_exact(steps_frac) * full))


def sft_examples(records: list[dict], references: str = "all") -> list[tuple[str, str, str]]:
    """(prompt, target, record id) examples: one per (record, reference) pair (``"all"``), or one per
    record with its first reference (``"first"``). A record without references raises ``ValueError``."""
    if references not in REFERENCES:
        raise ValueError(f"references must be one of {REFERENCES}, got {references!r}")
    out = []
    for r in records:
        refs = list(r.get("references") or [])
        if not refs:
            raise ValueError(f"record {r.get('id')!r} has no reference to train on")
        for ref in refs if references == "all" else refs[:1]:
            out.append((r["prompt"], ref, str(r["id"])))
    return out


# --------------------------------------------------------------------------------------- tokens
def encode_examples(tokenizer, examples: list[tuple[str, str, str]], *, prompt_format: str, max_prompt_tokens: int,
                    max_target_tokens: int, encoder_decoder: bool, chunk: int = 512) -> tuple[list[dict], dict]:
    """Token ids of each example: ``{"id", "prompt_ids", "target_ids"}``, ``target_ids`` ending in EOS.

    Prompts go through the generation path (:func:`render_prompt` + :func:`encode_batch`: left
    truncation for decoder-only models, right for encoder-decoder; special tokens for plain prompts
    only), each distinct prompt once. Targets: ``add_special_tokens=False``, the first
    ``max_target_tokens`` kept, then EOS. Returns the rows and counts of truncated prompts/targets.
    """
    from experiments.rft.stats import encode_batch, render_prompt

    eos = tokenizer.eos_token_id
    if eos is None:
        raise UserError("the tokenizer has no EOS token")
    prompts = list(dict.fromkeys(p for p, _, _ in examples))
    texts = [render_prompt(tokenizer, p, prompt_format) for p in prompts]
    ids, cut_prompts = {}, 0
    for s in range(0, len(texts), chunk):
        batch, cut = encode_batch(tokenizer, texts[s:s + chunk], max_prompt_tokens, encoder_decoder,
                                  special_tokens=prompt_format == "plain")
        cut_prompts += cut
        for p, row, mask in zip(prompts[s:s + chunk], batch["input_ids"], batch["attention_mask"], strict=True):
            ids[p] = row[mask.bool()].tolist()
    targets = list(dict.fromkeys(t for _, t, _ in examples))
    enc = tokenizer(targets, add_special_tokens=False)["input_ids"] if targets else []
    tids = dict(zip(targets, enc, strict=True))
    rows, cut_targets = [], 0
    for p, t, rid in examples:
        full = tids[t]
        cut_targets += len(full) > max_target_tokens
        rows.append({"id": rid, "prompt_ids": ids[p], "target_ids": list(full[:max_target_tokens]) + [eos]})
    return rows, {"truncated_prompts": cut_prompts, "truncated_targets": cut_targets}


# ------------------------------------------------------------------------------------- training
def _callbacks(max_steps: int):
    from transformers import TrainerCallback

    every = max(1, round(max_steps / 10))

    class GuardAndProgress(TrainerCallback):
        """A non-finite loss stops the run with a UserError naming the step; progress every ~10 %."""

        def on_log(self, args, state, control, logs=None, **kwargs):
            loss = (logs or {}).get("loss")
            if loss is None:
                return
            if not math.isfinite(float(loss)):
                raise UserError(f"training loss is {loss} at step {state.global_step}; lower --lr or use fp32")
            if state.global_step % every == 0 or state.global_step == max_steps:
                log.info("step %d/%d  loss %.4f  lr %.3g", state.global_step, max_steps, float(loss),
                         float(logs.get("learning_rate", float("nan"))))

    return [GuardAndProgress()]


def make_trainer(model, tokenizer, rows: list[dict], *, encoder_decoder: bool, max_steps: int, batch_size: int,
                 lr: float, lr_scheduler: str, warmup_steps: int, weight_decay: float, seed: int, precision: str,
                 device, work_dir: Path, save_steps: int = 0):
    """The trainer for ``rows`` (:func:`encode_examples`): TRL ``SFTTrainer`` for decoder-only models,
    ``Seq2SeqTrainer`` for encoder-decoder ones; not started. ``save_steps > 0``: resumable checkpoints
    in ``work_dir`` (:mod:`experiments.common.checkpoint`)."""
    from datasets import Dataset
    from transformers import PrinterCallback

    from experiments.common import checkpoint

    common = dict(
        output_dir=str(work_dir), max_steps=max_steps, per_device_train_batch_size=batch_size,
        gradient_accumulation_steps=1, learning_rate=lr, lr_scheduler_type=lr_scheduler, warmup_steps=warmup_steps,
        weight_decay=weight_decay, optim="adamw_torch", seed=seed, data_seed=seed, report_to=[], save_strategy="no",
        logging_steps=1, logging_nan_inf_filter=False, disable_tqdm=True, bf16=precision == "bf16", fp16=False,
        use_cpu=device.type == "cpu", activation_checkpointing=False, dataloader_num_workers=0,
        remove_unused_columns=True,
    )
    if save_steps > 0:
        common.update(checkpoint.trainer_args(work_dir, save_steps))
    callbacks = _callbacks(max_steps) + [c for c in [checkpoint.kill_after_save_callback()] if c]
    callbacks.append(steptimes.trainer_callback())  # the optimiser steps' wall clock (experiments.runtime)
    if encoder_decoder:
        from transformers import (
            DataCollatorForSeq2Seq,
            Seq2SeqTrainer,
            Seq2SeqTrainingArguments,
        )

        tokenizer.padding_side = "right"
        ds = Dataset.from_list([{"input_ids": r["prompt_ids"], "attention_mask": [1] * len(r["prompt_ids"]),
                                 "labels": r["target_ids"]} for r in rows])
        collator = DataCollatorForSeq2Seq(tokenizer, model=model, label_pad_token_id=-100, padding=True)
        trainer = Seq2SeqTrainer(model=model, args=Seq2SeqTrainingArguments(**common), train_dataset=ds,
                                 data_collator=collator, processing_class=tokenizer, callbacks=callbacks)
    else:
        from transformers import Trainer
        from trl import SFTConfig, SFTTrainer

        class PlainLossSFTTrainer(SFTTrainer):
            """TRL's SFTTrainer with transformers' own loss: the model's shifted cross-entropy, averaged over
            the completion tokens (labels -100 on prompt and padding). TRL's default takes it through a fused
            LM head that also logs entropy and token accuracy, which the suite does not read; on a CPU that
            path costs about a third of each step (SmolLM2-135M, 8 x 128 tokens, bf16, 1 thread: 8.0 -> 5.4 s).
            The two losses agree to rounding (the same NLL; tests/test_rft_sft.py checks it by hand)."""

            def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
                return Trainer.compute_loss(self, model, inputs, return_outputs=return_outputs,
                                            num_items_in_batch=num_items_in_batch)

        cfg = SFTConfig(**common, max_length=None, packing=False, padding_free=False, completion_only_loss=True,
                        assistant_only_loss=False, shuffle_dataset=False, loss_type="nll")
        ds = Dataset.from_list([{"input_ids": r["prompt_ids"] + r["target_ids"],
                                 "completion_mask": [0] * len(r["prompt_ids"]) + [1] * len(r["target_ids"])}
                                for r in rows])
        trainer = PlainLossSFTTrainer(model=model, args=cfg, train_dataset=ds, processing_class=tokenizer,
                                      callbacks=callbacks)
    trainer.remove_callback(PrinterCallback)  # one dict per step on stdout; progress goes through `log`
    return trainer


def train_log(log_history: list[dict]) -> list[dict]:
    """One row per logged training step: step, loss, learning_rate, grad_norm."""
    return [{"step": int(h["step"]), "loss": float(h["loss"]), "learning_rate": float(h.get("learning_rate", math.nan)),
             "grad_norm": float(h.get("grad_norm", math.nan))} for h in log_history if "loss" in h]


# ------------------------------------------------------------------------------------------ save
def _snapshot_configs(model) -> tuple[dict, object]:
    return copy.deepcopy(vars(model.config)), copy.deepcopy(model.generation_config)


def _restore_configs(model, snapshot: tuple[dict, object]) -> None:
    """Undo what the trainers change in the configs (``use_cache=False``, which would slow generation
    down; pad/bos ids aligned with the tokenizer): the saved folder differs from the source in weights only."""
    before, generation = snapshot
    now = vars(model.config)
    for key in set(now) - set(before):
        delattr(model.config, key)
    for key, value in before.items():
        if key not in now or now[key] != value:
            setattr(model.config, key, value)
    model.generation_config = generation


def save_model(model, source: Path, out: Path, summary: dict) -> None:
    """``out`` (atomically): weights (safetensors), the source's tokenizer, and the source's
    ``prepare_manifest.json`` with ``files`` re-hashed and ``sft_from``/``sft_summary`` added."""
    from experiments.models.load import load_tokenizer, read_prepare_manifest
    from experiments.models.prepare_common import drop_loader_flags

    manifest = dict(read_prepare_manifest(source) or {})
    # the source's tokenizer unchanged (encode_batch and the trainers set padding/truncation sides and pad)
    fresh = load_tokenizer(source)
    drop_loader_flags(fresh)
    with atomic_dir(out) as tmp:
        model.save_pretrained(tmp, safe_serialization=True)
        fresh.save_pretrained(tmp)
        manifest["files"] = {p.relative_to(tmp).as_posix(): sha256_file(p) for p in sorted(tmp.rglob("*"))
                             if p.is_file()}
        manifest["sft_from"] = str(source)
        manifest["sft_summary"] = {k: v for k, v in summary.items() if k != "manifest"}
        write_json(tmp / MANIFEST_NAME, manifest)


# ------------------------------------------------------------------------------------------- run
def _check_args(args) -> None:
    for name in ("data_frac", "steps_frac"):
        v = getattr(args, name)
        if not (math.isfinite(v) and 0.0 < v <= 1.0):
            raise UserError(f"--{name.replace('_', '-')} must be in (0, 1], got {v}")
    if not (math.isfinite(args.epochs) and args.epochs > 0):
        raise UserError(f"--epochs must be > 0, got {args.epochs}")
    if not (math.isfinite(args.lr) and args.lr > 0):
        raise UserError(f"--lr must be > 0, got {args.lr}")
    for name in ("batch_size", "max_prompt_tokens", "max_target_tokens"):
        if getattr(args, name) < 1:
            raise UserError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")
    for name in ("warmup_steps", "max_pool", "threads", "train_top_layers"):
        if getattr(args, name) < 0:
            raise UserError(f"--{name.replace('_', '-')} must be >= 0, got {getattr(args, name)}")
    if not (math.isfinite(args.weight_decay) and args.weight_decay >= 0):
        raise UserError(f"--weight-decay must be >= 0, got {args.weight_decay}")
    if args.warmup_steps and args.lr_scheduler == "constant":
        raise UserError("--warmup-steps needs --lr-scheduler constant_with_warmup, linear or cosine "
                        "(constant ignores warmup)")


def run(args) -> dict:
    import torch

    from experiments.common.torchutil import (
        resolve_device,
        resolve_precision,
        set_seed,
        set_threads,
    )
    from experiments.models.load import load_generator, load_tokenizer

    started = time.time()
    _check_args(args)
    data = Path(args.data)
    if not data.is_file():
        raise UserError(f"data file {data} does not exist")
    try:
        records = [r for r in read_jsonl(data) if r["split"] == args.split]
    except (ValueError, KeyError, TypeError) as e:
        raise UserError(f"{data}: not a task JSONL ({e})") from None
    if not records:
        raise UserError(f"{data}: no records in split {args.split!r}")
    from experiments.rft.stats import select_inputs

    pool = select_inputs(records, args.max_pool, args.data_seed) if args.max_pool else records
    try:
        examples_pool = sft_examples(pool, args.references)
        chosen = [pool[i] for i in subsample_indices(len(pool), args.data_frac, args.data_seed)]
        max_steps = sft_max_steps(len(examples_pool), args.batch_size, args.epochs, args.steps_frac)
    except ValueError as e:
        raise UserError(f"{data} ({len(pool)} {args.split} records): {e}") from None
    examples = sft_examples(chosen, args.references)

    set_threads(args.threads)
    set_seed(args.seed)
    try:
        device = resolve_device(args.device)
        precision = resolve_precision(args.precision, device,
                                       tokens=args.batch_size * (args.max_prompt_tokens + args.max_target_tokens))
    except (RuntimeError, ValueError) as e:
        raise UserError(str(e)) from None
    source = Path(args.model)
    try:
        tokenizer = load_tokenizer(source)
        model = load_generator(source, device=str(device), dtype=torch.float32)
    except (FileNotFoundError, OSError) as e:
        raise UserError(str(e).splitlines()[0]) from None
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    encoder_decoder = bool(model.config.is_encoder_decoder)
    from experiments.rft.policy import freeze_lower_blocks

    try:
        n_trainable = freeze_lower_blocks(model, args.train_top_layers)
    except ValueError as e:
        raise UserError(str(e)) from None
    rows, cuts = encode_examples(tokenizer, examples, prompt_format=args.prompt_format,
                                 max_prompt_tokens=args.max_prompt_tokens, max_target_tokens=args.max_target_tokens,
                                 encoder_decoder=encoder_decoder)
    log.info("%s: pool %d inputs / %d examples; training on %d inputs (data_frac %s) = %d examples for %d steps "
             "(steps_frac %s, batch %d, %s, %s)", data.name, len(pool), len(examples_pool), len(chosen), args.data_frac,
             len(rows), max_steps, args.steps_frac, args.batch_size, "seq2seq" if encoder_decoder else "causal",
             precision)

    out_dir = Path(args.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    from experiments.common import checkpoint

    if args.checkpoint_dir:  # resumable: the trainer folder outlives a killed run
        work = Path(args.checkpoint_dir)
        save_steps = args.save_steps or checkpoint.auto_save_steps(max_steps)
    else:
        work, save_steps = Path(tempfile.mkdtemp(prefix=".trainer.", dir=out_dir)), 0
    resume = checkpoint.last_checkpoint(work) if args.checkpoint_dir else None
    configs = _snapshot_configs(model)
    model.train()
    t0 = time.time()
    try:
        trainer = make_trainer(model, tokenizer, rows, encoder_decoder=encoder_decoder, max_steps=max_steps,
                               batch_size=args.batch_size, lr=args.lr, lr_scheduler=args.lr_scheduler,
                               warmup_steps=args.warmup_steps, weight_decay=args.weight_decay, seed=args.seed,
                               precision=precision, device=device, work_dir=work, save_steps=save_steps)
        trainer.train(resume_from_checkpoint=resume)
    finally:
        if not args.checkpoint_dir:
            shutil.rmtree(work, ignore_errors=True)
    train_s = time.time() - t0
    steps = int(trainer.state.global_step)
    history = train_log(trainer.state.log_history)
    if not history:
        raise UserError("the trainer logged no loss (no training step ran)")
    model.eval()
    _restore_configs(model, configs)

    import pandas as pd

    per_epoch = -(-len(rows) // args.batch_size)
    summary = {
        "task": data.stem, "split": args.split, "n_pool": len(pool), "n_examples_pool": len(examples_pool),
        "n_inputs_used": len(chosen), "n_examples_used": len(rows), "data_frac": args.data_frac,
        "steps_frac": args.steps_frac, "epochs": args.epochs, "batch_size": args.batch_size,
        "max_steps": max_steps, "steps": steps, "epochs_over_subset": round(steps / per_epoch, 6),
        "references": args.references, "prompt_format": args.prompt_format,
        "max_prompt_tokens": args.max_prompt_tokens, "max_target_tokens": args.max_target_tokens, **cuts,
        "lr": args.lr, "lr_scheduler": args.lr_scheduler, "warmup_steps": args.warmup_steps,
        "weight_decay": args.weight_decay, "max_grad_norm": float(trainer.args.max_grad_norm),
        "optimizer": "adamw_torch", "seed": args.seed, "data_seed": args.data_seed, "max_pool": args.max_pool,
        "architecture": "encoder-decoder" if encoder_decoder else "decoder-only",
        "loss_first": history[0]["loss"], "loss_last": history[-1]["loss"], "train_seconds": round(train_s, 3),
        "seconds_per_step": round(train_s / max(steps, 1), 4), "resumed_from": resume, "precision": precision,
        "train_top_layers": args.train_top_layers, "trainable_params": n_trainable,
    }
    summary["manifest"] = run_manifest(seed=args.seed, device=str(device), started=started, threads=args.threads,
                                       steps_wall=steptimes.record(),
                                       model=str(source), data=str(data))
    save_model(model, source, out_dir / "model", summary)
    write_csv(pd.DataFrame(history, columns=LOG_COLUMNS), out_dir / "train_log.csv", float_format=None)
    write_json(out_dir / "summary.json", summary)
    if args.checkpoint_dir:
        checkpoint.finished(args.checkpoint_dir)
    log.info("SFT done: %d steps (%.2f passes over %d examples), loss %.4f -> %.4f, %.1fs", steps,
             summary["epochs_over_subset"], len(rows), summary["loss_first"], summary["loss_last"], train_s)
    return summary


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m experiments.rft.sft", description=__doc__.splitlines()[0])
    p.add_argument("--model", required=True, help="prepared model folder (experiments.models.prepare)")
    p.add_argument("--data", required=True, help="normalised task records (experiments.rft.tasks)")
    p.add_argument("--split", default="train")
    p.add_argument("--prompt-format", default="plain", choices=("plain", "chat"))
    p.add_argument("--max-prompt-tokens", type=int, default=512, help="decoder-only: keep the END of the prompt")
    p.add_argument("--max-target-tokens", type=int, default=128, help="keep the START of the target (then EOS)")
    p.add_argument("--references", default="all", choices=REFERENCES,
                   help="all: one example per (input, reference); first: the first reference only")
    p.add_argument("--data-frac", type=float, default=1.0, help="fraction of the labelled inputs, in (0, 1]")
    p.add_argument("--steps-frac", type=float, default=1.0, help="fraction of the full run's steps, in (0, 1]")
    p.add_argument("--epochs", type=float, default=1.0, help="epochs of the FULL run (over the whole pool)")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--lr", type=float, default=1e-5)
    p.add_argument("--lr-scheduler", default="constant", choices=SCHEDULERS)
    p.add_argument("--warmup-steps", type=int, default=0)
    p.add_argument("--weight-decay", type=float, default=0.0)
    p.add_argument("--seed", type=int, default=7, help="trainer: init of nothing, batch order (official: 7)")
    p.add_argument("--data-seed", type=int, default=7,
                   help="the pool's permutation and the data_frac subsample (official: 7)")
    p.add_argument("--max-pool", type=int, default=0,
                   help="cap the labelled pool to the first N of the official permutation (0 = all)")
    p.add_argument("--train-top-layers", type=int, default=0,
                   help="decoder-only: train only the top N blocks (0 = all; the tiny scale's CPU budget)")
    p.add_argument("--precision", default="fp32", choices=("fp32", "bf16", "auto"),
                   help="bf16: the trainer's autocast (fp32 master weights), also on CPU")
    p.add_argument("--device", default="auto")
    p.add_argument("--threads", type=thread_count, default=0, help="torch threads (0 = torch's default)")
    p.add_argument("--out-dir", required=True, help="run folder: model/, train_log.csv, summary.json")
    p.add_argument("--checkpoint-dir", default=None,
                   help="resumable checkpoints here (outside --out-dir); a rerun continues from the last one")
    p.add_argument("--save-steps", type=int, default=0,
                   help="with --checkpoint-dir: save every N steps (0 = ~4 per run)")
    return p


@main_guard
def main(argv=None):
    return run(build_parser().parse_args(argv))


if __name__ == "__main__":
    main()
