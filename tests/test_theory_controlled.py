"""P1 §4.2 controlled experiments: K-sets, relabelling, exact rewards/stds/gradients, and the CLI."""

import math

import numpy as np
import pytest
import torch

from experiments.common.cli import UserError
from experiments.common.io import read_json, read_jsonl
from experiments.theory import controlled as C

# ------------------------------------------------------------------ K-sets and soft targets

def test_k_label_sets_contain_class_and_k_distinct_labels():
    sets = C.k_label_sets(10, 5, np.random.default_rng(0))
    assert sorted(sets) == list(range(10))
    for c, s in sets.items():
        assert c in s
        assert len(s) == 5 and len(set(s)) == 5
        assert all(0 <= lab < 10 for lab in s)


def test_k_label_sets_deterministic_per_seed():
    a = C.k_label_sets(10, 5, np.random.default_rng(3))
    b = C.k_label_sets(10, 5, np.random.default_rng(3))
    c = C.k_label_sets(10, 5, np.random.default_rng(4))
    assert a == b
    assert a != c


def test_k_label_sets_bad_k():
    with pytest.raises(ValueError):
        C.k_label_sets(10, 11, np.random.default_rng(0))
    assert C.k_label_sets(4, 1, np.random.default_rng(0)) == {0: [0], 1: [1], 2: [2], 3: [3]}


def test_soft_targets_uniform_over_k_set_and_per_class():
    sets = C.k_label_sets(10, 5, np.random.default_rng(0))
    y = torch.tensor([0, 3, 3, 9, 0])
    q = C.soft_targets(y, sets, 10)
    assert q.shape == (5, 10)
    torch.testing.assert_close(q.sum(-1), torch.ones(5))
    for i, c in enumerate(y.tolist()):
        support = torch.nonzero(q[i]).squeeze(-1).tolist()
        assert support == sets[c]
        torch.testing.assert_close(q[i, sets[c]], torch.full((5,), 0.2))
    torch.testing.assert_close(q[1], q[2])  # same class -> same target (per-class K-set)
    torch.testing.assert_close(q[0], q[4])


# ------------------------------------------------------------------ relabelling

@pytest.mark.parametrize("n, expected", [(1000, 100), (1437, 144), (15, 2)])
def test_modify_labels_exact_fraction_outside_k_set(n, expected):
    rng = np.random.default_rng(1)
    sets = C.k_label_sets(10, 5, rng)
    y = torch.as_tensor(np.random.default_rng(2).integers(0, 10, n))
    y_new, mod = C.modify_labels(y, sets, 0.1, np.random.default_rng(5))
    assert int(mod.sum()) == expected == round(0.1 * n)
    assert torch.equal(y_new[~mod], y[~mod])
    for i in torch.nonzero(mod).squeeze(-1).tolist():
        assert int(y_new[i]) not in sets[int(y[i])]
    y_again, mod_again = C.modify_labels(y, sets, 0.1, np.random.default_rng(5))
    assert torch.equal(y_again, y_new) and torch.equal(mod_again, mod)


def test_modify_labels_needs_labels_outside():
    sets = C.k_label_sets(5, 5, np.random.default_rng(0))
    with pytest.raises(ValueError):
        C.modify_labels(torch.arange(5).repeat(4), sets, 0.5, np.random.default_rng(0))


def test_digits_split_and_paper_scale_placeholders():
    X, y, X_te, _, n_classes = C.load_dataset("digits", 0)
    assert n_classes == 10 and X.shape == (1437, 64) and X_te.shape == (360, 64)
    assert X.dtype == torch.float32 and y.dtype == torch.long
    assert abs(float(X.mean())) < 1e-4  # standardised with train statistics
    _, mod = C.modify_labels(y, C.k_label_sets(10, 5, np.random.default_rng(0)), 0.1, np.random.default_rng(0))
    assert int(mod.sum()) == 144
    for name in ("mnist", "cifar10", "stsb"):
        with pytest.raises(UserError, match="not available offline yet"):
            C.load_dataset(name, 0)


# ------------------------------------------------------------------ rewards and stds

def _logits_from_probs(p):
    return torch.tensor(p, dtype=torch.float64).log()


def test_expected_reward_and_std_hand_computed():
    logits = _logits_from_probs([[0.5, 0.25, 0.25]])
    label = torch.tensor([0])
    torch.testing.assert_close(C.expected_reward(logits, label, -1.0), torch.tensor([0.0], dtype=torch.float64))
    torch.testing.assert_close(C.reward_std(logits, label, -1.0), torch.tensor([1.0], dtype=torch.float64))
    torch.testing.assert_close(C.expected_reward(logits, label, 0.5), torch.tensor([0.75], dtype=torch.float64))
    torch.testing.assert_close(C.reward_std(logits, label, 0.5), torch.tensor([0.25], dtype=torch.float64))
    # label with p = 0.25: V = 0.25 − 0.75 = −0.5, E r² = 1, STD = sqrt(1 − 0.25)
    torch.testing.assert_close(C.expected_reward(logits, torch.tensor([1]), -1.0),
                               torch.tensor([-0.5], dtype=torch.float64))
    torch.testing.assert_close(C.reward_std(logits, torch.tensor([1]), -1.0),
                               torch.tensor([math.sqrt(0.75)], dtype=torch.float64))


def test_reward_std_matches_general_formula_per_input_wrong_reward():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(6, 7, generator=g, dtype=torch.float64) * 3
    labels = torch.tensor([0, 1, 2, 3, 4, 5])
    w = torch.tensor([-1.0, 0.5, -1.0, 0.5, 0.0, -1.0], dtype=torch.float64)
    p = torch.softmax(logits, -1)
    r = torch.where(torch.nn.functional.one_hot(labels, 7).bool(), torch.ones(()), w[:, None]).double()
    v = (p * r).sum(-1)
    std = ((p * r ** 2).sum(-1) - v ** 2).sqrt()
    torch.testing.assert_close(C.expected_reward(logits, labels, w), v)
    torch.testing.assert_close(C.reward_std(logits, labels, w), std)


def test_wrong_rewards_custom_only_on_modified():
    mod = torch.tensor([True, False, True])
    assert C.wrong_rewards(mod, "labels").tolist() == [-1.0, -1.0, -1.0]
    assert C.wrong_rewards(mod, "labels_with_custom", 0.5).tolist() == [0.5, -1.0, 0.5]
    with pytest.raises(UserError):
        C.wrong_rewards(mod, "nope")


# ------------------------------------------------------------------ gradients

def _tiny_problem():
    g = torch.Generator().manual_seed(1)
    X = torch.randn(5, 3, generator=g, dtype=torch.float64)
    W = torch.randn(4, 3, generator=g, dtype=torch.float64)
    labels = torch.tensor([0, 1, 3, 2, 1])
    w = torch.tensor([-1.0, -1.0, 0.5, -1.0, 0.5], dtype=torch.float64)
    return X, W, labels, w


def test_rft_exact_gradient_matches_finite_differences():
    X, W, labels, w = _tiny_problem()
    W = W.requires_grad_()
    (grad,) = torch.autograd.grad(-C.rft_exact_loss(X @ W.T, labels, w), W)  # ∇ mean V
    fd = torch.zeros_like(W)
    eps = 1e-6
    with torch.no_grad():
        for i in range(W.shape[0]):
            for j in range(W.shape[1]):
                Wp, Wm = W.clone(), W.clone()
                Wp[i, j] += eps
                Wm[i, j] -= eps
                fd[i, j] = (C.expected_reward(X @ Wp.T, labels, w).mean()
                            - C.expected_reward(X @ Wm.T, labels, w).mean()) / (2 * eps)
    torch.testing.assert_close(grad, fd, rtol=1e-6, atol=1e-9)
    assert grad.abs().max() > 1e-3  # not trivially zero


def test_reinforce_gradient_is_unbiased_for_exact_gradient():
    """Σ_y p(y|x)·∇[−r(x,y) ln p(y|x)] summed per input equals ∇(−V(x)), averaged over inputs."""
    X, W, labels, w = _tiny_problem()
    W = W.requires_grad_()
    (exact,) = torch.autograd.grad(C.rft_exact_loss(X @ W.T, labels, w), W)
    expected = torch.zeros_like(W)
    n, n_classes = len(labels), W.shape[0]
    p = torch.softmax(X @ W.T, -1).detach()
    for i in range(n):
        for y in range(n_classes):
            (g,) = torch.autograd.grad(
                C.reinforce_loss(X[i:i + 1] @ W.T, labels[i:i + 1], w[i:i + 1], torch.tensor([y])), W)
            expected += p[i, y] * g / n
    torch.testing.assert_close(expected, exact)


def test_rft_gradient_vanishes_with_reward_std():
    """The exact RFT gradient of an input whose label has tiny probability is tiny (P1 Thm 1's premise)."""
    X, W, _, _ = _tiny_problem()
    logits = (X[:1] @ W.T).detach()
    label = torch.tensor([0])
    norms = []
    for gap in (0.0, 10.0, 20.0):
        z = logits.clone()
        z[0, 0] -= gap
        z.requires_grad_()
        (g,) = torch.autograd.grad(-C.rft_exact_loss(z, label, -1.0), z)
        norms.append((float(g.norm()), float(C.reward_std(z.detach(), label, -1.0))))
    assert norms[0][0] > 1e3 * norms[2][0]
    assert norms[0][1] > norms[1][1] > norms[2][1]
    for gn, std in norms:  # ‖∂V/∂z‖ ≤ 2·STD for ±1 rewards
        assert gn <= 2 * std + 1e-12


# ------------------------------------------------------------------ CLI

def test_cli_pretrain_finetune_end_to_end(tmp_path):
    ckpt = tmp_path / "model.pt"
    C.main(["pretrain", "--epochs", "3", "--log-every", "1", "--hidden", "16", "--seed", "1", "--out", str(ckpt),
            "--summary", str(tmp_path / "pre.json"), "--metrics", str(tmp_path / "pre.jsonl"), "--threads", "1"])
    ck = torch.load(ckpt, weights_only=True)
    assert ck["config"]["k"] == 5 and len(ck["config"]["label_sets"]) == 10
    assert len(read_jsonl(tmp_path / "pre.jsonl")) == 4
    for method, reward in (("sft", "labels"), ("rft_exact", "labels"), ("reinforce", "labels_with_custom")):
        out = tmp_path / f"{method}_{reward}"
        C.main(["finetune", "--init", str(ckpt), "--method", method, "--reward", reward, "--epochs", "2",
                "--log-every", "1", "--seed", "2", "--out-dir", str(out), "--threads", "1"])
        rows = read_jsonl(out / "metrics.jsonl")
        assert [(r["epoch"], r["group"]) for r in rows] == [(e, g) for e in range(3) for g in C.GROUPS]
        for r in rows:
            assert {"reward", "accuracy", "reward_std", "grad_norm", "grad_norm_reward", "p_label"} <= set(r)
            assert r["grad_norm"] > 0 and 0 <= r["accuracy"] <= 1
        s = read_json(out / "summary.json")
        cfg = read_json(out / "config.json")
        assert cfg["n_modified"] == 144 and cfg["method"] == method and s["final"]["modified"]["n"] == 144
        if reward == "labels_with_custom":  # modified inputs start near the custom reward (p(label) ≈ 0)
            assert s["initial"]["modified"]["reward"] > 0.4
        else:
            assert s["initial"]["modified"]["reward"] < s["initial"]["unmodified"]["reward"]


def test_cli_user_errors_exit_2(tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        C.main(["pretrain", "--dataset", "mnist", "--out", str(tmp_path / "m.pt")])
    assert e.value.code == 2
    assert "not available offline yet" in capsys.readouterr().err
    with pytest.raises(SystemExit) as e:
        C.main(["finetune", "--init", str(tmp_path / "missing.pt"), "--method", "sft", "--out-dir", str(tmp_path)])
    assert e.value.code == 2
    bad = tmp_path / "bad.pt"
    torch.save({"weights": torch.zeros(1)}, bad)
    with pytest.raises(SystemExit) as e:
        C.main(["finetune", "--init", str(bad), "--method", "sft", "--out-dir", str(tmp_path / "o")])
    assert e.value.code == 2


@pytest.mark.slow
def test_sft_fits_small_std_inputs_rft_does_not(tmp_path):
    """P1 §4.2 at the default tiny settings (digits, K = 5, 300 + 300 epochs, ~15 s): SFT fits the
    relabelled inputs; exact-gradient RFT fits the unmodified ones but leaves the relabelled ones near
    reward −1 with a vanishing gradient."""
    ckpt = tmp_path / "model.pt"
    C.main(["pretrain", "--seed", "0", "--out", str(ckpt), "--threads", "2"])
    res = {}
    for method in ("sft", "rft_exact"):
        C.main(["finetune", "--init", str(ckpt), "--method", method, "--seed", "0",
                "--out-dir", str(tmp_path / method), "--threads", "2"])
        res[method] = read_json(tmp_path / method / "summary.json")
    init = res["rft_exact"]["initial"]
    assert init["modified"]["reward_std"] < 0.05
    assert init["unmodified"]["reward_std"] > 0.5
    sft, rft = res["sft"]["final"], res["rft_exact"]["final"]
    assert sft["modified"]["accuracy"] > 0.9 and sft["modified"]["reward"] > 0.8
    assert rft["unmodified"]["accuracy"] > 0.99 and rft["unmodified"]["reward"] > 0.95
    assert rft["modified"]["accuracy"] < 0.1 and rft["modified"]["reward"] < -0.8
    assert rft["modified"]["grad_norm"] < 0.01
