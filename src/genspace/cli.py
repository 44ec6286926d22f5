"""The ``genspace`` command: train, sample, eval, demo, compare, methods.

This is the only place that touches global torch state (thread count). Any user error (bad
config, unknown name, missing file) is printed as one line ``genspace: error: ...`` with exit
code 2; a diverged training run exits with code 3.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Optional, Sequence

EXAMPLES = """\
examples:
  genspace demo                                   # ~1 min: train on 8gaussians, figures + metrics in runs/demo
  genspace train configs/toy-edm.yaml --out runs/edm --train.steps=5000 --model.net.hidden=128
  genspace train configs/toy-edm.yaml --out runs/edm --resume          # continue from the last checkpoint
  genspace sample runs/edm --method dpmpp-2m --nfe 10 --n 5000 --seed 1 --out runs/edm/samples
  genspace eval runs/edm --method heun --nfe 35 --json runs/edm/eval.json
  genspace compare configs/compare-toys.yaml      # several families on one toy: one table, one figure
  genspace methods                                # the samplers, deterministic or stochastic
  torchrun --nproc_per_node=2 -m genspace.cli train configs/toy-edm.yaml --out runs/ddp
"""


class UserError(Exception):
    """An error the user can fix; printed as one line."""


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="genspace",
        description="Train, sample and evaluate generative models of the genspace design space.",
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's choice)")
    sub = p.add_subparsers(dest="command", metavar="COMMAND")

    t = sub.add_parser("train", help="train a model from a YAML recipe", epilog="Any --section.key=value after the config overrides the recipe (e.g. --train.lr=3e-4).", formatter_class=argparse.RawDescriptionHelpFormatter)
    t.add_argument("config", help="YAML recipe (see configs/)")
    t.add_argument("--out", default=None, help="run folder (default: runs/<config name>)")
    t.add_argument("--resume", action="store_true", help="continue from the latest complete checkpoint in --out")
    t.add_argument("--no-progress", action="store_true", help="no progress bar")

    def sampling_args(sp: argparse.ArgumentParser) -> None:
        sp.add_argument("checkpoint", help="a run folder (its latest checkpoint) or a ckpt-* folder")
        sp.add_argument("--method", default=None, help="sampler (see `genspace methods`); default: the run's sample.method")
        sp.add_argument("--nfe", type=int, default=None, help="denoiser calls per sample")
        sp.add_argument("--grid", default=None, help="step grid: karras, log-snr, time-uniform, trailing, flow-shift, optimized")
        sp.add_argument("--n", type=int, default=None, help="number of samples")
        sp.add_argument("--seed", type=int, default=None, help="sample i uses seed*1000003+i")
        sp.add_argument("--class", dest="class_label", type=int, default=None, help="class label (class-conditional models)")
        sp.add_argument("--guidance", type=float, default=None, help="classifier-free guidance scale w (1: none)")
        sp.add_argument("--no-ema", action="store_true", help="use the raw weights instead of the EMA")
        sp.add_argument("--prompt", default=None, help="text models: the text every sequence starts with")
        sp.add_argument("--temperature", type=float, default=None, help="text models: sampling temperature (default 1)")
        sp.add_argument("--order", default=None, help="text models, top-k / semi-ar / block-top-k: which tokens each step keeps "
                        "(low-confidence, random, margin, entropy, dilated; default: the sampler's)")

    s = sub.add_parser("sample", help="draw samples from a checkpoint (NumPy file + figure)")
    sampling_args(s)
    s.add_argument("--out", default=None, help="output folder (default: <run>/samples)")
    s.add_argument("--png", action="store_true", help="images: also write every sample as a PNG into <out>/png/")

    e = sub.add_parser("eval", help="metrics of a checkpoint against held-out data (table + JSON)")
    sampling_args(e)
    e.add_argument("--json", default=None, help="also write the metrics to this JSON file")
    e.add_argument("--bpd", type=int, default=0, metavar="N", help="images: bits/dim of N held-out images through the PF-ODE")
    e.add_argument("--divergence", choices=["exact", "hutchinson"], default="hutchinson", help="divergence estimator for --bpd")
    e.add_argument("--nll", type=int, default=256, metavar="N", help="text models: NLL / NELBO per token of N held-out sequences (0: skip)")
    e.add_argument("--nelbo-points", type=int, default=None, metavar="K", help="text models: stratified t-points per sequence of the NELBO estimate (default: the model's)")
    e.add_argument("--fid", action="store_true", help="images: also the standard Inception FID through torch-fidelity or clean-fid, if the package and its weights are on disk (nothing is downloaded)")
    e.add_argument("--fid-weights", default=None, help="torch-fidelity's Inception weights file (default: its file under $TORCH_HOME/hub/checkpoints)")

    d = sub.add_parser("demo", help="train on a built-in 2-D toy for about a minute; figures + metrics")
    d.add_argument("--out", default="runs/demo", help="run folder")
    d.add_argument("--steps", type=int, default=None, help="training steps (default: the demo recipe's)")
    d.add_argument("--no-progress", action="store_true", help="no progress bar")

    c = sub.add_parser("compare", help="train several model families on the same data; one table + one figure", epilog="Any --section.key=value after the recipe overrides it (e.g. --train.steps=500).", formatter_class=argparse.RawDescriptionHelpFormatter)
    c.add_argument("config", help="comparison recipe (see configs/compare-*.yaml)")
    c.add_argument("--out", default=None, help="output folder (default: runs/<config name>)")
    c.add_argument("--progress", action="store_true", help="progress bars while training")

    sub.add_parser("methods", help="list the samplers")
    return p


def _split_overrides(rest: Sequence[str]) -> list[str]:
    out = []
    for arg in rest:
        if not arg.startswith("--") or "=" not in arg:
            raise UserError(f"unrecognized argument {arg!r}; overrides look like --section.key=value")
        out.append(arg[2:])
    return out


def _sample_config(cfg, args):
    import dataclasses

    changes = {}
    for field_name, value in [("method", args.method), ("nfe", args.nfe), ("grid", args.grid), ("n", args.n), ("seed", args.seed), ("guidance", args.guidance)]:
        if value is not None:
            changes[field_name] = value
    if "nfe" in changes and changes["nfe"] < 1:
        raise UserError(f"--nfe must be >= 1, got {changes['nfe']}")
    if "n" in changes and changes["n"] < 1:
        raise UserError(f"--n must be >= 1, got {changes['n']}")
    return dataclasses.replace(cfg.sample, **changes)


def cmd_train(args, rest) -> int:
    from genspace.experiment import load_config, train

    cfg = load_config(args.config, tuple(_split_overrides(rest)))
    out = Path(args.out or Path("runs") / Path(args.config).stem)
    if out.exists() and any(out.glob("ckpt-*")) and not args.resume:
        raise UserError(f"{out} already holds checkpoints: pass --resume to continue, or choose another --out")
    result = train(cfg, out, resume=args.resume, progress=not args.no_progress)
    _print_row(result["last_row"])
    print(f"trained in {result['seconds']:.1f} s; checkpoint: {result['checkpoint']}")
    return 0


def cmd_sample(args, rest) -> int:
    import numpy as np

    from genspace import figures
    from genspace.experiment import load_run, sample_model

    if rest:
        raise UserError(f"unrecognized arguments: {' '.join(rest)}")
    model, cfg, data = load_run(args.checkpoint, ema=not args.no_ema)
    scfg = _sample_config(cfg, args)
    out = Path(args.out or Path(args.checkpoint) / "samples")
    if data.kind == "tokens":
        return _sample_text(model, cfg, data, scfg, args, out)
    if args.prompt is not None or args.temperature is not None or args.order is not None:
        raise UserError("--prompt, --temperature and --order are for text models")
    out.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    samples = sample_model(model, data.shape, scfg, class_label=args.class_label, progress=True)
    seconds = time.perf_counter() - start
    np.save(out / "samples.npy", samples.numpy())
    if args.png:
        if data.kind != "images":
            raise UserError("--png is for image data; this run's data are points")
        _write_pngs(samples, out / "png", data.n_levels or 256)
    if data.kind == "points" and data.shape == (2,):
        fig = figures.samples_vs_data(samples, data.reference, out / "samples.png", title=f"{scfg.method}, {scfg.nfe} NFE")
    elif data.kind == "images":
        fig = figures.image_grid(samples[:64], out / "samples.png", title=f"{scfg.method}, {scfg.nfe} NFE")
    else:
        fig = None
    print(f"{len(samples)} samples ({scfg.method}, {scfg.nfe} NFE, seed {scfg.seed}) in {seconds:.1f} s -> {out / 'samples.npy'}" + (f", {fig}" if fig else ""))
    return 0


def _text_order(args, scfg) -> dict:
    """{"order": --order} for the samplers that take an unmasking order, {} without --order."""
    if args.order is None:
        return {}
    from genspace.discrete.samplers import ORDERS

    if scfg.method not in ("top-k", "semi-ar", "block-top-k"):
        raise UserError(f"--order is for the top-k, semi-ar and block-top-k samplers, not {scfg.method!r}")
    if args.order not in ORDERS:
        raise UserError(f"unknown --order {args.order!r}; choose one of {list(ORDERS)}")
    return {"order": args.order}


def _sample_text(model, cfg, data, scfg, args, out: Path) -> int:
    """Text models: sequences (with an optional prompt) -> samples.npy (ids) and samples.txt."""
    import numpy as np
    import torch

    from genspace.core.random import StackedGenerator
    from genspace.experiment import sample_seeds

    if args.png or args.class_label is not None:
        raise UserError("--png and --class are for image models; text models take --prompt")
    tok = data.tokenizer
    prompt = None
    if args.prompt is not None:
        if not callable(getattr(tok, "encode", None)):
            raise UserError(f"this run's data come from a synthetic source ({cfg.data.name}) without a tokenizer: --prompt needs text data")
        from genspace.data.text import encode_prompt

        prompt = encode_prompt(tok, args.prompt, data.shape[0] - 1)
    extra = _text_order(args, scfg)
    out.mkdir(parents=True, exist_ok=True)
    seeds = sample_seeds(scfg.seed, scfg.n)
    rows, nfe, seconds = [], 0.0, 0.0
    for start in range(0, scfg.n, scfg.batch_size):
        chunk = seeds[start : start + scfg.batch_size]
        x, info = model.sample_with_info(len(chunk), length=data.shape[0], generator=StackedGenerator(chunk), method=scfg.method, steps=scfg.nfe,
                                         temperature=1.0 if args.temperature is None else args.temperature, prompt=prompt, guidance=scfg.guidance, **extra)
        rows.append(x.cpu())
        nfe, seconds = nfe + info["nfe"], seconds + info["seconds"]
    x = torch.cat(rows)
    np.save(out / "samples.npy", x.numpy())
    texts = [tok.decode(row.tolist()) for row in x]
    (out / "samples.txt").write_text("".join(t.replace("\n", "\\n") + "\n" for t in texts), encoding="utf-8")
    for t in texts[:5]:
        print(t)
    print(f"{len(x)} sequences of {data.shape[0]} tokens ({scfg.method}, {scfg.nfe} steps, {nfe / len(rows):.0f} NFE per batch, seed {scfg.seed}) in {seconds:.1f} s "
          f"({x.numel() / max(seconds, 1e-9):.0f} tokens/s) -> {out / 'samples.txt'}, {out / 'samples.npy'}")
    return 0


def cmd_eval(args, rest) -> int:
    import torch

    from genspace import experiment
    from genspace.experiment import evaluate_samples, image_classifier, load_run, sample_model, save_json

    if rest:
        raise UserError(f"unrecognized arguments: {' '.join(rest)}")
    model, cfg, data = load_run(args.checkpoint, ema=not args.no_ema)
    scfg = _sample_config(cfg, args)
    if data.kind == "tokens":
        if args.bpd or args.fid or args.class_label is not None or args.prompt is not None:
            raise UserError("--bpd, --fid, --class and --prompt do not apply to the evaluation of a text model")
        options = _text_order(args, scfg)
        if args.temperature is not None:
            options["temperature"] = args.temperature
        metrics = experiment.evaluate_tokens(model, data, scfg, n_nll=args.nll, nelbo_points=args.nelbo_points, options=options)
        metrics.pop("_samples")
        print(format_metrics(metrics, title=f"{cfg.name}: {scfg.method}, {scfg.nfe} steps, n={scfg.n}"))
        if args.json:
            save_json({"config": {"method": scfg.method, "steps": scfg.nfe, "n": scfg.n, "seed": scfg.seed, **options}, "metrics": metrics}, args.json)
        return 0
    if args.prompt is not None or args.temperature is not None or args.order is not None:
        raise UserError("--prompt, --temperature and --order are for text models")
    labels, classifier = None, None
    if data.kind == "images":
        classifier = image_classifier(cfg.data, Path(args.checkpoint) / "classifier")
        if getattr(model, "n_classes", None) and args.class_label is None:
            labels = torch.arange(scfg.n) % model.n_classes  # every class in turn: class accuracy
    if args.class_label is not None:
        labels = torch.full((scfg.n,), args.class_label)
    if args.fid and data.kind != "images":
        raise UserError("--fid is for image data; this run's data are points")
    if args.fid:  # fail before sampling when no Inception backend is usable: say what is missing
        from genspace.metrics.image_metrics import _select_backend

        _select_backend(["torch-fidelity", "clean-fid"], args.fid_weights)
    samples = sample_model(model, data.shape, scfg, class_label=labels, progress=True)
    metrics = evaluate_samples(samples, data, classifier=classifier, labels=labels)
    if args.fid:
        from genspace.metrics.image_metrics import fid_with_inception

        real = torch.cat([data.reference, data.heldout])
        metrics["fid_inception"] = fid_with_inception(samples, real, weights_path=args.fid_weights)
    if args.bpd:
        metrics.update(experiment.bits_per_dim_of(model, data, n=args.bpd, divergence=args.divergence, seed=scfg.seed))
    print(format_metrics(metrics, title=f"{cfg.name}: {scfg.method}, {scfg.nfe} NFE, n={len(samples)}"))
    if args.json:
        save_json({"config": {"method": scfg.method, "nfe": scfg.nfe, "n": len(samples), "seed": scfg.seed}, "metrics": metrics}, args.json)
    return 0


DEMO_RECIPE = Path(__file__).with_name("demo.yaml")


def cmd_demo(args, rest) -> int:
    from genspace import figures
    from genspace.experiment import evaluate_samples, load_config, sample_model, save_json, train

    if args.threads is None:
        import torch

        # The demo's MLP is too small to gain from a second thread, and on a machine with any other
        # load two OpenMP threads spin against each other (measured: 7× slower): use one.
        torch.set_num_threads(1)
    overrides = _split_overrides(rest)
    if args.steps is not None:
        overrides.append(f"train.steps={args.steps}")
    cfg = load_config(DEMO_RECIPE, tuple(overrides))
    out = Path(args.out)
    if out.exists() and any(out.glob("ckpt-*")):
        raise UserError(f"{out} already holds a run; remove it or pass --out with a new folder")
    result = train(cfg, out, progress=not args.no_progress)
    model, data = result["model"], result["data"]
    start = time.perf_counter()
    samples = sample_model(model, data.shape, cfg.sample)
    sample_seconds = time.perf_counter() - start
    metrics = evaluate_samples(samples, data)
    fig_dir = out / "figures"
    paths = [
        figures.samples_vs_data(samples, data.reference, fig_dir / "samples.png", title=f"{cfg.name}: {cfg.sample.method}, {cfg.sample.nfe} NFE"),
        figures.loss_curves(out / "metrics.csv", fig_dir / "loss.png"),
    ]
    metrics.update(train_seconds=result["seconds"], sample_seconds=sample_seconds)
    save_json(metrics, out / "metrics.json")
    print(format_metrics(metrics, title=f"demo: {cfg.data.name}, {cfg.train.steps} steps, {cfg.sample.method} {cfg.sample.nfe} NFE"))
    ratio = metrics["energy"] / metrics["energy_floor"] if metrics["energy_floor"] > 0 else float("inf")
    verdict = "matches the data" if ratio <= 3 else "does NOT yet match the data"
    print(f"energy distance / floor = {ratio:.2f} (≤ 3 means the samples match the data): {verdict}")
    print("figures: " + ", ".join(str(p) for p in paths) + f"; metrics: {out / 'metrics.json'}")
    return 0


def cmd_compare(args, rest) -> int:
    from genspace.compare import load_compare_config, run_compare

    cfg = load_compare_config(args.config, tuple(_split_overrides(rest)))
    out = Path(args.out or Path("runs") / Path(args.config).stem)
    if out.exists() and any(out.glob("*/ckpt-*")):
        raise UserError(f"{out} already holds a comparison; remove it or pass --out with a new folder")
    result = run_compare(cfg, out, progress=args.progress, log=lambda msg: print(msg, file=sys.stderr, flush=True))
    print(result["table"])
    print(f"\nfigure: {result['figure']}; table: {out / 'compare.md'}; all numbers: {out / 'compare.json'}")
    return 0


def cmd_methods(args, rest) -> int:
    from genspace.discrete.samplers import token_methods
    from genspace.sampling import methods

    print("continuous samplers (diffusion / flow models):")
    for name, info in sorted(methods().items()):
        kind = "stochastic" if info.stochastic else "deterministic"
        print(f"  {name:18s} {kind}")
    print("token samplers (text models; `block` and `ar` use the KV cache):")
    for name, info in token_methods().items():
        print(f"  {name:18s} {info.description}")
    print(f"  {'block':18s} block diffusion (BD3-LM), block by block with an exact KV cache; --nfe: steps per block")
    print(f"  {'block-first-hitting':18s} block diffusion, first-hitting within blocks (one token per call, exact reveal times)")
    print(f"  {'block-top-k':18s} block diffusion, top-k unmasking within blocks (--nfe steps per block; --order, default random)")
    print(f"  {'ar':18s} autoregressive decoding with a KV cache")
    return 0


def format_metrics(metrics: dict, *, title: str = "") -> str:
    """A small Markdown table of metrics, with the floors beside their metrics."""
    lines = [f"### {title}"] if title else []
    lines += ["| metric | value | floor | ratio |", "|---|---|---|---|"]
    for key, value in metrics.items():
        if key.endswith("_floor") or key.endswith("_se") or key == "logp_data" or key.startswith("kid_std"):
            continue
        floor = metrics.get(f"{key}_floor")
        if key == "logp":
            lines.append(f"| mean log p(samples) (nats) | {value:.4f} ± {metrics.get('logp_se', 0):.4f} | data: {metrics.get('logp_data', float('nan')):.4f} | |")
        elif key == "bpd":
            lines.append(f"| bits/dim ({metrics.get('bpd_estimator')}) | {value:.4f} ± {metrics.get('bpd_se', 0):.4f} | | |")
        elif key in ("bpd_estimator", "bpd_nfe"):
            continue
        elif floor is not None:
            ratio = value / floor if floor > 0 else float("inf")
            lines.append(f"| {key} | {value:.3g} | {floor:.3g} | {ratio:.2f} |")
        else:
            lines.append(f"| {key} | {value:.4g} | | |" if isinstance(value, (int, float)) else f"| {key} | {value} | | |")
    return "\n".join(lines)


def _write_pngs(samples, folder: Path, n_levels: int) -> None:
    """Write (N, C, H, W) samples in [−1, 1] as 8-bit PNGs 000000.png, 000001.png, ..."""
    import numpy as np
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    x = ((samples.clamp(-1, 1) + 1) * 127.5).round().to(dtype=__import__("torch").uint8).numpy()
    for i, img in enumerate(x):
        arr = img[0] if img.shape[0] == 1 else np.transpose(img, (1, 2, 0))
        Image.fromarray(arr).save(folder / f"{i:06d}.png")


def _print_row(row: Optional[dict]) -> None:
    if row:
        print(", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in row.items()))


COMMANDS = {"train": cmd_train, "sample": cmd_sample, "eval": cmd_eval, "demo": cmd_demo, "compare": cmd_compare, "methods": cmd_methods}


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = _parser()
    args, rest = parser.parse_known_args(argv)
    if args.command is None:
        parser.print_help()
        return 2
    if args.threads is not None:
        import torch

        torch.set_num_threads(max(1, args.threads))
    try:
        return COMMANDS[args.command](args, rest)
    except (UserError, ValueError, FileNotFoundError, NotADirectoryError, IsADirectoryError, PermissionError) as err:
        from genspace.train import TrainingDivergedError

        message = " ".join(str(err).split())  # always one line
        print(f"genspace: error: {message}", file=sys.stderr)
        return 3 if isinstance(err, TrainingDivergedError) else 2
    except KeyboardInterrupt:
        print("genspace: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
