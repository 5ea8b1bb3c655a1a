"""The NIfTI reader: the header is checked before any voxel is read, gzip streams with a counter.

The first 540 bytes are parsed as a NIfTI-1/2 header and validated (shape, voxel type, declared
bytes, voxel count, pixel dimensions, compression ratio) before the voxel data is read; the data is
then read in chunks with a running byte counter, so a gzip bomb behind a small header stops at the
cap and never reaches memory.
"""

from __future__ import annotations

import gzip
import io
import os
import zlib
from pathlib import Path

import nibabel as nib
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

__all__ = ["GZIP_MAGIC", "load_nifti", "nifti_class"]

GZIP_MAGIC = b"\x1f\x8b"


def nifti_class(head: bytes) -> type[nib.Nifti1Image] | None:
    """The nibabel single-file class matching a header's magic, or None."""
    if len(head) >= 540 and head[4:8] == b"n+2\x00":
        return nib.Nifti2Image
    if len(head) >= 348 and head[344:348] == b"n+1\x00":
        return nib.Nifti1Image
    return None


def _check_nifti_header(
    header: nib.Nifti1Header, source: str, limits: IOLimits, compressed: int | None
) -> int:
    """Validates a NIfTI header before any voxel is read; returns the declared byte count.

    Order: shape, voxel type (complex and RGB are refused before decoding), declared bytes
    against ``max_decompressed_bytes``, voxel count, pixel dimensions, compression ratio.
    """
    stored_shape = header.get_data_shape()
    dtype = header.get_data_dtype()
    offset = int(header.get_data_offset())
    spatial_shape(stored_shape, source, limits)
    if dtype.kind not in "biuf" or dtype.fields is not None:
        raise InvalidVolumeError(
            f"{source}: voxel type {header.get_value_label('datatype')} ({dtype}) is not a real "
            "scalar; expected a grey-scale MRI volume (RGB or complex images are not supported)."
        )
    declared = offset + int(np.prod(stored_shape, dtype=np.int64)) * dtype.itemsize
    check_declared_bytes(declared, source, limits)
    check_voxels(stored_shape, source, limits, "the header")
    pixdim = np.asarray(header["pixdim"][1:4], dtype=np.float64)
    if not np.isfinite(pixdim).all() or (pixdim == 0).any():
        raise InvalidVolumeError(
            f"{source}: the header's voxel size (pixdim) is {tuple(float(p) for p in pixdim)}; "
            "expected three non-zero finite sizes in mm. The header is damaged: re-export it."
        )
    if compressed is not None:
        check_ratio(declared, compressed, source, limits)
    return declared


def _read_stream(
    stream: io.BufferedIOBase, source: str, limits: IOLimits, compressed: int | None = None
) -> bytes:
    """Reads a (possibly decompressing) stream, checking the NIfTI header before the data.

    The header is parsed from the first 540 bytes and validated (:func:`_check_nifti_header`)
    before the voxel data is read; the rest is read in chunks with a running counter, so a stream
    longer than the declared data plus 16 MiB (or the cap) stops there: a gzip bomb behind a small
    header never reaches memory.

    Args:
        compressed: size of the compressed file for the ratio check, or None (not compressed).
    """
    cap = limits.max_decompressed_bytes
    buf = bytearray(stream.read(540))
    klass = nifti_class(bytes(buf))
    if klass is None:
        raise InvalidVolumeError(
            f"{source} is not a NIfTI image (no NIfTI-1/2 magic in its header); "
            f"expected {SUPPORTED}."
        )
    try:
        size = 540 if klass is nib.Nifti2Image else 348
        header = klass.header_class(bytes(buf[:size]), check=False)
        header.get_data_shape()
        header.get_data_dtype()
        header.get_data_offset()
    except Exception as err:  # (nibabel raises many types for a damaged header)
        raise InvalidVolumeError(
            f"{source}: the NIfTI header is damaged ({one_line(str(err))[:200]})."
        ) from err
    declared = _check_nifti_header(header, source, limits, compressed)
    limit = min(cap, declared + TRAILING_SLACK)  # trailing bytes are never read into memory
    return read_capped(stream, bytes(buf), declared, limit, source)


def load_nifti(path: Path, source: str, limits: IOLimits) -> Volume:
    """Reads a ``.nii`` or ``.nii.gz`` file (gzip detected from its magic) as a :class:`Volume`.

    Raises:
        InvalidVolumeError: not NIfTI, a damaged header or data block, a corrupt gzip stream.
        UnsafeArchiveError: over a size or ratio cap (see :func:`_read_stream`).
    """
    try:
        with path.open("rb") as f:
            gz = f.read(2) == GZIP_MAGIC
            f.seek(0)
            if gz:
                compressed = os.fstat(f.fileno()).st_size
                with gzip.GzipFile(fileobj=f, mode="rb") as stream:
                    raw = _read_stream(stream, source, limits, compressed)
            else:
                raw = _read_stream(f, source, limits)
    except (EOFError, zlib.error, gzip.BadGzipFile) as err:
        raise InvalidVolumeError(
            f"{source}: the gzip stream is truncated or corrupt ({err}). Copy or download the "
            "file again."
        ) from err
    try:
        img = nifti_class(raw).from_bytes(raw)  # type: ignore[union-attr]
        del raw
        data = img.get_fdata(dtype=np.float32, caching="unchanged")
        affine = img.affine
    except Exception as err:  # (damaged data block or header fields)
        raise InvalidVolumeError(
            f"{source}: cannot read the NIfTI image ({one_line(str(err))[:200]})."
        ) from err
    if affine is None:
        raise InvalidVolumeError(f"{source}: the NIfTI header has no voxel-to-world affine.")
    return volume_from_array(data, affine, source, limits=limits)
