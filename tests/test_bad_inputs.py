"""Bad input, one clear line each (docs/troubleshooting.md): every case exits with status 2, prints a
single ``error: …`` line naming what to fix, and writes no output file. The config-level cases (unknown
scale, mistyped key, wrong type, negative learning rate / β / sample count, quantile outside [0, 1]) are
in tests/test_workflow.py::test_bad_config_exits_nonzero_naming_the_key; the rest are here, with the
config cases the schema alone cannot catch (duplicate keys, repeated seeds, cross-field checks: the plan
stops with one WorkflowError line naming the key, before anything is written)."""

import json
from pathlib import Path

import pytest
import torch

from experiments.common.cli import UserError

REPO = Path(__file__).resolve().parents[1]

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
    from experiments.models.prepare_random import build_random_tokenizer
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
    argv = ["--model", str(tmp_path / "no_model"), "--pairs", str(bad), "--arm", "dpo",
            "--out-dir", str(tmp_path / "o")]
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


# --- config: wrong input that would plan a meaningless DAG stops at plan time with one line -----------------

def _plan(tmp_path, *config, configfile=None):
    """A smoke dry-run in an empty directory; returns (exit status, the WorkflowError's message line)."""
    from test_workflow import snakemake

    work = tmp_path / "work"
    work.mkdir()
    extra = ["--configfile", str(configfile)] if configfile else []
    r = snakemake("-n", "--directory", str(work), "--config", "scale=smoke", *config, *extra)
    lines = (r.stdout + r.stderr).splitlines()
    after = [lines[i + 1] for i, line in enumerate(lines[:-1]) if line.startswith("WorkflowError")]
    assert not [p for p in work.iterdir() if p.name != ".snakemake"]  # nothing written
    return r.returncode, (after[0] if after else "\n".join(lines[-20:]))


def _smoke_config():
    import yaml

    return yaml.safe_load((REPO / "workflow/config/smoke.yaml").read_text())


def test_duplicate_key_in_a_config_file(tmp_path):
    f = tmp_path / "mine.yaml"
    f.write_text("persona:\n  seeds: [1]\n  top_k: 3\n  seeds: [2]\n")
    rc, line = _plan(tmp_path, configfile=f)
    assert rc != 0
    assert line == (f"{f}:4: duplicate key 'seeds' (in persona), first set on line 2; YAML keeps only the last "
                    "value: delete one of the two"), line


def test_scale_files_have_no_duplicate_keys_and_no_cross_field_problem(tmp_path):
    import yaml

    from experiments.common.config import cross_field_problems, duplicate_key_problem

    for scale in ("smoke", "tiny", "paper"):
        path = REPO / "workflow/config" / f"{scale}.yaml"
        assert duplicate_key_problem(path) is None
        assert cross_field_problems(yaml.safe_load(path.read_text())) == []
    (tmp_path / "nested.yaml").write_text("a:\n  - {x: 1, x: 2}\n")
    assert "duplicate key 'x' (in a[0])" in duplicate_key_problem(tmp_path / "nested.yaml")
    (tmp_path / "merge.yaml").write_text("base: &b {x: 1}\nother:\n  <<: *b\n  x: 2\n")
    assert duplicate_key_problem(tmp_path / "merge.yaml") is None  # a merge key's override is not a duplicate


def test_duplicate_seeds(tmp_path):
    rc, line = _plan(tmp_path, 'persona={"seeds": [5, 5]}')
    assert rc != 0
    assert line == ("config persona.seeds: [5, 5] has non-unique elements (list each value once: a repeated entry "
                    "is the same run (or row) counted twice)"), line


@pytest.mark.parametrize("where", [("persona",), ("theory", "controlled"), ("rft", "finetune"), ("ches",),
                                   ("refusal",)])
def test_every_seeds_list_rejects_repeats(where):
    import yaml

    from experiments.common.config import SCHEMA_FILE, schema_problem

    schema = yaml.safe_load((REPO / SCHEMA_FILE).read_text())
    cfg = _smoke_config()
    node = cfg
    for key in where:
        node = node[key]
    node["seeds"] = [3, 3]
    assert schema_problem(cfg, schema).startswith(f"config {'.'.join(where)}.seeds: [3, 3] has non-unique elements")


def test_ches_subset_larger_than_the_dataset(tmp_path):
    f = tmp_path / "mine.yaml"
    f.write_text("ches:\n  dpo: {subset_size: 64}\n")
    rc, line = _plan(tmp_path, configfile=f)
    assert rc != 0
    assert line == ("ches.dpo.subset_size 64 is larger than ches.datasets.ultrafeedback.n 40 (the pairs kept): "
                    "lower subset_size to at most 40, or raise n (0 = all pairs)"), line


CROSS_FIELD = {
    "CHES batch larger than the subset": (
        lambda c: c["ches"]["dpo"].update(batch_size=16),
        "ches.dpo.batch_size 16 is larger than ches.dpo.subset_size 4: every epoch would be one step on the whole "
        "subset; use a batch_size of at most 4"),
    "persona SFT batch larger than its prompts": (
        lambda c: c["persona"]["sft"].update(max_prompts=16),
        "persona.sft.batch_size 32 is larger than persona.sft.max_prompts 16: one step per epoch; lower batch_size "
        "or raise max_prompts (0 = all)"),
    "two persona settings with the same result path": (
        lambda c: c["persona"]["settings"].append(dict(c["persona"]["settings"][0], lr=0.5)),
        "persona.settings[3] repeats init 'sft' + loss 'dpo' of persona.settings[0] (both would write …/sft~dpo/…): "
        "keep one, or change init/loss"),
    "a persona pair with chosen == rejected": (
        lambda c: c["persona"]["models"]["micro-llama"]["pairs"][0].update(rejected="Yes"),
        "persona.models.micro-llama.pairs[0]: chosen and rejected are both 'Yes': the preference is empty; use two "
        "different tokens"),
    "controlled batch larger than the train inputs": (
        lambda c: c["theory"]["controlled"]["datasets"]["digits"].update(n_train=100),
        "theory.controlled.datasets.digits.pretrain.batch_size 512 is larger than n_train 100: one full-batch step "
        "per epoch; use batch_size 0 (full batch, said explicitly) or at most 100"),
    "PPO minibatch larger than a rollout": (
        lambda c: c["rft"]["tasks"]["commongen"]["ppo"].update(minibatch=8),
        "rft.tasks.commongen.ppo.minibatch 8 is larger than the 4 episodes of a rollout (inputs_per_iter × "
        "samples_per_input): one PPO step per epoch; use a minibatch of at most 4"),
    "RFT SFT batch larger than the labelled pool": (
        lambda c: c["rft"]["tasks"]["commongen"]["sft"].update(max_pool=2),
        "rft.tasks.commongen.sft.batch_size 4 is larger than max_pool 2: one step per epoch; lower batch_size or "
        "raise max_pool (0 = all)"),
    "a cheap-SFT cell outside the grid": (
        lambda c: c["rft"]["finetune"]["cheap_sft"].update(cells=[[0.3, 0.5]]),
        "rft.finetune.cheap_sft.cells: [0.3, 0.5] is not in the grid data_frac [0.1, 1.0] x steps_frac [0.5, 1.0]: "
        "add the values there (the figure's axes)"),
    "evaluated RFT inputs without reward statistics": (
        lambda c: c["rft"]["finetune"]["eval"].update(inputs=16),
        "rft.finetune.eval.inputs 16 exceeds rft.stats.n_inputs 8: Finding II reads each evaluated input's std from "
        "the reward statistics (the same first inputs of the official permutation); evaluate at most 8 inputs or "
        "raise stats.n_inputs"),
}


@pytest.mark.parametrize("case", list(CROSS_FIELD))
def test_cross_field_config_problems(case):
    from experiments.common.config import cross_field_problems

    edit, message = CROSS_FIELD[case]
    cfg = _smoke_config()
    edit(cfg)
    assert message in cross_field_problems(cfg)


THREADS_CLIS = {
    "experiments.bench": [], "experiments.ches.__main__": ["score"], "experiments.ches.bench": [],
    "experiments.ches.dpo": [], "experiments.persona.dpo": [], "experiments.persona.sft": [],
    "experiments.refusal.arms": [], "experiments.refusal.build": ["sample-pairs"], "experiments.rft.sft": [],
    "experiments.rft.stats": [], "experiments.rft.train": [], "experiments.theory.controlled": ["pretrain"],
    "experiments.theory.theorem1": ["micro"],
}


def test_every_threads_option_is_checked():
    for path in sorted((REPO / "experiments").rglob("*.py")):
        for line in path.read_text().splitlines():
            if '"--threads"' in line and "add_argument" in line:
                assert "type=thread_count" in line, f"{path}: {line.strip()}"


@pytest.mark.parametrize("module", list(THREADS_CLIS))
def test_negative_threads(module, capsys):
    import importlib

    main = importlib.import_module(module).main
    with pytest.raises(SystemExit) as e:
        main([*THREADS_CLIS[module], "--threads", "-3"])
    assert e.value.code == 2
    last = capsys.readouterr().err.strip().splitlines()[-1]
    assert last.endswith("error: argument --threads: '-3' is not a thread count: give a whole number >= 0 "
                         "(0 = torch's default, every core)"), last
