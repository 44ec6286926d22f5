"""Tests for genspace.config: typed dataclass trees from dicts, YAML and dotted overrides."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, Optional, Union

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from genspace.config import (
    apply_overrides,
    dump_yaml,
    from_dict,
    get_variant,
    load_yaml,
    register_variant,
    to_dict,
    variant_field,
    variant_tags,
)


# ---------------------------------------------------------------------- a test schema
@dataclass(frozen=True)
class NetCfg:
    hidden: int = 64  # width of each layer
    depth: int = 3
    act: Literal["relu", "silu"] = "silu"
    widths: tuple[int, ...] = (1, 2)


@dataclass
class OptCfg:
    beta1: float = 0.9
    betas: tuple[float, float] = (0.9, 0.999)


@dataclass
class TrainCfg:
    lr: float = 1e-3
    steps: int = 100
    amp: bool = False
    name: str = "run"
    milestones: list[int] = field(default_factory=list)
    ema: Optional[float] = None
    out: Optional[Path] = None
    weights: dict[str, float] = field(default_factory=dict)
    batch: Union[int, str] = 32

    def __post_init__(self):
        if self.steps < 0:
            raise ValueError(f"steps must be >= 0, got {self.steps}")


@register_variant("test_model", "diffusion")
@dataclass
class DiffusionCfg:
    net: NetCfg = field(default_factory=NetCfg)
    process: Literal["vp", "ve", "edm"] = "edm"


@register_variant("test_model", "flow")
@dataclass
class FlowCfg:
    family: Literal["flow"] = "flow"  # a variant may declare its own tag field
    net: NetCfg = field(default_factory=NetCfg)
    sigma_min: float = 0.0


@register_variant("test_guidance", "cfg", tag_key="name")
@dataclass
class CfgGuidance:
    scale: float = 1.5


@dataclass
class Exp:
    train: TrainCfg = field(default_factory=TrainCfg)
    model: Union[DiffusionCfg, FlowCfg] = variant_field("test_model", default="diffusion")
    guidance: Optional[CfgGuidance] = variant_field("test_guidance", default=None)
    opt: Optional[OptCfg] = None
    seed: int = 0


@dataclass
class Required:
    size: int


# ---------------------------------------------------------------------- from_dict / to_dict
def test_defaults_round_trip_and_tags_come_first():
    cfg = Exp()
    assert isinstance(cfg.model, DiffusionCfg) and cfg.guidance is None
    d = to_dict(cfg)
    assert list(d["model"])[0] == "family" and d["model"]["family"] == "diffusion"
    assert d["model"]["net"]["widths"] == [1, 2]  # tuples become lists
    assert from_dict(Exp, d) == cfg
    assert from_dict(Exp, {}) == cfg


def test_nested_round_trip_with_variants():
    data = {
        "train": {"lr": "3e-4", "steps": "1e3", "amp": "TRUE", "milestones": [10, 20.0], "ema": 1, "out": "runs/x",
                  "weights": {"mse": 1, "kl": "0.5"}},
        "model": {"family": "flow", "sigma_min": 1e-4, "net": {"hidden": 128, "act": "relu", "widths": [4, 5, 6]}},
        "guidance": {"name": "cfg", "scale": 3},
        "opt": {"betas": [0.5, 0.99]},
        "seed": 7,
    }
    cfg = from_dict(Exp, data)
    assert cfg.train.lr == 3e-4 and type(cfg.train.lr) is float
    assert cfg.train.steps == 1000 and type(cfg.train.steps) is int
    assert cfg.train.amp is True
    assert cfg.train.milestones == [10, 20] and all(type(m) is int for m in cfg.train.milestones)
    assert cfg.train.ema == 1.0 and type(cfg.train.ema) is float
    assert cfg.train.out == Path("runs/x")
    assert cfg.train.weights == {"mse": 1.0, "kl": 0.5}
    assert isinstance(cfg.model, FlowCfg) and cfg.model.sigma_min == 1e-4
    assert cfg.model.net == NetCfg(hidden=128, act="relu", widths=(4, 5, 6))
    assert cfg.guidance == CfgGuidance(scale=3.0) and cfg.opt == OptCfg(betas=(0.5, 0.99))
    d = to_dict(cfg)
    assert d["guidance"] == {"name": "cfg", "scale": 3.0} and d["train"]["out"] == "runs/x"
    assert from_dict(Exp, d) == cfg
    assert from_dict(Exp, yaml.safe_load(dump_yaml(cfg))) == cfg


def test_variant_shorthands_and_defaults():
    assert isinstance(from_dict(Exp, {"model": "flow"}).model, FlowCfg)
    assert from_dict(Exp, {"model": {"process": "vp"}}).model == DiffusionCfg(process="vp")  # default tag
    assert from_dict(Exp, {"guidance": "cfg"}).guidance == CfgGuidance()
    assert from_dict(Exp, {"guidance": None}).guidance is None
    assert variant_tags("test_model") == ("diffusion", "flow") and get_variant("test_model", "flow") is FlowCfg


@pytest.mark.parametrize(
    "data, pattern",
    [
        ({"trian": {}}, r"unknown key 'trian' \(did you mean 'train'\?\); valid keys: train, model, guidance, opt, seed"),
        ({"train": {"lrr": 1}}, r"unknown key 'train.lrr' \(did you mean 'lr'\?\); valid keys in 'train': lr, steps"),
        ({"model": {"net": {"hiden": 3}}}, r"'model.net.hiden' \(did you mean 'hidden'\?\)"),
        ({"model": {"net": {"act": "gelu"}}}, r"'model.net.act' must be one of 'relu', 'silu', got 'gelu'"),
        ({"model": {"process": "vpp"}}, r"'model.process' must be one of 'vp', 've', 'edm'.*did you mean 'vp'"),
        ({"model": {"family": "gan"}}, r"'model.family'.*unknown test_model 'gan'; choices: diffusion, flow"),
        ({"model": {"family": "diffusion", "sigma_min": 0.1}}, r"unknown key 'model.sigma_min'"),
        ({"model": 3}, r"'model' must be a mapping with a 'family' key"),
        ({"model": None}, r"'model' cannot be null"),
        ({"guidance": {"scale": 2}}, r"'guidance' needs the key 'name'"),
        ({"train": {"steps": 2.5}}, r"'train.steps' expects an integer, got float 2.5"),
        ({"train": {"steps": True}}, r"'train.steps' expects an integer"),
        ({"train": {"lr": "fast"}}, r"'train.lr' expects a number"),
        ({"train": {"amp": "maybe"}}, r"'train.amp' expects a boolean"),
        ({"train": {"amp": 1}}, r"'train.amp' expects a boolean"),
        ({"train": {"name": 5}}, r"'train.name' expects a string"),
        ({"train": {"milestones": "abc"}}, r"'train.milestones' expects a list"),
        ({"train": {"milestones": [1, "x"]}}, r"'train.milestones\[1\]' expects an integer"),
        ({"train": {"weights": {"mse": "a"}}}, r"'train.weights.mse' expects a number"),
        ({"train": {"steps": -1}}, r"'train': steps must be >= 0"),
        ({"train": []}, r"'train' must be a mapping of TrainCfg fields"),
        ({"opt": {"betas": [0.9]}}, r"'opt.betas' expects 2 items"),
        ({1: 2}, r"keys must be strings"),
    ],
)
def test_bad_data_raises_value_error_naming_the_key(data, pattern):
    with pytest.raises(ValueError, match=pattern):
        from_dict(Exp, data)


def test_union_prefers_the_exact_type_and_required_keys():
    assert from_dict(TrainCfg, {"batch": "auto"}).batch == "auto"
    assert from_dict(TrainCfg, {"batch": 64}).batch == 64
    assert from_dict(TrainCfg, {"batch": "64"}).batch == "64"  # already a str member
    with pytest.raises(ValueError, match="missing required key 'size'"):
        from_dict(Required, {})
    assert from_dict(Required, {"size": "3"}) == Required(3)
    with pytest.raises(ValueError, match="dataclass"):
        from_dict(dict, {})


def test_register_variant_conflicts():
    @dataclass
    class Other:
        x: int = 0

    register_variant("test_model", "flow", FlowCfg)  # re-registering the same pair is a no-op
    with pytest.raises(ValueError, match="already registered to FlowCfg"):
        register_variant("test_model", "flow", Other)
    with pytest.raises(ValueError, match="already registered under the tag 'flow'"):
        register_variant("test_model", "flow2", FlowCfg)
    with pytest.raises(ValueError, match="uses the tag key 'family'"):
        register_variant("test_model", "other", Other, tag_key="kind")
    with pytest.raises(ValueError, match="not a dataclass"):
        register_variant("test_model", "other", int)
    with pytest.raises(ValueError, match="no variants are registered"):
        get_variant("nothing_here", "x")


# ---------------------------------------------------------------------- YAML
def test_yaml_round_trip_and_errors(tmp_path):
    cfg = from_dict(Exp, {"model": {"family": "flow", "net": {"hidden": 32}}, "train": {"lr": 2e-4, "name": "yes"}})
    path = tmp_path / "exp.yaml"
    text = dump_yaml(cfg, path)
    assert path.read_text() == text and text.index("train:") < text.index("model:")
    assert load_yaml(path, Exp) == cfg
    (tmp_path / "empty.yaml").write_text("")
    assert load_yaml(tmp_path / "empty.yaml", Exp) == Exp()
    # YAML 1.1 reads 3e-4 as a string: float fields accept it
    (tmp_path / "lr.yaml").write_text("train:\n  lr: 3e-4\n  steps: 1e3\n")
    assert load_yaml(tmp_path / "lr.yaml", Exp).train.lr == 3e-4
    with pytest.raises(FileNotFoundError, match="missing.yaml"):
        load_yaml(tmp_path / "missing.yaml", Exp)
    (tmp_path / "bad.yaml").write_text("train: {lr: [1, 2\n")
    with pytest.raises(ValueError, match="bad.yaml.*invalid YAML"):
        load_yaml(tmp_path / "bad.yaml", Exp)
    (tmp_path / "list.yaml").write_text("- 1\n- 2\n")
    with pytest.raises(ValueError, match="list.yaml.*top level must be a mapping"):
        load_yaml(tmp_path / "list.yaml", Exp)
    (tmp_path / "typo.yaml").write_text("train:\n  stesp: 3\n")
    with pytest.raises(ValueError, match=r"typo.yaml.*'train.stesp' \(did you mean 'steps'\?\)"):
        load_yaml(tmp_path / "typo.yaml", Exp)
    (tmp_path / "evil.yaml").write_text("train: !!python/object/apply:os.system ['true']\n")
    with pytest.raises(ValueError, match="invalid YAML"):
        load_yaml(tmp_path / "evil.yaml", Exp)


# ---------------------------------------------------------------------- overrides
def test_overrides_are_typed_and_return_a_new_tree():
    cfg = Exp()
    before = to_dict(cfg)
    new = apply_overrides(cfg, ["train.lr=3e-4", "model.net.hidden=128", "train.amp=true", "train.milestones=[1, 2]",
                                "train.name=2024", "train.ema=null", "seed=5", "model.net.widths=[3]"])
    assert to_dict(cfg) == before  # the input is untouched
    assert new.train.lr == 3e-4 and type(new.train.lr) is float
    assert new.model.net.hidden == 128 and type(new.model.net.hidden) is int
    assert new.train.amp is True and new.train.milestones == [1, 2] and new.train.name == "2024"
    assert new.train.ema is None and new.seed == 5 and new.model.net.widths == (3,)
    assert new.model.net.depth == cfg.model.net.depth  # siblings kept
    assert new.model is not cfg.model and new.train is not cfg.train


def test_override_variant_switch_in_any_order():
    a = apply_overrides(Exp(), ["model.sigma_min=0.1", "model.family=flow", "model.net.depth=5"])
    b = apply_overrides(Exp(), ["model.family=flow", "model.net.depth=5", "model.sigma_min=0.1"])
    assert a == b and isinstance(a.model, FlowCfg) and a.model.sigma_min == 0.1 and a.model.net.depth == 5
    # switching to the current tag keeps the section
    c = apply_overrides(Exp(), ["model.net.hidden=7", "model.family=diffusion"])
    assert isinstance(c.model, DiffusionCfg) and c.model.net.hidden == 7
    # a whole section by tag or mapping, then refined
    d = apply_overrides(Exp(), ["model.net.hidden=9", "model={family: flow, sigma_min: 0.2}"])
    assert d.model == FlowCfg(sigma_min=0.2, net=NetCfg(hidden=9))
    # a mapping without the tag stays within the current variant
    assert apply_overrides(a, ["model={sigma_min: 0.3}"]).model == FlowCfg(sigma_min=0.3)
    e = apply_overrides(Exp(), ["guidance=cfg", "guidance.scale=4"])
    assert e.guidance == CfgGuidance(scale=4.0)
    f = apply_overrides(Exp(), ["guidance.name=cfg"])
    assert f.guidance == CfgGuidance()
    # an optional plain section starts from its defaults
    g = apply_overrides(Exp(), ["opt.beta1=0.5"])
    assert g.opt == OptCfg(beta1=0.5)
    # same key twice: the last one wins
    assert apply_overrides(Exp(), ["seed=1", "seed=2"]).seed == 2


@pytest.mark.parametrize(
    "override, pattern",
    [
        ("train.lrr=1", r"override 'train.lrr=1': unknown key 'train.lrr' \(did you mean 'lr'\?\); valid keys in 'train'"),
        ("trian.lr=1", r"unknown key 'trian' \(did you mean 'train'\?\)"),
        ("train.steps=abc", r"override 'train.steps=abc': 'train.steps' expects an integer"),
        ("model.net.act=gelu", r"'model.net.act' must be one of 'relu', 'silu'"),
        ("model.family=gan", r"unknown test_model 'gan'"),
        ("train.lr.x=1", r"'train.lr' is a float value, not a section"),
        ("guidance.scale=2", r"'guidance' is null; choose a variant first with guidance.name=<tag>"),
        ("train.lr", r"must be a string 'dotted.key=value'"),
        ("train..lr=1", r"malformed key"),
        ("train.lr=[1, 2", r"cannot parse"),
        ("train.steps=-4", r"steps must be >= 0"),
    ],
)
def test_bad_overrides_name_the_key(override, pattern):
    with pytest.raises(ValueError, match=pattern):
        apply_overrides(Exp(), [override])


def test_overrides_argument_checks():
    with pytest.raises(ValueError, match="list of 'key=value' strings"):
        apply_overrides(Exp(), "train.lr=1")
    with pytest.raises(ValueError, match="dataclass instance"):
        apply_overrides({"train": {}}, ["train.lr=1"])
    assert apply_overrides(Exp(), []) == Exp()


# ---------------------------------------------------------------------- properties
_KEYS = ["train", "model", "guidance", "opt", "seed", "lr", "steps", "amp", "name", "milestones", "ema", "out",
         "weights", "batch", "family", "net", "hidden", "depth", "act", "widths", "process", "sigma_min", "scale",
         "beta1", "betas", "flow", "diffusion", "cfg"]
_scalars = st.one_of(
    st.none(), st.booleans(), st.integers(-(10**30), 10**30), st.floats(allow_nan=False), st.text(max_size=8),
    st.sampled_from(["3e-4", "1e3", "true", "relu", "flow", "cfg", "edm", "inf", "nan", "1e999"]),
)
_values = st.recursive(
    _scalars,
    lambda inner: st.one_of(
        st.lists(inner, max_size=3),
        st.dictionaries(st.one_of(st.sampled_from(_KEYS), st.text(max_size=4), st.integers()), inner, max_size=4),
    ),
    max_leaves=12,
)
_dicts = st.dictionaries(st.sampled_from(_KEYS), _values, max_size=5)


@settings(max_examples=150, deadline=None)
@given(data=_dicts)
def test_random_dicts_raise_only_value_error_and_round_trip(data):
    try:
        cfg = from_dict(Exp, data)
    except ValueError:
        return
    assert from_dict(Exp, to_dict(cfg)) == cfg or _has_nan(to_dict(cfg))


def _has_nan(obj) -> bool:
    if isinstance(obj, float):
        return obj != obj
    if isinstance(obj, dict):
        return any(_has_nan(v) for v in obj.values())
    if isinstance(obj, list):
        return any(_has_nan(v) for v in obj)
    return False


_VALID_PATHS = ["train.lr", "train.steps", "train.amp", "train.name", "train.milestones", "train.ema", "train.out",
                "train.weights", "train.batch", "model", "model.family", "model.net", "model.net.hidden",
                "model.net.act", "model.net.widths", "model.process", "model.sigma_min", "guidance", "guidance.name",
                "guidance.scale", "opt", "opt.beta1", "opt.betas", "seed"]
_paths = st.sampled_from(_VALID_PATHS) | st.lists(st.sampled_from(_KEYS + ["x", ""]), min_size=1, max_size=4).map(".".join)
_rhs = st.one_of(
    st.text(max_size=12),
    st.sampled_from(["3e-4", "128", "true", "null", "[1, 2]", "{a: 1}", "flow", "cfg", "{family: flow}", "!!binary AAAA",
                     "2001-12-14", "!!python/name:os.system", "[", "'", "1e999", "~", "{hidden: 3}", "relu", "vp",
                     "diffusion", "{name: cfg, scale: 2}", "[0.5, 0.9]", "{mse: 1}", "-1", "2.0", "x/y"]),
)
_overrides = st.lists(st.tuples(_paths, _rhs).map(lambda t: f"{t[0]}={t[1]}") | st.text(max_size=10), max_size=4)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(overrides=_overrides)
def test_random_overrides_raise_only_value_error(overrides):
    cfg = Exp()
    before = to_dict(cfg)
    try:
        new = apply_overrides(cfg, overrides)
    except ValueError:
        return
    finally:
        assert to_dict(cfg) == before
    assert isinstance(new, Exp)
    assert from_dict(Exp, to_dict(new)) == new or _has_nan(to_dict(new))


@settings(max_examples=60, deadline=None)
@given(
    train=st.builds(
        TrainCfg,
        lr=st.floats(allow_nan=False),
        steps=st.integers(0, 10**12),
        amp=st.booleans(),
        name=st.text(max_size=20),
        milestones=st.lists(st.integers(), max_size=4),
        ema=st.none() | st.floats(allow_nan=False),
        weights=st.dictionaries(st.text(max_size=5), st.floats(allow_nan=False), max_size=3),
        batch=st.integers() | st.text(max_size=5),
    ),
    hidden=st.integers(1, 4096),
    act=st.sampled_from(["relu", "silu"]),
    flow=st.booleans(),
)
def test_valid_trees_round_trip_through_yaml(train, hidden, act, flow):
    net = NetCfg(hidden=hidden, act=act)
    cfg = Exp(train=train, model=FlowCfg(net=net) if flow else DiffusionCfg(net=net))
    assert from_dict(Exp, to_dict(cfg)) == cfg
    assert from_dict(Exp, yaml.safe_load(dump_yaml(cfg))) == cfg
    # an override with the value's own YAML text reproduces it
    assert apply_overrides(cfg, [f"train.steps={train.steps}", f"model.net.hidden={hidden}"]) == cfg
    assert dataclasses.replace(cfg) == cfg
