"""Known answers for genspace.continuous.losses.

- each noise-level distribution's draws follow its closed-form density of λ = −2 log σ (KS test),
  and the densities match the closed forms of the change of variables;
- with the exact denoiser of a Gaussian, the loss at fixed σ is weight × posterior variance;
- each weight formula equals the MSE of its own target computed directly (ε, v, velocity, EDM's F);
- p(λ)·w_ε(λ) integrates to 1, EDM's mode is the root of its stationarity equation, and flow
  matching / v-prediction with the cosine schedule give e^{−λ/2} (Kingma & Gao 2023).
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import scipy.optimize
import scipy.stats
import torch

from genspace.continuous.losses import (
    DiffusionLoss,
    DiscreteTimesteps,
    LogitNormalT,
    LogNormalSigma,
    LogUniformSigma,
    UniformT,
    Weighting,
    effective_weight_density,
    get_loss,
    loss_names,
    weight_density_table,
    weighted_x0_mse,
    weighting_names,
)
from genspace.continuous.parameterizations import EDMPrecond, EpsDenoiser, VDenoiser, VelocityDenoiser, X0Denoiser
from genspace.continuous.processes import CosineProcess, get_process
from genspace.core.gmm import GaussianMixture
from genspace.core.random import StackedGenerator

N_DRAWS = 20000


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _ks_pvalue(dist, lam_samples: np.ndarray, lo: float, hi: float) -> float:
    """KS p-value of λ draws against the CDF integrated from dist.log_density_log_snr on [lo, hi]."""
    grid = torch.linspace(lo, hi, 40001, dtype=torch.float64)
    dens = dist.log_density_log_snr(grid).exp()
    cdf = torch.cat([torch.zeros(1, dtype=torch.float64), torch.cumulative_trapezoid(dens, grid)])
    cdf = (cdf / cdf[-1]).numpy()
    g = grid.numpy()
    return scipy.stats.kstest(lam_samples, lambda v: np.interp(v, g, cdf)).pvalue


CONTINUOUS = {
    "uniform-vp": UniformT(get_process("vp")),
    "uniform-ve": UniformT(get_process("ve")),
    "uniform-edm": UniformT(get_process("edm")),
    "uniform-cosine": UniformT(get_process("cosine")),
    "uniform-flow": UniformT(get_process("flow")),
    "uniform-ddpm-linear": UniformT(get_process("ddpm-linear")),
    "lognormal": LogNormalSigma(-1.2, 1.2),
    "loguniform": LogUniformSigma(0.02, 100.0),
    "logitnormal-flow": LogitNormalT(0.0, 1.0),
    "logitnormal-cosine": LogitNormalT(0.5, 0.8, get_process("cosine")),
}


@pytest.mark.parametrize("name", list(CONTINUOUS))
def test_draws_follow_log_snr_density(name):
    dist = CONTINUOUS[name]
    sigma = dist.sample(N_DRAWS, generator=_gen(1), dtype=torch.float64)
    assert sigma.shape == (N_DRAWS,) and bool((sigma > 0).all())
    lam = (-2 * sigma.log()).numpy()
    lo, hi = lam.min() - 1.0, lam.max() + 1.0
    assert _ks_pvalue(dist, lam, lo, hi) > 1e-3
    # the density is normalized over its support
    grid = torch.linspace(-40, 40, 160001, dtype=torch.float64)
    assert torch.trapezoid(dist.log_density_log_snr(grid).exp(), grid).item() == pytest.approx(1.0, abs=2e-3)


def test_ks_check_has_power():
    """The same check rejects a density that is slightly off (P_std 1.2 vs 1.3)."""
    sigma = LogNormalSigma(-1.2, 1.2).sample(N_DRAWS, generator=_gen(1), dtype=torch.float64)
    lam = (-2 * sigma.log()).numpy()
    assert _ks_pvalue(LogNormalSigma(-1.2, 1.3), lam, lam.min() - 1, lam.max() + 1) < 1e-6


def test_log_snr_densities_closed_forms():
    lam = torch.linspace(-8.0, 7.0, 301, dtype=torch.float64)
    # EDM log-normal: λ ~ N(−2 P_mean, (2 P_std)²)
    ref = scipy.stats.norm.logpdf(lam.numpy(), loc=2.4, scale=2.4)
    np.testing.assert_allclose(LogNormalSigma().log_density_log_snr(lam).numpy(), ref, rtol=1e-12)
    # SD3 logit-normal under the flow process: log σ = logit t, so λ ~ N(−2m, 4s²) (generic path)
    ref = scipy.stats.norm.logpdf(lam.numpy(), loc=-0.6, scale=1.4)
    np.testing.assert_allclose(LogitNormalT(0.3, 0.7).log_density_log_snr(lam).numpy(), ref, rtol=1e-8, atol=1e-10)
    # VE with uniform t is log-uniform σ on [σ_lo, σ_hi]
    np.testing.assert_allclose(
        UniformT(get_process("ve")).log_density_log_snr(lam).numpy(),
        LogUniformSigma(0.02, 100.0).log_density_log_snr(lam).numpy(),
        rtol=1e-10,
    )
    # EDM process with uniform t = σ on [0.002, 80]: p(λ) = (σ/2)/(80 − 0.002)
    sig = torch.exp(-0.5 * lam)
    np.testing.assert_allclose(
        UniformT(get_process("edm")).log_density_log_snr(lam).numpy(), torch.log(sig / 2 / 79.998).numpy(), rtol=1e-10
    )
    # flow with uniform t on [0, 0.9999]: t = sigmoid(−λ/2), p(λ) = ½ sigmoid(λ/2) sigmoid(−λ/2) / 0.9999
    ref = torch.log(0.5 * torch.sigmoid(lam / 2) * torch.sigmoid(-lam / 2) / 0.9999)
    np.testing.assert_allclose(UniformT(get_process("flow")).log_density_log_snr(lam).numpy(), ref.numpy(), rtol=1e-8)
    # outside the support: −inf
    assert LogUniformSigma(0.02, 100.0).log_density_log_snr(torch.tensor([20.0])).item() == -math.inf
    assert UniformT(get_process("vp")).log_density_log_snr(torch.tensor([-30.0, 30.0])).isinf().all()


def test_discrete_timesteps():
    proc = get_process("ddpm-linear")
    dist = DiscreteTimesteps(proc)
    t = dist.sample_timesteps(N_DRAWS, generator=_gen(2))
    assert t.dtype == torch.int64 and t.min() >= 0 and t.max() <= 999
    counts = torch.bincount(t, minlength=1000).numpy()
    assert scipy.stats.chisquare(counts).pvalue > 1e-3
    # σ draws are exactly entries of the table, and reproduce the timestep draws
    sigma = dist.sample(N_DRAWS, generator=_gen(2), dtype=torch.float64)
    torch.testing.assert_close(sigma, proc.sigmas[t], rtol=0, atol=0)
    # histogram density: integral 1, mass 1/N in each atom's cell, atoms at −2 log σ_t
    lam_atoms, prob = dist.atoms()
    torch.testing.assert_close(lam_atoms, -2 * proc.sigmas.log())
    assert prob.sum().item() == pytest.approx(1.0)
    lam_sorted = torch.flip(lam_atoms, [0])
    edges = torch.cat([lam_sorted[:1] - 0.5 * (lam_sorted[1] - lam_sorted[0]), 0.5 * (lam_sorted[1:] + lam_sorted[:-1])])
    mid_cells = 0.5 * (edges[1:] + edges[:-1])
    dens = dist.log_density_log_snr(mid_cells).exp()
    torch.testing.assert_close(dens * (edges[1:] - edges[:-1]), torch.full_like(dens, 1e-3), rtol=1e-9, atol=0)
    assert _ks_pvalue(dist, (-2 * sigma.log()).numpy(), -12.0, 11.0) > 1e-3
    with pytest.raises(ValueError, match="DiscreteVPProcess"):
        DiscreteTimesteps(get_process("vp"))


class FixedSigma:
    """A noise 'distribution' at one σ (test helper)."""

    def __init__(self, sigma: float) -> None:
        self.sigma = sigma

    def sample(self, n, *, generator=None, device=None, dtype=torch.float32):
        return torch.full((n,), self.sigma, dtype=dtype, device=device)


def _x0_weight(name: str, s: float, sigma_data: float = 0.5, gamma: float = 5.0) -> float:
    """The x0-space weights, written out independently of the module."""
    return {
        "x0": 1.0,
        "eps": 1 / s**2,
        "inv-sigma2": 1 / s**2,
        "snr": 1 / s**2,
        "min-snr": min(1 / s**2, gamma),
        "v": (1 + s**2) / s**2,
        "velocity": ((1 + s) / s) ** 2,
        "edm": (s**2 + sigma_data**2) / (s * sigma_data) ** 2,
    }[name]


@pytest.mark.parametrize("sigma", [0.1, 0.6, 3.0])
def test_exact_denoiser_loss_is_weighted_posterior_variance(sigma):
    """E||x0 − E[x0|x]||² = tr(Σ − Σ(Σ + σ²I)⁻¹Σ) for x0 ~ N(μ, Σ), times the weight, per dim."""
    gmm = GaussianMixture.random(3, 1, seed=4, scale_range=(0.2, 1.0))
    cov = gmm.covs[0]
    post = cov - cov @ torch.linalg.solve(cov + sigma**2 * torch.eye(3, dtype=torch.float64), cov)
    mse = torch.trace(post).item() / 3
    x0 = gmm.sample(40000, generator=_gen(5))
    for name in weighting_names():
        per_ex = DiffusionLoss(FixedSigma(sigma), Weighting(name))(gmm, x0, generator=_gen(6))
        assert per_ex.shape == (40000,)
        expected = _x0_weight(name, sigma) * mse
        stderr = per_ex.std().item() / math.sqrt(per_ex.numel())
        assert abs(per_ex.mean().item() - expected) < 4 * stderr + 1e-12, name


class RandomNet(torch.nn.Module):
    """A fixed smooth random function net(x_t, t) (float64), standing in for a trained network."""

    def __init__(self, dim: int, seed: int = 0) -> None:
        super().__init__()
        g = _gen(seed)
        self.a = torch.randn(dim, dim, generator=g, dtype=torch.float64)
        self.b = torch.randn(dim, generator=g, dtype=torch.float64)

    def forward(self, x, t, **cond):
        return torch.tanh(x @ self.a + torch.log1p(t.abs())[:, None] * self.b) + 0.3 * x


def _batch(dim: int = 4, n: int = 64, lo: float = -1.5, hi: float = 1.5):
    g = _gen(7)
    x0 = torch.randn(n, dim, generator=g, dtype=torch.float64) * 0.7 + 0.2
    noise = torch.randn(n, dim, generator=g, dtype=torch.float64)
    sigma = torch.logspace(lo, hi, n, dtype=torch.float64)
    return x0, noise, sigma


def _mean(a: torch.Tensor) -> torch.Tensor:
    return a.square().mean(1)


def test_eps_weight_is_eps_mse():
    """||ε − ε̂||² of an ε-network under VP = the "eps" (and "inv-sigma2", "snr") weighted x0-MSE."""
    net, proc = RandomNet(4), get_process("vp")
    x0, noise, sigma = _batch()
    t = proc.t_of_sigma(sigma)
    x_t = proc.s(t)[:, None] * (x0 + sigma[:, None] * noise)
    direct = _mean(noise - net(x_t, t))
    for name in ("eps", "inv-sigma2", "snr"):
        torch.testing.assert_close(weighted_x0_mse(EpsDenoiser(net, proc), x0, sigma, noise, name), direct)


def test_v_weight_is_v_mse():
    """v = α ε − σ̃ x0 of the VP (cosine) process: ||v − v̂||² = (1 + 1/σ²)·x0-MSE."""
    net, proc = RandomNet(4, seed=1), get_process("cosine")
    x0, noise, sigma = _batch()
    t = proc.t_of_sigma(sigma)
    alpha = proc.s(t)[:, None]
    sigma_t = alpha * sigma[:, None]
    x_t = alpha * x0 + sigma_t * noise
    direct = _mean(alpha * noise - sigma_t * x0 - net(x_t, t))
    torch.testing.assert_close(weighted_x0_mse(VDenoiser(net, proc), x0, sigma, noise, "v"), direct)


def test_velocity_weight_is_flow_matching_mse():
    """x_t = (1 − t) x0 + t ε, u = ε − x0: ||u − û||² = ((1 + σ)/σ)²·x0-MSE."""
    net, proc = RandomNet(4, seed=2), get_process("flow")
    x0, noise, sigma = _batch(lo=-2.0, hi=3.0)
    t = sigma / (1 + sigma)
    x_t = (1 - t)[:, None] * x0 + t[:, None] * noise
    direct = _mean(noise - x0 - net(x_t, t))
    torch.testing.assert_close(weighted_x0_mse(VelocityDenoiser(net, proc), x0, sigma, noise, "velocity"), direct)


def test_edm_weight_is_f_space_mse():
    """EDM Eq. 8: λ(σ)·c_out² = 1, so the loss is ||F − (x0 − c_skip x)/c_out||²."""
    net = RandomNet(4, seed=3)
    sd = 0.5
    x0, noise, sigma = _batch()
    x = x0 + sigma[:, None] * noise
    c_skip = sd**2 / (sigma**2 + sd**2)
    c_out = sigma * sd / torch.sqrt(sigma**2 + sd**2)
    c_in = 1 / torch.sqrt(sigma**2 + sd**2)
    target = (x0 - c_skip[:, None] * x) / c_out[:, None]
    direct = _mean(net(c_in[:, None] * x, sigma.log() / 4) - target)
    torch.testing.assert_close(weighted_x0_mse(EDMPrecond(net, sd), x0, sigma, noise, "edm"), direct)


def test_min_snr_weight_clips_the_eps_loss():
    """Hang et al. 2023: ε-loss weight min(SNR, γ)/SNR; x0 weight γ below σ = 1/√γ, SNR above."""
    gamma = 5.0
    net, proc = RandomNet(4, seed=4), get_process("vp")
    x0, noise, sigma = _batch()
    t = proc.t_of_sigma(sigma)
    x_t = proc.s(t)[:, None] * (x0 + sigma[:, None] * noise)
    snr = sigma**-2
    direct = torch.minimum(snr, torch.tensor(gamma, dtype=torch.float64)) / snr * _mean(noise - net(x_t, t))
    torch.testing.assert_close(weighted_x0_mse(EpsDenoiser(net, proc), x0, sigma, noise, Weighting("min-snr", gamma=gamma)), direct)
    w = Weighting("min-snr", gamma=gamma)
    low, high = torch.tensor([0.01, 0.2, 0.44]), torch.tensor([0.45, 1.0, 30.0])
    torch.testing.assert_close(w.x0_weight(low), torch.full_like(low, gamma))
    torch.testing.assert_close(w.x0_weight(high), high**-2)
    lam = torch.linspace(-10, 10, 41, dtype=torch.float64)
    torch.testing.assert_close(w.eps_weight(lam), torch.clamp(gamma * torch.exp(-lam), max=1.0))


def test_x0_weight_is_plain_mse():
    net = RandomNet(4, seed=5)
    x0, noise, sigma = _batch()
    direct = _mean(net(x0 + sigma[:, None] * noise, sigma) - x0)  # the ve process has t(σ) ≠ σ, so use x0 net
    den = X0Denoiser(net, get_process("edm"))
    torch.testing.assert_close(weighted_x0_mse(den, x0, sigma, noise, "x0"), direct)


def test_all_weights_match_independent_formulas():
    sigma = torch.logspace(-2, 2, 33, dtype=torch.float64)
    for name in weighting_names():
        ref = torch.tensor([_x0_weight(name, s) for s in sigma.tolist()], dtype=torch.float64)
        torch.testing.assert_close(Weighting(name).x0_weight(sigma), ref)
        lam = -2 * sigma.log()
        torch.testing.assert_close(Weighting(name).eps_weight(lam), sigma**2 * ref)


def _grid():
    return torch.linspace(-30.0, 30.0, 24001, dtype=torch.float64)


@pytest.mark.parametrize("name", loss_names())
def test_effective_density_integrates_to_one(name):
    loss = get_loss(name)
    lam = _grid()
    dens = effective_weight_density(loss.noise_dist, loss.weighting, lam)
    assert dens.shape == lam.shape and bool((dens >= 0).all())
    assert torch.trapezoid(dens, lam).item() == pytest.approx(1.0, abs=1e-12)


def test_edm_effective_density_mode():
    """p(λ) = N(λ; 2.4, 2.4²), w_ε = (σ² + σ_d²)/σ_d² = 1 + 4 e^{−λ}:
    d/dλ log(p·w_ε) = −(λ − 2.4)/2.4² − 1/(1 + e^λ/4) = 0 has one root, the mode."""
    root = scipy.optimize.brentq(lambda l: -(l - 2.4) / 2.4**2 - 1 / (1 + math.exp(l) / 4), -10, 2.4)
    lam = _grid()
    loss = get_loss("edm")
    dens = effective_weight_density(loss.noise_dist, loss.weighting, lam)
    assert lam[dens.argmax()].item() == pytest.approx(root, abs=0.01)
    assert weight_density_table(["edm"], lam)["edm"]["mode"] == pytest.approx(root, abs=0.01)
    # sigma_data moves it: with σ_d = 1, w_ε = 1 + e^{−λ}
    root1 = scipy.optimize.brentq(lambda l: -(l - 2.4) / 2.4**2 - 1 / (1 + math.exp(l)), -10, 2.4)
    loss1 = get_loss("edm", sigma_data=1.0)
    dens1 = effective_weight_density(loss1.noise_dist, loss1.weighting, lam)
    assert lam[dens1.argmax()].item() == pytest.approx(root1, abs=0.01)


@pytest.mark.parametrize("name", ["flow", "v", "v-no-offset"])
def test_flow_and_cosine_v_weight_as_exp_minus_half_lambda(name):
    """Kingma & Gao 2023 (§5, Table 1): rectified flow with uniform t, and v-prediction with the cosine
    schedule (σ = tan(πt/2)), both have p(λ)·w_ε(λ) ∝ e^{−λ/2} on their support. iDDPM's offset
    s = 0.008 (the "v" recipe) only bends the curve at high λ (small t)."""
    if name == "v-no-offset":
        loss = DiffusionLoss(UniformT(CosineProcess(offset=0.0)), "v")
    else:
        loss = get_loss(name)
    hi = 0.0 if name == "v" else 20.0
    lam = torch.linspace(-15.0, hi, 3501, dtype=torch.float64)  # inside every support
    dens = effective_weight_density(loss.noise_dist, loss.weighting, lam)
    log_ratio = dens.log() + lam / 2
    assert (log_ratio.max() - log_ratio.min()).item() < (2e-4 if name == "v" else 1e-8)


def test_sd3_and_min_snr_effective_densities():
    lam = _grid()
    loss = get_loss("sd3")
    ref = torch.exp(-(lam**2) / 8) * (1 + torch.exp(-lam / 2)) ** 2  # N(0, 2²)·(1 + σ)²
    torch.testing.assert_close(effective_weight_density(loss.noise_dist, loss.weighting, lam), ref / torch.trapezoid(ref, lam))
    ddpm, msnr = get_loss("ddpm"), get_loss("min-snr")
    p = effective_weight_density(ddpm.noise_dist, ddpm.weighting, lam)  # w_ε = 1: p(λ) itself
    ref = p * torch.clamp(5.0 * torch.exp(-lam), max=1.0)
    torch.testing.assert_close(effective_weight_density(msnr.noise_dist, msnr.weighting, lam), ref / torch.trapezoid(ref, lam))


def test_weight_density_table_has_every_recipe():
    table = weight_density_table()
    assert list(table) == loss_names()
    for row in table.values():
        assert row["q10"] < row["median"] < row["q90"]
    assert table["flow"]["q90"] < table["sd3"]["q90"]  # SD3's logit-normal moves weight to mid λ


def test_every_recipe_runs_and_is_reproducible():
    gmm = GaussianMixture.ring()
    x0 = gmm.sample(8, generator=_gen(8), dtype=torch.float32)
    for name in loss_names():
        loss = get_loss(name)
        a = loss(gmm, x0, generator=_gen(9))
        b = loss(gmm, x0, generator=_gen(9))
        assert a.shape == (8,) and a.dtype == torch.float32 and bool(torch.isfinite(a).all()), name
        torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_per_sample_generators_make_losses_batch_independent():
    gmm = GaussianMixture.ring()
    x0 = gmm.sample(6, generator=_gen(10))
    loss = get_loss("edm")
    full = loss(gmm, x0, generator=StackedGenerator(range(6)))
    part = loss(gmm, x0[2:4], generator=StackedGenerator([2, 3]))
    torch.testing.assert_close(full[2:4], part)


def test_bad_names_and_inputs():
    with pytest.raises(ValueError, match="choose one of"):
        get_loss("edm2")
    with pytest.raises(ValueError, match="choose one of"):
        Weighting("snr2")
    with pytest.raises(ValueError, match="increasing"):
        effective_weight_density(LogNormalSigma(), "edm", torch.tensor([1.0, 0.0]))
    with pytest.raises(ValueError, match="p_std"):
        LogNormalSigma(0.0, 0.0)
    with pytest.raises(ValueError, match="sigma_min"):
        LogUniformSigma(1.0, 0.5)
    with pytest.raises(ValueError, match="x0 must have shape"):
        get_loss("edm")(GaussianMixture.ring(), torch.zeros(3))
