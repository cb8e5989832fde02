"""The layering of the ``oneos`` package, read from the source with ``ast`` (nothing is imported).

Two rules keep the packages honest:

* **No import cycles** among ``oneos`` modules, counting only the imports a
  module runs when it is loaded (module level, class bodies, ``try`` blocks).
  Imports inside functions are deliberate late binding and allowed;
  ``if TYPE_CHECKING:`` imports never run.  Both are listed by
  ``pytest -rP tests/unit/test_layers.py`` (``test_late_imports_listed``).
* **No upward imports**, at any level (a late import is still a dependency):
  nothing outside ``oneos.cli`` imports ``oneos.cli``, and the lower layers
  (``oneos.pubsub``, ``oneos.fs``, ``oneos.security``, ``oneos.transfer``,
  ``oneos.config``, ``oneos.errors``) import none of ``oneos.runtime``,
  ``oneos.shell``, ``oneos.scheduler``, ``oneos.agents``, ``oneos.cli``.

Known exceptions are in :data:`ALLOWED_UPWARD`, each with its reason; an
entry that no longer matches any import fails ``test_allow_list_is_current``
so the list only ever shrinks.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PACKAGE = ROOT / "oneos"

#: The lower layers and what they must never import.
LOWER = (
    "oneos.pubsub",
    "oneos.fs",
    "oneos.security",
    "oneos.transfer",
    "oneos.splice",
    "oneos.config",
    "oneos.errors",
)
UPPER = (
    "oneos.runtime",
    "oneos.shell",
    "oneos.scheduler",
    "oneos.agents",
    "oneos.desktop",
    "oneos.devices",
    "oneos.cli",
)
#: Only the CLI may import the CLI.
CLI = "oneos.cli"

#: (importing module, imported module) -> why it is still allowed.  Empty it as the reasons go away.
ALLOWED_UPWARD: dict[tuple[str, str], str] = {}


@dataclass(frozen=True)
class Import:
    importer: str
    imported: str
    line: int
    #: "module" (runs on load), "function" (late binding) or "type" (under TYPE_CHECKING, never runs)
    when: str

    def __str__(self) -> str:
        return f"{self.importer} -> {self.imported} (line {self.line}, {self.when})"


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _sources() -> dict[str, Path]:
    return {module_name(p): p for p in sorted(PACKAGE.rglob("*.py")) if "__pycache__" not in p.parts}


MODULES = _sources()


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _walk(node: ast.AST, when: str) -> Iterator[tuple[ast.Import | ast.ImportFrom, str]]:
    """Every import under *node*, with when it runs."""
    for child in ast.iter_child_nodes(node):
        if isinstance(child, (ast.Import, ast.ImportFrom)):
            yield child, when
        elif isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
            yield from _walk(child, "function" if when == "module" else when)
        elif isinstance(child, ast.If) and _is_type_checking(child.test):
            for stmt in child.body:
                yield from _walk(ast.Module(body=[stmt], type_ignores=[]), "type")
            for stmt in child.orelse:
                yield from _walk(ast.Module(body=[stmt], type_ignores=[]), when)
        else:
            yield from _walk(child, when)


def _targets(module: str, is_package: bool, node: ast.Import | ast.ImportFrom) -> Iterator[str]:
    """The modules an import statement names (a ``from pkg import name`` names a submodule or pkg)."""
    if isinstance(node, ast.Import):
        for alias in node.names:
            yield alias.name
        return
    if node.level:
        package = module.split(".") if is_package else module.split(".")[:-1]
        base = package[: len(package) - (node.level - 1)]
        source = ".".join(base + ([node.module] if node.module else []))
    else:
        source = node.module or ""
    for alias in node.names:
        sub = f"{source}.{alias.name}"
        yield sub if sub in MODULES else source


def imports_in(module: str, source: str, *, is_package: bool = False) -> list[Import]:
    """The imports of oneos modules in *source* (the text of *module*), once per statement and module."""
    found: dict[tuple[str, int], Import] = {}
    for node, when in _walk(ast.parse(source), "module"):
        for target in _targets(module, is_package, node):
            if target == "oneos" or target.startswith("oneos."):
                # a name inside a module counts as the module ("from oneos.fs.store import Stat")
                while target not in MODULES and "." in target:
                    target = target.rsplit(".", 1)[0]
                found.setdefault((target, node.lineno), Import(module, target, node.lineno, when))
    return list(found.values())


def imports() -> list[Import]:
    return [
        i
        for module, path in MODULES.items()
        for i in imports_in(module, path.read_text(encoding="utf-8"), is_package=path.name == "__init__.py")
    ]


IMPORTS = imports()


def _within(module: str, package: str) -> bool:
    return module == package or module.startswith(package + ".")


def _cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with a cycle (Tarjan), each as a sorted list."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    out: list[list[str]] = []
    counter = [0]

    def visit(v: str) -> None:
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on_stack.add(v)
        for w in sorted(edges.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1 or v in edges.get(v, ()):
                out.append(sorted(component))

    for v in sorted(edges):
        if v not in index:
            visit(v)
    return out


def _path(edges: dict[str, set[str]], component: list[str]) -> list[str]:
    """A shortest cycle through the first module of *component*, to show in a failure message."""
    members = set(component)
    start = component[0]
    came_from: dict[str, str] = {}
    queue = [start]
    while queue:
        v = queue.pop(0)
        for w in sorted(edges.get(v, ())):
            if w == start:
                trail = [v]
                while trail[-1] != start:
                    trail.append(came_from[trail[-1]])
                return [*reversed(trail), start]
            if w in members and w not in came_from:
                came_from[w] = v
                queue.append(w)
    return component  # not reached: a component with a cycle has one through every member


# --- the reader itself, so the rules below cannot pass by reading nothing --------


def test_the_source_is_found():
    assert "oneos.fs.store" in MODULES and "oneos.pubsub.client" in MODULES
    assert any(i.importer == "oneos.fs.sqlite_store" and i.imported == "oneos.fs.store" for i in IMPORTS)


def test_imports_are_classified():
    source = """
from typing import TYPE_CHECKING
import oneos.errors
from oneos.fs import paths, errors
from oneos.fs.store import Stat, Writer
from . import urls
from .. import config
try:
    from oneos.pubsub import address
except ImportError:
    pass
if TYPE_CHECKING:
    from oneos.fs.opening import open_store
class C:
    from oneos.security import tls
    def f(self):
        from oneos.runtime.netstore import recall
async def g():
    import oneos.cli.main
"""
    got = {(i.imported, i.when) for i in imports_in("oneos.fs.example", source)}
    assert got == {
        ("oneos.errors", "module"),
        ("oneos.fs.paths", "module"),
        ("oneos.fs.errors", "module"),
        ("oneos.fs.store", "module"),
        ("oneos.fs.urls", "module"),
        ("oneos.config", "module"),
        ("oneos.pubsub.address", "module"),
        ("oneos.fs.opening", "type"),
        ("oneos.security.tls", "module"),
        ("oneos.runtime.netstore", "function"),
        ("oneos.cli.main", "function"),
    }
    assert len(imports_in("oneos.fs", "from . import store", is_package=True)) == 1
    assert imports_in("oneos.fs", "from . import store", is_package=True)[0].imported == "oneos.fs.store"


def test_cycles_are_found():
    edges = {"a": {"b"}, "b": {"c"}, "c": {"a", "d"}, "d": set(), "e": {"e"}, "f": {"d"}}
    assert _cycles(edges) == [["a", "b", "c"], ["e"]]
    assert _path(edges, ["a", "b", "c"]) == ["a", "b", "c", "a"]
    assert _path(edges, ["e"]) == ["e", "e"]
    assert _cycles({"a": {"b"}, "b": set()}) == []


# --- the rules ------------------------------------------------------------------


def test_no_import_cycles_at_module_level():
    edges: dict[str, set[str]] = {}
    for i in IMPORTS:
        if i.when == "module" and i.imported != i.importer:
            edges.setdefault(i.importer, set()).add(i.imported)
    cycles = [" -> ".join(_path(edges, c)) for c in _cycles(edges)]
    assert not cycles, (
        "import cycles among oneos modules (make one import late, or move the shared part down):\n" + "\n".join(cycles)
    )


def _upward() -> list[Import]:
    bad = []
    for i in IMPORTS:
        if _within(i.imported, CLI) and not _within(i.importer, CLI):
            bad.append(i)
        elif any(_within(i.importer, low) for low in LOWER) and any(_within(i.imported, up) for up in UPPER):
            bad.append(i)
    return bad


def test_no_upward_imports():
    bad = [f"{i}" for i in _upward() if (i.importer, i.imported) not in ALLOWED_UPWARD]
    assert not bad, "upward imports (a lower layer reaching into a higher one):\n" + "\n".join(bad)


def test_allow_list_is_current():
    used = {(i.importer, i.imported) for i in _upward()}
    stale = [f"{a} -> {b}" for (a, b) in ALLOWED_UPWARD if (a, b) not in used]
    assert not stale, "ALLOWED_UPWARD entries that no longer match an import; delete them:\n" + "\n".join(stale)


@pytest.mark.parametrize("backend", ["oneos.fs.sqlite_store", "oneos.fs.mongo_store"])
def test_store_does_not_import_its_backends(backend):
    """oneos.fs.store is what the backends implement; only oneos.fs.opening chooses (and imports) one.

    Test support (oneos.testing: the in-memory cluster runs SQLite without its thread) may build one itself.
    """
    importers = {i.importer for i in IMPORTS if i.imported == backend and not i.importer.startswith("oneos.testing.")}
    assert "oneos.fs.store" not in importers
    assert importers <= {"oneos.fs.opening"}, importers


def test_late_imports_listed():
    """Not a rule: the imports that run late (inside functions) or never (TYPE_CHECKING), for the record."""
    late = [i for i in IMPORTS if i.when != "module" and i.imported != i.importer]
    print(f"{len(late)} late or type-only imports among oneos modules:")
    for i in late:
        print(f"  {i}")
