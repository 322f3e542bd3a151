"""`secptune attack RUN_DIR` on a secure run's view (:mod:`secptune.privacy.secure_view`).

The attacker is the server: it knows the view, the public header, its own model and public
text (the task's train split without the owner's texts).  Adaptive means here that the
attacker *runs the protocol itself* on public texts — its own owner, server and dealer
processes, the same code, with the same recorder in its server — and fits every learned
attack on the view it recorded there, where it knows the texts.  Its server serves the
model's first layer only: every recorded arrival (the ``texts`` command's, the first
forward's first openings) happens before layer 1, and the masks of what is recorded do
not depend on the layers after it.

Each recorded channel (a kind of arrival, per token) is read as fixed point and attacked
on its own: token inversion (nearest vocabulary row where the width is the model's, and
the adaptive 1-NN, ridge and MLP of :mod:`secptune.privacy.attacks`), label inference from a
text's mean row, length from where the best inversion sees padding, and a distinguishing
game — two public texts differing in one token, one run through the protocol, the
attacker guesses which from the row at that position (nearest of the two candidates'
embeddings, directly where the width is H and after the fitted ridge map).  For MPC the
game's theoretical advantage is 0.  Every figure has a bootstrap standard error over texts
and its nulls (shuffled truth; a Gaussian view of the recorded rows' spread, i.e. the
attack's prior); "at chance" = within the largest null + 3 SE.

What the secure mode reveals by design (not measured as leakage): each text set's batch
size and padded length (the longest text of the batch, or its ``--pad-bucket``), the prompt
length and the population size (docs/protocol.md, "What is public").
"""

from __future__ import annotations

import json
import math
import os
import tempfile
import time
from statistics import NormalDist
from dataclasses import asdict
from pathlib import Path

import torch
from tqdm import tqdm

from mpc import approx
from rfa.config import attention_config
from secptune import owner, secure
from secptune.arch import arch_from_config
from secptune.checkpoints import load_config, load_hf_model, load_tokenizer, resolve_model
from secptune.errors import InputError
from secptune.infer import pad_token
from secptune.inputs import Encoded, Template, build_batch, encode, verbalizer_ids, verbalizer_onehot
from secptune.privacy import attacks
from secptune.privacy.scorer import Scorer
from secptune.privacy.secure_view import OwnerTruthRecorder, SecureViewSpec, decode, describe_batches
from secptune.privacy import suite
from secptune.privacy.suite import SuiteOptions, _aia, _gaussian_view, _token_figures, se_boot, token_attacks
from secptune.privacy.view import load_view
from secptune.scoring import score_batches
from secptune.split_job import public_pool, text_token_counter

ATTACKER_LAYERS = 1  # the attacker's own protocol runs serve the first layer only (module docstring)


class SecureAttacker:
    """The server's public knowledge, rebuilt from a secure view's header, and its own protocol runs."""

    def __init__(self, header: dict, layers: int = ATTACKER_LAYERS):
        if header.get("mode") != "secure":
            raise InputError(f"this suite attacks secure views; the view's mode is {header.get('mode')!r}")
        self.header, self.layers = header, layers
        self.model_dir = resolve_model(header["model"])
        self.arch = arch_from_config(load_config(self.model_dir))
        self.tokenizer = load_tokenizer(self.model_dir)
        self.template = Template(header["template"], self.arch.family)
        self.table = load_hf_model(self.model_dir).get_input_embeddings().weight.detach().float()
        self.pad_id = pad_token(self.tokenizer, self.arch)
        self.count = text_token_counter(self.tokenizer)
        self.label_ids = verbalizer_ids(self.tokenizer, header["verbalizer"], self.template)

    def encode(self, examples) -> Encoded:
        return encode(self.tokenizer, examples, self.template, self.arch.prefix_tokens)

    def batches(self, enc: Encoded) -> list:
        """The owner's layout: the header's batch size, padding bucket and prompt length."""
        size, rows = self.header["batch_size"], list(range(len(enc.ids)))
        prompt = torch.zeros(self.header.get("prompt_len", 0), self.arch.hidden, dtype=torch.float64)
        return [build_batch(enc, rows[i : i + size], prompt, self.arch, self.pad_id, self.header.get("pad_bucket", 0))
                for i in range(0, len(rows), size)]

    def run_protocol(self, pairs, launch=None) -> tuple[list[dict], list[dict]]:
        """Run the protocol on public text sets ``pairs`` ((batch, examples)), with the recorder
        in the attacker's own server; returns the recorded items and their truth (public).
        ``launch``: how the parties start (:func:`secptune.owner.run_local`); tests auditing a
        deliberately broken protocol pass its launcher, so the attacker runs that protocol too."""
        batches = [b for b, _ in pairs]
        truth = OwnerTruthRecorder(None, 1 << 30, describe_batches(pairs, self.count))
        for b in batches:
            truth.loaded(b)
        request = secure.OwnerRequest(labels=len(self.label_ids), cfg=asdict(approx.ApproxConfig()),
                                      attention=attention_config(self.header.get("attention", "softmax")).as_dict(),
                                      expected_vocab=self.arch.vocab_size)
        with tempfile.TemporaryDirectory(prefix="secptune-attacker-") as tmp:
            spec = SecureViewSpec(tmp, len(truth.items), dict(self.header), self.header.get("openings", 3),
                                  self.header.get("width_cap", 1024))
            owner.run_local(str(self.model_dir), score_batches, (batches, "report"), request,
                            verbalizer_onehot(self.label_ids, self.arch.vocab_size), view=spec, layers=self.layers,
                            launch=launch)
            items = load_view(tmp)["items"]
        return items, truth.items


def channel_rows(items: list[dict], name: str, info: dict) -> list[torch.Tensor] | None:
    """Per item, channel ``name`` read as numbers [m, W] (fixed point for ring channels)."""
    if any(name not in it["channels"] for it in items):
        return None
    if info.get("scale_bits"):
        return [decode(it["channels"][name], info["scale_bits"]).float() for it in items]
    return [it["channels"][name].float() for it in items]


def _known(rows: list[torch.Tensor], truth: list[dict]) -> tuple[list[torch.Tensor], list[dict]]:
    """Training rows of public items without the prompt slots (id -1: nothing to learn)."""
    out_rows, out_truth = [], []
    for r, t in zip(rows, truth):
        keep = t["ids"] >= 0
        out_rows.append(r[keep])
        out_truth.append({**t, "ids": t["ids"][keep]})
    return out_rows, out_truth


def _with_se(figures: dict, scorer: Scorer, guesses: dict, opts: SuiteOptions) -> None:
    for name, g in guesses.items():
        hits = scorer.tokens(g)
        f = figures[name]
        f["se"] = se_boot([h for h, _ in hits], [n for _, n in hits], opts.bootstrap, opts.seed)
        f["null"] = max(f["null_shuffled_truth"], f.get("null_gaussian_view", 0.0))
        f["at_chance"] = f["recovery"] <= f["null"] + 3 * f["se"]


def _game(pairs: list[dict], rows: list[torch.Tensor], ridge, table: torch.Tensor, direct: bool) -> dict:
    """Per decoder: the share of pairs where the row at the changed position is nearer (cosine)
    to the embedding of the token actually run; advantage 2p − 1, SE 2·sqrt(p(1−p)/N)."""
    unit = torch.nn.functional.normalize(table.float(), dim=-1)
    out = {}
    decoders = {"ridge": lambda x: (x.double() - ridge.mean).float() @ ridge.w}
    if direct:
        decoders["direct"] = lambda x: x
    for name, dec in decoders.items():
        wins = []
        for p, r in zip(pairs, rows):
            y = torch.nn.functional.normalize(dec(r[p["pos"]].unsqueeze(0)).float(), dim=-1)[0]
            sims = [float(y @ unit[t]) for t in p["tokens"]]
            wins.append(int(max(range(2), key=lambda c: sims[c]) == p["coin"]))
        n = len(wins)
        acc = sum(wins) / max(1, n)
        out[name] = {"pairs": n, "success": acc, "advantage": 2 * acc - 1,
                     "se": 2 * math.sqrt(max(acc * (1 - acc), 0.25 / max(1, n)) / max(1, n)),
                     "theory_advantage": 0.0}
        out[name]["within_3se"] = abs(out[name]["advantage"]) <= 3 * out[name]["se"]
    return out


def game_texts(attacker: SecureAttacker, examples, seed: int) -> tuple[Encoded, list[dict]]:
    """Pairs of texts differing in one of their own tokens (a random vocabulary id instead);
    the coin picks which one runs.  Returns the encodings that run and each pair's secrets."""
    gen = torch.Generator().manual_seed(seed)
    enc = attacker.encode(examples)
    ids, pairs = [], []
    P = attacker.header.get("prompt_len", 0)
    for i, ex in enumerate(examples):
        row = list(enc.ids[i])
        start = enc.lead[i]
        private = max(1, min(attacker.count(ex.text), len(row) - start - 1))
        pos = start + int(torch.randint(0, private, (1,), generator=gen))
        other = int(torch.randint(0, attacker.arch.vocab_size, (1,), generator=gen))
        tokens = [row[pos], other]
        coin = int(torch.randint(0, 2, (1,), generator=gen))
        row[pos] = tokens[coin]
        ids.append(row)
        pairs.append({"pos": pos + P, "tokens": tokens, "coin": coin})
    return Encoded(ids=ids, pred=enc.pred, types=enc.types, lead=enc.lead), pairs


def run_secure_suite(run_dir: str | Path, opts: SuiteOptions = SuiteOptions(), control: str | None = None,
                     launch=None) -> dict:
    """The catalogue on a secure view (module docstring); ``control``: the unprotected split's run
    on the same texts, attacked already; ``launch``: see :meth:`SecureAttacker.run_protocol`."""
    started = time.perf_counter()
    view, header, scorer = suite.open_run(run_dir)
    attacker = SecureAttacker(header)
    classes = len(header["verbalizer"])
    pool = scorer.disjoint(public_pool(header["task"], header.get("data"),
                                       limit=opts.train_texts + opts.game_pairs + 200, seed=opts.seed))
    if len(pool) < 50:
        raise InputError(f"only {len(pool)} public texts for the attacks; the task's train split is too small")
    n_game = min(opts.game_pairs, len(pool) // 3)
    train_ex, game_ex = pool[: len(pool) - n_game][: opts.train_texts], pool[len(pool) - n_game :]
    train_pairs = [(b, train_ex[i * header["batch_size"] : (i + 1) * header["batch_size"]])
                   for i, b in enumerate(attacker.batches(attacker.encode(train_ex)))]
    game_enc, game_secrets = game_texts(attacker, game_ex, opts.seed)
    game_pairs = [(b, game_ex[i * header["batch_size"] : (i + 1) * header["batch_size"]])
                  for i, b in enumerate(attacker.batches(game_enc))]
    t0 = time.perf_counter()
    public_items, public_truth = attacker.run_protocol(train_pairs + game_pairs, launch)
    protocol_s = time.perf_counter() - t0
    n_train = len(train_ex)
    channels = {}
    lengths = sorted(t["length"] for t in public_truth[:n_train])
    prior = lengths[len(lengths) // 2]
    best = {"recovery": -1.0}
    per_channel_mlp = opts.mlp_seconds / max(1, len(header["channels"]))
    for name, info in tqdm(header["channels"].items(), desc="channels", unit="channel"):
        rows = channel_rows(view["items"], name, info)
        public_rows = channel_rows(public_items, name, info)
        if rows is None or public_rows is None:
            continue
        train_rows, train_truth = _known(public_rows[:n_train], public_truth[:n_train])
        fitted = token_attacks(_Table(attacker.table), train_rows, train_truth, per_channel_mlp, opts.seed)
        direct = rows[0].size(-1) == attacker.arch.hidden
        if not direct:
            fitted.pop("nearest_token")
        tokens, guesses = _token_figures(fitted, rows, scorer, opts, {"null_gaussian_view": _gaussian_view(rows, opts.seed)})
        _with_se({k: tokens[k] for k in guesses}, scorer, guesses, opts)
        aia = _label_aia(train_rows, train_truth, rows, scorer, classes, opts)
        game = _game(game_secrets, public_rows[n_train:], fitted["adaptive_ridge"], attacker.table, direct)
        top = tokens["best"]
        length = _length(guesses[top["attack"]], attacker.pad_id, scorer, prior, view["items"], opts)
        channels[name] = {"info": info, "tokens": tokens, "label_aia": aia, "game": game, "length": length}
        if top["recovery"] > best["recovery"]:
            best = {"channel": name, **top}
    result = {"run": str(run_dir), "header": header, "options": asdict(opts), "public_texts": n_train,
              "attacker_protocol": {"layers": attacker.layers, "texts": len(public_items), "wall_s": protocol_s},
              "channels": channels, "best": best, "summary": summarize(channels),
              "public_by_design": ["batch size and padded length per text set (the longest text of each batch, or "
                                   "its --pad-bucket)", "prompt length", "population size per forward",
                                   "the command schedule", "traffic volume and time"]}
    if control:
        result["control"] = control_figures(control, scorer)
    result["wall_s"] = time.perf_counter() - started
    result["machine"] = {"cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(),
                         "load_avg": list(os.getloadavg())}
    return result


class _Table:
    def __init__(self, table):
        self.table = table


def _label_aia(train_rows, train_truth, rows, scorer: Scorer, classes: int, opts: SuiteOptions) -> dict:
    """The task label from a text's mean row (the split suite's probe), with its at-chance verdict."""
    out = _aia(train_rows, train_truth, rows, scorer, classes, opts)
    out["at_chance"] = out["accuracy"] <= max(out["chance_majority"], out["null_shuffled_truth"]) + 3 * out["se"]
    return out


def _length(guesses, pad_id: int, scorer: Scorer, prior: int, items: list[dict], opts: SuiteOptions) -> dict:
    """Length from the view's content (padding seen by the best inversion) against the prior
    guess (the public median) and the padded length, which is public by design."""
    est = [attacks.length_from_tokens(g, pad_id) for g in guesses]
    err, prior_err = scorer.lengths(est), scorer.lengths([prior] * len(est))
    padded = scorer.lengths([len(it["positions"]) for it in items])
    exact = [int(e == 0) for e in err]
    return {"exact": sum(exact) / len(err), "exact_se": se_boot(exact, None, opts.bootstrap, opts.seed),
            "mae": sum(err) / len(err), "null_prior_exact": sum(e == 0 for e in prior_err) / len(err),
            "null_prior_mae": sum(prior_err) / len(err),
            "public_padded_exact": sum(e == 0 for e in padded) / len(err), "public_padded_mae": sum(padded) / len(err)}


def _z(excess: float, se: float) -> float:
    return excess / se if se else (math.inf if excess > 0 else 0.0)


def family_threshold(tests: int, per_test: float = 3.0) -> float:
    """The z a family of ``tests`` figures must each stay under for the family to raise a false alarm as
    rarely as one figure does at ``per_test`` SE (Bonferroni, two-sided normal tails): with ~20 figures
    at 3 SE each, one exceeds by chance in ~5 % of honest runs."""
    alpha = math.erfc(per_test / math.sqrt(2)) / max(1, tests)
    return NormalDist().inv_cdf(1 - alpha / 2)


def summarize(channels: dict) -> dict:
    """The acceptance view: every attack within its null + 3 SE, every game within 3 SE of 0; and the
    same figures as one family (``worst_z`` against ``family_z``, Bonferroni), since many figures at
    3 SE each fail together by chance more often than one does."""
    token_ok, aia_ok, game_ok = True, True, True
    recovered, zs = {}, {}
    for name, c in channels.items():
        for attack, f in c["tokens"].items():
            if attack.startswith("best"):
                continue
            token_ok &= bool(f["at_chance"])
            recovered[f"{name}/{attack}"] = f["recovery"]
            zs[f"{name}/{attack}"] = _z(f["recovery"] - f["null"], f["se"])
        a = c["label_aia"]
        aia_ok &= bool(a["at_chance"])
        zs[f"{name}/label_aia"] = _z(a["accuracy"] - max(a["chance_majority"], a["null_shuffled_truth"]), a["se"])
        for dec, g in c["game"].items():
            game_ok &= bool(g["within_3se"])
            zs[f"{name}/game/{dec}"] = _z(abs(g["advantage"]), g["se"])
    tokens = next(iter(channels.values()))["tokens"]["adaptive_1nn"]["tokens"] if channels else 0
    worst = max(zs, key=zs.get) if zs else None
    family = family_threshold(len(zs))
    return {"tokens_at_chance": token_ok, "label_aia_at_chance": aia_ok, "games_within_3se": game_ok,
            "worst_game_z": max((z for k, z in zs.items() if "/game/" in k), default=0.0), "recorded_text_tokens": tokens,
            "best_recovery": max(recovered.values()) if recovered else math.nan,
            "figures": len(zs), "worst_z": zs.get(worst, 0.0), "worst_figure": worst, "family_z": family,
            "family_at_chance": all(z <= family for z in zs.values())}


def control_figures(control: str, scorer: Scorer) -> dict:
    """The positive control's figures (the unprotected split's attacks.json on the same texts)."""
    path = Path(control) / "attacks.json"
    if not path.is_file():
        raise InputError(f"--control {control}: no attacks.json; run `secptune attack {control}` first")
    r = json.loads(path.read_text())
    other = Scorer(control)
    v = r["variants"]["releases_1"]
    return {"run": control, "same_texts": other.texts_digest() == scorer.texts_digest(),
            "mode": r["header"]["mode"], "split_layer": r["header"]["split_layer"], "eta": r["header"]["mechanism"]["eta"],
            "tokens": {k: f["recovery"] for k, f in v["tokens"].items() if not k.startswith("best")},
            "best": v["tokens"]["best"], "label_aia": v["label_aia"]["accuracy"],
            "label_majority": v["label_aia"]["chance_majority"], "game_advantage": v["game"]["advantage"],
            "game_pairs": v["game"]["pairs"], "length_exact": v["length"]["exact"]}


def _pct(x: float) -> str:
    return f"{100 * x:.1f} %"


def markdown(r: dict) -> str:
    h, s = r["header"], r["summary"]
    lines = [
        f"# Attacks on the server's view of a secure run: {r['run']}", "",
        f"Model {h['model']}, task {h['task']}, attention {h['attention']}, batch size {h['batch_size']}; "
        f"{h['items']} recorded texts ({s['recorded_text_tokens']} text tokens); attacks fitted on the attacker's "
        f"own protocol run over {r['public_texts']} public texts ({r['attacker_protocol']['texts']} texts with the "
        f"game's, first {r['attacker_protocol']['layers']} layer, {r['attacker_protocol']['wall_s']:.0f} s); "
        f"{r['wall_s']:.0f} s in all.", "",
        f"**Every token attack at chance (≤ null + 3 SE): {s['tokens_at_chance']}; label inference at chance: "
        f"{s['label_aia_at_chance']}; every game within 3 SE of 0: {s['games_within_3se']} (worst |adv|/SE "
        f"{s['worst_game_z']:.2f}).** Best recovery anywhere: {_pct(s['best_recovery'])}.", "",
        *([f"As one family of {s['figures']} figures (each z = excess over its null / SE): worst z {s['worst_z']:.2f} "
           f"({s['worst_figure']}) against the Bonferroni bound {s['family_z']:.2f} that keeps the family's false-alarm "
           f"rate at one 3-SE test's: **all at chance: {s['family_at_chance']}**.", ""] if "figures" in s else []),
        "| channel | kind | attack | recovery | SE | null: shuffled truth | null: Gaussian (prior) | at chance |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name, c in r["channels"].items():
        for attack, f in c["tokens"].items():
            if not attack.startswith("best"):
                lines.append(f"| {name} | {c['info']['kind']} | {attack} | {_pct(f['recovery'])} | {_pct(f['se'])} | "
                             f"{_pct(f['null_shuffled_truth'])} | {_pct(f['null_gaussian_view'])} | {f['at_chance']} |")
    lines += ["", "| channel | label AIA | SE | majority | game decoder | pairs | advantage | SE | theory |",
              "|---|---|---|---|---|---|---|---|---|"]
    for name, c in r["channels"].items():
        a = c["label_aia"]
        for dec, g in c["game"].items():
            lines.append(f"| {name} | {_pct(a['accuracy'])} | {_pct(a['se'])} | {_pct(a['chance_majority'])} | {dec} | "
                         f"{g['pairs']} | {g['advantage']:+.3f} | {g['se']:.3f} | 0 |")
    first = next(iter(r["channels"].values()), None)
    if first:
        ln = first["length"]
        lines += ["", f"Length (channel {next(iter(r['channels']))}): exact {_pct(ln['exact'])} from the view's content; "
                  f"prior guess (public median) exact {_pct(ln['null_prior_exact'])}; the padded length, public by "
                  f"design, is exact for {_pct(ln['public_padded_exact'])} of texts (the longest of each batch)."]
    lines += ["", "Public by design: " + "; ".join(r["public_by_design"]) + "."]
    if "control" in r:
        c = r["control"]
        lines += ["", f"## Positive control: the unprotected split on the same texts ({c['run']})", "",
                  f"Same texts: {c['same_texts']}. Mode {c['mode']}, split layer {c['split_layer']}, η = {c['eta']}: "
                  f"best recovery {_pct(c['best']['recovery'])} ({c['best']['attack']}), label AIA "
                  f"{_pct(c['label_aia'])} (majority {_pct(c['label_majority'])}), game advantage "
                  f"{c['game_advantage']:+.3f} on {c['game_pairs']} pairs."]
    return "\n".join(lines) + "\n"


def run_attacks(run_dir: str | Path, opts: SuiteOptions = SuiteOptions(), control: str | None = None) -> dict:
    """`secptune attack`: the catalogue on any mode's view (``control``: secure views only)."""
    if load_view(run_dir)["header"].get("mode") == "secure":
        return run_secure_suite(run_dir, opts, control)
    if control:
        raise InputError("--control is for a secure run's view (the unprotected split beside it)")
    return suite.run_suite(run_dir, opts)


def write_reports(result: dict, out_dir: str | Path) -> tuple[Path, Path]:
    """attacks.json and attacks.md of any mode's result in ``out_dir``."""
    if result["header"].get("mode") != "secure":
        return suite.write_reports(result, out_dir)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "attacks.json").write_text(json.dumps(result, indent=1))
    (out / "attacks.md").write_text(markdown(result))
    return out / "attacks.json", out / "attacks.md"

