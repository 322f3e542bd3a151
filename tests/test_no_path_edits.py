"""No module path edits in the product, its scripts or the research one-offs: code is found by
``import secptune.*`` / ``research.*`` from the checkout, never by ``sys.path`` surgery."""

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SCANNED = ("scripts", "research", "secptune", "mpc", "rfa")


def path_edits(source: str) -> list[int]:
    """Lines that touch the module search path: ``sys.path`` in any form, ``from sys import path``,
    ``site.addsitedir``."""
    lines = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name):
            if (node.value.id, node.attr) in (("sys", "path"), ("site", "addsitedir")):
                lines.append(node.lineno)
        elif isinstance(node, ast.ImportFrom) and node.module == "sys" and any(a.name == "path" for a in node.names):
            lines.append(node.lineno)
    return sorted(lines)


def test_the_scan_finds_each_form_of_path_edit():
    source = "\n".join([
        "import sys, site",
        "sys.path.insert(0, 'x')",
        "sys.path.append('x')",
        "sys.path = ['x'] + sys.path",
        "from sys import path",
        "site.addsitedir('x')",
        "print(sys.argv)",  # not a path edit
    ])
    assert path_edits(source) == [2, 3, 4, 4, 5, 6]


def test_no_path_edits_in_the_code():
    files = [f for d in SCANNED for f in sorted((ROOT / d).rglob("*.py"))]
    assert any(f.parent.name == "research" for f in files) and any(f.parent.name == "bench" for f in files)
    found = {str(f.relative_to(ROOT)): path_edits(f.read_text()) for f in files}
    assert {f: lines for f, lines in found.items() if lines} == {}


def test_scripts_holds_shell_entry_points_only():
    """Product benchmarks live in secptune/bench, research one-offs in research/ (research/README.md)."""
    stray = [f.name for f in (ROOT / "scripts").iterdir() if f.suffix != ".sh" and f.name != "__pycache__"]
    assert stray == []  # (a checkout that ran the old Python scripts keeps their bytecode cache)
