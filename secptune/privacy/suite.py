"""`secptune attack RUN_DIR`: the attack catalogue on a recorded server view.

The attacker knows what the server knows: the view and its public header (model, split
layer, mechanism parameters, template, task), plus public text (the task's *train* split,
without the owner's recorded texts).  It rebuilds the owner's mechanism from the header
(with its own noise key), pushes public text through it and fits its attacks there:

* token inversion — nearest vocabulary row (non-adaptive), and the adaptive 1-NN over
  public outputs, ridge map to the embedding, and MLP to the vocabulary; the best
  adaptive one is the figure that counts;
* attribute inference — the task label (the topic for AG News) from a text's mean row;
* length leakage — the text length from where the best inversion sees padding start;
* a distinguishing game — two public texts differing in one token, one released; the
  likelihood test's success rate next to dχ's bound e^{ε}/(1 + e^{ε}), ε = η·Σ‖Δrow‖;
  with r releases averaged, ε grows r-fold (composition).

Per figure: a 95 % bootstrap interval over items, the null baselines (the same attack
scored against shuffled truth; the attacks on a random-text view — the mechanism applied to
uniformly random tokens in the same layout — and on Gaussian rows of the view's spread,
which show an attack's prior guess), and a
positive control (the same attacks on held-out public text through the *unprotected*
split at the same layer, η = inf).  With releases per call, figures are given for the
first release and for the average of all recorded releases of each text.
"""

from __future__ import annotations

import copy
import json
import math
import os
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import torch
from tqdm import tqdm

from secptune.checkpoints import load_hf_model, load_tokenizer, resolve_model
from secptune.errors import InputError
from secptune.infer import pad_token
from secptune.inputs import Template, build_batch, encode
from secptune.privacy import attacks
from secptune.privacy.mechanisms import MechanismParams, crafted_mean, distinguish_bound
from secptune.privacy.neighbours import NeighbourGraph
from secptune.privacy.sampling import NoiseSource
from secptune.privacy.scorer import Scorer
from secptune.privacy.view import load_view, truth_item
from secptune.arch import arch_from_config
from secptune.server.prepare import prepare_server_model
from secptune.split import BottomModel, SplitOwner, layout
from secptune.split_job import importance_table, public_pool, text_token_counter

BATCH = 8  # public texts per padded batch (the owner's `infer` default)


@dataclass
class SuiteOptions:
    train_texts: int = 1000  # public texts the adaptive attacks are fitted on
    control_texts: int = 200  # held-out public texts of the positive control
    game_pairs: int = 300
    mlp_seconds: float = 90.0
    bootstrap: int = 1000
    seed: int = 1


def _ci(num: list[float], den: list[float] | None, draws: int, seed: int) -> list[float]:
    """95 % bootstrap interval (over items) of sum(num)/sum(den) (den None: a mean)."""
    n = len(num)
    if n == 0:
        return [math.nan, math.nan]
    num_t = torch.tensor(num, dtype=torch.float64)
    den_t = torch.ones(n, dtype=torch.float64) if den is None else torch.tensor(den, dtype=torch.float64)
    idx = torch.randint(0, n, (draws, n), generator=torch.Generator().manual_seed(seed))
    ratios = num_t[idx].sum(1) / den_t[idx].sum(1).clamp(min=1e-12)
    return [float(ratios.quantile(0.025)), float(ratios.quantile(0.975))]


def se_boot(num: list[float], den: list[float] | None, draws: int, seed: int) -> float:
    """Bootstrap standard error (over items) of sum(num)/sum(den) (den None: a mean)."""
    n = len(num)
    if n < 2:
        return math.nan
    num_t = torch.tensor(num, dtype=torch.float64)
    den_t = torch.ones(n, dtype=torch.float64) if den is None else torch.tensor(den, dtype=torch.float64)
    idx = torch.randint(0, n, (draws, n), generator=torch.Generator().manual_seed(seed))
    return float((num_t[idx].sum(1) / den_t[idx].sum(1).clamp(min=1e-12)).std())


class Attacker:
    """The owner's public pipeline, rebuilt from a view's header with the attacker's own noise."""

    def __init__(self, header: dict, params: MechanismParams | None = None):
        if header.get("mode") != "privtune":
            raise InputError(f"this suite attacks split-mode views; the view's mode is {header.get('mode')!r}")
        self.header = header
        model_dir = resolve_model(header["model"])
        model = load_hf_model(model_dir)
        self.arch = arch_from_config(model.config)
        self.tokenizer = load_tokenizer(model_dir)
        self.template = Template(header["template"], self.arch.family)
        self.server = prepare_server_model(model)
        self.table = self.server.weights["emb.word"].float()
        self.pad_id = pad_token(self.tokenizer, self.arch)
        self.count = text_token_counter(self.tokenizer)
        self.params = params or MechanismParams.from_dict(header["mechanism"])
        importance = None
        if self.params.noise == "privtune":
            pool = public_pool(header["task"], header.get("data"))
            importance = importance_table(self.tokenizer, self.template, pool, len(header["verbalizer"]),
                                          self.arch.prefix_tokens)
        graph = NeighbourGraph(self.server.weights["emb.word"], self.params.knn) if self.params.noise == "privtune" else None
        self.owner = SplitOwner(BottomModel(self.server, header["split_layer"], torch.float32), self.params,
                                NoiseSource(), graph, importance)

    def with_params(self, params: MechanismParams) -> "Attacker":
        """The same attacker (model, tables) with another mechanism, e.g. the unprotected split."""
        twin = copy.copy(self)
        twin.params = params
        twin.owner = SplitOwner(self.owner.bottom, params, NoiseSource(), self.owner.graph, self.owner.importance)
        return twin

    def states(self, examples) -> list[tuple[dict, list]]:
        """Clean owner states of public texts, in padded batches laid out like the owner's."""
        enc = encode(self.tokenizer, examples, self.template, self.arch.prefix_tokens)
        prompt = torch.zeros(self.header.get("prompt_len", 0), self.arch.hidden, dtype=torch.float64)
        out = []
        for i in range(0, len(examples), BATCH):
            rows = list(range(i, min(i + BATCH, len(examples))))
            batch = build_batch(enc, rows, prompt, self.arch, self.pad_id)
            ids, positions, _ = layout(batch)
            lengths = [int((positions <= p).sum()) for p in batch.pred_onehot.argmax(-1)]
            out.append((self.owner.clean(ids, positions), [(examples[r], n) for r, n in zip(rows, lengths)],
                        batch.prompt_start))
        return out

    def released(self, states, releases: int) -> tuple[list[torch.Tensor], list[dict]]:
        """Per text: the average of ``releases`` mechanism outputs [m, H], and its truth."""
        rows, truth = [], []
        for state, meta, start in states:
            total = sum(self.owner.release(state, 0).hidden.double() for _ in range(releases))
            for b, (ex, n) in enumerate(meta):
                rows.append((total[b] / releases).float())
                truth.append(truth_item(state["ids"][b], n, ex.label, ex.text, start, self.count(ex.text)))
        return rows, truth


def _flat(rows: list[torch.Tensor], truth: list[dict] | None = None):
    x = torch.cat(rows) if rows else torch.zeros(0)
    ids = None if truth is None else torch.cat([t["ids"] for t in truth])
    return x, ids


def _split_back(flat: torch.Tensor, rows: list[torch.Tensor]) -> list[torch.Tensor]:
    return list(flat.split([len(r) for r in rows]))


def token_attacks(attacker: Attacker, train_rows, train_truth, mlp_seconds: float, seed: int) -> dict:
    """The inversion attacks, fitted on public mechanism outputs: name -> rows -> ids."""
    x, ids = _flat(train_rows, train_truth)
    ridge = attacks.RidgeInversion(x, ids, attacker.table)
    mlp = attacks.MLPInversion(x, ids, seconds=mlp_seconds, seed=seed)
    return {
        "nearest_token": lambda q: attacks.nearest_token(q, attacker.table),
        "adaptive_1nn": lambda q: attacks.nearest_public(q, x, ids),
        "adaptive_ridge": ridge,
        "adaptive_mlp": mlp,
    }


def _token_figures(fitted: dict, rows: list[torch.Tensor], scorer: Scorer, opts: SuiteOptions,
                   nulls: dict[str, list[torch.Tensor]] | None = None) -> tuple[dict, dict]:
    """Recovery per attack (with its CI and nulls: ``nulls`` maps a name to a null view's rows)
    and each attack's guesses."""
    figures, guesses = {}, {}
    flat, _ = _flat(rows)
    for name, attack in fitted.items():
        g = _split_back(attack(flat), rows)
        guesses[name] = g
        hits = scorer.tokens(g)
        shuffled = scorer.tokens(g, shuffled=True)
        fig = {
            "recovery": sum(h for h, _ in hits) / max(1, sum(n for _, n in hits)),
            "ci95": _ci([h for h, _ in hits], [n for _, n in hits], opts.bootstrap, opts.seed),
            "null_shuffled_truth": sum(h for h, _ in shuffled) / max(1, sum(n for _, n in shuffled)),
            "tokens": sum(n for _, n in hits),
        }
        for null, null_rows in (nulls or {}).items():
            nh = scorer.tokens(_split_back(attack(_flat(null_rows)[0]), null_rows))
            fig[null] = sum(h for h, _ in nh) / max(1, sum(n for _, n in nh))
        figures[name] = fig
    every = {k: v["recovery"] for k, v in figures.items()}
    adaptive = {k: v for k, v in every.items() if k.startswith("adaptive")}
    figures["best_adaptive"] = {"attack": max(adaptive, key=adaptive.get), "recovery": max(adaptive.values())}
    figures["best"] = {"attack": max(every, key=every.get), "recovery": max(every.values())}
    return figures, guesses


def _gaussian_view(rows: list[torch.Tensor], seed: int) -> list[torch.Tensor]:
    """Null view: Gaussian rows with the recorded rows' per-dimension mean and spread (what an
    attack guesses from nothing: its prior, e.g. a frequent token everywhere)."""
    flat = torch.cat(rows)
    gen = torch.Generator().manual_seed(seed)
    noise = torch.randn(flat.shape, generator=gen) * flat.std(0) + flat.mean(0)
    return _split_back(noise, rows)


def _random_text_view(attacker: Attacker, view: dict, releases: int, seed: int) -> list[torch.Tensor]:
    """Null view: the mechanism's output for uniformly random tokens in the recorded layout —
    a view as informative as a real one, about a text that is not the owner's."""
    gen = torch.Generator().manual_seed(seed)
    out = []
    for it in view["items"]:
        ids = torch.randint(0, attacker.arch.vocab_size, (1, it["rows"].size(1)), generator=gen)
        state = attacker.owner.clean(ids, it["positions"])
        total = sum(attacker.owner.release(state, 0).hidden.double() for _ in range(releases))
        out.append((total[0] / releases).float())
    return out


def _aia(train_rows, train_truth, rows, scorer: Scorer, classes: int, opts: SuiteOptions) -> dict:
    feats = torch.stack([r.mean(0) for r in train_rows])
    labels = torch.tensor([int(t["label"]) for t in train_truth])
    probe = attacks.LogisticProbe(feats, labels, classes)
    guesses = probe(torch.stack([r.mean(0) for r in rows])).tolist()
    right = scorer.labels(guesses)
    return {"accuracy": sum(right) / max(1, len(right)), "ci95": _ci(right, None, opts.bootstrap, opts.seed),
            "se": se_boot(right, None, opts.bootstrap, opts.seed),
            "chance_majority": scorer.majority_rate(),
            "null_shuffled_truth": sum(scorer.labels(guesses, shuffled=True)) / max(1, len(right)), "texts": len(right)}


def _length(guesses: list[torch.Tensor], pad_id: int, scorer: Scorer, prior: int, opts: SuiteOptions) -> dict:
    est = [attacks.length_from_tokens(g, pad_id) for g in guesses]
    err = scorer.lengths(est)
    prior_err = scorer.lengths([prior] * len(est))
    return {"exact": sum(e == 0 for e in err) / len(err), "mae": sum(err) / len(err),
            "mae_ci95": _ci(err, None, opts.bootstrap, opts.seed),
            "null_prior_exact": sum(e == 0 for e in prior_err) / len(err), "null_prior_mae": sum(prior_err) / len(err)}


def _game(attacker: Attacker, examples, releases: int, opts: SuiteOptions) -> dict:
    """Two texts differing in one token; one is released (``releases`` times, averaged); the
    attacker picks the likelier under the mechanism's density (η·Σ‖y − μ‖/s per row)."""
    gen = torch.Generator().manual_seed(opts.seed)
    p = attacker.params
    wins, bounds = [], []
    for state, meta, start in attacker.states(examples[: opts.game_pairs]):
        for b, (ex, n) in enumerate(meta):
            ids0 = state["ids"][b : b + 1]
            ids1 = ids0.clone()
            private = max(1, min(attacker.count(ex.text), n - start))
            pos = start + int(torch.randint(0, private, (1,), generator=gen))  # one of the text's own tokens
            ids1[0, pos] = int(torch.randint(0, attacker.arch.vocab_size, (1,), generator=gen))
            pair = [attacker.owner.clean(i, state["positions"]) for i in (ids0, ids1)]
            coin = int(torch.randint(0, 2, (1,), generator=gen))
            y = sum(attacker.owner.release(pair[coin], 0).hidden.double() for _ in range(releases)) / releases
            centres, scales = zip(*(_centre_scale(s, p) for s in pair))
            score = [float(((y[0] - c).norm(dim=-1) / s).sum()) for c, s in zip(centres, scales)]
            wins.append(int(min(range(2), key=lambda c: score[c]) == coin))
            distance = float(((centres[0] - centres[1]).norm(dim=-1) / torch.minimum(*scales)).sum())
            bounds.append(distinguish_bound(p.eta * releases, distance))
    acc = sum(wins) / len(wins)
    return {"pairs": len(wins), "success": acc, "advantage": 2 * acc - 1,
            "ci95": _ci(wins, None, opts.bootstrap, opts.seed), "bound_success": sum(bounds) / len(bounds),
            "releases_averaged": releases}


def _centre_scale(state: dict, p: MechanismParams) -> tuple[torch.Tensor, torch.Tensor]:
    """The mechanism's centre μ (rows [m, H]) and noise scale s [m] for one text's state."""
    h = state["h"][0].double()
    if p.noise == "dchi":
        return h, torch.ones(h.size(0), dtype=torch.float64)
    w = state["importance"][0].double()
    return h + crafted_mean(h, state["target"][0].double(), w, p), 1.0 - p.beta * w


def _view_rows(view: dict, releases: int | None) -> list[torch.Tensor]:
    """Per item: its first release (``releases`` 1) or the average of all it recorded."""
    return [it["rows"][0] if releases == 1 else it["rows"].double().mean(0).float() for it in view["items"]]


def open_run(run_dir: str | Path) -> tuple[dict, dict, Scorer]:
    """A run's recorded view, its public header and the scorer of its truth (attacks train: grad on)."""
    torch.set_grad_enabled(True)
    view = load_view(run_dir)
    return view, view["header"], Scorer(run_dir)


def run_suite(run_dir: str | Path, opts: SuiteOptions = SuiteOptions()) -> dict:
    """The catalogue on a split run's view (a secure view: :mod:`secptune.privacy.secure_suite`)."""
    started = time.perf_counter()
    view, header, scorer = open_run(run_dir)
    attacker = Attacker(header)
    classes = len(header["verbalizer"])
    need = opts.train_texts + opts.control_texts + opts.game_pairs
    pool = scorer.disjoint(public_pool(header["task"], header.get("data"), limit=need + 200, seed=opts.seed))
    if len(pool) < 100:
        raise InputError(f"only {len(pool)} public texts for the attacks; the task's train split is too small")
    # the small AG News train split: the control and the game get at most a fifth each
    n_control = min(opts.control_texts, len(pool) // 5)
    n_game = min(opts.game_pairs, len(pool) // 5)
    train_ex = pool[: len(pool) - n_control - n_game][: opts.train_texts]
    control_ex = pool[len(train_ex) : len(train_ex) + n_control]
    game_ex = pool[len(train_ex) + n_control : len(train_ex) + n_control + n_game]
    max_releases = max(header["releases"])
    variants = [1] + ([max_releases] if max_releases > 1 else [])
    train_states = attacker.states(train_ex)
    lengths = sorted(n for _, meta, _ in train_states for _, n in meta)
    prior = lengths[len(lengths) // 2]  # the attacker's prior guess: the public median length
    result = {"run": str(run_dir), "header": header, "options": asdict(opts), "public_texts": len(train_ex),
              "variants": {}}
    for r in tqdm(variants, desc="attacks", unit="variant"):
        train_rows, train_truth = attacker.released(train_states, r)
        fitted = token_attacks(attacker, train_rows, train_truth, opts.mlp_seconds, opts.seed)
        rows = _view_rows(view, r)
        nulls = {"null_random_view": _random_text_view(attacker, view, r, opts.seed),
                 "null_gaussian_view": _gaussian_view(rows, opts.seed)}
        tokens, guesses = _token_figures(fitted, rows, scorer, opts, nulls)
        best = guesses[tokens["best"]["attack"]]
        result["variants"][f"releases_{r}"] = {
            "releases_averaged": r,
            "tokens": tokens,
            "label_aia": _aia(train_rows, train_truth, rows, scorer, classes, opts),
            "length": _length(best, attacker.pad_id, scorer, prior, opts),
            "game": _game(attacker, game_ex, r, replace(opts, game_pairs=len(game_ex))),
        }
    result["positive_control"] = _positive_control(attacker, train_states, control_ex, classes, opts)
    result["wall_s"] = time.perf_counter() - started
    result["machine"] = {"cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(),
                         "load_avg": list(os.getloadavg())}
    return result


def _positive_control(attacker: Attacker, train_states, control_ex, classes: int, opts: SuiteOptions) -> dict:
    """The same attacks on held-out public text through the unprotected split (η = inf, same
    layer): they must succeed here, or their failure elsewhere means nothing."""
    clean = attacker.with_params(MechanismParams(noise="dchi", eta=math.inf))
    train_rows, train_truth = clean.released(train_states, 1)  # clean states serve any mechanism
    rows, truth = clean.released(clean.states(control_ex), 1)
    scorer = Scorer(items=truth)
    fitted = token_attacks(clean, train_rows, train_truth, opts.mlp_seconds / 2, opts.seed)
    tokens, _ = _token_figures(fitted, rows, scorer, opts)
    return {"texts": len(rows), "tokens": tokens, "label_aia": _aia(train_rows, train_truth, rows, scorer, classes, opts)}


def write_reports(result: dict, run_dir: str | Path) -> tuple[Path, Path]:
    out = Path(run_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "attacks.json").write_text(json.dumps(result, indent=1))
    (out / "attacks.md").write_text(markdown(result))
    return out / "attacks.json", out / "attacks.md"


def _pct(x: float) -> str:
    return f"{100 * x:.1f} %"


def _ci_text(ci) -> str:
    return f"[{_pct(ci[0])}, {_pct(ci[1])}]"


def markdown(r: dict) -> str:
    h = r["header"]
    mech = h["mechanism"]
    lines = [
        f"# Attacks on the server's view: {r['run']}",
        "",
        f"Mode {h['mode']}, model {h['model']}, task {h['task']}, split layer {h['split_layer']}, noise "
        f"{mech['noise']}, η = {mech['eta']}, release {h['release']}; {h['items']} recorded texts; attacks fitted "
        f"on {r['public_texts']} public texts; {r['wall_s']:.0f} s.",
        "",
    ]
    for key, v in r["variants"].items():
        n_rel = v["releases_averaged"]
        title = "first release" if n_rel == 1 else f"average of {n_rel} releases"
        lines += [f"## {title}", "",
                  "| token inversion | recovery | 95 % CI | null: shuffled truth | null: random-text view | "
                  "null: Gaussian view (prior) |", "|---|---|---|---|---|---|"]
        for name, f in v["tokens"].items():
            if not name.startswith("best"):
                lines.append(f"| {name} | {_pct(f['recovery'])} | {_ci_text(f['ci95'])} | {_pct(f['null_shuffled_truth'])} | "
                             f"{_pct(f['null_random_view'])} | {_pct(f['null_gaussian_view'])} |")
        b, a, ln, g = v["tokens"]["best_adaptive"], v["label_aia"], v["length"], v["game"]
        lines += ["", f"Best adaptive inversion: {b['attack']}, {_pct(b['recovery'])} of {v['tokens'][b['attack']]['tokens']} tokens.",
                  f"Label inference: {_pct(a['accuracy'])} {_ci_text(a['ci95'])} on {a['texts']} texts; chance (majority) "
                  f"{_pct(a['chance_majority'])}, shuffled truth {_pct(a['null_shuffled_truth'])}.",
                  f"Length: exact {_pct(ln['exact'])}, mean error {ln['mae']:.2f} tokens (prior guess: exact "
                  f"{_pct(ln['null_prior_exact'])}, error {ln['null_prior_mae']:.2f}).",
                  f"Distinguishing game ({g['pairs']} pairs, one token differs): success {_pct(g['success'])} "
                  f"{_ci_text(g['ci95'])}, advantage {g['advantage']:.3f}; dχ bound on success {_pct(g['bound_success'])}.", ""]
    pc = r["positive_control"]
    lines += ["## Positive control (held-out public text, unprotected split at the same layer)", "",
              "| token inversion | recovery | 95 % CI |", "|---|---|---|"]
    for name, f in pc["tokens"].items():
        if not name.startswith("best"):
            lines.append(f"| {name} | {_pct(f['recovery'])} | {_ci_text(f['ci95'])} |")
    lines += ["", f"Label inference {_pct(pc['label_aia']['accuracy'])} (majority {_pct(pc['label_aia']['chance_majority'])}).", ""]
    return "\n".join(lines)
