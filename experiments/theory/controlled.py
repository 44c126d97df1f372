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
   STD_x = sqrt(Σ_y p r² − V²), and gradient norms
   (see :func:`experiments.theory.controlled_objectives.group_metrics`).

Datasets and architectures (the architecture follows from the dataset):

===========  ====================================================  =====================================
dataset      data                                                  model
===========  ====================================================  =====================================
``digits``   scikit-learn's bundled 8×8 digits (1,797; offline),   MLP ``--hidden`` (ReLU)
             stratified ``--test-frac`` split, standardised
``mnist``    ylecun/mnist parquet, 28×28 grey, flattened to 784    MLP ``--hidden`` (paper: 250,100)
``cifar10``  uoft-cs/cifar10 parquet, 32×32 RGB                    ResNet18 for 32×32 (see below)
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

Layout: this module holds the two training loops and the CLI; the task (datasets as tensors, K-sets,
relabelling, rewards) is in :mod:`experiments.theory.controlled_task`, the losses and group metrics in
:mod:`experiments.theory.controlled_objectives`, the architectures in
:mod:`experiments.theory.controlled_models`, and the raw data sources in
:mod:`experiments.theory.controlled_data`.
"""

from __future__ import annotations

import argparse
import logging
import time
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from experiments.common import checkpoint, steptimes
from experiments.common.cli import UserError, main_guard, thread_count
from experiments.common.io import atomic_path, run_manifest, write_json, write_jsonl
from experiments.common.torchutil import resolve_device, set_seed, set_threads
from experiments.theory import controlled_data
from experiments.theory import controlled_models as models
from experiments.theory.controlled_objectives import (
    group_metrics,
    predict,
    pretrain_loss,
    reinforce_loss,
    rft_exact_loss,
    sample_labels,
    sft_loss,
)
from experiments.theory.controlled_task import (
    ARCHITECTURES,
    DATASETS,
    REWARDS,
    k_label_sets,
    load_data,
    modify_labels,
    soft_targets,
    take,
    to_device,
    wrong_rewards,
)

log = logging.getLogger("theory.controlled")

METHODS = ("sft", "rft_exact", "reinforce")
GROUPS = ("modified", "unmodified")
OPTIMIZERS = ("adam", "sgd")


# --------------------------------------------------------------------------------------------
# training
# --------------------------------------------------------------------------------------------

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
        tokenizer = models.load_bert_tokenizer(model_dir)
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
        model = models.make_mlp(data.X.shape[1], hidden, n_classes)
        arch_config.update(in_dim=int(data.X.shape[1]), hidden=hidden)
    elif arch == "resnet18":
        model = models.ResNet18(n_classes, int(data.X.shape[1]))
        arch_config.update(in_channels=int(data.X.shape[1]))
    else:
        model, bert_config = models.new_bert(model_dir, n_classes, args.bert_init)
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
        model = models.build_model(config)
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
        tokenizer = models.load_bert_tokenizer(args.model_dir or pre["model_dir"])
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
