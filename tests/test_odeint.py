"""Known answers for the generic Runge–Kutta solvers (genspace.core.odeint)."""

import math

import pytest
import torch

from genspace.core.odeint import (
    ADAPTIVE_METHODS,
    BOSH3,
    DOPRI5,
    FIXED_METHODS,
    odeint_adaptive,
    odeint_fixed,
)

F64 = torch.float64


def _fit_slope(hs, errs):
    x = torch.tensor([math.log(h) for h in hs], dtype=F64)
    y = torch.tensor([math.log(e) for e in errs], dtype=F64)
    x = x - x.mean()
    return float((x * (y - y.mean())).sum() / (x * x).sum())


# ------------------------------------------------------------------------------ tableaus
@pytest.mark.parametrize("tab", [DOPRI5, BOSH3] + list(FIXED_METHODS.values()))
def test_tableau_consistency_and_quadrature_order(tab):
    # c_i = Σ_j a_ij and the quadrature conditions Σ b_i c_i^(k−1) = 1/k for k ≤ order
    for ci, row in zip(tab.c, tab.a):
        assert abs(sum(row) - ci) < 1e-14
    for k in range(1, tab.order + 1):
        assert abs(sum(b * c ** (k - 1) for b, c in zip(tab.b, tab.c)) - 1 / k) < 1e-14
    if tab.b_err is not None:  # the embedded solution satisfies the conditions up to error_order
        bhat = [b - e for b, e in zip(tab.b, tab.b_err)]
        for k in range(1, tab.error_order + 1):
            assert abs(sum(b * c ** (k - 1) for b, c in zip(bhat, tab.c)) - 1 / k) < 1e-14
        # ... and fails the next one (otherwise the error estimate would be of higher order)
        k = tab.error_order + 1
        assert abs(sum(b * c ** (k - 1) for b, c in zip(bhat, tab.c)) - 1 / k) > 1e-6


# ------------------------------------------------------------------------------ adaptive
@pytest.mark.parametrize("method", sorted(ADAPTIVE_METHODS))
def test_exponential_decay_error_tracks_tolerance(method):
    y0 = torch.tensor([1.0, -2.0, 0.5], dtype=F64)
    exact = y0 * math.exp(-3.0)
    errs = []
    for tol in (1e-4, 1e-6, 1e-8):
        y, info = odeint_adaptive(lambda t, y: -y, y0, 0.0, 3.0, rtol=tol, atol=tol, method=method)
        err = float((y - exact).abs().max())
        assert err < 50 * tol
        errs.append(err)
        assert info["steps"] >= 1 and info["nfe"] > info["steps"]
    assert errs[0] > errs[1] > errs[2]


@pytest.mark.parametrize("method", sorted(ADAPTIVE_METHODS))
def test_matrix_exponential_forward_and_backward(method):
    g = torch.Generator().manual_seed(0)
    d = 4
    m = torch.randn(d, d, generator=g, dtype=F64)
    a = 0.5 * (m - m.T) - 0.3 * torch.eye(d, dtype=F64)  # rotation + decay
    y0 = torch.randn(5, d, generator=g, dtype=F64)  # a batch of initial conditions
    f = lambda t, y: y @ a.T  # noqa: E731
    y1, _ = odeint_adaptive(f, y0, 0.0, 2.0, rtol=1e-9, atol=1e-9, method=method)
    exact = y0 @ torch.linalg.matrix_exp(2.0 * a).T
    assert torch.allclose(y1, exact, atol=1e-7, rtol=0)
    # backwards in time: y(−1.5) = exp(−1.5 A) y0, and a round trip returns y0
    yb, _ = odeint_adaptive(f, y0, 0.0, -1.5, rtol=1e-9, atol=1e-9, method=method)
    assert torch.allclose(yb, y0 @ torch.linalg.matrix_exp(-1.5 * a).T, atol=1e-7, rtol=0)
    y_back, _ = odeint_adaptive(f, y1, 2.0, 0.0, rtol=1e-9, atol=1e-9, method=method)
    assert torch.allclose(y_back, y0, atol=1e-7, rtol=0)


@pytest.mark.parametrize("method,order", [("dopri5", 5), ("bosh3", 3)])
def test_single_step_local_error_order(method, order):
    # y' = cos(t)·y, y = exp(sin t): one accepted step of size h has local error O(h^(p+1))
    f = lambda t, y: torch.cos(t) * y  # noqa: E731
    y0 = torch.ones(1, dtype=F64)
    hs = [0.4, 0.2, 0.1, 0.05]
    errs = []
    for h in hs:
        y, info = odeint_adaptive(f, y0, 0.3, 0.3 + h, rtol=1e3, atol=1e3, first_step=h, method=method)
        assert info["steps"] == 1 and info["rejected"] == 0
        errs.append(abs(float(y) - math.exp(math.sin(0.3 + h) - math.sin(0.3))))
    assert abs(_fit_slope(hs, errs) - (order + 1)) < 0.35


@pytest.mark.parametrize("method,stages", [("dopri5", 7), ("bosh3", 4)])
def test_fsal_evaluation_count(method, stages):
    # FSAL: one evaluation at t0, one for the automatic first step, then stages−1 per attempt
    calls = []

    def f(t, y):
        calls.append(float(t))
        return -y

    y0 = torch.ones(3, dtype=F64)
    _, info = odeint_adaptive(f, y0, 0.0, 5.0, rtol=1e-7, atol=1e-7, method=method, first_step=20.0)
    assert info["rejected"] >= 1  # the huge first step is rejected
    assert info["nfe"] == len(calls) == 1 + (stages - 1) * (info["steps"] + info["rejected"])
    _, info2 = odeint_adaptive(f, y0, 0.0, 5.0, rtol=1e-7, atol=1e-7, method=method)
    assert info2["nfe"] == 2 + (stages - 1) * (info2["steps"] + info2["rejected"])


def test_tuple_state_and_callback():
    # y' = −y, w' = y  ⇒  w(t) = w0 + y0·(1 − e^{−t})
    y0 = torch.tensor([1.0, 3.0], dtype=F64)
    w0 = torch.tensor([0.5], dtype=F64)
    seen = []
    (y, w), info = odeint_adaptive(
        lambda t, s: (-s[0], s[0].sum(0, keepdim=True)),
        (y0, w0),
        0.0,
        2.0,
        rtol=1e-9,
        atol=1e-9,
        callback=lambda d: seen.append(d["t"]),
    )
    assert torch.allclose(y, y0 * math.exp(-2.0), atol=1e-8)
    assert torch.allclose(w, w0 + y0.sum() * (1 - math.exp(-2.0)), atol=1e-8)
    assert len(seen) == info["steps"] and seen[-1] == 2.0
    assert all(b > a for a, b in zip(seen[:-1], seen[1:]))


def test_time_argument_and_dtype():
    types = []

    def f(t, y):
        types.append((t.ndim, t.dtype))
        return -y

    y0 = torch.ones(2, dtype=torch.float32)
    y, _ = odeint_adaptive(f, y0, 0.0, 1.0, rtol=1e-4, atol=1e-4)
    assert y.dtype == torch.float32 and abs(float(y[0]) - math.exp(-1)) < 1e-3
    assert set(types) == {(0, torch.float32)}
    same, info = odeint_adaptive(f, y0, 1.0, 1.0)
    assert same is y0 and info["nfe"] == 0


def test_adaptive_bad_inputs():
    y0 = torch.ones(2, dtype=F64)
    f = lambda t, y: -y  # noqa: E731
    with pytest.raises(ValueError, match="rtol"):
        odeint_adaptive(f, y0, 0.0, 1.0, rtol=-1e-3)
    with pytest.raises(ValueError, match="atol"):
        odeint_adaptive(f, y0, 0.0, 1.0, atol=float("nan"))
    with pytest.raises(ValueError, match="both be 0"):
        odeint_adaptive(f, y0, 0.0, 1.0, rtol=0.0, atol=0.0)
    with pytest.raises(ValueError, match=r"'rk45'.*\['bosh3', 'dopri5'\]"):
        odeint_adaptive(f, y0, 0.0, 1.0, method="rk45")
    with pytest.raises(ValueError, match="floating point"):
        odeint_adaptive(f, torch.ones(2, dtype=torch.long), 0.0, 1.0)
    with pytest.raises(RuntimeError, match="max_steps"):
        odeint_adaptive(lambda t, y: -1e4 * y, y0, 0.0, 1.0, rtol=1e-8, atol=1e-8, max_steps=5)


# ------------------------------------------------------------------------------ fixed grid
@pytest.mark.parametrize("method,order", [("euler", 1), ("heun", 2), ("midpoint", 2), ("rk4", 4)])
@pytest.mark.parametrize("backward", [False, True])
def test_fixed_convergence_order(method, order, backward):
    f = lambda t, y: torch.cos(t) * y  # noqa: E731  y = y0·exp(sin t − sin t0)
    t0, t1 = (1.5, 0.0) if backward else (0.0, 1.5)
    y0 = torch.ones(2, dtype=F64)
    ns = [10, 20, 40, 80]
    errs = []
    for n in ns:
        y = odeint_fixed(f, y0, torch.linspace(t0, t1, n + 1, dtype=F64), method)
        errs.append(float((y - math.exp(math.sin(t1) - math.sin(t0))).abs().max()))
    slope = _fit_slope([1 / n for n in ns], errs)
    assert abs(slope - order) < 0.15, (method, slope)


def test_fixed_counts_and_tuple_state():
    calls = []

    def f(t, s):
        calls.append(float(t))
        return (-s[0], s[0])

    seen = []
    ts = [0.0, 0.25, 0.5, 1.0]  # non-uniform grid
    y, w = odeint_fixed(f, (torch.ones(1, dtype=F64), torch.zeros(1, dtype=F64)), ts, "rk4", callback=seen.append)
    assert len(calls) == 4 * 3 and [d["t_next"] for d in seen] == ts[1:]
    # RK4 on y' = −y multiplies y by the degree-4 Taylor polynomial of e^{−h} per step; w = 1 − y
    r = lambda h: 1 - h + h**2 / 2 - h**3 / 6 + h**4 / 24  # noqa: E731
    expected = r(0.25) ** 2 * r(0.5)
    assert abs(float(y) - expected) < 1e-14 and abs(float(w) - (1 - expected)) < 1e-14


def test_euler_is_exact_for_constant_field():
    y0 = torch.tensor([[1.0, 2.0]], dtype=F64)
    c = torch.tensor([0.3, -0.7], dtype=F64)
    y = odeint_fixed(lambda t, y: c.expand_as(y), y0, [1.0, 0.6, 0.0], "euler")
    assert torch.allclose(y, y0 - c, atol=1e-15)


def test_fixed_bad_inputs():
    y0 = torch.ones(2, dtype=F64)
    f = lambda t, y: -y  # noqa: E731
    with pytest.raises(ValueError, match=r"'rk5'.*\['euler', 'heun', 'midpoint', 'rk4'\]"):
        odeint_fixed(f, y0, [0.0, 1.0], "rk5")
    with pytest.raises(ValueError, match="at least 2"):
        odeint_fixed(f, y0, [0.0], "rk4")
    with pytest.raises(ValueError, match="strictly"):
        odeint_fixed(f, y0, [0.0, 1.0, 0.5], "rk4")
