"""SFT on GRUE tasks (experiments.rft.sft): cheap-SFT selection rules, tokens, TRL/Seq2Seq training, outputs."""

import csv
import json
import math

import numpy as np
import pytest
import torch

from experiments.rft import sft

WORDS = "the a cat dog sat ran on under mat tree red blue big small it is was and".split()
SPEC = {"source": "random", "num_layers": 2, "hidden_size": 32, "num_heads": 4, "intermediate_size": 64,
        "vocab_size": 400, "seed": 0, "single_token_words": ["Yes", "No"]}


def _text(rng, n):
    return " ".join(WORDS[int(i)] for i in torch.randint(len(WORDS), (n,), generator=rng))


@pytest.fixture(scope="module")
def micro(tmp_path_factory):
    from experiments.models.prepare import prepare_model

    d = tmp_path_factory.mktemp("rft_sft")
    prepare_model("micro-llama", {**SPEC, "architecture": "llama"}, d / "llama")
    prepare_model("micro-t5", {**SPEC, "architecture": "t5"}, d / "t5")
    return {"llama": d / "llama", "t5": d / "t5"}


def _records(n=12, seed=1):
    rng = torch.Generator().manual_seed(seed)
    return [{"id": f"r{i}", "split": "train", "prompt": _text(rng, 5 + i % 4),
             "references": [_text(rng, 3 + j) for j in range(1 + i % 2)], "meta": {}} for i in range(n)]


@pytest.fixture
def data(tmp_path):
    path = tmp_path / "task.jsonl"
    recs = _records() + [{**r, "id": f"v{i}", "split": "validation"} for i, r in enumerate(_records(3, seed=9))]
    path.write_text("".join(json.dumps(r) + "\n" for r in recs))
    return path


def _argv(model, data, out, **kw):
    opts = {"lr": 3e-3, "epochs": 2, "batch-size": 4, "max-prompt-tokens": 16, "max-target-tokens": 8,
            "precision": "fp32", "device": "cpu", "threads": 1}
    opts.update({k.replace("_", "-"): v for k, v in kw.items()})
    argv = ["--model", str(model), "--data", str(data), "--out-dir", str(out)]
    for k, v in opts.items():
        argv += [f"--{k}", str(v)]
    return argv


# ------------------------------------------------------------------------------------ pure helpers
@pytest.mark.parametrize("n, frac", [(100, 0.01), (100, 0.1), (100, 0.29), (37, 0.5), (12, 1.0), (1, 1.0)])
def test_subsample_indices_keeps_int_n_frac_distinct_indices(n, frac):
    idx = sft.subsample_indices(n, frac, seed=7)
    assert len(idx) == int(n * frac)
    assert len(set(idx.tolist())) == len(idx) and all(0 <= i < n for i in idx)
    assert np.array_equal(idx, np.random.RandomState(7).permutation(n)[:int(n * frac)])  # the official rule


def test_subsample_indices_is_deterministic_and_seed_dependent():
    a, b = sft.subsample_indices(1000, 0.1, 7), sft.subsample_indices(1000, 0.1, 7)
    assert np.array_equal(a, b)
    assert not np.array_equal(a, sft.subsample_indices(1000, 0.1, 8))
    assert sorted(sft.subsample_indices(50, 1.0, 3).tolist()) == list(range(50))  # frac 1 keeps everything


def test_subsample_indices_nest_across_fractions():
    small, mid, full = (sft.subsample_indices(1000, f, 7) for f in (0.01, 0.1, 1.0))
    assert np.array_equal(mid[:len(small)], small) and np.array_equal(full[:len(mid)], mid)
    assert set(small.tolist()) < set(mid.tolist()) < set(full.tolist())


@pytest.mark.parametrize("n, frac", [(100, 0.0), (100, -0.1), (100, 1.01), (100, float("nan")), (50, 0.01), (0, 1.0)])
def test_subsample_indices_rejects_bad_fractions(n, frac):
    with pytest.raises(ValueError):
        sft.subsample_indices(n, frac, 7)


def test_sft_max_steps_hand_cases():
    assert sft.sft_max_steps(100, 8, 2, 1.0) == 26  # ceil(100/8) = 13 per epoch
    assert sft.sft_max_steps(100, 8, 2, 0.4) == 11  # ceil(10.4)
    assert sft.sft_max_steps(100, 8, 2, 0.001) == 1  # never 0
    assert sft.sft_max_steps(100, 8, 0.5, 1.0) == 7  # ceil(6.5)
    assert sft.sft_max_steps(30, 1, 1, 0.1) == 3  # 0.1 * 30 is 3, not ceil(3.0000000000000004)
    assert sft.sft_max_steps(5, 8, 3, 1.0) == 3  # a batch larger than the pool: one step per epoch
    for bad in [(0, 8, 1, 1.0), (10, 0, 1, 1.0), (10, 2, 0, 1.0), (10, 2, 1, 0.0), (10, 2, 1, 1.5)]:
        with pytest.raises(ValueError):
            sft.sft_max_steps(*bad)


def test_sft_examples_expands_references():
    recs = [{"id": "a", "prompt": "p1", "references": ["x", "y", "z"]}, {"id": 2, "prompt": "p2", "references": ["w"]}]
    assert sft.sft_examples(recs) == [("p1", "x", "a"), ("p1", "y", "a"), ("p1", "z", "a"), ("p2", "w", "2")]
    assert sft.sft_examples(recs, "first") == [("p1", "x", "a"), ("p2", "w", "2")]
    with pytest.raises(ValueError, match="no reference"):
        sft.sft_examples(recs + [{"id": "c", "prompt": "p3", "references": []}])
    with pytest.raises(ValueError):
        sft.sft_examples(recs, "random")


# ----------------------------------------------------------------------------------------- tokens
@pytest.mark.parametrize("fmt", ["plain", "chat"])
def test_prompt_ids_are_the_generation_ids(micro, fmt):
    from experiments.models.load import load_tokenizer
    from experiments.rft.stats import encode_batch, render_prompt

    tok = load_tokenizer(micro["llama"])
    recs = _records(4)
    examples = sft.sft_examples(recs)
    rows, cuts = sft.encode_examples(tok, examples, prompt_format=fmt, max_prompt_tokens=12, max_target_tokens=3,
                                     encoder_decoder=False)
    assert len(rows) == len(examples)
    for row, (prompt, target, rid) in zip(rows, examples):
        text = render_prompt(tok, prompt, fmt)
        full = tok(text, add_special_tokens=fmt == "plain")["input_ids"]
        assert row["prompt_ids"] == full[-12:]  # the END of the prompt is kept
        batch, _ = encode_batch(tok, [text], 12, False, special_tokens=fmt == "plain")
        assert row["prompt_ids"] == batch["input_ids"][0].tolist()
        assert row["target_ids"] == tok(target, add_special_tokens=False)["input_ids"][:3] + [tok.eos_token_id]
        assert row["id"] == rid
    if fmt == "chat":
        assert cuts["truncated_prompts"] > 0  # the chat wrapper alone nearly fills 12 tokens
    assert cuts["truncated_targets"] == sum(len(tok(t, add_special_tokens=False)["input_ids"]) > 3
                                            for _, t, _ in examples)


def test_collated_batch_masks_the_prompt_and_the_loss_is_on_completions(micro, tmp_path):
    """TRL's batch: labels -100 on prompt and padding, target ids + EOS elsewhere; its loss is the mean
    next-token NLL over those completion tokens only."""
    from experiments.models.load import load_causal_lm, load_tokenizer

    tok, model = load_tokenizer(micro["llama"]), load_causal_lm(micro["llama"])
    rows, _ = sft.encode_examples(tok, sft.sft_examples(_records(6)), prompt_format="plain", max_prompt_tokens=16,
                                  max_target_tokens=8, encoder_decoder=False)
    trainer = sft.make_trainer(model, tok, rows, encoder_decoder=False, max_steps=1, batch_size=len(rows), lr=1e-3,
                               lr_scheduler="constant", warmup_steps=0, weight_decay=0.0, seed=0, precision="fp32",
                               device=torch.device("cpu"), work_dir=tmp_path / "w")
    batch = next(iter(trainer.get_train_dataloader()))
    assert batch["input_ids"].shape[0] == len(rows)
    want = {tuple(r["prompt_ids"] + r["target_ids"]): r for r in rows}
    seen = set()
    for ids, mask, labels in zip(batch["input_ids"], batch["attention_mask"], batch["labels"]):
        n = int(mask.sum())
        assert mask[:n].all() and not mask[n:].any()  # right padding
        r = want[tuple(ids[:n].tolist())]
        p = len(r["prompt_ids"])
        assert (labels[:p] == -100).all() and (labels[n:] == -100).all()
        assert labels[p:n].tolist() == r["target_ids"] and r["target_ids"][-1] == tok.eos_token_id
        seen.add(tuple(ids[:n].tolist()))
    assert seen == set(want)

    model.eval()
    with torch.no_grad():
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        logp = torch.log_softmax(logits[:, :-1].double(), -1)
        lab = batch["labels"][:, 1:]
        keep = lab != -100
        manual = -(logp.gather(-1, lab.clamp(min=0).unsqueeze(-1)).squeeze(-1) * keep).sum() / keep.sum()
        got = trainer.compute_loss(trainer.model, {k: v for k, v in batch.items()})
    assert float(got) == pytest.approx(float(manual), rel=1e-4)


# ---------------------------------------------------------------------------------------- training
def test_sft_lowers_the_loss_and_saves_a_loadable_model(micro, data, tmp_path):
    from experiments.models.load import load_generator, load_tokenizer
    from experiments.rft.stats import encode_batch

    out = tmp_path / "run"
    s = sft.main(_argv(micro["llama"], data, out, epochs=3))
    assert set(sft.SUMMARY_KEYS) <= set(s)
    assert s["n_pool"] == 12 and s["n_examples_pool"] == 18 == s["n_examples_used"]  # 12 train records, 6 with 2 refs
    assert s["max_steps"] == s["steps"] == 15  # ceil(3 * ceil(18 / 4))
    assert s["loss_last"] < s["loss_first"] - 0.5
    saved = json.loads((out / "summary.json").read_text())
    assert saved["steps"] == s["steps"] and saved["loss_last"] == pytest.approx(s["loss_last"])
    with open(out / "train_log.csv") as f:
        log = list(csv.DictReader(f))
    assert [int(r["step"]) for r in log] == list(range(1, 16))
    assert float(log[0]["loss"]) == pytest.approx(s["loss_first"])
    assert all(math.isfinite(float(r["grad_norm"])) and float(r["learning_rate"]) == 3e-3 for r in log)
    assert sorted(p.name for p in out.iterdir()) == ["model", "summary.json", "train_log.csv"]

    manifest = json.loads((out / "model" / "prepare_manifest.json").read_text())
    source = json.loads((micro["llama"] / "prepare_manifest.json").read_text())
    assert manifest["spec"] == source["spec"] and manifest["sft_from"] == str(micro["llama"])
    assert manifest["sft_summary"]["steps"] == 15
    assert json.loads((out / "model" / "config.json").read_text()) == json.loads(
        (micro["llama"] / "config.json").read_text())  # weights only: use_cache etc. as in the source

    model, tok = load_generator(out / "model"), load_tokenizer(out / "model")
    base = load_generator(micro["llama"])
    assert any(not torch.equal(a, b) for a, b in zip(model.state_dict().values(), base.state_dict().values()))
    batch, _ = encode_batch(tok, ["the cat sat", "a dog"], 16, False)
    gen = model.generate(**batch, max_new_tokens=4, do_sample=False, pad_token_id=tok.pad_token_id)
    assert gen.shape[1] > batch["input_ids"].shape[1]


def test_cheap_sft_takes_a_fraction_of_the_full_steps(micro, data, tmp_path):
    s = sft.main(_argv(micro["llama"], data, tmp_path / "run", data_frac=0.25, steps_frac=0.5, max_pool=8,
                       references="first", precision="bf16"))
    full = sft.sft_max_steps(8, 4, 2, 1.0)  # the FULL pool: 8 inputs, first reference only
    assert s["n_pool"] == 8 and s["n_examples_pool"] == 8 and full == 4
    assert s["max_steps"] == s["steps"] == 2 < full
    assert s["n_examples_used"] == 2 == len(sft.subsample_indices(8, 0.25, 7))
    assert s["epochs_over_subset"] == 2.0  # one batch holds the whole subset: each step is one pass
    assert s["precision"] == "bf16" and math.isfinite(s["loss_last"])


def test_t5_trains_and_saves(micro, data, tmp_path):
    from experiments.models.load import load_generator, load_tokenizer

    out = tmp_path / "run"
    s = sft.main(_argv(micro["t5"], data, out, epochs=3))
    assert s["architecture"] == "encoder-decoder" and s["steps"] == s["max_steps"] == 15
    assert s["loss_last"] < s["loss_first"]
    model, tok = load_generator(out / "model"), load_tokenizer(out / "model")
    assert model.config.is_encoder_decoder
    enc = tok(["the cat sat"], return_tensors="pt")
    gen = model.generate(**enc, max_new_tokens=4, do_sample=False)
    assert gen.shape[0] == 1 and gen.shape[1] >= 2


def test_t5_labels_are_target_plus_eos(micro, tmp_path):
    from experiments.models.load import load_generator, load_tokenizer

    tok, model = load_tokenizer(micro["t5"]), load_generator(micro["t5"])
    rows, _ = sft.encode_examples(tok, sft.sft_examples(_records(4), "first"), prompt_format="plain",
                                  max_prompt_tokens=5, max_target_tokens=8, encoder_decoder=True)
    for r, rec in zip(rows, _records(4)):
        assert r["prompt_ids"] == tok(rec["prompt"])["input_ids"][:5]  # the START of the prompt is kept
    trainer = sft.make_trainer(model, tok, rows, encoder_decoder=True, max_steps=1, batch_size=4, lr=1e-3,
                               lr_scheduler="constant", warmup_steps=0, weight_decay=0.0, seed=0, precision="fp32",
                               device=torch.device("cpu"), work_dir=tmp_path / "w")
    batch = next(iter(trainer.get_train_dataloader()))
    got = {tuple(lab[lab != -100].tolist()) for lab in batch["labels"]}
    assert got == {tuple(r["target_ids"]) for r in rows}
    assert (batch["decoder_input_ids"][:, 0] == model.config.decoder_start_token_id).all()


# ------------------------------------------------------------------------------------------ errors
@pytest.mark.parametrize("kw, needle", [
    ({"data_frac": 0.0}, "--data-frac"),
    ({"steps_frac": 1.5}, "--steps-frac"),
    ({"data_frac": 0.05}, "keeps"),
    ({"split": "test"}, "no records"),
    ({"warmup_steps": 2}, "--warmup-steps"),
    ({"batch_size": 0}, "--batch-size"),
    ({"lr_scheduler": "step"}, "invalid choice"),
])
def test_bad_arguments_exit_2(micro, data, tmp_path, capsys, kw, needle):
    with pytest.raises(SystemExit) as e:
        sft.main(_argv(micro["llama"], data, tmp_path / "run", **kw))
    assert e.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert "error:" in err and needle in err
    assert not (tmp_path / "run" / "summary.json").exists()


def test_missing_model_exits_2(data, tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        sft.main(_argv(tmp_path / "nope", data, tmp_path / "run"))
    assert e.value.code == 2 and capsys.readouterr().err.strip().splitlines()[-1].startswith("error:")


def test_diverging_run_exits_2_naming_the_step(micro, data, tmp_path, capsys):
    """The trainer's NaN/inf filter is off, so a diverged loss reaches the guard (and no model is saved)."""
    with pytest.raises(SystemExit) as e:
        sft.main(_argv(micro["llama"], data, tmp_path / "run", lr=1e30))
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert e.value.code == 2 and err.startswith("error: training loss is") and "at step" in err
    assert not (tmp_path / "run" / "model").exists() and not (tmp_path / "run" / "summary.json").exists()


def test_non_finite_loss_names_the_step():
    from experiments.common.cli import UserError

    guard = sft._callbacks(10)[0]

    class State:
        global_step = 4

    with pytest.raises(UserError, match="step 4"):
        guard.on_log(None, State(), None, logs={"loss": float("inf")})
    guard.on_log(None, State(), None, logs={"loss": 0.5, "learning_rate": 1e-3})
