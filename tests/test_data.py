"""Tests for genspace.data: 2-D toys (geometry, exact mixture densities) and image loaders."""

from __future__ import annotations

import gzip
import math
import os
import pickle
import struct

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from scipy import stats

from genspace.core.random import StackedGenerator
from genspace.data import (
    CIFAR10_CLASSES,
    DIGITS_LEVELS,
    dequantize,
    dequantize_centered,
    load_cifar10,
    load_digits,
    load_idx,
    load_image_folder,
    load_mnist,
    load_numpy,
    make_toy,
    read_cifar_batch,
    to_uint8,
    to_unit_range,
    toy_density,
    toy_names,
)
from genspace.data.images import _dequantize_with

ALL_TOYS = ("moons", "circles", "swissroll", "8gaussians", "25gaussians", "checkerboard", "pinwheel", "2spirals", "rings")


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


# ====================================================================== toys: common properties
def test_registry_lists_the_canonical_toys():
    assert set(toy_names()) == set(ALL_TOYS)


@pytest.mark.parametrize("name", ALL_TOYS)
def test_toy_shape_dtype_determinism_and_unit_scale(name):
    x = make_toy(name, 20000, generator=gen(0))
    assert x.shape == (20000, 2) and x.dtype == torch.float32 and torch.isfinite(x).all()
    assert torch.equal(x, make_toy(name, 20000, generator=gen(0)))
    assert not torch.equal(x, make_toy(name, 20000, generator=gen(1)))
    # the documented scaling: root-mean-square per-coordinate std about 1
    rms_std = (x.double().var(0).sum() / 2).sqrt().item()
    assert 0.9 < rms_std < 1.1, rms_std


@pytest.mark.parametrize("name", ALL_TOYS)
def test_toy_per_sample_generators_are_batch_independent(name):
    many = make_toy(name, 6, generator=StackedGenerator(range(10, 16)))
    alone = make_toy(name, 1, generator=StackedGenerator([13]))
    assert torch.equal(many[3], alone[0])


def test_make_toy_errors_name_the_choices():
    with pytest.raises(ValueError, match="did you mean '8gaussians'.*choices: moons"):
        make_toy("8gausians", 10)
    with pytest.raises(ValueError, match="'radius'.*choices: std, scale"):
        make_toy("8gaussians", 10, radius=2.0)
    for bad_n in (0, -3, 2.5, True):
        with pytest.raises(ValueError, match="n must be a positive integer"):
            make_toy("moons", bad_n)
    with pytest.raises(ValueError, match="scale"):
        make_toy("rings", 10, scale=-1.0)
    with pytest.raises(ValueError, match="n_squares"):
        make_toy("checkerboard", 10, n_squares=0)
    with pytest.raises(ValueError, match="std must be a number, got 'wide'"):
        make_toy("8gaussians", 10, std="wide")


# ====================================================================== toys: geometry (known answers)
def test_circles_without_noise_lie_on_two_circles_with_equal_mass():
    x = make_toy("circles", 4000, generator=gen(2), noise=0.0, scale=3.0).double()
    r = x.norm(dim=1)
    outer = (r - 3.0).abs() < 1e-5
    inner = (r - 1.5).abs() < 1e-5
    assert (outer | inner).all()
    assert abs(outer.double().mean().item() - 0.5) < 4 * math.sqrt(0.25 / 4000)


def test_rings_without_noise_have_radii_j_over_R():
    x = make_toy("rings", 8000, generator=gen(3), noise=0.0, n_rings=4, scale=2.0).double()
    level = x.norm(dim=1) / 2.0 * 4  # = j in {1, 2, 3, 4}
    j = level.round()
    assert torch.allclose(level, j, atol=1e-5)
    counts = torch.bincount(j.long(), minlength=5)[1:].double()
    assert stats.chisquare(counts.numpy()).pvalue > 1e-4


def test_moons_without_noise_lie_on_the_two_half_circles_and_are_centred():
    s = 1.4
    x = make_toy("moons", 6000, generator=gen(4), noise=0.0, scale=s).double() / s
    x = x + torch.tensor([0.5, 0.25], dtype=torch.float64)  # undo the centring
    upper = ((x.norm(dim=1) - 1).abs() < 1e-5) & (x[:, 1] >= -1e-6)
    lower = (((x - torch.tensor([1.0, 0.5], dtype=torch.float64)).norm(dim=1) - 1).abs() < 1e-5) & (x[:, 1] <= 0.5 + 1e-6)
    assert (upper | lower).all()
    # the exact mean (1/2, 1/4) was subtracted
    mean = make_toy("moons", 40000, generator=gen(5), noise=0.0, scale=1.0).double().mean(0)
    assert mean.abs().max() < 0.02


def test_swissroll_without_noise_is_the_spiral_t_cos_t_t_sin_t():
    x = make_toy("swissroll", 3000, generator=gen(6), noise=0.0, scale=1.0).double()
    t = x.norm(dim=1)
    assert (t >= 1.5 * math.pi - 1e-4).all() and (t <= 4.5 * math.pi + 1e-4).all()
    assert torch.allclose(x, torch.stack([t * torch.cos(t), t * torch.sin(t)], 1), atol=1e-4)


def test_2spirals_without_noise_are_mirror_archimedean_spirals():
    x = make_toy("2spirals", 3000, generator=gen(7), noise=0.0, jitter=0.0, scale=1.0).double()
    phi = x.norm(dim=1)
    assert (phi <= 3 * math.pi + 1e-4).all()
    curve = phi[:, None] * torch.stack([-torch.cos(phi), torch.sin(phi)], 1)
    on_first = (x - curve).norm(dim=1) < 1e-4
    on_second = (x + curve).norm(dim=1) < 1e-4
    assert (on_first | on_second).all()
    assert 0.45 < on_first.double().mean().item() < 0.55
    # φ = 3π√u: φ²/(9π²) is uniform on [0, 1)
    assert stats.kstest((phi**2 / (9 * math.pi**2)).numpy(), "uniform").pvalue > 1e-4


def test_pinwheel_without_spread_collapses_to_one_point_per_arm():
    k, rate = 5, 0.25
    x = make_toy("pinwheel", 2000, generator=gen(8), n_arms=k, radial_std=0.0, tangential_std=0.0, rate=rate, scale=1.0).double()
    theta = 2 * math.pi * torch.arange(k, dtype=torch.float64) / k + rate * math.e
    points = torch.stack([torch.cos(theta), -torch.sin(theta)], 1)  # (1, 0) rotated by −θ
    dist = torch.cdist(x, points)
    assert (dist.min(1).values < 1e-5).all()
    counts = torch.bincount(dist.argmin(1), minlength=k).double()
    assert stats.chisquare(counts.numpy()).pvalue > 1e-4


def test_checkerboard_is_uniform_on_the_dark_squares():
    x = make_toy("checkerboard", 20000, generator=gen(9), scale=2.0).double() / 2.0  # natural: 4×4 unit cells
    cell = torch.floor(x + 2.0).long()
    assert ((cell >= 0) & (cell <= 3)).all()
    assert ((cell[:, 0] + cell[:, 1]) % 2 == 0).all()  # lower-left cell (0, 0) is dark
    counts = torch.bincount(cell[:, 0] * 4 + cell[:, 1], minlength=16)
    dark = [i * 4 + j for i in range(4) for j in range(4) if (i + j) % 2 == 0]
    assert stats.chisquare(counts[dark].double().numpy()).pvalue > 1e-4
    for d in range(2):  # each coordinate is marginally uniform on [−2, 2]
        assert stats.kstest(x[:, d].numpy(), "uniform", args=(-2, 4)).pvalue > 1e-4
    # odd boards: dark cells still are those with i + j even
    y = make_toy("checkerboard", 3000, generator=gen(10), n_squares=3, scale=1.0).double()
    c = torch.floor(y + 1.5).long()
    assert ((c >= 0) & (c <= 2)).all() and ((c.sum(1) % 2) == 0).all()


# ====================================================================== toys: exact mixture densities
def _mixture_cdf(t: np.ndarray, centres: np.ndarray, std: float) -> np.ndarray:
    return stats.norm.cdf((t[:, None] - centres[None]) / std).mean(1)


@pytest.mark.parametrize(
    "name, params, k",
    [
        ("8gaussians", {}, 8),
        ("8gaussians", {"std": 0.08, "scale": 2.0}, 8),
        ("25gaussians", {}, 25),
        ("25gaussians", {"std": 0.1, "scale": 1.5}, 25),
    ],
)
def test_gaussian_toys_match_their_exact_density(name, params, k):
    n = 20000
    gmm = toy_density(name, **params)
    x = make_toy(name, n, generator=gen(11), **params).double()
    comp_std = math.sqrt(gmm.covs[0, 0, 0].item())
    # 1) components are well separated, so E[log p(x)] = −log K − log(2πe s²) (entropy of the
    #    mixture = log K + entropy of one 2-D isotropic Gaussian); Var[log p] ≈ 1 (χ²₂/2).
    expected = -math.log(k) - math.log(2 * math.pi * math.e * comp_std**2)
    assert abs(gmm.log_prob(x).mean().item() - expected) < 5 / math.sqrt(n)
    # 2) one-sample KS tests of projections against the exact mixture CDF
    centres = gmm.means.numpy()
    for v in (np.array([1.0, 0.0]), np.array([0.6, 0.8])):
        proj = x.numpy() @ v
        p = stats.kstest(proj, lambda t: _mixture_cdf(np.atleast_1d(t), centres @ v, comp_std)).pvalue
        assert p > 1e-4, p
    # 3) equal weights: component counts pass a χ² test
    counts = torch.bincount(gmm.responsibilities(x).argmax(1), minlength=k).double()
    assert stats.chisquare(counts.numpy()).pvalue > 1e-4


def test_gaussian_toy_geometry_in_ffjord_coordinates():
    g8 = toy_density("8gaussians", scale=2 * math.sqrt(2))
    assert torch.allclose(g8.means.norm(dim=1), torch.full((8,), 2 * math.sqrt(2), dtype=torch.float64))
    assert torch.allclose(g8.covs, torch.eye(2, dtype=torch.float64).expand(8, 2, 2) * (0.5 / math.sqrt(2)) ** 2)
    g25 = toy_density("25gaussians", scale=1.0)
    grid = sorted({round(v, 9) for v in g25.means.flatten().tolist()})
    assert grid == [-2.0, -1.0, 0.0, 1.0, 2.0] and g25.n_components == 25
    # the density's covariance is the sampler's default unit-ish scale
    var = toy_density("25gaussians").covariance().diagonal()
    assert torch.allclose(var, torch.full((2,), 0.5 * (2 + 0.05**2), dtype=torch.float64))


def test_toy_density_errors():
    with pytest.raises(ValueError, match="not a Gaussian mixture.*8gaussians, 25gaussians"):
        toy_density("moons")
    with pytest.raises(ValueError, match="unknown toy"):
        toy_density("9gaussians")
    with pytest.raises(ValueError, match="'noise'"):
        toy_density("8gaussians", noise=0.1)


# ====================================================================== IDX
_IDX_CODES = {np.uint8: 0x08, np.int8: 0x09, np.int16: 0x0B, np.int32: 0x0C, np.float32: 0x0D, np.float64: 0x0E}


def write_idx(path, array: np.ndarray, compress: bool = False) -> None:
    """The IDX format written by hand: 00 00 type ndim, big-endian uint32 dims, big-endian data."""
    code = _IDX_CODES[array.dtype.type]
    header = bytes([0, 0, code, array.ndim]) + b"".join(struct.pack(">I", d) for d in array.shape)
    payload = header + array.astype(array.dtype.newbyteorder(">")).tobytes()
    path.write_bytes(gzip.compress(payload) if compress else payload)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    dtype=st.sampled_from(list(_IDX_CODES)),
    shape=st.lists(st.integers(0, 5), min_size=1, max_size=4),
    compress=st.booleans(),
    seed=st.integers(0, 2**31),
)
def test_idx_round_trip(tmp_path, dtype, shape, compress, seed):
    rng = np.random.default_rng(seed)
    if np.issubdtype(dtype, np.integer):
        info = np.iinfo(dtype)
        array = rng.integers(info.min, info.max, size=shape, endpoint=True).astype(dtype)
    else:
        array = (rng.standard_normal(shape) * 1e3).astype(dtype)
    path = tmp_path / ("x.idx.gz" if compress else "x.idx")
    write_idx(path, array, compress)
    out = load_idx(path)
    assert out.dtype == torch.from_numpy(array).dtype and tuple(out.shape) == tuple(shape)
    assert np.array_equal(out.numpy(), array)


def test_idx_known_bytes(tmp_path):
    # a 2×3 uint8 file written byte by byte: magic 00 00 08 02, dims 2 and 3, six values
    raw = bytes([0, 0, 8, 2, 0, 0, 0, 2, 0, 0, 0, 3, 1, 2, 3, 250, 251, 252])
    (tmp_path / "a").write_bytes(raw)
    assert load_idx(tmp_path / "a").tolist() == [[1, 2, 3], [250, 251, 252]]
    # int16 big-endian: 0x0102 = 258, 0xFFFE = −2
    (tmp_path / "b").write_bytes(bytes([0, 0, 0x0B, 1, 0, 0, 0, 2, 1, 2, 0xFF, 0xFE]))
    assert load_idx(tmp_path / "b").tolist() == [258, -2]


@pytest.mark.parametrize(
    "raw, message",
    [
        (b"", "truncated"),
        (bytes([0, 0, 8]), "truncated"),
        (bytes([1, 0, 8, 1, 0, 0, 0, 1, 7]), "magic"),
        (bytes([0, 0, 0x0A, 1, 0, 0, 0, 1, 7]), "magic"),
        (bytes([0, 0, 8, 0]), "0 dimensions"),
        (bytes([0, 0, 8, 2, 0, 0, 0, 2]), "truncated IDX header"),
        (bytes([0, 0, 8, 1, 0, 0, 0, 4, 1, 2, 3]), "truncated"),
        (bytes([0, 0, 8, 1, 0, 0, 0, 2, 1, 2, 3]), "count mismatch"),
        (bytes([0, 0, 0x0C, 1, 0, 0, 0, 1, 1, 2, 3]), "truncated"),
        (bytes([0, 0, 8, 3, 255, 255, 255, 255, 255, 255, 255, 255, 255, 255, 255, 255]), "truncated"),
        (gzip.compress(bytes([0, 0, 8, 1, 0, 0, 0, 1, 9]), mtime=0)[:-6], "gzip"),
    ],
)
def test_malformed_idx_raises_value_error(tmp_path, raw, message):
    path = tmp_path / "bad"
    path.write_bytes(raw)
    with pytest.raises(ValueError, match=message):
        load_idx(path)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    raw=st.one_of(
        st.binary(max_size=64),
        st.binary(max_size=40).map(lambda b: bytes([0, 0]) + b),
        st.binary(max_size=40).map(lambda b: gzip.compress(b)),
        st.tuples(st.binary(max_size=40), st.integers(0, 30)).map(lambda t: gzip.compress(t[0])[: t[1]]),
    )
)
def test_random_bytes_never_raise_anything_but_value_error(tmp_path, raw):
    path = tmp_path / "random.idx"
    path.write_bytes(raw)
    try:
        out = load_idx(path)
    except ValueError:
        return
    assert isinstance(out, torch.Tensor)


def test_load_idx_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope"):
        load_idx(tmp_path / "nope")


# ====================================================================== MNIST
def test_load_mnist_finds_standard_names_plain_and_gz(tmp_path):
    rng = np.random.default_rng(0)
    train_x = rng.integers(0, 256, (5, 28, 28)).astype(np.uint8)
    train_y = np.array([0, 9, 3, 3, 7], dtype=np.uint8)
    test_x = rng.integers(0, 256, (2, 28, 28)).astype(np.uint8)
    test_y = np.array([1, 2], dtype=np.uint8)
    raw = tmp_path / "raw"
    raw.mkdir()
    write_idx(raw / "train-images-idx3-ubyte.gz", train_x, compress=True)
    write_idx(raw / "train-labels-idx1-ubyte.gz", train_y, compress=True)
    write_idx(tmp_path / "t10k-images-idx3-ubyte", test_x)
    write_idx(tmp_path / "t10k-labels-idx1-ubyte", test_y)
    train = load_mnist(tmp_path, "train")
    assert train.images.shape == (5, 1, 28, 28) and train.images.dtype == torch.uint8
    assert np.array_equal(train.images[:, 0].numpy(), train_x)
    assert train.labels.dtype == torch.int64 and train.labels.tolist() == [0, 9, 3, 3, 7]
    test = load_mnist(tmp_path, "test")
    assert np.array_equal(test.images[:, 0].numpy(), test_x) and test.labels.tolist() == [1, 2]


def test_load_mnist_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="train-images-idx3-ubyte"):
        load_mnist(tmp_path, "train")
    with pytest.raises(ValueError, match="'train' or 'test'"):
        load_mnist(tmp_path, "valid")
    write_idx(tmp_path / "t10k-images-idx3-ubyte", np.zeros((3, 28, 28), np.uint8))
    write_idx(tmp_path / "t10k-labels-idx1-ubyte", np.zeros((2,), np.uint8))
    with pytest.raises(ValueError, match="count mismatch"):
        load_mnist(tmp_path, "test")


# ====================================================================== CIFAR-10
def _cifar_batch(n: int, seed: int):
    rng = np.random.default_rng(seed)
    data = rng.integers(0, 256, (n, 3072)).astype(np.uint8)
    labels = [int(v) for v in rng.integers(0, 10, n)]
    return data, labels


def _write_py3_batch(path, data, labels):
    batch = {b"batch_label": b"training batch", b"labels": labels, b"data": data, b"filenames": [b"a.png"] * len(labels)}
    path.write_bytes(pickle.dumps(batch, protocol=2))


def _py2_str(b: bytes) -> bytes:
    return (b"U" + bytes([len(b)]) + b) if len(b) < 256 else (b"T" + struct.pack("<i", len(b)) + b)


def _write_py2_batch(path, data: np.ndarray, labels) -> None:
    """Opcodes as Python 2's cPickle (protocol 2) wrote the original files: str as (SHORT_)BINSTRING."""
    n = data.shape[0]
    out = bytearray(b"\x80\x02}(")  # PROTO 2, EMPTY_DICT, MARK
    out += _py2_str(b"batch_label") + _py2_str(b"testing batch 1 of 1")
    out += _py2_str(b"labels") + b"](" + b"".join(b"K" + bytes([v]) for v in labels) + b"e"
    out += _py2_str(b"data")
    out += b"cnumpy.core.multiarray\n_reconstruct\ncnumpy\nndarray\nK\x00\x85" + _py2_str(b"b") + b"\x87R"
    out += b"(K\x01J" + struct.pack("<i", n) + b"M" + struct.pack("<H", 3072) + b"\x86"
    out += b"cnumpy\ndtype\n" + _py2_str(b"u1") + b"K\x00K\x01\x87R"
    out += b"(K\x03" + _py2_str(b"|") + b"NNNJ\xff\xff\xff\xffJ\xff\xff\xff\xffK\x00tb"
    out += b"\x89" + _py2_str(data.tobytes()) + b"tb"
    out += b"u."  # SETITEMS, STOP
    path.write_bytes(bytes(out))


def test_cifar10_python3_protocol2_batches_round_trip(tmp_path):
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    parts = [_cifar_batch(3, seed) for seed in range(6)]
    for i in range(5):
        _write_py3_batch(folder / f"data_batch_{i + 1}", *parts[i])
    _write_py3_batch(folder / "test_batch", *parts[5])
    train = load_cifar10(tmp_path, "train")
    assert train.images.shape == (15, 3, 32, 32) and train.images.dtype == torch.uint8
    assert np.array_equal(train.images.reshape(15, 3072).numpy(), np.concatenate([p[0] for p in parts[:5]]))
    assert train.labels.tolist() == sum((p[1] for p in parts[:5]), [])
    assert train.classes == CIFAR10_CLASSES
    # channel layout: the first 1024 values of a row are the red plane, row-major 32×32
    data = parts[0][0]
    assert np.array_equal(train.images[0, 0].numpy(), data[0, :1024].reshape(32, 32))
    assert np.array_equal(train.images[0, 2, 1, 5].numpy(), data[0, 2048 + 32 + 5])
    test = load_cifar10(folder, "test")
    assert np.array_equal(test.images.reshape(3, 3072).numpy(), parts[5][0]) and test.labels.tolist() == parts[5][1]


def test_cifar10_python2_style_batch_round_trip(tmp_path):
    data, labels = _cifar_batch(4, 7)
    _write_py2_batch(tmp_path / "test_batch", data, labels)
    out = read_cifar_batch(tmp_path / "test_batch")
    assert np.array_equal(out.images.reshape(4, 3072).numpy(), data) and out.labels.tolist() == labels


class _Evil:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


class _EvalEvil:
    def __reduce__(self):
        return (eval, ("1+1",))


def test_malicious_pickle_is_refused_without_running_code(tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "data_batch_1"
    path.write_bytes(pickle.dumps({b"data": _Evil(marker), b"labels": []}, protocol=2))
    with pytest.raises(ValueError, match=r"refusing.*(posix|os)\.system"):
        read_cifar_batch(path)
    assert not marker.exists()
    path.write_bytes(pickle.dumps({b"data": _EvalEvil()}, protocol=2))
    with pytest.raises(ValueError, match=r"(__builtin__|builtins)\.eval"):
        read_cifar_batch(path)
    # _codecs.encode is only allowed as str → latin-1 bytes
    path.write_bytes(b"\x80\x02c_codecs\nencode\nX\x01\x00\x00\x00aX\x05\x00\x00\x00utf-8\x86R.")
    with pytest.raises(ValueError, match="encode"):
        read_cifar_batch(path)


def test_cifar_batch_validation(tmp_path):
    path = tmp_path / "b"
    path.write_bytes(pickle.dumps({b"data": np.zeros((2, 3072), np.uint8), b"labels": [1]}, protocol=2))
    with pytest.raises(ValueError, match="count mismatch"):
        read_cifar_batch(path)
    path.write_bytes(pickle.dumps({b"data": np.zeros((2, 100), np.uint8), b"labels": [1, 2]}, protocol=2))
    with pytest.raises(ValueError, match=r"\(N, 3072\)"):
        read_cifar_batch(path)
    path.write_bytes(pickle.dumps([1, 2], protocol=2))
    with pytest.raises(ValueError, match="dict"):
        read_cifar_batch(path)
    path.write_bytes(pickle.dumps({b"data": np.zeros((1, 3072), np.uint8), b"labels": [1]}, protocol=2)[:-20])
    with pytest.raises(ValueError, match="not a valid pickled batch"):
        read_cifar_batch(path)
    with pytest.raises(FileNotFoundError, match="data_batch_1, data_batch_2"):
        load_cifar10(tmp_path / "none", "train")


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(raw=st.binary(max_size=80).map(lambda b: b"\x80\x02" + b))
def test_random_pickle_bytes_never_raise_anything_but_value_error(tmp_path, raw):
    path = tmp_path / "batch"
    path.write_bytes(raw)
    with pytest.raises(ValueError):
        read_cifar_batch(path)


# ====================================================================== image folders, numpy files
def test_image_folder_round_trip(tmp_path):
    from PIL import Image

    rng = np.random.default_rng(0)
    arrays = {}
    for cls, count in (("dog", 2), ("cat", 3)):
        (tmp_path / cls).mkdir()
        for i in range(count):
            a = rng.integers(0, 256, (6, 5, 3)).astype(np.uint8)
            Image.fromarray(a).save(tmp_path / cls / f"{i}.png")
            arrays[(cls, i)] = a
    data = load_image_folder(tmp_path)
    assert data.classes == ("cat", "dog")
    assert data.images.shape == (5, 3, 6, 5) and data.images.dtype == torch.uint8
    assert data.labels.tolist() == [0, 0, 0, 1, 1]
    expected = np.stack([arrays[("cat", i)] for i in range(3)] + [arrays[("dog", i)] for i in range(2)])
    assert np.array_equal(data.images.permute(0, 2, 3, 1).numpy(), expected)  # PNG is lossless
    resized = load_image_folder(tmp_path, size=(4, 7))
    assert resized.images.shape == (5, 3, 4, 7)
    grey = load_image_folder(tmp_path, size=8, mode="L")
    assert grey.images.shape == (5, 1, 8, 8)


def test_image_folder_errors(tmp_path):
    from PIL import Image

    with pytest.raises(FileNotFoundError, match="no such image folder"):
        load_image_folder(tmp_path / "missing")
    with pytest.raises(FileNotFoundError, match="no image files"):
        load_image_folder(tmp_path)
    Image.fromarray(np.zeros((4, 4, 3), np.uint8)).save(tmp_path / "a.png")
    Image.fromarray(np.zeros((5, 4, 3), np.uint8)).save(tmp_path / "b.png")
    with pytest.raises(ValueError, match="differ in size"):
        load_image_folder(tmp_path)
    flat = load_image_folder(tmp_path, size=4)
    assert flat.labels.tolist() == [0, 0] and flat.classes == ()
    (tmp_path / "c.png").write_bytes(b"not a png")
    with pytest.raises(ValueError, match="cannot read image"):
        load_image_folder(tmp_path, size=4)
    with pytest.raises(ValueError, match="mode"):
        load_image_folder(tmp_path, mode="CMYK")


def test_load_numpy(tmp_path):
    a = np.arange(12, dtype=np.int16).reshape(3, 4)
    np.save(tmp_path / "a.npy", a)
    assert np.array_equal(load_numpy(tmp_path / "a.npy").numpy(), a)
    np.savez(tmp_path / "b.npz", x=a, y=np.linspace(0, 1, 5))
    out = load_numpy(tmp_path / "b.npz")
    assert set(out) == {"x", "y"} and np.array_equal(out["y"].numpy(), np.linspace(0, 1, 5))
    np.save(tmp_path / "obj.npy", np.array([{"a": 1}], dtype=object), allow_pickle=True)
    with pytest.raises(ValueError, match="pickle"):
        load_numpy(tmp_path / "obj.npy")
    (tmp_path / "junk.npy").write_bytes(b"\x93NUMPY garbage")
    with pytest.raises(ValueError):
        load_numpy(tmp_path / "junk.npy")
    with pytest.raises(FileNotFoundError, match="missing.npz"):
        load_numpy(tmp_path / "missing.npz")


# ====================================================================== digits, scaling, dequantization
def test_digits():
    data = load_digits()
    assert data.images.shape == (1797, 1, 8, 8) and data.images.dtype == torch.uint8
    assert int(data.images.min()) == 0 and int(data.images.max()) == 16
    assert data.labels.shape == (1797,) and sorted(set(data.labels.tolist())) == list(range(10))
    x = to_unit_range(data.images, DIGITS_LEVELS)
    assert x.min().item() == -1.0 and x.max().item() == 1.0
    assert torch.equal(to_uint8(x, DIGITS_LEVELS), data.images)


def test_unit_range_known_values():
    x = torch.tensor([0, 1, 127, 128, 255], dtype=torch.uint8)
    assert torch.allclose(to_unit_range(x), torch.tensor([-1.0, -1 + 2 / 255, -1 / 255, 1 / 255, 1.0]))
    assert to_uint8(torch.tensor([-5.0, -1.0, 1.0, 7.0])).tolist() == [0, 0, 255, 255]


@settings(max_examples=60, deadline=None)
@given(
    n_levels=st.sampled_from([2, 3, 17, 256, 1000]),
    seed=st.integers(0, 2**31),
    shape=st.lists(st.integers(1, 6), min_size=1, max_size=3),
)
def test_dequantize_round_trips(n_levels, seed, shape):
    g = torch.Generator().manual_seed(seed)
    x = torch.randint(0, n_levels, shape, generator=g)
    if n_levels <= 256:
        x = x.to(torch.uint8)
    y = dequantize(x, n_levels, generator=g)
    assert y.dtype == torch.float32 and y.shape == x.shape
    lower = 2 * x.double() / n_levels - 1
    assert (y.double() >= lower - 1e-6).all() and (y.double() < lower + 2 / n_levels + 1e-6).all()
    assert torch.equal(to_uint8(y, n_levels).long(), x.long())
    assert torch.equal(to_uint8(to_unit_range(x, n_levels), n_levels).long(), x.long())
    assert torch.equal(to_uint8(to_unit_range(x, n_levels, dtype=torch.float64), n_levels).long(), x.long())


@pytest.mark.parametrize("n_levels", [2, 17, 256, 4096])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_dequantize_bin_edges_stay_in_their_bin(n_levels, dtype):
    k = torch.arange(n_levels)
    for u in (0.0, 1e-12, 1 - 1e-12, math.nextafter(1.0, 0.0)):
        y = _dequantize_with(k, torch.full((n_levels,), u, dtype=torch.float64), n_levels, dtype)
        assert torch.equal(to_uint8(y, n_levels).long(), k) and (y >= -1).all() and (y < 1).all()


def test_dequantize_noise_is_uniform_within_bins():
    x = torch.randint(0, 256, (20000,), generator=gen(0)).to(torch.uint8)
    y = dequantize(x, 256, generator=gen(1), dtype=torch.float64)
    u = (y + 1) * 128 - x.double()  # the uniform offset inside the bin
    assert stats.kstest(u.numpy(), "uniform").pvalue > 1e-4
    assert torch.equal(dequantize(x, 256, generator=gen(1)), dequantize(x, 256, generator=gen(1)))


@pytest.mark.parametrize("n_levels", [2, 17, 256])
def test_dequantize_centered_bins_tile_the_training_grid(n_levels):
    from genspace.continuous.likelihood import bits_per_dim

    x = torch.randint(0, n_levels, (5000,), generator=gen(3))
    y = dequantize_centered(x, n_levels, generator=gen(4))
    delta = 2.0 / (n_levels - 1)
    centre = to_unit_range(x, n_levels, dtype=torch.float64)
    offset = (y - centre) / delta  # uniform in [−½, ½): the bin is centred on the training value
    assert (offset >= -0.5).all() and (offset < 0.5).all()
    assert stats.kstest((offset + 0.5).numpy(), "uniform").pvalue > 1e-4
    assert torch.equal(torch.round((y + 1) * (n_levels - 1) / 2).long(), x)
    # the density uniform on the tiled interval [−1 − Δ/2, 1 + Δ/2) scores exactly log2 L bits/dim
    width = n_levels * delta
    log_p = torch.full((3,), -4 * math.log(width), dtype=torch.float64)  # D = 4
    assert torch.allclose(bits_per_dim(log_p, 4, n_levels=n_levels, data_range=width), torch.full((3,), math.log2(n_levels), dtype=torch.float64))


def test_scaling_errors():
    with pytest.raises(ValueError, match="integer levels"):
        dequantize(torch.zeros(3), 256)
    with pytest.raises(ValueError, match="0..16"):
        to_unit_range(torch.tensor([17]), 17)
    with pytest.raises(ValueError, match="n_levels"):
        to_unit_range(torch.tensor([0]), 1)
    with pytest.raises(ValueError, match="floating"):
        to_uint8(torch.tensor([1]))
    with pytest.raises(ValueError, match="NaN"):
        to_uint8(torch.tensor([float("nan")]))
