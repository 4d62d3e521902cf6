"""Series reduction for drawing: min/max downsampling and debiased EMA smoothing.

Pure numpy and O(n), so that the dashboard can redraw a 1,000,000-point run
on every live refresh. No Textual here: the charts (workbench.screens.widgets),
`wb watch` and the benches share these functions.
"""

from __future__ import annotations

import math

import numpy as np

__all__ = ["downsample_minmax", "ema"]


def downsample_minmax(
    x: np.ndarray, y: np.ndarray, buckets: int
) -> tuple[np.ndarray, np.ndarray]:
    """Reduce (x, y) to at most 2*buckets points, keeping each bucket's min and max.

    Why min/max and not a mean or a stride: a loss spike is one point among
    thousands; averaging a bucket or taking every k-th point would erase exactly
    the event the dashboard exists to show. Keeping the lowest and the highest
    point of every bucket keeps the envelope of the curve, so a spike always
    reaches the drawn line.

    - Points where x or y is NaN are dropped first (the store keeps NaN losses
      with a flag; a chart cannot draw them and they must not become a bucket's
      min or max).
    - If what is left has at most 2*buckets points it is returned as is.
    - Otherwise the points are split into `buckets` equal index ranges (sizes
      differ by at most one) and each contributes its min and its max point,
      the two in their original order, so the result keeps the input order
      (x order for the monotonic step or wall-time axes the dashboard draws).
      A bucket whose min and max are the same point contributes it once.

    Arrays are returned as new arrays of the input dtypes (never views that
    alias the caller's data).
    """
    if buckets < 1:
        raise ValueError(f"buckets must be >= 1, got {buckets}")
    x = np.asarray(x)
    y = np.asarray(y)
    if x.shape != y.shape or x.ndim != 1:
        raise ValueError(f"x and y must be 1-D arrays of one length, got {x.shape} and {y.shape}")
    keep = ~np.isnan(y)
    if np.issubdtype(x.dtype, np.floating):
        keep &= ~np.isnan(x)
    if not keep.all():
        x, y = x[keep], y[keep]
    n = y.size
    if n <= 2 * buckets:
        return x.copy(), y.copy()

    # Equal index ranges: bucket b covers [starts[b], starts[b+1]).
    starts = (np.arange(buckets, dtype=np.int64) * n) // buckets
    sizes = np.diff(np.append(starts, n))
    mins = np.minimum.reduceat(y, starts)
    maxs = np.maximum.reduceat(y, starts)
    # First index in each bucket that holds its min (max): the hits, in index
    # order, searched from the bucket start. Every bucket has at least one hit.
    hit_min = np.flatnonzero(y == np.repeat(mins, sizes))
    hit_max = np.flatnonzero(y == np.repeat(maxs, sizes))
    i_min = hit_min[np.searchsorted(hit_min, starts)]
    i_max = hit_max[np.searchsorted(hit_max, starts)]
    pairs = np.sort(np.stack([i_min, i_max], axis=1), axis=1).ravel()
    # A flat bucket yields the same index twice; keep it once.
    idx = pairs[np.r_[True, pairs[1:] != pairs[:-1]]]
    return x[idx], y[idx]


# exp(-LOG_RANGE) is the smallest decay factor a chunk of the vectorised EMA may
# reach; 1e-100 keeps the rescaled partial sums far from float64 overflow.
_LOG_RANGE = 100.0 * math.log(10.0)


def ema(y: np.ndarray, alpha: float) -> np.ndarray:
    """Exponential moving average, debiased like TensorBoard's smoothing.

    `alpha` is the weight of each new point (0 < alpha <= 1; alpha = 1 is no
    smoothing). TensorBoard's "smoothing" slider is 1 - alpha.

    Why debiased: a plain EMA started at 0 (or at the first value) drags the
    start of the curve towards its seed, which looks like a real trend at the
    very place people read (warm-up). Dividing by 1 - (1-alpha)^k, k the number
    of points seen, makes the first smoothed value equal the first point and
    removes that bias.

    Non-finite points (NaN, inf) are skipped, as TensorBoard does: they do not
    enter the average and come out as NaN at their positions.

    Vectorised: the series is cut into chunks short enough for the decay
    powers to stay in float64 range; inside a chunk the EMA is a rescaled
    cumulative sum, and the carry between chunks is a shift (see below).
    """
    if not 0.0 < alpha <= 1.0:
        raise ValueError(f"alpha must be in (0, 1], got {alpha}")
    y = np.asarray(y, dtype=np.float64)
    out = np.full(y.shape, np.nan)
    finite = np.isfinite(y)
    v = y[finite]
    n = v.size
    if n == 0:
        return out
    if alpha == 1.0:
        out[finite] = v
        return out
    decay = 1.0 - alpha
    log_decay = math.log(decay)
    chunk = int(max(1, min(n, _LOG_RANGE // -log_decay)))
    rows = -(-n // chunk)
    padded = np.zeros(rows * chunk)
    padded[:n] = v
    blocks = padded.reshape(rows, chunk)
    t = np.arange(chunk, dtype=np.float64)
    grow = np.exp(-log_decay * t)  # decay^-t, at most 1e100
    shrink = np.exp(log_decay * t)  # decay^t
    # Biased EMA from zero inside each chunk: alpha * sum_k decay^(t-k) v_k.
    # In place, because at 1e6 points every temporary costs milliseconds.
    local = blocks
    local *= grow
    np.cumsum(local, axis=1, out=local)
    local *= shrink * alpha
    # Carry the state across chunks: s_end(j) = local_end(j) + decay^chunk * s_end(j-1).
    # With more than one chunk, decay^chunk is about 1e-100, so the carry
    # reaching chunk j is end(j-1) plus a ~1e-100 correction; terms two chunks
    # back (~1e-200) are far below float64 resolution. That makes the carry a vectorised shift.
    if rows > 1:
        ends = local[:, -1].copy()
        carries = np.zeros(rows)
        carries[1:] = ends[:-1]
        carries[2:] += decay**chunk * ends[:-2]
        local += carries[:, None] * (shrink * decay)
    smoothed = local.reshape(-1)[:n]
    # Debias: divide by 1 - decay^k; past the point where decay^k < 1e-17 the
    # divisor is 1.0 in float64, so only that prefix is touched.
    m = int(min(n, math.ceil(39.2 / -log_decay) + 1))
    k = np.arange(1, m + 1, dtype=np.float64)
    smoothed[:m] /= -np.expm1(k * log_decay)  # 1 - decay^k, accurate for small alpha
    if n == y.size:
        return smoothed.reshape(y.shape)
    out[finite] = smoothed
    return out
