"""The shape of the code base holds: scripts only run their command line (``commands/``) and
nothing imports them, and library packages import only downward (docs/architecture.md draws the
same picture).

Every ``import`` statement is read with ``ast`` (imports inside functions included), so a lazy
import cannot hide an arrow that goes the wrong way.
"""

from __future__ import annotations

import ast
import re
import subprocess
from pathlib import Path

import pytest

from tests.conftest import ROOT

# The scripts: each runs ``commands.NAME.main`` and nothing imports them (tests call
# ``commands.NAME.main(argv)``, or run a script as a process).
SCRIPTS = {"process_image", "train", "infer", "evaluate", "export", "gui", "serve"}
# What each library package or top-level module may import from this repository.
ALLOWED = {
    "errors": set(),
    "atomic": {"errors"},
    "config": {"errors"},
    "visual": {"config", "errors"},
    "qwen": {"config", "errors"},
    "model": {"config", "errors", "visual", "qwen"},
    "dataset": {"config", "errors", "atomic", "qwen", "visual"},
    "inference": {"config", "errors", "dataset", "model", "qwen", "visual"},
    "evaluation": {"config", "errors", "atomic", "dataset", "inference", "visual"},
    "exporters": {"config", "errors", "atomic", "model", "qwen", "visual"},
    "training": {"config", "errors", "atomic", "dataset", "evaluation", "inference", "model", "qwen", "visual"},
    "ui": {"config", "errors", "dataset", "inference", "visual"},
    "serving": {"config", "errors", "atomic", "dataset", "inference", "visual", "model"},
    "cli": {"config", "errors", "inference", "model"},
    # the command lines behind the scripts: any library package below
    "commands": {"config", "errors", "atomic", "visual", "qwen", "model", "dataset", "inference", "evaluation",
                 "exporters", "training", "ui", "serving", "cli"},
}
LIBRARY = set(ALLOWED)
# Folders of helpers that may use any library module, but no script.
HELPERS = {"tools", "bench", "tests"}
SKIP = {".venv", ".git", "checkpoints", "data", "outputs", "runs", "wandb", "test-artifacts"}


def python_files() -> list[Path]:
    """The repository's Python files as git sees them (tracked, or new and not ignored), so local
    virtual environments and build folders (.venv, .venv-vllm) never count."""
    listed = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard", "*.py"],
                            cwd=ROOT, capture_output=True, text=True, check=True).stdout.split()
    return sorted(ROOT / p for p in set(listed) if (ROOT / p).is_file() and not SKIP & set(Path(p).parts))


def top(path: Path) -> str:
    """The top-level name a file belongs to: its package, or its own module name."""
    first = path.relative_to(ROOT).parts[0]
    return first.removesuffix(".py")


def imported(path: Path) -> list[tuple[int, str, ast.AST]]:
    """(line, top-level name, node) of every import of this repository's code in ``path``."""
    tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
    own = LIBRARY | SCRIPTS | HELPERS
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names = [node.module]
        else:
            continue
        found += [(node.lineno, name.split(".")[0], node) for name in names if name.split(".")[0] in own]
    return found


def test_every_top_level_module_is_classified():
    tops = {top(p) for p in python_files()}
    unknown = tops - LIBRARY - SCRIPTS - HELPERS
    assert not unknown, f"classify these in tests/test_architecture.py (and docs/architecture.md): {sorted(unknown)}"
    assert SCRIPTS <= tops


@pytest.mark.parametrize("path", [p for p in python_files() if top(p) in LIBRARY | SCRIPTS],
                         ids=lambda p: str(p.relative_to(ROOT)))
def test_library_and_scripts_import_only_downward(path):
    owner = top(path)
    allowed = ALLOWED.get(owner, {"cli", "commands"})  # a script only runs its command line
    wrong = [f"line {line}: {name}" for line, name, _ in imported(path)
             if name != owner and name not in allowed]
    assert not wrong, f"{path.relative_to(ROOT)} ({owner}) imports upward or a script: {wrong}"


@pytest.mark.parametrize("path", [p for p in python_files() if top(p) in HELPERS],
                         ids=lambda p: str(p.relative_to(ROOT)))
def test_helpers_never_import_a_script(path):
    wrong = [f"line {line}: {name}" for line, name, _ in imported(path) if name in SCRIPTS]
    assert not wrong, f"{path.relative_to(ROOT)} imports a script (use commands.NAME.main): {wrong}"


def test_scripts_are_thin():
    for name in SCRIPTS:
        lines = (ROOT / f"{name}.py").read_text(encoding="utf-8").count("\n")
        assert lines <= 15, f"{name}.py has {lines} lines: a script only runs commands/{name}.py"
        lines = (ROOT / "commands" / f"{name}.py").read_text(encoding="utf-8").count("\n")
        assert lines <= 250, f"commands/{name}.py has {lines} lines: move the work into a library package"


def test_no_code_branches_on_a_stage_name():
    """A training stage is one module and one line in training/stages.py: nothing asks which stage
    is configured by name (``train.stage == "dpo"``); it asks the stage object."""
    branch = re.compile(r"""\bstage\s*(==|!=|\bin\b|\bnot in\b)|(==|!=)\s*\w*\.?stage\b""")
    wrong = []
    for path in python_files():
        if top(path) not in LIBRARY | SCRIPTS:
            continue
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            code = line.split("#", 1)[0]
            if branch.search(code):
                wrong.append(f"{path.relative_to(ROOT)}:{number}: {line.strip()}")
    assert not wrong, "branches on a stage name (ask training.stages.stage_of(cfg) instead):\n" + "\n".join(wrong)


def test_the_architecture_doc_states_the_allowed_imports():
    """docs/architecture.md's table says, per package, what it may import (besides config and errors,
    which every package may use): exactly ALLOWED above, so the picture cannot drift from the rule."""
    text = (ROOT / "docs" / "architecture.md").read_text(encoding="utf-8")
    rows = re.findall(r"^\| (`[^|]+`) \| [^\n]* \| ([^|\n]+) \|$", text, flags=re.MULTILINE)
    documented = {}
    for names, imports in rows:
        for name in re.findall(r"`([\w.]+?)(?:/|\.py)?`", names):
            documented[name] = {i.strip() for i in imports.split(",")} - {"-"}
    for name, allowed in ALLOWED.items():
        assert name in documented, f"docs/architecture.md's table has no row for {name}"
        expected = {"any package above"} if name == "commands" else allowed - {"config", "errors"}
        assert documented[name] == expected, f"docs/architecture.md says {name} imports {sorted(documented[name])}, " \
                                             f"tests/test_architecture.py allows {sorted(expected)}"


def module_graph() -> dict[str, set[str]]:
    """Library module -> the library modules it imports (anywhere in the file, lazily or for types too)."""
    modules = {}
    for path in python_files():
        if top(path) in LIBRARY:
            name = ".".join(path.relative_to(ROOT).with_suffix("").parts)
            modules[name.removesuffix(".__init__")] = path
    graph = {}
    for name, path in modules.items():
        deps = set()
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                deps |= {a.name for a in node.names if a.name in modules}
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                deps |= {m for m in [node.module, *(f"{node.module}.{a.name}" for a in node.names)] if m in modules}
        graph[name] = deps - {name}
    return graph


def test_no_two_modules_import_each_other():
    """No import cycle between library modules, not even a lazy or type-only one: each module can be
    read (and changed) after the ones it uses."""
    graph = module_graph()
    cycles = []

    def visit(node, path, seen):
        for nxt in graph[node]:
            if nxt == path[0]:
                cycles.append(" -> ".join([*path, nxt]))
            elif nxt not in seen and nxt > path[0]:  # report each cycle once, from its smallest module
                seen.add(nxt)
                visit(nxt, [*path, nxt], seen)

    for start in sorted(graph):
        visit(start, [start], {start})
    assert not cycles, "import cycles:\n" + "\n".join(cycles[:10])
