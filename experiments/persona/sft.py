"""Stage A of P2 §3: one SFT pass over all persona prompts, cross-entropy on a single output token.

Target per prompt, drawn uniformly with the run's seed: from ``--targets-if-yes`` when the prompt's
answer_matching_behavior is "Yes" (the statement matches the undesirable persona; paper: No, Never,
Maybe, Perhaps), else from ``--targets-if-no`` (paper: Yes, Yeah, Sure, Certainly, Absolutely).

    python -m experiments.persona.sft --model-dir resources/models/M --data resources/data/persona.jsonl \
        --out-dir results/tiny/persona/M/sft/model --metrics m.jsonl --summary s.json
"""

from __future__ import annotations

import argparse
import json
import logging
import random
import time

import torch
from tqdm import tqdm

from experiments.common import checkpoint
from experiments.common.cli import UserError, main_guard, thread_count
from experiments.common.io import (
    atomic_dir,
    read_jsonl,
    run_manifest,
    write_json,
    write_jsonl,
)
from experiments.common.torchutil import (
    autocast,
    resolve_device,
    resolve_precision,
    set_seed,
    set_threads,
)
from experiments.models.load import load_causal_lm, load_tokenizer
from experiments.persona.losses import next_token_logprobs
from experiments.persona.prompts import encode_prompt, left_pad
from experiments.persona.tokens import single_token_id

log = logging.getLogger("persona.sft")


def make_optimizer(name: str, params, lr: float) -> torch.optim.Optimizer:
    if lr <= 0:
        raise UserError(f"learning rate must be > 0, got {lr}")
    optimizers = {"rmsprop": torch.optim.RMSprop, "adam": torch.optim.Adam, "sgd": torch.optim.SGD}
    if name not in optimizers:
        raise UserError(f"unknown optimizer {name!r}: use one of {sorted(optimizers)}")
    return optimizers[name](params, lr=lr)


def assign_targets(records: list[dict], targets_if_yes: list[str], targets_if_no: list[str],
                   seed: int) -> list[str]:
    rng = random.Random(seed)
    return [rng.choice(targets_if_yes if r["answer_matching_behavior"] == "Yes" else targets_if_no)
            for r in records]


@torch.no_grad()
def mean_answer_probs(model, batches, word_ids: dict[str, int], device, precision) -> dict[str, float]:
    """Mean π(word | prompt) over the prompts in ``batches`` for each answer word."""
    sums = dict.fromkeys(word_ids, 0.0)
    n = 0
    ids = torch.tensor(list(word_ids.values()))
    for batch in batches:
        with autocast(precision, device):
            logits = model(**{k: v.to(device) for k, v in batch.items()}, logits_to_keep=1).logits
        probs = next_token_logprobs(logits).exp()[:, ids.to(device)].sum(0).cpu()
        for w, p in zip(word_ids, probs.tolist()):
            sums[w] += p
        n += batch["input_ids"].shape[0]
    return {w: s / n for w, s in sums.items()}


@main_guard
def main(argv=None):
    p = argparse.ArgumentParser(description="Persona single-token SFT (P2 §3, stage A)")
    p.add_argument("--model-dir", required=True)
    p.add_argument("--data", required=True)
    p.add_argument("--out-dir", required=True, help="where the finetuned HF model folder goes")
    p.add_argument("--metrics", required=True)
    p.add_argument("--summary", required=True)
    p.add_argument("--targets-if-yes", required=True, help="JSON list of answer words")
    p.add_argument("--targets-if-no", required=True, help="JSON list of answer words")
    p.add_argument("--prompt-format", default="auto")
    p.add_argument("--optimizer", default="rmsprop")
    p.add_argument("--lr", type=float, required=True)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--micro-batch-size", type=int, default=0,
                   help="split each batch into chunks of this many prompts, gradients accumulated (0 = one chunk): "
                        "the same update up to float rounding, with a quarter of the activation memory at 8 of 32")
    p.add_argument("--epochs", type=int, default=1)
    p.add_argument("--max-prompts", type=int, default=0, help="0 = all")
    p.add_argument("--eval-prompts", type=int, default=128, help="prompts per answer class for the post-SFT probe")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--precision", default="auto")
    p.add_argument("--device", default="auto")
    p.add_argument("--threads", type=thread_count, default=0)
    p.add_argument("--checkpoint-dir", default=None,
                   help="resumable state here (outside --out-dir); a rerun continues from the last one")
    p.add_argument("--save-steps", type=int, default=0, help="with --checkpoint-dir: every N steps (0 = ~4 per run)")
    args = p.parse_args(argv)
    started = time.time()
    set_threads(args.threads)
    set_seed(args.seed)
    if args.batch_size <= 0 or args.epochs <= 0 or args.micro_batch_size < 0:
        raise UserError("batch size and epochs must be positive (micro batch size >= 0)")
    micro = args.micro_batch_size or args.batch_size

    device = resolve_device(args.device)
    precision = resolve_precision(args.precision, device)
    tok = load_tokenizer(args.model_dir)
    model = load_causal_lm(args.model_dir, device=device)
    records = read_jsonl(args.data)
    if args.max_prompts:
        records = records[: args.max_prompts]
    if not records:
        raise UserError(f"{args.data}: no records")
    targets_yes, targets_no = json.loads(args.targets_if_yes), json.loads(args.targets_if_no)
    word_ids = {w: single_token_id(tok, w) for w in dict.fromkeys(targets_yes + targets_no)}
    targets = assign_targets(records, targets_yes, targets_no, args.seed)
    prompts = [encode_prompt(tok, r["question"], args.prompt_format) for r in records]
    pad_id = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id

    probe_batches = {}  # the same prompts before and after SFT, per answer_matching_behavior
    for amb in ("Yes", "No"):
        idx = [i for i, r in enumerate(records) if r["answer_matching_behavior"] == amb][: args.eval_prompts]
        probe_batches[f"amb_{amb}"] = [left_pad([prompts[i] for i in idx[s:s + args.batch_size]], pad_id)
                                       for s in range(0, len(idx), args.batch_size)]

    def probe():
        model.eval()
        return {key: mean_answer_probs(model, batches, word_ids, device, precision)
                for key, batches in probe_batches.items()}

    optim = make_optimizer(args.optimizer, model.parameters(), args.lr)
    gen = torch.Generator().manual_seed(args.seed)
    rows, step = [], 0
    n_steps = args.epochs * -(-len(records) // args.batch_size)
    ckpt = checkpoint.LoopCheckpoint(args.checkpoint_dir, args.save_steps or checkpoint.auto_save_steps(n_steps))
    state = ckpt.load()
    if state is None:
        before, start_epoch, start_s, order = probe(), 0, 0, None
    else:  # continue where the killed run saved: same weights, optimizer, data order and RNG
        model.load_state_dict(state["model"])
        optim.load_state_dict(state["optim"])
        gen.set_state(state["gen"])
        before, rows, step = state["before"], state["rows"], state["step"]
        start_epoch, start_s, order = state["epoch"], state["next_s"], state["order"]
    bar = tqdm(total=n_steps, initial=step, desc="persona SFT", mininterval=5)
    for epoch in range(start_epoch, args.epochs):
        if order is None or epoch != start_epoch:
            order = torch.randperm(len(records), generator=gen).tolist()
        for s in range(start_s if epoch == start_epoch else 0, len(order), args.batch_size):
            idx = order[s:s + args.batch_size]
            model.train()
            optim.zero_grad(set_to_none=True)
            loss_sum, p_sum = 0.0, 0.0
            for m in range(0, len(idx), micro):  # gradient accumulation over micro-batches of the batch
                part = idx[m:m + micro]
                batch = {k: v.to(device) for k, v in left_pad([prompts[i] for i in part], pad_id).items()}
                labels = torch.tensor([word_ids[targets[i]] for i in part], device=device)
                with autocast(precision, device):
                    logits = model(**batch, logits_to_keep=1).logits
                target_logps = next_token_logprobs(logits).gather(-1, labels.view(-1, 1))
                loss = -target_logps.sum() / len(idx)  # this chunk's share of the batch mean
                if not torch.isfinite(loss):
                    raise UserError(f"SFT loss is {loss.item()} at step {step}: stopping")
                loss.backward()
                loss_sum += loss.item()
                p_sum += target_logps.detach().exp().sum().item()
            optim.step()
            rows.append({"epoch": epoch, "step": step, "loss": loss_sum, "p_target_mean": p_sum / len(idx)})
            step += 1
            bar.update(1)
            bar.set_postfix(loss=f"{loss_sum:.3f}")
            if ckpt.due(step) and step < n_steps:
                ckpt.save(step, {"model": model.state_dict(), "optim": optim.state_dict(), "gen": gen.get_state(),
                                 "before": before, "rows": rows, "step": step, "epoch": epoch,
                                 "next_s": s + args.batch_size, "order": order})
    bar.close()
    after = probe()

    with atomic_dir(args.out_dir) as tmp:
        model.save_pretrained(tmp)  # safetensors
        tok.save_pretrained(tmp)
    write_jsonl(args.metrics, rows)
    write_json(args.summary, {
        "steps": step, "final_loss": rows[-1]["loss"], "precision": precision,
        "answer_probs_before": before, "answer_probs_after": after,
        "manifest": run_manifest(seed=args.seed, device=str(device), started=started),
    })
    checkpoint.finished(args.checkpoint_dir)
    log.info("SFT done: %d steps, final loss %.4f; mean π after SFT %s", step, rows[-1]["loss"],
             {k: {w: round(p, 3) for w, p in v.items()} for k, v in after.items()})


if __name__ == "__main__":
    main()
