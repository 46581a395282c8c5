"""Training FLOPs per method (SPEC §7; Evci et al. 2020, Section 4 and Appendix H).

With ``f_S`` the sparse and ``f_D`` the dense forward FLOPs of one sample, and the backward pass
costing twice the forward (once for the gradient w.r.t. the activations, once w.r.t. the weights),
the training FLOPs per sample are:

====================================  =============================================
Dense                                 ``3 f_D``
Static, SET, SNIP, Small-Dense        ``3 f_S``  (Small-Dense: ``f_S`` of the narrow dense model)
SNFS                                  ``2 f_S + f_D``  (dense weight gradient every step)
RigL                                  ``(3 f_S ΔT + 2 f_S + f_D) / (ΔT + 1)``
RigL, ``grad_accumulation=N``         ``(3 f_S (ΔT − N + 1) + N (2 f_S + f_D)) / (ΔT + 1)``
Pruning                               ``3 · mean_t f_S(s_t)`` over its schedule
====================================  =============================================

A run ×M (RigL_5×) trains M times as many steps, so its ratio to (1×) dense training is M times the
per-sample ratio. RigL's ΔT counts the update iteration separately: ΔT ordinary sparse steps and one
step whose backward pass computes the dense weight gradient (SPEC §4: that batch makes no optimizer
step but its FLOPs are spent).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, NamedTuple

from torch import nn

from ..sparsity.base import Sparsifier, get_method
from ..sparsity.methods.pruning import pruning_mean_flops
from ..sparsity.schedules import PruningSchedule, pruning_segments
from .counter import Densities, FlopProfile, profile_model

__all__ = [
    "MethodFlops",
    "PruningSchedule",
    "RunningFlops",
    "TrainingFlopsCounter",
    "method_training_flops",
    "pruning_mean_flops",
    "pruning_segments",
    "train_flops_per_sample",
    "train_flops_ratio",
]


def _method_class(method: str | type[Sparsifier]) -> type[Sparsifier]:
    return method if isinstance(method, type) else get_method(method)


def train_flops_per_sample(
    method: str | type[Sparsifier],
    sparse_flops: float,
    dense_flops: float,
    delta_t: int | None = None,
    grad_accumulation: int = 1,
) -> float:
    """Training FLOPs per sample of ``method`` (SPEC §7; Evci et al. 2020, Appendix H), from its
    declared :class:`~regrow.sparsity.base.Traits` alone, so a user's registered method is
    counted too.

    ``sparse_flops`` is ``f_S``, the forward FLOPs of the trained model (Dense: ``f_D``;
    Small-Dense: the narrow dense model's; Pruning: the schedule's mean from
    :func:`pruning_mean_flops`), ``dense_flops`` is ``f_D``. ``delta_t``: the update interval of a
    method whose backward is dense on update batches (default: the method's own default);
    ``grad_accumulation``: how many batches of each update interval have a dense backward (the
    update batch and the ``N − 1`` before it whose gradients its grow score averages).
    """
    cls = _method_class(method)
    f_s, f_d = float(sparse_flops), float(dense_flops)
    kind = cls.traits.dense_backward
    if kind == "never":
        return 3.0 * f_s
    if kind == "always":
        return 2.0 * f_s + f_d
    if delta_t is None:
        delta_t = cls.Args().delta_t  # type: ignore[attr-defined]
    if isinstance(delta_t, bool) or int(delta_t) != delta_t or delta_t < 1:
        raise ValueError(f"delta_t={delta_t!r}: allowed values are integers >= 1.")
    n = grad_accumulation
    whole = isinstance(n, int | float) and not isinstance(n, bool) and float(n).is_integer()
    if not (whole and 1 <= n <= delta_t + 1):
        raise ValueError(
            f"grad_accumulation={grad_accumulation!r}: allowed values are integers from 1 to "
            f"delta_t + 1 = {delta_t + 1}."
        )
    extra, dense = int(n) - 1, 2.0 * f_s + f_d  # extra: ordinary batches of dense backward
    return (3.0 * f_s * (delta_t - extra) + extra * dense + 2.0 * f_s + f_d) / (delta_t + 1)


def train_flops_ratio(
    method: str | type[Sparsifier],
    sparse_flops: float,
    dense_flops: float,
    delta_t: int | None = None,
    multiplier: float = 1.0,
    grad_accumulation: int = 1,
) -> float:
    """Training FLOPs of a run ×``multiplier`` as a multiple of 1× dense training (``3 f_D``);
    the meaning of ``train_flops_ratio`` everywhere (``summary.json``, ``regrow flops``)."""
    if not multiplier > 0:
        raise ValueError(
            f"multiplier={multiplier!r}: allowed values are > 0 (1 is the paper's 1x)."
        )
    per_sample = train_flops_per_sample(
        method, sparse_flops, dense_flops, delta_t, grad_accumulation
    )
    return multiplier * per_sample / (3.0 * float(dense_flops))


class MethodFlops(NamedTuple):
    """A method's closed-form training cost (see :func:`method_training_flops`)."""

    mean_inference_flops: float  #: f_S averaged over the run
    train_flops_per_sample: float  #: per sample of the ×M run, i.e. M × the 1× formula
    train_flops_ratio: float  #: over 1× dense training of the full-width model


def method_training_flops(
    method: str | type[Sparsifier],
    args: Any,
    profile: FlopProfile,
    plan: Any,
    total_steps: int,
    multiplier: float = 1.0,
    reference_dense_flops: float | None = None,
) -> MethodFlops:
    """The training FLOPs of ``method`` with its ``args`` (its ``Args`` dataclass) on the model
    ``profile`` measures, at ``plan``'s densities, for a run of ``total_steps`` (×M included).

    ``reference_dense_flops``: ``f_D`` of the full-width model when ``profile`` is of another
    width (Small-Dense). The forward cost comes from the method's ``mean_inference_flops`` hook,
    the formula from its traits.
    """
    cls = _method_class(method)
    f_d = float(profile.dense_flops if reference_dense_flops is None else reference_dense_flops)
    mean = cls.mean_inference_flops(profile, plan, args, total_steps)
    per_sample = train_flops_per_sample(
        cls, mean, f_d, getattr(args, "delta_t", None), getattr(args, "grad_accumulation", 1)
    )
    return MethodFlops(mean, multiplier * per_sample, multiplier * per_sample / (3.0 * f_d))


class RunningFlops(NamedTuple):
    """What :meth:`TrainingFlopsCounter.step` returns."""

    train_flops: float
    ratio: float


class TrainingFlopsCounter:
    """Training FLOPs as they happen: call :meth:`step` once per batch (SPEC §7).

    Each step costs, per sample, ``3 f_S`` at the current densities, or ``2 f_S + f_D`` when its
    backward pass computes the dense weight gradient (``dense_backward=True``: RigL's mask-update
    steps and the batches whose gradients they average, every step of SNFS). Densities that
    change (redistribution, pruning, a sparsifier's live masks) are counted as they were at each
    step. :attr:`ratio` is the total over dense training of the same number of samples, ``3 f_D``
    each; for a constant density it equals the closed forms of :func:`train_flops_per_sample`.

    ::

        counter = TrainingFlopsCounter.from_model(model, (3, 32, 32), sparsifier)
        for x, y in loader:
            ...
            if sparsifier.step():
                optimizer.step()
            counter.count_batch(sparsifier, samples=len(x))
    """

    def __init__(
        self,
        profile: FlopProfile,
        densities: Densities = None,
        reference_dense_flops: float | None = None,
    ) -> None:
        """``densities``: the initial ones (``None``: dense). ``reference_dense_flops``: ``f_D``
        of the model the ratio compares with, if not this one (a Small-Dense run)."""
        self.profile = profile
        self.dense_flops = float(
            profile.dense_flops if reference_dense_flops is None else reference_dense_flops
        )
        self._sparse_flops = profile.inference_flops(densities)
        self.train_flops = 0.0
        self.samples = 0

    @classmethod
    def from_model(
        cls,
        model: nn.Module,
        input_shape: tuple[int, ...],
        densities: Densities = None,
        reference_dense_flops: float | None = None,
    ) -> TrainingFlopsCounter:
        """Profile ``model`` (on the meta device) and start counting."""
        return cls(profile_model(model, input_shape), densities, reference_dense_flops)

    @property
    def sparse_flops(self) -> float:
        """``f_S`` at the latest densities."""
        return self._sparse_flops

    @property
    def dense_train_flops(self) -> float:
        """Dense training FLOPs over the samples counted so far (``3 f_D`` each)."""
        return 3.0 * self.dense_flops * self.samples

    @property
    def ratio(self) -> float:
        """Training FLOPs so far over dense training of as many samples (0 before any step)."""
        return self.train_flops / self.dense_train_flops if self.samples else 0.0

    def step(
        self, densities: Densities = None, dense_backward: bool = False, samples: int = 1
    ) -> RunningFlops:
        """Count one step of ``samples`` samples; ``densities=None`` keeps the previous ones.

        ``dense_backward``: this step's backward computed the dense weight gradient (a RigL
        mask-update step, or any SNFS step). Returns the running training FLOPs and ratio.
        """
        if int(samples) != samples or samples < 1:
            raise ValueError(f"samples={samples!r}: allowed values are integers >= 1.")
        if densities is not None:
            self._sparse_flops = self.profile.inference_flops(densities)
        f_s = self._sparse_flops
        per_sample = 2.0 * f_s + self.dense_flops if dense_backward else 3.0 * f_s
        self.train_flops += per_sample * samples
        self.samples += int(samples)
        return RunningFlops(self.train_flops, self.ratio)

    def count_batch(self, sparsifier: Sparsifier, samples: int) -> RunningFlops:
        """Count the batch the sparsifier just handled, as its :attr:`~Sparsifier.last_batch`
        reports it (dense backward or not; new densities when its masks changed)."""
        report = sparsifier.last_batch
        return self.step(
            sparsifier if report.masks_changed else None, report.dense_backward, samples
        )

    def state_dict(self) -> dict[str, Any]:
        """The running totals, for a checkpoint."""
        return {
            "train_flops": self.train_flops,
            "samples": self.samples,
            "sparse_flops": self._sparse_flops,
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore :meth:`state_dict`'s totals (the profile is rebuilt from the model)."""
        self.train_flops = float(state["train_flops"])
        self.samples = int(state["samples"])
        self._sparse_flops = float(state["sparse_flops"])
