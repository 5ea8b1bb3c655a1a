"""The real-tumour cohort: sources and grades from evidence, carving and healthy-made cases through
each scan's registration, patient components as fold groups, and the whole build on a tiny layout.

The "scans" are the MNI152 template at 4 mm with noise, stored as scaled uint8, with an identity
registration seeded into the standard-space cache (no deepbet; the pipeline is tested in
test_standard.py). A "tumour" is a bright ball with its mask.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from tumortrace import qc
from tumortrace.carve import Placement, carve_tumour, fill_from_mirror, soft_region
from tumortrace.cohort import tissue_levels
from tumortrace.config import GLIOMA
from tumortrace.files import sha256_file
from tumortrace.folds import make_folds
from tumortrace.io import load_volume
from tumortrace.manifest import Case, read_manifest
from tumortrace.register import Registration
from tumortrace.sources import brats_grade, brats_id, discover_real, read_brats_mapping
from tumortrace.standard import StandardSpace, save_cached
from tumortrace.template import load_template
from tumortrace.tumour_cohort import (
    TumourCohortSpec,
    build_tumour_cohort,
    carving_clusters,
    lesion_labels,
    patient_components,
)

STEP = 4
SHARED = Path(__file__).resolve().parents[2] / "shared" / "real-data"


def _std(brain: np.ndarray) -> StandardSpace:
    reg = Registration(
        np.eye(4), np.eye(4), ok=True, reason="", metric=0.0, stage="affine", seconds=0
    )
    ml = float(brain.sum()) * STEP**3 / 1000
    return StandardSpace(
        brain=brain, brain_ml=ml, registration=reg, qc=qc.merge([qc.check_brain(True, ml)])
    )


def _ball(centre_mm, radius_mm: float) -> np.ndarray:
    tpl = load_template()
    affine = tpl.affine @ np.diag([STEP, STEP, STEP, 1.0])
    shape = tpl.t1[::STEP, ::STEP, ::STEP].shape
    idx = np.indices(shape).reshape(3, -1).T
    mm = idx @ affine[:3, :3].T + affine[:3, 3]
    return (np.linalg.norm(mm - np.asarray(centre_mm), axis=1) <= radius_mm).reshape(shape)


def _scan(path: Path, seed: int, wm: float, tumour: np.ndarray | None = None, cache=None):
    """Writes the template as a noisy uint8 scan at ``wm`` (a bright ball where ``tumour``)."""
    tpl = load_template()
    t1 = tpl.t1[::STEP, ::STEP, ::STEP] * wm
    if tumour is not None:
        t1 = np.where(tumour, 1.6 * wm, t1)
    rng = np.random.default_rng(seed)
    data = np.clip(t1 + rng.normal(0, wm / 60, t1.shape), 0, None).astype(np.float32)
    img = nib.Nifti1Image(data, tpl.affine @ np.diag([STEP, STEP, STEP, 1.0]))
    img.set_data_dtype(np.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(img, path)
    std = _std(tpl.brain[::STEP, ::STEP, ::STEP].copy())
    if cache is not None:
        save_cached(cache, sha256_file(path), std)
    return std


def _mask(path: Path, like: Path, mask: np.ndarray) -> None:
    nib.save(nib.Nifti1Image(mask.astype(np.uint8), nib.load(like).affine), path)


LEFT = (-30.0, -10.0, 15.0)  # left hemisphere white matter (MNI mm)


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    """A donor (bright ball in the left hemisphere, WM 100) and a recipient (WM 200)."""
    d = tmp_path_factory.mktemp("pair")
    ball = _ball(LEFT, 14.0)
    dstd = _scan(d / "donor.nii.gz", 1, 100.0, ball)
    rstd = _scan(d / "recipient.nii.gz", 2, 200.0)
    donor, recipient = load_volume(d / "donor.nii.gz"), load_volume(d / "recipient.nii.gz")
    mask = ball.astype(np.uint8)
    return donor, dstd, recipient, rstd, mask


def test_lesion_labels_map_brats_parts_and_binary_masks():
    raw = np.array([0, 1, 2, 4, 3])
    assert lesion_labels(raw, "brats").tolist() == [0, 1, 2, 1, 0]
    assert lesion_labels(np.array([0, 1, 255]), "binary").tolist() == [0, 1, 1]


def test_grades_come_only_from_the_cohort_named_in_the_mapping(tmp_path):
    table = tmp_path / "map.csv"
    table.write_text(
        "BraTS2021,BraTS2020,Cohort Name (if publicly available),Local ID \n"
        "BraTS2021_01476,BraTS20_Training_271,TCGA-LGG,TCGA-CS-4942\n"
        "BraTS2021_00001,N/A,TCGA-GBM,TCGA-02-0001\n"
        "BraTS2021_01163,N/A,ACRIN-FMISO-Brain (ACRIN 6684),ACRIN-FMISO-Brain-004\n"
        "BraTS2021_00000,N/A,Private Collection,N/A\n"
    )
    m = read_brats_mapping(table)
    assert brats_grade("BraTS2021_01476", m) == ("lgg", "TCGA-CS-4942")
    assert brats_grade("BraTS2021_00001", m) == ("hgg", "TCGA-02-0001")
    assert brats_grade("BraTS2021_01163", m)[0] == "hgg"
    assert brats_grade("BraTS2021_00000", m) == (GLIOMA, "BraTS2021_00000")  # no guess
    assert brats_grade("BraTS2021_09999", m) == (GLIOMA, "BraTS2021_09999")  # not in the table
    assert brats_id("BraTS-GLI-00027-000-t1n.nii.gz") == "BraTS2021_00027"


def test_soft_region_is_one_inside_the_margin_and_falls_over_the_edge():
    mask = np.zeros((30, 30, 30), bool)
    mask[15, 15, 15] = True
    w = soft_region(mask, (1.0, 1.0, 1.0), margin_mm=3.0, edge_mm=4.0)
    assert w[15, 15, 15] == 1 and w[15, 15, 18] == 1  # within the margin
    assert 0 < w[15, 15, 20] < 1  # on the edge
    assert w[15, 15, 23] == 0  # past it


def test_carving_moves_the_tumour_with_its_mask_and_rescales_it(pair):
    donor, dstd, recipient, rstd, mask = pair
    dl, rl = tissue_levels(donor, dstd), tissue_levels(recipient, rstd)
    rng = np.random.default_rng(0)
    c = carve_tumour(recipient, rstd, rl, donor, dstd, dl, mask, Placement("own"), 2.0, 4.0, rng)
    assert np.array_equal(c.mask > 0, (mask > 0) & rstd.brain)  # identity registrations
    # The donor's ball is 1.6 x its WM; carved, it is 1.6 x the recipient's WM.
    assert np.median(c.data[c.mask > 0]) == pytest.approx(1.6 * rl.wm, rel=0.08)
    far = soft_region(mask > 0, donor.spacing, 2.0, 4.0) == 0
    assert np.array_equal(c.data[far], recipient.data[far])  # nothing else changes
    m = carve_tumour(recipient, rstd, rl, donor, dstd, dl, mask, Placement("mirrored"), 2, 4, rng)
    x_own = np.argwhere(c.mask)[:, 0].mean() * STEP + recipient.affine[0, 3]
    x_mirror = np.argwhere(m.mask)[:, 0].mean() * STEP + recipient.affine[0, 3]
    assert x_own < -20 and x_mirror == pytest.approx(-x_own, abs=STEP)


def test_healthy_made_fills_the_lesion_from_the_other_hemisphere(pair):
    donor, dstd, _, _, mask = pair
    f = fill_from_mirror(donor, dstd, mask, margin_mm=3.0, edge_mm=4.0)
    assert f is not None
    tpl = load_template().t1[::STEP, ::STEP, ::STEP] * 100.0
    inside = mask > 0
    # The bright ball (1.6 x WM) is gone: the filled voxels look like normal tissue again.
    assert np.median(donor.data[inside]) > 1.4 * 100
    assert np.median(f.data[inside]) == pytest.approx(np.median(tpl[inside]), rel=0.1)
    across = _ball((0.0, -10.0, 15.0), 10.0).astype(np.uint8)  # on the midline
    assert fill_from_mirror(donor, dstd, across, 3.0, 4.0) is None


def test_patient_components_join_every_case_that_shares_a_patient():
    p = Path("x.nii.gz")
    cases = [
        Case("A_t1", p, "lgg", "tcga-lgg", kind="real", patient="A"),
        Case("A_brats", p, "lgg", "brats", kind="real", patient="A"),
        Case("R1", p, "healthy", "ixi", kind="real", patient="R1"),
        Case("R1+carve-A", p, "lgg", "ixi", kind="carved", patient="R1", donor="A"),
        Case("R1+carve-B", p, "lgg", "ixi", kind="carved", patient="R1", donor="B"),
        Case("B_t1", p, "lgg", "tcga-lgg", kind="real", patient="B"),
        Case("C_t1", p, "lgg", "tcga-lgg", kind="real", patient="C"),
    ]
    g = patient_components(cases)
    assert len({g[s] for s in ("A_t1", "A_brats", "R1", "R1+carve-A", "R1+carve-B", "B_t1")}) == 1
    assert g["C_t1"] != g["A_t1"]


def test_carving_clusters_deal_each_donor_and_recipient_once():
    spec = TumourCohortSpec()
    clusters = carving_clusters([f"D{i}" for i in range(9)], [f"R{i}" for i in range(12)], spec)
    donors = [d for cd, _ in clusters for d in cd]
    recips = [r for _, cr in clusters for r in cr]
    assert sorted(donors) == sorted(f"D{i}" for i in range(9))
    assert len(recips) == len(set(recips)) and all(len(cr) == 3 for _, cr in clusters)


def _layout(root: Path, cache: Path) -> None:
    """A tiny real-data folder: 6 IXI brains, 3 TCGA-LGG patients (one also in BraTS format with
    an expert mask, one tumour on the midline), one BraTS glioma of unknown grade."""
    rows = []
    for i in range(6):
        sid = f"IXI{i:03d}-HH-0"
        _scan(root / "ixi" / f"{sid}_T1.nii.gz", 10 + i, 180.0 + 5 * i, cache=cache)
        rows.append({"local_path": f"ixi/{sid}_T1.nii.gz", "label": "healthy", "subject": sid})
    with (root / "manifest.csv").open("w", newline="") as f:
        w = csv.DictWriter(f, ["local_path", "label", "subject"])
        w.writeheader()
        w.writerows(rows)
    lgg = []
    for j, centre in enumerate([LEFT, (28.0, 5.0, 20.0), (0.0, -20.0, 20.0)]):
        pid = f"TCGA-CS-{4940 + j}"
        ball = _ball(centre, 12.0)
        for contrast in ("t1", "t1c"):
            _scan(root / "tcga-lgg" / pid / f"{contrast}.nii.gz", 20 + j, 60.0, ball, cache)
        _mask(root / "tcga-lgg" / pid / "mask.nii.gz", root / "tcga-lgg" / pid / "t1.nii.gz", ball)
        lgg.append(
            {
                "subject": pid,
                "label": "lgg",
                "t1": f"{pid}/t1.nii.gz",
                "t1c": f"{pid}/t1c.nii.gz",
                "mask": f"{pid}/mask.nii.gz",
            }
        )
    with (root / "tcga-lgg" / "manifest.csv").open("w", newline="") as f:
        w = csv.DictWriter(f, ["subject", "label", "t1", "t1c", "mask"])
        w.writeheader()
        w.writerows(lgg)
    brats = root / "tumour" / "glioma_unknown_grade"
    ball = _ball(LEFT, 12.0)
    _scan(brats / "BraTS2021_01476_t1ce.nii.gz", 30, 900.0, ball, cache)
    _scan(brats / "BraTS2021_00006_t1ce.nii.gz", 31, 900.0, ball, cache)
    (root / "tumour" / "seg").mkdir(parents=True)
    seg = np.where(ball, 4, 0)
    _mask(
        root / "tumour" / "seg" / "BraTS2021_01476_seg.nii.gz",
        brats / "BraTS2021_01476_t1ce.nii.gz",
        seg,
    )
    (root / "BraTS21-17_Mapping.csv").write_text(
        "BraTS2021,Cohort Name (if publicly available),Local ID \n"
        "BraTS2021_01476,TCGA-LGG,TCGA-CS-4940\nBraTS2021_00006,Private Collection,N/A\n"
    )


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    root = tmp_path_factory.mktemp("real-data")
    cache = tmp_path_factory.mktemp("cache")
    _layout(root, cache)
    out = tmp_path_factory.mktemp("cohort")
    spec = TumourCohortSpec(carves_per_donor=3, recipients_per_cluster=2)
    logs: list[str] = []
    cases = build_tumour_cohort(root, out, cache, spec, progress=False, log=logs.append)
    return root, cache, out, spec, cases, logs


def test_the_build_writes_every_kind_with_masks_and_a_card(built):
    _, _, out, _, cases, _ = built
    by = {c.subject_id: c for c in cases}
    kinds = {c.kind for c in cases}
    assert kinds == {"real", "carved", "healthy-made", "synthetic"}
    # The BraTS case is the TCGA patient's second format; the unknown grade stays unknown.
    assert by["BraTS2021_01476_t1c"].patient == "TCGA-CS-4940"
    assert by["BraTS2021_00006_t1c"].label == GLIOMA and by["BraTS2021_00006_t1c"].mask is None
    for c in cases:
        if c.kind == "carved":
            assert c.label == "lgg" and c.donor.startswith("TCGA-CS-") and c.source == "ixi"
            assert (load_volume(c.mask).data > 0).any()
        if c.kind == "healthy-made":
            assert c.label == "healthy" and c.mask is None
    # The midline tumour cannot be made healthy; the lateral ones can.
    card = json.loads((out / "cohort.json").read_text())
    assert card["healthy_made_possible"]["TCGA-CS-4942_t1"] is False
    assert card["healthy_made_possible"]["TCGA-CS-4940_t1"] is True
    assert card["healthy_made_possible"]["BraTS2021_01476_t1c"] is True
    assert sum(r["n"] for r in card["counts"]) == len(cases) == card["n"]
    # Every real mask survives the warp into the template (identity registration here).
    assert 0.85 <= card["mask_check"]["ratio_min"] <= card["mask_check"]["ratio_max"] <= 1.15
    assert read_manifest(out / "manifest.csv") == cases


def test_no_patient_is_in_two_parts_of_any_fold(built):
    *_, cases, _ = built
    # The tiny layout has two LGG patient components, so two folds; the glioma of unknown grade
    # is dealt like any other case.
    assert len({c.group for c in cases if c.label == "lgg"}) == 2
    for fold in make_folds(cases, k=2, test_fraction=1 / 2, val_fraction=0.0, seed=1):
        parts = [fold.train, fold.val, fold.test]
        by = {c.subject_id: c for c in cases}
        assert sum(map(len, parts)) == len(cases)
        seen: dict[str, int] = {}
        for i, part in enumerate(parts):
            for sid in part:
                for p in by[sid].patients:
                    assert seen.setdefault(p, i) == i, f"{p} in parts {seen[p]} and {i}"


def test_a_rerun_reuses_what_was_written(built):
    root, cache, out, spec, cases, _ = built
    before = {p: p.stat().st_mtime_ns for p in (out / "volumes").glob("*.nii.gz")}
    again = build_tumour_cohort(root, out, cache, spec, progress=False, log=lambda _m: None)
    assert again == cases
    assert {p: p.stat().st_mtime_ns for p in (out / "volumes").glob("*.nii.gz")} == before


@pytest.mark.skipif(not SHARED.is_dir(), reason="../shared/real-data is not beside the checkout")
def test_the_shared_data_hold_over_100_real_tumour_patients_grouped_across_formats():
    scans = discover_real(SHARED)
    tumour = {s.patient for s in scans if s.label != "healthy" and s.patient != "TCGA-02-0003"}
    assert len(tumour) >= 100
    brats_masked = [s for s in scans if s.source == "brats" and s.mask is not None]
    assert brats_masked and all(s.patient.startswith("TCGA-") for s in brats_masked)
    assert all(s.label == "lgg" for s in brats_masked)  # the mapping's TCGA-LGG cohort
    lgg_patients = {s.patient for s in scans if s.source == "tcga-lgg"}
    assert {"TCGA-CS-4942", "TCGA-CS-4944", "TCGA-CS-5393"} <= lgg_patients & {
        s.patient for s in brats_masked
    }
