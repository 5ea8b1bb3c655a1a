"""The real scans of a data folder laid out as ``shared/real-data``: each scan's class, patient,
source, contrast and lesion mask, with the grade taken only from evidence.

What the folder holds (each sub-folder's README gives provenance and licence):

* ``manifest.csv``'s IXI rows: healthy volunteers, non-contrast T1 with skull (source ``ixi``);
* ``healthy_sites_dev/``: non-tumour T1 from other scanners (source ``other-site``), and
  ``healthy_other/``: the NFBS subject (source ``nfbs``);
* ``tumour/glioma_unknown_grade/`` (post-contrast) and ``tumour/t1/`` (non-contrast) BraTS scans,
  ``tumour/seg/`` their expert masks (BraTS labels 1 necrotic core, 2 oedema, 4 enhancing), and
  ``harvest2/`` two more BraTS patients (source ``brats``);
* ``tumour/hgg/``: TCGA-02-0003, a TCGA-GBM glioblastoma (source ``tcga-gbm``);
* ``tcga-lgg/``: TCGA-LGG lower-grade gliomas, post- and pre-contrast T1 with a FLAIR-abnormality
  mask (source ``tcga-lgg``).

**Grades** come from evidence only (:func:`brats_grade`): a BraTS case's cohort in the BraTS
organisers' table ``BraTS21-17_Mapping.csv`` (TCGA-GBM, CPTAC-GBM, IvyGAP, ACRIN-FMISO:
glioblastoma, so HGG; TCGA-LGG: LGG). Where the table names no such cohort (a private collection,
or no row) the case is a glioma of unknown grade (:data:`tumortrace.config.GLIOMA`), never a
guess. **Patients**: a BraTS case from a TCIA cohort is that TCIA patient (BraTS2021_01476 is
TCGA-CS-4942, also in ``tcga-lgg/``), so the two formats of one patient share one identity; the
non-contrast and post-contrast scans of a patient are two scans of one patient.
"""

from __future__ import annotations

import csv
import re
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from tumortrace.config import GLIOMA
from tumortrace.errors import ManifestError

__all__ = [
    "BRATS_MAPPING",
    "GRADE_BY_COHORT",
    "RealScan",
    "brats_grade",
    "brats_id",
    "discover_real",
    "read_brats_mapping",
]

BRATS_MAPPING = "BraTS21-17_Mapping.csv"
"""The BraTS organisers' table of BraTS 2021 IDs, earlier IDs, source cohorts and TCIA IDs."""

GRADE_BY_COHORT: dict[str, str] = {
    "TCGA-GBM": "hgg",
    "CPTAC-GBM": "hgg",
    "IvyGAP": "hgg",
    "ACRIN-FMISO-Brain": "hgg",
    "TCGA-LGG": "lgg",
}
"""A source cohort's name (its first word, as the mapping writes it) -> the grade it is evidence
for. Anything else, e.g. "Private Collection", is no grade evidence."""


@dataclass(frozen=True)
class RealScan:
    """One real scan file and what the data say about it.

    Attributes:
        subject_id: unique per scan, ``<patient-or-case>_<contrast>`` for tumour patients (two
            scans of one patient differ by contrast), the subject for healthy ones.
        patient: the person (folds never split one person's scans or anything made from them).
        path: the scan file.
        label: ``"healthy"``, ``"lgg"``, ``"hgg"`` or ``"glioma"`` (unknown grade).
        source: ``ixi``, ``other-site``, ``nfbs``, ``brats``, ``tcga-gbm`` or ``tcga-lgg``.
        contrast: ``"t1c"`` (post-contrast) or ``"t1"`` (non-contrast).
        mask: its lesion mask on the scan's grid, or None.
        mask_labels: how ``mask`` is coded: ``"brats"`` (1 necrotic, 2 oedema, 4 enhancing) or
            ``"binary"`` (1 abnormal); ``""`` without a mask.
    """

    subject_id: str
    patient: str
    path: Path
    label: str
    source: str
    contrast: str
    mask: Path | None = None
    mask_labels: str = ""


def brats_id(name: str) -> str | None:
    """The BraTS 2021 ID in a file or case name (``BraTS-GLI-00027-000`` is BraTS 2023's name for
    ``BraTS2021_00027``), or None."""
    if m := re.search(r"BraTS2021_(\d{5})", name):
        return f"BraTS2021_{m.group(1)}"
    if m := re.search(r"BraTS-GLI-(\d{5})-\d{3}", name):
        return f"BraTS2021_{m.group(1)}"
    return None


def read_brats_mapping(path: str | Path) -> dict[str, dict[str, str]]:
    """``{BraTS2021 id: row}`` of the organisers' table (columns as it writes them)."""
    path = Path(path)
    try:
        with path.open(newline="", encoding="utf-8") as f:
            rows = list(csv.DictReader(f))
    except (OSError, UnicodeDecodeError, csv.Error) as err:
        raise ManifestError(f"Cannot read the BraTS mapping {path}: {err}") from err
    if not rows or "BraTS2021" not in rows[0]:
        raise ManifestError(f"{path} is not the BraTS mapping: no 'BraTS2021' column.")
    return {r["BraTS2021"].strip(): r for r in rows}


def _cohort(row: dict[str, str]) -> str:
    key = next((k for k in row if k.startswith("Cohort Name")), "")
    return (row.get(key) or "").strip()


def brats_grade(case: str, mapping: dict[str, dict[str, str]]) -> tuple[str, str]:
    """``(label, patient)`` of a BraTS 2021 case from the mapping.

    The label is the grade its cohort is evidence for (:data:`GRADE_BY_COHORT`), else
    :data:`~tumortrace.config.GLIOMA`; the patient is the TCIA ID for a TCIA cohort (e.g.
    ``TCGA-CS-4942``), else the BraTS ID itself.
    """
    row = mapping.get(case)
    if row is None:
        return GLIOMA, case
    cohort = _cohort(row).split(" ")[0]
    label = GRADE_BY_COHORT.get(cohort, GLIOMA)
    local = next((row[k] for k in row if k.startswith("Local ID")), "") or ""
    local = local.strip()
    patient = local if label != GLIOMA and local and local != "N/A" else case
    return label, patient


def _rows(path: Path) -> list[dict[str, str]]:
    with path.open(newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


def _ixi(root: Path) -> Iterable[RealScan]:
    manifest = root / "manifest.csv"
    if not manifest.is_file():
        return
    for r in _rows(manifest):
        sid = (r.get("subject") or "").strip()
        if r.get("label") == "healthy" and sid.startswith("IXI"):
            yield RealScan(sid, sid, root / r["local_path"], "healthy", "ixi", "t1")


def _other_sites(root: Path) -> Iterable[RealScan]:
    for p in sorted((root / "healthy_sites_dev").glob("*.nii.gz")):
        sid = p.name.removesuffix(".nii.gz")
        yield RealScan(sid, sid, p, "healthy", "other-site", "t1")
    for p in sorted((root / "healthy_other").glob("NFBS_*.nii.gz")):
        sid = "_".join(p.name.split("_")[:2])
        yield RealScan(sid, sid, p, "healthy", "nfbs", "t1")


def _brats_masks(root: Path) -> dict[str, Path]:
    """``{BraTS2021 id: expert mask}`` from ``segmentations.csv`` (or the ``tumour/seg`` names)."""
    out: dict[str, Path] = {}
    table = root / "segmentations.csv"
    if table.is_file():
        for r in _rows(table):
            if (case := brats_id(r.get("image", ""))) is not None:
                out[case] = root / r["local_path"]
    for p in sorted((root / "tumour" / "seg").glob("*_seg.nii.gz")):
        if (case := brats_id(p.name)) is not None:
            out.setdefault(case, p)
    return out


def _brats(root: Path, mapping: dict[str, dict[str, str]]) -> Iterable[RealScan]:
    masks = _brats_masks(root)
    files = [(p, "t1c") for p in sorted((root / "tumour" / "glioma_unknown_grade").glob("*.nii*"))]
    files += [(p, "t1") for p in sorted((root / "tumour" / "t1").glob("*.nii*"))]
    for p in sorted((root / "harvest2").glob("BraTS-*/*.nii*")):
        files.append((p, "t1" if "-t1n" in p.name else "t1c"))
    for p, contrast in files:
        case = brats_id(p.name)
        if case is None:
            continue
        label, patient = brats_grade(case, mapping)
        mask = masks.get(case)
        coding = "brats" if mask else ""
        yield RealScan(f"{case}_{contrast}", patient, p, label, "brats", contrast, mask, coding)


def _tcga_gbm(root: Path) -> Iterable[RealScan]:
    for p in sorted((root / "tumour" / "hgg").glob("TCGA-*.nii*")):
        patient = "-".join(p.name.split("_")[0].split("-")[:3])
        yield RealScan(f"{patient}_t1c", patient, p, "hgg", "tcga-gbm", "t1c")


def _tcga_lgg(root: Path) -> Iterable[RealScan]:
    manifest = root / "tcga-lgg" / "manifest.csv"
    if not manifest.is_file():
        return
    for r in _rows(manifest):
        patient = r["subject"].strip()
        mask = root / "tcga-lgg" / r["mask"] if r.get("mask") else None
        for contrast in ("t1c", "t1"):
            if r.get(contrast):
                yield RealScan(
                    f"{patient}_{contrast}",
                    patient,
                    root / "tcga-lgg" / r[contrast],
                    "lgg",
                    "tcga-lgg",
                    contrast,
                    mask,
                    "binary" if mask else "",
                )


def discover_real(root: str | Path) -> list[RealScan]:
    """Every real scan under a ``shared/real-data``-style folder (see the module docstring).

    Raises:
        ManifestError: the folder is missing, holds none of the known layouts, a subject repeats,
            or a listed file is missing.
    """
    root = Path(root)
    if not root.is_dir():
        raise ManifestError(f"Real-data folder not found: {root}.")
    table = root / BRATS_MAPPING
    mapping = read_brats_mapping(table) if table.is_file() else {}
    scans = [
        *_ixi(root),
        *_other_sites(root),
        *_brats(root, mapping),
        *_tcga_gbm(root),
        *_tcga_lgg(root),
    ]
    if not scans:
        raise ManifestError(f"{root} holds none of the known real-data layouts (see README).")
    seen: set[str] = set()
    for s in scans:
        if s.subject_id in seen:
            raise ManifestError(f"{root}: subject {s.subject_id!r} appears twice.")
        seen.add(s.subject_id)
        for f in (s.path, s.mask):
            if f is not None and not f.is_file():
                raise ManifestError(f"{root}: {s.subject_id}'s file {f} is missing.")
    return scans
