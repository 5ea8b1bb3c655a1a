"""Scoring saved weights on a manifest, and ``python -m tumortrace evaluate``."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import write_head_cohort

from tumortrace.__main__ import main as tumortrace_main
from tumortrace.checkpoint import ModelCard, save_checkpoint
from tumortrace.config import CLASSES, PreprocessConfig
from tumortrace.errors import CheckpointError, ManifestError
from tumortrace.manifest import read_manifest, write_manifest
from tumortrace.models import create_model
from tumortrace.scoring import format_report, score_manifest, score_report

PRE = PreprocessConfig(spacing_mm=(5.0, 4.0, 4.0), shape_dhw=(4, 12, 12), space="native")


@pytest.fixture(scope="module")
def manifest(tmp_path_factory) -> Path:
    return write_head_cohort(tmp_path_factory.mktemp("score-cohort"), per_class=2)


@pytest.fixture(scope="module")
def card(tmp_path_factory) -> Path:
    torch.manual_seed(0)
    model = create_model("mc3")
    out = tmp_path_factory.mktemp("weights")
    return save_checkpoint(model, ModelCard(arch="mc3", preprocess=PRE, shipped="refit"), out)


def test_score_manifest_rows_agree_with_metrics(card, manifest):
    metrics, rows = score_manifest(card, manifest, device="cpu", progress=False)
    assert [r.subject_id for r in rows] == [c.subject_id for c in read_manifest(manifest)]
    for r in rows:
        assert sum(r.probs.values()) == pytest.approx(1.0)
        assert r.predicted == max(r.probs, key=r.probs.get)
    assert metrics.accuracy == pytest.approx(np.mean([r.correct for r in rows]))
    confusion = np.array(metrics.confusion)
    assert confusion.sum() == 6 and confusion.sum(axis=1).tolist() == [2, 2, 2]
    for i, cls in enumerate(CLASSES):
        predicted = sum(r.predicted == cls for r in rows)
        assert confusion[:, i].sum() == predicted


def test_report_text_has_table_and_confusion(card, manifest):
    text = format_report(score_report(card, manifest, device="cpu", progress=False))
    assert "macro-F1" in text and "confusion" in text
    assert all(cls in text for cls in CLASSES)


def test_evaluate_cli_json_is_one_document(card, manifest, capsys):
    argv = ["evaluate", "--weights", str(card), "--manifest", str(manifest), "--format", "json"]
    assert tumortrace_main([*argv, "--device", "cpu", "--quiet"]) == 0
    doc = json.loads(capsys.readouterr().out)  # fails on any extra output
    assert {"accuracy", "macro_f1", "per_class", "confusion", "n", "arch"} <= doc.keys()
    assert doc["arch"] == "mc3" and doc["n"] == 6 and len(doc["cases"]) == 6
    assert set(doc["per_class"]) == set(CLASSES)
    assert np.sum(doc["confusion"]) == 6


def test_evaluate_cli_text(card, manifest, capsys):
    argv = ["evaluate", "--weights", str(card), "--manifest", str(manifest), "--quiet"]
    assert tumortrace_main(argv) == 0
    out = capsys.readouterr().out
    assert out.startswith("mc3 on ") and "6 cases" in out


def test_corrupt_weights_are_refused(card, manifest, tmp_path, capsys):
    bad_dir = tmp_path / "w"
    bad_dir.mkdir()
    (bad_dir / "mc3.json").write_text(card.read_text())
    blob = bytearray(card.with_suffix(".safetensors").read_bytes())
    blob[-10:] = b"\x00" * 10
    (bad_dir / "mc3.safetensors").write_bytes(bytes(blob))
    with pytest.raises(CheckpointError, match="SHA-256"):
        score_manifest(bad_dir / "mc3.json", manifest, device="cpu", progress=False)
    argv = ["evaluate", "--weights", str(bad_dir / "mc3.json"), "--manifest", str(manifest)]
    assert tumortrace_main([*argv, "--quiet"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error:") and "SHA-256" in err and len(err.splitlines()) == 1


def test_mismatched_weights_are_refused(card, manifest, tmp_path, capsys):
    mixed = tmp_path / "mixed"
    mixed.mkdir()
    torch.manual_seed(0)
    r3d_pre = replace(PRE, shape_dhw=(8, 12, 12))  # r3d halves D three times: 4 is too few
    r3d_card = save_checkpoint(
        create_model("r3d"), ModelCard(arch="r3d", preprocess=r3d_pre), mixed
    )
    # the r3d card now points at mc3 weights (hash updated so only the content mismatches)
    data = json.loads(r3d_card.read_text())
    data["weights_sha256"] = json.loads(card.read_text())["weights_sha256"]
    r3d_card.write_text(json.dumps(data))
    r3d_card.with_suffix(".safetensors").write_bytes(card.with_suffix(".safetensors").read_bytes())
    with pytest.raises(CheckpointError, match="mc3"):
        score_manifest(r3d_card, manifest, device="cpu", progress=False)
    argv = ["evaluate", "--weights", str(r3d_card), "--manifest", str(manifest), "--quiet"]
    assert tumortrace_main(argv) == 2
    assert "error:" in capsys.readouterr().err


def test_manifest_with_missing_volume(card, manifest, tmp_path):
    cases = read_manifest(manifest)
    cases[-1] = replace(cases[-1], path=tmp_path / "missing.nii.gz")
    bad = write_manifest(cases, tmp_path / "bad.csv")
    with pytest.raises(ManifestError, match="Missing file"):
        score_manifest(card, bad, device="cpu", progress=False)


def test_report_reweights_accuracy_to_the_training_mix(card, manifest, tmp_path):
    from tumortrace.metrics import accuracy_at_class_mix

    plain = score_report(card, manifest, device="cpu", progress=False)
    assert plain.training_mix is None and plain.to_dict()["accuracy_at_training_mix"] is None
    torch.manual_seed(0)
    counts = {"healthy": 130, "lgg": 37, "hgg": 130}
    with_mix = save_checkpoint(
        create_model("mc3"),
        ModelCard(arch="mc3", preprocess=PRE, shipped="refit", data={"counts": counts}),
        tmp_path,
    )
    report = score_report(with_mix, manifest, device="cpu", progress=False)
    doc = report.to_dict()
    assert doc["training_mix"] == counts
    expected = accuracy_at_class_mix(doc["confusion"], [130, 37, 130])
    assert doc["accuracy_at_training_mix"] == pytest.approx(expected)
    # by hand from the per-class recalls: the LGG recall weighs 37/297, not a third
    recalls = [doc["per_class"][c]["recall"] for c in CLASSES]
    by_hand = (130 * recalls[0] + 37 * recalls[1] + 130 * recalls[2]) / 297
    assert doc["accuracy_at_training_mix"] == pytest.approx(by_hand)
    assert "accuracy at the training class mix (healthy/lgg/hgg = 130/37/130)" in format_report(
        report
    )


def test_training_mix_needs_every_class_counted():
    from tumortrace.scoring import training_mix

    full = {"healthy": 130, "lgg": 37, "hgg": 130}
    assert training_mix(ModelCard(arch="mc3", data={"counts": full})) == (130, 37, 130)
    for counts in ({"healthy": 130, "hgg": 130}, {**full, "lgg": "many"}, {c: 0 for c in full}):
        assert training_mix(ModelCard(arch="mc3", data={"counts": counts})) is None
    assert training_mix(ModelCard(arch="mc3")) is None


def test_evaluate_scores_freesurfer_mgz_like_the_same_nifti(card, manifest, tmp_path):
    """Issue 28: a manifest row may name an .mgz; it scores as the NIfTI it was made from."""
    import nibabel as nib

    cases = read_manifest(manifest)
    rewritten = []
    for c in cases:
        img = nib.load(c.path)
        mgz = tmp_path / f"{c.subject_id}.mgz"
        nib.save(nib.MGHImage(np.asarray(img.dataobj, dtype=np.float32), img.affine), mgz)
        rewritten.append(replace(c, path=mgz))
    mgz_manifest = write_manifest(rewritten, tmp_path / "manifest.csv")
    _, nifti_rows = score_manifest(card, manifest, device="cpu", progress=False)
    _, mgz_rows = score_manifest(card, mgz_manifest, device="cpu", progress=False)
    assert [r.subject_id for r in mgz_rows] == [r.subject_id for r in nifti_rows]
    for a, b in zip(mgz_rows, nifti_rows, strict=True):
        assert a.probs == pytest.approx(b.probs, abs=1e-5)
