#!/usr/bin/env python3
"""What cryptographic masks cost: AES-256-CTR keystreams vs CrypTen's Mersenne Twister, in one run.

    python scripts/bench_rng.py --out reports/bench_rng.json \\
        -- --model roberta-large-shape --seq 512 --batch 1 --attention rfa --layers 1

1. Throughput: 64-bit ring elements per second from ``mpc.prg.Stream`` (AES-256-CTR,
   OpenSSL) and from ``torch.randint`` over the full int64 range on a ``torch.Generator``
   (what CrypTen used), best of ``--repeat`` draws of ``--elements`` each, this process.
2. The same secure forward (``scripts/bench_forward.py`` with the arguments after ``--``),
   run twice back to back: with the real streams, and with the Mersenne Twister swapped in
   by the test-only switch (``SECPTUNE_TEST_ONLY_RNG=mt19937``).  Reports each run's wall
   time and traffic, their ratio, and whether online bytes and rounds are identical.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


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


def forward(args: list[str], rng: str | None) -> dict:
    env = dict(os.environ)
    env.pop("SECPTUNE_TEST_ONLY_RNG", None)
    if rng:
        env["SECPTUNE_TEST_ONLY_RNG"] = rng
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "forward.json"
        cmd = [sys.executable, str(ROOT / "scripts" / "bench_forward.py"), *args, "--mode", "secure", "--json", "--out", str(out)]
        print(f"bench_rng: {'mt19937 (old generator)' if rng else 'aes-ctr'}: {' '.join(cmd[1:])}", file=sys.stderr, flush=True)
        subprocess.run(cmd, env=env, check=True, stdout=subprocess.DEVNULL)
        return json.loads(out.read_text())


def _online(report: dict) -> dict:
    comm = report["comm"]
    return {role: comm[role]["online"] for role in ("owner", "server")}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--elements", type=int, default=1 << 25)
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--out", help="write the JSON report here")
    p.add_argument("forward_args", nargs="*", help="arguments for scripts/bench_forward.py (after --)")
    args = p.parse_args()
    report = {
        "command": " ".join(["scripts/bench_rng.py", *sys.argv[1:]]),
        "git": subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True).stdout.strip(),
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "load_avg": os.getloadavg()},
        "throughput": throughput(args.elements, args.repeat),
    }
    if args.forward_args:
        aes, mt = forward(args.forward_args, None), forward(args.forward_args, "mt19937")
        report["forward"] = {
            "aes_ctr": {"wall_s": aes["wall_s"], "online": _online(aes), "dealer": aes["comm"]["dealer"]},
            "mersenne_twister": {"wall_s": mt["wall_s"], "online": _online(mt), "dealer": mt["comm"]["dealer"]},
            "wall_ratio_aes_over_mt": round(aes["wall_s"] / mt["wall_s"], 3),
            "online_identical": _online(aes) == _online(mt),
            "extrapolated_total": {"aes_ctr": aes.get("extrapolation", {}).get("total"),
                                   "mersenne_twister": mt.get("extrapolation", {}).get("total")},
        }
    text = json.dumps(report, indent=1)
    print(text)
    if args.out:
        Path(args.out).write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT))
    raise SystemExit(main())
