"""PPO (experiments.rft.ppo): GAE and the KL controller against hand computation, the loss and SB3's
per-minibatch advantage normalisation against their closed forms (each pinned by a case the previous
conventions — ½·MSE, max-form value clipping, rollout-wide population whitening — would fail), and the
whole update converging to the known optimum of a bandit and a two-step MDP."""

import math

import pytest
import torch

from experiments.rft.ppo import (
    AdaptiveKLController,
    PPOConfig,
    gae,
    normalize_advantages,
    ppo_loss,
    ppo_update,
    shaped_rewards,
)


def test_gae_matches_hand_computation():
    gamma, lam = 0.9, 0.8
    rewards = torch.tensor([[0.0, 0.0, 1.0], [0.5, 2.0, 0.0]])
    values = torch.tensor([[0.2, 0.4, 0.6], [1.0, 3.0, 9.9]])
    mask = torch.tensor([[1, 1, 1], [1, 1, 0]])
    adv, ret = gae(rewards, values, mask, gamma, lam)
    # row 0: δ2 = 1 - .6 ; δ1 = 0 + .9*.6 - .4 ; δ0 = 0 + .9*.4 - .2
    d2, d1, d0 = 1 - 0.6, 0.9 * 0.6 - 0.4, 0.9 * 0.4 - 0.2
    a2 = d2
    a1 = d1 + gamma * lam * a2
    a0 = d0 + gamma * lam * a1
    assert adv[0].tolist() == pytest.approx([a0, a1, a2])
    # row 1 ends after two steps: the value 9.9 of the padding step must not leak in
    e1 = 2.0 - 3.0
    e0 = 0.5 + 0.9 * 3.0 - 1.0 + gamma * lam * e1
    assert adv[1].tolist() == pytest.approx([e0, e1, 0.0])
    assert ret[1].tolist() == pytest.approx([e0 + 1.0, e1 + 3.0, 0.0])


def test_gae_lambda_one_gamma_one_is_reward_to_go_minus_value():
    rewards = torch.tensor([[1.0, -2.0, 3.0, 0.5]])
    values = torch.tensor([[0.3, 0.1, -0.4, 0.0]])
    adv, ret = gae(rewards, values, torch.ones(1, 4), 1.0, 1.0)
    togo = torch.flip(torch.cumsum(torch.flip(rewards, [1]), 1), [1])
    assert torch.allclose(ret, togo)
    assert torch.allclose(adv, togo - values)


def test_shaped_rewards_put_the_task_reward_on_the_last_valid_token():
    logp = torch.tensor([[-1.0, -2.0, -3.0], [-1.0, -1.0, -1.0]])
    ref = torch.tensor([[-1.5, -2.0, -2.0], [-2.0, -1.0, -7.0]])
    mask = torch.tensor([[1, 1, 1], [1, 1, 0]])
    r, kl = shaped_rewards(torch.tensor([1.0, 0.25]), logp, ref, mask, kl_coef=0.1)
    assert torch.allclose(kl, torch.tensor([[0.5, 0.0, -1.0], [1.0, 0.0, 0.0]]))
    assert torch.allclose(r, torch.tensor([[-0.05, 0.0, 0.1 + 1.0], [-0.1, 0.25, 0.0]]))
    with pytest.raises(ValueError):
        shaped_rewards(torch.tensor([1.0]), logp[:1], ref[:1], torch.zeros(1, 3), 0.1)


@pytest.mark.parametrize("kl, expected", [
    (0.2, 1.0),              # on target: unchanged
    (0.3, 1.0 + 0.1 * 0.2),  # 50 % over: error clipped to +0.2
    (0.22, 1.0 + 0.1 * 0.1),  # 10 % over
    (0.0, 1.0 - 0.1 * 0.2),  # far under: clipped to -0.2
])
def test_adaptive_kl_controller_rule(kl, expected):
    ctl = AdaptiveKLController(0.5, target=0.2)
    assert ctl.update(kl) == pytest.approx(0.5 * expected)


def test_fixed_kl_controller_and_bad_settings():
    ctl = AdaptiveKLController(0.01, target=None)
    assert ctl.update(123.0) == 0.01
    with pytest.raises(ValueError):
        AdaptiveKLController(-1.0)
    with pytest.raises(ValueError):
        AdaptiveKLController(0.1, target=0.0)


def test_ppo_loss_closed_form_and_clipping():
    cfg = PPOConfig(clip_range=0.2, vf_coef=0.5, ent_coef=0.1)
    old = torch.zeros(1, 3)
    new = torch.log(torch.tensor([[1.5, 0.5, 1.1]]))  # ratios 1.5, 0.5, 1.1
    adv = torch.tensor([[1.0, 1.0, -2.0]])
    values, old_values, returns = torch.tensor([[0.0, 1.0, 2.0]]), torch.zeros(1, 3), torch.tensor([[1.0, 1.0, 1.0]])
    ent = torch.tensor([[0.3, 0.6, 0.9]])
    mask = torch.ones(1, 3)
    loss, stats = ppo_loss(new, old, adv, values, old_values, returns, mask, ent, cfg)
    # min(ρA, clip(ρ)A): 1.5*1 vs 1.2*1 -> 1.2 ; 0.5*1 vs 0.8*1 -> 0.5 ; 1.1*-2 vs 1.1*-2 -> -2.2
    policy = -(1.2 + 0.5 - 2.2) / 3
    value = (1.0 + 0.0 + 1.0) / 3  # SB3: F.mse_loss(returns, values), the full mean squared error
    assert stats["policy_loss"] == pytest.approx(policy)
    assert stats["value_loss"] == pytest.approx(value)
    # SB3: policy_loss + ent_coef * (-mean H) + vf_coef * value_loss
    assert float(loss) == pytest.approx(policy + 0.1 * -(0.3 + 0.6 + 0.9) / 3 + 0.5 * value)
    assert stats["clip_fraction"] == pytest.approx(2 / 3)


def test_value_loss_is_the_masked_full_mse_with_sb3_value_clipping():
    """V = [0, 1, 2, (9)], V_old = 0, R = 1, the 4th token padding. Unclipped: mean((R − V)²) over the 3
    valid tokens = (1 + 0 + 1)/3. clip_range_vf = 0.5: V_pred = V_old + clip(V − V_old, ±0.5) = [0, .5, .5],
    loss = mean((R − V_pred)²) = (1 + .25 + .25)/3 = 0.5 (SB3; the max-form of OpenAI baselines gives
    (1 + .25 + 1)/3 = 0.75, ½·MSE gives 0.25)."""
    z = torch.zeros(1, 4)
    values, returns = torch.tensor([[0.0, 1.0, 2.0, 9.0]]), torch.ones(1, 4)
    mask = torch.tensor([[1, 1, 1, 0]])
    _, stats = ppo_loss(z, z, z, values, z, returns, mask, z, PPOConfig(vf_coef=1.0))
    assert stats["value_loss"] == pytest.approx(2 / 3)
    loss, stats = ppo_loss(z, z, z, values, z, returns, mask, z, PPOConfig(vf_coef=1.0, clip_range_vf=0.5))
    assert stats["value_loss"] == pytest.approx(0.5)
    assert float(loss) == pytest.approx(0.5)  # no policy or entropy term here


def test_normalize_advantages_is_sb3s_formula_over_the_valid_tokens():
    x = torch.tensor([[1.0, 2.0, 100.0], [3.0, 4.0, -50.0]])
    m = torch.tensor([[1, 1, 0], [1, 1, 0]])
    w = normalize_advantages(x, m)
    # valid 1, 2, 3, 4: mean 2.5, unbiased std sqrt(5/3) (the population std sqrt(5/4) would fail this)
    want = [d / (math.sqrt(5 / 3) + 1e-8) for d in (-1.5, -0.5, 0.5, 1.5)]
    assert w[:, :2].flatten().tolist() == pytest.approx(want, abs=1e-6)
    assert w[:, 2].tolist() == [0.0, 0.0]
    # the eps is added to the std, not under the square root: valid 0, 2e-8 -> mean 1e-8, std √2·1e-8,
    # ±1e-8 / (√2·1e-8 + 1e-8) = ±(√2 − 1) (eps under the root would give ±1e-4)
    tiny = normalize_advantages(torch.tensor([[0.0, 2e-8]]), torch.ones(1, 2))
    assert tiny[0].tolist() == pytest.approx([1 - math.sqrt(2), math.sqrt(2) - 1], rel=1e-5)


def test_normalize_advantages_skips_a_single_token_and_zeroes_equal_advantages_exactly():
    # one valid token: SB3 does not normalise a minibatch of one element
    assert normalize_advantages(torch.tensor([[5.0, 9.0]]), torch.tensor([[1, 0]])).tolist() == [[5.0, 0.0]]
    assert normalize_advantages(torch.tensor([[5.0]]), torch.tensor([[0]])).tolist() == [[0.0]]
    # ten equal advantages 0.7: the float32 mean is one ulp off and (A − mean)/(std + 1e-8) would be ~0.82
    # for each; the float64 statistics make them exactly 0
    x = torch.full((2, 5), 0.7)
    f32 = (x - x.mean()) / (x.std() + 1e-8)
    assert float(f32.abs().max()) > 0.5  # the float32 pitfall this guards against (this torch, this CPU)
    assert normalize_advantages(x, torch.ones(2, 5)).tolist() == [[0.0] * 5] * 2


class Probe(torch.nn.Module):
    """ln π(a_t|s_t) = θ[episode, t] with θ = 0 (ratio 1): one SGD step of lr 1 on the PPO policy loss
    moves θ[i, t] by exactly A'[i, t] / (valid tokens of the minibatch), A' the advantage PPO used."""

    def __init__(self, n, T):
        super().__init__()
        self.theta = torch.nn.Parameter(torch.zeros(n, T))

    def __call__(self, idx):
        z = torch.zeros(len(idx), self.theta.shape[1])
        return self.theta[idx], z, z


def _probe_step(adv, mask, batch_size, normalize=True):
    probe = Probe(*adv.shape)
    z = torch.zeros_like(adv)
    ro = {"old_logp": z, "old_values": z, "advantages": adv, "returns": z, "mask": mask}
    cfg = PPOConfig(n_epochs=1, batch_size=batch_size, vf_coef=0.0, ent_coef=0.0, max_grad_norm=0.0,
                    normalize_advantage=normalize)
    ppo_update(probe, list(probe.parameters()), torch.optim.SGD(probe.parameters(), lr=1.0), ro, cfg,
               generator=torch.Generator().manual_seed(0))
    return probe.theta.detach()


def test_ppo_update_normalises_each_minibatch_over_its_own_valid_tokens():
    """Episode 0 has advantages [0, 2], episode 1 [4] (padding 99 elsewhere)."""
    adv = torch.tensor([[0.0, 2.0, 99.0], [4.0, 99.0, 99.0]])
    mask = torch.tensor([[1, 1, 0], [1, 0, 0]])
    s = 2 / (2 + 1e-8)
    # one minibatch of both: valid 0, 2, 4 -> mean 2, unbiased std 2 -> -1, 0, 1 (times s), over 3 tokens
    # (population whitening would give ∓1.22)
    got = _probe_step(adv, mask, batch_size=2)
    assert got.flatten().tolist() == pytest.approx([-s / 3, 0.0, 0.0, s / 3, 0.0, 0.0], abs=1e-6)
    # one episode per minibatch: episode 0 alone is 0, 2 -> mean 1, std √2 -> ∓1/√2 over 2 tokens; episode 1
    # has one valid token, so its advantage 4 is used as is (rollout-wide whitening would normalise both)
    got = _probe_step(adv, mask, batch_size=1)
    r = 1 / (math.sqrt(2) + 1e-8)
    assert got.flatten().tolist() == pytest.approx([-r / 2, r / 2, 0.0, 4.0, 0.0, 0.0], abs=1e-6)
    # normalisation off: the raw advantages over the 3 tokens
    got = _probe_step(adv, mask, batch_size=2, normalize=False)
    assert got.flatten().tolist() == pytest.approx([0.0, 2 / 3, 0.0, 4 / 3, 0.0, 0.0], abs=1e-6)


# ------------------------------------------------------------------------- convergence checks
class Tabular(torch.nn.Module):
    """A policy over ``n_states`` × ``n_actions`` logits with a state-value table."""

    def __init__(self, n_states, n_actions):
        super().__init__()
        self.logits = torch.nn.Parameter(torch.zeros(n_states, n_actions))
        self.values = torch.nn.Parameter(torch.zeros(n_states))

    def step_stats(self, states, actions):
        logp_all = torch.log_softmax(self.logits[states], -1)
        logp = logp_all.gather(-1, actions.unsqueeze(-1)).squeeze(-1)
        entropy = -(logp_all.exp() * logp_all).sum(-1)
        return logp, entropy, self.values[states]


def _train(policy, sample_episodes, iterations, cfg, seed=0):
    """Generic PPO loop: ``sample_episodes(gen)`` -> states, actions, rewards, mask ([N, T])."""
    gen = torch.Generator().manual_seed(seed)
    opt = torch.optim.Adam(policy.parameters(), lr=cfg.lr)
    for _ in range(iterations):
        states, actions, rewards, mask = sample_episodes(gen)
        with torch.no_grad():
            old_logp, _, old_v = policy.step_stats(states, actions)
        adv, ret = gae(rewards, old_v * mask, mask, cfg.gamma, cfg.gae_lambda)
        ro = {"old_logp": old_logp, "old_values": old_v * mask, "advantages": adv, "returns": ret, "mask": mask}
        ppo_update(lambda idx, s=states, a=actions: policy.step_stats(s[idx], a[idx]),
                   list(policy.parameters()), opt, ro, cfg, generator=gen)


def test_ppo_solves_a_bandit():
    arm_reward = torch.tensor([0.1, 0.5, 0.9, 0.3])  # Bernoulli arms; the optimum is arm 2
    policy = Tabular(1, 4)

    def sample(gen, n=64):
        probs = torch.softmax(policy.logits[0].detach(), -1)
        a = torch.multinomial(probs, n, replacement=True, generator=gen)
        r = (torch.rand(n, generator=gen) < arm_reward[a]).float()
        return torch.zeros(n, 1, dtype=torch.long), a.unsqueeze(1), r.unsqueeze(1), torch.ones(n, 1)

    _train(policy, sample, 60, PPOConfig(lr=0.05, n_epochs=4, batch_size=16, max_grad_norm=0.0))
    probs = torch.softmax(policy.logits[0].detach(), -1)
    assert int(probs.argmax()) == 2 and float(probs[2]) > 0.9


def test_ppo_solves_a_two_step_token_mdp():
    # step 1 picks token a in {0, 1}; step 2 picks token b in {0, 1} in state 1 + a; reward R[a, b] at the end.
    # A myopic first choice prefers a = 0 (its mean reward is higher under a uniform second step), the
    # optimum is a = 1, b = 0 (reward 1.0): only credit assignment through the value of state 2 finds it.
    R = torch.tensor([[0.6, 0.6], [1.0, 0.0]])
    policy = Tabular(3, 2)

    def sample(gen, n=64):
        p1 = torch.softmax(policy.logits[0].detach(), -1)
        a = torch.multinomial(p1, n, replacement=True, generator=gen)
        s2 = 1 + a
        p2 = torch.softmax(policy.logits[s2].detach(), -1)
        b = torch.multinomial(p2, 1, generator=gen).squeeze(1)
        rewards = torch.zeros(n, 2)
        rewards[:, 1] = R[a, b]
        states = torch.stack([torch.zeros(n, dtype=torch.long), s2], 1)
        return states, torch.stack([a, b], 1), rewards, torch.ones(n, 2)

    _train(policy, sample, 80, PPOConfig(lr=0.05, n_epochs=4, batch_size=16, gamma=1.0, gae_lambda=0.95,
                                         max_grad_norm=0.0))
    p1 = torch.softmax(policy.logits[0].detach(), -1)
    p2 = torch.softmax(policy.logits[2].detach(), -1)
    assert float(p1[1]) > 0.9 and float(p2[0]) > 0.9
    expected = float(p1[1] * p2[0] * 1.0 + p1[0] * 0.6)
    assert expected > 0.9 * 1.0 and not math.isnan(expected)


def _one_update_from_task_rewards(task_reward, lengths=(3, 2, 3, 1, 3, 2), batch_size=3, normalize=True):
    """One PPO update on a tabular policy along the path ``train.rollout`` takes: the policy is its own
    reference (the first rollout: KL term 0), the critic is zero, ``shaped_rewards`` puts the task reward
    on each episode's last token, ``gae`` with γ = λ = 1 (so every token of an episode has the advantage
    of its task reward), ``ppo_update`` normalises per minibatch of ``batch_size`` episodes.
    Returns (advantages from gae, mask, how far the logits moved per state, how far the values moved)."""
    gen = torch.Generator().manual_seed(0)
    policy = Tabular(3, 4)
    with torch.no_grad():
        policy.logits.copy_(torch.randn(3, 4, generator=gen))  # not the uniform policy
    n, T = len(task_reward), 3
    states = torch.arange(T).repeat(n, 1)
    actions = torch.randint(4, (n, T), generator=gen)
    mask = torch.ones(n, T)
    for i, length in enumerate(lengths[:n]):  # episodes of different lengths
        mask[i, length:] = 0
    with torch.no_grad():
        logp, _, v = policy.step_stats(states, actions)
    rewards, _ = shaped_rewards(torch.tensor(task_reward), logp, logp.clone(), mask, kl_coef=0.1)
    adv, ret = gae(rewards, v * mask, mask, 1.0, 1.0)
    logits0, values0 = policy.logits.detach().clone(), policy.values.detach().clone()
    ro = {"old_logp": logp, "old_values": v * mask, "advantages": adv, "returns": ret, "mask": mask}
    opt = torch.optim.SGD(policy.parameters(), lr=1.0)
    ppo_update(lambda idx: policy.step_stats(states[idx], actions[idx]), list(policy.parameters()), opt, ro,
               PPOConfig(n_epochs=2, batch_size=batch_size, ent_coef=0.0, max_grad_norm=0.0,
                         normalize_advantage=normalize), generator=gen)
    return (adv, mask, (policy.logits.detach() - logits0).abs().amax(1).tolist(),
            float((policy.values.detach() - values0).abs().max()))


@pytest.mark.parametrize("reward", [0.5, 0.7])
def test_equal_rewards_give_no_policy_gradient_through_gae_and_normalisation(reward):
    """P1's mechanism through the code: every sample gets the same task reward -> gae gives every valid
    token the advantage R -> each minibatch's normalisation maps it to exactly 0 -> the policy does not
    move, while the value table (target R) does. 0.7 is the case where a float32 mean is one ulp off
    (minibatches of 7-9 tokens) and SB3's formula would give advantages of ~±0.8; the float64 statistics
    keep it exactly 0. Controls: the same rollout with unequal rewards, or without normalisation, moves."""
    adv, mask, moved, value_moved = _one_update_from_task_rewards([reward] * 6)
    assert torch.allclose(adv[mask.bool()], torch.tensor(reward))
    assert torch.all(adv[~mask.bool()] == 0)
    assert max(moved) == 0.0
    assert value_moved > 0.1
    _, _, moved_control, _ = _one_update_from_task_rewards([reward, 0.0, 1.0, reward, 0.2, 0.9])
    assert max(moved_control) > 0.1
    _, _, moved_raw, _ = _one_update_from_task_rewards([reward] * 6, normalize=False)
    assert max(moved_raw) > 0.1


def test_normalisation_is_per_minibatch_not_over_the_rollout():
    """Unequal rewards across episodes, but each episode's tokens share one advantage (γ = λ = 1, V = 0).
    Minibatches of one episode: each normalises to 0 and the policy does not move (rollout-wide
    whitening would move it); minibatches of the whole rollout: it moves. An episode of one token is a
    minibatch of one element, which SB3 does not normalise: only its state (0) moves."""
    rewards = [0.2, 0.9, 0.4, 0.8, 0.1, 0.6]
    _, _, moved, _ = _one_update_from_task_rewards(rewards, lengths=(3, 2, 3, 2, 3, 2), batch_size=1)
    assert max(moved) == 0.0
    _, _, moved, _ = _one_update_from_task_rewards(rewards, lengths=(3, 2, 3, 2, 3, 2), batch_size=6)
    assert max(moved) > 0.1
    _, _, moved, _ = _one_update_from_task_rewards(rewards, lengths=(3, 2, 3, 1, 3, 2), batch_size=1)
    assert moved[0] > 0.1 and moved[1] == moved[2] == 0.0
