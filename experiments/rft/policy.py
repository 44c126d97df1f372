"""A language model as a token-level actor-critic for PPO: the LM's next-token distribution is the
policy, a linear value head on the last hidden state is the critic (one shared body; RL4LMs keeps a
separate critic copy — one body halves the memory and the forward passes).

Episodes are the generated tokens of one response. For a decoder-only model the state before action
``a_t`` is ``prompt + a_<t`` and its logits/hidden state sit one position to the left of ``a_t``; for an
encoder-decoder model the prompt is the encoder input and the decoder sees ``start + a_<t``.
"""

from __future__ import annotations

import torch
from torch import nn


def response_mask(ids: torch.Tensor, eos_id: int | None) -> torch.Tensor:
    """1 on the generated tokens up to and including the first EOS (``generate`` pads finished rows
    afterwards, often with the EOS id itself), 1 everywhere when a row has no EOS."""
    if eos_id is None:
        return torch.ones_like(ids)
    is_eos = ids == eos_id
    before_first = torch.cumsum(is_eos.long(), dim=1) - is_eos.long() == 0  # no EOS strictly before t
    return before_first.long()


class ActorCritic(nn.Module):
    def __init__(self, lm: nn.Module):
        super().__init__()
        self.lm = lm
        cfg = lm.config
        self.encoder_decoder = bool(getattr(cfg, "is_encoder_decoder", False))
        hidden = getattr(cfg, "d_model", None) or cfg.hidden_size
        self.value_head = nn.Linear(hidden, 1)
        nn.init.zeros_(self.value_head.weight)  # V ≡ 0 at the start: the first advantages are the rewards
        nn.init.zeros_(self.value_head.bias)

    def freeze_lower(self, train_top_layers: int) -> int:
        """Train only the top ``train_top_layers`` transformer blocks (plus the final norm and the value
        head); 0 trains everything. Returns the number of trainable LM parameters."""
        if train_top_layers > 0:
            if self.encoder_decoder:
                raise ValueError("train_top_layers is implemented for decoder-only models")
            base = getattr(self.lm, self.lm.base_model_prefix)
            layers = getattr(base, "layers", None)
            if layers is None:
                raise ValueError(f"{type(self.lm).__name__}: no .layers to freeze")
            for p in self.lm.parameters():
                p.requires_grad_(False)
            for block in list(layers)[-train_top_layers:]:
                for p in block.parameters():
                    p.requires_grad_(True)
            norm = getattr(base, "norm", None)
            if norm is not None:
                for p in norm.parameters():
                    p.requires_grad_(True)
        return sum(p.numel() for p in self.lm.parameters() if p.requires_grad)

    def forward(self, prompt_ids: torch.Tensor, prompt_mask: torch.Tensor, response_ids: torch.Tensor,
                response_mask_: torch.Tensor, values: bool = True
                ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """``ln π(a_t|s_t)``, the policy entropy at s_t and ``V(s_t)``, each ``[B, T]`` (T = response width).

        Decoder-only prompts are left-padded, responses right-padded (what ``generate`` returns).
        """
        T = response_ids.shape[1]
        if self.encoder_decoder:
            start = self.lm.config.decoder_start_token_id
            dec_in = torch.cat([torch.full_like(response_ids[:, :1], start), response_ids[:, :-1]], dim=1)
            out = self.lm(input_ids=prompt_ids, attention_mask=prompt_mask, decoder_input_ids=dec_in,
                          decoder_attention_mask=torch.cat([torch.ones_like(response_mask_[:, :1]),
                                                            response_mask_[:, :-1]], dim=1),
                          output_hidden_states=True, use_cache=False)
            logits, hidden = out.logits, out.decoder_hidden_states[-1]
        else:
            P = prompt_ids.shape[1]
            ids = torch.cat([prompt_ids, response_ids], dim=1)
            mask = torch.cat([prompt_mask, response_mask_], dim=1)
            pos = (torch.cumsum(mask, dim=1) - 1).clamp_min(0)
            base = getattr(self.lm, self.lm.base_model_prefix)
            hidden = base(input_ids=ids, attention_mask=mask, position_ids=pos, use_cache=False).last_hidden_state
            hidden = hidden[:, P - 1:P + T - 1]
            logits = self.lm.get_output_embeddings()(hidden)
        logp_all = torch.log_softmax(logits.float(), dim=-1)
        logp = logp_all.gather(-1, response_ids.unsqueeze(-1)).squeeze(-1)
        entropy = -(logp_all.exp() * logp_all).sum(-1)
        v = self.value_head(hidden.to(self.value_head.weight.dtype)).squeeze(-1).float() if values else None
        return logp, entropy, v
