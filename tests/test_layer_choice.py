"""The server's public text, its choice of RFA layers, and how the owner learns that choice."""

import dataclasses

import pytest
import torch

from rfa.config import DEFAULT_RFA, AttentionConfig
import secptune.server.feature_fit as feature_fit
import secptune.server.layer_choice as layer_choice
from secptune.arch import arch_from_config, extract_weights
from secptune.checkpoints import cache_dir, load_hf_model, resolve_model
from secptune.secure import _same_attention
from secptune.server.feature_fit import weights_fingerprint
from secptune.server.prepare import prepare_server_model
from secptune.server.public_text import CHECK, SAMPLES, public_text

from conftest import SERVER_CHOICE


@pytest.fixture(scope="module")
def llama():
    return load_hf_model(resolve_model("tiny-llama"))


def test_public_text_is_the_models_own_seeded_samples(llama, tmp_path, monkeypatch):
    monkeypatch.setenv("SECPTUNE_CACHE", str(tmp_path))
    arch = arch_from_config(llama.config)
    fingerprint = weights_fingerprint(extract_weights(llama, arch))
    first = public_text(llama, arch, fingerprint)
    assert len(first.check) == CHECK and len(first.fit) == 8 + SAMPLES - CHECK
    lengths = {len(s) for s in first.fit[8:] + first.check}
    assert len(lengths) == 1 and lengths.pop() >= 32  # equal lengths: the fit runs them as batches
    assert not set(map(tuple, first.check)) & set(map(tuple, first.fit))  # held out
    assert len({tuple(s) for s in first.check}) == CHECK  # sampled, not one sequence repeated
    (cached,) = (tmp_path / "public-text").iterdir()
    # a second generation: the shared cache's copy (made by an earlier process, or now; keyed by the
    # text's version) is seeded, hence the same text — and a warm cache spares this test one sampling
    monkeypatch.delenv("SECPTUNE_CACHE")
    again = public_text(llama, arch, fingerprint)
    assert again == first


def test_encoders_use_the_corpus_only():
    model = load_hf_model(resolve_model("tiny-roberta"))
    text = public_text(model, arch_from_config(model.config), "unused")
    assert text.fit and text.check and len(text.fit) == 8


def test_server_resolves_its_layer_choice(llama):
    server = prepare_server_model(llama, SERVER_CHOICE)
    weights, resolved, record = server.weights, server.attention, server.choice
    assert resolved.auto_kl is None and resolved.features == "fitted"
    assert record["kl"] <= SERVER_CHOICE.auto_kl and record["budget"] == SERVER_CHOICE.auto_kl
    rfa = [i for i in range(llama.config.num_hidden_layers) if resolved.uses_rfa(i)]
    assert rfa == record["rfa_layers"] and 0 < len(rfa) < llama.config.num_hidden_layers  # a hybrid
    assert {int(n.split(".")[0][1:]) for n in weights if ".rfa." in n} == set(rfa)  # maps of RFA layers only
    # the ranking decides: the layers chosen are the least damaging ones
    assert rfa == sorted(record["order"][: len(rfa)])
    # budgets at the extremes: none and every layer
    none = prepare_server_model(llama, dataclasses.replace(DEFAULT_RFA, auto_kl=0.0)).attention
    every = prepare_server_model(llama, dataclasses.replace(DEFAULT_RFA, auto_kl=1e9)).attention
    assert none.softmax_layers == tuple(range(llama.config.num_hidden_layers)) and every.softmax_layers == ()


def _cache_without_choices(llama, tmp_path, monkeypatch):
    """A cache holding the shared cache's fits and public text but no choices or bounds
    (a fresh fit would cost minutes and is not what these tests are about)."""
    import shutil

    prepare_server_model(llama, SERVER_CHOICE)  # fits the maps into the shared cache, if not there yet
    shutil.copytree(cache_dir() / "public-text", tmp_path / "public-text")
    (tmp_path / "rfa-fits").mkdir()
    for fit in (cache_dir() / "rfa-fits").glob("*.pt"):
        shutil.copy(fit, tmp_path / "rfa-fits")
    monkeypatch.setenv("SECPTUNE_CACHE", str(tmp_path))


def test_the_choice_is_made_once_and_a_new_budget_reuses_the_per_layer_damage(llama, tmp_path, monkeypatch):
    """Damage costs one pass per layer (SmolLM2: 15 min on 2 cores) and does not depend on the
    budget; the hybrid's activation bounds cost a pass over all public text."""
    _cache_without_choices(llama, tmp_path, monkeypatch)
    calls, bounds = [], []
    real, real_bounds = layer_choice._log_probs, feature_fit.with_activation_bounds
    real_from = layer_choice._log_probs_from
    monkeypatch.setattr(layer_choice, "_log_probs", lambda *a: calls.append(1) or real(*a))
    monkeypatch.setattr(layer_choice, "_log_probs_from", lambda *a: calls.append(1) or real_from(*a))
    monkeypatch.setattr(feature_fit, "with_activation_bounds", lambda *a, **k: bounds.append(1) or real_bounds(*a, **k))
    first = prepare_server_model(llama, SERVER_CHOICE)
    layers, tries = llama.config.num_hidden_layers, len(first.choice["tried"])
    assert len(calls) == 1 + layers + tries  # reference, one pass per layer, the bisection
    assert len(bounds) == 1  # the hybrid on the server's public text
    calls.clear()
    again = prepare_server_model(llama, SERVER_CHOICE)
    assert not calls and len(bounds) == 1 and (again.arch, again.attention) == (first.arch, first.attention)
    record = prepare_server_model(llama, dataclasses.replace(SERVER_CHOICE, auto_kl=SERVER_CHOICE.auto_kl / 3)).choice
    assert len(calls) == 1 + len(record["tried"]) and record["damage"] == first.choice["damage"]


def test_each_layers_damage_starts_from_the_shared_run_and_equals_a_whole_pass(llama):
    """The per-layer damage of a causal model reuses the all-softmax run's hidden states up to
    the RFA layer; it must equal the KL of a whole pass with that one RFA layer (float32)."""
    from mpc import approx
    from rfa.fit import FitOptions
    from secptune.nonlinear import ExactNonlinear, Nonlinear

    server = prepare_server_model(llama, SERVER_CHOICE)  # fits every layer's maps into the cache
    arch, weights = server.arch, {name: t for name, t in server.weights.items() if ".rfa." not in name}
    fingerprint = weights_fingerprint(weights)
    stamp = [SERVER_CHOICE.num_features, SERVER_CHOICE.seed, *dataclasses.astuple(FitOptions())]
    weights.update(torch.load(feature_fit._cache_path(fingerprint, stamp, ".pt"), weights_only=True))
    text = public_text(llama, arch, fingerprint)
    damage = layer_choice.choose_layers(arch, weights, text.check, SERVER_CHOICE)["damage"]
    whole = []
    base = dataclasses.replace(SERVER_CHOICE, auto_kl=None)
    f32 = {name: t.float() if t.is_floating_point() else t for name, t in weights.items()}
    reference = layer_choice._log_probs(arch, f32, text.check, ExactNonlinear())
    for i in range(arch.layers):
        nl = Nonlinear(cfg=approx.ApproxConfig(), attention=layer_choice._hybrid(base, {i}, arch.layers))
        whole.append(layer_choice._kl(reference, layer_choice._log_probs(arch, f32, text.check, nl)))
    assert damage == pytest.approx(whole, rel=1e-3, abs=1e-6)
    # control: the damage is not the same number for every layer, so the comparison can fail
    assert max(whole) > 2 * min(whole) + 1e-6


def test_an_unresolved_choice_cannot_run():
    with pytest.raises(ValueError, match="has not chosen"):
        DEFAULT_RFA.uses_rfa(0)
    with pytest.raises(ValueError, match="auto_kl"):
        AttentionConfig(kind="rfa", features="positive", auto_kl=0.1)


def test_the_server_may_only_resolve_what_it_was_asked():
    asked = DEFAULT_RFA.as_dict()
    resolved = dataclasses.replace(DEFAULT_RFA, auto_kl=None, softmax_layers=(0,)).as_dict()
    assert _same_attention(asked, resolved)
    assert not _same_attention(asked, {**resolved, "num_features": 8})
    fixed = AttentionConfig(kind="rfa", features="fitted", softmax_layers=(1,)).as_dict()
    assert _same_attention(fixed, fixed) and not _same_attention(fixed, {**fixed, "softmax_layers": (0, 1)})


def test_fitting_brings_rfa_closer_to_softmax():
    """Sharp attention (logits up to ~10), which plain positive features estimate badly."""
    from mpc import approx
    from rfa.fit import FitOptions, attention_error, fit_layer
    from rfa.random_features import feature_matrix

    g = torch.Generator().manual_seed(0)

    def sample(batch):
        q, k, v = (torch.randn(batch, 2, 12, 8, generator=g, dtype=torch.float64) for _ in range(3))
        return {"q": q * 0.6, "k": k * 1.6, "v": v, "penalty": None}

    train, held_out = [sample(32)], [sample(8)]
    acfg, cfg = approx.ApproxConfig(), AttentionConfig(features="fitted", num_features=16)
    init = (feature_matrix(8, 16, 0) / 8**0.25).unsqueeze(0).repeat(2, 1, 1)
    start = {"q": init, "k": init, "bq": torch.full((2, 1, 16), -1.0), "bk": torch.full((2, 1, 16), -1.0)}
    fitted = fit_layer(train, 16, 0, acfg, FitOptions(steps=150, sequences=0))  # every sequence, every step
    for data, gain in ((train, 0.75), (held_out, 0.95)):  # measured: 0.81 -> 0.56 and 0.84 -> 0.77
        before, after = attention_error(data, start, acfg, cfg), attention_error(data, fitted, acfg, cfg)
        assert after < gain * before, (before, after)


def test_a_killed_fit_resumes_at_the_layer_it_was_fitting(llama, tmp_path, monkeypatch):
    """Each layer's maps are saved as they are fitted: after a kill in layer 1 the next
    fit fits layer 1 only, and the result is what one uninterrupted fit gives (a short fit
    on the corpus: the resumption, not the fit, is under test)."""
    from rfa.fit import FitOptions
    from secptune.server.public_text import public_sequences

    arch = arch_from_config(llama.config)
    weights = extract_weights(llama, arch)
    sequences = public_sequences(llama, arch.vocab_size, count=2)
    attention, opts = AttentionConfig(kind="rfa", features="fitted", num_features=8), FitOptions(steps=2)
    fitted = []
    real = feature_fit.fit_layer

    def fit_layer(samples, num_features, seed, acfg, options):
        layer = seed % 1000
        if layer == 1 and "killed" not in fitted:
            fitted.append("killed")
            raise KeyboardInterrupt  # the server is stopped while it fits layer 1
        fitted.append(layer)
        return real(samples, num_features, seed, acfg, options)

    monkeypatch.setattr(feature_fit, "fit_layer", fit_layer)
    partial = tmp_path / "fit.layers"
    with pytest.raises(KeyboardInterrupt):  # layers run side by side: layer 0 finishes, layer 1 is lost
        feature_fit._fit_all(arch, weights, sequences, attention, opts, partial)
    assert sorted(fitted, key=str) == [0, "killed"] and sorted(p.name for p in partial.iterdir()) == ["l0.pt"]
    resumed = feature_fit._fit_all(arch, weights, sequences, attention, opts, partial)
    assert fitted[2:] == [1]  # layer 0 came from its saved file
    straight = feature_fit._fit_all(arch, weights, sequences, attention, opts, tmp_path / "other.layers")
    assert sorted(fitted[3:]) == [0, 1] and straight.keys() == resumed.keys()
    for name, tensor in straight.items():
        assert torch.equal(tensor, resumed[name]), name


def test_prepare_command_reports_what_the_server_will_run(capsys):
    import json

    from secptune.cli import main

    assert main(["prepare", "--model", "tiny-llama", "--attention", "softmax", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["attention"]["kind"] == "softmax" and out["rfa_layers"] == [] and out["layers"] == 2
    assert len(out["act_bounds"]) == 2 and [g["layer"] for g in out["act_channel_groups"]] == [0, 1]
    assert out["stages_s"]["weights_and_bounds"] >= 0 and out["wall_s"] > 0
    assert main(["party", "--role", "dealer", "--prepare", "--peers", "a:1,b:2,c:3", "--no-tls"]) == 2
    assert "only the server prepares" in capsys.readouterr().err
