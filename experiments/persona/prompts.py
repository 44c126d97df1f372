"""Persona prompts: rendering, batching and the per-seed choice of the single training prompt."""

from __future__ import annotations

import torch

from experiments.common.cli import UserError

FORMATS = ("auto", "chat", "plain")


def resolve_format(tokenizer, prompt_format: str) -> str:
    """``auto`` = the model's chat template when it has one, else the plain ``question + "\\n"``."""
    if prompt_format not in FORMATS:
        raise UserError(f"unknown prompt_format {prompt_format!r}: use one of {FORMATS}")
    if prompt_format == "auto":
        return "chat" if tokenizer.chat_template else "plain"
    if prompt_format == "chat" and not tokenizer.chat_template:
        raise UserError("prompt_format 'chat' but the tokenizer has no chat template")
    return prompt_format


def encode_prompt(tokenizer, question: str, prompt_format: str) -> list[int]:
    """Token ids of one prompt. Chat: user turn + generation prompt. Plain: question + newline, with
    the tokenizer's own special tokens (BOS where it adds one)."""
    fmt = resolve_format(tokenizer, prompt_format)
    if fmt == "chat":
        text = tokenizer.apply_chat_template([{"role": "user", "content": question}],
                                             tokenize=False, add_generation_prompt=True)
        return tokenizer.encode(text, add_special_tokens=False)
    return tokenizer.encode(question + "\n", add_special_tokens=True)


def left_pad(seqs: list[list[int]], pad_id: int) -> dict[str, torch.Tensor]:
    """Left-pad so the last position of every row is its last prompt token.

    Returns input_ids, attention_mask and position_ids (0 at each row's first real token).
    """
    width = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(seqs), width), dtype=torch.long)
    for i, s in enumerate(seqs):
        ids[i, width - len(s):] = torch.tensor(s, dtype=torch.long)
        mask[i, width - len(s):] = 1
    pos = (mask.cumsum(-1) - 1).clamp(min=0)
    return {"input_ids": ids, "attention_mask": mask, "position_ids": pos}


def select_prompt(records: list[dict], answer_matching_behavior: str, seed: int) -> dict:
    """The training prompt of one run: the first index of a seeded permutation (torch.randperm with
    a generator seeded by ``seed``) over the records whose answer_matching_behavior matches."""
    pool = [r for r in records if r["answer_matching_behavior"] == answer_matching_behavior]
    if not pool:
        raise UserError(f"no persona records with answer_matching_behavior={answer_matching_behavior!r}")
    perm = torch.randperm(len(pool), generator=torch.Generator().manual_seed(seed))
    return pool[int(perm[0])]


def split_class(records: list[dict], answer_matching_behavior: str, n_heldout: int,
                seed: int) -> tuple[list[dict], list[dict]]:
    """The per-pair SFT recipe's split of one prompt class (records whose answer_matching_behavior
    matches): ``(train, heldout)``, the held-out part being the first ``n_heldout`` of a seeded
    permutation (torch.randperm, generator seeded by ``seed``), both in file order. The SFT trains on
    ``train``, stops on the mean π(y+) over ``heldout``, and the DPO prompts are drawn from ``heldout``
    (so the DPO prompt is never an SFT prompt)."""
    pool = [r for r in records if r["answer_matching_behavior"] == answer_matching_behavior]
    if n_heldout < 1 or n_heldout >= len(pool):
        raise UserError(f"held-out prompts: need 1 <= n < {len(pool)} (the class "
                        f"answer_matching_behavior={answer_matching_behavior!r}), got {n_heldout}")
    perm = torch.randperm(len(pool), generator=torch.Generator().manual_seed(seed)).tolist()
    held = set(perm[:n_heldout])
    return ([r for i, r in enumerate(pool) if i not in held], [r for i, r in enumerate(pool) if i in held])


POOLS = ("all", "heldout")


def dpo_prompt(records: list[dict], answer_matching_behavior: str, seed: int, pool: str = "all",
               n_heldout: int = 0, split_seed: int = 0, max_prompts: int = 0) -> dict:
    """The single DPO prompt of a run. ``all`` (the paper's rule): :func:`select_prompt` over every
    record of the class. ``heldout`` (the per-pair SFT recipe): the same rule over the held-out part of
    :func:`split_class` of the first ``max_prompts`` records (0 = all), the split the SFT made."""
    if pool == "all":
        return select_prompt(records, answer_matching_behavior, seed)
    if pool != "heldout":
        raise UserError(f"unknown prompt pool {pool!r}: use one of {POOLS}")
    _, heldout = split_class(records[:max_prompts] if max_prompts else records, answer_matching_behavior,
                             n_heldout, split_seed)
    return select_prompt(heldout, answer_matching_behavior, seed)
