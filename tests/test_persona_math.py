"""Persona maths against closed forms and hand-computed cases."""

import math

import pytest
import torch

from experiments.common.cli import UserError
from experiments.persona.dpo import largest_decrease, rank_correlations, theory_check, top_risers
from experiments.persona.losses import next_token_logprobs, preference_loss, single_token_logprobs
from experiments.persona.prompts import left_pad, select_prompt
from experiments.persona.sft import make_optimizer
from experiments.persona.tokens import BENIGN, CATASTROPHIC, OTHER, classify_token, normalise_token, single_token_id

MEANINGS = {"affirmative": ["yes", "yeah", "sure"], "negative": ["no", "never"], "uncertain": ["maybe"]}
OPPOSITES = {"affirmative": ["negative", "uncertain"], "negative": ["affirmative"], "uncertain": []}


def test_dpo_loss_closed_form():
    pc, pr = torch.tensor([-1.0, -2.0]), torch.tensor([-3.0, -0.5])
    rc, rr = torch.tensor([-1.5, -2.0]), torch.tensor([-2.5, -1.0])
    beta = 0.1
    losses, cr, rj = preference_loss(pc, pr, rc, rr, beta, "dpo")
    for i in range(2):
        h = (pc[i] - pr[i]) - (rc[i] - rr[i])
        assert losses[i].item() == pytest.approx(math.log(1 + math.exp(-beta * h.item())), rel=1e-6)
    assert cr.tolist() == pytest.approx([0.05, 0.0])
    assert rj.tolist() == pytest.approx([-0.05, 0.05])


def test_dpo_loss_at_reference_is_log2_and_gradient_sign():
    pc = torch.tensor([-1.0], requires_grad=True)
    pr = torch.tensor([-2.0], requires_grad=True)
    losses, _, _ = preference_loss(pc, pr, pc.detach(), pr.detach(), beta=0.1)
    assert losses.item() == pytest.approx(math.log(2))
    losses.sum().backward()
    # dℓ/d ln π(y+) = −β σ(−βh) = −β/2 at h = 0; opposite for y−
    assert pc.grad.item() == pytest.approx(-0.05)
    assert pr.grad.item() == pytest.approx(0.05)


def test_ipo_loss_closed_form():
    pc, pr = torch.tensor([-1.0]), torch.tensor([-3.0])
    rc, rr = torch.tensor([-2.0]), torch.tensor([-2.0])
    tau = 0.01
    losses, _, _ = preference_loss(pc, pr, rc, rr, tau, "ipo")
    assert losses.item() == pytest.approx((2.0 - 1 / (2 * tau)) ** 2)  # (2 − 50)² = 2304


def test_loss_rejects_bad_arguments():
    t = torch.zeros(1)
    with pytest.raises(ValueError, match="beta"):
        preference_loss(t, t, t, t, 0.0)
    with pytest.raises(ValueError, match="loss_type"):
        preference_loss(t, t, t, t, 0.1, "kto")


def test_single_token_logprobs_takes_last_position():
    logits = torch.zeros(2, 3, 4)
    logits[0, -1] = torch.tensor([0.0, math.log(3.0), 0.0, 0.0])  # softmax: [1,3,1,1]/6
    logits[1, 0] = torch.tensor([9.0, 0, 0, 0])  # not the last position: ignored
    lp = single_token_logprobs(logits, torch.tensor([1, 0]))
    assert lp[0].item() == pytest.approx(math.log(0.5))
    assert lp[1].item() == pytest.approx(math.log(0.25))
    assert next_token_logprobs(logits).exp().sum(-1).tolist() == pytest.approx([1.0, 1.0])


@pytest.mark.parametrize("text,norm", [("ĠYes", "yes"), (" No.", "no"), ("never", "never"),
                                       ("▁Maybe", "maybe"), ("  SURE! ", "sure")])
def test_normalise_token(text, norm):
    assert normalise_token(text) == norm


@pytest.mark.parametrize("token,preferred,expected", [
    (" Yes", "Yes", BENIGN), ("yes", "Yes", BENIGN), ("Yeah", "Yes", BENIGN),
    (" No", "Yes", CATASTROPHIC), ("Maybe", "Yes", CATASTROPHIC),
    (" Yes", "No", CATASTROPHIC), (" never", "No", BENIGN), ("Maybe", "No", OTHER),
    (" the", "No", OTHER), ("Sure", "Sure", BENIGN),
])
def test_benign_catastrophic_rule(token, preferred, expected):
    assert classify_token(token, preferred, MEANINGS, OPPOSITES) == expected


def test_rule_needs_meaning_for_preferred():
    with pytest.raises(UserError, match="no meaning"):
        classify_token("Yes", "Banana", MEANINGS, OPPOSITES)


def test_largest_decrease():
    s = largest_decrease([0.9, 0.95, 0.4, 0.6])
    assert s["largest_decrease"] == pytest.approx(0.5)
    assert (s["p_start"], s["p_min"], s["step_min"], s["p_end"]) == (0.9, 0.4, 2, 0.6)
    assert s["decreased"] and s["first_decrease_step"] == 2
    # drawdown runs from the peak (0.95 at step 1) to the trough after it
    assert (s["p_peak"], s["step_peak"], s["p_trough"], s["step_trough"]) == (0.95, 1, 0.4, 2)
    assert s["drawdown"] == pytest.approx(0.55) and s["displaced"]
    s = largest_decrease([0.2, 0.3, 0.5])
    assert s["largest_decrease"] == 0 and not s["decreased"] and s["first_decrease_step"] is None
    assert s["drawdown"] == 0 and not s["displaced"]


def test_drawdown_sees_a_fall_after_a_rise():
    # rise 0.2 -> 0.97, fall to 0.90, partial recovery; an earlier small dip is not the largest
    s = largest_decrease([0.2, 0.19, 0.6, 0.97, 0.93, 0.90, 0.92])
    assert s["largest_decrease"] == pytest.approx(0.01) and s["decreased"]
    assert (s["step_peak"], s["step_trough"]) == (3, 5)
    assert s["drawdown"] == pytest.approx(0.07)
    assert not largest_decrease([0.5, 0.4995, 0.6])["decreased"]  # below the 1e-3 tolerance


def test_top_risers_skips_excluded():
    p0 = torch.tensor([0.5, 0.2, 0.2, 0.1])
    p1 = torch.tensor([0.1, 0.5, 0.15, 0.25])
    assert [i for i, _ in top_risers(p0, p1, exclude=[1], k=2)] == [3, 2]
    assert top_risers(p0, p1, exclude=[], k=1)[0] == (1, pytest.approx(0.3))


def test_rank_correlations():
    x = torch.tensor([1.0, 2.0, 3.0, 4.0])
    assert rank_correlations(x, 2 * x + 1)["pearson"] == pytest.approx(1.0)
    assert rank_correlations(x, -x**3)["spearman"] == pytest.approx(-1.0)
    c = rank_correlations(x, x**3)
    assert c["spearman"] == pytest.approx(1.0) and c["pearson"] < 0.99


def test_left_pad_positions():
    b = left_pad([[5, 6, 7], [8]], pad_id=0)
    assert b["input_ids"].tolist() == [[5, 6, 7], [0, 0, 8]]
    assert b["attention_mask"].tolist() == [[1, 1, 1], [0, 0, 1]]
    assert b["position_ids"].tolist() == [[0, 1, 2], [0, 0, 0]]


def test_select_prompt_is_seeded_and_filtered():
    records = [{"id": i, "answer_matching_behavior": "Yes" if i % 2 else "No"} for i in range(50)]
    a, b = select_prompt(records, "Yes", 9773), select_prompt(records, "Yes", 9773)
    assert a == b and a["answer_matching_behavior"] == "Yes"
    picks = {select_prompt(records, "No", s)["id"] for s in range(20)}
    assert len(picks) > 3 and all(i % 2 == 0 for i in picks)
    with pytest.raises(UserError):
        select_prompt(records[:1], "Yes", 1)


def test_cos_dh_w_diff_hand_case():
    """cos(Δh, W+ − W−) on a case worked by hand: W+ − W− = (1, −1), Δh = (3, −1), cos = 4/√20."""
    W = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
    h0, h1 = torch.tensor([0.5, 0.5]), torch.tensor([3.5, -0.5])
    logp = torch.log_softmax(W @ h0, -1)
    t = theory_check(logp, torch.log_softmax(W @ h1, -1), W, h0, h1, chosen_id=0, rejected_id=1)
    # W+ alone would give 3/√10 = 0.949, W+ + W− 2/√20 = 0.447, Δh against itself 1
    assert t["cos_dh_w_diff"] == pytest.approx(4 / math.sqrt(20), abs=1e-6)


def _free_hidden_state(seed=0, V=50, d=8):
    """P2's unconstrained-features setting for one prompt: logits W h with W fixed and h trainable."""
    g = torch.Generator().manual_seed(seed)
    W = torch.randn(V, d, generator=g, dtype=torch.float64)
    h = torch.randn(d, generator=g, dtype=torch.float64).requires_grad_()
    return W, h


def _dpo_step(W, h, optimizer, logp_ref, chosen, rejected, beta):
    logp = torch.log_softmax(W @ h, -1)
    losses, _, _ = preference_loss(logp[chosen].view(1), logp[rejected].view(1),
                                   logp_ref[chosen].view(1), logp_ref[rejected].view(1), beta)
    optimizer.zero_grad()
    losses.sum().backward()
    optimizer.step()


def test_dpo_sgd_step_moves_free_hidden_state_along_w_diff():
    """What Thms 4–5 assume, derived: ∇_h ln π(y) = W_y − Σ_z π(z) W_z, so in ∇_h of ln π(y+) − ln π(y−)
    the softmax means cancel and ∇_h ℓ = −β σ(−β m) (W+ − W−), m the margin over the reference. At the
    reference (m = 0) one SGD step of size η gives Δh = (ηβ/2)(W+ − W−) exactly; the next one
    ηβ σ(−β m₁)(W+ − W−) with m₁ = ⟨W+ − W−, Δh₁⟩ = (ηβ/2)‖W+ − W−‖². Then Δ ln π(z) = ⟨W_z, Δh⟩ − const
    is affine in ⟨W_z, W+ − W−⟩ (Thm 5): Pearson 1."""
    W, h = _free_hidden_state()
    chosen, rejected, beta, lr = 3, 7, 0.1, 0.5
    w_diff = W[chosen] - W[rejected]
    logp0 = torch.log_softmax(W @ h, -1).detach()
    h0 = h.detach().clone()
    opt = make_optimizer("sgd", [h], lr)
    _dpo_step(W, h, opt, logp0, chosen, rejected, beta)
    h1 = h.detach().clone()
    assert torch.allclose(h1 - h0, lr * beta / 2 * w_diff, atol=1e-12)
    t = theory_check(logp0, torch.log_softmax(W @ h1, -1), W, h0, h1, chosen, rejected)
    assert t["cos_dh_w_diff"] == pytest.approx(1.0, abs=1e-9)
    assert t["pearson"] == pytest.approx(1.0, abs=1e-9) and t["spearman"] > 0.99
    m1 = lr * beta / 2 * float(w_diff @ w_diff)
    _dpo_step(W, h, opt, logp0, chosen, rejected, beta)
    expected = lr * beta * torch.sigmoid(torch.tensor(-beta * m1, dtype=torch.float64)) * w_diff
    assert torch.allclose(h.detach() - h1, expected, atol=1e-12)


def test_sft_step_is_not_along_w_diff():
    """A contrast the measure must see: an SFT step (−ln π(y+)) moves h along W+ − Σ_z π(z) W_z, whose
    cosine with W+ − W− is well below 1 for a random W."""
    W, h = _free_hidden_state(seed=1)
    chosen, rejected, lr = 3, 7, 0.5
    logp0 = torch.log_softmax(W @ h, -1).detach()
    h0 = h.detach().clone()
    opt = make_optimizer("sgd", [h], lr)
    (-torch.log_softmax(W @ h, -1)[chosen]).backward()
    opt.step()
    h1 = h.detach()
    u, v = W[chosen] - logp0.exp() @ W, W[chosen] - W[rejected]
    expected = float(u @ v / (u.norm() * v.norm()))
    t = theory_check(logp0, torch.log_softmax(W @ h1, -1), W, h0, h1, chosen, rejected)
    assert t["cos_dh_w_diff"] == pytest.approx(expected, abs=1e-9)
    assert expected < 0.9


def test_rmsprop_first_step_is_sign_like():
    """The persona runs use RMSprop. Its first step is −lr·g / (√((1 − α) g²) + ε) ≈ (lr/√(1 − α))·sign(−g),
    so even with a free h it moves along sign(W+ − W−): cos = ‖v‖₁ / (√d ‖v‖₂) for v = W+ − W−, not 1."""
    W, h = _free_hidden_state(seed=2)
    chosen, rejected, beta, lr = 3, 7, 0.1, 1e-3
    v = W[chosen] - W[rejected]
    logp0 = torch.log_softmax(W @ h, -1).detach()
    h0 = h.detach().clone()
    opt = make_optimizer("rmsprop", [h], lr)
    _dpo_step(W, h, opt, logp0, chosen, rejected, beta)
    h1 = h.detach()
    assert torch.allclose(h1 - h0, lr / math.sqrt(1 - 0.99) * v.sign(), rtol=1e-5)
    t = theory_check(logp0, torch.log_softmax(W @ h1, -1), W, h0, h1, chosen, rejected)
    expected = float(v.abs().sum() / (math.sqrt(len(v)) * v.norm()))
    assert t["cos_dh_w_diff"] == pytest.approx(expected, abs=1e-5)
    assert expected < 0.99


class _Tok:
    """A stand-in tokenizer: words split into characters except those in ``whole``."""

    whole = {"Yes": 7, "No": 8}

    def encode(self, text, add_special_tokens=False):
        return [self.whole[text]] if text in self.whole else [ord(c) for c in text]

    def convert_ids_to_tokens(self, ids):
        return [chr(i) for i in ids]


def test_single_token_id():
    assert single_token_id(_Tok(), "Yes") == 7
    with pytest.raises(UserError, match="'Absolutely' is not a single token"):
        single_token_id(_Tok(), "Absolutely")


def test_cos_column_text_shows_an_interval_only_with_two_seeds():
    from experiments.persona.figures import mean_ci_text

    assert mean_ci_text([0.2]) == "0.20 (1 seed, no interval)"
    assert mean_ci_text([0.1, 0.3]) == "0.20 ± 1.27"  # t_{0.975, 1} = 12.706, s/√n = 0.1
    assert mean_ci_text([0.2, 0.2]) == "0.20 ± <0.01"  # never "± 0.00"
    assert mean_ci_text([float("nan"), 0.4]) == "0.40 (1 seed, no interval)"
    assert mean_ci_text([]) == "—"
