"""plain_lm_head: TRL's fused_lm_head outputs from the model's own logits, equal to TRL's tiled head."""

import pytest
import torch

from experiments.common.plain_head import plain_lm_head


def _pair(micro):
    from trl.trainer.utils import add_fused_lm_head

    from experiments.models.load import load_causal_lm

    fused, plain = load_causal_lm(micro), load_causal_lm(micro)
    add_fused_lm_head(fused, outputs=("log_probs", "entropy", "mean_logits", "is_top1"))
    add_fused_lm_head(plain, outputs=("log_probs", "entropy", "mean_logits", "is_top1"))
    plain_lm_head(plain)                                   # as PretokenizedDPOTrainer does after TRL's patch
    return fused, plain


def _batch(vocab):
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(vocab, (4, 12), generator=g)
    mask = torch.ones_like(ids)
    mask[2, 9:] = 0                                        # right padding on one row
    labels = ids.masked_fill(torch.arange(12) < 5, -100).masked_fill(mask == 0, -100)   # completion tokens only
    return ids, mask, labels


def test_outputs_and_gradients_equal_trls_tiled_head(micro):
    fused, plain = _pair(micro)
    ids, mask, labels = _batch(fused.config.vocab_size)
    out = {}
    for name, m in (("fused", fused), ("plain", plain)):
        m.train()
        o = m(input_ids=ids, attention_mask=mask, labels=labels, fused_lm_head=True)
        o.log_probs.sum().backward()
        out[name] = o, {k: p.grad.clone() for k, p in m.named_parameters() if p.grad is not None}
    (a, ga), (b, gb) = out["fused"], out["plain"]
    assert a.log_probs.shape == b.log_probs.shape == (4, 11)
    for field in ("log_probs", "entropy", "mean_logits"):
        torch.testing.assert_close(getattr(b, field), getattr(a, field), rtol=1e-5, atol=1e-5)
    assert torch.equal(a.is_top1, b.is_top1) and torch.equal(a.label_mask, b.label_mask)
    assert float(b.log_probs.detach()[2, 8:].abs().sum()) == 0.0    # padding and prompt positions are zero
    torch.testing.assert_close(b.loss, a.loss, rtol=1e-5, atol=1e-6)
    assert set(ga) == set(gb)
    for k in ga:
        torch.testing.assert_close(gb[k], ga[k], rtol=1e-4, atol=1e-6)


def test_calls_without_fused_lm_head_are_the_models_own(micro):
    fused, plain = _pair(micro)
    ids, mask, labels = _batch(fused.config.vocab_size)
    with torch.no_grad():
        a = fused(input_ids=ids, attention_mask=mask, labels=labels)
        b = plain(input_ids=ids, attention_mask=mask, labels=labels)
    assert torch.equal(a.logits, b.logits) and torch.equal(a.loss, b.loss)


def test_the_cpu_dpo_trainer_uses_the_plain_head(micro, tmp_path):
    from experiments.ches import dpo
    from experiments.models.load import load_causal_lm, load_tokenizer

    tok = load_tokenizer(micro)
    rows = [{"prompt_ids": [5, 6, 7], "chosen_ids": [8, 9], "rejected_ids": [10, 11, 12],
             "ref_chosen_logps": -5.0, "ref_rejected_logps": -7.0}] * 2
    trainer = dpo.make_trainer(load_causal_lm(micro), tok, rows, beta=0.1, lr=1e-3, batch_size=2, epochs=1, seed=0,
                               precision="fp32", device=torch.device("cpu"), work_dir=tmp_path / "w")
    assert getattr(trainer.model.forward, "plain_lm_head", False)
    with pytest.raises(NotImplementedError):
        trainer.model(input_ids=torch.tensor([[1, 2]]), shift_labels=torch.tensor([[1, 2]]), fused_lm_head=True)
