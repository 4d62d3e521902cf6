"""Reusable dashboard widgets: line charts, heatmaps and histograms.

Each widget owns its rendering and takes plain numpy data through `set_*`
methods, so screens only decide *what* to show. Their styles live in
`workbench.themes` (line_chart.tcss, heatmap.tcss, histogram.tcss) and use
theme variables only, so a theme switch re-colours them.
"""

from workbench.screens.widgets.heatmap import Heatmap
from workbench.screens.widgets.histogram import Histogram
from workbench.screens.widgets.line_chart import LineChart

__all__ = ["Heatmap", "Histogram", "LineChart"]
