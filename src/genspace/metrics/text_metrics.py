"""Metrics of generated token sequences: exact generative NLL under a known source, entropy and
diversity of samples, and likelihood units.

- :func:`exact_generative_nll`: the mean −log p_source(x)/L of generated sequences x under the
  TRUE source (:mod:`genspace.data.sources`), in nats/token with its standard error. Its exp is the
  "exact generative perplexity": the generative perplexity of MDLM/SEDD (Sahoo et al. 2024 §4;
  Lou et al. 2024 §5), with the exact source in place of a GPT-2 judge. It is NOT bounded below by
  the source's entropy: a model that collapses onto the most likely sequences scores better than
  the source itself. Read it together with the source's entropy per token (returned alongside) and
  with :func:`sample_entropy`.
- :func:`judge_generative_nll`: the same mean under a judge language model with an exact
  likelihood (an autoregressive :class:`~genspace.discrete.model.TextModel`), for data without a
  known source: the generative perplexity of MDLM/SEDD with their GPT-2 judge replaced by a
  model trained on the same data. It measures agreement with the judge, so it inherits the
  judge's errors; read it beside the judge NLL of held-out data and the sample entropy.
- :func:`sample_entropy`: the entropy of the token histogram WITHIN each sequence, averaged over
  sequences — the diagnostic of ReMDM (Wang et al. 2025) and of Zheng et al. 2024 ("masked diffusion
  models are secretly time-agnostic...", §4), where low-precision categorical sampling shows as a
  drop in this entropy (repetitive text) while the generative perplexity improves.
- :func:`unigram_entropy`: the entropy of the token histogram pooled over all sequences.
- :func:`distinct_n`: distinct n-grams / all n-grams (Li et al. 2016 "distinct-n").
- Units: :func:`nats_to_bits`, :func:`bits_to_nats`, :func:`perplexity_from_nll`,
  :func:`nelbo_to_perplexity_bound` (exp of a NELBO per token: an UPPER BOUND on the perplexity).

Samples are a (N, L) integer tensor, or a list of 1-D integer sequences of any lengths (e.g.
generated texts cut at EOS) for the entropy and diversity metrics. All entropies are plug-in
estimates in nats.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Sequence, Union

import torch

from genspace.metrics.sample_metrics import MeanWithError

__all__ = [
    "GenerativeNLL",
    "exact_generative_nll",
    "judge_generative_nll",
    "sample_entropy",
    "unigram_entropy",
    "distinct_n",
    "nats_to_bits",
    "bits_to_nats",
    "perplexity_from_nll",
    "nelbo_to_perplexity_bound",
]

_LN2 = math.log(2.0)

Number = Union[float, torch.Tensor]


# ------------------------------------------------------------------------------------ units
def nats_to_bits(x: Number) -> Number:
    """nats → bits (÷ ln 2)."""
    return x / _LN2


def bits_to_nats(x: Number) -> Number:
    """bits → nats (× ln 2)."""
    return x * _LN2


def perplexity_from_nll(nll_per_token: Number) -> Number:
    """Perplexity exp(NLL) from a mean NLL per token in nats."""
    if isinstance(nll_per_token, torch.Tensor):
        return torch.exp(nll_per_token)
    return math.exp(nll_per_token)


def nelbo_to_perplexity_bound(nelbo_per_token: Number) -> Number:
    """exp(NELBO per token, nats): an UPPER BOUND on the model's perplexity, since
    −log p(x) ≤ NELBO(x) (diffusion LMs report this bound: MDLM Table 1, SEDD Table 1)."""
    return perplexity_from_nll(nelbo_per_token)


# ------------------------------------------------------------------------- exact generative NLL
@dataclass(frozen=True)
class GenerativeNLL:
    """Exact NLL per token of generated sequences under the true source.

    Attributes:
        mean: mean of −log p(x)/L over VALID samples (finite log p), nats/token; nan if none is valid.
        stderr: its standard error s/√n_valid (nan with fewer than 2 valid samples).
        invalid_fraction: the fraction of samples with p(x) = 0 (e.g. unmatched brackets, a
            broken copy, a mask id left in the sequence); they are excluded from ``mean``.
        n_samples: N.
        n_valid: samples with a finite log-probability.
        source_entropy: H(X_1..X_L)/L of the source, nats/token (the NLL of the source's own
            samples in expectation); nan if the source does not expose ``sequence_entropy``.
    """

    mean: float
    stderr: float
    invalid_fraction: float
    n_samples: int
    n_valid: int
    source_entropy: float

    @property
    def bits(self) -> float:
        return self.mean / _LN2

    @property
    def bits_stderr(self) -> float:
        return self.stderr / _LN2

    @property
    def perplexity(self) -> float:
        """Exact generative perplexity exp(mean)."""
        return math.exp(self.mean)

    @property
    def source_perplexity(self) -> float:
        return math.exp(self.source_entropy)

    def as_dict(self) -> dict[str, float]:
        """Fields and derived values, for JSON logs."""
        d = asdict(self)
        d.update(
            bits=self.bits, bits_stderr=self.bits_stderr, perplexity=self.perplexity, source_perplexity=self.source_perplexity
        )
        return d


def exact_generative_nll(samples: torch.Tensor, source) -> GenerativeNLL:
    """Mean −log p_source(x)/L of (N, L) samples, with invalid samples counted apart.

    Args:
        samples: (N, L) integer ids.
        source: anything with ``log_prob(x) -> (N,)`` exact log-probabilities in nats (a source of
            :mod:`genspace.data.sources`), optionally ``sequence_entropy(L)``.

    A sample with log p = −inf would make the mean infinite; instead it is excluded and reported in
    ``invalid_fraction`` (a model that produces impossible sequences is visibly penalized there).
    """
    x = torch.as_tensor(samples)
    if x.ndim != 2 or x.shape[0] < 1 or x.shape[1] < 1 or x.dtype.is_floating_point:
        raise ValueError(f"samples must be integer ids of shape (N, L), got {x.dtype} {tuple(x.shape)}")
    n, length = x.shape
    lp = torch.as_tensor(source.log_prob(x)).to(torch.float64)
    if lp.shape != (n,):
        raise ValueError(f"source.log_prob must return shape ({n},), got {tuple(lp.shape)}")
    if bool(torch.isnan(lp).any()) or bool((lp == math.inf).any()):
        raise ValueError("source.log_prob returned nan or +inf")
    valid = torch.isfinite(lp)
    nll = -lp[valid] / length  # (n_valid,)
    n_valid = int(valid.sum())
    mean = float(nll.mean()) if n_valid else math.nan
    stderr = float(nll.std(unbiased=True) / math.sqrt(n_valid)) if n_valid >= 2 else math.nan
    entropy = float(source.sequence_entropy(length)) / length if hasattr(source, "sequence_entropy") else math.nan
    return GenerativeNLL(mean, stderr, 1.0 - n_valid / n, n, n_valid, entropy)


class _JudgeSource:
    """A judge model seen as a source: ``log_prob(x)`` = −(its exact NLL of each sequence)."""

    def __init__(self, judge, batch_size: int) -> None:
        self.judge, self.batch_size = judge, int(batch_size)

    @torch.no_grad()
    def log_prob(self, x: torch.Tensor) -> torch.Tensor:
        out = []
        for start in range(0, len(x), self.batch_size):
            r = self.judge.likelihood(x[start : start + self.batch_size])
            if r.get("kind") != "exact":
                raise ValueError(f"the judge must have an exact likelihood (an autoregressive model), got kind {r.get('kind')!r}: "
                                 f"{r.get('estimator', '')}")
            out.append(-torch.as_tensor(r["nll"], dtype=torch.float64))
        return torch.cat(out)


def judge_generative_nll(samples: torch.Tensor, judge, *, batch_size: int = 256) -> GenerativeNLL:
    """Mean −log p_judge(x)/L of (N, L) samples under a judge model, nats/token ± s.e.

    The generative perplexity of Sahoo et al. 2024 (MDLM, §4.1) and Lou et al. 2024 (SEDD,
    §5.2) is exp of this mean with GPT-2 Large as the judge. Here the judge is any model whose
    ``likelihood(x)`` returns {"nll": (B,) nats per sequence, "kind": "exact"} — an
    autoregressive :class:`~genspace.discrete.model.TextModel` trained on the same data. A bound
    (MDLM, BD3, SEDD) is refused: its value would mix the judge's bound gap into the score.

    Args:
        samples: (N, L) integer ids, every position scored (no padding).
        judge: the judge model (its ``eval`` mode is the caller's business; ``likelihood`` of a
            TextModel switches to it).
        batch_size: sequences per judge call.

    Returns:
        :class:`GenerativeNLL` with ``source_entropy`` nan (the judge's entropy rate is unknown);
        ``invalid_fraction`` counts samples the judge gives probability 0.
    """
    if not hasattr(judge, "likelihood"):
        raise ValueError(f"judge must have a likelihood(x) method (a TextModel), got {type(judge).__name__}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    return exact_generative_nll(samples, _JudgeSource(judge, batch_size))


# ------------------------------------------------------------------------- entropy, diversity
def _as_padded(samples) -> tuple[torch.Tensor, torch.Tensor]:
    """(N, L) int64 ids and (N, L) bool valid from a tensor or a list of 1-D sequences."""
    if isinstance(samples, torch.Tensor):
        if samples.ndim != 2 or samples.dtype.is_floating_point:
            raise ValueError(f"samples must be integer ids of shape (N, L), got {samples.dtype} {tuple(samples.shape)}")
        x = samples.long()
        return x, torch.ones_like(x, dtype=torch.bool)
    seqs = [torch.as_tensor(s, dtype=torch.int64).reshape(-1) for s in samples]
    if not seqs:
        raise ValueError("no samples given")
    length = max(s.shape[0] for s in seqs)
    x = torch.full((len(seqs), length), -1, dtype=torch.int64)
    valid = torch.zeros((len(seqs), length), dtype=torch.bool)
    for i, s in enumerate(seqs):
        x[i, : s.shape[0]] = s
        valid[i, : s.shape[0]] = True
    return x, valid


def _drop_ids(x: torch.Tensor, valid: torch.Tensor, ignore_ids: Sequence[int]) -> torch.Tensor:
    for i in ignore_ids:
        valid = valid & (x != int(i))
    return valid


def sample_entropy(samples, *, ignore_ids: Sequence[int] = ()) -> MeanWithError:
    """Entropy of the token histogram within each sequence, averaged over sequences (nats).

    For one sequence with token counts c_v out of n tokens: H = −Σ_v (c_v/n) log(c_v/n); this is
    0 for a constant sequence and log K for a sequence holding each of K tokens equally often.
    Tokens in ``ignore_ids`` (e.g. pad, mask, EOS) are left out; sequences left empty are skipped.

    Returns:
        mean and standard error over sequences (stderr nan for a single sequence).
    """
    x, valid = _as_padded(samples)
    valid = _drop_ids(x, valid, ignore_ids)
    n, length = x.shape
    rows = torch.arange(n)[:, None].expand(n, length)[valid]  # (M,)
    toks = x[valid]
    if toks.numel() == 0:
        raise ValueError("sample_entropy: no tokens left (every sequence is empty after ignore_ids)")
    offset = int(toks.min())
    span = int(toks.max()) - offset + 1
    keys, counts = torch.unique(rows * span + (toks - offset), return_counts=True)  # one per (row, token)
    key_rows = keys // span
    totals = torch.bincount(rows, minlength=n).to(torch.float64)  # (N,)
    p = counts.to(torch.float64) / totals[key_rows]
    h = torch.zeros(n, dtype=torch.float64).scatter_add_(0, key_rows, -p * torch.log(p))  # (N,)
    h = h[totals > 0]
    stderr = float(h.std(unbiased=True) / math.sqrt(h.numel())) if h.numel() >= 2 else math.nan
    return MeanWithError(float(h.mean()), stderr)


def unigram_entropy(samples, *, ignore_ids: Sequence[int] = ()) -> float:
    """Entropy of the token histogram pooled over all sequences (nats, plug-in)."""
    x, valid = _as_padded(samples)
    toks = x[_drop_ids(x, valid, ignore_ids)]
    if toks.numel() == 0:
        raise ValueError("unigram_entropy: no tokens left")
    _, counts = torch.unique(toks, return_counts=True)
    p = counts.to(torch.float64) / toks.numel()
    return float(-(p * torch.log(p)).sum())


def distinct_n(samples, n: int, *, per_sequence: bool = False) -> float:
    """The fraction of distinct n-grams: #distinct / #n-grams (n-grams never cross sequences).

    Args:
        samples: (N, L) ids or a list of sequences.
        n: n-gram length ≥ 1.
        per_sequence: False — count over the whole set of samples (corpus-level distinct-n, Li et
            al. 2016, normalized by the number of n-grams so that 1 means all distinct);
            True — the fraction within each sequence, averaged over the sequences that have at
            least one n-gram (repetition inside a sample).
    """
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"n must be an integer >= 1, got {n!r}")
    x, valid = _as_padded(samples)
    if x.shape[1] < n:
        raise ValueError(f"distinct_n: sequences of length {x.shape[1]} have no {n}-grams")
    grams = x.unfold(1, n, 1)  # (N, L − n + 1, n)
    ok = valid.unfold(1, n, 1).all(-1)  # (N, L − n + 1)
    if not bool(ok.any()):
        raise ValueError(f"distinct_n: no sequence has a {n}-gram")
    if not per_sequence:
        g = grams[ok]  # (M, n)
        return torch.unique(g, dim=0).shape[0] / g.shape[0]
    rows = torch.arange(x.shape[0])[:, None].expand_as(ok)[ok]  # (M,)
    g = torch.cat([rows[:, None], grams[ok]], dim=1)  # (M, n + 1)
    distinct_rows = torch.unique(g, dim=0)[:, 0]
    distinct = torch.bincount(distinct_rows, minlength=x.shape[0]).to(torch.float64)
    total = ok.sum(1).to(torch.float64)
    has = total > 0
    return float((distinct[has] / total[has]).mean())
