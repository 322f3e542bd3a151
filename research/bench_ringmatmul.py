"""Time ring_matmul (float64 limbs) against torch's int64 and float32 matmul.

    python -m research.bench_ringmatmul --m 256 --k 1024 --n 4096 --json

All three run in the same process on the same shapes ([batch x] m x k times k x n);
each time is the best of --repeat runs after one warm-up.  ``ring_s`` is the limb
path forced (method="limbs"); ``auto_s`` is ring_matmul's default policy (which on
the CPU keeps torch's int64 kernel); ``float64_s`` is one float64 GEMM of the same
shape, the unit the limb path spends six of.  ``exact`` checks ring == int64 bit for
bit.  ``speedup_vs_int64`` = int64_s / ring_s.

    python -m research.bench_ringmatmul --m 256 --k 1024 --n 4096 --secure --json

``--secure`` times the *secret* product instead: owner-shared X [m x k] times
server-shared W [k x n] in a local three-process session (owner, server, dealer),
once with every party's int64 products on torch's kernel (MPC_RING_MATMUL=torch,
"CrypTen's int64 path") and once on the limbs (MPC_RING_MATMUL=limbs), each for
CrypTen's Beaver product (opens X - A and W - B) and for the fixed-mask product of
mpc.fixed_weights (W masked once; opens only X - A).  Times are the owner's wall
time per product (best of --repeat after one warm-up; the dealer's C = A B is
included because the owner waits for it); bytes are what the owner sends.
"""

from __future__ import annotations

import argparse
import json
import os
import time

import torch

from mpc.ring import ring_matmul


# (batch, m, k, n): small to large, square, narrow, long-K, and SmolLM2-135M-like
# projections (hidden 576, MLP 1536) on 128 tokens
SWEEP = [
    (0, 16, 16, 16),
    (0, 64, 64, 64),
    (0, 128, 128, 128),
    (0, 256, 256, 256),
    (0, 512, 512, 512),
    (0, 1024, 1024, 1024),
    (0, 8, 4096, 4096),
    (0, 4096, 64, 4096),
    (0, 64, 8192, 64),
    (0, 128, 576, 576),
    (0, 128, 576, 1536),
    (0, 128, 1536, 576),
    (8, 128, 576, 1536),
    (0, 256, 1024, 4096),
]


def best_time(fn, repeat: int) -> float:
    fn()  # warm-up
    best = float("inf")
    for _ in range(repeat):
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        start = time.perf_counter()
        fn()
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        best = min(best, time.perf_counter() - start)
    return best


def bench(m: int, k: int, n: int, batch: int, repeat: int, device: str) -> dict:
    lead = (batch,) if batch else ()
    gen = torch.Generator().manual_seed(0)
    full = dict(low=-(2**63), high=2**63 - 1, dtype=torch.int64, generator=gen)
    a = torch.randint(size=(*lead, m, k), **full).to(device)
    b = torch.randint(size=(k, n), **full).to(device)
    af, bf = torch.randn(a.shape, device=device), torch.randn(b.shape, device=device)
    ad, bd = af.double(), bf.double()

    exact = torch.equal(ring_matmul(a, b, method="limbs"), torch.matmul(a, b)) if device == "cpu" else None
    ring_s = best_time(lambda: ring_matmul(a, b, method="limbs"), repeat)
    int64_s = best_time(lambda: torch.matmul(a, b), repeat) if device == "cpu" else None
    auto_s = best_time(lambda: ring_matmul(a, b), repeat)
    float32_s = best_time(lambda: torch.matmul(af, bf), repeat)
    float64_s = best_time(lambda: torch.matmul(ad, bd), repeat)
    return {
        "shape": [list(a.shape), list(b.shape)],
        "ring_s": round(ring_s, 4),
        "int64_s": None if int64_s is None else round(int64_s, 4),
        "float32_s": round(float32_s, 4),
        "speedup_vs_int64": None if int64_s is None else round(int64_s / ring_s, 3),
        "auto_s": round(auto_s, 4),
        "float64_s": round(float64_s, 4),
        "exact": exact,
        "device": device,
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "load_avg_1m": round(os.getloadavg()[0], 2),
    }


def secure_job(m: int, k: int, n: int, repeat: int, x, w) -> dict:
    """Party job: time X @ W on secret shares, CrypTen's Beaver vs fixed mask."""
    import crypten
    import crypten.communicator as comm

    from mpc import accounting, fixed_weights
    from mpc.reveal import reveal_to

    rank = comm.get().get_rank()
    xs = crypten.cryptensor(x if rank == 0 else torch.zeros(m, k, dtype=torch.float64), src=0)
    ws = crypten.cryptensor(w if rank == 1 else torch.zeros(k, n, dtype=torch.float64), src=1)

    def timed(fn):
        out = fn()  # warm-up
        before = accounting.log().online.bytes
        best = float("inf")
        for _ in range(repeat):
            start = time.perf_counter()
            fn()
            best = min(best, time.perf_counter() - start)
        return out, best, (accounting.log().online.bytes - before) // repeat

    beaver, beaver_s, beaver_bytes = timed(lambda: xs @ ws)
    start = time.perf_counter()
    fixed = fixed_weights.prepare({"w.w": ws})["w.w"]
    prepare_s = time.perf_counter() - start
    masked, fixed_s, fixed_bytes = timed(lambda: fixed.apply(xs))
    got = [reveal_to(t, 0) for t in (beaver, masked)]
    return {
        "revealed": got,  # the parent checks them against X @ W
        "beaver_s": round(beaver_s, 4),
        "fixed_s": round(fixed_s, 4),
        "prepare_s": round(prepare_s, 4),
        "beaver_online_bytes": beaver_bytes,
        "fixed_online_bytes": fixed_bytes,
    }


def bench_secure(m: int, k: int, n: int, repeat: int) -> dict:
    """The secret product under both kernels (one local session each)."""
    from mpc import launcher

    gen = torch.Generator().manual_seed(0)
    x = torch.randn(m, k, generator=gen, dtype=torch.float64)
    w = torch.randn(k, n, generator=gen, dtype=torch.float64) * 0.05
    previous = os.environ.get("MPC_RING_MATMUL")
    result = {"shape": [[m, k], [k, n]], "secure": {}}
    try:
        for method in ("torch", "limbs"):
            os.environ["MPC_RING_MATMUL"] = method  # inherited by all three spawned parties
            parties = launcher.run_local(
                launcher.PartyJob(secure_job, (m, k, n, repeat, x, None)),
                launcher.PartyJob(secure_job, (m, k, n, repeat, None, w)),
                timeout_s=3600,
            )
            value = parties["owner"].value
            want = x @ w
            value["max_abs_err"] = max(float((got - want).abs().max()) for got in value.pop("revealed"))
            result["secure"][method] = value
    finally:
        if previous is None:
            os.environ.pop("MPC_RING_MATMUL", None)
        else:
            os.environ["MPC_RING_MATMUL"] = previous
    sec = result["secure"]
    result["limbs_speedup_vs_int64"] = {
        kind: round(sec["torch"][f"{kind}_s"] / sec["limbs"][f"{kind}_s"], 3) for kind in ("beaver", "fixed")
    }
    result.update(threads=torch.get_num_threads(), torch=torch.__version__, load_avg_1m=round(os.getloadavg()[0], 2))
    return result


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--m", type=int, default=256)
    p.add_argument("--k", type=int, default=1024)
    p.add_argument("--n", type=int, default=4096)
    p.add_argument("--batch", type=int, default=0, help="leading batch dim of a (0: none)")
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.add_argument("--sweep", action="store_true", help="run the preset SWEEP shapes (one JSON line each)")
    p.add_argument("--secure", action="store_true", help="time the secret product in a local session")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.secure:
        if args.device != "cpu" or args.batch or args.sweep:
            p.error("--secure runs one 2-D product on the CPU: drop --device/--batch/--sweep")
        print(json.dumps(bench_secure(args.m, args.k, args.n, args.repeat), indent=None if args.json else 2))
        return 0
    if args.sweep:
        for batch, m, k, n in SWEEP:
            print(json.dumps(bench(m, k, n, batch, args.repeat, args.device)), flush=True)
        return 0
    result = bench(args.m, args.k, args.n, args.batch, args.repeat, args.device)
    if args.json:
        print(json.dumps(result))
    else:
        for key, value in result.items():
            print(f"{key:>17}: {value}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
