"""Image metrics in the feature space of a classifier genspace trains itself (no downloaded weights).

Features are (N, F) tensors, e.g. ``classifier.features(images)`` of a
:class:`~genspace.metrics.classifier.FeatureClassifier`. All arithmetic runs in float64 on the
features' device; results are Python floats.

- :func:`frechet_distance` — Heusel et al. (2017, arXiv:1706.08500, Eq. 6): the Fréchet (2-Wasserstein) distance
  between Gaussians fitted to the two feature sets,
  ‖μa − μb‖² + tr(Σa + Σb − 2(Σa Σb)^{1/2}). The trace of the matrix square root is computed
  from the eigenvalues of the symmetric PSD matrix √Σa Σb √Σa, which is similar to Σa Σb
  (√Σa Σb √Σa = √Σa (Σa Σb) √Σa⁻¹), so tr (Σa Σb)^{1/2} = Σ_i √λ_i(√Σa Σb √Σa): two symmetric
  eigendecompositions, no complex arithmetic and no scipy.
- :func:`kernel_inception_distance` — Bińkowski et al. (2018, §4): the unbiased MMD²
  with the cubic polynomial kernel k(x, y) = (xᵀy/d + 1)³ (the U-statistic of Gretton et al. 2012,
  Lemma 6), averaged over random subsets.
- :func:`precision_recall` — Kynkäänniemi et al. (2019, §2): the real (fake) manifold
  is the union of balls around each real (fake) feature reaching its k-th nearest neighbour;
  precision is the fraction of fake samples inside the real manifold, recall the fraction of
  real samples inside the fake manifold.
- :func:`class_accuracy` — fraction of images a classifier assigns to their target class
  (class-conditional generation).
- :func:`image_metrics` — all of the above for generated vs. real images, each with its floor
  (the same metric between two real sets) when a held-out real set is given.
- :func:`fid_with_inception` — the standard Inception-v3 FID through torch-fidelity or clean-fid,
  only when the package *and* its weights are already on disk; otherwise a ValueError saying
  what is missing. Nothing is ever downloaded.
"""

from __future__ import annotations

import importlib.util
import math
import os
from pathlib import Path
from typing import NamedTuple, Optional, Union

import torch

__all__ = [
    "feature_moments",
    "frechet_distance",
    "frechet_distance_from_moments",
    "polynomial_mmd2",
    "kernel_inception_distance",
    "KIDResult",
    "precision_recall",
    "PrecisionRecall",
    "class_accuracy",
    "image_metrics",
    "fid_with_inception",
    "TORCH_FIDELITY_WEIGHTS",
    "CLEAN_FID_WEIGHTS",
]

_DEFAULT_BLOCK = 1 << 20  # entries of one chunk of a pairwise matrix (8 MB in float64)

TORCH_FIDELITY_WEIGHTS = "weights-inception-2015-12-05-6726825d.pth"
"""File name torch-fidelity loads from ``torch.hub.get_dir()/checkpoints`` (``$TORCH_HOME``)."""
_TORCH_FIDELITY_URL = (
    "https://github.com/toshas/torch-fidelity/releases/download/v0.2.0/" + TORCH_FIDELITY_WEIGHTS
)
CLEAN_FID_WEIGHTS = "/tmp/inception-2015-12-05.pt"
"""Where clean-fid (on Linux/macOS) looks for its TorchScript Inception file."""
_CLEAN_FID_URL = "https://nvlabs-fi-cdn.nvidia.com/stylegan2-ada-pytorch/pretrained/metrics/inception-2015-12-05.pt"


# ---------------------------------------------------------------------- inputs
def _as_features(x, name: str, min_n: int = 2) -> torch.Tensor:
    if not isinstance(x, torch.Tensor):
        x = torch.as_tensor(x)
    if x.ndim != 2:
        raise ValueError(f"{name} must be a feature matrix (N, F), got shape {tuple(x.shape)}")
    if x.shape[0] < min_n:
        raise ValueError(f"{name} needs at least {min_n} rows, got {x.shape[0]}")
    x = x.to(torch.float64)
    if not bool(torch.isfinite(x).all()):
        raise ValueError(f"{name} holds non-finite values (NaN or inf)")
    return x


def _as_pair(a, b, min_n: int = 2) -> tuple[torch.Tensor, torch.Tensor]:
    a, b = _as_features(a, "feat_a", min_n), _as_features(b, "feat_b", min_n)
    if a.shape[1] != b.shape[1]:
        raise ValueError(f"feature dimensions differ: feat_a {tuple(a.shape)}, feat_b {tuple(b.shape)}")
    return a, b.to(a.device)


def _rows_per_chunk(chunk_size: Optional[int], m: int) -> int:
    if chunk_size is None:
        return max(1, _DEFAULT_BLOCK // max(1, m))
    if isinstance(chunk_size, bool) or not isinstance(chunk_size, int) or chunk_size < 1:
        raise ValueError(f"chunk_size must be a positive integer or None, got {chunk_size!r}")
    return chunk_size


def _sq_dists(a: torch.Tensor, b: torch.Tensor, a2: torch.Tensor, b2: torch.Tensor) -> torch.Tensor:
    """(n, m) squared Euclidean distances ‖a_i − b_j‖², clamped at 0."""
    return (a2[:, None] + b2[None, :] - 2.0 * (a @ b.T)).clamp_(min=0.0)


# ---------------------------------------------------------------------- Fréchet distance
def feature_moments(feats) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean (F,) and unbiased covariance (F, F) (divisor N − 1) of features (N, F), float64."""
    x = _as_features(feats, "feats")
    mu = x.mean(dim=0)
    centred = x - mu
    cov = centred.T @ centred / (x.shape[0] - 1)
    return mu, cov


def _clean_eigenvalues(lam: torch.Tensor) -> torch.Tensor:
    """Eigenvalues of a symmetric PSD matrix with rounding noise set to 0.

    A symmetric eigensolver returns each eigenvalue to within about ε·max|λ|, so values below
    F·ε·max|λ| are indistinguishable from 0; set to 0 they keep exactly singular matrices exact
    (their square roots would otherwise add errors of order √ε).
    """
    tol = lam.shape[-1] * torch.finfo(lam.dtype).eps * lam.abs().max().clamp(min=torch.finfo(lam.dtype).tiny)
    return torch.where(lam > tol, lam, torch.zeros_like(lam))


def _psd_sqrt(cov: torch.Tensor) -> torch.Tensor:
    """Symmetric square root V diag(√λ) Vᵀ of a symmetric PSD matrix (λ cleaned of rounding noise)."""
    lam, vec = torch.linalg.eigh((cov + cov.T) / 2)
    return (vec * _clean_eigenvalues(lam).sqrt()) @ vec.T


def frechet_distance_from_moments(mu_a, cov_a, mu_b, cov_b) -> float:
    """‖μa − μb‖² + tr(Σa + Σb − 2(Σa Σb)^{1/2}) (Heusel et al. 2017, Eq. 6; Dowson & Landau 1982).

    tr (Σa Σb)^{1/2} = Σ_i √λ_i with λ the eigenvalues of the symmetric PSD matrix
    √Σa Σb √Σa (similar to Σa Σb). Eigenvalues below F·ε·max|λ| (rounding noise, including tiny
    negative ones) are set to 0, so singular covariances (fewer samples than features) come out
    exact too. Float64 throughout.

    Args:
        mu_a, mu_b: means (F,); cov_a, cov_b: symmetric PSD covariances (F, F).

    Returns:
        the squared Fréchet distance (≥ 0).
    """
    mu_a, mu_b = torch.as_tensor(mu_a, dtype=torch.float64), torch.as_tensor(mu_b, dtype=torch.float64)
    cov_a, cov_b = torch.as_tensor(cov_a, dtype=torch.float64), torch.as_tensor(cov_b, dtype=torch.float64)
    d = mu_a.shape[0] if mu_a.ndim == 1 else 0
    if d < 1 or mu_b.shape != (d,) or cov_a.shape != (d, d) or cov_b.shape != (d, d):
        raise ValueError(
            "moments must be means (F,) and covariances (F, F) of one F >= 1; got "
            f"mu_a {tuple(mu_a.shape)}, cov_a {tuple(cov_a.shape)}, mu_b {tuple(mu_b.shape)}, cov_b {tuple(cov_b.shape)}"
        )
    for name, v in (("mu_a", mu_a), ("cov_a", cov_a), ("mu_b", mu_b), ("cov_b", cov_b)):
        if not bool(torch.isfinite(v).all()):
            raise ValueError(f"{name} holds non-finite values (NaN or inf)")
    mu_b, cov_b = mu_b.to(mu_a.device), cov_b.to(mu_a.device)
    root_a = _psd_sqrt(cov_a)
    middle = root_a @ cov_b @ root_a  # (F, F), similar to Σa Σb
    lam = _clean_eigenvalues(torch.linalg.eigvalsh((middle + middle.T) / 2))
    trace_sqrt = lam.sqrt().sum()
    diff = mu_a - mu_b
    value = diff @ diff + torch.trace(cov_a) + torch.trace(cov_b) - 2.0 * trace_sqrt
    return max(float(value), 0.0)


def frechet_distance(feat_a, feat_b) -> float:
    """Fréchet distance between Gaussians fitted to two feature sets (the FID formula).

    Args:
        feat_a: (N, F) features; feat_b: (M, F) features (N, M ≥ 2).

    Returns:
        ‖μa − μb‖² + tr(Σa + Σb − 2(Σa Σb)^{1/2}) with sample means and unbiased covariances.
        It is biased upwards at finite N (Chong & Forsyth 2020): compare values at equal sample
        sizes, or next to the floor between two real sets (:func:`image_metrics`).
    """
    a, b = _as_pair(feat_a, feat_b)
    return frechet_distance_from_moments(*feature_moments(a), *feature_moments(b))


# ---------------------------------------------------------------------- KID
class KIDResult(NamedTuple):
    """Mean and standard deviation (over subsets) of the unbiased MMD² estimates."""

    mean: float
    std: float


def _cubic_kernel(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """k(x, y) = (xᵀy/d + 1)³ for all pairs: (n, m)."""
    return (x @ y.T / x.shape[1] + 1.0) ** 3


def polynomial_mmd2(x, y) -> float:
    """Unbiased MMD² with the cubic kernel k(x, y) = (xᵀy/d + 1)³ (Bińkowski et al. 2018, §4;
    Gretton et al. 2012, Lemma 6).

        MMD²_u = 1/(n(n−1)) Σ_{i≠j} k(x_i, x_j) + 1/(m(m−1)) Σ_{i≠j} k(y_i, y_j) − 2/(nm) Σ_{i,j} k(x_i, y_j)

    Args:
        x: (n, F) features; y: (m, F) features (n, m ≥ 2).
    """
    x, y = _as_pair(x, y)
    return float(_mmd2_u(x, y))


def _mmd2_u(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    n, m = x.shape[0], y.shape[0]
    kxx, kyy, kxy = _cubic_kernel(x, x), _cubic_kernel(y, y), _cubic_kernel(x, y)
    sxx = (kxx.sum() - kxx.diagonal().sum()) / (n * (n - 1))
    syy = (kyy.sum() - kyy.diagonal().sum()) / (m * (m - 1))
    return sxx + syy - 2.0 * kxy.mean()


def kernel_inception_distance(
    feat_a,
    feat_b,
    *,
    subsets: int = 100,
    subset_size: Optional[int] = None,
    generator: Optional[torch.Generator] = None,
) -> KIDResult:
    """Kernel (Inception) distance: unbiased cubic-kernel MMD² averaged over subsets (Bińkowski et al. 2018, §4).

    Each of ``subsets`` rounds draws ``subset_size`` rows of each set without replacement and
    computes :func:`polynomial_mmd2` on them. The estimate is unbiased at any sample size (its
    expectation is 0 when both sets come from one law, so it can be slightly negative).

    Args:
        feat_a: (N, F) features; feat_b: (M, F) features.
        subsets: number of random subsets (≥ 1).
        subset_size: rows per subset, 2..min(N, M). Default min(1000, min(N, M) // 2): 1000 as in
            Bińkowski et al., and half the smaller set for small sets so that the subsets differ
            and ``std`` says how much the estimate varies.
        generator: torch.Generator for the subsets (None: torch's global generator).

    Returns:
        KIDResult(mean, std): mean and population standard deviation of the subset estimates.
    """
    a, b = _as_pair(feat_a, feat_b)
    if isinstance(subsets, bool) or not isinstance(subsets, int) or subsets < 1:
        raise ValueError(f"subsets must be a positive integer, got {subsets!r}")
    n_max = min(a.shape[0], b.shape[0])
    if subset_size is None:
        subset_size = max(2, min(1000, n_max // 2))
    if isinstance(subset_size, bool) or not isinstance(subset_size, int) or not 2 <= subset_size <= n_max:
        raise ValueError(
            f"subset_size must be an integer in 2..{n_max} (the smaller set's size), got {subset_size!r}"
        )
    if generator is not None and not isinstance(generator, torch.Generator):
        raise ValueError(f"generator must be None or a torch.Generator, got {type(generator).__name__}")
    values = []
    for _ in range(subsets):
        ia = torch.randperm(a.shape[0], generator=generator)[:subset_size].to(a.device)
        ib = torch.randperm(b.shape[0], generator=generator)[:subset_size].to(b.device)
        values.append(_mmd2_u(a[ia], b[ib]))
    v = torch.stack(values)
    return KIDResult(float(v.mean()), float(v.std(unbiased=False)))


# ---------------------------------------------------------------------- precision / recall
class PrecisionRecall(NamedTuple):
    precision: float  # fraction of fake samples inside the real manifold
    recall: float  # fraction of real samples inside the fake manifold


def _knn_radii2(x: torch.Tensor, k: int, chunk_size: Optional[int]) -> torch.Tensor:
    """Squared distance (N,) from each row to its k-th nearest other row (the row itself excluded)."""
    x2 = (x * x).sum(1)
    rows = _rows_per_chunk(chunk_size, x.shape[0])
    out = []
    for start in range(0, x.shape[0], rows):
        d2 = _sq_dists(x[start : start + rows], x, x2[start : start + rows], x2)  # (rows, N)
        # the k+1 smallest values include the row's own 0: entry k is the k-th other neighbour
        out.append(torch.topk(d2, k + 1, dim=1, largest=False).values[:, k])
    return torch.cat(out)


def _coverage(points: torch.Tensor, centres: torch.Tensor, radii2: torch.Tensor, chunk_size: Optional[int]) -> float:
    """Fraction of ``points`` inside at least one ball (centres_j, radius_j)."""
    p2, c2 = (points * points).sum(1), (centres * centres).sum(1)
    rows = _rows_per_chunk(chunk_size, centres.shape[0])
    inside = 0
    for start in range(0, points.shape[0], rows):
        d2 = _sq_dists(points[start : start + rows], centres, p2[start : start + rows], c2)  # (rows, M)
        inside += int((d2 <= radii2[None, :]).any(dim=1).sum())
    return inside / points.shape[0]


def precision_recall(real_feats, fake_feats, *, k: int = 3, chunk_size: Optional[int] = None) -> PrecisionRecall:
    """Improved precision and recall (Kynkäänniemi et al. 2019, §2).

    With NN_k(φ, Φ) the distance from φ ∈ Φ to its k-th nearest neighbour in Φ \\ {φ}, the
    manifold of a set Φ is ∪_{φ∈Φ} B(φ, NN_k(φ, Φ)) and f(x, Φ) = 1 if x lies in it. Then

        precision = 1/|Φ_fake| Σ_{x ∈ Φ_fake} f(x, Φ_real),
        recall    = 1/|Φ_real| Σ_{x ∈ Φ_real} f(x, Φ_fake).

    Distances are Euclidean, computed in row chunks (``chunk_size`` rows at a time; default
    about a million matrix entries per chunk).

    Args:
        real_feats: (N, F); fake_feats: (M, F), N, M > k.
        k: neighbourhood size (the paper uses 3).
    """
    real, fake = _as_pair(real_feats, fake_feats)
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise ValueError(f"k must be a positive integer, got {k!r}")
    if min(real.shape[0], fake.shape[0]) <= k:
        raise ValueError(
            f"each set needs more than k={k} samples, got {real.shape[0]} real and {fake.shape[0]} fake"
        )
    precision = _coverage(fake, real, _knn_radii2(real, k, chunk_size), chunk_size)
    recall = _coverage(real, fake, _knn_radii2(fake, k, chunk_size), chunk_size)
    return PrecisionRecall(precision, recall)


# ---------------------------------------------------------------------- classifier-based
def class_accuracy(classifier, images: torch.Tensor, target_labels: torch.Tensor) -> float:
    """Fraction of ``images`` that ``classifier.predict`` assigns to ``target_labels`` (N,)."""
    if not isinstance(target_labels, torch.Tensor) or target_labels.dtype.is_floating_point:
        raise ValueError("target_labels must be an integer tensor (N,)")
    if not isinstance(images, torch.Tensor) or images.ndim < 1 or target_labels.shape != (images.shape[0],):
        shape = tuple(images.shape) if isinstance(images, torch.Tensor) else type(images).__name__
        raise ValueError(f"target_labels must have shape (N,) for images {shape}, got {tuple(target_labels.shape)}")
    if images.shape[0] == 0:
        raise ValueError("class_accuracy needs at least one image")
    pred = classifier.predict(images)
    return float((pred.cpu() == target_labels.cpu().to(torch.int64)).to(torch.float64).mean())


def image_metrics(
    classifier,
    fake_images: torch.Tensor,
    real_images: torch.Tensor,
    *,
    real_heldout: Optional[torch.Tensor] = None,
    fake_labels: Optional[torch.Tensor] = None,
    k: int = 3,
    kid_subsets: int = 100,
    kid_subset_size: Optional[int] = None,
    seed: int = 0,
) -> dict:
    """FD, KID, precision and recall of generated images in the classifier's feature space.

    Args:
        classifier: an object with ``features(images) -> (N, F)`` and ``predict`` (a
            :class:`~genspace.metrics.classifier.FeatureClassifier`).
        fake_images: (M, C, H, W) generated images in [−1, 1].
        real_images: (N, C, H, W) real images in [−1, 1] (the reference set).
        real_heldout: optional (M, C, H, W) real images independent of ``real_images``, as many
            as ``fake_images``; each metric is then also computed for it in place of the fake
            set: the ``*_floor`` values are what a perfect generator scores at this sample size.
        fake_labels: optional (M,) target classes of class-conditional samples; adds
            ``class_accuracy``.
        k: neighbourhood size of precision/recall.
        kid_subsets, kid_subset_size: as in :func:`kernel_inception_distance`.
        seed: seed of the KID subsets (the floor uses the same subsets' seed).

    Returns:
        dict with ``fd``, ``kid``, ``kid_std``, ``precision``, ``recall``, ``n_fake``, ``n_real``;
        with ``real_heldout`` also ``fd_floor``, ``kid_floor``, ``kid_std_floor``,
        ``precision_floor``, ``recall_floor``; with ``fake_labels`` also ``class_accuracy``.
    """
    if real_heldout is not None and (
        not isinstance(real_heldout, torch.Tensor) or real_heldout.shape[0] != fake_images.shape[0]
    ):
        n = real_heldout.shape[0] if isinstance(real_heldout, torch.Tensor) else type(real_heldout).__name__
        raise ValueError(
            f"real_heldout must hold as many images as fake_images ({fake_images.shape[0]}) for a fair "
            f"floor (FD and precision/recall depend on the sample size), got {n}"
        )
    fake = classifier.features(fake_images)
    real = classifier.features(real_images)

    def all_metrics(feats: torch.Tensor) -> dict:
        kid = kernel_inception_distance(
            feats,
            real,
            subsets=kid_subsets,
            subset_size=kid_subset_size,
            generator=torch.Generator().manual_seed(seed),
        )
        pr = precision_recall(real, feats, k=k)
        return {
            "fd": frechet_distance(feats, real),
            "kid": kid.mean,
            "kid_std": kid.std,
            "precision": pr.precision,
            "recall": pr.recall,
        }

    out = all_metrics(fake)
    out["n_fake"], out["n_real"] = int(fake.shape[0]), int(real.shape[0])
    if real_heldout is not None:
        floor = all_metrics(classifier.features(real_heldout))
        out.update({f"{key}_floor": value for key, value in floor.items()})
    if fake_labels is not None:
        out["class_accuracy"] = class_accuracy(classifier, fake_images, fake_labels)
    return out


# ---------------------------------------------------------------------- Inception FID (optional)
def _package_available(module: str) -> bool:
    """Whether ``module`` can be imported (checked without importing it)."""
    return importlib.util.find_spec(module) is not None


def _torch_fidelity_weights(weights_path) -> Path:
    if weights_path is not None:
        return Path(weights_path)
    return Path(torch.hub.get_dir()) / "checkpoints" / TORCH_FIDELITY_WEIGHTS


def _select_backend(backends: list[str], weights_path) -> tuple[str, Path]:
    """(backend, weights file) of the first usable backend, or raise ValueError listing what is missing."""
    problems = []
    for backend in backends:
        if backend == "torch-fidelity":
            weights = _torch_fidelity_weights(weights_path)
            if not _package_available("torch_fidelity"):
                problems.append(
                    "torch-fidelity: the package is not importable (pip install torch-fidelity); it would also "
                    f"need the weights file {str(weights)!r} (pass weights_path=..., or place "
                    f"{TORCH_FIDELITY_WEIGHTS} under $TORCH_HOME/hub/checkpoints; get it from {_TORCH_FIDELITY_URL})"
                )
            elif not weights.is_file():
                problems.append(
                    f"torch-fidelity: the package is installed but the Inception weights file {str(weights)!r} "
                    f"does not exist (pass weights_path=... or set $TORCH_HOME so that "
                    f"hub/checkpoints/{TORCH_FIDELITY_WEIGHTS} is found; get it from {_TORCH_FIDELITY_URL})"
                )
            else:
                return backend, weights
        else:  # clean-fid
            weights = Path(CLEAN_FID_WEIGHTS)
            if weights_path is not None and Path(weights_path) != weights:
                problems.append(
                    f"clean-fid: it only reads its weights from {CLEAN_FID_WEIGHTS!r}, not from "
                    f"weights_path={str(weights_path)!r}"
                )
            elif not _package_available("cleanfid"):
                problems.append(
                    "clean-fid: the package is not importable (pip install clean-fid); it would also need "
                    f"the TorchScript weights file {CLEAN_FID_WEIGHTS!r} (from {_CLEAN_FID_URL})"
                )
            elif not weights.is_file():
                problems.append(
                    f"clean-fid: the package is installed but its weights file {CLEAN_FID_WEIGHTS!r} does not "
                    f"exist (get it from {_CLEAN_FID_URL})"
                )
            else:
                return backend, weights
    raise ValueError(
        "fid_with_inception: no usable Inception-v3 FID backend (genspace never downloads weights):\n  - "
        + "\n  - ".join(problems)
        + "\nWithout them, use genspace.metrics.image_metrics.image_metrics with a classifier from "
        "genspace.metrics.classifier.get_classifier."
    )


def _to_uint8_rgb(x: torch.Tensor, name: str) -> torch.Tensor:
    """(N, C, H, W) uint8 levels or floats in [−1, 1] → (N, 3, H, W) uint8 on the CPU."""
    if x.ndim != 4 or x.shape[1] not in (1, 3) or x.shape[0] < 2:
        raise ValueError(f"{name} must be images (N >= 2, C in {{1, 3}}, H, W), got shape {tuple(x.shape)}")
    if x.dtype == torch.uint8:
        out = x
    elif x.dtype.is_floating_point:
        from genspace.data.images import to_uint8

        out = to_uint8(x.clamp(-1.0, 1.0), 256)
    else:
        raise ValueError(f"{name} must be uint8 levels or floats in [-1, 1], got dtype {x.dtype}")
    return out.expand(-1, 3, -1, -1).contiguous().cpu() if out.shape[1] == 1 else out.contiguous().cpu()


def _check_source(x, name: str):
    if isinstance(x, (str, os.PathLike)):
        if not Path(x).is_dir():
            raise ValueError(f"{name}: {str(x)!r} is not an existing folder of images")
        return str(x)
    if isinstance(x, torch.Tensor):
        return _to_uint8_rgb(x, name)
    raise ValueError(f"{name} must be a folder path or an image tensor (N, C, H, W), got {type(x).__name__}")


def fid_with_inception(
    fake: Union[str, os.PathLike, torch.Tensor],
    real: Union[str, os.PathLike, torch.Tensor],
    *,
    backend: str = "auto",
    weights_path: Union[None, str, os.PathLike] = None,
    batch_size: int = 64,
    device: Union[str, torch.device] = "cpu",
) -> float:
    """Standard FID with Inception-v3 pool features, through torch-fidelity or clean-fid.

    Used only when the package is importable *and* its weights are already on disk; nothing is
    downloaded. Otherwise ValueError lists, per backend, which package or which weights file is
    missing. (torch-fidelity reads its ``.pth`` with ``torch.load``, which in torch ≥ 2.6 only
    rebuilds tensors; clean-fid reads a TorchScript file.)

    Args:
        fake, real: a folder of image files, or an image tensor (N, C, H, W) with C ∈ {1, 3},
            uint8 levels or floats in [−1, 1] (greyscale is repeated to RGB).
        backend: "auto" (torch-fidelity, then clean-fid), "torch-fidelity" or "clean-fid".
        weights_path: torch-fidelity's weights file (default
            ``torch.hub.get_dir()/checkpoints/weights-inception-2015-12-05-6726825d.pth``);
            clean-fid always reads :data:`CLEAN_FID_WEIGHTS`.
        batch_size: images per forward pass.
        device: where Inception runs.

    Returns:
        the FID (Heusel et al. 2017) as computed by the backend.
    """
    choices = {"auto": ["torch-fidelity", "clean-fid"], "torch-fidelity": ["torch-fidelity"], "clean-fid": ["clean-fid"]}
    if backend not in choices:
        raise ValueError(f"backend must be one of {sorted(choices)}, got {backend!r}")
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
    fake, real = _check_source(fake, "fake"), _check_source(real, "real")
    chosen, weights = _select_backend(choices[backend], weights_path)
    device = torch.device(device)
    if chosen == "torch-fidelity":
        return _fid_torch_fidelity(fake, real, weights, batch_size, device)
    return _fid_clean_fid(fake, real, batch_size, device)


def _fid_torch_fidelity(fake, real, weights: Path, batch_size: int, device: torch.device) -> float:
    import torch_fidelity
    from torch.utils.data import Dataset

    class _Images(Dataset):
        def __init__(self, images: torch.Tensor) -> None:
            self.images = images  # (N, 3, H, W) uint8

        def __len__(self) -> int:
            return self.images.shape[0]

        def __getitem__(self, i: int) -> torch.Tensor:
            return self.images[i]

    def wrap(x):
        return _Images(x) if isinstance(x, torch.Tensor) else x

    result = torch_fidelity.calculate_metrics(
        input1=wrap(fake),
        input2=wrap(real),
        fid=True,
        cuda=device.type == "cuda",
        batch_size=batch_size,
        feature_extractor_weights_path=str(weights),
        cache=False,
        verbose=False,
    )
    return float(result["frechet_inception_distance"])


def _fid_clean_fid(fake, real, batch_size: int, device: torch.device) -> float:
    import tempfile

    from cleanfid import fid

    with tempfile.TemporaryDirectory() as tmp:
        folders = []
        for i, x in enumerate((fake, real)):
            if isinstance(x, torch.Tensor):
                folder = Path(tmp) / f"set{i}"
                _write_pngs(x, folder)
                x = str(folder)
            folders.append(x)
        return float(fid.compute_fid(folders[0], folders[1], mode="clean", batch_size=batch_size, device=device, num_workers=0))


def _write_pngs(images: torch.Tensor, folder: Path) -> None:
    from PIL import Image

    folder.mkdir(parents=True)
    arrays = images.permute(0, 2, 3, 1).numpy()  # (N, H, W, 3) uint8
    width = max(1, int(math.log10(max(1, len(arrays) - 1))) + 1)
    for i, arr in enumerate(arrays):
        Image.fromarray(arr).save(folder / f"{i:0{width}d}.png")
