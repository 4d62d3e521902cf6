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


def _imports(path: Path) -> set[str]:
    """Absolute names of everything a module imports, relative imports resolved."""
    names = set()
    package = _module_of(path)
    if path.name != "__init__.py":
        package = package[:-1]
    for node in ast.walk(ast.parse(path.read_text())):
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
