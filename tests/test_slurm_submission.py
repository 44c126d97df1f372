"""The paper DAG submitted through the SLURM profile, proven without a cluster: fake ``sbatch``, ``squeue``,
``sacct``, ``scancel`` (and the ``sinfo``/``scontrol``/``sacctmgr``/``sshare`` the executor plugin asks) on
PATH record their arguments; we assert the flags of a GPU training job come from the profile."""

import os
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
PROFILE = REPO / "workflow" / "profiles" / "slurm"

FAKE = r"""#!/bin/sh
# fake SLURM tool: record the call, answer like a quiet cluster
printf '%s\t%s\n' "$(basename "$0")" "$*" >> "$FAKE_SLURM_LOG"
case "$(basename "$0")" in
  sbatch) cat > /dev/null; echo "4242" ;;
  sinfo) printf 'PARTITION\ngpu*\n' ;;
  scontrol) echo "MinJobAge = 300 sec" ;;
  sacctmgr|sshare) echo "fakeaccount" ;;
esac
exit 0
"""
TOOLS = ("sbatch", "squeue", "sacct", "scancel", "sinfo", "scontrol", "sacctmgr", "sshare")


def _fake_bin(tmp_path: Path) -> Path:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for tool in TOOLS:
        p = bin_dir / tool
        p.write_text(FAKE)
        p.chmod(0o755)
    return bin_dir


def _sbatch_calls(log: Path) -> list[str]:
    if not log.is_file():
        return []
    return [line.split("\t", 1)[1] for line in log.read_text().splitlines() if line.startswith("sbatch\t")]


def test_paper_gpu_rule_is_submitted_with_the_profiles_resources(tmp_path):
    # a paper-scale workdir whose inputs of one GPU training job (persona SFT of OLMo-1B) are already there
    work = tmp_path / "work"
    (work / "resources/models/olmo-1b").mkdir(parents=True)
    (work / "resources/models/olmo-1b/config.json").write_text("{}")
    (work / "resources/data").mkdir(parents=True, exist_ok=True)
    (work / "resources/data/persona.jsonl").write_text("{}\n")
    log = tmp_path / "slurm_calls.tsv"
    env = dict(os.environ, FAKE_SLURM_LOG=str(log), HF_HUB_OFFLINE="1",
               PATH=f"{_fake_bin(tmp_path)}{os.pathsep}{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}")
    target = "results/paper/persona/olmo-1b/sft/summary.json"
    proc = subprocess.Popen(
        [sys.executable, "-m", "snakemake", "-s", str(REPO / "Snakefile"), "--workflow-profile", str(PROFILE),
         "--config", "scale=paper", "--directory", str(work), target],
        cwd=work, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)
    try:
        deadline = time.time() + 240
        while time.time() < deadline and not _sbatch_calls(log) and proc.poll() is None:
            time.sleep(0.5)
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            out = proc.communicate(timeout=60)[0]
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            out = proc.communicate()[0]
    calls = _sbatch_calls(log)
    assert len(calls) == 1, out[-3000:]  # only the target: its inputs exist, nothing upstream is submitted
    argv = shlex.split(calls[0])
    res = yaml.safe_load(PROFILE.joinpath("profile.yaml").read_text())["set-resources"]["persona_sft"]
    defaults = yaml.safe_load(PROFILE.joinpath("profile.yaml").read_text())["default-resources"]

    def value(flag):
        i = argv.index(flag)
        return argv[i + 1]

    assert value("--mem") == str(res["mem_mb"])
    assert value("-t") == str(res["runtime"])
    assert value("-p") == defaults["slurm_partition"]
    assert f"--gpus={res['gpu']}" in argv
    assert f"--cpus-per-task={defaults['cpus_per_task']}" in argv
    assert "rule_persona_sft_wildcards_paper_olmo-1b" in argv  # the job is labelled by rule and wildcards
