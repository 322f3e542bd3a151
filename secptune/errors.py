"""User-facing errors.

Every failure a user can cause or fix (bad checkpoint, bad template, a peer that
died) is a :class:`SecptuneError`.  The CLI prints its message on one line and
exits with status 2 — no traceback — so each message must say what to do.
"""


class SecptuneError(Exception):
    """Base class: an error whose message is meant for the user."""


class CheckpointError(SecptuneError):
    """A model name or directory cannot be loaded."""


class UnsupportedModelError(SecptuneError):
    """The checkpoint's architecture is not one secptune can run."""


class TemplateError(SecptuneError):
    """A template or verbalizer cannot be used with the model's tokenizer."""


class InputError(SecptuneError):
    """Input data is malformed or does not fit the model (e.g. too long)."""


class HandshakeError(SecptuneError):
    """Owner and server cannot work together (version or model mismatch)."""


class SecureComputationError(SecptuneError):
    """The secure computation produced values that cannot be right."""


class VerbalizerError(SecureComputationError):
    """The owner's verbalizer failed the one-hot check: the server scores nothing with it."""


class RangeCheckError(SecureComputationError):
    """A secure forward's sampled range check found an input outside an approximation's range."""
