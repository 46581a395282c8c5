"""regrow.util.suggest: the one "did you mean" matcher behind unknown-key and unknown-name errors."""

from __future__ import annotations

from regrow.util.suggest import close_matches, did_you_mean

KEYS = ["train.lr", "train.epochs", "sparsity.sparsity", "sparsity.args", "sparsity.method"]


def test_a_typo_finds_the_key_it_meant() -> None:
    assert close_matches("sparsity.sparsty", KEYS) == ["sparsity.sparsity"]


def test_the_last_dotted_part_alone_can_match() -> None:
    assert close_matches("optim.lr", KEYS) == ["train.lr"]


def test_only_names_about_as_close_as_the_best_are_kept_closest_first() -> None:
    assert close_matches("abcd", ["abce", "abcx", "wxyz"], cutoff=0.5) == ["abce", "abcx"]
    assert close_matches("abcd", ["abcdx", "abxy"], cutoff=0.5) == ["abcdx"]
    assert close_matches("abcd", ["abce", "abcf", "abcg", "abch"], n=2) == ["abce", "abcf"]


def test_nothing_close_is_no_match_and_an_empty_hint() -> None:
    assert close_matches("zzz", KEYS) == []
    assert close_matches("anything", []) == []
    assert did_you_mean("zzz", KEYS) == ""


def test_did_you_mean_joins_the_matches_with_or() -> None:
    assert did_you_mean("sparsity.methd", KEYS) == "did you mean sparsity.method?"
    assert did_you_mean("abcd", ["abce", "abcf"]) == "did you mean abce or abcf?"
