"""Metrics against values computed by hand on fixed small examples."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from tumortrace.metrics import Metrics, compute_metrics, expected_calibration_error, summarize

# Six cases, three classes. Argmax predictions: 0, 1, 1, 2, 2, 2 (cases 1 and 3 are wrong).
LABELS = np.array([0, 0, 1, 1, 2, 2])
PROBS = np.array(
    [
        [0.7, 0.2, 0.1],
        [0.4, 0.5, 0.1],
        [0.2, 0.6, 0.2],
        [0.1, 0.3, 0.6],
        [0.1, 0.1, 0.8],
        [0.3, 0.3, 0.4],
    ]
)


@pytest.fixture(scope="module")
def metrics() -> Metrics:
    return compute_metrics(LABELS, PROBS)


def test_confusion_and_overall(metrics):
    assert metrics.confusion == [[1, 1, 0], [0, 1, 1], [0, 0, 2]]
    assert metrics.n == 6
    assert metrics.accuracy == pytest.approx(4 / 6)
    assert metrics.balanced_accuracy == pytest.approx((1 / 2 + 1 / 2 + 1) / 3)
    assert metrics.macro_f1 == pytest.approx((2 / 3 + 1 / 2 + 4 / 5) / 3)


def test_per_class_by_hand(metrics):
    healthy, lgg, hgg = (metrics.per_class[c] for c in ("healthy", "lgg", "hgg"))
    # healthy: TP 1, FN 1, FP 0, TN 4
    assert (healthy.precision, healthy.recall, healthy.specificity) == (1.0, 0.5, 1.0)
    assert healthy.f1 == pytest.approx(2 / 3)
    # lgg: TP 1, FN 1, FP 1, TN 3
    assert (lgg.precision, lgg.recall, lgg.f1, lgg.specificity) == (0.5, 0.5, 0.5, 0.75)
    # hgg: TP 2, FN 0, FP 1, TN 3
    assert hgg.precision == pytest.approx(2 / 3)
    assert (hgg.recall, hgg.specificity) == (1.0, 0.75)
    assert hgg.f1 == pytest.approx(0.8)


def test_auc_by_hand(metrics):
    # One-vs-rest AUC = fraction of (positive, negative) pairs ranked right, ties count 1/2.
    assert metrics.per_class["healthy"].auc == pytest.approx(8 / 8)  # 0.7, 0.4 > all of 0.3 ... 0.1
    assert metrics.per_class["lgg"].auc == pytest.approx(6.5 / 8)  # 0.3 loses to 0.5, ties 0.3
    assert metrics.per_class["hgg"].auc == pytest.approx(7 / 8)  # 0.4 loses to 0.6
    assert metrics.auc_macro == pytest.approx((1 + 0.8125 + 0.875) / 3)


def test_roc_points(metrics):
    # healthy scores: positives 0.7, 0.4; negatives 0.3, 0.2, 0.1, 0.1. Thresholds 0.7, 0.4, 0.2,
    # 0.1 give (FP, TP) = (0, 1), (0, 2), (2, 2), (4, 2); 0.3's point (1, 2) is collinear and
    # dropped; (0, 0) is prepended.
    assert metrics.roc["healthy"] == {"fpr": [0, 0, 0, 0.5, 1], "tpr": [0, 0.5, 1, 1, 1]}
    for curve in metrics.roc.values():
        assert curve["fpr"][0] == 0.0 and curve["tpr"][-1] == 1.0 and curve["fpr"][-1] == 1.0
        assert curve["fpr"] == sorted(curve["fpr"]) and curve["tpr"] == sorted(curve["tpr"])


def test_ece_by_hand():
    # Bins of width 0.2: (0.2,0.4] holds 0.4 (right); (0.4,0.6] holds 0.5 (wrong), 0.6 (right),
    # 0.6 (wrong); (0.6,0.8] holds 0.7 and 0.8 (both right).
    expected = 1 / 6 * abs(1 - 0.4) + 3 / 6 * abs(1 / 3 - 1.7 / 3) + 2 / 6 * abs(1 - 0.75)
    assert expected == pytest.approx(0.3)
    assert expected_calibration_error(LABELS, PROBS, n_bins=5) == pytest.approx(expected)


def test_ece_tiny():
    probs = [[0.9, 0.1, 0.0], [0.6, 0.4, 0.0]]
    # 0.9 right: |1 - 0.9| / 2; 0.6 wrong: |0 - 0.6| / 2
    assert expected_calibration_error([0, 1], probs, n_bins=10) == pytest.approx(0.35)
    # One bin: |mean accuracy - mean confidence| = |0.5 - 0.75|
    assert expected_calibration_error([0, 1], probs, n_bins=1) == pytest.approx(0.25)
    assert expected_calibration_error([0, 0], [[1.0, 0, 0], [1.0, 0, 0]]) == 0.0


def test_metrics_ece_uses_15_bins(metrics):
    assert metrics.ece == pytest.approx(expected_calibration_error(LABELS, PROBS, n_bins=15))


def test_absent_class_is_undefined_not_a_crash():
    labels = np.array([0, 0, 2, 2])
    probs = np.array([[0.8, 0.1, 0.1], [0.2, 0.7, 0.1], [0.1, 0.1, 0.8], [0.3, 0.1, 0.6]])
    m = compute_metrics(labels, probs)
    lgg = m.per_class["lgg"]
    assert lgg.precision == 0.0  # predicted once, never right
    assert math.isnan(lgg.recall) and math.isnan(lgg.f1) and math.isnan(lgg.auc)
    assert lgg.specificity == pytest.approx(3 / 4)
    assert m.roc["lgg"] == {"fpr": [], "tpr": []}
    assert m.balanced_accuracy == pytest.approx((0.5 + 1.0) / 2)  # over present classes
    # healthy: 0.8 beats 0.1 and 0.3, 0.2 beats 0.1 only -> 3/4; hgg: 0.8, 0.6 beat 0.1, 0.1 -> 1
    assert m.per_class["healthy"].auc == pytest.approx(0.75)
    assert m.auc_macro == pytest.approx((0.75 + 1.0) / 2)
    d = m.to_dict()
    assert d["per_class"]["lgg"]["auc"] is None and d["per_class"]["lgg"]["recall"] is None
    json.dumps(d, allow_nan=False)


def test_to_dict_round_trip(metrics):
    d = metrics.to_dict()
    assert set(d) >= {"accuracy", "balanced_accuracy", "macro_f1", "auc_macro", "ece", "per_class"}
    assert set(d["per_class"]["hgg"]) == {"precision", "recall", "f1", "specificity", "auc"}
    assert Metrics.from_dict(json.loads(json.dumps(d))) == metrics


def test_bad_inputs():
    with pytest.raises(ValueError, match=r"Expected labels \(N,\) and probs \(N, C\)"):
        compute_metrics([0, 1], PROBS)
    with pytest.raises(ValueError, match="one per class, 3"):
        compute_metrics([0, 1], [[0.5, 0.5], [0.5, 0.5]])
    with pytest.raises(ValueError, match=r"labels must be integers in \[0, 3\)"):
        compute_metrics([0, 5], [[1.0, 0, 0], [1.0, 0, 0]])
    with pytest.raises(ValueError, match="finite probabilities"):
        compute_metrics([0, 1], [[np.nan, 0, 0], [1.0, 0, 0]])


def test_summarize():
    folds = [
        {"fold": 0, "accuracy": 0.5, "auc_macro": None, "train_seconds": 10.0,
         "per_class": {"hgg": {"f1": 0.4, "auc": None}}},
        {"fold": 1, "accuracy": 1.0, "auc_macro": 0.9, "train_seconds": 14.0,
         "per_class": {"hgg": {"f1": 0.8, "auc": None}}},
    ]  # fmt: skip
    s = summarize(folds)
    assert s["accuracy"] == {"mean": 0.75, "std": pytest.approx(math.sqrt(0.125))}
    assert s["auc_macro"] == {"mean": 0.9, "std": 0.0}  # the undefined fold is left out
    assert s["train_seconds"]["mean"] == 12.0
    assert s["hgg_f1"]["mean"] == pytest.approx(0.6)
    assert s["hgg_auc"] == {"mean": None, "std": None}
    assert "fold" not in s
    assert list(s)[:2] == ["accuracy", "auc_macro"]


def test_summarize_accepts_metrics(metrics):
    s = summarize([metrics, metrics])
    assert s["macro_f1"]["mean"] == pytest.approx(metrics.macro_f1) and s["macro_f1"]["std"] == 0


def test_accuracy_at_class_mix():
    from tumortrace.metrics import accuracy_at_class_mix

    cm = [[9, 1, 0], [6, 4, 0], [1, 0, 9]]  # recalls 0.9, 0.4, 0.9
    # the cohort's own mix gives its plain accuracy, equal shares its balanced accuracy
    assert accuracy_at_class_mix(cm, [10, 10, 10]) == pytest.approx(22 / 30)
    assert accuracy_at_class_mix(cm, [1, 1, 1]) == pytest.approx((0.9 + 0.4 + 0.9) / 3)
    # 130/37/130, the training cohort's mix: the rare class weighs less
    expected = (130 * 0.9 + 37 * 0.4 + 130 * 0.9) / 297
    assert accuracy_at_class_mix(cm, [130, 37, 130]) == pytest.approx(expected)
    assert math.isnan(accuracy_at_class_mix([[1, 0], [0, 0]], [1, 1]))  # class 2 has no cases
    assert accuracy_at_class_mix([[1, 0], [0, 0]], [1, 0]) == 1.0  # ... but weighs nothing
    with pytest.raises(ValueError, match="square"):
        accuracy_at_class_mix([[1, 2, 3]], [1])
    with pytest.raises(ValueError, match="2 entries for 3 classes"):
        accuracy_at_class_mix(cm, [1, 1])
    with pytest.raises(ValueError, match="non-negative"):
        accuracy_at_class_mix(cm, [1, -1, 1])
