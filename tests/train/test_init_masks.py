"""Masks from another run: ``sparsity.init_masks``, ``init_masks_mode``, ``rewind`` (the Lottery
and RigL re-init recipes) and the library's ``Sparsifier.start_from_masks``."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

import regrow
from regrow.cli import main
from regrow.train import ConfigError, RunDir, load_config, train
from regrow.train.checkpoint import load_checkpoint
from regrow.train.distributed import Context
from regrow.train.loop import build
from tests.helpers import mlp

QUICK = ["train.epochs=2", "train.eval_every=2", "train.progress=false"]


def config(out_dir: Path, *overrides: str):
    return load_config("quickstart", [f"out_dir={out_dir}", *QUICK, *overrides])


def built(out_dir: Path, *overrides: str):
    """The run ``build`` makes (nothing trained, nothing written but the lock-free directory)."""
    return build(config(out_dir, *overrides), Context(), torch.device("cpu"), RunDir(out_dir))


def saved_masks(run_dir: Path) -> dict[str, torch.Tensor]:
    return load_checkpoint(run_dir / "checkpoint.pt")["sparsifier"]["masks"]


@pytest.fixture(scope="module")
def pruning_run(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("sources") / "pruning"
    train(config(out, "sparsity.method=pruning"))
    return out


@pytest.fixture(scope="module")
def rigl_momentum_run(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("sources") / "rigl_momentum"
    train(
        config(
            out,
            "sparsity.method=rigl",
            "sparsity.args.delta_t=10",
            "sparsity.args.redistribution=momentum",
            "sparsity.args.begin_step=10",  # no momentum before the first optimizer step
        )
    )
    return out


# ----------------------------------------------------------------------------- the recipes
def test_the_recipe_presets_are_one_line_over_a_base_preset(
    pruning_run: Path, rigl_momentum_run: Path, tmp_path: Path
) -> None:
    lottery = load_config(
        "quickstart,lottery", [f"out_dir={tmp_path}", f"sparsity.init_masks={pruning_run}"]
    )
    assert (lottery.sparsity.method, lottery.sparsity.rewind) == ("static", True)
    assert lottery.data.name == "digits"  # the base preset still applies
    shuffled = load_config(
        "quickstart,rigl_reinit",
        [f"out_dir={tmp_path}", f"sparsity.init_masks={rigl_momentum_run}",
         "sparsity.init_masks_mode=shuffle_within_layers"],
    )  # fmt: skip
    assert (shuffled.sparsity.method, shuffled.sparsity.rewind) == ("rigl", False)
    out = tmp_path / "lottery"
    argv = ["train", "--preset", "quickstart,lottery", *QUICK, f"out_dir={out}"]
    assert main([*argv, f"sparsity.init_masks={pruning_run}", "train.stop_at_step=1"]) == 0
    source, masks = saved_masks(pruning_run), saved_masks(out)
    assert all(torch.equal(masks[name], source[name]) for name in source)
    with pytest.raises(ConfigError, match=r"needs sparsity\.init_masks"):
        load_config("quickstart,lottery", [f"out_dir={tmp_path}"])


def test_lottery_starts_from_the_pruning_runs_final_masks_and_initial_weights(
    pruning_run: Path, tmp_path: Path
) -> None:
    source = saved_masks(pruning_run)
    run = built(
        tmp_path / "lottery",
        "sparsity.method=static",
        f"sparsity.init_masks={pruning_run}",
        "sparsity.rewind=true",
    )
    # The Pruning run starts dense: its built model holds its initial weights untouched.
    initial = built(tmp_path / "pruning_again", "sparsity.method=pruning").model
    sparsifier = run.sparsifier
    assert sparsifier.step_count == 0 and sorted(sparsifier.masks) == sorted(source)
    for name, param in zip(sparsifier.names, sparsifier.params, strict=True):
        mask = source[name]
        assert torch.equal(sparsifier.masks[name], mask), name
        expected = initial.get_parameter(name).detach() * mask
        assert torch.equal(param.detach(), expected), name  # initial where active, 0 elsewhere
        assert int(mask.sum()) < mask.numel()  # the pruning run did prune
    assert run.init_masks == {
        "source": str(pruning_run.resolve()),
        "mode": "exact",
        "rewind": True,
        "source_method": "pruning",
    }


def test_lottery_through_the_cli_keeps_the_masks_and_records_their_source(
    pruning_run: Path, tmp_path: Path
) -> None:
    common = [
        "train",
        "--preset",
        "quickstart",
        *QUICK,
        "sparsity.method=static",
        f"sparsity.init_masks={pruning_run}",
        "sparsity.rewind=true",
    ]
    stopped = tmp_path / "stopped"
    assert main([*common, f"out_dir={stopped}", "train.stop_at_step=1"]) == 0
    source = saved_masks(pruning_run)
    masks = saved_masks(stopped)
    assert all(torch.equal(masks[name], source[name]) for name in source)
    finished = tmp_path / "finished"
    assert main([*common, f"out_dir={finished}"]) == 0
    summary = json.loads((finished / "summary.json").read_text())
    assert summary["init_masks"]["source_method"] == "pruning"
    assert summary["init_masks"]["rewind"] is True
    assert summary["sparsity"] == pytest.approx(
        1 - sum(int(m.sum()) for m in source.values()) / sum(m.numel() for m in source.values())
    )
    # A resume of the stopped run restores its own checkpoint and finishes.
    assert main(["train", "--resume", str(stopped)]) == 0
    assert json.loads((stopped / "summary.json").read_text())["init_masks"]["mode"] == "exact"


def test_shuffle_within_layers_keeps_every_layers_count_and_moves_positions(
    pruning_run: Path, tmp_path: Path
) -> None:
    source = saved_masks(pruning_run)
    run = built(
        tmp_path / "shuffled",
        "sparsity.method=static",
        f"sparsity.init_masks={pruning_run}",
        "sparsity.init_masks_mode=shuffle_within_layers",
    )
    initial = built(tmp_path / "pruning_again", "sparsity.method=pruning").model
    for name, param in zip(run.sparsifier.names, run.sparsifier.params, strict=True):
        mask = run.sparsifier.masks[name]
        assert int(mask.sum()) == int(source[name].sum()), name
        assert not torch.equal(mask, source[name]), name
        assert torch.equal(param.detach(), initial.get_parameter(name).detach() * mask), name
    assert run.init_masks["mode"] == "shuffle_within_layers"
    again = built(
        tmp_path / "shuffled_again",
        "sparsity.method=static",
        f"sparsity.init_masks={pruning_run}",
        "sparsity.init_masks_mode=shuffle_within_layers",
    )
    assert all(
        torch.equal(again.sparsifier.masks[n], run.sparsifier.masks[n]) for n in source
    )  # seeded


@pytest.mark.parametrize("mode", ["exact", "shuffle_within_layers"])
def test_rigl_reinit_from_a_redistributed_rigl_run_trains_from_its_counts(
    rigl_momentum_run: Path, tmp_path: Path, mode: str
) -> None:
    source = saved_masks(rigl_momentum_run)
    plan = built(
        tmp_path / "plain", "sparsity.method=rigl", "sparsity.args.delta_t=10"
    ).sparsifier.target_counts
    assert any(int(source[name].sum()) != count for name, count in plan.items())  # redistributed
    out = tmp_path / mode
    summary = train(
        config(
            out,
            "sparsity.method=rigl",
            "sparsity.args.delta_t=10",
            f"sparsity.init_masks={rigl_momentum_run}",
            f"sparsity.init_masks_mode={mode}",
        )
    )
    assert summary["init_masks"]["source_method"] == "rigl"
    final = saved_masks(out)  # RigL without redistribution conserves the counts it started from
    assert all(int(final[name].sum()) == int(source[name].sum()) for name in source)


# ---------------------------------------------------------------------- what is refused
def test_a_source_of_another_width_is_exit_2_naming_the_layer(
    pruning_run: Path, tmp_path: Path, capsys
) -> None:
    code = main(
        [
            "train",
            "--preset",
            "quickstart",
            f"out_dir={tmp_path / 'x'}",
            *QUICK,
            "sparsity.method=static",
            "model.width=0.5",
            f"sparsity.init_masks={pruning_run}",
        ]
    )
    err = capsys.readouterr().err
    assert code == 2 and len(err.strip().splitlines()) == 1
    first = next(iter(saved_masks(pruning_run)))
    assert f"layer {first}" in err and "(150, 64)" in err and "(300, 64)" in err


@pytest.mark.parametrize("kind", ["dense", "empty", "missing"])
def test_a_source_without_masks_is_exit_2(tmp_path: Path, capsys, kind: str) -> None:
    source = tmp_path / "source"
    if kind == "dense":
        train(config(source, "sparsity.method=dense", "train.epochs=1", "train.eval_every=1"))
    elif kind == "empty":
        source.mkdir()
    args = ["train", "--preset", "quickstart", f"out_dir={tmp_path / 'x'}", *QUICK]
    code = main([*args, "sparsity.method=static", f"sparsity.init_masks={source}"])
    err = capsys.readouterr().err
    assert code == 2 and len(err.strip().splitlines()) == 1
    assert "sparsity.init_masks" in err
    assert {"dense": "holds no masks", "empty": "not a run directory", "missing": "not a dir"}[
        kind
    ] in err
    assert not (tmp_path / "x" / "checkpoint.pt").exists()


def test_rewind_with_another_seed_is_exit_2_naming_seed(
    pruning_run: Path, tmp_path: Path, capsys
) -> None:
    args = ["train", "--preset", "quickstart", f"out_dir={tmp_path / 'x'}", *QUICK]
    flags = ["sparsity.method=static", f"sparsity.init_masks={pruning_run}"]
    assert main([*args, *flags, "seed=1", "sparsity.rewind=true"]) == 2
    err = capsys.readouterr().err
    assert "seed: 0 there, 1 here" in err and "sparsity.rewind" in err
    # Without rewind another seed is allowed: the masks alone carry over.
    assert main([*args, *flags, "seed=1", "train.stop_at_step=1"]) == 0


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["sparsity.method=pruning", "sparsity.init_masks=somewhere"], "starts dense"),
        (["sparsity.method=snip", "sparsity.init_masks=somewhere"], "starts dense"),
        (["sparsity.method=dense", "sparsity.init_masks=somewhere"], "trains without masks"),
        (["sparsity.rewind=true"], "needs sparsity.init_masks"),
        (["sparsity.init_masks=x", "sparsity.init_masks_mode=random"], "exact, shuffle"),
    ],
)
def test_bad_init_masks_settings_are_config_errors(overrides: list[str], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        load_config("quickstart", ["out_dir=x", *overrides])


def test_another_sparsity_than_the_sources_is_refused(pruning_run: Path, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"sparsity\.sparsity=0\.97"):
        built(
            tmp_path / "x",
            "sparsity.method=static",
            "sparsity.sparsity=0.9",
            f"sparsity.init_masks={pruning_run}",
        )


# ------------------------------------------------------------------------------ the library
def sparsifier(method: str = "static", **kwargs):
    model = mlp()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    return regrow.get_method(method)(
        model, optimizer, sparsity=0.9, total_steps=100, dense_layers=[], **kwargs
    )


def test_start_from_masks_checks_names_and_shapes() -> None:
    target = sparsifier()
    masks = {name: mask.clone() for name, mask in target.masks.items()}
    first, second = target.names[0], target.names[1]
    renamed = {("x." + k if k == second else k): v for k, v in masks.items()}
    with pytest.raises(ValueError, match=f"layer {second}.*has no mask"):
        target.start_from_masks(renamed)
    reshaped = {**masks, first: torch.ones(3, 3, dtype=torch.bool)}
    with pytest.raises(ValueError, match=rf"layer {first}: .*\(3, 3\).*\(64, 20\)"):
        target.start_from_masks(reshaped)
    with pytest.raises(ValueError, match="starts dense"):
        sparsifier("pruning").start_from_masks(masks)
    with pytest.raises(ValueError, match="allowed values are exact"):
        target.start_from_masks(masks, "random")


def test_start_from_masks_installs_weights_and_zeroes_optimizer_state() -> None:
    source = sparsifier(seed=5)  # other random masks than the target's
    target = sparsifier()
    weights = {
        name: torch.full_like(p, 2.0) for name, p in zip(target.names, target.params, strict=True)
    }
    target.optimizer.state[target.params[0]]["momentum_buffer"] = torch.ones_like(target.params[0])
    target.start_from_masks(source.masks, weights=weights)
    for name, param in zip(target.names, target.params, strict=True):
        mask = source.masks[name]
        assert torch.equal(target.masks[name], mask)
        assert torch.equal(param.detach(), 2.0 * mask)
    buffer = target.optimizer.state[target.params[0]]["momentum_buffer"]
    assert torch.equal(buffer, source.masks[target.names[0]].float())
    assert target.active_counts() == {n: int(m.sum()) for n, m in source.masks.items()}
    with pytest.raises(ValueError, match="step 0"):
        target.step_count = 1
        target.start_from_masks(source.masks)


def test_a_relative_init_masks_is_recorded_absolute_and_resumes_from_elsewhere(
    pruning_run: Path, tmp_path: Path, monkeypatch
) -> None:
    """issue 18, item 2: a relative ``sparsity.init_masks`` was re-resolved against the working
    directory of a resume, recording a wrong source and ``source_method: null``."""
    monkeypatch.chdir(pruning_run.parent)
    out = tmp_path / "lottery"
    argv = ["train", "--preset", "quickstart", *QUICK, "sparsity.method=static"]
    argv += [f"sparsity.init_masks={pruning_run.name}", f"out_dir={out}"]
    assert main([*argv, "train.stop_at_step=1"]) == 0
    assert load_config(str(out / "config.yaml")).sparsity.init_masks == str(pruning_run.resolve())
    monkeypatch.chdir(tmp_path)
    assert main(["train", "--resume", str(out)]) == 0
    entry = json.loads((out / "summary.json").read_text())["init_masks"]
    assert entry["source"] == str(pruning_run.resolve()) and entry["source_method"] == "pruning"
