"""Variational autoencoders: the Gaussian VAE, β-VAE, the IWAE bound and an importance-sampled NLL.

The model (Kingma & Welling 2014, §2–3): a prior z ~ N(0, I_Z), a decoder p_θ(x | z) and an
encoder (inference network) q_φ(z | x) = N(μ_φ(x), diag σ²_φ(x)), sampled by reparameterization
z = μ + σ ⊙ ε, ε ~ N(0, I) (their Eq. 4 and §2.4).

Bounds on log p(x), all in nats per example:

- ELBO (Kingma & Welling 2014, Eq. 3 with the analytic KL of their Eq. 10 / Appendix B)::

      L(x) = E_q[log p(x | z)] − KL(q(z | x) ‖ N(0, I)),
      KL   = ½ Σ_j (μ_j² + σ_j² − 1 − log σ_j²)                         (gaussian_kl)

  The reconstruction expectation is estimated with reparameterized draws; the KL is exact.
- β-VAE (Higgins et al. 2017, Eq. 4): the training objective E_q[log p(x | z)] − β·KL; β = 1 is
  the ELBO, β > 1 trades reconstruction for a more factorized posterior. β only changes the
  training loss, never the reported bounds.
- IWAE (Burda et al. 2016, Eq. 8)::

      L_K(x) = E_{z_1..K ~ q}[ log (1/K) Σ_k w_k ],   w_k = p(x, z_k) / q(z_k | x)

  with L_1 = ELBO ≤ L_K ≤ L_{K+1} ≤ log p(x) and L_K → log p(x) as K → ∞ when the weights are bounded (their Theorem 1).
  Per draw, log (1/K) Σ_k w_k ≥ (1/K) Σ_k log w_k (Jensen): the K-sample bound is never below
  the mean of the K single-sample ELBO terms of the same draws.

Test NLL (:meth:`VAE.log_likelihood`): one draw of the IWAE estimator with a declared K
(``eval_k``, Burda et al. use K = 5000). Its label is ``likelihood_kind = "bound"``: the estimator's
EXPECTATION is L_K ≤ log p(x), a lower bound that tightens with K and converges to log p(x) as
K → ∞; a single draw is random and may land above log p(x) (exp of it is an unbiased estimate of
p(x)). Average over many examples before comparing models.

Decoders (which one is used when):

- :class:`GaussianDecoder`, N(x; μ_θ(z), diag σ²) with a learned variance that is either one value
  per dimension (``"per-dim"``) or one value for all (``"global"``), not a function of z. Used for
  continuous data (2-D toys): ``log_likelihood`` is then a bound on the log-DENSITY of x.
  On quantized images (``dequantize_levels=L``) it is trained on uniformly dequantized pixels
  y = 2(k + u)/L − 1 (Theis et al. 2016, §3.1), and ``log_likelihood`` returns
  log p̂(y) + D·log(2/L) for one u draw: in expectation a lower bound on the discrete
  log-probability of the levels k, comparable with discrete models.
- :class:`CategoricalDecoder`, one L-way softmax per pixel over the integer levels (van den Oord et
  al. 2016's output layer, here without autoregression): log p(x | z) is a log-PROBABILITY of the
  levels, so the bound is on log P(k) and −L/(D ln 2) is in bits/dim like PixelCNN's. The default
  for images with known grey levels (``build_vae`` with ``decoder="auto"``).

Networks: MLPs on flattened examples (2-D points, or 8×8 digits as 64-vectors; SiLU activations).
A flattened MLP is enough for small images and keeps the encoder/decoder pair symmetric; the
encoder/decoder interfaces below accept any module, e.g. a conv pair for larger images.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal, Optional

import torch
from torch import nn

from genspace.config import register_variant
from genspace.core.random import Generator, rand, randn
from genspace.data.images import dequantize, to_uint8, to_unit_range

__all__ = [
    "VAE",
    "GaussianEncoder",
    "GaussianDecoder",
    "CategoricalDecoder",
    "gaussian_kl",
    "log_normal_diag",
    "mlp",
    "VAEConfig",
    "build_vae",
    "FAMILY_BUILDERS",
]

_LOG_2PI = math.log(2 * math.pi)
_OBJECTIVES = ("elbo", "iwae")


# ----------------------------------------------------------------------------- math


def gaussian_kl(mu: torch.Tensor, log_var: torch.Tensor) -> torch.Tensor:
    """KL(N(μ, diag e^{log_var}) ‖ N(0, I)) = ½ Σ_j (μ_j² + σ_j² − 1 − log σ_j²) (K&W 2014, App. B).

    mu, log_var: (B, Z). Returns (B,) nats.
    """
    return 0.5 * (mu.square() + log_var.exp() - 1.0 - log_var).sum(-1)


def log_normal_diag(x: torch.Tensor, mean: torch.Tensor, log_var: torch.Tensor) -> torch.Tensor:
    """log N(x; mean, diag e^{log_var}) summed over the last dimension (broadcasting). (..., D) → (...)."""
    return -0.5 * ((x - mean).square() * torch.exp(-log_var) + log_var + _LOG_2PI).sum(-1)


def mlp(in_dim: int, hidden: int, depth: int, out_dim: int, activation: type = nn.SiLU) -> nn.Sequential:
    """Linear → (activation → Linear) × depth: ``depth`` hidden layers of width ``hidden``."""
    if depth < 1 or hidden < 1:
        raise ValueError(f"an MLP needs depth >= 1 and hidden >= 1, got depth={depth}, hidden={hidden}")
    layers: list[nn.Module] = [nn.Linear(in_dim, hidden)]
    for i in range(depth):
        layers += [activation(), nn.Linear(hidden, out_dim if i == depth - 1 else hidden)]
    return nn.Sequential(*layers)


# ----------------------------------------------------------------------------- encoder / decoders


class GaussianEncoder(nn.Module):
    """q(z | x) = N(μ(x), diag e^{log_var(x)}) from a net x (B, D) → (B, 2Z) split into (μ, log σ²).

    Any encoder of :class:`VAE` is a module ``encoder(x_flat) -> (mu, log_var)``, each (B, Z).
    """

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        mu, log_var = self.net(x).chunk(2, dim=-1)  # (B, Z) each
        return mu, log_var


class GaussianDecoder(nn.Module):
    """p(x | z) = N(x; μ_θ(z), diag σ²) with a learned variance independent of z.

    Args:
        net: z (N, Z) → μ (N, D).
        dim: D.
        variance: ``"per-dim"`` (one log σ² per dimension) or ``"global"`` (one shared log σ²).
        init_log_var: initial log σ².
    """

    def __init__(self, net: nn.Module, dim: int, variance: Literal["per-dim", "global"] = "per-dim", init_log_var: float = 0.0) -> None:
        super().__init__()
        if variance not in ("per-dim", "global"):
            raise ValueError(f"variance must be 'per-dim' or 'global', got {variance!r}")
        self.net, self.dim, self.variance = net, int(dim), variance
        self.log_var = nn.Parameter(torch.full((self.dim if variance == "per-dim" else 1,), float(init_log_var)))

    def log_prob(self, x: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        """log p(x | z): x (N, D) data values, z (N, Z). Returns (N,) nats (a log-density)."""
        return log_normal_diag(x, self.net(z), self.log_var.to(x.dtype))

    def sample(self, z: torch.Tensor, *, generator: Generator = None, noise: bool = True) -> torch.Tensor:
        """x ~ p(x | z) (or its mean with ``noise=False``): z (N, Z) → (N, D)."""
        mean = self.net(z)
        if not noise:
            return mean
        eps = randn(mean.shape, generator=generator, dtype=mean.dtype, device=mean.device)
        return mean + torch.exp(0.5 * self.log_var.to(mean.dtype)) * eps


class CategoricalDecoder(nn.Module):
    """p(x | z) = Π_d Cat(k_d; softmax(logits_θ(z)_d)) over the L integer levels of each pixel.

    Data values are floats in [−1, 1] (:func:`genspace.data.to_unit_range` levels); the target
    level of each value is :func:`genspace.data.to_uint8` of it.

    Args:
        net: z (N, Z) → logits (N, D·L).
        dim: D.
        n_levels: L.
    """

    def __init__(self, net: nn.Module, dim: int, n_levels: int) -> None:
        super().__init__()
        if isinstance(n_levels, bool) or not isinstance(n_levels, int) or n_levels < 2:
            raise ValueError(f"n_levels must be an integer >= 2, got {n_levels!r}")
        self.net, self.dim, self.n_levels = net, int(dim), n_levels

    def logits(self, z: torch.Tensor) -> torch.Tensor:
        return self.net(z).reshape(z.shape[0], self.dim, self.n_levels)  # (N, D, L)

    def log_prob(self, x: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        """log P(levels of x | z): x (N, D) values in [−1, 1], z (N, Z). Returns (N,) nats (a log-probability)."""
        k = to_uint8(x, self.n_levels).long()  # (N, D)
        logp = torch.log_softmax(self.logits(z), dim=-1)  # (N, D, L)
        return logp.gather(-1, k.unsqueeze(-1)).squeeze(-1).sum(-1)

    def sample(self, z: torch.Tensor, *, generator: Generator = None, noise: bool = True) -> torch.Tensor:
        """Levels k ~ p(k | z) by inverse CDF (or the most probable level with ``noise=False``),
        returned as values in [−1, 1]: z (N, Z) → (N, D)."""
        logits = self.logits(z)
        if noise:
            u = rand(logits.shape[:2], generator=generator, dtype=logits.dtype, device=logits.device)  # (N, D)
            cdf = torch.softmax(logits, dim=-1).cumsum(-1)  # (N, D, L)
            k = (cdf < u.unsqueeze(-1)).sum(-1).clamp(max=self.n_levels - 1)
        else:
            k = logits.argmax(-1)
        return to_unit_range(k, self.n_levels, dtype=logits.dtype)


# ----------------------------------------------------------------------------- the model


class VAE(nn.Module):
    """A VAE / β-VAE trained on the negative (β-)ELBO or the IWAE bound.

    Args:
        encoder: ``encoder(x_flat) -> (mu, log_var)``, x_flat (B, D) → two (B, Z) tensors.
        decoder: a :class:`GaussianDecoder` or :class:`CategoricalDecoder` (``log_prob(x, z)`` and
            ``sample(z, generator=, noise=)``).
        shape: per-example data shape, D = prod(shape).
        latent_dim: Z.
        beta: weight of the KL term in the ELBO objective (Higgins et al. 2017); 1: the VAE.
        objective: ``"elbo"`` (reconstruction + β·KL, the reconstruction averaged over ``k``
            draws) or ``"iwae"`` (−L_k, Burda et al. 2016; needs β = 1).
        k: posterior draws per example in the training objective.
        eval_k: the declared K of :meth:`log_likelihood`.
        dequantize_levels: for a Gaussian decoder on quantized data with L levels: train on
            uniformly dequantized values and report the discrete bound (module docstring).
    """

    likelihood_kind = "bound"

    @property
    def likelihood_space(self) -> str:
        """``"levels"`` when :meth:`log_likelihood` bounds log P of integer levels (a categorical
        decoder, or a Gaussian one with ``dequantize_levels``: it dequantizes and adds the bin
        volume itself), else ``"density"`` (continuous data)."""
        return "levels" if (self.dequantize_levels is not None or isinstance(self.decoder, CategoricalDecoder)) else "density"

    @property
    def likelihood_description(self) -> str:
        """How :meth:`log_likelihood` is computed (for tables), with its declared K."""
        return f"importance sampling (IWAE estimator), K={self.eval_k}, one draw: a lower bound in expectation"

    def __init__(
        self,
        encoder: nn.Module,
        decoder: nn.Module,
        shape: tuple[int, ...],
        *,
        latent_dim: int,
        beta: float = 1.0,
        objective: Literal["elbo", "iwae"] = "elbo",
        k: int = 1,
        eval_k: int = 1000,
        dequantize_levels: Optional[int] = None,
    ) -> None:
        super().__init__()
        if objective not in _OBJECTIVES:
            raise ValueError(f"objective must be one of {_OBJECTIVES}, got {objective!r}")
        if not beta >= 0:
            raise ValueError(f"beta must be >= 0, got {beta}")
        if objective == "iwae" and beta != 1.0:
            raise ValueError(f"the IWAE objective is a bound on log p(x) only with beta = 1, got beta={beta}")
        _check_k("k", k)
        _check_k("eval_k", eval_k)
        if dequantize_levels is not None and isinstance(decoder, CategoricalDecoder):
            raise ValueError("dequantize_levels is for a Gaussian decoder; a categorical decoder models the levels directly")
        self.encoder, self.decoder = encoder, decoder
        self.shape = tuple(int(s) for s in shape)
        self.dim = int(math.prod(self.shape))
        self.latent_dim = int(latent_dim)
        self.beta, self.objective, self.k, self.eval_k = float(beta), objective, int(k), int(eval_k)
        self.dequantize_levels = dequantize_levels
        self.n_classes = None  # unconditional

    # -------------------------------------------------------------- pieces

    def _flat(self, x: torch.Tensor, generator: Generator) -> tuple[torch.Tensor, float]:
        """(x as (B, D) model inputs, log-volume added to the log-density): dequantized if set."""
        if tuple(x.shape[1:]) != self.shape:
            raise ValueError(f"expected examples of shape {self.shape}, got a batch of shape {tuple(x.shape)}")
        x = x.reshape(x.shape[0], self.dim)  # (B, D)
        if self.dequantize_levels is None:
            return x, 0.0
        L = self.dequantize_levels
        y = dequantize(to_uint8(x, L), L, generator=generator, dtype=x.dtype)
        return y, self.dim * math.log(2.0 / L)

    def posterior(self, x_flat: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(μ, log σ²) of q(z | x), each (B, Z), for flattened inputs (B, D)."""
        return self.encoder(x_flat)

    def _draw(self, mu, log_var, k: int, generator: Generator):
        """k reparameterized draws per example: (z (B, k, Z), ε (B, k, Z))."""
        b, zdim = mu.shape
        eps = randn((b, k, zdim), generator=generator, dtype=mu.dtype, device=mu.device)
        return mu.unsqueeze(1) + torch.exp(0.5 * log_var).unsqueeze(1) * eps, eps

    def _recon(self, x_flat: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        """log p(x | z_k): x_flat (B, D), z (B, k, Z) → (B, k)."""
        b, k, zdim = z.shape
        xk = x_flat.unsqueeze(1).expand(b, k, self.dim).reshape(b * k, self.dim)  # (B·k, D)
        return self.decoder.log_prob(xk, z.reshape(b * k, zdim)).reshape(b, k)

    def log_weights_flat(self, x_flat: torch.Tensor, k: int, *, generator: Generator = None) -> torch.Tensor:
        """log w_k = log p(x | z_k) + log p(z_k) − log q(z_k | x), z_k ~ q(z | x) iid: (B, D) → (B, k)."""
        mu, log_var = self.posterior(x_flat)
        z, eps = self._draw(mu, log_var, k, generator)
        log_q = -0.5 * (eps.square() + log_var.unsqueeze(1) + _LOG_2PI).sum(-1)  # (B, k): log N(z; μ, σ²)
        log_prior = -0.5 * (z.square() + _LOG_2PI).sum(-1)  # (B, k)
        return self._recon(x_flat, z) + log_prior - log_q

    # -------------------------------------------------------------- bounds (nats per example)

    def log_weights(self, x: torch.Tensor, k: int, *, generator: Generator = None) -> torch.Tensor:
        """log w_k for data x (B, *shape): (B, k). With dequantization, of the dequantized x plus
        the log bin volume (so that log-mean-exp of the row is the discrete IWAE estimate)."""
        _check_k("k", k)
        x_flat, log_vol = self._flat(x, generator)
        return self.log_weights_flat(x_flat, k, generator=generator) + log_vol

    def elbo(self, x: torch.Tensor, *, generator: Generator = None, n_samples: int = 1) -> torch.Tensor:
        """The ELBO estimate E_q[log p(x|z)] − KL with the analytic KL (K&W Eq. 10): (B, *shape) → (B,).

        The reconstruction term is averaged over ``n_samples`` reparameterized draws.
        """
        _check_k("n_samples", n_samples)
        x_flat, log_vol = self._flat(x, generator)
        recon, kl = self._elbo_terms(x_flat, n_samples, generator)
        return recon - kl + log_vol

    def _elbo_terms(self, x_flat, n_samples: int, generator: Generator):
        mu, log_var = self.posterior(x_flat)
        z, _ = self._draw(mu, log_var, n_samples, generator)
        return self._recon(x_flat, z).mean(1), gaussian_kl(mu, log_var)

    def iwae_bound(self, x: torch.Tensor, k: int, *, generator: Generator = None) -> torch.Tensor:
        """One draw of the IWAE estimator log (1/k) Σ_k w_k (Burda et al. 2016, Eq. 8): (B,)."""
        log_w = self.log_weights(x, k, generator=generator)
        return torch.logsumexp(log_w, dim=1) - math.log(k)

    @torch.no_grad()
    def log_likelihood(self, x: torch.Tensor, *, generator: Generator = None, k: Optional[int] = None, chunk: int = 256) -> torch.Tensor:
        """Importance-sampled log p(x) with a declared K (default ``eval_k``): (B, *shape) → (B,) nats.

        log (1/K) Σ_{k=1..K} p(x, z_k)/q(z_k | x), z_k ~ q(z | x), accumulated over chunks of
        ``chunk`` draws with a running log-sum-exp (so memory does not grow with K). A stochastic
        lower bound in expectation (``likelihood_kind = "bound"``, see the module docstring).
        """
        k = self.eval_k if k is None else k
        _check_k("k", k)
        _check_k("chunk", chunk)
        x_flat, log_vol = self._flat(x, generator)
        total = torch.full((x_flat.shape[0],), -math.inf, dtype=x_flat.dtype, device=x_flat.device)
        done = 0
        while done < k:
            m = min(chunk, k - done)
            log_w = self.log_weights_flat(x_flat, m, generator=generator)  # (B, m)
            total = torch.logaddexp(total, torch.logsumexp(log_w, dim=1))
            done += m
        return total - math.log(k) + log_vol

    # -------------------------------------------------------------- the trainer protocol

    def losses(self, batch, *, phase: str = "main", generator: Generator = None) -> dict[str, torch.Tensor]:
        """Per-example terms (B,) of the objective; ``_nelbo`` is the (β = 1) negative ELBO estimate.

        ELBO objective: ``recon`` = −E_q[log p(x|z)] (k draws), ``kl`` = β·KL (analytic).
        IWAE objective: ``niwae`` = −log (1/k) Σ w_k; ``_nelbo`` = −(1/k) Σ log w_k, same draws.
        """
        x_flat, log_vol = self._flat(batch[0], generator)
        if self.objective == "iwae":
            log_w = self.log_weights_flat(x_flat, self.k, generator=generator) + log_vol
            return {"niwae": math.log(self.k) - torch.logsumexp(log_w, dim=1), "_nelbo": -log_w.mean(1)}
        recon, kl = self._elbo_terms(x_flat, self.k, generator)
        return {"recon": -(recon + log_vol), "kl": self.beta * kl, "_nelbo": kl - recon - log_vol}

    @torch.no_grad()
    def sample(
        self,
        n: int,
        *,
        shape: Optional[tuple[int, ...]] = None,
        generator: Generator = None,
        class_labels=None,
        decoder_noise: bool = True,
        **ignored,
    ) -> torch.Tensor:
        """x ~ p(x) = ∫ p(x|z) N(z; 0, I) dz: (n, *shape). ``decoder_noise=False`` returns the
        decoder's mean (Gaussian) or most probable levels (categorical) at z ~ N(0, I) instead.

        Images with a dequantizing Gaussian decoder are mapped back to their levels.
        """
        if shape is not None and tuple(shape) != self.shape:
            raise ValueError(f"this VAE models examples of shape {self.shape}, got shape={tuple(shape)}")
        p = next(self.parameters())
        z = randn((n, self.latent_dim), generator=generator, dtype=p.dtype, device=p.device)
        x = self.decoder.sample(z, generator=generator, noise=decoder_noise)  # (n, D)
        if self.dequantize_levels is not None:
            x = to_unit_range(to_uint8(x, self.dequantize_levels), self.dequantize_levels, dtype=x.dtype)
        return x.reshape(n, *self.shape)


def _check_k(name: str, k) -> None:
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise ValueError(f"{name} must be a positive integer, got {k!r}")


# ----------------------------------------------------------------------------- config and builder


@register_variant("model", "vae")
@dataclass
class VAEConfig:
    """A Gaussian VAE / β-VAE / IWAE (Kingma & Welling 2014; Higgins et al. 2017; Burda et al. 2016)."""

    latent_dim: Optional[int] = None  # Z; None: 2 for points, 16 for images
    hidden: int = 256  # width of the encoder and decoder MLPs
    depth: int = 2  # hidden layers of each MLP
    beta: float = 1.0  # KL weight of the ELBO objective (β-VAE); 1: the plain VAE
    objective: Literal["elbo", "iwae"] = "elbo"  # training bound: ELBO or the K-sample IWAE bound
    k: int = 1  # posterior draws per example in the objective (Burda et al. train IWAE with 5 or 50)
    decoder: Literal["auto", "gaussian", "categorical"] = "auto"  # auto: categorical for images with grey levels, else Gaussian
    variance: Literal["per-dim", "global"] = "per-dim"  # the Gaussian decoder's learned variance
    init_log_var: float = -2.0  # initial log σ² of the Gaussian decoder (below the data's ~1: see build_vae)
    eval_k: int = 1000  # the declared K of the importance-sampled test log-likelihood (Burda et al.: 5000)


def build_vae(cfg: VAEConfig, data) -> VAE:
    """The VAE of ``cfg`` for ``data`` (duck-typed DataBundle: shape, kind, n_levels, n_classes).

    The Gaussian decoder's variance starts at e^{init_log_var} (default σ ≈ 0.37), below the data
    variance (≈ 1 for the toys): started at σ² = 1 the decoder explains the data as its own noise
    within a few steps, the KL term then pushes q(z|x) onto the prior and training stalls at the
    best single Gaussian (posterior collapse; on 8gaussians KL ≈ 0.02 nats after 400 steps).
    """
    if getattr(data, "n_classes", None) is not None:
        raise ValueError("the VAE family is unconditional: set data.labels=false")
    shape = tuple(int(s) for s in data.shape)
    dim = int(math.prod(shape))
    images, levels = data.kind == "images", getattr(data, "n_levels", None)
    latent = cfg.latent_dim if cfg.latent_dim is not None else (16 if images else 2)
    if isinstance(latent, bool) or not isinstance(latent, int) or latent < 1:
        raise ValueError(f"model.latent_dim must be a positive integer or None, got {cfg.latent_dim!r}")
    kind = cfg.decoder
    if kind == "auto":
        kind = "categorical" if images and levels is not None else "gaussian"
    if kind == "categorical" and levels is None:
        raise ValueError("model.decoder=categorical needs quantized data with known grey levels (data.n_levels)")
    encoder = GaussianEncoder(mlp(dim, cfg.hidden, cfg.depth, 2 * latent))
    if kind == "categorical":
        decoder: nn.Module = CategoricalDecoder(mlp(latent, cfg.hidden, cfg.depth, dim * levels), dim, levels)
    else:
        decoder = GaussianDecoder(mlp(latent, cfg.hidden, cfg.depth, dim), dim, cfg.variance, cfg.init_log_var)
    return VAE(
        encoder,
        decoder,
        shape,
        latent_dim=latent,
        beta=cfg.beta,
        objective=cfg.objective,
        k=cfg.k,
        eval_k=cfg.eval_k,
        dequantize_levels=levels if (kind == "gaussian" and images and levels is not None) else None,
    )


FAMILY_BUILDERS = {VAEConfig: build_vae}
