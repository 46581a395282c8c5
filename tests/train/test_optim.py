"""train.optimizer, train.lr_schedule and train.grad_clip: AdamW's parameter groups, the cosine
schedule's shape, clipping after gradient masking on optimizer steps only, a bit-identical resume
with all three, and the sparsity contract (zero optimizer state at inactive weights) under AdamW,
eager and compiled."""

from __future__ import annotations

import itertools
import math
from pathlib import Path

import pytest
import torch
from torch import nn

from regrow.train import RunDir, load_config, train
from regrow.train.config import TrainConfig
from regrow.train.distributed import Context
from regrow.train.loop import build, train_step
from regrow.train.optim import build_optimizer, cosine_factor, lr_factor, lr_schedule
from regrow.train.step import Settings
from tests.train.runs import digits_config

ADAMW = ["train.optimizer=adamw", "train.lr=0.003", "train.weight_decay=0.05"]


class TinyLM(nn.Module):
    """An embedding, a norm and two linear layers: what a transformer's groups look like."""

    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Embedding(11, 8)
        self.norm = nn.LayerNorm(8)
        self.proj = nn.Linear(8, 8)
        self.head = nn.Linear(8, 11, bias=False)


def test_adamw_decays_every_matrix_and_nothing_else() -> None:
    config = load_config("quickstart", ["out_dir=x", *ADAMW, "train.betas=[0.8,0.9]"])
    settings = Settings.resolve(config.train, torch.device("cpu"))
    model = TinyLM()
    optimizer = build_optimizer(model, config, settings)
    assert type(optimizer) is torch.optim.AdamW
    decay, plain = optimizer.param_groups
    names = {id(p): n for n, p in model.named_parameters()}
    assert {names[id(p)] for p in decay["params"]} == {"embed.weight", "proj.weight", "head.weight"}
    assert {names[id(p)] for p in plain["params"]} == {"norm.weight", "norm.bias", "proj.bias"}
    assert (decay["weight_decay"], plain["weight_decay"]) == (0.05, 0.0)
    for group in (decay, plain):
        assert group["betas"] == (0.8, 0.9) and group["eps"] == 1e-8 and group["lr"] == 0.003
        assert group["foreach"] is True and not group["fused"]  # auto on the CPU: foreach


def test_sgd_stays_the_default_optimizer() -> None:
    config = load_config("quickstart", ["out_dir=x"])
    optimizer = build_optimizer(
        TinyLM(), config, Settings.resolve(TrainConfig(), torch.device("cpu"))
    )
    assert type(optimizer) is torch.optim.SGD
    assert [g["weight_decay"] for g in optimizer.param_groups] == [1e-4, 0.0]
    assert optimizer.param_groups[0]["nesterov"] and optimizer.param_groups[0]["momentum"] == 0.9


@pytest.mark.parametrize("min_ratio", [0.1, 0.0])
def test_cosine_schedule(min_ratio: float) -> None:
    total, warmup = 100, 10
    f = [cosine_factor(s, total, warmup, min_ratio) for s in range(total + 2)]
    assert f[0] == pytest.approx(0.1)
    assert f[warmup - 1] == pytest.approx(1.0) and f[warmup] == pytest.approx(1.0)
    assert f[:warmup] == sorted(f[:warmup]), "the warm-up rises linearly"
    after = f[warmup:]
    assert all(a >= b for a, b in itertools.pairwise(after)), "monotone after warm-up"
    assert f[total - 1] == pytest.approx(min_ratio, abs=1e-12) and f[total] == f[total - 1]
    middle = warmup + (total - 1 - warmup) / 2
    assert cosine_factor(int(middle), total, warmup, 0.0) == pytest.approx(0.5, abs=0.02)
    assert cosine_factor(0, total, 0, min_ratio) == 1.0  # no warm-up: the peak at once


def test_lr_schedule_follows_the_key() -> None:
    model = nn.Linear(2, 2)
    t = TrainConfig(lr=0.5, lr_schedule="cosine", min_lr_ratio=0.2, warmup_epochs=1.0)
    optimizer = torch.optim.SGD(model.parameters(), lr=t.lr)
    scheduler = lr_schedule(optimizer, t, total_steps=50, steps_per_pass=5)
    lrs = []
    for _ in range(50):
        lrs.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    assert lrs[4] == lrs[5] == pytest.approx(0.5) and lrs[-1] == pytest.approx(0.1)
    # the step schedule, as before
    step = TrainConfig(lr=0.5, lr_milestones=[0.5], lr_gamma=0.1)
    assert lr_factor(25, 50, 0, step.lr_milestones, step.lr_gamma) == pytest.approx(0.1)


def global_norms(tmp_path: Path, monkeypatch, *extra: str) -> tuple[list[float], int, int]:
    """Run 30 batches of an eager RigL run (ΔT=10): the global gradient norm each optimizer step
    sees, how often the gradients were clipped and how many optimizer steps there were."""
    config = digits_config(tmp_path, *ADAMW, *extra)
    run = build(config, Context(), torch.device("cpu"), RunDir(tmp_path))
    norms: list[float] = []

    def seen(optimizer, args, kwargs):
        for name, p in zip(run.sparsifier.names, run.sparsifier.params, strict=True):
            assert torch.all(p.grad[~run.sparsifier.masks[name]] == 0), "masked before clipping"
        grads = [p.grad for g in optimizer.param_groups for p in g["params"] if p.grad is not None]
        norms.append(float(torch.linalg.vector_norm(torch.stack([g.norm() for g in grads]))))

    run.optimizer.register_step_pre_hook(seen)
    clips = 0
    clip = torch.nn.utils.clip_grad_norm_

    def counting(*args, **kwargs):
        nonlocal clips
        clips += 1
        return clip(*args, **kwargs)

    with monkeypatch.context() as patch:
        patch.setattr(torch.nn.utils, "clip_grad_norm_", counting)
        steps = 0
        for i, (x, y) in enumerate(run.loader.batches(0)):
            steps += train_step(run, x, y)[2]
            if i == 29:
                break
    return norms, clips, steps


def test_clipping_bounds_the_global_norm_on_optimizer_steps_only(tmp_path, monkeypatch) -> None:
    clipped, clips, steps = global_norms(tmp_path / "clipped", monkeypatch, "train.grad_clip=0.05")
    assert steps == 27, "RigL spent batches 0, 11 and 22 on mask updates (at steps 0, 10, 20)"
    assert clips == steps == len(clipped), "clipped once per optimizer step, never on an update"
    assert max(clipped) <= 0.05 * (1 + 1e-5)
    free, clips, _ = global_norms(tmp_path / "free", monkeypatch)
    assert clips == 0 and max(free) > 0.05, "without train.grad_clip the norm exceeds it"


def test_adamw_cosine_clip_resume_is_bit_identical(tmp_path: Path) -> None:
    """RigL (ΔT=10), AdamW, cosine after half a pass of warm-up, clipping: stopped at step 31 (after
    the update at 30, past the warm-up) and resumed, it ends as the uninterrupted run."""
    extra = [*ADAMW, "train.lr_schedule=cosine", "train.warmup_epochs=0.5", "train.grad_clip=0.5"]
    whole = train(digits_config(tmp_path / "whole", *extra))
    part = digits_config(tmp_path / "part", *extra, "train.stop_at_step=31")
    assert train(part)["status"] == "stopped"
    resumed = train(part, resume=True)
    a, b = (
        torch.load(tmp_path / n / "checkpoint.pt", weights_only=False) for n in ("whole", "part")
    )
    for key, value in a["model"].items():
        assert torch.equal(value, b["model"][key]), key
    for index, state in a["optimizer"]["state"].items():
        for key, value in state.items():
            assert torch.equal(value, b["optimizer"]["state"][index][key]), (index, key)
    assert a["scheduler"] == b["scheduler"]
    strip = lambda rows: [{k: v for k, v in r.items() if k != "seconds"} for r in rows]  # noqa: E731
    assert strip(RunDir(tmp_path / "whole").metrics()) == strip(RunDir(tmp_path / "part").metrics())
    assert resumed["test_accuracy"] == whole["test_accuracy"]
    lr = [row["lr"] for row in RunDir(tmp_path / "whole").metrics() if "lr" in row]
    assert lr == sorted(lr, reverse=True) and lr[-1] == pytest.approx(0.003 * 0.1)
    for key, value in {"optimizer": "adamw", "lr_schedule": "cosine", "grad_clip": 0.5}.items():
        assert whole[key] == value
    assert whole["betas"] == [0.9, 0.95] and whole["eps"] == 1e-8 and whole["min_lr_ratio"] == 0.1


@pytest.mark.parametrize("compiled", [False, True], ids=["eager", "compiled"])
def test_adamw_state_is_zero_at_every_inactive_weight(tmp_path: Path, compiled: bool) -> None:
    """The sparsity contract under AdamW: RigL at sparsity 0.8 (ΔT=10) over two passes with weight
    decay and clipping; after every eager optimizer step and at the end, ``exp_avg``,
    ``exp_avg_sq`` and the weight are zero wherever the mask is off."""
    extra = [*ADAMW, "sparsity.sparsity=0.8", "train.epochs=2", "train.grad_clip=1.0"]
    config = digits_config(tmp_path, *extra, f"train.compile={str(compiled).lower()}")
    run = build(config, Context(), torch.device("cpu"), RunDir(tmp_path))
    sp, checks = run.sparsifier, []

    def check(*_):
        for name, p in zip(sp.names, sp.params, strict=True):
            off = ~sp.masks[name]
            state = run.optimizer.state[p]
            assert torch.all(p[off] == 0), name
            assert torch.all(state["exp_avg"][off] == 0), f"{name}: exp_avg at inactive weights"
            assert torch.all(state["exp_avg_sq"][off] == 0), f"{name}: exp_avg_sq"
            assert state["exp_avg_sq"][~off].abs().sum() > 0, f"{name}: the active ones move"
        checks.append(sp.step_count)

    run.optimizer.register_step_post_hook(check)
    epoch = 0
    while sp.step_count < run.total_steps:
        for x, y in run.loader.batches(epoch):
            train_step(run, x, y)
            if sp.step_count >= run.total_steps:
                break
        epoch += 1
    check()
    assert sp.last_update_step >= 50 and math.isclose(sp.global_density(), 0.2, abs_tol=0.01)
    assert len(checks) == (2 if compiled else run.total_steps + 1), "eager: after every step"
