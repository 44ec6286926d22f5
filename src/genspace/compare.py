"""``genspace compare``: several model families trained on the same data, judged the same way.

A comparison recipe (:class:`CompareConfig`, YAML) holds one data section, one training section and
one sampling section shared by every entry, and a list of entries, each a ``model`` section of any
registered family (diffusion/flow, MADE, PixelCNN, VAE, GAN, normalizing flows, CNF, VQ-VAE, …)
with optional dotted overrides. For an equal **parameter budget**, an entry names the integer field
that sets its width (``width: model.net.hidden``); the width is searched so that the parameter
count is the closest to ``params``. For an equal **time budget**, ``train.max_seconds`` stops every
model after the same wall-clock time.

Every model is trained by the same :class:`~genspace.train.Trainer` (through
:func:`genspace.experiment.train`, so two-stage VQ models also train their code prior) on the
same rows in the same order, then measured on the same held-out data:

- **NLL** of held-out data (:func:`heldout_nll`). Points: nats per example of the model's
  density. Images: bits per dimension of the integer levels, whatever the model is a density
  of: a model of the levels (``likelihood_space = "levels"``: MADE-categorical, PixelCNN,
  TransformerAR, VAE) scores −log P(levels)/(D ln 2); a density of continuous pixels (flows, CNF,
  MADE-MoG; ``"density"``) scores levels dequantized in the bins it was trained on plus D·log of
  the bin width, an upper bound on the levels' NLL; diffusion/flow models go through the
  PF-ODE on dequantized levels. Every cell is labelled: ``exact``, ``bound`` (an upper bound on
  the NLL; for the VAE one importance-sampling draw with the declared K, a bound in
  expectation), ``estimate`` (a stochastic estimate: Hutchinson traces) or ``n/a`` (GAN, VQ).
- **Sample metrics** against held-out data, each with its floor (two independent real sets of
  the same size): energy distance, MMD, sliced Wasserstein; for images the Fréchet distance, KID
  and precision/recall in the feature space of genspace's own digit classifier (trained once
  into ``<out>/classifier``; a VQGAN entry without a classifier gets it for its perceptual term).
- **Parameters**: every parameter the run trains (GAN/VQGAN critics, VAE encoders and VQ priors
  included; a frozen perceptual classifier excluded).
- **Times**: the training loop's wall seconds (from the logged intervals; both stages for VQ),
  the process CPU seconds of the whole training call, and the time to draw the samples.

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
    width_multiple: int = 1  # the searched width is a multiple of this (attention heads, GroupNorm groups)
    overrides: list[str] = field(default_factory=list)  # dotted overrides of this entry's run (e.g. train.lr=2e-4)

    def __post_init__(self) -> None:
        if isinstance(self.width_multiple, bool) or not isinstance(self.width_multiple, int) or self.width_multiple < 1:
            raise ValueError(f"entry {self.label!r}: width_multiple must be a positive integer, got {self.width_multiple!r}")


@dataclass
class CompareConfig:
    """A comparison: shared data, training and sampling sections, and the entries."""

    name: str = "compare"  # a label for the table
    data: DataConfig = field(default_factory=DataConfig)  # the data every entry trains and is scored on
    train: TrainConfig = field(default_factory=TrainConfig)  # shared training settings (steps, batch, lr, max_seconds)
    sample: SampleConfig = field(default_factory=SampleConfig)  # sampler of diffusion/flow entries; n samples per model
    params: Optional[int] = None  # parameter budget matched through each entry's `width`; None: as configured
    nll_n: int = 500  # held-out examples scored for the NLL column (0: skip)
    nll_batch: int = 100  # held-out examples per log-likelihood call (bounds the memory of K-sample estimators)
    train_eval_n: int = 256  # samples of the run's own end-of-training evaluation and figures (the table uses sample.n)
    entries: list[CompareEntry] = field(default_factory=list)  # the contestants

    def __post_init__(self) -> None:
        if self.params is not None and self.params < 1:
            raise ValueError(f"params must be a positive integer or null, got {self.params}")
        if self.nll_n < 0:
            raise ValueError(f"nll_n must be >= 0, got {self.nll_n}")
        for name in ("nll_batch", "train_eval_n"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
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

# Submodules holding a network trained elsewhere and frozen, which the run does not train: not
# part of a model's budget (the VQGAN's perceptual classifier).
FROZEN_CHILDREN = ("perceptual",)


def param_count(model: nn.Module) -> int:
    """Parameters the run trains: every parameter of ``model`` (a GAN's or VQGAN's critic, a
    VAE's encoder and a VQ model's prior included) except those of :data:`FROZEN_CHILDREN`."""
    frozen = {id(p) for name, child in model.named_children() if name in FROZEN_CHILDREN for p in child.parameters()}
    return sum(p.numel() for p in model.parameters() if id(p) not in frozen)


def _get_path(cfg, keys: list[str]):
    obj = cfg
    for k in keys:
        obj = getattr(obj, k)
    return obj


def match_width(cfg: ExperimentConfig, data, width: str, budget: int, *, multiple: int = 1, hi: int = 4096) -> tuple[ExperimentConfig, int]:
    """The config whose integer field ``width`` (a multiple of ``multiple``, at most ``hi``)
    gives the parameter count closest to ``budget``.

    The count grows with the width. Starting from the configured width, the search doubles (or
    halves) it until the budget is bracketed — so no model much larger than the answer is ever
    built — then bisects; the closer of the two neighbours wins. Returns (config, its count).
    """
    keys = width.split(".")
    try:
        current = _get_path(cfg, keys)
    except AttributeError:
        raise ValueError(f"width key {width!r} does not exist in this entry's config") from None
    if isinstance(current, bool) or not isinstance(current, int):
        raise ValueError(f"width key {width!r} must name an integer field, found {current!r}")
    if budget < 1:
        raise ValueError(f"the parameter budget must be a positive integer, got {budget}")
    top = hi // multiple
    if top < 1:
        raise ValueError(f"no multiple of {multiple} is <= {hi}")
    counts: dict[int, int] = {}

    def count(j: int) -> int:  # parameters at width j·multiple
        if j not in counts:
            counts[j] = param_count(build_model(apply_overrides(cfg, [f"{width}={j * multiple}"]), data))
        return counts[j]

    j = min(max(1, round(current / multiple)), top)
    if count(j) < budget:  # grow: lo below the budget, hi at or above it (or the cap)
        lo, up = j, j
        while count(up) < budget and up < top:
            lo, up = up, min(2 * up, top)
    else:  # shrink
        lo, up = j, j
        while count(lo) >= budget and lo > 1:
            up, lo = lo, max(1, lo // 2)
    if count(lo) >= budget:
        best = lo
    elif count(up) < budget:
        best = up
    else:
        while lo + 1 < up:
            mid = (lo + up) // 2
            if count(mid) < budget:
                lo = mid
            else:
                up = mid
        best = min((lo, up), key=lambda k: abs(count(k) - budget))
    return apply_overrides(cfg, [f"{width}={best * multiple}"]), count(best)


# ----------------------------------------------------------------------------- likelihood


@dataclass
class NLLResult:
    """A held-out NLL with its standard error, its unit and how it is known."""

    value: float  # mean NLL (nats per example for points, bits/dim of the integer levels for images); nan if n/a
    stderr: float  # standard error of the mean over the scored examples
    unit: str  # "nats" or "bits/dim"
    kind: str  # "exact", "bound" (an upper bound on the NLL), "estimate" (stochastic) or "n/a"
    how: str  # a short description of the estimator
    note: str = ""  # a qualifier for the table cell (e.g. "K=1000")
    n: int = 0  # examples scored


def _mean_se(nll: torch.Tensor) -> tuple[float, float]:
    nll = nll.double()
    if not bool(torch.isfinite(nll).all()):
        return float("inf"), float("nan")
    se = float(nll.std() / math.sqrt(len(nll))) if len(nll) > 1 else float("nan")
    return float(nll.mean()), se


def _in_batches(fn, x: torch.Tensor, batch: int) -> torch.Tensor:
    return torch.cat([fn(x[i : i + batch]) for i in range(0, len(x), batch)])


def heldout_nll(model: nn.Module, data, n: int, *, seed: int = 0, batch: int = 100) -> NLLResult:
    """NLL of the first ``n`` held-out examples by the model's own route, labelled honestly.

    Units: points — nats per example of the model's density; images — bits per dimension of
    the integer levels k (L levels, D dimensions), whatever the model is a density of:

    - Diffusion/flow models: the probability-flow ODE (instantaneous change of variables). On
      points with the exact divergence up to 16 dimensions ("exact", for the ODE's density),
      Hutchinson above ("estimate"). On images :func:`genspace.experiment.bits_per_dim_of`:
      uniform dequantization in bins of width 2/(L−1) centred on the training grid, Hutchinson
      divergence — an unbiased estimate of the dequantization bound ("estimate").
    - Other families: ``model.log_likelihood`` with the attributes ``likelihood_kind`` and
      ``likelihood_space`` (:mod:`genspace.families`). On images, a ``"levels"`` model gives
      log P(k): NLL = −log P(k)/(D ln 2), with the model's own kind. A ``"density"`` model was
      trained on y = 2(k + u)/L − 1 (:func:`genspace.data.dequantize`); its held-out levels are
      dequantized the same way with one seeded u per pixel and log P(k) ≥ E_u log p(y) + D·log(2/L)
      (Theis et al. 2016, §3.1), so the cell is a "bound" (an "estimate" when log p itself is a
      stochastic estimate, e.g. a Hutchinson CNF). A family without a likelihood (a GAN, VQ
      models) gives "n/a".

    Non-finite log-likelihoods (a held-out point outside a binned model's support) make the mean
    infinite; the note counts them. ``batch`` examples go through each call.
    """
    x = data.heldout[:n]
    images = data.kind == "images"
    unit = "bits/dim" if images else "nats"
    dim = int(math.prod(data.shape))
    n = len(x)
    if n < 1:
        return NLLResult(float("nan"), float("nan"), unit, "n/a", "not computed")
    if hasattr(model, "denoiser") and hasattr(model, "sigma_range"):
        if images:
            from genspace.experiment import bits_per_dim_of

            r = bits_per_dim_of(model, data, n=n, divergence="hutchinson", n_probes=4, seed=seed, rtol=1e-3, atol=1e-3)
            how = f"PF-ODE (rtol 1e-3), {r['bpd_estimator']}, on levels dequantized in bins of width 2/(L-1) centred on the grid"
            return NLLResult(r["bpd"], r["bpd_se"], unit, "estimate", how, "Hutchinson, dequant.", n)
        from genspace.continuous.likelihood import log_likelihood

        divergence = "exact" if dim <= 16 else "hutchinson"
        lo, hi = model.sigma_range()
        model.double()
        try:
            res = log_likelihood(model.denoiser, x.double(), sigma_min=lo, sigma_max=hi, divergence=divergence, n_probes=4, generator=torch.Generator().manual_seed(seed), rtol=1e-5, atol=1e-5)
        finally:
            model.float()
        value, se = _mean_se(-res.log_prob)
        kind = "exact" if divergence == "exact" else "estimate"
        return NLLResult(value, se, unit, kind, f"PF-ODE (rtol 1e-5), {res.estimator}", "" if kind == "exact" else "Hutchinson", n)
    kind = getattr(model, "likelihood_kind", None)
    if kind is None or not callable(getattr(model, "log_likelihood", None)):
        return NLLResult(float("nan"), float("nan"), unit, "n/a", "the family defines no likelihood of the data", "", n)
    if kind not in ("exact", "bound", "estimate"):
        raise ValueError(f"{type(model).__name__}.likelihood_kind must be 'exact', 'bound', 'estimate' or None, got {kind!r}")
    how = getattr(model, "likelihood_description", None) or f"{type(model).__name__}.log_likelihood"
    k_eval = getattr(model, "eval_k", None)
    note = f"K={k_eval}" if k_eval is not None else ""
    g = torch.Generator().manual_seed(seed)
    space = getattr(model, "likelihood_space", None)
    with torch.no_grad():
        if not images:
            lp = _in_batches(lambda b: model.log_likelihood(b, generator=g), x, batch).double()  # nats of the density
        elif space == "levels":
            lp = _in_batches(lambda b: model.log_likelihood(b, generator=g), x, batch).double()  # log P(levels)
        elif space == "density":
            from genspace.data import dequantize, to_uint8

            levels = data.n_levels
            if levels is None:
                raise ValueError("a density model on images needs the data's grey levels (data.n_levels) to dequantize")
            dtype = next(model.parameters()).dtype
            y = dequantize(to_uint8(x, levels), levels, generator=g, dtype=dtype)  # one u per pixel, seeded
            lp = _in_batches(lambda b: model.log_likelihood(b, generator=g), y, batch).double() + dim * math.log(2.0 / levels)
            how += "; levels dequantized uniformly in bins of width 2/L (genspace.data.dequantize), + D log(2/L)"
            kind = "estimate" if kind == "estimate" else "bound"
            note = ", ".join(t for t in (note, "dequant.") if t)
        else:
            raise ValueError(
                f"{type(model).__name__} has a likelihood but no likelihood_space ('levels' or 'density'): "
                "it is not known whether its log_likelihood is of the levels or of a density (genspace.families)"
            )
    nll = -lp / (dim * math.log(2.0)) if images else -lp
    value, se = _mean_se(nll)
    bad = int((~torch.isfinite(lp)).sum())
    if bad:
        note = ", ".join(t for t in (note, f"{bad}/{n} outside the support") if t)
    return NLLResult(value, se, unit, kind, how, note, n)


# ----------------------------------------------------------------------------- the comparison


def entry_config(cfg: CompareConfig, entry: CompareEntry) -> ExperimentConfig:
    exp = ExperimentConfig(name=entry.label, data=cfg.data, model=entry.model, train=cfg.train, sample=cfg.sample)
    return apply_overrides(exp, list(entry.overrides)) if entry.overrides else exp


def classifier_folder(cfg: CompareConfig, out_dir: Union[str, Path]) -> Path:
    """Where :func:`run_compare` keeps the image data's feature classifier (FD/KID and the
    VQGAN's perceptual term)."""
    return Path(out_dir) / "classifier" / f"{cfg.data.name}-classifier"


def _uses_classifier(exp: ExperimentConfig) -> bool:
    """A model section with a perceptual term that wants a feature classifier (VQGAN) but names none."""
    m = exp.model
    return hasattr(m, "classifier") and getattr(m, "classifier") is None and getattr(m, "perceptual_weight", 0) > 0


def prepare_entry(cfg: CompareConfig, entry: CompareEntry, data, out_dir: Union[str, Path]) -> tuple[ExperimentConfig, int]:
    """The entry's run config (the comparison's shared sections, its overrides, its matched width)
    and its parameter count. On images a perceptual term without a classifier gets the
    comparison's own (:func:`classifier_folder`)."""
    exp = entry_config(cfg, entry)
    if data.kind == "images" and _uses_classifier(exp):
        exp = apply_overrides(exp, [f"model.classifier={classifier_folder(cfg, out_dir)}"])
    if cfg.params is not None and entry.width is not None:
        return match_width(exp, data, entry.width, cfg.params, multiple=entry.width_multiple)
    return exp, param_count(build_model(exp, data))


def training_seconds(run: Path) -> float:
    """Wall seconds of the training loop of a run folder (and of its ``prior`` stage), summed
    from the logged intervals of metrics.csv (steps / steps_per_s): the end-of-training
    evaluation, figures and checkpoints are not in it."""
    from genspace.train import read_csv

    total = 0.0
    for folder in (run, run / "prior"):
        if not (folder / "metrics.csv").exists():
            continue
        prev = 0
        for row in read_csv(folder / "metrics.csv"):
            if "steps_per_s" in row and row["steps_per_s"] > 0:
                total += (row["step"] - prev) / row["steps_per_s"]
                prev = row["step"]
    return total


def run_compare(cfg: CompareConfig, out_dir: Union[str, Path], *, progress: bool = False, log=print) -> dict:
    """Train, sample and score every entry of ``cfg`` into ``out_dir``; returns the results.

    Every entry trains through :func:`genspace.experiment.train` (two-stage VQ models train
    their prior there too) with the run's own end-of-training evaluation on ``train_eval_n``
    samples; the table's samples are then drawn once with ``sample``. ``compare.json`` is
    rewritten after every entry. A run that diverges (:class:`~genspace.train.TrainingDivergedError`)
    gets a row saying so, and the comparison goes on.
    """
    from genspace.experiment import train
    from genspace.train import TrainingDivergedError

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    data = load_data(cfg.data)
    classifier = None
    if data.kind == "images":
        from genspace.experiment import image_classifier

        classifier = image_classifier(cfg.data, out_dir / "classifier")
    seen = trained_fraction(data.heldout[: cfg.nll_n], data.train[0])
    if seen:
        log(f"note: {seen:.0%} of the held-out examples scored for the NLL are training examples ({cfg.data.name} has no held-out split)")
    rows, samples = [], {}
    for entry in cfg.entries:
        exp, n_params = prepare_entry(cfg, entry, data, out_dir)
        log(f"[{entry.label}] {exp.model.__class__.__name__}, {n_params:,} parameters, {exp.train.steps} steps")
        run = out_dir / entry.label
        run_exp = dataclasses.replace(exp, sample=dataclasses.replace(exp.sample, n=min(exp.sample.n, cfg.train_eval_n)))
        row = {"label": entry.label, "family": to_dict(exp)["model"].get("family"), "params": n_params, "config": to_dict(exp)}
        cpu0 = time.process_time()
        try:
            result = train(run_exp, run, progress=progress)
        except TrainingDivergedError as err:
            row.update(status=f"diverged: {err}", steps=_steps_done(run, 0), train_seconds=training_seconds(run))
            rows.append(row)
            log(f"[{entry.label}] DIVERGED: {err}")
            _write_json(cfg, rows, out_dir)
            continue
        train_cpu = time.process_time() - cpu0
        model = result["model"].eval()
        start = time.perf_counter()
        x = sample_model(model, data.shape, exp.sample)
        sample_seconds = time.perf_counter() - start
        metrics = evaluate_samples(x, data, classifier=classifier)
        if data.kind == "images" and data.n_levels is not None:
            metrics["copies"] = copy_fraction(x, data.train[0], data.n_levels)
        start = time.perf_counter()
        nll = heldout_nll(model, data, min(cfg.nll_n, len(data.heldout)), batch=cfg.nll_batch)
        if seen:
            nll = dataclasses.replace(nll, note=", ".join(t for t in (nll.note, "training images" if seen == 1.0 else f"{seen:.0%} trained on") if t))
        row.update(
            status="ok",
            steps=_steps_done(run, exp.train.steps),
            prior_steps=_steps_done(run / "prior", 0),  # the second stage of a two-stage model (VQ), 0 if none
            train_seconds=training_seconds(run),
            train_total_seconds=result["seconds"],
            train_total_cpu_seconds=train_cpu,
            sample_seconds=sample_seconds,
            nll_seconds=time.perf_counter() - start,
            n_samples=len(x),
            nll=dataclasses.asdict(nll),
            metrics=metrics,
        )
        rows.append(row)
        samples[entry.label] = x
        log(f"[{entry.label}] nll {nll.value:.4g} ({nll.kind}), energy {metrics['energy']:.3g} (floor {metrics['energy_floor']:.3g}), train {row['train_seconds']:.1f} s")
        _write_json(cfg, rows, out_dir)
    table = format_table(cfg, rows, data)
    (out_dir / "compare.md").write_text(table + "\n")
    _write_json(cfg, rows, out_dir)
    figure = samples_figure(samples, data, out_dir / "samples.png", title=cfg.name)
    return {"rows": rows, "table": table, "figure": figure, "data": data}


def _row_keys(x: torch.Tensor) -> set:
    return {bytes(r) for r in x.reshape(len(x), -1).contiguous().numpy().view("uint8").reshape(len(x), -1)}


def trained_fraction(heldout: torch.Tensor, train: torch.Tensor) -> float:
    """Fraction of the ``heldout`` rows that are also rows of ``train`` (bit-identical).

    A finite image set (digits) has no held-out split here: its "held-out" sets are subsets of
    the training images (as FID compares with the training set), so their NLL is a training NLL.
    """
    if len(heldout) == 0 or heldout.dtype != train.dtype or heldout.shape[1:] != train.shape[1:]:
        return 0.0
    keys = _row_keys(train.cpu())
    return sum(bytes(r) in keys for r in heldout.reshape(len(heldout), -1).contiguous().cpu().numpy().view("uint8").reshape(len(heldout), -1)) / len(heldout)


def copy_fraction(samples: torch.Tensor, train: torch.Tensor, n_levels: int) -> float:
    """Fraction of image ``samples`` that, rounded to the nearest of the ``n_levels`` grid values
    2k/(L−1) − 1, equal a training image exactly: a direct measure of memorization."""

    def levels(x: torch.Tensor) -> torch.Tensor:
        return torch.round((x.double().clamp(-1, 1) + 1) * (n_levels - 1) / 2).to(torch.int16).reshape(len(x), -1)

    keys = _row_keys(levels(train.cpu()))
    k = levels(samples.cpu()).contiguous().numpy().view("uint8").reshape(len(samples), -1)
    return sum(bytes(r) in keys for r in k) / max(len(samples), 1)


def _write_json(cfg: CompareConfig, rows: list[dict], out_dir: Path) -> None:
    (out_dir / "compare.json").write_text(json.dumps({"name": cfg.name, "config": to_dict(cfg), "rows": rows}, indent=2, default=float) + "\n")


def _steps_done(run: Path, planned: int) -> int:
    """Training steps of the run's (first-stage) latest checkpoint."""
    from genspace.train import latest_checkpoint

    ckpt = latest_checkpoint(run) if run.is_dir() else None
    return int(ckpt.name.split("-")[1]) if ckpt is not None else planned


def _fmt_steps(r: dict) -> str:
    return f"{r['steps']} + {r['prior_steps']} prior" if r.get("prior_steps") else str(r["steps"])


def _fmt_nll(nll: dict) -> str:
    if nll["kind"] == "n/a":
        return "n/a"
    label = nll["kind"] + (f", {nll['note']}" if nll.get("note") else "")
    if not math.isfinite(nll["value"]):
        return f"inf ({label})"
    return f"{nll['value']:.3f} ± {nll['stderr']:.3f} ({label})"


def _ratio(m: dict, k: str) -> str:
    """``value / floor = ratio`` of metric ``k``."""
    if k not in m or not m.get(k + "_floor"):
        return "n/a"
    return f"{m[k]:.3g} / {m[k + '_floor']:.3g} = {m[k] / m[k + '_floor']:.2f}"


def format_table(cfg: CompareConfig, rows: list[dict], data) -> str:
    """The comparison as one Markdown table (metric / floor ratios beside the values)."""
    unit = "bits/dim" if data.kind == "images" else "nats"
    images = data.kind == "images"
    head = ["model", "family", "params", "steps", f"NLL ({unit})", "energy / floor", "MMD / floor", "SWD / floor"]
    if images:
        head += ["FD / floor", "precision", "recall", "copies"]
    head += ["train s", "sample s"]
    lines = [f"### {cfg.name}: {cfg.data.name}", "", "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        if r.get("status", "ok") != "ok":
            cells = [r["label"], str(r["family"]), f"{r['params']:,}", str(r["steps"]), r["status"].split(":")[0].upper()]
            cells += ["—"] * (len(head) - len(cells) - 2) + [f"{r.get('train_seconds', float('nan')):.1f}", "—"]
            lines.append("| " + " | ".join(cells) + " |")
            continue
        m = r["metrics"]
        cells = [r["label"], str(r["family"]), f"{r['params']:,}", _fmt_steps(r), _fmt_nll(r["nll"]), _ratio(m, "energy"), _ratio(m, "mmd"), _ratio(m, "swd")]
        if images:
            cells += [_ratio(m, "fd"), f"{m.get('precision', float('nan')):.2f}", f"{m.get('recall', float('nan')):.2f}", f"{m.get('copies', float('nan')):.2f}"]
        cells += [f"{r['train_seconds']:.1f}", f"{r['sample_seconds']:.2f}"]
        lines.append("| " + " | ".join(cells) + " |")
    lines.append("")
    if images:
        conv = ("NLL in bits/dim of the integer levels: models of the levels (MADE, PixelCNN, TransformerAR, VAE) score log P(levels); "
                "densities (flows, CNF, diffusion) score uniformly dequantized levels plus the log bin volume, a bound on the levels' NLL. ")
    else:
        conv = "NLL in nats per point of each model's density. "
    lines.append(conv + "exact = the model's exact likelihood (the PF-ODE density for diffusion/flow); bound = an upper bound on the NLL "
                 "(VAE: one importance-sampling draw with K samples, a bound in expectation); estimate = a stochastic (Hutchinson) estimate; "
                 "n/a = the family has no likelihood. Floor = the metric between two independent real sets of the same size. "
                 "train s = wall seconds of the training loop (VQ: both stages)."
                 + (" copies = fraction of samples equal to a training image (rounded to the levels). 'training images': the data set has no "
                    "held-out split, so the NLL is scored on images the models trained on (memorization lowers it) and the metrics' "
                    "reference sets are training images too." if images else ""))
    return "\n".join(lines)


def samples_figure(samples: dict, data, path: Path, *, title: str = "", columns: int = 6) -> Path:
    """The data and every model's samples side by side (scatter for 2-D points, grids for
    images), ``columns`` panels per row."""
    from matplotlib.figure import Figure

    panels = [("data", data.heldout)] + list(samples.items())
    k = len(panels)
    cols = min(k, columns)
    n_rows = -(-k // cols)
    fig = Figure(figsize=(2.6 * cols, 2.9 * n_rows), dpi=110)
    axes = fig.subplots(n_rows, cols, squeeze=False).reshape(-1)
    for ax in axes[k:]:
        ax.set_axis_off()
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
