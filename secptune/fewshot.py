"""k-shot splits (BBT protocol): k examples per class for train and k more for dev,
drawn from the train pool with a seed; the test set is the task's test split."""

from __future__ import annotations

import random
from collections import defaultdict

from secptune.errors import InputError
from secptune.inputs import Example


def sample_k_shot(pool: list[Example], k: int, seed: int) -> tuple[list[Example], list[Example]]:
    """Disjoint train and dev sets with k examples of every label each."""
    by_label: dict[int, list[int]] = defaultdict(list)
    for i, ex in enumerate(pool):
        if ex.label is None:
            raise InputError("every training example needs a 'label' field")
        by_label[int(ex.label)].append(i)
    rng = random.Random(seed)
    train, dev = [], []
    for label in sorted(by_label):
        idx = by_label[label]
        if len(idx) < 2 * k:
            raise InputError(f"label {label} has {len(idx)} training examples; need {2 * k} for k={k} (train + dev)")
        chosen = rng.sample(idx, 2 * k)
        train += [pool[i] for i in chosen[:k]]
        dev += [pool[i] for i in chosen[k:]]
    rng.shuffle(train)
    return train, dev


def held_out(pool: list[Example], used: list[Example], limit: int | None, seed: int) -> list[Example]:
    """Examples of the pool not in ``used`` (for tasks without a test split, e.g. Yelp)."""
    used_ids = {id(e) for e in used}
    rest = [e for e in pool if id(e) not in used_ids]
    random.Random(seed + 1).shuffle(rest)
    return rest[:limit] if limit else rest
