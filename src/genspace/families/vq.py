"""VQ-VAE, VQGAN and an autoregressive prior over their codes.

**VQ-VAE** (van den Oord et al. 2017, "Neural Discrete Representation Learning"): an encoder maps
x to a grid of L vectors z_e (B, L, D), each replaced by its nearest code of a K-entry codebook
(:mod:`genspace.families.quantizer`: straight-through gradients, commitment β = 0.25, EMA
codebook, dead-code restarts, k-means init), and a decoder maps the quantized grid back. The
objective (eq. 3) per example is

    L = rec(x, x̂) + ‖sg[z_e] − e‖²/D + β‖z_e − sg[e]‖²/D     (means over the L positions)

with rec the per-pixel mean squared error (a Gaussian decoder of fixed variance; ``"l1"`` is the
mean absolute error). With the EMA codebook the second term is dropped (appendix A.1).

Images (C, H, W) use a conv encoder (``log2 f`` strided 4×4 convolutions, f = ``downsample``,
then residual blocks ReLU → 3×3 conv → ReLU → 1×1 conv as in the paper's §4.1) giving an
(H/f) × (W/f) grid of codes (digits 8×8 with f = 2: 4×4 codes); H and W must be divisible by f.
2-D toy points use an MLP encoder giving ``n_latents`` codes per point: a VQ-VAE on 2-D points is
mostly a sanity check (K^L possible reconstructions tile the plane), not a useful model.

**VQGAN** (Esser et al. 2021, "Taming Transformers for High-Resolution Image Synthesis", §3.1):
the same autoencoder trained with a patch discriminator D (PatchGAN of Isola et al. 2017:
per-patch logits) and a perceptual term,

    L_VQGAN = rec + w_p·perc + codebook/commitment + λ · d · (−mean_patches D(x̂)),     (eq. 5–6)
    λ = ‖∇_{G_L} L_rec‖ / (‖∇_{G_L} L_GAN‖ + δ),  δ = 1e-4,  clamped to [0, 1e4], detached (eq. 7)

with G_L the decoder's last layer, L_rec the batch mean of rec + w_p·perc, d = ``disc_weight`` once
``disc_start`` training steps are done (0 before), and the hinge loss for D,
L_D = ½(mean relu(1 − D(x)) + mean relu(1 + D(x̂))). The perceptual term downloads nothing: it is
an LPIPS-style distance (Zhang et al. 2018, eq. 1, with unit weights w_l = 1) in the feature
space of genspace's own trained classifier (:class:`genspace.metrics.classifier.FeatureClassifier`):

    perc(x, y) = Σ_l (1/(H_l W_l)) Σ_{h,w} ‖ f̂_l(x)_{hw} − f̂_l(y)_{hw} ‖²,   f̂ = f / ‖f‖_channels

over three layers: the first conv's GELU activations (C1, H, W), the second conv's GELU
activations (C2, H', W') and the penultimate features (F, 1, 1). Pass the classifier as
``VQGAN(..., classifier=clf)`` or, in a config, ``classifier: <folder written by
FeatureClassifier.save>`` (left None, :func:`build_vqgan` trains one with
:func:`~genspace.metrics.classifier.train_classifier` on the run's training images and labels,
which needs ``data.labels=true``; labels are used for nothing else). For 2-D toys the perceptual
term is off.

**Prior over codes** (the second stage, as PixelCNN in VQ-VAE §3.3 and the Transformer of VQGAN
§3.2): :class:`CodePrior`, an autoregressive Transformer over the flattened (row-major) code grid.
``sample(n)`` of the full model draws codes from the prior and decodes them; without a trained
prior it raises ValueError. The prior gives an exact log-likelihood of the *codes*
(:meth:`VQVAE.code_log_likelihood`), not of the pixels, so ``likelihood_kind = None`` for the
VQ-VAE and the VQGAN.

Training stages: the model has a ``stage`` (``"autoencoder"`` or ``"prior"``, set by
:meth:`VQVAE.set_stage`) that decides what :meth:`~VQVAE.phases` returns; the phases select
parameters by prefix (``autoencoder.``, ``discriminator.``, ``prior.``). The prior stage trains
on the codes of the frozen autoencoder, computed from each image batch (or on integer code
batches given directly); :func:`fit_prior` runs it with the shared trainer.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, Optional, Union

import torch
import torch.nn.functional as F
from torch import nn

from genspace.config import register_variant
from genspace.core.random import Generator
from genspace.families.quantizer import VectorQuantizer
from genspace.train.trainer import Phase, TrainConfig

__all__ = [
    "ConvEncoder",
    "ConvDecoder",
    "MLPEncoder",
    "MLPDecoder",
    "VQAutoencoder",
    "PatchDiscriminator",
    "MLPDiscriminator",
    "ClassifierPerceptual",
    "adaptive_weight",
    "hinge_d_loss",
    "VQVAE",
    "VQGAN",
    "CodePrior",
    "CodePriorConfig",
    "VQVAEConfig",
    "VQGANConfig",
    "build_vqvae",
    "build_vqgan",
    "fit_prior",
    "FAMILY_BUILDERS",
]

STAGES = ("autoencoder", "prior")
RECONSTRUCTIONS = ("mse", "l1")


# ---------------------------------------------------------------------- networks
class ResBlock(nn.Module):
    """x + Conv1×1(ReLU(Conv3×3(ReLU(x)))) (VQ-VAE §4.1): (B, C, H, W) → (B, C, H, W)."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(channels, channels, 3, padding=1)
        self.conv2 = nn.Conv2d(channels, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv2(F.relu(self.conv1(F.relu(x))))


def _downsample_steps(downsample: int) -> int:
    if isinstance(downsample, bool) or not isinstance(downsample, int) or downsample < 1 or downsample & (downsample - 1):
        raise ValueError(f"downsample must be a power of two (1, 2, 4, ...), got {downsample!r}")
    return int(math.log2(downsample))


def _check_grid(shape: tuple[int, ...], downsample: int) -> tuple[int, int]:
    _downsample_steps(downsample)
    c, h, w = shape
    if h % downsample or w % downsample:
        raise ValueError(
            f"images of size {h}×{w} cannot be downsampled by downsample={downsample}: "
            f"H and W must be divisible by it (e.g. 8×8 digits: 1, 2, 4 or 8)"
        )
    return h // downsample, w // downsample


class ConvEncoder(nn.Module):
    """Images (B, C, H, W) → code vectors (B, L, D), L = (H/f)(W/f) in row-major order.

    log2 f strided 4×4 convolutions (stride 2) with ReLU, a 3×3 convolution, ``n_res`` residual
    blocks, ReLU and a 1×1 convolution to D channels.
    """

    def __init__(self, shape: tuple[int, int, int], code_dim: int, *, hidden: int = 64, downsample: int = 2, n_res: int = 1) -> None:
        super().__init__()
        self.grid = _check_grid(tuple(shape), downsample)
        c = shape[0]
        layers: list[nn.Module] = []
        for _ in range(_downsample_steps(downsample)):
            layers += [nn.Conv2d(c, hidden, 4, stride=2, padding=1), nn.ReLU()]
            c = hidden
        layers.append(nn.Conv2d(c, hidden, 3, padding=1))
        layers += [ResBlock(hidden) for _ in range(n_res)]
        layers += [nn.ReLU(), nn.Conv2d(hidden, code_dim, 1)]
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z = self.net(x)  # (B, D, h, w)
        return z.flatten(2).transpose(1, 2)  # (B, L, D)


class ConvDecoder(nn.Module):
    """Code vectors (B, L, D) on an (h, w) grid → images (B, C, h·f, w·f).

    A 3×3 convolution, ``n_res`` residual blocks, ReLU, and log2 f transposed 4×4 convolutions
    (stride 2); the last layer is ``self.out`` (G_L of the VQGAN's adaptive weight).
    """

    def __init__(self, shape: tuple[int, int, int], code_dim: int, *, hidden: int = 64, downsample: int = 2, n_res: int = 1) -> None:
        super().__init__()
        self.grid = _check_grid(tuple(shape), downsample)
        steps = _downsample_steps(downsample)
        layers: list[nn.Module] = [nn.Conv2d(code_dim, hidden, 3, padding=1)]
        layers += [ResBlock(hidden) for _ in range(n_res)]
        layers.append(nn.ReLU())
        for _ in range(steps - 1):
            layers += [nn.ConvTranspose2d(hidden, hidden, 4, stride=2, padding=1), nn.ReLU()]
        self.body = nn.Sequential(*layers)
        if steps:
            self.out = nn.ConvTranspose2d(hidden, shape[0], 4, stride=2, padding=1)
        else:
            self.out = nn.Conv2d(hidden, shape[0], 3, padding=1)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        b, _, d = z.shape
        z = z.transpose(1, 2).reshape(b, d, *self.grid)  # (B, D, h, w)
        return self.out(self.body(z))  # (B, C, H, W)


class MLPEncoder(nn.Module):
    """Points (B, dim) → (B, L, D): Linear → SiLU → Linear → SiLU → Linear to L·D."""

    def __init__(self, dim: int, code_dim: int, *, hidden: int = 64, n_latents: int = 2) -> None:
        super().__init__()
        self.grid = (n_latents,)
        self.net = nn.Sequential(
            nn.Linear(dim, hidden), nn.SiLU(), nn.Linear(hidden, hidden), nn.SiLU(), nn.Linear(hidden, n_latents * code_dim)
        )
        self.code_dim = code_dim

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x).reshape(x.shape[0], -1, self.code_dim)  # (B, L, D)


class MLPDecoder(nn.Module):
    """(B, L, D) → points (B, dim); the last layer is ``self.out``."""

    def __init__(self, dim: int, code_dim: int, *, hidden: int = 64, n_latents: int = 2) -> None:
        super().__init__()
        self.grid = (n_latents,)
        self.body = nn.Sequential(nn.Linear(n_latents * code_dim, hidden), nn.SiLU(), nn.Linear(hidden, hidden), nn.SiLU())
        self.out = nn.Linear(hidden, dim)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.out(self.body(z.flatten(1)))  # (B, dim)


class VQAutoencoder(nn.Module):
    """encoder → :class:`~genspace.families.quantizer.VectorQuantizer` → decoder.

    ``encoder(x)`` gives (B, L, D) and ``decoder(z)`` takes (B, L, D); ``decoder.out`` is its
    last layer. ``grid`` is the shape of the code grid ((h, w) for images, (L,) for points).
    """

    def __init__(self, encoder: nn.Module, quantizer: VectorQuantizer, decoder: nn.Module, data_shape: tuple[int, ...]) -> None:
        super().__init__()
        self.encoder, self.quantizer, self.decoder = encoder, quantizer, decoder
        self.data_shape = tuple(data_shape)
        self.grid = tuple(encoder.grid)
        self.n_positions = math.prod(self.grid)

    def check(self, x: torch.Tensor) -> torch.Tensor:
        if not isinstance(x, torch.Tensor) or tuple(x.shape[1:]) != self.data_shape or not x.dtype.is_floating_point:
            desc = f"{x.dtype} {tuple(x.shape)}" if isinstance(x, torch.Tensor) else type(x).__name__
            raise ValueError(f"expected a float batch of shape (B, {', '.join(map(str, self.data_shape))}), got {desc}")
        return x

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """z_e (B, L, D) of x (B, *data_shape)."""
        return self.encoder(self.check(x))

    def codes(self, x: torch.Tensor) -> torch.Tensor:
        """Nearest-code indices (B, L) int64 of x; no gradient, no state change."""
        with torch.no_grad():
            z = self.encode(x)  # (B, L, D)
            return self.quantizer.nearest(z.reshape(-1, z.shape[-1])).reshape(z.shape[:2])

    def decode_codes(self, codes: torch.Tensor) -> torch.Tensor:
        """Decoded x (B, *data_shape) of integer codes (B, L)."""
        if codes.ndim != 2 or codes.shape[1] != self.n_positions:
            raise ValueError(f"expected codes of shape (B, {self.n_positions}), got {tuple(codes.shape)}")
        if codes.numel() and (int(codes.min()) < 0 or int(codes.max()) >= self.quantizer.n_codes):
            raise ValueError(f"codes must lie in 0..{self.quantizer.n_codes - 1}")
        return self.decoder(self.quantizer.lookup(codes))

    def reconstruct(self, x: torch.Tensor) -> torch.Tensor:
        """x̂ = decoder(q(encoder(x))) (B, *data_shape), with gradients; no state change."""
        z = self.encode(x)  # (B, L, D)
        q = self.quantizer(z.reshape(-1, z.shape[-1]))
        return self.decoder(q.z_q.reshape(z.shape))


# ---------------------------------------------------------------------- VQGAN parts
def _group_norm(channels: int) -> nn.GroupNorm:
    return nn.GroupNorm(math.gcd(32, channels), channels)


class PatchDiscriminator(nn.Module):
    """PatchGAN critic (Isola et al. 2017; VQGAN §3.1): images (B, C, H, W) → per-patch logits (B, P).

    ``n_layers`` strided 4×4 convolutions (channels doubling from ``hidden``, LeakyReLU 0.2,
    GroupNorm after the first), then a 3×3 convolution and a 3×3 convolution to one channel:
    P = (H/2^n)(W/2^n) patches. (The original ends in 4×4 stride-1 convolutions, which would
    shrink 8×8 inputs to nothing; 3×3 keeps the patch grid. GroupNorm replaces BatchNorm so an
    example's logits do not depend on its batch.)
    """

    def __init__(self, in_channels: int, *, hidden: int = 64, n_layers: int = 2) -> None:
        super().__init__()
        if isinstance(n_layers, bool) or not isinstance(n_layers, int) or n_layers < 1:
            raise ValueError(f"n_layers must be a positive integer, got {n_layers!r}")
        self.n_layers = n_layers
        layers: list[nn.Module] = [nn.Conv2d(in_channels, hidden, 4, stride=2, padding=1), nn.LeakyReLU(0.2)]
        c = hidden
        for _ in range(1, n_layers):
            layers += [nn.Conv2d(c, 2 * c, 4, stride=2, padding=1), _group_norm(2 * c), nn.LeakyReLU(0.2)]
            c *= 2
        layers += [nn.Conv2d(c, c, 3, padding=1), _group_norm(c), nn.LeakyReLU(0.2), nn.Conv2d(c, 1, 3, padding=1)]
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x).flatten(1)  # (B, P)


class MLPDiscriminator(nn.Module):
    """Critic for points (B, dim) → one logit per example (B, 1) (a single "patch")."""

    def __init__(self, dim: int, *, hidden: int = 64) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Linear(dim, hidden), nn.LeakyReLU(0.2), nn.Linear(hidden, hidden), nn.LeakyReLU(0.2), nn.Linear(hidden, 1)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)  # (B, 1)


def hinge_d_loss(logits_real: torch.Tensor, logits_fake: torch.Tensor) -> torch.Tensor:
    """½(mean_p relu(1 − D(x)) + mean_p relu(1 + D(x̂))) per example: (B, P), (B, P) → (B,)."""
    return 0.5 * (F.relu(1.0 - logits_real).mean(1) + F.relu(1.0 + logits_fake).mean(1))


def adaptive_weight(
    rec_loss: torch.Tensor, gan_loss: torch.Tensor, last_layer: torch.Tensor, *, delta: float = 1e-4, max_weight: float = 1e4
) -> torch.Tensor:
    """λ = ‖∇_{G_L} L_rec‖ / (‖∇_{G_L} L_GAN‖ + δ), clamped to [0, max_weight], detached (VQGAN eq. 7).

    ``rec_loss``, ``gan_loss``: scalar losses whose graphs reach ``last_layer`` (the decoder's last
    weight); both graphs are kept for the backward pass that follows. Returns a 0-d tensor.
    """
    g_rec = torch.autograd.grad(rec_loss, last_layer, retain_graph=True)[0]
    g_gan = torch.autograd.grad(gan_loss, last_layer, retain_graph=True)[0]
    return (g_rec.norm() / (g_gan.norm() + delta)).clamp(0.0, max_weight).detach()


class ClassifierPerceptual(nn.Module):
    """LPIPS-style distance in a :class:`~genspace.metrics.classifier.FeatureClassifier`'s layers.

    perc(x, y) = Σ_l mean_{h,w} ‖f̂_l(x)_{hw} − f̂_l(y)_{hw}‖², f̂ = f / √(‖f‖²_channels + 1e-10), over
    (1) the first conv's GELU activations (N, C1, H, W), (2) the second conv's GELU activations
    (N, C2, H', W') and (3) the penultimate features (N, F) (Zhang et al. 2018, eq. 1 with w_l = 1).
    The classifier is frozen (no gradient to its weights); the gradient flows to the images.
    """

    def __init__(self, classifier: nn.Module, data_shape: tuple[int, int, int]) -> None:
        super().__init__()
        cfg = getattr(classifier, "config", None)
        if cfg is None or not all(hasattr(classifier, a) for a in ("conv1", "conv2", "fc")):
            raise ValueError(f"classifier must be a genspace FeatureClassifier, got {type(classifier).__name__}")
        if (cfg.in_channels, cfg.height, cfg.width) != tuple(data_shape):
            raise ValueError(
                f"the classifier was built for images {(cfg.in_channels, cfg.height, cfg.width)}, "
                f"the data are {tuple(data_shape)}"
            )
        self.net = classifier.requires_grad_(False)

    def layers(self, x: torch.Tensor) -> list[torch.Tensor]:
        """The three feature maps of x (N, C, H, W), each (N, C_l, H_l, W_l)."""
        h1 = F.gelu(self.net.conv1(x))  # (N, C1, H, W)
        h = F.max_pool2d(h1, 2, ceil_mode=True) if h1.shape[-1] >= 2 and h1.shape[-2] >= 2 else h1
        h2 = F.gelu(self.net.conv2(h))  # (N, C2, H', W')
        feats = F.gelu(self.net.fc(h2.mean(dim=(-2, -1))))  # (N, F), the classifier's features
        return [h1, h2, feats[:, :, None, None]]

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """perc(x, y) per example (N,)."""
        total = torch.zeros(x.shape[0], dtype=x.dtype, device=x.device)
        for fx, fy in zip(self.layers(x), self.layers(y)):
            fx = fx * torch.rsqrt((fx * fx).sum(1, keepdim=True) + 1e-10)
            fy = fy * torch.rsqrt((fy * fy).sum(1, keepdim=True) + 1e-10)
            total = total + ((fx - fy) ** 2).sum(1).mean(dim=(-2, -1))
        return total


# ---------------------------------------------------------------------- models
class VQVAE(nn.Module):
    """VQ-VAE (see the module doc) with an optional :class:`CodePrior` for sampling.

    Args:
        autoencoder: a :class:`VQAutoencoder`.
        prior: a :class:`CodePrior` over the autoencoder's codes (None: no sampling).
        reconstruction: ``"mse"`` or ``"l1"`` per-pixel reconstruction error.
        value_range: samples are clamped to this range (images: (−1, 1)); None: not clamped.

    Submodules: ``autoencoder.`` (encoder, quantizer, decoder) and ``prior.``. The buffer
    ``prior_steps`` counts the prior's training steps (sampling needs at least one).
    """

    likelihood_kind = None  # the prior's likelihood is over codes, not pixels: code_log_likelihood
    likelihood_space = None  # no likelihood of the data

    def __init__(
        self,
        autoencoder: VQAutoencoder,
        prior: Optional[nn.Module] = None,
        *,
        reconstruction: str = "mse",
        value_range: Optional[tuple[float, float]] = None,
    ) -> None:
        super().__init__()
        if reconstruction not in RECONSTRUCTIONS:
            raise ValueError(f"reconstruction must be one of {RECONSTRUCTIONS}, got {reconstruction!r}")
        self.autoencoder, self.prior = autoencoder, prior
        if prior is not None and (prior.n_codes != autoencoder.quantizer.n_codes or prior.length != autoencoder.n_positions):
            raise ValueError(
                f"the prior models {prior.length} codes of {prior.n_codes}, the autoencoder has "
                f"{autoencoder.n_positions} codes of {autoencoder.quantizer.n_codes}"
            )
        self.reconstruction = reconstruction
        self.value_range = value_range
        self.register_buffer("prior_steps", torch.zeros((), dtype=torch.long))
        self.set_stage("autoencoder")

    @property
    def data_shape(self) -> tuple[int, ...]:
        return self.autoencoder.data_shape

    # ------------------------------------------------------------------ stages and phases
    def set_stage(self, stage: str) -> "VQVAE":
        """Choose what :meth:`phases` trains: ``"autoencoder"`` or ``"prior"``; returns self.

        The parameters of the other stage are frozen (``requires_grad=False``), so no gradient
        is computed for them and data-parallel training sees no unused parameters; the
        perceptual classifier is always frozen.
        """
        if stage not in STAGES:
            raise ValueError(f"stage must be one of {STAGES}, got {stage!r}")
        if stage == "prior" and self.prior is None:
            raise ValueError("this model has no prior to train (built with prior=None)")
        self.stage = stage
        for name, child in self.named_children():
            child.requires_grad_((name == "prior") == (stage == "prior") and name != "perceptual")
        return self

    def phases(self) -> list[Phase]:
        if self.stage == "prior":
            return [Phase("prior", prefix="prior.")]
        return [Phase("autoencoder", prefix="autoencoder.")]

    # ------------------------------------------------------------------ losses
    def _rec(self, x: torch.Tensor, x_hat: torch.Tensor) -> torch.Tensor:
        diff = (x - x_hat).flatten(1)  # (B, dims)
        return (diff * diff).mean(1) if self.reconstruction == "mse" else diff.abs().mean(1)

    def _autoencoder_terms(self, x: torch.Tensor, generator: Generator) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
        """The VQ-VAE terms (B,) and x̂; in training mode also init / EMA / restarts of the codebook."""
        ae, vq = self.autoencoder, self.autoencoder.quantizer
        z = ae.encode(x)  # (B, L, D)
        b, l, d = z.shape
        flat = z.reshape(b * l, d)  # (B·L, D)
        if self.training:
            vq.initialize(flat, generator)
        q = vq(flat)
        x_hat = ae.decoder(q.z_q.reshape(b, l, d))
        terms = {"rec": self._rec(x, x_hat), "commitment": q.commitment.reshape(b, l).mean(1)}
        if q.codebook_loss is not None:
            terms["codebook"] = q.codebook_loss.reshape(b, l).mean(1)
        used, perplexity = vq.usage(q.codes, vq.n_codes)
        restarted = vq.update(flat, q.codes, generator) if self.training else torch.zeros(())
        terms["_usage"] = used.to(x.dtype).expand(b)
        terms["_perplexity"] = perplexity.to(x.dtype).expand(b)
        terms["_restarted"] = restarted.to(device=x.device, dtype=x.dtype).expand(b)
        return terms, x_hat

    def _prior_terms(self, batch, generator: Generator) -> dict[str, torch.Tensor]:
        first = batch[0]
        codes = first if not first.dtype.is_floating_point else self.autoencoder.codes(first)  # (B, L)
        terms = self.prior.losses((codes,), generator=generator)
        if self.training:
            self.prior_steps.add_(1)
        return terms

    def losses(self, batch, *, phase: str = "main", generator: Generator = None) -> dict[str, torch.Tensor]:
        """Per-example terms (B,).

        ``phase`` ``"autoencoder"`` (or ``"main"``): ``rec``, ``commitment`` (and ``codebook``
        without EMA), logged ``_usage`` (codes used in the batch), ``_perplexity`` and
        ``_restarted``; in training mode this also runs the quantizer's k-means init, EMA update
        and restarts (randomness from ``generator``). ``"prior"``: the prior's ``nll`` (nats per
        code) on the codes of the images of ``batch`` (or on an integer (B, L) code batch).
        """
        if phase == "prior":
            return self._prior_terms(batch, generator)
        if phase not in ("main", "autoencoder"):
            raise ValueError(f"unknown phase {phase!r} of {type(self).__name__}: expected 'autoencoder' or 'prior'")
        return self._autoencoder_terms(batch[0], generator)[0]

    # ------------------------------------------------------------------ sampling, likelihood
    def _check_prior(self) -> None:
        if self.prior is None or int(self.prior_steps) == 0:
            raise ValueError(
                f"{type(self).__name__}.sample needs a trained prior over codes: "
                + ("the model was built without one" if self.prior is None else "its prior has not been trained yet")
                + " (train it with genspace.families.vq.fit_prior, the second stage)"
            )

    @torch.no_grad()
    def sample(self, n: int, *, shape=None, generator: Generator = None, class_labels=None, **ignored) -> torch.Tensor:
        """n samples (n, *data_shape): codes from the prior (n, L), then the decoder."""
        if shape is not None and tuple(shape) != self.data_shape:
            raise ValueError(f"this model generates shape {self.data_shape}, got shape={tuple(shape)}")
        if class_labels is not None:
            raise ValueError(f"{type(self).__name__} is unconditional: class_labels must be None")
        self._check_prior()
        codes = self.prior.sample(n, generator=generator)  # (n, L)
        x = self.autoencoder.decode_codes(codes)
        return x.clamp(*self.value_range) if self.value_range is not None else x

    @torch.no_grad()
    def code_log_likelihood(self, x: torch.Tensor) -> torch.Tensor:
        """Exact log p(codes(x)) under the prior, nats (B,): a likelihood of the codes, not of x."""
        self._check_prior()
        return self.prior.log_likelihood(self.autoencoder.codes(x))

    @torch.no_grad()
    def reconstruct(self, x: torch.Tensor) -> torch.Tensor:
        """x̂ = decoder(q(encoder(x))) (B, *data_shape), no state change."""
        return self.autoencoder.reconstruct(x)


class VQGAN(VQVAE):
    """VQGAN (see the module doc): a :class:`VQVAE` plus a patch critic and a perceptual term.

    Args:
        autoencoder, prior, reconstruction, value_range: as for :class:`VQVAE`.
        discriminator: the critic, (B, *data_shape) → per-patch logits (B, P).
        classifier: a trained :class:`~genspace.metrics.classifier.FeatureClassifier` for the
            perceptual term (None: off; images only).
        perceptual_weight: w_p.
        disc_weight: d, the factor of the adaptive GAN term once the critic is on.
        disc_start: training steps done before the critic and the GAN term switch on.
        delta: δ of the adaptive weight.

    Phases (stage ``"autoencoder"``): ``autoencoder`` (prefix ``autoencoder.``) then
    ``discriminator`` (prefix ``discriminator.``), both Adam betas (0.5, 0.9) as in the paper's
    code. The buffer ``gan_step`` counts the training steps done (incremented by the
    discriminator phase, the last of a step); ``adaptive_weight`` holds the last λ.
    """

    def __init__(
        self,
        autoencoder: VQAutoencoder,
        discriminator: nn.Module,
        prior: Optional[nn.Module] = None,
        *,
        classifier: Optional[nn.Module] = None,
        reconstruction: str = "l1",
        value_range: Optional[tuple[float, float]] = None,
        perceptual_weight: float = 1.0,
        disc_weight: float = 1.0,
        disc_start: int = 0,
        delta: float = 1e-4,
    ) -> None:
        super().__init__(autoencoder, prior, reconstruction=reconstruction, value_range=value_range)
        if isinstance(disc_start, bool) or not isinstance(disc_start, int) or disc_start < 0:
            raise ValueError(f"disc_start must be an integer >= 0, got {disc_start!r}")
        for name, v in (("perceptual_weight", perceptual_weight), ("disc_weight", disc_weight), ("delta", delta)):
            if not v >= 0:
                raise ValueError(f"{name} must be >= 0, got {v}")
        self.discriminator = discriminator
        self.perceptual = ClassifierPerceptual(classifier, autoencoder.data_shape) if classifier is not None else None
        self.perceptual_weight, self.disc_weight = float(perceptual_weight), float(disc_weight)
        self.disc_start, self.delta = disc_start, float(delta)
        self.register_buffer("gan_step", torch.zeros((), dtype=torch.long))
        self.register_buffer("adaptive_weight", torch.zeros(()))
        self.set_stage(self.stage)  # freeze the new submodules as the stage asks

    def phases(self) -> list[Phase]:
        if self.stage == "prior":
            return [Phase("prior", prefix="prior.")]
        return [
            Phase("autoencoder", prefix="autoencoder.", betas=(0.5, 0.9)),
            Phase("discriminator", prefix="discriminator.", betas=(0.5, 0.9)),
        ]

    def gan_factor(self, dtype: torch.dtype) -> torch.Tensor:
        """1 once ``disc_start`` training steps are done, else 0 (a 0-d tensor: no host sync)."""
        return (self.gan_step >= self.disc_start).to(dtype)

    def losses(self, batch, *, phase: str = "main", generator: Generator = None) -> dict[str, torch.Tensor]:
        """Per-example terms (B,) of the phase.

        ``"autoencoder"`` (or ``"main"``): the VQ-VAE terms, ``perceptual`` (w_p·perc, with a
        classifier) and ``gan`` = d·λ·(−mean_p D(x̂)) (zero before ``disc_start``; λ computed
        with autograd when gradients are enabled, else the last λ), logged ``_adaptive_weight``.
        ``"discriminator"``: ``disc`` = the hinge loss on x and on x̂ (computed without
        gradient to the autoencoder; zero before ``disc_start``), logged ``_logits_real`` /
        ``_logits_fake``. ``"prior"``: as for :class:`VQVAE`.
        """
        if phase == "prior":
            return self._prior_terms(batch, generator)
        x = batch[0]
        if phase == "discriminator":
            return self._discriminator_terms(x)
        if phase not in ("main", "autoencoder"):
            raise ValueError(f"unknown phase {phase!r} of VQGAN: expected 'autoencoder', 'discriminator' or 'prior'")
        terms, x_hat = self._autoencoder_terms(x, generator)
        nll = terms["rec"]
        if self.perceptual is not None:
            terms["perceptual"] = self.perceptual_weight * self.perceptual(x, x_hat)
            nll = nll + terms["perceptual"]
        g = -self.discriminator(x_hat).mean(1)  # (B,) generator loss −mean_p D(x̂)
        if torch.is_grad_enabled() and x_hat.requires_grad:
            lam = adaptive_weight(nll.mean(), g.mean(), self.autoencoder.decoder.out.weight, delta=self.delta)
            if self.training:
                self.adaptive_weight.copy_(lam)
        else:
            lam = self.adaptive_weight
        # before disc_start the factor is 0 (computed anyway, as the paper's code does: no branch on a tensor)
        terms["gan"] = (self.disc_weight * self.gan_factor(g.dtype) * lam.to(g.dtype)) * g
        terms["_adaptive_weight"] = lam.to(x.dtype).expand(x.shape[0])
        return terms

    def _discriminator_terms(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        with torch.no_grad():
            x_hat = self.autoencoder.reconstruct(x)
        real, fake = self.discriminator(x), self.discriminator(x_hat)  # (B, P) each
        terms = {
            "disc": self.gan_factor(real.dtype) * hinge_d_loss(real, fake),
            "_logits_real": real.detach().mean(1),
            "_logits_fake": fake.detach().mean(1),
        }
        if self.training:
            self.gan_step.add_(1)
        return terms


# ---------------------------------------------------------------------- the prior over codes
class CodePrior(nn.Module):
    """p(c) = Π_i p(c_i | c_<i) over the L codes of a grid (row-major), by a causal Transformer.

    The network is :class:`genspace.nets.transformer.Transformer` with vocabulary K + 1: the
    input is [s, c_1, …, c_{L−1}] with s = K a start symbol; under the causal mask the output at
    position i (1-based) sees s, c_1 … c_{i−1} only, and its logits over the first K entries give
    p(c_i | c_<i). The likelihood is exact over codes (``likelihood_kind = "exact"``).

    Args:
        n_codes: K.
        length: L, codes per example.
        dim, depth, n_heads, mlp_ratio, dropout: the Transformer's (see ``TransformerConfig``).
    """

    likelihood_kind = "exact"

    def __init__(self, n_codes: int, length: int, *, dim: int = 64, depth: int = 2, n_heads: int = 4, mlp_ratio: float = 4.0, dropout: float = 0.0) -> None:
        super().__init__()
        from genspace.nets.transformer import Transformer, TransformerConfig

        self.n_codes, self.length = int(n_codes), int(length)
        self.start = self.n_codes  # the start symbol s
        self.net = Transformer(
            TransformerConfig(vocab_size=n_codes + 1, dim=dim, depth=depth, n_heads=n_heads, mlp_ratio=mlp_ratio, max_len=length, dropout=dropout)
        )

    def _check(self, codes: torch.Tensor, values: bool = True) -> torch.Tensor:
        """Shape and dtype check; with ``values`` also the range (a host sync: not in ``losses``)."""
        if not isinstance(codes, torch.Tensor) or codes.ndim != 2 or codes.shape[1] != self.length or codes.dtype.is_floating_point:
            desc = f"{codes.dtype} {tuple(codes.shape)}" if isinstance(codes, torch.Tensor) else type(codes).__name__
            raise ValueError(f"expected integer codes of shape (B, {self.length}), got {desc}")
        if values and codes.numel() and (int(codes.min()) < 0 or int(codes.max()) >= self.n_codes):
            raise ValueError(f"codes must lie in 0..{self.n_codes - 1}, got {int(codes.min())}..{int(codes.max())}")
        return codes.long()

    def logits(self, codes: torch.Tensor, *, check: bool = True) -> torch.Tensor:
        """Logits (B, L, K) of p(c_i | c_<i) for every position i of codes (B, L)."""
        codes = self._check(codes, values=check)
        start = torch.full_like(codes[:, :1], self.start)
        inputs = torch.cat([start, codes[:, :-1]], dim=1)  # (B, L): [s, c_1 … c_{L−1}]
        return self.net(inputs, attn_mask="causal")[..., : self.n_codes]  # (B, L, K)

    def log_likelihood(self, codes: torch.Tensor, *, generator: Generator = None) -> torch.Tensor:
        """log p(codes) in nats (B,), exact."""
        logits = self.logits(codes)  # (B, L, K)
        logp = torch.log_softmax(logits.double(), dim=-1)
        return logp.gather(-1, codes.long()[..., None]).squeeze(-1).sum(1).to(logits.dtype)

    def losses(self, batch, *, phase: str = "main", generator: Generator = None) -> dict[str, torch.Tensor]:
        """``nll``: −log p(codes)/L, nats per code (B,), for a batch ``(codes (B, L),)``."""
        codes = self._check(batch[0], values=False)
        logits = self.logits(codes, check=False)  # (B, L, K)
        nll = F.cross_entropy(logits.reshape(-1, self.n_codes), codes.reshape(-1), reduction="none")  # (B·L,)
        return {"nll": nll.view(codes.shape).mean(1)}

    @torch.no_grad()
    def sample(self, n: int, *, generator: Generator = None, **ignored) -> torch.Tensor:
        """n code sequences (n, L) int64, ancestral sampling with a KV cache, u ~ U[0, 1) per code."""
        from genspace.core.random import rand

        if isinstance(n, bool) or not isinstance(n, int) or n < 1:
            raise ValueError(f"n must be a positive integer, got {n!r}")
        device = self.net.embed.weight.device
        cache = self.net.new_cache(self.length)
        token = torch.full((n, 1), self.start, dtype=torch.long, device=device)
        out = []
        for _ in range(self.length):
            logits = self.net(token, attn_mask="causal", cache=cache)[:, -1, : self.n_codes]  # (n, K)
            cdf = torch.softmax(logits.double(), dim=-1).cumsum(-1)  # (n, K)
            u = rand((n,), generator=generator, dtype=torch.float64, device=device)[:, None]  # (n, 1)
            token = (cdf < u * cdf[:, -1:]).sum(-1, keepdim=True).clamp_max(self.n_codes - 1)  # (n, 1) inverse CDF
            out.append(token)
        return torch.cat(out, dim=1)  # (n, L)


def fit_prior(
    model: VQVAE,
    data,
    config: TrainConfig,
    out_dir: Union[str, os.PathLike],
    *,
    precompute: bool = True,
    batch_size: int = 1024,
    resume: bool = False,
    **trainer_kwargs,
):
    """The second stage: train ``model.prior`` on the codes of the frozen autoencoder.

    Args:
        model: a :class:`VQVAE` / :class:`VQGAN` with a prior, its autoencoder trained.
        data: a tensor or tuple ``(x,)`` / ``(x, labels)`` of training data (labels unused), or
            integer codes (N, L).
        config: the :class:`~genspace.train.TrainConfig` of this stage.
        out_dir: the run folder of this stage (its own checkpoints: resume needs the same phases).
        precompute: encode the data once (in batches of ``batch_size``) and train on the codes;
            False: encode each batch (same result, slower).
        **trainer_kwargs: passed to :class:`~genspace.train.Trainer` (evaluate, progress, ...).

    Returns the :class:`~genspace.train.Trainer` after ``fit``; the model is left in its
    previous stage with ``prior_steps`` > 0, so ``model.sample`` works.
    """
    from genspace.train import Trainer

    x = data[0] if isinstance(data, (tuple, list)) else data
    if not isinstance(x, torch.Tensor):
        raise ValueError(f"data must be a tensor or a tuple of tensors, got {type(x).__name__}")
    previous = model.stage
    model.set_stage("prior")
    try:
        if precompute and x.dtype.is_floating_point:
            was_training = model.training
            model.eval()
            device = next(model.parameters()).device
            x = torch.cat([model.autoencoder.codes(x[i : i + batch_size].to(device)) for i in range(0, len(x), batch_size)])
            model.train(was_training)
        trainer = Trainer(model, (x,), config, out_dir, **trainer_kwargs)
        trainer.fit(resume=resume)
    finally:
        model.set_stage(previous)
    return trainer


# ---------------------------------------------------------------------- configs and builders
@dataclass
class CodePriorConfig:
    """The Transformer prior over codes (:class:`CodePrior`)."""

    dim: int = 64  # model width
    depth: int = 2  # Transformer blocks
    n_heads: int = 4  # attention heads (dim / n_heads even)
    mlp_ratio: float = 4.0  # SwiGLU width ratio
    dropout: float = 0.0  # dropout on attention and residual branches
    steps: int = 2000  # training steps of the second stage (after the autoencoder's train.steps)
    lr: float = 1e-3  # learning rate of the second stage


@register_variant("model", "vqvae")
@dataclass
class VQVAEConfig:
    """VQ-VAE (van den Oord et al. 2017) with a Transformer prior over its codes."""

    n_codes: int = 64  # K, codebook size
    code_dim: int = 16  # D, dimension of a code
    hidden: int = 64  # channels of the conv nets / width of the MLPs
    downsample: int = 2  # images: grid of (H/f)×(W/f) codes, f a power of 2 dividing H and W
    n_res_blocks: int = 1  # images: residual blocks in the encoder and in the decoder
    n_latents: int = 2  # points: codes per point
    beta: float = 0.25  # β of the commitment loss
    codebook_update: Literal["ema", "loss"] = "ema"  # EMA codebook (appendix A.1) or the codebook loss
    ema_decay: float = 0.99  # γ of the EMA codebook
    init: Literal["kmeans", "random"] = "kmeans"  # codebook initialization
    kmeans_iters: int = 10  # Lloyd iterations of the k-means init
    restart_after: Optional[int] = 50  # restart a code unused for this many steps; None: never
    restart_min_count: Optional[float] = None  # EMA only: also restart a code whose EMA count is below this
    reconstruction: Literal["mse", "l1"] = "mse"  # per-pixel reconstruction error
    prior: CodePriorConfig = field(default_factory=CodePriorConfig)  # the second stage


@register_variant("model", "vqgan")
@dataclass
class VQGANConfig(VQVAEConfig):
    """VQGAN (Esser et al. 2021): a VQ-VAE with a patch critic, adaptive weight and perceptual term.

    Inherits every VQ-VAE field; ``reconstruction`` defaults to "l1" as in the paper's code.
    """

    reconstruction: Literal["mse", "l1"] = "l1"  # per-pixel reconstruction error (the paper's code: L1)
    disc_hidden: int = 64  # channels of the critic's first layer (width of the points critic)
    disc_layers: int = 2  # images: strided layers of the critic (patch grid (H/2^n)×(W/2^n))
    disc_weight: float = 1.0  # d: factor of the adaptively weighted GAN term
    disc_start: int = 500  # training steps before the critic and the GAN term switch on
    perceptual_weight: float = 1.0  # w_p of the perceptual term (images only; 0: off)
    classifier: Optional[str] = None  # folder of a saved FeatureClassifier; None: trained on the run's labelled images


def _autoencoder(cfg: VQVAEConfig, data) -> VQAutoencoder:
    shape = tuple(data.shape)
    quantizer = VectorQuantizer(
        cfg.n_codes, cfg.code_dim, beta=cfg.beta, update=cfg.codebook_update, decay=cfg.ema_decay, init=cfg.init,
        kmeans_iters=cfg.kmeans_iters, restart_after=cfg.restart_after, restart_min_count=cfg.restart_min_count,
    )  # fmt: skip
    if data.kind == "images":
        if len(shape) != 3:
            raise ValueError(f"image data must have a per-example shape (C, H, W), got {shape}")
        kw = dict(hidden=cfg.hidden, downsample=cfg.downsample, n_res=cfg.n_res_blocks)
        return VQAutoencoder(ConvEncoder(shape, cfg.code_dim, **kw), quantizer, ConvDecoder(shape, cfg.code_dim, **kw), shape)
    if data.kind != "points" or len(shape) != 1:
        raise ValueError(f"expected image data (C, H, W) or points (dim,), got kind={data.kind!r}, shape={shape}")
    kw = dict(hidden=cfg.hidden, n_latents=cfg.n_latents)
    return VQAutoencoder(MLPEncoder(shape[0], cfg.code_dim, **kw), quantizer, MLPDecoder(shape[0], cfg.code_dim, **kw), shape)


def _prior(cfg: VQVAEConfig, autoencoder: VQAutoencoder) -> CodePrior:
    p = cfg.prior
    return CodePrior(cfg.n_codes, autoencoder.n_positions, dim=p.dim, depth=p.depth, n_heads=p.n_heads, mlp_ratio=p.mlp_ratio, dropout=p.dropout)


def build_vqvae(cfg: VQVAEConfig, data) -> VQVAE:
    """The VQ-VAE of ``cfg`` for ``data`` (duck-typed DataBundle: shape, kind); labels are unused."""
    ae = _autoencoder(cfg, data)
    value_range = (-1.0, 1.0) if data.kind == "images" else None
    return VQVAE(ae, _prior(cfg, ae), reconstruction=cfg.reconstruction, value_range=value_range)


def _classifier(cfg: VQGANConfig, data):
    from genspace.metrics.classifier import FeatureClassifier, train_classifier

    if cfg.classifier is not None:
        return FeatureClassifier.load(Path(cfg.classifier))
    train = tuple(data.train)
    if len(train) < 2:
        raise ValueError(
            "the VQGAN's perceptual term needs a feature classifier: set model.classifier to the folder of a "
            "saved FeatureClassifier, train with data.labels=true (a classifier is then trained on the "
            "training images), or set model.perceptual_weight=0"
        )
    return train_classifier(train[0].float(), train[1], n_classes=int(train[1].max()) + 1)


def build_vqgan(cfg: VQGANConfig, data) -> VQGAN:
    """The VQGAN of ``cfg`` for ``data``; the perceptual term is off for points."""
    ae = _autoencoder(cfg, data)
    if data.kind == "images":
        h, w = data.shape[1:]
        if h % 2**cfg.disc_layers or w % 2**cfg.disc_layers:
            raise ValueError(
                f"disc_layers={cfg.disc_layers} halves {h}×{w} images {cfg.disc_layers} times: "
                f"H and W must be divisible by {2**cfg.disc_layers}"
            )
        disc = PatchDiscriminator(data.shape[0], hidden=cfg.disc_hidden, n_layers=cfg.disc_layers)
        classifier = _classifier(cfg, data) if cfg.perceptual_weight > 0 else None
        value_range = (-1.0, 1.0)
    else:
        disc, classifier, value_range = MLPDiscriminator(data.shape[0], hidden=cfg.disc_hidden), None, None
    return VQGAN(
        ae, disc, _prior(cfg, ae), classifier=classifier, reconstruction=cfg.reconstruction, value_range=value_range,
        perceptual_weight=cfg.perceptual_weight, disc_weight=cfg.disc_weight, disc_start=cfg.disc_start,
    )  # fmt: skip


FAMILY_BUILDERS = {VQVAEConfig: build_vqvae, VQGANConfig: build_vqgan}
