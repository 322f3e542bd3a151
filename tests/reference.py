"""Reference scores from Hugging Face transformers, for comparison with secptune."""

import torch

from secptune.checkpoints import load_hf_model
from secptune.transformer import insert_prompt


def hf_scores(prep):
    """Reference: the HF model fed the same embeddings (prompt included) in float64."""
    model = load_hf_model(prep.model_dir).double()
    emb = model.get_input_embeddings().weight.detach()
    label_ids = torch.tensor(prep.label_ids)
    out = []
    for b in prep.batches:
        embeds = insert_prompt(b.token_onehot @ emb, b.prompt, b.prompt_start)
        prefix = list(prep.arch.prefix_tokens)  # causal: the server-side BOS comes first
        if prefix:
            embeds = torch.cat([emb[prefix].expand(len(embeds), -1, -1), embeds], dim=1)
        kwargs = {"inputs_embeds": embeds}
        if b.key_penalty is not None:
            kwargs["attention_mask"] = (1 - b.key_penalty).long()
        if b.type_onehot is not None:
            kwargs["token_type_ids"] = b.type_onehot.argmax(-1)
        with torch.no_grad():
            logits = model(**kwargs).logits
        pos = b.pred_onehot.argmax(-1) + len(prefix)
        out.append(logits[torch.arange(len(pos)), pos][:, label_ids])
    return torch.cat(out)
