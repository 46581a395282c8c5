"""train.compile=true: the non-update step as one compiled graph gives the eager run's masks and
losses for every method, without graph breaks or recompilation after mask updates, and resumes."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

import regrow
from regrow.cli import main
from regrow.sparsity import Sparsifier
from regrow.train import RunDir, load_config, train
from regrow.train.config import TrainConfig
from regrow.train.distributed import Context
from regrow.train.loop import build
from regrow.train.step import CompileError, Settings, TrainStep
from tests.helpers import own_args

#: 3 passes of 44 steps on digits; mask updates every 15 steps for methods with a ΔT.
SHORT = ["train.epochs=3", "train.eval_every=3", "train.checkpoint_every=3", "train.progress=false"]


def overrides(method: str, out_dir: Path, *extra: str) -> list[str]:
    args = own_args(method, delta_t=15, prune_begin=10, prune_end=100)
    return [
        f"sparsity.method={method}",
        *[f"sparsity.args.{k}={v}" for k, v in args.items()],
        *SHORT,
        f"out_dir={out_dir}",
        *extra,
    ]


def recorded_updates(monkeypatch) -> list[tuple[int, list[torch.Tensor]]]:
    """Every mask update of the runs that follow, as (step, masks)."""
    updates: list[tuple[int, list[torch.Tensor]]] = []
    install = Sparsifier._apply_masks

    def recording(self, new, step):
        updates.append((step, [mask.clone() for mask in new]))
        return install(self, new, step)

    monkeypatch.setattr(Sparsifier, "_apply_masks", recording)
    return updates


def losses(run_dir: Path) -> list[float]:
    return [row["train_loss"] for row in RunDir(run_dir).metrics()]


@pytest.mark.parametrize("method", sorted(regrow.METHODS))
def test_compiled_run_matches_the_eager_run(method: str, tmp_path: Path, monkeypatch) -> None:
    """Same seed: the same masks at every update, the same losses up to float rounding (the
    compiled kernels sum in another order), the same step count and FLOPs."""
    updates = recorded_updates(monkeypatch)
    eager = train(load_config("quickstart", overrides(method, tmp_path / "eager")))
    eager_updates = list(updates)
    updates.clear()
    compiled = train(
        load_config("quickstart", overrides(method, tmp_path / "compiled", "train.compile=true"))
    )
    assert [step for step, _ in updates] == [step for step, _ in eager_updates]
    if regrow.METHODS[method].traits.masked and not regrow.METHODS[method].traits.starts_dense:
        assert len(updates) >= (4 if "delta_t" in own_args(method, delta_t=1) else 0)
    for (step, masks), (_, eager_masks) in zip(updates, eager_updates, strict=True):
        for mask, eager_mask in zip(masks, eager_masks, strict=True):
            assert torch.equal(mask, eager_mask), f"the update at step {step}"
    assert losses(tmp_path / "compiled") == pytest.approx(losses(tmp_path / "eager"), rel=1e-4)
    for key in ("steps", "train_flops", "sparsity"):
        assert compiled[key] == eager[key], key
    assert abs(compiled["test_accuracy"] - eager["test_accuracy"]) <= 0.6  # ≤ 2 of 359 images
    settings = RunDir(tmp_path / "compiled").provenance()[0]["settings"]
    assert settings["compile"] is True and settings["compile_mode"] == "default"


@pytest.mark.parametrize("method", sorted(regrow.METHODS))
def test_the_compiled_step_is_one_graph(method: str, tmp_path: Path) -> None:
    """torch._dynamo.explain over the compiled function: one graph, no break (every method)."""
    config = load_config("quickstart", overrides(method, tmp_path, "train.compile=true"))
    run = build(config, Context(), torch.device("cpu"), RunDir(tmp_path))
    batches = iter(run.loader.batches(0))
    while not run.step.ready():  # eager batches: an update at step 0, the first optimizer step
        TrainStep.__call__(run.step, *next(batches))
    x, y = next(batches)
    run.optimizer.zero_grad(set_to_none=True)
    with torch._dynamo.config.patch(trace_autograd_ops=True):
        explanation = torch._dynamo.explain(run.step.step)(x, y)
    assert explanation.graph_break_count == 0, [b.reason for b in explanation.break_reasons]
    assert explanation.graph_count == 1


def test_mask_updates_and_the_lr_schedule_cause_no_recompilation(tmp_path: Path) -> None:
    """RigL with an update every 5 steps (20 updates) and three LR milestones: the step is
    compiled once (a second compile at most, for the first call's guards)."""
    from torch._dynamo.utils import counters

    torch._dynamo.reset()
    counters.clear()
    extra = ["train.compile=true", "sparsity.args.delta_t=5", "train.lr_milestones=[0.3,0.6,0.9]"]
    config = load_config("quickstart", overrides("rigl", tmp_path, *extra))
    summary = train(config)
    updates = RunDir(tmp_path).mask_updates()
    assert summary["steps"] == 132 and len(updates) >= 15
    assert counters["stats"]["unique_graphs"] <= 2, dict(counters["stats"])
    assert sum(counters["recompiles"].values()) <= 1, dict(counters["recompiles"])


def test_compiled_adamw_with_clipping_matches_the_eager_run_without_recompiling(
    tmp_path: Path, monkeypatch
) -> None:
    """train.optimizer=adamw with train.grad_clip and the cosine schedule: the AdamW update and
    the clipping run inside the one graph (PyTorch's Adam arithmetic, capturable form) and give
    the eager run's masks and losses (float rounding apart); the graph is compiled once."""
    from torch._dynamo.utils import counters

    updates = recorded_updates(monkeypatch)
    extra = [
        "train.optimizer=adamw", "train.lr=0.003", "train.weight_decay=0.05",
        "train.grad_clip=0.1", "train.lr_schedule=cosine", "train.warmup_epochs=0.5",
    ]  # fmt: skip
    eager = train(load_config("quickstart", overrides("rigl", tmp_path / "eager", *extra)))
    eager_updates = list(updates)
    updates.clear()
    torch._dynamo.reset()
    counters.clear()
    compiled_config = overrides("rigl", tmp_path / "compiled", *extra, "train.compile=true")
    compiled = train(load_config("quickstart", compiled_config))
    assert 1 <= counters["stats"]["unique_graphs"] <= 2, dict(counters["stats"])
    assert sum(counters["recompiles"].values()) <= 1, dict(counters["recompiles"])
    assert not counters["graph_break"], dict(counters["graph_break"])
    assert [step for step, _ in updates] == [step for step, _ in eager_updates]
    assert len(updates) >= 4
    for (step, masks), (_, eager_masks) in zip(updates, eager_updates, strict=True):
        for mask, eager_mask in zip(masks, eager_masks, strict=True):
            assert torch.equal(mask, eager_mask), f"the update at step {step}"
    assert losses(tmp_path / "compiled") == pytest.approx(losses(tmp_path / "eager"), rel=1e-4)
    assert abs(compiled["test_accuracy"] - eager["test_accuracy"]) <= 0.6
    assert compiled["optimizer"] == "adamw" and compiled["steps"] == eager["steps"]


def test_a_compiled_run_resumes_to_the_uninterrupted_result(tmp_path: Path) -> None:
    """Stopped at step 60 (mid pass 1) and resumed, both compiled: the same losses, masks and
    accuracy as the uninterrupted compiled run."""
    extra = ["train.compile=true"]
    whole = train(load_config("quickstart", overrides("rigl", tmp_path / "whole", *extra)))
    config = load_config(
        "quickstart", overrides("rigl", tmp_path / "part", *extra, "train.stop_at_step=60")
    )
    assert train(config)["status"] == "stopped"
    assert main(["train", "--resume", str(tmp_path / "part")]) == 0
    resumed = RunDir(tmp_path / "part").summary()
    assert losses(tmp_path / "part") == pytest.approx(losses(tmp_path / "whole"), rel=1e-6)
    assert resumed["test_accuracy"] == whole["test_accuracy"]
    masks = [
        torch.load(tmp_path / name / "checkpoint.pt", weights_only=False)["sparsifier"]["masks"]
        for name in ("part", "whole")
    ]
    assert all(torch.equal(masks[0][name], masks[1][name]) for name in masks[1])
    # An eager run's checkpoint resumes compiled too (train.compile may change on resume).
    eager = load_config(
        "quickstart", overrides("rigl", tmp_path / "eager", "train.stop_at_step=60")
    )
    train(eager)
    assert main(["train", "--resume", str(tmp_path / "eager"), "train.compile=true"]) == 0
    assert losses(tmp_path / "eager") == pytest.approx(losses(tmp_path / "whole"), rel=1e-4)


class BranchingRigL(regrow.RigL):
    """Branches in Python on a gradient's value every step: no single graph."""

    name = "branching_rigl"

    def observe_gradients(self, grads):
        if grads[0].norm() > 1e9:
            raise RuntimeError("exploding gradients")


def test_a_step_that_cannot_be_one_graph_is_a_clear_error(tmp_path: Path, capsys) -> None:
    method = f"{__name__}:BranchingRigL"
    extra = ["train.compile=true", "sparsity.args.delta_t=15", f"out_dir={tmp_path}", *SHORT]
    status = main(["train", "--preset", "quickstart", f"sparsity.method={method}", *extra])
    err = capsys.readouterr().err.strip().splitlines()
    assert status == 2
    assert len(err) == 1 and "does not compile into one graph" in err[0], err
    assert "train.compile=false" in err[0]
    eager = main(["train", "--preset", "quickstart", f"sparsity.method={method}",
                  "sparsity.args.delta_t=15", *SHORT, f"out_dir={tmp_path / 'eager'}"])  # fmt: skip
    assert eager == 0


def test_compile_under_ddp_is_refused_before_anything_is_built(tmp_path: Path) -> None:
    config = load_config("quickstart", [f"out_dir={tmp_path}", "train.compile=true"])
    with pytest.raises(CompileError, match="several processes"):
        build(config, Context(rank=0, world_size=2), torch.device("cpu"), RunDir(tmp_path))


@pytest.mark.parametrize(
    ("device", "expected"),
    [
        ("cpu", (False, False, "default", "foreach", False)),
        ("cuda", (True, True, "reduce-overhead", "fused", True)),
    ],
)
def test_per_device_defaults(device: str, expected: tuple) -> None:
    """null/auto resolve to the device's fastest correct settings; explicit values stay."""
    settings = Settings.resolve(TrainConfig(), torch.device(device))
    got = (
        settings.bf16, settings.channels_last, settings.compile_mode,
        settings.sgd_implementation, settings.cudnn_benchmark,
    )  # fmt: skip
    assert got == expected
    fused = {"fused": True, "foreach": False}
    assert settings.optimizer_keywords() == (fused if device == "cuda" else {"foreach": True})
    chosen = TrainConfig(bf16=False, channels_last=False, sgd_implementation="for_loop")
    explicit = Settings.resolve(chosen, torch.device(device))
    assert (explicit.bf16, explicit.channels_last) == (False, False)
    assert explicit.optimizer_keywords() == explicit.sgd_keywords() == {"foreach": False}


def test_settings_are_recorded_in_provenance_and_bad_values_refused(tmp_path: Path, capsys):
    train(load_config("quickstart", overrides("static", tmp_path)))
    row = RunDir(tmp_path).provenance()[0]
    assert row["settings"] == Settings.resolve(TrainConfig(), torch.device("cpu")).as_dict()
    json.dumps(row)
    assert main(["train", "--preset", "quickstart", "train.compile_mode=fast"]) == 2
    err = capsys.readouterr().err
    assert "train.compile_mode='fast' is not allowed" in err and "reduce-overhead" in err
