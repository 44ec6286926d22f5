"""Image benchmark on scikit-learn's 8×8 digits (issue 4).

Three class-conditional models are trained with the shared Trainer, same batch, learning rate,
warm-up, EMA and number of steps:

- ``unet-edm``: EDM (Karras et al. 2022) with the U-Net of configs/digits-edm-cond.yaml,
- ``dit-edm``:  the same recipe with a DiT (Peebles & Xie 2023) of about the same parameter count,
- ``dit-rf``:   rectified flow with SD3's logit-normal t (configs/digits-rf-cond.yaml), same DiT.

During training the Fréchet distance (FD) in the feature space of genspace's digit classifier is
measured on a schedule (guidance w = 1, every class asked in turn, Heun 35 NFE), together with the
CPU time spent in training so far (evaluation excluded; at most 500 samples). Then:

(i)   FD (with its floor: two disjoint real halves of the same size) and class accuracy of the
      U-Net against NFE ∈ {5, 10, 20, 35} for heun, dpmpp-2m, dpmpp-3m, unipc, euler,
      edm-stochastic (EDM Alg. 2 with S_churn = 40, S_min = 0.05, S_max = 50, S_noise = 1.003,
      EDM Table 5 ImageNet-64 settings) and euler-ancestral, with guidance w = 2;
(ii)  bits/dim of held-out digits through the PF-ODE, exact divergence and Hutchinson on the same
      dequantized images (bins of width 2/16 centred on the training grid 2k/16 − 1);
(iii) training CPU time until FD ≤ 3 × floor, U-Net against DiT at equal parameter count;
(iv)  rectified flow against EDM with the same DiT and the same number of steps: FD during
      training and FD / class accuracy at the end for euler {5, 10, 20} and heun 35.

Outputs: Markdown tables on stdout; ``results.json``, one image grid per model
(``grid_<model>.png``, asked classes 0..9 in every row, w = 2, heun 35), ``fd_vs_nfe.png`` and
``fd_vs_cpu.png`` in ``--out``.

    OMP_NUM_THREADS=1 python benchmarks/bench_images.py              # full run (~25 min, one core)
    OMP_NUM_THREADS=1 python benchmarks/bench_images.py --quick      # smoke run (~4 min)
    options: --steps N  --out DIR (default benchmarks/results/images)  --threads T
             --net small|config  --batch B  --n N (samples per metric)  --bpd-n N  --guidance W

``--net small`` (default) shrinks the networks for a CPU budget: U-Net base_channels 16 and DiT
hidden 48 (≈0.2 M parameters each); ``--net config`` keeps the configs' sizes (≈0.75 M, about 4×
slower to train and sample).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import sys
import tempfile
import time
from pathlib import Path

import torch

from genspace import figures
from genspace.config import to_dict
from genspace.core.random import StackedGenerator
from genspace.experiment import (
    bits_per_dim_of,
    build_model,
    evaluate_samples,
    image_classifier,
    load_config,
    load_data,
    sample_seeds,
)
from genspace.nets.utils import param_count
from genspace.sampling import methods
from genspace.train import Trainer

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = ROOT / "configs"

MODELS = {  # name: (config, overrides for --net small, overrides for --net config)
    "unet-edm": ("digits-edm-cond.yaml", ["model.net.base_channels=16"], []),
    "dit-edm": ("digits-edm-cond.yaml", ["model.net.kind=dit", "model.net.hidden=48"], ["model.net.kind=dit"]),
    "dit-rf": ("digits-rf-cond.yaml", ["model.net.hidden=48"], []),
}
SAMPLERS = ["heun", "dpmpp-2m", "dpmpp-3m", "unipc", "euler", "edm-stochastic", "euler-ancestral"]
SAMPLER_OPTIONS = {"edm-stochastic": dict(s_churn=40.0, s_min=0.05, s_max=50.0, s_noise=1.003)}
NFES = [5, 10, 20, 35]
EVAL_METHOD, EVAL_NFE = "heun", 35  # the FD measured during training, and the grids
TARGET = 3.0  # time to quality: FD <= TARGET × floor


def _log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


# ----------------------------------------------------------------------------- sampling / metrics


def balanced_labels(n: int, n_classes: int = 10) -> torch.Tensor:
    """Class i % n_classes for sample i: every class asked equally often."""
    return torch.arange(n) % n_classes


@torch.no_grad()
def draw(model, shape, *, method: str, nfe: int, labels: torch.Tensor, guidance: float, seed: int = 0, batch: int = 1000, **options) -> torch.Tensor:
    """Like experiment.sample_model (one seed per sample), but passing sampler ``options``."""
    n = len(labels)
    seeds = sample_seeds(seed, n)
    model.eval()
    out = []
    for start in range(0, n, batch):
        chunk = seeds[start : start + batch]
        out.append(
            model.sample(
                len(chunk), shape=shape, generator=StackedGenerator(chunk), method=method, nfe=nfe,
                class_labels=labels[start : start + batch], guidance=guidance, **options,
            ).cpu()
        )
    return torch.cat(out)


def used_nfe(method: str, nfe: int) -> int:
    """Denoiser calls the sampler really makes within a budget of ``nfe`` (Heun-type: 2n − 1)."""
    info = methods()[method]
    return info.nfe_for_steps(info.max_steps(nfe))


def measure(model, data, classifier, *, method: str, nfe: int, n: int, guidance: float, seed: int = 0) -> dict:
    labels = balanced_labels(n)
    start = time.perf_counter()
    x = draw(model, data.shape, method=method, nfe=nfe, labels=labels, guidance=guidance, seed=seed, **SAMPLER_OPTIONS.get(method, {}))
    seconds = time.perf_counter() - start
    m = evaluate_samples(x, data, classifier=classifier, labels=labels)
    keep = ("fd", "fd_floor", "kid", "kid_floor", "precision", "recall", "class_accuracy")
    return {**{k: float(m[k]) for k in keep}, "nfe": used_nfe(method, nfe), "sample_seconds": seconds}


# ----------------------------------------------------------------------------- training


def train_with_schedule(name: str, cfg, data, classifier, *, schedule: list[int], n_eval: int, seed: int = 0) -> tuple[torch.nn.Module, list[dict], dict]:
    """Train ``cfg`` with the genspace Trainer; at the steps of ``schedule`` record the FD (w = 1)
    and the CPU / wall time spent in training so far (time inside the evaluation excluded)."""
    model = build_model(cfg, data)
    records: list[dict] = []
    spent = {"cpu": 0.0, "wall": 0.0}  # time inside evaluate()
    steps = set(schedule) | {cfg.train.steps}

    def evaluate(m, step):
        if step not in steps:
            return {}
        c0, w0 = time.process_time(), time.perf_counter()
        row = {"step": step, "train_cpu_s": c0 - cpu0 - spent["cpu"], "train_wall_s": w0 - wall0 - spent["wall"]}
        row.update(measure(m, data, classifier, method=EVAL_METHOD, nfe=EVAL_NFE, n=n_eval, guidance=1.0, seed=seed))
        records.append(row)
        _log(f"  {name} step {step}: fd {row['fd']:.2f} (floor {row['fd_floor']:.2f}), acc {row['class_accuracy']:.3f}, train cpu {row['train_cpu_s']:.0f} s")
        spent["cpu"] += time.process_time() - c0
        spent["wall"] += time.perf_counter() - w0
        return {"fd": row["fd"]}

    with tempfile.TemporaryDirectory() as tmp:
        trainer = Trainer(model, data.train, cfg.train, Path(tmp) / name, evaluate=evaluate, config_dict=to_dict(cfg), progress=False, tensorboard=False)
        cpu0, wall0 = time.process_time(), time.perf_counter()
        last = trainer.fit()
        totals = {"cpu_s": time.process_time() - cpu0 - spent["cpu"], "wall_s": time.perf_counter() - wall0 - spent["wall"], "final_loss": last.get("main/loss")}
        ema = trainer.ema_model
    return ema.eval(), records, totals


def eval_schedule(steps: int) -> list[int]:
    """Every 250 steps up to 1000, then every 500 (every steps/4 when steps < 1000)."""
    if steps < 1000:
        return sorted({max(1, steps * k // 4) for k in range(1, 5)})
    return sorted({s for s in range(250, 1001, 250)} | set(range(1500, steps + 1, 500)) | {steps})


def time_to_target(records: list[dict]) -> dict:
    for r in records:
        if r["fd"] <= TARGET * r["fd_floor"]:
            return {"step": r["step"], "train_cpu_s": r["train_cpu_s"], "train_wall_s": r["train_wall_s"], "fd": r["fd"], "fd_floor": r["fd_floor"]}
    return {}


# ----------------------------------------------------------------------------- bits/dim


def bits_per_dim_section(model, data, *, n: int, rtol: float, n_probes: int) -> list[dict]:
    """experiment.bits_per_dim_of with the exact divergence and with Hutchinson, on the same
    dequantized images (same seed: same dequantization noise)."""
    rows = []
    for label, divergence in [("exact", "exact"), (f"hutchinson ({n_probes} probes)", "hutchinson")]:
        start, cpu = time.perf_counter(), time.process_time()
        r = bits_per_dim_of(model, data, n=n, divergence=divergence, n_probes=n_probes, seed=0, rtol=rtol, atol=rtol)
        r.update({"what": label, "n": n, "rtol": rtol, "seconds": time.perf_counter() - start, "cpu_s": time.process_time() - cpu})
        rows.append(r)
        _log(f"  bits/dim {label}: {r['bpd']:.4f} ± {r['bpd_se']:.4f} ({r['seconds']:.0f} s)")
    return rows


# ----------------------------------------------------------------------------- tables and figures


def _fmt_cell(r: dict) -> str:
    nfe = f" ({r['nfe']})" if r.get("nfe_asked") is not None and r["nfe"] != r["nfe_asked"] else ""
    return f"{r['fd']:.2f} / {100 * r['class_accuracy']:.0f}%{nfe}"


def table_sweep(rows: list[dict], nfes: list[int], title: str) -> str:
    floor = rows[0]["fd_floor"] if rows else float("nan")
    out = [f"### {title}", "", f"FD / class accuracy (FD floor {floor:.2f}; NFE really used in parentheses where it differs)", ""]
    out.append("| method | " + " | ".join(f"NFE {k}" for k in nfes) + " |")
    out.append("|---|" + "---|" * len(nfes))
    for method in dict.fromkeys(r["method"] for r in rows):
        cells = {r["nfe_asked"]: _fmt_cell(r) for r in rows if r["method"] == method}
        out.append(f"| {method} | " + " | ".join(cells.get(k, "") for k in nfes) + " |")
    return "\n".join(out)


def table_bpd(rows: list[dict], name: str) -> str:
    out = [f"### (ii) bits/dim of held-out digits, {name} (17 levels: a uniform density scores log2 17 = {math.log2(17):.3f})", ""]
    out += ["| estimator | images | bits/dim | ODE NFE | rtol=atol | wall s |", "|---|---|---|---|---|---|"]
    for r in rows:
        out.append(f"| {r['what']} | {r['n']} | {r['bpd']:.3f} ± {r['bpd_se']:.3f} | {r['bpd_nfe']:.0f} | {r['rtol']:g} | {r['seconds']:.0f} |")
    return "\n".join(out)


def table_training(runs: dict) -> str:
    names = list(runs)
    out = ["### FD (w = 1, heun 35) during training: FD / train CPU s", ""]
    out.append("| step | " + " | ".join(names) + " |")
    out.append("|---|" + "---|" * len(names))
    steps = sorted({r["step"] for run in runs.values() for r in run["records"]})
    for s in steps:
        cells = []
        for name in names:
            rec = next((r for r in runs[name]["records"] if r["step"] == s), None)
            cells.append(f"{rec['fd']:.2f} / {rec['train_cpu_s']:.0f}" if rec else "")
        out.append(f"| {s} | " + " | ".join(cells) + " |")
    floor = next(iter(runs.values()))["records"][-1]["fd_floor"]
    out.append(f"\nFD floor at this sample size: {floor:.2f}; target {TARGET:g} × floor = {TARGET * floor:.2f}.")
    return "\n".join(out)


def table_time_to_target(runs: dict) -> str:
    out = ["### (iii) training CPU time to FD ≤ 3 × floor (same batch, lr, EMA, steps)", ""]
    out += ["| model | parameters | step | train CPU s | train wall s | FD at target | final FD | CPU s / step |", "|---|---|---|---|---|---|---|---|"]
    for name, run in runs.items():
        t = run["time_to_target"]
        final = run["records"][-1]
        per_step = run["totals"]["cpu_s"] / run["steps"]
        if t:
            out.append(f"| {name} | {run['params']:,} | {t['step']} | {t['train_cpu_s']:.0f} | {t['train_wall_s']:.0f} | {t['fd']:.2f} | {final['fd']:.2f} | {per_step:.3f} |")
        else:
            out.append(f"| {name} | {run['params']:,} | not reached in {run['steps']} | > {run['totals']['cpu_s']:.0f} | > {run['totals']['wall_s']:.0f} | | {final['fd']:.2f} | {per_step:.3f} |")
    return "\n".join(out)


def fd_vs_cpu_figure(runs: dict, path: Path) -> Path:
    from matplotlib.figure import Figure

    fig = Figure(figsize=(5.5, 4.0), dpi=110)
    ax = fig.subplots()
    for name, run in runs.items():
        recs = run["records"]
        ax.plot([r["train_cpu_s"] for r in recs], [r["fd"] for r in recs], marker="o", label=f"{name} ({run['params'] / 1e3:.0f}k)")
    floor = next(iter(runs.values()))["records"][-1]["fd_floor"]
    ax.axhline(floor, color="grey", ls="--", label="floor")
    ax.axhline(TARGET * floor, color="grey", ls=":", label=f"{TARGET:g} × floor")
    ax.set_yscale("log"), ax.set_xlabel("training CPU seconds"), ax.set_ylabel("FD (classifier features)")
    ax.legend(fontsize=8)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path)
    return path


# ----------------------------------------------------------------------------- main


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="smoke run: 300 steps, 200 samples, NFE 5 and 10, bits/dim of 4 images")
    p.add_argument("--steps", type=int, default=None, help="training steps of every model (default 3000; quick 300)")
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "images"), help="output folder")
    p.add_argument("--threads", type=int, default=1, help="torch intra-op threads")
    p.add_argument("--net", choices=["small", "config"], default="small", help="network sizes (see module doc)")
    p.add_argument("--batch", type=int, default=64, help="batch size of every model")
    p.add_argument("--n", type=int, default=None, help="samples per metric (default 898 = one real half; quick 200)")
    p.add_argument("--bpd-n", type=int, default=None, help="images for bits/dim (default 64; quick 4)")
    p.add_argument("--bpd-rtol", type=float, default=1e-2, help="ODE rtol = atol for bits/dim")
    p.add_argument("--guidance", type=float, default=2.0, help="classifier-free guidance w of the sampler sweep")
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    torch.set_num_threads(max(1, args.threads))
    steps = args.steps or (300 if args.quick else 3000)
    n = args.n or (200 if args.quick else 898)
    bpd_n = args.bpd_n or (4 if args.quick else 64)
    nfes = [5, 10] if args.quick else NFES
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    t_start = time.perf_counter()

    common = [f"train.steps={steps}", f"train.batch_size={args.batch}", "train.lr=1e-3", "train.warmup_steps=200",
              "train.ckpt_every=null", f"train.eval_every={max(1, min(250, steps // 4))}", f"train.log_every={max(1, min(200, steps // 4))}"]
    cfgs = {}
    for name, (path, small, config) in MODELS.items():
        cfgs[name] = load_config(CONFIGS / path, tuple(common + (small if args.net == "small" else config)))
    data = load_data(cfgs["unet-edm"].data)
    classifier = image_classifier(cfgs["unet-edm"].data, out / "classifier")
    schedule = eval_schedule(steps)

    # ---- training (all three), FD on a schedule
    runs = {}
    for name, cfg in cfgs.items():
        _log(f"training {name} for {steps} steps")
        model, records, totals = train_with_schedule(name, cfg, data, classifier, schedule=schedule, n_eval=min(n, 500))
        runs[name] = {"model": model, "records": records, "totals": totals, "params": param_count(model), "steps": steps,
                      "config": to_dict(cfg), "time_to_target": time_to_target(records)}
        labels = balanced_labels(64)
        grid = draw(model, data.shape, method=EVAL_METHOD, nfe=EVAL_NFE, labels=labels, guidance=args.guidance, seed=1)
        figures.image_grid(grid, out / f"grid_{name}.png", nrow=8, labels=labels, title=f"{name}: {steps} steps, w={args.guidance:g}, {EVAL_METHOD} {EVAL_NFE} NFE")

    # ---- (i) samplers × NFE on the U-Net, guidance w
    sweep = []
    unet = runs["unet-edm"]["model"]
    for method in SAMPLERS:
        for k in nfes:
            r = measure(unet, data, classifier, method=method, nfe=k, n=n, guidance=args.guidance)
            r.update(method=method, nfe_asked=k)
            sweep.append(r)
            _log(f"  unet-edm {method:16s} NFE {k:2d}: fd {r['fd']:.2f} acc {r['class_accuracy']:.3f}")

    # ---- (iv) rectified flow vs EDM with the same DiT
    flow_vs_edm = []
    for name in ("dit-edm", "dit-rf"):
        for method, k in [("euler", 5), ("euler", 10), ("euler", 20), ("heun", 35)]:
            if args.quick and k > 10 and method == "euler":
                continue
            r = measure(runs[name]["model"], data, classifier, method=method, nfe=k, n=n, guidance=args.guidance)
            r.update(model=name, method=method, nfe_asked=k)
            flow_vs_edm.append(r)
            _log(f"  {name} {method} NFE {k}: fd {r['fd']:.2f} acc {r['class_accuracy']:.3f}")

    # ---- (ii) bits/dim of the U-Net
    bpd_rows = bits_per_dim_section(unet, data, n=bpd_n, rtol=args.bpd_rtol, n_probes=16)

    # ---- report
    fig_nfe = figures.error_vs_nfe({m: {r["nfe"]: r["fd"] for r in sweep if r["method"] == m} for m in SAMPLERS}, out / "fd_vs_nfe.png",
                                   ylabel="FD (classifier features)", floor=sweep[0]["fd_floor"], title=f"unet-edm, w={args.guidance:g}")
    fig_cpu = fd_vs_cpu_figure(runs, out / "fd_vs_cpu.png")
    command = "OMP_NUM_THREADS=%d python benchmarks/bench_images.py %s" % (args.threads, " ".join(sys.argv[1:]) if argv is None else " ".join(argv))
    print(f"# genspace image benchmark: 8×8 digits\n\ncommand: `{command}`  (steps {steps}, batch {args.batch}, {n} samples per metric, net {args.net}, torch threads {args.threads})\n")
    print(table_sweep(sweep, nfes, f"(i) unet-edm ({runs['unet-edm']['params']:,} parameters, {steps} steps): samplers against NFE, guidance w = {args.guidance:g}"))
    best = max(sweep, key=lambda r: r["class_accuracy"])
    print(f"\nbest class accuracy: {100 * best['class_accuracy']:.1f}% ({best['method']}, NFE {best['nfe']}); target ≥ 90%.\n")
    print(table_bpd(bpd_rows, "unet-edm") + "\n")
    print(table_time_to_target(runs) + "\n")
    print(table_training(runs) + "\n")
    fe_cells = {}
    for r in flow_vs_edm:
        fe_cells.setdefault((r["method"], r["nfe_asked"]), {})[r["model"]] = _fmt_cell(r)
    print(f"### (iv) rectified flow vs EDM, same DiT ({runs['dit-rf']['params']:,} parameters), {steps} steps each, w = {args.guidance:g}: FD / class accuracy\n")
    print("| sampler | NFE | dit-edm | dit-rf |\n|---|---|---|---|")
    for (method, k), cells in fe_cells.items():
        print(f"| {method} | {k} | {cells.get('dit-edm', '')} | {cells.get('dit-rf', '')} |")
    total = time.perf_counter() - t_start
    print(f"\nfigures: {', '.join(str(out / f'grid_{m}.png') for m in runs)}, {fig_nfe}, {fig_cpu}; total wall time {total / 60:.1f} min")

    results = {
        "command": command, "steps": steps, "batch": args.batch, "n": n, "net": args.net, "threads": args.threads, "guidance": args.guidance,
        "models": {name: {k: v for k, v in run.items() if k != "model"} for name, run in runs.items()},
        "sampler_sweep": sweep, "flow_vs_edm": flow_vs_edm, "bits_per_dim": bpd_rows, "total_wall_s": total,
    }
    (out / "results.json").write_text(json.dumps(results, indent=2, default=float) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
