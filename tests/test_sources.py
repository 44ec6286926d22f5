"""Tests for genspace.data.sources: exact log-probabilities and entropies against enumeration and
closed forms, and samplers against the exact distribution."""

from __future__ import annotations

import itertools
import math

import pytest
import torch
from scipy import stats

from genspace.core.random import StackedGenerator
from genspace.data.sources import BracketSource, CopySource, MarkovSource, get_source, source_names


def all_sequences(k: int, length: int) -> torch.Tensor:
    """(k^L, L) every sequence over k symbols."""
    return torch.tensor(list(itertools.product(range(k), repeat=length)), dtype=torch.int64)


def entropy(p: torch.Tensor) -> float:
    p = p[p > 0]
    return float(-(p * p.log()).sum())


SOURCES = [
    (MarkovSource(3, 2, seed=1, concentration=2.0), 5),
    (MarkovSource(3, 0, seed=2), 4),
    (CopySource(3, "copy"), 6),
    (CopySource(3, "reverse"), 6),
    (BracketSource(2), 6),
]


# ------------------------------------------------------------------ conventions and enumeration
@pytest.mark.parametrize("source,length", SOURCES)
def test_id_conventions(source, length):
    assert source.mask_id == source.n_data_tokens == source.vocab_size - 1
    assert source.eos_id is None and source.pad_id is None and source.bos_id is None
    x = source.sample(7, length, generator=torch.Generator().manual_seed(0))
    assert x.shape == (7, length) and x.dtype == torch.int64
    assert int(x.min()) >= 0 and int(x.max()) < source.n_data_tokens


@pytest.mark.parametrize("source,length", SOURCES)
def test_log_prob_normalized_and_entropy_exact(source, length):
    """Σ_x p(x) = 1 over every sequence and −Σ p log p = sequence_entropy(L), by enumeration."""
    x = all_sequences(source.n_symbols, length)
    lp = source.log_prob(x)
    assert lp.dtype == torch.float64 and lp.shape == (x.shape[0],)
    p = lp.exp()
    assert float(p.sum()) == pytest.approx(1.0, abs=1e-12)
    assert entropy(p) == pytest.approx(source.sequence_entropy(length), abs=1e-10)


@pytest.mark.parametrize("source,length", SOURCES)
def test_sampler_matches_exact_distribution(source, length):
    """Chi-square test of sample frequencies against exp(log_prob) on the support."""
    n = 20000
    x = source.sample(n, length, generator=torch.Generator().manual_seed(3))
    assert bool(torch.isfinite(source.log_prob(x)).all())
    support = all_sequences(source.n_symbols, length)
    p = source.log_prob(support).exp()
    keep = p > 0
    support, p = support[keep], p[keep]
    base = source.n_symbols ** torch.arange(length - 1, -1, -1)
    index = {int(k): i for i, k in enumerate((support * base).sum(1))}
    counts = torch.zeros(len(index), dtype=torch.float64)
    for k in (x * base).sum(1).tolist():
        counts[index[k]] += 1
    expected = p / p.sum() * n
    rare = expected < 5  # pooled into one cell, so that the chi-square approximation holds
    if bool(rare.any()):
        assert float(expected[rare].sum()) > 5
        counts = torch.cat([counts[~rare], counts[rare].sum().view(1)])
        expected = torch.cat([expected[~rare], expected[rare].sum().view(1)])
    _, pvalue = stats.chisquare(counts.numpy(), expected.numpy())
    assert pvalue > 1e-3


@pytest.mark.parametrize("source,length", SOURCES)
def test_out_of_range_ids_have_zero_probability(source, length):
    x = source.sample(3, length, generator=torch.Generator().manual_seed(0))
    x[0, 1] = source.mask_id
    x[1, 0] = -1
    lp = source.log_prob(x)
    assert lp[0] == -math.inf and lp[1] == -math.inf and math.isfinite(float(lp[2]))


@pytest.mark.parametrize("source,length", SOURCES)
def test_stacked_generator_batch_independent(source, length):
    alone = source.sample(1, length, generator=StackedGenerator([11]))
    batch = source.sample(3, length, generator=StackedGenerator([5, 11, 7]))
    assert torch.equal(alone[0], batch[1])


# ------------------------------------------------------------------------------------ Markov
def test_markov_two_state_closed_form():
    """h = π0 H(p) + π1 H(q), π0 = q/(p+q), p = P(0→1), q = P(1→0)."""
    p, q = 0.3, 0.1
    src = MarkovSource.from_transition([[1 - p, p], [q, 1 - q]])
    pi0 = q / (p + q)
    hb = lambda a: -a * math.log(a) - (1 - a) * math.log(1 - a)  # noqa: E731
    assert src.stationary.tolist() == pytest.approx([pi0, 1 - pi0], abs=1e-14)
    assert src.entropy_rate == pytest.approx(pi0 * hb(p) + (1 - pi0) * hb(q), abs=1e-14)
    assert src.sequence_entropy(10) == pytest.approx(hb(pi0) + 9 * src.entropy_rate, abs=1e-13)
    x = torch.tensor([[0, 0, 1, 1, 0]])
    expected = math.log(pi0) + math.log(1 - p) + math.log(p) + math.log(1 - q) + math.log(q)
    assert float(src.log_prob(x)) == pytest.approx(expected, abs=1e-13)


def test_markov_order0_entropy_rate_is_shannon_entropy():
    src = MarkovSource(5, 0, seed=4)
    p = src.transition[0]
    assert src.entropy_rate == pytest.approx(entropy(p), abs=1e-14)
    assert torch.allclose(src.token_marginal, p)
    assert src.sequence_entropy(7) == pytest.approx(7 * entropy(p), abs=1e-12)


def test_markov_log_prob_follows_table_index_order():
    """from_transition's P[x_{t-2}, x_{t-1}, x_t] convention, checked with an explicit loop."""
    P = torch.rand(3, 3, 3, generator=torch.Generator().manual_seed(0), dtype=torch.float64) + 0.1
    P = P / P.sum(-1, keepdim=True)
    src = MarkovSource.from_transition(P)
    assert src.order == 2
    x = src.sample(5, 8, generator=torch.Generator().manual_seed(1))
    pi = src.stationary.view(3, 3)  # π[x1, x2] (oldest digit first)
    for row, lp in zip(x.tolist(), src.log_prob(x).tolist()):
        ref = math.log(pi[row[0], row[1]])
        ref += sum(math.log(P[row[t - 2], row[t - 1], row[t]]) for t in range(2, 8))
        assert lp == pytest.approx(ref, abs=1e-12)


@pytest.mark.parametrize("K,order", [(4, 3), (5, 5)])  # dense solve (64 contexts) and power iteration (3125)
def test_markov_stationary_is_fixed_point(K, order):
    src = MarkovSource(K, order, seed=0, concentration=1.0)
    S = K**order
    joint = src.stationary[:, None] * src.transition  # P(context, next)
    moved = joint.view(K, S // K, K).sum(0).reshape(S)  # distribution of the next context
    assert float((moved - src.stationary).abs().max()) < 1e-13
    assert float(src.stationary.sum()) == pytest.approx(1.0, abs=1e-13)
    assert bool((src.transition > 0).all())


def test_markov_every_position_stationary():
    """Exact marginals of every window of k tokens equal π (enumeration)."""
    src = MarkovSource(3, 2, seed=5)
    x = all_sequences(3, 5)
    p = src.log_prob(x).exp()
    for t in range(4):
        ctx = x[:, t] * 3 + x[:, t + 1]
        marg = torch.zeros(9, dtype=torch.float64).index_add_(0, ctx, p)
        assert torch.allclose(marg, src.stationary, atol=1e-13)
    unigram = torch.zeros(3, dtype=torch.float64).index_add_(0, x[:, 4], p)
    assert torch.allclose(unigram, src.token_marginal, atol=1e-13)


def test_markov_mean_nll_of_samples_matches_sequence_entropy():
    src = MarkovSource(8, 2, seed=0)
    x = src.sample(4000, 64, generator=torch.Generator().manual_seed(2))
    nll = -src.log_prob(x)
    se = float(nll.std() / math.sqrt(nll.numel()))
    assert abs(float(nll.mean()) - src.sequence_entropy(64)) < 4 * se


def test_markov_seeded_tables_are_reproducible_and_validated():
    a, b = MarkovSource(4, 1, seed=3), MarkovSource(4, 1, seed=3)
    assert torch.equal(a.transition, b.transition)
    assert not torch.equal(a.transition, MarkovSource(4, 1, seed=4).transition)
    with pytest.raises(ValueError, match="n_symbols"):
        MarkovSource(1, 1)
    with pytest.raises(ValueError, match="concentration"):
        MarkovSource(4, 1, concentration=0.0)
    with pytest.raises(ValueError, match="> 0"):
        MarkovSource.from_transition([[1.0, 0.0], [0.5, 0.5]])
    with pytest.raises(ValueError, match="sum to 1"):
        MarkovSource.from_transition([[0.6, 0.6], [0.5, 0.5]])
    with pytest.raises(ValueError, match="length"):
        MarkovSource(3, 2).sample(2, 1)


def test_markov_sampling_large_batch_shape():
    src = MarkovSource(16, 2, seed=0)
    x = src.sample(10_000, 256, generator=torch.Generator().manual_seed(0))
    assert x.shape == (10_000, 256)
    assert torch.isfinite(src.log_prob(x)).all()


# ------------------------------------------------------------------------------ copy, brackets
def test_copy_and_reverse_by_hand():
    copy, rev = CopySource(4, "copy"), CopySource(4, "reverse")
    x = torch.tensor([[0, 1, 2, 0, 1, 2], [0, 1, 2, 2, 1, 0]])
    assert copy.log_prob(x).tolist() == [-3 * math.log(4), -math.inf]
    assert rev.log_prob(x).tolist() == [-math.inf, -3 * math.log(4)]
    assert copy.sequence_entropy(6) == pytest.approx(3 * math.log(4))
    assert copy.decode(x[1]) == "abccba"
    with pytest.raises(ValueError, match="even"):
        copy.sample(2, 5)
    with pytest.raises(ValueError, match="mode"):
        CopySource(4, "shuffle")


def test_bracket_validity_by_hand():
    src = BracketSource(2)  # ( [ = 0 1,  ) ] = 2 3
    enc = {c: i for i, c in enumerate("([)]")}
    words = {"()[]": True, "([])": True, "([)]": False, "(]()": False, ")(()": False, "((((": False, "(())": True}
    x = torch.tensor([[enc[c] for c in w] for w in words])
    assert src.is_valid(x).tolist() == list(words.values())
    assert src.decode(x[1]) == "([])"
    with pytest.raises(ValueError, match="even"):
        src.log_prob(torch.zeros(1, 3, dtype=torch.int64))


@pytest.mark.parametrize("n_types,length,count", [(1, 8, 14), (2, 6, 5 * 8), (3, 4, 2 * 9)])
def test_bracket_counts_are_catalan_times_types(n_types, length, count):
    src = BracketSource(n_types)
    lp = src.log_prob(all_sequences(2 * n_types, length))
    assert int(torch.isfinite(lp).sum()) == count
    assert src.sequence_entropy(length) == pytest.approx(math.log(count), abs=1e-12)


def test_bracket_long_samples_valid():
    src = BracketSource(3)
    x = src.sample(500, 128, generator=torch.Generator().manual_seed(0))
    assert bool(src.is_valid(x).all())
    depth = torch.where(x < 3, 1, -1).cumsum(1)
    assert int(depth.min()) >= 0 and bool((depth[:, -1] == 0).all())


def test_get_source():
    assert source_names() == ["markov", "copy", "reverse", "brackets"]
    assert isinstance(get_source("markov", n_symbols=4, order=1), MarkovSource)
    assert get_source("reverse", n_symbols=3).mode == "reverse"
    assert get_source("brackets", n_types=2).vocab_size == 5
    with pytest.raises(ValueError, match="markov"):
        get_source("zipf")
