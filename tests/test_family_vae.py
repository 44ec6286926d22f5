"""The VAE family: known answers for the KL, the ELBO, the IWAE bound and the discrete likelihoods,
and a CI-size training run on a 2-D toy.

The linear-Gaussian VAE (z ~ N(0, I), x = Wz + b + σε) has the exact marginal
p(x) = N(b, WWᵀ + σ²I) and, when W has orthogonal columns, a diagonal exact posterior
N(Σ Wᵀ(x − b)/σ², Σ), Σ = (I + WᵀW/σ²)⁻¹: with that posterior as the encoder every importance
weight equals p(x), and with a perturbed encoder the ELBO and L_K have closed forms / limits.
"""

from __future__ import annotations

import math
from types import SimpleNamespace

import pytest
import torch
from torch import nn

from genspace.core.random import StackedGenerator
from genspace.data import make_toy
from genspace.families.vae import (
    FAMILY_BUILDERS,
    CategoricalDecoder,
    GaussianDecoder,
    GaussianEncoder,
    VAE,
    VAEConfig,
    build_vae,
    gaussian_kl,
    mlp,
)
from genspace.metrics import energy_distance
from genspace.train import EMAConfig, Trainer, TrainConfig

F64 = torch.float64


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _mean_se(v: torch.Tensor) -> tuple[float, float]:
    return float(v.mean()), float(v.std() / math.sqrt(v.numel()))


class LinearEncoder(nn.Module):
    """q(z | x) = N(Ax + c, diag e^{lv}) (a constant posterior variance)."""

    def __init__(self, A: torch.Tensor, c: torch.Tensor, lv: torch.Tensor) -> None:
        super().__init__()
        self.A, self.c, self.lv = nn.Parameter(A.clone()), nn.Parameter(c.clone()), nn.Parameter(lv.clone())

    def forward(self, x):
        return x @ self.A.T + self.c, self.lv.expand(x.shape[0], -1)


def _linear_gaussian(perturb: bool):
    """(vae, W, b, σ, exact marginal) for D = 3, Z = 2; the encoder is the exact posterior unless perturbed."""
    g = _gen(0)
    D, Z = 3, 2
    Q, _ = torch.linalg.qr(torch.randn(D, D, generator=g, dtype=F64))
    s = torch.tensor([1.5, 0.7], dtype=F64)
    W, b, sigma = Q[:, :Z] * s, torch.tensor([0.3, -0.2, 0.5], dtype=F64), 0.4
    post_var = 1.0 / (1.0 + s**2 / sigma**2)  # diagonal because WᵀW = diag(s²)
    A = post_var[:, None] * W.T / sigma**2
    c, lv = -A @ b, post_var.log()
    if perturb:
        A, lv = 0.5 * A, lv + 1.0
    net = nn.Linear(Z, D).double()
    with torch.no_grad():
        net.weight.copy_(W)
        net.bias.copy_(b)
    decoder = GaussianDecoder(net, D, "global").double()
    with torch.no_grad():
        decoder.log_var.fill_(math.log(sigma**2))
    vae = VAE(LinearEncoder(A, c, lv), decoder, (D,), latent_dim=Z)
    marginal = torch.distributions.MultivariateNormal(b, W @ W.T + sigma**2 * torch.eye(D, dtype=F64))
    return vae, W, b, sigma, marginal


def _x(n: int, seed: int = 1) -> torch.Tensor:
    return 1.2 * torch.randn(n, 3, generator=_gen(seed), dtype=F64)


# ----------------------------------------------------------------------------- the KL


def test_analytic_kl_matches_monte_carlo():
    g = _gen(2)
    mu = torch.randn(4, 3, generator=g, dtype=F64)
    log_var = torch.randn(4, 3, generator=g, dtype=F64)
    n = 40_000
    eps = torch.randn(n, 4, 3, generator=g, dtype=F64)
    z = mu + torch.exp(0.5 * log_var) * eps
    log_q = torch.distributions.Normal(mu, torch.exp(0.5 * log_var)).log_prob(z).sum(-1)
    log_p = torch.distributions.Normal(0.0, 1.0).log_prob(z).sum(-1)
    mc = log_q - log_p  # (n, 4)
    kl = gaussian_kl(mu, log_var)
    se = mc.std(0) / math.sqrt(n)
    assert torch.all((mc.mean(0) - kl).abs() < 4 * se), (mc.mean(0), kl, se)
    # and the closed form of torch.distributions
    ref = torch.distributions.kl_divergence(
        torch.distributions.Normal(mu, torch.exp(0.5 * log_var)), torch.distributions.Normal(0.0, 1.0)
    ).sum(-1)
    torch.testing.assert_close(kl, ref)


# ----------------------------------------------------------------------------- linear-Gaussian VAE


def test_exact_posterior_gives_exact_weights():
    """q = the exact posterior: log w = log p(x) for every draw, so every bound is exact."""
    vae, *_, marginal = _linear_gaussian(perturb=False)
    x = _x(6)
    exact = marginal.log_prob(x)
    log_w = vae.log_weights(x, 9, generator=_gen(3))
    torch.testing.assert_close(log_w, exact[:, None].expand(6, 9), rtol=0, atol=1e-10)
    for k in (1, 7):
        torch.testing.assert_close(vae.iwae_bound(x, k, generator=_gen(4)), exact, rtol=0, atol=1e-10)
    torch.testing.assert_close(vae.log_likelihood(x, generator=_gen(5), k=50, chunk=16), exact, rtol=0, atol=1e-10)


def test_elbo_matches_closed_form_and_is_below_exact():
    vae, W, b, sigma, marginal = _linear_gaussian(perturb=True)
    x = _x(4)
    with torch.no_grad():
        mu, log_var = vae.encoder(x)
    v = log_var.exp()
    # E_q[log N(x; Wz + b, σ²I)] = −D/2 log 2πσ² − (‖x − b − Wμ‖² + Σ_j v_j ‖W_j‖²) / 2σ²
    resid = (x - b - mu @ W.T).square().sum(-1)
    spread = (v * W.square().sum(0)).sum(-1)
    closed = -1.5 * math.log(2 * math.pi * sigma**2) - (resid + spread) / (2 * sigma**2) - gaussian_kl(mu, log_var)
    n = 20_000
    draws = vae.elbo(x.repeat_interleave(n, 0), generator=_gen(6)).detach().reshape(4, n)
    se = draws.std(1) / math.sqrt(n)
    assert torch.all((draws.mean(1) - closed).abs() < 4 * se), (draws.mean(1), closed, se)
    assert torch.all(closed < marginal.log_prob(x) - 0.1)  # the gap is KL(q ‖ posterior) > 0


def test_iwae_approaches_exact_log_likelihood():
    """Mean gap log p(x) − L_K over 3000 points shrinks with K towards 0 (never significantly below)."""
    vae, *_, marginal = _linear_gaussian(perturb=True)
    x = _x(3000, seed=7)
    exact = marginal.log_prob(x)
    gaps, ses = [], []
    with torch.no_grad():
        for k in (1, 10, 100, 1000):
            est = vae.log_likelihood(x, generator=_gen(8 + k), k=k, chunk=128)
            m, se = _mean_se(exact - est)
            gaps.append(m)
            ses.append(se)
    for i in range(3):
        assert gaps[i] - gaps[i + 1] > 3 * math.hypot(ses[i], ses[i + 1]), (gaps, ses)
    assert gaps[0] > 1.0  # the perturbed encoder is far from the posterior
    assert -3 * ses[-1] < gaps[-1] < 0.02, (gaps, ses)


def test_iwae_bound_above_elbo_per_draw_and_in_expectation():
    vae, *_, marginal = _linear_gaussian(perturb=True)
    x = _x(5)
    with torch.no_grad():
        # per draw, on the same z: log mean_k w_k ≥ mean_k log w_k (Jensen); iwae_bound uses those draws
        log_w = vae.log_weights(x, 6, generator=_gen(9))
        bound = vae.iwae_bound(x, 6, generator=_gen(9))
        torch.testing.assert_close(bound, torch.logsumexp(log_w, 1) - math.log(6))
        assert torch.all(bound >= log_w.mean(1))
        # in expectation over 4000 independent draws per point: ELBO < L_1... < L_16, all ≤ log p(x)
        n = 4000
        xr = x.repeat_interleave(n, 0)
        elbo = vae.elbo(xr, generator=_gen(10)).reshape(5, n)
        levels = {k: vae.iwae_bound(xr, k, generator=_gen(11 + k)).reshape(5, n) for k in (1, 2, 4, 8, 16)}
    exact = marginal.log_prob(x)

    def mean_se(v):
        return v.mean(1), v.std(1) / math.sqrt(n)

    e_m, e_s = mean_se(elbo)
    one_m, one_s = mean_se(levels[1])
    assert torch.all((one_m - e_m).abs() < 4 * torch.hypot(one_s, e_s))  # L_1 is the ELBO (MC vs analytic KL)
    prev_m, prev_s = e_m, e_s
    for k in (2, 4, 8, 16):
        m, s = mean_se(levels[k])
        assert torch.all(m - prev_m > 3 * torch.hypot(s, prev_s)), (k, m, prev_m)
        prev_m, prev_s = m, s
    assert torch.all(prev_m < exact + 3 * prev_s)


# ----------------------------------------------------------------------------- discrete likelihoods


def _tiny_image_vae(decoder_kind: str, n_levels: int, shape=(1, 1, 2)) -> VAE:
    torch.manual_seed(3)
    dim, latent = math.prod(shape), 1
    encoder = GaussianEncoder(mlp(dim, 16, 1, 2 * latent))
    if decoder_kind == "categorical":
        decoder = CategoricalDecoder(mlp(latent, 16, 1, dim * n_levels), dim, n_levels)
        return VAE(encoder, decoder, shape, latent_dim=latent).double()
    decoder = GaussianDecoder(mlp(latent, 16, 1, dim), dim)
    return VAE(encoder, decoder, shape, latent_dim=latent, dequantize_levels=n_levels).double()


def _all_images(n_levels: int, dim: int) -> torch.Tensor:
    """Every image of ``dim`` pixels with ``n_levels`` levels, as values in [−1, 1]: (L^dim, dim)."""
    grids = torch.meshgrid(*[torch.arange(n_levels)] * dim, indexing="ij")
    k = torch.stack([g.reshape(-1) for g in grids], 1)
    return k.to(F64) * (2.0 / (n_levels - 1)) - 1.0


def test_categorical_decoder_normalized_and_sampled_consistently():
    """Σ_x P(x | z) = 1; exp(log w) is unbiased for P(x), so Σ_x E[exp(L_1(x))] = 1; the
    frequencies of sample() match those probabilities."""
    L = 3
    vae = _tiny_image_vae("categorical", L)
    images = _all_images(L, 2)  # (9, 2)
    z = torch.randn(5, 1, generator=_gen(12), dtype=F64)
    with torch.no_grad():
        p_given_z = torch.stack([vae.decoder.log_prob(images, zi.expand(9, 1)).exp() for zi in z])
        torch.testing.assert_close(p_given_z.sum(1), torch.ones(5, dtype=F64))
        n = 20_000
        x = images.reshape(9, 1, 1, 2).repeat_interleave(n, 0)
        w = vae.log_likelihood(x, generator=_gen(13), k=1).exp().reshape(9, n)
        p_hat, se = w.mean(1), w.std(1) / math.sqrt(n)
        assert abs(float(p_hat.sum()) - 1.0) < 4 * float(se.square().sum().sqrt())
        s = vae.sample(40_000, generator=_gen(14)).reshape(-1, 2)
    assert s.shape == (40_000, 2) and set(s.unique().tolist()) <= {-1.0, 0.0, 1.0}
    freq = (s[:, None, :] == images[None]).all(-1).to(F64).mean(0)  # (9,)
    tol = 4 * torch.sqrt(p_hat * (1 - p_hat) / 40_000) + 4 * se
    assert torch.all((freq - p_hat).abs() < tol), (freq, p_hat)


def test_dequantized_gaussian_bound_sums_to_mass_in_range():
    """Gaussian decoder on dequantized levels: Σ_k E[exp(LL(k))] = ∫_{[−1,1)} p(y) dy, which for the
    linear decoder y = wz + b + σε is Φ((1 − b)/s) − Φ((−1 − b)/s), s² = w² + σ²."""
    L = 4
    net = nn.Linear(1, 1).double()
    w_, b_, sigma = 0.5, 0.2, 0.3
    with torch.no_grad():
        net.weight.fill_(w_)
        net.bias.fill_(b_)
    decoder = GaussianDecoder(net, 1, "global").double()
    with torch.no_grad():
        decoder.log_var.fill_(math.log(sigma**2))
    s2 = w_**2 + sigma**2  # posterior of this 1-D linear model: var σ²/s², mean w(y − b)/s²
    enc = LinearEncoder(torch.tensor([[w_ / s2]], dtype=F64), torch.tensor([-w_ * b_ / s2], dtype=F64),
                        torch.tensor([math.log(sigma**2 / s2)], dtype=F64))  # fmt: skip
    vae = VAE(enc, decoder, (1, 1, 1), latent_dim=1, dequantize_levels=L)
    levels = torch.arange(L, dtype=F64) * (2.0 / (L - 1)) - 1.0
    n = 20_000
    with torch.no_grad():
        x = levels.reshape(L, 1, 1, 1).repeat_interleave(n, 0)
        w = vae.log_likelihood(x, generator=_gen(15), k=1).exp().reshape(L, n)
    total, se = float(w.mean(1).sum()), float((w.var(1) / n).sum().sqrt())
    normal = torch.distributions.Normal(torch.tensor(b_, dtype=F64), math.sqrt(s2))
    mass = float(normal.cdf(torch.tensor(1.0, dtype=F64)) - normal.cdf(torch.tensor(-1.0, dtype=F64)))
    assert abs(total - mass) < 4 * se + 1e-3, (total, mass, se)
    samples = vae.sample(1000, generator=_gen(16))
    assert samples.shape == (1000, 1, 1, 1) and set(samples.unique().tolist()) <= set(levels.tolist())


# ----------------------------------------------------------------------------- protocol, config


def test_losses_beta_and_objectives():
    vae = _tiny_image_vae("categorical", 17, shape=(1, 8, 8))
    x = torch.randint(0, 17, (5, 1, 8, 8), generator=_gen(17)).to(F64) * (2 / 16) - 1
    t1 = vae.losses((x,), generator=_gen(18))
    assert set(t1) == {"recon", "kl", "_nelbo"} and all(v.shape == (5,) for v in t1.values())
    torch.testing.assert_close(t1["_nelbo"], t1["recon"] + t1["kl"])
    torch.testing.assert_close(-t1["_nelbo"], vae.elbo(x, generator=_gen(18)))
    vae.beta = 4.0
    t4 = vae.losses((x,), generator=_gen(18))
    torch.testing.assert_close(t4["kl"], 4.0 * t1["kl"])
    torch.testing.assert_close(t4["_nelbo"], t1["_nelbo"])  # β changes the objective, not the bound
    vae.beta, vae.objective, vae.k = 1.0, "iwae", 5
    ti = vae.losses((x,), generator=_gen(19))
    assert set(ti) == {"niwae", "_nelbo"}
    torch.testing.assert_close(ti["niwae"], -vae.iwae_bound(x, 5, generator=_gen(19)))
    assert torch.all(ti["niwae"] <= ti["_nelbo"])
    with pytest.raises(ValueError, match="beta"):
        VAE(vae.encoder, vae.decoder, (1, 8, 8), latent_dim=1, objective="iwae", k=5, beta=2.0)
    with pytest.raises(ValueError, match="shape"):
        vae.losses((x.reshape(5, 64),))


def test_builder_and_per_sample_generators():
    points = SimpleNamespace(shape=(2,), kind="points", n_levels=None, n_classes=None)
    digits = SimpleNamespace(shape=(1, 8, 8), kind="images", n_levels=17, n_classes=None)
    assert FAMILY_BUILDERS[VAEConfig] is build_vae
    vp = build_vae(VAEConfig(hidden=16), points)
    assert isinstance(vp.decoder, GaussianDecoder) and vp.latent_dim == 2 and vp.dequantize_levels is None
    vd = build_vae(VAEConfig(hidden=16), digits)
    assert isinstance(vd.decoder, CategoricalDecoder) and vd.latent_dim == 16
    vg = build_vae(VAEConfig(hidden=16, decoder="gaussian"), digits)
    assert isinstance(vg.decoder, GaussianDecoder) and vg.dequantize_levels == 17
    with pytest.raises(ValueError, match="categorical"):
        build_vae(VAEConfig(decoder="categorical"), points)
    # sample i depends only on its seed; images land on the 17 levels, inside [−1, 1]
    for model, shape in ((vp, (2,)), (vd, (1, 8, 8))):
        batch = model.sample(4, shape=shape, generator=StackedGenerator([3, 4, 5, 6]), method="heun", nfe=9)
        alone = model.sample(1, generator=StackedGenerator([5]))
        assert batch.shape == (4, *shape)
        torch.testing.assert_close(batch[2:3], alone)
    assert vd.sample(3).abs().max() <= 1.0
    with pytest.raises(ValueError, match="shape"):
        vp.sample(2, shape=(3,))
    ll = vd.log_likelihood(vd.sample(3, generator=_gen(20)), generator=_gen(21), k=8)
    assert ll.shape == (3,) and bool(torch.all(ll < 0)) and VAE.likelihood_kind == "bound"


# ----------------------------------------------------------------------------- training


@pytest.mark.parametrize("objective,k,steps", [("elbo", 1, 600), ("iwae", 5, 300)])
def test_trains_on_8gaussians(tmp_path, objective, k, steps):
    g = _gen(0)
    train = make_toy("8gaussians", 20_000, generator=g)
    reference, heldout = make_toy("8gaussians", 2000, generator=g), make_toy("8gaussians", 2000, generator=g)
    data = SimpleNamespace(shape=(2,), kind="points", n_levels=None, n_classes=None, train=(train,))
    with torch.random.fork_rng():
        torch.manual_seed(0)
        vae = build_vae(VAEConfig(hidden=64, objective=objective, k=k), data)
    floor = energy_distance(heldout, reference, unbiased=False)

    def measure():
        with torch.no_grad():
            ratio = energy_distance(vae.sample(2000, generator=_gen(5)), reference, unbiased=False) / floor
            elbo = float(vae.elbo(heldout, generator=_gen(6)).mean())
            ll = float(vae.log_likelihood(heldout[:500], generator=_gen(7), k=100).mean())
        return ratio, elbo, ll

    ratio0, elbo0, ll0 = measure()
    config = TrainConfig(steps=steps, batch_size=256, lr=3e-3, ema=EMAConfig(kind="off"), ckpt_every=None, log_every=100)
    Trainer(vae, (train,), config, tmp_path, progress=False, tensorboard=False).fit()
    ratio, elbo, ll = measure()
    print(f"\n{objective}: energy/floor {ratio0:.1f} -> {ratio:.1f}, ELBO {elbo0:.2f} -> {elbo:.2f}, IWAE-100 {ll0:.2f} -> {ll:.2f}")
    assert ratio < 0.2 * ratio0 and ratio < 25, (ratio0, ratio)
    assert ll > ll0 + 2.0 and elbo > elbo0 + 2.0
    # the best single Gaussian (cov ≈ 1.03 I) scores −2.87 nats: beating it needs an informative z
    assert ll > -2.7, ll
