"""Discrete schedules α(t), forward token processes and the float64 Gumbel-max draw: known answers."""

from __future__ import annotations

import math

import pytest
import torch
from scipy import stats

from genspace.core.random import StackedGenerator
from genspace.discrete.categorical import sample_categorical
from genspace.discrete.processes import AbsorbingProcess, UniformProcess, get_token_process
from genspace.discrete.schedules import get_schedule, schedule_names

F64 = torch.float64
NAMES = ["linear", "log-linear", "cosine", "poly-2", "poly-0.5"]


@pytest.mark.parametrize("name", NAMES)
def test_schedule_derivative_weight_inverse(name):
    s = get_schedule(name)
    t = torch.linspace(0.01, 0.99, 99, dtype=F64, requires_grad=True)
    a = s.alpha(t)
    (grad,) = torch.autograd.grad(a.sum(), t)
    assert torch.allclose(s.alpha_prime(t), grad, atol=1e-12)
    assert torch.allclose(s.weight(t), -grad / (1 - a), rtol=1e-9)  # −α′/(1−α) in closed form
    assert torch.allclose(s.t_of_alpha(a), t, atol=1e-12)
    assert torch.allclose(s.rate(t), -grad / a, rtol=1e-9)  # SEDD σ(t) = dσ̄/dt
    assert (grad < 0).all()
    ends = s.alpha(torch.tensor([0.0, 1.0], dtype=F64))
    assert float(ends[0]) == 1.0
    assert abs(float(ends[1]) - (s.eps if name == "log-linear" else 0.0)) < 1e-15


def test_weights_in_closed_form():
    t = torch.tensor([0.1, 0.5, 0.9], dtype=F64)
    assert torch.allclose(get_schedule("linear").weight(t), 1 / t)
    assert torch.allclose(get_schedule("log-linear").weight(t), 1 / t)  # (1−ε)/((1−ε)t)
    assert torch.allclose(get_schedule("poly-3").weight(t), 3 / t)
    # the NELBO weight integrates the masking probability to one: ∫ w(t)(1 − α(t)) dt = α(0) − α(1)
    grid = torch.linspace(1e-6, 1, 200_001, dtype=F64)
    for name in ("linear", "cosine", "poly-2"):
        s = get_schedule(name)
        integral = torch.trapezoid(s.weight(grid) * (1 - s.alpha(grid)), grid)
        assert abs(float(integral) - 1.0) < 1e-4, name


def test_schedule_errors():
    assert set(schedule_names()) == {"linear", "log-linear", "cosine", "poly"}
    with pytest.raises(ValueError, match="unknown discrete schedule 'cos'"):
        get_schedule("cos")
    with pytest.raises(ValueError, match="poly-<k>"):
        get_schedule("poly-x")
    with pytest.raises(ValueError, match="eps"):
        get_schedule("log-linear", eps=1.0)


def test_absorbing_marginal_and_samples():
    p = AbsorbingProcess(vocab_size=4, mask_id=4)
    x0 = torch.randint(0, 4, (2000, 8), generator=torch.Generator().manual_seed(0))
    alpha = torch.full((2000, 1), 0.3, dtype=F64)
    xt = p.sample(x0, alpha, generator=torch.Generator().manual_seed(1))
    kept = xt == x0
    assert ((xt == 4) | kept).all()  # a token is kept or masked, nothing else
    frac = kept.double().mean().item()
    assert abs(frac - 0.3) < 4 * math.sqrt(0.3 * 0.7 / x0.numel())
    m = p.marginal(x0[:3], alpha[:3])
    assert torch.allclose(m.sum(-1), torch.ones(3, 8, dtype=F64))
    assert torch.allclose(m.gather(-1, x0[:3, :, None]).squeeze(-1), torch.full((3, 8), 0.3, dtype=F64))
    # a prompt is never noised
    keep = torch.zeros_like(x0, dtype=torch.bool)
    keep[:, :3] = True
    xt = p.sample(x0, torch.zeros(2000, 1, dtype=F64), generator=torch.Generator().manual_seed(2), keep=keep)
    assert torch.equal(xt[:, :3], x0[:, :3]) and (xt[:, 3:] == 4).all()


def test_uniform_process_matches_its_marginal():
    p = UniformProcess(vocab_size=3)
    x0 = torch.zeros(30_000, 1, dtype=torch.long)
    xt = p.sample(x0, torch.full((30_000, 1), 0.4, dtype=F64), generator=torch.Generator().manual_seed(0))
    counts = torch.bincount(xt.flatten(), minlength=3).numpy()
    expected = p.marginal(x0[:1], torch.full((1, 1), 0.4, dtype=F64))[0, 0].numpy() * 30_000
    assert abs(expected[0] / 30_000 - (0.4 + 0.6 / 3)) < 1e-12
    assert stats.chisquare(counts, expected).pvalue > 1e-4


def test_process_errors():
    with pytest.raises(ValueError, match="collides"):
        AbsorbingProcess(4, 2)
    with pytest.raises(ValueError, match="mask_id"):
        get_token_process("absorbing", 4)
    with pytest.raises(ValueError, match="unknown token process"):
        get_token_process("gaussian", 4)


def test_gumbel_max_draws_the_softmax_and_is_per_sample():
    logits = torch.tensor([0.0, 1.0, -1.0, float("-inf")], dtype=F64)
    n = 40_000
    draws = sample_categorical(logits.expand(n, 4), generator=torch.Generator().manual_seed(0))
    counts = torch.bincount(draws, minlength=4).numpy()
    p = torch.softmax(logits, 0).numpy()
    assert counts[3] == 0
    assert stats.chisquare(counts[:3], p[:3] * n).pvalue > 1e-4
    hot = sample_categorical(logits.expand(n, 4), generator=torch.Generator().manual_seed(1), temperature=2.0)
    p2 = torch.softmax(logits / 2, 0).numpy()
    assert stats.chisquare(torch.bincount(hot, minlength=4).numpy()[:3], p2[:3] * n).pvalue > 1e-4
    assert torch.equal(sample_categorical(logits.expand(5, 4), temperature=0.0), torch.ones(5, dtype=torch.long))
    # one seed per row: a row does not depend on the batch it is drawn in
    many = sample_categorical(torch.zeros(6, 10, 50), generator=StackedGenerator(range(6)))
    alone = sample_categorical(torch.zeros(1, 10, 50), generator=StackedGenerator([4]))
    assert torch.equal(many[4:5], alone)
    with pytest.raises(ValueError, match="temperature"):
        sample_categorical(logits, temperature=-1.0)


def test_given_uniforms_equal_the_generator_draw():
    # sample_categorical(uniform=u) is the same Gumbel-max as drawing u from the generator
    logits = torch.randn(7, 5, 9, dtype=F64, generator=torch.Generator().manual_seed(3))
    u = torch.rand(logits.shape, dtype=F64, generator=torch.Generator().manual_seed(8))
    drawn = sample_categorical(logits, generator=torch.Generator().manual_seed(8), temperature=0.7)
    assert torch.equal(sample_categorical(logits, uniform=u, temperature=0.7), drawn)
    with pytest.raises(ValueError, match="uniform must have the logits' shape"):
        sample_categorical(logits, uniform=u[..., :-1])
    with pytest.raises(ValueError, match="not both"):
        sample_categorical(logits, uniform=u, generator=torch.Generator().manual_seed(8))
