"""The study-file format: its keys, the parsed :class:`Study` and the checks that read it.

Owns every rule about what a study file may say; a file that breaks one fails here, before
anything is planned, with one :class:`StudyError` line naming the file and the key. The format
is described for users in docs/STUDIES.md.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from ..sparsity.distributions import DISTRIBUTIONS
from ..train.config import ConfigError, descriptions
from ..util.suggest import did_you_mean
from ..util.yamlfile import package_folder, parse_mapping, read_named, shipped_names
from .direction import optuna_direction
from .names import FIGURE_KINDS

__all__ = [
    "DEFAULT_SEARCH_SEEDS",
    "DEFAULT_SEEDS",
    "DERIVED_KINDS",
    "OWN_KEYS",
    "PLACEHOLDER",
    "RECORDS",
    "REPORT_KEYS",
    "SHIPPED",
    "TOP_LEVEL_KEYS",
    "SearchSpace",
    "SearchSpec",
    "Study",
    "StudyError",
    "load_study",
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
#: The study files shipped with the package (``regrow sweep NAME``).
SHIPPED = package_folder("regrow.study", "studies")
#: A placeholder in a name pattern: ``{dotted.key}`` or ``{dotted.key:format}``.
PLACEHOLDER = re.compile(r"\{([A-Za-z_][A-Za-z0-9_.]*)(?::([^{}]*))?\}")
#: A study's name is a plain directory name (the default study directory is ``runs/<name>``):
#: the characters of a run name, not starting with a dot or a dash.
PLAIN_NAME = re.compile(r"[A-Za-z0-9_+][A-Za-z0-9._+-]*")


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
    """A study file, checked (docs/STUDIES.md says what each field means)."""

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
    hint = ": write `name: ...`, `grid:` and the other keys one per line (see docs/STUDIES.md)"
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
    name = tree["name"].strip()
    if not PLAIN_NAME.fullmatch(name):
        raise StudyError(
            f"study {source}: name {name!r} is not a plain name (it names the study directory "
            "runs/<name>): allowed characters are letters, digits and . _ + -, not first a dot "
            "or a dash; rename the study."
        )


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
        if where == "grid":
            _check_distinct(values, name, fail)
        found[str(key)] = list(values)
    return found


def _check_distinct(values: list[Any], where: str, fail: Fail) -> None:
    """A value listed twice would plan the same runs twice (``true`` and ``1`` differ)."""
    seen: list[Any] = []
    for item in values:
        if any(item == s and isinstance(item, bool) == isinstance(s, bool) for s in seen):
            raise fail(where, f"duplicate value {item!r}: list each value once.")
        seen.append(item)


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
            if isinstance(item, list):
                _check_distinct(item, name, fail)
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
    trials, seed = value.get("trials"), value.get("seed", 0)
    for key, number, low in (("trials", trials, 1), ("seed", seed, 0)):
        if not isinstance(number, int) or isinstance(number, bool) or number < low:
            raise fail(f"search.{key}", f"{number!r}: allowed values are integers >= {low}.")
    metric = value.get("metric", "val_accuracy")
    if not isinstance(metric, str) or not metric:
        raise fail("search.metric", f"{metric!r} is not a summary.json metric, e.g. test_accuracy.")
    direction = _direction(value.get("direction"), metric, fail)
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


def _direction(value: Any, metric: str, fail: Fail) -> str:
    """``search.direction``: as given, else the metric's (:mod:`.direction`: ``minimize`` for
    bits per character and losses), else ``maximize``; one the metric's contradicts is refused."""
    known = optuna_direction(metric)
    direction = (known or "maximize") if value is None else value
    if direction not in DIRECTIONS:
        raise fail(
            "search.direction", f"{direction!r}: allowed values are {', '.join(DIRECTIONS)}."
        )
    if known is not None and direction != known:
        better = "lower" if known == "minimize" else "higher"
        raise fail(
            "search.direction",
            f"{direction} would select the worst trials: {better} {metric} is better; write "
            f"direction: {known}, or leave it out.",
        )
    return direction


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
