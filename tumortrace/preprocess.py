"""The one deterministic pipeline from a :class:`~tumortrace.io.Volume` to the model tensor.

Axis convention (the only place it is converted): :attr:`Volume.data` is canonical RAS
``(X, Y, Z)``; the model tensor is ``(1, D, H, W)`` with ``D = z``, ``H = y``, ``W = x``
(:func:`to_model_axes` / :func:`from_model_axes`).

Steps, all TorchIO transforms: ``ToCanonical`` -> anti-aliased ``Resample`` to
:attr:`PreprocessConfig.spacing_mm` -> brain-centred crop/pad (``Pad`` + ``Crop`` around the
centre of :func:`foreground_mask`) to :attr:`PreprocessConfig.shape_dhw` -> intensity
normalisation over the foreground (``Clamp`` + ``ZNormalization``, or ``RescaleIntensity`` for
percentile mode) -> float32. The Gaussian anti-aliasing before ``Resample`` runs in a
``tio.Lambda`` (see :func:`smooth_axes`).

Nothing assumes a zero background: the foreground comes from an Otsu threshold on a smoothed copy,
padding uses the measured background level, and statistics are taken inside the foreground, so raw
scanner intensities, z-scored volumes with a negative background, skull-on heads and skull-stripped
brains all land in the same place. :class:`GridMap` keeps the geometry needed to bring any
model-grid map (e.g. Grad-CAM) back onto the volume's voxel grid through world coordinates.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torchio as tio
from scipy import ndimage

from tumortrace.config import IOLimits, PreprocessConfig
from tumortrace.errors import InvalidVolumeError
from tumortrace.intensity import largest_component, otsu_threshold
from tumortrace.io import Volume

__all__ = [
    "DHW_TO_XYZ",
    "GridMap",
    "Preprocessed",
    "antialias_sigmas",
    "clip_range",
    "crop_centre",
    "foreground_mask",
    "from_model_axes",
    "model_to_volume",
    "preprocess",
    "smooth_axes",
    "to_model_axes",
]

_MASK = "foreground"
DHW_TO_XYZ = np.array(
    [[0, 0, 1, 0], [0, 1, 0, 0], [1, 0, 0, 0], [0, 0, 0, 1]],
    dtype=np.float64,
)
"""``(4, 4)`` model voxel ``(d, h, w, 1)`` -> canonical voxel ``(x, y, z, 1)``: x = w, y = h,
z = d (the affine form of :func:`to_model_axes`)."""


@dataclass(frozen=True)
class GridMap:
    """Geometry linking the model grid to the canonical volume grid.

    Attributes:
        model_affine: ``(4, 4)`` voxel ``(d, h, w)`` -> world RAS mm of the model grid.
        volume_affine: ``(4, 4)`` voxel ``(x, y, z)`` -> world RAS mm of :attr:`Volume.data`.
        volume_shape: ``(X, Y, Z)`` of :attr:`Volume.data`.
    """

    model_affine: np.ndarray
    volume_affine: np.ndarray
    volume_shape: tuple[int, int, int]

    def world_to_model(self, xyz_mm: np.ndarray) -> np.ndarray:
        """World RAS points ``(..., 3)`` mm -> continuous model indices ``(..., 3)`` (d, h, w)."""
        pts = np.asarray(xyz_mm, dtype=np.float64)
        inv = np.linalg.inv(self.model_affine)
        return pts @ inv[:3, :3].T + inv[:3, 3]


@dataclass(frozen=True)
class Preprocessed:
    """Output of :func:`preprocess`.

    Attributes:
        tensor: ``(1, D, H, W)`` float32 model input.
        grid: geometry to map model-grid arrays back with :func:`model_to_volume`.
        brain: ``(D, H, W)`` bool brain mask on the model grid (standard-space pipeline), or
            None (native pipeline).
    """

    tensor: torch.Tensor
    grid: GridMap
    brain: np.ndarray | None = None


def to_model_axes(a: np.ndarray | torch.Tensor) -> np.ndarray | torch.Tensor:
    """Canonical ``(..., X, Y, Z)`` -> model ``(..., D, H, W)`` = ``(..., Z, Y, X)``.

    Swaps the last and third-last axes; returns a view (call ``.contiguous()`` /
    ``np.ascontiguousarray`` if needed).
    """
    if isinstance(a, torch.Tensor):
        return a.transpose(-1, -3)
    return np.swapaxes(a, -1, -3)


def from_model_axes(a: np.ndarray | torch.Tensor) -> np.ndarray | torch.Tensor:
    """Model ``(..., D, H, W)`` -> canonical ``(..., X, Y, Z)``; inverts :func:`to_model_axes`."""
    return to_model_axes(a)


def foreground_mask(data: np.ndarray, sigma: float = 1.0) -> np.ndarray:
    """Head or brain mask that does not assume a zero (or any particular) background.

    Otsu's threshold on a Gaussian-smoothed copy (clipped to its 0.5-99.5th percentiles so bright
    vessels or a few hot voxels do not move it), then the largest connected component with its
    holes filled. Works for raw scanner intensities, z-scored volumes with a negative background,
    skull-on heads and skull-stripped brains.

    Args:
        data: ``(X, Y, Z)`` intensities.
        sigma: smoothing in voxels before thresholding.

    Returns:
        ``(X, Y, Z)`` bool mask (all True if no threshold separates anything).
    """
    data = np.asarray(data, dtype=np.float32)
    smooth = ndimage.gaussian_filter(data, sigma) if sigma > 0 else data
    sample = smooth.ravel()[:: max(1, smooth.size // 2_000_000)]
    lo, hi = np.percentile(sample, (0.5, 99.5))
    if hi <= lo:
        return np.ones(data.shape, dtype=bool)
    mask = smooth > otsu_threshold(np.clip(sample, lo, hi))
    if not mask.any():
        return np.ones(data.shape, dtype=bool)
    return ndimage.binary_fill_holes(largest_component(mask))


def crop_centre(mask: np.ndarray, target_xyz: tuple[int, int, int], margin: int = 2) -> np.ndarray:
    """Voxel ``(x, y, z)`` on which to centre a ``target_xyz`` window so it holds the brain.

    The centre of the mask's bounding box, except along z when the mask is taller than the
    window (a head with neck): then the window's top is anchored ``margin`` voxels above the top
    of the head, because what must be cut is the neck, not the vertex.

    Args:
        mask: ``(X, Y, Z)`` bool foreground on a canonical (RAS) grid.
        target_xyz: window size in voxels along x, y, z.
        margin: voxels kept above the head when anchoring along z.

    Returns:
        ``(3,)`` float continuous voxel coordinates.
    """
    idx = [np.flatnonzero(mask.any(axis=tuple(a for a in range(3) if a != ax))) for ax in range(3)]
    if any(len(i) == 0 for i in idx):
        return (np.asarray(mask.shape, dtype=np.float64) - 1) / 2
    lo = np.array([i[0] for i in idx], dtype=np.float64)
    hi = np.array([i[-1] for i in idx], dtype=np.float64)
    centre = (lo + hi) / 2
    if hi[2] - lo[2] + 1 > target_xyz[2]:
        centre[2] = hi[2] + margin - (target_xyz[2] - 1) / 2
    return centre


def _bounds(centre: np.ndarray, shape: tuple[int, ...], target: tuple[int, int, int]):
    """Pad and crop bounds ``(x0, x1, y0, y1, z0, z1)`` putting ``centre`` mid-window."""
    pad, crop = [], []
    for c, n, t in zip(centre, shape, target, strict=True):
        start = int(np.floor(c - (t - 1) / 2 + 0.5))
        end = start + t
        pad += [max(-start, 0), max(end - n, 0)]
        crop += [max(start, 0), max(n - end, 0)]
    return tuple(pad), tuple(crop)


def antialias_sigmas(
    spacing_xyz: tuple[float, float, float], target_xyz: tuple[float, float, float]
) -> tuple[float, ...]:
    """Gaussian sigmas in input voxels matching the point-spread function of a downsampling.

    Cardoso et al., MICCAI 2015 (the formula of TorchIO's ``Resample(antialias=True)``):
    ``sigma = sqrt((k**2 - 1) / (8 ln 2))`` for a downsampling factor ``k > 1``, else 0.
    """
    k = np.asarray(target_xyz, dtype=np.float64) / np.asarray(spacing_xyz, dtype=np.float64)
    var = np.where(k > 1, (k**2 - 1) / (8 * np.log(2)), 0.0)
    return tuple(float(s) for s in np.sqrt(var))


def smooth_axes(tensor: torch.Tensor, sigmas: tuple[float, ...]) -> torch.Tensor:
    """Separable Gaussian along the axes being downsampled; ``tensor`` is ``(1, X, Y, Z)``.

    scipy's separable filter is used instead of TorchIO's SimpleITK recursive Gaussian, which
    filters every axis and was about 4x slower on BraTS-size volumes here.
    """
    if not any(sigmas):
        return tensor
    a = tensor[0].numpy()
    for axis, sigma in enumerate(sigmas):
        if sigma > 0:
            a = ndimage.gaussian_filter1d(a, sigma, axis=axis, truncate=3.0)
    return torch.from_numpy(a)[None]


def _rounded(values: np.ndarray, digits: int) -> tuple[float, ...]:
    return tuple(round(float(v), digits) for v in values)


def check_resampling(
    volume: Volume,
    config: PreprocessConfig,
    limits: IOLimits = IOLimits(),  # noqa: B008 (frozen, immutable default)
) -> None:
    """Refuses a volume whose resampling to the model grid would be empty or too costly.

    Checked before any filtering: the field of view along each axis (``limits.min_fov_mm``), the
    voxels per axis at the model spacing (``limits.min_resampled_axis``), and the anti-aliasing
    cost, input voxels x Gaussian taps summed over the filtered axes
    (``limits.max_antialias_macs``; e.g. 512**3 voxels at 0.05 mm to 5 mm is about 1e11).

    Raises:
        InvalidVolumeError: naming the volume, the figure found and the bound.
    """
    spacing = np.asarray(volume.spacing, dtype=np.float64)
    fov = spacing * np.asarray(volume.shape, dtype=np.float64)
    if (fov < limits.min_fov_mm).any():
        raise InvalidVolumeError(
            f"{volume.source}: the field of view is {_rounded(fov, 2)} mm (shape "
            f"{volume.shape} at {_rounded(spacing, 4)} mm); expected at least "
            f"{limits.min_fov_mm:g} mm along each axis for a brain. Check the voxel size in the "
            "header."
        )
    target = np.asarray(config.spacing_mm[::-1], dtype=np.float64)
    resampled = np.floor(fov / target).astype(int)
    if (resampled < limits.min_resampled_axis).any():
        raise InvalidVolumeError(
            f"{volume.source}: at the model spacing {tuple(config.spacing_mm)} mm (D, H, W) the "
            f"volume would be {tuple(int(n) for n in resampled)} voxels (x, y, z); expected at "
            f"least {limits.min_resampled_axis} along each axis. Check the voxel size in the "
            "header."
        )
    sigmas = antialias_sigmas(volume.spacing, tuple(float(t) for t in target))
    taps = sum(2 * int(np.ceil(3.0 * s)) + 1 for s in sigmas if s > 0)
    macs = float(np.prod(volume.shape, dtype=np.float64)) * taps
    if macs > limits.max_antialias_macs:
        raise InvalidVolumeError(
            f"{volume.source}: {volume.shape} voxels at {_rounded(spacing, 4)} mm would "
            f"need an anti-aliasing filter of {taps} taps per voxel ({macs:.2g} operations, over "
            f"the {limits.max_antialias_macs:.2g} bound) to reach {tuple(config.spacing_mm)} mm; "
            "resample the volume nearer the model spacing first."
        )


def clip_range(
    values: np.ndarray, percentiles: tuple[float, float], source: str
) -> tuple[float, float]:
    """The intensity clip ``(lo, hi)`` of the brain's voxels at the card's percentiles.

    Raises:
        InvalidVolumeError: when the two percentiles coincide (no contrast to normalise).
    """
    lo, hi = np.percentile(values, percentiles)
    if hi - lo <= 1e-6 * max(abs(float(lo)), abs(float(hi)), 1e-30):
        raise InvalidVolumeError(
            f"{source}: no intensity contrast inside the brain after resampling (the "
            f"{percentiles} percentiles are both {lo:.4g}); expected an MRI volume."
        )
    return float(lo), float(hi)


def preprocess(volume: Volume, config: PreprocessConfig) -> Preprocessed:
    """Runs the pipeline on a volume.

    Args:
        volume: a loaded :class:`Volume` (canonical RAS ``(X, Y, Z)``).
        config: target spacing ``(D, H, W)`` mm, shape ``(D, H, W)`` and intensity mode.

    Returns:
        :class:`Preprocessed` with the ``(1, D, H, W)`` float32 tensor and its :class:`GridMap`.

    Raises:
        InvalidVolumeError: if the volume has no usable foreground contrast, or fails
            :func:`check_resampling`.
    """
    check_resampling(volume, config)
    subject = _resample(volume, config)
    subject = _crop_to_head(subject, config)
    subject = _normalise_intensity(subject, config, volume.source)
    return _model_input(subject, volume)


def _resample(volume: Volume, config: PreprocessConfig) -> tio.Subject:
    """The volume anti-aliased and resampled to ``config.spacing_mm`` (canonical orientation)."""
    target_spacing_xyz = tuple(float(s) for s in config.spacing_mm[::-1])
    image = tio.ScalarImage(
        tensor=torch.from_numpy(np.ascontiguousarray(volume.data, dtype=np.float32)[None]),
        affine=np.asarray(volume.affine, dtype=np.float64),
    )
    sigmas = antialias_sigmas(volume.spacing, target_spacing_xyz)
    geometry = tio.Compose(
        [
            tio.ToCanonical(copy=False),
            tio.Lambda(
                lambda t: smooth_axes(t, sigmas), types_to_apply=[tio.INTENSITY], copy=False
            ),
            tio.Resample(target_spacing_xyz, copy=False),
        ],
        copy=False,
    )
    return geometry(tio.Subject(image=image))


def _crop_to_head(subject: tio.Subject, config: PreprocessConfig) -> tio.Subject:
    """Adds the foreground mask (:data:`_MASK`) and pads / crops both to ``config.shape_dhw``
    around the head (:func:`crop_centre`); the image is padded with the background's median."""
    target_xyz = tuple(int(s) for s in config.shape_dhw[::-1])
    data = subject.image.data[0].numpy()
    mask = foreground_mask(data)
    outside = data[~mask]
    background = float(np.median(outside)) if outside.size else float(data.min())
    subject.add_image(
        tio.LabelMap(
            tensor=torch.from_numpy(mask[None].astype(np.uint8)), affine=subject.image.affine
        ),
        _MASK,
    )
    pad, crop = _bounds(crop_centre(mask, target_xyz), data.shape, target_xyz)
    return tio.Compose(
        [
            tio.Pad(pad, padding_mode=background, include=["image"], copy=False),
            tio.Pad(pad, padding_mode=0, include=[_MASK], copy=False),
            tio.Crop(crop, copy=False),
        ],
        copy=False,
    )(subject)


def _normalise_intensity(
    subject: tio.Subject, config: PreprocessConfig, source: str
) -> tio.Subject:
    """Percentile clip and z-score inside the mask (``"zscore"``), else rescale to [0, 1]."""
    fg = subject.image.data[0][subject[_MASK].data[0] > 0]
    if fg.numel() < 2:
        fg = subject.image.data.ravel()
    lo, hi = clip_range(fg.numpy(), config.percentiles, source)
    if config.intensity == "zscore":
        intensity = tio.Compose(
            [
                tio.Clamp(float(lo), float(hi), include=["image"], copy=False),
                tio.ZNormalization(masking_method=_MASK, include=["image"], copy=False),
            ],
            copy=False,
        )
    else:
        intensity = tio.RescaleIntensity(
            out_min_max=(0.0, 1.0),
            percentiles=config.percentiles,
            masking_method=_MASK,
            include=["image"],
            copy=False,
        )
    return intensity(subject)


def _model_input(subject: tio.Subject, volume: Volume) -> Preprocessed:
    """The ``(1, D, H, W)`` float32 model tensor and the map of its grid onto ``volume``'s."""
    out = subject.image
    tensor = to_model_axes(out.data.to(torch.float32)).contiguous()
    if not torch.isfinite(tensor).all():  # pragma: no cover - guarded by the checks above
        raise InvalidVolumeError(f"{volume.source}: preprocessing produced non-finite values.")
    grid = GridMap(
        model_affine=np.asarray(out.affine, dtype=np.float64) @ DHW_TO_XYZ,
        volume_affine=np.asarray(volume.affine, dtype=np.float64),
        volume_shape=tuple(int(s) for s in volume.data.shape),
    )
    return Preprocessed(tensor=tensor, grid=grid)


def model_to_volume(map_dhw: np.ndarray, grid: GridMap, order: int = 1) -> np.ndarray:
    """Maps a model-grid array back onto the canonical volume grid through world coordinates.

    Each volume voxel is sent to world space by ``grid.volume_affine`` and into the model grid by
    ``inv(grid.model_affine)``, and the map is interpolated there, so oblique affines work too.

    Args:
        map_dhw: ``(D, H, W)`` array on the model grid (e.g. a Grad-CAM map).
        grid: the :class:`GridMap` from :func:`preprocess`.
        order: spline order (0 nearest, 1 trilinear).

    Returns:
        ``(X, Y, Z)`` float32 on :attr:`Volume.data`'s grid; 0 outside the model field of view.
    """
    m = np.asarray(map_dhw, dtype=np.float32)
    if m.ndim != 3:
        raise ValueError(f"model_to_volume expects a (D, H, W) array, got shape {m.shape}")
    # On the (W, H, D) = x, y, z view an axis-aligned grid gives a diagonal matrix.
    m_xyz = np.ascontiguousarray(from_model_axes(m))
    matrix = np.linalg.inv(grid.model_affine @ np.linalg.inv(DHW_TO_XYZ)) @ grid.volume_affine
    linear, offset = matrix[:3, :3], matrix[:3, 3]
    diagonal = np.diag(linear)
    if order in (0, 1) and np.allclose(linear, np.diag(diagonal), atol=1e-9):
        return _separable_resample(m_xyz, diagonal, offset, tuple(grid.volume_shape), order)
    return ndimage.affine_transform(
        m_xyz,
        linear,
        offset=offset,
        output_shape=tuple(grid.volume_shape),
        order=order,
        mode="constant",
        cval=0.0,
    )


def _interp_weights(coords: np.ndarray, n: int, order: int) -> np.ndarray:
    """``(len(coords), n)`` 1D nearest (0) or linear (1) weights; zero rows outside ``[0, n-1]``."""
    w = np.zeros((coords.size, n), dtype=np.float32)
    if order == 0:
        ok = (coords >= -0.5) & (coords < n - 0.5)
        w[np.flatnonzero(ok), np.floor(coords[ok] + 0.5).astype(int)] = 1.0
        return w
    ok = (coords >= -1e-6) & (coords <= n - 1 + 1e-6)
    rows = np.flatnonzero(ok)
    if n == 1:
        w[rows, 0] = 1.0
        return w
    c = np.clip(coords[ok], 0, n - 1)
    i0 = np.minimum(np.floor(c).astype(int), n - 2)
    f = (c - i0).astype(np.float32)
    w[rows, i0] = 1.0 - f
    w[rows, i0 + 1] += f
    return w


def _separable_resample(
    m_xyz: np.ndarray,
    scale: np.ndarray,
    offset: np.ndarray,
    out_shape: tuple[int, int, int],
    order: int,
) -> np.ndarray:
    """Axis-aligned resampling as three matrix products (about 10x faster than scipy's loop).

    Output voxel ``o`` along axis ``a`` reads input coordinate ``scale[a] * o + offset[a]``.
    """
    wx, wy, wz = (
        _interp_weights(scale[a] * np.arange(out_shape[a]) + offset[a], m_xyz.shape[a], order)
        for a in range(3)
    )
    i, j, k = m_xyz.shape
    a = (m_xyz.reshape(i * j, k) @ wz.T).reshape(i, j, -1)  # (I, J, Z)
    a = np.tensordot(a, wy, axes=([1], [1]))  # (I, Z, Y)
    a = np.tensordot(wx, a, axes=([1], [0]))  # (X, Z, Y)
    return np.ascontiguousarray(a.transpose(0, 2, 1))
