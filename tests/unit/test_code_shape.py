"""The shape a newcomer can change in a day, checked from the source: short functions, no import circle, and values
that do not travel far from a job's run (docs/design.md, "The code's shape")."""

from __future__ import annotations

import ast
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PRODUCT = ("common", "jobs", "cli")
LONGEST_FUNCTION = 60
FARTHEST_TRAVEL = 40
# The runs whose values are followed: the archive job's and the backup job's, and the steps they hand their work to.
RUNS = (
    ("jobs.archive.job", "ArchiveJob", ("run", "_archive")),
    ("jobs.backup.backup.job", "BackupJob", ("run", "_back_up")),
)


def _module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


@dataclass
class Source:
    """The product's modules parsed once: their trees and every function by its (unqualified) name."""

    trees: dict[str, ast.Module] = field(default_factory=dict)
    functions: dict[str, list[tuple[str, ast.FunctionDef]]] = field(default_factory=lambda: defaultdict(list))

    @classmethod
    def read(cls) -> Source:
        source = cls()
        for package in PRODUCT:
            for path in sorted((ROOT / package).rglob("*.py")):
                module = _module_name(path)
                tree = ast.parse(path.read_text(), str(path))
                source.trees[module] = tree
                for node in ast.walk(tree):
                    if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                        source.functions[node.name].append((f"{module}:{node.name}:{node.lineno}", node))
        return source


SOURCE = Source.read()


def test_no_product_function_is_longer_than_60_lines() -> None:
    long = [
        f"{place} ({node.end_lineno - node.lineno + 1} lines)"
        for functions in SOURCE.functions.values()
        for place, node in functions
        if node.end_lineno - node.lineno + 1 > LONGEST_FUNCTION
    ]
    assert long == []


def _imports(module: str, tree: ast.Module) -> set[str]:
    """The product modules a module imports, at its top or inside a function (a late import is still an edge of the
    drawing), but not under TYPE_CHECKING."""
    type_only = {
        id(statement)
        for node in ast.walk(tree)
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test)
        for statement in ast.walk(node)
    }
    found: set[str] = set()
    for statement in ast.walk(tree):
        if id(statement) in type_only:
            continue
        if isinstance(statement, ast.ImportFrom) and statement.module and statement.level == 0:
            names = [f"{statement.module}.{alias.name}" for alias in statement.names]
            found.update(name for name in [statement.module, *names] if name in SOURCE.trees)
        elif isinstance(statement, ast.Import):
            found.update(alias.name for alias in statement.names if alias.name in SOURCE.trees)
    found.discard(module)
    return found


def _circle_from(start: str, graph: dict[str, set[str]]) -> list[str] | None:
    path: list[str] = []
    on_path: set[str] = set()
    done: set[str] = set()

    def visit(module: str) -> list[str] | None:
        if module in on_path:
            return [*path[path.index(module) :], module]
        if module in done:
            return None
        path.append(module)
        on_path.add(module)
        for imported in sorted(graph[module]):
            circle = visit(imported)
            if circle:
                return circle
        path.pop()
        on_path.discard(module)
        done.add(module)
        return None

    return visit(start)


def test_no_import_circle() -> None:
    graph = {module: _imports(module, tree) for module, tree in SOURCE.trees.items()}
    # A package imports its own modules by design (its __init__ re-exports); a circle through one is still a circle.
    circles = [circle for module in sorted(graph) if (circle := _circle_from(module, graph))]
    assert circles == []


def _parameters(function: ast.FunctionDef) -> tuple[list[str], list[str]]:
    arguments = function.args
    return [a.arg for a in arguments.posonlyargs + arguments.args], [a.arg for a in arguments.kwonlyargs]


def _receiving_parameter(call: ast.Call, callee: ast.FunctionDef, name: str) -> list[str]:
    """The parameters of callee that receive the value named `name` at this call."""
    positional, keyword_only = _parameters(callee)
    bound = 1 if positional[:1] in (["self"], ["cls"]) and isinstance(call.func, ast.Attribute) else 0
    received = [
        positional[index + bound]
        for index, argument in enumerate(call.args)
        if isinstance(argument, ast.Name) and argument.id == name and index + bound < len(positional)
    ]
    received += [
        keyword.arg
        for keyword in call.keywords
        if isinstance(keyword.value, ast.Name) and keyword.value.id == name and keyword.arg in positional + keyword_only
    ]
    return [parameter for parameter in received if parameter is not None]


def _places_reached(place: str, function: ast.FunctionDef, name: str, reached: set[tuple[str, str]]) -> None:
    """Follow one value: every function it is handed to as an argument (by any parameter name), and on from there."""
    if (place, name) in reached:
        return
    reached.add((place, name))
    for call in (node for node in ast.walk(function) if isinstance(node, ast.Call)):
        func = call.func
        callee_name = func.id if isinstance(func, ast.Name) else func.attr if isinstance(func, ast.Attribute) else ""
        for callee_place, callee in SOURCE.functions.get(callee_name, []):
            for parameter in _receiving_parameter(call, callee, name):
                _places_reached(callee_place, callee, parameter, reached)


def _local_names(function: ast.FunctionDef) -> set[str]:
    positional, keyword_only = _parameters(function)
    names = set(positional + keyword_only) - {"self", "cls"}
    for node in ast.walk(function):
        targets = list(node.targets) if isinstance(node, ast.Assign) else []
        if isinstance(node, ast.With):
            targets += [item.optional_vars for item in node.items if item.optional_vars]
        names.update(target.id for each in targets for target in ast.walk(each) if isinstance(target, ast.Name))
    return names


@pytest.mark.parametrize(("module", "job", "steps"), RUNS, ids=[job for _, job, _ in RUNS])
def test_no_value_of_a_jobs_run_travels_to_more_than_40_places(module: str, job: str, steps: tuple[str, ...]) -> None:
    travels: dict[str, int] = {}
    [job_class] = [node for node in SOURCE.trees[module].body if isinstance(node, ast.ClassDef) and node.name == job]
    methods = {node.name: node for node in job_class.body if isinstance(node, ast.FunctionDef)}
    for step in steps:
        function = methods[step]
        place = f"{module}:{step}:{function.lineno}"
        for name in _local_names(function):
            reached: set[tuple[str, str]] = set()
            _places_reached(place, function, name, reached)
            travels[f"{step}.{name}"] = len({place for place, _ in reached})
    assert max(travels.values()) > 5, "the follower found nothing to follow: it would pass on any code"
    farthest = {value: places for value, places in travels.items() if places > FARTHEST_TRAVEL}
    assert farthest == {}, f"{job}: values handed on to more than {FARTHEST_TRAVEL} functions"
