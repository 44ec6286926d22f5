"""Every recipe in configs/ parses into a typed ExperimentConfig; those whose data ship with a
dependency (2-D toys, scikit-learn's digits) also build their model and compute a loss. The
``compare-*.yaml`` recipes are CompareConfigs, checked in tests/test_compare.py."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from genspace.experiment import build_model, load_config, load_data

CONFIGS = sorted(p for p in (Path(__file__).resolve().parents[1] / "configs").glob("*.yaml") if not p.name.startswith("compare-"))
NEEDS_FILES = {"mnist", "fashion-mnist", "cifar10", "folder", "numpy", "text", "hf"}


def test_there_are_recipes():
    assert len(CONFIGS) >= 10


@pytest.mark.parametrize("path", CONFIGS, ids=[p.stem for p in CONFIGS])
def test_recipe_parses_and_builds(path):
    cfg = load_config(path)
    assert cfg.name == path.stem  # the run's label is the recipe's file name
    if cfg.data.name in NEEDS_FILES:
        return  # local files the user provides: parsing is what can be checked here
    cfg.data.n_train, cfg.data.n_eval = 64, 16
    data = load_data(cfg.data)
    model = build_model(cfg, data)
    batch = tuple(t[:4] for t in data.train)
    terms = model.losses(batch, generator=torch.Generator().manual_seed(0))
    assert all(v.shape == (4,) and torch.isfinite(v).all() for v in terms.values())
