"""P1 Finding I: per-input reward statistics (closed forms, the official input selection, batched sampling)."""

import numpy as np
import pytest

from experiments.rft.stats import encode_batch, per_input_stats, sample_batch, select_inputs


def test_deterministic_policy_has_std_exactly_zero():
    mean, std, std1 = per_input_stats(np.full((3, 10), 0.37))
    assert (std == 0).all() and (std1 == 0).all() and np.allclose(mean, 0.37)


def test_two_outcome_policy_std_closed_form():
    """k = 10 samples, 3 score 1 and 7 score 0: mean 0.3, population std sqrt(0.3 * 0.7)."""
    r = np.array([[1, 1, 1, 0, 0, 0, 0, 0, 0, 0], [0.5, -0.5] * 5], dtype=float)
    mean, std, std1 = per_input_stats(r)
    assert mean == pytest.approx([0.3, 0.0])
    assert std == pytest.approx([np.sqrt(0.21), 0.5])
    assert std1 == pytest.approx([np.sqrt(0.21 * 10 / 9), 0.5 * np.sqrt(10 / 9)])
    with pytest.raises(ValueError):
        per_input_stats(np.zeros(5))


def test_selection_is_the_official_randomstate_permutation():
    records = [{"id": str(i)} for i in range(50)]
    chosen = select_inputs(records, 7, seed=7)
    assert [r["id"] for r in chosen] == [str(i) for i in np.random.RandomState(7).permutation(50)[:7]]
    assert len(select_inputs(records, 0, seed=7)) == 50


@pytest.fixture(scope="module")
def micro(tmp_path_factory):
    from experiments.models.load import load_generator, load_tokenizer
    from experiments.models.prepare import prepare_model

    out = {}
    for arch in ("llama", "t5"):
        d = tmp_path_factory.mktemp(arch) / "m"
        prepare_model(f"micro-{arch}", {"source": "random", "architecture": arch, "num_layers": 2, "hidden_size": 32,
                                        "num_heads": 4, "intermediate_size": 64, "vocab_size": 400, "seed": 0,
                                        "single_token_words": ["Yes", "No"]}, d)
        out[arch] = (load_generator(d), load_tokenizer(d))
    return out


@pytest.mark.parametrize("arch", ["llama", "t5"])
def test_batched_sampling_shapes_padding_and_greedy_limit(micro, arch):
    model, tok = micro[arch]
    texts = ["a short prompt", "a much longer prompt with more words in it"]
    n_short = len(tok(texts[0])["input_ids"])
    assert len(tok(texts[1])["input_ids"]) > n_short
    batch, cut = encode_batch(tok, texts, n_short, encoder_decoder=arch == "t5")
    assert cut == 1 and batch["input_ids"].shape[1] == n_short  # only the long prompt was truncated
    pad_col = batch["attention_mask"][:, 0] if arch == "llama" else batch["attention_mask"][:, -1]
    assert batch["attention_mask"].all()  # both rows are exactly n_short tokens now
    batch2, _ = encode_batch(tok, [texts[0], texts[0] + " and more"], 64, encoder_decoder=arch == "t5")
    pad_col = batch2["attention_mask"][:, 0] if arch == "llama" else batch2["attention_mask"][:, -1]
    assert pad_col.tolist() == [0, 1]  # left padding for decoder-only, right for encoder-decoder
    outs, n_tokens = sample_batch(model, tok, batch, 5, {"max_new_tokens": 6, "min_new_tokens": 6}, seed=0)
    assert len(outs) == 2 and all(len(o) == 5 for o in outs)
    assert 2 * 5 * 3 < n_tokens <= 2 * 5 * 6  # 6 new tokens per sample, pad ids not counted
    again, _ = sample_batch(model, tok, batch, 5, {"max_new_tokens": 6, "min_new_tokens": 6}, seed=0)
    assert outs == again  # seeded
    greedy, _ = sample_batch(model, tok, batch, 4, {"max_new_tokens": 6, "min_new_tokens": 6, "top_k": 1}, seed=3)
    assert all(len(set(o)) == 1 for o in greedy)  # a deterministic policy: every sample identical
    assert len({tuple(o) for o in outs}) >= 1 and any(len(set(o)) > 1 for o in outs)
