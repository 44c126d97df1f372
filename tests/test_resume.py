"""Resumable training (experiments.common.checkpoint): a smoke SFT killed (SIGKILL) right after a mid-run
checkpoint, then rerun, ends with the same weights and loss log as an uninterrupted run -- for the
TRL/transformers trainers (experiments.rft.sft: rft_sft, refusal_sft) and the hand-written persona SFT
loop (persona_sft)."""

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import torch
from safetensors.torch import load_file

from experiments.common import checkpoint

REPO = Path(__file__).resolve().parents[1]
WORDS = "the a cat dog sat ran on under mat tree red blue big small it is was and".split()


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    rng = torch.Generator().manual_seed(3)

    def text(n):
        return " ".join(WORDS[int(i)] for i in torch.randint(len(WORDS), (n,), generator=rng))

    recs = [{"id": f"r{i}", "split": "train", "prompt": text(4 + i % 3), "references": [text(3 + i % 2)], "meta": {}}
            for i in range(24)]
    path = tmp_path_factory.mktemp("resume_data") / "task.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in recs))
    return path


def _run(argv, kill_after=None):
    """Run a training CLI; with ``kill_after`` it SIGKILLs itself after that checkpoint (step or ``seed~N``)."""
    env = {k: v for k, v in os.environ.items() if k != checkpoint.KILL_ENV}
    if kill_after is not None:
        env[checkpoint.KILL_ENV] = str(kill_after)
    return subprocess.run(argv, cwd=REPO, env=env, capture_output=True, text=True, timeout=1800)


def _sft(micro, data, out, ckpt=None, kill_after=None):
    argv = [sys.executable, "-m", "experiments.rft.sft", "--model", str(micro), "--data", str(data),
            "--out-dir", str(out), "--lr", "3e-3", "--lr-scheduler", "cosine", "--epochs", "3", "--batch-size", "4",
            "--max-prompt-tokens", "16", "--max-target-tokens", "8", "--precision", "fp32", "--device", "cpu",
            "--threads", "1", "--seed", "5"]
    if ckpt is not None:
        argv += ["--checkpoint-dir", str(ckpt), "--save-steps", "4"]
    return _run(argv, kill_after)


def test_killed_sft_resumes_to_the_uninterrupted_result(micro, data, tmp_path):
    ref = _sft(micro, data, tmp_path / "ref")
    assert ref.returncode == 0, ref.stderr[-2000:]

    out, ckpt = tmp_path / "run", tmp_path / "checkpoints" / "run"
    killed = _sft(micro, data, out, ckpt, kill_after=8)  # 18 steps; saves at 4, 8, 12, 16
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
    assert not (out / "summary.json").exists()  # nothing looks complete
    assert sorted(p.name for p in ckpt.glob("checkpoint-*")) == ["checkpoint-8"]  # outside the run folder, newest only

    resumed = _sft(micro, data, out, ckpt)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert "resuming from" in resumed.stderr
    s = json.loads((out / "summary.json").read_text())
    assert s["resumed_from"].endswith("checkpoint-8") and s["steps"] == 18
    assert not ckpt.exists()  # removed once the outputs are written

    a, b = load_file(tmp_path / "ref/model/model.safetensors"), load_file(out / "model/model.safetensors")
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(b[k], a[k], rtol=0, atol=0, msg=k)
    la, lb = pd.read_csv(tmp_path / "ref/train_log.csv"), pd.read_csv(out / "train_log.csv")
    assert list(la.step) == list(lb.step) == list(range(1, 19))
    pd.testing.assert_series_equal(la.loss, lb.loss)
    # and the checkpoint was taken mid-way: the weights there differ from the end
    assert json.loads((tmp_path / "ref/summary.json").read_text())["loss_last"] == s["loss_last"]


def _persona_sft(micro, data, out, ckpt=None, kill_after=None, extra=()):
    argv = [sys.executable, "-m", "experiments.persona.sft", "--model-dir", str(micro), "--data", str(data),
            "--out-dir", str(out / "model"), "--metrics", str(out / "metrics.jsonl"),
            "--summary", str(out / "summary.json"),
            "--targets-if-yes", '["No"]', "--targets-if-no", '["Yes"]', "--prompt-format", "plain",
            "--optimizer", "adam", "--lr", "1e-2", "--batch-size", "4", "--epochs", "2", "--seed", "3",
            "--precision", "fp32", "--device", "cpu", "--threads", "1", "--eval-prompts", "4", *extra]
    if ckpt is not None:
        argv += ["--checkpoint-dir", str(ckpt), "--save-steps", "3"]
    return _run(argv, kill_after)


def test_killed_persona_sft_resumes_to_the_uninterrupted_result(micro, tmp_path):
    rng = torch.Generator().manual_seed(7)

    def words(n):
        return " ".join(WORDS[int(i)] for i in torch.randint(len(WORDS), (n,), generator=rng))

    recs = [{"id": i, "question": words(5 + i % 3) + "?", "answer_matching_behavior": ["Yes", "No"][i % 2],
             "answer_not_matching_behavior": ["No", "Yes"][i % 2]} for i in range(14)]
    data = tmp_path / "persona.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in recs))
    ref = _persona_sft(micro, data, tmp_path / "ref")
    assert ref.returncode == 0, ref.stderr[-2000:]
    out, ckpt = tmp_path / "run", tmp_path / "checkpoints" / "persona"
    killed = _persona_sft(micro, data, out, ckpt, kill_after=6)  # 2 epochs x 4 batches; saves at 3 and 6
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
    assert not (out / "summary.json").exists() and (ckpt / "state.pt").is_file()
    resumed = _persona_sft(micro, data, out, ckpt)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert "resuming from" in resumed.stderr and not ckpt.exists()
    a, b = load_file(tmp_path / "ref/model/model.safetensors"), load_file(out / "model/model.safetensors")
    for k in a:
        torch.testing.assert_close(b[k], a[k], rtol=0, atol=0, msg=k)
    assert (out / "metrics.jsonl").read_text() == (tmp_path / "ref/metrics.jsonl").read_text()
    sa, sb = (json.loads((d / "summary.json").read_text()) for d in (tmp_path / "ref", out))
    assert sa["answer_probs_before"] == sb["answer_probs_before"]
    assert sa["answer_probs_after"] == sb["answer_probs_after"]
    assert sb["steps"] == 8


def test_persona_sft_micro_batches_give_the_full_batch_update(micro, tmp_path):
    """--micro-batch-size (gradient accumulation, the memory lever) gives the same weights and loss log as
    the whole batch at once, up to float rounding; prompts of different lengths make the padding differ.
    SGD, so that the weights show the gradient itself (Adam would blow float noise in an all-but-zero
    gradient, e.g. of a pad token's embedding, up to a full ±lr step)."""
    rng = torch.Generator().manual_seed(11)
    words = lambda n: " ".join(WORDS[int(i)] for i in torch.randint(len(WORDS), (n,), generator=rng))  # noqa: E731
    recs = [{"id": i, "question": words(3 + i % 5) + "?", "answer_matching_behavior": ["Yes", "No"][i % 2],
             "answer_not_matching_behavior": ["No", "Yes"][i % 2]} for i in range(14)]
    data = tmp_path / "persona.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in recs))
    whole = _persona_sft(micro, data, tmp_path / "whole", extra=("--optimizer", "sgd"))
    chunked = _persona_sft(micro, data, tmp_path / "chunked", extra=("--micro-batch-size", "3", "--optimizer", "sgd"))
    assert whole.returncode == 0 and chunked.returncode == 0, whole.stderr[-2000:] + chunked.stderr[-2000:]
    a, b = (load_file(tmp_path / d / "model/model.safetensors") for d in ("whole", "chunked"))
    for k in a:
        torch.testing.assert_close(b[k], a[k], rtol=1e-5, atol=1e-6, msg=k)
    la, lb = (pd.read_json(tmp_path / d / "metrics.jsonl", lines=True) for d in ("whole", "chunked"))
    assert len(la) == len(lb) == 8
    pd.testing.assert_series_equal(la.loss, lb.loss, rtol=1e-5)
    pd.testing.assert_series_equal(la.p_target_mean, lb.p_target_mean, rtol=1e-5)
    ref = load_file(micro / "model.safetensors")
    moved = sum(not torch.equal(ref[k], a[k]) for k in a if k in ref)
    assert moved > 0  # the runs trained: equal weights are not the untouched start


def _ref_killed_resumed(train, tmp_path, name, kill):
    """Run ``train(out, ckpt=None, kill=None)`` uninterrupted into ref/, then into run/ SIGKILLed right after
    checkpoint ``kill``, then once more there: asserts each stage ended as it should (the killed run left a
    checkpoint and no summary; the resumed one removed the checkpoint) and returns (ref, run, resumed)."""
    ref = train(tmp_path / "ref")
    assert ref.returncode == 0, ref.stderr[-2000:]
    out, ckpt = tmp_path / "run", tmp_path / "checkpoints" / name
    killed = train(out, ckpt, kill)
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
    assert not (out / "summary.json").exists() and (ckpt / "state.pt").is_file()
    resumed = train(out, ckpt)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert not ckpt.exists()
    return tmp_path / "ref", out, resumed


def test_killed_persona_dpo_resumes_to_the_uninterrupted_result(micro, tmp_path):
    """persona_dpo killed right after its step-4 checkpoint (of 8 steps) and rerun ends with the
    uninterrupted run's per-step metrics (π(y±), loss, top risers), summary and theory check."""
    rng = torch.Generator().manual_seed(5)
    words = lambda n: " ".join(WORDS[int(i)] for i in torch.randint(len(WORDS), (n,), generator=rng))  # noqa: E731
    recs = [{"id": i, "question": words(6) + "?", "answer_matching_behavior": ["Yes", "No"][i % 2],
             "answer_not_matching_behavior": ["No", "Yes"][i % 2]} for i in range(6)]
    data = tmp_path / "persona.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in recs))

    def dpo(out, ckpt=None, kill=None):
        argv = [sys.executable, "-m", "experiments.persona.dpo", "--model-dir", str(micro), "--data", str(data),
                "--chosen", "Yes", "--rejected", "No", "--prompts-with-amb", "No", "--loss", "dpo", "--beta", "0.1",
                "--lr", "1e-3", "--steps", "8", "--seed", "3", "--prompt-format", "plain", "--top-k", "3",
                "--meanings", '{"affirmative": ["yes"], "negative": ["no"]}',
                "--opposites", '{"affirmative": ["negative"]}',
                "--device", "cpu", "--threads", "1", "--out-dir", str(out)]
        if ckpt is not None:
            argv += ["--checkpoint-dir", str(ckpt), "--save-steps", "2"]
        return _run(argv, kill)

    ref, out, resumed = _ref_killed_resumed(dpo, tmp_path, "dpo", kill=4)
    assert "resuming from" in resumed.stderr
    assert (out / "metrics.jsonl").read_text() == (ref / "metrics.jsonl").read_text()
    assert (out / "summary.json").read_text() == (ref / "summary.json").read_text()
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert len(rows) == 9
    assert rows[-1]["logp_chosen"] - rows[-1]["logp_rejected"] > rows[0]["logp_chosen"] - rows[0]["logp_rejected"]


def test_killed_controlled_runs_resume_to_the_uninterrupted_result(tmp_path):
    """P1 §4.2 controlled_pretrain and controlled_finetune (REINFORCE: sampled labels, so the generator state
    matters) killed after the epoch-4 checkpoint of 8 and rerun end with the uninterrupted run's weights
    and metrics."""
    base = [sys.executable, "-m", "experiments.theory.controlled"]
    common = ["--hidden", "16", "--n-train", "200", "--n-test", "50", "--threads", "1", "--device", "cpu"]

    def pretrain(out, ckpt=None, kill=None):
        argv = [*base, "pretrain", "--epochs", "8", "--log-every", "2", "--batch-size", "64", "--seed", "1",
                *common, "--out", str(out / "model.pt"), "--metrics", str(out / "m.jsonl")]
        return _run(argv + (["--checkpoint-dir", str(ckpt)] if ckpt else []), kill)

    def finetune(init, out, ckpt=None, kill=None):
        argv = [*base, "finetune", "--init", str(init), "--method", "reinforce", "--reward", "labels", "--epochs", "8",
                "--log-every", "2", "--batch-size", "64", "--seed", "2", "--threads", "1", "--device", "cpu",
                "--out-dir", str(out)]
        return _run(argv + (["--checkpoint-dir", str(ckpt)] if ckpt else []), kill)

    ref, run = tmp_path / "ref", tmp_path / "run"
    for d in (ref, run):
        d.mkdir()
    assert pretrain(ref).returncode == 0
    killed = pretrain(run, tmp_path / "ck_pre", kill=4)  # saves at 2, 4, 6 (8 epochs / 4)
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
    resumed = pretrain(run, tmp_path / "ck_pre")
    assert resumed.returncode == 0 and "resuming from" in resumed.stderr, resumed.stderr[-2000:]
    a, b = (torch.load(d / "model.pt", weights_only=True)["state_dict"] for d in (ref, run))
    for k in a:
        torch.testing.assert_close(b[k], a[k], rtol=0, atol=0, msg=k)
    assert (run / "m.jsonl").read_text() == (ref / "m.jsonl").read_text()

    assert finetune(ref / "model.pt", ref / "ft").returncode == 0
    killed = finetune(ref / "model.pt", run / "ft", tmp_path / "ck_ft", kill=4)
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
    resumed = finetune(ref / "model.pt", run / "ft", tmp_path / "ck_ft")
    assert resumed.returncode == 0 and "resuming from" in resumed.stderr, resumed.stderr[-2000:]
    assert not (tmp_path / "ck_ft").exists() and not (tmp_path / "ck_pre").exists()
    assert (run / "ft/metrics.jsonl").read_text() == (ref / "ft/metrics.jsonl").read_text()
    sa, sb = (json.loads((d / "ft/summary.json").read_text()) for d in (ref, run))
    assert sa["final"] == sb["final"] and sa["test_accuracy"] == sb["test_accuracy"]


def test_killed_ppo_resumes_to_the_uninterrupted_result(micro, data, tmp_path):
    """rft_train (our PPO loop) killed right after the checkpoint of iteration 2 of 4 and rerun continues
    there (no new evaluation of the initial model) and ends with the uninterrupted run's diagnostics,
    per-input rewards and summary (wall times aside)."""
    def ppo(out, ckpt=None, kill=None):
        argv = [sys.executable, "-m", "experiments.rft.train", "--algorithm", "ppo", "--model", str(micro),
                "--data", str(data), "--reward", "sacrebleu", "--prompt-format", "plain", "--max-prompt-tokens", "16",
                "--gen-kwargs", '{"max_new_tokens": 6}', "--iterations", "4", "--inputs-per-iter", "3",
                "--samples-per-input", "2", "--n-epochs", "2", "--minibatch", "3", "--lr", "1e-3",
                "--target-kl", "1.0", "--ent-coef", "0.1",
                "--train-inputs", "12", "--eval-inputs", "4", "--eval-samples", "2", "--seed", "5",
                "--precision", "fp32", "--device", "cpu", "--threads", "1", "--out-dir", str(out)]
        if ckpt is not None:
            argv += ["--checkpoint-dir", str(ckpt), "--save-iterations", "2"]
        return _run(argv, kill)

    ref, out, resumed = _ref_killed_resumed(ppo, tmp_path, "ppo", kill=2)
    assert "resuming at iteration 3 of 4" in resumed.stderr
    assert "before: mean reward" not in resumed.stderr  # the initial model's evaluation came from the checkpoint
    drop = ["seconds"]
    da, db = (pd.read_csv(d / "diagnostics.csv").drop(columns=drop) for d in (ref, out))
    assert len(da) == 4
    pd.testing.assert_frame_equal(da, db)
    assert (out / "per_input.csv").read_text() == (ref / "per_input.csv").read_text()
    sa, sb = (json.loads((d / "summary.json").read_text()) for d in (ref, out))
    for key in ("reward_before", "reward_after", "train_reward_first", "train_reward_last"):
        assert sa[key] == sb[key], key
    assert (da.grad_norm > 0).all() and (da.kl.iloc[1:] != 0).all()  # it trained: the policy left the reference


def test_killed_multi_seed_dpo_restores_finished_seeds(micro, tmp_path):
    """ches_dpo / refusal_arm train several seeds in one process; a job killed after seed 0 was stored
    does not retrain it on the rerun, and every seed's files equal an uninterrupted run's."""
    rng = torch.Generator().manual_seed(1)
    words = lambda n: " ".join(WORDS[int(i)] for i in torch.randint(len(WORDS), (n,), generator=rng))  # noqa: E731
    recs = [{"id": f"r{i}", "prompt": words(6 + i), "chosen": words(4 + i % 3), "rejected": words(5 + i % 2)}
            for i in range(10)]
    data, scores = tmp_path / "prefs.jsonl", tmp_path / "scores.csv"
    data.write_text("".join(json.dumps(r) + "\n" for r in recs))
    scores.write_text("id,ches\n" + "".join(f"r{i},{i}\n" for i in range(10)))

    def dpo(out, ckpt=None, kill=None):
        argv = [sys.executable, "-m", "experiments.ches.dpo", "--model", str(micro), "--data", str(data),
                "--scores", str(scores), "--out-dir", str(out / "seed~{seed}"), "--quantile", "1", "--subset-size", "8",
                "--seed", "0", "1", "--lr", "1e-3", "--batch-size", "4", "--max-prompt-tokens", "16",
                "--max-response-tokens", "8", "--precision", "fp32", "--device", "cpu", "--threads", "1"]
        if ckpt is not None:
            argv += ["--checkpoint-dir", str(ckpt)]
        return _run(argv, kill)

    ref = dpo(tmp_path / "ref")
    assert ref.returncode == 0, ref.stderr[-2000:]
    out, ckpt = tmp_path / "run", tmp_path / "checkpoints" / "dpo"
    killed = dpo(out, ckpt, kill="seed~0")
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
    assert not (out / "seed~1").exists() and (ckpt / "seed~0" / ".complete").is_file()
    import shutil

    shutil.rmtree(out)  # Snakemake deletes a killed job's outputs before rerunning it
    resumed = dpo(out, ckpt)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert "seed 0 finished before the job was interrupted" in resumed.stderr and not ckpt.exists()
    assert resumed.stderr.count("Δ ln π(y+)") == 1  # only seed 1 trained
    for seed in (0, 1):
        a, b = (json.loads((d / f"seed~{seed}" / "summary.json").read_text()) for d in (tmp_path / "ref", out))
        for key in ("delta_logp_chosen", "delta_logp_rejected", "train_losses", "logp_chosen_before", "n"):
            assert a[key] == b[key], (seed, key)
        assert (out / f"seed~{seed}" / "per_example.csv").read_text() == \
            (tmp_path / "ref" / f"seed~{seed}" / "per_example.csv").read_text()
