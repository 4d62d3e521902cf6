"""Issue 20 item 7: `wb report RUN|GROUP -o report.html`, one self-contained file. Opened
in headless Chromium (as tests/test_serve.py does): it draws, every chart is there, and
no request leaves the file."""

from __future__ import annotations

import base64
import re
import shutil
from pathlib import Path

import numpy as np
import pytest

from tests.helpers import wb_inproc
from workbench.report import line_chart
from workbench.store import Store
from workbench.tracking import Run

CHROMIUM = next((p for p in map(shutil.which, ("chromium", "chromium-browser",
                                                "google-chrome")) if p), None)
KEYS = ["attn/max_logit", "train/loss", "train/lr", "val/loss"]


def logged_run(store: Store, name: str, group: str | None = None, scale: float = 1.0) -> str:
    row = store.create_run(kind="pretrain", name=name, status="running", launcher="sdk",
                           group=group, config={"optim": {"name": "muonclip", "tau": 30.0}})
    run = Run(store, row, owner=True)
    rng = np.random.default_rng(0)
    for step in range(1, 301):
        run.log({"train/loss": scale * 5 / step ** 0.5, "train/lr": 1e-3,
                 "attn/max_logit": step * 0.15}, step=step)
        if step % 100 == 0:
            run.log({"val/loss": scale * 4 / step ** 0.5}, step=step)
            run.log_dist("rollout/len", rng.exponential(100, 500), step=step)
            run.log_matrix("attn/max_logit_heads", np.arange(8.0).reshape(2, 4) * 6, step=step)
    run.event("loss_spike", step=150, value=2.0)
    run.log({"eval/accuracy/r4": 0.5, "eval/accuracy/r16": 0.8}, step=300)
    run.finish()
    return row.id


def test_a_chart_downsamples_but_keeps_a_spike() -> None:
    x = np.arange(1_000_000, dtype=float)
    y = np.ones_like(x)
    y[654_321] = 50.0
    svg = line_chart("k", [("k", x, y)])
    points = re.search(r'points="([^"]+)"', svg).group(1).split()  # type: ignore[union-attr]
    assert len(points) <= 2 * 452 + 4  # about two points per pixel column
    assert min(float(p.split(",")[1]) for p in points) < 40  # the spike reaches the top


@pytest.mark.skipif(CHROMIUM is None, reason="Chromium is not installed (apt-get install "
                    "chromium; .ci/run installs it)")
def test_the_report_opens_offline_with_every_chart(store: Store, store_dir: Path,
                                                   tmp_path: Path) -> None:
    from playwright.sync_api import sync_playwright

    one = logged_run(store, "muon", group="opt")
    logged_run(store, "adamw", group="opt", scale=1.3)
    single, group = tmp_path / "run.html", tmp_path / "group.html"
    out = wb_inproc("report", one, "-o", str(single), check=True).stdout
    assert out.startswith(f"wrote {single} (") and "1 run" in out
    wb_inproc("report", "opt", "-o", str(group), check=True)
    assert wb_inproc("report", "nope", "-o", str(single)).returncode == 2

    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM)
        try:
            for path, runs in ((single, 1), (group, 2)):
                page = browser.new_page(viewport={"width": 1200, "height": 900})
                requests: list[str] = []
                page.on("request", lambda r, seen=requests: seen.append(r.url))
                page.goto(path.as_uri(), wait_until="load")
                assert requests == [path.as_uri()]  # nothing else is fetched
                charts = page.eval_on_selector_all(
                    "svg.chart", "els => els.map(e => e.dataset.key)")
                expected = ["attn/max_logit", "eval/accuracy/r4", "eval/accuracy/r16",
                            "train/loss", "train/lr", "val/loss"]
                metric_charts = [c for c in charts if "/" in c and c in expected]
                assert metric_charts == expected
                assert sum(c.startswith("rollout/len") for c in charts) == runs
                assert sum(c.startswith("attn/max_logit_heads") for c in charts) == runs
                # a group overlays its runs: two lines and a legend in the loss chart
                loss = page.locator('svg.chart[data-key="train/loss"] polyline')
                assert loss.count() == runs
                assert page.locator("th", has_text="recurrences").count() == 1  # depth table
                shot = page.screenshot()
                assert len(set(base64.b64encode(shot)[::97])) > 20  # not a blank page
                page.close()
        finally:
            browser.close()
