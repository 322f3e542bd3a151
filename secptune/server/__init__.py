"""The model server's role, plaintext side: everything it prepares from its own model
before any owner data arrives — canonical weights, activation bounds from public text,
fitted RFA maps and its choice of RFA layers (:func:`prepare.prepare_server_model`).

Nothing here ever sees the data owner's inputs; the results are either public (the
architecture, bounds and layer choice) or secret-shared by the secure session.
"""
