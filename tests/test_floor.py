"""experiments.floor: the matmul work of a rule at its configured sizes, and its floor at a given rate."""

import pytest
import yaml

from experiments import floor


def _ches(**dpo):
    return {"ches": {"max_prompt_tokens": 4, "max_response_tokens": 4, "measures": ["ches"], "quantiles": [0, 1],
                     "seeds": [0, 1, 2], "score": {"batch_size": 2, "precision": "bf16"},
                     "dpo": {"subset_size": 2, "batch_size": 1, "epochs": 1, "losses": ["dpo"], "precision": "fp32"}
                     | dpo}}


def test_ches_dpo_work_is_six_flop_per_weight_per_trained_token_plus_the_log_prob_passes():
    rows = {r["rule"]: r for r in floor.work(_ches())}
    r = rows["ches_dpo"]
    assert (r["jobs"], r["runs"]) == (2, 6)                   # one job per quantile subset, seeds in it
    per_run = 2 * 2 * 8                                        # 2 pairs x (chosen + rejected) x 8 tokens
    assert r["train_tokens"] == 6 * per_run
    assert r["fwd_tokens"] == (6 + 2) * per_run                # after per seed, before per subset
    assert r["tflop"] == pytest.approx((6 * floor.FULL * 6 * per_run + 2 * floor.FULL * 8 * per_run) / 1e12)
    assert rows["ches_score"]["fwd_tokens"] == 500 * 2 * 8 and rows["ches_score"]["tflop"] == pytest.approx(
        2 * floor.BODY * 500 * 2 * 8 / 1e12)


def test_the_floor_is_the_work_at_the_probes_rate_for_the_precision_that_runs(monkeypatch):
    rates = {"fp32_gflops": 100.0, "bf16_gflops": 400.0}
    monkeypatch.setattr("experiments.common.torchutil.cpu_precision_probe", lambda tokens=256, refresh=False:
                        rates | {"choice": "bf16"})
    from experiments.precision import rule_rows

    at = {r["rule"]: r["tokens"] for r in rule_rows(_ches())}
    out = {r["rule"]: r for r in floor.floors(floor.work(_ches()), threads=1, choose_at=at)}
    assert out["ches_dpo"]["runs_as"] == "fp32" and out["ches_score"]["runs_as"] == "bf16"
    assert out["ches_dpo"]["floor_s"] == pytest.approx(out["ches_dpo"]["tflop"] * 1e3 / 100)
    assert out["ches_score"]["floor_s"] == pytest.approx(out["ches_score"]["tflop"] * 1e3 / 400)


def test_every_model_rule_of_the_tiny_config_has_a_row_and_the_table_renders():
    cfg = yaml.safe_load(open("workflow/config/tiny.yaml", encoding="utf-8"))
    rows = floor.work(cfg)
    names = {r["rule"] for r in rows}
    assert {"persona_dpo", "reward_stats", "rft_train", "rft_sft", "ches_dpo", "refusal_arm"} <= names
    assert all(r["tflop"] > 0 for r in rows)
    fake = [r | {"runs_as": "bf16", "gflops": "1", "floor_s": 1.0} for r in rows]
    text = floor.render(fake, {"ches_dpo": 9.0}, 2, "t.csv")
    assert "| 9 | 9.0× |" in text and f"**{len(rows)}**" in text
