"""The real-scan check: gliomas called tumour, healthy brains called healthy, lesions removed."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import write_head_cohort

from tumortrace.checkpoint import ModelCard, save_checkpoint
from tumortrace.config import PreprocessConfig
from tumortrace.manifest import read_manifest
from tumortrace.models import create_model
from tumortrace.real_check import ENSEMBLE, cohort_calls, glioma_calls, real_scan_report
from tumortrace.tables import real_glioma_share

PRE = PreprocessConfig(spacing_mm=(4.0, 4.0, 4.0), shape_dhw=(8, 16, 16), space="native")

H, L, G = [0.8, 0.1, 0.1], [0.1, 0.8, 0.1], [0.1, 0.1, 0.8]


def _bench(fold_cases):
    return {"folds": [{"fold": i, "cases": cases} for i, cases in enumerate(fold_cases)]}


def _case(sid, label, probs):
    return {"subject_id": sid, "label": label, "probs": probs}


def test_cohort_calls_pair_each_lesion_with_its_own_brain():
    a = _bench(
        [
            [_case("A", "healthy", H), _case("A+hgg", "hgg", G), _case("A+lgg", "lgg", L)],
            [_case("B", "healthy", G), _case("B+hgg", "hgg", H)],
        ]
    )
    b = _bench(
        [
            [_case("A", "healthy", H), _case("A+hgg", "hgg", G), _case("A+lgg", "lgg", G)],
            [_case("B", "healthy", H), _case("B+hgg", "hgg", G)],
        ]
    )
    out = cohort_calls({"mc3": a, "r3d": b})
    assert out["healthy_called_healthy"]["mc3"] == {"n": 1, "total": 2, "fraction": 0.5}
    assert out["healthy_called_healthy"]["r3d"]["n"] == 2
    # A's two lesion cases pair with A (healthy for both), B+hgg with B (mc3: called HGG)
    assert out["lesion_removed_called_healthy"]["mc3"] == {"n": 2, "total": 3, "fraction": 2 / 3}
    assert out["lesion_removed_called_healthy"]["r3d"]["n"] == 3
    assert out["lesion_called_tumour"]["mc3"]["n"] == 2  # B+hgg was called healthy
    # the ensemble averages probabilities: B is (G + H) / 2, a tie that argmax gives to healthy
    assert set(out["healthy_called_healthy"]) == {"mc3", "r3d", ENSEMBLE}
    assert out["healthy_called_healthy"][ENSEMBLE]["n"] == 2


def test_cohort_calls_refuse_missing_or_mismatched_cases():
    with pytest.raises(ValueError, match="per-case"):
        cohort_calls({"mc3": {"folds": [{"fold": 0}]}})
    a = _bench([[_case("A", "healthy", H)]])
    b = _bench([[_case("B", "healthy", H)]])
    with pytest.raises(ValueError, match="folds"):
        cohort_calls({"mc3": a, "r3d": b})


def test_glioma_calls_score_every_scan_with_every_network(tmp_path):
    manifest = write_head_cohort(tmp_path / "scans", per_class=1, labels=("hgg", "lgg"))
    scans = read_manifest(manifest)
    cards = []
    for arch in ("mc3", "r3d"):
        torch.manual_seed(0)
        cards.append(
            save_checkpoint(
                create_model(arch), ModelCard(arch=arch, preprocess=PRE), tmp_path / "w"
            )
        )
    out = glioma_calls(cards, scans, progress=False)
    assert out["scans"] == [s.subject_id for s in scans]
    for net in ("mc3", "r3d", ENSEMBLE):
        p = np.array(out["probs"][net])
        assert p.shape == (2, 3) and np.allclose(p.sum(1), 1.0, atol=1e-3)
        called = int(np.isin(p.argmax(1), (1, 2)).sum())
        assert out["called_tumour"][net] == {"n": called, "total": 2, "fraction": called / 2}
    ens = (np.array(out["probs"]["mc3"]) + np.array(out["probs"]["r3d"])) / 2
    np.testing.assert_allclose(out["probs"][ENSEMBLE], ens, atol=2e-4)


def test_baselines_get_their_own_section_without_an_ensemble(tmp_path):
    a = _bench([[_case("A", "healthy", H), _case("A+hgg", "hgg", G)]])
    b = _bench([[_case("A", "healthy", G), _case("A+hgg", "hgg", G)]])
    out = cohort_calls({"hog_svm": a, "cnn3d_small": b}, ensemble=False)
    assert set(out["healthy_called_healthy"]) == {"hog_svm", "cnn3d_small"}
    assert out["healthy_called_healthy"]["cnn3d_small"]["n"] == 0
    manifest = write_head_cohort(tmp_path / "scans", per_class=1, labels=("hgg",))
    torch.manual_seed(0)
    card = save_checkpoint(
        create_model("cnn3d_small"), ModelCard(arch="cnn3d_small", preprocess=PRE), tmp_path / "b"
    )
    gl = glioma_calls([card], read_manifest(manifest), progress=False, ensemble=False)
    assert set(gl["called_tumour"]) == {"cnn3d_small"}
    nets = glioma_calls([], [], progress=False, ensemble=False)
    doc = real_scan_report(
        nets, {}, {"baselines": "why"}, {"gliomas": gl, "cohort_test_parts": out}
    )
    assert (
        doc["baselines"]["what"] == "why" and "cnn3d_small" not in doc["gliomas"]["called_tumour"]
    )
    share = gl["called_tumour"]["cnn3d_small"]["fraction"]
    assert real_glioma_share(doc, "cnn3d_small") == share
    assert real_glioma_share(doc, "googlenet_2d") is None
    assert "baselines" not in real_scan_report(nets, {}, {})
