"""Conversions, adapters, EDM preconditioning and classifier-free guidance, against exact oracles.

The key test: a network that predicts the *exact* ε, x0, v or velocity of a Gaussian mixture
under any process, wrapped by the matching adapter, is exactly the mixture's ideal denoiser
E[x0 | x̄]. So a network trained under any process and parameterization samples with any
σ-space sampler.
"""

import math

import pytest
import torch
from torch import nn

from genspace.continuous.conversions import (
    PREDICTIONS,
    coefficients,
    convert_prediction,
    eps_to_x0,
    v_to_x0,
    velocity_to_x0,
    x0_to_eps,
    x0_to_v,
    x0_to_velocity,
)
from genspace.continuous.parameterizations import (
    EDMPrecond,
    EpsDenoiser,
    VDenoiser,
    VelocityDenoiser,
    X0Denoiser,
    make_denoiser,
)
from genspace.continuous.processes import EDMProcess, get_process
from genspace.core.gmm import GaussianMixture
from genspace.sampling.guidance import ClassifierFreeGuidance

F64 = torch.float64
PROCESSES = ["vp", "cosine", "flow", "ve", "edm", "ddpm-linear", "ddpm-cosine"]
GMM = GaussianMixture.random(4, 3, seed=3)


def autograd_coefficients(process, t):
    """α, σ̃, α̇, σ̃̇ with the derivatives taken by autograd (independent of ds_dt/dsigma_dt)."""
    with torch.enable_grad():
        tt = t.detach().clone().requires_grad_(True)
        alpha = process.s(tt) + 0 * tt
        sigt = alpha * process.sigma(tt)
        (dalpha,) = torch.autograd.grad(alpha.sum(), tt, retain_graph=True)
        (dsigt,) = torch.autograd.grad(sigt.sum(), tt)
    return alpha.detach(), sigt.detach(), dalpha, dsigt


def bc(v, x):
    return v.reshape(-1, *([1] * (x.ndim - 1)))


def random_sigmas(n, lo=0.03, hi=60.0, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.exp(math.log(lo) + (math.log(hi) - math.log(lo)) * torch.rand(n, generator=g, dtype=F64))


def truths(x0, eps, alpha, sigt, dalpha, dsigt):
    """Every target written out from (x0, ε) by the definitions."""
    return {
        "eps": eps,
        "x0": x0,
        "v": alpha * eps - sigt * x0,
        "velocity": dalpha * x0 + dsigt * eps,
        "score": -eps / sigt,
    }


# ----------------------------------------------------------------------------- (a) conversions
@pytest.mark.parametrize("name", PROCESSES)
def test_convert_prediction_every_direction(name):
    p = get_process(name)
    sigma = random_sigmas(32, seed=1)
    t = p.t_of_sigma(sigma)
    g = torch.Generator().manual_seed(2)
    x0 = torch.randn(32, 2, 3, generator=g, dtype=F64)
    eps = torch.randn(32, 2, 3, generator=g, dtype=F64)
    a, st, da, dst = (bc(v, x0) for v in autograd_coefficients(p, t))
    x_t = a * x0 + st * eps
    true = truths(x0, eps, a, st, da, dst)
    for src in PREDICTIONS:
        for tgt in PREDICTIONS:
            out = convert_prediction(true[src], x_t, t, p, source=src, target=tgt)
            scale = true[tgt].abs().amax(dim=(1, 2), keepdim=True)
            torch.testing.assert_close(out / scale, true[tgt] / scale, rtol=0, atol=1e-11, msg=f"{src}->{tgt}")
            back = convert_prediction(out, x_t, t, p, source=tgt, target=src)
            scale = true[src].abs().amax(dim=(1, 2), keepdim=True)
            torch.testing.assert_close(back / scale, true[src] / scale, rtol=0, atol=1e-11, msg=f"{src}<->{tgt}")


def test_small_conversion_functions_match_definitions():
    p = get_process("cosine")
    t = torch.tensor([0.2, 0.5, 0.8], dtype=F64)
    g = torch.Generator().manual_seed(0)
    x0, eps = torch.randn(3, 5, generator=g, dtype=F64), torch.randn(3, 5, generator=g, dtype=F64)
    c = coefficients(p, t, ndim=2)
    a, st, da, dst = (bc(v, x0) for v in autograd_coefficients(p, t))
    torch.testing.assert_close(c.dalpha, da, rtol=1e-12, atol=0)
    torch.testing.assert_close(c.dsigma_t, dst, rtol=1e-12, atol=0)
    x_t = a * x0 + st * eps
    true = truths(x0, eps, a, st, da, dst)
    torch.testing.assert_close(eps_to_x0(x_t, eps, a, st), x0)
    torch.testing.assert_close(x0_to_eps(x_t, x0, a, st), eps)
    torch.testing.assert_close(x0_to_v(x_t, x0, a, st), true["v"])
    torch.testing.assert_close(v_to_x0(x_t, true["v"], a, st), x0)
    torch.testing.assert_close(x0_to_velocity(x_t, x0, a, st, da, dst), true["velocity"])
    torch.testing.assert_close(velocity_to_x0(x_t, true["velocity"], a, st, da, dst), x0)


def test_flow_velocity_is_eps_minus_x0_and_dxdt():
    """Linear flow: u = ε − x0, and u is the time derivative of x_t = (1−t)x0 + tε."""
    p = get_process("flow")
    g = torch.Generator().manual_seed(0)
    x0, eps = torch.randn(4, 3, generator=g, dtype=F64), torch.randn(4, 3, generator=g, dtype=F64)
    t = torch.tensor([0.1, 0.3, 0.6, 0.95], dtype=F64)
    x_t = (1 - t[:, None]) * x0 + t[:, None] * eps
    u = convert_prediction(x0, x_t, t, p, source="x0", target="velocity")
    torch.testing.assert_close(u, eps - x0, rtol=1e-12, atol=1e-12)
    # vp: velocity against a central finite difference of x_t(t) with x0, ε fixed
    vp = get_process("vp")
    h = 1e-6
    xt = lambda s: vp.s(s)[:, None] * (x0 + vp.sigma(s)[:, None] * eps)  # noqa: E731
    fd = (xt(t + h) - xt(t - h)) / (2 * h)
    u_vp = convert_prediction(x0, xt(t), t, vp, source="x0", target="velocity")
    torch.testing.assert_close(u_vp, fd, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("name", ["vp", "flow", "ddpm-linear"])
def test_score_is_gmm_score(name):
    """Tweedie: converting the ideal x0 to a score gives ∇_{x_t} log p_t = ∇_x̄ log p_σ / s."""
    p = get_process(name)
    sigma = random_sigmas(16, seed=4)
    t = p.t_of_sigma(sigma)
    x0 = GMM.sample(16, generator=torch.Generator().manual_seed(5))
    xbar = x0 + sigma[:, None] * torch.randn(16, 4, generator=torch.Generator().manual_seed(6), dtype=F64)
    s = p.s(t)[:, None]
    score = convert_prediction(GMM.denoise(xbar, sigma), s * xbar, t, p, source="x0", target="score")
    torch.testing.assert_close(score, GMM.score(xbar, sigma) / s, rtol=1e-9, atol=1e-10)


# ----------------------------------------------------------------------------- (b) oracle networks
class OracleNet(nn.Module):
    """A perfect network: the exact ε / x0 / v / velocity of the mixture under ``process``.

    Written from the definitions: σ and s from the process at the network's t, x̄ = x_t/s,
    x0* = E[x0 | x̄], ε* = (x̄ − x0*)/σ, derivatives by autograd.
    """

    def __init__(self, gmm, process, target):
        super().__init__()
        self.gmm, self.process, self.target = gmm, process, target
        self.calls = 0
        self.dummy = nn.Parameter(torch.zeros(()))

    def forward(self, x_t, t):
        self.calls += 1
        alpha, sigt, dalpha, dsigt = (bc(v, x_t) for v in autograd_coefficients(self.process, t.to(F64)))
        x_t = x_t.to(F64)
        sigma = sigt / alpha
        xbar = x_t / alpha
        x0 = self.gmm.denoise(xbar, sigma.flatten())
        eps = (xbar - x0) / sigma
        return truths(x0, eps, alpha, sigt, dalpha, dsigt)[self.target]


ADAPTERS = {"eps": EpsDenoiser, "x0": X0Denoiser, "v": VDenoiser, "velocity": VelocityDenoiser}


@pytest.mark.parametrize("name", PROCESSES)
@pytest.mark.parametrize("target", list(ADAPTERS))
def test_oracle_network_under_any_process_is_the_ideal_denoiser(name, target):
    p = get_process(name)
    lo, hi = max(p.sigma_min, 0.02), min(p.sigma_max, 80.0)
    sigma = random_sigmas(24, lo * 1.001, hi * 0.999, seed=7)
    g = torch.Generator().manual_seed(8)
    x0 = GMM.sample(24, generator=g).reshape(24, 1, 2, 2)  # image-shaped: broadcasting via append_dims
    xbar = x0 + sigma[:, None, None, None] * torch.randn(24, 1, 2, 2, generator=g, dtype=F64)
    net = OracleNet(GMM, p, target)
    for denoiser in (ADAPTERS[target](net, p), make_denoiser(net, name, target)):
        out = denoiser(xbar, sigma)
        assert out.shape == xbar.shape and out.dtype == F64
        torch.testing.assert_close(out, GMM.denoise(xbar, sigma), rtol=1e-10, atol=1e-10)
        assert denoiser.process.name == name
    assert net.calls == 2


def test_adapter_float32_and_scalar_sigma():
    p = get_process("flow")
    net = OracleNet(GMM, p, "velocity")
    x = torch.randn(6, 4, generator=torch.Generator().manual_seed(0)) * 3
    out = VelocityDenoiser(net, p)(x, torch.tensor(2.5))
    assert out.dtype == torch.float32
    torch.testing.assert_close(out, GMM.denoise(x.double(), 2.5).float(), rtol=1e-4, atol=1e-4)


def test_adapters_are_modules_around_net():
    net = nn.Linear(3, 3)
    for name in ["eps", "x0", "v", "velocity", "edm"]:
        d = make_denoiser(net, "vp", name, sigma_data=0.7)
        assert isinstance(d, nn.Module) and d.net is net
        assert list(d.parameters()) == list(net.parameters())
        assert sorted(d.state_dict()) == ["net.bias", "net.weight"]
        d.to(F64)
        assert net.weight.dtype == F64
        net.to(torch.float32)
    assert make_denoiser(net, "vp", "edm", sigma_data=0.7).sigma_data == 0.7


# ----------------------------------------------------------------------------- (c) EDM preconditioning
SD = 0.5


def edm_c(sigma, sd=SD):
    """Karras et al. 2022, Table 1 (written out independently)."""
    return (
        sd**2 / (sigma**2 + sd**2),
        sigma * sd / (sigma**2 + sd**2).sqrt(),
        1 / (sigma**2 + sd**2).sqrt(),
        sigma.log() / 4,
    )


def test_edm_coefficients_identities():
    sigma = torch.logspace(-3, 2, 200, dtype=F64)
    c_skip, c_out, c_in, c_noise = EDMPrecond(nn.Identity(), SD).preconditioning(sigma)
    for mine, ref in zip((c_skip, c_out, c_in, c_noise), edm_c(sigma)):
        torch.testing.assert_close(mine, ref, rtol=1e-14, atol=0)
    one = torch.ones_like(sigma)
    # unit-variance input: Var[c_in (x0 + σ ε)] = c_in² (σ_d² + σ²) = 1 (Eq. 114)
    torch.testing.assert_close(c_in**2 * (sigma**2 + SD**2), one, rtol=1e-14, atol=0)
    # unit-variance target: Var[(x0 − c_skip (x0 + σε))/c_out] = ((1−c_skip)² σ_d² + c_skip² σ²)/c_out² = 1 (Eq. 117)
    torch.testing.assert_close(((1 - c_skip) ** 2 * SD**2 + c_skip**2 * sigma**2) / c_out**2, one, rtol=1e-13, atol=0)
    # c_skip minimizes c_out (Eq. 131): d/dc [(1−c)² σ_d² + c² σ²] = 0 at c = c_skip
    torch.testing.assert_close(-(1 - c_skip) * SD**2 + c_skip * sigma**2, 0 * one, rtol=0, atol=1e-15)
    # the EDM loss weight λ = 1/c_out² (Eq. 144) is the SPEC's (σ² + σ_d²)/(σ σ_d)²
    torch.testing.assert_close(1 / c_out**2, (sigma**2 + SD**2) / (sigma * SD) ** 2, rtol=1e-13, atol=0)
    # the ideal D for x0 ~ N(0, σ_d² I) is exactly the skip connection: c_skip x
    gauss = GaussianMixture([1.0], torch.zeros(1, 3), torch.full((1,), SD**2))
    x = torch.randn(200, 3, generator=torch.Generator().manual_seed(0), dtype=F64) * 3
    torch.testing.assert_close(gauss.denoise(x, sigma), c_skip[:, None] * x, rtol=1e-12, atol=1e-14)


class IdealF(nn.Module):
    """F* = (D* − c_skip x)/c_out of the oracle, as a function of (c_in x, c_noise)."""

    def __init__(self, gmm):
        super().__init__()
        self.gmm = gmm
        self.seen = []

    def forward(self, x_in, c_noise):
        self.seen.append((x_in.dtype, c_noise.shape))
        sigma = torch.exp(4 * c_noise.to(F64))
        c_skip, c_out, c_in, _ = (bc(v, x_in) for v in edm_c(sigma))
        x = x_in.to(F64) / c_in
        return (self.gmm.denoise(x, sigma) - c_skip * x) / c_out


def test_edm_precond_with_ideal_F_is_the_oracle():
    sigma = random_sigmas(32, 0.002, 80.0, seed=9)
    g = torch.Generator().manual_seed(10)
    xbar = GMM.sample(32, generator=g) + sigma[:, None] * torch.randn(32, 4, generator=g, dtype=F64)
    net = IdealF(GMM)
    d = EDMPrecond(net, sigma_data=SD)
    torch.testing.assert_close(d(xbar, sigma), GMM.denoise(xbar, sigma), rtol=1e-10, atol=1e-10)
    assert net.seen[-1] == (F64, (32,))
    assert isinstance(d.process, EDMProcess)
    # the outer shell runs in float32 for lower precisions; D comes back in x's dtype
    out = d(xbar.to(torch.bfloat16), sigma.to(torch.bfloat16))
    assert net.seen[-1][0] == torch.float32 and out.dtype == torch.bfloat16


# ----------------------------------------------------------------------------- (d) guidance
class TwoClassOracle:
    """Conditional ideal denoiser: class c is mixture component c; label 2 is 'no label'."""

    def __init__(self):
        self.full = GaussianMixture([0.3, 0.7], [[-1.0, 0.5], [1.5, -0.5]], [0.2, 0.4])
        self.parts = [
            GaussianMixture([1.0], self.full.means[i : i + 1], self.full.covs[i : i + 1]) for i in range(2)
        ]
        self.calls, self.batch_sizes = 0, []
        self.process = get_process("edm")

    def __call__(self, x, sigma, class_labels, extra=None):
        self.calls += 1
        self.batch_sizes.append(x.shape[0])
        if extra is not None and extra.shape[0] != x.shape[0]:
            raise ValueError("extra conditioning not batched with x")
        outs = [self.parts[0].denoise(x, sigma), self.parts[1].denoise(x, sigma), self.full.denoise(x, sigma)]
        return torch.stack(outs)[class_labels, torch.arange(x.shape[0])]


def _batch(n=20, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 2, generator=g, dtype=F64) * 2
    sigma = random_sigmas(n, 0.1, 5.0, seed=seed + 1)
    labels = torch.randint(0, 2, (n,), generator=g)
    return x, sigma, labels


def test_cfg_endpoints_and_linearity():
    x, sigma, labels = _batch()
    base = TwoClassOracle()
    cond = base(x, sigma, class_labels=labels)
    uncond = base(x, sigma, class_labels=torch.full_like(labels, 2))
    assert torch.equal(ClassifierFreeGuidance(base, 1.0, 2)(x, sigma, class_labels=labels), cond)
    assert torch.equal(ClassifierFreeGuidance(base, 0.0, 2)(x, sigma, class_labels=labels), uncond)
    for w in [-0.5, 0.5, 2.0, 7.5]:
        base.calls, base.batch_sizes = 0, []
        out = ClassifierFreeGuidance(base, w, 2)(x, sigma, class_labels=labels, extra=x[:, :1])
        torch.testing.assert_close(out, (1 - w) * uncond + w * cond, rtol=1e-13, atol=1e-13)
        assert base.calls == 1 and base.batch_sizes == [2 * x.shape[0]]  # one batched call


def test_cfg_is_implicit_classifier_gradient():
    """D(x|c) − D(x) = σ² ∇_x log p_σ(c | x) (Tweedie on both), so D_w = D + w σ² ∇ log p(c|x)."""
    x, sigma, labels = _batch(seed=3)
    base = TwoClassOracle()
    w = 3.0
    out = ClassifierFreeGuidance(base, w, null_label=2)(x, sigma, class_labels=labels)
    xx = x.clone().requires_grad_(True)
    log_p_c = torch.stack([base.parts[k].log_prob(xx, sigma) for k in range(2)], 1) + base.full.weights.log()
    log_post = log_p_c.gather(1, labels[:, None]).squeeze(1) - base.full.log_prob(xx, sigma)
    (grad,) = torch.autograd.grad(log_post.sum(), xx)
    expected = base.full.denoise(x, sigma) + w * sigma[:, None] ** 2 * grad
    torch.testing.assert_close(out, expected, rtol=1e-10, atol=1e-10)


def test_cfg_forwards_process_and_passes_unlabelled_calls():
    base = TwoClassOracle()
    cfg = ClassifierFreeGuidance(base, 4.0, 2)
    assert cfg.process is base.process
    x, sigma, labels = _batch()
    # a tensor null label (e.g. an embedding) is broadcast to the labels
    torch.testing.assert_close(
        ClassifierFreeGuidance(base, 4.0, torch.tensor(2))(x, sigma, class_labels=labels),
        cfg(x, sigma, class_labels=labels),
    )
    assert not hasattr(ClassifierFreeGuidance(lambda x, s: x, 2.0, 0), "process")
    torch.testing.assert_close(ClassifierFreeGuidance(lambda x, s: x * 2, 3.0, 0)(x, sigma), 2 * x)
    with pytest.raises(ValueError, match="finite"):
        ClassifierFreeGuidance(base, float("nan"), 2)


# ----------------------------------------------------------------------------- (e) bad names
def test_bad_names_raise_with_choices():
    net = nn.Identity()
    with pytest.raises(ValueError, match="unknown parameterization 'score'.*edm.*velocity"):
        make_denoiser(net, "vp", "score")
    with pytest.raises(ValueError, match="unknown process"):
        make_denoiser(net, "vpp", "eps")
    x = torch.zeros(2, 3, dtype=F64)
    t = torch.full((2,), 0.5, dtype=F64)
    with pytest.raises(ValueError, match="unknown source prediction 'noise'.*'eps', 'x0', 'v', 'velocity', 'score'"):
        convert_prediction(x, x, t, get_process("vp"), source="noise", target="x0")
    with pytest.raises(ValueError, match="unknown target prediction 'u'"):
        convert_prediction(x, x, t, get_process("vp"), source="eps", target="u")
    with pytest.raises(ValueError, match="sigma_data"):
        EDMPrecond(net, sigma_data=0.0)
    with pytest.raises(ValueError, match="sigma must be"):
        EpsDenoiser(net, "vp")(x, torch.ones(3, dtype=F64))
