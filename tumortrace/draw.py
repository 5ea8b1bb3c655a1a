"""The Grad-CAM row's images: a slice drawn with its overlay, the true lesion's outline, markers
and orientation letters (PIL), PNG encoding, and the colour bar legend. (The viewer's three planes
are drawn in the browser, by ``mpr_view.py``, from the same :func:`tumortrace.viz.plane_layout`.)

The geometry, windows, colour maps and blending these images are made of are in
:mod:`tumortrace.viz` (display conventions in its docstring). No streamlit and no model code live
here either, so every function is testable on plain arrays.
"""

from __future__ import annotations

import io
from collections.abc import Mapping, Sequence
from typing import NamedTuple

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from tumortrace.config import CAM_DISPLAY_THRESHOLD
from tumortrace.errors import ConfigError
from tumortrace.viz import (
    DEFAULT_CMAP,
    Convention,
    EdgeLabels,
    Plane,
    Window,
    apply_window,
    blend_overlay,
    colormap_lut,
    display_position,
    display_size,
    edge_labels,
    extract_slice,
    pixel_spacing,
    plane_layout,
)

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
    threshold: float = CAM_DISPLAY_THRESHOLD,
    cmap: str = DEFAULT_CMAP,
    labels: bool = True,
    min_long_side: int = 256,
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
        min_long_side: enlarge small slices to at least this many pixels.
        lesion_xyz: optional (X, Y, Z) bool mask (the true lesion) whose boundary on this slice is
            drawn in :data:`LESION_COLOR`.
        markers: points (e.g. each network's peak) drawn as rings at their in-plane position:
            solid when on this slice, dashed when on another.

    Returns:
        (rows, cols, 3) uint8 RGB image.
    """
    cut = _Cut(volume_xyz.shape, plane, int(index), convention)
    gray = apply_window(extract_slice(volume_xyz, plane, index, convention), window)
    rgb = _coloured(gray, cut, heat_xyz, opacity, threshold, cmap)
    out_rc = display_size(gray.shape, pixel_spacing(spacing_xyz, plane), min_long_side)
    img = Image.fromarray(rgb)
    if out_rc != gray.shape:
        img = img.resize((out_rc[1], out_rc[0]), Image.Resampling.BILINEAR)
    if lesion_xyz is not None:
        img = _draw_true_lesion(img, cut, lesion_xyz)
    fixed = plane_layout(plane).fixed_axis
    for marker in markers:
        row, col = _pixel_centre(cut, marker.xyz, gray.shape, out_rc)
        _draw_marker(img, row, col, marker, on_slice=int(marker.xyz[fixed]) == int(index))
    if labels:
        _draw_labels(img, edge_labels(plane, convention))
    return np.asarray(img)


class _Cut(NamedTuple):
    """Which slice :func:`render_slice` draws: the volume's (X, Y, Z) shape, plane, slice index
    and display convention."""

    shape_xyz: tuple[int, ...]
    plane: Plane
    index: int
    convention: Convention


def _coloured(
    gray: np.ndarray,
    cut: _Cut,
    heat_xyz: np.ndarray | None,
    opacity: float,
    threshold: float,
    cmap: str,
) -> np.ndarray:
    """The (rows, cols) uint8 windowed slice as (rows, cols, 3) uint8 RGB, with the slice of the
    heat map ``heat_xyz`` (X, Y, Z) blended on when given (:func:`tumortrace.viz.blend_overlay`).

    Raises:
        ConfigError: the heat map is not on the volume's grid.
    """
    if heat_xyz is None:
        return np.repeat(gray[..., None], 3, axis=2)
    if heat_xyz.shape != cut.shape_xyz:
        raise ConfigError(
            f"Heat map shape {heat_xyz.shape} differs from the volume {cut.shape_xyz}; "
            "map it onto the volume grid first."
        )
    heat_rc = extract_slice(heat_xyz, cut.plane, cut.index, cut.convention)
    return blend_overlay(gray, heat_rc, opacity, threshold, cmap)


def _draw_true_lesion(img: Image.Image, cut: _Cut, lesion_xyz: np.ndarray) -> Image.Image:
    """``img`` with the boundary of the (X, Y, Z) lesion mask's slice in :data:`LESION_COLOR`.

    Raises:
        ConfigError: the mask is not on the volume's grid.
    """
    if lesion_xyz.shape != cut.shape_xyz:
        raise ConfigError(
            f"Lesion mask shape {lesion_xyz.shape} differs from the volume "
            f"{cut.shape_xyz}; it must be on the volume grid."
        )
    mask_rc = extract_slice(lesion_xyz, cut.plane, cut.index, cut.convention).astype(bool)
    return _draw_lesion_outline(img, mask_rc, LESION_COLOR) if mask_rc.any() else img


def _pixel_centre(
    cut: _Cut, point_xyz: Sequence[int], shape_rc: tuple[int, int], out_rc: tuple[int, int]
) -> tuple[float, float]:
    """(row, col) in output pixels of the centre of voxel ``point_xyz``'s in-plane position, on a
    (rows, cols) slice of ``shape_rc`` drawn at ``out_rc`` pixels."""
    r, c = display_position(cut.shape_xyz, cut.plane, point_xyz, cut.convention)
    return (r + 0.5) * out_rc[0] / shape_rc[0], (c + 0.5) * out_rc[1] / shape_rc[1]


def encode_png(image: np.ndarray, compress_level: int = 1) -> bytes:
    """PNG bytes of a (rows, cols) or (rows, cols, 3) uint8 image (level 1: fast, lossless)."""
    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format="PNG", compress_level=compress_level)
    return buf.getvalue()


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
    threshold: float = CAM_DISPLAY_THRESHOLD,
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
