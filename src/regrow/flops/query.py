"""What ``regrow flops`` reports, as a JSON-ready dict and as text (SPEC §7).

Three questions about a model family, a method with its arguments and the allocation keys every
method shares (``sparsity``, ``distribution``, ``power``, ``dense_layers``, ``custom_densities``):

- :func:`training_report`: per-layer and total inference FLOPs of the model the method trains, and
  its training FLOPs as a multiple of 1× dense training, from the method's own hooks and traits
  (``model_width``, ``mean_inference_flops``, :func:`~regrow.flops.training.method_training_flops`),
  so a user's registered method is counted with no change here;
- :func:`matching_report`: the sparsity at which the distribution costs the inference FLOPs of
  another distribution (or a fraction of the dense model's);
- :func:`small_dense_report`: the width of the dense model with as many parameters as the sparse
  one keeps.

The allocation is one :class:`~regrow.sparsity.plan.AllocationPlan` per model. Metric names mean
the same as in a run's ``summary.json``: ``inference_flops`` (``f_S``, forward FLOPs per sample),
``dense_inference_flops`` (``f_D`` of the full-width dense model), ``inference_flops_ratio``
(``f_S / f_D``), ``train_flops_per_sample`` (of the ×M run) and ``train_flops_ratio`` (training
FLOPs of the ×M run over 1× dense training). The command line turns a train config into a
:class:`FlopsQuery`; nothing here reads a config or a registry of models.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from ..sparsity.args import MethodArgs
from ..sparsity.base import Sparsifier, get_method
from ..sparsity.plan import AllocationPlan
from ..sparsity.schedules import PAPER_CIFAR_STEPS
from .counter import FlopProfile, FlopReport, profile_model
from .matching import flops_at_sparsity, kept_parameter_count, matching_sparsity, parameter_count
from .training import MethodFlops, method_training_flops

__all__ = [
    "PAPER_RUNS",
    "FlopsQuery",
    "InputShapeError",
    "PaperRun",
    "matching_report",
    "paper_run",
    "paper_total_steps",
    "resolve_method_args",
    "small_dense_report",
    "training_report",
]


@dataclass(frozen=True)
class PaperRun:
    """The run the paper counts a method's training FLOPs over: its optimizer steps (×1) and the
    gradual-pruning window (``None``: the Pruning default, the CIFAR window scaled to the run)."""

    total_steps: int
    prune_begin: int | None = None
    prune_end: int | None = None


#: CIFAR: the paper's run (SPEC §5; Pruning from 20,000 to 75,000 every 1,000 is the method's own
#: default). ImageNet: the schedule of the RigL authors' ResNet-50 FLOP count (32,000 steps at
#: batch 4,096, pruning from 10,000 to 25,000 every 1,000; Gale et al. 2019 via the official
#: counting notebook).
PAPER_RUNS: dict[str, PaperRun] = {
    "cifar": PaperRun(PAPER_CIFAR_STEPS),
    "imagenet": PaperRun(32_000, 10_000, 25_000),
}


def paper_run(dataset: str) -> PaperRun:
    """The paper's run for a model trained on ``dataset`` (ImageNet's, else CIFAR's)."""
    return PAPER_RUNS["imagenet" if dataset == "imagenet" else "cifar"]


def paper_total_steps(dataset: str, multiplier: float = 1.0) -> int:
    """Optimizer steps of the paper's ×``multiplier`` run for ``dataset``."""
    return round(paper_run(dataset).total_steps * multiplier)


def resolve_method_args(
    method: type[Sparsifier], given: Mapping[str, Any], dataset: str, total_steps: int
) -> MethodArgs:
    """The method's arguments: ``given``, and where the method has ``prune_begin`` /
    ``prune_end`` and ``given`` leaves them out, the paper run's window for ``dataset`` scaled to
    ``total_steps`` (ImageNet's 10,000..25,000 of 32,000; CIFAR's is the method's own default).
    A key the method does not have is a ``ValueError`` naming its arguments."""
    run = paper_run(dataset)
    names = method.Args.names()
    defaults = {
        key: round(step * total_steps / run.total_steps)
        for key, step in (("prune_begin", run.prune_begin), ("prune_end", run.prune_end))
        if step is not None and key in names and key not in given
    }
    return method.Args.from_mapping({**defaults, **given}, method.name)


class InputShapeError(ValueError):
    """The model does not run on one sample of the query's input shape."""


@dataclass(frozen=True)
class FlopsQuery:
    """A model family, a method and a run, as the reports take them.

    ``build(width)`` builds the model at a width multiplier (it is called on the meta device);
    ``plan_keys`` are the keywords of :meth:`AllocationPlan.build` shared by every method;
    ``total_steps`` is the run's optimizer steps, ×M included (a schedule-based method needs it);
    ``width`` is the configured width (``model.width``). FLOPs are relative to the full-width
    (``1.0``) dense model, as in a training run's summary.
    """

    build: Callable[[float], nn.Module]
    input_shape: tuple[int, ...]
    method: type[Sparsifier]
    args: MethodArgs
    plan_keys: Mapping[str, Any]
    total_steps: int
    multiplier: float = 1.0
    width: float = 1.0
    model_name: str = "model"
    num_classes: int | None = None

    def model(self, width: float) -> nn.Module:
        with torch.device("meta"):
            return self.build(width)

    def profile(self, model: nn.Module) -> FlopProfile:
        try:
            return profile_model(model, self.input_shape)
        except ValueError as exc:
            raise InputShapeError(str(exc)) from exc

    def reference_dense_flops(self, profile: FlopProfile, width: float) -> float:
        """``f_D`` of the full-width dense model (``profile`` is of the model at ``width``)."""
        return profile.dense_flops if width == 1.0 else self.profile(self.model(1.0)).dense_flops

    def masked_plan(self, model: nn.Module) -> AllocationPlan:
        """The plan of a masked method on ``model`` (what the sparse model keeps)."""
        return AllocationPlan.build(model, **self.plan_keys)

    def describe_model(self) -> dict[str, Any]:
        return {
            "model": self.model_name,
            "input_shape": list(self.input_shape),
            "num_classes": self.num_classes,
        }

    def header(self, width: float) -> str:
        shape = "x".join(map(str, self.input_shape))
        classes = "" if self.num_classes is None else f", {self.num_classes} classes"
        return f"model {self.model_name} (input {shape}{classes}), width {width:g}"


def _plan_line(plan: AllocationPlan) -> str:
    if not plan.masked:
        return "allocation: no masks (every layer dense)"
    dense = ", ".join(plan.dense_names) or "none"
    custom = [layer.name for layer in plan.masked if layer.role == "custom"]
    structure = "" if plan.structure == "unstructured" else f", structure {plan.structure}"
    text = (
        f"allocation: {plan.distribution} at sparsity {plan.sparsity:g} (power {plan.power:g})"
        f"{structure}; dense layers: {dense}"
    )
    return text + (f"; custom densities: {', '.join(custom)}" if custom else "")


def _totals(report: FlopReport, dense_flops: float) -> list[str]:
    inference = report.inference_flops
    return [
        f"dense inference FLOPs:      {dense_flops:.4e}",
        f"inference FLOPs:            {inference:.4e}  ({inference / dense_flops:.4f}x dense)",
    ]


def training_report(query: FlopsQuery) -> tuple[dict[str, Any], str]:
    """Inference FLOPs of the model ``query.method`` trains, and its training FLOPs (SPEC §7)."""
    method, args = query.method, query.args
    width = method.model_width(query.build, query.width, args, **query.plan_keys)
    model = query.model(width)
    plan = AllocationPlan.build(model, masked=method.traits.masked, **query.plan_keys)
    profile = query.profile(model)
    dense_flops = query.reference_dense_flops(profile, width)
    cost = method_training_flops(
        method, args, profile, plan, query.total_steps, query.multiplier, dense_flops
    )
    report = profile.report(plan)
    inference = report.inference_flops
    schedule = getattr(method, "schedule_for", None)
    schedule = schedule(args, query.total_steps) if callable(schedule) else None
    result: dict[str, Any] = {
        **query.describe_model(),
        "method": method.name,
        "method_args": args.as_dict(),
        "multiplier": query.multiplier,
        "total_steps": query.total_steps,
        "model_width": width,
        "model_params": parameter_count(model),
        "sparsity": 1.0 - plan.global_density(),
        "plan": plan.as_dict(),
    }
    if dataclasses.is_dataclass(schedule) and not isinstance(schedule, type):
        result["pruning_schedule"] = dataclasses.asdict(schedule)
    result |= {
        "dense_inference_flops": dense_flops,
        "inference_flops": inference,
        "inference_flops_ratio": inference / dense_flops,
        "mean_inference_flops": cost.mean_inference_flops,
        "train_flops_per_sample": cost.train_flops_per_sample,
        "dense_train_flops_per_sample": 3.0 * dense_flops,
        "train_flops_ratio": cost.train_flops_ratio,
        "layers": [layer.as_dict() for layer in report.layers],
    }
    return result, _training_text(query, result, plan, report, cost)


def _training_text(
    query: FlopsQuery,
    result: dict[str, Any],
    plan: AllocationPlan,
    report: FlopReport,
    cost: MethodFlops,
) -> str:
    """:func:`training_report`'s result as the text ``regrow flops`` prints."""
    width, dense_flops = result["model_width"], result["dense_inference_flops"]
    arguments = ", ".join(f"{k}={v!r}" for k, v in result["method_args"].items()) or "none"
    lines = [
        f"{query.header(width)}; method {result['method']} x{query.multiplier:g}, "
        f"{query.total_steps:,} steps",
        f"method arguments: {arguments}",
        _plan_line(plan),
    ]
    if width != query.width:
        lines.append(
            f"{result['method']} width multiplier {width:.4f} "
            f"({result['model_params']:,} parameters)"
        )
    if "pruning_schedule" in result:
        s, mean = result["pruning_schedule"], cost.mean_inference_flops
        lines.append(
            f"pruning every {s['every']} steps from {s['begin']} to {s['end']} of "
            f"{s['total_steps']}; mean inference FLOPs over the run {mean:.4e} "
            f"({mean / dense_flops:.4f}x)"
        )
    lines += [
        report.table(totals=False),
        *_totals(report, dense_flops),
        f"training FLOPs per sample:  {cost.train_flops_per_sample:.4e}  "
        f"({cost.train_flops_ratio:.4f}x dense training)",
    ]
    return "\n".join(lines)


def matching_report(query: FlopsQuery, match: str | float) -> tuple[dict[str, Any], str]:
    """The sparsity at which the query's distribution costs the inference FLOPs of distribution
    ``match`` at the query's sparsity, or (a float) ``match`` × the dense model's."""
    model = query.model(query.width)
    plan = query.masked_plan(model)
    profile = query.profile(model)
    dense_flops = query.reference_dense_flops(profile, query.width)
    shapes, custom = plan.shapes(), query.plan_keys.get("custom_densities")
    if isinstance(match, str):
        reference: str | None = match
        target = flops_at_sparsity(profile, shapes, plan.sparsity, match, plan.power, custom)
        described = f"{match} at sparsity {plan.sparsity:g}"
    else:
        reference, target = None, float(match) * dense_flops
        described = f"{float(match):g}x the dense model"
    matched = matching_sparsity(profile, shapes, target, plan.distribution, plan.power, custom)
    achieved = flops_at_sparsity(profile, shapes, matched, plan.distribution, plan.power, custom)
    result = {
        **query.describe_model(),
        "model_width": query.width,
        "plan": plan.as_dict(),
        "reference": reference,
        "target_inference_flops": target,
        "matched_sparsity": matched,
        "dense_inference_flops": dense_flops,
        "inference_flops": achieved,
        "inference_flops_ratio": achieved / dense_flops,
    }
    text = "\n".join(
        [
            query.header(query.width),
            _plan_line(plan),
            f"{plan.distribution} at sparsity {matched:.6f} costs {achieved:.4e} inference FLOPs "
            f"({achieved / dense_flops:.4f}x dense), the same as {described} ({target:.4e})",
        ]
    )
    return result, text


def small_dense_report(query: FlopsQuery) -> tuple[dict[str, Any], str]:
    """The Small-Dense model of the query's sparse one: the width whose parameter count equals
    the sparse model's non-zeros (SPEC §5), from the Small-Dense method's ``model_width``."""
    small_dense = get_method("small_dense")
    full = query.model(query.width)
    plan = query.masked_plan(full)
    target = kept_parameter_count(full, plan)
    width = small_dense.model_width(query.build, query.width, small_dense.Args(), **query.plan_keys)
    small = query.model(width)
    params = parameter_count(small)
    small_flops = query.profile(small).dense_flops
    dense_flops = query.reference_dense_flops(query.profile(full), query.width)
    result = {
        **query.describe_model(),
        "plan": plan.as_dict(),
        "model_width": width,
        "target_params": target,
        "small_dense_params": params,
        "dense_params": parameter_count(full),
        "dense_inference_flops": dense_flops,
        "inference_flops": small_flops,
        "inference_flops_ratio": small_flops / dense_flops,
    }
    text = "\n".join(
        [
            query.header(query.width),
            _plan_line(plan),
            f"the sparse model keeps {target:,} parameters (active sparse weights + every "
            f"dense parameter) of {result['dense_params']:,}",
            f"Small-Dense width multiplier: {width:.4f} -> {params:,} parameters "
            f"({params / target - 1:+.3%} vs target)",
            f"Small-Dense inference FLOPs: {small_flops:.4e} "
            f"({small_flops / dense_flops:.4f}x dense)",
        ]
    )
    return result, text
