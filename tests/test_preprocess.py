"""tumortrace.preprocess: axes, brain-centred crop, intensity invariance, real scans."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch
from conftest import rotation
from scipy import ndimage

from tumortrace.config import PreprocessConfig
from tumortrace.errors import InvalidVolumeError
from tumortrace.io import load_volume, volume_from_array
from tumortrace.preprocess import (
    GridMap,
    foreground_mask,
    from_model_axes,
    model_to_volume,
    preprocess,
    to_model_axes,
)

SMALL = PreprocessConfig(spacing_mm=(4.0, 3.0, 3.0), shape_dhw=(16, 24, 24), space="native")
NO_CLIP = replace(SMALL, percentiles=(0.0, 100.0))  # keeps the marker a single peak
STORED_SHAPE = (40, 48, 40)
RADII_MM = np.array([26.0, 30.0, 24.0])  # head half-axes along x, y, z (RAS)
MARKER_OFFSET_MM = np.array([12.0, -15.0, 10.0])  # marker relative to the head centre (RAS)


def _stored_affine(kind: str) -> np.ndarray:
    linear = {
        "ras": np.diag([2.0, 2.0, 2.0]),
        "lps": np.diag([-2.0, -2.0, 2.0]),
        "las": np.diag([-2.0, 2.0, 2.0]),
        "oblique": rotation(2, 15) @ rotation(0, 10) @ np.diag([2.0, 2.0, 2.0]),
    }[kind]
    a = np.eye(4)
    a[:3, :3] = linear
    a[:3, 3] = [7.0, -11.0, 5.0] - linear @ (np.array(STORED_SHAPE) - 1) / 2  # head at (7,-11,5)
    return a


def _scene(affine: np.ndarray, shape=STORED_SHAPE, seed: int = 0):
    """A head on a noisy non-zero background, identical in world space whatever the storage.

    Returns:
        (data (X, Y, Z) float32 as stored, head centre (3,) mm, marker voxel (3,) int as stored).
    """
    rng = np.random.default_rng(seed)
    ijk = np.stack(np.meshgrid(*[np.arange(n) for n in shape], indexing="ij"), -1)
    world = ijk @ affine[:3, :3].T + affine[:3, 3]
    centre = affine[:3, :3] @ ((np.array(shape) - 1) / 2) + affine[:3, 3]
    r = np.sqrt((((world - centre) / RADII_MM) ** 2).sum(-1))
    data = np.where(r < 1.0, 100.0 + 10 * np.cos(world[..., 0] / 3), 10.0)
    data += rng.normal(0, 2, shape)
    marker = np.rint(np.linalg.solve(affine[:3, :3], centre + MARKER_OFFSET_MM - affine[:3, 3]))
    marker = marker.astype(int)
    data[tuple(slice(m - 1, m + 2) for m in marker)] = 400.0
    return data.astype(np.float32), centre, marker


# ------------------------------------------------------------------------------------------------
# axis convention


def test_to_and_from_model_axes():
    a = np.arange(2 * 3 * 4).reshape(2, 3, 4)
    b = to_model_axes(a)
    assert b.shape == (4, 3, 2)
    assert b[3, 1, 0] == a[0, 1, 3]
    np.testing.assert_array_equal(from_model_axes(b), a)
    t = torch.arange(5 * 2 * 3 * 4).reshape(5, 2, 3, 4)
    assert to_model_axes(t).shape == (5, 4, 3, 2)
    assert torch.equal(from_model_axes(to_model_axes(t)), t)


@pytest.mark.parametrize("kind", ["ras", "lps", "las", "oblique"])
def test_marker_lands_at_expected_model_index_and_maps_back(kind):
    """A bright marker at a known RAS position: expected (d, h, w), then back to its voxel."""
    affine = _stored_affine(kind)
    data, centre, marker = _scene(affine)
    vol = volume_from_array(data, affine, kind)
    out = preprocess(vol, NO_CLIP)
    assert out.tensor.shape == (1, *SMALL.shape_dhw)
    assert out.tensor.dtype == torch.float32

    # Expected index from geometry alone: the crop is centred on the (symmetric) head, and the
    # model axes follow the stored grid's closest-RAS axes (for "oblique", rotated by R).
    marker_world = affine[:3, :3] @ marker + affine[:3, 3]
    direction = affine[:3, :3] / np.linalg.norm(affine[:3, :3], axis=0)
    direction = direction @ np.diag(np.sign(np.diag(direction)))  # closest-canonical flips
    offset_xyz = direction.T @ (marker_world - centre) / np.array(SMALL.spacing_mm[::-1])
    expected_dhw = (np.array(SMALL.shape_dhw) - 1) / 2 + offset_xyz[::-1]
    t = out.tensor[0].numpy()
    peak_dhw = np.array(np.unravel_index(int(t.argmax()), t.shape))
    # crop centre rounding (<= 0.5) + peak quantisation (<= 0.5): within one model voxel
    assert np.all(np.abs(peak_dhw - expected_dhw) <= 1.0), (peak_dhw, expected_dhw)
    assert t[tuple(peak_dhw)] > 3.0  # the marker, not a bright bit of head
    # ... and the grid puts the marker's world position at that voxel
    np.testing.assert_allclose(out.grid.world_to_model(marker_world), peak_dhw, atol=0.5 + 1e-6)

    # Back onto the canonical grid, then onto the stored grid: the peak is the marker voxel.
    back = model_to_volume(out.tensor[0].numpy(), out.grid)
    assert back.shape == vol.data.shape
    stored = vol.to_original(back)
    peak = np.array(np.unravel_index(int(stored.argmax()), stored.shape))
    assert np.all(np.abs(peak - marker) <= 1), (peak, marker)


def test_model_to_volume_matches_general_resampling_and_is_zero_outside():
    rng = np.random.default_rng(0)
    m = rng.random((10, 12, 14)).astype(np.float32)
    model_affine = np.eye(4)
    model_affine[:3, :3] = np.array([[0, 0, 2.0], [0, -3.0, 0], [2.5, 0, 0]])  # (d,h,w)->RAS
    model_affine[:3, 3] = [-10, 20, -8]
    for rot in (np.eye(3), rotation(1, 20)):  # axis-aligned (separable path) and oblique
        vol_affine = np.eye(4)
        vol_affine[:3, :3] = rot @ np.diag([1.5, 1.2, 2.0])
        vol_affine[:3, 3] = [-25, -10, -20]
        grid = GridMap(model_affine, vol_affine, (30, 40, 25))
        got = model_to_volume(m, grid)
        ref = ndimage.affine_transform(
            m, np.linalg.inv(model_affine) @ vol_affine, output_shape=(30, 40, 25), order=1
        )
        np.testing.assert_allclose(got, ref, atol=1e-5)
        assert got.dtype == np.float32
        assert (got == 0).any() and (got > 0).any()  # part of the volume is outside the FOV
    with pytest.raises(ValueError, match=r"\(D, H, W\)"):
        model_to_volume(m[0], grid)


# ------------------------------------------------------------------------------------------------
# robustness: background, intensity scaling, thick slices, skull


def test_foreground_mask_ignores_background_level_and_sign():
    affine = _stored_affine("ras")
    data, _, _ = _scene(affine)
    truth = data > 55
    mask = foreground_mask(data)
    dice = 2 * (mask & truth).sum() / (mask.sum() + truth.sum())
    assert dice > 0.95
    zscored = (data - data.mean()) / data.std()
    assert np.all(zscored[~truth] < 0)  # a negative background
    np.testing.assert_array_equal(foreground_mask(zscored), mask)
    rescaled = foreground_mask(data * 0.5 + 300)  # float32 rounding may flip a boundary voxel
    assert (rescaled != mask).mean() < 1e-3


def test_foreground_mask_with_skull_is_one_filled_head():
    data, _, _ = _scene(_stored_affine("ras"))
    ijk = np.stack(np.meshgrid(*[np.arange(n) for n in STORED_SHAPE], indexing="ij"), -1)
    r = np.sqrt((((ijk - (np.array(STORED_SHAPE) - 1) / 2) * 2 / (RADII_MM + 6)) ** 2).sum(-1))
    data[(r >= 0.92) & (r < 1.0)] = 250.0  # bright scalp
    data[(r >= 0.85) & (r < 0.92) & (data < 200)] = 12.0  # dark skull between scalp and brain
    mask = foreground_mask(data)
    assert mask[tuple((np.array(STORED_SHAPE) - 1) // 2)]  # brain inside the hollow shell kept
    assert mask[(r < 1.0)].mean() > 0.98 and mask[r > 1.1].mean() < 0.02


def test_zscored_copy_gives_same_crop_and_tensor():
    affine = _stored_affine("lps")
    data, _, _ = _scene(affine)
    vol = volume_from_array(data, affine)
    before = vol.data.copy()
    a = preprocess(vol, SMALL)
    np.testing.assert_array_equal(vol.data, before)  # volumes are shared (app cache): never mutated
    b = preprocess(volume_from_array((data - data.mean()) / data.std(), affine), SMALL)
    np.testing.assert_allclose(a.grid.model_affine, b.grid.model_affine)
    np.testing.assert_allclose(a.tensor, b.tensor, atol=1e-3)


def test_thick_slices_and_percentile_mode():
    affine = np.diag([2.0, 2.0, 6.0, 1.0])
    data, _, _ = _scene(affine, shape=(40, 48, 12))
    cfg = PreprocessConfig(
        spacing_mm=(4.0, 3.0, 3.0), shape_dhw=(16, 24, 24), intensity="percentile"
    )
    out = preprocess(volume_from_array(data, affine), cfg)
    t = out.tensor
    assert t.shape == (1, 16, 24, 24) and torch.isfinite(t).all()
    assert float(t.min()) >= 0.0 and float(t.max()) <= 1.0
    assert float(t[0, 8, 12, 12]) > 0.2  # the centre is head ...
    assert float(t[0, 0, 0, 0]) < 0.02  # ... the corner background (clipped to 0)


def test_zscore_mode_statistics_over_foreground():
    data, _, _ = _scene(_stored_affine("ras"))
    t = from_model_axes(preprocess(volume_from_array(data, _stored_affine("ras")), SMALL).tensor[0])
    fg = foreground_mask(t.numpy())
    assert 0.2 < fg.mean() < 0.9
    values = t.numpy()[fg]  # about the mask the pipeline used (which adds a partial-volume rim)
    assert abs(values.mean()) < 0.5 and 0.5 < values.std() < 1.5
    assert float(np.median(t.numpy()[~fg])) < -2  # background well below the brain


def test_head_taller_than_window_keeps_the_vertex():
    """A head plus neck taller than the model FOV: the top of the head stays inside."""
    affine = np.diag([2.0, 2.0, 2.0, 1.0])
    shape = (40, 48, 60)
    data = np.full(shape, 5.0, np.float32)
    data[8:32, 8:40, 0:52] = 100.0  # neck from the bottom of the FOV up to the vertex at z=51
    data += np.random.default_rng(1).normal(0, 1, shape).astype(np.float32)
    out = preprocess(volume_from_array(data, affine), SMALL)
    top_world = affine @ np.array([20, 24, 51, 1.0])
    d = out.grid.world_to_model(top_world[:3])[0]
    assert SMALL.shape_dhw[0] - 4 <= d <= SMALL.shape_dhw[0] - 1


def test_volume_without_foreground_contrast_is_rejected():
    """A flat box on a flat background (e.g. a binary mask uploaded by mistake)."""
    data = np.zeros((24, 24, 20), np.float32)
    data[6:18, 6:18, 5:15] = 100.0
    affine = np.diag([*SMALL.spacing_mm[::-1], 1.0])  # already at the target spacing
    with pytest.raises(InvalidVolumeError, match="no intensity contrast inside the brain"):
        preprocess(volume_from_array(data, affine), SMALL)


# ------------------------------------------------------------------------------------------------
# the two real scans


REAL = {
    "brats": "BraTS-GLI-00001-000-t1c.nii.gz",  # skull-stripped, LPS, int16, 240x240x155 at 1 mm
    "ixi": "IXI012-HH-1211_T1_2mm_uint8.nii.gz",  # skull on, PSR, uint8 with slope, 2 mm
}


def _centre_voxel(out, vol) -> np.ndarray:
    """Canonical volume voxel under the centre of the model tensor."""
    centre_dhw = (np.array(out.tensor.shape[1:]) - 1) / 2
    world = out.grid.model_affine @ np.append(centre_dhw, 1.0)
    return np.rint(np.linalg.solve(vol.affine, world)[:3]).astype(int)


@pytest.mark.parametrize("name", sorted(REAL))
def test_real_scan_preprocesses_with_brain_at_the_centre(real_samples_dir, name):
    cfg = PreprocessConfig()
    vol = load_volume(real_samples_dir / REAL[name])
    out = preprocess(vol, cfg)
    assert out.tensor.shape == (1, *cfg.shape_dhw)
    assert torch.isfinite(out.tensor).all()

    voxel = _centre_voxel(out, vol)
    assert np.all(voxel >= 0) and np.all(voxel < vol.data.shape)
    step = 2 if name == "brats" else 1  # checks on a 2 mm copy keep the test fast
    data = vol.data[::step, ::step, ::step]
    mask = foreground_mask(data)
    assert mask[tuple(voxel // step)]
    # inside the skull: deeper than scalp + skull (about 10-15 mm) from the background
    depth = ndimage.distance_transform_edt(mask, sampling=np.array(vol.spacing) * step)
    assert depth[tuple(voxel // step)] > 15.0
    fov = model_to_volume(np.ones(cfg.shape_dhw, np.float32), out.grid, order=0) > 0
    fov = fov[::step, ::step, ::step]
    if name == "brats":  # skull-stripped: brain voxels are non-zero, and all of it is in view
        assert vol.data[tuple(voxel)] > 0
        assert fov[mask].mean() > 0.99
    else:  # head with neck: the vertex stays in view, the neck is what gets cut
        top = np.flatnonzero(mask.any(axis=(0, 1)))[-1]
        assert fov[:, :, top][mask[:, :, top]].all()
        assert fov[mask].mean() < 0.99

    zscored = (vol.data - vol.data.mean()) / vol.data.std()
    assert zscored.min() < 0 and np.median(zscored) < 0  # background is negative
    out_z = preprocess(volume_from_array(zscored, vol.affine, "zscored"), cfg)
    np.testing.assert_allclose(out_z.grid.model_affine, out.grid.model_affine)
    np.testing.assert_allclose(out_z.tensor, out.tensor, atol=1e-3)
