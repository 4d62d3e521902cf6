"""The run screen's tabs. Each is a container that composes widgets and knows which
metrics it shows; `update_from(feed)` refreshes it from a `RunFeed`.

`wants(feed)` says whether a tab fits the run: by the kind's declaration first
(`workbench.kinds`, `Recipe.tabs`: pretrain shows Attention, rl Rollouts, depth
Depth), else by the metrics present, so a custom SDK run that logs `rollout/*` gets
the Rollouts tab as soon as they arrive, and any run gets the System tab once it has
`sys/...` metrics. Metrics (every key, in a grid) fits every run.
"""

from workbench.screens.tabs.attention import AttentionTab
from workbench.screens.tabs.config import ConfigTab
from workbench.screens.tabs.depth import DepthTab
from workbench.screens.tabs.events import EventsTab
from workbench.screens.tabs.logs import LogsTab
from workbench.screens.tabs.metrics import MetricsTab
from workbench.screens.tabs.overview import OverviewTab
from workbench.screens.tabs.rollouts import RolloutsTab
from workbench.screens.tabs.system import SystemTab

__all__ = ["AttentionTab", "ConfigTab", "DepthTab", "EventsTab", "LogsTab", "MetricsTab",
           "OverviewTab", "RolloutsTab", "SystemTab"]
