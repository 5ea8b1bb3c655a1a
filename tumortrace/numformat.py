"""How numbers read on the pages and in the README: one rule per kind of quantity.

Every table of stored results (the Benchmarks and About pages, ``scripts/results_table.py``) turns
its numbers into text here, so the same quantity always shows the same decimals:

* ``score`` (a value in [0, 1]: F1, AUC, ECE, precision): three decimals, ``0.633``;
* ``percent`` (a fraction shown in percent): one decimal, ``50.0``, ``69.3``;
* ``points`` (a difference of two fractions, in percentage points): signed, ``+1.2``;
* ``count`` (cases, folds, epochs): an integer, or one decimal for a mean of counts, ``201.3``;
* ``quantity`` (seconds, GFLOPs, millions of parameters, ratios): three significant digits and
  never an exponent, ``378``, ``16.2``, ``0.318``.

A missing value (None, NaN) is :data:`MISSING`, never a made-up 0.
"""

from __future__ import annotations

import math
from typing import Literal

Kind = Literal["score", "percent", "points", "count", "quantity"]
KINDS: tuple[str, ...] = ("score", "percent", "points", "count", "quantity")
MISSING = "—"

_COUNTS = frozenset({"n", "n_train", "n_val", "n_test", "best_epoch", "folds", "epochs"})


def _number(value: object) -> float | None:
    """``value`` as a finite float, or None (None, NaN, text that is not a number)."""
    if value is None or isinstance(value, bool):
        return None
    try:
        x = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return None
    return x if math.isfinite(x) else None


def fmt(value: object, kind: Kind = "score") -> str:
    """``value`` as text by the rule of its ``kind`` (see the module docstring).

    Raises:
        ValueError: ``kind`` is not one of :data:`KINDS`.
    """
    if kind not in KINDS:
        raise ValueError(f"Unknown number kind {kind!r}; expected one of {list(KINDS)}.")
    x = _number(value)
    if x is None:
        return MISSING
    if kind == "score":
        return f"{x:.3f}"
    if kind == "percent":
        return f"{100 * x:.1f}"
    if kind == "points":
        return f"{100 * x:+.1f}"
    if kind == "count":
        return f"{x:.0f}" if x == round(x) else f"{x:.1f}"
    digits = 0 if x == 0 else max(0, 2 - math.floor(math.log10(abs(x))))
    return f"{x:.{digits}f}"


def fmt_mean_std(mean: object, std: object, kind: Kind = "score", n: int | None = None) -> str:
    """``"0.850 ± 0.071"``: a mean and its standard deviation by the same rule.

    Args:
        n: how many values the mean is of; 0 gives :data:`MISSING`.
    """
    if n == 0 or _number(mean) is None:
        return MISSING
    spread = _number(std)
    spread_kind: Kind = "percent" if kind == "points" else kind
    return f"{fmt(mean, kind)} ± {fmt(0.0 if spread is None else spread, spread_kind)}"


def metric_kind(name: str) -> Kind:
    """The kind of a stored metric by its key: ``"n_train"`` -> count, ``"train_seconds"`` ->
    quantity, anything else (``"accuracy"``, ``"lgg_f1"``) -> score."""
    if name in _COUNTS:
        return "count"
    if name.endswith("_seconds") or name in {"params", "gflops"}:
        return "quantity"
    return "score"
