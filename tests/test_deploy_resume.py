"""After a fault, the services take the next run and a tuning run resumes from its checkpoint.

The server's run process is killed in the middle of a tuning run; the owner stops
with a plain error; the server service starts over by itself and the dealer is
restarted by hand; ``secptune tune --resume`` then finishes the run from its last
checkpoint.  Nothing is left running afterwards.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest
import torch

from deploy_parties import free_ports

ROOT = Path(__file__).resolve().parents[1]
POS = ["a great film", "good acting and a fine story", "great music", "a good and positive day"]
NEG = ["a bad film", "terrible acting and a slow story", "bad music", "a terrible and negative day"]


def _service(role, peers, log: Path, *extra) -> subprocess.Popen:
    argv = [sys.executable, "-m", "secptune.cli", "party", "--role", role, "--peers", peers, "--no-tls",
            "--peer-timeout", "10", *extra]
    return subprocess.Popen(argv, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=open(log, "a"), start_new_session=True)


def _stop(proc: subprocess.Popen) -> int:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            return proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
    return proc.wait()


@pytest.mark.slow  # two secure tuning runs and four service start-ups: ~1-2 min on 2 cores
def test_a_killed_server_rejoins_and_the_tuning_run_resumes(tmp_path, no_leftover_processes):
    data = tmp_path / "train.jsonl"
    rows = [{"text": t, "label": 1} for t in POS] + [{"text": t, "label": 0} for t in NEG]
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    peers = ",".join(f"127.0.0.1:{p}" for p in free_ports(3))
    out = tmp_path / "run"
    tune = [sys.executable, "-m", "secptune.cli", "tune", "--model", "tiny-llama", "--mode", "secure",
            "--train", str(data), "--test", str(data), "--k", "1", "--popsize", "2", "--budget", "4",
            "--prompt-len", "2", "--intrinsic-dim", "4", "--test-limit", "2", "--seed", "3", "--quiet",
            "--out", str(out), "--peers", peers, "--no-tls", "--peer-timeout", "10"]
    logs = {role: tmp_path / f"{role}.log" for role in ("server", "dealer")}
    server = _service("server", peers, logs["server"], "--model", "tiny-llama")
    dealer = _service("dealer", peers, logs["dealer"])
    try:
        first = subprocess.Popen(tune, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        checkpoint = out / "checkpoint.pt"
        deadline = time.monotonic() + 400
        while time.monotonic() < deadline and first.poll() is None:
            if checkpoint.is_file() and torch.load(checkpoint, weights_only=False)["gen"] >= 1:
                break
            time.sleep(0.05)
        assert checkpoint.is_file(), first.communicate()[1][-2000:]
        before = torch.load(checkpoint, weights_only=False)
        runs = [p for p in psutil.Process(server.pid).children() if "spawn_main" in " ".join(p.cmdline())]
        assert len(runs) == 1 and first.poll() is None
        runs[0].kill()  # the server's run process dies in the middle of the run
        _, err = first.communicate(timeout=120)
        errors = [line for line in err.splitlines() if line.startswith("secptune: error:")]
        assert first.returncode == 2 and len(errors) == 1, err[-2000:]
        assert "server" in errors[0] and ("lost the connection" in errors[0] or "died" in errors[0]), errors[0]
        assert not (out / "report.json").exists()

        assert _stop(dealer) == 130  # the dealer's host restarts ...
        dealer = _service("dealer", peers, logs["dealer"])  # ... and its service comes back
        second = subprocess.run(tune + ["--resume"], cwd=ROOT, capture_output=True, text=True, timeout=600)
        assert second.returncode == 0, second.stderr[-3000:]
        assert server.poll() is None  # the same server service, with a new run process
    finally:
        codes = {role: _stop(proc) for role, proc in (("server", server), ("dealer", dealer))}
    assert codes == {"server": 130, "dealer": 130}
    report = json.loads((out / "report.json").read_text())
    assert [g["gen"] for g in report["generations"]] == [1, 2]
    assert report["generations"][: before["gen"]] == before["history"]  # continued, not restarted
    server_log = logs["server"].read_text()
    assert "run 1 ended" in server_log and "run 2 finished" in server_log, server_log[-2000:]
