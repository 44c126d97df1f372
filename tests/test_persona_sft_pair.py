"""The per-pair SFT recipe: its stopping rule (control flow and on a micro model), the held-out split
the DPO prompts come from, the DPO run's new summary fields, and the workflow plan."""

import json
import re

import pytest
import torch

from experiments.common.cli import UserError
from experiments.common.io import read_json, read_jsonl
from experiments.persona.prompts import dpo_prompt, select_prompt, split_class
from experiments.persona.sft import train_until_target


def _fake(trajectory):
    """update/evaluate pair replaying a held-out π(y+) trajectory (index = steps taken)."""
    state = {"step": 0, "updates": 0}

    def update(step):
        assert step == state["step"] + 1
        state["step"] = step
        state["updates"] += 1
        return {"loss": 1.0 / step}

    def evaluate():
        return trajectory[state["step"]]

    return update, evaluate, state


def test_stops_at_the_first_step_crossing_the_target():
    update, evaluate, state = _fake([0.1, 0.3, 0.64, 0.66, 0.9, 0.95])
    rows, stop = train_until_target(update, evaluate, stop_at=0.65, max_steps=10)
    assert stop["steps"] == 3 and stop["reached"] and stop["heldout_p_target"] == 0.66
    assert state["updates"] == 3 and [r["step"] for r in rows] == [0, 1, 2, 3]
    assert stop["heldout_p_target_start"] == 0.1


def test_exactly_at_the_target_counts():
    update, evaluate, _ = _fake([0.2, 0.65, 0.9])
    assert train_until_target(update, evaluate, 0.65, 10)[1]["steps"] == 1


def test_the_cap_is_respected():
    update, evaluate, state = _fake([0.1, 0.2, 0.3, 0.4, 0.99])
    rows, stop = train_until_target(update, evaluate, stop_at=0.65, max_steps=3)
    assert stop["steps"] == 3 and not stop["reached"] and state["updates"] == 3 and len(rows) == 4


def test_a_model_already_there_is_not_trained():
    update, evaluate, state = _fake([0.8, 0.9])
    rows, stop = train_until_target(update, evaluate, stop_at=0.65, max_steps=5)
    assert stop["steps"] == 0 and stop["reached"] and state["updates"] == 0 and len(rows) == 1


RECORDS = [{"id": i, "question": f"Is statement {i} something you would say?",
            "answer_matching_behavior": "Yes" if i % 2 else "No"} for i in range(80)]


def test_split_and_dpo_prompts_are_held_out():
    train, held = split_class(RECORDS, "No", 8, seed=0)
    assert len(held) == 8 and len(train) == 32 and not {r["id"] for r in train} & {r["id"] for r in held}
    assert all(r["answer_matching_behavior"] == "No" for r in train + held)
    assert split_class(RECORDS, "No", 8, seed=0) == (train, held)
    assert split_class(RECORDS, "No", 8, seed=1)[1] != held
    for seed in (9773, 5290, 8767, 1, 2):
        r = dpo_prompt(RECORDS, "No", seed, "heldout", 8, 0)
        assert r in held
    assert dpo_prompt(RECORDS, "No", 9773, "all") == select_prompt(RECORDS, "No", 9773)
    with pytest.raises(UserError):
        split_class(RECORDS, "No", 40, seed=0)      # nothing left to train on
    with pytest.raises(UserError):
        dpo_prompt(RECORDS, "No", 1, "some")


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    path = tmp_path_factory.mktemp("persona") / "persona.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in RECORDS))
    return path


def _sft(micro, data, out, stop_at, max_steps):
    from experiments.persona import sft

    sft.main(["--recipe", "pair", "--target", "Yes", "--prompts-with-amb", "No", "--stop-at", str(stop_at),
              "--max-steps", str(max_steps), "--heldout-prompts", "8", "--model-dir", str(micro), "--data", str(data),
              "--out-dir", str(out / "model"), "--metrics", str(out / "m.jsonl"), "--summary", str(out / "s.json"),
              "--optimizer", "adam", "--lr", "1e-2", "--batch-size", "8", "--threads", "1", "--precision", "fp32"])
    return read_json(out / "s.json"), read_jsonl(out / "m.jsonl")


def _heldout_p(model_dir, ids):
    from experiments.models.load import load_causal_lm, load_tokenizer
    from experiments.persona.prompts import encode_prompt, left_pad
    from experiments.persona.sft import mean_answer_probs

    tok, model = load_tokenizer(model_dir), load_causal_lm(model_dir)
    model.eval()
    recs = [r for r in RECORDS if r["id"] in ids]
    batch = left_pad([encode_prompt(tok, r["question"], "auto") for r in recs], tok.pad_token_id)
    yes = tok.encode("Yes", add_special_tokens=False)[0]
    return mean_answer_probs(model, [batch], {"Yes": yes}, torch.device("cpu"), "fp32")["Yes"]


def test_pair_sft_on_a_micro_model_stops_at_the_crossing(micro, data, tmp_path):
    s, rows = _sft(micro, data, tmp_path, stop_at=0.2, max_steps=40)
    assert s["reached"] and 1 <= s["steps"] < 40 and s["recipe"] == "pair"
    p = [r["heldout_p_target"] for r in rows]
    assert len(p) == s["steps"] + 1 and p[-1] >= 0.2 and max(p[:-1]) < 0.2   # the first crossing, not later
    assert s["heldout_p_target"] == p[-1] and s["dpo_prompts_held_out"]
    record = read_json(tmp_path / "model" / "persona_sft.json")
    assert not set(record["trained_prompt_ids"]) & set(record["heldout_prompt_ids"])
    # the saved model is the one at the stopping step
    assert _heldout_p(tmp_path / "model", set(record["heldout_prompt_ids"])) == pytest.approx(p[-1], abs=1e-5)


def test_pair_sft_on_a_micro_model_respects_the_cap(micro, data, tmp_path):
    s, rows = _sft(micro, data, tmp_path, stop_at=0.99, max_steps=3)
    assert s["steps"] == 3 and not s["reached"] and len(rows) == 4 and rows[-1]["heldout_p_target"] < 0.99


def test_dpo_from_a_pair_sft_model_records_the_new_fields(micro, data, tmp_path):
    from experiments.persona import dpo

    _sft(micro, data, tmp_path / "sft", stop_at=0.2, max_steps=40)
    out = tmp_path / "run"
    meanings = {"affirmative": ["yes"], "negative": ["no"]}
    dpo.main(["--model-dir", str(tmp_path / "sft" / "model"), "--data", str(data), "--chosen", "Yes",
              "--rejected", "No", "--prompts-with-amb", "No", "--prompt-pool", "heldout", "--heldout-prompts", "8",
              "--split-seed", "0", "--loss", "dpo", "--lr", "1e-4", "--steps", "3", "--seed", "9773",
              "--meanings", json.dumps(meanings), "--opposites", json.dumps({"affirmative": ["negative"]}),
              "--threads", "1", "--out-dir", str(out)])
    s = read_json(out / "summary.json")
    assert s["prompt_seen_in_sft"] is False and s["prompt_pool"] == "heldout"
    assert s["sft"]["recipe"] == "pair" and s["sft"]["reached"]
    assert isinstance(s["definition1"], bool)
    pred = s["theory_first_step"]["step0"]
    assert pred["logit_check"] < 1e-4 and pred["rate"] == pytest.approx(0.05 * pred["bracket"])
    assert pred["gainers"][0]["meaning"] in ("benign", "catastrophic", "other")
    rows = read_jsonl(out / "metrics.jsonl")
    assert s["dlogp_chosen_first_step"] == pytest.approx(rows[1]["logp_chosen"] - rows[0]["logp_chosen"])
    # a prompt pool that disagrees with the SFT's split is refused
    with pytest.raises(SystemExit):
        dpo.main(["--model-dir", str(tmp_path / "sft" / "model"), "--data", str(data), "--chosen", "Yes",
                  "--rejected", "No", "--prompts-with-amb", "No", "--prompt-pool", "heldout",
                  "--heldout-prompts", "8", "--split-seed", "5", "--lr", "1e-4", "--steps", "1", "--seed", "9773",
                  "--meanings", json.dumps(meanings), "--opposites", "{}", "--out-dir", str(tmp_path / "bad")])


def _plan(scale, tmp_path):
    from test_workflow import job_counts, snakemake

    r = snakemake("-n", "-p", "--config", f"scale={scale}", "--directory", str(tmp_path))
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    return job_counts(r.stdout), r.stdout


@pytest.mark.parametrize("scale", ["smoke", "tiny"])
def test_plan_has_the_scan_and_one_sft_per_pair(scale, tmp_path):
    import yaml

    from conftest import REPO

    cfg = yaml.safe_load((REPO / f"workflow/config/{scale}.yaml").read_text())["persona"]
    counts, out = _plan(scale, tmp_path)
    assert cfg["sft"]["recipe"] == "pair" and "persona_sft" not in counts
    targets = {(p["chosen"], p["prompts_with_amb"]) for m in cfg["models"].values() for p in m["pairs"]}
    assert counts["persona_sft_pair"] == len(targets) * len(cfg["models"])
    assert counts["persona_scan"] == len(cfg["models"]) and counts["persona_scan_report"] == 1
    for chosen, amb in targets:
        assert re.search(rf"persona/[^/\s]+/sft/{chosen}/amb~{amb}/model", out)
    # every post-SFT run starts from its own pair's SFT model and draws its prompt from the held-out split
    dpo = [line for line in out.splitlines() if "experiments.persona.dpo" in line]
    assert len(dpo) == counts["persona_dpo"] and all("--prompt-pool heldout" in line for line in dpo)
    for line in dpo:
        if "/sft~" in line and "--loss dpo" in line and "--chosen Yes " in line:
            assert "/sft/Yes/amb~No/model" in line


def test_paper_plan_keeps_the_paper_recipe(tmp_path):
    counts, _ = _plan("paper", tmp_path)
    assert counts["persona_sft"] == 3 and "persona_sft_pair" not in counts and counts["persona_scan"] == 3
