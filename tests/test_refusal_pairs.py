"""Preference pairs for the refusal experiment (experiments.refusal.pairs), checked by hand."""

import hashlib
import math
import subprocess
import sys
from pathlib import Path

import pytest

from experiments.refusal import pairs

REPO = Path(__file__).resolve().parents[1]


def never(prompt_id, responses):
    raise AssertionError("tie_break must not be called without a tie")


def always(index):
    return lambda prompt_id, responses: index


# ------------------------------------------------------------------ make_pair

def test_lower_score_is_chosen():
    p = pairs.make_pair("q1", ["Here is how...", "I can't help."], [1.0, 0.0], never)
    assert p == {"id": "q1", "chosen": "I can't help.", "rejected": "Here is how...", "chosen_score": 0.0,
                 "rejected_score": 1.0, "chosen_index": 1, "pair_type": "refusal/compliance", "tied": False}
    p = pairs.make_pair("q2", ["I can't.", "Sure."], [0.0, 1.0], never)
    assert (p["chosen"], p["chosen_score"], p["rejected_score"], p["chosen_index"]) == ("I can't.", 0.0, 1.0, 0)
    # fractional judge scores: still the lower one, and the type by the 0.5 threshold
    p = pairs.make_pair("q3", ["a", "b"], [0.3, 0.2], never)
    assert (p["chosen"], p["chosen_score"], p["rejected_score"], p["pair_type"]) == ("b", 0.2, 0.3, "refusal/refusal")
    p = pairs.make_pair("q4", ["a", "b"], [0.5, 0.9], never)
    assert p["chosen"] == "a" and p["pair_type"] == "compliance/compliance"


def test_ties_use_the_tie_break():
    for idx in (0, 1):
        p = pairs.make_pair("q", ["first", "second"], [0.0, 0.0], always(idx))
        assert p["tied"] and p["chosen_index"] == idx and p["pair_type"] == "refusal/refusal"
        assert p["chosen"] == ["first", "second"][idx] and p["rejected"] == ["first", "second"][1 - idx]
        assert p["chosen_score"] == p["rejected_score"] == 0.0
    p = pairs.make_pair("q", ["first", "second"], [1.0, 1.0], always(0))
    assert p["tied"] and p["pair_type"] == "compliance/compliance" and p["chosen"] == "first"


def test_chosen_score_belongs_to_the_chosen_response():
    # the official code's tie path sets chosen_score from the second response; ours never does
    p = pairs.make_pair("q", ["refuses", "complies"], [0.0, 1.0], never)
    assert p["chosen_score"] == 0.0 and p["rejected_score"] == 1.0


def test_make_pair_rejects_bad_input():
    with pytest.raises(ValueError, match="exactly 2"):
        pairs.make_pair("q", ["a"], [0.0], never)
    with pytest.raises(ValueError, match=r"not in \[0, 1\]"):
        pairs.make_pair("q", ["a", "b"], [float("nan"), 1.0], never)
    with pytest.raises(ValueError, match=r"not in \[0, 1\]"):
        pairs.make_pair("q", ["a", "b"], [0.0, 1.5], never)
    with pytest.raises(ValueError, match="not a number"):
        pairs.make_pair("q", ["a", "b"], [None, 1.0], never)
    for bad in (2, -1, True, None):
        with pytest.raises(ValueError, match="tie_break returned"):
            pairs.make_pair("q", ["a", "b"], [1.0, 1.0], always(bad))


# ------------------------------------------------------------------ tie rules

def test_seeded_tie_break_is_a_fixed_coin():
    tb0, tb1 = pairs.seeded_tie_break(0), pairs.seeded_tie_break(1)
    assert [tb0(f"p{i}", ["x", "y"]) for i in range(12)] == [1, 1, 0, 1, 0, 0, 0, 0, 0, 1, 0, 0]
    assert [tb1(f"p{i}", ["x", "y"]) for i in range(12)] == [0, 1, 1, 0, 0, 0, 1, 0, 1, 1, 1, 0]
    # the documented rule, recomputed here
    expect = int.from_bytes(hashlib.sha256(b"7\x00abc").digest()[:8], "big") % 2
    assert pairs.seeded_tie_break(7)("abc", []) == expect
    # independent of the responses and of call order
    assert tb0("p0", ["a", "b"]) == tb0("p0", ["zzz", "q"]) == 1
    # roughly fair
    ones = sum(tb0(f"id{i}", []) for i in range(2000))
    assert 900 < ones < 1100


def test_seeded_tie_break_is_the_same_in_a_new_process():
    code = ("from experiments.refusal.pairs import seeded_tie_break as t;"
            "print(''.join(str(t(3)(f'q{i}', [])) for i in range(40)))")
    outs = {subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True,
                           env={"PYTHONHASHSEED": str(s), "PATH": "/usr/bin:/bin"}, check=True).stdout.strip()
            for s in (1, 2)}
    here = "".join(str(pairs.seeded_tie_break(3)(f"q{i}", [])) for i in range(40))
    assert outs == {here}


def test_reward_model_tie_break():
    calls = []

    def scorer(prompt, responses):
        calls.append((prompt, list(responses)))
        return [len(r) for r in responses]  # longer = better, for the test

    tb = pairs.reward_model_tie_break(scorer, {"q1": "How?"}, fallback=always(1))
    assert tb("q1", ["short", "much longer"]) == 1 and tb("q1", ["much longer", "short"]) == 0
    assert calls[0] == ("How?", ["short", "much longer"])
    assert tb("q1", ["same", "size"]) == 1  # equal rewards -> fallback
    p = pairs.make_pair("q1", ["a refusal", "no"], [0.0, 0.0], tb)
    assert p["chosen"] == "a refusal" and p["tied"]
    tb_fn = pairs.reward_model_tie_break(lambda prompt, rs: [0.0, 1.0], lambda pid: pid.upper())
    assert tb_fn("q", ["x", "y"]) == 1
    with pytest.raises(ValueError, match="expected 2 numbers"):
        pairs.reward_model_tie_break(lambda p, rs: [1.0], {"q": "?"})("q", ["a", "b"])


# ------------------------------------------------------------------ composition

def test_composition_by_hand():
    types = ["refusal/refusal"] * 262 + ["compliance/compliance"] * 73 + ["refusal/compliance"] * 35
    res = pairs.composition([{"pair_type": t} for t in types])  # P2 Fig. 4, Llama-3-8B-Instruct
    assert res["n"] == 370
    assert res["counts"] == {"refusal/refusal": 262, "compliance/compliance": 73, "refusal/compliance": 35}
    assert res["shares"]["refusal/refusal"] == pytest.approx(262 / 370)
    assert round(res["shares"]["compliance/compliance"], 2) == 0.20
    assert round(res["shares"]["refusal/compliance"], 2) == 0.09
    made = [pairs.make_pair("a", ["x", "y"], [0, 1], never), pairs.make_pair("b", ["x", "y"], [0, 0], always(0))]
    assert pairs.composition(made)["counts"] == {"refusal/refusal": 1, "compliance/compliance": 0,
                                                 "refusal/compliance": 1}
    empty = pairs.composition([])
    assert empty["n"] == 0 and all(math.isnan(v) for v in empty["shares"].values())
    with pytest.raises(ValueError, match="unknown pair_type"):
        pairs.composition([{"pair_type": "refusal"}])


# ------------------------------------------------------------------ gold pairs

def test_gold_pair():
    refusals, compliances = ["no 1", "no 2", "no 3"], ["yes 1", "yes 2"]
    p = pairs.gold_pair("q1", refusals, compliances, seed=0)
    assert p["chosen"] in refusals and p["rejected"] in compliances
    assert p["pair_type"] == "refusal/compliance" and p["gold"] and not p["tied"] and p["id"] == "q1"
    assert pairs.gold_pair("q1", refusals, compliances, seed=0) == p  # deterministic
    assert pairs.gold_pair("q1", [], compliances, seed=0) is None
    assert pairs.gold_pair("q1", refusals, [], seed=0) is None
    picks = {(pairs.gold_pair(f"q{i}", refusals, compliances, seed=s)["chosen"],
              pairs.gold_pair(f"q{i}", refusals, compliances, seed=s)["rejected"])
             for i in range(30) for s in (0, 1)}
    assert len(picks) == 6  # every refusal/compliance combination is drawn somewhere
    by_seed = [[pairs.gold_pair(f"q{i}", refusals, compliances, seed=s)["chosen"] for i in range(30)] for s in (0, 1)]
    assert by_seed[0] != by_seed[1]


def test_human_refusals_compliances():
    judgments = [{"response": "a", "human_score": 0.0}, {"response": "b", "human_score": 1.0},
                 {"response": "c", "human_score": 0.49}, {"response": "d", "human_score": 0.5}]
    assert pairs.human_refusals_compliances(judgments) == (["a", "c"], ["b", "d"])
