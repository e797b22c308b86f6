"""The repository's own shape, read statically (ast, nothing imported): no import cycle in diffexp/, no module over
350 lines or function over 80 in diffexp/ and hydra_plugins/, and no test module importing another.

Small modules without cycles can be read, tested and split one at a time. Code that breaks a rule today is named
below with the reason; an entry that no longer applies fails the test too, so the lists only shrink.
"""

from __future__ import annotations

import ast
from collections.abc import Iterable
from pathlib import Path

from helpers import REPO

MODULE_LINES = 350
FUNCTION_LINES = 80
CHECKED = ("diffexp", "hydra_plugins")  # the folders the length limits apply to; the cycle check covers diffexp/

# Sorted modules of one strongly connected component of diffexp/'s import graph -> why it is allowed for now.
KNOWN_CYCLES: dict[tuple[str, ...], str] = {}
# Path relative to the repository -> why it may be longer than MODULE_LINES.
LONG_MODULES: dict[str, str] = {}
# "path:qualified name" -> why it may be longer than FUNCTION_LINES.
LONG_FUNCTIONS: dict[str, str] = {}


# Import graph and cycles


def module_name(path: Path, root: Path) -> str:
    """`diffexp/report/ranking.py` -> `diffexp.report.ranking`; a package's `__init__.py` is the package."""
    parts = list(path.relative_to(root).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imported_modules(source: str, module: str, is_package: bool, known: set[str]) -> set[str]:
    """The modules of `known` that `source` (module `module`) imports.

    Every import statement counts, inside functions and `if TYPE_CHECKING:` too: an import deferred into a function
    hides a cycle from the interpreter, not from whoever has to understand or split the two modules. `from a import b`
    is an edge to `a.b` where that is a module, else to `a`. Importing `a.b` also runs `a/__init__.py`, but that is
    not an edge: every package would then be in a cycle with the submodules its `__init__` names.
    """
    package = module if is_package else module.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative: `from . import x`, `from ..a import x`
                base_parts = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                base = ".".join(base_parts + ([node.module] if node.module else []))
            else:
                base = node.module or ""
            found.update(f"{base}.{alias.name}" if f"{base}.{alias.name}" in known else base for alias in node.names)
    return {name for name in found if name in known and name != module}


def import_graph(package: Path, root: Path) -> dict[str, set[str]]:
    """Module -> the modules of the same package it imports, for every .py file under `package`."""
    files = {module_name(p, root): p for p in sorted(package.rglob("*.py"))}
    known = set(files)
    return {
        name: imported_modules(path.read_text(), name, path.name == "__init__.py", known)
        for name, path in files.items()
    }


def strongly_connected(graph: dict[str, set[str]]) -> list[list[str]]:
    """Tarjan's components of more than one module (self-imports are dropped before): each holds a cycle."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for target in sorted(graph.get(node, ())):
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in on_stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                components.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return sorted(components)


def cycle_path(graph: dict[str, set[str]], component: list[str]) -> list[str]:
    """A shortest cycle through the component's first module, as a path that ends where it starts."""
    start, members = component[0], set(component)
    paths = {start: [start]}
    queue = [start]
    for node in queue:  # breadth first: the first way back to `start` is a shortest one
        for target in sorted(graph.get(node, set()) & members):
            if target == start:
                return [*paths[node], start]
            if target not in paths:
                paths[target] = [*paths[node], target]
                queue.append(target)
    raise AssertionError(f"{component} is not strongly connected")


def cycle_problems(graph: dict[str, set[str]], known: dict[tuple[str, ...], str]) -> list[str]:
    """Each import cycle not in `known`, with its path, and each entry of `known` that is no longer a cycle."""
    components = {tuple(c): c for c in strongly_connected(graph)}
    problems = [
        f"import cycle {' -> '.join(cycle_path(graph, c))}" for key, c in components.items() if key not in known
    ]
    stale = [key for key in known if key not in components]
    return problems + [f"{list(key)} is no longer an import cycle: remove it from KNOWN_CYCLES" for key in stale]


# Lengths


def source_lines(source: str) -> int:
    return len(source.splitlines())


def function_lengths(source: str) -> dict[str, int]:
    """Qualified name (`Class.method`, `outer.inner`) -> lines from its `def` to its last line, docstring included
    and decorators not; a nested function counts in its parent and on its own."""
    lengths: dict[str, int] = {}

    def walk(node: ast.AST, prefix: str) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                name = f"{prefix}{child.name}"
                if not isinstance(child, ast.ClassDef):
                    lengths[name] = child.end_lineno - child.lineno + 1
                walk(child, f"{name}.")
            else:
                walk(child, prefix)

    walk(ast.parse(source), "")
    return lengths


def limit_problems(lengths: dict[str, int], limit: int, allowed: dict[str, str], what: str) -> list[str]:
    """Each name over `limit` not in `allowed`, and each entry of `allowed` now within the limit or gone."""
    problems = [f"{name} has {n} lines, over {limit}" for name, n in sorted(lengths.items()) if n > limit]
    problems = [p for p in problems if p.split(" has ")[0] not in allowed]
    for name in sorted(allowed):
        if name not in lengths:
            problems.append(f"{name} is gone: remove it from {what}")
        elif lengths[name] <= limit:
            problems.append(f"{name} has {lengths[name]} lines, within {limit}: remove it from {what}")
    return problems


def checked_files(root: Path, folders: Iterable[str] = CHECKED) -> list[Path]:
    return sorted(p for folder in folders for p in (root / folder).rglob("*.py"))


def module_lengths(root: Path) -> dict[str, int]:
    return {p.relative_to(root).as_posix(): source_lines(p.read_text()) for p in checked_files(root)}


def all_function_lengths(root: Path) -> dict[str, int]:
    return {
        f"{p.relative_to(root).as_posix()}:{name}": n
        for p in checked_files(root)
        for name, n in function_lengths(p.read_text()).items()
    }


# Test modules


def imports_of_tests(source: str) -> list[str]:
    """The test modules and conftest that a test module's `source` imports (tests share code through helpers.py)."""
    names: list[str] = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            names += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and not node.level and node.module:
            names.append(node.module)
    return [n for n in names if n.rpartition(".")[2].startswith("test_") or n.rpartition(".")[2] == "conftest"]


def cross_test_imports(tests: Path) -> list[str]:
    return [
        f"{p.name} imports {name}: move what it needs into tests/helpers.py"
        for p in sorted(tests.glob("test_*.py"))
        for name in imports_of_tests(p.read_text())
    ]


# The rules on this repository


def test_diffexp_has_no_import_cycle_beyond_the_known():
    problems = cycle_problems(import_graph(REPO / "diffexp", REPO), KNOWN_CYCLES)
    assert not problems, "\n".join(problems)


def test_no_module_is_longer_than_the_limit_beyond_the_named():
    problems = limit_problems(module_lengths(REPO), MODULE_LINES, LONG_MODULES, "LONG_MODULES")
    assert not problems, "\n".join(problems)


def test_no_function_is_longer_than_the_limit_beyond_the_named():
    problems = limit_problems(all_function_lengths(REPO), FUNCTION_LINES, LONG_FUNCTIONS, "LONG_FUNCTIONS")
    assert not problems, "\n".join(problems)


def test_no_test_module_imports_another():
    problems = cross_test_imports(REPO / "tests")
    assert not problems, "\n".join(problems)


# Each check catches a planted violation


def test_cycle_check_reports_a_new_cycle_with_its_path_and_a_stale_known_one():
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a", "d"}, "d": set(), "e": {"e"}}
    assert strongly_connected(graph) == [["a", "b", "c"]]  # a self-import is no cycle between modules
    assert cycle_problems(graph, {}) == ["import cycle a -> b -> c -> a"]
    assert cycle_problems(graph, {("a", "b", "c"): "planted"}) == []
    assert cycle_problems({"a": {"b"}, "b": set()}, {("a", "b"): "planted"}) == [
        "['a', 'b'] is no longer an import cycle: remove it from KNOWN_CYCLES"
    ]


def test_import_graph_counts_function_level_relative_and_from_package_imports():
    known = {"pkg.a", "pkg.b", "pkg.c", "pkg.sub", "pkg.sub.d"}
    source = "import os\nfrom pkg import b\n\ndef f():\n    from .sub import d\n    from . import c\n    import pkg.a\n"
    assert imported_modules(source, "pkg.a", False, known) == {"pkg.b", "pkg.c", "pkg.sub.d"}  # not itself, not os
    assert imported_modules("from .. import a\nfrom .d import x\n", "pkg.sub", True, known) == {"pkg.a", "pkg.sub.d"}


def test_length_check_counts_a_def_with_its_docstring_and_flags_new_and_stale_entries():
    body = "".join(f"    x{i} = {i}\n" for i in range(78))
    source = f'@decorator\ndef long():\n    """Doc."""\n{body}    return 1\n\n'
    source += "class K:\n    def short(self):\n        pass\n"
    lengths = function_lengths(source)
    assert lengths == {"long": 81, "K.short": 2}
    assert limit_problems(lengths, 80, {}, "LONG_FUNCTIONS") == ["long has 81 lines, over 80"]
    assert limit_problems(lengths, 80, {"long": "planted"}, "LONG_FUNCTIONS") == []
    assert limit_problems(lengths, 81, {"long": "planted", "gone": "planted"}, "LONG_FUNCTIONS") == [
        "gone is gone: remove it from LONG_FUNCTIONS",
        "long has 81 lines, within 81: remove it from LONG_FUNCTIONS",
    ]
    assert source_lines("a\nb\n") == 2


def test_test_import_check_flags_test_modules_and_conftest_but_not_helpers():
    source = "import test_cli\nfrom conftest import TINY\nfrom helpers import ENV\n\n"
    source += "def f():\n    from test_data import x\n"
    assert sorted(imports_of_tests(source)) == ["conftest", "test_cli", "test_data"]
