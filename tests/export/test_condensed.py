"""The condensed and ELL layers of the export equal the masked layer for random masks of several
fan-ins (constant, varying, with empty rows), and the export of SRigL-trained models — an MLP, a
conv net and the transformer, its cached decode step included — equals the masked model; the
exported transformer loads without regrow and compiles."""

from __future__ import annotations

import subprocess
import sys
from functools import partial

import pytest
import torch
from torch import nn

import regrow
from regrow.export import export_model
from regrow.export.condensed import (
    LANES,
    bag_arrays,
    bag_linear,
    index_dtype,
    pack_rows,
    packed_linear,
    replace_with_packed,
)
from regrow.export.decode import decode_all
from regrow.export.formats import one_layer_in
from regrow.models import char_gpt, get_model
from tests.export.test_export import assert_same_outputs, batch, one_thread  # noqa: F401
from tests.helpers import conv_net


def weight_with_fan_ins(fan_ins: list[int], in_features: int, seed: int = 0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    weight = torch.zeros(len(fan_ins), in_features)
    for row, k in enumerate(fan_ins):
        columns = torch.randperm(in_features, generator=generator)[:k]
        weight[row, columns] = torch.randn(k, generator=generator)
    return weight


CASES = {
    "constant fan-in 1": ([1] * 6, 9, "condensed"),
    "constant fan-in 3": ([3] * 8, 20, "condensed"),
    "constant fan-in 7, two empty rows": ([7, 0, 7, 7, 0, 7], 300, "condensed"),
    "full rows": ([12] * 4, 12, "condensed"),
    "varying fan-in": ([1, 5, 2, 9, 3], 11, "ell"),
    "varying, empty rows": ([0, 4, 0, 1, 6, 0], 40, "ell"),
    "every row empty": ([0, 0, 0], 5, "ell"),
}


@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("bias", [True, False])
def test_packed_layer_equals_the_masked_layer(case, bias):
    fan_ins, in_features, form = CASES[case]
    weight = weight_with_fan_ins(fan_ins, in_features)
    packed = pack_rows(weight)
    assert packed.format == (form if any(fan_ins) else "ell")
    assert packed.indices.dtype == index_dtype(in_features)
    longest = max(max(fan_ins), 1)  # padded to the longest row, rounded up to whole lanes only
    assert packed.values.shape[1] == -(-longest // LANES) * LANES
    assert packed.values.shape[0] == max(sum(k > 0 for k in fan_ins), 1)  # empty rows not stored
    b = torch.randn(len(fan_ins)) if bias else None
    for shape in ((3, in_features), (2, 5, in_features), (in_features,)):
        x = torch.randn(shape)
        expected = nn.functional.linear(x, weight, b)
        got = packed_linear(x, packed.values, packed.indices, packed.rows, b)
        assert got.shape == expected.shape
        torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)
        bag = bag_linear(x, *bag_arrays(weight), b)  # the same rows, through embedding_bag
        assert bag.shape == expected.shape
        torch.testing.assert_close(bag, expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("stride", [1, 2])
@pytest.mark.parametrize("bias", [True, False])
def test_condensed_1x1_conv_equals_the_conv(stride, bias):
    """A 1×1 conv in the condensed form (channels moved last, after the stride) gives the conv's
    output, with an empty output channel not stored (compiled, the same graph ops run as a
    linear layer's: the transformer tests compile those)."""
    conv = nn.Conv2d(12, 6, 1, stride=stride, bias=bias).eval()
    with torch.no_grad():
        conv.weight.copy_(weight_with_fan_ins([3, 3, 0, 3, 3, 3], 12).view(6, 12, 1, 1))
    packed = pack_rows(conv.weight)
    assert packed.format == "condensed" and packed.values.shape[0] == 5
    layer = one_layer_in(conv, partial(replace_with_packed, packed=packed))
    x = torch.randn(2, 12, 5, 7)
    with torch.no_grad():
        torch.testing.assert_close(layer(x), conv(x), rtol=1e-5, atol=1e-5)


def test_compiled_packed_layer_reads_its_indices_without_a_bounds_check():
    """The gather goes through ``_unsafe_index``: the loop ``torch.compile`` writes for the layer
    tests no index, where ``x[..., indices]`` tests and branches on every weight it reads (the
    1.4–1.6× of docs/EXPORT.md). The plain gather's code, compiled the same way, has the check, so
    the assertion would catch it coming back."""
    from torch._inductor.utils import run_and_get_code

    packed = pack_rows(weight_with_fan_ins([7, 0, 7, 7], 300))
    x = torch.randn(2, 300)
    arrays = (packed.values, packed.indices, packed.rows, None)
    torch._dynamo.reset()
    got, code = run_and_get_code(torch.compile(packed_linear, dynamic=False), x, *arrays)
    torch.testing.assert_close(got, packed_linear(x, *arrays), rtol=1e-5, atol=1e-5)
    checked = torch.compile(lambda x, i: x[..., i.long()], dynamic=False)
    _, checked_code = run_and_get_code(checked, x, packed.indices)
    assert "index out of bounds" in "".join(checked_code)
    assert "index out of bounds" not in "".join(code)


def test_index_type_is_the_smallest_that_holds_the_inputs():
    assert index_dtype(256) == torch.uint8 and index_dtype(257) == torch.uint16
    assert index_dtype(65536) == torch.uint16 and index_dtype(65537) == torch.int32
    packed = pack_rows(weight_with_fan_ins([2, 2], 70_000))
    assert packed.indices.dtype == torch.int32
    x = torch.randn(2, 70_000)
    torch.testing.assert_close(
        packed_linear(x, packed.values, packed.indices, packed.rows, None),
        x @ weight_with_fan_ins([2, 2], 70_000).t(),
    )


# ----------------------------------------------------------- SRigL-trained models
def srigl_trained(model: nn.Module, inputs, targets, steps: int = 12, **settings) -> nn.Module:
    """``model`` after ``steps`` SGD steps under SRigL (an update every 3 steps, ablation at
    γ = 0.9, so neurons are really ablated), its masks left in place, in eval mode."""
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    sparsifier = regrow.SRigL(
        model,
        optimizer,
        sparsity=settings.pop("sparsity", 0.8),
        total_steps=steps * 2,
        delta_t=3,
        min_salient_fraction=0.9,
        **settings,
    )
    loss_fn = nn.CrossEntropyLoss()
    for step in range(steps):
        optimizer.zero_grad()
        out = model(inputs(step))
        loss_fn(out.reshape(-1, out.shape[-1]), targets(step).reshape(-1)).backward()
        sparsifier.step()
    sparsifier.remove()
    return model.eval()


def ablated(model: nn.Module) -> int:
    """Neurons with an all-zero weight row, over every layer with a mask."""
    count = 0
    for module in model.modules():
        mask = getattr(module, "weight_mask", None)
        if mask is not None:
            count += int((~mask.reshape(mask.shape[0], -1).any(1)).sum())
    return count


def data(shape, classes: int, seed: int = 0, tokens: bool = False):
    def make(step: int) -> torch.Tensor:
        generator = torch.Generator().manual_seed(seed * 1000 + step)
        if tokens:
            return torch.randint(0, classes, shape, generator=generator)
        return torch.randn(shape, generator=generator)

    def labels(step: int) -> torch.Tensor:
        generator = torch.Generator().manual_seed(seed * 1000 + step + 500)
        return torch.randint(0, classes, shape[: 2 if tokens else 1], generator=generator)

    return make, labels


def test_srigl_mlp_export_equals_the_masked_model():
    torch.manual_seed(0)
    inputs, targets = data((32, 64), 10)
    model = srigl_trained(get_model("digits_mlp"), inputs, targets, dense_layers=[])
    assert ablated(model) > 0
    for formats in ("condensed", "embedding_bag", "auto"):
        exported, report = export_model(model, (64,), formats=formats, rounds=2)
        assert_same_outputs(model, exported, batch((64,), 7))
        assert "regrow" not in exported.code
    exported, report = export_model(model, (64,), formats="condensed")
    assert sum(report.removed_channels.values()) > 0  # ablated neurons removed
    assert_rows_within_fan_in(model, exported, report.layers)


def assert_rows_within_fan_in(model: nn.Module, exported: nn.Module, layers) -> None:
    """Each packed layer stores at most SRigL's fan-in per row (rows whose grown weights are
    still exactly zero, or that lost columns to removed neurons, hold fewer: ELL pads them to the
    longest)."""
    for layer in layers:
        assert layer.format in ("condensed", "ell"), layer.name
        values = getattr(exported, f"{layer.name.replace('.', '_')}_{layer.format}_values")
        mask = model.get_submodule(layer.name).weight_mask
        assert values.shape[1] <= -(-int(mask.sum(1).max()) // LANES) * LANES, layer.name


def test_srigl_conv_net_export_equals_the_masked_model():
    torch.manual_seed(1)
    inputs, targets = data((8, 3, 8, 8), 10, seed=1)
    model = srigl_trained(conv_net(), inputs, targets, sparsity=0.7, dense_layers=[])
    assert ablated(model) > 0
    for formats in ("dense", "condensed", "csr", "embedding_bag", "auto"):
        exported, _ = export_model(model, (3, 8, 8), batch_size=2, formats=formats, rounds=2)
        assert_same_outputs(model, exported, batch((3, 8, 8), 3))


@pytest.fixture(scope="module")
def srigl_transformer() -> nn.Module:
    torch.manual_seed(2)
    inputs, targets = data((4, 16), 30, seed=2, tokens=True)
    model = char_gpt(30, block_size=16)
    return srigl_trained(model, inputs, targets, steps=9)


def tokens(size: int = 3, time: int = 16) -> torch.Tensor:
    return torch.randint(0, 30, (size, time), generator=torch.Generator().manual_seed(9))


@pytest.mark.parametrize("formats", ["dense", "csr", "condensed", "embedding_bag", "auto"])
def test_srigl_transformer_export_and_its_decode_step_equal_the_masked_model(
    srigl_transformer, formats
):
    model = srigl_transformer
    assert ablated(model) > 0
    exported, report = export_model(model, (16,), formats=formats, rounds=2)
    x = tokens()
    assert_same_outputs(model, exported, x)
    with torch.inference_mode():
        expected = model(x)
        for split in (16, 5, 1):  # all at once, a prefix then one by one, one by one
            got = decode_all(exported, x, split)
            torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-4)
    assert report.decode_layers is not None and report.decode_max_abs_diff < 1e-4
    if formats == "condensed":
        layers = [layer for layer in report.decode_layers if layer.name != "head"]
        assert_rows_within_fan_in(model, exported.decode, layers)
        assert sum(report.removed_channels.values()) > 0  # the MLP's ablated neurons


def test_exported_transformer_loads_without_regrow_and_compiles(srigl_transformer, tmp_path):
    exported, _ = export_model(srigl_transformer, (16,), formats="condensed")
    path = tmp_path / "model.pt"
    torch.save(exported, path)
    script = (
        "import sys; sys.modules['regrow'] = None\n"  # any import of regrow fails
        "import torch\n"
        f"m = torch.load({str(path)!r}, weights_only=False)\n"
        "x = torch.randint(0, 30, (2, 16), generator=torch.Generator().manual_seed(1))\n"
        "with torch.inference_mode():\n"
        "    full = m(x)\n"
        "    cache = m.new_cache(2)\n"
        "    first = m.decode(x[:, :15], cache, 0)\n"
        "    last = m.decode(x[:, 15:], cache, 15)\n"
        "    step = torch.compile(m.decode)\n"
        "    cache = m.new_cache(2)\n"
        "    compiled = torch.cat([step(x[:, i : i + 1], cache, i) for i in range(16)], 1)\n"
        "    whole = torch.compile(m)(x)\n"
        "print(tuple(full.shape), float((full[:, 15:] - last).abs().max()) < 1e-4,\n"
        "      float((compiled - full).abs().max()) < 1e-4, float((whole - full).abs().max()) < 1e-4)\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=600
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.strip() == "(2, 16, 30) True True True"


def test_compiled_timing_chooses_among_compiled_forms(srigl_transformer):
    exported, report = export_model(
        srigl_transformer, (16,), formats="auto", rounds=1, compiled=True
    )
    timed = [layer for layer in report.decode_layers if layer.times_ms is not None]
    assert timed and all("csr" not in layer.times_ms for layer in timed)  # CSR does not compile
    assert all(len(layer.times_ms) == 3 and "dense" in layer.times_ms for layer in timed)
    assert all(
        set(layer.times_ms) <= {"dense", "condensed", "ell", "embedding_bag"} for layer in timed
    )
    assert_same_outputs(srigl_transformer, exported, tokens())


def test_compiled_decode_benchmark_also_times_the_dense_step_eager(srigl_transformer):
    from regrow.export.bench import measure_decode, three_models

    exported, _ = export_model(srigl_transformer, (16,), formats="condensed")
    models = three_models(srigl_transformer, exported)
    timings = measure_decode(models, 2, rounds=1, warmup=1, block_seconds=0.001, compiled=True)
    assert [t.name for t in timings] == ["dense", "masked", "exported", "dense (eager)"]
    assert all(t.median_ms > 0 and t.samples_per_second > 0 for t in timings)
    assert timings[0].speedup == 1.0


def test_decode_timing_holds_the_asked_context_in_the_cache(srigl_transformer, monkeypatch):
    from regrow.export import bench
    from regrow.export.decode import TIMED_CONTEXT, step_inputs

    block = srigl_transformer.block_size
    tokens, _, position = step_inputs(srigl_transformer, 3, context=0.25)
    assert tokens.shape == (3, 1) and position == block // 4
    assert step_inputs(srigl_transformer, 3)[2] == int(block * TIMED_CONTEXT)
    positions = []

    def recording(model, batch_size, context=TIMED_CONTEXT):
        inputs = step_inputs(model, batch_size, context)
        positions.append(inputs[2])
        return inputs

    monkeypatch.setattr(bench, "step_inputs", recording)
    models = {"dense": srigl_transformer}
    bench.measure_decode(models, 1, rounds=1, warmup=1, block_seconds=0.001, context=1 / 8)
    bench.measure_decode(models, 1, rounds=1, warmup=1, block_seconds=0.001)
    assert positions == [block // 8, int(block * TIMED_CONTEXT)]
