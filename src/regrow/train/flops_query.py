"""A run's configuration as a FLOP query: the one seam between the config keys and
:mod:`regrow.flops.query`, shared by ``regrow flops`` and a study's derived values."""

from __future__ import annotations

from typing import Any

from torch import nn

from ..data import load_text
from ..flops import query as report
from ..models import get_model_spec
from .config import RunConfig

#: ``load_config`` requires a run directory; a FLOP query writes nothing to it.
NO_RUN_DIR = "out_dir=<regrow flops>"


def flops_query(
    config: RunConfig,
    num_classes: int | None = None,
    input_shape: tuple[int, ...] | None = None,
    total_steps: int | None = None,
) -> report.FlopsQuery:
    """The :class:`~regrow.flops.query.FlopsQuery` of the run ``config`` describes: its model
    (``num_classes`` and ``input_shape`` default to the model's), its method and arguments, and a
    run as long as the paper's for the model's dataset × ``train.multiplier`` unless
    ``total_steps`` is given. For text (no paper run) the model reads ``data.block_size``
    characters of the run's text (``data.path``) and the run is its own length."""
    spec = get_model_spec(config.model.name)
    multiplier = config.train.multiplier
    options: dict[str, Any] = {}
    if config.data.name == "text":  # the run's own text, window and steps (no paper run)
        text = load_text(config.data.path, config.data.block_size)
        num_classes, input_shape = num_classes or text.num_classes, text.input_shape
        options = text.model_options()
        passes = round(config.train.epochs * multiplier)
        total_steps = total_steps or passes * len(text.train_loader(config.train.batch_size))
    classes = num_classes or spec.num_classes
    steps = total_steps or report.paper_total_steps(spec.dataset, multiplier)
    method = config.sparsity.method_class()

    def build(width: float) -> nn.Module:
        return spec(num_classes=classes, width=width, **options)

    return report.FlopsQuery(
        build=build,
        input_shape=input_shape or spec.input_shape,
        method=method,
        args=report.resolve_method_args(method, config.sparsity.args, spec.dataset, steps),
        plan_keys=config.sparsity.plan_keys(),
        total_steps=steps,
        multiplier=multiplier,
        width=config.model.width,
        model_name=spec.name,
        num_classes=classes,
    )


def flops_report(
    query: report.FlopsQuery, match: str | float | None = None, small_dense: bool = False
) -> tuple[dict[str, Any], str]:
    """What ``regrow flops`` reports for ``query``: the sparsity matching ``match`` (a
    distribution or a ratio of the dense FLOPs), the Small-Dense width, or else the training and
    inference FLOPs; as a JSON-able dict and as text."""
    if match is not None:
        return report.matching_report(query, match)
    if small_dense:
        return report.small_dense_report(query)
    return report.training_report(query)
