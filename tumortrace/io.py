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

import gzip
import io
import os
import re
import stat
import tempfile
import zipfile
import zlib
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
from tumortrace.errors import InvalidVolumeError, UnsafeArchiveError
from tumortrace.files import atomic_path

__all__ = [
    "SUPPORTED",
    "Volume",
    "load_upload",
    "load_volume",
    "save_nifti",
    "volume_from_array",
]

SUPPORTED = ".nii, .nii.gz, a folder holding one DICOM series, or a .zip of one DICOM series"
"""What :func:`load_volume` accepts, as shown in error messages."""

_CHUNK = 1 << 20
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
            f"{source}: voxel spacing {tuple(np.round(spacing, 4))} mm is out of range; expected "
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
# NIfTI


def _nifti_class(head: bytes) -> type[nib.Nifti1Image] | None:
    """The nibabel single-file class matching a header's magic, or None."""
    if len(head) >= 540 and head[4:8] == b"n+2\x00":
        return nib.Nifti2Image
    if len(head) >= 348 and head[344:348] == b"n+1\x00":
        return nib.Nifti1Image
    return None


def _read_stream(stream: io.BufferedIOBase, source: str, limits: IOLimits) -> bytes:
    """Reads a (possibly decompressing) stream, checking the NIfTI header before the data.

    The header is parsed from the first 540 bytes: its shape is validated and its declared size
    checked against ``limits.max_decompressed_bytes`` before the voxel data is read; the rest is
    read in chunks with a running counter so a stream longer than the cap (a gzip bomb) stops there.
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
        stored_shape = header.get_data_shape()
        itemsize = header.get_data_dtype().itemsize
        offset = int(header.get_data_offset())
    except Exception as err:  # nibabel raises many types for a damaged header
        raise InvalidVolumeError(f"{source}: the NIfTI header is damaged ({err}).") from err
    _spatial_shape(stored_shape, source, limits)
    declared = offset + int(np.prod(stored_shape, dtype=np.int64)) * itemsize
    if declared > cap:
        raise UnsafeArchiveError(
            f"{source}: the header declares {declared:,} bytes of image data, over the "
            f"{cap:,}-byte cap; expected a single brain MRI volume. Resample or crop it first."
        )
    while True:
        chunk = stream.read(_CHUNK)
        if not chunk:
            break
        buf += chunk
        if len(buf) > cap:
            raise UnsafeArchiveError(
                f"{source}: decompressed data exceeds the {cap:,}-byte cap (the header declares "
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
                with gzip.GzipFile(fileobj=f, mode="rb") as stream:
                    raw = _read_stream(stream, source, limits)
            else:
                raw = _read_stream(f, source, limits)
    except (EOFError, zlib.error, gzip.BadGzipFile) as err:
        raise InvalidVolumeError(
            f"{source}: the gzip stream is truncated or corrupt ({err}). Copy or download the "
            "file again."
        ) from err
    try:
        img = _nifti_class(raw).from_bytes(raw)  # type: ignore[union-attr]
        data = img.get_fdata(dtype=np.float32, caching="unchanged")
        affine = img.affine
    except Exception as err:  # damaged data block or header fields
        raise InvalidVolumeError(f"{source}: cannot read the NIfTI image ({err}).") from err
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


def _sitk():
    import SimpleITK as sitk  # noqa: N813 (imported lazily: only DICOM needs it)

    return sitk


def _series_in(folder: Path) -> dict[str, list[str]]:
    """Maps each DICOM series UID under ``folder`` (recursively) to its sorted file names."""
    sitk = _sitk()
    found: dict[str, list[str]] = {}
    dirs = [folder, *sorted(p for p in folder.rglob("*") if p.is_dir())]
    for d in dirs:
        if not any(p.is_file() for p in d.iterdir()):
            continue
        for uid in sitk.ImageSeriesReader.GetGDCMSeriesIDs(str(d)) or ():
            if uid in found:
                raise InvalidVolumeError(
                    f"DICOM series {uid} is split over several folders under {folder.name}; "
                    "expected each series in one folder."
                )
            found[uid] = list(sitk.ImageSeriesReader.GetGDCMSeriesFileNames(str(d), uid))
    return found


def _load_dicom_dir(folder: Path, source: str, limits: IOLimits) -> Volume:
    """Reads the one DICOM series in ``folder`` (LPS world -> RAS) as a :class:`Volume`."""
    sitk = _sitk()
    series = _series_in(folder)
    if not series:
        nifti = [
            p for p in folder.rglob("*") if p.is_file() and p.name.endswith((".nii", ".nii.gz"))
        ]
        if len(nifti) == 1:
            return _load_nifti(nifti[0], source, limits)
        raise InvalidVolumeError(f"{source}: no DICOM series found; expected {SUPPORTED}.")
    if len(series) > 1:
        sizes = ", ".join(f"{uid} ({len(files)} files)" for uid, files in series.items())
        raise InvalidVolumeError(
            f"{source}: found {len(series)} DICOM series ({sizes}); expected exactly one. Export "
            "the series you want (e.g. the post-contrast T1) on its own."
        )
    (files,) = series.values()
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(files)
    try:
        image = reader.Execute()
    except RuntimeError as err:
        raise InvalidVolumeError(f"{source}: cannot read the DICOM series ({err}).") from err
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
    if name.startswith(("/", "\\")) or re.match(r"^[A-Za-z]:", name):
        raise UnsafeArchiveError(
            f"{source}: member {name!r} has an absolute path; expected paths relative to the "
            "archive. Re-create the zip from inside the series folder."
        )
    parts = PurePosixPath(name.replace("\\", "/")).parts
    if ".." in parts:
        raise UnsafeArchiveError(
            f"{source}: member {name!r} points outside the archive ('..'); such archives are "
            "rejected. Re-create the zip from inside the series folder."
        )
    if _is_link(info):
        raise UnsafeArchiveError(
            f"{source}: member {name!r} is a symbolic link; links are rejected."
        )
    if info.flag_bits & 0x1:
        raise UnsafeArchiveError(f"{source}: member {name!r} is encrypted; expected a plain zip.")
    return parts


def _extract_zip(path: Path, dest: Path, source: str, limits: IOLimits) -> None:
    """Checks every member of a zip, then extracts it into ``dest`` with a running byte counter."""
    cap = limits.max_decompressed_bytes
    try:
        zf = zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError) as err:
        raise InvalidVolumeError(f"{source} is not a readable zip archive ({err}).") from err
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
        members = [(info, _member_parts(info, source)) for info in infos]
        total = 0
        for info, parts in members:
            if info.is_dir() or not parts or parts[0] == "__MACOSX" or parts[-1].startswith("._"):
                continue
            target = dest.joinpath(*parts)
            target.parent.mkdir(parents=True, exist_ok=True)
            try:
                with zf.open(info) as src, target.open("xb") as dst:
                    while chunk := src.read(_CHUNK):
                        total += len(chunk)
                        if total > cap:
                            raise UnsafeArchiveError(
                                f"{source}: extracted data exceeds the {cap:,}-byte cap although "
                                f"the headers declare {declared:,}; the archive is rejected."
                            )
                        dst.write(chunk)
            except (zipfile.BadZipFile, zlib.error, EOFError, FileExistsError) as err:
                raise InvalidVolumeError(
                    f"{source}: member {info.filename!r} is corrupt or duplicated ({err})."
                ) from err


def _load_zip(path: Path, source: str, limits: IOLimits) -> Volume:
    with _private_tempdir() as tmp:
        _extract_zip(path, Path(tmp), source, limits)
        return _load_dicom_dir(Path(tmp), source, limits)


# --------------------------------------------------------------------------------------------------
# public entry points


def _private_tempdir() -> tempfile.TemporaryDirectory[str]:
    """A fresh mode-0700 temporary directory, removed when its context exits (also on error)."""
    return tempfile.TemporaryDirectory(prefix="tumortrace-")


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

    The format is detected from the content (gzip/zip/NIfTI/DICOM magic), then the name.

    Args:
        path: ``.nii``, ``.nii.gz``, a folder with one DICOM series, or a ``.zip`` holding one.
        limits: size, shape and spacing guards.

    Returns:
        The validated canonical-RAS :class:`Volume` (``source`` = the file or folder name).

    Raises:
        InvalidVolumeError: missing, unreadable, truncated or invalid volume.
        UnsafeArchiveError: a gzip bomb, or a zip breaking a safety rule.
    """
    path = Path(path)
    source = path.name or str(path)
    if path.is_dir():
        return _load_dicom_dir(path, source, limits)
    if not path.is_file():
        raise InvalidVolumeError(f"{path} does not exist; expected {SUPPORTED}.")
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
    with _private_tempdir() as tmp:
        path = Path(tmp) / f"upload{suffix}"
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        volume = load_volume(path, limits)
    return replace(volume, source=source)
