"""Data of the P1 §4.2 controlled experiments at paper scale: MNIST, CIFAR10 and GLUE STS-B.

Every file comes through the data seam :func:`experiments.data.mirror.fetch_file`: a mirror
directory (``--mirror``, else env ``SUITE_DATA_MIRROR``) first, then the Hugging Face Hub. The files
are the Hub's own parquet files, and the mirror keeps each one under the same relative path below
``controlled/<dataset>/``::

    <mirror>/controlled/mnist/mnist/train-00000-of-00001.parquet        (ylecun/mnist)
    <mirror>/controlled/mnist/mnist/test-00000-of-00001.parquet
    <mirror>/controlled/cifar10/plain_text/train-00000-of-00001.parquet  (uoft-cs/cifar10)
    <mirror>/controlled/cifar10/plain_text/test-00000-of-00001.parquet
    <mirror>/controlled/stsb/stsb/train-00000-of-00001.parquet           (nyu-mll/glue)
    <mirror>/controlled/stsb/stsb/validation-00000-of-00001.parquet

Schemas (the ``datasets`` library's parquet export): an image column is a struct
``{bytes: binary (PNG), path: string}`` (``image`` in MNIST, ``img`` in CIFAR10) next to an int
``label`` (0–9); STS-B has ``sentence1``, ``sentence2`` (strings), ``label`` (float similarity in
[0, 5]) and ``idx``. What was checked, with stored copies of the Hub pages and of public code that
reads these files: the six paths above exist on the repos' ``main`` branch (ylecun/mnist commit
77f3279 "Convert dataset to Parquet", uoft-cs/cifar10 "Convert dataset to Parquet (#6)",
nyu-mll/glue bed0457 "Add stsb data files"; 5,749 / 1,500 STS-B rows, and STS-B's test split is
unlabelled); the column names ``image``/``img``/``label`` (dataset cards) and the image struct's
``bytes`` field (public readers); STS-B's ``sentence1``/``sentence2``/``label``/``idx``. Not checked
(the Hub is unreachable here): the live files' bytes and exact arrow types; the loaders read the
columns by name and check shapes and label ranges instead.

Preprocessing (ours, vs the official code where they differ):

* subsample ``n_train`` / ``n_test`` rows with a seeded permutation (0 = every row); the official
  code draws a stratified subsample;
* images: PNG -> uint8 with PIL, then [n, C, H, W] float32 normalised with the per-channel mean and
  std of the *train subset* (the official code uses fixed per-dataset constants);
* STS-B: label = the similarity score rounded to the nearest integer, ties to even (Python's
  ``round``, as the official code) -> 6 classes 0–5; the pair is tokenised once with the model's
  tokenizer, truncated to 128 tokens and padded to the longest pair of the split (the official code
  pads to 512; the attention mask makes the two equivalent). Train = GLUE train, test = GLUE
  validation (the official choice: the test split has no labels).
"""

from __future__ import annotations

import hashlib
import io
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from experiments.common.cli import UserError
from experiments.data.mirror import fetch_file

MIRROR_PREFIX = "controlled"
STSB_CLASSES = 6
STSB_MAX_LENGTH = 128


@dataclass(frozen=True)
class HubSource:
    repo: str
    train: str
    test: str
    image_column: str | None = None  # None: the text pairs of STS-B
    n_classes: int = 10
    shape: tuple[int, int, int] | None = None  # [C, H, W] of every image
    paper_sizes: tuple[int, int] = (0, 0)  # the paper's n_train / n_test (0 = all)


SOURCES = {
    "mnist": HubSource("ylecun/mnist", "mnist/train-00000-of-00001.parquet",
                       "mnist/test-00000-of-00001.parquet", "image", 10, (1, 28, 28), (1000, 1000)),
    "cifar10": HubSource("uoft-cs/cifar10", "plain_text/train-00000-of-00001.parquet",
                         "plain_text/test-00000-of-00001.parquet", "img", 10, (3, 32, 32), (10000, 1000)),
    "stsb": HubSource("nyu-mll/glue", "stsb/train-00000-of-00001.parquet",
                      "stsb/validation-00000-of-00001.parquet", None, STSB_CLASSES, None, (0, 0)),
}


@dataclass
class Split:
    """Features (a float tensor, or a dict of int64 tensors for BERT) and int64 labels."""
    features: torch.Tensor | dict[str, torch.Tensor]
    labels: torch.Tensor
    rows: np.ndarray = field(repr=False)  # the rows of the parquet file that were kept


def mirror_file(dataset: str, hub_file: str) -> str:
    """The file's path inside the data mirror: ``controlled/<dataset>/<path in the Hub repo>``."""
    return f"{MIRROR_PREFIX}/{dataset}/{hub_file}"


def parquet_path(dataset: str, split: str, mirror: str | None = None) -> Path:
    """Local path of ``dataset``'s ``split`` ('train' or 'test') parquet file (mirror, else the Hub)."""
    src = SOURCES[dataset]
    hub_file = src.train if split == "train" else src.test
    return fetch_file(mirror_file=mirror_file(dataset, hub_file), hub_repo=src.repo, hub_file=hub_file,
                      mirror=mirror or None)


def _read_table(path: Path, columns: list[str]):
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        table = pq.read_table(path)
    except (pa.ArrowException, OSError, ValueError) as e:  # not parquet, truncated...
        raise UserError(f"{path}: not a readable parquet file ({type(e).__name__}: {e})") from None
    missing = [c for c in columns if c not in table.column_names]
    if missing:
        raise UserError(f"{path}: no column(s) {missing}; columns: {table.column_names}")
    return table


def subsample_rows(n_rows: int, n: int, rng: np.random.Generator) -> np.ndarray:
    """Rows to keep: all of them in file order (n = 0 or n_rows), else the first n of a seeded permutation."""
    if n < 0:
        raise UserError(f"subsample size must be >= 0 (0 = all), got {n}")
    if n > n_rows:
        raise UserError(f"asked for {n} rows but the split has only {n_rows} (0 = all)")
    if n == 0 or n == n_rows:
        return np.arange(n_rows)
    return rng.permutation(n_rows)[:n]


def _labels(values, path: Path, n_classes: int) -> np.ndarray:
    y = np.asarray(values)
    if y.dtype.kind not in "iu" or y.size and (y.min() < 0 or y.max() >= n_classes):
        raise UserError(f"{path}: labels must be ints in [0, {n_classes}), got dtype {y.dtype} "
                        f"range [{y.min() if y.size else '-'}, {y.max() if y.size else '-'}]")
    return y.astype(np.int64)


def decode_images(png_bytes: list[bytes], shape: tuple[int, int, int], path: Path) -> np.ndarray:
    """PNG (or any PIL-readable) bytes -> uint8 [n, C, H, W]; every image must have ``shape``."""
    from PIL import Image

    c, h, w = shape
    out = np.empty((len(png_bytes), c, h, w), dtype=np.uint8)
    for i, b in enumerate(png_bytes):
        if b is None:
            raise UserError(f"{path}: image {i} has no bytes")
        img = Image.open(io.BytesIO(b)).convert("L" if c == 1 else "RGB")
        a = np.asarray(img)
        a = a[None] if c == 1 else a.transpose(2, 0, 1)
        if a.shape != shape:
            raise UserError(f"{path}: image {i} has shape {a.shape}, expected {shape}")
        out[i] = a
    return out


def _load_image_split(dataset: str, split: str, n: int, rng, mirror) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    src = SOURCES[dataset]
    path = parquet_path(dataset, split, mirror)
    table = _read_table(path, [src.image_column, "label"])
    rows = subsample_rows(table.num_rows, n, rng)
    table = table.take(rows)
    col = table.column(src.image_column).combine_chunks()
    try:
        png = col.field("bytes").to_pylist()
    except (KeyError, AttributeError, TypeError):
        raise UserError(f"{path}: column {src.image_column!r} is not a struct with a 'bytes' field "
                        f"(type {col.type})") from None
    return decode_images(png, src.shape, path), _labels(table.column("label").to_numpy(), path, src.n_classes), rows


def load_images(dataset: str, seed: int, n_train: int, n_test: int, mirror: str | None = None):
    """MNIST / CIFAR10 -> ``(train Split, test Split, fingerprint)``.

    Features are float32 [n, C, H, W], normalised per channel with the train subset's mean and std.
    ``fingerprint`` is a sha256 of the raw uint8 pixels, labels and kept rows (it identifies the data
    exactly, before any floating-point step).
    """
    rng = np.random.default_rng(seed)
    x_tr, y_tr, r_tr = _load_image_split(dataset, "train", n_train, rng, mirror)
    x_te, y_te, r_te = _load_image_split(dataset, "test", n_test, rng, mirror)
    fp = fingerprint(x_tr, y_tr, r_tr, x_te, y_te, r_te)
    f_tr = x_tr.astype(np.float64) / 255.0
    mean = f_tr.mean(axis=(0, 2, 3), keepdims=True)
    std = f_tr.std(axis=(0, 2, 3), keepdims=True)
    std[std == 0] = 1.0

    def norm(x):
        return torch.from_numpy(((x.astype(np.float64) / 255.0 - mean) / std).astype(np.float32))

    return (Split(norm(x_tr), torch.from_numpy(y_tr), r_tr), Split(norm(x_te), torch.from_numpy(y_te), r_te), fp)


def round_stsb(scores) -> np.ndarray:
    """STS-B similarity in [0, 5] -> class 0–5: nearest integer, ties to even (Python's ``round``)."""
    s = np.asarray(scores, dtype=np.float64)
    if s.size and (np.isnan(s).any() or s.min() < 0 or s.max() > 5):
        raise UserError(f"STS-B scores must lie in [0, 5] (the unlabelled test split has -1), got "
                        f"[{np.nanmin(s)}, {np.nanmax(s)}]")
    return np.rint(s).astype(np.int64)


def _load_stsb_split(split: str, n: int, rng, mirror, tokenizer) -> tuple[dict, np.ndarray, np.ndarray]:
    path = parquet_path("stsb", split, mirror)
    table = _read_table(path, ["sentence1", "sentence2", "label"])
    rows = subsample_rows(table.num_rows, n, rng)
    table = table.take(rows)
    y = round_stsb(table.column("label").to_numpy())
    s1, s2 = table.column("sentence1").to_pylist(), table.column("sentence2").to_pylist()
    if any(not isinstance(s, str) for s in s1 + s2):
        raise UserError(f"{path}: sentence1 / sentence2 must be strings")
    enc = tokenizer(s1, s2, truncation=True, max_length=STSB_MAX_LENGTH, padding="longest", return_tensors="np")
    names = ["input_ids", "attention_mask"] + (["token_type_ids"] if "token_type_ids" in enc else [])
    return {k: np.asarray(enc[k], dtype=np.int64) for k in names}, y, rows


def load_stsb(seed: int, n_train: int, n_test: int, tokenizer, mirror: str | None = None):
    """GLUE STS-B (train; validation as test) -> ``(train Split, test Split, fingerprint)``.

    Features are dicts of int64 [n, L] tensors (``input_ids``, ``attention_mask``,
    ``token_type_ids``) ready for ``BertForSequenceClassification``; labels are 6 classes.
    """
    rng = np.random.default_rng(seed)
    f_tr, y_tr, r_tr = _load_stsb_split("train", n_train, rng, mirror, tokenizer)
    f_te, y_te, r_te = _load_stsb_split("test", n_test, rng, mirror, tokenizer)
    fp = fingerprint(*f_tr.values(), y_tr, r_tr, *f_te.values(), y_te, r_te)

    def as_t(f):
        return {k: torch.from_numpy(v) for k, v in f.items()}

    return Split(as_t(f_tr), torch.from_numpy(y_tr), r_tr), Split(as_t(f_te), torch.from_numpy(y_te), r_te), fp


def fingerprint(*arrays: np.ndarray) -> str:
    """sha256 over the arrays' shapes, dtypes and bytes (exact integer data only)."""
    h = hashlib.sha256()
    for a in arrays:
        a = np.ascontiguousarray(a)
        h.update(f"{a.dtype.str}{a.shape}".encode())
        h.update(a.tobytes())
    return h.hexdigest()
