"""Training-loop overhead: genspace's Trainer against a minimal hand-written PyTorch loop.

Both train the same flow-matching model (a 4×256 SiLU MLP on 2-D data: 8 Gaussians on a ring)
with AdamW, the same EDM half-life EMA and the same data order (one random permutation per
epoch) and batch size. The Trainer runs with its EMA, CSV + TensorBoard logging and its final
checkpoint; the hand-written loop logs nothing. The runs are interleaved (A B, B A, ...) so that
drifts in machine load hit both, and the table reports median steps/s and the median of the
per-repeat ratios (target: Trainer / hand-written ≥ 0.95), both by wall-clock time and by the
process's CPU time (steadier on a shared machine; it includes TensorBoard's writer thread).

    OMP_NUM_THREADS=1 python benchmarks/bench_trainer.py [--steps 600] [--repeats 5] [--batch 256]
"""

from __future__ import annotations

import argparse
import copy
import math
import statistics
import tempfile
import time

import torch
from torch import nn

from genspace.core.random import rand, randn_like
from genspace.train import EMAConfig, TrainConfig, Trainer, halflife_beta


class FlowMLP(nn.Module):
    """Rectified-flow velocity model: x_t = (1−t)·x0 + t·ε, target ε − x0."""

    def __init__(self, width: int = 256, depth: int = 4, seed: int = 0) -> None:
        super().__init__()
        layers, d = [], 3
        for _ in range(depth):
            layers += [nn.Linear(d, width), nn.SiLU()]
            d = width
        self.net = nn.Sequential(*layers, nn.Linear(d, 2))
        g = torch.Generator().manual_seed(seed)
        with torch.no_grad():
            for p in self.parameters():
                p.copy_(torch.randn(p.shape, generator=g) / math.sqrt(p.shape[-1]))

    def losses(self, batch, *, phase="main", generator=None):
        x0 = batch[0]
        t = rand((x0.shape[0], 1), generator=generator, dtype=x0.dtype)
        eps = randn_like(x0, generator)
        v = self.net(torch.cat([(1 - t) * x0 + t * eps, t], dim=1))
        return {"loss": ((v - (eps - x0)) ** 2).mean(dim=1)}


def ring_data(n: int = 8192, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    k = torch.randint(0, 8, (n,), generator=g)
    angle = 2 * math.pi * k / 8
    centers = torch.stack([torch.cos(angle), torch.sin(angle)], dim=1) * 2.0
    return centers + 0.1 * torch.randn(n, 2, generator=g)


def run_trainer(data, steps: int, batch: int, ema: EMAConfig) -> float:
    model = FlowMLP()
    with tempfile.TemporaryDirectory() as out:
        config = TrainConfig(steps=steps, batch_size=batch, lr=1e-3, ema=ema, log_every=100, ckpt_every=None)
        trainer = Trainer(model, (data,), config, out, progress=False, tensorboard=True)
        t0, c0 = time.perf_counter(), time.process_time()
        trainer.fit()
        return time.perf_counter() - t0, time.process_time() - c0


def run_plain(data, steps: int, batch: int, ema: EMAConfig) -> float:
    model = FlowMLP()
    t0, c0 = time.perf_counter(), time.process_time()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, betas=(0.9, 0.999), weight_decay=0.0)
    ema_model = copy.deepcopy(model).requires_grad_(False)
    pairs = list(zip(ema_model.parameters(), model.parameters()))
    data_gen, noise_gen = torch.Generator().manual_seed(1), torch.Generator().manual_seed(2)
    perm, cursor = torch.randperm(len(data), generator=data_gen), 0
    for step in range(steps):
        if cursor + batch > len(data):
            perm, cursor = torch.randperm(len(data), generator=data_gen), 0
        x = data[perm[cursor : cursor + batch]]
        cursor += batch
        loss = model.losses((x,), generator=noise_gen)["loss"].mean()
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        weight = 1.0 - halflife_beta(step, batch, ema.halflife_kimg, ema.rampup)
        with torch.no_grad():
            for e, p in pairs:
                e.lerp_(p, weight)
    return time.perf_counter() - t0, time.process_time() - c0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=600)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--batch", type=int, default=256)
    args = parser.parse_args()
    data, ema = ring_data(), EMAConfig(kind="halflife", halflife_kimg=10.0, rampup=0.05)

    run_trainer(data, 20, args.batch, ema)  # warm-up: imports (tensorboard, dynamo), allocator
    run_plain(data, 20, args.batch, ema)
    times = {"trainer": [], "plain": []}
    runners = {"trainer": run_trainer, "plain": run_plain}
    for r in range(args.repeats):
        for name in ("trainer", "plain") if r % 2 == 0 else ("plain", "trainer"):
            times[name].append(runners[name](data, args.steps, args.batch, ema))

    print(f"\nTraining-loop overhead: 4×256 MLP flow matching on 2-D data, batch {args.batch}, "
          f"{args.steps} steps × {args.repeats} interleaved repeats, torch {torch.__version__}, "
          f"{torch.get_num_threads()} thread(s)\n")
    print("| clock | hand-written steps/s | Trainer steps/s | ratio (median of repeats) | per-repeat ratios |")
    print("|---|---:|---:|---:|---|")
    for clock, label in ((0, "wall"), (1, "CPU")):
        rate = {k: statistics.median(args.steps / t[clock] for t in v) for k, v in times.items()}
        ratios = [p[clock] / t[clock] for p, t in zip(times["plain"], times["trainer"])]
        print(f"| {label} | {rate['plain']:.1f} | {rate['trainer']:.1f} | {statistics.median(ratios):.3f} | "
              f"{', '.join(f'{x:.3f}' for x in ratios)} |")
    print("\ntarget: ratio ≥ 0.95 (Trainer with EMA, CSV + TensorBoard logging and its final checkpoint)")


if __name__ == "__main__":
    main()
