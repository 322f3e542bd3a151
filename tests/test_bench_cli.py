"""`secptune bench`: every report says which command, code revision and machine made it; `bench net` runs
its smallest setting and reads its own JSON lines back."""

import json
import subprocess

import pytest

from mpc import netns, prg
from secptune.bench.common import SOURCE_ROOT, command_line, git_revision
from secptune.cli import main

MACHINE = {"cpu_count", "processor", "torch", "cpu_capability", "load_avg_1m"}


def bench(capsys, *argv):
    code = main(["bench", *argv])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def checkout_revision():
    """This checkout's short commit (None when the tests run outside a git checkout)."""
    proc = subprocess.run(["git", "-C", str(SOURCE_ROOT), "rev-parse", "--short", "HEAD"], capture_output=True, text=True)
    return proc.stdout.strip() if proc.returncode == 0 else None


def assert_provenance(report: dict, argv: list[str]) -> None:
    assert report["command"] == "secptune bench " + " ".join(argv)
    assert report["git_revision"] == checkout_revision()
    assert report["git_dirty"] in ((True, False) if report["git_revision"] else (None,))
    assert set(report["machine"]) == MACHINE and report["machine"]["cpu_count"] >= 1


def test_forward_report_records_command_revision_and_machine(capsys, tmp_path, monkeypatch):
    monkeypatch.delenv("MPC_RING_MATMUL", raising=False)
    argv = ["forward", "--model", "tiny-llama", "--seq", "16", "--batch", "2", "--mode", "plain", "--json",
            "--out", str(tmp_path / "f.json")]
    code, out, _ = bench(capsys, *argv)
    report = json.loads(out)
    assert code == 0 and json.loads((tmp_path / "f.json").read_text()) == report
    assert_provenance(report, argv)
    assert report["ring_matmul"] == "auto" and "test_only_rng" not in report


def test_command_names_a_forced_ring_kernel(monkeypatch):
    monkeypatch.setenv("MPC_RING_MATMUL", "limbs")
    assert command_line(["bench", "forward", "--out", "a b.json"]) == "MPC_RING_MATMUL=limbs secptune bench forward --out 'a b.json'"


def test_no_revision_outside_a_checkout(tmp_path):
    assert git_revision(tmp_path) == (None, None)


def test_benchmarks_may_measure_the_insecure_generator_and_say_so(capsys, monkeypatch):
    """research/bench_rng.py compares the masks' cost with the tests' Mersenne Twister; the product refuses it."""
    monkeypatch.setenv(prg.TEST_ONLY_ENV, "mt19937")
    code, out, _ = bench(capsys, "forward", "--model", "tiny-llama", "--seq", "8", "--mode", "plain", "--json")
    assert code == 0 and json.loads(out)["test_only_rng"] == "mt19937"
    assert main(["infer", "--model", "tiny-llama", "--task", "sst2", "--limit", "1"]) == 2
    assert prg.TEST_ONLY_ENV in capsys.readouterr().err


def test_net_refuses_an_unknown_setting(capsys):
    code, out, err = bench(capsys, "net", "--settings", "none,5G")
    assert code == 2 and out == "" and "5G" in err and "WAN-200" in err


def test_net_reads_the_reports_it_wrote_before(capsys):
    """reports/netbench.jsonl predates the provenance fields: its table still prints."""
    report = SOURCE_ROOT / "reports" / "netbench.jsonl"
    settings = [json.loads(line)["setting"] for line in report.read_text().splitlines() if line.strip()]
    code, table, _ = bench(capsys, "net", "--table", str(report))
    rows = [line for line in table.splitlines() if line.startswith("| ") and "setting" not in line]
    assert code == 0 and [row.split(" | ")[0][2:] for row in rows] == [s for s in settings for _ in range(2)]


@pytest.mark.slow  # ~4 min on 2 cores (a secure infer and a tuning generation in network namespaces)
@pytest.mark.skipif(netns.unavailable() is not None, reason=f"network namespaces: {netns.unavailable()}")
def test_net_smallest_setting_writes_stamped_lines_and_reads_them_back(capsys, tmp_path):
    out = tmp_path / "net.jsonl"
    argv = ["net", "--settings", "none", "--limit", "2", "--popsize", "2", "--out", str(out)]
    code, table, _ = bench(capsys, *argv)
    assert code == 0
    (line,) = [json.loads(text) for text in out.read_text().splitlines()]
    assert_provenance(line, argv)
    assert line["setting"] == "none" and line["infer"]["comm"]["owner"]["online"]["bytes"] > 0
    assert len(line["server_runs"]) == len(line["dealer_runs"]) == 2  # the infer and the tune job
    code, again, _ = bench(capsys, "net", "--table", str(out))
    assert code == 0 and again == table and "| none |" in table
