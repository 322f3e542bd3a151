"""Cryptographic randomness for every mask: AES-256-CTR keystreams keyed from the OS.

CrypTen draws every mask from ``torch.Generator`` (Mersenne Twister): 312 raw 64-bit
outputs give away the whole state, and the protocol hands a party raw outputs of the
other's generator (the server computes the owner's mask share B0 = W − F − B1 from the
weight opening F = W − B).  A party could then predict every later mask and unmask
everything.  Here every ring element that can mask a secret comes from a
:class:`Stream`: AES-256 in counter mode (OpenSSL, via ``cryptography``) over a
32-byte key from ``os.urandom``.  Seeing any number of a stream's outputs says
nothing about the next ones.

Keys.  Each computing party picks its own keys; none is derived from another's:

* the *dealer stream* of a party (its half of every Beaver triple and mask): the
  party's key, sent to the dealer over the dealer channel (TLS across hosts and on
  loopback, see :mod:`mpc.launcher`);
* CrypTen's pairwise "prev"/"next" streams (sharings of zero when a party inputs a
  secret): each party's own "next" key, sent to the other party.  With two parties
  both know both keys anyway — such a mask only hides a share the peer never sees;
* "local" (this process only) and "global" (public randomness both parties agree on,
  a hash of both pairwise keys).

:mod:`mpc.crypten_seam` installs this module's replacements for CrypTen's generators
(:func:`setup_streams`, :func:`send_dealer_key`) and its two ring-element samplers
(:func:`ring_element`, :func:`kbit_tensor`); a sampler handed a ``torch.Generator``
raises :class:`InsecureRandomnessError`, so no path can fall back to the Mersenne
Twister unnoticed.

Testing only: ``SECPTUNE_TEST_ONLY_RNG=mt19937`` makes every stream a seeded
Mersenne Twister (CrypTen's old generator, the attack's positive control) and
``=zero`` makes every stream output zeros (masks forced to zero: the privacy
audit's mutation test).  Either prints a warning in every process that uses it, and the
``secptune`` command refuses to run while it is set.
"""

from __future__ import annotations

import hashlib
import math
import os
import sys

import torch

from mpc.errors import InsecureRandomnessError

KEY_BYTES = 32
TEST_ONLY_ENV = "SECPTUNE_TEST_ONLY_RNG"
_CHUNK_BYTES = 1 << 24  # keystream produced in 16 MiB pieces: no whole-size zero buffer
_ZEROS = memoryview(bytes(_CHUNK_BYTES))  # sliced without copying


def new_key() -> bytes:
    """A fresh 256-bit key from the operating system."""
    return os.urandom(KEY_BYTES)


def key_to_tensor(key: bytes) -> torch.Tensor:
    """A key as 4 int64 values, the form it crosses the wire in."""
    if len(key) != KEY_BYTES:
        raise ValueError(f"a stream key has {KEY_BYTES} bytes, got {len(key)}")
    return torch.frombuffer(bytearray(key), dtype=torch.int64).clone()


def key_from_tensor(t: torch.Tensor) -> bytes:
    return t.to(torch.int64).cpu().contiguous().numpy().tobytes()


def test_only_mode() -> str | None:
    """The test-only generator in force (``mt19937`` or ``zero``), or None (the real one)."""
    mode = os.environ.get(TEST_ONLY_ENV) or None
    if mode not in (None, "mt19937", "zero"):
        raise ValueError(f"{TEST_ONLY_ENV}={mode!r}: expected 'mt19937' or 'zero' (tests only)")
    return mode


class Stream:
    """A keystream of uniform ring elements (int64, two's complement of Z_2^64).

    ``device`` only says where outputs are placed (the keystream is made on the CPU
    by OpenSSL and copied), so the same code serves CPU and GPU parties.
    """

    device = torch.device("cpu")  # CrypTen's TTP code reads ``generator.device``

    def __init__(self, key: bytes, label: str = "stream"):
        if len(key) != KEY_BYTES:
            raise ValueError(f"a stream key has {KEY_BYTES} bytes, got {len(key)}")
        from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

        self.label = label
        self.drawn = 0  # elements drawn so far (the stream position)
        self._encryptor = Cipher(algorithms.AES(key), modes.CTR(bytes(16))).encryptor()

    def _bytes(self, nbytes: int) -> memoryview:
        # keystream = encryption of zeros, written in place (no per-chunk copies); update_into
        # wants 15 spare bytes after each chunk, which the next chunk then overwrites
        out = memoryview(bytearray(nbytes + 15))
        for start in range(0, nbytes, _CHUNK_BYTES):
            n = min(_CHUNK_BYTES, nbytes - start)
            self._encryptor.update_into(_ZEROS[:n], out[start : start + n + 15])
        return out[:nbytes]

    def _raw(self, n: int) -> torch.Tensor:
        return torch.frombuffer(self._bytes(8 * n), dtype=torch.int64) if n else torch.empty(0, dtype=torch.int64)

    def ring(self, size, device=None) -> torch.Tensor:
        """Uniform elements of Z_2^64 of shape ``size``."""
        shape = torch.Size(size)
        n = math.prod(shape)
        self.drawn += n
        return place(self._raw(n).reshape(shape), device)

    def bits(self, size, bitlength: int, device=None) -> torch.Tensor:
        """Uniform integers in [0, 2^bitlength) (one 64-bit draw each, so both ends stay in step)."""
        if not 1 <= bitlength <= 64:
            raise ValueError(f"bitlength {bitlength} outside [1, 64]")
        values = self.ring(size, device)
        return values if bitlength == 64 else values & ((1 << bitlength) - 1)


class _MersenneStream(Stream):
    """Testing only: CrypTen's old generator behind the same interface (attack control)."""

    def __init__(self, key: bytes, label: str = "stream"):
        self.label = label
        self.drawn = 0
        self._generator = torch.Generator().manual_seed(int.from_bytes(key[:8], "little") >> 1)

    def _raw(self, n: int) -> torch.Tensor:
        return torch.randint(-(2**63), 2**63 - 1, (n,), generator=self._generator, dtype=torch.int64)


class _ZeroStream(Stream):
    """Testing only: every mask is zero (the privacy audit's mutation test)."""

    def __init__(self, key: bytes, label: str = "stream"):
        self.label = label
        self.drawn = 0

    def _raw(self, n: int) -> torch.Tensor:
        return torch.zeros(n, dtype=torch.int64)


_WARNED = False


def stream(key: bytes, label: str = "stream") -> Stream:
    """The stream for ``key``: AES-256-CTR, unless a test forces another generator."""
    global _WARNED
    mode = test_only_mode()
    if mode is None:
        return Stream(key, label)
    if not _WARNED:
        print(f"secptune: WARNING {TEST_ONLY_ENV}={mode}: masks are NOT secure (tests only)", file=sys.stderr, flush=True)
        _WARNED = True
    return (_MersenneStream if mode == "mt19937" else _ZeroStream)(key, label)


def place(t: torch.Tensor, device) -> torch.Tensor:
    """``t`` (made on the CPU) on ``device``, wrapped as CrypTen expects for a GPU."""
    if device is not None and torch.device(device).type != "cpu":
        from crypten.cuda import CUDALongTensor

        return CUDALongTensor(t.to(device))
    return t


# ---- CrypTen integration ---------------------------------------------------------

def _resolve(generator) -> Stream:
    if isinstance(generator, Stream):
        return generator
    if generator is None:
        import crypten

        local = crypten.generators["local"].get(torch.device("cpu"))
        if isinstance(local, Stream):
            return local
    raise InsecureRandomnessError(
        f"a secret-sharing mask was about to come from {type(generator).__name__} (not a cryptographic "
        "stream); secptune's CrypTen integration is not installed in this process"
    )


def ring_element(size, ring_size=2**64, generator=None, **kwargs):
    """Replaces CrypTen's ``generate_random_ring_element`` (same signature)."""
    if ring_size != 2**64:
        raise ValueError(f"ring size {ring_size}: secptune shares over Z_2^64 only")
    return _resolve(generator).ring(size, kwargs.get("device"))


def kbit_tensor(size, bitlength=None, generator=None, **kwargs):
    """Replaces CrypTen's ``generate_kbit_random_tensor`` (same signature)."""
    return _resolve(generator).bits(size, 64 if bitlength is None else bitlength, kwargs.get("device"))


def setup_streams() -> None:
    """Replaces ``crypten._setup_prng``: pairwise, local and global streams from fresh keys."""
    import crypten
    import crypten.communicator as comm

    own = new_key()
    peer = key_to_tensor(bytes(KEY_BYTES))
    world, rank = comm.get().get_world_size(), comm.get().get_rank()
    if world != 2:
        raise RuntimeError(f"secptune runs two computing parties, not {world}")
    other = 1 - rank
    sent = comm.get().isend(key_to_tensor(own), other)
    comm.get().irecv(peer, src=other).wait()
    sent.wait()
    peer_key = key_from_tensor(peer)
    both = sorted([own, peer_key])
    streams = {
        "next": stream(own, "next"),
        "prev": stream(peer_key, "prev"),
        "local": stream(new_key(), "local"),
        "global": stream(hashlib.sha256(b"secptune-global" + both[0] + both[1]).digest(), "global"),
    }
    for name, table in crypten.generators.items():
        table.clear()
        table[torch.device("cpu")] = streams[name]
        if torch.cuda.is_available():
            for i in range(torch.cuda.device_count()):
                table[torch.device(f"cuda:{i}")] = streams[name]
            table[torch.device("cuda")] = streams[name]


def send_dealer_key(self) -> None:
    """Replaces the TTP client's seed receipt: send this party's own key to the dealer."""
    import crypten.communicator as comm
    from crypten.mpc.provider import ttp_provider

    key = new_key()
    ttp_provider.dist.send(key_to_tensor(key), dst=comm.get().get_ttp_rank(), group=self.ttp_group)
    self.generator = stream(key, "dealer")
    self.generator_cuda = self.generator
