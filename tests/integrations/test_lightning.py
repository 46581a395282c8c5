"""RegrowCallback in lightning.pytorch.Trainer: the documented loop inside Lightning's step.

Tiny models (an MLP, a one-block CharGPT), a few dozen CPU steps each, a DataLoader without
shuffling, ``deterministic=True``. The reference is the documented hand-written loop
(``loss.backward(); if sparsifier.step(): optimizer.step()``) over the same data, seed and
optimizer.
"""

from __future__ import annotations

import copy
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from torch import nn
from torch.nn import functional as F
from torch.utils.data import DataLoader, TensorDataset

pl = pytest.importorskip("lightning.pytorch")

import regrow  # noqa: E402
from regrow.integrations.lightning import RegrowCallback  # noqa: E402
from regrow.models import CharGPT  # noqa: E402

SRC = str(Path(regrow.__file__).resolve().parents[1])


def trainer(**kwargs) -> pl.Trainer:
    settings = {
        "accelerator": "cpu",
        "devices": 1,
        "logger": False,
        "enable_checkpointing": False,
        "enable_progress_bar": False,
        "enable_model_summary": False,
        "deterministic": True,
    }
    return pl.Trainer(**{**settings, **kwargs})


def mlp_loader(batch_size: int = 8, samples: int = 64) -> DataLoader:
    generator = torch.Generator().manual_seed(1)
    x = torch.randn(samples, 20, generator=generator)
    y = torch.randint(0, 5, (samples,), generator=generator)
    return DataLoader(TensorDataset(x, y), batch_size=batch_size, shuffle=False)


def text_loader(batch_size: int = 8, samples: int = 48) -> DataLoader:
    generator = torch.Generator().manual_seed(2)
    x = torch.randint(0, 11, (samples, 8), generator=generator)
    y = torch.randint(0, 11, (samples, 8), generator=generator)
    return DataLoader(TensorDataset(x, y), batch_size=batch_size, shuffle=False)


class Module(pl.LightningModule):
    """``net`` with an optimizer, a per-step LR schedule, and every batch's loss recorded."""

    def __init__(self, net: nn.Module, optimizer: str = "sgd", skip_batch: int | None = None):
        super().__init__()
        self.net, self.kind, self.skip_batch = net, optimizer, skip_batch
        self.losses: list[float] = []
        self.inner_steps = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

    def training_step(self, batch, batch_idx):
        if batch_idx == self.skip_batch:
            return None  # Lightning skips the batch
        x, y = batch
        logits = self(x)
        loss = F.cross_entropy(logits.flatten(0, -2), y.flatten())
        self.losses.append(loss.item())
        return loss

    def configure_optimizers(self):
        optimizer, scheduler = make_optimizer(self)
        return {
            "optimizer": optimizer,
            "lr_scheduler": {"scheduler": scheduler, "interval": "step"},
        }


def make_optimizer(module: Module):
    if module.kind == "sgd":
        optimizer = torch.optim.SGD(
            module.parameters(), lr=0.1, momentum=0.9, nesterov=True, weight_decay=5e-4
        )
    else:
        optimizer = torch.optim.AdamW(module.parameters(), lr=1e-2, weight_decay=0.1)

    def count(*_):
        module.inner_steps += 1

    optimizer.register_step_post_hook(count)
    return optimizer, torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 0.98**step)


def mlp_module(**kwargs) -> Module:
    torch.manual_seed(0)
    net = nn.Sequential(
        nn.Linear(20, 64), nn.ReLU(), nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 5)
    )
    return Module(net, **kwargs)


def gpt_module() -> Module:
    torch.manual_seed(0)
    return Module(CharGPT(11, block_size=8, d_model=16, layers=1, heads=2), optimizer="adamw")


def hand_loop(module, loader, epochs, method, clip=None, clip_dense=False, **kwargs):
    """The README's loop with the module's optimizer and schedule (``clip``: the masked gradients'
    norm before the optimizer step, or with ``clip_dense`` the dense ones before
    ``sparsifier.step()``)."""
    optimizer, scheduler = make_optimizer(module)
    sparsifier = regrow.get_method(method)(module, optimizer, **kwargs)
    for _ in range(epochs):
        for i, batch in enumerate(loader):
            optimizer.zero_grad()
            module.training_step(batch, i).backward()
            if clip is not None and clip_dense:
                torch.nn.utils.clip_grad_norm_(list(module.parameters()), clip)
            if sparsifier.step():
                if clip is not None and not clip_dense:
                    torch.nn.utils.clip_grad_norm_(list(module.parameters()), clip)
                optimizer.step()
            scheduler.step()
    return sparsifier


class Recorder(pl.Callback):
    """Per batch: whether the wrapped optimizer stepped, and any nonzero inactive weight or
    optimizer-state entry (after the step)."""

    def __init__(self, regrow_callback: RegrowCallback) -> None:
        self.regrow = regrow_callback
        self.stepped: list[bool] = []
        self.reports: list[bool] = []
        self.violations: list[str] = []
        self.previous = 0

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        sparsifier = self.regrow.sparsifier
        self.stepped.append(pl_module.inner_steps > self.previous)
        self.previous = pl_module.inner_steps
        self.reports.append(sparsifier.last_batch.optimizer_step)
        state = sparsifier.optimizer.state
        for name, param in zip(sparsifier.names, sparsifier.params, strict=True):
            inactive = ~sparsifier.masks[name]
            if param.detach()[inactive].abs().sum() != 0:
                self.violations.append(f"batch {batch_idx}: weight {name}")
            for key, value in state.get(param, {}).items():
                shaped = torch.is_tensor(value) and value.shape == param.shape
                if shaped and value[inactive].abs().sum() != 0:
                    self.violations.append(f"batch {batch_idx}: {key} of {name}")


def assert_same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert sorted(a) == sorted(b)
    for key in a:
        assert torch.equal(a[key], b[key]), key


def masks_of(sparsifier) -> dict[str, torch.Tensor]:
    return {name: mask.clone() for name, mask in sparsifier.masks.items()}


RIGL = {"method": "rigl", "sparsity": 0.8, "delta_t": 3, "seed": 3}


def callback_for(config: dict, **extra) -> RegrowCallback:
    config = {**config, **extra}
    return RegrowCallback(config.pop("method"), **config)


# ------------------------------------------------------------------------------------ tests
def test_masks_equal_the_hand_written_loop_and_update_batches_take_no_step():
    loader, epochs = mlp_loader(), 3
    module = mlp_module()
    reference = copy.deepcopy(module)
    callback = callback_for(RIGL)
    recorder = Recorder(callback)
    fit = trainer(max_epochs=epochs, callbacks=[callback, recorder])
    fit.fit(module, loader)
    sparsifier = callback.sparsifier

    expected = hand_loop(reference, loader, epochs, total_steps=epochs * len(loader), **RIGL)
    # total_steps from the trainer: estimated_stepping_batches, 3 epochs of 8 batches.
    assert sparsifier.total_steps == fit.estimated_stepping_batches == 24
    assert_same(masks_of(sparsifier), masks_of(expected))
    assert module.losses == reference.losses
    assert_same(module.state_dict(), reference.state_dict())
    assert sparsifier.last_update_stats["grown"] > 0  # the masks moved

    # An update batch takes no optimizer step; every other batch exactly one.
    updates = recorder.reports.count(False)
    assert updates >= 3
    assert recorder.stepped == recorder.reports
    assert module.inner_steps == sparsifier.step_count == 24 - updates
    assert fit.global_step == 24  # Lightning counts every batch that reached optimizer.step
    # The LR schedule from configure_optimizers stepped on the wrapped optimizer, once a batch.
    scheduler = fit.lr_scheduler_configs[0].scheduler
    assert scheduler.optimizer is callback.optimizer.optimizer
    assert fit.optimizers[0] is callback.optimizer
    assert callback.optimizer.param_groups[0]["lr"] == pytest.approx(0.1 * 0.98**24)


def test_inactive_weights_and_optimizer_state_are_zero_after_every_step():
    callback = callback_for(RIGL, sparsity=0.7, total_steps=18)
    recorder = Recorder(callback)
    module = gpt_module()
    trainer(max_epochs=3, callbacks=[callback, recorder]).fit(module, text_loader())
    sparsifier = callback.sparsifier
    assert len(recorder.stepped) == 18 and recorder.reports.count(False) >= 3
    assert recorder.violations == []
    # The wrapped model's own default (CharGPT keeps its head dense), under the module's name.
    assert "net.head.weight" not in sparsifier.names
    assert "net.blocks.0.attn.query.weight" in sparsifier.names
    # AdamW's moments exist and are nonzero where active (the check above is not vacuous).
    state = sparsifier.optimizer.state[sparsifier.params[0]]
    assert state["exp_avg"].abs().sum() > 0


def test_resume_from_a_checkpoint_equals_the_uninterrupted_run(tmp_path):
    def run(ckpt_path=None, checkpoint=None):
        callback = callback_for(RIGL, sparsity=0.7)
        module = gpt_module()
        callbacks = [callback] + ([checkpoint] if checkpoint else [])
        fit = trainer(max_epochs=3, callbacks=callbacks, enable_checkpointing=bool(checkpoint))
        fit.fit(module, text_loader(), ckpt_path=ckpt_path)
        return module, callback, fit

    saver = pl.callbacks.ModelCheckpoint(
        dirpath=tmp_path, filename="{epoch}", every_n_epochs=1, save_top_k=-1
    )
    full, full_callback, full_fit = run(checkpoint=saver)
    path = tmp_path / "epoch=0.ckpt"
    saved = torch.load(path, weights_only=False)
    mask_keys = [k for k in saved["state_dict"] if k.endswith("_mask")]
    assert "net.blocks.0.fc.weight_mask" in mask_keys  # masks are buffers of the saved model
    state = saved["callbacks"]["RegrowCallback"]
    assert state["total_steps"] == 18 and state["sparsifier"]["step_count"] < 6

    resumed, callback, fit = run(ckpt_path=path)
    assert resumed.losses == full.losses[6:]  # the 12 batches after the checkpoint
    assert_same(masks_of(callback.sparsifier), masks_of(full_callback.sparsifier))
    assert_same(resumed.state_dict(), full.state_dict())
    assert callback.sparsifier.state_dict()["step_count"] == full_callback.sparsifier.step_count
    assert callback.sparsifier.last_update_step == full_callback.sparsifier.last_update_step > 6
    assert fit.global_step == full_fit.global_step == 18
    inner, full_inner = fit.optimizers[0].state_dict(), full_fit.optimizers[0].state_dict()
    assert inner["param_groups"] == full_inner["param_groups"]
    for key, value in full_inner["state"].items():
        assert_same(inner["state"][key], value)


def test_gradient_accumulation_gives_the_doubled_batch_masks():
    def run(batch_size, accumulate):
        callback = callback_for(RIGL)
        module = mlp_module()
        fit = trainer(max_epochs=4, accumulate_grad_batches=accumulate, callbacks=[callback])
        fit.fit(module, mlp_loader(batch_size))
        return module, callback.sparsifier

    accumulated, sparsifier = run(8, 2)
    doubled, expected = run(16, 1)
    assert sparsifier.total_steps == expected.total_steps == 16  # 4 epochs of 8/2 steps
    assert sparsifier.step_count == expected.step_count
    assert sparsifier.last_update_stats["grown"] > 0
    assert_same(masks_of(sparsifier), masks_of(expected))
    # Same arithmetic up to the order of the sums (two half-batch means vs one mean).
    for name, value in doubled.state_dict().items():
        torch.testing.assert_close(accumulated.state_dict()[name], value, rtol=1e-4, atol=1e-5)


def test_clipping_clips_the_masked_gradients():
    loader, epochs, clip = mlp_loader(), 2, 0.05
    module = mlp_module()
    reference, dense_clipped = copy.deepcopy(module), copy.deepcopy(module)
    callback = callback_for(RIGL)
    trainer(max_epochs=epochs, gradient_clip_val=clip, callbacks=[callback]).fit(module, loader)

    total = epochs * len(loader)
    expected = hand_loop(reference, loader, epochs, clip=clip, total_steps=total, **RIGL)
    assert_same(masks_of(callback.sparsifier), masks_of(expected))
    assert_same(module.state_dict(), reference.state_dict())
    # Clipping the dense gradients instead trains other weights: the order is observable.
    hand_loop(dense_clipped, loader, epochs, clip=clip, clip_dense=True, total_steps=total, **RIGL)
    assert not torch.equal(module.net[2].weight, dense_clipped.net[2].weight)


def test_total_steps_from_the_trainer_or_given():
    callback = RegrowCallback("set", sparsity=0.5, delta_t=2)
    trainer(max_epochs=3, max_steps=5, callbacks=[callback]).fit(mlp_module(), mlp_loader())
    assert callback.sparsifier.total_steps == 5  # min(3 epochs × 8 batches, max_steps)
    assert callback.sparsifier.step_count == 5

    given = RegrowCallback("set", sparsity=0.5, delta_t=2, total_steps=100)
    trainer(max_steps=2, callbacks=[given]).fit(mlp_module(), mlp_loader())
    assert given.sparsifier.total_steps == 100


def test_a_skipped_batch_is_neither_an_update_nor_a_step():
    callback = callback_for(RIGL)
    recorder = Recorder(callback)
    module = mlp_module(skip_batch=2)
    trainer(max_epochs=1, callbacks=[callback, recorder]).fit(module, mlp_loader())
    sparsifier = callback.sparsifier
    assert recorder.stepped[2] is False  # batch 2 returned no loss
    del recorder.stepped[2], recorder.reports[2]
    assert recorder.stepped == recorder.reports  # the others: a step unless an update
    updates = recorder.reports.count(False)
    assert updates >= 1
    assert module.inner_steps == sparsifier.step_count == 8 - 1 - updates


class ManualModule(Module):
    """Manual optimisation: ``self.optimizers().step()`` after ``manual_backward``."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__(net)
        self.automatic_optimization = False

    def training_step(self, batch, batch_idx):
        optimizer = self.optimizers()
        optimizer.zero_grad()
        x, y = batch
        loss = F.cross_entropy(self(x), y)
        self.losses.append(loss.item())
        self.manual_backward(loss)
        optimizer.step()
        self.lr_schedulers().step()


def test_manual_optimisation_trains_as_the_automatic_one():
    automatic, manual = mlp_module(), ManualModule(mlp_module().net)
    callbacks = [callback_for(RIGL), callback_for(RIGL)]
    for module, callback in zip((automatic, manual), callbacks, strict=True):
        trainer(max_epochs=2, callbacks=[callback]).fit(module, mlp_loader())
    assert manual.inner_steps == automatic.inner_steps == callbacks[1].sparsifier.step_count
    assert_same(masks_of(callbacks[1].sparsifier), masks_of(callbacks[0].sparsifier))
    assert_same(manual.state_dict(), automatic.state_dict())


def test_arguments_are_checked_when_the_callback_is_built():
    with pytest.raises(ValueError, match="unknown"):
        RegrowCallback("no_such_method")
    with pytest.raises(ValueError, match="delta_t"):
        RegrowCallback("static", delta_t=10)
    with pytest.raises(ValueError, match="attach_hook"):
        RegrowCallback("rigl", attach_hook=False)


DDP_SCRIPT = """
import hashlib, json, os, sys
import torch
import lightning.pytorch as pl
from tests.integrations.test_lightning import RIGL, callback_for, mlp_loader, mlp_module

def main(out):
    callback = callback_for(RIGL)
    module = mlp_module()
    fit = pl.Trainer(accelerator="cpu", devices=2, strategy="ddp", max_epochs=3, logger=False,
                     enable_checkpointing=False, enable_progress_bar=False,
                     enable_model_summary=False, deterministic=True, callbacks=[callback])
    fit.fit(module, mlp_loader())
    sparsifier = callback.sparsifier
    digest = hashlib.sha256()
    for name in sparsifier.names:
        digest.update(sparsifier.masks[name].numpy().tobytes())
    weights = hashlib.sha256()
    for name, value in module.state_dict().items():
        weights.update(value.numpy().tobytes())
    record = {"masks": digest.hexdigest(), "weights": weights.hexdigest(),
              "grown": sparsifier.last_update_stats["grown"], "steps": sparsifier.step_count}
    with open(os.path.join(out, f"rank{fit.global_rank}.json"), "w") as f:
        json.dump(record, f)

if __name__ == "__main__":
    main(sys.argv[1])
"""


def test_ddp_keeps_identical_masks_on_both_ranks(tmp_path):
    """Two gloo processes (Lightning's ``ddp`` launcher starts the second by running the script
    again); each writes a hash of its masks. 20-40 s on two cores."""
    script = tmp_path / "ddp_run.py"
    script.write_text(textwrap.dedent(DDP_SCRIPT))
    root = str(Path(__file__).resolve().parents[2])
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([SRC, root]), "OMP_NUM_THREADS": "1"}
    done = subprocess.run(
        [sys.executable, str(script), str(tmp_path)],
        env=env,
        cwd=root,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert ranks[0]["grown"] > 0  # the masks moved during the run
    assert ranks[0]["masks"] == ranks[1]["masks"]
    assert ranks[0]["weights"] == ranks[1]["weights"]
    assert ranks[0]["steps"] == ranks[1]["steps"] > 0
