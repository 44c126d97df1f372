"""CHES scores and the two baseline similarity measures of P2 §5 (Razin et al., ICLR 2025).

For every preference record ``{"id", "prompt", "chosen", "rejected"}`` this computes, from ONE forward
pass of the transformer body (``model.model``, no LM head) per response sequence:

* ``ches``       = ⟨S+, S−⟩ − ‖S+‖²                                   (Definition 2)
* ``ches_ln``    = ⟨S+, S−⟩ / (n+·n−) − ‖S+‖² / n+²                   (Definition 3, length-normalised)
* ``minus_edit_distance`` = −Levenshtein(y+ tokens, y− tokens) / max(|y+|, |y−|)
* ``hidden_inner_prod``   = ⟨h_last(x, y+), h_last(x, y−)⟩

Position conventions (checked against the official ``compute_preference_similarity_per_example.py``,
which slices ``hidden_states[-1][0][query_len - 1:]`` of an unpadded ``prompt + response`` sequence with
no EOS appended, and against ``ches/ches.py::compute_ches_scores``):

* A sequence is ``prompt ids (P tokens) + response ids (R tokens)``; NO EOS / end-of-turn is appended.
* ``S±`` = the sum of the last-layer hidden states (after the final norm, i.e. what
  ``output_hidden_states[-1]`` and ``model.model(...).last_hidden_state`` return) at positions
  ``P-1, P, ..., P+R-1``: the last prompt token (which predicts y_1) through the last response token.
  That is ``n = R + 1`` hidden states, ``h_{x, y<k}`` for k = 1..R+1 — the state predicting each
  response token plus the one after the last response token, where the EOS would be predicted.
  ``ches/ches.py`` reaches the same set from a sequence that ends with an appended EOS: it zeroes
  positions before the last prompt token and drops the final (EOS) position.
* ``n± = R± + 1`` is the length used in ``ches_ln`` (the official per-example script divides by
  ``hidden_embed.shape[0]`` of that slice, i.e. R + 1).
* ``h_last`` = the hidden state at the last position ``P+R-1`` (the last response token), the official
  ``preferred_hidden_embed[-1]``.
* Edit distance is over the response token ids only (no prompt, no EOS), as the official
  ``text_w[0][query_len:]``; two empty lists give 0.

Differences from the official script (deliberate): the prompt and the response are tokenised
separately and their id lists concatenated, so the response boundary is exact (the official code
tokenises ``query + response`` as one string and assumes the query tokens are a prefix); prompts and
responses are truncated separately (below) instead of cutting ``prompt + response`` at 512 from the
right; records are batched and sorted by length: right padding, explicit position ids 0..L-1 per
row, and the padding mask selecting which positions enter the sums (with right padding the causal
mask alone keeps every real position from attending to a pad, so the model is called without the
padding mask: same numbers, faster SDPA path).

Truncation (:func:`encode_record`; the same tokens are trained on by :mod:`experiments.ches.dpo`). A
rendered prompt longer than ``max_prompt_tokens`` keeps, exactly, the template's tokens before the
prompt text (e.g. SmolLM2's default system turn and ``<|im_start|>user\\n``) and after it
(``<|im_end|>\\n<|im_start|>assistant\\n``), found by :func:`prompt_frame`; of the text between them
it keeps the first ⌈C/2⌉ and the last ⌊C/2⌋ tokens (C = the budget the template leaves) and drops
the middle (:func:`truncate_prompt`). So the start of the user turn and the words just before the
assistant turn survive, and the kept prompt is exactly ``max_prompt_tokens`` long; a budget that
cannot hold the template plus one token of text is an error. Each response keeps its first
``max_response_tokens`` tokens. The CSV records per pair the tokens dropped from each part
(``*_tokens_dropped``; ``truncated`` is 1 when any is > 0), :func:`score_file` their totals.

Prompt formats (``experiments.persona.prompts.resolve_format``): chat = the prompt as one user turn
rendered with ``apply_chat_template(..., add_generation_prompt=True)`` and encoded with
``add_special_tokens=False``; plain = ``prompt + "\\n"`` encoded with the tokenizer's special tokens
(BOS where it adds one). In both formats the response ids are ``tokenizer.encode(response,
add_special_tokens=False)`` appended after the prompt ids: the response is assistant text with no
end-of-turn token.

Numerics: the forward runs in fp32, or in bf16 (native bf16 weights as the CLI loads them, or
autocast of an fp32 model); hidden states are cast to float64 before any sum or inner product.
"""

from __future__ import annotations

import csv
import json
import logging
import math
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import torch

from experiments.common.cli import UserError
from experiments.common.io import atomic_path
from experiments.common.torchutil import autocast

log = logging.getLogger(__name__)

PARTS = ("prompt", "chosen", "rejected")
COLUMNS = ["id", "ches", "ches_ln", "minus_edit_distance", "hidden_inner_prod",
           "prompt_tokens", "chosen_tokens", "rejected_tokens", "truncated",
           "prompt_tokens_dropped", "chosen_tokens_dropped", "rejected_tokens_dropped"]
MEASURES = ("ches", "ches_ln", "minus_edit_distance", "hidden_inner_prod")
REQUIRED_KEYS = ("id", "prompt", "chosen", "rejected")


# ----------------------------------------------------------------------------------------------- math
def ches_from_sums(s_pos: torch.Tensor, s_neg: torch.Tensor, n_pos, n_neg) -> tuple[torch.Tensor, torch.Tensor]:
    """(CHES, length-normalised CHES) from summed hidden states ``S+``/``S−`` ([..., d]) and counts."""
    s_pos, s_neg = s_pos.double(), s_neg.double()
    cross = (s_pos * s_neg).sum(-1)
    sq = (s_pos * s_pos).sum(-1)
    n_pos = torch.as_tensor(n_pos, dtype=torch.float64)
    n_neg = torch.as_tensor(n_neg, dtype=torch.float64)
    return cross - sq, cross / (n_pos * n_neg) - sq / (n_pos * n_pos)


def response_sums(hidden: torch.Tensor, prompt_len: int) -> tuple[torch.Tensor, int, torch.Tensor]:
    """For ONE unpadded sequence's last hidden states ``[L, d]``: (S, n, h_last) over positions
    ``prompt_len-1 .. L-1`` (the last prompt token through the last response token), in float64."""
    h = hidden[prompt_len - 1:].double()
    return h.sum(0), h.shape[0], h[-1]


def scores_from_hidden(h_pos: torch.Tensor, h_neg: torch.Tensor, prompt_len: int) -> dict:
    """Reference (unbatched) CHES / ln-CHES / last-hidden inner product from two unpadded ``[L, d]``
    last-hidden-state tensors that share a prompt of ``prompt_len`` tokens."""
    s_p, n_p, last_p = response_sums(h_pos, prompt_len)
    s_n, n_n, last_n = response_sums(h_neg, prompt_len)
    ches, ches_ln = ches_from_sums(s_p, s_n, n_p, n_n)
    return {"ches": float(ches), "ches_ln": float(ches_ln), "hidden_inner_prod": float((last_p * last_n).sum())}


def edit_distance(a, b) -> int:
    """Token-level Levenshtein distance (unit insert / delete / substitute)."""
    if len(a) < len(b):
        a, b = b, a
    prev = list(range(len(b) + 1))
    for i, x in enumerate(a, 1):
        cur = [i] + [0] * len(b)
        for j, y in enumerate(b, 1):
            cur[j] = prev[j - 1] if x == y else 1 + min(prev[j - 1], prev[j], cur[j - 1])
        prev = cur
    return prev[-1]


def minus_normalized_edit_distance(a, b) -> float:
    """−Levenshtein(a, b) / max(|a|, |b|); 0.0 for identical lists (including two empty ones)."""
    m = max(len(a), len(b))
    return 0.0 if m == 0 else -edit_distance(list(a), list(b)) / m


# ---------------------------------------------------------------------------------------- tokenising
@dataclass
class Encoded:
    id: str
    prompt: list[int]
    chosen: list[int]
    rejected: list[int]
    truncated: dict = field(default_factory=dict)  # part -> number of tokens cut


PROMPT_SLOT = "@@ches-prompt@@"  # rendered in place of the prompt text to find the template around it


def _prompt_text(tokenizer, prompt: str, fmt: str) -> str:
    if fmt == "chat":
        return tokenizer.apply_chat_template([{"role": "user", "content": prompt}], tokenize=False,
                                             add_generation_prompt=True)
    return prompt + "\n"


def _encode_prompt_text(tokenizer, text: str, fmt: str) -> list[int]:
    return tokenizer.encode(text, add_special_tokens=fmt != "chat")


def render_prompt_ids(tokenizer, prompt: str, fmt: str) -> list[int]:
    return _encode_prompt_text(tokenizer, _prompt_text(tokenizer, prompt, fmt), fmt)


def prompt_frame(tokenizer, ids: list[int], fmt: str) -> tuple[int, int]:
    """(header, closing): how many leading and trailing tokens of a rendered prompt's ``ids`` are the
    template's, not the prompt text's.

    The template is rendered around :data:`PROMPT_SLOT`; the text before the slot (chat: the system
    turn the template adds, if any, and the user-turn marker; plain: nothing but the tokenizer's BOS)
    and the text after it (chat: the end of the turn and the generation prompt; plain: the ``"\\n"``)
    are encoded as the prompt is, and matched against the start and the end of ``ids``. A token that
    straddles the template and the prompt text counts as text."""
    text = _prompt_text(tokenizer, PROMPT_SLOT, fmt)
    if text.count(PROMPT_SLOT) != 1:
        raise UserError("the chat template does not render the user message exactly once: "
                        "cannot tell its header from the prompt text")
    head, tail = text.split(PROMPT_SLOT)
    head_ids, tail_ids = _encode_prompt_text(tokenizer, head, fmt), _encode_prompt_text(tokenizer, tail, fmt)
    n_head = 0
    while n_head < min(len(ids), len(head_ids)) and ids[n_head] == head_ids[n_head]:
        n_head += 1
    n_tail = 0
    while (n_tail < min(len(ids) - n_head, len(tail_ids))
           and ids[len(ids) - 1 - n_tail] == tail_ids[len(tail_ids) - 1 - n_tail]):
        n_tail += 1
    return n_head, n_tail


def truncate_prompt(ids: list[int], max_tokens: int, n_head: int, n_tail: int) -> list[int]:
    """``ids`` cut to ``max_tokens`` (unchanged when not longer): the first ``n_head`` and the last
    ``n_tail`` tokens (the template's, :func:`prompt_frame`) are kept, and of the prompt text between
    them the first ⌈C/2⌉ and the last ⌊C/2⌋ tokens, C = ``max_tokens - n_head - n_tail``: the middle of
    the text is what is dropped (``len(ids) - max_tokens`` tokens)."""
    if len(ids) <= max_tokens:
        return list(ids)
    room = max_tokens - n_head - n_tail
    if room < 1:
        raise ValueError(f"{max_tokens} tokens leave no room for the prompt text between the template's "
                         f"{n_head} header and {n_tail} closing tokens")
    first = (room + 1) // 2
    return list(ids[:n_head + first]) + list(ids[len(ids) - n_tail - (room - first):])


def encode_record(tokenizer, rec: dict, fmt: str, max_prompt_tokens: int | None,
                  max_response_tokens: int | None, where: str) -> Encoded:
    """Tokenise one record; a long prompt loses the middle of its text (:func:`truncate_prompt`), long
    responses their end. ``truncated`` maps each cut part to the number of tokens dropped."""
    p = render_prompt_ids(tokenizer, rec["prompt"], fmt)
    c = tokenizer.encode(rec["chosen"], add_special_tokens=False)
    r = tokenizer.encode(rec["rejected"], add_special_tokens=False)
    cut = {}
    if max_prompt_tokens and len(p) > max_prompt_tokens:
        cut["prompt"] = len(p) - max_prompt_tokens
        try:
            p = truncate_prompt(p, max_prompt_tokens, *prompt_frame(tokenizer, p, fmt))
        except ValueError as e:
            raise UserError(f"{where}: --max-prompt-tokens {max_prompt_tokens}: {e}") from None
    if max_response_tokens:
        for name, ids in (("chosen", c), ("rejected", r)):
            if len(ids) > max_response_tokens:
                cut[name] = len(ids) - max_response_tokens
        c, r = c[:max_response_tokens], r[:max_response_tokens]
    for name, ids in (("prompt", p), ("chosen", c), ("rejected", r)):
        if not ids:
            raise UserError(f"{where}: record {rec['id']!r} has an empty {name} (0 tokens after truncation)")
    return Encoded(str(rec["id"]), p, c, r, cut)


def iter_records(path: str | os.PathLike) -> Iterator[tuple[str, dict]]:
    """Stream ``(file:line, record)`` from a JSONL file, validating the four keys (strings)."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"data file {path} does not exist")
    n = 0
    try:
        with open(path, encoding="utf-8") as f:
            for lineno, line in enumerate(f, 1):
                if not line.strip():
                    continue
                where = f"{path}:{lineno}"
                try:
                    rec = json.loads(line)
                except json.JSONDecodeError as e:
                    raise UserError(f"{where}: not valid JSON ({e.msg})") from None
                if not isinstance(rec, dict):
                    raise UserError(f"{where}: a record must be a JSON object")
                missing = [k for k in REQUIRED_KEYS if k not in rec]
                if missing:
                    raise UserError(f"{where}: record is missing key(s) {', '.join(missing)}")
                bad = [k for k in ("prompt", "chosen", "rejected") if not isinstance(rec[k], str)]
                if bad:
                    raise UserError(f"{where}: {', '.join(bad)} must be string(s)")
                n += 1
                yield where, rec
    except UnicodeDecodeError as e:
        raise UserError(f"{path}: not UTF-8 text ({e.reason} at byte {e.start})") from None
    if n == 0:
        raise UserError(f"data file {path} has no records")


# ------------------------------------------------------------------------------------------- forward
def body_of(model):
    """The transformer body (no LM head) of a causal LM: ``model.model`` (Llama/Qwen/...) or the
    ``base_model_prefix`` attribute (``transformer`` for GPT-2)."""
    body = getattr(model, getattr(model, "base_model_prefix", "model"), None)
    return body if body is not None else model.model


@torch.no_grad()
def sequence_stats(body, seqs: list[list[int]], starts: list[int], batch_size: int, device: torch.device,
                   precision: str, pad_id: int = 0, progress=None,
                   pad_mask_in_attention: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """For each sequence: (float64 sum of last hidden states over positions ``start-1 .. end``, float64
    last hidden state). Sequences are sorted by length and right-padded in batches of ``batch_size``.

    ``precision='bf16'`` autocasts a float32 model to bf16 matmuls; a model already in bf16 (native
    bf16 weights, what the CLI loads for bf16: ~1.3x faster than autocast on AMX) runs as it is."""
    order = sorted(range(len(seqs)), key=lambda i: len(seqs[i]))
    sums: list = [None] * len(seqs)
    lasts: list = [None] * len(seqs)
    for b in range(0, len(order), batch_size):
        idx = order[b:b + batch_size]
        lens = [len(seqs[i]) for i in idx]
        width = max(lens)
        ids = torch.full((len(idx), width), pad_id, dtype=torch.long)
        mask = torch.zeros((len(idx), width), dtype=torch.long)
        for row, i in enumerate(idx):
            ids[row, :lens[row]] = torch.tensor(seqs[i], dtype=torch.long)
            mask[row, :lens[row]] = 1
        pos = torch.arange(width, dtype=torch.long).unsqueeze(0).expand(len(idx), width)
        # Right padding + the causal mask: a real position never attends to a pad (pads only follow
        # real tokens), so the padding mask is needed only to pick the positions summed below. Passing
        # it to the model as well (pad_mask_in_attention=True) gives the same numbers but, on CPU, drops
        # SDPA's is_causal fast path (~25 % slower on SmolLM2).
        use_autocast = precision == "bf16" and next(body.parameters()).dtype == torch.float32
        with autocast("bf16" if use_autocast else "fp32", device):
            out = body(input_ids=ids.to(device), position_ids=pos.to(device), use_cache=False,
                       **({"attention_mask": mask.to(device)} if pad_mask_in_attention else {}))
        hid = out.last_hidden_state if hasattr(out, "last_hidden_state") else out[0]
        lens_t = torch.tensor(lens, device=hid.device)
        starts_t = torch.tensor([starts[i] - 1 for i in idx], device=hid.device)
        ar = torch.arange(width, device=hid.device).unsqueeze(0)
        keep = (ar >= starts_t.unsqueeze(1)) & (ar < lens_t.unsqueeze(1))
        h64 = hid.double()
        s = (h64 * keep.unsqueeze(-1)).sum(1).cpu()
        last = h64[torch.arange(len(idx), device=hid.device), lens_t - 1].cpu()
        for row, i in enumerate(idx):
            sums[i], lasts[i] = s[row], last[row]
        if progress is not None:
            progress.update(len(idx) / 2)
    return torch.stack(sums), torch.stack(lasts)


def score_encoded(body, encs: list[Encoded], batch_size: int, device, precision: str, pad_id: int = 0,
                  progress=None) -> list[dict]:
    """Score a chunk of encoded records (both responses of every record go through one sorted queue)."""
    seqs, starts = [], []
    for e in encs:
        for resp in (e.chosen, e.rejected):
            seqs.append(e.prompt + resp)
            starts.append(len(e.prompt))
    sums, lasts = sequence_stats(body, seqs, starts, batch_size, device, precision, pad_id, progress)
    s_pos, s_neg = sums[0::2], sums[1::2]
    n_pos = torch.tensor([len(e.chosen) + 1 for e in encs], dtype=torch.float64)
    n_neg = torch.tensor([len(e.rejected) + 1 for e in encs], dtype=torch.float64)
    ches, ches_ln = ches_from_sums(s_pos, s_neg, n_pos, n_neg)
    inner = (lasts[0::2] * lasts[1::2]).sum(-1)
    rows = []
    for k, e in enumerate(encs):
        rows.append({"id": e.id, "ches": float(ches[k]), "ches_ln": float(ches_ln[k]),
                     "minus_edit_distance": minus_normalized_edit_distance(e.chosen, e.rejected),
                     "hidden_inner_prod": float(inner[k]), "prompt_tokens": len(e.prompt),
                     "chosen_tokens": len(e.chosen), "rejected_tokens": len(e.rejected),
                     "truncated": int(bool(e.truncated)),
                     **{f"{part}_tokens_dropped": e.truncated.get(part, 0) for part in PARTS}})
    return rows


def _fmt(v):
    return repr(v) if isinstance(v, float) else v


def score_file(model, tokenizer, data: str | os.PathLike, out: str | os.PathLike | None, *,
               prompt_format: str = "auto", max_prompt_tokens: int | None = 128,
               max_response_tokens: int | None = 128, batch_size: int = 8, precision: str = "fp32",
               device: torch.device | str = "cpu", chunk_records: int = 512, progress: bool = True) -> dict:
    """Stream ``data`` (JSONL) in chunks, score it, and write the CSV ``out`` (atomic) in input order.

    Returns a summary: counts, truncated records per part (``truncated``) and the tokens they lost
    (``tokens_dropped``), token count, seconds; ``rows`` holds the
    score rows only when ``out`` is None (benchmarks/tests)."""
    from experiments.persona.prompts import resolve_format

    if batch_size < 1:
        raise UserError(f"--batch-size must be >= 1 (got {batch_size})")
    for name, v in (("--max-prompt-tokens", max_prompt_tokens), ("--max-response-tokens", max_response_tokens)):
        if v is not None and v < 0:
            raise UserError(f"{name} must be >= 0 (0 = no limit), got {v}")
    if precision not in ("fp32", "bf16"):
        raise UserError(f"unknown precision {precision!r}: use fp32 or bf16")
    fmt = resolve_format(tokenizer, prompt_format)
    device = torch.device(device)
    body = body_of(model)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    # a cheap validation pass first (keys, tokenisation, truncation), so that a bad record fails with one
    # line before any forward pass and the progress bar knows its total
    total = 0
    for where, rec in iter_records(data):
        encode_record(tokenizer, rec, fmt, max_prompt_tokens or None, max_response_tokens or None, where)
        total += 1
    bar = None
    if progress:
        from tqdm import tqdm
        bar = tqdm(total=total, unit="pair", desc="ches", dynamic_ncols=True)
    summary = {"records": 0, "truncated_records": 0, "truncated": dict.fromkeys(PARTS, 0),
               "tokens_dropped": dict.fromkeys(PARTS, 0), "tokens": 0, "format": fmt, "precision": precision}
    kept_rows = [] if out is None else None
    t0 = time.perf_counter()

    def chunks():
        buf = []
        for where, rec in iter_records(data):
            buf.append(encode_record(tokenizer, rec, fmt, max_prompt_tokens or None, max_response_tokens or None,
                                     where))
            if len(buf) >= chunk_records:
                yield buf
                buf = []
        if buf:
            yield buf

    def run(writer):
        for encs in chunks():
            for e in encs:
                summary["records"] += 1
                summary["truncated_records"] += bool(e.truncated)
                for part, n in e.truncated.items():
                    summary["truncated"][part] += 1
                    summary["tokens_dropped"][part] += n
                summary["tokens"] += 2 * len(e.prompt) + len(e.chosen) + len(e.rejected)
            for row in score_encoded(body, encs, batch_size, device, precision, pad_id, bar):
                if writer is not None:
                    writer.writerow([_fmt(row[c]) for c in COLUMNS])
                else:
                    kept_rows.append(row)

    try:
        if out is None:
            run(None)
        else:
            with atomic_path(out) as tmp, open(tmp, "w", newline="", encoding="utf-8") as f:
                w = csv.writer(f)
                w.writerow(COLUMNS)
                run(w)
                f.flush()
    finally:
        if bar is not None:
            bar.close()
    summary["seconds"] = time.perf_counter() - t0
    if kept_rows is not None:
        summary["rows"] = kept_rows
    t, d = summary["truncated"], summary["tokens_dropped"]
    log.info("scored %d pairs (%s format, %s) in %.1fs; truncated records: %d (prompt %d, chosen %d, rejected %d); "
             "tokens dropped: prompt %d, chosen %d, rejected %d", summary["records"], fmt, precision,
             summary["seconds"], summary["truncated_records"], t["prompt"], t["chosen"], t["rejected"],
             d["prompt"], d["chosen"], d["rejected"])
    return summary


def read_scores(path: str | os.PathLike) -> list[dict]:
    """Read a scores CSV written by :func:`score_file` (measures as floats)."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"scores file {path} does not exist")
    with open(path, newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        if reader.fieldnames is None or "id" not in reader.fieldnames:
            raise UserError(f"{path}: not a CHES scores CSV (no 'id' column)")
        rows = list(reader)
    if not rows:
        raise UserError(f"scores file {path} has no rows")
    for lineno, r in enumerate(rows, 2):
        for m in MEASURES:
            if m in r:
                try:
                    r[m] = float(r[m])
                except ValueError:
                    raise UserError(f"{path}:{lineno}: {m} is not a number ({r[m]!r})") from None
                if math.isnan(r[m]):
                    raise UserError(f"{path}:{lineno}: {m} is NaN")
    return rows
