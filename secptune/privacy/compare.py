"""`secptune compare --privacy RUN ...`: privacy, accuracy and cost of runs of every mode, one row
per run, and the trade-off plot (tuned accuracy against the best attack's success; marker =
mode, marker size = bytes per API call).

A run is a `secptune tune --out` directory (report.json) with, where its view was recorded
and attacked, attacks.json beside it.  An API call is what each mode's report calls one:
one candidate prompt scored on the training texts (plain, secure, privtune) or one tuning
step on a mini-batch (guarded).  Link times are the cost model's (mpc.costmodel): the
busier direction's bytes and the rounds of one call on each modelled link, plus the
measured compute seconds.  Runs without attacks.json show "–" in the attack columns.

A secure row may stand in for a secure tuning run a 2-core CPU cannot finish at the grid's budget
(hundreds of seconds per call): the run directory holds the tuning of the secure run's plain
oracle (the same approximations in float32, which the secure run equals within the tested
fixed-point tolerance) and ``secure_call.json``, a measured `secptune infer --mode secure` of one
call's worth of texts.  The row then takes its cost from that measurement, every wire counted
(owner, server and the dealer as a third host), and its attack figures from the secure suite's
report (``--secure-view``: an attacks.json of `secptune attack` on a recorded secure view).
"""

from __future__ import annotations

import json
import math
from pathlib import Path

from mpc import costmodel
from mpc.roles import COMPUTING
from secptune.bench.common import provenance
from secptune.errors import InputError
from secptune.report import load_run

MARKERS = {"plain": "s", "secure": "D", "privtune": "^", "guarded": "o"}
EFFECTIVE = 0.5  # GuardedTuning's bar: data-reconstruction effectiveness (ROUGE-L) below 50 %


def is_undefended_split(config: dict) -> bool:
    """GuardedTuning's reference point: the online split with no regulariser and 32-bit wires
    (accuracy losses of the defended settings are measured against it, as the paper does)."""
    return (config["mode"] == "guarded" and config.get("variant") == "online" and not config.get("dcor")
            and config.get("quant_bits") == 32)


def _attacks(run: Path) -> dict | None:
    path = run / "attacks.json"
    return json.loads(path.read_text()) if path.is_file() else None


SECURE_CALL = "secure_call.json"


def describe_mode(config: dict, secure_stand_in: bool = False) -> str:
    """Mode and the parameters that set its privacy."""
    mode = config["mode"]
    if secure_stand_in:
        return f"secure {config.get('attention', 'softmax')} (tuned via its f32 oracle)"
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


def secure_attack_figures(att: dict | None) -> dict:
    """The secure suite's figures (secptune.privacy.secure_suite): best token recovery over every
    channel and attack, best label AIA, the largest game advantage, and the control's recovery."""
    if att is None:
        return {}
    channels = att["channels"].values()
    best = att["summary"]["best_recovery"]
    # every opening is masked afresh: no value is released twice, so the first release is every release
    return {"inversion": best, "inversion_first_release": best,
            "aia": max(c["label_aia"]["accuracy"] for c in channels),
            "aia_majority": max(c["label_aia"]["chance_majority"] for c in channels),
            "game_advantage": max(abs(g["advantage"]) for c in channels for g in c["game"].values()),
            "control_inversion": att["control"]["best"]["recovery"], "attack_tokens": att["summary"]["recorded_text_tokens"]}


def secure_call_cost(call: dict) -> dict:
    """Cost of one measured secure call (an infer result.json): bytes on every wire, the owner's
    online rounds, the secure forward's seconds, and the links with the dealer as a third host."""
    comm = call["comm"]
    links = costmodel.session_link_times(comm)
    seconds = call["forward_s"]
    events = call.get("range_events") or {}
    return {"bytes": costmodel.all_wires_bytes(comm), "dealer_bytes": comm["dealer"]["bytes"],
            "rounds": comm[COMPUTING[0]]["online"]["rounds"], "seconds": seconds, "call_texts": call["examples"],
            "range_check": f"{events.get('out_of_range', 0)} of {events.get('forwards', 0)} forwards out of range",
            **{f"{name}_s": seconds + added for name, added in links.items()}}


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


def rows(paths: list[str], secure_view: str | None = None) -> list[dict]:
    out = []
    secure_att = json.loads(Path(secure_view).read_text()) if secure_view else None
    for p in paths:
        report = load_run(p)
        c, f = report["config"], report["final"]
        call = Path(p) / SECURE_CALL
        row = {"run": Path(p).name, "task": c["task"], "model": c["model"], "mode": c["mode"],
               "describe": describe_mode(c, call.is_file()), "metric": f["metric"], "tuned": f["test"]["tuned"],
               "zero_shot": f["test"]["zero_shot"], "k": c.get("k"), "calls": (report.get("totals") or {}).get("api_calls"),
               "undefended_split": is_undefended_split(c)}
        if call.is_file():
            if c["mode"] != "plain" or c.get("exact"):
                raise InputError(f"{p}: {SECURE_CALL} goes with a tuning of the secure run's plain oracle "
                                 f"(--mode plain without --exact), not --mode {c['mode']}")
            row.update(mode="secure", accuracy_from="plain oracle, " + str(c.get("precision") or "float64"),
                       **secure_attack_figures(secure_att), **secure_call_cost(json.loads(call.read_text())))
        else:
            row.update(**attack_figures(_attacks(Path(p))), **cost_figures(report))
        out.append(row)
    for r in out:  # change vs the plain run of the same task and model, where one is given
        plain = [q for q in out if q["mode"] == "plain" and (q["task"], q["model"]) == (r["task"], r["model"])]
        plain.sort(key=lambda q: "exact" not in q["describe"])  # the exact model first, where one ran
        r["delta_vs_plain"] = r["tuned"] - plain[0]["tuned"] if plain else None
        split = [q for q in out if q["undefended_split"] and (q["task"], q["model"]) == (r["task"], r["model"])]
        if r["mode"] == "guarded" and split:
            r["loss_vs_undefended"] = split[0]["tuned"] - r["tuned"]
    return out


def defended_settings(table: list[dict]) -> list[str]:
    """Per task, GuardedTuning's question: the guarded settings whose reconstruction effectiveness
    (the best attack's ROUGE-L) is below 0.5, and their accuracy loss vs the undefended split."""
    lines = []
    for task, model in sorted({(r["task"], r["model"]) for r in table if "loss_vs_undefended" in r}):
        same = [r for r in table if (r["task"], r["model"]) == (task, model)]
        guarded = [r for r in same if "loss_vs_undefended" in r and not r["undefended_split"]]
        below = [r for r in guarded if r.get("rouge_l") is not None and not math.isnan(r["rouge_l"])
                 and r["rouge_l"] < EFFECTIVE]
        base = next(r for r in same if r["undefended_split"])
        head = (f"{task}: reconstruction effectiveness (best attack's ROUGE-L) < {EFFECTIVE} vs the undefended split "
                f"({base['describe']}, tuned {base['tuned']:.3f}; GuardedTuning claims a loss <= 1.5 points): ")
        lines.append(head + ("; ".join(f"{r['describe']} — effectiveness {r['rouge_l']:.3f}, accuracy loss "
                                       f"{100 * r['loss_vs_undefended']:+.1f} points" for r in below)
                             or "no setting in this table (" + ", ".join(f"{r['describe']} {_fmt(r.get('rouge_l'))}"
                                                                        for r in guarded) + ")"))
    return lines


def _fmt(x, spec: str = ".3f") -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "–"
    return format(x, spec)


def markdown(table: list[dict]) -> str:
    links = [link.name for link in costmodel.LINKS]
    head = ("| run | task | mode | k | calls | tuned | Δ vs plain | best inversion | ROUGE-L | best AIA (majority) | game adv. | "
            "grad. label | KB/call | rounds/call | s/call | " + " | ".join(f"{n} s/call" for n in links) + " |")
    lines = [head, "|" + "---|" * (15 + len(links))]
    for r in table:
        aia = f"{_fmt(r.get('aia'))} ({_fmt(r.get('aia_majority'))})" if "aia" in r else "–"
        lines.append(
            f"| {r['run']} | {r['task']} | {r['describe']} | {_fmt(r.get('k'), 'd')} | {_fmt(r.get('calls'), ',d')} | {r['tuned']:.3f} | {_fmt(r['delta_vs_plain'], '+.3f')} | "
            f"{_fmt(r.get('inversion'))} | {_fmt(r.get('rouge_l'))} | {aia} | {_fmt(r.get('game_advantage'))} | "
            f"{_fmt(r.get('gradient_label'))} | {_fmt(r.get('bytes', 0) / 1e3, ',.1f')} | {_fmt(r.get('rounds'), '.1f')} | "
            f"{_fmt(r.get('seconds'), '.3f')} | " + " | ".join(_fmt(r.get(f'{n}_s'), '.3f') for n in links) + " |")
    stand_ins = [r for r in table if "accuracy_from" in r]
    if stand_ins:
        calls = ", ".join(f"{r['run']} on {r['task']}: {r['call_texts']} texts, range check {r['range_check']}"
                          for r in stand_ins)
        lines += ["", "Secure rows: tuned accuracy from the secure run's plain oracle at the same budget; bytes (every "
                      "wire, the dealer's included), rounds and seconds from one measured secure call "
                      f"({calls}); attack figures from the secure suite's recorded view (--secure-view), '–' where none "
                      "was given."]
    defended = defended_settings(table)
    if defended:
        lines += [""] + [f"- {line}" for line in defended]
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


def compare_privacy(paths: list[str], out_dir: str | None = None, secure_view: str | None = None) -> str:
    table = rows(paths, secure_view)
    text = markdown(table)
    if out_dir:
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        command = "secptune compare --privacy " + " ".join(paths) + (f" --secure-view {secure_view}" if secure_view else "")
        (out / "compare.json").write_text(json.dumps({"rows": table, "secure_view": secure_view,
                                                      **provenance(command)}, indent=1))
        (out / "compare.md").write_text("# secptune compare --privacy\n\n" + text + "\n")
        plot(table, out / "tradeoff.png")
    return text
