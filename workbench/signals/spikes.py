"""Streaming loss-spike detector.

Loss curves are noisy and trend downward, so a fixed threshold is useless and a
mean/std baseline is dragged around by the very spikes we want to see. Each value is
compared with a robust, causal forecast from recently *accepted* values (`_forecast`):
the level is the median of the last ``recent`` of them carried forward along the
window's robust slope, and sigma is the step noise, 1.4826 x MAD of successive
differences / sqrt(2), which a trend does not inflate. A spike needs both a large
score and a minimum relative jump, so that a very quiet curve (tiny sigma) does not
fire on harmless wiggles.

Why not the median and MAD of the whole window (what this module did before): on a
falling loss the median trails the current level by about half the window's decline
and the MAD counts that decline as noise, so on the tiny recipes' curves with their
noise divided by 8 (~1% a step) a 10% jump, 8 sigma of step noise, fired 25-41% of
the time; it now fires 92-96% (`wb bench spikes`).

Level-shift rule (what happens after a spike fires):

* The spike value is kept out of the baseline window (it still counts in the noise
  estimate: a loss that "spikes" every few steps is a noisy one).
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
    and their quieter views; 5.5 and 5.75 fired on a hard batch both recorded runs met
    at step 1013, in the quieter views, and 5.5 on adamw-tiny's step 1373), and
    ``min_rel_jump`` is only a floor for very quiet curves. It used to be 0.25, which
    hid a 20% jump of 13 MADs: a jump that clears the score is a spike however small the
    noise made it look. ``recent`` 10 follows the quieter views' curvature best (5 is
    noisier, 20 lags).
    """

    window: int = 100  # values for the noise estimate and the slope
    threshold: float = 6.0  # robust sigmas of step noise above the forecast level
    min_rel_jump: float = 0.05  # value must also exceed level * (1 + min_rel_jump)
    warmup: int = 50  # finite points seen before any detection
    persist: int = 10  # consecutive elevated points that count as a level shift
    recent: int = 10  # the last `recent` accepted values set the level (along the slope)

    def __post_init__(self) -> None:
        for name in ("window", "warmup", "persist", "recent"):
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
    baseline: float  # forecast level the value was compared against
    sigma: float  # robust sigma of the step noise
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


def _forecast(values: Sequence[float], recent: int,
              noise: Sequence[float]) -> tuple[float, float]:
    """Level expected for the next value, from the accepted `values` (oldest first), and
    the robust sigma of the step noise, from `noise` (every recent value, spikes too);
    the median and MAD of `values` while fewer than 3. O(len(values)), causal.

    * sigma: 1.4826 x MAD of successive differences / sqrt(2). A difference cancels the
      trend, so a falling loss does not pass its own decline off as noise (the MAD of the
      values themselves counts the window's whole range).
    * slope: median of the differences at lag n // 2, divided by the lag (a robust linear
      fit over the window); 0 with fewer than 2 x ``recent`` values (after a level shift).
    * level: median of the last ``recent`` values, each carried forward along the slope to
      the next step. A median of the whole window trails a falling loss by half the
      window's decline, which hid jumps many sigmas high.
    """
    n = len(values)
    if n < 3:
        return _robust(values)
    y = np.asarray(values, dtype=float)
    h = n // 2
    slope = float(np.median(y[h:] - y[:-h])) / h if n >= 2 * recent else 0.0
    k = min(n, recent)
    level = float(np.median(y[-k:] + slope * np.arange(k, 0, -1)))
    d = np.diff(np.asarray(noise if len(noise) >= 3 else y, dtype=float))
    sigma = _MAD_TO_SIGMA * float(np.median(np.abs(d - np.median(d)))) / math.sqrt(2)
    return level, sigma


class SpikeDetector:
    """Streaming upward-spike detector; call :meth:`update` once per logged step.

    ``log_scale=True`` runs the same rules on log(value) (values must be positive): the
    level and noise are of log values, so the threshold is in robust sigmas of the
    *relative* noise, and the relative floor reads log(value) > log(level) +
    log1p(min_rel_jump). That suits a loss whose noise scales with its level and has a
    long upper tail near zero (a task loss that has nearly reached 0, where 10x the
    median is ordinary noise); :class:`BucketedSpikeDetector` uses it. For a loss far
    from 0 with a few percent of noise the two scales agree to first order. Events are
    reported in value units either way (baseline = exp(level); sigma = baseline x
    the log-scale sigma; score in log-scale sigmas).

    ``spread=True`` takes as sigma at least the spread of the accepted values themselves
    (1.4826 x MAD around their median, what this detector used alone before): for a
    signal that mixes levels which drift apart (the loss over its recurrence bucket's
    level, in :class:`BucketedSpikeDetector`), the step differences miss noise that the
    spread shows. It is wider than the step noise on a trending curve, so off by default.
    """

    def __init__(self, config: SpikeConfig | None = None, log_scale: bool = False,
                 spread: bool = False) -> None:
        self.config = config if config is not None else SpikeConfig()
        self.log_scale, self.spread = log_scale, spread
        self.reset()

    def reset(self) -> None:
        """Forget everything, including warm-up progress."""
        self._window: deque[float] = deque(maxlen=self.config.window)
        self._noise: deque[float] = deque(maxlen=self.config.window)  # every finite value
        self._pending: list[float] = []  # consecutive elevated values after a spike
        self._seen = 0  # finite values seen
        self._in_nan = False

    def state_dict(self) -> dict[str, Any]:
        """Everything `update` depends on, for checkpoints (exact resume)."""
        return {"window": list(self._window), "pending": list(self._pending),
                "seen": self._seen, "in_nan": self._in_nan, "noise": list(self._noise)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.reset()
        self._window.extend(float(v) for v in state["window"])
        # A state from before "noise" existed: start it from the accepted values.
        self._noise.extend(float(v) for v in state.get("noise", state["window"]))
        self._pending[:] = [float(v) for v in state["pending"]]
        self._seen, self._in_nan = int(state["seen"]), bool(state["in_nan"])

    def __deepcopy__(self, memo: dict[int, Any]) -> SpikeDetector:
        """A copy through `state_dict` (what a checkpoint keeps); far faster than the
        generic deepcopy, which matters when a benchmark forks it at every step."""
        twin = SpikeDetector(self.config, self.log_scale, self.spread)
        twin.load_state_dict(self.state_dict())
        return twin

    def _forecast(self) -> tuple[float, float]:
        """Level and sigma the next value is judged by (module docstring)."""
        level, sigma = _forecast(self._window, self.config.recent, self._noise)
        if self.spread:
            sigma = max(sigma, _robust(self._window)[1])
        return level, sigma

    @property
    def baseline(self) -> float:
        """The level the next value will be compared with (nan before any value)."""
        med = self._forecast()[0]
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
        med, sigma = self._forecast()
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
            self._noise.append(value)
            return None

        med, sigma = self._forecast()
        self._noise.append(value)  # after the forecast: every value, spikes included
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
    own level, while the noise estimate, warm-up and level-shift rule are shared by all
    steps, so a rare bucket is watched after ``min_bucket`` values of its own instead of
    a whole warm-up. The log scale keeps the shared noise estimate honest when the loss
    nears 0 (depth-tiny's task loss: 10x its median is ordinary there). The inner
    detector runs with ``spread=True``: the bucket medians trail a falling loss by
    different amounts (a rare bucket's values span hundreds of steps), so the normalized
    losses of different draws drift apart, which step differences alone took for quiet
    (16 events in depth-tiny's 1,500 clean steps, 14 of them while its task loss
    collapses, against 2 with the spread).

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
        self.inner = SpikeDetector(config, log_scale=True, spread=True)
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
