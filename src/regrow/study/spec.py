"""Study files: which runs a study trains, read from YAML and checked before anything is launched.

A study is a set of ``regrow train`` runs over one base preset. ``regrow sweep STUDY`` reads it
(a shipped name, see :func:`shipped_studies`, or the path of a ``.yaml`` file), turns it into one
:class:`RunSpec` per run with :func:`plan_runs` and validates every run's config through
:func:`regrow.train.load_config` first, so a bad key fails at once, naming the run and the key.

The file format (every key optional but ``name``)::

    name: main                     # the study's name: the default output folder runs/<name>
    description: one line shown by --dry-run
    preset: cifar10_wrn22_2        # default base preset (``--preset`` replaces it; a, b merges)
    overrides:                     # key=value for every run
      - train.eval_every=10
    grid:                          # key -> list of values: the cartesian product
      sparsity.method: [static, set, rigl]
      sparsity.distribution: [uniform, erk]
      sparsity.sparsity: [0.8, 0.9]
    zip:                           # key -> list, all the same length, advancing together
      train.multiplier: [1, 2, 5]
      tag: [x1, x2, x5]            # ``tag`` / ``tag.<name>``: a label for names and reports only
    also:                          # extra runs: each entry its own small grid (a scalar is one
      - sparsity.method: dense     # value, a list is varied), crossed with the seeds only
        sparsity.sparsity: 0.0
        run_name: "dense_seed{seed}"   # an entry may name its runs itself
    exclude:                       # partial assignments: a run matching every key of one is
      - {sparsity.method: static, train.multiplier: [2, 5]}   # dropped (a list: any of them)
    seeds: 3                       # seeds 0..N-1 (or a list of seeds); ``--seeds N`` replaces it
    derived:                       # values computed by regrow's own solvers, per run
      sparsity.sparsity:
        equal_flops_of: erk        # the sparsity at which the run's distribution costs the
        when: {sparsity.distribution: uniform}   # inference FLOPs of ERK at the run's sparsity
    record: [model_width]          # also write each run's model width (Small-Dense's solved one)
    run_name: "{sparsity.method}_{sparsity.distribution}_s{sparsity.sparsity}_seed{seed}"
    report:                        # read by ``regrow report``; written to study.json as given
      group_by: [sparsity.method, sparsity.distribution, sparsity.sparsity]
      metrics: [test_accuracy, train_flops_ratio]
      figures: [accuracy_vs_sparsity]        # names of regrow.study.names.FIGURE_KINDS

**Runs.** The main grid is the product of ``grid`` with the rows of ``zip`` (when neither is
given and there is no ``also``, the study is the preset itself); each ``also`` entry adds its own
product. ``exclude`` drops runs; its keys must be keys the study varies (or ``seed``). Every run is
crossed with the seeds. Dense baselines belong in ``also`` (one ``sparsity.method: dense`` entry)
instead of the sparsity grid, so a grid over sparsities does not train several identical dense
runs.

**Overrides.** A run's ``regrow train`` overrides are, in order: the study's ``overrides``, the
command line's ``key=value`` overrides, its grid/zip/also assignment, its derived values,
``seed=N`` and ``out_dir=DIR/<run name>``. A fixed override of a method's own argument
(``sparsity.args.delta_t=50``, from the study or the command line) reaches only the runs whose
method has that argument (Static and Dense have no ``delta_t``); it is an error when no run's
method has it. A command-line override of a key the study varies is an error (it would collapse the
grid). Preset-specific tuning is not part of a study: on the digits ``quickstart`` preset, pass
``sparsity.args.delta_t=50`` on the command line.

**Names.** ``run_name`` is a pattern over dotted keys: a study parameter (grid, zip, also, tag,
``seed``) or any config key of the run (``{model.name}``, ``{sparsity.args.delta_t}`` with the
method's default filled in), with an optional format spec (``{sparsity.sparsity:.4g}``). The
default joins ``<last part>-<value>`` of every varied key and ``seed<N>``. Names are sanitised to
``[A-Za-z0-9._+-]``; two runs with one name are an error naming both assignments.

**Derived values.** ``equal_flops_of: DIST`` (only for ``sparsity.sparsity``) replaces the run's
sparsity ``S`` by the one at which its own distribution costs the inference FLOPs of ``DIST`` at
``S`` — the number ``regrow flops --preset P sparsity.distribution=<run's> sparsity.sparsity=S
--match-flops DIST`` prints, computed by the same function. ``when`` limits it to runs matching a
partial assignment. Small-Dense needs nothing derived (the method solves its width itself);
``record: [model_width]`` writes that width into ``study.json`` for the report.

**Search.** With a ``search`` section the study is an Optuna search instead of a fixed grid
(:mod:`regrow.study.search`): the grid (zip, also, exclude) gives the outer points, one Optuna
study each, and every trial trains one run per seed (default 1 seed here) with values drawn from
``space``::

    search:
      sampler: tpe                 # tpe | random
      trials: 15                   # per outer point
      direction: maximize          # maximize | minimize
      metric: val_accuracy         # a summary.json number (mean over the trial's seeds)
      seed: 0                      # the sampler's seed
      space:
        sparsity.args.alpha: {low: 0.1, high: 0.6}          # + log: true, step, type: int
        sparsity.args.delta_t: {choices: [50, 100, 150]}

Every error is one line naming the file, the key, the allowed values and what to do
(:class:`StudyError`, exit status 2).
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

from ..train.config import ConfigError, RunConfig, descriptions, load_config
from ..train.flops_query import NO_RUN_DIR, flops_query, flops_report
from ..util.suggest import did_you_mean
from ..util.yamlfile import package_folder, parse_mapping, read_named, shipped_names
from .names import FIGURE_KINDS

__all__ = [
    "DEFAULT_SEARCH_SEEDS",
    "DEFAULT_SEEDS",
    "RECORDS",
    "RunSpec",
    "SearchSpace",
    "SearchSpec",
    "Study",
    "StudyError",
    "StudyPlan",
    "load_study",
    "plan_runs",
    "render_value",
    "sanitise_name",
    "shipped_studies",
]

#: Seeds of a study that does not say (``--seeds N`` replaces them); a search trains one per trial.
DEFAULT_SEEDS, DEFAULT_SEARCH_SEEDS = 3, 1

#: The study file's top-level keys, each with what it holds.
TOP_LEVEL_KEYS: dict[str, str] = {
    "name": "the study's name",
    "description": "one line about it",
    "preset": "default base preset",
    "overrides": "a list of key=value for every run",
    "grid": "key -> list of values (cartesian product)",
    "zip": "key -> list of values, all the same length",
    "also": "a list of extra assignments",
    "exclude": "a list of partial assignments to drop",
    "seeds": "an integer >= 1 or a list of seeds",
    "derived": "key -> a derived value",
    "record": "a list of extra values to record",
    "run_name": "a name pattern",
    "report": "settings of regrow report",
    "search": "an Optuna search",
}

#: Keys of the ``report`` section.
REPORT_KEYS = ("group_by", "metrics", "figures")
#: What ``record`` may list, each with what it adds to a run's entry in ``study.json``.
RECORDS = {"model_width": "the width multiplier the run's method trains at (Small-Dense solves it)"}
#: Kinds of derived values, each with the keys it may set.
DERIVED_KINDS = {"equal_flops_of": ("sparsity.sparsity",)}
SEARCH_KEYS = ("sampler", "trials", "direction", "metric", "seed", "space")
SAMPLERS = ("tpe", "random")
DIRECTIONS = ("maximize", "minimize")
SPACE_KEYS = ("low", "high", "log", "step", "type", "choices")
#: Keys the sweep sets itself, and what to use instead.
OWN_KEYS = {"seed": "use `seeds:` (or --seeds)", "out_dir": "the sweep sets it (use --out)"}
#: Config sections whose keys are free names (checked by load_config, not here).
FREE_SECTIONS = ("sparsity.args.", "sparsity.custom_densities.")
#: A placeholder in a name pattern: ``{dotted.key}`` or ``{dotted.key:format}``.
#: The study files shipped with the package (``regrow sweep NAME``).
SHIPPED = package_folder("regrow.study", "studies")

PLACEHOLDER = re.compile(r"\{([A-Za-z_][A-Za-z0-9_.]*)(?::([^{}]*))?\}")


class StudyError(ConfigError):
    """A bad study file or sweep input; one line naming the file, the key, what is allowed and
    what to do (``regrow sweep`` exits with status 2)."""

    exit_code = 2


# --------------------------------------------------------------------------- the file's content
@dataclass(frozen=True)
class SearchSpace:
    """One searched key: a range (``low``/``high``, optionally ``log``, ``step``, ``type: int``)
    or a list of ``choices``."""

    key: str
    low: float | None = None
    high: float | None = None
    log: bool = False
    step: float | None = None
    integer: bool = False
    choices: tuple[Any, ...] | None = None

    def probe_values(self) -> list[Any]:
        """Values that validate the key before a search starts (the ends, or every choice)."""
        if self.choices is not None:
            return list(self.choices)
        cast = int if self.integer else float
        return [cast(self.low), cast(self.high)]


@dataclass(frozen=True)
class SearchSpec:
    """The ``search`` section: an Optuna search per outer point (:mod:`regrow.study.search`)."""

    sampler: str
    trials: int
    direction: str
    metric: str
    seed: int
    space: tuple[SearchSpace, ...]


@dataclass(frozen=True)
class Study:
    """A study file, checked (see the module docstring for what each field means)."""

    name: str
    source: str  #: the file it was read from, as errors name it
    description: str = ""
    preset: str | None = None
    overrides: tuple[str, ...] = ()
    grid: dict[str, list[Any]] = field(default_factory=dict)
    zip: dict[str, list[Any]] = field(default_factory=dict)
    also: tuple[dict[str, Any], ...] = ()
    exclude: tuple[dict[str, Any], ...] = ()
    seeds: tuple[int, ...] | None = None  #: ``None``: the default (3, or 1 for a search)
    derived: dict[str, dict[str, Any]] = field(default_factory=dict)
    record: tuple[str, ...] = ()
    run_name: str | None = None
    report: dict[str, Any] = field(default_factory=dict)
    search: SearchSpec | None = None

    def error(self, key: str, message: str) -> StudyError:
        """A :class:`StudyError` naming this study's file and ``key``."""
        return StudyError(f"study {self.source}: {key}: {message}")

    def varied_keys(self) -> list[str]:
        """Every key the grid, zip and also entries assign, in first-seen order."""
        keys = [*self.grid, *self.zip]
        for entry in self.also:
            keys += [k for k in entry if k != "run_name"]
        return list(dict.fromkeys(keys))

    def seed_list(self, seeds: int | None = None) -> list[int]:
        """The seeds to train: ``0..seeds-1`` when given (``--seeds``), else the file's, else the
        default."""
        if seeds is not None:
            if seeds < 1:
                raise StudyError(f"--seeds {seeds}: allowed values are integers >= 1.")
            return list(range(seeds))
        if self.seeds is not None:
            return list(self.seeds)
        return list(range(DEFAULT_SEARCH_SEEDS if self.search else DEFAULT_SEEDS))


def shipped_studies() -> list[str]:
    """Names of the studies shipped in ``regrow/study/studies/``."""
    return shipped_names(SHIPPED)


def load_study(study: str) -> Study:
    """Read and check a study: a shipped name (:func:`shipped_studies`) or a ``.yaml`` path."""
    text, source = read_named("study", study, SHIPPED, StudyError)
    hint = (
        ": write `name: ...`, `grid:` and the other keys one per line (see docs/STUDIES.md)"
    )
    tree = parse_mapping(text, f"study {source}", StudyError, hint)
    return _parse(tree, source)


def _check_top_level(tree: dict[str, Any], source: str) -> None:
    for key in tree:
        if key not in TOP_LEVEL_KEYS:
            hint = did_you_mean(str(key), TOP_LEVEL_KEYS, n=1)
            hint = f"{hint} " if hint else ""
            raise StudyError(
                f"study {source}: key {key!r} is unknown: {hint}allowed keys are "
                f"{', '.join(TOP_LEVEL_KEYS)}."
            )
    if not isinstance(tree.get("name"), str) or not tree["name"].strip():
        raise StudyError(f"study {source}: name is missing or empty: add `name: <study name>`.")


def _parse(tree: dict[str, Any], source: str) -> Study:
    _check_top_level(tree, source)
    study = Study(name=tree["name"].strip(), source=source)

    def fail(key: str, message: str) -> StudyError:
        return study.error(key, message)

    description = tree.get("description") or ""
    preset = tree.get("preset")
    if preset is not None and not isinstance(preset, str):
        raise fail("preset", f"{preset!r} is not a preset name: give one, e.g. quickstart.")
    overrides = _string_list(tree.get("overrides"), "overrides", fail)
    for item in overrides:
        if "=" not in item or not item.split("=", 1)[0].strip():
            raise fail("overrides", f"{item!r} is not of the form key=value (e.g. train.epochs=5).")
        _check_key(item.split("=", 1)[0].strip(), "overrides", fail, tags=False)
    grid = _value_lists(tree.get("grid"), "grid", fail)
    zipped = _value_lists(tree.get("zip"), "zip", fail)
    lengths = {key: len(values) for key, values in zipped.items()}
    if len(set(lengths.values())) > 1:
        listed = ", ".join(f"{k} has {n}" for k, n in lengths.items())
        raise fail("zip", f"the lists advance together and must be equally long ({listed}).")
    both = sorted(set(grid) & set(zipped))
    if both:
        raise fail("zip", f"{', '.join(both)} is in grid too: vary each key in one place.")
    also = _also(tree.get("also"), fail)
    study = dataclasses.replace(
        study,
        description=str(description),
        preset=preset,
        overrides=tuple(overrides),
        grid=grid,
        zip=zipped,
        also=tuple(also),
    )
    varied = set(study.varied_keys())
    return dataclasses.replace(
        study,
        exclude=tuple(_exclude(tree.get("exclude"), varied, fail)),
        seeds=_seeds(tree.get("seeds"), fail),
        derived=_derived(tree.get("derived"), fail),
        record=tuple(_records(tree.get("record"), fail)),
        run_name=_pattern(tree.get("run_name"), "run_name", fail),
        report=_report(tree.get("report"), fail),
        search=_search(tree.get("search"), varied, fail),
    )


Fail = Callable[[str, str], StudyError]


def _string_list(value: Any, key: str, fail: Fail) -> list[str]:
    if value is None:
        return []
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise fail(key, f"{value!r} is not a list of strings: write `{key}: [a, b]`.")
    return list(value)


def _check_key(key: str, where: str, fail: Fail, tags: bool = True) -> None:
    """A study key must be a config key (or a free name under ``sparsity.args.``), ``tag`` or
    ``tag.<name>`` (a label; where ``tags``), never ``seed`` or ``out_dir``."""
    if key in OWN_KEYS:
        raise fail(where, f"{key} is set by the sweep for each run: {OWN_KEYS[key]}.")
    if tags and (key == "tag" or key.startswith("tag.")):
        return
    known = list(descriptions())
    if key in known or any(key.startswith(s) and len(key) > len(s) for s in FREE_SECTIONS):
        return
    hint = did_you_mean(key, known, n=2)
    hint = f"{hint} " if hint else ""
    label = " (or tag / tag.<name> for a label)" if tags else ""
    raise fail(
        where,
        f"config key {key!r} is unknown: {hint}allowed keys are those of `regrow train "
        f"--print-config`, sparsity.args.<name>{label}.",
    )


def _scalar_ok(value: Any) -> bool:
    """A value a key can take: a scalar, or a list of scalars (for list-valued config keys)."""
    if isinstance(value, list):
        return all(_scalar_ok(v) and not isinstance(v, list) for v in value)
    return value is None or isinstance(value, (str, int, float, bool))


def _value_lists(value: Any, where: str, fail: Fail) -> dict[str, list[Any]]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise fail(where, f"{value!r} is not a mapping: write `{where}:` then `  key: [a, b]`.")
    found: dict[str, list[Any]] = {}
    for key, values in value.items():
        name = f"{where}.{key}"
        _check_key(str(key), where, fail)
        if not isinstance(values, list) or not values:
            raise fail(
                name,
                f"{values!r} is not a non-empty list of values: write `{key}: [a, b]` (a single "
                "fixed value belongs under overrides).",
            )
        for item in values:
            if not _scalar_ok(item):
                raise fail(
                    name,
                    f"value {item!r} is a {type(item).__name__}: allowed values are strings, "
                    "numbers, true/false, null, or a list of those for a list-valued key.",
                )
        found[str(key)] = list(values)
    return found


def _also(value: Any, fail: Fail) -> list[dict[str, Any]]:
    if value is None:
        return []
    if not isinstance(value, list) or not all(isinstance(v, dict) and v for v in value):
        raise fail("also", f"{value!r} is not a list of assignments (`- {{key: value, ...}}`).")
    entries = []
    for index, entry in enumerate(value):
        checked: dict[str, Any] = {}
        for key, item in entry.items():
            name = f"also[{index}].{key}"
            if key == "run_name":
                checked[key] = _pattern(item, name, fail)
                continue
            _check_key(str(key), f"also[{index}]", fail)
            items = item if isinstance(item, list) else [item]
            if not items or not all(_scalar_ok(v) for v in items):
                raise fail(name, f"{item!r}: allowed values are a value or a non-empty list.")
            checked[str(key)] = item
        entries.append(checked)
    return entries


def _exclude(value: Any, varied: set[str], fail: Fail) -> list[dict[str, Any]]:
    if value is None:
        return []
    if not isinstance(value, list) or not all(isinstance(v, dict) and v for v in value):
        raise fail("exclude", f"{value!r} is not a list of partial assignments (`- {{k: v}}`).")
    for index, entry in enumerate(value):
        for key in entry:
            if key != "seed" and key not in varied:
                raise fail(
                    f"exclude[{index}]",
                    f"{key!r} is not a key the study varies: allowed keys are "
                    f"{', '.join(sorted(varied | {'seed'}))}.",
                )
    return [dict(v) for v in value]


def _seeds(value: Any, fail: Fail) -> tuple[int, ...] | None:
    if value is None:
        return None
    if isinstance(value, int) and not isinstance(value, bool) and value >= 1:
        return tuple(range(value))
    if (
        isinstance(value, list)
        and value
        and all(isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in value)
        and len(set(value)) == len(value)
    ):
        return tuple(value)
    raise fail(
        "seeds", f"{value!r}: allowed values are an integer >= 1 or a list of distinct seeds."
    )


def _derived(value: Any, fail: Fail) -> dict[str, dict[str, Any]]:
    from ..sparsity.distributions import DISTRIBUTIONS

    if value is None:
        return {}
    if not isinstance(value, dict):
        raise fail("derived", f"{value!r} is not a mapping of key -> {{equal_flops_of: ...}}.")
    found = {}
    for key, spec in value.items():
        name = f"derived.{key}"
        if not isinstance(spec, dict) or not set(spec) - {"when"}:
            raise fail(name, f"{spec!r}: write {{equal_flops_of: erk}} (and optionally when:).")
        kinds = [k for k in spec if k != "when"]
        for kind in kinds:
            if kind not in DERIVED_KINDS:
                raise fail(
                    name, f"{kind!r} is unknown: allowed kinds are {', '.join(DERIVED_KINDS)}."
                )
            if key not in DERIVED_KINDS[kind]:
                raise fail(name, f"{kind} sets {', '.join(DERIVED_KINDS[kind])} only, not {key}.")
        if len(kinds) != 1:
            raise fail(name, f"give one kind, not {', '.join(kinds)}.")
        if spec["equal_flops_of"] not in DISTRIBUTIONS:
            raise fail(
                f"{name}.equal_flops_of",
                f"{spec['equal_flops_of']!r}: allowed values are {', '.join(DISTRIBUTIONS)}.",
            )
        when = spec.get("when") or {}
        if not isinstance(when, dict):
            raise fail(f"{name}.when", f"{when!r} is not a partial assignment ({{key: value}}).")
        for when_key in when:
            _check_key(str(when_key), f"{name}.when", fail)
        found[str(key)] = {"equal_flops_of": spec["equal_flops_of"], "when": dict(when)}
    return found


def _records(value: Any, fail: Fail) -> list[str]:
    names = _string_list(value, "record", fail)
    for name in names:
        if name not in RECORDS:
            raise fail("record", f"{name!r} is unknown: allowed values are {', '.join(RECORDS)}.")
    return names


def _pattern(value: Any, key: str, fail: Fail) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str) or not value.strip():
        raise fail(
            key, f'{value!r} is not a name pattern, e.g. "{{sparsity.method}}_seed{{seed}}".'
        )
    rest = PLACEHOLDER.sub("", value)
    if "{" in rest or "}" in rest:
        raise fail(
            key, f"{value!r} has a malformed placeholder: write {{dotted.key}} or {{key:fmt}}."
        )
    return value


def _report(value: Any, fail: Fail) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise fail("report", f"{value!r} is not a mapping of {', '.join(REPORT_KEYS)}.")
    for key in value:
        if key not in REPORT_KEYS:
            raise fail(f"report.{key}", f"unknown: allowed keys are {', '.join(REPORT_KEYS)}.")
    report = {key: _string_list(value.get(key), f"report.{key}", fail) for key in value}
    for key in report.get("group_by", []):
        if key != "seed":
            _check_key(key, "report.group_by", fail)
    for figure in report.get("figures", []):
        if figure not in FIGURE_KINDS:
            raise fail(
                "report.figures",
                f"{figure!r} is not a figure regrow report draws: allowed values are "
                f"{', '.join(FIGURE_KINDS)}.",
            )
    return report


def _search(value: Any, varied: set[str], fail: Fail) -> SearchSpec | None:
    if value is None:
        return None
    if not isinstance(value, dict):
        raise fail("search", f"{value!r} is not a mapping of {', '.join(SEARCH_KEYS)}.")
    for key in value:
        if key not in SEARCH_KEYS:
            raise fail(f"search.{key}", f"unknown: allowed keys are {', '.join(SEARCH_KEYS)}.")
    sampler = value.get("sampler", "tpe")
    if sampler not in SAMPLERS:
        raise fail("search.sampler", f"{sampler!r}: allowed values are {', '.join(SAMPLERS)}.")
    direction = value.get("direction", "maximize")
    if direction not in DIRECTIONS:
        raise fail(
            "search.direction", f"{direction!r}: allowed values are {', '.join(DIRECTIONS)}."
        )
    trials, seed = value.get("trials"), value.get("seed", 0)
    for key, number, low in (("trials", trials, 1), ("seed", seed, 0)):
        if not isinstance(number, int) or isinstance(number, bool) or number < low:
            raise fail(f"search.{key}", f"{number!r}: allowed values are integers >= {low}.")
    metric = value.get("metric", "val_accuracy")
    if not isinstance(metric, str) or not metric:
        raise fail("search.metric", f"{metric!r} is not a summary.json metric, e.g. test_accuracy.")
    space = value.get("space")
    if not isinstance(space, dict) or not space:
        raise fail(
            "search.space", "missing or empty: give key -> {low:, high:} or {choices: [...]}."
        )
    return SearchSpec(
        sampler=sampler,
        trials=trials,
        direction=direction,
        metric=metric,
        seed=seed,
        space=tuple(_space(str(k), v, varied, fail) for k, v in space.items()),
    )


def _space(key: str, spec: Any, varied: set[str], fail: Fail) -> SearchSpace:
    name = f"search.space.{key}"
    _check_key(key, "search.space", fail, tags=False)
    if key in varied:
        raise fail(name, f"{key} is varied by the grid too: search it or grid it, not both.")
    if not isinstance(spec, dict) or not spec:
        raise fail(name, f"{spec!r}: write {{low: 0.1, high: 0.6}} or {{choices: [a, b]}}.")
    for part in spec:
        if part not in SPACE_KEYS:
            raise fail(name, f"{part!r} is unknown: allowed keys are {', '.join(SPACE_KEYS)}.")
    if "choices" in spec:
        choices = spec["choices"]
        if set(spec) != {"choices"} or not isinstance(choices, list) or not choices:
            raise fail(name, "choices is a non-empty list, given alone (no low/high).")
        if not all(_scalar_ok(c) and not isinstance(c, list) for c in choices):
            raise fail(name, f"{choices!r}: choices are strings, numbers, true/false or null.")
        return SearchSpace(key, choices=tuple(choices))
    low, high = spec.get("low"), spec.get("high")
    numbers = all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in (low, high))
    if not numbers or not low < high:
        raise fail(name, f"low={low!r}, high={high!r}: allowed values are numbers, low < high.")
    kind = spec.get("type", "int" if isinstance(low, int) and isinstance(high, int) else "float")
    if kind not in ("int", "float"):
        raise fail(f"{name}.type", f"{kind!r}: allowed values are int, float.")
    log, step = spec.get("log", False), spec.get("step")
    if not isinstance(log, bool):
        raise fail(f"{name}.log", f"{log!r}: allowed values are true, false.")
    if step is not None and (not isinstance(step, (int, float)) or step <= 0 or log):
        raise fail(f"{name}.step", f"{step!r}: allowed values are numbers > 0 (not with log).")
    return SearchSpace(key, low=low, high=high, log=log, step=step, integer=kind == "int")


# ------------------------------------------------------------------------------------ planning
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


def _config_of(study: Study, preset: str | None, overrides: list[str], label: str) -> RunConfig:
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
    runs whose method has it (module docstring)."""

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
                self._default_method = _config_of(self.study, preset, probe, label).sparsity.method
            method = self._default_method
        from ..sparsity import get_method

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


def plan_runs(
    study: Study,
    preset: str | None = None,
    seeds: int | None = None,
    overrides: Sequence[str] = (),
    out_dir: str | None = None,
    derive: Callable[[str | None, list[str], str], float] | None = None,
) -> StudyPlan:
    """Every run of ``study`` over ``preset`` (default: the study's), each validated through
    :func:`regrow.train.load_config`. ``overrides`` are the command line's; ``out_dir`` the study
    directory (default ``runs/<study name>``); ``derive(preset, overrides, distribution)`` computes
    an equal-FLOP sparsity (default :func:`equal_flops_sparsity`). For a search study the runs are
    its outer points, named without a seed."""
    preset = preset or study.preset
    if not preset:
        from ..train import presets

        raise StudyError(
            f"study {study.source} names no base preset: give --preset (one of "
            f"{', '.join(presets())}, or a .yaml path)."
        )
    root = out_dir or str(Path("runs") / study.name)
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
    fixed = _FixedOverrides(study, [*study.overrides, *overrides])
    derive = derive or equal_flops_sparsity
    seed_list = study.seed_list(seeds) if not study.search else [0]
    runs: list[RunSpec] = []
    configs: dict[str, RunConfig] = {}
    seen: dict[str, str] = {}
    methods: set[str] = set()
    for assign, pattern in assignments(study):
        # Seeds change nothing load_config checks: each assignment is validated once, then
        # each seed's config is that one with its seed and run directory.
        label = _label(assign)
        assign_overrides = _config_overrides(assign)
        probe_tail = [f"seed={seed_list[0]}", f"out_dir={root}"]
        base = [*fixed.for_run(preset, assign, label), *assign_overrides]
        params_base = dict(assign)
        extra: dict[str, Any] = {}
        for key, spec in study.derived.items():
            if not _matches(assign, spec["when"]):
                continue
            nominal = _lookup(key, assign, _config_of(study, preset, [*base, *probe_tail], label))
            value = derive(
                preset, [*base, f"{key}={render_value(nominal)}"], spec["equal_flops_of"]
            )
            base.append(f"{key}={render_value(value)}")
            params_base[key] = value
            extra.setdefault("derived", {})[key] = {
                "equal_flops_of": spec["equal_flops_of"],
                "from": nominal,
                "value": value,
            }
        config = _config_of(study, preset, [*base, *probe_tail], label)
        methods.add(config.sparsity.method)
        if study.record and not study.search:
            extra |= record_values(study, config)
        for seed in seed_list:
            params = dict(params_base) if study.search else {**params_base, "seed": seed}
            if any(_matches(params, e) for e in study.exclude):
                continue
            where = "run_name" if pattern is None else "also.run_name"
            chosen = pattern or study.run_name or default_pattern(varied, not study.search)
            name = format_name(study, chosen, params, config, where)
            if name in seen:
                raise study.error(
                    where,
                    f"runs {seen[name]} and {_label(params)} are both named {name!r}: put the "
                    "keys that tell them apart into the pattern.",
                )
            seen[name] = _label(params)
            path = str(Path(root) / name)
            tail = [] if study.search else [f"seed={seed}", f"out_dir={path}"]
            runs.append(RunSpec(name, tuple([*base, *tail]), params, path, dict(extra)))
            configs[name] = dataclasses.replace(config, seed=seed, out_dir=path)
    if not runs:
        raise study.error("exclude", "every run is excluded: nothing to train.")
    fixed.check_used(methods)
    return StudyPlan(
        study=study,
        preset=preset,
        overrides=tuple(fixed.fixed),
        seeds=tuple(study.seed_list(seeds)),
        out_dir=root,
        runs=tuple(runs),
        configs=configs,
    )


# ------------------------------------------------------------------------- regrow's own solvers
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
    """The values ``study.record`` asks for (:data:`RECORDS`), from the method's own hooks as the
    training harness and ``regrow flops`` call them: ``model_width`` is the width multiplier the
    run's method trains at (Small-Dense's solved width; the configured one otherwise)."""
    from ..models import get_model_spec

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
