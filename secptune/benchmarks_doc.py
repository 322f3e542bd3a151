"""BENCHMARKS.md, generated from the measurement reports in ``reports/``.

Every figure in BENCHMARKS.md comes from a report file, so the document cannot
drift from the measurements: ``secptune benchmarks`` rewrites it, and
``secptune benchmarks --check`` (CI) fails while the committed file differs from
what the reports say.  Each table names its report(s), the machine recorded in
them ("not recorded" when a report has no ``machine`` field) and the command that
produced them when the report records one.  A section whose reports are absent
says so instead of disappearing.  The history of how the figures came about is
in docs/history.md.
"""

from __future__ import annotations

import json
import re
from contextlib import contextmanager
from pathlib import Path

from mpc import costmodel
from mpc.roles import ROLES
from secptune.errors import SecptuneError
from secptune.privacy.compare import markdown as privacy_markdown

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_REPORTS = ROOT / "reports"
DEFAULT_OUT = ROOT / "BENCHMARKS.md"
NOT_RECORDED = "not recorded"
OPS = ("linear", "attention", "norm", "activation", "other")
LINKS = {link.name: link for link in costmodel.LINKS}


class ReportError(SecptuneError):
    """A report in reports/ cannot be read or lacks a field the document needs."""


class Report(dict):
    """One parsed report and the name it is cited by (``reports/<relative path>``)."""

    def __init__(self, name: str, data: dict):
        super().__init__(data)
        self.name = name


class Reports:
    """The report directory; every file is parsed once, and a bad file names itself."""

    def __init__(self, root: Path):
        self.root = Path(root)
        if not self.root.is_dir():
            raise ReportError(f"no report directory {self.root}: give --reports DIR (the checkout's reports/)")
        self._cache: dict[str, Report] = {}

    def _cite(self, path: Path) -> str:
        return "reports/" + path.relative_to(self.root).as_posix()

    def get(self, rel: str) -> Report | None:
        """The report at ``rel`` (a JSON object), or None when the file is absent."""
        path = self.root / rel
        if not path.is_file():
            return None
        if rel not in self._cache:
            try:
                data = json.loads(path.read_text())
            except (ValueError, UnicodeDecodeError) as exc:
                raise ReportError(f"{self._cite(path)} is not valid JSON ({exc}); fix or remove it") from exc
            if not isinstance(data, dict):
                raise ReportError(f"{self._cite(path)} is not a JSON object; fix or remove it")
            self._cache[rel] = Report(self._cite(path), data)
        return self._cache[rel]

    def lines(self, rel: str) -> list[Report]:
        """The records of a JSON-lines report, or [] when the file is absent."""
        path = self.root / rel
        if not path.is_file():
            return []
        records = []
        for number, line in enumerate(path.read_text().splitlines(), 1):
            if not line.strip():
                continue
            try:
                data = json.loads(line)
            except ValueError as exc:
                raise ReportError(f"{self._cite(path)} line {number} is not valid JSON ({exc}); fix or remove it") from exc
            records.append(Report(f"{self._cite(path)} line {number}", data))
        return records

    def glob(self, pattern: str) -> list[Report]:
        """Every JSON report matching ``pattern``, sorted by path."""
        return [self.get(p.relative_to(self.root).as_posix()) for p in sorted(self.root.glob(pattern)) if p.is_file()]


@contextmanager
def reading(report: Report):
    """Turn a missing or mistyped field into an error that names the report."""
    try:
        yield
    except (KeyError, TypeError, IndexError, ValueError, ZeroDivisionError) as exc:
        raise ReportError(f"{report.name}: missing or malformed field ({type(exc).__name__}: {exc}); "
                          "re-run the benchmark that wrote it") from exc


# ---------------------------------------------------------------- formatting


def machine_text(report: dict) -> str:
    """The report's ``machine`` field in words, or "not recorded"."""
    machine = report.get("machine")
    if not machine:
        return NOT_RECORDED
    if not isinstance(machine, dict):
        return str(machine)
    words = []
    for key, value in machine.items():
        if key in ("cpu_count", "cpus"):
            words.append(f"{value} CPUs")
        elif key in ("processor", "platform", "cpu_capability", "gpu", "device"):
            words.append(str(value))
        elif key == "load_avg_1m":
            words.append(f"load {value}")
        elif key == "load_avg" and isinstance(value, list):
            words.append("load " + "/".join(f"{v:.1f}" for v in value))
        else:
            words.append(f"{key} {value}")
    return ", ".join(words)


def link_words() -> str:
    return "; ".join(f"{l.name} {l.bandwidth_bps / 1e6:g} Mbit/s, {l.latency_s * 1e3:g} ms one-way" for l in LINKS.values())


def table(header: list[str], rows: list[list]) -> list[str]:
    out = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    out += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return out


def sources(reports: list[Report]) -> list[str]:
    """One line per report: its name, machine and, where recorded, its code revision and command."""
    out = []
    for r in reports:
        line = f"- `{r.name}` — machine: {machine_text(r)}"
        revision = r.get("git_revision") or r.get("git")
        if revision:
            line += f"; revision {revision}" + (" with uncommitted changes" if r.get("git_dirty") else "")
        command = r.get("command")
        if command:
            line += f"; command: `{command}`"
        out.append(line)
    return out + [""]


def num(n) -> str:
    return f"{int(round(n)):,}"


def mb(n) -> str:
    return f"{n / 1e6:,.1f}"


def gb(n) -> str:
    return f"{n / 1e9:,.2f}"


def sec(s) -> str:
    return f"{s:,.1f}" if s < 1000 else f"{s:,.0f}"


def ratio(x) -> str:
    return f"{x:,.1f}×"


def score(x) -> str:
    return "—" if x is None else f"{x:.3f}"


def points(new, old) -> str:
    return f"{(new - old) * 100:+.1f}"


def warnings_total(counts: dict | None) -> str:
    return num(sum(counts.values())) if counts else "0"


def stem(report: Report, prefix: str) -> str:
    return Path(report.name).stem.removeprefix(prefix)


def absent(what: str) -> list[str]:
    return [f"No report in reports/ ({what}).", ""]


# ---------------------------------------------------------------- forward cost


def forward_scope(r: Report) -> tuple[str, dict, dict, dict, float]:
    """(scope, comm, ops, links_s, wall_s) of a bench_forward report: the full-model
    extrapolation when the run had --layers, else the measured forward."""
    ext = r.get("extrapolation")
    if ext:
        total = ext["total"]
        scope = f"{ext['layers']} layers (extrapolated from {r['layers_run']})"
        comm = {p: total["comm"][p] for p in ROLES}
        return scope, comm, total["ops"], total["links_s"], total["wall_s"]
    comm = {"owner": r["comm"]["owner"], "server": r["comm"]["server"]["online"], "dealer": r["comm"]["dealer"]}
    return f"{r['layers_run']} layers (measured)", comm, r["ops"], r["links_s"], r["wall_s"]


def config_text(r: Report) -> str:
    att = r["attention"]
    words = [att["kind"] if att["kind"] == "softmax" else f"RFA {att['features']} r={att['num_features']}"]
    words.append("fixed masks" if r.get("fixed_weights") else "Beaver")
    if r.get("ring_matmul"):
        words.append(f"matmul {r['ring_matmul']}")
    if "range_samples" in r:
        words.append(f"range samples {r['range_samples']}")
    return ", ".join(words)


def section_forward(reports: Reports) -> list[str]:
    runs = reports.glob("bench_forward_*.json")
    out = [
        "## Forward cost by op and link",
        "",
        "What does one secure forward pass cost? `bench_forward` runs one forward after the session is set up "
        "(weights shared and masked once) and counts the bytes and rounds each party sent at the transport, per op. "
        "With `--layers N` it also runs 0 layers and extrapolates to the full model (exact for bytes and rounds: "
        "the layers are identical). \"Online\" is the owner↔server traffic each computing party sends (the server's "
        "count; the owner sends the same plus its requests to the dealer); the dealer's traffic can be produced "
        f"ahead of time. + LINK: the time `mpc.costmodel` adds for the online traffic on its links ({link_words()}). "
        "Wall times depend on the machine and its load; bytes and rounds do not. "
        "Reports named `_step1` … `_step5`, `_sigmoid`: the same command at earlier commits (docs/history.md).",
        "",
    ]
    if not runs:
        return out + absent("bench_forward_*.json")
    rows = []
    for r in runs:
        with reading(r):
            scope, comm, _, links, wall = forward_scope(r)
            rows.append([f"`{stem(r, 'bench_forward_')}`", r["model"], f"{r['seq']} × {r['batch']}", config_text(r),
                         scope, gb(comm["server"]["bytes"]), num(comm["server"]["rounds"]), gb(comm["dealer"]["bytes"]),
                         sec(links["LAN"]), sec(links["WAN"]), sec(wall), f"{r['plain_wall_s']:.2f}",
                         f"{r['rel_err']:.1e}", mb(r["setup"]["online"]["bytes"])])
    out += ["### Whole forward", ""]
    out += table(["report", "model", "seq × batch", "configuration", "scope", "online GB / party", "online rounds",
                  "dealer GB", "+ LAN s", "+ WAN s", "secure wall s", "plain wall s (measured forward)",
                  "rel. error vs oracle", "set-up online MB (the run's layers, once)"], rows)
    out += ["", "Per layer, online MB / rounds per party by op (reports with `--layers`):", ""]
    rows = []
    for r in runs:
        if not r.get("extrapolation"):
            continue
        with reading(r):
            per = r["extrapolation"]["per_layer"]
            cells = [f"{mb(per['ops'][op]['bytes'])} / {num(per['ops'][op]['rounds'])}" for op in OPS[:4]]
            outside = r["extrapolation"]["outside_layers"]["comm"]["server"]
            rows.append([f"`{stem(r, 'bench_forward_')}`", *cells, f"{mb(per['comm']['server']['bytes'])} / "
                         f"{num(per['comm']['server']['rounds'])}", mb(per["comm"]["dealer"]["bytes"]),
                         f"{mb(outside['bytes'])} / {num(outside['rounds'])}"])
    out += table(["report", *OPS[:4], "total online", "dealer MB", "outside the layers (once per forward)"], rows)
    out += ["", "### By op and link", "",
            "Per report, each op's online bytes and rounds (scope as above), the dealer's bytes for it, the owner's "
            "wall time in it, and what each link adds for its online traffic.", ""]
    for r in runs:
        with reading(r):
            scope, _, ops, _, _ = forward_scope(r)
            rows = []
            for op in OPS:
                o = ops[op]
                added = {name: link.added_s(o["bytes"], o["rounds"]) for name, link in LINKS.items()}
                rows.append([op, num(o["bytes"]), num(o["rounds"]), num(o["dealer_bytes"]), sec(o["wall_s"]),
                             *(sec(added[name]) for name in LINKS)])
        out += [f"`{stem(r, 'bench_forward_')}` — {r['model']}, {config_text(r)}, {scope}:", ""]
        out += table(["op", "online bytes", "rounds", "dealer bytes", "wall s", *(f"+ {n} s" for n in LINKS)], rows)
        out.append("")
    return out + ["Sources:", ""] + sources(runs)


def section_ringmatmul(reports: Reports) -> list[str]:
    local = [r for r in reports.glob("bench_ringmatmul_*.json") if "secure" not in r]
    secure = [r for r in reports.glob("bench_ringmatmul_*.json") if "secure" in r]
    out = [
        "## Exact Z_2^64 products: limbs vs torch's int64 kernel",
        "",
        "Is `mpc.ring`'s float64-limb product faster than the int64 matmul CrypTen uses? Local: one product of the "
        "shape, best of the run's repeats, checked bit for bit (`exact`). Secure: an owner-shared matrix times a "
        "server-shared one in a three-process session, every party's products on each kernel.",
        "",
    ]
    if not local and not secure:
        return out + absent("bench_ringmatmul_*.json")
    rows = []
    for r in local:
        with reading(r):
            rows.append([f"`{stem(r, 'bench_ringmatmul_')}`", " @ ".join("×".join(map(str, s)) for s in r["shape"]),
                         r["threads"], f"{r['int64_s']:.3f}", f"{r['ring_s']:.3f}", f"{r['float64_s']:.3f}",
                         ratio(r["speedup_vs_int64"]), r["exact"], r["load_avg_1m"]])
    out += table(["report", "shape", "threads", "int64 s", "limbs s", "one float64 GEMM s", "limbs speed-up",
                  "exact", "load"], rows) + [""]
    rows = []
    for r in secure:
        with reading(r):
            for kind in ("beaver", "fixed"):
                rows.append([f"`{stem(r, 'bench_ringmatmul_')}`", kind, mb(r["secure"]["torch"][f"{kind}_online_bytes"]),
                             f"{r['secure']['torch'][f'{kind}_s']:.2f}", f"{r['secure']['limbs'][f'{kind}_s']:.2f}",
                             ratio(r["limbs_speedup_vs_int64"][kind]), r["load_avg_1m"]])
    if rows:
        out += table(["report", "product", "online MB / party", "int64 s", "limbs s", "limbs speed-up", "load"], rows)
        out.append("")
    return out + ["Sources:", ""] + sources(local + secure)


# ---------------------------------------------------------------- security


def section_security(reports: Reports) -> list[str]:
    rng = reports.get("bench_rng.json")
    check = reports.get("bench_forward_roberta-large-shape_L1_rfa_rangecheck.json")
    out = [
        "## Security: cryptographic masks and the range check",
        "",
        "What do the AES-256-CTR masks (`mpc.prg`) and the sampled range check cost? `bench_rng` times ring-element "
        "draws and runs the same secure forward with the AES keystream, with torch's Mersenne Twister (test-only "
        "switch) and with an older checkout (the baseline), alternating; bytes and rounds are per forward.",
        "",
    ]
    if rng is None:
        return out + absent("bench_rng.json")
    with reading(rng):
        t = rng["throughput"]
        out += table(["ring elements drawn", "AES-256-CTR s", "AES GB/s", "Mersenne Twister s", "MT GB/s"],
                     [[num(t["elements"]), f"{t['aes_ctr_s']:.3f}", f"{t['aes_ctr_gb_per_s']:.2f}",
                       f"{t['mersenne_twister_s']:.3f}", f"{t['mersenne_twister_gb_per_s']:.2f}"]]) + [""]
        fwd = rng["forward"]
        labels = {"aes_ctr": "AES-256-CTR", "mersenne_twister": "Mersenne Twister",
                  "baseline": f"baseline ({fwd.get('baseline_dir_commit', 'older checkout')})"}
        rows = []
        for key, label in labels.items():
            f = fwd[key]
            rows.append([label, ", ".join(f"{w:.1f}" for w in f["wall_s"]),
                         f"{num(f['online']['owner']['bytes'])} / {num(f['online']['owner']['rounds'])}",
                         f"{num(f['online']['server']['bytes'])} / {num(f['online']['server']['rounds'])}",
                         f"{num(f['dealer']['bytes'])} / {num(f['dealer']['rounds'])}",
                         gb(f["extrapolated_total"]["server"]["bytes"])])
        out += table(["randomness", "forward wall s (each run)", "owner online bytes / rounds",
                      "server online bytes / rounds", "dealer bytes / rounds", "full model online GB / party"], rows)
        out += ["", f"Best-of-runs wall ratio AES / MT: {fwd['wall_ratio_aes_over_mt']}; AES / baseline: "
                    f"{fwd['wall_ratio_aes_over_baseline']}. Online traffic identical AES vs MT: "
                    f"{fwd['online_identical_aes_mt']}.", ""]
    if check is not None:
        with reading(check):
            off = rng["forward"]["aes_ctr"]
            owner_on = check["comm"]["owner"]["online"]
            total_on = check["extrapolation"]["total"]["comm"]["owner"]["bytes"]
            total_off = off["extrapolated_total"]["owner"]["bytes"]
            rows = [
                ["owner online bytes, 1-layer forward", num(off["online"]["owner"]["bytes"]), num(owner_on["bytes"]),
                 f"{owner_on['bytes'] - off['online']['owner']['bytes']:+,}"],
                ["owner online rounds, 1-layer forward", num(off["online"]["owner"]["rounds"]), num(owner_on["rounds"]),
                 f"{owner_on['rounds'] - off['online']['owner']['rounds']:+,}"],
                ["owner bytes, full model (extrapolated)", num(total_off), num(total_on),
                 f"{total_on - total_off:+,.0f} ({(total_on / total_off - 1) * 100:+.1f} %)"],
            ]
        out += ["The sampled range check (default on), against the `--range-samples 0` AES run above "
                "(same forward):", ""]
        out += table(["", "range check off", f"on ({check['range_samples']} samples)", "difference"], rows)
        out += ["", f"The range bit in this run: {check.get('range_event')}; secure vs oracle relative error "
                    f"{check['rel_err']:.1e}.", ""]
    return out + ["Sources:", ""] + sources([rng] + ([check] if check is not None else []))


# ---------------------------------------------------------------- tuning


def tune_row(r: Report) -> list:
    """One run directory's report.json as a table row (API calls, accuracy, cost per call)."""
    c, f, pc = r["config"], r["final"], r["per_call"]
    mode = c["mode"] + (" exact" if c.get("exact") else "")
    return [f"`{Path(r.name).parent.name}`", c["task"], mode, c["device"], f["metric"], num(r["totals"]["api_calls"]),
            num(c["budget"]), c["prompt_len"], c["intrinsic_dim"], c["popsize"], c["alpha"],
            score(f["test"]["zero_shot"]), score(f["test"]["tuned"]), points(f["test"]["tuned"], f["test"]["zero_shot"]),
            f"{score(f['dev']['zero_shot'])} → {score(f['dev']['tuned'])}", f["best_generation"],
            num(pc["latency_s"] * 1000), mb(pc["bytes"]), sec(r["totals"]["wall_s"])]


TUNE_HEADER = ["run", "task", "mode", "device", "metric", "API calls", "budget", "prompt len", "d", "popsize", "α",
               "test zero-shot", "test tuned", "gain (points)", "dev zero-shot → tuned", "best gen", "ms / call",
               "owner MB / call", "wall s"]


def tune_runs(reports: Reports, folder: str) -> tuple[list[str], list[Report]]:
    runs = reports.glob(f"{folder}/*/report.json")
    rows = []
    for r in runs:
        with reading(r):
            rows.append(tune_row(r))
    return (table(TUNE_HEADER, rows) + [""] if rows else absent(f"{folder}/*/report.json")), runs


def same_search(a: Report, b: Report) -> bool:
    keys = ("task", "model", "k", "seed", "prompt_len", "intrinsic_dim", "popsize", "alpha", "budget")
    return all(a["config"].get(k) == b["config"].get(k) for k in keys)


def secure_vs_oracle(runs: list[Report]) -> list[str]:
    """Per-generation losses of each secure run beside the plain run of the same search (its oracle)."""
    out = []
    for sec_run in (r for r in runs if r["config"]["mode"] == "secure"):
        oracle = next((r for r in runs if r["config"]["mode"] == "plain" and not r["config"].get("exact")
                       and same_search(r, sec_run)), None)
        if oracle is None:
            continue
        with reading(sec_run), reading(oracle):
            plain = {g["gen"]: g for g in oracle["generations"]}
            rows = [[g["gen"], f"{g['best_loss']:.5f}", f"{plain[g['gen']]['best_loss']:.5f}",
                     f"{g['mean_loss']:.5f}", f"{plain[g['gen']]['mean_loss']:.5f}",
                     f"{score(g.get('dev_accuracy'))} / {score(plain[g['gen']].get('dev_accuracy'))}"]
                    for g in sec_run["generations"] if g["gen"] in plain]
            slow = sec_run["per_call"]["latency_s"] / oracle["per_call"]["latency_s"]
        out += [f"`{Path(sec_run.name).parent.name}` against its oracle `{Path(oracle.name).parent.name}` "
                f"(same search; secure / plain time per API call: {ratio(slow)}):", ""]
        out += table(["gen", "secure best loss", "plain best loss", "secure mean loss", "plain mean loss",
                      "dev accuracy secure / plain"], rows) + [""]
    return out


def section_tuning(reports: Reports) -> list[str]:
    out = [
        "## Tuning accuracy per task",
        "",
        "Does forward-only tuning (CMA-ES over a prompt, `secptune tune`) beat zero-shot, and does the secure run "
        "match its plaintext oracle? One API call is one candidate prompt scored on all training examples; test "
        "and dev scores are the run's metric. `plain exact` is the unmodified model in float32; `plain` runs the "
        "secure run's approximations in float64 (the oracle); `secure` is the MPC run. Curves: each run "
        "directory's `curves.png`.",
        "",
        "### GPU runs (`reports/tune-gpu/`)",
        "",
    ]
    text, gpu = tune_runs(reports, "tune-gpu")
    out += text + ["### CPU runs (`reports/tune/`)", ""]
    text, cpu = tune_runs(reports, "tune")
    out += text + secure_vs_oracle(cpu)
    out += ["### The README's main job (`bash scripts/run.sh`, `reports/readme_job/`)", "",
            "With no `--mode` on a CPU, `secptune tune` runs a short secure run and the plain run at the same "
            "settings (SmolLM2, SST-2, k = 1, popsize 2, 3 generations) and prints them side by side "
            "(`compare.png`: both runs' curves). Per API call, every wire: what the owner sent, its online part, "
            "and what the dealer sent (to both parties).", ""]
    text, job = tune_runs(reports, "readme_job")
    out += text + secure_vs_oracle(job)
    rows = []
    for r in job:
        with reading(r):
            pc = r["per_call"]
            rows.append([f"`{Path(r.name).parent.name}`", r["config"]["mode"], sec(pc["latency_s"]), mb(pc["bytes"]),
                         mb(pc.get("online_bytes", 0)), mb(pc["dealer_bytes"]) if pc.get("dealer_bytes") is not None
                         else "—", num(round(pc["rounds"]))])
    if rows:
        out += table(["run", "mode", "s / call", "owner MB / call", "online MB / call", "dealer MB / call",
                      "owner rounds / call"], rows) + [""]
    return out + ["Sources (run directories: `report.json`, `report.md`, `curves.png`):", ""] + sources(gpu + cpu + job)


def one_report(reports: Reports, rel: str, intro: list[str], body) -> list[str]:
    """A section fed by one report: ``intro``, then ``body(report)``'s lines and the report's source line;
    or ``intro`` and a line saying the report is absent."""
    r = reports.get(rel)
    if r is None:
        return intro + absent(rel)
    with reading(r):
        lines = body(r)
    return intro + lines + ["Sources:", ""] + sources([r])


def baseline_accuracy_body(r: Report) -> list[str]:
    rows = []
    for task, t in r["tasks"].items():
        cells = [f"{score(t[m]['test'])} ({t[m]['epochs']} ep, batch {t[m]['batch']}, best dev "
                 f"{score(t[m]['best_dev'])})" for m in ("sft", "prompt-grad")]
        rows.append([task, t["metric"], t["n_test"], score(t["zero-shot"]["test"]), *cells])
    runs = [f"- `{run['command']}`" for run in r.get("runs", [])]
    out = table(["task", "metric", "test n", "zero-shot", "sft", "prompt-grad"], rows) + [""]
    return out + (["The runs that wrote it:", ""] + runs + [""] if runs else [])


def section_baseline_accuracy(reports: Reports) -> list[str]:
    intro = [
        "### Gradient baselines in plaintext",
        "",
        "What do gradient methods reach on the same k-shot splits? Full fine-tuning (`sft`) and gradient prompt "
        "tuning (`prompt-grad`) with Hugging Face in float32; the best dev state is tested. Each cell: test score "
        "(epochs, batch, best dev).",
        "",
    ]
    return one_report(reports, "baseline_accuracy.json", intro, baseline_accuracy_body)


# ---------------------------------------------------------------- RFA fidelity


def accuracy_rows(acc: dict, configs: list[str], baseline: str) -> list[list]:
    rows = []
    for name in configs:
        cells = [f"`{name}`"]
        for task in acc:
            res = acc[task]["results"].get(name)
            base = acc[task]["results"][baseline]["accuracy"]
            if res is None:
                cells += ["—", "—"]
                continue
            delta = "" if name == baseline else f" ({points(res['accuracy'], base)})"
            cells += [f"{score(res['accuracy'])}{delta}", score(res.get("agreement_with_softmax"))]
        cells.append(warnings_total(acc[next(iter(acc))]["results"].get(name, {}).get("range_warnings")))
        rows.append(cells)
    return rows


def accuracy_header(acc: dict) -> list[str]:
    cols = ["configuration"]
    for task in acc:
        cols += [f"{task} ({acc[task]['examples']} ex.)", "agree"]
    return cols + [f"range warnings ({next(iter(acc))})"]


def accuracy_table(acc: dict) -> list[str]:
    """Accuracy per task of every configuration in ``acc``, against exact softmax."""
    return table(accuracy_header(acc), accuracy_rows(acc, list(next(iter(acc.values()))["results"]), "softmax-exact"))


def fidelity_body(fid: Report) -> list[str]:
    out = accuracy_table(fid["accuracy"]) + [""]
    rows = []
    for name, errors in fid["layer_error"].items():
        vals = [e for e in errors if e is not None]
        rows.append([f"`{name}`", f"{len(vals)} of {len(errors)}", f"{sum(vals) / len(vals):.3g}",
                     f"{min(vals):.3g} – {max(vals):.3g}"])
    out += ["Per-layer attention error ‖RFA − softmax‖ / ‖softmax‖ on the same inputs (layers running "
            "RFA with a defined output):", ""]
    out += table(["configuration", "layers", "mean", "min – max"], rows) + [""]
    rows = [[f"`{name}`", mb(c["attention_bytes"]), num(c["attention_rounds"]), mb(c["forward_bytes"]),
             num(c["forward_rounds"])] for name, c in fid["mpc_cost"].items()]
    out += ["Cost under MPC (tiny-llama secure forward, owner's online traffic):", ""]
    out += table(["configuration", "attention MB", "attention rounds", "forward MB", "forward rounds"], rows) + [""]
    for name, choice in fid.get("server_choice", {}).items():
        out += [f"Server's choice for `{name}`: RFA in layers {', '.join(map(str, choice['rfa_layers']))} "
                f"(KL budget {choice['budget']}, public KL {choice['kl']:.3f}).", ""]
    rows = []
    for task, t in fid.get("tuned", {}).items():
        for a in (k for k in t if k not in ("settings", "cross", "zero_shot_from", "note")):
            rows.append([task, a, t[a]["generations"], score(t[a]["test"]["zero_shot"]),
                         score(t[a]["test"]["tuned"]), t[a].get("stopped") or "—"])
        rows += [[task, f"cross: {k}", "", "", score(v), ""] for k, v in t["cross"].items()]
    if rows:
        out += ["After tuning (CMA-ES against each attention; prompts in `reports/rfa_tuned_prompts/`, "
                "the run's log in `reports/rfa_tune_check.log`):", ""]
        out += table(["task", "attention", "generations", "test zero-shot", "test tuned", "stopped"], rows) + [""]
    return out + ["![per-layer error](reports/rfa_fidelity.png)", ""]


def section_rfa(reports: Reports) -> list[str]:
    intro = [
        "## RFA fidelity",
        "",
        "How close is random-feature attention to the model's softmax attention, in accuracy and per layer, and "
        "what does it cost? Accuracy is zero-shot in plain mode (the secure run's approximations in float64); "
        "\"agree\" is the fraction of predictions equal to exact softmax's; range warnings count inputs outside an "
        "approximation's range.",
        "",
        "### Zero-shot accuracy by attention configuration (`rfa_fidelity.json`)",
        "",
    ]
    out = one_report(reports, "rfa_fidelity.json", intro, fidelity_body)
    budget = ["### The default's KL budget, chosen on validation text (`rfa_budget.json`)", ""]
    out += one_report(reports, "rfa_budget.json", budget, budget_body)
    layers = ["### Which layers can run RFA: hybrids rfa-N (`rfa_layers.json`)", "",
              "rfa-N runs fitted RFA in the N layers whose RFA changes the next-token distribution least on public "
              "text, the secure run's softmax elsewhere.", ""]
    out += one_report(reports, "rfa_layers.json", layers, layers_body)
    activations = ["### Activation approximations (`activation_fidelity.json`)", "",
                   "Zero-shot accuracy with SiLU/GeLU as the sigmoid chain or the one-opening Fourier series, "
                   "softmax attention.", ""]
    return out + one_report(reports, "activation_fidelity.json", activations, activations_body)


def budget_body(r: Report) -> list[str]:
    acc = r["accuracy"]
    rows = accuracy_rows(acc, list(next(iter(acc.values()))["results"]), "softmax-exact")
    for row in rows:
        choice = r["choices"].get(row[0].strip("`"))
        row[1:1] = [", ".join(map(str, choice["rfa_layers"])), f"{choice['public_kl']:.3f}"] if choice else ["—", "0"]
    header = accuracy_header(acc)
    header[1:1] = ["server's RFA layers", "public KL"]
    out = [f"Split: {r['split']}. Rule: {r['rule']} (tolerance {r['tolerance']}); chosen budget: "
           f"**{r['chosen_budget']}**.", ""]
    return out + table(header, rows) + [""]


def layers_body(r: Report) -> list[str]:
    tasks = list(next(iter(r["configs"].values()))["accuracy"])
    rows = []
    for name, c in r["configs"].items():
        cells = [f"`{name}`", f"{c['public_kl']:.4f}"]
        for task in tasks:
            cells += [score(c["accuracy"][task]["validation"]), score(c["accuracy"][task]["test"])]
        rows.append(cells + [warnings_total(c.get("range_warnings"))])
    header = ["configuration", "public KL"] + [f"{t} {s}" for t in tasks for s in ("val", "test")]
    out = [f"Device: {r.get('device', NOT_RECORDED)}; {r['examples_per_split']} examples per split.", ""]
    out += table(header + ["range warnings"], rows) + [""]
    for key in ("rule_choice", "chosen"):
        c = r[key]
        out += [f"`{key}`: {c['count']} layers ({', '.join(map(str, c['rfa_layers']))}) — {c['rule']}.", ""]
    rows = [[task, a, t[a]["generations"], score(t[a]["test"]["zero_shot"]), score(t[a]["test"]["tuned"])]
            for task, t in r.get("tuned", {}).items() for a in t]
    if rows:
        out += table(["task", "attention", "generations", "test zero-shot", "test tuned"], rows) + [""]
    return out + ["![layer damage](reports/rfa_layers.png)", ""]


def activations_body(r: Report) -> list[str]:
    acc = r["accuracy"]
    dev = [[name, *(f"{acc[t]['results'][name]['max_score_deviation']:.3f}" for t in acc)]
           for name in next(iter(acc.values()))["results"] if name != "softmax-exact"]
    out = accuracy_table(acc) + ["", "Largest score deviation from the exact model:", ""]
    out += table(["configuration", *acc], dev) + [""]
    return out + [f"Calibrated activation bounds per layer: {', '.join(f'{b:g}' for b in r['act_bounds'])}.", ""]


def smollm2_body(r: Report) -> list[str]:
    out = table(["check", "result"], [
        ["examples × prompt length, batch", f"{r['examples']} × {r['prompt_len']}, batch {r['batch_size']}"],
        ["plain exact vs transformers (max abs)", f"{r['exact_vs_transformers_max_abs']:.1e}"],
        ["plain approximate vs plain exact (max abs)", f"{r['approx_vs_exact_max_abs']:.3f}"],
        ["secure vs plain approximate (max abs / max score)", f"{r['secure_vs_plain_rel']:.1e}"],
        ["range warnings", warnings_total(r["range_warnings"])],
        ["wall s: secure / plain approximate", f"{sec(r['secure_s'])} / {sec(r['plain_approx_s'])}"],
    ]) + [""]
    rows = [[p, gb(c["online"]["bytes"]), num(c["online"]["rounds"]), gb(c["dealer"]["bytes"]),
             num(c["dealer"]["rounds"])] for p, c in r["comm"].items()]
    return out + table(["party", "online GB", "online rounds", "dealer-channel GB", "dealer-channel rounds"], rows) + [""]


def section_smollm2_check(reports: Reports) -> list[str]:
    intro = ["### SmolLM2: secure vs oracle vs transformers (`smollm2_check.json`)", "",
             "Real SST-2 sentences with a random prompt: plain exact against Hugging Face, the approximations "
             "against exact, secure against the approximations (the bound is `tests/test_smollm2.py`'s).", ""]
    return one_report(reports, "smollm2_check.json", intro, smollm2_body)


def f32_oracle_body(r: Report) -> list[str]:
    rows = []
    for task, t in r["tasks"].items():
        ps = t["per_sequence_s"]
        rows.append([task, f"{t['test_agreement']:.2%} of {t['test_examples']} ({t['test_flips']} flips)",
                     f"{t['max_rel_loss_diff']:.1e} ({t['candidates_scored_by_both']} candidates, {t['generations']} gens)",
                     f"{t['test_max_rel_score_diff']:.1e}", f"{ps['float32'] * 1e3:.0f} / {ps['float64'] * 1e3:.0f}",
                     ratio(t["speedup"]), machine_text(t),
                     "yes" if t["meets_bar"] else "**no**"])
    bar = r["bar"]
    return table(["task", "same prediction (test)", "max relative loss difference", "max relative score difference",
                  "ms per sequence float32 / float64", "speed-up", "machine", "meets the bar"], rows) + [
        "", f"Bar: the same prediction on ≥ {bar['test_agreement']:.0%} of the test examples and every candidate's "
            f"loss within {bar['max_rel_loss_diff']:g} relative. Times: median per sequence over the training calls "
            f"after the first (popsize × 2k sequences each), both precisions in the same run.", ""]


def rfa_accuracy_body(r: Report) -> list[str]:
    rows = []
    for task, t in r["tasks"].items():
        for config, run in t["runs"].items():
            if run is None:
                rows.append([task, config, "not run", "", "", "", "", ""])
                continue
            if not run.get("tested", True):  # stopped before its first test: calls so far only
                rows.append([task, config, f"{num(run['api_calls'])} of {num(run['budget'])} (under way, not tested yet)",
                             "", "", "", "", ""])
                continue
            versus = t.get(f"{config}_vs_exact")
            rows.append([task, config, f"{num(run['api_calls'])} of {num(run['budget'])}" + ("" if run["complete"] else " (cut off)"),
                         num(run["test_examples"]), score(run["zero_shot"]), score(run["tuned"]),
                         f"{run['gain'] * 100:+.1f}", "—" if versus is None else f"{versus * 100:+.1f}"])
    out = table(["task", "configuration", "API calls", "test examples", "zero-shot", "tuned", "gain (points)",
                 "vs exact (points)"], rows)
    def verdict(value) -> str:  # None: a run is cut off (or missing), so no verdict yet
        return "pending" if value is None else "yes" if value else "**no**"

    def within(t: dict, c: str) -> str:  # the bound is two-sided: say which side a miss falls on
        value = t.get(f"{c}_within")
        side = f" ({'above' if t[f'{c}_vs_exact'] > 0 else 'below'} exact)" if value is False else ""
        return verdict(value) + side

    verdicts = [f"{task}: exact gains {verdict(t.get('exact_gains'))}; approximations within 1 point: "
                + ", ".join(f"{c} {within(t, c)}" for c in ("softmax", "rfa"))
                for task, t in r["tasks"].items() if t["runs"]["exact"] is not None]
    chk = r.get("secure_check")
    out += ["", "; ".join(verdicts) + "." if verdicts else "No exact run yet.", ""]
    out += ["Secure check (SST-2 rfa prompt): not run yet." if chk is None else secure_check_text(chk), ""]
    return out


def secure_check_text(chk: dict) -> str:
    """The secure run beside its float64 oracle: a sentence agrees when its label and its scores (within
    the stated tolerance) do; a wrapped row whose label matches by chance is named, not counted."""
    events, warnings = chk.get("range_events") or {}, chk.get("oracle_range_warnings") or {}
    off = chk["scores_off"]
    text = (f"Secure check (SST-2 rfa prompt, first {chk['examples']} test sentences): the secure run agrees with the "
            f"float64 oracle (same label, scores within {chk['score_tolerance']:.0%} of the row's largest) on "
            f"{chk['agree']} of {chk['examples']} (bar: 99 of 100): {'yes' if chk['meets_bar'] else '**no**'}; "
            f"same label on {chk['same_prediction']}; accuracy secure {score(chk['secure_accuracy'])}, oracle "
            f"{score(chk['oracle_accuracy'])}.")
    if off:
        text += (f" Scores off in sentence{'s' if len(off) > 1 else ''} {', '.join(map(str, off))} (counted as "
                 f"disagreeing whatever its label); the secure range check fired in batches {events.get('calls', [])} "
                 "and the oracle counted " + (", ".join(f"{n} values outside the {name} range" for name, n in warnings.items())
                                              or "no range warning") + ".")
    return text


def section_rfa_accuracy(reports: Reports) -> list[str]:
    intro = ["### SmolLM2: tuned accuracy of exact softmax, its approximations and the default RFA (`rfa_accuracy.json`)", "",
             "`bash scripts/rfa_accuracy.sh WORK MINUTES [cpu|cuda]` (resumable pieces), then "
             "`python -m research.rfa_accuracy WORK`: k = 16, seed 42, prompt 50, d 500, popsize 20, α 1, one budget per "
             "task; the approximations run in float32 (checked against the float64 oracle above). Bar: exact tuning gains "
             "(SST-2: ≥ 5 points), both approximations' tuned accuracy within 1 point of exact's. The runs go on in pieces "
             "from the checkpoints in `reports/rfa_accuracy/work`; a run cut off by its time limit is tested on its best "
             "prompt so far, so its difference to exact compares unequal numbers of calls and gives no verdict. Pieces "
             "may run on successive commits that compute the same approximations: SST-2 softmax ran its last 1,000 calls "
             "with the one-pass activation below (scores within 3e-6 relative of the group-by-group path).", ""]
    return one_report(reports, "rfa_accuracy.json", intro, rfa_accuracy_body) + _earlier_default_rfa(reports)


def _earlier_default_rfa(reports: Reports) -> list[str]:
    """The default RFA's first SST-2 run (budget 0.11), kept because it is why the budget is now 0.03."""
    r, accuracy = reports.get("rfa_accuracy/work-rfa11/tune/sst2-rfa/report.json"), reports.get("rfa_accuracy.json")
    transfer = reports.get("rfa_accuracy/prompt_transfer.json")  # its "order" ranks every layer
    if r is None or accuracy is None or transfer is None:
        return []
    with reading(r), reading(accuracy), reading(transfer):
        test, calls, kept = r["final"]["test"], r["totals"]["api_calls"], r["final"]["attention"]["softmax_layers"]
        exact, layers = accuracy["tasks"]["sst2"]["runs"]["exact"]["tuned"], len(transfer["order"])
    return [f"Before, the default's budget was 0.11 nats/token (RFA in {layers - len(kept)} of {layers} layers). Tuned with the same "
            f"search for {num(calls)} calls it went from {score(test['zero_shot'])} to {score(test['tuned'])} on SST-2, "
            f"{(test['tuned'] - exact) * 100:+.1f} points from exact; the next section shows the layers, not the search, "
            "lost it, and the default is now 0.03. That run:", ""] + sources([r])


def prompt_transfer_body(r: Report) -> list[str]:
    rows = [[x["attention"], "—" if x["rfa_layers"] is None else x["rfa_layers"],
             "—" if x["layers"] is None else ", ".join(map(str, x["layers"])) or "none", score(x["test_accuracy"])]
            for x in r["rows"]]
    return table(["attention", "RFA layers", "which (the server's least damaging first)", "test accuracy"], rows) + [
        "", f"Prompt `{r['prompt']}` on the first {num(r['test_examples'])} {r['task']} test examples; the server's "
            f"choice when this ran was {len(r['server_choice'])} layers.", ""]


def section_prompt_transfer(reports: Reports) -> list[str]:
    intro = ["### Does a tuned prompt survive RFA? (`rfa_accuracy/prompt_transfer.json`)", "",
             "Exact tuning's SST-2 prompt (above: 0.630) scored, without further tuning, under the secure run's "
             "approximations in float32 with RFA in the n layers the server ranks least damaging "
             "(`python -m research.rfa_prompt_transfer PROMPT`). Inference only, so it separates what the "
             "approximation does to a tuned prompt from what it does to the search.", ""]
    out = one_report(reports, "rfa_accuracy/prompt_transfer.json", intro, prompt_transfer_body)
    for run in ("exact", "rfa"):  # AG News: is the default RFA's lead over exact (tuned) the prompt or the attention?
        rel = f"rfa_accuracy/prompt_transfer_agnews_{run}.json"
        if reports.get(rel) is not None:
            out += one_report(reports, rel, [f"AG News, {run} tuning's prompt, the same way (`{rel}`):", ""],
                              prompt_transfer_body)
    return out


def prompt_once_body(r: Report) -> list[str]:
    rows = [[x["prompt_len"], f"{x['candidates']} × {x['sequences'] // x['candidates']}", x["rows_per_sequence"],
             sec(x["seconds_every_text"]), sec(x["seconds_once"]), f"{x['speedup']:.2f}×", f"{x['max_rel_score_diff']:.1e}"]
            for x in r["runs"]]
    return table(["prompt length", "candidates × texts", "rows per sequence", "s, prompt with every text",
                  "s, prompt once", "speed-up", "max rel. score difference"], rows) + [""]


def section_prompt_once(reports: Reports) -> list[str]:
    intro = ["### A plain call runs each prompt once (`speed/prompt_once.json`)", "",
             "A causal model's prompt comes first, so its rows never see the text: a plain session (the oracle, "
             "`--precision float32`, the tuning-accuracy studies) runs each candidate's prompt once and the texts "
             "attend to its keys/values (`Transformer._forward_prompt_first`; equal to the full sequences within 1e-10 "
             "in float64, `tests/test_prompt_first.py`). One SmolLM2 API call (SST-2, k = 4, float32 approximations), "
             "both ways alternately in one process (`python -m research.prompt_once`). The secure forward keeps every "
             "row in one pass: the prompt's own pass nearly doubled its online rounds (8 SST-2 texts, prompt 10: "
             "3,789 → 7,101) for 11 % fewer online and 21 % fewer dealer bytes.", ""]
    return one_report(reports, "speed/prompt_once.json", intro, prompt_once_body)


def tuning_call_body(r: Report) -> list[str]:
    rows = [[x["config"], sec(x["old"]["seconds_per_call"]), sec(x["new"]["seconds_per_call"]), f"{x['speedup']:.2f}×",
             f"{x['max_rel_score_diff']:.1e}"] for x in r["rows"]]
    return table(["configuration", "s per call, before", "s per call, now", "speed-up", "max rel. score difference"],
                 rows) + ["", f"Commits: before {r['commits']['old']}, now {r['commits']['new']}; "
                          f"{r['popsize']} candidates per generation, {r['threads']} torch threads.", ""]


def section_tuning_call(reports: Reports) -> list[str]:
    intro = ["### One tuning call of each accuracy configuration (`speed/tuning_call_sst2.json`)", "",
             "SmolLM2, SST-2, k = 16 (32 texts), prompt 50: one generation scored through the session interface "
             "(`python -m research.tuning_call --old CHECKOUT`, each tree in its own process, back to back). Both "
             "plain sessions now score texts in length groups, each cut at its last scored position (a causal LM's "
             "later tokens never reach it), and run each prompt once for all groups; the transformers session "
             "continues every text from its candidate's cached prompt keys/values (`tests/test_prompt_first.py`, "
             "`tests/test_hf_session.py`).", ""]
    return one_report(reports, "speed/tuning_call_sst2.json", intro, tuning_call_body)


def section_tuning_call_activation(reports: Reports) -> list[str]:
    intro = ["### The approximations' activation in one pass (`speed/tuning_call_activation_sst2.json`)", "",
             "The same measurement for the two approximation configurations, before and after the plaintext "
             "activation with bounds per channel takes one pass of the fitted function whenever every channel "
             "lies inside its own bound (`ChannelBounds.hold`; one min/max per channel), instead of selecting "
             "each group of channels, evaluating it and putting it back. A profile of the default-RFA tuning run "
             "had put 23 % of its time in that activation, more than the MLP's down-projection. A channel past "
             "its bound still takes the group path, with its own series (`tests/test_trig.py`).", ""]
    return one_report(reports, "speed/tuning_call_activation_sst2.json", intro, tuning_call_body)


def section_f32_oracle(reports: Reports) -> list[str]:
    intro = ["### SmolLM2: float32 approximations vs the float64 oracle (`f32_oracle.json`)", "",
             "`--precision float32` runs the secure run's approximations in float32; each call of a float32 tuning "
             "run and of the tuned prompt's test pass is scored by the float64 oracle too "
             "(`research/f32_oracle.py`, `secptune.oracle_check`).", ""]
    return one_report(reports, "f32_oracle.json", intro, f32_oracle_body)


def section_prepare(reports: Reports) -> list[str]:
    intro = ["### Server preparation of SmolLM2 from a cold cache (`prepare/smollm2.json`)", "",
             "What a new server pays once per model before the first RFA score (`python -m research.prepare_time "
             "--model smollm2`: `secptune prepare` in a fresh cache holding only the converted weights). Issue 26's "
             "bound: 10 minutes on the 2-core CPU.", ""]
    main, avx2 = reports.get("prepare/smollm2.json"), reports.get("prepare/smollm2_avx2.json")
    out = one_report(reports, "prepare/smollm2.json", intro, prepare_body)
    if main is not None and avx2 is not None:  # the CPU's vector width sets this figure: the same command on AVX2
        with reading(main), reading(avx2):  # a missing field names its report, here as in the tables
            slower = [avx2["stages_s"][k] / s for k, s in main["stages_s"].items() if s > 0 and k in avx2["stages_s"]]
            lead = (f"The same command on a 2-core {avx2['machine'].get('cpu_capability', 'other')} machine "
                    f"({avx2['command_wall_s'] / main['command_wall_s']:.1f}× the time above; "
                    f"{min(slower):.1f}–{max(slower):.1f}× per stage), `prepare/smollm2_avx2.json`:")
        out += one_report(reports, "prepare/smollm2_avx2.json", [lead, ""], prepare_body)
    out += _rfa_default_cost(reports)
    ranges = reports.get("prepare/rfa_range.json")
    if ranges is not None:
        with reading(ranges):
            out += _range_table(ranges, "The secure range on task text (`prepare/rfa_range.json`, `python -m research.rfa_range`)")
            if "before" in ranges:
                out += _range_table(ranges["before"], "Before, with the plain exp series (FIT_VERSION 7: exp up to 4, "
                                    "periodic beyond), the reason RFA was not the default then")
    fit = reports.get("prepare/fit_sequences.json")
    if fit is None:
        return out
    with reading(fit):
        rows = [[layer, sec(m["all"]["s"]), sec(m["four"]["s"]), f"{m['all']['rel_err']:.4f}", f"{m['four']['rel_err']:.4f}"]
                for layer, m in fit["layers"].items()]
    return out + ["The fit sees 4 sequences of each captured batch per step (`rfa.fit.FitOptions.sequences`), not all "
                  "16: what that costs in attention error on held-out public text, per layer.", ""] + table(
        ["layer", "s, all sequences", "s, 4 per step", "rel. error, all", "rel. error, 4 per step"], rows) + [
        "", f"Machine: {fit['machine'].get('note', machine_text(fit))}.", "", "Sources:", ""] + sources([fit])


def _range_table(r: dict, title: str) -> list[str]:
    """Range warnings of the plain oracle (every input outside an approximation's range, counted)
    and the secure run's sampled range check, one row per command."""
    rows = [[f"`{x['command']}`", x.get("accuracy", "—"),
             x.get("result") or ", ".join(f"{k} {num(v)}" for k, v in (x.get("range_warnings") or x.get("range_events") or {}).items()
                                          if not isinstance(v, list)) or "none"] for x in r["runs"]]
    out = [f"{title}: range warnings of the plain oracle (values outside an approximation's range, counted) and "
           "the secure run's sampled range check.", ""] + table(["command", "accuracy", "range warnings / events"], rows)
    return out + ["", r["reading"], ""] if r.get("reading") else out + [""]


def _rfa_default_cost(reports: Reports) -> list[str]:
    runs = [reports.get(f"speed/rfa_default/bench_forward_smollm2_seq32_{n}.json") for n in ("softmax", "rfa", "rfa_budget003")]
    runs += [reports.get(f"speed/rfa_saturating/bench_forward_smollm2_seq32_rfa_{n}.json") for n in ("old", "new")]
    runs = [r for r in runs if r is not None]
    if not runs:
        return []
    rows = []
    for r in runs:
        with reading(r):
            c = r["comm"]
            layers = r.get("rfa_layers")  # recorded since the default's budget 0.03
            rows.append([f"`{r.name.removeprefix('reports/speed/').removesuffix('.json')}`",
                         NOT_RECORDED if layers is None else len(layers), mb(c["server"]["online"]["bytes"]),
                         num(c["server"]["online"]["rounds"]), mb(r["ops"]["attention"]["dealer_bytes"]),
                         mb(c["dealer"]["bytes"]), mb(all_wires(c)), sec(r["wall_s"]), f"{r['rel_err']:.1e}",
                         "yes" if r.get("range_event") else "no", r["machine"].get("load_avg_1m", NOT_RECORDED)])
    return ["What the default costs in a secure SmolLM2 forward of one 32-token sequence (`secptune bench forward "
            "--model smollm2 --seq 32 --batch 1 --attention rfa --features fitted`, i.e. the server's RFA layers, "
            "against `--attention softmax`; random token ids). `…_rfa`: the default before its budget went from 0.11 to "
            "0.03; `…_rfa_budget003`: the default now. `rfa_saturating/…_old` / `…_new`: the same command at "
            "b2c9d7e (plain exp series, FIT_VERSION 7, 10 RFA layers) and with the saturating feature exp (50 harmonics "
            "instead of 42, FIT_VERSION 8, 11 RFA layers), one after the other on the same loaded machine. Seconds "
            "follow the machine's load; the bytes and rounds do not:", ""] + table(
        ["attention", "RFA layers", "online MB / party", "online rounds", "attention: dealer MB", "dealer MB", "all wires MB",
         "secure wall s", "rel. error vs oracle", "range check fired", "load"], rows) + ["", "Sources:", ""] + sources(runs)


def prepare_body(r: Report) -> list[str]:
    rows = [[name, sec(seconds)] for name, seconds in r["stages_s"].items()]
    rows.append(["**whole command** (loading included)", f"**{sec(r['command_wall_s'])}**"])
    kl = r.get("choice_kl")
    return table(["stage", "seconds"], rows) + [
        "", f"RFA in {len(r['rfa_layers'])} of {r['layers']} layers ({', '.join(map(str, r['rfa_layers']))})"
        + (f", KL {kl:.3f} nats/token of exact softmax on the server's held-out public text" if kl is not None else "")
        + f"; load {r['machine']['load_avg_1m_before']} before, {r['machine']['load_avg_1m_after']} after. "
        + f"Within issue 26's {PREPARE_BOUND_S // 60} minutes: {prepare_verdict(r['command_wall_s'])}.", ""]


PREPARE_BOUND_S = 600  # issue 26: the server's preparation of SmolLM2 on the 2-core CPU


def prepare_verdict(wall_s: float) -> str:
    return f"yes ({wall_s / 60:.1f} min)" if wall_s <= PREPARE_BOUND_S else f"**no**, {wall_s / 60:.1f} min ({wall_s / PREPARE_BOUND_S:.1f}× the bound)"


# ---------------------------------------------------------------- deployment


def busier_online(job: dict) -> tuple[int, int]:
    online = list(costmodel.session_online(job["comm"]).values())
    return max(o["bytes"] for o in online), max(o["rounds"] for o in online)


def netbench_table(records: list[Report]) -> list[str]:
    """Measured wall time per setting beside the cost model's: the unemulated run plus the link's time for the
    online traffic, and plus each dealer request as a synchronous round trip with the dealer's bytes."""
    base = next((r for r in records if r["setting"] == "none"), None)
    rows = []
    for r in records:
        with reading(r):
            link = LINKS.get(r["setting"])
            for i, (job, label) in enumerate((("infer", "forward (infer)"), ("tune", "1 generation (tune)"))):
                j = r[job]
                nbytes, rounds = busier_online(j)
                requests = j["comm"]["owner"]["dealer"]["rounds"] / costmodel.REQUEST_ROUNDS
                online = dealer = "—"
                if link is not None and base is not None:
                    start = base[job]["wall_s"] + link.added_s(nbytes, rounds)
                    dealer_s = (requests * 2 * link.latency_s
                                + r["dealer_runs"][i]["dealer"]["bytes"] * 8 / link.bandwidth_bps)
                    online, dealer = sec(start), sec(start + dealer_s)
                rows.append([r["setting"], r["emulation"], label, sec(j["wall_s"]), online, dealer,
                             f"{mb(nbytes)} / {num(rounds)}", num(requests),
                             f"{r['load_before']:.1f}–{r['load_after']:.1f}"])
    return table(["setting", "emulation", "job", "measured s", "modelled s (online only)", "modelled s (+ dealer)",
                  "online MB / rounds (busier party)", "dealer requests", "load"], rows)


def section_deployment(reports: Reports) -> list[str]:
    out = [
        "## Deployment vs the cost model",
        "",
        "Does `mpc.costmodel` predict runs over real links? `scripts/netbench.sh` runs owner, server and dealer in "
        "three network namespaces over the TLS transport (tiny-llama: one secure forward with `secptune infer`, "
        "one tuning generation with `secptune tune`) under each setting's bandwidth and one-way delay. Modelled = "
        "the run without emulation + the link's time for the online traffic (busier party); \"+ dealer\" also "
        "counts each dealer request as a synchronous round trip plus the dealer's bytes.",
        "",
    ]
    any_found = False
    for name in ("netbench.jsonl", "netbench_loaded.jsonl"):
        records = reports.lines(name)
        if not records:
            continue
        any_found = True
        out += [f"`reports/{name}` (machine: {machine_text(records[0])}; load: the column):", ""]
        out += netbench_table(records) + [""]
    return out + ([] if any_found else absent("netbench*.jsonl"))


# ---------------------------------------------------------------- baselines


def out_path(command: str) -> str | None:
    match = re.search(r"--out (?:reports/)?(\S+\.json)", command or "")
    return match.group(1) if match else None


def section_baselines(reports: Reports) -> list[str]:
    out = [
        "## Baselines: one tuning iteration under MPC",
        "",
        "What does one iteration of each method cost at 512 tokens (RoBERTa-large shape, 24 layers)? "
        "`fot-rfa` / `fot-softmax`: the product's forward-only step (one secure forward); `prompt-grad` / `sft`: "
        "gradient prompt tuning and full fine-tuning with CrypTen's autograd and Adam on shares (`secptune.baseline`). "
        "Bytes are one computing party's online bytes; the gradient methods' 512-token bytes and rounds are solved "
        "exactly from shorter runs (`bench_seqfit`), their times are measured at the length given. Paper columns: "
        "the figures the iteration-table report carries for comparison.",
        "",
    ]
    it = reports.get("iteration_table_seq512.json")
    if it is None:
        out += absent("iteration_table_seq512.json")
    else:
        rows = []
        with reading(it):
            for method, row in it["rows"].items():
                rel = out_path(row.get("source"))
                src = reports.get(rel) if rel else None
                rows.append([method, gb(row["bytes"]), num(row["rounds"]), sec(row["forward_s"]),
                             sec(row["backward_s"]), row["time_seq"], ratio(row["x_fot_rfa_bytes"]),
                             f"{row['paper_s']} / {row['paper_gb']}", ratio(row["paper_x_fot_rfa_bytes"]),
                             ratio(row["paper_over_ours_bytes"]),
                             machine_text(src) if src is not None else NOT_RECORDED])
        out += table(["method", "online GB / iteration", "rounds", "forward s", "backward + step s",
                      "(times at seq)", "× fot-RFA bytes", "paper s / GB", "paper × fot-RFA", "paper ÷ ours (bytes)",
                      "machine (row's source report)"], rows) + [""]
        out += ["Sources:", ""] + sources([it])
    return out + section_seqfit(reports) + section_iterations(reports)


def section_seqfit(reports: Reports) -> list[str]:
    fits = reports.glob("bench_seqfit_*.json")
    out = ["### Exact bytes and rounds at 512 tokens from shorter runs (`bench_seqfit`)", "",
           "Traffic depends on shapes only: the fit solves bytes and rounds per phase from the fit lengths and is "
           "checked on lengths it never saw; \"all checks exact\" means every prediction equals the measured count "
           "to the byte.", ""]
    if not fits:
        return out + absent("bench_seqfit_*.json")
    rows = []
    for r in fits:
        with reading(r):
            fit, t = r["fit"], r["target_row"]
            rows.append([r["method"], ", ".join(map(str, fit["fit_lengths"])), ", ".join(map(str, fit["check_lengths"])),
                         fit["all_checks_exact"], fit["target"], gb(t["forward"]["bytes"]), num(t["forward"]["rounds"]),
                         gb(t["backward"]["bytes"]), num(t["backward"]["rounds"]), gb(r["step"]["bytes"]),
                         gb(t["bytes"]), num(t["rounds"])])
    out += table(["method", "fit at", "checked at", "all checks exact", "target seq", "forward GB", "forward rounds",
                  "backward GB", "backward rounds", "optimizer step GB", "total GB", "total rounds"], rows)
    return out + ["", "Sources (per-length runs in `reports/seqfit/`):", ""] + sources(fits)


def section_iterations(reports: Reports) -> list[str]:
    runs = reports.glob("bench_iteration_*.json")
    out = ["### Measured iterations (`bench_iteration`), extrapolated to the full model", ""]
    if not runs:
        return out + absent("bench_iteration_*.json")
    rows = []
    for r in runs:
        with reading(r):
            total = r["extrapolation"]["total"]
            rows.append([f"`{stem(r, 'bench_iteration_')}`", r["method"], r["seq"], gb(total["bytes"]),
                         num(total["rounds"]), sec(total["forward_s"]), sec(total["backward_s"]),
                         sec(total.get("step_s", 0.0))])
    out += table(["report", "method", "seq", "online GB / iteration", "rounds", "forward s", "backward s", "step s"],
                 rows)
    return out + ["", "Sources:", ""] + sources(runs)


def all_wires(comm: dict) -> float:
    """Bytes on every wire: what owner and server sent (online and to the dealer) and the dealer."""
    return sum(comm[p]["bytes"] for p in ROLES)


def with_dealer(total: dict) -> dict[str, float]:
    """A forward's link times with the dealer as a third host on the same link
    (mpc.costmodel.link_times_with_dealer, from the report's online times and dealer traffic)."""
    dealer = total["comm"]["dealer"]
    requests = dealer["rounds"] / costmodel.REQUEST_ROUNDS
    return {name: total["links_s"][name] + costmodel.dealer_added_s(dealer["bytes"], requests, link)
            for name, link in LINKS.items()}


# the paper's SecP-Tuning figures (RoBERTa-large, 512 tokens; ../shared/design): per iteration and end to end (SST-2)
PAPER_ITERATION = {"s": 55.2, "bytes": 56.6e9}
PAPER_END_TO_END = {"s": 8.81 * 3600, "bytes": 14.22e12}
BBT_CALLS, SST2_TEXTS_PER_CALL = 8000, 32  # BBT's budget; k = 16 per class, two classes


def section_projection(reports: Reports) -> list[str]:
    """End-to-end secure SST-2 tuning at the paper's settings, projected from one measured forward."""
    out = [
        "## End-to-end projection at the paper's settings",
        "",
        "What would secure SST-2 tuning of RoBERTa-large at 512 tokens cost here? One measured forward of one "
        "512-token sequence (RFA, 24 layers extrapolated from 1), times the number of forwards. The paper gives "
        f"{PAPER_ITERATION['s']} s / {PAPER_ITERATION['bytes'] / 1e9:.1f} GB per iteration and "
        f"{PAPER_END_TO_END['s'] / 3600:.2f} h / {PAPER_END_TO_END['bytes'] / 1e12:.2f} TB end to end, which "
        f"imply {PAPER_END_TO_END['bytes'] / PAPER_ITERATION['bytes']:,.0f} iterations by bytes and "
        f"{PAPER_END_TO_END['s'] / PAPER_ITERATION['s']:,.0f} by time (if an iteration is one 512-token forward, "
        "the reading in ../shared/design); BBT's budget of "
        f"{BBT_CALLS:,} calls on {SST2_TEXTS_PER_CALL} training texts each is "
        f"{BBT_CALLS * SST2_TEXTS_PER_CALL:,} forwards. The paper's GB most likely come from CrypTen's log, which "
        "counts an all-reduce twice: compare its figure with about twice our online bytes per party, and note it "
        "leaves the dealer out. Network times: `mpc.costmodel` for the online traffic, and with the dealer as a "
        "third host on the same link answering on demand; compute time: this CPU's measured forward.",
        "",
    ]
    fwd = reports.get("bench_forward_roberta-large-shape_L1_rfa.json")
    if fwd is None:
        return out + absent("bench_forward_roberta-large-shape_L1_rfa.json")
    rows = []
    with reading(fwd):
        total = fwd["extrapolation"]["total"]
        comm, links, dealer_links = total["comm"], total["links_s"], with_dealer(total)
        online = comm["server"]["bytes"]
        counts = [
            ("one forward", 1),
            ("paper, by bytes", round(PAPER_END_TO_END["bytes"] / PAPER_ITERATION["bytes"])),
            ("paper, by time", round(PAPER_END_TO_END["s"] / PAPER_ITERATION["s"])),
            ("BBT budget × SST-2 texts", BBT_CALLS * SST2_TEXTS_PER_CALL),
        ]
        for what, n in counts:
            rows.append([what, num(n), f"{n * online / 1e12:.3f}", f"{n * comm['dealer']['bytes'] / 1e12:.3f}",
                         f"{n * all_wires(comm) / 1e12:.3f}", f"{n * links['LAN'] / 3600:.2f}",
                         f"{n * dealer_links['LAN'] / 3600:.2f}", f"{n * dealer_links['WAN'] / 3600:.1f}",
                         f"{n * total['wall_s'] / 3600:.1f}"])
    out += table(["forwards", "n", "online TB / party", "dealer TB", "all wires TB", "+ LAN h (online)",
                  "+ LAN h (with dealer)", "+ WAN h (with dealer)", "CPU compute h (measured)"], rows)
    out += ["", f"Paper: {PAPER_END_TO_END['s'] / 3600:.2f} h and {PAPER_END_TO_END['bytes'] / 1e12:.2f} TB end to "
            "end on 3×A100 and a LAN (compute included).", "", "Sources:", ""] + sources([fwd])
    return out


# ---------------------------------------------------------------- headline and document


def section_call_speed(reports: Reports) -> list[str]:
    """Issue 23: what the activation's per-channel bounds changed in a full SmolLM2 forward, and
    one BBT-size API call, old code vs new vs HF float32, in one run."""
    out = ["## Speed and traffic of a secure call (SmolLM2, 2-core CPU)", "",
           "A full-depth SmolLM2 forward of one 32-token sequence (`secptune bench forward --model smollm2 --seq 32 "
           "--batch 1`) before and after the activation's bounds per channel (the server calibrates each MLP channel; "
           "each group of channels gets the Fourier series of its own bound, so the dealer sends 2K shares per element "
           "with K from that group's bound instead of the layer's largest), and after CrypTen's settings are read from "
           "plain dicts. Bytes and rounds are exact; wall times were measured back to back while other jobs ran "
           "(the load is recorded), so compare them within a row pair only.", ""]
    runs = [reports.get(f"speed/channels/bench_forward_smollm2_seq32_{n}.json")
            for n in ("before", "channels", "channels_cfgcache")]
    runs = [r for r in runs if r is not None]
    if not runs:
        out += absent("speed/channels/bench_forward_smollm2_seq32_*.json")
    else:
        rows = []
        for r in runs:
            with reading(r):
                c = r["comm"]
                rows.append([f"`{stem(r, 'speed/channels/bench_forward_')}`", r.get("commit", NOT_RECORDED),
                             mb(c["server"]["online"]["bytes"]), num(c["server"]["online"]["rounds"]),
                             mb(r["ops"]["activation"]["dealer_bytes"]), mb(c["dealer"]["bytes"]),
                             mb(all_wires(c)), sec(r["wall_s"]), sec(r["ops"]["activation"]["wall_s"]),
                             f"{r['rel_err']:.1e}", r["machine"].get("load_avg_1m", NOT_RECORDED)])
        out += table(["report", "commit", "online MB / party", "online rounds", "activation: dealer MB", "dealer MB",
                      "all wires MB", "secure wall s", "activation wall s (owner)", "rel. error vs oracle", "load"], rows)
        out += ["", "Sources:", ""] + sources(runs)
    out += ["One API call at BBT size: SmolLM2, SST-2, 32 texts, a random 10-token prompt (`secptune infer --task sst2 "
            "--model smollm2 --limit 32 --batch-size 32 --prompt-len 10`), run back to back as plain exact (HF float32), "
            "secure at this tree, secure at the old commit, plain exact again (`python -m research.call_speed`). "
            "Command wall time includes loading the model and, for secure runs, the session set-up. Each attempt is "
            "one run; where the old code did not finish, old / new is a lower bound.", ""]
    calls = [(name, reports.get(f"speed/call_acceptance/{name}call_speed.json")) for name in ("", "attempt4/")]
    if all(call is None for _, call in calls):
        return out + absent("speed/call_acceptance/call_speed.json")
    for name, call in calls:
        if call is not None:
            out += [f"Attempt {name.strip('/').removeprefix('attempt') or 3}:", ""] + _call_attempt(call)
    return out + ["Sources:", ""] + sources([call for _, call in calls if call is not None]) + [""]


def _call_attempt(call: dict) -> list[str]:
    rows, notes = [], []
    with reading(call):
        for run in call["runs"]:
            wall = sec(run["wall_s"]) if "wall_s" in run else "—"
            rows.append([run["run"], f"failed after {wall} s ({run['error'].removeprefix('secptune: error: ')})"
                         if "error" in run else wall,
                         sec(run["forward_s"]) if run.get("forward_s") else "—",
                         gb(run["online_bytes_per_party"]) if run.get("online_bytes_per_party") else "—",
                         gb(run["dealer_bytes"]) if run.get("dealer_bytes") else "—", run["load_before"]])
        plain = [r["wall_s"] for r in call["runs"] if r["run"].startswith("plain") and "error" not in r]
        by = {r["run"]: r for r in call["runs"]}
        new, old = by.get("secure_new", {}), by.get("secure_old", {})
        if plain and "error" not in new and "wall_s" in new:
            notes.append(f"secure (new) / plain exact: {ratio(new['wall_s'] / max(plain))} – "
                         f"{ratio(new['wall_s'] / min(plain))} (slowest – fastest plain run)")
        if "wall_s" in old and "wall_s" in new and "error" not in new:
            bound = "more than " if "error" in old else ""
            notes.append(f"old ({call['commit_old'][:7]}) / new ({call['commit_new'][:7]}) secure: "
                         f"{bound}{ratio(old['wall_s'] / new['wall_s'])}")
    if call.get("note"):
        notes.append(call["note"])
    return (table(["run", "command wall s", "secure forward s", "online GB / party", "dealer GB", "load before"], rows)
            + [""] + [f"- {n}" for n in notes] + [""])


def section_headline(reports: Reports) -> list[str]:
    """The few figures a reader asks first, each from the report that measured it."""
    rows = []
    fwd = reports.get("bench_forward_roberta-large-shape_L1_rfa.json")
    if fwd is not None:
        with reading(fwd):
            total = fwd["extrapolation"]["total"]
            where = f"`{fwd.name}`"
            rows += [
                ["RoBERTa-large shape, 512 tokens, RFA: online bytes per party per forward (24 layers)",
                 f"{num(total['comm']['server']['bytes'])} B ({gb(total['comm']['server']['bytes'])} GB)", where,
                 machine_text(fwd)],
                ["… online rounds per forward", num(total["comm"]["server"]["rounds"]), where, machine_text(fwd)],
                ["… the dealer's bytes per forward", f"{num(total['comm']['dealer']['bytes'])} B "
                 f"({gb(total['comm']['dealer']['bytes'])} GB)", where, machine_text(fwd)],
                ["… time the paper's LAN / WAN add", f"{sec(total['links_s']['LAN'])} s / {sec(total['links_s']['WAN'])} s",
                 where, machine_text(fwd)],
                ["… every byte on every wire (owner + server + dealer)", f"{num(all_wires(total['comm']))} B "
                 f"({gb(all_wires(total['comm']))} GB)", where, machine_text(fwd)],
                ["… LAN / WAN with the dealer as a third host on the same link",
                 " / ".join(f"{sec(with_dealer(total)[name])} s" for name in ("LAN", "WAN")), where, machine_text(fwd)],
            ]
    check = reports.get("bench_forward_roberta-large-shape_L1_rfa_rangecheck.json")
    if check is not None:
        with reading(check):
            b = check["extrapolation"]["total"]["comm"]["server"]["bytes"]
            rows.append(["… with the default range check on", f"{num(b)} B ({gb(b)} GB)", f"`{check.name}`",
                         machine_text(check)])
    secure = reports.get("tune/sst2-secure/report.json")
    oracle = reports.get("tune/sst2-plain-oracle/report.json")
    if secure is not None and oracle is not None:
        with reading(secure), reading(oracle):
            s, p = secure["per_call"]["latency_s"], oracle["per_call"]["latency_s"]
            rows.append([f"SmolLM2 secure tuning, time per API call (SST-2, k = {secure['config']['k']} per class): "
                         "secure / plain oracle", f"{sec(s)} s / {p:.2f} s ({ratio(s / p)})",
                         f"`{secure.name}`, `{oracle.name}`", machine_text(secure)])
    it = reports.get("iteration_table_seq512.json")
    if it is not None:
        with reading(it):
            rows.append(["Forward-only RFA vs gradient prompt tuning / SFT, bytes per iteration at 512 tokens",
                         f"{ratio(it['rows']['prompt-grad']['x_fot_rfa_bytes'])} / "
                         f"{ratio(it['rows']['sft']['x_fot_rfa_bytes'])} fewer", f"`{it.name}`", machine_text(it)])
    for task in ("sst2", "agnews"):
        gpu = reports.get(f"tune-gpu/{task}/report.json")
        if gpu is not None:
            with reading(gpu):
                t = gpu["final"]["test"]
                rows.append([f"CMA-ES tuning gain on {task} ({num(gpu['totals']['api_calls'])} API calls, "
                             f"{gpu['config']['device']})", f"{score(t['zero_shot'])} → {score(t['tuned'])} "
                             f"({points(t['tuned'], t['zero_shot'])} points)", f"`{gpu.name}`", machine_text(gpu)])
    fid = reports.get("rfa_fidelity.json")
    if fid is not None and "rfa-default" in fid.get("accuracy", {}).get("sst2", {}).get("results", {}):
        with reading(fid):
            cells = [f"{task} {points(t['results']['rfa-default']['accuracy'], t['results']['softmax-exact']['accuracy'])}"
                     for task, t in fid["accuracy"].items()]
            rows.append(["Default RFA vs exact softmax, zero-shot accuracy (points)", ", ".join(cells),
                         f"`{fid.name}`", machine_text(fid)])
    out = ["## Headline figures", ""]
    return out + (table(["figure", "value", "report", "machine"], rows) + [""] if rows else absent("headline reports"))


# ---------------------------------------------------------------- privacy (issue 24)


def privacy_body(r: Report) -> list[str]:
    rows = [[x["run"], x["task"], x["split_layer"], x["noise"], x["eta"], x["release"], num(x["tokens"]),
             score(x["nearest_recovery"]), f"{score(x['best_adaptive_recovery'])} ({x['best_adaptive_attack']})",
             "—" if x["averaged_releases"] == 1 else f"{score(x['averaged_best_recovery'])} ({x['averaged_releases']})",
             f"{score(x['label_aia'])} / {score(x['label_chance'])}", f"{x['game_advantage']:.2f}",
             score(x["random_view_max"]), score(x["control_best_recovery"]),
             "—" if x["zero_shot_accuracy"] is None else score(x["zero_shot_accuracy"]),
             f"{score(x['tuned_zero_shot'])} → {score(x['tuned_accuracy'])}" if "tuned_accuracy" in x else "—"]
            for x in r["rows"]]
    out = table(["run", "task", "split", "noise", "η", "release", "tokens", "nearest", "best adaptive",
                 "averaged", "label AIA / majority", "game adv.", "random view", "control", "zero-shot acc.",
                 "tuned: zero-shot → tuned"], rows)
    tuned = [x for x in r["rows"] if "tuned_accuracy" in x]
    if tuned:
        t = tuned[0]
        out += ["", f"Tuned: a prompt tuned through the same mechanism (`bash scripts/privacy_runs.sh tuned`: k = "
                f"{t['tuned_k']}, {t['tuned_budget']} API calls, prompt length 10, intrinsic dimension 100; test on the "
                f"first {t['tuned_test_examples']} test examples, zero-shot and tuned in the same run; one call "
                f"{t['tuned_s_per_call']:.1f}–{max(x['tuned_s_per_call'] for x in tuned):.1f} s on the 2-core CPU, two "
                "runs sharing it); every text it scores, training and test, goes through the mechanism."]
    out += ["", "Acceptance checks:", ""]
    out += table(["check", "run", "value", "bar", "passed"],
                 [[c["check"], c["run"], score(c["value"]), c["bar"], "yes" if c["passed"] else "**no**"]
                  for c in r["checks"]])
    out += _suite_wall(r["rows"])
    points = [f"- {noise}: " + ("no run with token recovery ≤ 10 %" if p is None else
              f"`{p['run']}` (η = {p['eta']}): zero-shot accuracy {score(p['zero_shot_accuracy'])}"
              + (f", tuned {score(p['tuned_accuracy'])} ({p['tuned_budget']} calls)" if p.get("tuned_accuracy") is not None else "")
              + (f", the unprotected split tuned at the same budget {score(p['plain_tuned_accuracy'])}: a drop of "
                 f"{100 * p['drop_vs_plain']:.1f} points" if "drop_vs_plain" in p else "")
              + f", token recovery {score(p['best_recovery'])}, topic AIA {score(p['label_aia'])} (majority "
              f"{score(p['label_chance'])})")
              for noise, p in r.get("operating_points", {}).items()]
    out += ["", "Best accuracy (AG News; tuned where every candidate was tuned) at token recovery ≤ 10 % (PrivTune's "
            "headline operating point):", ""]
    return out + points + ["", "![dχ sweep](reports/privacy/dchi_sweep.png)", ""]


def _suite_wall(rows: list[dict]) -> list[str]:
    """Issue 24 asks for the whole attack suite on one run in <= 15 min on the 2-core CPU: say what it took."""
    walls = [x["attack_wall_s"] for x in rows if x.get("attack_wall_s") is not None]
    if not walls:
        return []
    worst = max(walls)
    return ["", f"The whole attack suite (`secptune attack RUN_DIR`) on one run: {min(walls) / 60:.1f}–{worst / 60:.1f} min "
            f"over these {len(walls)} runs, one torch thread each on the 2-core CPU at the load under Sources (bar: ≤ 15 min; "
            f"{'met' if worst <= 900 else '**not met**'})."]


def section_privacy(reports: Reports) -> list[str]:
    intro = ["## Privacy measured: attacks on the server's view (`privacy/summary.json`)", "",
             "`--mode privtune` (split learning with noisy token representations, PrivTune's setting) on SmolLM2, "
             "views recorded with `--record-view` and attacked with `secptune attack` "
             "(`scripts/privacy_runs.sh`, assembled by `research/privacy_figures.py`). Token recovery over the "
             "texts' own tokens (template and padding excluded); adaptive attacks are fitted on public train-split "
             "text through the same mechanism; control: the same attacks on held-out public text through the "
             "unprotected split; random view: the highest recovery any attack gets from the mechanism's output for "
             "random tokens in the same layout; averaged: the best attack on the mean of that many per-call releases.", ""]
    out = one_report(reports, "privacy/summary.json", intro, privacy_body)
    secure_intro = ["### The secure mode's view (`privacy/secure/attacks.json`)", "",
                    "`--mode secure --record-view N`: what the server process received, tapped at its transport "
                    "(its shares of the inputs and embeddings, the `texts` command's one-hot opening, the first "
                    "token-axis openings of each text set's first forward), attacked with the same catalogue; "
                    "adaptive attacks are fitted on the attacker's own protocol run over public text. At chance = "
                    "within the larger null (shuffled truth, Gaussian prior view) + 3 bootstrap SE; the game's "
                    "theoretical advantage is 0. Beside it: the unprotected split (η = ∞, layer 0) on the same texts.",
                    ""]
    return out + one_report(reports, "privacy/secure/attacks.json", secure_intro, privacy_secure_body) + _secure_column(reports)


def _secure_column(reports: Reports) -> list[str]:
    """The secure mode beside PrivTune's operating point: its tuned accuracy at the same budget (its
    plain oracle, which it equals within the tested tolerance), its attack figures and a call's cost."""
    tuned, view = reports.get("privacy/secure/tuned_agnews_oracle.json"), reports.get("privacy/secure/attacks.json")
    call = reports.get("speed/call_acceptance/attempt4/secure_new.json")
    if tuned is None or view is None:
        return []
    with reading(tuned):
        c, test = tuned["config"], tuned["final"]["test"]
        att = tuned["final"]["attention"]
        line = (f"The secure mode at the same budget (AG News, k = {c['k']}, {c['budget']} calls, first {c['test_limit']} "
                f"test examples; `bash scripts/privacy_runs.sh tunedSecure`): its plain oracle (the secure run's "
                f"approximations in float32, {att['kind']} attention, {len(att['softmax_layers'])} softmax layers), which "
                f"the secure run equals within the tested fixed-point tolerance, {score(test['zero_shot'])} → "
                f"{score(test['tuned'])}")
    with reading(view):
        sm = view["summary"]
        line += (f"; attacks on its server view (SST-2, {view['header']['attention']} attention, "
                 f"{num(sm['recorded_text_tokens'])} tokens): best token recovery "
                 f"{score(sm['best_recovery'])}, all {sm['figures']} figures at chance: "
                 f"{'yes' if sm['family_at_chance'] else '**no**'}")
    if call is not None:
        with reading(call):
            cm = call["comm"]
            line += (f"; one secure call on the 2-core CPU (SST-2, {call['examples']} texts, `speed/call_acceptance/"
                     f"attempt4`): {sec(call['wall_s'])} s, {gb(cm['owner']['online']['bytes'])} GB online per party, "
                     f"{gb(cm['dealer']['bytes'])} GB from the dealer")
    return [line + ".", "", "Sources:", ""] + sources([r for r in (tuned, view, call) if r is not None])


def privacy_secure_body(r: Report) -> list[str]:
    s, c = r["summary"], r.get("control")
    rows = []
    for name, ch in r["channels"].items():
        attacks = {k: f for k, f in ch["tokens"].items() if not k.startswith("best")}
        top = max(attacks, key=lambda k: attacks[k]["recovery"])
        f = attacks[top]
        games = ", ".join(f"{dec} {g['advantage']:+.3f} ± {g['se']:.3f}" for dec, g in ch["game"].items())
        a = ch["label_aia"]
        rows.append([f"`{name}` ({ch['info']['kind']})", f"{score(f['recovery'])} ({top})",
                     f"{score(f['null'])} + 3 × {score(f['se'])}", "yes" if all(x["at_chance"] for x in attacks.values()) else "**no**",
                     f"{score(a['accuracy'])} / {score(a['chance_majority'])} ± {score(a['se'])}", games])
    if c is not None:
        rows.append([f"control: `{c['mode']}` split {c['split_layer']}, η = {c['eta']} (same texts: {c['same_texts']})",
                     f"{score(c['best']['recovery'])} ({c['best']['attack']})", "—", "—",
                     f"{score(c['label_aia'])} / {score(c['label_majority'])}",
                     f"likelihood {c['game_advantage']:+.3f} ({c['game_pairs']} pairs)"])
    out = table(["channel", "best token recovery", "null + 3 SE", "all at chance", "label AIA / majority ± SE",
                 "game advantage ± SE"], rows)
    game_pairs = next(iter(next(iter(r["channels"].values()))["game"].values()))["pairs"] if r["channels"] else 0
    out += ["", f"{r['header']['items']} recorded texts, {num(s['recorded_text_tokens'])} text tokens; game: "
            f"{game_pairs} pairs; every token attack at chance: {'yes' if s['tokens_at_chance'] else '**no**'}; label "
            f"inference at chance: {'yes' if s['label_aia_at_chance'] else '**no**'}; every game within 3 SE of 0: "
            f"{'yes' if s['games_within_3se'] else '**no**'} (worst |advantage|/SE {s['worst_game_z']:.2f})."
            + (f" As one family of {s['figures']} figures (z = excess over the null / SE): worst z {s['worst_z']:.2f} "
               f"(`{s['worst_figure']}`) against the Bonferroni bound {s['family_z']:.2f} that keeps the family's "
               f"false-alarm rate at one 3-SE figure's: {'all at chance' if s['family_at_chance'] else '**not at chance**'}."
               if "figures" in s else "") + " Public by design: " + "; ".join(r["public_by_design"]) + ".", ""]
    return out


def guarded_body(r: Report) -> list[str]:
    attacks = ("whitebox_opt", "whitebox_search", "public_search")
    rows = [[x["run"], x["variant"], x["dcor"], x["bits"], score(x["tuned"]),
             f"{score(x['effectiveness'])} ({x['effectiveness_attack']})", score(x["recovery"]),
             " / ".join(score(x.get("attack_rouge_l", {}).get(a)) for a in attacks),
             f"{score(x['label_aia'])} / {score(x['label_majority'])}", score(x["gradient_label"]),
             f"{x['game_advantage']:.2f}", f"{x['bytes_per_call'] / 1e3:,.1f}", f"{x['rounds_per_call']:.1f}"]
            for x in r["rows"]]
    out = table(["run", "variant", "dcor", "bits", "tuned acc.", "effectiveness (attack)", "token recovery",
                 "ROUGE-L: opt / search / public search", "label AIA / majority", "gradient label", "game adv.",
                 "KB/call", "rounds/call"], rows)
    out += ["", "Acceptance checks:", ""]
    out += table(["check", "value", "bar", "passed"],
                 [[c["check"], score(c["value"]), c["bar"], "yes" if c["passed"] else "**no**"] for c in r["checks"]])
    p = r.get("operating_point")
    out += ["", "Operating point (best accuracy at reconstruction effectiveness < 0.5): " + (
        "none in this sweep." if p is None else
        f"`{p['run']}`, tuned {score(p['tuned'])}, effectiveness {score(p['effectiveness'])}, accuracy loss vs the "
        f"undefended split {p.get('accuracy_loss_vs_undefended', 0) * 100:+.1f} points (GuardedTuning claims ≤ 1.5)."),
        "", "![dcor sweep](reports/privacy/guarded/sweep/sweep.png) ![trade-off](reports/privacy/guarded/sweep/tradeoff.png)", ""]
    return out


def section_guarded(reports: Reports) -> list[str]:
    intro = ["## GuardedTuning as a comparison mode (`privacy/guarded/sweep/sweep.json`)", "",
             "`--mode guarded` (client adapters around the server's backbone, distance-correlation regulariser "
             "`--dcor`, `--quant-bits` on every tensor that crosses; docs/privacy.md) tuned by gradient descent and "
             "attacked with `secptune attack` (`scripts/guarded_sweep.sh`, assembled by `research/guarded_figures.py`). "
             "Effectiveness: the best attack's token-level ROUGE-L F1 on each text's last release; the white-box "
             "attacks (`whitebox_opt`: relaxed embeddings + causal rounding; `whitebox_search`: left-to-right "
             "exhaustive search over the vocabulary) are given the client's final input adapter, `public_search` "
             "only the pretrained one (the realistic server: the adapter is private); an API call is one tuning step on a "
             "mini-batch of 8 texts. The undefended split (online, dcor 0, 32-bit) is the positive control.", ""]
    return one_report(reports, "privacy/guarded/sweep/sweep.json", intro, guarded_body) + _search_cost(reports)


def _search_cost(reports: Reports) -> list[str]:
    """What the exhaustive search costs per model (`python -m research.search_timing --model M`)."""
    runs = [r for r in (reports.get(f"privacy/guarded/search_timing_{m}.json") for m in ("tiny-llama", "smollm2"))
            if r is not None]
    if not runs:
        return []
    rows = []
    for r in runs:
        with reading(r):
            texts = r["per_text"]
            rows.append([r["model"], num(r["vocab"]), r["in_layers"], len(texts), sum(t["tokens"] for t in texts),
                         sec(sum(t["seconds"] for t in texts)), score(min(t["recovered"] for t in texts)),
                         num(round(r["full_walk_rows_per_s"])), sec(r["full_walk_seconds_per_text_estimate"])])
    return ["The exhaustive search's cost (`python -m research.search_timing --model M`: undefended 32-bit views of "
            "public SST-2 texts, early exit within the quantiser's bound; the full walk is what a noised or "
            "regularised view costs):", ""] + table(
        ["model", "vocabulary", "bottom layers", "texts", "tokens", "s, early exit", "lowest recovery",
         "full walk: rows / s", "full walk: s per median text"], rows) + ["", "Sources:", ""] + sources(runs)


GRID = "privacy/guarded/grid_smollm2/compare.json"


def grid_body(r: Report) -> list[str]:
    return privacy_markdown(r["rows"]).splitlines() + ["", f"![trade-off]({Path(r.name).parent / 'tradeoff.png'})", ""]


def section_grid(reports: Reports) -> list[str]:
    intro = ["### Every mode at one budget (`" + GRID + "`)", "",
             "`bash scripts/privacy_grid.sh` on SmolLM2 (settings in the run directories' report.json): the CMA-ES "
             "modes tune a 10-token prompt (intrinsic dimension 100) at one budget of API calls, the guarded variants "
             "train their adapters by gradient descent for a number of epochs over the same k-shot texts; each tuned "
             "prompt or adapter is scored on the same test examples. Attack columns come from `secptune attack` on "
             "each run's recorded view (best over the catalogue; the game's advantage is the first release's). "
             "KB/call counts every wire the mode uses. Δ vs plain: against the plain exact run of the same task.", ""]
    return one_report(reports, GRID, intro, grid_body)


SECTIONS = (section_headline, section_forward, section_projection, section_security, section_ringmatmul,
            section_call_speed, section_tuning, section_baseline_accuracy, section_rfa, section_smollm2_check, section_f32_oracle, section_prompt_once, section_tuning_call, section_tuning_call_activation, section_rfa_accuracy, section_prompt_transfer,
            section_prepare,
            section_deployment, section_baselines, section_privacy, section_guarded, section_grid)


def render(reports_dir: Path = DEFAULT_REPORTS) -> str:
    """The whole of BENCHMARKS.md for the reports in ``reports_dir``."""
    reports = Reports(reports_dir)
    out = [
        "# Benchmarks",
        "",
        "<!-- Generated by `secptune benchmarks` from reports/; edit secptune/benchmarks_doc.py or the reports, "
        "never this file (`secptune benchmarks --check` fails while it is stale). -->",
        "",
        "The current measurements, one table per question, each regenerated from the report files in `reports/` "
        "that it names, with the machine recorded in them and the command that produced them where the report "
        "records it. How the figures came about, and earlier measurements without a report, are in "
        "[docs/history.md](docs/history.md).",
        "",
    ]
    for section in SECTIONS:
        out += section(reports)
    while out and out[-1] == "":
        out.pop()
    return "\n".join(out) + "\n"


def first_difference(expected: str, found: str) -> str:
    """Where ``found`` first departs from ``expected``, for a --check message."""
    a, b = expected.splitlines(), found.splitlines()
    for number, (x, y) in enumerate(zip(a, b), 1):
        if x != y:
            return f"line {number}: expected {x[:120]!r}, found {y[:120]!r}"
    if len(a) != len(b):
        number = min(len(a), len(b)) + 1
        return f"line {number}: " + ("expected more lines" if len(a) > len(b) else f"unexpected {b[number - 1][:120]!r}")
    return "line endings differ"


def run(reports_dir: Path = DEFAULT_REPORTS, out: Path = DEFAULT_OUT, check: bool = False) -> tuple[int, str]:
    """Write (or with ``check`` compare) the document; returns (exit status, message)."""
    text = render(reports_dir)
    out = Path(out)
    if not check:
        out.write_text(text)
        return 0, f"wrote {out} from {reports_dir}"
    if not out.is_file():
        return 1, f"{out} does not exist: run `secptune benchmarks` to write it"
    found = out.read_text()
    if found == text:
        return 0, f"{out} is up to date with {reports_dir}"
    return 1, (f"{out} differs from what the reports give ({first_difference(text, found)}): "
               "run `secptune benchmarks` and commit the result")
