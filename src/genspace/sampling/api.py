"""The public sampling entry point: ``sample(denoiser, noise, method=..., nfe=..., ...)``.

``sample`` picks the largest grid whose cost fits the NFE budget, scales the standard-normal
input to the first σ of the grid, runs the sampler through a
:class:`~genspace.core.denoiser.CountingDenoiser` and checks the count. The registry
:func:`methods` maps each method name to a :class:`MethodInfo` (the sampler function, whether it
draws noise, and what a grid of n steps costs).
"""

from __future__ import annotations

import importlib
import inspect
import math
from dataclasses import dataclass
from typing import Callable, Optional, Union

import torch

from genspace.core.denoiser import CountingDenoiser, Denoiser
from genspace.core.random import Generator
from genspace.sampling.grids import get_grid, grid_names, grid_options

__all__ = ["MethodInfo", "methods", "method_names", "sample"]

# keyword arguments every sampler takes and that sample() supplies itself
_RESERVED = ("generator", "callback", "max_nfe", "return_info")


@dataclass(frozen=True)
class MethodInfo:
    """One sampling method of the registry.

    NFE of a grid of n steps: ``nfe_per_step`` per step, except that a last step to σ = 0 costs
    ``final_step_nfe`` (a single denoising call for every method here).
    """

    name: str  # registry name, e.g. "dpmpp-2m"
    module: str  # module holding the sampler (imported on first use)
    function: str  # the sampler's name in that module
    stochastic: bool  # draws noise from the generator (with default options)
    nfe_per_step: int = 1  # denoiser calls per step
    final_step_nfe: int = 1  # denoiser calls of a last step to σ = 0
    adaptive: bool = False  # chooses its own steps (the grid gives only its endpoints)
    order: Optional[int] = None  # convergence order of the deterministic method (None: n/a)

    @property
    def fn(self) -> Callable:
        """The sampler function ``(denoiser, x, sigmas, *, generator, callback, **options)``."""
        return getattr(importlib.import_module(self.module), self.function)

    def nfe_for_steps(self, n_steps: int, final_zero: bool = True) -> int:
        """Denoiser calls for a grid of ``n_steps`` steps (ending in σ = 0 if ``final_zero``)."""
        if self.adaptive:
            raise ValueError(f"method {self.name!r} is adaptive: its NFE depends on rtol/atol, not on a grid")
        if n_steps < 1:
            return 0
        if final_zero:
            return (n_steps - 1) * self.nfe_per_step + self.final_step_nfe
        return n_steps * self.nfe_per_step

    def max_steps(self, nfe: int, final_zero: bool = True) -> int:
        """The largest number of steps whose NFE is ≤ ``nfe`` (0 if none fits)."""
        n = nfe // self.nfe_per_step + 1
        while n > 0 and self.nfe_for_steps(n, final_zero) > nfe:
            n -= 1
        return n

    def options(self) -> tuple[str, ...]:
        """The sampler's own keyword options (besides generator, callback and what sample() sets)."""
        params = inspect.signature(self.fn).parameters.values()
        return tuple(
            p.name for p in params if p.kind is p.KEYWORD_ONLY and p.name not in _RESERVED
        )


_ODE = "genspace.sampling.ode"
_SDE = "genspace.sampling.stochastic"
_METHODS = {
    info.name: info
    for info in (
        MethodInfo("euler", _ODE, "sample_euler", False, order=1),
        MethodInfo("heun", _ODE, "sample_heun", False, nfe_per_step=2, order=2),
        MethodInfo("dpm-solver-2", _ODE, "sample_dpm_solver_2", False, nfe_per_step=2, order=2),
        MethodInfo("dpmpp-2m", _ODE, "sample_dpmpp_2m", False, order=2),
        MethodInfo("dpmpp-3m", _ODE, "sample_dpmpp_3m", False, order=3),
        MethodInfo("unipc", _ODE, "sample_unipc", False, order=4),  # default UniP-3 + UniC-3: order 3 + 1
        MethodInfo("adaptive", _ODE, "sample_adaptive", False, adaptive=True),
        MethodInfo("ddpm", _SDE, "sample_ddpm", True),
        MethodInfo("ddim", _SDE, "sample_ddim", False, order=1),  # deterministic unless eta > 0
        MethodInfo("edm-stochastic", _SDE, "sample_edm_stochastic", True, nfe_per_step=2),
        MethodInfo("euler-maruyama", _SDE, "sample_euler_maruyama", True),
        MethodInfo("euler-ancestral", _SDE, "sample_euler_ancestral", True),
        MethodInfo("dpmpp-2m-sde", _SDE, "sample_dpmpp_2m_sde", True),
        MethodInfo("dpmpp-3m-sde", _SDE, "sample_dpmpp_3m_sde", True),
    )
}


def methods() -> dict[str, MethodInfo]:
    """All sampling methods: name → :class:`MethodInfo` (a copy; the registry is not mutable)."""
    return dict(_METHODS)


def method_names() -> list[str]:
    return list(_METHODS)


# ----------------------------------------------------------------------------- validation
def _check_explicit_grid(grid, sigma_min: float, sigma_max: float) -> torch.Tensor:
    sigmas = torch.as_tensor(grid).detach()
    if sigmas.ndim != 1 or sigmas.numel() < 2 or not sigmas.is_floating_point():
        raise ValueError(
            f"an explicit grid must be a 1-D floating tensor of at least 2 σ values, got "
            f"shape {tuple(sigmas.shape)} dtype {sigmas.dtype}"
        )
    sigmas = sigmas.to(device="cpu", dtype=torch.float64)
    s = sigmas.tolist()
    if not all(math.isfinite(v) for v in s) or any(v <= 0 for v in s[:-1]) or s[-1] < 0:
        raise ValueError("an explicit grid must hold finite σ > 0 (only the last may be 0)")
    if any(b >= a for a, b in zip(s[:-1], s[1:])):
        raise ValueError("an explicit grid must be strictly decreasing")
    low = s[-2] if s[-1] == 0 else s[-1]
    if s[0] > sigma_max * (1 + 1e-6) or low < sigma_min * (1 - 1e-6):
        raise ValueError(
            f"the explicit grid spans [{low:.6g}, {s[0]:.6g}], outside [sigma_min={sigma_min:.6g}, "
            f"sigma_max={sigma_max:.6g}]"
        )
    return sigmas


def _split_options(info: MethodInfo, grid_name: Optional[str], options: dict) -> tuple[dict, dict]:
    """Route each option to the sampler or the grid; ValueError on a name neither takes."""
    sampler_names = set(info.options())
    grid_names_ = None if grid_name is None else grid_options(grid_name)
    open_grid = grid_name is not None and grid_names_ is None
    grid_set = set() if grid_names_ is None else set(grid_names_) - {"denoiser"}
    sampler_opts, grid_opts, unknown = {}, {}, []
    for key, value in options.items():
        routed = False
        if key in sampler_names:
            sampler_opts[key] = value
            routed = True
        if key in grid_set or (open_grid and not routed and key != "denoiser"):
            grid_opts[key] = value
            routed = True
        if not routed:
            unknown.append(key)
    if unknown:
        grid_part = "none" if grid_name is None else ("any" if open_grid else sorted(grid_set))
        raise ValueError(
            f"unknown option(s) {sorted(unknown)} for method {info.name!r}"
            + ("" if grid_name is None else f" with grid {grid_name!r}")
            + f"; sampler options: {sorted(sampler_names)}, grid options: {grid_part}"
        )
    return sampler_opts, grid_opts


def _optimized_defaults(grid_opts: dict, denoiser, method: str, x: torch.Tensor, sampler_opts: Optional[dict] = None) -> None:
    """Fill what sample() knows for ``optimized_sigmas``: the denoiser, the solver it is tuned
    for (when it supports ``method``), the example shape, and a fixed-seed generator so that
    the grid, hence the samples, are reproducible (the sampling generator is not consumed)."""
    accepted = grid_options("optimized")
    takes = (lambda name: True) if accepted is None else (lambda name: name in accepted)
    grid_opts["denoiser"] = denoiser
    if takes("method") and "method" not in grid_opts:
        # the solvers it can tune for (euler, heun, dpm-solver-2, dpmpp-2m, dpmpp-3m, unipc); lazy import
        tunable = getattr(importlib.import_module("genspace.sampling.optimized_grid"), "METHODS", ())
        if method in tunable:
            grid_opts["method"] = method
            if sampler_opts and "method_options" not in grid_opts and takes("method_options"):
                grid_opts["method_options"] = dict(sampler_opts)  # tune for the sampler as it will run
    if takes("shape") and "x_init" not in grid_opts and "shape" not in grid_opts:
        grid_opts["shape"] = tuple(x.shape[1:])
    if takes("generator"):
        grid_opts["generator"] = torch.Generator().manual_seed(0)


# ----------------------------------------------------------------------------- entry point
def sample(
    denoiser: Denoiser,
    x: torch.Tensor,
    *,
    method: str,
    nfe: int,
    sigma_min: float,
    sigma_max: float,
    grid: Union[None, str, torch.Tensor] = None,
    generator: Generator = None,
    callback: Optional[Callable[[dict], None]] = None,
    return_info: bool = False,
    **options,
):
    """Draw samples with ``method`` in at most ``nfe`` denoiser calls.

    Args:
        denoiser: ``D(x, sigma) -> x0_hat`` in σ-space. If it has ``.process``, [σ_min, σ_max]
            must lie in that process's range (``process.check_sigma``).
        x: (B, ...) standard-normal noise (floating point). It is multiplied by the grid's first
            σ, which is ``sigma_max`` for every named grid except ``trailing`` (whose first σ
            is the table's last, ≤ sigma_max).
        method: a name of :func:`methods`.
        nfe: the budget of denoiser calls (≥ 1). A named grid gets the largest number of steps n
            whose cost (``MethodInfo.nfe_for_steps(n)``) is ≤ nfe; an explicit grid must fit
            (ValueError otherwise); the adaptive method stops with NFEBudgetError (a
            ValueError) if its tolerances need more. Grid construction (the "optimized" grid
            calls the denoiser) is a precomputation and is not counted.
        sigma_min, sigma_max: the σ range of the grid (0 < sigma_min < sigma_max).
        grid: None (karras), a name of :func:`~genspace.sampling.grids.grid_names`, or an
            explicit 1-D decreasing tensor of σ (optionally ending in 0) within the range.
            The adaptive method takes None (it integrates from sigma_max to sigma_min, then
            denoises) or an explicit grid (only its endpoints are used).
        generator: None, a torch.Generator or a StackedGenerator (one seed per sample: results
            are then independent of the batch they are drawn in).
        callback: passed to the sampler ({"i", "x", "sigma", "sigma_next", "denoised"}).
        return_info: also return {"method", "nfe" (calls made), "nfe_budget", "steps",
            "sigmas" (float64 grid actually used)}.
        **options: sampler options (e.g. eta, s_churn, order, rtol) and grid options (e.g. rho,
            shift, process), routed by name; an unknown name raises ValueError. The
            time-uniform and trailing grids take ``process`` from ``denoiser.process`` if not
            given. The optimized grid is tuned for ``method`` as it will run (with its sampler
            options) when it is one of euler, heun, dpm-solver-2, dpmpp-2m, dpmpp-3m, unipc
            (euler otherwise), on states of the shape of ``x``, with a fixed seed (0), so it
            never sees the sampling noise; ``iterations`` and ``n_samples`` set its effort. For
            full control build it with ``optimized_sigmas`` and pass the tensor as ``grid``.

    Returns:
        (B, ...) samples at the end of the grid, or ``(samples, info)`` with return_info=True.

    The sampler runs under ``torch.no_grad()``; call the ``sample_<name>`` functions directly
    to differentiate through sampling.
    """
    if not torch.is_tensor(x) or not x.is_floating_point() or x.ndim < 1 or x.shape[0] < 1:
        raise ValueError(
            f"x must be a floating-point tensor of shape (B, ...) with B >= 1, got "
            f"{type(x).__name__}{'' if not torch.is_tensor(x) else f' {x.dtype} {tuple(x.shape)}'}"
        )
    if method not in _METHODS:
        raise ValueError(f"unknown method {method!r}; choose one of {method_names()}")
    info = _METHODS[method]
    if isinstance(nfe, bool) or not isinstance(nfe, int) or nfe < 1:
        raise ValueError(f"nfe must be an integer >= 1, got {nfe!r}")
    sigma_min, sigma_max = float(sigma_min), float(sigma_max)
    if not (math.isfinite(sigma_min) and math.isfinite(sigma_max)) or sigma_min <= 0:
        raise ValueError(f"sigma_min and sigma_max must be finite and > 0, got {sigma_min}, {sigma_max}")
    if sigma_min >= sigma_max:
        raise ValueError(f"sigma_min must be < sigma_max, got sigma_min={sigma_min} >= sigma_max={sigma_max}")
    process = getattr(denoiser, "process", None)
    if process is not None:
        process.check_sigma(torch.tensor(sigma_min, dtype=torch.float64), what="sigma_min")
        process.check_sigma(torch.tensor(sigma_max, dtype=torch.float64), what="sigma_max")

    grid_name = None
    if grid is None:
        grid_name = None if info.adaptive else "karras"
    elif isinstance(grid, str):
        if grid not in grid_names():
            raise ValueError(f"unknown grid {grid!r}; choose one of {grid_names()}")
        if info.adaptive:
            raise ValueError(
                f"method 'adaptive' chooses its own steps; pass grid=None or an explicit grid, not {grid!r}"
            )
        grid_name = grid
    elif not torch.is_tensor(grid):
        raise ValueError(f"grid must be None, a grid name {grid_names()} or a 1-D tensor, got {type(grid).__name__}")
    sampler_opts, grid_opts = _split_options(info, grid_name, options)

    if grid_name is not None:
        n_steps = info.max_steps(nfe)
        if n_steps < 1:
            raise ValueError(f"nfe={nfe} is too small for one step of {method!r} ({info.nfe_for_steps(1)} calls)")
        if grid_name in ("time-uniform", "trailing") and "process" not in grid_opts:
            if process is None:
                raise ValueError(f"grid {grid_name!r} needs a process: pass process=... or a denoiser with .process")
            grid_opts["process"] = process
        if grid_name == "optimized":
            _optimized_defaults(grid_opts, denoiser, method, x, sampler_opts)
        sigmas = get_grid(grid_name, n_steps, sigma_min, sigma_max, **grid_opts)
    elif torch.is_tensor(grid):
        sigmas = _check_explicit_grid(grid, sigma_min, sigma_max)
        if not info.adaptive:
            need = info.nfe_for_steps(len(sigmas) - 1, bool(sigmas[-1] == 0))
            if need > nfe:
                raise ValueError(
                    f"the explicit grid of {len(sigmas) - 1} steps needs {need} calls with {method!r}, "
                    f"more than nfe={nfe}"
                )
    else:  # adaptive without a grid
        sigmas = torch.tensor([sigma_max, sigma_min, 0.0], dtype=torch.float64)

    counting = CountingDenoiser(denoiser)
    x0 = x * float(sigmas[0])
    with torch.no_grad():
        if info.adaptive:
            out, run = info.fn(
                counting, x0, sigmas, generator=generator, callback=callback, max_nfe=nfe, return_info=True,
                **sampler_opts,
            )
            used = run["sigmas"]
        else:
            out = info.fn(counting, x0, sigmas, generator=generator, callback=callback, **sampler_opts)
            used = sigmas
    if counting.nfe > nfe:  # a bug in a sampler or in the NFE table, never the user's fault
        raise RuntimeError(f"internal error: {method!r} made {counting.nfe} denoiser calls, above the budget nfe={nfe}")
    if not return_info:
        return out
    return out, {
        "method": method,
        "nfe": counting.nfe,
        "nfe_budget": nfe,
        "steps": len(used) - 1,
        "sigmas": used,
    }
