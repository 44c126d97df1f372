"""The P2 §6 training arms (experiments.refusal.arms) on a random micro Llama."""

import csv
import json
import math

import numpy as np
import pytest
import torch

from experiments.common.cli import UserError
from experiments.refusal import arms, evaluation

torch.set_num_threads(1)

WORDS = ["the", "a", "cat", "dog", "sat", "ran", "on", "under", "mat", "tree", "red", "blue", "big", "small",
         "it", "is", "was", "and"]


def _text(rng, n):
    return " ".join(WORDS[int(i)] for i in torch.randint(len(WORDS), (n,), generator=rng))


def _pairs(n_train=8, n_test=2, prefix="p", seed=1):
    rng = torch.Generator().manual_seed(seed)
    return [{"id": f"{prefix}{i}", "prompt": _text(rng, 5 + i % 4), "chosen": _text(rng, 3 + i % 3),
             "rejected": _text(rng, 4 + i % 2), "split": "train" if i < n_train else "test"}
            for i in range(n_train + n_test)]


def _write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def _write_scores(path, ids, values):
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["id", "ches", "ches_ln"])
        for i, v in zip(ids, values):
            w.writerow([i, -v, v])
    return path


@pytest.fixture
def pairs_file(tmp_path):
    return _write_jsonl(tmp_path / "pairs.jsonl", _pairs())


def _argv(micro, pairs, out, **kw):
    opts = {"arm": "dpo", "seed": 0, "beta": 0.1, "lr": 1e-3, "batch-size": 4, "max-prompt-tokens": 16,
            "max-response-tokens": 8, "eval-max-new-tokens": 5, "eval-batch-inputs": 4, "precision": "fp32",
            "device": "cpu", "threads": 1}
    opts.update({k.replace("_", "-"): v for k, v in kw.items()})
    argv = ["--model", str(micro), "--pairs", str(pairs), "--out-dir", str(out)]
    for k, v in opts.items():
        if v is True:
            argv.append(f"--{k}")
        elif v is not None:
            argv += [f"--{k}"] + ([str(x) for x in v] if isinstance(v, list) else [str(v)])
    return argv


# ------------------------------------------------------------------------------------ pure parts
def test_ches_filter_keeps_exactly_the_lowest_fraction():
    pairs = _pairs(10, 0)
    values = [5.0, 1.0, 3.0, 1.0, 9.0, 0.5, 3.0, 7.0, 3.0, 8.0]
    # the CSV lists the ids in another order: the join is by id
    scores = [{"id": p["id"], "ches_ln": v} for p, v in reversed(list(zip(pairs, values)))]

    def ids(kept):
        return [p["id"] for p in kept]

    assert ids(arms.ches_filter(pairs, scores, 0.3)) == ["p1", "p3", "p5"]  # ceil(3.0) = 3, in file order
    # 0.25 -> ceil(2.5) = 3 as well; 0.35 -> 4: the tie at 3.0 (p2, p6, p8) is broken by file order
    assert ids(arms.ches_filter(pairs, scores, 0.25)) == ["p1", "p3", "p5"]
    assert ids(arms.ches_filter(pairs, scores, 0.35)) == ["p1", "p2", "p3", "p5"]
    assert ids(arms.ches_filter(pairs, scores, 0.5)) == ["p1", "p2", "p3", "p5", "p6"]
    assert ids(arms.ches_filter(pairs, scores, 1e-6)) == ["p5"]  # at least one pair
    assert len(arms.ches_filter(pairs, scores, 1.0)) == 10
    assert len(arms.ches_filter(_pairs(370, 0), [{"id": f"p{i}", "ches_ln": float(i)} for i in range(370)],
                                0.05)) == 19  # the paper's 5 % of 370
    with pytest.raises(UserError, match="no CHES score"):
        arms.ches_filter(pairs, scores[1:], 0.3)
    with pytest.raises(UserError, match="keep-fraction"):
        arms.ches_filter(pairs, scores, 0.0)
    with pytest.raises(UserError, match="no column"):
        arms.ches_filter(pairs, scores, 0.3, measure="ches")


def test_arm_to_loss_config():
    assert arms.loss_config("dpo", None) == (["sigmoid"], None)
    assert arms.loss_config("gold", None) == (["sigmoid"], None)
    assert arms.loss_config("ches_filtered", None) == (["sigmoid"], None)
    assert arms.loss_config("dpo_sft", 0.1) == (["sigmoid", "sft"], [1.0, 0.1])
    with pytest.raises(UserError, match="sft-coef"):
        arms.loss_config("dpo_sft", None)
    with pytest.raises(UserError, match="only for --arm dpo_sft"):
        arms.loss_config("dpo", 0.1)
    with pytest.raises(UserError, match="unknown --arm"):
        arms.loss_config("ipo", None)


def test_eval_prompts_are_unique_per_split():
    rows = [{"id": "a", "prompt": "x", "split": "train"},
            {"id": "b", "prompt_id": "a", "prompt": "x", "split": "train"},
            {"id": "c", "prompt": "y", "split": "test"}, {"id": "d", "prompt": "z", "split": "other"}]
    assert evaluation.eval_prompts(rows) == {"train": [{"id": "a", "prompt": "x"}],
                                             "test": [{"id": "c", "prompt": "y"}]}
    rows[1]["prompt"] = "changed"
    with pytest.raises(UserError, match="two different prompt texts"):
        evaluation.eval_prompts(rows)
    assert evaluation.refusal_rate(np.array([0.0, 1.0, 1.0, np.nan])) == pytest.approx(1 / 3)
    assert evaluation.refusal_rate(np.array([np.nan])) is None


# ------------------------------------------------------------------------------------ SFT term
@pytest.mark.parametrize("norm", ["sequence", "token"])
def test_sft_term_is_trls_chosen_nll(micro, tmp_path, norm):
    """At step 0 the reference is the model, so the DPO part is exactly ln 2 and the logged loss minus
    ln 2 is the SFT term: λ × the chosen NLL from sequence_logps, averaged over pairs of the SUMMED
    token NLL ("sequence", the paper) or over all chosen tokens of the batch ("token", TRL's own)."""
    from experiments.ches.dpo import encode_subset, sequence_logps
    from experiments.models.load import load_causal_lm, load_tokenizer

    tok, model = load_tokenizer(micro), load_causal_lm(micro)
    rows = encode_subset(tok, _pairs(4, 0), "chat", 16, 8, eos=True)
    P = [r["prompt_ids"] for r in rows]
    c0 = sequence_logps(model, P, [r["chosen_ids"] for r in rows], pad_id=tok.pad_token_id)
    r0 = sequence_logps(model, P, [r["rejected_ids"] for r in rows], pad_id=tok.pad_token_id)
    for r, a, b in zip(rows, c0.tolist(), r0.tolist()):
        r["ref_chosen_logps"], r["ref_rejected_logps"] = a, b
    lam = 0.5
    loss_type, weights = arms.loss_config("dpo_sft", lam)
    out = arms.train(model, tok, rows, loss_type=loss_type, loss_weights=weights, sft_norm=norm, beta=0.1,
                     lr=1e-6, batch_size=4, epochs=1, seed=0, precision="fp32", device=torch.device("cpu"),
                     work_dir=tmp_path / "w")
    assert out["trainer"].args.loss_type == ["sigmoid", "sft"] and out["trainer"].args.loss_weights == [1.0, lam]
    per_pair = float(-c0.mean())                                                   # mean summed-token NLL
    per_token = float(-c0.sum()) / sum(len(r["chosen_ids"]) for r in rows)         # NLL per chosen token
    assert per_pair > 2 * per_token  # the two normalisations are far apart (responses of 4-6 tokens)
    want = per_pair if norm == "sequence" else per_token
    sft_part = float(out["log_history"][0]["loss"]) - math.log(2)
    assert sft_part == pytest.approx(lam * want, rel=1e-4)


# ------------------------------------------------------------------------------------ full runs
def test_two_seeds_in_one_process_equal_separate_runs(micro, pairs_file, tmp_path):
    both = arms.main(_argv(micro, pairs_file, tmp_path / "multi" / "seed~{seed}", seed=[0, 1]))
    alone = arms.main(_argv(micro, pairs_file, tmp_path / "alone", seed=1))
    assert [s["seed"] for s in both] == [0, 1]
    for s in both:
        saved = json.loads((tmp_path / "multi" / f"seed~{s['seed']}" / "summary.json").read_text())
        assert set(arms.SUMMARY_KEYS) <= set(saved)
        assert saved["arm"] == "dpo" and saved["n_pairs"] == 8 and saved["steps"] == 2
        assert saved["n_prompts_train"] == 8 and saved["n_prompts_test"] == 2
        assert saved["delta_logp_chosen"] != 0.0
    assert both[0]["delta_logp_chosen"] != both[1]["delta_logp_chosen"]  # the seed orders the batches
    for key in ("delta_logp_chosen", "delta_logp_rejected", "train_loss_last", "logp_chosen_before"):
        assert both[1][key] == pytest.approx(alone[key], rel=1e-5, abs=1e-6)
    assert both[1]["refusal_rate_train"] == alone["refusal_rate_train"]
    r_multi = (tmp_path / "multi" / "seed~1" / "responses.jsonl").read_text()
    assert r_multi == (tmp_path / "alone" / "responses.jsonl").read_text()  # same model, same sampling seeds
    assert r_multi != (tmp_path / "multi" / "seed~0" / "responses.jsonl").read_text()
    assert sorted(p.name for p in (tmp_path / "alone").iterdir()) == ["responses.jsonl", "summary.json"]


def test_eval_only_rate_comes_from_the_judged_responses(micro, pairs_file, tmp_path, monkeypatch):
    from experiments.refusal import judge

    def fake_judge(responses):  # "refuses" when the response has an even number of characters
        return np.array([0.0 if len(r) % 2 == 0 else 1.0 for r in responses])

    monkeypatch.setattr(judge, "judge_batch", fake_judge)
    s = arms.main(_argv(micro, pairs_file, tmp_path / "init", arm=None, eval_only=True, eval_max_new_tokens=7))
    assert s["arm"] == "initial" and s["steps"] == 0 and s["n_pairs"] == 0
    assert s["delta_logp_chosen"] == 0.0 and s["delta_logp_rejected"] == 0.0
    rows = [json.loads(x) for x in (tmp_path / "init" / "responses.jsonl").read_text().splitlines()]
    assert [(r["id"], r["split"]) for r in rows] == [(f"p{i}", "train" if i < 8 else "test") for i in range(10)]
    for split in ("train", "test"):
        resp = [r for r in rows if r["split"] == split]
        assert [r["score"] for r in resp] == [0.0 if len(r["response"]) % 2 == 0 else 1.0 for r in resp]
        want = sum(len(r["response"]) % 2 == 0 for r in resp) / len(resp)
        assert s[f"refusal_rate_{split}"] == pytest.approx(want)
        assert s[f"n_scored_{split}"] == len(resp) and s[f"refused_{split}"] == pytest.approx(want * len(resp))
    assert json.loads((tmp_path / "init" / "summary.json").read_text())["refusal_rate_train"] == s["refusal_rate_train"]


def test_ches_filtered_and_gold_train_on_their_pairs(micro, pairs_file, tmp_path):
    pairs = [json.loads(x) for x in pairs_file.read_text().splitlines()]
    # train pairs p0..p7; the 2 lowest ches_ln (ceil(0.25·8) = 2) are p6 and p3
    scores = _write_scores(tmp_path / "scores.csv", [p["id"] for p in pairs],
                           [5.0, 4.0, 6.0, 1.0, 7.0, 8.0, 0.5, 9.0, -10.0, -10.0])
    s = arms.main(_argv(micro, pairs_file, tmp_path / "ches", arm="ches_filtered", ches_scores=scores,
                        keep_fraction=0.25, eval_max_new_tokens=3))
    assert s["arm"] == "ches_filtered" and s["n_pairs"] == 2 and s["steps"] == 1
    gold = _write_jsonl(tmp_path / "gold.jsonl", _pairs(3, 2, prefix="g", seed=7))
    g = arms.main(_argv(micro, pairs_file, tmp_path / "gold", arm="gold", gold_pairs=gold, lr=None,
                        eval_max_new_tokens=3))
    assert g["n_pairs"] == 3 and g["steps"] == 1 and g["lr"] == 1e-6  # the paper's gold lr by default
    assert g["n_prompts_train"] == 8  # evaluation on the prompts of --pairs


@pytest.mark.parametrize("kw, needle", [
    ({"arm": "kto"}, "unknown --arm"),
    ({"arm": None}, "--arm is required"),
    ({"arm": "dpo_sft"}, "--sft-coef"),
    ({"sft_coef": 0.1}, "only for --arm dpo_sft"),
    ({"arm": "gold"}, "--gold-pairs"),
    ({"arm": "ches_filtered"}, "--ches-scores"),
    ({"keep_fraction": 0}, "keep-fraction"),
    ({"seed": [0, 1]}, "{seed}"),
    ({"batch_size": 0}, "--batch-size"),
    ({"sft_norm": "batch", "arm": "dpo_sft", "sft_coef": 1}, "--sft-norm"),
])
def test_errors_exit_2(micro, pairs_file, tmp_path, capsys, kw, needle):
    with pytest.raises(SystemExit) as e:
        arms.main(_argv(micro, pairs_file, tmp_path / "run", **kw))
    assert e.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.startswith("error:") and needle in err


def test_data_errors_exit_2(micro, pairs_file, tmp_path, capsys):
    scores = _write_scores(tmp_path / "scores.csv", ["p0", "p1"], [0.0, 1.0])  # p2..p7 unscored
    with pytest.raises(SystemExit) as e:
        arms.main(_argv(micro, pairs_file, tmp_path / "run", arm="ches_filtered", ches_scores=scores))
    assert e.value.code == 2 and "no CHES score" in capsys.readouterr().err
    only_test = _write_jsonl(tmp_path / "t.jsonl", [dict(p, split="test") for p in _pairs()])
    with pytest.raises(SystemExit) as e:
        arms.main(_argv(micro, only_test, tmp_path / "run"))
    assert e.value.code == 2 and "no split == 'train'" in capsys.readouterr().err
    with pytest.raises(SystemExit) as e:
        arms.main(_argv(micro, tmp_path / "missing.jsonl", tmp_path / "run"))
    assert e.value.code == 2 and "does not exist" in capsys.readouterr().err


def test_refusal_refusal_keeps_only_two_refusal_pairs():
    types = ["refusal/refusal", "refusal/compliance", "compliance/compliance", "refusal/refusal"]
    pairs = [dict(p, pair_type=t) for p, t in zip(_pairs(4, 0), types)]
    assert [p["id"] for p in arms.refusal_refusal(pairs, "x")] == ["p0", "p3"]
    with pytest.raises(UserError, match="pair_type"):
        arms.refusal_refusal(pairs + _pairs(1, 0, prefix="q"), "x")


def test_dpo_rr_trains_on_the_two_refusal_pairs(micro, tmp_path):
    types = ["refusal/refusal", "refusal/compliance", "compliance/compliance"]
    rows = [dict(p, pair_type=types[i % 3]) for i, p in enumerate(_pairs())]  # train p0..p7: p0, p3, p6 are r/r
    s = arms.main(_argv(micro, _write_jsonl(tmp_path / "pairs.jsonl", rows), tmp_path / "rr", arm="dpo_rr",
                        lr=None, eval_max_new_tokens=3))
    assert s["arm"] == "dpo_rr" and s["n_pairs"] == 3 and s["steps"] == 1 and s["lr"] == 5e-6
    assert s["n_prompts_train"] == 8  # evaluated on every train prompt, not only the trained ones


def test_evaluate_counts_leave_out_unparsed_judge_outputs(monkeypatch):
    """n_scored = prompts − unparsed; refused = Σ (1 − score); the rate is their ratio."""
    monkeypatch.setattr(evaluation, "generate", lambda model, tok, ps, **kw: ["r"] * len(ps))
    prompts = {"train": [{"id": f"p{i}", "prompt": "x"} for i in range(4)], "test": []}
    ev = evaluation.evaluate(None, None, prompts, lambda p, r: np.array([0.0, np.nan, 1.0, 0.5]), seed=0)
    assert ev["counts"] == {"train": (3, 1.5), "test": (0, 0.0)} and ev["unparsed"]["train"] == 1
    assert ev["rates"]["train"] == pytest.approx(1.5 / 3) and ev["rates"]["test"] is None


def test_eval_subset_is_seeded_fixed_and_in_file_order():
    from experiments.refusal.arms import subset_prompts

    ps = [{"id": str(i), "prompt": f"p{i}"} for i in range(20)]
    a = subset_prompts(ps, 8, seed=128)
    assert len(a) == 8 and a == subset_prompts(ps, 8, seed=128)               # same for every arm
    assert [int(p["id"]) for p in a] == sorted(int(p["id"]) for p in a)       # file order kept
    assert a != subset_prompts(ps, 8, seed=1)
    assert subset_prompts(ps, 0, seed=1) == ps and subset_prompts(ps, 50, seed=1) == ps


def test_lr_rule_loss_is_ln2_at_the_start_and_picks_the_largest_that_fell(tmp_path):
    import torch

    from experiments.refusal.arms import read_lr_file
    from experiments.refusal.lr_rule import choose, dpo_loss

    c0, r0 = torch.tensor([-10.0, -12.0]), torch.tensor([-11.0, -9.0])
    assert dpo_loss(c0, r0, c0, r0, 0.1) == pytest.approx(math.log(2))
    # chosen up by 2, rejected down by 2 on both pairs: margin 0.1 * 4 = 0.4 -> softplus(-0.4)
    assert dpo_loss(c0 + 2, r0 - 2, c0, r0, 0.1) == pytest.approx(math.log1p(math.exp(-0.4)))
    tried = [{"lr": 1e-5, "fell": False}, {"lr": 5e-6, "fell": True}, {"lr": 1e-6, "fell": True}]
    assert choose(tried) == 5e-6 and choose([{"lr": 1e-5, "fell": False}]) is None
    (tmp_path / "lr.json").write_text('{"lr": 5e-06}')
    assert read_lr_file(tmp_path / "lr.json") == 5e-6
    (tmp_path / "none.json").write_text('{"lr": null, "tried": []}')
    with pytest.raises(UserError, match="no learning rate passed the rule"):
        read_lr_file(tmp_path / "none.json")
