"""The structured forms of the export (regrow/export/structured.py): the BSR form equals the masked
layer for random block masks (linear on rank-2 and rank-3 inputs, 1×1 conv), is offered exactly
where the weight is in blocks, and forced on an MLP trained with ``block:4`` masks gives the
masked model's outputs, loadable without regrow; the semi-structured 2:4 form is never offered on
a CPU (forcing it is one clear error) and, on a CUDA device, equals the masked layer within fp16
rounding."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch
from torch import nn

import regrow
from regrow.export import export_model
from regrow.export.csr import csr_arrays
from regrow.export.formats import FORMAT_MODES, available_modes, candidates, one_layer, one_layer_in
from regrow.export.graph import propagate_shapes
from regrow.export.inference import FP16_TOLERANCE
from regrow.export.structured import (
    BSR_COLUMNS,
    block_size,
    bsr_linear,
    is_two_four,
    replace_with_bsr,
    replace_with_semi_structured,
)
from regrow.models import get_model
from tests.export.test_export import assert_same_outputs, batch, cli, digits_run, one_thread  # noqa: F401

pytestmark = pytest.mark.filterwarnings("ignore:Sparse BSR tensor support is in beta")

CUDA = pytest.mark.skipif(
    not torch.cuda.is_available(),
    reason="to_sparse_semi_structured needs a CUDA device (Ampere or newer)",
)


def block_mask(rows: int, columns: int, b: int, density: float, seed: int = 0) -> torch.Tensor:
    """A random mask of ``b × b`` blocks, about ``density`` of them on (at least one)."""
    generator = torch.Generator().manual_seed(seed)
    blocks = torch.rand(rows // b, columns // b, generator=generator) < density
    blocks[0, 0] = True
    return blocks.repeat_interleave(b, 0).repeat_interleave(b, 1)


def masked_layer(layer: nn.Module, mask: torch.Tensor) -> nn.Module:
    with torch.no_grad():
        layer.weight.mul_(mask.reshape(layer.weight.shape))
    return layer.eval()


def rewritten(layer: nn.Module, x: torch.Tensor, rewrite) -> tuple[torch.fx.GraphModule, dict]:
    """``layer`` as a one-layer graph module rewritten by ``rewrite``, and the forms offered."""
    graph_module, node = one_layer(layer)
    propagate_shapes(graph_module, x)
    offered = {
        device: candidates(node, graph_module.layer, "auto", False, device)
        for device in ("cpu", "meta")
    }
    return one_layer_in(layer, rewrite), offered


def two_four_mask(rows: int, columns: int, seed: int = 0) -> torch.Tensor:
    """A random mask with exactly 2 of every 4 consecutive inputs on."""
    generator = torch.Generator().manual_seed(seed)
    scores = torch.rand(rows, columns // 4, 4, generator=generator)
    keep = scores.argsort(-1)[..., :2]
    mask = torch.zeros(rows, columns // 4, 4, dtype=torch.bool).scatter_(-1, keep, True)
    return mask.reshape(rows, columns)


# ------------------------------------------------------------------------------------ BSR
@pytest.mark.parametrize("b", [2, 4])
@pytest.mark.parametrize("shape", [(5, 48), (17, 48), (2, 3, 48), (32, 48)])
@pytest.mark.parametrize("bias", [True, False])
def test_bsr_linear_equals_the_masked_layer(b, shape, bias):
    layer = masked_layer(nn.Linear(48, 24, bias=bias), block_mask(24, 48, b, 0.3, seed=b))
    x = torch.randn(shape, generator=torch.Generator().manual_seed(1))
    assert block_size(layer.weight) == b
    graph_module, offered = rewritten(layer, x, replace_with_bsr)
    assert "bsr" in offered["cpu"]
    assert "bsr" not in offered["meta"]  # a device without PyTorch's BSR kernel: not offered
    with torch.inference_mode():
        expected, got = layer(x), graph_module(x)
        column = None if layer.bias is None else layer.bias.reshape(-1, 1)
        direct = bsr_linear(x, *csr_arrays(layer.weight, b), (24, 48), column)
    assert got.shape == expected.shape and got.is_contiguous()
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(direct, expected, rtol=1e-5, atol=1e-5)
    assert "regrow" not in graph_module.code and "sparse_bsr_tensor" in graph_module.code


@pytest.mark.parametrize("stride", [1, 2])
def test_bsr_1x1_conv_equals_the_masked_layer(stride):
    layer = masked_layer(nn.Conv2d(16, 8, 1, stride=stride), block_mask(8, 16, 4, 0.4))
    x = torch.randn(3, 16, 5, 5, generator=torch.Generator().manual_seed(2))
    graph_module, offered = rewritten(layer, x, replace_with_bsr)
    assert "bsr" in offered["cpu"]
    with torch.inference_mode():
        torch.testing.assert_close(graph_module(x), layer(x), rtol=1e-5, atol=1e-5)


def test_block_size_is_read_from_the_weight():
    assert block_size(block_mask(64, 128, 16, 0.2).float()) == 16  # the largest that fits
    assert block_size(block_mask(64, 128, 4, 0.2).float()) == 4
    weight = block_mask(64, 128, 4, 0.2).float()
    weight[0, 0] = 0.0  # a weight exactly zero inside an active block: still blocks of 4
    assert block_size(weight) == 4
    unstructured = torch.rand(64, 128, generator=torch.Generator().manual_seed(0)) < 0.1
    assert block_size(unstructured.float()) is None
    assert block_size(torch.zeros(8, 8)) is None
    assert block_size(block_mask(60, 128, 4, 0.2).float()) == 4  # 60 rows: not blocks of 8+
    layer = masked_layer(nn.Linear(48, 24), unstructured[:24, :48])
    x = torch.randn(5, 48)
    _, offered = rewritten(layer, x, lambda *args: None)
    assert "bsr" not in offered["cpu"] and "csr" in offered["cpu"]


def test_bsr_pads_the_input_columns_to_the_fast_kernel():
    """The columns handed to the kernel are a multiple of :data:`BSR_COLUMNS` for any batch."""
    layer = masked_layer(nn.Linear(32, 16), block_mask(16, 32, 4, 0.5))
    seen = []
    original = torch.addmm

    def spy(bias, weight, columns):
        seen.append(columns.shape[1])
        return original(bias, weight, columns)

    graph_module = one_layer_in(layer, replace_with_bsr)
    for node in graph_module.graph.nodes:
        if node.target is torch.addmm:
            node.target = spy
    graph_module.recompile()
    with torch.inference_mode():
        for rows in (1, 15, 16, 17):
            graph_module(torch.randn(rows, 32))
    assert seen and all(count % BSR_COLUMNS == 0 for count in seen)


def block_mlp(structure: str = "block:4", sparsity: float = 0.9) -> nn.Module:
    model = get_model("digits_mlp")
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    method = regrow.get_method("static")(
        model, optimizer, sparsity=sparsity, seed=0, dense_layers=[], structure=structure
    )
    method.remove()
    return model.eval()


def test_forced_bsr_export_of_a_block_mlp_equals_the_masked_model(tmp_path):
    model = block_mlp()
    exported, report = export_model(model, (64,), batch_size=1, formats="bsr", rounds=1)
    forms = {layer.name: layer.format for layer in report.layers}
    # 300 and 100 divide into blocks of 4; the 10-class head does not (masked element-wise)
    assert [forms[name] for name in sorted(forms)] == ["bsr", "bsr", "dense"], forms
    for size in (1, 9, 32):
        assert_same_outputs(model, exported, batch((64,), size))
    path = tmp_path / "model.pt"
    torch.save(exported, path)
    script = (
        "import sys, warnings; sys.modules['regrow'] = None\n"  # any import of regrow fails
        "warnings.simplefilter('ignore')\n"
        "import torch\n"
        f"m = torch.load({str(path)!r}, weights_only=False)\n"
        "print(tuple(m(torch.rand(3, 64)).shape))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "(3, 10)"


def test_auto_times_bsr_only_where_the_weight_is_in_blocks():
    model = block_mlp(sparsity=0.75)
    exported, report = export_model(model, (64,), batch_size=4, formats="auto", rounds=1)
    timed = {layer.name: layer for layer in report.layers if layer.times_ms is not None}
    assert timed
    for layer in timed.values():
        module = model.get_submodule(layer.name)
        assert ("bsr" in layer.times_ms) == (block_size(module.weight) is not None)
    assert any("bsr" in layer.times_ms for layer in timed.values())
    assert_same_outputs(model, exported, batch((64,), 6))


# ------------------------------------------------------------------------- semi-structured
def test_semi_structured_is_not_offered_on_a_cpu_and_forcing_it_is_one_clear_error():
    assert "semi_structured" in FORMAT_MODES
    assert "semi_structured" not in available_modes("cpu")
    layer = masked_layer(nn.Linear(128, 64), two_four_mask(64, 128))
    assert is_two_four(layer.weight)
    _, offered = rewritten(layer, torch.randn(4, 128), lambda *args: None)
    assert "semi_structured" not in offered["cpu"]
    model = block_mlp(structure="2:4", sparsity=0.5)
    with pytest.raises(ValueError) as error:
        export_model(model, (64,), formats="semi_structured")
    message = str(error.value)
    assert "\n" not in message and "not available on this device" in message
    assert "allowed values here are auto, dense, csr" in message and "bsr" in message


def test_regrow_export_semi_structured_on_a_cpu_exits_2_with_one_line(
    digits_run,  # noqa: F811
    tmp_path,
    capsys,
):
    if "semi_structured" in available_modes("cpu"):
        pytest.skip("this PyTorch runs semi-structured sparsity on a CPU")
    out = tmp_path / "out"
    assert cli("export", str(digits_run), str(out), "--formats", "semi_structured") == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "not available on this device" in err
    assert "allowed values" in err and not out.exists()


@CUDA
def test_semi_structured_layer_equals_the_masked_layer_on_cuda(tmp_path):
    from regrow.export.structured import semi_structured_supported

    device = torch.device("cuda")
    if not semi_structured_supported(device):
        pytest.skip("this CUDA device or build has no semi-structured sparse kernels")
    layer = masked_layer(nn.Linear(128, 64), two_four_mask(64, 128)).to(device)
    for shape in ((8, 128), (2, 5, 128)):
        x = torch.randn(shape, device=device)
        graph_module, node = one_layer(layer)
        propagate_shapes(graph_module, x)
        assert "semi_structured" in candidates(node, graph_module.layer, "auto", False, device)
        graph_module = one_layer_in(layer, replace_with_semi_structured)
        with torch.inference_mode():
            expected, got = layer(x), graph_module(x)
        assert got.dtype == expected.dtype and got.shape == expected.shape
        bound = FP16_TOLERANCE * (1 + float(expected.abs().max()))
        assert float((got - expected).abs().max()) <= bound
    path = tmp_path / "layer.pt"
    torch.save(graph_module, path)
    loaded = torch.load(path, weights_only=False)
    with torch.inference_mode():
        assert torch.equal(loaded(x), graph_module(x))


@CUDA
def test_forced_semi_structured_export_on_cuda_equals_the_masked_model():
    from regrow.export.structured import semi_structured_supported

    if not semi_structured_supported(torch.device("cuda")):
        pytest.skip("this CUDA device or build has no semi-structured sparse kernels")
    model = nn.Sequential(nn.Linear(128, 64), nn.ReLU(), nn.Linear(64, 64))
    with torch.no_grad():
        for layer in (model[0], model[2]):
            rows, columns = layer.weight.shape
            layer.weight.mul_(two_four_mask(rows, columns))
    model = model.cuda().eval()
    exported, report = export_model(model, (128,), batch_size=8, formats="semi_structured")
    assert {layer.format for layer in report.layers} == {"semi_structured"}
    x = torch.randn(8, 128, device="cuda")
    with torch.inference_mode():
        expected, got = model(x), exported(x)
    assert float((got - expected).abs().max()) <= FP16_TOLERANCE * (1 + float(expected.abs().max()))
