"""Starting a run from the masks of another run directory (``sparsity.init_masks``).

``sparsity.init_masks=RUN_DIR`` takes the masks of that run's checkpoint (a finished or a partial
run: ``state["sparsifier"]["masks"]``) and installs them at step 0 through
:meth:`~regrow.sparsity.base.Sparsifier.start_from_masks`, ``exact`` or
``shuffle_within_layers`` (``sparsity.init_masks_mode``). Active weights start at this run's
initial values, every other weight and its optimizer state at zero.

``sparsity.rewind=true`` asks for the *source run's* initial weights (the lottery ticket's
rewinding). Initial weights are a function of the seed, the model, its width and the data set
(which fixes the number of classes), so the source's ``config.yaml`` must agree on ``seed``,
``model.name``, ``model.width`` and ``data.name`` — checked, not assumed — and this run's
initial weights, taken as :func:`regrow.train.loop.build` built them, are the source's.

Recipes: Lottery = ``sparsity.method=static sparsity.init_masks=<pruning run>
sparsity.rewind=true``; RigL re-initialised = ``sparsity.method=rigl sparsity.init_masks=<rigl
run>`` (README, "Masks from another run").
"""

from __future__ import annotations

import contextlib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
import yaml

from ..sparsity import Sparsifier
from .checkpoint import load_checkpoint
from .config import ConfigError, RunConfig
from .rundir import RunDir

#: What the initial weights are a function of (``torch.manual_seed(seed)``, then the model).
REWIND_KEYS = ("seed", "model.name", "model.width", "data.name")


def _get(tree: Any, key: str) -> Any:
    for part in key.split("."):
        tree = tree.get(part) if isinstance(tree, dict) else None
    return tree


def source_config(path: Path) -> dict[str, Any]:
    """The source run's ``config.yaml`` as a mapping; :class:`ConfigError` if it has none."""
    try:
        text = RunDir(path).config_file().read_text(encoding="utf-8")
        tree = yaml.safe_load(text)
    except (FileNotFoundError, OSError, UnicodeDecodeError, yaml.YAMLError) as error:
        raise ConfigError(
            f"sparsity.init_masks={path}: not a run directory ({error}); give the directory of "
            "a finished or partial regrow run."
        ) from None
    if not isinstance(tree, dict):
        raise ConfigError(f"sparsity.init_masks={path}: its config.yaml is not a mapping.")
    return tree


def source_masks(path: Path) -> tuple[dict[str, torch.Tensor], str]:
    """The masks saved in the source run's checkpoint and the method that trained them."""
    run_dir = RunDir(path)
    if not run_dir.has_checkpoint():
        raise ConfigError(
            f"sparsity.init_masks={path} has no checkpoint ({run_dir.checkpoint_path.name}): "
            "give a run that has trained (finished, or stopped with a checkpoint)."
        )
    sparsifier_state = load_checkpoint(run_dir.checkpoint_path)["sparsifier"]
    masks = sparsifier_state.get("masks") or {}
    method = str(sparsifier_state.get("method"))
    if not masks:
        raise ConfigError(
            f"sparsity.init_masks={path} holds no masks (its method {method!r} trains without "
            "masks): give a run of a sparse method."
        )
    return masks, method


def check_rewind(config: RunConfig, path: Path, source: dict[str, Any]) -> None:
    """``sparsity.rewind``: the source's initial weights are this run's only if it agrees on
    :data:`REWIND_KEYS`; :class:`ConfigError` naming each key that differs."""
    here = {
        "seed": config.seed,
        "model.name": config.model.name,
        "model.width": config.model.width,
        "data.name": config.data.name,
    }
    differ = [
        f"{key}: {_get(source, key)!r} there, {value!r} here"
        for key, value in here.items()
        if _get(source, key) != value and not _same_number(_get(source, key), value)
    ]
    if differ:
        raise ConfigError(
            f"sparsity.rewind=true needs the initial weights of {path}, but its configuration "
            f"differs in what they are built from ({'; '.join(differ)}): use the same "
            f"{', '.join(REWIND_KEYS)}, or set sparsity.rewind=false."
        )


def _same_number(a: Any, b: Any) -> bool:
    return isinstance(a, int | float) and isinstance(b, int | float) and float(a) == float(b)


def start_from_run(
    config: RunConfig,
    run_dir: RunDir,
    sparsifier: Sparsifier,
    initial: Mapping[str, torch.Tensor] | None,
) -> dict[str, Any] | None:
    """Install the masks of ``sparsity.init_masks`` into ``sparsifier`` (at step 0) and return
    the ``init_masks`` entry of ``summary.json`` (``None`` when the key is not set).

    ``initial``: the model's parameters as built, before the sparsifier zeroed them outside its
    own initial masks; active weights start from them. On a resume (``run_dir`` already has a
    checkpoint) nothing is installed: the checkpoint holds the masks."""
    s = config.sparsity
    if s.init_masks is None:
        return None
    path = Path(s.init_masks).expanduser()
    entry: dict[str, Any] = {
        "source": str(path.resolve()),
        "mode": s.init_masks_mode,
        "rewind": s.rewind,
        "source_method": None,
    }
    if run_dir.has_checkpoint():  # a resume: the masks are in this run's own checkpoint
        with contextlib.suppress(ConfigError):  # the source may have moved since the start
            entry["source_method"] = _get(source_config(path), "sparsity.method")
        return entry
    if not path.is_dir():
        raise ConfigError(
            f"sparsity.init_masks={s.init_masks} is not a directory: give the directory of a "
            "finished or partial regrow run."
        )
    source = source_config(path)
    masks, entry["source_method"] = source_masks(path)
    if s.rewind:
        check_rewind(config, path, source)
    if _get(source, "sparsity.sparsity") != s.sparsity:
        raise ConfigError(
            f"sparsity.sparsity={s.sparsity} but the masks of {path} were trained at "
            f"{_get(source, 'sparsity.sparsity')}: set sparsity.sparsity="
            f"{_get(source, 'sparsity.sparsity')} (the masks fix the sparsity)."
        )
    assert initial is not None, "build passes the initial parameters when init_masks is set"
    weights = {name: initial[name] for name in sparsifier.names}
    try:
        sparsifier.start_from_masks(masks, s.init_masks_mode, seed=config.seed, weights=weights)
    except ValueError as error:
        raise ConfigError(f"sparsity.init_masks={path}: {error}") from None
    return entry
