"""`secptune attack RUN_DIR`: the attack catalogue on a recorded server view.

The attacker knows what the server knows: the view and its public header (model, split
layer, mechanism parameters, template, task), plus public text (the task's *train* split,
without the owner's recorded texts).  It rebuilds the owner's mechanism from the header
(with its own noise key), pushes public text through it and fits its attacks there:

* token inversion — nearest vocabulary row (non-adaptive), and the adaptive 1-NN over
  public outputs, ridge map to the embedding, and MLP to the vocabulary; the best
  adaptive one is the figure that counts; plus the white-box optimisation attack
  (:mod:`secptune.privacy.whitebox`: relaxed embeddings through the bottom model, the
  first ``opt_texts`` texts), and the left-to-right exhaustive search
  (:mod:`secptune.privacy.search`: every vocabulary token through the causal bottom, position
  by position; ``whitebox_search`` with the run's own bottom, ``public_search`` — guarded
  runs — with the pretrained input adapter, all a server knows of the client's private one;
  the first ``search_texts`` texts); each with its token recovery and token-level ROUGE-L F1
  (the reconstruction effectiveness: the best attack's ROUGE-L);
* gradient label inference — where the view holds gradients (``--mode guarded
  --variant online``): a probe fitted on the gradients the attacker simulates for
  public labelled text;
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
from secptune.inputs import Template, build_batch, encode, verbalizer_ids, verbalizer_onehot
from secptune.privacy import attacks, whitebox
from secptune.privacy.search import CausalSearch, frequency_order
from secptune.privacy.mechanisms import MechanismParams, crafted_mean, distinguish_bound
from secptune.privacy.neighbours import NeighbourGraph
from secptune.privacy.sampling import NoiseSource
from secptune.privacy.scorer import Scorer
from secptune.privacy.view import load_view, truth_item, view_dir
from secptune.arch import arch_from_config
from secptune.server.prepare import prepare_server_model
from secptune.split import BottomModel, SplitOwner, layout
from secptune.split_job import importance_table, public_pool, text_token_counter
from secptune.guarded import GuardedClient, GuardedServer, Piece
from secptune.guarded_job import WHITEBOX

BATCH = 8  # public texts per padded batch (the owner's `infer` default)
# Above this many tokens (SmolLM2's 49,152) the white-box attacks consider only the tokens public text
# contains, as the learned attacks name only those; below it (tiny-llama's 1,024) the whole vocabulary.
WHOLE_VOCAB = 4096


@dataclass
class SuiteOptions:
    train_texts: int = 1000  # public texts the adaptive attacks are fitted on
    control_texts: int = 200  # held-out public texts of the positive control
    game_pairs: int = 300
    mlp_seconds: float = 90.0
    opt_steps: int = 150  # white-box optimisation attack: Adam steps (0: not run)
    opt_texts: int = 64  # ... on this many recorded texts
    search_texts: int = 64  # left-to-right exhaustive search (secptune.privacy.search) on this many (0: not run)
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

    def __init__(self, header: dict, params: MechanismParams | None = None, run_dir: str | Path | None = None):
        if header.get("mode") not in ("privtune", "guarded"):
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
        if header["mode"] == "guarded":
            self._guarded(run_dir)
            return
        graph = NeighbourGraph(self.server.weights["emb.word"], self.params.knn) if self.params.noise == "privtune" else None
        self.owner = SplitOwner(BottomModel(self.server, header["split_layer"], torch.float32), self.params,
                                NoiseSource(), graph, importance)

    def _guarded(self, run_dir, whitebox_state: bool = True, bits: int | None = None) -> None:
        """The guarded owner: its input adapter as the run left it (view/whitebox.pt: the
        white-box assumption) or as pretrained (the positive control), and its wire's bits."""
        g = self.header["guarded"]
        self.tuned_adapter = whitebox_state  # the white box is the client's own (private) adapter
        self.bits = g["quant_bits"] if bits is None else bits
        words = self.header["verbalizer"]
        verbalizer = verbalizer_onehot(verbalizer_ids(self.tokenizer, words, self.template), self.arch.vocab_size)
        self.client = GuardedClient(self.server, verbalizer, g["in_layers"], g["out_layers"], torch.float32)
        if whitebox_state:
            state = torch.load(view_dir(run_dir) / WHITEBOX, weights_only=False)["input_adapter"]
            with torch.no_grad():
                for k, v in self.client.inp.w.items():
                    v.copy_(state[k])
        for w in self.client.inp.parameters() + self.client.out.parameters():
            w.requires_grad_(False)  # the attacks differentiate with respect to inputs only
        self.backbone = GuardedServer(self.server, g["in_layers"], g["out_layers"], torch.float32)
        self.owner = whitebox.GuardedPipeline(self.client, self.bits)

    def with_params(self, params: MechanismParams) -> "Attacker":
        """The same attacker (model, tables) with another mechanism, e.g. the unprotected split
        (guarded: the pretrained input adapter, no regulariser, a 32-bit wire)."""
        twin = copy.copy(self)
        twin.params = params
        if self.header["mode"] == "guarded":
            twin._guarded(None, whitebox_state=False, bits=32)
        else:
            twin.owner = SplitOwner(self.owner.bottom, params, NoiseSource(), self.owner.graph, self.owner.importance)
        return twin

    def input_table(self) -> torch.Tensor:
        """The embedding table the owner's bottom starts from: a guarded client's own input
        adapter's (tuned in the Online variant; the white box or the pretrained one), else the
        server's. The white-box inversion reads its relaxed embeddings back through it."""
        if self.header["mode"] == "guarded":
            return self.client.inp.w["emb.word"].detach().float()
        return self.table

    def bottom_function(self):
        """The owner's bottom model as a differentiable map (embeddings, positions) -> rows."""
        if self.header["mode"] == "guarded":
            return self.owner.function
        bottom = self.owner.bottom
        if bottom.K == 0:
            return lambda e, positions: e
        return lambda e, positions: bottom.model.causal(e.to(bottom.dtype), layers=range(bottom.K), positions=positions)

    def bottom_stack(self, public: bool = False) -> tuple:
        """The bottom as (Transformer, layers, wire bits) for the exhaustive search: the run's own
        (white box) or, ``public``, the pretrained one (guarded: the input adapter before tuning)."""
        if self.header["mode"] == "guarded":
            inp = self.client.inp
            if public:
                inp = Piece(self.server, inp.layers, torch.float32, False, embed=True)
            return inp.model, inp.layers, self.bits
        return self.owner.bottom.model, list(range(self.owner.bottom.K)), 32

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

    def released(self, states, releases: int) -> tuple[list[torch.Tensor], list[dict], list[torch.Tensor]]:
        """Per text: the average of ``releases`` mechanism outputs [m, H], its truth, its positions."""
        rows, truth, positions = [], [], []
        for state, meta, start in states:
            total = sum(self.owner.release(state, 0).hidden.double() for _ in range(releases))
            for b, (ex, n) in enumerate(meta):
                rows.append((total[b] / releases).float())
                truth.append(truth_item(state["ids"][b], n, ex.label, ex.text, start, self.count(ex.text)))
                positions.append(state["positions"])
        return rows, truth, positions


def _flat(rows: list[torch.Tensor], truth: list[dict] | None = None):
    x = torch.cat(rows) if rows else torch.zeros(0)
    ids = None if truth is None else torch.cat([t["ids"] for t in truth])
    return x, ids


def _split_back(flat: torch.Tensor, rows: list[torch.Tensor]) -> list[torch.Tensor]:
    return list(flat.split([len(r) for r in rows]))


def token_attacks(attacker: Attacker, train_rows, train_truth, mlp_seconds: float, seed: int,
                  opts: SuiteOptions | None = None) -> dict:
    """The inversion attacks, fitted on public mechanism outputs: name -> rows -> ids (the
    white-box one: an object with ``on_items``)."""
    x, ids = _flat(train_rows, train_truth)
    ridge = attacks.RidgeInversion(x, ids, attacker.table)
    mlp = attacks.MLPInversion(x, ids, seconds=mlp_seconds, seed=seed)
    fitted = {
        "nearest_token": lambda q: attacks.nearest_token(q, attacker.table),
        "adaptive_1nn": lambda q: attacks.nearest_public(q, x, ids),
        "adaptive_ridge": ridge,
        "adaptive_mlp": mlp,
    }
    if opts is not None and opts.opt_steps > 0:
        vocab = None if attacker.table.size(0) <= WHOLE_VOCAB else torch.unique(ids)
        fitted["whitebox_opt"] = whitebox.OptimisedInversion(attacker.bottom_function(), attacker.input_table(), vocab,
                                                             opts.opt_steps, limit=opts.opt_texts, seed=seed,
                                                             proposer=mlp.top)
    if opts is not None and opts.search_texts > 0:
        fitted.update(search_attacks(attacker, ids, opts, mlp.top))
    return fitted


def search_attacks(attacker: Attacker, public_ids: torch.Tensor, opts: SuiteOptions, proposer=None) -> dict:
    """The left-to-right exhaustive search with the run's own bottom (``whitebox_search``) and,
    where that is a tuned private adapter, with the pretrained one (``public_search``); the
    vocabulary walked in public token frequency (``public_ids``), ``proposer``'s guesses first."""
    order = frequency_order(public_ids, attacker.table.size(0))
    # (and the proposer's guesses, walked first)
    walk = None if attacker.table.size(0) <= WHOLE_VOCAB else len(torch.unique(public_ids))
    stacks = {"whitebox_search": attacker.bottom_stack()}
    if getattr(attacker, "tuned_adapter", False):  # the pretrained adapter differs from the white box
        stacks["public_search"] = attacker.bottom_stack(public=True)
    return {name: CausalSearch(model, layers, bits, order, proposer=proposer, limit=opts.search_texts, walk=walk)
            for name, (model, layers, bits) in stacks.items()}


def _guess(attack, rows: list[torch.Tensor], positions: list[torch.Tensor]) -> list[torch.Tensor]:
    if getattr(attack, "per_item", False):
        return attack.on_items(rows, positions)
    return _split_back(attack(_flat(rows)[0]), rows)


def _token_figures(fitted: dict, rows: list[torch.Tensor], scorer: Scorer, opts: SuiteOptions,
                   nulls: dict[str, list[torch.Tensor]] | None = None,
                   positions: list[torch.Tensor] | None = None) -> tuple[dict, dict]:
    """Recovery and ROUGE-L per attack (with CIs and nulls: ``nulls`` maps a name to a null
    view's rows) and each attack's guesses (a white-box attack: on its first texts only)."""
    figures, guesses = {}, {}
    positions = positions or [torch.arange(len(r)) for r in rows]
    for name, attack in fitted.items():
        g = _guess(attack, rows, positions)
        guesses[name] = g
        sc = scorer if len(g) == len(rows) else scorer.subset(list(range(len(g))))
        hits, rouge = sc.tokens(g), sc.rouge_l(g)
        shuffled = sc.tokens(g, shuffled=True)
        fig = {
            "recovery": sum(h for h, _ in hits) / max(1, sum(n for _, n in hits)),
            "ci95": _ci([h for h, _ in hits], [n for _, n in hits], opts.bootstrap, opts.seed),
            "null_shuffled_truth": sum(h for h, _ in shuffled) / max(1, sum(n for _, n in shuffled)),
            "rouge_l": sum(rouge) / max(1, len(rouge)),
            "rouge_l_ci95": _ci(rouge, None, opts.bootstrap, opts.seed),
            "rouge_l_null_shuffled_truth": sum(sc.rouge_l(g, shuffled=True)) / max(1, len(rouge)),
            "tokens": sum(n for _, n in hits),
            "texts": len(g),
        }
        for null, null_rows in (nulls or {}).items():
            ng = _guess(attack, null_rows, positions)
            nh = sc.tokens(ng)
            fig[null] = sum(h for h, _ in nh) / max(1, sum(n for _, n in nh))
            fig["rouge_l_" + null] = sum(sc.rouge_l(ng)) / max(1, len(ng))
        figures[name] = fig
    return _with_bests(figures), guesses


def _with_bests(figures: dict) -> dict:
    """``figures`` (attack name -> figures) with the best attacks' entries (re)computed."""
    figures = {k: v for k, v in figures.items() if not k.startswith("best")}
    every = {k: v["recovery"] for k, v in figures.items()}
    adaptive = {k: v for k, v in every.items() if k.startswith("adaptive")}
    rouge = {k: v["rouge_l"] for k, v in figures.items()}
    if adaptive:
        figures["best_adaptive"] = {"attack": max(adaptive, key=adaptive.get), "recovery": max(adaptive.values())}
    figures["best"] = {"attack": max(every, key=every.get), "recovery": max(every.values())}
    figures["best_rouge_l"] = {"attack": max(rouge, key=rouge.get), "rouge_l": max(rouge.values())}
    return figures


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
    """Per item: one release (``releases`` 1: the first; the last where the header says the
    white box is the run's final state) or the average of all it recorded."""
    one = -1 if view["header"].get("attack_release") == "last" else 0
    return [it["rows"][one] if releases == 1 else it["rows"].double().mean(0).float() for it in view["items"]]


def open_run(run_dir: str | Path) -> tuple[dict, dict, Scorer]:
    """A run's recorded view, its public header and the scorer of its truth (attacks train: grad on)."""
    torch.set_grad_enabled(True)
    view = load_view(run_dir)
    return view, view["header"], Scorer(run_dir)


def _public_split(header: dict, scorer: Scorer, opts: SuiteOptions) -> tuple[list, list, list]:
    """The attacker's public texts (the task's train split without the recorded ones): to fit
    on, for the positive control, for the game."""
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
    return train_ex, control_ex, game_ex


def add_search(run_dir: str | Path, opts: SuiteOptions = SuiteOptions()) -> dict:
    """The exhaustive search attacks added to a run's existing ``attacks.json`` (its other
    figures kept as measured): the same view, nulls, public texts and positive control as
    :func:`run_suite`, only the search run (``secptune attack RUN --search-only``)."""
    path = Path(run_dir) / "attacks.json"
    if not path.is_file():
        raise InputError(f"{run_dir} has no attacks.json to add to: run `secptune attack {run_dir}` first")
    result = json.loads(path.read_text())
    started = time.perf_counter()
    view, header, scorer = open_run(run_dir)
    attacker = Attacker(header, run_dir=run_dir)
    train_ex, control_ex, _ = _public_split(header, scorer, opts)
    _, train_truth, _ = attacker.released(attacker.states(train_ex), 1)
    public_ids = _flat([], train_truth)[1]
    positions = [it["positions"] for it in view["items"]]
    for v in result["variants"].values():
        r = v["releases_averaged"]
        rows = _view_rows(view, r)
        nulls = {"null_random_view": _random_text_view(attacker, view, r, opts.seed),
                 "null_gaussian_view": _gaussian_view(rows, opts.seed)}
        figures, _ = _token_figures(search_attacks(attacker, public_ids, opts), rows, scorer, opts, nulls, positions)
        v["tokens"] = _with_bests({**v["tokens"], **figures})
    clean = attacker.with_params(MechanismParams(noise="dchi", eta=math.inf))
    rows, truth, positions = clean.released(clean.states(control_ex[: opts.search_texts]), 1)
    figures, _ = _token_figures(search_attacks(clean, public_ids, opts), rows, Scorer(items=truth), opts,
                                positions=positions)
    pc = result["positive_control"]
    pc["tokens"] = _with_bests({**pc["tokens"], **figures})
    result.setdefault("added", []).append({"attacks": sorted(figures), "search_texts": opts.search_texts,
                                           "wall_s": time.perf_counter() - started})
    return result


def run_suite(run_dir: str | Path, opts: SuiteOptions = SuiteOptions()) -> dict:
    """The catalogue on a split or guarded run's view (a secure view: :mod:`secptune.privacy.secure_suite`)."""
    started = time.perf_counter()
    view, header, scorer = open_run(run_dir)
    attacker = Attacker(header, run_dir=run_dir)
    classes = len(header["verbalizer"])
    train_ex, control_ex, game_ex = _public_split(header, scorer, opts)
    max_releases = max(header["releases"])
    variants = [1] + ([max_releases] if max_releases > 1 else [])
    train_states = attacker.states(train_ex)
    lengths = sorted(n for _, meta, _ in train_states for _, n in meta)
    prior = lengths[len(lengths) // 2]  # the attacker's prior guess: the public median length
    result = {"run": str(run_dir), "header": header, "options": asdict(opts), "public_texts": len(train_ex),
              "variants": {}}
    for r in tqdm(variants, desc="attacks", unit="variant"):
        train_rows, train_truth, _ = attacker.released(train_states, r)
        fitted = token_attacks(attacker, train_rows, train_truth, opts.mlp_seconds, opts.seed, opts)
        rows = _view_rows(view, r)
        nulls = {"null_random_view": _random_text_view(attacker, view, r, opts.seed),
                 "null_gaussian_view": _gaussian_view(rows, opts.seed)}
        tokens, guesses = _token_figures(fitted, rows, scorer, opts, nulls, [it["positions"] for it in view["items"]])
        best = guesses[tokens["best"]["attack"]]
        result["variants"][f"releases_{r}"] = {
            "releases_averaged": r,
            "tokens": tokens,
            "label_aia": _aia(train_rows, train_truth, rows, scorer, classes, opts),
            "length": _length(best, attacker.pad_id, scorer, prior, opts),
            "game": _game(attacker, game_ex, r, replace(opts, game_pairs=len(game_ex))),
        }
    if any("grads" in it for it in view["items"]):
        result["gradient_label"] = _gradient_label(attacker, view, scorer, train_ex, control_ex, opts)
    result["positive_control"] = _positive_control(attacker, train_states, control_ex, classes, opts, train_ex)
    result["wall_s"] = time.perf_counter() - started
    result["machine"] = {"cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(),
                         "load_avg": list(os.getloadavg())}
    return result


def _labelled_batches(attacker: Attacker, examples) -> list[tuple]:
    """(ids, prediction one-hot, labels) per padded batch of public labelled text."""
    out = []
    for state, meta, _ in attacker.states(examples):
        ids = state["ids"]
        pred = torch.zeros(ids.shape, dtype=torch.float64)
        for b, (_, n) in enumerate(meta):
            pred[b, n - 1] = 1.0
        out.append((ids, pred, torch.tensor([int(ex.label) for ex, _ in meta])))
    return out


def _gradient_label(attacker: Attacker, view: dict, scorer: Scorer, train_ex, control_ex, opts: SuiteOptions) -> dict:
    """Label inference from the gradients the server received (first one per text), by a probe
    fitted on gradients the attacker simulates for public labelled text (its output adapter:
    the pretrained one); positive control: the same probe on held-out public texts' simulated
    gradients (32-bit, pretrained adapters)."""
    classes = len(attacker.header["verbalizer"])
    feats, labels = whitebox.simulated_gradients(attacker.client, attacker.backbone,
                                                 _labelled_batches(attacker, train_ex), attacker.bits)
    probe = attacks.LogisticProbe(feats, labels, classes)
    have = [i for i, it in enumerate(view["items"]) if "grads" in it]
    sc = scorer.subset(have)
    guesses = probe(torch.stack([whitebox.gradient_features(view["items"][i]["grads"][:1])[0] for i in have])).tolist()
    right = sc.labels(guesses)
    clean = attacker.with_params(MechanismParams(noise="dchi", eta=math.inf))
    cf, cl = whitebox.simulated_gradients(clean.client, clean.backbone, _labelled_batches(clean, train_ex), 32)
    pf, pl = whitebox.simulated_gradients(clean.client, clean.backbone, _labelled_batches(clean, control_ex), 32)
    control = (attacks.LogisticProbe(cf, cl, classes)(pf) == pl).double().tolist()
    return {"accuracy": sum(right) / max(1, len(right)), "ci95": _ci(right, None, opts.bootstrap, opts.seed),
            "chance_majority": sc.majority_rate(),
            "null_shuffled_truth": sum(sc.labels(guesses, shuffled=True)) / max(1, len(right)), "texts": len(right),
            "positive_control": {"accuracy": sum(control) / max(1, len(control)), "texts": len(control)}}


def _positive_control(attacker: Attacker, train_states, control_ex, classes: int, opts: SuiteOptions,
                      train_ex=None) -> dict:
    """The same attacks on held-out public text through the unprotected split (η = inf, same
    layer; guarded: the pretrained adapter, 32-bit): they must succeed here, or their failure
    elsewhere means nothing."""
    clean = attacker.with_params(MechanismParams(noise="dchi", eta=math.inf))
    if attacker.header["mode"] == "guarded":  # another bottom model: its own clean states
        train_states = clean.states(train_ex)
    train_rows, train_truth, _ = clean.released(train_states, 1)  # clean states serve any mechanism
    rows, truth, positions = clean.released(clean.states(control_ex), 1)
    scorer = Scorer(items=truth)
    fitted = token_attacks(clean, train_rows, train_truth, opts.mlp_seconds / 2, opts.seed, opts)
    tokens, _ = _token_figures(fitted, rows, scorer, opts, positions=positions)
    return {"texts": len(rows), "tokens": tokens, "label_aia": _aia(train_rows, train_truth, rows, scorer, classes, opts)}


def write_reports(result: dict, run_dir: str | Path) -> tuple[Path, Path]:
    out = Path(run_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "attacks.json").write_text(json.dumps(result, indent=1))
    (out / "attacks.md").write_text(markdown(result))
    return out / "attacks.json", out / "attacks.md"


def _pct(x: float) -> str:
    return f"{100 * x:.1f} %"


def _rouge(f: dict) -> str:
    return f"{f['rouge_l']:.3f}" if "rouge_l" in f else "–"


def _rouge_nulls(f: dict) -> str:
    if "rouge_l_null_shuffled_truth" not in f:
        return "–"
    return f"{f['rouge_l_null_shuffled_truth']:.3f} / {f.get('rouge_l_null_random_view', float('nan')):.3f}"


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
    for add in r.get("added", []):
        lines += [f"Added afterwards by `secptune attack --search-only` (the other figures as first measured): "
                  f"{', '.join(add['attacks'])} on the first {add['search_texts']} texts, {add['wall_s']:.0f} s.", ""]
    if h.get("guarded"):
        g = h["guarded"]
        lines += [f"GuardedTuning {g['variant']}: dcor {g['dcor']}, {g['quant_bits']}-bit wire, adapters "
                  f"{g['in_layers']} in + {g['out_layers']} out; the white-box attack is given the client's final "
                  "input adapter and attacks each text's last release.", ""]
    for key, v in r["variants"].items():
        n_rel = v["releases_averaged"]
        title = "first release" if n_rel == 1 else f"average of {n_rel} releases"
        lines += [f"## {title}", "",
                  "| token inversion | texts | recovery | 95 % CI | null: shuffled truth | null: random-text view | "
                  "null: Gaussian view (prior) | ROUGE-L F1 | ROUGE-L null: shuffled / random view |",
                  "|---|---|---|---|---|---|---|---|---|"]
        for name, f in v["tokens"].items():
            if not name.startswith("best"):
                lines.append(f"| {name} | {f.get('texts', '')} | {_pct(f['recovery'])} | {_ci_text(f['ci95'])} | "
                             f"{_pct(f['null_shuffled_truth'])} | {_pct(f['null_random_view'])} | "
                             f"{_pct(f['null_gaussian_view'])} | {_rouge(f)} | {_rouge_nulls(f)} |")
        b, a, ln, g = v["tokens"]["best_adaptive"], v["label_aia"], v["length"], v["game"]
        best_r = v["tokens"].get("best_rouge_l")
        lines += ["", f"Best adaptive inversion: {b['attack']}, {_pct(b['recovery'])} of {v['tokens'][b['attack']]['tokens']} tokens."
                  + (f" Reconstruction effectiveness (best ROUGE-L F1): {best_r['rouge_l']:.3f} ({best_r['attack']})."
                     if best_r else ""),
                  f"Label inference: {_pct(a['accuracy'])} {_ci_text(a['ci95'])} on {a['texts']} texts; chance (majority) "
                  f"{_pct(a['chance_majority'])}, shuffled truth {_pct(a['null_shuffled_truth'])}.",
                  f"Length: exact {_pct(ln['exact'])}, mean error {ln['mae']:.2f} tokens (prior guess: exact "
                  f"{_pct(ln['null_prior_exact'])}, error {ln['null_prior_mae']:.2f}).",
                  f"Distinguishing game ({g['pairs']} pairs, one token differs): success {_pct(g['success'])} "
                  f"{_ci_text(g['ci95'])}, advantage {g['advantage']:.3f}; dχ bound on success {_pct(g['bound_success'])}.", ""]
    gl = r.get("gradient_label")
    if gl:
        lines += ["## Label inference from gradients (online)", "",
                  f"Probe on the first gradient per text: {_pct(gl['accuracy'])} {_ci_text(gl['ci95'])} on {gl['texts']} "
                  f"texts; chance (majority) {_pct(gl['chance_majority'])}, shuffled truth {_pct(gl['null_shuffled_truth'])}; "
                  f"positive control (held-out public text, 32-bit, pretrained adapters) "
                  f"{_pct(gl['positive_control']['accuracy'])} on {gl['positive_control']['texts']}.", ""]
    pc = r["positive_control"]
    lines += ["## Positive control (held-out public text, unprotected split at the same layer)", "",
              "| token inversion | recovery | 95 % CI | ROUGE-L F1 |", "|---|---|---|---|"]
    for name, f in pc["tokens"].items():
        if not name.startswith("best"):
            lines.append(f"| {name} | {_pct(f['recovery'])} | {_ci_text(f['ci95'])} | {_rouge(f)} |")
    lines += ["", f"Label inference {_pct(pc['label_aia']['accuracy'])} (majority {_pct(pc['label_aia']['chance_majority'])}).", ""]
    return "\n".join(lines)
