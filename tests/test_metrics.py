"""Known answers for genspace.metrics: closed forms for Gaussians, unbiasedness, chunking."""

from __future__ import annotations

import math

import pytest
import torch
from scipy.stats import norm

from genspace.metrics import (
    energy_distance,
    mean_log_density,
    median_bandwidth,
    metric_with_floor,
    mmd,
    sliced_wasserstein,
)


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _energy_closed_form(delta: float) -> float:
    """N(0,1) vs N(δ,1): E|Z| for Z ~ N(μ, s²) is s√(2/π) e^{−μ²/(2s²)} + μ(1 − 2Φ(−μ/s));
    X − Y ~ N(−δ, 2), X − X' ~ N(0, 2), so ED = 2[(2/√π) e^{−δ²/4} + δ(2Φ(δ/√2) − 1)] − 4/√π."""
    cross = 2 / math.sqrt(math.pi) * math.exp(-(delta**2) / 4) + delta * (2 * norm.cdf(delta / math.sqrt(2)) - 1)
    return 2 * cross - 4 / math.sqrt(math.pi)


def _mmd_closed_form(delta: float, h: float) -> float:
    """Gaussian kernel exp(−z²/(2h²)), N(0,1) vs N(δ,1): E k = h/√(h²+2)·exp(−μ²/(2(h²+2))) for a
    difference N(μ, 2); MMD² = 2h/√(h²+2)·(1 − exp(−δ²/(2(h²+2))))."""
    c = h / math.sqrt(h * h + 2)
    return 2 * c * (1 - math.exp(-(delta**2) / (2 * (h * h + 2))))


def _replicates(fn, n: int, reps: int, delta: float, seed: int) -> torch.Tensor:
    g = _gen(seed)
    vals = []
    for _ in range(reps):
        x = torch.randn(n, 1, generator=g, dtype=torch.float64)
        y = torch.randn(n, 1, generator=g, dtype=torch.float64) + delta
        vals.append(fn(x, y))
    return torch.tensor(vals, dtype=torch.float64)


@pytest.mark.parametrize("delta", [0.0, 1.0])
def test_energy_distance_is_unbiased_at_tiny_n(delta):
    """With n = m = 4 the V-statistic would be off by ½E|X−X'| ≈ 0.56; the U-statistic is not."""
    vals = _replicates(energy_distance, 4, 2000, delta, seed=1)
    se = vals.std().item() / math.sqrt(len(vals))
    assert abs(vals.mean().item() - _energy_closed_form(delta)) < 4 * se
    assert 4 * se < 0.15  # the check would catch the V-statistic's bias


def test_energy_distance_closed_form_large_n():
    g = _gen(2)
    x = torch.randn(3000, generator=g, dtype=torch.float64)  # 1-D input: N points in one dimension
    y = torch.randn(3000, generator=g, dtype=torch.float64) + 1.0
    assert energy_distance(x, y) == pytest.approx(_energy_closed_form(1.0), rel=0.06)


def test_energy_distance_floor_is_small():
    g = _gen(3)
    ref, held, same = (torch.randn(2000, 2, generator=g) for _ in range(3))
    shifted = torch.randn(2000, 2, generator=g) + torch.tensor([0.5, 0.0])
    res = metric_with_floor(energy_distance, same, ref, held)
    assert abs(res.floor) < 5e-3 and abs(res.value) < 5e-3
    bad = metric_with_floor(energy_distance, shifted, ref, held)
    assert bad.value > 20 * abs(bad.floor) and bad.ratio > 20


@pytest.mark.parametrize("delta", [0.0, 1.0])
def test_mmd_unbiased_and_closed_form(delta):
    h = 1.0
    vals = _replicates(lambda a, b: mmd(a, b, [h]), 4, 2000, delta, seed=4)
    se = vals.std().item() / math.sqrt(len(vals))
    assert abs(vals.mean().item() - _mmd_closed_form(delta, h)) < 4 * se


def test_mmd_large_n_and_bandwidth_mixture():
    g = _gen(5)
    x = torch.randn(2000, 1, generator=g, dtype=torch.float64)
    y = torch.randn(2000, 1, generator=g, dtype=torch.float64) + 1.0
    assert mmd(x, y, [1.0]) == pytest.approx(_mmd_closed_form(1.0, 1.0), rel=0.1)
    # a kernel mixture averages the single-bandwidth values
    expected = 0.5 * (_mmd_closed_form(1.0, 0.5) + _mmd_closed_form(1.0, 2.0))
    assert mmd(x, y, [0.5, 2.0]) == pytest.approx(expected, rel=0.1)
    # same law: about 0
    z = torch.randn(2000, 1, generator=g, dtype=torch.float64)
    assert abs(mmd(x, z)) < 3e-3
    assert median_bandwidth(x, z) == pytest.approx(math.sqrt(2) * norm.ppf(0.75), rel=0.1)  # median |N(0,2)|


def test_sliced_wasserstein_gaussians():
    """SW₂² between N(0, I) and N(m, I) = E_θ (m·θ)² = |m|²/D."""
    g = _gen(6)
    d = 4
    m = torch.tensor([1.0, -0.5, 0.5, 1.0], dtype=torch.float64)
    x = torch.randn(2000, d, generator=g, dtype=torch.float64)
    y = torch.randn(2000, d, generator=g, dtype=torch.float64) + m
    sw = sliced_wasserstein(x, y, n_projections=1500, generator=_gen(7))
    assert sw**2 == pytest.approx(m.square().sum().item() / d, rel=0.08)
    # unequal sizes go through quantile interpolation and agree
    sw_uneq = sliced_wasserstein(x, y[:1500], n_projections=1500, generator=_gen(7))
    assert sw_uneq**2 == pytest.approx(m.square().sum().item() / d, rel=0.08)
    # reproducible with the same generator
    assert sliced_wasserstein(x, y, 50, generator=_gen(8)) == sliced_wasserstein(x, y, 50, generator=_gen(8))


def test_sliced_wasserstein_in_one_dimension_is_w2():
    """In 1-D every direction is ±1: SW₂ = W₂ = RMS of sorted differences (equal sizes)."""
    g = _gen(9)
    x = torch.randn(500, 1, generator=g, dtype=torch.float64)
    y = torch.rand(500, 1, generator=g, dtype=torch.float64) * 3
    w2 = torch.sqrt((x.sort(0).values - y.sort(0).values).square().mean()).item()
    assert sliced_wasserstein(x, y, 5, generator=g) == pytest.approx(w2, rel=1e-12)
    # a set against itself repeated twice: identical quantile functions up to interpolation
    assert sliced_wasserstein(x, torch.cat([x, x]), 5, generator=g) < 0.05


def test_chunking_gives_the_same_result():
    g = _gen(10)
    x = torch.randn(301, 3, generator=g)
    y = torch.randn(257, 3, generator=g) + 0.3
    for fn in (energy_distance, lambda a, b, **k: mmd(a, b, [0.7, 1.5], **k)):
        ref = fn(x, y, chunk_size=10_000)  # one chunk: unchunked
        for chunk in (1, 7, 64, None):
            assert fn(x, y, chunk_size=chunk) == pytest.approx(ref, rel=1e-12, abs=1e-14)


def test_images_are_flattened():
    g = _gen(11)
    x = torch.randn(50, 3, 4, 4, generator=g)
    y = torch.randn(60, 3, 4, 4, generator=g)
    assert energy_distance(x, y) == pytest.approx(energy_distance(x.flatten(1), y.flatten(1)), rel=1e-12)


def test_mean_log_density_of_standard_normal():
    """E log N(x; 0, 1) = −½ log 2π − ½, Var = Var(x²/2) = ½."""
    g = _gen(12)
    x = torch.randn(20000, generator=g, dtype=torch.float64)

    def log_prob(v):
        return -0.5 * v**2 - 0.5 * math.log(2 * math.pi)

    res = mean_log_density(x, log_prob, batch_size=3000)
    assert res.stderr == pytest.approx(math.sqrt(0.5 / 20000), rel=0.05)
    assert abs(res.mean - (-0.5 * math.log(2 * math.pi) - 0.5)) < 4 * res.stderr
    assert mean_log_density(x, log_prob) == pytest.approx(res, rel=1e-12)


def test_bad_inputs():
    x = torch.zeros(10, 2)
    with pytest.raises(ValueError, match="same dimension"):
        energy_distance(x, torch.zeros(10, 3))
    with pytest.raises(ValueError, match="at least 2"):
        mmd(x, torch.zeros(1, 2), [1.0])
    with pytest.raises(ValueError, match="bandwidths"):
        mmd(torch.randn(5, 2), torch.randn(5, 2), [0.0])
    with pytest.raises(ValueError, match="n_projections"):
        sliced_wasserstein(x, x, 0)
    with pytest.raises(ValueError, match="same shape"):
        metric_with_floor(energy_distance, torch.zeros(10, 2), x, torch.zeros(12, 2))
    with pytest.raises(ValueError, match="shape"):
        mean_log_density(torch.randn(5, 2), lambda v: v)


def test_v_statistics_match_brute_force_and_have_positive_floor():
    """unbiased=False averages all n² within-pairs (diagonal included): check against a double loop."""
    g = torch.Generator().manual_seed(5)
    x, y = torch.randn(7, 3, generator=g, dtype=torch.float64), torch.randn(5, 3, generator=g, dtype=torch.float64)

    def mean_pairs(a, b, f):
        return sum(f(ai, bj) for ai in a for bj in b) / (len(a) * len(b))

    dist = lambda a, b: torch.linalg.norm(a - b).item()  # noqa: E731
    expected = 2 * mean_pairs(x, y, dist) - mean_pairs(x, x, dist) - mean_pairs(y, y, dist)
    assert abs(energy_distance(x, y, unbiased=False) - expected) < 1e-12
    h = 1.3
    k = lambda a, b: math.exp(-((a - b) ** 2).sum().item() / (2 * h * h))  # noqa: E731
    expected = mean_pairs(x, x, k) + mean_pairs(y, y, k) - 2 * mean_pairs(y, x, k)
    assert abs(mmd(x, y, [h], unbiased=False) - expected) < 1e-12
    # same law: the V-statistic floor is positive and its mean is E|X−X'|·(1/n + 1/m) because the
    # unbiased part has mean 0; for X, X' ~ N(0, I_2), X − X' ~ N(0, 2I) so E|X−X'| = √2·√(π/2) = √π.
    n, reps = 200, 40
    floors = [energy_distance(torch.randn(n, 2, generator=g), torch.randn(n, 2, generator=g), unbiased=False) for _ in range(reps)]
    assert min(floors) > 0
    expected = 2 * math.sqrt(math.pi) / n
    mean = sum(floors) / reps
    se = (sum((f - mean) ** 2 for f in floors) / (reps - 1)) ** 0.5 / reps**0.5
    assert abs(mean - expected) < 4 * se, (mean, expected, se)
