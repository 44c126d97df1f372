"""What ``precision: auto`` chooses for each rule on this CPU, and the probe speeds behind each choice.

    python -m experiments.precision                  # tiny scale: prints the table
    python -m experiments.precision --scale smoke --out figures/smoke/table_precision.md

Each rule multiplies a different number of rows at once (its ``tokens``): batch x sequence when it
trains or scores, the number of sequences decoded together when it samples. The probe
(``experiments.common.torchutil.cpu_precision_probe``) times fp32 and bf16 autocast at that row count, and
``auto`` takes bf16 only where it is at least ``BF16_MIN_SPEEDUP`` times fp32. The row counts below are
those the rules' CLIs pass to ``resolve_precision`` (same formulas, from the same config keys).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import yaml

from experiments.common.cli import UserError, main_guard, thread_count
from experiments.common.io import write_text


def rule_rows(cfg: dict) -> list[dict]:
    """One entry per rule that reads a ``precision`` key: the rule, the config key, the configured value and
    the row count its CLI probes at. Pure: reads the config only."""
    rows = []
    persona = cfg.get("persona", {})
    if persona:
        sft = persona.get("sft", {})
        micro = sft.get("micro_batch_size") or sft.get("batch_size", 1)
        rows.append(("persona_sft", "persona.sft.precision", sft.get("precision", "fp32"), micro * 32))
        rows.append(("persona_dpo", "persona.precision", persona.get("precision", "fp32"), 64))
    rft = cfg.get("rft", {})
    if rft:
        st = rft["stats"]
        rows.append(("reward_stats", "rft.stats.precision", st.get("precision", "fp32"),
                     st["batch_inputs"] * st["samples"]))
        ft = rft["finetune"]
        task = rft["tasks"][ft["tasks"][0]]
        ppo, sft = task.get("ppo", {}), task.get("sft", {})
        rows.append(("rft_train", "rft.finetune.precision", ft.get("precision", "fp32"),
                     ppo.get("inputs_per_iter", 1) * ppo.get("samples_per_input", 1)))
        rows.append(("rft_sft", "rft.finetune.precision", ft.get("precision", "fp32"),
                     sft.get("batch_size", 1) * (task.get("max_prompt_tokens", 0) + sft.get("max_target_tokens", 0))))
    ches = cfg.get("ches", {})
    if ches:
        seq = (ches.get("max_prompt_tokens", 0) + ches.get("max_response_tokens", 0)) or 256
        rows.append(("ches_score", "ches.score.precision", ches["score"].get("precision", "fp32"),
                     ches["score"]["batch_size"] * seq))
        rows.append(("ches_dpo", "ches.dpo.precision", ches["dpo"].get("precision", "fp32"),
                     2 * ches["dpo"]["batch_size"] * seq))
    ref = cfg.get("refusal", {})
    if ref:
        prec = ref.get("precision", "fp32")
        dpo = ref["dpo"]
        seq = (dpo.get("max_prompt_tokens", 0) + dpo.get("max_response_tokens", 0)) or 256
        rows.append(("refusal_pairs", "refusal.precision", prec, 2 * ref["sampling"]["batch_inputs"]))
        rows.append(("refusal_gold", "refusal.precision", prec, ref["gold"]["k"] * ref["sampling"]["batch_inputs"]))
        rows.append(("refusal_lr", "refusal.precision", prec, 2 * dpo["batch_size"] * seq))
        rows.append(("refusal_arm", "refusal.precision", prec, 2 * dpo["batch_size"] * seq))   # and refusal_initial
    return [{"rule": r, "key": k, "configured": str(p), "tokens": t} for r, k, p, t in rows]


def choices(cfg: dict) -> list[dict]:
    """``rule_rows`` with the probe's numbers at each row count and what runs here (measures on a cache miss)."""
    import torch

    from experiments.common.torchutil import cpu_precision_probe, probe_bucket, resolve_precision

    out = []
    for row in rule_rows(cfg):
        probe = cpu_precision_probe(row["tokens"])
        out.append(row | {"bucket": probe_bucket(row["tokens"]), "fp32_gflops": probe["fp32_gflops"],
                          "bf16_gflops": probe["bf16_gflops"], "speedup": probe["speedup"],
                          "runs": resolve_precision(row["configured"], torch.device("cpu"), row["tokens"])})
    return out


def render(rows: list[dict], probe: dict) -> str:
    lines = [f"Precision per rule on {probe['cpu']} (torch capability {probe['capability']}, AMX "
             f"{'yes' if probe.get('amx') else 'no'}, {probe['threads']} threads, torch {probe['torch']}). "
             "Probe: a 576x1536 matmul at the rule's row count, best of 7 interleaved fp32/bf16 trials; "
             "`auto` takes bf16 at >= "
             f"{probe.get('min_speedup', 1.2)}x fp32.", "",
             "| rule | config key | configured | rows | fp32 GFLOP/s | bf16 GFLOP/s | bf16/fp32 | runs |",
             "|---|---|---|---:|---:|---:|---:|---|"]
    for r in rows:
        lines.append(f"| {r['rule']} | `{r['key']}` | {r['configured']} | {r['tokens']} (~{r['bucket']}) | "
                     f"{r['fp32_gflops']:.0f} | {r['bf16_gflops']:.0f} | {r['speedup']:.2f} | {r['runs']} |")
    return "\n".join(lines) + "\n"


@main_guard
def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--scale", default="tiny", help="which workflow/config/<scale>.yaml to read (default tiny)")
    p.add_argument("--config", default="", help="a config YAML instead of the scale's")
    p.add_argument("--threads", type=thread_count, default=2, help="torch threads, as a rule's job (default 2)")
    p.add_argument("--out", default="", help="also write the table to this Markdown file")
    args = p.parse_args(argv)
    import torch

    from experiments.common.torchutil import BF16_MIN_SPEEDUP, cpu_precision_probe

    torch.set_num_threads(args.threads)
    from experiments.bench import load_config

    if args.config and not Path(args.config).is_file():
        raise UserError(f"{args.config}: no such config file")
    cfg = yaml.safe_load(Path(args.config).read_text(encoding="utf-8")) if args.config else load_config(args.scale)
    rows = choices(cfg)
    text = render(rows, cpu_precision_probe() | {"min_speedup": BF16_MIN_SPEEDUP})
    print(text, end="")
    if args.out:
        write_text(args.out, text)


if __name__ == "__main__":
    main()
