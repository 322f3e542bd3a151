"""BENCHMARKS.md is generated from reports/: the committed file must be current, and its figures follow the reports."""

import json
import shutil

import pytest

from secptune import benchmarks_doc
from secptune.cli import main

REPORTS = benchmarks_doc.DEFAULT_REPORTS
TINY = "bench_forward_tiny-llama_seq64_b8.json"
ROBERTA = "bench_forward_roberta-large-shape_L1_rfa.json"


def test_committed_benchmarks_md_is_what_the_reports_give():
    expected = benchmarks_doc.render(REPORTS)
    found = benchmarks_doc.DEFAULT_OUT.read_text()
    assert found == expected, (f"BENCHMARKS.md is stale ({benchmarks_doc.first_difference(expected, found)}): "
                               "run `secptune benchmarks` and commit it")


@pytest.fixture
def few_reports(tmp_path):
    """A report directory with two forward reports and one tuning run, copied from the repository's."""
    root = tmp_path / "reports"
    root.mkdir()
    for name in (TINY, ROBERTA):
        shutil.copy(REPORTS / name, root / name)
    (root / "tune" / "sst2-secure").mkdir(parents=True)
    shutil.copy(REPORTS / "tune/sst2-secure/report.json", root / "tune/sst2-secure/report.json")
    return root


def edit(path, change):
    data = json.loads(path.read_text())
    change(data)
    path.write_text(json.dumps(data))


def row(text, key):
    rows = [line for line in text.splitlines() if line.startswith(f"| `{key}` |")]
    assert rows, f"no table row for {key}"
    return rows[0]


def test_a_row_follows_its_report(few_reports):
    before = benchmarks_doc.render(few_reports)
    old = row(before, "tiny-llama_seq64_b8")
    assert "| 0.10 | 328 |" in old  # the server's online GB and rounds as the repository's report has them

    def double_traffic(d):
        d["comm"]["server"]["online"]["bytes"] = 250_000_000
        d["comm"]["server"]["online"]["rounds"] = 777

    edit(few_reports / TINY, double_traffic)
    after = benchmarks_doc.render(few_reports)
    new = row(after, "tiny-llama_seq64_b8")
    assert "| 0.25 | 777 |" in new and new != old
    # the other report's row and the headline built from it do not move
    assert row(after, "roberta-large-shape_L1_rfa") == row(before, "roberta-large-shape_L1_rfa")

    edit(few_reports / ROBERTA, lambda d: d["extrapolation"]["total"]["comm"]["server"].update(bytes=1_234_567_890))
    assert "1,234,567,890 B (1.23 GB)" in benchmarks_doc.render(few_reports)


def test_machine_is_named_or_not_recorded(few_reports):
    text = benchmarks_doc.render(few_reports)
    assert f"- `reports/{TINY}` — machine: 2 CPUs, x86_64, torch 2.13.0+cpu, AVX2, load 1.64; command: `" in text
    # tuning reports carry no machine field
    assert "- `reports/tune/sst2-secure/report.json` — machine: not recorded" in text

    edit(few_reports / TINY, lambda d: d.pop("machine"))
    assert f"- `reports/{TINY}` — machine: not recorded; command: `" in benchmarks_doc.render(few_reports)


def test_absent_reports_are_said_not_skipped(few_reports):
    text = benchmarks_doc.render(few_reports)
    assert "No report in reports/ (bench_rng.json)." in text
    assert "No report in reports/ (netbench*.jsonl)." in text


def test_cli_writes_then_checks(few_reports, tmp_path, capsys):
    out = tmp_path / "BENCHMARKS.md"
    assert main(["benchmarks", "--reports", str(few_reports), "--out", str(out)]) == 0
    assert out.read_text() == benchmarks_doc.render(few_reports)
    assert main(["benchmarks", "--check", "--reports", str(few_reports), "--out", str(out)]) == 0

    edit(few_reports / TINY, lambda d: d["comm"]["server"]["online"].update(rounds=999))
    capsys.readouterr()
    assert main(["benchmarks", "--check", "--reports", str(few_reports), "--out", str(out)]) == 1
    err = capsys.readouterr().err
    line = next(n for n, l in enumerate(benchmarks_doc.render(few_reports).splitlines(), 1) if "| 999 |" in l)
    assert f"line {line}: expected" in err and "secptune benchmarks" in err
    assert "| 328 |" in out.read_text()  # --check wrote nothing


def test_a_broken_report_is_named(few_reports, tmp_path, capsys):
    (few_reports / TINY).write_text('{"model": "tiny-llama",')
    assert main(["benchmarks", "--reports", str(few_reports), "--out", str(tmp_path / "B.md")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("secptune: error: ")
    assert f"reports/{TINY} is not valid JSON" in err[0]
    assert not (tmp_path / "B.md").exists()


def test_a_report_missing_a_field_is_named(few_reports, tmp_path, capsys):
    edit(few_reports / TINY, lambda d: d.pop("ops"))
    assert main(["benchmarks", "--reports", str(few_reports), "--out", str(tmp_path / "B.md")]) == 2
    err = capsys.readouterr().err
    assert f"reports/{TINY}: missing or malformed field" in err and "'ops'" in err


def test_missing_report_directory(tmp_path, capsys):
    assert main(["benchmarks", "--reports", str(tmp_path / "nowhere"), "--out", str(tmp_path / "B.md")]) == 2
    assert "no report directory" in capsys.readouterr().err


def test_revision_is_named_when_recorded(few_reports):
    edit(few_reports / TINY, lambda d: d.update(git_revision="abc1234", git_dirty=True))
    assert f"- `reports/{TINY}` — machine: 2 CPUs, x86_64, torch 2.13.0+cpu, AVX2, load 1.64; revision abc1234 " \
           "with uncommitted changes; command: `" in benchmarks_doc.render(few_reports)


def test_accuracy_runs_cut_off_by_their_time_limit_get_no_verdict(tmp_path):
    """Issue 26's tuned-accuracy runs go on in pieces: while a run is short of its budget the table says
    so and the verdicts are pending; whole budgets give yes or no."""
    root = tmp_path / "reports"
    root.mkdir()
    shutil.copy(REPORTS / "rfa_accuracy.json", root / "rfa_accuracy.json")
    data = json.loads((root / "rfa_accuracy.json").read_text())
    sst2 = data["tasks"]["sst2"]
    sst2["runs"]["exact"]["complete"] = False
    sst2["exact_gains"] = sst2["rfa_within"] = None
    (root / "rfa_accuracy.json").write_text(json.dumps(data))
    text = "\n".join(benchmarks_doc.section_rfa_accuracy(benchmarks_doc.Reports(root)))
    assert "(cut off)" in text and "sst2: exact gains pending" in text and "rfa pending" in text
    edit(root / "rfa_accuracy.json", lambda d: d["tasks"]["sst2"].update(exact_gains=False, rfa_within=True))
    text = "\n".join(benchmarks_doc.section_rfa_accuracy(benchmarks_doc.Reports(root)))
    assert "sst2: exact gains **no**" in text and "rfa yes" in text


def test_an_accuracy_run_stopped_before_its_first_test_counts_its_calls_and_gets_no_difference(tmp_path):
    """A piece killed before its test leaves a checkpoint and no report: the table shows the calls so
    far, and no difference to exact is computed from it (control: a reported run gets one)."""
    import torch

    from research.rfa_accuracy import task_figures

    work = tmp_path / "work"
    for config in ("exact", "softmax"):
        (work / "tune" / f"sst2-{config}").mkdir(parents=True)
    cfg = {"model": "smollm2", "popsize": 20, "budget": 1500, "test_limit": 500, "device": "cpu"}
    torch.save({"config": cfg, "gen": 13}, work / "tune" / "sst2-softmax" / "checkpoint.pt")
    report = {"config": cfg, "totals": {"api_calls": 1500, "wall_s": 1.0},
              "final": {"test": {"zero_shot": 0.5, "tuned": 0.6}, "stopped": "budget"}}
    (work / "tune" / "sst2-exact" / "report.json").write_text(json.dumps(report))
    figures = task_figures(work, "sst2")
    assert figures["runs"]["softmax"]["api_calls"] == 260 and not figures["runs"]["softmax"]["tested"]
    assert "softmax_vs_exact" not in figures and figures["runs"]["rfa"] is None and figures["exact_gains"]
    (work / "tune" / "sst2-softmax" / "report.json").write_text(json.dumps(report))
    assert task_figures(work, "sst2")["softmax_within"] is True  # control
    root = tmp_path / "reports"
    root.mkdir()
    shutil.copy(REPORTS / "rfa_accuracy.json", root / "rfa_accuracy.json")
    edit(root / "rfa_accuracy.json", lambda d: d["tasks"]["sst2"]["runs"].update(softmax=figures["runs"]["softmax"]))
    text = "\n".join(benchmarks_doc.section_rfa_accuracy(benchmarks_doc.Reports(root)))
    assert "| sst2 | softmax | 260 of 1,500 (under way, not tested yet) |" in text


def test_the_earlier_default_rfa_run_is_reported_against_exact(tmp_path):
    """The 0.11-budget SST-2 run that moved the default to 0.03 stays in the section, its difference
    to exact computed from both reports; without its report the paragraph is left out."""
    root = tmp_path / "reports"
    earlier = "rfa_accuracy/work-rfa11/tune/sst2-rfa/report.json"
    for rel in ("rfa_accuracy.json", "rfa_accuracy/prompt_transfer.json", earlier):
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(REPORTS / rel, root / rel)
    edit(root / "rfa_accuracy.json", lambda d: d["tasks"]["sst2"]["runs"]["exact"].update(tuned=0.6))
    edit(root / earlier, lambda d: d["final"]["test"].update(tuned=0.55))
    text = "\n".join(benchmarks_doc.section_rfa_accuracy(benchmarks_doc.Reports(root)))
    assert "to 0.550 on SST-2, -5.0 points from exact" in text and "RFA in 11 of 30 layers" in text
    (root / earlier).unlink()
    assert "budget was 0.11" not in "\n".join(benchmarks_doc.section_rfa_accuracy(benchmarks_doc.Reports(root)))


def test_the_accuracy_bars_count_examples_so_a_difference_of_exactly_one_point_is_within(tmp_path):
    """0.620 against exact's 0.630 on 500 examples is 5 examples, 1 point: within the bar, although
    the float difference is 0.010000000000000009; 0.618 (6 examples) is not."""
    from research.rfa_accuracy import task_figures

    work = tmp_path / "work"
    cfg = {"model": "smollm2", "popsize": 20, "budget": 1500, "test_limit": 500, "device": "cpu"}

    def report(config, tuned):
        (work / "tune" / f"sst2-{config}").mkdir(parents=True, exist_ok=True)
        r = {"config": cfg, "totals": {"api_calls": 1500, "wall_s": 1.0},
             "final": {"test": {"zero_shot": 0.58, "tuned": tuned}, "stopped": "budget"}}
        (work / "tune" / f"sst2-{config}" / "report.json").write_text(json.dumps(r))

    report("exact", 0.63)  # a gain of exactly 5 points: the SST-2 bar, met
    report("rfa", 0.62)
    figures = task_figures(work, "sst2")
    assert figures["rfa_within"] is True and figures["exact_gains"] is True
    report("rfa", 0.618)
    assert task_figures(work, "sst2")["rfa_within"] is False


def test_the_secure_check_counts_a_wrapped_row_as_disagreeing_even_when_its_label_matches(tmp_path):
    """Scores of 3e9 pick the oracle's label half the time by chance: a sentence agrees only when its
    scores are within the stated tolerance too, and the section names the sentence (control: the same
    row within tolerance agrees)."""
    from research.rfa_accuracy import secure_check

    def results(wild: list[float]):
        for name, rows in (("oracle_check", [[20.7, 18.6], [16.0, 17.0]]), ("secure_check", [wild, [16.01, 17.02]])):
            (tmp_path / name).mkdir(exist_ok=True)
            (tmp_path / name / "result.json").write_text(json.dumps(
                {"scores": rows, "pred": [max(range(2), key=r.__getitem__) for r in rows], "accuracy": 0.5, "wall_s": 1.0,
                 "range_events": {"calls": [0]}, "range_warnings": {"attention_logit": 188}}))

    results([3.08e9, -6.3e8])
    chk = secure_check(tmp_path)
    assert chk["same_prediction"] == 2 and chk["agree"] == 1 and chk["scores_off"] == [0] and not chk["meets_bar"]
    text = benchmarks_doc.secure_check_text(chk)
    assert "on 1 of 2" in text and "Scores off in sentence 0" in text and "188 values outside the attention_logit range" in text
    results([20.75, 18.62])  # control: 0.2 % off
    assert secure_check(tmp_path)["agree"] == 2 and "Scores off" not in benchmarks_doc.secure_check_text(secure_check(tmp_path))


def test_the_preparation_section_says_whether_the_ten_minute_bound_holds():
    assert benchmarks_doc.prepare_verdict(1271.0) == "**no**, 21.2 min (2.1× the bound)"
    assert benchmarks_doc.prepare_verdict(540.0) == "yes (9.0 min)"  # control


def test_the_preparation_section_shows_the_avx2_machine_beside_the_main_report(tmp_path):
    root = tmp_path / "reports"
    (root / "prepare").mkdir(parents=True)
    main_report = json.loads((REPORTS / "prepare/smollm2.json").read_text())
    (root / "prepare/smollm2.json").write_text(json.dumps({**main_report, "command_wall_s": 540.0}))
    text = "\n".join(benchmarks_doc.section_prepare(benchmarks_doc.Reports(root)))
    assert "yes (9.0 min)" in text and "smollm2_avx2" not in text  # control: no second machine, no second table
    (root / "prepare/smollm2_avx2.json").write_text(json.dumps({**main_report, "command_wall_s": 1271.0}))
    text = "\n".join(benchmarks_doc.section_prepare(benchmarks_doc.Reports(root)))
    assert "yes (9.0 min)" in text and "**no**, 21.2 min" in text and "reports/prepare/smollm2_avx2.json" in text


def test_a_missed_accuracy_bound_says_which_side_of_exact_it_falls(tmp_path):
    root = tmp_path / "reports"
    root.mkdir()
    report = json.loads((REPORTS / "rfa_accuracy.json").read_text())
    agnews = report["tasks"]["agnews"]

    def verdict_line(rfa_vs_exact, rfa_within):
        agnews.update(rfa_vs_exact=rfa_vs_exact, rfa_within=rfa_within)
        (root / "rfa_accuracy.json").write_text(json.dumps(report))
        lines = benchmarks_doc.rfa_accuracy_body(benchmarks_doc.Reports(root).get("rfa_accuracy.json"))
        return next(line for line in lines if line.startswith("sst2: exact gains")).split("agnews: ")[1]

    assert "rfa **no** (above exact)" in verdict_line(0.026, False)
    assert "rfa **no** (below exact)" in verdict_line(-0.026, False)
    assert "rfa yes." in verdict_line(-0.004, True)  # control: within the bound, no side named
