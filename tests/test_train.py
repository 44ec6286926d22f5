"""genspace.train: exact resume after SIGKILL, atomic checkpoints, pickle refusal, divergence stop,
DDP = single process, EMA closed forms, warm-up, clipping and phase schedules.

The tiny models below are also imported by the subprocess scripts of the kill and DDP tests.
"""

from __future__ import annotations

import os
import pickle
import shutil
import signal
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch
from torch import nn

from genspace.core.random import randn_like
from genspace.train import (
    EMA,
    EMAConfig,
    EpochSampler,
    Phase,
    TrainConfig,
    Trainer,
    TrainingDivergedError,
    autocast_context,
    checkpoint_path,
    decay_beta,
    halflife_beta,
    latest_checkpoint,
    load_checkpoint,
    load_weights,
    read_csv,
    save_checkpoint,
    warmup_lr,
)

TESTS_DIR = Path(__file__).resolve().parent
SUBPROCESS_TIMEOUT = 180


# ----------------------------------------------------------------------------- tiny models


def _randn(shape, seed: int) -> torch.Tensor:
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed))


class LinearRegression(nn.Module):
    """y ≈ x·w + b with squared error; optional input noise from the trainer's generator."""

    def __init__(self, dim: int = 3, noise: float = 0.0, nan_at: int | None = None) -> None:
        super().__init__()
        self.w = nn.Parameter(_randn((dim,), 0))
        self.b = nn.Parameter(torch.zeros(()))
        self.noise, self.nan_at, self.calls = noise, nan_at, 0

    def losses(self, batch, *, phase="main", generator=None):
        self.calls += 1
        x, y = batch
        if self.noise:
            x = x + self.noise * randn_like(x, generator)
        r = x @ self.w + self.b - y  # (B,)
        loss = r**2
        if self.calls == self.nan_at:
            loss = loss * torch.where(torch.arange(len(r)) == 1, float("nan"), 1.0)
        return {"loss": loss, "_abs_err": r.abs().detach()}


class TwoPhaseToy(nn.Module):
    """GAN-shaped model: a critic and a generator, each with its own phase; records the calls."""

    def __init__(self, critic_repeat: int = 3, sleep: float = 0.0) -> None:
        super().__init__()
        self.critic = nn.Linear(2, 1)
        self.generator = nn.Linear(2, 2)
        with torch.no_grad():
            for i, p in enumerate(self.parameters()):
                p.copy_(0.5 * _randn(p.shape, 10 + i))
        self.critic_repeat, self.sleep, self.calls = critic_repeat, sleep, []

    def phases(self):
        return [
            Phase("critic", prefix="critic.", repeat=self.critic_repeat, betas=(0.0, 0.9)),
            Phase("generator", prefix="generator.", lr=3e-3),
        ]

    def losses(self, batch, *, phase="main", generator=None):
        self.calls.append(phase)
        if self.sleep:
            time.sleep(self.sleep)
        real = batch[0]
        z = randn_like(real, generator)
        if phase == "critic":
            fake = self.generator(z).detach()
            c_real, c_fake = self.critic(real)[:, 0], self.critic(fake)[:, 0]
            return {"wasserstein": c_fake - c_real, "penalty": 0.5 * (c_real**2 + c_fake**2)}
        return {"generator": -self.critic(self.generator(z))[:, 0]}


def _regression_data(n: int = 40, dim: int = 3):
    x = _randn((n, dim), 1)
    y = x @ torch.tensor([1.0, -2.0, 0.5])[:dim] + 0.3
    return x, y


def _fit(out, model, data, **config) -> Trainer:
    config.setdefault("ema", EMAConfig(kind="decay", decay=0.9))
    trainer = Trainer(model, data, TrainConfig(**config), out, progress=False, tensorboard=False)
    trainer.fit()
    return trainer


def make_resume_run(out, sleep: float = 0.0) -> Trainer:
    """The run of the kill test: two phases, loss noise, EMA, warm-up, clipping, epoch crossings."""
    config = TrainConfig(
        steps=30, batch_size=12, lr=1e-2, warmup_steps=5, grad_clip=1.0, seed=3,
        ema=EMAConfig(kind="halflife", halflife_kimg=0.05, rampup=0.1),
        log_every=3, ckpt_every=4, keep_last=2,
    )  # fmt: skip
    data = (_randn((40, 2), 2),)  # 40 examples, batch 12: batches run across epochs
    return Trainer(TwoPhaseToy(critic_repeat=2, sleep=sleep), data, config, out, progress=False, tensorboard=False)


def make_ddp_run(out) -> Trainer:
    config = TrainConfig(
        steps=8, batch_size=8, lr=0.3, seed=5, log_every=1, ckpt_every=None, warmup_steps=2,
        ema=EMAConfig(kind="decay", decay=0.8),
    )  # fmt: skip
    return Trainer(LinearRegression(), _regression_data(), config, out, progress=False, tensorboard=False)


def _assert_states_equal(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k


def _script(tmp_path: Path, body: str) -> Path:
    path = tmp_path / "script.py"
    path.write_text(f"import sys\nsys.path.insert(0, {str(TESTS_DIR)!r})\n" + textwrap.dedent(body))
    return path


def _env(**extra) -> dict:
    env = dict(os.environ, OMP_NUM_THREADS="1", **extra)
    return env


# ----------------------------------------------------------------------------- (a) kill -9 + resume


def test_sigkill_then_resume_is_bit_identical(tmp_path):
    script = _script(
        tmp_path,
        """
        import time
        from pathlib import Path
        from genspace.train import latest_checkpoint
        from test_train import make_resume_run
        mode, out = sys.argv[1], sys.argv[2]
        trainer = make_resume_run(out, sleep=0.01 if mode == "slow" else 0.0)
        if mode == "resume":  # started early to overlap the start-up; waits for the kill
            while not Path(out + ".go").exists():
                time.sleep(0.005)
            print("resuming from", latest_checkpoint(out).name, flush=True)
        trainer.fit(resume=mode == "resume")
        """,
    )
    killed = tmp_path / "killed"
    proc = subprocess.Popen([sys.executable, str(script), "slow", str(killed)], env=_env())
    resumer = subprocess.Popen(
        [sys.executable, str(script), "resume", str(killed)],
        env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        ref = make_resume_run(tmp_path / "ref")  # meanwhile: the uninterrupted run, in this process
        ref.fit()
        deadline = time.monotonic() + SUBPROCESS_TIMEOUT
        while latest_checkpoint(killed) is None:
            assert proc.poll() is None, "the training subprocess ended before its first checkpoint"
            assert time.monotonic() < deadline, "no checkpoint appeared"
            time.sleep(0.005)
        proc.send_signal(signal.SIGKILL)
        assert proc.wait(timeout=SUBPROCESS_TIMEOUT) == -signal.SIGKILL
        assert not checkpoint_path(killed, 30).exists(), "killed too late to test anything"
        Path(f"{killed}.go").touch()  # now resume in the new process
        out, err = resumer.communicate(timeout=SUBPROCESS_TIMEOUT)
    finally:
        for p in (proc, resumer):
            if p.poll() is None:
                p.kill()
                p.wait()
    assert resumer.returncode == 0, err
    assert "resuming from ckpt-" in out

    a, b = load_checkpoint(checkpoint_path(tmp_path / "ref", 30)), load_checkpoint(checkpoint_path(killed, 30))
    _assert_states_equal(a.model_state, b.model_state)
    _assert_states_equal(a.ema_state, b.ema_state)
    for name in ("critic", "generator"):
        sa, sb = (c.trainer_state["optimizers"][name]["state"] for c in (a, b))
        for i in sa:
            _assert_states_equal(sa[i], sb[i])
    # the loss curve of the resumed CSV is the uninterrupted one (rows after the checkpoint dropped)
    rows_a, rows_b = read_csv(tmp_path / "ref" / "metrics.csv"), read_csv(killed / "metrics.csv")
    assert [r["step"] for r in rows_b] == [r["step"] for r in rows_a] == [3, 6, 9, 12, 15, 18, 21, 24, 27, 30]
    for ra, rb in zip(rows_a, rows_b):
        for k in ("critic/wasserstein", "critic/penalty", "generator/generator", "lr/critic"):
            assert ra[k] == rb[k], (ra["step"], k)


# ----------------------------------------------------------------------------- (b) cut-off checkpoints


def test_checkpoints_cut_off_mid_write_are_never_picked(tmp_path):
    data = _regression_data()
    out = tmp_path / "run"
    _fit(out, LinearRegression(noise=0.1), data, steps=6, batch_size=8, ckpt_every=3, keep_last=5)
    good = checkpoint_path(out, 6)
    # a .tmp folder with a partial file, a folder without COMPLETE, one with a truncated file,
    # one with a garbage marker: all look newer than step 6
    tmp = out / ".tmp-ckpt-00000009"
    tmp.mkdir()
    (tmp / "model.safetensors").write_bytes((good / "model.safetensors").read_bytes()[:20])
    no_marker = shutil.copytree(good, checkpoint_path(out, 12))
    (no_marker / "COMPLETE").unlink()
    truncated = shutil.copytree(good, checkpoint_path(out, 15))
    blob = (truncated / "ema.safetensors").read_bytes()
    (truncated / "ema.safetensors").write_bytes(blob[: len(blob) // 2])
    garbage = shutil.copytree(good, checkpoint_path(out, 18))
    (garbage / "COMPLETE").write_text("{not json")
    assert latest_checkpoint(out) == good
    for bad in (tmp, no_marker, truncated, garbage):
        with pytest.raises(ValueError):
            load_checkpoint(bad)
    # a flipped byte keeps the size but fails the checksum
    flipped = shutil.copytree(good, tmp_path / "flipped")
    blob = bytearray((flipped / "model.safetensors").read_bytes())
    blob[-1] ^= 0xFF
    (flipped / "model.safetensors").write_bytes(bytes(blob))
    with pytest.raises(ValueError, match="checksum"):
        load_checkpoint(flipped)

    # resuming continues from step 6 and matches an uninterrupted run of 9 steps
    resumed = Trainer(
        LinearRegression(noise=0.1), data,
        TrainConfig(steps=9, batch_size=8, ckpt_every=3, keep_last=5, ema=EMAConfig(kind="decay", decay=0.9)),
        out, progress=False, tensorboard=False,
    )  # fmt: skip
    resumed.fit(resume=True)
    assert not tmp.exists()
    ref = _fit(tmp_path / "ref", LinearRegression(noise=0.1), data, steps=9, batch_size=8, ckpt_every=3)
    _assert_states_equal(ref.model.state_dict(), resumed.model.state_dict())
    _assert_states_equal(ref.ema.module.state_dict(), resumed.ema.module.state_dict())
    assert latest_checkpoint(out) == checkpoint_path(out, 9)


def test_existing_checkpoints_need_resume(tmp_path):
    data = _regression_data()
    _fit(tmp_path, LinearRegression(), data, steps=2, batch_size=4)
    with pytest.raises(ValueError, match="resume=True"):
        _fit(tmp_path, LinearRegression(), data, steps=4, batch_size=4)


# ----------------------------------------------------------------------------- (c) pickle refused


class _Payload:
    """Unpickling this creates the file ``path`` (what a malicious checkpoint could do)."""

    def __init__(self, path: str) -> None:
        self.path = path

    def __reduce__(self):
        return (open, (self.path, "w"))


def test_pickle_checkpoints_are_refused_without_side_effects(tmp_path):
    witness = tmp_path / "pwned"
    pickle.loads(pickle.dumps(_Payload(str(tmp_path / "proof"))))  # the payload works when unpickled
    assert (tmp_path / "proof").exists()

    out = tmp_path / "run"
    folder = checkpoint_path(out, 5)
    folder.mkdir(parents=True)
    payload = pickle.dumps(_Payload(str(witness)))
    for name in ("model.pt", "trainer_state.pkl"):
        (folder / name).write_bytes(payload)
    (folder / "COMPLETE").write_text(
        '{"format": "genspace.checkpoint", "version": 1, "files": {"model.safetensors": {"size": 1}}}'
    )
    with pytest.raises(ValueError, match="pickle checkpoints are refused"):
        load_checkpoint(folder)
    with pytest.raises(ValueError, match="pickle checkpoints are refused"):
        load_checkpoint(folder / "model.pt")
    # as the newest checkpoint of a run: resuming refuses it too (the marker makes it look complete)
    (folder / "model.safetensors").write_bytes(b"x")
    assert latest_checkpoint(out) == folder
    trainer = Trainer(LinearRegression(), _regression_data(), TrainConfig(steps=2, batch_size=4), out,
                      progress=False, tensorboard=False)  # fmt: skip
    with pytest.raises(ValueError, match="pickle checkpoints are refused"):
        trainer.fit(resume=True)
    assert not witness.exists()


# ----------------------------------------------------------------------------- (d) divergence


def test_nan_loss_stops_naming_the_step_and_keeps_the_last_good_checkpoint(tmp_path):
    data = _regression_data()
    out = tmp_path / "run"
    with pytest.raises(TrainingDivergedError, match=r"at step 8\b") as info:
        _fit(out, LinearRegression(noise=0.1, nan_at=8), data, steps=20, batch_size=8,
             ckpt_every=3, log_every=5, keep_last=1)  # fmt: skip
    assert isinstance(info.value, ValueError)
    good = checkpoint_path(out, 6)
    assert "ckpt-00000006" in str(info.value)
    assert latest_checkpoint(out) == good and not checkpoint_path(out, 9).exists()
    ckpt = load_checkpoint(good)  # intact: its checksums verify
    assert ckpt.step == 6
    clean = _fit(tmp_path / "clean", LinearRegression(noise=0.1), data, steps=6, batch_size=8, ckpt_every=3)
    _assert_states_equal(ckpt.model_state, clean.model.state_dict())
    _assert_states_equal(ckpt.ema_state, clean.ema.module.state_dict())


def test_nan_on_a_checkpoint_step_is_caught_before_saving(tmp_path):
    with pytest.raises(TrainingDivergedError, match=r"at step 3\b.*none \(no checkpoint yet\)"):
        _fit(tmp_path, LinearRegression(nan_at=3), _regression_data(), steps=6, batch_size=8, ckpt_every=3)
    assert latest_checkpoint(tmp_path) is None


# ----------------------------------------------------------------------------- (e) DDP


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_ddp_two_processes_match_one_process(tmp_path):
    script = _script(
        tmp_path,
        """
        from genspace.train import Trainer, TrainConfig
        from genspace.train.distributed import init_from_env, destroy, world_size
        from test_train import make_ddp_run, TwoPhaseToy, _randn
        env = init_from_env()
        assert env.world_size == world_size() == 2
        make_ddp_run(sys.argv[1]).fit()
        # phases leave parameters unused in DDP's forward: must run without hanging
        Trainer(TwoPhaseToy(critic_repeat=2), (_randn((16, 2), 0),), TrainConfig(steps=3, batch_size=4),
                sys.argv[2], progress=False, tensorboard=False).fit()
        destroy()
        """,
    )
    port = _free_port()
    out, out_gan = tmp_path / "ddp", tmp_path / "ddp_gan"
    procs = [
        subprocess.Popen(
            [sys.executable, str(script), str(out), str(out_gan)],
            env=_env(RANK=str(r), LOCAL_RANK=str(r), WORLD_SIZE="2", LOCAL_WORLD_SIZE="2",
                     MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port)),
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )  # fmt: skip
        for r in range(2)
    ]
    try:
        single = make_ddp_run(tmp_path / "single")  # meanwhile: one process, same global batch
        single.fit()
        results = [p.communicate(timeout=SUBPROCESS_TIMEOUT) for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    for p, (_, err) in zip(procs, results):
        assert p.returncode == 0, err

    rows_1, rows_2 = read_csv(tmp_path / "single" / "metrics.csv"), read_csv(out / "metrics.csv")
    assert [r["step"] for r in rows_2] == [r["step"] for r in rows_1] == list(range(1, 9))
    loss_1 = torch.tensor([r["main/loss"] for r in rows_1], dtype=torch.float64)
    loss_2 = torch.tensor([r["main/loss"] for r in rows_2], dtype=torch.float64)
    assert loss_1[-1] < 0.5 * loss_1[0]  # it trains
    torch.testing.assert_close(loss_2, loss_1, rtol=1e-5, atol=0.0)
    ddp = load_checkpoint(checkpoint_path(out, 8))
    for k, v in single.model.state_dict().items():
        torch.testing.assert_close(ddp.model_state[k], v, rtol=1e-5, atol=1e-7)
    for k, v in single.ema.module.state_dict().items():
        torch.testing.assert_close(ddp.ema_state[k], v, rtol=1e-5, atol=1e-7)
    assert len(ddp.trainer_state["noise_rng"]) == 2  # one loss-noise generator state per rank
    assert latest_checkpoint(out_gan) == checkpoint_path(out_gan, 3)


# ----------------------------------------------------------------------------- (f) EMA


class _Weights(nn.Module):
    def __init__(self, value: torch.Tensor) -> None:
        super().__init__()
        self.p = nn.Parameter(value.clone())
        self.register_buffer("count", torch.zeros((), dtype=torch.int64))


def test_constant_decay_ema_is_the_geometric_sum():
    beta, T = 0.8, 12
    thetas = _randn((T + 1, 4), 7).double()  # θ_0 (the start), θ_1..θ_T
    model = _Weights(thetas[0])
    ema = EMA(model, EMAConfig(kind="decay", decay=beta, warmup=False), batch_size=1)
    for t in range(1, T + 1):
        with torch.no_grad():
            model.p.copy_(thetas[t])
            model.count.fill_(t)
        ema.update()
    expected = beta**T * thetas[0] + sum((1 - beta) * beta ** (T - t) * thetas[t] for t in range(1, T + 1))
    torch.testing.assert_close(ema.module.p, expected, rtol=1e-12, atol=1e-12)
    assert ema.module.count.item() == T  # buffers are copied
    assert ema.updates == T and not ema.module.p.requires_grad


def test_decay_warmup_values():
    assert decay_beta(0, 0.999) == pytest.approx(0.1)  # (1+0)/(10+0)
    assert decay_beta(90, 0.999) == pytest.approx(91 / 100)
    assert decay_beta(10**6, 0.999) == 0.999
    assert decay_beta(0, 0.999, warmup=False) == 0.999


def test_edm_halflife_ema_halves_the_old_weight_after_one_halflife():
    batch, halflife_kimg = 100, 0.5  # half-life 500 samples = 5 updates
    model = _Weights(torch.ones(3, dtype=torch.float64))
    ema = EMA(model, EMAConfig(kind="halflife", halflife_kimg=halflife_kimg, rampup=None), batch_size=batch)
    with torch.no_grad():
        model.p.zero_()  # from now on only new values (0) enter: the EMA is the weight of the old one
    for _ in range(5):
        ema.update()
    torch.testing.assert_close(ema.module.p, torch.full((3,), 0.5, dtype=torch.float64), rtol=1e-12, atol=0)
    for _ in range(5):
        ema.update()
    torch.testing.assert_close(ema.module.p, torch.full((3,), 0.25, dtype=torch.float64), rtol=1e-12, atol=0)


def test_edm_rampup_caps_the_halflife_by_the_samples_seen():
    # after update t, (t+1)·B samples were seen; half-life min(h, r·(t+1)·B)
    assert halflife_beta(0, 100, 0.5, rampup=0.05) == pytest.approx(0.5 ** (100 / 5.0))
    assert halflife_beta(9, 100, 0.5, rampup=0.05) == pytest.approx(0.5 ** (100 / 50.0))
    assert halflife_beta(10**4, 100, 0.5, rampup=0.05) == pytest.approx(0.5 ** (100 / 500.0))


# ----------------------------------------------------------------------------- (g) warm-up, clipping


def test_warmup_lr_and_gradient_clipping(tmp_path):
    x, y = _regression_data()
    model = LinearRegression()
    config = TrainConfig(steps=6, batch_size=8, lr=0.1, warmup_steps=4, grad_clip=0.5, log_every=1,
                         ema=EMAConfig(kind="off"))  # fmt: skip
    trainer = Trainer(model, (100.0 * x, 100.0 * y), config, tmp_path, progress=False, tensorboard=False)
    seen = []

    def record(opt, args, kwargs):
        norm = torch.linalg.vector_norm(torch.stack([p.grad.norm() for p in model.parameters()]))
        seen.append((opt.param_groups[0]["lr"], norm.item()))

    trainer.optimizers["main"].register_step_pre_hook(record)
    trainer.fit()
    lrs = [lr for lr, _ in seen]
    assert lrs == pytest.approx([0.025, 0.05, 0.075, 0.1, 0.1, 0.1])
    assert [warmup_lr(0.1, k, 4) for k in range(1, 7)] == pytest.approx(lrs)
    rows = read_csv(tmp_path / "metrics.csv")
    assert [r["lr/main"] for r in rows] == pytest.approx(lrs)
    for (_, norm), row in zip(seen, rows):
        assert row["main/grad_norm"] > 0.5  # the raw norm (logged) is large ...
        assert norm == pytest.approx(0.5, rel=1e-5)  # ... and the optimizer sees it clipped to 0.5


def test_max_seconds_stops_early_with_a_final_checkpoint(tmp_path):
    x = _randn((64, 2), 3)
    model = TwoPhaseToy(critic_repeat=1, sleep=0.01)  # ≥ 20 ms per step: 1000 steps would take 20 s
    config = TrainConfig(steps=1000, batch_size=8, log_every=5, ckpt_every=None, max_seconds=0.3, ema=EMAConfig(kind="off"))
    trainer = Trainer(model, (x,), config, tmp_path, progress=False, tensorboard=False)
    start = time.perf_counter()
    trainer.fit()
    assert time.perf_counter() - start < 5.0
    ckpt = latest_checkpoint(tmp_path)
    steps = int(ckpt.name.split("-")[1])
    assert 1 <= steps < 1000 and len(model.calls) == 2 * steps  # stopped after a whole step
    rows = read_csv(tmp_path / "metrics.csv")
    assert rows[-1]["step"] == steps  # the last row is the final step, as at `steps`
    with pytest.raises(ValueError, match="max_seconds"):
        TrainConfig(max_seconds=0)


# ----------------------------------------------------------------------------- (h) phases


def test_each_phase_steps_its_optimizer_repeat_times(tmp_path):
    model = TwoPhaseToy(critic_repeat=3)
    trainer = Trainer(model, (_randn((20, 2), 4),), TrainConfig(steps=4, batch_size=5, ema=EMAConfig(kind="off")),
                      tmp_path, progress=False, tensorboard=False)  # fmt: skip
    steps = {"critic": 0, "generator": 0}
    for name, opt in trainer.optimizers.items():
        opt.register_step_post_hook(lambda o, a, k, name=name: steps.__setitem__(name, steps[name] + 1))
    trainer.fit()
    assert model.calls == (["critic"] * 3 + ["generator"]) * 4
    assert steps == {"critic": 12, "generator": 4}
    critic_opt, gen_opt = trainer.optimizers["critic"], trainer.optimizers["generator"]
    assert {id(p) for p in critic_opt.param_groups[0]["params"]} == {id(p) for p in model.critic.parameters()}
    assert {id(p) for p in gen_opt.param_groups[0]["params"]} == {id(p) for p in model.generator.parameters()}
    assert critic_opt.param_groups[0]["betas"] == (0.0, 0.9) and gen_opt.param_groups[0]["lr"] == 3e-3
    for p in model.critic.parameters():
        assert critic_opt.state[p]["step"].item() == 12
    rows = read_csv(tmp_path / "metrics.csv")
    assert {"critic/wasserstein", "critic/penalty", "generator/generator"} <= rows[-1].keys()


# ----------------------------------------------------------------------------- the rest


def test_epoch_sampler_permutes_each_epoch_and_restores_exactly():
    sampler = EpochSampler(10, 7, seed=0)
    drawn = torch.cat([sampler.next() for _ in range(10)])  # 70 indices = 7 epochs
    for e in range(7):
        assert sorted(drawn[10 * e : 10 * (e + 1)].tolist()) == list(range(10))
    state = sampler.state_dict()
    ahead = [sampler.next() for _ in range(5)]
    other = EpochSampler(10, 7, seed=123)
    other.load_state_dict(state)
    for a in ahead:
        assert torch.equal(other.next(), a)


def test_evaluate_figures_tensorboard_and_the_csv(tmp_path):
    evals, figs = [], []
    config = TrainConfig(steps=5, batch_size=4, log_every=2, eval_every=2, sample_every=3, ckpt_every=None)
    trainer = Trainer(
        LinearRegression(), _regression_data(), config, tmp_path,
        evaluate=lambda m, step: evals.append((m, step)) or {"mse": float(step)},
        make_figures=lambda m, step, out: figs.append((m, step, out)),
        config_dict={"model": "linear"}, progress=False,
    )  # fmt: skip
    trainer.fit()
    assert [s for _, s in evals] == [2, 4, 5] and [s for _, s, _ in figs] == [3, 5]
    assert all(m is trainer.ema.module for m, _ in evals) and figs[0][2] == tmp_path
    rows = read_csv(tmp_path / "metrics.csv")
    assert [r["step"] for r in rows] == [2, 4, 5]
    assert [r["eval/mse"] for r in rows] == [2.0, 4.0, 5.0]
    assert list((tmp_path / "tb").glob("events.out.tfevents.*"))
    assert load_checkpoint(checkpoint_path(tmp_path, 5)).config == {"model": "linear"}
    assert (tmp_path / "config.json").exists()


class _DtypeProbe(LinearRegression):
    def losses(self, batch, *, phase="main", generator=None):
        self.matmul_dtype = (batch[0] @ self.w).dtype  # what autocast made of a matmul
        return super().losses(batch, phase=phase, generator=generator)


@pytest.mark.parametrize(
    "precision, dtype",
    [("auto", torch.float32), ("fp32", torch.float32), ("bf16", torch.bfloat16), ("fp16", torch.float16)],
)
def test_precision_sets_the_autocast_dtype_on_cpu(tmp_path, precision, dtype):
    model = _DtypeProbe()
    trainer = _fit(tmp_path, model, _regression_data(), steps=3, batch_size=8, precision=precision)
    assert model.matmul_dtype == dtype
    assert all(p.dtype == torch.float32 and torch.isfinite(p).all() for p in trainer.model.parameters())
    assert bool(trainer.scalers) == (precision == "fp16")  # a GradScaler only for fp16


def test_precision_auto_is_fp32_on_cpu_and_bad_values_are_named():
    ctx, scaler = autocast_context("auto", torch.device("cpu"))
    assert not isinstance(ctx, torch.autocast) and not scaler
    with pytest.raises(ValueError, match="auto.*fp8"):
        TrainConfig(precision="fp8")
    with pytest.raises(ValueError, match="batch_size"):
        TrainConfig(batch_size=0)
    with pytest.raises(ValueError, match="kind"):
        EMAConfig(kind="polyak")


def test_bad_models_and_data_give_clear_errors(tmp_path):
    class Reduced(LinearRegression):
        def losses(self, batch, *, phase="main", generator=None):
            return {"loss": super().losses(batch)["loss"].mean()}

    with pytest.raises(ValueError, match="unreduced"):
        _fit(tmp_path / "a", Reduced(), _regression_data(), steps=1, batch_size=4)
    with pytest.raises(ValueError, match="selects no parameters"):
        Phase("critic", prefix="disc.").select(TwoPhaseToy())
    toy = TwoPhaseToy()  # a prefix, a string in params and a callable select the same parameters
    ids = [[id(p) for p in Phase("c", **kw).select(toy)]
           for kw in ({"prefix": "critic."}, {"params": "critic."}, {"params": lambda m: m.critic.parameters()})]
    assert ids[0] == ids[1] == ids[2] == [id(p) for p in toy.critic.parameters()]
    with pytest.raises(ValueError, match="first dimension"):
        Trainer(LinearRegression(), (torch.zeros(4, 3), torch.zeros(5)), TrainConfig(), tmp_path / "b")


def test_load_weights_names_missing_and_unexpected_keys(tmp_path):
    path = save_checkpoint(tmp_path / "ckpt-00000001", {"w": torch.zeros(3), "extra": torch.ones(1)})
    state = load_checkpoint(path).model_state
    with pytest.raises(ValueError, match=r"missing keys \['b'\].*unexpected keys \['extra'\]"):
        load_weights(LinearRegression(), state)
    with pytest.raises(ValueError, match="wrong shape"):
        load_weights(LinearRegression(), {"w": torch.zeros(4), "b": torch.zeros(())})
