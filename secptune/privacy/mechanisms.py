"""Noise mechanisms of the split-learning comparison mode (``--mode privtune``).

Both act on the token representations the owner's bottom model sends to the server,
one H-dimensional row per token, with randomness from :class:`NoiseSource` (AES-CTR).

* :func:`dchi_noise` — isotropic dχ-privacy (metric local DP, Chatzikokolakis et al.
  2013, as used by Feyisetan et al. 2020 and by PrivTune, arXiv 2512.08809, Definition 1):
  density ∝ exp(−η‖z‖), i.e. a direction uniform on the sphere times a norm drawn from
  Gamma(shape=H, scale=1/η); E‖z‖ = H/η.  Two inputs at distance d are distinguished
  with probability at most e^{ηd}/(1 + e^{ηd}).
* :class:`PrivTuneMechanism` — PrivTune's token-importance-aware crafted noise
  (arXiv 2512.08809, §IV "On-device perturbation"): the dχ noise's *mean* is moved
  to the solution of a defence–utility problem that makes each token resemble its
  n-hop indirect neighbours (OPT-1 → OPT-2 → OPT-3, solved there by PGD), and its
  scale shrinks with the token's importance (TF-IDF-like and entropy-weighted cues).

Reading of the paper (its mechanism section was not available in full to this
implementation; what is built follows the abstract, Fig. 1 and the summary of §IV,
and every free choice is a public parameter recorded with the view):

* n-hop indirect neighbours: tokens at graph distance exactly n in the k-nearest-
  neighbour graph (cosine) of the model's public input-embedding table
  (:mod:`secptune.privacy.neighbours`); the target of a token is the mean embedding
  of that set, pushed through the same bottom model (so at split layer K > 0 the
  target is the representation of the text with every token replaced by its target).
* OPT-3 (per token, representation h, target t, importance w ∈ [0, 1]):
  min_δ ‖h + δ − t‖² + λ(1 + w)‖δ‖²  s.t. ‖δ‖ ≤ ρ·‖t − h‖.  It is a convex quadratic
  over a ball, so PGD converges to δ* = min(1/(1 + λ(1 + w)), ρ)·(t − h), which is
  computed directly (same fixed point, no step size to tune).
* Importance-scaled noise: z = δ* + s·ζ with ζ ~ dχ(η) and s = 1 − β·w: important
  tokens get less noise (the paper's "minimise distortion"); each token's effective
  guarantee is dχ with η/s ≥ η.  η = inf: no random part (δ* alone).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch

from secptune.errors import InputError
from secptune.privacy.sampling import NoiseSource

NOISES = ("dchi", "privtune")


def parse_eta(value) -> float:
    """``--eta``: a positive number or ``inf`` (no random noise)."""
    try:
        eta = float(value)
    except (TypeError, ValueError):
        raise InputError(f"--eta must be a positive number or inf, not {value!r}") from None
    if not eta > 0:
        raise InputError(f"--eta must be positive (larger = less noise; inf = none), not {value!r}")
    return eta


def dchi_noise(source: NoiseSource, count: int, hidden: int, eta: float) -> torch.Tensor:
    """``count`` draws [count, hidden] of isotropic dχ noise, density ∝ exp(−η‖z‖)."""
    if math.isinf(eta):
        return torch.zeros(count, hidden, dtype=torch.float64)
    direction = source.normal((count, hidden))
    direction = direction / direction.norm(dim=-1, keepdim=True)
    return direction * (source.gamma(hidden, count) / eta).unsqueeze(-1)


def distinguish_bound(eta: float, distance: float) -> float:
    """dχ's bound on a distinguisher's success between two inputs at ``distance``:
    e^{ηd}/(1 + e^{ηd}) (the game's theoretical line)."""
    if distance == 0:
        return 0.5
    x = eta * distance
    return 1.0 if x > 700 else math.exp(x) / (1.0 + math.exp(x))


@dataclass(frozen=True)
class MechanismParams:
    """The public parameters of a mechanism: the server (and every attack) knows them."""

    noise: str = "dchi"
    eta: float = math.inf
    hops: int = 2  # privtune: n of the n-hop indirect neighbours
    knn: int = 5  # privtune: neighbours per token in the graph
    lam: float = 0.25  # privtune: utility weight λ of OPT-3
    radius: float = 1.0  # privtune: ρ, the bound on ‖δ‖ relative to ‖t − h‖
    beta: float = 0.5  # privtune: how far importance shrinks the noise scale

    def __post_init__(self):
        if self.noise not in NOISES:
            raise InputError(f"--noise must be one of {', '.join(NOISES)}, not {self.noise!r}")

    def as_dict(self) -> dict:
        d = asdict(self)
        d["eta"] = "inf" if math.isinf(self.eta) else self.eta
        return d

    @staticmethod
    def from_dict(d: dict) -> "MechanismParams":
        return MechanismParams(**{**d, "eta": parse_eta(d["eta"])})


def crafted_mean(h: torch.Tensor, target: torch.Tensor, importance: torch.Tensor, p: MechanismParams) -> torch.Tensor:
    """δ* of OPT-3 per row (see the module docstring): the step towards the target,
    shortened by the utility weight (more for important tokens) and capped at ρ."""
    step = torch.clamp(1.0 / (1.0 + p.lam * (1.0 + importance)), max=p.radius)
    return step.unsqueeze(-1) * (target - h)


def perturb(h: torch.Tensor, p: MechanismParams, source: NoiseSource, target: torch.Tensor | None = None,
            importance: torch.Tensor | None = None) -> torch.Tensor:
    """The released rows for clean rows ``h`` [..., H]: dχ noise, or PrivTune's crafted
    mean plus importance-scaled dχ noise (``target``/``importance`` of the same rows)."""
    shape, H = h.shape, h.shape[-1]
    flat = h.reshape(-1, H).double()
    noise = dchi_noise(source, flat.shape[0], H, p.eta)
    if p.noise == "dchi":
        return (flat + noise).reshape(shape).to(h.dtype)
    if target is None or importance is None:
        raise ValueError("the privtune mechanism needs each row's target and importance")
    w = importance.reshape(-1).double()
    delta = crafted_mean(flat, target.reshape(-1, H).double(), w, p)
    scale = (1.0 - p.beta * w).unsqueeze(-1)
    return (flat + delta + scale * noise).reshape(shape).to(h.dtype)
