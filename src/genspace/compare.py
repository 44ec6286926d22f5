"""``genspace compare``: several model families trained on the same data, judged the same way.

A comparison recipe (:class:`CompareConfig`, YAML) holds one data section, one training section and
one sampling section shared by every entry, and a list of entries, each a ``model`` section of any
registered family (diffusion/flow, MADE, PixelCNN, VAE, GAN, normalizing flows, CNF, VQ-VAE, …)
with optional dotted overrides. For an equal **parameter budget**, an entry names the integer field
that sets its width (``width: model.net.hidden``); the width is searched so that the parameter
count is the closest to ``params``. For an equal **time budget**, ``train.max_seconds`` stops every
model after the same wall-clock time.

Every model is trained by the same :class:`~genspace.train.Trainer` on the same rows in the same
order, then measured on the same held-out data:

- **NLL** of held-out data, labelled by how it is known (:func:`heldout_nll`): ``exact`` (flows,
  autoregressive models, the PF-ODE of a diffusion model with the exact divergence), ``bound``
  (a lower bound on log p: ELBO/IWAE of a VAE, the dequantization bound of a continuous model on
  quantized images), ``estimate`` (Hutchinson traces, importance sampling) or ``n/a`` (a GAN).
  Points: nats per example; images: bits per dimension of the integer levels.
- **Sample metrics** against held-out data, each with its floor (two independent real sets of
  the same size): energy distance, MMD, sliced Wasserstein; for images the Fréchet distance, KID
  and precision/recall in the feature space of genspace's own digit classifier.
- **Times**: training wall/CPU seconds and the time to draw the samples.

Outputs in the run folder: ``compare.md`` (the table), ``compare.json`` (everything) and
``samples.png`` (the samples of every model side by side, the data first).
"""

from __future__ import annotations

import dataclasses
import json
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Union

import torch
from torch import nn

from genspace.config import apply_overrides, load_yaml, to_dict, variant_field
from genspace.experiment import (
    DataConfig,
    ExperimentConfig,
    SampleConfig,
    build_model,
    evaluate_samples,
    load_data,
    sample_model,
)
from genspace.train import TrainConfig


@dataclass
class CompareEntry:
    """One contestant of a comparison."""

    label: str = "model"  # the row's name in the table and its run folder
    model: Any = variant_field("model", default="diffusion")  # any registered family (model.family)
    width: Optional[str] = None  # dotted key of the integer that sets the width (e.g. model.net.hidden); searched to match `params`
    overrides: list[str] = field(default_factory=list)  # dotted overrides of this entry's run (e.g. train.lr=2e-4)


@dataclass
class CompareConfig:
    """A comparison: shared data, training and sampling sections, and the entries."""

    name: str = "compare"  # a label for the table
    data: DataConfig = field(default_factory=DataConfig)  # the data every entry trains and is scored on
    train: TrainConfig = field(default_factory=TrainConfig)  # shared training settings (steps, batch, lr, max_seconds)
    sample: SampleConfig = field(default_factory=SampleConfig)  # sampler of diffusion/flow entries; n samples per model
    params: Optional[int] = None  # parameter budget matched through each entry's `width`; None: as configured
    nll_n: int = 500  # held-out examples scored for the NLL column (0: skip)
    entries: list[CompareEntry] = field(default_factory=list)  # the contestants

    def __post_init__(self) -> None:
        if self.params is not None and self.params < 1:
            raise ValueError(f"params must be a positive integer or null, got {self.params}")
        if self.nll_n < 0:
            raise ValueError(f"nll_n must be >= 0, got {self.nll_n}")
        labels = [e.label for e in self.entries]
        if len(set(labels)) != len(labels):
            raise ValueError(f"entries need distinct labels, got {labels}")


def load_compare_config(path: Union[str, Path], overrides: tuple[str, ...] = ()) -> CompareConfig:
    """Read a comparison recipe and apply dotted overrides (``train.steps=500``)."""
    cfg = load_yaml(path, CompareConfig)
    cfg = apply_overrides(cfg, list(overrides)) if overrides else cfg
    if not cfg.entries:
        raise ValueError(f"{path}: a comparison needs at least one entry under 'entries'")
    return cfg


# ----------------------------------------------------------------------------- parameter budget


def param_count(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def _get_path(cfg, keys: list[str]):
    obj = cfg
    for k in keys:
        obj = getattr(obj, k)
    return obj


def match_width(cfg: ExperimentConfig, data, width: str, budget: int, *, lo: int = 1, hi: int = 4096) -> tuple[ExperimentConfig, int]:
    """The config whose integer field ``width`` gives the parameter count closest to ``budget``.

    The count grows with the width, so a bisection over [lo, hi] brackets the budget; the closer
    of the two neighbours wins. Returns (config, its parameter count).
    """
    keys = width.split(".")
    try:
        current = _get_path(cfg, keys)
    except AttributeError:
        raise ValueError(f"width key {width!r} does not exist in this entry's config") from None
    if isinstance(current, bool) or not isinstance(current, int):
        raise ValueError(f"width key {width!r} must name an integer field, found {current!r}")

    def count(w: int) -> int:
        return param_count(build_model(apply_overrides(cfg, [f"{width}={w}"]), data))

    if count(lo) >= budget:
        best = lo
    else:
        while lo + 1 < hi:
            mid = (lo + hi) // 2
            if count(mid) < budget:
                lo = mid
            else:
                hi = mid
        best = min((lo, hi), key=lambda w: abs(count(w) - budget))
    out = apply_overrides(cfg, [f"{width}={best}"])
    return out, count(best)


# ----------------------------------------------------------------------------- likelihood


@dataclass
class NLLResult:
    """A held-out NLL with its standard error, its unit and how it is known."""

    value: float  # mean NLL (nats per example for points, bits/dim for images); nan if n/a
    stderr: float
    unit: str  # "nats" or "bits/dim"
    kind: str  # "exact", "bound", "estimate" or "n/a"
    how: str  # a short description of the estimator


def heldout_nll(model: nn.Module, data, n: int, *, seed: int = 0) -> NLLResult:
    """NLL of ``n`` held-out examples, by the model's own route, labelled honestly.

    - Diffusion/flow models: the probability-flow ODE (instantaneous change of variables) with
      the exact divergence up to 16 dimensions ("exact", for the ODE's density), Hutchinson above
      ("estimate"); for images bits/dim with the dequantization bound ("bound").
    - Other families: ``model.log_likelihood(x)`` with the class attribute ``likelihood_kind``;
      a family without it (a GAN) gives "n/a".
    """
    x = data.heldout[:n]
    images = data.kind == "images"
    unit = "bits/dim" if images else "nats"
    dim = int(math.prod(data.shape))
    if n < 1:
        return NLLResult(float("nan"), float("nan"), unit, "n/a", "not computed")
    if hasattr(model, "denoiser") and hasattr(model, "sigma_range"):
        if images:
            from genspace.experiment import bits_per_dim_of

            r = bits_per_dim_of(model, data, n=n, divergence="hutchinson", n_probes=4, seed=seed, rtol=1e-3, atol=1e-3)
            return NLLResult(r["bpd"], r["bpd_se"], unit, "bound", f"PF-ODE, {r['bpd_estimator']}, dequantization bound")
        from genspace.continuous.likelihood import log_likelihood

        divergence = "exact" if dim <= 16 else "hutchinson"
        lo, hi = model.sigma_range()
        model.double()
        try:
            res = log_likelihood(model.denoiser, x.double(), sigma_min=lo, sigma_max=hi, divergence=divergence, n_probes=4, generator=torch.Generator().manual_seed(seed), rtol=1e-5, atol=1e-5)
        finally:
            model.float()
        lp = res.log_prob.double()
        kind = "exact" if divergence == "exact" else "estimate"
        return NLLResult(float(-lp.mean()), float(lp.std() / math.sqrt(len(lp))) if len(lp) > 1 else float("nan"), unit, kind, f"PF-ODE, {res.estimator}")
    kind = getattr(model, "likelihood_kind", None)
    if kind is None or not callable(getattr(model, "log_likelihood", None)):
        return NLLResult(float("nan"), float("nan"), unit, "n/a", "no likelihood")
    with torch.no_grad():
        lp = model.log_likelihood(x, generator=torch.Generator().manual_seed(seed)).double()
    if images:
        lp = -lp / (dim * math.log(2.0))  # log P(levels) in nats → bits/dim
        value, se = float(lp.mean()), float(lp.std() / math.sqrt(len(lp))) if len(lp) > 1 else float("nan")
    else:
        value, se = float(-lp.mean()), float(lp.std() / math.sqrt(len(lp))) if len(lp) > 1 else float("nan")
    return NLLResult(value, se, unit, kind, getattr(model, "likelihood_description", type(model).__name__ + ".log_likelihood"))


# ----------------------------------------------------------------------------- the comparison


def entry_config(cfg: CompareConfig, entry: CompareEntry) -> ExperimentConfig:
    exp = ExperimentConfig(name=entry.label, data=cfg.data, model=entry.model, train=cfg.train, sample=cfg.sample)
    return apply_overrides(exp, list(entry.overrides)) if entry.overrides else exp


def run_compare(cfg: CompareConfig, out_dir: Union[str, Path], *, progress: bool = False, log=print) -> dict:
    """Train, sample and score every entry of ``cfg`` into ``out_dir``; returns the results."""
    from genspace.experiment import train

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    data = load_data(cfg.data)
    classifier = None
    if data.kind == "images":
        from genspace.experiment import image_classifier

        classifier = image_classifier(cfg.data, out_dir / "classifier")
    rows, samples = [], {}
    for entry in cfg.entries:
        exp = entry_config(cfg, entry)
        if cfg.params is not None and entry.width is not None:
            exp, n_params = match_width(exp, data, entry.width, cfg.params)
        else:
            n_params = param_count(build_model(exp, data))
        log(f"[{entry.label}] {exp.model.__class__.__name__}, {n_params:,} parameters, {exp.train.steps} steps")
        cpu0 = time.process_time()
        result = train(exp, out_dir / entry.label, progress=progress)
        train_cpu = time.process_time() - cpu0
        model = result["model"].eval()
        start = time.perf_counter()
        x = sample_model(model, data.shape, exp.sample)
        sample_seconds = time.perf_counter() - start
        metrics = evaluate_samples(x, data, classifier=classifier)
        nll = heldout_nll(model, data, min(cfg.nll_n, len(data.heldout)))
        row = {
            "label": entry.label,
            "family": to_dict(exp)["model"].get("family"),
            "params": n_params,
            "steps": _steps_done(out_dir / entry.label, exp.train.steps),
            "train_seconds": result["seconds"],
            "train_cpu_seconds": train_cpu,
            "sample_seconds": sample_seconds,
            "n_samples": len(x),
            "nll": dataclasses.asdict(nll),
            "metrics": metrics,
            "config": to_dict(exp),
        }
        rows.append(row)
        samples[entry.label] = x
        log(f"[{entry.label}] nll {nll.value:.4g} ({nll.kind}), energy {metrics['energy']:.3g} (floor {metrics['energy_floor']:.3g}), train {result['seconds']:.1f} s")
    table = format_table(cfg, rows, data)
    (out_dir / "compare.md").write_text(table + "\n")
    (out_dir / "compare.json").write_text(json.dumps({"name": cfg.name, "config": to_dict(cfg), "rows": rows}, indent=2, default=float) + "\n")
    figure = samples_figure(samples, data, out_dir / "samples.png", title=cfg.name)
    return {"rows": rows, "table": table, "figure": figure, "data": data}


def _steps_done(run: Path, planned: int) -> int:
    from genspace.train import latest_checkpoint

    ckpt = latest_checkpoint(run)
    return int(ckpt.name.split("-")[1]) if ckpt is not None else planned


def _fmt_nll(nll: dict) -> str:
    if nll["kind"] == "n/a":
        return "n/a"
    return f"{nll['value']:.3f} ± {nll['stderr']:.3f} ({nll['kind']})"


def format_table(cfg: CompareConfig, rows: list[dict], data) -> str:
    """The comparison as one Markdown table (metric / floor ratios beside the values)."""
    unit = "bits/dim" if data.kind == "images" else "nats"
    images = data.kind == "images"
    head = ["model", "family", "params", "steps", f"NLL ({unit})", "energy / floor", "MMD / floor", "SWD / floor"]
    if images:
        head += ["FD / floor", "precision", "recall"]
    head += ["train s", "sample s"]
    lines = [f"### {cfg.name}: {cfg.data.name}", "", "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        m = r["metrics"]
        ratio = lambda k: f"{m[k]:.3g} / {m[k + '_floor']:.3g} = {m[k] / m[k + '_floor']:.2f}" if m.get(k + "_floor") else "n/a"  # noqa: E731
        cells = [r["label"], str(r["family"]), f"{r['params']:,}", str(r["steps"]), _fmt_nll(r["nll"]), ratio("energy"), ratio("mmd"), ratio("swd")]
        if images:
            cells += [ratio("fd") if "fd" in m else "n/a", f"{m.get('precision', float('nan')):.2f}", f"{m.get('recall', float('nan')):.2f}"]
        cells += [f"{r['train_seconds']:.1f}", f"{r['sample_seconds']:.2f}"]
        lines.append("| " + " | ".join(cells) + " |")
    lines.append("")
    lines.append("NLL: exact = the model's exact likelihood (the PF-ODE density for diffusion/flow); bound = an upper bound on the NLL; "
                 "estimate = a stochastic estimate; n/a = the family has no likelihood. Floor = the metric between two independent real sets of the same size.")
    return "\n".join(lines)


def samples_figure(samples: dict, data, path: Path, *, title: str = "") -> Path:
    """The data and every model's samples side by side (scatter for 2-D points, grids for images)."""
    from matplotlib.figure import Figure

    panels = [("data", data.heldout)] + list(samples.items())
    k = len(panels)
    fig = Figure(figsize=(2.6 * k, 2.9), dpi=110)
    axes = fig.subplots(1, k, squeeze=False)[0]
    for ax, (name, x) in zip(axes, panels):
        x = x.detach().float().cpu()
        if data.kind == "images":
            from genspace.figures import tile_images

            ax.imshow(tile_images(x[:64]), cmap="gray", vmin=-1, vmax=1, interpolation="nearest")
        elif x.shape[-1] == 2 and x.ndim == 2:
            ref = data.heldout.float()
            lim = float(ref.abs().max()) * 1.3
            ax.scatter(x[:2000, 0], x[:2000, 1], s=1.0, alpha=0.5, color="C0" if name == "data" else "C1")
            ax.set_xlim(-lim, lim), ax.set_ylim(-lim, lim), ax.set_aspect("equal")
        ax.set_title(name, fontsize=9)
        ax.set_xticks([]), ax.set_yticks([])
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    return path
