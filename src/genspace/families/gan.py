"""Generative adversarial networks: the non-saturating GAN, WGAN (weight clipping) and WGAN-GP.

A generator G maps z ~ N(0, I) to data space; a critic (discriminator) D scores examples. The two
are trained by two optimizers on the trainer's phase schedule (:meth:`GAN.phases`)::

    [Phase("critic", prefix="critic.", repeat=n_critic, lr=..., betas=...),
     Phase("generator", prefix="generator.", lr=..., betas=...)]

Each phase's optimizer holds only the parameters under its prefix (the submodules are named
``critic`` and ``generator``), so the generator phase never updates the critic and vice versa;
each critic repetition draws a fresh batch (WGAN Algorithm 1, WGAN-GP Algorithm 1).

Losses (per example, shape (B,); D gives logits for "ns", real scores for the Wasserstein losses):

- ``"ns"`` (Goodfellow et al. 2014, Eq. 1 and the −log D(G(z)) trick of their §3):
  critic −log σ(D(x)) − log(1 − σ(D(G(z)))), generator −log σ(D(G(z))). The saturating generator
  loss log(1 − σ(D(G(z)))) has derivative −σ(l) in the logit l, which vanishes as D(G(z)) → 0
  (early in training); the non-saturating one has −(1 − σ(l)) → −1 there: same sign, strong
  gradient (:func:`ns_generator_loss`, :func:`saturating_generator_loss`).
- ``"wgan"`` (Arjovsky et al. 2017, Algorithm 1): critic D(G(z)) − D(x), generator −D(G(z)),
  every critic parameter clipped to [−c, c] after each critic step (c = 0.01). The paper uses
  RMSProp (lr 5·10⁻⁵, "momentum-based methods such as Adam" made training unstable). The shared
  trainer uses AdamW; the substitute here is β = (0, 0.99): with β1 = 0 Adam has no momentum and
  is RMSProp with torch's default smoothing α = 0.99 plus a bias correction of the squared-gradient
  average.
  Clipping within the trainer protocol: :meth:`GAN.losses` clips the critic in place (no grad)
  at the start of every critic AND generator phase call, before any forward pass. Clipping
  before each use is the same algorithm as clipping after each update (the weights are only
  read by the next forward pass), and since the generator phase comes last and does not change
  the critic, the critic is inside [−c, c] at the end of every training step (what a
  checkpoint holds).
- ``"wgan-gp"`` (Gulrajani et al. 2017, Algorithm 1): critic D(G(z)) − D(x) + λ(‖∇_x̂ D(x̂)‖₂ − 1)²
  at x̂ = εx + (1 − ε)G(z), ε ~ U[0, 1] per example (:func:`gradient_penalty`); λ = 10,
  n_critic = 5, Adam lr 1e-4 and β = (0, 0.9). The penalty is per example, so the critic must
  not mix examples: no BatchNorm (layer norm or none, their §4).

Networks (architecture only, no loss logic):

- :class:`MLPGenerator` / :class:`MLPCritic` for 2-D toys and flattened data (ReLU generator,
  LeakyReLU(0.2) critic);
- :class:`DCGANGenerator` / :class:`DCGANCritic` for images (Radford et al. 2016: strided
  convolutions instead of pooling, BatchNorm and ReLU in G with tanh output, LeakyReLU(0.2) in D,
  no norm on D's first layer, N(0, 0.02) initialization). Sizes H×W = (h·2ⁿ)×(w·2ⁿ) with the
  base h, w ≤ 8 after halving while both sides stay even and ≥ 4: 8×8 (n = 1), 28×28 (n = 2),
  32×32 (n = 3), 64×64; odd sizes such as 7×7 use n = 0; others (e.g. 30×30, base 15) raise.

Learning rates: each phase's ``lr`` defaults to the run's ``train.lr`` (the papers' values are in
``PAPER_LR``). On 2-D toys in short runs, equal rates of 1e-3 with β1 = 0 oscillate (a
1-Lipschitz critic's gradient does not shrink near equilibrium and Adam's steps keep their
size); a two-time-scale setting (Heusel et al. 2017), critic 1e-3 and generator 1e-4, trained
WGAN-GP on 8gaussians and the non-saturating GAN on moons steadily in 400 steps (the tests).

``likelihood_kind = None``: a GAN defines no likelihood.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal, Optional

import torch
import torch.nn.functional as F
from torch import nn

from genspace.config import register_variant
from genspace.core.random import Generator, rand, randn

__all__ = [
    "GAN",
    "gradient_penalty",
    "clip_weights",
    "ns_generator_loss",
    "saturating_generator_loss",
    "MLPGenerator",
    "MLPCritic",
    "DCGANGenerator",
    "DCGANCritic",
    "dcgan_ladder",
    "GANConfig",
    "build_gan",
    "FAMILY_BUILDERS",
]

LOSSES = ("ns", "wgan", "wgan-gp")
# The papers' optimizer settings (β1, β2) per loss (DCGAN's Adam for "ns"; RMSProp-like Adam for
# "wgan", see the module docstring; WGAN-GP's Algorithm 1) and critic steps per generator step.
PAPER_BETAS = {"ns": (0.5, 0.999), "wgan": (0.0, 0.99), "wgan-gp": (0.0, 0.9)}
PAPER_N_CRITIC = {"ns": 1, "wgan": 5, "wgan-gp": 5}
_BATCH_NORMS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.SyncBatchNorm)
PAPER_LR = {"ns": 2e-4, "wgan": 5e-5, "wgan-gp": 1e-4}  # for reference: the run's train.lr is the default


# ----------------------------------------------------------------------------- losses


def ns_generator_loss(logits: torch.Tensor) -> torch.Tensor:
    """−log σ(l) = softplus(−l): the non-saturating generator loss (Goodfellow et al. 2014, §3). (B,) → (B,)."""
    return F.softplus(-logits)


def saturating_generator_loss(logits: torch.Tensor) -> torch.Tensor:
    """log(1 − σ(l)) = −softplus(l): the minimax generator loss of Goodfellow et al. 2014, Eq. 1. (B,) → (B,)."""
    return -F.softplus(logits)


def gradient_penalty(
    critic: nn.Module, real: torch.Tensor, fake: torch.Tensor, generator: Generator = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """WGAN-GP's penalty (‖∇_x̂ D(x̂)‖₂ − 1)² at x̂ = εx + (1 − ε)x̃, ε ~ U[0, 1] per example
    (Gulrajani et al. 2017, Algorithm 1, the critic loss L⁽ⁱ⁾).

    Args:
        critic: D, (B, ...) → (B,) or (B, 1); must treat examples independently (no BatchNorm),
            so that the gradient of Σ_i D(x̂_i) with respect to x̂_i is ∇D(x̂_i).
        real, fake: (B, ...) real examples x and generated ones x̃ (treated as constants).
        generator: source of ε (a StackedGenerator gives one ε per example's seed).

    Returns:
        (penalty (B,), x̂ (B, ...)). The penalty keeps its graph (``create_graph=True``) so that
        it can be differentiated with respect to the critic's parameters.
    """
    b = real.shape[0]
    eps = rand((b,), generator=generator, dtype=real.dtype, device=real.device)
    eps = eps.reshape(b, *([1] * (real.dim() - 1)))  # (B, 1, ..., 1)
    x_hat = (eps * real.detach() + (1 - eps) * fake.detach()).requires_grad_(True)
    scores = critic(x_hat).reshape(b)
    (grad,) = torch.autograd.grad(scores.sum(), x_hat, create_graph=True)
    norm = grad.reshape(b, -1).norm(dim=1)  # (B,)
    return (norm - 1.0).square(), x_hat


@torch.no_grad()
def clip_weights(module: nn.Module, c: float) -> None:
    """Clamp every parameter of ``module`` to [−c, c] in place (WGAN Algorithm 1, line 7)."""
    for p in module.parameters():
        p.clamp_(-c, c)


# ----------------------------------------------------------------------------- networks


class MLPGenerator(nn.Module):
    """z (B, Z) → x (B, *shape): Linear → (ReLU → Linear) × depth; ``tanh`` output optional."""

    def __init__(self, latent_dim: int, shape: tuple[int, ...], hidden: int = 256, depth: int = 3, tanh: bool = False) -> None:
        super().__init__()
        self.shape, self.tanh = tuple(shape), tanh
        self.net = _mlp(latent_dim, hidden, depth, math.prod(self.shape), nn.ReLU)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        x = self.net(z)
        return (torch.tanh(x) if self.tanh else x).reshape(z.shape[0], *self.shape)


class MLPCritic(nn.Module):
    """x (B, *shape) → score (B,): Linear → (LeakyReLU(0.2) → Linear) × depth on the flattened x."""

    def __init__(self, shape: tuple[int, ...], hidden: int = 256, depth: int = 3) -> None:
        super().__init__()
        self.net = _mlp(math.prod(shape), hidden, depth, 1, lambda: nn.LeakyReLU(0.2))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x.flatten(1)).squeeze(1)


def _mlp(in_dim: int, hidden: int, depth: int, out_dim: int, activation) -> nn.Sequential:
    if depth < 1 or hidden < 1:
        raise ValueError(f"an MLP needs depth >= 1 and hidden >= 1, got depth={depth}, hidden={hidden}")
    layers: list[nn.Module] = [nn.Linear(in_dim, hidden)]
    for i in range(depth):
        layers += [activation(), nn.Linear(hidden, out_dim if i == depth - 1 else hidden)]
    return nn.Sequential(*layers)


def dcgan_ladder(height: int, width: int) -> tuple[int, int, int]:
    """(n, h, w): H = h·2ⁿ, W = w·2ⁿ, halving while both sides are even and the halves ≥ 4.

    Raises ValueError for sides < 4 or a base side > 8 (too large a first feature map).
    """
    if height < 4 or width < 4:
        raise ValueError(f"DCGAN nets need images of at least 4×4 pixels, got {height}×{width}")
    n, h, w = 0, height, width
    while h % 2 == 0 and w % 2 == 0 and min(h, w) // 2 >= 4:
        n, h, w = n + 1, h // 2, w // 2
    if max(h, w) > 8:
        raise ValueError(
            f"DCGAN nets need H×W = (h·2^n)×(w·2^n) with h, w ≤ 8 (e.g. 8×8, 28×28, 32×32, 64×64, 7×7); "
            f"{height}×{width} reduces only to {h}×{w}. Use net='mlp' or resize the images"
        )
    return n, h, w


def _dcgan_init(module: nn.Module) -> None:
    """Radford et al. 2016, §4: weights N(0, 0.02); BatchNorm scale N(1, 0.02), shifts 0."""
    for m in module.modules():
        if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d, nn.Linear)):
            nn.init.normal_(m.weight, 0.0, 0.02)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.normal_(m.weight, 1.0, 0.02)
            nn.init.zeros_(m.bias)


class DCGANGenerator(nn.Module):
    """z (B, Z) → images (B, C, H, W) in (−1, 1) (Radford et al. 2016, Fig. 1, scaled down).

    Linear → (c₀, h, w) → BatchNorm, ReLU → n × [ConvTranspose 4×4 stride 2 (×2 size, ½ channels),
    BatchNorm, ReLU] → Conv 3×3 → tanh, with c₀ = base·2ⁿ (capped at 8·base) and the ladder of
    :func:`dcgan_ladder`.
    """

    def __init__(self, latent_dim: int, shape: tuple[int, int, int], base_channels: int = 64) -> None:
        super().__init__()
        c_out, height, width = shape
        self.n, self.h, self.w = dcgan_ladder(height, width)
        chans = [min(base_channels * 2 ** (self.n - i), 8 * base_channels) for i in range(self.n + 1)]
        self.c0 = chans[0]
        self.project = nn.Linear(latent_dim, self.c0 * self.h * self.w, bias=False)
        layers: list[nn.Module] = [nn.BatchNorm2d(self.c0), nn.ReLU()]
        for c_in, c_next in zip(chans[:-1], chans[1:]):
            layers += [nn.ConvTranspose2d(c_in, c_next, 4, stride=2, padding=1, bias=False), nn.BatchNorm2d(c_next), nn.ReLU()]
        layers += [nn.Conv2d(chans[-1], c_out, 3, padding=1)]
        self.body = nn.Sequential(*layers)
        _dcgan_init(self)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        x = self.project(z).reshape(z.shape[0], self.c0, self.h, self.w)  # (B, c0, h, w)
        return torch.tanh(self.body(x))  # (B, C, H, W)


class DCGANCritic(nn.Module):
    """images (B, C, H, W) → score (B,) (Radford et al. 2016): Conv 3×3 → LeakyReLU(0.2) →
    n × [Conv 4×4 stride 2 (½ size, ×2 channels), norm, LeakyReLU(0.2)] → Linear.

    ``norm``: ``"batch"`` (DCGAN), ``"layer"`` (GroupNorm with one group: a layer norm over
    (C, H, W) of each example, Gulrajani et al. 2017 §4, for the gradient penalty) or ``"none"``.
    """

    def __init__(self, shape: tuple[int, int, int], base_channels: int = 64, norm: Literal["batch", "layer", "none"] = "batch") -> None:
        super().__init__()
        if norm not in ("batch", "layer", "none"):
            raise ValueError(f"critic norm must be 'batch', 'layer' or 'none', got {norm!r}")
        c_in, height, width = shape
        n, h, w = dcgan_ladder(height, width)
        chans = [min(base_channels * 2**i, 8 * base_channels) for i in range(n + 1)]
        layers: list[nn.Module] = [nn.Conv2d(c_in, chans[0], 3, padding=1), nn.LeakyReLU(0.2)]
        for a, b in zip(chans[:-1], chans[1:]):
            layers += [nn.Conv2d(a, b, 4, stride=2, padding=1, bias=norm == "none"), _norm(norm, b), nn.LeakyReLU(0.2)]
        self.body = nn.Sequential(*layers)
        self.head = nn.Linear(chans[-1] * h * w, 1)
        _dcgan_init(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(x).flatten(1)).squeeze(1)  # (B,)


def _norm(kind: str, channels: int) -> nn.Module:
    if kind == "batch":
        return nn.BatchNorm2d(channels)
    if kind == "layer":
        return nn.GroupNorm(1, channels)
    return nn.Identity()


# ----------------------------------------------------------------------------- the model


class GAN(nn.Module):
    """A GAN on the trainer's two-phase schedule (see the module docstring for the losses).

    Args:
        generator: G, z (B, Z) → (B, *shape) in the data's range.
        critic: D, (B, *shape) → (B,) (logits for ``"ns"``, scores otherwise).
        shape: per-example data shape.
        latent_dim: Z.
        loss: ``"ns"``, ``"wgan"`` or ``"wgan-gp"``.
        n_critic: critic steps per generator step (None: the paper's, 1 / 5 / 5).
        gp_lambda: λ of WGAN-GP.
        clip: c of WGAN's weight clipping.
        critic_lr, generator_lr: each phase's learning rate (None: the run's ``train.lr``).
        critic_betas, generator_betas: each phase's Adam (β1, β2) (None: the paper's for ``loss``).
    """

    likelihood_kind = None
    likelihood_space = None  # no likelihood

    def __init__(
        self,
        generator: nn.Module,
        critic: nn.Module,
        shape: tuple[int, ...],
        *,
        latent_dim: int,
        loss: Literal["ns", "wgan", "wgan-gp"] = "wgan-gp",
        n_critic: Optional[int] = None,
        gp_lambda: float = 10.0,
        clip: float = 0.01,
        critic_lr: Optional[float] = None,
        generator_lr: Optional[float] = None,
        critic_betas: Optional[tuple[float, float]] = None,
        generator_betas: Optional[tuple[float, float]] = None,
    ) -> None:
        super().__init__()
        if loss not in LOSSES:
            raise ValueError(f"loss must be one of {LOSSES}, got {loss!r}")
        n_critic = PAPER_N_CRITIC[loss] if n_critic is None else n_critic
        if isinstance(n_critic, bool) or not isinstance(n_critic, int) or n_critic < 1:
            raise ValueError(f"n_critic must be a positive integer or None, got {n_critic!r}")
        if not gp_lambda >= 0:
            raise ValueError(f"gp_lambda must be >= 0, got {gp_lambda}")
        if not clip > 0:
            raise ValueError(f"clip must be > 0, got {clip}")
        if loss == "wgan-gp" and any(isinstance(m, _BATCH_NORMS) for m in critic.modules()):
            raise ValueError("the WGAN-GP critic must not use BatchNorm (the penalty is per example): use layer norm or none")
        self.generator, self.critic = generator, critic
        self.shape = tuple(int(s) for s in shape)
        self.latent_dim, self.loss = int(latent_dim), loss
        self.n_critic, self.gp_lambda, self.clip = n_critic, float(gp_lambda), float(clip)
        self.critic_lr, self.generator_lr = critic_lr, generator_lr
        self.critic_betas = tuple(critic_betas) if critic_betas is not None else PAPER_BETAS[loss]
        self.generator_betas = tuple(generator_betas) if generator_betas is not None else PAPER_BETAS[loss]
        self.n_classes = None  # unconditional

    def phases(self) -> list:
        """Critic (``n_critic`` steps, each on its own batch), then generator."""
        from genspace.train.trainer import Phase  # the trainer's protocol type (train sits above families)

        return [
            Phase("critic", prefix="critic.", repeat=self.n_critic, lr=self.critic_lr, betas=self.critic_betas),
            Phase("generator", prefix="generator.", lr=self.generator_lr, betas=self.generator_betas),
        ]

    def _fake(self, b: int, like: torch.Tensor, generator: Generator) -> torch.Tensor:
        z = randn((b, self.latent_dim), generator=generator, dtype=like.dtype, device=like.device)
        return self.generator(z)

    def losses(self, batch, *, phase: str = "critic", generator: Generator = None) -> dict[str, torch.Tensor]:
        """Per-example terms (B,) of ``phase`` ("critic" or "generator").

        critic, ns: ``critic`` = softplus(−D(x)) + softplus(D(G(z))); logged ``_d_real``/``_d_fake``
        (mean σ(D)). critic, wgan: ``critic`` = D(G(z)) − D(x) after clipping. critic, wgan-gp:
        ``critic`` as wgan plus ``gp`` = λ·penalty. Logged ``_w1`` = D(x) − D(G(z)) (the critic's
        estimate of the Wasserstein-1 distance, up to its Lipschitz constant).
        generator: ``generator`` = softplus(−D(G(z))) (ns) or −D(G(z)).
        """
        x = batch[0]
        if tuple(x.shape[1:]) != self.shape:
            raise ValueError(f"expected examples of shape {self.shape}, got a batch of shape {tuple(x.shape)}")
        b = x.shape[0]
        if self.loss == "wgan":
            clip_weights(self.critic, self.clip)  # before every use of the critic: see the module docstring
        if phase == "critic":
            with torch.no_grad():
                fake = self._fake(b, x, generator)
            d_real, d_fake = self.critic(x), self.critic(fake)
            if self.loss == "ns":
                return {
                    "critic": F.softplus(-d_real) + F.softplus(d_fake),
                    "_d_real": torch.sigmoid(d_real).detach(),
                    "_d_fake": torch.sigmoid(d_fake).detach(),
                }
            terms = {"critic": d_fake - d_real, "_w1": (d_real - d_fake).detach()}
            if self.loss == "wgan-gp":
                penalty, _ = gradient_penalty(self.critic, x, fake, generator)
                terms["gp"] = self.gp_lambda * penalty
            return terms
        if phase == "generator":
            d_fake = self.critic(self._fake(b, x, generator))
            return {"generator": ns_generator_loss(d_fake) if self.loss == "ns" else -d_fake}
        raise ValueError(f"a GAN has the phases 'critic' and 'generator', got phase={phase!r}")

    @torch.no_grad()
    def sample(self, n: int, *, shape: Optional[tuple[int, ...]] = None, generator: Generator = None, class_labels=None, **ignored) -> torch.Tensor:
        """G(z), z ~ N(0, I): (n, *shape). (BatchNorm layers use their running statistics in eval mode.)"""
        if shape is not None and tuple(shape) != self.shape:
            raise ValueError(f"this GAN models examples of shape {self.shape}, got shape={tuple(shape)}")
        p = next(self.generator.parameters())
        z = randn((n, self.latent_dim), generator=generator, dtype=p.dtype, device=p.device)
        return self.generator(z).reshape(n, *self.shape)


# ----------------------------------------------------------------------------- config and builder


@register_variant("model", "gan")
@dataclass
class GANConfig:
    """A GAN: non-saturating (Goodfellow et al. 2014), WGAN (Arjovsky et al. 2017), WGAN-GP (Gulrajani et al. 2017)."""

    loss: Literal["ns", "wgan", "wgan-gp"] = "wgan-gp"  # the adversarial objective
    net: Literal["auto", "mlp", "dcgan"] = "auto"  # auto: MLPs for points, DCGAN convs for images
    latent_dim: Optional[int] = None  # Z; None: 8 for points, 64 for images
    hidden: int = 256  # MLP width
    depth: int = 3  # MLP hidden layers
    base_channels: int = 64  # DCGAN channels at full resolution (doubling per halving, capped at 8×)
    critic_norm: Optional[Literal["batch", "layer", "none"]] = None  # DCGAN critic norm; None: layer for wgan-gp, batch otherwise
    n_critic: Optional[int] = None  # critic steps per generator step; None: ns 1 (Goodfellow k=1), wgan 5, wgan-gp 5
    gp_lambda: float = 10.0  # WGAN-GP penalty weight λ (Gulrajani et al.)
    clip: float = 0.01  # WGAN weight-clipping bound c (Arjovsky et al.)
    critic_lr: Optional[float] = None  # None: train.lr (papers: ns/DCGAN 2e-4, wgan 5e-5, wgan-gp 1e-4)
    generator_lr: Optional[float] = None  # None: train.lr
    critic_betas: Optional[tuple[float, float]] = None  # None: ns (0.5, 0.999), wgan (0, 0.99) ~RMSProp, wgan-gp (0, 0.9)
    generator_betas: Optional[tuple[float, float]] = None  # None: as critic_betas' default


def build_gan(cfg: GANConfig, data) -> GAN:
    """The GAN of ``cfg`` for ``data`` (duck-typed DataBundle: shape, kind, n_classes)."""
    if getattr(data, "n_classes", None) is not None:
        raise ValueError("the GAN family is unconditional: set data.labels=false")
    shape = tuple(int(s) for s in data.shape)
    images = data.kind == "images"
    latent = cfg.latent_dim if cfg.latent_dim is not None else (64 if images else 8)
    if isinstance(latent, bool) or not isinstance(latent, int) or latent < 1:
        raise ValueError(f"model.latent_dim must be a positive integer or None, got {cfg.latent_dim!r}")
    kind = cfg.net if cfg.net != "auto" else ("dcgan" if images else "mlp")
    if kind == "dcgan":
        if len(shape) != 3:
            raise ValueError(f"model.net=dcgan needs image data (C, H, W), got examples of shape {shape}")
        norm = cfg.critic_norm or ("layer" if cfg.loss == "wgan-gp" else "batch")
        gen: nn.Module = DCGANGenerator(latent, shape, cfg.base_channels)
        critic: nn.Module = DCGANCritic(shape, cfg.base_channels, norm)
    else:
        gen = MLPGenerator(latent, shape, cfg.hidden, cfg.depth, tanh=images)
        critic = MLPCritic(shape, cfg.hidden, cfg.depth)
    return GAN(
        gen,
        critic,
        shape,
        latent_dim=latent,
        loss=cfg.loss,
        n_critic=cfg.n_critic,
        gp_lambda=cfg.gp_lambda,
        clip=cfg.clip,
        critic_lr=cfg.critic_lr,
        generator_lr=cfg.generator_lr,
        critic_betas=cfg.critic_betas,
        generator_betas=cfg.generator_betas,
    )


FAMILY_BUILDERS = {GANConfig: build_gan}
