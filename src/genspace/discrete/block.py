"""Autoregressive and block-diffusion decoding with an exact KV cache (plain functions).

Both samplers take a :class:`~genspace.nets.transformer.Transformer` (anything with its call
signature: ``net(tokens, t, *, positions, attn_mask, block_size, cache, commit, output_slice)``
and ``net.new_cache()``), draw every token with the float64 Gumbel-max of
:func:`~genspace.discrete.categorical.sample_categorical`, and return ``(tokens (n, length), info)``
where ``info`` reports the network calls (``nfe``), the tokens fed to the network
(``tokens_processed``), wall time and generated tokens per second.

**AR** (:func:`sample_ar`): the model of :func:`~genspace.discrete.objectives.ar_nll`: input
[start, x^0, …], causal mask, the start token never produced. With the cache each call feeds
only the newest token (the first call feeds the start token and the prompt).

**Block diffusion** (Arriola et al. 2025, BD3-LM, its block-by-block sampler): blocks of ``block_size`` tokens are
generated left to right; block b starts fully masked and is denoised by ``steps_per_block``
ancestral steps of the masked-diffusion reverse process (MDLM's q(x_s | x_t, x_θ), SUBS) on the block's own
time grid t_k = 1 − k/S, k = 0..S: a masked token is revealed between t and s < t with
probability (α_s − α_t)/(1 − α_t), drawn from x_θ; revealed tokens never change (carry-over).
At the last step s = 0, α_s = 1 and every token is revealed. The network sees the clean blocks
< b and the noisy block b, with the block-causal mask:

- ``use_cache=False``: each call runs the whole prefix x[:, :end of block b] under
  ``attn_mask="block-causal"`` (the clean blocks attend block-causally, exactly the x0 stream of
  training) and reads the logits of block b;
- ``use_cache=True``: the cache holds the keys/values of the clean blocks, which are exactly those
  the x0 stream produces (they depend only on clean blocks ≤ their own). The first call of block b
  feeds [finished block b−1 ; noisy block b] (block-causal by position, ``commit`` = block b−1's
  tokens), so caching a finished block costs no extra call; later calls of the block feed only
  its own tokens (``commit=0``). The network never runs on a finished block again.

Both paths compute the same logits (up to float rounding; float64 gives identical tokens for the
same generator). When the network is not time-conditioned, a step in which no token was revealed
reuses the previous logits (the input is unchanged; MDLM's caching of x_θ), and a block
whose tokens are all revealed skips its remaining steps: both exact, and the main saving when
steps_per_block > block_size (at most min(steps_per_block, n·block_size) calls per block then).

**First-hitting within blocks** (``sampler="first-hitting"``; Zheng et al. 2024, the sampler of
:func:`~genspace.discrete.samplers.sample_first_hitting` applied to each block): with m tokens of
the block still masked at block time t, the next reveal time s solves
1 − α_s = (1 − α_t)·u^{1/m} (u uniform), one masked position of the block, chosen uniformly, is
drawn from x_θ and the rest stay masked. Exactly one token per sequence per call, ``block_size``
calls per block, and the exact continuous-time reverse process (the limit of infinitely many
ancestral steps per block) rather than a discretisation of it: with an exact denoiser each block
is drawn from its exact conditional (the chain rule in a uniformly random order; tested).
``steps_per_block`` is not used.

**Top-k within blocks** (``sampler="top-k"``; LLaDA's fixed-step unmasking, Nie et al. 2025,
run block by block as its semi-autoregressive decoding, here with BD3's block-causal model and
KV cache): S = ``steps_per_block`` calls per block; at each, every masked token of the block is
drawn from x_θ and the k with the highest score of ``order`` are kept, k following the count
schedule of :func:`~genspace.discrete.samplers.sample_topk` (a near-equal number per step with
the linear α; all after S steps). ``order="random"`` (the default) keeps uniformly random
positions: with S ≥ block_size it reveals one token per call in a uniformly random order, the
same law as first-hitting for a time-independent network; fewer steps reveal several tokens per
call, each from its marginal. ``order="dilated"`` reveals the block's positions in the fixed
bit-reversal order (0, 4, 2, 6, 1, 5, 3, 7 for a block of 8; Luxembourg et al. 2025): with 4
steps per block, {0, 4}, {2, 6}, {1, 5}, {3, 7}, so the tokens drawn together are never
neighbours; with ``block_size`` steps it is the chain rule in that order. The confidence orders
(``low-confidence``, ``margin``, ``entropy``) trade sample entropy for likelihood under the
model (mode seeking).

Stopping (variable length): with ``eos_id``, decoding stops after the block in which every
sequence has produced EOS (at or after the prompt); all positions after a sequence's first
generated EOS are set to ``pad_id`` (default ``eos_id``), as are never-generated positions.
With ``entropy_stop`` = h (BD3-LM's second rule for variable-length sampling: stop when the
sample degenerates), a sequence also stops after the first block at whose end the empirical
entropy (nats) of its last ``entropy_window`` generated tokens is below h; its later positions
are set to ``pad_id``. The entropy is −Σ_v p̂_v log p̂_v of the token histogram of the window,
tested once a full window has been generated. Decoding ends when every sequence has stopped.

With ``block_size=1`` and one step per block, each token is drawn from x_θ(prefix, [mask]) at
t = 1: block diffusion is then autoregressive with those conditionals (tested).
"""

from __future__ import annotations

import time
from typing import Optional

import torch

from genspace.core.random import Generator, rand
from genspace.discrete.categorical import sample_categorical
from genspace.discrete.samplers import ORDERS, _draw_and_score, _select_top, dilated_scores, first_hitting_time, topk_keep_count
from genspace.discrete.schedules import Schedule, get_schedule

__all__ = ["sample_ar", "sample_block_diffusion", "reveal_step", "BLOCK_SAMPLERS"]

BLOCK_SAMPLERS = ("ancestral", "first-hitting", "top-k")


def _time_conditioned(net) -> bool:
    return bool(getattr(getattr(net, "config", None), "time_conditioning", True))


def _prompt(prompt, n: int, length: int, device) -> Optional[torch.Tensor]:
    if prompt is None:
        return None
    prompt = torch.as_tensor(prompt, device=device)
    if prompt.is_floating_point() or prompt.dtype == torch.bool:
        raise ValueError(f"prompt must hold integer token ids, got dtype {prompt.dtype}")
    if prompt.ndim == 1:
        prompt = prompt[None].expand(n, -1)
    if prompt.ndim != 2 or prompt.shape[0] != n or prompt.shape[1] > length:
        raise ValueError(f"prompt must be (P,) or ({n}, P) with P <= length={length}, got {tuple(prompt.shape)}")
    return prompt.long()


def _check(n: int, length: int, temperature: float) -> None:
    if n < 1 or length < 1:
        raise ValueError(f"need n >= 1 and length >= 1, got n={n}, length={length}")
    if temperature < 0:
        raise ValueError(f"temperature must be >= 0, got {temperature}")


def _pad_after_eos(x: torch.Tensor, start: int, eos_id: int, pad_id: int) -> torch.Tensor:
    """Set every position after the first EOS at index ≥ start to pad_id: (n, L) → (n, L)."""
    idx = torch.arange(x.shape[1], device=x.device)  # (L,)
    is_eos = (x == eos_id) & (idx >= start)  # (n, L)
    first = torch.where(is_eos, idx, x.shape[1]).min(dim=1).values  # (n,) L when none
    return torch.where(idx[None] > first[:, None], torch.full_like(x, pad_id), x)


def _info(nfe: int, processed: int, seconds: float, n: int, generated: int, **extra) -> dict:
    info = {
        "nfe": nfe,
        "tokens_processed": processed,
        "seconds": seconds,
        "generated_tokens": n * generated,
        "tokens_per_s": n * generated / seconds if seconds > 0 else float("inf"),
    }
    info.update(extra)
    return info


# ----------------------------------------------------------------------------------------------
# autoregressive


@torch.no_grad()
def sample_ar(
    net,
    n: int,
    length: int,
    *,
    start_id: int,
    generator: Generator = None,
    temperature: float = 1.0,
    prompt: Optional[torch.Tensor] = None,
    use_cache: bool = True,
    eos_id: Optional[int] = None,
    pad_id: Optional[int] = None,
) -> tuple[torch.Tensor, dict]:
    """Autoregressive sampling x^ℓ ~ softmax(logits/τ), ℓ = P..length−1, one token per call.

    Args:
        net: a causal-capable Transformer (see module doc).
        n: number of sequences.
        length: total length L (prompt included).
        start_id: the start token fed before x^0 (the ``start_id`` of training, e.g. ``mask_id``);
            its probability is set to 0.
        generator: a torch.Generator or a StackedGenerator (one per sequence); one (n, V) draw per
            token.
        temperature: τ ≥ 0 (0: greedy).
        prompt: (P,) or (n, P) ids copied to x[:, :P] and conditioned on.
        use_cache: incremental decoding with a KV cache (same tokens as without it).
        eos_id, pad_id: stop rule (module doc).

    Returns:
        tokens (n, length) int64 and the info dict.
    """
    _check(n, length, temperature)
    device = net.embed.weight.device if hasattr(net, "embed") else None
    prompt = _prompt(prompt, n, length, device)
    p = 0 if prompt is None else prompt.shape[1]
    pad = eos_id if pad_id is None else pad_id
    x = torch.full((n, length), start_id if pad is None else pad, dtype=torch.long, device=device)
    if prompt is not None:
        x[:, :p] = prompt
    start = torch.full((n, 1), start_id, dtype=torch.long, device=device)
    t0 = torch.zeros(n, device=device) if _time_conditioned(net) else None
    cache = net.new_cache(length + 1) if use_cache else None
    inp = torch.cat([start, x[:, :p]], dim=1)  # (n, P + 1)
    done = torch.zeros(n, dtype=torch.bool, device=device)
    nfe = processed = generated = 0
    tic = time.perf_counter()
    for i in range(p, length):
        if not use_cache:
            inp = torch.cat([start, x[:, :i]], dim=1)  # (n, i + 1)
        mask = "causal" if inp.shape[1] > 1 or not use_cache else "bidirectional"
        logits = net(inp, t0, attn_mask=mask, cache=cache, output_slice=slice(-1, None))[:, -1]  # (n, V)
        nfe += 1
        processed += inp.shape[1]
        logits = logits.to(torch.float64)
        logits[:, start_id] = float("-inf")
        tok = sample_categorical(logits, generator=generator, temperature=temperature)  # (n,)
        x[:, i] = tok
        generated += 1
        inp = tok[:, None]  # (n, 1)
        if eos_id is not None:
            done |= tok == eos_id
            if bool(done.all()):
                break
    seconds = time.perf_counter() - tic
    if eos_id is not None:
        x = _pad_after_eos(x, p, eos_id, pad)
    return x, _info(nfe, processed, seconds, n, generated, cache=use_cache)


# ----------------------------------------------------------------------------------------------
# block diffusion


def reveal_step(
    logits: torch.Tensor,
    x_t: torch.Tensor,
    alpha_t: float,
    alpha_s: float,
    *,
    mask_id: int,
    generator: Generator = None,
    temperature: float = 1.0,
) -> torch.Tensor:
    """One ancestral step t → s of the absorbing reverse process with SUBS (MDLM): (n, l) → (n, l).

    A masked position becomes token v with probability (α_s − α_t)/(1 − α_t) · x_θ[v] and stays
    masked with probability (1 − α_s)/(1 − α_t); x_θ = softmax(logits/τ) without the mask token
    (τ = 0: the one-hot of the argmax). Unmasked positions are kept. One (n, l, V) float64
    Gumbel draw per step (also at unmasked positions, so the randomness used does not depend on
    the state).
    """
    lg = logits.to(torch.float64)
    col = torch.zeros(lg.shape[-1], dtype=torch.bool, device=lg.device)
    col[mask_id] = True
    if temperature == 0:
        top = lg.masked_fill(col, float("-inf")).argmax(-1, keepdim=True)  # (n, l, 1)
        logp = torch.full_like(lg, float("-inf")).scatter(-1, top, 0.0)
    else:
        logp = torch.log_softmax((lg / temperature).masked_fill(col, float("-inf")), dim=-1)  # (n, l, V)
    denom = 1.0 - alpha_t
    reveal, stay = (alpha_s - alpha_t) / denom, (1.0 - alpha_s) / denom
    mix = logp + (torch.log(torch.tensor(reveal, dtype=torch.float64)) if reveal > 0 else float("-inf"))
    mix[..., mask_id] = float(torch.log(torch.tensor(stay, dtype=torch.float64))) if stay > 0 else float("-inf")
    draw = sample_categorical(mix, generator=generator)  # (n, l)
    return torch.where(x_t == mask_id, draw, x_t)


@torch.no_grad()
def sample_block_diffusion(
    net,
    n: int,
    length: int,
    block_size: int,
    *,
    mask_id: int,
    steps_per_block: int,
    generator: Generator = None,
    schedule: Schedule | str = "linear",
    temperature: float = 1.0,
    use_cache: bool = True,
    prompt: Optional[torch.Tensor] = None,
    eos_id: Optional[int] = None,
    pad_id: Optional[int] = None,
    sampler: str = "ancestral",
    entropy_stop: Optional[float] = None,
    entropy_window: int = 256,
    order: str = "random",
) -> tuple[torch.Tensor, dict]:
    """Block-diffusion sampling (BD3-LM), block by block with an exact KV cache.

    Args:
        net: a Transformer trained with :func:`~genspace.discrete.objectives.block_nelbo` of the
            same ``block_size`` (see module doc).
        n: number of sequences.
        length: total length L (prompt included); the last block may be shorter.
        block_size: tokens per block.
        mask_id: the mask token's id.
        steps_per_block: S ≥ 1 ancestral steps per block (uniform grid t = 1 → 0); not used by
            ``sampler="first-hitting"``.
        generator: a torch.Generator or a StackedGenerator; per call one (n, block, V) draw
            (ancestral; top-k: (n, block, V + 1) with the random order's scores), or one
            (n, 1 + block) draw of the reveal time and position and one (n, V) of the token
            (first-hitting).
        schedule: α(t) of the reveal probabilities.
        temperature: τ ≥ 0 applied to x_θ.
        use_cache: keep the finished blocks' keys/values in a KV cache.
        prompt: (P,) or (n, P) ids kept fixed at x[:, :P]; blocks inside the prompt are not
            sampled, and the prompt part of a partly filled block stays clean.
        eos_id, pad_id: stop rule (module doc).
        sampler: ``"ancestral"`` (S steps of q(x_s | x_t, x_θ) per block), ``"first-hitting"``
            (one token per call at its exact reveal time) or ``"top-k"`` (S steps per block, a
            fixed number of tokens kept at each; module doc).
        order: ``sampler="top-k"`` only: which k tokens are kept at each step (module doc).
        entropy_stop, entropy_window: the low-entropy stop rule (module doc); needs ``pad_id``
            or ``eos_id`` for the positions after a stop.

    Returns:
        tokens (n, length) int64 and the info dict (``nfe``, ``tokens_processed``, ``blocks``,
        ``seconds``, ``tokens_per_s``, ``cache``).
    """
    _check(n, length, temperature)
    if block_size < 1 or steps_per_block < 1:
        raise ValueError(f"need block_size >= 1 and steps_per_block >= 1, got {block_size}, {steps_per_block}")
    if sampler not in BLOCK_SAMPLERS:
        raise ValueError(f"unknown block sampler {sampler!r}; choose one of {list(BLOCK_SAMPLERS)}")
    if sampler == "top-k" and order not in ORDERS:
        raise ValueError(f"unknown unmasking order {order!r}; choose one of {list(ORDERS)}")
    if entropy_stop is not None:
        if pad_id is None and eos_id is None:
            raise ValueError("entropy_stop needs pad_id (or eos_id) for the positions after a sequence stops")
        if entropy_window < 1:
            raise ValueError(f"entropy_window must be >= 1, got {entropy_window}")
    schedule = get_schedule(schedule)
    device = net.embed.weight.device if hasattr(net, "embed") else None
    prompt = _prompt(prompt, n, length, device)
    p = 0 if prompt is None else prompt.shape[1]
    pad = eos_id if pad_id is None else pad_id
    timed = _time_conditioned(net)
    x = torch.full((n, length), mask_id, dtype=torch.long, device=device)
    if prompt is not None:
        x[:, :p] = prompt
    grid = torch.linspace(1.0, 0.0, steps_per_block + 1, dtype=torch.float64)  # (S + 1,) t_0 = 1 … t_S = 0
    alphas = schedule.alpha(grid).tolist()
    cache = net.new_cache(length) if use_cache else None
    n_blocks = -(-length // block_size)
    count = {"nfe": 0, "processed": 0}
    blocks = 0
    hi = p  # end of the last decoded block

    def call(lo: int, hi: int, t_block) -> torch.Tensor:
        """x_θ logits of block [lo, hi) given the clean prefix: (n, hi − lo, V); ``t_block``: the
        block's time, a float or (n, 1) float64 (only read by time-conditioned networks)."""
        if use_cache:
            ctx = len(cache)  # clean tokens x[:, ctx:lo] are not cached yet
            inp = x[:, ctx:hi]  # (n, lo − ctx + block)
            tt = None
            if timed:
                tt = torch.zeros(inp.shape, dtype=torch.float64, device=device)
                tt[:, lo - ctx :] = t_block
            out = net(
                inp, tt, attn_mask="block-causal" if ctx < lo else "bidirectional", block_size=block_size,
                cache=cache, commit=lo - ctx, output_slice=slice(lo - ctx, None),
            )
        else:
            inp = x[:, :hi]  # (n, hi)
            tt = None
            if timed:
                tt = torch.zeros(inp.shape, dtype=torch.float64, device=device)
                tt[:, lo:] = t_block
            out = net(inp, tt, attn_mask="block-causal", block_size=block_size, output_slice=slice(lo, hi))
        count["nfe"] += 1
        count["processed"] += inp.shape[1]
        return out

    rows = torch.arange(n, device=device)
    a1 = float(schedule.alpha(torch.tensor(1.0, dtype=torch.float64)))
    stop_at = torch.full((n,), length, dtype=torch.long, device=device)  # entropy stop: first position not kept
    tic = time.perf_counter()
    for blk in range(p // block_size, n_blocks if p < length else 0):
        lo, hi = blk * block_size, min((blk + 1) * block_size, length)
        if sampler == "first-hitting":
            t_row = torch.ones(n, dtype=torch.float64, device=device)  # (n,) block time of each sequence
            while True:
                masked = x[:, lo:hi] == mask_id  # (n, l)
                m = masked.sum(-1)  # (n,)
                if int(m.max()) == 0:
                    break
                active = m > 0
                w = rand((n, 1 + hi - lo), generator=generator, dtype=torch.float64, device=device)  # time and position uniforms
                s_row = first_hitting_time(schedule, t_row, m, w[:, 0])
                logits = call(lo, hi, s_row[:, None])  # (n, l, V)
                where = torch.where(masked, 0.0, float("-inf")).to(torch.float64)  # uniform over masked positions
                where[~active, 0] = 0.0  # finished rows: a dummy draw, not used
                pos = sample_categorical(where, uniform=w[:, 1:])  # (n,)
                lg = logits[rows, pos].to(torch.float64)  # (n, V)
                lg[:, mask_id] = float("-inf")
                value = sample_categorical(lg, generator=generator, temperature=temperature)  # (n,)
                x[rows[active], lo + pos[active]] = value[active]
                t_row = s_row
        elif sampler == "top-k":
            m_start = (x[:, lo:hi] == mask_id).sum(-1)  # (n,) masked tokens of the block at its start
            dil = dilated_scores(torch.arange(hi - lo, device=device)) if order == "dilated" else None  # within the block
            for j in range(steps_per_block):
                masked = x[:, lo:hi] == mask_id  # (n, l)
                m_left = masked.sum(-1)  # (n,)
                if int(m_left.max()) == 0:
                    break
                f = m_left.to(torch.float64) / m_start.clamp_min(1).to(torch.float64)  # fraction still masked
                t_row = schedule.t_of_alpha(1.0 - f * (1.0 - a1)).clamp(0.0, 1.0)  # (n,)
                lg = call(lo, hi, t_row[:, None]).to(torch.float64)  # (n, l, V)
                lg[..., mask_id] = float("-inf")
                lp = torch.log_softmax(lg, dim=-1)
                draw, score = _draw_and_score(order, lp, generator, temperature, dil)  # (n, l) each
                k_keep = topk_keep_count(schedule, m_start, m_left, j, steps_per_block)
                chosen = _select_top(score, masked, k_keep)
                x[:, lo:hi] = torch.where(chosen, draw, x[:, lo:hi])
        else:
            logits = None
            for k in range(steps_per_block):
                if not bool((x[:, lo:hi] == mask_id).any()):
                    break  # every token of the block is revealed: the remaining steps would change nothing
                if logits is None or timed:
                    logits = call(lo, hi, float(grid[k]))  # (n, block, V)
                before = x[:, lo:hi]
                after = reveal_step(
                    logits, before, alphas[k], alphas[k + 1], mask_id=mask_id, generator=generator, temperature=temperature
                )
                if not timed and not torch.equal(after, before):
                    logits = None  # the input changed: recompute at the next step
                x[:, lo:hi] = after
        blocks += 1
        if entropy_stop is not None and hi - p >= entropy_window:
            window = x[:, hi - entropy_window : hi]  # (n, W)
            counts = torch.zeros(n, int(window.max()) + 1, dtype=torch.float64, device=device)
            counts.scatter_add_(1, window, torch.ones_like(window, dtype=torch.float64))
            q = counts / entropy_window
            h = -(q * torch.log(q.clamp_min(1e-300))).sum(-1)  # (n,) nats
            stop_at = torch.where((h < entropy_stop) & (stop_at == length), hi, stop_at)
        done = stop_at < length
        if eos_id is not None:
            done = done | (x[:, p:hi] == eos_id).any(dim=1)
        if (eos_id is not None or entropy_stop is not None) and bool(done.all()):
            break
    seconds = time.perf_counter() - tic
    generated = hi - p
    if eos_id is not None or entropy_stop is not None:
        x[:, hi:] = pad  # never generated
        idx = torch.arange(length, device=device)
        x = torch.where(idx[None] >= stop_at[:, None], torch.full_like(x, pad), x)
    if eos_id is not None:
        x = _pad_after_eos(x, p, eos_id, pad)
    return x, _info(count["nfe"], count["processed"], seconds, n, generated, blocks=blocks, cache=use_cache, sampler=sampler,
                 stopped_by_entropy=int((stop_at < length).sum()))
