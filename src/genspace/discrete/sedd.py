"""SEDD: score entropy discrete diffusion (Lou, Meng & Ermon 2024, "Discrete Diffusion Modeling by
Estimating the Ratios of the Data Distribution").

**Forward CTMC.** Each token follows dp_t/dt = σ(t)·Q p_t independently, σ(t) = dσ̄/dt = −α′/α
(:meth:`Schedule.rate`), with the token generator Q of the process
(:mod:`genspace.discrete.processes`); α(t) = e^{−σ̄(t)} is the keep probability:

- absorbing: rate 1 from every data token y to the mask m (Q(y→m) = 1);
  q_t(·|x0) = α·e_{x0} + (1 − α)·e_m;
- uniform: rate 1/K from every data token y to every other one x (Q = 11ᵀ/K − I);
  q_t(·|x0) = α·e_{x0} + (1 − α)/K·1.

**Score network convention.** ``score_fn(x_t (B, L), t (B,)) -> (B, L, V)`` returns log-ratios
log s_θ(x_t, t)_{ℓ,y} ≈ log p_t(x_t^{ℓ←y}) / p_t(x_t), x_t^{ℓ←y} being x_t with position ℓ set
to y (the "concrete score"). Columns 0..K−1 are data tokens and the only ones read; the entry
y = x_t^ℓ is ignored; for the absorbing process only masked positions are read (for them
s_y = α/(1 − α)·p(x0^ℓ = y | x_t): a masked-diffusion denoiser p gives a score network through
:func:`score_from_log_probs`, and the other way through :func:`log_probs_from_score`).

**Loss (the paper's likelihood bound).** The reverse CTMC has rates Q̄_t(x→y) = (p_t(y)/p_t(x))·σQ(y→x);
the KL between the path measure of the forward process given x0 and the model's reverse process
is the diffusion-weighted denoising score entropy

    L(x0) = ∫_0^1 E_{x_t ~ q_t(·|x0)} Σ_ℓ Σ_{y ≠ x_t^ℓ} σ(t)·Q(y→x_t^ℓ)·[s_y − r_y log s_y + K(r_y)] dt,
    r_y = q_t(y | x0^ℓ)/q_t(x_t^ℓ | x0^ℓ),  K(a) = a(log a − 1),

each summand ≥ 0 with equality iff s_y = r_y pointwise, and −log p_θ(x0) ≤ L(x0) +
KL(q_1(·|x0) ‖ p_base) (:func:`prior_kl`). For the absorbing process only masked positions
contribute and r_y = α/(1 − α)·1[y = x0^ℓ] = 1/(e^{σ̄} − 1)·1[y = x0^ℓ]; for the uniform process
every position does. With the exact ratios p_t(y)/p_t(x) the bound is tight for every x0.

**Samplers.** Euler steps of the reverse CTMC and Tweedie τ-leaping (from the paper's discrete Tweedie theorem),
which is the exact one-position transition p(x_s^ℓ | x_t) for exact ratios.
"""

from __future__ import annotations

import math
import time
from typing import Callable, Optional, Union

import torch

from genspace.core.random import Generator, rand
from genspace.discrete.categorical import sample_categorical
from genspace.discrete.samplers import (
    CountingModel,
    _check_int,
    _check_mask_id,
    _info,
    _prepare,
    _times,
)
from genspace.discrete.schedules import Schedule, get_schedule

__all__ = [
    "antithetic_times",
    "euler_probs",
    "log_probs_from_score",
    "prior_kl",
    "sample_sedd_euler",
    "sample_sedd_tweedie",
    "score_entropy",
    "score_from_log_probs",
    "sedd_loss",
    "tweedie_probs",
]

F64 = torch.float64
ScoreFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def _k_of(a: torch.Tensor) -> torch.Tensor:
    """K(a) = a(log a − 1), with K(0) = 0."""
    return torch.xlogy(a, a) - a


# ----------------------------------------------------------------------------- loss
def score_entropy(
    log_score: torch.Tensor,
    x_t: torch.Tensor,
    x0: torch.Tensor,
    t: torch.Tensor,
    *,
    process,
    schedule: Union[str, Schedule] = "log-linear",
    keep: Optional[torch.Tensor] = None,
) -> torch.Tensor:
    """The integrand of the SEDD bound at time t (diffusion-weighted denoising score entropy).

    σ(t) Σ_ℓ Σ_{y ≠ x_t^ℓ} Q(y→x_t^ℓ)·[s_y − r_y log s_y + K(r_y)] with r_y = q_t(y|x0^ℓ)/q_t(x_t^ℓ|x0^ℓ)
    (Lou et al. 2024: the denoising score entropy, weighted as in the likelihood bound).

    Args:
        log_score: (B, L, V) log s_θ(x_t, t) (columns 0..K−1 read).
        x_t: (B, L) noised tokens; x0: (B, L) clean tokens; t: (B,) times in (0, 1).
        process: AbsorbingProcess or UniformProcess; schedule: its α(t).
        keep: optional (B, L) bool positions excluded (a prompt never noised).

    Returns:
        (B,) per-sequence integrand, ≥ 0 (0 iff the score is exact on every read entry).
    """
    schedule = get_schedule(schedule)
    k = process.vocab_size
    dtype = torch.promote_types(log_score.dtype, torch.float32)
    ls = log_score[..., :k].to(dtype)  # (B, L, K)
    t64 = t.to(F64)
    alpha = schedule.alpha(t64)
    sigma = schedule.rate(t64).to(dtype)  # (B,)
    if process.kind == "absorbing":
        r = (alpha / (1.0 - alpha)).to(dtype)[:, None]  # (B, 1): ratio at y = x0, 1/(e^σ̄ − 1)
        ls_x0 = ls.gather(-1, x0[..., None]).squeeze(-1)  # (B, L)
        r_log = torch.where(r > 0, r * ls_x0, torch.zeros_like(ls_x0))
        per = ls.exp().sum(-1) - r_log + _k_of(r)  # (B, L); Q(y→m) = 1
        per = torch.where(x_t == process.mask_id, per, torch.zeros_like(per))
    else:
        a = alpha.to(dtype)[:, None, None]
        q = a * torch.nn.functional.one_hot(x0, k).to(dtype) + (1.0 - a) / k  # q_t(y | x0^ℓ), (B, L, K)
        r = q / q.gather(-1, x_t[..., None])  # (B, L, K)
        term = ls.exp() - r * ls + _k_of(r)
        other = torch.nn.functional.one_hot(x_t, k) == 0  # y ≠ x_t^ℓ
        per = torch.where(other, term, torch.zeros_like(term)).sum(-1) / k  # Q(y→x) = 1/K
    if keep is not None:
        per = torch.where(keep, torch.zeros_like(per), per)
    return sigma * per.sum(-1)


def antithetic_times(
    batch: int,
    *,
    generator: Generator = None,
    eps: float = 1e-3,
    t_max: float = 1.0,
    antithetic: bool = True,
    device=None,
) -> torch.Tensor:
    """(B,) float64 times in [eps, t_max): t = eps + (t_max − eps)·t_i, with the low-discrepancy
    t_i = (u + i/B) mod 1 of MDLM (Sahoo et al. 2024) and VDM (Kingma et al. 2021) or
    t_i = u_i i.i.d. With a StackedGenerator the offset u is row 0's draw."""
    u = rand((batch,), generator=generator, dtype=F64, device=device)
    if antithetic:
        u = torch.remainder(u[:1] + torch.arange(batch, dtype=F64, device=u.device) / batch, 1.0)
    return eps + (t_max - eps) * u


def _alpha_one(schedule: Schedule) -> float:
    """α(1), with the round-off of e.g. cos(π/2) ≈ 6e-17 taken as the exact 0 it stands for."""
    a1 = float(schedule.alpha(torch.tensor(1.0, dtype=F64)))
    return 0.0 if abs(a1) < 1e-12 else a1


def _t_max(schedule: Schedule, eps: float) -> float:
    """1, or 1 − eps for schedules with α(1) = 0 (σ(1) = ∞ there)."""
    return 1.0 if _alpha_one(schedule) > 0 else 1.0 - eps


def sedd_loss(
    score_fn: ScoreFn,
    x0: torch.Tensor,
    *,
    process,
    schedule: Union[str, Schedule] = "log-linear",
    generator: Generator = None,
    eps: float = 1e-3,
    antithetic: bool = True,
    keep: Optional[torch.Tensor] = None,
) -> torch.Tensor:
    """The SEDD training loss: a one-sample estimate of the NLL bound ∫ E[score entropy] dt, (B,).

    t is drawn in [eps, t_max) (:func:`antithetic_times`; t_max = 1, or 1 − eps when α(1) = 0 so
    that σ(t) stays finite), x_t ~ q_t(·|x0), and the integrand is multiplied by the length
    t_max − eps of the interval: the result is an unbiased estimate of the integral over
    [eps, t_max], which misses only the O(eps) ends of [0, 1]. The bound on −log p_θ(x0) (nats
    per sequence) is this plus :func:`prior_kl`.

    Args:
        score_fn: ``(x_t (B, L), t (B,) float32) -> (B, L, V)`` log-ratios.
        x0: (B, L) clean data ids.
        eps: the sampling eps (SEDD and MDLM use 1e-3).
        keep: (B, L) bool positions never noised and not scored (a prompt).

    Returns:
        (B,) unreduced loss.
    """
    schedule = get_schedule(schedule)
    t_max = _t_max(schedule, eps)
    t = antithetic_times(x0.shape[0], generator=generator, eps=eps, t_max=t_max, antithetic=antithetic, device=x0.device)
    x_t = process.sample(x0, schedule.alpha(t)[:, None], generator=generator, keep=keep)
    log_score = score_fn(x_t, _times(t, x0.device))
    return (t_max - eps) * score_entropy(log_score, x_t, x0, t, process=process, schedule=schedule, keep=keep)


def prior_kl(x0: torch.Tensor, *, process, schedule: Union[str, Schedule] = "log-linear") -> torch.Tensor:
    """KL(q_1(·|x0) ‖ p_base) per sequence, (B,) float64: the prior term of the bound.

    Uniform: p_base uniform, Σ_ℓ Σ_v q_1(v) log(K q_1(v)). Absorbing: p_base all-mask, so 0 if
    α(1) = 0 and +inf otherwise (a token survives to t = 1 with probability α(1) > 0, which the
    all-mask start cannot produce; SEDD neglects this term).
    """
    schedule = get_schedule(schedule)
    a1 = torch.tensor(_alpha_one(schedule), dtype=F64)
    b, length = x0.shape
    if process.kind == "absorbing":
        value = 0.0 if float(a1) == 0 else math.inf
        return torch.full((b,), value, dtype=F64, device=x0.device)
    k = process.vocab_size
    q_same, q_other = a1 + (1 - a1) / k, (1 - a1) / k
    per = torch.xlogy(q_same, k * q_same) + (k - 1) * torch.xlogy(q_other, k * q_other)
    return torch.full((b,), float(per) * length, dtype=F64, device=x0.device)


# ----------------------------------------------------------------------------- adapters
def score_from_log_probs(
    log_probs: torch.Tensor,
    x_t: torch.Tensor,
    t: torch.Tensor,
    *,
    mask_id: int,
    schedule: Union[str, Schedule] = "log-linear",
) -> torch.Tensor:
    """Absorbing process: log s = log α/(1 − α) + log p(x0^ℓ = y | x_t) at masked positions.

    log_probs: (B, L, V) log p(x0 | x_t); returns (B, L, V) log-ratios (unmasked positions copied).
    """
    alpha = get_schedule(schedule).alpha(t.to(F64))
    log_r = (torch.log(alpha) - torch.log1p(-alpha)).to(log_probs.dtype)[:, None, None]
    return torch.where((x_t == mask_id)[..., None], log_probs + log_r, log_probs)


def log_probs_from_score(log_score: torch.Tensor, x_t: torch.Tensor, *, mask_id: int, vocab_size: int) -> torch.Tensor:
    """Absorbing process: p(x0^ℓ = y | x_t) ∝ s_y over the K data tokens (the Tweedie denoiser at
    s = 0), in SUBS form: (B, L, V) float64 with −inf on ids ≥ K and unmasked positions one-hot."""
    ls = log_score.to(F64).clone()
    ls[..., vocab_size:] = -math.inf
    lp = torch.log_softmax(ls, dim=-1)
    own = torch.full_like(lp, -math.inf).scatter_(-1, x_t.clamp_max(lp.shape[-1] - 1)[..., None], 0.0)
    return torch.where((x_t == mask_id)[..., None], lp, own)


# ----------------------------------------------------------------------------- transition probabilities
def euler_probs(
    log_score: torch.Tensor,
    x_t: torch.Tensor,
    t: float,
    dt: float,
    *,
    process,
    schedule: Union[str, Schedule] = "log-linear",
) -> torch.Tensor:
    """One Euler step of the reverse CTMC per position (Lou et al. 2024):
    p(x^ℓ → y) = δ_{x^ℓ y} + Δt·Q̄_t(x^ℓ → y), Q̄_t(x→y) = σ(t)·s_y·Q(y→x), the stay probability
    clipped at 0.

    Returns (B, L, C) non-negative probabilities over C states: C = K + 1 for absorbing (column K
    is the mask), C = K for uniform.
    """
    schedule = get_schedule(schedule)
    k = process.vocab_size
    s = log_score[..., :k].to(F64).exp()  # (B, L, K)
    sigma = float(schedule.rate(torch.tensor(t, dtype=F64)))
    if process.kind == "absorbing":
        masked = x_t == process.mask_id
        move = dt * sigma * s  # Q(y→m) = 1
        stay = (1.0 - move.sum(-1, keepdim=True)).clamp_min(0.0)
        probs = torch.cat([move, stay], dim=-1)  # (B, L, K+1)
        fixed = torch.nn.functional.one_hot(x_t.clamp_max(k - 1), k + 1).to(F64)
        return torch.where(masked[..., None], probs, fixed)
    own = torch.nn.functional.one_hot(x_t, k).bool()
    move = torch.where(own, torch.zeros_like(s), dt * sigma * s / k)  # Q(y→x) = 1/K
    stay = (1.0 - move.sum(-1, keepdim=True)).clamp_min(0.0)
    return torch.where(own, stay.expand_as(move), move)


def tweedie_probs(
    log_score: torch.Tensor,
    x_t: torch.Tensor,
    t: float,
    s: float,
    *,
    process,
    schedule: Union[str, Schedule] = "log-linear",
) -> torch.Tensor:
    """The Tweedie τ-leaping step from t to s < t per position (Lou et al. 2024, discrete Tweedie theorem):

        p(x_s^ℓ = y | x_t) ∝ [exp((σ̄_s − σ̄_t)Q)·s]_y · exp((σ̄_t − σ̄_s)Q)(y → x_t^ℓ),

    the exact one-position reverse transition when s are the exact ratios. With β = α_t/α_s:

    - absorbing, masked position: y = v data: s_v·(α_s − α_t)/α_t = s_v (e^{σ̄_t − σ̄_s} − 1);
      y = mask: (1 − α_s)/(1 − α_t); unmasked positions stay;
    - uniform: [β δ_{y x} + (1 − β)/K] · (s_y − (1 − β)/K Σ_z s_z)/β, s_x = 1, negatives clipped.

    Returns (B, L, C) non-negative unnormalized probabilities (C as in :func:`euler_probs`).
    """
    schedule = get_schedule(schedule)
    k = process.vocab_size
    a_t = float(schedule.alpha(torch.tensor(t, dtype=F64)))
    a_s = float(schedule.alpha(torch.tensor(s, dtype=F64))) if s > 0 else 1.0
    ls = log_score[..., :k].to(F64)
    if process.kind == "absorbing":
        masked = x_t == process.mask_id
        data = ls.exp() * ((a_s - a_t) / a_t)
        stay = torch.full_like(data[..., :1], (1.0 - a_s) / (1.0 - a_t))
        probs = torch.cat([data, stay], dim=-1)  # (B, L, K+1)
        fixed = torch.nn.functional.one_hot(x_t.clamp_max(k - 1), k + 1).to(F64)
        return torch.where(masked[..., None], probs, fixed)
    own = torch.nn.functional.one_hot(x_t, k).bool()
    sc = torch.where(own, torch.ones_like(ls), ls.exp())  # s_x = 1
    beta = a_t / a_s
    pre = (sc - (1.0 - beta) / k * sc.sum(-1, keepdim=True)) / beta  # [exp(−ΔσQ) s]_y
    trans = torch.where(own, beta + (1.0 - beta) / k, torch.full_like(sc, (1.0 - beta) / k))  # q_{t|s}(x | y)
    return (pre * trans).clamp_min(0.0)


# ----------------------------------------------------------------------------- samplers
def _prepare_sedd(x_init, process, mask_id, generator) -> tuple[torch.Tensor, torch.Tensor, int]:
    """int64 start, (B, L) bool free positions, and the marker id of positions to generate."""
    if process.kind == "absorbing":
        if mask_id is None:
            mask_id = process.mask_id
        if mask_id != process.mask_id:
            raise ValueError(f"mask_id {mask_id} differs from the process's mask id {process.mask_id}")
    elif mask_id is None:
        if torch.is_tensor(x_init):
            raise ValueError("uniform SEDD with a token tensor needs mask_id to mark the positions to generate")
        mask_id = process.vocab_size
    mask_id = _check_mask_id(mask_id)
    if 0 <= mask_id < process.vocab_size:
        raise ValueError(f"mask_id {mask_id} collides with a data token (ids 0..{process.vocab_size - 1})")
    x = _prepare(x_init, mask_id)
    data = x[x != mask_id]
    if data.numel() and int(data.max()) >= process.vocab_size:
        raise ValueError(f"x_init holds token id {int(data.max())}, outside the data ids 0..{process.vocab_size - 1}")
    free = x == mask_id
    if process.kind == "uniform":  # the uniform prior at t = 1
        u = rand(x.shape, generator=generator, dtype=F64, device=x.device)
        noise = (u * process.vocab_size).long().clamp_max(process.vocab_size - 1)
        x = torch.where(free, noise, x)
    return x, free, mask_id


def _draw(probs: torch.Tensor, x: torch.Tensor, process, generator: Generator) -> torch.Tensor:
    """Token ids (B, L) from per-position probabilities over the compact states (mask = column K)."""
    k = process.vocab_size
    total = probs.sum(-1, keepdim=True)
    state = torch.where(x == process.mask_id, torch.full_like(x, k), x) if process.kind == "absorbing" else x
    stay = torch.nn.functional.one_hot(state, probs.shape[-1]).to(F64)
    probs = torch.where(total > 0, probs, stay)  # a degenerate row (all zero) stays put
    new = sample_categorical(probs.log(), generator=generator)
    if process.kind == "absorbing":
        new = torch.where(new == k, torch.full_like(new, process.mask_id), new)
    return new


def _sedd_sample(kind, score_fn, x_init, *, process, steps, schedule, generator, eps, denoise, mask_id, callback):
    steps = _check_int("steps", steps)
    if not isinstance(eps, (int, float)) or not 0.0 < eps < 0.5:
        raise ValueError(f"eps must be in (0, 0.5), got {eps!r}")
    schedule = get_schedule(schedule)
    x, free, marker = _prepare_sedd(x_init, process, mask_id, generator)
    data_limit = process.vocab_size
    marker_in = process.mask_id if process.kind == "absorbing" else None
    model = CountingModel(score_fn, x, marker_in, mask_column=False, data_limit=data_limit)
    start, generated = time.perf_counter(), int(free.sum())
    b = x.shape[0]
    grid = torch.linspace(_t_max(schedule, eps), eps, steps + 1, dtype=F64).tolist()
    n_steps = steps + (1 if denoise else 0)
    for i in range(n_steps):
        t = grid[i]
        s = grid[i + 1] if i < steps else 0.0
        log_score = model(x, _times(torch.full((b,), t, dtype=F64), x.device))
        if kind == "euler" and i < steps:
            probs = euler_probs(log_score, x, t, t - s, process=process, schedule=schedule)
        else:  # Tweedie steps, and the final denoising step of both samplers (SEDD's denoise=True)
            probs = tweedie_probs(log_score, x, t, s, process=process, schedule=schedule)
        x = torch.where(free, _draw(probs, x, process, generator), x)
        if callback is not None:
            callback({"i": i, "x": x, "t": t, "t_next": s, "nfe": model.nfe})
    return x, _info(model, n_steps, start, generated)


def sample_sedd_euler(
    score_fn: ScoreFn,
    x_init,
    *,
    process,
    steps: int,
    schedule: Union[str, Schedule] = "log-linear",
    generator: Generator = None,
    eps: float = 1e-3,
    denoise: bool = True,
    mask_id: Optional[int] = None,
    callback: Optional[Callable[[dict], None]] = None,
):
    """SEDD Euler sampler (Lou et al. 2024): ``steps`` Euler steps of the reverse CTMC on the
    uniform grid t_max → eps (:func:`euler_probs`), then, if ``denoise``, one Tweedie step eps → 0
    (:func:`tweedie_probs`), as in SEDD's sampler.

    Args:
        score_fn: ``(x_t (B, L), t (B,) float32) -> (B, L, V)`` log-ratios (see the module doc).
        x_init: (B, L) ids, ``mask_id`` marking positions to generate, or (n, length). For the
            uniform process those positions start from the uniform prior.
        process: AbsorbingProcess or UniformProcess (K data ids).
        steps: Euler steps; NFE = steps + denoise.
        eps: the grid ends at eps; t_max = 1, or 1 − eps if α(1) = 0.
        mask_id: absorbing — defaults to (and must equal) the process's; uniform — the marker of
            positions to generate (any id ≥ K; required with a tensor x_init).

    Returns:
        tokens (B, L), info {"nfe", "steps", "seconds", "tokens_per_s"}.
    """
    return _sedd_sample(
        "euler", score_fn, x_init, process=process, steps=steps, schedule=schedule, generator=generator,
        eps=eps, denoise=denoise, mask_id=mask_id, callback=callback,
    )


def sample_sedd_tweedie(
    score_fn: ScoreFn,
    x_init,
    *,
    process,
    steps: int,
    schedule: Union[str, Schedule] = "log-linear",
    generator: Generator = None,
    eps: float = 1e-3,
    denoise: bool = True,
    mask_id: Optional[int] = None,
    callback: Optional[Callable[[dict], None]] = None,
):
    """SEDD Tweedie τ-leaping (Lou et al. 2024): every position updated independently with the
    Tweedie transition (:func:`tweedie_probs`) on the uniform grid t_max → eps, then, if
    ``denoise``, one Tweedie step eps → 0. Options as :func:`sample_sedd_euler`."""
    return _sedd_sample(
        "tweedie", score_fn, x_init, process=process, steps=steps, schedule=schedule, generator=generator,
        eps=eps, denoise=denoise, mask_id=mask_id, callback=callback,
    )
