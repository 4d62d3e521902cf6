"""Streaming loss-spike detector.

Loss curves are noisy and trend downward, so a fixed threshold is useless and a
mean/std baseline is dragged around by the very spikes we want to see. We use a
rolling median with a robust sigma (1.4826 * MAD) over recently *accepted*
values, and require both a large z-score and a minimum relative jump so that a
very quiet curve (tiny sigma) does not fire on harmless wiggles.

Level-shift rule (what happens after a spike fires):

* The spike value is kept out of the baseline window.
* Following values that are still elevated against the old baseline are
  collected in a "pending" list and do not fire again.
* If ``persist`` consecutive values (counting the spike) stay elevated, the
  loss has moved to a new level: the window is rebuilt from the pending values
  and detection continues from there, with no further event.
* If a value comes back to normal, the pending list is discarded (a transient
  spike) and the value joins the window as usual.
* While elevated, a *clearly higher* jump relative to the pending values (same
  threshold and min_rel_jump rules, applied to the pending median / sigma)
  fires a new spike and restarts the pending list from that value. We chose to
  fire here because a second jump on top of a plateau is new information.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

_MAD_TO_SIGMA = 1.4826  # makes MAD a consistent sigma estimate for Gaussian noise


@dataclass
class SpikeConfig:
    """Tuning knobs for :class:`SpikeDetector`; defaults suit per-step LM loss."""

    window: int = 100  # rolling window of accepted values
    threshold: float = 6.0  # robust-sigma distance from the rolling median
    min_rel_jump: float = 0.25  # value must also exceed median * (1 + min_rel_jump)
    warmup: int = 50  # finite points seen before any detection
    persist: int = 10  # consecutive elevated points that count as a level shift

    def __post_init__(self) -> None:
        for name in ("window", "warmup", "persist"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v <= 0:
                raise ValueError(f"SpikeConfig.{name} must be a positive int, got {v!r}")
        if not self.threshold > 0:
            raise ValueError(f"SpikeConfig.threshold must be > 0, got {self.threshold!r}")
        if not self.min_rel_jump >= 0:
            raise ValueError(f"SpikeConfig.min_rel_jump must be >= 0, got {self.min_rel_jump!r}")


@dataclass(frozen=True)
class Spike:
    """One detected event. ``kind`` is ``"spike"`` or ``"nan"`` (non-finite value)."""

    step: int
    value: float
    baseline: float  # rolling median the value was compared against
    sigma: float  # robust sigma of that window
    score: float  # (value - baseline) / sigma; inf when sigma == 0
    rel_jump: float  # value / baseline - 1
    kind: str = "spike"


def _robust(values: Sequence[float]) -> tuple[float, float]:
    """Median and robust sigma (1.4826 * MAD); nan for an empty sequence."""
    if not values:
        return math.nan, math.nan
    arr = np.asarray(values, dtype=float)
    med = float(np.median(arr))
    return med, _MAD_TO_SIGMA * float(np.median(np.abs(arr - med)))


class SpikeDetector:
    """Streaming upward-spike detector; call :meth:`update` once per logged step."""

    def __init__(self, config: SpikeConfig | None = None) -> None:
        self.config = config if config is not None else SpikeConfig()
        self.reset()

    def reset(self) -> None:
        """Forget everything, including warm-up progress."""
        self._window: deque[float] = deque(maxlen=self.config.window)
        self._pending: list[float] = []  # consecutive elevated values after a spike
        self._seen = 0  # finite values seen
        self._in_nan = False

    def state_dict(self) -> dict[str, Any]:
        """Everything `update` depends on, for checkpoints (exact resume)."""
        return {"window": list(self._window), "pending": list(self._pending),
                "seen": self._seen, "in_nan": self._in_nan}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.reset()
        self._window.extend(float(v) for v in state["window"])
        self._pending[:] = [float(v) for v in state["pending"]]
        self._seen, self._in_nan = int(state["seen"]), bool(state["in_nan"])

    @property
    def baseline(self) -> float:
        """Current rolling median of accepted values (nan before any)."""
        return _robust(list(self._window))[0]

    def _is_elevated(self, value: float, med: float, sigma: float) -> bool:
        # abs(med) keeps the relative rule meaningful for zero/negative baselines.
        cfg = self.config
        return value > med + cfg.threshold * sigma and value > med + abs(med) * cfg.min_rel_jump

    @staticmethod
    def _spike(step: int, value: float, med: float, sigma: float) -> Spike:
        score = (value - med) / sigma if sigma > 0 else math.inf
        rel = value / med - 1 if med != 0 else math.inf
        return Spike(step, value, med, sigma, score, rel, "spike")

    def update(self, step: int, value: float) -> Spike | None:
        """Feed one value; return a :class:`Spike` if this step is an event."""
        value = float(value)
        if not math.isfinite(value):
            # One event per run of non-finite values; never pollutes the window.
            if self._in_nan:
                return None
            self._in_nan = True
            med, sigma = _robust(list(self._window))
            return Spike(step, value, med, sigma, math.nan, math.nan, "nan")
        self._in_nan = False

        self._seen += 1
        if self._seen <= self.config.warmup:
            self._window.append(value)
            return None

        med, sigma = _robust(list(self._window))
        if not self._is_elevated(value, med, sigma):
            self._pending.clear()  # back to normal: the spike was transient
            self._window.append(value)
            return None

        event: Spike | None = None
        if not self._pending:
            event = self._spike(step, value, med, sigma)
            self._pending.append(value)
        else:
            # Elevated phase: only a clearly higher jump over the plateau fires again.
            p_med, p_sigma = _robust(self._pending)
            if self._is_elevated(value, p_med, p_sigma):
                event = self._spike(step, value, p_med, p_sigma)
                self._pending = [value]
            else:
                self._pending.append(value)

        # The pending run counts the spike itself; at `persist` it is a level shift:
        # adopt the new level as the baseline, silently.
        if len(self._pending) >= self.config.persist:
            self._window.clear()
            self._window.extend(self._pending)
            self._pending.clear()
        return event
