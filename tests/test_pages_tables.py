"""The Benchmarks and About pages' tables through ``AppTest`` (issue 17, item 7).

What the data were, tables that fit the page, one number format, a readable cost caption, one
legend per training-curve chart with a colour per fold. Run on the shipped weights folder (read
only: both pages read JSON files, no network is loaded) and on the test fixtures.
"""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest
from app_fixtures import add_case_predictions, make_benchmark_files, make_tiny_weights
from streamlit.testing.v1 import AppTest

ROOT = Path(__file__).resolve().parents[1]
APP = str(ROOT / "app.py")
TIMEOUT = 120
# more than three decimals: what the pages showed before ("0.6333", "378.415")
RAW_NUMBER = re.compile(r"\d\.\d{4,}")


@pytest.fixture(scope="module")
def fixture_weights(tmp_path_factory) -> Path:
    folder = make_tiny_weights(tmp_path_factory.mktemp("weights"))
    make_benchmark_files(folder)
    return folder


def _open(page: str, weights: Path, monkeypatch) -> AppTest:
    monkeypatch.setenv("TUMORTRACE_WEIGHTS_DIR", str(weights))
    at = AppTest.from_file(APP, default_timeout=TIMEOUT).run()
    at.switch_page(page).run()
    assert not at.exception, [e.value for e in at.exception]
    return at


def _cells(at: AppTest) -> list[str]:
    return [str(v) for d in at.dataframe for v in d.value.to_numpy().ravel()]


def test_benchmarks_page_says_what_the_data_were_and_formats_numbers_once(monkeypatch):
    at = _open("pages/benchmarks.py", ROOT / "weights", monkeypatch)
    # the shipped weights change with training runs: the line's form, not today's numbers
    data = (
        r"Data: .+: \d+ Healthy, \d+ LGG, \d+ HGG; \d+ folds; input D×H×W \d+×\d+×\d+ at \S+ mm\."
    )
    assert any(re.fullmatch(data, m.value) for m in at.markdown)
    ours = [d.value for d in at.dataframe if "weights" not in d.value.columns]
    ours = [t for t in ours if "precision" not in t.columns]  # the papers' figures, as published
    ours = [t for t in ours if "kind" not in t.columns]  # the networks-and-baselines comparison
    assert len(ours) >= 6  # summary, per class, real scans, three per-fold tables, cost, ...
    summary = [str(v) for t in ours[:2] for v in t.to_numpy().ravel()]
    assert all(re.fullmatch(r"\d\.\d{3} ± \d\.\d{3}|—", c) for c in summary)
    per_fold = next(d.value for d in at.dataframe if "fold 0" in d.value.columns)
    per_fold = per_fold.set_index("metric")
    assert list(per_fold.columns) == [f"fold {k}" for k in range(len(per_fold.columns))]
    assert all(re.fullmatch(r"\d+", s) for s in per_fold.loc["train s"])  # 378.415 s -> "378"
    assert all(re.fullmatch(r"0\.\d{3}", s) for s in per_fold.loc["ece"])
    cost_table = next(d.value for d in at.dataframe if "GFLOPs / volume" in set(d.value.iloc[:, 0]))
    assert list(cost_table.columns) == ["metric", "R(2+1)D-18", "MC3-18", "R3D-18"]  # fits
    real = next(d.value for d in at.dataframe if "check" in d.value.columns)
    assert list(real.columns) == ["check", "R(2+1)D-18", "MC3-18", "R3D-18", "ensemble"]
    cells = [str(v) for v in real.drop(columns="check").to_numpy().ravel()]
    assert all(re.fullmatch(r"\d+/\d+ \(\d+\.\d %\)", c) for c in cells)  # 12/13 (92.3 %)
    cost = next(c.value for c in at.caption if c.value.startswith("CPU seconds"))
    assert re.search(r"precision: (fp32|bf16)", cost) and "fuse batchnorm: on" in cost
    assert "{" not in cost  # a readable list, not a Python dict


def test_benchmarks_page_curves_have_a_legend_per_chart_and_a_colour_per_fold(
    fixture_weights, monkeypatch
):
    at = _open("pages/benchmarks.py", fixture_weights, monkeypatch)
    assert any(m.value.startswith("Data: synthetic (test): 20 Healthy") for m in at.markdown)
    charts = [c for c in at.get("plotly_chart") if "Training curves" in c.proto.spec]
    assert charts
    spec = charts[0].proto.spec
    assert '"legend2"' in spec and "fold 1 train loss" in spec
    cost = next(c.value for c in at.caption if c.value.startswith("CPU seconds"))
    assert "Settings of 'fast': precision: bf16." in cost
    assert cost.endswith("Matmul peak: fp32 300 GFLOP/s, bf16 1800 GFLOP/s.")


def test_benchmarks_page_says_bf16_is_not_native_instead_of_a_peak(
    fixture_weights, tmp_path, monkeypatch
):
    """An inference.json measured where bf16 is emulated has no bf16 peak: the page says why."""
    folder = tmp_path / "weights"
    shutil.copytree(fixture_weights, folder)
    path = folder / "benchmarks" / "inference.json"
    record = json.loads(path.read_text(encoding="utf-8"))
    record["peak_gflops"]["bf16"] = None
    record["bf16"] = {"native": False, "reason": "emulated on this CPU"}
    record["settings"]["precision"] = "fp32"
    path.write_text(json.dumps(record), encoding="utf-8")
    at = _open("pages/benchmarks.py", folder, monkeypatch)
    cost = next(c.value for c in at.caption if c.value.startswith("CPU seconds"))
    assert cost.endswith("Matmul peak: fp32 300 GFLOP/s, bf16 not native: emulated on this CPU.")


def test_about_page_cards_use_the_one_number_format(monkeypatch):
    at = _open("pages/about.py", ROOT / "weights", monkeypatch)
    tables = [d.value for d in at.dataframe if "mean ± std" in d.value.columns]
    assert len(tables) == 3
    heads = [m.value for m in at.markdown if m.value.startswith("**Cross-validated results**")]
    assert re.search(r"\(.+; mean ± std over \d+ folds\)$", heads[0])  # what the data were
    rows = tables[0].set_index("metric")["mean ± std"]
    assert re.fullmatch(r"\d+(\.\d)? ± \d+(\.\d)?", rows["n train"])  # not 201.3333 ± 0.5774
    assert re.fullmatch(r"0\.\d{3} ± 0\.\d{3}", rows["accuracy"])
    assert not [c for c in _cells(at) if RAW_NUMBER.search(c)]


def test_benchmarks_page_breaks_the_test_parts_down_by_source_and_kind(
    fixture_weights, tmp_path, monkeypatch
):
    """A benchmark whose test predictions carry ``source`` and ``kind`` (the real-tumour cohort):
    each network's tab shows the breakdown beside the totals; the shipped kind-less ones do not."""
    folder = tmp_path / "weights"
    shutil.copytree(fixture_weights, folder)
    add_case_predictions(folder / "benchmarks", "mc3", seed=3)
    path = folder / "benchmarks" / "mc3.json"
    record = json.loads(path.read_text(encoding="utf-8"))
    kinds = [("ixi", "real"), ("ixi", "carved"), ("tcga-lgg", "healthy-made")]
    for fold in record["folds"]:
        for i, case in enumerate(fold["cases"]):
            case["source"], case["kind"] = kinds[i % len(kinds)]
    path.write_text(json.dumps(record), encoding="utf-8")
    at = _open("pages/benchmarks.py", folder, monkeypatch)
    assert sum(m.value.startswith("**By source and kind**") for m in at.markdown) == 1  # mc3 only
    table = next(d.value for d in at.dataframe if "called tumour %" in d.value.columns)
    assert {"ixi", "tcga-lgg", "all"} <= set(table["source"])
    assert {"real", "carved", "healthy-made"} <= set(table["kind"])
    assert not any(RAW_NUMBER.search(c) for c in table.to_numpy().ravel().astype(str))
