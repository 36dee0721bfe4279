"""The package's layers, read from the import graph (ast, no module executed).

cli -> run -> engine -> components | data -> config -> leaves. A module imports only from its own
layer or one below; components and data never import each other; no import cycle. Imports inside
functions and under TYPE_CHECKING count too: a lazy import is still a dependency.
"""

from __future__ import annotations

import ast
from pathlib import Path

SRC = Path(__file__).parents[1] / "src"
# The layers, top (0) to bottom. A module's layer is that of its longest prefix here.
RANK = {
    "trainkit": 0, "trainkit.__main__": 0, "trainkit.cli": 0,
    "trainkit.sweep": 0.5, "trainkit.reports": 0.5,  # above run: a search and its report read runs back
    "trainkit.run": 1,
    "trainkit.engine": 2,
    "trainkit.components": 3, "trainkit.data": 3,
    "trainkit.config": 4, "trainkit.configs": 4,
    "trainkit.errors": 5, "trainkit.metrics": 5, "trainkit.status": 5, "trainkit.atomic": 5, "trainkit.console": 5,
    "trainkit.memory": 5,
}
NAMES = {0: "cli", 0.5: "sweep/reports", 1: "run", 2: "engine", 3: "components/data", 4: "config", 5: "the leaves"}
APART = {("trainkit.components", "trainkit.data"), ("trainkit.data", "trainkit.components"),
         ("trainkit.sweep", "trainkit.reports"), ("trainkit.reports", "trainkit.sweep")}  # same layer, no imports


def modules(src: Path = SRC) -> dict[str, Path]:
    found = {}
    for path in sorted((src / "trainkit").rglob("*.py")):
        parts = list(path.relative_to(src).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        found[".".join(parts)] = path
    return found


def imports(name: str, path: Path, known: dict[str, Path]):
    """(line, imported module) for every trainkit import of the module `name` at `path`, at any depth."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                base = ".".join(anchor + ([base] if base else []))
            # `from trainkit.cli import preflight` imports the module trainkit.cli.preflight
            targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in known else base for a in node.names]
        else:
            continue
        for target in targets:
            if target == "trainkit" or target.startswith("trainkit."):
                yield node.lineno, owner(target, known)


def owner(target: str, known: dict[str, Path]) -> str:
    """The module file that `target` names (a dotted name inside a module resolves to the module)."""
    while target not in known and "." in target:
        target = target.rpartition(".")[0]
    return target


def layer_of(name: str) -> str | None:
    prefixes = [p for p in RANK if name == p or (p != "trainkit" and name.startswith(p + "."))]  # the root: itself only
    return max(prefixes, key=len) if prefixes else None


def test_every_module_has_a_layer():
    """A new top-level module must be given its layer here on purpose."""
    unplaced = [name for name in modules() if layer_of(name) is None]
    assert not unplaced, f"modules without a layer (add them to RANK in tests/test_architecture.py): {', '.join(unplaced)}"


def layer_violations(src: Path = SRC) -> list[str]:
    known = modules(src)
    wrong = []
    for name, path in known.items():
        mine = layer_of(name)
        for line, target in imports(name, path, known):
            theirs = layer_of(target)
            if theirs is None or theirs == mine:
                continue
            if RANK[theirs] < RANK[mine]:
                wrong.append(f"{name}:{line} imports {target}: {NAMES[RANK[mine]]} may not import {NAMES[RANK[theirs]]} "
                             "(a higher layer)")
            elif (mine, theirs) in APART:
                wrong.append(f"{name}:{line} imports {target}: {mine} and {theirs} are siblings and never import each other")
    return wrong


def import_cycle(src: Path = SRC) -> list[str] | None:
    known = modules(src)
    edges = {name: sorted({t for _, t in imports(name, path, known) if t != name}) for name, path in known.items()}
    state: dict[str, str] = {}

    def visit(name: str, trail: list[str]) -> list[str] | None:
        state[name] = "open"
        for nxt in edges.get(name, []):
            if state.get(nxt) == "open":
                return trail[trail.index(nxt):] + [name, nxt] if nxt in trail else [name, nxt]
            if nxt not in state:
                cycle = visit(nxt, trail + [name])
                if cycle:
                    return cycle
        state[name] = "done"
        return None

    for name in known:
        if name not in state:
            cycle = visit(name, [])
            if cycle:
                return cycle
    return None


def test_no_module_imports_a_higher_layer_or_its_sibling():
    wrong = layer_violations()
    assert not wrong, "imports against the layers:\n" + "\n".join(wrong)


def test_no_import_cycle():
    cycle = import_cycle()
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


def test_the_checks_see_lazy_imports_and_name_the_offending_line(tmp_path):
    """The checks themselves: an upward import inside a function, a sibling import and a cycle are caught."""
    pkg = tmp_path / "trainkit"
    for folder in ("engine", "run", "data", "components"):
        (pkg / folder).mkdir(parents=True)
        (pkg / folder / "__init__.py").write_text("")
    (pkg / "__init__.py").write_text("")
    (pkg / "engine" / "loop.py").write_text("def f():\n    from trainkit.run.record import RunRecord\n")
    (pkg / "run" / "record.py").write_text("from trainkit.engine import loop\n")
    (pkg / "data" / "build.py").write_text("import trainkit.components.models\n")
    (pkg / "components" / "models.py").write_text("")
    assert layer_violations(tmp_path) == [
        "trainkit.data.build:1 imports trainkit.components.models: trainkit.data and trainkit.components are siblings "
        "and never import each other",
        "trainkit.engine.loop:2 imports trainkit.run.record: engine may not import run (a higher layer)"]
    assert import_cycle(tmp_path) == ["trainkit.engine.loop", "trainkit.run.record", "trainkit.engine.loop"]
