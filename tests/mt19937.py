"""The Mersenne Twister state-recovery attack (test helper; our own implementation).

MT19937 tempers each 32-bit state word by an invertible map, and the untempered
words satisfy a linear recurrence of order 624.  So 624 consecutive outputs give
the state and every later output.  torch's CPU generator makes each 64-bit
``randint`` over the whole int64 range from two consecutive words (high, low).
"""

_UPPER, _LOWER, _MATRIX = 0x80000000, 0x7FFFFFFF, 0x9908B0DF
_MASK32 = 0xFFFFFFFF


def _temper(y: int) -> int:
    y ^= y >> 11
    y ^= (y << 7) & 0x9D2C5680
    y ^= (y << 15) & 0xEFC60000
    return (y ^ (y >> 18)) & _MASK32


def _untemper(y: int) -> int:
    y ^= y >> 18
    y ^= (y << 15) & 0xEFC60000
    t = y
    for _ in range(5):
        t = y ^ ((t << 7) & 0x9D2C5680)
    y = t & _MASK32
    t = y
    for _ in range(3):
        t = y ^ (t >> 11)
    return t & _MASK32


def words_from_int64(values) -> list[int]:
    """The 32-bit generator outputs behind torch's full-range int64 draws, in order."""
    words = []
    for v in values:
        u = (int(v) + 2**63) % 2**64
        words += [u >> 32, u & _MASK32]
    return words


def predict_words(observed: list[int], count: int) -> list[int]:
    """The ``count`` outputs after 624+ consecutive observed outputs."""
    if len(observed) < 624:
        raise ValueError("the attack needs 624 consecutive outputs")
    x = [_untemper(w) for w in observed[-624:]]
    out = []
    for _ in range(count):
        y = (x[-624] & _UPPER) | (x[-623] & _LOWER)
        nxt = x[-227] ^ (y >> 1) ^ (_MATRIX if y & 1 else 0)
        x.append(nxt)
        out.append(_temper(nxt))
    return out


def predict_int64(observed_int64, count: int) -> list[int]:
    """Predict the next ``count`` full-range int64 draws from 312+ observed ones."""
    words = predict_words(words_from_int64(observed_int64), 2 * count)
    return [((hi << 32 | lo) - 2**63) for hi, lo in zip(words[::2], words[1::2])]
