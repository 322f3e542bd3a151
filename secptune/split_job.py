"""Building a ``--mode privtune`` session for `infer` and `tune`: the owner's bottom model and
mechanism, the server's top model, the public tables both can rebuild, and the view recorder."""

from __future__ import annotations

import random
from dataclasses import dataclass

import torch

from secptune.checkpoints import load_hf_model
from secptune.errors import InputError
from secptune.inputs import Example, Template, encode, load_jsonl
from secptune.plain import resolve_precision
from secptune.privacy.mechanisms import MechanismParams, parse_eta
from secptune.privacy.neighbours import Importance, NeighbourGraph
from secptune.privacy.sampling import NoiseSource
from secptune.privacy.view import ViewRecorder
from secptune.server.prepare import prepare_server_model
from secptune.split import RELEASES, BottomModel, SplitOwner, SplitServer, SplitSession
from secptune.tasks import task_file

PUBLIC_POOL = 2000  # public labelled texts for the importance table (and the attacks' training)


@dataclass
class SplitOptions:
    """The flags of ``--mode privtune`` (public: every value is recorded with the view)."""

    split_layer: int = 0
    noise: str = "dchi"
    eta: str = "inf"
    release: str = "once"
    record_view: int = 0

    def check(self) -> None:
        parse_eta(self.eta)
        MechanismParams(noise=self.noise)
        if self.release not in RELEASES:
            raise InputError(f"--release must be one of {', '.join(RELEASES)}, not {self.release!r}")
        if self.split_layer < 0:
            raise InputError(f"--split-layer must be 0 or more, not {self.split_layer}")
        if self.record_view < 0:
            raise InputError(f"--record-view takes a number of texts, not {self.record_view}")

    def params(self) -> MechanismParams:
        return MechanismParams(noise=self.noise, eta=parse_eta(self.eta))


def public_pool(task: str | None, data: str | None, limit: int = PUBLIC_POOL, seed: int = 0,
                exclude: set[str] = frozenset()) -> list[Example]:
    """Labelled public text: a seeded sample of the task's *train* split (never its test
    split, which owners score), without any text in ``exclude``."""
    if task is None:
        raise InputError("--mode privtune needs --task: the public labelled pool (the task's train split) "
                         "sets its token-importance table and trains the attacks")
    pool = [ex for ex in load_jsonl(task_file(task, "train", data)) if ex.label is not None]
    random.Random(seed).shuffle(pool)  # before excluding: the same order for everyone who rebuilds it
    return [ex for ex in pool if ex.text not in exclude][:limit]


def importance_table(tokenizer, template: Template, pool: list[Example], classes: int, prefix) -> Importance:
    enc = encode(tokenizer, pool, template, prefix)
    return Importance(enc.ids, [int(ex.label) for ex in pool], classes)


def public_header(model: str, task: str | None, data: str | None, template: str, words: list[str],
                  opts: SplitOptions, prompt_len: int) -> dict:
    """What the server knows about a run and so what every attack may use."""
    return {"mode": "privtune", "model": model, "task": task, "data": data, "template": template,
            "verbalizer": words, "split_layer": opts.split_layer, "release": opts.release,
            "mechanism": opts.params().as_dict(), "prompt_len": prompt_len}


def build_split(model_dir, verbalizer: torch.Tensor, opts: SplitOptions, importance: Importance | None,
                precision: str | None, recorder: ViewRecorder | None = None, model=None) -> SplitSession:
    """The owner's session with its own server piece (one process; no plaintext crosses)."""
    opts.check()
    server_model = prepare_server_model(model if model is not None else load_hf_model(model_dir))
    dtype = resolve_precision(precision or "float32")
    params = opts.params()
    graph = NeighbourGraph(server_model.weights["emb.word"], params.knn) if params.noise == "privtune" else None
    owner = SplitOwner(BottomModel(server_model, opts.split_layer, dtype), params, NoiseSource(), graph, importance)
    server = SplitServer(server_model, verbalizer, opts.split_layer, dtype, recorder)
    return SplitSession(owner, server, opts.release, recorder)


def text_token_counter(tokenizer):
    """Tokens of a text on its own: the private span of its row (see :func:`truth_item`)."""
    return lambda text: len(tokenizer(text, add_special_tokens=False)["input_ids"])


def make_recorder(run_dir, opts: SplitOptions, header: dict, batches_examples: dict, tokenizer) -> ViewRecorder | None:
    """A recorder for the first ``--record-view`` texts; ``batches_examples``: id(batch) ->
    the examples of its rows (the owner's truth)."""
    if not opts.record_view:
        return None
    if run_dir is None:
        raise InputError("--record-view writes beside a run: give --out DIR")

    def describe(batch):
        exs = batches_examples.get(id(batch))
        return None if exs is None else [(None if e.label is None else int(e.label), e.text) for e in exs]

    return ViewRecorder(run_dir, opts.record_view, header, describe, text_token_counter(tokenizer))
