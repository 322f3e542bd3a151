"""The unmodified Hugging Face model behind the tuner's session interface.

``--mode plain --exact`` tunes against this: the plaintext baseline the paper
compares with (original non-linearities, float32, transformers' own kernels).
It is ~3x faster on a CPU than the float64 oracle of the secure run
(:class:`secptune.plain.PlainSession`), which is what makes tuning budgets of
hundreds of API calls per task possible on a small machine.  It is not private:
the caller holds the weights.
"""

from __future__ import annotations

import inspect
import time

import torch

from transformers import DynamicCache

from secptune.arch import arch_from_config
from secptune.checkpoints import load_hf_model, model_family
from secptune.devices import batch_to
from secptune.transformer import prompt_first
from secptune.batch import GROUP_ROWS, Batch, length_groups

# tokens per forward chunk (bounds float32 activation memory)
MAX_TOKENS = {"cpu": 8192, "cuda": 1 << 17}


class HFSession:
    def __init__(self, model_dir, verbalizer: torch.Tensor, model=None, device: torch.device | str = "cpu"):
        self.device = torch.device(device)
        self.model = (model if model is not None else load_hf_model(model_dir)).to(self.device)
        self.embed = self.model.get_input_embeddings()
        self.embedding_std = float(self.embed.weight.detach().double().std())
        self.label_ids = verbalizer.argmax(-1).to(self.device)  # [L] token ids of the label words
        self.causal = model_family(self.model.config) == "causal"
        # causal models: the server-side BOS comes first, as in the secure run (secptune.arch)
        self.arch = arch_from_config(self.model.config)
        self.prefix = torch.tensor(self.arch.prefix_tokens if self.causal else (), dtype=torch.long, device=self.device)
        # transformers 5.2x renamed the cache argument (the old name warns, then goes)
        self.cache_arg = "cache" if "cache" in inspect.signature(self.model.base_model.forward).parameters else "past_key_values"
        self.texts: list[tuple[list[dict], Batch, int]] = []  # (length groups, layout, rows)
        self.forward_log: list[dict] = []

    @torch.no_grad()
    def load_texts(self, batch: Batch) -> int:
        batch = batch_to(batch, self.device)
        ids = batch.token_onehot.ids
        present = (ids >= 0).unsqueeze(-1).float()
        embeds = self.embed(ids.clamp(min=0)) * present  # prompt slots and padding: zero rows
        if len(self.prefix):
            embeds = torch.cat([self.embed(self.prefix).expand(len(embeds), -1, -1), embeds], dim=1)
        pred = batch.pred_onehot.argmax(-1) + len(self.prefix)
        mask = None if batch.key_penalty is None else (1 - batch.key_penalty).long()
        types = None if batch.type_onehot is None else batch.type_onehot.argmax(-1)
        groups = []
        rows_per_group = GROUP_ROWS[self.device.type] if self.causal else len(embeds)
        for rows in length_groups(pred, rows_per_group):
            n = int(pred[rows].max()) + 1 if self.causal else embeds.size(1)
            groups.append({
                "rows": rows.cpu(),  # where the group's scores go in the (CPU) output
                "embeds": embeds[rows, :n],
                "pred": pred[rows],
                "mask": None if mask is None else mask[rows, :n],
                "types": None if types is None else types[rows, :n],
            })
        self.texts.append((groups, batch, len(embeds)))
        return len(self.texts) - 1

    @torch.no_grad()
    def scores(self, text_id: int, prompts: torch.Tensor) -> torch.Tensor:
        """Label-word logits [R*B, L] of every prompt [R, P, H] on the loaded texts (row r*B + b).
        A causal model whose prompt comes right after the prefix runs each prompt once and its
        texts continue from the prompt's cached keys/values (as the plain session does,
        secptune.transformer.prompt_first); otherwise every sequence runs whole."""
        started = time.perf_counter()
        groups, batch, B = self.texts[text_id]
        R, P, start = prompts.size(0), prompts.size(1), batch.prompt_start + len(self.prefix)
        # the model's own precision: float32 in the product, float64 for a reference (research/check_smollm2.py)
        prompts = prompts.to(self.device, self.embed.weight.dtype)
        head = start + P if prompt_first(self.arch, batch.prompt_start, P, B) else 0
        states = self._prompt_states(prompts) if head else None
        out = torch.zeros(R, B, len(self.label_ids), dtype=torch.float64)
        for g in groups:
            rows, (b, n, _) = g["rows"], g["embeds"].shape
            step = max(1, MAX_TOKENS[self.device.type] // (b * (n - head)))
            for first in range(0, R, step):
                chunk = prompts[first : first + step]
                r = chunk.size(0)
                embeds = g["embeds"][:, head:].repeat(r, 1, 1)
                kwargs = {"inputs_embeds": embeds}
                if head:  # the texts continue from their candidate's prompt
                    kwargs[self.cache_arg] = DynamicCache(
                        [(k[first : first + r].repeat_interleave(b, 0), v[first : first + r].repeat_interleave(b, 0))
                         for k, v in states])
                    kwargs["position_ids"] = torch.arange(head, n, device=self.device).expand(r * b, -1)
                elif P:
                    embeds[:, start : start + P] += chunk.repeat_interleave(b, dim=0)
                if g["mask"] is not None:
                    kwargs["attention_mask"] = g["mask"].repeat(r, 1)
                if g["types"] is not None:
                    kwargs["token_type_ids"] = g["types"].repeat(r, 1)
                logits = self._label_logits(kwargs, (torch.arange(r * b, device=self.device), g["pred"].repeat(r) - head))
                out[first : first + r, rows] = logits.view(r, b, -1).double().cpu()
        self.forward_log.append(
            {"texts": text_id, "sequences": R * B, "wall_s": time.perf_counter() - started, "bytes": 0, "rounds": 0}
        )
        return out.view(R * B, -1)

    def _prompt_states(self, prompts: torch.Tensor) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """Per layer, the keys/values [R, kv_heads, prefix + P, d] of the prefix and each prompt."""
        R = prompts.size(0)
        embeds = torch.cat([self.embed(self.prefix).expand(R, -1, -1), prompts], dim=1)
        step = max(1, MAX_TOKENS[self.device.type] // embeds.size(1))
        outs = [self.model.base_model(inputs_embeds=embeds[i : i + step], use_cache=True) for i in range(0, R, step)]
        parts = [getattr(o, "cache", None) or o.past_key_values for o in outs]  # the field's name before 5.2x
        return [(torch.cat([c.layers[i].keys for c in parts]), torch.cat([c.layers[i].values for c in parts]))
                for i in range(len(parts[0].layers))]

    def _label_logits(self, kwargs: dict, rows) -> torch.Tensor:
        """Logits of the label words at the scored positions.  Causal LMs: the label rows
        of the output matrix only (the vocabulary-wide head is most of SmolLM2's cost at
        short sequences); masked LMs: transformers' own head, then the label columns."""
        if not self.causal:
            return self.model(**kwargs).logits[rows][:, self.label_ids]
        pooled = self.model.base_model(**kwargs).last_hidden_state[rows]
        out = self.model.get_output_embeddings()
        bias = 0 if out.bias is None else out.bias[self.label_ids]
        return pooled @ out.weight[self.label_ids].T + bias

    def traffic(self) -> tuple[int, int]:
        return 0, 0

    def close(self) -> None:
        pass
