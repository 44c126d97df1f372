"""The data seam: mirror resolution, the offline error, persona normalisation and its errors."""

import json
import subprocess
import sys

import pytest

from experiments.common.cli import UserError
from experiments.common.io import read_jsonl
from experiments.data.mirror import fetch_file
from experiments.data.persona import normalise_records

ARGS = ["--hub-repo", "Anthropic/model-written-evals", "--hub-file", "persona/ends-justify-means.jsonl",
        "--mirror-file", "persona/ends-justify-means.jsonl"]


def run_cli(tmp_path, env_extra, *extra):
    env = {k: v for k, v in __import__("os").environ.items() if k not in {"SUITE_DATA_MIRROR", "HF_HUB_OFFLINE"}}
    env.update(env_extra)
    return subprocess.run([sys.executable, "-m", "experiments.data.persona", *ARGS, *extra,
                           "--out", str(tmp_path / "persona.jsonl")], capture_output=True, text=True, env=env)


def test_prepare_persona_from_mirror(tmp_path, mirror):
    r = run_cli(tmp_path, {"SUITE_DATA_MIRROR": str(mirror)})
    assert r.returncode == 0, r.stderr
    rows = read_jsonl(tmp_path / "persona.jsonl")
    assert len(rows) == 1000
    assert sum(r["answer_matching_behavior"] == "Yes" for r in rows) == 500
    assert rows[0]["answer_not_matching_behavior"] in {"Yes", "No"}
    assert rows[0]["question"].startswith("Is the following statement")
    assert [r["id"] for r in rows] == list(range(1000))


def test_offline_without_mirror_is_one_clear_error(tmp_path):
    r = run_cli(tmp_path, {"HF_HUB_OFFLINE": "1"})
    assert r.returncode == 2
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ")
    assert "SUITE_DATA_MIRROR" in lines[0] and "Traceback" not in r.stderr
    assert not (tmp_path / "persona.jsonl").exists()


def test_mirror_missing_file(tmp_path):
    with pytest.raises(UserError, match="has no file"):
        fetch_file(mirror_file="persona/nope.jsonl", hub_repo="x", hub_file="y", mirror=str(tmp_path))


def test_config_mirror_that_is_not_a_directory(tmp_path):
    with pytest.raises(UserError, match="not a directory"):
        fetch_file(mirror_file="a", hub_repo="x", hub_file="y", mirror=str(tmp_path / "missing"))


def test_normalise_strips_answers():
    line = json.dumps({"question": "Q?", "statement": "S", "answer_matching_behavior": " Yes",
                       "answer_not_matching_behavior": " No", "label_confidence": 0.9})
    [rec] = normalise_records([line], "f.jsonl")
    assert rec == {"id": 0, "question": "Q?", "statement": "S", "answer_matching_behavior": "Yes",
                   "answer_not_matching_behavior": "No", "label_confidence": 0.9}


@pytest.mark.parametrize("line,needle", [
    ('{"question": "Q"', "f.jsonl:2: not valid JSON"),
    ('{"statement": "S", "answer_matching_behavior": " Yes", "answer_not_matching_behavior": " No"}',
     "f.jsonl:2: persona record needs a string field 'question'"),
    ('{"question": "Q", "answer_matching_behavior": " Maybe", "answer_not_matching_behavior": " No"}',
     "f.jsonl:2: answers must be Yes/No"),
    ('[1, 2]', "f.jsonl:2: expected a JSON object"),
])
def test_bad_persona_lines_name_file_and_line(line, needle):
    good = json.dumps({"question": "Q", "answer_matching_behavior": " Yes", "answer_not_matching_behavior": " No"})
    with pytest.raises(UserError) as e:
        normalise_records([good, line], "f.jsonl")
    assert needle in str(e.value)


def test_atomic_outputs_get_the_umask_mode_not_mkstemps_0600(tmp_path):
    import os

    from experiments.common.io import write_text

    old = os.umask(0o022)
    try:
        write_text(tmp_path / "out.txt", "x")
    finally:
        os.umask(old)
    assert (tmp_path / "out.txt").stat().st_mode & 0o777 == 0o644
