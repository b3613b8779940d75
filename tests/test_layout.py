"""The layout: the commands on top, packages below, imports flowing one way and never in a circle.

Every import counts, the ones inside functions included: a lazy import is still a dependency.
"""
import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("brats", "util", "datasets", "scoring", "systems", "peers", "preparing")
# What each package may import (besides itself); losses.py (the network's loss, a library module
# on top by design) may be imported by the package that builds and trains the networks. No package
# imports a command.
ALLOWED = {
    "brats": set(),
    "util": {"brats"},
    "datasets": {"brats", "util"},
    "scoring": {"brats", "util"},
    "systems": {"brats", "util", "datasets", "scoring", "losses"},
    "peers": {"brats", "util", "datasets"},
    "preparing": {"brats", "util"},
}
MAX_TOP_LEVEL = 13
MAX_LINES = 430


def modules() -> dict:
    """Dotted module name -> path, for the top-level files and the packages' modules."""
    found = {p.stem: p for p in ROOT.glob("*.py")}
    for package in PACKAGES:
        for path in (ROOT / package).rglob("*.py"):
            dotted = ".".join(path.relative_to(ROOT).with_suffix("").parts)
            found[dotted.removesuffix(".__init__")] = path
    return found


def imported(path: Path, known: dict) -> set:
    """The project modules `path` imports, anywhere in the file."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names |= {f"{node.module}.{alias.name}" if f"{node.module}.{alias.name}" in known
                      else node.module for alias in node.names}
    return {name for name in names if name in known}


def graph() -> dict:
    known = modules()
    return {name: imported(path, known) - {name} for name, path in known.items()}


def cycle(edges: dict) -> list:
    """One import cycle as a list of modules, or [] when there is none (depth-first search)."""
    state, stack = {}, []

    def visit(node):
        state[node] = "open"
        stack.append(node)
        for target in sorted(edges[node]):
            if state.get(target) == "open":
                return stack[stack.index(target):] + [target]
            if target not in state and (found := visit(target)):
                return found
        stack.pop()
        state[node] = "done"
        return []

    for node in sorted(edges):
        if node not in state and (found := visit(node)):
            return found
    return []


def test_no_module_imports_itself_in_a_circle():
    edges = graph()
    assert cycle(edges) == [], " -> ".join(cycle(edges))


def test_the_cycle_finder_finds_one():
    assert cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": set()}) == ["a", "b", "c", "a"]
    assert cycle({"a": {"b"}, "b": set()}) == []


def test_packages_import_only_what_lies_below_them():
    wrong = []
    for name, targets in graph().items():
        package = name.split(".")[0]
        if package not in PACKAGES:
            continue
        for target in targets:
            other = target.split(".")[0]
            if other != package and other not in ALLOWED[package]:
                wrong.append(f"{name} imports {target}")
    assert wrong == []


def test_a_few_commands_on_top_and_modules_of_a_readable_size():
    top = sorted(p.name for p in ROOT.glob("*.py"))
    assert len(top) <= MAX_TOP_LEVEL, top
    long = {str(p.relative_to(ROOT)): n for p in modules().values()
            if (n := len(p.read_text().splitlines())) > MAX_LINES}
    assert long == {}
    for package in PACKAGES:
        assert ast.get_docstring(ast.parse((ROOT / package / "__init__.py").read_text()))
