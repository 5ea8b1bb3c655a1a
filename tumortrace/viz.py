"""Pixels for the app: slice geometry, windowing, colour maps, Grad-CAM blending.

No streamlit and no model code live here, so every function is testable on plain arrays. The
viewer's drawing routines (PIL: outlines, markers, letters, PNG) are in :mod:`tumortrace.draw`,
the plotly charts in :mod:`tumortrace.figures`, the benchmark tables in :mod:`tumortrace.tables`.

Display conventions. Volumes arrive canonical RAS, indexed ``(x, y, z)`` = (left->right,
posterior->anterior, inferior->superior). A displayed slice is an image ``(rows, cols)``:

* axial (fixed z): anterior at the top;
* coronal and sagittal (fixed y / fixed x): superior at the top;
* sagittal: anterior on the screen's left (the patient faces left);
* axial and coronal columns follow the chosen convention: **radiological** shows the patient's
  left on the screen's right (as if facing the patient), **neurological** shows it on the left
  (as if looking from behind).

Every image :mod:`tumortrace.draw` renders carries its orientation letters at the four edges, so
the convention in use can always be read off the image itself.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Literal, NamedTuple

import numpy as np

from tumortrace.config import CAM_DISPLAY_THRESHOLD
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
    threshold: float = CAM_DISPLAY_THRESHOLD,
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
