"""Step grids: pure functions that return the σ values a sampler visits.

Every grid is a float64 1-D tensor, strictly decreasing from σ_max to σ_min, with σ = 0
appended (the k-diffusion convention): length n + 1 for n steps. The last step (σ_min → 0) is
the sampler's final denoising step. Grids are data, so any grid combines with any sampler.

| name          | function                  | spacing                                                   |
|---------------|---------------------------|-----------------------------------------------------------|
| karras        | :func:`karras_sigmas`     | uniform in σ^(1/ρ) (Karras et al. 2022, Eq. 5)            |
| time-uniform  | :func:`time_uniform_sigmas` | uniform in a process's own time t, mapped through σ(t)  |
| log-snr       | :func:`log_snr_uniform_sigmas` | uniform in λ = −2 log σ (geometric in σ)             |
| trailing      | :func:`trailing_sigmas`   | DDPM table steps, "trailing" (Lin et al. 2024, Table 2)   |
| flow-shift    | :func:`flow_shift_sigmas` | uniform flow time, SD3-shifted (Esser et al. 2024, Eq. 23)|
| optimized     | genspace.sampling.optimized_grid.optimized_sigmas (needs the denoiser)  |

Shifting. SD3's time shift t' = k·t / (1 + (k − 1)·t) of the flow time t = σ/(1 + σ) is exactly
σ' = k·σ (:func:`apply_shift`). It moves the endpoints of a finite range, so whenever genspace
shifts a grid *with a given range* (``flow-shift``, or the ``shift=`` option of
:func:`get_grid`), it builds the base grid on [σ_min/k, σ_max/k] and multiplies by k: the result
spans exactly [σ_min, σ_max], nothing is clipped, and the relative spacing is SD3's. Grids that
are invariant under σ → c·σ (karras, log-snr) are therefore unchanged by the shift; the shift
acts on grids defined through a process's time (time-uniform, flow-shift).
"""

from __future__ import annotations

import math
from typing import Optional, Union

import torch

from genspace.continuous.processes import DiscreteVPProcess, Process, get_process

__all__ = [
    "karras_sigmas",
    "time_uniform_sigmas",
    "log_snr_uniform_sigmas",
    "trailing_sigmas",
    "flow_shift_sigmas",
    "apply_shift",
    "get_grid",
    "grid_names",
    "grid_options",
]


# ----------------------------------------------------------------------------- validation
def _check_n(n) -> int:
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"the number of steps n must be an integer >= 1, got {n!r}")
    return n


def _check_range(sigma_min, sigma_max) -> tuple[float, float]:
    sigma_min, sigma_max = float(sigma_min), float(sigma_max)
    if not (math.isfinite(sigma_min) and math.isfinite(sigma_max)) or sigma_min <= 0 or sigma_max <= 0:
        raise ValueError(
            f"sigma_min and sigma_max must be finite and > 0, got sigma_min={sigma_min}, sigma_max={sigma_max}"
        )
    if sigma_min >= sigma_max:
        raise ValueError(f"sigma_min must be < sigma_max, got sigma_min={sigma_min} >= sigma_max={sigma_max}")
    return sigma_min, sigma_max


def _finish(sigmas: torch.Tensor) -> torch.Tensor:
    """Append the final σ = 0."""
    return torch.cat([sigmas.to(torch.float64), sigmas.new_zeros(1, dtype=torch.float64)])


def _as_process(process) -> Process:
    if process is None:
        raise ValueError("this grid needs a process (a Process or one of the names of genspace.continuous.processes)")
    if isinstance(process, str):
        return get_process(process)
    if not isinstance(process, Process):
        raise ValueError(f"process must be a Process or a process name, got {type(process).__name__}")
    return process


# ----------------------------------------------------------------------------- grids
def karras_sigmas(n: int, sigma_min: float, sigma_max: float, rho: float = 7.0) -> torch.Tensor:
    """EDM's grid (Karras et al. 2022, Eq. 5): uniform in σ^(1/ρ).

    σ_i = (σ_max^(1/ρ) + i/(n−1)·(σ_min^(1/ρ) − σ_max^(1/ρ)))^ρ for i = 0, …, n−1, then σ_n = 0.
    With n = 1 the grid is [σ_max, 0] (a single denoising step). ρ = 7 is EDM's choice; ρ → ∞
    tends to the log-SNR-uniform grid, ρ = 1 is uniform in σ.

    Returns: (n + 1,) float64.
    """
    n = _check_n(n)
    sigma_min, sigma_max = _check_range(sigma_min, sigma_max)
    if not (rho > 0 and math.isfinite(rho)):
        raise ValueError(f"rho must be a finite number > 0, got {rho}")
    if n == 1:
        return _finish(torch.tensor([sigma_max], dtype=torch.float64))
    ramp = torch.linspace(0, 1, n, dtype=torch.float64)
    lo, hi = sigma_min ** (1 / rho), sigma_max ** (1 / rho)
    sigmas = (hi + ramp * (lo - hi)) ** rho
    sigmas[0], sigmas[-1] = sigma_max, sigma_min  # exact endpoints
    return _finish(sigmas)


def time_uniform_sigmas(n: int, sigma_min: float, sigma_max: float, process: Union[str, Process]) -> torch.Tensor:
    """Uniform in the process's own time t, mapped through σ(t) (Song et al. 2021; DDIM "linear" spacing).

    t_i = t(σ_max) + i/(n−1)·(t(σ_min) − t(σ_max)), σ_i = σ(t_i), i = 0, …, n−1, then 0. The
    endpoints are set exactly to σ_max and σ_min. With n = 1 the grid is [σ_max, 0].

    Args:
        process: a :class:`~genspace.continuous.processes.Process` or its name ("vp", "flow", …);
            [σ_min, σ_max] must lie within its range (ValueError otherwise).

    Returns: (n + 1,) float64.
    """
    n = _check_n(n)
    sigma_min, sigma_max = _check_range(sigma_min, sigma_max)
    process = _as_process(process)
    process.check_sigma(torch.tensor([sigma_min, sigma_max], dtype=torch.float64), what="[sigma_min, sigma_max]")
    if n == 1:
        return _finish(torch.tensor([sigma_max], dtype=torch.float64))
    t_hi = process.t_of_sigma(torch.tensor(sigma_max, dtype=torch.float64))
    t_lo = process.t_of_sigma(torch.tensor(sigma_min, dtype=torch.float64))
    t = t_hi + torch.linspace(0, 1, n, dtype=torch.float64) * (t_lo - t_hi)
    sigmas = process.sigma(t).to(torch.float64)
    sigmas[0], sigmas[-1] = sigma_max, sigma_min
    return _finish(sigmas)


def log_snr_uniform_sigmas(n: int, sigma_min: float, sigma_max: float) -> torch.Tensor:
    """Uniform in the log-SNR λ = −2 log σ (the natural grid of DPM-Solver, Lu et al. 2022, §3.3).

    σ_i = σ_max·(σ_min/σ_max)^(i/(n−1)), i = 0, …, n−1, then 0 (geometric in σ). n = 1: [σ_max, 0].

    Returns: (n + 1,) float64.
    """
    n = _check_n(n)
    sigma_min, sigma_max = _check_range(sigma_min, sigma_max)
    if n == 1:
        return _finish(torch.tensor([sigma_max], dtype=torch.float64))
    log_sigma = torch.linspace(math.log(sigma_max), math.log(sigma_min), n, dtype=torch.float64)
    sigmas = log_sigma.exp()
    sigmas[0], sigmas[-1] = sigma_max, sigma_min
    return _finish(sigmas)


def trailing_timesteps(n: int, n_train: int) -> torch.Tensor:
    """The "trailing" timestep spacing (Lin et al. 2024, Table 2), as 0-based table indices.

    With T training steps numbered 1, …, T (the paper's table) trailing spacing takes
    round(T − i·T/n) for i = 0, …, n−1; as 0-based indices of a table of length T this is
    t_i = round(T − i·T/n) − 1, so the first step is always the last table entry T − 1 (the
    noisiest σ the network was trained on), unlike "leading" spacing.

    Returns: (n,) int64, strictly decreasing.
    """
    n = _check_n(n)
    if n > n_train:
        raise ValueError(f"trailing spacing needs n <= the number of table steps {n_train}, got n={n}")
    i = torch.arange(n, dtype=torch.float64)
    return torch.round(n_train - i * (n_train / n)).to(torch.int64) - 1


def trailing_sigmas(n: int, process: DiscreteVPProcess) -> torch.Tensor:
    """σ at the "trailing" DDPM timesteps (Lin et al. 2024, Table 2), then 0.

    σ_i = process.sigmas[t_i] with t_i from :func:`trailing_timesteps`: the grid starts at the
    table's last entry σ_{T−1} and every value is a table σ (no interpolation).

    Args:
        process: a :class:`~genspace.continuous.processes.DiscreteVPProcess` (or the name
            "ddpm-linear" / "ddpm-cosine").

    Returns: (n + 1,) float64.
    """
    n = _check_n(n)
    process = _as_process(process)
    if not isinstance(process, DiscreteVPProcess):
        raise ValueError(
            f"the trailing grid needs a discrete-time table process (ddpm-linear, ddpm-cosine), got {process.name!r}"
        )
    t = trailing_timesteps(n, process.n_steps)
    return _finish(process.sigmas[t].to(torch.float64))


def apply_shift(sigmas: torch.Tensor, k: float) -> torch.Tensor:
    """SD3's time shift on a σ grid: σ → k·σ on the nonzero entries (zeros stay zero).

    For the flow time t = σ/(1 + σ), SD3's shift t' = k·t/(1 + (k − 1)·t) (Esser et al. 2024,
    Eq. 23) is exactly σ' = k·σ: t'/(1 − t') = k·t/(1 − t). The endpoints move with it; see the
    module docstring for the range-preserving use in :func:`get_grid`.

    Returns: a new tensor with the dtype of ``sigmas``.
    """
    k = float(k)
    if not (k > 0 and math.isfinite(k)):
        raise ValueError(f"shift k must be a finite number > 0, got {k}")
    sigmas = torch.as_tensor(sigmas)
    return torch.where(sigmas > 0, sigmas * k, sigmas)


def flow_shift_sigmas(n: int, sigma_min: float, sigma_max: float, shift: float = 3.0) -> torch.Tensor:
    """SD3's schedule (Esser et al. 2024, §5.3.2, Eq. 23): uniform flow time, shifted by ``shift``.

    Flow time t = σ/(1 + σ) is spaced uniformly over [t(σ_max/k), t(σ_min/k)] and then shifted,
    t' = k·t/(1 + (k − 1)·t), i.e. σ' = k·σ. Building the base grid on the range divided by k
    makes the shifted grid span exactly [σ_min, σ_max] with no clipping. k > 1 puts more steps
    at high noise (SD3 uses k = 3 at 1024²); k = 1 is the plain time-uniform flow grid.

    Returns: (n + 1,) float64.
    """
    k = float(shift)
    if not (k > 0 and math.isfinite(k)):
        raise ValueError(f"shift must be a finite number > 0, got {shift}")
    n = _check_n(n)
    sigma_min, sigma_max = _check_range(sigma_min, sigma_max)
    if n == 1:
        return _finish(torch.tensor([sigma_max], dtype=torch.float64))
    lo, hi = sigma_min / k, sigma_max / k
    t_hi, t_lo = hi / (1 + hi), lo / (1 + lo)
    t = t_hi + torch.linspace(0, 1, n, dtype=torch.float64) * (t_lo - t_hi)
    sigmas = k * t / (1 - t)
    sigmas[0], sigmas[-1] = sigma_max, sigma_min
    return _finish(sigmas)


# ----------------------------------------------------------------------------- registry
def _optimized(n, sigma_min, sigma_max, *, denoiser=None, **opts):
    from genspace.sampling.optimized_grid import optimized_sigmas  # lazy: an optional, heavier module

    if denoiser is None:
        raise ValueError("the 'optimized' grid needs the denoiser (pass denoiser=...)")
    return optimized_sigmas(denoiser, n, sigma_min, sigma_max, **opts)


def _time_uniform(n, sigma_min, sigma_max, *, process=None):
    return time_uniform_sigmas(n, sigma_min, sigma_max, _as_process(process))


def _trailing(n, sigma_min, sigma_max, *, process=None):
    sigmas = trailing_sigmas(n, process)
    top, low = float(sigmas[0]), float(sigmas[-2])
    if top > sigma_max * (1 + 1e-6) or low < sigma_min * (1 - 1e-6):
        raise ValueError(
            f"the trailing grid of this table spans [{low:.6g}, {top:.6g}], outside the requested range "
            f"[sigma_min={sigma_min:.6g}, sigma_max={sigma_max:.6g}]; use the table's sigma_max ({top:.6g})"
        )
    return sigmas


# name -> (builder(n, sigma_min, sigma_max, **opts), its option names, accepts the generic shift option)
_GRIDS = {
    "karras": (karras_sigmas, ("rho",), True),
    "time-uniform": (_time_uniform, ("process",), True),
    "log-snr": (log_snr_uniform_sigmas, (), True),
    "trailing": (_trailing, ("process",), False),
    "flow-shift": (flow_shift_sigmas, ("shift",), False),
    "optimized": (_optimized, None, False),  # None: options are those of optimized_sigmas
}


def grid_names() -> list[str]:
    """Names accepted by :func:`get_grid`."""
    return list(_GRIDS)


def _check_name(name) -> None:
    if name not in _GRIDS:
        raise ValueError(f"unknown grid {name!r}; choose one of {grid_names()}")


def grid_options(name: str) -> Optional[tuple[str, ...]]:
    """Option names of grid ``name`` (besides n, sigma_min, sigma_max), or None if open-ended.

    Every grid with a range also accepts ``shift`` (range-preserving SD3 shift). The optimized
    grid's options are those of ``optimized_sigmas`` (looked up lazily); it also takes ``denoiser``.
    """
    _check_name(name)
    _, opts, shiftable = _GRIDS[name]
    if opts is None:
        import inspect

        from genspace.sampling.optimized_grid import optimized_sigmas

        params = inspect.signature(optimized_sigmas).parameters.values()
        if any(p.kind is p.VAR_KEYWORD for p in params):
            return None
        skip = {"denoiser", "n", "sigma_min", "sigma_max"}
        names = [p.name for p in params if p.name not in skip and p.kind is not p.VAR_POSITIONAL]
        return ("denoiser", *names)
    return (*opts, "shift") if shiftable else opts


def get_grid(name: str, n: int, sigma_min: float, sigma_max: float, **opts) -> torch.Tensor:
    """Build grid ``name`` with n steps on [σ_min, σ_max] (then 0): a (n + 1,) float64 tensor.

    Options: karras: ``rho``; time-uniform: ``process``; trailing: ``process`` (a table process;
    its grid must lie within [σ_min, σ_max]); flow-shift: ``shift``; optimized: ``denoiser`` and
    the options of ``optimized_sigmas``. karras, time-uniform and log-snr also accept
    ``shift=k``: the base grid is built on [σ_min/k, σ_max/k] and mapped by σ → k·σ
    (:func:`apply_shift`), so the range is kept (see the module docstring).

    Raises ValueError on an unknown name or option, n < 1, σ_min >= σ_max or σ <= 0.
    """
    _check_name(name)
    n = _check_n(n)
    sigma_min, sigma_max = _check_range(sigma_min, sigma_max)
    builder, names, shiftable = _GRIDS[name]
    if names is not None:
        allowed = (*names, "shift") if shiftable else names
        unknown = sorted(set(opts) - set(allowed))
        if unknown:
            raise ValueError(f"unknown option(s) {unknown} for grid {name!r}; valid options: {list(allowed)}")
    shift = opts.pop("shift", None) if shiftable else None
    if shift is None:
        return builder(n, sigma_min, sigma_max, **opts)
    k = float(shift)
    if not (k > 0 and math.isfinite(k)):
        raise ValueError(f"shift must be a finite number > 0, got {shift}")
    base = builder(n, sigma_min / k, sigma_max / k, **opts)
    sigmas = apply_shift(base, k)
    sigmas[0] = sigma_max  # exact endpoints (k·(σ/k) may differ in the last bit)
    if n > 1:
        sigmas[n - 1] = sigma_min
    return sigmas
