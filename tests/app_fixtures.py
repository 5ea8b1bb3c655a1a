"""Helpers for the app tests and the viewer benchmark: tiny weights and a small benchmark file.

The weights are untrained (random, seeded) networks at a 16x32x32 model grid: enough to exercise
the whole app path (load, preprocess, three forward passes, Grad-CAM, overlays) in seconds.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

from tumortrace.checkpoint import ModelCard, save_checkpoint
from tumortrace.config import CLASSES, PreprocessConfig
from tumortrace.models import create_model, list_models

TINY = PreprocessConfig(spacing_mm=(6.0, 6.0, 6.0), shape_dhw=(16, 32, 32), space="native")


def make_tiny_weights(out: Path, seed: int = 0) -> Path:
    """Writes ``<out>/<arch>.json`` + ``.safetensors`` for every network; returns ``out``."""
    out.mkdir(parents=True, exist_ok=True)
    for k, arch in enumerate(list_models()):
        torch.manual_seed(seed + k)
        model = create_model(arch, dropout=0.0).eval()
        card = ModelCard(
            arch=arch,
            preprocess=TINY,
            data={"source": "synthetic (test)", "counts": {c: 4 for c in CLASSES}},
            folds=2,
            metrics={"accuracy": {"mean": 0.5, "std": 0.1}},
            command=f"make_tiny_weights({str(out)!r}, seed={seed})",
            git_commit="test",
            date="2026-01-01T00:00:00+00:00",
            shipped="best_fold:0",
            notes="Untrained test weights.",
        )
        save_checkpoint(model, card, out)
    return out


def _fold(k: int, rng: np.random.Generator) -> dict:
    """One fold record in the docs/ARCHITECTURE.md layout, with seeded plausible values."""
    cm = rng.integers(0, 4, size=(3, 3)) + np.diag([8, 3, 8])
    fpr = np.linspace(0, 1, 6)
    return {
        "fold": k,
        "n_train": 40,
        "n_val": 8,
        "n_test": int(cm.sum()),
        "accuracy": float(np.trace(cm) / cm.sum()),
        "balanced_accuracy": 0.7 + 0.05 * k,
        "macro_f1": 0.65 + 0.05 * k,
        "auc_macro": 0.8 + 0.02 * k,
        "ece": 0.08,
        "train_seconds": 12.5 + k,
        "best_epoch": 3 + k,
        "per_class": {
            c: {
                "precision": 0.7,
                "recall": 0.6 + 0.1 * k,
                "f1": 0.65,
                "specificity": 0.9,
                "auc": 0.85,
            }
            for c in CLASSES
        },
        "confusion": cm.tolist(),
        "roc": {c: {"fpr": fpr.tolist(), "tpr": np.sqrt(fpr).tolist()} for c in CLASSES},
        "curves": [
            {
                "epoch": e,
                "train_loss": 1.1 - 0.1 * e,
                "val_loss": 1.2 - 0.08 * e,
                "val_accuracy": 0.4 + 0.05 * e,
                "val_macro_f1": 0.35 + 0.05 * e,
            }
            for e in range(5)
        ],
    }


def make_benchmark_files(folder: Path, archs: tuple[str, ...] = ("mc3", "r3d")) -> Path:
    """Writes ``<folder>/benchmarks/<arch>.json`` (two folds), ``inference.json``, a held-out
    report for the first network (``heldout/<arch>.json``, as ``tumortrace evaluate`` writes it)
    and an ``explanations.json`` summary (as ``tumortrace explain-eval`` writes it)."""
    bench_dir = folder / "benchmarks"
    bench_dir.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for arch in archs:
        record = {
            "arch": arch,
            "classes": list(CLASSES),
            "input_shape": list(TINY.shape_dhw),
            "spacing_mm": list(TINY.spacing_mm),
            "data": {"source": "synthetic (test)", "counts": {c: 20 for c in CLASSES}},
            "params": 11_000_000,
            "gflops": 1.5,
            "folds": [_fold(k, rng) for k in range(2)],
            "summary": {},
        }
        (bench_dir / f"{arch}.json").write_text(json.dumps(record), encoding="utf-8")
        # training also writes the folds beside the benchmark; the page must not read it as one
        empty = {"train": [], "val": [], "test": []}
        splits = {"version": 1, "folds": [{"fold": k, **empty} for k in range(2)]}
        (bench_dir / f"{arch}.splits.json").write_text(json.dumps(splits), encoding="utf-8")
    inference = {
        "shape": list(TINY.shape_dhw),
        "threads": 2,
        "peak_gflops": {"fp32": 300.0, "bf16": 1800.0},
        "naive": {a: 0.5 for a in archs} | {"total": 0.5 * len(archs)},
        "fast": {a: 0.2 for a in archs} | {"total": 0.2 * len(archs)},
        "speedup": 2.5,
        "peak_rss_mb": 900.0,
        "max_prob_diff": 0.01,
        "settings": {"precision": "bf16"},
    }
    (bench_dir / "inference.json").write_text(json.dumps(inference), encoding="utf-8")
    heldout = {
        "arch": archs[0],
        "manifest": "data/heldout/manifest.csv",
        "n": 30,
        "accuracy": 0.6,
        "balanced_accuracy": 0.6,
        "accuracy_at_training_mix": 0.66,
        "per_class": {c: {"recall": r} for c, r in zip(CLASSES, (0.9, 0.3, 0.6), strict=True)},
        "confusion": [[9, 1, 0], [6, 3, 1], [2, 2, 6]],
    }
    explanations = {
        "kind": "explanations",
        "cohort": "fixture phantoms",
        "n_lesion_cases": 4,
        "default_method": "layercam-l34",
        "legacy_method": "gradcam-l4",
        "near_mm": 10.0,
        "summary": [
            {
                "arch": arch,
                "method": method,
                "target": target,
                "label": "hgg",
                "n": 4,
                "hits": hits,
                "pointing": hits / 4,
                "pointing_near": 1.0,
                "energy_share": 0.2,
                "lesion_share": 0.05,
                "concentration": 4.0,
                "energy_share_near": 0.4,
                "near_share": 0.1,
                "concentration_near": 4.0,
                "seconds": 0.25,
            }
            for arch, method, hits, target in [
                *(
                    (arch, method, hits, target)
                    for arch in archs
                    for method, hits in (("gradcam-l4", 1), ("layercam-l34", 3))
                    for target in ("true", "predicted")
                ),
                ("ensemble", "focus", 2, "pooled"),  # the networks' pooled evidence
                ("ensemble", "opening", 1, "pooled"),  # where the viewer opens
            ]
        ],
    }
    (bench_dir / "explanations.json").write_text(json.dumps(explanations), encoding="utf-8")
    (bench_dir / "heldout").mkdir(exist_ok=True)
    (bench_dir / "heldout" / f"{archs[0]}.json").write_text(json.dumps(heldout), encoding="utf-8")
    return bench_dir


def add_case_predictions(bench_dir: Path, arch: str, seed: int) -> None:
    """Adds per-case test predictions to every fold of ``<bench_dir>/<arch>.json`` (what the
    comparison's pooled ROC reads); a HOG-SVM record also gets its kind, parameters and seconds."""
    path = bench_dir / f"{arch}.json"
    record = json.loads(path.read_text(encoding="utf-8"))
    rng = np.random.default_rng(seed)
    for fold in record["folds"]:
        cases = []
        for i in range(12):
            label = CLASSES[i % 3]
            p = rng.dirichlet([1, 1, 1]) + (0.6 if label == "healthy" else 0) * np.eye(3)[0]
            cases.append({"subject_id": f"s{i}", "label": label, "probs": (p / p.sum()).tolist()})
        fold["cases"] = cases
    if arch == "hog_svm":
        record["params"], record["train_seconds"], record["kind"] = 11_928, 4.2, "baseline"
    path.write_text(json.dumps(record), encoding="utf-8")
