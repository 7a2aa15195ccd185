"""The shape of the code, read from the source with `ast`: the import graph of `client/` and `mffs/` has no circles,
the layers import downwards only (the client never imports mffs; the path tree imports no FUSE binding and nothing
of the front ends above it), and no module is over `MAX_LINES` lines.

The graph has an edge for every import a module can run: at module level and inside functions (a function-level
import is a circle deferred, not avoided). Imports under `if TYPE_CHECKING:` never run and are left out. An import
names the deepest project module it reaches (`from . import exports` in mffs/tree/nodes.py -> mffs.exports); the
parent packages Python initialises on the way are not edges, so a package's `__init__` re-exporting its own
modules is no circle.
"""
from __future__ import annotations

import ast
from pathlib import Path
from typing import Dict, Iterator, List, Optional, Set

import pytest

REPO = Path(__file__).resolve().parent.parent
PACKAGES = ("client", "mffs")
MAX_LINES = 600
FUSE_BINDINGS = ("mfusepy", "fuse", "fusepy", "refuse", "pyfuse3", "llfuse")
#: the path tree and its renderers: plain Python over the client, below the FUSE adapter and the front ends
PATH_TREE = ("mffs.tree", "mffs.render", "mffs.exports")
#: the modules that use the path tree: the readahead worker, the FUSE adapter, fsspec and the CLI
ABOVE_THE_TREE = ("mffs.readahead", "mffs.fuse_ops", "mffs.filesystem", "mffs.source", "mffs.fstab", "mffs.cli")


def module_name(path: Path) -> str:
    parts = list(path.relative_to(REPO).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def source_files() -> Dict[str, Path]:
    """Module name -> file, for every module of the project's packages."""
    return {module_name(path): path for package in PACKAGES for path in sorted((REPO / package).rglob("*.py"))}


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _imports(node: ast.AST) -> Iterator[ast.stmt]:
    """The import statements under `node` that can run: all but those under `if TYPE_CHECKING:`."""
    for child in ast.iter_child_nodes(node):
        if isinstance(child, (ast.Import, ast.ImportFrom)):
            yield child
        elif isinstance(child, ast.If) and _is_type_checking(child.test):
            yield from _imports(ast.Module(body=child.orelse, type_ignores=[]))
        else:
            yield from _imports(child)


def imported_names(name: str, path: Path, modules: Set[str]) -> Set[str]:
    """The names the file's imports reach, relative imports resolved: `import X` gives X; `from X import y` gives
    X.y when that is a project module, else X."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    names: Set[str] = set()
    for statement in _imports(ast.parse(path.read_text(), str(path))):
        if isinstance(statement, ast.Import):
            names.update(alias.name for alias in statement.names)
            continue
        base = statement.module or ""
        if statement.level:
            parts = package.split(".")
            anchor = ".".join(parts[: len(parts) - statement.level + 1])
            base = anchor + ("." + base if base else "")
        for alias in statement.names:
            names.add(base + "." + alias.name if base + "." + alias.name in modules else base)
    return names


def _project_module(name: str, modules: Set[str]) -> Optional[str]:
    """The deepest project module `name` reaches (`client.core.Task` -> client.core), None outside the project."""
    while name and name not in modules:
        name = name.rpartition(".")[0]
    return name or None


def import_graph() -> Dict[str, Set[str]]:
    """Module -> the project modules it imports."""
    files = source_files()
    modules = set(files)
    graph: Dict[str, Set[str]] = {}
    for name, path in files.items():
        targets = {_project_module(imported, modules) for imported in imported_names(name, path, modules)}
        graph[name] = {target for target in targets if target is not None and target != name}
    return graph


def circles(graph: Dict[str, Set[str]], package: str) -> List[List[str]]:
    """The import circles among the modules of `package` (strongly connected components of more than one
    module), each sorted."""
    inside = {name: {t for t in targets if t.split(".")[0] == package} for name, targets in graph.items()
              if name.split(".")[0] == package}
    index: Dict[str, int] = {}
    low: Dict[str, int] = {}
    stack: List[str] = []
    on_stack: Set[str] = set()
    found: List[List[str]] = []

    def visit(name: str) -> None:  # Tarjan's algorithm
        index[name] = low[name] = len(index)
        stack.append(name)
        on_stack.add(name)
        for target in sorted(inside.get(name, ())):
            if target not in index:
                visit(target)
                low[name] = min(low[name], low[target])
            elif target in on_stack:
                low[name] = min(low[name], index[target])
        if low[name] == index[name]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == name:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for name in sorted(inside):
        if name not in index:
            visit(name)
    return sorted(found)


def reachable(graph: Dict[str, Set[str]], starts: List[str]) -> Set[str]:
    seen: Set[str] = set()
    todo = list(starts)
    while todo:
        name = todo.pop()
        if name not in seen:
            seen.add(name)
            todo.extend(graph.get(name, ()))
    return seen


def test_the_graph_sees_function_level_and_relative_imports() -> None:
    graph = import_graph()
    assert "mffs.exports" in graph["mffs.tree.nodes"]  # `from .. import exports`
    assert "mffs.tree.nodes" in graph["mffs.tree.runs"]  # `from .nodes import ...`
    assert "mffs.tree" in graph["mffs.cli"]  # `from .tree import Tree` inside a function
    assert "mffs.tree.tree" not in graph["mffs.tree.nodes"]  # under `if TYPE_CHECKING:`: never runs
    assert "mffs.readahead" not in graph["mffs.tree.tree"]  # the tree takes readahead through a hook


def test_no_import_circles_in_mffs() -> None:
    assert circles(import_graph(), "mffs") == []


def test_no_import_circles_in_client() -> None:
    assert circles(import_graph(), "client") == []


def test_client_imports_nothing_of_mffs() -> None:
    graph = import_graph()
    assert {name: sorted(t for t in targets if t.startswith("mffs")) for name, targets in graph.items()
            if name.startswith("client") and any(t.startswith("mffs") for t in targets)} == {}


def test_the_path_tree_imports_no_fuse_binding_and_no_front_end() -> None:
    graph = import_graph()
    modules = [name for name in graph if name.startswith(PATH_TREE)]
    below = reachable(graph, modules)
    assert sorted(below & set(ABOVE_THE_TREE)) == []
    files = source_files()
    bindings = {
        name: sorted(imported for imported in imported_names(name, files[name], set(files))
                     if imported.split(".")[0] in FUSE_BINDINGS)
        for name in below
    }
    assert {name: found for name, found in bindings.items() if found} == {}


@pytest.mark.parametrize("path", sorted(str(file.relative_to(REPO)) for file in source_files().values()))
def test_no_module_is_over_the_line_limit(path: str) -> None:
    assert len((REPO / path).read_text().splitlines()) <= MAX_LINES
