"""The standard-space pipeline: template, registration, input checks, model input, cache.

Fast tests use the template itself (no brain extraction); the ``slow`` ones run deepbet and the
registration end to end on the two real scans shipped in tests/data and on crafted phantoms (thick
slices, brain cut by the field of view, T2-like contrast, noise, a tiny volume).
"""

from __future__ import annotations

import numpy as np
import pytest
from conftest import rotation

from tumortrace import qc
from tumortrace.brain import extract_brain, model_files
from tumortrace.config import PreprocessConfig
from tumortrace.errors import InvalidVolumeError
from tumortrace.io import load_volume, volume_from_array
from tumortrace.preprocess import foreground_mask, model_to_volume
from tumortrace.register import Registration, register_to_template
from tumortrace.standard import (
    StandardSpace,
    load_cached,
    model_input,
    pipeline_key,
    prepare,
    save_cached,
    standardise,
)
from tumortrace.synthetic import make_phantom
from tumortrace.template import BOX_CENTRE_MNI, box_affine, load_template

MNI_CONFIG = PreprocessConfig(spacing_mm=(4.0, 4.0, 4.0), shape_dhw=(40, 48, 40), space="mni")


def _template_2mm():
    tpl = load_template()
    return tpl.t1[::2, ::2, ::2], tpl.brain[::2, ::2, ::2], tpl.affine @ np.diag([2, 2, 2, 1.0])


def _moved(affine: np.ndarray) -> np.ndarray:
    """A known template -> scan map: 8 degrees about z, 5 % larger, shifted (6, -4, 9) mm."""
    m = np.eye(4)
    m[:3, :3] = rotation(2, 8.0) * 1.05
    m[:3, 3] = (6.0, -4.0, 9.0)
    return m @ affine


# ----------------------------------------------------------------------------- fast


def test_template_box_is_centred_on_the_brain():
    a = box_affine((40, 48, 40), (4.0, 4.0, 4.0))
    centre = a @ np.array([19.5, 23.5, 19.5, 1.0])
    np.testing.assert_allclose(centre[:3], BOX_CENTRE_MNI)
    tpl = load_template()
    assert tpl.brain.sum() / 1000 == pytest.approx(1883, abs=5)  # ml, CSF included


def test_deepbet_models_found_by_path_not_by_import():
    """deepbet's wheel ships a top-level data/ folder; the project finds it by file path."""
    model, bbox = model_files()
    assert model.is_file() and bbox.is_file()
    assert model.parent.parent.name == "data"


def test_registration_recovers_a_known_affine():
    """The template placed in the world by a known affine is registered back to it (RAS/LPS)."""
    t1, brain, affine = _template_2mm()
    known = _moved(np.eye(4))
    reg = register_to_template(t1, brain, known @ affine)
    assert reg.ok, reg.reason
    # Points of the brain land within 2 mm (one template voxel) of where the known map sends them.
    pts = np.argwhere(brain)[::97].astype(float)
    world = pts @ affine[:3, :3].T + affine[:3, 3]
    got = world @ reg.template_to_native[:3, :3].T + reg.template_to_native[:3, 3]
    want = world @ known[:3, :3].T + known[:3, 3]
    assert np.percentile(np.linalg.norm(got - want, axis=1), 95) < 2.0
    np.testing.assert_allclose(
        reg.native_to_template @ reg.template_to_native, np.eye(4), atol=1e-9
    )


def test_registration_of_no_brain_fails_without_raising():
    reg = register_to_template(np.zeros((20, 20, 20)), np.zeros((20, 20, 20), bool), np.eye(4))
    assert not reg.ok and "too little brain" in reg.reason


def _std_by_hand(volume, brain_native, t2n) -> StandardSpace:
    reg = Registration(t2n, np.linalg.inv(t2n), True, "", -0.7, "affine", 0.0)
    from tumortrace.brain import BrainMask
    from tumortrace.standard import measure

    bet = BrainMask(brain_native, float(brain_native.sum()) * 8 / 1000, True, "", 0.0)
    return StandardSpace(brain_native, bet.volume_ml, reg, measure(volume, bet, reg))


def test_model_input_geometry_round_trip():
    """A one-hot model voxel goes back to the scan voxel the registration says it is."""
    t1, brain, affine = _template_2mm()
    known = _moved(np.eye(4))
    volume = volume_from_array(t1, known @ affine, source="moved-template")
    std = _std_by_hand(volume, brain, known)
    prep = model_input(volume, std, MNI_CONFIG)
    assert prep.tensor.shape == (1, *MNI_CONFIG.shape_dhw)
    assert prep.brain is not None and prep.brain.shape == MNI_CONFIG.shape_dhw
    # Outside the brain: the constant fill; inside: z-scored.
    x = prep.tensor[0].numpy()
    assert np.all(x[~prep.brain] == MNI_CONFIG.fill)
    assert abs(float(x[prep.brain].mean())) < 0.05 and float(x[prep.brain].std()) == pytest.approx(
        1, abs=0.05
    )
    # A marker at MNI (30, -20, 10) mm.
    box = box_affine(MNI_CONFIG.shape_dhw, MNI_CONFIG.spacing_mm)
    vox_xyz = np.rint(np.linalg.inv(box) @ np.array([30.0, -20.0, 10.0, 1.0]))[:3].astype(int)
    onehot = np.zeros(MNI_CONFIG.shape_dhw, np.float32)
    onehot[vox_xyz[2], vox_xyz[1], vox_xyz[0]] = 1.0
    back = model_to_volume(onehot, prep.grid)
    mni = box @ np.array([*vox_xyz, 1.0])
    native_world = known @ mni
    expect = np.linalg.inv(volume.affine) @ native_world
    peak = np.array(np.unravel_index(np.argmax(back), back.shape))
    assert np.linalg.norm(peak - expect[:3]) <= 2.0  # within one model voxel (4 mm = 2 voxels)


def test_model_input_refuses_a_failed_standardisation():
    t1, brain, affine = _template_2mm()
    volume = volume_from_array(t1, affine, source="x.nii.gz")
    bad = Registration(np.eye(4), np.eye(4), False, "did not converge", 0.0, "none", 0.0)
    std = StandardSpace(brain, 1.0, bad, qc.QCReport(()))
    with pytest.raises(InvalidVolumeError, match=r"x\.nii\.gz: cannot build the network input"):
        model_input(volume, std, MNI_CONFIG)


def test_legacy_cards_are_read_as_native_and_use_the_old_pipeline(tiny_nifti):
    cfg = PreprocessConfig.from_dict({"spacing_mm": [5, 5, 5], "shape_dhw": [8, 8, 8]})
    assert cfg.space == "native"
    assert PreprocessConfig().space == "mni"
    prep = prepare(load_volume(tiny_nifti), cfg)  # no deepbet, no registration
    assert prep.tensor.shape == (1, 8, 8, 8) and prep.brain is None


# Checks on crafted measurements: each gives its message.


def test_check_slices():
    assert qc.check_slices((0.78, 0.78, 6.5)).severity == "warning"
    assert "Thick slices (6.5 mm)" in qc.check_slices((0.78, 0.78, 6.5)).message
    assert qc.check_slices((1.0, 1.0, 1.0)).severity == "ok"


def test_check_coverage():
    c = qc.check_coverage(0.8)
    assert c.severity == "warning" and "Part of the brain is outside the scan" in c.message
    assert qc.check_coverage(1.0).severity == "ok"


def test_contrast_of_the_template_and_of_its_inverse():
    tpl = load_template()
    t1 = tpl.t1[::2, ::2, ::2]
    wm, gm = tpl.wm[::2, ::2, ::2], tpl.gm[::2, ::2, ::2]
    assert qc.check_contrast(qc.wm_gm_ratio(t1, wm, gm)).severity == "ok"
    inverted = np.where(t1 > 0, t1.max() - t1, 0)
    c = qc.check_contrast(qc.wm_gm_ratio(inverted, wm, gm))
    assert c.severity == "warning" and "does not look like a T1 scan" in c.message


def test_skull_ratio_stripped_vs_head():
    t1, brain, _ = _template_2mm()
    assert qc.skull_ratio(t1, brain, 0.008) < qc.QC_THRESHOLDS["skull_ratio"]
    assert "Already skull-stripped" in qc.check_skull(qc.skull_ratio(t1, brain, 0.008)).message
    from scipy import ndimage

    shell = ndimage.binary_dilation(brain, iterations=6) & ~ndimage.binary_dilation(
        brain, iterations=3
    )
    head = np.where(shell, 0.8, t1)
    assert "Skull present" in qc.check_skull(qc.skull_ratio(head, brain, 0.008)).message


def test_check_brain_and_report_status():
    none = qc.check_brain(False, 0.0, "no brain found")
    assert none.severity == "unreliable" and "No brain was found" in none.message
    small = qc.check_brain(True, 500.0)
    assert small.severity == "warning" and "outside the usual adult range" in small.message
    report = qc.QCReport((qc.check_slices((1, 1, 5)), qc.check_brain(True, 1400.0)))
    assert report.status == "warning" and report.reliable
    assert qc.QCReport((none,)).status == "unreliable" and not qc.QCReport((none,)).reliable


def test_tissue_and_structure_checks():
    assert qc.check_tissue(-0.5).severity == "warning"
    assert qc.check_tissue(0.05).severity == "ok"  # a big tumour distorts the pattern: no alarm
    assert qc.check_structure(0.02).severity == "unreliable"
    assert "looks like noise" in qc.check_structure(0.02).message
    assert qc.check_structure(0.85).severity == "ok"
    rng = np.random.default_rng(0)
    t1, brain, _ = _template_2mm()
    noise = rng.random(t1.shape)
    assert qc.neighbour_correlation(noise, brain, (2.0, 2.0, 2.0)) < 0.1
    assert qc.neighbour_correlation(t1, brain, (2.0, 2.0, 2.0)) > 0.5


# ----------------------------------------------------------------------------- slow: deepbet


@pytest.fixture(scope="module")
def phantom():
    return make_phantom("hgg", seed=5, size="small")


def _std(name: str, data: np.ndarray, affine: np.ndarray) -> StandardSpace:
    return standardise(volume_from_array(data.astype(np.float32), affine, source=name))


@pytest.mark.slow
def test_real_whole_head_scan_from_the_repository(real_samples_dir, tmp_path):
    """deepbet + registration on the shipped IXI scan (skull on, 2 mm), and the cache."""
    path = real_samples_dir / "IXI012-HH-1211_T1_2mm_uint8.nii.gz"
    volume = load_volume(path)
    std = standardise(volume)
    assert std.qc.status == "ok", std.qc.warnings
    assert tuple(c.name for c in std.qc.checks) == qc.CHECK_NAMES
    assert "Skull present" in std.qc.get("skull").message
    assert std.qc.get("registration").value >= 0.85
    assert 1200 < std.brain_ml < 2000
    save_cached(tmp_path, "ab" * 32, std)
    again = load_cached(tmp_path, "ab" * 32, volume)
    assert again is not None and np.array_equal(again.brain, std.brain)
    np.testing.assert_allclose(
        again.registration.template_to_native, std.registration.template_to_native
    )
    assert [c.severity for c in again.qc.checks] == [c.severity for c in std.qc.checks]
    stored = load_cached(tmp_path, "ab" * 32, volume, checks=False)  # training: not re-measured
    assert stored is not None and stored.qc.to_dict() == std.qc.to_dict()
    assert any(p.name.endswith(pipeline_key()) for p in tmp_path.iterdir())
    prep = model_input(volume, std, MNI_CONFIG)
    assert prep.tensor.shape == (1, 40, 48, 40) and prep.brain.sum() > 10_000


@pytest.mark.slow
def test_real_stripped_scan_is_reported_as_stripped(real_samples_dir):
    std = standardise(load_volume(real_samples_dir / "BraTS-GLI-00001-000-t1c.nii.gz"))
    assert "Already skull-stripped" in std.qc.get("skull").message
    assert std.qc.get("registration").value >= 0.85
    assert std.qc.reliable


@pytest.mark.slow
def test_thick_slices(phantom):
    a = phantom.affine.copy()
    a[:, 2] *= 2
    std = _std("thick", phantom.data[:, :, ::2], a)
    assert "Thick slices (5.0 mm)" in std.qc.get("slices").message


@pytest.mark.slow
def test_brain_cut_by_the_field_of_view(phantom):
    keep = int(phantom.data.shape[2] * 0.7)
    std = _std("cut", phantom.data[:, :, :keep], phantom.affine)
    assert std.qc.get("coverage").severity == "warning"
    assert "Part of the brain is outside the scan" in std.qc.get("coverage").message


@pytest.mark.slow
def test_t2_like_contrast(phantom):
    head = foreground_mask(phantom.data)
    hi = np.percentile(phantom.data[head], 99.5)
    inverted = np.where(head, np.clip(hi - phantom.data, 0, None), 0)
    std = _std("inverted", inverted, phantom.affine)
    assert "does not look like a T1 scan" in std.qc.get("contrast").message
    assert std.qc.get("tissue").severity == "warning"  # anti-correlated with the template


@pytest.mark.slow
def test_noise_is_no_brain():
    rng = np.random.default_rng(0)
    std = _std("noise", rng.random((64, 64, 64)) * 100, np.diag([2.5, 2.5, 2.5, 1.0]))
    assert std.qc.status == "unreliable"
    assert "looks like noise" in std.qc.get("structure").message


@pytest.mark.slow
def test_tiny_volume_does_not_crash():
    rng = np.random.default_rng(1)
    std = _std("tiny", rng.random((8, 8, 8)), np.eye(4))
    assert std.qc.status == "unreliable"
    assert "No brain was found" in std.qc.get("brain").message
    bet = extract_brain(np.zeros((8, 8, 8)), (1.0, 1.0, 1.0))
    assert not bet.found and bet.reason


def test_a_field_of_view_too_small_for_a_brain_is_not_extracted():
    """512^3 at 0.05 mm (25.6 mm across): no extraction is attempted, no time, no memory."""
    rng = np.random.default_rng(2)
    bet = extract_brain(rng.random((64, 64, 64)).astype(np.float32), (0.05, 0.05, 0.05))
    assert not bet.found and "covers only 3x3x3 mm" in bet.reason
    assert bet.seconds == 0.0


# ----------------------------------------------------------------------------- cards


def _mni_card(arch: str, pipeline: dict):
    from tumortrace.checkpoint import ModelCard

    pre = PreprocessConfig(spacing_mm=(8.0, 8.0, 8.0), shape_dhw=(20, 24, 20), space="mni")
    return ModelCard(arch=arch, preprocess=pre, pipeline=pipeline)


def test_cards_of_another_pipeline_version_are_refused():
    from tumortrace.errors import CheckpointError
    from tumortrace.infer import Predictor
    from tumortrace.models import create_model
    from tumortrace.standard import pipeline_description

    old = {**pipeline_description(), "version": 0}
    with pytest.raises(CheckpointError, match="standard-space pipeline version 0"):
        Predictor({"r3d": create_model("r3d")}, {"r3d": _mni_card("r3d", old)})


@pytest.mark.slow
def test_standard_space_weights_end_to_end(real_samples_dir):
    """A standard-space card: analyze() extracts, registers, and maps Grad-CAM back to the file."""
    import torch

    from tumortrace.infer import Predictor
    from tumortrace.models import create_model
    from tumortrace.standard import pipeline_description

    torch.manual_seed(0)
    card = _mni_card("r3d", pipeline_description())
    predictor = Predictor({"r3d": create_model("r3d").eval()}, {"r3d": card})
    volume = load_volume(real_samples_dir / "IXI012-HH-1211_T1_2mm_uint8.nii.gz")
    analysis = predictor.analyze(volume)
    assert analysis.standard is not None and analysis.reliable
    expl = analysis.explanations["r3d"]
    assert expl.cam_model.shape == (20, 24, 20)
    assert expl.cam_volume.shape == volume.data.shape and expl.cam_volume.max() > 0
    # The model's box, mapped back through the registration, covers the scan's whole brain.
    box = model_to_volume(np.ones(expl.cam_model.shape, np.float32), expl.grid) > 0.5
    assert box[analysis.standard.brain].mean() > 0.99
