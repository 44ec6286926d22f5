"""AR and block-diffusion decoding with the KV cache: exactness, conditionals, call counts, stopping."""

import itertools
import math

import pytest
import torch

from genspace.core.random import StackedGenerator
from genspace.discrete.block import reveal_step, sample_ar, sample_block_diffusion
from genspace.discrete.categorical import sample_categorical
from genspace.nets.transformer import Transformer, TransformerConfig

K = 5
MASK = K
V = K + 1


def make_net(time_conditioning=False, seed=0, std=0.15):
    torch.manual_seed(seed)
    net = Transformer(TransformerConfig(vocab_size=V, dim=32, depth=2, n_heads=4, time_conditioning=time_conditioning))
    net = net.double()
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in net.parameters():
            p.copy_(torch.randn(p.shape, generator=g, dtype=p.dtype) * std)
    return net.eval()


class Recorder(torch.nn.Module):
    """Counts the network calls and records (cached length, tokens fed) of each."""

    def __init__(self, net, bias=None):
        super().__init__()
        self.net, self.config, self.embed = net, net.config, net.embed
        self.calls = []
        self.bias = bias

    def new_cache(self, capacity=0):
        return self.net.new_cache(capacity)

    def forward(self, tokens, t=None, **kw):
        cache = kw.get("cache")
        self.calls.append((0 if cache is None else len(cache), tokens.shape[1]))
        out = self.net(tokens, t, **kw)
        return out if self.bias is None else out + self.bias


def gen(seed):
    return torch.Generator().manual_seed(seed)


# ----------------------------------------------------------------------------------------------
# AR


@pytest.mark.parametrize("time_conditioning", [False, True])
def test_ar_cache_gives_identical_tokens(time_conditioning):
    net = make_net(time_conditioning)
    prompt = torch.tensor([1, 3])
    a, ia = sample_ar(net, 4, 12, start_id=MASK, generator=StackedGenerator(range(4)), prompt=prompt, use_cache=True)
    b, ib = sample_ar(net, 4, 12, start_id=MASK, generator=StackedGenerator(range(4)), prompt=prompt, use_cache=False)
    assert torch.equal(a, b)
    assert (a[:, :2] == prompt).all() and (a != MASK).all()
    assert ia["nfe"] == ib["nfe"] == 10
    assert ia["tokens_processed"] == 12  # start + prompt, then one token per call
    assert ib["tokens_processed"] == sum(range(3, 13))
    # per-sequence seeds: a sequence does not depend on the batch it is drawn in
    c, _ = sample_ar(net, 1, 12, start_id=MASK, generator=StackedGenerator([2]), prompt=prompt)
    assert torch.equal(c[0], a[2])


def test_ar_samples_follow_the_model_distribution():
    """Empirical frequencies of all K² sequences of length 2 against the model's chain rule."""
    net = make_net(seed=1, std=0.3)
    n = 6000
    x, _ = sample_ar(net, n, 2, start_id=MASK, generator=gen(0))
    with torch.no_grad():
        first = net(torch.tensor([[MASK]]), attn_mask="causal")[0, -1]
        first[MASK] = float("-inf")
        p1 = torch.softmax(first, -1)
        seqs = torch.tensor(list(itertools.product(range(K), repeat=2)))
        second = net(torch.cat([torch.full((K * K, 1), MASK), seqs[:, :1]], 1), attn_mask="causal")[:, -1]
        second[:, MASK] = float("-inf")
        p = p1[seqs[:, 0]] * torch.softmax(second, -1).gather(1, seqs[:, 1:])[:, 0]  # (K²,)
    counts = torch.stack([((x == s).all(1)).sum() for s in seqs]).double()
    chi2 = float(((counts - n * p) ** 2 / (n * p)).sum())
    assert chi2 < 24 + 5 * math.sqrt(2 * 24)  # 24 degrees of freedom


# ----------------------------------------------------------------------------------------------
# block diffusion


@pytest.mark.parametrize("time_conditioning", [False, True])
@pytest.mark.parametrize("sampler", ["ancestral", "first-hitting"])
def test_block_diffusion_cache_gives_identical_tokens(time_conditioning, sampler):
    net = make_net(time_conditioning, seed=2)
    kw = dict(mask_id=MASK, steps_per_block=5, prompt=torch.tensor([[4, 0, 2, 1, 3]] * 3), schedule="cosine", sampler=sampler)
    a, ia = sample_block_diffusion(net, 3, 14, 4, generator=StackedGenerator([5, 6, 7]), use_cache=True, **kw)
    b, ib = sample_block_diffusion(net, 3, 14, 4, generator=StackedGenerator([5, 6, 7]), use_cache=False, **kw)
    assert torch.equal(a, b)
    assert (a[:, :5] == kw["prompt"]).all() and (a != MASK).all()  # 14 = 3 blocks + a short one, prompt mid-block
    assert ia["nfe"] == ib["nfe"] and ia["blocks"] == 3  # block 0 is all prompt: not sampled
    assert ia["tokens_processed"] < ib["tokens_processed"] and ia["sampler"] == sampler
    if sampler == "first-hitting":
        assert ia["nfe"] == 14 - 5  # exactly one call per generated token


def test_cached_block_sampler_never_reruns_finished_blocks():
    bs, length, steps = 4, 16, 16
    for timed in (False, True):
        rec = Recorder(make_net(timed, seed=3))
        x, info = sample_block_diffusion(rec, 2, length, bs, mask_id=MASK, steps_per_block=steps, generator=gen(1))
        assert info["nfe"] == len(rec.calls) and info["tokens_processed"] == sum(n for _, n in rec.calls)
        for cached, fed in rec.calls:
            # each call feeds at most the previous (finished, uncached) block and the current block
            assert fed <= 2 * bs and cached % bs == 0 and cached + fed <= length
        firsts = [c for c in rec.calls if c[1] == 2 * bs]
        assert len(firsts) == length // bs - 1  # finished blocks are cached inside the next block's first call
        if timed:  # one call per step until the block is full
            assert length // bs <= info["nfe"] <= steps * length // bs
        else:  # logits are reused when a step reveals nothing: at most one call per revealing step
            assert length // bs <= info["nfe"] <= min(steps, 2 * bs) * length // bs  # n = 2 sequences


def test_block_size_one_with_one_step_is_autoregressive():
    """b′ = 1, S = 1: every token is drawn from x_θ([x^{<ℓ} ; mask]) — the AR conditionals of the block model."""
    net = make_net(seed=4, std=0.3)
    n, length = 5, 9
    for temperature in (1.0, 0.7):
        x, info = sample_block_diffusion(
            net, n, length, 1, mask_id=MASK, steps_per_block=1, generator=gen(11), temperature=temperature
        )
        g = gen(11)
        ref = torch.zeros(n, 0, dtype=torch.long)
        with torch.no_grad():
            for _ in range(length):
                inp = torch.cat([ref, torch.full((n, 1), MASK)], 1)
                logits = net(inp, attn_mask="block-causal", block_size=1)[:, -1:]  # (n, 1, V)
                logits[..., MASK] = float("-inf")
                ref = torch.cat([ref, sample_categorical(logits, generator=g, temperature=temperature)], 1)
        assert torch.equal(x, ref)
        assert info["nfe"] == length


def test_reveal_step_probabilities():
    """P(reveal) = (α_s − α_t)/(1 − α_t), revealed tokens ~ softmax(logits/τ) without the mask."""
    logits = torch.tensor([1.0, -0.5, 0.3, 2.0, 0.0, 5.0], dtype=torch.float64)  # the mask logit (5.0) must be ignored
    n = 20000
    x_t = torch.full((n, 1), MASK)
    x_t[:10] = 2  # unmasked positions are kept
    out = reveal_step(logits.expand(n, 1, V), x_t, 0.2, 0.6, mask_id=MASK, generator=gen(3), temperature=0.5)
    assert (out[:10] == 2).all()
    out = out[10:, 0]
    m = n - 10
    p_reveal = (0.6 - 0.2) / (1 - 0.2)
    revealed = out != MASK
    assert abs(float(revealed.double().mean()) - p_reveal) < 4 * math.sqrt(p_reveal * (1 - p_reveal) / m)
    q = torch.softmax(logits[:K] / 0.5, -1)
    freq = torch.bincount(out[revealed], minlength=V)[:K].double()
    chi2 = float(((freq - revealed.sum() * q) ** 2 / (revealed.sum() * q)).sum())
    assert chi2 < 4 + 5 * math.sqrt(8)
    last = reveal_step(logits.expand(3, 2, V), torch.full((3, 2), MASK), 0.2, 1.0, mask_id=MASK, generator=gen(0))
    assert (last != MASK).all()  # s = 0: everything revealed
    greedy = reveal_step(logits.expand(3, 2, V), torch.full((3, 2), MASK), 0.0, 1.0, mask_id=MASK, temperature=0.0)
    assert (greedy == 3).all()


def test_eos_stops_decoding_and_pads():
    eos, pad = 2, 0
    bias = torch.zeros(V, dtype=torch.float64)
    bias[eos] = 50.0
    rec = Recorder(make_net(seed=5), bias=bias)
    x, info = sample_block_diffusion(
        rec, 3, 16, 4, mask_id=MASK, steps_per_block=2, generator=gen(0), prompt=torch.tensor([1]), eos_id=eos, pad_id=pad
    )
    assert info["blocks"] == 1 and info["generated_tokens"] == 3 * 3  # stopped after the first block
    assert (x[:, 0] == 1).all() and (x[:, 1] == eos).all() and (x[:, 2:] == pad).all()
    y, info = sample_ar(rec, 3, 10, start_id=MASK, generator=gen(0), eos_id=eos, pad_id=pad)
    assert info["nfe"] == 1 and (y[:, 0] == eos).all() and (y[:, 1:] == pad).all()


def test_low_entropy_stops_decoding_and_pads():
    """A network that always predicts one token produces a zero-entropy window: every sequence stops
    after the first block that completes the window; a near-uniform one (entropy ≈ log K over a
    window of 8) never triggers a threshold of 0.5 nats."""
    pad = 0
    bias = torch.zeros(V, dtype=torch.float64)
    bias[3] = 50.0
    rec = Recorder(make_net(seed=8), bias=bias)
    kw = dict(mask_id=MASK, steps_per_block=2, pad_id=pad, entropy_stop=0.5, entropy_window=6)
    x, info = sample_block_diffusion(rec, 3, 24, 4, generator=gen(0), **kw)
    assert info["blocks"] == 2 and info["stopped_by_entropy"] == 3  # 8 ≥ 6 tokens after two blocks
    assert (x[:, :8] == 3).all() and (x[:, 8:] == pad).all()
    flat = Recorder(make_net(seed=8, std=1e-4))  # logits ≈ 0: uniform over the K data tokens
    y, info = sample_block_diffusion(flat, 3, 24, 4, generator=gen(0), **{**kw, "entropy_window": 8})
    assert info["blocks"] == 6 and info["stopped_by_entropy"] == 0 and (y != MASK).all()
    with pytest.raises(ValueError, match="entropy_stop needs pad_id"):
        sample_block_diffusion(flat, 1, 8, 4, mask_id=MASK, steps_per_block=1, entropy_stop=1.0)


def test_sampler_inputs_are_validated():
    net = make_net()
    with pytest.raises(ValueError, match="steps_per_block"):
        sample_block_diffusion(net, 2, 8, 4, mask_id=MASK, steps_per_block=0)
    with pytest.raises(ValueError, match="prompt"):
        sample_ar(net, 2, 3, start_id=MASK, prompt=torch.zeros(2, 4, dtype=torch.long))
    with pytest.raises(ValueError, match="temperature"):
        sample_ar(net, 2, 3, start_id=MASK, temperature=-1.0)
    with pytest.raises(ValueError, match="unknown block sampler 'euler'"):
        sample_block_diffusion(net, 2, 8, 4, mask_id=MASK, steps_per_block=1, sampler="euler")


# ----------------------------------------------------------------------------------------------
# first-hitting within blocks


class ExactBlockDenoiser:
    """The exact BD3 denoiser of a joint distribution p over all K_d^L sequences (enumerated):
    logits of block [lo, hi) = log p(x^ℓ = v | the clean prefix, the unmasked tokens of the block),
    marginal over the later blocks. Only the uncached path (``use_cache=False``) is served."""

    def __init__(self, p: torch.Tensor, k_data: int, length: int):
        self.config = type("C", (), {"time_conditioning": False})()
        self.seqs = torch.tensor(list(itertools.product(range(k_data), repeat=length)))  # (S, L)
        self.p, self.k, self.calls = p, k_data, 0

    def __call__(self, tokens, t=None, *, attn_mask, block_size, output_slice, cache=None, commit=None):
        assert cache is None and attn_mask == "block-causal"
        self.calls += 1
        hi = tokens.shape[1]
        lo = output_slice.start
        seen = tokens[:, None, :] == self.seqs[None, :, :hi]  # (n, S, hi)
        ok = (seen | (tokens[:, None, :] == MASK)).all(-1)  # (n, S) sequences consistent with the input
        w = ok.double() * self.p  # (n, S)
        onehot = torch.nn.functional.one_hot(self.seqs[:, lo:hi], V).double()  # (S, l, V)
        probs = torch.einsum("ns,slv->nlv", w, onehot)
        return torch.log(probs / probs.sum(-1, keepdim=True))  # (n, l, V): −inf at the mask


def _chi2(x: torch.Tensor, seqs: torch.Tensor, p: torch.Tensor) -> float:
    code = (x[:, None, :] == seqs[None]).all(-1).double().argmax(-1)  # (n,) index of each sample
    counts = torch.bincount(code, minlength=len(p)).double()
    expected = len(x) * p
    return float(((counts - expected) ** 2 / expected).sum())


def test_block_first_hitting_draws_each_block_from_its_exact_conditional():
    """With the exact denoiser, first-hitting within blocks samples the joint exactly (one call
    per token); one ancestral step per block (every token of a block revealed at once from its
    marginal) does not, on a distribution with strong within-block dependence."""
    k_data, length, bs, n = 3, 4, 2, 20000
    g = torch.Generator().manual_seed(0)
    p = torch.softmax(2.5 * torch.randn(k_data**length, generator=g, dtype=torch.float64), 0)
    den = ExactBlockDenoiser(p, k_data, length)
    dof = len(p) - 1
    bound = dof + 5 * math.sqrt(2 * dof)
    x, info = sample_block_diffusion(den, n, length, bs, mask_id=MASK, steps_per_block=1, generator=gen(1),
                                     use_cache=False, sampler="first-hitting")
    assert info["nfe"] == den.calls == length and (x != MASK).all()
    assert _chi2(x, den.seqs, p) < bound
    y, _ = sample_block_diffusion(den, n, length, bs, mask_id=MASK, steps_per_block=1, generator=gen(1), use_cache=False)
    assert _chi2(y, den.seqs, p) > 10 * bound
    # top-k with random order and one token per step: the same law; with one step per block: not
    z, info = sample_block_diffusion(den, n, length, bs, mask_id=MASK, steps_per_block=bs, generator=gen(2),
                                     use_cache=False, sampler="top-k", order="random")
    assert info["nfe"] == length and _chi2(z, den.seqs, p) < bound
    w, _ = sample_block_diffusion(den, n, length, bs, mask_id=MASK, steps_per_block=1, generator=gen(2),
                                  use_cache=False, sampler="top-k", order="random")
    assert _chi2(w, den.seqs, p) > 10 * bound
    # the dilated order with one token per step: the chain rule in a fixed order, exact too
    d, info = sample_block_diffusion(den, n, length, bs, mask_id=MASK, steps_per_block=bs, generator=gen(3),
                                     use_cache=False, sampler="top-k", order="dilated")
    assert info["nfe"] == length and _chi2(d, den.seqs, p) < bound


@pytest.mark.parametrize("time_conditioning", [False, True])
def test_block_topk_cache_gives_identical_tokens_and_fixed_counts(time_conditioning):
    net = make_net(time_conditioning, seed=9)
    for order in ("random", "low-confidence", "dilated"):
        kw = dict(mask_id=MASK, steps_per_block=3, sampler="top-k", order=order)
        a, ia = sample_block_diffusion(net, 3, 16, 8, generator=StackedGenerator([1, 2, 3]), use_cache=True, **kw)
        b, ib = sample_block_diffusion(net, 3, 16, 8, generator=StackedGenerator([1, 2, 3]), use_cache=False, **kw)
        assert torch.equal(a, b) and (a != MASK).all() and ia["nfe"] == ib["nfe"] == 2 * 3

    seen = []

    class Spy(Recorder):
        def forward(self, tokens, t=None, **kw):
            seen.append(int((tokens[0, -8:] != MASK).sum()))  # tokens of the block revealed before this call
            return super().forward(tokens, t, **kw)

    # a block of 8 in 3 steps (linear α): ⌈8/3⌉ = 3 kept, then ⌈16/3⌉ − 3 = 3, then the last 2
    sample_block_diffusion(Spy(net), 1, 8, 8, mask_id=MASK, steps_per_block=3, generator=gen(0), sampler="top-k")
    assert seen == [0, 3, 6]
    # the dilated order in a block of 8 with 4 steps: {0, 4}, {2, 6}, {1, 5}, {3, 7}
    states = []

    class Tracker(Recorder):
        def forward(self, tokens, t=None, **kw):
            states.append((tokens[0, -8:] != MASK).nonzero().flatten().tolist())
            return super().forward(tokens, t, **kw)

    x, _ = sample_block_diffusion(Tracker(net), 1, 16, 8, mask_id=MASK, steps_per_block=4, generator=gen(0), sampler="top-k", order="dilated")
    assert (x != MASK).all()
    # the block's state before each call (the second block's first call also carries the first, clean)
    assert states == [[], [0, 4], [0, 2, 4, 6], [0, 1, 2, 4, 5, 6]] * 2


def test_block_topk_work_count_is_the_one_the_speed_ceiling_uses():
    """The README's ceiling for BD3 against MDLM: with the KV cache, S calls per block feed every
    token S times while its block is denoised, plus once when the finished block is committed to
    the cache (inside the next block's first call; the last block is never committed): S·L + L − b
    tokens. Without the cache, each call feeds the whole prefix and its block."""
    net = make_net(seed=4)
    length, bs = 32, 8
    for steps in (1, 2, 4):
        for use_cache in (True, False):
            rec = Recorder(net)
            x, info = sample_block_diffusion(rec, 2, length, bs, mask_id=MASK, steps_per_block=steps, generator=gen(5),
                                             sampler="top-k", order="dilated", use_cache=use_cache)
            assert (x != MASK).all() and info["nfe"] == len(rec.calls) == steps * length // bs
            fed = sum(n for _, n in rec.calls)
            assert info["tokens_processed"] == fed
            if use_cache:
                assert fed == steps * length + length - bs
            else:
                assert fed == steps * sum((b + 1) * bs for b in range(length // bs))


def test_block_first_hitting_reveal_times():
    """Time-conditioned network: within a block the times fed to it decrease, and the first reveal
    time of m masked tokens at t = 1 is the largest of m uniforms (linear schedule): mean m/(m+1)."""
    times = []

    class TimeRecorder(Recorder):
        def forward(self, tokens, t=None, **kw):
            times.append(t[:, -1].clone())  # (n,) the block time of each sequence
            return super().forward(tokens, t, **kw)

    rec = TimeRecorder(make_net(True, seed=7))
    n, bs = 4000, 4
    sample_block_diffusion(rec, n, 2 * bs, bs, mask_id=MASK, steps_per_block=1, generator=gen(2), sampler="first-hitting")
    t = torch.stack(times)  # (2 blocks × bs calls, n)
    for blk in range(2):
        tb = t[blk * bs : (blk + 1) * bs]
        assert (tb[1:] < tb[:-1]).all() and (tb > 0).all() and (tb < 1).all()
        first = tb[0]
        se = math.sqrt(bs / ((bs + 1) ** 2 * (bs + 2)) / n)
        assert abs(float(first.mean()) - bs / (bs + 1)) < 4 * se

