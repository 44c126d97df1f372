"""Throughput/agreement benchmark of the CHES scorer against the official procedure's shape.

    python -m experiments.ches.bench --model DIR --data in.jsonl --n 48 [--batch-size 8] [--threads 0]

``--data`` is either our schema ({id, prompt, chosen, rejected}) or the UltraFeedback-binarized schema
(``chosen``/``rejected`` = [user msg, assistant msg]; prompt = chosen[0].content). The first ``--n``
records are used, truncated to ``--max-prompt-tokens``/``--max-response-tokens`` (128/128).

Rows printed (one table):
* matmul fp32 / bf16: measured FLOP/s of 2048×2048 @ 2048×2048 (2·2048³ FLOP each);
* official shape: one record per forward, no padding, fp32, the full causal LM (with LM head) called
  with ``output_hidden_states=True`` as ``compute_preference_similarity_per_example.py`` does;
* scorer fp32 / bf16 (autocast) / bf16-weights (native bf16 weights): our batched body-only scorer.
  achieved FLOP/s = 2 × non-embedding params × tokens / time, and its share of the matmul FLOP/s of the
  precision used; speed-up = pairs/s over the official shape's;
* agreement of the bf16 rows with scorer fp32: Spearman of ches and ches_ln, and the share of items in
  the same quintile of ches_ln.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import torch

from experiments.common.cli import UserError, main_guard, thread_count


def matmul_flops(dtype: torch.dtype, size: int = 2048, reps: int = 10, trials: int = 5,
                 trial_seconds: float = 0.5) -> float:
    """The best of ``trials`` timings of ``reps`` products of two ``size``² matrices, in FLOP/s
    (2·size³ per product): the machine's attainable matmul rate for ``dtype`` (best, not mean: a ceiling).
    ``reps`` shrinks (to 1 at least) so that a trial takes about ``trial_seconds``: on a CPU without fast
    bf16 one 2048³ bf16 product takes ~17 s, and 53 of them would take a quarter of an hour."""
    a = torch.randn(size, size).to(dtype)
    b = torch.randn(size, size).to(dtype)
    t = time.perf_counter()
    a @ b
    first = time.perf_counter() - t
    reps = max(1, min(reps, int(trial_seconds / max(first, 1e-9))))
    if first < 0.1:
        for _ in range(2):
            a @ b
    best = float("inf")
    for _ in range(trials if first < 1.0 else 2):
        t = time.perf_counter()
        for _ in range(reps):
            a @ b
        best = min(best, time.perf_counter() - t)
    return 2 * size ** 3 * reps / best


def load_bench_records(path, n: int) -> list[dict]:
    path = Path(path)
    if not path.is_file():
        raise UserError(f"data file {path} does not exist")
    out = []
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            r = json.loads(line)
            if isinstance(r.get("chosen"), list):
                r = {"id": str(r.get("prompt_id") or f"{path.stem}-{lineno}"), "prompt": r["chosen"][0]["content"],
                     "chosen": r["chosen"][1]["content"], "rejected": r["rejected"][1]["content"]}
            out.append(r)
            if len(out) >= n:
                break
    if not out:
        raise UserError(f"data file {path} has no records")
    return out


def non_embedding_params(model) -> int:
    emb = {id(p) for p in model.get_input_embeddings().parameters()}
    out_emb = model.get_output_embeddings()
    if out_emb is not None:
        emb |= {id(p) for p in out_emb.parameters()}
    return sum(p.numel() for p in model.parameters() if id(p) not in emb)


def rank_quintiles(values) -> list[int]:
    from experiments.ches.subsets import _order

    order = _order(values)
    q = [0] * len(order)
    for r, i in enumerate(order):
        q[i] = r * 5 // len(order)
    return q


def official_shape_seconds(model, encs) -> float:
    """Seconds for the official procedure's shape: per record, two unpadded fp32 forwards of the full causal
    LM (LM head included) with ``output_hidden_states=True``, then the scores from the last hidden states."""
    from experiments.ches.scorer import scores_from_hidden

    with torch.no_grad():
        e0 = encs[0]
        model(input_ids=torch.tensor([e0.prompt + e0.chosen]), output_hidden_states=True)  # warm-up
        t = time.perf_counter()
        for e in encs:
            hp = model(input_ids=torch.tensor([e.prompt + e.chosen]), output_hidden_states=True).hidden_states[-1][0]
            hn = model(input_ids=torch.tensor([e.prompt + e.rejected]), output_hidden_states=True).hidden_states[-1][0]
            scores_from_hidden(hp, hn, len(e.prompt))
        return time.perf_counter() - t


def measure(model_dir, recs: list[dict], *, batch_size: int, max_prompt_tokens: int, max_response_tokens: int,
            prompt_format: str = "auto", variants=("fp32", "bf16", "bf16-weights")) -> dict:
    """Time the official shape and our scorer's ``variants`` (``fp32``, ``bf16`` = autocast over fp32
    weights, ``bf16-weights`` = native bf16 weights, as ``python -m experiments.ches score --precision
    bf16`` loads them) on the same records. Each scorer variant gets one warm-up pass over the records.

    Returns pairs, tokens (both sequences incl. the prompt), non-embedding params, the matmul FLOP/s per
    precision, the official shape's seconds, and per variant its seconds and score rows."""
    from experiments.ches.scorer import encode_record, score_file
    from experiments.models.load import load_causal_lm, load_tokenizer
    from experiments.persona.prompts import resolve_format

    tok = load_tokenizer(model_dir)
    model = load_causal_lm(model_dir, dtype=torch.float32)
    fmt = resolve_format(tok, prompt_format)
    encs = [encode_record(tok, r, fmt, max_prompt_tokens or None, max_response_tokens or None, r["id"])
            for r in recs]
    out = {"pairs": len(encs), "format": fmt, "n_params": non_embedding_params(model),
           "tokens": sum(2 * len(e.prompt) + len(e.chosen) + len(e.rejected) for e in encs),
           "peak": {"fp32": matmul_flops(torch.float32), "bf16": matmul_flops(torch.bfloat16)},
           "official_s": official_shape_seconds(model, encs), "variants": {}}
    with tempfile.TemporaryDirectory() as d:
        data = Path(d) / "bench.jsonl"
        data.write_text("".join(json.dumps(r) + "\n" for r in recs), encoding="utf-8")
        kw = {"prompt_format": fmt, "max_prompt_tokens": max_prompt_tokens or None,
              "max_response_tokens": max_response_tokens or None, "batch_size": batch_size,
              "device": "cpu", "progress": False}
        for name in variants:
            m = model if name != "bf16-weights" else load_causal_lm(model_dir, dtype=torch.bfloat16)
            prec = "fp32" if name == "fp32" else "bf16"
            score_file(m, tok, data, None, precision=prec, **kw)  # warm-up
            s = score_file(m, tok, data, None, precision=prec, **kw)
            out["variants"][name] = {"seconds": s["seconds"], "rows": s["rows"], "precision": prec}
    return out


def spearman(ref_rows: list[dict], rows: list[dict], key: str) -> float:
    from scipy.stats import spearmanr

    return float(spearmanr([r[key] for r in ref_rows], [r[key] for r in rows]).statistic)


@main_guard
def main(argv=None) -> None:
    from experiments.common.torchutil import set_threads

    ap = argparse.ArgumentParser(prog="python -m experiments.ches.bench", description=__doc__.splitlines()[0])
    ap.add_argument("--model", required=True)
    ap.add_argument("--data", required=True)
    ap.add_argument("--n", type=int, default=48)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--max-prompt-tokens", type=int, default=128)
    ap.add_argument("--max-response-tokens", type=int, default=128)
    ap.add_argument("--prompt-format", default="auto")
    ap.add_argument("--threads", type=thread_count, default=0)
    args = ap.parse_args(argv)
    set_threads(args.threads)
    torch.manual_seed(0)

    recs = load_bench_records(args.data, args.n)
    m = measure(args.model, recs, batch_size=args.batch_size, max_prompt_tokens=args.max_prompt_tokens,
                max_response_tokens=args.max_response_tokens, prompt_format=args.prompt_format)
    peak, tokens, n_params, n = m["peak"], m["tokens"], m["n_params"], m["pairs"]
    t_off = m["official_s"]
    off_pps = n / t_off
    rows = [("matmul 2048² fp32", None, None, peak["fp32"], None, None),
            ("matmul 2048² bf16", None, None, peak["bf16"], None, None),
            ("official shape (fp32, 1/forward, LM head)", off_pps, tokens / t_off,
             2 * n_params * tokens / t_off, 2 * n_params * tokens / t_off / peak["fp32"], 1.0)]
    labels = {"fp32": "scorer fp32", "bf16": "scorer bf16 (autocast)", "bf16-weights": "scorer bf16 weights"}
    for name, v in m["variants"].items():
        sec = v["seconds"]
        fl = 2 * n_params * tokens / sec
        rows.append((labels[name], n / sec, tokens / sec, fl, fl / peak[v["precision"]], n / sec / off_pps))

    print(f"\nCHES bench: {n} pairs, {tokens} tokens (both sequences incl. prompt), format {m['format']}, "
          f"truncation {args.max_prompt_tokens}/{args.max_response_tokens}, batch {args.batch_size}, "
          f"threads {torch.get_num_threads()}, non-embedding params {n_params / 1e6:.1f}M")
    hdr = f"{'row':44s} {'pairs/s':>8s} {'tok/s':>8s} {'GFLOP/s':>9s} {'of peak':>8s} {'speed-up':>8s}"
    print(hdr)
    print("-" * len(hdr))

    def f(v, spec):
        return f"{'':>{spec.split('.')[0]}s}" if v is None else format(v, spec)

    for name, pps, tps, fl, frac, su in rows:
        print(f"{name:44s} {f(pps, '8.2f')} {f(tps, '8.0f')} {f(fl / 1e9, '9.1f')} "
              f"{'' if frac is None else f'{100 * frac:7.1f}%'} {f(su, '7.2f')}{'' if su is None else 'x'}")
    ref = m["variants"]["fp32"]["rows"]
    print("\nagreement with scorer fp32   spearman(ches)  spearman(ches_ln)  same ches_ln quintile  same ches quintile")
    for name in ("bf16", "bf16-weights"):
        got = m["variants"][name]["rows"]
        sp = {k: spearman(ref, got, k) for k in ("ches", "ches_ln")}
        agree = {}
        for k in ("ches", "ches_ln"):
            qa, qb = rank_quintiles([r[k] for r in ref]), rank_quintiles([r[k] for r in got])
            agree[k] = sum(a == b for a, b in zip(qa, qb)) / len(qa)
        print(f"{labels[name]:28s} {sp['ches']:15.5f} {sp['ches_ln']:18.5f} {100 * agree['ches_ln']:21.1f}% "
              f"{100 * agree['ches']:18.1f}%")


if __name__ == "__main__":
    main()
