"""tumortrace.viz and tumortrace.draw: orientation, windowing, overlays, markers, colour bar."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from tumortrace import draw, viz
from tumortrace.errors import ConfigError, InvalidVolumeError
from tumortrace.metrics import mean_std

SHAPE = (10, 12, 8)  # (X, Y, Z): distinct sizes catch transposes


def marker_volume(point: tuple[int, int, int]) -> np.ndarray:
    vol = np.zeros(SHAPE, dtype=np.float32)
    vol[point] = 1.0
    return vol


def where(img: np.ndarray) -> tuple[int, int]:
    r, c = np.argwhere(img == img.max())[0]
    return int(r), int(c)


# Right (high x), anterior (high y), superior (high z) corner of the volume.
RAS_CORNER = (SHAPE[0] - 1, SHAPE[1] - 1, SHAPE[2] - 1)


@pytest.mark.parametrize(
    ("plane", "convention", "expected_shape", "expected_rc"),
    [
        # axial radiological: anterior at top, patient right on the screen's left
        ("axial", "radiological", (12, 10), (0, 0)),
        ("axial", "neurological", (12, 10), (0, 9)),
        ("coronal", "radiological", (8, 10), (0, 0)),
        ("coronal", "neurological", (8, 10), (0, 9)),
        # sagittal: superior at top, anterior on the left, in both conventions
        ("sagittal", "radiological", (8, 12), (0, 0)),
        ("sagittal", "neurological", (8, 12), (0, 0)),
    ],
)
def test_extract_slice_orientation(plane, convention, expected_shape, expected_rc):
    vol = marker_volume(RAS_CORNER)
    index = RAS_CORNER[viz.plane_layout(plane).fixed_axis]
    img = viz.extract_slice(vol, plane, index, convention)
    assert img.shape == expected_shape
    assert where(img) == expected_rc
    assert viz.display_position(SHAPE, plane, RAS_CORNER, convention) == expected_rc


@pytest.mark.parametrize(
    ("plane", "convention", "expected"),
    [
        ("axial", "radiological", ("A", "P", "R", "L")),
        ("axial", "neurological", ("A", "P", "L", "R")),
        ("coronal", "radiological", ("S", "I", "R", "L")),
        ("coronal", "neurological", ("S", "I", "L", "R")),
        ("sagittal", "radiological", ("S", "I", "A", "P")),
        ("sagittal", "neurological", ("S", "I", "A", "P")),
    ],
)
def test_edge_labels(plane, convention, expected):
    assert tuple(viz.edge_labels(plane, convention)) == expected


@pytest.mark.parametrize("plane", viz.PLANES)
@pytest.mark.parametrize("convention", viz.CONVENTIONS)
def test_labels_agree_with_pixels(plane, convention):
    """A voxel at the 'right' (resp. 'anterior', 'superior') end lands at the edge so labelled."""
    letter_point = {
        "R": (SHAPE[0] - 1, 5, 4),
        "L": (0, 5, 4),
        "A": (5, SHAPE[1] - 1, 4),
        "P": (5, 0, 4),
        "S": (5, 5, SHAPE[2] - 1),
        "I": (5, 5, 0),
    }
    labels = viz.edge_labels(plane, convention)
    fixed = viz.plane_layout(plane).fixed_axis
    for edge, letter in labels._asdict().items():
        point = letter_point[letter]
        img = viz.extract_slice(marker_volume(point), plane, point[fixed], convention)
        r, c = where(img)
        side = {"top": r == 0, "bottom": r == img.shape[0] - 1}
        side |= {"left": c == 0, "right": c == img.shape[1] - 1}
        assert side[edge], (plane, convention, edge, letter, (r, c))


def test_slice_count():
    assert [viz.slice_count(SHAPE, p) for p in viz.PLANES] == [8, 12, 10]


def test_extract_slice_rejects_bad_input():
    vol = np.zeros(SHAPE, np.float32)
    with pytest.raises(InvalidVolumeError, match=r"outside the axial range 0\.\.7"):
        viz.extract_slice(vol, "axial", 8)
    with pytest.raises(InvalidVolumeError, match="Expected a 3D"):
        viz.extract_slice(np.zeros((4, 4)), "axial", 0)
    with pytest.raises(ConfigError, match="Unknown plane 'oblique'"):
        viz.extract_slice(vol, "oblique", 0)
    with pytest.raises(ConfigError, match="Unknown display convention 'surgical'"):
        viz.extract_slice(vol, "axial", 0, "surgical")


def test_window_presets_ignore_nonzero_background():
    rng = np.random.default_rng(0)
    vol = rng.normal(200.0, 5.0, (30, 30, 30)).astype(np.float32)  # background at 200
    vol[8:22, 8:22, 8:22] = rng.normal(1000.0, 50.0, (14, 14, 14))  # tissue
    presets = viz.window_presets(vol)
    assert set(presets) == set(viz.WINDOW_PRESETS)
    assert presets["brain"].low > 500  # window sits on the tissue, not on the background
    assert presets["full range"].low == pytest.approx(vol.min())
    assert presets["full range"].high == pytest.approx(vol.max())
    assert presets["high contrast"].width < presets["full range"].width


def test_apply_window_maps_bounds():
    window = viz.Window.from_range(10.0, 20.0)
    out = viz.apply_window(np.array([[0.0, 10.0, 15.0, 20.0, 99.0]]), window)
    assert out.dtype == np.uint8
    assert out.tolist() == [[0, 0, 127, 255, 255]]
    with pytest.raises(ConfigError, match="Window width must be positive"):
        viz.apply_window(out, viz.Window(0.0, 0.0))


def test_blend_overlay_threshold_and_opacity():
    gray = np.full((2, 2), 100, np.uint8)
    heat = np.array([[0.1, 0.5], [1.0, 0.0]], np.float32)
    out = viz.blend_overlay(gray, heat, opacity=1.0, threshold=0.3, cmap="jet")
    assert out.shape == (2, 2, 3)
    assert out[0, 0].tolist() == [100, 100, 100]  # below the threshold: grey shows through
    lut = viz.colormap_lut("jet")
    assert out[1, 0].tolist() == lut[255].tolist()  # full opacity: the colour itself
    none = viz.blend_overlay(gray, heat, opacity=0.0, threshold=0.0)
    assert (none == 100).all()


def test_blend_overlay_rejects_bad_settings():
    gray = np.zeros((2, 2), np.uint8)
    with pytest.raises(ConfigError, match="does not match the slice"):
        viz.blend_overlay(gray, np.zeros((3, 2)))
    with pytest.raises(ConfigError, match="must lie in"):
        viz.blend_overlay(gray, np.zeros((2, 2)), opacity=1.5)
    with pytest.raises(ConfigError, match="Unknown colour map 'rainbow'"):
        viz.blend_overlay(gray, np.zeros((2, 2)), cmap="rainbow")
    with pytest.raises(ConfigError, match="Unknown colour map 'rainbow'"):
        viz.colormap_lut("rainbow")


def test_display_size_keeps_physical_proportions():
    # 100 rows at 2 mm and 100 cols at 1 mm: twice as tall as wide.
    assert viz.display_size((100, 100), (2.0, 1.0), min_long_side=0) == (200, 100)
    assert viz.display_size((10, 20), (1.0, 1.0), min_long_side=200) == (100, 200)


def test_render_slice_labels_overlay_and_png():
    rng = np.random.default_rng(1)
    vol = rng.normal(100, 10, (40, 48, 36)).astype(np.float32)
    heat = np.zeros_like(vol)
    heat[10:30, 10:30, 10:30] = 1.0
    window = viz.window_presets(vol)["auto"]
    plain = draw.render_slice(vol, "axial", 18, window, spacing_xyz=(1, 1, 2), labels=False)
    assert plain.shape[2] == 3
    assert (plain[..., 0] == plain[..., 1]).all()  # grey only
    labelled = draw.render_slice(vol, "axial", 18, window, spacing_xyz=(1, 1, 2))
    yellow = (labelled[..., 0] > 200) & (labelled[..., 1] > 200) & (labelled[..., 2] < 120)
    assert yellow.any()  # the orientation letters
    over = draw.render_slice(
        vol, "axial", 18, window, heat_xyz=heat, opacity=0.8, threshold=0.5, labels=False
    )
    colour = np.abs(over[..., 0].astype(int) - over[..., 2].astype(int)) > 60
    assert colour.any()
    png = draw.encode_png(over)
    assert np.array_equal(np.asarray(Image.open(io.BytesIO(png))), over)
    with pytest.raises(ConfigError, match="differs from the volume"):
        draw.render_slice(vol, "axial", 0, window, heat_xyz=heat[:-1])


def test_mean_std_edge_cases():
    assert mean_std([0.5]) == (0.5, 0.0, 1)
    mean, std, n = mean_std([None, float("nan")])
    assert n == 0 and np.isnan(mean) and np.isnan(std)


# -- peaks, markers, lesion outline, colour bar (issue 16) -----------------------------------------


def test_default_colour_map_is_inferno_with_monotonic_lightness() -> None:
    assert viz.DEFAULT_CMAP == "inferno" and viz.COLORMAPS[0] == "inferno"
    for name in ("inferno", "magma"):
        lut = viz.colormap_lut(name).astype(np.float64)
        luma = lut @ np.array([0.2126, 0.7152, 0.0722])  # relative luminance, sRGB weights
        assert np.all(np.diff(luma) >= -0.5), name  # low -> high reads dark -> bright


def test_peak_voxel() -> None:
    heat = np.zeros((5, 6, 7), dtype=np.float32)
    assert viz.peak_voxel(heat) is None
    heat[1, 4, 2] = 0.9
    heat[3, 3, 3] = 0.5
    assert viz.peak_voxel(heat) == (1, 4, 2)


def _render(**kwargs) -> np.ndarray:
    vol = np.zeros((20, 20, 20), dtype=np.float32)
    vol[0, 0, 0] = 1.0
    return draw.render_slice(
        vol, "axial", 10, viz.Window(0.5, 1.0), labels=False, min_long_side=200, **kwargs
    )


def test_marker_ring_drawn_at_the_peak_solid_on_its_slice_dashed_off_it() -> None:
    red = (255, 0, 0)
    on = _render(markers=[draw.Marker((5, 14, 10), "", red)])
    off = _render(markers=[draw.Marker((5, 14, 3), "", red)])
    plain = _render()
    # axial radiological: x = 5 -> column 19 - 5 = 14, y = 14 -> row 19 - 14 = 5; 10 px per voxel
    row, col = 55, 145
    ring_on = np.all(on == red, axis=2)
    ring_off = np.all(off == red, axis=2)
    assert not np.all(plain == red, axis=2).any()
    ys, xs = np.nonzero(ring_on)
    assert abs(ys.mean() - row) <= 2 and abs(xs.mean() - col) <= 2
    assert ring_off.any() and ring_off.sum() < ring_on.sum()  # dashed: fewer pixels
    ys, xs = np.nonzero(ring_off)
    assert abs(ys.mean() - row) <= 3 and abs(xs.mean() - col) <= 3


def test_lesion_outline_follows_the_mask_boundary() -> None:
    mask = np.zeros((20, 20, 20), dtype=bool)
    mask[4:10, 8:16, 9:12] = True  # on axial slice 10
    img = _render(lesion_xyz=mask)
    edge = np.all(img == draw.LESION_COLOR, axis=2)
    assert edge.any()
    # rows 19-15..19-8 = 4..11 -> pixels 40..119; cols 19-9..19-4 = 10..15 -> pixels 100..159
    ys, xs = np.nonzero(edge)
    assert ys.min() == 40 and ys.max() == 119 and xs.min() == 100 and xs.max() == 159
    assert not edge[80, 130]  # the interior stays untouched
    assert not np.all(_render(lesion_xyz=np.zeros_like(mask)) == draw.LESION_COLOR, axis=2).any()
    with pytest.raises(ConfigError, match="Lesion mask shape"):
        _render(lesion_xyz=mask[:5])


def test_colorbar_legend_greys_out_the_hidden_range() -> None:
    img = draw.colorbar_legend("inferno", threshold=0.5, width=214)
    assert img.dtype == np.uint8 and img.shape[1] == 214 and img.shape[2] == 3
    left, right = img[5, 20], img[5, 190]
    assert left[0] == left[1] == left[2]  # grey: below the threshold, not drawn
    assert tuple(right) != (right[0],) * 3  # coloured
