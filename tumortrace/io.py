"""Reading and writing volumes: the entry points for NIfTI, DICOM series (folder or zip), uploads.

:func:`load_volume` and :func:`load_upload` detect the format from the content (gzip/zip/NIfTI/MGH/
DICOM magic, then the name) and hand the file to its reader: :mod:`tumortrace.nifti`,
:mod:`tumortrace.mgh`, :mod:`tumortrace.dicom`, or :mod:`tumortrace.safezip` then the DICOM reader.
Every reader ends in :func:`~tumortrace.volume.volume_from_array`, so a volume loads to the same
canonical-RAS
:class:`~tumortrace.volume.Volume` whatever its storage order or file format. :func:`save_nifti`
writes one atomically.

Uploads are guarded (:mod:`tumortrace.guards`): the raw size is capped, gzip streams are
decompressed with a byte counter (a gzip bomb stops at the cap), zip members are checked before
anything is extracted (no absolute or ``..`` paths, no links, a member-count cap, a size cap from
the headers and again while extracting), and extracted files live only in a private temporary
directory that is always removed (:mod:`tumortrace.tempdirs`).

This module is the public reading API: :class:`Volume`, :func:`volume_from_array` and
:data:`SUPPORTED` are re-exported from where they are defined.
"""

from __future__ import annotations

import gzip
import os
import re
import stat
import zlib
from dataclasses import replace
from pathlib import Path

import nibabel as nib
import numpy as np

from tumortrace.config import IOLimits
from tumortrace.dicom import dicom_series, read_series
from tumortrace.errors import InvalidVolumeError, UnsafeArchiveError
from tumortrace.files import atomic_path
from tumortrace.guards import CHUNK, SUPPORTED, check_ratio, guarded, printable
from tumortrace.mgh import is_mgh_header, load_mgh
from tumortrace.nifti import GZIP_MAGIC, load_nifti, nifti_class
from tumortrace.safezip import extract_zip
from tumortrace.tempdirs import private_tempdir
from tumortrace.volume import Volume, volume_from_array

__all__ = [
    "SUPPORTED",
    "Volume",
    "load_upload",
    "load_volume",
    "save_nifti",
    "volume_from_array",
]

_ZIP_MAGICS = (b"PK\x03\x04", b"PK\x05\x06")


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


def _gunzip_members(folder: Path, scratch: Path, source: str, limits: IOLimits) -> list[Path]:
    """Gzip files under ``folder`` that are not NIfTI or MGZ (e.g. a Canon ``3000.dcm.gz``),
    decompressed into ``scratch`` with a byte counter: each file at most
    ``max_dicom_file_bytes``, all of them at most ``max_decompressed_bytes``, each within the
    compression-ratio cap."""
    out: list[Path] = []
    total = 0
    for path in sorted(folder.rglob("*.gz")):
        rel = path.relative_to(folder)
        name = path.name.lower()
        if any(p.startswith(".") for p in rel.parts) or name.endswith((".nii.gz", ".mgz")):
            continue
        if not path.is_file():
            continue
        with path.open("rb") as f:
            if f.read(2) != GZIP_MAGIC:
                continue
        shown = f"{source}: {printable(rel.as_posix())}"
        target = scratch / f"{len(out):05d}" / path.name[:-3]
        target.parent.mkdir()
        size = 0
        with gzip.open(path, "rb") as stream, target.open("wb") as dst:
            while chunk := stream.read(CHUNK):
                size += len(chunk)
                total += len(chunk)
                if size > limits.max_dicom_file_bytes or total > limits.max_decompressed_bytes:
                    raise UnsafeArchiveError(
                        f"{shown} decompresses to more than "
                        f"{min(limits.max_dicom_file_bytes, limits.max_decompressed_bytes):,} "
                        "bytes; expected one compressed DICOM file."
                    )
                dst.write(chunk)
        check_ratio(size, path.stat().st_size, shown, limits)
        out.append(target)
    return out


def _load_folder(folder: Path, source: str, limits: IOLimits) -> Volume:
    """Reads the one DICOM series in ``folder`` (LPS world -> RAS) as a :class:`Volume`.

    Every file's header is read and checked with pydicom first
    (:func:`~tumortrace.dicom.dicom_series`), gzip-compressed DICOM files included (gunzipped
    into a private temporary folder); SimpleITK/GDCM then decodes the validated files in slice
    order (:func:`~tumortrace.dicom.read_series`). A folder without DICOM images but with exactly
    one NIfTI or MGZ file (and no zip) is read as that file.
    """
    with private_tempdir() as scratch:
        extra = _gunzip_members(folder, Path(scratch), source, limits)
        plan, others = dicom_series(folder, source, limits, tuple(extra))
        if plan is not None:
            return read_series(plan, source, limits)
    others = [p for p in others if p not in extra]
    nifti = [p for p in others if p.name.lower().endswith((".nii", ".nii.gz", ".mgz", ".mgh"))]
    zips = [p for p in others if p.name.lower().endswith(".zip")]
    if len(nifti) == 1 and not zips:
        return _load_path(nifti[0], source, limits)
    if len(nifti) > 1:
        names = ", ".join(printable(p.name) for p in nifti[:5])
        kind = (
            "NIfTI"
            if all(p.name.lower().endswith((".nii", ".nii.gz")) for p in nifti)
            else "volume"
        )
        raise InvalidVolumeError(
            f"{source} holds {len(nifti)} {kind} files ({names}); expected one volume. "
            "Upload each volume on its own."
        )
    if zips:
        raise InvalidVolumeError(
            f"{source} holds another zip archive ({printable(zips[0].name)}); nested "
            "archives are not opened. Unzip it and upload the inner file."
        )
    raise InvalidVolumeError(f"{source}: no DICOM series found; expected {SUPPORTED}.")


def _load_zip(path: Path, source: str, limits: IOLimits) -> Volume:
    """Extracts a zip into a private temporary folder (checked first) and reads the folder."""
    with private_tempdir() as tmp:
        extract_zip(path, Path(tmp), source, limits)
        return _load_folder(Path(tmp), source, limits)


def _sniff(head: bytes, name: str) -> str:
    """Kind of a file from its first bytes (then its name): "nifti", "mgh", "zip", "dicom" or
    "unknown". A gzip stream is told apart by the first bytes it decompresses to."""
    lower = name.lower()
    if head[:2] == GZIP_MAGIC:
        try:
            inner = zlib.decompressobj(31).decompress(head, 64)
        except zlib.error:
            inner = b""
        return "mgh" if is_mgh_header(inner) or lower.endswith(".mgz") else "nifti"
    if nifti_class(head) is not None:
        return "nifti"
    if is_mgh_header(head):
        return "mgh"
    if head[:4] in _ZIP_MAGICS:
        return "zip"
    if head[128:132] == b"DICM":
        return "dicom"
    if lower.endswith((".nii", ".nii.gz")):
        return "nifti"  # lets the reader say precisely what is wrong with it
    if lower.endswith((".mgz", ".mgh")):
        return "mgh"
    return "unknown"


def load_volume(path: str | Path, limits: IOLimits = IOLimits()) -> Volume:  # noqa: B008
    """Loads a NIfTI or FreeSurfer MGH/MGZ file, a DICOM series folder or a zip of one series.

    The format is detected from the content (gzip/zip/NIfTI/DICOM magic), then the name. Sizes are
    checked from headers before any voxel array exists (see :class:`IOLimits`), and only the
    project's errors leave this function: a library's exception on hostile bytes is turned into an
    :class:`InvalidVolumeError` naming the file, and library warnings are silenced.

    Args:
        path: ``.nii``, ``.nii.gz``, ``.mgz``, ``.mgh``, a folder with one DICOM series (files of
            any name, in sub-folders, gzipped ``.dcm.gz`` too), or a ``.zip`` holding one.
        limits: size, shape and spacing guards.

    Returns:
        The validated canonical-RAS :class:`Volume` (``source`` = the file or folder name).

    Raises:
        InvalidVolumeError: missing, unreadable, truncated or invalid volume.
        UnsafeArchiveError: a gzip bomb, over a size cap, or a zip breaking a safety rule.
    """
    path = Path(path)
    source = printable(path.name or str(path))
    with guarded(source):
        return _load_path(path, source, limits)


def _load_path(path: Path, source: str, limits: IOLimits) -> Volume:
    """Dispatches a path by kind: a folder, then a regular file by its sniffed content."""
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
        return _load_folder(path, source, limits)
    if not stat.S_ISREG(st.st_mode):
        raise InvalidVolumeError(
            f"{printable(str(path))} is not a regular file (a device, pipe or socket); expected "
            f"{SUPPORTED}."
        )
    with path.open("rb") as f:
        head = f.read(540)
    kind = _sniff(head, path.name)
    if kind == "nifti":
        return load_nifti(path, source, limits)
    if kind == "mgh":
        return load_mgh(path, source, limits)
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
    gz = data[:2] == GZIP_MAGIC
    suffix = {
        "zip": ".zip",
        "dicom": ".dcm",
        "mgh": ".mgz" if gz else ".mgh",
        "nifti": ".nii.gz" if gz else ".nii",
    }[kind]
    with guarded(source), private_tempdir() as tmp:
        path = Path(tmp) / f"upload{suffix}"
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        volume = _load_path(path, source, limits)
    return replace(volume, source=source)
