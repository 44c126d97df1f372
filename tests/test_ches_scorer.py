"""CHES scorer (P2 §5): hand-computed scores, batched == per-example, edit distance, subsets, CLI."""

import csv
import json
import subprocess
import sys

import pytest
import torch

from experiments.ches.scorer import (
    ches_from_sums,
    edit_distance,
    encode_record,
    minus_normalized_edit_distance,
    score_encoded,
    scores_from_hidden,
    truncate_prompt,
)
from experiments.ches.subsets import lowest_fraction, quantile_subset
from experiments.common.cli import UserError

SPEC = {"source": "random", "architecture": "llama", "num_layers": 2, "hidden_size": 32, "num_heads": 4,
        "intermediate_size": 64, "vocab_size": 400, "seed": 0, "single_token_words": ["Yes", "No"]}


@pytest.fixture(scope="module")
def micro(tmp_path_factory):
    from experiments.models.load import load_causal_lm, load_tokenizer
    from experiments.models.prepare import prepare_model

    d = tmp_path_factory.mktemp("ches") / "m"
    prepare_model("micro-llama", SPEC, d)
    return d, load_causal_lm(d), load_tokenizer(d)


# ------------------------------------------------------------------------------------ hand-made math
def test_ches_on_hand_made_hidden_states():
    # prompt_len = 2 -> positions 1.. enter (last prompt token through last response token)
    h_pos = torch.tensor([[9., 9.], [1., 0.], [0., 1.], [1., 1.]])  # S+ = [1,0]+[0,1]+[1,1] = [2,2], n+ = 3
    h_neg = torch.tensor([[9., 9.], [2., 0.], [1., 0.]])            # S- = [2,0]+[1,0] = [3,0],       n- = 2
    s = scores_from_hidden(h_pos, h_neg, prompt_len=2)
    # <S+,S-> = 6, |S+|^2 = 8  ->  CHES = 6 - 8 = -2
    assert s["ches"] == pytest.approx(-2.0)
    # ln-CHES = 6/(3*2) - 8/3^2 = 1 - 8/9 = 1/9
    assert s["ches_ln"] == pytest.approx(1 / 9)
    # last hidden states [1,1] . [1,0] = 1
    assert s["hidden_inner_prod"] == pytest.approx(1.0)
    c, ln = ches_from_sums(torch.tensor([2., 2.]), torch.tensor([3., 0.]), 3, 2)
    assert float(c) == pytest.approx(-2.0) and float(ln) == pytest.approx(1 / 9)


def test_edit_distance_hand_cases():
    assert edit_distance([1, 2, 3], [1, 2, 3]) == 0
    assert minus_normalized_edit_distance([1, 2, 3], [1, 2, 3]) == 0.0
    assert edit_distance([1, 2], [3, 4, 5]) == 3          # 2 substitutions + 1 insertion
    assert minus_normalized_edit_distance([1, 2], [3, 4, 5]) == pytest.approx(-1.0)
    assert edit_distance([1, 2, 3, 4], [1, 9, 3, 4]) == 1  # one substitution
    assert minus_normalized_edit_distance([1, 2, 3, 4], [1, 9, 3, 4]) == pytest.approx(-0.25)
    assert edit_distance([1, 2, 3], [2, 3]) == 1           # one deletion
    assert minus_normalized_edit_distance([], []) == 0.0


# --------------------------------------------------------------------------------- batched == single
RECORDS = [
    {"id": "a", "prompt": "Is the sky blue?", "chosen": "Yes it is.", "rejected": "No"},
    {"id": "b", "prompt": "Say something long about the weather and birds in the morning",
     "chosen": "The weather is fine and the birds sing loudly in the morning air", "rejected": "Yes"},
    {"id": "c", "prompt": "x", "chosen": "No no no no", "rejected": "Yes yes, absolutely, yes yes yes yes yes"},
    {"id": "d", "prompt": "Why?", "chosen": "Because.", "rejected": "No reason at all, really, none whatsoever."},
    {"id": "e", "prompt": "Count: one two three four five six seven", "chosen": "eight", "rejected": "eight nine"},
]


@pytest.mark.parametrize("fmt", ["chat", "plain"])
def test_padded_batch_equals_per_example_unpadded(micro, fmt):
    _, model, tok = micro
    longest = max(len(encode_record(tok, r, fmt, None, None, r["id"]).prompt) for r in RECORDS)
    encs = [encode_record(tok, r, fmt, longest - 2, 6, r["id"]) for r in RECORDS]  # cuts the longest prompt
    assert all(e.chosen != e.rejected for e in encs)  # CHES of identical responses is 0: no relative test
    assert len({len(e.prompt) for e in encs}) > 1 and len({len(e.chosen) for e in encs}) > 1
    assert any(e.truncated for e in encs)
    got = score_encoded(model.model, encs, 3, torch.device("cpu"), "fp32")
    with torch.no_grad():
        for e, g in zip(encs, got):
            hp = model(input_ids=torch.tensor([e.prompt + e.chosen]), output_hidden_states=True).hidden_states[-1][0]
            hn = model(input_ids=torch.tensor([e.prompt + e.rejected]), output_hidden_states=True).hidden_states[-1][0]
            ref = scores_from_hidden(hp, hn, len(e.prompt))
            for k in ("ches", "ches_ln", "hidden_inner_prod"):
                assert g[k] == pytest.approx(ref[k], rel=1e-5, abs=1e-9), (e.id, k)
            assert g["minus_edit_distance"] == minus_normalized_edit_distance(e.chosen, e.rejected)
            assert (g["prompt_tokens"], g["chosen_tokens"], g["rejected_tokens"]) == (
                len(e.prompt), len(e.chosen), len(e.rejected))


def test_truncate_prompt_on_hand_made_ids():
    ids = list(range(20))  # 3 header tokens, 15 of text, 2 closing tokens
    # budget 10: 5 tokens of text kept, the first 3 and the last 2; the 10 in the middle dropped
    assert truncate_prompt(ids, 10, 3, 2) == [0, 1, 2, 3, 4, 5, 16, 17, 18, 19]
    assert truncate_prompt(ids, 6, 3, 2) == [0, 1, 2, 3, 18, 19]       # one token of text: its first
    assert truncate_prompt(ids, 20, 3, 2) == ids and truncate_prompt(ids, 25, 3, 2) == ids
    assert truncate_prompt(ids, 4, 0, 0) == [0, 1, 18, 19]              # no template: the text's two ends
    with pytest.raises(ValueError, match="no room"):
        truncate_prompt(ids, 5, 3, 2)


# ChatML with a default system turn, as SmolLM2-Instruct's template (the micro tokenizer has none)
SYSTEM_CHATML = ("{{ '<|im_start|>system\\nYou are a careful assistant.<|im_end|>\\n' }}"
                 "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\\n' + message['content']"
                 " + '<|im_end|>\\n' }}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}"
                 "{% endif %}")
LONG = {"id": "t", "prompt": "Tell me about the cat and the dog, and the tree by the red mat, then say why the sky "
                             "is blue today", "chosen": "a b c d e f g", "rejected": "Yes"}


def test_long_chat_prompt_keeps_the_system_header_and_the_generation_prompt(micro):
    """The old rule (keep the last N tokens) cut the system turn: here the header alone is 29 tokens."""
    from experiments.models.load import load_tokenizer

    tok = load_tokenizer(micro[0])
    tok.chat_template = SYSTEM_CHATML
    header = tok.encode("<|im_start|>system\nYou are a careful assistant.<|im_end|>\n<|im_start|>user\n",
                        add_special_tokens=False)
    closing = tok.encode("<|im_end|>\n<|im_start|>assistant\n", add_special_tokens=False)
    whole = encode_record(tok, LONG, "chat", None, None, "x")
    full = whole.prompt
    assert full[:len(header)] == header and full[-len(closing):] == closing
    text = full[len(header):len(full) - len(closing)]
    assert len(text) > 40
    for budget in (len(header) + len(closing) + 1, 48, len(full) - 1):
        cut = encode_record(tok, LONG, "chat", budget, 2, "x")
        room = budget - len(header) - len(closing)
        assert len(cut.prompt) == budget
        assert cut.prompt == header + text[:(room + 1) // 2] + text[len(text) - room // 2:] + closing
        assert cut.truncated == {"prompt": len(full) - budget, "chosen": len(whole.chosen) - 2}
        assert cut.chosen == whole.chosen[:2] and cut.rejected == whole.rejected  # responses: their start
    short = encode_record(tok, LONG, "chat", len(full), None, "x")  # fits: untouched
    assert short.prompt == full and short.truncated == {}
    with pytest.raises(UserError, match="no room"):
        encode_record(tok, LONG, "chat", len(header) + len(closing), None, "x")


def test_long_plain_prompt_keeps_the_newline_and_both_ends_of_the_text(micro):
    _, _, tok = micro
    full = encode_record(tok, LONG, "plain", None, None, "x").prompt
    assert tok.decode(full[-1:]) == "\n"
    cut = encode_record(tok, LONG, "plain", 9, None, "x")  # 8 tokens of text: the first 4 and the last 4
    assert cut.prompt == full[:4] + full[-5:] and cut.truncated == {"prompt": len(full) - 9}


# ------------------------------------------------------------------------------------------- subsets
def test_quantile_subset_ends_middle_and_ties():
    v = [5.0, 1.0, 4.0, 2.0, 3.0, 0.0, 6.0]  # sorted indices: 5,1,3,4,2,0,6
    assert quantile_subset(v, 0.0, 3) == [5, 1, 3]
    assert quantile_subset(v, 1.0, 3) == [2, 0, 6]
    assert quantile_subset(v, 0.5, 3) == [3, 4, 2]   # centre round(0.5*6) = 3 -> sorted[2:5]
    assert quantile_subset(v, 0.5, 2) == [3, 4]      # even n: starts at centre - 1
    assert quantile_subset(v, 0.9, 3) == [2, 0, 6]   # centre 5 -> window shifted to stay inside
    ties = [1.0, 0.0, 1.0, 0.0, 1.0]
    assert quantile_subset(ties, 0.0, 3) == [1, 3, 0]  # equal values keep input order
    assert quantile_subset(ties, 1.0, 2) == [2, 4]
    with pytest.raises(ValueError):
        quantile_subset(v, 0.5, 8)


def test_lowest_fraction():
    v = [3.0, 1.0, 2.0, 1.0, 5.0]
    assert lowest_fraction(v, 0.4) == [1, 3]
    assert lowest_fraction(v, 0.5) == [1, 2, 3]         # ceil(2.5) = 3, returned in input order
    assert lowest_fraction(v, 1.0) == [0, 1, 2, 3, 4]
    assert len(lowest_fraction(list(range(370)), 0.05)) == 19  # the paper's 5 % of 370
    with pytest.raises(ValueError):
        lowest_fraction(v, 0.0)


# ----------------------------------------------------------------------------------------------- CLI
def _cli(*args):
    return subprocess.run([sys.executable, "-m", "experiments.ches", *args], capture_output=True, text=True,
                          check=False)


@pytest.fixture(scope="module")
def scored(micro, tmp_path_factory):
    folder, _, _ = micro
    d = tmp_path_factory.mktemp("cli")
    data = d / "in.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in RECORDS), encoding="utf-8")
    out = d / "scores.csv"
    p = _cli("score", "--model", str(folder), "--data", str(data), "--out", str(out), "--batch-size", "4",
             "--max-prompt-tokens", "20", "--max-response-tokens", "6", "--precision", "fp32", "--no-progress")
    assert p.returncode == 0, p.stderr
    return folder, data, out, p.stdout


def test_score_cli_writes_csv_in_input_order(scored, micro):
    _, _, out, stdout = scored
    with open(out, newline="") as f:
        rows = list(csv.DictReader(f))
    assert [r["id"] for r in rows] == [r["id"] for r in RECORDS]
    assert list(rows[0]) == ["id", "ches", "ches_ln", "minus_edit_distance", "hidden_inner_prod",
                             "prompt_tokens", "chosen_tokens", "rejected_tokens", "truncated",
                             "prompt_tokens_dropped", "chosen_tokens_dropped", "rejected_tokens_dropped"]
    # what was cut, per pair and in total: the untruncated lengths minus the budgets (20 prompt, 6 response)
    full = [encode_record(micro[2], r, "chat", None, None, r["id"]) for r in RECORDS]
    dropped = {part: [max(len(getattr(e, part)) - cap, 0) for e in full]
               for part, cap in (("prompt", 20), ("chosen", 6), ("rejected", 6))}
    assert sum(dropped["prompt"]) > 0 and sum(dropped["chosen"]) + sum(dropped["rejected"]) > 0
    for part, want in dropped.items():
        assert [int(r[f"{part}_tokens_dropped"]) for r in rows] == want
    assert [r["truncated"] for r in rows] == [str(int(any(dropped[p][k] for p in dropped))) for k in range(len(rows))]
    assert (f"tokens dropped: prompt {sum(dropped['prompt'])}, chosen {sum(dropped['chosen'])}, "
            f"rejected {sum(dropped['rejected'])}") in stdout


def test_filter_keeps_exactly_the_lowest_fraction(scored, tmp_path):
    _, data, out, _ = scored
    with open(out, newline="") as f:
        vals = {r["id"]: float(r["ches_ln"]) for r in csv.DictReader(f)}
    kept = tmp_path / "kept.jsonl"
    p = _cli("filter", "--scores", str(out), "--data", str(data), "--measure", "ches_ln", "--keep-fraction", "0.4",
             "--out", str(kept))
    assert p.returncode == 0, p.stderr
    ids = [json.loads(line)["id"] for line in kept.read_text().splitlines()]
    lowest = sorted(vals, key=vals.get)[:2]
    assert sorted(ids) == sorted(lowest)
    assert ids == [r["id"] for r in RECORDS if r["id"] in lowest]  # input order


def _one_line_error(p):
    assert p.returncode == 2, p.stderr
    lines = p.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), p.stderr
    return lines[0]


def test_cli_errors_exit_2_with_one_line(scored, tmp_path):
    folder, data, out, _ = scored
    m = str(folder)
    assert "does not exist" in _one_line_error(
        _cli("score", "--model", m, "--data", str(tmp_path / "nope.jsonl"), "--out", str(tmp_path / "o.csv")))
    empty = tmp_path / "empty.jsonl"
    empty.write_text("\n")
    assert "no records" in _one_line_error(_cli("score", "--model", m, "--data", str(empty), "--out",
                                                str(tmp_path / "o.csv"), "--no-progress"))
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps(RECORDS[0]) + "\n" + json.dumps({"id": "z", "prompt": "p", "chosen": "c"}) + "\n")
    msg = _one_line_error(_cli("score", "--model", m, "--data", str(bad), "--out", str(tmp_path / "o.csv"),
                               "--no-progress"))
    assert f"{bad}:2" in msg and "rejected" in msg
    emp = tmp_path / "empty_resp.jsonl"
    emp.write_text(json.dumps({"id": "z", "prompt": "p", "chosen": "", "rejected": "No"}) + "\n")
    assert "empty chosen" in _one_line_error(_cli("score", "--model", m, "--data", str(emp), "--out",
                                                   str(tmp_path / "o.csv"), "--no-progress"))
    assert "unknown measure" in _one_line_error(_cli("filter", "--scores", str(out), "--data", str(data),
                                                     "--measure", "nope", "--keep-fraction", "0.5",
                                                     "--out", str(tmp_path / "k.jsonl")))
    for frac in ("0", "1.5"):
        assert "keep-fraction" in _one_line_error(_cli("filter", "--scores", str(out), "--data", str(data),
                                                       "--keep-fraction", frac, "--out", str(tmp_path / "k.jsonl")))
    assert not (tmp_path / "o.csv").exists()  # nothing half-written
