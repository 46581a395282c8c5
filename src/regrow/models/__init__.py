"""The models of the paper's experiments, by name (a registry the harness and the CLI share).

``MODELS`` maps a name to a :class:`ModelSpec`: calling the spec builds the model, and the spec says
the input shape (one sample, without the batch dimension) and the default number of classes::

    model = get_model("wrn22_2", width=0.5)
    MODELS["wrn22_2"].input_shape   # (3, 32, 32)
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from torch import nn

from .mlp import LeNet300100, digits_mlp, lenet300_100
from .resnet import Bottleneck, ResNet, resnet50_cifar, resnet50_imagenet
from .transformer import CharGPT, char_gpt, char_gpt_large
from .wrn import PreActBlock, WideResNet, scaled_channels, wrn22_2

__all__ = [
    "MODELS",
    "Bottleneck",
    "CharGPT",
    "LeNet300100",
    "ModelSpec",
    "PreActBlock",
    "ResNet",
    "WideResNet",
    "char_gpt",
    "char_gpt_large",
    "digits_mlp",
    "get_model",
    "get_model_spec",
    "lenet300_100",
    "resnet50_cifar",
    "resnet50_imagenet",
    "scaled_channels",
    "wrn22_2",
]


@dataclass(frozen=True)
class ModelSpec:
    """A registered model: its constructor and what it expects.

    ``constructor`` accepts at least ``num_classes`` and ``width`` keyword arguments (a language
    model also ``block_size``, its longest context). ``dataset`` names the data it is trained on
    ("cifar10", "cifar100", "imagenet", "mnist", "digits", "text"); for a language model
    ``input_shape`` is ``(block_size,)`` token ids and ``num_classes`` the vocabulary size.
    """

    name: str
    constructor: Callable[..., nn.Module]
    input_shape: tuple[int, ...]
    num_classes: int
    dataset: str
    description: str

    def __call__(self, **kwargs: Any) -> nn.Module:
        return self.constructor(**kwargs)


MODELS: dict[str, ModelSpec] = {
    spec.name: spec
    for spec in (
        ModelSpec(
            "wrn22_2",
            wrn22_2,
            (3, 32, 32),
            10,
            "cifar10",
            "pre-activation WideResNet-22-2 (RigL CIFAR-10, SPEC §8)",
        ),
        ModelSpec(
            "resnet50_cifar",
            resnet50_cifar,
            (3, 32, 32),
            100,
            "cifar100",
            "ResNet-50, 3x3 stride-1 stem, no max-pool (reproducibility report CIFAR-100)",
        ),
        ModelSpec(
            "resnet50_imagenet",
            resnet50_imagenet,
            (3, 224, 224),
            1000,
            "imagenet",
            "ResNet-50 v1.5, 7x7 stride-2 stem + max-pool (RigL ImageNet, Table 2)",
        ),
        ModelSpec(
            "lenet300_100",
            lenet300_100,
            (1, 28, 28),
            10,
            "mnist",
            "LeNet-300-100 MLP (784-300-100-10)",
        ),
        ModelSpec(
            "digits_mlp",
            digits_mlp,
            (64,),
            10,
            "digits",
            "LeNet-300-100 on 8x8 digits (64-300-100-10), the quickstart model",
        ),
        ModelSpec(
            "char_gpt",
            char_gpt,
            (256,),
            128,
            "text",
            "character-level GPT: 2 pre-norm blocks, d_model 128, 4 heads (the charlm preset)",
        ),
        ModelSpec(
            "char_gpt_large",
            char_gpt_large,
            (1024,),
            128,
            "text",
            "character-level GPT at GPT-2 small size: 12 blocks, d_model 768, 12 heads (GPU)",
        ),
    )
}


def get_model_spec(name: str) -> ModelSpec:
    """The registry entry for ``name``; ``ValueError`` listing the registry if there is none."""
    key = str(name).lower().replace("-", "_")
    if key not in MODELS:
        raise ValueError(
            f"model={name!r} is unknown: allowed values are {', '.join(sorted(MODELS))}."
        )
    return MODELS[key]


def get_model(name: str, **kwargs: Any) -> nn.Module:
    """Build the registered model ``name`` (e.g. ``get_model("wrn22_2", num_classes=100)``)."""
    return get_model_spec(name)(**kwargs)
