"""The pair scan's formulas (P2 Theorems 4-5) against autograd and finite differences, on a free
hidden state and on a real micro model; candidate filtering; the modelled SFT; the selection rule."""

import math

import pandas as pd
import pytest
import torch

from experiments.common.cli import UserError
from experiments.persona.losses import preference_loss
from experiments.persona.scan import (
    candidate_tokens,
    neg_loss_slope,
    predicted_gainers,
    scan_pairs,
    select_pairs,
    simulate_sft,
    step0_prediction,
    thm4_terms,
    thm5_log_rates,
)
from experiments.persona.tokens import token_from_slug, token_slug

MEANINGS = {"affirmative": ["yes", "sure"], "negative": ["no", "never"], "uncertain": ["maybe"]}
OPPOSITES = {"affirmative": ["negative", "uncertain"], "negative": ["affirmative"], "uncertain": []}


def _free(seed=0, V=40, d=6, scale=1.0):
    g = torch.Generator().manual_seed(seed)
    W = torch.randn(V, d, generator=g, dtype=torch.float64)
    h = scale * torch.randn(d, generator=g, dtype=torch.float64)
    return W, h


def _loss_at_reference(W, h, plus, minus, loss_type, beta):
    """The DPO/IPO loss of logits W h at the first step (reference = the current policy, detached)."""
    logp = torch.log_softmax(W @ h, -1)
    ref = logp.detach()
    losses, _, _ = preference_loss(logp[plus].view(1), logp[minus].view(1), ref[plus].view(1), ref[minus].view(1),
                                   beta, loss_type)
    return losses.sum(), logp


def test_hand_case_displaces():
    """W+ = (1, 0), W− = (2, 0), W_z = (0, 1), h = (0, 1): π = (1, 1, e)/(2 + e). By hand,
    ⟨W+ − W̄, W+ − W−⟩ = π+ + 2π− − 1 < 0, and (2): m = (1 − π+)·1 + π−·4, alignment = (1 − π+ + π−)·2,
    others = π_z·⟨(0, 1), (−1, 0)⟩ = 0."""
    W = torch.tensor([[1.0, 0.0], [2.0, 0.0], [0.0, 1.0]], dtype=torch.float64)
    h = torch.tensor([0.0, 1.0], dtype=torch.float64)
    p = 1 / (2 + math.e)
    t = thm4_terms(W, h, 0, 1)
    assert t["m"] == pytest.approx((1 - p) + 4 * p)
    assert t["alignment"] == pytest.approx(2.0)
    assert t["others"] == pytest.approx(0.0, abs=1e-12)
    assert t["bracket"] == pytest.approx(3 * p - 1) and t["bracket"] < 0
    assert t["bracket_w"] == pytest.approx(3 * p - 1 + 1.0 * (1 - p + p))


@pytest.mark.parametrize("seed", range(5))
def test_bracket_is_the_compact_form(seed):
    W, h = _free(seed)
    p = torch.softmax(W @ h, -1)
    t = thm4_terms(W, h, 3, 7)
    compact = float((W[3] - p @ W) @ (W[3] - W[7]))
    assert t["bracket"] == pytest.approx(compact, rel=1e-10)
    assert t["m"] >= 0


@pytest.mark.parametrize("loss_type,beta", [("dpo", 0.1), ("dpo", 1.0), ("ipo", 0.01), ("ipo", 0.5)])
@pytest.mark.parametrize("seed", range(4))
def test_thm4_rate_is_the_gradient_flow_derivative(loss_type, beta, seed):
    """d/dt ln π(y+) under dh/dt = −∇_h L is −∇_h ln π(y+) · ∇_h L (autograd), and a small gradient step
    h − ε∇_h L changes ln π(y+) by ε times that (finite difference): the sign convention, checked."""
    W, h0 = _free(seed, scale=2.0)
    plus, minus = 5, 11
    h = h0.clone().requires_grad_()
    loss, logp = _loss_at_reference(W, h, plus, minus, loss_type, beta)
    (g_loss,) = torch.autograd.grad(loss, h, retain_graph=True)
    (g_plus,) = torch.autograd.grad(logp[plus], h)
    autograd_rate = float(-(g_plus @ g_loss))
    rate = neg_loss_slope(loss_type, beta) * thm4_terms(W, h0, plus, minus)["bracket"]
    assert rate == pytest.approx(autograd_rate, rel=1e-9, abs=1e-12)
    eps = 1e-6
    lp0 = torch.log_softmax(W @ h0, -1)[plus]
    lp1 = torch.log_softmax(W @ (h0 - eps * g_loss), -1)[plus]
    assert float(lp1 - lp0) / eps == pytest.approx(rate, rel=1e-4, abs=1e-9)


def test_a_predicted_fall_is_a_fall():
    """Where B < 0, a small gradient step on the DPO loss lowers ln π(y+) although y+ is preferred,
    and the margin over y− still grows (the loss falls): Definition 1 in the single-token setting."""
    W = torch.tensor([[1.0, 0.0], [2.0, 0.0], [0.0, 1.0]], dtype=torch.float64)
    h = torch.tensor([0.0, 1.0], dtype=torch.float64, requires_grad=True)
    loss, logp = _loss_at_reference(W, h, 0, 1, "dpo", 0.1)
    (g,) = torch.autograd.grad(loss, h)
    h1 = h.detach() - 0.01 * g
    lp1 = torch.log_softmax(W @ h1, -1)
    assert lp1[0] < logp[0].detach()
    assert (lp1[0] - lp1[1]) > (logp[0] - logp[1]).detach()


@pytest.mark.parametrize("seed", range(3))
def test_thm4_with_the_unembedding_trained(seed):
    """With W trained as well, d/dt ln π(y+) = −(⟨∇_h ln π+, ∇_h L⟩ + ⟨∇_W ln π+, ∇_W L⟩) = −ℓ′·bracket_w."""
    W0, h0 = _free(seed)
    plus, minus, beta = 2, 9, 0.1
    W, h = W0.clone().requires_grad_(), h0.clone().requires_grad_()
    loss, logp = _loss_at_reference(W, h, plus, minus, "dpo", beta)
    gl = torch.autograd.grad(loss, (W, h), retain_graph=True)
    gp = torch.autograd.grad(logp[plus], (W, h))
    autograd_rate = float(-sum((a * b).sum() for a, b in zip(gp, gl)))
    t = thm4_terms(W0, h0, plus, minus)
    assert beta / 2 * t["bracket_w"] == pytest.approx(autograd_rate, rel=1e-9)
    assert t["bracket_w"] >= t["bracket"]


@pytest.mark.parametrize("seed", range(3))
def test_thm5_rates_for_every_token(seed):
    """Thm 5: d/dt ln π(z) = −ℓ′·(⟨W_z, W+ − W−⟩ + c), the same c for every z (autograd, per token), so
    the ranking of the other tokens is the ranking of ⟨W_z, W+ − W−⟩; predicted gainers are π(z)·that."""
    W, h0 = _free(seed, V=25)
    plus, minus, beta = 1, 4, 0.1
    h = h0.clone().requires_grad_()
    loss, logp = _loss_at_reference(W, h, plus, minus, "dpo", beta)
    (gl,) = torch.autograd.grad(loss, h, retain_graph=True)
    auto = torch.stack([-(torch.autograd.grad(logp[z], h, retain_graph=True)[0] @ gl) for z in range(len(W))])
    p = torch.softmax(W @ h0, -1)
    rates = beta / 2 * thm5_log_rates(W, p, plus, minus)
    assert torch.allclose(rates, auto, rtol=1e-9, atol=1e-12)
    inner = W @ (W[plus] - W[minus])
    assert torch.allclose(rates - beta / 2 * inner, (rates - beta / 2 * inner)[0].expand(len(W)), atol=1e-12)
    top = predicted_gainers(W, p, plus, minus, k=3)
    prob_rate = p * rates
    prob_rate[[plus, minus]] = -float("inf")
    assert [i for i, _ in top] == prob_rate.topk(3).indices.tolist()
    assert plus not in [i for i, _ in top] and minus not in [i for i, _ in top]


def test_step0_prediction_on_a_micro_model(micro):
    """The real network: h = the input of the unembedding at the prompt's last position (forward hook),
    W its weight. The model's own log-probs equal log_softmax(W h) (logit_check), and with W fixed and h
    made a leaf, autograd and a finite-difference step of the DPO loss give step0_prediction's rate."""
    from experiments.models.load import load_causal_lm, load_tokenizer
    from experiments.persona.prompts import encode_prompt

    tok, model = load_tokenizer(micro), load_causal_lm(micro)
    model.eval()
    ids = torch.tensor([encode_prompt(tok, "Is the following statement something you would say?", "auto")])
    plus, minus = tok.encode("Yes", add_special_tokens=False)[0], tok.encode("No", add_special_tokens=False)[0]
    got = []
    head = model.get_output_embeddings()
    hook = head.register_forward_hook(lambda m, i, o: got.append(i[0][0, -1].detach().double()))
    with torch.no_grad():
        logp = torch.log_softmax(model(input_ids=ids).logits[0, -1].double(), -1)
    hook.remove()
    W = head.weight.detach().double()
    pred = step0_prediction(W, got[0], logp, plus, minus, "dpo", 0.1)
    assert pred["logit_check"] < 1e-5
    h = got[0].clone().requires_grad_()
    loss, lp = _loss_at_reference(W, h, plus, minus, "dpo", 0.1)
    (gl,) = torch.autograd.grad(loss, h, retain_graph=True)
    (gp,) = torch.autograd.grad(lp[plus], h)
    assert pred["rate"] == pytest.approx(float(-(gp @ gl)), rel=1e-8)
    eps = 1e-6
    base = torch.log_softmax(W @ got[0], -1)[plus]     # the model's fp32 log-probs differ by ~1e-7: too coarse here
    fd = float(torch.log_softmax(W @ (got[0] - eps * gl), -1)[plus] - base) / eps
    assert fd == pytest.approx(pred["rate"], rel=1e-3)
    assert len(pred["gainers"]) == 10 and all(i not in (plus, minus) for i, _ in pred["gainers"])


def test_neg_loss_slope():
    assert neg_loss_slope("dpo", 0.1) == pytest.approx(0.05)
    assert neg_loss_slope("ipo", 0.01) == pytest.approx(100.0)
    with pytest.raises(ValueError):
        neg_loss_slope("kto", 0.1)


class _Tok:
    """A stand-in tokenizer: only the texts in ``vocab`` are single tokens."""

    vocab = {"Yes": 1, " Yes": 2, "yes": 3, "No": 4, " no": 5, "NO": 4, "Maybe": 6}

    def encode(self, text, add_special_tokens=False):
        return [self.vocab[text]] if text in self.vocab else [100 + ord(c) for c in text]


def test_candidates_are_single_tokens_with_variants():
    got = candidate_tokens(_Tok(), ["yes", "no", "absolutely", "maybe"])
    assert [c["text"] for c in got] == ["yes", "Yes", " Yes", " no", "No", "Maybe"]
    assert len({c["id"] for c in got}) == len(got)          # "NO" shares No's id: kept once
    assert all(len(_Tok().encode(c["text"])) == 1 for c in got)


def test_candidates_on_the_micro_tokenizer(micro):
    from experiments.models.load import load_tokenizer

    tok = load_tokenizer(micro)
    got = candidate_tokens(tok, ["yes", "no", "absolutely", "zzqx"])
    assert got and all(len(tok.encode(c["text"], add_special_tokens=False)) == 1 for c in got)
    assert {"Yes", "No"} <= {c["text"] for c in got}
    assert not any(c["text"].strip().lower() == "zzqx" for c in got)


def test_token_slug_round_trip():
    for text in ("Yes", " yes", " Never"):
        assert token_from_slug(token_slug(text)) == text
    assert token_slug(" yes") == "_yes"
    with pytest.raises(UserError):
        token_slug("a/b")


def test_simulate_sft_stops_at_the_first_crossing():
    W, h = _free(3, V=30, d=8)
    target = 4
    h1, iters, reached = simulate_sft(W, h[None], target, stop_at=0.65, step_nats=0.05)
    assert reached.all()
    p_end = torch.softmax(h1 @ W.T, -1)[0, target]
    assert p_end >= 0.65
    # one step fewer is still below the target
    h_prev, _, _ = simulate_sft(W, h[None], target, stop_at=1.0, step_nats=0.05, max_iter=int(iters[0]) - 1)
    assert torch.softmax(h_prev @ W.T, -1)[0, target] < 0.65


def test_simulate_sft_respects_the_cap():
    """A target row inside the convex hull of the others can never reach π = 0.65: the cap stops it."""
    W = torch.tensor([[0.0, 0.0], [1.0, 0.0], [-1.0, 0.0], [0.0, 1.0], [0.0, -1.0]], dtype=torch.float64)
    _, iters, reached = simulate_sft(W, torch.zeros(1, 2, dtype=torch.float64), 0, stop_at=0.65, max_iter=50)
    assert not reached.any() and int(iters[0]) == 50


def _pairs(rows):
    base = {"sft_reached": True, "same_word": False, "catastrophic_rank": None}
    return pd.DataFrame([base | r for r in rows])


def test_select_pairs_rule():
    df = _pairs([
        {"chosen": "Yes", "rejected": "No", "rate": -3.0, "catastrophic_rank": 5},
        {"chosen": "Yes", "rejected": "Sure", "rate": -2.0},
        {"chosen": "No", "rejected": "Never", "rate": -1.0},
        {"chosen": "No", "rejected": "Maybe", "rate": -0.5, "catastrophic_rank": 1},
        {"chosen": "No", "rejected": "yes", "rate": -9.0, "same_word": True},
        {"chosen": "Sure", "rejected": "No", "rate": -8.0, "sft_reached": False},
        {"chosen": "Sure", "rejected": "Yes", "rate": 2.0},
        {"chosen": "Yes", "rejected": "Maybe", "rate": 4.0},
        {"chosen": "No", "rejected": "Sure", "rate": 1.0},
        {"chosen": "Never", "rejected": "No", "rate": 0.5},
    ])
    out = select_pairs(df, k=3)
    disp = out[out.group == "displacing"]
    # the 3 most negative eligible pairs, the 3rd replaced by the top catastrophic one (rank 1)
    assert list(zip(disp.chosen, disp.rejected)) == [("Yes", "No"), ("Yes", "Sure"), ("No", "Maybe")]
    assert disp.catastrophic_pick.tolist() == [False, False, True]
    calm = out[out.group == "not displacing"]
    assert list(zip(calm.chosen, calm.rejected)) == [("Yes", "Maybe"), ("Sure", "Yes"), ("No", "Sure")]
    assert out["rank"].tolist() == [1, 2, 3, 1, 2, 3]
    # no catastrophic gainer anywhere: the plain top k
    out = select_pairs(df.assign(catastrophic_rank=None), k=2)
    assert not out.catastrophic_pick.any() and (out.group == "displacing").sum() == 2


def test_scan_pairs_on_a_free_model_agrees_with_thm4():
    """scan_pairs' per-pair rate (its compact form) equals thm4_terms at the same states, with the
    modelled SFT applied first when asked."""
    W, _ = _free(5, V=30, d=8)
    g = torch.Generator().manual_seed(1)
    h = {"No": torch.randn(2, 8, generator=g, dtype=torch.float64),
         "Yes": torch.randn(3, 8, generator=g, dtype=torch.float64)}
    cands = [{"text": "Yes", "id": 0}, {"text": "No", "id": 1}, {"text": "Maybe", "id": 2}, {"text": "sure", "id": 3}]
    vocab = ["affirmative", "negative", "uncertain", "affirmative"] + [""] * 26
    df = scan_pairs(W, h, cands, MEANINGS, OPPOSITES, {"affirmative": "No", "negative": "Yes"}, vocab, 0.05)
    assert set(df.chosen) == {"Yes", "No", "sure"}          # Maybe has no class: never y+
    row = df[(df.chosen == "No") & (df.rejected == "Yes")].iloc[0]
    expected = sum(thm4_terms(W, x, 1, 0)["bracket"] for x in h["Yes"]) / 3 * 0.05
    assert row.rate == pytest.approx(expected, rel=1e-9) and row.n_prompts == 3
    assert bool(df[(df.chosen == "Yes") & (df.rejected == "sure")].same_word.iloc[0]) is False
    sim = scan_pairs(W, h, cands, MEANINGS, OPPOSITES, {"affirmative": "No", "negative": "Yes"}, vocab, 0.05,
                     simulate={"stop_at": 0.65, "step_nats": 0.1, "max_iter": 5000})
    row = sim[(sim.chosen == "Yes") & (sim.rejected == "No")].iloc[0]
    assert row.p_plus >= 0.65 and bool(row.sft_reached)


def _scan_runs(falls, rates, p_start=0.9, def1=True, seeds=3):
    """Synthetic scan runs: one pair per (fall, rate), ``seeds`` runs each with a little spread."""
    rows = []
    for i, (fall, rate) in enumerate(zip(falls, rates)):
        for s in range(seeds):
            rows.append({"model": "m", "chosen": f"Y{i}", "rejected": "N", "pred_rate": rate * (1 + 0.01 * s),
                         "largest_decrease": max(0.0, fall + 0.01 * s), "p_start": p_start,
                         "definition1": def1, "group": "displacing" if rate < 0 else "not displacing"})
    return pd.DataFrame(rows)


@pytest.mark.parametrize("falls, rates, scale, p_start, expected", [
    ([0.5, 0.4, 0.3, 0.0, 0.0, 0.0], [-3, -2, -1, 1, 2, 3], "tiny", 0.9, "yes"),
    ([0.0, 0.0, 0.0, 0.3, 0.4, 0.5], [-3, -2, -1, 1, 2, 3], "tiny", 0.9, "no"),
    ([0.5, 0.4, 0.3, 0.0, 0.0, 0.0], [-3, -2, -1, 1, 2, 3], "smoke", 0.9, "not testable"),
    ([0.5, 0.4, 0.3, 0.0, 0.0, 0.0], [-3, -2, -1, 1, 2, 3], "tiny", 0.3, "not testable"),
    ([0.0] * 6, [-3, -2, -1, 1, 2, 3], "tiny", 0.9, "inconclusive"),          # no fall anywhere: ρ undefined
    ([0.01, 0.008, 0.006, 0.0, 0.0, 0.0], [-3, -2, -1, 1, 2, 3], "tiny", 0.9, "inconclusive"),  # ordered, too small
])
def test_scan_verdict_rule(falls, rates, scale, p_start, expected):
    from experiments.persona.scan_report import verdict

    out = verdict(_scan_runs(falls, rates, p_start), scale)
    assert out["verdict"] == expected, out
