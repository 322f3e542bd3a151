"""mpc/crypten_seam.py is the one place that writes into CrypTen, and it still fits the pinned CrypTen.

An upgrade of CrypTen fails here first: a patch point that moved, or another
version, is named by these tests.  No party processes: everything runs in this
process, and the patches are taken out again after each test.
"""

import ast
import datetime
import sys
from pathlib import Path

import pytest
import torch

from mpc import accounting, crypten_seam, dealer, prg
from mpc.crypten_seam import PATCHES, TRANSPORT_PATCHES, CrypTenVersionError, Patch

ROOT = Path(__file__).resolve().parent.parent
ALL_POINTS = PATCHES + TRANSPORT_PATCHES


@pytest.fixture
def installed():
    """The seam installed in this (test) process, and CrypTen's originals back afterwards."""
    assert not crypten_seam.applied(), "CrypTen was already patched in the test process"
    try:
        crypten_seam.install()
        yield crypten_seam.applied()
    finally:
        crypten_seam.uninstall()


def current(patch: Patch):
    return getattr(crypten_seam.resolve(patch.owner), patch.attribute)


def test_the_installed_crypten_is_the_pinned_release_with_every_patch_point():
    assert crypten_seam.installed_version() == crypten_seam.CRYPTEN_VERSION
    assert crypten_seam.missing_points() == []
    assert len({p.name for p in ALL_POINTS}) == len(ALL_POINTS) == 35  # none declared twice, none dropped
    # positive control: a point CrypTen does not have is reported by name
    ghosts = [Patch("crypten", "no_such_hook", None, "test"), Patch("crypten.no_such_module", "x", None, "test")]
    assert crypten_seam.missing_points(ghosts) == ["crypten.no_such_hook", "crypten.no_such_module.x"]


def test_install_puts_every_replacement_in_place_and_is_idempotent(installed):
    assert set(installed) == {p.name for p in PATCHES} and crypten_seam.installed()
    for patch in PATCHES:
        original, replacement = installed[patch.name]
        assert current(patch) is replacement and replacement is not original, patch.name
    import crypten
    from crypten.communicator.distributed_communicator import DistributedCommunicator
    from crypten.mpc.primitives import arithmetic, beaver
    from crypten.mpc.provider import ttp_provider

    # each point holds the protocol module's function, not merely something new
    assert crypten._setup_prng is prg.setup_streams
    assert ttp_provider.generate_random_ring_element is prg.ring_element
    assert ttp_provider.TrustedThirdParty.square is dealer.TupleProvider.square
    assert ttp_provider.TTPClient._TTPClient__TTPClient.ttp_request is dealer.refuse_raw_request
    assert beaver.torch._mpc_ring_proxy and arithmetic.torch.matmul is beaver.torch.matmul
    for method in accounting.COMMUNICATOR_ACCOUNTS:  # each wraps CrypTen's own method
        original = installed[f"crypten.communicator.distributed_communicator:DistributedCommunicator.{method}"][0]
        assert getattr(DistributedCommunicator, method).__secptune_original__ is original

    crypten_seam.install()  # a second install changes nothing
    assert crypten_seam.applied() == installed
    assert all(current(p) is installed[p.name][1] for p in PATCHES)


def test_uninstall_puts_crypten_back(installed):
    originals = {name: pair[0] for name, pair in installed.items()}
    crypten_seam.uninstall()
    assert not crypten_seam.installed() and crypten_seam.applied() == {}
    assert all(current(p) is originals[p.name] for p in PATCHES)
    from crypten.mpc.primitives import beaver

    assert beaver.torch is torch


def test_the_transport_replaces_dist_in_both_crypten_modules():
    first, second = object(), object()
    originals = [current(p) for p in TRANSPORT_PATCHES]
    assert all(o is torch.distributed for o in originals)
    try:
        crypten_seam.use_transport(first)
        assert all(current(p) is first for p in TRANSPORT_PATCHES)
        crypten_seam.use_transport(second)  # a later transport replaces the earlier one
        assert all(current(p) is second for p in TRANSPORT_PATCHES)
    finally:
        crypten_seam.uninstall()
    assert all(current(p) is torch.distributed for p in TRANSPORT_PATCHES)


def test_another_crypten_version_is_refused_before_anything_is_patched(monkeypatch):
    monkeypatch.setattr(crypten_seam, "installed_version", lambda: "0.5.0")
    with pytest.raises(CrypTenVersionError, match=r"needs CrypTen 0\.4\.1 but this environment has CrypTen 0\.5\.0") as e:
        crypten_seam.install()
    assert "pip install --no-deps crypten==0.4.1" in str(e.value)
    with pytest.raises(CrypTenVersionError, match="0.5.0"):
        crypten_seam.use_transport(object())
    assert crypten_seam.applied() == {}


def test_import_mpc_registers_the_onnx_stub():
    import crypten.nn.onnx_converter as converter

    assert converter is sys.modules[crypten_seam.IMPORT_STUB] and not converter.TF_AND_TF2ONNX
    with pytest.raises(NotImplementedError, match="ONNX converter is disabled"):
        converter.from_onnx(None)


def test_settings_are_read_from_views_that_follow_every_change(installed):
    """The cached reads (mpc.config_cache) give what omegaconf gives, after each way CrypTen
    changes a setting: assignment through a section, temp_override, set_config, a new key
    (on a config object of its own: crypten.cfg itself is left alone)."""
    from crypten.config.config import CrypTenConfig
    from omegaconf import OmegaConf

    settings = CrypTenConfig()
    original = settings.config

    def agrees():
        plain = OmegaConf.to_container(settings.config, resolve=True)
        for section, values in plain.items():
            for key, value in values.items():
                if not isinstance(value, dict):
                    assert getattr(getattr(settings, section), key) == value == settings[f"{section}.{key}"]

    agrees()
    settings.encoder.precision_bits = 12  # through the view: omegaconf's node changes too
    assert settings.config.encoder.precision_bits == 12 and settings.encoder.precision_bits == 12
    with settings.temp_override({"functions.max_method": "pairwise"}):
        assert settings.functions.max_method == "pairwise"
        agrees()
    assert settings.functions.max_method == original.functions.max_method
    settings.set_config(OmegaConf.merge(original, OmegaConf.from_dotlist(["mpc.provider=TFP"])))
    assert settings.mpc.provider == "TFP"
    agrees()
    settings.new_section = 3  # CrypTen's __setattr__ merges a new key into a new config object
    assert settings.new_section == 3
    assert callable(settings.load_config)  # the class's own attributes come first, as before
    # control: a read after omegaconf's object is mutated behind CrypTen's back is stale — the
    # cache relies on CrypTen replacing the object on each change, which the checks above exercise
    settings.config.mpc.provider = "TTP"
    assert settings.mpc.provider == "TFP"


def test_settings_and_peer_timeout(monkeypatch):
    import crypten

    with crypten.cfg.temp_override({"mpc.provider": "TFP"}):  # CrypTen restores its config after
        crypten_seam.configure(provider="TTP", precision_bits=12)
        assert crypten.cfg.mpc.provider == "TTP" and crypten.cfg.encoder.precision_bits == 12
    seen = []
    monkeypatch.setattr(torch.distributed, "init_process_group", lambda *a, **k: seen.append(k))
    fake = torch.distributed.init_process_group
    with crypten_seam.peer_timeout(7.5):
        torch.distributed.init_process_group(backend="gloo")
        torch.distributed.init_process_group(backend="gloo", timeout=datetime.timedelta(seconds=1))
    assert torch.distributed.init_process_group is fake
    assert seen == [
        {"backend": "gloo", "timeout": datetime.timedelta(seconds=7.5)},
        {"backend": "gloo", "timeout": datetime.timedelta(seconds=1)},  # an explicit timeout wins
    ]


# ---- nothing else writes into CrypTen ------------------------------------------------

def _is_crypten(module: str | None) -> bool:
    return module is not None and (module == "crypten" or module.startswith("crypten."))


def _root(expr) -> str | None:
    while isinstance(expr, (ast.Attribute, ast.Subscript)):
        expr = expr.value
    return expr.id if isinstance(expr, ast.Name) else None


def _crypten_names(tree) -> tuple[set[str], set[str]]:
    """Names bound to CrypTen objects (imports, and names assigned or looped over them),
    and names of string constants that name a CrypTen module."""
    names, strings = {"crypten"}, set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(a.asname or a.name.split(".")[0] for a in node.names if _is_crypten(a.name))
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and _is_crypten(node.module):
            names.update(a.asname or a.name for a in node.names)
        elif isinstance(node, ast.Assign) and isinstance(node.value, ast.Constant) and isinstance(node.value.value, str):
            if _is_crypten(node.value.value):
                strings.update(t.id for t in node.targets if isinstance(t, ast.Name))
    grown = True
    while grown:  # x = crypten_module.Class; for m in (module_a, module_b): ...
        before = len(names)
        for node in ast.walk(tree):
            if isinstance(node, ast.Assign) and _root(node.value) in names:
                names.update(t.id for t in node.targets if isinstance(t, ast.Name))
            elif isinstance(node, ast.For) and isinstance(node.target, ast.Name):
                items = node.iter.elts if isinstance(node.iter, (ast.Tuple, ast.List)) else []
                if any(_root(e) in names for e in items):
                    names.add(node.target.id)
        grown = len(names) > before
    return names, strings


def crypten_writes(source: str) -> list[int]:
    """Lines of ``source`` that write into CrypTen: ``setattr``/``delattr`` on, assignment to
    or deletion of an attribute or item of a name bound to a CrypTen module or class
    (see :func:`_crypten_names`), and ``sys.modules["crypten..."] = ...``.  A write through
    a function's parameter or a call's result is not seen: keep such code in the seam."""
    tree = ast.parse(source)
    names, strings = _crypten_names(tree)
    root = _root

    def crypten_string(expr) -> bool:
        if isinstance(expr, ast.Name):
            return expr.id in strings
        return isinstance(expr, ast.Constant) and isinstance(expr.value, str) and _is_crypten(expr.value)

    def writes(target) -> bool:
        if isinstance(target, (ast.Tuple, ast.List)):
            return any(writes(t) for t in target.elts)
        if isinstance(target, ast.Starred):
            return writes(target.value)
        if not isinstance(target, (ast.Attribute, ast.Subscript)):
            return False  # rebinding a name is not a write into the object it named
        if root(target) in names:
            return True
        return isinstance(target, ast.Subscript) and ast.unparse(target.value) == "sys.modules" and crypten_string(target.slice)

    hits = []
    for node in ast.walk(tree):
        if isinstance(node, (ast.Assign, ast.Delete)):
            targets = node.targets
        elif isinstance(node, (ast.AugAssign, ast.AnnAssign)):
            targets = [node.target]
        elif isinstance(node, ast.Call) and node.args:
            func = node.func
            called = func.id if isinstance(func, ast.Name) else func.attr if isinstance(func, ast.Attribute) else None
            first = node.args[0]
            if called in ("setattr", "delattr") and (root(first) in names or crypten_string(first)):
                hits.append(node.lineno)
            continue
        else:
            continue
        if any(writes(t) for t in targets):
            hits.append(node.lineno)
    return sorted(hits)


def test_scanner_finds_each_kind_of_write_into_crypten():
    sample = """
import sys
import crypten
import crypten.communicator.distributed_communicator as cdc
from crypten.mpc.provider import ttp_provider
from crypten.mpc.primitives import beaver as B

crypten._setup_prng = None
cdc.dist = None
setattr(ttp_provider.TrustedThirdParty, "square", None)
B.torch, other = None, None
sys.modules["crypten.nn.onnx_converter"] = None
monkeypatch.setattr("crypten.cfg.mpc.provider", "TFP")
crypten.cfg.mpc.provider = "TFP"
del ttp_provider.TTPClient
crypten.generators["local"] = None
for module in (cdc, ttp_provider):
    module.generate_random_ring_element = None
TTP = ttp_provider.TrustedThirdParty
TTP.square = None
STUB = "crypten.nn.onnx_converter"
sys.modules[STUB] = None
"""
    assert crypten_writes(sample) == list(range(8, 17)) + [18, 20, 22]
    reads = """
import crypten
from crypten.mpc.provider import ttp_provider
x = crypten.cfg.mpc.provider
ttp_provider = None
self.dist = ttp_provider.dist
share = crypten.cryptensor(1)
share.encoder = None
setattr(self, "generator", None)
"""
    assert crypten_writes(reads) == []  # reads, rebinding and writes into CrypTen's objects' state


def test_no_file_but_the_seam_writes_into_crypten():
    seam = ROOT / "mpc" / "crypten_seam.py"
    files = [p for p in ROOT.rglob("*.py") if not any(part.startswith(".") for part in p.relative_to(ROOT).parts)]
    assert seam in files and len(files) > 50
    found = [
        f"{path.relative_to(ROOT)}:{line}"
        for path in sorted(files)
        if path != seam
        for line in crypten_writes(path.read_text())
    ]
    assert found == [], "write into CrypTen outside mpc/crypten_seam.py (declare it in its patch table): " + ", ".join(found)
    assert crypten_writes(seam.read_text()) != []  # the scanner sees the seam's own writes
