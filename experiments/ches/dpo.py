"""One quantile-subset DPO/IPO run of P2 §5 (Fig. 2) through TRL's ``DPOTrainer``.

The subset is the ``--subset-size`` records centred at quantile ``--quantile`` of one similarity
measure from the scorer's CSV (:func:`experiments.ches.subsets.quantile_subset`). Before and after
training, the summed-token ln π(y+|x) and ln π(y−|x) of every subset record are computed by
:func:`sequence_logps` over exactly the tokens the trainer trains on; the P2 metric is the mean change
of ln π(y+|x) over the subset (official ``preferred_logprobs_change_mean``).

Tokens (the same for scoring, training and measuring):

* prompt and responses are tokenised by the scorer (:func:`experiments.ches.scorer.encode_record`):
  chat = the prompt as one user turn with the generation prompt, plain = ``prompt + "\\n"`` with the
  tokenizer's special tokens; responses ``encode(response, add_special_tokens=False)``; a prompt over
  ``--max-prompt-tokens`` keeps the template's header and closing tokens and drops the middle of its
  text (:func:`experiments.ches.scorer.truncate_prompt`), responses keep their START
  (``--max-response-tokens``); ``per_example.csv`` counts the prompt tokens dropped;
* the trained completion is the response ids plus the EOS id when the response was not truncated
  (the official runner trains on ``response + EOS`` and its length cut removes the EOS of cut
  responses); ``--no-eos`` trains on the response ids alone.

TRL is given these ids directly (``prompt_ids``/``chosen_ids``/``rejected_ids``, the columns its
own tokenisation produces), so its collator concatenates, masks the prompt and right-pads them
unchanged (``max_length=None``: no second truncation). The reference log-probs are the "before"
values (``precompute_ref_log_probs``: the reference is the initial model, with no second copy in
memory). Seed: the subset order and the trainer's shuffling; the subset itself is fixed by
measure + quantile.

Losses (``--loss``; ``--beta`` is β for DPO and τ for IPO), both on TOKEN-SUMMED log-probs, as the
official P2 code:

* ``dpo`` -- TRL's ``loss_type="sigmoid"``, −ln σ(β·h);
* ``ipo`` -- (h − 1/(2τ))² (:func:`experiments.persona.losses.preference_loss`), computed by this
  module's trainer class, NOT TRL's ``loss_type="ipo"``, which divides each log-ratio by its
  completion length (TRL's comment: the form behind the IPO authors' results). TRL still runs the
  forward pass and logs its metrics; only the loss it returns is replaced (:func:`_trainer_class`);

with h = [ln π(y+|x) − ln π_ref(y+|x)] − [ln π(y−|x) − ln π_ref(y−|x)], each ln π a sum over the
completion tokens.
"""

from __future__ import annotations

import argparse
import csv
import gc
import logging
import math
import shutil
import tempfile
import time
from pathlib import Path

import torch

from experiments.common import steptimes
from experiments.common.cli import UserError, main_guard, thread_count
from experiments.common.io import atomic_path, read_jsonl, run_manifest, write_json
from experiments.common.torchutil import (
    autocast,
    resolve_device,
    resolve_precision,
    set_seed,
    set_threads,
)

log = logging.getLogger("ches_dpo")

LOSSES = {"dpo": "sigmoid", "ipo": "ipo"}
SUMMARY_KEYS = ("measure", "quantile", "seed", "loss", "n", "logp_chosen_before", "logp_chosen_after",
                "delta_logp_chosen", "delta_logp_rejected", "train_loss_first", "train_loss_last", "steps",
                "manifest")
PER_EXAMPLE = ["id", "value", "prompt_tokens", "chosen_tokens", "rejected_tokens", "prompt_tokens_dropped",
               "logp_chosen_before", "logp_chosen_after", "delta_logp_chosen",
               "logp_rejected_before", "logp_rejected_after", "delta_logp_rejected"]


# ------------------------------------------------------------------------------------------ data
def read_measure(path: str | Path, measure: str) -> tuple[list[str], list[float]]:
    """(ids, values) of one measure column of a scores CSV, in file order."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"scores file {path} does not exist")
    with open(path, newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        cols = reader.fieldnames or []
        if "id" not in cols:
            raise UserError(f"{path}: not a scores CSV (no 'id' column)")
        measures = [c for c in cols if c != "id"]
        if measure not in measures:
            raise UserError(f"unknown measure {measure!r}: {path} has columns {measures}")
        ids, values = [], []
        for lineno, row in enumerate(reader, 2):
            try:
                v = float(row[measure])
            except (TypeError, ValueError):
                raise UserError(f"{path}:{lineno}: {measure} is not a number ({row[measure]!r})") from None
            if math.isnan(v):
                raise UserError(f"{path}:{lineno}: {measure} is NaN")
            ids.append(str(row["id"]))
            values.append(v)
    if not ids:
        raise UserError(f"scores file {path} has no rows")
    if len(set(ids)) != len(ids):
        raise UserError(f"{path}: ids are not unique")
    return ids, values


def select_subset(ids: list[str], values: list[float], records: dict[str, dict], quantile: float,
                  n: int, data_path: str = "data") -> list[tuple[str, float]]:
    """The (id, value) pairs of the subset, ascending by value (``quantile_subset``'s order)."""
    from experiments.ches.subsets import quantile_subset

    if not 0.0 <= quantile <= 1.0:
        raise UserError(f"--quantile must be in [0, 1], got {quantile}")
    if n < 1:
        raise UserError(f"--subset-size must be >= 1, got {n}")
    missing = [i for i in ids if i not in records]
    if missing:
        raise UserError(f"{len(missing)} id(s) in the scores are missing from {data_path} "
                        f"(first: {missing[0]!r}); score and train on the same data file")
    if n > len(ids):
        raise UserError(f"--subset-size {n} is larger than the {len(ids)} scored records")
    try:
        picked = quantile_subset(values, quantile, n)
    except ValueError as e:
        raise UserError(str(e)) from None
    return [(ids[i], values[i]) for i in picked]


def encode_subset(tokenizer, recs: list[dict], fmt: str, max_prompt: int | None, max_response: int | None,
                  eos: bool) -> list[dict]:
    """Token ids as the trainer sees them (``prompt_ids``, ``chosen_ids``, ``rejected_ids``) and the number
    of prompt tokens truncation dropped (``prompt_tokens_dropped``)."""
    from experiments.ches.scorer import encode_record

    eos_id = tokenizer.eos_token_id
    if eos and eos_id is None:
        raise UserError("the tokenizer has no EOS token: use --no-eos")
    rows = []
    for rec in recs:
        e = encode_record(tokenizer, rec, fmt, max_prompt, max_response, f"record {rec['id']!r}")
        tail = {k: ([eos_id] if eos and k not in e.truncated else []) for k in ("chosen", "rejected")}
        rows.append({"id": e.id, "prompt_ids": list(e.prompt), "chosen_ids": list(e.chosen) + tail["chosen"],
                     "rejected_ids": list(e.rejected) + tail["rejected"],
                     "prompt_tokens_dropped": e.truncated.get("prompt", 0)})
    return rows


# ------------------------------------------------------------------------------------------- math
@torch.no_grad()
def sequence_logps(model, prompts: list[list[int]], completions: list[list[int]], *, batch_size: int = 8,
                   precision: str = "fp32", pad_id: int = 0) -> torch.Tensor:
    """Σ_k ln π(c_k | prompt, c_<k) for each (prompt, completion) pair, as float64 [N].

    Right padding with an attention mask and positions 0..L-1 (what TRL's collator feeds the model);
    log-softmax in fp32. The model is put in eval mode (no dropout) and left there.
    """
    model.eval()
    device = next(model.parameters()).device
    out = torch.empty(len(prompts), dtype=torch.float64)
    for b in range(0, len(prompts), batch_size):
        ps, cs = prompts[b:b + batch_size], completions[b:b + batch_size]
        seqs = [p + c for p, c in zip(ps, cs)]
        width = max(len(s) for s in seqs)
        ids = torch.full((len(seqs), width), pad_id, dtype=torch.long)
        mask = torch.zeros_like(ids)
        comp = torch.zeros_like(ids, dtype=torch.bool)
        for r, (p, c) in enumerate(zip(ps, cs)):
            ids[r, :len(p) + len(c)] = torch.tensor(p + c)
            mask[r, :len(p) + len(c)] = 1
            comp[r, len(p):len(p) + len(c)] = True
        pos = torch.arange(width).unsqueeze(0).expand_as(ids)
        with autocast(precision, device):
            logits = model(input_ids=ids.to(device), attention_mask=mask.to(device),
                           position_ids=pos.to(device), use_cache=False).logits
        logp = torch.log_softmax(logits[:, :-1].float(), dim=-1)
        tok = logp.gather(-1, ids[:, 1:].to(device).unsqueeze(-1)).squeeze(-1)
        out[b:b + len(seqs)] = (tok.double() * comp[:, 1:].to(device)).sum(1).cpu()
    return out


def pair_logps(model, rows: list[dict], *, batch_size: int, precision: str, pad_id: int
               ) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`sequence_logps` of the chosen and of the rejected completion of every encoded pair
    (``prompt_ids``, ``chosen_ids``, ``rejected_ids``)."""
    prompts = [r["prompt_ids"] for r in rows]
    chosen = sequence_logps(model, prompts, [r["chosen_ids"] for r in rows], batch_size=batch_size,
                            precision=precision, pad_id=pad_id)
    rejected = sequence_logps(model, prompts, [r["rejected_ids"] for r in rows], batch_size=batch_size,
                              precision=precision, pad_id=pad_id)
    return chosen, rejected


# -------------------------------------------------------------------------------------- training
def _trainer_class():
    from trl import DPOTrainer

    from experiments.common.plain_head import plain_lm_head
    from experiments.persona.losses import preference_loss

    class PretokenizedDPOTrainer(DPOTrainer):
        """DPOTrainer on a dataset that already holds TRL's tokenised columns (``prompt_ids``,
        ``chosen_ids``, ``rejected_ids``) and the reference log-probs (``ref_chosen_logps``,
        ``ref_rejected_logps``): both preparation passes are identities. On a CPU the policy's
        ``fused_lm_head`` forward is :func:`experiments.common.plain_head.plain_lm_head`'s.

        ``loss_type=["ipo"]`` is P2's IPO on token-summed log-ratios, not TRL's length-normalised one:
        TRL's ``_compute_loss`` runs as usual (forward pass, metrics), the policy's per-token log-probs
        of that forward are kept, and the loss it returns is replaced by (h − 1/(2τ))² over their sums."""

        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            if next(self.model.parameters()).device.type == "cpu":  # GPUs keep TRL's memory-saving tiled head
                plain_lm_head(self.model)  # 2.2x faster steps on a CPU, same log-probs to rounding

        def _prepare_dataset(self, dataset, processing_class, args, dataset_name):
            return dataset

        def _precompute_ref_logps(self, dataset, name, batch_size):
            missing = {"ref_chosen_logps", "ref_rejected_logps"} - set(dataset.column_names)
            if missing:
                raise ValueError(f"dataset lacks {sorted(missing)}")
            return dataset

        def _compute_loss(self, model, inputs, return_outputs):
            if "ipo" not in self.loss_types:
                return super()._compute_loss(model, inputs, return_outputs)
            if list(self.loss_types) != ["ipo"]:
                raise ValueError(f"the summed-token IPO cannot be combined with other losses: {self.loss_types}")
            forwards = []

            def policy(*args, **kwargs):  # TRL's policy forward, its outputs kept
                out = model(*args, **kwargs)
                forwards.append(out)
                return out

            result = super()._compute_loss(policy, inputs, return_outputs)  # its IPO value is discarded
            completion = inputs["completion_mask"][:, 1:]  # the mask of the next-token log-probs
            per_token = forwards[0].log_probs[:, -completion.size(1):]  # [2B, L-1], as TRL slices them
            chosen, rejected = (per_token * completion).sum(dim=1).chunk(2, dim=0)  # TRL's batch: [chosen; rejected]
            losses, _, _ = preference_loss(chosen, rejected, inputs["ref_chosen_logps"], inputs["ref_rejected_logps"],
                                           self.beta, loss_type="ipo")
            loss = losses.mean() * self.loss_weights[0]
            return (loss, result[1]) if return_outputs else loss

    return PretokenizedDPOTrainer


def _callbacks():
    from transformers import TrainerCallback

    class NanGuard(TrainerCallback):
        """Stops on a non-finite loss; logs one progress line at about every tenth of the run (TRL's
        per-step dicts are not printed: ``make_trainer`` removes its PrinterCallback)."""

        def on_log(self, args, state, control, logs=None, **kwargs):
            loss = (logs or {}).get("loss")
            if loss is not None and not math.isfinite(float(loss)):
                raise UserError(f"training loss is {loss} at step {state.global_step}; lower --lr or use fp32")
            total = getattr(state, "max_steps", 0) or 0
            if loss is not None and (state.global_step % max(1, total // 10) == 0 or state.global_step == total):
                log.info("DPO step %d/%d  loss %.4f", state.global_step, total, float(loss))

    return [NanGuard(), steptimes.trainer_callback()]  # stamps the optimiser steps (experiments.runtime)


def make_trainer(model, tokenizer, rows: list[dict], *, loss: str = "dpo", beta: float, lr: float,
                 batch_size: int, epochs: int, seed: int, precision: str, device: torch.device, work_dir: Path,
                 loss_type: list[str] | None = None, loss_weights: list[float] | None = None, trainer_cls=None):
    """TRL's DPOTrainer set up over ``rows`` (with ``ref_*_logps``), not yet trained.
    ``loss_type``/``loss_weights`` override ``loss`` (e.g. ``["sigmoid", "sft"]``, ``[1, λ]``);
    ``trainer_cls`` replaces the pre-tokenised trainer (a subclass of it)."""
    from datasets import Dataset
    from trl import DPOConfig

    cfg = DPOConfig(
        output_dir=str(work_dir), loss_type=list(loss_type) if loss_type else [LOSSES[loss]],
        loss_weights=loss_weights, beta=beta, learning_rate=lr, optim="rmsprop",
        lr_scheduler_type="constant", warmup_steps=0, weight_decay=0.0, max_grad_norm=0.0,
        num_train_epochs=epochs, per_device_train_batch_size=batch_size, gradient_accumulation_steps=1,
        seed=seed, data_seed=seed, report_to=[], save_strategy="no", logging_steps=1, disable_tqdm=True,
        bf16=precision == "bf16", fp16=False, use_cpu=device.type == "cpu", max_length=None,
        precompute_ref_log_probs=True, activation_checkpointing=False, dataloader_num_workers=0,
        logging_nan_inf_filter=False,  # else the Trainer logs a NaN loss as a running mean and NanGuard never sees it
        remove_unused_columns=True,
    )
    ds = Dataset.from_list([{k: r[k] for k in ("prompt_ids", "chosen_ids", "rejected_ids",
                                                "ref_chosen_logps", "ref_rejected_logps")} for r in rows])
    from transformers import PrinterCallback

    trainer = (trainer_cls or _trainer_class())(model=model, args=cfg, train_dataset=ds, processing_class=tokenizer,
                                                callbacks=_callbacks())
    trainer.remove_callback(PrinterCallback)  # one raw dict per step; NanGuard logs the progress line
    return trainer


def train(model, tokenizer, rows: list[dict], **kwargs) -> dict:
    """Train :func:`make_trainer` (same arguments); returns the trainer's log history, its step count and
    the trainer."""
    trainer = make_trainer(model, tokenizer, rows, **kwargs)
    trainer.train()
    return {"log_history": list(trainer.state.log_history), "steps": int(trainer.state.global_step),
            "trainer": trainer}


# ------------------------------------------------------------------------------------------- run
def _out_dirs(template: str, seeds: list[int]) -> dict[int, Path]:
    """One run folder per seed: ``--out-dir`` formatted with ``{seed}`` (required for several seeds)."""
    if len(set(seeds)) != len(seeds):
        raise UserError(f"--seed lists a seed twice: {seeds}")
    if "{seed}" not in template:
        if len(seeds) > 1:
            raise UserError("with several --seed values, --out-dir must contain '{seed}'")
        return {seeds[0]: Path(template)}
    try:
        return {s: Path(template.format(seed=s)) for s in seeds}
    except (KeyError, IndexError, ValueError) as e:
        raise UserError(f"--out-dir {template!r}: only '{{seed}}' may be formatted ({e})") from None


def run(args) -> list[dict]:
    """Train one quantile subset once per seed, in one process: the data, the scores, the tokenizer and
    TRL are loaded once and the "before" log-probs are computed once (they do not depend on the seed);
    the model is reloaded from disk for every seed."""
    from experiments.models.load import load_causal_lm, load_tokenizer
    from experiments.persona.prompts import resolve_format

    started = time.time()
    if args.loss not in LOSSES:
        raise UserError(f"unknown --loss {args.loss!r}: use dpo or ipo")
    for name in ("beta", "lr"):
        if not getattr(args, name) > 0:
            raise UserError(f"--{name} must be > 0")
    if args.batch_size < 1 or args.epochs < 1:
        raise UserError("--batch-size and --epochs must be >= 1")
    if not 0.0 <= args.quantile <= 1.0:
        raise UserError(f"--quantile must be in [0, 1], got {args.quantile}")
    out_dirs = _out_dirs(args.out_dir, list(args.seed))
    ids, values = read_measure(args.scores, args.measure)
    data = Path(args.data)
    if not data.is_file():
        raise UserError(f"data file {data} does not exist")
    try:
        records = {str(r["id"]): r for r in read_jsonl(data)}
    except (ValueError, KeyError, TypeError) as e:
        raise UserError(f"{data}: not a preference JSONL ({e})") from None
    subset = select_subset(ids, values, records, args.quantile, args.subset_size, str(data))

    set_threads(args.threads)
    device = resolve_device(args.device)
    try:
        seq = (args.max_prompt_tokens + args.max_response_tokens) or 256
        precision = resolve_precision(args.precision, device, tokens=2 * args.batch_size * seq)   # chosen + rejected
    except ValueError as e:
        raise UserError(str(e)) from None

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
    base_rows = encode_subset(tokenizer, [records[i] for i, _ in subset], fmt, args.max_prompt_tokens or None,
                              args.max_response_tokens or None, eos=not args.no_eos)
    value = dict(subset)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0

    def measure(model, rows):
        return pair_logps(model, rows, batch_size=args.batch_size, precision=precision, pad_id=pad)

    model = load_model()
    c0_all, r0_all = measure(model, base_rows)
    for r, a, b in zip(base_rows, c0_all.tolist(), r0_all.tolist()):
        r["ref_chosen_logps"], r["ref_rejected_logps"] = a, b

    from experiments.common import checkpoint

    cache = checkpoint.SeedCache(args.checkpoint_dir)
    summaries, fresh = [], True  # fresh: the loaded model has not been trained yet
    for seed in args.seed:
        seed_started = time.time()
        out_dir = out_dirs[seed]
        restored = cache.restore(seed, out_dir)  # finished before this job was killed: no retraining
        if restored is not None:
            summaries.append(restored)
            continue
        if not fresh:  # free the last seed's model, trainer and optimizer state before loading the next
            del model
            gc.collect()
            model = load_model()
        fresh = False
        set_seed(seed)
        # the seed orders the subset (the trainer shuffles it again with the same seed)
        perm = torch.randperm(len(base_rows), generator=torch.Generator().manual_seed(seed)).tolist()
        rows = [dict(base_rows[i]) for i in perm]
        c0, r0 = c0_all[perm], r0_all[perm]
        out_dir.mkdir(parents=True, exist_ok=True)
        work = Path(tempfile.mkdtemp(prefix=".trainer.", dir=out_dir))
        t_train = time.time()
        try:
            result = train(model, tokenizer, rows, loss=args.loss, beta=args.beta, lr=args.lr,
                           batch_size=args.batch_size, epochs=args.epochs, seed=seed, precision=precision,
                           device=device, work_dir=work)
        finally:
            shutil.rmtree(work, ignore_errors=True)
        train_s = time.time() - t_train
        c1, r1 = measure(model, rows)
        steptimes.last_step()  # the steps end with the "after" log-probs
        if not (torch.isfinite(c1).all() and torch.isfinite(r1).all()):
            raise UserError(f"ln π is not finite after training ({result['steps']} steps, seed {seed}); "
                            "lower --lr or use fp32")
        losses = [h["loss"] for h in result["log_history"] if "loss" in h]
        if not losses:
            raise UserError("the trainer logged no loss (no training step ran)")

        with atomic_path(out_dir / "per_example.csv") as tmp, open(tmp, "w", newline="", encoding="utf-8") as f:
            w = csv.writer(f)
            w.writerow(PER_EXAMPLE)
            for k, r in enumerate(rows):
                w.writerow([r["id"], repr(value[r["id"]]), len(r["prompt_ids"]), len(r["chosen_ids"]),
                            len(r["rejected_ids"]), r["prompt_tokens_dropped"], repr(float(c0[k])),
                            repr(float(c1[k])), repr(float(c1[k] - c0[k])), repr(float(r0[k])), repr(float(r1[k])),
                            repr(float(r1[k] - r0[k]))])
        summary = {
            "measure": args.measure, "quantile": args.quantile, "seed": seed, "loss": args.loss,
            "n": len(rows), "beta": args.beta, "lr": args.lr, "batch_size": args.batch_size,
            "epochs": args.epochs, "precision": precision, "prompt_format": fmt, "eos": not args.no_eos,
            "prompt_tokens_dropped": sum(r["prompt_tokens_dropped"] for r in rows),
            "measure_min": min(value.values()), "measure_max": max(value.values()),
            "logp_chosen_before": float(c0.mean()), "logp_chosen_after": float(c1.mean()),
            "delta_logp_chosen": float((c1 - c0).mean()),
            "logp_rejected_before": float(r0.mean()), "logp_rejected_after": float(r1.mean()),
            "delta_logp_rejected": float((r1 - r0).mean()),
            "train_loss_first": float(losses[0]), "train_loss_last": float(losses[-1]),
            "train_losses": [float(x) for x in losses], "steps": result["steps"],
            "train_seconds": round(train_s, 3),
            "seconds_per_step": round(train_s / max(result["steps"], 1), 3),
            "manifest": run_manifest(seed=seed, device=str(device), started=seed_started if summaries else started,
                                     threads=args.threads, model=str(args.model), data=str(args.data),
                                     scores=str(args.scores), seeds_in_process=list(args.seed),
                                     steps_wall=steptimes.record()),
        }
        write_json(out_dir / "summary.json", summary)
        log.info("%s q=%s seed=%d %s: n=%d steps=%d  Δ ln π(y+)=%.4f  Δ ln π(y−)=%.4f  loss %.4f -> %.4f "
                 "(%.2fs/step)", args.measure, args.quantile, seed, args.loss, len(rows), result["steps"],
                 summary["delta_logp_chosen"], summary["delta_logp_rejected"], losses[0], losses[-1],
                 summary["seconds_per_step"])
        del result  # the trainer holds the optimizer state and gradients
        summaries.append(summary)
        cache.store(seed, out_dir)
    checkpoint.finished(args.checkpoint_dir)
    return summaries


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m experiments.ches.dpo", description=__doc__.splitlines()[0])
    p.add_argument("--model", required=True, help="prepared model folder")
    p.add_argument("--data", required=True, help="preference JSONL (experiments.data.preferences)")
    p.add_argument("--scores", required=True, help="scores CSV of the scorer (same data file)")
    p.add_argument("--measure", default="ches", help="a column of the scores CSV (ches, ches_ln, ...)")
    p.add_argument("--quantile", type=float, required=True)
    p.add_argument("--subset-size", type=int, default=512)
    p.add_argument("--seed", type=int, nargs="+", default=[0],
                   help="one or more seeds, trained one after another in this process")
    p.add_argument("--loss", default="dpo", help="dpo | ipo")
    p.add_argument("--beta", type=float, default=0.1)
    p.add_argument("--lr", type=float, default=1e-7)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--epochs", type=int, default=1)
    p.add_argument("--prompt-format", default="auto", help="auto | chat | plain")
    p.add_argument("--max-prompt-tokens", type=int, default=128,
                   help="longer prompts keep the template's header and closing tokens and lose the middle of "
                        "their text (0 = all)")
    p.add_argument("--max-response-tokens", type=int, default=128, help="keep the START of responses (0 = all)")
    p.add_argument("--no-eos", action="store_true", help="do not append EOS to untruncated responses")
    p.add_argument("--precision", default="fp32", help="auto | fp32 | bf16")
    p.add_argument("--checkpoint-dir", default=None,
                   help="finished seeds are kept here too (outside --out-dir); a rerun restores them, not retrains")
    p.add_argument("--device", default="auto")
    p.add_argument("--threads", type=thread_count, default=1)
    p.add_argument("--out-dir", required=True,
                   help="run folder; must contain '{seed}' (formatted per seed) when several seeds are given")
    return p


@main_guard
def main(argv=None):
    summaries = run(build_parser().parse_args(argv))
    return summaries[0] if len(summaries) == 1 else summaries


if __name__ == "__main__":
    main()
