"""Benchmark tables for the Benchmarks page: the stored JSON records as pandas DataFrames.

No streamlit and no model code; every function takes records of ``weights/benchmarks/*.json``
and returns a DataFrame.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd

from tumortrace.config import CLASSES
from tumortrace.metrics import mean_std
from tumortrace.networks import display_name
from tumortrace.viz import CLASS_NAMES

OVERALL_METRICS: tuple[str, ...] = (
    "accuracy",
    "balanced_accuracy",
    "macro_f1",
    "auc_macro",
    "ece",
)
PER_CLASS_METRICS: tuple[str, ...] = ("precision", "recall", "f1", "specificity", "auc")


def _fmt(mean: float, std: float, n: int) -> str:
    return "—" if n == 0 else f"{mean:.3f} ± {std:.3f}"


def fold_values(
    folds: Sequence[Mapping], metric: str, cls: str | None = None
) -> list[float | None]:
    """One metric from every fold record (``cls`` selects a per-class metric)."""
    out: list[float | None] = []
    for fold in folds:
        src = fold.get("per_class", {}).get(cls, {}) if cls else fold
        v = src.get(metric)
        out.append(None if v is None else float(v))
    return out


def summary_table(benches: Mapping[str, Mapping], classes: Sequence[str] = CLASSES) -> pd.DataFrame:
    """Mean ± std over folds, one column per network, one row per metric.

    Args:
        benches: ``{arch: benchmark record}`` as in ``weights/benchmarks/<arch>.json``.

    Returns:
        DataFrame indexed by metric label ("accuracy", "LGG recall", ...), cells "0.912 ± 0.013".
    """
    rows: dict[str, dict[str, str]] = {}
    for arch, bench in benches.items():
        folds = bench.get("folds", [])
        col = display_name(arch)
        for metric in OVERALL_METRICS:
            rows.setdefault(metric.replace("_", " "), {})[col] = _fmt(
                *mean_std(fold_values(folds, metric))
            )
        for cls in classes:
            for metric in PER_CLASS_METRICS:
                label = f"{CLASS_NAMES.get(cls, cls)} {metric}"
                rows.setdefault(label, {})[col] = _fmt(*mean_std(fold_values(folds, metric, cls)))
    df = pd.DataFrame.from_dict(rows, orient="index")
    df.index.name = "metric (mean ± std over folds)"
    return df


def per_fold_table(bench: Mapping, classes: Sequence[str] = CLASSES) -> pd.DataFrame:
    """One row per fold: sizes, overall metrics, per-class F1, training time and best epoch."""
    records = []
    for fold in bench.get("folds", []):
        rec: dict[str, object] = {"fold": fold.get("fold")}
        for key in ("n_train", "n_val", "n_test"):
            rec[key] = fold.get(key)
        for metric in OVERALL_METRICS:
            v = fold.get(metric)
            rec[metric.replace("_", " ")] = None if v is None else round(float(v), 4)
        for cls in classes:
            v = fold.get("per_class", {}).get(cls, {}).get("f1")
            rec[f"{CLASS_NAMES.get(cls, cls)} F1"] = None if v is None else round(float(v), 4)
        rec["train s"] = fold.get("train_seconds")
        rec["best epoch"] = fold.get("best_epoch")
        records.append(rec)
    return pd.DataFrame.from_records(records)


def summed_confusion(folds: Sequence[Mapping], n_classes: int = len(CLASSES)) -> list[list[int]]:
    """The element-wise sum of every fold's confusion matrix (each test case counted once)."""
    total = np.zeros((n_classes, n_classes), dtype=np.int64)
    for fold in folds:
        cm = np.asarray(fold.get("confusion", []), dtype=np.int64)
        if cm.shape == total.shape:
            total += cm
    return total.tolist()


def cost_table(benches: Mapping[str, Mapping], inference: Mapping | None) -> pd.DataFrame:
    """Parameters, GFLOPs, training time and the stored CPU inference seconds per network.

    Args:
        benches: ``{arch: benchmark record}``.
        inference: the ``weights/benchmarks/inference.json`` record, or None.
    """
    archs = list(benches)
    if inference:
        for key in ("naive", "fast"):
            archs += [a for a in inference.get(key, {}) if a != "total" and a not in archs]
    records = []
    for arch in archs:
        bench = benches.get(arch, {})
        params = bench.get("params")
        rec: dict[str, object] = {
            "network": display_name(arch),
            "parameters (M)": None if params is None else round(params / 1e6, 2),
            "GFLOPs / volume": bench.get("gflops"),
            "input D×H×W": "×".join(str(s) for s in bench.get("input_shape", [])) or None,
        }
        mean, _, n = mean_std([f.get("train_seconds") for f in bench.get("folds", [])])
        rec["train s / fold"] = round(mean, 1) if n else None
        if inference:
            rec["CPU s (naive)"] = inference.get("naive", {}).get(arch)
            rec["CPU s (fast)"] = inference.get("fast", {}).get(arch)
        records.append(rec)
    return pd.DataFrame.from_records(records)


def heldout_table(benches: Mapping[str, Mapping], heldout: Mapping[str, Mapping]) -> pd.DataFrame:
    """Held-out cohort scores beside the cross-fold means, one row per held-out report.

    Args:
        benches: ``{arch: benchmark record}`` as in ``weights/benchmarks/<arch>.json``.
        heldout: ``{arch: report}`` of ``python -m tumortrace evaluate --format json`` on a cohort
            the network never saw (``weights/benchmarks/heldout/<arch>.json``); the metrics are at
            the top level or under ``metrics``.

    Returns:
        DataFrame with the network, the cohort size and, for accuracy, accuracy at the training
        class mix (the report's ``accuracy_at_training_mix``: held-out per-class recalls weighted
        by the training cohort's class shares), balanced accuracy and LGG recall, the held-out
        value, the cross-fold mean (plain accuracy for both accuracies) and their difference
        (percentage points, held-out minus cross-fold); missing values (a network without a
        benchmark record, a metric the report lacks) are None or NaN.
    """
    records = []
    for arch, report in heldout.items():
        metrics = report.get("metrics", report)
        folds = benches.get(arch, {}).get("folds", [])
        fold_accuracy = fold_values(folds, "accuracy")
        rec: dict[str, object] = {"network": display_name(arch), "n": report.get("n")}
        pairs = {
            "accuracy": (metrics.get("accuracy"), fold_accuracy),
            "accuracy at training mix": (report.get("accuracy_at_training_mix"), fold_accuracy),
            "balanced acc.": (
                metrics.get("balanced_accuracy"),
                fold_values(folds, "balanced_accuracy"),
            ),
            "LGG recall": (
                metrics.get("per_class", {}).get("lgg", {}).get("recall"),
                fold_values(folds, "recall", "lgg"),
            ),
        }
        for label, (value, per_fold) in pairs.items():
            mean, _, n = mean_std(per_fold)
            held = None if value is None else round(100 * float(value), 1)
            cross = round(100 * mean, 1) if n else None
            rec[f"{label} held-out %"] = held
            rec[f"{label} cross-fold %"] = cross
            rec[f"{label} Δ pts"] = (
                None if held is None or cross is None else round(100 * (float(value) - mean), 1)
            )
        records.append(rec)
    return pd.DataFrame.from_records(records)


def explanations_table(doc: Mapping, target: str = "true") -> pd.DataFrame:
    """The ``explain-eval`` summary (``weights/benchmarks/explanations.json``) as a table.

    Args:
        doc: the JSON document of ``python -m tumortrace explain-eval``.
        target: ``"true"`` (maps of the true class) or ``"predicted"``.

    Returns:
        One row per network, method and class (LGG, HGG, all): pointing game as ``hits/n`` and
        percent, pointing within the near margin (%), the map's energy in the lesion (%) against
        the lesion's share of the brain (%), the median concentration (their ratio per case) in
        the lesion and within the near margin, and the median seconds per analysis. The default
        method is marked "(default)", the legacy one "(before)".
    """
    default, legacy = doc.get("default_method"), doc.get("legacy_method")
    near = doc.get("near_mm", 10)
    records = []
    for r in doc.get("summary", []):
        if not isinstance(r, Mapping) or r.get("target") != target:
            continue
        method = str(r.get("method"))
        if method == default:
            method += " (default)"
        elif method == legacy:
            method += " (before)"
        n = r.get("n") or 0
        seconds = r.get("seconds")
        records.append(
            {
                "network": display_name(str(r.get("arch"))),
                "method": method,
                "class": CLASS_NAMES.get(r.get("label"), r.get("label")),
                "max in lesion": f"{r.get('hits', 0)}/{n}",
                "max in lesion %": round(100 * float(r.get("pointing", 0.0)), 1),
                f"max ≤ {near:g} mm %": round(100 * float(r.get("pointing_near", 0.0)), 1),
                "energy in lesion %": round(100 * float(r.get("energy_share", 0.0)), 1),
                "lesion share of brain %": round(100 * float(r.get("lesion_share", 0.0)), 1),
                "concentration ×": round(float(r.get("concentration", 0.0)), 2),
                f"concentration ≤ {near:g} mm ×": round(float(r.get("concentration_near", 0.0)), 2),
                "s / analysis": None if seconds is None else round(float(seconds), 3),
            }
        )
    return pd.DataFrame.from_records(records)
