"""What the loader keeps of a DICOM source series: its slices' headers, for the DICOM results.

A :class:`DicomSource` holds one pydicom header (no pixel data) per slice, in the order
:func:`tumortrace.dicom.dicom_series` sorts them, which is the order the volume was decoded in:
header ``k`` describes slice ``k`` of the third axis of ``Volume.original_shape``, so a map on the
stored grid (:meth:`tumortrace.volume.Volume.to_original`) becomes DICOM frames one to one.
:mod:`tumortrace.dicom_out` builds the Structured Report and the maps from it.

The headers are read again from the same folder or zip (checked by the same reader), so the
series is the one the volume came from; a NIfTI input has no source series (None).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from pydicom.dataset import Dataset

from tumortrace.config import IOLimits
from tumortrace.dicom import dicom_series
from tumortrace.errors import DicomExportError
from tumortrace.guards import guarded, printable
from tumortrace.safezip import extract_zip
from tumortrace.tempdirs import private_tempdir

__all__ = ["REQUIRED", "DicomSource", "read_dicom_source", "read_dicom_upload"]

REQUIRED = (
    "SOPClassUID",
    "SOPInstanceUID",
    "StudyInstanceUID",
    "SeriesInstanceUID",
    "FrameOfReferenceUID",
    "Rows",
    "Columns",
    "PixelSpacing",
    "ImageOrientationPatient",
    "ImagePositionPatient",
)
"""Attributes every source slice needs for a map on its frames and a report that references it."""

_TYPE2 = (
    "PatientName",
    "PatientID",
    "PatientBirthDate",
    "PatientSex",
    "StudyDate",
    "StudyTime",
    "StudyID",
    "AccessionNumber",
    "ReferringPhysicianName",
)
"""Type 2 patient and study attributes: DICOM lets them be present and empty, never invented."""

_ZIP_MAGICS = (b"PK\x03\x04", b"PK\x05\x06")


@dataclass(frozen=True)
class DicomSource:
    """The source series of a DICOM input.

    Attributes:
        datasets: one header per slice (pydicom, no pixel data), in slice order; a Type 2
            patient or study attribute the source lacks is present and empty.
        source: the input's name, for messages.
    """

    datasets: tuple[Dataset, ...]
    source: str

    def check(self, stored_shape: tuple[int, int, int]) -> None:
        """Checks the headers describe the stored grid ``(columns, rows, slices)`` of the volume.

        Raises:
            DicomExportError: a required attribute is missing (named, with its file), the
                slices' orientations differ, a slice holds several frames, or the sizes do not
                match ``stored_shape``.
        """
        first = self.datasets[0]
        for ds in self.datasets:
            missing = [name for name in REQUIRED if ds.get(name) in (None, "")]
            if missing:
                raise DicomExportError(
                    f"{self.source}: {_name(ds)} has no {missing[0]}; DICOM results need every "
                    f"slice's identifiers and geometry ({', '.join(REQUIRED)})."
                )
            if int(ds.get("NumberOfFrames", 1) or 1) > 1:
                raise DicomExportError(
                    f"{self.source}: {_name(ds)} is a multi-frame image (NumberOfFrames "
                    f"{ds.NumberOfFrames}); DICOM results are written for one file per slice."
                )
            if not np.allclose(
                np.asarray(ds.ImageOrientationPatient, float),
                np.asarray(first.ImageOrientationPatient, float),
                atol=1e-4,
            ):
                raise DicomExportError(
                    f"{self.source}: ImageOrientationPatient differs between {_name(first)} and "
                    f"{_name(ds)}; DICOM results need one stack of parallel slices."
                )
        cols, rows, n = stored_shape
        got = (int(first.Columns), int(first.Rows), len(self.datasets))
        if got != (cols, rows, n):
            raise DicomExportError(
                f"{self.source}: the series is {got[0]}x{got[1]} pixels x {got[2]} slices but "
                f"the volume was stored as {cols}x{rows}x{n}; read the volume from this series."
            )


def _name(ds: Dataset) -> str:
    return printable(Path(str(getattr(ds, "filename", "") or "a slice")).name)


def _headers(folder: Path, source: str, limits: IOLimits) -> DicomSource | None:
    import pydicom

    plan, _ = dicom_series(folder, source, limits)
    if plan is None:
        return None
    if plan.frame_order is not None or len(plan.files) == 1:
        raise DicomExportError(
            f"{source}: an enhanced (multi-frame) series; DICOM results are written for a series "
            "of one file per slice only (the other outputs are written)."
        )
    files = plan.files
    datasets = []
    for path in files:
        ds = pydicom.dcmread(path, stop_before_pixels=True)
        ds.filename = path.name  # the temporary folder is not the user's
        for name in _TYPE2:
            if name not in ds:
                setattr(ds, name, None)
        datasets.append(ds)
    return DicomSource(datasets=tuple(datasets), source=source)


def read_dicom_source(
    path: str | Path,
    limits: IOLimits = IOLimits(),  # noqa: B008 (frozen, immutable default)
) -> DicomSource | None:
    """The DICOM series headers of a folder or a zip input; None for a NIfTI (or other) file.

    Raises:
        InvalidVolumeError, UnsafeArchiveError: what :func:`tumortrace.io.load_volume` raises
            on the same input.
    """
    path = Path(path)
    source = printable(path.name or str(path))
    with guarded(source):
        if path.is_dir():
            return _headers(path, source, limits)
        with path.open("rb") as f:
            if f.read(4) not in _ZIP_MAGICS:
                return None
        with private_tempdir() as tmp:
            extract_zip(path, Path(tmp), source, limits)
            return _headers(Path(tmp), source, limits)


def read_dicom_upload(
    data: bytes,
    filename: str,
    limits: IOLimits = IOLimits(),  # noqa: B008
) -> DicomSource | None:
    """The DICOM series headers of an uploaded zip's bytes; None for any other upload.

    Nothing is written outside a private temporary directory, removed at once.
    """
    if bytes(data[:4]) not in _ZIP_MAGICS:
        return None
    source = f"upload:{printable(Path(str(filename)).name)}"
    with guarded(source), private_tempdir() as tmp:
        path = Path(tmp) / "upload.zip"
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        folder = Path(tmp) / "series"
        folder.mkdir()
        extract_zip(path, folder, source, limits)
        return _headers(folder, source, limits)
