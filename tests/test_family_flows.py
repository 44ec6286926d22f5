"""Normalizing flows (genspace.families.flows / flow_layers): log-dets against brute-force autograd
Jacobians, round trips, the spline's shape, ActNorm's data-dependent init and its checkpoint, the LU
parameterization, MADE connectivity, MAF/IAF pass counts, normalization of the density, the family
protocol on points and images, configs, and a CI-size training run with the shared Trainer.
"""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
from safetensors.torch import load_file, save_file

from genspace.config import from_dict, get_variant, to_dict
from genspace.continuous.likelihood import bits_per_dim
from genspace.core.random import StackedGenerator
from genspace.data import DIGITS_LEVELS, make_toy, to_uint8, to_unit_range, toy_density
from genspace.families.flow_layers import (
    MADE,
    ActNorm,
    AdditiveCoupling,
    AffineCoupling,
    InvertibleLinearLU,
    MaskedAutoregressiveAffine,
    Permutation,
    Scaling,
    SplineCoupling,
    _knots,
    rational_quadratic_spline,
)
from genspace.families.flows import FAMILY_BUILDERS, FLOW_KINDS, Flow, FlowConfig, build_normalizing_flow, flow_layers
from genspace.metrics import energy_distance, metric_with_floor
from genspace.train import EMAConfig, TrainConfig, Trainer

D = 5
TOL = 1e-8


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _perturb(module: torch.nn.Module, std: float = 0.3, seed: int = 0) -> None:
    """Add N(0, std²) noise to every parameter (zero-initialized layers become non-trivial)."""
    g = _gen(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.add_(torch.randn(p.shape, generator=g, dtype=p.dtype) * std)


def _jacobian_logdets(fn, x: torch.Tensor) -> torch.Tensor:
    """(B,) log|det| of the per-example Jacobian of fn: (1, ...) → (z (1, ...), ...), by autograd."""
    out = []
    for i in range(x.shape[0]):
        jac = torch.autograd.functional.jacobian(lambda v: fn(v[None])[0][0], x[i])
        n = x[i].numel()
        out.append(torch.linalg.slogdet(jac.reshape(n, n)).logabsdet)
    return torch.stack(out)


def _check_bijection(layer, x: torch.Tensor, z_probe: torch.Tensor) -> None:
    z, logdet = layer(x)
    assert logdet.shape == (x.shape[0],)
    torch.testing.assert_close(logdet, _jacobian_logdets(layer, x), atol=TOL, rtol=0)
    x_back, logdet_inv = layer.inverse(z)
    torch.testing.assert_close(x_back, x, atol=TOL, rtol=0)
    torch.testing.assert_close(logdet_inv, -logdet, atol=TOL, rtol=0)
    x_probe, _ = layer.inverse(z_probe)
    torch.testing.assert_close(layer(x_probe)[0], z_probe, atol=TOL, rtol=0)
    torch.testing.assert_close(layer.inverse(z_probe)[1], _jacobian_logdets(lambda v: layer.inverse(v), z_probe), atol=TOL, rtol=0)


LAYERS = {
    "nice-additive": lambda: AdditiveCoupling(D, 0, 16, 2),
    "nice-scaling": lambda: Scaling(D),
    "realnvp-affine": lambda: AffineCoupling(D, 1, 16, 2, scale_bound=2.0),
    "permutation": lambda: Permutation(D, torch.tensor([2, 0, 4, 1, 3])),
    "actnorm": lambda: ActNorm(D),
    "lu-linear": lambda: InvertibleLinearLU(D, generator=_gen(3)),
    "maf": lambda: MaskedAutoregressiveAffine(D, "maf", 16, 2),
    "iaf": lambda: MaskedAutoregressiveAffine(D, "iaf", 16, 2),
    "spline": lambda: SplineCoupling(D, 0, 16, 2, n_bins=6, bound=2.0),
}


@pytest.mark.parametrize("name", list(LAYERS))
def test_layer_logdet_matches_autograd_and_inverts(name):
    layer = LAYERS[name]().double()
    x = torch.randn(4, D, generator=_gen(1), dtype=torch.float64) * 1.5  # spline: inside and outside [−2, 2]
    if isinstance(layer, ActNorm):
        layer(torch.randn(64, D, generator=_gen(2), dtype=torch.float64))  # data-dependent init first
    _perturb(layer)
    _check_bijection(layer, x, torch.randn(4, D, generator=_gen(4), dtype=torch.float64))


@pytest.mark.parametrize("cls", [ActNorm, InvertibleLinearLU])
def test_channel_layers_on_images(cls):
    layer = cls(2).double()
    x = torch.randn(3, 2, 3, 4, generator=_gen(0), dtype=torch.float64)
    layer(x)
    _perturb(layer)
    _check_bijection(layer, x, torch.randn(3, 2, 3, 4, generator=_gen(1), dtype=torch.float64))


@pytest.mark.parametrize("kind", FLOW_KINDS)
def test_preset_logdet_matches_autograd_and_inverts(kind):
    flow = Flow(flow_layers(kind, 4, n_layers=3, hidden=12, depth=1, n_bins=5, tail_bound=2.0), (4,)).double()
    x = torch.randn(3, 4, generator=_gen(0), dtype=torch.float64) * 1.5
    flow(torch.randn(64, 4, generator=_gen(5), dtype=torch.float64))  # ActNorm init (glow)
    _perturb(flow, std=0.2)
    _check_bijection(flow, x, torch.randn(3, 4, generator=_gen(1), dtype=torch.float64))


@pytest.mark.parametrize("kind", ["nice", "realnvp", "maf", "iaf", "spline"])
def test_presets_start_at_identity(kind):
    """Zero-initialized conditioners: every layer but the fixed permutations is the identity."""
    flow = Flow(flow_layers(kind, 3, n_layers=4, hidden=8), (3,)).double()
    x = torch.randn(16, 3, generator=_gen(0), dtype=torch.float64) * 3
    trainable = [layer for layer in flow.layers if not isinstance(layer, Permutation)]
    assert len(trainable) >= 4
    for layer in trainable:
        z, logdet = layer(x)
        torch.testing.assert_close(z, x, atol=1e-12, rtol=0)
        torch.testing.assert_close(logdet, torch.zeros(16, dtype=torch.float64), atol=1e-12, rtol=0)


@pytest.mark.parametrize("kind", ["realnvp", "spline"])
def test_density_integrates_to_one(kind):
    """∫ p(x) dx = 1 on a 2-D grid (a sign error in any log-det breaks it)."""
    flow = Flow(flow_layers(kind, 2, n_layers=4, hidden=16, n_bins=6, tail_bound=3.0), (2,)).double()
    _perturb(flow, std=0.15)
    h = 0.04
    u = torch.arange(-9, 9, h, dtype=torch.float64) + h / 2
    grid = torch.cartesian_prod(u, u)  # (N, 2), midpoints
    with torch.no_grad():
        mass = flow.log_prob(grid).exp().sum() * h * h
    assert abs(float(mass) - 1.0) < 2e-3


# ---------------------------------------------------------------------------------- Glow parts
@pytest.mark.parametrize("shape", [(256, 3), (64, 3, 4, 4)])
def test_actnorm_data_init_and_checkpoint(tmp_path, shape):
    x = torch.randn(*shape, generator=_gen(0)) * torch.tensor([0.3, 2.0, 5.0]).reshape(1, 3, *([1] * (len(shape) - 2))) + 1.7
    layer = ActNorm(3)
    assert not bool(layer.initialized)
    z, _ = layer(x)
    dims = [0] + list(range(2, len(shape)))
    torch.testing.assert_close(z.mean(dim=dims), torch.zeros(3), atol=1e-5, rtol=0)
    torch.testing.assert_close(z.var(dim=dims, unbiased=False), torch.ones(3), atol=1e-4, rtol=0)
    assert bool(layer.initialized)

    # A second batch no longer re-initializes.
    before = {k: v.clone() for k, v in layer.state_dict().items()}
    layer(x * 3 - 1)
    for k, v in layer.state_dict().items():
        assert torch.equal(v, before[k])

    # Through a safetensors file into a fresh layer: restored, not re-initialized by new data.
    save_file(layer.state_dict(), str(tmp_path / "actnorm.safetensors"))
    fresh = ActNorm(3)
    fresh.load_state_dict(load_file(str(tmp_path / "actnorm.safetensors")))
    assert bool(fresh.initialized)
    other = torch.randn(*shape, generator=_gen(1)) * 10
    torch.testing.assert_close(fresh(other)[0], layer(other)[0])
    assert torch.equal(fresh.bias, before["bias"]) and torch.equal(fresh.log_scale, before["log_scale"])


def test_lu_logdet_is_slogdet_of_assembled_weight():
    layer = InvertibleLinearLU(4, generator=_gen(0)).double()
    # Initialized as a rotation (stored in float32): WᵀW = I and |det W| = 1.
    w0 = layer.weight()
    torch.testing.assert_close(w0.T @ w0, torch.eye(4, dtype=torch.float64), atol=1e-6, rtol=0)
    assert abs(float(layer.log_abs_s.detach().sum())) < 1e-6
    _perturb(layer, std=0.5)
    w = layer.weight()
    p, lower, upper = layer.factors()
    assert torch.equal(torch.triu(lower, 1), torch.zeros_like(lower)) and torch.equal(torch.diagonal(lower), torch.ones(4, dtype=torch.float64))
    assert torch.equal(torch.tril(upper, -1), torch.zeros_like(upper))
    x = torch.randn(2, 4, 3, 5, generator=_gen(1), dtype=torch.float64)
    z, logdet = layer(x)
    sign, logabs = torch.linalg.slogdet(w.detach())
    torch.testing.assert_close(logdet, torch.full((2,), 15 * float(logabs), dtype=torch.float64), atol=1e-10, rtol=0)
    # 1×1 convolution = the same W at every pixel.
    torch.testing.assert_close(z[:, :, 1, 2], x[:, :, 1, 2] @ w.T, atol=1e-12, rtol=0)


# ---------------------------------------------------------------------------------- MADE, MAF, IAF
def test_made_connectivity_through_gradients():
    made = MADE(6, hidden=24, depth=2, n_params=2).double()
    _perturb(made, std=0.5)
    x = torch.randn(6, dtype=torch.float64)
    jac = torch.autograd.functional.jacobian(lambda v: made(v[None])[0], x)  # (2, 6 outputs, 6 inputs)
    for i in range(6):
        assert torch.all(jac[:, i, i:] == 0), f"output {i} sees input >= {i}"
        if i > 0:
            assert torch.all(jac[:, i, :i].abs().sum(-1) > 0), f"output {i} ignores all earlier inputs"


@pytest.mark.parametrize("kind, forward_passes, inverse_passes", [("maf", 1, D), ("iaf", D, 1)])
def test_maf_iaf_pass_counts(kind, forward_passes, inverse_passes):
    layer = MaskedAutoregressiveAffine(D, kind, 8, 1)
    calls = []
    layer.made.register_forward_hook(lambda *args: calls.append(1))
    z, _ = layer(torch.randn(3, D))
    assert len(calls) == forward_passes
    calls.clear()
    layer.inverse(z)
    assert len(calls) == inverse_passes


# ---------------------------------------------------------------------------------- RQ spline
def _spline_params(n: int, k: int, seed: int, scale: float = 2.0):
    g = _gen(seed)
    return [torch.randn(n, m, generator=g, dtype=torch.float64) * scale for m in (k, k, k - 1)]


def test_spline_monotone_identity_tails_and_inverse():
    k, bound = 7, 2.5
    x = torch.linspace(-4, 4, 4001, dtype=torch.float64)
    w, h, d = (p.expand(len(x), -1) for p in _spline_params(1, k, 0))
    y, logdet = rational_quadratic_spline(x, w, h, d, bound=bound)
    assert torch.all(y[1:] > y[:-1])  # strictly increasing
    outside = x.abs() > bound
    assert torch.equal(y[outside], x[outside]) and torch.equal(logdet[outside], torch.zeros_like(logdet[outside]))
    assert abs(float(y[x == bound][0]) - bound) < 1e-12 and abs(float(y[x == -bound][0]) + bound) < 1e-12
    # log-det = log of the autograd derivative, elementwise.
    xr = x.clone().requires_grad_(True)
    (dy,) = torch.autograd.grad(rational_quadratic_spline(xr, w, h, d, bound=bound)[0].sum(), xr)
    torch.testing.assert_close(logdet, dy.log(), atol=1e-10, rtol=0)
    # Analytic inverse.
    x_back, logdet_inv = rational_quadratic_spline(y, w, h, d, bound=bound, inverse=True)
    torch.testing.assert_close(x_back, x, atol=1e-10, rtol=0)
    torch.testing.assert_close(logdet_inv, -logdet, atol=1e-10, rtol=0)


def test_spline_derivative_continuous_at_knots():
    k, bound = 6, 2.0
    w, h, d = _spline_params(1, k, 1)
    _, knots = _knots(w, bound, 1e-3)  # (1, K+1)
    eps = 1e-9
    left = knots[0] - eps
    right = knots[0] + eps
    ld_left = rational_quadratic_spline(left, *(p.expand(k + 1, -1) for p in (w, h, d)), bound=bound)[1]
    ld_right = rational_quadratic_spline(right, *(p.expand(k + 1, -1) for p in (w, h, d)), bound=bound)[1]
    torch.testing.assert_close(ld_left, ld_right, atol=1e-6, rtol=0)
    # At ±B the derivative is 1, the slope of the identity tails: log-det → 0 from both sides.
    assert abs(float(ld_right[0])) < 1e-6 and abs(float(ld_left[-1])) < 1e-6


def test_spline_zero_parameters_are_identity():
    x = torch.linspace(-3, 3, 101, dtype=torch.float64)
    zeros = [torch.zeros(101, m, dtype=torch.float64) for m in (5, 5, 4)]
    y, logdet = rational_quadratic_spline(x, *zeros, bound=2.0)
    torch.testing.assert_close(y, x, atol=1e-12, rtol=0)
    torch.testing.assert_close(logdet, torch.zeros_like(x), atol=1e-12, rtol=0)


# ---------------------------------------------------------------------------------- the protocol
def test_flow_protocol_points():
    flow = Flow(flow_layers("realnvp", 2, n_layers=4, hidden=16), (2,))
    _perturb(flow, std=0.1)
    x = torch.randn(32, 2, generator=_gen(0))
    terms = flow.losses((x,), generator=_gen(1))
    assert set(terms) == {"nll"} and terms["nll"].shape == (32,)
    torch.testing.assert_close(terms["nll"], -flow.log_likelihood(x))
    assert Flow.likelihood_kind == "exact"
    # Per-sample seeds: sample i does not depend on the batch it is drawn in.
    many = flow.sample(5, shape=(2,), generator=StackedGenerator([10, 11, 12, 13, 14]), method="heun", nfe=7)
    one = flow.sample(1, generator=StackedGenerator([12]))
    assert many.shape == (5, 2)
    torch.testing.assert_close(many[2:3], one)
    with pytest.raises(ValueError, match="shape"):
        flow.sample(2, shape=(3,))


def test_flow_protocol_images_dequantized():
    data = SimpleNamespace(shape=(1, 8, 8), kind="images", n_levels=DIGITS_LEVELS, n_classes=None)
    flow = build_normalizing_flow(FlowConfig(kind="glow", n_layers=2, hidden=16), data)
    levels = torch.randint(0, DIGITS_LEVELS, (8, 1, 8, 8), generator=_gen(0), dtype=torch.uint8)
    x = to_unit_range(levels, DIGITS_LEVELS)
    terms = flow.losses((x,), generator=_gen(1))
    assert set(terms) == {"nll", "_bpd"} and terms["nll"].shape == (8,)
    torch.testing.assert_close(terms["_bpd"], bits_per_dim(-terms["nll"], 64, n_levels=DIGITS_LEVELS, data_range=2.0))
    # The loss is the density of y = dequantize(x) with the generator's uniforms: same seed, same loss.
    torch.testing.assert_close(flow.losses((x,), generator=_gen(1))["nll"], terms["nll"])
    assert not torch.allclose(flow.losses((x,), generator=_gen(2))["nll"], terms["nll"])
    samples = flow.sample(6, shape=(1, 8, 8), generator=_gen(3))
    assert samples.shape == (6, 1, 8, 8)
    torch.testing.assert_close(samples, to_unit_range(to_uint8(samples, DIGITS_LEVELS), DIGITS_LEVELS))  # on the grid


def test_config_registered_and_built():
    assert get_variant("model", "normalizing-flow") is FlowConfig
    assert FAMILY_BUILDERS == {FlowConfig: build_normalizing_flow}
    cfg = from_dict(FlowConfig, {"kind": "spline", "n_bins": 5})
    assert from_dict(FlowConfig, to_dict(cfg)) == cfg
    points = SimpleNamespace(shape=(2,), kind="points", n_levels=None, n_classes=None)
    for kind in FLOW_KINDS:
        model = build_normalizing_flow(FlowConfig(kind=kind, n_layers=2, hidden=8), points)
        assert model(torch.randn(3, 2))[0].shape == (3, 2)
    with pytest.raises(ValueError, match="kind"):
        flow_layers("glo", 2)
    with pytest.raises(ValueError, match="D >= 2"):
        flow_layers("realnvp", 1)


# ---------------------------------------------------------------------------------- training
def test_spline_flow_trains_on_8gaussians(tmp_path):
    """Trainer + spline flow: held-out NLL falls to near the data's entropy; energy distance / floor falls."""
    torch.manual_seed(0)
    train = make_toy("8gaussians", 8000, generator=_gen(0))
    reference = make_toy("8gaussians", 1000, generator=_gen(1))
    heldout = make_toy("8gaussians", 1000, generator=_gen(2))
    entropy = -float(toy_density("8gaussians").log_prob(heldout.double()).mean())  # ≈ 1.46 nats
    flow = Flow(flow_layers("spline", 2, n_layers=4, hidden=32, depth=2, n_bins=8, tail_bound=4.0), (2,))

    def score(model):
        model.eval()
        with torch.no_grad():
            nll = -float(model.log_likelihood(heldout).mean())
            samples = model.sample(1000, generator=_gen(3))
        model.train()
        return nll, metric_with_floor(lambda a, b: energy_distance(a, b, unbiased=False), samples, reference, heldout).ratio

    nll0, ratio0 = score(flow)  # the untrained flow is N(0, I): NLL ≈ 2.9 nats
    cfg = TrainConfig(steps=200, batch_size=256, lr=5e-3, ema=EMAConfig(kind="off"), ckpt_every=None, log_every=100)
    Trainer(flow, (train,), cfg, tmp_path, progress=False, tensorboard=False).fit()
    nll1, ratio1 = score(flow)
    assert nll1 < nll0 - 0.8 and nll1 < entropy + 0.45, (nll0, nll1, entropy)
    assert ratio1 < 0.35 * ratio0, (ratio0, ratio1)
