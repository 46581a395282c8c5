"""The train config: presets and overrides, ranges, unknown keys with the closest ones named, type
errors in the config's own words, preset files named by file and line, a description per key."""

from __future__ import annotations

import json

import pytest

from regrow.cli import main
from regrow.sparsity import METHODS
from regrow.train import ConfigError, load_config
from regrow.train.config import RANGES, descriptions


def test_presets_and_overrides() -> None:
    config = load_config("cifar10_wrn22_2", ["sparsity.method=set", "seed=3", "out_dir=x"])
    assert (config.sparsity.method, config.seed, config.model.name) == ("set", 3, "wrn22_2")
    assert config.train.epochs == 250 and config.train.weight_decay == 5e-4
    assert config.train.nesterov is True and config.data.name == "cifar10"
    resnet = load_config("cifar100_resnet50", ["out_dir=x"])
    assert resnet.train.label_smoothing == 0.1 and resnet.train.warmup_epochs == 5


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["sparsity.methd=rigl"], "sparsity.methd"),
        (["sparsity.method=lottery"], f"allowed values are {', '.join(sorted(METHODS))} "),
        (["sparsity.sparsity=1.5"], "0 <= x < 1"),
        (["train.epochs=abc"], "train.epochs"),
        (["data.name=mnist"], "allowed values are cifar10, cifar100, digits"),
        (["sparsity.distribution=normal"], "uniform, er, erk"),
        (["sparsity.init=kaiming"], "sparsity.init='kaiming' .*dense, sparse_fan_in"),
        (["seed"], "key=value"),
    ],
)
def test_bad_config_names_the_key_and_allowed_values(overrides: list[str], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        load_config("quickstart", ["out_dir=x", *overrides])


def test_unknown_preset_and_missing_out_dir() -> None:
    with pytest.raises(
        ConfigError,
        match="allowed values are charlm, charlm_large, cifar100_resnet50, cifar10_wrn22_2, lottery, "
        "quickstart, rigl_itop, rigl_reinit",
    ):
        load_config("imagenet", [])
    with pytest.raises(ConfigError, match="out_dir is not set"):
        load_config(None, [])


def test_the_new_ranges_are_in_the_table_and_their_edges_pass():
    for key in ("train.lr_gamma", "train.weight_decay", "train.momentum", "train.warmup_epochs"):
        assert key in RANGES
    config = load_config(
        "quickstart",
        ["out_dir=x", "train.weight_decay=0", "train.warmup_epochs=0", "train.lr_gamma=1.5"],
    )
    assert config.train.weight_decay == 0 and config.train.lr_gamma == 1.5
    plain = load_config("quickstart", ["out_dir=x", "train.momentum=0", "train.nesterov=false"])
    assert plain.train.momentum == 0


@pytest.mark.parametrize(
    ("override", "expected"),
    [
        ("train.epoch=3", "did you mean train.epochs?"),
        ("epochs=3", "did you mean train.epochs?"),
        ("optim.lr=0.1", "'optim.lr'"),  # named as typed, matched by its last part
        ("sparsity.methd=set", "did you mean sparsity.method?"),
        ("colour=blue", "'colour' is unknown: list every key"),
    ],
)
def test_an_unknown_key_names_the_closest_keys_not_all_of_them(override, expected):
    with pytest.raises(ConfigError) as info:
        load_config(None, ["out_dir=x", override])
    message = str(info.value)
    assert expected in message and "--print-config" in message
    assert "train.tensorboard" not in message and "\n" not in message


@pytest.mark.parametrize(
    ("override", "expected"),
    [
        ("train.epochs=abc", "train.epochs='abc' is not an integer: allowed values are integers"),
        ("train.epochs=1.5", "train.epochs=1.5 is not an integer"),
        ("train.epochs=null", "train.epochs=null is not an integer"),
        ("sparsity.sparsity=abc", "sparsity.sparsity='abc' is not a number: allowed values are"),
        ("train.lr_milestones=[a]", "train.lr_milestones=['a'] is not a list of numbers"),
        ("train.lr_milestones=0.5", "train.lr_milestones=0.5 is not a list of numbers"),
        ("sparsity.custom_densities=3", "is not a mapping of names to numbers"),
        ("train.device=[1]", "train.device=[1] is not a string"),
    ],
)
def test_type_errors_are_rewritten_in_the_configs_words(override, expected):
    with pytest.raises(ConfigError) as info:
        load_config(None, ["out_dir=x", override])
    message = str(info.value)
    assert expected in message, message
    for internal in ("full_key", "object_type", "reference_type", "could not be converted"):
        assert internal not in message
    assert "\n" not in message


def test_preset_errors_name_the_file_and_line(tmp_path):
    cases = {
        "syntax.yaml": ("a: 1\nb: [2\n", ["syntax.yaml", "line 3", "not valid YAML"]),
        "dup.yaml": ("seed: 1\nseed: 2\n", ["dup.yaml", "line 2", "duplicate key seed"]),
        "docs.yaml": ("seed: 1\n---\nseed: 2\n", ["docs.yaml", "line 2", "single document"]),
        "list.yaml": ("- 1\n", ["list.yaml", "holds a list", "not a mapping"]),
        "scalar.yaml": ("42\n", ["scalar.yaml", "holds the value '42'"]),
        "type.yaml": (
            "seed: 0\ntrain:\n  epochs: ten\n",
            ["train.epochs='ten' (in preset", "type.yaml, line 3", "not an integer"],
        ),
    }
    for name, (text, needles) in cases.items():
        path = tmp_path / name
        path.write_text(text)
        with pytest.raises(ConfigError) as info:
            load_config(str(path), ["out_dir=x"])
        message = str(info.value)
        for needle in needles:
            assert needle in message, (name, message)
        assert "\n" not in message
    (tmp_path / "empty.yaml").write_text("")
    assert load_config(str(tmp_path / "empty.yaml"), ["out_dir=x"]).seed == 0  # empty is fine


def test_every_config_key_has_a_description():
    found = descriptions()
    assert found["sparsity.sparsity"] == "fraction of zero weights over the sparse layers"
    assert found["out_dir"] == "the run directory"
    missing = [key for key, text in found.items() if not text.strip()]
    assert missing == []


# ------------------------------------------------------------------- issue 18: 3, 7 and 8


def test_the_quickstart_preset_names_no_run_directory(tmp_path, monkeypatch, capsys):
    """A run needs its own out_dir: the quickstart preset does not default to runs/quickstart, the
    directory of the quickstart study (issue 18, item 3)."""
    with pytest.raises(ConfigError, match="out_dir is not set"):
        load_config("quickstart", [])
    monkeypatch.chdir(tmp_path)
    assert main(["train", "--preset", "quickstart", "train.epochs=1"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("regrow train: error: out_dir is not set"), err
    assert list(tmp_path.iterdir()) == [], "nothing written"


@pytest.mark.parametrize("preset", ["cifar10_wrn22_2", "cifar100_resnet50"])
def test_no_shipped_preset_names_a_run_directory(preset):
    """Two runs of a preset with a default out_dir shared one directory (issue 18, item 3: the
    same defect as the quickstart's, in the CIFAR presets)."""
    with pytest.raises(ConfigError, match="out_dir is not set"):
        load_config(preset, [])


@pytest.mark.parametrize(
    ("override", "expected"),
    [
        (
            "train.epochs=1000000000000000000000000000000",
            "train.epochs=1000000000000000000000000000000 is out of range: allowed values are "
            "integers >= 1 and <= 100000",
        ),
        ("train.multiplier=1e30", "train.multiplier=1e+30 is out of range: allowed values are 0 <"),
        ("train.multiplier=0.001", "train.epochs × train.multiplier"),
    ],
)
def test_an_absurd_run_length_is_refused_with_the_allowed_range(override, expected):
    """issue 18, item 7: train.epochs=1e30 (or a multiplier to match) trained on, step by step."""
    with pytest.raises(ConfigError) as info:
        load_config("quickstart", ["out_dir=x", override])
    assert expected in str(info.value), str(info.value)
    assert "\n" not in str(info.value)


@pytest.mark.parametrize(
    "override",
    [
        "sparsity.custom_densities.fc1.weight=0.5",
        'sparsity.custom_densities."fc1.weight"=0.5',
        "sparsity.custom_densities={fc1.weight: 0.5}",
    ],
)
def test_a_dotted_layer_name_in_custom_densities_is_one_name(override, tmp_path, capsys):
    """issue 18, item 8: OmegaConf splits ``fc1.weight`` at its dot; the config joins it back,
    so train, flops and sweep take README's command line."""
    config = load_config("quickstart", ["out_dir=x", override])
    assert config.sparsity.custom_densities == {"fc1.weight": 0.5}
    assert main(["flops", "--preset", "quickstart", "--json", override]) == 0
    assert json.loads(capsys.readouterr().out)["inference_flops"] > 0
    out = tmp_path / "run"
    argv = ["train", "--preset", "quickstart", f"out_dir={out}", "train.epochs=1", override]
    assert main([*argv, "sparsity.method=static", "train.progress=false"]) == 0
    assert json.loads((out / "summary.json").read_text())["custom_densities"] == {"fc1.weight": 0.5}


def test_a_bad_dotted_custom_density_is_one_line_naming_it():
    with pytest.raises(ConfigError) as info:
        load_config("quickstart", ["out_dir=x", "sparsity.custom_densities.fc1.weight=abc"])
    message = str(info.value)
    assert "fc1.weight" in message and "is not a mapping of names to numbers" in message, message


# ------------------------------------------------------- the optimizer keys (AdamW, cosine, clip)


@pytest.mark.parametrize(
    ("override", "expected"),
    [
        ("train.optimizer=adam", "train.optimizer='adam' is not allowed: allowed values are sgd, adamw"),
        ("train.lr_schedule=linear", "train.lr_schedule='linear' is not allowed: allowed values are step, cosine"),
        ("train.betas=[0.9]", "train.betas=[0.9] is out of range: allowed values are two numbers"),
        ("train.betas=[0.9,1.0]", "train.betas=[0.9, 1.0] is out of range: allowed values are two numbers [beta1, beta2], each 0 <= b < 1"),
        ("train.betas=[-0.1,0.9]", "train.betas=[-0.1, 0.9] is out of range"),
        ("train.betas=[a,b]", "train.betas=['a', 'b'] is not a list of numbers"),
        ("train.eps=0", "train.eps=0.0 is out of range: allowed values are x > 0"),
        ("train.grad_clip=0", "train.grad_clip=0.0 is out of range: allowed values are x > 0, or null"),
        ("train.grad_clip=-1", "train.grad_clip=-1.0 is out of range"),
        ("train.min_lr_ratio=1.5", "train.min_lr_ratio=1.5 is out of range: allowed values are 0 <= x <= 1"),
        ("train.min_lr_ratio=-0.1", "train.min_lr_ratio=-0.1 is out of range"),
    ],
)  # fmt: skip
def test_the_optimizer_keys_are_checked_in_one_line(override, expected):
    with pytest.raises(ConfigError) as info:
        load_config("quickstart", ["out_dir=x", override])
    message = str(info.value)
    assert expected in message and "\n" not in message, message


def test_the_optimizer_keys_defaults_and_edges():
    t = load_config("quickstart", ["out_dir=x"]).train
    assert (t.optimizer, t.lr_schedule, t.grad_clip) == ("sgd", "step", None)
    assert (t.betas, t.eps, t.min_lr_ratio) == ([0.9, 0.95], 1e-8, 0.1)
    edges = ["train.betas=[0,0.999]", "train.min_lr_ratio=0", "train.grad_clip=null"]
    adamw = load_config("quickstart", ["out_dir=x", "train.optimizer=adamw", *edges]).train
    assert adamw.betas == [0, 0.999] and adamw.min_lr_ratio == 0 and adamw.grad_clip is None
    assert load_config("quickstart", ["out_dir=x", "train.min_lr_ratio=1"]).train.min_lr_ratio == 1
    for key in ("train.optimizer", "train.betas", "train.eps", "train.grad_clip"):
        assert descriptions()[key].strip(), key
    assert "train.lr_schedule" in descriptions() and "train.min_lr_ratio" in descriptions()


def test_nesterov_without_momentum_is_an_sgd_matter_only():
    """The SGD keys are ignored by AdamW: nesterov=true with momentum 0 is refused for SGD only."""
    with pytest.raises(ConfigError, match=r"train\.nesterov=true needs train\.momentum > 0"):
        load_config("quickstart", ["out_dir=x", "train.momentum=0"])
    adamw = load_config("quickstart", ["out_dir=x", "train.momentum=0", "train.optimizer=adamw"])
    assert adamw.train.optimizer == "adamw" and adamw.train.nesterov is True


def test_the_rigl_itop_recipe_is_rigl_with_the_itop_papers_interval_and_drop_fraction() -> None:
    config = load_config("cifar10_wrn22_2,rigl_itop", ["out_dir=x"])
    args = config.sparsity.method_args()
    assert config.sparsity.method == "rigl" and config.sparsity.distribution == "erk"
    assert (args.delta_t, args.alpha) == (4000, 0.5)
    # The base preset's own choices are kept (the recipe only changes the method's arguments).
    assert config.model.name == "wrn22_2" and config.train.epochs == 250
