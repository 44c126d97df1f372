"""The task of the P1 §4.2 controlled experiments (:mod:`experiments.theory.controlled`): a dataset as
tensors, the per-class K-sets, the pretraining targets, the relabelling of the finetuning inputs and the
reward of a wrong prediction. Where the raw rows come from (sources, mirror, preprocessing):
:mod:`experiments.theory.controlled_data`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from experiments.common.cli import UserError
from experiments.theory import controlled_data

REWARDS = ("labels", "labels_with_custom")
DATASETS = ("digits", "mnist", "cifar10", "stsb")
PAPER_SCALE_DATASETS = ("mnist", "cifar10", "stsb")
ARCHITECTURES = {"digits": "mlp", "mnist": "mlp", "cifar10": "resnet18", "stsb": "bert"}

Features = torch.Tensor | dict[str, torch.Tensor]


def take(features: Features, idx) -> Features:
    """Rows ``idx`` of a feature tensor, or of every tensor of a feature dict (BERT inputs)."""
    if isinstance(features, dict):
        return {k: v[idx] for k, v in features.items()}
    return features[idx]


def n_rows(features: Features) -> int:
    return len(next(iter(features.values()))) if isinstance(features, dict) else len(features)


def to_device(features: Features, device) -> Features:
    if isinstance(features, dict):
        return {k: v.to(device) for k, v in features.items()}
    return features.to(device)


@dataclass
class Data:
    X: Features
    y: torch.Tensor
    X_test: Features
    y_test: torch.Tensor
    n_classes: int
    fingerprint: str | None


def _load_digits(seed: int, test_frac: float):
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    X, y = load_digits(return_X_y=True)
    X_tr, X_te, y_tr, y_te = train_test_split(X, y, test_size=test_frac, random_state=seed, stratify=y)
    return X_tr, y_tr, X_te, y_te


def _standardise(X_tr, X_te):
    mean, std = X_tr.mean(0), X_tr.std(0)
    std[std == 0] = 1.0  # border pixels that are always 0 in the train split
    return (X_tr - mean) / std, (X_te - mean) / std


def load_data(name: str, seed: int, test_frac: float = 0.2, *, n_train: int = 0, n_test: int = 0,
              mirror: str | None = None, tokenizer=None) -> Data:
    """Load a dataset for the controlled experiments (see the module docstring for each one).

    ``n_train`` / ``n_test``: subsample sizes (seeded by ``seed``; 0 = all rows). ``digits`` is split
    (stratified, ``test_frac``) before subsampling and standardised per feature with the train
    subset's statistics; images are normalised per channel; ``stsb`` needs the model's ``tokenizer``.
    Features: digits / mnist float32 [n, d]; cifar10 float32 [n, 3, 32, 32]; stsb a dict of int64
    [n, L] tensors. Labels int64 [n].
    """
    if name not in DATASETS:
        raise UserError(f"unknown dataset {name!r}: use one of {list(DATASETS)}")
    if name == "digits":
        if not 0 < test_frac < 1:
            raise UserError(f"test fraction must be in (0, 1), got {test_frac}")
        X_tr, y_tr, X_te, y_te = _load_digits(seed, test_frac)
        rng = np.random.default_rng(seed)
        r_tr = controlled_data.subsample_rows(len(y_tr), n_train, rng)
        r_te = controlled_data.subsample_rows(len(y_te), n_test, rng)
        X_tr, y_tr, X_te, y_te = X_tr[r_tr], y_tr[r_tr], X_te[r_te], y_te[r_te]
        fp = controlled_data.fingerprint(X_tr.astype(np.int64), y_tr.astype(np.int64),
                                         X_te.astype(np.int64), y_te.astype(np.int64))
        X_tr, X_te = _standardise(X_tr, X_te)
        return Data(torch.as_tensor(X_tr, dtype=torch.float32), torch.as_tensor(y_tr, dtype=torch.long),
                    torch.as_tensor(X_te, dtype=torch.float32), torch.as_tensor(y_te, dtype=torch.long), 10, fp)
    n_classes = controlled_data.SOURCES[name].n_classes
    if name == "stsb":
        if tokenizer is None:
            raise UserError("dataset 'stsb' needs the model's tokenizer (--model-dir)")
        train, test, fp = controlled_data.load_stsb(seed, n_train, n_test, tokenizer, mirror)
        return Data(train.features, train.labels, test.features, test.labels, n_classes, fp)
    train, test, fp = controlled_data.load_images(name, seed, n_train, n_test, mirror)
    X, X_te = train.features, test.features
    if ARCHITECTURES[name] == "mlp":
        X, X_te = X.flatten(1), X_te.flatten(1)
    return Data(X, train.labels, X_te, test.labels, n_classes, fp)


def load_dataset(name: str, seed: int, test_frac: float = 0.2, **kwargs):
    """:func:`load_data` as a tuple ``(X_train, y_train, X_test, y_test, n_classes)``."""
    d = load_data(name, seed, test_frac, **kwargs)
    return d.X, d.y, d.X_test, d.y_test, d.n_classes


def k_label_sets(n_classes: int, k: int, rng: np.random.Generator) -> dict[int, list[int]]:
    """Per-class K-sets: class c -> sorted({c} ∪ S_c) with S_c K−1 distinct other labels, drawn once.

    Every input of class c shares this set (the official per-class construction).
    """
    if not 1 <= k <= n_classes:
        raise ValueError(f"k must be in [1, n_classes={n_classes}], got {k}")
    sets = {}
    for c in range(n_classes):
        others = np.array([lab for lab in range(n_classes) if lab != c])
        extra = rng.choice(others, size=k - 1, replace=False) if k > 1 else np.array([], dtype=int)
        sets[c] = sorted([c, *(int(e) for e in extra)])
    return sets


def _as_list_of_sets(label_sets: Mapping[int, Sequence[int]] | Sequence[Sequence[int]]) -> list[list[int]]:
    if isinstance(label_sets, Mapping):
        return [list(label_sets[c]) for c in range(len(label_sets))]
    return [list(s) for s in label_sets]


def soft_targets(y: torch.Tensor, label_sets, n_classes: int) -> torch.Tensor:
    """Pretraining targets [n, C]: row i is uniform (1/K each) over the K-set of class y_i, 0 elsewhere."""
    sets = _as_list_of_sets(label_sets)
    table = torch.zeros(len(sets), n_classes)
    for c, s in enumerate(sets):
        table[c, s] = 1.0 / len(s)
    return table[torch.as_tensor(y, dtype=torch.long)]


def modify_labels(y: torch.Tensor, label_sets, frac: float, rng: np.random.Generator,
                  n_classes: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Relabel exactly ``int(round(frac · n))`` inputs (a seeded permutation picks which).

    Each picked input gets a label drawn uniformly from the labels *outside* the K-set of its true
    class. Returns ``(y_new [n] int64, modified [n] bool)``; unpicked inputs keep their label.
    """
    if not 0 <= frac <= 1:
        raise ValueError(f"frac must be in [0, 1], got {frac}")
    sets = _as_list_of_sets(label_sets)
    n_classes = n_classes or len(sets)
    y = torch.as_tensor(y, dtype=torch.long)
    n = len(y)
    m = round(frac * n)
    y_new, modified = y.clone(), torch.zeros(n, dtype=torch.bool)
    for i in rng.permutation(n)[:m].tolist():
        outside = [lab for lab in range(n_classes) if lab not in sets[int(y[i])]]
        if not outside:
            raise ValueError(f"class {int(y[i])}: its K-set covers all {n_classes} labels, nothing to relabel to")
        y_new[i] = int(rng.choice(outside))
        modified[i] = True
    return y_new, modified


def wrong_rewards(modified: torch.Tensor, reward: str, custom_reward: float = 0.5) -> torch.Tensor:
    """Reward of a wrong prediction per input [n]: −1 everywhere (``labels``), or ``custom_reward`` on
    modified inputs and −1 elsewhere (``labels_with_custom``). A correct prediction always earns +1."""
    if reward not in REWARDS:
        raise UserError(f"unknown reward {reward!r}: use one of {list(REWARDS)}")
    w = torch.full(modified.shape, -1.0)
    if reward == "labels_with_custom":
        w[modified] = custom_reward
    return w
