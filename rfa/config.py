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
    """

    kind: str = "rfa"
    features: str = "positive"
    num_features: int = 64
    scale: float = 1.0
    seed: int = 0
    softmax_layers: tuple[int, ...] = ()

    def __post_init__(self):
        if self.kind not in KINDS:
            raise ValueError(f"attention must be one of {', '.join(KINDS)}, not {self.kind!r}")
        if self.features not in FEATURE_MAPS:
            raise ValueError(f"RFA feature map must be one of {', '.join(FEATURE_MAPS)}, not {self.features!r}")
        if self.num_features < 1:
            raise ValueError(f"RFA needs at least one feature, got {self.num_features}")

    def uses_rfa(self, layer: int) -> bool:
        return self.kind == "rfa" and layer not in self.softmax_layers

    def as_dict(self) -> dict:
        return asdict(self)

    @staticmethod
    def from_dict(d: dict) -> "AttentionConfig":
        return AttentionConfig(**{k: tuple(v) if isinstance(v, list) else v for k, v in d.items()})


SOFTMAX = AttentionConfig(kind="softmax")

# The product's RFA default: chosen from the measurements in reports/rfa_fidelity.json.
DEFAULT_RFA = AttentionConfig(kind="rfa", features="positive", num_features=64)


def attention_config(kind: str | AttentionConfig) -> AttentionConfig:
    """The configuration behind a command-line ``--attention`` choice."""
    if isinstance(kind, AttentionConfig):
        return kind
    if kind == "softmax":
        return SOFTMAX
    if kind == "rfa":
        return DEFAULT_RFA
    raise ValueError(f"--attention must be one of {', '.join(KINDS)}, not {kind!r}")
