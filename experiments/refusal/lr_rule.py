"""The DPO learning rate of P2 §6 by the paper's own selection rule: the largest lr in a candidate
grid (paper: {1e-7, 5e-7, 1e-6, 5e-6, 1e-5}) whose training loss fell after one epoch.

"Fell" is measured, not read off the trainer's running log: the mean DPO loss over the training
pairs, computed from their summed-token log-probs under the policy and the frozen initial model,
after one epoch, against its value before training (:func:`dpo_loss`; ln 2 exactly at the start,
where policy = reference). Candidates are tried from the largest down, one epoch each from the
same initial model and seed; the first whose loss fell is the largest such, so the rest are not run.
None falling is a result too: the JSON then has ``"lr": null`` and the arms refuse to start.

    python -m experiments.refusal.lr_rule --model DIR --pairs pairs.jsonl --candidates 1e-7 5e-7 1e-6 5e-6 1e-5 \\
        --beta 0.1 --batch-size 8 --seed 0 --out lr.json

Output: ``{"lr", "rule", "candidates", "tried": [{"lr", "loss_before", "loss_after", "fell", "steps",
"train_seconds"}], "n_pairs", "seed", "manifest"}``.
"""

from __future__ import annotations

import argparse
import gc
import logging
import math
import shutil
import tempfile
import time
from pathlib import Path

import torch

from experiments.common.cli import UserError, main_guard, thread_count
from experiments.common.io import run_manifest, write_json

log = logging.getLogger("refusal.lr_rule")

PAPER_CANDIDATES = (1e-7, 5e-7, 1e-6, 5e-6, 1e-5)
RULE = "largest lr whose mean DPO training loss fell after one epoch (P2 §6)"


def dpo_loss(c1: torch.Tensor, r1: torch.Tensor, c0: torch.Tensor, r0: torch.Tensor, beta: float) -> float:
    """Mean sigmoid DPO loss −ln σ(β[(c1 − c0) − (r1 − r0)]) over pairs (c, r: summed-token ln π of
    chosen and rejected under the policy (1) and the reference (0)). ln 2 when policy = reference."""
    margin = beta * ((c1 - c0) - (r1 - r0)).double()
    return float(torch.nn.functional.softplus(-margin).mean())


def choose(tried: list[dict]) -> float | None:
    """The largest tried lr whose loss fell (None if none did)."""
    fell = [t["lr"] for t in tried if t["fell"]]
    return max(fell) if fell else None


def run(args) -> dict:
    from experiments.ches.dpo import encode_subset, pair_logps
    from experiments.common.torchutil import device_and_precision, set_seed, set_threads
    from experiments.models.load import load_causal_lm, load_tokenizer
    from experiments.persona.prompts import resolve_format
    from experiments.refusal.arms import read_pairs, train, train_rows

    started = time.time()
    cands = sorted(set(args.candidates), reverse=True)
    if not cands or not all(c > 0 and math.isfinite(c) for c in cands):
        raise UserError(f"--candidates must be positive numbers, got {args.candidates}")
    pairs = read_pairs(args.pairs, allow_empty=True)
    if not [r for r in pairs if r["split"] == "train"]:   # e.g. gold pairs of a model that never refuses
        log.warning("%s has no train pairs: no lr to choose (the arm is evaluated without training)", args.pairs)
        out = {"lr": None, "no_pairs": True, "rule": RULE, "candidates": cands, "tried": [], "n_pairs": 0,
               "pairs": str(args.pairs), "manifest": run_manifest(seed=args.seed, started=started)}
        write_json(args.out, out)
        return out
    rows = train_rows(pairs, args.pairs)
    set_threads(args.threads)
    device, precision = device_and_precision(   # chosen + rejected rows of one batch
        args.device, args.precision, 2 * args.batch_size * ((args.max_prompt_tokens + args.max_response_tokens) or 256))
    tokenizer = load_tokenizer(args.model)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    fmt = resolve_format(tokenizer, args.prompt_format)
    base = encode_subset(tokenizer, rows, fmt, args.max_prompt_tokens or None, args.max_response_tokens or None,
                         eos=True)

    def measure(model, rs):
        return pair_logps(model, rs, batch_size=args.batch_size, precision=precision, pad_id=pad)

    model = load_causal_lm(args.model, device=str(device), dtype=torch.float32)
    c0, r0 = measure(model, base)
    for r, a, b in zip(base, c0.tolist(), r0.tolist(), strict=True):
        r["ref_chosen_logps"], r["ref_rejected_logps"] = a, b
    before = dpo_loss(c0, r0, c0, r0, args.beta)

    from experiments.common import steptimes

    tried = []
    for k, lr in enumerate(cands):
        if k:
            del model
            gc.collect()
            model = load_causal_lm(args.model, device=str(device), dtype=torch.float32)
        set_seed(args.seed)
        perm = torch.randperm(len(base), generator=torch.Generator().manual_seed(args.seed)).tolist()
        order = [dict(base[i]) for i in perm]
        work = Path(tempfile.mkdtemp(prefix=".lr_rule."))
        t0 = time.time()
        try:
            result = train(model, tokenizer, order, loss_type=["sigmoid"], loss_weights=None, sft_norm="sequence",
                           beta=args.beta, lr=lr, batch_size=args.batch_size, epochs=1, seed=args.seed,
                           precision=precision, device=device, work_dir=work)
        finally:
            shutil.rmtree(work, ignore_errors=True)
        c1, r1 = measure(model, order)
        after = dpo_loss(c1, r1, c0[perm], r0[perm], args.beta)
        fell = math.isfinite(after) and after < before
        tried.append({"lr": lr, "loss_before": before, "loss_after": after if math.isfinite(after) else None,
                      "fell": fell, "steps": result["steps"], "train_seconds": round(time.time() - t0, 3)})
        log.info("lr %g: DPO loss %.4f -> %.4f after one epoch (%d steps): %s", lr, before, after, result["steps"],
                 "fell" if fell else "did not fall")
        del result
        if fell:
            break
    steptimes.last_step()
    out = {"lr": choose(tried), "rule": RULE, "candidates": cands, "tried": tried, "n_pairs": len(base),
           "seed": args.seed, "beta": args.beta, "batch_size": args.batch_size, "pairs": str(args.pairs),
           "manifest": run_manifest(seed=args.seed, device=str(device), started=started, precision=precision,
                                    steps_wall=steptimes.record())}
    write_json(args.out, out)
    log.info("chose lr %s (%s) -> %s", out["lr"], RULE, args.out)
    return out


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m experiments.refusal.lr_rule", description=__doc__.splitlines()[0])
    p.add_argument("--model", required=True, help="prepared model folder (the model DPO starts from)")
    p.add_argument("--pairs", required=True, help="pairs JSONL; its split == 'train' rows are trained on")
    p.add_argument("--candidates", type=float, nargs="+", default=list(PAPER_CANDIDATES))
    p.add_argument("--beta", type=float, default=0.1)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--prompt-format", default="auto")
    p.add_argument("--max-prompt-tokens", type=int, default=0)
    p.add_argument("--max-response-tokens", type=int, default=0)
    p.add_argument("--precision", default="fp32")
    p.add_argument("--device", default="auto")
    p.add_argument("--threads", type=thread_count, default=1)
    p.add_argument("--out", required=True)
    return p


@main_guard
def main(argv=None):
    return run(build_parser().parse_args(argv))


if __name__ == "__main__":
    main()
