"""The bundled samples: one real IXI brain as it is and with its synthetic LGG and HGG lesions,
recorded in samples/samples.json (rule, subject, licence, SHA-256 of every file)."""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from scipy import ndimage

from tumortrace.config import CLASSES
from tumortrace.files import sha256_file

SAMPLES = Path(__file__).resolve().parents[1] / "samples"
RECORD = json.loads((SAMPLES / "samples.json").read_text())


def test_the_record_names_the_rule_subject_and_licence():
    assert RECORD["subject"].startswith("IXI")
    assert "fold 0's test part" in RECORD["rule"] and "before" in RECORD["rule"]
    assert "CC BY-SA 3.0" in RECORD["licence"]
    readme = (SAMPLES / "README.md").read_text()
    assert RECORD["subject"] in readme and "CC BY-SA 3.0" in readme


def test_the_real_tumour_sample_is_the_recorded_file_with_its_licence_and_rule():
    real = RECORD["real_tumour"]
    path = SAMPLES / real["file"]
    assert sha256_file(path) == real["sha256"] and path.stat().st_size < 2_500_000
    assert "CC BY 3.0" in real["licence"] and "before any network" in real["rule"]
    readme = (SAMPLES / "README.md").read_text()
    assert real["subject"] in readme and real["file"] in readme and "CC BY 3.0" in readme
    img = nib.load(path)  # a real 3-D scan in its scanner's own space and dtype
    assert img.ndim == 3 and img.get_data_dtype() == np.int16
    assert np.allclose(img.header.get_zooms(), (0.7812, 0.7812, 6.5), atol=1e-3)


def test_the_real_tumour_patient_is_held_out_of_the_real_tumour_cohort():
    from tumortrace.tumour_cohort import TumourCohortSpec

    assert RECORD["real_tumour"]["subject"] in TumourCohortSpec().held_out


@pytest.mark.parametrize("name", sorted(RECORD["files"]))
def test_every_sample_file_is_the_recorded_one_and_small(name):
    path = SAMPLES / name
    assert sha256_file(path) == RECORD["files"][name]["sha256"]
    assert path.stat().st_size < 1_500_000


@pytest.mark.parametrize("label", ["lgg", "hgg"])
def test_a_lesion_sample_is_the_healthy_brain_plus_its_lesion(label):
    """Same grid and header as the healthy scan; it differs only inside the head (the lesion and
    its mass effect), and the true lesion mask is on that grid."""
    healthy, sick = nib.load(SAMPLES / "healthy.nii.gz"), nib.load(SAMPLES / f"{label}.nii.gz")
    mask = nib.load(SAMPLES / f"{label}_lesion.nii.gz")
    np.testing.assert_array_equal(healthy.affine, sick.affine)
    np.testing.assert_array_equal(mask.affine, sick.affine)
    assert healthy.shape == sick.shape == mask.shape
    assert sick.get_data_dtype() == healthy.get_data_dtype()
    a, b, m = healthy.get_fdata(), sick.get_fdata(), np.asarray(mask.dataobj)
    assert set(np.unique(m)) <= {0, 1, 2} and (m == 1).sum() > 50
    changed = np.abs(a - b) > 0.05 * np.percentile(a, 99)
    assert changed[m == 1].mean() > 0.5  # the tumour changed the scan
    head = ndimage.binary_fill_holes(
        ndimage.binary_closing(a > 0.05 * np.percentile(a, 99), iterations=3)
    )
    assert not changed[~head].any()  # the air around the head did not
    wm = np.median(a[m == 1])
    if label == "hgg":  # an enhancing rim brighter than the brain it replaced
        assert np.percentile(b[m == 1], 95) > 1.15 * wm
    else:  # hypointense
        assert np.median(b[m == 1]) < 0.9 * wm


def test_the_three_samples_are_the_three_classes():
    assert {f.split(".")[0] for f in RECORD["files"] if "_lesion" not in f} == set(CLASSES)
