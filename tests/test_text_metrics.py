"""Tests for genspace.metrics.text_metrics on hand-made inputs and sources with known entropy."""

from __future__ import annotations

import math

import pytest
import torch

from genspace.data.sources import BracketSource, CopySource, MarkovSource
from genspace.metrics.text_metrics import (
    GenerativeNLL,
    bits_to_nats,
    distinct_n,
    exact_generative_nll,
    nats_to_bits,
    nelbo_to_perplexity_bound,
    perplexity_from_nll,
    sample_entropy,
    unigram_entropy,
)


def test_distinct_n_by_hand():
    x = torch.tensor([[1, 2, 1, 2], [1, 2, 3, 3]])
    assert distinct_n(x, 1) == 3 / 8  # {1, 2, 3} of 8 tokens
    assert distinct_n(x, 2) == 4 / 6  # (1,2) (2,1) (2,3) (3,3) of 6 bigrams
    assert distinct_n(x, 4) == 1.0
    assert distinct_n(x, 2, per_sequence=True) == pytest.approx((2 / 3 + 3 / 3) / 2)
    # variable lengths: n-grams never span the padding of short sequences
    assert distinct_n([[5, 5, 5], [5, 5], [6]], 2) == 1 / 3
    assert distinct_n([[5, 5, 5], [5, 5], [6]], 2, per_sequence=True) == pytest.approx((1 / 2 + 1) / 2)
    with pytest.raises(ValueError, match="n must be"):
        distinct_n(x, 0)
    with pytest.raises(ValueError, match="no 5-grams"):
        distinct_n(x, 5)


def test_sample_entropy_exact_cases():
    K = 6
    perms = torch.stack([torch.randperm(K, generator=torch.Generator().manual_seed(i)) for i in range(4)])
    res = sample_entropy(perms)
    assert res.mean == pytest.approx(math.log(K), abs=1e-14) and res.stderr == pytest.approx(0.0, abs=1e-14)
    assert sample_entropy(torch.full((3, 9), 4)).mean == 0.0
    x = torch.tensor([[0, 0, 1, 1], [3, 3, 3, 3]])
    res = sample_entropy(x)
    assert res.mean == pytest.approx(math.log(2) / 2, abs=1e-14)
    assert res.stderr == pytest.approx(math.log(2) / 2, abs=1e-14)  # std of {log 2, 0} / √2
    # ignored ids (mask, pad) are left out; variable-length lists
    assert sample_entropy(torch.tensor([[0, 1, 9, 9]]), ignore_ids=[9]).mean == pytest.approx(math.log(2))
    assert sample_entropy([[0, 1, 2], [7]]).mean == pytest.approx(math.log(3) / 2)
    assert math.isnan(sample_entropy([[0, 1]]).stderr)


def test_unigram_entropy_exact():
    x = torch.tensor([[0, 0, 0], [1, 1, 1]])
    assert unigram_entropy(x) == pytest.approx(math.log(2))
    assert sample_entropy(x).mean == 0.0  # each sequence is constant, the pool is not
    assert unigram_entropy([[0, 1, 2, 3], [9]], ignore_ids=[9]) == pytest.approx(math.log(4))


def test_exact_nll_of_source_samples_is_entropy_rate():
    src = MarkovSource(8, 2, seed=0)
    x = src.sample(3000, 64, generator=torch.Generator().manual_seed(1))
    res = exact_generative_nll(x, src)
    assert isinstance(res, GenerativeNLL)
    assert res.invalid_fraction == 0.0 and res.n_valid == res.n_samples == 3000
    assert res.source_entropy == pytest.approx(src.sequence_entropy(64) / 64)
    assert abs(res.mean - res.source_entropy) < 4 * res.stderr
    assert res.bits == pytest.approx(res.mean / math.log(2)) and res.perplexity == pytest.approx(math.exp(res.mean))
    assert set(res.as_dict()) >= {"mean", "stderr", "invalid_fraction", "bits", "perplexity", "source_entropy"}


def test_exact_nll_counts_invalid_samples_apart():
    """Uniform sources: every valid sample has the same probability, so the answer is exact."""
    src = BracketSource(2)
    x = src.sample(10, 8, generator=torch.Generator().manual_seed(0))
    x[:3, 0] = 2  # start with a closing bracket: impossible
    x[3, 4] = src.mask_id  # a mask left by the sampler: impossible
    res = exact_generative_nll(x, src)
    assert res.invalid_fraction == pytest.approx(0.4) and res.n_valid == 6
    assert res.mean == pytest.approx(math.log(14 * 2**4) / 8, abs=1e-14)  # C_4 · 2^4 Dyck words
    assert res.stderr == pytest.approx(0.0, abs=1e-14)
    copy = CopySource(5)
    y = copy.sample(4, 10, generator=torch.Generator().manual_seed(0))
    assert exact_generative_nll(y, copy).mean == pytest.approx(math.log(5) / 2, abs=1e-14)
    y[:, -1] = (y[:, 4] + 1) % 5
    res = exact_generative_nll(y, copy)
    assert res.invalid_fraction == 1.0 and math.isnan(res.mean)


def test_units():
    assert nats_to_bits(math.log(2)) == pytest.approx(1.0)
    assert bits_to_nats(3.0) == pytest.approx(3 * math.log(2))
    assert perplexity_from_nll(math.log(7)) == pytest.approx(7.0)
    assert torch.allclose(perplexity_from_nll(torch.tensor([0.0, math.log(3)])), torch.tensor([1.0, 3.0]))
    # the exp of a NELBO bounds the exact perplexity from above when NELBO >= NLL
    assert nelbo_to_perplexity_bound(math.log(5) + 0.1) >= perplexity_from_nll(math.log(5))


class _SourceAsJudge:
    """A judge whose likelihood is a known source's exact one (the judge's contract, known answer)."""

    def __init__(self, source, kind="exact"):
        self.source, self.kind, self.calls = source, kind, []

    def likelihood(self, x):
        self.calls.append(len(x))
        return {"nll": -self.source.log_prob(x), "n_tokens": torch.full((len(x),), x.shape[1]), "kind": self.kind, "estimator": "test"}


def test_judge_generative_nll_is_the_judges_exact_nll_per_token():
    from genspace.discrete.model import TextModel
    from genspace.metrics.text_metrics import judge_generative_nll
    from genspace.nets.transformer import Transformer, TransformerConfig

    src = MarkovSource(n_symbols=3, order=1, seed=4)
    x = src.sample(50, 12, generator=torch.Generator().manual_seed(0))
    # a judge with a known likelihood gives the source's exact generative NLL, in any batching
    judge = _SourceAsJudge(src)
    g = judge_generative_nll(x, judge, batch_size=16)
    ref = exact_generative_nll(x, src)
    assert judge.calls == [16, 16, 16, 2]
    assert g.mean == pytest.approx(ref.mean, rel=1e-12) and g.stderr == pytest.approx(ref.stderr, rel=1e-12)
    assert g.invalid_fraction == 0 and math.isnan(g.source_entropy)
    # an AR TextModel as the judge: the mean of −Σ_i log softmax(causal logits)_{x_i} / L, by hand,
    # over the data tokens (the start token, the mask id, has probability 0)
    torch.manual_seed(0)
    net = Transformer(TransformerConfig(vocab_size=4, dim=16, depth=1, n_heads=2, max_len=16))
    ar = TextModel(net, "ar", n_data_tokens=3, mask_id=3)
    inp = torch.cat([torch.full((len(x), 1), 3), x[:, :-1]], dim=1)  # the start token is the mask id
    with torch.no_grad():
        logp = torch.log_softmax(net(inp, attn_mask="causal").double()[..., :3], -1).gather(-1, x[..., None])[..., 0]  # (N, L)
    by_hand = (-logp.sum(-1) / x.shape[1]).mean()
    assert judge_generative_nll(x, ar, batch_size=7).mean == pytest.approx(float(by_hand), rel=1e-9)
    # a bound is refused, and so are bad inputs
    with pytest.raises(ValueError, match="exact likelihood"):
        judge_generative_nll(x, _SourceAsJudge(src, kind="bound"))
    with pytest.raises(ValueError, match="likelihood"):
        judge_generative_nll(x, object())
    with pytest.raises(ValueError, match=r"shape \(N, L\)"):
        judge_generative_nll(x[0], judge)
    with pytest.raises(ValueError, match="batch_size"):
        judge_generative_nll(x, judge, batch_size=0)
