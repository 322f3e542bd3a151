"""Turn examples + a template + a verbalizer into the data owner's model inputs.

Runs on the data owner's side with the model's *tokenizer* and public config only.
Layout of one sequence: [start token] [prompt slots x P] [template tokens...],
right-padded to the longest sequence of the batch.  For a masked LM the scored
position is the mask token; for a causal LM it is the last template token (the
label word is predicted as the next token, so ``{mask}`` must end the template).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch

from secptune.arch import Arch
from secptune.errors import InputError, TemplateError
from secptune.batch import Batch, OneHot

MASK = "{mask}"


@dataclass
class Example:
    text: str
    text_b: str | None = None
    label: int | None = None


@dataclass
class Encoded:
    """Token ids and positions of a list of examples (plaintext, owner side)."""

    ids: list[list[int]]  # template tokens incl. special tokens, without prompt slots
    pred: list[int]  # scored position within ids
    types: list[list[int]] | None
    lead: list[int]  # leading special tokens (CLS/BOS) that stay before the prompt


def load_jsonl(path: str | Path, limit: int | None = None) -> list[Example]:
    path = Path(path)
    if limit is not None and limit < 1:  # 0 would still read one example (the check follows each append)
        raise InputError(f"an example limit must be at least 1, not {limit} (--limit / --test-limit)")
    if not path.is_file():
        raise InputError(f"data file {str(path)!r} does not exist; pass a .jsonl file with 'text' and 'label' fields")
    examples = []
    with path.open() as f:
        for line_no, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
                examples.append(Example(str(row["text"]), row.get("text_b"), row.get("label")))
            except (json.JSONDecodeError, KeyError, TypeError) as exc:
                raise InputError(f"{path}:{line_no}: not a JSON object with a 'text' field ({exc})") from None
            if limit is not None and len(examples) >= limit:
                break
    if not examples:
        raise InputError(f"data file {str(path)!r} has no examples")
    return examples


class Template:
    """A template with ``{text}``, optional ``{text_b}`` and ``{mask}``."""

    def __init__(self, template: str, family: str):
        if "{text}" not in template:
            raise TemplateError(f"template {template!r} has no {{text}} placeholder; e.g. '{{text}} It was {MASK}.'")
        if template.count(MASK) != 1:
            raise TemplateError(f"template {template!r} needs exactly one {MASK} placeholder where the label word goes")
        before, after = template.split(MASK)
        if family == "causal" and after.strip():
            raise TemplateError(
                f"template {template!r}: for a causal LM {MASK} must end the template "
                "(the label word is predicted as the next token)"
            )
        self.template = template
        self.family = family
        self.space_before_label = before.endswith(" ") or before == ""
        self.before, self.after = before, after

    def render(self, ex: Example, mask_token: str | None) -> str:
        if "{text_b}" in self.template and ex.text_b is None:
            raise InputError("the template uses {text_b} but an example has no 'text_b' field")
        fill = lambda s: s.replace("{text}", ex.text).replace("{text_b}", ex.text_b or "")  # noqa: E731
        if self.family == "causal":
            return fill(self.before).rstrip()
        return fill(self.before) + mask_token + fill(self.after)


def verbalizer_ids(tokenizer, words: list[str], template: Template) -> list[int]:
    """One token id per label word, in the form it takes after the template's prefix."""
    if len(words) < 2:
        raise TemplateError("a verbalizer needs at least two label words, e.g. --verbalizer terrible,great")
    ids = []
    for word in words:
        form = (" " + word) if template.space_before_label else word
        tokens = tokenizer.encode(form, add_special_tokens=False)
        if len(tokens) != 1:
            pieces = tokenizer.convert_ids_to_tokens(tokens)
            raise TemplateError(
                f"verbalizer word {word!r} is {len(tokens)} tokens {pieces} for this model's tokenizer; "
                "choose label words that are single tokens"
            )
        ids.append(tokens[0])
    if len(set(ids)) != len(ids):
        raise TemplateError(f"verbalizer words {words} map to repeated tokens; choose distinct words")
    return ids


def encode(tokenizer, examples: list[Example], template: Template, prefix: tuple[int, ...] = ()) -> Encoded:
    """Token ids per example.  A causal model's fixed prefix (BOS) is dropped from the
    owner's sequence: the server supplies it (see secptune.server.prepare.prepare_server_model)."""
    mask_token = getattr(tokenizer, "mask_token", None)
    if template.family == "encoder" and not mask_token:
        raise TemplateError("this masked LM's tokenizer has no mask token")
    ids, pred, types, lead = [], [], [], []
    leaders = {tokenizer.bos_token_id, getattr(tokenizer, "cls_token_id", None)} - {None}
    for ex in examples:
        text = template.render(ex, mask_token)
        enc = tokenizer(text)
        row = list(enc["input_ids"])
        if template.family == "encoder":
            pos = row.index(tokenizer.mask_token_id)
        else:
            if tokenizer.eos_token_id is not None and len(row) > 1 and row[-1] == tokenizer.eos_token_id:
                row = row[:-1]  # a tokenizer that appends EOS would hide the next-token slot
            if prefix and row[: len(prefix)] == list(prefix):
                row = row[len(prefix) :]
            pos = len(row) - 1
        ids.append(row)
        pred.append(pos)
        lead.append(1 if row and row[0] in leaders else 0)
        types.append(list(enc.get("token_type_ids", [0] * len(row)))[: len(row)])
    return Encoded(ids=ids, pred=pred, types=types, lead=lead)


def check_lengths(enc: Encoded, arch: Arch, prompt_len: int, model_name: str) -> None:
    limit = arch.max_positions
    for i, row in enumerate(enc.ids):
        total = len(row) + prompt_len + len(arch.prefix_tokens)
        if total > limit:
            raise InputError(
                f"example {i} needs {total} tokens ({len(row)} text + {prompt_len} prompt) but "
                f"{model_name} allows {limit}; shorten the text, use --limit to skip it, or a smaller --prompt-len"
            )


def padded_length(longest: int, bucket: int, limit: int) -> int:
    """The public sequence length: the longest sequence, or (``bucket`` > 0) the next multiple of
    ``bucket`` up to the model's limit, so the server learns only the bucket, not the longest text."""
    if bucket < 0:
        raise InputError(f"--pad-bucket must be 0 (off) or a positive length, got {bucket}")
    if not bucket:
        return longest
    return max(longest, min(-(-longest // bucket) * bucket, limit))


def build_batch(
    enc: Encoded, rows: list[int], prompt: torch.Tensor, arch: Arch, pad_id: int, pad_bucket: int = 0
) -> Batch:
    """Plaintext owner inputs for the examples ``rows``; ``prompt`` is [P, H] or [len(rows), P, H].
    ``pad_bucket``: pad the length to a multiple of it (see :func:`padded_length`)."""
    P = prompt.shape[-2]
    seqs = [enc.ids[r] for r in rows]
    n = padded_length(max(len(s) for s in seqs) + P, pad_bucket, arch.max_positions - len(arch.prefix_tokens))
    B, V, H = len(rows), arch.vocab_size, arch.hidden
    token = torch.full((B, n), -1, dtype=torch.long)
    if len({enc.lead[r] for r in rows}) != 1:
        raise InputError("examples disagree on leading special tokens; the tokenizer is inconsistent")
    pred = torch.zeros(B, n, dtype=torch.float64)
    pad = torch.zeros(B, n, dtype=torch.float64)
    types = torch.zeros(B, n, max(arch.type_vocab, 1), dtype=torch.float64) if arch.type_vocab > 1 else None
    prompts = prompt.expand(B, P, H) if prompt.dim() == 2 else prompt
    for b, (r, seq) in enumerate(zip(rows, seqs)):
        start = enc.lead[r]
        layout = seq[:start] + [None] * P + seq[start:]
        for j, tok in enumerate(layout):
            if tok is not None:
                token[b, j] = tok
        for j in range(len(layout), n):
            token[b, j] = pad_id
            pad[b, j] = 1.0
        pred[b, enc.pred[r] + (P if enc.pred[r] >= start else 0)] = 1.0
        if types is not None:
            ty = enc.types[r]
            layout_types = ty[:start] + [0] * P + ty[start:] + [0] * (n - len(layout))
            types[b, torch.arange(n), torch.tensor(layout_types)] = 1.0
    key_penalty = pad if arch.family == "encoder" else None
    return Batch(
        token_onehot=OneHot(token, V),
        prompt=prompts.double().contiguous(),
        pred_onehot=pred,
        key_penalty=key_penalty,
        type_onehot=types,
        prompt_start=enc.lead[rows[0]],
    )


def verbalizer_onehot(ids: list[int], vocab_size: int) -> torch.Tensor:
    out = torch.zeros(len(ids), vocab_size, dtype=torch.float64)
    out[torch.arange(len(ids)), torch.tensor(ids)] = 1.0
    return out
