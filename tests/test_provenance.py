"""Every figure and table says where it came from (issues 21 and 24): the provenance record, its sidecar and
Markdown line written by a real report CLI (CSV untouched), and what the report's captions read."""

import json
import re
import subprocess
from datetime import UTC, datetime
from pathlib import Path

from experiments.common import provenance as prov

REPO = Path(__file__).resolve().parents[1]
NOW = datetime(2026, 12, 3, 14, 5, 9, tzinfo=UTC)


def _git(repo, *args):
    return subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@t", *args], cwd=repo, check=True,
                          capture_output=True, text=True).stdout.strip()


def _run(folder, **files):
    folder.mkdir(parents=True)
    for name, doc in files.items():
        (folder / f"{name}.json").write_text(json.dumps(doc))
    return folder


def test_record_from_a_fake_git_repo_and_fake_runs(tmp_path):
    repo = tmp_path / "repo"
    repo.mkdir()
    _git(repo, "init", "-q")
    (repo / "a.txt").write_text("one\n")
    _git(repo, "add", "a.txt")
    _git(repo, "commit", "-q", "-m", "first")
    sha = _git(repo, "rev-parse", "HEAD")
    probe = {"cpu": "Fake CPU", "capability": "AVX512", "amx": True, "choice": "bf16"}
    runs = [
        _run(tmp_path / "r1", summary={"precision": "bf16", "manifest": {"precision_probe": probe}}),
        # persona runs: config.json says what was asked (auto) and what ran
        _run(tmp_path / "r2", config={"precision": "auto", "precision_resolved": "fp32"},
             manifest={"precision_probe": probe | {"amx": False}}),
        _run(tmp_path / "r3", summary={"steps": 4}),                     # records no precision
        tmp_path / "r4",                                                  # does not exist: not an input
    ]
    rec = prov.current_record("smoke", runs, root=repo, now=NOW)
    assert rec["git"] == {"sha": sha, "dirty": False}
    assert rec["scale"] == "smoke" and rec["made_utc"] == "2026-12-03T14:05:09Z"
    assert rec["inputs"] == 3 and rec["precision"] == {"bf16": 1, "fp32": 1}
    assert rec["run_machines"] == {"Fake CPU (AVX512)": 1, "Fake CPU (AVX512, AMX)": 1}
    import torch

    assert rec["machine"]["capability"] == torch.backends.cpu.get_cpu_capability()
    assert rec["machine"]["cpu"] and isinstance(rec["machine"]["amx"], bool)
    (repo / "a.txt").write_text("two\n")                                 # a tracked change: dirty
    assert prov.current_record("smoke", root=repo, now=NOW)["git"] == {"sha": sha, "dirty": True}
    assert prov.current_record("smoke", root=tmp_path / "r1", now=NOW)["git"]["sha"] in (None, _git(REPO, "rev-parse",
                                                                                                    "HEAD"))


def test_describe_names_scale_date_code_machine_and_precision():
    machine = {"cpu": "AMD EPYC 9B14", "capability": "AVX512", "amx": False}
    rec = prov.build_record("tiny", {"sha": "abcdef1234567", "dirty": True}, machine,
                            {"inputs": 3, "precision": {"bf16": 2, "fp32": 1},
                             "run_machines": {"AMD EPYC 9B14 (AVX512)": 2, "Intel Xeon (AVX512, AMX)": 1}}, NOW)
    text = prov.describe(rec)
    for needle in ("tiny scale", "2026-12-03 (UTC)", "git abcdef1 (dirty tree)", "AMD EPYC 9B14 with torch",
                   "capability AVX512 (no AMX)", "bf16 in 2 of 3 inputs", "fp32 in 1 of 3 inputs",
                   "runs recorded on Intel Xeon (AVX512, AMX) (1)"):
        assert needle in text, (needle, text)
    assert "AMD EPYC 9B14 (AVX512) (2)" not in text                      # this machine is not repeated
    clean = prov.build_record("smoke", {"sha": "abcdef1234567", "dirty": False}, machine, {"inputs": 0}, NOW)
    assert "(dirty" not in prov.describe(clean) and "precision not recorded (no run inputs)" in prov.describe(clean)


def test_footer_is_one_line_replaced_not_stacked():
    md = "| a |\n|---|\n| 1 |\n"
    rec = prov.build_record("smoke", {"sha": "f" * 40, "dirty": False}, {"cpu": "C", "capability": "AVX2"}, {}, NOW)
    once = prov.with_footer(md, rec)
    twice = prov.with_footer(once, rec)
    assert once == twice and once.count(prov.FOOTER) == 1
    assert once.startswith(md) and once.splitlines()[-1].startswith("Made by run: smoke scale, 2026-12-03")
    assert prov.without_footer(once) == md and prov.without_footer(md) == md


def test_sidecars_of_one_cli_run_count_once(tmp_path):
    rec = prov.build_record("smoke", {"sha": "a" * 40, "dirty": False}, {"cpu": "C", "capability": "AVX2"},
                            {"inputs": 4, "precision": {"fp32": 4}, "run_machines": {}}, NOW)
    other = prov.build_record("smoke", {"sha": "a" * 40, "dirty": False}, {"cpu": "C", "capability": "AVX2"},
                              {"inputs": 2, "precision": {"bf16": 2}, "run_machines": {"C (AVX2)": 2}}, NOW)
    prov.stamp([tmp_path / "table_x", tmp_path / "fig_x"], rec)          # one CLI run, two names
    prov.stamp([tmp_path / "table_y"], other)
    prov.stamp([tmp_path / "summary"], rec)                              # the suite's own: skipped
    sidecars = prov.sibling_sidecars(tmp_path, skip=prov.SUITE_TABLES)
    assert [p.name for p in sidecars] == ["fig_x.provenance.json", "table_x.provenance.json", "table_y.provenance.json"]
    assert prov.inputs_record(sidecars) == {"inputs": 6, "precision": {"bf16": 2, "fp32": 4},
                                            "run_machines": {"C (AVX2)": 2}}


def test_real_cli_writes_sidecars_and_md_line_and_leaves_the_csv_as_it_was(tmp_path):
    """experiments.ches.report on four hand-made bf16 runs: a sidecar per figure/table name, one provenance
    line at the end of the Markdown table, and the CSV byte for byte what the table alone gives."""
    from experiments.ches import report

    dirs = []
    for measure in ("ches", "hidden_inner_prod"):
        for q in (0, 1):
            d = tmp_path / "ches" / "m" / "uf" / "dpo" / measure / f"q~{q}" / "seed~0"
            _run(d, summary={"n": 16, "delta_logp_chosen": 0.1 - q, "delta_logp_rejected": -1.0,
                             "logp_chosen_before": -50.0, "steps": 2, "precision": "bf16"})
            dirs.append(str(d))
    out = tmp_path / "figs"
    argv = ["--runs", *dirs, "--scale", "smoke", "--out-csv", str(tmp_path / "runs.csv"), "--out-dir", str(out)]
    report.main(argv)
    for name in ("table_ches", "ches_quantiles"):
        side = json.loads((out / f"{name}.provenance.json").read_text())
        assert side["name"] == name and side["scale"] == "smoke"
        assert side["inputs"] == 4 and side["precision"] == {"bf16": 4}
        assert side["machine"]["capability"] and side["git"]["sha"]
    md = (out / "table_ches.md").read_text()
    last = md.rstrip("\n").splitlines()[-1]
    assert last.startswith("Made by run: smoke scale") and "bf16 in 4 of 4 inputs" in last
    assert md.count(prov.FOOTER) == 1 and prov.without_footer(md).startswith("| model")
    csv = (out / "table_ches.csv").read_bytes()
    expected = report.ches_table(report.collect(dirs), "smoke").to_csv(index=False).encode()
    assert csv == expected and b"Made by run" not in csv
    report.main(argv)                                                    # again: the same CSV, still one line
    assert (out / "table_ches.csv").read_bytes() == csv
    assert (out / "table_ches.md").read_text().count(prov.FOOTER) == 1


def test_report_mode_and_the_line_before_any_run():
    assert prov.report_mode(["snakemake", "--report", "report.html"]) == "now"
    assert prov.report_mode(["snakemake", "--report=report.html", "--config", "scale=smoke"]) == "now"
    assert prov.report_mode(["snakemake", "--report", "r.html", "--report-after-run", "--cores", "2"]) == "after-run"
    assert prov.report_mode(["snakemake", "--cores", "2", "--report-stylesheet", "x.css"]) is None
    line = prov.report_preflight("smoke", ["figures/smoke/a.png", "figures/smoke/b.csv"], [])
    assert "\n" not in line and "`snakemake --cores all --config scale=smoke` first" in line
    assert prov.report_preflight("smoke", ["figures/smoke/a.png"], ["figures/smoke/a.png"]) is None


def test_report_lookup_reads_sidecars_when_rendered(tmp_path, monkeypatch):
    from jinja2 import Environment

    monkeypatch.chdir(tmp_path)
    reported = ["figures/tiny/table_x.csv", "figures/tiny/fig_x.png", "figures/tiny/fig_y.png"]
    Path("figures/tiny").mkdir(parents=True)
    for f in reported[:2]:
        Path(f).write_text("x")
    looked_up = prov.ReportProvenance("tiny", reported)
    rec = prov.build_record("tiny", {"sha": "b" * 40, "dirty": False}, {"cpu": "Some_CPU*", "capability": "AVX2"},
                            {"inputs": 2, "precision": {"fp32": 2}}, NOW)
    prov.stamp(["figures/tiny/table_x"], rec)                            # written after the lookup was made
    assert looked_up["table_x"].startswith("**Made by run:** tiny scale")
    assert r"Some\_CPU\*" in looked_up["table_x"]                        # RST markup escaped
    assert "not recorded" in looked_up["fig_x"]
    origin = looked_up["origin"]
    assert "Not made on this machine" in origin and "results/tiny/" in origin
    assert "1 reported file(s)" in origin and "fig_y.png" in origin
    Path("results/tiny").mkdir(parents=True)
    Path("figures/tiny/fig_y.png").write_text("x")
    assert looked_up["origin"] == ""                                     # made here, nothing missing
    line = '{{ (snakemake.config.provenance or {})["table_x"] }}'        # as in workflow/report/*.rst
    render = lambda config: Environment().from_string(line).render(snakemake=type("S", (), {"config": config}))  # noqa: E731
    assert render({"provenance": looked_up}).startswith("**Made by run:** tiny scale")
    assert render({}) == ""                                              # a report outside `snakemake --report`


def test_every_caption_ends_with_its_own_provenance_line():
    captions = sorted((REPO / "workflow" / "report").glob("*.rst"))
    assert len(captions) > 20
    for rst in captions:
        text = rst.read_text(encoding="utf-8")
        key = "origin" if rst.stem == "workflow" else rst.stem
        assert f'{{{{ (snakemake.config.provenance or {{}})["{key}"] }}}}' in text, rst.name
        if rst.stem != "workflow":
            assert text.rstrip().splitlines()[-1].startswith("{{ (snakemake.config.provenance"), rst.name


def test_the_workflow_declares_a_sidecar_for_every_captioned_file(tmp_path):
    """The smoke DAG's jobs write ``<name>.provenance.json`` for every name the report captions (dry run)."""
    from test_workflow import snakemake

    r = snakemake("-n", "--directory", str(tmp_path), "--config", "scale=smoke")
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    declared = set(re.findall(r"figures/smoke/(\w+)\.provenance\.json", r.stdout))
    captions = {p.stem for p in (REPO / "workflow" / "report").glob("*.rst") if p.stem != "workflow"}
    assert declared == captions
