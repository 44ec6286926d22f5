"""The model-agnostic trainer: one loop for diffusion, flows, GANs, VAEs and discrete models.

The protocol
------------
A trainable model is an ``nn.Module`` with

``losses(batch, *, phase: str = "main", generator: torch.Generator | None = None) -> dict[str, Tensor]``
    ``batch`` is a tuple of tensors, ``(x,)`` or ``(x, labels)``, rows drawn from the in-memory
    data. The result maps names to UNREDUCED per-example loss terms, each of shape (B,). The
    trainer reduces every term with a mean and optimizes the sum of the terms; a term whose name
    starts with "_" is logged but not optimized (a metric). All randomness of the loss (noise
    levels, noise, label dropout) must come from ``generator``: the trainer owns it, seeds it and
    saves its state, which makes a resumed run bit-identical to an uninterrupted one.

``phases() -> list[Phase]`` (optional)
    Several optimizers on a schedule. Each training step runs the phases in order, each
    ``repeat`` times, each time on a fresh batch, calling ``losses(batch, phase=phase.name)``
    and stepping that phase's AdamW optimizer (own learning rate, betas and warm-up schedule).
    A WGAN-GP::

        def phases(self):
            return [Phase("critic", prefix="critic.", repeat=5, betas=(0.0, 0.9)),
                    Phase("generator", prefix="generator.")]

    Without ``phases()`` there is one phase ``"main"`` over all parameters.

What the trainer does (:class:`Trainer`, configured by :class:`TrainConfig`): AdamW with linear
warm-up, gradient clipping, an EMA of the weights (:mod:`~genspace.train.ema`), mixed precision
decided once (bf16 autocast on CUDA, fp32 on CPU, or fp16 with a GradScaler), deterministic data
order and loss noise, CSV + TensorBoard logs (:mod:`~genspace.train.logging`), NaN/Inf detection
(:class:`TrainingDivergedError`), atomic safetensors checkpoints and exact resume
(:mod:`~genspace.train.checkpoint`), and data-parallel training under ``torchrun``
(:mod:`~genspace.train.distributed`).
"""

from genspace.train.checkpoint import (
    Checkpoint,
    checkpoint_path,
    latest_checkpoint,
    load_checkpoint,
    load_weights,
    save_checkpoint,
)
from genspace.train.ema import EMA, EMAConfig, decay_beta, halflife_beta
from genspace.train.logging import Logger, read_csv
from genspace.train.trainer import (
    EpochSampler,
    Phase,
    TrainConfig,
    Trainer,
    TrainingDivergedError,
    autocast_context,
    warmup_lr,
)

__all__ = [
    "Trainer",
    "TrainConfig",
    "Phase",
    "TrainingDivergedError",
    "EMA",
    "EMAConfig",
    "decay_beta",
    "halflife_beta",
    "Checkpoint",
    "save_checkpoint",
    "load_checkpoint",
    "latest_checkpoint",
    "checkpoint_path",
    "load_weights",
    "Logger",
    "read_csv",
    "EpochSampler",
    "autocast_context",
    "warmup_lr",
]
