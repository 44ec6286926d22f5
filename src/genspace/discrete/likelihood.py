"""Likelihood evaluation of token models: an unbiased NELBO estimator with a declared method, and AR NLL.

**The estimator** (:func:`nelbo`). The masked-diffusion NELBO (MDLM eq. 10; per block for BD3-LM)
is, with the masking rate a = 1 − α(t) as the variable (da = −α′ dt),

    NELBO(x0) = ∫₀¹ −α′/(1−α) · E_t[S] dt = ∫₀^{a₁} (1/a) · E_a[S] da,     a₁ = 1 − α(1),
    S = Σ_{ℓ masked} −log x_θ(x_t, t)_ℓ[x0^ℓ],  each token masked independently w.p. a.

Sampling t uniformly and weighting by w(t) gives an unbiased estimate whose variance is INFINITE
for the usual schedules (its second moment ∫ w²(1 − α) dt = ∫ dt/t for the linear one), which
is why training floors t. For evaluation we substitute a = a₁·u², da = 2a₁u du:

    NELBO(x0) = ∫₀¹ (2/u) · E_{a = a₁u²}[S] du,

so one draw u ∈ (0, 1], the mask at rate a₁u² and the time t = t(α = 1 − a₁u²) give the estimate
(2/u)·S, unbiased for the full integral over t ∈ (0, 1] and of finite variance (E[S²] = O(u²)).
u is stratified by default: for t-point j of ``n_t``, u_j = (j + 1 − v_j)/n_t, v_j ~ U[0, 1).
The per-sequence estimate is the mean over the n_t points, and its standard error the i.i.d.
formula std_j / √n_t (conservative under stratification, which only lowers the variance).

For a schedule with α(1) > 0 (``log-linear``) the integral runs over t ∈ [0, 1] as above and,
as in MDLM, the prior term at t = 1 is not added. In block mode (``block_size``) every block
gets its own u (same stratum j, independent v), its tokens are masked at its own rate and
conditioned on the clean previous blocks through the BD3-LM model function.

Perplexity bound: exp(NELBO per token) ≥ exp(NLL per token) of the model (labelled as a bound).
:func:`ar_likelihood` gives the exact AR NLL in the same result type, for direct comparison.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Optional

import torch

from genspace.core.random import Generator, rand
from genspace.discrete.objectives import _absorbing, _check_tokens, _masks, ar_nll, token_nll
from genspace.discrete.schedules import Schedule, get_schedule

__all__ = ["LikelihoodResult", "nelbo", "ar_likelihood"]


@dataclass(frozen=True)
class LikelihoodResult:
    """Per-sequence negative log-likelihood (or its bound) of a batch, with the method stated.

    Attributes:
        per_sequence: (B,) nats per sequence (the NELBO estimate, or the exact NLL).
        stderr: (B,) Monte-Carlo standard error of ``per_sequence`` (0 for an exact value).
        n_tokens: (B,) scored tokens per sequence.
        estimator: how it was computed, e.g. "NELBO: stratified u, 128 t-points × 1 mask draw, float64".
        is_bound: True for a NELBO (an upper bound on the NLL), False for an exact NLL.
    """

    per_sequence: torch.Tensor
    stderr: torch.Tensor
    n_tokens: torch.Tensor
    estimator: str
    is_bound: bool

    @property
    def per_token(self) -> torch.Tensor:
        """Σ per_sequence / Σ n_tokens: nats per token over the batch (0-d tensor)."""
        return self.per_sequence.sum() / self.n_tokens.sum().clamp_min(1.0)

    @property
    def per_token_stderr(self) -> torch.Tensor:
        """Monte-Carlo standard error of :attr:`per_token` (sequences' errors independent)."""
        return self.stderr.pow(2).sum().sqrt() / self.n_tokens.sum().clamp_min(1.0)

    @property
    def perplexity(self) -> torch.Tensor:
        """exp(per_token): a perplexity BOUND when ``is_bound``, the perplexity otherwise."""
        return self.per_token.exp()

    def summary(self) -> dict:
        """Plain floats and the labels, for logs and JSON."""
        return {
            "nll_per_token" if not self.is_bound else "nelbo_per_token": float(self.per_token),
            "stderr_per_token": float(self.per_token_stderr),
            "perplexity_bound" if self.is_bound else "perplexity": float(self.perplexity),
            "bits_per_token": float(self.per_token) / math.log(2.0),
            "tokens": float(self.n_tokens.sum()),
            "sequences": int(self.per_sequence.shape[0]),
            "estimator": self.estimator,
        }


@torch.no_grad()
def nelbo(
    logits_fn: Callable[..., torch.Tensor],
    x0: torch.Tensor,
    *,
    schedule: Schedule | str,
    process,
    n_t: int = 128,
    stratified: bool = True,
    generator: Generator = None,
    dtype: torch.dtype = torch.float64,
    block_size: Optional[int] = None,
    t_per_call: int = 1,
    valid: Optional[torch.Tensor] = None,
    keep: Optional[torch.Tensor] = None,
) -> LikelihoodResult:
    """Unbiased Monte-Carlo NELBO per sequence (module doc), with its standard error.

    Args:
        logits_fn: masked diffusion: ``(x_t (B, L), t (B,)) -> (B, L, V)``; block diffusion
            (``block_size`` given): ``(x_t, x0, t (B, L) per token) -> (B, L, V)``, as in
            :func:`~genspace.discrete.objectives.block_nelbo`.
        x0: (B, L) int64 tokens to evaluate.
        schedule: α(t) of the model (enters through t(α) if the model is time-conditioned).
        process: the absorbing process (its ``mask_id``).
        n_t: t-points per sequence (one mask draw each); ≥ 2 for a standard error.
        stratified: stratify u over the n_t points (else i.i.d. u).
        generator: a torch.Generator or StackedGenerator (one per sequence).
        dtype: dtype of the log-softmax and the sums (float64 by default).
        block_size: evaluate the BD3-LM NELBO with this block size.
        t_per_call: t-points evaluated in one network call (a batch of t_per_call·B rows).
        valid, keep: padding and prompt masks (not noised, not scored).
    """
    _check_tokens(x0)
    mask_id = _absorbing(process)
    schedule = get_schedule(schedule)
    if n_t < 1 or t_per_call < 1:
        raise ValueError(f"need n_t >= 1 and t_per_call >= 1, got n_t={n_t}, t_per_call={t_per_call}")
    if block_size is not None and block_size < 1:
        raise ValueError(f"block_size must be None or >= 1, got {block_size}")
    b, length = x0.shape
    device = x0.device
    never, scored = _masks(x0, valid, keep)
    a1 = float(1.0 - schedule.alpha(torch.tensor(1.0, dtype=torch.float64)))  # 1 − α(1)
    if not a1 > 0:
        raise ValueError(f"schedule {schedule.name!r} never masks (α(1) = 1)")
    u_shape = (b,) if block_size is None else (b, -(-length // block_size))
    values = []  # n_t tensors (B,)
    for j0 in range(0, n_t, t_per_call):
        js = range(j0, min(j0 + t_per_call, n_t))
        xs, ts, us = [], [], []
        for j in js:
            v = rand(u_shape, generator=generator, dtype=torch.float64, device=device)
            u = (j + 1.0 - v) / n_t if stratified else 1.0 - v  # (B,) or (B, n_blocks) in (0, 1]
            if block_size is not None:
                u = u.repeat_interleave(block_size, dim=1)[:, :length]  # (B, L) per token
            alpha = 1.0 - a1 * u * u
            t = schedule.t_of_alpha(alpha).clamp(0.0, 1.0)
            xs.append(process.sample(x0, alpha if alpha.ndim == 2 else alpha[:, None], generator=generator, keep=never))
            ts.append(t)
            us.append(u)
        x_t, t, u = torch.cat(xs), torch.cat(ts), torch.cat(us)  # (k·B, L), (k·B[, L]), (k·B[, L])
        x0k = x0.repeat(len(js), 1)  # (k·B, L)
        logits = logits_fn(x_t, t) if block_size is None else logits_fn(x_t, x0k, t)  # (k·B, L, V)
        nll_tok = token_nll(logits, x0k, mask_id, dtype=dtype)  # (k·B, L)
        hit = scored.repeat(len(js), 1) & (x_t == mask_id)
        w = (2.0 / u).to(dtype)  # (k·B,) or (k·B, L)
        if w.ndim == 1:
            w = w[:, None]
        f = torch.where(hit, w * nll_tok, torch.zeros_like(nll_tok)).sum(-1)  # (k·B,)
        values.extend(f.view(len(js), b).unbind(0))
    f = torch.stack(values)  # (n_t, B)
    mean = f.mean(0)  # (B,)
    stderr = f.std(0) / math.sqrt(n_t) if n_t > 1 else torch.full_like(mean, float("nan"))
    what = "NELBO" if block_size is None else f"block NELBO (block {block_size})"
    label = (
        f"{what}: {'stratified' if stratified else 'iid'} u, mask rate (1-α(1))·u², weight 2/u "
        f"(unbiased over t ∈ (0, 1], {schedule.name} schedule), {n_t} t-points × 1 mask draw, "
        f"{str(dtype).replace('torch.', '')}; stderr: iid formula"
        + (" (conservative under stratification)" if stratified else "")
    )
    return LikelihoodResult(mean, stderr, scored.sum(-1).to(dtype), label, True)


@torch.no_grad()
def ar_likelihood(
    logits_fn: Callable[[torch.Tensor], torch.Tensor],
    x: torch.Tensor,
    *,
    start_id: int,
    dtype: torch.dtype = torch.float64,
    valid: Optional[torch.Tensor] = None,
    keep: Optional[torch.Tensor] = None,
) -> LikelihoodResult:
    """Exact AR NLL per sequence (:func:`~genspace.discrete.objectives.ar_nll`) as a result (stderr 0)."""

    def fn(tokens: torch.Tensor) -> torch.Tensor:
        return logits_fn(tokens).to(dtype)

    loss = ar_nll(fn, x, start_id=start_id, valid=valid, keep=keep)
    nll = loss.nll.to(dtype)
    label = f"exact AR NLL, {str(dtype).replace('torch.', '')}"
    return LikelihoodResult(nll, torch.zeros_like(nll), loss.n_tokens.to(dtype), label, False)
