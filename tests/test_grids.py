"""Step grids: closed forms, spacing invariants, the trailing table rule and the SD3 shift."""

import math
import sys
import types

import numpy as np
import pytest
import torch

from genspace.continuous.processes import get_process, shift_time
from genspace.sampling.grids import (
    apply_shift,
    flow_shift_sigmas,
    get_grid,
    grid_names,
    karras_sigmas,
    log_snr_uniform_sigmas,
    time_uniform_sigmas,
    trailing_sigmas,
    trailing_timesteps,
)

SMIN, SMAX = 0.002, 80.0


def _check_shape(s, n, smin=SMIN, smax=SMAX):
    assert s.dtype == torch.float64 and s.shape == (n + 1,)
    assert s[-1] == 0
    assert (torch.diff(s) < 0).all()
    assert s[0].item() == smax
    if n > 1:
        assert s[-2].item() == smin


@pytest.mark.parametrize("n", [1, 2, 5, 18])
def test_every_named_range_grid_is_decreasing_with_exact_endpoints(n):
    _check_shape(karras_sigmas(n, SMIN, SMAX), n)
    _check_shape(log_snr_uniform_sigmas(n, SMIN, SMAX), n)
    _check_shape(flow_shift_sigmas(n, SMIN, SMAX, shift=3.0), n)
    for name in ("vp", "edm", "ve", "cosine", "flow"):
        proc = get_process(name)
        lo, hi = max(SMIN, proc.sigma_min * 1.01), min(SMAX, proc.sigma_max * 0.99)
        _check_shape(time_uniform_sigmas(n, lo, hi, proc), n, lo, hi)


def test_karras_is_eq5_uniform_in_sigma_to_the_one_over_rho():
    n, rho = 12, 7.0
    s = karras_sigmas(n, SMIN, SMAX, rho=rho)[:-1]
    root = s ** (1 / rho)
    steps = torch.diff(root)
    assert torch.allclose(steps, steps[0].expand_as(steps), rtol=1e-9)
    # Eq. 5 written out for one interior index
    i = 5
    expect = (SMAX ** (1 / rho) + i / (n - 1) * (SMIN ** (1 / rho) - SMAX ** (1 / rho))) ** rho
    assert math.isclose(s[i].item(), expect, rel_tol=1e-12)
    # rho = 1 is uniform in sigma
    lin = karras_sigmas(n, SMIN, SMAX, rho=1.0)[:-1]
    assert torch.allclose(lin, torch.linspace(SMAX, SMIN, n, dtype=torch.float64), rtol=1e-12)


def test_log_snr_grid_is_equally_spaced_in_lambda():
    s = log_snr_uniform_sigmas(9, SMIN, SMAX)[:-1]
    lam = -2 * s.log()
    d = torch.diff(lam)
    assert torch.allclose(d, torch.full_like(d, 2 * math.log(SMAX / SMIN) / 8), rtol=1e-10)
    # karras with large rho approaches the log-SNR grid (the rho -> inf limit)
    k = karras_sigmas(9, SMIN, SMAX, rho=1e6)[:-1]
    assert torch.allclose(k.log(), s.log(), atol=1e-4)


@pytest.mark.parametrize("name", ["vp", "cosine", "flow", "ddpm-linear"])
def test_time_uniform_grid_is_uniform_in_the_process_time(name):
    proc = get_process(name)
    lo, hi = max(0.01, proc.sigma_min * 1.01), min(50.0, proc.sigma_max * 0.99)
    s = time_uniform_sigmas(7, lo, hi, proc)[:-1]
    t = proc.t_of_sigma(s)
    d = torch.diff(t)
    assert torch.allclose(d, d.mean().expand_as(d), rtol=1e-6, atol=1e-9)
    assert torch.allclose(proc.sigma(t), s, rtol=1e-9)


def test_time_uniform_known_special_cases():
    # EDM: sigma(t) = t, so uniform in t is uniform in sigma (= karras with rho = 1)
    assert torch.allclose(time_uniform_sigmas(6, SMIN, SMAX, "edm"), karras_sigmas(6, SMIN, SMAX, rho=1.0), rtol=1e-12)
    # VE: sigma is geometric in t, so uniform in t is uniform in log sigma
    assert torch.allclose(time_uniform_sigmas(6, 0.05, 50.0, "ve"), log_snr_uniform_sigmas(6, 0.05, 50.0), rtol=1e-10)


def test_time_uniform_rejects_range_outside_the_process():
    with pytest.raises(ValueError, match="outside"):
        time_uniform_sigmas(5, 0.01, 1000.0, "vp")


@pytest.mark.parametrize("n", [1, 3, 10, 50, 1000])
def test_trailing_timesteps_follow_table2_of_lin_et_al(n):
    T = 1000
    t = trailing_timesteps(n, T)
    # Lin et al. 2024, Table 2 "trailing": round(arange(T, 0, -T/S)) (1-based) -> minus 1 (0-based)
    expect = np.round(np.arange(T, 0, -T / n)).astype(np.int64) - 1
    assert t.tolist() == expect.tolist()
    assert t[0].item() == T - 1  # the first step is the noisiest table entry
    assert (torch.diff(t) < 0).all()


def test_trailing_sigmas_are_table_values_starting_at_the_last_index():
    proc = get_process("ddpm-linear")
    s = trailing_sigmas(10, proc)
    assert s.shape == (11,) and s[-1] == 0
    idx = [999, 899, 799, 699, 599, 499, 399, 299, 199, 99]
    assert torch.equal(s[:-1], proc.sigmas[idx])
    assert math.isclose(s[0].item(), proc.sigma_max, rel_tol=1e-12)
    with pytest.raises(ValueError, match="table"):
        trailing_sigmas(5, get_process("vp"))
    with pytest.raises(ValueError, match="n <="):
        trailing_sigmas(1001, proc)


def test_apply_shift_is_sd3_time_shift_in_flow_time():
    s = karras_sigmas(8, SMIN, SMAX)
    k = 3.0
    shifted = apply_shift(s, k)
    assert shifted[-1] == 0
    t = s[:-1] / (1 + s[:-1])
    t_shift = shifted[:-1] / (1 + shifted[:-1])
    assert torch.allclose(t_shift, shift_time(t, k), rtol=1e-12)
    assert torch.equal(apply_shift(s, 1.0), s)
    with pytest.raises(ValueError):
        apply_shift(s, 0.0)


def test_flow_shift_grid_keeps_its_range_and_puts_more_steps_at_high_noise():
    n = 10
    base = flow_shift_sigmas(n, SMIN, SMAX, shift=1.0)
    # shift 1 = uniform flow time t = sigma / (1 + sigma)
    assert torch.allclose(base, time_uniform_sigmas(n, SMIN, SMAX, "flow"), rtol=1e-9)
    k = 3.0
    s = flow_shift_sigmas(n, SMIN, SMAX, shift=k)
    _check_shape(s, n)
    # it is SD3's shift t' = k t / (1 + (k-1) t) of a flow-time-uniform grid on [smin/k, smax/k]
    t0 = time_uniform_sigmas(n, SMIN / k, SMAX / k, "flow")[:-1]
    t0 = t0 / (1 + t0)
    t_shift = shift_time(t0, k)
    assert torch.allclose(s[:-1], t_shift / (1 - t_shift), rtol=1e-9)
    assert (s[1:-2] > base[1:-2]).all()  # k > 1: every interior step sits at higher noise


def test_get_grid_shift_option_keeps_range_and_is_identity_on_scale_invariant_grids():
    n = 9
    for name in ("karras", "log-snr"):
        plain = get_grid(name, n, SMIN, SMAX)
        shifted = get_grid(name, n, SMIN, SMAX, shift=3.0)
        assert torch.allclose(plain, shifted, rtol=1e-12)
    # on the flow process's time-uniform grid the option is the flow-shift grid
    a = get_grid("time-uniform", n, SMIN, SMAX, process="flow", shift=3.0)
    b = get_grid("flow-shift", n, SMIN, SMAX, shift=3.0)
    assert torch.allclose(a, b, rtol=1e-9)
    assert a[0].item() == SMAX and a[-2].item() == SMIN


def test_get_grid_registry_and_errors():
    assert set(grid_names()) == {"karras", "time-uniform", "log-snr", "trailing", "flow-shift", "optimized"}
    assert torch.equal(get_grid("karras", 5, SMIN, SMAX, rho=3.0), karras_sigmas(5, SMIN, SMAX, rho=3.0))
    proc = get_process("ddpm-linear")
    assert torch.equal(get_grid("trailing", 4, 0.001, proc.sigma_max, process=proc), trailing_sigmas(4, proc))
    with pytest.raises(ValueError, match="karras"):
        get_grid("karas", 5, SMIN, SMAX)
    with pytest.raises(ValueError, match="n must"):
        get_grid("karras", 0, SMIN, SMAX)
    with pytest.raises(ValueError, match="n must"):
        karras_sigmas(2.5, SMIN, SMAX)
    with pytest.raises(ValueError, match="sigma_min must be < sigma_max"):
        get_grid("log-snr", 5, 1.0, 1.0)
    with pytest.raises(ValueError, match="> 0"):
        get_grid("karras", 5, -1.0, 2.0)
    with pytest.raises(ValueError, match="rho"):
        get_grid("log-snr", 5, SMIN, SMAX, rho=7.0)
    with pytest.raises(ValueError, match="process"):
        get_grid("time-uniform", 5, SMIN, SMAX)
    with pytest.raises(ValueError, match="outside the requested range"):
        get_grid("trailing", 4, 0.01, 10.0, process=proc)
    with pytest.raises(ValueError, match="shift"):
        get_grid("trailing", 4, 0.001, proc.sigma_max, process=proc, shift=2.0)


def test_optimized_grid_is_delegated_lazily(monkeypatch):
    calls = []

    def optimized_sigmas(denoiser, n, sigma_min, sigma_max, *, n_samples=64):
        calls.append((denoiser, n, sigma_min, sigma_max, n_samples))
        return log_snr_uniform_sigmas(n, sigma_min, sigma_max)

    fake = types.ModuleType("genspace.sampling.optimized_grid")
    fake.optimized_sigmas = optimized_sigmas
    monkeypatch.setitem(sys.modules, "genspace.sampling.optimized_grid", fake)
    den = object()
    s = get_grid("optimized", 4, SMIN, SMAX, denoiser=den, n_samples=8)
    assert calls == [(den, 4, SMIN, SMAX, 8)]
    assert torch.equal(s, log_snr_uniform_sigmas(4, SMIN, SMAX))
    with pytest.raises(ValueError, match="denoiser"):
        get_grid("optimized", 4, SMIN, SMAX)
