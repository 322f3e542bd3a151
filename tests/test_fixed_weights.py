"""Fixed weight masks (mpc.fixed_weights): X·W with one mask per weight per session.

* the op: fused and single products equal X @ W within fixed-point tolerance,
  open only X (8 bytes per element of X, one round), use a fresh E each time,
  and the owner never receives a weight in the clear;
* the model: the secure tiny-llama forward still matches the plaintext oracle,
  and its linears open exactly their inputs (activation-sized traffic).

Party jobs are module level so the spawned party processes can import them.
"""

import pytest
import torch

import mpc  # noqa: F401  (CrypTen import shim)

SHAPES = {"a.q.w": (16, 8), "a.k.w": (16, 8), "a.v.w": (16, 4), "b.w": (12, 6), "ln.w": (16,)}
X1, X2 = (2, 3, 16), (5, 12)


def _weights():
    gen = torch.Generator().manual_seed(7)
    return {n: torch.randn(s, generator=gen, dtype=torch.float64) for n, s in SHAPES.items()}


def _inputs():
    gen = torch.Generator().manual_seed(8)
    return [torch.randn(s, generator=gen, dtype=torch.float64) * 3 for s in (X1, X2)]


def _online(before, after):
    return {k: after["online"][k] - before["online"][k] for k in ("bytes", "rounds")}


def op_job(weights, inputs, canaries):
    """Both parties: share W (server) and X (owner), mask W once, multiply, reveal to the owner."""
    import crypten
    import crypten.communicator as comm

    from mpc import accounting, fixed_weights
    from mpc.reveal import reveal_to

    rank = comm.get().get_rank()
    accounting.set_canaries(canaries if rank == 0 else None)
    shared = {
        n: crypten.cryptensor(weights[n] if rank == 1 else torch.zeros(s, dtype=torch.float64), src=1)
        for n, s in SHAPES.items()
    }
    x1, x2 = (
        crypten.cryptensor(inputs[i] if rank == 0 else torch.zeros(s, dtype=torch.float64), src=0)
        for i, s in enumerate((X1, X2))
    )
    log = accounting.log
    start = log().as_dict()
    fixed = fixed_weights.prepare(shared, fuse=[("q", "k", "v")])
    setup = _online(start, log().as_dict())
    kinds = {n: type(w).__name__ for n, w in fixed.items()}

    opened = []
    real_open = fixed_weights.open_shares
    fixed_weights.open_shares = lambda shares: opened.extend(real_open(shares)) or opened[-len(shares) :]
    try:
        before = log().as_dict()
        q, k, v = (fixed[f"a.{s}.w"].apply(x1) for s in "qkv")
        fused = _online(before, log().as_dict())
        before = log().as_dict()
        y = fixed["b.w"].apply(x2)
        single = _online(before, log().as_dict())
        q_again = fixed["a.q.w"].apply(x1)  # a second product on the same input: fresh A
    finally:
        fixed_weights.open_shares = real_open
    before = log().as_dict()
    beaver = x2 @ shared["b.w"]  # CrypTen's own Beaver product, for comparison
    beaver_cost = _online(before, log().as_dict())
    out = [reveal_to(t, 0) for t in (q, k, v, y, q_again, beaver)]
    return {
        "out": out,
        "setup": setup,
        "fused": fused,
        "single": single,
        "beaver": beaver_cost,
        "kinds": kinds,
        "fresh_e": len(opened) == 3 and not torch.equal(opened[0], opened[2]),
        "audit": (log().received_elements, log().canary_hits),
    }


def test_fixed_mask_products_match_plaintext_and_open_only_inputs(mpc_cluster):
    from mpc import launcher

    weights, inputs = _weights(), _inputs()
    canaries = torch.cat([(w * 2**16).long().flatten() for w in weights.values()])
    results = mpc_cluster.run(
        launcher.PartyJob(op_job, (None, inputs, canaries)),
        launcher.PartyJob(op_job, (weights, None, None)),
        timeout_s=300,
    )
    got = results["owner"].value
    x1, x2 = inputs
    want = [x1 @ weights[f"a.{s}.w"] for s in "qkv"] + [x2 @ weights["b.w"], x1 @ weights["a.q.w"], x2 @ weights["b.w"]]
    for g, w in zip(got["out"], want):
        assert g.shape == w.shape
        # 16-bit fixed point: inputs ~3, weights ~1, K <= 16 terms
        assert (g - w).abs().max() < 2e-3
    assert got["kinds"]["ln.w"] == "MPCTensor"  # norm scales are not linear weights
    assert {got["kinds"][n] for n in ("a.q.w", "a.k.w", "a.v.w", "b.w")} == {"FixedWeight"}
    # once per session: all weights opened in one exchange
    weight_elements = sum(torch.Size(s).numel() for n, s in SHAPES.items() if n != "ln.w")
    assert got["setup"] == {"bytes": 8 * weight_elements, "rounds": 1}
    # per product only the input is opened: q, k and v share one opening of X1
    assert got["fused"] == {"bytes": 8 * torch.Size(X1).numel(), "rounds": 1}
    assert got["single"] == {"bytes": 8 * torch.Size(X2).numel(), "rounds": 1}
    assert got["beaver"]["bytes"] == 8 * (torch.Size(X2).numel() + torch.Size(SHAPES["b.w"]).numel())
    assert got["fresh_e"]  # E = X - A differs for two products on the same X
    received, hits = got["audit"]
    assert received > weight_elements and hits == 0  # F = W - B never equals an encoded weight
    # only the owner receives from the dealer; the server sends it a 32-byte hash per
    # request (the dealer serves only what both asked for) and never waits for it
    server_dealer = results["server"].traffic["dealer"]
    assert server_dealer["rounds"] == 0 and server_dealer["bytes"] > 0 and server_dealer["bytes"] % 32 == 0


def test_prepare_groups_only_fusable_linears():
    from mpc.fixed_weights import linear_groups

    w = {
        "l0.q.w": torch.zeros(4, 4), "l0.k.w": torch.zeros(4, 2), "l0.v.w": torch.zeros(4, 2),
        "l0.o.w": torch.zeros(4, 4), "l0.ln1.w": torch.zeros(4), "l1.q.w": torch.zeros(4, 4),
        "l1.k.w": torch.zeros(4, 2), "l0.gate.w": torch.zeros(4, 8), "l0.up.w": torch.zeros(8, 8),
    }
    groups = linear_groups(w, fuse=[("q", "k", "v"), ("gate", "up")])
    assert ["l0.q.w", "l0.k.w", "l0.v.w"] in groups
    assert ["l1.q.w"] in groups and ["l1.k.w"] in groups  # l1.v missing: no fusion
    assert ["l0.gate.w"] in groups and ["l0.up.w"] in groups  # input widths differ
    assert ["l0.o.w"] in groups
    assert all("l0.ln1.w" not in g for g in groups)
    assert sorted(n for g in groups for n in g) == sorted(n for n in w if n != "l0.ln1.w")


def forward_program(session, batches):
    """Owner program: one forward per batch, with this process's per-op traffic of it."""
    from mpc import accounting

    out, ops = [], []
    for batch in batches:
        text_id = session.load_texts(batch)
        before = accounting.log().as_dict()["ops"]
        out.append(session.scores(text_id, batch.prompt[:1]))
        after = accounting.log().as_dict()["ops"]
        attempts = session.forward_log[-1]["attempts"]
        linear = {k: (after["linear"]["online"][k] - before.get("linear", {"online": {k: 0}})["online"][k]) // attempts
                  for k in ("bytes", "rounds")}
        ops.append(linear)
    return torch.cat(out), ops


@pytest.mark.parametrize("model", ["tiny-llama"])
def test_secure_model_with_fixed_masks_opens_activations_only(model, mpc_cluster):
    from dataclasses import asdict

    from conftest import prepared_inputs
    from secptune import owner, secure
    from secptune.infer import plain_scores

    opts, prep = prepared_inputs(model, prompt_len=4, batch_size=2)
    plain, _ = plain_scores(prep, exact=False, cfg=opts.cfg)
    request = secure.OwnerRequest(labels=len(prep.label_ids), cfg=asdict(opts.cfg), expected_vocab=prep.arch.vocab_size)
    assert request.fixed_weights  # the default
    results = owner.run_local(str(prep.model_dir), forward_program, (prep.batches,), request, prep.verbalizer,
                               launch=mpc_cluster.run)
    scores, ops = results["owner"].value["result"]
    assert float((scores - plain).abs().max() / plain.abs().max()) <= 1e-2
    a = prep.arch
    for batch, linear in zip(prep.batches, ops):
        rows, n = batch.token_onehot.shape[:2]  # one prompt: R*B = B sequences
        # o and down inputs; the q|k|v and gate|up inputs are norm outputs, opened once by the
        # norm for all their products (mpc.opened), so no linear opens them again
        per_layer = a.heads * a.head_dim + a.intermediate
        assert linear == {"bytes": 8 * rows * n * per_layer * a.layers, "rounds": 2 * a.layers}
