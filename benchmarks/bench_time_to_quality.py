"""Time to quality on the 2-D toys: genspace against torchcfm and flow_matching (same network).

Usage:
    OMP_NUM_THREADS=1 python benchmarks/bench_time_to_quality.py               # full run
    OMP_NUM_THREADS=1 python benchmarks/bench_time_to_quality.py --quick       # smoke run
    options: --toys 8gaussians,moons,checkerboard  --max-steps 3000  --eval-every 250
             --threads 1  --n 2000  --seeds 0,1,2  --out benchmarks/results  --no-raw
             --render benchmarks/results/time_to_quality.json   (print the tables of a saved run)

Question. How many CPU seconds of training does each library need before its samples are as
close to the data as a second set of real data, up to a factor 2?

Contestants. All train ``genspace.nets.TimeMLP(2, hidden=128, depth=3)`` from the same initial
weights (the output layer is zero-initialised, so every model starts at "velocity 0" / "D = c_skip
x"), with AdamW (lr 2e-3, betas (0.9, 0.999), weight decay 0), batch 512, float32, the same rows
of the same 20 000-point training set in the same order (genspace's EpochSampler, one permutation
per epoch), the same number of torch threads.

- genspace rectified flow: ``DiffusionModel(net, "flow", "velocity", "flow")`` (uniform t, velocity
  MSE) trained by genspace's ``Trainer`` with its default EMA (EDM half-life form, 10 kimg, ramp-up
  0.05); sampled by ``model.sample`` with DPM-Solver++(2M) at 20 NFE on the time-uniform grid of
  the flow process (``--flow-method``, ``--flow-nfe``, ``--flow-grid``), over the model's default
  σ range ([0.002, 80] for flow, i.e. t ∈ [0.002, 0.988]). On these models that route scores like
  the peers' midpoint-in-t sampler applied to the same network; Heun on the time-uniform grid
  scores a little worse and Heun on the Karras grid (``model.sample``'s default grid) 2–5× worse.
  Over the flow process's whole σ range [0.002, 9999] (the default range of earlier genspace
  versions), σ-space steps span orders of magnitude (time-uniform: 9999 → 8 first), where the
  trapezoidal rule of Heun is far off (error ~ Δσ·|Δd|/2, d = (x − D)/σ): ED/floor in the hundreds
  to thousands. The "sampler check" line under each table shows these routes on the final model.
- genspace EDM: ``DiffusionModel(net, "edm", "edm", "edm", sigma_data=1.0)`` (EDM preconditioning,
  log-normal σ, λ(σ) weighting; σ_data = 1 because the toys are scaled to unit variance),
  Trainer + EMA as above; sampled with DPM-Solver++(2M), Karras ρ = 7 grid σ ∈ [0.002, 80], 20 NFE
  (``--edm-method heun --edm-nfe 35`` is EDM's own 18-step recipe).
- torchcfm ``ConditionalFlowMatcher(sigma=0)``: its loss in a hand-written loop (no EMA); sampled
  with torchdiffeq's fixed-grid midpoint method, 10 steps = 20 NFE.
- flow_matching ``AffineProbPath(CondOTScheduler())``: its loss (velocity MSE) in a hand-written
  loop (no EMA); sampled with its ``ODESolver`` (midpoint, step 0.1 = 20 NFE).

genspace rows show the EMA weights (what ``genspace sample`` and users draw from). The rows
"(raw weights)" evaluate the live weights of the same run, the like-for-like comparison with the
peers' EMA-free loops; their clock is the same run's (it includes the EMA update).

Metric. The energy distance as a V-statistic (all pairs, i = j included):
``V = 2·mean|X−Y| − mean|X−X'| − mean|Y−Y'|`` = genspace's unbiased U-statistic
(:func:`genspace.metrics.energy_distance`) + mean_{i≠j}|X−X'|/n + mean_{i≠j}|Y−Y'|/m. Why not
the U-statistic: against a *fixed* reference set its expectation for perfect samples is
ED(P, P̂_ref) − mean|Y−Y'|/m, which is ≈ 0 and often negative, so "2× the floor" would mean
nothing. For the V-statistic, E[V | ref] = ED(P, P̂_ref) + E|X−X'|/n > 0 (the first term is an
energy distance between two laws, ≥ 0). The *floor* is the mean of V(held-out set, ref) over R
(``--floor-sets``, 10) independent real sets of n points, an estimate of E[V | ref]: a perfect
generator scores ED/floor ≈ 1 (spread: the floor's sd, in each table's heading). n = 2000 points per set; model
samples come from the same fixed noise at every evaluation and for every contestant.

Clock. Every ``--eval-every`` steps (and at the end) the clock stops, the model is sampled and
scored, and the clock restarts: "CPU s" is the process CPU time (``time.process_time``, all
threads) of training alone (steady on a shared machine); wall seconds of training are in the
JSON. "to 2× floor" is the first evaluation with ED ≤ 2·floor (resolution ``--eval-every``);
"to stay" the first one from which every later evaluation stays ≤ 2·floor; "final" is after
``--max-steps``. steps/s = steps per CPU second of training. With ``--seeds a,b,c`` (training
seed: initial weights, data order, loss noise; the data sets stay fixed by ``--data-seed``) each
cell is the median over seeds, "not reached" counting as +inf.

Reading the numbers. A perfect generator scores ED/floor = 1 ± the floor's relative sd (≈ 0.3–0.5
here), and with a constant learning rate the weights keep moving, so one seed's curve crosses 2×
and back; differences of one or two evaluation intervals are noise. torchcfm and flow_matching
compute the same loss from the same draws (x0, then t, from the same seed), so their curves are
identical and only their clocks differ: the gap between their CPU seconds is the timing noise.

Outputs: Markdown tables on stdout, ``time_to_quality.json`` in ``--out``.
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import os
import platform
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Optional

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _ttq_peers  # noqa: E402

from genspace.continuous.model import DiffusionModel  # noqa: E402
from genspace.core.random import randn  # noqa: E402
from genspace.data.toy2d import make_toy, toy_names  # noqa: E402
from genspace.metrics import energy_distance  # noqa: E402
from genspace.nets import TimeMLP  # noqa: E402
from genspace.train import EMAConfig, TrainConfig, Trainer  # noqa: E402
from genspace.train.trainer import derive_seed  # noqa: E402

DEFAULT_TOYS = ("8gaussians", "moons", "checkerboard")
QUALITY_FACTOR = 2.0  # "within 2× the floor"
SAMPLING_SEED = 0  # the fixed noise every evaluation starts from


# ---------------------------------------------------------------------------------- clock
class Clock:
    """Accumulates process CPU time and wall time between resume() and pause()."""

    def __init__(self) -> None:
        self.cpu = 0.0
        self.wall = 0.0
        self._mark: Optional[tuple[float, float]] = None

    def resume(self) -> None:
        if self._mark is None:
            self._mark = (time.process_time(), time.perf_counter())

    def pause(self) -> None:
        if self._mark is not None:
            c, w = self._mark
            self.cpu += time.process_time() - c
            self.wall += time.perf_counter() - w
            self._mark = None


# ---------------------------------------------------------------------------------- metric
def _mean_pairwise(x: torch.Tensor) -> float:
    """mean_{i<j} |x_i − x_j| (= mean over i ≠ j), float64."""
    return float(torch.pdist(x.to(torch.float64)).mean())


def energy_distance_v(x: torch.Tensor, y: torch.Tensor, y_within: Optional[float] = None) -> float:
    """V-statistic energy distance 2·mean|X−Y| − mean|X−X'| − mean|Y−Y'| (all pairs, i = j included).

    Computed from genspace's unbiased U-statistic U (Székely & Rizzo 2013, Eq. 2):
    V = U + mean_{i≠j}|X−X'|/n + mean_{i≠j}|Y−Y'|/m. ``y_within`` (mean_{i≠j}|Y−Y'|) may be
    passed to avoid recomputing it for a fixed reference.
    """
    n, m = x.shape[0], y.shape[0]
    u = energy_distance(x, y)
    yw = _mean_pairwise(y) if y_within is None else y_within
    return u + _mean_pairwise(x) / n + yw / m


# ---------------------------------------------------------------------------------- problems
@dataclass
class Problem:
    name: str
    data: torch.Tensor  # (n_train, 2) training set
    reference: torch.Tensor  # (n, 2) held-out reference
    ref_within: float  # mean_{i≠j}|Y−Y'| of the reference
    floor_values: list[float]  # V(held-out set r, reference), r = 1..R
    noise: torch.Tensor  # (n, 2) fixed standard-normal sampling noise

    @property
    def floor(self) -> float:
        return statistics.mean(self.floor_values)

    @property
    def floor_sd(self) -> float:
        return statistics.stdev(self.floor_values) if len(self.floor_values) > 1 else float("nan")

    def score(self, samples: torch.Tensor) -> float:
        return energy_distance_v(samples, self.reference, self.ref_within)


def make_problem(name: str, *, n_train: int, n: int, floor_sets: int, seed: int) -> Problem:
    """Training set, reference, R floor sets and the sampling noise, from independent seeded streams."""
    gen = lambda *keys: torch.Generator().manual_seed(derive_seed(seed, "ttq", name, *keys))  # noqa: E731
    data = make_toy(name, n_train, generator=gen("train"))
    reference = make_toy(name, n, generator=gen("reference"))
    ref_within = _mean_pairwise(reference)
    floor_values = [
        energy_distance_v(make_toy(name, n, generator=gen("floor", r)), reference, ref_within)
        for r in range(floor_sets)
    ]
    # DiffusionModel.sample(n, generator=Generator().manual_seed(SAMPLING_SEED)) draws exactly this
    # (its first draw, standard normal (n, 2) float32): the peers get the same noise tensor
    noise = randn((n, 2), generator=torch.Generator().manual_seed(SAMPLING_SEED))
    return Problem(name, data, reference, ref_within, floor_values, noise)


# ---------------------------------------------------------------------------------- results
@dataclass
class Row:
    name: str  # contestant label
    library: str
    sampler: str  # sampler label with NFE
    ema: bool
    curve: list[dict] = field(default_factory=list)  # {step, cpu_s, wall_s, ed, ratio}
    sampler_check: Optional[list[dict]] = None  # final model under other samplers (genspace flow)

    def add(self, step: int, clock: Clock, ed: float, floor: float) -> None:
        self.curve.append(
            {"step": step, "cpu_s": clock.cpu, "wall_s": clock.wall, "ed": ed, "ratio": ed / floor}
        )

    def summary(self) -> dict:
        return summarize(self.curve)


def summarize(curve: list[dict], factor: float = QUALITY_FACTOR) -> dict:
    """Time to quality from an evaluation curve [{step, cpu_s, wall_s, ed, ratio}, ...].

    "to quality": the first evaluation with ratio ≤ factor; "to stay": the first evaluation from
    which every later one has ratio ≤ factor (None if the last one is above).
    """
    hit = next((p for p in curve if p["ratio"] <= factor), None)
    stay = None
    for p in reversed(curve):
        if p["ratio"] > factor:
            break
        stay = p
    last = curve[-1] if curve else None
    return {
        "cpu_s_to_quality": hit["cpu_s"] if hit else None,
        "wall_s_to_quality": hit["wall_s"] if hit else None,
        "steps_to_quality": hit["step"] if hit else None,
        "cpu_s_to_stay": stay["cpu_s"] if stay else None,
        "steps_to_stay": stay["step"] if stay else None,
        "final_ratio": last["ratio"] if last else None,
        "best_ratio": min(p["ratio"] for p in curve) if curve else None,
        "steps": last["step"] if last else 0,
        "steps_per_cpu_s": last["step"] / last["cpu_s"] if last and last["cpu_s"] > 0 else None,
    }


# ---------------------------------------------------------------------------------- contestants
@dataclass(frozen=True)
class Setup:
    hidden: int = 128
    depth: int = 3
    lr: float = 2e-3
    batch_size: int = 512
    max_steps: int = 3000
    eval_every: int = 250
    seed: int = 0
    flow_method: str = "dpmpp-2m"
    flow_nfe: int = 20
    flow_grid: str = "time-uniform"
    edm_method: str = "dpmpp-2m"
    edm_nfe: int = 20
    raw: bool = True  # also evaluate genspace's live (non-EMA) weights


def make_net(setup: Setup) -> nn.Module:
    """The shared architecture, initialised from a fixed seed (same weights for every contestant)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(setup.seed)
        return TimeMLP(2, hidden=setup.hidden, depth=setup.depth)


GENSPACE = {
    # label: (process, parameterization, loss, method attr, NFE attr, grid attr or None)
    "genspace rectified flow": ("flow", "velocity", "flow", "flow_method", "flow_nfe", "flow_grid"),
    "genspace EDM": ("edm", "edm", "edm", "edm_method", "edm_nfe", None),
}

# samplers tried once on the final EMA flow model (off the clock): (method, grid, σ range), the
# range "default" being DiffusionModel.sample's ([0.002, 80] for flow) and "process" the flow
# process's whole range [0.002, 9999] (t up to 0.9999)
FLOW_SAMPLER_CHECK = (
    ("heun", "karras", "default"),  # DiffusionModel.sample's default method and grid
    ("heun", "karras", "process"),
    ("heun", "time-uniform", "default"),
    ("heun", "time-uniform", "process"),
    ("euler", "time-uniform", "default"),
    ("dpmpp-2m", "time-uniform", "default"),
    ("dpmpp-2m", "time-uniform", "process"),
)


def run_genspace(
    label: str, problem: Problem, net: nn.Module, setup: Setup, steps: int, check_samplers: bool = False
) -> list[Row]:
    """Train with genspace's Trainer (EMA on); evaluate the EMA (and the live weights)."""
    process, param, loss, method_attr, nfe_attr, grid_attr = GENSPACE[label]
    method = getattr(setup, method_attr)
    nfe = getattr(setup, nfe_attr)
    grid = getattr(setup, grid_attr) if grid_attr else None
    model = DiffusionModel(net, process, param, loss, sigma_data=1.0)
    config = TrainConfig(
        steps=steps,
        batch_size=setup.batch_size,
        lr=setup.lr,
        weight_decay=0.0,
        ema=EMAConfig(),  # the default (EDM half-life 10 kimg, ramp-up 0.05)
        precision="fp32",
        seed=setup.seed,
        log_every=setup.eval_every,
        eval_every=setup.eval_every,
        ckpt_every=None,  # one checkpoint, after the last evaluation (not on the clock)
    )
    clock = Clock()
    grid_label = grid or "karras"
    rows = [Row(label, "genspace", f"{method} {grid_label}, ≤{nfe} NFE", ema=True)]
    if setup.raw:
        rows.append(Row(f"{label} (raw weights)", "genspace", rows[0].sampler, ema=False))
    holder: dict = {}

    def draw(m: DiffusionModel) -> tuple[torch.Tensor, str]:
        out, info = m.sample(
            problem.noise.shape[0], shape=(2,), generator=torch.Generator().manual_seed(SAMPLING_SEED),
            method=method, nfe=nfe, grid=grid, return_info=True,
        )
        return out, f"σ_max {float(info['sigmas'][0]):g}, {info['nfe']} NFE"

    def evaluate(ema_model: nn.Module, step: int) -> dict:
        clock.pause()
        models = [ema_model] + ([holder["trainer"].model] if setup.raw else [])
        out = {}
        for row, m in zip(rows, models):
            samples, used = draw(m)
            ed = problem.score(samples)
            row.add(step, clock, ed, problem.floor)
            row.sampler = f"{method} {grid_label}, {used}"
            out[f"ed_{'ema' if row.ema else 'raw'}"] = ed
        clock.resume()
        return out

    with tempfile.TemporaryDirectory() as out_dir:
        trainer = Trainer(model, (problem.data,), config, out_dir, evaluate=evaluate, progress=False, tensorboard=False)
        holder["trainer"] = trainer
        clock.resume()
        trainer.fit()
        clock.pause()
    if process == "flow" and check_samplers:
        rows[0].sampler_check = sampler_check(trainer.ema_model, problem, setup.flow_nfe)
    return rows


def sampler_check(model: DiffusionModel, problem: Problem, nfe: int) -> list[dict]:
    """ED/floor of the final model under each sampler of FLOW_SAMPLER_CHECK (same noise, ≤ nfe)."""
    out = []
    for method, grid, span in FLOW_SAMPLER_CHECK:
        sigma_max = model.process.sigma_max if span == "process" else None
        samples, info = model.sample(
            problem.noise.shape[0], shape=(2,), generator=torch.Generator().manual_seed(SAMPLING_SEED),
            method=method, nfe=nfe, grid=grid, sigma_max=sigma_max, return_info=True,
        )
        out.append({
            "method": method, "grid": grid, "sigma_max": float(info["sigmas"][0]),
            "nfe": info["nfe"], "ratio": problem.score(samples) / problem.floor,
        })
    return out


def run_peer(peer: _ttq_peers.PeerSpec, problem: Problem, net: nn.Module, setup: Setup, steps: int, nfe: int) -> Row:
    row = Row(peer.name, peer.library, f"{peer.sampler_label}", ema=False)
    clock = Clock()

    def evaluate(m: nn.Module, step: int) -> None:
        samples, used = peer.sample(m, problem.noise, nfe)
        row.add(step, clock, problem.score(samples), problem.floor)
        row.sampler = f"{peer.sampler_label}, {used} NFE"

    _ttq_peers.train_loop(
        net, peer.loss, problem.data,
        steps=steps, batch_size=setup.batch_size, lr=setup.lr,
        data_seed=derive_seed(setup.seed, "data"),  # the Trainer's data stream: the same batches
        noise_seed=derive_seed(setup.seed, "noise", 0),
        eval_every=setup.eval_every, evaluate=evaluate, clock=clock,
    )
    return row


# ---------------------------------------------------------------------------------- output
def _fmt(v, spec: str, none: str = "—") -> str:
    return none if v is None or (isinstance(v, float) and not math.isfinite(v)) else format(v, spec)


def _median(values: list) -> Optional[float]:
    """Median with None read as +inf ("not reached"); None if the median is not reached."""
    m = statistics.median([math.inf if v is None else v for v in values])
    return None if math.isinf(m) else m


def aggregate(runs: list[dict]) -> dict:
    """Median over seeds of every summary field (None = not reached counts as +inf)."""
    keys = [k for k in runs[0] if k not in ("seed", "curve", "sampler", "sampler_check")]
    return {k: _median([r[k] for r in runs]) for k in keys}


def table(toy: str, result: dict, max_steps: int) -> str:
    """Markdown table of one toy from its JSON record (``toys[toy]`` of the output).

    With several seeds every cell is the median over seeds ("not reached" counts as +inf) and the
    steps columns list the seeds' values in brackets.
    """
    f = f"{QUALITY_FACTOR:g}×"
    n_seeds = len(result["rows"][0]["runs"]) if result["rows"] else 0
    lines = [
        f"### {toy}  (floor {result['floor']:.3e} ± {result['floor_sd']:.1e} sd over "
        f"{len(result['floor_values'])} real sets; target ED ≤ {f} floor"
        + (f"; medians over {n_seeds} seeds" if n_seeds > 1 else "") + ")",
        "",
        f"| contestant | sampler | CPU s to {f} floor | steps to {f} floor | steps to stay ≤ {f} | "
        f"final ED/floor ({max_steps} steps) | best ED/floor | steps/s (CPU) |",
        "|---|---|---:|---:|---:|---:|---:|---:|",
    ]

    def steps(row: dict, key: str, none: str) -> str:
        med = _fmt(row["median"][key], ".0f", none)
        if n_seeds < 2:
            return med
        return f"{med} ({', '.join(_fmt(r[key], 'd', '—') for r in row['runs'])})"

    for r in result["rows"]:
        m = r["median"]
        lines.append(
            f"| {r['name']} | {r['sampler']} | {_fmt(m['cpu_s_to_quality'], '.1f', 'not reached')} | "
            f"{steps(r, 'steps_to_quality', 'not reached')} | {steps(r, 'steps_to_stay', 'no')} | "
            f"{_fmt(m['final_ratio'], '.2f')} | {_fmt(m['best_ratio'], '.2f')} | {_fmt(m['steps_per_cpu_s'], '.1f')} |"
        )
    for r in result["rows"]:
        checks = [run["sampler_check"] for run in r["runs"] if run.get("sampler_check")]
        if checks:
            lines += ["", f"Sampler check, {r['name']} after {max_steps} steps (same model, same noise, ED/floor"
                      + (f", median of {len(checks)} seeds" if len(checks) > 1 else "") + "):"]
            lines.append(" | ".join(
                f"{c['method']} {c['grid']} σ_max {c['sigma_max']:g} ({c['nfe']} NFE): "
                f"{statistics.median(check[i]['ratio'] for check in checks):.2f}"
                for i, c in enumerate(checks[0])
            ))
    return "\n".join(lines)


def render(path: str) -> None:
    """Print the tables of a saved ``time_to_quality.json``."""
    payload = json.loads(Path(path).read_text())
    print(
        f"OMP_NUM_THREADS={payload.get('OMP_NUM_THREADS')} python {payload['command']}  "
        f"(wall {payload['wall_s']:.0f} s, CPU {payload['cpu_s']:.0f} s, {payload['threads']} thread(s))"
    )
    for toy, result in payload["toys"].items():
        print()
        print(table(toy, result, payload["setup"]["max_steps"]))


# ---------------------------------------------------------------------------------- main
def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true", help="smoke run: 2 toys, 600 steps, eval every 150")
    p.add_argument("--toys", default=None, help=f"comma-separated, from {list(toy_names())} (default: {','.join(DEFAULT_TOYS)})")
    p.add_argument("--max-steps", type=int, default=None, help="training steps per contestant (default 3000; quick 600)")
    p.add_argument("--eval-every", type=int, default=None, help="steps between evaluations (default 250; quick 150)")
    p.add_argument("--threads", type=int, default=1, help="torch intra-op threads (default 1)")
    p.add_argument("--n", type=int, default=2000, help="points per reference / floor / sample set")
    p.add_argument("--n-train", type=int, default=20000, help="training-set size")
    p.add_argument("--floor-sets", type=int, default=10, help="real sets averaged into the floor")
    p.add_argument("--seeds", default="0", help="comma-separated training seeds (init, data order, loss noise); "
                   "tables show medians over seeds")
    p.add_argument("--data-seed", type=int, default=0, help="seed of the training, reference and floor sets")
    p.add_argument("--flow-method", default="dpmpp-2m", help="genspace flow sampler (see genspace.sampling.method_names())")
    p.add_argument("--flow-nfe", type=int, default=20)
    p.add_argument("--flow-grid", default="time-uniform", help="genspace flow sampling grid (karras, time-uniform, ...)")
    p.add_argument("--edm-method", default="dpmpp-2m", help="genspace EDM sampler (heun with --edm-nfe 35 is EDM's recipe)")
    p.add_argument("--edm-nfe", type=int, default=20)
    p.add_argument("--no-raw", action="store_true", help="do not evaluate genspace's live (non-EMA) weights")
    p.add_argument("--warmup-steps", type=int, default=30, help="untimed steps per contestant before the runs")
    p.add_argument("--out", default=str(Path(__file__).resolve().parent / "results"))
    p.add_argument("--render", metavar="JSON", default=None, help="only print the tables of a saved JSON")
    args = p.parse_args(argv)
    if args.render is not None:
        return args
    try:
        args.seeds = [int(x) for x in args.seeds.split(",") if x.strip()]
    except ValueError:
        p.error(f"--seeds must be comma-separated integers, got {args.seeds!r}")
    if not args.seeds or len(set(args.seeds)) != len(args.seeds):
        p.error(f"--seeds must list distinct integers, got {args.seeds}")
    if args.toys is None:
        args.toys = "8gaussians,moons" if args.quick else ",".join(DEFAULT_TOYS)
    args.toys = [t.strip() for t in args.toys.split(",") if t.strip()]
    bad = [t for t in args.toys if t not in toy_names()]
    if bad:
        p.error(f"unknown toy(s) {bad}; choose from {list(toy_names())}")
    if args.max_steps is None:
        args.max_steps = 600 if args.quick else 3000
    if args.eval_every is None:
        args.eval_every = 150 if args.quick else 250
    for name in ("max_steps", "eval_every", "threads", "n", "n_train", "floor_sets", "flow_nfe", "edm_nfe"):
        if getattr(args, name) < 1:
            p.error(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")
    if args.n < 2:
        p.error("--n must be >= 2")
    from genspace.sampling import method_names
    from genspace.sampling.grids import grid_names

    for flag, value in (("--flow-method", args.flow_method), ("--edm-method", args.edm_method)):
        if value not in method_names():
            p.error(f"{flag} {value!r} is not a genspace sampler; choose from {method_names()}")
    if args.flow_grid not in grid_names():
        p.error(f"--flow-grid {args.flow_grid!r} is not a genspace grid; choose from {grid_names()}")
    return args


def main(argv=None) -> None:
    args = parse_args(argv)
    if args.render is not None:
        render(args.render)
        return
    torch.set_num_threads(args.threads)
    setup = Setup(
        max_steps=args.max_steps, eval_every=args.eval_every, seed=args.seeds[0], flow_method=args.flow_method,
        flow_nfe=args.flow_nfe, flow_grid=args.flow_grid, edm_method=args.edm_method, edm_nfe=args.edm_nfe,
        raw=not args.no_raw,
    )
    peers, missing = _ttq_peers.load_peers()
    t_start, c_start = time.perf_counter(), time.process_time()
    print(
        f"Time to quality: TimeMLP(2, hidden={setup.hidden}, depth={setup.depth}), AdamW lr {setup.lr}, "
        f"batch {setup.batch_size}, {setup.max_steps} steps, eval every {setup.eval_every}, seeds {args.seeds}; "
        f"torch {torch.__version__}, {torch.get_num_threads()} thread(s), "
        + ", ".join(f"{p.library} {_ttq_peers.version(p.library)}" for p in peers.values())
    )
    for name, why in missing.items():
        print(f"  skipped {name}: {why}")

    # untimed warm-up of every code path (allocator, lazy imports, first-call overheads)
    if args.warmup_steps > 0:
        warm = make_problem(args.toys[0], n_train=2048, n=200, floor_sets=2, seed=args.data_seed + 1)
        wsetup = replace(setup, eval_every=args.warmup_steps)
        for label in GENSPACE:
            run_genspace(label, warm, make_net(wsetup), wsetup, args.warmup_steps)
        for peer in peers.values():
            run_peer(peer, warm, make_net(wsetup), wsetup, args.warmup_steps, setup.flow_nfe)

    results = {}
    path = None
    for toy in args.toys:
        problem = make_problem(toy, n_train=args.n_train, n=args.n, floor_sets=args.floor_sets, seed=args.data_seed)
        t_toy = time.perf_counter()
        by_name: dict[str, dict] = {}
        for seed in args.seeds:
            s_setup = replace(setup, seed=seed)
            base = make_net(s_setup)  # the same initial weights for every contestant of this seed
            rows: list[Row] = []
            for label in GENSPACE:
                rows += run_genspace(label, problem, copy.deepcopy(base), s_setup, setup.max_steps, check_samplers=True)
            for peer in peers.values():
                rows.append(run_peer(peer, problem, copy.deepcopy(base), s_setup, setup.max_steps, setup.flow_nfe))
            for r in rows:
                entry = by_name.setdefault(r.name, {"name": r.name, "library": r.library, "ema": r.ema, "runs": []})
                entry["sampler"] = r.sampler
                run = {"seed": seed, "sampler": r.sampler, **r.summary(), "curve": r.curve}
                if r.sampler_check:
                    run["sampler_check"] = r.sampler_check
                entry["runs"].append(run)
        rows_out = sorted(by_name.values(), key=lambda e: (not e["ema"] and e["library"] == "genspace"))
        for e in rows_out:
            e["median"] = aggregate(e["runs"])
        results[toy] = {
            "floor": problem.floor,
            "floor_sd": problem.floor_sd,
            "floor_values": problem.floor_values,
            "rows": rows_out,
        }
        print()
        print(table(toy, results[toy], setup.max_steps))
        print(f"\n({toy}: {time.perf_counter() - t_toy:.0f} s wall)")
        path = _write(args, setup, peers, missing, results, time.perf_counter() - t_start, time.process_time() - c_start)
    print(f"\nwrote {path}; total wall {time.perf_counter() - t_start:.0f} s, CPU {time.process_time() - c_start:.0f} s")


def _write(args, setup: Setup, peers: dict, missing: dict, results: dict, wall: float, cpu: float) -> Path:
    """Write (or rewrite, after each toy) ``time_to_quality.json`` in ``args.out``."""
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    payload = {
        "command": " ".join([Path(sys.argv[0]).name] + sys.argv[1:]),
        "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS"),
        "setup": {**setup.__dict__, "seeds": args.seeds, "data_seed": args.data_seed},
        "n": args.n,
        "n_train": args.n_train,
        "floor_sets": args.floor_sets,
        "quality_factor": QUALITY_FACTOR,
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "peers": {p.library: _ttq_peers.version(p.library) for p in peers.values()},
        "skipped": missing,
        "wall_s": wall,
        "cpu_s": cpu,
        "toys": results,
    }
    path = out / "time_to_quality.json"
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(payload, indent=2))
    tmp.replace(path)
    return path

if __name__ == "__main__":
    main()
