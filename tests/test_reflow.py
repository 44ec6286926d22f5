"""Reflow: PF-ODE couplings, the flow-matching loss on fixed pairs, straightness (Liu et al. 2023)."""

import pytest
import torch

from genspace.continuous.parameterizations import VelocityDenoiser
from genspace.continuous.reflow import (
    DenoiserVelocity,
    ReflowLoss,
    ReflowModel,
    _karras,
    _local_heun,
    make_reflow_pairs,
    reflow_loss,
    sample_flow,
    straightness,
    train_reflow,
)
from genspace.core.gmm import GaussianMixture

F64 = torch.float64


def _gaussian(mean, std):
    mean = torch.as_tensor(mean, dtype=F64)[None]
    return GaussianMixture([1.0], mean, torch.as_tensor(std, dtype=F64)[None] ** 2)


def _noise(n, d, seed):
    return torch.randn(n, d, generator=torch.Generator().manual_seed(seed), dtype=F64)


# ------------------------------------------------------------------------------ couplings
def test_pairs_match_closed_form_pf_ode_map_of_a_gaussian():
    # data N(μ, diag s²): the PF-ODE keeps c = (x − μ)/√(s² + σ²) fixed, so from x(σ_max) = σ_max·z
    # the final denoising step gives x0 = μ + s²/√(s² + σ_min²) · (σ_max z − μ)/√(s² + σ_max²).
    mu, s = torch.tensor([1.0, -0.5], dtype=F64), torch.tensor([0.3, 1.2], dtype=F64)
    gmm = _gaussian(mu, s)
    z = _noise(64, 2, 0)
    smin, smax = 0.002, 80.0
    expected = mu + s**2 / torch.sqrt(s**2 + smin**2) * (smax * z - mu) / torch.sqrt(s**2 + smax**2)
    z_out, x0 = make_reflow_pairs(gmm, z, method="dopri5", sigma_min=smin, sigma_max=smax, rtol=1e-8, atol=1e-8)
    assert torch.equal(z_out, z)
    assert torch.allclose(x0, expected, atol=1e-6, rtol=0)
    # Heun (2nd order) converges to the same map: 4× the steps → ~16× smaller error
    errs = [
        float((make_reflow_pairs(gmm, z, method="heun", nfe=nfe, sigma_min=smin, sigma_max=smax)[1] - expected).abs().max())
        for nfe in (81, 321)
    ]
    assert errs[1] < 3e-3 and errs[0] / errs[1] > 12


def test_pairs_are_deterministic_and_converge_to_the_pf_ode_map():
    gmm = GaussianMixture.ring(4, radius=2.0, std=0.2)
    z = _noise(128, 2, 1)
    kw = dict(sigma_min=0.002, sigma_max=80.0)
    a = make_reflow_pairs(gmm, z, method="heun", nfe=41, **kw)[1]
    assert torch.equal(a, make_reflow_pairs(gmm, z, method="heun", nfe=41, **kw)[1])
    # the same Heun (EDM Alg. 1, Karras grid) as the local fallback
    local = _local_heun(gmm, 80.0 * z, _karras(21, 0.002, 80.0), {})
    assert torch.allclose(a, local, atol=1e-10)
    ref = make_reflow_pairs(gmm, z, method="dopri5", rtol=1e-9, atol=1e-9, **kw)[1]
    err = {nfe: (make_reflow_pairs(gmm, z, method="heun", nfe=nfe, **kw)[1] - ref).norm(dim=1) for nfe in (81, 321)}
    assert float(err[321].max()) < 1e-2
    # second order: 4× the steps → ~16× smaller (typical) error
    assert float(err[81].median() / err[321].median()) > 12


def test_custom_sampler_and_bad_inputs():
    gmm = GaussianMixture.ring(4)
    z = _noise(4, 2, 2)
    _, x0 = make_reflow_pairs(gmm, z, sampler=lambda d, n: d(n * 3.0, torch.full((4,), 3.0, dtype=F64)))
    assert torch.allclose(x0, gmm.denoise(3.0 * z, 3.0))
    with pytest.raises(ValueError, match="sigma_min"):
        make_reflow_pairs(gmm, z, sigma_min=1.0, sigma_max=0.5)
    with pytest.raises(ValueError, match="nfe"):
        make_reflow_pairs(gmm, z, method="heun", nfe=0)
    with pytest.raises(ValueError, match="floating"):
        make_reflow_pairs(gmm, z.long())


# ------------------------------------------------------------------------------ velocity adapter
def test_denoiser_velocity_closed_form_and_round_trip():
    # data N(0, s²) in 1-D: x_t = (1−t)x0 + t z, v(x, t) = E[z − x0 | x_t]
    #   = (t − (1−t)s²) / ((1−t)²s² + t²) · x
    s = 0.6
    gmm = _gaussian([0.0], [s])
    v = DenoiserVelocity(gmm)
    x = _noise(16, 1, 3)
    for t in (0.05, 0.3, 0.7, 0.99):
        tt = torch.full((16,), t, dtype=F64)
        expected = (t - (1 - t) * s**2) / ((1 - t) ** 2 * s**2 + t**2) * x
        assert torch.allclose(v(x, tt), expected, atol=1e-12)
    # genspace's flow "velocity" adapter turns the velocity back into the same denoiser
    mix = GaussianMixture.ring(4, radius=1.5, std=0.3)
    back = VelocityDenoiser(DenoiserVelocity(mix), "flow")
    xs = _noise(16, 2, 4) * 2.0
    for sigma in (0.05, 1.0, 20.0):
        sig = torch.full((16,), sigma, dtype=F64)
        assert torch.allclose(back(xs, sig), mix.denoise(xs, sig), atol=1e-9)


# ------------------------------------------------------------------------------ loss
def test_reflow_loss_known_values():
    # deterministic linear coupling x0 = a·z: along x_t = ((1−t)a + t)·z the target z − x0 equals
    # v*(x, t) = (1 − a)·x / ((1−t)a + t), so the loss of v* is 0 and of v* + δ is exactly δ².
    a, delta = 0.4, 0.3
    z = _noise(32, 3, 5)
    x0 = a * z
    t = torch.rand(32, generator=torch.Generator().manual_seed(6), dtype=F64)
    v_star = lambda x, t: (1 - a) * x / ((1 - t) * a + t)[:, None]  # noqa: E731
    assert float(reflow_loss(v_star, z, x0, t).abs().max()) < 1e-24
    shifted = reflow_loss(lambda x, t: v_star(x, t) + delta, z, x0, t)
    assert shifted.shape == (32,) and torch.allclose(shifted, torch.full_like(shifted, delta**2))
    # ReflowLoss draws t from its generator and evaluates the same loss
    net = lambda x, t: x * t[:, None]  # noqa: E731
    for sampling in ("uniform", "logit-normal"):
        loss = ReflowLoss(time_sampling=sampling)
        t_drawn = loss.sample_t(32, generator=torch.Generator().manual_seed(7), dtype=F64)
        assert ((t_drawn > 0) & (t_drawn < 1)).all()
        got = loss(net, z, x0, generator=torch.Generator().manual_seed(7))
        assert torch.allclose(got, reflow_loss(net, z, x0, t_drawn))
    with pytest.raises(ValueError, match=r"'beta'.*\['uniform', 'logit-normal'\]"):
        ReflowLoss(time_sampling="beta")
    with pytest.raises(ValueError, match="t must have shape"):
        reflow_loss(net, z, x0, t[:3])


# ------------------------------------------------------------------------------ straightness
@pytest.mark.parametrize("method", ["euler", "heun", "rk4"])
def test_straight_field_has_zero_straightness(method):
    # v(x, t) = (x − μ)/(t + a) is constant along its trajectories x_t = μ + (t + a)·c (straight lines)
    mu, a = torch.tensor([0.5, -1.0], dtype=F64), 0.25
    v = lambda x, t: (x - mu) / (t[:, None] + a)  # noqa: E731
    z = _noise(32, 2, 8)
    s = straightness(v, z, n_steps=8, method=method)
    assert s.shape == (32,) and float(s.max()) < 1e-26
    x0 = sample_flow(v, z, n_steps=1)  # one Euler step is exact: x0 = μ + a(z − μ)/(1 + a)
    assert torch.allclose(x0, mu + a * (z - mu) / (1 + a), atol=1e-14)


def test_point_mass_flow_is_straight():
    # data = δ_μ: v(x, t) = (x − μ)/t exactly, trajectories x_t = μ + t(z − μ) (away from t = 0)
    mu = torch.tensor([[0.3, 0.7]], dtype=F64)
    v = DenoiserVelocity(lambda x, sigma: mu.expand_as(x))
    s = straightness(v, _noise(16, 2, 9), n_steps=16, t_min=0.01, t_max=0.99)
    assert float(s.max()) < 1e-24


def test_straightness_of_gaussian_flow_closed_form():
    # data N(0, s²) (1-D): x_t = g(t)·z with g(t) = √((1−t)²s² + t²), so per example
    # S = z²·(∫₀¹ g'(t)² dt − (1 − s)²), > 0 since g is linear in t only for s = 0 (a point mass).
    s = 0.5
    tt = torch.linspace(0, 1, 200001, dtype=F64)
    g_prime = (tt - (1 - tt) * s**2) / torch.sqrt((1 - tt) ** 2 * s**2 + tt**2)
    integral = float(torch.trapezoid(g_prime**2, tt))
    z = _noise(8, 1, 10)
    expected = z[:, 0] ** 2 * (integral - (1 - s) ** 2)
    got = straightness(DenoiserVelocity(_gaussian([0.0], [s])), z, n_steps=128)
    assert float(expected.min()) > 0
    assert torch.allclose(got, expected, rtol=2e-3, atol=1e-6)


def test_bad_straightness_inputs():
    v = lambda x, t: x  # noqa: E731
    z = _noise(2, 2, 0)
    with pytest.raises(ValueError, match="t_min"):
        straightness(v, z, t_min=0.5, t_max=0.2)
    with pytest.raises(ValueError, match="n_steps"):
        straightness(v, z, n_steps=0)
    with pytest.raises(ValueError, match=r"'rk45'.*\['euler', 'heun', 'midpoint', 'rk4'\]"):
        straightness(v, z, method="rk45")


# ------------------------------------------------------------------------------ reflow end to end
def _velocity_net():
    try:
        from genspace.nets.mlp import TimeMLP
    except ImportError:  # pragma: no cover - the shared MLP is expected to exist
        TimeMLP = None
    torch.manual_seed(0)
    if TimeMLP is not None:
        return TimeMLP(2, hidden=32, depth=2, embed_dim=32, fourier_scale=4.0)

    class Tiny(torch.nn.Module):  # pragma: no cover
        def __init__(self):
            super().__init__()
            self.f = torch.nn.Sequential(torch.nn.Linear(3, 128), torch.nn.SiLU(), torch.nn.Linear(128, 128),
                                         torch.nn.SiLU(), torch.nn.Linear(128, 2))

        def forward(self, x, t):
            return self.f(torch.cat([x, t[:, None]], 1))

    return Tiny()


def test_reflow_straightens_a_multimodal_flow():
    # 1-rectified flow = the exact PF-ODE of the independent coupling (the oracle's velocity, what a
    # perfectly trained first flow converges to). Reflow fits a small MLP on its (z, ODE(z)) pairs.
    gmm = GaussianMixture.ring(4, radius=2.0, std=0.2)
    kw = dict(method="dopri5", sigma_min=1e-3, sigma_max=500.0, rtol=1e-6, atol=1e-6)
    z_train, x0_train = make_reflow_pairs(gmm, _noise(2048, 2, 11), **kw)
    z_test, x0_test = make_reflow_pairs(gmm, _noise(256, 2, 12), **kw)
    oracle = DenoiserVelocity(gmm)

    net = _velocity_net()
    model = ReflowModel(net)
    out = model.losses((z_train[:8].float(), x0_train[:8].float()), generator=torch.Generator().manual_seed(0))
    assert out["loss"].shape == (8,)
    history = train_reflow(net, z_train.float(), x0_train.float(), steps=300, batch_size=128, lr=3e-3,
                           generator=torch.Generator().manual_seed(1))
    assert sum(history[-50:]) < 0.2 * sum(history[:50])

    zf = z_test.float()
    s_before = float(straightness(oracle, z_test, n_steps=64).mean())
    s_after = float(straightness(net, zf, n_steps=64).mean())
    assert s_before > 0.1  # the exact flow of a multimodal mixture is curved
    assert s_after < 0.1 * s_before
    for n_steps in (1, 2):
        before = float(((sample_flow(oracle, z_test, n_steps=n_steps) - x0_test) ** 2).sum(1).mean())
        after = float(((sample_flow(net, zf, n_steps=n_steps).double() - x0_test) ** 2).sum(1).mean())
        assert after < 0.25 * before, (n_steps, before, after)
    # the exact oracle flow reaches the same targets with enough steps: the coupling is its ODE map
    fine = sample_flow(oracle, z_test, n_steps=200, method="rk4")
    assert float((fine - x0_test).abs().max()) < 1e-3
    assert model.sample(5, shape=(2,), generator=torch.Generator().manual_seed(2)).shape == (5, 2)
