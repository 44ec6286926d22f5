"""Discrete-diffusion benchmark (issue 5): likelihood, sample quality against NFE, and speed.

Part 1, a Markov source whose entropy is known exactly (configs/text-markov-*.yaml: 8 symbols,
order 2, Dirichlet(0.5) rows, source seed 0, L = 64). MDLM, AR, BD3 (block 8) and SEDD (absorbing,
log-linear) are trained with the SAME Transformer (``--dim``, ``--depth``, ``--heads``; equal
parameter counts are printed), the same batch, optimizer (AdamW, lr 1e-3, 200 warm-up steps, grad
clip 1, EMA 0.999 with warm-up: the recipes' values), the same data and the same number of steps;
every network starts from the same initial weights (``build_model`` seeds with ``train.seed``).

- Table A: held-out NLL per token at 25 / 50 / 100 % of training — AR exact; MDLM / BD3 the
  NELBO of ``TextModel.likelihood`` (stratified u, ``--n-t`` t-points per sequence, float64
  log-softmax), SEDD its score-entropy bound — with the standard error over sequences, the
  ratio to the exact entropy H = H(X_1..X_L)/L of the source and to the AR NLL at the same step,
  and the paired difference to the source's own −log p on the same sequences. Training CPU
  seconds exclude the evaluations.
- Table B: of ``--n`` generated sequences per sampler setting, the exact generative NLL per token
  under the TRUE source (± s.e.), the within-sequence sample entropy (the data's beside it: a
  sampler can lower the generative NLL by producing low-entropy sequences), the NFE counted by
  the samplers, and tokens/s (thread CPU time and wall time).
- Table C (speed, L = ``--speed-length``, 256 by default): MDLM, BD3 and AR of the same size:
  the Part 1 weights (RoPE, no length-dependent parameters) fine-tuned for ``--speed-steps``
  steps at that length (batch ``--batch`` × 64 / L sequences: the same tokens per step as Part 1),
  because from scratch MDLM at batch 16 is still at the unigram level (NELBO ≈ 2.03 nats vs
  H = 1.56) after 2000 steps (``--speed-scratch`` trains from scratch). With ``--models-dir``
  the trained models are saved there as safetensors and loaded by later runs; a model for a new
  length starts from the longest saved one below it. ``--prepare`` only trains and saves (run
  one process per model to use more cores); ``--only-speed`` runs Table C alone (and, with
  ``--block-table`` / ``--mdlm-table``, Table B for the block samplers / the MDLM samplers on the
  saved Part 1 BD3 / MDLM model). Samplers
  swept: MDLM ancestral, first-hitting and top-k with random order (``--speed-mdlm-steps``) and
  with the dilated order; BD3 ancestral steps per block, first-hitting within blocks and top-k
  with random and dilated order within blocks;
  only samplers that draw from the model's distribution compete (confidence orders lower the
  generative NLL by lowering the sample entropy). Quality is matched on these trained models:
  q* = (1 + ``--match-tol``) × max(best generative NLL of MDLM, best of BD3) over their sweeps;
  each model runs at its setting with the fewest network calls that reaches generative NLL ≤ q*.
  Those settings are then timed ``--repeats`` times (interleaved), with and without the cache;
  medians are reported. A second table matches every BD3 setting with the cheapest MDLM
  setting within (1 + ``--match-tol``) of its quality.

Part 2, real English text: the license texts in /usr/share/common-licenses (one version of each
family, no near-duplicates), character tokenizer, rows of 128 characters packed with EOS between
files, a random split of the rows into training rows and two held-out sets. MDLM, AR and BD3 at
equal size and steps, evaluated every ``--text-eval-every`` steps: test NLL (NELBO) per
character on one held-out set, validation NLL on the other; each model's early-stopping step is
its lowest validation NLL, and the MDLM/AR ratio is taken at those steps (a small corpus lets
AR overfit: a ratio at the last step would compare against an overfitted baseline). No exact
generative perplexity exists for real text, so samples (from the early-stopping weights) are
scored by sample entropy and distinct-n against held-out text.

Outputs (``--out``): Markdown tables on stdout and in ``tables.md``; ``results.json``;
``gen_nll_vs_nfe.png`` (generative NLL and sample entropy against NFE per sampler) and
``speed_l256.png``.

    OMP_NUM_THREADS=1 python benchmarks/bench_text.py              # full run (~90 min on one busy core)
    OMP_NUM_THREADS=1 python benchmarks/bench_text.py --quick      # smoke run (a few minutes)
    options: --steps N  --batch B  --dim D --depth K --heads H  --n N  --n-nll N  --n-t T
             --out DIR (default benchmarks/results/text)  --threads T  --skip-text  --skip-speed
             --text-files NAMES (comma-separated, in /usr/share/common-licenses)
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Optional

import torch

from genspace.config import to_dict
from genspace.core.random import StackedGenerator
from genspace.discrete.samplers import ORDERS as SAMPLER_ORDERS, sample_tokens
from genspace.discrete.schedules import get_schedule
from genspace.experiment import build_model, load_config, load_data, sample_seeds
from genspace.metrics.text_metrics import distinct_n, exact_generative_nll, nats_to_bits, sample_entropy
from genspace.nets.utils import param_count
from genspace.train import Trainer

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = ROOT / "configs"
LICENSES = Path("/usr/share/common-licenses")
# One version per license family: GFDL-1.2, LGPL-2, GPL-1 and LGPL-3 are left out because they
# repeat (most of) the text of GFDL-1.3, LGPL-2.1, GPL-2 and GPL-3, which would put near-copies
# of training rows into the held-out rows.
TEXT_FILES = ("Apache-2.0", "Artistic", "BSD", "CC0-1.0", "GFDL-1.3", "GPL-2", "GPL-3", "LGPL-2.1", "MPL-1.1", "MPL-2.0")
MARKOV_MODELS = ("mdlm", "ar", "bd3", "sedd")
TEXT_MODELS = ("mdlm", "ar", "bd3")
EVAL_FRACTIONS = (0.25, 0.5, 1.0)
ORDERS = SAMPLER_ORDERS  # every unmasking order of the library's top-k samplers
TARGET_NELBO = 1.05  # masked-diffusion NELBO ≤ 1.05 × AR NLL
TARGET_SPEED = 5.0  # BD3 with cache ≥ 5 × the tokens/s of full-sequence MDLM at equal quality


def _log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


# ----------------------------------------------------------------------------- configurations


def _common(args, steps: int, batch: int) -> list[str]:
    """Overrides shared by every model: the network and the training loop (recipes' optimizer)."""
    every = max(1, steps // 4)
    return [
        f"model.net.dim={args.dim}", f"model.net.depth={args.depth}", f"model.net.n_heads={args.heads}",
        f"train.steps={steps}", f"train.batch_size={batch}", "train.lr=1e-3", f"train.warmup_steps={min(200, max(1, steps // 10))}",
        "train.grad_clip=1.0", "train.ema.kind=decay", "train.ema.decay=0.999", "train.ckpt_every=null",
        f"train.eval_every={every}", f"train.log_every={every}",
    ]


def markov_config(objective: str, args, *, length: int, batch: int, n_train: int, n_eval: int, steps: int):
    """The recipe configs/text-markov-<objective>.yaml at the benchmark's size."""
    over = _common(args, steps, batch) + [f"data.length={length}", f"data.n_train={n_train}", f"data.n_eval={n_eval}"]
    if objective == "bd3":
        over.append(f"model.block_size={args.block}")
    return load_config(CONFIGS / f"text-markov-{objective}.yaml", tuple(over))


def text_eval_every(args) -> int:
    """Steps between Part 2 evaluations: --text-eval-every, or steps / 12."""
    return args.text_eval_every or max(1, args.text_steps // 12)


def text_config(objective: str, args, corpus: Path):
    """The same recipe (objective, schedule, optimizer) on the local text corpus, char tokenizer."""
    over = _common(args, args.text_steps, args.text_batch) + [f"train.eval_every={text_eval_every(args)}",
        "data.name=text", f"data.path={corpus}", "data.tokenizer=char", "data.text_mode=pack",
        f"data.length={args.text_length}", f"data.n_eval={args.text_n_eval}",
    ]
    if objective == "bd3":
        over.append(f"model.block_size={args.block}")
    return load_config(CONFIGS / f"text-markov-{objective}.yaml", tuple(over))


# ----------------------------------------------------------------------------- likelihood


def heldout_nll(model, x: torch.Tensor, *, n_t: int, source=None, seed: int = 12345) -> dict:
    """Per-token NLL (or bound) of held-out sequences x (N, L): mean ± s.e. over sequences,
    the estimator's own Monte-Carlo s.e., and (synthetic source) the paired excess over the
    source's exact −log p(x)/L on the same sequences."""
    lik = model.likelihood(x, n_t=n_t, generator=StackedGenerator(sample_seeds(seed, len(x))))
    per = (lik["nll"] / lik["n_tokens"]).double()  # (N,) nats per token
    mc = (lik["stderr"] / lik["n_tokens"]).double()  # (N,)
    n = len(per)
    out = {
        "nll": float(per.mean()), "nll_se": float(per.std() / math.sqrt(n)),
        "mc_se": float(mc.pow(2).sum().sqrt() / n) if bool(torch.isfinite(mc).all()) else float("nan"),
        "kind": lik["kind"], "estimator": lik["estimator"], "n": n, "_per": per,
    }
    if source is not None:
        d = per - (-source.log_prob(x).double() / x.shape[1])
        out["excess_over_source"], out["excess_se"] = float(d.mean()), float(d.std() / math.sqrt(n))
    return out


def train_model(name: str, cfg, data, *, n_nll: int, n_t: int, init=None, eval_every: Optional[int] = None, val: Optional[torch.Tensor] = None) -> dict:
    """Train ``cfg`` with the genspace Trainer; at 25 / 50 / 100 % of the steps (and every
    ``eval_every`` steps) measure the held-out NLL of the EMA weights and the training CPU / wall
    time so far (evaluation excluded). ``init``: a model of the same architecture whose weights
    start the training (fine-tuning).

    ``val``: a validation set (disjoint from the held-out set): at every evaluation its NLL is
    measured too, and the returned model is the EMA at the evaluation with the lowest validation
    NLL (early stopping within the step budget); ``best`` is that record. The held-out NLL of the
    chosen step is then an unbiased test number (the choice never looked at it)."""
    model = build_model(cfg, data)
    if init is not None:
        model.load_state_dict(init.state_dict())
    steps = cfg.train.steps
    at = {max(1, round(f * steps)) for f in EVAL_FRACTIONS}
    if eval_every:
        at |= set(range(eval_every, steps + 1, eval_every))
    records: list[dict] = []
    spent = {"cpu": 0.0, "wall": 0.0}
    held = data.heldout[:n_nll]
    best: dict = {}

    def evaluate(m, step):
        if step not in at:
            return {}
        c0, w0 = time.process_time(), time.perf_counter()
        row = {"step": step, "train_cpu_s": c0 - cpu0 - spent["cpu"], "train_wall_s": w0 - wall0 - spent["wall"]}
        row.update(heldout_nll(m, held, n_t=n_t, source=data.source))
        msg = ""
        if val is not None:
            v = heldout_nll(m, val, n_t=n_t, seed=54321)
            row["val_nll"], row["val_nll_se"] = v["nll"], v["nll_se"]
            msg = f", validation {v['nll']:.4f}"
            if not best or v["nll"] < best["record"]["val_nll"]:
                best["record"] = row
                best["state"] = {k: t.detach().clone() for k, t in m.state_dict().items()}
        records.append(row)
        _log(f"  {name} step {step}: held-out {row['kind']} {row['nll']:.4f} ± {row['nll_se']:.4f} nats/token{msg}, train cpu {row['train_cpu_s']:.0f} s")
        spent["cpu"] += time.process_time() - c0
        spent["wall"] += time.perf_counter() - w0
        return {"heldout_nll": row["nll"]}

    with tempfile.TemporaryDirectory() as tmp:
        trainer = Trainer(model, data.train, cfg.train, Path(tmp) / name, evaluate=evaluate, config_dict=to_dict(cfg), progress=False, tensorboard=False)
        cpu0, wall0 = time.process_time(), time.perf_counter()
        last = trainer.fit()
        cpu, wall = time.process_time() - cpu0 - spent["cpu"], time.perf_counter() - wall0 - spent["wall"]
        ema = trainer.ema_model.eval()
    out = {"model": ema, "records": records, "params": param_count(ema), "steps": steps, "batch": cfg.train.batch_size,
           "cpu_s": cpu, "wall_s": wall, "final_loss": {k: v for k, v in last.items() if isinstance(v, float)}, "config": to_dict(cfg)}
    if best:
        ema.load_state_dict(best["state"])
        out["best"] = best["record"]
    return out


# ----------------------------------------------------------------------------- exact denoiser


class ExactMarkovDenoiser:
    """The exact masked-diffusion denoiser of a k-th order :class:`MarkovSource` (k ≥ 1).

    Absorbing noise masks positions independently of x0, so p(x0^ℓ = v | x_t) conditions on the
    unmasked tokens only and does not depend on t (Ou et al. 2024; Zheng et al. 2024). For a
    Markov chain it is computed exactly by forward-backward over the chain of contexts
    z_t = (x_{t−k+1}, …, x_t) (K^k states, z_{k−1} ~ π, z_{t−1} → z_t = (z_{t−1}·K + x_t) mod K^k
    with probability P(x_t | z_{t−1})), each state constrained to agree with the unmasked tokens.
    O(B·L·K^{2k}) per call, float64. It mirrors the masked-diffusion part of
    ``TextModel.sample_with_info`` so that the same samplers run on it: Table B's "exact
    denoiser" rows separate the error of a sampler from the error of a trained network.
    """

    objective = "exact"

    def __init__(self, source, schedule: str = "linear") -> None:
        if source.order < 1:
            raise ValueError(f"ExactMarkovDenoiser needs a chain of order >= 1, got order {source.order}")
        k, K = source.order, source.n_symbols
        S = K**k
        self.k, self.K, self.S = k, K, S
        self.mask_id, self.vocab_size = int(source.mask_id), int(source.vocab_size)
        self.schedule = get_schedule(schedule)
        z = torch.arange(S)
        nxt = (z[:, None] * K + torch.arange(K)[None]) % S  # (S, K) successor state per token
        self.M = torch.zeros(S, S, dtype=torch.float64).scatter_(1, nxt, source.transition)  # (S, S)
        self.pi = source.stationary.double()  # (S,)
        self.last = torch.nn.functional.one_hot(z % K, K).double()  # (S, K): state → its newest token
        self.digit = [((z // K ** (k - 1 - j)) % K) for j in range(k)]  # token at position j of z_{k−1}

    def eval(self):
        return self

    def posterior(self, x: torch.Tensor) -> torch.Tensor:
        """p(x0^ℓ = v | unmasked tokens of x), (B, L) → (B, L, K) float64."""
        b, length = x.shape
        k, masked = self.k, x == self.mask_id

        def obs(t: int) -> torch.Tensor:  # (B, S) states compatible with position t (t ≥ k − 1)
            return (masked[:, t : t + 1] | ((torch.arange(self.S) % self.K)[None] == x[:, t : t + 1])).double()

        o0 = torch.ones(b, self.S, dtype=torch.float64)
        for j in range(k):
            o0 = o0 * (masked[:, j : j + 1] | (self.digit[j][None] == x[:, j : j + 1])).double()
        fwd = [None] * length
        a = self.pi[None] * o0
        fwd[k - 1] = a / a.sum(-1, keepdim=True)
        for t in range(k, length):
            a = (fwd[t - 1] @ self.M) * obs(t)  # (B, S)
            fwd[t] = a / a.sum(-1, keepdim=True)
        out = torch.empty(b, length, self.K, dtype=torch.float64)
        beta = torch.ones(b, self.S, dtype=torch.float64)
        for t in range(length - 1, k - 2, -1):
            post = fwd[t] * beta
            post = post / post.sum(-1, keepdim=True)  # (B, S) p(z_t | unmasked tokens)
            if t >= k:
                out[:, t] = post @ self.last
            else:  # z_{k−1} holds positions 0..k−1
                for j in range(k):
                    out[:, j] = post @ torch.nn.functional.one_hot(self.digit[j], self.K).double()
            if t >= k:
                beta = (obs(t) * beta) @ self.M.T  # (B, S) likelihood of positions ≥ t given z_{t−1}
                beta = beta / beta.sum(-1, keepdim=True)
        return out

    def log_probs(self, x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """SUBS log-probabilities (B, L, V): −inf on the mask column."""
        out = torch.full((*x_t.shape, self.vocab_size), -math.inf, dtype=torch.float64)
        out[..., : self.K] = self.posterior(x_t).log()
        return out

    def log_probs_fn(self):
        return self.log_probs

    def sample_with_info(self, n: int, *, length: int, generator=None, method: str, steps=None, **options):
        x_init = torch.full((n, length), self.mask_id, dtype=torch.long)
        kwargs = dict(mask_id=self.mask_id, generator=generator, vocab_size=self.vocab_size)
        if method in ("ancestral", "top-k", "semi-ar"):
            kwargs["steps"] = int(steps if steps is not None else length)
        if method in ("ancestral", "top-k", "threshold", "semi-ar", "first-hitting"):
            kwargs["schedule"] = self.schedule
        if method == "ancestral":
            kwargs["time_independent"] = True
        if method == "semi-ar":
            kwargs["block_length"] = options.pop("block_length", max(1, length // 4))
        return sample_tokens(method, self.log_probs, x_init, **kwargs, **options)


def _vocab(model) -> int:
    return int(getattr(model, "vocab_size", None) or model.net.config.vocab_size)


# ----------------------------------------------------------------------------- sampling


@torch.no_grad()
def generate(model, n: int, length: int, *, method: str, steps, batch: int, cache: bool = True, seed: int = 0, **options) -> tuple[torch.Tensor, dict]:
    """``n`` sequences in batches, sequence i from its own seed (batch-size independent).

    ``cache=False``: AR / block without the KV cache (``use_cache=False``); ancestral without
    MDLM's reuse of the network output after steps that revealed nothing
    (``time_independent=False``, called through ``sample_tokens`` since ``sample_with_info`` sets
    that option itself). Returns the tokens and {nfe (mean per call), cpu_s (thread CPU),
    wall_s, tokens_per_s_cpu, tokens_per_s_wall}; for the unmasking samplers (top-k,
    threshold, semi-ar) also row_steps, the mean number of steps in which a sequence still had
    tokens to reveal (the batch runs until its slowest sequence is done: NFE = max over rows).
    """
    model.eval()
    seeds = sample_seeds(seed, n)
    out, nfes, cpu, wall, row_steps = [], [], 0.0, 0.0, []
    per_row = method in ("top-k", "threshold", "semi-ar")  # MDLM's unmasking samplers (their callback counts rows)
    for start in range(0, n, batch):
        chunk = seeds[start : start + batch]
        g = StackedGenerator(chunk)
        c0, w0 = time.thread_time(), time.perf_counter()
        if method == "ancestral" and not cache:
            x_init = torch.full((len(chunk), length), model.mask_id, dtype=torch.long)
            x, info = sample_tokens("ancestral", model.log_probs_fn(), x_init, mask_id=model.mask_id, steps=int(steps), schedule=model.schedule,
                                    time_independent=False, generator=g, vocab_size=_vocab(model))
        else:
            opts = dict(options)
            if method in ("ar", "block", "block-first-hitting", "block-top-k"):
                opts["use_cache"] = cache
            counts = torch.zeros(len(chunk))
            if per_row:
                def count(d, counts=counts):
                    counts += d["unmasked"].any(-1).cpu().double()
                opts["callback"] = count
            x, info = model.sample_with_info(len(chunk), length=length, generator=g, method=method, steps=steps, **opts)
            if per_row:
                row_steps.append(counts)
        cpu += time.thread_time() - c0
        wall += time.perf_counter() - w0
        out.append(x.cpu())
        nfes.append(info["nfe"])
    x = torch.cat(out)
    tokens = x.numel()
    stats = {"nfe": sum(nfes) / len(nfes), "cpu_s": cpu, "wall_s": wall,
             "tokens_per_s_cpu": tokens / cpu if cpu > 0 else math.inf, "tokens_per_s_wall": tokens / wall if wall > 0 else math.inf}
    if row_steps:
        stats["row_steps"] = float(torch.cat(row_steps).mean())
    return x, stats


def markov_metrics(x: torch.Tensor, source) -> dict:
    g = exact_generative_nll(x, source)
    h = sample_entropy(x)
    return {"gen_nll": g.mean, "gen_nll_se": g.stderr, "invalid": g.invalid_fraction, "entropy": h.mean, "entropy_se": h.stderr}


def markov_grid(objective: str, quick: bool, length: int) -> list[dict]:
    """Sampler settings of Table B for one model: {label, method, steps, cache, options}."""
    steps = [8, 64] if quick else [4, 8, 16, 32, 64, 128, 256]
    short = [8, 32] if quick else [8, 16, 32, 64]
    rows: list[dict] = []

    def add(label, method, s, cache=True, **options):
        rows.append({"label": label, "method": method, "steps": s, "cache": cache, "options": options})

    if objective in ("mdlm", "exact"):
        for s in steps:
            add("ancestral (cached)", "ancestral", s)
        if objective == "mdlm":
            for s in ([8] if quick else [16, 64, 256]):
                add("ancestral (no cache)", "ancestral", s, cache=False)
        add("first-hitting", "first-hitting", None)
        for order in ORDERS:
            for s in short:
                add(f"top-k {order}", "top-k", s, order=order)
        for tau in ([0.3, 0.9] if quick else [0.2, 0.3, 0.5, 0.7, 0.9]):
            add(f"threshold τ={tau:g}", "threshold", None, threshold=tau)
        for s in short:
            add(f"semi-ar top-k (block {length // 4})", "semi-ar", s, block_length=length // 4)
        add(f"semi-ar threshold τ=0.5 (block {length // 4})", "semi-ar", None, block_length=length // 4, rule="threshold", threshold=0.5)
        if objective == "mdlm":
            for s in short:
                add("sedd-tweedie", "sedd-tweedie", s)
    elif objective == "sedd":
        for s in [8, 64]:
            add("ancestral (cached)", "ancestral", s)
        for method in ("sedd-euler", "sedd-tweedie"):
            for s in ([8, 64] if quick else [4, 8, 16, 32, 64, 128]):
                add(method, method, s)
    elif objective == "bd3":
        for s in ([1, 8] if quick else [1, 2, 4, 8, 16, 32, 64]):
            add("block (cached)", "block", s)
            if s in ((1,) if quick else (1, 4, 16)):
                add("block (no cache)", "block", s, cache=False)
        add("block first-hitting (cached)", "block-first-hitting", None)
        add("block first-hitting (no cache)", "block-first-hitting", None, cache=False)
        for order in ("random", "dilated", "low-confidence"):
            for s in ([2] if quick else [2, 4, 8]):
                add(f"block top-k {order}", "block-top-k", s, order=order)
    else:
        add("ar (cached)", "ar", None)
        add("ar (no cache)", "ar", None, cache=False)
    return rows


def sampler_sweep(name: str, model, source, grid: list[dict], *, n: int, length: int, batch: int) -> list[dict]:
    """Table B rows of one model; the uncached twin of a cached setting is checked to give
    the same tokens (it must: the cache is exact)."""
    rows, cached_tokens = [], {}
    for g in grid:
        x, st = generate(model, n, length, method=g["method"], steps=g["steps"], batch=batch, cache=g["cache"], **g["options"])
        r = {"model": name, "label": g["label"], "method": g["method"], "steps": g["steps"], "cache": g["cache"], "options": g["options"], **st, **markov_metrics(x, source)}
        key = (g["method"], g["steps"], json.dumps(g["options"], sort_keys=True))
        if g["cache"]:
            cached_tokens[key] = x
        elif key in cached_tokens:
            r["same_tokens_as_cached"] = bool(torch.equal(x, cached_tokens[key]))
        rows.append(r)
        _log(f"  {name} {g['label']:34s} steps {str(g['steps']):>4s}: NFE {r['nfe']:6.1f}  gen NLL {r['gen_nll']:.4f} ± {r['gen_nll_se']:.4f}  "
             f"entropy {r['entropy']:.3f}  {r['tokens_per_s_cpu']:8.0f} tok/s (cpu)")
    return rows


# ----------------------------------------------------------------------------- speed (Table C)


SPEED_MODELS = ("mdlm", "bd3", "ar")


def _markov_l64_config(obj: str, args):
    """The Part 1 (L = 64) config of ``obj``, exactly as :func:`part_1` builds it."""
    return markov_config(obj, args, length=64, batch=args.batch, n_train=args.n_train,
                         n_eval=max(args.n_nll, args.n, 1000 if not args.quick else 64), steps=args.steps)


def _save_run(run: dict, path: Path) -> None:
    """A trained run as ``path`` (safetensors of the EMA weights) + ``path.json`` (its records)."""
    from safetensors.torch import save_file, save_model

    path.parent.mkdir(parents=True, exist_ok=True)
    save_model(run["model"], str(path))
    meta = {k: v for k, v in run.items() if k != "model"}
    path.with_suffix(".json").write_text(json.dumps(_json_safe(meta), indent=2, default=float) + "\n")
    per = {f"record{i}": r["_per"].contiguous() for i, r in enumerate(run["records"]) if "_per" in r}
    if per:  # the per-sequence NLLs behind the paired differences of Table A
        save_file(per, str(path.with_suffix(".per.safetensors")))


def _load_run(cfg, data, path: Path, *, n_nll: int, n_t: int) -> dict:
    """A run saved by :func:`_save_run`. Runs saved without their per-sequence NLLs get those of
    the final record recomputed (the estimator's seeds are fixed: the same numbers)."""
    from safetensors.torch import load_file, load_model

    model = build_model(cfg, data)
    load_model(model, str(path))
    model.eval()
    meta = json.loads(path.with_suffix(".json").read_text())
    per_path = path.with_suffix(".per.safetensors")
    if per_path.exists():
        for key, value in load_file(str(per_path)).items():
            meta["records"][int(key.removeprefix("record"))]["_per"] = value
    elif meta["records"] and n_nll > 0:
        last = meta["records"][-1]
        again = heldout_nll(model, data.heldout[:n_nll], n_t=n_t, source=data.source)
        if abs(again["nll"] - last["nll"]) > 1e-9 * max(1.0, abs(last["nll"])):
            raise ValueError(f"{path}: the held-out NLL recomputed on load, {again['nll']!r}, differs from the saved {last['nll']!r}")
        last["_per"] = again["_per"]
    return {"model": model, **meta}


def speed_models(args, init: Optional[dict], objs=SPEED_MODELS) -> tuple[dict, object]:
    """The L = args.speed_length models of Table C: trained (fine-tuned from ``init``, the Part 1
    models, unless --speed-scratch) or, with ``--models-dir``, loaded from it when saved there by an
    earlier run (``<obj>-L<length>.safetensors`` + ``.json``; new ones are saved). Without ``init``
    and without --speed-scratch, the Part 1 (L = 64) model is trained first (and saved too)."""
    length = args.speed_length
    batch = max(1, args.batch * 64 // length)
    folder = Path(args.models_dir) if args.models_dir else None
    models, data = {}, None
    for obj in objs:
        cfg = markov_config(obj, args, length=length, batch=batch, n_train=args.n_train, n_eval=max(args.speed_n, 64), steps=args.speed_steps)
        if data is None:
            data = load_data(cfg.data)
        path = None if folder is None else folder / f"{obj}-L{length}.safetensors"
        if path is not None and path.exists():
            _log(f"loading {obj}-L{length} from {path}")
            models[obj] = _load_run(cfg, data, path, n_nll=min(args.n_nll, 128), n_t=max(4, args.n_t // 2))
            continue
        start = None
        shorter = sorted((int(q.stem.split("-L")[1]), q) for q in folder.glob(f"{obj}-L*.safetensors")
                         if q.stem.split("-L")[1].isdigit() and int(q.stem.split("-L")[1]) < length) if folder is not None else []
        if not args.speed_scratch:
            if init is not None:
                start = init[obj]
            elif shorter:  # the longest saved model below this length starts the fine-tuning
                l0, q = shorter[-1]
                c0 = markov_config(obj, args, length=l0, batch=max(1, args.batch * 64 // l0), n_train=args.n_train, n_eval=64, steps=1)
                _log(f"{obj}-L{length} starts from {q}")
                start = _load_run(c0, load_data(c0.data), q, n_nll=0, n_t=1)["model"]
            else:
                c64 = _markov_l64_config(obj, args)
                _log(f"training {obj} (L = 64, the Part 1 model) for {c64.train.steps} steps, batch {args.batch}")
                run64 = train_model(obj, c64, load_data(c64.data), n_nll=args.n_nll, n_t=args.n_t)
                if folder is not None:
                    _save_run(run64, folder / f"{obj}-L64.safetensors")
                start = run64["model"]
        _log(f"training {obj}-L{length} for {cfg.train.steps} steps, batch {batch}")
        models[obj] = train_model(f"{obj}-L{length}", cfg, data, n_nll=min(args.n_nll, 128), n_t=max(4, args.n_t // 2), init=start)
        if path is not None:
            _save_run(models[obj], path)
    return models, data


def _speed_label(method: str, steps, order: str = "random") -> str:
    return {"ancestral": f"ancestral {steps}", "first-hitting": "first-hitting", "top-k": f"top-k {order} {steps}",
            "block": f"block {steps}/block", "block-first-hitting": "block first-hitting",
            "block-top-k": f"block top-k {order} {steps}/block", "ar": "ar"}[method]


def cheapest(rows: list[dict]) -> Optional[dict]:
    """The sweep row with the fewest network calls (each call of one model costs about the same), then the faster; None for no rows."""
    return min(rows, key=lambda r: (r["nfe"], -r["tokens_per_s_cpu"])) if rows else None


def cache_label(method: str, cache: bool) -> str:
    """What 'cache' means for a timed sampler: the KV cache (AR, block diffusion), MDLM ancestral's
    reuse of the output after steps that revealed nothing, or nothing to use (every step of the
    other MDLM samplers changes the input: the run without it is a second measurement)."""
    if method.startswith("block") or method == "ar":
        return "KV cache" if cache else "none"
    if method == "ancestral":
        return "reuse when unchanged" if cache else "none"
    return "none to use" + ("" if cache else " (second run)")


def time_matched(models: dict, chosen: dict, objs, *, n: int, length: int, repeats: int) -> dict:
    """Time each model's chosen sweep row with and without the cache, ``repeats`` times
    interleaved (model by model within a repeat, in the order of ``objs``): {(obj, cache): [the
    stats of :func:`generate`, one per repeat]}."""
    timing = {(obj, cache): [] for obj in objs for cache in (True, False)}
    for rep in range(repeats):
        for obj, cache in timing:
            c = chosen[obj]
            _, st = generate(models[obj]["model"], n, length, method=c["method"], steps=c["steps"], batch=n, cache=cache, seed=100 + rep,
                             **c.get("options", {}))
            timing[(obj, cache)].append(st)
    return timing


def speed_section(args, quick: bool, init: Optional[dict]) -> dict:
    """Train (or load) MDLM / BD3 / AR at L = args.speed_length (:func:`speed_models`), match
    quality, time with and without cache."""
    length = args.speed_length
    models, data = speed_models(args, init)
    batch = max(1, args.batch * 64 // length)
    source = data.source
    sweep = []
    # the grids of calls that compete near the matching point have the same resolution for both
    # models: MDLM 16, 20, …, 64 calls (steps ×1.14–1.25 apart), BD3 top-k 2, 3, …, 8 calls per
    # block (×1.14–1.5 apart)
    mdlm_steps = [32, 256] if quick else [16, 20, 24, 28, 32, 40, 48, 56, 64, 96, 128, 256, 512]
    bd3_steps = [1, 8] if quick else [1, 2, 4, 8, 16, 32, 64]
    topk_steps = [32] if quick else [16, 20, 24, 28, 32, 40, 48, 56, 64, 96, 128]
    bd3_topk_steps = [2] if quick else [2, 3, 4, 5, 6, 7, 8]
    # the dilated order (a fixed order that spreads each step's tokens) needs far fewer calls: its
    # grids start lower, MDLM's below the random order's
    dilated_steps = [4] if quick else [2, 3, 4, 6, 8, 12, 16, 24, 32, 64]
    bd3_dilated_steps = [2] if quick else [1, 2, 3, 4, 5, 6, 7, 8]
    if args.speed_mdlm_steps:  # e.g. a coarser grid at a longer length (full-sequence calls get expensive)
        try:
            mdlm_steps = topk_steps = [int(v) for v in args.speed_mdlm_steps.split(",")]
        except ValueError:
            raise ValueError(f"--speed-mdlm-steps takes comma-separated positive integers, got {args.speed_mdlm_steps!r}") from None
        if min(mdlm_steps) < 1:
            raise ValueError(f"--speed-mdlm-steps takes comma-separated positive integers, got {args.speed_mdlm_steps!r}")
    mdlm_fh = length <= 2 * max(mdlm_steps)  # MDLM first-hitting costs `length` full-sequence calls
    # only samplers that draw from the model's distribution (no confidence ordering, which lowers
    # the generative NLL by lowering the sample entropy) compete in the quality matching
    rnd = {"order": "random"}
    settings = [("mdlm", "ancestral", s, {}) for s in mdlm_steps] + ([("mdlm", "first-hitting", None, {})] if mdlm_fh else [])
    dil = {"order": "dilated"}
    settings += [("mdlm", "top-k", s, rnd) for s in topk_steps] + [("mdlm", "top-k", s, dil) for s in dilated_steps]
    settings += [("bd3", "block", s, {}) for s in bd3_steps] + [("bd3", "block-first-hitting", None, {})]
    settings += [("bd3", "block-top-k", s, rnd) for s in bd3_topk_steps] + [("bd3", "block-top-k", s, dil) for s in bd3_dilated_steps]
    settings += [("ar", "ar", None, {})]
    for obj, method, s, opts in settings:
        x, st = generate(models[obj]["model"], args.speed_n, length, method=method, steps=s, batch=args.speed_batch, **opts)
        r = {"model": obj, "method": method, "steps": s, "options": opts, "label": _speed_label(method, s, opts.get("order", "random")), **st, **markov_metrics(x, source)}
        sweep.append(r)
        _log(f"  L{length} {obj} {r['label']}: NFE {r['nfe']:.1f} gen NLL {r['gen_nll']:.4f} ± {r['gen_nll_se']:.4f} entropy {r['entropy']:.3f} {r['tokens_per_s_cpu']:.0f} tok/s (cpu)")
    best = {obj: min(r["gen_nll"] for r in sweep if r["model"] == obj) for obj in ("mdlm", "bd3")}
    q_star = (1.0 + args.match_tol) * max(best.values())

    chosen = {obj: cheapest([r for r in sweep if r["model"] == obj and r["gen_nll"] <= q_star]) for obj in ("mdlm", "bd3")}
    chosen["ar"] = next(r for r in sweep if r["model"] == "ar")
    # every quality level of BD3: the cheapest MDLM setting that is as good (within the tolerance)
    frontier = []
    for rb in (r for r in sweep if r["model"] == "bd3"):
        rm = cheapest([r for r in sweep if r["model"] == "mdlm" and r["gen_nll"] <= (1.0 + args.match_tol) * rb["gen_nll"]])
        frontier.append({"bd3_label": rb["label"], "bd3_steps": rb["steps"], "bd3_gen_nll": rb["gen_nll"], "bd3_tps": rb["tokens_per_s_cpu"],
                         "mdlm_label": None if rm is None else rm["label"],
                         "mdlm_steps": None if rm is None else rm["steps"], "mdlm_gen_nll": None if rm is None else rm["gen_nll"],
                         "mdlm_tps": None if rm is None else rm["tokens_per_s_cpu"], "ratio": None if rm is None else rb["tokens_per_s_cpu"] / rm["tokens_per_s_cpu"]})
    n_time = args.speed_batch
    timing = time_matched(models, chosen, ("bd3", "mdlm", "ar"), n=n_time, length=length, repeats=args.repeats)
    table = []
    for (obj, cache), sts in timing.items():
        c = chosen[obj]
        table.append({
            "model": obj, "method": c["method"], "label": c["label"], "cache": cache, "steps": c["steps"], "nfe": statistics.median(s["nfe"] for s in sts),
            "tokens_per_s_cpu": statistics.median(s["tokens_per_s_cpu"] for s in sts), "tokens_per_s_wall": statistics.median(s["tokens_per_s_wall"] for s in sts),
            "tokens_per_s_cpu_all": [s["tokens_per_s_cpu"] for s in sts],
            "gen_nll": c["gen_nll"], "gen_nll_se": c["gen_nll_se"], "entropy": c["entropy"],
        })
    get = {(r["model"], r["cache"]): r for r in table}
    ratio_cpu = get[("bd3", True)]["tokens_per_s_cpu"] / get[("mdlm", True)]["tokens_per_s_cpu"]
    ratio_wall = get[("bd3", True)]["tokens_per_s_wall"] / get[("mdlm", True)]["tokens_per_s_wall"]
    ratio_nocache = get[("bd3", True)]["tokens_per_s_cpu"] / get[("mdlm", False)]["tokens_per_s_cpu"]
    # the ratio in each interleaved repeat (BD3 cached / MDLM cached), to show its spread
    ratio_reps = [b["tokens_per_s_cpu"] / m["tokens_per_s_cpu"] for b, m in zip(timing[("bd3", True)], timing[("mdlm", True)])]
    return {
        "length": length, "batch_train": batch, "n_quality": args.speed_n, "n_timing": n_time, "repeats": args.repeats,
        "models": {k: {kk: vv for kk, vv in v.items() if kk != "model"} for k, v in models.items()},
        "sweep": sweep, "best": best, "q_star": q_star, "match_tol": args.match_tol, "chosen_steps": {k: v["steps"] for k, v in chosen.items()},
        "chosen": {k: v["label"] for k, v in chosen.items()}, "ratio_repeats": ratio_reps,
        "table": table, "frontier": frontier, "ratio_cpu": ratio_cpu, "ratio_wall": ratio_wall, "ratio_vs_uncached_mdlm": ratio_nocache,
        "source_entropy": source.sequence_entropy(length) / length,
        "data_entropy": sample_entropy(data.heldout[: args.speed_n]).mean,
        "data_gen_nll": exact_generative_nll(data.heldout[: args.speed_n], source).mean,
    }


# ----------------------------------------------------------------------------- real text


def corpus_folder(names: tuple[str, ...], folder: Path) -> list[dict]:
    """Symlinks <name>.txt → /usr/share/common-licenses/<name> in ``folder`` (the loader reads *.txt)."""
    files = []
    for name in names:
        src = LICENSES / name
        if not src.is_file():
            raise FileNotFoundError(f"{src} does not exist (pick files with --text-files)")
        (folder / f"{name}.txt").symlink_to(src.resolve())
        text = src.read_text(encoding="utf-8")
        files.append({"name": name, "bytes": src.stat().st_size, "chars": len(text)})
    return files


def _strip(x: torch.Tensor, tok) -> list[torch.Tensor]:
    """Sequences without PAD (samples stopped at EOS are padded after it)."""
    return [row[row != tok.pad_id] for row in x]


def _text_models(args) -> tuple[str, ...]:
    objs = tuple(o.strip() for o in args.text_models.split(",") if o.strip())
    if "ar" not in objs or "mdlm" not in objs or any(o not in TEXT_MODELS for o in objs):
        raise ValueError(f"--text-models takes a comma-separated subset of {','.join(TEXT_MODELS)} that includes mdlm and ar, got {args.text_models!r}")
    return objs


def text_section(args, quick: bool) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        files = corpus_folder(tuple(args.text_files.split(",")), folder)
        runs, data = {}, None
        for obj in _text_models(args):
            cfg = text_config(obj, args, folder)
            if data is None:
                data = load_data(cfg.data)
            _log(f"training text-{obj} for {cfg.train.steps} steps, batch {cfg.train.batch_size}")
            runs[obj] = train_model(f"text-{obj}", cfg, data, n_nll=args.text_n_eval, n_t=args.n_t, eval_every=text_eval_every(args), val=data.reference[: args.text_n_eval])
    tok, length = data.tokenizer, data.shape[0]
    ref = data.reference[: args.text_n]
    specials = (tok.pad_id,)
    out_ref = {"entropy": sample_entropy(ref, ignore_ids=specials).mean, "distinct_2": distinct_n(_strip(ref, tok), 2), "distinct_3": distinct_n(_strip(ref, tok), 3),
               "distinct_4": distinct_n(_strip(ref, tok), 4)}
    grid = {"mdlm": [("ancestral", s, {}) for s in ([32, 128] if quick else [32, 128, 512])] + [("first-hitting", None, {}), ("top-k", 128, {"order": "low-confidence"})],
            "ar": [("ar", None, {})], "bd3": [("block", s, {}) for s in ([1, 8] if quick else [2, 8])]}
    samples, texts = [], {}
    for obj, settings in ((k, v) for k, v in grid.items() if k in runs):
        for method, s, opts in settings:
            x, st = generate(runs[obj]["model"], args.text_n, length, method=method, steps=s, batch=args.text_n, **opts)
            seqs = _strip(x, tok)
            r = {"model": obj, "method": method, "steps": s, "options": opts, **st,
                 "entropy": sample_entropy(x, ignore_ids=specials).mean, "distinct_2": distinct_n(seqs, 2), "distinct_3": distinct_n(seqs, 3), "distinct_4": distinct_n(seqs, 4),
                 "mean_length": sum(len(q) for q in seqs) / len(seqs)}
            samples.append(r)
            texts[f"{obj} {method}" + (f" {s}" if s else "")] = [tok.decode(x[i]) for i in range(3)]
            _log(f"  text {obj} {method} {s}: entropy {r['entropy']:.3f} distinct-2 {r['distinct_2']:.3f} distinct-3 {r['distinct_3']:.3f}")
    return {"files": files, "total_chars": sum(f["chars"] for f in files), "n_rows": len(data.train[0]) + len(data.reference) + len(data.heldout),
            "n_train_rows": len(data.train[0]), "n_heldout_rows": len(data.heldout), "length": length, "vocab_size": tok.vocab_size, "n_symbols": tok.n_symbols,
            "models": {k: {kk: vv for kk, vv in v.items() if kk != "model"} for k, v in runs.items()},
            "reference": out_ref, "n_samples": args.text_n, "samples": samples, "texts": texts, "data_texts": [tok.decode(data.reference[i]) for i in range(2)]}


# ----------------------------------------------------------------------------- tables


def _pm(m: float, se: float, d: int = 4) -> str:
    return f"{m:.{d}f} ± {se:.{d}f}"


def table_a(runs: dict, h: float, ar_name: str = "ar", title: str = "", unit: str = "nats/token", bits: bool = False) -> str:
    names = list(runs)
    ar = {r["step"]: r for r in runs[ar_name]["records"]} if ar_name in runs else {}
    out = [f"### {title}", ""]
    head = "| model | kind | parameters | step | held-out NLL " + f"({unit})" + (" | bits | " if bits else " | ")
    head += ("ratio to H | excess over source (paired) | " if h is not None else "") + "ratio to AR (same step) | train CPU s |"
    out.append(head)
    n_cols = head.count("|") - 1
    out.append("|" + "---|" * n_cols)
    for name in names:
        run = runs[name]
        for r in run["records"]:
            cells = [name, r["kind"], f"{run['params']:,}", str(r["step"]), _pm(r["nll"], r["nll_se"])]
            if bits:
                cells.append(f"{nats_to_bits(r['nll']):.3f}")
            if h is not None:
                cells += [f"{r['nll'] / h:.4f}", _pm(r["excess_over_source"], r["excess_se"])]
            a = ar.get(r["step"])
            if a is not None and name != ar_name and ("_per" not in r or "_per" not in a):
                cells.append(f"{r['nll'] / a['nll']:.4f}")
            elif a is not None and name != ar_name:
                d = r["_per"] - a["_per"]
                cells.append(f"{r['nll'] / a['nll']:.4f} (Δ {_pm(float(d.mean()), float(d.std() / math.sqrt(len(d))))})")
            else:
                cells.append("1" if name == ar_name else "")
            cells.append(f"{r['train_cpu_s']:.0f}")
            out.append("| " + " | ".join(cells) + " |")
    est = {name: run["records"][-1]["estimator"] for name, run in runs.items()}
    out.append("")
    out += [f"- {name}: {e}" for name, e in est.items()]
    return "\n".join(out)


def table_b(rows: list[dict], ref: dict) -> str:
    out = ["### B. Markov source: exact generative NLL (under the true source) and sample entropy against NFE", ""]
    out.append(f"Reference: source entropy H = {ref['h']:.4f} nats/token; held-out data: generative NLL {_pm(ref['data_gen_nll'], ref['data_gen_nll_se'])}, "
               f"sample entropy {ref['data_entropy']:.3f} nats (the entropy of the token histogram WITHIN a sequence, averaged over sequences: not comparable to H, "
               f"compare it with the data's). {ref['n']} sequences per row; tokens/s from thread CPU time (wall in parentheses), batch {ref['batch']}. "
               f"NFE: network calls per batch, counted by the samplers; for threshold / semi-ar, '(rows n)' is the mean number of steps in which a sequence "
               f"still had masked tokens (a batch runs until its slowest row is done). 'exact denoiser': the true posterior p(x0^ℓ | unmasked tokens) of the "
               f"source by forward-backward — the sampler's own error, without a network's.")
    out += ["", "| model | sampler | steps | NFE | gen NLL/token | invalid | sample entropy | tokens/s CPU (wall) |", "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        same = "" if "same_tokens_as_cached" not in r else (" = cached tokens" if r["same_tokens_as_cached"] else " ≠ cached tokens!")
        nfe = f"{r['nfe']:.1f}" + (f" (rows {r['row_steps']:.1f})" if "row_steps" in r and r["method"] != "top-k" else "")
        model = "exact denoiser" if r["model"] == "exact" else r["model"]
        out.append(f"| {model} | {r['label']}{same} | {r['steps'] if r['steps'] is not None else '–'} | {nfe} | {_pm(r['gen_nll'], r['gen_nll_se'])} | "
                   f"{100 * r['invalid']:.1f}% | {r['entropy']:.3f} | {r['tokens_per_s_cpu']:,.0f} ({r['tokens_per_s_wall']:,.0f}) |")
    return "\n".join(out)


def table_c(sp: dict) -> str:
    out = [f"### C. Speed at L = {sp['length']}: quality sweep on the trained L = {sp['length']} models", ""]
    out.append(f"Source H = {sp['source_entropy']:.4f} nats/token; held-out data: generative NLL {sp['data_gen_nll']:.4f}, sample entropy {sp['data_entropy']:.3f}. "
               f"{sp['n_quality']} sequences per row. 'block S/block': S ancestral steps per block (BD3-LM); 'first-hitting': one token per call at its exact "
               "reveal time (Zheng et al. 2024), over the whole sequence (MDLM) or within each block (BD3); 'top-k random S': S calls, a fixed number of uniformly "
               "random positions kept at each (LLaDA's random remasking), over the sequence or per block; 'top-k dilated S': the same counts, positions kept in "
               "the fixed bit-reversal order (0, 4, 2, 6, 1, 5, 3, 7 in a block of 8), so that tokens revealed together lie far apart (Luxembourg et al. 2025). "
               "Confidence orders are left out here: they lower the generative NLL by lowering the sample entropy (Table B).")
    out += ["", "| model | sampler | NFE | gen NLL/token | sample entropy | tokens/s CPU (wall) |", "|---|---|---|---|---|---|"]
    for r in sp["sweep"]:
        out.append(f"| {r['model']} | {r['label']} | {r['nfe']:.1f} | {_pm(r['gen_nll'], r['gen_nll_se'])} | {r['entropy']:.3f} | "
                   f"{r['tokens_per_s_cpu']:,.0f} ({r['tokens_per_s_wall']:,.0f}) |")
    out += ["", f"Quality matching: best generative NLL MDLM {sp['best']['mdlm']:.4f}, BD3 {sp['best']['bd3']:.4f}; q* = (1 + {sp['match_tol']:g}) × max = {sp['q_star']:.4f}; "
            f"each model at its cheapest setting (fewest network calls) with generative NLL ≤ q*: MDLM {sp['chosen']['mdlm']}, BD3 {sp['chosen']['bd3']}.", ""]
    out += [f"Timing at matched quality: {sp['n_timing']} sequences per call, median of {sp['repeats']} interleaved repeats.", ""]
    out += ["| model | sampler | cache | NFE | gen NLL/token | tokens/s CPU | tokens/s wall |", "|---|---|---|---|---|---|---|"]
    for r in sp["table"]:
        out.append(f"| {r['model']} | {r['label']} | {cache_label(r['method'], r['cache'])} | {r['nfe']:.1f} | {_pm(r['gen_nll'], r['gen_nll_se'])} | "
                   f"{r['tokens_per_s_cpu']:,.0f} | {r['tokens_per_s_wall']:,.0f} |")
    out += ["", f"Every BD3 quality level against the cheapest MDLM setting with generative NLL ≤ (1 + {sp['match_tol']:g}) × BD3's "
            "(tokens/s from the sweep above, one measurement each):", "",
            "| BD3 sampler | BD3 gen NLL | BD3 tokens/s | MDLM sampler | MDLM gen NLL | MDLM tokens/s | BD3 / MDLM |", "|---|---|---|---|---|---|---|"]
    for f in sp["frontier"]:
        label = f.get("bd3_label") or f"block {f['bd3_steps']}/block"
        if f["mdlm_gen_nll"] is None:
            out.append(f"| {label} | {f['bd3_gen_nll']:.4f} | {f['bd3_tps']:,.0f} | not reached | | | |")
        else:
            mlabel = f.get("mdlm_label") or f"ancestral {f['mdlm_steps']}"
            out.append(f"| {label} | {f['bd3_gen_nll']:.4f} | {f['bd3_tps']:,.0f} | {mlabel} | {f['mdlm_gen_nll']:.4f} | {f['mdlm_tps']:,.0f} | {f['ratio']:.2f}× |")
    verdict = "PASS" if sp["ratio_cpu"] >= TARGET_SPEED else "FAIL"
    reps = sp.get("ratio_repeats") or []
    spread = f" (single repeats {min(reps):.2f}–{max(reps):.2f}×)" if len(reps) > 1 else ""
    out += ["", f"BD3 (KV cache) / MDLM (with its caching), equal quality: {sp['ratio_cpu']:.2f}× by CPU time{spread}, {sp['ratio_wall']:.2f}× by wall time; "
            f"against MDLM without caching {sp['ratio_vs_uncached_mdlm']:.2f}×. Target ≥ {TARGET_SPEED:g}×: **{verdict}**."]
    return "\n".join(out)


def table_text(tx: dict) -> str:
    ref = tx["reference"]
    out = ["### E. Real text: samples (no exact generative perplexity exists for real text)", ""]
    out.append(f"Held-out text rows: sample entropy {ref['entropy']:.3f} nats, distinct-2 {ref['distinct_2']:.3f}, distinct-3 {ref['distinct_3']:.3f}, distinct-4 {ref['distinct_4']:.3f} "
               f"({tx['n_samples']} rows, as many as samples per setting).")
    out += ["", "| model | sampler | steps | NFE | sample entropy | distinct-2 | distinct-3 | distinct-4 | mean length | tokens/s CPU |", "|---|---|---|---|---|---|---|---|---|---|"]
    for r in tx["samples"]:
        out.append(f"| {r['model']} | {r['method']} | {r['steps'] if r['steps'] is not None else '–'} | {r['nfe']:.1f} | {r['entropy']:.3f} | {r['distinct_2']:.3f} | "
                   f"{r['distinct_3']:.3f} | {r['distinct_4']:.3f} | {r['mean_length']:.0f} | {r['tokens_per_s_cpu']:,.0f} |")
    return "\n".join(out)


def verdict_nelbo(runs: dict, name: str = "mdlm") -> str:
    m, a = runs[name]["records"][-1], runs["ar"]["records"][-1]
    ratio = m["nll"] / a["nll"]
    return f"{name} NELBO / AR NLL at equal parameters ({runs[name]['params']:,}) and steps ({runs[name]['steps']}): {ratio:.4f}; target ≤ {TARGET_NELBO:g}: **{'PASS' if ratio <= TARGET_NELBO else 'FAIL'}**"


def table_d(runs: dict) -> str:
    """Real text: every evaluation of every model (test = held-out set 1, validation = set 2)."""
    out = ["### D. Real text: held-out NLL per character through training", "",
           "| model | kind | parameters | step | test NLL (nats/char) | bits/char | validation NLL | ratio to AR (same step) | train CPU s |",
           "|---|---|---|---|---|---|---|---|---|"]
    ar = {r["step"]: r for r in runs["ar"]["records"]} if "ar" in runs else {}
    for name, run in runs.items():
        best = (run.get("best") or {}).get("step")
        for r in run["records"]:
            a = ar.get(r["step"])
            ratio = "1" if name == "ar" else (f"{r['nll'] / a['nll']:.4f}" if a else "")
            mark = " (best val)" if r["step"] == best else ""
            val = _pm(r["val_nll"], r["val_nll_se"]) if "val_nll" in r else ""
            out.append(f"| {name} | {r['kind']} | {run['params']:,} | {r['step']}{mark} | {_pm(r['nll'], r['nll_se'])} | {nats_to_bits(r['nll']):.3f} | {val} | {ratio} | {r['train_cpu_s']:.0f} |")
    out.append("")
    out += [f"- {name}: {run['records'][-1]['estimator']}" for name, run in runs.items()]
    return "\n".join(out)


def last_step_note(runs: dict, name: str = "mdlm") -> str:
    """The ratio at the last step, which early stopping replaces (not a verdict: AR may have overfitted)."""
    m, a = runs[name]["records"][-1], runs["ar"]["records"][-1]
    return (f"(not the comparison: at the last step, step {m['step']}, {name} {m['nll']:.4f} / AR {a['nll']:.4f} = {m['nll'] / a['nll']:.4f}; "
            f"AR's test NLL there is {a['nll'] / runs['ar']['best']['nll']:.2f}× its best, it has overfitted the {runs[name]['steps']}-step budget)")


def verdict_early_stopping(runs: dict, name: str = "mdlm") -> str:
    """Each model at its best-validation evaluation within the same step budget (early stopping)."""
    m, a = runs[name]["best"], runs["ar"]["best"]
    ratio = m["nll"] / a["nll"]
    return (f"{name} / AR with early stopping (each at its lowest validation NLL within {runs[name]['steps']} steps; test NLL there): "
            f"{name} step {m['step']} {m['nll']:.4f}, AR step {a['step']} {a['nll']:.4f}: {ratio:.4f}; target ≤ {TARGET_NELBO:g}: "
            f"**{'PASS' if ratio <= TARGET_NELBO else 'FAIL'}**")


# ----------------------------------------------------------------------------- figures


def figure_text_curves(runs: dict, path: Path) -> Path:
    """Test NLL (bits/char) against training step for every Part 2 model."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(5.5, 4.0), dpi=110)
    ax = fig.subplots()
    for name, run in runs.items():
        rs = run["records"]
        ax.plot([r["step"] for r in rs], [nats_to_bits(r["nll"]) for r in rs], "o-", ms=3, label=f"{name} ({run['records'][-1]['kind']})")
        if run.get("best"):
            b = run["best"]
            ax.plot([b["step"]], [nats_to_bits(b["nll"])], "k*", ms=9)
    ax.set_xlabel("training step"), ax.set_ylabel("test NLL (bits/char)")
    ax.set_title("Real text: held-out NLL through training (*: best validation)")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path)
    return path


def figure_nfe(rows: list[dict], ref: dict, path: Path) -> Path:
    from matplotlib.figure import Figure

    fig = Figure(figsize=(15, 4.6), dpi=110)
    ax1, ax2, ax3 = fig.subplots(1, 3)
    groups: dict[str, list[dict]] = {}
    for r in rows:
        if r["cache"] or r["method"] not in ("ancestral", "block", "ar"):
            groups.setdefault((r["model"], r["label"]), []).append(r)
    for (model, label), rs in groups.items():
        rs = sorted(rs, key=lambda r: r["nfe"])
        style = ("o-" if len(rs) > 1 else "s") if model != "exact" else ("^--" if len(rs) > 1 else "^")
        ax = ax2 if model == "exact" else ax1
        ax.plot([r["nfe"] for r in rs], [r["gen_nll"] for r in rs], style, ms=3.5, lw=1, label=f"{model}: {label}")
        ax3.plot([r["nfe"] for r in rs], [r["entropy"] for r in rs], style, ms=3.0, lw=0.8, alpha=0.8)
    for ax in (ax1, ax2):
        ax.axhline(ref["h"], color="k", ls="--", lw=1, label="source entropy H")
        ax.set_ylabel("exact generative NLL (nats/token)")
        ax.legend(fontsize=5.5, ncol=2)
    ax3.axhline(ref["data_entropy"], color="k", ls="--", lw=1, label="held-out data")
    ax3.set_ylabel("sample entropy (nats; dashed markers: exact denoiser)")
    ax3.legend(fontsize=7)
    for ax in (ax1, ax2, ax3):
        ax.set_xscale("log"), ax.set_xlabel("NFE (network calls per batch)")
    ax1.set_title("trained models (Markov source, L = 64)")
    ax2.set_title("the same samplers on the exact denoiser")
    ax3.set_title("within-sequence entropy (low = degenerate)")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    return path


def figure_speed(sp: dict, path: Path) -> Path:
    from matplotlib.figure import Figure

    fig = Figure(figsize=(5.5, 4.0), dpi=110)
    ax = fig.subplots()
    series = (("mdlm", ("ancestral",), "MDLM ancestral (full sequence)", "o-"), ("mdlm", ("first-hitting",), "MDLM first-hitting", "s"),
              ("mdlm", ("top-k",), "MDLM top-k random", "x--"), ("mdlm", ("top-k", "dilated"), "MDLM top-k dilated", "v-"),
              ("bd3", ("block",), "BD3 block (KV cache)", "o-"), ("bd3", ("block-first-hitting",), "BD3 first-hitting in blocks (KV cache)", "D"),
              ("bd3", ("block-top-k",), "BD3 top-k random in blocks (KV cache)", "x--"),
              ("bd3", ("block-top-k", "dilated"), "BD3 top-k dilated in blocks (KV cache)", "v-"),
              ("ar", ("ar",), "AR (KV cache)", "^"))
    for obj, methods, label, style in series:
        method, order = methods[0], (methods[1] if len(methods) > 1 else "random")
        rs = [r for r in sp["sweep"] if r["model"] == obj and r["method"] == method
              and (r.get("options") or {}).get("order", "random") == order]
        if not rs:
            continue
        ax.plot([r["tokens_per_s_cpu"] for r in rs], [r["gen_nll"] for r in rs], style, ms=4, label=label)
        for r in rs:
            if r["steps"] is not None:
                ax.annotate(str(r["steps"]), (r["tokens_per_s_cpu"], r["gen_nll"]), fontsize=6, xytext=(3, 3), textcoords="offset points")
    ax.axhline(sp["q_star"], color="grey", ls=":", label="q* (matched quality)")
    ax.axhline(sp["source_entropy"], color="k", ls="--", lw=1, label="source entropy H")
    ax.set_xscale("log"), ax.set_xlabel("generated tokens per CPU second"), ax.set_ylabel("exact generative NLL (nats/token)")
    ax.set_title(f"L = {sp['length']}: quality against speed (labels: steps)")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path)
    return path


# ----------------------------------------------------------------------------- main


def add_matched_timing_args(p: argparse.ArgumentParser, *, match_help: str) -> None:
    """The options of the matched-quality scripts (bench_copy, bench_text_speed): sweep batch,
    timing batch and repeats (defaults 64 / 3, quick 16 / 1, set after parsing), the matching
    tolerance, the models folder, the output folder and the threads."""
    p.add_argument("--sample-batch", type=int, default=128, help="sequences per sampler call in the sweep")
    p.add_argument("--timing-batch", type=int, default=None, help="sequences per call in the timing (default 64; quick 16)")
    p.add_argument("--repeats", type=int, default=None, help="timing repeats (default 3; quick 1)")
    p.add_argument("--match-tol", type=float, default=0.02, help=match_help)
    p.add_argument("--models-dir", default=None, help="load the trained models from this folder when saved there, save newly trained ones")
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "text"), help="output folder")
    p.add_argument("--threads", type=int, default=1, help="torch intra-op threads")


def matched_timing_defaults(args) -> None:
    """Fill the defaults of :func:`add_matched_timing_args` that depend on --quick."""
    args.timing_batch = args.timing_batch or (16 if args.quick else 64)
    args.repeats = args.repeats or (1 if args.quick else 3)


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="smoke run: tiny steps, few samples and sampler settings")
    p.add_argument("--steps", type=int, default=None, help="training steps of every model (default 3000; quick 60)")
    p.add_argument("--speed-steps", type=int, default=None, help="training steps of the L = 256 models of Table C (default 1000; quick: --steps)")
    p.add_argument("--speed-scratch", action="store_true", help="train the L = 256 models from scratch (default: fine-tune the Part 1 models)")
    p.add_argument("--text-steps", type=int, default=None, help="training steps of the Part 2 models (default: --steps)")
    p.add_argument("--batch", type=int, default=64, help="batch of the L = 64 Markov models (sequences); L = 256: batch × 64 / 256")
    p.add_argument("--dim", type=int, default=64, help="Transformer width of every model")
    p.add_argument("--depth", type=int, default=2, help="Transformer blocks of every model")
    p.add_argument("--heads", type=int, default=4, help="attention heads")
    p.add_argument("--block", type=int, default=8, help="BD3 block size")
    p.add_argument("--n-train", type=int, default=20_000, help="Markov training sequences (the recipes' value)")
    p.add_argument("--n", type=int, default=None, help="samples per sampler setting, L = 64 (default 512; quick 64)")
    p.add_argument("--sample-batch", type=int, default=256, help="sequences per sampler call, L = 64")
    p.add_argument("--n-nll", type=int, default=None, help="held-out sequences for the NLL (default 512; quick 64)")
    p.add_argument("--n-t", type=int, default=None, help="t-points per sequence of the NELBO (default 32; quick 4)")
    p.add_argument("--speed-length", type=int, default=256, help="sequence length of the speed table")
    p.add_argument("--speed-mdlm-steps", default=None, help="Table C: MDLM step grid (comma-separated) for ancestral and top-k random (default 16..512); "
                   "first-hitting is left out when the length exceeds twice the largest")
    p.add_argument("--speed-n", type=int, default=None, help="samples per setting of the L = 256 quality sweep (default 128; quick 32)")
    p.add_argument("--speed-batch", type=int, default=None, help="sequences per call in the speed table (default 64; quick 16)")
    p.add_argument("--repeats", type=int, default=None, help="timing repeats of the speed table (default 3; quick 1)")
    p.add_argument("--match-tol", type=float, default=0.02, help="quality matching: generative NLL within this fraction of the worse best")
    p.add_argument("--text-files", default=",".join(TEXT_FILES), help="files of /usr/share/common-licenses for Part 2")
    p.add_argument("--text-models", default=",".join(TEXT_MODELS), help="Part 2: the models to train (mdlm,ar and optionally bd3)")
    p.add_argument("--text-eval-every", type=int, default=None, help="Part 2: evaluate (test and validation NLL) every N steps (default: steps / 12)")
    p.add_argument("--text-length", type=int, default=128, help="characters per row of Part 2")
    p.add_argument("--text-batch", type=int, default=32, help="batch of Part 2 (rows)")
    p.add_argument("--text-n-eval", type=int, default=200, help="held-out rows of Part 2 (each of two held-out sets)")
    p.add_argument("--text-n", type=int, default=None, help="samples per setting of Part 2 (default 128; quick 16)")
    p.add_argument("--skip-text", action="store_true", help="skip Part 2")
    p.add_argument("--skip-speed", action="store_true", help="skip Table C")
    p.add_argument("--only-speed", action="store_true", help="run Table C alone (outputs tables-speed.md, results-speed.json)")
    p.add_argument("--block-table", action="store_true", help="with --only-speed: also Table B for the block samplers, on the Part 1 BD3 model saved in --models-dir")
    p.add_argument("--mdlm-table", action="store_true", help="with --only-speed: also Table B for the MDLM samplers, on the Part 1 MDLM model saved in --models-dir")
    p.add_argument("--models-dir", default=None, help="Table C: load the L = 256 models from this folder when saved there, save newly trained ones")
    p.add_argument("--prepare", default=None, help="with --models-dir: train and save these models (comma-separated of mdlm,bd3,ar) and exit")
    p.add_argument("--skip-markov", action="store_true", help="skip Part 1 and Table C (run Part 2 alone; outputs tables-text.md, results-text.json)")
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "text"), help="output folder")
    p.add_argument("--threads", type=int, default=1, help="torch intra-op threads")
    args = p.parse_args(argv)
    q = args.quick
    args.steps = args.steps or (60 if q else 3000)
    args.speed_steps = args.speed_steps or (args.steps if q else 1000)
    args.text_steps = args.text_steps or args.steps
    args.n = args.n or (64 if q else 512)
    args.n_nll = args.n_nll or (64 if q else 512)
    args.n_t = args.n_t or (4 if q else 32)
    args.speed_n = args.speed_n or (32 if q else 128)
    args.speed_batch = args.speed_batch or (16 if q else 64)
    args.repeats = args.repeats or (1 if q else 3)
    args.text_n = args.text_n or (16 if q else 128)
    if q:
        args.text_n_eval = min(args.text_n_eval, 32)
        args.n_train = min(args.n_train, 2000)
    return args


def _json_safe(obj):
    if isinstance(obj, dict):
        return {k: _json_safe(v) for k, v in obj.items() if not k.startswith("_")}
    if isinstance(obj, (list, tuple)):
        return [_json_safe(v) for v in obj]
    if isinstance(obj, float) and not math.isfinite(obj):
        return str(obj)
    return obj


def main(argv=None) -> int:
    args = parse_args(argv)
    torch.set_num_threads(max(1, args.threads))
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    t_start = time.perf_counter()
    command = "OMP_NUM_THREADS=%d python benchmarks/bench_text.py %s" % (args.threads, " ".join(sys.argv[1:] if argv is None else argv))
    lines = [f"# genspace discrete-diffusion benchmark\n\ncommand: `{command}`\n",
             f"Every model: Transformer dim {args.dim}, depth {args.depth}, {args.heads} heads; {args.steps} steps (L = {args.speed_length}: {args.speed_steps}; "
             f"text: {args.text_steps}); AdamW lr 1e-3, warm-up min(200, steps/10), grad clip 1, EMA 0.999 (warm-up); torch threads {args.threads}.\n"]

    results = {"command": command, "args": vars(args)}
    figs = []
    tag = "-quick" if args.quick else ""
    if args.prepare:
        if not args.models_dir:
            raise ValueError("--prepare needs --models-dir (the folder the trained models are saved to)")
        objs = tuple(o.strip() for o in args.prepare.split(",") if o.strip())
        bad = [o for o in objs if o not in SPEED_MODELS]
        if bad or not objs:
            raise ValueError(f"--prepare takes a comma-separated subset of {','.join(SPEED_MODELS)}, got {args.prepare!r}")
        speed_models(args, None, objs)
        _log(f"saved {', '.join(objs)} to {args.models_dir}")
        return 0
    if args.only_speed:
        speed_part(args, lines, results, figs, out, tag, None)
    else:
        if not args.skip_markov:
            part_1(args, lines, results, figs, out, tag)
        # ---- Part 2: real text
        if not args.skip_text:
            part_2(args, lines, results, figs, out, tag)

    total = time.perf_counter() - t_start
    lines.append(f"figures: {', '.join(figs) or 'none'}; total wall time {total / 60:.1f} min")
    text = "\n".join(lines)
    print(text)
    speed_name = ({(True, False): "tables-blocks", (False, True): "tables-mdlm"}.get((args.block_table, args.mdlm_table), "tables-b-l64")
                  if args.skip_speed else "tables-speed" + ("" if args.speed_length == 256 else f"-l{args.speed_length}"))
    name = speed_name if args.only_speed else ("tables-text" if args.skip_markov else "tables")
    (out / f"{name}{tag}.md").write_text(text + "\n")
    results["total_wall_s"] = total
    (out / f"{name.replace('tables', 'results')}{tag}.json").write_text(json.dumps(_json_safe(results), indent=2, default=float) + "\n")
    return 0


def part_1(args, lines: list, results: dict, figs: list, out: Path, tag: str) -> None:
    """Part 1 (Markov source, Tables A and B) and Table C (speed at L = 256), appended to ``lines`` / ``results``."""
    length = 64
    cfgs = {obj: markov_config(obj, args, length=length, batch=args.batch, n_train=args.n_train, n_eval=max(args.n_nll, args.n, 1000 if not args.quick else 64), steps=args.steps)
            for obj in MARKOV_MODELS}
    data = load_data(cfgs["mdlm"].data)
    source = data.source
    h = source.sequence_entropy(length) / length
    _log(f"Markov source: {source!r}; H = {h:.4f} nats/token (entropy rate {source.entropy_rate:.4f})")
    runs = {}
    for obj in MARKOV_MODELS:
        _log(f"training {obj} for {args.steps} steps, batch {args.batch}")
        runs[obj] = train_model(obj, cfgs[obj], data, n_nll=args.n_nll, n_t=args.n_t)
    params = {k: v["params"] for k, v in runs.items()}
    held = data.heldout[: args.n]
    g_data = exact_generative_nll(held, source)
    ref = {"h": h, "entropy_rate": source.entropy_rate, "data_gen_nll": g_data.mean, "data_gen_nll_se": g_data.stderr,
           "data_entropy": sample_entropy(held).mean, "n": args.n, "batch": args.sample_batch}
    lines.append(table_a(runs, h, title=f"A. Markov source (8 symbols, order 2, concentration 0.5, L = {length}; H = {h:.4f} nats/token): held-out NLL, "
                                        f"{args.n_nll} sequences, batch {args.batch}, {args.steps} steps, parameters {sorted(set(params.values()))}"))
    lines.append("\n" + verdict_nelbo(runs, "mdlm") + "\n")
    for other in ("sedd", "bd3"):
        lines.append("(for reference) " + verdict_nelbo(runs, other).replace("**PASS**", "within 5%").replace("**FAIL**", "not within 5%") + "\n")

    sweep = []
    for obj in MARKOV_MODELS:
        sweep += sampler_sweep(obj, runs[obj]["model"], source, markov_grid(obj, args.quick, length), n=args.n, length=length, batch=args.sample_batch)
    sweep += sampler_sweep("exact", ExactMarkovDenoiser(source), source, markov_grid("exact", args.quick, length), n=args.n, length=length, batch=args.sample_batch)
    lines.append(table_b(sweep, ref) + "\n")
    fig1 = figure_nfe(sweep, ref, out / f"gen_nll_vs_nfe{tag}.png")

    results["markov"] = {"source": repr(source), "reference": ref, "params": params,
                         "models": {k: {kk: vv for kk, vv in v.items() if kk != "model"} for k, v in runs.items()}, "sweep": sweep}
    figs.append(str(fig1))

    # ---- Table C: speed at L = 256
    if not args.skip_speed:
        speed_part(args, lines, results, figs, out, tag, {k: v["model"] for k, v in runs.items()})


def block_table(args, lines: list, results: dict, obj: str = "bd3") -> None:
    """Table B for one Part 1 model saved in --models-dir (``<obj>-L64.safetensors``): the block
    samplers of BD3 (``--block-table``) or the samplers of MDLM and of the exact denoiser
    (``--mdlm-table``), with the same protocol as Table B (``--n`` sequences, batch ``--sample-batch``, exact generative NLL
    under the source)."""
    flag = "--block-table" if obj == "bd3" else "--mdlm-table"
    path = Path(args.models_dir or ".") / f"{obj}-L64.safetensors"
    if not path.exists():
        raise FileNotFoundError(f"{flag} needs the Part 1 {obj.upper()} model {path} (train it with --prepare {obj} --models-dir DIR)")
    cfg = _markov_l64_config(obj, args)
    data = load_data(cfg.data)
    source = data.source
    run = _load_run(cfg, data, path, n_nll=args.n_nll, n_t=args.n_t)
    held = data.heldout[: args.n]
    g_data = exact_generative_nll(held, source)
    ref = {"h": source.sequence_entropy(64) / 64, "data_gen_nll": g_data.mean, "data_gen_nll_se": g_data.stderr,
           "data_entropy": sample_entropy(held).mean, "n": args.n, "batch": args.sample_batch}
    rows = sampler_sweep(obj, run["model"], source, markov_grid(obj, args.quick, 64), n=args.n, length=64, batch=args.sample_batch)
    if obj == "mdlm":  # and the same samplers driven by the exact denoiser: the samplers' own error
        rows += sampler_sweep("exact", ExactMarkovDenoiser(source), source, markov_grid("exact", args.quick, 64), n=args.n, length=64, batch=args.sample_batch)
    title = "### B (block samplers). Markov source, the Part 1 BD3 model (block 8):" if obj == "bd3" else "### B (MDLM samplers). Markov source, the Part 1 MDLM model and the exact denoiser:"
    text = table_b(rows, ref).replace("### B. Markov source:", title, 1)
    lines.append(text + "\n")
    results["block_table" if obj == "bd3" else "mdlm_table"] = {"reference": ref, "sweep": rows}


def speed_part(args, lines: list, results: dict, figs: list, out: Path, tag: str, init: Optional[dict]) -> None:
    """Tables C0 and C (speed at L = 256), appended to ``lines`` / ``results``; with
    --block-table (and no Part 1 in this run) the block samplers' Table B first."""
    if args.mdlm_table and init is None:
        block_table(args, lines, results, "mdlm")
    if args.block_table and init is None:
        block_table(args, lines, results, "bd3")
    if args.skip_speed:
        return
    sp = speed_section(args, args.quick, init)
    lines.append(table_a({k: {**v, "records": v["records"]} for k, v in sp["models"].items()}, sp["source_entropy"],
                         title=f"C0. L = {sp['length']} models for the speed table (batch {sp['batch_train']}, {args.speed_steps} steps"
                               + (" from scratch" if args.speed_scratch else ", starting from the Part 1 (L = 64) weights") + "): held-out NLL") + "\n")
    lines.append(table_c(sp) + "\n")
    figs.append(str(figure_speed(sp, out / f"speed_l{sp['length']}{tag}.png")))
    results["speed"] = sp


def part_2(args, lines: list, results: dict, figs: Optional[list] = None, out: Optional[Path] = None, tag: str = "") -> None:
    """Part 2 (real text, Table D), appended to ``lines`` / ``results``."""
    tx = text_section(args, args.quick)
    files = ", ".join(f"{f['name']} ({f['chars']:,})" for f in tx["files"])
    lines.append(f"### D. Real text: {len(tx['files'])} license texts of /usr/share/common-licenses, {tx['total_chars']:,} characters: {files}\n\n"
                 f"Character tokenizer ({tx['n_symbols']} characters + EOS, PAD, mask), rows of {tx['length']} packed with EOS between files: "
                 f"{tx['n_rows']} rows, {tx['n_train_rows']} for training, two held-out sets of {tx['n_heldout_rows']} rows (random split of rows; "
                 f"test NLL on one, validation NLL on the other: it picks each model's early-stopping step). batch {args.text_batch}, {args.text_steps} steps, "
                 f"evaluated every {text_eval_every(args)} steps.\n")
    lines.append(table_d(tx["models"]))
    lines.append("\n" + verdict_early_stopping(tx["models"], "mdlm") + "\n")
    if "bd3" in tx["models"]:
        lines.append("(for reference) " + verdict_early_stopping(tx["models"], "bd3").replace("**PASS**", "within 5%").replace("**FAIL**", "not within 5%") + "\n")
    lines.append(last_step_note(tx["models"]) + "\n")
    lines.append("Samples below are drawn from each model's best-validation weights.\n")
    lines.append(table_text(tx) + "\n")
    lines.append("Samples (first 3 of each; `<|eos|>` marks a file boundary):\n")
    for key, texts in tx["texts"].items():
        lines.append(f"**{key}**\n")
        lines += ["```", *[t.replace("\n", "⏎") for t in texts], "```", ""]
    lines += ["**held-out data**\n", "```", *[t.replace("\n", "⏎") for t in tx["data_texts"]], "```", ""]
    results["text"] = tx
    if figs is not None and out is not None:
        figs.append(str(figure_text_curves(tx["models"], out / f"text_nll_vs_step{tag}.png")))


if __name__ == "__main__":
    sys.exit(main())
