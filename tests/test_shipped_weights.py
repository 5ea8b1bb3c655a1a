"""The committed demo weights: the cards say what they are, the files verify, the samples run."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest

from tumortrace.checkpoint import load_checkpoint, read_card
from tumortrace.config import CLASSES
from tumortrace.infer import Predictor
from tumortrace.io import load_volume
from tumortrace.models import list_models

ROOT = Path(__file__).resolve().parents[1]
WEIGHTS = ROOT / "weights"


@pytest.mark.parametrize("arch", list_models())
def test_card_states_data_command_commit_shape_folds_and_use(arch):
    card = read_card(WEIGHTS / f"{arch}.json")
    bench = json.loads((WEIGHTS / "benchmarks" / f"{arch}.json").read_text(encoding="utf-8"))
    assert card.arch == arch and card.classes == CLASSES
    assert card.data["source"].startswith("synthetic")
    assert sum(card.data["counts"].values()) == sum(bench["data"]["counts"].values()) > 0
    assert re.search(rf"train\.py --arch {arch}\b", card.command)
    assert re.fullmatch(r"[0-9a-f]{40}", card.git_commit)
    assert list(card.preprocess.shape_dhw) == bench["input_shape"]
    assert f"{list(card.preprocess.shape_dhw)}" in card.notes
    assert "not for clinical use" in card.notes.lower()
    assert card.folds == len(bench["folds"]) == 3
    accs = [f["accuracy"] for f in bench["folds"]]
    assert card.metrics["accuracy"]["mean"] == pytest.approx(sum(accs) / 3)
    # the splits beside the benchmark are patient-level: no subject in two test parts
    splits = json.loads((WEIGHTS / "benchmarks" / f"{arch}.splits.json").read_text())
    tests = [set(f["test"]) for f in splits["folds"]]
    assert all(not (a & b) for i, a in enumerate(tests) for b in tests[i + 1 :])


@pytest.mark.parametrize("arch", list_models())
def test_weights_verify_and_are_fp16_on_disk(arch):
    from safetensors import safe_open

    model, card = load_checkpoint(WEIGHTS / f"{arch}.json")  # checks the SHA-256 in the card
    assert card.weights_sha256 and sum(p.numel() for p in model.parameters()) == card.params
    with safe_open(str(WEIGHTS / f"{arch}.safetensors"), framework="pt") as f:
        floats = {f.get_slice(k).get_dtype() for k in f.keys()} - {"I64"}  # noqa: SIM118
    assert floats == {"F16"}


def test_bundled_samples_are_told_apart_by_the_shipped_weights():
    """What these weights do on the bundled samples (measured when they were shipped): MC3, the
    best network (87.7 % cross-fold accuracy), names each sample's class; every network gives the
    three samples different distributions (it reads the input); the ensemble gets the healthy and
    the LGG sample right (the HGG sample is the hard one: R(2+1)D and R3D call it healthy)."""
    predictor = Predictor.from_dir(WEIGHTS)
    assert sorted(predictor.cards) == list_models()
    runs = {c: predictor.analyze(load_volume(ROOT / "samples" / f"{c}.nii.gz")) for c in CLASSES}
    for label, analysis in runs.items():
        assert sorted(analysis.predictions) == list_models()
        for pred in analysis.predictions.values():
            assert pred.probs.shape == (3,) and np.isfinite(pred.probs).all()
            assert pred.probs.sum() == pytest.approx(1.0, abs=1e-6)
        assert analysis.predictions["mc3"].label == label
    for arch in list_models():
        probs = [runs[c].predictions[arch].probs for c in CLASSES]
        assert min(np.abs(p - q).max() for i, p in enumerate(probs) for q in probs[i + 1 :]) > 0.02
    assert runs["healthy"].ensemble_label == "healthy" and runs["lgg"].ensemble_label == "lgg"
