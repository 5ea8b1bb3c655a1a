"""Reading and writing volumes: NIfTI, DICOM series (folder or zip), validation, canonical RAS.

Every reader ends in :func:`volume_from_array`, which validates the array and reorients it to the
closest canonical RAS orientation (nibabel's ``as_closest_canonical`` semantics: axes are permuted
and flipped, never resampled), so a volume loads to the same :class:`Volume` whatever its storage
order or file format.

Uploads are guarded: the raw size is capped, gzip streams are decompressed with a byte counter (a
gzip bomb stops at the cap), zip members are checked before anything is extracted (no absolute or
``..`` paths, no links, a member-count cap, a size cap from the headers and again while extracting),
and extracted files live only in a private temporary directory that is always removed.
"""

from __future__ import annotations

import contextlib
import gzip
import io
import logging
import os
import re
import stat
import tempfile
import time
import warnings
import zipfile
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path, PurePosixPath

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
from tumortrace.errors import InvalidVolumeError, TumorTraceError, UnsafeArchiveError
from tumortrace.files import atomic_path

__all__ = [
    "SUPPORTED",
    "Volume",
    "clean_stale_tempdirs",
    "load_upload",
    "load_volume",
    "printable",
    "save_nifti",
    "volume_from_array",
]

SUPPORTED = ".nii, .nii.gz, a folder holding one DICOM series, or a .zip of one DICOM series"
"""What :func:`load_volume` accepts, as shown in error messages."""

_CHUNK = 1 << 20
_TRAILING_SLACK = 16 << 20  # bytes tolerated after the data a NIfTI header declares
_GZIP_MAGIC = b"\x1f\x8b"
_ZIP_MAGICS = (b"PK\x03\x04", b"PK\x05\x06")
_RAS_ORNT = axcodes2ornt(("R", "A", "S"))
_LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])


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


def _spatial_shape(shape: tuple[int, ...], source: str, limits: IOLimits) -> tuple[int, int, int]:
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
            f"{source}: voxel spacing {_nums(spacing)} mm is out of range; expected "
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
    shape = _spatial_shape(data.shape, source, limits)
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


# --------------------------------------------------------------------------------------------------
# guards shared by every reader


def printable(text: str) -> str:
    """``text`` with control and undecodable characters escaped, so a message stays one line."""
    return "".join(c if c.isprintable() else c.encode("unicode_escape").decode() for c in text)


def _one_line(text: str) -> str:
    """Whitespace runs (newlines included) collapsed to one space; temporary paths hidden."""
    text = re.sub(
        re.escape(tempfile.gettempdir().rstrip("/")) + r"/tumortrace-[^\s'\"]*", "<archive>", text
    )
    return " ".join(printable(text).split())


def _nums(values, digits: int = 4) -> str:
    """``[1.0, 0.5]``: numbers rounded, as plain Python floats (no ``np.float64(...)``)."""
    return str([round(float(v), digits) for v in np.ravel(values)])


def _gb(n: float) -> str:
    return f"{n / 1e9:.2f} GB"


@contextlib.contextmanager
def _quiet_nibabel() -> Iterator[None]:
    """Library log chatter neither printed nor logged: nibabel's header fixes ("vox offset ...
    setting to minimum") and pydicom's value warnings ("Invalid value for VR UI ...")."""
    loggers = [nib.imageglobals.logger, logging.getLogger("pydicom")]
    saved = [(lg.handlers, lg.propagate) for lg in loggers]
    for lg in loggers:
        lg.handlers, lg.propagate = [logging.NullHandler()], False
    try:
        yield
    finally:
        for lg, (handlers, propagate) in zip(loggers, saved, strict=True):
            lg.handlers, lg.propagate = handlers, propagate


@contextlib.contextmanager
def _guarded(source: str) -> Iterator[None]:
    """Only the project's errors leave a reader; library warnings and log chatter are dropped.

    A :class:`TumorTraceError` passes through; anything else a library raises on hostile bytes
    (``NotImplementedError``, ``UnicodeDecodeError``, GDCM's ``RuntimeError``, ``MemoryError``...)
    becomes an :class:`InvalidVolumeError` naming the user's file, never a temporary path.
    """
    try:
        with (
            warnings.catch_warnings(),
            np.errstate(all="ignore"),
            _quiet_nibabel(),
        ):
            warnings.simplefilter("ignore")
            yield
    except TumorTraceError as err:
        text = str(err)
        clean = _one_line(text)  # a header value (e.g. a UID) may hold a newline
        if clean == text:
            raise
        raise type(err)(clean) from err
    except MemoryError as err:
        raise InvalidVolumeError(
            f"{source}: reading it needs more memory than this process may use; expected one "
            "brain MRI volume. Crop or resample it first."
        ) from err
    except OSError as err:
        raise InvalidVolumeError(
            f"{source}: cannot be read ({err.strerror or type(err).__name__})."
        ) from err
    except Exception as err:  # (the point: any library error on user bytes)
        detail = _one_line(str(err))[:300] or "no details"
        raise InvalidVolumeError(
            f"{source}: cannot read the file ({type(err).__name__}: {detail}); expected "
            f"{SUPPORTED}."
        ) from err


def _check_ratio(decompressed: int, compressed: int, source: str, limits: IOLimits) -> None:
    """Rejects a decompressed/compressed ratio over the cap (checked above a size floor)."""
    if decompressed <= limits.ratio_check_bytes:
        return
    ratio = decompressed / max(compressed, 1)
    if ratio > limits.max_compression_ratio:
        raise UnsafeArchiveError(
            f"{source}: {compressed:,} compressed bytes declare {decompressed:,} decompressed "
            f"({ratio:,.0f}x, over the {limits.max_compression_ratio:g}x cap); MRI compresses "
            "2-10x, so the file was rejected as a decompression bomb."
        )


def _check_voxels(shape: tuple[int, ...], source: str, limits: IOLimits, what: str) -> None:
    """Rejects more voxels than ``limits.max_voxels`` (from a header, before any array exists)."""
    n = int(np.prod(np.asarray(shape, dtype=np.int64)))
    if n > limits.max_voxels:
        dims = "x".join(str(int(s)) for s in shape)
        raise UnsafeArchiveError(
            f"{source}: {what} declares {dims} = {n:,} voxels ({_gb(4.0 * n)} as float32), over "
            f"the {limits.max_voxels:,}-voxel cap; expected one brain MRI volume. Crop or "
            "resample it first."
        )


# --------------------------------------------------------------------------------------------------
# NIfTI


def _nifti_class(head: bytes) -> type[nib.Nifti1Image] | None:
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
    _spatial_shape(stored_shape, source, limits)
    if dtype.kind not in "biuf" or dtype.fields is not None:
        raise InvalidVolumeError(
            f"{source}: voxel type {header.get_value_label('datatype')} ({dtype}) is not a real "
            "scalar; expected a grey-scale MRI volume (RGB or complex images are not supported)."
        )
    declared = offset + int(np.prod(stored_shape, dtype=np.int64)) * dtype.itemsize
    cap = limits.max_decompressed_bytes
    if declared > cap:
        raise UnsafeArchiveError(
            f"{source}: the header declares {declared:,} bytes of image data, over the "
            f"{cap:,}-byte cap; expected a single brain MRI volume. Resample or crop it first."
        )
    _check_voxels(stored_shape, source, limits, "the header")
    pixdim = np.asarray(header["pixdim"][1:4], dtype=np.float64)
    if not np.isfinite(pixdim).all() or (pixdim == 0).any():
        raise InvalidVolumeError(
            f"{source}: the header's voxel size (pixdim) is {tuple(float(p) for p in pixdim)}; "
            "expected three non-zero finite sizes in mm. The header is damaged: re-export it."
        )
    if compressed is not None:
        _check_ratio(declared, compressed, source, limits)
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
    klass = _nifti_class(bytes(buf))
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
            f"{source}: the NIfTI header is damaged ({_one_line(str(err))[:200]})."
        ) from err
    declared = _check_nifti_header(header, source, limits, compressed)
    limit = min(cap, declared + _TRAILING_SLACK)  # trailing bytes are never read into memory
    while True:
        chunk = stream.read(_CHUNK)
        if not chunk:
            break
        buf += chunk
        if len(buf) > limit:
            raise UnsafeArchiveError(
                f"{source}: decompressed data exceeds the {limit:,}-byte cap (the header declares "
                f"{declared:,} bytes); the file looks like a decompression bomb and was rejected."
            )
    if len(buf) < declared:
        raise InvalidVolumeError(
            f"{source} is truncated: {len(buf):,} of {declared:,} bytes present. Copy or download "
            "the file again."
        )
    return bytes(buf)


def _load_nifti(path: Path, source: str, limits: IOLimits) -> Volume:
    try:
        with path.open("rb") as f:
            gz = f.read(2) == _GZIP_MAGIC
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
        img = _nifti_class(raw).from_bytes(raw)  # type: ignore[union-attr]
        del raw
        data = img.get_fdata(dtype=np.float32, caching="unchanged")
        affine = img.affine
    except Exception as err:  # (damaged data block or header fields)
        raise InvalidVolumeError(
            f"{source}: cannot read the NIfTI image ({_one_line(str(err))[:200]})."
        ) from err
    if affine is None:
        raise InvalidVolumeError(f"{source}: the NIfTI header has no voxel-to-world affine.")
    return volume_from_array(data, affine, source, limits=limits)


def save_nifti(array: np.ndarray, affine: np.ndarray, path: str | Path) -> Path:
    """Writes an array as NIfTI atomically (temporary file in the same folder + ``os.replace``).

    Args:
        array: ``(X, Y, Z)`` array; bool is stored as uint8 and float64 as float32.
        affine: ``(4, 4)`` voxel -> world (RAS mm).
        path: ``.nii`` or ``.nii.gz`` destination; its folder is created.

    Returns:
        The written path.
    """
    path = Path(path)
    if not path.name.endswith((".nii", ".nii.gz")):
        raise InvalidVolumeError(f"save_nifti needs a .nii or .nii.gz path, got {path.name!r}.")
    array = np.asarray(array)
    if array.dtype == bool:
        array = array.astype(np.uint8)
    elif array.dtype == np.float64:
        array = array.astype(np.float32)
    img = nib.Nifti1Image(array, np.asarray(affine, dtype=np.float64))
    img.set_sform(img.affine, code=1)
    img.set_qform(img.affine, code=1)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        nib.save(img, tmp)
    return path


# --------------------------------------------------------------------------------------------------
# DICOM

_DICOM_SKIP = ("__MACOSX",)
_ZIP_METHODS = {
    zipfile.ZIP_STORED: "stored",
    zipfile.ZIP_DEFLATED: "deflate",
    zipfile.ZIP_BZIP2: "bzip2",
    zipfile.ZIP_LZMA: "lzma",
}
_PIXEL_DATA = 0x7FE00010
_IMAGE_TAGS = (0x00280002, 0x00280010, 0x00280011, 0x00280100)  # SamplesPerPixel ... BitsAllocated
_ZIP_METHOD_NAMES = {1: "shrink", 6: "implode", 9: "deflate64", 93: "zstandard", 99: "AES"}


def _sitk():
    import SimpleITK as sitk  # noqa: N813 (imported lazily: only DICOM needs it)

    sitk.ProcessObject.SetGlobalWarningDisplay(False)  # no ITK/GDCM chatter on stderr
    return sitk


@dataclass(frozen=True)
class _Slice:
    """What pydicom read from one DICOM image file's header (no pixel data)."""

    path: Path
    series: str
    rows: int
    columns: int
    frames: int
    iop: np.ndarray  # (6,) row then column direction cosines
    ipp: np.ndarray | None  # (3,) position of the first pixel, mm (LPS)
    pixel_spacing: np.ndarray | None  # (2,) row, column spacing in mm


def _tag(ds, name: str, rel: str, default=None):
    """A header value, or ``default`` when absent; a damaged value names its tag and file."""
    try:
        value = ds.get(name, default)
        return default if value is None or value == "" else value
    except Exception as err:  # (pydicom converts values lazily)
        raise InvalidVolumeError(
            f"{rel}: the DICOM tag {name} is damaged ({_one_line(str(err))[:120]})."
        ) from err


def _floats(ds, name: str, n: int, rel: str) -> np.ndarray | None:
    value = _tag(ds, name, rel)
    if value is None:
        return None
    try:
        arr = np.asarray([float(v) for v in value], dtype=np.float64)
    except (TypeError, ValueError) as err:
        raise InvalidVolumeError(
            f"{rel}: the DICOM tag {name} is not numeric ({value!r})."
        ) from err
    if arr.shape != (n,) or not np.isfinite(arr).all():
        raise InvalidVolumeError(
            f"{rel}: the DICOM tag {name} is {_nums(arr)}; expected {n} finite numbers."
        )
    return arr


def _int_tag(ds, name: str, rel: str, default: int) -> int:
    value = _tag(ds, name, rel, default)
    try:
        return int(value)
    except (TypeError, ValueError) as err:
        raise InvalidVolumeError(
            f"{rel}: the DICOM tag {name} is {value!r}; expected an integer."
        ) from err


def _read_slice(path: Path, rel: str, limits: IOLimits) -> _Slice | None:
    """Reads and checks one file's DICOM header with pydicom; None if it is not a DICOM image."""
    import pydicom
    from pydicom.errors import InvalidDicomError

    size = path.stat().st_size
    if size > limits.max_dicom_file_bytes:
        raise UnsafeArchiveError(
            f"{rel} is {size:,} bytes, over the {limits.max_dicom_file_bytes:,}-byte cap for one "
            "DICOM file; expected one slice of an MRI series."
        )
    try:
        ds = pydicom.dcmread(path, defer_size=4096)  # large values are skipped, not read
    except InvalidDicomError:
        return None  # not DICOM (a README, a NIfTI...): the caller decides
    except Exception as err:
        raise InvalidVolumeError(
            f"{rel}: the DICOM header is damaged ({type(err).__name__}: "
            f"{_one_line(str(err))[:150]})."
        ) from err
    if not any(tag in ds for tag in _IMAGE_TAGS):
        return None  # DICOMDIR, report or other non-image object
    from pydicom.valuerep import VR

    for group in (getattr(ds, "file_meta", None) or {}, ds):
        for tag in list(group.keys()):
            try:
                vr = getattr(group.get_item(tag), "VR", None)
            except Exception as err:  # (pydicom: unknown VR, misparsed element...)
                raise InvalidVolumeError(
                    f"{rel}: the DICOM header is damaged at element {tag} "
                    f"({type(err).__name__}: {_one_line(str(err))[:120]})."
                ) from err
            if vr is not None and vr not in VR.__members__:
                # GDCM reads an unknown VR as an implicit element and its length as 4 bytes,
                # then allocates that length (found by the long DICOM fuzz run: 1.2 GB).
                raise InvalidVolumeError(
                    f"{rel}: the DICOM element {tag} has an invalid value representation "
                    f"{printable(str(vr))!r}; the header is damaged."
                )
    samples = _int_tag(ds, "SamplesPerPixel", rel, 1)
    if samples != 1:
        raise InvalidVolumeError(
            f"{rel}: SamplesPerPixel is {samples}; expected 1 (a grey-scale MRI, not colour)."
        )
    bits = _int_tag(ds, "BitsAllocated", rel, 16)
    if bits not in (8, 16, 32):
        raise InvalidVolumeError(f"{rel}: BitsAllocated is {bits}; expected 8, 16 or 32.")
    rows, cols = _int_tag(ds, "Rows", rel, 0), _int_tag(ds, "Columns", rel, 0)
    for name, n in (("Rows", rows), ("Columns", cols)):
        if not limits.min_axis <= n <= limits.max_axis:
            raise InvalidVolumeError(
                f"{rel}: {name} is {n}; expected between {limits.min_axis} and "
                f"{limits.max_axis} pixels."
            )
    frames = _int_tag(ds, "NumberOfFrames", rel, 1)
    if not 1 <= frames <= limits.max_axis:
        raise InvalidVolumeError(
            f"{rel}: NumberOfFrames is {frames}; expected between 1 and {limits.max_axis}."
        )
    pixel_bytes = rows * cols * frames * bits // 8
    if pixel_bytes > limits.max_dicom_file_bytes:
        raise UnsafeArchiveError(
            f"{rel}: the header declares {pixel_bytes:,} bytes of pixels, over the "
            f"{limits.max_dicom_file_bytes:,}-byte cap for one DICOM file."
        )
    # An element whose length field was damaged swallows the rest of the file, PixelData included;
    # GDCM would then allocate that length. Native pixel data must have exactly the declared size.
    if _PIXEL_DATA not in ds:
        raise InvalidVolumeError(
            f"{rel}: no pixel data was found where the header ends; the header is damaged "
            "(an element's length is wrong) or the file is truncated."
        )
    length = ds.get_item(_PIXEL_DATA).length
    if length != 0xFFFFFFFF and length != pixel_bytes + (pixel_bytes % 2):  # not encapsulated
        raise InvalidVolumeError(
            f"{rel}: the pixel data holds {length:,} bytes but Rows x Columns x frames x "
            f"BitsAllocated declare {pixel_bytes:,}; the file is damaged or truncated."
        )
    iop = _floats(ds, "ImageOrientationPatient", 6, rel)
    if iop is None:
        iop = np.array([1.0, 0, 0, 0, 1, 0])
    if abs(np.linalg.norm(iop[:3]) - 1) > 0.01 or abs(np.linalg.norm(iop[3:]) - 1) > 0.01:
        raise InvalidVolumeError(
            f"{rel}: ImageOrientationPatient {_nums(iop)} is not two unit vectors; the header is "
            "damaged."
        )
    spacing = _floats(ds, "PixelSpacing", 2, rel)
    if spacing is not None and (spacing <= 0).any():
        raise InvalidVolumeError(
            f"{rel}: PixelSpacing is {_nums(spacing)} mm; expected two sizes above 0."
        )
    return _Slice(
        path=path,
        series=str(_tag(ds, "SeriesInstanceUID", rel, "")),
        rows=rows,
        columns=cols,
        frames=frames,
        iop=iop,
        ipp=_floats(ds, "ImagePositionPatient", 3, rel),
        pixel_spacing=spacing,
    )


def _files_under(folder: Path) -> list[Path]:
    """Regular files under ``folder`` (recursively), without hidden files or macOS forks."""
    out = []
    for p in sorted(folder.rglob("*")):
        rel = p.relative_to(folder).parts
        if any(part.startswith(".") or part in _DICOM_SKIP for part in rel):
            continue
        if p.is_file():
            out.append(p)
    return out


def _order_series(slices: list[_Slice], source: str, limits: IOLimits) -> list[Path]:
    """Checks one series' geometry and returns its files sorted along the slice normal.

    Rejected: different slice sizes or pixel spacings, mixed orientations, missing positions,
    duplicate positions (zero spacing), and non-uniform spacing (missing slices).
    """
    first = slices[0]
    frames = sum(s.frames for s in slices)
    _check_voxels((first.columns, first.rows, frames), source, limits, "the DICOM series")
    if len(slices) == 1:
        return [first.path]
    if any(s.frames > 1 for s in slices):
        raise InvalidVolumeError(
            f"{source}: the series mixes {len(slices)} files with multi-frame images; expected "
            "one multi-frame file or one file per slice."
        )
    for s in slices[1:]:
        if (s.rows, s.columns) != (first.rows, first.columns):
            raise InvalidVolumeError(
                f"{source}: slices have different sizes ({first.rows}x{first.columns} in "
                f"{first.path.name}, {s.rows}x{s.columns} in {s.path.name}); expected one series."
            )
        if not np.allclose(s.iop, first.iop, atol=1e-3):
            raise InvalidVolumeError(
                f"{source}: the series mixes slice orientations ({_nums(first.iop, 3)} "
                f"and {_nums(s.iop, 3)}, e.g. axial and sagittal); expected one stack "
                "of parallel slices. Export the series you want on its own."
            )
        if (s.pixel_spacing is None) != (first.pixel_spacing is None) or (
            s.pixel_spacing is not None and not np.allclose(s.pixel_spacing, first.pixel_spacing)
        ):
            raise InvalidVolumeError(
                f"{source}: slices have different PixelSpacing; expected one series."
            )
    if any(s.ipp is None for s in slices):
        raise InvalidVolumeError(
            f"{source}: some slices have no ImagePositionPatient; the slice order and spacing "
            "cannot be known. Export the series with its geometry."
        )
    normal = np.cross(first.iop[:3], first.iop[3:])
    pos = np.array([float(s.ipp @ normal) for s in slices])  # type: ignore[operator]
    order = np.argsort(pos, kind="stable")
    steps = np.diff(pos[order])
    dup = int(np.argmin(steps))
    if steps[dup] < 1e-3:
        a, b = slices[order[dup]].path.name, slices[order[dup + 1]].path.name
        raise InvalidVolumeError(
            f"{source}: slices {a} and {b} are at the same position ({pos[order[dup]]:.3f} mm "
            "along the slice normal): duplicated slices or zero slice spacing; expected one "
            "slice per position."
        )
    median = float(np.median(steps))
    worst = float(np.max(np.abs(steps - median)))
    if worst > 0.01 * median + 1e-3:
        raise InvalidVolumeError(
            f"{source}: the slice spacing is not uniform (from {steps.min():.3f} to "
            f"{steps.max():.3f} mm, median {median:.3f} mm): slices are missing or the series "
            "is mixed; expected evenly spaced slices. Export the complete series."
        )
    return [slices[i].path for i in order]


def _dicom_series(folder: Path, source: str, limits: IOLimits) -> tuple[list[Path], list[Path]]:
    """The one DICOM series' files in slice order, and the non-DICOM files found beside it.

    Returns ``([], others)`` when no DICOM image is under ``folder``.
    """
    files = _files_under(folder)
    if len(files) > limits.max_zip_members:
        raise UnsafeArchiveError(
            f"{source} holds {len(files):,} files, over the cap of {limits.max_zip_members:,}; "
            "expected one DICOM series."
        )
    series: dict[str, list[_Slice]] = {}
    others: list[Path] = []
    total = 0
    for path in files:
        rel = f"{source}: {printable(path.relative_to(folder).as_posix())}"
        total += path.stat().st_size
        if total > limits.max_decompressed_bytes:
            raise UnsafeArchiveError(
                f"{source} holds more than {limits.max_decompressed_bytes:,} bytes of files; "
                "expected one DICOM series."
            )
        found = _read_slice(path, rel, limits)
        if found is None:
            others.append(path)
        else:
            series.setdefault(found.series, []).append(found)
    if not series:
        return [], others
    if len(series) > 1:
        sizes = ", ".join(f"{uid or '(no UID)'} ({len(s)} files)" for uid, s in series.items())
        raise InvalidVolumeError(
            f"{source}: found {len(series)} DICOM series ({sizes}); expected exactly one. Export "
            "the series you want (e.g. the post-contrast T1) on its own."
        )
    (slices,) = series.values()
    return _order_series(slices, source, limits), others


def _load_dicom_dir(folder: Path, source: str, limits: IOLimits) -> Volume:
    """Reads the one DICOM series in ``folder`` (LPS world -> RAS) as a :class:`Volume`.

    Every file's header is read and checked with pydicom first (:func:`_read_slice`,
    :func:`_order_series`); SimpleITK/GDCM then decodes the validated files in slice order.
    """
    files, others = _dicom_series(folder, source, limits)
    if not files:
        nifti = [p for p in others if p.name.lower().endswith((".nii", ".nii.gz"))]
        zips = [p for p in others if p.name.lower().endswith(".zip")]
        if len(nifti) == 1 and not zips:
            return _load_nifti(nifti[0], source, limits)
        if len(nifti) > 1:
            names = ", ".join(printable(p.name) for p in nifti[:5])
            raise InvalidVolumeError(
                f"{source} holds {len(nifti)} NIfTI files ({names}); expected one volume. "
                "Upload each volume on its own."
            )
        if zips:
            raise InvalidVolumeError(
                f"{source} holds another zip archive ({printable(zips[0].name)}); nested "
                "archives are not opened. Unzip it and upload the inner file."
            )
        raise InvalidVolumeError(f"{source}: no DICOM series found; expected {SUPPORTED}.")
    sitk = _sitk()
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames([str(f) for f in files])
    try:
        image = reader.Execute()
    except RuntimeError as err:
        raise InvalidVolumeError(
            f"{source}: cannot decode the DICOM pixel data ({_one_line(str(err)).split(':')[-1]})."
        ) from err
    if image.GetNumberOfComponentsPerPixel() != 1:
        raise InvalidVolumeError(
            f"{source}: the DICOM series has {image.GetNumberOfComponentsPerPixel()} components "
            "per pixel; expected a grey-scale MRI."
        )
    if image.GetDimension() != 3:
        raise InvalidVolumeError(
            f"{source}: the DICOM series is {image.GetDimension()}D; expected a 3D volume."
        )
    data = sitk.GetArrayViewFromImage(image).transpose(2, 1, 0)  # (k, j, i) -> (i, j, k)
    lps = np.eye(4)
    lps[:3, :3] = np.asarray(image.GetDirection()).reshape(3, 3) * np.asarray(image.GetSpacing())
    lps[:3, 3] = image.GetOrigin()
    return volume_from_array(np.array(data), _LPS_TO_RAS @ lps, source, limits=limits)


# --------------------------------------------------------------------------------------------------
# zip archives


def _is_link(info: zipfile.ZipInfo) -> bool:
    return stat.S_ISLNK(info.external_attr >> 16)


def _member_parts(info: zipfile.ZipInfo, source: str) -> tuple[str, ...]:
    """Validated relative path parts of a zip member."""
    name = info.filename
    shown = printable(name)
    if name.startswith(("/", "\\")) or re.match(r"^[A-Za-z]:", name):
        raise UnsafeArchiveError(
            f"{source}: member {shown!r} has an absolute path; expected paths relative to the "
            "archive. Re-create the zip from inside the series folder."
        )
    parts = PurePosixPath(name.replace("\\", "/")).parts
    if ".." in parts:
        raise UnsafeArchiveError(
            f"{source}: member {shown!r} points outside the archive ('..'); such archives are "
            "rejected. Re-create the zip from inside the series folder."
        )
    if _is_link(info):
        raise UnsafeArchiveError(
            f"{source}: member {shown!r} is a symbolic link; links are rejected."
        )
    if info.flag_bits & 0x1 or info.compress_type == 99:
        raise UnsafeArchiveError(f"{source}: member {shown!r} is encrypted; expected a plain zip.")
    if info.compress_type not in _ZIP_METHODS:
        method = _ZIP_METHOD_NAMES.get(info.compress_type, "unknown")
        raise InvalidVolumeError(
            f"{source}: member {shown!r} uses zip compression method {info.compress_type} "
            f"({method}), which is not supported; expected stored or deflate. Re-create the zip "
            "with a standard tool."
        )
    if "\x00" in name:
        raise UnsafeArchiveError(f"{source}: member {shown!r} has a NUL byte in its name.")
    return parts


def _extract_zip(path: Path, dest: Path, source: str, limits: IOLimits) -> None:
    """Checks every member of a zip, then extracts it into ``dest`` with a running byte counter."""
    cap = limits.max_decompressed_bytes
    try:
        zf = zipfile.ZipFile(path)
    except UnicodeDecodeError as err:
        raise InvalidVolumeError(
            f"{source} is not a readable zip archive (a member name is not valid UTF-8)."
        ) from err
    except Exception as err:  # (BadZipFile, OSError, ValueError, struct.error...)
        raise InvalidVolumeError(
            f"{source} is not a readable zip archive ({_one_line(str(err))[:150]})."
        ) from err
    with zf:
        infos = zf.infolist()
        if len(infos) > limits.max_zip_members:
            raise UnsafeArchiveError(
                f"{source} has {len(infos):,} members, over the cap of {limits.max_zip_members:,}; "
                "expected one DICOM series. Zip only the series folder."
            )
        declared = sum(i.file_size for i in infos)
        if declared > cap:
            raise UnsafeArchiveError(
                f"{source} declares {declared:,} uncompressed bytes, over the {cap:,}-byte cap; "
                "expected one DICOM series."
            )
        _check_ratio(declared, path.stat().st_size, source, limits)
        members = [(info, _member_parts(info, source)) for info in infos]
        total = 0
        for info, parts in members:
            if info.is_dir() or not parts or parts[0] == "__MACOSX" or parts[-1].startswith("._"):
                continue
            target = dest.joinpath(*parts)
            shown = printable(info.filename)
            try:
                target.parent.mkdir(parents=True, exist_ok=True)
                with zf.open(info) as src, target.open("xb") as dst:
                    while chunk := src.read(_CHUNK):
                        total += len(chunk)
                        if total > cap:
                            raise UnsafeArchiveError(
                                f"{source}: extracted data exceeds the {cap:,}-byte cap although "
                                f"the headers declare {declared:,}; the archive is rejected."
                            )
                        dst.write(chunk)
            except TumorTraceError:
                raise
            except UnicodeDecodeError as err:
                raise InvalidVolumeError(
                    f"{source}: member {shown!r} has a name that is not valid UTF-8 in its local "
                    "header; the archive is damaged."
                ) from err
            except (FileExistsError, NotADirectoryError, IsADirectoryError) as err:
                raise InvalidVolumeError(
                    f"{source}: member {shown!r} is duplicated or clashes with a folder of the "
                    "same name; expected one file per name."
                ) from err
            except OSError as err:
                raise InvalidVolumeError(
                    f"{source}: member {shown!r} cannot be extracted ({err.strerror or err})."
                ) from err
            except Exception as err:  # (BadZipFile, zlib.error, EOFError...)
                raise InvalidVolumeError(
                    f"{source}: member {shown!r} is corrupt ({type(err).__name__}: "
                    f"{_one_line(str(err))[:150]})."
                ) from err


def _load_zip(path: Path, source: str, limits: IOLimits) -> Volume:
    with _private_tempdir() as tmp:
        _extract_zip(path, Path(tmp), source, limits)
        return _load_dicom_dir(Path(tmp), source, limits)


# --------------------------------------------------------------------------------------------------
# public entry points

_TEMP_PREFIX = "tumortrace-"


def _private_tempdir() -> tempfile.TemporaryDirectory[str]:
    """A fresh mode-0700 temporary directory, removed when its context exits (also on error).

    Its name carries the process id (``tumortrace-<pid>-...``) so that
    :func:`clean_stale_tempdirs` can tell a dead process's leftovers from a live one's.
    """
    return tempfile.TemporaryDirectory(prefix=f"{_TEMP_PREFIX}{os.getpid()}-")


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def clean_stale_tempdirs(max_age_s: float = 3600.0) -> list[Path]:
    """Removes ``tumortrace-*`` temporary folders left by killed processes (e.g. SIGKILL).

    A folder named ``tumortrace-<pid>-...`` is removed when that process no longer exists; an older
    unnamed-pid ``tumortrace-...`` folder when it is older than ``max_age_s``. Only folders owned by
    this user are touched. Called at start-up by the CLI and the app.

    Returns:
        The removed folders.
    """
    import shutil

    removed: list[Path] = []
    root = Path(tempfile.gettempdir())
    try:
        entries = list(root.glob(f"{_TEMP_PREFIX}*"))
    except OSError:
        return removed
    now = time.time()
    for p in entries:
        try:
            st = p.lstat()
            if not stat.S_ISDIR(st.st_mode) or st.st_uid != os.getuid():
                continue
            m = re.match(rf"{_TEMP_PREFIX}(\d+)-", p.name)
            stale = (
                not _pid_alive(int(m.group(1)))
                if m and int(m.group(1)) != os.getpid()
                else (m is None and now - st.st_mtime > max_age_s)
            )
            if stale:
                shutil.rmtree(p, ignore_errors=True)
                removed.append(p)
        except OSError:
            continue
    return removed


def _sniff(head: bytes, name: str) -> str:
    """Kind of a file from its first bytes (then its name): "nifti", "zip", "dicom" or "unknown"."""
    if head[:2] == _GZIP_MAGIC or _nifti_class(head) is not None:
        return "nifti"
    if head[:4] in _ZIP_MAGICS:
        return "zip"
    if head[128:132] == b"DICM":
        return "dicom"
    if name.lower().endswith((".nii", ".nii.gz")):
        return "nifti"  # lets the reader say precisely what is wrong with it
    return "unknown"


def load_volume(path: str | Path, limits: IOLimits = IOLimits()) -> Volume:  # noqa: B008
    """Loads a NIfTI file, a DICOM series folder or a zip of one DICOM series.

    The format is detected from the content (gzip/zip/NIfTI/DICOM magic), then the name. Sizes are
    checked from headers before any voxel array exists (see :class:`IOLimits`), and only the
    project's errors leave this function: a library's exception on hostile bytes is turned into an
    :class:`InvalidVolumeError` naming the file, and library warnings are silenced.

    Args:
        path: ``.nii``, ``.nii.gz``, a folder with one DICOM series, or a ``.zip`` holding one.
        limits: size, shape and spacing guards.

    Returns:
        The validated canonical-RAS :class:`Volume` (``source`` = the file or folder name).

    Raises:
        InvalidVolumeError: missing, unreadable, truncated or invalid volume.
        UnsafeArchiveError: a gzip bomb, over a size cap, or a zip breaking a safety rule.
    """
    path = Path(path)
    source = printable(path.name or str(path))
    with _guarded(source):
        return _load_path(path, source, limits)


def _load_path(path: Path, source: str, limits: IOLimits) -> Volume:
    try:
        st = os.stat(path)
    except FileNotFoundError:
        raise InvalidVolumeError(
            f"{printable(str(path))} does not exist; expected {SUPPORTED}."
        ) from None
    except OSError as err:
        raise InvalidVolumeError(
            f"{printable(str(path))} cannot be read ({err.strerror}); expected {SUPPORTED}."
        ) from None
    if stat.S_ISDIR(st.st_mode):
        return _load_dicom_dir(path, source, limits)
    if not stat.S_ISREG(st.st_mode):
        raise InvalidVolumeError(
            f"{printable(str(path))} is not a regular file (a device, pipe or socket); expected "
            f"{SUPPORTED}."
        )
    with path.open("rb") as f:
        head = f.read(540)
    kind = _sniff(head, path.name)
    if kind == "nifti":
        return _load_nifti(path, source, limits)
    if kind == "zip":
        return _load_zip(path, source, limits)
    if kind == "dicom":
        raise InvalidVolumeError(
            f"{source} is a single DICOM file; expected the whole series: pass its folder or a "
            ".zip of the folder."
        )
    raise InvalidVolumeError(f"{source} is not a recognised image file; expected {SUPPORTED}.")


def load_upload(data: bytes, filename: str, limits: IOLimits = IOLimits()) -> Volume:  # noqa: B008
    """Loads an uploaded file's bytes; nothing is written outside a private temporary directory.

    Args:
        data: the uploaded bytes.
        filename: the name the user gave (only its last component is kept, for messages).
        limits: guards; ``max_upload_bytes`` caps ``len(data)``.

    Returns:
        The :class:`Volume`, with ``source = "upload:<name>"``.

    Raises:
        UnsafeArchiveError: over the upload cap, a gzip bomb, or an unsafe zip.
        InvalidVolumeError: anything :func:`load_volume` rejects.
    """
    name = re.split(r"[\\/]", str(filename))[-1]
    name = re.sub(r"[^\w.\- ]", "_", name)[:200] or "upload"
    source = f"upload:{name}"
    if len(data) > limits.max_upload_bytes:
        raise UnsafeArchiveError(
            f"{source} is {len(data):,} bytes, over the upload cap of "
            f"{limits.max_upload_bytes:,}; expected one brain MRI volume."
        )
    kind = _sniff(bytes(data[:540]), name)
    if kind == "unknown":
        raise InvalidVolumeError(f"{source} is not a recognised image file; expected {SUPPORTED}.")
    suffix = {"zip": ".zip", "dicom": ".dcm"}.get(
        kind, ".nii.gz" if data[:2] == _GZIP_MAGIC else ".nii"
    )
    with _guarded(source), _private_tempdir() as tmp:
        path = Path(tmp) / f"upload{suffix}"
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        volume = _load_path(path, source, limits)
    return replace(volume, source=source)
