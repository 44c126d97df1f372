"""Source ``random`` of :mod:`experiments.models.prepare`: a micro Llama (or T5) with a byte-level BPE
tokenizer trained in code on a fixed synthetic corpus; the same spec gives byte-identical files.
"""

from __future__ import annotations

from pathlib import Path

from experiments.models.prepare_common import PrepareError

# Special tokens of the random tokenizer, in id order.
RANDOM_BOS = "<|im_start|>"
RANDOM_EOS = "<|im_end|>"
RANDOM_PAD = "<|pad|>"
RANDOM_SPECIAL_TOKENS = (RANDOM_BOS, RANDOM_EOS, RANDOM_PAD)

# ChatML, as used by SmolLM2-Instruct, without SmolLM2's default system prompt.
RANDOM_CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)


_FILLER = """\
The quick brown fox jumps over the lazy dog while the cat sleeps on a warm mat.
A small model reads a short question and writes a short answer.
What is the capital of France? The capital of France is Paris.
Please answer the question with one word. The answer is correct.
She said that the weather was nice today, and we went for a walk in the park.
Numbers such as 0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 42 and 2024 appear in text.
Would you like some tea or coffee? I would like some water, thank you.
The teacher asked the students to write a story about their favourite animal.
Do you agree with this statement? Give your opinion and explain why.
It is important to be honest, kind and helpful to other people.
The train leaves the station at nine o'clock in the morning.
He opened the door, looked outside, and saw that it was raining.
Science helps us understand the world: physics, chemistry, biology and more.
Water boils at one hundred degrees and freezes at zero degrees.
They built a house near the river, with a garden full of flowers.
My friend likes music, books, games, and long conversations.
Is it true that the earth goes around the sun? It is true.
User: Hello! Assistant: Hi, how can I help you today?
"Quotes", (brackets), [lists], {braces}; colons: and semicolons; dashes - and slashes /.
Every good answer starts with careful thinking about the question.
"""


def _random_corpus(words: list[str], repeat: int = 1000) -> list[str]:
    """A fixed synthetic corpus. Each word appears ``repeat`` times in its given case and in lower
    case, with and without a leading space, far more often than any filler pair, so the byte-pair
    merges that build the words come first."""
    lines = []
    for w in words:
        for v in dict.fromkeys((w, w.lower())):
            lines.extend([f"{v} {v}"] * repeat)
    lines.extend(_FILLER.splitlines())
    return lines


def build_random_tokenizer(vocab_size: int, single_token_words: list[str]):
    """A deterministic byte-level BPE tokenizer wrapped in ``PreTrainedTokenizerFast``."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    n_base = len(pre_tokenizers.ByteLevel.alphabet()) + len(RANDOM_SPECIAL_TOKENS)
    if vocab_size <= n_base:
        raise PrepareError(f"source 'random': vocab_size {vocab_size} must exceed {n_base} "
                           "(256 byte tokens + special tokens)")
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=1,
        special_tokens=list(RANDOM_SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(_random_corpus(single_token_words), trainer=trainer)
    hf_tok = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token=RANDOM_BOS,
        eos_token=RANDOM_EOS,
        pad_token=RANDOM_PAD,
        model_max_length=512,
        clean_up_tokenization_spaces=False,
    )
    hf_tok.chat_template = RANDOM_CHAT_TEMPLATE
    bad = [v for v in word_variants(single_token_words)
           if len(hf_tok(v, add_special_tokens=False).input_ids) != 1]
    if bad:
        raise PrepareError(f"source 'random': vocab_size {vocab_size} is too small to make every "
                           f"single_token_words variant one token (not single: {bad[:5]})")
    return hf_tok


def word_variants(words: list[str]) -> list[str]:
    """The four spellings that must be single tokens: w, " w", w.lower(), " " + w.lower()."""
    return list(dict.fromkeys(v for w in words for v in (w, " " + w, w.lower(), " " + w.lower())))


def _random_t5(spec: dict, vocab: int, eos: int, pad: int):
    """A micro T5 (encoder-decoder) for the seq2seq path at smoke scale; decoding starts from pad, as T5."""
    from transformers import T5Config, T5ForConditionalGeneration

    config = T5Config(vocab_size=vocab, d_model=spec["hidden_size"], d_ff=spec["intermediate_size"],
                      d_kv=spec["hidden_size"] // spec["num_heads"], num_layers=spec["num_layers"],
                      num_heads=spec["num_heads"], eos_token_id=eos, pad_token_id=pad,
                      decoder_start_token_id=pad, tie_word_embeddings=True)
    return T5ForConditionalGeneration(config)


def _prepare_random(spec: dict, tmp: Path) -> dict:
    import torch
    from transformers import GenerationConfig, LlamaConfig, LlamaForCausalLM

    tokenizer = build_random_tokenizer(spec["vocab_size"], spec["single_token_words"])
    bos, eos, pad = (tokenizer.convert_tokens_to_ids(t) for t in RANDOM_SPECIAL_TOKENS)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(spec["seed"])
        if spec["architecture"] == "t5":
            model = _random_t5(spec, len(tokenizer), eos, pad)
            model.generation_config = GenerationConfig(eos_token_id=eos, pad_token_id=pad,
                                                       decoder_start_token_id=pad)
        else:
            config = LlamaConfig(
                vocab_size=len(tokenizer),
                hidden_size=spec["hidden_size"],
                intermediate_size=spec["intermediate_size"],
                num_hidden_layers=spec["num_layers"],
                num_attention_heads=spec["num_heads"],
                num_key_value_heads=spec["num_kv_heads"],
                max_position_embeddings=spec["max_position_embeddings"],
                tie_word_embeddings=True,
                bos_token_id=bos,
                eos_token_id=eos,
                pad_token_id=pad,
            )
            model = LlamaForCausalLM(config)
            model.generation_config = GenerationConfig(bos_token_id=bos, eos_token_id=eos,
                                                       pad_token_id=pad)
    model.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    return {"parameters": model.num_parameters(), "tokenizer_size": len(tokenizer),
            "source_hashes": {}}
