"""The architectures of the P1 §4.2 controlled experiments (:mod:`experiments.theory.controlled`): a ReLU
MLP, a ResNet18 for 32×32 inputs in plain torch, and a BERT sequence classifier from a prepared model
folder (dropout 0); :func:`build_model` rebuilds any of them from a checkpoint's ``config``.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch
import torch.nn.functional as F

from experiments.common.cli import UserError


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
