"""Measure a secure forward and a one-generation tuning run over emulated networks: ``secptune bench net``.

For each setting (none / LAN / WAN / WAN-200) owner, server and dealer run in
their own network namespaces (mpc.netns), joined by links with the setting's
one-way delay and bandwidth on every party's uplink (tc netem, or the userspace
wire where the kernel has no netem), over TLS — exactly as on three hosts:

* ``secptune infer --task sst2 --model tiny-llama --mode secure --limit L`` (one batch: one forward);
* ``secptune tune --task sst2 --model tiny-llama --mode secure --popsize P --budget P`` (one generation,
  with the job's zero-shot, dev and test evaluations).

Measured wall time is compared with the cost model: the time measured without
emulation plus what :func:`mpc.costmodel.link_times` adds for the run's online
traffic (owner <-> server: rounds x delay + bytes / bandwidth, busier party), and
plus the dealer's requests, which CrypTen's TTP provider makes synchronously during
the computation (each a round trip, 2 x delay, plus the dealer's bytes).

Run as root: ``secptune bench net [--settings none,LAN,WAN,WAN-200] [--out FILE]`` (or
``bash scripts/netbench.sh ...``, which sets up the checkout's .venv first).  Each JSON line of
``--out`` also records the command, git revision and machine (secptune.bench.common).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from mpc import costmodel, netns, tls
from mpc.roles import COMPUTING, ROLES
from secptune.bench import options
from secptune.bench.common import SOURCE_ROOT as ROOT
from secptune.bench.common import BenchError, provenance

# the links of options.SETTINGS, in its order (none: no emulation)
SETTINGS = dict(zip(options.SETTINGS, (None, costmodel.LAN, costmodel.WAN, costmodel.WAN_FAST), strict=True))


def owner_commands(args, workdir: Path) -> dict[str, list[str]]:
    common = ["--task", "sst2", "--model", args.model, "--mode", "secure"]
    return {
        "infer": ["infer", *common, "--limit", str(args.limit), "--batch-size", str(args.limit), "--json"],
        "tune": ["tune", *common, "--k", "2", "--popsize", str(args.popsize), "--budget", str(args.popsize),
                 "--prompt-len", "4", "--intrinsic-dim", "10", "--test-limit", "4", "--seed", "1", "--quiet",
                 "--out", str(workdir / "tune")],
    }


def run_setting(name: str, link, args, tls_dirs, workdir: Path) -> dict:
    python = [sys.executable, "-m", "secptune.cli"]
    commands = owner_commands(args, workdir)
    with netns.Testbed(link) as bed:
        peers = ",".join(f"{bed.addresses[r]}:29500" for r in ROLES)
        net = ["--peers", peers, "--peer-timeout", "600"]
        services = {}
        for role in ("server", "dealer"):
            extra = ["--model", args.model] if role == "server" else []
            services[role] = bed.popen(
                role, python + ["party", "--role", role, *net, "--tls-dir", str(tls_dirs[role]), "--runs", "2",
                                "--json", *extra],
                cwd=ROOT, stdout=subprocess.PIPE, stderr=open(workdir / f"{name}-{role}.log", "w"), text=True,
            )
        out = {"setting": name, "emulation": bed.describe(), "load_before": os.getloadavg()[0]}
        try:
            for job, argv in commands.items():
                started = time.monotonic()
                proc = subprocess.run(bed.cmd("owner", python + argv + net + ["--tls-dir", str(tls_dirs["owner"])]),
                                      cwd=ROOT, capture_output=True, text=True)
                wall = time.monotonic() - started
                if proc.returncode != 0:
                    raise BenchError(f"{name} {job} failed: {proc.stderr.strip().splitlines()[-1:]}")
                if job == "infer":
                    result = json.loads(proc.stdout)
                    out["infer"] = {"command_s": wall, "wall_s": result["wall_s"], "forward_s": result["forward_s"],
                                    "comm": result["comm"]}
                else:
                    report = json.loads((workdir / "tune" / "report.json").read_text())
                    per_call = report["per_call"]
                    out["tune"] = {"command_s": wall, "wall_s": report["totals"]["wall_s"],
                                   "generation_s": per_call["latency_s"] * per_call["calls"],
                                   "comm": report["totals"]["parties"]}
            for role, proc in services.items():
                lines = proc.communicate(timeout=120)[0].splitlines()
                runs = [json.loads(line) for line in lines if line.startswith("{")]
                out[f"{role}_runs"] = [r["traffic"] for r in runs]
        finally:
            for proc in services.values():
                if proc.poll() is None:
                    proc.kill()
                    proc.wait()
        out["load_after"] = os.getloadavg()[0]
    return out


def added_seconds(job: dict, dealer_traffic: dict, link) -> tuple[float, float]:
    """(online, dealer) seconds the link adds to ``job`` by the cost model."""
    comm = {p: job["comm"][p]["online"] for p in COMPUTING if p in job["comm"]}
    online = costmodel.link_times(comm, [link])[link.name]
    requests = job["comm"]["owner"]["dealer"]["rounds"] / costmodel.REQUEST_ROUNDS
    return online, costmodel.dealer_added_s(dealer_traffic["dealer"]["bytes"], requests, link)


def table(results: list[dict]) -> str:
    base = next((r for r in results if r["setting"] == "none"), None)
    lines = [
        "| setting | emulation | job | measured s | modelled s (online only) | modelled s (+ dealer) | "
        "online MB / rounds (busier party) | dealer requests | load avg |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        link = SETTINGS[r["setting"]]
        for i, job in enumerate(("infer", "tune")):
            j = r[job]
            comm = costmodel.session_online(j["comm"])
            mb = max(c["bytes"] for c in comm.values()) / 1e6
            rounds = max(c["rounds"] for c in comm.values())
            requests = j["comm"]["owner"]["dealer"]["rounds"] / costmodel.REQUEST_ROUNDS
            if link is None or base is None:
                model1 = model2 = "—"
            else:
                online, dealer = added_seconds(j, r["dealer_runs"][i], link)
                model1 = f"{base[job]['wall_s'] + online:.1f}"
                model2 = f"{base[job]['wall_s'] + online + dealer:.1f}"
            name = "forward (infer)" if job == "infer" else "1 generation (tune)"
            lines.append(f"| {r['setting']} | {r['emulation']} | {name} | {j['wall_s']:.1f} | {model1} | {model2} | "
                         f"{mb:.1f} / {rounds} | {requests:.0f} | {r['load_before']:.1f}–{r['load_after']:.1f} |")
    return "\n".join(lines)


def main(args, command: str) -> int:
    """``secptune bench net``: run each setting (one JSON line each to ``--out``), print the table."""
    if args.table:
        print(table([json.loads(line) for line in Path(args.table).read_text().splitlines() if line.strip()]))
        return 0
    names = [s.strip() for s in args.settings.split(",") if s.strip()]
    unknown = [n for n in names if n not in SETTINGS]
    if unknown:
        raise BenchError(f"unknown setting(s) {unknown}; choose from {', '.join(SETTINGS)}")
    reason = netns.unavailable()
    if reason:
        raise BenchError(f"bench net runs the parties in network namespaces: {reason}")
    results = []
    with tempfile.TemporaryDirectory(prefix="netbench-") as tmp:
        tls_dirs = tls.role_dirs(Path(tmp) / "keys")
        for name in names:
            print(f"netbench: {name} ...", file=sys.stderr, flush=True)
            result = run_setting(name, SETTINGS[name], args, tls_dirs, Path(tmp))
            result.update(provenance(command))  # the machine's load as this setting ended
            results.append(result)
            print(f"netbench: {name}: infer {result['infer']['wall_s']:.1f} s, tune {result['tune']['wall_s']:.1f} s",
                  file=sys.stderr, flush=True)
            if args.out:
                with open(args.out, "a") as f:
                    f.write(json.dumps(result) + "\n")
    print(table(results))
    return 0
