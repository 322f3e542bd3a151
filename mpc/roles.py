"""The three roles of a secure run, defined once.

``owner`` holds the data and the prompt, ``server`` the model's weights; both compute.
``dealer`` is neither: it hands out correlated randomness (mpc.dealer) and never sees
a value either party holds.  Ranks follow this order (CrypTen's process ranks).
"""

OWNER, SERVER, DEALER = "owner", "server", "dealer"
ROLES = (OWNER, SERVER, DEALER)
COMPUTING = (OWNER, SERVER)  # the two parties that hold shares
RANK = {role: rank for rank, role in enumerate(ROLES)}
