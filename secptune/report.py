"""Tuning reports (JSON + Markdown + curves) and side-by-side comparison of runs."""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

from mpc import costmodel
from secptune.errors import InputError


def _per_call(train_forwards: list[dict], popsize: int, server_forwards: list[dict] | None = None) -> dict:
    """Latency and traffic per API call (one candidate on the training texts).

    ``bytes``/``rounds``: what the owner sent (online + its requests to the dealer);
    ``online_*``: owner <-> server only; ``dealer_bytes``: what the dealer sent for one call —
    to the owner, plus to the server where its forwards are known (``server_forwards``, local
    runs: the server's entries on the training texts), else None (``dealer_to_owner_bytes`` only).
    """
    if not train_forwards:
        return {}
    calls = len(train_forwards) * popsize
    out = {
        "calls": calls,
        "latency_s": sum(f["wall_s"] for f in train_forwards) / calls,
        "bytes": sum(f["bytes"] for f in train_forwards) / calls,
        "rounds": sum(f["rounds"] for f in train_forwards) / calls,
    }
    if all("server_bytes" in f for f in train_forwards):  # split runs: both directions, links modelled
        out["server_bytes"] = sum(f["server_bytes"] for f in train_forwards) / calls
        busier = max(out["bytes"], out["server_bytes"])
        out["links_s"] = {link.name: link.added_s(busier, out["rounds"]) for link in costmodel.LINKS}
    if all("online" in f for f in train_forwards):  # secure runs (plain ones send nothing)
        out["online_bytes"] = sum(f["online"]["bytes"] for f in train_forwards) / calls
        out["online_rounds"] = sum(f["online"]["rounds"] for f in train_forwards) / calls
        to_owner = sum(f["from_dealer"]["bytes"] for f in train_forwards) / calls
        out["dealer_to_owner_bytes"] = to_owner
        out["dealer_bytes"] = None
        texts = {f["texts"] for f in train_forwards}
        served = [f for f in server_forwards or [] if f.get("texts") in texts and "from_dealer" in f]
        if served:
            to_server = sum(f["from_dealer"]["bytes"] for f in served) / sum(f["candidates"] for f in served)
            out["dealer_to_server_bytes"] = to_server
            out["dealer_bytes"] = to_owner + to_server
    return out


def write_tune_report(out: Path, cfg, result: dict, totals: dict, wall_s: float,
                      server_forwards: list[dict] | None = None) -> dict:
    out.mkdir(parents=True, exist_ok=True)
    gens = result["history"]
    data = {
        "config": asdict(cfg),
        "generations": gens,
        "final": result["final"],
        "totals": {"wall_s": wall_s, "parties": totals, "api_calls": result.get("api_calls", len(gens) * cfg.popsize)},
        "per_call": _per_call(result["train_forwards"], cfg.popsize, server_forwards),
    }
    (out / "report.json").write_text(json.dumps(data, indent=1))
    (out / "report.md").write_text(_markdown(data))
    _plot_curves(out / "curves.png", [(f"{cfg.mode}", gens)])
    return data


def _markdown(d: dict) -> str:
    c, f, t = d["config"], d["final"], d["totals"]
    lines = [
        f"# secptune tune: {c['task']} on {c['model']} ({c['mode']}{_precision(c)})",
        "",
        f"k={c['k']} seed={c['seed']} prompt_len={c['prompt_len']} d={c['intrinsic_dim']} "
        f"popsize={c['popsize']} budget={c['budget']} loss={c['loss']} alpha={c.get('alpha', 1.0)} "
        f"attention={c.get('attention', 'softmax')} device={c.get('device', 'cpu')}",
        "",
        *([f"GuardedTuning: {_guarded_line(f['guarded'])}", ""] if f.get("guarded") else []),
        f"| split | zero-shot {f['metric']} | tuned {f['metric']} |",
        "|---|---|---|",
        f"| dev | {f['dev']['zero_shot']:.3f} | {f['dev']['tuned']:.3f} |",
        f"| test | {f['test']['zero_shot']:.3f} | {f['test']['tuned']:.3f} |",
        "",
        f"Best generation {f['best_generation']} of {len(d['generations'])}; wall {t['wall_s']:.1f} s; "
        f"{t['api_calls']} API calls." + (f" Stopped early: {f['stopped']}." if f.get("stopped") else "")
        + (f" Range events (secure range check fired): {f['range_events']} forwards, "
           f"{f.get('invalid_generations', 0)} generations discarded." if f.get("range_events") else ""),
        "",
        "| party | bytes sent | rounds |",
        "|---|---|---|",
    ]
    lines += [f"| {p} | {v['bytes']:,} | {v['rounds']:,} |" for p, v in t["parties"].items()]
    check = f.get("oracle_check")
    if check and check.get("checked"):
        loss = check["max_rel_loss_diff"]
        lines += ["", f"Checked against the float64 oracle (every {check['every']} calls per text set): {check['checked']} of "
                      f"{check['calls']} calls, predictions agree on {check['agreement']:.2%} of {check['sequences']}, "
                      f"max relative score difference {check['max_rel_score_diff']:.2g}"
                      + ("" if loss is None else f", max relative loss difference {loss:.2g}")
                      + f"; float32 {check['fast_wall_s']:.1f} s vs float64 {check['oracle_wall_s']:.1f} s on those calls."]
    if d.get("per_call"):
        pc = d["per_call"]
        line = f"Per API call: {pc['latency_s'] * 1e3:.1f} ms, {pc['bytes'] / 1e6:.2f} MB sent by the owner, {pc['rounds']:.1f} rounds"
        if "links_s" in pc:
            line += "; a link adds " + ", ".join(f"{name} {t * 1e3:.1f} ms" for name, t in pc["links_s"].items())
        if "online_bytes" in pc:
            line += f" (online {pc['online_bytes'] / 1e6:.2f} MB in {pc['online_rounds']:.1f} rounds)"
            if pc.get("dealer_bytes") is not None:
                line += f"; the dealer sent {pc['dealer_bytes'] / 1e6:.2f} MB (both parties)"
            else:
                line += f"; the dealer sent the owner {pc['dealer_to_owner_bytes'] / 1e6:.2f} MB (the server's share unknown here)"
        lines += ["", line + "."]
    return "\n".join(lines) + "\n"


def _guarded_line(g: dict) -> str:
    """A guarded run's own settings (its API call is one tuning step on a mini-batch)."""
    return (f"variant {g['variant']}, dcor {g['dcor']}, {g['quant_bits']}-bit wire, adapters {g['in_layers']} in + "
            f"{g['out_layers']} out ({g['adapters']}), {g['epochs']} epochs at lr {g['lr']}, {g['steps']} steps "
            f"in {g['tuning_s']:.1f} s.")


def _precision(config: dict) -> str:
    """How a run computed: exact float32 (transformers), or the approximations in a precision."""
    if config.get("exact"):
        return ", exact float32"
    if config["mode"] == "plain":
        return f", approximations in {config.get('precision') or 'float64'}"
    return ""


def _plot_curves(path: Path, runs: list[tuple[str, list[dict]]]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 4))
    for name, gens in runs:
        x = [g["gen"] for g in gens]
        # markers: a one-generation run is a point, not an invisible line
        ax1.plot(x, [g["best_loss"] for g in gens], marker="o", label=f"{name} best")
        ax1.plot(x, [g["mean_loss"] for g in gens], "--", marker="x", label=f"{name} mean")
        dev = [(g["gen"], g["dev_accuracy"]) for g in gens if "dev_accuracy" in g]
        if dev:
            ax2.plot(*zip(*dev), marker="o", label=name)
    ax1.set(xlabel="generation", ylabel="training loss", title="CMA-ES loss")
    ax2.set(xlabel="generation", ylabel="dev metric", title="dev metric of best candidate")
    ax1.legend()
    ax2.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def load_run(path: str) -> dict:
    p = Path(path)
    p = p / "report.json" if p.is_dir() else p
    if not p.is_file():
        raise InputError(f"{path}: no report.json here; pass a run directory written by `secptune tune --out`")
    return json.loads(p.read_text())


def _mode(config: dict) -> str:
    if config.get("exact"):
        return config["mode"] + " (exact)"
    return config["mode"] + (" (float32)" if config.get("precision") == "float32" else "")


def _mb(value) -> str:
    return "?" if value is None else f"{value / 1e6:.2f}"


def compare(paths: list[str], plot: str | None = None) -> str:
    """A table of runs side by side (accuracy, wall time, traffic, time per call)."""
    runs = [(p, load_run(p)) for p in paths]
    header = ("| run | task | mode | API calls | test zero-shot | test tuned | wall s | owner MB | server MB | dealer MB "
              "| ms/call | MB/call | rounds/call | online MB/call | dealer MB/call |")
    lines = [header, "|" + "---|" * 15]
    for path, d in runs:
        f, parties, pc = d["final"], d["totals"]["parties"], d.get("per_call", {})
        mb = lambda role: parties.get(role, {}).get("bytes", 0) / 1e6  # noqa: E731
        lines.append(
            f"| {Path(path).name} | {d['config']['task']} | {_mode(d['config'])} | {d['totals'].get('api_calls', '')} "
            f"| {f['test']['zero_shot']:.3f} | {f['test']['tuned']:.3f} | "
            f"{d['totals']['wall_s']:.1f} | {mb('owner'):.1f} | {mb('server'):.1f} | {mb('dealer'):.1f} | "
            f"{pc.get('latency_s', 0) * 1e3:.1f} | {pc.get('bytes', 0) / 1e6:.2f} | {pc.get('rounds', 0):.0f} | "
            f"{_mb(pc.get('online_bytes', 0))} | {_mb(pc.get('dealer_bytes', 0))} |"
        )
    if plot:
        _plot_curves(Path(plot), [(Path(p).name + ":" + d["config"]["mode"], d["generations"]) for p, d in runs])
    return "\n".join(lines)
