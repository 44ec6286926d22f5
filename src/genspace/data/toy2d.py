"""The canonical 2-D toy distributions, as pure sampling functions.

Every toy is ``make_<name>(n, *, generator=None, **params) -> Tensor`` of shape (n, 2), float32.
The shapes are the ones of the toy set popularised by FFJORD (Grathwohl et al., 2019) and
reused across the flow-matching and diffusion literature; each is written here from its
geometric definition.

Scaling convention. Each toy is defined in *natural coordinates* (described in its docstring:
unit circle, unit squares, ...) and then multiplied by ``scale``. The default ``scale`` makes the
root-mean-square per-coordinate standard deviation ``sqrt(tr Cov / 2)`` about 1 (the value at
the default parameters is given in each docstring), so that every toy fits the σ_data ≈ 1
assumption of diffusion preconditioning. The FFJORD coordinates are recovered with the
``scale`` named in each docstring (e.g. 8gaussians at radius 2√2 is ``scale=2*sqrt(2)``).

Randomness comes only from ``generator`` (None: torch's global generator; a ``torch.Generator``;
or a :class:`~genspace.core.random.StackedGenerator` with one seed per sample, in which case each
sample only depends on its own seed, not on ``n``). Every draw has the sample index first, so
sample ``i`` always consumes the same stream.

The two toys that are Gaussian mixtures (8gaussians, 25gaussians) also have an exact density:
:func:`toy_density` returns the :class:`~genspace.core.gmm.GaussianMixture` that the sampler
draws from.
"""

from __future__ import annotations

import difflib
import inspect
import math
from typing import Callable

import torch

from genspace.core.gmm import GaussianMixture
from genspace.core.random import Generator, rand, randn

__all__ = [
    "make_moons",
    "make_circles",
    "make_swissroll",
    "make_8gaussians",
    "make_25gaussians",
    "make_checkerboard",
    "make_pinwheel",
    "make_2spirals",
    "make_rings",
    "toy_names",
    "make_toy",
    "toy_density",
]


# ---------------------------------------------------------------------- validation helpers
def _check_n(n) -> int:
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"n must be a positive integer, got {n!r}")
    return n


def _as_float(name: str, value) -> float:
    if isinstance(value, bool):
        raise ValueError(f"{name} must be a number, got {value!r}")
    try:
        return float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a number, got {value!r}") from None


def _check_nonneg(name: str, value) -> float:
    value = _as_float(name, value)
    if not math.isfinite(value) or value < 0:
        raise ValueError(f"{name} must be a finite number >= 0, got {value!r}")
    return value


def _check_pos(name: str, value) -> float:
    value = _as_float(name, value)
    if not math.isfinite(value) or value <= 0:
        raise ValueError(f"{name} must be a finite number > 0, got {value!r}")
    return value


def _check_count(name: str, value) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")
    return value


def _uniform(n: int, k: int, generator: Generator) -> torch.Tensor:
    """(n, k) float64 uniforms on [0, 1)."""
    return rand((n, k), generator=generator, dtype=torch.float64)


def _normal(n: int, k: int, generator: Generator) -> torch.Tensor:
    """(n, k) float64 standard normals."""
    return randn((n, k), generator=generator, dtype=torch.float64)


def _index(u: torch.Tensor, k: int) -> torch.Tensor:
    """Uniform index in {0, ..., k-1} from uniforms u on [0, 1)."""
    return (u * k).long().clamp(max=k - 1)


def _polar(radius: torch.Tensor, angle: torch.Tensor) -> torch.Tensor:
    return torch.stack([radius * torch.cos(angle), radius * torch.sin(angle)], dim=1)


def _out(x: torch.Tensor, scale: float) -> torch.Tensor:
    return (scale * x).to(torch.float32)


# ---------------------------------------------------------------------- toys
def make_moons(n: int, *, generator: Generator = None, noise: float = 0.1, scale: float = 1.4) -> torch.Tensor:
    """Two interleaving half circles ("two moons").

    Natural coordinates: the upper moon is (cos θ, sin θ), the lower moon (1 − cos θ, ½ − sin θ),
    θ ~ U[0, π], each moon with probability ½ (the geometry of scikit-learn's ``make_moons``);
    the points are centred by subtracting the exact mean (½, ¼) and get isotropic Gaussian noise
    of std ``noise``. Output = ``scale`` · natural.

    Args:
        n: number of samples.
        generator: source of randomness.
        noise: std of the Gaussian noise, in natural coordinates (default 0.1).
        scale: output multiplier (default 1.4: rms per-coordinate std ≈ 1.00).

    Returns:
        (n, 2) float32.
    """
    n = _check_n(n)
    noise, scale = _check_nonneg("noise", noise), _check_pos("scale", scale)
    u = _uniform(n, 2, generator)
    z = _normal(n, 2, generator)
    theta = math.pi * u[:, 1]
    upper = (u[:, 0] < 0.5)[:, None]
    upper_pts = torch.stack([torch.cos(theta), torch.sin(theta)], dim=1)
    lower_pts = torch.stack([1 - torch.cos(theta), 0.5 - torch.sin(theta)], dim=1)
    x = torch.where(upper, upper_pts, lower_pts) - u.new_tensor([0.5, 0.25])
    return _out(x + noise * z, scale)


def make_circles(
    n: int, *, generator: Generator = None, factor: float = 0.5, noise: float = 0.08, scale: float = 1.75
) -> torch.Tensor:
    """Two concentric circles.

    Natural coordinates: radius 1 (outer) or ``factor`` (inner), each with probability ½, angle
    uniform, plus isotropic Gaussian noise of std ``noise`` (the geometry of scikit-learn's
    ``make_circles``). Output = ``scale`` · natural. FFJORD's "circles" is ``scale=3``.

    Args:
        n: number of samples.
        generator: source of randomness.
        factor: inner radius relative to the outer one (default 0.5).
        noise: std of the Gaussian noise, natural coordinates (default 0.08).
        scale: output multiplier (default 1.75: rms per-coordinate std ≈ 0.99).

    Returns:
        (n, 2) float32.
    """
    n = _check_n(n)
    factor = _check_pos("factor", factor)
    noise, scale = _check_nonneg("noise", noise), _check_pos("scale", scale)
    u = _uniform(n, 2, generator)
    z = _normal(n, 2, generator)
    radius = torch.where(u[:, 0] < 0.5, 1.0, factor).to(torch.float64)
    x = _polar(radius, 2 * math.pi * u[:, 1])
    return _out(x + noise * z, scale)


def make_swissroll(n: int, *, generator: Generator = None, noise: float = 1.0, scale: float = 0.145) -> torch.Tensor:
    """The 2-D Swiss roll (a spiral with linearly growing radius).

    Natural coordinates: t = 1.5π (1 + 2u), u ~ U[0, 1), point (t cos t, t sin t), plus isotropic
    Gaussian noise of std ``noise`` (the (x, z) plane of scikit-learn's ``make_swiss_roll``).
    Output = ``scale`` · natural. FFJORD's "swissroll" is ``scale=0.2``.

    Args:
        n: number of samples.
        generator: source of randomness.
        noise: std of the Gaussian noise, natural coordinates (default 1.0).
        scale: output multiplier (default 0.145: rms per-coordinate std ≈ 0.99).

    Returns:
        (n, 2) float32.
    """
    n = _check_n(n)
    noise, scale = _check_nonneg("noise", noise), _check_pos("scale", scale)
    u = _uniform(n, 1, generator)
    z = _normal(n, 2, generator)
    t = 1.5 * math.pi * (1 + 2 * u[:, 0])
    return _out(_polar(t, t) + noise * z, scale)


def _ring_means(n_components: int = 8) -> torch.Tensor:
    """(K, 2) unit-circle centres at angles 2πk/K (natural coordinates of 8gaussians)."""
    angle = 2 * math.pi * torch.arange(n_components, dtype=torch.float64) / n_components
    return _polar(torch.ones_like(angle), angle)


def _grid_means(per_side: int = 5) -> torch.Tensor:
    """(per_side², 2) integer grid centred at 0 (natural coordinates of 25gaussians)."""
    c = torch.arange(per_side, dtype=torch.float64) - (per_side - 1) / 2
    gx, gy = torch.meshgrid(c, c, indexing="ij")
    return torch.stack([gx.reshape(-1), gy.reshape(-1)], dim=1)


def _mixture_sample(means: torch.Tensor, std: float, n: int, generator: Generator) -> torch.Tensor:
    """Equal-weight isotropic mixture: component k ~ U{0..K-1}, x = μ_k + std·z."""
    u = _uniform(n, 1, generator)
    z = _normal(n, 2, generator)
    return means.to(u.device)[_index(u[:, 0], means.shape[0])] + std * z


def make_8gaussians(n: int, *, generator: Generator = None, std: float = 0.125, scale: float = math.sqrt(2)) -> torch.Tensor:
    """Eight equal-weight isotropic Gaussians evenly spaced on a circle.

    Natural coordinates: centres (cos 2πk/8, sin 2πk/8), k = 0..7, on the unit circle; each
    component is N(centre, std²·I). Output = ``scale`` · natural, i.e. radius ``scale`` and
    component std ``scale·std``. FFJORD's "8gaussians" (radius 2√2 ≈ 2.83, component std
    0.5/√2 ≈ 0.354) is ``scale=2*sqrt(2)`` with the default ``std``.

    Args:
        n: number of samples.
        generator: source of randomness.
        std: component std relative to the radius (default 0.125).
        scale: output multiplier = radius (default √2: per-coordinate std
            √(2·(½ + 0.125²)) ≈ 1.016).

    Returns:
        (n, 2) float32. The exact density is ``toy_density("8gaussians", std=..., scale=...)``.
    """
    n = _check_n(n)
    std, scale = _check_pos("std", std), _check_pos("scale", scale)
    return _out(_mixture_sample(_ring_means(8), std, n, generator), scale)


def make_25gaussians(n: int, *, generator: Generator = None, std: float = 0.05, scale: float = 1 / math.sqrt(2)) -> torch.Tensor:
    """A 5×5 grid of equal-weight isotropic Gaussians.

    Natural coordinates: centres (i, j), i, j ∈ {−2, −1, 0, 1, 2} (unit spacing); each component is
    N(centre, std²·I). Output = ``scale`` · natural (grid spacing ``scale``). FFJORD's
    "25gaussians" is ``scale=1/(2*sqrt(2))``.

    Args:
        n: number of samples.
        generator: source of randomness.
        std: component std relative to the grid spacing (default 0.05).
        scale: output multiplier = grid spacing (default 1/√2: per-coordinate std
            √((2 + 0.05²)/2) ≈ 1.0006).

    Returns:
        (n, 2) float32. The exact density is ``toy_density("25gaussians", std=..., scale=...)``.
    """
    n = _check_n(n)
    std, scale = _check_pos("std", std), _check_pos("scale", scale)
    return _out(_mixture_sample(_grid_means(5), std, n, generator), scale)


def make_checkerboard(
    n: int, *, generator: Generator = None, n_squares: int = 4, scale: float = math.sqrt(3) / 2
) -> torch.Tensor:
    """Uniform density on the dark squares of a checkerboard.

    Natural coordinates: a board of ``n_squares`` × ``n_squares`` unit squares covering
    [−m/2, m/2]² (m = ``n_squares``); cell (i, j) (counted from the lower-left corner, which is
    dark) is dark when i + j is even; the density is uniform on the dark cells. For even m each
    coordinate is marginally U[−m/2, m/2]. Output = ``scale`` · natural. FFJORD's
    "checkerboard" (eight 2×2 squares in [−4, 4]²) is ``scale=2``.

    Args:
        n: number of samples.
        generator: source of randomness.
        n_squares: squares per side (default 4).
        scale: output multiplier (default √3/2: per-coordinate std exactly 1 for m = 4).

    Returns:
        (n, 2) float32.
    """
    n = _check_n(n)
    m = _check_count("n_squares", n_squares)
    scale = _check_pos("scale", scale)
    u = _uniform(n, 3, generator)
    n_dark = (m * m + 1) // 2
    cell = _index(u[:, 0], n_dark)  # index among dark cells, row by row
    # dark cells of row j are the columns i with (i + j) even
    per_pair = m  # two consecutive rows hold m dark cells together
    pair, rest = cell // per_pair, cell % per_pair
    first_row = (m + 1) // 2  # dark cells in an even row (starts with a dark cell)
    in_second = rest >= first_row
    j = 2 * pair + in_second.long()
    k = torch.where(in_second, rest - first_row, rest)
    i = 2 * k + (j % 2)
    corner = torch.stack([i, j], dim=1).to(torch.float64) - m / 2
    return _out(corner + u[:, 1:], scale)


def make_pinwheel(
    n: int,
    *,
    generator: Generator = None,
    n_arms: int = 5,
    radial_std: float = 0.3,
    tangential_std: float = 0.1,
    rate: float = 0.25,
    scale: float = 1.35,
) -> torch.Tensor:
    """A pinwheel of curved Gaussian arms (Johnson et al., 2016, as in FFJORD).

    Natural coordinates: arm k ~ U{0..K−1}; a radial coordinate r ~ N(1, radial_std²) and a
    tangential one s ~ N(0, tangential_std²); the point (r, s) is rotated clockwise by
    θ = 2πk/K + rate·exp(r), so the arms bend more the further out they go.
    Output = ``scale`` · natural. FFJORD's "pinwheel" is ``scale=2``.

    Args:
        n: number of samples.
        generator: source of randomness.
        n_arms: number of arms K (default 5).
        radial_std: std along an arm (default 0.3).
        tangential_std: std across an arm (default 0.1).
        rate: bending rate (default 0.25).
        scale: output multiplier (default 1.35: rms per-coordinate std ≈ 1.00).

    Returns:
        (n, 2) float32.
    """
    n = _check_n(n)
    k_arms = _check_count("n_arms", n_arms)
    radial_std = _check_nonneg("radial_std", radial_std)
    tangential_std = _check_nonneg("tangential_std", tangential_std)
    rate = _as_float("rate", rate)
    if not math.isfinite(rate):
        raise ValueError(f"rate must be finite, got {rate!r}")
    scale = _check_pos("scale", scale)
    u = _uniform(n, 1, generator)
    z = _normal(n, 2, generator)
    r = 1 + radial_std * z[:, 0]
    s = tangential_std * z[:, 1]
    theta = 2 * math.pi * _index(u[:, 0], k_arms).to(torch.float64) / k_arms + rate * torch.exp(r)
    c, si = torch.cos(theta), torch.sin(theta)
    x = torch.stack([r * c + s * si, -r * si + s * c], dim=1)  # rotation by −θ
    return _out(x, scale)


def make_2spirals(
    n: int,
    *,
    generator: Generator = None,
    turns: float = 1.5,
    jitter: float = 0.5,
    noise: float = 0.3,
    scale: float = 0.2,
) -> torch.Tensor:
    """Two interleaved Archimedean spirals, point reflections of each other.

    Natural coordinates: φ = 2π·turns·√u, u ~ U[0, 1) (uniform along the radius² so that the
    density along the curve is roughly even), point ±φ·(−cos φ, sin φ) (sign ± with probability
    ½ picks the spiral), plus a uniform jitter on [−jitter/2, jitter/2]² and isotropic Gaussian
    noise of std ``noise``. Output = ``scale`` · natural. FFJORD's "2spirals" (540° spirals) is
    ``scale=1/3`` (FFJORD's jitter is uncentred U[0, ½)² mirrored with the spiral).

    Args:
        n: number of samples.
        generator: source of randomness.
        turns: number of turns of each spiral (default 1.5, i.e. 540°).
        jitter: width of the uniform jitter, natural coordinates (default 0.5).
        noise: std of the Gaussian noise, natural coordinates (default 0.3).
        scale: output multiplier (default 0.2: rms per-coordinate std ≈ 0.95).

    Returns:
        (n, 2) float32.
    """
    n = _check_n(n)
    turns = _check_pos("turns", turns)
    jitter, noise = _check_nonneg("jitter", jitter), _check_nonneg("noise", noise)
    scale = _check_pos("scale", scale)
    u = _uniform(n, 4, generator)
    z = _normal(n, 2, generator)
    phi = 2 * math.pi * turns * torch.sqrt(u[:, 0])
    sign = torch.where(u[:, 1] < 0.5, 1.0, -1.0).to(torch.float64)[:, None]
    curve = phi[:, None] * torch.stack([-torch.cos(phi), torch.sin(phi)], dim=1)
    x = sign * curve + jitter * (u[:, 2:] - 0.5) + noise * z
    return _out(x, scale)


def make_rings(
    n: int, *, generator: Generator = None, n_rings: int = 4, noise: float = 0.08 / 3, scale: float = 2.0
) -> torch.Tensor:
    """Concentric rings of radii 1/R, 2/R, ..., 1.

    Natural coordinates: ring j ~ U{1..R} (equal weights), radius j/R, angle uniform, plus
    isotropic Gaussian noise of std ``noise``. Output = ``scale`` · natural. FFJORD's "rings"
    (radii 0.75, 1.5, 2.25, 3, noise 0.08) is ``scale=3``.

    Args:
        n: number of samples.
        generator: source of randomness.
        n_rings: number of rings R (default 4).
        noise: std of the Gaussian noise, natural coordinates (default 0.08/3).
        scale: output multiplier = outer radius (default 2: rms per-coordinate std ≈ 0.97).

    Returns:
        (n, 2) float32.
    """
    n = _check_n(n)
    r_count = _check_count("n_rings", n_rings)
    noise, scale = _check_nonneg("noise", noise), _check_pos("scale", scale)
    u = _uniform(n, 2, generator)
    z = _normal(n, 2, generator)
    radius = (_index(u[:, 0], r_count) + 1).to(torch.float64) / r_count
    x = _polar(radius, 2 * math.pi * u[:, 1])
    return _out(x + noise * z, scale)


# ---------------------------------------------------------------------- registry
_TOYS: dict[str, Callable[..., torch.Tensor]] = {
    "moons": make_moons,
    "circles": make_circles,
    "swissroll": make_swissroll,
    "8gaussians": make_8gaussians,
    "25gaussians": make_25gaussians,
    "checkerboard": make_checkerboard,
    "pinwheel": make_pinwheel,
    "2spirals": make_2spirals,
    "rings": make_rings,
}


def toy_names() -> tuple[str, ...]:
    """Names accepted by :func:`make_toy`."""
    return tuple(_TOYS)


def _unknown(what: str, name, choices) -> ValueError:
    close = difflib.get_close_matches(str(name), list(choices), n=1)
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    return ValueError(f"unknown {what} {name!r}{hint}; choices: {', '.join(choices)}")


def _toy_params(fn: Callable) -> list[str]:
    return [p for p in inspect.signature(fn).parameters if p not in ("n", "generator")]


def _check_params(name: str, fn: Callable, params: dict) -> None:
    valid = _toy_params(fn)
    for key in params:
        if key not in valid:
            raise _unknown(f"parameter for toy {name!r}:", key, valid)


def make_toy(name: str, n: int, *, generator: Generator = None, **params) -> torch.Tensor:
    """Draw ``n`` samples of the toy ``name`` (see :func:`toy_names`): (n, 2) float32.

    ``params`` are the keyword parameters of the corresponding ``make_<name>`` function.
    Raises ValueError for an unknown name or parameter, naming the valid choices.
    """
    if name not in _TOYS:
        raise _unknown("toy", name, toy_names())
    fn = _TOYS[name]
    _check_params(name, fn, params)
    return fn(n, generator=generator, **params)


def toy_density(name: str, **params) -> GaussianMixture:
    """The exact density of a Gaussian-mixture toy, as a GaussianMixture (float64).

    Available for "8gaussians" and "25gaussians" with the same keyword parameters (``std``,
    ``scale``) as their samplers: ``make_toy(name, n, **params)`` draws exactly from
    ``toy_density(name, **params)``.
    """
    mixtures = {"8gaussians": (make_8gaussians, _ring_means), "25gaussians": (make_25gaussians, _grid_means)}
    if name not in mixtures:
        if name in _TOYS:
            raise ValueError(
                f"toy {name!r} is not a Gaussian mixture and has no closed-form density; "
                f"toys with one: {', '.join(mixtures)}"
            )
        raise _unknown("toy", name, tuple(mixtures))
    fn, means_fn = mixtures[name]
    _check_params(name, fn, params)
    defaults = {k: p.default for k, p in inspect.signature(fn).parameters.items() if k in ("std", "scale")}
    values = {**defaults, **params}
    std, scale = _check_pos("std", values["std"]), _check_pos("scale", values["scale"])
    means = scale * means_fn()
    k = means.shape[0]
    return GaussianMixture(torch.ones(k, dtype=torch.float64), means, torch.full((k,), (scale * std) ** 2, dtype=torch.float64))
