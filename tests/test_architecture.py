"""The package's floors: each module imports only from its own floor or the floors below, there
are no import cycles, and the house stays small enough to read (module size, top-level modules).

The floors, from the bottom: the helpers every step uses; geography and the operations on
descriptors; the descriptor store; data; models; search; ensembles; extraction; evaluation;
locating; reports; training; the demo and test helpers; the public API and the CLI.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "vprkit"

FLOORS: list[tuple[str, ...]] = [
    (
        "vprkit.errors",
        "vprkit.numbers",
        "vprkit.choices",
        "vprkit.inputs",
        "vprkit.files",
        "vprkit.progress",
        "vprkit.lazy",
        "vprkit.devices",
    ),
    ("vprkit.geo", "vprkit.descriptors"),
    ("vprkit.store",),
    ("vprkit.data",),
    ("vprkit.models",),
    ("vprkit.search",),
    ("vprkit.ensemble",),
    ("vprkit.extract",),
    ("vprkit.evaluate",),
    ("vprkit.locate",),
    ("vprkit.report",),
    ("vprkit.train",),
    ("vprkit.testing", "vprkit.demo"),
    ("vprkit", "vprkit.cli"),
]
MAX_LINES = 400
MAX_TOP_LEVEL_MODULES = 12


def module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def modules() -> dict[str, Path]:
    return {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def imports(path: Path, name: str | None = None) -> set[str]:
    """The vprkit modules (or names in them) that ``path`` (module ``name``) imports, anywhere
    in its code."""
    name = name or module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.split(".")[0] == "vprkit")
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            if target.split(".")[0] != "vprkit":
                continue
            names = [a.name for a in node.names if a.name != "__version__"]
            if not names:
                continue  # ``from vprkit import __version__``: the root defines the version
            found.update(f"{target}.{n}" for n in names)
    return found


def floor_of(name: str) -> int:
    """The floor of a module: that of the longest listed prefix."""
    best, floor = -1, -1
    for index, members in enumerate(FLOORS):
        for member in members:
            if (name == member or name.startswith(member + ".")) and len(member) > best:
                best, floor = len(member), index
    assert floor >= 0, f"{name} is on no floor: add it to FLOORS"
    return floor


def resolved(name: str, known: dict[str, Path]) -> str:
    """The module that an imported dotted name belongs to (a name in it: its module)."""
    while name not in known and "." in name:
        name = name.rpartition(".")[0]
    return name


def upward_imports(known: dict[str, Path]) -> list[str]:
    """``module -> imported`` for each import from a higher floor."""
    upward = set()
    for name, path in known.items():
        for target in imports(path, name):
            module = resolved(target, known)
            if floor_of(module) > floor_of(name):
                upward.add(f"{name} -> {module}")
    return sorted(upward)


class TestFloors:
    def test_every_module_has_a_floor(self):
        for name in modules():
            floor_of(name)

    def test_no_import_from_a_higher_floor(self):
        assert upward_imports(modules()) == []

    def test_no_cycles(self):
        known = modules()
        graph = {name: {resolved(t, known) for t in imports(path)} - {name} for name, path in known.items()}
        # a package's __init__ that re-exports its modules is not a cycle with them
        for name in graph:
            graph[name] = {t for t in graph[name] if not t.startswith(name + ".")}
        cycles = []
        state: dict[str, int] = {}

        def visit(node: str, stack: list[str]) -> None:
            state[node] = 1
            for nxt in sorted(graph.get(node, ())):
                if state.get(nxt) == 1:
                    cycles.append(
                        " -> ".join(stack[stack.index(nxt) :] + [node, nxt])
                        if nxt in stack
                        else f"{node} -> {nxt}"
                    )
                elif nxt not in state:
                    visit(nxt, stack + [node])
            state[node] = 2

        for node in sorted(graph):
            if node not in state:
                visit(node, [])
        assert cycles == []

    def test_the_check_sees_an_upward_import(self, tmp_path):
        module = tmp_path / "m.py"
        module.write_text(
            "from vprkit import __version__\nfrom ..errors import VprkitError\n"
            "def f():\n    from vprkit.train.trainer import train\n"
        )
        known = {**modules(), "vprkit.store.m": module}
        assert imports(module, "vprkit.store.m") == {
            "vprkit.train.trainer.train",
            "vprkit.errors.VprkitError",
        }
        assert upward_imports(known) == ["vprkit.store.m -> vprkit.train.trainer"]


class TestSize:
    @pytest.mark.parametrize("name", sorted(modules()))
    def test_module_under_the_limit(self, name):
        lines = modules()[name].read_text(encoding="utf-8").count("\n")
        assert lines <= MAX_LINES, f"{name}: {lines} lines"

    def test_top_level_modules(self):
        top = [p.name for p in PACKAGE.glob("*.py") if p.name != "__init__.py"]
        assert len(top) <= MAX_TOP_LEVEL_MODULES, sorted(top)


class TestLibrarySpeaksPython:
    """Only the CLI prints: the library logs (``logging``) and reports progress to a callback.
    ``vprkit.progress`` is where the CLI's renderers live (the one module that draws)."""

    RENDERER = "vprkit.progress"

    @staticmethod
    def library() -> dict[str, Path]:
        return {
            name: path
            for name, path in modules().items()
            if name != "vprkit.cli" and not name.startswith("vprkit.cli.")
        }

    def test_no_print_outside_the_cli(self):
        found = []
        for name, path in self.library().items():
            if name == self.RENDERER:
                continue
            for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
                if not isinstance(node, ast.Call):
                    continue
                f = node.func
                if (isinstance(f, ast.Name) and f.id == "print") or (
                    isinstance(f, ast.Attribute)
                    and f.attr == "print"
                    and ast.unparse(f.value).endswith("console")
                ):
                    found.append(f"{name}:{node.lineno}: {ast.unparse(node)[:60]}")
        assert found == []

    def test_no_boolean_progress(self):
        """``progress: ProgressCallback | None`` (``vprkit.progress`` still takes the deprecated
        booleans at run time, for one release)."""
        found = []
        for name, path in modules().items():
            for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
                if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                    args = node.args
                    for arg in args.posonlyargs + args.args + args.kwonlyargs:
                        if (
                            arg.arg == "progress"
                            and arg.annotation is not None
                            and ast.unparse(arg.annotation) == "bool"
                        ):
                            found.append(f"{name}:{node.lineno} {node.name}")
        assert found == []

    def test_the_checks_see_a_print_and_a_boolean(self, tmp_path):
        source = "def f(progress: bool = True):\n    console.print('x')\n    print('y')\n"
        tree = ast.parse(source)
        calls = [n for n in ast.walk(tree) if isinstance(n, ast.Call)]
        assert {ast.unparse(c.func) for c in calls} == {"console.print", "print"}
        (fn,) = [n for n in ast.walk(tree) if isinstance(n, ast.FunctionDef)]
        assert ast.unparse(fn.args.args[0].annotation) == "bool"
