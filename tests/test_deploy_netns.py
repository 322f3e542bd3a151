"""Owner, server and dealer on three "hosts": Linux network namespaces joined by links.

Skipped where namespaces cannot be made (no root / CAP_NET_ADMIN, no iproute2, a
container that forbids them); the skip reason says which.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from mpc import costmodel, netns

from conftest import SENTENCES, TEMPLATES
from deploy_parties import ROLES, make_tls_dirs

REASON = netns.unavailable()
pytestmark = [
    pytest.mark.skipif(REASON is not None, reason=f"network namespaces are not permitted here: {REASON}"),
    pytest.mark.skipif(shutil.which("openssl") is None, reason="openssl is needed to make test keys"),
]
ROOT = Path(__file__).resolve().parents[1]


def test_three_namespaces_give_the_scores_of_the_local_launcher(tmp_path, no_leftover_processes):
    from secptune.infer import InferOptions, prepare, secure_scores

    template, words = TEMPLATES["tiny-llama"]
    data = tmp_path / "data.jsonl"
    data.write_text("".join(json.dumps({"text": e.text, "text_b": e.text_b, "label": e.label}) + "\n"
                            for e in SENTENCES[:2]))  # one batch: one secure forward per run
    opts = InferOptions(model="tiny-llama", data=str(data), template=template, verbalizer=words, prompt_len=4,
                        batch_size=2)
    local, _, _ = secure_scores(prepare(opts), opts.cfg)  # owner, server, dealer as local processes over gloo

    keys = make_tls_dirs(tmp_path / "keys")
    python = [sys.executable, "-m", "secptune.cli"]
    with netns.Testbed() as bed:
        peers = ",".join(f"{bed.addresses[role]}:29500" for role in ROLES)  # the same port: three hosts
        services = {
            role: bed.popen(role, python + ["party", "--role", role, "--peers", peers, "--tls-dir", str(keys[role]),
                                            "--runs", "1", "--json"] + (["--model", "tiny-llama"] if role == "server" else []),
                            cwd=ROOT, stdout=subprocess.PIPE, stderr=open(tmp_path / f"{role}.log", "w"), text=True)
            for role in ("server", "dealer")
        }
        try:
            owner = subprocess.run(
                bed.cmd("owner", python + ["infer", "--model", "tiny-llama", "--data", str(data), "--template", template,
                                           "--verbalizer", ",".join(words), "--mode", "secure", "--prompt-len", "4",
                                           "--batch-size", "2", "--peers", peers, "--tls-dir", str(keys["owner"]),
                                           "--json"]),
                cwd=ROOT, capture_output=True, text=True, timeout=600,
            )
            assert owner.returncode == 0, owner.stderr[-2000:]
            reports = {role: json.loads(proc.communicate(timeout=60)[0].splitlines()[-1])
                       for role, proc in services.items()}
        finally:
            for proc in services.values():
                if proc.poll() is None:
                    proc.kill()
                    proc.wait()
    assert all(proc.returncode == 0 for proc in services.values())
    assert all(report["ok"] for report in reports.values()), reports
    result = json.loads(owner.stdout)
    remote = torch.tensor(result["scores"], dtype=torch.float64)
    assert remote.shape == local.shape == (2, len(words))
    # two secure runs differ only by fixed-point noise (fresh randomness each run)
    assert float((remote - local).abs().max()) <= 1e-2 * float(local.abs().max())
    assert result["comm"]["server"]["online"]["bytes"] > 0 and result["comm"]["owner"]["dealer"]["rounds"] > 0
    assert reports["dealer"]["traffic"]["dealer"]["bytes"] > 0  # the triples came from the third namespace


@pytest.mark.parametrize("kind", ["veth", "wire"])
def test_an_emulated_link_has_its_delay_and_bandwidth(kind, no_leftover_processes):
    if kind == "veth" and not netns.netem_available():
        pytest.skip("this kernel has no netem qdisc (sch_netem); the userspace wire emulates links instead")
    link = costmodel.Link("test", 50e6, 0.02)
    probe = (
        "import socket, sys, time\n"
        "c = socket.create_connection((sys.argv[1], 5001)); c.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)\n"
        "rtts = []\n"
        "for _ in range(5):\n"
        "    t = time.monotonic(); c.sendall(b'p'); c.recv(1); rtts.append(time.monotonic() - t)\n"
        "t = time.monotonic(); c.sendall(b'x' * 5_000_000); c.recv(1); bulk = time.monotonic() - t\n"
        "print(min(rtts), bulk)\n"
    )
    echo = (
        "import socket\n"
        "s = socket.create_server(('0.0.0.0', 5001)); c, _ = s.accept()\n"
        "c.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)\n"
        "for _ in range(5): c.recv(1); c.sendall(b'p')\n"
        "n = 0\n"
        "while n < 5_000_000: n += len(c.recv(1 << 20))\n"
        "c.sendall(b'd')\n"
    )
    with netns.Testbed(link, kind=kind) as bed:
        server = bed.popen("server", [sys.executable, "-c", echo])
        try:
            time.sleep(1.0)
            out = subprocess.run(bed.cmd("owner", [sys.executable, "-c", probe, bed.addresses["server"]]),
                                 capture_output=True, text=True, timeout=60)
            assert out.returncode == 0, out.stderr
            server.wait(10)
        finally:
            if server.poll() is None:
                server.kill()
                server.wait()
    rtt, bulk = map(float, out.stdout.split())
    assert 2 * link.latency_s <= rtt < 2 * link.latency_s + 0.02  # a round trip crosses two uplinks
    expected = 5_000_000 * 8 / link.bandwidth_bps + 2 * link.latency_s
    assert 0.9 * expected < bulk < 2.0 * expected
