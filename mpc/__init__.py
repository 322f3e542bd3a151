"""Two-party secure computation over CrypTen: sessions, dealer, ring arithmetic.

Importing this package installs the CrypTen compatibility shim, so every party
process that imports ``mpc`` can then ``import crypten`` safely.
"""

from mpc import compat as _compat  # noqa: F401  (must run before crypten is imported)
