"""Every model family on the same data at the same parameter budget (issue 6).

``genspace compare`` runs the recipes ``configs/compare-toys.yaml`` (on each of the 2-D toys
``--toys``, default 8gaussians, moons, checkerboard) and ``configs/compare-digits.yaml``
(scikit-learn's 8×8 digits): every family (diffusion EDM, rectified flow, MADE, PixelCNN (digits
only), TransformerAR, VAE, WGAN-GP, a normalizing flow (spline on toys, Glow on digits), FFJORD,
VQ-VAE and VQGAN with their priors) is trained by the same trainer for the same number of steps
with the same batch, learning rate, warm-up and EMA, its width searched so that its parameter
count is the closest to the recipe's budget (50 k on toys, 150 k on digits). The two VQ models
train their code prior as a second stage of the same number of steps.

One Markdown table per data set is printed: held-out NLL labelled exact / bound / estimate / n/a
(points: nats of the density; digits: bits/dim of the integer levels, see
:func:`genspace.compare.heldout_nll`), energy distance / its floor (two independent real sets of
the same size), for digits the Fréchet distance / floor and precision/recall in the feature
space of genspace's digit classifier and the fraction of samples that copy a training image
(digits has no held-out split: its NLL is scored on training images), the wall seconds of the
training loop (both stages for VQ) and of drawing the samples, and the parameter count. ``--out`` receives ``results.json`` (every
row, with its config and all metrics), ``results.md`` (the tables) and the side-by-side sample
figures ``samples-<data>.png``.

    OMP_NUM_THREADS=1 python benchmarks/bench_families.py            # full run (~60 min on one core)
    OMP_NUM_THREADS=1 python benchmarks/bench_families.py --quick    # smoke run (~2 min)
    options: --toys a,b,c  --no-toys  --no-digits  --toy-steps N  --digits-steps N
             --out DIR (default benchmarks/results/families)  --runs DIR (keep the run folders)
             --threads T  --render RESULTS_JSON (re-print the tables of a saved run)
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import shutil
import sys
import tempfile
import time
from pathlib import Path

import torch

from genspace.compare import CompareConfig, load_compare_config, run_compare

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = ROOT / "configs"
TOYS = ("8gaussians", "moons", "checkerboard")
FULL = {"toy_steps": 1500, "digits_steps": 1500}
QUICK = {"toy_steps": 40, "digits_steps": 20, "toy_n": 500, "toy_nll_n": 100, "digits_n": 300, "digits_nll_n": 40}


def with_steps(cfg: CompareConfig, steps: int) -> CompareConfig:
    """``cfg`` with ``train.steps = steps`` and every two-stage entry's prior as long."""
    entries = []
    for e in cfg.entries:
        if hasattr(e.model, "prior"):
            e = dataclasses.replace(e, model=dataclasses.replace(e.model, prior=dataclasses.replace(e.model.prior, steps=steps)))
        entries.append(e)
    return dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, steps=steps), entries=entries)


def recipe(name: str, steps: int, *, data: str | None = None, n: int | None = None, nll_n: int | None = None) -> CompareConfig:
    cfg = with_steps(load_compare_config(CONFIGS / f"{name}.yaml"), steps)
    if data is not None:
        cfg = dataclasses.replace(cfg, name=f"{cfg.name} ({data})", data=dataclasses.replace(cfg.data, name=data))
    if n is not None:
        cfg = dataclasses.replace(cfg, sample=dataclasses.replace(cfg.sample, n=n))
    if nll_n is not None:
        cfg = dataclasses.replace(cfg, nll_n=nll_n)
    return cfg


# ----------------------------------------------------------------------------- tables


def _nll_cell(r: dict) -> str:
    nll = r["nll"]
    if nll["kind"] == "n/a":
        return "n/a"
    note = ", ".join(t for t in nll.get("note", "").split(", ") if t and t != "training images")  # said in the header
    label = nll["kind"] + (f", {note}" if note else "")
    if not math.isfinite(nll["value"]):
        return f"∞ ({label})"
    return f"{nll['value']:.3f} ± {nll['stderr']:.3f} ({label})"


def _ratio(m: dict, key: str) -> str:
    if key not in m or not m.get(key + "_floor"):
        return "n/a"
    return f"{m[key] / m[key + '_floor']:.2f}"


def _steps(r: dict) -> str:
    return f"{r['steps']}+{r['prior_steps']}" if r.get("prior_steps") else str(r["steps"])


def null_band(data_cfg, floor: float, n: int, draws: int = 20) -> tuple[float, float]:
    """5 % and 95 % quantiles of energy / floor for a perfect sampler: ``draws`` fresh sets of
    ``n`` points of the toy itself, scored against the same reference set as the models."""
    from genspace.data import make_toy
    from genspace.experiment import load_data
    from genspace.metrics import energy_distance

    ref = load_data(data_cfg).reference[:n].float()
    ratios = torch.tensor([
        float(energy_distance(make_toy(data_cfg.name, n, generator=torch.Generator().manual_seed(10_000 + i)).float(), ref, unbiased=False)) / floor
        for i in range(draws)
    ])
    return float(ratios.quantile(0.05)), float(ratios.quantile(0.95))


def table(title: str, rows: list[dict], images: bool, unit: str, *, entropy: float | None = None, band: tuple[float, float] | None = None) -> str:
    """One Markdown table: a row per model, the ratios to the floors, NLL with its label."""
    on_train = any("training images" in r.get("nll", {}).get("note", "") for r in rows)
    head = ["model", "family", "params", "steps", f"NLL ({unit}{', training images' if on_train else ''})", "energy / floor"]
    if images:
        head += ["FD / floor", "precision", "recall", "copies"]
    head += ["train s", "sample s"]
    lines = [f"#### {title}", "", "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        if r.get("status", "ok") != "ok":
            cells = [r["label"], r["family"], f"{r['params']:,}", str(r["steps"]), r["status"].split(":")[0].upper()]
            cells += ["—"] * (len(head) - len(cells) - 2) + [f"{r.get('train_seconds', float('nan')):.0f}", "—"]
            lines.append("| " + " | ".join(cells) + " |")
            continue
        m = r["metrics"]
        cells = [r["label"], r["family"], f"{r['params']:,}", _steps(r), _nll_cell(r), _ratio(m, "energy")]
        if images:
            cells += [_ratio(m, "fd"), f"{m.get('precision', float('nan')):.2f}", f"{m.get('recall', float('nan')):.2f}", f"{m.get('copies', float('nan')):.2f}"]
        cells += [f"{r['train_seconds']:.1f}", f"{r['sample_seconds']:.1f}"]
        lines.append("| " + " | ".join(cells) + " |")
    if on_train:
        lines += ["", "The data set has no held-out split: the NLL is scored on training images (memorization lowers it) and the "
                  "floors' real sets are training images too. copies = fraction of samples equal to a training image (rounded to the levels)."]
    if band is not None:
        lines += ["", f"A perfect sampler (fresh draws of the toy) scores energy / floor between {band[0]:.2f} and {band[1]:.2f} "
                  "(5–95 % of 20 draws): the floor is one noisy draw, and ratios in that band cannot be told from the data."]
    if entropy is not None:
        lines += ["", f"The data's own density gives NLL = {entropy:.3f} nats on the same held-out points (the entropy: no model's expected NLL can be lower)."]
    return "\n".join(lines)


# ----------------------------------------------------------------------------- main


def run(cfg: CompareConfig, work: Path, out: Path, tag: str) -> dict:
    start = time.perf_counter()
    res = run_compare(cfg, work / tag, log=lambda msg: print(f"  {msg}", file=sys.stderr, flush=True))
    seconds = time.perf_counter() - start
    shutil.copyfile(res["figure"], out / f"samples-{tag}.png")
    data = res["data"]
    entropy = None
    if data.log_prob is not None:
        entropy = float(-data.log_prob(data.heldout[: cfg.nll_n]).mean())
    images = data.kind == "images"
    band = None
    ok = [r for r in res["rows"] if r.get("status") == "ok"]
    if not images and ok:
        n = min(cfg.sample.n, len(data.reference), len(data.heldout))
        band = null_band(cfg.data, ok[0]["metrics"]["energy_floor"], n)
    title = f"{cfg.data.name}: {cfg.params:,} parameters, {cfg.train.steps} steps of batch {cfg.train.batch_size}"
    md = table(title, res["rows"], images, "bits/dim" if images else "nats", entropy=entropy, band=band)
    print(md + "\n", flush=True)
    return {"rows": res["rows"], "table": md, "compare_table": res["table"], "seconds": seconds, "entropy": entropy, "energy_band": band, "config": dataclasses.asdict(cfg)}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="smoke run: one toy, a few steps, fewer samples")
    p.add_argument("--toys", default=",".join(TOYS), help="comma-separated 2-D toys")
    p.add_argument("--no-toys", action="store_true")
    p.add_argument("--no-digits", action="store_true")
    p.add_argument("--toy-steps", type=int, default=None)
    p.add_argument("--digits-steps", type=int, default=None)
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "families"))
    p.add_argument("--runs", default=None, help="folder for the run folders (default: a temporary one, removed)")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--render", default=None, metavar="RESULTS_JSON", help="only re-print the tables of a saved results.json (rewrites results.md beside it)")
    args = p.parse_args(argv)
    if args.render:
        return render(Path(args.render))
    torch.set_num_threads(args.threads)  # a benchmark's entry point, as the CLI
    s = QUICK if args.quick else FULL
    toy_steps = args.toy_steps or s["toy_steps"]
    digits_steps = args.digits_steps or s["digits_steps"]
    toys = [] if args.no_toys else (args.toys.split(",")[:1] if args.quick else args.toys.split(","))
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    tmp = None if args.runs else tempfile.TemporaryDirectory(prefix="bench-families-")
    work = Path(args.runs) if args.runs else Path(tmp.name)
    started = time.perf_counter()
    results = {
        "setup": {
            "command": "python benchmarks/bench_families.py" + (" --quick" if args.quick else ""),
            "toy_steps": toy_steps,
            "digits_steps": digits_steps,
            "threads": args.threads,
            "torch": torch.__version__,
        },
        "datasets": {},
    }
    try:
        for toy in toys:
            cfg = recipe("compare-toys", toy_steps, data=toy, n=s.get("toy_n"), nll_n=s.get("toy_nll_n"))
            print(f"== {toy}: {len(cfg.entries)} models", file=sys.stderr, flush=True)
            results["datasets"][toy] = run(cfg, work, out, toy)
            _save(results, out, started)
        if not args.no_digits:
            cfg = recipe("compare-digits", digits_steps, n=s.get("digits_n"), nll_n=s.get("digits_nll_n"))
            print(f"== digits: {len(cfg.entries)} models", file=sys.stderr, flush=True)
            results["datasets"]["digits"] = run(cfg, work, out, "digits")
            _save(results, out, started)
    finally:
        if tmp is not None:
            tmp.cleanup()
    print(f"wall time {results['setup']['wall_seconds'] / 60:.1f} min; results in {out}")
    return 0


def render(path: Path) -> int:
    """Re-render the tables of a saved ``results.json`` (with the perfect-sampler band)."""
    from genspace.experiment import DataConfig

    results = json.loads(path.read_text())
    for name, d in results["datasets"].items():
        cfg = d["config"]
        images = name == "digits" or any("fd" in r.get("metrics", {}) for r in d["rows"])
        ok = [r for r in d["rows"] if r.get("status") == "ok"]
        band = None
        if not images and ok:
            data_cfg = DataConfig(**cfg["data"])
            band = null_band(data_cfg, ok[0]["metrics"]["energy_floor"], min(cfg["sample"]["n"], data_cfg.n_eval))
        title = f"{cfg['data']['name']}: {cfg['params']:,} parameters, {cfg['train']['steps']} steps of batch {cfg['train']['batch_size']}"
        d["table"] = table(title, d["rows"], images, "bits/dim" if images else "nats", entropy=d.get("entropy"), band=band)
        d["energy_band"] = band
        print(d["table"] + "\n")
    path.write_text(json.dumps(results, indent=2, default=float) + "\n")
    _write_md(results, path.parent)
    return 0


KIND_MARK = {"exact": "", "bound": " (b)", "estimate": " (est)"}


def summary(results: dict) -> str:
    """One table of every model over every data set: NLL (exact unless marked b / est) and the
    sample metric over its floor (energy distance on toys, Fréchet distance on digits), the mean
    training seconds on the toys, and the digits' training and sampling seconds."""
    datasets = results["datasets"]
    toys = [k for k in datasets if k != "digits"]
    labels: list[str] = []
    rows: dict[tuple[str, str], dict] = {}
    for name, d in datasets.items():
        for r in d["rows"]:
            if r["label"] not in labels:
                labels.append(r["label"])
            rows[(name, r["label"])] = r

    def nll(r) -> str:
        if r is None:
            return "—"
        if r.get("status", "ok") != "ok":
            return r["status"].split(":")[0]
        n = r["nll"]
        if n["kind"] == "n/a":
            return "n/a"
        if not math.isfinite(n["value"]):
            return "∞" + KIND_MARK[n["kind"]]
        return f"{n['value']:.2f}{KIND_MARK[n['kind']]}"

    def ratio(r, key) -> str:
        return "—" if r is None or r.get("status", "ok") != "ok" else _ratio(r["metrics"], key)

    head = ["model"]
    for t in toys:
        head += [f"{t} NLL", "E / floor"]
    if "digits" in datasets:
        head += ["digits bits/dim", "FD / floor"]
    head += ["train s (toys, mean)"] if toys else []
    head += ["train s (digits)", "sample s (digits)"] if "digits" in datasets else []
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for label in labels:
        cells = [label]
        for t in toys:
            r = rows.get((t, label))
            cells += [nll(r), ratio(r, "energy")]
        if "digits" in datasets:
            r = rows.get(("digits", label))
            cells += [nll(r), ratio(r, "fd")]
        if toys:
            secs = [rows[(t, label)]["train_seconds"] for t in toys if (t, label) in rows]
            cells.append(f"{sum(secs) / len(secs):.0f}" if secs else "—")
        if "digits" in datasets:
            r = rows.get(("digits", label))
            cells += ["—", "—"] if r is None else [f"{r['train_seconds']:.0f}", f"{r.get('sample_seconds', float('nan')):.1f}"]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _write_md(results: dict, out: Path) -> None:
    md = [f"Command: `{results['setup']['command']}` (OMP_NUM_THREADS={results['setup']['threads']}); "
          f"wall time {results['setup']['wall_seconds'] / 60:.1f} min.", ""]
    md += ["#### All data sets", "", summary(results), "",
           "NLL: nats per point on the toys, bits/dim of the 17 levels on digits (scored on training images); "
           "exact unless marked (b) bound or (est) stochastic estimate; n/a: the family has no likelihood. "
           "E / floor: energy distance over the floor of two real sets; FD / floor: Fréchet distance in the "
           "digit classifier's features over that of two real halves.", ""]
    md += [d["table"] + "\n" for d in results["datasets"].values()]
    (out / "results.md").write_text("\n".join(md))


def _save(results: dict, out: Path, started: float) -> None:
    results["setup"]["wall_seconds"] = time.perf_counter() - started
    (out / "results.json").write_text(json.dumps(results, indent=2, default=float) + "\n")
    _write_md(results, out)


if __name__ == "__main__":
    sys.exit(main())
