"""scripts/results_table.py: the README's results section is rendered from the stored JSON."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import load_script

from tumortrace.metrics import summarize

ROOT = Path(__file__).resolve().parents[1]


rt = load_script("scripts/results_table.py")


def _fold(k: int, acc: float, lgg_recall: float) -> dict:
    per_class = {
        "healthy": {"precision": 1.0, "recall": 1.0, "f1": 1.0, "specificity": 1.0},
        "lgg": {"precision": 0.5, "recall": lgg_recall, "f1": 0.5, "specificity": 0.9},
        "hgg": {"precision": 0.9, "recall": 0.9, "f1": 0.9, "specificity": 0.95},
    }
    return {
        "fold": k,
        "accuracy": acc,
        "balanced_accuracy": acc - 0.1,
        "macro_f1": 0.8,
        "auc_macro": 0.95,
        "per_class": per_class,
        "train_seconds": 600.0,
    }


def _bench(tmp_path: Path) -> Path:
    folder = tmp_path / "benchmarks"
    folder.mkdir()
    folds = [_fold(0, 0.8, 0.25), _fold(1, 0.9, 0.75)]
    record = {
        "arch": "mc3",
        "input_shape": [28, 40, 32],
        "spacing_mm": [5.0, 5.0, 5.0],
        "data": {"source": "synthetic", "counts": {"healthy": 130, "lgg": 37, "hgg": 130}},
        "folds": folds,
        "summary": summarize(folds),
        "shipped": "best_fold:1",
        "command": "python train.py --arch mc3",
        "runtime": "cpu fp32 x1",
    }
    (folder / "mc3.json").write_text(json.dumps(record))
    # training writes the folds beside the record: not a benchmark
    (folder / "mc3.splits.json").write_text(json.dumps({"version": 1, "folds": []}))
    return folder


def test_cross_fold_row_is_mean_and_sample_std_in_percent(tmp_path):
    benches = rt.load_benchmarks(_bench(tmp_path))
    assert list(benches) == ["mc3"]
    section = rt.render(benches, {}, None)
    row = next(line for line in section.splitlines() if line.startswith("| MC3-18"))
    cells = [c.strip() for c in row.strip("|").split("|")]
    # accuracy 0.8 and 0.9: mean 85.0, sample std 7.07; LGG recall 0.25 and 0.75: 50.0 ± 35.4
    assert cells[1] == "85.0 ± 7.1"
    assert cells[4] == "50.0 ± 35.4"
    assert cells[9] == "0/0"  # no curves stored in this record
    assert cells[10] == "20.0"  # two folds of 600 s, in minutes
    assert cells[11] == "best_fold:1"
    assert "28×40×32" in section and "synthetic phantoms" in section


def test_real_scan_rows_say_what_they_measure():
    share = {"n": 12, "total": 13, "fraction": 12 / 13}
    doc = {
        "gliomas": {"called_tumour": {"mc3": share, "ensemble": share}, "what": "Real gliomas."},
        "cohort_test_parts": {
            "healthy_called_healthy": {"mc3": {"n": 9, "total": 10, "fraction": 0.9}},
            "what": "IXI test parts.",
        },
    }
    section = rt.render({}, {}, None, doc)
    assert "**Real scans**" in section and "Real gliomas. IXI test parts." in section
    assert (
        "| real gliomas called tumour (LGG or HGG) | 12/13 (92.3 %) | 12/13 (92.3 %) |" in section
    )
    assert "| real healthy brains called healthy | 9/10 (90.0 %) | — |" in section
    assert "without its lesion" not in section  # a check the document lacks is left out


def test_benchmark_sources_in_plain_words():
    from tumortrace.tables import source_words

    assert source_words("ixi+ixi+synthetic-lesion") == "real IXI brains + synthetic lesions"
    assert source_words("synthetic") == "synthetic phantoms"
    assert source_words("brats2021") == "brats2021"


def test_heldout_row_compares_accuracy_and_balanced_accuracy(tmp_path):
    benches = rt.load_benchmarks(_bench(tmp_path))
    report = {
        "manifest": "data/heldout/manifest.csv",
        "accuracy": 0.8,
        "balanced_accuracy": 0.8,
        "macro_f1": 0.79,
        "confusion": [[30, 0, 0], [6, 18, 6], [0, 0, 30]],
        "per_class": {"healthy": {"recall": 1.0}, "lgg": {"recall": 0.6}, "hgg": {"recall": 1.0}},
        "accuracy_at_training_mix": 0.95,
    }
    section = rt.render(benches, {"mc3": report}, None)
    row = [line for line in section.splitlines() if line.startswith("| MC3-18")][1]
    cells = [c.strip() for c in row.strip("|").split("|")]
    # cross-fold accuracy 0.8/0.9 (mean 85.0), balanced accuracy 0.7/0.8 (mean 75.0)
    assert cells[1:4] == ["80.0", "85.0 ± 7.1", "-5.0"]
    assert cells[4:6] == ["95.0", "+10.0"]  # at the training mix, against cross-fold accuracy
    assert cells[6:9] == ["80.0", "75.0 ± 7.1", "+5.0"]
    assert cells[9:11] == ["60.0", "50.0 ± 35.4"]
    assert "30 healthy, 30 lgg, 30 hgg" in section
    # LGG shares: 30 of 90 held-out, 37 of 297 training
    assert "33% of the held-out cohort and 12% of the training cohort" in section


def test_published_rows_are_labelled_and_read_from_the_file():
    pub = json.loads((ROOT / "weights" / "benchmarks" / "published.json").read_text())
    section = rt.render({}, {}, pub)
    assert "Published, not measured here" in section
    best = next(line for line in section.splitlines() if "MC3-18 (pretrained)" in line)
    assert "96.98" in best and "0.9345" in best and "0.895" in best  # LGG F1 0.8949


def test_update_readme_replaces_only_between_markers():
    text = f"intro\n{rt.START}\nold\n{rt.END}\noutro\n"
    assert rt.update_readme(text, "new\n") == f"intro\n{rt.START}\nnew\n{rt.END}\noutro\n"
    with pytest.raises(ValueError, match="must contain"):
        rt.update_readme("no markers", "x")


def test_readme_matches_the_stored_results():
    assert rt.main(["--check"]) == 0, "run .venv/bin/python scripts/results_table.py"
