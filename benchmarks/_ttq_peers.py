"""Peer contestants of ``bench_time_to_quality.py``: torchcfm and flow_matching, each with its own
loss and its own sampling route, around the same network as genspace.

Both peers are optional (the ``bench`` extra, installed ``--no-deps``); :func:`load_peers` returns
only the ones that import, with the reason for any that does not.

Time conventions. Both peers run t = 0 noise → t = 1 data (torchcfm: x_t = t·x1 + (1 − t)·x0 with
x0 ~ N(0, I) the source and x1 the data, target u = x1 − x0; flow_matching's ``AffineProbPath``
with ``CondOTScheduler``: α_t = t, σ_t = 1 − t, x_t = σ_t·x_0 + α_t·x_1, target dx_t = x_1 − x_0).
genspace's flow process runs the other way (t = 0 data, t = 1 noise). The network
(``genspace.nets.TimeMLP``) is architecture only: each library feeds it its own t, so nothing is
converted.

Training loop. A hand-written loop (what a user of either library writes): AdamW, a batch of data
rows, the library's loss, ``backward``, ``step``. The rows come from the same
:class:`genspace.train.EpochSampler` (same seed) as genspace's Trainer, so every contestant sees
the same batches in the same order. t and the source noise are drawn from the loop's own seeded
generator and passed to the library (both accept t; torchcfm's extra noise ε is multiplied by
σ = 0 and does not change the result).

Sampling. torchcfm ships no sampler (its examples integrate with torchdyn or torchdiffeq):
``torchdiffeq.odeint`` with the fixed-grid midpoint method on a uniform t grid of n steps
(2n calls). flow_matching: its ``ODESolver.sample(method="midpoint", step_size=1/n)``, which also
runs torchdiffeq. Network calls are counted.
"""

from __future__ import annotations

import importlib.metadata
import math
from dataclasses import dataclass
from typing import Callable, Optional

import torch
from torch import nn

__all__ = ["PeerSpec", "load_peers", "version", "train_loop", "CountingNet"]


def version(dist: str) -> Optional[str]:
    """Installed version of a distribution, or None."""
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None


class CountingNet(nn.Module):
    """Wraps a velocity network ``net(x, t)``; counts forward calls; a scalar t is broadcast to (B,)."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net
        self.calls = 0

    def forward(self, x: torch.Tensor, t) -> torch.Tensor:
        self.calls += 1
        t = torch.as_tensor(t, dtype=x.dtype, device=x.device)
        if t.ndim == 0:
            t = t.expand(x.shape[0])
        return self.net(x, t)


@dataclass(frozen=True)
class PeerSpec:
    """A peer library: its loss on a data batch and its sampler from standard-normal noise."""

    name: str  # row label
    library: str  # distribution name (for the version)
    loss: Callable[[nn.Module, torch.Tensor, torch.Generator], torch.Tensor]  # (net, x1 (B, D), gen) -> scalar
    sample: Callable[[nn.Module, torch.Tensor, int], tuple[torch.Tensor, int]]  # (net, noise, nfe) -> (x, calls)
    sampler_label: str  # e.g. "torchdiffeq midpoint, 10 steps"


# ---------------------------------------------------------------------------------- torchcfm
def _torchcfm_spec() -> PeerSpec:
    from torchcfm.conditional_flow_matching import ConditionalFlowMatcher
    from torchdiffeq import odeint

    matcher = ConditionalFlowMatcher(sigma=0.0)

    def loss(net: nn.Module, x1: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
        x0 = torch.randn(x1.shape, generator=gen, dtype=x1.dtype)  # source (noise) at t = 0
        t = torch.rand(x1.shape[0], generator=gen, dtype=x1.dtype)
        t, xt, ut = matcher.sample_location_and_conditional_flow(x0, x1, t=t)
        vt = net(xt, t)
        return torch.mean((vt - ut) ** 2)  # torchcfm's README / examples

    @torch.no_grad()
    def sample(net: nn.Module, noise: torch.Tensor, nfe: int) -> tuple[torch.Tensor, int]:
        steps = max(nfe // 2, 1)
        counting = CountingNet(net)
        grid = torch.linspace(0.0, 1.0, steps + 1, dtype=noise.dtype)
        traj = odeint(lambda t, x: counting(x, t), noise, grid, method="midpoint")
        return traj[-1], counting.calls

    return PeerSpec("torchcfm CFM (σ=0)", "torchcfm", loss, sample, "torchdiffeq midpoint")


# ---------------------------------------------------------------------------------- flow_matching
def _flow_matching_spec() -> PeerSpec:
    from flow_matching.path import AffineProbPath
    from flow_matching.path.scheduler import CondOTScheduler
    from flow_matching.solver import ODESolver
    from flow_matching.utils import ModelWrapper

    path = AffineProbPath(scheduler=CondOTScheduler())

    class _Velocity(ModelWrapper):
        def forward(self, x: torch.Tensor, t: torch.Tensor, **extras) -> torch.Tensor:
            return self.model(x, t)

    def loss(net: nn.Module, x1: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
        x0 = torch.randn(x1.shape, generator=gen, dtype=x1.dtype)
        t = torch.rand(x1.shape[0], generator=gen, dtype=x1.dtype)
        sample = path.sample(t=t, x_0=x0, x_1=x1)
        return torch.pow(net(sample.x_t, sample.t) - sample.dx_t, 2).mean()  # flow_matching's 2-D example

    @torch.no_grad()
    def sample(net: nn.Module, noise: torch.Tensor, nfe: int) -> tuple[torch.Tensor, int]:
        steps = max(nfe // 2, 1)
        counting = CountingNet(net)
        solver = ODESolver(velocity_model=_Velocity(counting))
        grid = torch.tensor([0.0, 1.0], dtype=noise.dtype)
        x = solver.sample(x_init=noise, step_size=1.0 / steps, method="midpoint", time_grid=grid)
        return x, counting.calls

    return PeerSpec("flow_matching CondOT", "flow_matching", loss, sample, "ODESolver midpoint")


_PEERS = {"torchcfm": _torchcfm_spec, "flow_matching": _flow_matching_spec}


def load_peers(names=("torchcfm", "flow_matching")) -> tuple[dict[str, PeerSpec], dict[str, str]]:
    """({name: PeerSpec} of the peers that import, {name: reason} of those that do not)."""
    loaded, missing = {}, {}
    for name in names:
        if name not in _PEERS:
            raise ValueError(f"unknown peer {name!r}; choose from {list(_PEERS)}")
        try:
            loaded[name] = _PEERS[name]()
        except ImportError as exc:
            missing[name] = f"not importable: {exc} (bash scripts/install-bench.sh)"
    return loaded, missing


# ---------------------------------------------------------------------------------- the loop
def train_loop(
    net: nn.Module,
    loss_fn: Callable[[nn.Module, torch.Tensor, torch.Generator], torch.Tensor],
    data: torch.Tensor,
    *,
    steps: int,
    batch_size: int,
    lr: float,
    data_seed: int,
    noise_seed: int,
    eval_every: int,
    evaluate: Callable[[nn.Module, int], None],
    clock,
) -> None:
    """The hand-written peer loop: AdamW (weight decay 0, as genspace's TrainConfig), one library
    loss per step. ``evaluate(net, step)`` runs every ``eval_every`` steps and at the end, with
    ``clock`` paused around it (``clock.pause()`` / ``clock.resume()``)."""
    from genspace.train import EpochSampler

    opt = torch.optim.AdamW(net.parameters(), lr=lr, betas=(0.9, 0.999), weight_decay=0.0)
    sampler = EpochSampler(len(data), batch_size, data_seed)
    gen = torch.Generator().manual_seed(noise_seed)
    net.train()
    clock.resume()
    for k in range(1, steps + 1):
        x1 = data[sampler.next()]
        loss = loss_fn(net, x1, gen)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        if k % eval_every == 0 or k == steps:
            value = float(loss.detach())  # the one sync a user's loop does when it logs
            clock.pause()
            if not math.isfinite(value):
                raise FloatingPointError(f"peer loss is {value} at step {k}")
            net.eval()
            evaluate(net, k)
            net.train()
            clock.resume()
    clock.pause()
