"""The DICOM series reader: every slice's header checked with pydicom, then decoded by GDCM.

:func:`dicom_series` walks a folder, reads each file's header with pydicom (no pixel data) and
checks it (:func:`_read_slice`: sizes, value representations, pixel layout, geometry), groups the
images by series, requires exactly one, and orders its files along the slice normal
(:func:`_order_series`: one size, orientation and spacing; uniform, distinct positions).
:func:`read_series` then decodes the validated files with SimpleITK/GDCM and turns the LPS world
into a canonical-RAS :class:`~tumortrace.volume.Volume`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from tumortrace.config import IOLimits
from tumortrace.errors import InvalidVolumeError, UnsafeArchiveError
from tumortrace.guards import check_voxels, nums, one_line, printable
from tumortrace.volume import Volume, volume_from_array

__all__ = ["dicom_series", "read_series"]

_DICOM_SKIP = ("__MACOSX",)
_PIXEL_DATA = 0x7FE00010
_IMAGE_TAGS = (0x00280002, 0x00280010, 0x00280011, 0x00280100)  # SamplesPerPixel ... BitsAllocated
_LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])


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
            f"{rel}: the DICOM tag {name} is damaged ({one_line(str(err))[:120]})."
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
            f"{rel}: the DICOM tag {name} is {nums(arr)}; expected {n} finite numbers."
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


def _read_header(path: Path, rel: str, limits: IOLimits):
    """One file's DICOM header read with pydicom (large values skipped, no pixel data decoded).

    Returns:
        The pydicom dataset, or None when the file is not DICOM or not an image (a README, a NIfTI,
        a DICOMDIR or report): the caller decides what to do with it.

    Raises:
        UnsafeArchiveError: the file is over ``limits.max_dicom_file_bytes``.
        InvalidVolumeError: the header cannot be parsed.
    """
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
            f"{one_line(str(err))[:150]})."
        ) from err
    if not any(tag in ds for tag in _IMAGE_TAGS):
        return None  # DICOMDIR, report or other non-image object
    return ds


def _check_value_representations(ds, rel: str) -> None:
    """Rejects an element (file meta or data set) whose value representation is unknown."""
    from pydicom.valuerep import VR

    for group in (getattr(ds, "file_meta", None) or {}, ds):
        for tag in list(group.keys()):
            try:
                vr = getattr(group.get_item(tag), "VR", None)
            except Exception as err:  # (pydicom: unknown VR, misparsed element...)
                raise InvalidVolumeError(
                    f"{rel}: the DICOM header is damaged at element {tag} "
                    f"({type(err).__name__}: {one_line(str(err))[:120]})."
                ) from err
            if vr is not None and vr not in VR.__members__:
                # GDCM reads an unknown VR as an implicit element and its length as 4 bytes,
                # then allocates that length (found by the long DICOM fuzz run: 1.2 GB).
                raise InvalidVolumeError(
                    f"{rel}: the DICOM element {tag} has an invalid value representation "
                    f"{printable(str(vr))!r}; the header is damaged."
                )


def _pixel_layout(ds, rel: str, limits: IOLimits) -> tuple[int, int, int]:
    """Checks the pixel description against the caps and the pixel data element's length.

    Returns:
        ``(rows, columns, frames)`` of the image.
    """
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
    _check_pixel_data_length(ds, rel, pixel_bytes)
    return rows, cols, frames


def _check_pixel_data_length(ds, rel: str, pixel_bytes: int) -> None:
    """Native (not encapsulated) pixel data must hold exactly the ``pixel_bytes`` declared.

    An element whose length field was damaged swallows the rest of the file, PixelData included;
    GDCM would then allocate that length.
    """
    if _PIXEL_DATA not in ds:
        raise InvalidVolumeError(
            f"{rel}: no pixel data was found where the header ends; the header is damaged "
            "(an element's length is wrong) or the file is truncated."
        )
    elem = ds.get_item(_PIXEL_DATA, keep_deferred=True)
    if hasattr(elem, "length"):  # raw, as read
        length = elem.length
    else:  # pydicom converted it (a deferred read): its value is at most the per-file cap
        length = 0xFFFFFFFF if elem.is_undefined_length else len(elem.value or b"")
    if length != 0xFFFFFFFF and length != pixel_bytes + (pixel_bytes % 2):  # not encapsulated
        raise InvalidVolumeError(
            f"{rel}: the pixel data holds {length:,} bytes but Rows x Columns x frames x "
            f"BitsAllocated declare {pixel_bytes:,}; the file is damaged or truncated."
        )


def _orientation_and_spacing(ds, rel: str) -> tuple[np.ndarray, np.ndarray | None]:
    """The slice's direction cosines and pixel spacing, checked.

    Returns:
        ``(iop, spacing)``: ``(6,)`` row then column direction cosines (the identity plane when
        absent) and ``(2,)`` row, column spacing in mm (None when absent).
    """
    iop = _floats(ds, "ImageOrientationPatient", 6, rel)
    if iop is None:
        iop = np.array([1.0, 0, 0, 0, 1, 0])
    if abs(np.linalg.norm(iop[:3]) - 1) > 0.01 or abs(np.linalg.norm(iop[3:]) - 1) > 0.01:
        raise InvalidVolumeError(
            f"{rel}: ImageOrientationPatient {nums(iop)} is not two unit vectors; the header is "
            "damaged."
        )
    spacing = _floats(ds, "PixelSpacing", 2, rel)
    if spacing is not None and (spacing <= 0).any():
        raise InvalidVolumeError(
            f"{rel}: PixelSpacing is {nums(spacing)} mm; expected two sizes above 0."
        )
    return iop, spacing


def _read_slice(path: Path, rel: str, limits: IOLimits) -> _Slice | None:
    """Reads and checks one file's DICOM header with pydicom; None if it is not a DICOM image.

    Checked in this order: file size, header parse, value representations, pixel layout (samples,
    bits, rows, columns, frames, declared and stored pixel bytes), orientation, pixel spacing.
    """
    ds = _read_header(path, rel, limits)
    if ds is None:
        return None
    _check_value_representations(ds, rel)
    rows, cols, frames = _pixel_layout(ds, rel, limits)
    iop, spacing = _orientation_and_spacing(ds, rel)
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
    check_voxels((first.columns, first.rows, frames), source, limits, "the DICOM series")
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
                f"{source}: the series mixes slice orientations ({nums(first.iop, 3)} "
                f"and {nums(s.iop, 3)}, e.g. axial and sagittal); expected one stack "
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


def dicom_series(folder: Path, source: str, limits: IOLimits) -> tuple[list[Path], list[Path]]:
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


def read_series(files: list[Path], source: str, limits: IOLimits) -> Volume:
    """Decodes one validated DICOM series with SimpleITK/GDCM (LPS world -> RAS).

    Args:
        files: the series' files in slice order, as :func:`dicom_series` returns them.
        source: name shown in error messages.
        limits: guards passed on to :func:`~tumortrace.volume.volume_from_array`.

    Returns:
        The canonical-RAS :class:`~tumortrace.volume.Volume`; the image's ``(k, j, i)`` array is
        read as ``(i, j, k)`` before reorientation.
    """
    sitk = _sitk()
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames([str(f) for f in files])
    try:
        image = reader.Execute()
    except RuntimeError as err:
        raise InvalidVolumeError(
            f"{source}: cannot decode the DICOM pixel data ({one_line(str(err)).split(':')[-1]})."
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
