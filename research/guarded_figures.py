"""Issue 25's GuardedTuning figures, assembled from the runs of ``scripts/guarded_sweep.sh``
(measures nothing itself): each ``OUT/NAME/`` (NAME = <variant>_d<dcor>_b<bits>) holds a run's
``report.json`` and ``attacks.json``.  Writes ``OUT/sweep.json`` (one row per run and the
acceptance checks), ``OUT/sweep.md``, ``OUT/sweep.png`` (dcor against reconstruction effectiveness
and accuracy) and, through `secptune compare --privacy`, ``OUT/compare.*`` and ``OUT/tradeoff.png``.

    python -m research.guarded_figures reports/privacy/guarded/sweep
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from secptune.bench.common import machine_info  # noqa: E402
from secptune.privacy.compare import EFFECTIVE, compare_privacy  # noqa: E402

ATTACKS = ("whitebox_opt", "whitebox_search", "public_search")  # reported one by one (ROUGE-L, recovery)
UNDEFENDED = "online_d0_b32"  # the undefended split: no regulariser, 32-bit (the positive control)


def row(folder: Path) -> dict | None:
    if not (folder / "attacks.json").is_file() or not (folder / "report.json").is_file():
        return None
    rep, att = json.loads((folder / "report.json").read_text()), json.loads((folder / "attacks.json").read_text())
    g = rep["final"]["guarded"]
    variants = list(att["variants"].values())
    first, pc = variants[0], rep.get("per_call", {})
    return {
        "run": folder.name, "variant": g["variant"], "dcor": g["dcor"], "bits": g["quant_bits"],
        "task": rep["config"]["task"], "model": rep["config"]["model"], "epochs": g["epochs"], "lr": g["lr"],
        "zero_shot": rep["final"]["test"]["zero_shot"], "tuned": rep["final"]["test"]["tuned"],
        "effectiveness": max(v["tokens"]["best_rouge_l"]["rouge_l"] for v in variants),
        "effectiveness_attack": first["tokens"]["best_rouge_l"]["attack"],
        "recovery": max(v["tokens"]["best"]["recovery"] for v in variants),
        "whitebox_recovery": first["tokens"].get("whitebox_opt", {}).get("recovery"),
        "attack_rouge_l": {a: max(v["tokens"][a]["rouge_l"] for v in variants) for a in ATTACKS if a in first["tokens"]},
        "attack_recovery": {a: max(v["tokens"][a]["recovery"] for v in variants) for a in ATTACKS if a in first["tokens"]},
        "random_view_max": max(f.get("null_random_view", 0.0) for k, f in first["tokens"].items() if not k.startswith("best")),
        "label_aia": first["label_aia"]["accuracy"], "label_majority": first["label_aia"]["chance_majority"],
        "gradient_label": att.get("gradient_label", {}).get("accuracy"),
        "gradient_label_control": att.get("gradient_label", {}).get("positive_control", {}).get("accuracy"),
        "game_advantage": first["game"]["advantage"],
        "control_recovery": att["positive_control"]["tokens"]["best"]["recovery"],
        "control_rouge_l": att["positive_control"]["tokens"]["best_rouge_l"]["rouge_l"],
        "bytes_per_call": pc.get("bytes", 0) + pc.get("server_bytes", 0), "rounds_per_call": pc.get("rounds"),
        "seconds_per_call": pc.get("latency_s"), "texts": first["tokens"]["best"].get("texts"),
        "search_added_afterwards": bool(att.get("added")),
    }


def checks(rows: list[dict]) -> tuple[list[dict], dict | None]:
    by = {r["run"]: r for r in rows}
    out = []
    if UNDEFENDED in by and "online_d0_b8" in by:
        cut = 1 - by["online_d0_b8"]["bytes_per_call"] / by[UNDEFENDED]["bytes_per_call"]
        out.append({"check": "8-bit cuts the bytes per call vs 32-bit (online, dcor 0)", "value": cut, "bar": ">= 0.70",
                    "passed": cut >= 0.70})
    if UNDEFENDED in by:
        u = by[UNDEFENDED]
        out.append({"check": "positive control: reconstruction effectiveness on the undefended split", "value":
                    u["effectiveness"], "bar": ">= 0.5 (the attack works)", "passed": u["effectiveness"] >= 0.5})
        if u["gradient_label"] is not None:
            out.append({"check": "positive control: gradient label inference on the undefended split",
                        "value": u["gradient_label"], "bar": f"> majority {u['label_majority']:.3f}",
                        "passed": u["gradient_label"] > u["label_majority"]})
    defended = [r for r in rows if r["effectiveness"] < EFFECTIVE and r["variant"] in ("online", "gradfree")]
    point = max(defended, key=lambda r: r["tuned"]) if defended else None
    if point is not None and UNDEFENDED in by:
        point = {**point, "accuracy_loss_vs_undefended": by[UNDEFENDED]["tuned"] - point["tuned"]}
        control_ok = by[UNDEFENDED]["effectiveness"] >= EFFECTIVE  # else "< 0.5" shows no defence
        out.append({"check": f"accuracy loss of {point['run']} (effectiveness {point['effectiveness']:.3f} < 0.5) vs "
                    "the undefended split", "value": point["accuracy_loss_vs_undefended"],
                    "bar": "<= 0.015 (GuardedTuning's claim), with the positive control >= 0.5",
                    "passed": point["accuracy_loss_vs_undefended"] <= 0.015 and control_ok})
    public = [r for r in rows if r["variant"] in ("online", "gradfree") and "public_search" in r["attack_rouge_l"]]
    if UNDEFENDED in by and "public_search" in by[UNDEFENDED]["attack_rouge_l"]:
        u = by[UNDEFENDED]["attack_rouge_l"]["public_search"]
        out.append({"check": "public-weights attacker (pretrained adapter) on the undefended split: ROUGE-L",
                    "value": u, "bar": ">= 0.5 (informational: the realistic server)", "passed": u >= EFFECTIVE})
    low = [r for r in public if r["attack_rouge_l"]["public_search"] < EFFECTIVE]
    if not low and public:
        out.append({"check": "public-weights attacker only: a setting with its ROUGE-L < 0.5", "value":
                    min(r["attack_rouge_l"]["public_search"] for r in public), "bar": "< 0.5 (informational)",
                    "passed": False})
    if low and UNDEFENDED in by:
        best = max(low, key=lambda r: r["tuned"])
        out.append({"check": f"public-weights attacker only: accuracy loss of {best['run']} (its ROUGE-L "
                    f"{best['attack_rouge_l']['public_search']:.3f} < 0.5; the white box's {best['effectiveness']:.3f})",
                    "value": by[UNDEFENDED]["tuned"] - best["tuned"], "bar": "<= 0.015 (informational)",
                    "passed": by[UNDEFENDED]["tuned"] - best["tuned"] <= 0.015})
    return out, point


def _attack_cells(r: dict) -> str:
    return " / ".join("–" if a not in r["attack_rouge_l"] else
                      f"{r['attack_rouge_l'][a]:.3f} ({r['attack_recovery'][a]:.3f})" for a in ATTACKS)


def markdown(rows: list[dict], found: list[dict], point: dict | None) -> str:
    lines = ["# GuardedTuning: the --dcor sweep (issue 25)", "",
             f"Model {rows[0]['model']}, task {rows[0]['task']}; reconstruction effectiveness = the best attack's "
             "token-level ROUGE-L F1 on each text's last release (the strongest attack: white-box input adapter); "
             f"undefended split = `{UNDEFENDED}`. Per attack, ROUGE-L (token recovery): `whitebox_opt` (relaxed "
             "embeddings + causal rounding, client's final adapter), `whitebox_search` (left-to-right exhaustive "
             "search, client's final adapter), `public_search` (the same search with the pretrained adapter: what a "
             "server that never sees the client's private adapter knows).", "",
             "| run | variant | dcor | bits | zero-shot | tuned | effectiveness (attack) | token recovery | "
             "opt / search / public search | random view max | label AIA (majority) | gradient label (control) | "
             "game adv. | KB/call | rounds/call |",
             "|" + "---|" * 15]
    for r in rows:
        grad = "–" if r["gradient_label"] is None else f"{r['gradient_label']:.3f} ({r['gradient_label_control']:.3f})"
        lines.append(f"| {r['run']} | {r['variant']} | {r['dcor']} | {r['bits']} | {r['zero_shot']:.3f} | {r['tuned']:.3f} | "
                     f"{r['effectiveness']:.3f} ({r['effectiveness_attack']}) | {r['recovery']:.3f} | {_attack_cells(r)} | "
                     f"{r['random_view_max']:.3f} | {r['label_aia']:.3f} ({r['label_majority']:.3f}) | {grad} | "
                     f"{r['game_advantage']:.2f} | {r['bytes_per_call'] / 1e3:,.1f} | {r['rounds_per_call']:.1f} |")
    lines += ["", "| check | value | bar | passed |", "|---|---|---|---|"]
    lines += [f"| {c['check']} | {c['value']:.3f} | {c['bar']} | {'yes' if c['passed'] else '**no**'} |" for c in found]
    lines += ["", "Operating point (best tuned accuracy with effectiveness < 0.5): " +
              ("none in this sweep" if point is None else
               f"`{point['run']}`: tuned {point['tuned']:.3f}, effectiveness {point['effectiveness']:.3f}, accuracy "
               f"loss vs the undefended split {point.get('accuracy_loss_vs_undefended', float('nan')):+.3f}"), ""]
    return "\n".join(lines)


def plot(rows: list[dict], path: Path) -> None:
    fig, (a, b) = plt.subplots(1, 2, figsize=(10, 4))
    for variant, marker in (("online", "o"), ("gradfree", "s")):
        rs = sorted((r for r in rows if r["variant"] == variant and r["bits"] == 8), key=lambda r: r["dcor"])
        a.set_xscale("symlog", linthresh=1.0)
        b.set_xscale("symlog", linthresh=1.0)
        if rs:
            a.plot([r["dcor"] for r in rs], [r["effectiveness"] for r in rs], marker=marker, label=f"{variant}: strongest")
            pub = [(r["dcor"], r["attack_rouge_l"]["public_search"]) for r in rs if "public_search" in r["attack_rouge_l"]]
            if pub:
                a.plot(*zip(*pub), marker=marker, ls=":", label=f"{variant}: public weights")
            b.plot([r["dcor"] for r in rs], [r["tuned"] for r in rs], marker=marker, label=variant)
    a.axhline(EFFECTIVE, ls="--", c="grey")
    a.set(xlabel="--dcor", ylabel="reconstruction effectiveness (ROUGE-L)", title="attack (8-bit wire)")
    b.set(xlabel="--dcor", ylabel="tuned test accuracy", title="utility (8-bit wire)")
    a.legend()
    b.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def command(rows: list[dict]) -> str:
    """How the runs were made: the sweep, and, for runs attacked before the search existed, its addition."""
    added = [r["run"] for r in rows if r["search_added_afterwards"]]
    return "bash scripts/guarded_sweep.sh" + (f"; then SEARCH_ONLY=1 bash scripts/guarded_sweep.sh {' '.join(added)}"
                                               if added else "")


def main(out: str) -> None:
    root = Path(out)
    rows = [r for r in (row(f) for f in sorted(root.iterdir()) if f.is_dir()) if r is not None]
    if not rows:
        raise SystemExit(f"{root}: no runs with report.json and attacks.json")
    found, point = checks(rows)
    (root / "sweep.json").write_text(json.dumps({"rows": rows, "checks": found, "operating_point": point, "machine": machine_info(),
                                                 "command": command(rows)}, indent=1))
    (root / "sweep.md").write_text(markdown(rows, found, point))
    plot(rows, root / "sweep.png")
    compare_privacy([str(root / r["run"]) for r in rows], str(root))
    print((root / "sweep.md").read_text())


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "reports/privacy/guarded/sweep")
