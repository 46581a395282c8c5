"""regrow.export: the compressed checkpoint round-trips bit for bit; the inference model (dead
neurons removed, batch norm folded, CSR layers) computes what the masked model computes;
``regrow export`` and ``regrow bench-inference`` on a real run directory; bad inputs exit 2."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

import regrow
from regrow.cli import main
from regrow.export import (
    compress_state_dict,
    decompress_state_dict,
    export_model,
    load_compressed,
    load_run,
    pack_bits,
    size_report,
    strip_masks,
    unpack_bits,
)
from regrow.export import formats as export_formats
from regrow.export.compress import save_compressed
from regrow.export.inference import TOLERANCE, kept_run
from regrow.models import get_model
from regrow.sparsity.masks import register_masks
from regrow.train import load_config, train
from tests.helpers import conv_net


@pytest.fixture(autouse=True)
def one_thread():
    """One torch thread (the machine may be shared; restored afterwards)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def masked(model: nn.Module, sparsity: float, seed: int = 0, **plan) -> nn.Module:
    """``model`` with Static (random) masks at ``sparsity``, and random BN statistics (so folding
    and dead-channel constants are exercised), in eval mode."""
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    regrow.Static(model, optimizer, sparsity=sparsity, seed=seed, **plan).remove()
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, nn.BatchNorm2d):
                count = module.num_features
                module.weight.copy_(0.5 + torch.rand(count, generator=generator))
                module.bias.copy_(0.2 * torch.randn(count, generator=generator))
                module.running_mean.copy_(0.1 * torch.randn(count, generator=generator))
                module.running_var.copy_(0.5 + torch.rand(count, generator=generator))
    return model.eval()


def ablate(model: nn.Module, layer: str, rows: list[int]) -> None:
    """Switch off every connection of output neurons ``rows`` of ``layer`` (mask and weight)."""
    module = model.get_submodule(layer)
    with torch.no_grad():
        module.weight_mask[rows] = False
        module.weight[rows] = 0.0


def assert_same_outputs(reference: nn.Module, exported: nn.Module, x: torch.Tensor) -> None:
    with torch.inference_mode():
        expected, got = reference.eval()(x), exported(x)
    bound = TOLERANCE * (1 + float(expected.abs().max()))
    assert float((expected - got).abs().max()) <= bound


def batch(shape: tuple[int, ...], size: int = 5) -> torch.Tensor:
    return torch.randn((size, *shape), generator=torch.Generator().manual_seed(7))


# ---------------------------------------------------------------- compressed checkpoint
def test_bits_are_packed_like_numpy_and_unpack_to_the_same_mask():
    for count in (1, 7, 8, 9, 301):
        bits = torch.rand(count, generator=torch.Generator().manual_seed(count)) > 0.5
        packed = pack_bits(bits)
        assert packed.dtype == torch.uint8 and packed.numel() == (count + 7) // 8
        assert np.array_equal(packed.numpy(), np.packbits(bits.numpy()))
        assert torch.equal(unpack_bits(packed, (count,)), bits)


def bitwise_equal(a: torch.Tensor, b: torch.Tensor) -> bool:
    if a.dtype != b.dtype or a.shape != b.shape:
        return False
    if a.is_floating_point():
        return torch.equal(a.view(torch.int32), b.view(torch.int32))
    return torch.equal(a, b)


@pytest.mark.parametrize("sparsity", [0.5, 0.9, 0.99])
def test_compressed_checkpoint_round_trips_bit_for_bit(sparsity):
    model = masked(get_model("wrn22_2", width=0.25), sparsity)
    state = model.state_dict()
    assert any(k.endswith("_mask") for k in state)
    back = decompress_state_dict(compress_state_dict(state))
    assert list(back) == list(state)  # every key, masks included, in order
    for key in state:
        assert torch.equal(back[key], state[key]), key
        assert bitwise_equal(back[key], state[key]), key  # -0.0 where a weight was masked too
    rebuilt = get_model("wrn22_2", width=0.25)
    register_masks(rebuilt, {k[:-5]: v for k, v in back.items() if k.endswith("_mask")})
    rebuilt.load_state_dict(back)


def test_compressed_file_is_smaller_than_the_dense_one_at_90_percent(tmp_path):
    model = masked(get_model("wrn22_2", width=0.5), 0.9)
    state = model.state_dict()
    sizes = size_report(state)
    assert sizes["compressed_bytes"] < 0.25 * sizes["dense_bytes"]
    path = tmp_path / "compressed.pt"
    save_compressed(state, path)
    assert path.stat().st_size == sizes["compressed_bytes"]
    torch.load(path, weights_only=True)  # plain data: no pickled code needed
    back = load_compressed(path)
    assert all(bitwise_equal(back[k], state[k]) for k in state)
    # without the signs of the zeros: smaller, still equal tensor for tensor
    unsigned = size_report(state, zero_signs=False)
    assert unsigned["compressed_bytes"] < sizes["compressed_bytes"]
    plain = decompress_state_dict(compress_state_dict(state, zero_signs=False))
    assert all(torch.equal(plain[k], state[k]) for k in state)


def test_a_tensor_not_zero_where_its_mask_is_off_is_kept_whole():
    state = {"w": torch.tensor([1.0, 2.0, 3.0]), "w_mask": torch.tensor([True, False, True])}
    compressed = compress_state_dict(state)
    assert compressed["entries"]["w"]["kind"] == "tensor"
    back = decompress_state_dict(compressed)
    assert torch.equal(back["w"], state["w"]) and torch.equal(back["w_mask"], state["w_mask"])
    with pytest.raises(ValueError, match="not a regrow compressed checkpoint"):
        decompress_state_dict({"model": {}})


# ------------------------------------------------------------------- inference model
@pytest.mark.parametrize("sparsity", [0.5, 0.9, 0.98])
@pytest.mark.parametrize("formats", ["dense", "csr", "condensed", "embedding_bag", "auto"])
def test_mlp_exported_outputs_match(sparsity, formats):
    model = masked(get_model("digits_mlp"), sparsity, dense_layers=[]).train()
    exported, report = export_model(model, (64,), batch_size=1, formats=formats, rounds=2)
    assert model.training  # left in the mode it was in
    assert_same_outputs(model, exported, batch((64,), 9))  # another batch size than timed
    chosen = {layer.name: layer.format for layer in report.layers}
    if formats == "auto":  # timed where sparse enough; the choice itself depends on the machine
        timed = [layer for layer in report.layers if layer.times_ms is not None]
        assert {layer.name for layer in timed} == {
            layer.name for layer in report.layers if layer.density <= 0.5
        }
        forms = {"dense", "csr", "ell", "embedding_bag"}
        assert all(set(layer.times_ms) == forms for layer in timed)
    else:  # forced: every layer (random masks: rows of different fan-in → ELL; dense → condensed)
        expected = {
            layer.name: {"dense": "dense", "csr": "csr", "embedding_bag": "embedding_bag"}.get(
                formats
            )
            or ("condensed" if layer.density == 1 else "ell")
            for layer in report.layers
        }
        assert chosen == expected
    assert "regrow" not in exported.code


def test_auto_also_times_the_whole_graph_with_every_layer_sparse(monkeypatch):
    """A layer that loses to dense timed alone may win inside the model: "auto" times the whole
    graph dense, with the per-layer choices and with every layer sparse, and keeps the layer
    forms of the contender it keeps."""
    model = masked(get_model("digits_mlp"), 0.9, dense_layers=[])
    names = [name for name, m in model.named_modules() if isinstance(m, nn.Linear)]
    first = model.get_submodule(names[0]).weight.shape
    assert all(model.get_submodule(name).weight.shape != first for name in names[1:])

    def timed(module, shape, forms, rounds, compiled, device="cpu"):  # only the first layer wins
        sparse = 0.5 if module.weight.shape == first else 2.0
        return {"dense": 1.0, **dict.fromkeys(forms, sparse)}

    monkeypatch.setattr(export_formats, "time_forms", timed)
    exported, report = export_model(model, (64,), batch_size=1, formats="auto", rounds=2)
    assert set(report.model_ms) == {"dense", "sparse", "all_sparse"}
    kept = kept_run(report.model_ms)
    expected = {"dense": set(), "sparse": {names[0]}, "all_sparse": set(names)}[kept]
    assert set(report.sparse_layers()) == expected
    assert_same_outputs(model, exported, batch((64,), 9))


def test_the_kept_graph_is_the_faster_sparse_one_within_the_margin():
    assert kept_run({"dense": 1.0, "sparse": 0.8, "all_sparse": 0.5}) == "all_sparse"
    assert kept_run({"dense": 1.0, "sparse": 0.8, "all_sparse": 0.95}) == "sparse"
    assert kept_run({"dense": 1.0, "all_sparse": 0.89}) == "all_sparse"
    assert kept_run({"dense": 1.0, "sparse": 0.95}) == "dense"  # MARGIN: 0.9


def test_mlp_ablated_neurons_are_removed_and_their_bias_folded():
    model = masked(get_model("digits_mlp"), 0.9, dense_layers=[])
    with torch.no_grad():  # non-zero biases: an ablated neuron carries relu(bias) onward
        model.fc1.bias.copy_(torch.linspace(-0.5, 0.5, 300))
        model.fc2.bias.copy_(torch.linspace(-0.3, 0.7, 100))
    ablate(model, "fc1", list(range(0, 300, 3)))  # 100 neurons
    ablate(model, "fc2", [1, 2, 3, 50])
    exported, report = export_model(model, (64,), formats="dense")
    assert exported.fc1.out_features <= 200 and exported.fc2.in_features <= 200
    assert exported.fc2.out_features <= 96 and exported.fc3.in_features <= 96
    assert exported.fc1.weight.shape[0] == exported.fc2.weight.shape[1]
    assert report.removed_channels["fc1"] >= 100 and report.removed_channels["fc2"] >= 4
    assert_same_outputs(model, exported, batch((64,)))
    # the masked model itself is untouched
    assert model.fc1.out_features == 300 and model.fc1.weight_mask.shape == (300, 64)


@pytest.mark.parametrize("sparsity", [0.7, 0.95])
def test_small_conv_net_exported_outputs_match(sparsity):
    model = masked(conv_net(), sparsity)
    # conv 1 (stride 2, bias) feeds ReLU → the 1×1 conv: ablated rows are folded and removed
    ablate(model, "3", [0, 5, 9])
    for formats in ("dense", "csr"):
        exported, report = export_model(model, (3, 8, 8), formats=formats)
        assert_same_outputs(model, exported, batch((3, 8, 8)))
        assert report.removed_channels.get("3", 0) >= 3
        assert report.layers[0].folded_batch_norm == "1"  # conv → BN: folded
    assert {layer.name: layer.format for layer in report.layers}["5"] == "csr"  # the 1×1 conv


@pytest.mark.parametrize("sparsity", [0.8, 0.9, 0.95])
def test_wrn_exported_outputs_match(sparsity):
    model = masked(get_model("wrn22_2", width=0.25), sparsity, seed=3)
    for formats in ("dense", "csr"):
        exported, report = export_model(model, (3, 32, 32), batch_size=2, formats=formats)
        assert_same_outputs(model, exported, batch((3, 32, 32), 3))
    csr_layers = report.sparse_layers()
    assert "fc" in csr_layers and "group2.0.shortcut" in csr_layers  # 1×1, stride 2
    folded = {layer.name: layer.folded_batch_norm for layer in report.layers}
    assert folded["group1.1.conv1"] == "group1.1.bn2"  # conv → BN folded; pre-activation BN kept


def test_wrn_full_width_exported_outputs_match():
    model = masked(get_model("wrn22_2"), 0.9, seed=1)
    exported, _ = export_model(model, (3, 32, 32), formats="csr")
    assert_same_outputs(model, exported, batch((3, 32, 32), 2))


def test_wrn_ablated_channels_are_removed_where_safe():
    model = masked(get_model("wrn22_2", width=0.25), 0.9, seed=2)
    block = model.group2[1]  # conv1 (3×3) → bn2 → relu → dropout → conv2 (3×3, padded)
    channels = block.conv1.out_channels
    rows = list(range(0, channels, 2))
    ablate(model, "group2.1.conv1", rows)
    with torch.no_grad():  # a dead channel leaves bn2 as β (running mean 0): relu(β) reaches conv2
        block.bn2.running_mean[rows] = 0.0
        block.bn2.bias[rows[: len(rows) // 2]] = -0.5  # relu → 0: safe to remove
        block.bn2.bias[rows[len(rows) // 2 :]] = 0.5  # a constant 0.5 into a padded conv: kept
    ablate(model, "group3.0.shortcut", [0, 1])  # feeds a residual add: kept at full size
    exported, report = export_model(model, (3, 32, 32), formats="dense")
    assert_same_outputs(model, exported, batch((3, 32, 32), 2))
    removed = len(rows) // 2
    conv1 = exported.get_submodule("group2.1.conv1")
    assert conv1.out_channels == channels - removed
    assert exported.get_submodule("group2.1.conv2").in_channels == channels - removed
    assert report.kept_dead["group2.1.conv1"][0] == len(rows) - removed
    assert "padded conv" in report.kept_dead["group2.1.conv1"][1]
    assert exported.get_submodule("group3.0.shortcut").out_channels == 32
    assert "add" in report.kept_dead["group3.0.shortcut"][1]


def test_strip_masks_gives_the_plain_model_with_the_same_weights():
    model = masked(get_model("digits_mlp"), 0.9)
    plain = strip_masks(model)
    assert not [n for n, _ in plain.named_buffers() if n.endswith("_mask")]
    assert torch.equal(plain.fc2.weight, model.fc2.weight)
    assert_same_outputs(model, plain, batch((64,)))


# ----------------------------------------------------------------- the two commands
def cli(*argv: str) -> int:
    """``regrow ARGV`` through the real entry point."""
    return main(list(argv))


@pytest.fixture(scope="module")
def digits_run(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("runs") / "quickstart"
    overrides = [
        f"out_dir={out}",
        "train.epochs=1",
        "sparsity.sparsity=0.9",
        "sparsity.args.delta_t=10",
    ]
    train(load_config("quickstart", overrides))
    return out


def test_export_writes_the_files_and_the_exported_model_matches(digits_run, tmp_path, capsys):
    out = tmp_path / "export"
    assert cli("export", str(digits_run), str(out), "--batch-size", "4") == 0
    printed = capsys.readouterr().out
    assert "compressed checkpoint" in printed and "dense checkpoint" in printed
    assert "ratio compressed/dense" in printed
    assert sorted(p.name for p in out.iterdir()) == ["compressed.pt", "export.json", "model.pt"]
    info = json.loads((out / "export.json").read_text())
    assert info["model"] == "digits_mlp" and info["export"]["batch_size"] == 4
    assert info["sizes"]["compressed_bytes"] < info["sizes"]["dense_bytes"]
    # the compressed checkpoint is the run's model state_dict, bit for bit
    saved = torch.load(digits_run / "checkpoint.pt", weights_only=False)["model"]
    back = load_compressed(out / "compressed.pt")
    assert list(back) == list(saved) and all(bitwise_equal(back[k], saved[k]) for k in saved)
    # the inference model computes what the trained masked model computes
    exported = torch.load(out / "model.pt", weights_only=False)
    assert_same_outputs(load_run(digits_run).model, exported, batch((64,), 6))
    # exporting again into the same OUT overwrites that export
    assert cli("export", str(digits_run), str(out), "--formats", "dense") == 0


def test_the_exported_model_loads_without_regrow(digits_run, tmp_path):
    out = tmp_path / "export"
    assert cli("export", str(digits_run), str(out), "--formats", "csr") == 0
    script = (
        "import sys; sys.modules['regrow'] = None\n"  # any import of regrow fails
        "import torch\n"
        f"m = torch.load({str(out / 'model.pt')!r}, weights_only=False)\n"
        "print(tuple(m(torch.rand(3, 64)).shape))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "(3, 10)"


def test_bench_inference_prints_one_table(digits_run, tmp_path, capsys):
    out = tmp_path / "export"
    assert cli("export", str(digits_run), str(out)) == 0
    capsys.readouterr()
    for source in ([str(out)], [str(digits_run)], ["--model", "digits_mlp"]):
        assert cli("bench-inference", *source, "--rounds", "2", "--threads", "1") == 0
        printed = capsys.readouterr().out
        assert "1 thread(s)" in printed and "compressed" in printed
        table = [line for line in printed.splitlines() if line.startswith("| ")]
        assert [line.split("|")[1].strip() for line in table[1:]] == [
            "dense",
            "masked",
            "exported",
        ]
    assert cli("bench-inference", str(digits_run), "--rounds", "1", "--json") == 0
    result = json.loads(capsys.readouterr().out)
    assert [t["name"] for t in result["timings"]] == ["dense", "masked", "exported"]


def test_bad_inputs_are_one_line_and_exit_2(digits_run, tmp_path, capsys):
    empty = tmp_path / "empty"
    empty.mkdir()
    a_file = tmp_path / "a_file"
    a_file.write_text("x")
    cases = [
        (("export", str(empty), str(tmp_path / "o1")), "has no checkpoint.pt"),
        (("export", str(tmp_path / "missing"), str(tmp_path / "o2")), "not a directory"),
        (("export", str(digits_run), str(a_file)), "is not a directory"),
        (("export", str(digits_run), str(digits_run)), "holds no export"),
        (("export", str(digits_run), str(tmp_path / "o3"), "--batch-size", "0"), "batch-size"),
        (("bench-inference",), "give RUN_DIR or EXPORT"),
        (("bench-inference", str(empty)), "has no checkpoint.pt"),
        (("bench-inference", "--model", "nope"), "allowed values"),
    ]
    for argv, message in cases:
        assert cli(*argv) == 2, argv
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and "error:" in err and message in err, (argv, err)
    assert not (tmp_path / "o1").exists() and not (tmp_path / "o3").exists()


# --- issue 18, item 7: a partial run is exported with a word, and export.json says so
def test_a_partial_run_is_exported_with_one_line_saying_so(digits_run, tmp_path, capsys):
    part = tmp_path / "part"
    overrides = [
        f"out_dir={part}",
        "train.epochs=2",
        "train.stop_at_step=20",
        "sparsity.args.delta_t=10",
    ]
    assert train(load_config("quickstart", overrides))["status"] == "stopped"
    capsys.readouterr()
    assert cli("export", str(part), str(tmp_path / "out")) == 0
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith(f"regrow export: warning: {part} is partial")
    assert "step 20" in err and f"regrow train --resume {part}" in err
    info = json.loads((tmp_path / "out" / "export.json").read_text())
    assert (info["partial"], info["step"]) == (True, 20)
    # a finished run: no word, "partial": false
    assert cli("export", str(digits_run), str(tmp_path / "done")) == 0
    assert capsys.readouterr().err == ""
    info = json.loads((tmp_path / "done" / "export.json").read_text())
    assert info["partial"] is False and info["step"] > 20


def test_an_export_of_another_run_is_never_overwritten(digits_run, tmp_path, capsys):
    """issue 18, found as a new user: `regrow export B OUT` silently replaced OUT's export of A."""
    other = tmp_path / "other_run"
    shutil.copytree(digits_run, other)
    out = tmp_path / "export"
    assert cli("export", str(digits_run), str(out), "--formats", "dense") == 0
    before = (out / "export.json").read_bytes()
    capsys.readouterr()
    assert cli("export", str(other), str(out), "--formats", "dense") == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "holds the export of another run" in err, err
    assert (out / "export.json").read_bytes() == before  # untouched
    assert cli("export", str(digits_run), str(out), "--formats", "dense") == 0  # same run: replaced
