"""The tiny built-in models: small random models built from configs with a fixed seed.

They let every command run, and every secure-vs-plain test compare, in seconds without a
model hub: tokenizers are trained offline on :mod:`secptune.tiny_corpus`; weights are random
but deliberately non-trivial (norm scales and biases jittered, so a wrong path shows).
:mod:`secptune.checkpoints` builds them into the model cache on first use.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from secptune.tiny_corpus import VERBALIZER_WORDS, corpus


# -- tiny models: tokenizers ---------------------------------------------------

_BPE_VOCAB = 1024
_WORDPIECE_BASE_VOCAB = 640  # BPE pieces; the WordPiece vocab holds each as word start and as ##piece


def _trained_byte_bpe(specials: list[str]):
    """Byte-level BPE trained on the tiny corpus (deterministic: fixed alphabet order)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers


    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=_BPE_VOCAB, special_tokens=specials, show_progress=False,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tok.train_from_iterator(corpus(), trainer)
    return tok


def _vocab_and_merges(tok) -> tuple[dict[str, int], list[tuple[str, str]]]:
    model = json.loads(tok.to_str())["model"]
    merges = [tuple(m.split(" ")) if isinstance(m, str) else tuple(m) for m in model["merges"]]
    return dict(model["vocab"]), merges


def _roberta_tokenizer():
    """RoBERTa-style: byte-level BPE, <s> A </s> (pairs: <s> A </s></s> B </s>)."""
    from transformers import RobertaTokenizer

    vocab, merges = _vocab_and_merges(_trained_byte_bpe(["<s>", "<pad>", "</s>", "<unk>", "<mask>"]))
    return RobertaTokenizer(vocab=vocab, merges=merges)


def _llama_tokenizer():
    """Byte-level BPE that puts BOS <s> first (like Llama); EOS </s> is never added."""
    from tokenizers import processors
    from transformers import TokenizersBackend

    tok = _trained_byte_bpe(["<unk>", "<s>", "</s>"])
    tok.post_processor = processors.TemplateProcessing(
        single="<s> $A", pair="<s> $A $B", special_tokens=[("<s>", tok.token_to_id("<s>"))]
    )
    return TokenizersBackend(
        tokenizer_object=tok, bos_token="<s>", eos_token="</s>", unk_token="<unk>", pad_token="<unk>"
    )


def _bert_tokenizer():
    """BERT-style lowercase WordPiece: [CLS] A [SEP] (pairs: token_type_ids 0/1).

    The tokenizers WordPiece trainer is not deterministic (its ``##`` alphabet is
    numbered in hash order), so a BPE is trained on the BERT-normalised text and
    each of its pieces enters the vocab twice: as a word start and as ``##piece``.
    """
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, trainers
    from transformers import BertTokenizer


    bpe = Tokenizer(models.BPE())
    bpe.normalizer = normalizers.BertNormalizer(lowercase=True)
    bpe.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    bpe.train_from_iterator(corpus(), trainers.BpeTrainer(vocab_size=_WORDPIECE_BASE_VOCAB, show_progress=False))
    pieces = sorted(bpe.get_vocab().items(), key=lambda kv: kv[1])
    words = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + [p for p, _ in pieces] + [f"##{p}" for p, _ in pieces]
    return BertTokenizer(vocab={w: i for i, w in enumerate(words)}, do_lower_case=True)


_TOKENIZERS = {"tiny-roberta": _roberta_tokenizer, "tiny-bert": _bert_tokenizer, "tiny-llama": _llama_tokenizer}


def _check_verbalizer_words(name: str, tokenizer) -> None:
    """Guard the corpus: every verbalizer word must be one token (else tests fail obscurely)."""
    forms = VERBALIZER_WORDS if name == "tiny-bert" else [f for w in VERBALIZER_WORDS for f in (w, " " + w)]
    split = [f for f in forms if len(tokenizer.encode(f, add_special_tokens=False)) != 1]
    if split:
        raise RuntimeError(f"{name}: tokenizer splits {split}; extend secptune/tiny_corpus.py")


# -- tiny models: weights ------------------------------------------------------

_SHAPE = dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, intermediate_size=128)
_INIT = 0.2  # HF's default 0.02 makes all label scores nearly equal
_JITTER = 0.1  # norm weights 1 ± this, biases ± this: a wrong bias/scale path then shows
# Pre-norm (Llama) residual streams grow by every block's output; halving the output
# projections keeps hidden values under ~10 instead of ~18 (fixed-point headroom).
_RESIDUAL_OUT_SCALE = 0.5


def _tiny_model(name: str, tokenizer):
    import transformers as tf

    vocab = len(tokenizer)
    if name == "tiny-roberta":
        cfg = tf.RobertaConfig(
            vocab_size=vocab, max_position_embeddings=130, type_vocab_size=1, pad_token_id=1,
            bos_token_id=0, eos_token_id=2, initializer_range=_INIT, **_SHAPE,
        )
        return tf.RobertaForMaskedLM(cfg)
    if name == "tiny-bert":
        cfg = tf.BertConfig(
            vocab_size=vocab, max_position_embeddings=128, type_vocab_size=2, pad_token_id=0,
            initializer_range=_INIT, **_SHAPE,
        )
        return tf.BertForMaskedLM(cfg)
    cfg = tf.LlamaConfig(
        vocab_size=vocab, max_position_embeddings=128, num_key_value_heads=2, head_dim=16,
        rope_theta=10000.0, rms_norm_eps=1e-5, tie_word_embeddings=True, hidden_act="silu",
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id, initializer_range=_INIT, **_SHAPE,
    )
    return tf.LlamaForCausalLM(cfg)


@torch.no_grad()
def _jitter_norms_and_biases(model) -> None:
    """Non-trivial norm scales and biases, so secure-vs-plain tests exercise them."""
    for module in model.modules():
        is_norm = "norm" in type(module).__name__.lower()
        for pname, param in module.named_parameters(recurse=False):
            if is_norm and pname == "weight":
                param.add_(torch.randn_like(param) * _JITTER)
            elif pname == "bias":
                param.copy_(torch.randn_like(param) * _JITTER)


@torch.no_grad()
def _shrink_residual_outputs(model) -> None:
    """Scale the projections that write into a pre-norm residual stream (Llama only)."""
    for name, param in model.named_parameters():
        if name.endswith(("self_attn.o_proj.weight", "mlp.down_proj.weight")):
            param.mul_(_RESIDUAL_OUT_SCALE)


def build_tiny(name: str, out: Path) -> None:
    """Write a tiny random model + tokenizer for ``name`` into ``out`` (deterministic)."""
    tokenizer = _TOKENIZERS[name]()
    _check_verbalizer_words(name, tokenizer)
    with torch.random.fork_rng(devices=[]):  # seed locally: leave the caller's RNG alone
        torch.manual_seed(0)
        model = _tiny_model(name, tokenizer)
        _jitter_norms_and_biases(model)
        _shrink_residual_outputs(model)
    model.eval().save_pretrained(out)
    tokenizer.save_pretrained(out)
