"""Image data sets from files on disk, without torchvision and without loading pickles.

Every loader returns an :class:`ImageData`: ``images`` a uint8 tensor of shape (N, C, H, W)
(channels first), ``labels`` an int64 tensor of shape (N,), ``classes`` the class names (empty
when the source has none). Conversion to the model's range is explicit:

- :func:`to_unit_range`: integer levels {0, ..., L−1} → [−1, 1] (0 ↦ −1, L−1 ↦ 1);
- :func:`dequantize`: integer levels → continuous values in [−1, 1) by uniform dequantization;
- :func:`to_uint8`: [−1, 1] → integer levels, the inverse of both.

File formats:

- IDX (MNIST, Fashion-MNIST): :func:`load_idx`, :func:`load_mnist`;
- CIFAR-10 "python version" batches: :func:`read_cifar_batch`, :func:`load_cifar10`. These
  files are pickles; they are read by a restricted unpickler that only rebuilds dicts, lists,
  strings, integers and numpy arrays and refuses every other global (so a crafted file cannot
  run code);
- a folder of images with one subfolder per class: :func:`load_image_folder` (Pillow);
- numpy ``.npy`` / ``.npz`` with ``allow_pickle=False``: :func:`load_numpy`;
- scikit-learn's bundled 8×8 digits: :func:`load_digits`.
"""

from __future__ import annotations

import gzip
import io
import math
import os
import pickle
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence, Union

import numpy as np
import torch

from genspace.core.random import Generator, rand

__all__ = [
    "ImageData",
    "CIFAR10_CLASSES",
    "DIGITS_LEVELS",
    "load_digits",
    "load_idx",
    "load_mnist",
    "read_cifar_batch",
    "load_cifar10",
    "load_image_folder",
    "load_numpy",
    "to_unit_range",
    "dequantize",
    "dequantize_centered",
    "to_uint8",
]

PathLike = Union[str, os.PathLike]

CIFAR10_CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")

DIGITS_LEVELS = 17
"""Number of grey levels of the 8×8 digits (values 0..16): ``to_unit_range(x, DIGITS_LEVELS)``."""


@dataclass(frozen=True)
class ImageData:
    """Images with labels.

    Attributes:
        images: (N, C, H, W) uint8 tensor.
        labels: (N,) int64 tensor (zeros when the source has no labels).
        classes: class names, index = label (empty tuple when unknown).
    """

    images: torch.Tensor  # (N, C, H, W) uint8
    labels: torch.Tensor  # (N,) int64
    classes: tuple[str, ...] = ()

    def __len__(self) -> int:
        return self.images.shape[0]


# ---------------------------------------------------------------------- scaling
def _check_levels(n_levels) -> int:
    if isinstance(n_levels, bool) or not isinstance(n_levels, int) or n_levels < 2:
        raise ValueError(f"n_levels must be an integer >= 2, got {n_levels!r}")
    return n_levels


def _check_integer_levels(x: torch.Tensor, n_levels: int, fn: str) -> None:
    if x.dtype.is_floating_point or x.dtype.is_complex or x.dtype == torch.bool:
        raise ValueError(
            f"{fn} expects integer levels (e.g. uint8) in 0..{n_levels - 1}, got dtype {x.dtype}; "
            "use to_uint8 to map values in [-1, 1] back to levels"
        )
    if x.numel() and (int(x.min()) < 0 or int(x.max()) > n_levels - 1):
        raise ValueError(
            f"{fn}: values must lie in 0..{n_levels - 1} for n_levels={n_levels}, "
            f"got min {int(x.min())}, max {int(x.max())}"
        )


def to_unit_range(x: torch.Tensor, n_levels: int = 256, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Map integer levels k ∈ {0, ..., L−1} to 2k/(L−1) − 1 ∈ [−1, 1].

    Args:
        x: integer tensor (any shape), e.g. uint8 pixels (L = 256) or digits (L = 17).
        n_levels: number of levels L.
        dtype: floating dtype of the result.

    Returns:
        tensor of the shape of ``x`` and dtype ``dtype``; 0 ↦ −1, L−1 ↦ 1.
    """
    n_levels = _check_levels(n_levels)
    _check_integer_levels(x, n_levels, "to_unit_range")
    return (x.to(torch.float64) * (2.0 / (n_levels - 1)) - 1.0).to(dtype)


def dequantize(
    x: torch.Tensor, n_levels: int = 256, generator: Generator = None, dtype: torch.dtype = torch.float32
) -> torch.Tensor:
    """Uniform dequantization of integer levels into [−1, 1) (Theis et al., 2016, §3.1; Ho et al., 2019, §3.1).

    The interval [−1, 1) is cut into L bins of width 2/L; level k owns the bin
    [2k/L − 1, 2(k+1)/L − 1) and is replaced by a uniform point in it:

        y = 2 (k + u) / L − 1,     u ~ U[0, 1)^D.

    A continuous density p fitted to y bounds the discrete log-likelihood:
    log P(k) ≥ E_u[log p(y)] + D·log(2/L), so the discrete NLL in nats per dimension is at most
    −E[log p(y)]/D − log(2/L) (Theis et al., 2016, §3.1, with the bin volume (2/L)^D of this
    range). :func:`to_uint8` maps every returned value back to k: values that rounding to
    ``dtype`` would push across a bin edge are moved back inside the bin by a few machine epsilons.

    Args:
        x: integer levels in 0..L−1, shape (B, ...).
        n_levels: number of levels L.
        generator: source of the uniforms (None, torch.Generator or StackedGenerator).
        dtype: torch.float32 or torch.float64.

    Returns:
        tensor of the shape of ``x``, values in [−1, 1).
    """
    n_levels = _check_levels(n_levels)
    _check_integer_levels(x, n_levels, "dequantize")
    if dtype not in (torch.float32, torch.float64):
        raise ValueError(f"dequantize: dtype must be torch.float32 or torch.float64, got {dtype}")
    u = rand(tuple(x.shape), generator=generator, dtype=torch.float64, device=x.device)
    return _dequantize_with(x, u, n_levels, dtype)


def dequantize_centered(
    x: torch.Tensor, n_levels: int = 256, generator: Generator = None, dtype: torch.dtype = torch.float64
) -> torch.Tensor:
    """Uniform dequantization in bins centred on the training grid of :func:`to_unit_range`.

    Level k sits at x_k = 2k/(L−1) − 1; its bin is [x_k − Δ/2, x_k + Δ/2) with Δ = 2/(L−1), the
    convention of DDPM's discretized decoder (Ho et al. 2020, eq. 13, bins of width 2/255 around
    each pixel value). y = x_k + Δ(u − ½), u ~ U[0, 1)^D, so for a density p,
    log P(k) ≥ E_u[log p(y)] + D·log Δ (Theis et al. 2016, §3.1). The bins tile the interval
    [−1 − Δ/2, 1 + Δ/2) of length L·Δ = 2L/(L−1): pass ``data_range=2L/(L−1)`` and
    ``n_levels=L`` to :func:`genspace.continuous.likelihood.bits_per_dim`.

    This is the dequantization for scoring a model trained on :func:`to_unit_range` data (the
    bins of :func:`dequantize` put the extreme levels ±1 on a bin edge, where such a model's
    density falls off). :func:`to_uint8` does not invert it; ``round((y + 1)(L − 1)/2)`` does.

    Args:
        x: integer levels in 0..L−1, shape (B, ...).
        n_levels: number of levels L.
        generator: source of the uniforms (None, torch.Generator or StackedGenerator).
        dtype: torch.float32 or torch.float64.

    Returns:
        tensor of the shape of ``x``, values in [−1 − Δ/2, 1 + Δ/2).
    """
    n_levels = _check_levels(n_levels)
    _check_integer_levels(x, n_levels, "dequantize_centered")
    if dtype not in (torch.float32, torch.float64):
        raise ValueError(f"dequantize_centered: dtype must be torch.float32 or torch.float64, got {dtype}")
    u = rand(tuple(x.shape), generator=generator, dtype=torch.float64, device=x.device)
    delta = 2.0 / (n_levels - 1)
    return (x.to(torch.float64) * delta - 1.0 + delta * (u - 0.5)).to(dtype)


def _dequantize_with(x: torch.Tensor, u: torch.Tensor, n_levels: int, dtype: torch.dtype) -> torch.Tensor:
    """y = 2(k+u)/L − 1 in ``dtype``, kept inside bin k despite rounding."""
    k = x.to(torch.float64)
    y = ((k + u) * (2.0 / n_levels) - 1.0).to(dtype)
    # Rounding (to dtype, and inside to_uint8's arithmetic) can put y across a bin edge; step it
    # back inside by a few machine epsilons (the bin width 2/L is far larger for any practical L).
    step = 4 * torch.finfo(dtype).eps
    for _ in range(4):
        back = torch.floor((y.to(torch.float64) + 1.0) * (n_levels / 2.0))
        if bool((back == k).all()):
            break
        y = torch.where(back < k, y + step, torch.where(back > k, y - step, y))
    return y


def to_uint8(y: torch.Tensor, n_levels: int = 256) -> torch.Tensor:
    """Map values in [−1, 1] to integer levels: the index of the bin of width 2/L that holds y.

    k = clamp(floor((y + 1)/2 · L), 0, L−1). This inverts both :func:`to_unit_range` (level k sits
    at 2k/(L−1) − 1, inside bin k; exactly so for float32 input up to L = 4096 and for float64
    input for any practical L) and :func:`dequantize`; values outside [−1, 1] are clipped.
    Returns uint8 for L ≤ 256, int64 otherwise.
    """
    n_levels = _check_levels(n_levels)
    if not y.dtype.is_floating_point:
        raise ValueError(f"to_uint8 expects floating values in [-1, 1], got dtype {y.dtype}")
    if torch.isnan(y).any():
        raise ValueError("to_uint8: input holds NaN values")
    k = torch.floor((y.to(torch.float64) + 1.0) * (n_levels / 2.0)).clamp(0, n_levels - 1)
    return k.to(torch.uint8 if n_levels <= 256 else torch.int64)


# ---------------------------------------------------------------------- digits
def load_digits() -> ImageData:
    """scikit-learn's bundled 8×8 handwritten digits (UCI optdigits test set, 1797 images).

    Returns:
        ImageData with images (1797, 1, 8, 8) uint8 holding 0..16 (17 grey levels: map to [−1, 1]
        with ``to_unit_range(images, DIGITS_LEVELS)``), labels (1797,) int64 in 0..9, and
        classes "0".."9".
    """
    from sklearn.datasets import load_digits as _sk_load_digits  # heavy import, only here

    bunch = _sk_load_digits()
    images = torch.from_numpy(np.asarray(bunch.images).round().astype(np.uint8)).reshape(-1, 1, 8, 8)
    labels = torch.from_numpy(np.asarray(bunch.target).astype(np.int64))
    return ImageData(images, labels, tuple(str(i) for i in range(10)))


# ---------------------------------------------------------------------- IDX
_IDX_TYPES = {
    0x08: (np.dtype(">u1"), torch.uint8),
    0x09: (np.dtype(">i1"), torch.int8),
    0x0B: (np.dtype(">i2"), torch.int16),
    0x0C: (np.dtype(">i4"), torch.int32),
    0x0D: (np.dtype(">f4"), torch.float32),
    0x0E: (np.dtype(">f8"), torch.float64),
}


def _read_bytes(path: Path) -> bytes:
    """The file's bytes, gunzipped when they start with the gzip magic 1f 8b."""
    if not path.is_file():
        raise FileNotFoundError(f"no such file: {str(path)!r}")
    raw = path.read_bytes()
    if raw[:2] == b"\x1f\x8b":
        try:
            return gzip.decompress(raw)
        except (OSError, EOFError, zlib.error) as err:
            raise ValueError(f"{str(path)!r}: corrupt or truncated gzip data ({err})") from err
    return raw


def _parse_idx(data: bytes, name: str) -> torch.Tensor:
    if len(data) < 4:
        raise ValueError(f"{name}: truncated IDX file ({len(data)} bytes, the header needs at least 4)")
    zero1, zero2, type_code, ndim = data[0], data[1], data[2], data[3]
    if zero1 != 0 or zero2 != 0 or type_code not in _IDX_TYPES:
        raise ValueError(
            f"{name}: wrong IDX magic number {data[:4].hex()} (expected 0000tt nn with type tt in "
            f"{', '.join(f'{t:02x}' for t in _IDX_TYPES)} and nn dimensions)"
        )
    if ndim == 0:
        raise ValueError(f"{name}: malformed IDX header: 0 dimensions")
    header = 4 + 4 * ndim
    if len(data) < header:
        raise ValueError(f"{name}: truncated IDX header: {ndim} dimensions need {header} bytes, file has {len(data)}")
    dims = tuple(int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    np_dtype, torch_dtype = _IDX_TYPES[type_code]
    expected = math.prod(dims) * np_dtype.itemsize
    actual = len(data) - header
    if actual < expected:
        raise ValueError(
            f"{name}: truncated IDX file: dimensions {dims} of {np_dtype.name} need {expected} data bytes, "
            f"found {actual}"
        )
    if actual > expected:
        raise ValueError(
            f"{name}: IDX count mismatch: dimensions {dims} of {np_dtype.name} need {expected} data bytes, "
            f"found {actual} ({actual - expected} extra)"
        )
    array = np.frombuffer(data, dtype=np_dtype, count=math.prod(dims), offset=header).reshape(dims)
    return torch.from_numpy(array.astype(np_dtype.newbyteorder("="), copy=True))


def load_idx(path: PathLike) -> torch.Tensor:
    """Read an IDX file (the MNIST / Fashion-MNIST format), plain or gzip-compressed.

    Format: 4-byte magic (two zero bytes, a type code — 0x08 uint8, 0x09 int8, 0x0B int16,
    0x0C int32, 0x0D float32, 0x0E float64 — and the number of dimensions n), then n big-endian
    uint32 sizes, then the data in big-endian row-major order. Gzip input is recognised by its
    magic bytes, whatever the file name.

    Returns:
        tensor with the file's dimensions and the dtype of its type code (native byte order).

    Raises:
        FileNotFoundError: the path does not exist.
        ValueError: wrong magic, malformed or truncated header, data size not matching the
            dimensions (truncated or trailing bytes), corrupt gzip data.
    """
    path = Path(path)
    return _parse_idx(_read_bytes(path), repr(str(path)))


_MNIST_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}


def _check_split(split: str) -> None:
    if split not in ("train", "test"):
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")


def _find_first(root: Path, folders: Sequence[str], names: Sequence[str]) -> Optional[Path]:
    for folder in folders:
        for name in names:
            candidate = root / folder / name if folder else root / name
            if candidate.is_file():
                return candidate
    return None


def load_mnist(root: PathLike, split: str = "train") -> ImageData:
    """MNIST (or Fashion-MNIST, KMNIST: same file names) from the standard IDX files.

    Looks in ``root``, ``root/raw`` and ``root/MNIST/raw`` for ``train-images-idx3-ubyte`` /
    ``train-labels-idx1-ubyte`` (split "train") or ``t10k-images-idx3-ubyte`` /
    ``t10k-labels-idx1-ubyte`` (split "test"), each optionally ending in ``.gz`` (the variant
    ``train-images.idx3-ubyte`` is accepted too).

    Returns:
        ImageData with images (N, 1, 28, 28) uint8 in 0..255 and labels (N,) int64.
    """
    _check_split(split)
    root = Path(root)
    folders = ("", "raw", os.path.join("MNIST", "raw"))
    found = []
    for base in _MNIST_FILES[split]:
        dotted = base.replace("-idx", ".idx")
        names = (base, base + ".gz", dotted, dotted + ".gz")
        path = _find_first(root, folders, names)
        if path is None:
            raise FileNotFoundError(
                f"MNIST {split} split not found under {str(root)!r}: expected {base} or {base}.gz "
                f"(in the folder itself, raw/ or MNIST/raw/)"
            )
        found.append(path)
    images, labels = load_idx(found[0]), load_idx(found[1])
    if images.ndim != 3 or images.dtype != torch.uint8:
        raise ValueError(f"{str(found[0])!r}: expected uint8 images of shape (N, H, W), got {images.dtype} {tuple(images.shape)}")
    if labels.ndim != 1 or labels.dtype != torch.uint8:
        raise ValueError(f"{str(found[1])!r}: expected uint8 labels of shape (N,), got {labels.dtype} {tuple(labels.shape)}")
    if images.shape[0] != labels.shape[0]:
        raise ValueError(
            f"MNIST count mismatch: {images.shape[0]} images in {str(found[0])!r} but "
            f"{labels.shape[0]} labels in {str(found[1])!r}"
        )
    return ImageData(images[:, None], labels.to(torch.int64))


# ---------------------------------------------------------------------- CIFAR-10 (restricted unpickling)
def _numpy_reconstruct():
    try:
        from numpy._core.multiarray import _reconstruct
    except ImportError:  # numpy < 2
        from numpy.core.multiarray import _reconstruct
    return _reconstruct


def _latin1_encode(text, encoding="latin1"):
    """The only use of ``_codecs.encode`` in Python 3 protocol-2 pickles: str → bytes via latin-1."""
    if not isinstance(text, str) or str(encoding).lower().replace("-", "").replace("_", "") != "latin1":
        raise pickle.UnpicklingError("_codecs.encode is only allowed as encode(str, 'latin1')")
    return text.encode("latin1")


class _RestrictedUnpickler(pickle.Unpickler):
    """An unpickler that rebuilds only builtin containers/scalars and numpy arrays.

    Allowed globals: builtins dict, list, tuple, bytes, str, int; numpy's array reconstruction
    (``numpy.core.multiarray._reconstruct`` / ``numpy._core.multiarray._reconstruct``,
    ``numpy.ndarray``, ``numpy.dtype``); and ``_codecs.encode`` restricted to str → latin-1 bytes
    (how Python 3 writes bytes in protocol 2). Everything else is refused before it is looked up.
    """

    _BUILTINS = {"dict": dict, "list": list, "tuple": tuple, "bytes": bytes, "str": str, "int": int}

    def find_class(self, module, name):
        if module in ("builtins", "__builtin__") and name in self._BUILTINS:
            return self._BUILTINS[name]
        if module in ("numpy.core.multiarray", "numpy._core.multiarray") and name == "_reconstruct":
            return _numpy_reconstruct()
        if module == "numpy" and name == "ndarray":
            return np.ndarray
        if module == "numpy" and name == "dtype":
            return np.dtype
        if module == "_codecs" and name == "encode":
            return _latin1_encode
        raise _Refused(f"{module}.{name}")

    def persistent_load(self, pid):
        raise pickle.UnpicklingError("persistent ids are not allowed")


class _Refused(Exception):
    """A forbidden global; carried out of the unpickler untouched."""


def _restricted_load(data: bytes, name: str):
    try:
        return _RestrictedUnpickler(io.BytesIO(data), encoding="bytes").load()
    except _Refused as err:
        raise ValueError(
            f"{name}: refusing to load the pickle: it references the global {err.args[0]!r}; only "
            "dict/list/bytes/str/int and numpy arrays are allowed (this is not a CIFAR-10 batch file)"
        ) from None
    except Exception as err:  # any malformed stream: UnpicklingError, EOFError, TypeError, ...
        raise ValueError(f"{name}: not a valid pickled batch ({type(err).__name__}: {err})") from None


def _get(d: dict, key: str):
    for k in (key.encode(), key):
        if k in d:
            return d[k]
    return None


def read_cifar_batch(path: PathLike) -> ImageData:
    """Read one CIFAR-10 python batch file (``data_batch_1`` ... ``test_batch``) safely.

    The file is a pickled dict with ``b"data"``: uint8 array (N, 3072) — per image 1024 red, then
    1024 green, then 1024 blue values of a 32×32 image in row-major order — and ``b"labels"``: N
    integers in 0..9. It is parsed with a restricted unpickler that cannot run code (see
    :class:`_RestrictedUnpickler`); any other global is refused with ValueError.

    Returns:
        ImageData with images (N, 3, 32, 32) uint8, labels (N,) int64, classes CIFAR10_CLASSES.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no such CIFAR-10 batch file: {str(path)!r}")
    name = repr(str(path))
    batch = _restricted_load(path.read_bytes(), name)
    if not isinstance(batch, dict):
        raise ValueError(f"{name}: expected a pickled dict, got {type(batch).__name__}")
    data, labels = _get(batch, "data"), _get(batch, "labels")
    if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3072:
        desc = f"{data.dtype} array {data.shape}" if isinstance(data, np.ndarray) else type(data).__name__
        raise ValueError(f"{name}: b'data' must be a uint8 array of shape (N, 3072), got {desc}")
    if not isinstance(labels, (list, tuple)) or not all(
        isinstance(v, int) and not isinstance(v, bool) and 0 <= v <= 9 for v in labels
    ):
        raise ValueError(f"{name}: b'labels' must be a list of integers in 0..9")
    if len(labels) != data.shape[0]:
        raise ValueError(f"{name}: count mismatch: {data.shape[0]} images but {len(labels)} labels")
    images = torch.from_numpy(np.ascontiguousarray(data).reshape(-1, 3, 32, 32).copy())
    return ImageData(images, torch.tensor(list(labels), dtype=torch.int64), CIFAR10_CLASSES)


def load_cifar10(root: PathLike, split: str = "train") -> ImageData:
    """CIFAR-10 from the "python version" batch files.

    Looks in ``root`` and ``root/cifar-10-batches-py`` for ``data_batch_1`` ... ``data_batch_5``
    (split "train", 50000 images) or ``test_batch`` (split "test", 10000 images).

    Returns:
        ImageData with images (N, 3, 32, 32) uint8, labels (N,) int64, classes CIFAR10_CLASSES.
    """
    _check_split(split)
    root = Path(root)
    names = [f"data_batch_{i}" for i in range(1, 6)] if split == "train" else ["test_batch"]
    for folder in (root, root / "cifar-10-batches-py"):
        if all((folder / n).is_file() for n in names):
            parts = [read_cifar_batch(folder / n) for n in names]
            return ImageData(
                torch.cat([p.images for p in parts]), torch.cat([p.labels for p in parts]), CIFAR10_CLASSES
            )
    raise FileNotFoundError(
        f"CIFAR-10 {split} split not found under {str(root)!r}: expected the files {', '.join(names)} "
        "(in the folder itself or in cifar-10-batches-py/)"
    )


# ---------------------------------------------------------------------- image folders
_IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm", ".pgm")


def _image_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in _IMAGE_EXTENSIONS)


def load_image_folder(path: PathLike, size: Union[None, int, tuple[int, int]] = None, mode: str = "RGB") -> ImageData:
    """Load a folder of images with Pillow; one subfolder per class gives the labels.

    Layout: ``path/<class>/.../*.png`` (classes sorted by name, label = index), or a flat folder
    of images (every label 0, no class names). Files are read in sorted order.

    Args:
        path: the folder.
        size: None (all images must already share one size), an int s (resize to s×s) or a pair
            (height, width); resizing uses Pillow's bicubic filter.
        mode: "RGB" (C = 3) or "L" (greyscale, C = 1).

    Returns:
        ImageData with images (N, C, H, W) uint8, labels (N,) int64, classes.
    """
    from PIL import Image, UnidentifiedImageError  # optional feature: import here

    if mode not in ("RGB", "L"):
        raise ValueError(f"mode must be 'RGB' or 'L', got {mode!r}")
    if size is not None:
        hw = (size, size) if isinstance(size, int) else tuple(size)
        if len(hw) != 2 or not all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in hw):
            raise ValueError(f"size must be None, a positive int or a pair (height, width), got {size!r}")
    root = Path(path)
    if not root.is_dir():
        raise FileNotFoundError(f"no such image folder: {str(root)!r} (expected class subfolders of image files)")
    subdirs = sorted(p for p in root.iterdir() if p.is_dir() and _image_files(p))
    if subdirs:
        loose = [p.name for p in root.iterdir() if p.is_file() and p.suffix.lower() in _IMAGE_EXTENSIONS]
        if loose:
            raise ValueError(
                f"{str(root)!r} has class subfolders and also images at the top level ({', '.join(sorted(loose)[:3])}); "
                "put every image in a class subfolder"
            )
        classes = tuple(p.name for p in subdirs)
        files = [(f, label) for label, d in enumerate(subdirs) for f in _image_files(d)]
    else:
        classes = ()
        files = [(f, 0) for f in _image_files(root)]
    if not files:
        raise FileNotFoundError(
            f"no image files in {str(root)!r} (looked for {', '.join(_IMAGE_EXTENSIONS)})"
        )
    arrays = []
    for f, _ in files:
        try:
            with Image.open(f) as img:
                img = img.convert(mode)
                if size is not None:
                    img = img.resize((hw[1], hw[0]), Image.Resampling.BICUBIC)
                arrays.append(np.asarray(img, dtype=np.uint8))
        except (UnidentifiedImageError, OSError, Image.DecompressionBombError) as err:
            raise ValueError(f"cannot read image {str(f)!r}: {err}") from err
        if arrays[-1].shape[:2] != arrays[0].shape[:2]:
            raise ValueError(
                f"images differ in size: {str(files[0][0])!r} is {arrays[0].shape[1]}x{arrays[0].shape[0]}, "
                f"{str(f)!r} is {arrays[-1].shape[1]}x{arrays[-1].shape[0]}; pass size= to resize"
            )
    stacked = np.stack(arrays)  # (N, H, W) or (N, H, W, 3)
    images = torch.from_numpy(stacked[:, None] if mode == "L" else stacked.transpose(0, 3, 1, 2).copy())
    labels = torch.tensor([label for _, label in files], dtype=torch.int64)
    return ImageData(images.contiguous(), labels, classes)


# ---------------------------------------------------------------------- numpy files
def _to_tensor(array: np.ndarray, name: str) -> torch.Tensor:
    try:
        return torch.from_numpy(np.array(array, copy=True))
    except TypeError as err:
        raise ValueError(f"{name}: numpy dtype {array.dtype} has no torch equivalent") from err


def load_numpy(path: PathLike) -> Union[torch.Tensor, dict[str, torch.Tensor]]:
    """Load a ``.npy`` file (→ tensor) or ``.npz`` archive (→ dict name → tensor), never unpickling.

    Object arrays (which need pickle) are refused with ValueError.
    """
    import zipfile

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no such numpy file: {str(path)!r} (expected a .npy or .npz file)")
    name = repr(str(path))
    try:
        loaded = np.load(path, allow_pickle=False)
        if isinstance(loaded, np.ndarray):
            return _to_tensor(loaded, name)
        with loaded as archive:
            return {key: _to_tensor(archive[key], f"{name}[{key!r}]") for key in archive.files}
    except ValueError as err:
        raise ValueError(f"{name}: {err}") from None
    except (OSError, EOFError, zipfile.BadZipFile, KeyError) as err:
        raise ValueError(f"{name}: not a valid .npy/.npz file ({type(err).__name__}: {err})") from None
