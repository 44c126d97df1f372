"""P1 Finding I: per-input reward mean and std under a model (GRUE reward statistics).

For N train inputs (the official selection: the first N of ``np.random.RandomState(seed)
.permutation``, seed 7) draw k outputs each with the task's sampling kwargs, score every output with
the task's reward, and keep the per-input mean and standard deviation over the k samples.

Sampling is batched: ``generate(..., do_sample=True, num_return_sequences=k)`` with the KV cache over
a batch of prompts (left-padded for decoder-only models), never a per-sample loop. The std is the
population std of the k rewards (ddof = 0: the plug-in estimate of STD_x in P1's Theorem 1); the
CSV also keeps ddof = 1.

    python -m experiments.rft.stats --model resources/models/M --data resources/data/grue/T.jsonl \
        --reward meteor --n-inputs 200 --samples 10 --gen-kwargs '{"max_new_tokens": 20}' \
        --out per_input.csv --samples-out samples.jsonl --summary summary.json
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

from experiments.common import steptimes
from experiments.common.cli import UserError, main_guard, thread_count
from experiments.common.io import read_jsonl, run_manifest, write_csv, write_json, write_jsonl

log = logging.getLogger("rft.stats")

# sampling kwargs the CLI accepts (the official configs use these; anything else is a typo)
GEN_KEYS = {"max_new_tokens", "min_new_tokens", "top_k", "top_p", "temperature"}


def per_input_stats(rewards: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """[N, k] rewards -> per-input mean, std (ddof 0) and std (ddof 1)."""
    r = np.asarray(rewards, dtype=np.float64)
    if r.ndim != 2 or r.shape[1] < 1:
        raise ValueError(f"rewards must be [N, k] with k >= 1, got shape {r.shape}")
    std1 = r.std(axis=1, ddof=1) if r.shape[1] > 1 else np.full(r.shape[0], np.nan)
    return r.mean(axis=1), r.std(axis=1, ddof=0), std1


def select_inputs(records: list[dict], n: int, seed: int) -> list[dict]:
    """The official selection (:func:`experiments.rft.task_records.subsample`); ``n`` = 0 keeps every record."""
    from experiments.rft.task_records import subsample

    return subsample(records, n if n > 0 else len(records), seed)


def render_prompt(tokenizer, prompt: str, prompt_format: str) -> str:
    """``plain``: the prompt as is (continuation tasks); ``chat``: one user turn + generation prompt."""
    if prompt_format == "plain":
        return prompt
    if prompt_format == "chat":
        if not tokenizer.chat_template:
            raise UserError("prompt_format 'chat' but the tokenizer has no chat template")
        return tokenizer.apply_chat_template([{"role": "user", "content": prompt}], tokenize=False,
                                             add_generation_prompt=True)
    raise UserError(f"unknown prompt_format {prompt_format!r}: use plain or chat")


def encode_batch(tokenizer, texts: list[str], max_tokens: int, encoder_decoder: bool,
                 special_tokens: bool = True) -> tuple[dict, int]:
    """Tokenise a batch, padded for generation: left padding and left truncation for decoder-only
    models (the end of the prompt is what the continuation follows), right for encoder-decoder.
    ``special_tokens``: the tokenizer's own BOS/EOS (False for chat-rendered text, which has them).
    Returns the tensors and how many prompts were truncated."""
    side = "right" if encoder_decoder else "left"
    tokenizer.padding_side = side
    tokenizer.truncation_side = side
    full = tokenizer(texts, add_special_tokens=special_tokens)["input_ids"]
    truncated = sum(len(ids) > max_tokens for ids in full)
    enc = tokenizer(texts, return_tensors="pt", padding=True, truncation=True, max_length=max_tokens,
                    add_special_tokens=special_tokens)
    return {"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"]}, truncated


@torch.no_grad()
def sample_batch(model, tokenizer, batch: dict, k: int, gen_kwargs: dict,
                 seed: int) -> tuple[list[list[str]], int]:
    """k sampled outputs per prompt in one ``generate`` call. Returns the texts [B][k] (outputs only)
    and the number of generated tokens that are not padding (counted on the ids, not re-tokenised)."""
    torch.manual_seed(seed)
    device = next(model.parameters()).device
    batch = {key: v.to(device) for key, v in batch.items()}
    out = model.generate(**batch, do_sample=True, num_return_sequences=k, pad_token_id=tokenizer.pad_token_id,
                         **gen_kwargs)
    new = out if model.config.is_encoder_decoder else out[:, batch["input_ids"].shape[1]:]
    texts = tokenizer.batch_decode(new, skip_special_tokens=True)
    b = batch["input_ids"].shape[0]
    return [texts[i * k:(i + 1) * k] for i in range(b)], int((new != tokenizer.pad_token_id).sum())


def reward_table(model, tokenizer, records: list[dict], reward, *, samples: int, gen_kwargs: dict,
                 prompt_format: str, max_prompt_tokens: int, batch_inputs: int, seed: int, task: str = "",
                 keep_samples: bool = False, progress: bool = True, precision: str = "fp32") -> dict:
    """Sample ``samples`` outputs for every record and score them: one row per input (``mean``, ``std``
    (ddof 0), ``std_ddof1``, ``min``, ``max``) plus, with ``keep_samples``, every text and reward.
    Batch ``b`` is sampled with seed ``seed + b * batch_inputs`` (the same draws for the same model);
    ``precision`` "bf16" samples under bf16 autocast (fp32 weights and sampling softmax)."""
    from experiments.common.torchutil import autocast

    device = next(model.parameters()).device
    encoder_decoder = bool(model.config.is_encoder_decoder)
    rows, sample_rows, truncated, n_tokens = [], [], 0, 0
    t_gen = t_score = 0.0
    starts = range(0, len(records), batch_inputs)
    for start in tqdm(starts, desc=f"{task}: sample+score", mininterval=10, disable=not progress):
        part = records[start:start + batch_inputs]
        texts = [render_prompt(tokenizer, r["prompt"], prompt_format) for r in part]
        batch, cut = encode_batch(tokenizer, texts, max_prompt_tokens, encoder_decoder,
                                  special_tokens=prompt_format == "plain")
        truncated += cut
        t0 = time.time()
        with autocast(precision, device):
            outputs, generated = sample_batch(model, tokenizer, batch, samples, gen_kwargs, seed + start)
        t_gen += time.time() - t0
        n_tokens += generated
        t0 = time.time()
        flat_prompts = [r["prompt"] for r in part for _ in range(samples)]
        flat_refs = [r["references"] for r in part for _ in range(samples)]
        scores = np.asarray(reward(flat_prompts, [o for outs in outputs for o in outs], flat_refs), dtype=np.float64)
        t_score += time.time() - t0
        if not np.isfinite(scores).all():
            raise UserError(f"the reward is not finite for inputs {start}..{start + len(part) - 1}")
        per = scores.reshape(len(part), samples)
        mean, std0, std1 = per_input_stats(per)
        for r, outs, s, m, s0, s1 in zip(part, outputs, per, mean, std0, std1, strict=True):
            rows.append({"task": task, "input_id": r["id"], "mean": m, "std": s0, "std_ddof1": s1,
                         "n_samples": samples, "min": s.min(), "max": s.max()})
            if keep_samples:
                sample_rows.append({"input_id": r["id"], "prompt": r["prompt"], "outputs": outs,
                                    "rewards": [float(x) for x in s]})
    return {"rows": rows, "samples": sample_rows, "truncated": truncated, "tokens": n_tokens,
            "generate_s": t_gen, "score_s": t_score}


def _gen_kwargs(text: str) -> dict:
    try:
        kwargs = json.loads(text)
    except json.JSONDecodeError as e:
        raise UserError(f"--gen-kwargs is not JSON: {e}") from None
    if not isinstance(kwargs, dict) or set(kwargs) - GEN_KEYS:
        raise UserError(f"--gen-kwargs: unknown key(s) {sorted(set(kwargs) - GEN_KEYS)}; allowed {sorted(GEN_KEYS)}")
    if kwargs.get("top_k") == 0:
        kwargs["top_k"] = None  # the official configs' top_k 0 means "no top-k filter"
    return kwargs


@main_guard
def main(argv=None):
    from experiments.common.torchutil import resolve_device, resolve_precision, set_seed, set_threads
    from experiments.models.load import load_generator, load_tokenizer
    from experiments.rft.rewards import make_reward

    p = argparse.ArgumentParser(description="P1 Finding I: per-input reward mean/std under a model")
    p.add_argument("--model", required=True, help="prepared model folder")
    p.add_argument("--data", required=True, help="normalised task records (experiments.rft.tasks)")
    p.add_argument("--task", default="", help="task name for the CSV (default: the data file's stem)")
    p.add_argument("--split", default="train")
    p.add_argument("--reward", required=True)
    p.add_argument("--reward-kwargs", default="{}", help="JSON, e.g. the sentiment model path")
    p.add_argument("--n-inputs", type=int, default=200, help="0 = every input of the split")
    p.add_argument("--samples", type=int, default=10, help="outputs per input (paper: 10)")
    p.add_argument("--seed", type=int, default=7, help="input selection and sampling (paper: 7)")
    p.add_argument("--gen-kwargs", default="{}", help=f"JSON with keys from {sorted(GEN_KEYS)}")
    p.add_argument("--prompt-format", default="plain", choices=("plain", "chat"))
    p.add_argument("--max-prompt-tokens", type=int, default=512)
    p.add_argument("--batch-inputs", type=int, default=8, help="prompts per generate call")
    p.add_argument("--precision", default="fp32", help="fp32 | bf16 (autocast while sampling) | auto")
    p.add_argument("--device", default="auto")
    p.add_argument("--threads", type=thread_count, default=0)
    p.add_argument("--out", required=True, help="tidy CSV, one row per input")
    p.add_argument("--samples-out", help="optional JSONL with every sampled text and its reward")
    p.add_argument("--summary", help="optional JSON summary")
    args = p.parse_args(argv)
    for name in ("samples", "batch_inputs", "max_prompt_tokens"):
        if getattr(args, name) <= 0:
            raise UserError(f"--{name.replace('_', '-')} must be > 0, got {getattr(args, name)}")
    if args.n_inputs < 0:
        raise UserError(f"--n-inputs must be >= 0, got {args.n_inputs}")
    gen_kwargs = _gen_kwargs(args.gen_kwargs)
    try:
        reward_kwargs = json.loads(args.reward_kwargs)
    except json.JSONDecodeError as e:
        raise UserError(f"--reward-kwargs is not JSON: {e}") from None
    set_threads(args.threads)
    set_seed(args.seed)
    started = time.time()
    task = args.task or Path(args.data).stem

    records = [r for r in read_jsonl(args.data) if r["split"] == args.split]
    if not records:
        raise UserError(f"{args.data}: no records in split {args.split!r}")
    chosen = select_inputs(records, args.n_inputs, args.seed)
    device = resolve_device(args.device)
    try:
        precision = resolve_precision(args.precision, device, tokens=args.batch_inputs * args.samples)  # decode rows
    except ValueError as e:
        raise UserError(str(e)) from None
    tokenizer = load_tokenizer(args.model)
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    model = load_generator(args.model, device)
    reward = make_reward(args.reward, **reward_kwargs)

    steptimes.first_step()  # the steps: sampling and scoring
    res = reward_table(model, tokenizer, chosen, reward, samples=args.samples, gen_kwargs=gen_kwargs,
                       prompt_format=args.prompt_format, max_prompt_tokens=args.max_prompt_tokens,
                       batch_inputs=args.batch_inputs, seed=args.seed, task=task, keep_samples=bool(args.samples_out),
                       precision=precision)
    rows, sample_rows, truncated, n_tokens = res["rows"], res["samples"], res["truncated"], res["tokens"]
    t_gen, t_score = res["generate_s"], res["score_s"]
    steptimes.last_step()
    import pandas as pd

    write_csv(pd.DataFrame(rows), args.out)
    if args.samples_out:
        write_jsonl(args.samples_out, sample_rows)
    df = pd.DataFrame(rows)
    summary = {"task": task, "reward": args.reward, "n_inputs": len(rows), "samples": args.samples,
               "gen_kwargs": gen_kwargs, "prompt_format": args.prompt_format, "truncated_prompts": truncated,
               "precision": precision,
               "mean_reward": float(df["mean"].mean()), "median_std": float(df["std"].median()),
               "std_p10": float(df["std"].quantile(0.1)), "generated_tokens": n_tokens,
               "generate_s": round(t_gen, 2), "score_s": round(t_score, 2),
               "tokens_per_s": round(n_tokens / max(t_gen, 1e-9), 1),
               "manifest": run_manifest(seed=args.seed, device=str(device), started=started,
                                        steps_wall=steptimes.record())}
    if args.summary:
        write_json(args.summary, summary)
    log.info("%s: %d inputs x %d samples, mean reward %.3f, median std %.3f, %d prompts truncated, "
             "%.0f generated tokens/s", task, len(rows), args.samples, summary["mean_reward"], summary["median_std"],
             truncated, summary["tokens_per_s"])


if __name__ == "__main__":
    main()
