"""`secptune prepare`: the server's preparation of a model, run ahead of any owner.

The first secure run with RFA otherwise pays it inside the owner's command (SmolLM2: public
text, the feature-map fit, the choice of RFA layers, the activation bounds).  Everything it
makes is cached by the weights' content (secptune.server.feature_fit), so a server that ran
this answers the owner's handshake from the cache; a preparation that is killed resumes at
the layer it was fitting.
"""

from __future__ import annotations

import time

from rfa.config import attention_config
from secptune.checkpoints import load_hf_model, resolve_model
from secptune.server.prepare import ServerModel, prepare_server_model


def prepare(model: str, attention: str = "rfa") -> dict:
    """Prepare ``model`` for ``attention`` (softmax or the product's RFA); a summary of what the
    server will run and how long each stage took (0 s: answered by the cache)."""
    started = time.perf_counter()
    prepared = prepare_server_model(load_hf_model(resolve_model(model)), attention_config(attention))
    return summary(model, prepared, time.perf_counter() - started)


def summary(model: str, prepared: ServerModel, wall_s: float) -> dict:
    arch, attention = prepared.arch, prepared.attention
    rfa_layers = [i for i in range(arch.layers) if attention.uses_rfa(i)]
    groups = [
        {"layer": i, "base": c.base, "wide": {f"{bound:g}": len(channels) for bound, channels in c.wide}}
        for i, c in enumerate(arch.act_channels)
    ]
    return {
        "model": model,
        "layers": arch.layers,
        "attention": attention.as_dict(),
        "rfa_layers": rfa_layers,
        "choice_kl": (prepared.choice or {}).get("kl"),
        "act_bounds": list(arch.act_bounds),
        "act_channel_groups": groups,
        "stages_s": {name: round(seconds, 2) for name, seconds in prepared.timings.items()},
        "wall_s": round(wall_s, 2),
    }


def describe(result: dict) -> str:
    """The summary for a user, a few lines."""
    stages = ", ".join(f"{name} {seconds:.1f} s" for name, seconds in result["stages_s"].items())
    wide = sum(sum(g["wide"].values()) for g in result["act_channel_groups"])
    lines = [
        f"{result['model']}: prepared in {result['wall_s']:.1f} s ({stages})",
        f"attention: {result['attention']['kind']}"
        + (f", RFA in {len(result['rfa_layers'])} of {result['layers']} layers {result['rfa_layers']}"
           f" (KL {result['choice_kl']:.3f} nats/token on public text)" if result["rfa_layers"] and result["choice_kl"]
           is not None else f", RFA in {len(result['rfa_layers'])} of {result['layers']} layers"),
        f"activation bounds per layer: {', '.join(f'{b:g}' for b in result['act_bounds'])}; "
        f"{wide} channels above their layer's base bound",
    ]
    return "\n".join(lines)
