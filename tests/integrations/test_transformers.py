"""RegrowCallback in the Hugging Face Trainer keeps the documented loop's semantics: the same masks
as the hand-written loop, no optimizer step on an update batch, zero inactive weights and state,
bit-identical resume, accumulation and clipping seen by the grow score, DDP ranks in agreement."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch

pytest.importorskip("transformers")
pytest.importorskip("accelerate")

from transformers import (
    GPT2Config,
    GPT2LMHeadModel,
    LlamaForCausalLM,
    TrainerCallback,
    TrainingArguments,
)

import regrow
from regrow.integrations.transformers import STATE_FILE, RegrowCallback, strip_masks
from tests.integrations.hf_models import SequentialTrainer, tiny_llama, token_data

ROOT = Path(__file__).resolve().parents[2]
LR = 1e-2
RIGL = {"sparsity": 0.8, "delta_t": 4, "seed": 3}


def training_args(out: Path, **overrides: Any) -> TrainingArguments:
    settings: dict[str, Any] = {
        "max_steps": 24,
        "per_device_train_batch_size": 4,
        "learning_rate": LR,
        "lr_scheduler_type": "constant",
        "max_grad_norm": 1.0,
        "use_cpu": True,
        "report_to": "none",
        "save_strategy": "no",
        "logging_steps": 1,
        "disable_tqdm": True,
        "seed": 0,
    }
    settings.update(overrides)
    return TrainingArguments(str(out), **settings)


def train(
    out: Path,
    callbacks: list[TrainerCallback],
    model: torch.nn.Module | None = None,
    optimizer: torch.optim.Optimizer | None = None,
    resume: str | None = None,
    **overrides: Any,
) -> SequentialTrainer:
    model = model if model is not None else tiny_llama()
    trainer = SequentialTrainer(
        model,
        training_args(out, **overrides),
        train_dataset=token_data(),
        callbacks=callbacks,
        optimizers=(optimizer, None),
    )
    trainer.train(resume_from_checkpoint=resume)
    return trainer


def losses(trainer: SequentialTrainer) -> dict[int, float]:
    return {row["step"]: row["loss"] for row in trainer.state.log_history if "loss" in row}


def masks_of(callback: RegrowCallback) -> dict[str, torch.Tensor]:
    assert callback.sparsifier is not None
    return {name: mask.clone() for name, mask in callback.sparsifier.masks.items()}


def assert_same_masks(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert list(a) == list(b)
    for name in a:
        assert torch.equal(a[name], b[name]), name


class Recorder(TrainerCallback):
    """Checks and records, after every Trainer step, what the sparsifier guarantees."""

    def __init__(self, regrow_callback: RegrowCallback) -> None:
        self.regrow = regrow_callback
        self.inner_steps = 0
        self.rows: list[dict[str, Any]] = []

    def on_train_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        sparsifier = self.regrow.sparsifier
        assert sparsifier is not None
        sparsifier.optimizer.register_step_post_hook(self._count)

    def _count(self, *args: Any) -> None:
        self.inner_steps += 1

    def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        sparsifier = self.regrow.sparsifier
        assert sparsifier is not None
        optimizer = sparsifier.optimizer
        nonzero_inactive = 0
        for name, param in zip(sparsifier.names, sparsifier.params, strict=True):
            off = ~sparsifier.masks[name]
            nonzero_inactive += int(param.detach()[off].count_nonzero())
            for key in ("exp_avg", "exp_avg_sq"):
                if key in optimizer.state.get(param, {}):
                    nonzero_inactive += int(optimizer.state[param][key][off].count_nonzero())
        self.rows.append(
            {
                "global_step": state.global_step,
                "optimizer_step": sparsifier.last_batch.optimizer_step,
                "masks_changed": sparsifier.last_batch.masks_changed,
                "inner_steps": self.inner_steps,
                "nonzero_inactive": nonzero_inactive,
            }
        )


def hand_loop(
    batches: list[dict[str, torch.Tensor]], max_grad_norm: float, total_steps: int
) -> regrow.RigL:
    """README's loop ("In your own training loop"), clipping as the Trainer does."""
    model = tiny_llama()
    optimizer = torch.optim.AdamW(model.parameters(), lr=LR)
    sparsifier = regrow.RigL(model, optimizer, total_steps=total_steps, **RIGL)
    model.train()
    for batch in batches:
        optimizer.zero_grad()
        model(**batch).loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), max_grad_norm)
        if sparsifier.step():
            optimizer.step()
    return sparsifier


def batches_of(size: int, count: int) -> list[dict[str, torch.Tensor]]:
    data = token_data()
    rows = [data[i % len(data)] for i in range(size * count)]
    return [
        {key: torch.stack([row[key] for row in rows[i : i + size]]) for key in rows[0]}
        for i in range(0, len(rows), size)
    ]


# ------------------------------------------------------------------------------ semantics
def test_the_trainer_gives_the_masks_and_weights_of_the_hand_written_loop(tmp_path: Path) -> None:
    callback = RegrowCallback("rigl", **RIGL)
    model = tiny_llama()
    optimizer = torch.optim.AdamW(model.parameters(), lr=LR)
    trainer = train(tmp_path, [callback], model=model, optimizer=optimizer)

    sparsifier = hand_loop(batches_of(4, 24), max_grad_norm=1.0, total_steps=24)
    assert callback.sparsifier is not None and callback.sparsifier.last_update_step is not None
    assert callback.sparsifier.step_count == sparsifier.step_count
    assert callback.sparsifier.last_update_step == sparsifier.last_update_step
    assert_same_masks(masks_of(callback), dict(sparsifier.masks))
    for name, param in sparsifier.model.named_parameters():
        assert torch.equal(dict(trainer.model.named_parameters())[name], param), name


def test_an_update_batch_takes_no_optimizer_step_and_inactive_weights_and_state_stay_zero(
    tmp_path: Path,
) -> None:
    callback = RegrowCallback("rigl", **RIGL)
    recorder = Recorder(callback)
    trainer = train(tmp_path, [callback, recorder])

    rows = recorder.rows
    assert [row["global_step"] for row in rows] == list(range(1, 25))
    updates = [row for row in rows if not row["optimizer_step"]]
    assert len(updates) >= 3 and all(row["masks_changed"] for row in updates)
    previous = 0
    for row in rows:  # the inner (torch) optimizer stepped exactly on the other batches
        assert row["inner_steps"] - previous == int(row["optimizer_step"]), row
        previous = row["inner_steps"]
        assert row["nonzero_inactive"] == 0, row
    sparsifier = callback.sparsifier
    assert sparsifier is not None
    assert recorder.inner_steps == sparsifier.step_count == 24 - len(updates)
    adam_steps = {int(s["step"]) for s in sparsifier.optimizer.state.values()}
    assert adam_steps == {sparsifier.step_count}
    # the Trainer's own optimizer is accelerate's wrapper, now holding the sparse optimizer
    assert isinstance(trainer.optimizer.optimizer, regrow.SparseOptimizer)
    assert trainer.optimizer.optimizer.optimizer is sparsifier.optimizer


def test_total_steps_come_from_the_trainer_unless_given(tmp_path: Path) -> None:
    by_steps = RegrowCallback("rigl", sparsity=0.8, delta_t=4)
    train(tmp_path / "steps", [by_steps], max_steps=6)
    by_epochs = RegrowCallback("set", sparsity=0.8, delta_t=4)
    # 64 samples in batches of 4, two batches per step: 8 steps an epoch, 2 epochs
    train(
        tmp_path / "epochs",
        [by_epochs],
        max_steps=-1,
        num_train_epochs=2,
        gradient_accumulation_steps=2,
    )
    given = RegrowCallback("rigl", sparsity=0.8, delta_t=4, total_steps=100)
    train(tmp_path / "given", [given], max_steps=2)
    assert by_steps.sparsifier is not None and by_steps.sparsifier.total_steps == 6
    assert by_epochs.sparsifier is not None and by_epochs.sparsifier.total_steps == 16
    assert given.sparsifier is not None and given.sparsifier.total_steps == 100


# ---------------------------------------------------------------------- checkpoints
class StopAt(TrainerCallback):
    def __init__(self, step: int) -> None:
        self.step = step

    def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if state.global_step == self.step:
            control.should_training_stop = True


def test_an_interrupted_run_resumed_from_its_checkpoint_equals_the_uninterrupted_one(
    tmp_path: Path,
) -> None:
    whole = RegrowCallback("rigl", **RIGL)
    reference = train(tmp_path / "whole", [whole])

    first = RegrowCallback("rigl", **RIGL)
    out = tmp_path / "parts"
    interrupted = train(out, [first, StopAt(10)], save_strategy="steps", save_steps=5)
    assert interrupted.state.global_step == 10
    checkpoint = out / "checkpoint-10"
    assert (checkpoint / STATE_FILE).is_file()
    # the saved model carries the masks as buffers, equal to the sparsifier's at that step
    from safetensors.torch import load_file

    saved_model = load_file(str(checkpoint / "model.safetensors"))
    assert first.sparsifier is not None
    for name, mask in first.sparsifier.masks.items():
        assert torch.equal(saved_model[name + "_mask"], mask), name

    second = RegrowCallback("rigl", **RIGL)
    resumed = train(
        out,
        [second],
        model=tiny_llama(seed=7),
        resume=str(checkpoint),
        save_strategy="steps",
        save_steps=5,
    )
    assert second.sparsifier is not None and whole.sparsifier is not None
    assert second.sparsifier.step_count == whole.sparsifier.step_count
    assert second.sparsifier.total_steps == 24
    assert_same_masks(masks_of(second), masks_of(whole))
    for name, param in reference.model.named_parameters():
        assert torch.equal(dict(resumed.model.named_parameters())[name], param), name
    # the resumed Trainer's history is the checkpoint's (steps 1-10) and its own (11-24)
    assert sorted(losses(resumed)) == list(range(1, 25))
    assert losses(resumed) == losses(reference)


def test_resuming_without_the_sparsifier_state_is_refused(tmp_path: Path) -> None:
    out = tmp_path / "run"
    saving = {"max_steps": 8, "save_strategy": "steps", "save_steps": 4}
    train(out, [RegrowCallback("rigl", **RIGL), StopAt(4)], **saving)
    (out / "checkpoint-4" / STATE_FILE).unlink()
    fresh = RegrowCallback("rigl", **RIGL)
    with pytest.raises(FileNotFoundError, match=r"no regrow_sparsifier\.pt of that step"):
        train(out, [fresh], resume=str(out / "checkpoint-4"), **saving)
    assert fresh.sparsifier is None


# ----------------------------------------------------------- accumulation and clipping
def test_two_accumulated_half_batches_give_the_masks_of_the_doubled_batch(tmp_path: Path) -> None:
    doubled = RegrowCallback("rigl", **RIGL)
    one = train(tmp_path / "doubled", [doubled], max_steps=12, per_device_train_batch_size=8)
    halves = RegrowCallback("rigl", **RIGL)
    two = train(
        tmp_path / "halves",
        [halves],
        max_steps=12,
        per_device_train_batch_size=4,
        gradient_accumulation_steps=2,
    )
    # The loss of two half batches is the doubled batch's up to float rounding (the Trainer
    # divides each half's summed token loss by the tokens of both); RigL's top-k could flip on
    # a near tie, which these seeds do not have: the masks are equal.
    assert halves.sparsifier is not None and halves.sparsifier.last_update_step is not None
    assert_same_masks(masks_of(halves), masks_of(doubled))
    for step, loss in losses(one).items():
        assert losses(two)[step] == pytest.approx(loss, rel=1e-5)


class GradientSpy(TrainerCallback):
    """Records the norm of the whole model's gradient that the sparsifier sees on an update."""

    def __init__(self, regrow_callback: RegrowCallback) -> None:
        self.regrow = regrow_callback
        self.seen: list[tuple[int, float]] = []

    def on_train_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        sparsifier, model = self.regrow.sparsifier, kwargs["model"]
        assert sparsifier is not None
        observe = sparsifier.observe_gradients

        def spy(grads: list[torch.Tensor | None]) -> None:
            if sparsifier.update_batch_due():
                norms = [p.grad.norm() for p in model.parameters() if p.grad is not None]
                self.seen.append((sparsifier.step_count, float(torch.stack(norms).norm())))
            observe(grads)

        sparsifier.observe_gradients = spy  # type: ignore[method-assign]


def test_the_grow_score_sees_the_clipped_gradient(tmp_path: Path) -> None:
    callback = RegrowCallback("rigl", **RIGL)
    spy = GradientSpy(callback)
    trainer = train(tmp_path, [callback, spy], max_steps=12, max_grad_norm=0.01)
    logged = {row["step"]: row["grad_norm"] for row in trainer.state.log_history if "loss" in row}
    assert len(spy.seen) >= 2
    for _, norm in spy.seen:  # clipped to 0.01 (up to the 1e-6 clip_grad_norm_ adds)
        assert norm <= 0.01 * (1 + 1e-4)
    assert min(logged.values()) > 0.05  # the norm before clipping: clipping was active


def _accelerated_run(with_scaler: bool) -> regrow.RigL:
    """Six batches through accelerate's optimizer wrapper, with or without its GradScaler path
    (the Trainer's fp16 path), the sparse optimizer installed as RegrowCallback installs it."""
    from accelerate import Accelerator
    from accelerate.optimizer import AcceleratedOptimizer

    from regrow.integrations.transformers import _install

    Accelerator(cpu=True)
    torch.manual_seed(0)
    model = torch.nn.Sequential(
        torch.nn.Linear(8, 16), torch.nn.ReLU(), torch.nn.Linear(16, 16), torch.nn.Linear(16, 4)
    )
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    scaler = torch.amp.GradScaler("cpu") if with_scaler else None
    wrapped = AcceleratedOptimizer(optimizer, device_placement=False, scaler=scaler)
    sparsifier = regrow.RigL(model, optimizer, sparsity=0.5, total_steps=20, delta_t=2)
    _install(wrapped, sparsifier)
    generator = torch.Generator().manual_seed(1)
    for _ in range(6):
        loss = model(torch.randn(4, 8, generator=generator)).pow(2).mean()
        (scaler.scale(loss) if scaler is not None else loss).backward()
        wrapped.step()
        wrapped.zero_grad()
    return sparsifier


def test_accelerates_gradscaler_path_runs_the_sparsifier_inside_its_step() -> None:
    # accelerate swaps the inner optimizer's step around scaler.step with methods it bound at
    # construction; without binding them anew the torch step would run without the sparsifier.
    scaled, plain = _accelerated_run(True), _accelerated_run(False)
    assert scaled.step_count == plain.step_count == 4  # two batches went to mask updates
    assert scaled.last_update_step == 2
    assert_same_masks(dict(scaled.masks), dict(plain.masks))
    for a, b in zip(scaled.params, plain.params, strict=True):
        assert torch.equal(a, b)  # a power-of-two scale unscales exactly


# ------------------------------------------------------------------------------ the model
def test_strip_masks_gives_a_plain_model_with_the_same_weights_and_outputs(tmp_path: Path) -> None:
    callback = RegrowCallback("rigl", **RIGL)
    trainer = train(tmp_path / "run", [callback], max_steps=8)
    model = trainer.model
    plain = strip_masks(model)
    assert any(k.endswith("_mask") for k in model.state_dict())  # the trained model keeps them
    assert not any(k.endswith("_mask") for k in plain.state_dict())
    inputs = torch.stack([row["input_ids"] for row in token_data()[:4]])
    model.eval()
    with torch.no_grad():
        expected = model(input_ids=inputs).logits
        assert torch.equal(plain.eval()(input_ids=inputs).logits, expected)
    plain.save_pretrained(tmp_path / "plain")
    loaded, info = LlamaForCausalLM.from_pretrained(tmp_path / "plain", output_loading_info=True)
    assert info["missing_keys"] == set() or not info["missing_keys"]
    assert not info["unexpected_keys"]
    with torch.no_grad():
        assert torch.equal(loaded.eval()(input_ids=inputs).logits, expected)
    assert callback.sparsifier is not None
    name = callback.sparsifier.names[0]
    weight = dict(loaded.named_parameters())[name]
    assert int(weight.count_nonzero()) == int(callback.sparsifier.masks[name].sum())
    strip_masks(model, inplace=True)
    assert not any(k.endswith("_mask") for k in model.state_dict())


def test_tied_embeddings_stay_tied_and_dense(tmp_path: Path) -> None:
    callback = RegrowCallback("rigl", **RIGL)
    trainer = train(tmp_path, [callback], model=tiny_llama(tie=True), max_steps=8)
    model = trainer.model
    assert model.lm_head.weight is model.model.embed_tokens.weight
    assert callback.sparsifier is not None
    assert not any("embed" in n or "lm_head" in n for n in callback.sparsifier.names)
    assert int(model.lm_head.weight.count_nonzero()) == model.lm_head.weight.numel()


def test_gpt2_conv1d_projections_are_made_sparse_and_the_head_stays_tied(tmp_path: Path) -> None:
    torch.manual_seed(0)
    config = GPT2Config(n_layer=2, n_embd=32, n_head=2, vocab_size=50, n_positions=32)
    config.bos_token_id = config.eos_token_id = 0
    config.attn_pdrop = config.resid_pdrop = config.embd_pdrop = 0.0
    callback = RegrowCallback("rigl", **RIGL)
    trainer = train(tmp_path, [callback], model=GPT2LMHeadModel(config), max_steps=8)
    sparsifier = callback.sparsifier
    assert sparsifier is not None
    assert "transformer.h.1.attn.c_attn.weight" in sparsifier.names
    assert "transformer.h.1.mlp.c_fc.weight" in sparsifier.names
    assert sparsifier.global_density() == pytest.approx(0.2, abs=0.01)
    model = trainer.model
    assert model.lm_head.weight is model.transformer.wte.weight
    assert not any("wte" in n or "lm_head" in n for n in sparsifier.names)


# ------------------------------------------------------------------------------ arguments
def test_arguments_are_checked_when_the_callback_is_built() -> None:
    with pytest.raises(ValueError, match="has no argument 'delta'"):
        RegrowCallback("rigl", sparsity=0.9, delta=100)
    with pytest.raises(ValueError, match="unknown"):
        RegrowCallback("rigll")
    with pytest.raises(ValueError, match="attach_hook"):
        RegrowCallback("rigl", attach_hook=False)
    callback = RegrowCallback("set", sparsity=0.9, args={"alpha": 0.5}, delta_t=10)
    assert callback.method is regrow.SET
    assert (callback.method_args.alpha, callback.method_args.delta_t) == (0.5, 10)
    assert callback.shared_args == {"sparsity": 0.9}


def test_importing_the_integrations_package_imports_no_framework() -> None:
    code = (
        "import sys\n"
        "import regrow.integrations\n"
        "print('transformers' in sys.modules)\n"
        "sys.modules['transformers'] = None  # as if not installed\n"
        "try:\n"
        "    import regrow.integrations.transformers\n"
        "except ImportError as error:\n"
        "    print(error)\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, env=_env()
    )
    first, second = result.stdout.strip().splitlines()
    assert first == "False"
    assert "pip install 'regrow[transformers]'" in second


# ------------------------------------------------------------------------------------ DDP
def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(
        [str(ROOT / "src"), str(ROOT), *filter(None, [env.get("PYTHONPATH")])]
    )
    env["OMP_NUM_THREADS"] = "1"
    return env


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_two_ddp_ranks_on_gloo_keep_identical_masks(tmp_path: Path) -> None:
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc_per_node=2",
        "--master_addr=127.0.0.1",
        f"--master_port={_free_port()}",
        str(ROOT / "tests" / "integrations" / "ddp_transformers_run.py"),
        str(tmp_path),
    ]
    result = subprocess.run(
        command, capture_output=True, text=True, env=_env(), cwd=ROOT, timeout=240
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    rows = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert rows[0]["world_size"] == 2
    assert rows[0]["last_update_step"] is not None  # the masks were updated, not just built
    assert rows[0]["checksums"] == rows[1]["checksums"]
    assert rows[0]["step_count"] == rows[1]["step_count"]
    assert rows[0]["weights"] == rows[1]["weights"]
