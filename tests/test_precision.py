"""`precision: auto` chooses bf16 only where a measured probe on this CPU, at the rule's own row count,
finds it faster than fp32."""

import json

import pytest
import torch
import yaml

from experiments import precision as precision_table
from experiments.common import io, torchutil


def test_probe_is_cached_per_machine_and_row_count_and_reprobes_when_the_key_changes(tmp_path, monkeypatch):
    cache = tmp_path / "probe.json"
    monkeypatch.setenv("SUITE_PRECISION_CACHE", str(cache))
    first = torchutil.cpu_precision_probe(256)
    assert cache.exists() and first["fp32_gflops"] > 0 and first["bf16_gflops"] > 0 and first["tokens"] == 256
    assert first["choice"] == ("bf16" if first["speedup"] >= torchutil.BF16_MIN_SPEEDUP else "fp32")
    stored = json.loads(cache.read_text())
    threads = torch.get_num_threads()
    stored["shapes"][f"{threads}x256"]["choice"] = "sentinel"
    cache.write_text(json.dumps(stored))
    assert torchutil.cpu_precision_probe(256)["choice"] == "sentinel"        # read, not measured again
    assert torchutil.cpu_precision_probe(300)["choice"] == "sentinel"        # 300 rows -> the 256 bucket
    assert torchutil.resolve_precision("auto", torch.device("cpu"), tokens=200) == "sentinel"
    assert torchutil.cpu_precision_probe(16)["choice"] in ("bf16", "fp32")   # another bucket: measured, added
    assert set(json.loads(cache.read_text())["shapes"]) == {f"{threads}x16", f"{threads}x256"}
    cache.write_text(json.dumps(stored | {"cpu": "another"}))                # another machine's entry
    assert torchutil.cpu_precision_probe(256)["choice"] in ("bf16", "fp32")
    assert set(json.loads(cache.read_text())["shapes"]) == {f"{threads}x256"}
    torch.set_num_threads(1)                                                 # a 1-thread job beside it
    try:
        torchutil.cpu_precision_probe(256)
    finally:
        torch.set_num_threads(threads)
    assert {"1x256", f"{threads}x256"} <= set(json.loads(cache.read_text())["shapes"])   # kept side by side


@pytest.mark.parametrize(("tokens", "bucket"), [(1, 8), (8, 8), (11, 8), (12, 16), (160, 128), (200, 256),
                                                (2048, 2048), (10**6, 8192)])
def test_probe_bucket_is_the_nearest_power_of_two_within_8_to_8192(tokens, bucket):
    assert torchutil.probe_bucket(tokens) == bucket


def test_forced_precision_skips_the_probe_and_the_manifest_records_it(tmp_path, monkeypatch):
    cache = tmp_path / "probe.json"
    monkeypatch.setenv("SUITE_PRECISION_CACHE", str(cache))
    assert torchutil.resolve_precision("fp32", torch.device("cpu"), tokens=16) == "fp32"
    assert torchutil.resolve_precision("bf16", torch.device("cpu")) == "bf16"
    assert not cache.exists() and "precision_probe" not in io.run_manifest(seed=0)
    torchutil.cpu_precision_probe(16)
    recorded = io.run_manifest(seed=0)["precision_probe"]
    assert (recorded["capability"] == torch.backends.cpu.get_cpu_capability()
            and f"{torch.get_num_threads()}x16" in recorded["shapes"])


def test_rule_rows_take_each_rules_row_count_from_its_own_config_keys():
    cfg = yaml.safe_load(open("workflow/config/tiny.yaml", encoding="utf-8"))
    rows = {r["rule"]: r for r in precision_table.rule_rows(cfg)}
    st, ref, ches = cfg["rft"]["stats"], cfg["refusal"], cfg["ches"]
    assert rows["reward_stats"]["tokens"] == st["batch_inputs"] * st["samples"]
    seq = ref["dpo"]["max_prompt_tokens"] + ref["dpo"]["max_response_tokens"]
    assert rows["refusal_arm"]["tokens"] == 2 * ref["dpo"]["batch_size"] * seq   # the DPO batch, not the decode
    assert rows["ches_score"]["tokens"] == ches["score"]["batch_size"] * (ches["max_prompt_tokens"]
                                                                          + ches["max_response_tokens"])
    assert rows["persona_dpo"]["configured"] == cfg["persona"]["precision"]
    assert {r["key"].split(".")[0] for r in rows.values()} == {"persona", "rft", "ches", "refusal"}


def test_the_table_says_what_runs_and_a_forced_value_wins_over_the_probe(tmp_path, monkeypatch):
    cache = tmp_path / "probe.json"
    monkeypatch.setenv("SUITE_PRECISION_CACHE", str(cache))
    cfg = {"ches": {"max_prompt_tokens": 4, "max_response_tokens": 4, "score": {"batch_size": 2, "precision": "fp32"},
                    "dpo": {"batch_size": 1, "precision": "auto"}}}
    rows = precision_table.choices(cfg)
    assert [r["runs"] for r in rows][0] == "fp32"
    auto = rows[1]
    assert auto["bucket"] == 16 and auto["runs"] == ("bf16" if auto["speedup"] >= torchutil.BF16_MIN_SPEEDUP
                                                     else "fp32")
    text = precision_table.render(rows, torchutil.cpu_precision_probe(16) | {"min_speedup": 1.2})
    assert "| ches_score | `ches.score.precision` | fp32 | 16 (~16) |" in text


def test_the_probe_casts_its_weight_to_bf16_once_as_inside_a_model():
    """Autocast's cast cache is cleared when the outermost autocast exits: the probe must keep one open
    across its trials, or every bf16 trial pays the weight's cast (bf16 under-rated at decode row counts)."""
    from torch.utils._python_dispatch import TorchDispatchMode

    class Casts(TorchDispatchMode):
        n = 0

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            x = args[0] if args else None
            if (func is torch.ops.aten._to_copy.default and isinstance(x, torch.Tensor)
                    and tuple(x.shape) == (torchutil.PROBE_K, torchutil.PROBE_N)
                    and (kwargs or {}).get("dtype") == torch.bfloat16):
                Casts.n += 1
            return func(*args, **(kwargs or {}))

    with Casts():
        torchutil._measure(8)
    assert Casts.n == 1
