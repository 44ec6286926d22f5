"""Autoregressive models: p(x) = Π_d p(x_{o(d)} | x_{o(<d)}), exact likelihoods, sequential sampling.

- :class:`MADE` — Germain et al. 2015, "MADE: Masked Autoencoder for Distribution Estimation".
  A masked MLP (:class:`genspace.nets.masked.MADENet`) outputs all D conditionals in one pass.
  Conditionals: a mixture of K Gaussians per dimension for continuous data (MADE-MoG, the
  baseline of Papamakarios et al. 2017, "Masked Autoregressive Flow for Density Estimation"), or a categorical
  over ``n_levels`` integer levels for quantized images. ``n_masks`` mask sets (new orderings:
  order-agnostic training; new hidden degrees: connectivity-agnostic training, both §4) are
  drawn once from a seeded generator. Training splits each batch across the mask sets
  (example i uses mask set i mod n_masks: every set is visited on every step, a stateless form
  of cycling masks over minibatches); the likelihood is that of the uniform mixture of the
  n_masks autoregressive models, log p(x) = log (1/n_masks) Σ_k p_k(x) — the paper's ensemble,
  still an exact likelihood (of the mixture), and sampling draws a mask set per sample first.
- :class:`PixelCNN` — van den Oord et al. 2016, "Conditional Image Generation with PixelCNN
  Decoders": gated, vertical + horizontal stacks (no blind spot), mask A then B, optional class
  conditioning inside the gates (:class:`genspace.nets.masked.GatedPixelCNN`); a categorical
  over ``n_levels`` per pixel in raster order. Single-channel images only: the R→G→B channel
  ordering of multi-channel PixelCNNs is not implemented (a ValueError says so).
- :class:`TransformerAR` — a causal Transformer (:mod:`genspace.nets.transformer`) over the
  flattened example with a start token: integer levels of quantized images as tokens, or for
  continuous data (2-D toys) equal-width bins per coordinate with a uniform density inside each
  bin (the exact density of a piecewise-constant model on a box, zero outside). Sampling
  decodes with the KV cache.

Units: ``log_likelihood`` returns nats per example. For a categorical model it is the exact
log-probability of the integer levels (``to_uint8(x, n_levels)``); for MADE-MoG it is the exact
log-density of the continuous data. The training loss ``"nll"`` is −log p per dimension (nats);
image models also log ``"_bpd"`` (bits per dimension).

Class-conditional models (``n_classes`` set) train with label dropout to the null class
``n_classes`` (as the diffusion family does), so the null class is the unconditional model used
when no labels are given.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal, Optional, Sequence

import torch
from torch import nn
from torch.nn import functional as F

from genspace.config import register_variant
from genspace.core.random import Generator, rand, randn
from genspace.nets.masked import GatedPixelCNN, MADENet

# ------------------------------------------------------------------ conditionals (plain functions)


def categorical_log_prob(logits: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
    """log softmax(logits)[k]: logits (..., L), k (...) int64 → (...)."""
    return F.log_softmax(logits, dim=-1).gather(-1, k[..., None]).squeeze(-1)


def categorical_inverse_cdf(logits: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
    """The category whose CDF interval holds u: logits (n, L), u (n,) in [0, 1) → (n,) int64.

    k = #{l : F(l) < u}, F the cumulative softmax (computed in float64): P(k = l) = softmax_l.
    """
    p = torch.softmax(logits.to(torch.float64), dim=-1)  # (n, L)
    cdf = torch.cumsum(p, dim=-1)
    k = (cdf < (u.to(torch.float64) * cdf[:, -1])[:, None]).sum(-1)
    return k.clamp(max=logits.shape[-1] - 1)


def mog_scales(raw: torch.Tensor, min_scale: float) -> torch.Tensor:
    """σ = softplus(raw) + min_scale (a floor keeps the density bounded)."""
    return F.softplus(raw) + min_scale


def mog_log_prob(params: torch.Tensor, x: torch.Tensor, min_scale: float) -> torch.Tensor:
    """log Σ_c π_c N(x; μ_c, σ_c²) per dimension (MADE-MoG, Papamakarios et al. 2017).

    params (..., 3K) = (mixture logits, means μ, raw scales) each (..., K); x (...) → (...).
    """
    logits, mean, raw = params.chunk(3, dim=-1)
    scale = mog_scales(raw, min_scale)
    z = (x[..., None] - mean) / scale  # (..., K)
    log_normal = -0.5 * z * z - torch.log(scale) - 0.5 * math.log(2 * math.pi)
    return torch.logsumexp(F.log_softmax(logits, dim=-1) + log_normal, dim=-1)


def mog_sample(params: torch.Tensor, u: torch.Tensor, z: torch.Tensor, min_scale: float) -> torch.Tensor:
    """One draw per row: component c by inverse CDF at u, then μ_c + σ_c·z. params (n, 3K), u, z (n,) → (n,)."""
    logits, mean, raw = params.chunk(3, dim=-1)
    c = categorical_inverse_cdf(logits, u)[:, None]  # (n, 1)
    scale = mog_scales(raw, min_scale)
    return mean.gather(-1, c).squeeze(-1) + scale.gather(-1, c).squeeze(-1) * z.to(mean.dtype)


# ------------------------------------------------------------------ boundary checks


def _check_shape(x, shape: tuple[int, ...], what: str) -> None:
    if not isinstance(x, torch.Tensor):
        raise ValueError(f"{what} must be a tensor of shape (B, {', '.join(map(str, shape))}), got {type(x).__name__}")
    if x.ndim != len(shape) + 1 or tuple(x.shape[1:]) != tuple(shape) or x.shape[0] == 0:
        raise ValueError(f"{what} must have shape (B, {', '.join(map(str, shape))}) with B >= 1, got {tuple(x.shape)}")


def _to_levels(x: torch.Tensor, n_levels: int, what: str, check: bool = True) -> torch.Tensor:
    """Integer levels of ``x``: integer input is taken as levels 0…L−1, float input as data in [−1, 1].

    ``check=False`` (training batches, drawn from data already validated at loading) skips the
    value checks, which would synchronise with the device; float values are then clipped into
    the levels as :func:`genspace.data.to_uint8` does.
    """
    if x.dtype == torch.bool or x.is_complex():
        raise ValueError(f"{what} must hold data in [-1, 1] or integer levels, got dtype {x.dtype}")
    if not x.is_floating_point():
        if not check:
            return x.long()
        lo, hi = int(x.min()), int(x.max())
        if lo < 0 or hi > n_levels - 1:
            raise ValueError(f"{what}: integer levels must lie in 0..{n_levels - 1} (n_levels={n_levels}), got min {lo}, max {hi}")
        return x.long()
    if check:
        if not bool(torch.isfinite(x).all()):
            raise ValueError(f"{what} holds NaN or infinite values")
        lo, hi = float(x.min()), float(x.max())
        if lo < -1.0 - 1e-6 or hi > 1.0 + 1e-6:
            raise ValueError(f"{what}: data must lie in [-1, 1] (levels k ↦ 2k/(L-1) - 1), got min {lo:.4g}, max {hi:.4g}")
    k = torch.floor((x.to(torch.float64) + 1.0) * (n_levels / 2.0)).clamp(0, n_levels - 1)  # as data.to_uint8
    return k.long()


def _from_levels(k: torch.Tensor, n_levels: int, dtype: torch.dtype) -> torch.Tensor:
    """Level k ↦ 2k/(L−1) − 1 (as :func:`genspace.data.to_unit_range`)."""
    return k.to(dtype) * (2.0 / (n_levels - 1)) - 1.0


def _check_positive_int(name: str, value) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")
    return value


class _Autoregressive(nn.Module):
    """What the AR models share: per-example shape, class labels (null class, label dropout)."""

    likelihood_kind = "exact"
    likelihood_space = "levels"  # log_likelihood of quantized data is log P(levels); "density" for continuous conditionals

    def __init__(self, shape: Sequence[int], n_classes: Optional[int], label_dropout: float) -> None:
        super().__init__()
        self.shape = tuple(int(s) for s in shape)
        if not self.shape or any(s < 1 for s in self.shape):
            raise ValueError(f"shape must be a non-empty tuple of positive sizes, got {tuple(shape)}")
        if n_classes is not None:
            _check_positive_int("n_classes", n_classes)
        if not 0.0 <= label_dropout < 1.0:
            raise ValueError(f"label_dropout must be in [0, 1), got {label_dropout}")
        self.n_classes, self.label_dropout = n_classes, float(label_dropout)

    @property
    def dim(self) -> int:
        return math.prod(self.shape)

    def _device_dtype(self) -> tuple[torch.device, torch.dtype]:
        p = next(self.parameters())
        return p.device, p.dtype

    def _labels(self, labels, batch: int, device: torch.device, check: bool = True) -> Optional[torch.Tensor]:
        """Validated (B,) labels in [0, n_classes] (None → the null class), or None for unconditional
        models; ``check=False`` (training batches) skips the range check, a device synchronisation."""
        if self.n_classes is None:
            if labels is not None:
                raise ValueError("class_labels given, but this model is unconditional (n_classes=None)")
            return None
        if labels is None:
            return torch.full((batch,), self.n_classes, dtype=torch.long, device=device)
        labels = torch.as_tensor(labels, device=device)
        if labels.is_floating_point() or labels.is_complex() or labels.dtype == torch.bool:
            raise ValueError(f"class_labels must be integers, got dtype {labels.dtype}")
        if labels.ndim == 0:
            labels = labels.expand(batch)
        if tuple(labels.shape) != (batch,):
            raise ValueError(f"class_labels must be one label or shape ({batch},), got {tuple(labels.shape)}")
        if not check:
            return labels.long()
        lo, hi = int(labels.min()), int(labels.max())
        if lo < 0 or hi > self.n_classes:
            raise ValueError(f"class_labels must lie in [0, {self.n_classes}] ({self.n_classes} = null class), got [{lo}, {hi}]")
        return labels.long()

    def _train_labels(self, batch, generator: Generator) -> Optional[torch.Tensor]:
        """Labels of a training batch, each replaced by the null class with prob. label_dropout."""
        if self.n_classes is None:
            return None
        if len(batch) < 2:
            raise ValueError("this model is class-conditional (n_classes set) but the batch holds no labels")
        labels = self._labels(batch[1], batch[0].shape[0], batch[0].device, check=False)
        if self.training and self.label_dropout > 0:
            drop = rand((labels.shape[0],), generator=generator, device=labels.device) < self.label_dropout
            labels = torch.where(drop, torch.full_like(labels, self.n_classes), labels)
        return labels

    def _check_sample_shape(self, shape) -> None:
        if shape is not None and tuple(shape) != self.shape:
            raise ValueError(f"this model generates examples of shape {self.shape}, got shape={tuple(shape)}")


# ------------------------------------------------------------------------------------ MADE


class MADE(_Autoregressive):
    """MADE with Gaussian-mixture or categorical conditionals and mask ensembles.

    Examples of any ``shape`` are flattened to D = prod(shape) dimensions.

    Args:
        shape: per-example shape, e.g. (2,) for 2-D toys or (1, 8, 8) for digits.
        output: ``"mog"`` (continuous data) or ``"categorical"`` (integer levels).
        n_levels: categories per dimension for ``"categorical"``. With ``"mog"`` and n_levels
            set, the data are quantized images: training uses uniformly dequantized data
            y = 2(k + u)/L − 1 (Theis et al. 2016) and ``log_likelihood`` is the density at x.
        n_components: Gaussians per dimension (``"mog"``).
        hidden, depth: hidden width and number of hidden layers of the masked MLP.
        n_masks, resample_order, resample_connectivity, seed: the mask ensemble
            (:class:`~genspace.nets.masked.MADENet`).
        n_classes: class-conditional if set; label_dropout: p(label → null class) in training.
        min_scale: floor of the Gaussian scales.
    """

    def __init__(
        self,
        shape: Sequence[int],
        *,
        output: Literal["mog", "categorical"] = "mog",
        n_levels: Optional[int] = None,
        n_components: int = 10,
        hidden: int = 256,
        depth: int = 2,
        n_masks: int = 1,
        resample_order: bool = False,
        resample_connectivity: bool = False,
        seed: int = 0,
        n_classes: Optional[int] = None,
        label_dropout: float = 0.1,
        min_scale: float = 1e-3,
    ) -> None:
        super().__init__(shape, n_classes, label_dropout)
        if output not in ("mog", "categorical"):
            raise ValueError(f"MADE: output must be 'mog' or 'categorical', got {output!r}")
        if n_levels is not None and (isinstance(n_levels, bool) or not isinstance(n_levels, int) or n_levels < 2):
            raise ValueError(f"MADE: n_levels must be an integer >= 2 or None, got {n_levels!r}")
        if output == "categorical" and n_levels is None:
            raise ValueError("MADE: output='categorical' needs n_levels (the number of integer levels per dimension)")
        _check_positive_int("MADE: n_components", n_components)
        if not min_scale > 0:
            raise ValueError(f"MADE: min_scale must be > 0, got {min_scale}")
        self.output, self.n_levels, self.n_components, self.min_scale = output, n_levels, n_components, float(min_scale)
        params = 3 * n_components if output == "mog" else n_levels
        self.net = MADENet(
            self.dim, hidden, depth, params,
            n_masks=n_masks, resample_order=resample_order, resample_connectivity=resample_connectivity,
            seed=seed, n_classes=n_classes,
        )
        self.n_masks = n_masks

    @property
    def likelihood_space(self) -> str:
        """``"levels"`` (categorical: log P of the integer levels) or ``"density"`` (MoG: a
        density of the continuous input; on images, of data dequantized as in ``losses``)."""
        return "levels" if self.output == "categorical" else "density"

    # -- values: float data (mog) or int64 levels (categorical), flattened (B, D)

    def _values(self, x: torch.Tensor, what: str, check: bool = True) -> torch.Tensor:
        _check_shape(x, self.shape, what)
        device, dtype = self._device_dtype()
        if self.output == "categorical":
            return _to_levels(x, self.n_levels, what, check).flatten(1).to(device)  # (B, D)
        if not x.is_floating_point():
            raise ValueError(f"{what}: a Gaussian-mixture MADE models continuous data, got dtype {x.dtype}")
        if check and not bool(torch.isfinite(x).all()):
            raise ValueError(f"{what} holds NaN or infinite values")
        return x.flatten(1).to(device=device, dtype=dtype)  # (B, D)

    def _net_input(self, values: torch.Tensor) -> torch.Tensor:
        if self.output == "categorical":
            return _from_levels(values, self.n_levels, self._device_dtype()[1])
        return values

    def _per_dim_log_prob(self, params: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
        """params (B, D, P), values (B, D) → (B, D) log conditionals."""
        if self.output == "categorical":
            return categorical_log_prob(params, values)
        return mog_log_prob(params, values, self.min_scale)

    def log_prob_of_mask(self, values: torch.Tensor, k: int, labels: Optional[torch.Tensor] = None) -> torch.Tensor:
        """log p_k(x) of mask set k: values (B, D) (float data or int64 levels) → (B,)."""
        params = self.net(self._net_input(values), k, labels)  # (B, D, P)
        return self._per_dim_log_prob(params, values).sum(-1)

    def _log_prob(self, values: torch.Tensor, labels: Optional[torch.Tensor]) -> torch.Tensor:
        """log (1/K) Σ_k p_k(x) over the K = n_masks mask sets: (B, D) → (B,)."""
        per_mask = torch.stack([self.log_prob_of_mask(values, k, labels) for k in range(self.n_masks)])  # (K, B)
        return torch.logsumexp(per_mask, dim=0) - math.log(self.n_masks)

    def log_likelihood(self, x: torch.Tensor, *, generator: Generator = None, class_labels=None, **ignored) -> torch.Tensor:
        """Exact log p(x) in nats, (B,): the log-density (``"mog"``) or the log-probability of
        the levels ``to_uint8(x, n_levels)`` (``"categorical"``; integer x is taken as levels)."""
        values = self._values(x, "x")
        return self._log_prob(values, self._labels(class_labels, values.shape[0], values.device))

    def log_prob_levels(self, levels: torch.Tensor, class_labels=None) -> torch.Tensor:
        """Exact log P(levels) in nats, levels (B, *shape) integers in 0…L−1 (categorical MADE)."""
        if self.output != "categorical":
            raise ValueError("log_prob_levels needs a categorical MADE (output='categorical')")
        return self.log_likelihood(levels, class_labels=class_labels)

    def losses(self, batch, *, phase: str = "main", generator: Generator = None) -> dict[str, torch.Tensor]:
        """{"nll": −log p_{k(i)}(x_i)/D} with mask set k(i) = i mod n_masks; (B,) nats per dimension."""
        x = batch[0]
        _check_shape(x, self.shape, "batch")
        labels = self._train_labels(batch, generator)
        if self.output == "mog" and self.n_levels is not None:  # quantized images: y = 2(k + u)/L − 1
            levels = _to_levels(x, self.n_levels, "batch", check=False)
            u = rand(tuple(levels.shape), generator=generator, dtype=torch.float64, device=levels.device)
            x = ((levels.to(torch.float64) + u) * (2.0 / self.n_levels) - 1.0).to(self._device_dtype()[1])
        values = self._values(x, "batch", check=False)
        if self.n_masks == 1:
            log_p = self.log_prob_of_mask(values, 0, labels)
        else:
            b = values.shape[0]
            idx, parts = [], []
            for k in range(min(self.n_masks, b)):
                rows = torch.arange(k, b, self.n_masks, device=values.device)  # examples i ≡ k (mod n_masks)
                idx.append(rows)
                parts.append(self.log_prob_of_mask(values[rows], k, None if labels is None else labels[rows]))
            idx_all, lp_all = torch.cat(idx), torch.cat(parts)
            log_p = torch.empty_like(lp_all).scatter(0, idx_all, lp_all)  # back to batch order, (B,)
        out = {"nll": -log_p / self.dim}
        if self.output == "categorical":
            out["_bpd"] = out["nll"].detach() / math.log(2)
        return out

    @torch.no_grad()
    def sample(self, n: int, *, shape=None, generator: Generator = None, class_labels=None, **ignored) -> torch.Tensor:
        """(n, *shape) samples: a mask set per sample (uniform), then D passes in its order.

        Per sample and step the draws are one uniform (the category / mixture component by
        inverse CDF) and, for ``"mog"``, one normal; with a StackedGenerator each sample's draws
        come from its own generator.
        """
        _check_positive_int("n", n)
        self._check_sample_shape(shape)
        device, dtype = self._device_dtype()
        labels = self._labels(class_labels, n, device)
        if self.n_masks > 1:
            mask_of = (rand((n,), generator=generator, dtype=torch.float64, device=device) * self.n_masks).long()
            mask_of = mask_of.clamp(max=self.n_masks - 1)
        else:
            mask_of = torch.zeros(n, dtype=torch.long, device=device)
        groups = [(k, torch.nonzero(mask_of == k).squeeze(1)) for k in range(self.n_masks)]
        groups = [(k, rows) for k, rows in groups if rows.numel()]
        categorical = self.output == "categorical"
        values = torch.zeros(n, self.dim, dtype=torch.long if categorical else dtype, device=device)  # (n, D)
        orders = [self.net.order(k) for k in range(self.n_masks)]
        for p in range(self.dim):
            u = rand((n,), generator=generator, dtype=torch.float64, device=device)
            z = None if categorical else randn((n,), generator=generator, dtype=dtype, device=device)
            for k, rows in groups:
                sub = values[rows]
                params = self.net(self._net_input(sub), k, None if labels is None else labels[rows])  # (n_k, D, P)
                d = int(orders[k][p])
                if categorical:
                    values[rows, d] = categorical_inverse_cdf(params[:, d], u[rows])
                else:
                    values[rows, d] = mog_sample(params[:, d], u[rows], z[rows], self.min_scale)
        out = _from_levels(values, self.n_levels, dtype) if categorical else values
        return out.reshape(n, *self.shape)


# ------------------------------------------------------------------------------------ PixelCNN


class PixelCNN(_Autoregressive):
    """Gated PixelCNN over single-channel images of integer levels, raster order.

    Args:
        shape: (1, H, W); multi-channel images raise ValueError (the R→G→B ordering with its
            channel masks is not implemented).
        n_levels: grey levels L (a categorical over L per pixel).
        channels, n_layers, first_kernel, kernel, head_hidden: the network
            (:class:`~genspace.nets.masked.GatedPixelCNN`).
        n_classes: class-conditional if set (the label embedding enters every gate);
            label_dropout: p(label → null class) in training.
    """

    def __init__(
        self,
        shape: Sequence[int],
        n_levels: int,
        *,
        channels: int = 64,
        n_layers: int = 6,
        first_kernel: int = 7,
        kernel: int = 3,
        head_hidden: int = 128,
        n_classes: Optional[int] = None,
        label_dropout: float = 0.1,
    ) -> None:
        super().__init__(shape, n_classes, label_dropout)
        if len(self.shape) != 3:
            raise ValueError(f"PixelCNN needs images of shape (C, H, W), got examples of shape {self.shape}")
        if self.shape[0] != 1:
            raise ValueError(
                f"PixelCNN here models single-channel images only, got C={self.shape[0]}: the channel "
                "ordering R→G→B (and its channel masks) is not implemented"
            )
        if isinstance(n_levels, bool) or not isinstance(n_levels, int) or n_levels < 2:
            raise ValueError(f"PixelCNN: n_levels must be an integer >= 2, got {n_levels!r}")
        self.n_levels = n_levels
        self.net = GatedPixelCNN(
            n_levels, channels=channels, n_layers=n_layers, first_kernel=first_kernel, kernel=kernel,
            head_hidden=head_hidden, n_classes=n_classes,
        )

    def logits(self, levels: torch.Tensor, labels: Optional[torch.Tensor] = None) -> torch.Tensor:
        """levels (B, 1, H, W) int64 → logits (B, L, H, W) of every pixel's conditional."""
        return self.net(_from_levels(levels, self.n_levels, self._device_dtype()[1]), labels)

    def _log_prob(self, levels: torch.Tensor, labels: Optional[torch.Tensor]) -> torch.Tensor:
        logits = self.logits(levels, labels).movedim(1, -1)  # (B, H, W, L)
        return categorical_log_prob(logits, levels[:, 0]).flatten(1).sum(-1)  # (B,)

    def log_likelihood(self, x: torch.Tensor, *, generator: Generator = None, class_labels=None, **ignored) -> torch.Tensor:
        """Exact log P(levels) in nats, (B,), of ``to_uint8(x, n_levels)`` (integer x is taken as levels)."""
        _check_shape(x, self.shape, "x")
        levels = _to_levels(x, self.n_levels, "x").to(self._device_dtype()[0])
        return self._log_prob(levels, self._labels(class_labels, levels.shape[0], levels.device))

    def log_prob_levels(self, levels: torch.Tensor, class_labels=None) -> torch.Tensor:
        """Exact log P(levels) in nats, levels (B, 1, H, W) integers in 0…L−1."""
        return self.log_likelihood(levels, class_labels=class_labels)

    def losses(self, batch, *, phase: str = "main", generator: Generator = None) -> dict[str, torch.Tensor]:
        """{"nll": −log P(x)/D nats per pixel, "_bpd": the same in bits}, each (B,)."""
        x = batch[0]
        _check_shape(x, self.shape, "batch")
        labels = self._train_labels(batch, generator)
        nll = -self._log_prob(_to_levels(x, self.n_levels, "batch", check=False), labels) / self.dim
        return {"nll": nll, "_bpd": nll.detach() / math.log(2)}

    @torch.no_grad()
    def sample(self, n: int, *, shape=None, generator: Generator = None, class_labels=None, **ignored) -> torch.Tensor:
        """(n, 1, H, W) samples in [−1, 1], pixel by pixel in raster order (H·W network passes;
        one uniform per pixel and sample, the level by inverse CDF)."""
        _check_positive_int("n", n)
        self._check_sample_shape(shape)
        device, dtype = self._device_dtype()
        labels = self._labels(class_labels, n, device)
        _, h, w = self.shape
        levels = torch.zeros(n, *self.shape, dtype=torch.long, device=device)
        for i in range(h):
            for j in range(w):
                u = rand((n,), generator=generator, dtype=torch.float64, device=device)
                logits = self.logits(levels, labels)[:, :, i, j]  # (n, L)
                levels[:, 0, i, j] = categorical_inverse_cdf(logits, u)
        return _from_levels(levels, self.n_levels, dtype)


# ------------------------------------------------------------------------------------ Transformer AR


class TransformerAR(_Autoregressive):
    """A causal Transformer over the flattened example, one token per dimension.

    The sequence is [s, t_1, …, t_D] with a start token s (one per class for conditional models,
    the null class's when no label is given); the causal Transformer
    (:class:`genspace.nets.transformer.Transformer`, pre-norm, RoPE, RMSNorm, SwiGLU) reads
    [s, t_1, …, t_{D−1}] and its logits at position d, restricted to the K data tokens, give
    P(t_{d+1} | s, t_≤d). Sampling decodes one token per call with the KV cache (D calls).

    Tokens:
        - quantized data (``n_levels`` set, e.g. digits): t_d = the integer level, K = n_levels;
          ``log_likelihood`` is the exact log-probability of the levels.
        - continuous data (``n_levels=None``, e.g. 2-D toys): coordinate d is cut into K = ``bins``
          equal bins of width w_d = (high_d − low_d)/K and t_d is the bin index. The model is the
          piecewise-constant density p(x) = Π_d P(t_d | t_<d) / w_d on the box [low, high]
          (uniform within each bin), zero outside: ``log_likelihood`` is its exact log-density
          (−inf outside the box), and sampling draws the bins, then a uniform point in each.

    Args:
        shape: per-example shape; flattened in C-order (for images: channel by channel, each in
            raster order — a valid autoregressive order for any number of channels).
        n_levels: integer levels of quantized data, or None for binned continuous data.
        bins, low, high: the bins of continuous data (low/high: one value or one per dimension).
        dim, depth, n_heads, mlp_ratio, dropout: the Transformer.
        n_classes: class-conditional if set; label_dropout: p(label → null class) in training.
    """

    def __init__(
        self,
        shape: Sequence[int],
        *,
        n_levels: Optional[int] = None,
        bins: int = 64,
        low=None,
        high=None,
        dim: int = 128,
        depth: int = 4,
        n_heads: int = 4,
        mlp_ratio: float = 4.0,
        dropout: float = 0.0,
        n_classes: Optional[int] = None,
        label_dropout: float = 0.1,
    ) -> None:
        from genspace.nets.transformer import Transformer, TransformerConfig

        super().__init__(shape, n_classes, label_dropout)
        if n_levels is not None:
            if isinstance(n_levels, bool) or not isinstance(n_levels, int) or n_levels < 2:
                raise ValueError(f"TransformerAR: n_levels must be an integer >= 2 or None, got {n_levels!r}")
            self.n_tokens = n_levels
        else:
            if isinstance(bins, bool) or not isinstance(bins, int) or bins < 1:
                raise ValueError(f"TransformerAR: bins must be a positive integer, got {bins!r}")
            if low is None or high is None:
                raise ValueError("TransformerAR on continuous data (n_levels=None) needs the bin range low and high")
            lo = torch.as_tensor(low, dtype=torch.float64).flatten().expand(self.dim).clone()
            hi = torch.as_tensor(high, dtype=torch.float64).flatten().expand(self.dim).clone()
            if not bool(torch.isfinite(lo).all() and torch.isfinite(hi).all() and (hi > lo).all()):
                raise ValueError(f"TransformerAR: need finite low < high in every dimension, got low={lo.tolist()}, high={hi.tolist()}")
            self.n_tokens = bins
            self.register_buffer("low", lo)  # (D,)
            self.register_buffer("high", hi)  # (D,)
        self.n_levels = n_levels
        n_start = 1 if n_classes is None else n_classes + 1
        self.net = Transformer(
            TransformerConfig(
                vocab_size=self.n_tokens + n_start, dim=dim, depth=depth, n_heads=n_heads, mlp_ratio=mlp_ratio,
                max_len=self.dim + 1, dropout=dropout,
            )
        )

    @property
    def likelihood_space(self) -> str:
        """``"levels"`` (quantized data: log P of the levels) or ``"density"`` (binned continuous data)."""
        return "levels" if self.n_levels is not None else "density"

    # -- tokens

    def _start(self, labels: Optional[torch.Tensor], batch: int, device) -> torch.Tensor:
        """(B, 1) start tokens: K + label (conditional) or K."""
        if labels is None:
            return torch.full((batch, 1), self.n_tokens, dtype=torch.long, device=device)
        return (self.n_tokens + labels)[:, None]

    def _bin_width(self) -> torch.Tensor:
        return (self.high - self.low) / self.n_tokens  # (D,) float64

    def _tokens(self, x: torch.Tensor, what: str, check: bool = True) -> tuple[torch.Tensor, Optional[torch.Tensor]]:
        """(tokens (B, D) int64, inside (B,) bool or None): levels, or the bins of continuous x."""
        _check_shape(x, self.shape, what)
        if self.n_levels is not None:
            return _to_levels(x, self.n_levels, what, check).flatten(1), None
        if not x.is_floating_point():
            raise ValueError(f"{what}: a binned TransformerAR models continuous data, got dtype {x.dtype}")
        if check and not bool(torch.isfinite(x).all()):
            raise ValueError(f"{what} holds NaN or infinite values")
        v = x.flatten(1).to(torch.float64)  # (B, D)
        low, high = self.low.to(torch.float64), self.high.to(torch.float64)
        inside = ((v >= low) & (v <= high)).all(-1)  # (B,)
        b = torch.floor((v - low) / self._bin_width().to(torch.float64)).clamp(0, self.n_tokens - 1)
        return b.long(), inside

    def token_logits(self, tokens: torch.Tensor, labels: Optional[torch.Tensor] = None) -> torch.Tensor:
        """tokens (B, D) int64 → (B, D, K): row d is the logits of P(t_d | s, t_<d)."""
        inp = torch.cat([self._start(labels, tokens.shape[0], tokens.device), tokens[:, :-1]], dim=1)  # (B, D)
        return self.net(inp, attn_mask="causal")[..., : self.n_tokens]  # (B, D, K)

    def _log_prob(self, tokens: torch.Tensor, labels: Optional[torch.Tensor]) -> torch.Tensor:
        lp = categorical_log_prob(self.token_logits(tokens, labels), tokens).sum(-1)  # (B,)
        if self.n_levels is None:  # the density of the uniform-within-bin model
            lp = lp - torch.log(self._bin_width()).sum().to(lp.dtype)
        return lp

    def log_likelihood(self, x: torch.Tensor, *, generator: Generator = None, class_labels=None, **ignored) -> torch.Tensor:
        """Exact log-probability of the levels, or exact log-density of the binned model
        (−inf outside [low, high]); (B,) nats."""
        tokens, inside = self._tokens(x, "x")
        tokens = tokens.to(self._device_dtype()[0])
        lp = self._log_prob(tokens, self._labels(class_labels, tokens.shape[0], tokens.device))
        if inside is not None:
            lp = torch.where(inside.to(lp.device), lp, torch.full_like(lp, -math.inf))
        return lp

    def log_prob_levels(self, levels: torch.Tensor, class_labels=None) -> torch.Tensor:
        """Exact log P(levels) in nats, levels (B, *shape) integers in 0…L−1 (quantized data)."""
        if self.n_levels is None:
            raise ValueError("log_prob_levels needs a TransformerAR on quantized data (n_levels set)")
        return self.log_likelihood(levels, class_labels=class_labels)

    def losses(self, batch, *, phase: str = "main", generator: Generator = None) -> dict[str, torch.Tensor]:
        """{"nll": −log p(x)/D nats per dimension} (B,); quantized data also log "_bpd".

        A training point outside the bin box has density 0: its loss is +inf, which the trainer
        reports as a divergence (the builder's box holds every training point).
        """
        tokens, inside = self._tokens(batch[0], "batch", check=False)
        labels = self._train_labels(batch, generator)
        nll = -self._log_prob(tokens, labels) / self.dim
        if inside is not None:
            nll = torch.where(inside.to(nll.device), nll, torch.full_like(nll, math.inf))
        out = {"nll": nll}
        if self.n_levels is not None:
            out["_bpd"] = nll.detach() / math.log(2)
        return out

    @torch.no_grad()
    def sample(self, n: int, *, shape=None, generator: Generator = None, class_labels=None, **ignored) -> torch.Tensor:
        """(n, *shape) samples: D one-token calls with the KV cache (one uniform per token, by
        inverse CDF), then for binned data one uniform per dimension inside the drawn bin."""
        _check_positive_int("n", n)
        self._check_sample_shape(shape)
        device, dtype = self._device_dtype()
        labels = self._labels(class_labels, n, device)
        cache = self.net.new_cache(self.dim)
        tokens = torch.zeros(n, self.dim, dtype=torch.long, device=device)
        step = self._start(labels, n, device)  # (n, 1)
        for d in range(self.dim):
            logits = self.net(step, attn_mask="causal", cache=cache)[:, -1, : self.n_tokens]  # (n, K)
            u = rand((n,), generator=generator, dtype=torch.float64, device=device)
            tokens[:, d] = categorical_inverse_cdf(logits, u)
            step = tokens[:, d : d + 1]
        if self.n_levels is not None:
            return _from_levels(tokens, self.n_levels, dtype).reshape(n, *self.shape)
        u = rand((n, self.dim), generator=generator, dtype=torch.float64, device=device)
        x = self.low.to(torch.float64) + (tokens.to(torch.float64) + u) * self._bin_width().to(torch.float64)
        return x.to(dtype).reshape(n, *self.shape)


# ------------------------------------------------------------------------------------ configs


@register_variant("model", "made")
@dataclass
class MADEConfig:
    """MADE (Germain et al. 2015) with Gaussian-mixture or categorical conditionals."""

    output: Literal["auto", "mog", "categorical"] = "auto"  # conditionals; auto: categorical over data.n_levels for quantized images, else a Gaussian mixture
    n_components: int = 10  # Gaussians per dimension (output=mog)
    hidden: int = 256  # width of each masked hidden layer
    depth: int = 2  # number of masked hidden layers
    n_masks: int = 1  # mask sets (orderings / connectivities) trained and averaged at evaluation
    resample_order: bool = False  # each mask set gets its own random input ordering (order-agnostic training)
    resample_connectivity: bool = False  # each mask set draws its own hidden degrees (connectivity-agnostic training)
    mask_seed: int = 0  # seed of the generator drawing orderings and hidden degrees
    min_scale: float = 1e-3  # floor of the mixture's Gaussian scales (output=mog)
    label_dropout: float = 0.1  # class-conditional data only: p(label → null class) during training


@register_variant("model", "pixelcnn")
@dataclass
class PixelCNNConfig:
    """Gated PixelCNN (van den Oord et al. 2016) for single-channel quantized images."""

    channels: int = 64  # feature channels of the vertical and horizontal stacks
    n_layers: int = 6  # gated layers (the first with mask A, the rest with mask B)
    first_kernel: int = 7  # odd kernel size of the first layer
    kernel: int = 3  # odd kernel size of the later layers
    head_hidden: int = 128  # channels of the 1×1 ReLU output head
    label_dropout: float = 0.1  # class-conditional data only: p(label → null class) during training


@register_variant("model", "transformer-ar")
@dataclass
class TransformerARConfig:
    """A causal Transformer (genspace.nets.transformer) over the flattened example, one token per dimension."""

    dim: int = 128  # Transformer width
    depth: int = 4  # Transformer blocks
    n_heads: int = 4  # attention heads (dim / n_heads must be even: RoPE)
    mlp_ratio: float = 4.0  # SwiGLU hidden width = 2/3 · mlp_ratio · dim
    dropout: float = 0.0  # dropout on attention weights and residual branches
    bins: int = 64  # continuous data (2-D toys): equal-width bins per coordinate (uniform density inside a bin)
    margin: float = 0.1  # continuous data: the bin range is the training data's [min, max] widened by margin × (max − min) on each side
    label_dropout: float = 0.1  # class-conditional data only: p(label → null class) during training


def build_made(cfg: MADEConfig, data) -> MADE:
    """A MADE for ``data`` (DataBundle-like: shape, n_levels, n_classes)."""
    n_levels = getattr(data, "n_levels", None)
    output = cfg.output
    if output == "auto":
        output = "categorical" if n_levels is not None else "mog"
    if output == "categorical" and n_levels is None:
        raise ValueError("model.output='categorical' needs quantized data (data.n_levels), e.g. digits; use output='mog' for continuous data")
    return MADE(
        tuple(data.shape), output=output, n_levels=n_levels, n_components=cfg.n_components, hidden=cfg.hidden,
        depth=cfg.depth, n_masks=cfg.n_masks, resample_order=cfg.resample_order,
        resample_connectivity=cfg.resample_connectivity, seed=cfg.mask_seed, n_classes=getattr(data, "n_classes", None),
        label_dropout=cfg.label_dropout, min_scale=cfg.min_scale,
    )


def build_pixelcnn(cfg: PixelCNNConfig, data) -> PixelCNN:
    """A gated PixelCNN for quantized single-channel image ``data``."""
    n_levels = getattr(data, "n_levels", None)
    if getattr(data, "kind", None) != "images" or n_levels is None:
        raise ValueError(
            f"model.family=pixelcnn needs quantized images (data.kind='images' with n_levels), got kind="
            f"{getattr(data, 'kind', None)!r}, n_levels={n_levels!r}; for 2-D points use made or transformer-ar"
        )
    return PixelCNN(
        tuple(data.shape), n_levels, channels=cfg.channels, n_layers=cfg.n_layers, first_kernel=cfg.first_kernel,
        kernel=cfg.kernel, head_hidden=cfg.head_hidden, n_classes=getattr(data, "n_classes", None),
        label_dropout=cfg.label_dropout,
    )


def build_transformer_ar(cfg: TransformerARConfig, data) -> TransformerAR:
    """A TransformerAR over the levels of quantized data, or over bins of continuous data whose
    range is the training data's [min, max] per dimension widened by ``cfg.margin`` × span."""
    n_levels = getattr(data, "n_levels", None)
    low = high = None
    if n_levels is None:
        if not cfg.margin >= 0:
            raise ValueError(f"model.margin must be >= 0, got {cfg.margin}")
        x = data.train[0].flatten(1).to(torch.float64)  # (N, D)
        lo, hi = x.min(0).values, x.max(0).values
        span = (hi - lo).clamp(min=1e-6)
        low, high = lo - cfg.margin * span, hi + cfg.margin * span
    return TransformerAR(
        tuple(data.shape), n_levels=n_levels, bins=cfg.bins, low=low, high=high, dim=cfg.dim, depth=cfg.depth,
        n_heads=cfg.n_heads, mlp_ratio=cfg.mlp_ratio, dropout=cfg.dropout, n_classes=getattr(data, "n_classes", None),
        label_dropout=cfg.label_dropout,
    )


FAMILY_BUILDERS = {MADEConfig: build_made, PixelCNNConfig: build_pixelcnn, TransformerARConfig: build_transformer_ar}

__all__ = [
    "MADE",
    "PixelCNN",
    "TransformerAR",
    "MADEConfig",
    "PixelCNNConfig",
    "TransformerARConfig",
    "build_made",
    "build_pixelcnn",
    "build_transformer_ar",
    "FAMILY_BUILDERS",
    "categorical_log_prob",
    "categorical_inverse_cdf",
    "mog_log_prob",
    "mog_sample",
]
