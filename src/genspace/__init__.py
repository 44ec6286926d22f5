"""genspace: the design space of generative models, one small piece per choice.

Subpackages (imports point one way: ``nets``, ``core`` <- ``continuous``, ``discrete``,
``families`` <- ``sampling`` <- ``metrics``, ``train`` <- ``config`` <- ``cli``):

- ``core``: conventions shared by all (Denoiser protocol, per-sample generators, the analytic
  Gaussian-mixture oracle).
- ``continuous``: processes, parameterizations, losses, PF-ODE likelihood, reflow.
- ``sampling``: step grids and samplers as plain functions; guidance wrappers.
"""

__version__ = "0.1.0"
