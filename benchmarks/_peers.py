"""Peer libraries for the benchmarks: k-diffusion's samplers and diffusers' schedulers.

Both are optional (the ``bench`` extra, installed with ``scripts/install-bench.sh``, no deps).

k-diffusion. Its package ``__init__`` imports every submodule, and some of those import
torchvision and scikit-image, which the benchmark does not install. :func:`k_diffusion_sampling`
therefore loads only ``k_diffusion/sampling.py``: it creates a stub parent package under a
private name (``_bench_k_diffusion``, so a real ``import k_diffusion`` elsewhere is not
shadowed) whose ``__path__`` is the installed package's directory, and a stub ``utils`` module
with the single helper ``sampling.py`` uses (``append_dims``), written here. The file itself is
executed unchanged.

diffusers. :func:`diffusers_schedulers` imports the scheduler classes the benchmark drives; its
top-level package imports lazily and needs neither transformers nor torchvision.

Every function returns None (with the reason in :func:`unavailable`) instead of raising when a
peer is not installed, so the benchmark runs with whatever is present.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import importlib.util
import sys
import types
from pathlib import Path
from typing import Optional

_STUB = "_bench_k_diffusion"
_REASONS: dict[str, str] = {}


def unavailable() -> dict[str, str]:
    """Peer name → why it could not be loaded (empty if all loaded)."""
    return dict(_REASONS)


def version(dist: str) -> Optional[str]:
    """Installed version of a distribution, or None."""
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None


def _append_dims(x, target_dims: int):
    """k_diffusion.utils.append_dims: append trailing singleton dims until x has target_dims dims."""
    dims_to_append = target_dims - x.ndim
    if dims_to_append < 0:
        raise ValueError(f"input has {x.ndim} dims but target_dims is {target_dims}, which is less")
    return x[(...,) + (None,) * dims_to_append]


def k_diffusion_sampling() -> Optional[types.ModuleType]:
    """The module ``k_diffusion/sampling.py`` loaded without the package ``__init__``, or None."""
    name = f"{_STUB}.sampling"
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.find_spec("k_diffusion")  # locates the package without executing it
    if spec is None or not spec.submodule_search_locations:
        _REASONS["k-diffusion"] = "not installed (bash scripts/install-bench.sh)"
        return None
    pkg_dir = Path(list(spec.submodule_search_locations)[0])
    path = pkg_dir / "sampling.py"
    if not path.is_file():
        _REASONS["k-diffusion"] = f"no sampling.py in {pkg_dir}"
        return None

    package = types.ModuleType(_STUB)
    package.__path__ = [str(pkg_dir)]
    package.__package__ = _STUB
    utils = types.ModuleType(f"{_STUB}.utils")
    utils.append_dims = _append_dims
    package.utils = utils
    sys.modules[_STUB] = package
    sys.modules[f"{_STUB}.utils"] = utils

    module_spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(module_spec)
    sys.modules[name] = module
    try:
        module_spec.loader.exec_module(module)
    except ImportError as exc:  # torchsde / torchdiffeq / scipy missing
        for key in (name, f"{_STUB}.utils", _STUB):
            sys.modules.pop(key, None)
        _REASONS["k-diffusion"] = f"sampling.py needs {exc.name or exc}"
        return None
    package.sampling = module
    return module


def diffusers_schedulers() -> Optional[dict[str, type]]:
    """{class name: class} of the diffusers schedulers used by the benchmark, or None."""
    names = (
        "DPMSolverMultistepScheduler",
        "EDMDPMSolverMultistepScheduler",
        "UniPCMultistepScheduler",
        "EulerDiscreteScheduler",
    )
    try:
        diffusers = importlib.import_module("diffusers")
        return {n: getattr(diffusers, n) for n in names}
    except (ImportError, AttributeError) as exc:
        _REASONS["diffusers"] = f"unavailable: {exc}"
        return None
