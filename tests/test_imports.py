"""Layering: the runtime (``orchd/``) knows nothing of agents; ``orchd/app.py``
alone wires ``actors`` in, and only lazily, inside functions."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
ORCHD = REPO / "orchd"
WIRING = ORCHD / "app.py"


def _is_actors(name: str | None) -> bool:
    return name is not None and (name == "actors" or name.startswith("actors."))


def actors_imports(path: Path) -> list[tuple[int, bool]]:
    """(line, at module level) of every import of ``actors`` in a module.

    Counts ``import actors...``, ``from actors... import``, and
    ``importlib.import_module("actors...")`` / ``__import__("actors...")``
    with a literal name.
    """
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    found: list[tuple[int, bool]] = []

    def visit(node: ast.AST, in_function: bool) -> None:
        hit = False
        if isinstance(node, ast.Import):
            hit = any(_is_actors(a.name) for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            hit = node.level == 0 and _is_actors(node.module)
        elif isinstance(node, ast.Call) and node.args and isinstance(node.args[0], ast.Constant):
            func = node.func
            name = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", None)
            hit = name in ("import_module", "__import__") and isinstance(node.args[0].value, str) \
                and _is_actors(node.args[0].value)
        if hit:
            found.append((node.lineno, not in_function))
        nested = in_function or isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda))
        for child in ast.iter_child_nodes(node):
            visit(child, nested)

    visit(tree, False)
    return found


def test_the_checker_sees_every_form_of_import(tmp_path: Path) -> None:
    mod = tmp_path / "m.py"
    mod.write_text(
        "import actors\n"
        "import os, actors.agents as a\n"
        "from actors.rehearsal import scenario\n"
        "from . import actors_like\n"
        "import actorsish\n"
        "if True:\n"
        "    from actors import doctor\n"
        "def f():\n"
        "    from actors.supervisor import SessionSupervisor\n"
        "    import importlib\n"
        "    return importlib.import_module('actors.doctor')\n"
        "g = lambda: __import__('actors')\n"
    )
    assert actors_imports(mod) == [(1, True), (2, True), (3, True), (7, True), (9, False), (11, False),
                                   (12, False)]


def test_orchd_imports_actors_only_in_app_py() -> None:
    modules = sorted(ORCHD.rglob("*.py"))
    assert WIRING in modules and len(modules) > 5
    offenders = {str(m.relative_to(REPO)): lines for m in modules if m != WIRING
                 if (lines := [line for line, _ in actors_imports(m)])}
    assert offenders == {}, f"orchd/ must not import actors (only orchd/app.py wires them in): {offenders}"


def test_app_py_imports_actors_lazily() -> None:
    imports = actors_imports(WIRING)
    assert imports, "app.py is where the daemon wires actors in"
    eager = [line for line, top in imports if top]
    assert eager == [], f"orchd/app.py imports actors at module level (lines {eager}); import inside functions"


def test_the_scenario_validator_is_light() -> None:
    # orchctl imports it to check a file; it must not drag in the server, sockets or adapters
    code = ("import sys, actors.rehearsal.scenario\n"
            "heavy = ('http.server', 'socket', 'zmq', 'asyncio', 'actors.agents',\n"
            "         'actors.rehearsal.modelserver', 'actors.rehearsal.dialects', 'orchd')\n"
            "print(sorted(m for m in heavy if m in sys.modules))\n")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=30, cwd=REPO)
    assert res.stdout.strip() == "[]", res
