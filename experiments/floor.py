"""The arithmetic floor of each training or sampling rule: what its work costs at this CPU's matmul speed.

    python -m experiments.floor                               # tiny scale, printed
    python -m experiments.floor --runtime figures/tiny/table_runtime.csv --out figures/tiny/table_floor.md

For every rule that runs the language model, the rule's matmul work at the scale's configured sizes:
tokens through a forward pass, through forward + backward (3 forwards), and decoded one at a time, times
2 FLOP per weight per token (non-embedding weights; the LM head where logits are taken). At full
configured lengths (prompts and responses at their token caps, every sampled response at its
``max_new_tokens``), so an upper bound on the work and the floor is the time that work would take if
every matmul ran at the probe's rate (``cpu_precision_probe`` at the rule's row count, all cores). The
``measured`` column (from a ``table_runtime.csv``, job-seconds x threads) over the floor says how far the
rule is from the hardware. Attention's own FLOP (< 5 % at these lengths), the optimiser, sampling and
Python are left out: they are what the ratio measures. Job counts are the config's, as the DAG plans them.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from experiments.common.cli import UserError, main_guard, thread_count
from experiments.common.io import write_text

# SmolLM2-135M (the tiny scale's model): 30 blocks of d 576, MLP 1536, 9 query / 3 KV heads of 64;
# a tied 49,152-token embedding.
BODY = 30 * (576 * (576 + 192 + 192 + 576) + 3 * 576 * 1536)   # 106.2M weights in the blocks
HEAD = 576 * 49152                                             # 28.3M in the LM head
FULL = BODY + HEAD


def _row(rule, jobs, runs, *, fwd=0, train=0, decode=0, weights=FULL, train_weights=None, rows=2048,
         decode_rows=16, precision="auto", note=""):
    """FLOP of a rule: 2 per weight per forward token, 6 per trained token (forward + backward); ``rows``
    is the row count of its forward and training matmuls, ``decode_rows`` the sequences decoded together."""
    tw = weights if train_weights is None else train_weights
    dense = 2 * weights * fwd + 6 * tw * train
    return {"rule": rule, "jobs": jobs, "runs": runs, "fwd_tokens": fwd, "train_tokens": train,
            "decode_tokens": decode, "dense_tflop": dense / 1e12, "decode_tflop": 2 * weights * decode / 1e12,
            "tflop": (dense + 2 * weights * decode) / 1e12, "rows": rows, "decode_rows": decode_rows,
            "precision": precision, "note": note}


def work(cfg: dict) -> list[dict]:
    """Tokens and FLOP per rule at the config's sizes (pure: reads the config only)."""
    out = []
    p = cfg.get("persona")
    if p:
        pairs = sum(len(m["pairs"]) for m in p["models"].values())
        seeds, steps = len(p["seeds"]), [s["steps"] for s in p["settings"]]
        prompt = 64                                     # a chat-templated persona question, ~50-60 tokens
        per = sum(steps) * prompt
        runs = pairs * len(steps) * seeds
        out.append(_row("persona_dpo", runs, runs, train=pairs * seeds * per, fwd=runs * prompt, weights=BODY,
                        rows=64, precision=p.get("precision", "fp32"),
                        note="per step: one forward + backward of the prompt (y+ and y- are one position's logits)"))
        sft = p["sft"]
        if sft.get("recipe") == "pair":
            out.append(_row("persona_sft_pair", pairs, pairs,
                            train=pairs * sft["max_steps"] * sft["batch_size"] * prompt,
                            fwd=pairs * sft["max_steps"] * sft["heldout_prompts"] * prompt,  # the stop rule's check
                            rows=sft["batch_size"] * 32, precision=sft.get("precision", "auto"),
                            note=f"at the cap of {sft['max_steps']} steps (the 0.65 stop comes earlier)"))
        scan = p.get("scan", {})
        if scan.get("enabled"):
            n = 2 * scan["k"] * len(scan["seeds"])
            s0 = p["settings"][0]["steps"]
            out.append(_row("persona_scan_dpo", n, n, train=n * s0 * prompt, fwd=n * prompt, weights=BODY,
                            rows=64, precision=p.get("precision", "fp32"), note=f"{2 * scan['k']} pairs x seeds"))
    r = cfg.get("rft")
    if r:
        st = r["stats"]
        seqs = st["n_inputs"] * st["samples"]
        tasks = r["tasks"].values()
        out.append(_row("reward_stats", len(r["tasks"]), len(r["tasks"]),
                        fwd=sum(seqs * t["max_prompt_tokens"] for t in tasks),
                        decode=sum(seqs * t["gen_kwargs"]["max_new_tokens"] for t in tasks),
                        rows=st["batch_inputs"] * st["samples"] * 64, decode_rows=st["batch_inputs"] * st["samples"],
                        precision=st.get("precision", "auto"),
                        note=f"{st['n_inputs']} inputs x {st['samples']} samples per task"))
        ft = r["finetune"]
        task = r["tasks"][ft["tasks"][0]]
        ppo, sft = task["ppo"], task["sft"]
        seeds = len(ft["seeds"])
        h = ft.get("heuristics", {})
        arms = 2 + sum(len(v) for v in h.values()) + len(ft.get("cheap_sft", {}).get("cells", []))
        runs = arms * seeds
        ep = ppo["iterations"] * ppo["inputs_per_iter"] * ppo["samples_per_input"]
        seq = task["max_prompt_tokens"] + task["gen_kwargs"]["max_new_tokens"]
        top = ft.get("train_top_layers") or 30
        top_w = BODY * top / 30 + HEAD
        ev = 2 * ft["eval"]["inputs"] * ft["eval"]["samples"]          # before and after
        out.append(_row("rft_train", runs, runs,
                        decode=runs * (ep + ev) * task["gen_kwargs"]["max_new_tokens"],
                        fwd=runs * (ep + ev) * task["max_prompt_tokens"] + runs * 2 * ep * seq * top_w / FULL
                        + runs * ep * seq * (BODY - top_w + HEAD) / FULL,   # the frozen blocks, once per rollout
                        train=runs * ppo["n_epochs"] * ep * seq, train_weights=top_w,
                        rows=ppo["minibatch"] * seq, decode_rows=ppo["inputs_per_iter"] * ppo["samples_per_input"],
                        precision=ft.get("precision", "auto"),
                        note=f"{arms} arms x {seeds} seeds; old/ref passes and the update on the top {top} blocks"))
        pool = sft["max_pool"]
        steps_full = -(-pool // sft["batch_size"]) * sft["epochs"]
        cells = ft.get("cheap_sft", {}).get("cells", [])
        step_fracs = [1.0] + [c[1] for c in cells]
        out.append(_row("rft_sft", len(step_fracs) * seeds, len(step_fracs) * seeds,
                        train=seeds * sum(round(f * steps_full) for f in step_fracs) * sft["batch_size"]
                        * (task["max_prompt_tokens"] + sft["max_target_tokens"]),
                        rows=sft["batch_size"] * (task["max_prompt_tokens"] + sft["max_target_tokens"]),
                        precision=ft.get("precision", "auto"), note="full SFT and each cheap cell, every block"))
    c = cfg.get("ches")
    if c:
        seq = (c["max_prompt_tokens"] + c["max_response_tokens"])
        n_pairs = 500                                   # the mirror's UltraFeedback train_prefs pairs at tiny
        runs = len(c["measures"]) * len(c["quantiles"]) * len(c["seeds"]) * len(c["dpo"]["losses"])
        jobs = runs // len(c["seeds"])
        sub = c["dpo"]["subset_size"] * 2 * seq
        out.append(_row("ches_score", 1, 1, fwd=n_pairs * 2 * seq, weights=BODY, rows=c["score"]["batch_size"] * seq,
                        precision=c["score"].get("precision", "auto"), note="body only, both responses"))
        out.append(_row("ches_dpo", jobs, runs, train=runs * sub * c["dpo"]["epochs"], fwd=(runs + jobs) * sub,
                        rows=2 * c["dpo"]["batch_size"] * seq, precision=c["dpo"].get("precision", "auto"),
                        note="DPO steps + log-probs before (once per subset) and after (per seed)"))
    f = cfg.get("refusal")
    if f:
        dpo, ev, sm = f["dpo"], f["eval"], f["sampling"]
        n = f["prompts"]["n"]
        n_test = round(n * f["test_ratio"])
        n_train = n - n_test
        seq = dpo["max_prompt_tokens"] + dpo["max_response_tokens"]
        seeds = len(f["seeds"])
        s = f["sft"]
        sft_ex = 285 + s["n_benign"]                   # AdvBench's other 85 + HarmBench's 200, plus benign
        out.append(_row("refusal_sft", 1, 1,
                        train=s["epochs"] * sft_ex * (dpo["max_prompt_tokens"] + s["max_target_tokens"]),
                        rows=s["batch_size"] * 128, precision=f.get("precision", "auto")))
        out.append(_row("refusal_pairs", 1, 1, fwd=2 * n * dpo["max_prompt_tokens"],
                        decode=2 * n * sm["max_new_tokens"],
                        rows=2 * sm["batch_inputs"] * dpo["max_prompt_tokens"], decode_rows=2 * sm["batch_inputs"],
                        precision=f.get("precision", "auto")))
        out.append(_row("refusal_gold", 1, 1, fwd=f["gold"]["k"] * n_train * dpo["max_prompt_tokens"],
                        decode=f["gold"]["k"] * n_train * sm["max_new_tokens"],
                        rows=f["gold"]["k"] * sm["batch_inputs"] * dpo["max_prompt_tokens"],
                        decode_rows=f["gold"]["k"] * sm["batch_inputs"], precision=f.get("precision", "auto")))
        if dpo.get("lr_rule"):   # candidates from the largest down, stopping at the first whose loss fell
            out.append(_row("refusal_lr", 2, 2, train=2 * n_train * 2 * seq, fwd=2 * 2 * n_train * 2 * seq,
                            rows=2 * dpo["batch_size"] * seq, precision=f.get("precision", "auto"),
                            note=f"on-policy and gold pairs: one epoch at the largest of {len(dpo['lr_rule'])} "
                                 "candidates (more only if its loss did not fall), log-probs before and after"))
        arms = f["arms"]
        eval_prompts = (ev.get("train_prompts") or n_train) + n_test
        pairs_per_arm = {a: (dpo["keep_fraction"] if a == "ches_filtered" else
                             int(a.rsplit("_p", 1)[1]) / 100 if a.startswith("ches_filtered_p") else 1.0) * n_train
                         for a in arms}
        sft_arms = len(next(iter(f["models"].values())).get("sft_coef", [])) if "dpo_sft" in arms else 0
        trained = sum(v for a, v in pairs_per_arm.items() if a != "dpo_sft") + sft_arms * n_train
        jobs = len(arms) - ("dpo_sft" in arms) + sft_arms
        out.append(_row("refusal_arm", jobs, jobs * seeds, train=seeds * trained * 2 * seq,
                        fwd=(seeds + 1) * trained * 2 * seq + jobs * seeds * eval_prompts * dpo["max_prompt_tokens"],
                        decode=jobs * seeds * eval_prompts * ev["max_new_tokens"], rows=2 * dpo["batch_size"] * seq,
                        decode_rows=ev["batch_inputs"],
                        precision=f.get("precision", "auto"),
                        note=f"DPO on the arm's pairs, then {eval_prompts} prompts sampled "
                             f"(≤ {ev['max_new_tokens']} tokens)"))
        out.append(_row("refusal_initial", 1, seeds, fwd=seeds * eval_prompts * dpo["max_prompt_tokens"],
                        decode=seeds * eval_prompts * ev["max_new_tokens"], rows=2 * dpo["batch_size"] * seq,
                        decode_rows=ev["batch_inputs"],
                        precision=f.get("precision", "auto")))
    return out


# rules of this table that choose their precision as another rule of experiments.precision does
SAME_CHOICE_AS = {"persona_sft_pair": "persona_sft", "persona_scan_dpo": "persona_dpo",
                  "refusal_initial": "refusal_arm"}


def floors(rows: list[dict], threads: int, choose_at: dict[str, int]) -> list[dict]:
    """Each rule's floor in seconds at the probe's rate for its precision and row counts (measured here).
    ``choose_at``: the row count each rule's CLI resolves ``precision`` at (``experiments.precision``)."""
    import torch

    from experiments.common.torchutil import cpu_precision_probe, resolve_precision

    torch.set_num_threads(threads)
    out = []
    for r in rows:
        at = choose_at.get(SAME_CHOICE_AS.get(r["rule"], r["rule"]), r["rows"])
        prec = resolve_precision(r["precision"], torch.device("cpu"), at)
        dense = cpu_precision_probe(r["rows"])[f"{prec}_gflops"]
        dec = cpu_precision_probe(r["decode_rows"])[f"{prec}_gflops"]
        floor = (r["dense_tflop"] / dense + r["decode_tflop"] / dec) * 1e3
        out.append(r | {"runs_as": prec, "gflops": f"{dense:.0f}" + (f" / {dec:.0f}" if r["decode_tokens"] else ""),
                        "floor_s": floor})
    return out


def measured_job_seconds(path: Path) -> dict:
    """``rule -> wall s (sum)`` from a ``table_runtime.csv`` (its per-rule rows)."""
    import pandas as pd

    df = pd.read_csv(path)
    df = df[~df["rule"].astype(str).str.startswith("(")]
    return dict(zip(df["rule"], df["wall s (sum)"], strict=True))


def render(rows: list[dict], measured: dict, threads: int, source: str) -> str:
    lines = [f"Arithmetic floor per rule at {threads} threads (matmul work at the configured sizes ÷ the probe's "
             "rate at the rule's row count; `python -m experiments.floor`)."
             + (f" Measured: {source} (job-seconds; 1-thread jobs ran two at a time)." if measured else ""), "",
             "| rule | jobs | runs | tokens fwd | tokens fwd+bwd | tokens decoded | TFLOP | runs as "
             "| GFLOP/s (dense / decode) | floor s | measured s | measured ÷ floor | note |",
             "|---|---:|---:|---:|---:|---:|---:|---|---:|---:|---:|---:|---|"]
    tot_f = tot_m = 0.0
    for r in rows:
        m = measured.get(r["rule"])
        ms = "" if m is None else f"{m:.0f}"
        ratio = "" if m is None else f"{m / r['floor_s']:.1f}×"
        tot_f += r["floor_s"]
        tot_m += m or 0.0
        lines.append(f"| {r['rule']} | {r['jobs']} | {r['runs']} | {r['fwd_tokens']:,.0f} | {r['train_tokens']:,.0f} | "
                     f"{r['decode_tokens']:,.0f} | {r['tflop']:.1f} | {r['runs_as']} | {r['gflops']} | "
                     f"{r['floor_s']:.0f} | {ms} | {ratio} | {r['note']} |")
    lines.append(f"| **all** | | | | | | {sum(r['tflop'] for r in rows):.1f} | | | **{tot_f:.0f}** | "
                 f"{f'{tot_m:.0f}' if measured else ''} | | wall on {threads} cores ≥ floor (all cores busy) |")
    return "\n".join(lines) + "\n"


@main_guard
def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--scale", default="tiny", help="which workflow/config/<scale>.yaml to read (default tiny)")
    ap.add_argument("--threads", type=thread_count, default=2, help="cores the floor may use (default 2)")
    ap.add_argument("--runtime", default="", help="a table_runtime.csv to set the measured job-seconds beside")
    ap.add_argument("--out", default="", help="also write the table to this Markdown file")
    args = ap.parse_args(argv)
    from experiments.bench import load_config
    from experiments.precision import rule_rows

    if args.runtime and not Path(args.runtime).is_file():
        raise UserError(f"{args.runtime}: no such runtime table (snakemake runtime_table writes one)")
    cfg = load_config(args.scale)
    rows = floors(work(cfg), args.threads, {r["rule"]: r["tokens"] for r in rule_rows(cfg)})
    text = render(rows, measured_job_seconds(Path(args.runtime)) if args.runtime else {}, args.threads,
                  args.runtime)
    print(text, end="")
    if args.out:
        write_text(args.out, text)


if __name__ == "__main__":
    main()
