"""The house's shape, read from the source: every import runs down (flows → tasks → adapt →
datasets → the ground floor ``stemloop/``), no modules import each other in a circle, the
rooms import each other only under the ``stemloop`` name, and no file passes 400 lines.

Imports inside functions count as much as those at the top: an import moved into a function
to dodge a circle is still a circle.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
# folder → (import name, floor): a module may import modules on its floor or below.
ROOMS = {"stemloop": ("stemloop", 0), "datasets": ("stemloop.datasets", 1),
         "adapt": ("stemloop.adapt", 2), "tasks": ("stemloop.tasks", 3),
         "flows": ("stemloop.flows", 4)}
MAX_LINES = 400


def modules() -> dict[str, tuple[Path, int]]:
    found = {}
    for folder, (package, floor) in ROOMS.items():
        for path in sorted((ROOT / folder).rglob("*.py")):
            parts = [p for p in path.relative_to(ROOT / folder).with_suffix("").parts
                     if p != "__init__"]
            found[".".join([package, *parts])] = (path, floor)
    return found


def imports(path: Path) -> list[tuple[int, str]]:
    """(line, module) for every absolute import in ``path``, ``from a import b`` giving
    both ``a`` and ``a.b`` (b may be a module)."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found += [(node.lineno, node.module)]
            found += [(node.lineno, f"{node.module}.{alias.name}") for alias in node.names]
    return found


def graph() -> dict[str, set[str]]:
    known = modules()
    return {name: {target for _, target in imports(path) if target in known and target != name}
            for name, (path, _) in known.items()}


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected groups of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        for other in sorted(edges[node]):
            if other not in index:
                visit(other)
                low[node] = min(low[node], low[other])
            elif other in stack:
                low[node] = min(low[node], index[other])
        if low[node] == index[node]:
            group = []
            while True:
                member = stack.pop()
                group.append(member)
                if member == node:
                    break
            if len(group) > 1:
                found.append(sorted(group))

    for node in sorted(edges):
        if node not in index:
            visit(node)
    return found


def test_every_import_runs_down_the_house():
    known = modules()
    back = [f"{path.relative_to(ROOT)}:{line} imports {target} (a floor above)"
            for name, (path, floor) in known.items() for line, target in imports(path)
            if target in known and known[target][1] > floor]
    assert not back, "\n".join(back)


def test_no_modules_import_each_other_in_a_circle():
    assert not cycles(graph())


def test_rooms_are_imported_only_under_the_stemloop_name():
    """A bare ``import datasets`` would be Hugging Face's package in a user's environment."""
    bare = [f"{path.relative_to(ROOT)}:{line} imports {target}"
            for path in [*(p for p, _ in modules().values()), *(ROOT / "tests").rglob("*.py"),
                         *(ROOT / "bench").rglob("*.py")]
            for line, target in imports(path)
            if target.split(".")[0] in ("adapt", "datasets", "tasks", "flows")]
    assert not bare, "\n".join(bare)


def test_no_source_file_passes_400_lines():
    long = [f"{path.relative_to(ROOT)}: {n} lines"
            for path in sorted(ROOT.glob("*/**/*.py")) if ".venv" not in path.parts
            and (n := len(path.read_text().splitlines())) > MAX_LINES]
    assert not long, "\n".join(long)


def test_the_checks_catch_what_they_are_for(tmp_path):
    """The graph helpers on a made-up house: a circle and a back arrow are found."""
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": set()}) == []
    source = tmp_path / "m.py"
    source.write_text("import stemloop.tasks.state\n\ndef f():\n"
                      "    from stemloop.flows.cli import main\n")
    assert imports(source) == [(1, "stemloop.tasks.state"), (4, "stemloop.flows.cli"),
                               (4, "stemloop.flows.cli.main")]


@pytest.mark.parametrize("name", ["stemloop.adapt.model", "stemloop.datasets.audio",
                                  "stemloop.tasks.state", "stemloop.flows.cli.main"])
def test_the_installed_names_resolve_to_the_client_folders(name):
    import importlib

    module = importlib.import_module(name)
    folder = {"adapt": "adapt", "datasets": "datasets", "tasks": "tasks", "flows": "flows"}
    assert Path(module.__file__).resolve().is_relative_to(ROOT / folder[name.split(".")[1]])


def test_a_users_own_datasets_package_and_stemloop_live_side_by_side(tmp_path):
    """Hugging Face's ``datasets`` (here a stand-in of that name) and stemloop in one process,
    away from the repository folder: each import gets its own package."""
    import subprocess
    import sys

    (tmp_path / "datasets").mkdir()
    (tmp_path / "datasets" / "__init__.py").write_text("WHOSE = 'the user'\n")
    code = ("import datasets, stemloop.datasets.audio, stemloop.flows.cli.main\n"
            "print(datasets.WHOSE, stemloop.datasets.audio.__name__)\n")
    done = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True,
                          text=True, timeout=120, env={"PYTHONPATH": str(tmp_path)})
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.split() == ["the", "user", "stemloop.datasets.audio"]


def test_the_command_and_the_state_module_import_neither_prefect_nor_torch():
    """Prefect reads its settings (its home, its database) when first imported, so the state
    folder must be set before; and a one-line error for a missing file should not wait for
    torch. A module-level import added to the wrong module breaks both: caught here."""
    import subprocess
    import sys

    code = ("import sys, stemloop.tasks.state, stemloop.flows.cli.main\n"
            "loaded = {m.split('.')[0] for m in sys.modules}\n"
            "print(sorted(loaded & {'prefect', 'torch', 'mlflow'}))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=120, cwd=ROOT)
    assert done.returncode == 0 and done.stdout.strip() == "[]", done.stdout + done.stderr
