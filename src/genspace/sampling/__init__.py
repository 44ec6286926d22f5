"""Sampling: step grids and continuous samplers as plain functions, and the ``sample`` entry point.

- :mod:`~genspace.sampling.grids`: σ grids (karras, time-uniform, log-snr, trailing, flow-shift,
  optimized) — pure functions returning float64 tensors ending in 0.
- :mod:`~genspace.sampling.ode`: deterministic PF-ODE samplers (euler, heun, dpm-solver-2,
  dpmpp-2m, dpmpp-3m, unipc, adaptive).
- :mod:`~genspace.sampling.stochastic`: stochastic samplers (ddpm, ddim(η), edm-stochastic,
  euler-maruyama, euler-ancestral, dpmpp-2m-sde, dpmpp-3m-sde).
- :mod:`~genspace.sampling.api`: ``sample(denoiser, noise, method=, nfe=, sigma_min=, sigma_max=)``
  and the method registry ``methods()``.
"""

from genspace.sampling.api import MethodInfo, method_names, methods, sample
from genspace.sampling.grids import (
    apply_shift,
    flow_shift_sigmas,
    get_grid,
    grid_names,
    karras_sigmas,
    log_snr_uniform_sigmas,
    time_uniform_sigmas,
    trailing_sigmas,
)
from genspace.sampling.ode import (
    NFEBudgetError,
    sample_adaptive,
    sample_dpm_solver_2,
    sample_dpmpp_2m,
    sample_dpmpp_3m,
    sample_euler,
    sample_heun,
    sample_unipc,
)
from genspace.sampling.stochastic import (
    sample_ddim,
    sample_ddpm,
    sample_dpmpp_2m_sde,
    sample_dpmpp_3m_sde,
    sample_edm_stochastic,
    sample_euler_ancestral,
    sample_euler_maruyama,
)

__all__ = [
    "sample",
    "methods",
    "method_names",
    "MethodInfo",
    "get_grid",
    "grid_names",
    "karras_sigmas",
    "time_uniform_sigmas",
    "log_snr_uniform_sigmas",
    "trailing_sigmas",
    "flow_shift_sigmas",
    "apply_shift",
    "sample_euler",
    "sample_heun",
    "sample_dpm_solver_2",
    "sample_dpmpp_2m",
    "sample_dpmpp_3m",
    "sample_unipc",
    "sample_adaptive",
    "NFEBudgetError",
    "sample_ddpm",
    "sample_ddim",
    "sample_edm_stochastic",
    "sample_euler_maruyama",
    "sample_euler_ancestral",
    "sample_dpmpp_2m_sde",
    "sample_dpmpp_3m_sde",
]
