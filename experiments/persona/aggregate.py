"""Collect persona runs into two tidy CSVs: one row per run, and one row per run × step.

Run folders follow the path grammar ``.../persona/<model>/[scan/]<init>~<loss>/<y+>-<y->/seed~<n>``
(``scan/``: a pair the theory-guided scan chose, column ``group`` = scan; else ``config``). Token
names in folders write a leading space as "_" (``experiments.persona.tokens.token_slug``).

    python -m experiments.persona.aggregate --runs RUN_DIR... --out-runs runs.csv --out-steps steps.csv
"""

from __future__ import annotations

import argparse
import json
import re
from pathlib import Path

import pandas as pd

from experiments.common.cli import UserError, main_guard
from experiments.common.io import read_json, read_jsonl, write_csv

RUN_RE = re.compile(r"persona/(?P<model>[^/]+)/(?:(?P<group>scan)/)?(?P<init>sft|base)~(?P<loss>dpo|ipo)/"
                    r"(?P<chosen>[^/]+?)-(?P<rejected>[^/]+)/seed~(?P<seed>\d+)/?$")
# metric -> column ("loss" is taken by the loss type, dpo/ipo)
STEP_COLUMNS = {"step": "step", "loss": "train_loss", "p_chosen": "p_chosen", "p_rejected": "p_rejected",
                "logp_chosen": "logp_chosen", "logp_rejected": "logp_rejected"}


def parse_run_dir(path: str) -> dict:
    m = RUN_RE.search(Path(path).as_posix())
    if not m:
        raise UserError(f"{path}: not a persona run folder (<model>/<init>~<loss>/<y+>-<y->/seed~<n>)")
    keys = m.groupdict()
    keys["seed"] = int(keys["seed"])
    keys["group"] = keys["group"] or "config"
    return keys


def collect(run_dirs: list[str]) -> tuple[pd.DataFrame, pd.DataFrame]:
    runs, steps = [], []
    for d in run_dirs:
        keys = parse_run_dir(d)
        s = read_json(Path(d) / "summary.json")
        theory = s.get("theory_first_step") or {}
        pred, sft = theory.get("step0") or {}, s.get("sft") or {}
        gainers = pred.get("gainers") or [{}]
        runs.append(keys | {
            "prompt_id": s["prompt_id"], "p_start": s["p_start"], "p_min": s["p_min"],
            "step_min": s["step_min"], "p_end": s["p_end"], "largest_decrease": s["largest_decrease"],
            "decreased": s["decreased"], "first_decrease_step": s["first_decrease_step"],
            "p_peak": s["p_peak"], "step_peak": s["step_peak"], "p_trough": s["p_trough"],
            "step_trough": s["step_trough"], "drawdown": s["drawdown"], "displaced": s["displaced"],
            "p_rejected_start": s["p_rejected_start"], "p_rejected_end": s["p_rejected_end"],
            "train_loss_start": s["loss_start"], "train_loss_end": s["loss_end"],
            "theory_pearson": theory.get("pearson"), "theory_spearman": theory.get("spearman"),
            "theory_cos_dh_w_diff": theory.get("cos_dh_w_diff"),
            "definition1": s.get("definition1"), "prompt_seen_in_sft": s.get("prompt_seen_in_sft"),
            "prompt_pool": s.get("prompt_pool", "all"), "sft_recipe": sft.get("recipe"),
            "sft_steps": sft.get("steps"), "sft_reached": sft.get("reached"),
            "sft_heldout_p_chosen": sft.get("heldout_p_target"),
            "dlogp_chosen_first_step": s.get("dlogp_chosen_first_step"),
            "pred_rate": pred.get("rate"), "pred_rate_w": pred.get("rate_w"), "pred_bracket": pred.get("bracket"),
            "pred_logit_check": pred.get("logit_check"), "pred_top_gainer": gainers[0].get("token"),
            "pred_top_gainer_meaning": gainers[0].get("meaning"),
            "top_risers": json.dumps([{k: r[k] for k in ("token", "dp", "meaning")}
                                      for r in s["top_risers"]], ensure_ascii=False),
        })
        for row in read_jsonl(Path(d) / "metrics.jsonl"):
            steps.append(keys | {col: row[k] for k, col in STEP_COLUMNS.items()})
    order = ["group", "model", "init", "loss", "chosen", "rejected", "seed"]
    return (pd.DataFrame(runs).sort_values(order, kind="stable"),
            pd.DataFrame(steps).sort_values(order + ["step"], kind="stable"))


@main_guard
def main(argv=None):
    p = argparse.ArgumentParser(description="Aggregate persona runs into tidy CSVs")
    p.add_argument("--runs", nargs="+", required=True, help="run folders (or their summary.json)")
    p.add_argument("--out-runs", required=True)
    p.add_argument("--out-steps", required=True)
    args = p.parse_args(argv)
    runs, steps = collect([str(Path(r).parent) if Path(r).name == "summary.json" else r for r in args.runs])
    write_csv(runs, args.out_runs)
    write_csv(steps, args.out_steps)


if __name__ == "__main__":
    main()
