"""tumortrace.figures (plotly), .tables (benchmark tables), .numformat and .benchmark_files."""

from __future__ import annotations

import json

import numpy as np
import pytest

from tumortrace import figures, tables
from tumortrace.benchmark_files import folder_stamp, read_folder
from tumortrace.config import CLASSES
from tumortrace.errors import ConfigError
from tumortrace.numformat import MISSING, fmt, fmt_mean_std, metric_kind


def test_probability_figure():
    fig = figures.probability_figure([0.1, 0.2, 0.7])
    assert list(fig.data[0].x) == pytest.approx([10, 20, 70])
    assert list(fig.data[0].y) == ["Healthy", "LGG", "HGG"]
    with pytest.raises(ConfigError, match="Got 2 probabilities for 3 classes"):
        figures.probability_figure([0.5, 0.5])


def test_confusion_and_roc_figures():
    fig = figures.confusion_figure([[5, 1, 0], [2, 3, 1], [0, 0, 6]])
    assert np.asarray(fig.data[0].z)[0].tolist() == pytest.approx([500 / 6, 100 / 6, 0])
    with pytest.raises(ConfigError, match="does not match classes"):
        figures.confusion_figure([[1, 2], [3, 4]])
    roc = {c: {"fpr": [0, 0.5, 1], "tpr": [0, 0.8, 1]} for c in CLASSES}
    fig = figures.roc_figure([roc, roc], aucs={"lgg": 0.9})
    assert len(fig.data) == 2 * len(CLASSES) + 1  # per fold and class, plus chance
    assert any("AUC 0.900" in (t.name or "") for t in fig.data)


def test_training_curves_one_colour_per_fold_and_a_legend_under_each_chart():
    curves = [
        [{"epoch": e, "train_loss": 1 / (e + 1), "val_accuracy": 0.5 + k / 10} for e in range(3)]
        for k in range(3)
    ]
    fig = figures.training_curves_figure(curves)
    assert [t.name for t in fig.data[:2]] == ["fold 0 train loss", "fold 0 val accuracy"]
    colours = {
        k: {t.line.color for t in fig.data if t.name.startswith(f"fold {k} ")} for k in (0, 1, 2)
    }
    assert all(len(c) == 1 for c in colours.values())  # one colour within a fold
    assert len(set().union(*colours.values())) == 3  # three folds, three colours
    # losses in the left chart's legend, scores in the right one's, each under its own chart
    for t in fig.data:
        assert (t.legend or "legend") == ("legend" if "loss" in t.name else "legend2")
        assert (t.xaxis == "x") == ("loss" in t.name)
    assert fig.layout.legend.x < 0.5 <= fig.layout.legend2.x
    assert fig.layout.legend.y < 0 and fig.layout.legend2.y < 0


# -- one number format --------------------------------------------------------------------------


def test_one_number_format_per_kind():
    assert [fmt(v, "score") for v in (0.7, 0.6333, 1)] == ["0.700", "0.633", "1.000"]
    assert [fmt(v, "percent") for v in (0.5, 0.6933)] == ["50.0", "69.3"]
    assert [fmt(v, "points") for v in (0.012, -0.15, 0.0)] == ["+1.2", "-15.0", "+0.0"]
    assert [fmt(v, "count") for v in (130, 201.3333, 36.0)] == ["130", "201.3", "36"]
    assert [fmt(v, "quantity") for v in (378.415, 16.21, 0.31837, 1400.7, 0)] == [
        "378",
        "16.2",
        "0.318",
        "1401",
        "0",
    ]
    assert fmt(None) == fmt(float("nan"), "percent") == fmt("x", "count") == MISSING
    with pytest.raises(ValueError, match="Unknown number kind 'pct'"):
        fmt(1.0, "pct")  # type: ignore[arg-type]


def test_mean_std_text_and_metric_kinds():
    assert fmt_mean_std(0.85, 0.0707) == "0.850 ± 0.071"
    assert fmt_mean_std(0.85, 0.0707, "percent") == "85.0 ± 7.1"
    assert fmt_mean_std(201.3333, 0.5774, metric_kind("n_train")) == "201.3 ± 0.6"
    assert fmt_mean_std(1400.72, 31.75, metric_kind("train_seconds")) == "1401 ± 31.8"
    assert fmt_mean_std(0.5, 0.1, n=0) == fmt_mean_std(None, None) == MISSING
    assert metric_kind("lgg_f1") == "score" and metric_kind("best_epoch") == "count"


# -- tables -------------------------------------------------------------------------------------


def _fold(acc: float, lgg_recall: float) -> dict:
    return {
        "fold": 0,
        "n_train": 201,
        "accuracy": acc,
        "macro_f1": acc - 0.1,
        "ece": 0.6333333,
        "per_class": {"lgg": {"recall": lgg_recall, "f1": 0.7}},
        "confusion": [[1, 0, 0], [0, 1, 0], [0, 0, 1]],
        "train_seconds": 378.415,
    }


def test_summary_fold_and_cost_tables_use_the_one_format():
    folds = [{**_fold(0.8, 0.5), "fold": 0}, {**_fold(0.9, 0.7), "fold": 1}]
    bench = {"arch": "mc3", "folds": folds, "params": 2_000_000}
    table = tables.summary_table({"mc3": bench})
    assert table.loc["accuracy", "MC3-18"] == "0.850 ± 0.071"  # sample std of (0.8, 0.9)
    assert table.loc["LGG recall", "MC3-18"] == "0.600 ± 0.141"
    assert table.loc["HGG auc", "MC3-18"] == MISSING  # not stored: never shown as 0
    folds = tables.per_fold_table(bench)
    assert list(folds.columns) == ["metric", "fold 0", "fold 1"]  # one column per fold: fits
    folds = folds.set_index("metric")
    assert folds.loc["accuracy"].tolist() == ["0.800", "0.900"]
    assert (
        folds.loc["ece"].tolist() == ["0.633", "0.633"] and folds.loc["LGG F1"].iloc[0] == "0.700"
    )
    assert folds.loc["train s"].iloc[0] == "378" and folds.loc["n_train"].iloc[0] == "201"
    assert folds.loc["HGG F1"].iloc[0] == MISSING
    assert tables.summed_confusion(bench["folds"]) == [[2, 0, 0], [0, 2, 0], [0, 0, 2]]
    cost = tables.cost_table({"mc3": bench}, {"naive": {"mc3": 3.0}, "fast": {"mc3": 0.15876}})
    assert list(cost.columns) == ["metric", "MC3-18"]
    row = cost.set_index("metric")["MC3-18"]
    assert row["parameters (M)"] == "2.00" and row["CPU s (fast)"] == "0.159"
    assert row["train s / fold"] == "378" and row["GFLOPs / volume"] == MISSING


def test_breakdown_table_counts_each_source_and_kind_beside_the_totals():
    h, lgg, hgg = [0.8, 0.1, 0.1], [0.1, 0.8, 0.1], [0.1, 0.1, 0.8]

    def case(label, probs, source, kind):
        return {"subject_id": "x", "label": label, "probs": probs, "source": source, "kind": kind}

    folds = [
        {"cases": [case("healthy", h, "ixi", "real"), case("lgg", hgg, "ixi", "carved"),
                   case("lgg", lgg, "tcga-lgg", "real")]},
        {"cases": [case("healthy", lgg, "brats", "healthy-made"),
                   case("glioma", hgg, "brats", "real"), case("lgg", h, "tcga-lgg", "real"),
                   {"subject_id": "old", "label": "lgg", "probs": lgg}]},
    ]  # fmt: skip
    table = tables.breakdown_table({"folds": folds})
    assert list(table.columns) == list(tables.BREAKDOWN_COLUMNS)
    rows = {(r["source"], r["kind"], r["true class"]): r for r in table.to_dict("records")}
    real_lgg = rows[("tcga-lgg", "real", "LGG")]
    assert real_lgg["cases"] == "2" and real_lgg["called the true class %"] == "50.0"
    assert real_lgg["called tumour %"] == "50.0" and real_lgg["called healthy %"] == "50.0"
    assert rows[("ixi", "carved", "LGG")]["called the true class %"] == "0.0"  # called HGG
    assert rows[("ixi", "carved", "LGG")]["called tumour %"] == "100.0"
    assert rows[("brats", "healthy-made", "Healthy")]["called healthy %"] == "0.0"
    glioma = rows[("brats", "real", "glioma")]  # no grade: only "tumour or not" is scored
    assert glioma["called the true class %"] == MISSING and glioma["called tumour %"] == "100.0"
    # The totals per true class (the case without a kind is not in the breakdown).
    assert rows[("all", "all", "LGG")]["cases"] == "3"
    assert rows[("all", "all", "Healthy")]["called healthy %"] == "50.0"
    assert table["source"].iloc[-1] == "all"  # the totals come last
    assert tables.breakdown_table({"folds": [{"cases": [folds[1]["cases"][-1]]}]}).empty


def test_heldout_table_is_long_and_narrow():
    bench = {"arch": "mc3", "folds": [_fold(0.8, 0.5), _fold(0.9, 0.7)]}
    report = {
        "n": 90,
        "metrics": {"accuracy": 0.5, "per_class": {"lgg": {"recall": 0.4}}},
        "accuracy_at_training_mix": 0.83,
    }
    table = tables.heldout_table({"mc3": bench}, {"mc3": report, "r3d": {"accuracy": 0.5}})
    assert list(table.columns) == ["network", "n", "metric", "held-out %", "cross-fold %", "Δ pts"]
    rows = table.set_index(["network", "metric"])
    assert rows.loc[("MC3-18", "accuracy")].tolist() == ["90", "50.0", "85.0", "-35.0"]
    assert rows.loc[("MC3-18", "accuracy at training mix"), "Δ pts"] == "-2.0"
    assert rows.loc[("MC3-18", "LGG recall")].tolist() == ["90", "40.0", "60.0", "-20.0"]
    # not stored: missing, never a made-up 0
    assert rows.loc[("MC3-18", "balanced accuracy"), "held-out %"] == MISSING
    assert rows.loc[("R3D-18", "accuracy")].tolist() == [MISSING, "50.0", MISSING, MISSING]
    assert len(table) == 2 * len(tables.HELDOUT_METRICS)


def test_data_description_and_settings_text():
    bench = {
        "data": {
            "source": "synthetic",
            "kind": "synthetic",
            "counts": {"healthy": 130, "lgg": 37, "hgg": 130},
            "synthetic": {"seed": 2024},
        },
        "folds": [{}, {}, {}],
        "input_shape": [28, 40, 32],
        "spacing_mm": [5.0, 5.0, 5.0],
    }
    assert tables.data_description(bench) == (
        "synthetic phantoms (seed 2024): 130 Healthy, 37 LGG, 130 HGG; 3 folds; "
        "input D×H×W 28×40×32 at 5×5×5 mm"
    )
    assert "counts not stored" in tables.data_description({"data": {"source": "BraTS"}})
    text = tables.settings_text(
        {"precision": "fp32", "fuse_batchnorm": True, "torch_compile": False, "setup": 0.15013}
    )
    assert text == "precision: fp32 · fuse batchnorm: on · torch compile: off · setup: 0.150"
    assert "{" not in text


def test_peak_text_shows_the_reason_instead_of_a_number_where_bf16_is_not_native():
    native = {"peak_gflops": {"fp32": 192.04, "bf16": 418.08}}
    assert tables.peak_text(native) == "Matmul peak: fp32 192 GFLOP/s, bf16 418 GFLOP/s."
    emulated = {
        "peak_gflops": {"fp32": 171.6, "bf16": None},
        "bf16": {"native": False, "reason": "emulated on this CPU"},
    }
    text = tables.peak_text(emulated)
    assert text == "Matmul peak: fp32 172 GFLOP/s, bf16 not native: emulated on this CPU."
    unexplained = {"peak_gflops": {"fp32": 171.6, "bf16": None}}
    assert tables.peak_text(unexplained).endswith("bf16 not native: reason not recorded.")
    assert tables.peak_text({}) == ""


# -- the one reader of the benchmark folder -----------------------------------------------------


def test_read_folder_orders_networks_and_names_broken_files(tmp_path):
    folder = tmp_path / "benchmarks"
    (folder / "heldout").mkdir(parents=True)
    for arch in ("r3d", "mc3", "r2plus1d"):
        (folder / f"{arch}.json").write_text(json.dumps({"arch": arch, "folds": []}))
    (folder / "mc3.splits.json").write_text(json.dumps({"version": 1, "folds": []}))
    (folder / "odd.json").write_text("{not json")
    (folder / "nofolds.json").write_text(json.dumps({"arch": "x"}))
    (folder / "inference.json").write_text(json.dumps({"threads": 2}))
    (folder / "heldout" / "mc3.json").write_text(json.dumps({"accuracy": 0.5}))
    stored = read_folder(folder)
    assert list(stored.benches) == ["r2plus1d", "mc3", "r3d"]  # display order
    assert stored.broken == ["nofolds.json", "odd.json"]
    assert stored.heldout == {"mc3": {"accuracy": 0.5}}
    assert stored.inference == {"threads": 2} and stored.published is None
    stamp = folder_stamp(folder)
    assert "heldout/mc3.json" in [name for name, _, _ in stamp]
    assert read_folder(tmp_path / "absent").benches == {}
