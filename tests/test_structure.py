"""The shape of the code a newcomer meets: modules of one concern (none over 600 lines), no import
circles (function-level imports included), and a CLI that needs no source files to explain itself."""

from __future__ import annotations

import ast
import compileall
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src" / "cnnlab"
MAX_LINES = 600


def _modules() -> dict[str, Path]:
    out = {}
    for path in SRC.rglob("*.py"):
        parts = list(path.relative_to(SRC.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = path
    return out


def _imports(name: str, path: Path, known: set[str]) -> set[str]:
    """The cnnlab modules `name` imports anywhere in its body (top level or inside functions)."""
    package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    found: set[str] = set()
    tree = ast.parse(path.read_text(encoding="utf-8"))
    typing_only = {id(n) for block in ast.walk(tree) if isinstance(block, ast.If)
                   and ast.unparse(block.test) in ("TYPE_CHECKING", "typing.TYPE_CHECKING")
                   for stmt in block.body for n in ast.walk(stmt)}      # never imported at run time
    for node in ast.walk(tree):
        if id(node) in typing_only:
            continue
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name in known)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                mod = f"{base}.{node.module}" if node.module else base
            else:
                mod = node.module or ""
            for a in node.names:            # `from . import x` names a module when x is one
                if f"{mod}.{a.name}" in known:
                    found.add(f"{mod}.{a.name}")
                elif mod in known:
                    found.add(mod)
    found.discard(name)
    return found


def import_graph() -> dict[str, set[str]]:
    mods = _modules()
    return {name: _imports(name, path, set(mods)) for name, path in mods.items()}


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import circle of `graph` (a list of modules, the first repeated at the end), or None.
    A package's own submodules are not counted as a circle with the package (Python imports a
    package's __init__ before any of its submodules, by design)."""
    def edges(a: str) -> set[str]:
        return {b for b in graph[a] if not (a.startswith(b + ".") or b.startswith(a + "."))}
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(a: str) -> list[str] | None:
        state[a] = 1
        stack.append(a)
        for b in sorted(edges(a)):
            if state.get(b) == 1:
                return stack[stack.index(b):] + [b]
            if b not in state and (c := visit(b)):
                return c
        stack.pop()
        state[a] = 2
        return None
    for a in sorted(graph):
        if a not in state and (c := visit(a)):
            return c
    return None


def test_the_cycle_finder_finds_a_circle_through_a_function_level_import():
    """Control: the check must be able to fail."""
    graph = {"cnnlab.a": {"cnnlab.b"}, "cnnlab.b": {"cnnlab.c"}, "cnnlab.c": {"cnnlab.a"}, "cnnlab.d": set()}
    assert find_cycle(graph) == ["cnnlab.a", "cnnlab.b", "cnnlab.c", "cnnlab.a"]
    assert find_cycle({"cnnlab.a": {"cnnlab.b"}, "cnnlab.b": set()}) is None
    tree = ast.parse("def f():\n    from .model import Net\n")
    assert any(isinstance(n, ast.ImportFrom) for n in ast.walk(tree))      # function bodies are walked


def test_no_import_circles_including_function_level_imports():
    assert find_cycle(import_graph()) is None


def test_no_module_holds_more_than_600_lines():
    long = {name: n for name, path in _modules().items()
            if (n := len(path.read_text(encoding="utf-8").splitlines())) > MAX_LINES}
    assert long == {}, f"split these modules (lines): {long}"


def test_no_analysis_or_report_module_imports_the_training_loop():
    graph = import_graph()
    users = sorted(m for m, deps in graph.items()
                   if m.startswith(("cnnlab.analysis", "cnnlab.report")) and "cnnlab.train" in deps
                   and m != "cnnlab.report.build")          # the report trains its runs: that is its job
    assert users == []


@pytest.mark.parametrize("command", [["--help"], ["train", "--help"], ["report", "--help"]])
def test_the_cli_explains_itself_from_an_install_without_source_files(tmp_path, command):
    """A zipped or .pyc-only install has no source for inspect.getsource: --help must not need it."""
    pkg = tmp_path / "cnnlab"
    shutil.copytree(SRC, pkg, ignore=shutil.ignore_patterns("__pycache__", "csrc", "static", "templates"))
    assert compileall.compile_dir(pkg, quiet=1, legacy=True)
    for py in pkg.rglob("*.py"):
        py.unlink()
    done = subprocess.run([sys.executable, "-c", "import sys, cnnlab.cli as c; sys.exit(c.main(sys.argv[1:]))",
                           *command], cwd=tmp_path, capture_output=True, text=True, timeout=120,
                          env={"PYTHONPATH": str(tmp_path), "PATH": "/usr/bin:/bin"})
    assert done.returncode == 0, done.stderr[-2000:]
    assert "usage:" in done.stdout
