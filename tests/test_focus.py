"""The focus: the networks' pooled evidence for a tumour and where the viewer opens."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from tumortrace.config import CLASSES
from tumortrace.explain import Features, score_maps, tumour_log_odds
from tumortrace.focus import find_focus, model_spacing, opening_voxel, tumour_evidence
from tumortrace.preprocess import DHW_TO_XYZ, GridMap

SHAPE = (12, 14, 16)  # (D, H, W)
MM5 = (5.0, 5.0, 5.0)


def _blob(centre, radius=1, value=1.0) -> np.ndarray:
    m = np.zeros(SHAPE, np.float32)
    d, h, w = centre
    m[d - radius : d + radius + 1, h - radius : h + radius + 1, w - radius : w + radius + 1] = value
    return m


def _peak(a: np.ndarray) -> tuple[int, ...]:
    return tuple(int(i) for i in np.unravel_index(int(np.argmax(a)), a.shape))


def test_tumour_log_odds_is_the_log_of_tumour_over_healthy_probability() -> None:
    logits = torch.tensor([[0.3, -1.0, 2.0], [2.0, 0.0, 0.0]])
    p = torch.softmax(logits, dim=1)
    lgg, hgg, healthy = (CLASSES.index(c) for c in ("lgg", "hgg", "healthy"))
    want = torch.log((p[:, lgg] + p[:, hgg]) / p[:, healthy])
    assert torch.allclose(tumour_log_odds(logits), want, atol=1e-6)


def test_score_maps_of_the_log_odds_follow_the_tumour_logits() -> None:
    """Logits read from two locations of one activation: the healthy logit from location A, the
    tumour logits from location B. The map of the tumour log-odds lights B (what raised the odds
    of a tumour), not A (which lowered them)."""
    act = torch.zeros(1, 1, 2, 1, 1, requires_grad=True)
    with torch.no_grad():
        act[0, 0, 0] = 1.0
        act[0, 0, 1] = 1.0
    a, b = act[0, 0, 0, 0, 0], act[0, 0, 1, 0, 0]
    logits = torch.stack([a, b, b]).reshape(1, 3)  # healthy = A, lgg = hgg = B
    maps = score_maps(Features({"layer3": act}, logits), tumour_log_odds(logits), "layercam")
    m = maps["layer3"][0, :, 0, 0]
    assert m[1] > 0 and m[0] == 0


def test_every_network_counts_the_same() -> None:
    """Two networks' maps peak at A and at B with equal strength: without smoothing the pooled
    evidence is 1 at both; a third network looking at A tips it to A."""
    a, b = (3, 4, 4), (8, 10, 11)
    two = {"mc3": _blob(a, radius=0), "r3d": _blob(b, radius=0)}
    ev = tumour_evidence(two, MM5, sigma_mm=0)
    assert ev[a] == pytest.approx(1.0) and ev[b] == pytest.approx(1.0)
    three = {**two, "r2plus1d": 0.5 * _blob(a, radius=0)}  # unit-scaled: its size does not matter
    ev = tumour_evidence(three, MM5, sigma_mm=0)
    assert _peak(ev) == a and ev[b] == pytest.approx(0.5)


def test_pooling_prefers_a_region_to_a_lone_voxel() -> None:
    """A lone voxel at 1.0 beats a 3x3x3 block at 0.8 voxel by voxel (sigma 0), but the pooled
    evidence (10 mm at 5 mm voxels) peaks inside the block."""
    lone, block = (2, 2, 2), (8, 9, 10)
    m = _blob(block, radius=1, value=0.8)
    m[lone] = 1.0
    assert _peak(tumour_evidence({"mc3": m}, MM5, sigma_mm=0)) == lone
    assert _peak(tumour_evidence({"mc3": m}, MM5, sigma_mm=10)) == block


def test_evidence_stays_in_the_brain() -> None:
    m = _blob((6, 7, 8), radius=2)
    brain = np.zeros(SHAPE, bool)
    brain[:, :, :8] = True
    ev = tumour_evidence({"mc3": m}, MM5, brain)
    assert ev.max() == pytest.approx(1.0) and not ev[~brain].any()
    assert not tumour_evidence({"mc3": np.zeros(SHAPE)}, MM5, brain).any()


def test_bad_maps_are_refused() -> None:
    with pytest.raises(ValueError, match="at least one"):
        tumour_evidence({}, MM5)
    with pytest.raises(ValueError, match="one model grid"):
        tumour_evidence({"mc3": np.zeros(SHAPE), "r3d": np.zeros((2, 2, 2))}, MM5)


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
    probs = {"mc3": np.array([0.2, 0.3, 0.5]), "r3d": np.array([0.6, 0.1, 0.3])}
    focus = find_focus({"mc3": m, "r3d": m}, probs, grid, sigma_mm=0)
    assert focus.xyz == (14, 12, 10) and focus.archs == ("mc3", "r3d")
    assert focus.p_tumour == pytest.approx(0.6)
    on_volume = focus.volume()
    assert on_volume.shape == grid.volume_shape and on_volume[focus.xyz] == pytest.approx(1.0)
    assert find_focus({"mc3": np.zeros(SHAPE)}, {"mc3": probs["mc3"]}, grid).xyz is None


@pytest.mark.parametrize(("healthy", "opens"), [(0.1, True), (0.59, True), (0.6, False)])
def test_the_viewer_opens_on_the_focus_unless_confidently_healthy(healthy, opens) -> None:
    m = np.zeros(SHAPE, np.float32)
    m[5, 6, 7] = 1.0
    probs = {"mc3": np.array([healthy, 0.5 * (1 - healthy), 0.5 * (1 - healthy)])}
    focus = find_focus({"mc3": m}, probs, _grid(), sigma_mm=0)
    assert focus.opens is opens
    centre = tuple(n // 2 for n in _grid().volume_shape)
    assert opening_voxel(focus, _grid().volume_shape) == ((14, 12, 10) if opens else centre)
    assert opening_voxel(None, (4, 6, 8)) == (2, 3, 4)
