"""The server bounds what one query reveals: at most ``max_labels`` label words, and a
verbalizer checked one-hot under MPC before it is used (secptune.verbalizer_check.checked_verbalizer).

Each launch spawns owner, server and dealer; the check's cases share one launch.
"""

import torch

from mpc import launcher
from secptune import __version__, errors, owner, secure, verbalizer_check
from secptune.scoring import score_batches
from secptune.server.party import server_party
from secptune.infer import plain_scores, secure_scores

from conftest import prepared_inputs

LABELS, VOCAB = 3, 40


def _one_hot(ids, vocab=VOCAB):
    v = torch.zeros(len(ids), vocab, dtype=torch.float64)
    v[torch.arange(len(ids)), torch.tensor(ids)] = 1.0
    return v


def _cases() -> dict[str, torch.Tensor]:
    """Verbalizers [LABELS, VOCAB] an owner might send; only "one-hot" is honest."""
    gen = torch.Generator().manual_seed(0)
    base = _one_hot([5, 17, 39])
    cases = {"one-hot": base}
    two = base.clone()
    two[1, 3] = 1.0  # a row with two 1s
    cases["two ones"] = two
    half = base.clone()
    half[0, 5], half[0, 6] = 0.5, 0.5  # sums to 1, not bits
    cases["half and half"] = half
    reals = base.clone()
    reals[2] = torch.randn(VOCAB, generator=gen, dtype=torch.float64)  # a random projection
    cases["random reals"] = reals
    ints = base.clone()
    ints[1, 17], ints[1, 18] = 2.0, -1.0  # whole numbers summing to 1
    cases["2 and -1"] = ints
    wrap = base.clone()
    # sums to 1; used at 16-bit fixed point the first entry is 2^63 + 2^16 in the ring:
    # B² − B has 47 factors of two, the hardest case for a check over Z_2^64
    wrap[2, 39], wrap[2, 0] = 2.0**47 + 1, -(2.0**47)
    cases["2^47 wrap"] = wrap
    zero = base.clone()
    zero[0] = 0.0
    cases["empty row"] = zero
    return cases


def owner_checks(cases):
    """Owner: a malicious handshake (says "ok" to a request over the cap), then every case."""
    import crypten.communicator as comm
    from dataclasses import asdict

    from mpc.reveal import reveal_to

    out = {}
    request = secure.OwnerRequest(labels=17)
    comm.get().broadcast_obj(asdict(request), secure.OWNER_RANK)
    comm.get().broadcast_obj(None, secure.SERVER_RANK)  # the server's public info
    comm.get().broadcast_obj("ok", secure.OWNER_RANK)  # a lying verdict: the server must refuse anyway
    for name, verbalizer in cases.items():
        try:
            used = verbalizer_check.checked_verbalizer(verbalizer, LABELS, VOCAB)
            out[name] = ("accepted", reveal_to(used, secure.OWNER_RANK))
        except errors.VerbalizerError as exc:
            out[name] = ("refused", str(exc))
    return out


def server_checks(names):
    from mpc.reveal import reveal_to

    out = {}
    info = {"version": __version__, "arch": {}, "max_labels": secure.MAX_LABEL_WORDS}
    try:
        secure._handshake(None, info)
        out["handshake"] = "accepted"
    except errors.HandshakeError as exc:
        out["handshake"] = str(exc)
    for name in names:
        try:
            used = verbalizer_check.checked_verbalizer(None, LABELS, VOCAB)
            reveal_to(used, secure.OWNER_RANK)
            out[name] = "accepted"
        except errors.VerbalizerError as exc:
            out[name] = str(exc)
    return out


def test_only_one_hot_verbalizers_pass_the_check(mpc_cluster):
    cases = _cases()
    results = mpc_cluster.run(
        owner=launcher.PartyJob(owner_checks, (cases,)),
        server=launcher.PartyJob(server_checks, (list(cases),)),
    )
    owner, server = results["owner"].value, results["server"].value
    # the server refuses a request over its cap although the owner's verdict said "ok"
    assert "17 label words" in server["handshake"] and "at most 16" in server["handshake"]
    outcome, used = owner["one-hot"]
    assert outcome == "accepted" and server["one-hot"] == "accepted"
    assert torch.equal(used, cases["one-hot"])  # the matrix used is exactly the owner's one-hot
    for name in cases:
        if name == "one-hot":
            continue
        outcome, message = owner[name]
        assert outcome == "refused", name
        assert "one-hot" in message and "row" in message, name
        assert "refusing to continue" in server[name], name  # the protected side stops too


def test_one_hot_session_matches_oracle_and_costs_one_check(mpc_cluster):
    opts, prep = prepared_inputs("tiny-llama", prompt_len=4, batch_size=2)
    plain, _ = plain_scores(prep, exact=False, cfg=opts.cfg)
    got, comm, results = secure_scores(prep, opts.cfg, launch=mpc_cluster.run)
    assert float((got - plain).abs().max() / plain.abs().max()) <= 1e-2
    labels, vocab = prep.verbalizer.shape
    for role in ("owner", "server"):
        check = results[role].value["checks"]["verbalizer_check"]
        print(role, "verbalizer check", check, "of", comm[role]["online"])
        # one opening of the matrix (8 bytes per entry) plus the 32-byte verdict (and, from
        # the server, its 32-byte seed): three online rounds, two dealer requests, once
        assert 8 * labels * vocab <= check["bytes"] <= 8 * labels * vocab + 400, role
        assert check["rounds"] <= 3, role
        assert check["bytes"] < comm[role]["online"]["bytes"] / 10, role
    # the scores and each forward's range bit (docs/protocol.md, "Range checks under MPC")
    assert all(shape in (got[:2].shape, (1,)) for _, shape in results["owner"].reveals)


def owner_session(request, verbalizer, batches):
    """Owner: a real session (secptune.owner.owner_party); a refusal is returned, not raised (when both
    sides fail the launcher names whichever report it reads first, maybe the dealer's)."""
    try:
        owner.owner_party(score_batches, (batches,), request, verbalizer)
        return "accepted"
    except (errors.HandshakeError, errors.VerbalizerError) as exc:
        return f"{type(exc).__name__}: {exc}"


def server_session(model_dir, max_labels):
    try:
        server_party(model_dir, None, max_labels)
        return "accepted"
    except (errors.HandshakeError, errors.VerbalizerError) as exc:
        return f"{type(exc).__name__}: {exc}"


def _refusals(launch, prep, verbalizer, labels, max_labels=secure.MAX_LABEL_WORDS):
    request = secure.OwnerRequest(labels=labels, expected_vocab=prep.arch.vocab_size)
    results = launch(
        owner=launcher.PartyJob(owner_session, (request, verbalizer, prep.batches[:1])),
        server=launcher.PartyJob(server_session, (str(prep.model_dir), max_labels)),
    )
    return results["owner"].value, results["server"].value


def test_sessions_refuse_a_non_one_hot_verbalizer_and_too_many_label_words(mpc_cluster):
    _, prep = prepared_inputs("tiny-llama", prompt_len=4, batch_size=2)
    bad = prep.verbalizer.clone()
    bad[0, 7] = 1.0  # a second label word folded into the first row
    owner, server = _refusals(mpc_cluster.run, prep, bad, labels=3)
    assert owner.startswith("VerbalizerError: the server refused the verbalizer") and "row 0" in owner
    assert server.startswith("VerbalizerError: refusing to continue") and "one-hot" in server
    # the CLI never builds more rows than label words: 17 one-hot rows, the default cap is 16
    many = torch.zeros(17, prep.arch.vocab_size, dtype=torch.float64)
    many[torch.arange(17), torch.arange(17)] = 1.0
    owner, server = _refusals(mpc_cluster.run, prep, many, labels=17)
    for side in (owner, server):
        assert side.startswith("HandshakeError") and "asks for 17 label words" in side and "at most 16" in side
    owner, server = _refusals(mpc_cluster.run, prep, prep.verbalizer, labels=3, max_labels=2)  # a server's own lower cap
    assert "at most 2" in owner and "at most 2" in server
