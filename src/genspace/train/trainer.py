"""The model-agnostic trainer: AdamW phases, warm-up, clipping, EMA, precision, checkpoints, DDP.

The trainer knows nothing of the model beyond the protocol of :mod:`genspace.train`: it draws a
batch, calls ``model.losses(batch, phase=..., generator=...)``, reduces each per-example term
with a mean, sums the terms whose names do not start with "_" and steps the phase's optimizer.

Steps are counted from 1: "step k" is the k-th training step, and ``ckpt-<k>`` holds the state
after it. The hot path does no host-device synchronisation: the loss terms of every step are
stacked on the device and read back (one sync) only at log, evaluation, figure and checkpoint
steps, where non-finite values are detected and reported with the exact step they occurred at.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Literal, Mapping, Optional, Sequence, Union

import torch
from torch import nn

from genspace.train import distributed as gdist
from genspace.train.checkpoint import (
    checkpoint_path,
    latest_checkpoint,
    load_checkpoint,
    load_weights,
    prune_checkpoints,
    remove_stale,
    save_checkpoint,
)
from genspace.train.ema import EMA, EMAConfig
from genspace.train.logging import Logger

PRECISIONS = ("auto", "fp32", "bf16", "fp16")


class TrainingDivergedError(ValueError):
    """A loss term became NaN or ±Inf; nothing after the last good checkpoint was saved."""


@dataclass
class TrainConfig:
    steps: int = 10_000  # training steps; each runs every phase `repeat` times
    batch_size: int = 256  # global batch size (split evenly across ranks)
    lr: float = 1e-3  # AdamW learning rate after warm-up (a Phase may override it)
    betas: tuple[float, float] = (0.9, 0.999)  # AdamW (β1, β2) (a Phase may override them)
    weight_decay: float = 0.0  # AdamW decoupled weight decay
    warmup_steps: int = 0  # linear warm-up: lr · min(1, k / warmup_steps) at step k; 0: off
    grad_clip: Optional[float] = None  # max global gradient norm of each phase's parameters; None: off
    ema: EMAConfig = field(default_factory=EMAConfig)  # weight averaging (kind="off" to disable)
    precision: Literal["auto", "fp32", "bf16", "fp16"] = "auto"  # auto: bf16 autocast on CUDA, fp32 on CPU
    seed: int = 0  # seeds the data order and the loss noise
    log_every: int = 100  # steps between log rows (CSV, TensorBoard, progress bar)
    eval_every: Optional[int] = None  # steps between evaluate() calls (always at the end); None: end only
    sample_every: Optional[int] = None  # steps between make_figures() calls (always at the end); None: end only
    ckpt_every: Optional[int] = 1000  # steps between checkpoints (always at the end); None: end only
    keep_last: Optional[int] = 3  # newest checkpoints kept on disk; None: all
    max_seconds: Optional[float] = None  # wall-clock budget: stop after the step that exceeds it (final log/eval/checkpoint as at `steps`); None: off

    def __post_init__(self) -> None:
        if isinstance(self.ema, Mapping):
            self.ema = EMAConfig(**self.ema)
        self.betas = tuple(float(b) for b in self.betas)
        for name in ("steps", "batch_size", "log_every"):
            _check_int(name, getattr(self, name), optional=False)
        for name in ("eval_every", "sample_every", "ckpt_every", "keep_last"):
            _check_int(name, getattr(self, name), optional=True)
        if not isinstance(self.warmup_steps, int) or self.warmup_steps < 0:
            raise ValueError(f"warmup_steps must be an integer >= 0, got {self.warmup_steps!r}")
        if not self.lr > 0:
            raise ValueError(f"lr must be > 0, got {self.lr}")
        if len(self.betas) != 2 or not all(0.0 <= b < 1.0 for b in self.betas):
            raise ValueError(f"betas must be two numbers in [0, 1), got {self.betas}")
        if self.weight_decay < 0:
            raise ValueError(f"weight_decay must be >= 0, got {self.weight_decay}")
        if self.grad_clip is not None and not self.grad_clip > 0:
            raise ValueError(f"grad_clip must be > 0 or None, got {self.grad_clip}")
        if self.precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {PRECISIONS}, got {self.precision!r}")
        if self.max_seconds is not None and not (isinstance(self.max_seconds, (int, float)) and self.max_seconds > 0):
            raise ValueError(f"max_seconds must be a number > 0 or None, got {self.max_seconds!r}")


def _check_int(name: str, value, *, optional: bool) -> None:
    if value is None and optional:
        return
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be a positive integer{' or None' if optional else ''}, got {value!r}")


@dataclass
class Phase:
    """One optimizer of a model and how often it steps per training step.

    A GAN: ``[Phase("critic", prefix="critic.", repeat=5, betas=(0.0, 0.9)),
    Phase("generator", prefix="generator.")]``. Give the parameters either as ``params``, a
    callable ``model -> iterable of Parameters`` (a string there is taken as a prefix), or as
    ``prefix``, a parameter-name prefix; with neither the phase optimizes every parameter that
    requires a gradient.
    """

    name: str  # passed to model.losses(batch, phase=name)
    params: Union[Callable[[nn.Module], Iterable[nn.Parameter]], str, None] = None  # what to optimize
    prefix: Optional[str] = None  # or: optimize the parameters whose names start with this
    repeat: int = 1  # optimizer steps of this phase per training step, each on its own batch
    lr: Optional[float] = None  # None: TrainConfig.lr
    betas: Optional[tuple[float, float]] = None  # None: TrainConfig.betas

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name:
            raise ValueError(f"Phase.name must be a non-empty string, got {self.name!r}")
        if self.params is not None and self.prefix is not None:
            raise ValueError(f"Phase {self.name!r}: give params or prefix, not both")
        if isinstance(self.params, str):
            self.params, self.prefix = None, self.params
        if self.params is not None and not callable(self.params):
            raise ValueError(f"Phase {self.name!r}: params must be a callable model -> parameters")
        _check_int(f"Phase {self.name!r} repeat", self.repeat, optional=False)
        if self.lr is not None and not self.lr > 0:
            raise ValueError(f"Phase {self.name!r}: lr must be > 0, got {self.lr}")

    def select(self, model: nn.Module) -> list[nn.Parameter]:
        """The parameters this phase's optimizer updates."""
        if self.params is not None:
            params = list(self.params(model))
        elif self.prefix is not None:
            params = [p for n, p in model.named_parameters() if n.startswith(self.prefix)]
        else:
            params = [p for p in model.parameters() if p.requires_grad]
        if not params:
            names = [n for n, _ in model.named_parameters()][:8]
            raise ValueError(
                f"Phase {self.name!r} selects no parameters (prefix={self.prefix!r}); "
                f"the model's parameters start with {names}"
            )
        return params


def warmup_lr(base_lr: float, step: int, warmup_steps: int) -> float:
    """Learning rate at training step ``step`` (1-based): base_lr · min(1, step / warmup_steps)."""
    if warmup_steps <= 0:
        return base_lr
    return base_lr * min(1.0, step / warmup_steps)


def derive_seed(seed: int, *keys) -> int:
    """A 63-bit seed for an independent stream named by ``keys`` (e.g. ("noise", rank))."""
    digest = hashlib.sha256(repr((int(seed), *keys)).encode()).digest()
    return int.from_bytes(digest[:8], "little") & ((1 << 63) - 1)


def autocast_context(precision: str, device: torch.device):
    """(context manager for the forward pass, whether a GradScaler is needed) — decided once."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    if precision == "auto":
        precision = "bf16" if device.type == "cuda" else "fp32"
    if precision == "fp32":
        return contextlib.nullcontext(), False
    dtype = torch.bfloat16 if precision == "bf16" else torch.float16
    return torch.autocast(device_type=device.type, dtype=dtype), precision == "fp16"


class EpochSampler:
    """Global batches of indices from one random permutation per epoch.

    A batch that runs past the end of an epoch is completed from the next permutation. The
    state (the generator state at the start of the current epoch and the position in it) is
    small and restores the exact sequence of batches.

    Args:
        n: dataset size.
        batch_size: indices per batch (may exceed n).
        seed: seed of the CPU generator drawing the permutations.
        device: where the index tensors live (the device of the data).
    """

    def __init__(self, n: int, batch_size: int, seed: int, device: Union[str, torch.device] = "cpu") -> None:
        self.n, self.batch_size, self.device = int(n), int(batch_size), torch.device(device)
        self.generator = torch.Generator().manual_seed(int(seed))
        self._new_epoch()

    def _new_epoch(self) -> None:
        self._epoch_state = self.generator.get_state()
        self._perm = torch.randperm(self.n, generator=self.generator).to(self.device)
        self._cursor = 0

    def next(self) -> torch.Tensor:
        """The next (batch_size,) int64 index batch."""
        if self._cursor + self.batch_size <= self.n:  # the common case: one slice
            idx = self._perm[self._cursor : self._cursor + self.batch_size]
            self._cursor += self.batch_size
            return idx
        parts, need = [], self.batch_size
        while need > 0:
            if self._cursor == self.n:
                self._new_epoch()
            take = min(need, self.n - self._cursor)
            parts.append(self._perm[self._cursor : self._cursor + take])
            self._cursor += take
            need -= take
        return torch.cat(parts)

    def state_dict(self) -> dict:
        return {"epoch_rng": self._epoch_state.clone(), "cursor": self._cursor, "n": self.n}

    def load_state_dict(self, state: Mapping) -> None:
        if int(state["n"]) != self.n:
            raise ValueError(f"the checkpoint was trained on {state['n']} examples, this data has {self.n}")
        self.generator.set_state(state["epoch_rng"].cpu())
        self._new_epoch()
        self._cursor = int(state["cursor"])


class _LossModule(nn.Module):
    """Routes DDP's forward to ``model.losses`` (DDP synchronises gradients only through forward)."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, batch, phase: str, generator):
        return self.model.losses(batch, phase=phase, generator=generator)


class Trainer:
    """Train any model that implements the :mod:`genspace.train` protocol.

    Args:
        model: an ``nn.Module`` with ``losses(batch, *, phase, generator)`` and optionally
            ``phases()``, already on its device (the device of its first parameter is used).
        data: a tuple of tensors with the same first dimension, e.g. ``(x,)`` or ``(x, labels)``;
            a batch is the same rows of each, moved to the model's device.
        config: a :class:`TrainConfig`.
        out_dir: the run folder (config.json, metrics.csv, tb/, ckpt-*/, figures).
        evaluate: ``evaluate(model_or_ema, step) -> {name: float}`` (the EMA model if there is
            one), logged to the CSV as ``eval/<name>``. Called on rank 0 only.
        make_figures: ``make_figures(ema_model, step, out_dir)``, on rank 0 only.
        config_dict: the run's full configuration, written to config.json (default: the
            TrainConfig).
        progress: show a tqdm progress bar (only on a TTY, only on rank 0).
        tensorboard: also log to TensorBoard.
    """

    def __init__(
        self,
        model: nn.Module,
        data: Union[torch.Tensor, Sequence[torch.Tensor]],
        config: TrainConfig,
        out_dir: Union[str, os.PathLike],
        *,
        evaluate: Optional[Callable[[nn.Module, int], Mapping[str, float]]] = None,
        make_figures: Optional[Callable[[nn.Module, int, Path], None]] = None,
        config_dict: Optional[Mapping] = None,
        progress: bool = True,
        tensorboard: bool = True,
    ) -> None:
        if not isinstance(config, TrainConfig):
            raise ValueError(f"config must be a TrainConfig, got {type(config).__name__}")
        if not callable(getattr(model, "losses", None)):
            raise ValueError(f"{type(model).__name__} has no losses(batch, *, phase, generator) method")
        self.data = _check_data(data)
        self.model, self.config, self.out_dir = model, config, Path(out_dir)
        self.evaluate, self.make_figures = evaluate, make_figures
        self.config_dict = dict(config_dict) if config_dict is not None else {"train": asdict(config)}
        try:
            json.dumps(self.config_dict)
        except (TypeError, ValueError) as e:
            raise ValueError(f"config_dict must be JSON-serialisable (it goes to config.json): {e}") from None
        self.progress, self.tensorboard = progress, tensorboard
        try:
            self.device = next(model.parameters()).device
        except StopIteration:
            raise ValueError(f"{type(model).__name__} has no parameters to train") from None

        self.rank, self.world_size = gdist.rank(), gdist.world_size()
        if config.batch_size % self.world_size:
            raise ValueError(
                f"batch_size {config.batch_size} is not divisible by the world size {self.world_size}"
            )
        self.local_batch = config.batch_size // self.world_size

        self.phases = list(model.phases()) if callable(getattr(model, "phases", None)) else [Phase("main")]
        names = [p.name for p in self.phases]
        if not self.phases or len(set(names)) != len(names):
            raise ValueError(f"model.phases() must return phases with distinct names, got {names}")
        self._phase_params = {p.name: p.select(model) for p in self.phases}
        self._all_params = list(model.parameters())
        self.optimizers = {
            p.name: torch.optim.AdamW(
                self._phase_params[p.name],
                lr=p.lr or config.lr,
                betas=p.betas or config.betas,
                weight_decay=config.weight_decay,
            )
            for p in self.phases
        }
        self._autocast, use_scaler = autocast_context(config.precision, self.device)
        self.scalers = {p.name: torch.amp.GradScaler(self.device.type) for p in self.phases} if use_scaler else {}

        if self.world_size > 1:
            from torch.nn.parallel import DistributedDataParallel

            ddp = DistributedDataParallel(
                _LossModule(model),
                device_ids=[self.device.index] if self.device.type == "cuda" else None,
                # a phase (a GAN's critic step) may leave other phases' parameters unused
                find_unused_parameters=len(self.phases) > 1,
            )
            self._losses = lambda batch, phase, gen: ddp(batch, phase, gen)
        else:
            self._losses = lambda batch, phase, gen: model.losses(batch, phase=phase, generator=gen)

        self.ema = EMA(model, config.ema, config.batch_size) if config.ema.kind != "off" else None
        self._move_batch = any(t.device != self.device for t in self.data)
        self.sampler = EpochSampler(
            len(self.data[0]), config.batch_size, derive_seed(config.seed, "data"), self.data[0].device
        )
        self.noise_generator = torch.Generator(self.device).manual_seed(
            derive_seed(config.seed, "noise", self.rank)
        )
        self.step = 0
        self._terms: dict[str, tuple[list[str], list[int]]] = {}  # phase -> (names, optimized indices)
        self._stash: dict[str, list] = {p.name: [] for p in self.phases}
        self._stash_steps: dict[str, list[int]] = {p.name: [] for p in self.phases}
        self._sums: dict[str, float] = {}
        self._counts: dict[str, int] = {}
        self._lr = {p.name: None for p in self.phases}
        self.last_checkpoint: Optional[Path] = None

    @property
    def ema_model(self) -> nn.Module:
        """The EMA model if there is one, else the model."""
        return self.ema.module if self.ema is not None else self.model

    # ------------------------------------------------------------------ the loop

    def fit(self, resume: bool = False) -> dict[str, float]:
        """Train to ``config.steps``; with ``resume`` continue from the latest complete checkpoint.

        Returns the last logged row. Raises :class:`TrainingDivergedError` on a non-finite loss
        and ValueError if ``out_dir`` already holds checkpoints but ``resume`` is False.
        """
        cfg, main = self.config, gdist.is_main()
        if main:
            remove_stale(self.out_dir)
        latest = latest_checkpoint(self.out_dir)
        if latest is not None:
            if not resume:
                raise ValueError(
                    f"{self.out_dir} already holds the checkpoint {latest.name}; pass resume=True "
                    "to continue it, or choose another out_dir"
                )
            self._restore(latest)
            self.last_checkpoint = latest
        if main:
            self.out_dir.mkdir(parents=True, exist_ok=True)
            (self.out_dir / "config.json").write_text(json.dumps(self.config_dict, indent=2))
        logger = Logger(self.out_dir, start_step=self.step, enabled=main, tensorboard=self.tensorboard)
        pbar = _progress_bar(self.step, cfg.steps, enabled=self.progress and main)
        self.model.train()
        last_row: dict[str, float] = {}
        t_last, step_last = time.perf_counter(), self.step
        # A time budget ends the run like reaching `steps` (on every rank: rank 0 decides).
        deadline = None if cfg.max_seconds is None else time.perf_counter() + cfg.max_seconds
        try:
            while self.step < cfg.steps:
                k = self.step + 1
                for phase in self.phases:
                    self._set_lr(phase, k)
                    for _ in range(phase.repeat):
                        self._phase_step(phase, k)
                if self.ema is not None:
                    self.ema.update()
                self.step = k
                pbar.update(1)

                final = k == cfg.steps or (deadline is not None and gdist.broadcast_flag(time.perf_counter() >= deadline))
                do_log = k % cfg.log_every == 0 or final
                do_eval = self.evaluate is not None and (final or _every(k, cfg.eval_every))
                do_figs = self.make_figures is not None and (final or _every(k, cfg.sample_every))
                do_ckpt = final or _every(k, cfg.ckpt_every)
                if not (do_log or do_eval or do_figs or do_ckpt):
                    continue
                self._flush()  # one sync; raises TrainingDivergedError before anything is saved
                row: dict[str, float] = {}
                if do_log:
                    now = time.perf_counter()
                    row.update(self._interval_means())
                    row.update({f"lr/{p.name}": self._lr[p.name] for p in self.phases})
                    row["steps_per_s"] = (k - step_last) / max(now - t_last, 1e-9)
                    t_last, step_last = now, k
                    pbar.set_postfix(_postfix(row, self.phases, self._terms), refresh=False)
                if do_eval and main:
                    row.update(self._call_eval(k))
                if row:
                    logger.log(k, row)
                    last_row = row
                if do_figs and main:
                    self._call_figures(k)
                if do_ckpt:
                    self._save(k)
                if final:
                    break
        finally:
            pbar.close()
            logger.close()
        gdist.barrier()
        return last_row

    def _set_lr(self, phase: Phase, k: int) -> None:
        lr = warmup_lr(phase.lr or self.config.lr, k, self.config.warmup_steps)
        if lr != self._lr[phase.name]:
            for group in self.optimizers[phase.name].param_groups:
                group["lr"] = lr
            self._lr[phase.name] = lr

    def _phase_step(self, phase: Phase, k: int) -> None:
        name = phase.name
        idx = self.sampler.next()
        if self.world_size > 1:
            idx = idx[self.rank * self.local_batch : (self.rank + 1) * self.local_batch]
        batch = tuple([t[idx] for t in self.data])
        if self._move_batch:
            batch = tuple([t.to(self.device, non_blocking=True) for t in batch])
        with self._autocast:
            terms = self._losses(batch, name, self.noise_generator)
        if name not in self._terms:
            self._terms[name] = _check_terms(terms, name, self.local_batch)
        names, optimized = self._terms[name]
        if len(terms) != len(names):
            raise ValueError(f"phase {name!r}: losses() returned {sorted(terms)}, earlier {names}")
        means = [_mean(terms[n]) for n in names]
        objective = means[optimized[0]]
        for i in optimized[1:]:
            objective = objective + means[i]

        opt, scaler = self.optimizers[name], self.scalers.get(name)
        (scaler.scale(objective) if scaler is not None else objective).backward()
        if self.config.grad_clip is not None:
            if scaler is not None:
                scaler.unscale_(opt)
            means.append(torch.nn.utils.clip_grad_norm_(self._phase_params[name], self.config.grad_clip))
        if scaler is not None:
            scaler.step(opt)
            scaler.update()
        else:
            opt.step()
        for p in self._all_params:  # all, not only this phase's: other phases' grads are stale
            p.grad = None
        self._stash[name].extend([m.detach() for m in means])  # read back at the next _flush
        self._stash_steps[name].append(k)

    # ------------------------------------------------------------------ logging, divergence

    def _flush(self) -> None:
        """Read the stashed loss terms back (one sync per phase) and check them for NaN/Inf."""
        for phase in self.phases:
            entries = self._stash[phase.name]
            if not entries:
                continue
            steps = self._stash_steps[phase.name]
            self._stash[phase.name], self._stash_steps[phase.name] = [], []
            names, optimized = self._terms[phase.name]
            columns = names + (["grad_norm"] if self.config.grad_clip is not None else [])
            stacked = torch.stack(entries).view(len(steps), len(columns))
            values = gdist.all_reduce_mean(stacked).tolist()  # (calls, columns)
            for k, row in zip(steps, values):
                for i in optimized:
                    if not math.isfinite(row[i]):
                        raise TrainingDivergedError(
                            f"training diverged at step {k}: loss term {phase.name}/{names[i]} = "
                            f"{row[i]}. Training stopped before saving anything after it; the last "
                            f"good checkpoint is {self.last_checkpoint or 'none (no checkpoint yet)'}."
                        )
                for col, v in zip(columns, row):
                    key = f"{phase.name}/{col}"
                    self._sums[key] = self._sums.get(key, 0.0) + v
                    self._counts[key] = self._counts.get(key, 0) + 1

    def _interval_means(self) -> dict[str, float]:
        means = {k: self._sums[k] / self._counts[k] for k in self._sums}
        self._sums, self._counts = {}, {}
        return means

    def _call_eval(self, k: int) -> dict[str, float]:
        with _eval_mode(self.model):
            metrics = self.evaluate(self.ema_model, k)
        return {f"eval/{name}": float(v) for name, v in dict(metrics or {}).items()}

    def _call_figures(self, k: int) -> None:
        with _eval_mode(self.model):
            self.make_figures(self.ema_model, k, self.out_dir)

    # ------------------------------------------------------------------ checkpoints

    def _save(self, k: int) -> None:
        noise_states = gdist.all_gather(self.noise_generator.get_state())  # every rank takes part
        if not gdist.is_main():
            return
        state = {
            "step": k,
            "world_size": self.world_size,
            "train_config": asdict(self.config),
            "phases": [p.name for p in self.phases],
            "data": self.sampler.state_dict(),
            "noise_rng": noise_states,
            "ema_updates": self.ema.updates if self.ema is not None else 0,
            "scalers": {name: s.state_dict() for name, s in self.scalers.items()},
            "log_sums": {"sums": self._sums, "counts": self._counts},  # the open log interval
        }
        path = save_checkpoint(
            checkpoint_path(self.out_dir, k),
            self.model,
            self.ema.module if self.ema is not None else None,
            self.optimizers,
            state,
            self.config_dict,
        )
        self.last_checkpoint = path
        if self.config.keep_last is not None:
            prune_checkpoints(self.out_dir, self.config.keep_last)

    def _restore(self, path: Path) -> None:
        ckpt = load_checkpoint(path, map_location="cpu")
        ts = ckpt.trainer_state
        if ts is None:
            raise ValueError(f"{path} holds no trainer_state.safetensors; it cannot be resumed")
        names = [p.name for p in self.phases]
        if ts["phases"] != names or sorted(ts["optimizers"]) != sorted(names):
            raise ValueError(f"{path} was trained with phases {ts['phases']}, this model has {names}")
        if ts["world_size"] != self.world_size:
            raise ValueError(
                f"{path} was written by {ts['world_size']} processes, this run has {self.world_size}: "
                "an exact resume needs the same world size"
            )
        load_weights(self.model, ckpt.model_state, what="model")
        if self.ema is not None:
            if ckpt.ema_state is None:
                raise ValueError(f"{path} holds no ema.safetensors, but this run uses an EMA")
            load_weights(self.ema.module, ckpt.ema_state, what="EMA")
            self.ema.updates = int(ts["ema_updates"])
        for name, opt in self.optimizers.items():
            opt.load_state_dict(ts["optimizers"][name])
        for name, scaler in self.scalers.items():
            if name in ts["scalers"]:
                scaler.load_state_dict(ts["scalers"][name])
        self.sampler.load_state_dict(ts["data"])
        self.noise_generator.set_state(ts["noise_rng"][self.rank].cpu())
        self._sums, self._counts = dict(ts["log_sums"]["sums"]), dict(ts["log_sums"]["counts"])
        self.step = int(ts["step"])


# ---------------------------------------------------------------------- helpers


def _check_data(data) -> tuple[torch.Tensor, ...]:
    if isinstance(data, torch.Tensor):
        data = (data,)
    data = tuple(data)
    if not data or not all(isinstance(t, torch.Tensor) for t in data):
        raise ValueError("data must be a tensor or a non-empty tuple of tensors")
    sizes = [len(t) if t.dim() else None for t in data]
    if None in sizes or len(set(sizes)) != 1 or sizes[0] == 0:
        raise ValueError(f"data tensors must share a non-zero first dimension, got lengths {sizes}")
    return data


def _check_terms(terms, phase: str, batch: int) -> tuple[list[str], list[int]]:
    if not isinstance(terms, Mapping) or not terms:
        raise ValueError(f"losses(phase={phase!r}) must return a non-empty dict of (B,) tensors, got {type(terms)}")
    names = list(terms)
    for n in names:
        v = terms[n]
        if not isinstance(n, str) or not isinstance(v, torch.Tensor) or v.shape != (batch,):
            shape = tuple(v.shape) if isinstance(v, torch.Tensor) else type(v).__name__
            raise ValueError(
                f"losses(phase={phase!r}) term {n!r} must be an unreduced ({batch},) tensor "
                f"(one value per example), got {shape}"
            )
    optimized = [i for i, n in enumerate(names) if not n.startswith("_")]
    if not optimized:
        raise ValueError(f"losses(phase={phase!r}) returned only '_' (logged, not optimized) terms: {names}")
    return names, optimized


_LOW_PRECISION = (torch.float16, torch.bfloat16)


def _mean(v: torch.Tensor) -> torch.Tensor:
    """Mean of a loss term, accumulated in float32 when the term is fp16/bf16 (autocast)."""
    return v.mean(dtype=torch.float32) if v.dtype in _LOW_PRECISION else v.mean()


def _every(k: int, every: Optional[int]) -> bool:
    return every is not None and k % every == 0


@contextlib.contextmanager
def _eval_mode(model: nn.Module):
    was_training = model.training
    model.eval()
    try:
        yield
    finally:
        model.train(was_training)


def _postfix(row: Mapping[str, float], phases: Sequence[Phase], terms) -> dict[str, str]:
    out = {}
    for p in phases:
        names, optimized = terms[p.name]
        out[p.name] = f"{sum(row[f'{p.name}/{names[i]}'] for i in optimized):.4g}"
    return out


class _NoBar:
    def update(self, n: int = 1) -> None:
        pass

    def set_postfix(self, *args, **kwargs) -> None:
        pass

    def close(self) -> None:
        pass


def _progress_bar(start: int, total: int, *, enabled: bool):
    if not enabled or not sys.stderr.isatty():
        return _NoBar()
    from tqdm.auto import tqdm

    return tqdm(total=total, initial=start, unit="step", dynamic_ncols=True)
