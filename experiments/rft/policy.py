"""A language model as a token-level actor-critic for PPO: the LM's next-token distribution is the
policy, a linear value head on a last hidden state is the critic.

Two critics (``ActorCritic(lm, critic=...)``):

* ``"separate"`` — RL4LMs' ``CausalLMActorCriticPolicy`` / ``Seq2SeqLMActorCriticPolicy``: the value body
  is a second copy of the pretrained LM (``value_lm``, a deep copy of ``lm`` at construction, trained
  alongside the policy: its parameters are in ``ac.parameters()``), and the value head is
  ``nn.Linear(hidden, 1, bias=False)`` on the copy's last hidden state; the policy LM has no value head
  and gets no gradient from the value loss;
* ``"shared"`` (the default) — a ``nn.Linear(hidden, 1)`` (with bias) on the policy's own last hidden
  state: one body, so every rollout and minibatch runs half the forward and backward passes (and holds
  one copy of the weights). The tiny scale uses it for the CPU cost; the value loss then also trains
  the policy's body (weighted by ``vf_coef``).

Both heads are zero-initialised, so V ≡ 0 at the start (RL4LMs keeps nn.Linear's default init, a small
random V): the first rollout's advantages are then the discounted rewards-to-go of the shaped rewards
exactly (with γ = λ = 1 equal task rewards give equal advantages, which the per-minibatch normalisation
maps to 0 — P1's zero-gradient case), and both critic kinds start from the same V. With a zero head the
value copy's body gets no gradient in the very first step; it does from the second, once the head moved.

Top-k training (:meth:`ActorCritic.freeze_lower`) freezes the lower blocks and the embeddings of the
policy and, identically, of the value copy. Both start from the same weights and never change there, so
the frozen prefix is the same for both: one :meth:`ActorCritic.prefix` cache per rollout feeds the
policy's top blocks, the reference's top blocks and the value copy's top blocks.

Episodes are the generated tokens of one response. For a decoder-only model the state before action
``a_t`` is ``prompt + a_<t`` and its logits/hidden state sit one position to the left of ``a_t``; for an
encoder-decoder model the prompt is the encoder input and the decoder sees ``start + a_<t``.
"""

from __future__ import annotations

import copy

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


CRITICS = ("shared", "separate")


class ActorCritic(nn.Module):
    """The policy ``lm`` with a critic: ``critic="shared"`` puts the value head on ``lm``'s own body,
    ``"separate"`` on a deep copy of ``lm`` (RL4LMs; see the module docstring). ``value_head`` is the
    head in both cases; ``value_lm`` is the copy (None when shared)."""

    def __init__(self, lm: nn.Module, critic: str = "shared"):
        super().__init__()
        if critic not in CRITICS:
            raise ValueError(f"critic must be one of {CRITICS}, not {critic!r}")
        self.critic = critic
        self.lm = lm
        cfg = lm.config
        self.encoder_decoder = bool(getattr(cfg, "is_encoder_decoder", False))
        hidden = getattr(cfg, "d_model", None) or cfg.hidden_size
        self.value_lm = None
        if critic == "separate":
            self.value_lm = copy.deepcopy(lm)
            head, emb = self.value_lm.get_output_embeddings(), self.value_lm.get_input_embeddings()
            if head is not None and head.weight is not emb.weight:  # unused by the critic (tied: the embedding)
                head.weight.requires_grad_(False)
        self.value_head = nn.Linear(hidden, 1, bias=critic == "shared")
        nn.init.zeros_(self.value_head.weight)  # V ≡ 0 at the start: the first advantages are the rewards
        if self.value_head.bias is not None:
            nn.init.zeros_(self.value_head.bias)
        self.top_k = 0

    def freeze_lower(self, train_top_layers: int) -> int:
        """:func:`freeze_lower_blocks` on the policy and, identically, on the value copy; returns the
        number of trainable parameters of the LM bodies (policy + value copy; the head not counted)."""
        n = freeze_lower_blocks(self.lm, train_top_layers)
        if self.value_lm is not None:
            n += freeze_lower_blocks(self.value_lm, train_top_layers)
        self.top_k = train_top_layers
        return n

    def _value_body(self) -> nn.Module:
        """The value copy, in the policy's train/eval mode (train.py switches ``ac.lm`` alone to eval
        for the rollout)."""
        if self.value_lm.training != self.lm.training:
            self.value_lm.train(self.lm.training)
        return self.value_lm

    # ------------------------------------------------------------ frozen-prefix cache (top-k training)
    def prefix(self, prompt_ids, prompt_mask, response_ids, response_mask_) -> PrefixCache:
        """Run the frozen lower blocks once for a rollout and keep what enters the first trained block.
        The reference model and the separate critic's value copy share those frozen blocks (each starts
        as a copy and they never change), so the same cache serves the policy, the reference, the value
        copy and every PPO minibatch."""
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
        ``train_top_layers`` blocks of ``lm`` (default: the policy; pass the reference LM for ln π_ref)
        and, for the values of a separate critic, those of the value copy."""
        lm = self.lm if lm is None else lm
        hidden0, kwargs, resp = cache.select(idx)
        window = slice(cache.prompt_width - 1, cache.prompt_width + resp.shape[1] - 1)
        hidden = self._top(lm, hidden0, kwargs)[:, window]
        logp, entropy = self._logp(lm.get_output_embeddings()(hidden), resp)
        if not values:
            return logp, entropy, None
        if self.value_lm is not None:  # the value copy's frozen blocks are the policy's: same cache
            hidden = self._top(self._value_body(), hidden0, kwargs)[:, window]
        return logp, entropy, self._value(hidden)

    def _top(self, lm: nn.Module, hidden: torch.Tensor, kwargs: dict) -> torch.Tensor:
        """The top ``top_k`` blocks and the final norm of a decoder-only ``lm`` on cached block inputs."""
        base = getattr(lm, lm.base_model_prefix)
        for block in list(base.layers)[-self.top_k:]:
            hidden = block(hidden, **kwargs)
        return base.norm(hidden)

    def forward(self, prompt_ids: torch.Tensor, prompt_mask: torch.Tensor, response_ids: torch.Tensor,
                response_mask_: torch.Tensor, values: bool = True, lm: nn.Module | None = None
                ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """``ln π(a_t|s_t)``, the policy entropy at s_t and ``V(s_t)``, each ``[B, T]`` (T = response width).

        Decoder-only prompts are left-padded, responses right-padded (what ``generate`` returns).
        ``lm``: another LM with the same architecture (the reference) instead of the policy's.
        """
        lm = self.lm if lm is None else lm
        hidden, logits = self._run(lm, prompt_ids, prompt_mask, response_ids, response_mask_, logits=True)
        logp, entropy = self._logp(logits, response_ids)
        if not values:
            return logp, entropy, None
        if self.value_lm is not None:
            hidden, _ = self._run(self._value_body(), prompt_ids, prompt_mask, response_ids, response_mask_)
        return logp, entropy, self._value(hidden)

    def _run(self, lm, prompt_ids, prompt_mask, response_ids, response_mask_, logits: bool = False
             ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """``lm``'s last hidden state at the states s_0 … s_{T−1}, ``[B, T, hidden]``, and (``logits``,
        or always for an encoder-decoder model) its next-token logits there."""
        T = response_ids.shape[1]
        if self.encoder_decoder:  # the LM's own logits: T5 rescales the hidden state before its head
            start = lm.config.decoder_start_token_id
            dec_in = torch.cat([torch.full_like(response_ids[:, :1], start), response_ids[:, :-1]], dim=1)
            out = lm(input_ids=prompt_ids, attention_mask=prompt_mask, decoder_input_ids=dec_in,
                     decoder_attention_mask=torch.cat([torch.ones_like(response_mask_[:, :1]),
                                                       response_mask_[:, :-1]], dim=1),
                     output_hidden_states=True, use_cache=False)
            return out.decoder_hidden_states[-1], out.logits
        P = prompt_ids.shape[1]
        ids = torch.cat([prompt_ids, response_ids], dim=1)
        mask = torch.cat([prompt_mask, response_mask_], dim=1)
        pos = (torch.cumsum(mask, dim=1) - 1).clamp_min(0)
        base = getattr(lm, lm.base_model_prefix)
        hidden = base(input_ids=ids, attention_mask=mask, position_ids=pos, use_cache=False).last_hidden_state
        hidden = hidden[:, P - 1:P + T - 1]
        return hidden, (lm.get_output_embeddings()(hidden) if logits else None)

    @staticmethod
    def _logp(logits: torch.Tensor, response_ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """ln π of the taken tokens and the entropy of π, from the logits at the same states."""
        logp_all = torch.log_softmax(logits.float(), dim=-1)
        logp = logp_all.gather(-1, response_ids.unsqueeze(-1)).squeeze(-1)
        entropy = -(logp_all.exp() * logp_all).sum(-1)
        return logp, entropy

    def _value(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.value_head(hidden.to(self.value_head.weight.dtype)).squeeze(-1).float()
