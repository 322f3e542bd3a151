"""The server's public text: what it runs its own model on to fit RFA and choose its layers.

Never the owner's data.  Two sources: secptune's built-in neutral English corpus
(tiny_corpus, ~800 words) and, for causal models, text the model samples itself
from generic openers ("The", "Yesterday", "Scientists", ...; seeded).  The corpus
alone is too little: RFA maps fitted to it generalised badly (SmolLM2: relative
attention error 0.5-0.75 on held-out sentences; with the generated text added,
mostly 0.4-0.55 and half the KL; docs/history.md).  Sampled text is in the model's
own distribution and costs the server one generation pass, cached per weights.

The text is split: ``fit`` (feature-map fit, activation bounds) and ``check``
(held out: the server's choice of RFA layers is measured on text the fit never saw).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import torch
from tqdm import tqdm

from secptune.checkpoints import cache_dir, load_tokenizer
from secptune.errors import CheckpointError
from secptune.tiny_corpus import TEXT

log = logging.getLogger(__name__)
BATCH = 16  # public sequences of one length run together
TEXT_VERSION = 1
OPENERS = (
    "The", "In", "Yesterday", "A", "When", "It", "My", "This",
    "Scientists", "The company", "After", "Many people", "Today", "She", "He", "We",
)  # fmt: skip
SAMPLES = 128  # generated sequences: 96 to fit, 32 to check
CHECK = 32
LENGTH = 80  # tokens per generated sequence (all equal: the fit runs them as batches)


@dataclass(frozen=True)
class PublicText:
    fit: list[list[int]]
    check: list[list[int]]


def public_text(model, arch, fingerprint: str) -> PublicText:
    """Corpus sequences plus, for causal models, the model's own samples (cached by ``fingerprint``)."""
    corpus = public_sequences(model, arch.vocab_size, count=17)
    if arch.family != "causal":  # an encoder cannot sample text: corpus lines only
        return PublicText(fit=corpus[:8], check=corpus[8:])
    samples = _cached_samples(model, arch, fingerprint)
    return PublicText(fit=corpus[:8] + samples[: SAMPLES - CHECK], check=samples[SAMPLES - CHECK :])


def _cached_samples(model, arch, fingerprint: str) -> list[list[int]]:
    path = cache_dir() / "public-text" / f"{fingerprint[:24]}-v{TEXT_VERSION}.pt"
    if path.is_file():
        return torch.load(path, weights_only=True)
    samples = sample_text(model, arch)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    torch.save(samples, tmp)
    tmp.replace(path)
    return samples


def sample_text(model, arch) -> list[list[int]]:
    """``SAMPLES`` sequences of equal length sampled from the model (top-p 0.95, seed 0),
    each after the model's prefix (BOS) and a generic opener; the prefix is not included."""
    openers = public_tokens(model, list(OPENERS), arch.vocab_size, 1)
    width = max(map(len, openers))
    length = min(LENGTH, arch.max_positions - len(arch.prefix_tokens) - 8)
    prefix = list(arch.prefix_tokens)
    # left-pad the openers to one width so each round is one batch
    ids = torch.tensor([[0] * (width - len(o)) + prefix + o for o in openers])
    mask = torch.tensor([[0] * (width - len(o)) + [1] * (len(prefix) + len(o)) for o in openers])
    new = length - min(map(len, openers)) + 1
    rounds = SAMPLES // len(openers)
    with torch.random.fork_rng(devices=[]), torch.no_grad():  # seeded without touching the caller's RNG
        torch.manual_seed(0)
        out = [s for _ in tqdm(range(rounds), desc="sampling public text", unit="round", disable=arch.layers < 4)
               for s in _sample_round(model, ids, mask, new, len(prefix), length)]  # fmt: skip
    log.info("sampled %d public sequences of %d tokens", len(out), length)
    return out


def _sample_round(model, ids, mask, new: int, prefix: int, length: int) -> list[list[int]]:
    rows = model.generate(
        input_ids=ids, attention_mask=mask, do_sample=True, top_p=0.95, temperature=1.0,
        max_new_tokens=new, min_new_tokens=new, pad_token_id=0,
    )  # fmt: skip
    starts = [m.index(1) + prefix for m in mask.tolist()]  # after the left padding and the prefix
    return [row[start : start + length] for row, start in zip(rows.tolist(), starts)]


def public_sequences(model, vocab_size: int, count: int = 8, lines_each: int = 4) -> list[list[int]]:
    """``count`` sequences of a few corpus lines each, in the model's own tokens."""
    lines = [line.strip() for line in TEXT.splitlines() if line.strip()]
    chunks = [" ".join(lines[i : i + lines_each]) for i in range(0, count * lines_each, lines_each)]
    return public_tokens(model, [c for c in chunks if c], vocab_size, 48)


def public_tokens(model, texts: list[str], vocab_size: int, random_length: int) -> list[list[int]]:
    """``texts`` in the model's own tokens; a model saved without a tokenizer (a random
    test model) gets seeded random ids instead, ``random_length`` per text."""
    try:
        tokenizer = load_tokenizer(model.config._name_or_path)
    except CheckpointError as exc:
        log.info("public text as seeded random token ids: %s", exc)
        g = torch.Generator().manual_seed(0)
        return [torch.randint(0, vocab_size, (random_length,), generator=g).tolist() for _ in texts]
    return [tokenizer(t, add_special_tokens=False)["input_ids"] for t in texts]


def batches(sequences, arch, size: int = BATCH) -> list[torch.Tensor]:
    """Token-id batches [b, n]: runs of equal-length sequences (no padding needed)."""
    out: list[torch.Tensor] = []
    for ids in sequences:
        ids = torch.tensor([min(t, arch.vocab_size - 1) for t in ids[: arch.max_positions - 8]])
        if out and out[-1].size(1) == ids.numel() and out[-1].size(0) < size:
            out[-1] = torch.cat([out[-1], ids.unsqueeze(0)])
        else:
            out.append(ids.unsqueeze(0))
    return out
