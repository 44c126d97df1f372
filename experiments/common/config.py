"""Plan-time checks of the suite's config (called from workflow/rules/common.smk before any job runs).

Each check returns or raises a single line naming the config key (or file and line) and the fix:

- ``duplicate_key_problem``: a YAML or JSON config file with the same key twice (PyYAML and json keep the last
  one without a word);
- ``coerce_cli_values``: ``--config key='{"seeds": [1, 2]}'`` arrives with every nested value as a string
  (Snakemake parses nested values with YAML's BaseLoader); values the schema says are numbers, booleans or null
  are converted back, so the override means what it says;
- ``schema_problem``: the JSON-schema error, as ``config <key>: <what> (<fix>)``;
- ``cross_field_problems``: combinations the schema cannot express (a subset larger than its dataset, a batch
  larger than the data, two runs with the same result path).
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import yaml

SCHEMA_FILE = "workflow/schemas/config.schema.yaml"


# --- duplicate keys ------------------------------------------------------------------------------------------

def _duplicates(node: yaml.Node, where: str) -> Iterator[tuple[str, str, int, int]]:
    """(key, parent key path, line, first line) for every repeated key in the node tree (merge keys excluded)."""
    if isinstance(node, yaml.MappingNode):
        first: dict[tuple[str, str], int] = {}
        for key, value in node.value:
            if key.tag == "tag:yaml.org,2002:merge":
                continue
            name = key.value if isinstance(key, yaml.ScalarNode) else str(key.start_mark)
            ident = (key.tag, name)
            line = key.start_mark.line + 1
            if ident in first:
                yield name, where, line, first[ident]
            else:
                first[ident] = line
            yield from _duplicates(value, f"{where}.{name}" if where else name)
    elif isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            yield from _duplicates(item, f"{where}[{i}]")


def duplicate_key_problem(path: str | Path) -> str | None:
    """One line if the YAML/JSON file ``path`` repeats a key in one mapping, else None (also None for a file
    that does not parse: Snakemake reports that itself)."""
    text = Path(path).read_text(encoding="utf-8")
    try:
        docs = list(yaml.compose_all(text, Loader=yaml.SafeLoader))
    except yaml.YAMLError:
        return None
    for doc in docs:
        for key, where, line, first in _duplicates(doc, ""):
            inside = f" (in {where})" if where else ""
            return (f"{path}:{line}: duplicate key {key!r}{inside}, first set on line {first}; "
                    "YAML keeps only the last value: delete one of the two")
    return None


# --- command-line values -------------------------------------------------------------------------------------

_INT = re.compile(r"[+-]?[0-9]+")
_FLOAT = re.compile(r"[+-]?([0-9]+\.?[0-9]*|\.[0-9]+)([eE][+-]?[0-9]+)?")
_MISSING = object()


def _from_text(text: str, types: list[str]) -> Any:
    """``text`` as the first of the schema's ``types`` it spells (YAML 1.2 spelling), else _MISSING."""
    for t in types:
        if t == "integer" and _INT.fullmatch(text):
            return int(text)
        if t == "number" and _INT.fullmatch(text):
            return int(text)
        if t == "number" and _FLOAT.fullmatch(text):
            return float(text)
        if t == "boolean" and text in ("true", "True", "false", "False"):
            return text in ("true", "True")
        if t == "null" and text in ("null", "Null", "~", "None"):
            return None
    return _MISSING


def _at(obj: Any, path: list) -> Any:
    for step in path:
        try:
            obj = obj[step]
        except (KeyError, IndexError, TypeError):
            return _MISSING
    return obj


def coerce_cli_values(config: dict, cli: dict, schema: dict) -> int:
    """Convert, in place, the strings of ``config`` that came from ``--config`` (``cli``, Snakemake's parsed
    command-line dict) and whose schema type is not string. Returns the number of values converted."""
    import jsonschema

    validator = jsonschema.Draft202012Validator(schema)
    converted = 0
    for _ in range(100):  # each pass fixes every value jsonschema reports; a fixed value may expose a deeper one
        changes = []
        for err in validator.iter_errors(config):
            path = list(err.absolute_path)
            if err.validator != "type" or not path or not isinstance(err.instance, str):
                continue
            if _at(cli, path) != err.instance:
                continue  # not a command-line value: a file's quoted "1" stays a (reported) string
            types = err.validator_value if isinstance(err.validator_value, list) else [err.validator_value]
            value = _from_text(err.instance, types)
            if value is not _MISSING:
                changes.append((path, value))
        if not changes:
            return converted
        for path, value in changes:
            _at(config, path[:-1])[path[-1]] = value
            converted += 1
    return converted


# --- schema errors -------------------------------------------------------------------------------------------

def dotted(path) -> str:
    out = ""
    for step in path:
        out += f"[{step}]" if isinstance(step, int) else (f".{step}" if out else str(step))
    return out


def _fix(err) -> str:
    if err.validator == "uniqueItems":
        return "list each value once: a repeated entry is the same run (or row) counted twice"
    if err.validator == "additionalProperties" and isinstance(err.schema.get("properties"), dict):
        return f"check the spelling; the keys allowed here: {', '.join(sorted(err.schema['properties']))}"
    return f"see {SCHEMA_FILE}"


def schema_problem(config: dict, schema: dict) -> str | None:
    """One line for the most relevant schema violation of ``config``, or None."""
    import jsonschema
    from jsonschema.exceptions import best_match

    err = best_match(jsonschema.Draft202012Validator(schema).iter_errors(config))
    if err is None:
        return None
    key = dotted(err.absolute_path) or "(top level)"
    return f"config {key}: {err.message} ({_fix(err)})"


# --- cross-field checks --------------------------------------------------------------------------------------

def cross_field_problems(config: dict) -> list[str]:
    """Combinations of valid values that would give a meaningless result, one line each."""
    out = []
    ches = config["ches"]
    sub = ches["dpo"]["subset_size"]
    for name, spec in ches["datasets"].items():
        if 0 < spec["n"] < sub:
            out.append(f"ches.dpo.subset_size {sub} is larger than ches.datasets.{name}.n {spec['n']} (the pairs "
                       f"kept): lower subset_size to at most {spec['n']}, or raise n (0 = all pairs)")
    if ches["dpo"]["batch_size"] > sub:
        out.append(f"ches.dpo.batch_size {ches['dpo']['batch_size']} is larger than ches.dpo.subset_size {sub}: "
                   f"every epoch would be one step on the whole subset; use a batch_size of at most {sub}")

    sft = config["persona"]["sft"]
    if 0 < sft["max_prompts"] < sft["batch_size"]:
        out.append(f"persona.sft.batch_size {sft['batch_size']} is larger than persona.sft.max_prompts "
                   f"{sft['max_prompts']}: one step per epoch; lower batch_size or raise max_prompts (0 = all)")
    seen = {}
    for i, s in enumerate(config["persona"]["settings"]):
        run = f"{s['init']}~{s['loss']}"
        if run in seen:
            out.append(f"persona.settings[{i}] repeats init {s['init']!r} + loss {s['loss']!r} of "
                       f"persona.settings[{seen[run]}] (both would write …/{run}/…): keep one, or change init/loss")
        seen.setdefault(run, i)
    for model, spec in config["persona"]["models"].items():
        pairs = set()
        for i, p in enumerate(spec["pairs"]):
            where = f"persona.models.{model}.pairs[{i}]"
            if p["chosen"] == p["rejected"]:
                out.append(f"{where}: chosen and rejected are both {p['chosen']!r}: the preference is empty; "
                           "use two different tokens")
            if (p["chosen"], p["rejected"]) in pairs:
                out.append(f"{where}: the pair {p['chosen']!r} ≻ {p['rejected']!r} is listed twice: keep one")
            pairs.add((p["chosen"], p["rejected"]))

    for name, d in config["theory"]["controlled"]["datasets"].items():
        stages = {"pretrain": d["pretrain"], **{f"finetune.{v}": f for v, f in d["finetune"].items()}}
        for stage, opt in stages.items():
            if 0 < d["n_train"] < opt["batch_size"]:
                out.append(f"theory.controlled.datasets.{name}.{stage}.batch_size {opt['batch_size']} is larger than "
                           f"n_train {d['n_train']}: one full-batch step per epoch; use batch_size 0 (full batch, "
                           f"said explicitly) or at most {d['n_train']}")

    rft = config["rft"]
    for task, spec in rft["tasks"].items():
        for run in ("ppo", "ppo_on_supervised"):
            r = spec.get(run)
            if r is None or rft["finetune"]["algorithm"] != "ppo":
                continue
            episodes = r["inputs_per_iter"] * r["samples_per_input"]
            if r["minibatch"] > episodes:
                out.append(f"rft.tasks.{task}.{run}.minibatch {r['minibatch']} is larger than the {episodes} episodes "
                           f"of a rollout (inputs_per_iter × samples_per_input): one PPO step per epoch; use a "
                           f"minibatch of at most {episodes}")
        s = spec.get("sft")
        if s is not None and 0 < s["max_pool"] < s["batch_size"]:
            out.append(f"rft.tasks.{task}.sft.batch_size {s['batch_size']} is larger than max_pool {s['max_pool']}: "
                       "one step per epoch; lower batch_size or raise max_pool (0 = all)")
    ft, n_stats = rft["finetune"], rft["stats"]["n_inputs"]
    grid = ft["cheap_sft"]
    for d, st in grid.get("cells") or []:
        if d not in grid["data_frac"] or st not in grid["steps_frac"]:
            out.append(f"rft.finetune.cheap_sft.cells: [{d:g}, {st:g}] is not in the grid data_frac "
                       f"{grid['data_frac']} x steps_frac {grid['steps_frac']}: add the values there "
                       "(the figure's axes)")
    evaluated = ft["eval"]["inputs"] or ft["train_inputs"]  # the first N of the pool (0: all of it)
    if ft["tasks"] and n_stats and not 0 < evaluated <= n_stats:
        out.append(f"rft.finetune.eval.inputs {evaluated or 'all'} exceeds rft.stats.n_inputs {n_stats}: Finding II "
                   "reads each evaluated input's std from the reward statistics (the same first inputs of the "
                   f"official permutation); evaluate at most {n_stats} inputs or raise stats.n_inputs")
    return out
