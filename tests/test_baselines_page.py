"""The comparison of networks and baselines: the Benchmarks page's table and ROC figure
(``AppTest``), the tables behind them and the README's generated rows, on fabricated benchmarks."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from app_fixtures import add_case_predictions, make_benchmark_files, make_tiny_weights
from conftest import load_script
from streamlit.testing.v1 import AppTest

from tumortrace import tables
from tumortrace.benchmark_files import read_benchmarks

ROOT = Path(__file__).resolve().parents[1]
APP = str(ROOT / "app.py")
METHODS = ("mc3", "r3d", "hog_svm", "cnn3d_small")


@pytest.fixture(scope="module")
def weights(tmp_path_factory) -> Path:
    folder = make_tiny_weights(tmp_path_factory.mktemp("weights"))
    bench_dir = make_benchmark_files(folder, archs=METHODS)
    for k, arch in enumerate(METHODS):
        add_case_predictions(bench_dir, arch, k)
    real = {"gliomas": {"called_tumour": {"mc3": {"n": 9, "total": 12, "fraction": 0.75}}}}
    (bench_dir / "real_scans.json").write_text(json.dumps(real), encoding="utf-8")
    return folder


def test_comparison_table_lists_networks_first_and_formats_once(weights):
    benches, broken = read_benchmarks(weights / "benchmarks")
    assert not broken
    real = json.loads((weights / "benchmarks" / "real_scans.json").read_text())
    table = tables.comparison_table(benches, real)
    assert list(table["method"]) == ["MC3-18", "R3D-18", "HOG + PCA + SVM", "Small 3D CNN"]
    assert list(table["kind"]) == ["network", "network", "baseline", "baseline"]
    assert list(table.columns[2:7]) == [
        "accuracy", "balanced accuracy", "macro-F1", "LGG recall", "AUC (macro)",
    ]  # fmt: skip
    row = table.set_index("method")
    assert row.loc["MC3-18", "real gliomas called tumour (%)"] == "75.0"
    assert row.loc["HOG + PCA + SVM", "real gliomas called tumour (%)"] == "—"  # not measured
    assert row.loc["HOG + PCA + SVM", "training s"] == "4.20"  # the record's total
    assert row.loc["MC3-18", "training s"] == "26.0"  # no total: the folds' sum (12.5 + 13.5)
    assert row.loc["HOG + PCA + SVM", "parameters (M)"] == "0.0119"
    assert row.loc["MC3-18", "LGG recall"] == "0.650 ± 0.071"
    rocs = tables.pooled_tumour_rocs(benches)
    assert list(rocs) == list(METHODS)
    assert all(0.0 <= auc <= 1.0 for _, _, auc in rocs.values())


def test_benchmarks_page_shows_the_comparison_and_one_roc_figure(weights, monkeypatch):
    monkeypatch.setenv("TUMORTRACE_WEIGHTS_DIR", str(weights))
    at = AppTest.from_file(APP, default_timeout=120).run()
    at.switch_page("pages/benchmarks.py").run()
    assert not at.exception, [e.value for e in at.exception]
    assert "Networks and baselines" in [h.value for h in at.header]
    frames = [d.value for d in at.dataframe if {"method", "kind"} <= set(d.value.columns)]
    assert len(frames) == 1
    methods = [m.replace(" (unverified)", "") for m in frames[0]["method"]]
    assert methods == ["MC3-18", "R3D-18", "HOG + PCA + SVM", "Small 3D CNN"]
    charts = [c for c in at.get("plotly_chart") if "AUC" in c.proto.spec]
    roc = [c for c in charts if "Tumour (LGG or HGG) against healthy" in c.proto.spec]
    assert len(roc) == 1
    spec = json.loads(roc[0].proto.spec)
    names = [t["name"] for t in spec["data"] if t["name"] != "chance"]
    assert [n.split(" (AUC")[0] for n in names] == methods
    # the networks' own sections stay the networks': no baseline tab
    assert all("HOG" not in t.label and "3D CNN" not in t.label for t in at.tabs)


def test_results_table_gains_the_comparison_rows(weights):
    module = load_script("scripts/results_table.py")
    benches = module.load_benchmarks(weights / "benchmarks")
    real = json.loads((weights / "benchmarks" / "real_scans.json").read_text())
    text = module.render(benches, {}, None, real)
    assert "**Networks and baselines**" in text
    network_rows = [ln for ln in text.splitlines() if ln.startswith("| HOG + PCA + SVM")]
    assert len(network_rows) == 1  # in the comparison table only, not the networks' table
    assert "| MC3-18 | network |" in text
    assert text.index("| MC3-18 | network |") < text.index("| HOG + PCA + SVM | baseline |")
