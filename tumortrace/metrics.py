"""Pure classification metrics on ``(labels, probabilities)``: numpy + scikit-learn, no model code.

Conventions:
    * ``labels``: ``(N,)`` integer class indices into ``classes``.
    * ``probs``: ``(N, C)`` class probabilities (rows sum to 1); the prediction is the argmax.
    * A value that is undefined for the data is ``NaN`` in the records and ``None`` in
      :meth:`Metrics.to_dict` (JSON has no NaN): e.g. the AUC, recall and F1 of a class absent
      from ``labels``, or specificity when every case belongs to the class. Macro averages
      (``balanced_accuracy``, ``macro_f1``, ``auc_macro``) average the defined values only.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, fields
from typing import Any

import numpy as np
from sklearn.metrics import confusion_matrix, roc_auc_score, roc_curve

from tumortrace.config import CLASSES

NAN = float("nan")
SCALARS: tuple[str, ...] = ("accuracy", "balanced_accuracy", "macro_f1", "auc_macro", "ece")
"""Summary metrics of :class:`Metrics`, in display order."""


def _num(x: float) -> float | None:
    return None if x is None or not math.isfinite(x) else float(x)


@dataclass(frozen=True)
class PerClass:
    """One-vs-rest metrics of one class (``NaN`` when undefined)."""

    precision: float
    recall: float
    f1: float
    specificity: float
    auc: float

    def to_dict(self) -> dict[str, float | None]:
        """JSON-ready dict; ``NaN`` becomes ``None``."""
        return {f.name: _num(getattr(self, f.name)) for f in fields(self)}


@dataclass(frozen=True)
class Metrics:
    """Everything reported for one evaluation (a test fold, or a manifest).

    Attributes:
        accuracy: fraction of correct argmax predictions.
        balanced_accuracy: mean recall over the classes present in the labels.
        macro_f1: mean F1 over the classes present in the labels.
        auc_macro: mean one-vs-rest ROC-AUC over classes where it is defined.
        ece: top-label expected calibration error (:func:`expected_calibration_error`).
        per_class: ``{class: PerClass}``.
        confusion: ``C x C`` counts, rows = true class, columns = predicted class.
        roc: ``{class: {"fpr": [...], "tpr": [...]}}`` one-vs-rest ROC points (empty if undefined).
        n: number of cases.
    """

    accuracy: float
    balanced_accuracy: float
    macro_f1: float
    auc_macro: float
    ece: float
    per_class: dict[str, PerClass]
    confusion: list[list[int]]
    roc: dict[str, dict[str, list[float]]]
    n: int = 0

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict in the benchmark-file layout (``NaN`` becomes ``None``)."""
        out: dict[str, Any] = {k: _num(getattr(self, k)) for k in SCALARS}
        out["per_class"] = {c: pc.to_dict() for c, pc in self.per_class.items()}
        out["confusion"] = [list(map(int, row)) for row in self.confusion]
        out["roc"] = {c: {k: list(v) for k, v in r.items()} for c, r in self.roc.items()}
        out["n"] = self.n
        return out

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Metrics:
        """Inverse of :meth:`to_dict` (``None`` becomes ``NaN``)."""

        def f(x: Any) -> float:
            return NAN if x is None else float(x)

        return cls(
            **{k: f(d.get(k)) for k in SCALARS},
            per_class={
                c: PerClass(**{k.name: f(v.get(k.name)) for k in fields(PerClass)})
                for c, v in d["per_class"].items()
            },
            confusion=[list(map(int, row)) for row in d["confusion"]],
            roc={c: {k: list(v) for k, v in r.items()} for c, r in d.get("roc", {}).items()},
            n=int(d.get("n", 0)),
        )


def _check(labels: Any, probs: Any, n_classes: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    labels = np.asarray(labels)
    probs = np.asarray(probs, dtype=np.float64)
    if probs.ndim != 2 or labels.shape != (probs.shape[0],) or probs.shape[0] == 0:
        raise ValueError(
            f"Expected labels (N,) and probs (N, C) with N >= 1; got labels {labels.shape} and "
            f"probs {probs.shape}."
        )
    if n_classes is not None and probs.shape[1] != n_classes:
        raise ValueError(
            f"probs has {probs.shape[1]} columns; expected one per class, {n_classes}."
        )
    if (
        not np.issubdtype(labels.dtype, np.integer)
        or labels.min() < 0
        or labels.max() >= probs.shape[1]
    ):
        raise ValueError(
            f"labels must be integers in [0, {probs.shape[1]}); got {np.unique(labels)[:10]}."
        )
    if not np.isfinite(probs).all() or probs.min() < 0 or probs.max() > 1:
        raise ValueError("probs must be finite probabilities in [0, 1] (apply softmax first).")
    return labels.astype(np.int64), probs


def expected_calibration_error(labels: Any, probs: Any, n_bins: int = 15) -> float:
    """Top-label expected calibration error with equal-width confidence bins.

    ``ECE = sum_b |B_b| / N * |accuracy(B_b) - mean confidence(B_b)|``, where the confidence is
    the largest probability, bin ``b`` holds confidences in ``(b / n_bins, (b + 1) / n_bins]``
    (bin 0 also holds 0) and empty bins contribute nothing (Guo et al., 2017).

    Args:
        labels: ``(N,)`` true class indices.
        probs: ``(N, C)`` probabilities.
        n_bins: number of equal-width bins over [0, 1].
    """
    labels, probs = _check(labels, probs)
    if n_bins < 1:
        raise ValueError(f"n_bins must be >= 1, got {n_bins}.")
    confidence = probs.max(axis=1)
    correct = (probs.argmax(axis=1) == labels).astype(np.float64)
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    bins = np.digitize(confidence, edges[1:-1], right=True)
    ece = 0.0
    for b in range(n_bins):
        mask = bins == b
        if mask.any():
            ece += mask.mean() * abs(correct[mask].mean() - confidence[mask].mean())
    return float(ece)


def _ratio(num: float, den: float) -> float:
    return float(num) / float(den) if den else NAN


def _nanmean(values: Sequence[float]) -> float:
    finite = [v for v in values if math.isfinite(v)]
    return float(np.mean(finite)) if finite else NAN


def compute_metrics(labels: Any, probs: Any, classes: Sequence[str] = CLASSES) -> Metrics:
    """Per-class and overall metrics of argmax predictions.

    Args:
        labels: ``(N,)`` true class indices into ``classes``.
        probs: ``(N, C)`` probabilities, ``C = len(classes)``.
        classes: class names, in column order.

    Returns:
        :class:`Metrics`. Precision of a class never predicted is 0 (scikit-learn's
        ``zero_division=0``) when the class occurs in ``labels``; per-class values of a class absent
        from ``labels`` are ``NaN`` except precision when it was predicted (then 0).

    Raises:
        ValueError: shapes, label range or probability values are invalid.
    """
    labels, probs = _check(labels, probs, len(classes))
    k = len(classes)
    preds = probs.argmax(axis=1)
    cm = confusion_matrix(labels, preds, labels=list(range(k)))
    n = int(cm.sum())
    per_class: dict[str, PerClass] = {}
    roc: dict[str, dict[str, list[float]]] = {}
    for i, name in enumerate(classes):
        tp = cm[i, i]
        fn = cm[i].sum() - tp
        fp = cm[:, i].sum() - tp
        tn = n - tp - fn - fp
        present = tp + fn > 0
        precision = _ratio(tp, tp + fp) if tp + fp else (0.0 if present else NAN)
        recall = _ratio(tp, tp + fn)
        if present:
            f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
        else:
            f1 = NAN
        positives = labels == i
        if positives.any() and not positives.all():
            auc = float(roc_auc_score(positives, probs[:, i]))
            fpr, tpr, _ = roc_curve(positives, probs[:, i], drop_intermediate=True)
            roc[name] = {
                "fpr": [round(float(v), 6) for v in fpr],
                "tpr": [round(float(v), 6) for v in tpr],
            }
        else:
            auc = NAN
            roc[name] = {"fpr": [], "tpr": []}
        per_class[name] = PerClass(precision, recall, f1, _ratio(tn, tn + fp), auc)
    return Metrics(
        accuracy=float(np.trace(cm) / n),
        balanced_accuracy=_nanmean([pc.recall for pc in per_class.values()]),
        macro_f1=_nanmean([pc.f1 for pc in per_class.values()]),
        auc_macro=_nanmean([pc.auc for pc in per_class.values()]),
        ece=expected_calibration_error(labels, probs),
        per_class=per_class,
        confusion=cm.astype(int).tolist(),
        roc=roc,
        n=n,
    )


def mean_std(values: Sequence[float | None]) -> tuple[float, float, int]:
    """Mean and sample standard deviation (ddof=1; 0 for one value) of the non-missing values.

    Returns:
        (mean, std, n); ``(nan, nan, 0)`` when nothing is available.
    """
    vals = np.array([v for v in values if v is not None and np.isfinite(v)], dtype=np.float64)
    if vals.size == 0:
        return float("nan"), float("nan"), 0
    std = float(vals.std(ddof=1)) if vals.size > 1 else 0.0
    return float(vals.mean()), std, int(vals.size)


def tumour_roc(
    labels: Sequence[str], probs: Sequence[Sequence[float]], classes: Sequence[str] = CLASSES
) -> tuple[list[float], list[float], float] | None:
    """ROC of "tumour" (LGG or HGG) against healthy, scored by ``1 - p_healthy``.

    Args:
        labels: class names of the cases (e.g. every fold's test part, pooled).
        probs: ``(N, C)`` probabilities in ``classes`` order.

    Returns:
        ``(fpr, tpr, auc)``, or None when the cases hold only one of the two groups.
    """
    y = np.array([lab != classes[0] for lab in labels], dtype=bool)
    if y.size == 0 or y.all() or not y.any():
        return None
    score = 1.0 - np.asarray(probs, dtype=np.float64)[:, 0]
    fpr, tpr, _ = roc_curve(y, score)
    return fpr.tolist(), tpr.tolist(), float(roc_auc_score(y, score))


def summarize(results: Sequence[dict[str, Any] | Metrics]) -> dict[str, dict[str, float | None]]:
    """Mean and sample standard deviation (ddof=1; 0 for one value) across folds.

    Args:
        results: per-fold :meth:`Metrics.to_dict` dicts (extra numeric keys such as
            ``train_seconds`` are summarised too; ``fold`` is skipped) or :class:`Metrics`.

    Returns:
        ``{metric: {"mean", "std"}}`` for the :data:`SCALARS`, every other numeric top-level key,
        and each per-class value as ``"<class>_<metric>"`` (e.g. ``"hgg_recall"``). Undefined
        (``None``/``NaN``) fold values are left out; a metric with none defined gets ``None``.
    """
    dicts = [r.to_dict() if isinstance(r, Metrics) else r for r in results]
    columns: dict[str, list[float]] = {}

    def add(key: str, value: Any) -> None:
        if isinstance(value, bool) or not isinstance(value, int | float | np.number | type(None)):
            return
        columns.setdefault(key, [])
        if value is not None and math.isfinite(float(value)):
            columns[key].append(float(value))

    for d in dicts:
        for key, value in d.items():
            if key not in ("fold", "per_class"):
                add(key, value)
        for cls, values in (d.get("per_class") or {}).items():
            for metric, value in values.items():
                add(f"{cls}_{metric}", value)
    ordered = [k for k in SCALARS if k in columns] + [k for k in columns if k not in SCALARS]
    out: dict[str, dict[str, float | None]] = {}
    for key in ordered:
        values = columns[key]
        mean, std, n = mean_std(values)
        out[key] = {"mean": mean, "std": std} if n else {"mean": None, "std": None}
    return out


def accuracy_at_class_mix(confusion: Any, mix: Sequence[float]) -> float:
    """The accuracy a classifier would have on a cohort with another class mix.

    Accuracy is the prevalence-weighted mean of the per-class recalls, ``sum_c pi_c * recall_c``;
    re-weighting the recalls measured on one cohort by another cohort's class shares ``pi``
    compares two cohorts of different balance like for like (balanced accuracy is the case of
    equal shares).

    Args:
        confusion: ``(C, C)`` counts, rows = true class, columns = predicted class.
        mix: ``(C,)`` class counts or shares of the target cohort (normalised here).

    Returns:
        The re-weighted accuracy in [0, 1]; NaN when a class with a non-zero share has no cases
        in ``confusion`` (its recall is unknown).

    Raises:
        ValueError: ``confusion`` is not square, ``mix`` does not match it, or ``mix`` has a
            negative or non-finite entry or sums to zero.
    """
    cm = np.asarray(confusion, dtype=np.float64)
    shares = np.asarray(mix, dtype=np.float64)
    if cm.ndim != 2 or cm.shape[0] != cm.shape[1]:
        raise ValueError(f"confusion must be a square matrix, got shape {cm.shape}")
    if shares.shape != (cm.shape[0],):
        raise ValueError(f"mix has {shares.size} entries for {cm.shape[0]} classes")
    if not np.all(np.isfinite(shares)) or np.any(shares < 0) or shares.sum() <= 0:
        raise ValueError(f"mix must be non-negative counts or shares with a positive sum: {mix}")
    shares = shares / shares.sum()
    support = cm.sum(axis=1)
    if np.any((support == 0) & (shares > 0)):
        return NAN
    recall = np.divide(np.diag(cm), support, out=np.zeros_like(support), where=support > 0)
    return float(np.sum(shares * recall))
