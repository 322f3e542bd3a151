"""The public shape of a model, and the server-side extraction of its weights.

:class:`Arch` is what both parties may know: layer counts, widths, activation,
norm epsilon, rotary settings.  It is built from a Hugging Face config (which
carries no weights), so the data owner can build it without ever loading the
checkpoint.  :func:`extract_weights` runs on the server only and turns an HF
model into the canonical, pre-transposed (``x @ W``) float64 weights that the
one model definition in :mod:`secptune.transformer` consumes.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch

from mpc.approx import ChannelBounds
from secptune.errors import UnsupportedModelError

ENCODER_TYPES = ("roberta", "bert")
DEFAULT_ACT_BOUND = 16.0  # activation range assumed where a model carries no calibration
CAUSAL_TYPES = ("llama",)


@dataclass(frozen=True)
class Arch:
    family: str  # "encoder" (masked LM) or "causal"
    model_type: str
    vocab_size: int
    hidden: int
    layers: int
    heads: int
    kv_heads: int
    head_dim: int
    intermediate: int
    max_positions: int  # usable sequence length
    position_offset: int  # first position id (RoBERTa: padding_idx + 1)
    type_vocab: int
    norm_eps: float
    act: str
    rope_theta: float
    attention_bias: bool
    mlp_bias: bool
    # causal only: fixed tokens (BOS) before every sequence; the server computes
    # their keys/values once in plaintext (they never depend on the owner's input)
    prefix_tokens: tuple[int, ...] = ()
    # |input| bound of each layer's activation (+ the encoder head's, last), measured by
    # the server on public text (secptune.server.calibrate); MPC approximations are fitted to it
    act_bounds: tuple[float, ...] = ()
    # the same per channel where the server measured it (one entry per layer, aligned with
    # act_bounds; its largest bound is act_bounds'): a series per group of channels
    act_channels: tuple[ChannelBounds, ...] = ()

    def act_bound(self, index: int) -> float | ChannelBounds:
        if index < len(self.act_channels):
            return self.act_channels[index]
        return self.act_bounds[index] if index < len(self.act_bounds) else DEFAULT_ACT_BOUND

    def to_dict(self) -> dict:
        return asdict(self)

    @staticmethod
    def from_dict(d: dict) -> "Arch":
        channels = tuple(
            ChannelBounds(float(c["base"]), tuple((float(b), tuple(int(i) for i in idx)) for b, idx in c["wide"]))
            for c in d.get("act_channels", ())
        )
        return Arch(
            **{
                **d,
                "prefix_tokens": tuple(d.get("prefix_tokens", ())),
                "act_bounds": tuple(d.get("act_bounds", ())),
                "act_channels": channels,
            }
        )


def family_of(model_type: str) -> str:
    if model_type in ENCODER_TYPES:
        return "encoder"
    if model_type in CAUSAL_TYPES:
        return "causal"
    raise UnsupportedModelError(
        f"model type {model_type!r} is not supported; secptune runs roberta, bert "
        "(masked LM) and llama (causal LM) checkpoints"
    )


def _rope_theta(config) -> float:
    params = getattr(config, "rope_parameters", None) or {}
    scaling = getattr(config, "rope_scaling", None) or {}
    kind = params.get("rope_type", scaling.get("rope_type", scaling.get("type", "default")))
    if kind not in (None, "default"):
        raise UnsupportedModelError(
            f"rotary scaling {kind!r} is not supported yet; use a checkpoint with default RoPE"
        )
    return float(params.get("rope_theta", getattr(config, "rope_theta", 10000.0)))


def arch_from_config(config) -> Arch:
    """Public architecture description from a transformers config object."""
    family = family_of(config.model_type)
    heads = config.num_attention_heads
    shared = dict(
        family=family,
        model_type=config.model_type,
        vocab_size=config.vocab_size,
        hidden=config.hidden_size,
        layers=config.num_hidden_layers,
        heads=heads,
        intermediate=config.intermediate_size,
        act=config.hidden_act,
    )
    if family == "encoder":
        offset = config.pad_token_id + 1 if config.model_type == "roberta" else 0
        return Arch(
            **shared,
            kv_heads=heads,
            head_dim=config.hidden_size // heads,
            max_positions=config.max_position_embeddings - offset,
            position_offset=offset,
            type_vocab=config.type_vocab_size,
            norm_eps=config.layer_norm_eps,
            rope_theta=0.0,
            attention_bias=True,
            mlp_bias=True,
        )
    return Arch(
        **shared,
        kv_heads=getattr(config, "num_key_value_heads", None) or heads,
        head_dim=getattr(config, "head_dim", None) or config.hidden_size // heads,
        max_positions=config.max_position_embeddings,
        position_offset=0,
        type_vocab=0,
        norm_eps=config.rms_norm_eps,
        rope_theta=_rope_theta(config),
        attention_bias=bool(getattr(config, "attention_bias", False)),
        mlp_bias=bool(getattr(config, "mlp_bias", False)),
        prefix_tokens=() if config.bos_token_id is None else (int(config.bos_token_id),),
    )


def _t(linear) -> torch.Tensor:
    return linear.weight.detach().double().t().contiguous()


def _v(param) -> torch.Tensor:
    return param.detach().double().clone()


def _linear(out: dict, name: str, linear, with_bias: bool) -> None:
    out[f"{name}.w"] = _t(linear)
    if with_bias:
        out[f"{name}.b"] = _v(linear.bias)


def _encoder_weights(model) -> dict[str, torch.Tensor]:
    base = model.base_model
    emb = base.embeddings
    w = {
        "emb.word": _v(emb.word_embeddings.weight),
        "emb.pos": _v(emb.position_embeddings.weight),
        "emb.type": _v(emb.token_type_embeddings.weight),
        "emb.ln.w": _v(emb.LayerNorm.weight),
        "emb.ln.b": _v(emb.LayerNorm.bias),
    }
    for i, layer in enumerate(base.encoder.layer):
        p = f"l{i}."
        att = layer.attention
        _linear(w, p + "q", att.self.query, True)
        _linear(w, p + "k", att.self.key, True)
        _linear(w, p + "v", att.self.value, True)
        _linear(w, p + "o", att.output.dense, True)
        w[p + "ln1.w"], w[p + "ln1.b"] = _v(att.output.LayerNorm.weight), _v(att.output.LayerNorm.bias)
        _linear(w, p + "ff1", layer.intermediate.dense, True)
        _linear(w, p + "ff2", layer.output.dense, True)
        w[p + "ln2.w"], w[p + "ln2.b"] = _v(layer.output.LayerNorm.weight), _v(layer.output.LayerNorm.bias)
    if hasattr(model, "lm_head"):  # RoBERTa
        dense, norm, head = model.lm_head.dense, model.lm_head.layer_norm, model.lm_head
        decoder, bias = head.decoder, head.bias
    else:  # BERT
        pred = model.cls.predictions
        dense, norm, decoder, bias = pred.transform.dense, pred.transform.LayerNorm, pred.decoder, pred.bias
    _linear(w, "head.dense", dense, True)
    w["head.ln.w"], w["head.ln.b"] = _v(norm.weight), _v(norm.bias)
    w["head.out"] = _v(decoder.weight)  # [vocab, hidden]: rows are selected, not multiplied
    w["head.bias"] = _v(bias)
    return w


def _causal_weights(model, arch: Arch) -> dict[str, torch.Tensor]:
    base = model.model
    w = {"emb.word": _v(base.embed_tokens.weight), "final.ln.w": _v(base.norm.weight)}
    for i, layer in enumerate(base.layers):
        p = f"l{i}."
        att, mlp = layer.self_attn, layer.mlp
        w[p + "ln1.w"] = _v(layer.input_layernorm.weight)
        for name in ("q", "k", "v"):
            _linear(w, p + name, getattr(att, f"{name}_proj"), arch.attention_bias)
        _linear(w, p + "o", att.o_proj, arch.attention_bias)
        w[p + "ln2.w"] = _v(layer.post_attention_layernorm.weight)
        _linear(w, p + "gate", mlp.gate_proj, arch.mlp_bias)
        _linear(w, p + "up", mlp.up_proj, arch.mlp_bias)
        _linear(w, p + "down", mlp.down_proj, arch.mlp_bias)
    w["head.out"] = _v(model.lm_head.weight)
    return w


def _fold(w: dict, norm: str, linears: list[str], keep: bool) -> None:
    """Fold norm ``norm``'s scale γ (and shift β) into the linears that read its output:
    (x̂·γ + β)·W + b = x̂·(γ ⊙ rows of W) + (β·W + b).  The model then feeds them the
    normalised x̂ itself, which secure runs open once for the products and the residual
    (if ``keep``: post-norm models add x̂·γ + β to the residual stream) alike."""
    gamma, beta = w[f"{norm}.w"], w.get(f"{norm}.b")
    for name in linears:
        weight = w[f"{name}.w"]
        if beta is not None:
            w[f"{name}.b"] = beta @ weight + w.get(f"{name}.b", torch.zeros(weight.size(1), dtype=weight.dtype))
        w[f"{name}.w"] = gamma.unsqueeze(1) * weight
    if not keep:
        del w[f"{norm}.w"]
        w.pop(f"{norm}.b", None)


def _fold_head(w: dict, norm: str) -> None:
    """The same for the label-word rows ``head.out`` [vocab, H] that read the last norm."""
    gamma, beta = w.pop(f"{norm}.w"), w.pop(f"{norm}.b", None)
    if beta is not None:
        w["head.bias"] = w["head.out"] @ beta + w.get("head.bias", 0.0)
    w["head.out"] = w["head.out"] * gamma


def fold_norms(w: dict, arch: Arch) -> dict:
    """Every norm's γ/β moved into the linears after it (see :func:`_fold`)."""
    w = dict(w)
    if arch.family == "encoder":
        _fold(w, "emb.ln", ["l0.q", "l0.k", "l0.v"], keep=True)
        for i in range(arch.layers):
            _fold(w, f"l{i}.ln1", [f"l{i}.ff1"], keep=True)
            last = i == arch.layers - 1
            _fold(w, f"l{i}.ln2", ["head.dense"] if last else [f"l{i + 1}.{n}" for n in "qkv"], keep=not last)
        _fold_head(w, "head.ln")
    else:
        for i in range(arch.layers):
            _fold(w, f"l{i}.ln1", [f"l{i}.q", f"l{i}.k", f"l{i}.v"], keep=False)
            _fold(w, f"l{i}.ln2", [f"l{i}.gate", f"l{i}.up"], keep=False)
        _fold_head(w, "final.ln")
    return w


@torch.no_grad()
def extract_weights(model, arch: Arch) -> dict[str, torch.Tensor]:
    """Canonical float64 weights of an HF model (server side only), norms folded."""
    if arch.family == "encoder":
        return fold_norms(_encoder_weights(model), arch)
    return fold_norms(_causal_weights(model, arch), arch)
