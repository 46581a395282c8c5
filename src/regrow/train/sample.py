"""Text from a trained language-model run (``regrow sample``): the run's model rebuilt from its
checkpoint and ``vocabulary.json``, then sampled one character at a time.

Sampling draws from a generator seeded by ``seed`` alone, so the same run, prompt, length,
temperature and seed print the same text on the same machine.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from ..data.text import encode
from ..models import get_model_spec
from ..sparsity.masks import MASK_SUFFIX
from .checkpoint import load_checkpoint
from .config import load_config
from .rundir import RunDir

__all__ = ["LanguageModel", "generate", "load_language_model"]


@dataclass
class LanguageModel:
    """A run's trained model in eval mode and the characters its token ids stand for."""

    model: nn.Module
    vocabulary: str
    block_size: int

    def sample(self, prompt: str, tokens: int, temperature: float = 1.0, seed: int = 0) -> str:
        """``prompt`` followed by ``tokens`` sampled characters (see :func:`generate`)."""
        # No prompt: start as after a line break (or the first character, if the text has none).
        start = prompt or ("\n" if "\n" in self.vocabulary else self.vocabulary[0])
        ids = encode(start, self.vocabulary)
        out = generate(self.model, ids, tokens, self.block_size, temperature, seed)
        return prompt + "".join(self.vocabulary[i] for i in out.tolist())


@torch.inference_mode()
def generate(
    model: nn.Module,
    prompt: torch.Tensor,
    tokens: int,
    block_size: int,
    temperature: float = 1.0,
    seed: int = 0,
) -> torch.Tensor:
    """``tokens`` new token ids after ``prompt`` (1-D ids, at least one), each drawn from
    softmax(logits / ``temperature``) given the last ``block_size`` tokens; ``temperature=0``
    takes the most likely token."""
    generator = torch.Generator().manual_seed(seed)
    context = prompt.to(torch.long)
    new: list[int] = []
    for _ in range(tokens):
        logits = model(context[-block_size:].unsqueeze(0))[0, -1].float()
        if temperature == 0:
            token = int(logits.argmax())
        else:
            probs = torch.softmax(logits / temperature, dim=-1)
            token = int(torch.multinomial(probs, 1, generator=generator))
        new.append(token)
        context = torch.cat([context, torch.tensor([token])])
    return torch.tensor(new, dtype=torch.long)


def load_language_model(run_dir: str | Path) -> LanguageModel:
    """The model of a language-model run directory, from its ``checkpoint.pt`` (the last saved,
    finished or not). ``ValueError`` in one line for a directory that is not such a run."""
    run = RunDir(run_dir)
    if not run.path.is_dir():
        raise ValueError(f"RUN_DIR {run.path} is not a directory: give a regrow run directory.")
    vocabulary = run.vocabulary()
    if vocabulary is None:
        raise ValueError(
            f"RUN_DIR {run.path} is not a language-model run (it has no vocabulary.json): "
            "regrow sample needs a run trained with data.name=text."
        )
    if not run.has_checkpoint():
        raise ValueError(
            f"RUN_DIR {run.path} has no checkpoint.pt yet: train it first (regrow train)."
        )
    config = load_config(str(run.config_file()))  # as `regrow train --resume` reads it
    saved = load_checkpoint(run.checkpoint_path)
    characters, block_size = str(vocabulary["vocabulary"]), int(vocabulary["block_size"])
    spec = get_model_spec(config.model.name)

    def make(width: float) -> nn.Module:
        return spec(num_classes=len(characters), width=width, block_size=block_size)

    model = make(config.sparsity.model_width(make, config.model.width))
    # The sparsifier's mask buffers are not the model's: the weights are stored masked (zeros).
    state = {k: v for k, v in saved["model"].items() if not k.endswith(MASK_SUFFIX)}
    try:
        model.load_state_dict(state)
    except RuntimeError as error:
        raise ValueError(
            f"RUN_DIR {run.path}: checkpoint.pt does not fit model {config.model.name} "
            f"({str(error).splitlines()[0]}); was the run written by another regrow version?"
        ) from None
    return LanguageModel(model.eval(), characters, block_size)
