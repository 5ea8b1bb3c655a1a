"""Test helper: write a volume as a DICOM MR series (pydicom), with exact geometry.

DICOM patient space is LPS; the volume's affine is RAS. Pixel ``(row r, column c)`` of slice ``k``
sits at ``IPP_k + c * PixelSpacing[1] * X + r * PixelSpacing[0] * Y``, where
``ImageOrientationPatient = X + Y`` (row then column direction cosines). We store voxel
``(i, j, k)`` of the volume at column ``i``, row ``j`` of slice ``k``.
"""

from __future__ import annotations

import zipfile
from pathlib import Path

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, MRImageStorage, generate_uid


def _ds(values) -> list[str]:
    """DICOM decimal strings (at most 16 characters each)."""
    return [f"{float(v):.9g}" for v in values]


def write_dicom_series(
    data_xyz: np.ndarray,
    affine_ras: np.ndarray,
    folder: Path,
    series_uid: str | None = None,
    prefix: str = "slice",
) -> list[Path]:
    """Writes ``data_xyz`` (integer-valued, fits int16) as one DICOM file per k-slice.

    Args:
        data_xyz: ``(I, J, K)`` array; rows of a slice are ``j``, columns ``i``.
        affine_ras: ``(4, 4)`` voxel -> RAS mm; its first two columns must be orthogonal.
        folder: destination (created).
        series_uid: SeriesInstanceUID (a fresh one by default).
        prefix: file name prefix.

    Returns:
        The written paths, in k order.
    """
    folder.mkdir(parents=True, exist_ok=True)
    lps = np.diag([-1.0, -1.0, 1.0, 1.0]) @ np.asarray(affine_ras, dtype=np.float64)
    spacing = np.sqrt((lps[:3, :3] ** 2).sum(axis=0))
    col_dir, row_dir = lps[:3, 0] / spacing[0], lps[:3, 1] / spacing[1]
    study, series, frame = generate_uid(), series_uid or generate_uid(), generate_uid()
    pixels = np.asarray(data_xyz).astype("<i2")
    paths = []
    for k in range(pixels.shape[2]):
        sop = generate_uid()
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = MRImageStorage
        meta.MediaStorageSOPInstanceUID = sop
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds = Dataset()
        ds.file_meta = meta
        ds.SOPClassUID = MRImageStorage
        ds.SOPInstanceUID = sop
        ds.StudyInstanceUID = study
        ds.SeriesInstanceUID = series
        ds.FrameOfReferenceUID = frame
        ds.Modality = "MR"
        ds.PatientID = "PHANTOM"
        ds.PatientName = "Phantom^Test"
        ds.SeriesNumber = 1
        ds.InstanceNumber = k + 1
        ds.ImagePositionPatient = _ds(lps[:3, :3] @ np.array([0.0, 0.0, k]) + lps[:3, 3])
        ds.ImageOrientationPatient = _ds([*col_dir, *row_dir])
        ds.PixelSpacing = _ds([spacing[1], spacing[0]])
        ds.SliceThickness = _ds([spacing[2]])[0]
        ds.Rows, ds.Columns = pixels.shape[1], pixels.shape[0]
        ds.SamplesPerPixel = 1
        ds.PhotometricInterpretation = "MONOCHROME2"
        ds.BitsAllocated = 16
        ds.BitsStored = 16
        ds.HighBit = 15
        ds.PixelRepresentation = 1
        ds.PixelData = np.ascontiguousarray(pixels[:, :, k].T).tobytes()
        path = folder / f"{prefix}{k:04d}.dcm"
        ds.save_as(path, enforce_file_format=True)
        paths.append(path)
    return paths


def zip_folder(folder: Path, zip_path: Path, arc_prefix: str = "") -> Path:
    """Zips every file under ``folder`` with paths relative to it (optionally prefixed)."""
    with zipfile.ZipFile(zip_path, "w", zipfile.ZIP_DEFLATED) as zf:
        for p in sorted(folder.rglob("*")):
            if p.is_file():
                zf.write(p, arc_prefix + p.relative_to(folder).as_posix())
    return zip_path
