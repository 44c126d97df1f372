"""P1 §4.2 controlled experiments: K-sets, relabelling, exact rewards/stds/gradients, and the CLI."""

import math

import numpy as np
import pytest
import torch

from experiments.common.cli import UserError
from experiments.common.io import read_json, read_jsonl
from experiments.theory import controlled as C
from experiments.theory import controlled_data as D
from experiments.theory import controlled_models as CM
from experiments.theory import controlled_objectives as CO
from experiments.theory import controlled_task as CT


@pytest.fixture
def offline(monkeypatch):
    """No data mirror and no Hub: paper-scale data must come from an explicit mirror."""
    monkeypatch.delenv("SUITE_DATA_MIRROR", raising=False)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")

# ------------------------------------------------------------------ K-sets and soft targets

def test_k_label_sets_contain_class_and_k_distinct_labels():
    sets = CT.k_label_sets(10, 5, np.random.default_rng(0))
    assert sorted(sets) == list(range(10))
    for c, s in sets.items():
        assert c in s
        assert len(s) == 5 and len(set(s)) == 5
        assert all(0 <= lab < 10 for lab in s)


def test_k_label_sets_deterministic_per_seed():
    a = CT.k_label_sets(10, 5, np.random.default_rng(3))
    b = CT.k_label_sets(10, 5, np.random.default_rng(3))
    c = CT.k_label_sets(10, 5, np.random.default_rng(4))
    assert a == b
    assert a != c


def test_k_label_sets_bad_k():
    with pytest.raises(ValueError):
        CT.k_label_sets(10, 11, np.random.default_rng(0))
    assert CT.k_label_sets(4, 1, np.random.default_rng(0)) == {0: [0], 1: [1], 2: [2], 3: [3]}


def test_soft_targets_uniform_over_k_set_and_per_class():
    sets = CT.k_label_sets(10, 5, np.random.default_rng(0))
    y = torch.tensor([0, 3, 3, 9, 0])
    q = CT.soft_targets(y, sets, 10)
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
    sets = CT.k_label_sets(10, 5, rng)
    y = torch.as_tensor(np.random.default_rng(2).integers(0, 10, n))
    y_new, mod = CT.modify_labels(y, sets, 0.1, np.random.default_rng(5))
    assert int(mod.sum()) == expected == round(0.1 * n)
    assert torch.equal(y_new[~mod], y[~mod])
    for i in torch.nonzero(mod).squeeze(-1).tolist():
        assert int(y_new[i]) not in sets[int(y[i])]
    y_again, mod_again = CT.modify_labels(y, sets, 0.1, np.random.default_rng(5))
    assert torch.equal(y_again, y_new) and torch.equal(mod_again, mod)


def test_modify_labels_needs_labels_outside():
    sets = CT.k_label_sets(5, 5, np.random.default_rng(0))
    with pytest.raises(ValueError):
        CT.modify_labels(torch.arange(5).repeat(4), sets, 0.5, np.random.default_rng(0))


def test_digits_split_and_subsample():
    X, y, X_te, _, n_classes = CT.load_dataset("digits", 0)
    assert n_classes == 10 and X.shape == (1437, 64) and X_te.shape == (360, 64)
    assert X.dtype == torch.float32 and y.dtype == torch.long
    assert abs(float(X.mean())) < 1e-4  # standardised with train statistics
    _, mod = CT.modify_labels(y, CT.k_label_sets(10, 5, np.random.default_rng(0)), 0.1, np.random.default_rng(0))
    assert int(mod.sum()) == 144
    d = CT.load_data("digits", 0, n_train=100, n_test=50)
    assert d.X.shape == (100, 64) and d.X_test.shape == (50, 64) and len(d.fingerprint) == 64
    assert CT.load_data("digits", 0, n_train=100, n_test=50).fingerprint == d.fingerprint
    assert CT.load_data("digits", 1, n_train=100, n_test=50).fingerprint != d.fingerprint
    with pytest.raises(UserError, match="only 1437"):
        CT.load_data("digits", 0, n_train=5000)


# ------------------------------------------------------------------ rewards and stds

def _logits_from_probs(p):
    return torch.tensor(p, dtype=torch.float64).log()


def test_expected_reward_and_std_hand_computed():
    logits = _logits_from_probs([[0.5, 0.25, 0.25]])
    label = torch.tensor([0])
    torch.testing.assert_close(CO.expected_reward(logits, label, -1.0), torch.tensor([0.0], dtype=torch.float64))
    torch.testing.assert_close(CO.reward_std(logits, label, -1.0), torch.tensor([1.0], dtype=torch.float64))
    torch.testing.assert_close(CO.expected_reward(logits, label, 0.5), torch.tensor([0.75], dtype=torch.float64))
    torch.testing.assert_close(CO.reward_std(logits, label, 0.5), torch.tensor([0.25], dtype=torch.float64))
    # label with p = 0.25: V = 0.25 − 0.75 = −0.5, E r² = 1, STD = sqrt(1 − 0.25)
    torch.testing.assert_close(CO.expected_reward(logits, torch.tensor([1]), -1.0),
                               torch.tensor([-0.5], dtype=torch.float64))
    torch.testing.assert_close(CO.reward_std(logits, torch.tensor([1]), -1.0),
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
    torch.testing.assert_close(CO.expected_reward(logits, labels, w), v)
    torch.testing.assert_close(CO.reward_std(logits, labels, w), std)


def test_wrong_rewards_custom_only_on_modified():
    mod = torch.tensor([True, False, True])
    assert CT.wrong_rewards(mod, "labels").tolist() == [-1.0, -1.0, -1.0]
    assert CT.wrong_rewards(mod, "labels_with_custom", 0.5).tolist() == [0.5, -1.0, 0.5]
    with pytest.raises(UserError):
        CT.wrong_rewards(mod, "nope")


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
    (grad,) = torch.autograd.grad(-CO.rft_exact_loss(X @ W.T, labels, w), W)  # ∇ mean V
    fd = torch.zeros_like(W)
    eps = 1e-6
    with torch.no_grad():
        for i in range(W.shape[0]):
            for j in range(W.shape[1]):
                Wp, Wm = W.clone(), W.clone()
                Wp[i, j] += eps
                Wm[i, j] -= eps
                fd[i, j] = (CO.expected_reward(X @ Wp.T, labels, w).mean()
                            - CO.expected_reward(X @ Wm.T, labels, w).mean()) / (2 * eps)
    torch.testing.assert_close(grad, fd, rtol=1e-6, atol=1e-9)
    assert grad.abs().max() > 1e-3  # not trivially zero


def test_reinforce_gradient_is_unbiased_for_exact_gradient():
    """Σ_y p(y|x)·∇[−r(x,y) ln p(y|x)] summed per input equals ∇(−V(x)), averaged over inputs."""
    X, W, labels, w = _tiny_problem()
    W = W.requires_grad_()
    (exact,) = torch.autograd.grad(CO.rft_exact_loss(X @ W.T, labels, w), W)
    expected = torch.zeros_like(W)
    n, n_classes = len(labels), W.shape[0]
    p = torch.softmax(X @ W.T, -1).detach()
    for i in range(n):
        for y in range(n_classes):
            (g,) = torch.autograd.grad(
                CO.reinforce_loss(X[i:i + 1] @ W.T, labels[i:i + 1], w[i:i + 1], torch.tensor([y])), W)
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
        (g,) = torch.autograd.grad(-CO.rft_exact_loss(z, label, -1.0), z)
        norms.append((float(g.norm()), float(CO.reward_std(z.detach(), label, -1.0))))
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


def test_cli_user_errors_exit_2(tmp_path, capsys, offline):
    with pytest.raises(SystemExit) as e:
        C.main(["pretrain", "--dataset", "mnist", "--out", str(tmp_path / "m.pt")])
    assert e.value.code == 2
    assert "SUITE_DATA_MIRROR" in capsys.readouterr().err
    with pytest.raises(SystemExit) as e:
        C.main(["pretrain", "--dataset", "stsb", "--out", str(tmp_path / "m.pt")])
    assert e.value.code == 2 and "--model-dir" in capsys.readouterr().err
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


# ------------------------------------------------------------------ paper-scale data (fake mirror)

WORDS = ["a", "man", "woman", "is", "playing", "the", "guitar", "piano", "cat", "dog", "sits", "on",
         "mat", "runs", "fast", "slowly", "eating", "an", "apple"]


def _png(array: np.ndarray) -> bytes:
    import io

    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format="PNG")
    return buf.getvalue()


def _image_parquet(path, images, labels, column):
    import pyarrow as pa
    import pyarrow.parquet as pq

    struct = pa.struct([("bytes", pa.binary()), ("path", pa.string())])
    table = pa.table({column: pa.array([{"bytes": _png(a), "path": None} for a in images], type=struct),
                      "label": pa.array(labels, type=pa.int64())})
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(table, path)


def _stsb_parquet(path, n, rng):
    import pyarrow as pa
    import pyarrow.parquet as pq

    def sentence():
        return " ".join(rng.choice(WORDS, size=int(rng.integers(3, 9))))

    scores = np.concatenate([[0.0, 0.5, 1.5, 2.5, 3.5, 4.6, 5.0], rng.uniform(0, 5, n - 7)]).astype(np.float32)
    table = pa.table({"sentence1": [sentence() for _ in range(n)], "sentence2": [sentence() for _ in range(n)],
                      "label": pa.array(scores, type=pa.float32()), "idx": pa.array(np.arange(n), type=pa.int32())})
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(table, path)


@pytest.fixture(scope="module")
def fake_mirror(tmp_path_factory):
    """A data mirror in the Hub's parquet schemas: 40 / 20 MNIST, 24 / 8 CIFAR10, 30 / 10 STS-B rows.
    Images are random noise plus a class-dependent brightness, so the classes are learnable."""
    root = tmp_path_factory.mktemp("mirror")
    rng = np.random.default_rng(0)
    for name, shape, column, sizes in (("mnist", (28, 28), "image", (40, 20)),
                                       ("cifar10", (32, 32, 3), "img", (24, 8))):
        src = D.SOURCES[name]
        for hub_file, n in zip((src.train, src.test), sizes, strict=True):
            labels = np.arange(n) % 10
            images = [(rng.integers(0, 100, shape) + 15 * c).astype(np.uint8) for c in labels]
            _image_parquet(root / D.mirror_file(name, hub_file), images, labels, column)
    src = D.SOURCES["stsb"]
    _stsb_parquet(root / D.mirror_file("stsb", src.train), 30, rng)
    _stsb_parquet(root / D.mirror_file("stsb", src.test), 10, rng)
    return root


@pytest.fixture(scope="module")
def bert_dir(tmp_path_factory):
    """A tiny random BertForSequenceClassification saved as a prepared folder (safetensors, WordPiece vocab)."""
    from transformers import AutoTokenizer, BertConfig, BertForSequenceClassification

    folder = tmp_path_factory.mktemp("bert")
    (folder / "vocab.txt").write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *WORDS]) + "\n")
    torch.manual_seed(0)
    config = BertConfig(vocab_size=5 + len(WORDS), hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                        intermediate_size=32, max_position_embeddings=64, num_labels=2)
    BertForSequenceClassification(config).save_pretrained(folder)
    AutoTokenizer.from_pretrained(folder).save_pretrained(folder)
    assert (folder / "model.safetensors").is_file()
    return folder


def test_mirror_layout_and_hub_paths():
    assert D.mirror_file("mnist", D.SOURCES["mnist"].train) == "controlled/mnist/mnist/train-00000-of-00001.parquet"
    assert D.SOURCES["cifar10"].repo == "uoft-cs/cifar10" and D.SOURCES["cifar10"].image_column == "img"
    assert D.SOURCES["stsb"].test == "stsb/validation-00000-of-00001.parquet"


def test_image_loaders_shapes_subsample_normalisation(fake_mirror):
    tr, te, fp = D.load_images("mnist", 0, 25, 0, str(fake_mirror))
    assert tr.features.shape == (25, 1, 28, 28) and te.features.shape == (20, 1, 28, 28)
    assert tr.features.dtype == torch.float32 and tr.labels.dtype == torch.long
    assert 0 <= int(tr.labels.min()) and int(tr.labels.max()) <= 9
    assert len(set(tr.rows.tolist())) == 25 and te.rows.tolist() == list(range(20))  # 0 = all, file order
    assert torch.equal(tr.labels, torch.as_tensor(tr.rows % 10))  # the label of each kept row
    assert abs(float(tr.features.mean())) < 1e-5 and abs(float(tr.features.std()) - 1) < 1e-2
    tr2, _, fp2 = D.load_images("mnist", 0, 25, 0, str(fake_mirror))
    assert torch.equal(tr.features, tr2.features) and fp == fp2
    tr3, _, fp3 = D.load_images("mnist", 1, 25, 0, str(fake_mirror))
    assert tr3.rows.tolist() != tr.rows.tolist() and fp3 != fp
    ctr, cte, _ = D.load_images("cifar10", 0, 0, 5, str(fake_mirror))
    assert ctr.features.shape == (24, 3, 32, 32) and cte.features.shape == (5, 3, 32, 32)
    per_channel = ctr.features.transpose(0, 1).flatten(1)
    torch.testing.assert_close(per_channel.mean(1), torch.zeros(3), atol=1e-5, rtol=0)
    with pytest.raises(UserError, match="only 40"):
        D.load_images("mnist", 0, 41, 0, str(fake_mirror))


def test_png_decoding_round_trip():
    rgb = np.random.default_rng(0).integers(0, 256, (32, 32, 3)).astype(np.uint8)
    grey = rgb[..., 0]
    out = D.decode_images([_png(rgb)], (3, 32, 32), "x")
    assert np.array_equal(out[0], rgb.transpose(2, 0, 1))
    assert np.array_equal(D.decode_images([_png(grey)], (1, 32, 32), "x")[0, 0], grey)
    with pytest.raises(UserError, match="shape"):
        D.decode_images([_png(grey)], (1, 28, 28), "x")


def test_load_data_mnist_is_flattened_for_the_mlp(fake_mirror):
    d = CT.load_data("mnist", 0, n_train=20, n_test=10, mirror=str(fake_mirror))
    assert d.X.shape == (20, 784) and d.X_test.shape == (10, 784) and d.n_classes == 10
    d = CT.load_data("cifar10", 0, n_train=0, n_test=0, mirror=str(fake_mirror))
    assert d.X.shape == (24, 3, 32, 32)


def test_stsb_rounding_and_loader(fake_mirror, bert_dir):
    assert D.round_stsb([0, 0.4, 0.5, 1.5, 2.5, 3.5, 4.6, 5.0]).tolist() == [0, 0, 0, 2, 2, 4, 5, 5]  # ties to even
    with pytest.raises(UserError, match=r"\[0, 5\]"):
        D.round_stsb([1.0, -1.0])  # the unlabelled GLUE test split
    tok = CM.load_bert_tokenizer(bert_dir)
    tr, te, fp = D.load_stsb(0, 0, 0, tok, str(fake_mirror))
    assert set(tr.features) == {"input_ids", "attention_mask", "token_type_ids"}
    n, length = tr.features["input_ids"].shape
    assert n == 30 and te.features["input_ids"].shape[0] == 10
    assert int(tr.features["attention_mask"].sum(1).max()) == length  # padded to the longest pair
    assert tr.labels[:7].tolist() == [0, 0, 2, 2, 4, 5, 5]
    assert 0 <= int(tr.labels.min()) and int(tr.labels.max()) <= 5
    sub, _, fp_sub = D.load_stsb(3, 12, 4, tok, str(fake_mirror))
    assert sub.labels.shape == (12,) and fp_sub != fp
    assert D.load_stsb(3, 12, 4, tok, str(fake_mirror))[2] == fp_sub


def test_paper_scale_offline_without_mirror_names_the_env_var(offline, tmp_path):
    for name in ("mnist", "cifar10", "stsb"):
        with pytest.raises(UserError, match="SUITE_DATA_MIRROR"):
            CT.load_data(name, 0, tokenizer=object())
    with pytest.raises(UserError, match="has no file 'controlled/mnist/mnist/train"):
        CT.load_data("mnist", 0, mirror=str(tmp_path))


# ------------------------------------------------------------------ architectures and chunked metrics

def test_resnet18_forward_shape_and_parameter_count():
    # By hand (3×3 convs without bias; each BatchNorm has 2·C parameters):
    #   stem   3·64·9 + 128                                                     =     1,856
    #   stage1 2 × (2·64·64·9 + 2·128)                                          =   147,968
    #   stage2 (64·128·9 + 128·128·9 + 512 + 64·128 + 256) + (2·128·128·9 + 512)  =   525,568
    #   stage3 (128·256·9 + 256·256·9 + 1024 + 128·256 + 512) + (2·256·256·9 + 1024) = 2,099,712
    #   stage4 (256·512·9 + 512·512·9 + 2048 + 256·512 + 1024) + (2·512·512·9 + 2048) = 8,393,728
    #   head   512·10 + 10                                                      =     5,130
    #   total                                                                   = 11,173,962
    model = CM.ResNet18(10, 3)
    assert sum(p.numel() for p in model.parameters()) == 11_173_962
    assert not any(isinstance(m, torch.nn.MaxPool2d) for m in model.modules())
    assert model.stem[0].kernel_size == (3, 3) and model.stem[0].stride == (1, 1)
    with torch.no_grad():
        assert model.eval()(torch.randn(2, 3, 32, 32)).shape == (2, 10)


def test_new_bert_pretrained_or_random(bert_dir):
    from safetensors.torch import load_file

    saved = load_file(bert_dir / "model.safetensors")
    key = "bert.embeddings.word_embeddings.weight"
    model, cfg = CM.new_bert(bert_dir, 6, "pretrained")
    assert torch.equal(model.hf.state_dict()[key], saved[key])  # the folder's encoder, a new 6-way head
    assert model.hf.classifier.out_features == 6 and cfg["hidden_dropout_prob"] == 0
    assert cfg["attention_probs_dropout_prob"] == 0 and cfg["classifier_dropout"] == 0
    rebuilt = CM.build_model({"arch": "bert", "bert_config": cfg})
    rebuilt.load_state_dict(model.state_dict())
    batch = {"input_ids": torch.tensor([[2, 6, 7, 3, 9, 3]]), "attention_mask": torch.ones(1, 6, dtype=torch.long)}
    with torch.no_grad():
        torch.testing.assert_close(rebuilt.eval()(batch), model.eval()(batch))
    random, _ = CM.new_bert(bert_dir, 6, "random")
    assert not torch.equal(random.hf.state_dict()[key], saved[key])
    with pytest.raises(UserError, match="config.json"):
        CM.new_bert(bert_dir / "nope", 6, "pretrained")


def test_group_metrics_do_not_depend_on_chunking():
    torch.manual_seed(0)
    model = CM.make_mlp(6, [8], 4).double()
    X = torch.randn(11, 6, dtype=torch.float64)
    labels = torch.randint(0, 4, (11,))
    w = torch.tensor([-1.0, 0.5] * 5 + [-1.0], dtype=torch.float64)
    mask = torch.tensor([True, False] * 5 + [True])
    for method in ("sft", "rft_exact"):
        full = CO.group_metrics(model, X, labels, w, mask, method, chunk=1000)
        chunked = CO.group_metrics(model, X, labels, w, mask, method, chunk=2)
        assert full.keys() == chunked.keys() and full["n"] == 6
        for k in full:
            assert chunked[k] == pytest.approx(full[k], rel=1e-9, abs=1e-12), k
    # the unchunked value matches a direct computation of ‖∇ mean V‖
    logits = model(X[mask])
    (g,) = [torch.cat([t.flatten() for t in torch.autograd.grad(
        CO.expected_reward(logits, labels[mask], w[mask]).mean(), list(model.parameters()))])]
    assert full["grad_norm_reward"] == pytest.approx(float(g.norm()), rel=1e-9)


def test_group_metrics_use_eval_mode_and_restore_it():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.BatchNorm1d(4), torch.nn.Linear(4, 3))
    model.train()
    before = model[1].running_mean.clone()
    X, labels = torch.randn(8, 3), torch.randint(0, 3, (8,))
    CO.group_metrics(model, X, labels, torch.full((8,), -1.0), torch.ones(8, dtype=torch.bool), "rft_exact", chunk=1)
    assert model.training and torch.equal(model[1].running_mean, before)  # chunk=1 works too (running stats)


# ------------------------------------------------------------------ CLI at paper-scale paths (fake data)

def test_cli_mnist_end_to_end_sgd(tmp_path, fake_mirror, offline):
    ckpt = tmp_path / "mnist.pt"
    C.main(["pretrain", "--dataset", "mnist", "--mirror", str(fake_mirror), "--n-train", "40", "--n-test", "20",
            "--hidden", "16", "--optimizer", "sgd", "--lr", "0.05", "--epochs", "3", "--batch-size", "16",
            "--log-every", "1", "--seed", "111", "--data-seed", "192", "--device", "cpu", "--threads", "1",
            "--out", str(ckpt), "--metrics", str(tmp_path / "pre.jsonl")])
    ck = torch.load(ckpt, weights_only=True)
    cfg = ck["config"]
    assert (cfg["dataset"], cfg["arch"], cfg["in_dim"], cfg["hidden"]) == ("mnist", "mlp", 784, [16])
    assert (cfg["n_train"], cfg["n_test"], cfg["n_train_rows"], cfg["data_seed"], cfg["seed"]) == (40, 20, 40, 192, 111)
    assert cfg["optimizer"] == "sgd" and len(cfg["data_sha256"]) == 64
    assert "mirror" not in cfg and str(fake_mirror) not in repr(cfg)
    assert len(read_jsonl(tmp_path / "pre.jsonl")) == 4
    for method in ("sft", "rft_exact"):
        out = tmp_path / method
        C.main(["finetune", "--init", str(ckpt), "--method", method, "--optimizer", "sgd", "--lr", "0.05",
                "--epochs", "2", "--log-every", "1", "--mirror", str(fake_mirror), "--device", "cpu",
                "--threads", "1", "--out-dir", str(out)])
        rows = read_jsonl(out / "metrics.jsonl")
        assert [(r["epoch"], r["group"]) for r in rows] == [(e, g) for e in range(3) for g in C.GROUPS]
        conf = read_json(out / "config.json")
        assert conf["n_modified"] == 4 and conf["optimizer"] == "sgd" and conf["device"] == "cpu"
        assert all(r["grad_norm"] > 0 for r in rows)


def test_cli_finetune_refuses_different_data(tmp_path, fake_mirror, offline, capsys):
    import shutil

    ckpt = tmp_path / "m.pt"
    C.main(["pretrain", "--dataset", "mnist", "--mirror", str(fake_mirror), "--n-train", "20", "--n-test", "10",
            "--hidden", "8", "--epochs", "1", "--device", "cpu", "--threads", "1", "--out", str(ckpt)])
    other = tmp_path / "other"
    shutil.copytree(fake_mirror, other)
    train = other / D.mirror_file("mnist", D.SOURCES["mnist"].train)
    rng = np.random.default_rng(5)
    _image_parquet(train, [rng.integers(0, 255, (28, 28)).astype(np.uint8) for _ in range(40)],
                   np.arange(40) % 10, "image")
    with pytest.raises(SystemExit) as e:
        C.main(["finetune", "--init", str(ckpt), "--method", "sft", "--epochs", "1", "--mirror", str(other),
                "--out-dir", str(tmp_path / "o")])
    assert e.value.code == 2 and "differ from the pretraining data" in capsys.readouterr().err


def test_cli_cifar10_resnet_end_to_end(tmp_path, fake_mirror, offline, monkeypatch):
    """The ResNet18 path (BatchNorm, train/eval switches, checkpoint round trip) with widths 4–32
    instead of 64–512: the full width costs ~1 s per forward pass on a 2-core CPU."""
    full = CM.ResNet18
    monkeypatch.setattr(CM, "ResNet18", lambda n_classes, in_channels: full(n_classes, in_channels, width=4))
    ckpt = tmp_path / "cifar.pt"
    C.main(["pretrain", "--dataset", "cifar10", "--mirror", str(fake_mirror), "--n-train", "4", "--n-test", "1",
            "--epochs", "1", "--batch-size", "4", "--device", "cpu", "--threads", "1", "--out", str(ckpt)])
    cfg = torch.load(ckpt, weights_only=True)["config"]
    assert cfg["arch"] == "resnet18" and cfg["in_channels"] == 3
    C.main(["finetune", "--init", str(ckpt), "--method", "rft_exact", "--frac-modified", "0.25", "--epochs", "1",
            "--mirror", str(fake_mirror), "--device", "cpu", "--threads", "1", "--out-dir", str(tmp_path / "ft")])
    s = read_json(tmp_path / "ft" / "summary.json")
    assert s["final"]["modified"]["n"] == 1 and s["final"]["unmodified"]["n"] == 3


def test_cli_stsb_bert_end_to_end(tmp_path, fake_mirror, bert_dir, offline):
    ckpt = tmp_path / "bert.pt"
    C.main(["pretrain", "--dataset", "stsb", "--model-dir", str(bert_dir), "--mirror", str(fake_mirror),
            "--k", "3", "--epochs", "2", "--lr", "1e-3", "--batch-size", "16", "--log-every", "1",
            "--device", "cpu", "--threads", "1", "--out", str(ckpt), "--summary", str(tmp_path / "pre.json")])
    ck = torch.load(ckpt, weights_only=True)
    cfg = ck["config"]
    assert cfg["arch"] == "bert" and cfg["n_classes"] == 6 and cfg["k"] == 3 and cfg["n_train_rows"] == 30
    assert len(cfg["bert_config"]["id2label"]) == 6
    assert cfg["bert_config"]["hidden_dropout_prob"] == 0 and cfg["bert_config"]["attention_probs_dropout_prob"] == 0
    assert cfg["model_dir"] == str(bert_dir.resolve()) and cfg["bert_init"] == "pretrained"
    assert ck["state_dict"]["hf.classifier.weight"].shape == (6, 16)
    for method, reward in (("rft_exact", "labels"), ("reinforce", "labels_with_custom"), ("sft", "labels")):
        out = tmp_path / method
        C.main(["finetune", "--init", str(ckpt), "--method", method, "--reward", reward, "--epochs", "1",
                "--batch-size", "16", "--mirror", str(fake_mirror), "--device", "cpu", "--threads", "1",
                "--out-dir", str(out)])  # --model-dir: the recorded one
        s = read_json(out / "summary.json")
        assert s["final"]["modified"]["n"] == 3 and 0 <= s["test_accuracy"] <= 1
    C.main(["pretrain", "--dataset", "stsb", "--model-dir", str(bert_dir), "--bert-init", "random", "--k", "3",
            "--mirror", str(fake_mirror), "--n-train", "12", "--n-test", "4", "--epochs", "1", "--device", "cpu",
            "--threads", "1", "--out", str(tmp_path / "random.pt")])
    cfg = torch.load(tmp_path / "random.pt", weights_only=True)["config"]
    assert cfg["bert_init"] == "random" and cfg["n_train_rows"] == 12
