"""Forward processes: derivatives, inverses, exact conversions and the published tables."""

import math

import pytest
import torch

from genspace.continuous.processes import (
    DiscreteVPProcess,
    convert,
    ddpm_cosine_betas,
    get_process,
    process_names,
    shift_time,
)

ALL = ["vp", "ve", "edm", "cosine", "flow", "ddpm-linear", "ddpm-cosine"]
F64 = torch.float64


def interior_times(p, n=997):
    """Times strictly inside (t_min, t_max); fractional for the discrete tables."""
    u = (torch.arange(n, dtype=F64) + 0.5) / n
    t = p.t_min + (p.t_max - p.t_min) * u
    if isinstance(p, DiscreteVPProcess):
        t = t.floor() + 0.3137  # avoid the kinks of the log-linear interpolation at integers
        t = t[t < p.t_max]
    return t


def test_registry_lists_every_process():
    assert sorted(ALL) == process_names()


@pytest.mark.parametrize("name", ALL)
def test_derivatives_match_autograd(name):
    p = get_process(name)
    t = interior_times(p)
    tt = t.clone().requires_grad_(True)
    # `+ 0·t` keeps constant outputs (s = 1) in the graph
    (ds,) = torch.autograd.grad((p.s(tt) + 0 * tt).sum(), tt)
    (dsig,) = torch.autograd.grad((p.sigma(tt) + 0 * tt).sum(), tt)
    torch.testing.assert_close(p.ds_dt(t), ds, rtol=1e-12, atol=1e-14)
    torch.testing.assert_close(p.dsigma_dt(t), dsig, rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("name", ALL)
def test_sigma_increases_with_time(name):
    p = get_process(name)
    sig = p.sigma(interior_times(p))
    assert (sig[1:] > sig[:-1]).all()
    assert p.sigma_min < p.sigma_max


@pytest.mark.parametrize("name", ALL)
def test_time_sigma_round_trips(name):
    p = get_process(name)
    t = interior_times(p)
    if isinstance(p, DiscreteVPProcess):  # integer steps too
        t = torch.cat([t, torch.arange(p.n_steps, dtype=F64)])
    torch.testing.assert_close(p.t_of_sigma(p.sigma(t)), t, rtol=1e-12, atol=1e-13 * p.t_max)
    # σ → t → σ; above σ ≈ 1e3 the flow-like processes sit at t ≈ 1 − 1/σ where t itself holds
    # only ~σ·1e-16 relative precision about σ, so the round trip is checked below that.
    lo, hi = max(p.sigma_min, 1e-4), min(p.sigma_max, 1e3)
    sig = torch.logspace(math.log10(lo), math.log10(hi), 501, dtype=F64)
    torch.testing.assert_close(p.sigma(p.t_of_sigma(sig)), sig, rtol=1e-12, atol=0)


@pytest.mark.parametrize("name", ALL)
def test_log_snr_is_alpha_over_sigma(name):
    p = get_process(name)
    t = interior_times(p, 101)
    a, st = p.alpha_sigma(t)
    torch.testing.assert_close(p.log_snr(t), torch.log(a**2 / st**2), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("source", ALL)
@pytest.mark.parametrize("target", ALL)
def test_convert_is_exact_marginal_equivalence(source, target):
    """Same x0, ε and σ: the converted sample is the target's own s·(x0 + σ·ε)."""
    a, b = get_process(source), get_process(target)
    lo, hi = max(a.sigma_min, b.sigma_min, 1e-3), min(a.sigma_max, b.sigma_max, 1e3)
    g = torch.Generator().manual_seed(0)
    n = 64
    sigma = torch.exp(math.log(lo) + (math.log(hi) - math.log(lo)) * torch.rand(n, generator=g, dtype=F64))
    x0 = torch.randn(n, 3, 2, generator=g, dtype=F64)
    eps = torch.randn(n, 3, 2, generator=g, dtype=F64)
    xbar = x0 + sigma[:, None, None] * eps
    t_a = a.t_of_sigma(sigma)
    x_a = a.s(t_a)[:, None, None] * xbar
    x_b, t_b = convert(x_a, t_a, a, b)
    torch.testing.assert_close(b.sigma(t_b), sigma, rtol=1e-11, atol=0)
    torch.testing.assert_close(x_b, b.s(b.t_of_sigma(sigma))[:, None, None] * xbar, rtol=1e-12, atol=1e-12)


def test_convert_vp_to_flow_closed_form():
    """VP at t (ᾱ = exp(−½β_d t² − β_min t)) to the linear flow x = (1−τ)x0 + τε, τ = σ/(1+σ)."""
    vp, flow = get_process("vp"), get_process("flow")
    g = torch.Generator().manual_seed(1)
    x0, eps = torch.randn(5, 4, generator=g, dtype=F64), torch.randn(5, 4, generator=g, dtype=F64)
    for t in [0.01, 0.2, 0.5, 0.9]:
        abar = math.exp(-0.5 * 19.9 * t**2 - 0.1 * t)
        x_vp = math.sqrt(abar) * x0 + math.sqrt(1 - abar) * eps
        sig = math.sqrt((1 - abar) / abar)
        tau = sig / (1 + sig)
        x_flow, t_flow = convert(x_vp, torch.tensor(t, dtype=F64), vp, flow)
        torch.testing.assert_close(t_flow, torch.tensor(tau, dtype=F64), rtol=1e-12, atol=0)
        torch.testing.assert_close(x_flow, (1 - tau) * x0 + tau * eps, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("name", ["vp", "cosine", "ddpm-linear", "ddpm-cosine"])
def test_variance_preserving(name):
    p = get_process(name)
    t = interior_times(p)
    torch.testing.assert_close(p.s(t) ** 2 * (1 + p.sigma(t) ** 2), torch.ones_like(t), rtol=1e-13, atol=0)


def test_vp_closed_form():
    p = get_process("vp")
    for t in [1e-5, 0.1, 0.5, 1.0]:
        e = 0.5 * 19.9 * t**2 + 0.1 * t
        assert p.sigma(torch.tensor(t, dtype=F64)).item() == pytest.approx(math.sqrt(math.expm1(e)), rel=1e-14)
        assert p.s(torch.tensor(t, dtype=F64)).item() == pytest.approx(math.exp(-0.5 * e), rel=1e-14)


def test_ve_and_edm_closed_form():
    ve, edm = get_process("ve"), get_process("edm")
    assert ve.sigma_min == pytest.approx(0.02, rel=1e-14) and ve.sigma_max == pytest.approx(100, rel=1e-14)
    t = torch.tensor([0.0, 0.25, 1.0], dtype=F64)
    torch.testing.assert_close(ve.sigma(t), 0.02 * (100 / 0.02) ** t, rtol=1e-14, atol=0)
    torch.testing.assert_close(edm.sigma(t), t)
    torch.testing.assert_close(edm.s(t), torch.ones_like(t))


def test_flow_is_linear_interpolant():
    p = get_process("flow")
    t = torch.linspace(0, 0.99, 100, dtype=F64)
    torch.testing.assert_close(p.s(t), 1 - t, rtol=0, atol=0)
    torch.testing.assert_close(p.sigma(t), t / (1 - t), rtol=0, atol=0)
    # α = s = 1 − t and σ̃ = s·σ = t: x_t = (1 − t)·x0 + t·ε
    a, st = p.alpha_sigma(t)
    torch.testing.assert_close(st, t, rtol=1e-15, atol=1e-16)


@pytest.mark.parametrize("k", [0.5, 1.0, 3.0, 6.0])
def test_sd3_shift_scales_flow_sigma(k):
    p = get_process("flow")
    t = torch.linspace(0.0, 0.999, 200, dtype=F64)
    torch.testing.assert_close(p.sigma(shift_time(t, k)), k * p.sigma(t), rtol=1e-12, atol=0)


def test_shift_rejects_nonpositive():
    with pytest.raises(ValueError, match="shift"):
        shift_time(torch.tensor(0.5), 0.0)


def _linear_alphas_cumprod():
    """ᾱ_i of DDPM's linear table, recomputed in plain Python floats."""
    n, b0, b1 = 1000, 1e-4, 0.02
    out, prod = [], 1.0
    for i in range(n):
        prod *= 1 - (b0 + (b1 - b0) * i / (n - 1))
        out.append(prod)
    return out


def test_ddpm_linear_table():
    p = get_process("ddpm-linear")
    assert p.n_steps == 1000 and p.t_min == 0 and p.t_max == 999
    assert p.alphas_cumprod[0].item() == pytest.approx(1 - 1e-4, rel=1e-15)
    abar = _linear_alphas_cumprod()
    for i in [0, 1, 10, 250, 500, 998, 999]:
        expected = math.sqrt((1 - abar[i]) / abar[i])
        assert p.sigma(torch.tensor(float(i), dtype=F64)).item() == pytest.approx(expected, rel=1e-11)
        assert p.s(torch.tensor(float(i), dtype=F64)).item() == pytest.approx(math.sqrt(abar[i]), rel=1e-11)
    # between integers log σ is linear: σ(i + ½) is the geometric mean of the neighbours
    for i in [3, 400]:
        mid = p.sigma(torch.tensor(i + 0.5, dtype=F64)).item()
        assert mid == pytest.approx(math.sqrt(p.sigmas[i].item() * p.sigmas[i + 1].item()), rel=1e-13)


def test_cosine_continuous_matches_ddpm_cosine_table():
    """iDDPM's table index i holds ᾱ = f((i+1)/T)/f(0) (β_i = 1 − ᾱ_{i+1}/ᾱ_i, i = 0..T−1).

    So discrete step i corresponds to continuous time t = (i + 1)/1000. The β ≤ 0.999 clipping
    only touches the last steps; compare the middle of the table.
    """
    cont, disc = get_process("cosine"), get_process("ddpm-cosine")
    i = torch.arange(50, 900, dtype=F64)
    torch.testing.assert_close(cont.sigma((i + 1) / 1000), disc.sigma(i), rtol=1e-10, atol=0)
    # and the continuous ᾱ against the formula written out here
    for t in [0.1, 0.5, 0.9]:
        f = lambda u: math.cos((u + 0.008) / 1.008 * math.pi / 2) ** 2  # noqa: E731
        assert cont.s(torch.tensor(t, dtype=F64)).item() ** 2 == pytest.approx(f(t) / f(0), rel=1e-13)
    betas = ddpm_cosine_betas()
    assert betas.max().item() == pytest.approx(0.999) and (betas[:900] < 0.999).all()


def test_get_process_unknown_name():
    with pytest.raises(ValueError, match="unknown process 'vq'.*ddpm-cosine.*vp"):
        get_process("vq")


@pytest.mark.parametrize("name", ALL)
def test_check_sigma(name):
    p = get_process(name)
    p.check_sigma(torch.tensor([p.sigma_min, p.sigma_max], dtype=F64))
    with pytest.raises(ValueError, match=name):
        p.check_sigma(torch.tensor([p.sigma_max * 1.01], dtype=F64))
    if p.sigma_min > 0:
        with pytest.raises(ValueError, match="outside"):
            p.check_sigma(torch.tensor(p.sigma_min * 0.99, dtype=F64))


def test_discrete_rejects_bad_betas():
    with pytest.raises(ValueError, match="betas"):
        DiscreteVPProcess(torch.tensor([0.1, 1.5]))
