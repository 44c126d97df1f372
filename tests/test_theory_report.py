"""P1 theory table and figures from small hand-made CSVs and run folders."""

import json

import numpy as np
import pandas as pd
import pytest

from experiments.theory import report


def _run(tmp_path, dataset, variant, method, seed, rewards):
    d = tmp_path / "controlled" / dataset / variant / method / f"seed~{seed}"
    d.mkdir(parents=True)
    (d / "config.json").write_text(json.dumps({"reward": "labels", "optimizer": "adam", "lr": 1e-3}))
    rows = []
    for epoch, (mod, unmod) in enumerate(rewards):
        for group, r in (("modified", mod), ("unmodified", unmod)):
            rows.append({"epoch": epoch * 10, "group": group, "n": 5, "reward": r, "accuracy": (r + 1) / 2,
                         "p_label": (r + 1) / 2, "reward_std": 0.1, "grad_norm": 1.0, "grad_norm_reward": 1.0})
    (d / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(d)


def _theorem1_frame(family, L):
    std = np.logspace(-12, -0.3, 12)
    gamma = np.full_like(std, 10.0)
    grad = 6 * L * gamma * std**2  # envelope slope 2
    bound = 6 * L * gamma * std ** (2 / 3)
    return pd.DataFrame({"family": family, "input": 0, "L": L, "reward": "random", "temperature": 1.0, "V": 0.0,
                         "std": std, "grad_norm": grad, "grad_norm_naive": np.maximum(grad, 1e-13),
                         "gamma": gamma, "gamma_rel_change": 0.0, "bound": bound, "ratio": grad / bound,
                         "within_bound": grad <= bound})


def test_collect_parses_paths_and_rejects_foreign_folders(tmp_path):
    runs = [_run(tmp_path, "digits", "adam", "sft", s, [(-1, 0), (1, 1)]) for s in (0, 1)]
    df = report.collect(runs)
    assert len(df) == 8 and set(df["method"]) == {"sft"} and sorted(df["seed"].unique()) == [0, 1]
    with pytest.raises(report.UserError, match="not a controlled run folder"):
        report.collect([str(tmp_path)])


def test_table_numbers_follow_the_inputs(tmp_path):
    runs = [_run(tmp_path, "digits", "adam", m, s, [(-1.0, 0.0), (r_end, 1.0)])
            for m, r_end in (("sft", 1.0), ("rft_exact", -0.96)) for s in (0, 1, 2)]
    ctl = report.collect(runs)
    sigma = np.array([1e-1, 1e-2, 1e-3])
    sep = pd.DataFrame({"method": ["rft"] * 3 + ["sft"] * 3, "sigma": list(sigma) * 2,
                        "eps": list(sigma**2) * 2, "steps": list((5 / sigma**2).astype(int)) + [4, 8, 12]})
    micro = _theorem1_frame("micro-ar", 2)
    micro.loc[0, "within_bound"] = False  # one violation must show in the share
    table = report.theory_table(micro, _theorem1_frame("single-token", 1), ctl, sep, "tiny")
    cell = dict(zip(table["quantity"] + "|" + table["setting"], table["ours"]))
    share = next(v for k, v in cell.items() if k.startswith("inputs with") and "micro" in k)
    assert share.startswith("11/12")
    slope = next(v for k, v in cell.items() if k.startswith("decay exponent") and "micro" in k)
    assert float(slope) == pytest.approx(2.0, abs=0.01)
    cs = next(v for k, v in cell.items() if k.startswith("inputs with ‖∇V‖ ≤ √2") and "micro" in k)
    assert cs.startswith("11/12")   # 6·STD² > √2·STD only for STD > √2/6: the last row (STD 0.5) breaks it
    tight = next(v for k, v in cell.items() if k.startswith("largest ‖∇V‖ / √2") and "micro" in k)
    assert tight.count(";") == 11 and tight.endswith("1e-1: 2.1")   # one per decade; 6·0.5²/(√2·0.5) = 2.12
    rft = next(v for k, v in cell.items() if k.startswith("RFT: slope"))
    assert float(rft.split()[0]) == pytest.approx(-2.0, abs=0.01)
    sft = next(v for k, v in cell.items() if k.startswith("SFT: steps per decade"))
    assert float(sft.split()[0]) == pytest.approx(4.0)
    mod = table[table["quantity"].str.contains("RFT \\(exact gradient\\): reward of modified")]
    assert mod["ours"].iloc[0].startswith("-1.000 → -0.960") and "3 seeds" in mod["source"].iloc[0]
    assert table["source"].str.startswith("ours, tiny scale").all()


def test_figures_cli_writes_every_output(tmp_path):
    runs = [_run(tmp_path, "digits", v, m, 0, [(-1, 0), (0, 1)]) for v in ("adam", "high_init")
            for m in ("sft", "rft_exact")]
    report.main(["aggregate", "--runs", *runs, "--out", str(tmp_path / "controlled.csv")])
    _theorem1_frame("micro-ar", 2).to_csv(tmp_path / "micro.csv", index=False)
    _theorem1_frame("single-token", 1).to_csv(tmp_path / "single.csv", index=False)
    pd.DataFrame({"method": ["rft", "rft", "sft", "sft"], "sigma": [0.1, 0.01] * 2, "eps": [0.01, 1e-4] * 2,
                  "steps": [100, 10000, 3, 6]}).to_csv(tmp_path / "sep.csv", index=False)
    out = tmp_path / "figs"
    report.main(["figures", "--micro", str(tmp_path / "micro.csv"), "--single-token", str(tmp_path / "single.csv"),
                 "--controlled", str(tmp_path / "controlled.csv"), "--separation", str(tmp_path / "sep.csv"),
                 "--scale", "smoke", "--out-dir", str(out)])
    names = {p.name for p in out.iterdir()}
    assert names == {"table_theory.csv", "table_theory.md"} | {
        f"theory_{n}.{e}" for n in ("theorem1", "controlled", "separation") for e in ("png", "pdf")} | {
        f"{n}.provenance.json" for n in ("table_theory", "theory_theorem1", "theory_controlled", "theory_separation")}
    assert "| experiment" in (out / "table_theory.md").read_text()
