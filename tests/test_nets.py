"""Image backbones (U-Net, DiT) and their embeddings: shapes, zero-init, closed forms, errors.

Tiny configurations keep this file fast on one core. "Perturbed" networks have every parameter
moved by Gaussian noise, so that the zero-initialised layers no longer hide the computation.
"""

import math

import pytest
import torch
from torch.nn import functional as F

from genspace.core.random import StackedGenerator, rand
from genspace.nets.dit import DiT, sincos_2d_pos_embed
from genspace.nets.embeddings import (
    FourierFeatures,
    LabelEmbedding,
    NoiseEmbedding,
    SinusoidalEmbedding,
    drop_labels,
    timestep_embedding,
)
from genspace.nets.unet import UNet, Upsample, group_count
from genspace.nets.utils import param_count, small_dit_for, small_unet_for

N_CLASSES = 3
SIZES = [(1, 7, 7), (1, 8, 8), (1, 5, 9), (1, 28, 28), (3, 7, 7), (3, 8, 8), (3, 5, 9), (3, 28, 28)]


def tiny_unet(c, n_classes=N_CLASSES, **kw):
    config = dict(base_channels=8, channel_mults=(1, 2), num_res_blocks=1, attn_resolutions=(2,), num_heads=2,
                  n_classes=n_classes, embed_features=16)
    config.update(kw)
    return UNet(c, **config)


def tiny_dit(c, size, n_classes=N_CLASSES, **kw):
    config = dict(patch_size=2, hidden=16, depth=2, num_heads=2, n_classes=n_classes, embed_features=16)
    config.update(kw)
    return DiT(c, size, **config)


def build(kind, shape, n_classes=N_CLASSES, **kw):
    c, h, w = shape
    return tiny_unet(c, n_classes, **kw) if kind == "unet" else tiny_dit(c, (h, w), n_classes, **kw)


@torch.no_grad()
def perturb(net, seed=0, scale=0.3):
    g = torch.Generator().manual_seed(seed)
    for p in net.parameters():
        p.add_(scale * torch.randn(p.shape, generator=g, dtype=p.dtype))
    return net


def inputs(shape, batch, seed=1):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn((batch, *shape), generator=g)
    t = torch.rand(batch, generator=g)
    y = torch.randint(0, N_CLASSES, (batch,), generator=g)
    return x, t, y


# --- (a) shapes --------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["unet", "dit"])
@pytest.mark.parametrize("shape", SIZES)
def test_output_shapes_odd_sizes(kind, shape):
    for n_classes in (None, N_CLASSES):
        net = perturb(build(kind, shape, n_classes))
        for batch in (1, 3):
            x, t, y = inputs(shape, batch)
            out = net(x, t, y if n_classes else None)
            assert out.shape == x.shape
            assert torch.isfinite(out).all()


@pytest.mark.parametrize("shape", [(1, 7, 7), (1, 5, 9), (2, 1, 1), (1, 3, 11)])
def test_unet_three_levels_odd_sizes(shape):
    net = perturb(tiny_unet(shape[0], channel_mults=(1, 2, 2), attn_resolutions=(2, 4)))
    x, t, y = inputs(shape, 2)
    assert net(x, t, y).shape == x.shape


def test_output_channels_options():
    x, t, y = inputs((3, 5, 9), 2)
    assert tiny_unet(3, out_channels=5)(x, t, y).shape == (2, 5, 5, 9)
    assert tiny_dit(3, (5, 9), learn_sigma=True)(x, t, y).shape == (2, 6, 5, 9)


def test_upsample_is_nearest_interpolation_to_the_skip_size():
    """Nearest ×2 then crop (the documented odd-size rule) = nearest interpolation to the size."""
    up = Upsample(2)
    with torch.no_grad():  # make the conv the identity: a centred delta kernel per channel
        up.conv.weight.zero_()
        up.conv.bias.zero_()
        for c in range(2):
            up.conv.weight[c, c, 1, 1] = 1.0
    x = torch.randn(1, 2, 4, 5, dtype=torch.float32)
    for size in [(7, 9), (8, 10), (7, 10)]:
        torch.testing.assert_close(up(x, size), F.interpolate(x, size=size, mode="nearest"), rtol=0, atol=0)


# --- (b) zero init and label dependence ----------------------------------------------------------


@pytest.mark.parametrize("kind", ["unet", "dit"])
def test_zero_output_at_init_and_label_dependence_after_perturbation(kind):
    shape = (1, 7, 7)
    net = build(kind, shape)
    x, t, y = inputs(shape, 3)
    null = torch.full_like(y, N_CLASSES)
    out_y, out_null = net(x, t, y), net(x, t, null)
    assert torch.equal(out_y, torch.zeros_like(x))
    assert torch.equal(out_y, out_null)
    perturb(net)
    out_y, out_null = net(x, t, y), net(x, t, null)
    assert (out_y - out_null).abs().max() > 1e-3  # labels matter once the zero layers are perturbed
    assert torch.equal(net(x, t, None), out_null)  # None on a conditional net = the null class
    assert (net(x, t + 1.0, y) - out_y).abs().max() > 1e-3  # and so does t


def test_every_block_starts_as_its_skip_path():
    """adaLN-Zero (DiT) and zero last convs (U-Net): each residual block is its skip at init."""
    dit = tiny_dit(1, 8)
    tokens, c = torch.randn(2, 16, 16), torch.randn(2, 16)
    for block in dit.blocks:
        assert torch.equal(block(tokens, c), tokens)
    unet = tiny_unet(1, channel_mults=(1, 2, 2), attn_resolutions=(2, 4))
    emb = torch.randn(2, 32)
    blocks = [m for m in unet.modules() if type(m).__name__ in ("ResBlock", "AttentionBlock")]
    assert len(blocks) == (3 + 2) + 3 + (6 + 4)  # encoder res + attn, middle, decoder res + attn
    for block in blocks:
        width = block.conv1.in_channels if hasattr(block, "conv1") else block.qkv.in_channels
        h = torch.randn(2, width, 5, 3)
        skip = block.skip(h) if hasattr(block, "skip") else h
        assert torch.equal(block(h, emb), skip)


def test_dit_positions_break_translation_symmetry():
    """A constant image gives identical patches; only the position embedding tells them apart."""
    net = perturb(tiny_dit(1, 8))
    out = net(torch.ones(1, 1, 8, 8), torch.zeros(1), torch.tensor([1]))
    patches = out.reshape(1, 4, 2, 4, 2).permute(0, 1, 3, 2, 4).reshape(16, 4)  # (h·w, p²)
    assert (patches - patches[0]).abs().amax(dim=1)[1:].min() > 1e-4
    net.pos_embed.zero_()
    out = net(torch.ones(1, 1, 8, 8), torch.zeros(1), torch.tensor([1]))
    patches = out.reshape(1, 4, 2, 4, 2).permute(0, 1, 3, 2, 4).reshape(16, 4)
    torch.testing.assert_close(patches, patches[:1].expand(16, 4))


@pytest.mark.parametrize("kind", ["unet", "dit"])
def test_no_coupling_across_the_batch(kind):
    shape = (3, 5, 9)
    net = perturb(build(kind, shape))
    x, t, y = inputs(shape, 3)
    out = net(x, t, y)
    torch.testing.assert_close(net(x[1:2], t[1:2], y[1:2]), out[1:2], rtol=1e-5, atol=1e-5)


# --- (c) gradient flow ------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["unet", "dit"])
@pytest.mark.parametrize("time_embedding", ["sinusoidal", "fourier"])
def test_gradients_reach_every_parameter(kind, time_embedding):
    shape = (1, 5, 9)
    net = perturb(build(kind, shape, time_embedding=time_embedding))
    x, t, _ = inputs(shape, N_CLASSES + 1)
    y = torch.arange(N_CLASSES + 1)  # every class and the null row
    out = net(x, t, y)
    (out * torch.randn(out.shape, generator=torch.Generator().manual_seed(5))).sum().backward()
    for name, p in net.named_parameters():
        assert p.grad is not None, name
        assert p.grad.abs().sum() > 0, name
    rows = net.label_embed.embed.weight.grad.abs().sum(dim=1)
    assert (rows > 0).all()


# --- (d) 2-D sin-cos positions and unpatchify ----------------------------------------------------


def test_sincos_2d_pos_embed_closed_form():
    dim, h, w = 8, 3, 5
    emb = sincos_2d_pos_embed(dim, h, w)
    assert emb.shape == (h * w, dim)
    omega = [10000.0 ** (-k / 2) for k in range(2)]  # dim/4 = 2 frequencies
    for i, j in [(0, 0), (0, 3), (2, 1), (1, 4)]:
        expected = (
            [math.sin(i * o) for o in omega] + [math.cos(i * o) for o in omega]
            + [math.sin(j * o) for o in omega] + [math.cos(j * o) for o in omega]
        )
        torch.testing.assert_close(emb[i * w + j], torch.tensor(expected), rtol=0, atol=1e-6)
    net = tiny_dit(1, (5, 9))  # grid ⌈5/2⌉ × ⌈9/2⌉ = 3 × 5
    assert torch.equal(net.pos_embed, sincos_2d_pos_embed(16, 3, 5))


def test_unpatchify_places_each_token_at_its_patch():
    net = tiny_dit(2, (6, 4), patch_size=2, learn_sigma=False)  # grid 3 × 2, p = 2, C = 2
    h, w, p, c = 3, 2, 2, 2
    tokens = torch.zeros(1, h * w, p * p * c)
    for i in range(h):
        for j in range(w):
            for a in range(p):
                for b in range(p):
                    for ch in range(c):
                        tokens[0, i * w + j, (a * p + b) * c + ch] = 1000 * ch + 100 * i + 10 * j + 3 * a + b
    img = net.unpatchify(tokens)
    for ch in range(c):
        for r in range(h * p):
            for col in range(w * p):
                i, a, j, b = r // p, r % p, col // p, col % p
                assert img[0, ch, r, col] == 1000 * ch + 100 * i + 10 * j + 3 * a + b


# --- (e) time embeddings -----------------------------------------------------------------------


def test_sinusoidal_embedding_closed_form_and_finite():
    t = torch.tensor([-10.0, 0.0, 999.0, 0.37], dtype=torch.float64)
    dim, half = 8, 4
    emb = timestep_embedding(t, dim)
    for b, tb in enumerate(t.tolist()):
        for i in range(half):
            omega = 10000.0 ** (-i / half)
            assert emb[b, i].item() == pytest.approx(math.sin(tb * omega), abs=1e-12)
            assert emb[b, half + i].item() == pytest.approx(math.cos(tb * omega), abs=1e-12)
    scaled = SinusoidalEmbedding(dim, time_scale=1000.0)(t)
    torch.testing.assert_close(scaled, timestep_embedding(1000.0 * t, dim))
    for module in (SinusoidalEmbedding(16), FourierFeatures(16), NoiseEmbedding(8, "fourier", 16)):
        assert torch.isfinite(module(t.float())).all()


def test_fourier_features_closed_form():
    t = torch.tensor([-10.0, 0.0, 999.0], dtype=torch.float64)
    ff = FourierFeatures(6, scale=2.0, seed=4, time_scale=0.5)
    W = torch.randn(3, generator=torch.Generator().manual_seed(4)) * 2.0
    arg = 2 * math.pi * 0.5 * t[:, None] * W[None].double()
    torch.testing.assert_close(ff(t), torch.cat([torch.sin(arg), torch.cos(arg)], dim=1))


@pytest.mark.parametrize("kind", ["unet", "dit"])
def test_networks_finite_for_any_noise_input(kind):
    shape = (1, 8, 8)
    net = perturb(build(kind, shape))
    x, _, y = inputs(shape, 3)
    out = net(x, torch.tensor([-10.0, 0.0, 999.0]), y)
    assert torch.isfinite(out).all()
    assert net(x, torch.tensor(0.5), y).shape == x.shape  # a scalar t is broadcast


# --- (f) label dropout -------------------------------------------------------------------------


def test_drop_labels():
    labels = torch.randint(0, 10, (2000,), generator=torch.Generator().manual_seed(0))
    before = labels.clone()
    assert torch.equal(drop_labels(labels, 0.0, 10, torch.Generator().manual_seed(1)), labels)
    assert torch.equal(drop_labels(labels, 1.0, 10, torch.Generator().manual_seed(1)), torch.full_like(labels, 10))
    dropped = drop_labels(labels, 0.3, 10, torch.Generator().manual_seed(2))
    u = rand(labels.shape, generator=torch.Generator().manual_seed(2))
    assert torch.equal(dropped, torch.where(u < 0.3, torch.full_like(labels, 10), labels))
    assert torch.equal(dropped, drop_labels(labels, 0.3, 10, torch.Generator().manual_seed(2)))
    frac = (dropped == 10).float().mean().item()
    assert abs(frac - 0.3) < 4 * math.sqrt(0.3 * 0.7 / 2000)
    assert torch.equal(labels, before)  # not modified in place
    # per-sample generators: a label's fate does not depend on the batch it is in
    many = drop_labels(labels[:3], 0.5, 10, StackedGenerator([7, 8, 9]))
    assert torch.equal(many[1:2], drop_labels(labels[1:2], 0.5, 10, StackedGenerator([8])))


def test_drop_labels_errors():
    labels = torch.tensor([0, 1, 2])
    with pytest.raises(ValueError, match="1.5"):
        drop_labels(labels, 1.5, 3)
    with pytest.raises(ValueError, match=r"\[0, 3\]"):
        drop_labels(torch.tensor([0, 4]), 0.1, 3)


# --- (g) bad inputs ----------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["unet", "dit"])
def test_bad_inputs_raise(kind):
    shape = (1, 7, 7)
    net = build(kind, shape)
    x, t, y = inputs(shape, 3)
    with pytest.raises(ValueError, match="3 channels"):
        net(torch.randn(3, 3, 7, 7), t, y)
    with pytest.raises(ValueError, match=r"\[0, 3\].*got values in \[0, 4\]"):
        net(x, t, torch.tensor([0, 1, N_CLASSES + 1]))
    with pytest.raises(ValueError, match="-1"):
        net(x, t, torch.tensor([0, -1, 2]))
    with pytest.raises(ValueError, match="integer"):
        net(x, t, y.float())
    with pytest.raises(ValueError, match=r"\(2,\)"):
        net(x, t[:2], y)
    with pytest.raises(ValueError, match=r"\(3, 7, 7\)"):
        net(x[:, 0], t, y)
    with pytest.raises(ValueError, match="n_classes=None"):
        build(kind, shape, n_classes=None)(x, t, y)


def test_bad_constructor_arguments_raise():
    with pytest.raises(ValueError, match="8"):
        tiny_unet(1, attn_resolutions=(8,))
    with pytest.raises(ValueError, match="num_heads=3"):
        tiny_unet(1, num_heads=3)
    with pytest.raises(ValueError, match="'gaussian'"):
        tiny_unet(1, time_embedding="gaussian")
    with pytest.raises(ValueError, match="num_heads=3"):
        tiny_dit(1, 8, num_heads=3)
    with pytest.raises(ValueError, match="hidden"):
        tiny_dit(1, 8, hidden=18, num_heads=2)
    with pytest.raises(ValueError, match=r"\(7, 7\)"):
        tiny_dit(1, 8)(torch.randn(1, 1, 7, 7), torch.zeros(1))
    with pytest.raises(ValueError, match="n_classes"):
        LabelEmbedding(0, 4)


# --- helpers ---------------------------------------------------------------------------------------


def test_group_count():
    for channels in [1, 3, 8, 16, 24, 28, 48, 64, 96, 128, 160, 256, 1024]:
        g = group_count(channels)
        assert channels % g == 0 and 1 <= g <= 32
        assert g == 1 or channels // g >= 4
        # largest such divisor
        assert not any(channels % k == 0 and channels // k >= 4 for k in range(g + 1, 33))


def test_param_count_and_matched_small_nets():
    lin = torch.nn.Linear(3, 4)
    assert param_count(lin) == 3 * 4 + 4
    lin.bias.requires_grad_(False)
    assert param_count(lin, trainable_only=True) == 12
    unet, dit = small_unet_for((1, 8, 8), 10), small_dit_for((1, 8, 8), 10)
    nu, nd = param_count(unet), param_count(dit)
    assert 5e5 <= nu <= 1e6 and 5e5 <= nd <= 1e6
    assert abs(nu - nd) / max(nu, nd) < 0.15
    x = torch.randn(2, 1, 8, 8)
    assert unet(x, torch.zeros(2)).shape == dit(x, torch.zeros(2)).shape == x.shape


@pytest.mark.parametrize("dim", [1, 3, 7])
@pytest.mark.parametrize("time_embedding", ["fourier", "sinusoidal"])
def test_time_mlp_odd_dims_zero_init_and_labels(dim, time_embedding):
    from genspace.nets import TimeMLP

    g = torch.Generator().manual_seed(0)
    net = TimeMLP(dim, 16, 2, time_embedding, 16, n_classes=N_CLASSES)
    x, t = torch.randn(3, dim, generator=g), torch.rand(3, generator=g)
    y, null = torch.tensor([0, 1, 2]), torch.full((3,), N_CLASSES)
    out = net(x, t, class_labels=y)
    assert out.shape == (3, dim) and torch.equal(out, torch.zeros_like(x))
    assert torch.equal(out, net(x, t, class_labels=null))  # no label path at init
    perturb(net)
    assert (net(x, t, class_labels=y) - net(x, t, class_labels=null)).abs().max() > 1e-3
