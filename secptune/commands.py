"""Typed commands of the secure session: what the data owner asks the server to run.

CrypTen is SPMD: both parties must execute the same operations in the same order.  The
owner drives, so before each operation it sends a public *command* naming it, with the
shapes and ids the server needs to mirror it (never a secret: the command's fields are
public by design, docs/protocol.md).  A command is a frozen dataclass registered here
under its wire name; its :meth:`Command.run` is what both parties execute, the owner with
its private inputs, the server without.

Why typed and registered: the server decodes every message from the owner against the
registry and the set of commands its session accepts, with every field checked for its
declared type, so a malformed or unexpected message is refused with a clear error instead
of reaching the protocol code; and features (training baselines, benchmarks, tests) add
commands by registering them, never by overriding the session.
"""

from __future__ import annotations

import dataclasses
import typing
from typing import Any, ClassVar

from secptune.errors import SecptuneError


class CommandError(SecptuneError):
    """A message from the data owner is not a command this server runs."""


class Command:
    """Base of the registered commands; subclasses are frozen dataclasses (see :func:`command`)."""

    op: ClassVar[str] = ""

    def to_wire(self) -> dict:
        return {"op": self.op, **dataclasses.asdict(self)}

    def run(self, session, *private) -> Any:
        """Both parties, in lockstep: execute the command (``private``: the owner's inputs)."""
        raise NotImplementedError


REGISTRY: dict[str, type[Command]] = {}
_PLAIN_TYPES = (int, float, bool, str, type(None))


def command(op: str):
    """Class decorator: make ``cls`` a frozen dataclass and register it under ``op``."""

    def register(cls):
        if op in REGISTRY and REGISTRY[op].__qualname__ != cls.__qualname__:
            raise ValueError(f"command {op!r} is already registered by {REGISTRY[op].__qualname__}")
        cls.op = op
        cls = dataclasses.dataclass(frozen=True)(cls)
        for name, kind in typing.get_type_hints(cls).items():
            if name != "op" and not set(_allowed(kind)) <= set(_PLAIN_TYPES):
                raise TypeError(f"command {op!r}: field {name} must be int, float, bool, str or None, not {kind}")
        REGISTRY[op] = cls
        return cls

    return register


def _allowed(kind) -> tuple[type, ...]:
    """The runtime types a field annotation admits (``int | None`` -> (int, NoneType))."""
    args = typing.get_args(kind)
    return tuple(args) if args else (kind,)


def decode(message: Any, accepted: tuple[type[Command], ...]) -> Command:
    """The command ``message`` names, its fields type-checked, if it is one of ``accepted``."""
    if not isinstance(message, dict) or not isinstance(message.get("op"), str):
        raise CommandError(f"expected a command from the data owner, got {type(message).__name__}")
    fields = dict(message)
    op = fields.pop("op")
    cls = REGISTRY.get(op)
    if cls is None or cls not in accepted:
        names = ", ".join(sorted(c.op for c in accepted))
        raise CommandError(f"the data owner sent command {op!r}; this server runs only: {names}")
    hints = typing.get_type_hints(cls)
    expected = {f.name for f in dataclasses.fields(cls)}
    if set(fields) != expected:
        raise CommandError(f"command {op!r} needs fields {sorted(expected)}, got {sorted(fields)}")
    for name, value in fields.items():
        allowed = _allowed(hints[name])
        # bool is an int in Python; a field declared int takes no bool (and the other way round)
        ok = isinstance(value, allowed) and not (isinstance(value, bool) and bool not in allowed)
        ok = ok or (float in allowed and type(value) is int)  # a whole-number float may arrive as int
        if not ok:
            raise CommandError(f"command {op!r}: field {name}={value!r} is not of type {hints[name]}")
    return cls(**fields)
