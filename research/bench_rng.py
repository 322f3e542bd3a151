"""What cryptographic masks cost: AES-256-CTR keystreams vs CrypTen's Mersenne Twister, in one run.

    python -m research.bench_rng --out reports/bench_rng.json \\
        -- --model roberta-large-shape --seq 512 --batch 1 --attention rfa --layers 1

1. Throughput: 64-bit ring elements per second from ``mpc.prg.Stream`` (AES-256-CTR,
   OpenSSL) and from ``torch.randint`` over the full int64 range on a ``torch.Generator``
   (what CrypTen used), best of ``--repeat`` draws of ``--elements`` each, this process.
2. The same secure forward (``secptune bench forward`` with the arguments after ``--``),
   ``--pairs`` times alternately: with the real streams, and with the Mersenne Twister swapped
   in by the test-only switch (``SECPTUNE_TEST_ONLY_RNG=mt19937``); with ``--baseline DIR`` (a
   checkout of an older commit) also that code's forward in each round (its
   ``scripts/bench_forward.py`` when it predates ``secptune bench``).  Reports each run's
   wall time and traffic, the ratio of the fastest runs, and whether online bytes and rounds
   are identical.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from mpc import costmodel, prg
from research import command
from secptune.bench.common import SOURCE_ROOT as ROOT
from secptune.bench.common import git_revision, provenance


def throughput(elements: int, repeat: int) -> dict:
    import torch

    from mpc import prg

    stream = prg.Stream(prg.new_key())
    generator = torch.Generator().manual_seed(1)

    def best(draw) -> float:
        times = []
        for _ in range(repeat):
            start = time.perf_counter()
            draw()
            times.append(time.perf_counter() - start)
        return min(times)

    aes = best(lambda: stream.ring((elements,)))
    mt = best(lambda: torch.randint(-(2**63), 2**63 - 1, (elements,), generator=generator))
    return {
        "elements": elements,
        "aes_ctr_s": round(aes, 4),
        "mersenne_twister_s": round(mt, 4),
        "aes_ctr_gb_per_s": round(8 * elements / aes / 1e9, 3),
        "mersenne_twister_gb_per_s": round(8 * elements / mt / 1e9, 3),
        "aes_over_mt_time": round(aes / mt, 3),
    }


def forward(args: list[str], rng: str | None, root: Path = ROOT) -> dict:
    """The secure forward of the code in checkout ``root`` (its own benchmark command), masks from ``rng``."""
    env = dict(os.environ)
    env.pop(prg.TEST_ONLY_ENV, None)
    if rng:
        env[prg.TEST_ONLY_ENV] = rng
    env["PYTHONPATH"] = str(root)  # the child runs that checkout's code
    legacy = root / "scripts" / "bench_forward.py"  # checkouts from before `secptune bench`
    bench = [str(legacy)] if legacy.is_file() else ["-m", "secptune", "bench", "forward"]
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "forward.json"
        cmd = [sys.executable, *bench, *args, "--mode", "secure", "--json", "--out", str(out)]
        print(f"bench_rng: {rng or 'aes-ctr'} ({root}): {' '.join(cmd[1:])}", file=sys.stderr, flush=True)
        subprocess.run(cmd, env=env, check=True, stdout=subprocess.DEVNULL, cwd=root)
        return json.loads(out.read_text())


def _summary(runs: list[dict]) -> dict:
    return {
        "wall_s": [r["wall_s"] for r in runs],
        "online": _online(runs[0]),
        "dealer": runs[0]["comm"]["dealer"],
        "extrapolated_total": runs[0].get("extrapolation", {}).get("total", {}).get("comm"),
    }


def _online(report: dict) -> dict:
    return costmodel.session_online(report["comm"])


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--elements", type=int, default=1 << 25)
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--out", help="write the JSON report here")
    p.add_argument("--pairs", type=int, default=1, help="forward runs per arm, alternating (best is compared)")
    p.add_argument("--baseline", metavar="DIR", help="a checkout of an older commit: its forward too")
    p.add_argument("--new-only", default="", metavar="ARGS",
                   help="`secptune bench forward` options for this checkout only (the baseline does not know them)")
    p.add_argument("forward_args", nargs="*", help="arguments for `secptune bench forward` (after --)")
    args = p.parse_args()
    report = {**provenance(command("research.bench_rng")), "throughput": throughput(args.elements, args.repeat)}
    if args.forward_args:
        arms = {"aes_ctr": (None, ROOT), "mersenne_twister": ("mt19937", ROOT)}
        if args.baseline:
            arms["baseline"] = (None, Path(args.baseline).resolve())
        runs = {name: [] for name in arms}
        for _ in range(args.pairs):
            for name, (rng, root) in arms.items():
                extra = args.new_only.split() if root == ROOT else []
                runs[name].append(forward([*args.forward_args, *extra], rng, root))
        report["forward"] = {name: _summary(r) for name, r in runs.items()}
        best = {name: min(r["wall_s"] for r in rs) for name, rs in runs.items()}
        report["forward"]["wall_ratio_aes_over_mt"] = round(best["aes_ctr"] / best["mersenne_twister"], 3)
        report["forward"]["online_identical_aes_mt"] = _online(runs["aes_ctr"][0]) == _online(runs["mersenne_twister"][0])
        if args.baseline:
            report["forward"]["baseline_dir_commit"] = git_revision(Path(args.baseline).resolve())[0]
            report["forward"]["wall_ratio_aes_over_baseline"] = round(best["aes_ctr"] / best["baseline"], 3)
            report["forward"]["online_identical_to_baseline"] = _online(runs["aes_ctr"][0]) == _online(runs["baseline"][0])
    text = json.dumps(report, indent=1)
    print(text)
    if args.out:
        Path(args.out).write_text(text + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
