"""Synthetic phantoms: determinism, lesion anatomy, class-independent globals, cohorts."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from PIL import Image
from scipy import ndimage as ndi

from tumortrace.config import CLASSES
from tumortrace.errors import ConfigError
from tumortrace.head_template import padded_template
from tumortrace.manifest import read_manifest
from tumortrace.phantom_cohort import write_cohort
from tumortrace.synthetic import SIZES, Phantom, make_phantom, subject_seed

ROOT = Path(__file__).resolve().parents[1]


def _typical_seeds(label: str, n: int) -> list[int]:
    """Seeds whose phantom is a typical case stored with a raw (not z-scored) intensity scale."""
    seeds = []
    for seed in range(200):
        ph = make_phantom(label, seed)
        if not ph.meta["atypical"] and not ph.meta["global"]["zscore"]:
            seeds.append(seed)
        if len(seeds) == n:
            return seeds
    raise AssertionError(f"fewer than {n} typical {label} seeds in 200")


def _shell(mask: np.ndarray, inner: int, outer: int) -> np.ndarray:
    """Voxels between ``inner`` and ``outer`` dilations of a mask."""
    return ndi.binary_dilation(mask, iterations=outer) & ~ndi.binary_dilation(
        mask, iterations=inner
    )


@pytest.fixture(scope="module")
def trio() -> dict[str, Phantom]:
    return {c: make_phantom(c, 11) for c in CLASSES}


def test_same_seed_gives_identical_arrays(trio):
    again = make_phantom("hgg", 11)
    assert again.data.tobytes() == trio["hgg"].data.tobytes()
    assert again.lesion.tobytes() == trio["hgg"].lesion.tobytes()
    np.testing.assert_array_equal(again.affine, trio["hgg"].affine)
    assert again.meta == trio["hgg"].meta


def test_different_seeds_differ(trio):
    other = make_phantom("hgg", 12)
    assert other.data.shape == trio["hgg"].data.shape
    assert not np.array_equal(other.data, trio["hgg"].data)
    assert other.meta["lesion"]["centre_mni"] != trio["hgg"].meta["lesion"]["centre_mni"]


def test_phantom_record(trio):
    for label, ph in trio.items():
        assert ph.label == label
        assert ph.data.dtype == np.float32 and ph.data.shape == (64, 76, 64)
        assert ph.lesion.dtype == np.uint8 and ph.lesion.shape == ph.data.shape
        assert ph.affine.shape == (4, 4)
        np.testing.assert_allclose(np.abs(np.diag(ph.affine)[:3]), 2.5)
        assert np.isfinite(ph.data).all()
        json.dumps(ph.meta)  # JSON-ready


def test_healthy_has_no_lesion(trio):
    assert trio["healthy"].lesion.sum() == 0
    assert trio["healthy"].meta["lesion"] is None
    assert trio["healthy"].meta["lesion_volume_ml"] == 0.0


@pytest.mark.parametrize("label", ["lgg", "hgg"])
def test_lesion_is_inside_the_brain(label):
    tpl = padded_template()
    for seed in range(4):
        ph, twin = make_phantom(label, seed), make_phantom("healthy", seed)
        assert ph.lesion.sum() > 0
        assert ph.meta["lesion_volume_ml"] > 0.5
        # The centre lies in template white matter.
        vox = tpl.inv_affine[:3, :3] @ ph.meta["lesion"]["centre_mni"] + tpl.inv_affine[:3, 3]
        at = tuple(np.round(vox).astype(int))
        assert tpl.mask[at] > 0.5 and tpl.wm[at] > 0.5
        # Lesion voxels are head foreground in the healthy twin (same seed, same anatomy).
        corner = np.concatenate([twin.data[:6, :6, :6].ravel(), twin.data[-6:, -6:, -6:].ravel()])
        foreground = twin.data > corner.max() + 1e-3 * np.ptp(twin.data)
        assert foreground[ph.lesion > 0].mean() > 0.95


@pytest.mark.parametrize("label", ["lgg", "hgg"])
def test_lesion_is_irregular_not_a_sphere(label):
    for seed in range(3):
        ph = make_phantom(label, seed)
        mask = ph.lesion > 0
        centre = np.argwhere(mask).mean(0)
        grid = np.indices(mask.shape).transpose(1, 2, 3, 0)
        radius = (3.0 * mask.sum() / (4.0 * np.pi)) ** (1.0 / 3.0)
        sphere = ((grid - centre) ** 2).sum(-1) <= radius**2
        dice = 2.0 * (mask & sphere).sum() / (mask.sum() + sphere.sum())
        assert dice < 0.9, f"{label} seed {seed} is sphere-like (Dice {dice:.2f})"


def test_hgg_rim_enhances_around_a_darker_necrotic_core():
    for seed in _typical_seeds("hgg", 3):
        ph, twin = make_phantom("hgg", seed), make_phantom("healthy", seed)
        rim, core = ph.parts == 2, ph.parts == 3
        assert rim.sum() > 5 and core.sum() > 2
        wm = np.percentile(twin.data[_shell(ph.lesion > 0, 1, 4)], 90)
        assert ph.data[rim].mean() > ph.data[core].mean()
        assert ph.data[rim].mean() > wm


def test_lgg_is_hypointense_to_surrounding_white_matter():
    for seed in _typical_seeds("lgg", 3):
        ph, twin = make_phantom("lgg", seed), make_phantom("healthy", seed)
        assert set(np.unique(ph.parts)) <= {0, 1}  # no enhancing or necrotic part
        wm = np.percentile(twin.data[_shell(ph.lesion > 0, 1, 4)], 90)
        assert ph.data[ph.lesion > 0].mean() < wm


def test_global_properties_depend_on_the_seed_only():
    for seed in range(4):
        phantoms = [make_phantom(c, seed) for c in CLASSES]
        ref = phantoms[0]
        for ph in phantoms[1:]:
            assert ph.meta["global"] == ref.meta["global"]
            assert ph.data.shape == ref.data.shape
            np.testing.assert_array_equal(ph.affine, ref.affine)


def test_global_properties_vary_across_seeds():
    globals_ = [make_phantom("healthy", s).meta["global"] for s in range(12)]
    assert len({g["orientation"] for g in globals_}) >= 2
    assert len({g["skull"] for g in globals_}) == 2
    assert len({round(g["wm_level"]) for g in globals_}) == 12


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"label": "glioma", "seed": 0}, "Unknown phantom label 'glioma'"),
        ({"label": "lgg", "seed": 0, "size": "huge"}, "Unknown phantom size 'huge'"),
        ({"label": "lgg", "seed": -1}, "non-negative int"),
    ],
)
def test_make_phantom_rejects_bad_arguments(kwargs, match):
    with pytest.raises(ConfigError, match=match):
        make_phantom(**kwargs)


@pytest.mark.parametrize(
    ("counts", "size", "match"),
    [
        ({"tumour": 1}, "small", "Unknown phantom label 'tumour'"),
        ({"lgg": -2}, "small", "non-negative int"),
        ({"lgg": 0, "hgg": 0}, "small", "Empty cohort"),
        ({"lgg": 1}, "tiny", "Unknown phantom size 'tiny'"),
    ],
)
def test_write_cohort_rejects_bad_arguments(tmp_path, counts, size, match):
    with pytest.raises(ConfigError, match=match):
        write_cohort(tmp_path, counts, size=size, progress=False)


def test_write_cohort_writes_volumes_masks_manifest_and_montage(tmp_path):
    cases = write_cohort(tmp_path, {"healthy": 1, "lgg": 1, "hgg": 2}, seed=3, progress=False)
    assert [c.subject_id for c in cases] == [
        "syn-healthy-0000",
        "syn-lgg-0000",
        "syn-hgg-0000",
        "syn-hgg-0001",
    ]
    back = read_manifest(tmp_path / "manifest.csv")
    assert [(c.subject_id, c.path, c.label, c.source) for c in back] == [
        (c.subject_id, c.path, c.label, "synthetic") for c in cases
    ]
    with (tmp_path / "manifest.csv").open() as f:
        rows = list(csv.reader(f))
    assert rows[0] == ["subject_id", "path", "label", "source"]
    assert all(not Path(r[1]).is_absolute() for r in rows[1:])

    case = cases[3]
    ph = make_phantom("hgg", subject_seed(3, "hgg", 1))
    img = nib.load(case.path)
    mask = nib.load(tmp_path / "syn-hgg-0001_lesion.nii.gz")
    np.testing.assert_allclose(img.affine, ph.affine, atol=1e-5)
    np.testing.assert_allclose(np.asarray(img.dataobj, dtype=np.float32), ph.data, atol=1e-5)
    assert img.get_data_dtype() == np.dtype(ph.meta["global"]["dtype"])
    assert mask.get_data_dtype() == np.uint8
    np.testing.assert_array_equal(np.asarray(mask.dataobj), ph.lesion)
    meta = json.loads((tmp_path / "syn-hgg-0001.json").read_text())
    assert meta["subject_id"] == "syn-hgg-0001" and meta["lesion_volume_ml"] > 0
    assert np.asarray(nib.load(tmp_path / "syn-healthy-0000_lesion.nii.gz").dataobj).sum() == 0

    with Image.open(tmp_path / "montage.png") as png:
        assert png.format == "PNG" and png.width > 200 and png.height > 3 * 100


def test_subject_seeds_are_distinct_and_stable():
    seeds = {subject_seed(0, c, i) for c in CLASSES for i in range(50)}
    assert len(seeds) == 150
    assert subject_seed(0, "lgg", 3) == subject_seed(0, "lgg", 3) != subject_seed(1, "lgg", 3)


def test_sizes_are_the_spec_presets():
    assert SIZES == ("brats", "ixi", "small")


def test_cli_synth_exits_zero(tmp_path):
    out = tmp_path / "cohort"
    cmd = [sys.executable, "-m", "tumortrace", "synth", "--out", str(out)]
    cmd += ["--n-per-class", "2", "--size", "small", "--quiet"]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert len(read_manifest(out / "manifest.csv")) == 6
    assert (out / "montage.png").is_file()
