"""prepare_persona: Anthropic model-written-evals persona file -> normalised JSONL.

Normalised record: ``{"id", "question", "statement", "answer_matching_behavior",
"answer_not_matching_behavior", "label_confidence"}`` with answers stripped of spaces ("Yes"/"No").
Any persona file with the upstream schema works (it is a config entry).
"""

from __future__ import annotations

import argparse
import json
import logging

from experiments.common.cli import UserError, main_guard
from experiments.common.io import write_jsonl
from experiments.data.mirror import fetch_file

log = logging.getLogger("prepare_persona")

REQUIRED = {"question": str, "answer_matching_behavior": str, "answer_not_matching_behavior": str}


def normalise_records(lines, source: str) -> list[dict]:
    """Parse upstream persona JSONL lines; a bad line raises ``UserError`` naming file and line."""
    records = []
    for lineno, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            raw = json.loads(line)
        except json.JSONDecodeError as e:
            raise UserError(f"{source}:{lineno}: not valid JSON ({e.msg})") from None
        if not isinstance(raw, dict):
            raise UserError(f"{source}:{lineno}: expected a JSON object, got {type(raw).__name__}")
        for key, typ in REQUIRED.items():
            if not isinstance(raw.get(key), typ):
                raise UserError(f"{source}:{lineno}: persona record needs a string field {key!r}; "
                                f"keys present: {sorted(raw)}")
        amb = raw["answer_matching_behavior"].strip()
        anmb = raw["answer_not_matching_behavior"].strip()
        if {amb, anmb} != {"Yes", "No"}:
            raise UserError(f"{source}:{lineno}: answers must be Yes/No, got {amb!r}/{anmb!r}")
        records.append({
            "id": len(records),
            "question": raw["question"],
            "statement": raw.get("statement", ""),
            "answer_matching_behavior": amb,
            "answer_not_matching_behavior": anmb,
            "label_confidence": raw.get("label_confidence"),
        })
    if not records:
        raise UserError(f"{source}: no persona records")
    return records


@main_guard
def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--hub-repo", required=True)
    p.add_argument("--hub-file", required=True)
    p.add_argument("--mirror-file", required=True)
    p.add_argument("--mirror", default="", help="mirror directory (default: env SUITE_DATA_MIRROR)")
    p.add_argument("--out", required=True)
    args = p.parse_args(argv)
    path = fetch_file(mirror_file=args.mirror_file, hub_repo=args.hub_repo, hub_file=args.hub_file,
                      mirror=args.mirror or None)
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise UserError(f"{path}: not UTF-8 text (byte {e.start})") from None
    records = normalise_records(text.splitlines(), str(path))
    n = write_jsonl(args.out, records)
    log.info("wrote %d persona records from %s to %s", n, path, args.out)


if __name__ == "__main__":
    main()
