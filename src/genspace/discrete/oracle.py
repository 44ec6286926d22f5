"""An exact oracle for discrete diffusion: a distribution over all K^L token sequences, given as a table.

For a small enumerable distribution p(x0) over sequences of length L of K data tokens (ids 0..K−1,
K^L ≤ ``MAX_STATES``) every quantity a token denoiser or a ratio network estimates is computed
exactly, by enumeration:

- **absorbing noise** (masked diffusion): the posterior marginals p(x0^ℓ = v | x_t) given the
  unmasked tokens of x_t. The masking pattern is independent of x0, so they do not depend on t
  (Ou et al. 2024; Zheng et al. 2024). In SUBS form (Sahoo et al. 2024, MDLM) they are the
  masked-diffusion model ``log_probs_fn(x_t, t)``; SEDD's ratios follow from them:
  p_t(x_t^{ℓ←y}) / p_t(x_t) = α/(1 − α) · p(x0^ℓ = y | x_t) for a masked position ℓ.
- **uniform noise**: q_t(x_t^ℓ | x0^ℓ) = α·1[x_t^ℓ = x0^ℓ] + (1 − α)/K; the exact concrete scores
  p_t(x_t^{ℓ←y}) / p_t(x_t) (Lou et al. 2024, the ratios SEDD learns) and the posterior marginals
  p(x0^ℓ = v | x_t), from p(x0 | x_t) ∝ p(x0) Π_ℓ q_t(x_t^ℓ | x0^ℓ).

Everything is float64; results come back on the device of the input. Batches are processed in
chunks so that a call costs O(B·K^L·L) time and bounded memory.
"""

from __future__ import annotations

import math
from typing import Optional, Union

import torch

from genspace.core.random import Generator
from genspace.discrete.categorical import sample_categorical
from genspace.discrete.schedules import Schedule, get_schedule

__all__ = ["TokenDistribution", "MAX_STATES"]

MAX_STATES = 200_000  # the largest K^L enumerated
_CHUNK = 2_000_000  # rows × states × positions handled at once

F64 = torch.float64


class TokenDistribution:
    """An explicit distribution over the K^L sequences of L tokens from K data ids.

    Args:
        probs: the K^L probabilities, as a tensor of shape (K,)*L (``probs[x_1, ..., x_L]``) or flat
            (K^L,) in that row-major order; non-negative with a positive sum (normalized here).
        vocab_size: K (required for a flat table).
        length: L (required for a flat table).

    Attributes:
        probs: (K^L,) float64 probabilities, sequences enumerated in row-major order.
        sequences: (K^L, L) int64, row n is the sequence of ``probs[n]``.
    """

    def __init__(self, probs, vocab_size: Optional[int] = None, length: Optional[int] = None) -> None:
        probs = torch.as_tensor(probs, dtype=F64)
        if probs.ndim > 1:
            k = probs.shape[0]
            if any(d != k for d in probs.shape):
                raise ValueError(f"a table of shape (K,)*L must have equal sides, got {tuple(probs.shape)}")
            if vocab_size is not None and vocab_size != k or length is not None and length != probs.ndim:
                raise ValueError(
                    f"table shape {tuple(probs.shape)} disagrees with vocab_size={vocab_size}, length={length}"
                )
            vocab_size, length = k, probs.ndim
        elif vocab_size is None or length is None:
            raise ValueError("a flat probability table needs vocab_size and length")
        if vocab_size < 1 or length < 1:
            raise ValueError(f"vocab_size and length must be >= 1, got {vocab_size}, {length}")
        n = vocab_size**length
        if n > MAX_STATES:
            raise ValueError(f"K^L = {vocab_size}^{length} = {n} states exceed the oracle's limit {MAX_STATES}")
        probs = probs.reshape(-1)
        if probs.numel() != n:
            raise ValueError(f"expected {n} = {vocab_size}^{length} probabilities, got {probs.numel()}")
        if not torch.isfinite(probs).all() or (probs < 0).any() or probs.sum() <= 0:
            raise ValueError("probabilities must be finite, non-negative and have a positive sum")
        self.vocab_size = int(vocab_size)
        self.length = int(length)
        self.probs = probs / probs.sum()
        idx = torch.arange(n)
        digits = [(idx // vocab_size ** (length - 1 - i)) % vocab_size for i in range(length)]
        self.sequences = torch.stack(digits, dim=1)  # (N, L)
        self._onehot = torch.nn.functional.one_hot(self.sequences, vocab_size).to(F64)  # (N, L, K)

    # ------------------------------------------------------------------ constructors
    @classmethod
    def random(cls, vocab_size: int, length: int, *, seed: int = 0, scale: float = 2.0) -> "TokenDistribution":
        """A reproducible random table p ∝ exp(scale·z), z ~ N(0, 1) i.i.d. over the K^L sequences:
        a full-support distribution whose tokens are correlated (larger ``scale``: fewer likely
        sequences, stronger correlation)."""
        g = torch.Generator().manual_seed(seed)
        z = torch.randn(vocab_size**length, generator=g, dtype=F64)
        return cls(torch.softmax(scale * z, dim=0), vocab_size, length)

    # ------------------------------------------------------------------ helpers
    def index(self, x0: torch.Tensor) -> torch.Tensor:
        """Row-major index (B,) of clean sequences (B, L) with ids in 0..K−1."""
        self._check_tokens(x0, allow=None)
        k = self.vocab_size
        weights = torch.tensor([k ** (self.length - 1 - i) for i in range(self.length)], device=x0.device)
        return (x0.long() * weights).sum(-1)

    def log_prob(self, x0: torch.Tensor) -> torch.Tensor:
        """log p(x0), (B,) float64, for clean sequences (B, L)."""
        return self.probs.to(x0.device).log()[self.index(x0)]

    def sample(self, n: int, *, generator: Generator = None) -> torch.Tensor:
        """n exact draws (n, L) (one categorical over the K^L sequences each)."""
        logits = self.probs.log().expand(n, -1)
        return self.sequences[sample_categorical(logits, generator=generator)]

    def histogram(self, x0: torch.Tensor) -> torch.Tensor:
        """Counts (K^L,) of the sequences in x0 (B, L)."""
        return torch.bincount(self.index(x0).cpu(), minlength=self.probs.numel()).to(F64)

    def total_variation(self, x0: torch.Tensor) -> float:
        """½ Σ |p̂ − p| between the empirical distribution of x0 (B, L) and the table."""
        h = self.histogram(x0)
        return 0.5 * float((h / h.sum() - self.probs).abs().sum())

    def _check_tokens(self, x: torch.Tensor, allow: Optional[int]) -> None:
        if not torch.is_tensor(x) or x.ndim != 2 or x.shape[1] != self.length:
            raise ValueError(f"expected tokens of shape (B, {self.length}), got {getattr(x, 'shape', type(x))}")
        data = x if allow is None else x[x != allow]
        if data.numel() and (data.min() < 0 or data.max() >= self.vocab_size):
            raise ValueError(
                f"token ids must be in 0..{self.vocab_size - 1}" + ("" if allow is None else f" or the mask id {allow}")
            )

    def _chunks(self, b: int):
        step = max(1, _CHUNK // (self.probs.numel() * self.length))
        for start in range(0, b, step):
            yield slice(start, min(b, start + step))

    @staticmethod
    def _alpha(t, schedule, b: int, device) -> torch.Tensor:
        """α(t) as (b,) float64 from a scalar or (b,) time."""
        schedule = get_schedule(schedule)
        t = torch.as_tensor(t, dtype=F64, device=device).reshape(-1)
        if t.numel() == 1:
            t = t.expand(b)
        if t.shape != (b,):
            raise ValueError(f"t must be a scalar or have shape ({b},), got {tuple(t.shape)}")
        return schedule.alpha(t)

    # ------------------------------------------------------------------ absorbing noise
    def posterior_marginals(self, x_t: torch.Tensor, mask_id: int) -> torch.Tensor:
        """p(x0^ℓ = v | x_t) for absorbing noise, (B, L, K) float64.

        x_t: (B, L) ids in 0..K−1 or ``mask_id``. The posterior conditions on the unmasked tokens
        (independent of t); unmasked positions come out one-hot on themselves. Where the unmasked
        tokens have probability zero the posterior is undefined and returned uniform.
        """
        self._check_tokens(x_t, allow=mask_id)
        dev = x_t.device
        # the distinct rows (at most (K+1)^L), found through their integer codes in base K + 1
        rows, inverse = self._distinct_rows(torch.where(x_t == mask_id, self.vocab_size, x_t), self.vocab_size + 1)
        rows = torch.where(rows == self.vocab_size, mask_id, rows)
        seqs, probs, onehot = self.sequences.to(dev), self.probs.to(dev), self._onehot.to(dev)
        out = torch.empty(*rows.shape, self.vocab_size, dtype=F64, device=dev)
        for sl in self._chunks(rows.shape[0]):
            x = rows[sl]
            compat = ((x[:, None, :] == mask_id) | (seqs[None] == x[:, None, :])).all(-1)  # (b, N)
            w = probs[None] * compat  # (b, N)
            z = w.sum(-1, keepdim=True)  # (b, 1)
            w = torch.where(z > 0, w / z.clamp_min(1e-300), torch.full_like(w, 1.0 / w.shape[1]))
            out[sl] = torch.einsum("bn,nlk->blk", w, onehot)
        return out[inverse]

    def log_probs_fn(self, mask_id: int, vocab_size: Optional[int] = None):
        """The exact masked-diffusion model in SUBS form: ``fn(x_t (B, L), t (B,)) -> (B, L, V)``.

        V = ``vocab_size`` (default max(K, mask_id + 1)); log-probabilities of x0 with −inf on the
        mask and on every id ≥ K. Time-independent (absorbing posteriors do not depend on t).
        """
        v = max(self.vocab_size, mask_id + 1) if vocab_size is None else int(vocab_size)
        if v <= mask_id or v < self.vocab_size:
            raise ValueError(f"vocab_size {v} must exceed mask_id {mask_id} and be >= K = {self.vocab_size}")

        def fn(x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
            marg = self.posterior_marginals(x_t, mask_id)  # (B, L, K)
            out = torch.full((*x_t.shape, v), -math.inf, dtype=F64, device=x_t.device)
            out[..., : self.vocab_size] = marg.log()
            return out

        return fn

    # ------------------------------------------------------------------ uniform noise
    def _uniform_terms(self, x: torch.Tensor, alpha: torch.Tensor):
        """log q_t(x^ℓ | x0_n^ℓ) (b, N, L) and the joint log p(x0_n) + Σ_ℓ log q (b, N)."""
        k = self.vocab_size
        seqs = self.sequences.to(x.device)
        a = alpha[:, None, None]
        same = seqs[None] == x[:, None, :]  # (b, N, L)
        logq = torch.where(same, torch.log(a + (1 - a) / k), torch.log((1 - a) / k))  # (b, N, L)
        joint = self.probs.to(x.device).log()[None] + logq.sum(-1)  # (b, N)
        return logq, joint

    def _distinct_rows(self, x: torch.Tensor, base: int, extra: Optional[torch.Tensor] = None):
        """Distinct rows of x (ids < base) and, if given, of the (B,) key ``extra`` jointly:
        (rows (u, L), index into the distinct extra values (u,) or None, inverse (B,))."""
        weights = torch.tensor([base ** (self.length - 1 - i) for i in range(self.length)], device=x.device)
        code = (x * weights).sum(-1)  # (B,)
        if extra is not None:
            values, extra_idx = torch.unique(extra, return_inverse=True)
            code = code + base**self.length * extra_idx
        codes, inverse = torch.unique(code, return_inverse=True)
        digits = torch.stack([(codes // base ** (self.length - 1 - i)) % base for i in range(self.length)], dim=1)
        if extra is None:
            return digits, inverse
        return digits, values[codes // base**self.length], inverse

    def _distinct(self, x: torch.Tensor, alpha: torch.Tensor):
        """The distinct (row, α) pairs: rows (u, L), α (u,), and the inverse index (B,)."""
        return self._distinct_rows(x, self.vocab_size, alpha)

    def uniform_ratios(self, x_t: torch.Tensor, t, schedule: Union[str, Schedule] = "linear") -> torch.Tensor:
        """Exact concrete scores p_t(x_t^{ℓ←y}) / p_t(x_t) for uniform noise, (B, L, K) float64.

        x_t: (B, L) data ids; t: scalar or (B,) in (0, 1]; schedule: the α(t) of the process. The
        entry y = x_t^ℓ is 1.
        """
        self._check_tokens(x_t, allow=None)
        k = self.vocab_size
        alpha = self._alpha(t, schedule, x_t.shape[0], x_t.device)
        if (alpha >= 1).any():
            raise ValueError("uniform ratios need t > 0 (α(t) < 1)")
        rows, alphas, inverse = self._distinct(x_t, alpha)
        out = torch.empty(rows.shape[0], self.length, k, dtype=F64, device=x_t.device)
        onehot = self._onehot.to(x_t.device)
        for sl in self._chunks(rows.shape[0]):
            logq, joint = self._uniform_terms(rows[sl], alphas[sl])
            m = joint.max(-1, keepdim=True).values
            # leave position ℓ out: p(x0) Π_{ℓ'≠ℓ} q(x^ℓ' | x0^ℓ'), scaled by e^{−m}
            loo = torch.exp(joint[..., None] - logq - m[..., None])  # (b, N, L)
            a = alphas[sl][:, None, None]
            # Σ_n loo_n q(y | x0_n^ℓ) = α Σ_n loo_n 1[x0_n^ℓ = y] + (1 − α)/K Σ_n loo_n
            num = a * torch.einsum("bnl,nlk->blk", loo, onehot) + (1 - a) / k * loo.sum(1)[..., None]  # (b, L, K)
            den = torch.exp(joint - m).sum(-1)[:, None, None]  # p_t(x) e^{−m}
            out[sl] = num / den
        return out[inverse]

    def uniform_posterior_marginals(self, x_t: torch.Tensor, t, schedule: Union[str, Schedule] = "linear") -> torch.Tensor:
        """p(x0^ℓ = v | x_t) for uniform noise at time t, (B, L, K) float64."""
        self._check_tokens(x_t, allow=None)
        alpha = self._alpha(t, schedule, x_t.shape[0], x_t.device)
        rows, alphas, inverse = self._distinct(x_t, alpha)
        out = torch.empty(rows.shape[0], self.length, self.vocab_size, dtype=F64, device=x_t.device)
        onehot = self._onehot.to(x_t.device)
        for sl in self._chunks(rows.shape[0]):
            _, joint = self._uniform_terms(rows[sl], alphas[sl])
            w = torch.softmax(joint, dim=-1)  # p(x0 | x_t), (b, N)
            out[sl] = torch.einsum("bn,nlk->blk", w, onehot)
        return out[inverse]

    # ------------------------------------------------------------------ SEDD score functions
    def score_fn(self, process, schedule: Union[str, Schedule] = "log-linear", vocab_size: Optional[int] = None):
        """The exact SEDD score network ``fn(x_t (B, L), t (B,)) -> (B, L, V)`` of log-ratios
        log p_t(x_t^{ℓ←y}) / p_t(x_t) for ``process`` (an AbsorbingProcess or UniformProcess with
        K = self.vocab_size) under ``schedule``.

        Only the entries the process uses are exact: absorbing — masked positions, data columns
        (log α/(1−α) + log p(x0^ℓ = y | x_t)); the mask column and unmasked positions are −inf
        except 0 on the token itself. Uniform — every position and data column (0 on x_t^ℓ).
        Columns ≥ K other than the mask are −inf. V defaults to K + 1 (absorbing) or K (uniform).
        """
        schedule = get_schedule(schedule)
        k = self.vocab_size
        if process.vocab_size != k:
            raise ValueError(f"process has vocab_size {process.vocab_size}, the table has K = {k}")
        if process.kind == "absorbing":
            mask_id = process.mask_id
            v = max(k, mask_id + 1) if vocab_size is None else int(vocab_size)

            def fn(x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
                b = x_t.shape[0]
                alpha = self._alpha(t, schedule, b, x_t.device)
                marg = self.posterior_marginals(x_t, mask_id)  # (B, L, K)
                log_r = (torch.log(alpha) - torch.log1p(-alpha))[:, None, None]  # log α/(1−α)
                masked = (x_t == mask_id)[..., None]
                out = torch.full((*x_t.shape, v), -math.inf, dtype=F64, device=x_t.device)
                data = torch.where(masked, marg.log() + log_r, marg.log())  # unmasked: one-hot → 0 / −inf
                out[..., :k] = data
                return out

            return fn
        v = k if vocab_size is None else int(vocab_size)

        def fn(x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
            out = torch.full((*x_t.shape, v), -math.inf, dtype=F64, device=x_t.device)
            out[..., :k] = self.uniform_ratios(x_t, t, schedule).log()
            return out

        return fn
