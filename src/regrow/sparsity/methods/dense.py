"""Dense training through the same interface, so harness code needs no special case."""

from __future__ import annotations

from ..base import Sparsifier, Traits, register


@register
class Dense(Sparsifier):
    """No masks: every weight is trained; ``sparsity`` and ``distribution`` are ignored."""

    name = "dense"
    traits = Traits(masked=False)
