"""Continuous normalizing flow (genspace.families.cnf): closed forms on a linear field, solver order,
unbiased Hutchinson estimates, RNODE integrals, the family protocol, configs and a short training run.
"""

from __future__ import annotations

import math
from types import SimpleNamespace

import pytest
import torch
from torch import nn

from genspace.config import from_dict, get_variant, to_dict
from genspace.continuous.likelihood import draw_probes, estimate_divergence, gaussian_log_prob
from genspace.core.random import StackedGenerator
from genspace.data import DIGITS_LEVELS, make_toy, to_uint8, to_unit_range, toy_density
from genspace.families.cnf import CNF, FAMILY_BUILDERS, CNFConfig, ConcatMLP, build_cnf, divergence_with_graph
from genspace.nets import TimeMLP
from genspace.train import EMAConfig, TrainConfig, Trainer


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


class LinearField(nn.Module):
    """v(x, t) = A x: the flow map is x(t) = e^{tA} x and div v = tr A."""

    def __init__(self, a: torch.Tensor) -> None:
        super().__init__()
        self.a = nn.Parameter(a.clone())

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return x @ self.a.T


def _matrix(d: int = 3, seed: int = 0) -> torch.Tensor:
    return torch.randn(d, d, generator=_gen(seed), dtype=torch.float64) * 0.5


def _closed_form(a: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """log p(x) = log N(e^A x; 0, I) + tr A."""
    return gaussian_log_prob(x @ torch.linalg.matrix_exp(a).T, 1.0) + torch.trace(a)


def _random_field(d: int) -> nn.Module:
    net = TimeMLP(d, hidden=16, depth=2, time_embedding="sinusoidal", embed_dim=8, zero_init=False).double()
    with torch.no_grad():
        net.out.weight.mul_(3.0)
    return net


def test_linear_field_closed_form_adaptive_exact():
    a = _matrix()
    model = CNF(LinearField(a), (3,), rtol=1e-10, atol=1e-10, eval_divergence="exact")
    x = torch.randn(6, 3, generator=_gen(1), dtype=torch.float64)
    res = model.likelihood(x)
    torch.testing.assert_close(res.log_prob, _closed_form(a, x), atol=1e-8, rtol=0)
    torch.testing.assert_close(res.z, x @ torch.linalg.matrix_exp(a).T, atol=1e-8, rtol=0)
    torch.testing.assert_close(res.delta_log_prob, torch.full((6,), float(torch.trace(a)), dtype=torch.float64), atol=1e-8, rtol=0)
    assert res.estimator == "exact" and model.likelihood_kind == "exact"
    torch.testing.assert_close(model.log_likelihood(x), res.log_prob)


def test_training_solve_converges_at_fourth_order():
    """RK4 training solve on v = A x: the log p error → 0 like h⁴ (halving h divides it by ≈ 16)."""
    a = _matrix()
    x = torch.randn(6, 3, generator=_gen(1), dtype=torch.float64)
    exact = _closed_form(a, x)
    errors = []
    for steps in (4, 8, 16):
        model = CNF(LinearField(a), (3,), train_steps=steps, train_divergence="exact")
        errors.append(float((model.train_log_prob(x)["log_prob"].detach() - exact).abs().max()))
    assert errors[2] < 1e-6
    for coarse, fine in zip(errors[:-1], errors[1:]):
        assert 10 < coarse / fine < 24, errors


def test_training_solve_is_differentiable():
    a = _matrix()
    model = CNF(LinearField(a), (3,), train_steps=32)
    x = torch.randn(6, 3, generator=_gen(1), dtype=torch.float64)
    (grad,) = torch.autograd.grad(model.train_log_prob(x)["log_prob"].sum(), model.velocity.a)
    # d/dA Σ_b [log N(e^A x_b) + tr A], by autograd through the closed form.
    a_ref = a.clone().requires_grad_(True)
    (ref,) = torch.autograd.grad(_closed_form(a_ref, x).sum(), a_ref)
    torch.testing.assert_close(grad, ref, atol=1e-6, rtol=0)


@pytest.mark.parametrize("net", ["timemlp", "concat"])
def test_divergence_with_graph_matches_core_and_jacobian(net):
    d = 4
    if net == "timemlp":
        net = _random_field(d)
    else:
        net = ConcatMLP(d, 12, 2).double()
        with torch.no_grad():
            net.out.weight.normal_(0, 1, generator=_gen(9))
    x = torch.randn(5, d, generator=_gen(0), dtype=torch.float64)
    t = torch.full((5,), 0.3, dtype=torch.float64)
    xr = x.clone().requires_grad_(True)
    div, frob = divergence_with_graph(net(xr, t), xr)
    jac = torch.stack([torch.autograd.functional.jacobian(lambda v: net(v[None], t[:1])[0], x[i]) for i in range(5)])
    torch.testing.assert_close(div, torch.diagonal(jac, dim1=1, dim2=2).sum(1), atol=1e-12, rtol=0)
    torch.testing.assert_close(frob, (jac**2).sum((1, 2)), atol=1e-12, rtol=0)
    _, core_div = estimate_divergence(lambda y: net(y, t), x)
    torch.testing.assert_close(div.detach(), core_div, atol=1e-12, rtol=0)
    # The same Rademacher probes give the core's Hutchinson estimate.
    probes = draw_probes(x, 3, probe="rademacher", generator=_gen(1))
    div_h, _ = divergence_with_graph(net(xr, t), xr, probes)
    torch.testing.assert_close(div_h.detach(), estimate_divergence(lambda y: net(y, t), x, probes)[1], atol=1e-12, rtol=0)


def test_hutchinson_log_likelihood_is_unbiased():
    """Mean of the Hutchinson log-likelihood over many probe draws = the exact one (within 4 SE)."""
    d, n = 3, 400
    model = CNF(_random_field(d), (d,), eval_divergence="hutchinson", rtol=1e-6, atol=1e-6)
    assert model.likelihood_kind == "estimate"
    x = torch.randn(2, d, generator=_gen(5), dtype=torch.float64)
    exact = model.likelihood(x, divergence="exact").log_prob
    reps = x.repeat_interleave(n, dim=0)  # each copy draws its own probe
    res = model.likelihood(reps, generator=_gen(6))
    assert res.estimator.startswith("hutchinson(rademacher")
    est = res.log_prob.reshape(2, n)
    mean, se = est.mean(1), est.std(1) / math.sqrt(n)
    assert torch.all(se > 1e-3), se  # the estimate is random: the test can fail
    assert torch.all((mean - exact).abs() < 4 * se), (mean, exact, se)
    # Training-time estimates (fixed-step solve) are unbiased for the training objective too,
    # and so is the Frobenius estimate ‖εᵀJ‖² of the RNODE term.
    ex = CNF(model.velocity, (d,), train_steps=4, train_divergence="exact").train_log_prob(x)
    hu = CNF(model.velocity, (d,), train_steps=4, train_divergence="hutchinson").train_log_prob(reps, generator=_gen(7))
    for key in ("log_prob", "jacobian"):
        est = hu[key].detach().reshape(2, n)
        mean, se = est.mean(1), est.std(1) / math.sqrt(n)
        assert torch.all((mean - ex[key].detach()).abs() < 4 * se), (key, mean, ex[key], se)


@pytest.mark.parametrize("divergence", ["exact", "hutchinson"])
def test_rnode_integrals_closed_form(divergence):
    """v = a·x: ∫‖v‖² dt = a²‖x‖²(e^{2a} − 1)/(2a) and ∫‖∂v/∂x‖_F² dt = a²·D (Rademacher: exact too)."""
    a, d = 0.7, 3
    model = CNF(LinearField(a * torch.eye(d, dtype=torch.float64)), (d,), train_steps=32, train_divergence=divergence,
                kinetic_weight=0.5, jacobian_weight=0.25)  # fmt: skip
    x = torch.randn(4, d, generator=_gen(0), dtype=torch.float64)
    res = model.train_log_prob(x, generator=_gen(1))
    kinetic = a * a * (x * x).sum(1) * math.expm1(2 * a) / (2 * a)
    torch.testing.assert_close(res["kinetic"].detach(), kinetic, atol=1e-8, rtol=0)
    torch.testing.assert_close(res["jacobian"].detach(), torch.full((4,), a * a * d, dtype=torch.float64), atol=1e-10, rtol=0)
    terms = model.losses((x,), generator=_gen(1))
    assert set(terms) == {"nll", "kinetic", "jacobian"}
    torch.testing.assert_close(terms["kinetic"], 0.5 * res["kinetic"])
    logged = CNF(model.velocity, (d,), train_steps=4).losses((x,))
    assert set(logged) == {"nll", "_kinetic", "_jacobian"}


def test_sample_inverts_the_flow():
    a = _matrix()
    model = CNF(LinearField(a), (3,), rtol=1e-10, atol=1e-10)
    seeds = [3, 4, 5, 6]
    x = model.sample(4, shape=(3,), generator=StackedGenerator(seeds), nfe=9, method="euler")
    z = torch.stack([torch.randn(3, generator=_gen(s), dtype=torch.float64) for s in seeds])
    torch.testing.assert_close(x, z @ torch.linalg.matrix_exp(-a).T, atol=1e-8, rtol=0)


def test_images_and_config():
    assert get_variant("model", "cnf") is CNFConfig
    assert FAMILY_BUILDERS == {CNFConfig: build_cnf}
    cfg = from_dict(CNFConfig, {"hidden": 16, "depth": 1, "train_steps": 2, "embed_dim": 8})
    assert from_dict(CNFConfig, to_dict(cfg)) == cfg
    data = SimpleNamespace(shape=(1, 8, 8), kind="images", n_levels=DIGITS_LEVELS, n_classes=None)
    model = build_cnf(cfg, data)
    assert model.train_divergence == "hutchinson" and model.likelihood_kind == "estimate"  # auto, D = 64
    x = to_unit_range(torch.randint(0, DIGITS_LEVELS, (4, 1, 8, 8), generator=_gen(0), dtype=torch.uint8), DIGITS_LEVELS)
    terms = model.losses((x,), generator=_gen(1))
    assert set(terms) == {"nll", "_kinetic", "_jacobian", "_bpd"} and all(v.shape == (4,) for v in terms.values())
    samples = model.sample(3, shape=(1, 8, 8), generator=_gen(2))
    assert samples.shape == (3, 1, 8, 8)
    torch.testing.assert_close(samples, to_unit_range(to_uint8(samples, DIGITS_LEVELS), DIGITS_LEVELS))
    points = SimpleNamespace(shape=(2,), kind="points", n_levels=None, n_classes=None)
    for net in ("concat", "timemlp"):
        model = build_cnf(CNFConfig(net=net, hidden=8, depth=1), points)
        assert model.train_divergence == "exact" and model.likelihood_kind == "exact"
        assert model.losses((torch.randn(5, 2),))["nll"].shape == (5,)
    with pytest.raises(ValueError, match="train_divergence"):
        CNF(LinearField(_matrix()), (3,), train_divergence="hutch")


def test_cnf_trains_on_8gaussians(tmp_path):
    """A short maximum-likelihood run through the RK4 solve: held-out NLL (adaptive, exact) falls to
    near the data's entropy, and the 4-step training solve agrees with the adaptive one."""
    torch.manual_seed(0)
    train = make_toy("8gaussians", 4000, generator=_gen(0))
    heldout = make_toy("8gaussians", 500, generator=_gen(2))
    entropy = -float(toy_density("8gaussians").log_prob(heldout.double()).mean())  # ≈ 1.44 nats
    data = SimpleNamespace(shape=(2,), kind="points", n_levels=None, n_classes=None)
    model = build_cnf(CNFConfig(hidden=32, depth=2, train_steps=4, rtol=1e-4, atol=1e-4), data)
    nll0 = -float(model.log_likelihood(heldout).mean())  # untrained: N(0, I), ≈ 2.9 nats
    cfg = TrainConfig(steps=150, batch_size=128, lr=5e-3, ema=EMAConfig(kind="off"), ckpt_every=None, log_every=50)
    Trainer(model, (train,), cfg, tmp_path, progress=False, tensorboard=False).fit()
    nll1 = -float(model.log_likelihood(heldout).mean())
    assert nll1 < nll0 - 0.8 and nll1 < entropy + 0.45, (nll0, nll1, entropy)
    nll_train_solve = float(model.losses((heldout,))["nll"].detach().mean())
    assert abs(nll_train_solve - nll1) < 0.02, (nll_train_solve, nll1)
