"""The DICOM series reader: every slice's header checked with pydicom, then decoded by GDCM.

:func:`dicom_series` walks a folder, reads each file's header with pydicom (no pixel data) and
checks it (:func:`_read_slice`: sizes, value representations, pixel layout, geometry), groups the
images by series, requires exactly one, and orders its files along the slice normal
(:func:`_order_series`: one size, orientation and spacing; uniform, distinct positions).
:func:`read_series` then decodes the validated files with SimpleITK/GDCM and turns the LPS world
into a canonical-RAS :class:`~tumortrace.volume.Volume`.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from tumortrace.config import IOLimits
from tumortrace.errors import InvalidVolumeError, UnsafeArchiveError
from tumortrace.guards import check_voxels, nums, one_line, printable
from tumortrace.volume import Volume, volume_from_array

__all__ = ["SeriesPlan", "dicom_series", "read_series"]

_DICOM_SKIP = ("__MACOSX",)
_PIXEL_DATA = 0x7FE00010
_UNDEFINED = 0xFFFFFFFF  # the length field of encapsulated (compressed) pixel data
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
    ipp: np.ndarray | None  # (frames, 3) each frame's first-pixel position, mm (LPS); None: absent
    pixel_spacing: np.ndarray | None  # (2,) row, column spacing in mm
    mosaic: bool = False  # a Siemens MOSAIC: one volume's slices tiled into one image


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
    _check_pixel_data_length(ds, rel, pixel_bytes, frames)
    return rows, cols, frames


def _check_pixel_data_length(ds, rel: str, pixel_bytes: int, frames: int) -> None:
    """The pixel data must hold what the header declares: native data at least the declared
    bytes (trailing padding allowed, within the file), encapsulated (compressed) data at least one
    non-empty fragment per frame (:func:`_check_fragments`).

    The length is the raw element's length field while the element is unparsed (pydicom's
    ``RawDataElement``), else ``len(value)`` of the parsed ``DataElement``. An element whose length
    field was damaged swallows the rest of the file, PixelData included; GDCM would then allocate
    that length.
    """
    from pydicom.dataelem import RawDataElement

    if _PIXEL_DATA not in ds:
        raise InvalidVolumeError(
            f"{rel}: no pixel data was found where the header ends; the header is damaged "
            "(an element's length is wrong) or the file is truncated."
        )
    elem = ds.get_item(_PIXEL_DATA, keep_deferred=True)
    room = None  # bytes from the value's start to the end of the file, when known
    if isinstance(elem, RawDataElement):
        undefined = elem.length == _UNDEFINED
        length = elem.length
        if isinstance(getattr(ds, "filename", None), str) and elem.value_tell is not None:
            room = os.path.getsize(ds.filename) - elem.value_tell
    else:
        undefined = bool(elem.is_undefined_length)
        length = len(elem.value or b"")
    syntax = getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", None)
    encapsulated = undefined or bool(syntax is not None and syntax.is_encapsulated)
    if encapsulated:
        _check_fragments(ds, rel, frames, undefined)
        return
    if length < pixel_bytes:
        raise InvalidVolumeError(
            f"{rel}: the pixel data holds {length:,} bytes but Rows x Columns x frames x "
            f"BitsAllocated declare {pixel_bytes:,}; the file is damaged or truncated."
        )
    if room is not None and length > room:
        # a damaged length field: GDCM would allocate it (found by the DICOM fuzz run)
        raise InvalidVolumeError(
            f"{rel}: the pixel data's length field says {length:,} bytes but only {room:,} "
            "follow in the file; the file is damaged or truncated."
        )


def _check_fragments(ds, rel: str, frames: int, undefined: bool) -> None:
    """Encapsulated pixel data: a basic offset table item, then fragment items that parse, at
    least one non-empty fragment per frame (JPEG, JPEG-LS, JPEG 2000 and RLE store each frame in
    one or more fragments)."""
    import struct

    from pydicom.encaps import generate_fragments

    if not undefined:
        raise InvalidVolumeError(
            f"{rel}: the transfer syntax says compressed pixel data, but the pixel data element "
            "is not encapsulated; the file is damaged."
        )
    value = ds.get_item(_PIXEL_DATA).value or b""  # read now: at most the per-file cap
    order = "<"  # encapsulated transfer syntaxes are all explicit VR little endian
    try:
        group, element, bot = struct.unpack(f"{order}HHL", value[:8])
        if (group, element) != (0xFFFE, 0xE000) or 8 + bot > len(value):
            raise ValueError("no basic offset table item where the pixel data starts")
        sizes = [len(f) for f in generate_fragments(value[8 + bot :], endianness=order)]
    except (ValueError, struct.error) as err:
        raise InvalidVolumeError(
            f"{rel}: the compressed pixel data is damaged ({one_line(str(err))[:120]})."
        ) from err
    filled = sum(n > 0 for n in sizes)
    if filled < frames:
        raise InvalidVolumeError(
            f"{rel}: the compressed pixel data holds {filled} non-empty fragment(s) for {frames} "
            "frame(s); expected at least one per frame. The file is damaged or truncated."
        )


def _orientation_and_spacing(ds, rel: str) -> tuple[np.ndarray, np.ndarray | None]:
    """The slice's direction cosines and pixel spacing, checked (a classic, one-frame header).

    Returns:
        ``(iop, spacing)``: ``(6,)`` row then column direction cosines (the identity plane when
        absent) and ``(2,)`` row, column spacing in mm (None when absent).
    """
    iop = _floats(ds, "ImageOrientationPatient", 6, rel)
    return _checked_plane(iop, _floats(ds, "PixelSpacing", 2, rel), rel)


def _checked_plane(
    iop: np.ndarray | None, spacing: np.ndarray | None, rel: str
) -> tuple[np.ndarray, np.ndarray | None]:
    if iop is None:
        iop = np.array([1.0, 0, 0, 0, 1, 0])
    if abs(np.linalg.norm(iop[:3]) - 1) > 0.01 or abs(np.linalg.norm(iop[3:]) - 1) > 0.01:
        raise InvalidVolumeError(
            f"{rel}: ImageOrientationPatient {nums(iop)} is not two unit vectors; the header is "
            "damaged."
        )
    if spacing is not None and (spacing <= 0).any():
        raise InvalidVolumeError(
            f"{rel}: PixelSpacing is {nums(spacing)} mm; expected two sizes above 0."
        )
    return iop, spacing


def _group_item(groups, name: str):
    """The first item of functional-group macro ``name`` (e.g. ``PlanePositionSequence``), or
    None when the group or the macro is absent."""
    if groups is None or name not in groups:
        return None
    seq = groups[name].value
    return seq[0] if len(seq) else None


def _frame_value(shared, frame, macro: str, name: str, n: int, rel: str) -> np.ndarray | None:
    """A geometry value of one frame: from its own functional groups, else from the shared ones."""
    for groups in (frame, shared):
        item = _group_item(groups, macro)
        if item is not None and name in item:
            return _floats(item, name, n, rel)
    return None


def _enhanced_geometry(
    ds, rel: str, frames: int
) -> tuple[np.ndarray, np.ndarray | None, np.ndarray | None]:
    """The geometry of an enhanced multi-frame image, from its functional groups.

    Returns:
        ``(iop, spacing, ipp)``: ``(6,)`` direction cosines (one for all frames), ``(2,)`` pixel
        spacing in mm (or None), ``(frames, 3)`` each frame's position in mm (LPS, or None when
        a frame has none).

    Raises:
        InvalidVolumeError: the groups are damaged, count other than ``frames`` items, or give the
            frames different orientations or pixel spacings.
    """
    try:
        shared = _group_item(ds, "SharedFunctionalGroupsSequence")
        per_frame = list(ds["PerFrameFunctionalGroupsSequence"].value)
        if len(per_frame) != frames:
            raise InvalidVolumeError(
                f"{rel}: the header describes {len(per_frame)} frames for NumberOfFrames "
                f"{frames}; the file is damaged."
            )
        iops, spacings, ipps = [], [], []
        for frame in per_frame:
            iops.append(
                _frame_value(
                    shared, frame, "PlaneOrientationSequence", "ImageOrientationPatient", 6, rel
                )
            )
            spacings.append(
                _frame_value(shared, frame, "PixelMeasuresSequence", "PixelSpacing", 2, rel)
            )
            ipps.append(
                _frame_value(shared, frame, "PlanePositionSequence", "ImagePositionPatient", 3, rel)
            )
    except InvalidVolumeError:
        raise
    except Exception as err:  # (pydicom converts values lazily; a damaged sequence raises many)
        raise InvalidVolumeError(
            f"{rel}: the multi-frame functional groups are damaged "
            f"({type(err).__name__}: {one_line(str(err))[:120]})."
        ) from err
    for name, values in (("ImageOrientationPatient", iops), ("PixelSpacing", spacings)):
        known = [v for v in values if v is not None]
        if known and (
            len(known) != len(values) or not all(np.allclose(v, known[0], atol=1e-3) for v in known)
        ):
            raise InvalidVolumeError(
                f"{rel}: the frames of this multi-frame image have different {name} values; "
                "expected one stack of parallel slices."
            )
    iop, spacing = _checked_plane(iops[0], spacings[0], rel)
    ipp = None if any(p is None for p in ipps) else np.stack(ipps)
    return iop, spacing, ipp


def _is_mosaic(ds, rel: str) -> bool:
    image_type = _tag(ds, "ImageType", rel, [])
    values = [image_type] if isinstance(image_type, str) else list(image_type)
    return any(str(v).strip().upper() == "MOSAIC" for v in values)


def _read_slice(path: Path, rel: str, limits: IOLimits) -> _Slice | None:
    """Reads and checks one file's DICOM header with pydicom; None if it is not a DICOM image.

    Checked in this order: file size, header parse, value representations, pixel layout (samples,
    bits, rows, columns, frames, declared and stored pixel bytes or fragments), orientation,
    pixel spacing. An enhanced multi-frame image's geometry comes from its functional groups.
    """
    ds = _read_header(path, rel, limits)
    if ds is None:
        return None
    _check_value_representations(ds, rel)
    rows, cols, frames = _pixel_layout(ds, rel, limits)
    if "PerFrameFunctionalGroupsSequence" in ds:
        iop, spacing, ipp = _enhanced_geometry(ds, rel, frames)
    else:
        iop, spacing = _orientation_and_spacing(ds, rel)
        first = _floats(ds, "ImagePositionPatient", 3, rel)
        ipp = None if first is None or frames > 1 else first[None]
    return _Slice(
        path=path,
        series=str(_tag(ds, "SeriesInstanceUID", rel, "")),
        rows=rows,
        columns=cols,
        frames=frames,
        iop=iop,
        ipp=ipp,
        pixel_spacing=spacing,
        mosaic=_is_mosaic(ds, rel),
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


@dataclass(frozen=True)
class SeriesPlan:
    """One validated DICOM series, ready to decode.

    Attributes:
        files: the series' files; one file per slice in slice order, or one multi-frame file.
        frame_order: for one multi-frame file with known frame positions, the frames' indices in
            slice order (else None: the file's own order and SimpleITK's geometry).
        lps_affine: ``(4, 4)`` voxel ``(i, j, k)`` -> LPS mm from the headers, for
            ``frame_order``; None when SimpleITK's geometry is used.
    """

    files: tuple[Path, ...]
    frame_order: tuple[int, ...] | None = None
    lps_affine: np.ndarray | None = None


def _check_same_plane(slices: list[_Slice], source: str) -> None:
    """Every file has the first one's size, orientation and pixel spacing."""
    first = slices[0]
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


def _refuse_not_a_volume(
    slices: list[_Slice], pos: np.ndarray, names: list[str], source: str, limits: IOLimits
) -> None:
    """Refuses a series that is not one 3D stack: images at one position, too few slices, or
    several images per position (a 4-D series: fMRI, diffusion, perfusion)."""
    n = len(pos)
    order = np.argsort(pos, kind="stable")
    sorted_pos = pos[order]
    starts = np.flatnonzero(np.r_[True, np.diff(sorted_pos) >= 1e-3])
    counts = np.diff(np.r_[starts, n])
    distinct = len(starts)
    if distinct == 1 and n > 1:
        raise InvalidVolumeError(
            f"{source}: all {n} images lie at one slice position ({sorted_pos[0]:.3f} mm along "
            "the slice normal, zero slice spacing), so they are not a volume (e.g. repeated or "
            "time-series images of one slice); expected a 3D stack of slices."
        )
    if distinct > 1 and (counts == counts[0]).all() and counts[0] > 1:
        raise InvalidVolumeError(
            f"{source}: a 4-D series: {n} images at {distinct} slice positions, {counts[0]} "
            "volumes (e.g. fMRI, diffusion or perfusion); expected one 3D volume. Export a "
            "single volume, e.g. with dcm2niix, and upload it."
        )
    dup = int(np.argmax(counts > 1)) if (counts > 1).any() else None
    if dup is not None:
        a, b = names[order[starts[dup]]], names[order[starts[dup] + 1]]
        raise InvalidVolumeError(
            f"{source}: slices {a} and {b} are at the same position "
            f"({sorted_pos[starts[dup]]:.3f} mm along the slice normal): duplicated slices or "
            "zero slice spacing; expected one slice per position."
        )
    if n < limits.min_axis:
        what = "one 2-D image" if n == 1 else f"only {n} slices"
        raise InvalidVolumeError(
            f"{source}: the series holds {what}; expected a 3D volume of at least "
            f"{limits.min_axis} slices. Upload the whole series, not a few slices."
        )


def _order_series(slices: list[_Slice], source: str, limits: IOLimits) -> SeriesPlan:
    """Checks one series' geometry and returns its files (or frames) sorted along the normal.

    Rejected: different slice sizes or pixel spacings, mixed orientations, Siemens mosaics,
    images at one position, 4-D series, too few slices, missing or duplicate positions (zero
    spacing), non-uniform spacing (missing slices), and several multi-frame files.
    """
    first = slices[0]
    frames = sum(s.frames for s in slices)
    check_voxels((first.columns, first.rows, frames), source, limits, "the DICOM series")
    _check_same_plane(slices, source)
    if any(s.mosaic for s in slices):
        n = len(slices)
        raise InvalidVolumeError(
            f"{source}: a Siemens MOSAIC series: {n} image{'s' if n > 1 else ''}, each holding "
            "one volume's slices tiled side by side (fMRI or diffusion); expected one 3D volume "
            "stored as one image per slice. Convert it with dcm2niix first."
        )
    if any(s.ipp is None for s in slices):
        if len(slices) == 1 and first.frames > 1:
            return SeriesPlan(files=(first.path,))  # a classic multi-frame: SimpleITK's geometry
        if frames == 1:
            _refuse_not_a_volume(slices, np.zeros(1), [first.path.name], source, limits)
        raise InvalidVolumeError(
            f"{source}: some slices have no ImagePositionPatient; the slice order and spacing "
            "cannot be known. Export the series with its geometry."
        )
    normal = np.cross(first.iop[:3], first.iop[3:])
    ipp = np.concatenate([s.ipp for s in slices])  # type: ignore[misc]  # (frames, 3)
    names = [
        s.path.name if s.frames == 1 else f"{s.path.name} frame {k + 1}"
        for s in slices
        for k in range(s.frames)
    ]
    pos = ipp @ normal
    _refuse_not_a_volume(slices, pos, names, source, limits)
    if len(slices) > 1 and any(s.frames > 1 for s in slices):
        raise InvalidVolumeError(
            f"{source}: the series mixes {len(slices)} files with multi-frame images; expected "
            "one multi-frame file or one file per slice."
        )
    order = np.argsort(pos, kind="stable")
    steps = np.diff(pos[order])
    median = float(np.median(steps))
    worst = float(np.max(np.abs(steps - median)))
    if worst > 0.01 * median + 1e-3:
        raise InvalidVolumeError(
            f"{source}: the slice spacing is not uniform (from {steps.min():.3f} to "
            f"{steps.max():.3f} mm, median {median:.3f} mm): slices are missing or the series "
            "is mixed; expected evenly spaced slices. Export the complete series."
        )
    if len(slices) > 1:
        return SeriesPlan(files=tuple(slices[i].path for i in order))
    spacing = first.pixel_spacing if first.pixel_spacing is not None else np.ones(2)
    lps = np.eye(4)
    lps[:3, 0] = first.iop[:3] * spacing[1]  # i runs along a row: the column spacing
    lps[:3, 1] = first.iop[3:] * spacing[0]
    lps[:3, 2] = normal * median
    lps[:3, 3] = ipp[order[0]]
    return SeriesPlan(files=(first.path,), frame_order=tuple(int(i) for i in order), lps_affine=lps)


def dicom_series(
    folder: Path, source: str, limits: IOLimits, extra: tuple[Path, ...] = ()
) -> tuple[SeriesPlan | None, list[Path]]:
    """The one DICOM series under ``folder``, and the non-DICOM files found beside it.

    Args:
        folder: searched recursively (hidden files and ``__MACOSX`` skipped).
        source: name shown in messages.
        limits: caps on files, bytes and sizes.
        extra: more files read as if they were under ``folder`` (e.g. gunzipped ``.dcm.gz``).

    Returns:
        ``(plan, others)``; ``plan`` is None when no DICOM image was found.
    """
    files = [*_files_under(folder), *extra]
    if len(files) > limits.max_zip_members:
        raise UnsafeArchiveError(
            f"{source} holds {len(files):,} files, over the cap of {limits.max_zip_members:,}; "
            "expected one DICOM series."
        )
    series: dict[str, list[_Slice]] = {}
    others: list[Path] = []
    total = 0
    for path in files:
        shown = path.relative_to(folder).as_posix() if path.is_relative_to(folder) else path.name
        rel = f"{source}: {printable(shown)}"
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
        return None, others
    if len(series) > 1:
        sizes = ", ".join(f"{uid or '(no UID)'} ({len(s)} files)" for uid, s in series.items())
        raise InvalidVolumeError(
            f"{source}: found {len(series)} DICOM series ({sizes}); expected exactly one. Export "
            "the series you want (e.g. the post-contrast T1) on its own."
        )
    (slices,) = series.values()
    return _order_series(slices, source, limits), others


def _decode_error(source: str, err: Exception) -> InvalidVolumeError:
    return InvalidVolumeError(
        f"{source}: cannot decode the DICOM pixel data ({one_line(str(err)).split(':')[-1]})."
    )


def read_series(plan: SeriesPlan, source: str, limits: IOLimits) -> Volume:
    """Decodes one validated DICOM series with SimpleITK/GDCM (LPS world -> RAS).

    Args:
        plan: the series, as :func:`dicom_series` returns it.
        source: name shown in error messages.
        limits: guards passed on to :func:`~tumortrace.volume.volume_from_array`.

    Returns:
        The canonical-RAS :class:`~tumortrace.volume.Volume`; the image's ``(k, j, i)`` array is
        read as ``(i, j, k)`` before reorientation. A multi-frame file with frame positions is
        put in slice order and placed by the header's geometry (``plan.lps_affine``).
    """
    sitk = _sitk()
    try:
        if plan.frame_order is None:
            reader = sitk.ImageSeriesReader()
            reader.SetFileNames([str(f) for f in plan.files])
            image = reader.Execute()
        else:
            image = sitk.ReadImage(str(plan.files[0]))
    except RuntimeError as err:
        raise _decode_error(source, err) from err
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
    if plan.frame_order is not None:
        if data.shape[2] != len(plan.frame_order):
            raise InvalidVolumeError(
                f"{source}: GDCM decoded {data.shape[2]} frames where the header declares "
                f"{len(plan.frame_order)}; the file is damaged."
            )
        data = data[:, :, list(plan.frame_order)]
        lps = plan.lps_affine
    else:
        lps = np.eye(4)
        direction = np.asarray(image.GetDirection()).reshape(3, 3)
        lps[:3, :3] = direction * np.asarray(image.GetSpacing())
        lps[:3, 3] = image.GetOrigin()
    return volume_from_array(np.array(data), _LPS_TO_RAS @ lps, source, limits=limits)
