"""Training objectives of token models: masked-diffusion NELBO, block-diffusion NELBO, AR cross-entropy.

Every objective returns a :class:`TokenLoss` whose ``nll`` is the UNREDUCED per-sequence loss
(B,) in nats per sequence (a sum over the scored positions); ``per_token`` divides by the number
of scored positions, for logging and for comparing models per token. The network is never called
inside an objective's internals except through a function passed in:

- masked diffusion: ``logits_fn(x_t (B, L), t (B,)) -> (B, L, V)`` raw logits
  (:func:`masked_logits_fn` wraps a :class:`~genspace.nets.transformer.Transformer`;
  :func:`subs_log_probs_fn` turns it into the SUBS log-probabilities the samplers take);
- block diffusion: ``bd3_fn(x_t (B, L), x0 (B, L), t (B, L)) -> (B, L, V)`` logits of the x_t
  stream given the clean stream (:func:`bd3_logits_fn` builds the BD3-LM layout);
- autoregressive: ``logits_fn(tokens (B, L)) -> (B, L, V)`` with a causal mask
  (:func:`causal_logits_fn`).

**SUBS** (Sahoo et al. 2024, MDLM §3.2.1). The denoiser x_θ(x_t, t) puts zero mass on the mask
token ("zero masking probabilities") and copies unmasked tokens ("carry-over unmasking"):
:func:`subs_log_probs`. With it, the continuous-time NELBO of the absorbing process (MDLM eq. 10,
MD4 eq. 5) is

    NELBO(x0) = ∫₀¹ w(t) · E_{x_t ~ q(·|x0)} [ Σ_{ℓ: x_t^ℓ = m} −log x_θ(x_t, t)_ℓ[x0^ℓ] ] dt,
    w(t) = −α′(t)/(1 − α(t))    (1/t for the linear schedule α = 1 − t).

Noise-level sampling. A one-sample estimate draws t ~ U[t_lo, t_hi] and keeps the schedule's
weight w(t) (MDLM, BD3-LM). Its expectation is (t_hi − t_lo)⁻¹ ∫_{t_lo}^{t_hi} w(t) E_t[…] dt,
which is the NELBO exactly only for [t_lo, t_hi] = [0, 1]. A floor ``t_min`` > 0 is needed in
training: for the linear schedule the estimate's second moment ∫ w(t)²(1 − α) dt = ∫ dt/t
diverges at t → 0. With t_lo = t_min the expectation is the NELBO up to O(t_min) (exactly the
NELBO for a single token and the linear schedule, where w(t)(1 − α(t)) = 1). Times are drawn
antithetically by default (MDLM's low-discrepancy sampler: t_i = (u + i/n) mod 1 over the n
draws of the batch, one uniform u), or i.i.d. (``time_sampling="uniform"``). For an evaluation
estimate of the exact NELBO use :func:`genspace.discrete.likelihood.nelbo`.

**Block diffusion** (Arriola et al. 2025, BD3-LM): the sequence is cut into
blocks of size b′; log p(x) = Σ_b log p(x^b | x^{<b}) and each block term is bounded by a masked
NELBO with its own t_b, conditioned on the clean previous blocks. All blocks are trained at once
on the concatenation [x_t ; x0] (length 2L, both halves with positions 0..L−1) under the mask of
:func:`bd3_attention_mask`. Clipped schedules: BD3-LM draws the masking rate 1 − α ~ U[β, ω]
with the linear schedule, i.e. t_b ~ U[β, ω] (for other schedules this module clips t), and keeps
the weight w(t_b). By the expectation above the clipped loss is (ω − β)⁻¹ ∫_β^ω w(t) E_t[…] dt
per block: a reweighted partial integral, NOT the NELBO and not a bound on log p in general (it
is the NELBO for β = 0, ω = 1, up to the t_min floor); :attr:`TokenLoss.estimator` says which.
β = ω is allowed (a fixed t; with β = ω = 1 and block size 1 every token is masked, w(1) = 1
for the linear schedule, and the loss is exactly the AR NLL of the block model — BD3-LM's
"full masking" for L′ = 1).

**Autoregressive**: −Σ_ℓ log p(x^ℓ | x^{<ℓ}) over ALL L tokens, the first one predicted from a
start token prepended to the input (``start_id``: use the tokenizer's ``mask_id``, a token the
AR model never has to produce). The start token is given probability 0 (its logit −inf) at every
output, as SUBS does with the mask: the AR and diffusion models then share one output space and
their per-token NLL / NELBO compare directly.

Padding and prompts: ``valid`` (B, L) bool marks real tokens (False: padding, never noised and
not scored); ``keep`` (B, L) bool marks a prompt (never noised and not scored, LLaDA SFT,
Nie et al. 2025). The network still sees padding tokens as tokens.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Optional

import torch

from genspace.core.random import Generator, StackedGenerator, rand
from genspace.discrete.schedules import Schedule, get_schedule

__all__ = [
    "TokenLoss",
    "subs_log_probs",
    "token_nll",
    "sample_times",
    "masked_nelbo",
    "block_nelbo",
    "ar_nll",
    "bd3_attention_mask",
    "bd3_positions",
    "masked_logits_fn",
    "bd3_logits_fn",
    "causal_logits_fn",
    "subs_log_probs_fn",
    "TIME_SAMPLING",
]

TIME_SAMPLING = ("antithetic", "uniform")


@dataclass(frozen=True)
class TokenLoss:
    """Unreduced per-sequence loss terms of a token objective.

    Attributes:
        nll: (B,) the loss in nats per sequence (NELBO or NLL summed over scored positions).
        n_tokens: (B,) number of scored positions (valid and not prompt), as a float tensor.
        t: (B,) or (B, n_blocks) the sampled times (None for AR).
        estimator: how ``nll`` relates to log p (e.g. "masked NELBO, t ~ U[0.001, 1]").
    """

    nll: torch.Tensor
    n_tokens: torch.Tensor
    t: Optional[torch.Tensor]
    estimator: str

    @property
    def per_token(self) -> torch.Tensor:
        """(B,) nats per scored token (0 for a sequence with nothing scored)."""
        return self.nll / self.n_tokens.clamp_min(1.0)


# ----------------------------------------------------------------------------------------------
# SUBS and per-token likelihoods


def _neg_inf_mask_logits(logits: torch.Tensor, forbid: int, dtype: Optional[torch.dtype]) -> torch.Tensor:
    if dtype is None:
        dtype = torch.promote_types(logits.dtype, torch.float32)
    logits = logits.to(dtype)
    col = torch.zeros(logits.shape[-1], dtype=torch.bool, device=logits.device)
    col[forbid] = True
    return logits.masked_fill(col, float("-inf"))  # (…, V), column `forbid` at −inf


def subs_log_probs(logits: torch.Tensor, x_t: torch.Tensor, mask_id: int, *, dtype: Optional[torch.dtype] = None) -> torch.Tensor:
    """log x_θ of the SUBS parameterization (MDLM §3.2.1): (B, L, V) log-probabilities.

    At masked positions (x_t = m): log_softmax of the logits with the mask token's logit at −inf
    (zero masking probability). At unmasked positions: the one-hot of x_t (log-prob 0 at x_t,
    −inf elsewhere; carry-over unmasking).

    Args:
        logits: (B, L, V) raw network outputs.
        x_t: (B, L) int64 noised tokens.
        mask_id: the mask token's id (< V).
        dtype: computation dtype (default: the logits' dtype, at least float32).
    """
    if logits.shape[:-1] != x_t.shape:
        raise ValueError(f"logits {tuple(logits.shape)} do not match x_t {tuple(x_t.shape)} (expected (B, L, V) and (B, L))")
    if not 0 <= mask_id < logits.shape[-1]:
        raise ValueError(f"mask_id {mask_id} is outside the {logits.shape[-1]} logits")
    logp = torch.log_softmax(_neg_inf_mask_logits(logits, mask_id, dtype), dim=-1)  # (B, L, V)
    ids = torch.arange(logits.shape[-1], device=logits.device)
    carry = torch.where(ids == x_t[..., None], 0.0, float("-inf")).to(logp.dtype)  # (B, L, V) one-hot in log space
    return torch.where((x_t == mask_id)[..., None], logp, carry)


def token_nll(logits: torch.Tensor, x0: torch.Tensor, forbid: int, *, dtype: Optional[torch.dtype] = None) -> torch.Tensor:
    """−log softmax(logits with logit ``forbid`` at −inf)[x0]: (B, L, V), (B, L) → (B, L).

    At masked positions this is −log x_θ(x_t)[x0] of SUBS (``forbid`` = mask id); for AR it is
    the next-token NLL with the start token excluded.
    """
    logp = torch.log_softmax(_neg_inf_mask_logits(logits, forbid, dtype), dim=-1)  # (B, L, V)
    return -logp.gather(-1, x0[..., None]).squeeze(-1)  # (B, L)


# ----------------------------------------------------------------------------------------------
# noise levels


def sample_times(shape, *, generator: Generator = None, device=None, sampling: str = "antithetic") -> torch.Tensor:
    """Uniform [0, 1) draws of ``shape`` (float64): antithetic / low-discrepancy or i.i.d.

    ``"antithetic"``: u_i = (u + i/n) mod 1 for i = 0..n−1 over the n = numel entries (row-major),
    one uniform u (MDLM's sampler; each u_i is marginally U[0, 1), and the set is evenly spread).
    With a StackedGenerator u comes from the first sequence's generator.
    """
    if sampling == "uniform":
        return rand(shape, generator=generator, dtype=torch.float64, device=device)
    if sampling != "antithetic":
        raise ValueError(f"unknown time_sampling {sampling!r}; choose one of {list(TIME_SAMPLING)}")
    shape = tuple(shape)
    n = 1
    for s in shape:
        n *= s
    if isinstance(generator, StackedGenerator):
        u0 = rand((len(generator),), generator=generator, dtype=torch.float64, device=device)[:1]
    else:
        u0 = rand((1,), generator=generator, dtype=torch.float64, device=device)
    grid = torch.arange(n, dtype=torch.float64, device=u0.device) / n  # (n,)
    return torch.remainder(u0 + grid, 1.0).reshape(shape)


def _check_tokens(x0: torch.Tensor, name: str = "x0") -> None:
    if not torch.is_tensor(x0) or x0.ndim != 2 or x0.is_floating_point() or x0.dtype == torch.bool:
        shape = tuple(x0.shape) if torch.is_tensor(x0) else type(x0).__name__
        raise ValueError(f"{name} must be an integer tensor of shape (B, L), got {shape}")


def _masks(x0: torch.Tensor, valid: Optional[torch.Tensor], keep: Optional[torch.Tensor]):
    """(never_noised, scored) (B, L) bool from the padding mask ``valid`` and the prompt mask ``keep``."""
    never = torch.zeros_like(x0, dtype=torch.bool)
    for name, m in (("valid", valid), ("keep", keep)):
        if m is not None and (not torch.is_tensor(m) or m.shape != x0.shape or m.dtype != torch.bool):
            shape = tuple(m.shape) if torch.is_tensor(m) else type(m).__name__
            raise ValueError(f"{name} must be a bool tensor of shape {tuple(x0.shape)}, got {shape}")
    if valid is not None:
        never = never | ~valid
    if keep is not None:
        never = never | keep
    return never, ~never


def _absorbing(process) -> int:
    if getattr(process, "kind", None) != "absorbing" or getattr(process, "mask_id", None) is None:
        raise ValueError(f"this objective needs the absorbing (masked) process, got {process!r}")
    return int(process.mask_id)


def _window(t_lo: float, t_hi: float) -> None:
    if not (0.0 <= t_lo <= t_hi <= 1.0 and t_hi > 0.0):
        raise ValueError(f"the noise window must satisfy 0 <= t_lo <= t_hi <= 1, t_hi > 0; got [{t_lo}, {t_hi}]")


# ----------------------------------------------------------------------------------------------
# masked diffusion


def masked_nelbo(
    logits_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    x0: torch.Tensor,
    *,
    process,
    schedule: Schedule | str = "linear",
    generator: Generator = None,
    t: Optional[torch.Tensor] = None,
    t_min: float = 1e-3,
    time_sampling: str = "antithetic",
    valid: Optional[torch.Tensor] = None,
    keep: Optional[torch.Tensor] = None,
) -> TokenLoss:
    """One-sample masked-diffusion NELBO per sequence (MDLM eq. 10–11; MD4 eq. 5), unreduced.

    nll_i = w(t_i) · Σ_{ℓ scored, x_t^ℓ = m} −log x_θ(x_t, t_i)_ℓ[x0^ℓ], t_i ~ U[t_min, 1],
    x_t ~ q(x_t | x0) of the absorbing ``process``. Its expectation is
    (1 − t_min)⁻¹ ∫_{t_min}^1 w(t) E_t[…] dt (module doc), the NELBO up to O(t_min).

    Args:
        logits_fn: ``(x_t (B, L), t (B,) float64) -> (B, L, V)`` raw logits (SUBS applied here).
        x0: (B, L) int64 clean tokens (data ids).
        process: an :class:`~genspace.discrete.processes.AbsorbingProcess` (its ``mask_id``).
        schedule: α(t) (a :class:`Schedule` or a name).
        generator: source of t and of the masks.
        t: (B,) explicit times in (0, 1] (then nothing is drawn for t).
        t_min: floor of the sampled t.
        time_sampling: ``"antithetic"`` or ``"uniform"``.
        valid: (B, L) bool, False at padding (not noised, not scored).
        keep: (B, L) bool prompt mask (not noised, not scored).
    """
    _check_tokens(x0)
    mask_id = _absorbing(process)
    schedule = get_schedule(schedule)
    b = x0.shape[0]
    never, scored = _masks(x0, valid, keep)
    if t is None:
        if not 0.0 <= t_min < 1.0:
            raise ValueError(f"t_min must be in [0, 1), got {t_min}")
        t = t_min + (1.0 - t_min) * sample_times((b,), generator=generator, device=x0.device, sampling=time_sampling)
        label = f"masked NELBO, t ~ U[{t_min:g}, 1] ({time_sampling}), w(t) of the {schedule.name} schedule"
    else:
        t = torch.as_tensor(t, dtype=torch.float64, device=x0.device).expand(b)
        label = "masked NELBO integrand at given t"
    alpha = schedule.alpha(t)[:, None]  # (B, 1)
    x_t = process.sample(x0, alpha, generator=generator, keep=never)  # (B, L)
    logits = logits_fn(x_t, t)  # (B, L, V)
    nll_tok = token_nll(logits, x0, mask_id)  # (B, L)
    hit = scored & (x_t == mask_id)
    w = schedule.weight(t).to(nll_tok.dtype)  # (B,)
    nll = w * torch.where(hit, nll_tok, torch.zeros_like(nll_tok)).sum(-1)  # (B,)
    return TokenLoss(nll, scored.sum(-1).to(nll.dtype), t, label)


# ----------------------------------------------------------------------------------------------
# block diffusion (BD3-LM)


def bd3_attention_mask(length: int, block_size: int, *, device=None) -> torch.Tensor:
    """The BD3-LM vectorized training mask over [x_t ; x0]: (2L, 2L) bool, True = may attend.

    Rows/columns 0..L−1 are the noisy stream x_t, L..2L−1 the clean stream x0; block(i) = ⌊i/b′⌋
    (the last block may be shorter). Arriola et al. 2025 (BD3-LM), vectorized training:

    - x_t → x_t (M_BD, block-diagonal): block(j) = block(i), bidirectional within the block;
    - x_t → x0 (M_OBC, offset block-causal): block(j) < block(i), the clean previous blocks;
    - x0 → x0 (M_BC, block-causal): block(j) ≤ block(i);
    - x0 → x_t: never.
    """
    if length < 1 or block_size < 1:
        raise ValueError(f"need length >= 1 and block_size >= 1, got {length}, {block_size}")
    blk = torch.arange(length, device=device) // block_size  # (L,)
    qi, kj = blk[:, None], blk[None, :]  # (L, 1), (1, L)
    top = torch.cat([qi == kj, kj < qi], dim=1)  # (L, 2L): x_t queries
    bottom = torch.cat([torch.zeros(length, length, dtype=torch.bool, device=device), kj <= qi], dim=1)  # (L, 2L)
    return torch.cat([top, bottom], dim=0)  # (2L, 2L)


def bd3_positions(length: int, *, device=None) -> torch.Tensor:
    """Position ids of [x_t ; x0]: both streams get 0..L−1 → (2L,)."""
    pos = torch.arange(length, device=device)
    return torch.cat([pos, pos])


def block_nelbo(
    bd3_fn: Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor],
    x0: torch.Tensor,
    *,
    block_size: int,
    process,
    schedule: Schedule | str = "linear",
    generator: Generator = None,
    t: Optional[torch.Tensor] = None,
    clip: tuple[float, float] = (0.0, 1.0),
    t_min: float = 1e-3,
    time_sampling: str = "antithetic",
    valid: Optional[torch.Tensor] = None,
    keep: Optional[torch.Tensor] = None,
) -> TokenLoss:
    """One-sample block-diffusion NELBO per sequence (BD3-LM), unreduced.

    nll_i = Σ_b w(t_{i,b}) Σ_{ℓ ∈ block b scored, x_t^ℓ = m} −log x_θ[x0^ℓ], one t per block,
    t_{i,b} ~ U[max(β, t_min), ω] with (β, ω) = ``clip``, antithetic over all B·n_blocks draws.

    Args:
        bd3_fn: ``(x_t (B, L), x0 (B, L), t (B, L) per token) -> (B, L, V)`` logits of the noisy
            stream, each block b seeing x_t's block b and x0's blocks < b
            (:func:`bd3_logits_fn`).
        x0: (B, L) int64 clean tokens.
        block_size: b′ ≥ 1 (L need not be a multiple; the last block is then shorter).
        t: (B, n_blocks) explicit times (nothing drawn for t).
        clip: BD3-LM's clipped noise window [β, ω] (default the full [0, 1]; see module doc:
            with β > 0 or ω < 1 the loss is not the NELBO).
        Other arguments as in :func:`masked_nelbo`.
    """
    _check_tokens(x0)
    mask_id = _absorbing(process)
    schedule = get_schedule(schedule)
    if block_size < 1:
        raise ValueError(f"block_size must be >= 1, got {block_size}")
    b, length = x0.shape
    n_blocks = -(-length // block_size)
    never, scored = _masks(x0, valid, keep)
    if t is None:
        _window(float(clip[0]), float(clip[1]))
        lo, hi = min(max(float(clip[0]), t_min), float(clip[1])), float(clip[1])
        u = sample_times((b, n_blocks), generator=generator, device=x0.device, sampling=time_sampling)
        t = lo + (hi - lo) * u  # (B, n_blocks)
        exact = clip[0] == 0.0 and clip[1] == 1.0
        label = (
            f"block NELBO (block {block_size}), t ~ U[{lo:g}, {hi:g}] per block ({time_sampling}), "
            f"w(t) of the {schedule.name} schedule" + ("" if exact else "; clipped window: NOT the NELBO")
        )
    else:
        t = torch.as_tensor(t, dtype=torch.float64, device=x0.device)
        if tuple(t.shape) != (b, n_blocks):
            raise ValueError(f"t must have shape ({b}, {n_blocks}) (one time per block), got {tuple(t.shape)}")
        label = f"block NELBO (block {block_size}) integrand at given t"
    t_tok = t.repeat_interleave(block_size, dim=1)[:, :length]  # (B, n_blocks·b′) → (B, L)
    x_t = process.sample(x0, schedule.alpha(t_tok), generator=generator, keep=never)  # (B, L)
    logits = bd3_fn(x_t, x0, t_tok)  # (B, L, V)
    nll_tok = token_nll(logits, x0, mask_id)  # (B, L)
    hit = scored & (x_t == mask_id)
    w = schedule.weight(t_tok).to(nll_tok.dtype)  # (B, L)
    nll = torch.where(hit, w * nll_tok, torch.zeros_like(nll_tok)).sum(-1)  # (B,)
    return TokenLoss(nll, scored.sum(-1).to(nll.dtype), t, label)


# ----------------------------------------------------------------------------------------------
# autoregressive


def ar_nll(
    logits_fn: Callable[[torch.Tensor], torch.Tensor],
    x: torch.Tensor,
    *,
    start_id: int,
    valid: Optional[torch.Tensor] = None,
    keep: Optional[torch.Tensor] = None,
) -> TokenLoss:
    """AR cross-entropy −Σ_ℓ log p(x^ℓ | start, x^{<ℓ}) per sequence over all L tokens, unreduced.

    The input is [start_id, x^0, …, x^{L−2}] (B, L); output ℓ predicts x^ℓ with the start token's
    probability set to 0. ``keep`` (a prompt) and padding (``valid`` False) are conditioned on but
    not scored.

    Args:
        logits_fn: ``tokens (B, L) -> (B, L, V)`` under a causal mask (:func:`causal_logits_fn`).
        x: (B, L) int64 tokens.
        start_id: the start token (the tokenizer's ``mask_id`` is the intended choice).
    """
    _check_tokens(x, "x")
    _, scored = _masks(x, valid, keep)
    start = torch.full_like(x[:, :1], start_id)
    inp = torch.cat([start, x[:, :-1]], dim=1)  # (B, L): shifted right by one
    logits = logits_fn(inp)  # (B, L, V)
    if not 0 <= start_id < logits.shape[-1]:
        raise ValueError(f"start_id {start_id} is outside the {logits.shape[-1]} logits")
    nll_tok = token_nll(logits, x, start_id)  # (B, L)
    nll = torch.where(scored, nll_tok, torch.zeros_like(nll_tok)).sum(-1)  # (B,)
    return TokenLoss(nll, scored.sum(-1).to(nll.dtype), None, "AR NLL (exact)")


# ----------------------------------------------------------------------------------------------
# adapters from a Transformer to the functions above


def _time_conditioned(net) -> bool:
    cfg = getattr(net, "config", None)
    return bool(getattr(cfg, "time_conditioning", True))


def masked_logits_fn(net) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    """``(x_t, t) -> net(x_t, t, attn_mask="bidirectional")``: the masked-diffusion model function."""

    def fn(x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return net(x_t, t, attn_mask="bidirectional")

    return fn


def subs_log_probs_fn(logits_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor], mask_id: int):
    """``(x_t, t) -> subs_log_probs(logits_fn(x_t, t), x_t, mask_id)``: SUBS log-probabilities (B, L, V).

    The model function of the masked-diffusion samplers (:mod:`genspace.discrete.samplers`), e.g.
    ``subs_log_probs_fn(masked_logits_fn(net), mask_id)``.
    """

    def fn(x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return subs_log_probs(logits_fn(x_t, t), x_t, mask_id)

    return fn


def causal_logits_fn(net) -> Callable[[torch.Tensor], torch.Tensor]:
    """``tokens -> net(tokens, attn_mask="causal")``: the AR model function (t unused: 0)."""

    def fn(tokens: torch.Tensor) -> torch.Tensor:
        t = torch.zeros(tokens.shape[0], device=tokens.device) if _time_conditioned(net) else None
        return net(tokens, t, attn_mask="causal")

    return fn


def bd3_logits_fn(net, block_size: int) -> Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]:
    """The BD3-LM training call ``(x_t, x0, t (B, L)) -> (B, L, V)`` on a Transformer.

    Feeds [x_t ; x0] (B, 2L) with position ids [0..L−1 ; 0..L−1], the mask of
    :func:`bd3_attention_mask`, time t per token for x_t and 0 for x0, and applies the head to
    the x_t half only. The mask is built once per (L, device).
    """
    if block_size < 1:
        raise ValueError(f"block_size must be >= 1, got {block_size}")
    made: dict = {}

    def fn(x_t: torch.Tensor, x0: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        length = x_t.shape[1]
        key = (length, x_t.device)
        if key not in made:
            made.clear()
            made[key] = (bd3_attention_mask(length, block_size, device=x_t.device), bd3_positions(length, device=x_t.device))
        mask, pos = made[key]
        tokens = torch.cat([x_t, x0], dim=1)  # (B, 2L)
        tt = torch.cat([t, torch.zeros_like(t)], dim=1) if _time_conditioned(net) else None  # (B, 2L)
        return net(tokens, tt, positions=pos, attn_mask=mask, output_slice=slice(0, length))  # (B, L, V)

    return fn
