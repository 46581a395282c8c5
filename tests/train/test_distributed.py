"""Data-parallel training on 2 CPU processes (gloo): RigL's semantics survive DDP (SPEC §9)."""

from __future__ import annotations

import json
import multiprocessing
import os
import subprocess
import sys
import traceback
from pathlib import Path

import pytest
import torch
from torch import nn

import regrow
from regrow.train import RunDir, load_config, train
from tests.helpers import MODELS, batch, own_args

COMMON = [
    "train.epochs=2", "sparsity.sparsity=0.8", "train.device=cpu", "train.eval_every=1",
]  # fmt: skip


def method_overrides(method: str) -> list[str]:
    """``sparsity.method`` and, for methods that have it, mask updates every 10 steps."""
    args = [f"sparsity.args.{k}={v}" for k, v in own_args(method, delta_t=10).items()]
    return [f"sparsity.method={method}", *args]


def torchrun_regrow_train(*args: str) -> subprocess.CompletedProcess:
    """``torchrun --nproc_per_node=2 -m regrow train ARGS`` on the CPU (gloo)."""
    command = [
        sys.executable, "-m", "torch.distributed.run", "--standalone", "--nnodes=1",
        "--nproc_per_node=2", "-m", "regrow", "train", *args,
    ]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run(command, capture_output=True, text=True, timeout=240, env=env)


def torchrun(out_dir: Path, *overrides: str) -> subprocess.CompletedProcess:
    return torchrun_regrow_train("--preset", "quickstart", f"out_dir={out_dir}", *overrides)


@pytest.fixture(scope="module")
def uninterrupted_ddp(tmp_path_factory):
    """method → the directory of its uninterrupted run on 2 processes × 16 (made once)."""
    made: dict[str, Path] = {}

    def run(method: str) -> Path:
        if method not in made:
            out = tmp_path_factory.mktemp(f"ddp_{method}") / "run"
            result = torchrun(out, *COMMON, "train.batch_size=16", *method_overrides(method))
            assert result.returncode == 0, result.stderr[-3000:]
            made[method] = out
        return made[method]

    return run


@pytest.mark.parametrize("method", ["static", "rigl"])
def test_two_processes_match_one_process_with_the_same_global_batch(
    tmp_path: Path, method: str, uninterrupted_ddp
) -> None:
    ddp_dir = uninterrupted_ddp(method)
    single = load_config(
        "quickstart",
        [
            *COMMON,
            "train.batch_size=32",
            *method_overrides(method),
            f"out_dir={tmp_path / 'one'}",
        ],
    )
    train(single)

    ddp = torch.load(ddp_dir / "checkpoint.pt", weights_only=False)
    one = torch.load(tmp_path / "one" / "checkpoint.pt", weights_only=False)
    assert ddp["sparsifier"]["step_count"] == one["sparsifier"]["step_count"] == 88
    if method == "rigl":
        assert ddp["sparsifier"]["last_update_step"] == 60  # updates at 0, 10, …, 60 (T_end 66)
    for name, mask in one["sparsifier"]["masks"].items():
        assert torch.equal(ddp["sparsifier"]["masks"][name], mask), name
    for name, value in one["model"].items():
        assert torch.allclose(ddp["model"][name].float(), value.float(), atol=1e-5), name
    summary = json.loads((ddp_dir / "summary.json").read_text())
    assert summary["world_size"] == 2 and summary["global_batch"] == 32
    rows = RunDir(ddp_dir).metrics()
    # Rank 0 alone writes; RigL's update batches spill into a third pass over the data.
    assert len(rows) == (3 if method == "rigl" else 2)
    assert summary["test_accuracy"] == pytest.approx(rows[-1]["test_accuracy"])
    updates = [row["step"] for row in RunDir(ddp_dir).mask_updates()]  # once, not per rank
    assert updates == ([0, 10, 20, 30, 40, 50, 60] if method == "rigl" else [])
    assert summary["test_accuracy"] > 20  # learned (chance is 10%)


def run_two_ranks(worker, *args, timeout: float = 120) -> None:
    """``worker(rank, *args)`` in two spawned processes; both must exit 0."""
    context = multiprocessing.get_context("spawn")
    processes = [context.Process(target=worker, args=(rank, *args)) for rank in range(2)]
    for process in processes:
        process.start()
    for process in processes:
        process.join(timeout=timeout)
        assert process.exitcode == 0


def _diverging_worker(rank: int, init_file: str, result_file: str, automatic: bool) -> None:
    import torch.distributed as dist

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=2)
    try:
        model = MODELS["mlp"][0]()
        optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
        sp = regrow.RigL(model, optimizer, sparsity=0.8, total_steps=100, delta_t=10)
        if rank == 1:
            sp.masks["2.weight"].view(-1)[:3] ^= True  # flip three entries on one rank only
        if automatic:
            x, y = batch("mlp", 0)
            nn.functional.cross_entropy(model(x), y).backward()
            sp.step()  # the RigL update at step 0 ends with the cross-rank check
        else:
            sp.verify_masks_across_ranks("in the test")
        outcome = "no error"
    except RuntimeError as error:
        outcome = str(error)
    except Exception:
        outcome = traceback.format_exc()
    Path(f"{result_file}.{rank}").write_text(outcome)
    # Leave without gloo's teardown: after a collective that raised on both ranks, its C++
    # threads abort the process at exit now and then ("terminate called without an active
    # exception"), which says nothing about what this test checks (the outcome written above).
    os._exit(0)


@pytest.mark.parametrize("automatic", [False, True])
def test_a_mask_diverged_on_one_rank_is_detected(tmp_path: Path, automatic: bool) -> None:
    run_two_ranks(_diverging_worker, str(tmp_path / "init"), str(tmp_path / "result"), automatic)
    for rank in range(2):
        outcome = (tmp_path / f"result.{rank}").read_text()
        assert "masks differ across ranks" in outcome, outcome
        assert "'2.weight'" in outcome and "'4.weight'" not in outcome


def train_metrics(run_dir: Path) -> list[tuple[int, int, float, float]]:
    """(epoch, step, train_loss, train_accuracy) of every row of ``metrics.jsonl``."""
    rows = RunDir(run_dir).metrics()
    return [(r["epoch"], r["step"], r["train_loss"], r["train_accuracy"]) for r in rows]


def assert_same_train_metrics(resumed: Path, uninterrupted: Path, samples: int = 0) -> None:
    """Per pass, the same steps, the same loss (up to float32 summation order) and the same
    accuracy (up to ``samples`` predictions of the 1,408 a pass: 1 where the models differ in
    rounding, across world sizes)."""
    got, expected = train_metrics(resumed), train_metrics(uninterrupted)
    assert [row[:2] for row in got] == [row[:2] for row in expected]
    for (epoch, _, loss, accuracy), (_, _, loss_0, accuracy_0) in zip(got, expected, strict=True):
        assert loss == pytest.approx(loss_0, rel=1e-6), f"train_loss of pass {epoch}"
        assert abs(accuracy - accuracy_0) <= 100 * samples / 1408, f"train_accuracy, pass {epoch}"


def test_a_stop_under_ddp_resumes_on_two_processes_and_on_one_with_the_same_metrics(
    tmp_path: Path, uninterrupted_ddp
) -> None:
    """Stopped at step 30 of pass 0 (44 steps a pass) on 2 processes × 16, the run directory is
    copied; one copy resumes on 2 processes, the other on 1 process × 32. Both report pass 0's
    train_loss/train_accuracy (and every later pass's) as the uninterrupted run does: the
    checkpoint holds the pass's sums over every rank. A checkpoint from 2 processes resumes on
    1 (same global batch), matching the uninterrupted 1-process run."""
    overrides = [*COMMON, *method_overrides("rigl")]
    result = torchrun(tmp_path / "run", *overrides, "train.batch_size=16", "train.stop_at_step=30")
    assert result.returncode == 0, result.stderr[-3000:]
    assert "stopped (stop_at_step=30)" in result.stderr
    assert [row[0] for row in train_metrics(tmp_path / "run")] == []  # mid pass 0
    subprocess.run(["cp", "-a", str(tmp_path / "run"), str(tmp_path / "on2")], check=True)
    from regrow.cli import main

    # The same world size: 2 processes, the copy resumed (it writes into the copy only).
    result = torchrun_regrow_train("--resume", str(tmp_path / "on2"))
    assert result.returncode == 0, result.stderr[-3000:]
    assert_same_train_metrics(tmp_path / "on2", uninterrupted_ddp("rigl"))
    resumed_on2 = torch.load(tmp_path / "on2" / "checkpoint.pt", weights_only=False)
    uninterrupted = torch.load(uninterrupted_ddp("rigl") / "checkpoint.pt", weights_only=False)
    for name, mask in uninterrupted["sparsifier"]["masks"].items():
        assert torch.equal(resumed_on2["sparsifier"]["masks"][name], mask), name

    # 1 process × 32, the original.
    assert main(["train", "--resume", str(tmp_path / "run"), "train.batch_size=32"]) == 0
    assert main(["train", "--resume", str(tmp_path / "run"), "seed=3"]) == 2  # not overridable
    start, resume = RunDir(tmp_path / "run").provenance()  # one row each, the first kept
    assert (start["event"], start["world_size"], start["step"]) == ("start", 2, 0)
    assert (resume["event"], resume["world_size"], resume["step"]) == ("resume", 1, 30)
    reference = load_config(
        "quickstart", [*overrides, "train.batch_size=32", f"out_dir={tmp_path / 'one'}"]
    )
    train(reference)
    assert_same_train_metrics(tmp_path / "run", uninterrupted_ddp("rigl"), samples=1)
    assert_same_train_metrics(tmp_path / "run", tmp_path / "one", samples=1)
    resumed = torch.load(tmp_path / "run" / "checkpoint.pt", weights_only=False)
    one = torch.load(tmp_path / "one" / "checkpoint.pt", weights_only=False)
    for name, mask in one["sparsifier"]["masks"].items():
        assert torch.equal(resumed["sparsifier"]["masks"][name], mask), name
    for name, value in one["model"].items():
        assert torch.allclose(resumed["model"][name].float(), value.float(), atol=1e-5), name


def test_resume_with_a_different_global_batch_is_refused(tmp_path: Path) -> None:
    overrides = [*COMMON, *method_overrides("rigl"), "train.stop_at_step=5", f"out_dir={tmp_path}"]
    config = load_config("quickstart", overrides)
    train(config)
    from regrow.cli import main

    assert main(["train", "--resume", str(tmp_path), "train.batch_size=16"]) == 2
    assert [row["event"] for row in RunDir(tmp_path).provenance()] == ["start"]  # none recorded
    assert RunDir(tmp_path).state() == "partial"


def _signalled_worker(rank: int, port: int, out_dir: str, result_file: str) -> None:
    """One of two gloo ranks training 2 passes; rank 1 alone gets SIGTERM after its step 20. The
    collectives that agree on a stop are counted."""
    import signal

    from regrow.train import distributed, loop

    os.environ.update(
        {"RANK": str(rank), "WORLD_SIZE": "2", "LOCAL_RANK": str(rank),
         "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port)}
    )  # fmt: skip
    torch.set_num_threads(1)
    calls: list[int] = []
    agree, step = distributed.max_over_ranks, loop.train_step

    def counted(value, device, context):
        calls.append(value)
        return agree(value, device, context)

    def signalled_step(run, x, y):
        result = step(run, x, y)
        if rank == 1 and run.sparsifier.step_count == 20 and result[2]:
            os.kill(os.getpid(), signal.SIGTERM)
        return result

    distributed.max_over_ranks, loop.train_step = counted, signalled_step
    config = load_config(
        "quickstart",
        [*COMMON, "train.batch_size=16", "sparsity.method=static", f"out_dir={out_dir}"],
    )
    try:
        outcome = loop.train(config)
    except Exception:
        outcome = {"error": traceback.format_exc()}
    Path(f"{result_file}.{rank}").write_text(json.dumps({"result": outcome, "calls": calls}))
    os._exit(0)


def test_a_signal_on_one_rank_stops_both_at_the_next_periodic_check(tmp_path: Path) -> None:
    """No collective per step: the ranks agree on a requested stop only at the loss check every
    LOG_EVERY (50) steps, so a SIGTERM that reached rank 1 at step 20 stops both at step 50,
    after one agreement, with one checkpoint that resumes."""
    import socket

    from regrow.train.loop import LOG_EVERY

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    out = tmp_path / "run"
    run_two_ranks(_signalled_worker, port, str(out), str(tmp_path / "result"), timeout=180)
    for rank in range(2):
        outcome = json.loads((tmp_path / f"result.{rank}").read_text())
        result = outcome["result"]
        assert result.get("status") == "stopped", result
        assert (result["reason"], result["step"]) == ("SIGTERM", LOG_EVERY)
        assert outcome["calls"] == [15 if rank == 1 else 0]  # one agreement: SIGTERM's number
    checkpoint = torch.load(out / "checkpoint.pt", weights_only=False)
    assert checkpoint["sparsifier"]["step_count"] == LOG_EVERY
