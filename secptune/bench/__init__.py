"""Benchmarks of the product: ``secptune bench forward|iteration|net``.

* :mod:`secptune.bench.forward`: one secure (or plaintext) forward pass, bytes, rounds and time per op;
* :mod:`secptune.bench.iteration`: one tuning iteration per method (forward-only against the gradient
  baselines);
* :mod:`secptune.bench.net`: a forward and a tuning generation over emulated LAN/WAN links, against the
  cost model.

Every JSON report carries ``command``, ``git_revision`` (with ``git_dirty``) and ``machine``
(:mod:`secptune.bench.common`), so a figure can be traced to the code and the machine that made it.
The command-line options live in :mod:`secptune.bench.options`, which imports neither torch nor
CrypTen, so that ``secptune --help`` stays fast.
"""
