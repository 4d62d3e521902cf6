"""Attention: the layer x head max-logit heatmap against tau, the global max logit
over steps with the tau line, and the number of heads QK-Clip scaled per step."""

from __future__ import annotations

from textual.app import ComposeResult
from textual.containers import Horizontal, Vertical

from workbench.feed import RunFeed
from workbench.screens.tabs.base import RunTab
from workbench.screens.widgets import Heatmap, LineChart

HEADS_KEY = "attn/max_logit_heads"


class AttentionTab(RunTab):
    TITLE = "Attention"
    FOCUS = "#heads"  # the arrows read cells at once, no Tab first
    ALWAYS = False  # pretrain declares it (kinds.py)
    PREFIXES = ("attn/", "qkclip/")

    def compose(self) -> ComposeResult:
        with Horizontal():
            yield Heatmap(id="heads")
            with Vertical():
                yield LineChart(id="max-logit")
                yield LineChart(id="clipped")

    def update_from(self, feed: RunFeed) -> None:
        tau = feed.tau
        latest = feed.matrix(HEADS_KEY)
        heatmap = self.query_one("#heads", Heatmap)
        if latest is not None:
            step, matrix = latest
            heatmap.set_matrix(matrix, tau, row_label="layer", col_label="head")
            heatmap.border_title = f"max logit per head, step {step}" + (
                f" (tau {tau:g})" if tau is not None else "")
        chart = self.query_one("#max-logit", LineChart)
        chart.set_title("attn/max_logit")
        if len(s := feed.series("attn/max_logit")):
            chart.set_series("max logit", s.step, s.value)
        chart.set_hline(tau, label="tau")
        clipped = self.query_one("#clipped", LineChart)
        clipped.set_title("qkclip/clipped_heads")
        if len(s := feed.series("qkclip/clipped_heads")):
            clipped.set_series("clipped heads", s.step, s.value)
        optim = feed.config.get("optim") if isinstance(feed.config.get("optim"), dict) else {}
        if optim.get("name") not in (None, "muonclip"):
            clipped.empty_text = f"QK-Clip off (optim.name = {optim['name']})"
        elif tau is None:
            clipped.empty_text = "QK-Clip off (tau not set)"
