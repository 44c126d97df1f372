"""`precision: auto` chooses bf16 only where a measured probe on this CPU finds it faster than fp32."""

import json

import torch

from experiments.common import io, torchutil


def test_probe_is_cached_per_machine_and_reprobes_when_the_key_changes(tmp_path, monkeypatch):
    cache = tmp_path / "probe.json"
    monkeypatch.setenv("SUITE_PRECISION_CACHE", str(cache))
    first = torchutil.cpu_precision_probe()
    assert cache.exists() and first["fp32_gflops"] > 0 and first["bf16_gflops"] > 0
    assert first["choice"] == ("bf16" if first["speedup"] >= torchutil.BF16_MIN_SPEEDUP else "fp32")
    cached = json.loads(cache.read_text()) | {"choice": "sentinel"}
    cache.write_text(json.dumps(cached))
    assert torchutil.cpu_precision_probe()["choice"] == "sentinel"          # read, not measured again
    assert torchutil.resolve_precision("auto", torch.device("cpu")) == "sentinel"
    cache.write_text(json.dumps(cached | {"threads": -1}))                   # another machine's entry
    assert torchutil.cpu_precision_probe()["choice"] in ("bf16", "fp32")


def test_forced_precision_skips_the_probe_and_the_manifest_records_it(tmp_path, monkeypatch):
    cache = tmp_path / "probe.json"
    monkeypatch.setenv("SUITE_PRECISION_CACHE", str(cache))
    assert torchutil.resolve_precision("fp32", torch.device("cpu")) == "fp32"
    assert torchutil.resolve_precision("bf16", torch.device("cpu")) == "bf16"
    assert not cache.exists() and "precision_probe" not in io.run_manifest(seed=0)
    torchutil.cpu_precision_probe()
    assert io.run_manifest(seed=0)["precision_probe"]["capability"] == torch.backends.cpu.get_cpu_capability()
