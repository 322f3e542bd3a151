"""Two-party secure computation over CrypTen: sessions, dealer, ring arithmetic.

Importing this package registers CrypTen's import stub (:mod:`mpc.crypten_seam`, the one
module that writes into CrypTen), so every party process that imports ``mpc`` can then
``import crypten`` safely.
"""

from mpc.crypten_seam import install_import_stub

install_import_stub()  # before anything imports crypten
