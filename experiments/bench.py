"""Performance benchmark of the suite's hot paths: one table, printed and written to Markdown.

    python -m experiments.bench                      # tiny scale, this checkout's resources/
    python -m experiments.bench --scale smoke --quick --root DIR --out table.md

Needs the prepared models and data of the scale (``snakemake --cores all --until prepare_model
prepare_persona prepare_preferences prepare_grue_task`` or any full run). Every row is measured in this
one process, on this machine, with the settings of ``workflow/config/<scale>.yaml``:

* **matmul** — fp32 and bf16 FLOP/s of a 2048² @ 2048² product (2·2048³ FLOP), the machine's ceiling;
* **CHES scorer** — the official procedure's shape (one record per forward, fp32, LM head, hidden states
  of every layer) against our batched body-only scorer at the config's precision: pairs/s, achieved
  FLOP/s = 2 × non-embedding params × tokens ÷ time and its share of the matmul FLOP/s of that
  precision, and the Spearman correlation of its scores with the fp32 scorer's;
* **reward-statistics sampling** — generated tokens/s of one batched ``generate`` (the config's
  ``batch_inputs`` prompts × ``samples``, KV cache) against a per-sample loop (one prompt, one sample per
  call), same model, precision and sampling kwargs (the first ``rft.tasks`` entry);
* **persona DPO step** — wall time per step of the persona run (``train_single_prompt``: reference pass
  once, forward with ``logits_to_keep=1``, loss, backward, RMSprop, logging, the final evaluation pass
  amortised) against one bare forward + backward on the same prompt;
* **PPO iteration** — one PPO iteration of the first ``rft.finetune.tasks`` task split into sampling,
  reward scoring, the old/reference log-prob and value passes, and the update.

Timings move with machine load: run it on an idle machine. Targets are those of the performance issue;
the ``met`` column compares each ratio with its target.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch
import yaml

from experiments.common.cli import UserError, main_guard, thread_count
from experiments.common.io import cpu_model as cpu_name

REPO = Path(__file__).resolve().parents[1]


def load_config(scale: str) -> dict:
    path = REPO / "workflow" / "config" / f"{scale}.yaml"
    if not path.is_file():
        raise UserError(f"unknown scale {scale!r}: no {path.relative_to(REPO)}")
    with open(path, encoding="utf-8") as f:
        return yaml.safe_load(f)


def need(path: Path, what: str) -> Path:
    if not path.exists():
        raise UserError(f"{path}: {what} missing; build it first, e.g. snakemake --cores all --config scale=… "
                        f"--until prepare_model prepare_persona prepare_preferences prepare_grue_task")
    return path


# ----------------------------------------------------------------------------------------- CHES
def bench_ches(root: Path, cfg: dict, quick: bool) -> list[dict]:
    from experiments.ches.bench import load_bench_records, measure, spearman

    c = cfg["ches"]
    model_dir = need(root / "resources" / "models" / c["models"][0], "prepared model")
    data = need(root / "resources" / "data" / "preferences" / f"{next(iter(c['datasets']))}.jsonl", "preference data")
    prec = c["score"]["precision"]
    variant = "bf16-weights" if prec == "bf16" else "fp32"  # what `python -m experiments.ches score` runs
    recs = load_bench_records(data, 12 if quick else 48)
    m = measure(model_dir, recs, batch_size=c["score"]["batch_size"], max_prompt_tokens=c["max_prompt_tokens"],
                max_response_tokens=c["max_response_tokens"], prompt_format=c["prompt_format"],
                variants=("fp32",) if variant == "fp32" else ("fp32", variant))
    n, tokens, params = m["pairs"], m["tokens"], m["n_params"]
    off = n / m["official_s"]
    ours = m["variants"][variant]
    pps = n / ours["seconds"]
    flops = 2 * params * tokens / ours["seconds"]
    peak = m["peak"][ours["precision"]]
    rho = min(spearman(m["variants"]["fp32"]["rows"], ours["rows"], k) for k in ("ches", "ches_ln"))
    what = f"{n} pairs, {c['max_prompt_tokens']}/{c['max_response_tokens']} tokens, batch {c['score']['batch_size']}"
    return [
        {"group": "machine", "item": "matmul fp32 (2048³)", "value": f"{m['peak']['fp32'] / 1e9:.1f} GFLOP/s"},
        {"group": "machine", "item": "matmul bf16 (2048³)", "value": f"{m['peak']['bf16'] / 1e9:.1f} GFLOP/s",
         "ratio": m["peak"]["bf16"] / m["peak"]["fp32"], "ratio_of": "× fp32"},
        {"group": "CHES scorer", "item": f"official shape (fp32, one record per forward; {what})",
         "value": f"{off:.2f} pairs/s"},
        {"group": "CHES scorer", "item": f"ours ({variant}, batched, body only)", "value": f"{pps:.2f} pairs/s",
         "ratio": pps / off, "ratio_of": "× official", "target": 5.0},
        {"group": "CHES scorer", "item": f"ours: achieved FLOP/s (2 × {params / 1e6:.1f}M params × {tokens} tokens)",
         "value": f"{flops / 1e9:.1f} GFLOP/s", "ratio": flops / peak, "ratio_of": f"of {ours['precision']} matmul",
         "target": 0.40, "percent": True},
        {"group": "CHES scorer", "item": "ours: Spearman with the fp32 scorer (min of ches, ches_ln)",
         "value": f"{rho:.5f}", "ratio": rho, "ratio_of": "", "target": 0.999, "plain": True},
    ]


# ------------------------------------------------------------------------------------- sampling
def bench_sampling(root: Path, cfg: dict, quick: bool) -> list[dict]:
    from experiments.common.io import read_jsonl
    from experiments.common.torchutil import autocast, resolve_precision
    from experiments.models.load import load_generator, load_tokenizer
    from experiments.rft.stats import (
        _gen_kwargs,
        encode_batch,
        render_prompt,
        sample_batch,
        select_inputs,
    )

    name, task = next(iter(cfg["rft"]["tasks"].items()))
    stats = cfg["rft"]["stats"]
    device = torch.device("cpu")
    prec = resolve_precision(stats.get("precision", "fp32"), device, tokens=stats["batch_inputs"] * stats["samples"])
    model_dir = need(root / "resources" / "models" / task["model"], "prepared model")
    data = need(root / "resources" / "data" / "grue" / f"{task['loader']}.jsonl", "task data")
    tok = load_tokenizer(model_dir)
    if tok.pad_token_id is None:
        tok.pad_token = tok.eos_token
    model = load_generator(model_dir, device)
    model.eval()
    gen_kwargs = _gen_kwargs(json.dumps(task["gen_kwargs"]))
    b, k = (4, 4) if quick else (stats["batch_inputs"], stats["samples"])
    records = select_inputs([r for r in read_jsonl(data) if r["split"] == "train"], b, stats["seed"])
    texts = [render_prompt(tok, r["prompt"], task["prompt_format"]) for r in records]
    enc_dec = bool(model.config.is_encoder_decoder)
    special = task["prompt_format"] == "plain"

    def batched(batch_texts, samples):
        batch, _ = encode_batch(tok, batch_texts, task["max_prompt_tokens"], enc_dec, special_tokens=special)
        with autocast(prec, device):
            return sample_batch(model, tok, batch, samples, gen_kwargs, seed=0)[1]

    batched(texts[:1], 1)  # warm-up
    t = time.perf_counter()
    n_batched = batched(texts, k)
    tps_batched = n_batched / (time.perf_counter() - t)
    n_loop, t = 0, time.perf_counter()
    loop_inputs = 1 if quick else 2
    for text in texts[:loop_inputs]:
        for _ in range(k):
            n_loop += batched([text], 1)
    tps_loop = n_loop / (time.perf_counter() - t)
    where = f"{name}, {prec}, {json.dumps(task['gen_kwargs'])}"
    return [
        {"group": "reward-statistics sampling", "item": f"per-sample loop ({loop_inputs} inputs × {k}; {where})",
         "value": f"{tps_loop:.0f} tokens/s"},
        {"group": "reward-statistics sampling", "item": f"batched generate ({b} inputs × {k} samples, KV cache)",
         "value": f"{tps_batched:.0f} tokens/s", "ratio": tps_batched / tps_loop, "ratio_of": "× loop", "target": 3.0},
    ]


# ----------------------------------------------------------------------------------- persona DPO
def bench_persona_dpo(root: Path, cfg: dict, quick: bool) -> list[dict]:
    from experiments.common.io import read_jsonl
    from experiments.common.torchutil import resolve_precision
    from experiments.models.load import load_causal_lm, load_tokenizer
    from experiments.persona.dpo import train_single_prompt
    from experiments.persona.prompts import encode_prompt, select_prompt
    from experiments.persona.sft import make_optimizer
    from experiments.persona.tokens import single_token_id

    p = cfg["persona"]
    model_name, pairs = next(iter(p["models"].items()))
    setting = p["settings"][0]
    device = torch.device("cpu")
    prec = resolve_precision(p.get("precision", "fp32"), device, tokens=64)   # as experiments.persona.dpo
    model_dir = need(root / "resources" / "models" / model_name, "prepared model")
    data = need(root / "resources" / "data" / "persona.jsonl", "persona data")
    tok = load_tokenizer(model_dir)
    model = load_causal_lm(model_dir, device=device)
    model.eval()
    pair = pairs["pairs"][0]
    chosen, rejected = single_token_id(tok, pair["chosen"]), single_token_id(tok, pair["rejected"])
    rec = select_prompt(read_jsonl(data), pair["prompts_with_amb"], p["seeds"][0])
    ids = torch.tensor([encode_prompt(tok, rec["question"], p["prompt_format"])])
    steps = 3 if quick else setting["steps"]

    def bare():
        model.zero_grad(set_to_none=True)
        model(input_ids=ids, logits_to_keep=1).logits[0, -1, chosen].backward()

    bare()  # warm-up
    t = time.perf_counter()
    for _ in range(steps):
        bare()
    t_bare = (time.perf_counter() - t) / steps
    model.zero_grad(set_to_none=True)
    opt = make_optimizer(setting["optimizer"], model.parameters(), setting["lr"])
    t = time.perf_counter()
    train_single_prompt(model, ids, chosen, rejected, loss_type=setting["loss"], beta=setting["beta"],
                        optimizer=opt, steps=steps, precision=prec, device=device, desc="bench persona DPO")
    t_step = (time.perf_counter() - t) / steps
    where = f"{model_name}, {ids.shape[1]}-token prompt, {prec}, {setting['optimizer']}"
    return [
        {"group": "persona DPO", "item": f"bare forward + backward ({where})", "value": f"{1000 * t_bare:.0f} ms"},
        {"group": "persona DPO", "item": f"one DPO step (run of {steps} steps ÷ {steps}, reference once)",
         "value": f"{1000 * t_step:.0f} ms", "ratio": t_step / t_bare, "ratio_of": "× bare", "target": 1.2,
         "at_most": True},
    ]


# ------------------------------------------------------------------------------------------- PPO
def bench_ppo(root: Path, cfg: dict, quick: bool) -> list[dict]:
    from experiments.common.io import read_jsonl
    from experiments.common.torchutil import resolve_precision
    from experiments.models.load import load_generator, load_tokenizer
    from experiments.rft.rewards import make_reward
    from experiments.rft.stats import _gen_kwargs, select_inputs
    from experiments.rft.train import build_parser, pool_draws, train_ppo

    ft = cfg["rft"]["finetune"]
    name = ft["tasks"][0]
    task = cfg["rft"]["tasks"][name]
    ppo = task["ppo"]
    device = torch.device("cpu")
    prec = resolve_precision(ft.get("precision", "fp32"), device,   # as experiments.rft.train
                             tokens=ppo["inputs_per_iter"] * ppo["samples_per_input"])
    model_dir = need(root / "resources" / "models" / task["model"], "prepared model")
    data = need(root / "resources" / "data" / "grue" / f"{task['loader']}.jsonl", "task data")
    if task["reward"] == "learned_sentiment":
        raise UserError("the PPO benchmark needs a task with a closed-form reward (e.g. commongen/meteor)")
    args = build_parser().parse_args(["--model", str(model_dir), "--data", str(data), "--reward", task["reward"],
                                      "--out-dir", "unused"])
    iterations = 1 if quick else 2
    for key, value in ppo.items():
        if key != "gen_kwargs":
            setattr(args, key, value)
    args.iterations, args.prompt_format = iterations, task["prompt_format"]
    args.max_prompt_tokens, args.train_top_layers = task["max_prompt_tokens"], ft["train_top_layers"]
    tok = load_tokenizer(model_dir)
    if tok.pad_token_id is None:
        tok.pad_token = tok.eos_token
    model = load_generator(model_dir, device)
    pool = select_inputs([r for r in read_jsonl(data) if r["split"] == "train"], ft["train_inputs"], 7)
    rows = train_ppo(model, tok, pool, make_reward(task["reward"]), args, _gen_kwargs(json.dumps(task["gen_kwargs"])),
                     prec, device, on_iter=lambda row: None,
                     draws=pool_draws(len(pool), args.inputs_per_iter, args.iterations, args.seed))
    last = rows[-1]["split_s"]  # the last iteration: no first-call warm-up inside it
    total = sum(last.values())
    labels = {"generate": "sampling (generate)", "score": f"reward scoring ({task['reward']})",
              "logp": "old/reference log-probs + values", "update": f"update ({ppo['n_epochs']} epochs)"}
    out = [{"group": "PPO iteration", "item": f"one iteration ({name}, {ppo['inputs_per_iter']} inputs × "
            f"{ppo['samples_per_input']} samples, top {ft['train_top_layers'] or 'all'} blocks, {prec})",
            "value": f"{total:.2f} s"}]
    for key, label in labels.items():
        out.append({"group": "PPO iteration", "item": f"  {label}", "value": f"{last[key]:.2f} s",
                    "ratio": last[key] / total, "ratio_of": "of the iteration", "percent": True})
    return out


# ----------------------------------------------------------------------------------------- table
def render(rows: list[dict], header: str) -> str:
    def ratio(r):
        if r.get("ratio") is None:
            return ""
        if r.get("percent"):
            return f"{100 * r['ratio']:.0f} % {r['ratio_of']}"
        if r.get("plain"):
            return ""
        return f"{r['ratio']:.2f}{r['ratio_of']}"

    def target(r):
        if r.get("target") is None:
            return "", ""
        t = r["target"]
        if r.get("percent"):
            text = f"≥ {100 * t:.0f} %"
        elif r.get("plain"):
            text = f"≥ {t}"
        else:
            text = f"{'≤' if r.get('at_most') else '≥'} {t:g}×"
        met = r["ratio"] <= t if r.get("at_most") else r["ratio"] >= t
        return text, "yes" if met else "**no**"

    lines = [header, "", "| part | measurement | value | ratio | target | met |", "|---|---|---|---|---|---|"]
    for r in rows:
        t, met = target(r)
        lines.append(f"| {r['group']} | {r['item']} | {r['value']} | {ratio(r)} | {t} | {met} |")
    return "\n".join(lines) + "\n"


PARTS = {"ches": bench_ches, "sampling": bench_sampling, "persona": bench_persona_dpo, "ppo": bench_ppo}


@main_guard
def main(argv=None) -> None:
    from experiments.common.io import atomic_path
    from experiments.common.torchutil import set_threads

    ap = argparse.ArgumentParser(prog="python -m experiments.bench", description=__doc__.splitlines()[0])
    ap.add_argument("--scale", default="tiny", help="settings and resources of this scale (default tiny)")
    ap.add_argument("--root", default=".", help="the run directory holding resources/ (default: here)")
    ap.add_argument("--only", nargs="+", choices=sorted(PARTS), help="run only these parts")
    ap.add_argument("--threads", type=thread_count, default=0, help="torch threads (0 = torch's default: every core)")
    ap.add_argument("--quick", action="store_true", help="fewer records and steps (tests); figures are noisier")
    ap.add_argument("--out", help="Markdown table (default figures/<scale>/table_bench.md under --root)")
    args = ap.parse_args(argv)
    set_threads(args.threads)
    torch.manual_seed(0)
    cfg = load_config(args.scale)
    root = Path(args.root)
    rows = []
    started = time.perf_counter()
    for part in args.only or PARTS:
        rows += PARTS[part](root, cfg, args.quick)
    header = (f"Benchmark ({args.scale} scale{', quick' if args.quick else ''}): {cpu_name()}, "
              f"{torch.get_num_threads()} torch threads, torch {torch.__version__}, "
              f"{time.strftime('%Y-%m-%d')}, {time.perf_counter() - started:.0f} s in all. "
              f"Produced by `python -m experiments.bench --scale {args.scale}`; numbers move with machine load.")
    text = render(rows, header)
    print("\n" + text)
    out = Path(args.out) if args.out else root / "figures" / args.scale / "table_bench.md"
    out.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(out) as tmp:
        Path(tmp).write_text(text, encoding="utf-8")
    print(f"written to {out}")


if __name__ == "__main__":
    main()
