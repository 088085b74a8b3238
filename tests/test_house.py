"""The shape of the house: the core's import graph has no circle, and the core never imports a backend.

The graph is read from the source (every ``import`` / ``from ... import``,
at module level, inside a function or under ``if TYPE_CHECKING:``), not from
what happens to be imported at run time, so neither a lazy import nor a
type-only one can hide a circle: a module that needs another's type to be
read depends on it as much as one that calls it.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import tornado_signin

CORE = Path(tornado_signin.__file__).parent


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(CORE.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _imports(path: Path) -> set[str]:
    """Return the absolute names of the modules ``path`` imports (``from X import y`` counts X and X.y)."""
    name = _module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - (node.level - 1)]
                module = ".".join(base + ([node.module] if node.module else []))
            else:
                module = node.module or ""
            found.add(module)
            found.update(f"{module}.{alias.name}" for alias in node.names)
    return found


def _graph() -> dict[str, set[str]]:
    paths = sorted(CORE.rglob("*.py"))
    modules = {_module_name(p): p for p in paths}
    graph = {}
    for name, path in modules.items():
        graph[name] = {m for m in _imports(path) if m in modules and m != name}
    return graph


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """Return one circle of ``graph`` as a path of module names, or None."""
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph[node]):
            # A package's __init__ imported by its own submodule is not a circle of concerns.
            if node.startswith(nxt + "."):
                continue
            if state.get(nxt) == 1:
                return stack[stack.index(nxt):] + [nxt]
            if nxt not in state:
                found = visit(nxt)
                if found:
                    return found
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state:
            found = visit(node)
            if found:
                return found
    return None


def test_the_graph_is_read():
    graph = _graph()
    assert "tornado_signin.wiring" in graph["tornado_signin.app"]
    assert "tornado_signin.offline" in graph["tornado_signin.wiring"]


def test_the_import_graph_of_the_core_has_no_circle():
    assert _cycle(_graph()) is None


def test_type_checking_and_lazy_imports_count(tmp_path):
    module = tmp_path / "m.py"
    module.write_text("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from x import A\n"
                      "def f():\n    from y import B\n")
    names = {node.module for node in ast.walk(ast.parse(module.read_text())) if isinstance(node, ast.ImportFrom)}
    assert names == {"typing", "x", "y"}


def test_the_cycle_finder_finds_one():
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]


def test_the_core_never_imports_a_backend_or_the_emulator_internals():
    """The emulator's public face is its package (``tornado_signin.emulator``); its modules are its own."""
    emulator_modules = {m for m in _graph() if m.startswith("tornado_signin.emulator.")}
    offenders = []
    for path in sorted(CORE.rglob("*.py")):
        name = _module_name(path)
        if name.startswith("tornado_signin.emulator"):
            continue
        for module in _imports(path):
            if module.startswith("tornado_signin_backends"):
                offenders.append(f"{name} imports {module}")
            if module in emulator_modules:
                offenders.append(f"{name} imports {module}")
    assert offenders == []


def _test_map_rows() -> list[set[str]]:
    """Return the code spans of each table row of tests/README.md."""
    text = (Path(__file__).parent / "README.md").read_text(encoding="utf-8")
    return [set(re.findall(r"`([^`]+)`", line)) for line in text.splitlines() if line.startswith("|")]


def _mapped(module: str, rows: list[set[str]]) -> bool:
    """A module is mapped by its whole path, or by its folder (``dir/``) and its file name in one row."""
    folder, _, name = module.rpartition("/")
    return any(module in spans or (folder + "/" in spans and name in spans) for spans in rows)


def test_the_test_map_names_every_module_and_every_test_file():
    """tests/README.md maps each module of the core and the backends to its tests, names every test file,
    and names no test file that is gone."""
    root = CORE.parent
    rows = _test_map_rows()
    modules = [p.relative_to(root).as_posix() for folder in (CORE, root / "backends" / "tornado_signin_backends")
               for p in sorted(folder.rglob("*.py")) if p.name != "__init__.py"]
    assert len(modules) > 60
    assert [m for m in modules if not _mapped(m, rows)] == []
    named = {span.split("::")[0] for spans in rows for span in spans if re.fullmatch(r"test_\w+\.py(::\w+)?", span)}
    on_disk = {p.name for p in Path(__file__).parent.glob("test_*.py")}
    assert sorted(on_disk - named) == []
    assert sorted(named - on_disk) == []


def test_the_test_map_check_bites():
    rows = [{"tornado_signin/a.py", "test_a.py"}, {"backends/x/sql/", "store.py"}]
    assert _mapped("tornado_signin/a.py", rows) and _mapped("backends/x/sql/store.py", rows)
    assert not _mapped("tornado_signin/b.py", rows) and not _mapped("backends/x/sql/schema.py", rows)
