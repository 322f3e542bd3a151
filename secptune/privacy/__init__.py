"""Privacy measured, not argued: the split-learning comparison mode's noise mechanisms, the
server-view recorder and the attack suite that runs on a recorded view (issue 24)."""
