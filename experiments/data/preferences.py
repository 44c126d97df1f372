"""prepare_preferences: a pairwise-preference dataset -> normalised JSONL for the CHES experiments.

Normalised record (one per line): ``{"id": str, "prompt": str, "chosen": str, "rejected": str}``.

Datasets (P2 §5, Fig. 2):

* ``ultrafeedback`` -- ``HuggingFaceH4/ultrafeedback_binarized`` split ``train_prefs`` (Hub parquet
  ``data/train_prefs-00000-of-00001.parquet``; columns ``prompt``, ``chosen``, ``rejected`` where
  chosen/rejected are ``[{"role": "user", ...}, {"role": "assistant", ...}]`` message lists). The
  mirror holds a third party's 500-pair JSONL subset of that split with only ``chosen``/``rejected``
  (``preferences/ultrafeedback_binarized/train_prefs.jsonl``); the prompt is then ``chosen[0]["content"]``.
* ``alpaca_farm`` -- ``tatsu-lab/alpaca_farm`` ``alpaca_human_preference.json`` (fields instruction,
  input, output_1, output_2, preference in {1, 2}); prompt = ``instruction`` or
  ``instruction + "\\n" + input`` when input is non-empty, as the official CHES code formats it.
  Not in the mirror.

Selection (``--n > 0``) replicates the official code: ``torch.randperm(len(split),
generator=torch.Generator().manual_seed(seed))[:n]`` over the rows in file order; the record id is the
row's index in the file, so ids of the paper selection are HF row indices. Pairs whose chosen and
rejected responses are identical, or either is empty, are dropped (counted in the log).
"""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

from experiments.common.cli import UserError, main_guard
from experiments.common.io import read_jsonl, write_jsonl
from experiments.data.mirror import fetch_file

log = logging.getLogger("prepare_preferences")

SOURCES = {
    "ultrafeedback": {
        "hub_repo": "HuggingFaceH4/ultrafeedback_binarized",
        "hub_file": "data/train_prefs-00000-of-00001.parquet",
        "mirror_file": "preferences/ultrafeedback_binarized/train_prefs.jsonl",
    },
    "alpaca_farm": {
        "hub_repo": "tatsu-lab/alpaca_farm",
        "hub_file": "alpaca_human_preference.json",
        "mirror_file": "preferences/alpaca_farm/alpaca_human_preference.json",
    },
}
PAPER_SEED = 548


def _message_content(messages, role: str, where: str) -> str:
    if not isinstance(messages, (list, tuple)) or not messages:
        raise UserError(f"{where}: expected a non-empty message list, got {type(messages).__name__}")
    for m in messages:
        if not isinstance(m, dict) or not isinstance(m.get("content"), str):
            raise UserError(f"{where}: each message needs a string 'content'")
    found = [m["content"] for m in messages if m.get("role") == role]
    if not found:
        raise UserError(f"{where}: no {role!r} message (roles: {[m.get('role') for m in messages]})")
    return found[-1] if role == "assistant" else found[0]


def ultrafeedback_record(row: dict, index: int, where: str) -> dict:
    """One UltraFeedback-binarized row (Hub: prompt + message lists; mirror: message lists only)."""
    for key in ("chosen", "rejected"):
        if key not in row:
            raise UserError(f"{where}: UltraFeedback row needs {key!r}; keys present: {sorted(row)}")
    chosen = [dict(m) for m in row["chosen"]] if row["chosen"] is not None else None
    rejected = [dict(m) for m in row["rejected"]] if row["rejected"] is not None else None
    prompt = row.get("prompt")
    if not isinstance(prompt, str):
        prompt = _message_content(chosen, "user", f"{where} chosen")
    return {"id": str(index), "prompt": prompt,
            "chosen": _message_content(chosen, "assistant", f"{where} chosen"),
            "rejected": _message_content(rejected, "assistant", f"{where} rejected")}


def alpaca_farm_record(row: dict, index: int, where: str) -> dict:
    """One AlpacaFarm human-preference row; prompt = instruction[ + "\\n" + input]."""
    for key in ("instruction", "input", "output_1", "output_2", "preference"):
        if key not in row:
            raise UserError(f"{where}: AlpacaFarm row needs {key!r}; keys present: {sorted(row)}")
    pref = row["preference"]
    if pref not in (1, 2):
        raise UserError(f"{where}: preference must be 1 or 2, got {pref!r}")
    instruction, extra = row["instruction"], row["input"] or ""
    prompt = f"{instruction}\n{extra}" if extra else instruction
    chosen, rejected = (row["output_1"], row["output_2"]) if pref == 1 else (row["output_2"], row["output_1"])
    return {"id": str(index), "prompt": prompt, "chosen": chosen, "rejected": rejected}


RECORD = {"ultrafeedback": ultrafeedback_record, "alpaca_farm": alpaca_farm_record}


def read_rows(path: Path) -> list[dict]:
    """Rows of a parquet, JSON-array or JSONL file, in file order."""
    if path.suffix == ".parquet":
        import pyarrow.parquet as pq

        return pq.read_table(path).to_pylist()
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise UserError(f"{path}: not UTF-8 text (byte {e.start})") from None
    if text.lstrip().startswith("["):  # AlpacaFarm ships one JSON array
        try:
            rows = json.loads(text)
        except json.JSONDecodeError as e:
            raise UserError(f"{path}: not valid JSON ({e.msg})") from None
    else:
        try:
            rows = read_jsonl(path)
        except ValueError as e:
            raise UserError(str(e)) from None
    for i, row in enumerate(rows):
        if not isinstance(row, dict):
            raise UserError(f"{path}: row {i} is not a JSON object")
    return rows


def select_indices(total: int, n: int, seed: int) -> list[int]:
    """Indices of the official selection: first ``n`` of a ``torch.randperm`` seeded with ``seed``
    (all rows in order when ``n <= 0``)."""
    if n <= 0:
        return list(range(total))
    if seed <= 0:  # the official code then draws an unseeded permutation: not reproducible
        raise UserError(f"--n {n} needs a positive --seed (the paper uses {PAPER_SEED})")
    import torch

    perm = torch.randperm(total, generator=torch.Generator().manual_seed(seed))
    return [int(i) for i in perm[:min(n, total)]]


def normalise(dataset: str, rows: list[dict], n: int = 0, seed: int = PAPER_SEED,
              source: str = "") -> tuple[list[dict], int]:
    """(records, number dropped) for the selected rows: a pair is dropped when chosen == rejected or
    either response is empty (nothing to score or train on)."""
    if dataset not in RECORD:
        raise UserError(f"unknown dataset {dataset!r}: use one of {sorted(RECORD)}")
    make = RECORD[dataset]
    records, dropped = [], 0
    for i in select_indices(len(rows), n, seed):
        rec = make(rows[i], i, f"{source}: row {i}")
        if rec["chosen"] == rec["rejected"] or not rec["chosen"].strip() or not rec["rejected"].strip():
            dropped += 1
            continue
        records.append(rec)
    if not records:
        raise UserError(f"{source}: no preference records left")
    return records, dropped


@main_guard
def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--dataset", required=True, choices=sorted(SOURCES))
    p.add_argument("--mirror", default="", help="mirror directory (empty: env SUITE_DATA_MIRROR, then the Hub)")
    p.add_argument("--n", type=int, default=0, help="rows to select (0 = all; the paper: 5000)")
    p.add_argument("--seed", type=int, default=PAPER_SEED, help="selection seed (paper: 548)")
    p.add_argument("--out", required=True)
    args = p.parse_args(argv)
    src = SOURCES[args.dataset]
    path = fetch_file(mirror_file=src["mirror_file"], hub_repo=src["hub_repo"], hub_file=src["hub_file"],
                      mirror=args.mirror or None)
    rows = read_rows(path)
    records, dropped = normalise(args.dataset, rows, args.n, args.seed, str(path))
    n = write_jsonl(args.out, records)
    log.info("wrote %d %s preference records from %s (%d rows, %d dropped: chosen == rejected or empty) to %s",
             n, args.dataset, path, len(rows), dropped, args.out)


if __name__ == "__main__":
    main()
