"""Autoregressive family (genspace.families.ar, genspace.nets.masked): MADE, gated PixelCNN, TransformerAR.

Known answers:
- autoregressive connectivity through autograd: every output group of dimension d has exactly
  zero gradient with respect to the inputs at and after d in the model's ordering (MADE: every
  mask set; PixelCNN: the receptive field is exactly "earlier in raster order, within R", i.e. no
  blind spot, top-right neighbours included; Transformer: every earlier token and nothing else);
- exact likelihoods: probabilities over all K^D configurations sum to 1; the MADE-MoG density
  integrates to 1 on a grid; the binned Transformer density integrates to 1 exactly;
- sampling matches the likelihood: a chi-square test of samples against exp(log_likelihood) over
  an enumerable space (with a negative control that the same test rejects a different model);
- training with the shared Trainer improves held-out NLL and the energy distance to its floor.
"""

from __future__ import annotations

import copy
import itertools
import math
from types import SimpleNamespace

import pytest
import torch
from scipy.stats import chi2

from genspace.core.random import StackedGenerator
from genspace.families.ar import (
    FAMILY_BUILDERS,
    MADE,
    MADEConfig,
    PixelCNN,
    PixelCNNConfig,
    TransformerAR,
    TransformerARConfig,
    build_made,
    build_pixelcnn,
    build_transformer_ar,
    categorical_inverse_cdf,
)
from genspace.nets.masked import GatedPixelCNN, MADENet, made_degrees

N_SAMPLES = 20_000
P_VALUE = 1e-4  # false-alarm rate of each chi-square test


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _seeded(seed: int, fn):
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return fn()


def _all_levels(n_levels: int, shape: tuple[int, ...]) -> torch.Tensor:
    """Every configuration of levels: (n_levels^D, *shape) int64."""
    d = math.prod(shape)
    return torch.tensor(list(itertools.product(range(n_levels), repeat=d))).reshape(-1, *shape)


def _chi_square(counts: torch.Tensor, probs: torch.Tensor, n: int) -> tuple[float, float]:
    """(statistic, threshold at P_VALUE): cells with expected count < 5 pooled into one."""
    expected = probs.double() * n
    big = expected >= 5
    obs = torch.cat([counts[big].double(), counts[~big].double().sum()[None]])
    exp = torch.cat([expected[big], expected[~big].sum()[None]])
    keep = exp > 0
    stat = float(((obs[keep] - exp[keep]) ** 2 / exp[keep]).sum())
    return stat, float(chi2.ppf(1 - P_VALUE, int(keep.sum()) - 1))


def _cell_counts(levels: torch.Tensor, n_levels: int) -> torch.Tensor:
    """Counts of each configuration, indexed like _all_levels (base-n_levels digits, first = most significant)."""
    flat = levels.flatten(1).long()
    d = flat.shape[1]
    weights = n_levels ** torch.arange(d - 1, -1, -1)
    return torch.bincount((flat * weights).sum(1), minlength=n_levels**d)


def _toy_bundle(name: str = "8gaussians", n_train: int = 20_000, n_eval: int = 2_000, seed: int = 0):
    from genspace.data import make_toy

    g = _gen(seed)
    train, ref, held = (make_toy(name, n, generator=g) for n in (n_train, n_eval, n_eval))
    return SimpleNamespace(train=(train,), reference=ref, heldout=held, shape=(2,), kind="points", n_classes=None, n_levels=None)


def _energy_ratio(samples, data) -> float:
    from genspace.metrics import energy_distance, metric_with_floor

    return metric_with_floor(lambda a, b: energy_distance(a, b, unbiased=False), samples, data.reference, data.heldout).ratio


def _fit(model, data, tmp_path, *, steps, batch_size=256, lr=5e-3):
    from genspace.train import EMAConfig, TrainConfig, Trainer

    cfg = TrainConfig(steps=steps, batch_size=batch_size, lr=lr, ema=EMAConfig(kind="off"), ckpt_every=None, log_every=max(1, steps // 4))
    Trainer(model, data, cfg, tmp_path, progress=False, tensorboard=False).fit()
    return model.eval()


# ===================================================================================== MADE


def test_made_degrees_and_ensembles():
    """Degrees follow Germain et al. §4; order / connectivity ensembles differ where they should."""
    order, hidden = made_degrees(6, 50, 3, generator=_gen(0), random_order=True)
    assert sorted(order.tolist()) == list(range(1, 7))
    low = 1
    for layer in hidden:  # uniform on {min of the previous layer, ..., D-1}
        assert int(layer.min()) >= low and int(layer.max()) <= 5
        low = int(layer.min())
    natural, _ = made_degrees(6, 50, 3, generator=_gen(0), random_order=False)
    assert natural.tolist() == list(range(1, 7))

    both = MADENet(6, 40, 2, 3, n_masks=4, resample_order=True, resample_connectivity=True, seed=1)
    assert len({tuple(o.tolist()) for o in both.input_degrees}) > 1
    assert len({tuple(h.flatten().tolist()) for h in both.hidden_degrees}) == 4
    orders_only = MADENet(6, 40, 2, 3, n_masks=3, resample_order=True, seed=1)
    assert all(torch.equal(h, orders_only.hidden_degrees[0]) for h in orders_only.hidden_degrees)
    conn_only = MADENet(6, 40, 2, 3, n_masks=3, resample_connectivity=True, seed=1)
    assert all(o.tolist() == list(range(1, 7)) for o in conn_only.input_degrees)
    assert not torch.equal(conn_only.hidden_degrees[0], conn_only.hidden_degrees[1])
    # the same seed gives the same masks (the checkpoint's buffers match a rebuilt model)
    again = MADENet(6, 40, 2, 3, n_masks=4, resample_order=True, resample_connectivity=True, seed=1)
    assert torch.equal(both.input_degrees, again.input_degrees) and torch.equal(both.hidden_degrees, again.hidden_degrees)


@pytest.mark.parametrize("n_classes", [None, 3])
def test_made_connectivity_through_gradients(n_classes):
    """∂ output[d, p] / ∂ x_j = 0 for every parameter p and every j at or after d in each mask's order."""
    dim, params = 5, 4
    net = _seeded(0, lambda: MADENet(dim, 24, 2, params, n_masks=3, resample_order=True, resample_connectivity=True, seed=3, n_classes=n_classes)).double()
    labels = None if n_classes is None else torch.tensor([1])
    for k in range(net.n_masks):
        position = net.input_degrees[k] - 1  # (D,) position of each dimension in the ordering
        # paths through the masks: reach[d·P + p, j] > 0 iff some chain of kept weights joins x_j to output (d, p)
        reach = torch.eye(dim, dtype=torch.float64)
        for m in net.masks(k):
            reach = m.double() @ reach
        reach = (reach > 0).reshape(dim, params, dim)  # (D, P, D)
        for trial in range(3):
            x = torch.randn(dim, dtype=torch.float64, generator=_gen(10 * k + trial))
            jac = torch.autograd.functional.jacobian(lambda v: net(v[None], k, labels)[0], x)  # (D, P, D)
            for d in range(dim):
                later = position >= position[d]
                assert torch.all(jac[d][:, later] == 0), (k, d)
            assert torch.all(jac[~reach] == 0)
        # with every ReLU active (hidden biases raised) the gradient is non-zero exactly along the mask paths
        active = copy.deepcopy(net)
        with torch.no_grad():
            for layer in active.hidden_layers:
                layer.bias.add_(10.0)
        jac = torch.autograd.functional.jacobian(lambda v: active(v[None], k, labels)[0], x)
        assert torch.equal(jac != 0, reach), k
        for d in range(dim):  # not vacuous: every output but the first in the ordering sees an earlier input
            if position[d] > 0:
                assert bool(reach[d].any()), (k, d)
        # the first dimension of the ordering is a constant (bias, label) distribution
        assert not reach[int(net.order(k)[0])].any()


def test_made_categorical_probabilities_sum_to_one():
    levels = _all_levels(3, (3,))  # 27 configurations
    model = _seeded(0, lambda: MADE((3,), output="categorical", n_levels=3, hidden=16, n_masks=2, resample_order=True, resample_connectivity=True, n_classes=2)).double()
    for label in (None, 0, 1):
        total = model.log_prob_levels(levels, class_labels=label).exp().sum()
        torch.testing.assert_close(total, torch.tensor(1.0, dtype=torch.float64), rtol=0, atol=1e-6)
        for k in range(2):  # each mask set is a normalized model by itself
            lab = None if label is None else torch.full((27,), label)
            per_mask = model.log_prob_of_mask(levels, k, model._labels(lab, 27, levels.device)).exp().sum()
            torch.testing.assert_close(per_mask, torch.tensor(1.0, dtype=torch.float64), rtol=0, atol=1e-6)
    # float data in [-1, 1] map to the same levels
    torch.testing.assert_close(model.log_likelihood(levels.double() - 1.0), model.log_prob_levels(levels))


def test_made_mog_density_integrates_to_one():
    model = _seeded(0, lambda: MADE((2,), n_components=3, hidden=16, n_masks=2, resample_order=True)).double()
    h = 0.05
    grid = torch.arange(-10 + h / 2, 10, h, dtype=torch.float64)
    xy = torch.cartesian_prod(grid, grid)  # (400², 2) midpoints
    with torch.no_grad():
        mass = float(model.log_likelihood(xy).exp().sum() * h * h)
    assert abs(mass - 1.0) < 1e-3, mass


def _peaked_categorical_made():
    model = _seeded(1, lambda: MADE((3,), output="categorical", n_levels=3, hidden=16, n_masks=2, resample_order=True, resample_connectivity=True)).double()
    with torch.no_grad():  # sharpen the conditionals so the two mask sets disagree clearly
        model.net.out.weight.mul_(4.0)
        model.net.out.bias.mul_(4.0)
    return model


def test_made_categorical_samples_match_likelihood():
    model = _peaked_categorical_made()
    levels = _all_levels(3, (3,))
    probs = model.log_prob_levels(levels).exp().detach()
    x = model.sample(N_SAMPLES, generator=_gen(7))
    assert x.shape == (N_SAMPLES, 3)
    counts = _cell_counts(torch.round((x + 1) * 1).long(), 3)  # levels 0, 1, 2 at −1, 0, 1
    stat, threshold = _chi_square(counts, probs, N_SAMPLES)
    assert stat < threshold, (stat, threshold)
    # negative control: the samples of the mixture are not those of mask set 0 alone
    p0 = model.log_prob_of_mask(levels, 0).exp().detach()
    stat0, threshold0 = _chi_square(counts, p0, N_SAMPLES)
    assert stat0 > threshold0, (stat0, threshold0)


def test_made_mog_samples_match_density():
    """2-D binned chi-square: counts in 8×8 cells of [−4, 4]² (plus the rest) vs the integrated density."""
    model = _seeded(2, lambda: MADE((2,), n_components=3, hidden=16, n_masks=2, resample_order=True)).double()
    x = model.sample(N_SAMPLES, generator=_gen(8))
    cells, sub = 8, 25
    edges = torch.linspace(-4, 4, cells + 1, dtype=torch.float64)
    h = 8.0 / (cells * sub)
    mids = torch.arange(-4 + h / 2, 4, h, dtype=torch.float64)  # (cells·sub,)
    with torch.no_grad():
        dens = model.log_likelihood(torch.cartesian_prod(mids, mids)).exp().reshape(cells, sub, cells, sub)
    probs = dens.sum((1, 3)).flatten() * h * h  # (cells²,) cell masses (midpoint rule)
    probs = torch.cat([probs, (1 - probs.sum()).clamp(min=0)[None]])
    idx = torch.bucketize(x.contiguous(), edges[1:-1])  # (N, 2) cell index per coordinate
    inside = ((x >= -4) & (x < 4)).all(1)
    flat = torch.where(inside, idx[:, 0] * cells + idx[:, 1], torch.full_like(idx[:, 0], cells * cells))
    counts = torch.bincount(flat, minlength=cells * cells + 1)
    stat, threshold = _chi_square(counts, probs, N_SAMPLES)
    assert stat < threshold, (stat, threshold)


def test_made_per_sample_seeds_and_training_loss():
    """With a StackedGenerator sample i depends only on its seed; the loss splits the batch over masks."""
    model = _seeded(0, lambda: MADE((3,), n_components=2, hidden=16, n_masks=3, resample_order=True)).double()
    batch = model.sample(5, generator=StackedGenerator([11, 12, 13, 14, 15]))
    alone = model.sample(1, generator=StackedGenerator([14]))
    torch.testing.assert_close(batch[3:4], alone)
    # the loss of example i is −log p_{i mod 3}(x_i)/D
    terms = model.losses((batch,))
    assert set(terms) == {"nll"} and terms["nll"].shape == (5,)
    expected = torch.stack([-model.log_prob_of_mask(batch[i : i + 1], i % 3)[0] / 3 for i in range(5)])
    torch.testing.assert_close(terms["nll"], expected)


def test_label_dropout_and_dequantized_training_loss():
    """Training labels become the null class with prob. label_dropout (training mode only); a MoG
    MADE on quantized data is trained on y = 2(k + u)/L − 1 with u from the trainer's generator."""
    model = _seeded(0, lambda: MADE((3,), output="categorical", n_levels=3, hidden=16, n_classes=2, label_dropout=0.5)).double()
    x = torch.randint(0, 3, (256, 3), generator=_gen(0)).double() - 1.0
    labels = torch.zeros(256, dtype=torch.long)
    with_label = -model.log_likelihood(x, class_labels=labels) / 3
    null = -model.log_likelihood(x) / 3
    nll = model.train().losses((x, labels), generator=_gen(1))["nll"]
    dropped = torch.isclose(nll, null) & ~torch.isclose(nll, with_label)
    assert bool((torch.isclose(nll, null) | torch.isclose(nll, with_label)).all())
    assert 0.4 < float(dropped.double().mean()) < 0.6  # 256 draws of p = 0.5: ±0.1 is 3.2 standard deviations
    torch.testing.assert_close(model.eval().losses((x, labels), generator=_gen(1))["nll"], with_label)

    mog = _seeded(0, lambda: MADE((1, 2, 2), output="mog", n_levels=4, n_components=2, hidden=16)).double()
    levels = torch.randint(0, 4, (16, 1, 2, 2), generator=_gen(2))
    data = levels.double() * (2 / 3) - 1.0  # to_unit_range
    u = torch.rand(levels.shape, generator=_gen(3), dtype=torch.float64)
    y = 2 * (levels + u) / 4 - 1
    torch.testing.assert_close(mog.losses((data,), generator=_gen(3))["nll"], -mog.log_likelihood(y) / 4)


def test_made_mog_trains_on_a_toy(tmp_path):
    from genspace.data import toy_density

    data = _toy_bundle()
    model = _seeded(0, lambda: build_made(MADEConfig(hidden=64, n_components=10), data))
    assert model.output == "mog"
    true_nll = -float(toy_density("8gaussians").log_prob(data.heldout.double()).mean())

    def nll_and_ratio(m):
        with torch.no_grad():
            return -float(m.log_likelihood(data.heldout).mean()), _energy_ratio(m.sample(2000, generator=_gen(5)), data)

    nll0, ratio0 = nll_and_ratio(model)
    _fit(model, data.train, tmp_path, steps=400)
    nll1, ratio1 = nll_and_ratio(model)
    print(f"\nMADE-MoG 8gaussians: held-out NLL {nll0:.3f} -> {nll1:.3f} (data entropy {true_nll:.3f}), energy/floor {ratio0:.1f} -> {ratio1:.2f}")
    assert nll1 < nll0 - 1.0 and nll1 < true_nll + 0.6
    assert ratio0 > 20 and ratio1 < 8
    # the trainer's final checkpoint (safetensors, mask degrees included) restores the same model
    from genspace.train import latest_checkpoint, load_checkpoint, load_weights

    rebuilt = _seeded(1, lambda: build_made(MADEConfig(hidden=64, n_components=10), data))
    load_weights(rebuilt, load_checkpoint(latest_checkpoint(tmp_path)).model_state)
    with torch.no_grad():
        torch.testing.assert_close(rebuilt.log_likelihood(data.heldout[:100]), model.log_likelihood(data.heldout[:100]))


# ================================================================================== PixelCNN


def _receptive_field(net: GatedPixelCNN, h: int, w: int, labels=None) -> torch.Tensor:
    """(H, W, H, W) bool: [i, j, r, c] = the logits at (i, j) have a non-zero gradient w.r.t. pixel (r, c)."""
    x = torch.randn(1, 1, h, w, dtype=torch.float64, generator=_gen(0), requires_grad=True)
    proj = torch.randn(net.n_levels, dtype=torch.float64, generator=_gen(1))
    out = net(x, labels)  # (1, L, H, W)
    field = torch.zeros(h, w, h, w, dtype=torch.bool)
    for i in range(h):
        for j in range(w):
            (grad,) = torch.autograd.grad((out[0, :, i, j] * proj).sum(), x, retain_graph=True)
            field[i, j] = grad[0, 0] != 0
    return field


@pytest.mark.parametrize("first_kernel,n_layers,n_classes", [(3, 2, None), (5, 5, 4)])
def test_pixelcnn_receptive_field_is_causal_without_blind_spot(first_kernel, n_layers, n_classes):
    """The logits at (i, j) see exactly the earlier pixels within R = ⌊k₁/2⌋ + (n_layers − 1)⌊k/2⌋:
    row i at columns j − R … j − 1, and rows i − R … i − 1 at columns j − R … j + R (top-right too)."""
    h = w = 6
    net = _seeded(0, lambda: GatedPixelCNN(3, channels=8, n_layers=n_layers, first_kernel=first_kernel, kernel=3, head_hidden=8, n_classes=n_classes)).double()
    labels = None if n_classes is None else torch.tensor([2])
    field = _receptive_field(net, h, w, labels)
    radius = first_kernel // 2 + (n_layers - 1)
    for i, j in itertools.product(range(h), range(w)):
        expected = torch.zeros(h, w, dtype=torch.bool)
        expected[i, max(0, j - radius) : j] = True
        expected[max(0, i - radius) : i, max(0, j - radius) : j + radius + 1] = True
        assert torch.equal(field[i, j], expected), (i, j, field[i, j].int(), expected.int())
        # explicitly: nothing at or after (i, j); the left neighbour and the row above (to the right too)
        assert not field[i, j].flatten()[i * w + j :].any()
        if j > 0:
            assert field[i, j, i, j - 1]
        if i > 0:
            assert field[i, j, i - 1, j : min(w, j + radius + 1)].all()
    if radius >= w - 1:  # this network sees the whole past of every pixel
        assert all(field[i, j].flatten()[: i * w + j].all() for i, j in itertools.product(range(h), range(w)))


def test_pixelcnn_probabilities_sum_to_one():
    levels = _all_levels(3, (1, 2, 2))  # 81 images
    model = _seeded(0, lambda: PixelCNN((1, 2, 2), 3, channels=8, n_layers=2, first_kernel=3, head_hidden=8, n_classes=2)).double()
    for label in (None, 0, 1):
        total = model.log_prob_levels(levels, class_labels=label).exp().sum()
        torch.testing.assert_close(total, torch.tensor(1.0, dtype=torch.float64), rtol=0, atol=1e-6)
    # the label changes the distribution (conditioning reaches the gates)
    assert not torch.allclose(model.log_prob_levels(levels, class_labels=0), model.log_prob_levels(levels, class_labels=1))


def test_pixelcnn_samples_match_likelihood():
    model = _seeded(3, lambda: PixelCNN((1, 2, 2), 3, channels=8, n_layers=2, first_kernel=3, head_hidden=8)).double()
    with torch.no_grad():  # larger weights: pixels clearly dependent (TV ≈ 0.15 from the product of marginals)
        for param in model.net.parameters():
            if param.ndim > 1:
                param.mul_(2.0)
        model.net.head[-1].weight.mul_(2.0)
    levels = _all_levels(3, (1, 2, 2))
    probs = model.log_prob_levels(levels).exp().detach()
    x = model.sample(N_SAMPLES, generator=_gen(9))
    assert x.shape == (N_SAMPLES, 1, 2, 2)
    counts = _cell_counts(torch.round(x + 1).long(), 3)
    stat, threshold = _chi_square(counts, probs, N_SAMPLES)
    assert stat < threshold, (stat, threshold)
    # negative control: the product of the model's marginals (the same pixels, independent) is rejected
    p = probs.reshape(3, 3, 3, 3)
    marg = [p.sum(dim=tuple(a for a in range(4) if a != d)) for d in range(4)]
    indep = torch.einsum("a,b,c,d->abcd", *marg).flatten()
    stat_i, threshold_i = _chi_square(counts, indep, N_SAMPLES)
    assert stat_i > threshold_i, (stat_i, threshold_i)
    # per-sample seeds
    a = model.sample(3, generator=StackedGenerator([5, 6, 7]))
    torch.testing.assert_close(a[2:], model.sample(1, generator=StackedGenerator([7])))


def _digits_split():
    from genspace.data import DIGITS_LEVELS, load_digits, to_unit_range

    d = load_digits()
    perm = torch.randperm(len(d.images), generator=_gen(0))
    x = to_unit_range(d.images, DIGITS_LEVELS)
    return x[perm[300:]], x[perm[:300]], d.images[perm[300:]]


def test_pixelcnn_trains_on_digits(tmp_path):
    """Held-out bits/dim falls from ≈ log2(17) to below the best independent-pixel model's."""
    from genspace.data import DIGITS_LEVELS

    train, held, train_levels = _digits_split()
    data = SimpleNamespace(train=(train,), shape=(1, 8, 8), kind="images", n_levels=DIGITS_LEVELS, n_classes=None)
    model = _seeded(0, lambda: build_pixelcnn(PixelCNNConfig(channels=16, n_layers=3, first_kernel=5, head_hidden=32), data))
    uniform = math.log2(DIGITS_LEVELS)
    # the best model with independent pixels: per-pixel level frequencies of the training set
    counts = torch.stack([torch.bincount(train_levels.flatten(1)[:, i].long(), minlength=DIGITS_LEVELS) for i in range(64)]).double() + 0.5
    marginal = counts / counts.sum(1, keepdim=True)  # (64, 17)
    held_levels = torch.round((held.flatten(1) + 1) * (DIGITS_LEVELS - 1) / 2).long()  # (300, 64)
    indep_bpd = -float(marginal.log().gather(1, held_levels.T).mean()) / math.log(2)

    def bpd(m):
        with torch.no_grad():
            return -float(m.log_likelihood(held).mean()) / (64 * math.log(2))

    bpd0 = bpd(model)
    _fit(model, (train,), tmp_path, steps=120, batch_size=64, lr=3e-3)
    bpd1 = bpd(model)
    print(f"\nPixelCNN digits: held-out bits/dim {bpd0:.3f} -> {bpd1:.3f} (uniform {uniform:.3f}, independent pixels {indep_bpd:.3f})")
    assert abs(bpd0 - uniform) < 0.3
    assert bpd1 < uniform - 1.0 and bpd1 < indep_bpd - 0.1
    x = model.sample(4, generator=_gen(0))
    assert x.shape == (4, 1, 8, 8) and bool(((x + 1) * 8 == torch.round((x + 1) * 8)).all())


# ============================================================================ Transformer AR


def _token_field(model: TransformerAR, tokens: torch.Tensor, labels=None) -> torch.Tensor:
    """(D, D) bool: [d, j] = the logits of dimension d have a non-zero gradient w.r.t. the embedding of x_j."""
    store = []

    def keep(module, inputs, out):  # returns None: the output is unchanged
        out.retain_grad()
        store.append(out)

    handle = model.net.embed.register_forward_hook(keep)
    try:
        logits = model.token_logits(tokens, labels)  # (1, D, K); the input sequence is [s, x_0, …, x_{D−2}]
        d_model = logits.shape[1]
        proj = torch.randn(logits.shape[-1], dtype=logits.dtype, generator=_gen(1))
        field = torch.zeros(d_model, d_model, dtype=torch.bool)
        emb = store[0]
        for d in range(d_model):
            (grad,) = torch.autograd.grad((logits[0, d] * proj).sum(), emb, retain_graph=True)  # (1, D, width)
            seen = grad[0].abs().sum(-1) != 0  # (D,) over input positions [s, x_0, …, x_{D−2}]
            field[d, : d_model - 1] = seen[1:]  # input position q ≥ 1 is x_{q−1}
            assert seen[0]  # every dimension sees the start token
    finally:
        handle.remove()
    return field


@pytest.mark.parametrize("n_classes", [None, 2])
def test_transformer_ar_connectivity_through_gradients(n_classes):
    """The logits of x_d depend on every x_j with j < d and on nothing at or after d."""
    dim = 6
    model = _seeded(0, lambda: TransformerAR((1, 2, 3), n_levels=4, dim=16, depth=2, n_heads=2, n_classes=n_classes)).double()
    tokens = torch.randint(0, 4, (1, dim), generator=_gen(2))
    field = _token_field(model, tokens, None if n_classes is None else torch.tensor([1]))
    torch.testing.assert_close(field, torch.ones(dim, dim, dtype=torch.bool).tril(-1), rtol=0, atol=0)


def test_transformer_ar_probabilities_sum_to_one_and_binned_density_integrates():
    levels = _all_levels(3, (1, 1, 3))
    model = _seeded(0, lambda: TransformerAR((1, 1, 3), n_levels=3, dim=16, depth=2, n_heads=2, n_classes=2)).double()
    for label in (None, 0, 1):
        total = model.log_prob_levels(levels, class_labels=label).exp().sum()
        torch.testing.assert_close(total, torch.tensor(1.0, dtype=torch.float64), rtol=0, atol=1e-6)
    # binned continuous model: piecewise constant, so the sum over bin centres × bin area is its integral
    binned = _seeded(0, lambda: TransformerAR((2,), bins=5, low=[-1.0, -2.0], high=[1.0, 3.0], dim=16, depth=2, n_heads=2)).double()
    cx = -1.0 + (torch.arange(5, dtype=torch.float64) + 0.5) * 0.4
    cy = -2.0 + (torch.arange(5, dtype=torch.float64) + 0.5) * 1.0
    centres = torch.cartesian_prod(cx, cy)
    torch.testing.assert_close(binned.log_likelihood(centres).exp().sum() * 0.4 * 1.0, torch.tensor(1.0, dtype=torch.float64), rtol=0, atol=1e-6)
    # constant within a bin, zero outside the box
    jitter = centres + torch.tensor([0.15, -0.4], dtype=torch.float64)
    torch.testing.assert_close(binned.log_likelihood(jitter), binned.log_likelihood(centres))
    assert torch.isneginf(binned.log_likelihood(torch.tensor([[1.2, 0.0], [0.0, -2.5]], dtype=torch.float64))).all()


def test_transformer_ar_samples_match_likelihood():
    model = _seeded(4, lambda: TransformerAR((3,), n_levels=3, dim=16, depth=2, n_heads=2)).double()
    with torch.no_grad():
        model.net.head.weight.mul_(100.0)  # N(0, 0.02) init: sharpen the conditionals
    levels = _all_levels(3, (3,))
    probs = model.log_prob_levels(levels).exp().detach()
    assert float(probs.max()) > 3 * float(probs.min())  # not near-uniform: the test has power
    x = model.sample(N_SAMPLES, generator=_gen(10))
    counts = _cell_counts(torch.round(x + 1).long(), 3)
    stat, threshold = _chi_square(counts, probs, N_SAMPLES)
    assert stat < threshold, (stat, threshold)
    stat_u, threshold_u = _chi_square(counts, torch.full((27,), 1 / 27, dtype=torch.float64), N_SAMPLES)
    assert stat_u > threshold_u  # negative control: not uniform
    # the KV-cache decoding gives per-sample-seeded draws
    a = model.sample(3, generator=StackedGenerator([1, 2, 3]))
    torch.testing.assert_close(a[1:2], model.sample(1, generator=StackedGenerator([2])))


def test_transformer_ar_trains_on_a_toy(tmp_path):
    from genspace.data import toy_density

    data = _toy_bundle()
    true_nll = -float(toy_density("8gaussians").log_prob(data.heldout.double()).mean())
    model = _seeded(0, lambda: build_transformer_ar(TransformerARConfig(dim=32, depth=2, n_heads=2, bins=48), data))
    assert torch.all(model.low < data.train[0].min(0).values) and torch.all(model.high > data.train[0].max(0).values)

    def nll_and_ratio(m):
        with torch.no_grad():
            lp = m.log_likelihood(data.heldout)
            return -float(lp.mean()), _energy_ratio(m.sample(2000, generator=_gen(5)), data)

    nll0, ratio0 = nll_and_ratio(model)
    _fit(model, data.train, tmp_path, steps=200, lr=5e-3)
    nll1, ratio1 = nll_and_ratio(model)
    print(f"\nTransformerAR 8gaussians (48 bins): held-out NLL {nll0:.3f} -> {nll1:.3f} (data entropy {true_nll:.3f}), energy/floor {ratio0:.1f} -> {ratio1:.2f}")
    assert math.isfinite(nll1) and nll1 < nll0 - 1.0 and nll1 < true_nll + 0.5
    assert ratio1 < 8 and ratio1 < ratio0 / 3


# ============================================================================ configs and errors


def test_configs_builders_and_registration():
    from genspace.config import from_dict, get_variant, to_dict
    from genspace.experiment import ExperimentConfig

    assert get_variant("model", "made") is MADEConfig
    assert get_variant("model", "pixelcnn") is PixelCNNConfig
    assert get_variant("model", "transformer-ar") is TransformerARConfig
    assert FAMILY_BUILDERS == {MADEConfig: build_made, PixelCNNConfig: build_pixelcnn, TransformerARConfig: build_transformer_ar}
    cfg = from_dict(ExperimentConfig, {"model": {"family": "made", "n_masks": 4, "resample_order": True}})
    assert isinstance(cfg.model, MADEConfig) and cfg.model.n_masks == 4
    assert from_dict(ExperimentConfig, to_dict(cfg)) == cfg

    points = SimpleNamespace(train=(torch.randn(64, 2),), shape=(2,), kind="points", n_levels=None, n_classes=None)
    images = SimpleNamespace(train=(torch.zeros(8, 1, 4, 4), torch.zeros(8, dtype=torch.long)), shape=(1, 4, 4), kind="images", n_levels=5, n_classes=3)
    assert build_made(MADEConfig(hidden=8), points).output == "mog"
    made_img = build_made(MADEConfig(hidden=8), images)
    assert made_img.output == "categorical" and made_img.n_levels == 5 and made_img.n_classes == 3
    pix = build_pixelcnn(PixelCNNConfig(channels=4, n_layers=2, first_kernel=3, head_hidden=4), images)
    tra = build_transformer_ar(TransformerARConfig(dim=8, depth=1, n_heads=2), images)
    for model in (made_img, pix, tra):  # losses and samples through the protocol, with labels
        batch = (images.train[0], torch.tensor([0, 1, 2, 0, 1, 2, 0, 1]))
        terms = model.losses(batch, generator=_gen(0))
        assert terms["nll"].shape == (8,) and terms["_bpd"].shape == (8,)
        assert model.sample(2, shape=(1, 4, 4), generator=_gen(0), class_labels=torch.tensor([0, 2]), method="heun", nfe=3).shape == (2, 1, 4, 4)
        assert model.likelihood_kind == "exact"
    with pytest.raises(ValueError, match="pixelcnn needs quantized images"):
        build_pixelcnn(PixelCNNConfig(), points)
    with pytest.raises(ValueError, match="output='categorical' needs quantized data"):
        build_made(MADEConfig(output="categorical"), points)


def test_bad_inputs_raise_value_errors():
    made = MADE((3,), output="categorical", n_levels=3, hidden=8)
    mog = MADE((2,), hidden=8)
    pix = PixelCNN((1, 3, 3), 4, channels=4, n_layers=2, first_kernel=3, head_hidden=4)
    tra = TransformerAR((2,), bins=4, low=-1.0, high=1.0, dim=8, depth=1, n_heads=2)
    with pytest.raises(ValueError, match=r"x must have shape \(B, 3\).*\(4, 2\)"):
        made.log_likelihood(torch.zeros(4, 2))
    with pytest.raises(ValueError, match=r"x must have shape \(B, 1, 3, 3\).*\(2, 3, 3\)"):
        pix.log_likelihood(torch.zeros(2, 3, 3))
    with pytest.raises(ValueError, match=r"batch must have shape \(B, 2\)"):
        tra.losses((torch.zeros(4, 3),))
    with pytest.raises(ValueError, match=r"levels must lie in 0..2.*max 3"):
        made.log_prob_levels(torch.tensor([[0, 1, 3]]))
    with pytest.raises(ValueError, match=r"levels must lie in 0..3.*min -1"):
        pix.log_prob_levels(-torch.ones(1, 1, 3, 3, dtype=torch.long))
    with pytest.raises(ValueError, match=r"data must lie in \[-1, 1\].*max 1.5"):
        pix.log_likelihood(torch.full((1, 1, 3, 3), 1.5))
    with pytest.raises(ValueError, match="NaN"):
        mog.log_likelihood(torch.tensor([[0.0, float("nan")]]))
    # outside the bin box the density is 0: the training loss is +inf (the trainer reports a divergence)
    assert torch.isposinf(tra.losses((torch.tensor([[0.0, 2.0], [0.0, 0.5]]),))["nll"]).tolist() == [True, False]
    with pytest.raises(ValueError, match="unconditional"):
        made.sample(2, class_labels=1)
    cond = PixelCNN((1, 2, 2), 3, channels=4, n_layers=2, first_kernel=3, head_hidden=4, n_classes=2)
    with pytest.raises(ValueError, match=r"class_labels must lie in \[0, 2\].*\[0, 5\]"):
        cond.sample(2, class_labels=torch.tensor([0, 5]))
    with pytest.raises(ValueError, match="holds no labels"):
        cond.losses((torch.zeros(2, 1, 2, 2),))
    with pytest.raises(ValueError, match=r"examples of shape \(2,\), got shape=\(3,\)"):
        mog.sample(2, shape=(3,))
    with pytest.raises(ValueError, match="C=3.*R→G→B"):
        PixelCNN((3, 4, 4), 4)
    with pytest.raises(ValueError, match="kernel must be an odd positive integer, got 4"):
        GatedPixelCNN(4, kernel=4)
    with pytest.raises(ValueError, match="mask-A kernel must be >= 3"):
        GatedPixelCNN(4, first_kernel=1)
    with pytest.raises(ValueError, match="n_masks=3 identical masks"):
        MADE((2,), n_masks=3)
    with pytest.raises(ValueError, match="needs n_levels"):
        MADE((2,), output="categorical")
    with pytest.raises(ValueError, match="needs the bin range"):
        TransformerAR((2,))
    with pytest.raises(ValueError, match="n must be a positive integer, got 0"):
        tra.sample(0)


def test_categorical_inverse_cdf_is_exact():
    """P(k = l) = softmax_l: the uniform interval [F(l−1), F(l)) maps to l."""
    logits = torch.log(torch.tensor([[0.2, 0.5, 0.3]]))
    u = torch.tensor([0.0, 0.19, 0.21, 0.69, 0.71, 0.999])
    k = categorical_inverse_cdf(logits.expand(6, 3), u)
    assert k.tolist() == [0, 0, 1, 1, 2, 2]
