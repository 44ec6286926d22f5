"""The benchmark scripts are not run by the suite (they take minutes to hours), but each must
at least compile and parse its command line, so that a broken script is caught before a run."""

from __future__ import annotations

import importlib.util
import py_compile
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[1] / "benchmarks"
SCRIPTS = sorted(BENCH.glob("*.py"))


def test_there_are_scripts():
    assert any(p.name == "bench_text.py" for p in SCRIPTS)


@pytest.mark.parametrize("path", SCRIPTS, ids=lambda p: p.name)
def test_script_compiles(path, tmp_path):
    py_compile.compile(str(path), cfile=str(tmp_path / (path.stem + ".pyc")), doraise=True)


def _load(name):
    """The benchmark script ``benchmarks/<name>.py`` as a module (its folder on sys.path while it loads)."""
    sys.path.insert(0, str(BENCH))
    try:
        spec = importlib.util.spec_from_file_location(f"{name}_under_test", BENCH / f"{name}.py")
        mod = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(mod)
    finally:
        sys.path.remove(str(BENCH))
    return mod


def test_bench_text_parses_its_arguments():
    mod = _load("bench_text")
    args = mod.parse_args(["--only-speed", "--skip-speed", "--mdlm-table", "--block-table", "--models-dir", "M"])
    assert args.mdlm_table and args.block_table and args.models_dir == "M"
    assert mod._speed_label("top-k", 4, "dilated") == "top-k dilated 4"
    assert mod._speed_label("block-top-k", 4) == "block top-k random 4/block"
    # Table B sweeps every unmasking order of the library
    from genspace.discrete.samplers import ORDERS

    labels = {r["label"] for r in mod.markov_grid("mdlm", False, 64)}
    assert {f"top-k {order}" for order in ORDERS} <= labels
    assert "block top-k dilated" in {r["label"] for r in mod.markov_grid("bd3", False, 64)}

def test_bench_copy_parses_its_arguments_and_states_the_exact_denoiser_law():
    mod = _load("bench_copy")
    args = mod.parse_args(["--length", "128", "--models-dir", "M"])
    assert args.length == 128 and args.models_dir == "M" and args.steps == 2000
    with pytest.raises(ValueError, match="--block 8 must divide"):
        mod.parse_args(["--length", "12"])
    with pytest.raises(ValueError, match="even"):
        mod.parse_args(["--length", "63"])
    length, k = 64, 8
    for steps in (1, 7, 8, 48, 64, 100):  # the library's top-k counts reveal every token
        counts = mod._counts(steps, length)
        assert sum(counts) == length and min(counts) >= 1 and len(counts) == min(steps, length)
    assert mod.predicted_valid("mdlm", "ancestral", 16, "", length, k, 8) == pytest.approx((1 - (1 - 1 / k) / 16) ** 32)
    assert mod.predicted_valid("mdlm", "top-k", 8, "dilated", length, k, 8) == pytest.approx(k ** -32.0)
    assert mod.predicted_valid("mdlm", "top-k", 64, "dilated", length, k, 8) == 1.0
    assert mod.predicted_valid("mdlm", "top-k", 64, "random", length, k, 8) == 1.0
    # two tokens per step: a pair shares a step with probability 1/63, so P(valid) ≈ (1 − (7/8)/63)^32
    assert mod.predicted_valid("mdlm", "top-k", 32, "random", length, k, 8) == pytest.approx((1 - (7 / 8) / 63) ** 32, abs=0.02)
    assert mod.predicted_valid("bd3", "block-top-k", 1, "random", length, k, 8) == 1.0
    labels = {(m, meth) for m, meth, *_ in mod.settings(False, length)}
    assert {("mdlm", "top-k"), ("mdlm", "ancestral"), ("bd3", "block-top-k"), ("ar", "ar")} <= labels


def test_bench_text_speed_parses_its_arguments_and_sweeps_every_sampler():
    mod = _load("bench_text_speed")
    args = mod.parse_args(["--prepare", "bd3,judge", "--models-dir", "M"])
    assert args.prepare == ("bd3", "judge") and args.text_steps == 12000 and args.judge_dim == 128
    with pytest.raises(ValueError, match="--prepare needs --models-dir"):
        mod.parse_args(["--prepare", "mdlm"])
    with pytest.raises(ValueError, match="subset of mdlm,bd3,ar,judge"):
        mod.parse_args(["--prepare", "sedd", "--models-dir", "M"])
    with pytest.raises(ValueError, match="--block 8 must divide --text-length 100"):
        mod.parse_args(["--text-length", "100"])
    rows = mod.settings(False, 128, 8)
    kinds = {(m, meth, o.get("order")) for m, meth, _, o in rows}
    assert {("mdlm", "ancestral", None), ("mdlm", "first-hitting", None), ("mdlm", "top-k", "random"), ("mdlm", "top-k", "dilated"),
            ("bd3", "block", None), ("bd3", "block-first-hitting", None), ("bd3", "block-top-k", "random"), ("bd3", "block-top-k", "dilated"),
            ("ar", "ar", None)} == kinds  # no confidence order competes
    # the grids reach one token per call: L steps for MDLM top-k, a block's size for BD3 top-k
    assert max(s for m, meth, s, _ in rows if (m, meth) == ("mdlm", "top-k")) == 128
    assert max(s for m, meth, s, _ in rows if (m, meth) == ("bd3", "block-top-k")) == 8
