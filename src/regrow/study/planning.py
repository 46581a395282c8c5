"""Run planning: a checked :class:`~regrow.study.schema.Study` turned into one :class:`RunSpec`
per run — assignments, seeds, run names and each run's ``regrow train`` overrides.

Keeps every planned run validated through :func:`regrow.train.load_config` and every run name
unique, so a sweep fails before it launches anything. See docs/STUDIES.md.
"""

from __future__ import annotations

import dataclasses
import itertools
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from ..sparsity import get_method
from ..train.config import ConfigError, RunConfig, load_config, presets
from .derived import equal_flops_sparsity, record_values
from .schema import OWN_KEYS, PLACEHOLDER, Study, StudyError

__all__ = [
    "RunSpec",
    "StudyPlan",
    "assignments",
    "default_pattern",
    "format_name",
    "plan_runs",
    "render_value",
    "sanitise_name",
]


@dataclass(frozen=True)
class RunSpec:
    """One planned run: its directory name, the full ``regrow train`` overrides (``seed=`` and
    ``out_dir=`` included), its study parameters (dotted key → value, ``seed`` included) and
    anything derived or recorded for it."""

    name: str
    overrides: tuple[str, ...]
    params: dict[str, Any]
    path: str
    extra: dict[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        """The run's entry in ``study.json``."""
        return {
            "name": self.name,
            "overrides": list(self.overrides),
            "params": dict(self.params),
            **self.extra,
        }


@dataclass(frozen=True)
class StudyPlan:
    """What :func:`plan_runs` resolved: the base preset, the fixed overrides, the seeds and the
    runs (for a search: the outer points, one :class:`RunSpec` with seed 0 each, not named by
    seed; :mod:`regrow.study.search` makes the trial runs)."""

    study: Study
    preset: str | None
    overrides: tuple[str, ...]
    seeds: tuple[int, ...]
    out_dir: str
    runs: tuple[RunSpec, ...]
    configs: dict[str, RunConfig] = field(default_factory=dict, compare=False, repr=False)

    def study_json(self, runs: Iterable[RunSpec] | None = None) -> dict[str, Any]:
        """The content of ``study.json`` (``runs``: these instead of the planned ones)."""
        return {
            "study": self.study.name,
            "description": self.study.description,
            "source": self.study.source,
            "preset": self.preset,
            "overrides": list(self.overrides),
            "seeds": list(self.seeds),
            "runs": [run.as_dict() for run in (self.runs if runs is None else runs)],
            "report": dict(self.study.report),
        }


def render_value(value: Any) -> str:
    """``value`` as the right-hand side of a ``key=value`` override (YAML flow, so ``null``,
    ``true``, ``[0.5, 0.75]``, and strings that would read as something else are quoted)."""
    if isinstance(value, float):
        return repr(value)
    text = yaml.safe_dump(value, default_flow_style=True, width=10**9)
    return text.removesuffix("\n").removesuffix("\n...").strip()


def sanitise_name(name: str) -> str:
    """A run name as a safe directory name: runs of other characters than ``[A-Za-z0-9._+-]``
    become ``-``; no leading dot or dash."""
    return re.sub(r"[^A-Za-z0-9._+-]+", "-", name).strip("-.")


def _matches(params: Mapping[str, Any], partial: Mapping[str, Any]) -> bool:
    """Whether ``params`` has every key of ``partial`` at its value (a list: any of its items,
    unless the parameter itself is that list)."""
    for key, wanted in partial.items():
        if key not in params:
            return False
        value = params[key]
        if isinstance(wanted, list) and not isinstance(value, list):
            if not any(_same(value, w) for w in wanted):
                return False
        elif not _same(value, wanted):
            return False
    return True


def _same(a: Any, b: Any) -> bool:
    """Equal as study values (``True`` is not ``1``)."""
    return type(a) is type(b) and a == b if isinstance(a, bool) or isinstance(b, bool) else a == b


def _product(assign: Mapping[str, Any]) -> list[dict[str, Any]]:
    """Every combination of a mapping of key → value-or-list."""
    keys = list(assign)
    lists = [v if isinstance(v, list) else [v] for v in assign.values()]
    return [dict(zip(keys, combo, strict=True)) for combo in itertools.product(*lists)]


def assignments(study: Study) -> list[tuple[dict[str, Any], str | None]]:
    """Every assignment of the study's varied keys (seeds aside), each with the name pattern of
    the ``also`` entry it came from (``None``: the study's), excluded ones left out."""
    found: list[tuple[dict[str, Any], str | None]] = []
    if study.grid or study.zip or not study.also:
        rows = (
            [
                dict(zip(study.zip, row, strict=True))
                for row in zip(*study.zip.values(), strict=True)
            ]
            if study.zip
            else [{}]
        )
        found += [({**g, **row}, None) for g in _product(study.grid) for row in rows]
    for entry in study.also:
        pattern = entry.get("run_name")
        assign = {k: v for k, v in entry.items() if k != "run_name"}
        found += [(combo, pattern) for combo in _product(assign)]
    return [(a, p) for a, p in found if not any(_matches(a, e) for e in study.exclude)]


def _lookup(key: str, params: Mapping[str, Any], config: RunConfig) -> Any:
    """A name placeholder's value: a study parameter, else the run's config value (a method
    argument with its default filled in)."""
    if key in params:
        return params[key]
    if key.startswith("sparsity.args."):
        resolved = config.sparsity.method_args().as_dict()
        name = key.removeprefix("sparsity.args.")
        if name in resolved:
            return resolved[name]
        raise KeyError(key)
    value: Any = config
    for part in key.split("."):
        if isinstance(value, dict) and part in value:
            value = value[part]
        elif dataclasses.is_dataclass(value) and hasattr(value, part):
            value = getattr(value, part)
        else:
            raise KeyError(key)
    return value


def _name_text(value: Any, spec: str | None) -> str:
    if spec:
        return format(value, spec)
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, list):
        return "-".join(_name_text(v, None) for v in value)
    return str(value)


def default_pattern(keys: Sequence[str], with_seed: bool = True) -> str:
    """``<last part>-{key}`` for each varied key, joined by ``_``, then ``seed{seed}``."""
    parts = [f"{key.rsplit('.', 1)[-1]}-{{{key}}}" for key in keys]
    return "_".join([*parts, "seed{seed}"] if with_seed else parts) or "run"


def format_name(
    study: Study, pattern: str, params: Mapping[str, Any], config: RunConfig, where: str
) -> str:
    """Fill ``pattern`` from ``params`` and ``config``; sanitised (:func:`sanitise_name`)."""

    def fill(match: re.Match[str]) -> str:
        key, spec = match.group(1), match.group(2)
        try:
            return _name_text(_lookup(key, params, config), spec)
        except KeyError:
            raise study.error(
                where,
                f"placeholder {{{key}}} is neither a study parameter ({', '.join(params)}) nor a "
                "config key of the run.",
            ) from None
        except (ValueError, TypeError) as error:
            raise study.error(where, f"placeholder {match.group(0)}: {error}.") from None

    name = sanitise_name(PLACEHOLDER.sub(fill, pattern))
    if not name:
        raise study.error(where, f"{pattern!r} gives an empty run name.")
    return name


def run_config(study: Study, preset: str | None, overrides: list[str], label: str) -> RunConfig:
    """The validated config of one run (``label`` names it in the error, with the study file)."""
    try:
        return load_config(preset, overrides)
    except ConfigError as error:
        raise StudyError(f"study {study.source}: run {label}: {error}") from None


def _label(params: Mapping[str, Any]) -> str:
    return ", ".join(f"{k}={render_value(v)}" for k, v in params.items()) or "(the preset)"


def _config_overrides(params: Mapping[str, Any]) -> list[str]:
    """The ``key=value`` overrides of an assignment (tags are labels, not config keys)."""
    return [
        f"{k}={render_value(v)}"
        for k, v in params.items()
        if k != "seed" and k != "tag" and not k.startswith("tag.")
    ]


class _FixedOverrides:
    """The study's and the command line's fixed overrides, a method argument applied only to
    runs whose method has it (docs/STUDIES.md, "Overrides")."""

    def __init__(self, study: Study, fixed: Sequence[str]) -> None:
        self.study = study
        self.fixed = list(fixed)
        self.general = [o for o in fixed if not o.startswith("sparsity.args.")]
        self.method_args = [o for o in fixed if o.startswith("sparsity.args.")]
        self.used: set[str] = set()
        self._default_method: str | None = None

    def for_run(self, preset: str | None, assign: Mapping[str, Any], label: str) -> list[str]:
        """The fixed overrides of one run: every general one, and each method argument its
        method has (the method as assigned, else as the preset and fixed overrides set it)."""
        if not self.method_args:
            return list(self.fixed)
        method = assign.get("sparsity.method")
        if method is None:
            if self._default_method is None:
                probe = [*self.general, "out_dir=x"]
                self._default_method = run_config(self.study, preset, probe, label).sparsity.method
            method = self._default_method

        try:
            names = get_method(str(method)).Args.names()
        except ValueError as error:
            raise StudyError(f"study {self.study.source}: run {label}: sparsity.{error}") from None
        kept = []
        for item in self.fixed:
            argument = item.split("=", 1)[0].strip().removeprefix("sparsity.args.").split(".")[0]
            if item in self.method_args and argument not in names:
                continue
            self.used.add(item)
            kept.append(item)
        return kept

    def check_used(self, methods: set[str]) -> None:
        for item in self.method_args:
            if item not in self.used:
                raise StudyError(
                    f"override {item!r}: no run of study {self.study.name} has a method with "
                    f"that argument (methods: {', '.join(sorted(methods))}); drop it, or see "
                    "each method's arguments with `regrow train --preset P sparsity.method=M "
                    "out_dir=x --print-config`."
                )


#: ``derive(preset, overrides, distribution)``: an equal-FLOP sparsity (see :func:`plan_runs`).
Derive = Callable[[str | None, list[str], str], float]


def plan_runs(
    study: Study,
    preset: str | None = None,
    seeds: int | None = None,
    overrides: Sequence[str] = (),
    out_dir: str | None = None,
    derive: Derive | None = None,
) -> StudyPlan:
    """Every run of ``study`` over ``preset`` (default: the study's), each validated through
    :func:`regrow.train.load_config`. ``overrides`` are the command line's; ``out_dir`` the study
    directory (default ``runs/<study name>``); ``derive(preset, overrides, distribution)`` computes
    an equal-FLOP sparsity (default :func:`~regrow.study.derived.equal_flops_sparsity`). For a
    search study the runs are its outer points, named without a seed."""
    preset = _base_preset(study, preset)
    root = out_dir or str(Path("runs") / study.name)
    _check_overrides(study, overrides)
    planner = _Planner(study, preset, seeds, overrides, root, derive or equal_flops_sparsity)
    for assign, pattern in assignments(study):
        planner.add(assign, pattern)
    return planner.plan(seeds)


def _base_preset(study: Study, preset: str | None) -> str:
    """The command line's preset, else the study's; a study with neither is an error."""
    preset = preset or study.preset
    if not preset:
        raise StudyError(
            f"study {study.source} names no base preset: give --preset (one of "
            f"{', '.join(presets())}, or a .yaml path)."
        )
    return preset


def _check_overrides(study: Study, overrides: Sequence[str]) -> None:
    """The command line's overrides are ``key=value``, never a key the sweep sets itself nor one
    the study varies, searches or derives (that would collapse the grid)."""
    varied = study.varied_keys()
    for item in overrides:
        key = item.split("=", 1)[0].strip()
        if "=" not in item or not key:
            raise StudyError(
                f"override {item!r} is not of the form key=value (e.g. train.epochs=5)."
            )
        if key in OWN_KEYS:
            raise StudyError(
                f"override {item!r}: {key} is set by the sweep for each run: {OWN_KEYS[key]}."
            )
        searched = [s.key for s in study.search.space] if study.search else []
        if key in varied or key in searched or key in study.derived:
            raise StudyError(
                f"override {item!r}: study {study.name} varies {key} itself; drop the override, "
                "or copy the study file and change its values."
            )


class _Planner:
    """The runs of one plan as they are added, one assignment at a time: each assignment's config
    validated once, then one run per seed, no two runs with one name."""

    def __init__(
        self,
        study: Study,
        preset: str,
        seeds: int | None,
        overrides: Sequence[str],
        root: str,
        derive: Derive,
    ) -> None:
        self.study, self.preset, self.root, self.derive = study, preset, root, derive
        self.varied = study.varied_keys()
        self.fixed = _FixedOverrides(study, [*study.overrides, *overrides])
        self.seed_list = study.seed_list(seeds) if not study.search else [0]
        self.runs: list[RunSpec] = []
        self.configs: dict[str, RunConfig] = {}
        self.seen: dict[str, str] = {}  # run name -> the label of the run that has it
        self.methods: set[str] = set()

    def add(self, assign: dict[str, Any], pattern: str | None) -> None:
        """The runs of one assignment, one per seed (``pattern``: its ``also`` entry's)."""
        study = self.study
        # Seeds change nothing load_config checks: each assignment is validated once, then
        # each seed's config is that one with its seed and run directory.
        label = _label(assign)
        assign_overrides = _config_overrides(assign)
        probe_tail = [f"seed={self.seed_list[0]}", f"out_dir={self.root}"]
        base = [*self.fixed.for_run(self.preset, assign, label), *assign_overrides]
        params_base, extra = self._derive(assign, base, probe_tail, label)
        config = run_config(study, self.preset, [*base, *probe_tail], label)
        self.methods.add(config.sparsity.method)
        if study.record and not study.search:
            extra |= record_values(study, config)
        where = "run_name" if pattern is None else "also.run_name"
        chosen = pattern or study.run_name or default_pattern(self.varied, not study.search)
        for seed in self.seed_list:
            params = dict(params_base) if study.search else {**params_base, "seed": seed}
            if any(_matches(params, e) for e in study.exclude):
                continue
            name = format_name(study, chosen, params, config, where)
            if name in self.seen:
                raise study.error(
                    where,
                    f"runs {self.seen[name]} and {_label(params)} are both named {name!r}: put "
                    "the keys that tell them apart into the pattern.",
                )
            self.seen[name] = _label(params)
            path = str(Path(self.root) / name)
            tail = [] if study.search else [f"seed={seed}", f"out_dir={path}"]
            self.runs.append(RunSpec(name, tuple([*base, *tail]), params, path, dict(extra)))
            self.configs[name] = dataclasses.replace(config, seed=seed, out_dir=path)

    def _derive(
        self, assign: dict[str, Any], base: list[str], probe_tail: list[str], label: str
    ) -> tuple[dict[str, Any], dict[str, Any]]:
        """Apply the study's derived values that match ``assign``: each appended to ``base`` as an
        override; returns the run's parameters with them and the ``derived`` record."""
        study, params = self.study, dict(assign)
        extra: dict[str, Any] = {}
        for key, spec in study.derived.items():
            if not _matches(assign, spec["when"]):
                continue
            probe = run_config(study, self.preset, [*base, *probe_tail], label)
            nominal = _lookup(key, assign, probe)
            value = self.derive(
                self.preset, [*base, f"{key}={render_value(nominal)}"], spec["equal_flops_of"]
            )
            base.append(f"{key}={render_value(value)}")
            params[key] = value
            extra.setdefault("derived", {})[key] = {
                "equal_flops_of": spec["equal_flops_of"],
                "from": nominal,
                "value": value,
            }
        return params, extra

    def plan(self, seeds: int | None) -> StudyPlan:
        """The plan of every added run; an error when every run was excluded, or when a fixed
        method argument reached no run."""
        if not self.runs:
            raise self.study.error("exclude", "every run is excluded: nothing to train.")
        self.fixed.check_used(self.methods)
        return StudyPlan(
            study=self.study,
            preset=self.preset,
            overrides=tuple(self.fixed.fixed),
            seeds=tuple(self.study.seed_list(seeds)),
            out_dir=self.root,
            runs=tuple(self.runs),
            configs=self.configs,
        )
