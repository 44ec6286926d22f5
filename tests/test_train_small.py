"""End to end: train a small TimeMLP on a 2-D Gaussian mixture under four classic recipes, sample
with Heun, and compare with fresh data by the energy distance against its floor.

Recipes (network output → adapter, loss recipe of genspace.continuous.losses):
  EDM   F            → EDMPrecond        + "edm"   (log-normal σ × λ(σ) = 1/c_out²)
  DDPM  ε, ddpm-linear → EpsDenoiser     + "ddpm"  (uniform integer t × ε-MSE)
  v     v, cosine    → VDenoiser         + "v"     (uniform t × v-MSE)
  flow  u, linear    → VelocityDenoiser  + "flow"  (uniform t × velocity MSE, rectified flow)

Sampling runs over σ ∈ [0.002 (or the process's σ_min), 10] for every recipe: σ_max = 10 is 22× the
data's standard deviation (0.45), so starting from N(0, 10²I) costs nothing measurable, while an
ε-network's error is multiplied by σ in D = x − σ·ε̂ (EDM §5), which at σ = 80 turns a tiny
network's ε error into outliers. The pass criterion is the energy distance of 2000 samples to
2000 fresh data points below 3× the floor, the RMS of the same statistic between independent real
sets of that size (the estimator is unbiased, so the floor is its null spread, not a bias). A
mixture with its radius off by 10% must fail the same criterion (the negative control).
"""

from __future__ import annotations

import copy
import math
import time

import pytest
import torch

from genspace.continuous.losses import get_loss
from genspace.continuous.parameterizations import EDMPrecond, EpsDenoiser, VDenoiser, VelocityDenoiser
from genspace.continuous.processes import get_process
from genspace.core.gmm import GaussianMixture
from genspace.metrics import energy_distance, metric_with_floor
from genspace.nets import TimeMLP
from genspace.sampling import sample

N_EVAL = 2000
FLOOR_MULTIPLE = 3.0


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _data(radius: float = 0.6) -> GaussianMixture:
    """Three isotropic components (std 0.15) on a circle: per-dimension std 0.45."""
    return GaussianMixture.ring(n_components=3, radius=radius, std=0.15)


def _floor(gmm: GaussianMixture, reference: torch.Tensor, n_sets: int = 4) -> float:
    g = _gen(100)
    nulls = [energy_distance(gmm.sample(N_EVAL, generator=g), reference) for _ in range(n_sets)]
    return math.sqrt(sum(v * v for v in nulls) / n_sets)


def _make(case: str, net: torch.nn.Module):
    if case == "edm":
        return EDMPrecond(net, sigma_data=0.5), get_loss("edm")
    if case == "ddpm":
        return EpsDenoiser(net, get_process("ddpm-linear")), get_loss("ddpm")
    if case == "v":
        return VDenoiser(net, get_process("cosine")), get_loss("v")
    return VelocityDenoiser(net, get_process("flow")), get_loss("flow")


def _train(denoiser, loss, gmm, *, steps=1000, batch=256, lr=5e-3, ema_decay=0.99, seed=1):
    """AdamW, constant lr then linear decay to 0 over the last 30%, EMA of the weights."""
    ema = copy.deepcopy(denoiser)
    opt = torch.optim.AdamW(denoiser.parameters(), lr=lr, weight_decay=0.0)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda i: min(1.0, (steps - i) / (0.3 * steps)))
    g = _gen(seed)
    for _ in range(steps):
        x0 = gmm.sample(batch, generator=g, dtype=torch.float32)
        value = loss(denoiser, x0, generator=g).mean()
        opt.zero_grad(set_to_none=True)
        value.backward()
        opt.step()
        sched.step()
        with torch.no_grad():
            for p_ema, p in zip(ema.parameters(), denoiser.parameters()):
                p_ema.lerp_(p, 1 - ema_decay)
    return ema


def _draw(denoiser, n: int, seed: int) -> torch.Tensor:
    p = denoiser.process
    g = _gen(seed)
    noise = torch.randn(n, 2, generator=g)
    return sample(denoiser, noise, method="heun", nfe=31, sigma_min=max(0.002, p.sigma_min), sigma_max=10.0, generator=g)


@pytest.mark.slow
@pytest.mark.parametrize("case", ["edm", "ddpm", "v", "flow"])
def test_small_model_matches_data(case):
    start = time.perf_counter()
    gmm = _data()
    embedding = "sinusoidal" if case == "ddpm" else "fourier"  # integer steps 0…999 vs inputs of order 1
    with torch.random.fork_rng():
        torch.manual_seed(0)
        net = TimeMLP(2, hidden=64, depth=2, time_embedding=embedding, embed_dim=32, fourier_scale=1.0)
    denoiser, loss = _make(case, net)
    ema = _train(denoiser, loss, gmm)
    with torch.no_grad():
        x = _draw(ema, N_EVAL, seed=2)
    assert x.shape == (N_EVAL, 2) and bool(torch.isfinite(x).all())
    g = _gen(3)
    reference, heldout = gmm.sample(N_EVAL, generator=g), gmm.sample(N_EVAL, generator=g)
    res = metric_with_floor(energy_distance, x, reference, heldout)
    floor = _floor(gmm, reference)
    elapsed = time.perf_counter() - start
    print(f"\n{case}: energy distance {res.value:.2e}, floor (null RMS) {floor:.2e}, one held-out {res.floor:.2e}, {elapsed:.1f}s")
    assert res.value < FLOOR_MULTIPLE * floor, (case, res.value, floor)


def test_criterion_rejects_a_slightly_wrong_distribution():
    """Exact samples of the mixture with radius 0.66 instead of 0.6 fail the same check."""
    gmm = _data()
    g = _gen(3)
    reference = gmm.sample(N_EVAL, generator=g)
    wrong = _data(radius=0.66).sample(N_EVAL, generator=_gen(4))
    right = gmm.sample(N_EVAL, generator=_gen(4))
    floor = _floor(gmm, reference)
    assert energy_distance(right, reference) < FLOOR_MULTIPLE * floor
    assert energy_distance(wrong, reference) > FLOOR_MULTIPLE * floor


# ------------------------------------------------------------------------------- TimeMLP


def test_time_mlp_shapes_and_conditioning():
    with torch.random.fork_rng():
        torch.manual_seed(0)
        net = TimeMLP(3, hidden=32, depth=2, n_classes=4, zero_init=False)
    x, t = torch.randn(5, 3), torch.rand(5)
    labels = torch.tensor([0, 1, 2, 3, 4])  # 4 = the null class
    out = net(x, t, class_labels=labels)
    assert out.shape == (5, 3)
    # None means the null class
    torch.testing.assert_close(net(x, t), net(x, t, class_labels=torch.full((5,), 4)))
    # the output depends on t and on the label
    assert not torch.allclose(net(x, t, labels), net(x, t + 0.5, labels))
    assert not torch.allclose(net(x, t, torch.zeros(5, dtype=torch.long)), net(x, t, torch.ones(5, dtype=torch.long)))
    # a scalar t is broadcast
    torch.testing.assert_close(net(x, torch.tensor(0.3)), net(x, torch.full((5,), 0.3)))
    # gradients reach the input
    xg = x.clone().requires_grad_(True)
    net(xg, t, labels).sum().backward()
    assert xg.grad is not None and bool(xg.grad.abs().sum() > 0)


def test_time_mlp_zero_init_and_add_conditioning():
    net = TimeMLP(2, hidden=16, depth=1)
    torch.testing.assert_close(net(torch.randn(4, 2), torch.rand(4)), torch.zeros(4, 2))
    net = TimeMLP(2, hidden=16, depth=3, conditioning="add", time_embedding="sinusoidal", zero_init=False)
    assert net(torch.randn(4, 2), torch.arange(4.0) * 300).shape == (4, 2)


def test_time_features():
    """Fourier frequencies come from the given seed; the sinusoidal embedding is sin/cos(t·10000^{−i/half})."""
    a, b, c = (TimeMLP(2, embed_dim=8, seed=s).time_features.freqs for s in (7, 7, 8))
    torch.testing.assert_close(a, b, rtol=0, atol=0)
    assert not torch.equal(a, c)
    torch.testing.assert_close(a, torch.randn(4, generator=_gen(7)) * 16.0)
    emb = TimeMLP(2, time_embedding="sinusoidal", embed_dim=8).time_features
    t = torch.tensor([0.0, 2.0])
    freqs = torch.tensor([1.0, 0.1, 0.01, 0.001])  # 10000^{−i/4}
    expected = torch.cat([torch.sin(t[:, None] * freqs), torch.cos(t[:, None] * freqs)], dim=1)
    torch.testing.assert_close(emb(t), expected)


def test_time_mlp_bad_inputs():
    net = TimeMLP(2, hidden=8, depth=1, n_classes=3)
    with pytest.raises(ValueError, match=r"x must have shape \(B, 2\)"):
        net(torch.zeros(4, 3), torch.zeros(4))
    with pytest.raises(ValueError, match="t must be"):
        net(torch.zeros(4, 2), torch.zeros(3))
    with pytest.raises(ValueError, match="class_labels must lie in"):
        net(torch.zeros(2, 2), torch.zeros(2), torch.tensor([0, 4]))
    with pytest.raises(ValueError, match="n_classes=None"):
        TimeMLP(2, hidden=8, depth=1)(torch.zeros(2, 2), torch.zeros(2), torch.tensor([0, 1]))
    with pytest.raises(ValueError, match="time_embedding"):
        TimeMLP(2, time_embedding="learned")
    with pytest.raises(ValueError, match="conditioning"):
        TimeMLP(2, conditioning="concat")
    with pytest.raises(ValueError, match="embed_dim"):
        TimeMLP(2, embed_dim=7)
