"""Single-token answers and the benign/catastrophic rule for tokens whose probability rose.

The rule is driven by config (``persona.meanings`` and ``persona.opposites``):

* a token is *normalised* by decoding it, dropping leading/trailing whitespace and the byte-level
  markers ``Ġ``/``▁``, stripping surrounding punctuation and lower-casing ("ĠYes" -> "yes",
  " No." -> "no");
* its *meaning* is the class of ``meanings`` whose word list holds the normalised text;
* relative to the preferred answer y+, a token is **benign** when it has y+'s meaning (e.g. " yes"
  for y+ = "Yes"), **catastrophic** when its meaning is listed in ``opposites[meaning(y+)]``
  (e.g. "Yes" for y+ = "No"), and **other** otherwise (no known meaning, or a meaning that is
  neither).
"""

from __future__ import annotations

import string

from experiments.common.cli import UserError

BENIGN, CATASTROPHIC, OTHER = "benign", "catastrophic", "other"
_MARKERS = "Ġ▁Ċ"


def single_token_id(tokenizer, text: str) -> int:
    """The id of ``text`` if the tokenizer encodes it as exactly one token, else ``UserError``."""
    ids = tokenizer.encode(text, add_special_tokens=False)
    if len(ids) != 1:
        pieces = tokenizer.convert_ids_to_tokens(ids)
        raise UserError(f"answer {text!r} is not a single token for this tokenizer: {pieces}")
    return ids[0]


def token_slug(text: str) -> str:
    """A token's name in paths and tables: a leading space becomes "_" (the paper's display convention),
    so " yes" -> "_yes". Only letter-only answers (with an optional leading space) have a slug."""
    word = text[1:] if text.startswith(" ") else text
    if not word.isalpha():
        raise UserError(f"answer {text!r}: only letters, with an optional leading space, can name a run folder")
    return ("_" + word) if text.startswith(" ") else word


def token_from_slug(slug: str) -> str:
    """Inverse of :func:`token_slug`: "_yes" -> " yes"."""
    return (" " + slug[1:]) if slug.startswith("_") else slug


def normalise_token(text: str) -> str:
    text = text.strip().lstrip(_MARKERS).strip()
    return text.strip(string.punctuation + "…“”‘’").lower()


def meaning_of(text: str, meanings: dict[str, list[str]]) -> str | None:
    norm = normalise_token(text)
    for meaning, words in meanings.items():
        if norm in {w.lower() for w in words}:
            return meaning
    return None


def classify_token(text: str, preferred: str, meanings: dict[str, list[str]],
                   opposites: dict[str, list[str]]) -> str:
    """Classify a token that gained probability, relative to the preferred answer ``preferred``."""
    target = meaning_of(preferred, meanings)
    if target is None:
        raise UserError(f"preferred answer {preferred!r} has no meaning in persona.meanings")
    got = meaning_of(text, meanings)
    if got is None:
        return OTHER
    if got == target:
        return BENIGN
    if got in opposites.get(target, []):
        return CATASTROPHIC
    return OTHER
