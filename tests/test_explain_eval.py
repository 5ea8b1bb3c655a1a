"""explain-eval: scores of maps against lesion masks, manifests with masks, the CLI's JSON."""

from __future__ import annotations

import json

import nibabel as nib
import numpy as np
import pytest
from app_fixtures import make_tiny_weights
from conftest import make_head

from tumortrace.__main__ import main
from tumortrace.errors import ManifestError
from tumortrace.explain_eval import lesion_regions, read_lesion_cases, score_map
from tumortrace.manifest import Case, write_manifest

SHAPE = (20, 20, 20)


def _cube(lo: int, hi: int) -> np.ndarray:
    m = np.zeros(SHAPE, dtype=bool)
    m[lo:hi, lo:hi, lo:hi] = True
    return m


def test_score_map_pointing_and_energy_against_hand_computed_values() -> None:
    brain = np.ones(SHAPE, dtype=bool)  # 8000 voxels
    lesion = _cube(4, 8)  # 64 voxels: share 0.008
    regions = lesion_regions(lesion, brain, spacing=(1.0, 1.0, 1.0), margin_mm=2.0)
    cam = np.zeros(SHAPE, dtype=np.float32)
    cam[5, 5, 5] = 1.0  # the peak, inside the lesion
    cam[15, 15, 15] = 0.5  # far away
    s = score_map(cam, regions)
    assert s.hit and s.hit_near
    assert s.energy_share == pytest.approx(1.0 / 1.5)
    assert s.lesion_share == pytest.approx(64 / 8000)
    assert s.concentration == pytest.approx((1.0 / 1.5) / (64 / 8000))
    # grown by 2 mm (Euclidean): the 8x8x8 cube minus its 8 corners where distance > 2 mm is not
    # exactly a cube, so compare with a direct count
    near = np.argwhere(regions.near)
    assert regions.near[2, 5, 5] and not regions.near[1, 5, 5] and not regions.near[2, 2, 2]
    assert regions.near_share == pytest.approx(len(near) / 8000)

    cam[15, 15, 15] = 2.0  # now the peak is outside
    s = score_map(cam, regions)
    assert not s.hit and not s.hit_near
    assert s.energy_share == pytest.approx(1.0 / 3.0)


def test_score_map_near_hit_and_empty_map() -> None:
    regions = lesion_regions(_cube(4, 8), np.ones(SHAPE, bool), (2.0, 2.0, 2.0), margin_mm=4.0)
    cam = np.zeros(SHAPE, dtype=np.float32)
    cam[9, 5, 5] = 1.0  # two voxels = 4 mm from the lesion's face at x = 7
    s = score_map(cam, regions)
    assert not s.hit and s.hit_near
    empty = score_map(np.zeros(SHAPE, np.float32), regions)
    assert not empty.hit and empty.energy_share == 0.0 and empty.concentration == 0.0


def test_lesion_share_counts_the_lesion_as_brain_and_rejects_an_empty_mask() -> None:
    brain = _cube(0, 10)  # 1000 voxels
    lesion = _cube(8, 12)  # 64 voxels, 8 of them inside the brain cube
    regions = lesion_regions(lesion, brain, (1.0, 1.0, 1.0))
    assert regions.lesion_share == pytest.approx(64 / (1000 + 56))
    with pytest.raises(ManifestError, match="empty"):
        lesion_regions(np.zeros(SHAPE, bool), brain, (1.0, 1.0, 1.0))


def _write_case(folder, sid: str, lesion: bool, seed: int) -> tuple:
    vol = make_head((24, 28, 20), seed=seed, lesion=lesion)
    affine = np.diag([2.0, 2.0, 2.0, 1.0])
    nib.save(nib.Nifti1Image(vol, affine), folder / f"{sid}.nii.gz")
    mask = (vol > 150).astype(np.uint8)
    return vol, mask, affine


def test_manifest_masks_from_a_column_or_beside_the_volume(tmp_path) -> None:
    _, mask, affine = _write_case(tmp_path, "a", True, 1)
    nib.save(nib.Nifti1Image(mask, affine), tmp_path / "a_lesion.nii.gz")  # synth's layout
    _, mask, affine = _write_case(tmp_path, "b", True, 2)
    (tmp_path / "seg").mkdir()
    nib.save(nib.Nifti1Image(mask, affine), tmp_path / "seg" / "b-seg.nii.gz")
    _write_case(tmp_path, "h", False, 3)
    (tmp_path / "m.csv").write_text(
        "subject_id,path,label,source,mask\n"
        "a,a.nii.gz,hgg,test,\n"
        "b,b.nii.gz,lgg,test,seg/b-seg.nii.gz\n"
        "h,h.nii.gz,healthy,test,\n",
        encoding="utf-8",
    )
    cases, n_healthy = read_lesion_cases(tmp_path / "m.csv")
    assert n_healthy == 1
    assert [(c.subject_id, c.mask.name) for c in cases] == [
        ("a", "a_lesion.nii.gz"),
        ("b", "b-seg.nii.gz"),
    ]


def test_a_lesion_case_without_a_mask_is_named(tmp_path) -> None:
    _write_case(tmp_path, "x", True, 1)
    write_manifest([Case("x", tmp_path / "x.nii.gz", "hgg", "t")], tmp_path / "m.csv")
    with pytest.raises(ManifestError, match=r"hgg case 'x' has no lesion mask.*x_lesion\.nii\.gz"):
        read_lesion_cases(tmp_path / "m.csv")


@pytest.mark.slow
def test_cli_writes_scores_for_every_network_method_and_target(tmp_path, capsys) -> None:
    weights = make_tiny_weights(tmp_path / "w")
    rows = []
    for i, label in enumerate(("hgg", "lgg", "healthy")):
        sid = f"s{i}"
        _, mask, affine = _write_case(tmp_path, sid, label != "healthy", 10 + i)
        if label != "healthy":
            nib.save(nib.Nifti1Image(mask, affine), tmp_path / f"{sid}_lesion.nii.gz")
        rows.append(Case(sid, tmp_path / f"{sid}.nii.gz", label, "test"))
    write_manifest(rows, tmp_path / "manifest.csv")
    out = tmp_path / "explanations.json"
    code = main(
        [
            "explain-eval",
            "--weights",
            str(weights),
            "--manifest",
            str(tmp_path / "manifest.csv"),
            "--methods",
            "gradcam-l4,layercam-l34",
            "--cohort",
            "two tiny heads",
            "--format",
            "json",
            "--out",
            str(out),
            "--quiet",
        ]
    )
    assert code == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc == json.loads(out.read_text(encoding="utf-8"))
    assert doc["cohort"] == "two tiny heads"
    assert doc["n_lesion_cases"] == 2 and doc["n_healthy_skipped"] == 1
    # 2 cases x (3 networks x 2 methods x 2 targets + the focus and the opening)
    assert len(doc["cases"]) == 2 * (12 + 2)
    maps = [r for r in doc["cases"] if r["target_kind"] != "pooled"]
    for row in doc["cases"]:
        assert 0.0 <= row["energy_share"] <= row["energy_share_near"] <= 1.0 + 1e-9
    for row in maps:
        assert row["target"] == (row["label"] if row["target_kind"] == "true" else row["predicted"])
        assert ("seconds" in row) == (row["target_kind"] == "predicted")
    pooled = [r for r in doc["cases"] if r["target_kind"] == "pooled"]
    assert sorted((r["subject_id"], r["method"]) for r in pooled) == [
        (s, m) for s in ("s0", "s1") for m in ("focus", "opening")
    ]
    for row in pooled:  # the opening is one voxel: all its mass is where the viewer opens
        assert row["arch"] == "ensemble" and row["target"] == "lgg+hgg" and row["seconds"] > 0
        if row["method"] == "opening":
            assert row["energy_share"] == float(row["hit"])
    summary = {(r["arch"], r["method"], r["target"], r["label"]): r for r in doc["summary"]}
    assert len(summary) == (3 * 2 * 2 + 2) * 3  # classes hgg, lgg and all
    for (arch, method, kind, label), r in summary.items():
        rows_here = [
            c
            for c in doc["cases"]
            if (c["arch"], c["method"], c["target_kind"]) == (arch, method, kind)
            and label in ("all", c["label"])
        ]
        assert r["n"] == len(rows_here)
        assert r["hits"] == sum(c["hit"] for c in rows_here)
        assert r["seconds"] > 0


def test_cli_error_names_the_manifest(tmp_path, capsys) -> None:
    code = main(["explain-eval", "--manifest", str(tmp_path / "none.csv"), "--quiet"])
    assert code == 2
    assert "none.csv" in capsys.readouterr().err
