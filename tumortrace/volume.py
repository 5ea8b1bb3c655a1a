"""The volume record: a validated 3D array in canonical RAS orientation, and its one constructor.

Every reader ends in :func:`volume_from_array`, which validates the array and reorients it to the
closest canonical RAS orientation (nibabel's ``as_closest_canonical`` semantics: axes are permuted
and flipped, never resampled), so a volume loads to the same :class:`Volume` whatever its storage
order or file format.
"""

from __future__ import annotations

from dataclasses import dataclass

import nibabel as nib
import numpy as np
from nibabel.orientations import (
    apply_orientation,
    axcodes2ornt,
    inv_ornt_aff,
    io_orientation,
    ornt_transform,
)

from tumortrace.config import IOLimits
from tumortrace.errors import InvalidVolumeError
from tumortrace.guards import nums

__all__ = ["Volume", "spatial_shape", "volume_from_array"]

_RAS_ORNT = axcodes2ornt(("R", "A", "S"))


@dataclass(frozen=True)
class Volume:
    """A validated 3D volume in canonical RAS orientation.

    Attributes:
        data: ``(X, Y, Z)`` float32, indexed (left->right, posterior->anterior, inferior->superior).
        affine: ``(4, 4)`` float64 voxel -> world (RAS mm) transform of :attr:`data`.
        spacing: voxel size in mm along x, y, z of :attr:`data`.
        source: file name without directories, or ``"upload:<name>"``.
        orientation: axis codes of the array as stored in the file, e.g. ``("L", "P", "S")``.
        original_affine: ``(4, 4)`` affine of the array as stored in the file.
        original_shape: shape of the array as stored in the file.
    """

    data: np.ndarray
    affine: np.ndarray
    spacing: tuple[float, float, float]
    source: str
    orientation: tuple[str, str, str]
    original_affine: np.ndarray
    original_shape: tuple[int, int, int]

    @property
    def shape(self) -> tuple[int, int, int]:
        """Shape ``(X, Y, Z)`` of :attr:`data`."""
        return tuple(int(s) for s in self.data.shape)  # type: ignore[return-value]

    def to_original(self, array_xyz: np.ndarray) -> np.ndarray:
        """Maps an array on the canonical grid back onto the grid stored in the file.

        Args:
            array_xyz: ``(X, Y, Z, ...)`` array on the grid of :attr:`data` (e.g. a Grad-CAM map);
                trailing axes are carried along.

        Returns:
            ``original_shape + trailing`` array that pairs with :attr:`original_affine`.

        Raises:
            InvalidVolumeError: if the array's first three axes do not match :attr:`data`.
        """
        array_xyz = np.asarray(array_xyz)
        if array_xyz.shape[:3] != self.data.shape:
            raise InvalidVolumeError(
                f"to_original received an array of shape {array_xyz.shape}; expected the canonical "
                f"grid {self.data.shape} (plus optional trailing axes)."
            )
        back = ornt_transform(_RAS_ORNT, io_orientation(self.original_affine))
        return np.ascontiguousarray(apply_orientation(array_xyz, back))


# --------------------------------------------------------------------------------------------------
# validation and canonicalisation


def spatial_shape(shape: tuple[int, ...], source: str, limits: IOLimits) -> tuple[int, int, int]:
    """Checks a stored shape; returns its 3D spatial part (a trailing single volume is dropped)."""
    shape = tuple(int(s) for s in shape)
    full = shape
    while len(shape) > 3 and shape[-1] == 1:
        shape = shape[:-1]
    if len(shape) == 4:
        raise InvalidVolumeError(
            f"{source}: a 4D image with {shape[3]} volumes (shape {full}); expected one 3D volume. "
            "Save the single volume (e.g. the T1c contrast) as its own file and try again."
        )
    if len(shape) > 4:
        raise InvalidVolumeError(
            f"{source}: a {len(shape)}D image (shape {full}); expected a 3D volume."
        )
    if len(shape) < 3 or 1 in shape:
        raise InvalidVolumeError(
            f"{source}: a 2D image (shape {full}); expected a 3D volume with at least "
            f"{limits.min_axis} voxels along each axis. Upload the whole series, not one slice."
        )
    for axis, n in enumerate(shape):
        if not limits.min_axis <= n <= limits.max_axis:
            raise InvalidVolumeError(
                f"{source}: axis {axis} has {n} voxels (shape {full}); expected between "
                f"{limits.min_axis} and {limits.max_axis} voxels per axis. Crop or resample it."
            )
    return shape  # type: ignore[return-value]


def _check_affine(affine: np.ndarray, source: str, limits: IOLimits) -> np.ndarray:
    """The ``(4, 4)`` float64 affine, checked: finite, non-singular, voxel sizes within limits."""
    affine = np.asarray(affine, dtype=np.float64)
    if affine.shape != (4, 4) or not np.isfinite(affine).all():
        raise InvalidVolumeError(
            f"{source}: the voxel-to-world affine is not a finite 4x4 matrix (got shape "
            f"{affine.shape}); the file header is damaged. Re-export the volume."
        )
    if abs(np.linalg.det(affine[:3, :3])) < 1e-12:
        raise InvalidVolumeError(
            f"{source}: the voxel-to-world affine is singular; the header geometry is damaged. "
            "Re-export the volume with a valid orientation."
        )
    spacing = np.sqrt((affine[:3, :3] ** 2).sum(axis=0))
    if not ((spacing >= limits.min_spacing_mm) & (spacing <= limits.max_spacing_mm)).all():
        raise InvalidVolumeError(
            f"{source}: voxel spacing {nums(spacing)} mm is out of range; expected "
            f"each between {limits.min_spacing_mm} and {limits.max_spacing_mm} mm. Check the "
            "header's pixel dimensions."
        )
    return affine


def volume_from_array(
    data: np.ndarray,
    affine: np.ndarray,
    source: str = "array",
    *,
    limits: IOLimits = IOLimits(),  # noqa: B008 (frozen, immutable default)
) -> Volume:
    """Validates an array + affine and returns it as a canonical-RAS :class:`Volume`.

    Args:
        data: ``(X, Y, Z)`` or ``(X, Y, Z, 1)`` array of any real dtype, as stored.
        affine: ``(4, 4)`` voxel -> world (RAS mm) transform of ``data``.
        source: name shown in error messages and kept in :attr:`Volume.source`.
        limits: axis-length and spacing bounds.

    Returns:
        A :class:`Volume` whose ``data`` is float32 reoriented (permuted/flipped) to closest RAS.

    Raises:
        InvalidVolumeError: not 3D (or 4D with one volume), an axis or spacing out of range,
            non-finite values, a constant volume, or a damaged affine.
    """
    data = np.asarray(data)
    shape = spatial_shape(data.shape, source, limits)
    if data.dtype.kind not in "biuf":
        raise InvalidVolumeError(
            f"{source}: voxel type {data.dtype} is not a real scalar; expected a grey-scale MRI "
            "volume (RGB or complex images are not supported)."
        )
    data = data.reshape(shape)
    affine = _check_affine(affine, source, limits)
    data = data.astype(np.float32, copy=False)
    finite = np.isfinite(data)
    if not finite.all():
        bad = int(data.size - np.count_nonzero(finite))
        raise InvalidVolumeError(
            f"{source}: {bad} voxels are NaN or infinite; expected finite intensities. "
            "Re-export the volume without NaN/Inf (e.g. replace them by 0)."
        )
    lo, hi = float(data.min()), float(data.max())
    if lo == hi:
        raise InvalidVolumeError(
            f"{source}: the volume is constant (every voxel is {lo}); expected an MRI with "
            "contrast. The file is probably empty or a blank export."
        )
    ornt = io_orientation(affine)
    canonical = np.ascontiguousarray(apply_orientation(data, ornt))
    can_affine = affine @ inv_ornt_aff(ornt, shape)
    spacing = np.sqrt((can_affine[:3, :3] ** 2).sum(axis=0))
    return Volume(
        data=canonical,
        affine=can_affine,
        spacing=(float(spacing[0]), float(spacing[1]), float(spacing[2])),
        source=source,
        orientation=tuple(str(c) for c in nib.aff2axcodes(affine)),  # type: ignore[arg-type]
        original_affine=affine.copy(),
        original_shape=shape,
    )
