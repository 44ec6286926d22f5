"""An analytic oracle: a Gaussian mixture with exact density, score and denoiser.

For data x0 ~ Σ_k w_k N(μ_k, Σ_k) and x = x0 + σ·ε (σ-space, ε ~ N(0, I)) everything is closed
form:

    p_σ(x)      = Σ_k w_k N(x; μ_k, Σ_k + σ²I)
    r_k(x)      ∝ w_k N(x; μ_k, Σ_k + σ²I)                          (responsibilities)
    ∇log p_σ(x) = Σ_k r_k (Σ_k + σ²I)⁻¹ (μ_k − x)
    E[x0 | x]   = Σ_k r_k (μ_k + Σ_k (Σ_k + σ²I)⁻¹ (x − μ_k))       (Tweedie: x + σ² ∇log p_σ)

Each Σ_k is eigendecomposed once (Σ_k = U_k diag(λ_k) U_kᵀ), so that every σ costs
O(B·K·D²) without a solve. All arithmetic runs in float64; results come back in the dtype
and on the device of the input.
"""

from __future__ import annotations

import math
from typing import Optional

import torch

from genspace.core.random import Generator, randn


class GaussianMixture:
    """A mixture of K Gaussians in D dimensions.

    Args:
        weights: (K,) non-negative mixture weights (normalized here).
        means: (K, D) component means.
        covs: (K, D, D) symmetric positive-definite covariances, or (K, D) diagonal variances,
            or (K,) isotropic variances, or None for identity covariances.

    The object is itself a :class:`~genspace.core.denoiser.Denoiser`: ``gmm(x, sigma)`` returns
    E[x0 | x] for x of shape (B, D) (or (B, ...) with D elements per example).
    """

    def __init__(self, weights, means, covs=None) -> None:
        means = torch.as_tensor(means, dtype=torch.float64)
        if means.ndim != 2:
            raise ValueError(f"means must have shape (K, D), got {tuple(means.shape)}")
        k, d = means.shape
        weights = torch.as_tensor(weights, dtype=torch.float64)
        if weights.shape != (k,) or (weights < 0).any() or weights.sum() <= 0:
            raise ValueError(
                f"weights must be {k} non-negative numbers with a positive sum, got {weights.tolist()}"
            )
        if covs is None:
            covs = torch.eye(d, dtype=torch.float64).expand(k, d, d).clone()
        covs = torch.as_tensor(covs, dtype=torch.float64)
        if covs.shape == (k,):
            covs = covs[:, None, None] * torch.eye(d, dtype=torch.float64)
        elif covs.shape == (k, d):
            covs = torch.diag_embed(covs)
        if covs.shape != (k, d, d):
            raise ValueError(f"covs must have shape ({k},), ({k}, {d}) or ({k}, {d}, {d}), got {tuple(covs.shape)}")
        covs = 0.5 * (covs + covs.transpose(-1, -2))
        eigvals, eigvecs = torch.linalg.eigh(covs)
        if (eigvals <= 0).any():
            raise ValueError("every covariance must be positive definite; got an eigenvalue <= 0")
        self.weights = weights / weights.sum()
        self.means = means
        self.covs = covs
        self._lam = eigvals  # (K, D)
        self._u = eigvecs  # (K, D, D); columns are eigenvectors
        self._chol = torch.linalg.cholesky(covs)

    # ------------------------------------------------------------------ constructors
    @classmethod
    def random(
        cls,
        dim: int,
        n_components: int,
        *,
        seed: int = 0,
        spread: float = 2.0,
        scale_range: tuple[float, float] = (0.05, 0.5),
    ) -> "GaussianMixture":
        """A reproducible random mixture: means ~ N(0, spread²/dim·I)·..., anisotropic covariances.

        Means are drawn with norm about ``spread``; each covariance is Q diag(s²) Qᵀ with a random
        rotation Q and standard deviations s uniform in ``scale_range``.
        """
        if dim < 1 or n_components < 1:
            raise ValueError(f"dim and n_components must be >= 1, got dim={dim}, n_components={n_components}")
        g = torch.Generator().manual_seed(seed)
        means = torch.randn(n_components, dim, generator=g, dtype=torch.float64) * spread / math.sqrt(dim)
        lo, hi = scale_range
        std = lo + (hi - lo) * torch.rand(n_components, dim, generator=g, dtype=torch.float64)
        q, _ = torch.linalg.qr(torch.randn(n_components, dim, dim, generator=g, dtype=torch.float64))
        covs = q @ torch.diag_embed(std**2) @ q.transpose(-1, -2)
        weights = 0.5 + torch.rand(n_components, generator=g, dtype=torch.float64)
        return cls(weights, means, covs)

    @classmethod
    def ring(cls, n_components: int = 8, radius: float = 2.0, std: float = 0.1) -> "GaussianMixture":
        """Equal-weight isotropic 2-D Gaussians evenly spaced on a circle (the "8gaussians" toy)."""
        angle = 2 * math.pi * torch.arange(n_components, dtype=torch.float64) / n_components
        means = radius * torch.stack([torch.cos(angle), torch.sin(angle)], dim=1)
        return cls(torch.ones(n_components), means, torch.full((n_components,), std**2))

    # ------------------------------------------------------------------ properties
    @property
    def dim(self) -> int:
        return self.means.shape[1]

    @property
    def n_components(self) -> int:
        return self.means.shape[0]

    def mean(self) -> torch.Tensor:
        """(D,) mean of the mixture."""
        return self.weights @ self.means

    def covariance(self) -> torch.Tensor:
        """(D, D) covariance of the mixture."""
        m = self.mean()
        diff = self.means - m
        return torch.einsum("k,kij->ij", self.weights, self.covs) + torch.einsum("k,ki,kj->ij", self.weights, diff, diff)

    # ------------------------------------------------------------------ core computation
    def _flat(self, x: torch.Tensor) -> torch.Tensor:
        if x.ndim < 2 or x[0].numel() != self.dim:
            raise ValueError(
                f"x must have shape (B, {self.dim}) (or (B, ...) with {self.dim} elements per example), "
                f"got {tuple(x.shape)}"
            )
        return x.reshape(x.shape[0], self.dim).to(torch.float64)

    def _sigma(self, sigma, b: int) -> torch.Tensor:
        sigma = torch.as_tensor(sigma, dtype=torch.float64)
        if sigma.ndim == 0:
            sigma = sigma.expand(b)
        sigma = sigma.reshape(-1).to(torch.float64)
        if sigma.shape[0] != b:
            raise ValueError(f"sigma must be a scalar or have {b} entries, got shape {tuple(sigma.shape)}")
        if (sigma < 0).any():
            raise ValueError(f"sigma must be >= 0, got min {sigma.min().item()}")
        return sigma

    def _parts(self, x: torch.Tensor, sigma):
        """Return (log r_k unnormalized (B,K), y (B,K,D), λ+σ² (B,K,D)) in the eigenbases."""
        xf = self._flat(x).cpu()
        s2 = self._sigma(sigma, xf.shape[0]).cpu() ** 2
        y = torch.einsum("kdj,bkd->bkj", self._u, xf[:, None, :] - self.means)  # Uᵀ(x−μ)
        var = self._lam[None] + s2[:, None, None]  # (B, K, D)
        logn = -0.5 * ((y**2) / var).sum(-1) - 0.5 * var.log().sum(-1) - 0.5 * self.dim * math.log(2 * math.pi)
        return logn + self.weights.log()[None], y, var

    # ------------------------------------------------------------------ public API
    def log_prob(self, x: torch.Tensor, sigma=0.0) -> torch.Tensor:
        """(B,) exact log p_σ(x) of the mixture convolved with N(0, σ²I), in nats."""
        logw, _, _ = self._parts(x, sigma)
        return torch.logsumexp(logw, dim=1).to(device=x.device, dtype=x.dtype)

    def responsibilities(self, x: torch.Tensor, sigma=0.0) -> torch.Tensor:
        """(B, K) posterior component probabilities r_k(x) at noise level σ."""
        logw, _, _ = self._parts(x, sigma)
        return torch.softmax(logw, dim=1).to(device=x.device, dtype=x.dtype)

    def score(self, x: torch.Tensor, sigma=0.0) -> torch.Tensor:
        """∇_x log p_σ(x), same shape as x."""
        logw, y, var = self._parts(x, sigma)
        r = torch.softmax(logw, dim=1)
        comp = -torch.einsum("kdj,bkj->bkd", self._u, y / var)  # (Σ_k+σ²I)⁻¹(μ_k − x)
        out = torch.einsum("bk,bkd->bd", r, comp)
        return out.reshape(x.shape).to(device=x.device, dtype=x.dtype)

    def denoise(self, x: torch.Tensor, sigma) -> torch.Tensor:
        """E[x0 | x_σ = x] = Σ_k r_k (μ_k + Σ_k (Σ_k+σ²I)⁻¹ (x − μ_k)), same shape as x."""
        logw, y, var = self._parts(x, sigma)
        r = torch.softmax(logw, dim=1)
        comp = self.means[None] + torch.einsum("kdj,bkj->bkd", self._u, self._lam[None] / var * y)
        out = torch.einsum("bk,bkd->bd", r, comp)
        return out.reshape(x.shape).to(device=x.device, dtype=x.dtype)

    def __call__(self, x: torch.Tensor, sigma, **cond) -> torch.Tensor:
        return self.denoise(x, sigma)

    def sample(self, n: int, *, generator: Generator = None, dtype=torch.float64, device=None) -> torch.Tensor:
        """(n, D) exact samples. With a StackedGenerator each sample uses its own generator."""
        if n < 1:
            raise ValueError(f"n must be >= 1, got {n}")
        u = randn((n, self.dim + 1), generator=generator, dtype=torch.float64)
        # component by inverse CDF of the first column's normal CDF (keeps one draw stream per sample)
        uniform = 0.5 * (1 + torch.erf(u[:, 0] / math.sqrt(2)))
        cdf = torch.cumsum(self.weights, 0)
        k = torch.searchsorted(cdf, uniform.clamp(max=cdf[-1].item() - 1e-12).contiguous())
        z = u[:, 1:]
        x = self.means[k] + torch.einsum("bij,bj->bi", self._chol[k], z)
        return x.to(dtype=dtype, device=device)
