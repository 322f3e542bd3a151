"""The import graph of mpc, rfa and secptune: acyclic, every project import at module level."""

import ast
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("mpc", "rfa", "secptune")


def _modules(root: Path) -> dict[str, Path]:
    out = {}
    for package in PACKAGES:
        for path in (root / package).rglob("*.py"):
            parts = path.relative_to(root).with_suffix("").parts
            out[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return out


def _targets(node: ast.AST, modules: dict) -> list[str]:
    """Project modules an import statement loads (``from pkg import sub``: the submodule)."""
    if isinstance(node, ast.Import):
        names = [a.name for a in node.names]
    elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
        names = [f"{node.module}.{a.name}" if f"{node.module}.{a.name}" in modules else node.module for a in node.names]
    else:
        return []
    return [n for n in names if n.split(".")[0] in PACKAGES]


def import_graph(root: Path = ROOT, sources: dict[str, str] | None = None):
    """(module -> modules it imports, [(module, line, target) of imports inside functions or classes])."""
    modules = _modules(root)
    texts = sources if sources is not None else {m: p.read_text() for m, p in modules.items()}
    known = set(texts) | set(modules)
    graph, nested = {}, []
    for module, text in texts.items():
        graph[module] = set()

        def visit(node, inside: bool):
            for child in ast.iter_child_nodes(node):
                deeper = inside or isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef, ast.Lambda))
                for target in _targets(child, known):
                    graph[module].add(target)
                    if deeper:
                        nested.append((module, child.lineno, target))
                visit(child, deeper)

        visit(ast.parse(text), False)
    return graph, nested


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (or a self-import)."""
    index, low, stack, on, out = {}, {}, [], set(), []

    def strong(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in graph.get(v, ()):
            if w not in index:
                strong(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1 or v in graph.get(v, ()):
                out.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            strong(v)
    return out


def test_no_import_cycle():
    graph, _ = import_graph()
    assert cycles(graph) == []


def test_every_project_import_is_at_module_level():
    _, nested = import_graph()
    assert [f"{m}:{line} imports {t}" for m, line, t in nested] == []


def test_the_checks_can_fail():
    """Positive controls: a two-module circle and an import inside a function are caught."""
    graph, nested = import_graph(
        sources={
            "mpc.a": "from mpc import b\n",
            "mpc.b": "import mpc.a\n\ndef f():\n    from rfa import config\n",
        }
    )
    assert cycles(graph) == [["mpc.a", "mpc.b"]]
    assert nested == [("mpc.b", 4, "rfa.config")]


def test_batch_types_do_not_load_crypten():
    """The owner's input types are plain data: importing them loads neither CrypTen nor the protocol layer."""
    code = "import sys, secptune.batch; print(sorted(m for m in ('crypten', 'mpc') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
