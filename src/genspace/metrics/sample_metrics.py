"""Two-sample metrics between generated samples and data, with the floor of the estimator.

Inputs are point sets (N, D) (images and other (N, ...) tensors are flattened to (N, D); a 1-D
tensor (N,) is N points in one dimension). Arithmetic runs in float64 on the inputs' device;
results are Python floats. Pairwise distances are computed in row chunks, so 10k × 10k sets
need only ``chunk_size × M`` floats at a time.

- :func:`energy_distance` — Székely & Rizzo (2013), E = 2E|X−Y| − E|X−X'| − E|Y−Y'|
  (the within terms as U-statistics, i.e. unbiased).
- :func:`mmd` — Gaussian-kernel MMD², unbiased U-statistic (Gretton et al. 2012, Eq. 3).
- :func:`sliced_wasserstein` — the sliced 2-Wasserstein distance over random directions
  (Rabin et al. 2011; Bonneel et al. 2015).
- :func:`metric_with_floor` — a metric next to its value between two real sets of the same size
  (a finite-sample estimator is not 0 even for a perfect model; the floor says what "perfect"
  reads as).
- :func:`mean_log_density` — the mean of log p(samples) under a known density, with its
  standard error.
"""

from __future__ import annotations

import math
from typing import Callable, NamedTuple, Optional, Sequence

import torch

from genspace.core.random import Generator, randn

_DEFAULT_BLOCK = 1 << 17  # elements of one chunk of the pairwise matrix (1 MB in float64: cache-friendly)


def _as_points(x, name: str) -> torch.Tensor:
    x = torch.as_tensor(x)
    if x.ndim == 0:
        raise ValueError(f"{name} must be a set of points (N, D), got a scalar")
    if x.ndim == 1:
        x = x[:, None]
    return x.reshape(x.shape[0], -1).to(torch.float64)


def _check_pair(x, y, min_n: int = 2) -> tuple[torch.Tensor, torch.Tensor]:
    x, y = _as_points(x, "x"), _as_points(y, "y")
    if x.shape[1] != y.shape[1]:
        raise ValueError(f"x and y must have the same dimension, got x {tuple(x.shape)} and y {tuple(y.shape)}")
    if x.shape[0] < min_n or y.shape[0] < min_n:
        raise ValueError(f"need at least {min_n} points in each set, got {x.shape[0]} and {y.shape[0]}")
    return x, y.to(x.device)


def _sq_dists(a: torch.Tensor, b: torch.Tensor, a2: torch.Tensor, b2: torch.Tensor) -> torch.Tensor:
    """(n, m) squared distances ||a_i − b_j||², clamped at 0 (float64 expansion)."""
    return (a2[:, None] + b2[None, :] - 2 * a @ b.T).clamp_(min=0)


def _pair_sum(
    a: torch.Tensor,
    b: Optional[torch.Tensor],
    fn: Callable[[torch.Tensor], torch.Tensor],
    chunk_size: Optional[int],
) -> torch.Tensor:
    """Σ_{i,j} fn(||a_i − b_j||²); with b None: Σ_{i≠j} over pairs of a (the diagonal left out)."""
    same = b is None
    b = a if same else b
    a2, b2 = (a * a).sum(1), (b * b).sum(1)
    rows = chunk_size if chunk_size is not None else max(1, _DEFAULT_BLOCK // max(1, b.shape[0]))
    if rows < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
    total = a.new_zeros(())
    for start in range(0, a.shape[0], rows):
        stop = min(start + rows, a.shape[0])
        vals = fn(_sq_dists(a[start:stop], b, a2[start:stop], b2))  # (rows, M)
        if same:
            idx = torch.arange(start, stop, device=a.device)
            vals[idx - start, idx] = 0.0
        total = total + vals.sum()
    return total


def energy_distance(x, y, *, chunk_size: Optional[int] = None, unbiased: bool = True) -> float:
    """Energy distance 2E|X−Y| − E|X−X'| − E|Y−Y'| (Székely & Rizzo 2013, Eq. 2).

    The cross term averages all n·m pairs; the within terms average the n(n−1) (m(m−1)) pairs
    i ≠ j, so the estimate is unbiased: its expectation is 0 when x and y come from the same
    law (it can then be slightly negative). Euclidean norm in D dimensions.

    Args:
        x: (N, D) points; y: (M, D) points (N, M >= 2).
        chunk_size: rows of the pairwise matrix per chunk (default: ~131k entries per chunk).
        unbiased: False gives the V-statistic (the within terms average all n² pairs, the zero
            diagonal included). It is ≥ 0, and for two samples of one law its expectation is
            E|X−X'|/n + E|Y−Y'|/m > 0: a floor that can be used as a yardstick ("within 3× its
            floor"), which the unbiased estimate (mean 0, either sign) cannot.
    """
    x, y = _check_pair(x, y)
    n, m = x.shape[0], y.shape[0]
    dist = torch.sqrt
    xy = _pair_sum(x, y, dist, chunk_size) / (n * m)
    xx = _pair_sum(x, None, dist, chunk_size) / (n * (n - 1) if unbiased else n * n)
    yy = _pair_sum(y, None, dist, chunk_size) / (m * (m - 1) if unbiased else m * m)
    return float(2 * xy - xx - yy)


def median_bandwidth(x, y, *, max_points: int = 1000) -> float:
    """Median heuristic: the median pairwise distance of the pooled first ``max_points`` points of each set."""
    x, y = _check_pair(x, y)
    pool = torch.cat([x[:max_points], y[:max_points]])
    sq = _sq_dists(pool, pool, (pool * pool).sum(1), (pool * pool).sum(1))
    iu = torch.triu_indices(pool.shape[0], pool.shape[0], offset=1, device=pool.device)
    h = float(torch.sqrt(sq[iu[0], iu[1]].median()))
    if not h > 0:
        raise ValueError("median pairwise distance is 0 (the points coincide); pass bandwidths explicitly")
    return h


def mmd(x, y, bandwidths: Optional[Sequence[float]] = None, *, chunk_size: Optional[int] = None, unbiased: bool = True) -> float:
    """Unbiased MMD² with a Gaussian kernel (Gretton et al. 2012, Lemma 6 / Eq. 3).

    k(a, b) = mean_h exp(−||a − b||²/(2h²)) over the bandwidths h (a mixture of Gaussian
    kernels, still characteristic); ``bandwidths=None`` uses the single median-heuristic
    bandwidth of :func:`median_bandwidth`.

        MMD²_u = 1/(n(n−1)) Σ_{i≠j} k(x_i, x_j) + 1/(m(m−1)) Σ_{i≠j} k(y_i, y_j) − 2/(nm) Σ_{i,j} k(x_i, y_j)

    Its expectation is 0 when x and y have the same law (it can be slightly negative).
    ``unbiased=False`` gives the V-statistic MMD²_b (Gretton et al. 2012, Eq. 5: the diagonal
    k(x_i, x_i) = 1 included), which is ≥ 0 and has a positive floor.
    """
    x, y = _check_pair(x, y)
    if bandwidths is None:
        bandwidths = [median_bandwidth(x, y)]
    hs = [float(h) for h in bandwidths]
    if len(hs) == 0 or any(not h > 0 for h in hs):
        raise ValueError(f"bandwidths must be a non-empty list of positive numbers, got {list(bandwidths)}")

    def kernel(sq: torch.Tensor) -> torch.Tensor:
        return sum(torch.exp(-sq / (2 * h * h)) for h in hs) / len(hs)

    n, m = x.shape[0], y.shape[0]
    if unbiased:
        kxx = _pair_sum(x, None, kernel, chunk_size) / (n * (n - 1))
        kyy = _pair_sum(y, None, kernel, chunk_size) / (m * (m - 1))
    else:  # the diagonal adds k(0) = 1 per point
        kxx = (_pair_sum(x, None, kernel, chunk_size) + n) / (n * n)
        kyy = (_pair_sum(y, None, kernel, chunk_size) + m) / (m * m)
    kxy = _pair_sum(x, y, kernel, chunk_size) / (n * m)
    return float(kxx + kyy - 2 * kxy)


def _quantiles(sorted_vals: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    """Linear interpolation of sorted columns (n, P) at levels q (K,) ∈ [0, 1] → (K, P)."""
    n = sorted_vals.shape[0]
    pos = q * (n - 1)
    lo = pos.floor().long().clamp(max=n - 1)
    hi = (lo + 1).clamp(max=n - 1)
    w = (pos - lo.to(pos.dtype))[:, None]
    return sorted_vals[lo] * (1 - w) + sorted_vals[hi] * w


def sliced_wasserstein(x, y, n_projections: int = 128, *, generator: Generator = None) -> float:
    """Sliced 2-Wasserstein distance SW₂ = (E_θ W₂²(θᵀX, θᵀY))^{1/2}, θ uniform on the sphere.

    Each 1-D W₂² is computed from sorted projections: with equal sizes the mean of squared
    differences of the order statistics (exact for the empirical laws); with unequal sizes the
    two empirical quantile functions are interpolated linearly at K = max(n, m) levels
    (k + ½)/K. Directions are normalized N(0, I) draws from ``generator``.

    Returns SW₂ (a distance); SW₂² estimates E_θ W₂²(θ), e.g. |m|²/D between N(0, I) and N(m, I).
    """
    x, y = _check_pair(x, y, min_n=1)
    if n_projections < 1:
        raise ValueError(f"n_projections must be >= 1, got {n_projections}")
    d = x.shape[1]
    theta = randn((d, n_projections), generator=generator, dtype=torch.float64, device=x.device)
    theta = theta / theta.norm(dim=0, keepdim=True)  # (D, P) unit columns
    px = torch.sort(x @ theta, dim=0).values  # (N, P)
    py = torch.sort(y @ theta, dim=0).values  # (M, P)
    if px.shape[0] != py.shape[0]:
        k = max(px.shape[0], py.shape[0])
        q = (torch.arange(k, dtype=torch.float64, device=x.device) + 0.5) / k
        px, py = _quantiles(px, q), _quantiles(py, q)
    return math.sqrt(float((px - py).square().mean()))


class MetricWithFloor(NamedTuple):
    """A metric's value on generated samples and its floor between two real sets of the same size."""

    value: float
    floor: float

    @property
    def ratio(self) -> float:
        """value / floor (∞ if the floor is not positive)."""
        return self.value / self.floor if self.floor > 0 else math.inf


def metric_with_floor(metric_fn: Callable, samples, reference, heldout) -> MetricWithFloor:
    """(metric(samples, reference), metric(heldout, reference)).

    ``heldout`` is a second real set independent of ``reference`` with as many points as
    ``samples``, so the floor is what a perfect generator would score at this sample size.
    """
    samples, heldout = _as_points(samples, "samples"), _as_points(heldout, "heldout")
    if samples.shape != heldout.shape:
        raise ValueError(
            f"samples and heldout must have the same shape for a fair floor, got {tuple(samples.shape)} "
            f"and {tuple(heldout.shape)}"
        )
    return MetricWithFloor(float(metric_fn(samples, reference)), float(metric_fn(heldout, reference)))


class MeanWithError(NamedTuple):
    mean: float
    stderr: float


def mean_log_density(samples, log_prob_fn: Callable[[torch.Tensor], torch.Tensor], *, batch_size: int = 8192) -> MeanWithError:
    """Mean of log p(samples) under a known density and its standard error s/√N (nats).

    ``log_prob_fn`` maps a (b, ...) batch of samples to (b,) log-densities; it is called on
    batches of ``batch_size`` samples (samples keep their shape and dtype).
    """
    samples = torch.as_tensor(samples)
    if samples.ndim == 0 or samples.shape[0] < 2:
        raise ValueError(f"need at least 2 samples, got shape {tuple(samples.shape)}")
    parts = []
    for start in range(0, samples.shape[0], batch_size):
        chunk = samples[start : start + batch_size]
        lp = torch.as_tensor(log_prob_fn(chunk))
        if lp.shape != (chunk.shape[0],):
            raise ValueError(f"log_prob_fn must return shape ({chunk.shape[0]},), got {tuple(lp.shape)}")
        parts.append(lp.to(torch.float64))
    lp = torch.cat(parts)
    return MeanWithError(float(lp.mean()), float(lp.std(unbiased=True) / math.sqrt(lp.numel())))


__all__ = [
    "energy_distance",
    "mmd",
    "median_bandwidth",
    "sliced_wasserstein",
    "metric_with_floor",
    "MetricWithFloor",
    "mean_log_density",
    "MeanWithError",
]
