"""The one loader for YAML the user names: a shipped name or a path, with one wording for every
error (missing file, unreadable file, invalid YAML with its line and column, not a mapping)."""

from __future__ import annotations

from importlib import resources
from importlib.resources.abc import Traversable
from pathlib import Path
from typing import Any

import yaml


def shipped_names(folder: Traversable) -> list[str]:
    """The ``*.yaml`` names (without the suffix) in a folder shipped inside the package."""
    if not folder.is_dir():
        return []
    return sorted(p.name[: -len(".yaml")] for p in folder.iterdir() if p.name.endswith(".yaml"))


def package_folder(package: str, *parts: str) -> Traversable:
    """A data folder shipped inside ``package`` (``package_folder("regrow.train", "presets")``)."""
    folder = resources.files(package)
    for part in parts:
        folder = folder / part
    return folder


def read_named(
    kind: str, name: str, folder: Traversable, error: type[Exception] = ValueError
) -> tuple[str, str]:
    """The text of ``name`` — a path to a ``.yaml`` file, or a name shipped in ``folder`` — and
    how errors should call it (the path, or ``"<name> (shipped)"``).

    ``kind`` is what the user calls the thing (``"preset"``, ``"study"``); every failure is one
    ``error`` naming it and the allowed values.
    """
    path = Path(name)
    shipped = ", ".join(shipped_names(folder))
    if path.suffix in (".yaml", ".yml") or path.is_file():
        if path.is_dir():
            raise error(
                f"{kind} file {name} is a directory, not a file: give the path of a .yaml file "
                f"or one of {shipped}."
            )
        if not path.is_file():
            raise error(
                f"{kind} file {name} does not exist: give the path of a .yaml file or one of "
                f"{shipped}."
            )
        try:
            return path.read_text(encoding="utf-8"), str(path)
        except (OSError, UnicodeDecodeError) as problem:
            reason = (
                problem.strerror if isinstance(problem, OSError) and problem.strerror else problem
            )
            raise error(f"{kind} file {name} cannot be read: {reason}.") from None
    candidate = folder / f"{name}.yaml"
    if not candidate.is_file():
        raise error(
            f"{kind} {name!r} is unknown: allowed values are {shipped} "
            f"(or the path of a .yaml {kind} file)."
        )
    return candidate.read_text(encoding="utf-8"), f"{name} (shipped)"


def yaml_problem(
    what: str, problem: yaml.YAMLError, error: type[Exception] = ValueError
) -> Exception:
    """A YAML syntax error as one ``error`` naming ``what``, the line and the column."""
    mark = getattr(problem, "problem_mark", None) or getattr(problem, "context_mark", None)
    text = getattr(problem, "problem", None) or str(problem).splitlines()[0]
    context = getattr(problem, "context", None)
    where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
    detail = f"{context}, {text}" if context else str(text)
    return error(f"{what} is not valid YAML{where}: {detail}.")


def parse_mapping(
    text: str, what: str, error: type[Exception] = ValueError, hint: str = ""
) -> dict[str, Any]:
    """``text`` parsed as a YAML mapping (empty text gives ``{}``); one ``error`` naming ``what``
    when it is not valid YAML or holds something other than a mapping."""
    try:
        tree = yaml.safe_load(text)
    except yaml.YAMLError as problem:
        raise yaml_problem(what, problem, error) from None
    if tree is None:
        return {}
    if not isinstance(tree, dict):
        raise error(f"{what} holds {type(tree).__name__}, not a mapping{hint}.")
    return tree
