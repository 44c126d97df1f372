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


class _StopForward(Exception):
    """Raised by the prefix hook: the blocks above the cut are not needed for the cache."""


BATCH_KWARGS = ("attention_mask", "position_ids", "position_embeddings")


class PrefixCache:
    """The hidden states entering the first trained block, the block's other inputs (causal mask,
    rotary embeddings, positions) and the response ids, for a batch of episodes."""

    def __init__(self, hidden: torch.Tensor, kwargs: dict, prompt_width: int, response_ids: torch.Tensor):
        self.hidden, self.kwargs, self.prompt_width, self.response_ids = hidden, kwargs, prompt_width, response_ids
        self.batch = hidden.shape[0]

    def _slice(self, v, idx):
        if torch.is_tensor(v) and v.dim() >= 1 and v.shape[0] == self.batch:
            return v[idx]
        if isinstance(v, tuple):
            return tuple(self._slice(x, idx) for x in v)
        return v

    def select(self, idx):
        if idx is None:
            return self.hidden, self.kwargs, self.response_ids
        kwargs = {k: (self._slice(v, idx) if k in BATCH_KWARGS else v) for k, v in self.kwargs.items()}
        return self.hidden[idx], kwargs, self.response_ids[idx]


def freeze_lower_blocks(lm: nn.Module, train_top_layers: int) -> int:
    """Train only the top ``train_top_layers`` transformer blocks of a decoder-only LM (plus its final
    norm); embeddings (and a tied LM head) stay frozen. 0 trains everything. Returns the number of
    trainable LM parameters. The frozen blocks build no autograd graph, so the backward pass stops at
    the first trained block (the CPU budget of the tiny scale)."""
    if train_top_layers < 0:
        raise ValueError("train_top_layers must be >= 0")
    if train_top_layers > 0:
        if getattr(lm.config, "is_encoder_decoder", False):
            raise ValueError("train_top_layers is implemented for decoder-only models")
        base = getattr(lm, lm.base_model_prefix)
        layers = getattr(base, "layers", None)
        if layers is None:
            raise ValueError(f"{type(lm).__name__}: no .layers to freeze")
        if train_top_layers > len(layers):
            raise ValueError(f"train_top_layers {train_top_layers} > the model's {len(layers)} blocks")
        for p in lm.parameters():
            p.requires_grad_(False)
        for block in list(layers)[-train_top_layers:]:
            for p in block.parameters():
                p.requires_grad_(True)
        norm = getattr(base, "norm", None)
        if norm is not None:
            for p in norm.parameters():
                p.requires_grad_(True)
    return sum(p.numel() for p in lm.parameters() if p.requires_grad)


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
        self.top_k = 0

    def freeze_lower(self, train_top_layers: int) -> int:
        n = freeze_lower_blocks(self.lm, train_top_layers)
        self.top_k = train_top_layers
        return n

    # ------------------------------------------------------------ frozen-prefix cache (top-k training)
    def prefix(self, prompt_ids, prompt_mask, response_ids, response_mask_) -> PrefixCache:
        """Run the frozen lower blocks once for a rollout and keep what enters the first trained block.
        The reference model shares those frozen blocks (it starts as a copy and they never change), so
        the same cache serves the policy, the reference and every PPO minibatch."""
        if not self.top_k or self.encoder_decoder:
            raise ValueError("the prefix cache needs a decoder-only model with train_top_layers > 0")
        P = prompt_ids.shape[1]
        ids = torch.cat([prompt_ids, response_ids], dim=1)
        mask = torch.cat([prompt_mask, response_mask_], dim=1)
        pos = (torch.cumsum(mask, dim=1) - 1).clamp_min(0)
        base = getattr(self.lm, self.lm.base_model_prefix)
        first = base.layers[len(base.layers) - self.top_k]
        captured = {}

        def hook(module, args, kwargs):
            captured["hidden"] = (args[0] if args else kwargs["hidden_states"]).detach()
            captured["kwargs"] = {k: v for k, v in kwargs.items() if k != "hidden_states"}
            raise _StopForward

        handle = first.register_forward_pre_hook(hook, with_kwargs=True)
        try:
            with torch.no_grad():
                base(input_ids=ids, attention_mask=mask, position_ids=pos, use_cache=False)
        except _StopForward:
            pass
        finally:
            handle.remove()
        return PrefixCache(captured["hidden"], captured["kwargs"], P, response_ids)

    def forward_top(self, cache: PrefixCache, idx: torch.Tensor | None = None, lm: nn.Module | None = None,
                    values: bool = True) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """:meth:`forward` for the episodes ``idx`` of a :meth:`prefix` cache, running only the top
        ``train_top_layers`` blocks of ``lm`` (default: the policy; pass the reference LM for ln π_ref)."""
        lm = self.lm if lm is None else lm
        hidden, kwargs, resp = cache.select(idx)
        base = getattr(lm, lm.base_model_prefix)
        for block in list(base.layers)[-self.top_k:]:
            hidden = block(hidden, **kwargs)
        hidden = base.norm(hidden)
        T = resp.shape[1]
        hidden = hidden[:, cache.prompt_width - 1:cache.prompt_width + T - 1]
        return self._outputs(lm.get_output_embeddings()(hidden), hidden, resp, values)

    def forward(self, prompt_ids: torch.Tensor, prompt_mask: torch.Tensor, response_ids: torch.Tensor,
                response_mask_: torch.Tensor, values: bool = True, lm: nn.Module | None = None
                ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """``ln π(a_t|s_t)``, the policy entropy at s_t and ``V(s_t)``, each ``[B, T]`` (T = response width).

        Decoder-only prompts are left-padded, responses right-padded (what ``generate`` returns).
        ``lm``: another LM with the same architecture (the reference) instead of the policy's.
        """
        lm = self.lm if lm is None else lm
        T = response_ids.shape[1]
        if self.encoder_decoder:
            start = lm.config.decoder_start_token_id
            dec_in = torch.cat([torch.full_like(response_ids[:, :1], start), response_ids[:, :-1]], dim=1)
            out = lm(input_ids=prompt_ids, attention_mask=prompt_mask, decoder_input_ids=dec_in,
                     decoder_attention_mask=torch.cat([torch.ones_like(response_mask_[:, :1]),
                                                       response_mask_[:, :-1]], dim=1),
                     output_hidden_states=True, use_cache=False)
            logits, hidden = out.logits, out.decoder_hidden_states[-1]
        else:
            P = prompt_ids.shape[1]
            ids = torch.cat([prompt_ids, response_ids], dim=1)
            mask = torch.cat([prompt_mask, response_mask_], dim=1)
            pos = (torch.cumsum(mask, dim=1) - 1).clamp_min(0)
            base = getattr(lm, lm.base_model_prefix)
            hidden = base(input_ids=ids, attention_mask=mask, position_ids=pos, use_cache=False).last_hidden_state
            hidden = hidden[:, P - 1:P + T - 1]
            logits = lm.get_output_embeddings()(hidden)
        return self._outputs(logits, hidden, response_ids, values)

    def _outputs(self, logits, hidden, response_ids, values: bool):
        """ln π of the taken tokens, the entropy, and the value head on the same hidden states."""
        logp_all = torch.log_softmax(logits.float(), dim=-1)
        logp = logp_all.gather(-1, response_ids.unsqueeze(-1)).squeeze(-1)
        entropy = -(logp_all.exp() * logp_all).sum(-1)
        v = self.value_head(hidden.to(self.value_head.weight.dtype)).squeeze(-1).float() if values else None
        return logp, entropy, v
