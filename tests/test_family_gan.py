"""The GAN family: the gradient penalty at interpolates, weight clipping, phase isolation through
the trainer, the non-saturating generator loss, DCGAN shapes, and CI-size training on 2-D toys."""

from __future__ import annotations

import math
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from genspace.core.random import StackedGenerator
from genspace.data import make_toy
from genspace.families.gan import (
    FAMILY_BUILDERS,
    GAN,
    DCGANCritic,
    DCGANGenerator,
    GANConfig,
    MLPCritic,
    MLPGenerator,
    build_gan,
    dcgan_ladder,
    gradient_penalty,
    ns_generator_loss,
    saturating_generator_loss,
)
from genspace.metrics import energy_distance
from genspace.train import EMAConfig, Trainer, TrainConfig

F64 = torch.float64
POINTS = SimpleNamespace(shape=(2,), kind="points", n_levels=None, n_classes=None)


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _gan(loss: str, **kw) -> GAN:
    with torch.random.fork_rng():
        torch.manual_seed(0)
        return build_gan(GANConfig(loss=loss, hidden=16, depth=2, **kw), POINTS)


class LinearCritic(nn.Module):
    def __init__(self, w: torch.Tensor) -> None:
        super().__init__()
        self.w, self.c = nn.Parameter(w.clone()), nn.Parameter(torch.tensor(0.3, dtype=w.dtype))

    def forward(self, x):
        return x.flatten(1) @ self.w + self.c


# ----------------------------------------------------------------------------- gradient penalty


@pytest.mark.parametrize("shape", [(2,), (1, 4, 4)])
def test_penalty_is_taken_at_interpolates(shape):
    g = _gen(1)
    real, fake = torch.randn(32, *shape, generator=g, dtype=F64), torch.randn(32, *shape, generator=g, dtype=F64)
    critic = MLPCritic(shape, hidden=8, depth=2).double()
    penalty, x_hat = gradient_penalty(critic, real, fake, _gen(2))
    assert penalty.shape == (32,) and x_hat.shape == real.shape
    d, seg = (x_hat - fake).flatten(1), (real - fake).flatten(1)
    t = (d * seg).sum(1) / seg.square().sum(1)  # x̂ − x̃ = t (x − x̃)
    torch.testing.assert_close(d, t[:, None] * seg, rtol=0, atol=1e-12)
    assert bool(((t >= 0) & (t <= 1)).all()) and t.std() > 0.1  # one ε per example, in [0, 1]
    # the penalty is (‖∇D(x̂_i)‖ − 1)² with the gradient of each example's own score
    for i in (0, 17):
        xi = x_hat[i : i + 1].detach().requires_grad_(True)
        (gi,) = torch.autograd.grad(critic(xi).sum(), xi)
        torch.testing.assert_close(penalty[i], (gi.norm() - 1).square())
    # per-example ε from per-example seeds: example 1's ε does not depend on the batch
    _, xa = gradient_penalty(critic, real[:3], fake[:3], StackedGenerator([7, 8, 9]))
    _, xb = gradient_penalty(critic, real[1:2], fake[1:2], StackedGenerator([8]))
    torch.testing.assert_close(xa[1:2], xb)


def test_penalty_of_a_linear_critic_is_exact_and_differentiable():
    """D(x) = w·x + c: ∇D = w everywhere, so the penalty is (‖w‖ − 1)² for every example and its
    gradient in w is 2(‖w‖ − 1) w/‖w‖ (create_graph=True keeps this path)."""
    w = torch.tensor([0.6, -1.2, 2.0, 0.1], dtype=F64)
    critic = LinearCritic(w)
    g = _gen(3)
    real, fake = torch.randn(10, 1, 2, 2, generator=g, dtype=F64), torch.randn(10, 1, 2, 2, generator=g, dtype=F64)
    penalty, _ = gradient_penalty(critic, real, fake, g)
    norm = w.norm()
    torch.testing.assert_close(penalty, torch.full((10,), float((norm - 1) ** 2), dtype=F64), rtol=1e-12, atol=0)
    penalty.mean().backward()
    torch.testing.assert_close(critic.w.grad, 2 * (norm - 1) * w / norm)


# ----------------------------------------------------------------------------- generator losses


def test_non_saturating_loss_keeps_its_gradient_where_d_rejects_fakes():
    logits = torch.tensor([-10.0, -3.0, 0.0, 3.0], dtype=F64, requires_grad=True)
    ns, sat = ns_generator_loss(logits), saturating_generator_loss(logits)
    assert ns.shape == sat.shape == (4,)
    torch.testing.assert_close(ns, -torch.log(torch.sigmoid(logits)))
    torch.testing.assert_close(sat, torch.log(1 - torch.sigmoid(logits)))
    (g_ns,) = torch.autograd.grad(ns.sum(), logits)
    (g_sat,) = torch.autograd.grad(sat.sum(), logits)
    s = torch.sigmoid(logits.detach())
    torch.testing.assert_close(g_ns, -(1 - s))  # → −1 as D(G(z)) = σ(l) → 0
    torch.testing.assert_close(g_sat, -s)  # → 0 as D(G(z)) → 0: saturation
    assert bool((g_ns < 0).all() and (g_sat < 0).all())  # both push D(G(z)) up
    assert g_ns[0] < -0.99 and g_sat[0] > -1e-4
    # the ns model's generator phase uses it: loss = softplus(−D(G(z)))
    gan = _gan("ns")
    x = torch.randn(6, 2, generator=_gen(4))
    terms = gan.losses((x,), phase="generator", generator=_gen(5))
    fake = gan.sample(6, generator=_gen(5))
    torch.testing.assert_close(terms["generator"], F.softplus(-gan.critic(fake)))


# ----------------------------------------------------------------------------- the trainer protocol


def test_phases_and_loss_terms():
    for loss, betas, repeat in (("ns", (0.5, 0.999), 1), ("wgan", (0.0, 0.99), 5), ("wgan-gp", (0.0, 0.9), 5)):
        gan = _gan(loss)
        critic_phase, gen_phase = gan.phases()
        assert (critic_phase.name, critic_phase.prefix, critic_phase.repeat, critic_phase.betas) == ("critic", "critic.", repeat, betas)
        assert (gen_phase.name, gen_phase.prefix, gen_phase.repeat, gen_phase.betas) == ("generator", "generator.", 1, betas)
        assert {id(p) for p in critic_phase.select(gan)} == {id(p) for p in gan.critic.parameters()}
        assert {id(p) for p in gen_phase.select(gan)} == {id(p) for p in gan.generator.parameters()}
        x = torch.randn(7, 2, generator=_gen(6))
        for phase in ("critic", "generator"):
            terms = gan.losses((x,), phase=phase, generator=_gen(7))
            assert all(v.shape == (7,) for v in terms.values()), (loss, phase)
        with pytest.raises(ValueError, match="phase"):
            gan.losses((x,), phase="main")
    gan = _gan("wgan-gp", n_critic=2, critic_lr=3e-4, generator_betas=(0.5, 0.9))
    assert gan.phases()[0].repeat == 2 and gan.phases()[0].lr == 3e-4 and gan.phases()[1].betas == (0.5, 0.9)
    terms = gan.losses((x,), phase="critic", generator=_gen(8))
    assert set(terms) == {"critic", "gp", "_w1"}
    torch.testing.assert_close(terms["_w1"], -terms["critic"].detach())
    assert GAN.likelihood_kind is None and not hasattr(gan, "log_likelihood")


def _params(module: nn.Module) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in module.named_parameters()}


def _changed(before: dict, module: nn.Module) -> set[str]:
    return {n for n, p in module.named_parameters() if not torch.equal(before[n], p.detach())}


@pytest.mark.parametrize("loss", ["ns", "wgan-gp"])
def test_each_phase_updates_only_its_own_network(tmp_path, loss):
    x = make_toy("8gaussians", 512, generator=_gen(9))
    config = TrainConfig(steps=3, batch_size=64, lr=1e-2, ema=EMAConfig(kind="off"), ckpt_every=None, log_every=1)
    for keep, frozen in (("critic", "generator"), ("generator", "critic")):
        gan = _gan(loss)
        gan.phases = lambda gan=gan, keep=keep: [p for p in GAN.phases(gan) if p.name == keep]
        before_keep, before_frozen = _params(getattr(gan, keep)), _params(getattr(gan, frozen))
        Trainer(gan, (x,), config, tmp_path / f"{loss}-{keep}", progress=False, tensorboard=False).fit()
        # every parameter of the trained network moves, except the critic's output bias under a
        # Wasserstein loss: D(G(z)) − D(x) and the penalty do not depend on it (zero gradient)
        exempt = {f"net.{len(gan.critic.net) - 1}.bias"} if (loss != "ns" and keep == "critic") else set()
        assert _changed(before_keep, getattr(gan, keep)) == set(before_keep) - exempt, (loss, keep)
        assert not _changed(before_frozen, getattr(gan, frozen)), (loss, keep)


def test_weight_clipping_keeps_the_critic_in_the_box(tmp_path):
    c = 0.01
    gan = _gan("wgan", clip=c, n_critic=2)
    assert max(float(p.detach().abs().max()) for p in gan.critic.parameters()) > 10 * c  # the default init is wider
    x = make_toy("8gaussians", 512, generator=_gen(10))
    config = TrainConfig(steps=4, batch_size=64, lr=0.1, ema=EMAConfig(kind="off"), ckpt_every=None, log_every=1)
    gen_before = _params(gan.generator)
    Trainer(gan, (x,), config, tmp_path, progress=False, tensorboard=False).fit()
    values = torch.cat([p.detach().flatten() for p in gan.critic.parameters()])
    assert float(values.abs().max()) <= c
    assert float((values.abs() == c).float().mean()) > 0.5  # lr 0.1 drives most weights onto the bounds
    assert _changed(gen_before, gan.generator)  # the generator trained against the clipped critic


# ----------------------------------------------------------------------------- networks, config


@pytest.mark.parametrize("shape,ladder", [((1, 8, 8), (1, 4, 4)), ((1, 28, 28), (2, 7, 7)), ((3, 32, 32), (3, 4, 4)), ((1, 7, 7), (0, 7, 7)), ((3, 16, 8), (1, 8, 4))])
def test_dcgan_shapes(shape, ladder):
    assert dcgan_ladder(*shape[1:]) == ladder
    with torch.random.fork_rng():
        torch.manual_seed(0)
        gen, critic = DCGANGenerator(16, shape, base_channels=8), DCGANCritic(shape, base_channels=8, norm="layer")
    x = gen(torch.randn(3, 16, generator=_gen(11)))
    assert x.shape == (3, *shape) and float(x.detach().abs().max()) < 1.0
    assert critic(x).shape == (3,)
    assert any(isinstance(m, nn.BatchNorm2d) for m in gen.modules())
    assert not any(isinstance(m, nn.BatchNorm2d) for m in critic.modules())


def test_dcgan_rejects_unsupported_sizes_and_bn_critics_under_gp():
    for hw in ((30, 30), (2, 8), (36, 20)):
        with pytest.raises(ValueError, match="DCGAN"):
            dcgan_ladder(*hw)
    shape = (1, 8, 8)
    with pytest.raises(ValueError, match="BatchNorm"):
        GAN(DCGANGenerator(4, shape, 8), DCGANCritic(shape, 8, "batch"), shape, latent_dim=4, loss="wgan-gp")


def test_builder_and_per_sample_generators():
    assert FAMILY_BUILDERS[GANConfig] is build_gan
    digits = SimpleNamespace(shape=(1, 8, 8), kind="images", n_levels=17, n_classes=None)
    with torch.random.fork_rng():
        torch.manual_seed(0)
        gp, ns, mlp_img = (build_gan(GANConfig(base_channels=8), digits), build_gan(GANConfig(loss="ns", base_channels=8), digits),
                           build_gan(GANConfig(net="mlp", hidden=16), digits))  # fmt: skip
    assert isinstance(gp.generator, DCGANGenerator) and gp.latent_dim == 64
    assert not any(isinstance(m, nn.BatchNorm2d) for m in gp.critic.modules())  # layer norm under GP
    assert any(isinstance(m, nn.BatchNorm2d) for m in ns.critic.modules())  # DCGAN's BN for ns
    assert isinstance(mlp_img.generator, MLPGenerator) and mlp_img.generator.tanh
    x = torch.rand(5, 1, 8, 8, generator=_gen(12)) * 2 - 1
    for model in (gp, ns):
        for phase in ("critic", "generator"):
            assert all(v.shape == (5,) for v in model.losses((x,), phase=phase, generator=_gen(13)).values())
        model.eval()
        batch = model.sample(4, shape=(1, 8, 8), generator=StackedGenerator([3, 4, 5, 6]), nfe=5, method="heun")
        alone = model.sample(1, generator=StackedGenerator([5]))
        assert batch.shape == (4, 1, 8, 8) and float(batch.abs().max()) <= 1.0
        torch.testing.assert_close(batch[2:3], alone)
    with pytest.raises(ValueError, match="shape"):
        gp.sample(2, shape=(1, 4, 4))
    with pytest.raises(ValueError, match="unconditional"):
        build_gan(GANConfig(), SimpleNamespace(shape=(2,), kind="points", n_levels=None, n_classes=3))


# ----------------------------------------------------------------------------- training


@pytest.mark.parametrize("loss,toy", [("wgan-gp", "8gaussians"), ("ns", "moons")])
def test_trains_on_a_toy(tmp_path, loss, toy):
    """Two-time-scale learning rates (critic 1e-3, generator 1e-4; Heusel et al. 2017): a fast
    critic keeps up with a generator whose Adam steps are small, the stable regime for a run this
    short. The non-saturating GAN is tested on moons: on 8gaussians it collapses onto a few modes
    within a few hundred steps, the known failure its successors address."""
    g = _gen(0)
    train = make_toy(toy, 20_000, generator=g)
    reference, heldout = make_toy(toy, 2000, generator=g), make_toy(toy, 2000, generator=g)
    with torch.random.fork_rng():
        torch.manual_seed(0)
        gan = build_gan(GANConfig(loss=loss, hidden=64, depth=2, critic_lr=1e-3, generator_lr=1e-4), POINTS)
    floor = energy_distance(heldout, reference, unbiased=False)

    def ratio():
        return energy_distance(gan.sample(2000, generator=_gen(5)), reference, unbiased=False) / floor

    r0 = ratio()
    config = TrainConfig(steps=400, batch_size=128, ema=EMAConfig(kind="off"), ckpt_every=None, log_every=100)
    Trainer(gan, (train,), config, tmp_path, progress=False, tensorboard=False).fit()
    r = ratio()
    print(f"\n{loss} on {toy}: energy distance / floor {r0:.0f} -> {r:.0f}")
    assert r < 0.35 * r0, (r0, r)
