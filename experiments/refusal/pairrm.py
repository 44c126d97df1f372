"""PairRM (``llm-blender/PairRM-hf``), the reward model that breaks the paper's ties (P2 §6: two
responses with the same judge score -> the one PairRM prefers is chosen).

PairRM is a DeBERTa-v3-large encoder read at three marker tokens of one sequence
``<|source|> prompt <|candidate1|> a <|candidate2|> b``: the head scores (source, candidate) as
``head([h_source; h_candidate])`` and the logit ``head(source, a) − head(source, b)`` is > 0 when ``a``
is better. The checkpoint's parameters are ``pretrained_model.*`` (a ``DebertaV2Model``) and
``head_layer.{1,4}`` (Linear 2H→H, tanh, Linear H→n_tasks, dropout before each Linear); its config adds
``n_tasks``, ``drop_out``, ``source_prefix_id``, ``cand1_prefix_id``, ``cand2_prefix_id``. We load it
with our own :class:`PairRM` (transformers' DeBERTa-v2 body + that head), so the suite does not need
the ``llm-blender`` package (its 0.0.2 wheel pins nothing and predates transformers 5); weights are
read as safetensors only.

Encoding (the model card's rule): the source is ``<|source|>`` + prompt cut to 1224 tokens; each
candidate is its marker + text cut to ``(2048 − len(source)) // 2`` tokens; no special tokens are added
beyond what the tokenizer's ``encode`` adds. One order is scored ([A, B], llm-blender's default
``compare`` mode).

    scorer = PairRMScorer("resources/models/pairrm", device="cuda")
    scorer(prompt, [a, b])          # -> [logit / 2, −logit / 2]; higher = better
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn
from transformers import DebertaV2Model, DebertaV2PreTrainedModel

from experiments.common.cli import UserError

SOURCE_PREFIX = "<|source|>"
CAND1_PREFIX = "<|candidate1|>"
CAND2_PREFIX = "<|candidate2|>"
SOURCE_MAX_TOKENS = 1224
MAX_TOKENS = 2048
CONFIG_KEYS = ("n_tasks", "drop_out", "source_prefix_id", "cand1_prefix_id", "cand2_prefix_id")


class PairRM(DebertaV2PreTrainedModel):
    """DeBERTa-v2 body + PairRM's pairwise head; ``forward`` returns the logits (> 0: candidate 1 better)."""

    def __init__(self, config):
        super().__init__(config)
        missing = [k for k in CONFIG_KEYS if getattr(config, k, None) is None]
        if missing:
            raise ValueError(f"not a PairRM config: no {', '.join(missing)}")
        self.pretrained_model = DebertaV2Model(config)
        h = config.hidden_size
        self.head_layer = nn.Sequential(nn.Dropout(config.drop_out), nn.Linear(2 * h, h), nn.Tanh(),
                                        nn.Dropout(config.drop_out), nn.Linear(h, config.n_tasks))
        self.post_init()

    def _at(self, hidden: torch.Tensor, input_ids: torch.Tensor, token_id: int) -> torch.Tensor:
        """The hidden state at the first ``token_id`` of every row."""
        hit = input_ids == token_id
        if not bool(hit.any(dim=1).all()):
            raise ValueError(f"a row has no marker token id {token_id}")
        return hidden[torch.arange(hidden.shape[0], device=hidden.device), hit.int().argmax(dim=1)]

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        hidden = self.pretrained_model(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        c = self.config
        source = self._at(hidden, input_ids, c.source_prefix_id)
        left = self.head_layer(torch.cat([source, self._at(hidden, input_ids, c.cand1_prefix_id)], dim=-1))
        right = self.head_layer(torch.cat([source, self._at(hidden, input_ids, c.cand2_prefix_id)], dim=-1))
        return (left - right).mean(dim=-1)


def encode_comparison(tokenizer, prompt: str, a: str, b: str, source_max: int = SOURCE_MAX_TOKENS,
                      max_tokens: int = MAX_TOKENS) -> list[int]:
    """Token ids of ``<|source|>prompt <|candidate1|>a <|candidate2|>b`` with the model card's budgets."""
    source = tokenizer.encode(SOURCE_PREFIX + prompt, max_length=source_max, truncation=True)
    budget = (max_tokens - len(source)) // 2
    if budget < 2:
        raise ValueError(f"no room for the candidates: the source takes {len(source)} of {max_tokens} tokens")
    c1 = tokenizer.encode(CAND1_PREFIX + a, max_length=budget, truncation=True)
    c2 = tokenizer.encode(CAND2_PREFIX + b, max_length=budget, truncation=True)
    return source + c1 + c2


class PairRMScorer:
    """``scorer(prompt, [a, b]) -> [logit/2, −logit/2]`` for :func:`experiments.refusal.pairs.reward_model_tie_break`;
    :meth:`compare` scores many (prompt, a, b) triples in padded batches."""

    def __init__(self, model_dir: str, device: str = "cpu", batch_size: int = 8, model=None, tokenizer=None):
        from transformers import AutoTokenizer

        if model is None:
            try:
                model = PairRM.from_pretrained(model_dir, use_safetensors=True)
            except (OSError, ValueError) as e:
                raise UserError(f"cannot load PairRM from {model_dir} (a prepared llm-blender/PairRM-hf folder "
                                f"with model.safetensors): {e}") from None
        self.tokenizer = tokenizer if tokenizer is not None else AutoTokenizer.from_pretrained(model_dir)
        for marker, key in ((SOURCE_PREFIX, "source_prefix_id"), (CAND1_PREFIX, "cand1_prefix_id"),
                            (CAND2_PREFIX, "cand2_prefix_id")):
            ids = self.tokenizer.encode(marker, add_special_tokens=False)
            if ids != [getattr(model.config, key)]:
                raise UserError(f"PairRM tokenizer: {marker} encodes to {ids}, the config says "
                                f"{key} = {getattr(model.config, key)}")
        self.model = model.to(device).eval()
        self.device, self.batch_size = device, batch_size

    @torch.no_grad()
    def compare(self, prompts: Sequence[str], a: Sequence[str], b: Sequence[str]) -> list[float]:
        """PairRM logits, > 0 when ``a[i]`` is the better response to ``prompts[i]``."""
        pad = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else 0
        out: list[float] = []
        for s in range(0, len(prompts), self.batch_size):
            batch = slice(s, s + self.batch_size)
            ids = [encode_comparison(self.tokenizer, p, x, y) for p, x, y in zip(prompts[batch], a[batch], b[batch])]
            width = max(len(x) for x in ids)
            input_ids = torch.tensor([x + [pad] * (width - len(x)) for x in ids], device=self.device)
            mask = torch.tensor([[1] * len(x) + [0] * (width - len(x)) for x in ids], device=self.device)
            out += self.model(input_ids, mask).float().cpu().tolist()
        return out

    def __call__(self, prompt: str, responses: Sequence[str]) -> list[float]:
        if len(responses) != 2:
            raise ValueError(f"PairRM compares two responses, got {len(responses)}")
        logit = self.compare([prompt], [responses[0]], [responses[1]])[0]
        return [logit / 2, -logit / 2]
