"""regrow.util.yamlfile: the one loader for YAML the user names (a shipped name or a path) and its
one-line errors naming the file, the line and column, and the allowed values."""

from __future__ import annotations

from pathlib import Path

import pytest

from regrow.util.yamlfile import package_folder, parse_mapping, read_named, shipped_names


class MyError(Exception):
    pass


@pytest.fixture
def shipped(tmp_path: Path) -> Path:
    folder = tmp_path / "shipped"
    folder.mkdir()
    (folder / "alpha.yaml").write_text("a: 1\n")
    (folder / "beta.yaml").write_text("b: 2\n")
    (folder / "notes.txt").write_text("not yaml\n")
    return folder


def one_line(error: pytest.ExceptionInfo) -> str:
    text = str(error.value)
    assert "\n" not in text
    return text


def test_shipped_names_are_the_yaml_files_sorted(shipped: Path, tmp_path: Path) -> None:
    assert shipped_names(shipped) == ["alpha", "beta"]
    assert shipped_names(tmp_path / "missing") == []
    assert "quickstart" in shipped_names(package_folder("regrow.train", "presets"))


def test_a_shipped_name_and_a_path_are_read_and_named(shipped: Path, tmp_path: Path) -> None:
    assert read_named("preset", "alpha", shipped) == ("a: 1\n", "alpha (shipped)")
    own = tmp_path / "own.yaml"
    own.write_text("c: 3\n")
    assert read_named("preset", str(own), shipped) == ("c: 3\n", str(own))


def test_an_unknown_name_lists_the_shipped_ones(shipped: Path) -> None:
    with pytest.raises(MyError) as error:
        read_named("study", "gamma", shipped, MyError)
    assert one_line(error) == (
        "study 'gamma' is unknown: allowed values are alpha, beta "
        "(or the path of a .yaml study file)."
    )


def test_a_missing_yaml_path_names_the_file_and_the_shipped_names(
    shipped: Path, tmp_path: Path
) -> None:
    missing = tmp_path / "nowhere.yaml"
    with pytest.raises(ValueError) as error:
        read_named("preset", str(missing), shipped)
    assert one_line(error) == (
        f"preset file {missing} does not exist: give the path of a .yaml file or one of "
        "alpha, beta."
    )


def test_an_unreadable_file_is_one_line(shipped: Path, tmp_path: Path) -> None:
    binary = tmp_path / "binary.yaml"
    binary.write_bytes(b"\xff\xfe\x00bad")
    with pytest.raises(ValueError) as error:
        read_named("preset", str(binary), shipped)
    assert one_line(error).startswith(f"preset file {binary} cannot be read: ")


def test_parse_mapping_gives_the_mapping_and_empty_text_is_empty() -> None:
    assert parse_mapping("a: 1\nb: [2, 3]\n", "x") == {"a": 1, "b": [2, 3]}
    assert parse_mapping("", "x") == {}
    assert parse_mapping("# only a comment\n", "x") == {}


def test_invalid_yaml_names_what_the_line_and_the_column() -> None:
    with pytest.raises(MyError) as error:
        parse_mapping("a: 1\nb: [2, 3\n", "study file s.yaml", MyError)
    text = one_line(error)
    assert text.startswith("study file s.yaml is not valid YAML at line 3, column 1: ")
    assert text.endswith(".")


def test_something_other_than_a_mapping_is_named_with_the_hint() -> None:
    with pytest.raises(ValueError) as error:
        parse_mapping("- a\n- b\n", "preset p.yaml", hint=" of config keys")
    assert one_line(error) == "preset p.yaml holds list, not a mapping of config keys."
    with pytest.raises(ValueError) as error:
        parse_mapping("42\n", "x")
    assert one_line(error) == "x holds int, not a mapping."


# --- issue 18, item 13: a directory named like a YAML file is said to be a directory
def test_a_directory_named_x_yaml_is_a_directory_not_missing(shipped: Path, tmp_path: Path) -> None:
    folder = tmp_path / "x.yaml"
    folder.mkdir()
    with pytest.raises(MyError) as error:
        read_named("preset", str(folder), shipped, MyError)
    text = one_line(error)
    assert text.startswith(f"preset file {folder} is a directory, not a file: ")
    assert "does not exist" not in text and "alpha, beta" in text
