"""Masked-diffusion token samplers as plain functions of a model function.

Every sampler takes a model function ``log_probs_fn(x_t, t) -> (B, L, V)``: log-probabilities of
x0 given x_t in SUBS form (Sahoo et al. 2024, MDLM: −inf on the mask column, unmasked
positions one-hot on themselves). ``x_t`` is (B, L) int64; ``t`` is (B,) float32 on the device of
``x_t`` (cast it in the model adapter if the network wants another dtype). Conditioning reaches
the model through closures (``functools.partial``); :func:`classifier_free_guidance` wraps one
into another.

``x_init`` is a (B, L) integer tensor holding ``mask_id`` where tokens are to be generated and
fixed tokens elsewhere (prefix prompts, infilling): fixed tokens are never changed. A tuple
``(n, length)`` means n fully masked sequences (on the CPU). Every sampler returns
``(tokens (B, L) int64, info)`` with info = {"nfe" (model calls, counted by a wrapper), "steps",
"seconds", "tokens_per_s" (generated tokens / seconds), ...}.

Samplers (time runs t = 1 fully masked → t = 0 clean; α(t) from
:mod:`genspace.discrete.schedules`):

- :func:`sample_ancestral` — the reverse process of absorbing diffusion on a uniform time grid
  (Austin et al. 2021, D3PM; Sahoo et al. 2024, MDLM) with MDLM's caching of time-independent models;
- :func:`sample_first_hitting` — the first-hitting sampler (Zheng et al. 2024): exact
  unmasking times, one token per model call; exact for an exact denoiser;
- :func:`sample_topk` — fixed-step confidence unmasking (MaskGIT, Chang et al. 2022; LLaDA,
  Nie et al. 2025, "low-confidence remasking") with orders low-confidence, random,
  margin, entropy and dilated (Luxembourg et al. 2025);
- :func:`sample_threshold` — confidence-threshold parallel decoding (Fast-dLLM, Wu et al. 2025);
- :func:`sample_semi_ar` — LLaDA's semi-autoregressive blocks around either of the two above.

Randomness comes only from ``generator`` (a torch.Generator or a StackedGenerator with one seed
per sequence); every draw has the batch as its leading axis and a shape that does not depend on
the other sequences, so with a StackedGenerator a sequence is the same whatever batch it is
drawn in (given a model that treats rows independently). Categorical draws use the float64
Gumbel-max of :func:`~genspace.discrete.categorical.sample_categorical`.
"""

from __future__ import annotations

import importlib
import inspect
import math
import time
from dataclasses import dataclass
from typing import Callable, Optional, Union

import torch

from genspace.core.random import Generator, rand
from genspace.discrete.categorical import sample_categorical
from genspace.discrete.schedules import Schedule, get_schedule

__all__ = [
    "CountingModel",
    "TokenMethod",
    "bit_reversal_key",
    "dilated_scores",
    "classifier_free_guidance",
    "masked_tokens",
    "sample_ancestral",
    "sample_first_hitting",
    "sample_semi_ar",
    "sample_threshold",
    "sample_tokens",
    "sample_topk",
    "token_method_names",
    "token_methods",
]

F64 = torch.float64
ORDERS = ("low-confidence", "random", "margin", "entropy", "dilated")
LogProbsFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


# ----------------------------------------------------------------------------- inputs and counting
def masked_tokens(n: int, length: int, mask_id: int, *, device=None) -> torch.Tensor:
    """(n, length) int64 filled with ``mask_id``: an unconditional start."""
    return torch.full((int(n), int(length)), int(mask_id), dtype=torch.long, device=device)


def _check_mask_id(mask_id) -> int:
    if isinstance(mask_id, bool) or not isinstance(mask_id, int) or mask_id < 0:
        raise ValueError(f"mask_id must be a non-negative integer (the tokenizer's mask token), got {mask_id!r}")
    return mask_id


def _prepare(x_init, mask_id: int, vocab_size: Optional[int] = None) -> torch.Tensor:
    """Validate ``x_init`` ((B, L) integer tensor or (n, length)) and return an int64 copy.

    With ``vocab_size`` (V of the model) every id and the mask id must be < V; without it the
    ids are checked against the model's output on its first call (:class:`CountingModel`).
    """
    if vocab_size is not None:
        vocab_size = _check_int("vocab_size", vocab_size)
        if mask_id >= vocab_size:
            raise ValueError(f"mask_id {mask_id} is outside the vocabulary of {vocab_size} ids")
    if isinstance(x_init, (tuple, list)):
        if len(x_init) != 2 or not all(isinstance(v, int) and not isinstance(v, bool) and v >= 1 for v in x_init):
            raise ValueError(f"x_init as a shape must be (n, length) with positive integers, got {x_init!r}")
        return masked_tokens(x_init[0], x_init[1], mask_id)
    if not torch.is_tensor(x_init):
        raise ValueError(f"x_init must be a (B, L) integer tensor or a shape (n, length), got {type(x_init).__name__}")
    if x_init.dtype == torch.bool or x_init.is_floating_point() or x_init.is_complex():
        raise ValueError(f"x_init must hold integer token ids, got dtype {x_init.dtype}")
    if x_init.ndim != 2 or x_init.shape[0] < 1 or x_init.shape[1] < 1:
        raise ValueError(f"x_init must have shape (B, L) with B, L >= 1, got {tuple(x_init.shape)}")
    x = x_init.to(torch.long).clone()
    if x.numel() and int(x.min()) < 0:
        raise ValueError(f"x_init holds a negative token id {int(x.min())}")
    if vocab_size is not None and x.numel() and int(x.max()) >= vocab_size:
        raise ValueError(f"x_init holds token id {int(x.max())}, outside the vocabulary 0..{vocab_size - 1}")
    return x


def _check_int(name: str, value, minimum: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")
    return value


def _check_temperature(temperature) -> float:
    if not isinstance(temperature, (int, float)) or isinstance(temperature, bool) or not temperature >= 0:
        raise ValueError(f"temperature must be a number >= 0, got {temperature!r}")
    return float(temperature)


class CountingModel:
    """Wraps a model function ``fn(x_t, t) -> (B, L, V)``, counts its calls and checks its output.

    On the first call the vocabulary size V is read from the output; then every id of
    ``x_init`` other than the mask must be < ``data_limit`` (V by default) and, if
    ``mask_column``, ``mask_id`` must be < V (a SUBS model has a mask column). ValueError otherwise.
    """

    def __init__(
        self,
        fn: Callable,
        x_init: torch.Tensor,
        mask_id: Optional[int],
        *,
        mask_column: bool = True,
        data_limit: Optional[int] = None,
        vocab_size: Optional[int] = None,
    ) -> None:
        self.fn = fn
        self.nfe = 0
        self.vocab_size: Optional[int] = None
        self._expected = vocab_size
        self._x_init = x_init
        self._mask_id = mask_id
        self._mask_column = mask_column
        self._data_limit = data_limit

    def __call__(self, x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        out = self.fn(x_t, t)
        self.nfe += 1
        if not torch.is_tensor(out) or out.ndim != 3 or tuple(out.shape[:2]) != tuple(x_t.shape):
            raise ValueError(
                f"the model function must return (B, L, V) = ({x_t.shape[0]}, {x_t.shape[1]}, V), got "
                f"{tuple(out.shape) if torch.is_tensor(out) else type(out).__name__}"
            )
        if self.vocab_size is None:
            self.vocab_size = int(out.shape[-1])
            self._check_vocab()
        elif out.shape[-1] != self.vocab_size:
            raise ValueError(f"the model returned V = {out.shape[-1]} after V = {self.vocab_size}")
        return out

    def _check_vocab(self) -> None:
        v, m = self.vocab_size, self._mask_id
        if self._expected is not None and v != self._expected:
            raise ValueError(f"the model returned V = {v} columns, but vocab_size = {self._expected} was given")
        if self._mask_column and m is not None and m >= v:
            raise ValueError(f"mask_id {m} is outside the model's vocabulary of {v} ids")
        limit = v if self._data_limit is None else self._data_limit
        if limit > v:
            raise ValueError(f"the model returned V = {v} columns, fewer than the {limit} data tokens")
        x = self._x_init
        data = x if m is None else x[x != m]
        if data.numel() and int(data.max()) >= limit:
            raise ValueError(f"x_init holds token id {int(data.max())}, outside the vocabulary 0..{limit - 1}")


def _subs_guard(log_probs: torch.Tensor, mask_id: int) -> torch.Tensor:
    """float64 log-probabilities with the mask column at −inf, renormalized (a no-op on SUBS output)."""
    lp = log_probs.to(F64).clone()
    lp[..., mask_id] = -math.inf
    return torch.log_softmax(lp, dim=-1)


def _times(values: torch.Tensor, device) -> torch.Tensor:
    """The (B,) float32 time handed to the model."""
    return values.to(device=device, dtype=torch.float32)


def _info(model: CountingModel, steps: int, start: float, generated: int, **extra) -> dict:
    seconds = time.perf_counter() - start
    info = {
        "nfe": model.nfe,
        "steps": steps,
        "seconds": seconds,
        "tokens_per_s": generated / seconds if seconds > 0 else math.inf,
    }
    info.update(extra)
    return info


# ----------------------------------------------------------------------------- ancestral (D3PM / MDLM)
def sample_ancestral(
    log_probs_fn: LogProbsFn,
    x_init,
    *,
    mask_id: int,
    steps: int,
    generator: Generator = None,
    temperature: float = 1.0,
    schedule: Union[str, Schedule] = "linear",
    time_independent: bool = False,
    vocab_size: Optional[int] = None,
    callback: Optional[Callable[[dict], None]] = None,
):
    """Ancestral sampling of absorbing diffusion on the grid t_i = 1 − i/steps (D3PM; MDLM).

    From t to s < t each masked token is unmasked with probability (α_s − α_t)/(1 − α_t), its
    value drawn from p_θ(x0 | x_t) (MDLM eq. 7: the posterior q(x_s | x_t, x0) with x0 ~ p_θ); the
    last step (s = 0, α = 1) unmasks every remaining token. With ``time_independent=True`` (a
    model that ignores t; MDLM's caching) the network output is reused whenever the previous step
    changed no token: no call is made, and ``info["nfe"]`` shows it.

    Args:
        log_probs_fn: ``(x_t (B, L), t (B,)) -> (B, L, V)`` SUBS log-probabilities.
        x_init: (B, L) ids with ``mask_id`` to generate, or (n, length).
        steps: number of grid steps N ≥ 1.
        temperature: of the value draws (0: argmax).
        schedule: α(t) (name or Schedule); the grid is uniform in t.
        vocab_size: V of the model, to check ``x_init`` before any call (recommended: a real
            network may fail on an out-of-range id before its output can be checked). Every
            sampler here takes it.
        callback: called after each step with {"i", "x", "t", "t_next", "nfe"}.

    Returns:
        tokens (B, L), info {"nfe", "steps", "seconds", "tokens_per_s"}.
    """
    mask_id = _check_mask_id(mask_id)
    steps = _check_int("steps", steps)
    temperature = _check_temperature(temperature)
    schedule = get_schedule(schedule)
    x = _prepare(x_init, mask_id, vocab_size)
    model = CountingModel(log_probs_fn, x, mask_id, vocab_size=vocab_size)
    start, generated = time.perf_counter(), int((x == mask_id).sum())
    b, length = x.shape
    ts = torch.linspace(1.0, 0.0, steps + 1, dtype=F64)
    alphas = schedule.alpha(ts)
    alphas[-1] = 1.0  # α(0) = 1 exactly: the last step unmasks everything
    cache, stale, done = None, True, 0
    for i in range(steps):
        masked = x == mask_id
        if not masked.any():
            break
        if cache is None or stale or not time_independent:
            cache = _subs_guard(model(x, _times(ts[i].expand(b), x.device)), mask_id)
        p_unmask = float((alphas[i + 1] - alphas[i]) / (1.0 - alphas[i]))
        u = rand((b, length), generator=generator, dtype=F64, device=x.device)
        draw = sample_categorical(cache, generator=generator, temperature=temperature)  # (B, L)
        unmask = masked & (u < p_unmask)
        stale = bool(unmask.any())
        x = torch.where(unmask, draw, x)
        done = i + 1
        if callback is not None:
            callback({"i": i, "x": x, "t": float(ts[i]), "t_next": float(ts[i + 1]), "nfe": model.nfe})
    return x, _info(model, done, start, generated)


# ----------------------------------------------------------------------------- first hitting (Zheng et al. 2024)
def first_hitting_time(schedule: Schedule, t: torch.Tensor, n_masked: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
    """The next reveal time s < t of n masked tokens, by inversion: 1 − α_s = (1 − α_t)·u^{1/n}.

    (B,) float64 t and u, (B,) int n_masked → (B,) s; rows with n_masked = 0 keep t.
    """
    one_minus_alpha = (1.0 - schedule.alpha(t)) * u ** (1.0 / n_masked.clamp_min(1).to(F64))
    return torch.where(n_masked > 0, schedule.t_of_alpha(1.0 - one_minus_alpha).clamp(0.0, 1.0), t)


def topk_keep_count(schedule: Schedule, m_start: torch.Tensor, m_left: torch.Tensor, step, steps) -> torch.Tensor:
    """Tokens to unmask at 0-based step ``step`` of ``steps`` (tensors (B,) or ints) of a span that
    had ``m_start`` masked tokens, ``m_left`` still masked: the cumulative goal after a fraction
    r of the steps is ⌈m·(α(1−r) − α(1))/(1 − α(1))⌉, all after the last step, at least one per
    step, never more than are left. (B,) int64."""
    step = torch.as_tensor(step, device=m_start.device)
    steps = torch.as_tensor(steps, device=m_start.device)
    a1 = schedule.alpha(torch.tensor(1.0, dtype=F64))
    r_next = ((step + 1).to(F64) / steps.clamp_min(1).to(F64)).clamp(max=1.0)
    target = torch.ceil(m_start.to(F64) * (schedule.alpha(1.0 - r_next) - a1) / (1.0 - a1) - 1e-9).long()
    target = torch.where(step + 1 >= steps, m_start, target)
    return torch.minimum((target - (m_start - m_left)).clamp_min(1), m_left)


def sample_first_hitting(
    log_probs_fn: LogProbsFn,
    x_init,
    *,
    mask_id: int,
    generator: Generator = None,
    temperature: float = 1.0,
    schedule: Union[str, Schedule] = "linear",
    vocab_size: Optional[int] = None,
    callback: Optional[Callable[[dict], None]] = None,
):
    """First-hitting sampler (Zheng et al. 2024, "Masked diffusion models are secretly
    time-agnostic masked models and exploit inaccurate categorical sampling").

    With n tokens masked at time t, each one's masking time τ_i is (given τ_i ≤ t) distributed as
    P(τ_i ≤ s) = (1 − α_s)/(1 − α_t); the next unmasking time of the reverse process is their
    maximum, P(max ≤ s) = ((1 − α_s)/(1 − α_t))^n. It is drawn exactly by inversion,
    1 − α_s = (1 − α_t)·u^{1/n}, and one masked position, chosen uniformly, gets a value from
    p_θ(x0 | x_t) at time s. One model call per generated token: with an exact denoiser this is
    an exact sampler of the joint distribution (the chain rule in a uniformly random order).

    Args:
        log_probs_fn, x_init, mask_id, generator, temperature, vocab_size: as :func:`sample_ancestral`.
        schedule: α(t); it only sets the times passed to the model (the token sequence does not
            depend on it).
        callback: called after each unmasking with {"i", "x", "t" (B,), "nfe"}.

    Returns:
        tokens (B, L), info {"nfe", "steps", "seconds", "tokens_per_s"}.
    """
    mask_id = _check_mask_id(mask_id)
    temperature = _check_temperature(temperature)
    schedule = get_schedule(schedule)
    x = _prepare(x_init, mask_id, vocab_size)
    model = CountingModel(log_probs_fn, x, mask_id, vocab_size=vocab_size)
    start, generated = time.perf_counter(), int((x == mask_id).sum())
    b, length = x.shape
    rows = torch.arange(b, device=x.device)
    t = torch.ones(b, dtype=F64, device=x.device)
    i = 0
    while True:
        masked = x == mask_id
        n = masked.sum(-1)  # (B,)
        if int(n.max()) == 0:
            break
        active = n > 0
        w = rand((b, 1 + length), generator=generator, dtype=F64, device=x.device)  # the reveal time's and the position's uniforms
        s = first_hitting_time(schedule, t, n, w[:, 0])
        out = model(x, _times(s, x.device))  # (B, L, V)
        position_logits = torch.where(masked, 0.0, -math.inf).to(F64)  # uniform over masked positions
        position_logits[~active, 0] = 0.0  # finished rows: a dummy draw, not used
        pos = sample_categorical(position_logits, uniform=w[:, 1:])  # (B,)
        lp = _subs_guard(out[rows, pos], mask_id)  # (B, V): only the chosen positions
        value = sample_categorical(lp, generator=generator, temperature=temperature)  # (B,)
        x[rows[active], pos[active]] = value[active]
        t = s
        i += 1
        if callback is not None:
            callback({"i": i - 1, "x": x.clone(), "t": t, "nfe": model.nfe})
    return x, _info(model, i, start, generated)


# ----------------------------------------------------------------------------- confidence-based unmasking
def _confidence(order: str, lp: torch.Tensor, draw: torch.Tensor, generator: Generator) -> torch.Tensor:
    """(B, L) scores, higher = unmask first, from the model's (untempered) distribution lp (B, L, V)."""
    if order == "low-confidence":  # LLaDA: probability of the sampled token (remask the least confident)
        return lp.gather(-1, draw[..., None]).squeeze(-1)
    if order == "random":
        return rand(draw.shape, generator=generator, dtype=F64, device=draw.device)
    p = lp.exp()
    if order == "margin":  # top-1 minus top-2 probability (Kim et al. 2025)
        top = p.topk(min(2, p.shape[-1]), dim=-1).values
        return top[..., 0] - (top[..., 1] if top.shape[-1] > 1 else 0.0)
    # entropy: lowest entropy first
    return torch.where(p > 0, p * lp, torch.zeros_like(p)).sum(-1)


def bit_reversal_key(positions: torch.Tensor) -> torch.Tensor:
    """The van der Corput key of non-negative integer positions: their bits reversed, in as many
    bits as the largest position needs.

    (…) int64 → (…) int64. Sorting 0, …, n − 1 by this key gives the dilated order (for n = 8:
    0, 4, 2, 6, 1, 5, 3, 7): every prefix of it is spread over the span as evenly as a prefix can
    be, so the positions revealed in one step lie far apart. Reversing in more bits only scales
    every key by the same power of two, so the order does not depend on the bit count.
    """
    p = positions.long()
    if p.numel() and (int(p.min()) < 0 or int(p.max()) >= 2**52):
        raise ValueError(f"bit_reversal_key takes positions in [0, 2**52), got [{int(p.min())}, {int(p.max())}]")
    bits = max(1, int(p.max()).bit_length()) if p.numel() else 1
    key = torch.zeros_like(p)
    for bit in range(bits):
        key |= ((p >> bit) & 1) << (bits - 1 - bit)
    return key


def dilated_scores(positions: torch.Tensor) -> torch.Tensor:
    """(…) float64 scores of the ``dilated`` order (higher = unmasked first) for positions counted
    from the start of the span being unmasked: minus the :func:`bit_reversal_key`. With k of n
    tokens per step the first step keeps positions 0, n/k, 2n/k, … of the span (for n/k a power
    of two), the next step the midpoints between them, and so on (Luxembourg et al. 2025,
    dilated unmasking). Keys stay below 2^52, so they are exact in float64."""
    return -bit_reversal_key(positions).to(F64)


def _draw_and_score(order: str, lp: torch.Tensor, generator: Generator, temperature: float,
                    dilated: Optional[torch.Tensor] = None) -> tuple[torch.Tensor, torch.Tensor]:
    """A draw from lp (B, L, V) with ``temperature`` and its (B, L) :func:`_confidence` scores.
    For ``order="random"`` the Gumbel noise and the random scores come from one (B, L, V + 1)
    uniform draw (one call per sequence of a StackedGenerator instead of two). For
    ``order="dilated"`` the scores are ``dilated``, (L,) or (B, L) :func:`dilated_scores` of the
    positions counted from the start of the span (default: of 0, …, L − 1)."""
    if order != "random":
        draw = sample_categorical(lp, generator=generator, temperature=temperature)
        if order != "dilated":
            return draw, _confidence(order, lp, draw, generator)
        if dilated is None:
            dilated = dilated_scores(torch.arange(lp.shape[1], device=lp.device))
        return draw, dilated.expand(lp.shape[:-1])
    u = rand((*lp.shape[:-1], lp.shape[-1] + 1), generator=generator, dtype=F64, device=lp.device)
    return sample_categorical(lp, uniform=u[..., :-1], temperature=temperature), u[..., -1]


def _select_top(score: torch.Tensor, eligible: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
    """(B, L) bool: the k[b] eligible positions of highest score in each row (ties: leftmost)."""
    score = torch.where(eligible, score, torch.full_like(score, -math.inf))
    order = torch.sort(score, dim=-1, descending=True, stable=True).indices
    rank = torch.empty_like(order)
    rank.scatter_(-1, order, torch.arange(score.shape[-1], device=score.device).expand_as(order))
    return eligible & (rank < k[:, None])


def _unmask_loop(
    log_probs_fn: LogProbsFn,
    x_init,
    *,
    mask_id: int,
    rule: str,
    steps: Optional[int],
    order: str,
    threshold: float,
    block_length: Optional[int],
    schedule: Union[str, Schedule],
    generator: Generator,
    temperature: float,
    vocab_size: Optional[int],
    callback: Optional[Callable[[dict], None]],
):
    """The shared loop of top-k / threshold unmasking, optionally in semi-autoregressive blocks.

    Blocks are anchored at each row's first masked position: block j holds the positions
    [first + j·block_length, first + (j+1)·block_length); the current block of a row is the
    leftmost one that still holds masks, and only its masked positions may be unmasked.
    """
    mask_id = _check_mask_id(mask_id)
    temperature = _check_temperature(temperature)
    schedule = get_schedule(schedule)
    if order not in ORDERS:
        raise ValueError(f"unknown unmasking order {order!r}; choose one of {list(ORDERS)}")
    if block_length is not None:
        block_length = _check_int("block_length", block_length)
    x = _prepare(x_init, mask_id, vocab_size)
    model = CountingModel(log_probs_fn, x, mask_id, vocab_size=vocab_size)
    start, generated = time.perf_counter(), int((x == mask_id).sum())
    b, length = x.shape
    dev = x.device
    masked0 = x == mask_id
    n_gen = masked0.sum(-1)  # (B,)
    positions = torch.arange(length, device=dev)
    first = torch.where(masked0.any(-1), masked0.to(torch.int8).argmax(-1), 0)  # (B,) each row's first masked position
    rel = (positions[None] - first[:, None]).clamp_min(0)  # (B, L) positions from it
    if block_length is None:
        block_id = torch.zeros(b, length, dtype=torch.long, device=dev)
    else:
        block_id = rel // block_length  # (B, L)
        rel = rel % block_length  # the dilated order runs within each block
    dilated = dilated_scores(rel) if order == "dilated" else None  # (B, L)
    n_blocks = (block_id.masked_fill(~masked0, -1).max(-1).values + 1).clamp_min(1)  # (B,)
    if rule == "top-k":
        steps = _check_int("steps", steps)
        if steps < int(n_blocks.max()):
            raise ValueError(f"steps={steps} is fewer than the {int(n_blocks.max())} blocks to generate (one step each at least)")
    a1 = float(schedule.alpha(torch.tensor(1.0, dtype=F64)))

    big = length + 1
    prev_block = torch.full((b,), -1, dtype=torch.long, device=dev)
    step_in_block = torch.zeros(b, dtype=torch.long, device=dev)
    m_start = torch.zeros(b, dtype=torch.long, device=dev)
    i = 0
    while True:
        masked = x == mask_id
        if not masked.any():
            break
        current = block_id.masked_fill(~masked, big).min(-1).values  # (B,) leftmost block with masks
        eligible = masked & (block_id == current[:, None])
        m_left = eligible.sum(-1)  # (B,)
        new_block = current != prev_block
        step_in_block = torch.where(new_block, torch.zeros_like(step_in_block), step_in_block)
        m_start = torch.where(new_block, m_left, m_start)
        # time handed to the model: the fraction f of the generated positions still masked, as t(α = 1 − f(1 − α(1)))
        f = masked.sum(-1).to(F64) / n_gen.clamp_min(1).to(F64)
        t = schedule.t_of_alpha(1.0 - f * (1.0 - a1)).clamp(0.0, 1.0)
        lp = _subs_guard(model(x, _times(t, dev)), mask_id)  # (B, L, V)
        if rule == "top-k":
            draw, score = _draw_and_score(order, lp, generator, temperature, dilated)  # (B, L) each
            s_row = steps // n_blocks + (current < steps % n_blocks).long()  # steps of this row's block
            k = topk_keep_count(schedule, m_start, m_left, step_in_block, s_row)
        else:  # threshold (Fast-dLLM): every token whose sampled value has probability > τ, at least one
            draw = sample_categorical(lp, generator=generator, temperature=temperature)  # (B, L)
            score = lp.gather(-1, draw[..., None]).squeeze(-1)
            k = (eligible & (score.exp() > threshold)).sum(-1).clamp_min(1)
        k = torch.minimum(k, m_left)
        chosen = _select_top(score, eligible, k)
        x = torch.where(chosen, draw, x)
        prev_block = current
        step_in_block = step_in_block + 1
        i += 1
        if callback is not None:
            callback({"i": i - 1, "x": x, "t": t, "nfe": model.nfe, "unmasked": chosen})
    return x, _info(model, i, start, generated)


def sample_topk(
    log_probs_fn: LogProbsFn,
    x_init,
    *,
    mask_id: int,
    steps: int,
    generator: Generator = None,
    temperature: float = 1.0,
    order: str = "low-confidence",
    schedule: Union[str, Schedule] = "linear",
    block_length: Optional[int] = None,
    vocab_size: Optional[int] = None,
    callback: Optional[Callable[[dict], None]] = None,
):
    """Fixed-step confidence unmasking (MaskGIT, Chang et al. 2022; LLaDA, Nie et al. 2025,
    with "low-confidence remasking").

    At each step every masked token is drawn from p_θ(x0 | x_t) (with ``temperature``), the k most
    confident are kept and the rest stay masked ("remasked"). The count follows ``schedule``:
    after a fraction r of the steps, ⌈m·(α(1−r) − α(1))/(1 − α(1))⌉ of the m tokens are unmasked —
    with the default linear α a near-equal number per step (LLaDA), with ``cosine`` MD4's cosine
    curve — at least one per step, all of them after ``steps`` steps (fewer steps are taken when
    there are fewer tokens than steps).

    Args:
        order: confidence for choosing the k tokens, all from the untempered model distribution:
            ``low-confidence`` (probability of the sampled token; LLaDA), ``random`` (uniform
            random positions; LLaDA's "random remasking"), ``margin`` (top-1 − top-2
            probability), ``entropy`` (lowest entropy first), ``dilated`` (a fixed order that
            spreads each step's tokens over the span: the bit-reversal order of the positions
            counted from the row's first masked one, within each block when ``block_length`` is
            set; Luxembourg et al. 2025). ``random`` and ``dilated`` do not look at the model's
            output: with one token per step both are the chain rule in some order, exact for an
            exact denoiser, and ``dilated`` keeps tokens that are revealed together far apart,
            where their dependence is weakest for sources whose dependence decays with distance.
        block_length: None, or generate in semi-autoregressive blocks of this length (see
            :func:`sample_semi_ar`); ``steps`` are then shared out among the blocks.
        schedule: α(t) for the per-step counts and for the time passed to the model, which is
            t(α = 1 − f·(1 − α(1))) with f the fraction of the generated positions still masked.
        callback: called after each step with {"i", "x", "t" (B,), "nfe", "unmasked" (B, L)}.

    Returns:
        tokens (B, L), info {"nfe", "steps", "seconds", "tokens_per_s"}.
    """
    return _unmask_loop(
        log_probs_fn, x_init, mask_id=mask_id, rule="top-k", steps=steps, order=order, threshold=0.0,
        block_length=block_length, schedule=schedule, generator=generator, temperature=temperature,
        vocab_size=vocab_size, callback=callback,
    )


def sample_threshold(
    log_probs_fn: LogProbsFn,
    x_init,
    *,
    mask_id: int,
    threshold: float = 0.9,
    generator: Generator = None,
    temperature: float = 1.0,
    block_length: Optional[int] = None,
    schedule: Union[str, Schedule] = "linear",
    vocab_size: Optional[int] = None,
    callback: Optional[Callable[[dict], None]] = None,
):
    """Confidence-threshold parallel decoding (Fast-dLLM, Wu et al. 2025).

    At each step every masked token is drawn from p_θ(x0 | x_t); all whose sampled value has
    probability > ``threshold`` are unmasked, and at least the most confident one, so the number
    of model calls adapts to the model's certainty (≤ the number of generated tokens).

    Args:
        threshold: τ in [0, 1].
        block_length: None, or decode in semi-autoregressive blocks of this length (Fast-dLLM
            decodes block by block).
        schedule: only sets the time passed to the model (as in :func:`sample_topk`).

    Returns:
        tokens (B, L), info {"nfe", "steps", "seconds", "tokens_per_s"}.
    """
    if not isinstance(threshold, (int, float)) or isinstance(threshold, bool) or not 0.0 <= threshold <= 1.0:
        raise ValueError(f"threshold must be a probability in [0, 1], got {threshold!r}")
    return _unmask_loop(
        log_probs_fn, x_init, mask_id=mask_id, rule="threshold", steps=None, order="low-confidence",
        threshold=float(threshold), block_length=block_length, schedule=schedule, generator=generator,
        temperature=temperature, vocab_size=vocab_size, callback=callback,
    )


def sample_semi_ar(
    log_probs_fn: LogProbsFn,
    x_init,
    *,
    mask_id: int,
    block_length: int,
    steps: Optional[int] = None,
    rule: str = "top-k",
    generator: Generator = None,
    temperature: float = 1.0,
    order: str = "low-confidence",
    threshold: float = 0.9,
    schedule: Union[str, Schedule] = "linear",
    vocab_size: Optional[int] = None,
    callback: Optional[Callable[[dict], None]] = None,
):
    """Semi-autoregressive block decoding (LLaDA, Nie et al. 2025, "semi-autoregressive remasking"; without a KV cache).

    The generation region of each row (from its first masked position on) is cut into blocks of
    ``block_length`` positions, decoded left to right: a block is finished before the next one
    starts, the model always seeing the whole sequence. Inside a block the ``rule`` is
    ``top-k`` (:func:`sample_topk`; ``steps`` in total, shared out evenly among the blocks, the
    first blocks getting the remainder) or ``threshold`` (:func:`sample_threshold`).

    Returns:
        tokens (B, L), info {"nfe", "steps", "seconds", "tokens_per_s"}.
    """
    if rule == "top-k":
        if steps is None:
            raise ValueError("semi-ar with rule='top-k' needs steps")
        return sample_topk(
            log_probs_fn, x_init, mask_id=mask_id, steps=steps, generator=generator, temperature=temperature,
            order=order, schedule=schedule, block_length=block_length, vocab_size=vocab_size, callback=callback,
        )
    if rule == "threshold":
        return sample_threshold(
            log_probs_fn, x_init, mask_id=mask_id, threshold=threshold, generator=generator,
            temperature=temperature, block_length=block_length, schedule=schedule, vocab_size=vocab_size,
            callback=callback,
        )
    raise ValueError(f"unknown semi-ar rule {rule!r}; choose 'top-k' or 'threshold'")


# ----------------------------------------------------------------------------- classifier-free guidance
def classifier_free_guidance(
    log_probs_fn: LogProbsFn,
    *,
    scale: float,
    mask_id: int,
    prompt_mask: Optional[torch.Tensor] = None,
    uncond_fn: Optional[LogProbsFn] = None,
    convention: str = "llada",
    batched: bool = False,
) -> LogProbsFn:
    """A guided model function from a conditional one (classifier-free guidance, Ho & Salimans 2022).

    The unconditional branch is ``uncond_fn(x_t, t)`` if given (e.g. a null-class closure), else
    LLaDA's (Nie et al. 2025): the same model on x_t with the prompt positions
    (``prompt_mask`` (B, L) bool, e.g. ``x_init != mask_id``) replaced by the mask. The
    log-probabilities are combined as

        ``llada``:        ℓ = (1 + w)·ℓ_c − w·ℓ_u    (w = 0: conditional; LLaDA's cfg_scale)
        ``interpolate``:  ℓ = w·ℓ_c + (1 − w)·ℓ_u    (w = 1: conditional; the same family, w' = w − 1)

    then renormalized over the vocabulary with the SUBS invariants restored (−inf on the mask,
    unmasked positions one-hot on themselves); a token impossible under either branch stays
    impossible. With ``batched=True`` both branches go through one call on a 2B batch (the
    model must then take 2B rows, so no per-row conditioning in closures); otherwise two calls.
    A sampler counts one NFE per guided call (two network evaluations).

    Returns:
        ``fn(x_t (B, L), t (B,)) -> (B, L, V)`` float64 SUBS log-probabilities.
    """
    mask_id = _check_mask_id(mask_id)
    if convention not in ("llada", "interpolate"):
        raise ValueError(f"unknown guidance convention {convention!r}; choose 'llada' or 'interpolate'")
    if not isinstance(scale, (int, float)) or isinstance(scale, bool) or not math.isfinite(scale):
        raise ValueError(f"guidance scale must be a finite number, got {scale!r}")
    if uncond_fn is None:
        if not torch.is_tensor(prompt_mask) or prompt_mask.dtype != torch.bool or prompt_mask.ndim != 2:
            raise ValueError("classifier_free_guidance needs prompt_mask, a (B, L) bool tensor, or an uncond_fn")
    w = float(scale)
    w_c, w_u = (1.0 + w, -w) if convention == "llada" else (w, 1.0 - w)

    def guided(x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        if uncond_fn is not None:
            lc, lu = log_probs_fn(x_t, t), uncond_fn(x_t, t)
        else:
            if prompt_mask.shape != x_t.shape:
                raise ValueError(f"prompt_mask has shape {tuple(prompt_mask.shape)}, x_t {tuple(x_t.shape)}")
            x_u = x_t.masked_fill(prompt_mask.to(x_t.device), mask_id)
            if batched:
                both = log_probs_fn(torch.cat([x_t, x_u]), torch.cat([t, t]))
                lc, lu = both[: x_t.shape[0]], both[x_t.shape[0]:]
            else:
                lc, lu = log_probs_fn(x_t, t), log_probs_fn(x_u, t)
        lc, lu = lc.to(F64), lu.to(F64)
        finite = torch.isfinite(lc) & torch.isfinite(lu)
        out = torch.where(finite, w_c * lc + w_u * lu, torch.full_like(lc, -math.inf))  # (B, L, V)
        out[..., mask_id] = -math.inf
        out = torch.log_softmax(out, dim=-1)
        unmasked = x_t != mask_id
        own = torch.full_like(out, -math.inf).scatter_(-1, x_t.clamp_max(out.shape[-1] - 1)[..., None], 0.0)
        return torch.where(unmasked[..., None], own, out)

    return guided


# ----------------------------------------------------------------------------- registry and entry point
@dataclass(frozen=True)
class TokenMethod:
    """One token sampler of the registry."""

    name: str  # registry name, e.g. "first-hitting"
    module: str  # module holding the sampler (imported on first use)
    function: str  # the sampler's name in that module
    model: str  # what the model function returns: "log_probs" (SUBS x0 log-probs) or "score" (SEDD log-ratios)
    description: str  # one line for `--help` and docs

    @property
    def fn(self) -> Callable:
        """The sampler ``(model_fn, x_init, **options) -> (tokens, info)``."""
        return getattr(importlib.import_module(self.module), self.function)

    def options(self) -> tuple[str, ...]:
        """The sampler's keyword options."""
        params = inspect.signature(self.fn).parameters.values()
        return tuple(p.name for p in params if p.kind is p.KEYWORD_ONLY)


_SAMPLERS = "genspace.discrete.samplers"
_SEDD = "genspace.discrete.sedd"
_TOKEN_METHODS = {
    m.name: m
    for m in (
        TokenMethod("ancestral", _SAMPLERS, "sample_ancestral", "log_probs",
                    "MDLM/D3PM ancestral steps on a uniform time grid; caches time-independent models"),
        TokenMethod("first-hitting", _SAMPLERS, "sample_first_hitting", "log_probs",
                    "exact unmasking times, one token per call (Zheng et al. 2024); exact for an exact denoiser"),
        TokenMethod("top-k", _SAMPLERS, "sample_topk", "log_probs",
                    "fixed steps, keep the k most confident tokens (MaskGIT/LLaDA; low-confidence, random, margin, entropy, dilated)"),
        TokenMethod("threshold", _SAMPLERS, "sample_threshold", "log_probs",
                    "unmask every token above a confidence threshold, adaptive NFE (Fast-dLLM)"),
        TokenMethod("semi-ar", _SAMPLERS, "sample_semi_ar", "log_probs",
                    "semi-autoregressive blocks left to right, top-k or threshold inside (LLaDA)"),
        TokenMethod("sedd-euler", _SEDD, "sample_sedd_euler", "score",
                    "SEDD Euler steps of the reverse CTMC from estimated ratios (Lou et al. 2024)"),
        TokenMethod("sedd-tweedie", _SEDD, "sample_sedd_tweedie", "score",
                    "SEDD Tweedie tau-leaping, exact per position for exact ratios (Lou et al. 2024)"),
    )
}


def token_methods() -> dict[str, TokenMethod]:
    """All token samplers: name → :class:`TokenMethod` (a copy)."""
    return dict(_TOKEN_METHODS)


def token_method_names() -> list[str]:
    return list(_TOKEN_METHODS)


def sample_tokens(method: str, model_fn: Callable, x_init, **options):
    """Sample tokens with a registered ``method`` (see :func:`token_methods`).

    Args:
        method: a name of :func:`token_methods`.
        model_fn: ``log_probs_fn(x_t, t)`` for masked-diffusion methods, ``score_fn(x_t, t)`` for
            the SEDD ones (``TokenMethod.model`` says which).
        x_init: (B, L) ids with the mask to generate, or (n, length).
        **options: the sampler's keyword options (``TokenMethod.options()``); an unknown name
            raises ValueError.

    Returns:
        tokens (B, L) int64, info {"method", "nfe", "steps", "seconds", "tokens_per_s"}. Runs under
        ``torch.no_grad()``.
    """
    if method not in _TOKEN_METHODS:
        raise ValueError(f"unknown token sampling method {method!r}; choose one of {token_method_names()}")
    entry = _TOKEN_METHODS[method]
    allowed = entry.options()
    unknown = sorted(set(options) - set(allowed))
    if unknown:
        raise ValueError(f"unknown option(s) {unknown} for method {method!r}; it takes {sorted(allowed)}")
    with torch.no_grad():
        tokens, info = entry.fn(model_fn, x_init, **options)
    info = {"method": method, **info}
    return tokens, info
