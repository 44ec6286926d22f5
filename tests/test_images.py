"""Images end to end on scikit-learn's 8×8 digits (issue 4, "What must hold"), at CI size.

- A U-Net and a DiT both train on digits: the loss falls, and the Fréchet distance in the feature
  space of the trained digit classifier falls from an early checkpoint to the end of training.
- Class-conditional sampling with classifier-free guidance w = 2 (Ho & Salimans 2022): the
  classifier recognises the asked class far above chance (≥ 30 %, chance 10 %), and guidance
  raises that accuracy over w = 1 on the same seeds.
- Bits/dim through the probability-flow ODE: the exact divergence and the Hutchinson estimate
  (unbiased for the trace) agree within the Hutchinson error bars on the same dequantized images;
  the trained model beats the uniform density, which scores exactly log2(17) bits/dim.
- The CLI: ``genspace sample RUN --class 3 --guidance 2.0 --png --n 16`` writes 16 PNGs that
  round-trip the saved samples; ``genspace eval RUN --bpd 8`` prints fd and bits/dim.

One small class-conditional EDM U-Net run (200 steps) serves every test but the DiT one; the
networks are shrunk by config overrides, not by special code paths.
"""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path

import numpy as np
import pytest
import torch

import genspace.experiment as experiment
from genspace.cli import main
from genspace.experiment import (
    bits_per_dim_of,
    evaluate_samples,
    from_pretrained,
    image_classifier,
    load_config,
    sample_model,
    train,
)
from genspace.train import read_csv

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
DIGIT_LEVELS = 17  # scikit-learn's digits hold grey levels 0..16
N_EVAL = 300  # generated digits per Fréchet distance / class accuracy
SHORT_RUN = (
    "train.batch_size=64",
    "train.warmup_steps=40",
    "train.log_every=20",
    "train.keep_last=null",  # keep the early checkpoint
    "sample.method=heun",
    "sample.nfe=19",  # 10 Heun steps
    "sample.n=200",  # the end-of-training evaluation inside train()
    "sample.batch_size=1024",
)
UNET = (
    "model.net.base_channels=16",
    "train.steps=200",
    "train.ckpt_every=50",
    "train.lr=2e-3",
)
# adaLN-Zero starts every DiT block as the identity and the conditioning vector is small at
# initialisation, so the DiT needs a larger step size than the U-Net to learn in a few hundred steps.
DIT = (
    "model.net.kind=dit",
    "model.net.hidden=64",
    "model.net.depth=2",
    "train.steps=400",
    "train.ckpt_every=100",
    "train.lr=4e-3",
)


def _run(config_path, overrides, out):
    cfg = load_config(config_path, SHORT_RUN + overrides)
    result = train(cfg, out, progress=False)
    return cfg, result


@pytest.fixture(scope="module")
def unet_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("images") / "unet"
    cfg, result = _run(CONFIGS / "digits-edm-cond.yaml", UNET, out)
    return cfg, out, result


@pytest.fixture(scope="module")
def classifier(unet_run):
    # cached inside the run folder, where `genspace eval RUN` looks for it (no second training)
    cfg, out, _ = unet_run
    return image_classifier(cfg.data, out / "classifier")


def _balanced_labels(n: int, n_classes: int = 10) -> torch.Tensor:
    return torch.arange(n) % n_classes


def _metrics(model, cfg, data, classifier, *, guidance: float = 1.0):
    """FD & co. of N_EVAL class-conditional samples asking each class in turn (p(x) balanced)."""
    labels = _balanced_labels(N_EVAL)
    scfg = dataclasses.replace(cfg.sample, guidance=guidance)
    x = sample_model(model, data.shape, scfg, n=N_EVAL, class_label=labels)
    assert x.shape == (N_EVAL, *data.shape) and torch.isfinite(x).all()
    return evaluate_samples(x, data, classifier=classifier, labels=labels)


def _check_training(cfg, out, result, classifier):
    rows = [r for r in read_csv(out / "metrics.csv") if "main/loss" in r]
    first, last = rows[0]["main/loss"], rows[-1]["main/loss"]
    assert last < 0.6 * first, (first, last)
    ckpts = sorted(out.glob("ckpt-*"))
    assert len(ckpts) == cfg.train.steps // cfg.train.ckpt_every
    data = result["data"]
    early, _ = from_pretrained(ckpts[0])
    end, _ = from_pretrained(ckpts[-1])
    fd_early = _metrics(early, cfg, data, classifier)["fd"]
    fd_end = _metrics(end, cfg, data, classifier)
    # the Fréchet distance falls as training goes on, and by a wide margin
    assert fd_end["fd"] < 0.75 * fd_early, (fd_early, fd_end["fd"])
    assert fd_end["fd_floor"] < fd_end["fd"]  # two real halves are closer than any model


def test_unet_trains_on_digits(unet_run, classifier):
    cfg, out, result = unet_run
    assert type(result["model"].net).__name__ == "UNet" and result["model"].n_classes == 10
    _check_training(cfg, out, result, classifier)


def test_dit_trains_on_digits(tmp_path, classifier):
    cfg, result = _run(CONFIGS / "digits-edm-cond.yaml", DIT, tmp_path / "dit")
    assert type(result["model"].net).__name__ == "DiT"
    _check_training(cfg, tmp_path / "dit", result, classifier)


def test_guided_class_accuracy_far_above_chance(unet_run, classifier):
    cfg, _, result = unet_run
    model, data = result["model"], result["data"]
    plain = _metrics(model, cfg, data, classifier, guidance=1.0)["class_accuracy"]
    guided = _metrics(model, cfg, data, classifier, guidance=2.0)["class_accuracy"]
    assert guided >= 0.3, (plain, guided)  # chance: 0.1
    # guidance sharpens p(class | x): same seeds, the asked class is recognised at least as often
    assert guided >= plain, (plain, guided)


def test_bits_per_dim_exact_agrees_with_hutchinson(unet_run):
    _, _, result = unet_run
    model, data = result["model"], result["data"]
    # same images, same dequantization noise (seeded), loose ODE tolerance shared by both
    options = dict(n=4, seed=0, rtol=2e-2, atol=2e-2)
    exact = bits_per_dim_of(model, data, divergence="exact", **options)
    hutch = bits_per_dim_of(model, data, divergence="hutchinson", n_probes=16, **options)
    assert exact["bpd_estimator"] == "exact" and hutch["bpd_estimator"].startswith("hutchinson")
    assert hutch["bpd_se"] > 0
    # Hutchinson is unbiased for the divergence: z-test of the means with its standard error
    # (the exact estimate's spread is image-to-image only, the same images for both)
    z = (hutch["bpd"] - exact["bpd"]) / hutch["bpd_se"]
    assert abs(z) < 4.0, (exact, hutch)
    # a density uniform on the data interval scores exactly log2(17) bits/dim; the model is better,
    # and a discrete probability is at most 1 (bits/dim >= 0)
    assert 0.0 < exact["bpd"] < math.log2(DIGIT_LEVELS), exact
    assert next(model.parameters()).dtype == torch.float32  # restored after the float64 solve


def test_cli_sample_class_png(unet_run, classifier, tmp_path):
    from PIL import Image

    _, out, _ = unet_run
    dest = tmp_path / "samples"
    assert main(["sample", str(out), "--class", "3", "--guidance", "2.0", "--png", "--n", "16", "--out", str(dest)]) == 0
    pngs = sorted((dest / "png").glob("*.png"))
    assert [p.name for p in pngs] == [f"{i:06d}.png" for i in range(16)]
    images = np.stack([np.asarray(Image.open(p)) for p in pngs])
    assert images.shape == (16, 8, 8) and images.dtype == np.uint8
    # the PNGs are the saved samples, mapped [-1, 1] -> {0..255}
    samples = np.load(dest / "samples.npy")
    assert samples.shape == (16, 1, 8, 8)
    expected = np.round((np.clip(samples[:, 0], -1, 1) + 1) * 127.5)
    assert np.abs(images.astype(np.float64) - expected).max() <= 1.0
    # and they show the asked digit
    asked = (classifier.predict(torch.from_numpy(samples).float()) == 3).float().mean()
    assert asked >= 0.3, asked


def test_cli_eval_prints_fd_and_bits_per_dim(unet_run, classifier, capsys, monkeypatch):
    _, out, _ = unet_run
    calls = []

    # The CLI's ODE tolerance (1e-5) costs ~10x the NFE of 1e-2; the wiring is what is tested here.
    def fast_bpd(*args, **kwargs):
        calls.append(kwargs)
        return bits_per_dim_of(*args, **{**kwargs, "rtol": 1e-2, "atol": 1e-2})

    monkeypatch.setattr(experiment, "bits_per_dim_of", fast_bpd)
    assert main(["eval", str(out), "--bpd", "8", "--n", "100"]) == 0
    text = capsys.readouterr().out
    assert calls and calls[0]["n"] == 8 and calls[0]["divergence"] == "hutchinson"
    lines = {line.split("|")[1].strip(): line for line in text.splitlines() if line.startswith("| ")}
    assert "fd" in lines and "class_accuracy" in lines, text
    bpd_line = next(line for key, line in lines.items() if key.startswith("bits/dim"))
    value = float(bpd_line.split("|")[2].split("±")[0])
    assert 0.0 < value < math.log2(DIGIT_LEVELS), bpd_line


def test_cli_eval_fid_says_what_is_missing(unet_run, capsys, monkeypatch):
    import genspace.metrics.image_metrics as im

    _, out, _ = unet_run
    monkeypatch.setattr(im, "_package_available", lambda module: False)  # neither backend installed
    assert main(["eval", str(out), "--fid", "--n", "20"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("genspace: error:") and err.count("\n") == 1  # one line, before any sampling
    for needed in ("torch-fidelity", "pip install torch-fidelity", "clean-fid", "never downloads"):
        assert needed in err, err
