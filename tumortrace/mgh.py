"""The FreeSurfer MGH/MGZ reader: the header is checked before any voxel is read, as for NIfTI.

An ``.mgz`` is a gzip-compressed ``.mgh``: a 284-byte big-endian header (version 1, the four
dimensions, the voxel type, the voxel sizes and direction cosines), the voxels in Fortran order,
then optional tags. The header is parsed by nibabel from the first 284 bytes and validated (shape,
voxel type, declared bytes, voxel count, voxel sizes, compression ratio) before the data is read
with a running byte counter, so a gzip bomb behind a small header stops at the cap.
"""

from __future__ import annotations

import gzip
import io
import os
import zlib
from pathlib import Path

import numpy as np

from tumortrace.config import IOLimits
from tumortrace.errors import InvalidVolumeError
from tumortrace.guards import (
    SUPPORTED,
    TRAILING_SLACK,
    check_declared_bytes,
    check_ratio,
    check_voxels,
    one_line,
    read_capped,
)
from tumortrace.volume import Volume, spatial_shape, volume_from_array

__all__ = ["MGH_HEADER_BYTES", "is_mgh_header", "load_mgh"]

MGH_HEADER_BYTES = 284
_VERSION = b"\x00\x00\x00\x01"  # the one MGH format version, a big-endian int32


def is_mgh_header(head: bytes) -> bool:
    """Whether (decompressed) bytes start like an MGH header: version 1, then four positive
    big-endian dimensions."""
    if len(head) < 20 or head[:4] != _VERSION:
        return False
    dims = np.frombuffer(head[4:20], dtype=">i4")
    return bool((dims > 0).all())


def _check_mgh_header(header, source: str, limits: IOLimits, compressed: int | None) -> int:
    """Validates an MGH header before any voxel is read; returns the declared byte count.

    Order: shape (a 4-D file with several frames is refused with its count), voxel type,
    declared bytes against ``max_decompressed_bytes``, voxel count, voxel sizes, ratio.
    """
    shape = tuple(int(s) for s in header.get_data_shape())
    dtype = header.get_data_dtype()
    spatial_shape(shape, source, limits)
    if dtype.kind not in "biuf":
        raise InvalidVolumeError(
            f"{source}: voxel type {dtype} is not a real scalar; expected a grey-scale MRI volume."
        )
    declared = MGH_HEADER_BYTES + int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    check_declared_bytes(declared, source, limits)
    check_voxels(shape, source, limits, "the header")
    zooms = np.asarray(header.get_zooms()[:3], dtype=np.float64)
    if not np.isfinite(zooms).all() or (zooms <= 0).any():
        raise InvalidVolumeError(
            f"{source}: the header's voxel size is {tuple(float(z) for z in zooms)}; expected "
            "three sizes above 0 in mm. The header is damaged: re-export it."
        )
    if compressed is not None:
        check_ratio(declared, compressed, source, limits)
    return declared


def _read_stream(
    stream: io.BufferedIOBase, source: str, limits: IOLimits, compressed: int | None
) -> tuple[object, bytes]:
    """The header (checked) and the bytes up to the end of the declared voxels."""
    from nibabel.freesurfer.mghformat import MGHHeader

    head = stream.read(MGH_HEADER_BYTES)
    if not is_mgh_header(head) or len(head) < MGH_HEADER_BYTES:
        raise InvalidVolumeError(
            f"{source} is not a FreeSurfer MGH image (no version-1 MGH header); expected "
            f"{SUPPORTED}."
        )
    try:
        header = MGHHeader(head)
        header.get_data_shape()
        header.get_data_dtype()
        header.get_zooms()
    except Exception as err:  # (nibabel raises several types for a damaged header)
        raise InvalidVolumeError(
            f"{source}: the MGH header is damaged ({one_line(str(err))[:200]})."
        ) from err
    declared = _check_mgh_header(header, source, limits, compressed)
    limit = min(limits.max_decompressed_bytes, declared + TRAILING_SLACK)
    return header, read_capped(stream, head, declared, limit, source)


def load_mgh(path: Path, source: str, limits: IOLimits) -> Volume:
    """Reads a ``.mgz`` or ``.mgh`` file (gzip detected from its magic) as a :class:`Volume`.

    Returns:
        The canonical-RAS :class:`Volume`; the stored ``(width, height, depth)`` array is the
        ``(i, j, k)`` of the header's vox2ras matrix.

    Raises:
        InvalidVolumeError: not MGH, a damaged header or data, a corrupt gzip stream, several
            frames.
        UnsafeArchiveError: over a size or ratio cap.
    """
    try:
        with path.open("rb") as f:
            gz = f.read(2) == b"\x1f\x8b"
            f.seek(0)
            if gz:
                compressed = os.fstat(f.fileno()).st_size
                with gzip.GzipFile(fileobj=f, mode="rb") as stream:
                    header, raw = _read_stream(stream, source, limits, compressed)
            else:
                header, raw = _read_stream(f, source, limits, None)
    except (EOFError, zlib.error, gzip.BadGzipFile) as err:
        raise InvalidVolumeError(
            f"{source}: the gzip stream is truncated or corrupt ({err}). Copy or download the "
            "file again."
        ) from err
    shape = tuple(int(s) for s in header.get_data_shape())  # type: ignore[attr-defined]
    dtype = header.get_data_dtype()  # type: ignore[attr-defined]
    data = np.frombuffer(raw, dtype=dtype, count=int(np.prod(shape)), offset=MGH_HEADER_BYTES)
    data = data.reshape(shape, order="F")
    try:
        affine = np.asarray(header.get_affine(), dtype=np.float64)  # type: ignore[attr-defined]
    except Exception as err:  # (a damaged direction-cosine block)
        raise InvalidVolumeError(
            f"{source}: the MGH header's geometry is damaged ({one_line(str(err))[:200]})."
        ) from err
    return volume_from_array(data, affine, source, limits=limits)
