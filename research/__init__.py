"""Research one-offs: the studies and micro-benchmarks behind figures and defaults (see README.md).

Run from the repository root as ``python -m research.<name> [options]``.  They use secptune's public
API (``secptune``, ``mpc``, ``rfa``; ``secptune.bench`` for the product benchmarks) and each other.
"""

import sys

from secptune.bench.common import command_line


def command(module: str, argv: list[str] | None = None) -> str:
    """This run's command line, as a report records it (``python -m research.<name> ...``)."""
    return command_line(sys.argv[1:] if argv is None else argv, ("python", "-m", module))
