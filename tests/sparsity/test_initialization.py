"""Sparsity-aware initialisation (``init="sparse_fan_in"``): each active row's variance follows its
sparse fan-in; the default leaves the model's initial weights alone."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

import regrow
from regrow.sparsity.initialization import scale_to_sparse_fan_in_
from tests.helpers import MODELS, OPTIMIZERS


def _layer_model(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    # 800 inputs: PyTorch's default init draws U(-1/sqrt(800), 1/sqrt(800)), variance 1/(3·800).
    return nn.Sequential(nn.Linear(800, 300), nn.ReLU(), nn.Linear(300, 10))


def _build(model: nn.Module, init: str, method: str = "static", sparsity: float = 0.95):
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    return regrow.get_method(method)(
        model, optimizer, sparsity=sparsity, distribution="uniform", total_steps=100,
        dense_layers=[], init=init, seed=1,
    )  # fmt: skip


@pytest.mark.parametrize("init", ["dense", "sparse_fan_in"])
def test_each_active_row_has_the_variance_of_its_own_fan_in(init: str) -> None:
    """Row i of the 800-input layer keeps k_i ≈ 40 weights (binomial). Under sparse_fan_in each row's
    3·Σw² estimates k_i · Var(w_i) · 3 = 1 whatever k_i is; under dense it is k_i / 800 ≈ 0.05.
    The mean over 300 rows has a standard deviation of about 0.008 (so 0.05 is 6 of them)."""
    model = _layer_model()
    sp = _build(model, init)
    weight, mask = model[0].weight.detach(), sp.masks["0.weight"]
    fan_in = mask.sum(dim=1).double()
    per_row = 3.0 * weight.double().pow(2).sum(dim=1)
    active = fan_in > 0
    expected = torch.ones_like(per_row) if init == "sparse_fan_in" else fan_in / 800
    assert (per_row[active] - expected[active]).mean().abs() < 0.05
    # Not an average that hides a trend: rows of small and of large fan-in agree.
    low, high = active & (fan_in < fan_in.median()), active & (fan_in > fan_in.median())
    if init == "sparse_fan_in":
        assert abs(per_row[low].mean() - 1) < 0.08 and abs(per_row[high].mean() - 1) < 0.08
    else:
        assert per_row[high].mean() > per_row[low].mean() * 1.2


def test_sparse_fan_in_multiplies_each_row_by_the_root_of_its_density_inverse() -> None:
    """The exact factor sqrt(n / k_i), the inactive weights at zero, the distribution family kept."""
    dense = _layer_model(3)
    before = dense[0].weight.detach().clone()
    sp = _build(_layer_model(3), "sparse_fan_in")
    model = sp.model
    mask = sp.masks["0.weight"]
    factor = (800 / mask.sum(dim=1).float()).sqrt().unsqueeze(1)
    expected = torch.where(mask, before * factor, torch.zeros_like(before))
    torch.testing.assert_close(model[0].weight.detach(), expected)
    bound = 1 / math.sqrt(800)
    row_bound = (factor.squeeze(1) * bound).unsqueeze(1)
    assert torch.all(model[0].weight.detach().abs() <= row_bound + 1e-7)  # still uniform per row


def test_dense_init_keeps_the_models_weights_where_active() -> None:
    before = _layer_model(5)[0].weight.detach().clone()
    sp = _build(_layer_model(5), "dense")
    mask = sp.masks["0.weight"]
    assert torch.equal(sp.model[0].weight.detach(), torch.where(mask, before, 0.0))


def test_full_rows_are_unchanged_so_methods_that_start_dense_are_unaffected() -> None:
    before = _layer_model(7)[0].weight.detach().clone()
    sp = _build(_layer_model(7), "sparse_fan_in", method="pruning")
    assert torch.equal(sp.model[0].weight.detach(), before)


def test_conv_and_transposed_weights_scale_per_output_neuron() -> None:
    conv = torch.randn(6, 4, 3, 3)
    mask = torch.rand(conv.shape) < 0.3
    mask[0] = False  # an empty row stays as it is (zero)
    w = conv * mask
    scaled = w.clone()
    scale_to_sparse_fan_in_(scaled, mask)
    k = mask.reshape(6, -1).sum(dim=1).clamp(min=1).float()
    torch.testing.assert_close(scaled, w * (36 / k).sqrt().view(-1, 1, 1, 1))
    # A Conv1D weight is stored [in, out]: its neurons are columns.
    stored = w.reshape(6, -1).t().contiguous()
    scale_to_sparse_fan_in_(stored, mask.reshape(6, -1).t(), transposed=True)
    torch.testing.assert_close(stored, scaled.reshape(6, -1).t())


@pytest.mark.parametrize("method", ["static", "set", "rigl", "srigl"])
def test_every_masked_method_starts_from_the_rescaled_rows(method: str) -> None:
    """The same model and seed under both inits: equal masks, rows scaled by sqrt(n / k)."""
    built = {}
    for init in ("dense", "sparse_fan_in"):
        torch.manual_seed(0)
        model = MODELS["mlp"][0]()
        built[init] = regrow.get_method(method)(
            model, OPTIMIZERS["sgd_momentum"](model.parameters()), sparsity=0.9,
            total_steps=100, init=init, **({"delta_t": 10} if method != "static" else {}),
        )  # fmt: skip
    dense, sparse = built["dense"], built["sparse_fan_in"]
    scaled_somewhere = False
    for name, p_dense, p_sparse in zip(dense.names, dense.params, sparse.params, strict=True):
        assert torch.equal(dense.masks[name], sparse.masks[name])
        rows = dense.rows(name, dense.masks[name])
        k = rows.sum(dim=1, keepdim=True).float()
        factor = torch.where(k > 0, (rows.shape[1] / k.clamp(min=1)).sqrt(), 1.0)
        expected = dense.rows(name, p_dense.detach()) * factor
        torch.testing.assert_close(sparse.rows(name, p_sparse.detach()), expected)
        scaled_somewhere |= bool((factor > 1).any())
    assert scaled_somewhere


def test_start_from_masks_rescales_the_given_weights_and_needs_them() -> None:
    model = _layer_model(9)
    initial = {n: p.detach().clone() for n, p in model.named_parameters()}
    sp = _build(model, "sparse_fan_in")
    other = _build(_layer_model(10), "dense").masks
    with pytest.raises(ValueError, match="pass weights="):
        sp.start_from_masks(other)
    sp.start_from_masks(other, weights=initial)
    mask = other["0.weight"]
    factor = (800 / mask.sum(dim=1).float()).sqrt().unsqueeze(1)
    torch.testing.assert_close(
        model[0].weight.detach(), torch.where(mask, initial["0.weight"] * factor, 0.0)
    )


def test_an_unknown_init_is_one_value_error_naming_the_allowed_values() -> None:
    with pytest.raises(
        ValueError, match="init='kaiming' is unknown: allowed values are 'dense', 'sparse_fan_in'"
    ):
        _build(_layer_model(), "kaiming")
