"""The one "did you mean" matcher behind every unknown-key and unknown-name error."""

from __future__ import annotations

import difflib
from collections.abc import Iterable


def close_matches(word: str, known: Iterable[str], n: int = 3, cutoff: float = 0.75) -> list[str]:
    """Known names that look like ``word``, closest first.

    Each name is scored by the better of the whole name and its last dotted part alone, so
    ``optim.lr`` finds ``train.lr``; only names about as close as the best are kept
    (``sparsity.sparsty`` gives ``sparsity.sparsity``, not ``sparsity.args``).
    """

    def ratio(a: str, b: str) -> float:
        return difflib.SequenceMatcher(None, a, b).ratio()

    word = str(word)
    leaf = word.rsplit(".", 1)[-1]
    scores = {name: max(ratio(word, name), ratio(leaf, name.rsplit(".", 1)[-1])) for name in known}
    best = max(scores.values(), default=0.0)
    close = [name for name, score in scores.items() if score >= max(cutoff, best - 0.05)]
    return sorted(close, key=lambda name: -scores[name])[:n]


def did_you_mean(word: str, known: Iterable[str], n: int = 3) -> str:
    """``"did you mean a or b?"`` for the close matches of ``word``, or ``""`` when none."""
    matches = close_matches(word, known, n=n)
    return f"did you mean {' or '.join(matches)}?" if matches else ""
