"""VQ-VAE, VQGAN and the code prior (genspace.families.quantizer, genspace.families.vq).

Known answers: the straight-through estimator is the identity on gradients; the commitment
gradient reaches only the encoder and the codebook gradient only the codebook (both equal to
their closed forms); nearest codes equal a brute-force argmin; the EMA update equals the
formula on a batch counted by hand; dead codes are restarted and then used; k-means init puts a
code at every centre of well-separated clusters; the adaptive weight equals the formula with
gradients from separate backward passes; the prior's probabilities sum to one over every code
sequence, its logits are causal, and its samples have its probabilities. Training: a VQ-VAE on
digits (reconstruction, codebook usage, prior NLL, checkpoint round trip), VQGAN phases that
change only their own parameters, and a VQ-VAE + prior on a 2-D toy against the energy-distance
floor.
"""

from __future__ import annotations

import copy
import math
from types import SimpleNamespace

import pytest
import torch

from genspace.core.random import StackedGenerator
from genspace.data import load_digits, make_toy, to_unit_range
from genspace.families.quantizer import VectorQuantizer, kmeans, squared_distances
from genspace.families.vq import (
    CodePrior,
    CodePriorConfig,
    FAMILY_BUILDERS,
    VQGAN,
    VQGANConfig,
    VQVAEConfig,
    adaptive_weight,
    build_vqgan,
    build_vqvae,
    fit_prior,
    hinge_d_loss,
)
from genspace.metrics import energy_distance
from genspace.metrics.classifier import train_classifier
from genspace.train import EMAConfig, Trainer, TrainConfig, load_checkpoint, load_weights


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _tc(steps: int, batch: int, lr: float, log_every: int = 50) -> TrainConfig:
    return TrainConfig(steps=steps, batch_size=batch, lr=lr, ema=EMAConfig(kind="off"), ckpt_every=None, log_every=log_every)


@pytest.fixture(scope="module")
def digits():
    d = load_digits()
    return to_unit_range(d.images, 17).float(), d.labels


def _images(x, labels=None):
    train = (x,) if labels is None else (x, labels)
    return SimpleNamespace(shape=(1, 8, 8), kind="images", train=train, n_classes=None, n_levels=17)


# ---------------------------------------------------------------------- quantizer
def test_straight_through_is_identity_and_values_are_codes():
    torch.manual_seed(0)
    vq = VectorQuantizer(8, 3, update="loss", init="random").double()
    z = torch.randn(20, 3, dtype=torch.float64, requires_grad=True)
    q = vq(z)
    torch.testing.assert_close(q.z_q.detach(), vq.codebook.detach()[q.codes])  # z + (q − z), up to rounding
    q.z_q.retain_grad()
    w = torch.randn(20, 3, dtype=torch.float64)
    (w * q.z_q).sum().backward()
    assert torch.equal(z.grad, q.z_q.grad) and torch.equal(z.grad, w)


def test_commitment_to_encoder_codebook_loss_to_codebook():
    torch.manual_seed(1)
    vq = VectorQuantizer(6, 4, beta=0.25, update="loss", init="random").double()
    z = torch.randn(30, 4, dtype=torch.float64, requires_grad=True)
    q = vq(z)
    e = vq.codebook.detach()[q.codes]
    q.commitment.sum().backward()
    assert vq.codebook.grad is None
    torch.testing.assert_close(z.grad, 2 * 0.25 * (z.detach() - e) / 4)

    z.grad = None
    q = vq(z)
    q.codebook_loss.sum().backward()
    assert z.grad is None
    expected = torch.zeros(6, 4, dtype=torch.float64).index_add_(0, q.codes, 2 * (e - z.detach()) / 4)
    torch.testing.assert_close(vq.codebook.grad, expected)


def test_model_terms_reach_the_right_parameters(digits):
    x, _ = digits
    torch.manual_seed(2)
    cfg = VQVAEConfig(n_codes=16, code_dim=4, hidden=8, codebook_update="loss")
    model = build_vqvae(cfg, _images(x))
    terms = model.losses((x[:32],), generator=_gen(0))
    ae = model.autoencoder

    def grads(term):
        model.zero_grad(set_to_none=True)
        terms[term].mean().backward(retain_graph=True)
        nonzero = lambda mod: any(p.grad is not None and p.grad.abs().sum() > 0 for p in mod.parameters())  # noqa: E731
        return nonzero(ae.encoder), nonzero(ae.decoder), ae.quantizer.codebook.grad is not None

    assert grads("commitment") == (True, False, False)
    assert grads("codebook") == (False, False, True)
    assert grads("rec") == (True, True, False)  # the decoder's gradient reaches the encoder straight through


def test_nearest_code_equals_brute_force_argmin():
    g = _gen(3)
    vq = VectorQuantizer(37, 5, init="random")
    vq.codebook.copy_(torch.randn(37, 5, generator=g))
    z = torch.randn(500, 5, generator=g)
    brute = torch.tensor([min(range(37), key=lambda k: float(((zi - vq.codebook[k]) ** 2).sum())) for zi in z[:50]])
    assert torch.equal(vq.nearest(z[:50]), brute)
    assert torch.equal(vq.nearest(z), ((z[:, None, :] - vq.codebook[None]) ** 2).sum(-1).argmin(1))
    torch.testing.assert_close(squared_distances(z, vq.codebook), torch.cdist(z, vq.codebook) ** 2, atol=1e-4, rtol=1e-4)


def test_ema_update_matches_the_formula_on_a_hand_made_batch():
    vq = VectorQuantizer(3, 2, update="ema", decay=0.9, epsilon=1e-5, init="random", restart_after=None).double()
    vq.codebook.copy_(torch.tensor([[0.0, 0.0], [10.0, 0.0], [0.0, 10.0]]))
    vq.ema_count.copy_(torch.tensor([2.0, 1.0, 4.0]))
    vq.ema_sum.copy_(vq.codebook * vq.ema_count[:, None])
    z = torch.tensor([[1.0, 1.0], [-1.0, 0.0], [9.0, 1.0], [0.0, 2.0]], dtype=torch.float64)
    codes = vq.nearest(z)
    assert codes.tolist() == [0, 0, 1, 0]  # code 2 is unused by this batch
    vq.update(z, codes)
    # by hand: n = (3, 1, 0), sums s_0 = (0, 3), s_1 = (9, 1), s_2 = (0, 0)
    count = [0.9 * 2 + 0.1 * 3, 0.9 * 1 + 0.1 * 1, 0.9 * 4 + 0.1 * 0]  # 2.1, 1.0, 3.6
    sums = [[0.0, 0.9 * 0 + 0.1 * 3], [0.9 * 10 + 0.1 * 9, 0.1 * 1], [0.0, 0.9 * 40]]
    total = sum(count)
    smoothed = [(c + 1e-5) / (total + 3e-5) * total for c in count]
    expected = torch.tensor([[s / smoothed[i] for s in sums[i]] for i in range(3)], dtype=torch.float64)
    torch.testing.assert_close(vq.ema_count, torch.tensor(count, dtype=torch.float64))
    torch.testing.assert_close(vq.ema_sum, torch.tensor(sums, dtype=torch.float64))
    torch.testing.assert_close(vq.codebook, expected)
    assert vq.unused_steps.tolist() == [0, 0, 1]


@pytest.mark.parametrize("update", ["ema", "loss"])
def test_dead_codes_are_restarted_and_then_used(update):
    g = _gen(4)
    vq = VectorQuantizer(4, 2, update=update, init="random", restart_after=3)
    with torch.no_grad():
        vq.codebook.copy_(torch.tensor([[0.0, 0.0], [1.0, 0.0], [0.0, 1.0], [100.0, 100.0]]))
    if update == "ema":
        vq.ema_sum.copy_(vq.codebook * vq.ema_count[:, None])
    z = torch.rand(64, 2, generator=g)
    for step in range(3):
        codes = vq.nearest(z)
        assert (codes != 3).all()
        restarted = vq.update(z, codes, generator=g)
        assert int(restarted) == (1 if step == 2 else 0)
    new = vq.codebook[3].detach()
    assert ((z - new).abs().sum(1) == 0).any()  # reset to one of the batch's encoder outputs
    assert (vq.nearest(z) == 3).sum() >= 1  # and then used
    assert int(vq.unused_steps[3]) == 0


def test_restart_on_low_ema_count():
    vq = VectorQuantizer(3, 2, update="ema", init="random", restart_after=None, restart_min_count=0.5)
    vq.ema_count.copy_(torch.tensor([5.0, 5.0, 0.1]))
    z = torch.randn(16, 2, generator=_gen(5))
    assert vq.dead_codes().tolist() == [False, False, True]
    vq.restart_dead(z, generator=_gen(6))
    assert ((z - vq.codebook[2]).abs().sum(1) == 0).any() and float(vq.ema_count[2]) == 1.0


def test_kmeans_init_finds_well_separated_clusters():
    g = _gen(7)
    k, d = 8, 4
    centres = 10.0 * torch.randn(k, d, generator=g)
    z = (centres[:, None, :] + 0.1 * torch.randn(k, 100, d, generator=g)).reshape(-1, d)  # (800, 4)
    z = z[torch.randperm(len(z), generator=g)]
    err = lambda vq: float(squared_distances(z, vq.codebook).min(1).values.mean())  # noqa: E731

    random_vq = VectorQuantizer(k, d, init="random")
    vq = VectorQuantizer(k, d, init="kmeans", kmeans_iters=5)
    assert vq.initialize(z, generator=_gen(8)) is True
    assert vq.initialize(z + 1.0, generator=_gen(8)) is False  # runs once; the flag is a buffer
    dist_to_code = torch.cdist(centres, vq.codebook).min(1).values  # (k,)
    assert (dist_to_code < 0.1).all(), dist_to_code
    assert err(vq) < 0.1 * err(random_vq)
    assert err(vq) < 2 * d * 0.1**2  # ≈ the within-cluster variance d·0.01
    torch.testing.assert_close(vq.ema_count.sum(), torch.tensor(800.0))  # counts of the init batch
    torch.testing.assert_close(vq.ema_sum / vq.ema_count[:, None], vq.codebook)
    # kmeans itself: the counts are those of the final assignment
    c, counts = kmeans(z, k, 3, _gen(9))
    assert torch.equal(counts, torch.bincount(squared_distances(z, c).argmin(1), minlength=k).float())


# ---------------------------------------------------------------------- VQGAN parts
def test_adaptive_weight_equals_formula_with_independent_gradients(digits):
    x, _ = digits
    torch.manual_seed(10)
    cfg = VQGANConfig(n_codes=16, code_dim=4, hidden=8, disc_hidden=8, disc_start=0, perceptual_weight=0.0, init="random")
    model = build_vqgan(cfg, _images(x)).double()
    ref = copy.deepcopy(model)
    batch = x[:16].double()
    terms = model.losses((batch,), phase="autoencoder", generator=_gen(0))
    lam = float(model.adaptive_weight)

    last = ref.autoencoder.decoder.out.weight
    rec = (batch - ref.autoencoder.reconstruct(batch)).abs().flatten(1).mean(1).mean()
    rec.backward()
    g_rec = last.grad.clone()
    ref.zero_grad(set_to_none=True)
    gan = -ref.discriminator(ref.autoencoder.reconstruct(batch)).mean()
    gan.backward()
    g_gan = last.grad.clone()
    expected = g_rec.norm() / (g_gan.norm() + 1e-4)
    assert 0 < lam < 1e4
    torch.testing.assert_close(torch.tensor(lam, dtype=torch.float64), expected)
    g_per_example = -ref.discriminator(ref.autoencoder.reconstruct(batch)).mean(1)
    torch.testing.assert_close(terms["gan"].detach(), expected * g_per_example.detach())

    # the clamp: a GAN loss without gradient at G_L gives ‖∇L_rec‖/δ, capped at 1e4
    w = torch.randn(3, 3, dtype=torch.float64, requires_grad=True)
    out = adaptive_weight((w * 100).sum(), (w * 0).sum(), w)
    assert float(out) == 1e4 and not out.requires_grad


def test_hinge_loss():
    real = torch.tensor([[2.0, 0.5], [-1.0, 0.0]])
    fake = torch.tensor([[-2.0, 0.5], [1.0, -0.5]])
    expected = torch.tensor([0.5 * (0.25 + 0.75), 0.5 * (1.5 + 1.25)])
    torch.testing.assert_close(hinge_d_loss(real, fake), expected)


def test_vqgan_phases_change_only_their_own_parameters(digits, tmp_path):
    x, labels = digits
    torch.manual_seed(11)
    clf = train_classifier(x[:512], labels[:512], n_classes=10, steps=10, conv1_channels=4, conv2_channels=8, feature_dim=8)
    cfg = VQGANConfig(
        n_codes=16, code_dim=4, hidden=8, disc_hidden=8, disc_start=2, perceptual_weight=0.0,
        prior=CodePriorConfig(dim=16, depth=1, n_heads=2),
    )  # fmt: skip
    model = build_vqgan(cfg, _images(x[:256]))
    model = VQGAN(
        model.autoencoder, model.discriminator, model.prior, classifier=clf, perceptual_weight=1.0, disc_start=2
    )  # the same nets with a perceptual classifier passed directly
    # the perceptual layers replicate the classifier's own features; perc(x, x) = 0
    torch.testing.assert_close(model.perceptual.layers(x[:8])[-1].flatten(1), clf.features(x[:8]))
    assert float(model.perceptual(x[:8], x[:8]).abs().max()) < 1e-6

    # the critic's phase: no gradient to the autoencoder, no quantizer update, zero before disc_start
    buffers = {k: v.clone() for k, v in model.autoencoder.quantizer.state_dict().items()}
    terms = model.losses((x[:32],), phase="discriminator")
    terms["disc"].mean().backward()
    assert all(p.grad is None for p in model.autoencoder.parameters())
    assert all(float(p.grad.abs().sum()) == 0 for p in model.discriminator.parameters())  # not started yet
    assert all(torch.equal(v, model.autoencoder.quantizer.state_dict()[k]) for k, v in buffers.items())
    model.zero_grad(set_to_none=True)
    model.gan_step.zero_()

    before = {k: v.clone() for k, v in model.state_dict().items()}
    trainer = Trainer(model, (x[:256],), _tc(4, 32, 1e-3, log_every=1), tmp_path, progress=False, tensorboard=False)
    assert [p.name for p in trainer.phases] == ["autoencoder", "discriminator"]
    assert not any(p.requires_grad for p in model.prior.parameters())  # frozen in the autoencoder stage
    assert not any(p.requires_grad for p in model.perceptual.parameters())
    trainer.fit()
    after = model.state_dict()
    changed = lambda prefix: any(not torch.equal(before[k], after[k]) for k in before if k.startswith(prefix))  # noqa: E731
    assert changed("autoencoder.") and changed("discriminator.")
    assert not changed("prior.") and not changed("perceptual.")
    assert int(model.gan_step) == 4 and float(model.adaptive_weight) > 0
    rows = open(tmp_path / "metrics.csv").read().splitlines()
    header = rows[0].split(",")
    gan = [float(r.split(",")[header.index("autoencoder/gan")]) for r in rows[1:]]
    assert gan[0] == 0.0 and gan[1] == 0.0 and gan[2] != 0.0  # the GAN term switches on after 2 steps


# ---------------------------------------------------------------------- the prior over codes
def test_prior_is_normalized_causal_and_samples_its_probabilities():
    torch.manual_seed(12)
    prior = CodePrior(3, 2, dim=8, depth=1, n_heads=2).double()
    with torch.no_grad():
        for p in prior.parameters():
            p.normal_(0, 0.7)  # a peaked, non-uniform distribution
    all_codes = torch.cartesian_prod(torch.arange(3), torch.arange(3))  # (9, 2)
    probs = prior.log_likelihood(all_codes).exp()
    torch.testing.assert_close(probs.sum(), torch.tensor(1.0, dtype=torch.float64))
    # causal: the logits of position i do not change with the codes at i and later
    a, b = torch.tensor([[1, 0]]), torch.tensor([[1, 2]])
    torch.testing.assert_close(prior.logits(a)[:, :2], prior.logits(b)[:, :2])
    assert not torch.allclose(prior.logits(torch.tensor([[0, 0]]))[:, 1], prior.logits(a)[:, 1])
    # samples (KV-cache decoding) follow the probabilities of log_likelihood
    n = 20000
    s = prior.sample(n, generator=_gen(13))
    freq = torch.bincount(s[:, 0] * 3 + s[:, 1], minlength=9).double() / n
    assert (freq - probs).abs().max() < 4 * math.sqrt(0.25 / n)
    # per-sample generators: sample i does not depend on the batch
    s1 = prior.sample(4, generator=StackedGenerator([5, 6, 7, 8]))
    s2 = prior.sample(2, generator=StackedGenerator([7, 8]))
    assert torch.equal(s1[2:], s2)


@pytest.fixture(scope="module")
def trained_digits(digits, tmp_path_factory):
    """A small VQ-VAE trained for 200 steps on 1500 digits; the others held out."""
    x, _ = digits
    torch.manual_seed(14)
    cfg = VQVAEConfig(n_codes=32, code_dim=8, hidden=16, prior=CodePriorConfig(dim=32, depth=1, n_heads=2))
    model = build_vqvae(cfg, _images(x[:1500]))
    test = x[1500:]
    model.eval()
    rec0 = float(((model.reconstruct(test) - test) ** 2).mean())
    model.train()
    out = tmp_path_factory.mktemp("vqvae")
    config = TrainConfig(steps=200, batch_size=64, lr=3e-3, ema=EMAConfig(kind="off"), ckpt_every=None, log_every=50)
    trainer = Trainer(model, (x[:1500],), config, out, progress=False, tensorboard=False)
    row = trainer.fit()
    return SimpleNamespace(model=model, cfg=cfg, rec0=rec0, row=row, out=out, test=test, train=x[:1500])


def test_vqvae_trains_on_digits_and_checkpoints_its_codebook_state(trained_digits):
    t = trained_digits
    model = t.model.eval()
    rec = float(((model.reconstruct(t.test) - t.test) ** 2).mean())
    assert rec < 0.3 * t.rec0, (rec, t.rec0)
    assert t.row["autoencoder/_usage"] > 8  # many codes in use per batch, not one
    assert model.autoencoder.codes(t.test).unique().numel() > 8
    assert bool(model.autoencoder.quantizer.initialized)
    # EMA counts/sums, the init flag and the unused-step counters come back from the safetensors checkpoint
    ckpt = load_checkpoint(sorted(t.out.glob("ckpt-*"))[-1])
    fresh = build_vqvae(t.cfg, _images(t.train))
    assert not bool(fresh.autoencoder.quantizer.initialized)
    load_weights(fresh, ckpt.model_state)
    for k, v in model.state_dict().items():
        assert torch.equal(fresh.state_dict()[k], v), k
    # eval-mode losses leave the quantizer's state alone
    state = {k: v.clone() for k, v in model.autoencoder.quantizer.state_dict().items()}
    model.losses((t.test[:64],), generator=_gen(0))
    assert all(torch.equal(v, model.autoencoder.quantizer.state_dict()[k]) for k, v in state.items())


def test_prior_loss_falls_on_codes_and_sampling_decodes(trained_digits, tmp_path):
    t = trained_digits
    model = t.model
    with pytest.raises(ValueError, match="trained prior"):
        model.sample(4, generator=_gen(0))
    test_codes = model.autoencoder.codes(t.test)
    with torch.no_grad():
        nll0 = float(model.prior.losses((test_codes,))["nll"].mean())
    assert abs(nll0 - math.log(32)) < 0.2  # an untrained prior is near uniform
    autoencoder = {k: v.clone() for k, v in model.autoencoder.state_dict().items()}
    fit_prior(model, (t.train,), _tc(120, 64, 3e-3), tmp_path, progress=False, tensorboard=False)
    assert model.stage == "autoencoder" and int(model.prior_steps) == 120
    assert all(torch.equal(v, model.autoencoder.state_dict()[k]) for k, v in autoencoder.items())  # frozen
    with torch.no_grad():
        nll1 = float(model.prior.losses((test_codes,))["nll"].mean())
    assert nll1 < nll0 - 0.5, (nll0, nll1)
    ll = model.code_log_likelihood(t.test[:16])
    torch.testing.assert_close(ll, -model.prior.losses((test_codes[:16],))["nll"].detach() * 16, rtol=1e-4, atol=1e-3)
    x = model.sample(6, generator=StackedGenerator(range(6)), method="heun", nfe=10)  # other samplers' options ignored
    assert x.shape == (6, 1, 8, 8) and x.min() >= -1 and x.max() <= 1
    # the second stage's checkpoint holds the whole two-stage model
    fresh = build_vqvae(t.cfg, _images(t.train)).eval()
    load_weights(fresh, load_checkpoint(sorted(tmp_path.glob("ckpt-*"))[-1]).model_state)
    assert torch.equal(fresh.sample(6, generator=StackedGenerator(range(6))), x)


# ---------------------------------------------------------------------- a 2-D toy, end to end
def test_vqvae_with_prior_on_a_2d_toy_against_the_floor(tmp_path):
    g = _gen(15)
    train = make_toy("8gaussians", 4000, generator=g)
    ref = make_toy("8gaussians", 2000, generator=g)
    nulls = [energy_distance(make_toy("8gaussians", 2000, generator=g), ref) for _ in range(3)]
    floor = math.sqrt(sum(v * v for v in nulls) / 3)
    torch.manual_seed(16)
    cfg = VQVAEConfig(n_codes=32, code_dim=4, n_latents=2, prior=CodePriorConfig(dim=32, depth=1, n_heads=2))
    data = SimpleNamespace(shape=(2,), kind="points", train=(train,), n_classes=None, n_levels=None)
    model = build_vqvae(cfg, data)
    Trainer(model, (train,), _tc(300, 256, 3e-3, 100), tmp_path / "ae", progress=False, tensorboard=False).fit()
    model.eval()
    model.prior_steps.fill_(1)  # the untrained (near-uniform) prior over the trained codes: a control
    control = energy_distance(model.sample(2000, generator=_gen(17)), ref) / floor
    model.prior_steps.zero_()
    fit_prior(model, (train,), _tc(200, 256, 3e-3, 100), tmp_path / "prior", progress=False, tensorboard=False)
    ratio = energy_distance(model.sample(2000, generator=_gen(17)), ref) / floor
    # K^L = 1024 reconstructions of a continuous density: near, not at, the floor
    assert ratio < 50 and ratio < 0.25 * control, (ratio, control)


def test_resume_restores_codebook_state_exactly(tmp_path):
    """k-means init at step 1, EMA updates and restarts every step: a resumed run is bit-identical."""
    train = make_toy("moons", 512, generator=_gen(18))
    cfg = VQVAEConfig(n_codes=16, code_dim=2, hidden=16, n_latents=2, restart_after=1)
    data = SimpleNamespace(shape=(2,), kind="points", train=(train,))

    def run(out, steps, resume=False):
        torch.manual_seed(19)
        model = build_vqvae(cfg, data)
        config = TrainConfig(steps=steps, batch_size=64, lr=1e-3, ema=EMAConfig(kind="off"), ckpt_every=3, log_every=3)
        Trainer(model, (train,), config, out, progress=False, tensorboard=False).fit(resume=resume)
        return model

    full = run(tmp_path / "full", 6)
    run(tmp_path / "cut", 3)
    resumed = run(tmp_path / "cut", 6, resume=True)
    for k, v in full.state_dict().items():
        assert torch.equal(resumed.state_dict()[k], v), k


# ---------------------------------------------------------------------- configuration
def test_builders_and_errors(digits, tmp_path):
    x, labels = digits
    assert FAMILY_BUILDERS == {VQVAEConfig: build_vqvae, VQGANConfig: build_vqgan}
    with pytest.raises(ValueError, match="divisible"):
        build_vqvae(VQVAEConfig(downsample=16), _images(x[:10]))
    with pytest.raises(ValueError, match="power of two"):
        build_vqvae(VQVAEConfig(downsample=3), _images(x[:10]))
    with pytest.raises(ValueError, match="classifier"):
        build_vqgan(VQGANConfig(), _images(x[:10]))  # no labels, no classifier folder
    clf = train_classifier(x[:64], labels[:64], n_classes=10, steps=2, conv1_channels=4, conv2_channels=8, feature_dim=8)
    clf.save(tmp_path / "clf")
    gan = build_vqgan(VQGANConfig(hidden=8, disc_hidden=8, classifier=str(tmp_path / "clf")), _images(x[:10]))
    torch.testing.assert_close(gan.perceptual.net.fc.weight, clf.fc.weight)  # loaded from the folder
    points = SimpleNamespace(shape=(2,), kind="points", train=(torch.zeros(4, 2),))
    gan = build_vqgan(VQGANConfig(), points)
    assert gan.perceptual is None and gan.likelihood_kind is None
    with pytest.raises(ValueError, match="update"):
        VectorQuantizer(4, 2, update="sgd")
    model = build_vqvae(VQVAEConfig(downsample=4, hidden=8), _images(x[:10]))
    assert model.autoencoder.grid == (2, 2) and model.prior.length == 4
    with pytest.raises(ValueError, match="shape"):
        model.losses((x[:4, :, :4],))
