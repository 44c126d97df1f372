"""P2 Fig. 2 table and figure from hand-made run summaries."""

import json

import pytest

from experiments.ches import report


def _runs(tmp_path, deltas):
    """deltas: measure -> {quantile: [Δ per seed]}"""
    dirs = []
    for measure, by_q in deltas.items():
        for q, values in by_q.items():
            for seed, delta in enumerate(values):
                d = tmp_path / "ches" / "m" / "uf" / "dpo" / measure / f"q~{q:g}" / f"seed~{seed}"
                d.mkdir(parents=True)
                (d / "summary.json").write_text(json.dumps({
                    "n": 16, "delta_logp_chosen": delta, "delta_logp_rejected": delta - 1,
                    "logp_chosen_before": -50.0, "steps": 2}))
                dirs.append(str(d))
    return dirs


def test_table_orders_quantiles_and_flags_the_ches_trend(tmp_path):
    dirs = _runs(tmp_path, {
        "ches": {0: [0.5, 0.7], 0.5: [-0.1, 0.1], 1: [-1.0, -1.2]},
        "minus_edit_distance": {0: [-0.5, -0.3], 0.5: [0.2, 0.4], 1: [0.0, 0.1]},
    })
    runs = report.collect(dirs)
    assert len(runs) == 12 and set(runs["quantile"]) == {0.0, 0.5, 1.0}
    table = report.ches_table(runs, "tiny").set_index("measure")
    ches = table.loc["CHES"]
    assert ches["Δ ln π(y+) at q=0"].startswith("0.600 ±") and ches["Δ ln π(y+) at q=1"].startswith("-1.100")
    assert ches["Spearman(quantile, Δ)"] < -0.8 and ches["lowest Δ at the top quantile"]
    edit = table.loc["− edit distance"]
    assert not edit["lowest Δ at the top quantile"]
    assert ches["source"] == "ours, tiny scale, 2 seeds, 16 pairs per subset"


def test_cli_writes_outputs_and_rejects_foreign_folders(tmp_path):
    dirs = _runs(tmp_path, {"ches": {0: [0.1], 1: [-0.1]}, "hidden_inner_prod": {0: [0.0], 1: [0.0]}})
    out = tmp_path / "figs"
    report.main(["--runs", *dirs, "--scale", "smoke", "--out-csv", str(tmp_path / "runs.csv"), "--out-dir", str(out)])
    assert {p.name for p in out.iterdir()} == {"table_ches.csv", "table_ches.md", "ches_quantiles.png",
                                               "ches_quantiles.pdf", "table_ches.provenance.json",
                                               "ches_quantiles.provenance.json"}
    with pytest.raises(report.UserError, match="not a CHES run folder"):
        report.collect([str(tmp_path)])


def test_pairs_csv_holds_every_pair_of_every_run(tmp_path):
    import pandas as pd

    dirs = _runs(tmp_path, {"ches": {0: [0.1, 0.3], 1: [-0.1, -0.2]}})
    for i, d in enumerate(dirs):
        pd.DataFrame({"id": [7, 3, 5], "delta_logp_chosen": [i, i + 0.5, i + 1.0], "value": 0.0}).to_csv(
            f"{d}/per_example.csv", index=False)
    report.main(["--runs", *dirs, "--scale", "smoke", "--out-csv", str(tmp_path / "runs.csv"),
                 "--out-pairs", str(tmp_path / "pairs.csv"), "--out-dir", str(tmp_path / "figs")])
    pairs = pd.read_csv(tmp_path / "pairs.csv")
    assert len(pairs) == 4 * 3 and list(pairs.columns) == ["model", "dataset", "loss", "measure", "quantile", "seed",
                                                            "id", "delta_logp_chosen"]
    first = pairs[(pairs["quantile"] == 0) & (pairs["seed"] == 1)]
    assert first["id"].tolist() == [3, 5, 7] and first["delta_logp_chosen"].tolist() == [1.5, 2.0, 1.0]
