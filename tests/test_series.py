"""workbench.series: min/max downsampling keeps spikes and order; the EMA is TensorBoard's."""

from __future__ import annotations

import time

import numpy as np
import pytest

from workbench.series import downsample_minmax, ema


def _loss(n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    x = np.arange(n, dtype=np.float64)
    y = 3.0 * np.exp(-x / (n / 4)) + 1.0 + 0.05 * rng.standard_normal(n)
    return x, y


def test_spike_is_kept() -> None:
    """One spike among 100k points survives a reduction to 100 buckets, with its step."""
    x, y = _loss(100_000)
    y[61_234] = 50.0
    y[7_777] = -20.0  # a dip is an event too
    xs, ys = downsample_minmax(x, y, 100)
    assert ys.max() == 50.0 and xs[ys.argmax()] == 61_234
    assert ys.min() == -20.0 and xs[ys.argmin()] == 7_777


def test_order_is_preserved_and_size_bounded() -> None:
    for n, buckets in ((100_000, 100), (12_345, 77), (1_001, 500), (10, 3)):
        x, y = _loss(n, seed=n)
        xs, ys = downsample_minmax(x, y, buckets)
        assert xs.size <= 2 * buckets
        assert np.all(np.diff(xs) > 0), "points come out in x order, no duplicates"
        # every kept point is a real point of the input
        assert np.array_equal(ys, y[xs.astype(np.int64)])


def test_every_bucket_keeps_its_min_and_max() -> None:
    x, y = _loss(10_000, seed=3)
    xs, ys = downsample_minmax(x, y, 10)
    for b in range(10):
        lo, hi = b * 1_000, (b + 1) * 1_000
        inside = (xs >= lo) & (xs < hi)
        assert ys[inside].max() == y[lo:hi].max()
        assert ys[inside].min() == y[lo:hi].min()


def test_flat_bucket_contributes_one_point() -> None:
    x = np.arange(1_000.0)
    y = np.ones(1_000)
    xs, ys = downsample_minmax(x, y, 10)
    assert xs.size == 10 and np.all(ys == 1.0)


def test_short_series_returned_as_is_and_nan_dropped() -> None:
    x = np.arange(6.0)
    y = np.array([1.0, np.nan, 3.0, 4.0, np.nan, 6.0])
    xs, ys = downsample_minmax(x, y, 10)
    assert xs.tolist() == [0.0, 2.0, 3.0, 5.0] and ys.tolist() == [1.0, 3.0, 4.0, 6.0]
    # A NaN never becomes a bucket's min or max in a long series either.
    x, y = _loss(10_000)
    y[::7] = np.nan
    xs, ys = downsample_minmax(x, y, 50)
    assert not np.isnan(ys).any() and xs.size <= 100
    assert ys.max() == np.nanmax(y)


def test_the_callers_arrays_are_not_aliased() -> None:
    x, y = np.arange(4.0), np.arange(4.0)
    xs, ys = downsample_minmax(x, y, 10)
    xs[0] = 99.0
    assert x[0] == 0.0


def test_bad_arguments() -> None:
    with pytest.raises(ValueError):
        downsample_minmax(np.arange(3.0), np.arange(3.0), 0)
    with pytest.raises(ValueError):
        downsample_minmax(np.arange(3.0), np.arange(4.0), 2)


def test_million_points_downsample_fast() -> None:
    """The dashboard redraws a 1M-point run on a live refresh; target well under 50 ms."""
    x, y = _loss(1_000_000)
    y[654_321] = 100.0
    downsample_minmax(x, y, 160)  # warm up
    best = min(_timed(lambda: downsample_minmax(x, y, 160)) for _ in range(5))
    xs, ys = downsample_minmax(x, y, 160)
    print(f"\ndownsample_minmax: 1,000,000 points -> {xs.size} in {best * 1e3:.1f} ms")
    assert ys.max() == 100.0 and xs.size <= 320


def _timed(fn) -> float:
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def _ema_reference(y: np.ndarray, alpha: float) -> np.ndarray:
    """TensorBoard's smoothing loop (weight = 1 - alpha), skipping non-finite points."""
    out = np.full(y.size, np.nan)
    last, seen = 0.0, 0
    for i, v in enumerate(y.tolist()):
        if not np.isfinite(v):
            continue
        last = last * (1 - alpha) + alpha * v
        seen += 1
        out[i] = last / (1 - (1 - alpha) ** seen)
    return out


@pytest.mark.parametrize("alpha", [1.0, 0.999, 0.6, 0.1, 0.01, 1e-4])
def test_ema_matches_tensorboard(alpha: float) -> None:
    rng = np.random.default_rng(1)
    y = 10.0 + rng.standard_normal(5_000)
    y[[3, 400, 4_000]] = np.nan
    y[9] = np.inf
    got, want = ema(y, alpha), _ema_reference(y, alpha)
    assert np.array_equal(np.isnan(got), np.isnan(want))
    np.testing.assert_allclose(got[~np.isnan(got)], want[~np.isnan(want)], rtol=1e-9)


def test_ema_is_debiased_and_validates() -> None:
    out = ema(np.array([5.0, 5.0, 5.0]), 0.1)
    np.testing.assert_allclose(out, [5.0, 5.0, 5.0])  # no drag towards 0 at the start
    assert ema(np.array([]), 0.5).size == 0
    for bad in (0.0, -0.1, 1.5):
        with pytest.raises(ValueError):
            ema(np.arange(3.0), bad)


def test_ema_million_points() -> None:
    _, y = _loss(1_000_000)
    t = time.perf_counter()
    out = ema(y, 0.001)
    print(f"\nema: 1,000,000 points in {(time.perf_counter() - t) * 1e3:.1f} ms")
    np.testing.assert_allclose(out[:2_000], _ema_reference(y[:2_000], 0.001), rtol=1e-9)
