"""Tiny random models with offline-trained tokenizers, for tests.

No hub is reachable, so the tokenizers are trained here with the `tokenizers`
library on a small built-in corpus that repeats every label word used by the
built-in tasks, so each is a single token (with and without a leading space).
Weights are random from a fixed seed, with an init scale chosen so that scores
differ by O(1) while activations stay well inside the fixed-point ranges.
"""

from __future__ import annotations

from pathlib import Path

import torch

_CORPUS = """
The movie was great and the acting was good. The plot was bad and the ending was terrible.
It was a simple story about the world. The news was about sports, business, tech and science.
A positive review says the film is great; a negative review says it is bad or terrible.
Yes, the two sentences mean the same thing. No, they do not. Maybe it is true, maybe it is false.
World News: leaders met to talk about the economy. Sports News: the team won the game.
Business News: the company reported profits. Tech News: a new phone was released today.
Science News: researchers found a new species in the ocean. The film had fine music and a slow start.
I liked the food, the service was friendly and the place was clean. The hotel room was dirty.
Question: is the second sentence true? Answer: yes. Sentence one and sentence two are paraphrases.
This article is about the world, sports, business or science. Do they mean the same? Answer: No.
""".strip()

LABEL_WORDS = (
    "great terrible bad good positive negative World Sports Business Tech Science Yes No yes no "
    "Maybe true false It was News world sports business tech science"
).split()


def corpus() -> list[str]:
    lines = _CORPUS.splitlines()
    # repeated label words make BPE merge each into one token, with a leading space too
    words = [f"{w} {w}. It was {w} . ? {w} , {w}" for w in LABEL_WORDS for _ in range(50)]
    return lines * 20 + words


def _byte_level_bpe(bos: str, eos: str, specials: list[str]):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=1200, special_tokens=specials, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False
    )
    tok.train_from_iterator(corpus(), trainer)
    return tok


def _roberta_tokenizer():
    from tokenizers import processors
    from transformers import PreTrainedTokenizerFast

    specials = ["<s>", "<pad>", "</s>", "<unk>", "<mask>"]
    tok = _byte_level_bpe("<s>", "</s>", specials)
    tok.post_processor = processors.RobertaProcessing(("</s>", 2), ("<s>", 0), trim_offsets=False, add_prefix_space=False)
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<s>", eos_token="</s>", sep_token="</s>", cls_token="<s>",
        unk_token="<unk>", pad_token="<pad>", mask_token="<mask>",
    )


def _llama_tokenizer():
    from tokenizers import processors
    from transformers import PreTrainedTokenizerFast

    specials = ["<|endoftext|>", "<s>", "</s>"]
    tok = _byte_level_bpe("<s>", "</s>", specials)
    tok.post_processor = processors.TemplateProcessing(single="<s> $A", pair="<s> $A $B", special_tokens=[("<s>", 1)])
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<s>", eos_token="</s>", pad_token="<|endoftext|>", unk_token="<|endoftext|>"
    )


def _bert_tokenizer():
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    tok = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    tok.normalizer = normalizers.BertNormalizer(lowercase=True)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.decoder = decoders.WordPiece()
    tok.train_from_iterator(corpus(), trainers.WordPieceTrainer(vocab_size=800, special_tokens=specials, show_progress=False))
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B:1 [SEP]:1", special_tokens=[("[CLS]", 2), ("[SEP]", 3)]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, cls_token="[CLS]", sep_token="[SEP]", pad_token="[PAD]", unk_token="[UNK]",
        mask_token="[MASK]",
    )


_SHAPE = dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, intermediate_size=128)
_INIT = 0.2  # HF's default 0.02 makes all label scores nearly equal


def _model(name: str, vocab: int):
    import transformers as tf

    if name == "tiny-roberta":
        cfg = tf.RobertaConfig(vocab_size=vocab, max_position_embeddings=130, type_vocab_size=1, pad_token_id=1,
                               bos_token_id=0, eos_token_id=2, initializer_range=_INIT, **_SHAPE)
        return tf.RobertaForMaskedLM(cfg)
    if name == "tiny-bert":
        cfg = tf.BertConfig(vocab_size=vocab, max_position_embeddings=128, type_vocab_size=2, pad_token_id=0,
                            initializer_range=_INIT, **_SHAPE)
        return tf.BertForMaskedLM(cfg)
    cfg = tf.LlamaConfig(vocab_size=vocab, max_position_embeddings=128, num_key_value_heads=2, head_dim=16,
                         rms_norm_eps=1e-5, tie_word_embeddings=True, hidden_act="silu", bos_token_id=1,
                         eos_token_id=2, pad_token_id=0, initializer_range=_INIT, **_SHAPE)
    return tf.LlamaForCausalLM(cfg)


_TOKENIZERS = {"tiny-roberta": _roberta_tokenizer, "tiny-bert": _bert_tokenizer, "tiny-llama": _llama_tokenizer}


def build_tiny(name: str, out: Path) -> None:
    """Write a tiny model + tokenizer for ``name`` into ``out`` (deterministic)."""
    tokenizer = _TOKENIZERS[name]()
    torch.manual_seed(0)
    model = _model(name, len(tokenizer)).eval()
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
