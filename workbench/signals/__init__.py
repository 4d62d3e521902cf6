"""Pure, streaming signal detectors and summaries (no I/O, no torch).

Used by the tracking SDK (distribution records), training recipes (live loss-spike
detection) and the async-RL recipe (staleness accounting).
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
