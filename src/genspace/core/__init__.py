"""Conventions shared by every part of genspace."""

from genspace.core.denoiser import BoundDenoiser, CountingDenoiser, Denoiser, as_sigma_batch
from genspace.core.gmm import GaussianMixture
from genspace.core.random import (
    Generator,
    StackedGenerator,
    rand_like,
    randn,
    randn_like,
)
from genspace.core.tensor import append_dims

__all__ = [
    "Denoiser",
    "CountingDenoiser",
    "BoundDenoiser",
    "as_sigma_batch",
    "GaussianMixture",
    "Generator",
    "StackedGenerator",
    "randn",
    "randn_like",
    "rand_like",
    "append_dims",
]
