"""The runtime tables (experiments.runtime) from hand-made Snakemake benchmark files, job graphs, Snakemake
logs, summaries and job logs; the step stamps (experiments.common.steptimes)."""

import json
from pathlib import Path

import pandas as pd
import pytest

from experiments import runtime
from experiments.common import steptimes
from experiments.common.cli import UserError
from experiments.runtime import branch_of, collect, runtime_table

HEADER = "s\th:m:s\tmax_rss\tmax_vms\tmax_uss\tmax_pss\tio_in\tio_out\tmean_load\tcpu_time\n"


def _bench(path, s, rss):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(HEADER + f"{s}\t0:00:00\t{rss}\t1\t1\t1\t0\t0\t50\t{s}\n")


def test_sums_maxima_and_branches(tmp_path):
    _bench(tmp_path / "tiny/persona_dpo/m/a.tsv", 40.0, 2048)
    _bench(tmp_path / "tiny/persona_dpo/m/b.tsv", 50.5, 1024)
    _bench(tmp_path / "tiny/refusal_arm/m/dpo.tsv", 100.0, 4096)
    _bench(tmp_path / "prepare_model/smollm.tsv", 30.0, 512)  # a scale-free rule: counted
    _bench(tmp_path / "prepare_persona.tsv", 1.0, 100)  # one job, no wildcards, no scale
    _bench(tmp_path / "tiny/theory_separation.tsv", 16.0, 300)  # one job per scale
    _bench(tmp_path / "smoke/persona_dpo/m/a.tsv", 9999.0, 9999)  # another scale: ignored
    t = runtime_table(collect(tmp_path, "tiny")).set_index(["branch", "rule"])
    assert t.loc[("P2 §3 persona", "persona_dpo"), "jobs"] == 2
    assert t.loc[("P2 §3 persona", "persona_dpo"), "wall s (sum)"] == 90.5
    assert t.loc[("P2 §3 persona", "persona_dpo"), "wall s (longest job)"] == 50.5
    assert t.loc[("P2 §3 persona", "persona_dpo"), "peak RSS GiB"] == 2.0
    assert t.loc[("P2 §6 refusal", "(branch total)"), "peak RSS GiB"] == 4.0
    assert t.loc[("P2 §3 persona", "prepare_persona"), "jobs"] == 1
    assert t.loc[("P1 theory", "theory_separation"), "wall s (sum)"] == 16.0
    assert t.loc[("all", "(all jobs)"), "jobs"] == 6 and t.loc[("all", "(all jobs)"), "wall s (sum)"] == 237.5


def test_branch_names_and_bad_files(tmp_path):
    assert branch_of("rft_stats_figures") == "P1 GRUE reward statistics"
    assert branch_of("rft_train") == "P1 GRUE finetuning"
    assert branch_of("ches_dpo") == "P2 §5 CHES" and branch_of("controlled_pretrain") == "P1 theory"
    assert branch_of("theorem1") == "P1 theory"  # logs/<scale>/theorem1/{micro,single-token}
    (tmp_path / "tiny/x").mkdir(parents=True)
    (tmp_path / "tiny/x/a.tsv").write_text("not\ta benchmark\n1\t2\n")
    with pytest.raises(UserError, match="not a Snakemake benchmark"):
        collect(tmp_path, "tiny")


# ------------------------------------------------------------------ critical path, projections, packing, fixed cost
REPO = Path(__file__).resolve().parents[1]


def _job(i, rule, bench, deps=(), threads=1, output=(), log=()):
    return {"id": i, "rule": rule, "benchmark": bench and f"benchmarks/tiny/{bench}.tsv", "deps": list(deps),
            "threads": threads, "output": list(output), "log": list(log)}


def _dag(tmp_path):
    """a(10) -> b(30) -> d(5); a -> c(20 s, 2 threads) -> d; e(40) alone; all (no benchmark) <- d, e."""
    jobs = [_job(0, "ra", "ra/x"), _job(1, "rb", "rb/x", [0]), _job(2, "rc", "rc/x", [0], threads=2),
            _job(3, "rd", "rd/x", [1, 2]), _job(4, "re", "re/x"), _job(5, "all", None, [3, 4])]
    for name, s in (("ra", 10), ("rb", 30), ("rc", 20), ("rd", 5), ("re", 40)):
        _bench(tmp_path / f"run/benchmarks/tiny/{name}/x.tsv", s, 100)
    (tmp_path / "dag.json").write_text(json.dumps({"jobs": jobs}))
    return jobs


def _run(tmp_path, *extra):
    runtime.main(["--scale", "tiny", "--root", str(tmp_path / "run"), "--dag", str(tmp_path / "dag.json"),
                  "--out-dir", str(tmp_path / "out"), *extra])
    read = lambda n: pd.read_csv(tmp_path / "out" / f"table_runtime{n}.csv")  # noqa: E731
    return read(""), read("_projection"), read("_critical_path")


def test_critical_path_and_projections_equal_the_hand_computation(tmp_path):
    jobs = _dag(tmp_path)
    weights = {0: 10.0, 1: 30.0, 2: 20.0, 3: 5.0, 4: 40.0}
    assert runtime.critical_path(jobs, weights) == (45.0, [0, 1, 3, 5])  # a b d (35 via c, 40 alone)
    _, proj, chain = _run(tmp_path)
    assert list(chain.rule) == ["ra", "rb", "rd"] and list(chain["starts at s"]) == [0, 10, 40]
    p = proj.set_index(["quantity", proj.cores.fillna(0).astype(int)])["wall s"]
    g = proj.set_index(["quantity", proj.cores.fillna(0).astype(int)])["greedy bound s"]
    # work: 10 + 30 + 20 x 2 threads + 5 + 40 = 125 core-s
    assert p[("work (job-seconds × threads)", 0)] == 125 and p[("critical path", 0)] == 45
    assert p[("projected wall", 2)] == 62.5 and g[("projected wall", 2)] == 62.5 + 45 / 2
    assert p[("projected wall", 8)] == 45 and g[("projected wall", 8)] == round(125 / 8 + 45 * 7 / 8, 1)
    assert p[("projected wall", 32)] == 45 and g[("projected wall", 32)] == round(125 / 32 + 45 * 31 / 32, 1)
    assert proj.note[proj.quantity == "work (job-seconds × threads)"].item().startswith("5 of 6 jobs")


def test_a_job_without_a_benchmark_file_weighs_nothing_and_is_named(tmp_path):
    _dag(tmp_path)
    (tmp_path / "run/benchmarks/tiny/rb/x.tsv").unlink()  # b not run yet: a c d weighs 35, e alone 40
    assert runtime.critical_path(_dag(tmp_path), {0: 10.0, 2: 20.0, 3: 5.0}) == (35.0, [0, 2, 3, 5])
    (tmp_path / "run/benchmarks/tiny/rb/x.tsv").unlink()
    _, proj, chain = _run(tmp_path)
    assert list(chain.rule) == ["re"]
    assert proj.set_index("quantity").loc["critical path", "wall s"] == 40
    assert "no benchmark file yet: rb ×1" in proj.note[0]


_LOG_HEAD = "Building DAG of jobs...\nProvided cores: {cores}\nRules claiming more threads will be scaled down.\n"


def _start(t, rule, jobid, bench, inputs=(), outputs=(), threads=1):
    lines = [f"[{t}]", f"localrule {rule}:"]
    if inputs:
        lines.append("    input: " + ", ".join(inputs))
    lines += ["    output: " + ", ".join(outputs or [f"out/{rule}"]), f"    log: logs/{rule}.log",
              f"    jobid: {jobid}", f"    benchmark: {bench}", "    wildcards: scale=tiny"]
    if threads > 1:
        lines.append(f"    threads: {threads}")
    lines += ["    resources: tmpdir=/tmp", f"Shell command: run {rule}"]
    return "\n".join(lines) + "\n"


def _finish(t, rule, jobid):
    return f"[{t}]\nFinished jobid: {jobid} (Rule: {rule})\n1 of 2 steps (50%) done\n"


def _log_dir(tmp_path):
    """The hand-made DAG, a benchmark path per rule, and the run's empty Snakemake log folder."""
    _dag(tmp_path)
    log = tmp_path / "run/.snakemake/log"
    log.mkdir(parents=True)
    return (lambda n: f"benchmarks/tiny/{n}/x.tsv"), log


def test_packing_loss_from_snakemake_logs_equals_the_hand_computation(tmp_path):
    b, log = _log_dir(tmp_path)
    # invocation 1 (2 cores): a 0-10, e 0-40 side by side, b 10-42, c 42-62 (the 2-thread job), d 62-70
    (log / "2026-12-01T100000.000000.snakemake.log").write_text(
        _LOG_HEAD.format(cores=2)
        + _start("Tue Dec  1 10:00:00 2026", "ra", 1, b("ra")) + _start("Tue Dec  1 10:00:00 2026", "re", 5, b("re"))
        + _finish("Tue Dec  1 10:00:10 2026", "ra", 1)
        + _start("Tue Dec  1 10:00:10 2026", "rb", 2, b("rb")) + _finish("Tue Dec  1 10:00:40 2026", "re", 5)
        + _finish("Tue Dec  1 10:00:42 2026", "rb", 2)
        + _start("Tue Dec  1 10:00:42 2026", "rc", 3, b("rc"), threads=2) + _finish("Tue Dec  1 10:01:02 2026", "rc", 3)
        + _start("Tue Dec  1 10:01:02 2026", "rd", 4, b("rd")) + _finish("Tue Dec  1 10:01:10 2026", "rd", 4)
        + "5 of 5 steps (100%) done\n")
    _, proj, _ = _run(tmp_path)
    p = proj.set_index("quantity")["wall s"]
    assert p["measured: first job start → last job end"] == 70
    assert p["measured: busy (gaps between invocations left out)"] == 70
    assert p["ideal for the same invocations"] == 62.5  # max(45, 125 / 2)
    assert p["packing loss"] == 7.5 and p["other losses"] == 0
    assert (proj.cores[proj.quantity == "packing loss"] == 2).all()


def test_packing_over_two_invocations_leaves_out_the_gap_and_counts_a_failed_job(tmp_path):
    b, log = _log_dir(tmp_path)
    (log / "2026-12-01T100000.000000.snakemake.log").write_text(  # a, e; a failed run of b (8 s)
        _LOG_HEAD.format(cores=2)
        + _start("Tue Dec  1 10:00:00 2026", "ra", 1, b("ra")) + _start("Tue Dec  1 10:00:00 2026", "re", 5, b("re"))
        + _finish("Tue Dec  1 10:00:10 2026", "ra", 1) + _start("Tue Dec  1 10:00:10 2026", "rb", 2, b("rb"))
        + "[Tue Dec  1 10:00:18 2026]\nError in rule rb:\n    message: None\n    jobid: 2\n"
        + _finish("Tue Dec  1 10:00:40 2026", "re", 5))
    (log / "2026-12-01T110000.000000.snakemake.log").write_text(  # an hour later: b, c, d
        _LOG_HEAD.format(cores=2)
        + _start("Tue Dec  1 11:00:00 2026", "rb", 2, b("rb")) + _finish("Tue Dec  1 11:00:30 2026", "rb", 2)
        + _start("Tue Dec  1 11:00:30 2026", "rc", 3, b("rc"), threads=2) + _finish("Tue Dec  1 11:00:50 2026", "rc", 3)
        + _start("Tue Dec  1 11:00:50 2026", "rd", 4, b("rd")) + _finish("Tue Dec  1 11:00:55 2026", "rd", 4)
        + "3 of 3 steps (100%) done\n")
    _, proj, _ = _run(tmp_path)
    p = proj.set_index("quantity")["wall s"]
    assert p["measured: first job start → last job end"] == 3655
    assert p["measured: busy (gaps between invocations left out)"] == 40 + 55
    # 1st: max(40, (10 + 40 + 8) / 2) = 40; 2nd (b and c independent): max(30 + 5, (30 + 20 x 2 + 5) / 2) = 37.5
    assert p["ideal for the same invocations"] == 77.5 and p["packing loss"] == 95 - 77.5
    assert p["other losses"] == 77.5 - 62.5  # against max(45, 125 / 2) for one run
    assert "8 core-s of failed" in proj.set_index("quantity").note["ideal for the same invocations"]


def test_the_job_graph_from_the_logs_links_outputs_to_inputs(tmp_path):
    log = tmp_path / ".snakemake/log"
    log.mkdir(parents=True)
    (log / "2026-12-01T100000.000000.snakemake.log").write_text(
        _LOG_HEAD.format(cores=1)
        + _start("Tue Dec  1 10:00:00 2026", "ra", 1, "benchmarks/a.tsv", outputs=["m/model"])
        + _finish("Tue Dec  1 10:00:10 2026", "ra", 1)
        + _start("Tue Dec  1 10:00:10 2026", "rb", 2, "benchmarks/b.tsv", inputs=["m/model/config.json", "data"])
        + _finish("Tue Dec  1 10:00:20 2026", "rb", 2))
    inv = runtime.read_snakemake_logs(log)
    assert inv[0]["cores"] == 1 and inv[0]["jobs"][2]["input"] == ["m/model/config.json", "data"]
    jobs = {j["rule"]: j for j in runtime.dag_from_logs(inv)}
    assert jobs["rb"]["deps"] == [jobs["ra"]["id"]] and jobs["ra"]["deps"] == []  # an input inside an output folder


def test_fixed_cost_from_stamps_logs_and_timers(tmp_path):
    run = tmp_path / "run"
    jobs = []

    def job(rule, s, outputs=(), log_text=None):
        i = len(jobs)
        _bench(run / f"benchmarks/tiny/{rule}/x.tsv", s, 100)
        log = []
        if log_text is not None:
            (run / f"logs/{rule}.log").parent.mkdir(parents=True, exist_ok=True)
            (run / f"logs/{rule}.log").write_text(log_text)
            log = [f"logs/{rule}.log"]
        jobs.append(_job(i, rule, f"{rule}/x", output=outputs, log=log))

    def summary(rel, **fields):
        (run / rel).parent.mkdir(parents=True, exist_ok=True)
        (run / rel).write_text(json.dumps(fields))
        return rel

    stamp = lambda p, a, b: {"process_start": p, "first_step_start": a, "last_step_end": b}  # noqa: E731
    # two seeds stamped in one process (30 + 20 s of 60; in the summary's manifest, in a manifest.json beside
    # it), a stale span from a killed earlier process left out
    summary("r/b/manifest.json", steps_wall=stamp(1000, 1045, 1065))
    job("persona_dpo", 60, [summary("r/a/summary.json", manifest={"steps_wall": stamp(1000, 1010, 1040)}),
                            summary("r/b/summary.json", p_start=0.1),
                            summary("r/c/summary.json", steps_wall=stamp(500, 510, 590)), "r/a/metrics.jsonl"])
    job("ches_dpo", 50, [summary("r/d/summary.json", train_seconds=12.5, eval_seconds=2.5),
                         summary("r/e/summary.json", train_seconds=15.0)])  # old runs: the loop timers
    job("reward_stats", 100, [summary("r/f/summary.json", generate_s=70.0, score_s=5.0)])
    bar = "\r".join(f"dpo No>Never seed 1:  {k * 25}%|##| {k}/4 [00:{10 * k:02d}<00:10, 10.00s/it]" for k in range(5))
    job("persona_sft", 90, log_text="Loading weights: 100%|##| 272/272 [00:30<00:00, 9.1it/s]\n" + bar + "\n"
        + bar + "\n22:45:59 persona.dpo: done\n")  # the same bar twice (two runs of the loop): 40 + 40 s
    job("rft_train", 300, [summary("r/g/summary.json", train_seconds=100.0)],  # the log wins: it holds the eval
        log_text="23:59:00 rft.train: PPO: 1 trainable parameters\n"
        "23:59:50 rft.train: iter 1/2: reward 0.1  std 0.1  small-std 0.1  |g| 1  KL 0 (coef 0.01)  40.5s\n"
        "00:00:30 rft.train: iter 2/2: reward 0.1  std 0.1  small-std 0.1  |g| 1  KL 0 (coef 0.01)  40.0s\n"
        "00:02:00 rft.train: ppo: reward n/a -> 0.2 on 32 eval inputs (81s training)\n")
    job("rft_sft", 10, [summary("r/h/summary.json", train_seconds=30.0)])  # longer than the job: not believed
    job("theory_figures", 5)  # no steps anywhere: unknown, not 0
    (tmp_path / "dag.json").write_text(json.dumps({"jobs": jobs}))
    table, _, _ = _run(tmp_path)
    t = table.set_index("rule")
    assert t.loc["persona_dpo", "fixed s (sum)"] == 10 and t.loc["persona_dpo", "fixed %"] == round(100 * 10 / 60, 1)
    assert t.loc["ches_dpo", "fixed s (sum)"] == 20 and t.loc["reward_stats", "fixed s (sum)"] == 25
    assert t.loc["persona_sft", "fixed s (sum)"] == 10
    assert t.loc["rft_train", "fixed s (sum)"] == 300 - (130 + 40.5)  # 23:59:50 - 40.5 s -> 00:02:00
    for rule in ("rft_sft", "theory_figures"):
        assert t.loc[rule, "jobs timed"] == 0 and pd.isna(t.loc[rule, "fixed s (sum)"])
    all_jobs = table[table.rule == "(all jobs)"].iloc[0]
    assert all_jobs["jobs timed"] == 5 and all_jobs["fixed s (sum)"] == 10 + 20 + 25 + 10 + 129.5
    md = (tmp_path / "out/table_runtime.md").read_text()
    assert "nan" not in md  # unknown is an empty cell


def test_steptimes_first_call_and_last_call_count_and_record_resets():
    assert steptimes.record() is None  # no step ran
    steptimes.first_step(100.0)
    steptimes.first_step(105.0)
    steptimes.last_step(110.0)
    steptimes.last_step(120.0)
    w = steptimes.record()
    assert w["first_step_start"] == 100.0 and w["last_step_end"] == 120.0
    assert w["process_start"] is None or 0 < w["process_start"] <= __import__("time").time()
    assert steptimes.record() is None
    steptimes.first_step()
    steptimes.last_step()
    w = steptimes.record()
    assert 0 <= w["last_step_end"] - w["first_step_start"] < 5


def test_steptimes_trainer_callback_stamps_the_optimiser_steps():
    cb = steptimes.trainer_callback()
    for _ in range(3):
        cb.on_step_begin(None, None, None)
        cb.on_step_end(None, None, None)
    w = steptimes.record()
    assert w is not None and w["last_step_end"] >= w["first_step_start"]


def test_snakemake_dag_of_this_workflow():
    jobs = runtime.snakemake_dag(REPO / "Snakefile", "smoke")
    by_rule = {}
    for j in jobs:
        by_rule.setdefault(j["rule"], []).append(j)
    assert len(by_rule["all"]) == 1 and len(by_rule["runtime_table"]) == 1
    benches = [j["benchmark"] for j in jobs if j["benchmark"]]
    assert len(benches) == len(set(benches)) and all(b.startswith("benchmarks/") for b in benches)
    ids = {j["id"]: j for j in jobs}
    assert {ids[d]["rule"] for d in by_rule["ches_dpo"][0]["deps"]} >= {"ches_score"}
    length, chain = runtime.critical_path(jobs, {j["id"]: 1.0 for j in jobs if j["benchmark"]})
    assert ids[chain[-1]]["rule"] == "all" and length >= 4


def test_without_a_snakemake_dag_the_graph_comes_from_the_logs(tmp_path, capsys):
    b, log = _log_dir(tmp_path)
    (log / "2026-12-01T100000.000000.snakemake.log").write_text(  # a -> b -> d, c alone: the logs' file links
        _LOG_HEAD.format(cores=1)
        + _start("Tue Dec  1 10:00:00 2026", "ra", 1, b("ra"), outputs=["a.out"])
        + _finish("Tue Dec  1 10:00:10 2026", "ra", 1)
        + _start("Tue Dec  1 10:00:10 2026", "rb", 2, b("rb"), inputs=["a.out"], outputs=["b.out"])
        + _finish("Tue Dec  1 10:00:40 2026", "rb", 2)
        + _start("Tue Dec  1 10:00:40 2026", "rc", 3, b("rc"), outputs=["c.out"])
        + _finish("Tue Dec  1 10:01:00 2026", "rc", 3)
        + _start("Tue Dec  1 10:01:00 2026", "rd", 4, b("rd"), inputs=["b.out", "c.out"], outputs=["d.out"])
        + _finish("Tue Dec  1 10:01:05 2026", "rd", 4))
    (tmp_path / "Snakefile").write_text("this is not a Snakefile\n")
    runtime.main(["--scale", "tiny", "--root", str(tmp_path / "run"), "--snakefile", str(tmp_path / "Snakefile"),
                  "--out-dir", str(tmp_path / "out")])
    assert "job graph from Snakemake's logs (4 jobs)" in capsys.readouterr().out
    chain = pd.read_csv(tmp_path / "out/table_runtime_critical_path.csv")
    assert list(chain.rule) == ["ra", "rb", "rd"] and chain["wall s"].sum() == 45
