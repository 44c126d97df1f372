"""Reinforcement finetuning on a GRUE task (P1 §4.1, §5): PPO (ours, :mod:`experiments.rft.ppo`), or
GRPO / RLOO through TRL (:mod:`experiments.rft.trl_rft`), from a pretrained or an SFT checkpoint.

One iteration: take the next ``--inputs-per-iter`` train inputs of shuffled passes over the pool
(without replacement, :func:`pool_draws`; GRPO/RLOO use TRL's sampler), sample ``--samples-per-input`` responses each
with the task's sampling kwargs, score them with the task reward, and update. PPO pays the reward at the
last token, a per-token KL penalty to the initial model (adaptive coefficient), and runs
``--n-epochs`` passes of minibatches over the rollout with a value head on the policy's body
(``--critic shared``) or on a copy of the LM (``separate``, as RL4LMs); see :mod:`experiments.rft.ppo`
for the conventions kept from Stable-Baselines3 and the ones that deviate. PPO's
log-probabilities are those of the untempered policy (as RL4LMs: temperature and top-k shape only the
sampling).

Every iteration logs (``diagnostics.csv``): mean reward, mean per-input reward std over the samples
(ddof 0), the fraction of inputs whose std is below ``--small-std-threshold``, the gradient norm (pre-
clip, mean over minibatches), the KL to the initial model (mean per-episode sum) and its coefficient.
Before (optional) and after training the model is evaluated on the first ``--eval-inputs`` train
inputs with ``--eval-samples`` samples each (``per_input.csv``: Finding II's per-input gain against the
initial std).

    python -m experiments.rft.train --algorithm ppo --model resources/models/M --data T.jsonl \
        --reward meteor --gen-kwargs '{"max_new_tokens": 20}' --iterations 10 --out-dir results/.../run
"""

from __future__ import annotations

import argparse
import copy
import json
import logging
import math
import time
from pathlib import Path

import numpy as np
import torch

from experiments.common import steptimes
from experiments.common.cli import UserError, main_guard, thread_count
from experiments.common.io import read_jsonl, run_manifest, write_csv, write_json

log = logging.getLogger("rft.train")

ALGORITHMS = ("ppo", "grpo", "rloo")
DIAGNOSTICS = ["iteration", "mean_reward", "mean_std", "frac_small_std", "grad_norm", "kl", "kl_coef",
               "entropy", "policy_loss", "value_loss", "clip_fraction", "seconds"]


def pool_draws(n_pool: int, per_iter: int, iterations: int, seed: int) -> list[list[int]]:
    """The pool indices each iteration trains on: the pool is walked in shuffled passes without
    replacement (RL4LMs iterates its shuffled train set; a fresh permutation each pass), ``per_iter``
    consecutive indices per iteration, a pass continuing into the next permutation where it ends. Every
    input is visited ``iterations·per_iter / n_pool`` times, ±1. Drawn up front from ``seed`` alone, so a
    resumed run trains on the same inputs."""
    if n_pool < 1 or per_iter < 1 or iterations < 0:
        raise ValueError("pool_draws needs n_pool >= 1, per_iter >= 1, iterations >= 0")
    gen = torch.Generator().manual_seed(seed)
    stream: list[int] = []
    need = per_iter * iterations
    while len(stream) < need:
        stream += torch.randperm(n_pool, generator=gen).tolist()
    return [stream[i * per_iter:(i + 1) * per_iter] for i in range(iterations)]


def group_stats(rewards: np.ndarray, threshold: float) -> tuple[float, float, float]:
    """[inputs, samples] rewards -> (mean reward, mean per-input std (ddof 0), fraction of inputs whose
    std is below ``threshold``)."""
    r = np.asarray(rewards, dtype=np.float64)
    std = r.std(axis=1)
    return float(r.mean()), float(std.mean()), float((std < threshold).mean())


# ------------------------------------------------------------------------------------------ PPO
def rollout(ac, ref_lm, tokenizer, records, reward, *, samples: int, gen_kwargs: dict, prompt_format: str,
            max_prompt_tokens: int, kl_coef: float, cfg, precision: str, device, seed: int) -> dict:
    """Sample, score and evaluate one rollout: the tensors PPO needs plus the [inputs, samples] rewards."""
    from experiments.common.torchutil import autocast
    from experiments.rft.policy import response_mask
    from experiments.rft.ppo import gae, shaped_rewards
    from experiments.rft.stats import encode_batch, render_prompt

    lm = ac.lm
    texts = [render_prompt(tokenizer, r["prompt"], prompt_format) for r in records]
    batch, _ = encode_batch(tokenizer, texts, max_prompt_tokens, ac.encoder_decoder,
                            special_tokens=prompt_format == "plain")
    ids, pmask = batch["input_ids"].to(device), batch["attention_mask"].to(device)
    torch.manual_seed(seed)
    lm.eval()
    t0 = time.perf_counter()
    with torch.no_grad(), autocast(precision, device):
        out = lm.generate(input_ids=ids, attention_mask=pmask, do_sample=True, num_return_sequences=samples,
                          pad_token_id=tokenizer.pad_token_id, **gen_kwargs)
    resp = out[:, 1:] if ac.encoder_decoder else out[:, ids.shape[1]:]
    rmask = response_mask(resp, tokenizer.eos_token_id)
    empty = rmask.sum(1) == 0
    if empty.any():  # a response of zero tokens cannot be an episode: keep its first token
        rmask[empty, 0] = 1
    pids, pm = ids.repeat_interleave(samples, 0), pmask.repeat_interleave(samples, 0)
    texts_out = tokenizer.batch_decode(resp * rmask + tokenizer.pad_token_id * (1 - rmask), skip_special_tokens=True)
    t1 = time.perf_counter()
    flat_prompts = [r["prompt"] for r in records for _ in range(samples)]
    flat_refs = [r["references"] for r in records for _ in range(samples)]
    scores = np.asarray(reward(flat_prompts, texts_out, flat_refs), dtype=np.float64)
    if not np.isfinite(scores).all():
        raise UserError("the reward is not finite for a sampled response")
    t2 = time.perf_counter()
    cache = None
    with torch.no_grad(), autocast(precision, device):
        if ac.top_k and not ac.encoder_decoder:  # frozen lower blocks: run them once for the rollout
            cache = ac.prefix(pids, pm, resp, rmask)
            old_logp, _, old_values = ac.forward_top(cache)
            ref_logp, _, _ = ac.forward_top(cache, lm=ref_lm, values=False)
        else:
            old_logp, _, old_values = ac(pids, pm, resp, rmask)
            ref_logp, _, _ = ac(pids, pm, resp, rmask, values=False, lm=ref_lm)
    task_r = torch.tensor(scores, dtype=torch.float32, device=device)
    rewards, kl = shaped_rewards(task_r, old_logp, ref_logp, rmask, kl_coef)
    adv, ret = gae(rewards, old_values * rmask, rmask, cfg.gamma, cfg.gae_lambda)
    seconds = {"generate": t1 - t0, "score": t2 - t1, "logp": time.perf_counter() - t2}
    return {"prompt_ids": pids, "prompt_mask": pm, "response_ids": resp, "mask": rmask,
            "old_logp": old_logp, "old_values": old_values * rmask, "advantages": adv, "returns": ret,
            "rewards": scores.reshape(len(records), samples), "kl": float(kl.sum(1).mean()), "cache": cache,
            "tokens": int(rmask.sum()), "seconds": seconds}


def train_ppo(lm, tokenizer, pool, reward, args, gen_kwargs, precision, device, on_iter, draws, ckpt=None,
              state: dict | None = None, extra_state: dict | None = None) -> list[dict]:
    """PPO for ``args.iterations`` iterations; returns one diagnostics row per iteration.

    ``ckpt`` (a :class:`experiments.common.checkpoint.LoopCheckpoint`) saves the weights (policy + value
    head), optimizer, KL coefficient, sampling generator and rows every ``ckpt.every`` iterations, with
    ``extra_state`` alongside; ``state`` (what ``ckpt.load()`` returned) continues a killed run from there.
    The reference model is the initial ``lm``, so a resumed run must be given the initial model."""
    from experiments.common.torchutil import autocast
    from experiments.rft.policy import ActorCritic
    from experiments.rft.ppo import AdaptiveKLController, PPOConfig, ppo_update

    cfg = PPOConfig(lr=args.lr, n_epochs=args.n_epochs, batch_size=args.minibatch, gamma=args.gamma,
                    gae_lambda=args.gae_lambda, clip_range=args.clip_range, vf_coef=args.vf_coef,
                    ent_coef=args.ent_coef, max_grad_norm=args.max_grad_norm, kl_coef=args.kl_coef,
                    target_kl=args.target_kl)
    ref_lm = copy.deepcopy(lm).eval()
    for p in ref_lm.parameters():
        p.requires_grad_(False)
    ac = ActorCritic(lm, critic=args.critic).to(device)
    try:
        ac.freeze_lower(args.train_top_layers)
    except ValueError as e:
        raise UserError(str(e)) from None
    params = [p for p in ac.parameters() if p.requires_grad]
    log.info("PPO: %d trainable parameters (%s)", sum(p.numel() for p in params) ,
             f"top {args.train_top_layers} blocks" if args.train_top_layers else "all blocks")
    opt = torch.optim.Adam(params, lr=cfg.lr)
    kl_ctl = AdaptiveKLController(cfg.kl_coef, cfg.target_kl)
    gen = torch.Generator().manual_seed(args.seed)
    rows, start = [], 0
    if state is not None:  # continue a killed run: same weights, optimizer, KL coefficient and draws
        ac.load_state_dict(state["model"])
        opt.load_state_dict(state["optim"])
        kl_ctl.value = state["kl_coef"]
        gen.set_state(state["gen"])
        rows, start = list(state["rows"]), state["iteration"]
        log.info("PPO: resuming at iteration %d of %d", start + 1, args.iterations)
    for it in range(start, args.iterations):
        t0 = time.time()
        pick = draws[it]
        ro = rollout(ac, ref_lm, tokenizer, [pool[i] for i in pick], reward, samples=args.samples_per_input,
                     gen_kwargs=gen_kwargs, prompt_format=args.prompt_format,
                     max_prompt_tokens=args.max_prompt_tokens, kl_coef=kl_ctl.value, cfg=cfg,
                     precision=precision, device=device, seed=args.seed * 100_003 + it)

        def policy_fn(idx, ro=ro):
            with autocast(precision, device):
                if ro["cache"] is not None:
                    return ac.forward_top(ro["cache"], idx)
                return ac(ro["prompt_ids"][idx], ro["prompt_mask"][idx], ro["response_ids"][idx], ro["mask"][idx])

        ac.train()
        t_update = time.perf_counter()
        try:
            stats = ppo_update(policy_fn, params, opt, ro, cfg, generator=gen)
        except FloatingPointError as e:
            raise UserError(f"iteration {it}: {e}; lower --lr") from None
        coef = kl_ctl.value
        kl_ctl.update(ro["kl"])
        mean_r, mean_std, frac_small = group_stats(ro["rewards"], args.small_std_threshold)
        row = {"iteration": it, "mean_reward": mean_r, "mean_std": mean_std, "frac_small_std": frac_small,
               "grad_norm": stats["grad_norm"], "kl": ro["kl"], "kl_coef": coef, "entropy": stats["entropy"],
               "policy_loss": stats["policy_loss"], "value_loss": stats["value_loss"],
               "clip_fraction": stats["clip_fraction"], "seconds": round(time.time() - t0, 2),
               # the split of the iteration (not in diagnostics.csv; python -m experiments.bench reports it)
               "split_s": ro["seconds"] | {"update": time.perf_counter() - t_update}}
        rows.append(row)
        on_iter(row)
        if ckpt is not None and ckpt.due(it + 1) and it + 1 < args.iterations:
            ckpt.save(it + 1, {"model": ac.state_dict(), "optim": opt.state_dict(), "kl_coef": float(kl_ctl.value),
                               "gen": gen.get_state(), "rows": rows, "iteration": it + 1} | (extra_state or {}))
    ac.lm.eval()
    return rows


# ------------------------------------------------------------------------------------------- CLI
def evaluate(model, tokenizer, records, reward, args, gen_kwargs, tag: str, precision: str = "fp32"):
    from experiments.rft.stats import reward_table

    model.eval()
    res = reward_table(model, tokenizer, records, reward, samples=args.eval_samples, gen_kwargs=gen_kwargs,
                       prompt_format=args.prompt_format, max_prompt_tokens=args.max_prompt_tokens,
                       batch_inputs=args.eval_batch_inputs, seed=args.seed + 17, task=tag, progress=False,
                       precision=precision)
    return {r["input_id"]: (float(r["mean"]), float(r["std"])) for r in res["rows"]}, res


def run(args) -> dict:
    from experiments.common.torchutil import (
        resolve_device,
        resolve_precision,
        set_seed,
        set_threads,
    )
    from experiments.models.load import load_generator, load_tokenizer
    from experiments.rft.rewards import make_reward
    from experiments.rft.stats import _gen_kwargs, select_inputs

    started = time.time()
    if args.algorithm not in ALGORITHMS:
        raise UserError(f"unknown --algorithm {args.algorithm!r}: use {' | '.join(ALGORITHMS)}")
    for name in ("iterations", "inputs_per_iter", "samples_per_input", "n_epochs", "minibatch", "eval_samples",
                 "eval_batch_inputs"):
        if getattr(args, name) < 1:
            raise UserError(f"--{name.replace('_', '-')} must be >= 1")
    if not args.lr > 0:
        raise UserError("--lr must be > 0")
    gen_kwargs = _gen_kwargs(args.gen_kwargs)
    eval_kwargs = _gen_kwargs(args.eval_gen_kwargs) if args.eval_gen_kwargs else dict(gen_kwargs)
    if args.temperature is not None:  # the §5.1 heuristic: sample the rollouts hotter (or colder)
        if not args.temperature > 0:
            raise UserError("--temperature must be > 0")
        gen_kwargs["temperature"] = args.temperature
    try:
        reward_kwargs = json.loads(args.reward_kwargs)
    except json.JSONDecodeError as e:
        raise UserError(f"--reward-kwargs is not JSON: {e}") from None
    set_threads(args.threads)
    set_seed(args.seed)
    device = resolve_device(args.device)
    try:
        precision = resolve_precision(args.precision, device,   # the rollout's decode rows: sampling dominates
                                       tokens=args.inputs_per_iter * args.samples_per_input)
    except ValueError as e:
        raise UserError(str(e)) from None
    records = [r for r in read_jsonl(args.data) if r["split"] == "train"]
    if not records:
        raise UserError(f"{args.data}: no train records")
    pool = select_inputs(records, args.train_inputs, args.data_seed)
    eval_records = pool[:args.eval_inputs] if args.eval_inputs else pool
    reward = make_reward(args.reward, **reward_kwargs)
    try:
        tokenizer = load_tokenizer(args.model)
        model = load_generator(args.model, device)
    except (FileNotFoundError, OSError) as e:
        raise UserError(str(e).splitlines()[0]) from None
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    out = Path(args.out_dir)
    out.mkdir(parents=True, exist_ok=True)

    from experiments.common import checkpoint

    ckpt, state = None, None
    if args.checkpoint_dir and args.algorithm == "ppo":
        ckpt = checkpoint.LoopCheckpoint(args.checkpoint_dir,
                                         args.save_iterations or checkpoint.auto_save_steps(args.iterations))
        state = ckpt.load()
    steptimes.first_step()  # the steps: the evaluation before, the iterations, the evaluation after
    before = None
    if state is not None:
        before = state["before"]  # evaluated before the killed run trained; the model has moved since
    elif not args.no_eval_before:
        before, _ = evaluate(model, tokenizer, eval_records, reward, args, eval_kwargs, "before", precision)
        log.info("before: mean reward %.4f over %d inputs", np.mean([m for m, _ in before.values()]), len(before))

    def on_iter(row):
        log.info("iter %d/%d: reward %.4f  std %.4f  small-std %.2f  |g| %.3g  KL %.4f (coef %.4g)  %.1fs",
                 row["iteration"] + 1, args.iterations, row["mean_reward"], row["mean_std"], row["frac_small_std"],
                 row["grad_norm"] if row["grad_norm"] is not None else float("nan"),
                 row["kl"] if row["kl"] is not None else float("nan"),
                 row["kl_coef"] if row["kl_coef"] is not None else float("nan"), row["seconds"])

    t_train = time.time()
    if args.algorithm == "ppo":
        draws = pool_draws(len(pool), args.inputs_per_iter, args.iterations, args.seed)
        rows = train_ppo(model, tokenizer, pool, reward, args, gen_kwargs, precision, device, on_iter, draws,
                         ckpt=ckpt, state=state, extra_state={"before": before})
    else:
        from experiments.rft.trl_rft import train_trl

        work = out / ".trainer"
        trl_rows = train_trl(args.algorithm, model, tokenizer, pool, reward, prompt_format=args.prompt_format,
                             max_prompt_tokens=args.max_prompt_tokens, gen_kwargs=gen_kwargs,
                             num_generations=args.samples_per_input, inputs_per_step=args.inputs_per_iter,
                             steps=args.iterations, lr=args.lr, beta=args.kl_coef, entropy_coef=args.ent_coef,
                             seed=args.seed, precision=precision, device=device, work_dir=work,
                             small_std_threshold=args.small_std_threshold,
                             on_step=lambda r: log.info("step %d/%d: reward %.4f  std %.4f  small-std %.2f  |g| %.3g",
                                                        r["step"], args.iterations, r["mean_reward"], r["mean_std"],
                                                        r["frac_small_std"], r["grad_norm"]))
        rows = [{"iteration": r["step"] - 1, "mean_reward": r["mean_reward"],
                 "mean_std": r["mean_std"], "frac_small_std": r["frac_small_std"], "grad_norm": r["grad_norm"],
                 "kl": r.get("kl"), "kl_coef": args.kl_coef, "entropy": r.get("entropy"), "policy_loss": None,
                 "value_loss": None, "clip_fraction": None, "seconds": r.get("seconds")} for r in trl_rows]
        import shutil

        shutil.rmtree(work, ignore_errors=True)
    train_s = time.time() - t_train
    for r in rows:
        for k, v in r.items():
            if isinstance(v, float) and not math.isfinite(v) and k != "kl":
                raise UserError(f"iteration {r['iteration']}: {k} is {v}; lower --lr")

    after, res_after = evaluate(model, tokenizer, eval_records, reward, args, eval_kwargs, "after", precision)
    steptimes.last_step()
    import pandas as pd

    write_csv(pd.DataFrame(rows, columns=DIAGNOSTICS), out / "diagnostics.csv")
    per = []
    for rec in eval_records:
        m1, s1 = after[rec["id"]]
        m0, s0 = before[rec["id"]] if before else (float("nan"), float("nan"))
        per.append({"input_id": rec["id"], "mean_before": m0, "std_before": s0, "mean_after": m1, "std_after": s1})
    write_csv(pd.DataFrame(per), out / "per_input.csv")
    if args.save_model:
        model.save_pretrained(out / "model")
        tokenizer.save_pretrained(out / "model")
    summary = {
        "algorithm": args.algorithm, "model": str(args.model), "task": args.task or Path(args.data).stem,
        "reward": args.reward, "iterations": args.iterations, "inputs_per_iter": args.inputs_per_iter,
        "samples_per_input": args.samples_per_input, "lr": args.lr, "kl_coef": args.kl_coef,
        "target_kl": args.target_kl, "ent_coef": args.ent_coef, "gen_kwargs": gen_kwargs,
        "train_inputs": len(pool), "eval_inputs": len(eval_records), "eval_samples": args.eval_samples,
        **(_visits(draws, len(pool), len(eval_records)) if args.algorithm == "ppo" else {}),
        "reward_before": float(np.mean([m for m, _ in before.values()])) if before else None,
        "reward_after": float(np.mean([m for m, _ in after.values()])),
        "train_reward_first": rows[0]["mean_reward"], "train_reward_last": rows[-1]["mean_reward"],
        "train_seconds": round(train_s, 1),
        "eval_tokens_per_s": round(res_after["tokens"] / max(res_after["generate_s"], 1e-9), 1),
        "precision": precision, "train_top_layers": args.train_top_layers, "critic": args.critic,
        "manifest": run_manifest(seed=args.seed, device=str(device), started=started, threads=args.threads,
                                 steps_wall=steptimes.record()),
    }
    write_json(out / "summary.json", summary)
    checkpoint.finished(args.checkpoint_dir)
    log.info("%s: reward %s -> %.4f on %d eval inputs (%.0fs training)", args.algorithm,
             f"{summary['reward_before']:.4f}" if before else "n/a", summary["reward_after"], len(eval_records),
             train_s)
    return summary


def _visits(draws: list[list[int]], n_pool: int, n_eval: int) -> dict:
    """How often PPO trained on each input (``draws``: :func:`pool_draws`): over the pool and over the
    evaluated inputs, the pool's first ``n_eval`` (Finding II needs every one trained, several times)."""
    counts = np.bincount(np.asarray([i for d in draws for i in d], dtype=int), minlength=n_pool)
    ev = counts[:n_eval]
    return {"visits_pool_min": int(counts.min()), "visits_pool_max": int(counts.max()),
            "visits_eval_min": int(ev.min()), "visits_eval_max": int(ev.max()),
            "eval_inputs_trained": int((ev > 0).sum())}


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m experiments.rft.train", description=__doc__.splitlines()[0])
    a = p.add_argument
    a("--algorithm", default="ppo", help="ppo | grpo | rloo")
    a("--model", required=True, help="prepared model folder (pretrained or an SFT checkpoint)")
    a("--data", required=True, help="normalised task records (experiments.rft.tasks)")
    a("--task", default="")
    a("--reward", required=True)
    a("--reward-kwargs", default="{}")
    a("--prompt-format", default="plain", choices=("plain", "chat"))
    a("--max-prompt-tokens", type=int, default=512)
    a("--gen-kwargs", default="{}", help="rollout sampling kwargs (JSON)")
    a("--temperature", type=float, default=None, help="override the rollout temperature (§5.1 heuristic)")
    a("--train-inputs", type=int, default=0, help="train pool: first N of the official permutation (0 = all)")
    a("--data-seed", type=int, default=7, help="permutation of the train pool (official: 7)")
    a("--iterations", type=int, default=10)
    a("--inputs-per-iter", type=int, default=16)
    a("--samples-per-input", type=int, default=4)
    a("--lr", type=float, default=1e-6)
    a("--n-epochs", type=int, default=5)
    a("--minibatch", type=int, default=64, help="episodes per PPO minibatch")
    a("--gamma", type=float, default=0.99)
    a("--gae-lambda", type=float, default=0.95)
    a("--clip-range", type=float, default=0.2)
    a("--vf-coef", type=float, default=0.5)
    a("--ent-coef", type=float, default=0.0)
    a("--max-grad-norm", type=float, default=0.5)
    a("--kl-coef", type=float, default=0.001, help="initial KL coefficient (GRPO/RLOO: beta)")
    a("--target-kl", type=float, default=None, help="adaptive KL target (omit: fixed coefficient)")
    a("--train-top-layers", type=int, default=0, help="PPO: train only the top N blocks (0 = all)")
    a("--critic", default="shared", choices=("shared", "separate"),
      help="PPO: value head on the policy's body (shared) or on a copy of the LM (separate, as RL4LMs)")
    a("--small-std-threshold", type=float, default=0.05)
    a("--eval-inputs", type=int, default=64, help="evaluate on the first N pool inputs (0 = all)")
    a("--eval-samples", type=int, default=4)
    a("--eval-gen-kwargs", default="", help="evaluation sampling kwargs (default: the rollout's)")
    a("--eval-batch-inputs", type=int, default=16)
    a("--no-eval-before", action="store_true", help="skip the evaluation of the initial model")
    a("--save-model", action="store_true")
    a("--seed", type=int, default=0)
    a("--precision", default="fp32", help="auto | fp32 | bf16")
    a("--device", default="auto")
    a("--threads", type=thread_count, default=0)
    a("--out-dir", required=True)
    a("--checkpoint-dir", default=None,
      help="PPO: resumable state here (outside --out-dir); a rerun continues from the last one")
    a("--save-iterations", type=int, default=0, help="with --checkpoint-dir: every N iterations (0 = ~4 per run)")
    return p


@main_guard
def main(argv=None):
    return run(build_parser().parse_args(argv))


if __name__ == "__main__":
    main()
