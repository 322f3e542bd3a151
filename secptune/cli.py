"""Command line: `secptune infer | tune | compare | party | keygen | bench | benchmarks | attack`.

Errors a user can fix print one line (``secptune: error: ...``) and exit 2;
no traceback unless SECPTUNE_DEBUG=1.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from mpc import prg
from mpc.errors import NetworkConfigError, PartyFailedError, TransportError
from mpc.roles import ROLES
from secptune import benchmarks_doc
from secptune.arch import arch_from_config
from secptune.bench import forward, iteration, net
from secptune.bench.common import command_line
from secptune.bench.options import add_bench
from secptune.checkpoints import load_config, resolve_model
from secptune.errors import SecptuneError
from secptune.infer import InferOptions, run_infer
from secptune.party import keygen, make_network, serve
from secptune.privacy.compare import compare_privacy
from secptune.privacy.secure_suite import run_attacks, write_reports
from secptune.privacy.suite import SuiteOptions, add_search
from secptune.report import compare
from secptune.server import prepare_job
from secptune.split_job import SplitOptions
from secptune.tasks import get_task, task_file
from secptune.tune_defaults import plan_runs
from secptune.tune_job import run_tune


def _add_infer(sub) -> None:
    p = sub.add_parser("infer", help="score label words for a data file (plain or secure)")
    p.add_argument("--task", help="sst2|yelp|agnews|mrpc|rte: fills --data/--template/--verbalizer")
    p.add_argument("--model", default="tiny-llama", help="tiny-roberta|tiny-bert|tiny-llama|smollm2 or a local HF checkpoint dir")
    p.add_argument("--data", help="a .jsonl file (text, [text_b], label), or with --task a data directory")
    p.add_argument("--template", help="e.g. '{text} It was {mask}.'")
    p.add_argument("--verbalizer", help="comma-separated label words, index = label id")
    p.add_argument("--mode", choices=["plain", "secure", "privtune"], default="plain")
    p.add_argument("--attention", choices=["softmax", "rfa"],
                   help="rfa (default: the server's prepared RFA layers, softmax elsewhere; softmax with --exact and --mode privtune) or softmax")
    p.add_argument("--exact", action="store_true", help="plain only: original non-linearities")
    _add_precision(p)
    _add_split(p)
    p.add_argument("--out", help="run directory: result.json, and the server's view with --record-view")
    p.add_argument("--prompt-len", type=int, default=0, help="random prompt of N tokens (seeded)")
    p.add_argument("--prompt", dest="prompt_file", help="a tuned prompt saved as a [P, H] tensor (.pt)")
    p.add_argument("--prompt-seed", type=int, default=0)
    p.add_argument("--limit", type=int, help="use the first N examples")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--pad-bucket", type=int, default=0, metavar="N",
                   help="pad each batch's length to a multiple of N, so the server learns the bucket, not the longest text")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    _add_network(p, owner=True)




def _add_split(p) -> None:
    g = p.add_argument_group("--mode privtune: split learning with noisy token representations (PrivTune)")
    g.add_argument("--split-layer", type=int, default=0, metavar="K",
                   help="the owner runs the embeddings and layers 0..K-1 and sends layer K's input (0)")
    g.add_argument("--noise", choices=["dchi", "privtune"], default="dchi",
                   help="isotropic dχ noise, or PrivTune's importance-aware crafted noise (dchi)")
    g.add_argument("--eta", default="inf", help="dχ privacy parameter: noise norm ~ Gamma(H, 1/eta); inf = none (inf)")
    g.add_argument("--release", choices=["once", "per-call"], default="once",
                   help="send each text's noisy rows once per run, or with fresh noise on every call (once)")
    g.add_argument("--record-view", type=int, default=0, metavar="N",
                   help="write what the server received for the first N texts to OUT/view (and the truth apart)")


def _add_guarded(p) -> None:
    g = p.add_argument_group("--mode guarded: GuardedTuning (client adapters around the server's backbone)")
    g.add_argument("--variant", choices=["online", "gradfree", "offline"],
                   help="online: activations up, gradients down; gradfree: only the output adapter is tuned, no "
                        "gradient crosses; offline: tuned on an emulator, nothing crosses while tuning (online)")
    g.add_argument("--dcor", type=float, help="weight of the distance-correlation regulariser (0)")
    g.add_argument("--quant-bits", type=int, help="bits per value of every tensor that crosses: 1..16, or 32 = float32 (32)")
    g.add_argument("--in-layers", type=int, help="Transformer layers in the client's input adapter (1)")
    g.add_argument("--out-layers", type=int, help="layers in the client's output adapter (1; 0 on 2-layer models)")
    g.add_argument("--epochs", type=int, help="passes over the training texts (10)")
    g.add_argument("--lr", type=float, help="Adam learning rate of the adapters (1e-3)")
    g.add_argument("--train-batch", type=int, help="texts per tuning step (8)")
    g.add_argument("--harden-steps", type=int, help="gradfree: steps of the client's local hardening (100)")
    g.add_argument("--emulator-keep", type=int, help="offline: the emulator keeps every N-th backbone layer (2)")


def _split_options(args) -> SplitOptions:
    return SplitOptions(split_layer=args.split_layer, noise=args.noise, eta=args.eta, release=args.release,
                        record_view=args.record_view)


def _add_precision(p) -> None:
    p.add_argument("--precision", choices=["float64", "float32"],
                   help="plain mode without --exact: compute the secure run's approximations in float64 (the default: "
                        "the oracle the secure tests compare with) or float32 (the same approximations, ~4x faster on "
                        "a CPU; check it with --check-oracle)")
    p.add_argument("--check-oracle", type=int, nargs="?", const=1, metavar="K",
                   help="with --precision float32: score every K-th call on each text set (1 if K is left out; a text "
                        "set scored once, like a test batch, is always checked) with the float64 oracle too; the report records relative loss/score differences and prediction agreement, and the "
                        "run stops if losses differ by more than 1e-3 or scores by more than 1e-3 of the largest "
                        "(secptune.oracle_check)")


def _add_network(p, owner: bool) -> None:
    g = p.add_argument_group("parties on other hosts (docs/deployment.md)")
    what = " (this process is the data owner; server and dealer run `secptune party`)" if owner else ""
    g.add_argument("--peers", metavar="OWNER,SERVER,DEALER",
                   help=f"host:port of each party, the same list on all three hosts{what}")
    g.add_argument("--tls-dir", help="this party's key and the three parties' certificates (`secptune keygen`)")
    g.add_argument("--no-tls", action="store_true", help="plain TCP; refused unless every address is loopback")
    g.add_argument("--listen", metavar="HOST:PORT", help="bind here instead of this party's --peers entry")
    g.add_argument("--connect-timeout", type=float, default=60.0,
                   help="seconds to wait for the other parties at start-up (60)")
    g.add_argument("--peer-timeout", type=float, default=60.0,
                   help="seconds a silent peer may take before the run stops as hung (60)")


def _network(args, role: str, wait_for_owner: bool = False):
    """The Network for --peers and its options, or None for a local run."""
    if not args.peers:
        given = [flag for flag, v in (("--tls-dir", args.tls_dir), ("--no-tls", args.no_tls), ("--listen", args.listen)) if v]
        if given:
            raise NetworkConfigError(f"{', '.join(given)} only apply with --peers OWNER,SERVER,DEALER")
        return None
    return make_network(role, args.peers, args.tls_dir, args.no_tls, args.listen, args.connect_timeout,
                        args.peer_timeout, wait_for_owner)


def _network_flags(args) -> list[str]:
    flags = ["--peers", args.peers, "--connect-timeout", str(args.connect_timeout),
             "--peer-timeout", str(args.peer_timeout)]
    flags += ["--tls-dir", args.tls_dir] if args.tls_dir else []
    flags += ["--no-tls"] if args.no_tls else []
    flags += ["--listen", args.listen] if args.listen else []
    return flags


def _infer_options(args):
    data, template, words = args.data, args.template, args.verbalizer
    if args.task:
        spec = get_task(args.task)
        family = arch_from_config(load_config(resolve_model(args.model))).family
        if data is None or Path(data).is_dir():
            data = str(task_file(args.task, "test", data))
        template = template or spec.templates[family]
        words = words or ",".join(spec.verbalizers[family])
    missing = [flag for flag, v in (("--data", data), ("--template", template), ("--verbalizer", words)) if not v]
    if missing:
        raise SecptuneError(f"missing {', '.join(missing)}; give them, or --task NAME to use a built-in task")
    return InferOptions(
        model=args.model,
        data=data,
        template=template,
        verbalizer=[w.strip() for w in words.split(",") if w.strip()],
        mode=args.mode,
        attention=args.attention,
        exact=args.exact,
        precision=args.precision,
        check_oracle=args.check_oracle or 0,
        prompt_len=args.prompt_len,
        prompt_file=args.prompt_file,
        prompt_seed=args.prompt_seed,
        limit=args.limit,
        batch_size=args.batch_size,
        pad_bucket=args.pad_bucket,
        network=_network(args, "owner"),
        split=_split_options(args),
        task=args.task,
        out=args.out,
    )


def _print_infer(result: dict) -> None:
    acc = result["accuracy"]
    precision = f" ({result['precision']})" if result.get("precision") and not result["exact"] else ""
    print(f"model {result['model']}  mode {result['mode']}{' (exact)' if result['exact'] else ''}{precision}  "
          f"examples {result['examples']}  accuracy {'n/a' if acc is None else f'{acc:.3f}'}  "
          f"wall {result['wall_s']:.1f} s")
    for role, t in result["comm"].items():
        print(f"  {role:<6} sent {t['bytes'] / 1e6:9.2f} MB in {t['rounds']} rounds")
    for name, count in result["range_warnings"].items():
        print(f"  warning: {count} values outside the {name} approximation's range")
    check = result.get("oracle_check")
    if check and check["checked"]:
        loss = "" if check["max_rel_loss_diff"] is None else f", relative loss difference <= {check['max_rel_loss_diff']:.2g}"
        print(f"  float64 oracle: {check['checked']} of {check['calls']} batches checked, predictions agree on "
              f"{check['agreement']:.2%}, relative score difference <= {check['max_rel_score_diff']:.2g}{loss}; "
              f"float32 {check['fast_wall_s']:.1f} s, float64 {check['oracle_wall_s']:.1f} s")
    events = result.get("range_events")
    if events and events["out_of_range"]:
        print(f"  warning: the secure range check fired in batches {events['calls']}: their scores may be wrong "
              "(run --mode plain for range_warnings)")


def cmd_infer(args) -> int:
    if args.peers and args.mode != "secure":
        raise SecptuneError("--peers runs the secure mode against a remote server and dealer: add --mode secure")

    result = run_infer(_infer_options(args))
    if args.json:
        print(json.dumps(result))
    else:
        _print_infer(result)
    return 0


def _add_tune(sub) -> None:
    p = sub.add_parser("tune", help="prompt-tune with CMA-ES against the secure (or plain) forward pass")
    p.add_argument("--task", choices=["sst2", "yelp", "agnews", "mrpc", "rte"], default="sst2")
    p.add_argument("--model", default="smollm2")
    p.add_argument("--mode", choices=["secure", "plain", "privtune", "guarded"])
    _add_split(p)
    _add_guarded(p)
    p.add_argument("--data", help="data directory with <task>/train.jsonl, test.jsonl")
    p.add_argument("--train")
    p.add_argument("--test")
    p.add_argument("--template")
    p.add_argument("--verbalizer")
    # defaults (None) come from TuneConfig or, for a CPU demo, tune_defaults: a flag
    # given here always wins
    p.add_argument("--k", type=int, help="examples per class for train and for dev (16)")
    p.add_argument("--seed", type=int, help="(42)")
    p.add_argument("--prompt-len", type=int, help="(50)")
    p.add_argument("--intrinsic-dim", type=int, help="(500)")
    p.add_argument("--popsize", type=int, help="(20)")
    p.add_argument("--alpha", type=float,
                   help="prompt scale: a prompt of z ~ N(0, 1) has the embedding table's std times alpha (1.0)")
    p.add_argument("--budget", type=int, help="candidate evaluations (API calls)")
    p.add_argument("--loss", choices=["ce", "hinge"])
    p.add_argument("--attention", choices=["rfa", "softmax"],
                   help="rfa (default: the server's prepared RFA layers, softmax elsewhere; softmax with --exact and --mode privtune) or softmax")
    p.add_argument("--exact", action="store_true", default=None,
                   help="plain only: the unmodified transformers model in float32 (the non-private baseline; "
                        "without it plain mode runs the secure run's approximations, see --precision)")
    _add_precision(p)
    p.add_argument("--device", choices=["cpu", "cuda"])
    p.add_argument("--test-limit", type=int)
    p.add_argument("--pad-bucket", type=int, metavar="N",
                   help="pad text lengths to multiples of N (the server learns the bucket, not the length)")
    p.add_argument("--patience", type=int, help="stop after N dev evaluations without improvement")
    p.add_argument("--time-limit", type=float, metavar="MIN",
                   help="stop tuning after MIN minutes, test the best prompt so far; --resume continues")
    p.add_argument("--out", help="run directory (default runs/<task>-<model>-<mode>)")
    p.add_argument("--resume", action="store_true")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    _add_network(p, owner=True)


def cmd_tune(args) -> int:
    if args.peers and args.mode != "secure":
        raise SecptuneError("--peers runs the secure mode against a remote server and dealer: add --mode secure")
    network = _network(args, "owner")
    runs = plan_runs(args)
    for cfg, out, note in runs:
        print(f"secptune: {note}", file=sys.stderr)
        result = run_tune(cfg, out, resume=args.resume, show_progress=not args.quiet, network=network)
        f = result["final"]
        print(f"{cfg.mode:>6} {cfg.task}: test {f['metric']} zero-shot {f['test']['zero_shot']:.3f} -> "
              f"tuned {f['test']['tuned']:.3f}  ({result['totals']['wall_s']:.0f} s)  report: {out}/report.md")
    if len(runs) > 1:
        print(compare([out for _, out, _ in runs], plot=str(Path(runs[0][1]).parent / "compare.png")))
    return 0


def _add_compare(sub) -> None:
    p = sub.add_parser("compare", help="runs side by side (--privacy: with their attack figures and cost per call)")
    p.add_argument("runs", nargs="+", help="run directories written by `secptune tune --out`")
    p.add_argument("--plot", help="write a PNG of the loss and dev curves")
    p.add_argument("--privacy", action="store_true",
                   help="one row per run: mode and parameters, tuned metric and its change vs plain, the best attacks "
                        "(attacks.json beside a run), bytes/rounds/seconds and LAN/WAN time per call")
    p.add_argument("--out", help="--privacy: write compare.json, compare.md and tradeoff.png here")
    p.add_argument("--secure-view", metavar="ATTACKS_JSON",
                   help="--privacy: the secure suite's attacks.json (`secptune attack` on a recorded secure view), "
                        "for rows whose run directory holds secure_call.json (a measured secure call beside a tuning "
                        "of the secure run's plain oracle)")


def cmd_compare(args) -> int:
    if args.privacy:
        print(compare_privacy(args.runs, args.out, args.secure_view))
        return 0
    if args.out or args.secure_view:
        raise SecptuneError("--out and --secure-view go with --privacy (the plain comparison writes --plot only)")
    print(compare(args.runs, plot=args.plot))
    return 0


def _add_party(sub) -> None:
    p = sub.add_parser(
        "party",
        help="run one party of a secure run on this host (server, dealer; or owner + infer|tune)",
        description="Model server and dealer wait for the data owner's runs and serve them one after another; "
        "the owner drives each run with `secptune infer|tune --peers ...`. See docs/deployment.md.",
    )
    p.add_argument("--role", required=True, choices=ROLES)
    p.add_argument("--model", help="server only: the model it serves (the only thing the server is asked)")
    p.add_argument("--runs", type=int, help="serve this many runs, then exit (default: until stopped)")
    p.add_argument("--prepare", action="store_true",
                   help="server only: prepare the model for RFA first (as `secptune prepare`), then serve")
    p.add_argument("--json", action="store_true", help="print one JSON line per finished run")
    _add_network(p, owner=False)
    p.add_argument("job", nargs=argparse.REMAINDER, help="owner only: `infer ...` or `tune ...` with their options")


def cmd_party(args) -> int:
    if not args.peers:
        raise NetworkConfigError("secptune party needs --peers OWNER,SERVER,DEALER (host:port each)")
    if args.role == "owner":
        if args.model or args.runs is not None:
            raise SecptuneError("the owner names its model and data in its infer/tune command, not with --model/--runs")
        if not args.job or args.job[0] not in ("infer", "tune"):
            raise SecptuneError("the owner drives a run: `secptune party --role owner --peers ... infer|tune OPTIONS`")
        job = list(args.job)
        if "--mode" not in job:
            job += ["--mode", "secure"]
        return main(job + _network_flags(args))
    if args.job:
        raise SecptuneError(f"unexpected arguments for the {args.role}: {' '.join(args.job)}")
    if args.role == "server" and not args.model:
        raise SecptuneError("the server needs --model (a built-in name or a local checkpoint directory)")
    if args.role == "dealer" and args.model:
        raise SecptuneError("the dealer holds no model: drop --model")
    if args.runs is not None and args.runs < 1:
        raise SecptuneError("--runs must be at least 1")
    if args.prepare:
        if args.role != "server":
            raise SecptuneError("only the server prepares a model: drop --prepare")
        print(prepare_job.describe(prepare_job.prepare(args.model)), file=sys.stderr)
    network = _network(args, args.role, wait_for_owner=True)
    return serve(args.role, network, model=args.model, runs=args.runs, json_lines=args.json)


def _add_keygen(sub) -> None:
    p = sub.add_parser("keygen", help="make this party's TLS key pair for runs across hosts")
    p.add_argument("--role", required=True, choices=ROLES)
    p.add_argument("--out", required=True, help="directory for ROLE.key and ROLE.crt (this party's --tls-dir)")
    p.add_argument("--days", type=int, default=3650, help="certificate validity (3650)")


def cmd_keygen(args) -> int:
    print(keygen(args.role, args.out, args.days))
    return 0


def cmd_bench(args) -> int:
    """``secptune bench forward|iteration|net``: the benchmark writes its report, stamped with this command."""
    run = {"forward": forward.main, "iteration": iteration.main, "net": net.main}[args.bench]
    return run(args, command_line(args.argv))


def _add_benchmarks(sub) -> None:
    p = sub.add_parser("benchmarks", help="write BENCHMARKS.md from the reports in reports/ (or check it is current)")
    p.add_argument("--check", action="store_true",
                   help="write nothing; exit 1 naming the first differing line if the file is stale (for CI)")
    p.add_argument("--reports", help="report directory (default: the checkout's reports/)")
    p.add_argument("--out", help="document to write or check (default: the checkout's BENCHMARKS.md)")


def cmd_benchmarks(args) -> int:
    status, message = benchmarks_doc.run(Path(args.reports) if args.reports else benchmarks_doc.DEFAULT_REPORTS,
                                         Path(args.out) if args.out else benchmarks_doc.DEFAULT_OUT, args.check)
    print(f"secptune: {message}", file=sys.stderr if status else sys.stdout)
    return status


def _add_prepare(sub) -> None:
    p = sub.add_parser("prepare", help="server: prepare a model ahead of any run (RFA fit, layer choice, bounds; cached)",
                       description="Runs the model server's preparation now, so the first secure run does not wait for "
                       "it; cached by the weights' content, resumable if killed. See secptune/server/prepare_job.py.")
    p.add_argument("--model", required=True, help="built-in name or a local checkpoint directory")
    p.add_argument("--attention", choices=["rfa", "softmax"], default="rfa")
    p.add_argument("--json", action="store_true", help="print one JSON object")


def cmd_prepare(args) -> int:
    result = prepare_job.prepare(args.model, args.attention)
    print(json.dumps(result) if args.json else prepare_job.describe(result))
    return 0


def _add_attack(sub) -> None:
    p = sub.add_parser("attack", help="run the attack suite on a run's recorded server view (--record-view)")
    p.add_argument("run", help="run directory with view/ (written by infer|tune --record-view N --out RUN)")
    p.add_argument("--train-texts", type=int, default=1000, help="public texts the adaptive attacks are fitted on (1000)")
    p.add_argument("--game-pairs", type=int, default=300, help="pairs of texts in the distinguishing game (300)")
    p.add_argument("--mlp-seconds", type=float, default=90.0, help="training time of the MLP inversion (90)")
    p.add_argument("--control", metavar="RUN",
                   help="secure views: the unprotected split's run on the same texts (attacked first), reported beside")
    p.add_argument("--report-dir", metavar="DIR", help="write attacks.json/attacks.md here (default: the run directory)")
    p.add_argument("--opt-steps", type=int, default=150,
                   help="Adam steps of the white-box optimisation attack (150; 0: not run)")
    p.add_argument("--opt-texts", type=int, default=64, help="recorded texts the white-box attack runs on (64)")
    p.add_argument("--search-texts", type=int, default=64,
                   help="recorded texts the left-to-right exhaustive search runs on (64; 0: not run)")
    p.add_argument("--search-only", action="store_true",
                   help="split/guarded views: add the exhaustive search's figures to the run's existing attacks.json "
                        "(its other figures kept as measured) instead of running the whole suite")


def cmd_attack(args) -> int:
    opts = SuiteOptions(train_texts=args.train_texts, game_pairs=args.game_pairs, mlp_seconds=args.mlp_seconds,
                        opt_steps=args.opt_steps, opt_texts=args.opt_texts, search_texts=args.search_texts)
    if args.search_only:
        result = add_search(args.run, opts)
        result.setdefault("commands_added", []).append(command_line(
            ["attack", args.run, "--train-texts", str(args.train_texts), "--search-texts", str(args.search_texts),
             "--search-only"]))
        paths = write_reports(result, args.report_dir or args.run)
        for key, v in result["variants"].items():
            print(f"{key}: reconstruction effectiveness (best ROUGE-L) {v['tokens']['best_rouge_l']['rouge_l']:.3f} "
                  f"({v['tokens']['best_rouge_l']['attack']})")
        pc = result["positive_control"]["tokens"]["best"]
        print(f"positive control: best recovery {pc['recovery']:.3f} ({pc['attack']}); reports: {paths[0]}, {paths[1]}")
        return 0
    result = run_attacks(args.run, opts, args.control)
    argv = ["attack", args.run, "--train-texts", str(args.train_texts), "--game-pairs", str(args.game_pairs),
            "--mlp-seconds", str(args.mlp_seconds), "--opt-steps", str(args.opt_steps), "--opt-texts", str(args.opt_texts),
            "--search-texts", str(args.search_texts)]
    argv += (["--control", args.control] if args.control else []) + (["--report-dir", args.report_dir] if args.report_dir else [])
    result["command"] = command_line(argv)
    paths = write_reports(result, args.report_dir or args.run)
    if result["header"].get("mode") == "secure":
        s = result["summary"]
        print(f"secure view: {s['recorded_text_tokens']} text tokens; best recovery {s['best_recovery']:.3f}; tokens at "
              f"chance {s['tokens_at_chance']}, label AIA at chance {s['label_aia_at_chance']}, games within 3 SE "
              f"{s['games_within_3se']} (worst |adv|/SE {s['worst_game_z']:.2f}); reports: {paths[0]}, {paths[1]}")
        return 0
    for key, v in result["variants"].items():
        best = v["tokens"]["best_adaptive"]
        print(f"{key}: token recovery nearest {v['tokens']['nearest_token']['recovery']:.3f}, best adaptive "
              f"{best['recovery']:.3f} ({best['attack']}); label AIA {v['label_aia']['accuracy']:.3f} "
              f"(majority {v['label_aia']['chance_majority']:.3f}); game advantage {v['game']['advantage']:.3f}")
        print(f"{key}: reconstruction effectiveness (best ROUGE-L) {v['tokens']['best_rouge_l']['rouge_l']:.3f} "
              f"({v['tokens']['best_rouge_l']['attack']})")
    if "gradient_label" in result:
        gl = result["gradient_label"]
        print(f"gradient label inference {gl['accuracy']:.3f} (majority {gl['chance_majority']:.3f}; positive control "
              f"{gl['positive_control']['accuracy']:.3f})")
    pc = result["positive_control"]["tokens"]
    print(f"positive control (unprotected): best adaptive recovery {pc['best_adaptive']['recovery']:.3f}, best overall "
          f"{pc['best']['recovery']:.3f} ({pc['best']['attack']}); reports: {paths[0]}, {paths[1]}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="secptune", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    _add_infer(sub)
    _add_tune(sub)
    _add_compare(sub)
    _add_party(sub)
    _add_keygen(sub)
    add_bench(sub)
    _add_benchmarks(sub)
    _add_prepare(sub)
    _add_attack(sub)
    return parser


COMMANDS = {"infer": cmd_infer, "tune": cmd_tune, "compare": cmd_compare, "party": cmd_party, "keygen": cmd_keygen,
            "bench": cmd_bench, "benchmarks": cmd_benchmarks, "prepare": cmd_prepare,
            "attack": cmd_attack}


def _refuse_test_only_randomness(command: str) -> None:
    """The product never runs with the tests' insecure generators (mpc.prg's test-only switch).
    Benchmarks may (their inputs are random, not anyone's data): measuring what the secure generator
    costs needs the insecure one beside it (research/bench_rng.py); their reports say so."""
    if os.environ.get(prg.TEST_ONLY_ENV) and command != "bench":
        raise SecptuneError(
            f"{prg.TEST_ONLY_ENV} is set: it replaces every mask with an insecure generator and is for "
            f"secptune's own tests only; unset it (`unset {prg.TEST_ONLY_ENV}`)"
        )


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)  # what a benchmark report records as its command
    try:
        _refuse_test_only_randomness(args.command)
        return COMMANDS[args.command](args)
    except (SecptuneError, PartyFailedError, TransportError) as exc:
        if os.environ.get("SECPTUNE_DEBUG"):
            raise
        print(f"secptune: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("secptune: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
