"""Pure, streaming signal detectors and summaries (no I/O, no torch).

Used by the tracking SDK (distribution records) and the training recipes (live
loss-spike detection). `staleness` and `tails.TailWindow` are used only by the tests
today: the RL trainer computes its staleness metrics inline.
"""

from .spikes import (
    BucketedSpikeDetector,
    Spike,
    SpikeConfig,
    SpikeDetector,
    recurrence_bucket,
)
from .staleness import StalenessSummary, StalenessTracker, sample_staleness
from .tails import TailSummary, TailWindow, summarize

__all__ = [
    "BucketedSpikeDetector",
    "Spike",
    "SpikeConfig",
    "SpikeDetector",
    "StalenessSummary",
    "StalenessTracker",
    "TailSummary",
    "TailWindow",
    "recurrence_bucket",
    "sample_staleness",
    "summarize",
]
