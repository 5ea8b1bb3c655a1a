"""Pixels for the app: windowing, slicing, Grad-CAM overlays, the viewer's drawing routines.

No streamlit and no model code live here, so every function is testable on plain arrays. The
plotly charts are in :mod:`tumortrace.figures`, the benchmark tables in :mod:`tumortrace.tables`.

Display conventions. Volumes arrive canonical RAS, indexed ``(x, y, z)`` = (left->right,
posterior->anterior, inferior->superior). A displayed slice is an image ``(rows, cols)``:

* axial (fixed z): anterior at the top;
* coronal and sagittal (fixed y / fixed x): superior at the top;
* sagittal: anterior on the screen's left (the patient faces left);
* axial and coronal columns follow the chosen convention: **radiological** shows the patient's
  left on the screen's right (as if facing the patient), **neurological** shows it on the left
  (as if looking from behind).

Every rendered image carries its orientation letters at the four edges, so the convention in use
can always be read off the image itself.
"""

from __future__ import annotations

import io
import math
from collections.abc import Mapping, Sequence
from typing import Literal, NamedTuple

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from tumortrace.errors import ConfigError, InvalidVolumeError
from tumortrace.intensity import otsu_threshold

Plane = Literal["axial", "coronal", "sagittal"]
Convention = Literal["radiological", "neurological"]

PLANES: tuple[Plane, Plane, Plane] = ("axial", "coronal", "sagittal")
CONVENTIONS: tuple[Convention, Convention] = ("radiological", "neurological")
WINDOW_PRESETS: tuple[str, ...] = ("brain", "auto", "full range", "high contrast")
"""Names accepted by :func:`window_presets` (the app adds "manual")."""

CLASS_NAMES: dict[str, str] = {"healthy": "Healthy", "lgg": "LGG", "hgg": "HGG"}
"""How the class ids read on screen (LGG/HGG are the clinical abbreviations)."""

# Colour maps as anchor points (position in [0, 1], RGB 0..255); matplotlib is not a dependency.
# inferno and magma: matplotlib's perceptually uniform maps sampled every 1/8.
_CMAP_ANCHORS: dict[str, list[tuple[float, tuple[int, int, int]]]] = {
    "inferno": [
        (0.0, (0, 0, 4)),
        (0.125, (31, 12, 72)),
        (0.25, (85, 15, 109)),
        (0.375, (136, 34, 106)),
        (0.5, (186, 54, 85)),
        (0.625, (227, 89, 51)),
        (0.75, (249, 140, 10)),
        (0.875, (249, 201, 50)),
        (1.0, (252, 255, 164)),
    ],
    "magma": [
        (0.0, (0, 0, 4)),
        (0.125, (28, 16, 68)),
        (0.25, (79, 18, 123)),
        (0.375, (129, 37, 129)),
        (0.5, (181, 54, 122)),
        (0.625, (229, 80, 100)),
        (0.75, (251, 135, 97)),
        (0.875, (254, 194, 135)),
        (1.0, (252, 253, 191)),
    ],
    "jet": [
        (0.0, (0, 0, 128)),
        (0.11, (0, 0, 255)),
        (0.36, (0, 255, 255)),
        (0.62, (255, 255, 0)),
        (0.87, (255, 0, 0)),
        (1.0, (128, 0, 0)),
    ],
    "hot": [(0.0, (10, 0, 0)), (0.37, (255, 0, 0)), (0.75, (255, 255, 0)), (1.0, (255, 255, 255))],
}
COLORMAPS: tuple[str, ...] = tuple(_CMAP_ANCHORS)
"""Overlay colour maps; the first (inferno, perceptually uniform) is the default."""
DEFAULT_CMAP = COLORMAPS[0]
LESION_COLOR = (0, 255, 128)
"""Outline colour of a known (true) lesion."""


class Marker(NamedTuple):
    """A point to mark on a slice: a ring at ``xyz``'s in-plane position, labelled.

    Attributes:
        xyz: voxel ``(x, y, z)`` on the volume grid.
        label: short text beside the ring (e.g. the network's name).
        color: RGB of the ring.
    """

    xyz: tuple[int, int, int]
    label: str = ""
    color: tuple[int, int, int] = (255, 255, 255)


def peak_voxel(heat_xyz: np.ndarray) -> tuple[int, int, int] | None:
    """Voxel ``(x, y, z)`` of the map's maximum, or None for a map with no positive value."""
    if heat_xyz.size == 0 or not float(np.max(heat_xyz)) > 0:
        return None
    return tuple(int(i) for i in np.unravel_index(int(np.argmax(heat_xyz)), heat_xyz.shape))


class Window(NamedTuple):
    """An intensity window: values in ``[level - width/2, level + width/2]`` map to black..white."""

    level: float
    width: float

    @classmethod
    def from_range(cls, low: float, high: float) -> Window:
        """Window covering ``[low, high]`` (a zero-width range is widened to 1)."""
        width = float(high) - float(low)
        if not math.isfinite(width) or width <= 0:
            width = 1.0
        return cls(level=float(low) + width / 2.0, width=width)

    @property
    def low(self) -> float:
        """Lower bound (maps to black)."""
        return self.level - self.width / 2.0

    @property
    def high(self) -> float:
        """Upper bound (maps to white)."""
        return self.level + self.width / 2.0


class EdgeLabels(NamedTuple):
    """Direction letters at the top, bottom, left and right edges of a displayed slice."""

    top: str
    bottom: str
    left: str
    right: str


class PlaneLayout(NamedTuple):
    """How a plane maps volume axes to display rows and columns.

    Attributes:
        fixed_axis: the volume axis held constant (the slice index runs along it).
        row_axis: volume axis along display rows; ``row_flip`` puts its high end at the top.
        col_axis: volume axis along display columns; ``col_flip`` puts its high end on the left.
    """

    fixed_axis: int
    row_axis: int
    row_flip: bool
    col_axis: int
    col_flip: bool


def _check_plane(plane: str) -> None:
    if plane not in PLANES:
        raise ConfigError(f"Unknown plane {plane!r}; expected one of {list(PLANES)}.")


def _check_convention(convention: str) -> None:
    if convention not in CONVENTIONS:
        raise ConfigError(
            f"Unknown display convention {convention!r}; expected one of {list(CONVENTIONS)}."
        )


def plane_layout(plane: Plane, convention: Convention = "radiological") -> PlaneLayout:
    """The axis mapping of one plane under one convention (see the module docstring).

    Raises:
        ConfigError: unknown plane or convention.
    """
    _check_plane(plane)
    _check_convention(convention)
    radiological = convention == "radiological"
    if plane == "axial":
        return PlaneLayout(
            fixed_axis=2, row_axis=1, row_flip=True, col_axis=0, col_flip=radiological
        )
    if plane == "coronal":
        return PlaneLayout(
            fixed_axis=1, row_axis=2, row_flip=True, col_axis=0, col_flip=radiological
        )
    return PlaneLayout(fixed_axis=0, row_axis=2, row_flip=True, col_axis=1, col_flip=True)


def edge_labels(plane: Plane, convention: Convention = "radiological") -> EdgeLabels:
    """Orientation letters (R/L, A/P, S/I) at the edges of a displayed slice.

    Example: axial, radiological -> ``EdgeLabels(top="A", bottom="P", left="R", right="L")``.
    """
    layout = plane_layout(plane, convention)
    low_high = {0: ("L", "R"), 1: ("P", "A"), 2: ("I", "S")}  # letters at low / high index
    row_low, row_high = low_high[layout.row_axis]
    col_low, col_high = low_high[layout.col_axis]
    top, bottom = (row_high, row_low) if layout.row_flip else (row_low, row_high)
    left, right = (col_high, col_low) if layout.col_flip else (col_low, col_high)
    return EdgeLabels(top=top, bottom=bottom, left=left, right=right)


def slice_count(shape_xyz: Sequence[int], plane: Plane) -> int:
    """Number of slices of ``plane`` in a volume of shape (X, Y, Z)."""
    return int(shape_xyz[plane_layout(plane).fixed_axis])


def extract_slice(
    volume_xyz: np.ndarray, plane: Plane, index: int, convention: Convention = "radiological"
) -> np.ndarray:
    """One slice in display orientation.

    Args:
        volume_xyz: (X, Y, Z) canonical RAS array (any dtype; also works for Grad-CAM maps).
        plane: "axial", "coronal" or "sagittal".
        index: slice index along the plane's fixed axis, ``0 <= index < slice_count``.
        convention: "radiological" or "neurological".

    Returns:
        (rows, cols) view-free copy: axial (Y, X), coronal (Z, X), sagittal (Z, Y).

    Raises:
        InvalidVolumeError: the array is not 3D or the index is out of range.
    """
    if volume_xyz.ndim != 3:
        raise InvalidVolumeError(
            f"Expected a 3D (X, Y, Z) array to slice, got shape {volume_xyz.shape}."
        )
    layout = plane_layout(plane, convention)
    n = volume_xyz.shape[layout.fixed_axis]
    if not 0 <= int(index) < n:
        raise InvalidVolumeError(f"Slice {index} is outside the {plane} range 0..{n - 1}.")
    sl = np.take(volume_xyz, int(index), axis=layout.fixed_axis)  # remaining axes keep order
    remaining = [a for a in range(3) if a != layout.fixed_axis]
    if remaining.index(layout.row_axis) != 0:
        sl = sl.T
    if layout.row_flip:
        sl = sl[::-1, :]
    if layout.col_flip:
        sl = sl[:, ::-1]
    return np.ascontiguousarray(sl)


def display_position(
    shape_xyz: Sequence[int],
    plane: Plane,
    point_xyz: Sequence[int],
    convention: Convention = "radiological",
) -> tuple[int, int]:
    """Where voxel ``point_xyz`` lands (row, col) in the displayed slice of ``plane``."""
    layout = plane_layout(plane, convention)
    r = int(point_xyz[layout.row_axis])
    c = int(point_xyz[layout.col_axis])
    if layout.row_flip:
        r = int(shape_xyz[layout.row_axis]) - 1 - r
    if layout.col_flip:
        c = int(shape_xyz[layout.col_axis]) - 1 - c
    return r, c


def voxel_at(
    shape_xyz: Sequence[int],
    plane: Plane,
    index: int,
    u: float,
    v: float,
    convention: Convention = "radiological",
) -> tuple[int, int, int]:
    """The voxel under a point of the displayed slice ``index`` of ``plane`` (the inverse of
    :func:`display_position`): ``u``, ``v`` are shares (0-1) of the image's width and height from
    its top-left corner, as a click reports them; outside points clamp to the edge."""
    layout = plane_layout(plane, convention)
    n_rows, n_cols = int(shape_xyz[layout.row_axis]), int(shape_xyz[layout.col_axis])
    r = min(n_rows - 1, max(0, math.floor(v * n_rows)))
    c = min(n_cols - 1, max(0, math.floor(u * n_cols)))
    xyz = [0, 0, 0]
    xyz[layout.fixed_axis] = int(index)
    xyz[layout.row_axis] = n_rows - 1 - r if layout.row_flip else r
    xyz[layout.col_axis] = n_cols - 1 - c if layout.col_flip else c
    return xyz[0], xyz[1], xyz[2]


def pixel_spacing(spacing_xyz: Sequence[float], plane: Plane) -> tuple[float, float]:
    """Millimetres per displayed (row, col) pixel for ``plane``."""
    layout = plane_layout(plane)
    return float(spacing_xyz[layout.row_axis]), float(spacing_xyz[layout.col_axis])


def display_size(
    shape_rc: tuple[int, int], spacing_rc: tuple[float, float], min_long_side: int = 256
) -> tuple[int, int]:
    """Output (rows, cols) in pixels with square physical pixels and a readable size.

    Anisotropic voxels are stretched so 1 pixel is the same distance in both directions; small
    slices are enlarged so the long side is at least ``min_long_side`` pixels.
    """
    rows_mm = shape_rc[0] * spacing_rc[0]
    cols_mm = shape_rc[1] * spacing_rc[1]
    base = min(spacing_rc)
    rows, cols = rows_mm / base, cols_mm / base
    scale = max(1.0, min_long_side / max(rows, cols))
    return max(1, round(rows * scale)), max(1, round(cols * scale))


def _subsample(data: np.ndarray, max_voxels: int = 400_000) -> np.ndarray:
    """A deterministic strided subsample (for fast statistics on big volumes)."""
    step = max(1, math.ceil((data.size / max_voxels) ** (1 / 3)))
    sub = data[::step, ::step, ::step] if data.ndim == 3 else data.ravel()[::step]
    sub = np.asarray(sub, dtype=np.float32).ravel()
    return sub[np.isfinite(sub)]


def window_presets(volume_xyz: np.ndarray) -> dict[str, Window]:
    """The window presets of one volume (MRI has no fixed units, so all are data-driven).

    * ``brain``: 1st-99th percentile of the tissue voxels (above Otsu's threshold): grey/white
      matter contrast, background black.
    * ``auto``: 0.5th-99.5th percentile of every voxel.
    * ``full range``: minimum to maximum.
    * ``high contrast``: 40th-99.8th percentile of the tissue: narrow, makes enhancing or bright
      lesions stand out.

    Args:
        volume_xyz: (X, Y, Z) array.

    Returns:
        ``{preset name: Window}`` for every name in :data:`WINDOW_PRESETS`.
    """
    sample = _subsample(volume_xyz)
    if sample.size == 0:
        raise InvalidVolumeError("The volume has no finite voxel to compute a display window from.")
    tissue = sample[sample > otsu_threshold(sample)]
    if tissue.size < 16:
        tissue = sample
    p_all = np.percentile(sample, [0.5, 99.5])
    p_tis = np.percentile(tissue, [1.0, 99.0, 40.0, 99.8])
    return {
        "brain": Window.from_range(p_tis[0], p_tis[1]),
        "auto": Window.from_range(p_all[0], p_all[1]),
        "full range": Window.from_range(float(sample.min()), float(sample.max())),
        "high contrast": Window.from_range(p_tis[2], p_tis[3]),
    }


def apply_window(image: np.ndarray, window: Window) -> np.ndarray:
    """Maps intensities through a window to 8-bit grey.

    Args:
        image: (rows, cols) array of any real dtype.
        window: the level/width; values below ``low`` are black, above ``high`` white.

    Returns:
        (rows, cols) uint8.
    """
    if window.width <= 0:
        raise ConfigError(f"Window width must be positive, got {window.width}.")
    scaled = (image.astype(np.float32) - np.float32(window.low)) * np.float32(255.0 / window.width)
    np.clip(scaled, 0, 255, out=scaled)
    return scaled.astype(np.uint8)


def colormap_lut(name: str = DEFAULT_CMAP) -> np.ndarray:
    """A (256, 3) uint8 lookup table for one of :data:`COLORMAPS`.

    Raises:
        ConfigError: unknown colour map name.
    """
    if name not in _CMAP_ANCHORS:
        raise ConfigError(f"Unknown colour map {name!r}; expected one of {list(COLORMAPS)}.")
    anchors = _CMAP_ANCHORS[name]
    pos = np.array([a[0] for a in anchors])
    rgb = np.array([a[1] for a in anchors], dtype=np.float64)
    x = np.linspace(0, 1, 256)
    lut = np.stack([np.interp(x, pos, rgb[:, k]) for k in range(3)], axis=1)
    return np.round(lut).astype(np.uint8)


_LUTS: dict[str, np.ndarray] = {name: colormap_lut(name) for name in COLORMAPS}


def blend_overlay(
    gray: np.ndarray,
    heat: np.ndarray,
    opacity: float = 0.45,
    threshold: float = 0.2,
    cmap: str = DEFAULT_CMAP,
) -> np.ndarray:
    """Colours a heat map over a grey image.

    Args:
        gray: (rows, cols) uint8 windowed slice.
        heat: (rows, cols) float in [0, 1] (a Grad-CAM slice on the same grid).
        opacity: overlay opacity in [0, 1] where shown.
        threshold: heat below this value is not drawn (the grey image shows through).
        cmap: one of :data:`COLORMAPS`.

    Returns:
        (rows, cols, 3) uint8 RGB.

    Raises:
        ConfigError: shapes differ, or opacity/threshold outside [0, 1].
    """
    if gray.shape != heat.shape:
        raise ConfigError(f"Overlay shape {heat.shape} does not match the slice {gray.shape}.")
    if not (0.0 <= opacity <= 1.0 and 0.0 <= threshold <= 1.0):
        raise ConfigError(
            f"Opacity and threshold must lie in [0, 1], got opacity={opacity}, "
            f"threshold={threshold}."
        )
    if cmap not in _LUTS:
        raise ConfigError(f"Unknown colour map {cmap!r}; expected one of {list(COLORMAPS)}.")
    h = np.nan_to_num(heat.astype(np.float32), nan=0.0)
    np.clip(h, 0.0, 1.0, out=h)
    color = _LUTS[cmap][(h * 255).astype(np.uint8)].astype(np.float32)
    alpha = np.where(h >= threshold, np.float32(opacity), np.float32(0.0))[..., None]
    if threshold == 0.0:
        alpha = alpha * (h > 0)[..., None]
    base = np.repeat(gray[..., None], 3, axis=2).astype(np.float32)
    out = base + alpha * (color - base)
    return out.astype(np.uint8)


_FONT_CACHE: dict[int, ImageFont.ImageFont | ImageFont.FreeTypeFont] = {}


def _font(size: int) -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    if size not in _FONT_CACHE:
        try:
            _FONT_CACHE[size] = ImageFont.load_default(size=size)
        except (TypeError, OSError):  # Pillow built without FreeType: fixed bitmap font
            _FONT_CACHE[size] = ImageFont.load_default()
    return _FONT_CACHE[size]


def _draw_labels(img: Image.Image, labels: EdgeLabels) -> None:
    """Writes the four orientation letters at the middle of each edge, with a dark outline."""
    draw = ImageDraw.Draw(img)
    size = max(12, min(img.size) // 16)
    font = _font(size)
    w, h = img.size
    pad = max(2, size // 4)
    spots = {
        labels.top: (w / 2, pad, "mt"),
        labels.bottom: (w / 2, h - pad, "mb"),
        labels.left: (pad, h / 2, "lm"),
        labels.right: (w - pad, h / 2, "rm"),
    }
    for text, (x, y, anchor) in spots.items():
        draw.text(
            (x, y),
            text,
            fill=(255, 236, 64),
            font=font,
            anchor=anchor,
            stroke_width=max(1, size // 8),
            stroke_fill=(0, 0, 0),
        )


def _draw_crosshair(img: Image.Image, row: float, col: float) -> None:
    """Thin dashed lines marking where the other two planes cut this one.

    The lines stop short of the edges so they never run through the orientation letters.
    """
    draw = ImageDraw.Draw(img)
    w, h = img.size
    color = (0, 200, 255)
    dash = max(4, min(w, h) // 40)
    margin = 2 * max(12, min(w, h) // 16)  # twice the label font size
    for x0 in range(margin, w - margin, 2 * dash):
        draw.line([(x0, row), (min(w - margin, x0 + dash), row)], fill=color, width=1)
    for y0 in range(margin, h - margin, 2 * dash):
        draw.line([(col, y0), (col, min(h - margin, y0 + dash))], fill=color, width=1)


def _draw_lesion_outline(
    img: Image.Image, mask_rc: np.ndarray, color: tuple[int, int, int]
) -> Image.Image:
    """Draws the boundary of a (rows, cols) bool mask, scaled to the image, as a 1-pixel line."""
    w, h = img.size
    big = (
        np.asarray(
            Image.fromarray(mask_rc.astype(np.uint8) * 255).resize((w, h), Image.Resampling.NEAREST)
        )
        > 0
    )
    inner = np.zeros_like(big)
    inner[1:-1, 1:-1] = (
        big[1:-1, 1:-1] & big[:-2, 1:-1] & big[2:, 1:-1] & big[1:-1, :-2] & big[1:-1, 2:]
    )
    edge = big & ~inner
    rgb = np.asarray(img).copy()
    rgb[edge] = color
    return Image.fromarray(rgb)


def _draw_marker(img: Image.Image, row: float, col: float, marker: Marker, on_slice: bool) -> None:
    """A ring with a dark rim at (row, col) pixels; solid on its slice, dashed off it."""
    draw = ImageDraw.Draw(img)
    radius = max(6, min(img.size) // 28)
    box = [col - radius, row - radius, col + radius, row + radius]
    draw.ellipse(box, outline=(0, 0, 0), width=4)
    if on_slice:
        draw.ellipse(box, outline=marker.color, width=2)
        draw.line([(col, row - 2), (col, row + 2)], fill=marker.color)
        draw.line([(col - 2, row), (col + 2, row)], fill=marker.color)
    else:  # the peak is on another slice: a dashed ring at its in-plane position
        for start in range(0, 360, 45):
            draw.arc(box, start, start + 22, fill=marker.color, width=2)
    if marker.label:
        size = max(10, min(img.size) // 22)
        draw.text(
            (col + radius + 2, row - radius),
            marker.label,
            fill=marker.color,
            font=_font(size),
            stroke_width=max(1, size // 8),
            stroke_fill=(0, 0, 0),
        )


def render_slice(
    volume_xyz: np.ndarray,
    plane: Plane,
    index: int,
    window: Window,
    *,
    spacing_xyz: Sequence[float] = (1.0, 1.0, 1.0),
    convention: Convention = "radiological",
    heat_xyz: np.ndarray | None = None,
    opacity: float = 0.45,
    threshold: float = 0.2,
    cmap: str = DEFAULT_CMAP,
    labels: bool = True,
    crosshair_xyz: Sequence[int] | None = None,
    min_long_side: int = 256,
    outline_xyz: np.ndarray | None = None,
    lesion_xyz: np.ndarray | None = None,
    markers: Sequence[Marker] = (),
) -> np.ndarray:
    """One displayable slice: windowed, optionally with a heat-map overlay, labelled.

    Args:
        volume_xyz: (X, Y, Z) canonical intensities.
        plane, index, convention: which slice and how it is oriented (see :func:`extract_slice`).
        window: the intensity window.
        spacing_xyz: voxel size in mm, so the image keeps its true proportions.
        heat_xyz: optional (X, Y, Z) heat map in [0, 1] on the same grid (a Grad-CAM volume).
        opacity, threshold, cmap: overlay settings (see :func:`blend_overlay`).
        labels: draw the orientation letters at the edges.
        crosshair_xyz: optional voxel (x, y, z) whose other-plane lines are drawn.
        min_long_side: enlarge small slices to at least this many pixels.
        outline_xyz: optional (X, Y, Z) bool mask on the same grid (the brain mask) whose outline
            is drawn in cyan, one display pixel wide.
        lesion_xyz: optional (X, Y, Z) bool mask (the true lesion) whose boundary on this slice is
            drawn in :data:`LESION_COLOR`.
        markers: points (e.g. each network's peak) drawn as rings at their in-plane position:
            solid when on this slice, dashed when on another.

    Returns:
        (rows, cols, 3) uint8 RGB image.
    """
    gray = apply_window(extract_slice(volume_xyz, plane, index, convention), window)
    if heat_xyz is not None:
        if heat_xyz.shape != volume_xyz.shape:
            raise ConfigError(
                f"Heat map shape {heat_xyz.shape} differs from the volume {volume_xyz.shape}; "
                "map it onto the volume grid first."
            )
        rgb = blend_overlay(
            gray, extract_slice(heat_xyz, plane, index, convention), opacity, threshold, cmap
        )
    else:
        rgb = np.repeat(gray[..., None], 3, axis=2)
    spacing_rc = pixel_spacing(spacing_xyz, plane)
    out_rc = display_size(gray.shape, spacing_rc, min_long_side)
    img = Image.fromarray(rgb)
    if out_rc != gray.shape:
        img = img.resize((out_rc[1], out_rc[0]), Image.Resampling.BILINEAR)
    if outline_xyz is not None:
        img = _draw_outline(img, extract_slice(outline_xyz, plane, index, convention), out_rc)
    if lesion_xyz is not None:
        if lesion_xyz.shape != volume_xyz.shape:
            raise ConfigError(
                f"Lesion mask shape {lesion_xyz.shape} differs from the volume "
                f"{volume_xyz.shape}; it must be on the volume grid."
            )
        mask_rc = extract_slice(lesion_xyz, plane, index, convention).astype(bool)
        if mask_rc.any():
            img = _draw_lesion_outline(img, mask_rc, LESION_COLOR)
    if crosshair_xyz is not None:
        r, c = display_position(volume_xyz.shape, plane, crosshair_xyz, convention)
        _draw_crosshair(
            img, (r + 0.5) * out_rc[0] / gray.shape[0], (c + 0.5) * out_rc[1] / gray.shape[1]
        )
    fixed = plane_layout(plane).fixed_axis
    for marker in markers:
        r, c = display_position(volume_xyz.shape, plane, marker.xyz, convention)
        row = (r + 0.5) * out_rc[0] / gray.shape[0]
        col = (c + 0.5) * out_rc[1] / gray.shape[1]
        _draw_marker(img, row, col, marker, on_slice=int(marker.xyz[fixed]) == int(index))
    if labels:
        _draw_labels(img, edge_labels(plane, convention))
    return np.asarray(img)


def _draw_outline(img: Image.Image, mask_rc: np.ndarray, out_rc: tuple[int, int]) -> Image.Image:
    """``img`` with the boundary of a 2D bool mask (resized to ``out_rc``) in cyan."""
    m = Image.fromarray(np.asarray(mask_rc, dtype=bool).astype(np.uint8) * 255)
    m = np.asarray(m.resize((out_rc[1], out_rc[0]), Image.Resampling.NEAREST)) > 0
    inner = m.copy()
    inner[1:, :] &= m[:-1, :]
    inner[:-1, :] &= m[1:, :]
    inner[:, 1:] &= m[:, :-1]
    inner[:, :-1] &= m[:, 1:]
    rgb = np.array(img)
    rgb[m & ~inner] = (0, 220, 255)
    return Image.fromarray(rgb)


def encode_png(image: np.ndarray, compress_level: int = 1) -> bytes:
    """PNG bytes of a (rows, cols) or (rows, cols, 3) uint8 image (level 1: fast, lossless)."""
    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format="PNG", compress_level=compress_level)
    return buf.getvalue()


def draw_planes(
    volume_xyz: np.ndarray,
    point_xyz: Sequence[int],
    window: Window,
    *,
    spacing_xyz: Sequence[float] = (1.0, 1.0, 1.0),
    convention: Convention = "radiological",
    crosshair: bool = True,
    outline_xyz: np.ndarray | None = None,
    lesion_xyz: np.ndarray | None = None,
) -> dict[Plane, bytes]:
    """The viewer's three planes through voxel ``point_xyz``, as PNG bytes per plane.

    What the Analyze page draws on every slider step, and what ``benchmarks/bench_viewer.py``
    times. ``crosshair`` marks where the other two planes cut each one; ``outline_xyz`` is an
    optional mask whose outline is drawn, ``lesion_xyz`` the true lesion (see
    :func:`render_slice`).
    """
    out: dict[Plane, bytes] = {}
    for plane in PLANES:
        index = point_xyz[plane_layout(plane).fixed_axis]
        img = render_slice(
            volume_xyz, plane, index, window, spacing_xyz=spacing_xyz, convention=convention,
            crosshair_xyz=point_xyz if crosshair else None, outline_xyz=outline_xyz,
            lesion_xyz=lesion_xyz,
        )  # fmt: skip
        out[plane] = encode_png(img)
    return out


def draw_overlays(
    volume_xyz: np.ndarray,
    plane: Plane,
    index: int,
    window: Window,
    heats_xyz: Mapping[str, np.ndarray],
    *,
    spacing_xyz: Sequence[float] = (1.0, 1.0, 1.0),
    convention: Convention = "radiological",
    opacity: float = 0.45,
    threshold: float = 0.2,
    cmap: str = DEFAULT_CMAP,
    lesion_xyz: np.ndarray | None = None,
    markers: Mapping[str, Sequence[Marker]] | None = None,
) -> dict[str, bytes]:
    """One slice with each heat map of ``heats_xyz`` (``{name: (X, Y, Z) in [0, 1]}``) on it.

    The Analyze page's Grad-CAM row (one image per network, same slice), as PNG bytes per name;
    ``benchmarks/bench_viewer.py`` times this too. ``lesion_xyz``: the true lesion outlined on
    each; ``markers``: ``{name: markers}`` drawn on that name's image (e.g. its peak).
    """
    out: dict[str, bytes] = {}
    for name, heat in heats_xyz.items():
        img = render_slice(
            volume_xyz, plane, index, window, spacing_xyz=spacing_xyz, convention=convention,
            heat_xyz=heat, opacity=opacity, threshold=threshold, cmap=cmap,
            lesion_xyz=lesion_xyz, markers=(markers or {}).get(name, ()),
        )  # fmt: skip
        out[name] = encode_png(img)
    return out


def colorbar_image(cmap: str = DEFAULT_CMAP, width: int = 256, height: int = 12) -> np.ndarray:
    """A horizontal (height, width, 3) uint8 colour bar, low (left) to high (right)."""
    lut = colormap_lut(cmap)
    idx = np.linspace(0, 255, width).astype(np.uint8)
    return np.repeat(lut[idx][None, :, :], height, axis=0)


def colorbar_legend(
    cmap: str = DEFAULT_CMAP, threshold: float = 0.0, width: int = 360, bar_height: int = 14
) -> np.ndarray:
    """A labelled colour bar: ticks 0, 0.25 .. 1 under the bar, values below ``threshold`` greyed.

    Args:
        cmap: one of :data:`COLORMAPS`.
        threshold: the overlay's "hide below" value; that part of the bar is shown grey and
            hatched, as it is not drawn on the slices.
        width: image width in pixels.
        bar_height: height of the coloured bar.

    Returns:
        ``(rows, width, 3)`` uint8 RGB on a white background.
    """
    size = 12
    pad = 14
    rows = bar_height + size + 10
    img = Image.new("RGB", (width, rows), (255, 255, 255))
    inner = width - 2 * pad
    bar = colorbar_image(cmap, inner, bar_height).copy()
    cut = round(float(np.clip(threshold, 0.0, 1.0)) * inner)
    if cut > 0:
        bar[:, :cut] = 200
        bar[::3, :cut] = 150  # hatched: hidden on the slices
    img.paste(Image.fromarray(bar), (pad, 0))
    draw = ImageDraw.Draw(img)
    for v in (0.0, 0.25, 0.5, 0.75, 1.0):
        x = pad + v * (inner - 1)
        draw.line([(x, bar_height), (x, bar_height + 3)], fill=(0, 0, 0))
        draw.text((x, bar_height + 4), f"{v:g}", fill=(0, 0, 0), font=_font(size), anchor="mt")
    return np.asarray(img)
