"""Reusable dashboard widgets: line charts, heatmaps, histograms and the run table.

Each widget owns its rendering and takes plain data (numpy arrays through `set_*`
methods; `RunView`s through `RunTable.show`), so screens only decide *what* to show.
Their styles live in `workbench.themes` (line_chart.tcss, heatmap.tcss, histogram.tcss,
runs.tcss) and use theme variables only, so a theme switch re-colours them.
"""

from workbench.screens.widgets.heatmap import Heatmap
from workbench.screens.widgets.histogram import Histogram
from workbench.screens.widgets.line_chart import LineChart
from workbench.screens.widgets.run_table import RunTable

__all__ = ["Heatmap", "Histogram", "LineChart", "RunTable"]
