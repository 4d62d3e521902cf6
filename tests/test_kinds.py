"""The kind registry as the one place a kind's display is declared (issue 19 item 5):
the key metric of run tables, `wb watch`'s stats line and default chart, the
Overview's main chart and the tabs a kind always shows. A new kind is one
registration: the readers and the TUI pick it up with no other change."""

from __future__ import annotations

import ast
import asyncio
from pathlib import Path
from typing import Any

import pytest
from textual.widgets import TabbedContent

from tests.helpers import until
from workbench import kinds, watch
from workbench.feed import RunFeed
from workbench.kinds import DEFAULT, RECIPES, Recipe, declared
from workbench.render import key_metric
from workbench.store import Store
from workbench.tracking import Run

# What the four places that decided this before (Recipe.key_metric, watch.STATS, the
# Overview's MAIN / FALLBACK and the tabs' KINDS) said, so behaviour is unchanged.
BEFORE: dict[str, dict[str, Any]] = {
    "pretrain": dict(
        key_metric="train/loss", watch_key="train/loss",
        main_metrics=("train/loss", "val/loss", "train/lr", "train/grad_norm",
                      "attn/max_logit", "perf/tokens_per_s", "perf/mfu"),
        overview=(("train/loss", "val/loss"),), tabs=("attention",)),
    "rl": dict(
        key_metric="rl/reward", watch_key="rl/reward",
        main_metrics=("rl/reward", "rl/accuracy", "rollout/len_p99", "staleness/mean",
                      "rl/clip_frac", "perf/gen_tokens_per_s"),
        overview=(("rl/reward", "rl/accuracy"),), tabs=("rollouts",)),
    "depth": dict(
        key_metric="eval/accuracy", watch_key="eval/accuracy",
        main_metrics=("depth/steps_mean", "eval/accuracy", "depth/spec_accept_rate",
                      "perf/tokens_per_s"),
        overview=(("train/loss", "val/loss"), ("depth/steps_mean", "eval/accuracy")),
        tabs=("depth",)),
    "script": dict(key_metric="train/loss", watch_key="train/loss",
                   main_metrics=("train/loss",), overview=(), tabs=()),
    "selftest": dict(key_metric="selftest/failed", watch_key="selftest/failed",
                     main_metrics=("selftest/failed",), overview=(), tabs=()),
}

TOY = Recipe(kind="toy", spec="tests.nowhere:Spec", entry="tests.nowhere:run",
             summary="a kind registered by a test", key_metric="toy/score",
             main_metrics=("toy/score", "toy/speed"), watch_key="toy/speed",
             overview=(("toy/score", "toy/speed"),), tabs=("rollouts",))


@pytest.fixture
def toy(monkeypatch: pytest.MonkeyPatch) -> Recipe:
    """TOY registered for one test (the registry is a module-level dict)."""
    monkeypatch.setitem(RECIPES, TOY.kind, TOY)
    return TOY


def toy_run(store: Store, kind: str = "toy") -> Run:
    row = store.create_run(kind=kind, name="toy", status="running", launcher="sdk")
    run = Run(store, row, owner=True)
    for step in range(1, 11):
        run.log({"toy/score": step / 10, "toy/speed": 100.0 + step, "train/loss": 1.0},
                step=step)
    run.finish()
    return run


@pytest.mark.parametrize("kind", sorted(BEFORE))
def test_each_registered_kind_declares_what_the_readers_used_to_hard_code(kind: str) -> None:
    recipe = declared(kind)
    assert {field: getattr(recipe, field) for field in BEFORE[kind]} == BEFORE[kind]
    assert key_metric(kind) == BEFORE[kind]["key_metric"]


def test_every_registered_kind_is_listed_here() -> None:
    assert set(RECIPES) == set(BEFORE)


def test_a_kind_without_a_recipe_gets_the_default_declaration() -> None:
    assert declared("my-sdk-kind") is DEFAULT
    assert (DEFAULT.key_metric, DEFAULT.watch_key, DEFAULT.main_metrics) == \
        ("train/loss", "train/loss", ("train/loss",))
    assert DEFAULT.overview == () and DEFAULT.tabs == ()
    assert key_metric("my-sdk-kind") == "train/loss"


def test_declared_tabs_name_tabs_of_the_run_screen() -> None:
    """A typo in `Recipe.tabs` would silently show nothing; every id is a real tab."""
    from workbench.screens.run import TABS

    names = {tab.tab_name() for tab in TABS}
    for recipe in RECIPES.values():
        assert set(recipe.tabs) <= names, recipe.kind


def test_kinds_stays_import_light() -> None:
    """spec.py, render.py and the launchers read the registry: it may import neither
    torch, textual nor any workbench module (the recipes it names import spec.py)."""
    tree = ast.parse(Path(kinds.__file__).read_text(encoding="utf-8"))
    imported = {alias.name for node in ast.walk(tree) if isinstance(node, ast.Import)
                for alias in node.names}
    imported |= {node.module or "" for node in ast.walk(tree)
                 if isinstance(node, ast.ImportFrom)}
    assert not {m for m in imported if m.split(".")[0] in ("workbench", "torch", "textual")}


def test_a_registered_kind_is_picked_up_by_watch_and_the_overview(toy: Recipe,
                                                                  store: Store) -> None:
    from workbench.screens.tabs import AttentionTab, DepthTab, MetricsTab, RolloutsTab
    from workbench.screens.tabs.overview import main_keys

    run = toy_run(store)
    feed = RunFeed(store, run.id)
    feed.poll()
    assert key_metric("toy") == "toy/score"  # wb ls, the runs screen
    stats = watch.stats_line(feed).plain
    assert "toy/score 1" in stats and "toy/speed 110" in stats
    assert "train/loss" not in stats  # logged, but not one of its main metrics
    chart = watch.view(feed, 60, 16, color=False).renderables[1].plain
    assert "toy/speed" in chart and "toy/score" not in chart  # the watch_key, not key_metric
    assert main_keys(feed) == ("toy/score", "toy/speed")
    # Rollouts by the declaration (the run logged no rollout/*); not Attention nor Depth.
    assert RolloutsTab.wants(feed) and MetricsTab.wants(feed)
    assert not AttentionTab.wants(feed) and not DepthTab.wants(feed)


def test_the_same_run_without_its_recipe_falls_back(store: Store) -> None:
    """Unregistered, the kind's run reads as any SDK run: key metric train/loss and no
    tab of its own."""
    from workbench.screens.tabs import RolloutsTab
    from workbench.screens.tabs.overview import main_keys

    run = toy_run(store)
    feed = RunFeed(store, run.id)
    feed.poll()
    stats = watch.stats_line(feed).plain
    assert "train/loss 1" in stats and "toy/score" not in stats
    assert main_keys(feed) == ("train/loss", "val/loss")
    assert not RolloutsTab.wants(feed)


def test_the_run_screen_shows_a_registered_kinds_tabs_and_main_chart(
        toy: Recipe, store: Store, store_dir: Path) -> None:
    from workbench.app import WorkbenchApp
    from workbench.screens.run import RunScreen
    from workbench.screens.widgets import LineChart

    run = toy_run(store)

    async def main() -> None:
        app = WorkbenchApp(store_dir)
        async with app.run_test(size=(100, 32)) as pilot:
            await until(pilot, lambda: app.runs_screen is not None
                        and app.runs_screen.table.row_count == 1, 10, "the table")
            screen = await app.open_run_screen(run.id)
            await until(pilot, lambda: isinstance(app.screen, RunScreen)
                        and screen.query("#tab-rollouts-body"), 10, "the Rollouts tab")
            tabs = screen.query_one(TabbedContent)
            shown = [p.id for p in tabs.query("TabPane") if tabs.get_tab(p.id).display]
            assert shown == ["tab-overview", "tab-rollouts", "tab-metrics", "tab-events",
                             "tab-logs", "tab-config"]
            chart = screen.query_one("#main-chart", LineChart)
            assert chart.series_names == ["toy/score", "toy/speed"]
            screen.action_show_tab(1)  # the number keys follow the shown tabs
            await until(pilot, lambda: tabs.active == "tab-rollouts", 5, "key 2")
            await pilot.press("q")

    asyncio.run(main())


def test_the_number_keys_come_from_the_tab_list() -> None:
    from workbench.screens.run import TABS, RunScreen, tab_bindings

    keys = {b.key: b.action for b in RunScreen.BINDINGS if b.action.startswith("show_tab")}
    assert keys == {str((i + 1) % 10): f"show_tab({i})" for i in range(len(TABS))}
    assert len(tab_bindings(TABS[:3])) == 3
