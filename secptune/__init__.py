"""secptune: privacy-preserving prompt tuning with a secure forward pass."""

__version__ = "0.1.0"
