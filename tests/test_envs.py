"""envs/*.yaml (for `snakemake --sdm conda` on clusters) must pin what pyproject.toml pins."""

import re
import tomllib
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
# run on the head node only (they submit the jobs), so the job environment does not need them
HEAD_NODE_ONLY = {"snakemake", "snakemake-executor-plugin-slurm"}


def _split(req: str) -> tuple[str, str]:
    m = re.match(r"^\s*([A-Za-z0-9_.\-]+)\s*(.*?)\s*(?:#.*)?$", req)
    return m.group(1).lower().replace("_", "-"), m.group(2).replace(" ", "")


def test_conda_envs_match_the_pyproject_pins():
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    pins = dict(_split(r) for r in project["dependencies"])
    envs = sorted((REPO / "envs").glob("*.yaml"))
    assert envs, "no envs/*.yaml"
    for env_file in envs:
        env = yaml.safe_load(env_file.read_text())
        python = [d for d in env["dependencies"] if isinstance(d, str) and d.startswith("python")]
        assert python and python[0].split("=")[-1] in ("3.11", "3.12"), f"{env_file.name}: python {python}"
        pip = next(d["pip"] for d in env["dependencies"] if isinstance(d, dict) and "pip" in d)
        assert "-e .." in pip, f"{env_file.name}: the suite itself is not installed"
        got = dict(_split(r) for r in pip if not r.startswith("-e"))
        for name, spec in pins.items():
            if name in HEAD_NODE_ONLY:
                continue
            assert got.get(name) == spec, \
                f"{env_file.name}: {name}{got.get(name, ' missing')} != pyproject {name}{spec}"
        extra = set(got) - set(pins)
        assert not extra, f"{env_file.name}: not in pyproject.toml: {sorted(extra)}"


def test_every_rule_names_the_conda_env():
    for smk in [REPO / "Snakefile", *sorted((REPO / "workflow" / "rules").glob("*.smk"))]:
        text = smk.read_text()
        rules = re.findall(r"^rule (\w+):", text, re.MULTILINE)
        blocks = re.split(r"^rule \w+:", text, flags=re.MULTILINE)[1:]
        for name, block in zip(rules, blocks):
            if name == "all":
                continue
            assert re.search(r"^\s+conda:\s*\n\s+ENV\b", block, re.MULTILINE), \
                f"{smk.name}: rule {name} has no `conda: ENV`"
