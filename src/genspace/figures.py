"""Matplotlib figures a person can look at: samples beside data, trajectories, image grids,
loss curves and error-against-NFE plots.

Figures are built with ``matplotlib.figure.Figure`` directly (no pyplot, no global backend
switch) and written to the given path; every function returns the path it wrote.
"""

from __future__ import annotations

import csv
import math
from pathlib import Path
from typing import Mapping, Optional, Sequence

import numpy as np
import torch


def _figure(ncols: int = 1, nrows: int = 1, size: float = 4.0):
    from matplotlib.figure import Figure

    fig = Figure(figsize=(size * ncols, size * nrows), dpi=110)
    axes = fig.subplots(nrows, ncols, squeeze=False)
    return fig, axes


def _np(x) -> np.ndarray:
    if torch.is_tensor(x):
        x = x.detach().to("cpu", torch.float64).numpy()
    return np.asarray(x, dtype=np.float64)


def _save(fig, path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path)
    return path


def _limits(*arrays: np.ndarray, quantile: float = 0.005) -> tuple[tuple[float, float], tuple[float, float]]:
    both = np.concatenate([a for a in arrays if len(a)], axis=0)
    lo = np.quantile(both, quantile, axis=0)
    hi = np.quantile(both, 1 - quantile, axis=0)
    pad = 0.1 * (hi - lo) + 1e-6
    return (lo[0] - pad[0], hi[0] + pad[0]), (lo[1] - pad[1], hi[1] + pad[1])


def samples_vs_data(samples, data, path, *, title: str = "", bins: int = 120) -> Path:
    """2-D samples beside the data: scatter (top) and 2-D histogram density (bottom).

    Args:
        samples: (N, 2) generated points.  data: (M, 2) real points.
    """
    s, d = _np(samples), _np(data)
    if s.ndim != 2 or s.shape[1] != 2 or d.ndim != 2 or d.shape[1] != 2:
        raise ValueError(f"samples_vs_data needs (N, 2) arrays, got {s.shape} and {d.shape}")
    xlim, ylim = _limits(s, d)
    fig, axes = _figure(2, 2)
    for col, (name, pts, color) in enumerate([("data", d, "tab:blue"), ("samples", s, "tab:orange")]):
        ax = axes[0, col]
        ax.scatter(pts[:, 0], pts[:, 1], s=1.5, alpha=0.5, color=color, linewidths=0)
        ax.set_xlim(*xlim), ax.set_ylim(*ylim), ax.set_aspect("equal")
        ax.set_title(f"{name} (n={len(pts)})")
        axes[1, col].hist2d(pts[:, 0], pts[:, 1], bins=bins, range=[xlim, ylim], cmap="magma")
        axes[1, col].set_aspect("equal")
        axes[1, col].set_title(f"{name} density")
    if title:
        fig.suptitle(title)
    return _save(fig, path)


def trajectories(paths, path, *, data=None, title: str = "PF-ODE trajectories", max_paths: int = 64) -> Path:
    """Plot 2-D sampling trajectories.

    Args:
        paths: (T, N, 2) states along the solve (first index = step), as gathered by a sampler
            callback; the start points are marked grey, the ends black.
    """
    p = _np(paths)
    if p.ndim != 3 or p.shape[2] != 2:
        raise ValueError(f"trajectories needs a (T, N, 2) array, got {p.shape}")
    p = p[:, :max_paths]
    fig, axes = _figure(1, 1, size=5.0)
    ax = axes[0, 0]
    if data is not None:
        d = _np(data)
        ax.scatter(d[:, 0], d[:, 1], s=1, alpha=0.2, color="tab:blue", linewidths=0, label="data")
    for i in range(p.shape[1]):
        ax.plot(p[:, i, 0], p[:, i, 1], lw=0.6, alpha=0.7, color="tab:orange")
    ax.scatter(p[-1, :, 0], p[-1, :, 1], s=6, color="black", zorder=3, label="end")
    ax.set_title(title)
    ax.legend(loc="upper right", fontsize=7)
    return _save(fig, path)


def image_grid(images, path, *, nrow: Optional[int] = None, value_range=(-1.0, 1.0), labels=None, title: str = "") -> Path:
    """A grid of images (N, C, H, W) with C in {1, 3}, values in ``value_range``."""
    x = _np(images)
    if x.ndim != 4 or x.shape[1] not in (1, 3):
        raise ValueError(f"image_grid needs (N, C, H, W) with C in (1, 3), got {x.shape}")
    lo, hi = value_range
    x = np.clip((x - lo) / (hi - lo), 0, 1)
    n = x.shape[0]
    nrow = nrow or int(math.ceil(math.sqrt(n)))
    ncol = int(math.ceil(n / nrow))
    fig, axes = _figure(nrow, ncol, size=1.0)
    for i, ax in enumerate(axes.flat):
        ax.axis("off")
        if i < n:
            img = x[i].transpose(1, 2, 0)
            ax.imshow(img[..., 0] if img.shape[2] == 1 else img, cmap="gray" if img.shape[2] == 1 else None, vmin=0, vmax=1)
            if labels is not None:
                ax.set_title(str(int(labels[i])), fontsize=6)
    if title:
        fig.suptitle(title)
    return _save(fig, path)


def tile_images(images, *, nrow: Optional[int] = None, pad: int = 1, value_range=(-1.0, 1.0)) -> np.ndarray:
    """(N, C, H, W) images → one (rows·(H+pad), cols·(W+pad)[, 3]) array for ``imshow``, padded
    with the low end of ``value_range`` (C = 1: a 2-D array; C = 3: channels last)."""
    x = _np(images)
    if x.ndim != 4 or x.shape[1] not in (1, 3):
        raise ValueError(f"tile_images needs (N, C, H, W) with C in (1, 3), got {x.shape}")
    n, c, h, w = x.shape
    nrow = nrow or int(math.ceil(math.sqrt(n)))
    ncol = int(math.ceil(n / nrow))
    out = np.full((c, nrow * (h + pad) - pad, ncol * (w + pad) - pad), value_range[0], dtype=np.float64)
    for i in range(n):
        r, q = divmod(i, ncol)
        out[:, r * (h + pad) : r * (h + pad) + h, q * (w + pad) : q * (w + pad) + w] = x[i]
    return out[0] if c == 1 else out.transpose(1, 2, 0)


def loss_curves(csv_path, path, *, keys: Optional[Sequence[str]] = None, smooth: int = 20) -> Path:
    """Plot the training curves logged to ``metrics.csv`` by the trainer (moving average of ``smooth``)."""
    csv_path = Path(csv_path)
    if not csv_path.is_file():
        raise FileNotFoundError(f"no training log at {csv_path}")
    with csv_path.open() as f:
        rows = list(csv.DictReader(f))
    if not rows:
        raise ValueError(f"{csv_path} holds no rows")
    keys = list(keys or [k for k in rows[0] if "loss" in k.split("/")[-1]])
    if not keys:
        raise ValueError(f"{csv_path} has no loss columns (columns: {list(rows[0])})")
    fig, axes = _figure(1, 1, size=5.0)
    ax = axes[0, 0]
    for k in keys:
        pts = [(float(r["step"]), float(r[k])) for r in rows if r.get(k) not in (None, "")]
        if not pts:
            continue
        steps, vals = map(np.asarray, zip(*pts))
        if smooth > 1 and len(vals) > smooth:
            kernel = np.ones(smooth) / smooth
            vals = np.convolve(vals, kernel, mode="valid")
            steps = steps[smooth - 1 :]
        ax.plot(steps, vals, label=k)
    ax.set_xlabel("step"), ax.set_ylabel("loss"), ax.set_yscale("log")
    ax.legend()
    return _save(fig, path)


def error_vs_nfe(results: Mapping[str, Mapping[int, float]], path, *, ylabel: str = "RMS error", floor: Optional[float] = None, title: str = "") -> Path:
    """Log-log plot of an error against NFE, one line per method: results[method][nfe] = error."""
    fig, axes = _figure(1, 1, size=5.5)
    ax = axes[0, 0]
    for method, curve in results.items():
        nfes = sorted(curve)
        ax.plot(nfes, [curve[n] for n in nfes], marker="o", label=method)
    if floor is not None:
        ax.axhline(floor, color="grey", ls="--", label="floor")
    ax.set_xscale("log"), ax.set_yscale("log")
    ax.set_xlabel("NFE"), ax.set_ylabel(ylabel)
    if title:
        ax.set_title(title)
    ax.legend(fontsize=7)
    return _save(fig, path)
