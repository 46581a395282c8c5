"""The registered models (SPEC §2, §8): shapes, parameter counts, structure, registry errors."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from regrow.models import MODELS, Bottleneck, PreActBlock, ResNet, get_model, get_model_spec
from regrow.sparsity.plan import AllocationPlan


def meta_model(name: str, **kwargs) -> nn.Module:
    with torch.device("meta"):
        return get_model(name, **kwargs)


def n_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def test_registry_entries_say_their_input_shape():
    assert MODELS["wrn22_2"].input_shape == (3, 32, 32)
    assert MODELS["resnet50_cifar"].input_shape == (3, 32, 32)
    assert MODELS["resnet50_imagenet"].input_shape == (3, 224, 224)
    assert MODELS["lenet300_100"].input_shape == (1, 28, 28)
    assert MODELS["digits_mlp"].input_shape == (64,)
    assert MODELS["char_gpt"].input_shape == (256,)  # token ids: its longest context
    assert MODELS["char_gpt_large"].input_shape == (1024,)
    assert {name: spec.num_classes for name, spec in MODELS.items()} == {
        "wrn22_2": 10,
        "resnet50_cifar": 100,
        "resnet50_imagenet": 1000,
        "lenet300_100": 10,
        "digits_mlp": 10,
        "char_gpt": 128,  # a vocabulary size; a run takes its text's
        "char_gpt_large": 128,
    }


def test_unknown_model_lists_the_registry():
    with pytest.raises(ValueError, match="wrn22_2") as info:
        get_model("vgg16")
    assert "vgg16" in str(info.value) and "resnet50_imagenet" in str(info.value)
    assert get_model_spec("WRN22-2").name == "wrn22_2"


def test_wrn22_2_sparse_weights_total_1_076_480():
    model = meta_model("wrn22_2")
    params = dict(model.named_parameters())
    names = AllocationPlan.build(model).names  # stem dense
    assert "conv1.weight" not in names
    assert sum(params[n].numel() for n in names) == 1_076_480


def test_wrn22_2_structure():
    model = meta_model("wrn22_2")
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    assert model.conv1.out_channels == 16 and model.conv1.kernel_size == (3, 3)
    blocks = [m for m in model.modules() if isinstance(m, PreActBlock)]
    assert len(blocks) == 9
    assert [b.conv2.out_channels for b in blocks] == [32] * 3 + [64] * 3 + [128] * 3
    assert [b.conv1.stride[0] for b in blocks] == [1, 1, 1, 2, 1, 1, 2, 1, 1]
    # 1x1 projection exactly where the channel count changes
    shortcuts = [b for b in blocks if b.shortcut is not None]
    assert [b.shortcut.kernel_size for b in shortcuts] == [(1, 1)] * 3
    assert blocks.index(shortcuts[1]) == 3 and blocks.index(shortcuts[2]) == 6
    assert len(convs) == 1 + 18 + 3
    assert all(b.dropout.p == 0.3 for b in blocks)
    assert isinstance(model.fc, nn.Linear) and model.fc.in_features == 128


def test_wrn22_2_forward_and_options():
    model = get_model("wrn22_2", num_classes=100)
    assert model(torch.zeros(2, 3, 32, 32)).shape == (2, 100)
    half = meta_model("wrn22_2", width=0.5)
    assert half.conv1.out_channels == 8 and half.fc.in_features == 64
    assert n_params(half) < n_params(meta_model("wrn22_2"))


def test_resnet50_parameter_counts():
    # ResNet-50 v1.5 / ImageNet: the well-known 25,557,032
    assert n_params(meta_model("resnet50_imagenet")) == 25_557_032
    # CIFAR: 3x3 stem (1,728 instead of 9,408 weights), 100-way classifier
    assert n_params(meta_model("resnet50_cifar")) == 25_557_032 - 9408 + 1728 - 2_049_000 + 204_900


def test_resnet50_imagenet_is_v1_5_with_maxpool_stem():
    model = meta_model("resnet50_imagenet")
    assert model.conv1.kernel_size == (7, 7) and model.conv1.stride == (2, 2)
    assert isinstance(model.maxpool, nn.MaxPool2d)
    first = model.layer2[0]
    assert first.conv1.stride == (1, 1) and first.conv2.stride == (2, 2)
    assert sum(isinstance(m, Bottleneck) for m in model.modules()) == 3 + 4 + 6 + 3
    with torch.device("meta"):
        assert model(torch.zeros(1, 3, 224, 224)).shape == (1, 1000)


def test_resnet50_cifar_stem_and_zero_init_last_bn():
    model = meta_model("resnet50_cifar")
    assert model.conv1.kernel_size == (3, 3) and model.conv1.stride == (1, 1)
    assert isinstance(model.maxpool, nn.Identity)
    with torch.device("meta"):
        assert model(torch.zeros(2, 3, 32, 32)).shape == (2, 100)
    # the same constructor, one block per stage, on the CPU: the last BN of every block is zero
    small = ResNet(blocks=(1, 1, 1, 1), num_classes=100, stem="cifar", width=0.25)
    blocks = [m for m in small.modules() if isinstance(m, Bottleneck)]
    assert all(torch.all(b.bn3.weight == 0) for b in blocks)
    assert all(torch.all(b.bn1.weight == 1) for b in blocks)
    assert small.eval()(torch.zeros(2, 3, 32, 32)).shape == (2, 100)
    assert all(
        torch.all(b.bn3.weight == 1)
        for b in ResNet((1, 1, 1, 1), width=0.25, zero_init_residual=False).modules()
        if isinstance(b, Bottleneck)
    )


def test_lenet300_100_flattens_its_input():
    model = get_model("lenet300_100")
    assert [
        (m.in_features, m.out_features) for m in model.modules() if isinstance(m, nn.Linear)
    ] == [
        (784, 300),
        (300, 100),
        (100, 10),
    ]
    assert n_params(model) == 266_610
    assert model(torch.zeros(2, 1, 28, 28)).shape == (2, 10)


def test_width_must_be_positive():
    with pytest.raises(ValueError, match="width"):
        get_model("lenet300_100", width=0)
