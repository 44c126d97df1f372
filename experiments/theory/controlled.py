"""P1 §4.2 controlled experiments: reward std and vanishing gradients in RFT (tiny scale first).

Setting (Razin et al., ICLR 2024, "P1" §4.2 and its official configs):

1. **Pretraining.** Every class c gets, once, a fixed set of K−1 other labels S_c (drawn with the
   seed); every input of class c gets the same K-set {c} ∪ S_c. The model is trained with the
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

Scales: ``digits`` (scikit-learn's bundled 8×8 digits, offline) is implemented; ``mnist``,
``cifar10`` and ``stsb`` (the paper's) raise a ``UserError`` until their data is mirrored.

Optimiser: Adam, lr 1e-3 by default. The paper uses lr 1e-4 and 1000 (pretrain) / 5000
(finetune) epochs; at tiny scale we shrink the epochs and raise the lr instead.

    python -m experiments.theory.controlled pretrain --dataset digits --k 5 --epochs 300 --seed 0 \
        --out model.pt --summary pretrain.json
    python -m experiments.theory.controlled finetune --init model.pt --method rft_exact \
        --reward labels --epochs 300 --seed 0 --out-dir RUN/
        # -> RUN/metrics.jsonl, RUN/summary.json, RUN/config.json

Checkpoint (``--out``): ``torch.save({"state_dict": ..., "config": {...}})`` with plain Python
values only, so ``torch.load(path, weights_only=True)`` reads it. ``config`` holds the dataset, its
split seed, K, the label sets and the hidden sizes, so finetuning rebuilds the same data.
"""

from __future__ import annotations

import argparse
import logging
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from experiments.common.cli import UserError, main_guard
from experiments.common.io import atomic_path, run_manifest, write_json, write_jsonl
from experiments.common.torchutil import grad_norm, set_seed, set_threads

log = logging.getLogger("theory.controlled")

METHODS = ("sft", "rft_exact", "reinforce")
REWARDS = ("labels", "labels_with_custom")
GROUPS = ("modified", "unmodified")
PAPER_SCALE_DATASETS = ("mnist", "cifar10", "stsb")


# --------------------------------------------------------------------------------------------
# data
# --------------------------------------------------------------------------------------------

def _load_digits(seed: int, test_frac: float):
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    X, y = load_digits(return_X_y=True)
    X_tr, X_te, y_tr, y_te = train_test_split(X, y, test_size=test_frac, random_state=seed, stratify=y)
    mean, std = X_tr.mean(0), X_tr.std(0)
    std[std == 0] = 1.0  # border pixels that are always 0 in the train split
    X_tr, X_te = (X_tr - mean) / std, (X_te - mean) / std
    return X_tr, y_tr, X_te, y_te, 10


def load_dataset(name: str, seed: int, test_frac: float = 0.2):
    """Load a dataset for the controlled experiments.

    Returns ``(X_train [n, d] float32, y_train [n] int64, X_test, y_test, n_classes)`` as torch
    tensors. Features are standardised with the train split's per-feature mean and std (constant
    features are only centred). The train/test split is stratified and seeded by ``seed``.

    ``digits``: 1,797 8×8 images, 10 classes (scikit-learn's bundled copy; no download).
    ``mnist`` / ``cifar10`` / ``stsb`` (paper scale) raise ``UserError`` for now.
    """
    if not 0 < test_frac < 1:
        raise UserError(f"test fraction must be in (0, 1), got {test_frac}")
    loaders = {"digits": _load_digits}
    if name in PAPER_SCALE_DATASETS:
        raise UserError(f"dataset {name!r} is not available offline yet (paper scale comes later); use 'digits'")
    if name not in loaders:
        raise UserError(f"unknown dataset {name!r}: use one of {sorted(loaders)}")
    X_tr, y_tr, X_te, y_te, n_classes = loaders[name](seed, test_frac)
    def as_x(a):
        return torch.as_tensor(np.asarray(a), dtype=torch.float32)

    def as_y(a):
        return torch.as_tensor(np.asarray(a), dtype=torch.long)

    return as_x(X_tr), as_y(y_tr), as_x(X_te), as_y(y_te), n_classes


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
# model, training, metrics
# --------------------------------------------------------------------------------------------

def make_mlp(in_dim: int, hidden: Sequence[int], n_classes: int) -> torch.nn.Sequential:
    """ReLU MLP: in_dim -> hidden[0] -> ... -> n_classes (logits)."""
    layers, d = [], in_dim
    for h in hidden:
        layers += [torch.nn.Linear(d, h), torch.nn.ReLU()]
        d = h
    layers.append(torch.nn.Linear(d, n_classes))
    return torch.nn.Sequential(*layers)


def group_metrics(model, X, labels, wrong_reward, mask, method: str) -> dict[str, float]:
    """Metrics over the inputs selected by ``mask``:

    * ``reward``: mean V(x) under the run's reward; ``p_label``: mean p_θ(label|x);
      ``accuracy``: fraction with argmax == label; ``reward_std``: mean exact STD_x;
    * ``grad_norm``: ‖∇θ of the group's *mean* objective‖ — mean V for rft_exact and reinforce
      (REINFORCE's expected gradient), mean NLL for sft. It is a per-input average, so groups of
      different size compare directly (multiply by the group size for the summed objective's norm);
    * ``grad_norm_reward``: ‖∇θ mean V‖ for every method, SFT included (same scale across methods).
    """
    Xg, yg = X[mask], labels[mask]
    wg = wrong_reward[mask]
    logits = model(Xg)
    v = expected_reward(logits, yg, wg)
    gn_reward = grad_norm(v.mean(), model.parameters(), retain_graph=True)
    if method == "sft":
        gn = grad_norm(sft_loss(logits, yg), model.parameters(), retain_graph=True)
    else:
        gn = gn_reward
    with torch.no_grad():
        return {"n": int(mask.sum()), "reward": float(v.mean()),
                "p_label": float(_label_logprob(logits, yg).exp().mean()),
                "accuracy": float((logits.argmax(-1) == yg).float().mean()),
                "reward_std": float(reward_std(logits, yg, wg).mean()),
                "grad_norm": gn, "grad_norm_reward": gn_reward}


def _batches(n: int, batch_size: int, gen: torch.Generator):
    if batch_size <= 0 or batch_size >= n:
        yield torch.arange(n)
        return
    order = torch.randperm(n, generator=gen)
    for s in range(0, n, batch_size):
        yield order[s:s + batch_size]


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


@torch.no_grad()
def _accuracy(model, X, y) -> float:
    return float((model(X).argmax(-1) == y).float().mean())


def pretrain(args) -> None:
    started = time.time()
    set_threads(args.threads)
    set_seed(args.seed)
    _check_positive(epochs=args.epochs, lr=args.lr, k=args.k)
    hidden = _parse_hidden(args.hidden)
    X, y, X_te, y_te, n_classes = load_dataset(args.dataset, args.seed, args.test_frac)
    if args.k > n_classes:
        raise UserError(f"--k {args.k} exceeds the number of classes ({n_classes})")
    sets = k_label_sets(n_classes, args.k, np.random.default_rng(args.seed))
    q = soft_targets(y, sets, n_classes)
    model = make_mlp(X.shape[1], hidden, n_classes)
    optim = torch.optim.Adam(model.parameters(), lr=args.lr)
    gen = torch.Generator().manual_seed(args.seed)
    inside = q > 0

    def probe(epoch: int) -> dict:
        with torch.no_grad():
            p = torch.softmax(model(X), -1)
            out_mass = (p * ~inside).sum(-1)
            return {"epoch": epoch, "loss": float(pretrain_loss(model(X), q)),
                    "mass_outside_mean": float(out_mass.mean()), "mass_outside_max": float(out_mass.max()),
                    "p_true_mean": float(p.gather(-1, y.view(-1, 1)).mean()),
                    "train_accuracy": _accuracy(model, X, y), "test_accuracy": _accuracy(model, X_te, y_te)}

    rows = [probe(0)]
    for epoch in tqdm(range(1, args.epochs + 1), desc="pretrain", mininterval=5):
        for idx in _batches(len(y), args.batch_size, gen):
            loss = pretrain_loss(model(X[idx]), q[idx])
            optim.zero_grad(set_to_none=True)
            loss.backward()
            optim.step()
        if epoch % args.log_every == 0 or epoch == args.epochs:
            rows.append(probe(epoch))
    config = {"dataset": args.dataset, "data_seed": args.seed, "test_frac": args.test_frac, "k": args.k,
              "n_classes": n_classes, "in_dim": int(X.shape[1]), "hidden": hidden,
              "label_sets": [sets[c] for c in range(n_classes)], "epochs": args.epochs, "lr": args.lr,
              "batch_size": args.batch_size, "seed": args.seed}
    with atomic_path(args.out) as tmp:
        torch.save({"state_dict": model.state_dict(), "config": config}, tmp)
    if args.metrics:
        write_jsonl(args.metrics, rows)
    if args.summary:
        write_json(args.summary, {"final": rows[-1], "config": config,
                                  "manifest": run_manifest(seed=args.seed, device="cpu", started=started)})
    log.info("pretrained %d epochs: loss %.4f (min ln K = %.4f), mass outside the K-set mean %.2e max %.2e, "
             "test accuracy %.3f", args.epochs, rows[-1]["loss"], np.log(args.k), rows[-1]["mass_outside_mean"],
             rows[-1]["mass_outside_max"], rows[-1]["test_accuracy"])


def load_checkpoint(path: str | Path) -> tuple[torch.nn.Sequential, dict]:
    """Rebuild the pretrained MLP from ``pretrain``'s checkpoint; returns ``(model, config)``."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: no such checkpoint (run `pretrain` first)")
    try:
        ckpt = torch.load(path, weights_only=True, map_location="cpu")
        config = ckpt["config"]
        model = make_mlp(config["in_dim"], config["hidden"], config["n_classes"])
        model.load_state_dict(ckpt["state_dict"])
    except (KeyError, TypeError, RuntimeError, EOFError) as e:
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
    model, pre = load_checkpoint(args.init)
    X, y, X_te, y_te, n_classes = load_dataset(pre["dataset"], pre["data_seed"], pre["test_frac"])
    try:
        labels, modified = modify_labels(y, pre["label_sets"], args.frac_modified,
                                         np.random.default_rng(args.seed), n_classes)
    except ValueError as e:
        raise UserError(str(e)) from None
    if modified.all() or not modified.any():
        raise UserError(f"--frac-modified {args.frac_modified} leaves a group empty (n = {len(y)})")
    w = wrong_rewards(modified, args.reward, args.custom_reward)
    optim = torch.optim.Adam(model.parameters(), lr=args.lr)
    gen = torch.Generator().manual_seed(args.seed)

    def log_step(epoch: int) -> list[dict]:
        return [{"epoch": epoch, "group": g, **group_metrics(model, X, labels, w, mask, args.method)}
                for g, mask in (("modified", modified), ("unmodified", ~modified))]

    rows = log_step(0)
    bar = tqdm(range(1, args.epochs + 1), desc=f"finetune {args.method}", mininterval=5)
    for epoch in bar:
        for idx in _batches(len(y), args.batch_size, gen):
            logits = model(X[idx])
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
    bar.close()

    out = Path(args.out_dir)
    final = {r["group"]: {k: v for k, v in r.items() if k != "group"} for r in rows[-2:]}
    initial = {r["group"]: {k: v for k, v in r.items() if k != "group"} for r in rows[:2]}
    config = {"init": str(args.init), "pretrain": pre, "method": args.method, "reward": args.reward,
              "custom_reward": args.custom_reward, "frac_modified": args.frac_modified,
              "n_modified": int(modified.sum()), "n_train": len(y), "epochs": args.epochs, "lr": args.lr,
              "optimizer": "adam", "batch_size": args.batch_size, "log_every": args.log_every, "seed": args.seed}
    write_jsonl(out / "metrics.jsonl", rows)
    write_json(out / "summary.json", {
        "method": args.method, "reward": args.reward, "initial": initial, "final": final,
        "test_accuracy": _accuracy(model, X_te, y_te),
        "manifest": run_manifest(seed=args.seed, device="cpu", started=started)})
    write_json(out / "config.json", config)
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

    pre = sub.add_parser("pretrain", help="pretrain on soft targets uniform over per-class K-sets")
    pre.add_argument("--dataset", default="digits", help="digits (mnist, cifar10, stsb: not yet)")
    pre.add_argument("--k", type=int, default=5, help="labels per K-set, true label included")
    pre.add_argument("--epochs", type=int, default=300)
    pre.add_argument("--lr", type=float, default=1e-3, help="Adam (paper: 1e-4 with more epochs)")
    pre.add_argument("--batch-size", type=int, default=512, help="0 = full batch")
    pre.add_argument("--hidden", default="250,100", help="MLP hidden sizes")
    pre.add_argument("--test-frac", type=float, default=0.2)
    pre.add_argument("--seed", type=int, default=0, help="split, K-sets, init and batch order")
    pre.add_argument("--log-every", type=int, default=50)
    pre.add_argument("--out", required=True, help="checkpoint (.pt)")
    pre.add_argument("--metrics", help="optional JSONL of pretraining probes")
    pre.add_argument("--summary", help="optional JSON summary")
    pre.add_argument("--threads", type=int, default=0)

    ft = sub.add_parser("finetune", help="relabel 10%% outside the K-set and finetune (sft / RFT)")
    ft.add_argument("--init", required=True, help="checkpoint from `pretrain`")
    ft.add_argument("--method", required=True, choices=METHODS)
    ft.add_argument("--reward", default="labels", choices=REWARDS)
    ft.add_argument("--custom-reward", type=float, default=0.5,
                    help="labels_with_custom: reward of a wrong prediction on a modified input")
    ft.add_argument("--frac-modified", type=float, default=0.1)
    ft.add_argument("--epochs", type=int, default=300)
    ft.add_argument("--lr", type=float, default=1e-3)
    ft.add_argument("--batch-size", type=int, default=512, help="0 = full batch")
    ft.add_argument("--seed", type=int, default=0, help="relabelling, batch order, REINFORCE samples")
    ft.add_argument("--log-every", type=int, default=25)
    ft.add_argument("--out-dir", required=True)
    ft.add_argument("--threads", type=int, default=0)

    args = p.parse_args(argv)
    if getattr(args, "log_every", 1) <= 0:
        raise UserError(f"--log-every must be > 0, got {args.log_every}")
    (pretrain if args.cmd == "pretrain" else finetune)(args)


if __name__ == "__main__":
    main()
