"""One rank of a two-process DDP run (gloo, CPU) of the Trainer with RegrowCallback; run by
tests/integrations/test_transformers.py through ``torch.distributed.run``. Each rank writes its
masks' checksums to ``OUT/rank<r>.json``."""

from __future__ import annotations

import json
import os
import sys

import torch
from transformers import TrainingArguments

from regrow.integrations.transformers import RegrowCallback
from tests.integrations.hf_models import SequentialTrainer, tiny_llama, token_data


def main(out: str) -> None:
    rank = int(os.environ["RANK"])
    callback = RegrowCallback("rigl", sparsity=0.8, delta_t=3, seed=0)
    args = TrainingArguments(
        os.path.join(out, "trainer"),
        max_steps=12,
        per_device_train_batch_size=4,
        learning_rate=1e-2,
        lr_scheduler_type="constant",
        use_cpu=True,
        ddp_backend="gloo",
        report_to="none",
        save_strategy="no",
        disable_tqdm=True,
    )
    trainer = SequentialTrainer(
        tiny_llama(), args, train_dataset=token_data(), callbacks=[callback]
    )
    trainer.train()
    sparsifier = callback.sparsifier
    assert sparsifier is not None
    row = {
        "world_size": torch.distributed.get_world_size(),
        "checksums": sparsifier.mask_checksums().tolist(),
        "last_update_step": sparsifier.last_update_step,
        "step_count": sparsifier.step_count,
        "weights": float(sum(p.double().abs().sum() for p in sparsifier.params)),
    }
    with open(os.path.join(out, f"rank{rank}.json"), "w", encoding="utf-8") as handle:
        json.dump(row, handle)


if __name__ == "__main__":
    main(sys.argv[1])
