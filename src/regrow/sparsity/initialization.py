"""Sparsity-aware initialisation: the variance of each neuron's weights set by its sparse fan-in.

A dense initialiser draws a layer's weights with a variance set by the layer's fan-in ``n`` (PyTorch's
default for ``Linear`` and ``Conv``, Kaiming fan-in, LeCun: ``Var ∝ 1/n``). Once a mask leaves an
output neuron ``k < n`` inputs, the pre-activation's variance shrinks by ``k/n``, and at 95–97 %
sparsity the signal fades layer by layer. Evci et al. (2022, "Gradient flow in sparse neural
networks") draw each neuron's weights with the variance its *sparse* fan-in implies instead; the SRigL
reference code does so by default.
"""

from __future__ import annotations

import torch

from .layers import rows_view

#: ``dense``: the model's own initialisation (the papers' protocol); ``sparse_fan_in``: each active
#: row rescaled to its sparse fan-in (:func:`scale_to_sparse_fan_in_`).
INITS = ("dense", "sparse_fan_in")


def check_init(init: object) -> str:
    """``init`` if it is one of :data:`INITS`; else one ``ValueError`` naming the allowed values."""
    if init not in INITS:
        raise ValueError(
            f"init={init!r} is unknown: allowed values are {', '.join(map(repr, INITS))} "
            "(sparse_fan_in: each neuron's initial weights at the variance of its sparse fan-in)."
        )
    return str(init)


@torch.no_grad()
def scale_to_sparse_fan_in_(
    weight: torch.Tensor, mask: torch.Tensor, transposed: bool = False
) -> torch.Tensor:
    """Rescale each output neuron's weights, in place, to the variance of its sparse fan-in.

    With ``n`` the row's dense fan-in (inputs × kernel size) and ``k_i`` the active weights of row
    ``i``, every weight of the row is multiplied by ``sqrt(n / k_i)``, so

        Var(w_i) = Var_dense · n / k_i,

    which is what an initialiser with ``Var ∝ 1/fan_in`` gives at fan-in ``k_i``, from the same
    distribution family (uniform stays uniform) and without drawing new numbers. An initialiser
    whose variance follows the fan-out gets the same factor ``n / k_i``. Rows that are full or empty
    are unchanged. ``transposed``: the weight is stored ``[in, out]`` (``Conv1D``). Returns the
    per-row factors.
    """
    rows = rows_view(mask, transposed)
    fan_in = rows.sum(dim=1).to(torch.float64)
    factor = torch.where(fan_in > 0, (rows.shape[1] / fan_in.clamp(min=1)).sqrt(), 1.0)
    shape = (1, -1) if transposed else (-1,) + (1,) * (weight.dim() - 1)
    weight.mul_(factor.to(weight.dtype).view(shape))
    return factor
