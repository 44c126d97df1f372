"""The critic of the LM actor-critic (experiments.rft.policy.ActorCritic, ``critic="shared" | "separate"``)
on micro models: RL4LMs' separate value copy with a bias-free head against the shared head on the policy
body — where the values come from, which parameters train and freeze, the frozen-prefix cache feeding
the value copy's top blocks, checkpoints, and the seq2seq path."""

import copy

import pytest
import torch

from experiments.rft.policy import ActorCritic
from experiments.rft.ppo import PPOConfig, ppo_update

CRITICS = ["shared", "separate"]


def _lm(micro):
    from experiments.models.load import load_causal_lm

    return load_causal_lm(micro)


def _batch():
    """Left-padded prompts (pad 0), right-padded responses: the layout ``generate`` returns."""
    pid = torch.tensor([[0, 11, 12, 13], [0, 0, 21, 22], [31, 32, 33, 34]])
    rid = torch.tensor([[41, 42, 2], [43, 2, 0], [44, 45, 46]])
    rm = torch.tensor([[1, 1, 1], [1, 1, 0], [1, 1, 1]])
    return pid, (pid != 0).long(), rid, rm


def _value_body(ac):
    return ac.lm if ac.value_lm is None else ac.value_lm


def _randomise_critic(ac, seed=0):
    """A nonzero value head and (separate) a value copy whose top block differs from the policy's."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        ac.value_head.weight.copy_(torch.randn(ac.value_head.weight.shape, generator=gen))
        if ac.value_lm is not None:
            for p in ac.value_lm.model.layers[-1].parameters():
                p.add_(0.1 * torch.randn(p.shape, generator=gen))


def test_critic_kinds(micro):
    shared = ActorCritic(_lm(micro))
    assert shared.critic == "shared" and shared.value_lm is None and shared.value_head.bias is not None
    assert {k for k in shared.state_dict() if not k.startswith("lm.")} == {"value_head.weight", "value_head.bias"}
    sep = ActorCritic(_lm(micro), critic="separate")
    assert sep.value_head.bias is None  # RL4LMs: nn.Linear(hidden_size, 1, bias=False)
    lm_params = dict(sep.lm.named_parameters())
    for name, p in sep.value_lm.named_parameters():  # a copy: equal weights, its own tensors
        assert torch.equal(p, lm_params[name]) and p.data_ptr() != lm_params[name].data_ptr()
    assert {k for k in sep.state_dict() if not k.startswith(("lm.", "value_lm."))} == {"value_head.weight"}
    for ac in (shared, sep):  # both heads zero-initialised: V ≡ 0 at the start
        with torch.no_grad():
            _, _, v = ac(*_batch())
        assert torch.all(v == 0)
    with pytest.raises(ValueError, match="critic"):
        ActorCritic(_lm(micro), critic="twin")


def test_separate_values_come_from_the_value_copy(micro):
    """V = head(value copy's last hidden state at s_t), computed by hand; moving the value copy moves V
    and not ln π, moving the policy moves ln π and not V. With the shared critic the policy's body is V's."""
    pid, pm, rid, rm = _batch()
    ac = ActorCritic(_lm(micro), critic="separate")
    _randomise_critic(ac)
    with torch.no_grad():
        logp, _, v = ac(pid, pm, rid, rm)
        ids, mask = torch.cat([pid, rid], 1), torch.cat([pm, rm], 1)
        pos = (torch.cumsum(mask, 1) - 1).clamp_min(0)
        h = ac.value_lm.model(input_ids=ids, attention_mask=mask, position_ids=pos).last_hidden_state
        want = h[:, pid.shape[1] - 1:-1] @ ac.value_head.weight[0]
        assert torch.allclose(v * rm, want * rm, atol=1e-5)
        for p in ac.value_lm.model.layers[-1].parameters():
            p.add_(0.1)
        logp2, _, v2 = ac(pid, pm, rid, rm)
        assert torch.equal(logp2, logp) and not torch.allclose(v2 * rm, v * rm, atol=1e-3)
        for p in ac.lm.model.layers[-1].parameters():
            p.add_(0.1)
        logp3, _, v3 = ac(pid, pm, rid, rm)
        assert torch.equal(v3, v2) and not torch.allclose(logp3 * rm, logp2 * rm, atol=1e-3)

        shared = ActorCritic(_lm(micro))
        _randomise_critic(shared)
        _, _, s1 = shared(pid, pm, rid, rm)
        for p in shared.lm.model.layers[-1].parameters():
            p.add_(0.1)
        _, _, s2 = shared(pid, pm, rid, rm)
        assert not torch.allclose(s1 * rm, s2 * rm, atol=1e-3)


def test_freeze_lower_freezes_the_value_copy_like_the_policy(micro):
    ac = ActorCritic(_lm(micro), critic="separate")
    n = ac.freeze_lower(1)
    lm_grad = {name: p.requires_grad for name, p in ac.lm.named_parameters()}
    assert {name: p.requires_grad for name, p in ac.value_lm.named_parameters()} == lm_grad
    assert not any(p.requires_grad for p in ac.value_lm.model.layers[0].parameters())
    assert not ac.value_lm.get_input_embeddings().weight.requires_grad
    trainable = {name for name, p in ac.named_parameters() if p.requires_grad}
    top = {f"model.layers.1.{k}" for k, _ in ac.lm.model.layers[1].named_parameters()} | {"model.norm.weight"}
    assert trainable == ({f"lm.{k}" for k in top} | {f"value_lm.{k}" for k in top} | {"value_head.weight"})
    shared = ActorCritic(_lm(micro))
    assert n == 2 * shared.freeze_lower(1)  # the same blocks, twice


def test_an_untied_head_of_the_value_copy_is_not_trained():
    """The critic never uses the value copy's LM head; an untied one is frozen (a tied one is the input
    embedding, which the critic does use)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    lm = LlamaForCausalLM(LlamaConfig(vocab_size=64, hidden_size=16, intermediate_size=32, num_hidden_layers=2,
                                      num_attention_heads=2, num_key_value_heads=2, tie_word_embeddings=False))
    ac = ActorCritic(lm, critic="separate")
    assert ac.lm.lm_head.weight.requires_grad and not ac.value_lm.lm_head.weight.requires_grad
    assert ac.value_lm.get_input_embeddings().weight.requires_grad


@pytest.mark.parametrize("critic", CRITICS)
def test_prefix_cache_values_equal_the_full_forward(micro, critic):
    """Top-k training: the frozen prefix cached from the policy feeds the value copy's top blocks too
    (its frozen blocks are the policy's); ln π, entropy and V from forward_top equal the full forward,
    for the rollout and for a minibatch of it."""
    torch.manual_seed(0)
    ac = ActorCritic(_lm(micro), critic=critic)
    ac.freeze_lower(1)
    _randomise_critic(ac)
    with torch.no_grad():  # the policy's top block moves too (away from the value copy's)
        for p in ac.lm.model.layers[-1].parameters():
            p.add_(0.05 * torch.randn_like(p))
    pid, pm, rid, rm = _batch()
    with torch.no_grad():
        cache = ac.prefix(pid, pm, rid, rm)
        full, top = ac(pid, pm, rid, rm), ac.forward_top(cache)
        idx = torch.tensor([2, 0])
        part = ac.forward_top(cache, idx)
    assert full[2].abs().max() > 1e-2  # nonzero values
    for a, b in zip(full, top):
        assert torch.allclose(a * rm, b * rm, atol=1e-5)
    for a, b in zip(full, part):
        assert torch.allclose((a * rm)[idx], b * rm[idx], atol=1e-5)
    _, _, none = ac.forward_top(cache, values=False)
    assert none is None


@pytest.mark.parametrize("critic", CRITICS)
def test_where_the_value_gradient_goes(micro, critic):
    """∂V: into the value copy (and not the policy) when separate, into the policy's body when shared."""
    ac = ActorCritic(_lm(micro), critic=critic)
    _randomise_critic(ac)
    _, _, v = ac(*_batch())
    v.sum().backward()
    policy_grad = [p.grad for p in ac.lm.model.layers[-1].parameters()]
    if critic == "separate":
        assert all(g is None for g in policy_grad)
        assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in ac.value_lm.model.layers[-1].parameters())
    else:
        assert any(g is not None and g.abs().sum() > 0 for g in policy_grad)
    assert ac.value_head.weight.grad.abs().sum() > 0


def test_ppo_update_trains_the_value_copy_through_the_cache(micro):
    """One ppo_update on the separate critic with top-1 training and the prefix cache, as train.py runs
    it: the optimizer holds the value copy's top block, which moves; the frozen blocks of both copies
    stay as they were and stay equal (so the cache stays valid)."""
    torch.manual_seed(0)
    ac = ActorCritic(_lm(micro), critic="separate")
    ac.freeze_lower(1)
    _randomise_critic(ac)
    params = [p for p in ac.parameters() if p.requires_grad]
    before = copy.deepcopy(ac.state_dict())
    pid, pm, rid, rm = _batch()
    with torch.no_grad():
        cache = ac.prefix(pid, pm, rid, rm)
        old_logp, _, old_v = ac.forward_top(cache)
    ro = {"old_logp": old_logp, "old_values": old_v * rm, "mask": rm,
          "advantages": torch.tensor([[1.0, -1.0, 0.5], [2.0, 0.0, 0.0], [-1.0, 0.3, 0.2]]) * rm,
          "returns": torch.ones(3, 3) * rm}
    ppo_update(lambda idx: ac.forward_top(cache, idx), params, torch.optim.Adam(params, lr=1e-2), ro,
               PPOConfig(n_epochs=1, batch_size=3), generator=torch.Generator().manual_seed(0))
    after = ac.state_dict()
    moved = {k for k in before if not torch.equal(before[k], after[k])}
    assert "value_lm.model.layers.1.mlp.down_proj.weight" in moved
    assert "lm.model.layers.1.mlp.down_proj.weight" in moved and "value_head.weight" in moved
    assert not any(".layers.0." in k or "embed_tokens" in k for k in moved)
    for k, t in after.items():
        if k.startswith("lm.model.layers.0."):
            assert torch.equal(t, after["value_" + k])


def test_value_copy_follows_the_policy_mode(micro):
    """train.py switches ``ac.lm`` alone to eval for the rollout: the value copy follows (no dropout in
    the rollout's values), and back to train mode for the update."""
    ac = ActorCritic(_lm(micro), critic="separate")
    ac.train()
    ac.lm.eval()
    with torch.no_grad():
        ac(*_batch())
    assert not ac.value_lm.training
    ac.lm.train()
    with torch.no_grad():
        ac(*_batch())
    assert ac.value_lm.training


def test_separate_critic_checkpoint_round_trip(micro):
    ac = ActorCritic(_lm(micro), critic="separate")
    _randomise_critic(ac)
    fresh = ActorCritic(_lm(micro), critic="separate")
    fresh.load_state_dict(ac.state_dict())
    with torch.no_grad():
        for a, b in zip(ac(*_batch()), fresh(*_batch())):
            assert torch.equal(a, b)
    with pytest.raises(RuntimeError):  # a shared-critic checkpoint is not a separate one
        ActorCritic(_lm(micro)).load_state_dict(ac.state_dict())


def test_separate_critic_seq2seq(tmp_path):
    """T5: V from the value copy's last decoder hidden state; ln π is the policy's whatever the critic."""
    from experiments.models.load import load_generator
    from experiments.models.prepare import prepare_model

    prepare_model("micro-t5", {"source": "random", "architecture": "t5", "num_layers": 1, "hidden_size": 32,
                               "num_heads": 2, "intermediate_size": 64, "vocab_size": 400, "seed": 0,
                               "single_token_words": ["Yes", "No"]}, tmp_path / "t5")
    lm = load_generator(tmp_path / "t5")
    shared = ActorCritic(lm)
    ac = ActorCritic(copy.deepcopy(lm), critic="separate")
    with torch.no_grad():
        ac.value_head.weight.copy_(torch.randn(ac.value_head.weight.shape, generator=torch.Generator().manual_seed(0)))
    pid = torch.tensor([[11, 12, 13], [21, 22, 0]])
    pm = (pid != 0).long()
    rid = torch.tensor([[41, 42, 1], [43, 1, 0]])
    rm = torch.tensor([[1, 1, 1], [1, 1, 0]])
    with torch.no_grad():
        logp_s, ent_s, _ = shared(pid, pm, rid, rm)
        logp, ent, v = ac(pid, pm, rid, rm)
        start = lm.config.decoder_start_token_id
        dec_in = torch.cat([torch.full_like(rid[:, :1], start), rid[:, :-1]], 1)
        out = ac.value_lm(input_ids=pid, attention_mask=pm, decoder_input_ids=dec_in,
                          decoder_attention_mask=torch.cat([torch.ones_like(rm[:, :1]), rm[:, :-1]], 1),
                          output_hidden_states=True)
        want = out.decoder_hidden_states[-1] @ ac.value_head.weight[0]
    assert torch.allclose(logp, logp_s) and torch.allclose(ent, ent_s)
    assert v.shape == rid.shape and v.abs().max() > 1e-3
    assert torch.allclose(v * rm, want * rm, atol=1e-5)
