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
_TINY = 1e-30  # log_scale: a value of 0 (or below) counts as this


@dataclass
class SpikeConfig:
    """Tuning knobs for :class:`SpikeDetector`; defaults suit per-step LM loss.

    Chosen with `wb bench spikes` (bench/spikes.py) on recorded curves: the robust score
    decides (``threshold``: the lowest with no false positive in 4,000 recorded LM steps
    and their quieter views; 5.0 fired on the held-out adamw-tiny), and
    ``min_rel_jump`` is only a floor for very quiet curves. It used to be 0.25, which
    hid a 20% jump of 13 MADs: a jump that clears the score is a spike however small
    the noise made it look.
    """

    window: int = 100  # rolling window of accepted values
    threshold: float = 5.5  # robust-sigma distance from the rolling median
    min_rel_jump: float = 0.05  # value must also exceed median * (1 + min_rel_jump)
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
    """Streaming upward-spike detector; call :meth:`update` once per logged step.

    ``log_scale=True`` runs the same rules on log(value) (values must be positive): the
    median and MAD are of log values, so the threshold is in robust sigmas of the
    *relative* noise, and the relative floor reads log(value) > log(median) +
    log1p(min_rel_jump). That suits a loss whose noise scales with its level and has a
    long upper tail near zero (a task loss that has nearly reached 0, where 10x the
    median is ordinary noise); :class:`BucketedSpikeDetector` uses it. For a loss far
    from 0 with a few percent of noise the two scales agree to first order. Events are
    reported in value units either way (baseline = exp(median); sigma = baseline x
    the log-scale sigma; score in log-scale sigmas).
    """

    def __init__(self, config: SpikeConfig | None = None, log_scale: bool = False) -> None:
        self.config = config if config is not None else SpikeConfig()
        self.log_scale = log_scale
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

    def __deepcopy__(self, memo: dict[int, Any]) -> SpikeDetector:
        """A copy through `state_dict` (what a checkpoint keeps); far faster than the
        generic deepcopy, which matters when a benchmark forks it at every step."""
        twin = SpikeDetector(self.config, self.log_scale)
        twin.load_state_dict(self.state_dict())
        return twin

    @property
    def baseline(self) -> float:
        """Current rolling median of accepted values (nan before any)."""
        med = _robust(list(self._window))[0]
        return math.exp(med) if self.log_scale and not math.isnan(med) else med

    @property
    def elevated(self) -> bool:
        """True while the last value(s) are elevated after a spike (a pending level shift):
        callers that keep their own baselines leave such values out, as this one does."""
        return bool(self._pending)

    def _is_elevated(self, value: float, med: float, sigma: float) -> bool:
        cfg = self.config
        if self.log_scale:  # values are logs: the relative floor is an additive one
            floor = med + math.log1p(cfg.min_rel_jump)
        else:  # abs(med) keeps the relative rule meaningful for zero/negative baselines
            floor = med + abs(med) * cfg.min_rel_jump
        return value > med + cfg.threshold * sigma and value > floor

    def _spike(self, step: int, value: float, med: float, sigma: float) -> Spike:
        score = (value - med) / sigma if sigma > 0 else math.inf
        if self.log_scale:
            value, med, sigma = math.exp(value), math.exp(med), math.exp(med) * sigma
        rel = value / med - 1 if med != 0 else math.inf
        return Spike(step, value, med, sigma, score, rel, "spike")

    def _plateau(self, med: float, sigma: float) -> tuple[float, float]:
        """Median and sigma of the pending (elevated) values. The sigma is at least the
        window's, scaled to the plateau's level: a few pending values can agree by chance
        to a tiny MAD, and the noise does not shrink because the level moved."""
        p_med, p_sigma = _robust(self._pending)
        scale = 1.0 if self.log_scale or med == 0 else abs(p_med / med)
        return p_med, max(p_sigma, sigma * scale)

    def _nan_event(self, step: int, value: float) -> Spike:
        med, sigma = _robust(list(self._window))
        if self.log_scale and not math.isnan(med):
            med, sigma = math.exp(med), math.exp(med) * sigma
        return Spike(step, value, med, sigma, math.nan, math.nan, "nan")

    def update(self, step: int, value: float) -> Spike | None:
        """Feed one value; return a :class:`Spike` if this step is an event."""
        value = float(value)
        if not math.isfinite(value):
            # One event per run of non-finite values; never pollutes the window.
            if self._in_nan:
                return None
            self._in_nan = True
            return self._nan_event(step, value)
        self._in_nan = False
        if self.log_scale:
            value = math.log(max(value, _TINY))

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
            p_med, p_sigma = self._plateau(med, sigma)
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


def recurrence_bucket(recurrence: float) -> int:
    """Quarter-octave bucket of a recurrence count: round(4 * log2(r)).

    Every draw up to 9 has its own bucket, where the loss changes fastest with r; from
    10 on neighbours share one (10-11, 12-13, ...), where the loss hardly depends on r.
    A mean over micro-batches (grad accumulation) is bucketed the same way."""
    return round(4 * math.log2(max(float(recurrence), 1.0)))


class BucketedSpikeDetector:
    """Spike detection for a loss whose level depends on a known per-step covariate.

    A recurrent-depth model draws its recurrence count r every step, and a short draw's
    loss is higher by design (fewer iterations): one baseline over all steps flags short
    draws as spikes, and watching long draws only leaves short ones unwatched. Here
    every bucket of the covariate (:func:`recurrence_bucket`) keeps the rolling median of
    its own recent accepted losses, and the loss *divided by its bucket's median* goes
    to one :class:`SpikeDetector` on the log scale: the jump is judged against the draw's
    own level, while the noise estimate (MAD), warm-up and level-shift rule are shared
    by all steps, so a rare bucket is watched after ``min_bucket`` values of its own
    instead of a whole warm-up. The log scale keeps the shared noise estimate honest
    when the loss nears 0 (depth-tiny's task loss: 10x its median is ordinary there).

    A bucket with fewer than ``min_bucket`` values only learns its level. Values the
    inner detector finds elevated (a spike, or a pending level shift) stay out of the
    bucket medians, as out of its own window; after a level shift the medians follow
    the new level within ``bucket_window`` values per bucket and the normalized loss
    drifts back down, which never fires (only rises do).
    """

    def __init__(self, config: SpikeConfig | None = None, bucket_window: int = 32,
                 min_bucket: int = 5) -> None:
        if bucket_window <= 0 or not 0 < min_bucket <= bucket_window:
            raise ValueError("need 0 < min_bucket <= bucket_window, got "
                             f"{min_bucket!r}, {bucket_window!r}")
        self.inner = SpikeDetector(config, log_scale=True)
        self.config = self.inner.config
        self.bucket_window, self.min_bucket = bucket_window, min_bucket
        self._levels: dict[int, deque[float]] = {}

    def reset(self) -> None:
        """Forget everything: every bucket's level and the inner detector."""
        self.inner.reset()
        self._levels.clear()

    def state_dict(self) -> dict[str, Any]:
        """Everything `update` depends on, for checkpoints (exact resume)."""
        return {"inner": self.inner.state_dict(),
                "levels": [[k, list(v)] for k, v in sorted(self._levels.items())]}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore `state_dict`. A plain SpikeDetector's state (a checkpoint written before
        buckets existed) holds no bucket levels: start over, warm-up included."""
        self.reset()
        if "inner" not in state:
            return
        self.inner.load_state_dict(state["inner"])
        for key, values in state["levels"]:
            self._level(int(key)).extend(float(v) for v in values)

    def __deepcopy__(self, memo: dict[int, Any]) -> BucketedSpikeDetector:
        twin = BucketedSpikeDetector(self.config, self.bucket_window, self.min_bucket)
        twin.load_state_dict(self.state_dict())
        return twin

    def _level(self, bucket: int) -> deque[float]:
        return self._levels.setdefault(bucket, deque(maxlen=self.bucket_window))

    def update(self, step: int, value: float, bucket: int) -> Spike | None:
        """Feed one value and its bucket; return a :class:`Spike` (in loss units, the
        baseline being the bucket's level) if this step is an event."""
        value = float(value)
        level = self._level(bucket)
        ref = float(np.median(level)) if len(level) >= self.min_bucket else math.nan
        if not math.isfinite(value):
            return self._scaled(self.inner.update(step, value), value, ref)
        if not ref > 0:  # too few values yet (or a non-positive level): learn only
            level.append(value)
            return None
        event = self.inner.update(step, value / ref)
        if event is None and not self.inner.elevated:
            level.append(value)
        return self._scaled(event, value, ref)

    @staticmethod
    def _scaled(event: Spike | None, value: float, ref: float) -> Spike | None:
        """The inner event (on loss / level) in loss units."""
        if event is None:
            return None
        base, sigma = ref * event.baseline, ref * event.sigma
        rel = value / base - 1 if event.kind == "spike" and base != 0 else event.rel_jump
        return Spike(event.step, value, base, sigma, event.score, rel, event.kind)
