"""Synthetic token sources with an exact log-probability and an exactly known entropy.

They are the "toy 2-D densities" of language modelling: a model trained on samples can be scored
by the exact likelihood of what it generates (:func:`genspace.metrics.text_metrics.exact_generative_nll`)
and compared with the true entropy, without a reference LM.

Every source has the token-id conventions of :mod:`genspace.data.text`: data ids ``0 .. K−1``
(``n_data_tokens`` = ``n_symbols`` = K), ``mask_id = K``, ``vocab_size = K + 1``, and
``eos_id = pad_id = bos_id = None`` (sequences have a fixed length, nothing is padded). All expose

- ``sample(n, length, *, generator=None, device=None) -> (n, L) int64`` (drawn on the CPU, then
  moved to ``device``);
- ``log_prob(x) -> (n,) float64``: exact log p(x) in nats, −inf for impossible sequences
  (including any id outside ``0 .. K−1``, e.g. a mask left by a sampler);
- ``sequence_entropy(length) -> float``: the exact entropy H(X_1..X_L) in nats;
- ``decode(ids) -> str``: letters (``a b c ...``) or brackets for display; the mask shows as ``_``.

Sampling draws all its uniforms at once with :func:`genspace.core.random.rand`, so a
:class:`~genspace.core.random.StackedGenerator` makes each sequence independent of its batch;
the loop is over positions only, vectorized over the batch.

Sources
-------
- :class:`MarkovSource`: a random k-th order Markov chain, started in its stationary distribution;
  entropy rate h = Σ_s π(s) H(P(·|s)) and H(X_1..X_L) = H(π) + (L − k)·h (Cover & Thomas, ch. 4).
- :class:`CopySource`: first half uniform, second half its copy (``mode="copy"``) or its reversal
  (``"reverse"``): log p = −(L/2)·log K on valid sequences.
- :class:`BracketSource`: uniform over the Dyck words of length L with ``n_types`` bracket types
  (well-nested, matched): log p = −log(C_m · n_types^m), m = L/2, C_m the Catalan number.
"""

from __future__ import annotations

import math
from typing import Optional

import numpy as np
import torch

from genspace.core.random import Generator, rand

__all__ = ["MarkovSource", "CopySource", "BracketSource", "get_source", "source_names"]

_LETTERS = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789"
_MAX_TABLE = 2**22  # largest transition table K^(k+1) a MarkovSource builds (32 MB in float64)


def _check_int(name: str, value, low: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise ValueError(f"{name} must be an integer >= {low}, got {value!r}")
    return value


def _uniforms(n: int, length: int, generator: Generator) -> torch.Tensor:
    """(n, length) float64 uniforms on the CPU (one draw per sequence with a StackedGenerator)."""
    return rand((n, length), generator=generator, dtype=torch.float64, device="cpu")


def _uniform_ids(u: torch.Tensor, k: int) -> torch.Tensor:
    """⌊u·k⌋ ∈ {0..k−1} from uniforms on [0, 1)."""
    return (u * k).long().clamp_max(k - 1)


def _entropy(p: torch.Tensor) -> torch.Tensor:
    """Shannon entropy −Σ p log p along the last axis (0 log 0 = 0), nats."""
    return -torch.where(p > 0, p * torch.log(p), torch.zeros_like(p)).sum(-1)


class _Source:
    """Id layout of a synthetic source: data ids 0..K−1, mask K, no EOS / PAD / BOS."""

    n_symbols: int
    eos_id: Optional[int] = None
    pad_id: Optional[int] = None
    bos_id: Optional[int] = None
    _alphabet: Optional[str] = None

    @property
    def n_data_tokens(self) -> int:
        return self.n_symbols

    @property
    def mask_id(self) -> int:
        return self.n_symbols

    @property
    def vocab_size(self) -> int:
        return self.n_symbols + 1

    def _in_range(self, x: torch.Tensor) -> torch.Tensor:
        """(n,) bool: every id of the row is a data id."""
        return ((x >= 0) & (x < self.n_symbols)).all(-1)

    def _check_x(self, x) -> torch.Tensor:
        x = torch.as_tensor(x)
        if x.ndim != 2 or x.dtype.is_floating_point or x.dtype == torch.bool:
            raise ValueError(f"log_prob expects integer ids of shape (n, L), got {x.dtype} {tuple(x.shape)}")
        return x.long()

    def decode(self, ids, *, mask_text: str = "_") -> str:
        """One sequence as text: a character per symbol (letters, or brackets for
        :class:`BracketSource`), or space-separated integers when there are too many symbols."""
        ids = torch.as_tensor(ids)
        if ids.ndim != 1:
            raise ValueError(f"decode expects one sequence (1-D ids), got shape {tuple(ids.shape)}")
        ids = ids.tolist()
        alphabet = self._alphabet
        if alphabet is None and self.n_symbols <= len(_LETTERS):
            alphabet = _LETTERS[: self.n_symbols]
        out = []
        for pos, i in enumerate(ids):
            if i == self.mask_id:
                out.append(mask_text)
            elif 0 <= i < self.n_symbols:
                out.append(alphabet[i] if alphabet is not None else str(i))
            else:
                raise ValueError(f"token id {i} at position {pos} is outside the vocabulary 0..{self.vocab_size - 1}")
        return "".join(out) if alphabet is not None else " ".join(out)


# ----------------------------------------------------------------------------------- Markov
class MarkovSource(_Source):
    """A random k-th order Markov chain over K symbols, started in its stationary distribution.

    Each context s = (x_{t−k}, …, x_{t−1}) has its own next-token distribution P(·|s), drawn from a
    symmetric Dirichlet(``concentration``) with numpy's generator seeded by ``seed`` (so the source
    is a pure function of its arguments). All entries are > 0 (clamped at 1e−300 against
    underflow, then renormalized), so the chain on k-tuples is irreducible and aperiodic and has a
    unique stationary distribution π. The first k tokens are drawn from π, hence every position
    is stationary and

        H(X_1..X_L) = H(π) + (L − k)·h,    h = Σ_s π(s) H(P(·|s))   (nats).

    Contexts are indexed in base K with the most recent token last: s = Σ_j x_{t−j} K^{j−1}.

    Args:
        n_symbols: K ≥ 2.
        order: k ≥ 0 (0: i.i.d. tokens from one distribution).
        seed: seed of the tables.
        concentration: Dirichlet concentration (small → peaked rows, low entropy rate; 1 → rows
            uniform on the simplex).

    Attributes:
        transition: (K^k, K) float64, row s = P(·|s).
        stationary: (K^k,) float64, π over contexts (``[1.]`` for k = 0).
        token_marginal: (K,) float64, the stationary distribution of a single token.
        entropy_rate: h in nats/token.
    """

    def __init__(self, n_symbols: int = 8, order: int = 2, *, seed: int = 0, concentration: float = 0.5) -> None:
        n_symbols = _check_int("n_symbols", n_symbols, 2)
        order = _check_int("order", order, 0)
        if not (isinstance(concentration, (int, float)) and concentration > 0 and math.isfinite(concentration)):
            raise ValueError(f"concentration must be a positive number, got {concentration!r}")
        if n_symbols ** (order + 1) > _MAX_TABLE:
            raise ValueError(f"MarkovSource table K^(k+1) = {n_symbols}^{order + 1} exceeds {_MAX_TABLE} entries")
        rng = np.random.default_rng(seed)
        table = rng.dirichlet(np.full(n_symbols, float(concentration)), size=n_symbols**order)
        self.seed = seed
        self.concentration = float(concentration)
        self._set_tables(torch.from_numpy(table), order)

    @classmethod
    def from_transition(cls, transition) -> "MarkovSource":
        """A chain with given tables: shape (K,) * (k + 1), ``transition[x_{t−k}, …, x_{t−1}, x_t]``
        (shape (K,) for k = 0); rows must be positive and sum to 1."""
        p = torch.as_tensor(transition, dtype=torch.float64)
        if p.ndim < 1 or p.shape[-1] < 2 or any(d != p.shape[-1] for d in p.shape):
            raise ValueError(f"transition must have shape (K,) * (order + 1) with K >= 2, got {tuple(p.shape)}")
        if not bool((p > 0).all()):
            raise ValueError("transition probabilities must all be > 0 (an ergodic chain)")
        if not torch.allclose(p.sum(-1), torch.ones((), dtype=torch.float64), atol=1e-10):
            raise ValueError(f"transition rows must sum to 1, got sums in [{float(p.sum(-1).min())}, {float(p.sum(-1).max())}]")
        if p.numel() > _MAX_TABLE:
            raise ValueError(f"transition table has {p.numel()} entries, more than {_MAX_TABLE}")
        source = cls.__new__(cls)
        source.seed = None
        source.concentration = None
        source._set_tables(p.reshape(-1, p.shape[-1]), p.ndim - 1)  # (K^k, K)
        return source

    def _set_tables(self, table: torch.Tensor, order: int) -> None:
        table = table.clamp_min(1e-300)
        table = table / table.sum(-1, keepdim=True)
        self.n_symbols = table.shape[1]
        self.order = order
        self.transition = table  # (K^k, K)
        self.stationary = _stationary(table, order)  # (K^k,)
        K = self.n_symbols
        if order == 0:
            self.token_marginal = table[0].clone()
        else:
            self.token_marginal = self.stationary.view(-1, K).sum(0)  # marginal of the most recent token
        self.entropy_rate = float((self.stationary * _entropy(table)).sum())
        self._cdf = table.cumsum(-1)
        self._log_table = torch.log(table)
        self._log_stationary = torch.log(self.stationary)

    def __repr__(self) -> str:
        return (
            f"MarkovSource(n_symbols={self.n_symbols}, order={self.order}, seed={self.seed}, "
            f"concentration={self.concentration})"
        )

    def _check_length(self, length: int) -> int:
        return _check_int("length", length, max(self.order, 1))

    def sequence_entropy(self, length: int) -> float:
        """H(X_1..X_L) = H(π) + (L − k)·h in nats (L ≥ max(k, 1))."""
        length = self._check_length(length)
        return float(_entropy(self.stationary)) + (length - self.order) * self.entropy_rate

    def sample(self, n: int, length: int, *, generator: Generator = None, device=None) -> torch.Tensor:
        """(n, L) int64: first k tokens from π, then the transitions (inverse-CDF, float64)."""
        n = _check_int("n", n, 1)
        length = self._check_length(length)
        K, k = self.n_symbols, self.order
        S = K**k
        u = _uniforms(n, length, generator).T.contiguous()  # (L, n); u[1:k] unused
        x = torch.empty((n, length), dtype=torch.int64)
        state = torch.zeros(n, dtype=torch.int64)
        if k > 0:
            state = torch.searchsorted(self.stationary.cumsum(0), u[0], right=True).clamp_max(S - 1)
            for j in range(k):  # digits of the context, oldest first
                x[:, j] = (state // K ** (k - 1 - j)) % K
        for t in range(k, length):
            cdf = self._cdf[state]  # (n, K)
            x[:, t] = torch.searchsorted(cdf, u[t][:, None], right=True).squeeze(1).clamp_max(K - 1)
            state = (state * K + x[:, t]) % S
        return x.to(device) if device is not None else x

    def _states(self, x: torch.Tensor) -> torch.Tensor:
        """(n, L − k + 1) context index of every window of k tokens (zeros for k = 0)."""
        K, k = self.n_symbols, self.order
        if k == 0:
            return torch.zeros((x.shape[0], x.shape[1] + 1), dtype=torch.int64, device=x.device)
        windows = x.unfold(1, k, 1)  # (n, L − k + 1, k)
        powers = K ** torch.arange(k - 1, -1, -1, device=x.device)  # (k,) oldest digit most significant
        return (windows * powers).sum(-1)

    def log_prob(self, x) -> torch.Tensor:
        """Exact log p(x), (n,) float64 nats; −inf on rows with an id outside 0..K−1."""
        x = self._check_x(x)
        self._check_length(x.shape[1])
        ok = self._in_range(x)
        xc = torch.where((x >= 0) & (x < self.n_symbols), x, torch.zeros_like(x))
        k = self.order
        states = self._states(xc)  # (n, L − k + 1)
        log_table = self._log_table.to(x.device)
        lp = log_table[states[:, :-1], xc[:, k:]].sum(-1)  # transitions t = k..L−1
        if k > 0:
            lp = lp + self._log_stationary.to(x.device)[states[:, 0]]
        return torch.where(ok, lp, torch.full_like(lp, -math.inf))


def _stationary(table: torch.Tensor, order: int) -> torch.Tensor:
    """π of the chain on k-tuples: a dense linear solve for ≤ 1024 contexts, else power iteration."""
    S, K = table.shape
    if order == 0:
        return torch.ones(1, dtype=torch.float64)
    if S <= 1024:
        M = np.zeros((S, S))
        nxt = (np.arange(S)[:, None] * K + np.arange(K)[None, :]) % S  # (S, K) next context
        np.add.at(M, (np.repeat(np.arange(S), K), nxt.ravel()), table.numpy().ravel())
        A = np.vstack([M.T - np.eye(S), np.ones((1, S))])  # π (M − I) = 0, Σ π = 1
        b = np.zeros(S + 1)
        b[-1] = 1.0
        pi = torch.from_numpy(np.linalg.lstsq(A, b, rcond=None)[0]).clamp_min(0.0)
    else:
        pi = torch.full((S,), 1.0 / S, dtype=torch.float64)
        for _ in range(100_000):
            joint = pi[:, None] * table  # (S, K): P(context, next)
            new = joint.view(K, S // K, K).sum(0).reshape(S)  # drop the oldest digit
            if float((new - pi).abs().sum()) < 1e-15:
                pi = new
                break
            pi = new
    pi = pi / pi.sum()
    residual = float(((pi[:, None] * table).view(K, S // K, K).sum(0).reshape(S) - pi).abs().sum())
    if residual > 1e-10:
        raise ValueError(f"stationary distribution did not converge (residual {residual:.2e}); use a larger concentration")
    return pi


# ------------------------------------------------------------------------------------- copy
class CopySource(_Source):
    """First half uniform over K symbols, second half its copy or its reversal.

    For even L = 2m: x_1..x_m i.i.d. uniform, then x_{m+i} = x_i (``copy``) or x_{m+i} =
    x_{m+1−i} (``reverse``). log p(x) = −m·log K if the second half matches, −inf otherwise;
    H(X_1..X_L) = m·log K. Long-range: position m + i depends only on a token m positions back
    (copy) or on its mirror image (reverse).
    """

    def __init__(self, n_symbols: int = 8, mode: str = "copy") -> None:
        self.n_symbols = _check_int("n_symbols", n_symbols, 2)
        if mode not in ("copy", "reverse"):
            raise ValueError(f"unknown CopySource mode {mode!r}; choose 'copy' or 'reverse'")
        self.mode = mode

    def __repr__(self) -> str:
        return f"CopySource(n_symbols={self.n_symbols}, mode={self.mode!r})"

    @staticmethod
    def _check_length(length: int) -> int:
        length = _check_int("length", length, 2)
        if length % 2:
            raise ValueError(f"CopySource needs an even length, got {length}")
        return length

    def sequence_entropy(self, length: int) -> float:
        return self._check_length(length) // 2 * math.log(self.n_symbols)

    def _second_half(self, first: torch.Tensor) -> torch.Tensor:
        return first if self.mode == "copy" else first.flip(1)

    def sample(self, n: int, length: int, *, generator: Generator = None, device=None) -> torch.Tensor:
        n = _check_int("n", n, 1)
        m = self._check_length(length) // 2
        first = _uniform_ids(_uniforms(n, m, generator), self.n_symbols)  # (n, m)
        x = torch.cat([first, self._second_half(first)], dim=1)  # (n, L)
        return x.to(device) if device is not None else x

    def log_prob(self, x) -> torch.Tensor:
        x = self._check_x(x)
        m = self._check_length(x.shape[1]) // 2
        ok = self._in_range(x) & (x[:, m:] == self._second_half(x[:, :m])).all(-1)
        lp = torch.full((x.shape[0],), -m * math.log(self.n_symbols), dtype=torch.float64, device=x.device)
        return torch.where(ok, lp, torch.full_like(lp, -math.inf))


# --------------------------------------------------------------------------------- brackets
def _log_paths(r: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
    """log N(r, h): the number of ±1 paths of r steps from height h to 0 that never go below 0,
    N = (h + 1)/(r + 1)·binom(r + 1, (r − h)/2) (ballot theorem); −inf where N = 0."""
    r = r.to(torch.float64)
    h = h.to(torch.float64)
    feasible = (h >= 0) & (h <= r) & (torch.remainder(r - h, 2) == 0)
    j = ((r - h) / 2).clamp_min(0)
    val = (
        torch.log(h.clamp_min(0) + 1)
        - torch.log(r + 1)
        + torch.lgamma(r + 2)
        - torch.lgamma(j + 1)
        - torch.lgamma(r + 1 - j + 1)
    )
    return torch.where(feasible, val, torch.full_like(val, -math.inf))


class BracketSource(_Source):
    """Uniform distribution over the Dyck words of length L with ``n_types`` bracket types.

    A Dyck word is a well-nested, correctly matched bracket sequence, e.g. ``([]())``. With
    m = L/2 pairs there are C_m·n^m of them (C_m = binom(2m, m)/(m + 1) shapes, n types per pair),
    so log p = −log C_m − m·log n on every valid word, −inf otherwise, and H = log C_m + m·log n.

    Sampling: the shape is an exactly uniform Dyck path, built left to right with
    P(open | height h, r positions left) = N(r − 1, h + 1)/N(r, h) (path counts of the ballot
    theorem); each opening bracket draws its type uniformly and the closing one copies it from a
    stack.

    Ids: opening brackets 0..n−1, closing ones n..2n−1 (type j: ``j`` and ``n + j``), so K = 2n,
    ``mask_id = 2n``. :meth:`decode` shows ``( [ { <`` and ``) ] } >`` for n ≤ 4.
    """

    def __init__(self, n_types: int = 2) -> None:
        self.n_types = _check_int("n_types", n_types, 1)
        self.n_symbols = 2 * self.n_types
        self._alphabet = "([{<"[: self.n_types] + ")]}>"[: self.n_types] if self.n_types <= 4 else None

    def __repr__(self) -> str:
        return f"BracketSource(n_types={self.n_types})"

    @staticmethod
    def _check_length(length: int) -> int:
        length = _check_int("length", length, 2)
        if length % 2:
            raise ValueError(f"BracketSource needs an even length (every bracket is closed), got {length}")
        return length

    def sequence_entropy(self, length: int) -> float:
        m = self._check_length(length) // 2
        log_catalan = math.lgamma(2 * m + 1) - math.lgamma(m + 1) - math.lgamma(m + 2)
        return log_catalan + m * math.log(self.n_types)

    def sample(self, n: int, length: int, *, generator: Generator = None, device=None) -> torch.Tensor:
        n = _check_int("n", n, 1)
        L = self._check_length(length)
        u_shape = _uniforms(n, L, generator)  # (n, L) open/close decisions
        u_type = _uniforms(n, L, generator)  # (n, L) bracket types (used at openings)
        r = torch.arange(L + 1)[:, None]  # (L + 1, 1) remaining positions
        h = torch.arange(L + 2)[None, :]  # (1, L + 2) current height
        p_open = torch.exp(_log_paths(r - 1, h + 1) - _log_paths(r, h)).nan_to_num(0.0)  # (L + 1, L + 2)
        stack = torch.zeros((n, L // 2 + 1), dtype=torch.int64)
        height = torch.zeros(n, dtype=torch.int64)
        x = torch.empty((n, L), dtype=torch.int64)
        for t in range(L):
            opens = u_shape[:, t] < p_open[L - t][height]  # (n,)
            kind = _uniform_ids(u_type[:, t], self.n_types)
            slot = torch.where(opens, height, height - 1).clamp_min(0)  # never −1: p_open = 1 at h = 0
            top = stack.gather(1, slot[:, None]).squeeze(1)
            stack.scatter_(1, slot[:, None], torch.where(opens, kind, top)[:, None])
            x[:, t] = torch.where(opens, kind, self.n_types + top)
            height = torch.where(opens, height + 1, height - 1)
        return x.to(device) if device is not None else x

    def is_valid(self, x) -> torch.Tensor:
        """(n,) bool: the row is a Dyck word (matched, well nested, every bracket closed)."""
        x = self._check_x(x)
        n, L = x.shape
        ok = self._in_range(x)
        nt = self.n_types
        stack = torch.zeros((n, L + 1), dtype=torch.int64, device=x.device)
        height = torch.zeros(n, dtype=torch.int64, device=x.device)
        for t in range(L):
            tok = x[:, t]
            opens = tok < nt
            top = stack.gather(1, (height - 1).clamp_min(0)[:, None]).squeeze(1)  # innermost open type
            ok = ok & (opens | ((height > 0) & (tok - nt == top)))
            pushed = torch.where(opens, tok, stack.gather(1, height[:, None]).squeeze(1))
            stack.scatter_(1, height[:, None], pushed[:, None])  # push on an opening bracket
            height = torch.where(opens, height + 1, (height - 1).clamp_min(0))  # height <= t + 1 <= L
        return ok & (height == 0)

    def log_prob(self, x) -> torch.Tensor:
        x = self._check_x(x)
        L = self._check_length(x.shape[1])
        lp = torch.full((x.shape[0],), -self.sequence_entropy(L), dtype=torch.float64, device=x.device)
        return torch.where(self.is_valid(x), lp, torch.full_like(lp, -math.inf))


# ---------------------------------------------------------------------------------- factory
_SOURCES = ("markov", "copy", "reverse", "brackets")


def source_names() -> list[str]:
    return list(_SOURCES)


def get_source(name: str, **kwargs):
    """A source by name: ``markov`` (:class:`MarkovSource`), ``copy`` / ``reverse``
    (:class:`CopySource` with that mode), ``brackets`` (:class:`BracketSource`); ``kwargs`` go to
    the constructor."""
    if name == "markov":
        return MarkovSource(**kwargs)
    if name in ("copy", "reverse"):
        if "mode" in kwargs:
            raise ValueError(f"source {name!r} fixes the mode; do not pass mode={kwargs['mode']!r}")
        return CopySource(mode=name, **kwargs)
    if name == "brackets":
        return BracketSource(**kwargs)
    raise ValueError(f"unknown token source {name!r}; choose one of {list(_SOURCES)}")
