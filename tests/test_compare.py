"""genspace compare: equal parameter budgets by a width search, one table, one figure, labelled NLLs."""

from __future__ import annotations

import json
import math
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from torch import nn

from genspace.cli import main
from genspace.compare import CompareConfig, CompareEntry, entry_config, heldout_nll, load_compare_config, match_width, param_count, run_compare
from genspace.config import apply_overrides, to_dict, variant_tags
from genspace.data import load_digits, to_uint8, to_unit_range
from genspace.experiment import build_model, load_data
from genspace.families.flows import Flow, flow_layers

RECIPE = """
name: smoke
data: {name: 8gaussians, n_train: 1000, n_eval: 200}
train: {steps: 30, batch_size: 128, lr: 2.0e-3, log_every: 10, ckpt_every: null, ema: {kind: "off"}}
sample: {method: dpmpp-2m, nfe: 8, n: 200}
params: 3000
nll_n: 16
entries:
  - {label: edm, model: {family: diffusion, process: edm, parameterization: edm, loss: edm, sigma_data: 1.0, net: {kind: mlp, hidden: 64, depth: 2}}, width: model.net.hidden}
  - {label: rf, model: {family: diffusion, process: flow, parameterization: velocity, loss: flow, net: {kind: mlp, hidden: 64, depth: 2}}, overrides: [sample.grid=time-uniform, model.net.hidden=20]}
"""


@pytest.fixture
def recipe(tmp_path):
    path = tmp_path / "cmp.yaml"
    path.write_text(RECIPE)
    return path


def test_width_search_finds_the_closest_parameter_count(recipe):
    cfg = load_compare_config(recipe)
    data = load_data(cfg.data)
    exp = entry_config(cfg, cfg.entries[0])
    matched, n = match_width(exp, data, "model.net.hidden", 3000)
    w = matched.model.net.hidden
    counts = {k: param_count(build_model(apply_overrides(exp, [f"model.net.hidden={k}"]), data)) for k in range(max(1, w - 3), w + 4)}
    assert n == counts[w] == min(counts.values(), key=lambda c: abs(c - 3000))
    matched, n8 = match_width(exp, data, "model.net.hidden", 3000, multiple=8)  # widths restricted to multiples of 8
    w8 = matched.model.net.hidden
    near = [param_count(build_model(apply_overrides(exp, [f"model.net.hidden={k}"]), data)) for k in (w8 - 8, w8, w8 + 8) if k >= 8]
    assert w8 % 8 == 0 and n8 == min(near, key=lambda c: abs(c - 3000))
    with pytest.raises(ValueError, match="integer field"):
        match_width(exp, data, "model.process", 3000)


def test_compare_cli_writes_table_json_and_figure(recipe, tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["compare", str(recipe), "--out", str(out), "--train.steps=20"]) == 0
    text = capsys.readouterr().out
    rows = [line for line in text.splitlines() if line.startswith("| edm") or line.startswith("| rf")]
    assert len(rows) == 2 and all("(exact)" in r for r in rows)  # PF-ODE NLL with the exact divergence in 2-D
    saved = json.loads((out / "compare.json").read_text())
    by = {r["label"]: r for r in saved["rows"]}
    assert by["rf"]["config"]["model"]["net"]["hidden"] == 20  # an entry's own overrides apply
    assert abs(by["edm"]["params"] - 3000) < 0.2 * 3000 and by["edm"]["steps"] == 20
    assert (out / "samples.png").stat().st_size > 10_000 and (out / "compare.md").exists()
    assert main(["compare", str(recipe), "--out", str(out)]) == 2  # refuses to overwrite a comparison


def test_compare_config_errors(tmp_path):
    with pytest.raises(ValueError, match="distinct labels"):
        CompareConfig(entries=[CompareEntry(label="a"), CompareEntry(label="a")])
    empty = tmp_path / "empty.yaml"
    empty.write_text("name: x\n")
    with pytest.raises(ValueError, match="at least one entry"):
        load_compare_config(empty)


# ----------------------------------------------------------------------------- likelihood convention


def _digits_bundle(n: int = 120):
    x = to_unit_range(load_digits().images[:n], 17)
    return SimpleNamespace(heldout=x, kind="images", shape=(1, 8, 8), n_levels=17)


class _UniformCube(nn.Module):
    """The uniform density on [−1, 1]^D (log p = −D log 2 inside), recording what it was asked."""

    likelihood_kind, likelihood_space = "exact", "density"

    def __init__(self):
        super().__init__()
        self.w = nn.Parameter(torch.zeros((), dtype=torch.float64))
        self.seen = []

    def log_likelihood(self, x, *, generator=None):
        self.seen.append(x)
        flat = x.flatten(1)
        inside = ((flat >= -1) & (flat < 1)).all(1)
        return torch.where(inside, torch.full((len(x),), -flat.shape[1] * math.log(2.0), dtype=torch.float64), torch.tensor(-math.inf, dtype=torch.float64))


class _IndependentLevels(nn.Module):
    """P(k) = Π_d π_d(k_d) for a fixed table π (D, L): an exactly known probability of the levels."""

    likelihood_kind, likelihood_space = "exact", "levels"

    def __init__(self, dim: int, levels: int):
        super().__init__()
        self.log_pi = nn.Parameter(torch.log_softmax(torch.randn(dim, levels, generator=torch.Generator().manual_seed(1), dtype=torch.float64), -1))
        self.levels, self.seen = levels, []

    def log_likelihood(self, x, *, generator=None):
        self.seen.append(x)
        k = to_uint8(x, self.levels).long().flatten(1)  # (B, D)
        return self.log_pi.gather(1, k.T).T.sum(1)


def test_density_uniform_on_the_cube_scores_log2_L_bits_per_dim():
    data, model = _digits_bundle(), _UniformCube()
    r = heldout_nll(model, data, 100, batch=30)
    assert r.unit == "bits/dim" and r.kind == "bound" and "dequant" in r.note  # a density of dequantized data: a bound
    assert abs(r.value - math.log2(17)) < 1e-12 and r.stderr < 1e-12
    y = torch.cat(model.seen)  # the model saw dequantized points in the bins of the held-out levels
    assert y.shape == (100, 1, 8, 8) and y.min() >= -1 and y.max() < 1 and (y != data.heldout[:100].double()).all()
    assert torch.equal(to_uint8(y, 17), to_uint8(data.heldout[:100], 17))


def test_levels_model_scores_minus_log2_P_over_D():
    data = _digits_bundle()
    model = _IndependentLevels(64, 17)
    r = heldout_nll(model, data, 100, batch=40)
    k = to_uint8(data.heldout[:100], 17).long().flatten(1)
    want = -model.log_pi.detach().gather(1, k.T).T.sum(1) / (64 * math.log(2.0))
    assert r.kind == "exact" and r.note == "" and abs(r.value - float(want.mean())) < 1e-10
    assert abs(r.stderr - float(want.std() / math.sqrt(100))) < 1e-10
    assert torch.equal(torch.cat(model.seen), data.heldout[:100])  # the levels themselves, not dequantized


def test_flow_at_initialization_is_a_standard_normal_on_both_data_kinds():
    # RealNVP starts at the identity: p = N(0, I). Points: exact nats. Images: the dequantization
    # bound, whose expectation over u is known in closed form (uniform moments within each bin).
    torch.manual_seed(0)
    flow = Flow(flow_layers("realnvp", 2, n_layers=2, hidden=8), (2,)).double()
    pts = torch.randn(50, 2, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    r = heldout_nll(flow, SimpleNamespace(heldout=pts, kind="points", shape=(2,), n_levels=None), 50)
    want = (0.5 * pts.square().sum(1) + math.log(2 * math.pi)).mean()
    assert r.kind == "exact" and r.unit == "nats" and abs(r.value - float(want)) < 1e-10

    data, n, L = _digits_bundle(), 120, 17
    flow = Flow(flow_layers("realnvp", 64, n_layers=2, hidden=8), (1, 8, 8), n_levels=L).double()
    r = heldout_nll(flow, data, n)
    a = to_uint8(data.heldout[:n], L).double().flatten(1) * (2.0 / L) - 1.0  # left bin edges (n, 64)
    d = 2.0 / L

    def moment(m):  # E[y^m] for y ~ U[a, a + d)
        return ((a + d) ** (m + 1) - a ** (m + 1)) / ((m + 1) * d)

    per_dim = 0.5 * math.log(2 * math.pi) + 0.5 * moment(2) - math.log(d)  # E_u[−log N(y)] − log Δ, nats
    expected = float(per_dim.mean()) / math.log(2.0)
    sd = float((0.25 * (moment(4) - moment(2) ** 2)).sum().sqrt()) / (n * 64 * math.log(2.0))  # sd of the estimator given x
    assert r.kind == "bound" and abs(r.value - expected) < 5 * sd and sd < 1e-3


FAMILIES = """
name: families
data: {name: 8gaussians, n_train: 1000, n_eval: 200}
train: {steps: 20, batch_size: 128, lr: 2.0e-3, log_every: 10, ckpt_every: null, ema: {kind: "off"}}
sample: {n: 200}
params: 3000
nll_n: 24
nll_batch: 10
entries:
  - {label: made, model: {family: made, hidden: 32, n_components: 3}, width: model.hidden}
  - {label: flow, model: {family: normalizing-flow, kind: realnvp, n_layers: 2, hidden: 16}, width: model.hidden}
  - {label: vae, model: {family: vae, hidden: 16, depth: 1, eval_k: 8}, width: model.hidden}
  - {label: gan, model: {family: gan, hidden: 16, depth: 2, critic_lr: 1.0e-3, generator_lr: 1.0e-4}, width: model.hidden}
  - {label: vq, model: {family: vqvae, n_codes: 8, code_dim: 2, hidden: 8, prior: {dim: 8, depth: 1, n_heads: 2, steps: 10}}}
"""


def test_compare_of_families_labels_every_nll(tmp_path):
    path = tmp_path / "families.yaml"
    path.write_text(FAMILIES)
    out = tmp_path / "run"
    res = run_compare(load_compare_config(path), out, log=lambda *_: None)
    by = {r["label"]: r for r in res["rows"]}
    assert {k: by[k]["nll"]["kind"] for k in by} == {"made": "exact", "flow": "exact", "vae": "bound", "gan": "n/a", "vq": "n/a"}
    assert by["vae"]["nll"]["note"] == "K=8" and "K=8" in by["vae"]["nll"]["how"]
    for k in ("made", "flow", "vae", "gan"):
        assert abs(by[k]["params"] - 3000) < 0.25 * 3000 and by[k]["steps"] == 20
    assert by["vq"]["prior_steps"] == 10  # the VQ-VAE sampled through its trained prior
    assert all(math.isfinite(r["nll"]["value"]) for r in res["rows"] if r["nll"]["kind"] != "n/a")
    assert all(r["metrics"]["energy"] > 0 for r in res["rows"])
    table = (out / "compare.md").read_text()
    lines = {line.split("|")[1].strip(): line for line in table.splitlines() if line.startswith("| ")}
    assert "(exact)" in lines["made"] and "(bound, K=8)" in lines["vae"] and "| n/a |" in lines["gan"] and "20 + 10 prior" in lines["vq"]
    assert len(json.loads((out / "compare.json").read_text())["rows"]) == 5
    assert (out / "samples.png").stat().st_size > 10_000


RECIPES = Path(__file__).resolve().parents[1] / "configs"


@pytest.mark.parametrize("name", ["compare-toys", "compare-digits"])
def test_compare_recipes_cover_the_families_and_build(name):
    cfg = load_compare_config(RECIPES / f"{name}.yaml")
    if cfg.data.name != "digits":
        cfg = apply_overrides(cfg, ["data.n_train=500", "data.n_eval=50"])
    data = load_data(cfg.data)
    families = {to_dict(e)["model"]["family"] for e in cfg.entries}
    expected = set(variant_tags("model")) - {"text"} - ({"pixelcnn"} if data.kind == "points" else set())
    assert families == expected
    assert all(e.width is not None for e in cfg.entries)  # every entry is matched to the budget
    for entry in cfg.entries:
        exp = entry_config(cfg, entry)
        if hasattr(exp.model, "perceptual_weight") and data.kind == "images":
            exp = apply_overrides(exp, ["model.perceptual_weight=0"])  # compare points it at its own classifier
        if data.kind == "points":  # cheap to build: check the budget is met
            exp, n = match_width(exp, data, entry.width, cfg.params, multiple=entry.width_multiple)
            assert abs(n - cfg.params) < 0.1 * cfg.params, entry.label
        model = build_model(exp, data)
        phase = model.phases()[0].name if callable(getattr(model, "phases", None)) else "main"
        terms = model.losses(tuple(t[:4] for t in data.train), phase=phase, generator=torch.Generator().manual_seed(0))
        assert all(v.shape == (4,) and torch.isfinite(v).all() for v in terms.values()), entry.label
    prior_steps = {e.label: e.model.prior.steps for e in cfg.entries if hasattr(e.model, "prior")}
    assert prior_steps and all(s == cfg.train.steps for s in prior_steps.values())  # VQ: a second stage as long as the first


def test_training_overlap_and_copies_are_detected():
    from genspace.compare import copy_fraction, trained_fraction

    x = _digits_bundle(200).heldout
    train = x[:150]
    assert trained_fraction(x[100:200], train) == 0.5 and trained_fraction(torch.randn(10, 2), torch.randn(50, 2)) == 0.0
    near = x[:100] + 0.4 * (2.0 / 16) * (2 * torch.rand(x[:100].shape, generator=torch.Generator().manual_seed(0)) - 1)
    assert copy_fraction(near, train, 17) == 1.0  # within half a level of a training image: a copy
    assert copy_fraction(x[150:], train, 17) == 0.0 and copy_fraction(torch.zeros(4, 1, 8, 8), train, 17) == 0.0
