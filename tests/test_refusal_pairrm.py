"""PairRM, the paper's tie-break reward model (experiments.refusal.pairrm), on a random micro DeBERTa,
and the PairRM tie rule of the pair builder (experiments.refusal.build.pairrm_tie_break)."""

import pytest
import torch
from safetensors.torch import load_file
from transformers import DebertaV2Config

from experiments.common.cli import UserError
from experiments.models.prepare_random import build_random_tokenizer
from experiments.refusal import build, pairrm

torch.set_num_threads(1)
MARKERS = [pairrm.SOURCE_PREFIX, pairrm.CAND1_PREFIX, pairrm.CAND2_PREFIX]


@pytest.fixture(scope="module")
def micro(tmp_path_factory):
    tok = build_random_tokenizer(400, ["Yes", "No"])
    tok.add_special_tokens({"additional_special_tokens": MARKERS})
    ids = [tok.convert_tokens_to_ids(m) for m in MARKERS]
    cfg = DebertaV2Config(vocab_size=len(tok), hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                          intermediate_size=64, max_position_embeddings=128, pad_token_id=tok.pad_token_id,
                          n_tasks=1, drop_out=0.05, source_prefix_id=ids[0], cand1_prefix_id=ids[1],
                          cand2_prefix_id=ids[2])
    torch.manual_seed(0)
    model = pairrm.PairRM(cfg).eval()
    with torch.no_grad():  # the default init (std 0.02) gives logits ~1e-5: make them O(1) so the checks bite
        for w in model.head_layer.parameters():
            w.normal_(0.0, 0.5)
    d = tmp_path_factory.mktemp("pairrm") / "m"
    model.save_pretrained(d)
    tok.save_pretrained(d)
    return model, tok, d


def test_encoding_layout_and_budgets(micro):
    _, tok, _ = micro
    ids = pairrm.encode_comparison(tok, "the cat sat", "Yes", "No")
    enc = tok.encode
    assert ids == (enc(pairrm.SOURCE_PREFIX + "the cat sat") + enc(pairrm.CAND1_PREFIX + "Yes")
                   + enc(pairrm.CAND2_PREFIX + "No"))
    long = " ".join(["Yes"] * 50)
    ids = pairrm.encode_comparison(tok, long, long, long, source_max=6, max_tokens=16)
    # source cut to 6 tokens, each candidate to (16 - 6) // 2 = 5
    assert len(ids) == 16 and ids[0] == tok.convert_tokens_to_ids(pairrm.SOURCE_PREFIX)
    assert ids[6] == tok.convert_tokens_to_ids(pairrm.CAND1_PREFIX)
    assert ids[11] == tok.convert_tokens_to_ids(pairrm.CAND2_PREFIX)
    with pytest.raises(ValueError, match="no room"):
        pairrm.encode_comparison(tok, long, "a", "b", source_max=15, max_tokens=16)


def test_logit_is_the_head_difference_at_the_markers(micro):
    model, tok, _ = micro
    ids = torch.tensor([pairrm.encode_comparison(tok, "the dog ran", "Yes it is", "No")])
    h = model.pretrained_model(input_ids=ids).last_hidden_state[0]
    pos = [ids[0].tolist().index(tok.convert_tokens_to_ids(m)) for m in MARKERS]
    w1, b1 = model.head_layer[1].weight, model.head_layer[1].bias
    w2, b2 = model.head_layer[4].weight, model.head_layer[4].bias

    def head(c):
        return (torch.tanh(torch.cat([h[pos[0]], h[c]]) @ w1.T + b1) @ w2.T + b2).mean()

    with torch.no_grad():
        assert model(ids).item() == pytest.approx((head(pos[1]) - head(pos[2])).item(), abs=1e-5)


def test_batched_padded_compare_equals_one_at_a_time(micro, tmp_path):
    model, tok, d = micro
    scorer = pairrm.PairRMScorer(str(d), batch_size=3)
    prompts = ["the cat", "a big red dog ran under the tree", "it is", "the mat was small and blue"]
    a = ["Yes", "No it was not", "the cat sat on the mat", "big"]
    b = ["No no no no", "Yes", "it", "small red tree"]
    batched = scorer.compare(prompts, a, b)
    single = [scorer.compare([p], [x], [y])[0] for p, x, y in zip(prompts, a, b)]
    assert batched == pytest.approx(single, abs=1e-5)
    # the folder round trip gives the in-memory model's logits (to fp32 rounding: the two scorers batch
    # differently, and on an AVX-512 CPU that moved a logit of 1.29 by 1.07e-6); __call__ splits it symmetrically
    mem = pairrm.PairRMScorer(str(d), model=model, tokenizer=tok).compare(prompts, a, b)
    assert batched == pytest.approx(mem, abs=1e-5)
    assert scorer(prompts[1], [a[1], b[1]]) == pytest.approx([batched[1] / 2, -batched[1] / 2], abs=1e-5)
    assert min(abs(x) for x in batched) > 1e-2
    assert len({round(x, 6) for x in batched}) == 4  # not a constant


def test_loading_refuses_pickles_and_mismatched_markers(micro, tmp_path):
    model, tok, d = micro
    pickled = tmp_path / "bin"
    pickled.mkdir()
    (pickled / "config.json").write_text((d / "config.json").read_text())
    torch.save(load_file(d / "model.safetensors"), pickled / "pytorch_model.bin")
    tok.save_pretrained(pickled)
    with pytest.raises(UserError, match="cannot load PairRM"):
        pairrm.PairRMScorer(str(pickled))
    other = build_random_tokenizer(400, ["Yes", "No"])  # the markers are not single tokens here
    with pytest.raises(UserError, match="encodes to"):
        pairrm.PairRMScorer(str(d), model=model, tokenizer=other)


def _sample(i, scores, responses=("r0", "r1")):
    return {"id": f"q{i}", "prompt": f"prompt {i}", "split": "train", "responses": list(responses), "scores": scores}


def test_pairrm_tie_break_chooses_the_preferred_response():
    samples = [_sample(0, [0.0, 0.0]), _sample(1, [1.0, 0.0]), _sample(2, [1.0, 1.0]), _sample(3, [0.0, 0.0])]
    calls = []

    def compare(prompts, a, b):
        calls.append(list(prompts))
        if len(prompts) == 1:
            return {"prompt 0": [2.5], "prompt 2": [-0.5], "prompt 3": [0.0]}[prompts[0]]
        return [2.5, -0.5, 0.0]

    tie = build.pairrm_tie_break(samples, compare, seed=7)
    assert calls == [["prompt 0", "prompt 2", "prompt 3"]]  # one batched pass over the tied samples only
    rows = build.build_pairs(samples, 7, tie)
    assert [r["chosen"] for r in rows[:3]] == ["r0", "r1", "r1"]  # logit > 0 -> first; untied by score; < 0 -> second
    # an exact 0 logit falls back to the seeded coin
    coin = build.pairs_mod.seeded_tie_break(7)("q3", ["r0", "r1"])
    assert rows[3]["chosen"] == ["r0", "r1"][coin]
    with pytest.raises(UserError, match="logits"):
        build.pairrm_tie_break(samples, lambda p, a, b: [1.0], seed=0)
