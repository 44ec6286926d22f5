"""Block diffusion against masked diffusion on real text at matched quality (issue 5, Table G).

Issue 5 asks for tokens/s with and without the cache "on a Markov source and on a real text
file", and for BD3 with cache ≥ 5× the tokens/s of full-sequence MDLM at equal quality. Table C
(``bench_text.py``) measures this on the Markov source, where the quality of a sample is its
exact NLL under the true source. Real text has no true source, so quality is measured as the
literature measures it: the generative NLL under a judge language model (the "generative
perplexity" of Sahoo et al. 2024 §4.1 and Lou et al. 2024 §5.2, with GPT-2 Large as the judge).
No pretrained judge can be downloaded here; the judge is an autoregressive Transformer of
``--judge-dim`` width trained on the same training rows with its own seed, early-stopped on the
validation rows (:func:`genspace.metrics.text_metrics.judge_generative_nll`). The held-out test
rows' NLL under the judge is printed as the reference, and so is the within-sequence sample
entropy: a sampler that repeats itself lowers the judge NLL and the entropy together.

The models are Table D's: MDLM, BD3 (blocks of ``--block``) and AR on the ten license texts
(``bench_text.TEXT_FILES``), character tokenizer, rows of ``--text-length``, the same Transformer,
optimizer, batch and ``--text-steps`` steps, each at its best-validation step. Sampling writes
full rows: EOS (a file boundary in the packed rows) is an ordinary token here and does not stop a
sequence, so every sampler produces the same number of tokens.

The sweep and the matching follow Table C. Every sampler that draws from the model's
distribution competes (confidence orders are left out: they lower the judge NLL by lowering the
sample entropy): MDLM ancestral, first-hitting, top-k random and top-k dilated; BD3 ancestral
steps per block, first-hitting within blocks, top-k random and dilated within blocks. The matched
quality is q* = (1 + ``--match-tol``) × the worse of the two models' best judge NLLs; each model runs
at its setting with the fewest network calls whose judge NLL is ≤ q*. Those settings are timed
``--repeats`` times (interleaved), with and without the cache. A second table matches every BD3
setting with the cheapest MDLM setting within the tolerance of its quality.

    OMP_NUM_THREADS=1 python benchmarks/bench_text_speed.py --prepare bd3 --models-dir M          # 62 min beside the next two
    OMP_NUM_THREADS=1 python benchmarks/bench_text_speed.py --prepare judge,mdlm --models-dir M    # on the other core: 10 + 26 min
    OMP_NUM_THREADS=1 python benchmarks/bench_text_speed.py --prepare ar --text-steps 3000 --models-dir M  # 6 min; AR is best at 1000 (Table D)
    OMP_NUM_THREADS=1 python benchmarks/bench_text_speed.py --models-dir M                         # sweep, matching and timing
    OMP_NUM_THREADS=1 python benchmarks/bench_text_speed.py --quick                                # smoke run (a few minutes)

Outputs (``--out``, default benchmarks/results/text): ``tables-text-speed.md``,
``results-text-speed.json``, ``text_speed.png``. With ``--models-dir`` the trained models are saved
there as safetensors (``text-<model>-L<length>.safetensors`` + ``.json``) and loaded by later runs.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench_text as bt  # noqa: E402  (the shared training, sampling and table helpers)

from genspace.experiment import load_data  # noqa: E402
from genspace.metrics.text_metrics import distinct_n, judge_generative_nll, sample_entropy  # noqa: E402

MODELS = ("mdlm", "bd3", "ar")
PREPARABLE = MODELS + ("judge",)


def _config(obj: str, args, folder: Path):
    """Table D's recipe for ``obj``; the judge is an AR model of --judge-dim width, its own seed and steps."""
    if obj != "judge":
        return bt.text_config(obj, args, folder)
    judge = argparse.Namespace(**{**vars(args), "dim": args.judge_dim, "depth": args.judge_depth, "text_steps": args.judge_steps,
                                  "text_eval_every": args.judge_eval_every})
    cfg = bt.text_config("ar", judge, folder)
    cfg.train.seed = args.judge_seed
    return cfg


def text_models(args, objs) -> tuple[dict, object]:
    """The models ``objs`` (of MODELS and 'judge') trained on the license texts, or loaded from --models-dir."""
    store = Path(args.models_dir) if args.models_dir else None
    runs, data = {}, None
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        bt.corpus_folder(tuple(args.text_files.split(",")), folder)
        for obj in objs:
            cfg = _config(obj, args, folder)
            if data is None:
                data = load_data(cfg.data)
            path = None if store is None else store / f"text-{obj}-L{args.text_length}.safetensors"
            if path is not None and path.exists():
                bt._log(f"loading {path}")
                runs[obj] = bt._load_run(cfg, data, path, n_nll=0, n_t=1)
                continue
            every = args.judge_eval_every if obj == "judge" else bt.text_eval_every(args)
            bt._log(f"training text-{obj} for {cfg.train.steps} steps, batch {cfg.train.batch_size} (evaluated every {every})")
            runs[obj] = bt.train_model(f"text-{obj}", cfg, data, n_nll=args.text_n_eval, n_t=args.n_t, eval_every=every,
                                       val=data.reference[: args.text_n_eval])
            if path is not None:
                bt._save_run(runs[obj], path)
    for run in runs.values():  # full rows: EOS (a file boundary of the packed rows) does not stop a sample
        run["model"].eos_id = None
    return runs, data


def settings(quick: bool, length: int, block: int) -> list[tuple]:
    """(model, method, steps, options) of the sweep: the samplers of Table C on grids that reach one token per call."""
    rnd, dil = {"order": "random"}, {"order": "dilated"}
    if quick:
        return [("mdlm", "ancestral", 16, {}), ("mdlm", "first-hitting", None, {}), ("mdlm", "top-k", 8, rnd), ("mdlm", "top-k", 8, dil),
                ("bd3", "block", 2, {}), ("bd3", "block-first-hitting", None, {}), ("bd3", "block-top-k", 2, rnd), ("bd3", "block-top-k", 2, dil),
                ("ar", "ar", None, {})]

    def grid(fractions):
        return sorted({max(1, round(f * length)) for f in fractions})

    out = [("mdlm", "ancestral", s, {}) for s in grid((1 / 8, 1 / 4, 1 / 2, 1, 2, 4))] + [("mdlm", "first-hitting", None, {})]
    out += [("mdlm", "top-k", s, rnd) for s in grid((1 / 8, 1 / 4, 3 / 8, 1 / 2, 5 / 8, 3 / 4, 1))]
    out += [("mdlm", "top-k", s, dil) for s in grid((1 / 32, 1 / 16, 1 / 8, 1 / 4, 1 / 2, 3 / 4, 1))]
    per_block = sorted({s for s in (1, 2, 3, 4, 5, 6, 7, 8, block) if s <= block})
    out += [("bd3", "block", s, {}) for s in sorted({1, 2, 4, block, 2 * block})] + [("bd3", "block-first-hitting", None, {})]
    out += [("bd3", "block-top-k", s, rnd) for s in per_block] + [("bd3", "block-top-k", s, dil) for s in per_block]
    return out + [("ar", "ar", None, {})]


def quality(x: torch.Tensor, judge, tok) -> dict:
    """Judge NLL per token ± s.e., within-sequence entropy and distinct-n of (N, L) samples."""
    g = judge_generative_nll(x, judge)
    seqs = bt._strip(x, tok)
    return {"judge_nll": g.mean, "judge_nll_se": g.stderr, "entropy": sample_entropy(x, ignore_ids=(tok.pad_id,)).mean,
            "distinct_4": distinct_n(seqs, 4)}


def speed_section(args) -> dict:
    runs, data = text_models(args, MODELS + ("judge",))
    judge, tok, length = runs["judge"]["model"], data.tokenizer, data.shape[0]
    held = data.heldout[: args.n]
    ref = quality(held, judge, tok)
    bt._log(f"held-out rows: judge NLL {ref['judge_nll']:.4f} ± {ref['judge_nll_se']:.4f}, entropy {ref['entropy']:.3f}")
    sweep = []
    for obj, method, s, opts in settings(args.quick, length, args.block):
        x, st = bt.generate(runs[obj]["model"], args.n, length, method=method, steps=s, batch=args.sample_batch, **opts)
        r = {"model": obj, "method": method, "steps": s, "options": opts, "label": bt._speed_label(method, s, opts.get("order", "random")), **st,
             **quality(x, judge, tok)}
        if obj != "ar" and len(sweep) % 4 == 0:
            r["text"] = tok.decode(x[0])
        sweep.append(r)
        bt._log(f"  {obj} {r['label']}: NFE {r['nfe']:.1f} judge NLL {r['judge_nll']:.4f} ± {r['judge_nll_se']:.4f} entropy {r['entropy']:.3f} "
                f"{r['tokens_per_s_cpu']:,.0f} tok/s (cpu)")
    best = {obj: min(r["judge_nll"] for r in sweep if r["model"] == obj) for obj in ("mdlm", "bd3")}
    q_star = (1.0 + args.match_tol) * max(best.values())
    chosen = {obj: bt.cheapest([r for r in sweep if r["model"] == obj and r["judge_nll"] <= q_star]) for obj in ("mdlm", "bd3")}
    chosen["ar"] = next(r for r in sweep if r["model"] == "ar")
    frontier = []
    for rb in (r for r in sweep if r["model"] == "bd3"):
        rm = bt.cheapest([r for r in sweep if r["model"] == "mdlm" and r["judge_nll"] <= (1.0 + args.match_tol) * rb["judge_nll"]])
        frontier.append({"bd3": rb["label"], "bd3_nfe": rb["nfe"], "bd3_judge_nll": rb["judge_nll"], "bd3_tps": rb["tokens_per_s_cpu"],
                         "mdlm": None if rm is None else rm["label"], "mdlm_nfe": None if rm is None else rm["nfe"],
                         "mdlm_judge_nll": None if rm is None else rm["judge_nll"], "mdlm_tps": None if rm is None else rm["tokens_per_s_cpu"],
                         "ratio": None if rm is None else rb["tokens_per_s_cpu"] / rm["tokens_per_s_cpu"]})
    timing = bt.time_matched(runs, chosen, ("bd3", "mdlm", "ar"), n=args.timing_batch, length=length, repeats=args.repeats)
    table = []
    for (obj, cache), sts in timing.items():
        c = chosen[obj]
        table.append({"model": obj, "label": c["label"], "method": c["method"], "cache": cache, "nfe": statistics.median(s["nfe"] for s in sts),
                      "judge_nll": c["judge_nll"], "entropy": c["entropy"], "tokens_per_s_cpu": statistics.median(s["tokens_per_s_cpu"] for s in sts),
                      "tokens_per_s_wall": statistics.median(s["tokens_per_s_wall"] for s in sts), "tokens_per_s_cpu_all": [s["tokens_per_s_cpu"] for s in sts]})
    get = {(r["model"], r["cache"]): r for r in table}
    reps = [b["tokens_per_s_cpu"] / m["tokens_per_s_cpu"] for b, m in zip(timing[("bd3", True)], timing[("mdlm", True)])]
    return {
        "length": length, "block": args.block, "n": args.n, "n_timing": args.timing_batch, "repeats": args.repeats,
        "models": {k: {kk: vv for kk, vv in v.items() if kk != "model"} for k, v in runs.items()},
        "best_step": {k: v.get("best", {}).get("step") for k, v in runs.items()},
        "test_nll": {k: v.get("best", {}).get("nll") for k, v in runs.items()},
        "reference": ref, "n_reference": len(held), "data_text": tok.decode(held[0]), "sweep": sweep, "best": best, "q_star": q_star, "match_tol": args.match_tol,
        "chosen": {k: v["label"] for k, v in chosen.items()}, "table": table, "frontier": frontier,
        "ratio_cpu": get[("bd3", True)]["tokens_per_s_cpu"] / get[("mdlm", True)]["tokens_per_s_cpu"],
        "ratio_wall": get[("bd3", True)]["tokens_per_s_wall"] / get[("mdlm", True)]["tokens_per_s_wall"], "ratio_repeats": reps,
        "cache_gain": get[("bd3", True)]["tokens_per_s_cpu"] / get[("bd3", False)]["tokens_per_s_cpu"],
    }


# ----------------------------------------------------------------------------- tables and figure


def table_g(sp: dict) -> str:
    ref, j = sp["reference"], sp["models"]["judge"]
    out = [f"### G. Real text, rows of {sp['length']} characters: judge NLL against NFE", ""]
    out.append(f"Judge: AR, {j['params']:,} parameters, best validation at step {sp['best_step']['judge']} (test NLL {sp['test_nll']['judge']:.4f}). "
               f"The {sp['n_reference']} held-out test rows under the judge: {bt._pm(ref['judge_nll'], ref['judge_nll_se'])} nats/char, sample entropy {ref['entropy']:.3f}, "
               f"distinct-4 {ref['distinct_4']:.3f}. Models at their best-validation steps: "
               + ", ".join(f"{k} step {sp['best_step'][k]} of {sp['models'][k]['steps']} (test {sp['models'][k]['best']['kind']} {sp['test_nll'][k]:.4f})" for k in MODELS)
               + f". {sp['n']} samples per row; BD3 blocks of {sp['block']}, KV cache.")
    out += ["", "| model | sampler | NFE | judge NLL (nats/char) | sample entropy | distinct-4 | tokens/s CPU (wall) |", "|---|---|---|---|---|---|---|"]
    for r in sp["sweep"]:
        out.append(f"| {r['model']} | {r['label']} | {r['nfe']:.1f} | {bt._pm(r['judge_nll'], r['judge_nll_se'])} | {r['entropy']:.3f} | {r['distinct_4']:.3f} | "
                   f"{r['tokens_per_s_cpu']:,.0f} ({r['tokens_per_s_wall']:,.0f}) |")
    out += ["", f"Quality matching: best judge NLL MDLM {sp['best']['mdlm']:.4f}, BD3 {sp['best']['bd3']:.4f}; q* = (1 + {sp['match_tol']:g}) × worse = "
            f"{sp['q_star']:.4f}; each model at its cheapest setting with judge NLL ≤ q*: MDLM {sp['chosen']['mdlm']}, BD3 {sp['chosen']['bd3']}.", "",
            f"Timing: {sp['n_timing']} sequences per call, median of {sp['repeats']} interleaved repeats.", "",
            "| model | sampler | cache | NFE | judge NLL | tokens/s CPU | tokens/s wall |", "|---|---|---|---|---|---|---|"]
    for r in sp["table"]:
        cache = bt.cache_label(r["method"], r["cache"])
        out.append(f"| {r['model']} | {r['label']} | {cache} | {r['nfe']:.1f} | {r['judge_nll']:.4f} | {r['tokens_per_s_cpu']:,.0f} | {r['tokens_per_s_wall']:,.0f} |")
    reps = sp["ratio_repeats"]
    spread = f" (single repeats {min(reps):.2f}–{max(reps):.2f}×)" if len(reps) > 1 else ""
    verdict = "**PASS**" if sp["ratio_cpu"] >= bt.TARGET_SPEED else "**FAIL**"
    out += ["", f"BD3 (KV cache) / MDLM at matched quality: {sp['ratio_cpu']:.2f}× by CPU time{spread}, {sp['ratio_wall']:.2f}× by wall time; "
            f"target ≥ {bt.TARGET_SPEED:g}×: {verdict}. The KV cache alone: {sp['cache_gain']:.2f}× over uncached BD3.", "",
            "Every BD3 setting against the cheapest MDLM setting within the tolerance of its quality (single sweep measurements):", "",
            "| BD3 setting | NFE | judge NLL | MDLM setting | NFE | judge NLL | BD3 / MDLM tokens/s |", "|---|---|---|---|---|---|---|"]
    for f in sp["frontier"]:
        if f["mdlm"] is None:
            out.append(f"| {f['bd3']} | {f['bd3_nfe']:.0f} | {f['bd3_judge_nll']:.4f} | none as good | | | |")
        else:
            out.append(f"| {f['bd3']} | {f['bd3_nfe']:.0f} | {f['bd3_judge_nll']:.4f} | {f['mdlm']} | {f['mdlm_nfe']:.0f} | {f['mdlm_judge_nll']:.4f} | {f['ratio']:.2f}× |")
    texts = [(r["model"], r["label"], r["text"]) for r in sp["sweep"] if "text" in r]
    out += ["", "Samples (the first of some rows; ⏎ a newline):", ""]
    for model, label, text in texts + [("held-out", "data", sp["data_text"])]:
        out += [f"**{model} {label}**", "", "```", text.replace("\n", "⏎"), "```", ""]
    return "\n".join(out)


def figure(sp: dict, path: Path) -> Path:
    from matplotlib.figure import Figure

    fig = Figure(figsize=(10.0, 4.0), dpi=110)
    ax, ax2 = fig.subplots(1, 2)
    series = {}
    for r in sp["sweep"]:
        series.setdefault((r["model"], r["method"], r["options"].get("order", "")), []).append(r)
    for (model, method, order), rs in series.items():
        rs = sorted(rs, key=lambda r: r["nfe"])
        label = f"{model} {method}" + (f" {order}" if order else "")
        style = "o-" if len(rs) > 1 else "s"
        ax.plot([r["nfe"] for r in rs], [r["judge_nll"] for r in rs], style, ms=4, lw=1, label=label)
        ax2.plot([r["tokens_per_s_cpu"] for r in rs], [r["judge_nll"] for r in rs], style, ms=4, lw=1, label=label)
    for a in (ax, ax2):
        a.axhline(sp["reference"]["judge_nll"], color="k", lw=0.8, ls="--")
        a.axhline(sp["q_star"], color="r", lw=0.8, ls=":")
        a.set_xscale("log"), a.set_ylabel("judge NLL of samples (nats/char)")
    ax.set_xlabel("NFE (network calls per batch)"), ax2.set_xlabel("tokens/s (CPU, sweep batch)")
    ax.set_title("dashed: held-out text; dotted: matched quality q*", fontsize=9)
    ax2.legend(fontsize=6, ncol=2)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    return path


# ----------------------------------------------------------------------------- main


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="smoke run: few steps, samples and sampler settings")
    p.add_argument("--text-steps", type=int, default=None, help="training steps of MDLM, BD3 and AR (default 12000, Table D's; quick 60)")
    p.add_argument("--text-eval-every", type=int, default=None, help="evaluate test and validation NLL every N steps (default 500; quick 30)")
    p.add_argument("--text-files", default=",".join(bt.TEXT_FILES), help="files of /usr/share/common-licenses")
    p.add_argument("--text-length", type=int, default=128, help="characters per row")
    p.add_argument("--text-batch", type=int, default=32, help="training batch (rows)")
    p.add_argument("--text-n-eval", type=int, default=200, help="held-out rows (each of two held-out sets)")
    p.add_argument("--dim", type=int, default=64, help="Transformer width of MDLM, BD3 and AR")
    p.add_argument("--depth", type=int, default=2, help="Transformer blocks")
    p.add_argument("--heads", type=int, default=4, help="attention heads")
    p.add_argument("--block", type=int, default=8, help="BD3 block size")
    p.add_argument("--n-t", type=int, default=None, help="t-points per sequence of the NELBO in training evaluations (default 32; quick 4)")
    p.add_argument("--judge-dim", type=int, default=128, help="the judge's width (an AR Transformer)")
    p.add_argument("--judge-depth", type=int, default=2, help="the judge's blocks")
    p.add_argument("--judge-steps", type=int, default=None, help="the judge's training steps (default 2000; quick 60)")
    p.add_argument("--judge-eval-every", type=int, default=None, help="the judge's validation interval (default 100; quick 30)")
    p.add_argument("--judge-seed", type=int, default=1, help="the judge's train.seed (the models use 0)")
    p.add_argument("--n", type=int, default=None, help="samples per sampler setting (default 256; quick 32)")
    p.add_argument("--prepare", default=None, help=f"with --models-dir: train and save these models (comma-separated of {','.join(PREPARABLE)}) and exit")
    bt.add_matched_timing_args(p, match_help="quality matching: judge NLL within this fraction of the worse best")
    args = p.parse_args(argv)
    q = args.quick
    args.text_steps = args.text_steps or (60 if q else 12000)
    args.text_eval_every = args.text_eval_every or (30 if q else 500)
    args.judge_steps = args.judge_steps or (60 if q else 2000)
    args.judge_eval_every = args.judge_eval_every or (30 if q else 100)
    args.n_t = args.n_t or (4 if q else 32)
    args.n = args.n or (32 if q else 256)
    bt.matched_timing_defaults(args)
    if q:
        args.text_n_eval = min(args.text_n_eval, 32)
    if args.text_length % args.block:
        raise ValueError(f"--block {args.block} must divide --text-length {args.text_length}")
    if args.prepare is not None:
        objs = tuple(o.strip() for o in args.prepare.split(",") if o.strip())
        if not objs or any(o not in PREPARABLE for o in objs):
            raise ValueError(f"--prepare takes a comma-separated subset of {','.join(PREPARABLE)}, got {args.prepare!r}")
        if not args.models_dir:
            raise ValueError("--prepare needs --models-dir (the folder the trained models are saved to)")
        args.prepare = objs
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    if args.prepare:
        text_models(args, args.prepare)
        bt._log(f"saved {', '.join(args.prepare)} to {args.models_dir}")
        return 0
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    command = "OMP_NUM_THREADS=%d python benchmarks/bench_text_speed.py %s" % (args.threads, " ".join(sys.argv[1:] if argv is None else argv))
    sp = speed_section(args)
    tag = "-quick" if args.quick else ""
    lines = [f"# genspace: block diffusion against masked diffusion on real text, at matched quality\n\ncommand: `{command}`\n",
             f"MDLM, BD3 and AR: Transformer dim {args.dim}, depth {args.depth}, {args.heads} heads, batch {args.text_batch}, "
             f"early-stopped on validation rows every {args.text_eval_every} steps (Table D's models; the steps of each below); judge: dim {args.judge_dim}, "
             f"depth {args.judge_depth}, seed {args.judge_seed}, validation every {args.judge_eval_every}. AdamW lr 1e-3, warm-up min(200, steps/10), "
             f"grad clip 1, EMA 0.999 (warm-up); torch threads {args.threads}.\n", table_g(sp) + "\n"]
    fig = figure(sp, out / f"text_speed{tag}.png")
    lines.append(f"figure: {fig}; total wall time {(time.perf_counter() - t0) / 60:.1f} min")
    text = "\n".join(lines)
    print(text)
    (out / f"tables-text-speed{tag}.md").write_text(text + "\n")
    sp["command"] = command
    (out / f"results-text-speed{tag}.json").write_text(json.dumps(bt._json_safe(sp), indent=2, default=float) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
