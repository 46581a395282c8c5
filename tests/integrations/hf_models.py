"""Tiny Hugging Face models, data and a Trainer that reads its data in order, for the tests of
regrow.integrations.transformers (and the DDP script they start)."""

from __future__ import annotations

from typing import Any

import torch
from torch.utils.data import SequentialSampler
from transformers import LlamaConfig, LlamaForCausalLM, Trainer


def tiny_llama(seed: int = 0, tie: bool = False) -> LlamaForCausalLM:
    """Two blocks, width 32, vocabulary 50: every projection an ``nn.Linear`` (sparse
    candidates), no dropout."""
    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=50,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=2,
        max_position_embeddings=32,
        tie_word_embeddings=tie,
    )
    return LlamaForCausalLM(config)


def token_data(samples: int = 64, length: int = 16, seed: int = 1) -> list[dict[str, Any]]:
    """A fixed in-memory language-modelling set: every token a label (no padding)."""
    tokens = torch.randint(0, 50, (samples, length), generator=torch.Generator().manual_seed(seed))
    return [{"input_ids": row, "labels": row.clone()} for row in tokens]


class SequentialTrainer(Trainer):
    """The Trainer with its training set read in order (no shuffling), so a hand-written loop
    can see the same batches."""

    def _get_train_sampler(self, *args: Any, **kwargs: Any) -> SequentialSampler:
        return SequentialSampler(self.train_dataset)
