"""What the left-to-right exhaustive search (secptune.privacy.search) costs on a model's vocabulary:
the guarded input adapter (embeddings + the first ``--in-layers`` layers, pretrained) of MODEL,
public SST-2 texts pushed through it (32-bit: an undefended view), then

* the search as the suite runs it (frequency order, early exit at the bound): seconds and
  candidate rows per text, and its token recovery;
* the full walk (no early exit: what a noised or regularised view costs) on the first
  ``--full-positions`` positions of one text: candidate rows per second, and from that the
  seconds a text of the median length would take.

Writes ``OUT/search_timing_<model>.json`` and ``.md``.

    python -m research.search_timing --model smollm2 --texts 4 --out reports/privacy/guarded
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import torch

from secptune.checkpoints import load_hf_model, load_tokenizer, resolve_model
from secptune.guarded import Piece
from secptune.inputs import Template, encode
from secptune.arch import arch_from_config
from secptune.privacy.search import CausalSearch, frequency_order
from secptune.server.prepare import prepare_server_model
from secptune.split_job import public_pool

TEMPLATE = "{text} It was {mask}"


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="tiny-llama")
    p.add_argument("--in-layers", type=int, default=1)
    p.add_argument("--texts", type=int, default=4)
    p.add_argument("--chunk", type=int, default=4096)
    p.add_argument("--full-positions", type=int, default=3)
    p.add_argument("--out", default="reports/privacy/guarded")
    a = p.parse_args(argv)
    model = load_hf_model(resolve_model(a.model))
    arch = arch_from_config(model.config)
    tok = load_tokenizer(resolve_model(a.model))
    server = prepare_server_model(model)
    inp = Piece(server, list(range(a.in_layers)), torch.float32, False, embed=True)
    pool = public_pool("sst2", None, limit=300 + a.texts, seed=5)
    enc = encode(tok, pool, Template(TEMPLATE, arch.family), arch.prefix_tokens)
    order = frequency_order(torch.cat([torch.tensor(i) for i in enc.ids[: 300]]), server.arch.vocab_size)
    texts = [torch.tensor(i) for i in enc.ids[300:]]
    search = CausalSearch(inp.model, inp.layers, 32, order, chunk=a.chunk, progress=False)
    per_text = []
    for ids in texts:
        with torch.no_grad():
            rows = inp.run(inp.embed(ids[None]))[0]
        before, t0 = search.rows_run, time.perf_counter()
        got = search.invert(rows, torch.arange(len(ids)))
        per_text.append({"tokens": len(ids), "seconds": time.perf_counter() - t0, "rows": search.rows_run - before,
                         "recovered": float((got == ids).double().mean())})
    full = CausalSearch(inp.model, inp.layers, 32, order, chunk=a.chunk, progress=False)
    full.bound = lambda y: -1.0
    ids = texts[0][: a.full_positions]
    with torch.no_grad():
        rows = inp.run(inp.embed(ids[None]))[0]
    t0 = time.perf_counter()
    full.invert(rows, torch.arange(len(ids)))
    full_s = time.perf_counter() - t0
    rate = full.rows_run / full_s
    median = sorted(len(t) for t in texts)[len(texts) // 2]
    result = {"model": a.model, "vocab": server.arch.vocab_size, "hidden": server.arch.hidden, "in_layers": a.in_layers,
              "chunk": a.chunk, "per_text": per_text, "full_walk_rows_per_s": rate,
              "full_walk_seconds_per_text_estimate": median * server.arch.vocab_size / rate, "median_tokens": median,
              "machine": {"cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(),
                          "load_avg": list(os.getloadavg()), "cpu_reserved_by_another_job": os.path.exists("/tmp/cpu_reserved")}}
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / f"search_timing_{a.model}.json").write_text(json.dumps(result, indent=1))
    lines = [f"# Exhaustive search cost on {a.model} (V = {result['vocab']}, H = {result['hidden']}, "
             f"{a.in_layers} bottom layer(s), chunk {a.chunk})", "",
             "Undefended (32-bit) view of the pretrained input adapter, SST-2 public texts; early exit at the bound:", "",
             "| text | tokens | seconds | candidate rows | recovered |", "|---|---|---|---|---|"]
    lines += [f"| {i} | {t['tokens']} | {t['seconds']:.1f} | {t['rows']:,} | {t['recovered']:.3f} |" for i, t in enumerate(per_text)]
    lines += ["", f"Full walk (no early exit: a noised or regularised view): {rate:,.0f} candidate rows/s, so "
              f"~{result['full_walk_seconds_per_text_estimate']:.0f} s for a {median}-token text. Load average "
              f"{result['machine']['load_avg'][0]:.1f} on {os.cpu_count()} cores, {torch.get_num_threads()} torch "
              "thread(s)" + (" (another job held the CPU)" if result["machine"]["cpu_reserved_by_another_job"] else "") + ".", ""]
    (out / f"search_timing_{a.model}.md").write_text("\n".join(lines))
    print("\n".join(lines))
    return result


if __name__ == "__main__":
    main()
