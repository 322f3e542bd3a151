"""Which attention a model runs: exact-form softmax or random-feature attention (RFA)."""

from __future__ import annotations

from dataclasses import asdict, dataclass

KINDS = ("softmax", "rfa")
FEATURE_MAPS = ("positive", "fourier", "fitted")


@dataclass(frozen=True)
class AttentionConfig:
    """Attention settings; everything here is public to both parties.

    kind:            "rfa" or "softmax" (the MPC-friendly softmax of mpc.approx).
    features:        RFA feature map: "positive" (Performer, exp), "fourier" (sin/cos)
                     or "fitted" (exp of a map the server fits to its model, rfa.fit).
    num_features:    r, the number of random features per head.
    scale:           multiplies q and k before the feature map (1.0: the model's own).
    seed:            seed of the server's feature matrices (fixed per model).
    softmax_layers:  layers that keep softmax attention (a hybrid), by index.
    auto_kl:         fitted maps only: the server chooses the hybrid itself — RFA in as many
                     layers as keep its model within this KL (nats per token) of exact
                     softmax on public text (secptune.server.feature_fit); the session then runs
                     the resolved config the server returns.  None: softmax_layers as given.
    """

    kind: str = "rfa"
    features: str = "positive"
    num_features: int = 64
    scale: float = 1.0
    seed: int = 0
    softmax_layers: tuple[int, ...] = ()
    auto_kl: float | None = None

    def __post_init__(self):
        if self.kind not in KINDS:
            raise ValueError(f"attention must be one of {', '.join(KINDS)}, not {self.kind!r}")
        if self.features not in FEATURE_MAPS:
            raise ValueError(f"RFA feature map must be one of {', '.join(FEATURE_MAPS)}, not {self.features!r}")
        if self.num_features < 1:
            raise ValueError(f"RFA needs at least one feature, got {self.num_features}")
        if self.auto_kl is not None and (self.kind != "rfa" or self.features != "fitted" or self.auto_kl < 0):
            raise ValueError(f"auto_kl (the server's choice of RFA layers) needs fitted RFA and a KL >= 0, not {self}")

    def uses_rfa(self, layer: int) -> bool:
        if self.auto_kl is not None:
            raise ValueError("the server has not chosen this config's RFA layers yet (auto_kl): use the one it returns")
        return self.kind == "rfa" and layer not in self.softmax_layers

    def as_dict(self) -> dict:
        return asdict(self)

    @staticmethod
    def from_dict(d: dict) -> "AttentionConfig":
        return AttentionConfig(**{k: tuple(v) if isinstance(v, list) else v for k, v in d.items()})


SOFTMAX = AttentionConfig(kind="softmax")

# The product's RFA default: feature maps fitted to the server's model, in the layers where
# they cost the least accuracy, as many as keep it within a KL of 0.03 nats per token of exact
# softmax (SmolLM2: 4 of 30 layers).  0.11 (11 layers) was chosen on zero-shot validation accuracy
# (research/rfa_budget.py), which it kept, but it erased a tuned prompt's gain: an SST-2 prompt
# tuned on the exact model lost 8.4 points under those 11 layers, 0.6 under the 4 of budget 0.03
# (research/rfa_prompt_transfer.py, reports/rfa_accuracy/prompt_transfer.json; issue 26).
DEFAULT_RFA = AttentionConfig(kind="rfa", features="fitted", num_features=64, auto_kl=0.03)


def attention_config(kind: str | AttentionConfig) -> AttentionConfig:
    """The configuration behind a command-line ``--attention`` choice."""
    if isinstance(kind, AttentionConfig):
        return kind
    if kind == "softmax":
        return SOFTMAX
    if kind == "rfa":
        return DEFAULT_RFA
    raise ValueError(f"--attention must be one of {', '.join(KINDS)}, not {kind!r}")
