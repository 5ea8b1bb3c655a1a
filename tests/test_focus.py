"""The focus: the networks' pooled evidence for a tumour and where the viewer opens."""

from __future__ import annotations

import numpy as np
import pytest

from tumortrace.focus import find_focus, model_spacing, tumour_evidence
from tumortrace.preprocess import DHW_TO_XYZ, GridMap

SHAPE = (12, 14, 16)  # (D, H, W)


def _blob(centre, radius=1, value=1.0) -> np.ndarray:
    m = np.zeros(SHAPE, np.float32)
    d, h, w = centre
    m[d - radius : d + radius + 1, h - radius : h + radius + 1, w - radius : w + radius + 1] = value
    return m


def _peak(a: np.ndarray) -> tuple[int, ...]:
    return tuple(int(i) for i in np.unravel_index(int(np.argmax(a)), a.shape))


def test_networks_count_by_their_tumour_probability() -> None:
    """One network sure of HGG looks at A, one sure of healthy looks at B: the evidence peaks at
    A; swap the probabilities and it peaks at B."""
    a, b = (3, 4, 4), (8, 10, 11)
    maps = {
        "mc3": {"lgg": _blob(a, radius=0), "hgg": _blob(a, radius=0)},
        "r3d": {"lgg": _blob(b, radius=0), "hgg": _blob(b, radius=0)},
    }
    sure, unsure = np.array([0.05, 0.05, 0.9]), np.array([0.9, 0.05, 0.05])
    ev = tumour_evidence(maps, {"mc3": sure, "r3d": unsure}, (5.0, 5.0, 5.0), sigma_mm=0)
    assert _peak(ev) == a and ev.max() == pytest.approx(1.0)
    ev = tumour_evidence(maps, {"mc3": unsure, "r3d": sure}, (5.0, 5.0, 5.0), sigma_mm=0)
    assert _peak(ev) == b


def test_pooling_prefers_a_region_to_a_lone_voxel() -> None:
    """A lone voxel at 1.0 beats a 3x3x3 block at 0.8 voxel by voxel (sigma 0), but the pooled
    evidence (10 mm at 5 mm voxels) peaks inside the block."""
    lone, block = (2, 2, 2), (8, 9, 10)
    m = _blob(block, radius=1, value=0.8)
    m[lone] = 1.0
    maps = {"mc3": {"lgg": m, "hgg": m}}
    probs = {"mc3": np.array([0.2, 0.4, 0.4])}
    assert _peak(tumour_evidence(maps, probs, (5.0, 5.0, 5.0), sigma_mm=0)) == lone
    assert _peak(tumour_evidence(maps, probs, (5.0, 5.0, 5.0), sigma_mm=10)) == block


def test_evidence_stays_in_the_brain_and_vanishes_without_a_tumour_probability() -> None:
    m = _blob((6, 7, 8), radius=2)
    maps = {"mc3": {"lgg": m, "hgg": m}}
    brain = np.zeros(SHAPE, bool)
    brain[:, :, :8] = True
    ev = tumour_evidence(maps, {"mc3": np.array([0.1, 0.4, 0.5])}, (5.0, 5.0, 5.0), brain)
    assert ev.max() == pytest.approx(1.0) and not ev[~brain].any()
    none = tumour_evidence(maps, {"mc3": np.array([1.0, 0.0, 0.0])}, (5.0, 5.0, 5.0), brain)
    assert not none.any()


def test_bad_maps_are_refused() -> None:
    with pytest.raises(ValueError, match="at least one"):
        tumour_evidence({}, {}, (5.0, 5.0, 5.0))
    maps = {"mc3": {"lgg": np.zeros(SHAPE), "hgg": np.zeros((2, 2, 2))}}
    with pytest.raises(ValueError, match="one model grid"):
        tumour_evidence(maps, {"mc3": np.array([0.2, 0.4, 0.4])}, (5.0, 5.0, 5.0))


def _grid() -> GridMap:
    """Model voxel (d, h, w) at world (2w, 2h, 2d) mm; a 1 mm volume grid from the origin."""
    model = DHW_TO_XYZ.copy()
    model[:3, :3] *= 2.0
    d, h, w = SHAPE
    return GridMap(model_affine=model, volume_affine=np.eye(4), volume_shape=(2 * w, 2 * h, 2 * d))


def test_the_focus_is_the_evidence_peak_on_the_volume_grid() -> None:
    """The pooled peak at model voxel (d, h, w) is volume voxel (2w, 2h, 2d); the ensemble's
    tumour probability is the mean of the networks' LGG + HGG."""
    grid = _grid()
    assert model_spacing(grid) == (2.0, 2.0, 2.0)
    m = np.zeros(SHAPE, np.float32)
    m[5, 6, 7] = 1.0
    maps = {"mc3": {"lgg": m, "hgg": m}, "r3d": {"lgg": m, "hgg": m}}
    probs = {"mc3": np.array([0.2, 0.3, 0.5]), "r3d": np.array([0.6, 0.1, 0.3])}
    focus = find_focus(maps, probs, grid, sigma_mm=0)
    assert focus.xyz == (14, 12, 10) and focus.archs == ("mc3", "r3d")
    assert focus.p_tumour == pytest.approx(0.6)
    on_volume = focus.volume()
    assert on_volume.shape == grid.volume_shape and on_volume[focus.xyz] == pytest.approx(1.0)
    healthy = {a: np.array([1.0, 0.0, 0.0]) for a in maps}
    assert find_focus(maps, healthy, grid).xyz is None
