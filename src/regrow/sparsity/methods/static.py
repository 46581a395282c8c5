"""Static sparsity: a random mask at initialisation, never changed (SPEC §4)."""

from __future__ import annotations

from ..base import Sparsifier, register


@register
class Static(Sparsifier):
    """Random masks from the chosen distribution, fixed for the whole run."""

    name = "static"
