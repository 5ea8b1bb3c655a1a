"""The real-brain cohort: lesions inserted into a brain through its registration, written like the
base file, with masks, grouped by base brain and resumable.

The base "brains" are the MNI152 template itself at 2 mm, stored as scaled uint8 like IXI, with an
identity registration seeded in the standard-space cache (no deepbet here; the pipeline itself is
tested in test_standard.py).
"""

from __future__ import annotations

import nibabel as nib
import numpy as np
import pytest

from tumortrace import qc
from tumortrace.cohort import (
    CohortSpec,
    build_cohort,
    choose_lesion_bases,
    insert_lesion,
    tissue_levels,
)
from tumortrace.errors import ConfigError
from tumortrace.files import sha256_file
from tumortrace.folds import make_folds
from tumortrace.io import load_volume
from tumortrace.manifest import read_manifest
from tumortrace.register import Registration
from tumortrace.standard import StandardSpace, load_cached, save_cached
from tumortrace.template import load_template

WM_LEVEL = 1200.0


def _identity_std(brain: np.ndarray, step: int) -> StandardSpace:
    reg = Registration(
        np.eye(4), np.eye(4), ok=True, reason="", metric=0.0, stage="affine", seconds=0
    )
    ml = float(brain.sum()) * step**3 / 1000
    report = qc.merge([qc.check_brain(True, ml)])
    return StandardSpace(brain=brain, brain_ml=ml, registration=reg, qc=report)


def _write_base(path, seed: int, step: int = 2) -> StandardSpace:
    """The template at ``step`` mm as a noisy scaled-uint8 scan (WM about WM_LEVEL); its
    StandardSpace (identity registration)."""
    tpl = load_template()
    t1 = tpl.t1[::step, ::step, ::step] * WM_LEVEL
    rng = np.random.default_rng(seed)
    data = np.clip(t1 + rng.normal(0, 20, t1.shape), 0, None).astype(np.float32)
    img = nib.Nifti1Image(data, tpl.affine @ np.diag([step, step, step, 1.0]))
    img.set_data_dtype(np.uint8)
    nib.save(img, path)
    return _identity_std(tpl.brain[::step, ::step, ::step].copy(), step)


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    path = tmp_path_factory.mktemp("base") / "BASE-0.nii.gz"
    std = _write_base(path, 0)
    volume = load_volume(path)
    return volume, std, tissue_levels(volume, std)


def test_tissue_levels_are_the_subjects_own(base):
    _, _, levels = base
    assert levels.wm == pytest.approx(WM_LEVEL, rel=0.05)
    assert 0.4 * WM_LEVEL < levels.gm < 0.9 * WM_LEVEL
    assert 10 < levels.noise < 40  # the 20-unit noise, give or take uint8 steps and anatomy


@pytest.mark.parametrize("label", ["lgg", "hgg"])
def test_insert_lesion_places_a_lesion_inside_the_brain(base, label):
    volume, std, levels = base
    case = insert_lesion(volume, std, levels, label, seed=4)  # a typical lesion of its grade
    assert not case.meta["lesion"]["atypical"]
    tumour = case.mask == 1
    assert tumour.sum() > 20
    assert std.brain[tumour].all()  # never outside the brain
    inside = case.data[tumour]
    if label == "hgg":  # an enhancing rim brighter than white matter around a dark core
        assert np.percentile(inside, 95) > 1.2 * levels.wm
        assert np.percentile(inside, 5) < 0.6 * levels.wm
    else:  # hypointense, non-enhancing
        assert np.median(inside) < 0.8 * levels.wm
        assert np.percentile(inside, 99) < 1.15 * levels.wm
    # Far from the lesion the scan is untouched.
    far = ~std.brain
    np.testing.assert_array_equal(case.data[far], volume.data[far])
    # Same seed, same lesion; another seed, another one.
    again = insert_lesion(volume, std, levels, label, seed=4)
    np.testing.assert_array_equal(again.data, case.data)
    other = insert_lesion(volume, std, levels, label, seed=6)
    assert not np.array_equal(other.mask, case.mask)


def test_replaced_tissue_keeps_the_subjects_noise(base):
    """A lesion is never told apart by being smoother than the brain around it."""
    volume, std, levels = base
    case = insert_lesion(volume, std, levels, "lgg", seed=3)
    core = case.mask == 1
    both = core[:-1] & core[1:]
    diff = (case.data[1:] - case.data[:-1])[both]
    noise = 1.4826 * np.median(np.abs(diff - np.median(diff))) / np.sqrt(2)
    assert noise > 0.6 * levels.noise


def test_insert_lesion_refuses_a_healthy_label(base):
    volume, std, levels = base
    with pytest.raises(ConfigError, match="lgg"):
        insert_lesion(volume, std, levels, "healthy", seed=1)


def test_lgg_bases_follow_the_seed_paper_share():
    plan = choose_lesion_bases([f"B{i:03d}" for i in range(150)], CohortSpec())
    assert sum("lgg" in v for v in plan.values()) == 43  # 150 * 74 / 260
    assert all(v[0] == "healthy" and v[-1] == "hgg" for v in plan.values())
    shuffled = choose_lesion_bases([f"B{i:03d}" for i in reversed(range(150))], CohortSpec())
    assert shuffled == plan


def test_build_cohort_writes_grouped_cases_like_their_base(tmp_path):
    cache = tmp_path / "cache"
    bases = []
    for i in range(4):
        path = tmp_path / "raw" / f"BASE-{i}.nii.gz"
        path.parent.mkdir(exist_ok=True)
        std = _write_base(path, i, step=4)
        save_cached(cache, sha256_file(path), std)
        bases.append((f"BASE-{i}", path))
    spec = CohortSpec(seed=1, lgg_share=0.5)
    cases = build_cohort(bases, tmp_path / "cohort", cache, spec, progress=False)
    assert [c.label for c in cases].count("healthy") == 4
    assert [c.label for c in cases].count("hgg") == 4
    assert [c.label for c in cases].count("lgg") == 2
    read = read_manifest(tmp_path / "cohort" / "manifest.csv")
    assert {(c.subject_id, c.group_id) for c in read} == {(c.subject_id, c.group_id) for c in cases}
    for c in read:
        assert c.group_id == c.subject_id.split("+")[0]
        if c.label != "healthy":
            img = nib.load(c.path)
            assert img.get_data_dtype() == np.uint8  # the base's dtype, rescaled, not clipped
            assert img.get_fdata().max() > 255
            mask = c.path.with_name(c.path.name.replace(".nii.gz", "_lesion.nii.gz"))
            assert nib.load(mask).get_fdata().max() >= 1
    # A lesion case's cache entry is its base's geometry: training never re-runs the pipeline.
    lesioned = next(c for c in read if c.label == "hgg")
    entry = load_cached(cache, sha256_file(lesioned.path), load_volume(lesioned.path))
    assert entry is not None and entry.registration.ok
    # Resumable: a rerun rewrites nothing.
    stamps = {p: p.stat().st_mtime_ns for p in (tmp_path / "cohort" / "volumes").iterdir()}
    build_cohort(bases, tmp_path / "cohort", cache, spec, progress=False)
    assert stamps == {p: p.stat().st_mtime_ns for p in (tmp_path / "cohort" / "volumes").iterdir()}
    # One brain never sits in two parts of a fold.
    for fold in make_folds(read, k=2, test_fraction=0.5, val_fraction=0.0):
        parts = [fold.train, fold.val, fold.test]
        groups = [{s.split("+")[0] for s in part} for part in parts]
        assert not (groups[0] & groups[2]) and not (groups[1] & groups[2])
