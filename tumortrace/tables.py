"""Benchmark tables for the Benchmarks page: the stored JSON records as pandas DataFrames.

No streamlit and no model code; every function takes records of ``weights/benchmarks/*.json``
and returns a DataFrame.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd

from tumortrace.benchmark_files import FOCUS_METHOD, FOCUS_TARGET, OPENING_METHOD
from tumortrace.config import CLASSES
from tumortrace.metrics import mean_std, tumour_roc
from tumortrace.networks import display_name, get_network, in_display_order
from tumortrace.numformat import MISSING, fmt, fmt_mean_std
from tumortrace.viz import CLASS_NAMES

OVERALL_METRICS: tuple[str, ...] = (
    "accuracy",
    "balanced_accuracy",
    "macro_f1",
    "auc_macro",
    "ece",
)
PER_CLASS_METRICS: tuple[str, ...] = ("precision", "recall", "f1", "specificity", "auc")


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
            mean, std, n = mean_std(fold_values(folds, metric))
            rows.setdefault(metric.replace("_", " "), {})[col] = fmt_mean_std(mean, std, n=n)
        for cls in classes:
            for metric in PER_CLASS_METRICS:
                label = f"{CLASS_NAMES.get(cls, cls)} {metric}"
                mean, std, n = mean_std(fold_values(folds, metric, cls))
                rows.setdefault(label, {})[col] = fmt_mean_std(mean, std, n=n)
    df = pd.DataFrame.from_dict(rows, orient="index")
    df.index.name = "metric (mean ± std over folds)"
    return df


COMPARISON_METRICS: tuple[tuple[str, str | None, str], ...] = (
    ("accuracy", None, "accuracy"),
    ("balanced_accuracy", None, "balanced accuracy"),
    ("macro_f1", None, "macro-F1"),
    ("recall", "lgg", "LGG recall"),
    ("auc_macro", None, "AUC (macro)"),
)
"""The comparison table's metric columns: (stored key, class or None, column label)."""


def real_glioma_share(real_scans: Mapping | None, arch: str) -> float | None:
    """The share of real gliomas ``arch`` called a tumour, from ``real_scans.json`` (the networks'
    section, else the baselines'); None when the file or the method is not there."""
    doc = real_scans or {}
    for section in (doc, doc.get("baselines") or {}):
        called = (section.get("gliomas") or {}).get("called_tumour") or {}
        entry = called.get(arch)
        if isinstance(entry, Mapping):
            return entry.get("fraction")
    return None


def train_seconds(bench: Mapping) -> float | None:
    """The method's training seconds over all folds: the record's ``train_seconds``, else the sum
    of its folds' (records written before the total existed)."""
    total = bench.get("train_seconds")
    if total is not None:
        return float(total)
    values = [v for v in fold_values(bench.get("folds", []), "train_seconds") if v is not None]
    return float(sum(values)) if values else None


def comparison_table(
    benches: Mapping[str, Mapping], real_scans: Mapping | None = None
) -> pd.DataFrame:
    """One row per method (the three networks first, then the baselines): the test metrics (mean ±
    std over folds), the share of real gliomas called a tumour (``real_scans.json``; "—" without
    it), training seconds over all folds and millions of parameters (stored values for the
    HOG-SVM)."""
    rows = []
    for arch in in_display_order(benches):
        bench = benches[arch]
        folds = bench.get("folds", [])
        row = get_network(arch)
        out = {"method": display_name(arch), "kind": row.kind if row is not None else "network"}
        for key, cls, label in COMPARISON_METRICS:
            mean, std, n = mean_std(fold_values(folds, key, cls))
            out[label] = fmt_mean_std(mean, std, n=n)
        out["real gliomas called tumour (%)"] = fmt(real_glioma_share(real_scans, arch), "percent")
        out["training s"] = fmt(train_seconds(bench), "quantity")
        params = bench.get("params")
        out["parameters (M)"] = fmt(None if params is None else params / 1e6, "quantity")
        rows.append(out)
    return pd.DataFrame(rows)


def pooled_tumour_rocs(
    benches: Mapping[str, Mapping],
) -> dict[str, tuple[list[float], list[float], float]]:
    """``{arch: (fpr, tpr, auc)}``: tumour (LGG or HGG) against healthy on every fold's test cases
    pooled (``folds[i]["cases"]``), in display order; methods without stored cases are left out."""
    out = {}
    for arch in in_display_order(benches):
        cases = [c for f in benches[arch].get("folds", []) for c in f.get("cases") or []]
        roc = tumour_roc([c["label"] for c in cases], [c["probs"] for c in cases])
        if roc is not None:
            out[arch] = roc
    return out


def per_fold_table(bench: Mapping, classes: Sequence[str] = CLASSES) -> pd.DataFrame:
    """One column per fold (``"fold 0"`` ...), one row per quantity (``metric`` column): sizes,
    overall metrics, per-class F1, training time and best epoch. Few columns, so it fits the page.

    Cells are text by :mod:`tumortrace.numformat` (scores ``0.633``, seconds ``378``).
    """
    records = []
    for k, fold in enumerate(bench.get("folds", [])):
        rec: dict[str, object] = {"fold": fmt(fold.get("fold", k), "count")}
        for key in ("n_train", "n_val", "n_test"):
            rec[key] = fmt(fold.get(key), "count")
        for metric in OVERALL_METRICS:
            rec[metric.replace("_", " ")] = fmt(fold.get(metric))
        for cls in classes:
            f1 = fold.get("per_class", {}).get(cls, {}).get("f1")
            rec[f"{CLASS_NAMES.get(cls, cls)} F1"] = fmt(f1)
        rec["train s"] = fmt(fold.get("train_seconds"), "quantity")
        rec["best epoch"] = fmt(fold.get("best_epoch"), "count")
        records.append(rec)
    return _transposed(records, "fold", lambda k: f"fold {k}")


BREAKDOWN_COLUMNS: tuple[str, ...] = (
    "source",
    "kind",
    "true class",
    "cases",
    "called the true class %",
    "called tumour %",
    "called healthy %",
)
"""The columns of :func:`breakdown_table`."""


def breakdown_table(bench: Mapping, classes: Sequence[str] = CLASSES) -> pd.DataFrame:
    """Every test prediction of every fold broken down by ``source`` x ``kind`` x true class,
    beside the totals per true class (source and kind ``all``).

    Each row: how many test cases, the share called their true class (none for a glioma of
    unknown grade: any tumour class is right), called a tumour (LGG or HGG) and called healthy, in
    percent. Reads the fold entries' ``cases`` (``subject_id``, ``label``, ``probs`` in
    ``classes`` order, ``source`` and ``kind``); empty when no fold stored predictions with a
    ``kind`` (benchmarks of cohorts before the real-tumour cohort).
    """
    healthy = classes.index("healthy")
    rows: dict[tuple[str, str, str], list[int]] = {}
    for fold in bench.get("folds", []):
        for case in fold.get("cases", []):
            probs = case.get("probs")
            if not probs or not case.get("kind"):
                continue
            called = int(np.argmax(probs))
            label = str(case.get("label", ""))
            keys = [(str(case.get("source") or "unknown"), str(case["kind"]), label)]
            keys.append(("all", "all", label))
            for key in keys:
                n, right, tumour, calm = rows.setdefault(key, [0, 0, 0, 0])
                rows[key] = [
                    n + 1,
                    right + (label in classes and called == classes.index(label)),
                    tumour + (called != healthy),
                    calm + (called == healthy),
                ]
    order = {c: i for i, c in enumerate((*classes, "glioma"))}
    records = []
    for (source, kind, label), (n, right, tumour, calm) in sorted(
        rows.items(), key=lambda kv: (kv[0][0] == "all", kv[0][0], kv[0][1], order.get(kv[0][2], 9))
    ):
        records.append(
            dict(
                zip(
                    BREAKDOWN_COLUMNS,
                    (
                        source,
                        kind,
                        CLASS_NAMES.get(label, label),
                        fmt(n, "count"),
                        fmt(right / n, "percent") if label in classes else MISSING,
                        fmt(tumour / n, "percent"),
                        fmt(calm / n, "percent"),
                    ),
                    strict=True,
                )
            )
        )
    return pd.DataFrame.from_records(records, columns=list(BREAKDOWN_COLUMNS))


def _transposed(records: list[dict], key: str, name) -> pd.DataFrame:
    """``records`` (one per fold or network) as columns named ``name(record[key])``, with the
    other keys as rows in a first ``metric`` column: narrow tables that fit the page."""
    if not records:
        return pd.DataFrame(columns=["metric"])
    df = pd.DataFrame.from_records(records).set_index(key).T
    df.columns = [name(c) for c in df.columns]
    return df.rename_axis("metric").reset_index()


def summed_confusion(folds: Sequence[Mapping], n_classes: int = len(CLASSES)) -> list[list[int]]:
    """The element-wise sum of every fold's confusion matrix (each test case counted once)."""
    total = np.zeros((n_classes, n_classes), dtype=np.int64)
    for fold in folds:
        cm = np.asarray(fold.get("confusion", []), dtype=np.int64)
        if cm.shape == total.shape:
            total += cm
    return total.tolist()


def cost_table(benches: Mapping[str, Mapping], inference: Mapping | None) -> pd.DataFrame:
    """Parameters, GFLOPs, input, training time and the stored CPU inference seconds: one column
    per network, one row per quantity (``metric`` column).

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
            "parameters (M)": fmt(None if params is None else params / 1e6, "quantity"),
            "GFLOPs / volume": fmt(bench.get("gflops"), "quantity"),
            "input D×H×W": "×".join(str(s) for s in bench.get("input_shape", [])) or MISSING,
        }
        mean, _, n = mean_std([f.get("train_seconds") for f in bench.get("folds", [])])
        rec["train s / fold"] = fmt(mean if n else None, "quantity")
        if inference:
            rec["CPU s (naive)"] = fmt(inference.get("naive", {}).get(arch), "quantity")
            rec["CPU s (fast)"] = fmt(inference.get("fast", {}).get(arch), "quantity")
        records.append(rec)
    return _transposed(records, "network", str)


def peak_text(inference: Mapping) -> str:
    """The matmul peaks of an ``inference.json`` in words: ``"Matmul peak: fp32 192 GFLOP/s, bf16
    418 GFLOP/s."``, with ``"bf16 not native: emulated on this CPU"`` instead of a number where
    bf16 was not measured (the record's ``bf16.reason``, written by
    :func:`tumortrace.runtime.bf16_support`); ``""`` when the record has no peaks."""
    peak = inference.get("peak_gflops")
    if not isinstance(peak, Mapping) or not peak:
        return ""
    fp32 = f"fp32 {fmt(peak.get('fp32'), 'quantity')} GFLOP/s"
    if peak.get("bf16") is None:
        reason = (inference.get("bf16") or {}).get("reason") or "reason not recorded"
        return f"Matmul peak: {fp32}, bf16 not native: {reason}."
    return f"Matmul peak: {fp32}, bf16 {fmt(peak['bf16'], 'quantity')} GFLOP/s."


HELDOUT_METRICS: tuple[str, ...] = (
    "accuracy",
    "accuracy at training mix",
    "balanced accuracy",
    "LGG recall",
)


def heldout_table(benches: Mapping[str, Mapping], heldout: Mapping[str, Mapping]) -> pd.DataFrame:
    """Held-out cohort scores beside the cross-fold means: one row per network and metric.

    Args:
        benches: ``{arch: benchmark record}`` as in ``weights/benchmarks/<arch>.json``.
        heldout: ``{arch: report}`` of ``python -m tumortrace evaluate --format json`` on a cohort
            the network never saw (``weights/benchmarks/heldout/<arch>.json``); the metrics are at
            the top level or under ``metrics``.

    Returns:
        DataFrame with columns network, n (cohort size), metric (:data:`HELDOUT_METRICS`: accuracy;
        accuracy at the training class mix, the report's ``accuracy_at_training_mix``, held-out
        per-class recalls weighted by the training cohort's class shares; balanced accuracy; LGG
        recall), held-out %, cross-fold % (the mean over folds; plain accuracy for both
        accuracies) and Δ pts (held-out minus cross-fold), as text by :mod:`tumortrace.numformat`;
        what is not stored (no benchmark record, a metric the report lacks) is ``"—"``. Five
        narrow columns, so the table fits the page.
    """
    records = []
    for arch, report in heldout.items():
        metrics = report.get("metrics", report)
        folds = benches.get(arch, {}).get("folds", [])
        fold_accuracy = fold_values(folds, "accuracy")
        pairs = {
            "accuracy": (metrics.get("accuracy"), fold_accuracy),
            "accuracy at training mix": (report.get("accuracy_at_training_mix"), fold_accuracy),
            "balanced accuracy": (
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
            cross = mean if n else None
            diff = None if value is None or cross is None else float(value) - cross
            records.append(
                {
                    "network": display_name(arch),
                    "n": fmt(report.get("n"), "count"),
                    "metric": label,
                    "held-out %": fmt(value, "percent"),
                    "cross-fold %": fmt(cross, "percent"),
                    "Δ pts": fmt(diff, "points"),
                }
            )
    return pd.DataFrame.from_records(records)


POOLED_ROWS = {
    FOCUS_METHOD: "pooled evidence for a tumour",
    OPENING_METHOD: "where the viewer opens",
}
"""What the explanations table calls the focus rows (network "all networks")."""


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
        method is marked "(default)", the legacy one "(before)". The pooled rows (all networks:
        their pooled evidence, and where the viewer opens) come first, in both views; the
        opening is one voxel, so its energy and concentration columns say nothing and are empty.
    """
    default, legacy = doc.get("default_method"), doc.get("legacy_method")
    near = doc.get("near_mm", 10)
    rows = [r for r in doc.get("summary", []) if isinstance(r, Mapping)]
    pooled = [r for r in rows if r.get("target") == FOCUS_TARGET]
    records = []
    for r in [*pooled, *(r for r in rows if r.get("target") == target)]:
        method = str(r.get("method"))
        is_pooled, is_point = r.get("target") == FOCUS_TARGET, method == OPENING_METHOD
        if is_pooled:
            method = POOLED_ROWS.get(method, method)
        elif method == default:
            method += " (default)"
        elif method == legacy:
            method += " (before)"
        n = r.get("n") or 0
        point = is_pooled and is_point  # one voxel: no mass to share out
        energy = MISSING if point else fmt(r.get("energy_share", 0.0), "percent")
        conc = MISSING if point else fmt(r.get("concentration", 0.0), "quantity")
        conc_near = MISSING if point else fmt(r.get("concentration_near", 0.0), "quantity")
        records.append(
            {
                "network": "all networks" if is_pooled else display_name(str(r.get("arch"))),
                "method": method,
                "class": CLASS_NAMES.get(r.get("label"), r.get("label")),
                "max in lesion": f"{r.get('hits', 0)}/{n}",
                "max in lesion %": fmt(r.get("pointing", 0.0), "percent"),
                f"max ≤ {near:g} mm %": fmt(r.get("pointing_near", 0.0), "percent"),
                "energy in lesion %": energy,
                "lesion share of brain %": fmt(r.get("lesion_share", 0.0), "percent"),
                "concentration ×": conc,
                f"concentration ≤ {near:g} mm ×": conc_near,
                "s / analysis": fmt(r.get("seconds"), "quantity"),
            }
        )
    return pd.DataFrame.from_records(records)


REAL_SCAN_ROWS: tuple[tuple[str, str, str], ...] = (
    ("gliomas", "called_tumour", "real gliomas called tumour (LGG or HGG)"),
    ("cohort_test_parts", "healthy_called_healthy", "real healthy brains called healthy"),
    (
        "cohort_test_parts",
        "lesion_removed_called_healthy",
        "the same brain without its lesion called healthy",
    ),
    ("cohort_test_parts", "lesion_called_tumour", "lesion cases called tumour"),
)
"""The rows of :func:`real_scans_table`: (section, key in ``real_scans.json``, what it says)."""


def real_scans_what(doc: Mapping) -> str:
    """What each section of ``real_scans.json`` measures, in the document's own words, in the
    order of :data:`REAL_SCAN_ROWS`."""
    sections = dict.fromkeys(section for section, _, _ in REAL_SCAN_ROWS)
    return " ".join(str((doc.get(k) or {}).get("what", "")) for k in sections)


def real_scans_table(doc: Mapping) -> pd.DataFrame:
    """The real-scan check (``weights/benchmarks/real_scans.json``): one row per check, one column
    per network and the ensemble, each cell ``n/total (percent)``.

    Args:
        doc: the document :func:`tumortrace.real_check.real_scan_report` writes.

    Returns:
        DataFrame with columns check, then each network's display name and ``ensemble``; a check
        the document lacks is left out.
    """
    records = []
    for section, key, label in REAL_SCAN_ROWS:
        cells = (doc.get(section) or {}).get(key)
        if not isinstance(cells, Mapping):
            continue
        row = {"check": label}
        for net, share in cells.items():
            name = "ensemble" if net == "ensemble" else display_name(net)
            n, total = share.get("n"), share.get("total")
            pct = fmt(share.get("fraction"), "percent")
            row[name] = f"{fmt(n, 'count')}/{fmt(total, 'count')} ({pct} %)"
        records.append(row)
    return pd.DataFrame.from_records(records).fillna(MISSING)


SOURCE_WORDS: dict[str, str] = {
    "synthetic": "synthetic phantoms",
    "ixi": "real IXI brains",
    "synthetic-lesion": "synthetic lesions",
}
"""Plain words for the ``+``-joined tokens of a benchmark's ``data.source``."""


def source_words(source: str) -> str:
    """A benchmark's ``data.source`` in plain words, e.g. ``"ixi+ixi+synthetic-lesion"`` ->
    ``"real IXI brains + synthetic lesions"`` (unknown tokens are kept as they are)."""
    tokens = list(dict.fromkeys(t for t in str(source).split("+") if t))
    return " + ".join(SOURCE_WORDS.get(t, t) for t in tokens) or "unknown data"


def training_data_words(data: Mapping) -> str:
    """What a model card's ``data`` says the network learned from, in words a clinician reads.

    The cohort's own description when the card has one (``data["cohort"]["description"]``,
    :func:`tumortrace.cohort.describe_cohort`), else the source in plain words
    (:func:`source_words`) with the class counts.
    """
    cohort = data.get("cohort") if isinstance(data.get("cohort"), Mapping) else {}
    if cohort.get("description"):
        return str(cohort["description"])
    counts = ", ".join(
        f"{fmt(n, 'count')} {CLASS_NAMES.get(c, c)}" for c, n in (data.get("counts") or {}).items()
    )
    words = source_words(str(data.get("source") or ""))
    return f"{words} ({counts})" if counts else words


def data_description(bench: Mapping) -> str:
    """What one benchmark was measured on, in one line.

    E.g. ``"synthetic phantoms (seed 2024): 130 Healthy, 37 LGG, 130 HGG; 3 folds; input D×H×W
    28×40×32 at 5×5×5 mm"``.
    """
    data = bench.get("data") or {}
    source = source_words(str(data.get("source") or ""))
    seed = (data.get("synthetic") or {}).get("seed")
    if seed is not None:
        source += f" (seed {seed})"
    counts = ", ".join(
        f"{fmt(n, 'count')} {CLASS_NAMES.get(c, c)}" for c, n in (data.get("counts") or {}).items()
    )
    shape = "×".join(str(s) for s in bench.get("input_shape", [])) or "?"
    spacing = "×".join(f"{s:g}" for s in bench.get("spacing_mm", [])) or "?"
    return (
        f"{source}: {counts or 'counts not stored'}; {len(bench.get('folds', []))} folds; "
        f"input D×H×W {shape} at {spacing} mm"
    )


def settings_text(settings: Mapping) -> str:
    """A settings record as a readable list: ``"precision: fp32 · fuse batchnorm: on · ..."``.

    Flags read on/off, numbers by :mod:`tumortrace.numformat`, keys with spaces for underscores.
    """
    parts = []
    for key, value in settings.items():
        if isinstance(value, bool):
            text = "on" if value else "off"
        elif isinstance(value, int | float):
            text = fmt(value, "count" if isinstance(value, int) else "quantity")
        else:
            text = str(value)
        parts.append(f"{str(key).replace('_', ' ')}: {text}")
    return " · ".join(parts)
