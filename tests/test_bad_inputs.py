"""Bad input, one clear line each (README "Troubleshooting"): every case exits with status 2, prints a
single ``error: …`` line naming what to fix, and writes no output file. The config-level cases (unknown
scale, mistyped key, wrong type, negative learning rate / β / sample count, quantile outside [0, 1]) are
in tests/test_workflow.py::test_bad_config_exits_nonzero_naming_the_key; the rest are here."""

import json

import pytest
import torch

from experiments.common.cli import UserError

PERSONA_OK = {"question": "Is it good?", "statement": "x", "answer_matching_behavior": " Yes",
              "answer_not_matching_behavior": " No"}


def _persona(tmp_path, monkeypatch, content: bytes | None, mirror=True, out=None):
    from experiments.data import persona

    root = tmp_path / "mirror"
    (root / "persona").mkdir(parents=True)
    if content is not None:
        (root / "persona" / "p.jsonl").write_bytes(content)
    monkeypatch.delenv("SUITE_DATA_MIRROR", raising=False)
    out = out or tmp_path / "out" / "persona.jsonl"
    argv = ["--hub-repo", "Anthropic/evals", "--hub-file", "persona/p.jsonl", "--mirror-file", "persona/p.jsonl",
            "--mirror", str(root) if mirror else "", "--out", str(out)]
    persona.main(argv)


def _one_error_line(capsys, exc) -> str:
    assert exc.value.code == 2
    err = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error:")]
    assert len(err) == 1, err
    return err[0]


CASES = {
    "offline, no mirror": (dict(content=b"", mirror=False), "working offline"),
    "missing dataset file": (dict(content=None), "has no file 'persona/p.jsonl'"),
    "corrupted JSONL line (names file and line)": (
        dict(content=(json.dumps(PERSONA_OK) + "\n{broken\n").encode()), "p.jsonl:2: not valid JSON"),
    "persona record with the wrong schema": (
        dict(content=json.dumps({"question": "q"}).encode() + b"\n"), "p.jsonl:1: persona record needs a string field"),
    "non-UTF-8 bytes in a data file": (dict(content=b'{"question": "\xff\xfe"}\n'), "not UTF-8 text"),
    "dataset empty (after filtering blank lines)": (dict(content=b"\n\n"), "no persona records"),
}


@pytest.mark.parametrize("case", list(CASES))
def test_data_seam_errors(case, tmp_path, monkeypatch, capsys):
    kw, needle = CASES[case]
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(SystemExit) as e:
        _persona(tmp_path, monkeypatch, **kw)
    line = _one_error_line(capsys, e)
    assert needle in line, line
    assert not (tmp_path / "out").exists()  # nothing written


def test_unwritable_output_directory(tmp_path, monkeypatch, capsys):
    (tmp_path / "a_file").write_text("x")  # a file where a directory should be (root ignores chmod)
    with pytest.raises(SystemExit) as e:
        _persona(tmp_path, monkeypatch, (json.dumps(PERSONA_OK) + "\n").encode(), out=tmp_path / "a_file" / "o.jsonl")
    line = _one_error_line(capsys, e)
    assert "a_file" in line and "writable" in line, line


def test_unknown_model_source(tmp_path, capsys):
    from experiments.models.prepare import main

    assert main(["--name", "m", "--spec-json", json.dumps({"source": "ftp"}), "--out", str(tmp_path / "m")]) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.startswith("error:") and "source" in err and "ftp" in err, err
    assert not (tmp_path / "m").exists()


def test_response_that_is_not_a_single_token():
    from experiments.models.prepare import build_random_tokenizer
    from experiments.persona.tokens import single_token_id

    tok = build_random_tokenizer(300, ["Yes", "No"])
    assert isinstance(single_token_id(tok, "Yes"), int)
    with pytest.raises(UserError, match="'Absolutely' is not a single token"):
        single_token_id(tok, "Absolutely")


def test_refusal_pairs_errors(tmp_path, capsys):
    """A corrupted pairs file names the file and line; the two-refusal arm needs typed pairs."""
    from experiments.refusal import arms

    good = {"id": "p0", "prompt": "a", "chosen": "b", "rejected": "c", "split": "train"}
    bad = tmp_path / "pairs.jsonl"
    bad.write_text(json.dumps(good) + "\n" + '{"id": "p1", "prompt": \n')
    argv = ["--model", str(tmp_path / "no_model"), "--pairs", str(bad), "--arm", "dpo", "--out-dir", str(tmp_path / "o")]
    with pytest.raises(SystemExit) as e:
        arms.main(argv)
    line = _one_error_line(capsys, e)
    assert "pairs.jsonl:2" in line, line
    with pytest.raises(UserError, match="pair_type"):
        arms.refusal_refusal([good], bad)


def test_non_finite_loss_stops_and_names_the_step():
    """The SFT guard (TRL/transformers trainers): a NaN or inf loss is a UserError naming the step."""
    from types import SimpleNamespace

    from experiments.rft.sft import _callbacks

    guard = _callbacks(10)[0]
    for bad in (float("nan"), float("inf")):
        with pytest.raises(UserError, match="training loss is .* at step 3"):
            guard.on_log(None, SimpleNamespace(global_step=3), None, logs={"loss": bad})
    guard.on_log(None, SimpleNamespace(global_step=3), None, logs={"loss": 0.5})  # a finite loss passes


def test_pairrm_weights_must_be_safetensors(tmp_path):
    from experiments.refusal.pairrm import PairRMScorer

    (tmp_path / "config.json").write_text("{}")
    torch.save({"w": torch.zeros(1)}, tmp_path / "pytorch_model.bin")
    with pytest.raises(UserError, match="cannot load PairRM"):
        PairRMScorer(str(tmp_path))
