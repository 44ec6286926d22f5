"""The CLI end to end on a tiny run: train, sample, eval, demo, and one-line errors."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from genspace.cli import main
from genspace.sampling import methods

TINY = """\
name: tiny
data: {name: 8gaussians, n_train: 2000, n_eval: 300}
model:
  family: diffusion
  process: flow
  parameterization: velocity
  loss: flow
  net: {hidden: 32, depth: 1, embed_dim: 16}
train: {steps: 40, batch_size: 128, lr: 2.0e-3, log_every: 20, ckpt_every: 20}
sample: {method: euler, nfe: 8, n: 300}
"""


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    root = tmp_path_factory.mktemp("cli")
    cfg = root / "tiny.yaml"
    cfg.write_text(TINY)
    out = root / "run"
    assert main(["train", str(cfg), "--out", str(out), "--no-progress", "--train.seed=3"]) == 0
    return cfg, out


def _error_line(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    assert err[0].startswith("genspace: error: ")
    return err[0]


def test_train_writes_checkpoints_logs_and_config(run):
    cfg, out = run
    ckpts = sorted(out.glob("ckpt-*"))
    assert [c.name for c in ckpts] == ["ckpt-00000020", "ckpt-00000040"]
    saved = json.loads((ckpts[-1] / "config.json").read_text())
    assert saved["train"]["seed"] == 3 and saved["model"]["family"] == "diffusion"
    assert (ckpts[-1] / "model.safetensors").is_file() and (ckpts[-1] / "ema.safetensors").is_file()
    rows = (out / "metrics.csv").read_text().splitlines()
    assert rows[0].startswith("step,") and len(rows) >= 3


def test_sample_writes_numpy_and_figure_and_is_seeded(run, tmp_path):
    _, out = run
    a, b = tmp_path / "a", tmp_path / "b"
    assert main(["sample", str(out), "--n", "50", "--seed", "7", "--method", "heun", "--nfe", "9", "--out", str(a)]) == 0
    assert main(["sample", str(out), "--n", "20", "--seed", "7", "--method", "heun", "--nfe", "9", "--out", str(b)]) == 0
    xa, xb = np.load(a / "samples.npy"), np.load(b / "samples.npy")
    assert xa.shape == (50, 2) and np.isfinite(xa).all()
    np.testing.assert_array_equal(xa[:20], xb)  # one seed per sample: independent of n
    assert (a / "samples.png").stat().st_size > 10_000


def test_eval_prints_table_and_json(run, tmp_path, capsys):
    _, out = run
    js = tmp_path / "eval.json"
    assert main(["eval", str(out), "--n", "300", "--json", str(js)]) == 0
    text = capsys.readouterr().out
    assert "| energy |" in text and "floor" in text
    metrics = json.loads(js.read_text())["metrics"]
    for key in ("energy", "energy_floor", "mmd", "mmd_floor", "swd", "swd_floor", "logp", "logp_data"):
        assert np.isfinite(metrics[key]), key
    assert metrics["energy_floor"] > 0


def test_from_pretrained_loads_ema_weights_exactly(run):
    from genspace.experiment import from_pretrained
    from genspace.train import latest_checkpoint, load_checkpoint

    _, out = run
    model, cfg = from_pretrained(out)
    ckpt = load_checkpoint(latest_checkpoint(out))
    for k, v in model.state_dict().items():
        assert torch.equal(v, ckpt.ema_state[k]), k
    raw, _ = from_pretrained(out, ema=False)
    assert any(not torch.equal(raw.state_dict()[k], v) for k, v in model.state_dict().items())
    assert cfg.name == "tiny"


@pytest.mark.parametrize(
    "argv, fragment",
    [
        (["train", "missing.yaml"], "missing.yaml"),
        (["sample", "no/such/run"], "no/such/run"),
        (["eval", "no/such/run"], "no/such/run"),
    ],
)
def test_missing_files_are_one_line_errors(argv, fragment, capsys):
    assert main(argv) == 2
    assert fragment in _error_line(capsys)


def test_bad_override_key_names_the_key(run, capsys):
    cfg, _ = run
    assert main(["train", str(cfg), "--out", "unused", "--train.lrr=3"]) == 2
    line = _error_line(capsys)
    assert "lrr" in line and "lr" in line


def test_bad_values_are_one_line_errors(run, capsys):
    cfg, out = run
    assert main(["sample", str(out), "--method", "nope"]) == 2
    line = _error_line(capsys)
    assert "nope" in line and "heun" in line
    assert main(["sample", str(out), "--nfe", "0"]) == 2
    assert "--nfe" in _error_line(capsys)
    for command in ("sample", "eval"):  # text-model options on a point-data run
        assert main([command, str(out), "--order", "dilated"]) == 2
        assert "--order are for text models" in _error_line(capsys)
    assert main(["train", str(cfg), "--out", str(out)]) == 2  # existing run without --resume
    assert "--resume" in _error_line(capsys)
    assert main(["train", str(cfg), "--out", "x", "--model.process=nope"]) == 2
    line = _error_line(capsys)
    assert "nope" in line and "edm" in line


def test_bad_yaml_is_one_line_error(tmp_path, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text("train: [1, 2\n")
    assert main(["train", str(bad), "--out", str(tmp_path / "o")]) == 2
    assert "bad.yaml" in _error_line(capsys)


def test_methods_lists_every_sampler(capsys):
    assert main(["methods"]) == 0
    text = capsys.readouterr().out
    for name, info in methods().items():
        assert name in text
    assert "stochastic" in text and "deterministic" in text
    from genspace.discrete.samplers import token_method_names

    for name in token_method_names() + ["block", "block-first-hitting", "block-top-k", "ar"]:
        assert f"  {name} " in text


def test_entry_point_exit_code_and_help():
    ok = subprocess.run([sys.executable, "-m", "genspace.cli", "--help"], capture_output=True, text=True)
    assert ok.returncode == 0 and "examples:" in ok.stdout and "genspace demo" in ok.stdout
    bad = subprocess.run([sys.executable, "-m", "genspace.cli", "sample", "/no/such"], capture_output=True, text=True)
    assert bad.returncode == 2
    assert bad.stderr.strip().startswith("genspace: error:") and len(bad.stderr.strip().splitlines()) == 1


def test_demo_runs_end_to_end_small(tmp_path, capsys):
    out = tmp_path / "demo"
    assert main(["demo", "--out", str(out), "--steps", "30", "--no-progress", "--sample.n=300", "--data.n_eval=300", "--model.net.hidden=32"]) == 0
    text = capsys.readouterr().out
    assert "energy distance / floor" in text
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["energy_floor"] > 0 and metrics["train_seconds"] > 0
    assert (out / "figures" / "samples.png").is_file() and (out / "figures" / "loss.png").is_file()
