"""Preference-data normalisation (experiments.data.preferences): mirror file and the paper schemas."""

import json

import pytest
import torch

from experiments.common.cli import UserError
from experiments.data import preferences as prefs


def _msgs(prompt, response):
    return [{"content": prompt, "role": "user"}, {"content": response, "role": "assistant"}]


def test_mirror_ultrafeedback(mirror, tmp_path, caplog):
    out = tmp_path / "uf.jsonl"
    prefs.main(["--dataset", "ultrafeedback", f"--mirror={mirror}", "--n", "0", "--out", str(out)])
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    raw = [json.loads(line) for line in
           (mirror / prefs.SOURCES["ultrafeedback"]["mirror_file"]).read_text().splitlines()]
    assert 0 < len(rows) <= len(raw)
    def bad(r):
        c, j = r["chosen"][1]["content"], r["rejected"][1]["content"]
        return c == j or not c.strip() or not j.strip()

    dropped = sum(bad(r) for r in raw)
    assert dropped >= 2  # the mirror has an identical pair and an empty chosen response
    assert len(rows) == len(raw) - dropped
    assert all(set(r) == {"id", "prompt", "chosen", "rejected"} and r["chosen"] != r["rejected"] for r in rows)
    assert all(r["chosen"].strip() and r["rejected"].strip() for r in rows)
    assert len({r["id"] for r in rows}) == len(rows)
    first = rows[0]
    assert first["id"] == "0" and first["prompt"] == raw[0]["chosen"][0]["content"]
    assert first["chosen"] == raw[0]["chosen"][1]["content"]
    assert first["rejected"] == raw[0]["rejected"][1]["content"]


def test_mirror_selection_is_the_official_randperm(mirror, tmp_path):
    out = tmp_path / "uf.jsonl"
    prefs.main(["--dataset", "ultrafeedback", f"--mirror={mirror}", "--n", "20", "--seed", "548", "--out", str(out)])
    ids = [json.loads(line)["id"] for line in out.read_text().splitlines()]
    total = len((mirror / prefs.SOURCES["ultrafeedback"]["mirror_file"]).read_text().splitlines())
    perm = torch.randperm(total, generator=torch.Generator().manual_seed(548))[:20].tolist()
    assert [int(i) for i in ids] == [i for i in perm if str(i) in ids]  # order kept, dropped ones skipped


def test_alpaca_farm_not_in_the_mirror_exits_2(mirror, tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        prefs.main(["--dataset", "alpaca_farm", f"--mirror={mirror}", "--out", str(tmp_path / "a.jsonl")])
    assert e.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "alpaca_human_preference.json" in err[0]


def test_hub_ultrafeedback_schema_and_parquet(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    rows = [{"prompt": "Q1", "prompt_id": "h1", "chosen": _msgs("Q1", "good"), "rejected": _msgs("Q1", "bad"),
             "score_chosen": 8.0, "score_rejected": 3.0},
            {"prompt": "Q2", "prompt_id": "h2", "chosen": _msgs("Q2", "same"), "rejected": _msgs("Q2", "same"),
             "score_chosen": 5.0, "score_rejected": 5.0},
            {"prompt": "Q3", "prompt_id": "h3", "chosen": _msgs("Q3", "yes"), "rejected": _msgs("Q3", "no"),
             "score_chosen": 6.0, "score_rejected": 1.0}]
    path = tmp_path / "train_prefs-00000-of-00001.parquet"
    pq.write_table(pa.Table.from_pylist(rows), path)
    back = prefs.read_rows(path)
    recs, dropped = prefs.normalise("ultrafeedback", back, source=str(path))
    assert dropped == 1
    assert recs == [{"id": "0", "prompt": "Q1", "chosen": "good", "rejected": "bad"},
                    {"id": "2", "prompt": "Q3", "chosen": "yes", "rejected": "no"}]


def test_alpaca_farm_schema(tmp_path):
    rows = [{"instruction": "Add.", "input": "2 and 3", "output_1": "5", "output_2": "6", "preference": 1},
            {"instruction": "Name a colour.", "input": "", "output_1": "car", "output_2": "red", "preference": 2},
            {"instruction": "Tie.", "input": "", "output_1": "x", "output_2": "x", "preference": 1}]
    path = tmp_path / "alpaca_human_preference.json"
    path.write_text(json.dumps(rows))
    recs, dropped = prefs.normalise("alpaca_farm", prefs.read_rows(path), source=str(path))
    assert dropped == 1
    assert recs == [{"id": "0", "prompt": "Add.\n2 and 3", "chosen": "5", "rejected": "6"},
                    {"id": "1", "prompt": "Name a colour.", "chosen": "red", "rejected": "car"}]
    with pytest.raises(UserError, match="preference must be 1 or 2"):
        prefs.normalise("alpaca_farm", [{**rows[0], "preference": 0}])
    with pytest.raises(UserError, match="needs 'output_2'"):
        prefs.normalise("alpaca_farm", [{k: v for k, v in rows[0].items() if k != "output_2"}])


def test_select_indices():
    assert prefs.select_indices(5, 0, 548) == [0, 1, 2, 3, 4]
    assert prefs.select_indices(5, 9, 548) == torch.randperm(5, generator=torch.Generator().manual_seed(548)).tolist()
    with pytest.raises(UserError, match="positive --seed"):
        prefs.select_indices(5, 2, 0)


def test_offline_without_mirror_is_one_line(tmp_path, monkeypatch, capsys):
    monkeypatch.delenv("SUITE_DATA_MIRROR", raising=False)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(SystemExit) as e:
        prefs.main(["--dataset", "ultrafeedback", "--mirror=", "--out", str(tmp_path / "u.jsonl")])
    assert e.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "HuggingFaceH4/ultrafeedback_binarized" in err[0]
