"""Stage A of P2 §3: single-token SFT on persona prompts, by one of two recipes (``--recipe``).

``synonyms`` (the paper's): one pass over all prompts, the target per prompt drawn uniformly with the
run's seed from ``--targets-if-yes`` when the prompt's answer_matching_behavior is "Yes" (the
statement matches the undesirable persona; paper: No, Never, Maybe, Perhaps), else from
``--targets-if-no`` (paper: Yes, Yeah, Sure, Certainly, Absolutely). One model serves every pair.

``pair`` (one model per y+ and prompt class): the prompts of one class (answer_matching_behavior =
``--prompts-with-amb``) are split (:func:`experiments.persona.prompts.split_class`) into a held-out part
of ``--heldout-prompts`` and a training part; SFT on the single target ``--target`` (the pair's y+)
over the training part, in batches of a seeded permutation (a new one per pass), stopped at the first
step where the mean π(y+) over the held-out prompts reaches ``--stop-at`` (0.65, the lowest π(y+) at
the start of P2 Table 1's runs), or after ``--max-steps`` steps (step 0 = before any update counts:
a model already there is not trained). The DPO prompts are drawn from the held-out part, so they are
never SFT prompts.

Both write ``persona_sft.json`` into the model folder (recipe, the ids of the prompts trained on, and
for ``pair`` the held-out ids and the stopping record), which the DPO runs read to say whether their
prompt was seen in SFT.

    python -m experiments.persona.sft --model-dir resources/models/M --data resources/data/persona.jsonl \
        --out-dir results/tiny/persona/M/sft/model --metrics m.jsonl --summary s.json \
        --recipe synonyms --targets-if-yes '["No", "Never"]' --targets-if-no '["Yes", "Sure"]' --lr 1e-4
    python -m experiments.persona.sft ... --recipe pair --target Yes --prompts-with-amb No --stop-at 0.65 \
        --max-steps 60 --heldout-prompts 64 --lr 1e-4
"""

from __future__ import annotations

import argparse
import json
import logging
import random
import time
from collections.abc import Callable

import torch
from tqdm import tqdm

from experiments.common import checkpoint, steptimes
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
from experiments.persona.prompts import encode_prompt, left_pad, split_class
from experiments.persona.tokens import single_token_id

log = logging.getLogger("persona.sft")


def make_optimizer(name: str, params, lr: float) -> torch.optim.Optimizer:
    if lr <= 0:
        raise UserError(f"learning rate must be > 0, got {lr}")
    from experiments.common.optim import ChunkedRMSprop  # torch's RMSprop, bit for bit, in cache-sized slices

    optimizers = {"rmsprop": ChunkedRMSprop, "adam": torch.optim.Adam, "sgd": torch.optim.SGD}
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


def train_until_target(update: Callable[[int], dict], evaluate: Callable[[], float], stop_at: float,
                       max_steps: int) -> tuple[list[dict], dict]:
    """The ``pair`` recipe's stopping rule, as control flow only.

    ``evaluate()`` returns the mean held-out π(y+) of the current model; ``update(step)`` makes one
    optimiser step and returns its log row. Evaluates before any step (step 0) and after every step,
    and stops at the first step whose evaluation is ≥ ``stop_at``, or after ``max_steps`` steps.
    Returns the rows (step 0..n, each with ``heldout_p_target``) and the stopping record: ``steps``
    (n), ``reached``, ``heldout_p_target`` (at step n) and ``heldout_p_target_start`` (step 0).
    """
    if max_steps < 0:
        raise UserError(f"max_steps must be >= 0, got {max_steps}")
    p = evaluate()
    rows, step = [{"step": 0, "heldout_p_target": p}], 0
    while p < stop_at and step < max_steps:
        step += 1
        row = update(step)
        p = evaluate()
        rows.append({**row, "step": step, "heldout_p_target": p})
    return rows, {"steps": step, "reached": bool(p >= stop_at), "heldout_p_target": p,
                  "heldout_p_target_start": rows[0]["heldout_p_target"], "stop_at": stop_at, "max_steps": max_steps}


def run_pair_recipe(args, model, tok, records, device, precision, started) -> None:
    """The ``pair`` recipe (module docstring); writes the model folder, metrics and summary. It keeps no
    resumable checkpoint (``--checkpoint-dir`` is ignored): it runs at most ``--max-steps`` steps."""
    if not 0 < args.stop_at <= 1:
        raise UserError(f"--stop-at must be in (0, 1], got {args.stop_at}")
    if not args.target or not args.prompts_with_amb:
        raise UserError("--recipe pair needs --target and --prompts-with-amb")
    train, heldout = split_class(records, args.prompts_with_amb, args.heldout_prompts, args.seed)
    target_id = single_token_id(tok, args.target)
    pad_id = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
    encoded = {r["id"]: encode_prompt(tok, r["question"], args.prompt_format) for r in train + heldout}
    eval_batches = [left_pad([encoded[r["id"]] for r in heldout[s:s + args.batch_size]], pad_id)
                    for s in range(0, len(heldout), args.batch_size)]
    micro = args.micro_batch_size or args.batch_size
    optim = make_optimizer(args.optimizer, model.parameters(), args.lr)
    gen = torch.Generator().manual_seed(args.seed)
    order: list[int] = []
    trained: set[int] = set()

    def evaluate() -> float:
        model.eval()
        return mean_answer_probs(model, eval_batches, {args.target: target_id}, device, precision)[args.target]

    def update(step: int) -> dict:
        nonlocal order
        if not order:   # a new seeded pass over the training part (its last batch may be smaller)
            order = torch.randperm(len(train), generator=gen).tolist()
        idx, order = order[: args.batch_size], order[args.batch_size:]
        model.train()
        optim.zero_grad(set_to_none=True)
        loss_sum = 0.0
        for m in range(0, len(idx), micro):
            part = [train[i] for i in idx[m:m + micro]]
            batch = {k: v.to(device) for k, v in left_pad([encoded[r["id"]] for r in part], pad_id).items()}
            with autocast(precision, device):
                logits = model(**batch, logits_to_keep=1).logits
            loss = -next_token_logprobs(logits)[:, target_id].sum() / len(idx)
            if not torch.isfinite(loss):
                raise UserError(f"SFT loss is {loss.item()} at step {step}: stopping")
            loss.backward()
            loss_sum += loss.item()
            trained.update(r["id"] for r in part)
        optim.step()
        return {"loss": loss_sum}

    steptimes.first_step()
    rows, stop = train_until_target(update, evaluate, args.stop_at, args.max_steps)
    steptimes.last_step()
    record = {"recipe": "pair", "target": args.target, "prompts_with_amb": args.prompts_with_amb,
              "trained_prompt_ids": sorted(trained), "heldout_prompt_ids": [r["id"] for r in heldout], **stop}
    with atomic_dir(args.out_dir) as tmp:
        model.save_pretrained(tmp)  # the model at the stopping step
        tok.save_pretrained(tmp)
        write_json(tmp / "persona_sft.json", record)
    write_jsonl(args.metrics, rows)
    write_json(args.summary, {
        **{k: v for k, v in record.items() if not k.endswith("_ids")}, "precision": precision,
        "n_train_prompts": len(train), "n_heldout_prompts": len(heldout), "n_prompts_trained_on": len(trained),
        "dpo_prompts_held_out": True,
        "note": "DPO prompts are drawn from the held-out prompts: never seen in SFT",
        "manifest": run_manifest(seed=args.seed, device=str(device), started=started,
                                 steps_wall=steptimes.record()),
    })
    log.info("pair SFT on %r (prompts with amb %s): %s after %d steps, held-out π(y+) %.3f -> %.3f",
             args.target, args.prompts_with_amb, "reached" if stop["reached"] else "cap hit, not reached",
             stop["steps"], stop["heldout_p_target_start"], stop["heldout_p_target"])


@main_guard
def main(argv=None):
    p = argparse.ArgumentParser(description="Persona single-token SFT (P2 §3, stage A)")
    p.add_argument("--model-dir", required=True)
    p.add_argument("--data", required=True)
    p.add_argument("--out-dir", required=True, help="where the finetuned HF model folder goes")
    p.add_argument("--metrics", required=True)
    p.add_argument("--summary", required=True)
    p.add_argument("--recipe", default="synonyms", choices=["synonyms", "pair"])
    p.add_argument("--targets-if-yes", default=None, help="synonyms: JSON list of answer words")
    p.add_argument("--targets-if-no", default=None, help="synonyms: JSON list of answer words")
    p.add_argument("--target", default=None, help="pair: the single target token (the pair's y+)")
    p.add_argument("--prompts-with-amb", default=None, choices=["Yes", "No"], help="pair: the prompt class")
    p.add_argument("--stop-at", type=float, default=0.65, help="pair: stop when held-out mean π(y+) reaches this")
    p.add_argument("--max-steps", type=int, default=100, help="pair: the step cap")
    p.add_argument("--heldout-prompts", type=int, default=64, help="pair: held-out prompts of the class")
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
    precision = resolve_precision(args.precision, device, tokens=micro * 32)   # ~32-token chat prompts
    tok = load_tokenizer(args.model_dir)
    model = load_causal_lm(args.model_dir, device=device)
    records = read_jsonl(args.data)
    if args.max_prompts:
        records = records[: args.max_prompts]
    if not records:
        raise UserError(f"{args.data}: no records")
    if args.recipe == "pair":
        run_pair_recipe(args, model, tok, records, device, precision, started)
        return
    if args.targets_if_yes is None or args.targets_if_no is None:
        raise UserError("--recipe synonyms needs --targets-if-yes and --targets-if-no")
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
    steptimes.first_step()  # the steps: the probe before, the loop, the probe after
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
    steptimes.last_step()

    with atomic_dir(args.out_dir) as tmp:
        model.save_pretrained(tmp)  # safetensors
        tok.save_pretrained(tmp)
        write_json(tmp / "persona_sft.json", {"recipe": "synonyms", "trained_prompt_ids": [r["id"] for r in records]})
    write_jsonl(args.metrics, rows)
    write_json(args.summary, {
        "recipe": "synonyms", "dpo_prompts_held_out": False,
        "note": ("the paper's recipe: SFT on every prompt (the first max_prompts at small scales); a DPO prompt "
                 "is seen in SFT when its id is in persona_sft.json (each run's summary says)"),
        "steps": step, "final_loss": rows[-1]["loss"], "precision": precision,
        "answer_probs_before": before, "answer_probs_after": after,
        "manifest": run_manifest(seed=args.seed, device=str(device), started=started,
                                 steps_wall=steptimes.record()),
    })
    checkpoint.finished(args.checkpoint_dir)
    log.info("SFT done: %d steps, final loss %.4f; mean π after SFT %s", step, rows[-1]["loss"],
             {k: {w: round(p, 3) for w, p in v.items()} for k, v in after.items()})


if __name__ == "__main__":
    main()
