"""`secptune compare --privacy RUN ...`: privacy, accuracy and cost of runs of every mode, one row
per run, and the trade-off plot (tuned accuracy against the best attack's success; marker =
mode, marker size = bytes per API call).

A run is a `secptune tune --out` directory (report.json) with, where its view was recorded
and attacked, attacks.json beside it.  An API call is what each mode's report calls one:
one candidate prompt scored on the training texts (plain, secure, privtune) or one tuning
step on a mini-batch (guarded).  Link times are the cost model's (mpc.costmodel): the
busier direction's bytes and the rounds of one call on each modelled link, plus the
measured compute seconds.  Runs without attacks.json show "–" in the attack columns
(the secure mode's view is shares and masked openings: argued to be at chance, not
measured by this command).
"""

from __future__ import annotations

import json
import math
from pathlib import Path

from mpc import costmodel
from secptune.report import load_run

MARKERS = {"plain": "s", "secure": "D", "privtune": "^", "guarded": "o"}


def _attacks(run: Path) -> dict | None:
    path = run / "attacks.json"
    return json.loads(path.read_text()) if path.is_file() else None


def describe_mode(config: dict) -> str:
    """Mode and the parameters that set its privacy."""
    mode = config["mode"]
    if mode == "privtune":
        return f"privtune {config.get('noise')} η={config.get('eta')} K={config.get('split_layer')}"
    if mode == "guarded":
        return f"guarded {config.get('variant')} dcor={config.get('dcor')} {config.get('quant_bits')}-bit"
    if mode == "secure":
        return f"secure {config.get('attention', 'softmax')}"
    return "plain" + (" exact" if config.get("exact") else "")


def attack_figures(att: dict | None) -> dict:
    """Best inversion recovery and ROUGE-L, best label AIA, game advantage (first release,
    and the best over every averaging variant), gradient label inference."""
    if att is None:
        return {}
    variants = list(att["variants"].values())
    first = variants[0]
    out = {
        "inversion": max(v["tokens"]["best"]["recovery"] for v in variants),
        "inversion_first_release": first["tokens"]["best"]["recovery"],
        "rouge_l": max(v["tokens"].get("best_rouge_l", {}).get("rouge_l", math.nan) for v in variants),
        "aia": max(v["label_aia"]["accuracy"] for v in variants),
        "aia_majority": first["label_aia"]["chance_majority"],
        "game_advantage": first["game"]["advantage"],
        "control_inversion": att["positive_control"]["tokens"]["best"]["recovery"],
    }
    if "gradient_label" in att:
        out["gradient_label"] = att["gradient_label"]["accuracy"]
    return out


def cost_figures(report: dict) -> dict:
    pc = report.get("per_call") or {}
    if not pc:
        return {}
    if "online_bytes" in pc:  # secure: owner <-> server online traffic (the dealer's is offline)
        sent, rounds = pc["online_bytes"], pc["online_rounds"]
    else:
        sent, rounds = max(pc.get("bytes", 0), pc.get("server_bytes", 0)), pc.get("rounds", 0)
    total = pc.get("bytes", 0) + pc.get("server_bytes", 0)
    out = {"bytes": total, "rounds": rounds, "seconds": pc.get("latency_s", 0.0)}
    for link in costmodel.LINKS:
        out[f"{link.name}_s"] = pc.get("latency_s", 0.0) + link.added_s(sent, rounds)
    return out


def rows(paths: list[str]) -> list[dict]:
    out = []
    for p in paths:
        report = load_run(p)
        c, f = report["config"], report["final"]
        out.append({"run": Path(p).name, "task": c["task"], "model": c["model"], "mode": c["mode"],
                    "describe": describe_mode(c), "metric": f["metric"], "tuned": f["test"]["tuned"],
                    "zero_shot": f["test"]["zero_shot"], **attack_figures(_attacks(Path(p))),
                    **cost_figures(report)})
    for r in out:  # change vs the plain run of the same task and model, where one is given
        plain = [q for q in out if q["mode"] == "plain" and q["task"] == r["task"] and q["model"] == r["model"]]
        r["delta_vs_plain"] = r["tuned"] - plain[0]["tuned"] if plain else None
    return out


def _fmt(x, spec: str = ".3f") -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "–"
    return format(x, spec)


def markdown(table: list[dict]) -> str:
    links = [link.name for link in costmodel.LINKS]
    head = ("| run | task | mode | tuned | Δ vs plain | best inversion | ROUGE-L | best AIA (majority) | game adv. | "
            "grad. label | KB/call | rounds/call | s/call | " + " | ".join(f"{n} s/call" for n in links) + " |")
    lines = [head, "|" + "---|" * (13 + len(links))]
    for r in table:
        aia = f"{_fmt(r.get('aia'))} ({_fmt(r.get('aia_majority'))})" if "aia" in r else "–"
        lines.append(
            f"| {r['run']} | {r['task']} | {r['describe']} | {r['tuned']:.3f} | {_fmt(r['delta_vs_plain'], '+.3f')} | "
            f"{_fmt(r.get('inversion'))} | {_fmt(r.get('rouge_l'))} | {aia} | {_fmt(r.get('game_advantage'))} | "
            f"{_fmt(r.get('gradient_label'))} | {_fmt(r.get('bytes', 0) / 1e3, ',.1f')} | {_fmt(r.get('rounds'), '.1f')} | "
            f"{_fmt(r.get('seconds'), '.3f')} | " + " | ".join(_fmt(r.get(f'{n}_s'), '.3f') for n in links) + " |")
    return "\n".join(lines)


def plot(table: list[dict], path: str | Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    tasks = sorted({r["task"] for r in table})
    fig, axes = plt.subplots(1, len(tasks), figsize=(6 * len(tasks), 4.5), squeeze=False)
    sizes = [r.get("bytes") or 1.0 for r in table]
    lo, hi = math.log10(min(sizes)), math.log10(max(sizes))
    for ax, task in zip(axes[0], tasks):
        for r, b in zip(table, sizes):
            if r["task"] != task:
                continue
            x = r.get("inversion")
            measured = x is not None
            size = 40 + 360 * ((math.log10(b) - lo) / (hi - lo) if hi > lo else 0.5)
            ax.scatter(x if measured else 0.0, r["tuned"], s=size, marker=MARKERS.get(r["mode"], "x"),
                       facecolors=None if measured else "none", edgecolors="k", alpha=0.75)
            ax.annotate(r["describe"], (x if measured else 0.0, r["tuned"]), fontsize=6, xytext=(4, 3),
                        textcoords="offset points")
        ax.set(xlabel="best token-inversion recovery (hollow: no recorded view, not measured)",
               ylabel="tuned test metric", title=f"{task}: accuracy vs attack success (size: bytes/call)")
        ax.set_xlim(-0.05, 1.05)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def machine() -> dict:
    import os

    import torch

    return {"cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(), "load_avg": list(os.getloadavg())}


def compare_privacy(paths: list[str], out_dir: str | None = None) -> str:
    table = rows(paths)
    text = markdown(table)
    if out_dir:
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        (out / "compare.json").write_text(json.dumps({"rows": table, "machine": machine()}, indent=1))
        (out / "compare.md").write_text("# secptune compare --privacy\n\n" + text + "\n")
        plot(table, out / "tradeoff.png")
    return text
