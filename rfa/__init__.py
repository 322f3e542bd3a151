"""Attention for plaintext and secret-shared tensors: exact softmax and random features."""
