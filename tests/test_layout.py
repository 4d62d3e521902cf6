"""The package layout of docs/ARCHITECTURE.md, the install contract, the one-way layering."""

from __future__ import annotations

import ast
import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MAPPED = {"screens": "workbench.screens", "kernels": "workbench.kernels",
          "themes": "workbench.themes"}


def test_top_level_packages_import_under_workbench() -> None:
    out = subprocess.run(
        [sys.executable, "-c", "import workbench, workbench.screens, workbench.kernels, "
         "workbench.themes; print(workbench.screens.__file__, workbench.kernels.__file__, "
         "workbench.themes.stylesheet())"],
        capture_output=True, text=True, check=True, cwd="/",
    ).stdout.split()
    assert out[0] == str(ROOT / "screens" / "__init__.py")
    assert out[1] == str(ROOT / "kernels" / "__init__.py")
    assert out[2] == str(ROOT / "themes" / "workbench.tcss")


def test_pyproject_lists_every_package() -> None:
    """setuptools is given an explicit list (because of the mapped folders): keep it whole."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    listed = set(project["tool"]["setuptools"]["packages"])
    found = {".".join(p.parent.relative_to(ROOT).parts)
             for p in (ROOT / "workbench").rglob("__init__.py")}
    # Mapped folders and their sub-packages (screens/widgets -> workbench.screens.widgets).
    found |= {".".join([MAPPED[d], *p.parent.relative_to(ROOT / d).parts])
              for d in MAPPED for p in (ROOT / d).rglob("__init__.py")}
    assert found == listed
    assert project["project"]["name"] == "workbench-lab"
    assert project["project"]["scripts"]["wb"] == "workbench.cli:main"
    assert any(d.startswith("torch>=2.9") for d in project["project"]["dependencies"])
    assert "gpu" in project["project"]["optional-dependencies"]


def test_wb_console_script_runs() -> None:
    exe = shutil.which("wb") or str(Path(sys.executable).parent / "wb")
    proc = subprocess.run([exe, "--help"], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    for command in ("launch", "ls", "show", "export", "events", "stop", "resume", "rm",
                    "recipes", "bench"):
        assert command in proc.stdout


def _module_of(path: Path) -> list[str]:
    """Dotted name parts of an installed module (screens/x.py -> workbench.screens.x)."""
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[0] in MAPPED:
        parts = MAPPED[parts[0]].split(".") + parts[1:]
    return parts[:-1] if parts[-1] == "__init__" else parts


def _imports(path: Path, source: str | None = None) -> set[str]:
    """Absolute names of everything a module imports, relative imports resolved.
    `source`: the module's text, when it is not (yet) the file at `path`."""
    names = set()
    package = _module_of(path)
    if path.name != "__init__.py":
        package = package[:-1]
    for node in ast.walk(ast.parse(path.read_text() if source is None else source)):
        if isinstance(node, ast.Import):
            names |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = package[: len(package) - node.level + 1] if node.level else []
            module = ".".join([*base, *([node.module] if node.module else [])])
            names.add(module)
            names |= {f"{module}.{a.name}" for a in node.names}
    return names


def test_layering_points_one_way() -> None:
    """screens -> workbench -> kernels; the core never imports Textual or the screens."""
    for path in (ROOT / "workbench").rglob("*.py"):
        if path == ROOT / "workbench" / "app.py":  # the Textual App composes the screens
            continue
        # textual_serve (wb serve) is an aiohttp server that never imports Textual.
        bad = {n for n in _imports(path) if n == "textual"
               or n.startswith(("textual.", "workbench.screens"))}
        assert not bad, f"{path.relative_to(ROOT)} imports {bad}"
    for path in (ROOT / "kernels").rglob("*.py"):
        bad = {n for n in _imports(path) if n.split(".")[0] == "workbench"
               and not n.startswith("workbench.kernels")}
        assert not bad, f"{path.relative_to(ROOT)} imports {bad}"


# Only the pretrain recipe itself, and the benches and self-checks that measure its own
# step, may import it; everything else reaches shared pieces through recipes/common.
PRETRAIN = "workbench.recipes.pretrain"
MAY_IMPORT_PRETRAIN = ("workbench/recipes/pretrain", "workbench/bench", "workbench/selftest")


def _imports_pretrain(path: Path, source: str | None = None) -> set[str]:
    """Names of workbench.recipes.pretrain (or its modules) that `path` imports anywhere
    (module level, in functions, under TYPE_CHECKING), `from workbench.recipes import
    pretrain` included. Registry strings ("module:attr" in kinds.py) are data, not
    imports."""
    return {n for n in _imports(path, source)
            if n == PRETRAIN or n.startswith(PRETRAIN + ".")}


def test_nothing_imports_the_pretrain_recipe_but_itself() -> None:
    """Another recipe (depth, rl) or core code (export_model) that needs a piece of
    pretrain takes it from recipes/common/ instead (docs/ARCHITECTURE.md, "Recipes"), so
    pretrain can change without breaking them. The benches and self-checks that time the
    pretrain recipe's own step are the exception."""
    bad = {}
    for folder in ("workbench", "screens"):
        for path in (ROOT / folder).rglob("*.py"):
            rel = path.relative_to(ROOT).as_posix()
            if rel.startswith(tuple(f"{d}/" for d in MAY_IMPORT_PRETRAIN)):
                continue
            if names := _imports_pretrain(path):
                bad[rel] = sorted(names)
    assert not bad, f"modules outside {MAY_IMPORT_PRETRAIN} import the pretrain recipe: {bad}"


def test_the_pretrain_rule_sees_every_form_of_import() -> None:
    """The checker itself: absolute, package-attribute, function-level, TYPE_CHECKING and
    relative imports all count; a registry string does not."""
    probe = ROOT / "workbench" / "recipes" / "depth" / "probe.py"  # never written
    cases = {
        "from workbench.recipes.pretrain.spec import PretrainSpec\n": True,
        "import workbench.recipes.pretrain.train\n": True,
        "from workbench.recipes import pretrain as pt\n": True,
        "def f():\n    from workbench.recipes.pretrain import autocast\n": True,
        "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n"
        "    from workbench.recipes.pretrain.data import TrainData\n": True,
        "from ..pretrain.train import run\n": True,
        "from .. import pretrain\n": True,
        "ENTRY = 'workbench.recipes.pretrain.train:run'\n": False,
        "from workbench.recipes.common.trainer import train\n": False,
    }
    for code, hit in cases.items():
        assert bool(_imports_pretrain(probe, code)) is hit, code


def test_import_workbench_is_light() -> None:
    """`import workbench` and the CLI module must not pull in torch."""
    code = ("import sys, workbench, workbench.cli; "
            "print('torch' in sys.modules, 'textual' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True).stdout.split()
    assert out == ["False", "False"]


def test_readme_commands_and_ci() -> None:
    readme = (ROOT / "README.md").read_text()
    blocks = re.findall(r"```bash\n(.*?)\n```", readme, re.S)
    setup = [b for b in blocks if b.startswith("python3 -m venv")]
    assert len(setup) == 2, "the README holds exactly two set-up-to-result commands"
    main_job, tests = setup
    assert "wb launch" in main_job and "torch==2.13.0" in main_job
    assert tests.endswith("pytest") and "torch==2.13.0" in tests
    ci = (ROOT / ".ci" / "run").read_text()
    assert tests in ci, ".ci/run must call the README's test command"
    assert "pytest -m slow" in ci


# -- the import graph --------------------------------------------------------------------


def _modules() -> dict[str, Path]:
    """Every module of the installed package: dotted name -> file."""
    return {".".join(_module_of(p)): p
            for folder in ("workbench", *MAPPED) for p in (ROOT / folder).rglob("*.py")}


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING"
            or isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _import_edges(name: str, path: Path, modules: dict[str, Path]) -> dict[str, str]:
    """The workbench modules `name` imports -> how (line and where the import sits)."""
    package = name.split(".") if path.name == "__init__.py" else name.split(".")[:-1]
    edges: dict[str, str] = {}

    def visit(node: ast.AST, where: str) -> None:
        targets: list[str] = []
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = package[: len(package) - node.level + 1] if node.level else []
            module = ".".join([*base, *([node.module] if node.module else [])])
            # `from pkg import sub` names the submodule; `from mod import attr` the module.
            targets = [f"{module}.{a.name}" if f"{module}.{a.name}" in modules else module
                       for a in node.names]
        elif (isinstance(node, ast.Call) and node.args
              and (isinstance(node.func, ast.Attribute) and node.func.attr == "import_module"
                   or isinstance(node.func, ast.Name) and node.func.id == "import_module")
              and isinstance(node.args[0], ast.Constant)
              and isinstance(node.args[0].value, str)):
            targets = [node.args[0].value]
        for target in targets:
            if target in modules and target != name:
                edges.setdefault(target, f"line {node.lineno}, {where}")
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda):
            where = "in a function"
        if isinstance(node, ast.If) and _is_type_checking(node.test):
            for child in node.body:
                visit(child, "under TYPE_CHECKING")
            for child in node.orelse:
                visit(child, where)
            return
        for child in ast.iter_child_nodes(node):
            visit(child, where)

    visit(ast.parse(path.read_text()), "at module level")
    return edges


def _cycles(graph: dict[str, dict[str, str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    for root in sorted(graph):
        if root in index:
            continue
        work = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = len(index)
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = len(index)
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph[child]))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                if len(component) > 1:
                    found.append(sorted(component))
    return found


def test_no_import_cycles() -> None:
    """No two workbench modules import each other, directly or through others.

    The graph holds every module of `workbench` (screens/, kernels/ and themes/ under
    their installed names) and an edge for every import of another workbench module
    wherever it sits: at module level, inside a function or method, and under
    `if TYPE_CHECKING:` (a cycle there is still two modules that need each other; put
    the shared type in a third module or describe it with a Protocol on the user's
    side). Relative imports are resolved; `from pkg import sub` is an edge to the
    submodule `pkg.sub`, `from mod import name` an edge to `mod`, and
    `importlib.import_module("a.b")` with a literal name an edge to `a.b`. Import
    strings resolved at run time (the recipe registry's "module:attr") are data, not
    edges.

    An edge goes to the module named only, not to its parent packages: importing
    `a.b.c` runs `a/__init__.py` and `a/b/__init__.py` too, but counting that would
    make every package `__init__` that re-exports a submodule a cycle with each of its
    submodules. A package `__init__` is an ordinary node: where it really imports a
    module that imports it back (a factory in `engine/__init__.py` and the engines
    that import its types), that is a cycle.

    Any strongly connected component of more than one module fails, listing the
    modules and the imports between them.
    """
    modules = _modules()
    graph = {name: _import_edges(name, path, modules) for name, path in modules.items()}
    cycles = _cycles(graph)
    lines = []
    for component in cycles:
        lines.append(" <-> ".join(component))
        lines += [f"    {a} imports {b} ({how})" for a in component
                  for b, how in sorted(graph[a].items()) if b in component]
    assert not cycles, "import cycles:\n" + "\n".join(lines)


def test_the_cycle_finder_finds_cycles(tmp_path: Path) -> None:
    """The checker itself: a cycle through a function-level and a TYPE_CHECKING import."""
    graph = {"a": {"b": "x"}, "b": {"c": "x"}, "c": {"a": "x"}, "d": {"a": "x"}, "e": {}}
    assert _cycles(graph) == [["a", "b", "c"]]
    path = tmp_path / "a.py"
    path.write_text("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from . import b\n"
                    "def f():\n    from .c import thing\n"
                    "    importlib.import_module('workbench.d')\n")
    modules = {f"workbench.{n}": Path(n) for n in "abcd"}
    edges = _import_edges("workbench.a", path, modules)
    assert edges == {"workbench.b": "line 3, under TYPE_CHECKING",
                     "workbench.c": "line 5, in a function",
                     "workbench.d": "line 6, in a function"}
