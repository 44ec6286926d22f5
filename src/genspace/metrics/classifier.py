"""A small CNN classifier that genspace trains itself, as the feature space of image metrics.

FID and KID (Heusel et al. 2017; Bińkowski et al. 2018) measure distances in the feature space
of a classifier trained on the data: the Inception-v3 pool features for natural images. For small
data sets (8×8 digits, MNIST, CIFAR at toy scale) genspace trains its own classifier on the same
data set instead, so no weights are downloaded; the numbers compare models *within genspace*, not
with published FIDs.

Architecture (any (C, H, W); about 55k parameters with the defaults)::

    x (N, C, H, W) in [−1, 1]
    → conv 3×3 (C → c1) → GELU → max-pool 2×2 (when H, W ≥ 2)
    → conv 3×3 (c1 → c2) → GELU → global average pool          (N, c2)
    → linear (c2 → F) → GELU                                   (N, F)  = features
    → linear (F → n_classes)                                   (N, n_classes) = logits

The features are the penultimate layer, as Inception's 2048-d pool features are for FID.

Files: :meth:`FeatureClassifier.save` writes a folder with ``model.safetensors`` (the weights)
and ``config.json`` (architecture and training hyperparameters); :meth:`FeatureClassifier.load`
reads it back without unpickling anything. :func:`get_classifier` trains once per cache name and
reuses the folder afterwards.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Optional, Union

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["ClassifierConfig", "FeatureClassifier", "train_classifier", "get_classifier"]

PathLike = Union[str, os.PathLike]

_FORMAT = "genspace.FeatureClassifier"
_VERSION = 1
_WEIGHTS = "model.safetensors"
_CONFIG = "config.json"
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]*$")


@dataclass(frozen=True)
class ClassifierConfig:
    """Architecture of :class:`FeatureClassifier`."""

    in_channels: int  # C of the images
    height: int  # H of the images (inputs must match it)
    width: int  # W of the images
    n_classes: int  # number of classes (labels in 0..n_classes−1)
    conv1_channels: int = 32  # c1: channels of the first 3×3 convolution
    conv2_channels: int = 128  # c2: channels of the second 3×3 convolution (pooled globally)
    feature_dim: int = 128  # F: width of the penultimate layer (the metric features)

    def __post_init__(self) -> None:
        for f in fields(self):
            v = getattr(self, f.name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ValueError(f"ClassifierConfig.{f.name} must be a positive integer, got {v!r}")
        if self.n_classes < 2:
            raise ValueError(f"ClassifierConfig.n_classes must be >= 2, got {self.n_classes}")


class FeatureClassifier(nn.Module):
    """CNN classifier whose penultimate layer serves as a feature space (see the module doc).

    ``forward(x)`` returns logits with autograd (for training); :meth:`features`, :meth:`logits`
    and :meth:`predict` run without gradients in batches. ``training_info`` records how the
    weights were trained (hyperparameters and a fingerprint of the data); it is saved with them.
    """

    def __init__(self, config: ClassifierConfig, training_info: Optional[dict] = None) -> None:
        super().__init__()
        self.config = config
        self.training_info = dict(training_info) if training_info is not None else None
        c = config
        self.conv1 = nn.Conv2d(c.in_channels, c.conv1_channels, 3, padding=1)
        self.conv2 = nn.Conv2d(c.conv1_channels, c.conv2_channels, 3, padding=1)
        self.fc = nn.Linear(c.conv2_channels, c.feature_dim)
        self.head = nn.Linear(c.feature_dim, c.n_classes)

    # ------------------------------------------------------------------ network
    def _features(self, x: torch.Tensor) -> torch.Tensor:
        h = F.gelu(self.conv1(x))  # (N, c1, H, W)
        if h.shape[-1] >= 2 and h.shape[-2] >= 2:
            h = F.max_pool2d(h, 2, ceil_mode=True)  # (N, c1, ⌈H/2⌉, ⌈W/2⌉)
        h = F.gelu(self.conv2(h))  # (N, c2, H', W')
        h = h.mean(dim=(-2, -1))  # (N, c2) global average pool
        return F.gelu(self.fc(h))  # (N, F)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits (N, n_classes) with autograd; x (N, C, H, W) in [−1, 1]."""
        return self.head(self._features(x))

    # ------------------------------------------------------------------ inference
    def check_images(self, x: torch.Tensor, name: str = "images") -> torch.Tensor:
        """Validate a batch (N, C, H, W) of floating images against the configured shape."""
        if not isinstance(x, torch.Tensor):
            raise ValueError(f"{name} must be a torch.Tensor (N, C, H, W), got {type(x).__name__}")
        c = self.config
        expected = (c.in_channels, c.height, c.width)
        if x.ndim != 4 or tuple(x.shape[1:]) != expected:
            raise ValueError(
                f"{name} must have shape (N, {c.in_channels}, {c.height}, {c.width}) for this classifier, "
                f"got {tuple(x.shape)}"
            )
        if not x.dtype.is_floating_point:
            raise ValueError(
                f"{name} must be floating images in [-1, 1], got dtype {x.dtype}; "
                "convert integer levels with genspace.data.images.to_unit_range"
            )
        return x

    def _batched(self, fn, x: torch.Tensor, batch_size: int) -> torch.Tensor:
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
        self.check_images(x)
        p = next(self.parameters())
        if x.shape[0] == 0:
            raise ValueError(f"need at least one image, got shape {tuple(x.shape)}")
        with torch.no_grad():
            chunks = [x[start : start + batch_size] for start in range(0, x.shape[0], batch_size)]
            return torch.cat([fn(chunk.to(device=p.device, dtype=p.dtype)) for chunk in chunks])

    def features(self, x: torch.Tensor, batch_size: int = 1024) -> torch.Tensor:
        """Penultimate-layer features (N, F), float32, without gradients."""
        return self._batched(self._features, x, batch_size)

    def logits(self, x: torch.Tensor, batch_size: int = 1024) -> torch.Tensor:
        """Logits (N, n_classes), without gradients."""
        return self._batched(self.forward, x, batch_size)

    def predict(self, x: torch.Tensor, batch_size: int = 1024) -> torch.Tensor:
        """Predicted labels (N,) int64."""
        return self.logits(x, batch_size).argmax(dim=1)

    # ------------------------------------------------------------------ files
    def save(self, path: PathLike) -> Path:
        """Write ``path/model.safetensors`` and ``path/config.json`` (the config written last)."""
        from safetensors.torch import save_file

        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        state = {k: v.detach().to("cpu").contiguous().clone() for k, v in self.state_dict().items()}
        tmp = path / (_WEIGHTS + ".tmp")
        save_file(state, str(tmp))
        os.replace(tmp, path / _WEIGHTS)
        meta = {
            "format": _FORMAT,
            "version": _VERSION,
            "config": asdict(self.config),
            "training": self.training_info,
        }
        tmp = path / (_CONFIG + ".tmp")
        tmp.write_text(json.dumps(meta, indent=2))
        os.replace(tmp, path / _CONFIG)
        return path

    @classmethod
    def load(cls, path: PathLike, map_location: Union[str, torch.device] = "cpu") -> "FeatureClassifier":
        """Read a folder written by :meth:`save` (safetensors + JSON; nothing is unpickled)."""
        from safetensors.torch import load_file

        path = Path(path)
        cfg_file, weights = path / _CONFIG, path / _WEIGHTS
        if not cfg_file.is_file() or not weights.is_file():
            raise FileNotFoundError(
                f"no saved classifier at {str(path)!r}: expected the folder to hold {_CONFIG} and {_WEIGHTS}"
            )
        try:
            meta = json.loads(cfg_file.read_text())
        except json.JSONDecodeError as err:
            raise ValueError(f"{str(cfg_file)!r} is not valid JSON ({err})") from None
        if not isinstance(meta, dict) or meta.get("format") != _FORMAT:
            raise ValueError(f"{str(cfg_file)!r} is not a {_FORMAT} config (format {meta.get('format')!r})")
        if meta.get("version") != _VERSION:
            raise ValueError(f"{str(cfg_file)!r}: unsupported version {meta.get('version')!r}, expected {_VERSION}")
        raw = meta.get("config")
        known = {f.name for f in fields(ClassifierConfig)}
        if not isinstance(raw, dict) or set(raw) - known:
            bad = sorted(set(raw) - known) if isinstance(raw, dict) else raw
            raise ValueError(f"{str(cfg_file)!r}: bad config entries {bad!r}; known fields: {sorted(known)}")
        try:
            config = ClassifierConfig(**raw)
        except TypeError as err:  # a required field is missing
            raise ValueError(f"{str(cfg_file)!r}: incomplete config ({err}); known fields: {sorted(known)}") from None
        model = cls(config, training_info=meta.get("training"))
        state = load_file(str(weights), device=str(map_location))
        try:
            model.load_state_dict(state, strict=True)
        except RuntimeError as err:
            raise ValueError(f"{str(weights)!r} does not match the config in {str(cfg_file)!r}: {err}") from None
        return model.to(map_location).eval()


# ---------------------------------------------------------------------- training
def _check_data(images: torch.Tensor, labels: torch.Tensor, n_classes: int) -> None:
    if not isinstance(images, torch.Tensor) or images.ndim != 4 or not images.dtype.is_floating_point:
        desc = f"{images.dtype} {tuple(images.shape)}" if isinstance(images, torch.Tensor) else type(images).__name__
        raise ValueError(f"images must be a floating tensor (N, C, H, W) in [-1, 1], got {desc}")
    if not isinstance(labels, torch.Tensor) or labels.shape != (images.shape[0],) or labels.dtype.is_floating_point:
        desc = f"{labels.dtype} {tuple(labels.shape)}" if isinstance(labels, torch.Tensor) else type(labels).__name__
        raise ValueError(f"labels must be an integer tensor of shape ({images.shape[0]},), got {desc}")
    if isinstance(n_classes, bool) or not isinstance(n_classes, int) or n_classes < 2:
        raise ValueError(f"n_classes must be an integer >= 2, got {n_classes!r}")
    if labels.numel() and (int(labels.min()) < 0 or int(labels.max()) >= n_classes):
        raise ValueError(
            f"labels must lie in 0..{n_classes - 1} for n_classes={n_classes}, "
            f"got min {int(labels.min())}, max {int(labels.max())}"
        )
    if images.shape[0] < 2:
        raise ValueError(f"need at least 2 training images, got {images.shape[0]}")


def _init_parameters(model: nn.Module, generator: torch.Generator) -> None:
    """He-uniform weights (bound √(6/fan_in)) and zero biases, drawn from ``generator``."""
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, (nn.Conv2d, nn.Linear)):
                fan_in = module.weight[0].numel()
                bound = math.sqrt(6.0 / fan_in)
                u = torch.rand(module.weight.shape, generator=generator, dtype=torch.float64)
                module.weight.copy_((2 * u - 1) * bound)
                module.bias.zero_()
        # a small last layer: initial logits near 0 (uniform predictions)
        model.head.weight.mul_(0.1)


def _random_shift(x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Translate each image by (dy, dx) ∈ {−1, 0, 1}², edges replicated."""
    n, c, h, w = x.shape
    padded = F.pad(x, (1, 1, 1, 1), mode="replicate")  # (N, C, H+2, W+2)
    offsets = torch.randint(0, 3, (2, n), generator=generator).to(x.device)
    rows = offsets[0][:, None] + torch.arange(h, device=x.device)  # (N, H)
    cols = offsets[1][:, None] + torch.arange(w, device=x.device)  # (N, W)
    idx_n = torch.arange(n, device=x.device)[:, None, None, None]
    idx_c = torch.arange(c, device=x.device)[None, :, None, None]
    return padded[idx_n, idx_c, rows[:, None, :, None], cols[:, None, None, :]]  # (N, C, H, W)


def train_classifier(
    images: torch.Tensor,
    labels: torch.Tensor,
    *,
    n_classes: int,
    steps: int = 500,
    batch_size: int = 64,
    lr: float = 3e-3,
    seed: int = 0,
    augment: bool = False,
    conv1_channels: int = 32,
    conv2_channels: int = 128,
    feature_dim: int = 128,
) -> FeatureClassifier:
    """Train a :class:`FeatureClassifier` with Adam and a cosine learning-rate decay.

    Deterministic given ``seed`` (weights, batch order and augmentation all come from one
    ``torch.Generator``; global RNG state is neither used nor changed). Mini-batches are drawn by
    shuffling the data once per epoch. The learning rate at step i is lr·½(1 + cos(π i/steps)).

    Args:
        images: (N, C, H, W) floating images in [−1, 1] (e.g. ``to_unit_range(digits, 17)``).
        labels: (N,) integer labels in 0..n_classes−1.
        n_classes: number of classes.
        steps: optimizer steps.
        batch_size: images per step (capped at N).
        lr: peak Adam learning rate.
        seed: seed of the generator.
        augment: translate training images by up to one pixel (edges replicated).
        conv1_channels, conv2_channels, feature_dim: architecture (see :class:`ClassifierConfig`).

    Returns:
        the trained classifier in eval mode on the images' device, with ``training_info``.
    """
    _check_data(images, labels, n_classes)
    for name, v in (("steps", steps), ("batch_size", batch_size), ("seed", seed)):
        if isinstance(v, bool) or not isinstance(v, int) or v < (0 if name == "seed" else 1):
            raise ValueError(f"{name} must be a {'non-negative' if name == 'seed' else 'positive'} integer, got {v!r}")
    if not (isinstance(lr, (int, float)) and not isinstance(lr, bool) and math.isfinite(lr) and lr > 0):
        raise ValueError(f"lr must be a positive finite number, got {lr!r}")
    if not isinstance(augment, bool):
        raise ValueError(f"augment must be True or False, got {augment!r}")
    n, c, h, w = images.shape
    config = ClassifierConfig(c, h, w, n_classes, conv1_channels, conv2_channels, feature_dim)
    info = {
        "steps": steps,
        "batch_size": batch_size,
        "lr": float(lr),
        "seed": seed,
        "augment": augment,
        "n_train": n,
        "data_sha256": data_fingerprint(images, labels),
    }
    generator = torch.Generator().manual_seed(seed)
    model = FeatureClassifier(config, training_info=info)
    _init_parameters(model, generator)
    device = images.device
    model.to(device).train()
    x_all = images.to(torch.float32)
    y_all = labels.to(device=device, dtype=torch.int64)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    bs = min(batch_size, n)
    order, pos = torch.randperm(n, generator=generator), 0
    for step in range(steps):
        if pos + bs > n:
            order, pos = torch.randperm(n, generator=generator), 0
        idx = order[pos : pos + bs].to(device)
        pos += bs
        x, y = x_all[idx], y_all[idx]
        if augment:
            x = _random_shift(x, generator)
        for group in opt.param_groups:
            group["lr"] = lr * 0.5 * (1.0 + math.cos(math.pi * step / steps))
        loss = F.cross_entropy(model(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return model.eval()


def data_fingerprint(images: torch.Tensor, labels: torch.Tensor) -> str:
    """SHA-256 of the images (as float32) and labels (as int64) with their shapes."""
    digest = hashlib.sha256()
    digest.update(repr((tuple(images.shape), tuple(labels.shape))).encode())
    digest.update(images.detach().to("cpu", torch.float32).contiguous().numpy().tobytes())
    digest.update(labels.detach().to("cpu", torch.int64).contiguous().numpy().tobytes())
    return digest.hexdigest()


def get_classifier(
    name: str,
    images: torch.Tensor,
    labels: torch.Tensor,
    cache_dir: PathLike,
    *,
    n_classes: Optional[int] = None,
    **train_options,
) -> FeatureClassifier:
    """The classifier cached as ``cache_dir/name``: trained once, loaded on later calls.

    On the first call :func:`train_classifier` runs on (images, labels) with ``train_options``
    and the result is saved; later calls load the folder and check that it was trained on the
    same data (SHA-256 fingerprint) with the same options, raising ValueError otherwise (delete
    the folder or use another name to retrain).

    Args:
        name: cache entry, a plain file name (letters, digits, ``_ . -``), e.g. ``"digits"``.
        images, labels: training data as for :func:`train_classifier`.
        cache_dir: folder holding the cache entries (created if missing).
        n_classes: number of classes (default: max(labels) + 1).
        **train_options: steps, batch_size, lr, seed, augment, architecture widths.
    """
    if not isinstance(name, str) or not _NAME.match(name):
        raise ValueError(f"name must be a plain file name of letters, digits, '_', '.', '-', got {name!r}")
    if n_classes is None:
        if not isinstance(labels, torch.Tensor) or labels.numel() == 0:
            raise ValueError("labels must be a non-empty integer tensor to infer n_classes")
        n_classes = int(labels.max()) + 1
    path = Path(cache_dir) / name
    if (path / _CONFIG).is_file():
        model = FeatureClassifier.load(path, map_location=images.device)
        _check_cached(model, path, images, labels, n_classes, train_options)
        return model
    model = train_classifier(images, labels, n_classes=n_classes, **train_options)
    model.save(path)
    return model


def _check_cached(model, path, images, labels, n_classes, train_options) -> None:
    info = model.training_info or {}
    if model.config.n_classes != n_classes:
        raise ValueError(
            f"cached classifier {str(path)!r} has n_classes={model.config.n_classes}, asked for {n_classes}; "
            "delete the folder or use another name"
        )
    if info.get("data_sha256") != data_fingerprint(images, labels):
        raise ValueError(
            f"cached classifier {str(path)!r} was trained on different data (fingerprint mismatch); "
            "delete the folder or use another name"
        )
    arch = {"conv1_channels", "conv2_channels", "feature_dim"}
    for key, value in train_options.items():
        stored = getattr(model.config, key) if key in arch else info.get(key)
        if stored != value:
            raise ValueError(
                f"cached classifier {str(path)!r} was trained with {key}={stored!r}, asked for {value!r}; "
                "delete the folder or use another name"
            )
