"""GRUE task records (:mod:`experiments.rft.tasks`): the one record schema, the prompt formats, and the
normalisers that turn each source's raw rows into records. Pure functions (rows in, records out, no I/O);
fetching the rows and the ``python -m experiments.rft.tasks`` CLI are in :mod:`experiments.rft.tasks`.
"""

from __future__ import annotations

import csv
import io

import numpy as np

from experiments.common.cli import UserError

SPLITS = ("train", "validation", "test")

# --------------------------------------------------------------------------------------------------
# Formats (ml-rlgrad configs: rl4lms_scripts/{extract_samples,training}/*.yml)

COMMONGEN_PREFIX = "generate a sentence with: "
COMMONGEN_SEPARATOR = " "
COMMONGEN_END = "."
IWSLT_PREFIX = "translate English to German: "
CNN_PREFIX = "Summarize: "
DAILYDIALOG_EOU = "<EOU>"
DAILYDIALOG_CONTEXT = 5
IMDB_SEED = 42
IMDB_TRAIN_RATIO = 0.8
IMDB_TEST_SIZE = 5000
STATS_SEED = 7  # datapool.train_samples_rnd_seed in every extract_samples config


def record(id_: str, split: str, prompt: str, references: list[str], meta: dict | None = None) -> dict:
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}")
    return {"id": str(id_), "split": split, "prompt": prompt, "references": [str(r) for r in references],
            "meta": meta or {}}


def first_half_words(text: str) -> str:
    """The first ``floor(0.5 * n)`` whitespace-separated words, joined with one space (RL4LMs' IMDB rule)."""
    words = text.split()
    return " ".join(words[: int(len(words) * 0.5)])


def first_half_space_tokens(text: str) -> str:
    """RL4LMs' exact IMDB rule: ``text.split(" ")`` (single spaces, so runs of spaces give empty tokens),
    first ``int(0.5 * n)`` tokens re-joined with " ". Equal to ``first_half_words`` on single-spaced text."""
    tokens = text.split(" ")
    return " ".join(tokens[: int(len(tokens) * 0.5)])


def subsample(records: list, n: int, seed: int = STATS_SEED) -> list:
    """The official selection: the first ``n`` of ``np.random.RandomState(seed).permutation(len)``."""
    perm = np.random.RandomState(seed).permutation(len(records))
    return [records[i] for i in perm[:n]]


# --------------------------------------------------------------------------------------------------
# Tiny-scale normalisers (Pang & Lee, CommonGen mirror)

PANG_LEE_HELDOUT_PER_LABEL = 200  # per label, for validation and for test


def parse_pang_lee(data: bytes, source: str = "pang&lee2.csv") -> list[tuple[int, str]]:
    """CSV rows ``"label","text"`` (UTF-8 with BOM, labels "1"/"-1") -> [(1|0, stripped text)]."""
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        raise UserError(f"{source}: not UTF-8 text (byte {e.start})") from None
    rows = []
    for lineno, row in enumerate(csv.reader(io.StringIO(text)), start=1):
        if not row:
            continue
        if len(row) != 2 or row[0] not in {"1", "-1"}:
            raise UserError(f"{source}:{lineno}: expected \"label\",\"text\" with label 1/-1, got {row[:2]!r}")
        rows.append((1 if row[0] == "1" else 0, row[1].strip()))
    return rows


def normalise_pang_lee(rows: list[tuple[int, str]], seed: int = IMDB_SEED,
                       heldout_per_label: int = PANG_LEE_HELDOUT_PER_LABEL) -> list[dict]:
    """Stratified seeded split; train keeps positives only; prompt = first half of the words."""
    usable = [(i, label, text) for i, (label, text) in enumerate(rows) if first_half_words(text)]
    rng = np.random.RandomState(seed)
    assigned: dict[str, list] = {s: [] for s in SPLITS}
    for label in (1, 0):
        group = [u for u in usable if u[1] == label]
        perm = rng.permutation(len(group))
        k = heldout_per_label
        for pos, j in enumerate(perm):
            split = "validation" if pos < k else "test" if pos < 2 * k else "train"
            assigned[split].append(group[j])
    out = []
    for split in SPLITS:
        for i, label, text in sorted(assigned[split]):
            if split == "train" and label != 1:
                continue
            out.append(record(f"pang_lee_{i}", split, first_half_words(text), [text],
                              {"label": label, "source_index": i, "n_words": len(text.split())}))
    return out


def commongen_concepts(concept_set: str) -> list[str]:
    """``"field_N#look_V#stand_V"`` -> ``["field", "look", "stand"]`` (order kept)."""
    return [c.rsplit("_", 1)[0] if "_" in c else c for c in concept_set.split("#") if c]


def commongen_prompt(concepts: list[str]) -> str:
    return COMMONGEN_PREFIX + COMMONGEN_SEPARATOR.join(concepts) + COMMONGEN_END


def normalise_commongen_mirror(train_cs: list[str], train_tgt: list[str], dev_rows: list[dict]) -> list[dict]:
    """Mirror files -> one record per concept set with all its target sentences as references."""
    if len(train_cs) != len(train_tgt):
        raise UserError(f"commongen train files are not line-aligned ({len(train_cs)} concept sets vs "
                        f"{len(train_tgt)} targets)")
    grouped: dict[str, list[str]] = {}
    for cs, tgt in zip(train_cs, train_tgt):
        grouped.setdefault(cs.strip(), []).append(tgt.strip())
    out = []
    for ix, (cs, refs) in enumerate(grouped.items()):
        concepts = commongen_concepts(cs)
        out.append(record(f"commongen_train_{ix}", "train", commongen_prompt(concepts), refs,
                          {"concepts": concepts, "concept_set": cs}))
    for ix, row in enumerate(dev_rows):
        concepts = commongen_concepts(row["concept_set"])
        out.append(record(f"commongen_validation_{ix}", "validation", commongen_prompt(concepts),
                          [s.strip() for s in row["scene"]], {"concepts": concepts, "concept_set": row["concept_set"]}))
    return out


# --------------------------------------------------------------------------------------------------
# Paper normalisers (source schema -> records); pure, no I/O


def shuffle_permutation(n: int, seed: int) -> np.ndarray:
    """The order ``datasets.Dataset.shuffle(seed=seed)`` produces: ``np.random.default_rng(seed).permutation(n)``."""
    return np.random.default_rng(seed).permutation(n)


def normalise_imdb(train_rows: list[dict], test_rows: list[dict], seed: int = IMDB_SEED) -> list[dict]:
    """HF imdb rows ``{"text", "label"}`` (1 = positive) -> RL4LMs' IMDB pool (only_positive_samples=True).

    Train/validation = the first 80 % / the rest of HF train shuffled with ``seed``; train keeps
    positives only; test = the first 5,000 of HF test shuffled with ``seed``. ids are the position in
    the shuffled split (as RL4LMs' ``{split}_{ix}``).
    """
    out = []
    perm = shuffle_permutation(len(train_rows), seed)
    cut = int(len(train_rows) * IMDB_TRAIN_RATIO)
    test_perm = shuffle_permutation(len(test_rows), seed)[:IMDB_TEST_SIZE]
    for split, idx in (("train", perm[:cut]), ("validation", perm[cut:])):
        for ix, j in enumerate(idx):
            row = train_rows[j]
            if split == "train" and int(row["label"]) != 1:
                continue
            out.append(record(f"{split}_{ix}", split, first_half_space_tokens(row["text"]), [row["text"]],
                              {"label": int(row["label"]), "source_index": int(j)}))
    for ix, j in enumerate(test_perm):
        row = test_rows[j]
        out.append(record(f"test_{ix}", "test", first_half_space_tokens(row["text"]), [row["text"]],
                          {"label": int(row["label"]), "source_index": int(j)}))
    return out


def normalise_common_gen(rows: list[dict], split: str) -> list[dict]:
    """GEM common_gen rows ``{"concepts": [..], "target": str, "references": [..]?}`` -> one record per row.

    As RL4LMs: references = [target] (an empty target -- the GEM test split -- gives no reference here,
    where RL4LMs put the placeholder "empty reference"); GEM's full reference list is kept in meta.
    """
    out = []
    for ix, row in enumerate(rows):
        concepts = list(row["concepts"])
        target = row.get("target") or ""
        meta = {"concepts": concepts}
        for key in ("gem_id", "concept_set_id"):
            if key in row:
                meta[key] = row[key]
        if row.get("references") is not None:
            meta["all_references"] = list(row["references"])
        out.append(record(f"{split}_{ix}", split, commongen_prompt(concepts), [target] if target else [], meta))
    return out


def _adjusted_offsets(table: list[list[dict]]) -> list[list[tuple[int, int]]]:
    """Per cell, its [start, end) in real columns, counting column spans of the cells to its left."""
    spans = []
    for row in table:
        start, row_spans = 0, []
        for cell in row:
            width = int(cell.get("column_span", 1) or 1)
            row_spans.append((start, start + width))
            start += width
        spans.append(row_spans)
    return spans


def totto_subtable(table: list[list[dict]], highlighted: list) -> list[dict]:
    """Highlighted cells with their heuristic headers (the ToTTo baseline heuristic).

    Row headers: header cells to the left in the same row (by cell index). Column headers: header cells
    in rows above whose real-column span overlaps the cell's span.
    """
    spans = _adjusted_offsets(table)
    out = []
    for r, c in highlighted:
        r, c = int(r), int(c)
        cell = table[r][c]
        row_headers = [table[r][i] for i in range(c) if table[r][i]["is_header"]]
        lo, hi = spans[r][c]
        col_headers = [table[rr][cc] for rr in range(r) for cc in range(len(table[rr]))
                       if table[rr][cc]["is_header"] and spans[rr][cc][0] < hi and spans[rr][cc][1] > lo]
        out.append({"cell": cell, "row_headers": row_headers, "col_headers": col_headers})
    return out


def totto_linearise(subtable: list[dict], page_title: str | None = None, section_title: str | None = None) -> str:
    parts = []
    if page_title:
        parts.append(f"<page_title> {page_title} </page_title> ")
    if section_title:
        parts.append(f"<section_title> {section_title} </section_title> ")
    parts.append("<table> ")
    for item in subtable:
        s = f"<cell> {item['cell']['value']} "
        s += "".join(f"<col_header> {h['value']} </col_header> " for h in item["col_headers"])
        s += "".join(f"<row_header> {h['value']} </row_header> " for h in item["row_headers"])
        parts.append(s + "</cell> ")
    parts.append("</table>")
    return "".join(parts)


def totto_prompt(table, highlighted, page_title, section_title) -> str:
    """RL4LMs' 'subtable' representation: the bare subtable string, then the same with titles, no separator."""
    sub = totto_subtable(table, highlighted)
    return totto_linearise(sub) + totto_linearise(sub, page_title, section_title)


def _final_sentences(annotations) -> list[str]:
    if not annotations:
        return []
    if isinstance(annotations, dict):  # HF Sequence(dict) -> dict of lists
        return [s for s in annotations.get("final_sentence", []) if s]
    return [a["final_sentence"] for a in annotations if a.get("final_sentence")]  # list of dicts


def normalise_totto(rows: list[dict], split: str) -> list[dict]:
    """HF totto rows (``table``, ``highlighted_cells``, ``table_page_title``, ``table_section_title``,
    ``sentence_annotations``) -> records; references = the final sentences (none for test)."""
    out = []
    for ix, row in enumerate(rows):
        prompt = totto_prompt(row["table"], row["highlighted_cells"], row.get("table_page_title"),
                              row.get("table_section_title"))
        refs = [] if split == "test" else _final_sentences(row.get("sentence_annotations"))
        meta = {k: row[k] for k in ("example_id", "table_page_title", "table_section_title") if k in row}
        meta["highlighted_cells"] = [[int(r), int(c)] for r, c in row["highlighted_cells"]]
        out.append(record(f"{split}_{ix}", split, prompt, refs, meta))
    return out


def normalise_iwslt2017(rows: list[dict], split: str) -> list[dict]:
    """HF iwslt2017 (config iwslt2017-de-en) rows ``{"translation": {"de", "en"}}`` -> en->de records."""
    return [record(f"{split}_{ix}", split, IWSLT_PREFIX + row["translation"]["en"], [row["translation"]["de"]])
            for ix, row in enumerate(rows)]


def normalise_cnn_dailymail(rows: list[dict], split: str) -> list[dict]:
    """HF cnn_dailymail 3.0.0 rows ``{"article", "highlights", "id"}`` -> records."""
    return [record(f"{split}_{ix}", split, CNN_PREFIX + row["article"], [row["highlights"]],
                   {"source_id": row["id"]} if "id" in row else {})
            for ix, row in enumerate(rows)]


def parse_unifiedqa_tsv(text: str, source: str = "narrativeqa.tsv") -> list[tuple[str, str]]:
    """UnifiedQA TSV lines ``"question \\n summary \t answer"`` -> [(input, answer)] (no quoting)."""
    rows = []
    for lineno, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        fields = line.split("\t")
        if len(fields) != 2:
            raise UserError(f"{source}:{lineno}: expected 2 tab-separated fields, got {len(fields)}")
        rows.append((fields[0], fields[1]))
    return rows


def normalise_narrative_qa(rows: list[tuple[str, str]], split: str) -> list[dict]:
    """Group answers per input (first-seen order); prompt = input lower-cased; answers lower-cased, stripped."""
    grouped: dict[str, list[str]] = {}
    for inp, answer in rows:
        grouped.setdefault(inp, []).append(answer)
    out = []
    for ix, (inp, answers) in enumerate(grouped.items()):
        question, _, context = inp.partition("\\n")
        out.append(record(f"{split}_{ix}", split, inp.lower(), [a.lower().strip() for a in answers],
                          {"question": question.strip(), "context": context.strip()}))
    return out


def normalise_daily_dialog(rows: list[dict], split: str, context_size: int = DAILYDIALOG_CONTEXT) -> list[dict]:
    """HF daily_dialog rows ``{"dialog": [..], "act": [..], "emotion": [..]}`` -> one record per turn
    with at least ``context_size`` previous utterances (utterances kept verbatim)."""
    out = []
    for d, row in enumerate(rows):
        dialog = list(row["dialog"])
        acts = list(row.get("act") or [None] * len(dialog))
        emotions = list(row.get("emotion") or [None] * len(dialog))
        for t in range(context_size, len(dialog)):
            prompt = DAILYDIALOG_EOU.join(dialog[t - context_size:t]) + " " + DAILYDIALOG_EOU
            out.append(record(f"{split}_{d}_{t}", split, prompt, [dialog[t] + DAILYDIALOG_EOU],
                              {"dialog_index": d, "turn": t, "intent": acts[t], "emotion": emotions[t]}))
    return out
