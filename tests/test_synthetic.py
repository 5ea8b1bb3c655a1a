"""Synthetic phantoms: determinism, class-blind global properties, lesion anatomy, cohort files."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
from PIL import Image
from scipy import ndimage

from tumortrace.errors import ConfigError
from tumortrace.manifest import read_manifest
from tumortrace.synthetic import PRESETS, _template, make_phantom, write_cohort


@pytest.fixture(scope="module")
def phantoms():
    return {c: make_phantom(c, 7, "small") for c in ("healthy", "lgg", "hgg")}


def test_deterministic_for_a_seed():
    a, b = make_phantom("hgg", 3, "small"), make_phantom("hgg", 3, "small")
    assert np.array_equal(a.data, b.data) and np.array_equal(a.lesion, b.lesion)
    assert np.array_equal(a.affine, b.affine)
    c = make_phantom("hgg", 4, "small")
    assert not np.array_equal(a.data, c.data)


def test_global_properties_do_not_depend_on_the_label(phantoms):
    """Grid, orientation, skull, dtype and intensity scaling come from a label-blind stream."""
    metas = [p.meta for p in phantoms.values()]
    for key in ("orientation", "skull", "dtype"):
        assert len({m[key] for m in metas}) == 1, key
    assert all(np.array_equal(p.affine, phantoms["healthy"].affine) for p in phantoms.values())
    # Far from the lesion (and most of its mass effect) the images match across classes.
    far = ndimage.distance_transform_edt(
        (phantoms["hgg"].lesion == 0) & (phantoms["lgg"].lesion == 0)
    )
    ref = phantoms["healthy"].data
    sel = (far > 20) & (ref > np.percentile(ref, 60))  # tissue at least 50 mm from any lesion
    assert sel.sum() > 1000
    for cls in ("lgg", "hgg"):
        rel = np.abs(phantoms[cls].data[sel] - ref[sel]) / ref[sel]
        assert np.median(rel) < 0.02, cls


def test_shapes_and_storage_orders():
    seen = set()
    for seed in range(12):
        p = make_phantom("healthy", seed, "small")
        codes = p.meta["orientation"]
        seen.add(codes)
        assert sorted(p.data.shape) == sorted(PRESETS["small"].shape)
        assert np.isfinite(p.data).all() and p.data.min() >= 0
    assert len(seen) >= 2, seen


def test_healthy_has_no_lesion_and_lesions_sit_in_the_brain(phantoms):
    assert phantoms["healthy"].lesion.sum() == 0
    for cls in ("lgg", "hgg"):
        les = phantoms[cls].lesion > 0
        assert les.sum() > 20
        # The lesion lies where the image shows tissue, not in the background.
        bg = np.percentile(phantoms[cls].data, 5)
        assert np.median(phantoms[cls].data[les]) > bg * 2 + 1


def _sphericity(mask: np.ndarray) -> float:
    """Volume-equivalent sphere surface over the mask's surface (1.0 for a perfect sphere)."""
    surface = (mask & ~ndimage.binary_erosion(mask)).sum()
    r = (3 * mask.sum() / (4 * np.pi)) ** (1 / 3)
    return 4 * np.pi * r**2 / surface


@pytest.mark.parametrize("label", ["lgg", "hgg"])
def test_lesions_are_irregular(label):
    mask = make_phantom(label, 12, "brats").lesion > 0
    sphere = np.zeros((100, 100, 100), bool)
    g = np.indices(sphere.shape) - 50
    sphere[(g**2).sum(0) < (3 * mask.sum() / (4 * np.pi)) ** (2 / 3)] = True
    assert _sphericity(mask) < 0.85 * _sphericity(sphere)


def test_hgg_ring_enhances_around_a_darker_core():
    for seed in range(20):
        p = make_phantom("hgg", seed, "brats")
        if not p.meta["atypical"] and p.meta["radius_mm"] > 14:
            break
    tumour = p.lesion == 1
    dist = ndimage.distance_transform_edt(tumour)
    rim = tumour & (dist <= 2)
    core = dist >= max(4.0, dist.max() - 3)
    normal = ndimage.binary_dilation(p.lesion > 0, iterations=25) & ~ndimage.binary_dilation(
        p.lesion > 0, iterations=15
    )
    brain_normal = p.data[normal][p.data[normal] > np.percentile(p.data[normal], 50)]
    assert p.data[rim].mean() > 1.2 * p.data[core].mean()
    assert p.data[rim].mean() > np.median(brain_normal)


def test_lgg_is_hypointense():
    p = make_phantom("lgg", 5, "brats")
    inner = ndimage.binary_erosion(p.lesion == 1, iterations=3)
    shell = ndimage.binary_dilation(p.lesion > 0, iterations=12) & ~ndimage.binary_dilation(
        p.lesion > 0, iterations=6
    )
    around = p.data[shell]
    assert p.data[inner].mean() < np.percentile(around, 75)


def test_template_ships_offline():
    t = _template()
    assert t.brain.sum() > 1e6 and len(t.seeds) > 100


def test_write_cohort_files(tmp_path):
    cases = write_cohort(tmp_path, {"healthy": 1, "lgg": 1, "hgg": 2}, seed=1, progress=False)
    assert [c.label for c in cases] == ["healthy", "lgg", "hgg", "hgg"]
    back = read_manifest(tmp_path / "manifest.csv")
    assert [c.subject_id for c in back] == [c.subject_id for c in cases]
    assert all((tmp_path / f"{c.subject_id}_lesion.nii.gz").is_file() for c in cases)
    with Image.open(tmp_path / "montage.png") as im:
        assert im.height > 100 and im.width > 100
    assert (tmp_path / "phantoms.json").is_file()


def test_bad_arguments(tmp_path):
    with pytest.raises(ConfigError, match="Unknown label 'tumour'"):
        make_phantom("tumour", 0)
    with pytest.raises(ConfigError, match="Unknown size preset 'huge'"):
        make_phantom("hgg", 0, "huge")
    with pytest.raises(ConfigError, match="at least one case"):
        write_cohort(tmp_path, {"hgg": 0})


def test_cli_synth(tmp_path):
    out = tmp_path / "s"
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "tumortrace",
            "synth",
            "--out",
            str(out),
            "--n-per-class",
            "1",
            "--size",
            "small",
            "--quiet",
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert r.returncode == 0, r.stderr
    assert len(read_manifest(out / "manifest.csv")) == 3
    assert (out / "montage.png").is_file()
