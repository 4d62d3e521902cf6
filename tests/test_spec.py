"""Specs: TOML -> typed, validated config; `--set` coercion; one-line refusals (exit 2,
nothing created); built-in specs and the recipe registry."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from tests.helpers import assert_nothing_created, wb_inproc
from workbench.recipes import RECIPES, Recipe
from workbench.recipes.script import ScriptSpec
from workbench.spec import (
    Section,
    SpecError,
    apply_override,
    builtin_specs,
    coerce,
    load_spec,
    parse_spec,
)
from workbench.store import Store

SCRIPT_TOML = """\
kind = "script"
description = "a test script"

[script]
command = ["python", "train.py"]

[config]
steps = 100
lr = 0.001
"""


def write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


@pytest.fixture
def spec_file(tmp_path: Path) -> Path:
    return write(tmp_path / "exp.toml", SCRIPT_TOML)


# -- built-ins and the registry ----------------------------------------------------------


def test_builtin_specs_ship_in_the_package_and_validate() -> None:
    specs = builtin_specs()
    assert "charlm" in specs
    loaded = load_spec("charlm")
    assert loaded.kind == "script"
    assert isinstance(loaded.spec, ScriptSpec)
    assert loaded.spec.script.command[:3] == ["python", "-m", "workbench.examples.charlm"]
    assert loaded.default_name == "charlm"
    # The TOML it stores reproduces the same spec.
    assert parse_spec(loaded.to_toml()) == loaded.spec


def test_recipes_register_by_kind() -> None:
    recipe = RECIPES["script"]
    assert isinstance(recipe, Recipe)
    assert recipe.kind == "script"
    assert recipe.spec_model() is ScriptSpec
    assert callable(recipe.entry_point())


def test_wb_recipes_lists_each_builtin_on_one_line() -> None:
    proc = wb_inproc("recipes")
    assert proc.returncode == 0, proc.stderr
    lines = [ln for ln in proc.stdout.splitlines() if ln.split()[:1] == ["charlm"]]
    assert len(lines) == 1, proc.stdout
    assert "script" in lines[0]
    assert "byte-level MLP" in lines[0] and "2 CPU cores" in lines[0]
    assert "kind script" in proc.stdout


# -- parsing and --set coercion ----------------------------------------------------------


def test_toml_becomes_a_typed_config(spec_file: Path) -> None:
    spec = load_spec(str(spec_file)).spec
    assert isinstance(spec, ScriptSpec)
    assert spec.resources.procs == 1 and spec.resources.host == "local"
    assert spec.config == {"steps": 100, "lr": 0.001}
    assert spec.run_config() == {"steps": 100, "lr": 0.001}
    assert load_spec(str(spec_file)).default_name == "exp"


@pytest.mark.parametrize(
    ("override", "get", "expected"),
    [
        ("resources.procs=2", lambda s: s.resources.procs, 2),
        ("config.steps=500", lambda s: s.config["steps"], 500),
        ("config.lr=3e-4", lambda s: s.config["lr"], 3e-4),
        ("config.fused=true", lambda s: s.config["fused"], True),
        ("config.sizes=[64, 128]", lambda s: s.config["sizes"], [64, 128]),
        ("config.tag='v1'", lambda s: s.config["tag"], "v1"),
        ("config.sched.warmup=10", lambda s: s.config["sched"], {"warmup": 10}),
        ("name=007", lambda s: s.name, "007"),  # str stays str, even if numeric
        ('name="42"', lambda s: s.name, "42"),  # a quoted TOML string is unquoted
        ("script.cwd=123", lambda s: s.script.cwd, "123"),
        ("script.env.SEED=1", lambda s: s.script.env, {"SEED": "1"}),
        ('script.command=["python", "b.py"]', lambda s: s.script.command, ["python", "b.py"]),
        ("total_steps=10", lambda s: s.total_steps, 10),
        ("seed=3", lambda s: s.seed, 3),
    ],
)
def test_set_is_coerced_to_the_field_type(spec_file: Path, override: str, get: Any,
                                          expected: Any) -> None:
    value = get(load_spec(str(spec_file), [override]).spec)
    assert value == expected
    assert type(value) is type(expected)


def test_for_launch_pins_the_working_directory(spec_file: Path, tmp_path: Path) -> None:
    spec = load_spec(str(spec_file)).spec
    assert spec.script.cwd is None
    pinned = spec.for_launch()
    assert pinned.script.cwd == str(tmp_path.resolve())  # where wb ran (the test's cwd)
    assert spec.script.cwd is None  # the loaded spec is not changed
    explicit = load_spec(str(spec_file), ["script.cwd=sub"]).spec.for_launch()
    assert explicit.script.cwd == str(tmp_path.resolve() / "sub")


def test_set_overrides_apply_in_order_and_keep_other_keys(spec_file: Path) -> None:
    spec = load_spec(str(spec_file), ["config.steps=5", "config.steps=7"]).spec
    assert spec.config == {"steps": 7, "lr": 0.001}


class _Optim(Section):
    lr: float = 1e-3
    fused: bool = False
    betas: list[float] = [0.9, 0.95]
    label: str = "adam"


@pytest.mark.parametrize(
    ("item", "field", "expected"),
    [
        ("lr=1", "lr", 1.0),
        ("lr=2.5e-4", "lr", 2.5e-4),
        ("fused=true", "fused", True),
        ("fused=false", "fused", False),
        ("betas=[0.8, 0.9]", "betas", [0.8, 0.9]),
        ("label=1e-3", "label", "1e-3"),
        ("label=true", "label", "true"),
    ],
)
def test_set_coercion_for_float_bool_list_str_fields(item: str, field: str,
                                                     expected: Any) -> None:
    data: dict[str, Any] = {}
    apply_override(_Optim, data, item)
    value = getattr(_Optim.model_validate(data), field)
    assert value == expected
    assert type(value) is type(expected)


def test_coerce_leaves_unparsable_values_for_validation() -> None:
    assert coerce("abc", int) == "abc"
    assert coerce("12", str) == "12"
    assert coerce("12", int) == 12
    assert coerce("0.5", float) == 0.5


# -- refusals: one line naming the key and the fix --------------------------------------

# (--set items, message fragments, exact message or None)
SET_REFUSALS = [
    (["resources.proc=2"], "unknown key resources.proc — did you mean resources.procs?"),
    (["resources.procs=abc"], "resources.procs: Input should be a valid integer"),
    (["resources.procs=0"], "resources.procs: Input should be greater than or equal to 1"),
    (["resources.host=gpu1"], "resources.host: host 'gpu1' is not configured"),
    (["kind=scrip"], "unknown kind 'scrip' — did you mean script?"),
    (["confg.steps=3"], "unknown key confg.steps — did you mean config.steps?"),
    (["seed=-1"], "seed: Input should be greater than or equal to 0"),
    (["name=a/b"], "name: invalid run name 'a/b'"),
    (["resources.procs.x=1"], "unknown key resources.procs.x — resources.procs is a value"),
    (["resources.procs"], "--set 'resources.procs': expected KEY=VALUE"),
    (['script.command=["/bin/true"]', "resources.procs=2"],
     'resources.procs=2 starts the script under torchrun, so script.command must start with '
     '"python"'),
    (["resources.nodes=0"], "resources.nodes: Input should be greater than or equal to 1"),
    (["resources.nodes=2", 'resources.hosts=["local"]'],
     "resources.hosts: lists 1 host(s) but resources.nodes is 2: name one host per node"),
    (['resources.hosts=["local", "local"]'], "resources.hosts: lists 2 host(s) but "
     "resources.nodes is 1"),
    (["resources.nodes=2", 'resources.hosts=["local", "gpu1"]'],
     "resources.hosts: host 'gpu1' is not configured (known: local); add it with `wb hosts add`"),
    (["resources.rdzv_port=80"], "resources.rdzv_port: Input should be greater than or equal"),
]


@pytest.mark.parametrize(("items", "fragment"), SET_REFUSALS)
def test_bad_set_is_refused_with_one_line(spec_file: Path, items: list[str],
                                          fragment: str) -> None:
    with pytest.raises(SpecError) as info:
        load_spec(str(spec_file), items)
    message = str(info.value)
    assert fragment in message
    assert "\n" not in message


def test_refusals_name_the_fix(spec_file: Path) -> None:
    def message(items: list[str]) -> str:
        with pytest.raises(SpecError) as info:
            load_spec(str(spec_file), items)
        return str(info.value)

    assert message(["resources.procs=abc"]).endswith(
        "— fix it in the spec or with --set resources.procs=VALUE")
    assert "(got 'abc')" in message(["resources.procs=abc"])
    assert "(known: local)" in message(["resources.host=gpu1"])
    assert message(["resources.cpus=2"]) == ("unknown key resources.cpus — valid keys in "
                                             "resources: host, procs, nodes, hosts, rdzv_port, "
                                             "master_addr")


def test_nodes_and_hosts() -> None:
    """`nodes` without `hosts` runs every node here; with `hosts`, one per node (a
    per-rank kind: pretrain; the others are refused in test_multinode.py)."""
    res = load_spec("muon-tiny").spec.resources
    assert (res.nodes, res.hosts, res.rdzv_port) == (1, [], 29400)
    res = load_spec("muon-tiny", ["resources.nodes=2"]).spec.resources
    assert (res.nodes, res.hosts) == (2, [])
    res = load_spec("muon-tiny", ["resources.nodes=2", 'resources.hosts=["local", "local"]',
                                  "resources.rdzv_port=29555"]).spec.resources
    assert (res.nodes, res.hosts, res.rdzv_port) == (2, ["local", "local"], 29555)


# (file text, message fragment)
FILE_REFUSALS = [
    (SCRIPT_TOML.replace("description", "descripton"),
     "unknown key descripton — did you mean description?"),
    (SCRIPT_TOML + "\n[resources]\nprocz = 2\n",
     "unknown key resources.procz — did you mean resources.procs?"),
    (SCRIPT_TOML.replace('kind = "script"', 'kind = "scripts"'),
     "unknown kind 'scripts' — did you mean script?"),
    (SCRIPT_TOML.replace('kind = "script"', ""), "missing key kind — add kind = one of 'script'"),
    ('kind = "script"\n', "missing key script — add it to the spec"),
    (SCRIPT_TOML + "\n[resources\n", "invalid TOML: "),
    (SCRIPT_TOML + "\n[resources]\nprocs = -3\n", "resources.procs: Input should be greater"),
    (SCRIPT_TOML + '\n[resources]\nprocs = "many"\n', "resources.procs: Input should be a "
     "valid integer"),
]


@pytest.mark.parametrize(("text", "fragment"), FILE_REFUSALS)
def test_bad_spec_file_is_refused_with_one_line(tmp_path: Path, text: str,
                                                fragment: str) -> None:
    path = write(tmp_path / "bad.toml", text)
    with pytest.raises(SpecError) as info:
        load_spec(str(path))
    assert fragment in str(info.value)
    assert "\n" not in str(info.value)


def test_missing_file_and_unknown_builtin_are_refused(tmp_path: Path) -> None:
    with pytest.raises(SpecError, match=r"no spec 'nope\.toml': not a file and not a built-in"):
        load_spec("nope.toml")
    with pytest.raises(SpecError, match=r"no spec 'charlmm'.* — did you mean charlm\?"):
        load_spec("charlmm")
    unreadable = write(tmp_path / "binary.toml", "")
    unreadable.write_bytes(b"\xff\xfe\x00kind")
    with pytest.raises(SpecError, match=r"cannot read spec"):
        load_spec(str(unreadable))


# -- the same refusals through `wb launch` --------------------------------------------------

CLI_REFUSALS = [
    (["charlm", "--set", "resources.proc=2"],
     "error: unknown key resources.proc — did you mean resources.procs?"),
    (["charlm", "--set", "resources.procs=abc"], "resources.procs: Input should be a valid"),
    (["charlm", "--set", "resources.procs=0"], "resources.procs: Input should be greater"),
    (["charlm", "--set", "resources.host=gpu1"], "host 'gpu1' is not configured"),
    (["charlm", "--set", "resources.host=[gpu1]"], "host '[gpu1]' is not configured"),
    (["charlm", "--set", "kind=scrip"], "error: unknown kind 'scrip' — did you mean script?"),
    (["charlm", "--name", "no spaces allowed"], "invalid run name 'no spaces allowed'"),
    (["charlmm"], "error: no spec 'charlmm': not a file and not a built-in recipe — did you "
     "mean charlm?"),
    (["missing.toml"], "error: no spec 'missing.toml'"),
    (["@typo.toml"], "error: unknown key descripton — did you mean description?"),
    (["@broken.toml"], "invalid TOML"),
    (["@kindless.toml"], "missing key kind"),
]


@pytest.mark.parametrize(("args", "fragment"), CLI_REFUSALS)
def test_wb_launch_refuses_bad_specs_with_exit_2_and_creates_nothing(
        tmp_path: Path, store_dir: Path, args: list[str], fragment: str) -> None:
    write(tmp_path / "typo.toml", SCRIPT_TOML.replace("description", "descripton"))
    write(tmp_path / "broken.toml", SCRIPT_TOML + "\n[resources\n")
    write(tmp_path / "kindless.toml", SCRIPT_TOML.replace('kind = "script"', ""))
    args = [a.removeprefix("@") for a in args]
    proc = wb_inproc("launch", *args, "--detach")
    assert proc.returncode == 2, (proc.stdout, proc.stderr)
    lines = proc.stderr.splitlines()
    assert len(lines) == 1, proc.stderr
    assert fragment in lines[0]
    assert lines[0].startswith("error: ")
    assert proc.stdout == ""
    assert_nothing_created(store_dir)


def test_refusal_with_an_existing_store_adds_no_run(tmp_path: Path, store_dir: Path) -> None:
    """An existing store keeps its runs and gets no new row or folder."""
    with Store(store_dir) as st:
        row = st.create_run(kind="script", name="keep", status="finished")
    before = sorted(p.name for p in store_dir.iterdir())
    proc = wb_inproc("launch", "charlm", "--set", "resources.procs=0")
    assert proc.returncode == 2 and len(proc.stderr.splitlines()) == 1
    assert sorted(p.name for p in store_dir.iterdir()) == before
    with Store(store_dir, create=False) as st:
        assert [r.id for r in st.runs()] == [row.id]
