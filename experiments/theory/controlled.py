"""P1 §4.2 controlled experiments: reward std and vanishing gradients in RFT.

Setting (Razin et al., ICLR 2024, "P1" §4.2 and its official configs):

1. **Pretraining.** Every class c gets, once, a fixed set of K−1 other labels S_c (drawn with the
   data seed); every input of class c gets the same K-set {c} ∪ S_c. The model is trained with the
   cross-entropy towards the distribution that is uniform over that K-set, so the pretrained model
   spreads its mass over K labels and puts (almost) none outside.
2. **Finetuning.** On exactly ``int(round(frac_modified · n))`` train inputs (a seeded permutation;
   paper: 10 %) the label is replaced by one drawn uniformly from the labels *outside* that input's
   K-set. The pretrained model puts ~0 mass there, so these inputs have a tiny reward std. The other
   inputs keep their true label (which the pretrained model gives mass ≈ 1/K).
3. **Methods** (all start from the pretrained weights, same optimiser):

   * ``sft``: NLL of the (possibly modified) labels;
   * ``rft_exact``: gradient ascent on the exact expected reward V(x) = Σ_y p_θ(y|x) r(x, y);
   * ``reinforce``: REINFORCE with one sample per input and no baseline.

   Reward ``labels``: r(x, y) = +1 if y is x's label, else −1. Reward ``labels_with_custom``: the
   same, except that a wrong prediction on a *modified* input earns ``custom_reward`` (paper: +0.5),
   so those inputs start with a high expected reward (the "high initial reward" variant).
4. **Metrics**, per group (modified / unmodified train inputs) every ``log_every`` epochs: mean V(x)
   under the run's reward, accuracy (argmax == label), mean p(label|x), mean reward std
   STD_x = sqrt(Σ_y p r² − V²), and gradient norms (see :func:`group_metrics`).

Datasets and architectures (the architecture follows from the dataset):

===========  ====================================================  =====================================
dataset      data                                                  model
===========  ====================================================  =====================================
``digits``   scikit-learn's bundled 8×8 digits (1,797; offline),   MLP ``--hidden`` (ReLU)
             stratified ``--test-frac`` split, standardised
``mnist``    ylecun/mnist parquet, 28×28 grey, flattened to 784    MLP ``--hidden`` (paper: 250,100)
``cifar10``  uoft-cs/cifar10 parquet, 32×32 RGB                    ResNet18 for 32×32 (:class:`ResNet18`)
``stsb``     nyu-mll/glue ``stsb`` parquet, sentence pairs,        ``BertForSequenceClassification``
             score rounded to 6 classes; test = validation         from ``--model-dir``, dropout 0
===========  ====================================================  =====================================

Paper-scale data come through the data seam (``--mirror``, else env ``SUITE_DATA_MIRROR``, else the
Hugging Face Hub); the mirror holds the Hub's parquet files under ``controlled/<dataset>/<path in the
Hub repo>``, e.g. ``controlled/mnist/mnist/train-00000-of-00001.parquet``. Sources, schemas, what was
verified about them and the preprocessing: :mod:`experiments.theory.controlled_data`.
``--n-train`` / ``--n-test`` subsample each split with a seeded permutation (0 = all rows); defaults
are the paper's: MNIST 1000 / 1000, CIFAR10 10000 / 1000, STS-B all (5,749 / 1,500), digits all.

The ResNet18 is ours, in plain torch: BasicBlocks [2, 2, 2, 2] with widths 64–512, a 3×3 stride-1
stem and no max-pool (the usual CIFAR variant), BatchNorm, global average pool, linear head
(11,173,962 parameters for 10 classes). The BERT folder comes from the model seam
(:mod:`experiments.models.prepare`, ``source: hub``, ``id: prajjwal1/bert-mini``, ``copy_files:
true``, ``model_type: bert``); it is loaded with ``num_labels`` 6 and hidden, attention and classifier
dropout 0. ``--bert-init pretrained`` (default) loads its weights; ``random`` builds the same
architecture from its config only (the official code does this: ``BertForSequenceClassification(
BertConfig.from_pretrained(...))``). Pairs are tokenised once, truncated to 128 tokens.

**Train/eval mode.** Optimiser steps run in ``train()`` mode; every probe (pretraining probes,
group metrics, test accuracy) runs in ``eval()`` mode over the whole group in chunks of 512 inputs
(gradients accumulated over the chunks), so BatchNorm uses its running statistics and the metrics do
not depend on how a group is split into batches. The gradient norms are thus those of the eval-mode
function. (The MLP and the dropout-0 BERT are the same function in both modes.)

Paper settings vs defaults here: the paper trains with Adam lr 1e-4 (``--optimizer sgd``: plain SGD,
no momentum and no weight decay, as in the official code, lr 1e-2 for MNIST/CIFAR10 and 1e-3 for
STS-B), batch 512, 1000 pretraining and 5000 finetuning epochs, K = 5 / 5 / 3, seeds 111 (init) and
192 (samples). The defaults (Adam lr 1e-3, 300 + 300 epochs, one seed) are the tiny ``digits``
settings; the DAG passes the paper's values. Other differences from the official code: the train /
test subsamples are uniform (official: stratified) and images are normalised with the train subset's
per-channel statistics (official: fixed per-dataset constants).

    python -m experiments.theory.controlled pretrain --dataset digits --k 5 --epochs 300 --seed 0 \
        --out model.pt --summary pretrain.json
    python -m experiments.theory.controlled pretrain --dataset mnist --mirror /data/mirror \
        --optimizer adam --lr 1e-4 --epochs 1000 --data-seed 192 --seed 111 --device auto --out m.pt
    python -m experiments.theory.controlled finetune --init model.pt --method rft_exact \
        --reward labels --epochs 300 --seed 0 --out-dir RUN/
        # -> RUN/metrics.jsonl, RUN/summary.json, RUN/config.json

Checkpoint (``--out``): ``torch.save({"state_dict": ..., "config": {...}})`` with plain Python
values only, so ``torch.load(path, weights_only=True)`` reads it. ``config`` records what finetuning
needs to rebuild the identical data and model: the dataset, its seed, ``test_frac``, ``n_train`` /
``n_test``, K and the label sets, the architecture (MLP sizes; ResNet input channels; the BERT
config as a dict) and ``data_sha256``, a hash of the exact integer data (pixels or token ids, labels,
kept rows) that finetuning checks. The mirror is *not* recorded: finetuning takes its own
``--mirror``. For STS-B the model folder path *is* recorded (its tokenizer rebuilds the token ids);
``finetune --model-dir`` overrides it (e.g. on another machine), and the hash catches a tokenizer
that differs.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from experiments.common import checkpoint, steptimes
from experiments.common.cli import UserError, main_guard, thread_count
from experiments.common.io import atomic_path, run_manifest, write_json, write_jsonl
from experiments.common.torchutil import resolve_device, set_seed, set_threads
from experiments.theory import controlled_data

log = logging.getLogger("theory.controlled")

METHODS = ("sft", "rft_exact", "reinforce")
REWARDS = ("labels", "labels_with_custom")
GROUPS = ("modified", "unmodified")
OPTIMIZERS = ("adam", "sgd")
DATASETS = ("digits", "mnist", "cifar10", "stsb")
PAPER_SCALE_DATASETS = ("mnist", "cifar10", "stsb")
ARCHITECTURES = {"digits": "mlp", "mnist": "mlp", "cifar10": "resnet18", "stsb": "bert"}
CHUNK = 512  # inputs per forward pass in probes and group metrics

Features = torch.Tensor | dict[str, torch.Tensor]


# --------------------------------------------------------------------------------------------
# data
# --------------------------------------------------------------------------------------------

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


# --------------------------------------------------------------------------------------------
# objectives (pure functions of logits)
# --------------------------------------------------------------------------------------------

def _label_logprob(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    return torch.log_softmax(logits, dim=-1).gather(-1, labels.view(-1, 1)).squeeze(-1)


def expected_reward(logits: torch.Tensor, labels: torch.Tensor, wrong_reward) -> torch.Tensor:
    """V(x) = Σ_y p_θ(y|x) r(x, y) with r = +1 on the label and ``wrong_reward`` (w) elsewhere.

    With p = p_θ(label|x) this is V = p + (1 − p)·w = w + (1 − w)·p.  Shapes: logits [n, C], labels
    [n], wrong_reward a float or [n]. Returns [n] (differentiable).
    """
    w = torch.as_tensor(wrong_reward, dtype=logits.dtype, device=logits.device)
    p = _label_logprob(logits, labels).exp()
    return w + (1 - w) * p


def reward_std(logits: torch.Tensor, labels: torch.Tensor, wrong_reward) -> torch.Tensor:
    """STD_x = sqrt(Σ_y p r² − V²), the reward's standard deviation under p_θ(·|x). Returns [n].

    The reward takes two values (1 w.p. p, w w.p. 1 − p), so this equals |1 − w|·sqrt(p(1 − p)),
    the form computed here (no cancellation when p is tiny).
    """
    w = torch.as_tensor(wrong_reward, dtype=logits.dtype, device=logits.device)
    p = _label_logprob(logits, labels).exp()
    return (1 - w).abs() * (p * (1 - p)).clamp_min(0).sqrt()


def rft_exact_loss(logits: torch.Tensor, labels: torch.Tensor, wrong_reward) -> torch.Tensor:
    """Exact-gradient RFT loss: −mean_x V(x) (scalar). Its gradient is −mean_x ∇θ V(x)."""
    return -expected_reward(logits, labels, wrong_reward).mean()


def sample_labels(logits: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """One sample y_s ~ p_θ(·|x) per row (no gradient). [n, C] -> [n] int64."""
    probs = torch.softmax(logits.detach().float(), dim=-1)
    return torch.multinomial(probs.cpu(), 1, generator=generator).squeeze(-1).to(logits.device)


def reinforce_loss(logits: torch.Tensor, labels: torch.Tensor, wrong_reward,
                   samples: torch.Tensor) -> torch.Tensor:
    """REINFORCE loss, one sample per input, no baseline: −mean_x r(x, y_s)·ln p_θ(y_s|x) (scalar).

    Its expectation over y_s ~ p_θ(·|x) has the gradient of :func:`rft_exact_loss`.
    """
    w = torch.as_tensor(wrong_reward, dtype=logits.dtype, device=logits.device)
    r = torch.where(samples == labels, torch.ones_like(w), w)
    return -(r * _label_logprob(logits, samples)).mean()


def sft_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """NLL of the labels, mean over inputs (nats)."""
    return F.cross_entropy(logits, labels)


def pretrain_loss(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Cross-entropy towards soft targets: −mean_x Σ_y q(y|x) ln p_θ(y|x) (nats)."""
    return -(targets * torch.log_softmax(logits, dim=-1)).sum(-1).mean()



# --------------------------------------------------------------------------------------------
# models
# --------------------------------------------------------------------------------------------

def make_mlp(in_dim: int, hidden: Sequence[int], n_classes: int) -> torch.nn.Sequential:
    """ReLU MLP: in_dim -> hidden[0] -> ... -> n_classes (logits)."""
    layers, d = [], in_dim
    for h in hidden:
        layers += [torch.nn.Linear(d, h), torch.nn.ReLU()]
        d = h
    layers.append(torch.nn.Linear(d, n_classes))
    return torch.nn.Sequential(*layers)


class BasicBlock(torch.nn.Module):
    """Two 3×3 conv + BatchNorm layers with a residual connection (1×1 conv + BN when the shape changes)."""

    def __init__(self, c_in: int, c_out: int, stride: int):
        super().__init__()
        nn = torch.nn
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(c_out)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, stride=1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(c_out)
        self.shortcut = (nn.Sequential(nn.Conv2d(c_in, c_out, 1, stride=stride, bias=False), nn.BatchNorm2d(c_out))
                         if stride != 1 or c_in != c_out else nn.Identity())

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(x)))
        return F.relu(self.bn2(self.conv2(out)) + self.shortcut(x))


class ResNet18(torch.nn.Module):
    """ResNet18 for 32×32 inputs: 3×3 stride-1 stem, no max-pool, [2, 2, 2, 2] BasicBlocks with widths
    64 / 128 / 256 / 512 (stride 2 from the second stage on), global average pool, linear head.
    (``width`` scales the four widths; only tests change it.)"""

    def __init__(self, n_classes: int = 10, in_channels: int = 3, width: int = 64):
        super().__init__()
        nn = torch.nn
        self.stem = nn.Sequential(nn.Conv2d(in_channels, width, 3, stride=1, padding=1, bias=False),
                                  nn.BatchNorm2d(width), nn.ReLU())
        blocks, c = [], width
        for w, stride in ((width, 1), (2 * width, 2), (4 * width, 2), (8 * width, 2)):
            blocks += [BasicBlock(c, w, stride), BasicBlock(w, w, 1)]
            c = w
        self.blocks = nn.Sequential(*blocks)
        self.fc = nn.Linear(c, n_classes)
        for m in self.modules():  # the usual ResNet initialisation (as torchvision's)
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x):
        x = self.blocks(self.stem(x))
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))


class BertClassifier(torch.nn.Module):
    """A Hugging Face sequence classifier taking the feature dict and returning the logits."""

    def __init__(self, hf_model):
        super().__init__()
        self.hf = hf_model

    def forward(self, features: dict[str, torch.Tensor]) -> torch.Tensor:
        return self.hf(**features).logits


BERT_DROPOUT = {"hidden_dropout_prob": 0.0, "attention_probs_dropout_prob": 0.0, "classifier_dropout": 0.0}


def _model_dir(path: str | Path) -> Path:
    folder = Path(path)
    if not (folder / "config.json").is_file():
        raise UserError(f"--model-dir {str(folder)!r} is not a prepared model folder (no config.json); build "
                        "it with `python -m experiments.models.prepare` (source hub, id prajjwal1/bert-mini)")
    return folder


def load_bert_tokenizer(model_dir: str | Path):
    from experiments.models.load import load_tokenizer

    folder = _model_dir(model_dir)
    try:
        return load_tokenizer(folder)
    except (OSError, ValueError) as e:
        raise UserError(f"{folder}: cannot load its tokenizer ({type(e).__name__}: {e})") from None


def new_bert(model_dir: str | Path, n_classes: int, init: str) -> tuple[BertClassifier, dict]:
    """BertForSequenceClassification from a prepared folder: its weights (``pretrained``; the new head
    is drawn from torch's global RNG) or only its config (``random``), with dropout 0. Returns the
    model and its config as a plain dict (what :func:`build_model` needs)."""
    import json

    from transformers import BertConfig, BertForSequenceClassification

    folder = _model_dir(model_dir)
    try:
        if init == "pretrained":
            hf = BertForSequenceClassification.from_pretrained(  # a head of another size is replaced
                folder, num_labels=n_classes, local_files_only=True, use_safetensors=True,
                ignore_mismatched_sizes=True, **BERT_DROPOUT)
        else:
            hf = BertForSequenceClassification(BertConfig.from_pretrained(
                folder, num_labels=n_classes, local_files_only=True, **BERT_DROPOUT))
    except (OSError, ValueError) as e:
        raise UserError(f"{folder}: cannot load a BERT classifier ({type(e).__name__}: "
                        f"{str(e).strip().splitlines()[0] if str(e).strip() else ''})") from None
    return BertClassifier(hf), json.loads(hf.config.to_json_string())


def build_model(config: dict) -> torch.nn.Module:
    """An untrained model of the architecture recorded in a checkpoint's ``config``."""
    arch = config.get("arch", "mlp")
    if arch == "mlp":
        return make_mlp(config["in_dim"], config["hidden"], config["n_classes"])
    if arch == "resnet18":
        return ResNet18(config["n_classes"], config["in_channels"])
    if arch == "bert":
        from transformers import BertConfig, BertForSequenceClassification

        return BertClassifier(BertForSequenceClassification(BertConfig.from_dict(dict(config["bert_config"]))))
    raise KeyError(f"unknown architecture {arch!r}")


def make_optimizer(name: str, params, lr: float) -> torch.optim.Optimizer:
    """``adam`` (defaults otherwise) or ``sgd`` (plain: no momentum, no weight decay; the official code)."""
    if name == "adam":
        return torch.optim.Adam(params, lr=lr)
    if name == "sgd":
        return torch.optim.SGD(params, lr=lr)
    raise UserError(f"unknown optimizer {name!r}: use one of {list(OPTIMIZERS)}")


def _device(name: str) -> torch.device:
    try:
        return resolve_device(name)
    except RuntimeError as e:
        raise UserError(str(e)) from None


# --------------------------------------------------------------------------------------------
# metrics and training
# --------------------------------------------------------------------------------------------

@contextlib.contextmanager
def eval_mode(model: torch.nn.Module):
    """``model.eval()`` inside the block, the previous mode after it."""
    was_training = model.training
    model.eval()
    try:
        yield model
    finally:
        model.train(was_training)


@torch.no_grad()
def predict(model, X: Features, chunk: int = CHUNK) -> torch.Tensor:
    """Logits [n, C] in eval mode, ``chunk`` inputs per forward pass."""
    with eval_mode(model):
        n = n_rows(X)
        return torch.cat([model(take(X, slice(s, s + chunk))) for s in range(0, n, chunk)])


def group_metrics(model, X, labels, wrong_reward, mask, method: str, chunk: int = CHUNK) -> dict[str, float]:
    """Metrics over the inputs selected by ``mask`` (eval mode, ``chunk`` inputs per forward pass):

    * ``reward``: mean V(x) under the run's reward; ``p_label``: mean p_θ(label|x);
      ``accuracy``: fraction with argmax == label; ``reward_std``: mean exact STD_x;
    * ``grad_norm``: ‖∇θ of the group's *mean* objective‖ — mean V for rft_exact and reinforce
      (REINFORCE's expected gradient), mean NLL for sft. It is a per-input average, so groups of
      different size compare directly (multiply by the group size for the summed objective's norm);
    * ``grad_norm_reward``: ‖∇θ mean V‖ for every method, SFT included (same scale across methods).

    The gradient of the group mean is accumulated (in float64) over the chunks, so the result does
    not depend on ``chunk``.
    """
    rows = torch.nonzero(mask).squeeze(-1)
    n = len(rows)
    if n == 0:
        raise ValueError("empty group")
    params = [p for p in model.parameters() if p.requires_grad]
    g_reward = [torch.zeros_like(p, dtype=torch.float64) for p in params]
    g_nll = [torch.zeros_like(p, dtype=torch.float64) for p in params] if method == "sft" else None
    sums = {"reward": 0.0, "p_label": 0.0, "accuracy": 0.0, "reward_std": 0.0}

    def add(acc, grads):
        for a, g in zip(acc, grads, strict=True):
            if g is not None:
                a += g.double()

    with eval_mode(model):
        for s in range(0, n, chunk):
            idx = rows[s:s + chunk]
            yg, wg = labels[idx], wrong_reward[idx]
            logits = model(take(X, idx))
            v = expected_reward(logits, yg, wg)
            add(g_reward, torch.autograd.grad(v.sum() / n, params, retain_graph=g_nll is not None,
                                              allow_unused=True))
            if g_nll is not None:
                add(g_nll, torch.autograd.grad(F.cross_entropy(logits, yg, reduction="sum") / n, params,
                                               allow_unused=True))
            with torch.no_grad():
                sums["reward"] += float(v.sum())
                sums["p_label"] += float(_label_logprob(logits, yg).exp().sum())
                sums["accuracy"] += float((logits.argmax(-1) == yg).sum())
                sums["reward_std"] += float(reward_std(logits, yg, wg).sum())

    def norm(grads):
        return float(torch.sqrt(sum((g ** 2).sum() for g in grads)))

    gn_reward = norm(g_reward)
    return {"n": n, **{k: v / n for k, v in sums.items()},
            "grad_norm": norm(g_nll) if g_nll is not None else gn_reward, "grad_norm_reward": gn_reward}


def _batches(n: int, batch_size: int, gen: torch.Generator):
    if batch_size <= 0 or batch_size >= n:
        yield torch.arange(n)
        return
    order = torch.randperm(n, generator=gen)
    for s in range(0, n, batch_size):
        yield order[s:s + batch_size]


def _resume(ckpt, model, optim, gen) -> tuple[list[dict], int]:
    """(rows logged so far, first epoch to run): a killed run's checkpoint restored into the model,
    optimizer, batch-order generator and global RNG; or ([], 1) for a fresh run."""
    state = ckpt.load()
    if state is None:
        return [], 1
    model.load_state_dict(state["model"])
    optim.load_state_dict(state["optim"])
    gen.set_state(state["gen"])
    checkpoint.set_rng_state(state["rng"])
    return list(state["rows"]), state["epoch"] + 1


def _save(ckpt, epoch: int, epochs: int, model, optim, gen, rows) -> None:
    if ckpt.due(epoch) and epoch < epochs:
        ckpt.save(epoch, {"model": model.state_dict(), "optim": optim.state_dict(), "gen": gen.get_state(),
                          "rng": checkpoint.rng_state(), "rows": rows, "epoch": epoch})


def _parse_hidden(text: str) -> list[int]:
    try:
        hidden = [int(h) for h in text.split(",") if h.strip()]
    except ValueError:
        raise UserError(f"--hidden must be comma-separated ints, got {text!r}") from None
    if any(h <= 0 for h in hidden):
        raise UserError(f"--hidden sizes must be positive, got {text!r}")
    return hidden


def _check_positive(**values) -> None:
    for name, v in values.items():
        if v <= 0:
            raise UserError(f"--{name.replace('_', '-')} must be > 0, got {v}")


def _accuracy(model, X, y) -> float:
    return float((predict(model, X).argmax(-1) == y).float().mean())


def _subsample_sizes(args) -> tuple[int, int]:
    paper = controlled_data.SOURCES[args.dataset].paper_sizes if args.dataset in controlled_data.SOURCES else (0, 0)
    n_train = paper[0] if args.n_train is None else args.n_train
    n_test = paper[1] if args.n_test is None else args.n_test
    if n_train < 0 or n_test < 0:
        raise UserError(f"--n-train / --n-test must be >= 0 (0 = all), got {n_train} / {n_test}")
    return n_train, n_test


def pretrain(args) -> None:
    started = time.time()
    set_threads(args.threads)
    set_seed(args.seed)
    _check_positive(epochs=args.epochs, lr=args.lr, k=args.k)
    if args.dataset not in DATASETS:
        raise UserError(f"unknown dataset {args.dataset!r}: use one of {list(DATASETS)}")
    device = _device(args.device)
    arch = ARCHITECTURES[args.dataset]
    hidden = _parse_hidden(args.hidden) if arch == "mlp" else None
    data_seed = args.seed if args.data_seed is None else args.data_seed
    n_train, n_test = _subsample_sizes(args)
    tokenizer = model_dir = None
    if arch == "bert":
        if not args.model_dir:
            raise UserError("--dataset stsb needs --model-dir (a prepared prajjwal1/bert-mini folder)")
        model_dir = str(Path(args.model_dir).resolve())
        tokenizer = load_bert_tokenizer(model_dir)
    data = load_data(args.dataset, data_seed, args.test_frac, n_train=n_train, n_test=n_test,
                     mirror=args.mirror or None, tokenizer=tokenizer)
    n_classes = data.n_classes
    if args.k > n_classes:
        raise UserError(f"--k {args.k} exceeds the number of classes ({n_classes})")
    sets = k_label_sets(n_classes, args.k, np.random.default_rng(data_seed))
    q = soft_targets(data.y, sets, n_classes)
    arch_config: dict = {"arch": arch}
    set_seed(args.seed)  # the init does not depend on how much randomness the data loading used
    if arch == "mlp":
        model = make_mlp(data.X.shape[1], hidden, n_classes)
        arch_config.update(in_dim=int(data.X.shape[1]), hidden=hidden)
    elif arch == "resnet18":
        model = ResNet18(n_classes, int(data.X.shape[1]))
        arch_config.update(in_channels=int(data.X.shape[1]))
    else:
        model, bert_config = new_bert(model_dir, n_classes, args.bert_init)
        arch_config.update(bert_config=bert_config, model_dir=model_dir, bert_init=args.bert_init)
    model.to(device).train()
    X, y, q = to_device(data.X, device), data.y.to(device), q.to(device)
    X_te, y_te = to_device(data.X_test, device), data.y_test.to(device)
    optim = make_optimizer(args.optimizer, model.parameters(), args.lr)
    gen = torch.Generator().manual_seed(args.seed)
    inside = q > 0

    def probe(epoch: int) -> dict:
        logits = predict(model, X)
        p = torch.softmax(logits, -1)
        out_mass = (p * ~inside).sum(-1)
        return {"epoch": epoch, "loss": float(pretrain_loss(logits, q)),
                "mass_outside_mean": float(out_mass.mean()), "mass_outside_max": float(out_mass.max()),
                "p_true_mean": float(p.gather(-1, y.view(-1, 1)).mean()),
                "train_accuracy": float((logits.argmax(-1) == y).float().mean()),
                "test_accuracy": _accuracy(model, X_te, y_te)}

    log.info("pretraining %s on %s (%d train / %d test inputs, %d classes, K = %d) on %s with %s lr %g",
             arch, args.dataset, len(y), len(y_te), n_classes, args.k, device, args.optimizer, args.lr)
    ckpt = checkpoint.LoopCheckpoint(args.checkpoint_dir, checkpoint.auto_save_steps(args.epochs))
    rows, start = _resume(ckpt, model, optim, gen)
    steptimes.first_step()  # the steps: the probes and the epochs (experiments.runtime: fixed cost)
    if not rows:
        rows = [probe(0)]
    for epoch in tqdm(range(start, args.epochs + 1), desc="pretrain", mininterval=5, initial=start - 1,
                      total=args.epochs):
        for idx in _batches(len(y), args.batch_size, gen):
            idx = idx.to(device)
            loss = pretrain_loss(model(take(X, idx)), q[idx])
            optim.zero_grad(set_to_none=True)
            loss.backward()
            optim.step()
        if epoch % args.log_every == 0 or epoch == args.epochs:
            rows.append(probe(epoch))
        _save(ckpt, epoch, args.epochs, model, optim, gen, rows)
    steptimes.last_step()
    config = {"dataset": args.dataset, "data_seed": data_seed, "test_frac": args.test_frac,
              "n_train": n_train, "n_test": n_test, "n_train_rows": len(y), "n_test_rows": len(y_te),
              "data_sha256": data.fingerprint, "k": args.k, "n_classes": n_classes, **arch_config,
              "label_sets": [sets[c] for c in range(n_classes)], "epochs": args.epochs, "lr": args.lr,
              "optimizer": args.optimizer, "batch_size": args.batch_size, "seed": args.seed}
    state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    with atomic_path(args.out) as tmp:
        torch.save({"state_dict": state, "config": config}, tmp)
    if args.metrics:
        write_jsonl(args.metrics, rows)
    if args.summary:
        write_json(args.summary, {"final": rows[-1], "config": config,
                                  "manifest": run_manifest(seed=args.seed, device=str(device), started=started,
                                                           steps_wall=steptimes.record())})
    checkpoint.finished(args.checkpoint_dir)
    log.info("pretrained %d epochs: loss %.4f (min ln K = %.4f), mass outside the K-set mean %.2e max %.2e, "
             "test accuracy %.3f", args.epochs, rows[-1]["loss"], np.log(args.k), rows[-1]["mass_outside_mean"],
             rows[-1]["mass_outside_max"], rows[-1]["test_accuracy"])


def load_checkpoint(path: str | Path) -> tuple[torch.nn.Module, dict]:
    """Rebuild the pretrained model from ``pretrain``'s checkpoint (on the CPU); returns ``(model, config)``."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: no such checkpoint (run `pretrain` first)")
    try:
        ckpt = torch.load(path, weights_only=True, map_location="cpu")
        config = ckpt["config"]
        model = build_model(config)
        model.load_state_dict(ckpt["state_dict"])
    except (KeyError, TypeError, RuntimeError, EOFError, ValueError) as e:
        raise UserError(f"{path}: not a controlled-experiment checkpoint ({type(e).__name__}: {e})") from None
    return model, config


def finetune(args) -> None:
    started = time.time()
    set_threads(args.threads)
    set_seed(args.seed)
    _check_positive(epochs=args.epochs, lr=args.lr, log_every=args.log_every)
    if args.method not in METHODS:
        raise UserError(f"unknown method {args.method!r}: use one of {list(METHODS)}")
    if not 0 < args.frac_modified < 1:
        raise UserError(f"--frac-modified must be in (0, 1), got {args.frac_modified}")
    device = _device(args.device)
    model, pre = load_checkpoint(args.init)
    tokenizer = None
    if pre.get("arch") == "bert":
        tokenizer = load_bert_tokenizer(args.model_dir or pre["model_dir"])
    data = load_data(pre["dataset"], pre["data_seed"], pre["test_frac"], n_train=pre.get("n_train", 0),
                     n_test=pre.get("n_test", 0), mirror=args.mirror or None, tokenizer=tokenizer)
    if pre.get("data_sha256") and data.fingerprint != pre["data_sha256"]:
        raise UserError(f"the data rebuilt for {pre['dataset']} differ from the pretraining data (sha256 "
                        f"{data.fingerprint[:12]}… vs {pre['data_sha256'][:12]}…): another mirror file or "
                        "tokenizer?")
    try:
        labels, modified = modify_labels(data.y, pre["label_sets"], args.frac_modified,
                                         np.random.default_rng(args.seed), data.n_classes)
    except ValueError as e:
        raise UserError(str(e)) from None
    if modified.all() or not modified.any():
        raise UserError(f"--frac-modified {args.frac_modified} leaves a group empty (n = {len(data.y)})")
    w = wrong_rewards(modified, args.reward, args.custom_reward)
    model.to(device).train()
    X, X_te, y_te = to_device(data.X, device), to_device(data.X_test, device), data.y_test.to(device)
    labels, modified, w = labels.to(device), modified.to(device), w.to(device)
    optim = make_optimizer(args.optimizer, model.parameters(), args.lr)
    gen = torch.Generator().manual_seed(args.seed)

    def log_step(epoch: int) -> list[dict]:
        return [{"epoch": epoch, "group": g, **group_metrics(model, X, labels, w, mask, args.method)}
                for g, mask in (("modified", modified), ("unmodified", ~modified))]

    ckpt = checkpoint.LoopCheckpoint(args.checkpoint_dir, checkpoint.auto_save_steps(args.epochs))
    rows, start = _resume(ckpt, model, optim, gen)
    steptimes.first_step()
    if not rows:
        rows = log_step(0)
    bar = tqdm(range(start, args.epochs + 1), desc=f"finetune {args.method}", mininterval=5, initial=start - 1,
               total=args.epochs)
    for epoch in bar:
        for idx in _batches(len(labels), args.batch_size, gen):
            idx = idx.to(device)
            logits = model(take(X, idx))
            if args.method == "sft":
                loss = sft_loss(logits, labels[idx])
            elif args.method == "rft_exact":
                loss = rft_exact_loss(logits, labels[idx], w[idx])
            else:
                loss = reinforce_loss(logits, labels[idx], w[idx], sample_labels(logits, gen))
            if not torch.isfinite(loss):
                raise UserError(f"{args.method} loss is {loss.item()} at epoch {epoch}: stopping")
            optim.zero_grad(set_to_none=True)
            loss.backward()
            optim.step()
        if epoch % args.log_every == 0 or epoch == args.epochs:
            rows += log_step(epoch)
        _save(ckpt, epoch, args.epochs, model, optim, gen, rows)
    bar.close()
    steptimes.last_step()

    out = Path(args.out_dir)
    final = {r["group"]: {k: v for k, v in r.items() if k != "group"} for r in rows[-2:]}
    initial = {r["group"]: {k: v for k, v in r.items() if k != "group"} for r in rows[:2]}
    config = {"init": str(args.init), "pretrain": pre, "method": args.method, "reward": args.reward,
              "custom_reward": args.custom_reward, "frac_modified": args.frac_modified,
              "n_modified": int(modified.sum()), "n_train": len(labels), "epochs": args.epochs, "lr": args.lr,
              "optimizer": args.optimizer, "batch_size": args.batch_size, "log_every": args.log_every,
              "seed": args.seed, "device": str(device)}
    write_jsonl(out / "metrics.jsonl", rows)
    write_json(out / "summary.json", {
        "method": args.method, "reward": args.reward, "initial": initial, "final": final,
        "test_accuracy": _accuracy(model, X_te, y_te),
        "manifest": run_manifest(seed=args.seed, device=str(device), started=started, steps_wall=steptimes.record())})
    write_json(out / "config.json", config)
    checkpoint.finished(args.checkpoint_dir)
    log.info("%s (%s), %d epochs: modified reward %.3f acc %.3f |grad| %.2e; unmodified reward %.3f acc %.3f",
             args.method, args.reward, args.epochs, final["modified"]["reward"], final["modified"]["accuracy"],
             final["modified"]["grad_norm"], final["unmodified"]["reward"], final["unmodified"]["accuracy"])


# --------------------------------------------------------------------------------------------
# CLI
# --------------------------------------------------------------------------------------------

@main_guard
def main(argv=None):
    p = argparse.ArgumentParser(description="P1 §4.2 controlled experiments (pretrain, then finetune)")
    sub = p.add_subparsers(dest="cmd", required=True)

    def common(sp, log_every: int):
        sp.add_argument("--optimizer", default="adam", choices=OPTIMIZERS,
                        help="adam, or plain sgd (no momentum, as the official code)")
        sp.add_argument("--batch-size", type=int, default=512, help="0 = full batch")
        sp.add_argument("--log-every", type=int, default=log_every)
        sp.add_argument("--mirror", default="",
                        help="data mirror directory (default: env SUITE_DATA_MIRROR, then the Hub)")
        sp.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
        sp.add_argument("--threads", type=thread_count, default=0)
        sp.add_argument("--checkpoint-dir", default=None,
                        help="resumable state here (~4 times per run); a rerun continues from the last one")

    pre = sub.add_parser("pretrain", help="pretrain on soft targets uniform over per-class K-sets")
    pre.add_argument("--dataset", default="digits", choices=DATASETS,
                     help="digits / mnist (MLP), cifar10 (ResNet18), stsb (BERT, needs --model-dir)")
    pre.add_argument("--k", type=int, default=5, help="labels per K-set, true label included (paper: 5, stsb 3)")
    pre.add_argument("--epochs", type=int, default=300)
    pre.add_argument("--lr", type=float, default=1e-3, help="(paper: Adam 1e-4 with more epochs)")
    pre.add_argument("--hidden", default="250,100", help="MLP hidden sizes (digits, mnist)")
    pre.add_argument("--test-frac", type=float, default=0.2, help="digits: test split fraction")
    pre.add_argument("--n-train", type=int, default=None,
                     help="train inputs to subsample, 0 = all (default: the paper's; mnist 1000, cifar10 "
                          "10000, stsb and digits all)")
    pre.add_argument("--n-test", type=int, default=None,
                     help="test inputs to subsample, 0 = all (default: the paper's; mnist 1000, cifar10 "
                          "1000, stsb and digits all)")
    pre.add_argument("--model-dir", default="", help="stsb: prepared prajjwal1/bert-mini folder")
    pre.add_argument("--bert-init", default="pretrained", choices=("pretrained", "random"),
                     help="stsb: start from the folder's weights, or only its config (the official code)")
    pre.add_argument("--seed", type=int, default=0,
                     help="init and batch order; also the data seed unless --data-seed is given")
    pre.add_argument("--data-seed", type=int, default=None,
                     help="split, subsample and K-sets (default: --seed; paper: 192 with --seed 111)")
    common(pre, 50)
    pre.add_argument("--out", required=True, help="checkpoint (.pt)")
    pre.add_argument("--metrics", help="optional JSONL of pretraining probes")
    pre.add_argument("--summary", help="optional JSON summary")

    ft = sub.add_parser("finetune", help="relabel 10%% outside the K-set and finetune (sft / RFT)")
    ft.add_argument("--init", required=True, help="checkpoint from `pretrain`")
    ft.add_argument("--method", required=True, choices=METHODS)
    ft.add_argument("--reward", default="labels", choices=REWARDS)
    ft.add_argument("--custom-reward", type=float, default=0.5,
                    help="labels_with_custom: reward of a wrong prediction on a modified input")
    ft.add_argument("--frac-modified", type=float, default=0.1)
    ft.add_argument("--epochs", type=int, default=300)
    ft.add_argument("--lr", type=float, default=1e-3)
    ft.add_argument("--seed", type=int, default=0, help="relabelling, batch order, REINFORCE samples")
    ft.add_argument("--model-dir", default="",
                    help="stsb: model folder for the tokenizer (default: the one recorded in --init)")
    common(ft, 25)
    ft.add_argument("--out-dir", required=True)

    args = p.parse_args(argv)
    if getattr(args, "log_every", 1) <= 0:
        raise UserError(f"--log-every must be > 0, got {args.log_every}")
    (pretrain if args.cmd == "pretrain" else finetune)(args)


if __name__ == "__main__":
    main()
