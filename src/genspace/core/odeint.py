"""Generic Runge–Kutta solvers for dy/dt = f(t, y), y a tensor or a tuple of tensors.

Two entry points, both plain functions:

- :func:`odeint_adaptive` — an embedded Runge–Kutta pair with error control:
  ``dopri5`` (Dormand & Prince 1980, RK5(4)7FM, FSAL) or ``bosh3`` (Bogacki & Shampine 1989,
  RK3(2), FSAL). The step is accepted when the error norm

      ‖e‖ = RMS( e / (atol + rtol · max(|y|, |y_new|)) )          (Hairer, Nørsett & Wanner I, II.4)

  is ≤ 1; for a tuple state the norm is the largest of the per-tensor RMS values, so a small
  component (e.g. an accumulated log-density next to a large state) keeps its own tolerance.
  The next step is h · clip(safety · ‖e‖^(−1/(q+1)), min_factor, max_factor), q the order of the
  embedded (lower-order) solution; after a rejection the step does not grow. The higher-order
  solution is propagated (local extrapolation). t1 < t0 integrates backwards in time.
- :func:`odeint_fixed` — a fixed grid ``ts`` with ``euler`` (order 1), ``heun`` (explicit
  trapezoid, 2), ``midpoint`` (2) or classic ``rk4`` (4).

``f(t, y)`` receives ``t`` as a 0-d tensor with the dtype and device of the (first) state tensor
and ``y`` with the structure of ``y0`` (a tensor, or a tuple of tensors); it must return the
same structure. Time is kept in Python floats (double precision) internally.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Optional, Sequence, Union

import torch

State = Union[torch.Tensor, tuple]


@dataclass(frozen=True)
class ButcherTableau:
    """An explicit Runge–Kutta tableau; ``b_err = b − b̂`` gives the embedded error estimate."""

    c: tuple  # (s,) stage times as fractions of the step
    a: tuple  # s rows, row i holds a_ij for j < i
    b: tuple  # (s,) weights of the propagated (higher-order) solution
    b_err: Optional[tuple]  # (s,) b − b̂ (None for fixed-step methods)
    order: int  # order of the propagated solution
    error_order: int  # order q of the embedded solution (sets the controller exponent 1/(q+1))
    fsal: bool  # first stage of the next step = last stage of this one


def _minus(b, bh):
    return tuple(x - y for x, y in zip(b, bh))


# Dormand & Prince (1980), Table 2 ("RK5(4)7M"); row 7 equals b, hence FSAL.
_DOPRI5_B = (35 / 384, 0.0, 500 / 1113, 125 / 192, -2187 / 6784, 11 / 84, 0.0)
_DOPRI5_BHAT = (5179 / 57600, 0.0, 7571 / 16695, 393 / 640, -92097 / 339200, 187 / 2100, 1 / 40)
DOPRI5 = ButcherTableau(
    c=(0.0, 1 / 5, 3 / 10, 4 / 5, 8 / 9, 1.0, 1.0),
    a=(
        (),
        (1 / 5,),
        (3 / 40, 9 / 40),
        (44 / 45, -56 / 15, 32 / 9),
        (19372 / 6561, -25360 / 2187, 64448 / 6561, -212 / 729),
        (9017 / 3168, -355 / 33, 46732 / 5247, 49 / 176, -5103 / 18656),
        _DOPRI5_B[:6],
    ),
    b=_DOPRI5_B,
    b_err=_minus(_DOPRI5_B, _DOPRI5_BHAT),
    order=5,
    error_order=4,
    fsal=True,
)

# Bogacki & Shampine (1989), the 3(2) pair; row 4 equals b, hence FSAL.
_BOSH3_B = (2 / 9, 1 / 3, 4 / 9, 0.0)
_BOSH3_BHAT = (7 / 24, 1 / 4, 1 / 3, 1 / 8)
BOSH3 = ButcherTableau(
    c=(0.0, 1 / 2, 3 / 4, 1.0),
    a=((), (1 / 2,), (0.0, 3 / 4), _BOSH3_B[:3]),
    b=_BOSH3_B,
    b_err=_minus(_BOSH3_B, _BOSH3_BHAT),
    order=3,
    error_order=2,
    fsal=True,
)

EULER = ButcherTableau(c=(0.0,), a=((),), b=(1.0,), b_err=None, order=1, error_order=1, fsal=False)
HEUN = ButcherTableau(c=(0.0, 1.0), a=((), (1.0,)), b=(0.5, 0.5), b_err=None, order=2, error_order=2, fsal=False)
MIDPOINT = ButcherTableau(c=(0.0, 0.5), a=((), (0.5,)), b=(0.0, 1.0), b_err=None, order=2, error_order=2, fsal=False)
RK4 = ButcherTableau(
    c=(0.0, 0.5, 0.5, 1.0),
    a=((), (0.5,), (0.0, 0.5), (0.0, 0.0, 1.0)),
    b=(1 / 6, 1 / 3, 1 / 3, 1 / 6),
    b_err=None,
    order=4,
    error_order=4,
    fsal=False,
)

ADAPTIVE_METHODS = {"dopri5": DOPRI5, "bosh3": BOSH3}
FIXED_METHODS = {"euler": EULER, "heun": HEUN, "midpoint": MIDPOINT, "rk4": RK4}


# ---------------------------------------------------------------------------------- state helpers
def _flatten(y0: State) -> tuple[tuple, bool]:
    """Return (tuple of tensors, was_tensor)."""
    if torch.is_tensor(y0):
        parts, single = (y0,), True
    elif isinstance(y0, (tuple, list)) and len(y0) > 0 and all(torch.is_tensor(p) for p in y0):
        parts, single = tuple(y0), False
    else:
        raise ValueError(f"y0 must be a tensor or a non-empty tuple of tensors, got {type(y0).__name__}")
    for p in parts:
        if not p.is_floating_point():
            raise ValueError(f"every state tensor must be floating point, got dtype {p.dtype}")
    return parts, single


def _wrap_f(f: Callable, single: bool, ref: torch.Tensor) -> Callable:
    """f on tuples of tensors, time as a Python float → 0-d tensor for the user's f."""

    def g(t: float, y: tuple) -> tuple:
        tt = torch.tensor(t, dtype=ref.dtype, device=ref.device)
        out = f(tt, y[0] if single else y)
        out = (out,) if single else tuple(out)
        if len(out) != len(y):
            raise ValueError(f"f returned {len(out)} tensors for a state of {len(y)} tensors")
        return out

    return g


def _combine(y: tuple, h: float, coeffs: Sequence[float], ks: Sequence[tuple]) -> tuple:
    """y + h · Σ_j coeffs_j · k_j, per tensor of the state."""
    out = []
    for i, yi in enumerate(y):
        acc = None
        for c, k in zip(coeffs, ks):
            if c != 0.0:
                term = k[i] * c
                acc = term if acc is None else acc + term
        out.append(yi if acc is None else yi + h * acc)
    return tuple(out)


def _error_norm(err: tuple, y: tuple, y_new: tuple, rtol: float, atol: float) -> float:
    """max over state tensors of RMS(err / (atol + rtol·max(|y|, |y_new|)))."""
    worst = 0.0
    for e, a, b in zip(err, y, y_new):
        if e.numel() == 0:
            continue
        scale = atol + rtol * torch.maximum(a.abs(), b.abs())
        rms = float(torch.sqrt(torch.mean((e / scale).double() ** 2)))
        if not math.isfinite(rms):
            return math.inf
        worst = max(worst, rms)
    return worst


def _check_method(method: str, table: dict, kind: str) -> ButcherTableau:
    if method not in table:
        raise ValueError(f"unknown {kind} method {method!r}; choose one of {sorted(table)}")
    return table[method]


def _initial_step(g, t0, y0, f0, direction, order, rtol, atol) -> tuple[float, int]:
    """Starting step of Hairer, Nørsett & Wanner I, II.4 ("Starting step size"); costs one f call."""
    scale = [atol + rtol * y.abs() for y in y0]
    d0 = max(float(torch.sqrt(torch.mean((y / s).double() ** 2))) for y, s in zip(y0, scale))
    d1 = max(float(torch.sqrt(torch.mean((k / s).double() ** 2))) for k, s in zip(f0, scale))
    h0 = 1e-6 if (d0 < 1e-5 or d1 < 1e-5) else 0.01 * d0 / d1
    y1 = _combine(y0, direction * h0, (1.0,), (f0,))
    f1 = g(t0 + direction * h0, y1)
    d2 = max(float(torch.sqrt(torch.mean(((a - b) / s).double() ** 2))) for a, b, s in zip(f1, f0, scale)) / h0
    if not math.isfinite(d2):
        return h0, 1
    if max(d1, d2) <= 1e-15:
        h1 = max(1e-6, h0 * 1e-3)
    else:
        h1 = (0.01 / max(d1, d2)) ** (1.0 / (order + 1))
    return min(100 * h0, h1), 1


# ---------------------------------------------------------------------------------- adaptive
def odeint_adaptive(
    f: Callable,
    y0: State,
    t0: float,
    t1: float,
    *,
    rtol: float = 1e-5,
    atol: float = 1e-5,
    method: str = "dopri5",
    first_step: Optional[float] = None,
    max_steps: int = 10_000,
    callback: Optional[Callable[[dict], None]] = None,
    safety: float = 0.9,
    min_factor: float = 0.2,
    max_factor: float = 10.0,
) -> tuple[State, dict]:
    """Integrate dy/dt = f(t, y) from t0 to t1 with an embedded Runge–Kutta pair.

    Args:
        f: ``f(t, y) -> dy/dt``; ``t`` a 0-d tensor (dtype/device of the state), ``y`` with the
            structure of ``y0``.
        y0: the state at t0: a tensor of any shape, or a tuple of tensors.
        t0, t1: start and end times (floats); ``t1 < t0`` integrates backwards.
        rtol, atol: relative and absolute tolerances (≥ 0, not both 0).
        method: ``"dopri5"`` (order 5 with an order-4 error estimate) or ``"bosh3"`` (3 with 2).
        first_step: size of the first trial step (its sign is ignored); None selects it
            automatically (one extra evaluation of f).
        max_steps: maximum number of attempted steps before RuntimeError.
        callback: called after every accepted step with {"t", "y", "h", "step", "error"}.
        safety, min_factor, max_factor: the step-size controller (Hairer et al. I, Eq. 4.13).

    Returns:
        ``(y1, info)``: the state at t1 (same structure as y0) and
        ``info = {"nfe": evaluations of f, "steps": accepted steps, "rejected": rejected steps}``.
    """
    tab = _check_method(method, ADAPTIVE_METHODS, "adaptive")
    for name, tol in (("rtol", rtol), ("atol", atol)):
        if not (isinstance(tol, (int, float)) and math.isfinite(tol) and tol >= 0):
            raise ValueError(f"{name} must be a finite number >= 0, got {tol!r}")
    if rtol == 0 and atol == 0:
        raise ValueError("rtol and atol cannot both be 0")
    if not (math.isfinite(float(t0)) and math.isfinite(float(t1))):
        raise ValueError(f"t0 and t1 must be finite, got t0={t0}, t1={t1}")
    if int(max_steps) < 1:
        raise ValueError(f"max_steps must be >= 1, got {max_steps}")
    if not (0 < safety <= 1 and 0 < min_factor < 1 < max_factor):
        raise ValueError(
            f"need 0 < safety <= 1 and 0 < min_factor < 1 < max_factor, got safety={safety}, "
            f"min_factor={min_factor}, max_factor={max_factor}"
        )
    if first_step is not None and not (math.isfinite(first_step) and first_step != 0):
        raise ValueError(f"first_step must be a finite non-zero number or None, got {first_step}")

    y, single = _flatten(y0)
    g = _wrap_f(f, single, y[0])
    t0, t1 = float(t0), float(t1)
    info = {"nfe": 0, "steps": 0, "rejected": 0}
    if t0 == t1:
        return y0, info
    direction = 1.0 if t1 > t0 else -1.0
    span = abs(t1 - t0)

    t = t0
    k1 = g(t, y)
    info["nfe"] += 1
    if first_step is None:
        h, extra = _initial_step(g, t, y, k1, direction, tab.error_order, rtol, atol)
        info["nfe"] += extra
    else:
        h = abs(float(first_step))
    h = min(h, span)
    exponent = -1.0 / (tab.error_order + 1)
    n_stages = len(tab.c)
    last_rejected = False

    while direction * (t1 - t) > 0:
        if info["steps"] + info["rejected"] >= max_steps:
            raise RuntimeError(
                f"odeint_adaptive: reached max_steps={max_steps} at t={t:.6g} (t1={t1:.6g}); "
                "loosen rtol/atol or raise max_steps"
            )
        remaining = abs(t1 - t)
        hit_end = h >= remaining
        if hit_end:
            h = remaining
        if h <= 8 * torch.finfo(torch.float64).eps * max(abs(t), abs(t1), 1e-300):
            raise RuntimeError(f"odeint_adaptive: step size underflow (h={h:.3g}) at t={t:.6g}")
        hs = direction * h

        ks = [k1]
        y_stage = None
        for i in range(1, n_stages):
            y_stage = _combine(y, hs, tab.a[i], ks)
            ks.append(g(t + tab.c[i] * hs, y_stage))
        info["nfe"] += n_stages - 1
        y_new = y_stage if tab.fsal else _combine(y, hs, tab.b, ks)
        err = _combine(tuple(torch.zeros_like(p) for p in y), hs, tab.b_err, ks)
        err_norm = _error_norm(err, y, y_new, rtol, atol)

        if err_norm <= 1.0:
            t = t1 if hit_end else t + hs
            y = y_new
            k1 = ks[-1] if tab.fsal else g(t, y)
            if not tab.fsal:
                info["nfe"] += 1
            info["steps"] += 1
            if callback is not None:
                callback({"t": t, "y": y[0] if single else y, "h": hs, "step": info["steps"], "error": err_norm})
            factor = max_factor if err_norm == 0 else min(max_factor, max(min_factor, safety * err_norm**exponent))
            if last_rejected:
                factor = min(1.0, factor)
            last_rejected = False
        else:
            info["rejected"] += 1
            factor = min_factor if not math.isfinite(err_norm) else max(min_factor, safety * err_norm**exponent)
            last_rejected = True
        h = h * factor

    return (y[0] if single else y), info


# ---------------------------------------------------------------------------------- fixed grid
def odeint_fixed(
    f: Callable,
    y0: State,
    ts,
    method: str = "rk4",
    *,
    callback: Optional[Callable[[dict], None]] = None,
) -> State:
    """Integrate dy/dt = f(t, y) on the fixed grid ``ts`` (strictly monotone, ≥ 2 points).

    Args:
        f: ``f(t, y) -> dy/dt`` as in :func:`odeint_adaptive`.
        y0: the state at ts[0] (tensor or tuple of tensors).
        ts: 1-D sequence or tensor of times; decreasing grids integrate backwards.
        method: ``"euler"`` (1 evaluation per step, order 1), ``"heun"`` (2, order 2),
            ``"midpoint"`` (2, order 2) or ``"rk4"`` (4, order 4).
        callback: called after every step with {"i", "t", "t_next", "y"} (y at t_next).

    Returns:
        The state at ts[-1]. The number of evaluations of f is (len(ts) − 1) · stages.
    """
    tab = _check_method(method, FIXED_METHODS, "fixed-step")
    times = [float(v) for v in (ts.tolist() if torch.is_tensor(ts) else ts)]
    if len(times) < 2 or not all(math.isfinite(v) for v in times):
        raise ValueError(f"ts must hold at least 2 finite times, got {times[:8]}")
    steps = [b - a for a, b in zip(times[:-1], times[1:])]
    if not (all(h > 0 for h in steps) or all(h < 0 for h in steps)):
        raise ValueError("ts must be strictly increasing or strictly decreasing")
    y, single = _flatten(y0)
    g = _wrap_f(f, single, y[0])
    for i, (t, h) in enumerate(zip(times[:-1], steps)):
        ks = [g(t, y)]
        for j in range(1, len(tab.c)):
            ks.append(g(t + tab.c[j] * h, _combine(y, h, tab.a[j], ks)))
        y = _combine(y, h, tab.b, ks)
        if callback is not None:
            callback({"i": i, "t": t, "t_next": times[i + 1], "y": y[0] if single else y})
    return y[0] if single else y
