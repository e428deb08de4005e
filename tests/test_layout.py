"""The package mirrors the pipeline: no import cycles, no import from a later stage's package, and every stage's
import closure is declared in dvc.yaml (so editing any module a stage runs reruns that stage)."""

from __future__ import annotations

import ast
import importlib
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "ctxsynth"
# Pipeline order: a package may import from itself and from packages before it, never from one after it.
# rehearsal (stand-ins for the paper scale) comes after every stage: no stage may depend on it.
ORDER = [
    "core",
    "prepare",
    "generation",
    "synthesis",
    "mix",
    "finetune",
    "evaluate",
    "rehearsal",
    "doctor",  # after rehearsal: its small model takes the rehearsal's tokenizer
    "preflight",  # before paper: a row's preflight (preflight/rows.py) runs the params-wide one
    "paper",
    "params",
    "inputs",
    "cli",
]


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def library_modules() -> dict[str, Path]:
    return {module_name(p): p for p in PACKAGE.rglob("*.py") if "lm_eval_tasks" not in p.parts}


def imported_modules(path: Path, known: set[str]) -> set[str]:
    """Every ctxsynth module `path` imports, at top level or inside a function (lazy imports run too)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module] + [f"{node.module}.{alias.name}" for alias in node.names]
        else:
            continue
        found.update(name for name in names if name in known)
    return found


def import_graph() -> dict[str, set[str]]:
    modules = library_modules()
    return {name: imported_modules(path, set(modules)) for name, path in modules.items()}


def package_of(module: str) -> str | None:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else None


def test_no_import_from_a_later_stage():
    wrong = []
    for module, imports in import_graph().items():
        package = package_of(module)
        for target in imports:
            target_package = package_of(target)
            if package in ORDER and target_package in ORDER and ORDER.index(target_package) > ORDER.index(package):
                wrong.append(f"{module} imports {target}")
    assert not wrong, "imports against the pipeline order:\n" + "\n".join(wrong)


def test_no_import_cycle():
    graph = import_graph()
    # A package's __init__ imported by its own submodule is the parent's import, not a cycle.
    edges = {m: {t for t in targets if not m.startswith(t + ".")} for m, targets in graph.items()}
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(module: str) -> None:
        state[module] = 1
        stack.append(module)
        for target in sorted(edges.get(module, ())):
            if state.get(target) == 1:
                cycle = stack[stack.index(target) :] + [target]
                pytest.fail("import cycle: " + " -> ".join(cycle))
            if target not in state:
                visit(target)
        stack.pop()
        state[module] = 2

    for module in sorted(edges):
        if module not in state:
            visit(module)


def test_every_module_imports_alone_in_a_fresh_interpreter():
    names = sorted(library_modules())
    # Each in its own process, in reverse order too: an import that only works after another has run fails here.
    script = "import importlib, sys\nfor name in sys.argv[1:]:\n    importlib.import_module(name)\n"
    for order in (names, names[::-1]):
        result = subprocess.run([sys.executable, "-c", script, *order], capture_output=True, text=True, cwd=ROOT)
        assert result.returncode == 0, result.stderr[-2000:]
    for name in names[:3]:
        importlib.import_module(name)


def stage_closure(script: Path, modules: dict[str, Path]) -> set[Path]:
    graph = {name: imported_modules(path, set(modules)) for name, path in modules.items()}
    todo = list(imported_modules(script, set(modules)))
    seen: set[str] = set()
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen.add(name)
        parts = name.split(".")
        todo.extend(".".join(parts[:i]) for i in range(1, len(parts)))  # importing a.b.c runs a and a.b first
        todo.extend(graph.get(name, ()))
    return {modules[name] for name in seen}


def test_each_stage_declares_the_library_code_it_runs():
    modules = library_modules()
    stages = yaml.safe_load((ROOT / "dvc.yaml").read_text(encoding="utf-8"))["stages"]
    missing = []
    for name, stage in stages.items():
        script = ROOT / stage["cmd"].split()[1]
        declared = [ROOT / dep for dep in stage["deps"]]
        assert script in declared, f"{name}: its script {script} is not a dependency"
        for path in stage_closure(script, modules):
            if not any(path == dep or dep in path.parents for dep in declared):
                missing.append(f"{name}: {path.relative_to(ROOT)}")
    assert not missing, "stage imports not declared in dvc.yaml deps:\n" + "\n".join(missing)


def test_no_module_imports_another_modules_private_name():
    """A leading underscore says "this module's own": another module that needs it needs a public name."""
    offenders = []
    for path in [*PACKAGE.rglob("*.py"), *(ROOT / "stages").glob("*.py"), *(ROOT / "benchmarks").glob("*.py")]:
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("ctxsynth"):
                private = [alias.name for alias in node.names if alias.name.startswith("_")]
                offenders += [f"{path.relative_to(ROOT)}: {node.module}.{name}" for name in private]
    assert not offenders, offenders


LONGEST_FUNCTION = 60  # lines: a longer orchestrator is split until it reads as its steps


def test_no_library_function_is_longer_than_a_screen():
    """Each function reads in one sitting; a stage's top-level function is its five or six steps, each a call."""
    long = []
    for path in PACKAGE.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                lines = node.end_lineno - node.lineno + 1
                if lines > LONGEST_FUNCTION:
                    long.append(f"{path.relative_to(ROOT)}:{node.lineno} {node.name}: {lines} lines")
    assert not long, "split these into steps:\n" + "\n".join(long)
