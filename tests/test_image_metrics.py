"""Image metrics: Fréchet distance, KID, precision/recall, the genspace classifier, Inception errors.

Known answers: closed forms of the Fréchet distance between Gaussians, an independent scipy
reference, brute-force double loops for the unbiased cubic-kernel MMD² and the k-NN manifolds,
constructed mixtures with known coverage, and a classifier trained on the 8×8 digits.
"""


import pytest
import torch
import torch.nn.functional as F

from genspace.data.images import DIGITS_LEVELS, load_digits, to_unit_range
from genspace.metrics import classifier as classifier_module
from genspace.metrics import image_metrics as im
from genspace.metrics.classifier import ClassifierConfig, FeatureClassifier, get_classifier, train_classifier
from genspace.metrics.image_metrics import (
    class_accuracy,
    feature_moments,
    fid_with_inception,
    frechet_distance,
    frechet_distance_from_moments,
    image_metrics,
    kernel_inception_distance,
    polynomial_mmd2,
    precision_recall,
)


def _gen(seed):
    return torch.Generator().manual_seed(seed)


def _random_spd(d, seed, jitter=0.1):
    a = torch.randn(d, d, generator=_gen(seed), dtype=torch.float64)
    return a @ a.T / d + jitter * torch.eye(d, dtype=torch.float64)


def _random_rotation(d, seed):
    q, r = torch.linalg.qr(torch.randn(d, d, generator=_gen(seed), dtype=torch.float64))
    return q * torch.sign(torch.diagonal(r))


# ---------------------------------------------------------------------- Fréchet distance
def test_fd_diagonal_closed_form_including_singular():
    # commuting covariances: FD = |Δμ|² + Σ (√a − √b)², also with zero variances (singular Σ)
    a = torch.tensor([1.0, 0.0, 4.0, 2.5, 0.3], dtype=torch.float64)
    b = torch.tensor([0.0, 0.0, 1.0, 0.7, 9.0], dtype=torch.float64)
    mu_a = torch.tensor([0.0, 1.0, -2.0, 0.5, 3.0], dtype=torch.float64)
    mu_b = torch.tensor([1.0, 1.0, 0.0, 0.0, -1.0], dtype=torch.float64)
    expected = float(((mu_a - mu_b) ** 2).sum() + ((a.sqrt() - b.sqrt()) ** 2).sum())
    got = frechet_distance_from_moments(mu_a, torch.diag(a), mu_b, torch.diag(b))
    assert got == pytest.approx(expected, rel=1e-12, abs=1e-12)
    # the same spectra in a common rotated basis (commuting, non-diagonal): same closed form
    q = _random_rotation(5, 0)
    got_rot = frechet_distance_from_moments(q @ mu_a, q @ torch.diag(a) @ q.T, q @ mu_b, q @ torch.diag(b) @ q.T)
    assert got_rot == pytest.approx(expected, rel=1e-10, abs=1e-10)


def test_fd_general_spd_matches_scipy_sqrtm():
    scipy_linalg = pytest.importorskip("scipy.linalg")
    d = 12
    cov_a, cov_b = _random_spd(d, 1), _random_spd(d, 2)
    mu_a = torch.randn(d, generator=_gen(3), dtype=torch.float64)
    mu_b = torch.randn(d, generator=_gen(4), dtype=torch.float64)
    # reference by a different method: the principal square root of the non-symmetric Σa Σb
    root = scipy_linalg.sqrtm((cov_a @ cov_b).numpy())
    reference = float(
        ((mu_a - mu_b) ** 2).sum() + torch.trace(cov_a) + torch.trace(cov_b) - 2 * float(root.real.trace())
    )
    assert abs(root.imag).max() < 1e-8
    got = frechet_distance_from_moments(mu_a, cov_a, mu_b, cov_b)
    assert got == pytest.approx(reference, abs=1e-8, rel=1e-10)
    # symmetric in its arguments
    assert frechet_distance_from_moments(mu_b, cov_b, mu_a, cov_a) == pytest.approx(got, abs=1e-9)


def test_fd_of_samples_self_zero_translation_and_rotation():
    x = torch.randn(200, 10, generator=_gen(5), dtype=torch.float64)
    y = torch.randn(150, 10, generator=_gen(6), dtype=torch.float64) * 1.5 + 0.3
    assert frechet_distance(x, x) == pytest.approx(0.0, abs=1e-9)
    # a translated copy has the same covariance: FD = |c|²
    c = torch.linspace(-1, 2, 10, dtype=torch.float64)
    assert frechet_distance(x, x + c) == pytest.approx(float(c @ c), rel=1e-9)
    # invariance to a common orthogonal rotation (and translation) of the feature space
    q = _random_rotation(10, 7)
    base = frechet_distance(x, y)
    assert base > 1.0
    assert frechet_distance(x @ q.T + 5, y @ q.T + 5) == pytest.approx(base, rel=1e-9)
    # feature_moments: unbiased covariance as torch.cov
    mu, cov = feature_moments(y)
    assert torch.allclose(mu, y.mean(0)) and torch.allclose(cov, torch.cov(y.T))


def test_fd_rejects_bad_shapes():
    with pytest.raises(ValueError, match="feature dimensions differ"):
        frechet_distance(torch.randn(10, 3), torch.randn(10, 4))
    with pytest.raises(ValueError, match="at least 2"):
        frechet_distance(torch.randn(1, 3), torch.randn(10, 3))
    with pytest.raises(ValueError, match="covariances"):
        frechet_distance_from_moments(torch.zeros(3), torch.eye(3), torch.zeros(3), torch.eye(2))


# ---------------------------------------------------------------------- KID
def _brute_force_mmd2(x, y):
    def k(u, v):
        return (sum(float(a) * float(b) for a, b in zip(u, v)) / len(u) + 1.0) ** 3

    n, m = len(x), len(y)
    kxx = sum(k(x[i], x[j]) for i in range(n) for j in range(n) if i != j) / (n * (n - 1))
    kyy = sum(k(y[i], y[j]) for i in range(m) for j in range(m) if i != j) / (m * (m - 1))
    kxy = sum(k(x[i], y[j]) for i in range(n) for j in range(m)) / (n * m)
    return kxx + kyy - 2 * kxy


def test_kid_matches_brute_force_unbiased_mmd2():
    x = torch.randn(6, 3, generator=_gen(8), dtype=torch.float64)
    y = torch.randn(8, 3, generator=_gen(9), dtype=torch.float64) + 0.7
    assert polynomial_mmd2(x, y) == pytest.approx(_brute_force_mmd2(x, y), rel=1e-12)
    # subsets of the full (equal) size are permutations: every estimate is the full-set one
    kid = kernel_inception_distance(x, y[:6], subsets=3, subset_size=6, generator=_gen(0))
    assert kid.mean == pytest.approx(_brute_force_mmd2(x, y[:6]), rel=1e-12)
    assert kid.std == pytest.approx(0.0, abs=1e-12)


def test_kid_same_law_near_zero_and_shift_positive():
    x = torch.randn(600, 8, generator=_gen(10))
    y = torch.randn(600, 8, generator=_gen(11))
    same = kernel_inception_distance(x, y, subsets=50, subset_size=200, generator=_gen(1))
    assert same.std > 0
    assert abs(same.mean) < 2 * same.std
    shifted = kernel_inception_distance(x, y + 0.5, subsets=50, subset_size=200, generator=_gen(1))
    assert shifted.mean > 5 * shifted.std
    # the same generator seed gives the same subsets
    again = kernel_inception_distance(x, y, subsets=50, subset_size=200, generator=_gen(1))
    assert again == same
    with pytest.raises(ValueError, match="subset_size"):
        kernel_inception_distance(x, y[:10], subset_size=11)


def test_cubic_mmd2_of_shifted_gaussians_matches_population_value():
    # k(x, y) = (xᵀy/d + 1)³ between N(0, I) and N(δ, I), D = |δ|²: expanding the cube and using
    # Gaussian moments (odd ones vanish), MMD² = 3D/d + 3D²/d² + (D³ + 6D² + 3dD + 6D)/d³
    d, n = 8, 3000
    delta = torch.full((d,), 0.5, dtype=torch.float64)
    big_d = float(delta @ delta)
    exact = 3 * big_d / d + 3 * big_d**2 / d**2 + (big_d**3 + 6 * big_d**2 + 3 * d * big_d + 6 * big_d) / d**3
    x = torch.randn(n, d, generator=_gen(20), dtype=torch.float64)
    y = torch.randn(n, d, generator=_gen(21), dtype=torch.float64) + delta
    assert polynomial_mmd2(x, y) == pytest.approx(exact, rel=0.05)  # ~2.5 standard errors at n = 3000


# ---------------------------------------------------------------------- precision / recall
def _brute_force_pr(real, fake, k):
    def radii(s):
        out = []
        for i in range(len(s)):
            d = sorted(float((s[i] - s[j]).norm()) for j in range(len(s)) if j != i)
            out.append(d[k - 1])
        return out

    def coverage(points, centres, r):
        return sum(any(float((p - c).norm()) <= rc for c, rc in zip(centres, r)) for p in points) / len(points)

    return coverage(fake, real, radii(real)), coverage(real, fake, radii(fake))


def test_precision_recall_matches_brute_force_and_chunking():
    real = torch.randn(30, 2, generator=_gen(12), dtype=torch.float64)
    fake = torch.randn(25, 2, generator=_gen(13), dtype=torch.float64) * 1.5 + 0.8
    expected = _brute_force_pr(real, fake, 3)
    assert 0 < expected[0] < 1 and 0 < expected[1] < 1
    assert tuple(precision_recall(real, fake, k=3)) == pytest.approx(expected, abs=1e-12)
    assert tuple(precision_recall(real, fake, k=3, chunk_size=7)) == pytest.approx(expected, abs=1e-12)


def test_precision_recall_identical_far_and_half_the_modes():
    real = torch.randn(300, 4, generator=_gen(14))
    assert tuple(precision_recall(real, real.clone())) == (1.0, 1.0)
    assert tuple(precision_recall(real, real + 100.0)) == (0.0, 0.0)
    # four well-separated modes; the fake set covers two of them
    centres = torch.tensor([[10.0, 10.0], [-10.0, 10.0], [10.0, -10.0], [-10.0, -10.0]])
    real = (centres[:, None, :] + torch.randn(4, 250, 2, generator=_gen(15))).reshape(-1, 2)
    fake = (centres[:2, None, :] + torch.randn(2, 250, 2, generator=_gen(16))).reshape(-1, 2)
    pr = precision_recall(real, fake, k=3)
    assert pr.precision > 0.95
    assert pr.recall == pytest.approx(0.5, abs=0.03)
    with pytest.raises(ValueError, match="more than k=3"):
        precision_recall(real, fake[:3], k=3)


# ---------------------------------------------------------------------- classifier on digits
@pytest.fixture(scope="module")
def digits():
    data = load_digits()
    x = to_unit_range(data.images, DIGITS_LEVELS)
    perm = torch.randperm(x.shape[0], generator=_gen(0))
    return x, data.labels, perm[:1000], perm[1000:]


@pytest.fixture(scope="module")
def trained(digits):
    x, y, train, _ = digits
    return train_classifier(x[train], y[train], n_classes=10, steps=200, batch_size=64, seed=0)


def test_classifier_accuracy_and_feature_distances(digits, trained):
    x, y, _, test = digits
    assert class_accuracy(trained, x[test], y[test]) >= 0.90
    half = test.shape[0] // 2
    a, b = x[test[:half]], x[test[half : 2 * half]]
    blurred = F.avg_pool2d(F.pad(a, (1, 1, 1, 1), mode="replicate"), 3, stride=1)
    noise = torch.rand(a.shape, generator=_gen(1)) * 2 - 1
    fa, fb = trained.features(a), trained.features(b)
    assert fa.shape == (half, 128)
    fd_real = frechet_distance(fa, fb)
    fd_blur = frechet_distance(trained.features(blurred), fb)
    fd_noise = frechet_distance(trained.features(noise), fb)
    assert fd_real < 0.05 * fd_blur and fd_real < 0.05 * fd_noise


def test_image_metrics_values_and_floors(digits, trained):
    x, _, train, test = digits
    fake, real, heldout = x[test[:300]], x[test[300:600]], x[train[:300]]
    out = image_metrics(trained, fake, real, real_heldout=fake, kid_subsets=5)
    # with the held-out set equal to the fake set, each floor is the metric itself
    for key in ("fd", "kid", "kid_std", "precision", "recall"):
        assert out[f"{key}_floor"] == out[key]
    out = image_metrics(trained, fake, real, real_heldout=heldout, kid_subsets=5)
    assert out["fd"] == pytest.approx(frechet_distance(trained.features(fake), trained.features(real)))
    assert out["n_fake"] == 300 and out["n_real"] == 300
    with pytest.raises(ValueError, match="as many images as fake_images"):
        image_metrics(trained, fake, real, real_heldout=heldout[:10])


def test_class_accuracy_known_answer():
    class Stub:
        def predict(self, images):
            return torch.tensor([0, 1, 2, 3])

    assert class_accuracy(Stub(), torch.zeros(4, 1, 2, 2), torch.tensor([0, 1, 0, 3])) == 0.75
    with pytest.raises(ValueError, match="target_labels"):
        class_accuracy(Stub(), torch.zeros(4, 1, 2, 2), torch.tensor([0, 1]))


def test_save_load_round_trip(tmp_path, digits, trained):
    x, _, _, test = digits
    path = trained.save(tmp_path / "clf")
    assert sorted(p.name for p in path.iterdir()) == ["config.json", "model.safetensors"]
    loaded = FeatureClassifier.load(path)
    assert loaded.config == trained.config and loaded.training_info == trained.training_info
    assert torch.equal(loaded.features(x[test]), trained.features(x[test]))
    with pytest.raises(FileNotFoundError, match="config.json"):
        FeatureClassifier.load(tmp_path / "nothing")
    # a config that does not describe the weights is refused, not half-loaded
    text = (path / "config.json").read_text()
    (path / "config.json").write_text(text.replace('"conv2_channels": 128', '"conv2_channels": 64'))
    with pytest.raises(ValueError, match="does not match"):
        FeatureClassifier.load(path)
    (path / "config.json").write_text(text.replace("genspace.FeatureClassifier", "something.else"))
    with pytest.raises(ValueError, match="not a genspace.FeatureClassifier config"):
        FeatureClassifier.load(path)


def test_training_is_deterministic_and_cache_reuses(tmp_path, digits, monkeypatch):
    x, y, train, test = digits
    xs, ys = x[train[:200]], y[train[:200]]
    opts = dict(steps=4, batch_size=32, seed=3, augment=True, conv2_channels=16, feature_dim=8)
    m1 = train_classifier(xs, ys, n_classes=10, **opts)
    m2 = train_classifier(xs, ys, n_classes=10, **opts)
    assert all(torch.equal(p, q) for p, q in zip(m1.state_dict().values(), m2.state_dict().values()))
    m3 = train_classifier(xs, ys, n_classes=10, **{**opts, "seed": 4})
    assert not torch.equal(m1.head.weight, m3.head.weight)

    first = get_classifier("tiny", xs, ys, tmp_path, **opts)
    assert torch.equal(first.features(x[test[:20]]), m1.features(x[test[:20]]))

    def refuse(*args, **kwargs):
        raise AssertionError("get_classifier retrained although a cached classifier exists")

    monkeypatch.setattr(classifier_module, "train_classifier", refuse)
    second = get_classifier("tiny", xs, ys, tmp_path, **opts)
    assert torch.equal(second.features(x[test[:20]]), first.features(x[test[:20]]))
    with pytest.raises(ValueError, match="different data"):
        get_classifier("tiny", xs[:100], ys[:100], tmp_path, **opts)
    with pytest.raises(ValueError, match="steps"):
        get_classifier("tiny", xs, ys, tmp_path, **{**opts, "steps": 5})
    with pytest.raises(ValueError, match="plain file name"):
        get_classifier("../escape", xs, ys, tmp_path)


def test_random_shift_is_a_one_pixel_translation():
    x = torch.arange(2 * 1 * 4 * 5, dtype=torch.float32).reshape(2, 1, 4, 5)
    out = classifier_module._random_shift(x, _gen(0))
    padded = F.pad(x, (1, 1, 1, 1), mode="replicate")
    for i in range(2):
        crops = [padded[i, :, dy : dy + 4, dx : dx + 5] for dy in range(3) for dx in range(3)]
        assert any(torch.equal(out[i], c) for c in crops)


def test_classifier_rejects_bad_inputs(trained):
    with pytest.raises(ValueError, match=r"\(N, 1, 8, 8\)"):
        trained.features(torch.zeros(3, 1, 28, 28))
    with pytest.raises(ValueError, match="to_unit_range"):
        trained.features(torch.zeros(3, 1, 8, 8, dtype=torch.uint8))
    with pytest.raises(ValueError, match="labels must lie in 0..9"):
        train_classifier(torch.zeros(4, 1, 8, 8), torch.tensor([0, 1, 2, 10]), n_classes=10, steps=1)
    with pytest.raises(ValueError, match="n_classes"):
        ClassifierConfig(1, 8, 8, 1)


def test_any_image_shape_works():
    # global average pooling: the architecture accepts any (C, H, W), even 1×1 or odd sizes
    for shape in [(3, 7, 5), (2, 1, 1)]:
        images = torch.rand((6, *shape), generator=_gen(2)) * 2 - 1
        model = train_classifier(images, torch.tensor([0, 1, 0, 1, 2, 2]), n_classes=3, steps=2, batch_size=4)
        assert model.features(images).shape == (6, 128)
        assert model.logits(images).shape == (6, 3)


# ---------------------------------------------------------------------- Inception FID (optional)
def test_inception_fid_without_packages_says_what_is_missing(monkeypatch):
    monkeypatch.setattr(im, "_package_available", lambda module: False)
    images = torch.zeros(4, 3, 8, 8, dtype=torch.uint8)
    with pytest.raises(ValueError) as err:
        fid_with_inception(images, images)
    msg = str(err.value)
    for needed in ("torch-fidelity", "pip install torch-fidelity", "clean-fid", "pip install clean-fid",
                   im.TORCH_FIDELITY_WEIGHTS, im.CLEAN_FID_WEIGHTS, "never downloads"):
        assert needed in msg


def test_inception_fid_with_package_but_no_weights(monkeypatch, tmp_path):
    monkeypatch.setattr(im, "_package_available", lambda module: module == "torch_fidelity")
    missing = tmp_path / "weights.pth"
    images = torch.zeros(4, 1, 8, 8)
    with pytest.raises(ValueError) as err:
        fid_with_inception(images, images, backend="torch-fidelity", weights_path=missing)
    assert str(missing) in str(err.value) and "does not exist" in str(err.value)
    with pytest.raises(ValueError, match="backend must be one of"):
        fid_with_inception(images, images, backend="inception")
    with pytest.raises(ValueError, match="not an existing folder"):
        fid_with_inception(str(tmp_path / "no-such-dir"), images)
