"""Block diffusion against masked diffusion on a source with long-range dependence (issue 5, Table F).

The speed target of issue 5 is measured on the Markov source (``bench_text.py``, Table C), whose
dependence decays with distance: there, MDLM's dilated order reveals far-apart, nearly independent
tokens together and reaches the matched quality in 4 to 8 full-sequence calls. This benchmark
runs the same three models (MDLM, BD3 with blocks of ``--block``, AR; the same Transformer, the
recipes' optimizer) on the opposite case, the copy source of :class:`genspace.data.sources.CopySource`:
x_1..x_m i.i.d. uniform over K symbols and x_{m+i} = x_i (L = 2m). Its entropy is
H = m·log K / L per token. Every valid sequence has probability K^(−m) and every other one 0. The
exact generative NLL of a valid sample is therefore H exactly, and a sampler's quality is the
fraction of its samples that are valid (exact, under the true source). The within-sequence entropy
of the first half is printed beside it, so that a sampler cannot score by repeating one symbol.

What the exact denoiser predicts (the column 'exact denoiser' of the table). A sampler that
reveals several tokens in one step draws them independently from their marginals. While the
sequence is valid, a pair (i, m+i) revealed in one step matches with probability 1/K. A pair
revealed in two steps is copied exactly. So P(valid) = E[K^(−J)], J the number of pairs that
share a step:

- MDLM ancestral, S steps, linear schedule: each token's reveal step is uniform over the S steps,
  independently, so P(valid) = (1 − (1 − 1/K)/S)^m;
- MDLM top-k random: the positions kept at each step are consecutive groups of a uniformly random
  order (estimated here over 20,000 random orders);
- MDLM top-k dilated with fewer than L steps: i and i + L/2 are neighbours in the bit-reversal
  order, so every pair shares a step: P(valid) = K^(−m);
- one token per call (first-hitting, or top-k with L steps), and AR: P(valid) = 1;
- BD3 with blocks of b ≤ m (b dividing m): the two tokens of a pair lie in different blocks, and
  the block of the copy sees its source in the cache. Every BD3 sampler, one step per block
  included, is exact: P(valid) = 1 with L/b calls.

The tests check these laws for the samplers driven by the exact denoiser
(``tests/test_discrete_samplers.py::test_parallel_steps_break_copies_at_the_predicted_rate``).
Here, trained networks run the same samplers.

Quality matching, as in Table C: v* = min(best valid fraction of MDLM, best of BD3) − ``--match-tol``
(absolute). Each model runs at its setting with the fewest network calls whose valid fraction is
≥ v*. Those settings are timed ``--repeats`` times (interleaved), with and without the cache.

    OMP_NUM_THREADS=1 python benchmarks/bench_copy.py --models-dir M    # ~25 min on one core (training ~17 of them)
    OMP_NUM_THREADS=1 python benchmarks/bench_copy.py --quick           # smoke run (about a minute)

Outputs (``--out``, default benchmarks/results/text): ``tables-copy.md``, ``results-copy.json``,
``copy_validity.png`` (``-l<L>`` / ``_l<L>`` added for L ≠ 64). With ``--models-dir`` the trained models are saved there as safetensors
(``copy-<model>-L<length>.safetensors``) and loaded by later runs.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import time
from pathlib import Path
from typing import Optional

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench_text as bt  # noqa: E402  (the shared training, sampling and table helpers)

from genspace.discrete.samplers import bit_reversal_key, topk_keep_count  # noqa: E402
from genspace.discrete.schedules import get_schedule  # noqa: E402
from genspace.experiment import load_data  # noqa: E402
from genspace.metrics.text_metrics import exact_generative_nll, sample_entropy  # noqa: E402

MODELS = ("mdlm", "bd3", "ar")


def copy_config(obj: str, args):
    """The recipe configs/text-markov-<obj>.yaml (objective, schedule, optimizer) on the copy source."""
    batch = max(1, args.batch * 64 // args.length)
    over = bt._common(args, args.steps, batch) + [
        "data.name=copy", f"data.n_symbols={args.symbols}", f"data.length={args.length}",
        f"data.n_train={args.n_train}", f"data.n_eval={max(args.n_nll, args.n)}",
    ]
    if obj == "bd3":
        over.append(f"model.block_size={args.block}")
    return bt.load_config(bt.CONFIGS / f"text-markov-{obj}.yaml", tuple(over))


def copy_models(args) -> tuple[dict, object]:
    """MDLM, BD3 and AR trained on the copy source (or loaded from --models-dir)."""
    folder = Path(args.models_dir) if args.models_dir else None
    models, data = {}, None
    for obj in MODELS:
        cfg = copy_config(obj, args)
        if data is None:
            data = load_data(cfg.data)
        path = None if folder is None else folder / f"copy-{obj}-L{args.length}.safetensors"
        if path is not None and path.exists():
            bt._log(f"loading {path}")
            models[obj] = bt._load_run(cfg, data, path, n_nll=args.n_nll, n_t=args.n_t)
            continue
        bt._log(f"training {obj} on the copy source (L = {args.length}) for {args.steps} steps, batch {cfg.train.batch_size}")
        models[obj] = bt.train_model(obj, cfg, data, n_nll=args.n_nll, n_t=args.n_t)
        if path is not None:
            bt._save_run(models[obj], path)
    return models, data


# ----------------------------------------------------------------------------- the exact-denoiser law


def _counts(steps: int, length: int) -> list[int]:
    """Tokens kept at each top-k step over the whole sequence: the counts of the library's sampler
    (:func:`~genspace.discrete.samplers.topk_keep_count`, linear schedule)."""
    schedule = get_schedule("linear")
    start, left, out = torch.tensor([length]), torch.tensor([length]), []
    for j in range(steps):
        if int(left) == 0:
            break
        k = int(topk_keep_count(schedule, start, left, j, steps))
        out.append(k)
        left = left - k
    return out


def _groups_valid(step_of: torch.Tensor, m: int, k: int) -> float:
    """E[K^(−J)] for (R, L) step indices of the positions: J = pairs (i, m+i) sharing a step."""
    j = (step_of[:, :m] == step_of[:, m:]).sum(-1).double()  # (R,)
    return float((k ** -j).mean())


def predicted_valid(model: str, method: str, steps: Optional[int], order: str, length: int, k: int, block: int) -> Optional[float]:
    """P(valid) of the sampler driven by the exact denoiser (module doc); None where no law is given."""
    m = length // 2
    if model in ("bd3", "ar"):
        return 1.0 if model == "ar" or (block <= m and m % block == 0) else None
    if method == "first-hitting":
        return 1.0
    if method == "ancestral":
        return (1.0 - (1.0 - 1.0 / k) / steps) ** m
    if method != "top-k":
        return None
    counts = _counts(steps, length)
    step_of_rank = torch.repeat_interleave(torch.arange(len(counts)), torch.tensor(counts))  # (L,) step of the r-th kept position
    if order == "dilated":  # positions in bit-reversal order, consecutive groups of the counts
        rank = torch.empty(length, dtype=torch.long)
        rank[torch.argsort(bit_reversal_key(torch.arange(length)))] = torch.arange(length)
        return _groups_valid(step_of_rank[rank][None], m, k)
    g = torch.Generator().manual_seed(0)
    perms = torch.argsort(torch.rand(20_000, length, generator=g), dim=-1)  # uniformly random orders: perms[r] = positions by rank
    rank = torch.argsort(perms, dim=-1)  # (R, L) rank of each position
    return _groups_valid(step_of_rank[rank], m, k)


# ----------------------------------------------------------------------------- sweep, matching, timing


def copy_metrics(x: torch.Tensor, source, m: int) -> dict:
    """Valid fraction (exact, under the source) ± its binomial s.e., matching pairs, first-half entropy."""
    p = 1.0 - exact_generative_nll(x, source).invalid_fraction
    return {"valid": p, "valid_se": math.sqrt(max(p * (1 - p), 1e-12) / len(x)), "pair_acc": float((x[:, m:] == x[:, :m]).double().mean()),
            "entropy_first": sample_entropy(x[:, :m]).mean}


def settings(quick: bool, length: int) -> list[tuple]:
    """(model, method, steps, options) of the sweep: every sampler that draws from the model's
    distribution (no confidence order), on grids (fractions of L for MDLM) that reach one token
    per call."""
    if quick:
        return [("mdlm", "ancestral", 16, {}), ("mdlm", "top-k", 8, {"order": "random"}), ("mdlm", "top-k", 8, {"order": "dilated"}),
                ("mdlm", "first-hitting", None, {}), ("bd3", "block-top-k", 1, {"order": "random"}), ("bd3", "block", 2, {}),
                ("bd3", "block-first-hitting", None, {}), ("ar", "ar", None, {})]
    rnd, dil = {"order": "random"}, {"order": "dilated"}

    def grid(fractions):
        return sorted({max(1, round(f * length)) for f in fractions})

    out = [("mdlm", "ancestral", s, {}) for s in grid((1 / 8, 1 / 4, 1 / 2, 1, 2, 4))] + [("mdlm", "first-hitting", None, {})]
    out += [("mdlm", "top-k", s, rnd) for s in grid((1 / 8, 1 / 4, 1 / 2, 3 / 4, 1))]
    out += [("mdlm", "top-k", s, dil) for s in grid((1 / 16, 1 / 8, 1 / 4, 1 / 2, 1))]
    out += [("bd3", "block", s, {}) for s in (1, 2, 4, 8)] + [("bd3", "block-first-hitting", None, {})]
    out += [("bd3", "block-top-k", s, rnd) for s in (1, 2, 4, 8)] + [("bd3", "block-top-k", s, dil) for s in (1, 2, 4, 8)]
    return out + [("ar", "ar", None, {})]


def copy_section(args) -> dict:
    models, data = copy_models(args)
    source, length, m = data.source, args.length, args.length // 2
    sweep = []
    for obj, method, s, opts in settings(args.quick, length):
        x, st = bt.generate(models[obj]["model"], args.n, length, method=method, steps=s, batch=args.sample_batch, **opts)
        order = opts.get("order", "random")
        r = {"model": obj, "method": method, "steps": s, "options": opts, "label": bt._speed_label(method, s, order), **st, **copy_metrics(x, source, m),
             "predicted": predicted_valid(obj, method, s, order, length, args.symbols, args.block)}
        sweep.append(r)
        pred = "" if r["predicted"] is None else f" (exact denoiser {r['predicted']:.3f})"
        bt._log(f"  {obj} {r['label']}: NFE {r['nfe']:.1f} valid {r['valid']:.3f}{pred} pairs {r['pair_acc']:.3f} "
             f"entropy {r['entropy_first']:.3f} {r['tokens_per_s_cpu']:,.0f} tok/s (cpu)")
    best = {obj: max(r["valid"] for r in sweep if r["model"] == obj) for obj in ("mdlm", "bd3")}
    v_star = min(best.values()) - args.match_tol
    chosen = {obj: bt.cheapest([r for r in sweep if r["model"] == obj and r["valid"] >= v_star]) for obj in ("mdlm", "bd3")}
    chosen["ar"] = next(r for r in sweep if r["model"] == "ar")
    timing = bt.time_matched(models, chosen, MODELS, n=args.timing_batch, length=length, repeats=args.repeats)
    table = []
    for (obj, cache), sts in timing.items():
        c = chosen[obj]
        table.append({"model": obj, "label": c["label"], "method": c["method"], "cache": cache, "nfe": statistics.median(s["nfe"] for s in sts),
                      "valid": c["valid"], "tokens_per_s_cpu": statistics.median(s["tokens_per_s_cpu"] for s in sts),
                      "tokens_per_s_wall": statistics.median(s["tokens_per_s_wall"] for s in sts),
                      "tokens_per_s_cpu_all": [s["tokens_per_s_cpu"] for s in sts]})
    get = {(r["model"], r["cache"]): r for r in table}
    reps = [b["tokens_per_s_cpu"] / d["tokens_per_s_cpu"] for b, d in zip(timing[("bd3", True)], timing[("mdlm", True)])]
    held = data.heldout[: args.n]
    return {
        "length": length, "symbols": args.symbols, "block": args.block, "n": args.n, "n_timing": args.timing_batch, "repeats": args.repeats,
        "source_entropy": source.sequence_entropy(length) / length, "data_entropy_first": sample_entropy(held[:, :m]).mean,
        "models": {k: {kk: vv for kk, vv in v.items() if kk != "model"} for k, v in models.items()},
        "sweep": sweep, "best": best, "v_star": v_star, "match_tol": args.match_tol, "chosen": {k: v["label"] for k, v in chosen.items()},
        "table": table, "ratio_cpu": get[("bd3", True)]["tokens_per_s_cpu"] / get[("mdlm", True)]["tokens_per_s_cpu"],
        "ratio_wall": get[("bd3", True)]["tokens_per_s_wall"] / get[("mdlm", True)]["tokens_per_s_wall"], "ratio_repeats": reps,
    }


# ----------------------------------------------------------------------------- tables and figure


def table_f(cp: dict) -> str:
    m = cp["length"] // 2
    out = [f"### F. Copy source (L = {cp['length']}, K = {cp['symbols']}): valid samples against NFE", ""]
    out.append(f"H = {cp['source_entropy']:.4f} nats/token; every valid sample has generative NLL H exactly, every other one −log 0. "
               f"{cp['n']} sequences per row. 'valid': the fraction with x_(m+i) = x_i for all i ≤ m = {m} (± s.e.); 'exact denoiser': the same "
               "sampler driven by the true posterior (module doc: closed form, or 20,000 random orders for top-k random); 'pairs': the fraction of "
               f"matching pairs; 'entropy': the within-sequence entropy of the first half (held-out data {cp['data_entropy_first']:.3f}). "
               f"BD3: blocks of {cp['block']}, KV cache.")
    out += ["", "| model | sampler | NFE | valid | exact denoiser | pairs | entropy (first half) | tokens/s CPU (wall) |", "|---|---|---|---|---|---|---|---|"]
    for r in cp["sweep"]:
        pred = "" if r["predicted"] is None else f"{r['predicted']:.3f}"
        out.append(f"| {r['model']} | {r['label']} | {r['nfe']:.1f} | {r['valid']:.3f} ± {r['valid_se']:.3f} | {pred} | {r['pair_acc']:.3f} | "
                   f"{r['entropy_first']:.3f} | {r['tokens_per_s_cpu']:,.0f} ({r['tokens_per_s_wall']:,.0f}) |")
    out += ["", f"Quality matching: best valid fraction MDLM {cp['best']['mdlm']:.3f}, BD3 {cp['best']['bd3']:.3f}; v* = min − {cp['match_tol']:g} = "
            f"{cp['v_star']:.3f}; each model at its cheapest setting with valid ≥ v*: MDLM {cp['chosen']['mdlm']}, BD3 {cp['chosen']['bd3']}.", "",
            f"Timing: {cp['n_timing']} sequences per call, median of {cp['repeats']} interleaved repeats.", "",
            "| model | sampler | cache | NFE | valid | tokens/s CPU | tokens/s wall |", "|---|---|---|---|---|---|---|"]
    for r in cp["table"]:
        cache = bt.cache_label(r["method"], r["cache"])
        out.append(f"| {r['model']} | {r['label']} | {cache} | {r['nfe']:.1f} | {r['valid']:.3f} | {r['tokens_per_s_cpu']:,.0f} | {r['tokens_per_s_wall']:,.0f} |")
    reps = cp["ratio_repeats"]
    spread = f" (single repeats {min(reps):.2f}–{max(reps):.2f}×)" if len(reps) > 1 else ""
    out += ["", f"BD3 (KV cache) / MDLM at matched validity: {cp['ratio_cpu']:.2f}× by CPU time{spread}, {cp['ratio_wall']:.2f}× by wall time."]
    return "\n".join(out)


def figure_validity(cp: dict, path: Path) -> Path:
    from matplotlib.figure import Figure

    fig = Figure(figsize=(6.0, 4.2), dpi=110)
    ax = fig.subplots()
    series = {}
    for r in cp["sweep"]:
        series.setdefault((r["model"], r["method"], r["options"].get("order", "")), []).append(r)
    for (model, method, order), rs in series.items():
        rs = sorted(rs, key=lambda r: r["nfe"])
        label = f"{model} {method}" + (f" {order}" if order else "")
        line = ax.plot([r["nfe"] for r in rs], [r["valid"] for r in rs], "o-" if len(rs) > 1 else "s", ms=4, lw=1, label=label)[0]
        pred = [(r["nfe"], r["predicted"]) for r in rs if r["predicted"] is not None]
        if pred and model == "mdlm":
            ax.plot(*zip(*pred), ":", color=line.get_color(), lw=1)
    ax.set_xscale("log"), ax.set_xlabel("NFE (network calls per batch)"), ax.set_ylabel("fraction of valid samples (exact)")
    ax.set_title(f"Copy source, L = {cp['length']} (dotted: MDLM samplers on the exact denoiser)", fontsize=9)
    ax.legend(fontsize=6, ncol=2)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    return path


# ----------------------------------------------------------------------------- main


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="smoke run: few steps, samples and sampler settings")
    p.add_argument("--length", type=int, default=64, help="sequence length L = 2m (m divisible by --block)")
    p.add_argument("--symbols", type=int, default=8, help="K, the symbols of the first half")
    p.add_argument("--steps", type=int, default=None, help="training steps of every model (default 2000; quick 60)")
    p.add_argument("--batch", type=int, default=64, help="training batch at L = 64 (sequences); at other L: batch × 64 / L")
    p.add_argument("--dim", type=int, default=64, help="Transformer width")
    p.add_argument("--depth", type=int, default=2, help="Transformer blocks")
    p.add_argument("--heads", type=int, default=4, help="attention heads")
    p.add_argument("--block", type=int, default=8, help="BD3 block size")
    p.add_argument("--n-train", type=int, default=20_000, help="training sequences")
    p.add_argument("--n", type=int, default=None, help="samples per sampler setting (default 512; quick 64)")
    p.add_argument("--n-nll", type=int, default=None, help="held-out sequences for the NLL (default 256; quick 32)")
    p.add_argument("--n-t", type=int, default=None, help="t-points per sequence of the NELBO (default 16; quick 4)")
    bt.add_matched_timing_args(p, match_help="quality matching: valid fraction within this of the worse best (absolute)")
    args = p.parse_args(argv)
    q = args.quick
    args.steps = args.steps or (60 if q else 2000)
    args.n = args.n or (64 if q else 512)
    args.n_nll = args.n_nll or (32 if q else 256)
    args.n_t = args.n_t or (4 if q else 16)
    bt.matched_timing_defaults(args)
    if q:
        args.n_train = min(args.n_train, 2000)
    if args.length < 2 or args.length % 2:
        raise ValueError(f"--length must be even and >= 2 (the copy source has two halves), got {args.length}")
    if (args.length // 2) % args.block:
        raise ValueError(f"--block {args.block} must divide the half length {args.length // 2}, so that a pair never shares a block")
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    command = "OMP_NUM_THREADS=%d python benchmarks/bench_copy.py %s" % (args.threads, " ".join(sys.argv[1:] if argv is None else argv))
    cp = copy_section(args)
    tag = ("" if args.length == 64 else f"-l{args.length}") + ("-quick" if args.quick else "")
    lines = [f"# genspace: block diffusion against masked diffusion on the copy source\n\ncommand: `{command}`\n",
             f"Every model: Transformer dim {args.dim}, depth {args.depth}, {args.heads} heads; {args.steps} steps, batch {max(1, args.batch * 64 // args.length)}; "
             f"AdamW lr 1e-3, warm-up min(200, steps/10), grad clip 1, EMA 0.999 (warm-up); torch threads {args.threads}.\n",
             bt.table_a(cp["models"], cp["source_entropy"], title=f"F0. Copy source, L = {args.length}: held-out NLL") + "\n",
             table_f(cp) + "\n"]
    fig = figure_validity(cp, out / f"copy_validity{tag.replace('-l', '_l')}.png")
    lines.append(f"figure: {fig}; total wall time {(time.perf_counter() - t0) / 60:.1f} min")
    text = "\n".join(lines)
    print(text)
    (out / f"tables-copy{tag}.md").write_text(text + "\n")
    cp["command"] = command
    (out / f"results-copy{tag}.json").write_text(json.dumps(bt._json_safe(cp), indent=2, default=float) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
