"""Case records and the manifest CSV (``subject_id,path,label,source[,group,kind,patient,donor,
mask]``), the universal data input.

The optional ``group`` column names the unit folds keep together (e.g. a healthy scan and the same
scan with a synthetic lesion; in the real-tumour cohort, every case that shares a patient with
another). Empty or absent, a case is its own group. ``kind`` says how the case was made (``real``,
``carved``, ``healthy-made``, ``synthetic``), ``patient`` whose scan it is, ``donor`` whose tumour
or scan it borrows, and ``mask`` its lesion mask on the volume's own grid (1 tumour, 2 oedema).

Relative paths in a manifest are resolved against the manifest's own folder, so a cohort folder
can be moved or cloned as a whole.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from tumortrace.config import CLASSES, GLIOMA, GLIOMA_INDEX, LABELS
from tumortrace.errors import ManifestError
from tumortrace.files import atomic_write_text

COLUMNS: tuple[str, str, str, str] = ("subject_id", "path", "label", "source")
"""The required columns."""
GROUP_COLUMN = "group"
"""The optional column: the base brain of a case (empty: the case's own subject id)."""
OPTIONAL_COLUMNS: tuple[str, ...] = (GROUP_COLUMN, "kind", "patient", "donor", "mask")
"""The optional columns, written when some case has a value in them (in this order)."""

LESION_SUFFIX = "_lesion"
"""A lesion mask beside its volume is ``<stem>_lesion.nii.gz`` (or ``.nii``) for ``<stem>.nii.gz``:
what ``synth``, the real-brain cohort and the bundled samples write, and what ``explain-eval``,
``predict`` and the app read."""
_NIFTI_SUFFIXES = (".nii.gz", ".nii")


def _nifti_stem(path: Path) -> str | None:
    name = path.name
    return next((name[: -len(s)] for s in _NIFTI_SUFFIXES if name.lower().endswith(s)), None)


def lesion_mask_path(volume: str | Path) -> Path:
    """Where the lesion mask of NIfTI ``volume`` is written: ``<stem>_lesion.nii.gz`` beside it."""
    volume = Path(volume)
    stem = _nifti_stem(volume)
    if stem is None:
        raise ManifestError(f"{volume.name} is not a NIfTI file name (.nii or .nii.gz).")
    return volume.with_name(f"{stem}{LESION_SUFFIX}.nii.gz")


def sibling_lesion_mask(volume: str | Path) -> Path | None:
    """The existing lesion mask beside NIfTI ``volume`` (``<stem>_lesion.nii.gz`` or ``.nii``), or
    None."""
    volume = Path(volume)
    stem = _nifti_stem(volume)
    if stem is None:
        return None
    for ext in _NIFTI_SUFFIXES:
        candidate = volume.with_name(f"{stem}{LESION_SUFFIX}{ext}")
        if candidate.is_file():
            return candidate
    return None


def masked_volume(path: str | Path) -> Path | None:
    """The volume whose lesion mask ``path`` is (``<stem>.nii.gz`` or ``.nii`` beside a
    ``<stem>_lesion.nii.gz``), when that volume exists; else None (``path`` is no companion
    mask)."""
    path = Path(path)
    stem = _nifti_stem(path)
    if stem is None or not stem.endswith(LESION_SUFFIX):
        return None
    base = stem[: -len(LESION_SUFFIX)]
    return next((v for ext in _NIFTI_SUFFIXES if (v := path.with_name(base + ext)).is_file()), None)


@dataclass(frozen=True)
class Case:
    """One subject's volume and its label.

    Attributes:
        subject_id: unique patient/subject identifier (folds are grouped by it).
        path: the volume file (absolute once read from a manifest).
        label: one of :data:`tumortrace.config.LABELS` (a class, or ``"glioma"`` of unknown grade).
        source: where it came from, e.g. ``"synthetic"``, ``"brats"``, ``"ixi"``, ``"tcga-lgg"``.
        group: the unit a fold keeps in one part (cases of one group are never split across the
            parts of a fold); ``""`` means the case is its own group.
        kind: how it was made: ``"real"``, ``"carved"``, ``"healthy-made"``, ``"synthetic"``
            (``""``: not recorded).
        patient: whose scan it is (``""``: the subject itself).
        donor: the patient whose tumour (carved) or scan (healthy-made) it borrows, or ``""``.
        mask: its lesion mask (1 tumour, 2 oedema) on the volume's grid, or None (none known; a
            healthy case's mask is all zeros whatever this says).
    """

    subject_id: str
    path: Path
    label: str
    source: str
    group: str = ""
    kind: str = ""
    patient: str = ""
    donor: str = ""
    mask: Path | None = None

    @property
    def group_id(self) -> str:
        """:attr:`group`, or :attr:`subject_id` when the case is its own group."""
        return self.group or self.subject_id

    @property
    def label_index(self) -> int:
        """Index of :attr:`label` in :data:`CLASSES`; :data:`~tumortrace.config.GLIOMA_INDEX` (-1)
        for a glioma of unknown grade."""
        return GLIOMA_INDEX if self.label == GLIOMA else CLASSES.index(self.label)

    @property
    def patients(self) -> frozenset[str]:
        """Every patient whose data the case holds: its own (:attr:`patient`; else its base brain,
        :attr:`group`; else itself) and its donor's."""
        return frozenset(p for p in (self.patient or self.group_id, self.donor) if p)


def validate_cases(cases: Iterable[Case], *, check_files: bool = True) -> list[Case]:
    """Checks labels, duplicate subjects and (optionally) that every file exists.

    Raises:
        ManifestError: naming every offending row, with the valid choices.
    """
    cases = list(cases)
    if not cases:
        raise ManifestError("The manifest has no cases; expected at least one row.")
    seen: set[str] = set()
    for case in cases:
        if case.label not in LABELS:
            raise ManifestError(
                f"Unknown label {case.label!r} for subject {case.subject_id!r}; "
                f"expected one of {list(LABELS)}."
            )
        if case.subject_id in seen:
            raise ManifestError(
                f"Duplicate subject {case.subject_id!r} in the manifest; each subject must appear "
                "once (folds are grouped by subject)."
            )
        seen.add(case.subject_id)
        if check_files and not case.path.exists():
            raise ManifestError(
                f"Missing file for subject {case.subject_id!r}: {case.path} does not exist. "
                "Fix the path or remove the row."
            )
    return cases


def read_manifest(path: str | Path, *, check_files: bool = True) -> list[Case]:
    """Reads and validates a manifest CSV.

    Args:
        path: CSV with header ``subject_id,path,label,source`` and optionally ``group``.
        check_files: also require every volume file to exist.

    Raises:
        ManifestError: missing file or columns, unknown label, duplicate subject, missing volume.
    """
    path = Path(path)
    if not path.is_file():
        raise ManifestError(f"Manifest not found: {path}. Expected a CSV with columns {COLUMNS}.")
    try:
        with path.open(newline="", encoding="utf-8") as f:
            reader = csv.DictReader(f)
            missing = [c for c in COLUMNS if c not in (reader.fieldnames or [])]
            if missing:
                raise ManifestError(
                    f"Manifest {path} lacks columns {missing}; got {reader.fieldnames}, "
                    f"expected {list(COLUMNS)}."
                )
            rows = list(reader)
    except (UnicodeDecodeError, csv.Error) as err:
        raise ManifestError(f"Manifest {path} is not a readable UTF-8 CSV: {err}") from err

    def resolved(value: str) -> Path:
        p = Path(value)
        return p if p.is_absolute() else (path.parent / p).resolve()

    cases = []
    for row in rows:
        mask = (row.get("mask") or "").strip()
        cases.append(
            Case(
                subject_id=row["subject_id"].strip(),
                path=resolved(row["path"].strip()),
                label=row["label"].strip().lower(),
                source=(row.get("source") or "").strip() or "unknown",
                group=(row.get(GROUP_COLUMN) or "").strip(),
                kind=(row.get("kind") or "").strip(),
                patient=(row.get("patient") or "").strip(),
                donor=(row.get("donor") or "").strip(),
                mask=resolved(mask) if mask else None,
            )
        )
    return validate_cases(cases, check_files=check_files)


def write_manifest(cases: Iterable[Case], path: str | Path, *, relative: bool = True) -> Path:
    """Writes a manifest atomically; paths are stored relative to its folder when possible.

    Each of :data:`OPTIONAL_COLUMNS` is written only when some case has a value in it.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    cases = validate_cases(cases, check_files=False)
    root = path.parent.resolve()

    def stored(p: Path) -> str:
        if relative and p.is_absolute() and p.is_relative_to(root):
            p = p.relative_to(root)
        return p.as_posix()

    def optional(c: Case) -> dict[str, str]:
        return {
            GROUP_COLUMN: c.group,
            "kind": c.kind,
            "patient": c.patient,
            "donor": c.donor,
            "mask": stored(Path(c.mask)) if c.mask is not None else "",
        }

    extra = [k for k in OPTIONAL_COLUMNS if any(optional(c)[k] for c in cases)]
    buf = io.StringIO()
    writer = csv.writer(buf)  # "\r\n" line ends, the csv default
    writer.writerow(COLUMNS + tuple(extra))
    for c in cases:
        row = [c.subject_id, stored(Path(c.path)), c.label, c.source]
        writer.writerow(row + [optional(c)[k] for k in extra])
    atomic_write_text(path, buf.getvalue())
    return path
