"""A trainable continuous diffusion / flow model: network + process + parameterization + loss.

This is the piece the trainer sees. It implements the family protocol of
:mod:`genspace.train` — ``losses(batch, *, phase, generator)`` returning unreduced per-example
terms and ``sample(n, *, generator, ...)`` — and exposes ``denoiser``, the σ-space
``D(x, sigma, **cond)`` that every sampler in :mod:`genspace.sampling` takes.
"""

from __future__ import annotations

from typing import Optional

import torch
from torch import nn

from genspace.continuous.losses import get_loss
from genspace.continuous.parameterizations import make_denoiser
from genspace.continuous.processes import Process, get_process
from genspace.core.denoiser import BoundDenoiser
from genspace.core.random import Generator, rand, randn

# Samplers start and stop inside the process's σ range, clipped to EDM's [0.002, 80] unless the
# process is narrower or the user asks otherwise (EDM §3: beyond 80 nothing changes visibly).
DEFAULT_SIGMA_MIN = 0.002
DEFAULT_SIGMA_MAX = 80.0


def default_sigma_range(process: Process) -> tuple[float, float]:
    """(σ_min, σ_max) for sampling a model trained under ``process``."""
    # The flow process reaches σ = 9999 (t = 0.9999), but a grid over [0.002, 9999] makes σ-space
    # steps of the first stages far too long (Heun at 20 NFE was off by orders of magnitude);
    # starting at σ = 80 (t = 0.9877) from pure noise misplaces only x0/80 of the signal.
    lo = max(process.sigma_min, DEFAULT_SIGMA_MIN)
    hi = min(process.sigma_max, DEFAULT_SIGMA_MAX)
    return lo, hi


class DiffusionModel(nn.Module):
    """Network + process + parameterization + loss, trained with the shared trainer.

    Args:
        net: a network ``net(x, t, class_labels=None)`` (genspace.nets), holding no diffusion logic.
        process: process name or object (``vp``, ``ve``, ``edm``, ``cosine``, ``flow``, ``ddpm-*``).
        parameterization: what the network predicts: ``eps``, ``x0``, ``v``, ``velocity`` or ``edm``.
        loss: a named loss recipe of :func:`genspace.continuous.losses.get_loss`.
        n_classes: number of classes for class-conditional training (None: unconditional). Label
            ``n_classes`` is the null class used for classifier-free guidance.
        label_dropout: probability of replacing a label by the null class during training.
        sigma_data: data standard deviation for EDM preconditioning and the EDM weighting.
    """

    def __init__(
        self,
        net: nn.Module,
        process="edm",
        parameterization: str = "edm",
        loss: str = "edm",
        *,
        n_classes: Optional[int] = None,
        label_dropout: float = 0.1,
        sigma_data: float = 0.5,
    ) -> None:
        super().__init__()
        self.process = get_process(process) if isinstance(process, str) else process
        if not 0.0 <= label_dropout < 1.0:
            raise ValueError(f"label_dropout must be in [0, 1), got {label_dropout}")
        self.denoiser = make_denoiser(net, self.process, parameterization, sigma_data=sigma_data)
        self.loss_fn = get_loss(loss, sigma_data=sigma_data)
        self.parameterization = parameterization
        self.loss_name = loss
        self.n_classes = n_classes
        self.label_dropout = label_dropout

    @property
    def net(self) -> nn.Module:
        return self.denoiser.net

    def _cond(self, labels: Optional[torch.Tensor], generator: Generator) -> dict:
        if self.n_classes is None:
            return {}
        if labels is None:
            raise ValueError("this model is class-conditional (n_classes set) but the batch holds no labels")
        labels = labels.long()
        if self.training and self.label_dropout > 0:
            drop = rand((labels.shape[0],), generator=generator, device=labels.device) < self.label_dropout
            labels = torch.where(drop, torch.full_like(labels, self.n_classes), labels)
        return {"class_labels": labels}

    def losses(self, batch, *, phase: str = "main", generator: Generator = None) -> dict[str, torch.Tensor]:
        """Per-example loss terms for a batch (x0,) or (x0, labels): {"loss": (B,)}."""
        x0 = batch[0]
        labels = batch[1] if len(batch) > 1 else None
        cond = self._cond(labels, generator)
        return {"loss": self.loss_fn(self.denoiser, x0, generator=generator, **cond)}

    def sigma_range(self) -> tuple[float, float]:
        return default_sigma_range(self.process)

    @torch.no_grad()
    def sample(
        self,
        n: int,
        *,
        shape: tuple[int, ...],
        generator: Generator = None,
        method: str = "heun",
        nfe: int = 35,
        sigma_min: Optional[float] = None,
        sigma_max: Optional[float] = None,
        grid=None,
        class_labels: Optional[torch.Tensor] = None,
        guidance: float = 1.0,
        dtype: torch.dtype = torch.float32,
        **options,
    ) -> torch.Tensor:
        """Draw ``n`` samples of per-example ``shape`` with any sampler of genspace.sampling."""
        from genspace.sampling import sample as run_sampler
        from genspace.sampling.guidance import ClassifierFreeGuidance

        lo, hi = self.sigma_range()
        device = next(self.parameters()).device
        noise = randn((n, *shape), generator=generator, dtype=dtype, device=device)
        denoiser = self.denoiser
        cond = {}
        if class_labels is not None:
            if self.n_classes is None:
                raise ValueError("class_labels given, but this model was trained unconditionally")
            labels = torch.as_tensor(class_labels, device=device).long().expand(n)
            if guidance != 1.0:
                denoiser = ClassifierFreeGuidance(denoiser, guidance, null_label=self.n_classes)
            cond = {"class_labels": labels}
        elif self.n_classes is not None:
            cond = {"class_labels": torch.full((n,), self.n_classes, device=device, dtype=torch.long)}
        if cond:
            denoiser = BoundDenoiser(denoiser, **cond)
        return run_sampler(
            denoiser,
            noise,
            method=method,
            nfe=nfe,
            sigma_min=sigma_min if sigma_min is not None else lo,
            sigma_max=sigma_max if sigma_max is not None else hi,
            grid=grid,
            generator=generator,
            **options,
        )

