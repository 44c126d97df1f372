"""Stage B of P2 §3: DPO or IPO on ONE persona prompt with single-token responses.

Every step logs π(y+), π(y−), the loss, and the tokens whose probability rose and fell most since
the start (over the whole vocabulary). The reference log-probs are computed once, before training. The run's
summary holds the largest decrease of π(y+) (start → minimum, P2 Table 1) and its largest drawdown
(peak → later trough), the tokens that gained most over the drawdown window classified benign /
catastrophic (see ``experiments.persona.tokens``), and the single-token theory check after the first
step: the correlation, over the vocabulary, between Δ ln π(z) and ⟨W_z, W_{y+} − W_{y−}⟩ (P2 Thm 5), and
cos(Δh, W_{y+} − W_{y−}), which the theorem's unconstrained-features setting makes 1 (see ``theory_check``).
It also holds Theorems 4–5's prediction at step 0 from the run's own start (``theory_first_step.step0``:
d/dt ln π(y+) and the predicted gainers, ``experiments.persona.scan``), the observed first-step change
of ln π(y+), P2 Definition 1 on the run (``definition1``: the loss fell while ln π(y+) fell, end vs
start), and whether the prompt was an SFT prompt (``prompt_seen_in_sft``, from the model's
``persona_sft.json``; None for a prepared model).

    python -m experiments.persona.dpo --model-dir DIR --data persona.jsonl --chosen Yes --rejected No \
        --prompts-with-amb No --loss dpo --beta 0.1 --lr 1e-7 --steps 101 --seed 9773 --out-dir RUN/
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from experiments.common import checkpoint, steptimes
from experiments.common.cli import UserError, main_guard, thread_count
from experiments.common.io import read_jsonl, run_manifest, write_json, write_jsonl
from experiments.common.torchutil import autocast, resolve_device, resolve_precision, set_seed, set_threads
from experiments.models.load import load_causal_lm, load_tokenizer
from experiments.persona.losses import next_token_logprobs, preference_loss
from experiments.persona.prompts import POOLS, dpo_prompt, encode_prompt
from experiments.persona.scan import step0_prediction
from experiments.persona.sft import make_optimizer
from experiments.persona.tokens import classify_token, single_token_id

log = logging.getLogger("persona.dpo")


def rank_correlations(x: torch.Tensor, y: torch.Tensor) -> dict[str, float]:
    """Pearson and Spearman correlation of two 1-D tensors (ties in ranks broken by order)."""
    x, y = x.double(), y.double()

    def pearson(a, b):
        a, b = a - a.mean(), b - b.mean()
        return float((a @ b) / (a.norm() * b.norm()))

    def ranks(a):
        r = torch.empty_like(a)
        r[a.argsort()] = torch.arange(len(a), dtype=a.dtype, device=a.device)
        return r

    return {"pearson": pearson(x, y), "spearman": pearson(ranks(x), ranks(y))}


def largest_decrease(p: list[float], tol: float = 1e-3) -> dict:
    """Two views of how far π(y+) fell during training.

    * P2 Table 1's metric: ``largest_decrease`` = π_0 − min_t π_t (start → minimum).
    * The largest drawdown: ``drawdown`` = max over t of (max_{s≤t} π_s − π_t), from the peak
      ``step_peak`` to the later minimum ``step_trough``. When π(y+) starts at its peak (the
      paper's post-SFT regime) the two coincide; when π(y+) first rises and then falls (a model
      whose SFT left π(y+) low), only the drawdown sees the fall.

    A decrease counts (``decreased``/``displaced``) when it exceeds ``tol`` in probability.
    """
    p = np.asarray(p, dtype=float)
    t_min = int(p.argmin())
    below = np.nonzero(p < p[0] - tol)[0]
    running_peak = np.maximum.accumulate(p)
    t_trough = int((running_peak - p).argmax())
    t_peak = int(p[: t_trough + 1].argmax())
    return {"p_start": float(p[0]), "p_min": float(p[t_min]), "step_min": t_min,
            "p_end": float(p[-1]), "largest_decrease": float(p[0] - p[t_min]),
            "decreased": bool(p[0] - p[t_min] > tol),
            "first_decrease_step": int(below[0]) if len(below) else None,
            "p_peak": float(p[t_peak]), "step_peak": t_peak, "p_trough": float(p[t_trough]),
            "step_trough": t_trough, "drawdown": float(p[t_peak] - p[t_trough]),
            "displaced": bool(p[t_peak] - p[t_trough] > tol)}


def top_risers(p_from: torch.Tensor, p_to: torch.Tensor, exclude: list[int], k: int) -> list[tuple[int, float]]:
    """The ``k`` token ids whose probability rose most from ``p_from`` to ``p_to`` (ids in ``exclude`` skipped)."""
    dp = (p_to - p_from).clone()
    dp[exclude] = -float("inf")
    top = dp.topk(k)
    return list(zip(top.indices.tolist(), top.values.tolist()))


def theory_check(logp_before: torch.Tensor, logp_after: torch.Tensor, W: torch.Tensor, h_before: torch.Tensor,
                 h_after: torch.Tensor, chosen_id: int, rejected_id: int) -> dict[str, float]:
    """The single-token theory check after one step.

    P2 Thm 5 (unconstrained features, gradient flow): Δ ln π(z) = c1·⟨W_z, W_{y+} − W_{y−}⟩ + c0 with c1 > 0,
    so over the vocabulary Δ ln π(z) should correlate with ⟨W_z, W_{y+} − W_{y−}⟩ (``pearson``,
    ``spearman``). The theorem assumes what its setting gives for free: the hidden state h is a free
    parameter, so a gradient step moves it exactly along W_{y+} − W_{y−} (the softmax's mean terms of
    ∇_h ln π(y+) and ∇_h ln π(y−) cancel). ``cos_dh_w_diff`` = cos(Δh, W_{y+} − W_{y−}) measures whether
    that assumption holds in a real network, where h moves along J Jᵀ(W_{y+} − W_{y−}) instead (and an
    adaptive optimiser's first step is sign-like). W is the unembedding [V, d]; h the last-position
    hidden state [d], the input of the unembedding.
    """
    d_logp = logp_after - logp_before
    w_diff = W[chosen_id] - W[rejected_id]
    dh = h_after - h_before
    return rank_correlations(d_logp, W @ w_diff) | {
        "cos_dh_w_diff": float(torch.nn.functional.cosine_similarity(dh.double(), w_diff.double(), dim=0)),
    }


def train_single_prompt(model, input_ids: torch.Tensor, chosen_id: int, rejected_id: int, *, loss_type: str,
                        beta: float, optimizer: torch.optim.Optimizer, steps: int, precision: str,
                        device: torch.device, desc: str = "",
                        ckpt=None) -> tuple[list[dict], list[torch.Tensor], dict]:
    """Optimise the preference loss on one prompt for ``steps`` full-batch steps.

    Returns per-step records (state after 0..steps updates), the full next-token log-prob vector
    after each step (CPU, fp32), and the theory: ``step0``, Theorems 4–5's prediction at the start
    (:func:`experiments.persona.scan.step0_prediction`), and the check after the first step
    (:func:`theory_check`). Reference log-probs are those of the model as given, computed once.

    ``ckpt`` (a :class:`experiments.common.checkpoint.LoopCheckpoint`) saves the weights, optimizer, the
    reference log-probs and everything logged so far every ``ckpt.every`` steps, and a rerun given the
    same checkpoint (and the initial model) continues from the last one.
    """
    hidden: list[torch.Tensor] = []  # last-position input of the unembedding (the paper's h_x), per pass
    hook = model.get_output_embeddings().register_forward_hook(
        lambda mod, inputs, out: hidden.append(inputs[0][0, -1].detach().float().clone()))

    def next_logps() -> torch.Tensor:
        with autocast(precision, device):
            return next_token_logprobs(model(input_ids=input_ids, logits_to_keep=1).logits)[0]

    state = ckpt.load() if ckpt is not None else None
    steptimes.first_step()  # the steps: the reference pass and the loop
    rows, logps_cpu, theory, start = [], [], {}, 0
    if state is None:
        with torch.no_grad():
            logp_ref = next_logps()
        W = model.get_output_embeddings().weight.detach().float().clone()
    else:  # a killed run saved after step `start`'s update: its weights, optimizer and logs
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optim"])
        logp_ref, rows, logps_cpu, theory = state["logp_ref"], state["rows"], state["logps"], state["theory"]
        start, W = state["step"], None  # W serves the theory check after step 1, which a checkpoint is past
    ref_c, ref_r = logp_ref[chosen_id].view(1), logp_ref[rejected_id].view(1)
    for step in tqdm(range(start, steps + 1), desc=desc, mininterval=5, initial=start, total=steps + 1):
        training = step < steps
        with torch.set_grad_enabled(training):
            logps = next_logps()
            losses, r_c, r_r = preference_loss(logps[chosen_id].view(1), logps[rejected_id].view(1),
                                               ref_c, ref_r, beta, loss_type)
            loss = losses.mean()
        if not torch.isfinite(loss):
            raise UserError(f"{loss_type} loss is {loss.item()} at step {step}: stopping")
        lp = logps.detach()
        logps_cpu.append(lp.cpu())
        if step == 0:
            theory = {"step0": step0_prediction(W, hidden[0], lp, chosen_id, rejected_id, loss_type, beta)}
        if step == 1:
            theory |= theory_check(logp_ref, lp, W, hidden[0], hidden[-1], chosen_id, rejected_id)
        rows.append({"step": step, "loss": loss.item(),
                     "logp_chosen": lp[chosen_id].item(), "logp_rejected": lp[rejected_id].item(),
                     "p_chosen": lp[chosen_id].exp().item(), "p_rejected": lp[rejected_id].exp().item(),
                     "rewards/chosen": r_c.item(), "rewards/rejected": r_r.item()})
        if training:
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            if ckpt is not None and ckpt.due(step + 1) and 1 < step + 1 < steps:  # after the step-1 theory check
                ckpt.save(step + 1, {"model": model.state_dict(), "optim": optimizer.state_dict(), "logp_ref": logp_ref,
                                     "rows": rows, "logps": logps_cpu, "theory": theory, "step": step + 1})
    steptimes.last_step()
    hook.remove()
    return rows, logps_cpu, theory


def sft_record(model_dir: str) -> dict | None:
    """``persona_sft.json`` of a post-SFT model folder (see ``experiments.persona.sft``), None for a
    prepared model."""
    path = Path(model_dir) / "persona_sft.json"
    return json.loads(path.read_text()) if path.is_file() else None


@main_guard
def main(argv=None):
    ap = argparse.ArgumentParser(description="Single-prompt single-token DPO/IPO (P2 §3)")
    ap.add_argument("--model-dir", required=True)
    ap.add_argument("--data", required=True)
    ap.add_argument("--chosen", required=True, help="preferred answer token y+, e.g. Yes")
    ap.add_argument("--rejected", required=True, help="dispreferred answer token y−, e.g. No")
    ap.add_argument("--prompts-with-amb", required=True, choices=["Yes", "No"],
                    help="draw the prompt among records with this answer_matching_behavior")
    ap.add_argument("--prompt-pool", default="all", choices=POOLS,
                    help="all: every prompt of the class (the paper); heldout: the held-out prompts of the "
                         "per-pair SFT's split (experiments.persona.prompts.split_class)")
    ap.add_argument("--heldout-prompts", type=int, default=0, help="heldout pool: its size (the SFT's)")
    ap.add_argument("--split-seed", type=int, default=0, help="heldout pool: the SFT's seed")
    ap.add_argument("--max-prompts", type=int, default=0, help="heldout pool: the SFT's max_prompts (0 = all)")
    ap.add_argument("--loss", default="dpo", choices=["dpo", "ipo"])
    ap.add_argument("--beta", type=float, default=0.1, help="β for DPO, τ for IPO")
    ap.add_argument("--optimizer", default="rmsprop")
    ap.add_argument("--lr", type=float, required=True)
    ap.add_argument("--steps", type=int, required=True, help="optimisation steps (full batch of 1)")
    ap.add_argument("--seed", type=int, required=True)
    ap.add_argument("--prompt-format", default="auto")
    ap.add_argument("--top-k", type=int, default=10, help="top risers logged per step")
    ap.add_argument("--meanings", required=True, help="JSON {meaning: [words]}")
    ap.add_argument("--opposites", required=True, help="JSON {meaning: [meanings]}")
    ap.add_argument("--precision", default="fp32")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--threads", type=thread_count, default=0)
    ap.add_argument("--out-dir", required=True)
    ap.add_argument("--checkpoint-dir", default=None,
                    help="resumable state here (outside --out-dir); a rerun continues from the last one")
    ap.add_argument("--save-steps", type=int, default=0, help="with --checkpoint-dir: every N steps (0 = ~4 per run)")
    args = ap.parse_args(argv)
    started = time.time()
    if args.steps <= 0:
        raise UserError(f"steps must be > 0, got {args.steps}")
    if args.beta <= 0:
        raise UserError(f"beta must be > 0, got {args.beta}")
    set_threads(args.threads)
    set_seed(args.seed)
    device = resolve_device(args.device)
    precision = resolve_precision(args.precision, device, tokens=64)   # one prompt, chosen + rejected
    meanings, opposites = json.loads(args.meanings), json.loads(args.opposites)

    tok = load_tokenizer(args.model_dir)
    model = load_causal_lm(args.model_dir, device=device)
    model.eval()  # no dropout: the trajectory is a deterministic function of the seed
    chosen_id, rejected_id = single_token_id(tok, args.chosen), single_token_id(tok, args.rejected)
    record = dpo_prompt(read_jsonl(args.data), args.prompts_with_amb, args.seed, args.prompt_pool,
                        args.heldout_prompts, args.split_seed, args.max_prompts)
    sft = sft_record(args.model_dir)
    if sft is not None and args.prompt_pool == "heldout" and record["id"] not in sft.get("heldout_prompt_ids", []):
        raise UserError(f"prompt {record['id']} is not among the held-out prompts of {args.model_dir}: "
                        "--heldout-prompts/--split-seed/--max-prompts differ from the SFT's")
    input_ids = torch.tensor([encode_prompt(tok, record["question"], args.prompt_format)], device=device)

    optim = make_optimizer(args.optimizer, model.parameters(), args.lr)
    ckpt = checkpoint.LoopCheckpoint(args.checkpoint_dir, args.save_steps or checkpoint.auto_save_steps(args.steps))
    rows, logps, theory = train_single_prompt(
        model, input_ids, chosen_id, rejected_id, loss_type=args.loss, beta=args.beta, optimizer=optim,
        steps=args.steps, precision=precision, device=device,
        desc=f"{args.loss} {args.chosen}>{args.rejected} seed {args.seed}", ckpt=ckpt)
    probs = [lp.exp() for lp in logps]
    exclude = [chosen_id, rejected_id]
    for row, p in zip(rows, probs):  # the largest movers of the whole distribution since the start
        row["top_risers"] = [{"id": i, "token": tok.decode([i]), "p": float(p[i]), "dp": d}
                             for i, d in top_risers(probs[0], p, exclude, args.top_k)]
        row["top_fallers"] = [{"id": i, "token": tok.decode([i]), "p": float(p[i]), "dp": -d}
                              for i, d in top_risers(p, probs[0], exclude, args.top_k)]

    summary = largest_decrease([r["p_chosen"] for r in rows])
    # Where the mass went: over the drawdown window (peak -> trough) when π(y+) fell, else start -> end.
    t0, t1 = ((summary["step_peak"], summary["step_trough"]) if summary["displaced"] else (0, args.steps))
    risers = [{"id": i, "token": tok.decode([i]), "p_from": float(probs[t0][i]), "p_to": float(probs[t1][i]),
               "dp": d, "meaning": classify_token(tok.decode([i]), args.chosen, meanings, opposites)}
              for i, d in top_risers(probs[t0], probs[t1], exclude, args.top_k)]
    pred = theory.get("step0") or {}
    if pred:
        pred["gainers"] = [{"id": i, "token": tok.decode([i]), "rate": r,
                            "meaning": classify_token(tok.decode([i]), args.chosen, meanings, opposites)}
                           for i, r in pred["gainers"]]
    summary.update({
        "prompt_id": record["id"], "chosen": args.chosen, "rejected": args.rejected,
        "prompt_pool": args.prompt_pool,
        # None: no SFT (base init); else whether an SFT update used this prompt
        "prompt_seen_in_sft": None if sft is None else record["id"] in set(sft["trained_prompt_ids"]),
        "sft": None if sft is None else {k: v for k, v in sft.items() if not k.endswith("_ids")},
        # P2 Definition 1 on this run: the loss fell while ln π(y+) fell (end of training vs start)
        "definition1": bool(rows[-1]["loss"] < rows[0]["loss"] and rows[-1]["logp_chosen"] < rows[0]["logp_chosen"]),
        "dlogp_chosen_first_step": rows[1]["logp_chosen"] - rows[0]["logp_chosen"],
        "p_rejected_start": rows[0]["p_rejected"], "p_rejected_end": rows[-1]["p_rejected"],
        "loss_start": rows[0]["loss"], "loss_end": rows[-1]["loss"],
        "risers_window": [t0, t1],
        "top_risers": risers,
        "theory_first_step": theory,
    })
    out = Path(args.out_dir)
    write_json(out / "config.json", vars(args) | {"precision_resolved": precision, "prompt": record["question"]})
    write_jsonl(out / "metrics.jsonl", rows)
    write_json(out / "manifest.json", run_manifest(seed=args.seed, device=str(device), started=started,
                                                   steps_wall=steptimes.record()))
    write_json(out / "summary.json", summary)  # last: its presence marks a finished run
    checkpoint.finished(args.checkpoint_dir)
    log.info("π(y+) start %.3f, peak %.3f (step %d), trough %.3f (step %d), end %.3f; top risers %s",
             summary["p_start"], summary["p_peak"], summary["step_peak"], summary["p_trough"],
             summary["step_trough"], summary["p_end"], [(r["token"], r["meaning"]) for r in risers[:3]])


if __name__ == "__main__":
    main()
