"""The language-model task end to end: a short char_gpt run on a small text file resumes
bit-identically, records bits per character, its text and vocabulary; `regrow sample` is
deterministic for a seed; bad text inputs are one line, exit 2."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from regrow.cli import main
from regrow.train import load_config, train
from tests.train.runs import regrow_train

TEXT = "the quick brown fox jumps over the lazy dog; pack my box with five dozen jugs. " * 60


@pytest.fixture(scope="module")
def text_file(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("text") / "fox.txt"
    path.write_text(TEXT, encoding="utf-8")
    return path


def lm_overrides(text: Path) -> list[str]:
    """2 passes of 66 steps of 4 windows of 16 characters; RigL updates every 10 steps."""
    return [
        "data.name=text", f"data.path={text}", "data.block_size=16", "model.name=char_gpt",
        "train.batch_size=4", "train.epochs=2", "train.lr=0.05", "train.eval_every=1",
        "train.progress=false", "sparsity.method=rigl", "sparsity.sparsity=0.8",
        "sparsity.args.delta_t=10",
    ]  # fmt: skip


def lm_config(out_dir: Path, text: Path, *overrides: str):
    return load_config(None, [f"out_dir={out_dir}", *lm_overrides(text), *overrides])


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory, text_file: Path) -> Path:
    out = tmp_path_factory.mktemp("lm") / "run"
    assert train(lm_config(out, text_file))["status"] == "finished"
    return out


def test_a_run_records_bits_per_character_and_its_text(finished_run: Path, text_file) -> None:
    summary = json.loads((finished_run / "summary.json").read_text())
    assert summary["dataset"] == "text" and summary["model"] == "char_gpt"
    assert summary["test_bpc"] == pytest.approx(summary["test_loss"] / math.log(2))
    assert summary["val_bpc"] == pytest.approx(summary["val_loss"] / math.log(2))
    assert summary["test_bpc"] < math.log2(summary["vocabulary_size"])  # it learned something
    assert summary["text"] == str(text_file) and summary["characters"] == len(TEXT)
    assert summary["block_size"] == 16
    vocabulary = json.loads((finished_run / "vocabulary.json").read_text())
    assert vocabulary["vocabulary"] == "".join(sorted(set(TEXT)))
    rows = [json.loads(line) for line in (finished_run / "metrics.jsonl").read_text().splitlines()]
    passes = [row for row in rows if "event" not in row]
    evaluations = [row for row in passes if "val_bpc" in row]
    assert len(evaluations) == len(passes) >= 2  # one per pass (train.eval_every=1)
    assert 0 <= evaluations[-1]["train_accuracy"] <= 100  # per character, not per window


@pytest.mark.parametrize("stop", [10, 11, 75])
def test_a_resumed_run_sees_the_same_windows_and_is_bit_identical(
    tmp_path: Path, text_file: Path, finished_run: Path, stop: int
) -> None:
    """Stops right before and after the mask update at step 10, and inside the second pass."""
    part = lm_config(tmp_path / "part", text_file, f"train.stop_at_step={stop}")
    assert train(part)["status"] == "stopped"
    assert train(part, resume=True)["status"] == "finished"
    a = torch.load(finished_run / "checkpoint.pt", weights_only=False)
    b = torch.load(tmp_path / "part" / "checkpoint.pt", weights_only=False)
    for key, value in a["model"].items():
        assert torch.equal(value, b["model"][key]), key

    def rows(run: Path) -> list[dict]:
        lines = (run / "metrics.jsonl").read_text().splitlines()
        return [{k: v for k, v in json.loads(r).items() if k != "seconds"} for r in lines]

    assert rows(finished_run) == rows(tmp_path / "part")


def test_sample_is_deterministic_for_a_seed(finished_run: Path, capsys) -> None:
    def sample(*args: str) -> str:
        assert main(["sample", str(finished_run), "--tokens", "40", *args]) == 0
        return capsys.readouterr().out

    first = sample("--prompt", "the ", "--seed", "1")
    assert first.startswith("the ") and len(first) == len("the ") + 40 + 1  # and a newline
    assert sample("--prompt", "the ", "--seed", "1") == first
    assert sample("--prompt", "the ", "--seed", "2") != first
    greedy = sample("--temperature", "0", "--seed", "1")
    assert sample("--temperature", "0", "--seed", "9") == greedy  # no randomness left
    assert set(greedy.strip()) <= set(TEXT)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--prompt", "€"], "characters '€' are not in the vocabulary"),
        (["--tokens", "0"], "--tokens 0: allowed values are integers >= 1"),
        (["--temperature", "-1"], "--temperature -1.0: allowed values are finite numbers >= 0"),
    ],
)
def test_bad_sample_input_is_one_line(finished_run: Path, capsys, args, message) -> None:
    assert main(["sample", str(finished_run), *args]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("regrow sample: error: ") and message in err and "\n" not in err


def test_sample_refuses_a_run_that_is_not_a_language_model(tmp_path: Path, capsys) -> None:
    (tmp_path / "image_run").mkdir()
    assert main(["sample", str(tmp_path / "image_run")]) == 2
    assert "is not a language-model run" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (None, "does not exist"),
        (b"", "is empty"),
        (b"\xff\xfe" * 400, "is not UTF-8 text"),
        (b"short text", "too few for data.block_size=16"),
    ],
)
def test_bad_text_input_to_regrow_train_is_one_line_exit_2(
    tmp_path: Path, text_file: Path, content: bytes | None, message: str
) -> None:
    path = tmp_path / "given.txt"
    if content is not None:
        path.write_bytes(content)
    overrides = [o for o in lm_overrides(text_file) if not o.startswith("data.path=")]
    result = regrow_train(*overrides, f"data.path={path}", f"out_dir={tmp_path / 'out'}")
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("regrow train: error: data.path="), lines
    assert message in lines[0]


def test_the_compiled_step_trains_the_transformer_as_the_eager_one(
    tmp_path: Path, text_file: Path, monkeypatch
) -> None:
    """train.compile=true on the language model with AdamW and clipping (the charlm recipe): one
    graph, no graph break, the eager run's masks at every update and its losses up to rounding."""
    from torch._dynamo.utils import counters

    from tests.train.test_compile import losses, recorded_updates

    updates = recorded_updates(monkeypatch)
    extra = [
        "train.epochs=1", "train.optimizer=adamw", "train.lr=0.003", "train.grad_clip=0.5",
        "train.lr_schedule=cosine",
    ]  # fmt: skip
    train(lm_config(tmp_path / "eager", text_file, *extra))
    eager_updates = list(updates)
    updates.clear()
    torch._dynamo.reset()
    counters.clear()
    train(lm_config(tmp_path / "compiled", text_file, *extra, "train.compile=true"))
    assert not counters["graph_break"], dict(counters["graph_break"])
    assert sum(counters["recompiles"].values()) <= 1, dict(counters["recompiles"])
    assert len(updates) == len(eager_updates) >= 4
    for (step, masks), (_, eager_masks) in zip(updates, eager_updates, strict=True):
        for mask, eager_mask in zip(masks, eager_masks, strict=True):
            assert torch.equal(mask, eager_mask), f"the update at step {step}"
    assert losses(tmp_path / "compiled") == pytest.approx(losses(tmp_path / "eager"), rel=1e-4)


def test_a_language_model_run_exports_with_its_vocabulary_and_decode_step(
    finished_run: Path, tmp_path: Path, capsys
) -> None:
    out = tmp_path / "out"
    assert main(["export", str(finished_run), str(out), "--formats", "condensed"]) == 0
    printed = capsys.readouterr().out
    assert "its decode step" in printed and "decode step (prefix, then token by token)" in printed
    assert (out / "vocabulary.json").read_text() == (finished_run / "vocabulary.json").read_text()
    info = json.loads((out / "export.json").read_text())
    assert info["input_shape"] == [16] and info["model_options"] == {"block_size": 16}
    assert {layer["format"] for layer in info["export"]["decode_layers"]} <= {"condensed", "ell"}
    exported = torch.load(out / "model.pt", weights_only=False)
    tokens = torch.randint(0, info["num_classes"], (2, 16))
    with torch.inference_mode():
        logits = exported(tokens)
        cache = exported.new_cache(2)
        step = torch.cat([exported.decode(tokens[:, i : i + 1], cache, i) for i in range(16)], 1)
    assert logits.shape == (2, 16, info["num_classes"])
    torch.testing.assert_close(step, logits, rtol=1e-4, atol=1e-4)
    assert main(["bench-inference", str(out), "--rounds", "1", "--threads", "1"]) == 0
    printed = capsys.readouterr().out
    assert "decode step: one new token per sample after 8 cached tokens" in printed
    assert printed.count("| exported |") == 2  # the forward table and the decode-step table
