"""Issue 24's privacy figures, assembled from the runs of ``scripts/privacy_runs.sh`` (measures
nothing itself): each ``reports/privacy/NAME/`` holds a run's ``result.json`` (or a tuning
run's ``report.json``) and its ``attacks.json``.  Writes ``reports/privacy/summary.json``
(one row per run, the acceptance checks with their bars) and ``reports/privacy/dchi_sweep.png``.

    python -m research.privacy_figures
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent / "reports" / "privacy"


def _eta(header: dict) -> float:
    eta = header["mechanism"]["eta"]
    return math.inf if eta == "inf" else float(eta)


def row(folder: Path) -> dict | None:
    attacks_path = folder / "attacks.json"
    if not attacks_path.is_file():
        return None
    a = json.loads(attacks_path.read_text())
    if "variants" not in a:  # another suite's report (secure/: the secure view's)
        return None
    h = a["header"]
    result = folder / "result.json"
    accuracy = json.loads(result.read_text())["accuracy"] if result.is_file() else None
    variants = a["variants"]
    first = variants["releases_1"]
    last = variants[max(variants, key=lambda k: variants[k]["releases_averaged"])]
    return {
        "run": folder.name, "task": h["task"], "split_layer": h["split_layer"], "noise": h["mechanism"]["noise"],
        "eta": h["mechanism"]["eta"], "release": h["release"], "texts": h["items"],
        "zero_shot_accuracy": accuracy,
        "tokens": first["tokens"]["nearest_token"]["tokens"],
        "nearest_recovery": first["tokens"]["nearest_token"]["recovery"],
        "best_adaptive_recovery": first["tokens"]["best_adaptive"]["recovery"],
        "best_adaptive_attack": first["tokens"]["best_adaptive"]["attack"],
        "best_recovery": first["tokens"]["best"]["recovery"],
        "best_ci95": first["tokens"][first["tokens"]["best"]["attack"]]["ci95"],
        "random_view_max": max(f["null_random_view"] for k, f in first["tokens"].items() if not k.startswith("best")),
        "gaussian_view_max": max(f.get("null_gaussian_view", 0.0) for k, f in first["tokens"].items()
                                 if not k.startswith("best")),
        "label_aia": first["label_aia"]["accuracy"], "label_aia_ci95": first["label_aia"]["ci95"],
        "label_chance": first["label_aia"]["chance_majority"],
        "length_exact": first["length"]["exact"], "length_prior_exact": first["length"]["null_prior_exact"],
        "game_advantage": first["game"]["advantage"], "game_bound_success": first["game"]["bound_success"],
        "averaged_releases": last["releases_averaged"], "averaged_best_recovery": last["tokens"]["best"]["recovery"],
        "control_best_recovery": a["positive_control"]["tokens"]["best"]["recovery"],
        "control_label_aia": a["positive_control"]["label_aia"]["accuracy"],
        "control_label_chance": a["positive_control"]["label_aia"]["chance_majority"],
        "attack_wall_s": a["wall_s"], "machine": a.get("machine"),
        **tuned_figures(folder / "tuned.json"),
    }


def tuned_figures(path: Path) -> dict:
    """A prompt tuned through the same mechanism (`privacy_runs.sh tuned`): test accuracy before and
    after tuning in that one run, its budget, and what a call cost."""
    if not path.is_file():
        return {}
    t = json.loads(path.read_text())
    c, test, pc = t["config"], t["final"]["test"], t.get("per_call", {})
    return {"tuned_accuracy": test["tuned"], "tuned_zero_shot": test["zero_shot"], "tuned_budget": c["budget"],
            "tuned_k": c["k"], "tuned_test_examples": c["test_limit"], "tuned_s_per_call": pc.get("latency_s"),
            "tuned_bytes_per_call": pc.get("bytes")}


def checks(rows: dict) -> list[dict]:
    """The issue's acceptance bars, each on the run that measures it (absent runs: not checked)."""
    out = []

    def check(name, run, value, bar, ok):
        if run in rows:
            out.append({"check": name, "run": run, "value": value(rows[run]), "bar": bar, "passed": ok(rows[run])})

    check("positive control: inversion at split 0 without noise", "sst2_split0_inf",
          lambda r: r["best_recovery"], ">= 0.95", lambda r: r["best_recovery"] >= 0.95)
    check("positive control: label AIA above chance", "sst2_split0_inf", lambda r: r["label_aia"],
          "CI above the majority rate", lambda r: r["label_aia_ci95"][0] > r["label_chance"])
    check("random views", "sst2_split0_inf", lambda r: r["random_view_max"], "<= 0.002",
          lambda r: r["random_view_max"] <= 0.002)
    check("split layer 2 without noise: best adaptive", "sst2_split2_inf", lambda r: r["best_adaptive_recovery"],
          ">= 0.80", lambda r: r["best_adaptive_recovery"] >= 0.80)
    check("split layer 2 without noise: nearest neighbour", "sst2_split2_inf", lambda r: r["nearest_recovery"],
          "<= 0.01", lambda r: r["nearest_recovery"] <= 0.01)
    check("eta 25 per call: average of 64 releases", "sst2_split0_eta25_percall",
          lambda r: r["averaged_best_recovery"], ">= 0.95 (64 releases)",
          lambda r: r["averaged_releases"] >= 64 and r["averaged_best_recovery"] >= 0.95)
    return out


def operating_points(rows: list[dict], bar: float = 0.10) -> dict:
    """Per noise kind (AG News, split 0): the run with the best accuracy among those whose best attack
    recovers at most ``bar`` of the tokens (PrivTune's headline asks for 10 %): tuned accuracy where
    every such run was tuned, zero-shot otherwise; with the unprotected split's tuned accuracy at the
    same budget and the drop from it."""
    plain = next((r for r in rows if r["task"] == "agnews" and r["split_layer"] == 0 and r["eta"] == "inf"
                  and "tuned_accuracy" in r), None)
    out = {}
    for noise in ("dchi", "privtune"):
        ok = [r for r in rows if r["task"] == "agnews" and r["noise"] == noise and r["best_recovery"] <= bar
              and r["zero_shot_accuracy"] is not None]
        key = "tuned_accuracy" if ok and all("tuned_accuracy" in r for r in ok) else "zero_shot_accuracy"
        best = max(ok, key=lambda r: r[key]) if ok else None
        if best is None:
            out[noise] = None
            continue
        point = {k: best.get(k) for k in ("run", "eta", "zero_shot_accuracy", "tuned_accuracy", "tuned_budget",
                                          "tuned_s_per_call", "best_recovery", "label_aia", "label_chance")}
        point["chosen_by"] = key
        if plain is not None and "tuned_accuracy" in best and plain["tuned_budget"] == best["tuned_budget"]:
            point["plain_tuned_accuracy"] = plain["tuned_accuracy"]
            point["drop_vs_plain"] = plain["tuned_accuracy"] - best["tuned_accuracy"]
        out[noise] = point
    return out


def plot(rows: list[dict], path: Path) -> None:
    sweep = sorted((r for r in rows if r["noise"] == "dchi" and r["task"] == "agnews" and r["split_layer"] == 0
                    and r["release"] == "once"), key=lambda r: -_eta({"mechanism": {"eta": r["eta"]}}))
    if not sweep:
        return
    fig, ax = plt.subplots(figsize=(6, 4))
    labels = [r["eta"] if isinstance(r["eta"], str) else f"{r['eta']:g}" for r in sweep]
    for key, name in (("best_recovery", "token recovery (best attack)"), ("label_aia", "topic AIA"),
                      ("zero_shot_accuracy", "zero-shot accuracy"), ("tuned_accuracy", "tuned accuracy")):
        if all(key in r for r in sweep):
            budget = f" ({sweep[0]['tuned_budget']} calls)" if key == "tuned_accuracy" else ""
            ax.plot(labels, [r[key] for r in sweep], marker="o", label=name + budget)
    ax.axhline(0.25, color="grey", lw=0.8, ls="--", label="chance (4 topics)")
    ax.set_xlabel("η (isotropic dχ, split layer 0; inf = no noise)")
    ax.set_ylim(0, 1.02)
    ax.legend(fontsize=8)
    ax.set_title("SmolLM2, AG News: privacy vs utility under dχ noise")
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main() -> int:
    rows = [r for r in (row(f) for f in sorted(ROOT.iterdir()) if f.is_dir()) if r is not None]
    by_run = {r["run"]: r for r in rows}
    machines = [r["machine"] for r in rows if r.get("machine")]
    summary = {"machine": machines[0] if machines else None, "rows": rows, "checks": checks(by_run), "operating_points": operating_points(rows)}
    (ROOT / "summary.json").write_text(json.dumps(summary, indent=1))
    plot(rows, ROOT / "dchi_sweep.png")
    for noise, point in summary["operating_points"].items():
        print(f"best accuracy at token recovery <= 10 % ({noise}): {point}")
    for c in summary["checks"]:
        print(f"{'PASS' if c['passed'] else 'FAIL'}  {c['check']}: {c['value']:.4f} ({c['bar']})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
