"""Experiments: the typed configuration of a run and the functions that carry it out.

A run is ``ExperimentConfig`` → data (:func:`load_data`) → model (:func:`build_model`, by model
family) → the shared :class:`~genspace.train.Trainer` → checkpoints → :func:`from_pretrained`,
:func:`sample_model` and :func:`evaluate_model`. The CLI (``genspace train|sample|eval|demo``)
is a thin shell over these functions, so everything it does can be done from Python.

Model families plug in with :func:`register_family`: a config dataclass registered as a variant
of the ``model`` section (tag key ``family``) and a builder ``build(cfg, data) -> nn.Module``
that returns a model implementing the trainer protocol (``losses``) and ``sample``.
"""

from __future__ import annotations

import dataclasses
import json
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Literal, Optional, Union

import torch
from torch import nn

from genspace.config import from_dict, register_variant, to_dict, variant_field
from genspace.train import EMAConfig, TrainConfig

# ----------------------------------------------------------------------------- configuration


@dataclass
class DataConfig:
    name: str = "8gaussians"  # a 2-D toy (genspace.data.toy_names()); digits, mnist, fashion-mnist, cifar10, folder, numpy; token sources markov, copy, reverse, brackets; text, hf
    path: Optional[str] = None  # local file or folder for mnist, fashion-mnist, cifar10, folder, numpy; text: a file, folder or glob; hf: a saved dataset or a local file
    n_train: int = 20_000  # training points / sequences drawn from a 2-D toy or a token source (file-based sets use all they hold)
    n_eval: int = 2_000  # held-out points / sequences for the metrics (two independent sets: reference and floor)
    seed: int = 0  # seed of the draws and of the held-out split
    labels: bool = False  # keep class labels (class-conditional training)
    length: int = 64  # tokens per sequence (token sources, text, hf)
    n_symbols: int = 8  # token sources: alphabet size K (brackets: bracket types)
    order: int = 2  # markov: order k of the chain
    source_seed: int = 0  # markov: seed of the random transition tables (the source itself, not the draws)
    concentration: float = 0.5  # markov: Dirichlet concentration of the transition rows (small: low entropy)
    tokenizer: str = "char"  # text, hf: byte, char, bpe (trained on the corpus), char:<vocab.json>, bpe:<tokenizer.json>
    vocab_size: int = 1024  # text, hf with tokenizer=bpe: total vocabulary (specials included)
    text_mode: Literal["pack", "pad"] = "pack"  # text, hf: documents packed with EOS into rows, or one padded row per document (loss mask)
    text_field: str = "text"  # hf: the column holding the text


@register_variant("net", "mlp", tag_key="kind")
@dataclass
class MLPConfig:
    """genspace.nets.TimeMLP on flattened examples (2-D toys, small images)."""

    hidden: int = 256  # width of the residual stream
    depth: int = 4  # residual blocks
    time_embedding: Literal["fourier", "sinusoidal"] = "fourier"  # noise-level features
    embed_dim: int = 128  # size of the raw noise-level features


@register_variant("net", "unet", tag_key="kind")
@dataclass
class UNetConfig:
    """genspace.nets.UNet (DDPM/ADM line) for images."""

    base_channels: int = 32  # channels at full resolution
    channel_mults: tuple[int, ...] = (1, 2)  # channel multiplier per resolution level
    num_res_blocks: int = 1  # residual blocks per level
    attn_resolutions: tuple[int, ...] = (2,)  # downsampling factors 2^level with self-attention
    num_heads: int = 4  # attention heads
    dropout: float = 0.0  # dropout in residual blocks


@register_variant("net", "dit", tag_key="kind")
@dataclass
class DiTConfig:
    """genspace.nets.DiT (adaLN-Zero, 2-D sin-cos positions, QK-norm) for images."""

    patch_size: int = 2  # pixels per patch side
    hidden: int = 96  # token width
    depth: int = 4  # transformer blocks
    num_heads: int = 4  # attention heads
    mlp_ratio: float = 4.0  # MLP width / token width
    qk_norm: bool = True  # RMSNorm on queries and keys (SD3)


@register_variant("model", "diffusion")
@dataclass
class DiffusionConfig:
    """A continuous diffusion / flow model: the axes of Karras et al. 2022's design space."""

    process: str = "edm"  # vp, ve, edm, cosine, flow, ddpm-linear, ddpm-cosine
    parameterization: str = "edm"  # what the net predicts: eps, x0, v, velocity, edm
    loss: str = "edm"  # noise-level distribution × weighting recipe (genspace.continuous.losses.loss_names())
    sigma_data: float = 0.5  # data std for EDM preconditioning and weighting
    label_dropout: float = 0.1  # class-conditional only: p(label → null class), for guidance
    net: Any = variant_field("net", default="mlp")  # the network (architecture only): net.kind = mlp | unet | dit


@dataclass
class SampleConfig:
    method: str = "heun"  # a sampler of genspace.sampling.methods()
    nfe: int = 35  # denoiser calls per sample
    grid: str = "karras"  # step grid (genspace.sampling.grids.grid_names())
    n: int = 2_000  # samples for figures and metrics
    seed: int = 0  # sample i uses seed `seed * 1_000_003 + i` (independent of the batch size)
    sigma_min: Optional[float] = None  # None: the model's default range
    sigma_max: Optional[float] = None  # None: the model's default range
    guidance: float = 1.0  # classifier-free guidance scale w (1: plain conditional)
    batch_size: int = 4_096  # samples per sampler call


@dataclass
class ExperimentConfig:
    name: str = "run"  # a label for logs and tables
    data: DataConfig = field(default_factory=DataConfig)
    model: Any = variant_field("model", default="diffusion")  # model.family selects the family
    train: TrainConfig = field(default_factory=TrainConfig)
    sample: SampleConfig = field(default_factory=SampleConfig)


def load_config(path: Union[str, Path], overrides: tuple[str, ...] = ()) -> ExperimentConfig:
    """Read a YAML recipe and apply dotted overrides (``train.lr=3e-4``)."""
    from genspace.config import apply_overrides, load_yaml

    cfg = load_yaml(path, ExperimentConfig)
    return apply_overrides(cfg, list(overrides)) if overrides else cfg


# ----------------------------------------------------------------------------- data

TOY_DIM = 2


@dataclass
class DataBundle:
    """Tensors of a run: training set, two independent held-out sets, and what is known."""

    train: tuple[torch.Tensor, ...]  # (x,) or (x, labels)
    reference: torch.Tensor  # (n_eval, ...) held-out data, the metrics' reference set
    heldout: torch.Tensor  # (n_eval, ...) a second held-out set (the floor)
    shape: tuple[int, ...]  # per-example shape
    kind: Literal["points", "images", "tokens"]
    n_classes: Optional[int] = None
    log_prob: Optional[Callable[[torch.Tensor], torch.Tensor]] = None  # exact data density, if known
    n_levels: Optional[int] = None  # grey levels of image data (for bits/dim)
    tokenizer: Any = None  # token data: the tokenizer or source defining the ids (vocab_size, n_data_tokens, mask_id, decode)
    source: Any = None  # token data from a synthetic source: its exact log_prob and entropy


def _toy_bundle(cfg: DataConfig) -> DataBundle:
    from genspace.data import make_toy, toy_density

    g = torch.Generator().manual_seed(cfg.seed)
    train = make_toy(cfg.name, cfg.n_train, generator=g)
    reference = make_toy(cfg.name, cfg.n_eval, generator=g)
    heldout = make_toy(cfg.name, cfg.n_eval, generator=g)
    log_prob = None
    try:
        density = toy_density(cfg.name)
        log_prob = lambda x: density.log_prob(x.double())  # noqa: E731
    except ValueError:
        pass
    return DataBundle((train,), reference, heldout, (TOY_DIM,), "points", None, log_prob)


def _image_bundle(cfg: DataConfig) -> DataBundle:
    from genspace.data import DIGITS_LEVELS, load_cifar10, load_digits, load_image_folder, load_mnist, to_unit_range

    needs_path = {"mnist", "fashion-mnist", "cifar10", "folder"}
    if cfg.name in needs_path and not cfg.path:
        raise ValueError(f"data.name={cfg.name!r} reads local files: set data.path to the folder that holds them")
    if cfg.name == "digits":
        data, levels = load_digits(), DIGITS_LEVELS
    elif cfg.name in ("mnist", "fashion-mnist"):
        data, levels = load_mnist(cfg.path), 256
    elif cfg.name == "cifar10":
        data, levels = load_cifar10(cfg.path), 256
    else:
        data, levels = load_image_folder(cfg.path), 256
    x = to_unit_range(data.images, levels)
    labels = data.labels
    ref, held = _reference_halves(x, cfg)
    n_classes = int(labels.max()) + 1 if cfg.labels else None
    train = (x, labels) if cfg.labels else (x,)
    return DataBundle(train, ref, held, tuple(x.shape[1:]), "images", n_classes, None, levels)


def _reference_halves(x: torch.Tensor, cfg: DataConfig) -> tuple[torch.Tensor, torch.Tensor]:
    """Two disjoint random subsets of a finite data set (reference and floor), up to n_eval each.

    As with FID, samples are compared with the training distribution itself; the floor is the
    metric between two disjoint real subsets of the same size.
    """
    n_hold = min(cfg.n_eval, x.shape[0] // 2)
    perm = torch.randperm(x.shape[0], generator=torch.Generator().manual_seed(cfg.seed))
    return x[perm[:n_hold]], x[perm[n_hold : 2 * n_hold]]


def _numpy_bundle(cfg: DataConfig) -> DataBundle:
    from genspace.data import load_numpy

    if not cfg.path:
        raise ValueError("data.name='numpy' needs data.path (a .npy file or a .npz with arrays x [and labels])")
    loaded = load_numpy(cfg.path)
    if isinstance(loaded, dict):
        if "x" not in loaded:
            raise ValueError(f"{cfg.path} must hold an array named 'x' (found {sorted(loaded)})")
        x, labels = loaded["x"], loaded.get("labels")
    else:
        x, labels = loaded, None
    x = x.float()
    if x.ndim < 2 or x.shape[0] < 8:
        raise ValueError(f"{cfg.path}: need an array of shape (N, ...) with N >= 8, got {tuple(x.shape)}")
    ref, held = _reference_halves(x, cfg)
    use_labels = cfg.labels and labels is not None
    train = (x, labels.long()) if use_labels else (x,)
    kind = "images" if x.ndim == 4 else "points"
    n_classes = int(labels.max()) + 1 if use_labels else None
    return DataBundle(train, ref, held, tuple(x.shape[1:]), kind, n_classes)


TOKEN_SOURCES = ("markov", "copy", "reverse", "brackets")
TEXT_SETS = ("text", "hf")


def _source_bundle(cfg: DataConfig) -> DataBundle:
    """Sequences of a synthetic source with an exactly known log-probability and entropy."""
    from genspace.data.sources import get_source

    if cfg.name == "markov":
        source = get_source("markov", n_symbols=cfg.n_symbols, order=cfg.order, seed=cfg.source_seed, concentration=cfg.concentration)
    elif cfg.name == "brackets":
        source = get_source("brackets", n_types=cfg.n_symbols)
    else:
        source = get_source(cfg.name, n_symbols=cfg.n_symbols)
    g = torch.Generator().manual_seed(cfg.seed)
    train = source.sample(cfg.n_train, cfg.length, generator=g)
    reference = source.sample(cfg.n_eval, cfg.length, generator=g)
    heldout = source.sample(cfg.n_eval, cfg.length, generator=g)
    return DataBundle((train,), reference, heldout, (cfg.length,), "tokens", None, source.log_prob, tokenizer=source, source=source)


def _text_bundle(cfg: DataConfig, tokenizer=None) -> DataBundle:
    """A local text corpus (files or a local HF dataset) as fixed-length token rows.

    The rows are split at random into training rows and two held-out sets of up to ``n_eval``
    rows each (at most a fifth of the rows each), never trained on. ``tokenizer`` (a saved one,
    when a run is reloaded) replaces building the tokenizer from ``cfg.tokenizer``.
    """
    from genspace.data.text import get_tokenizer, load_hf_dataset, load_text_files, tokenize_corpus

    if not cfg.path:
        raise ValueError(f"data.name={cfg.name!r} reads local files: set data.path (a text file, folder or glob; hf: a saved dataset or a local .txt/.json/.csv)")
    docs = load_text_files(cfg.path) if cfg.name == "text" else load_hf_dataset(cfg.path, text_field=cfg.text_field)
    tok = tokenizer if tokenizer is not None else get_tokenizer(cfg.tokenizer, texts=docs, vocab_size=cfg.vocab_size)
    data = tokenize_corpus(docs, tok, cfg.length, mode=cfg.text_mode)
    n = len(data.tokens)
    n_hold = min(cfg.n_eval, n // 5)
    if n_hold < 2:
        raise ValueError(f"{cfg.path}: {n} rows of {cfg.length} tokens are too few for a train / held-out split (need >= 10; lower data.length or add text)")
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(cfg.seed))
    ref, held, rest = perm[:n_hold], perm[n_hold : 2 * n_hold], perm[2 * n_hold :]
    train = (data.tokens[rest],) if data.valid is None else (data.tokens[rest], data.valid[rest])
    return DataBundle(train, data.tokens[ref], data.tokens[held], (cfg.length,), "tokens", tokenizer=tok)


def load_data(cfg: DataConfig, *, tokenizer=None) -> DataBundle:
    """Build the data of a run (nothing is downloaded: file-based sets read ``cfg.path``).

    ``tokenizer``: text data only, a tokenizer to use instead of building one (a reloaded run's).
    """
    from genspace.data import toy_names

    if cfg.n_eval < 2 or cfg.n_train < 2:
        raise ValueError(f"data.n_train and data.n_eval must be >= 2, got {cfg.n_train} and {cfg.n_eval}")
    if cfg.name in toy_names():
        return _toy_bundle(cfg)
    if cfg.name in ("digits", "mnist", "fashion-mnist", "cifar10", "folder"):
        return _image_bundle(cfg)
    if cfg.name == "numpy":
        return _numpy_bundle(cfg)
    if cfg.name in TOKEN_SOURCES:
        return _source_bundle(cfg)
    if cfg.name in TEXT_SETS:
        return _text_bundle(cfg, tokenizer)
    choices = toy_names() + ["digits", "mnist", "fashion-mnist", "cifar10", "folder", "numpy", *TOKEN_SOURCES, *TEXT_SETS]
    raise ValueError(f"unknown data set data.name={cfg.name!r}; choose one of {choices}")


# ----------------------------------------------------------------------------- model families

_BUILDERS: dict[type, Callable[[Any, DataBundle], nn.Module]] = {}


def register_family(config_cls: type, build: Callable[[Any, DataBundle], nn.Module]) -> None:
    """Make a model section of type ``config_cls`` build with ``build(cfg, data)``.

    ``config_cls`` must also be registered with ``genspace.config.register_variant("model", tag)``
    so that ``model: {family: <tag>, ...}`` parses into it.
    """
    _BUILDERS[config_cls] = build


def _time_scale(process: str) -> float:
    """Factor from a process's own time to the ~[0, 1000] range the sinusoidal features expect."""
    return 1.0 if process.startswith("ddpm") else 1000.0


def build_net(cfg: Any, shape: tuple[int, ...], n_classes: Optional[int], process: str) -> nn.Module:
    """The network of ``cfg`` (MLPConfig, UNetConfig or DiTConfig) for examples of ``shape``."""
    from genspace.nets.dit import DiT
    from genspace.nets.mlp import TimeMLP
    from genspace.nets.unet import UNet

    if isinstance(cfg, MLPConfig):
        dim = int(math.prod(shape))
        mlp = TimeMLP(dim, cfg.hidden, cfg.depth, cfg.time_embedding, cfg.embed_dim, n_classes=n_classes)
        # Fourier features are tuned to t of order 1; DDPM step indices run to 999.
        scale = 1.0 / 1000.0 if process.startswith("ddpm") and cfg.time_embedding == "fourier" else (
            _time_scale(process) if cfg.time_embedding == "sinusoidal" else 1.0)
        return _FlatNet(mlp, tuple(shape), scale)
    if len(shape) != 3:
        raise ValueError(f"net.kind={'unet' if isinstance(cfg, UNetConfig) else 'dit'} needs image data (C, H, W), got examples of shape {shape}")
    if isinstance(cfg, UNetConfig):
        return UNet(
            shape[0],
            base_channels=cfg.base_channels,
            channel_mults=tuple(cfg.channel_mults),
            num_res_blocks=cfg.num_res_blocks,
            attn_resolutions=tuple(cfg.attn_resolutions),
            dropout=cfg.dropout,
            n_classes=n_classes,
            num_heads=cfg.num_heads,
            time_scale=_time_scale(process),
        )
    if isinstance(cfg, DiTConfig):
        return DiT(
            shape[0],
            (shape[1], shape[2]),
            patch_size=cfg.patch_size,
            hidden=cfg.hidden,
            depth=cfg.depth,
            num_heads=cfg.num_heads,
            mlp_ratio=cfg.mlp_ratio,
            n_classes=n_classes,
            qk_norm=cfg.qk_norm,
            time_scale=_time_scale(process),
        )
    raise ValueError(f"unknown network config {type(cfg).__name__}")


def _build_diffusion(cfg: DiffusionConfig, data: DataBundle) -> nn.Module:
    from genspace.continuous.model import DiffusionModel

    net = build_net(cfg.net, data.shape, data.n_classes, cfg.process)
    return DiffusionModel(
        net,
        cfg.process,
        cfg.parameterization,
        cfg.loss,
        n_classes=data.n_classes,
        label_dropout=cfg.label_dropout,
        sigma_data=cfg.sigma_data,
    )


class _FlatNet(nn.Module):
    """Run a vector network on flattened examples of any shape (t multiplied by ``time_scale``)."""

    def __init__(self, net: nn.Module, shape: tuple[int, ...], time_scale: float = 1.0) -> None:
        super().__init__()
        self.net, self.shape, self.time_scale = net, tuple(shape), time_scale

    def forward(self, x: torch.Tensor, t: torch.Tensor, class_labels=None) -> torch.Tensor:
        return self.net(x.flatten(1), t * self.time_scale, class_labels=class_labels).reshape(x.shape)


register_family(DiffusionConfig, _build_diffusion)


def _register_families() -> None:
    """Register every family module's configs and builders (importing a module registers its
    ``model.family`` tags; its ``FAMILY_BUILDERS`` maps config classes to builders)."""
    import importlib

    for name in FAMILY_MODULES:
        module = importlib.import_module(name)
        for config_cls, build in module.FAMILY_BUILDERS.items():
            register_family(config_cls, build)


FAMILY_MODULES = (
    "genspace.families.ar",
    "genspace.families.vae",
    "genspace.families.gan",
    "genspace.families.flows",
    "genspace.families.cnf",
    "genspace.families.vq",
    "genspace.discrete.model",
)
_register_families()


def build_model(cfg: ExperimentConfig, data: DataBundle) -> nn.Module:
    """The model of ``cfg.model`` (by family) for ``data``, with the seed of ``cfg.train``."""
    build = _BUILDERS.get(type(cfg.model))
    if build is None:
        raise ValueError(f"no model family is registered for {type(cfg.model).__name__}")
    with torch.random.fork_rng(devices=[]):  # parameter init from the run's seed, global state untouched
        torch.manual_seed(cfg.train.seed)
        return build(cfg.model, data)


# ----------------------------------------------------------------------------- sampling / eval


def sample_seeds(seed: int, n: int, offset: int = 0) -> list[int]:
    """One seed per sample: sample i of a run with seed s uses ``s * 1_000_003 + i``."""
    return [seed * 1_000_003 + offset + i for i in range(n)]


@torch.no_grad()
def sample_model(model: nn.Module, data_shape: tuple[int, ...], cfg: SampleConfig, *, n: Optional[int] = None, class_label: Union[None, int, torch.Tensor] = None, callback=None, progress: bool = False) -> torch.Tensor:
    """Draw ``n`` (default ``cfg.n``) samples in batches; sample i depends only on its seed.

    ``class_label``: None (unconditional, or the null class of a conditional model), one label
    for all samples, or a (n,) tensor of per-sample labels.
    """
    from genspace.core.random import StackedGenerator

    n = cfg.n if n is None else n
    if n < 1:
        raise ValueError(f"the number of samples must be >= 1, got {n}")
    if cfg.batch_size < 1:
        raise ValueError(f"sample.batch_size must be >= 1, got {cfg.batch_size}")
    seeds = sample_seeds(cfg.seed, n)
    if class_label is not None:
        n_classes = getattr(model, "n_classes", None)
        if n_classes is None:
            raise ValueError("a class label was given, but this model was trained without labels (data.labels=false)")
        labels = torch.as_tensor(class_label).long().reshape(-1).expand(n) if torch.as_tensor(class_label).numel() == 1 else torch.as_tensor(class_label).long()
        if labels.shape != (n,) or (labels < 0).any() or (labels >= n_classes).any():
            raise ValueError(f"class labels must be integers in [0, {n_classes - 1}] (one per sample), got {class_label if labels.numel() == 1 else tuple(labels.shape)}")
    else:
        labels = None
    out = []
    model.eval()
    starts = range(0, n, cfg.batch_size)
    if progress and len(starts) > 1:
        from tqdm.auto import tqdm

        starts = tqdm(starts, desc="sampling", unit="batch")
    for start in starts:
        chunk = seeds[start : start + cfg.batch_size]
        out.append(
            model.sample(
                len(chunk),
                shape=data_shape,
                generator=StackedGenerator(chunk),
                method=cfg.method,
                nfe=cfg.nfe,
                grid=cfg.grid,
                sigma_min=cfg.sigma_min,
                sigma_max=cfg.sigma_max,
                class_labels=None if labels is None else labels[start : start + cfg.batch_size],
                guidance=cfg.guidance,
                **({"callback": callback} if callback is not None else {}),
            ).cpu()
        )
    return torch.cat(out)


def evaluate_samples(samples: torch.Tensor, data: DataBundle, *, classifier=None, labels: Optional[torch.Tensor] = None) -> dict[str, float]:
    """Energy distance, MMD and sliced Wasserstein against held-out data, each with its floor;
    the exact mean log-density of samples (and of real data) when the density is known; for
    images with a feature ``classifier``: Fréchet distance, KID, precision and recall in its
    feature space (each with its floor) and, given the asked ``labels``, the class accuracy."""
    from genspace.metrics import energy_distance, mean_log_density, metric_with_floor, mmd, sliced_wasserstein

    n = min(len(samples), len(data.reference), len(data.heldout))
    s, ref, held = samples[:n].float().flatten(1), data.reference[:n].float().flatten(1), data.heldout[:n].float().flatten(1)
    out: dict[str, float] = {}
    # V-statistics: non-negative, with a positive floor (the unbiased forms have mean 0 under
    # the null and can be negative, so "k× the floor" would mean nothing).
    for name, fn in [
        ("energy", lambda a, b: energy_distance(a, b, unbiased=False)),
        ("mmd", lambda a, b: mmd(a, b, unbiased=False)),
        ("swd", lambda a, b: sliced_wasserstein(a, b, generator=torch.Generator().manual_seed(0))),
    ]:
        m = metric_with_floor(fn, s, ref, held)
        out[name], out[f"{name}_floor"] = m.value, m.floor
    if data.log_prob is not None:
        lp = mean_log_density(samples[:n].reshape(n, *data.shape), data.log_prob)
        lp_data = mean_log_density(data.heldout[:n], data.log_prob)
        out["logp"], out["logp_se"], out["logp_data"] = lp.mean, lp.stderr, lp_data.mean
    if classifier is not None and data.kind == "images":
        from genspace.metrics.image_metrics import image_metrics

        img = image_metrics(classifier, samples[:n].float(), data.reference[:n].float(), real_heldout=data.heldout[:n].float(), fake_labels=None if labels is None else labels[:n])
        out.update({k: float(v) for k, v in img.items() if k not in ("n_fake", "n_real")})
    return out


def image_classifier(data_cfg: DataConfig, cache_dir: Union[str, Path]):
    """The feature classifier of an image data set, trained once and cached in ``cache_dir``."""
    from genspace.data import DIGITS_LEVELS, load_digits, to_unit_range
    from genspace.metrics.classifier import get_classifier

    if data_cfg.name != "digits":
        bundle = load_data(dataclasses.replace(data_cfg, labels=True))
        x, y = bundle.train
    else:
        d = load_digits()
        x, y = to_unit_range(d.images, DIGITS_LEVELS), d.labels
    return get_classifier(f"{data_cfg.name}-classifier", x, y, cache_dir)


def bits_per_dim_of(model: nn.Module, data: DataBundle, *, n: int = 64, divergence: str = "hutchinson", n_probes: int = 1, seed: int = 0, rtol: float = 1e-5, atol: float = 1e-5) -> dict[str, float]:
    """Bits/dim of held-out images through the PF-ODE, on uniformly dequantized data.

    The model is trained on the grid x_k = 2k/(L−1) − 1 (:func:`genspace.data.to_unit_range`);
    each level owns the bin of width Δ = 2/(L−1) centred on it (DDPM's convention,
    :func:`genspace.data.dequantize_centered`), and log P(k) ≥ E_u log p(y) + D·log Δ for
    y = x_k + Δ(u − ½) (Theis et al. 2016). The ODE's log p is that of the model at σ_min
    (continuous/likelihood.py). Returns the mean and its standard error over the ``n`` images,
    the NFE and the estimator's label.
    """
    from genspace.continuous.likelihood import bits_per_dim, log_likelihood
    from genspace.data import dequantize_centered, to_uint8

    if data.kind != "images" or data.n_levels is None:
        raise ValueError("bits/dim needs quantized image data (digits, mnist, cifar10, folder)")
    if n < 1:
        raise ValueError(f"bits/dim needs n >= 1 images, got {n}")
    g = torch.Generator().manual_seed(seed)
    levels = data.n_levels
    k = to_uint8(data.heldout[:n], levels)
    y = dequantize_centered(k, levels, generator=g, dtype=torch.float64)
    lo, hi = model.sigma_range()
    denoiser = model.denoiser
    cond = {"class_labels": torch.full((len(y),), model.n_classes, dtype=torch.long)} if getattr(model, "n_classes", None) else {}
    model.double()
    try:
        res = log_likelihood(denoiser, y, sigma_min=lo, sigma_max=hi, divergence=divergence, n_probes=n_probes, generator=g, rtol=rtol, atol=atol, **cond)
    finally:
        model.float()
    dim = int(math.prod(data.shape))
    bpd = bits_per_dim(res.log_prob, dim, n_levels=levels, data_range=2.0 * levels / (levels - 1))
    se = float(bpd.std() / math.sqrt(len(bpd))) if len(bpd) > 1 else float("nan")
    return {"bpd": float(bpd.mean()), "bpd_se": se, "bpd_nfe": float(res.nfe), "bpd_estimator": res.estimator}


# ----------------------------------------------------------------------------- train / load


def _figures(model: nn.Module, data: DataBundle, cfg: ExperimentConfig, out_dir: Path, tag: str) -> dict[str, Path]:
    from genspace import figures

    small = dataclasses.replace(cfg.sample, n=min(cfg.sample.n, 2_000))
    paths = {}
    if data.kind == "points" and data.shape == (TOY_DIM,):
        samples = sample_model(model, data.shape, small)
        paths["samples"] = figures.samples_vs_data(samples, data.reference, out_dir / f"samples{tag}.png", title=f"{cfg.name}: {cfg.sample.method}, {cfg.sample.nfe} NFE")
        states: list[torch.Tensor] = []
        few = dataclasses.replace(small, n=64)
        sample_model(model, data.shape, few, callback=lambda d: states.append(d["x"].detach().cpu().clone()))
        if states:
            paths["trajectories"] = figures.trajectories(torch.stack(states), out_dir / f"trajectories{tag}.png", data=data.reference)
    elif data.kind == "images":
        samples = sample_model(model, data.shape, dataclasses.replace(small, n=64))
        paths["samples"] = figures.image_grid(samples, out_dir / f"samples{tag}.png", title=cfg.name)
    return paths


def evaluate_tokens(model: nn.Module, data: DataBundle, cfg: SampleConfig, *, n: Optional[int] = None, n_nll: int = 256, nelbo_points: Optional[int] = None,
                    options: Optional[dict] = None) -> dict:
    """Metrics of a text model: held-out NLL per token (exact, or a bound with its estimator),
    and of ``n`` generated sequences: their exact NLL under the true source ("exact generative
    perplexity", synthetic sources only), sample entropy and distinct-n beside the data's, NFE
    and tokens/s of the sampler. ``options``: further sampler options (``order``, ``temperature``)."""
    from genspace.core.random import StackedGenerator
    from genspace.metrics.text_metrics import distinct_n, exact_generative_nll, sample_entropy

    n = min(cfg.n, len(data.reference)) if n is None else n
    out: dict = {}
    held = data.heldout[: min(n_nll, len(data.heldout))]
    if n_nll > 0 and callable(getattr(model, "likelihood", None)):
        lik = model.likelihood(held, n_t=nelbo_points, generator=StackedGenerator(range(len(held))))
        per_token = lik["nll"] / lik["n_tokens"]
        out["nll_per_token"] = float(per_token.mean())
        out["nll_per_token_se"] = float(per_token.std() / math.sqrt(len(per_token))) if len(per_token) > 1 else float("nan")
        out["nll_kind"], out["nll_estimator"] = lik["kind"], lik["estimator"]
        if data.source is not None:
            out["source_entropy_per_token"] = data.source.sequence_entropy(data.shape[0]) / data.shape[0]
    seeds = sample_seeds(cfg.seed, n)
    tokens, infos = [], []
    for start in range(0, n, cfg.batch_size):
        chunk = seeds[start : start + cfg.batch_size]
        x, info = model.sample_with_info(len(chunk), length=data.shape[0], generator=StackedGenerator(chunk), method=cfg.method, steps=cfg.nfe, **(options or {}))
        tokens.append(x.cpu())
        infos.append(info)
    x = torch.cat(tokens)
    out["sample_nfe"] = float(sum(i["nfe"] for i in infos) / len(infos))
    seconds = sum(i["seconds"] for i in infos)
    out["sample_tokens_per_s"] = float(x.numel() / seconds) if seconds > 0 else float("inf")
    if data.source is not None:
        g = exact_generative_nll(x, data.source)
        out["gen_nll_per_token"], out["gen_nll_per_token_se"], out["gen_invalid_fraction"] = g.mean, g.stderr, g.invalid_fraction
    specials = tuple(i for i in (getattr(data.tokenizer, "pad_id", None),) if i is not None)
    out["sample_entropy"] = float(sample_entropy(x, ignore_ids=specials).mean)
    out["data_sample_entropy"] = float(sample_entropy(data.reference[:n], ignore_ids=specials).mean)
    for k in (2, 3):
        out[f"distinct_{k}"] = float(distinct_n(x, k))
        out[f"data_distinct_{k}"] = float(distinct_n(data.reference[:n], k))
    out["_samples"] = x
    return out


def check_sample_method(model: nn.Module, cfg: SampleConfig) -> None:
    """Fail before training when ``cfg.method`` cannot sample this model."""
    if callable(getattr(model, "methods", None)):  # text models
        if cfg.method not in model.methods():
            raise ValueError(f"sample.method={cfg.method!r} does not apply to this model; choose one of {model.methods()}")
    elif hasattr(model, "denoiser"):
        from genspace.sampling import methods

        if cfg.method not in methods():
            raise ValueError(f"sample.method={cfg.method!r} is not a sampler; choose one of {sorted(methods())}")


def _save_tokenizer(data: DataBundle, out_dir: Path) -> None:
    """Text runs keep their tokenizer beside the checkpoints (``tokenizer.json``)."""
    tok = data.tokenizer
    if data.kind == "tokens" and data.source is None and callable(getattr(tok, "save", None)):
        out_dir.mkdir(parents=True, exist_ok=True)
        if not (out_dir / "tokenizer.json").exists():
            tok.save(out_dir / "tokenizer.json")


def train(cfg: ExperimentConfig, out_dir: Union[str, Path], *, resume: bool = False, progress: bool = True) -> dict:
    """Train ``cfg`` into ``out_dir`` (checkpoints, metrics.csv, TensorBoard, figures).

    Two-stage families (VQ-VAE/VQGAN with a code prior, ``model.prior.steps > 0``) train the
    autoencoder into ``out_dir`` and then the prior into ``out_dir/prior``; the checkpoints there
    hold the whole model.
    """
    from genspace.train import Trainer, latest_checkpoint

    out_dir = Path(out_dir)
    tokenizer = None
    if resume and (out_dir / "tokenizer.json").exists():
        from genspace.data.text import load_tokenizer

        tokenizer = load_tokenizer(out_dir / "tokenizer.json")
    data = load_data(cfg.data, tokenizer=tokenizer)
    model = build_model(cfg, data)
    check_sample_method(model, cfg.sample)
    _save_tokenizer(data, out_dir)
    two_stage = callable(getattr(model, "set_stage", None)) and getattr(getattr(cfg.model, "prior", None), "steps", 0) > 0

    def evaluate(m: nn.Module, step: int) -> dict[str, float]:
        if not hasattr(m, "sample"):
            return {}
        if data.kind == "tokens":
            res = evaluate_tokens(m, data, cfg.sample, n=min(cfg.sample.n, 256))
            return {k: v for k, v in res.items() if isinstance(v, float) and not k.endswith("_se")}
        eval_cfg = dataclasses.replace(cfg.sample, n=min(cfg.sample.n, len(data.reference)))
        return {k: v for k, v in evaluate_samples(sample_model(m, data.shape, eval_cfg), data).items() if not k.endswith("_se")}

    def make_figures(m: nn.Module, step: int, folder: Path) -> None:
        if hasattr(m, "sample"):
            _figures(m, data, cfg, Path(folder) / "figures", f"-{step:08d}")

    start = time.perf_counter()
    done = two_stage and resume and latest_checkpoint(out_dir) is not None and int(latest_checkpoint(out_dir).name.split("-")[1]) >= cfg.train.steps
    trainer = Trainer(
        model,
        data.train,
        cfg.train,
        out_dir,
        evaluate=None if two_stage else evaluate,  # a VQ model samples only once its prior is trained
        make_figures=None if two_stage else make_figures,
        config_dict=to_dict(cfg),
        progress=progress,
    )
    if done:  # stage 1 finished before: reload it and go on with the prior
        model, _ = from_pretrained(latest_checkpoint(out_dir))
        row, trained, last = {}, model, latest_checkpoint(out_dir)
    else:
        row = trainer.fit(resume=resume)
        trained, last = trainer.ema_model, trainer.last_checkpoint
    if two_stage:
        from genspace.families.vq import fit_prior

        prior_cfg = dataclasses.replace(cfg.train, steps=cfg.model.prior.steps, lr=cfg.model.prior.lr)
        prior_trainer = fit_prior(trained, data.train, prior_cfg, out_dir / "prior", resume=resume, evaluate=evaluate, make_figures=make_figures, config_dict=to_dict(cfg), progress=progress)
        from genspace.train import read_csv

        rows = read_csv(out_dir / "prior" / "metrics.csv") if (out_dir / "prior" / "metrics.csv").exists() else []
        row, trained, last = (rows[-1] if rows else {}), prior_trainer.ema_model, prior_trainer.last_checkpoint
    return {"last_row": row, "seconds": time.perf_counter() - start, "checkpoint": str(last), "model": trained, "data": data}


def from_pretrained(path: Union[str, Path], *, ema: bool = True, map_location: str = "cpu") -> tuple[nn.Module, ExperimentConfig]:
    """(model, config) of a run folder or checkpoint folder: :func:`load_run` without the data."""
    model, cfg, _ = load_run(path, ema=ema, map_location=map_location)
    return model, cfg


def load_run(path: Union[str, Path], *, ema: bool = True, map_location: str = "cpu") -> tuple[nn.Module, ExperimentConfig, DataBundle]:
    """Load a run folder (its latest complete checkpoint) or a checkpoint folder.

    Returns (model in eval mode with the EMA weights when present and ``ema``, its config).
    Never unpickles anything: config.json + safetensors only. A two-stage run (VQ models) loads
    ``run/prior`` when it holds a checkpoint; a text run reuses its saved ``tokenizer.json``.
    """
    from genspace.train import latest_checkpoint, load_checkpoint, load_weights

    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"no checkpoint or run folder at {path}")
    if path.is_dir() and not path.name.startswith("ckpt-"):  # a run folder: its latest checkpoint
        latest = latest_checkpoint(path / "prior") if (path / "prior").is_dir() else None
        latest = latest or latest_checkpoint(path)
        if latest is None:
            raise FileNotFoundError(f"{path} holds no complete checkpoint (ckpt-*/ with a COMPLETE marker)")
        path = latest
    ckpt = load_checkpoint(path, map_location=map_location)
    cfg = from_dict(ExperimentConfig, ckpt.config)
    tokenizer = None
    for folder in (path.parent, path.parent.parent):
        if cfg.data.name in TEXT_SETS and (folder / "tokenizer.json").exists():
            from genspace.data.text import load_tokenizer

            tokenizer = load_tokenizer(folder / "tokenizer.json")
            break
    data = load_data(cfg.data, tokenizer=tokenizer)
    model = build_model(cfg, data)
    state = ckpt.ema_state if (ema and ckpt.ema_state is not None) else ckpt.model_state
    load_weights(model, state, what="EMA" if state is ckpt.ema_state else "model")
    return model.to(map_location).eval(), cfg, data


def save_json(obj: dict, path: Union[str, Path]) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj, indent=2, sort_keys=True, default=float) + "\n")
    return path
