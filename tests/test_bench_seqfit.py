"""research/bench_seqfit.py: the exact sequence-length model recovers what it should and flags what it cannot."""

import math
from fractions import Fraction

import research.bench_seqfit as sf

FIT, CHECK, TARGET = [16, 32, 64, 128], [256], 512


def synthetic(n: int, cubic: int = 0) -> dict:
    """Counts of a made-up protocol with CrypTen's max structure (and optionally an n³ term)."""
    m = n >> int(math.log(n))
    rows = n  # one softmax row per position
    bytes_ = 7_000 + 96 * n * n + rows * (40 * (n - m) + 13 * m * (m - 1)) + 5 * n + cubic * n**3
    rounds = 300 + 9 * int(math.log(n)) + 2 * int(math.log2(m - 1) + 1)
    return {p: {r: {"bytes": bytes_, "rounds": rounds} for r in sf.COMPUTING} for p in sf.PHASES} | {
        "forward_s": n / 10, "backward_s": n / 5}


def analyse(counts) -> dict:
    args = type("A", (), {"fit": FIT, "check": CHECK, "target": TARGET})()
    return sf.analyse(args, {n: counts(n) for n in FIT + CHECK})


def test_max_structure_matches_crypten():
    assert [sf.reduced_width(n) for n in (16, 32, 64, 128, 256, 512)] == [4, 4, 4, 8, 8, 8]
    assert [sf.halvings(n) for n in (16, 128, 512)] == [2, 4, 6]


def test_exact_fit_predicts_the_target():
    fit = analyse(synthetic)
    assert fit["all_checks_exact"]
    want = synthetic(TARGET)["forward"]["owner"]
    for kind in ("bytes", "rounds"):
        assert Fraction(fit["phases"]["forward"]["owner"][kind]["at_target"]) == want[kind]
    row = sf.table_row(fit, {"bytes": 10, "rounds": 1})
    assert row["bytes"] == 2 * want["bytes"] + 10 and row["rounds"] == 2 * want["rounds"] + 1


def test_a_protocol_outside_the_model_fails_its_check():
    fit = analyse(lambda n: synthetic(n, cubic=1))
    assert not fit["all_checks_exact"]
    assert any(not c["exact"] and c["seq"] == 256 for c in fit["checks"])
