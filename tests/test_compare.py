"""genspace compare: equal parameter budgets by a width search, one table, one figure, labelled NLLs."""

from __future__ import annotations

import json

import pytest

from genspace.cli import main
from genspace.compare import CompareConfig, CompareEntry, entry_config, load_compare_config, match_width, param_count
from genspace.config import apply_overrides
from genspace.experiment import build_model, load_data

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
