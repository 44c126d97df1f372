"""RFT training CLI (experiments.rft.train) and the LM actor-critic (experiments.rft.policy) on micro
models: padding-aware log-probs, PPO/GRPO/RLOO runs through the CLI, the seq2seq path."""

import json

import pandas as pd
import pytest
import torch

from experiments.rft import train
from experiments.rft.policy import ActorCritic, response_mask

WORDS = "the a cat dog sat ran on under mat tree red blue big small it is was and".split()


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    from experiments.models.prepare import prepare_model

    root = tmp_path_factory.mktemp("rft_train")
    llama, t5 = root / "llama", root / "t5"
    prepare_model("micro-llama", {"source": "random", "architecture": "llama", "num_layers": 2, "hidden_size": 32,
                                  "num_heads": 4, "intermediate_size": 64, "vocab_size": 400, "seed": 0,
                                  "single_token_words": ["Yes", "No"]}, llama)
    prepare_model("micro-t5", {"source": "random", "architecture": "t5", "num_layers": 1, "hidden_size": 32,
                               "num_heads": 2, "intermediate_size": 64, "vocab_size": 400, "seed": 0,
                               "single_token_words": ["Yes", "No"]}, t5)
    return {"llama": llama, "t5": t5}


@pytest.fixture
def task_file(tmp_path):
    rng = torch.Generator().manual_seed(0)
    recs = []
    for i in range(12):
        words = [WORDS[int(k)] for k in torch.randint(len(WORDS), (4 + i % 3,), generator=rng)]
        recs.append({"id": f"t{i}", "split": "train", "prompt": "write: " + " ".join(words),
                     "references": [" ".join(words)], "meta": {}})
    path = tmp_path / "task.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in recs))
    return path


@pytest.fixture(autouse=True)
def toy_rewards(monkeypatch):
    """Rewards with a signal on a random micro model: the share of letters in the response; and a
    constant one."""
    import numpy as np

    from experiments.rft import rewards

    def letters(prompts, predictions, references):
        return np.array([sum(c.isalpha() for c in p) / max(len(p), 1) for p in predictions])

    def constant(prompts, predictions, references):
        return np.full(len(predictions), 0.5)

    monkeypatch.setitem(rewards.REWARDS, "letters", letters)
    monkeypatch.setitem(rewards.REWARDS, "constant", constant)


def _argv(model, data, out, **kw):
    opts = {"algorithm": "ppo", "reward": "letters", "prompt-format": "plain", "max-prompt-tokens": 16,
            "gen-kwargs": json.dumps({"max_new_tokens": 5, "min_new_tokens": 1}), "iterations": 2,
            "inputs-per-iter": 3, "samples-per-input": 2, "lr": 1e-3, "n-epochs": 1, "minibatch": 4,
            "kl-coef": 0.01, "target-kl": 1.0, "train-inputs": 8, "eval-inputs": 4, "eval-samples": 2,
            "eval-batch-inputs": 4, "device": "cpu", "threads": 1, "seed": 0}
    opts.update({k.replace("_", "-"): v for k, v in kw.items()})
    argv = ["--model", str(model), "--data", str(data), "--out-dir", str(out)]
    for k, v in opts.items():
        if v is True:
            argv.append(f"--{k}")
        elif v is not None:
            argv += [f"--{k}", str(v)]
    return argv


def test_response_mask_stops_after_the_first_eos():
    ids = torch.tensor([[5, 6, 2, 2, 2], [5, 2, 7, 2, 9], [5, 6, 7, 8, 9]])
    assert response_mask(ids, 2).tolist() == [[1, 1, 1, 0, 0], [1, 1, 0, 0, 0], [1, 1, 1, 1, 1]]
    assert response_mask(ids, None).tolist() == [[1] * 5] * 3


def test_group_stats():
    r = [[0.0, 1.0], [0.5, 0.5], [0.2, 0.4]]
    mean, mean_std, small = train.group_stats(r, threshold=0.2)
    assert mean == pytest.approx(2.6 / 6)
    assert mean_std == pytest.approx((0.5 + 0.0 + 0.1) / 3)
    assert small == pytest.approx(2 / 3)


def test_pool_draws_walk_the_pool_without_replacement():
    draws = train.pool_draws(8, 3, 8, seed=5)                     # 24 draws = 3 passes over 8 inputs
    flat = [i for d in draws for i in d]
    assert len(draws) == 8 and all(len(d) == 3 for d in draws)
    for k in range(3):                                            # each pass is a permutation
        assert sorted(flat[8 * k:8 * (k + 1)]) == list(range(8))
    assert draws == train.pool_draws(8, 3, 8, seed=5) != train.pool_draws(8, 3, 8, seed=6)
    assert train.pool_draws(8, 3, 4, seed=5) == draws[:4]         # a resumed run trains the same inputs
    counts = torch.bincount(torch.tensor([i for d in train.pool_draws(5, 3, 4, seed=0) for i in d]), minlength=5)
    assert counts.min() >= 2 and counts.max() <= 3                # 12 draws over 5 inputs: 12/5 ± 1
    with pytest.raises(ValueError):
        train.pool_draws(0, 3, 4, seed=0)


def test_actor_critic_logps_are_padding_aware(models):
    from experiments.models.load import load_causal_lm

    lm = load_causal_lm(models["llama"])
    ac = ActorCritic(lm)
    prompts = [[11, 12, 13], [21, 22]]
    responses = [[31, 32], [41, 42, 43]]
    P, T = 3, 3
    pid = torch.zeros(2, P, dtype=torch.long)
    pm = torch.zeros(2, P, dtype=torch.long)
    rid = torch.zeros(2, T, dtype=torch.long)
    rm = torch.zeros(2, T, dtype=torch.long)
    for b, (p, r) in enumerate(zip(prompts, responses)):
        pid[b, P - len(p):], pm[b, P - len(p):] = torch.tensor(p), 1  # left-padded prompt
        rid[b, :len(r)], rm[b, :len(r)] = torch.tensor(r), 1           # right-padded response
    with torch.no_grad():
        logp, ent, values = ac(pid, pm, rid, rm)
    for b, (p, r) in enumerate(zip(prompts, responses)):
        with torch.no_grad():
            full = torch.log_softmax(lm(input_ids=torch.tensor([p + r])).logits[0].float(), -1)
        want = [float(full[len(p) - 1 + k, tok]) for k, tok in enumerate(r)]
        assert logp[b, :len(r)].tolist() == pytest.approx(want, abs=1e-4)
    assert torch.all(values == 0)  # the zero-initialised value head
    assert (ent[rm.bool()] > 0).all()


def test_freeze_lower_trains_only_the_top_block(models):
    from experiments.models.load import load_causal_lm

    ac = ActorCritic(load_causal_lm(models["llama"]))
    n_all = ac.freeze_lower(0)
    n_top = ac.freeze_lower(1)
    assert 0 < n_top < n_all
    top = ac.lm.model.layers[-1]
    assert all(p.requires_grad for p in top.parameters())
    assert not any(p.requires_grad for p in ac.lm.model.layers[0].parameters())


def test_ppo_cli_writes_diagnostics_and_per_input_gains(models, task_file, tmp_path):
    s = train.main(_argv(models["llama"], task_file, tmp_path / "run"))
    diag = pd.read_csv(tmp_path / "run" / "diagnostics.csv")
    per = pd.read_csv(tmp_path / "run" / "per_input.csv")
    assert list(diag["iteration"]) == [0, 1]
    assert diag["grad_norm"].gt(0).all() and diag["frac_small_std"].between(0, 1).all()
    assert diag["kl"].iloc[0] == pytest.approx(0.0, abs=1e-5)  # the first rollout is the reference policy
    assert diag["kl_coef"].iloc[1] != diag["kl_coef"].iloc[0]  # adaptive controller moved it
    assert len(per) == 4 and per[["mean_before", "mean_after"]].notna().all().all()
    assert s["reward_before"] == pytest.approx(per["mean_before"].mean())
    assert s["reward_after"] == pytest.approx(per["mean_after"].mean())
    # the summary says how often each input was trained on (the pool walked without replacement)
    assert s["visits_pool_max"] - s["visits_pool_min"] <= 1 and s["eval_inputs_trained"] <= len(per)


def test_constant_reward_gives_no_policy_gradient(models, task_file, tmp_path):
    """P1's point end to end: zero reward std on every input -> every token's Monte-Carlo advantage
    (γ = λ = 1) is the same constant -> 0 after whitening -> no policy gradient (the KL term is 0 too on
    the first rollout, which is the reference policy). With γλ < 1 and an untrained critic the sample
    gradient is not 0, only its expectation."""
    train.main(_argv(models["llama"], task_file, tmp_path / "run", reward="constant", iterations=1,
                     vf_coef=0.0, gamma=1.0, gae_lambda=1.0, no_eval_before=True))
    diag = pd.read_csv(tmp_path / "run" / "diagnostics.csv")
    assert diag["frac_small_std"].iloc[0] == 1.0 and diag["mean_std"].iloc[0] == 0.0
    assert diag["grad_norm"].iloc[0] == 0.0


def test_ppo_cli_is_reproducible_and_skips_the_before_eval(models, task_file, tmp_path):
    a = train.main(_argv(models["llama"], task_file, tmp_path / "a", no_eval_before=True))
    b = train.main(_argv(models["llama"], task_file, tmp_path / "b", no_eval_before=True))
    assert a["reward_before"] is None
    assert pd.read_csv(tmp_path / "a" / "per_input.csv")["mean_before"].isna().all()
    da, db = (pd.read_csv(tmp_path / x / "diagnostics.csv") for x in ("a", "b"))
    assert da["mean_reward"].tolist() == db["mean_reward"].tolist()
    assert da["grad_norm"].tolist() == pytest.approx(db["grad_norm"].tolist(), rel=1e-5)
    # the evaluation after training: the same per-input rewards and the same summary, timings aside
    pd.testing.assert_frame_equal(pd.read_csv(tmp_path / "a" / "per_input.csv"),
                                  pd.read_csv(tmp_path / "b" / "per_input.csv"))
    timing = {"train_seconds", "eval_tokens_per_s", "manifest"}
    assert set(a) == set(b) and {k: a[k] for k in a if k not in timing} == {k: b[k] for k in b if k not in timing}
    clock = {"wall_time_s", "steps_wall"}   # wall-clock stamps differ between runs by nature
    assert {k: v for k, v in a["manifest"].items() if k not in clock} == \
        {k: v for k, v in b["manifest"].items() if k not in clock}
    assert a["manifest"]["steps_wall"]["first_step_start"] <= a["manifest"]["steps_wall"]["last_step_end"]


def test_ppo_cli_seq2seq(models, task_file, tmp_path):
    s = train.main(_argv(models["t5"], task_file, tmp_path / "run", temperature=2.0, ent_coef=0.1))
    assert s["gen_kwargs"]["temperature"] == 2.0 and s["ent_coef"] == 0.1
    assert len(pd.read_csv(tmp_path / "run" / "diagnostics.csv")) == 2


@pytest.mark.parametrize("algorithm", ["grpo", "rloo"])
def test_trl_algorithms_through_the_cli(models, task_file, tmp_path, algorithm):
    s = train.main(_argv(models["llama"], task_file, tmp_path / "run", algorithm=algorithm, kl_coef=0.0,
                         target_kl=None, iterations=1))
    diag = pd.read_csv(tmp_path / "run" / "diagnostics.csv")
    assert s["algorithm"] == algorithm and len(diag) == 1
    assert {"mean_reward", "mean_std", "frac_small_std", "grad_norm"} <= set(diag.dropna(axis=1).columns)


@pytest.mark.parametrize("kw, needle", [
    ({"algorithm": "a2c"}, "--algorithm"),
    ({"iterations": 0}, "--iterations"),
    ({"lr": 0}, "--lr"),
    ({"temperature": -1}, "--temperature"),
    ({"gen_kwargs": '{"beams": 2}'}, "unknown key"),
])
def test_bad_arguments_exit_2(models, task_file, tmp_path, capsys, kw, needle):
    with pytest.raises(SystemExit) as e:
        train.main(_argv(models["llama"], task_file, tmp_path / "run", **kw))
    assert e.value.code == 2
    assert needle in capsys.readouterr().err


def test_prefix_cache_equals_the_full_forward(models):
    """Top-k training runs the frozen blocks once per rollout: the cached path must give the same
    ln π, entropy and values as the full forward, for the policy, a minibatch of it, and the reference."""
    import copy

    from experiments.models.load import load_causal_lm

    torch.manual_seed(0)
    ac = ActorCritic(load_causal_lm(models["llama"]))
    ac.freeze_lower(1)
    torch.nn.init.normal_(ac.value_head.weight)
    ref = copy.deepcopy(ac.lm)
    with torch.no_grad():  # the policy's top block moves away from the reference's
        for p in ac.lm.model.layers[-1].parameters():
            p.add_(0.05 * torch.randn_like(p))
    pid = torch.tensor([[0, 11, 12, 13], [0, 0, 21, 22], [31, 32, 33, 34]])
    pm = (pid != 0).long()
    rid = torch.tensor([[41, 42, 2], [43, 2, 0], [44, 45, 46]])
    rm = torch.tensor([[1, 1, 1], [1, 1, 0], [1, 1, 1]])
    with torch.no_grad():
        cache = ac.prefix(pid, pm, rid, rm)
        full = ac(pid, pm, rid, rm)
        top = ac.forward_top(cache)
        idx = torch.tensor([2, 0])
        part = ac.forward_top(cache, idx)
        ac_ref = ActorCritic(ref)
        ref_full = ac_ref(pid, pm, rid, rm, values=False)
        ref_top = ac.forward_top(cache, lm=ref, values=False)
    for a, b in zip(full, top):
        assert torch.allclose(a * rm, b * rm, atol=1e-5)
    for a, b in zip(full, part):
        assert torch.allclose((a * rm)[idx], b * rm[idx], atol=1e-5)
    assert torch.allclose(ref_full[0] * rm, ref_top[0] * rm, atol=1e-5)
    assert not torch.allclose(ref_top[0] * rm, top[0] * rm, atol=1e-3)  # it is the reference, not the policy
