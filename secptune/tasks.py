"""The five benchmark tasks: data files, templates and verbalizers per model family.

Masked-LM templates follow Black-Box Tuning (BBT).  Causal-LM templates end where
the label word goes (it is scored as the next token) and use label words that
are single tokens after a space in SmolLM2's tokenizer, phrased so that the label
word is a natural continuation.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from secptune.errors import InputError


@dataclass(frozen=True)
class TaskSpec:
    name: str
    templates: dict[str, str]  # family -> template
    verbalizers: dict[str, tuple[str, ...]]  # family -> label words, index = label id
    loss: str = "ce"
    metric: str = "accuracy"


_SENTIMENT = dict(
    templates={"encoder": "{text} It was {mask} .", "causal": "{text} It was {mask}"},
    verbalizers={"encoder": ("bad", "great"), "causal": ("terrible", "great")},
)

TASKS: dict[str, TaskSpec] = {
    "sst2": TaskSpec("sst2", **_SENTIMENT),
    "yelp": TaskSpec("yelp", **_SENTIMENT),
    "agnews": TaskSpec(
        "agnews",
        templates={"encoder": "{mask} News: {text}", "causal": "{text} This article is about {mask}"},
        verbalizers={
            "encoder": ("World", "Sports", "Business", "Tech"),
            "causal": ("world", "sports", "business", "science"),
        },
    ),
    "mrpc": TaskSpec(
        "mrpc",
        templates={
            "encoder": "{text} ? {mask} , {text_b}",
            "causal": "Sentence 1: {text} Sentence 2: {text_b} Do they mean the same? Answer: {mask}",
        },
        verbalizers={"encoder": ("No", "Yes"), "causal": ("No", "Yes")},
        loss="hinge",
        metric="f1",
    ),
    "rte": TaskSpec(
        "rte",
        templates={
            "encoder": "{text} ? {mask} , {text_b}",
            "causal": "{text} Question: {text_b} Is that true? Answer: {mask}",
        },
        verbalizers={"encoder": ("Yes", "No"), "causal": ("Yes", "No")},
        loss="hinge",
    ),
}


def get_task(name: str) -> TaskSpec:
    if name not in TASKS:
        raise InputError(f"unknown task {name!r}; choose one of: {', '.join(TASKS)}")
    return TASKS[name]


def data_root(explicit: str | None = None) -> Path:
    """--data, else $SECPTUNE_DATA, else ../shared/data beside the checkout."""
    candidates = [explicit, os.environ.get("SECPTUNE_DATA")]
    beside = Path(__file__).resolve().parents[2] / "shared" / "data"
    candidates.append(str(beside))
    for c in candidates:
        if c and Path(c).is_dir():
            return Path(c)
    if explicit:
        raise InputError(f"data directory {explicit!r} does not exist")
    raise InputError(
        "no data directory found: pass --data DIR (with <task>/train.jsonl and test.jsonl) "
        "or set SECPTUNE_DATA"
    )


def task_file(task: str, split: str, data: str | None = None) -> Path:
    path = data_root(data) / task / f"{split}.jsonl"
    if not path.is_file():
        raise InputError(f"{path} does not exist; the {task} task has no {split} split in this data directory")
    return path
