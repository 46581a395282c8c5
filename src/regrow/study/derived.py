"""Derived values of a study's runs, computed by regrow's own solvers: the equal-FLOP sparsity
(``derived: {sparsity.sparsity: {equal_flops_of: DIST}}``) and the recorded values
(``record: [model_width]``). See docs/STUDIES.md.

Each value is the one the training harness and ``regrow flops`` compute, through the same
functions; results are cached per process.
"""

from __future__ import annotations

from typing import Any

from ..models import get_model_spec
from ..train.config import RunConfig, load_config
from ..train.flops_query import NO_RUN_DIR, flops_query, flops_report
from .schema import Study

__all__ = ["equal_flops_sparsity", "record_values"]

# Solving builds a model; assignments (and plans in one process) asking for the same value share it.
_DERIVED_CACHE: dict[tuple[Any, ...], Any] = {}


def equal_flops_sparsity(preset: str | None, overrides: list[str], reference: str) -> float:
    """The sparsity at which the run's distribution costs the inference FLOPs of ``reference``
    at the run's sparsity: exactly what ``regrow flops --preset P <overrides> --match-flops
    REFERENCE`` reports as ``matched_sparsity`` (the same query and report)."""
    key = ("match", preset, tuple(overrides), reference)
    if key not in _DERIVED_CACHE:
        kept = [o for o in overrides if not o.startswith(("out_dir=", "seed="))]
        query = flops_query(load_config(preset, [NO_RUN_DIR, *kept]))
        result, _ = flops_report(query, match=reference)
        _DERIVED_CACHE[key] = float(result["matched_sparsity"])
    return _DERIVED_CACHE[key]


def record_values(study: Study, config: RunConfig) -> dict[str, Any]:
    """The values ``study.record`` asks for (:data:`regrow.study.schema.RECORDS`), from the method's own hooks as the
    training harness and ``regrow flops`` call them: ``model_width`` is the width multiplier the
    run's method trains at (Small-Dense's solved width; the configured one otherwise)."""
    found: dict[str, Any] = {}
    if "model_width" in study.record:
        spec, sparsity = get_model_spec(config.model.name), config.sparsity
        key = (
            "width",
            config.model.name,
            config.model.width,
            sparsity.method,
            repr(sparsity.plan_keys()),
        )
        if key not in _DERIVED_CACHE:
            method = sparsity.method_class()

            def build(width: float) -> Any:
                return spec(num_classes=spec.num_classes, width=width)

            _DERIVED_CACHE[key] = float(
                method.model_width(
                    build, config.model.width, sparsity.method_args(), **sparsity.plan_keys()
                )
            )
        found["model_width"] = _DERIVED_CACHE[key]
    return found
