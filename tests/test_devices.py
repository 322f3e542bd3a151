"""--device: clear refusals everywhere; on a machine with a CUDA GPU, the GPU gives the CPU's scores."""

import pytest
import torch

from conftest import prepared_inputs
from mpc import approx
from rfa.config import AttentionConfig
from secptune.devices import resolve_device
from secptune.errors import InputError
from secptune.hf_session import HFSession
from secptune.plain import PlainSession
from secptune.tune import TuneConfig
from secptune.tune_job import run_tune

GPU = torch.cuda.is_available()
needs_gpu = pytest.mark.skipif(not GPU, reason="needs a CUDA GPU (run on a GPU machine)")


def test_unknown_device_is_refused():
    with pytest.raises(InputError, match="--device must be one of cpu, cuda"):
        resolve_device("tpu")


@pytest.mark.skipif(GPU, reason="this machine has a GPU")
def test_cuda_without_a_gpu_says_so():
    with pytest.raises(InputError, match="sees no CUDA GPU; use --device cpu"):
        resolve_device("cuda")


def test_secure_tuning_on_cuda_is_refused_before_any_work(tmp_path):
    cfg = TuneConfig(task="sst2", model="tiny-llama", mode="secure", device="cuda", data=str(tmp_path / "none"))
    with pytest.raises(InputError, match="--device cuda runs plain mode only"):
        run_tune(cfg, str(tmp_path / "out"))
    assert not (tmp_path / "out").exists()


def _prompts(batch, count=3):
    g = torch.Generator().manual_seed(0)
    return torch.randn(count, batch.prompt.shape[1], batch.prompt.shape[-1], generator=g, dtype=torch.float64)


@needs_gpu
def test_hf_session_on_cuda_gives_the_cpu_scores(tiny_model):
    opts, prep = prepared_inputs(tiny_model, prompt_len=3, batch_size=4)
    batch = prep.batches[0]
    cpu = HFSession(prep.model_dir, prep.verbalizer)
    expected = cpu.scores(cpu.load_texts(batch), _prompts(batch))
    gpu = HFSession(prep.model_dir, prep.verbalizer, device="cuda")
    got = gpu.scores(gpu.load_texts(batch), _prompts(batch))
    assert got.device.type == "cpu"
    assert (got - expected).abs().max() <= 1e-4 * expected.abs().max()


@needs_gpu
@pytest.mark.parametrize("exact,attention", [
    (True, AttentionConfig(kind="softmax")),
    (False, AttentionConfig(kind="softmax")),
    (False, AttentionConfig(kind="rfa", features="positive", num_features=16)),
])
def test_plain_session_on_cuda_gives_the_cpu_scores(tiny_model, exact, attention):
    """float64 on both: the same computation up to summation order."""
    opts, prep = prepared_inputs(tiny_model, prompt_len=3, batch_size=4)
    batch = prep.batches[0]
    args = (prep.model_dir, prep.verbalizer, exact, approx.ApproxConfig(), attention)
    cpu = PlainSession(*args)
    expected = cpu.scores(cpu.load_texts(batch), _prompts(batch))
    gpu = PlainSession(*args, device="cuda")
    got = gpu.scores(gpu.load_texts(batch), _prompts(batch))
    assert (got - expected).abs().max() <= 1e-9 * expected.abs().max()
    assert gpu.range_warnings == cpu.range_warnings
