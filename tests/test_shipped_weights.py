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


def test_bundled_samples_get_three_distributions():
    predictor = Predictor.from_dir(WEIGHTS)
    assert sorted(predictor.cards) == list_models()
    for label in CLASSES:
        analysis = predictor.analyze(load_volume(ROOT / "samples" / f"{label}.nii.gz"))
        assert sorted(analysis.predictions) == list_models()
        for pred in analysis.predictions.values():
            assert pred.probs.shape == (3,) and np.isfinite(pred.probs).all()
            assert pred.probs.sum() == pytest.approx(1.0, abs=1e-6)
