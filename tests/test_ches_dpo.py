"""Quantile-subset DPO through TRL (experiments.ches.dpo) on a random micro Llama."""

import csv
import json
import math

import pytest
import torch

from experiments.ches import dpo

WORDS = "the a cat dog sat ran on under mat tree red blue big small it is was and".split()


def _text(rng, n):
    return " ".join(WORDS[int(i)] for i in torch.randint(len(WORDS), (n,), generator=rng))


def _write(tmp_path, recs, values):
    data, scores = tmp_path / "prefs.jsonl", tmp_path / "scores.csv"
    data.write_text("".join(json.dumps(r) + "\n" for r in recs))
    with open(scores, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["id", "ches", "ches_ln", "minus_edit_distance", "hidden_inner_prod"])
        for r, v in zip(recs, values):
            w.writerow([r["id"], v, -v, 0.5, 1.0])
    return data, scores


@pytest.fixture
def files(tmp_path):
    rng = torch.Generator().manual_seed(1)
    recs = [{"id": f"r{i}", "prompt": _text(rng, 6 + i), "chosen": _text(rng, 4 + i % 3),
             "rejected": _text(rng, 5 + i % 2)} for i in range(10)]
    return _write(tmp_path, recs, [float(i) for i in range(10)])


def _argv(micro, data, scores, out, **kw):
    opts = {"measure": "ches", "quantile": 1.0, "subset-size": 8, "seed": 0, "loss": "dpo", "beta": 0.1,
            "lr": 1e-3, "batch-size": 4, "max-prompt-tokens": 16, "max-response-tokens": 8,
            "precision": "fp32", "device": "cpu", "threads": 1}
    opts.update({k.replace("_", "-"): v for k, v in kw.items()})
    argv = ["--model", str(micro), "--data", str(data), "--scores", str(scores), "--out-dir", str(out)]
    for k, v in opts.items():
        argv += [f"--{k}", str(v)]
    return argv


def test_run_trains_two_steps_and_writes_every_key(micro, files, tmp_path):
    data, scores = files
    summary = dpo.main(_argv(micro, data, scores, tmp_path / "run"))
    saved = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert set(dpo.SUMMARY_KEYS) <= set(saved)
    assert saved["steps"] == 2 and saved["n"] == 8 and summary["measure"] == "ches"
    assert saved["delta_logp_chosen"] != 0.0 and saved["delta_logp_rejected"] != 0.0  # the weights moved
    assert math.isclose(saved["train_loss_first"], math.log(2), abs_tol=1e-4)  # ref == initial model
    with open(tmp_path / "run" / "per_example.csv") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 8 and {r["id"] for r in rows} == {f"r{i}" for i in range(2, 10)}  # the 8 largest
    # prompts over --max-prompt-tokens 16 lose the middle of their text; the CSV and the summary count it
    from experiments.ches.scorer import encode_record
    from experiments.models.load import load_tokenizer

    tok = load_tokenizer(micro)
    recs = {r["id"]: r for r in map(json.loads, data.read_text().splitlines())}
    full = {i: len(encode_record(tok, recs[i], "chat", None, None, i).prompt) for i in recs}
    assert [int(r["prompt_tokens"]) for r in rows] == [min(full[r["id"]], 16) for r in rows]
    assert [int(r["prompt_tokens_dropped"]) for r in rows] == [max(full[r["id"]] - 16, 0) for r in rows]
    assert saved["prompt_tokens_dropped"] == sum(max(full[r["id"]] - 16, 0) for r in rows) > 0
    assert sorted(p.name for p in (tmp_path / "run").iterdir()) == ["per_example.csv", "summary.json"]


def test_sequence_logps_equals_a_manual_forward(micro):
    from experiments.models.load import load_causal_lm

    model = load_causal_lm(micro)
    prompts, comps = [[5, 6, 7], [8, 9, 10, 11, 12]], [[20, 21], [22, 23, 24, 25]]
    got = dpo.sequence_logps(model, prompts, comps, batch_size=2, pad_id=0)
    for k, (p, c) in enumerate(zip(prompts, comps)):
        with torch.no_grad():
            logits = model(input_ids=torch.tensor([p + c])).logits[0]
        logp = torch.log_softmax(logits.double(), -1)
        want = sum(float(logp[len(p) - 1 + j, t]) for j, t in enumerate(c))
        assert got[k].item() == pytest.approx(want, abs=1e-4)


def test_trainer_sees_exactly_the_measured_tokens(micro, files, tmp_path):
    """TRL's collator receives our ids unchanged (prompt masked, completion = response + EOS), and its
    first logged logps/chosen (one batch = the whole subset) is the mean of our ln π(y+) before."""
    from experiments.models.load import load_causal_lm, load_tokenizer

    data, _ = files
    tok, model = load_tokenizer(micro), load_causal_lm(micro)
    recs = [json.loads(line) for line in data.read_text().splitlines()][:4]
    rows = dpo.encode_subset(tok, recs, "chat", 16, 8, eos=True)
    for r, rec in zip(rows, recs):
        resp = tok.encode(rec["chosen"], add_special_tokens=False)
        assert r["chosen_ids"] == (resp + [tok.eos_token_id] if len(resp) <= 8 else resp[:8])
    P = [r["prompt_ids"] for r in rows]
    c0 = dpo.sequence_logps(model, P, [r["chosen_ids"] for r in rows], pad_id=tok.pad_token_id)
    r0 = dpo.sequence_logps(model, P, [r["rejected_ids"] for r in rows], pad_id=tok.pad_token_id)
    for r, a, b in zip(rows, c0.tolist(), r0.tolist()):
        r["ref_chosen_logps"], r["ref_rejected_logps"] = a, b
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    out = dpo.train(model, tok, rows, loss="dpo", beta=0.1, lr=1e-3, batch_size=4, epochs=1, seed=0,
                    precision="fp32", device=torch.device("cpu"), work_dir=tmp_path / "w")
    batch = next(iter(out["trainer"].get_train_dataloader()))
    seqs = {tuple(ids[m.bool()].tolist()) for ids, m in zip(batch["input_ids"], batch["attention_mask"])}
    assert seqs == {tuple(r["prompt_ids"] + r[k]) for r in rows for k in ("chosen_ids", "rejected_ids")}
    for ids, m, cm in zip(batch["input_ids"], batch["attention_mask"], batch["completion_mask"]):
        n_prompt = int(m.sum() - cm.sum())
        assert any(ids[:n_prompt].tolist() == r["prompt_ids"] for r in rows)
    first = out["log_history"][0]
    assert float(first["logps/chosen"]) == pytest.approx(float(c0.mean()), abs=1e-3)
    assert float(first["loss"]) == pytest.approx(math.log(2), abs=1e-4)
    assert any(not torch.equal(before[n], p) for n, p in model.named_parameters())


def test_dpo_with_a_large_lr_raises_the_margin(micro, tmp_path):
    rng = torch.Generator().manual_seed(3)
    pair = {"prompt": _text(rng, 5), "chosen": _text(rng, 4), "rejected": _text(rng, 4)}
    recs = [{"id": f"p{i}", **pair} for i in range(8)]
    data, scores = _write(tmp_path, recs, [float(i) for i in range(8)])
    s = dpo.main(_argv(micro, data, scores, tmp_path / "run", lr=3e-3, subset_size=8, batch_size=2))
    assert s["steps"] == 4
    assert s["delta_logp_chosen"] - s["delta_logp_rejected"] > 0.5
    assert s["train_loss_last"] < s["train_loss_first"]


def test_ipo_runs(micro, files, tmp_path):
    data, scores = files
    s = dpo.main(_argv(micro, data, scores, tmp_path / "run", loss="ipo", quantile=0.0, subset_size=4,
                       batch_size=2, measure="ches_ln"))
    assert s["loss"] == "ipo" and s["steps"] == 2
    assert math.isclose(s["train_loss_first"], (1 / (2 * 0.1)) ** 2, rel_tol=1e-4)  # (0 - 1/(2β))²


def _summed_logp(model, prompt, completion):
    """Σ_k ln π(c_k | prompt, c_<k) from one unpadded forward (with the autograd graph)."""
    logp = torch.log_softmax(model(input_ids=torch.tensor([prompt + completion])).logits[0].float(), -1)
    return sum(logp[len(prompt) - 1 + j, t] for j, t in enumerate(completion))


def test_ipo_is_the_token_summed_closed_form(micro, tmp_path):
    """--loss ipo: the trainer's loss and gradient are (h − 1/(2τ))² with h the difference of SUMMED-token
    log-ratios, by hand; TRL's own loss_type="ipo" (each log-ratio divided by its completion length)
    gives another value on completions of 6 and 2 tokens."""
    from trl import DPOTrainer

    from experiments.models.load import load_causal_lm, load_tokenizer

    tok, policy, hand, ref = load_tokenizer(micro), load_causal_lm(micro), load_causal_lm(micro), load_causal_lm(micro)
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():  # a reference away from the policy: h != 0
        for p in ref.parameters():
            p.add_(0.2 * torch.randn(p.shape, generator=g))
    prompt, chosen, rejected, tau = [5, 6, 7, 8], [20, 21, 22, 23, 24, 25], [30, 31], 0.1
    with torch.no_grad():
        ref_c, ref_r = float(_summed_logp(ref, prompt, chosen)), float(_summed_logp(ref, prompt, rejected))
    h_c = _summed_logp(hand, prompt, chosen) - ref_c  # summed-token log-ratios, with the autograd graph
    h_r = _summed_logp(hand, prompt, rejected) - ref_r
    closed_form = (h_c - h_r - 1 / (2 * tau)) ** 2
    closed_form.backward()  # the gradient by hand, on `hand` (a second copy of the initial policy)
    want = float(closed_form.detach())
    with torch.no_grad():
        trl_form = float((h_c / len(chosen) - h_r / len(rejected) - 1 / (2 * tau)) ** 2)
    assert abs(want - trl_form) > 5  # 55.3 against 38.3 here

    rows = [{"prompt_ids": prompt, "chosen_ids": chosen, "rejected_ids": rejected, "ref_chosen_logps": ref_c,
             "ref_rejected_logps": ref_r}]
    trainer = dpo.make_trainer(policy, tok, rows, loss="ipo", beta=tau, lr=1e-3, batch_size=1, epochs=1, seed=0,
                               precision="fp32", device=torch.device("cpu"), work_dir=tmp_path / "w")
    batch = next(iter(trainer.get_train_dataloader()))
    policy.train()
    got = trainer.compute_loss(policy, batch)
    assert got.item() == pytest.approx(want, rel=1e-5)
    assert DPOTrainer._compute_loss(trainer, policy, batch, False).item() == pytest.approx(trl_form, rel=1e-5)
    got.backward()
    for (name, p), q in zip(policy.named_parameters(), hand.parameters(), strict=True):
        scale = float(q.grad.abs().max())  # fp32 sums of ~10 terms: compare to the tensor's own scale
        torch.testing.assert_close(p.grad, q.grad, rtol=1e-4, atol=1e-5 * scale, msg=name)
    policy.zero_grad(set_to_none=True)
    trainer.train()  # the path the CLI takes: the logged loss of the one step is the closed form too
    first = trainer.state.log_history[0]
    assert first["loss"] == pytest.approx(want, rel=1e-4)
    assert first["logps/chosen"] == pytest.approx(float(h_c.detach()) + ref_c, abs=1e-4)  # TRL's metrics still logged


@pytest.mark.parametrize("kw, needle", [
    ({"measure": "nope"}, "unknown measure"),
    ({"quantile": 1.5}, "quantile"),
    ({"subset_size": 11}, "larger than"),
    ({"loss": "kto"}, "--loss"),
    ({"lr": 1e30, "batch_size": 2}, "lower --lr"),  # the NaN guard (step) or the post-training check
])
def test_errors_exit_2(micro, files, tmp_path, capsys, kw, needle):
    data, scores = files
    with pytest.raises(SystemExit) as e:
        dpo.main(_argv(micro, data, scores, tmp_path / "run", **kw))
    assert e.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.startswith("error:") and needle in err


def test_missing_ids_exit_2(micro, files, tmp_path, capsys):
    data, scores = files
    data.write_text("".join(line + "\n" for line in data.read_text().splitlines()[:-1]))
    with pytest.raises(SystemExit) as e:
        dpo.main(_argv(micro, data, scores, tmp_path / "run"))
    assert e.value.code == 2 and "missing from" in capsys.readouterr().err


def test_nan_loss_names_the_step():
    from experiments.common.cli import UserError

    guard = dpo._callbacks()[0]

    class State:
        global_step = 3

    with pytest.raises(UserError, match="step 3"):
        guard.on_log(None, State(), None, logs={"loss": float("nan")})
    guard.on_log(None, State(), None, logs={"loss": 0.5})


def test_several_seeds_in_one_process_equal_separate_runs(micro, files, tmp_path):
    data, scores = files
    argv = _argv(micro, data, scores, tmp_path / "multi" / "seed~{seed}")
    k = argv.index("--seed")
    argv[k + 1:k + 2] = ["0", "1"]
    both = dpo.main(argv)
    alone = dpo.main(_argv(micro, data, scores, tmp_path / "alone", seed=1))
    assert [s["seed"] for s in both] == [0, 1]
    assert both[0]["delta_logp_chosen"] != both[1]["delta_logp_chosen"]  # the seed orders the batches
    for key in ("delta_logp_chosen", "delta_logp_rejected", "train_loss_last", "logp_chosen_before"):
        assert both[1][key] == pytest.approx(alone[key], rel=1e-5, abs=1e-6)  # a fresh model for every seed
    assert (tmp_path / "multi" / "seed~0" / "summary.json").is_file()
    assert (tmp_path / "multi" / "seed~1" / "per_example.csv").is_file()


def test_several_seeds_need_a_seed_placeholder(micro, files, tmp_path, capsys):
    data, scores = files
    argv = _argv(micro, data, scores, tmp_path / "run")
    k = argv.index("--seed")
    argv[k + 1:k + 2] = ["0", "1"]
    with pytest.raises(SystemExit) as e:
        dpo.main(argv)
    assert e.value.code == 2 and "{seed}" in capsys.readouterr().err
