"""Cases, dataset discovery (BraTS, IXI), class weights, the balanced sampler, a cached dataset.

The universal input is a manifest CSV (``subject_id,path,label,source``, see
:mod:`tumortrace.manifest`, re-exported here). Discovery helpers turn a BraTS or IXI tree into
:class:`Case` records (their patient-level folds and splits files: :mod:`tumortrace.folds`), and
:class:`VolumeDataset` serves ``(tensor (1, D, H, W) float32, label)`` pairs, caching each
preprocessed tensor on disk so only the first epoch pays for loading and resampling.
"""

from __future__ import annotations

import csv
import json
import re
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch.utils.data import Dataset, Sampler

from tumortrace.config import CLASSES, PreprocessConfig
from tumortrace.errors import ConfigError, ManifestError, TumorTraceError
from tumortrace.files import atomic_path, sha256_bytes, sha256_file
from tumortrace.manifest import (
    Case,
    read_manifest,
    sibling_lesion_mask,
    validate_cases,
    write_manifest,
)

__all__ = [
    "BalancedSampler",
    "Case",
    "VolumeDataset",
    "class_weights",
    "discover_brats",
    "discover_ixi",
    "lesion_mask_of",
    "read_manifest",
    "write_manifest",
]

_GRADES = {"hgg": "hgg", "high": "hgg", "lgg": "lgg", "low": "lgg"}
_NII = (".nii.gz", ".nii")


# --------------------------------------------------------------------------- discovery


def _strip_nii(name: str) -> str:
    for suffix in _NII:
        if name.endswith(suffix):
            return name[: -len(suffix)]
    return name


def _find(root: Path, suffixes: Sequence[str]) -> list[Path]:
    """Files under ``root`` whose names end with one of ``suffixes`` + ``.nii[.gz]``, sorted."""
    ends = tuple(s + n for s in suffixes for n in _NII)
    return sorted(p for p in root.rglob("*") if p.is_file() and p.name.endswith(ends))


def _subject_of(path: Path, root: Path, suffix: str) -> str:
    """BraTS subject id: the case folder's name, or the file name without its modality suffix."""
    if path.parent != root and path.parent.name.upper() not in ("HGG", "LGG"):
        return path.parent.name
    stem = _strip_nii(path.name)
    return stem[: -len(suffix)] if stem.endswith(suffix) else stem


def _read_grades(path: Path) -> dict[str, str]:
    """Grades CSV -> {subject_id: "hgg" | "lgg"}.

    Accepts ``subject_id,grade`` (HGG/LGG or high/low, any case) and BraTS 2020's
    ``name_mapping.csv`` (``Grade`` plus ``BraTS_20xx_subject_ID`` columns).
    """
    if not path.is_file():
        raise ManifestError(f"Grades CSV not found: {path}. Expected columns subject_id,grade.")
    try:
        with path.open(newline="", encoding="utf-8-sig") as f:
            rows = list(csv.DictReader(f))
            header = list(rows[0]) if rows else []
    except (UnicodeDecodeError, csv.Error) as err:
        raise ManifestError(f"Grades CSV {path} is not a readable UTF-8 CSV: {err}") from err
    lower = {h.strip().lower(): h for h in header}
    grade_col = lower.get("grade")
    id_cols = [lower["subject_id"]] if "subject_id" in lower else []
    id_cols += [h for h in header if re.fullmatch(r"BraTS_20\d\d_subject_ID", h.strip())]
    if grade_col is None or not id_cols:
        raise ManifestError(
            f"Grades CSV {path} has columns {header}; expected subject_id,grade "
            "(grade HGG/LGG or high/low) or BraTS 2020's name_mapping.csv."
        )
    grades: dict[str, str] = {}
    for i, row in enumerate(rows, start=2):
        value = (row.get(grade_col) or "").strip().lower()
        if value not in _GRADES:
            raise ManifestError(
                f"Grades CSV {path}, line {i}: grade {row.get(grade_col)!r}; expected HGG, LGG, "
                "high or low."
            )
        for col in id_cols:
            subject = (row.get(col) or "").strip()
            if subject and subject.upper() != "NA":
                grades[subject] = _GRADES[value]
    return grades


def discover_brats(root: str | Path, grades_csv: str | Path | None = None) -> list[Case]:
    """Finds the contrast-enhanced T1 volume of every BraTS subject under ``root``.

    Layouts:
        * BraTS 2018/2019: ``HGG/<subject>/<subject>_t1ce.nii.gz`` and ``LGG/...``; the folder
          gives the grade. Source ``"brats2020"``.
        * BraTS 2020: ``<subject>/<subject>_t1ce.nii.gz`` with ``name_mapping.csv`` in ``root``
          (or ``grades_csv``). Source ``"brats2020"``.
        * BraTS 2021+: ``<subject>/<subject>-t1c.nii.gz`` (2023 naming) or ``BraTS2021_*_t1ce``.
          These releases carry no grade, so ``grades_csv`` (``subject_id,grade``) is required.
          Source ``"brats2021"``.

    A ``grades_csv``, when given, overrides the folders and ``name_mapping.csv``; subjects absent
    from it are skipped with a warning.

    Returns:
        One :class:`Case` per subject (label ``"hgg"`` or ``"lgg"``), sorted by subject id.

    Raises:
        ManifestError: no such folder, no T1c volumes, no grade source, or a bad grades CSV.
    """
    root = Path(root)
    if not root.is_dir():
        raise ManifestError(f"BraTS folder not found: {root}. Expected the unpacked training set.")
    files = _find(root, ["_t1ce"])
    suffix = "_t1ce"
    if not files:
        files, suffix = _find(root, ["-t1c"]), "-t1c"
    if not files:
        raise ManifestError(
            f"No BraTS T1c volumes under {root}: expected *_t1ce.nii.gz (BraTS 2019/2020, in HGG/ "
            "and LGG/ folders or with name_mapping.csv) or *-t1c.nii.gz (BraTS 2021+)."
        )
    by_folder = {"HGG": "hgg", "LGG": "lgg"}
    grades: dict[str, str] = {}
    if grades_csv is not None:
        grades = _read_grades(Path(grades_csv))
    elif not any(p.relative_to(root).parts[0].upper() in by_folder for p in files):
        mapping = root / "name_mapping.csv"
        if not mapping.is_file():
            raise ManifestError(
                f"Found {len(files)} BraTS volumes under {root} but no grade: BraTS 2021 and later "
                "do not label HGG/LGG. Pass a CSV with columns subject_id,grade (HGG/LGG) "
                "(--brats-grades), or use a BraTS 2019/2020 tree with HGG/ and LGG/ folders."
            )
        grades = _read_grades(mapping)
    cases, skipped = [], []
    for path in files:
        subject = _subject_of(path, root, suffix)
        top = path.relative_to(root).parts[0].upper()
        label = grades.get(subject) or (by_folder.get(top) if grades_csv is None else None)
        if label is None:
            skipped.append(subject)
            continue
        new = suffix == "-t1c" or subject.startswith("BraTS2021")
        cases.append(Case(subject, path.resolve(), label, "brats2021" if new else "brats2020"))
    if skipped:
        warnings.warn(
            f"{len(skipped)} BraTS subject(s) have no grade and were skipped, e.g. {skipped[:3]}.",
            stacklevel=2,
        )
    if not cases:
        raise ManifestError(
            f"None of the {len(files)} BraTS subjects under {root} has a grade in the grades CSV; "
            f"first subjects found: {sorted(skipped)[:3]}. Check the CSV's subject_id column."
        )
    return validate_cases(sorted(cases, key=lambda c: c.subject_id))


def discover_ixi(root: str | Path) -> list[Case]:
    """Finds IXI T1 volumes (``IXI012-HH-1211-T1.nii.gz``) under ``root``, all labelled healthy.

    Returns:
        One :class:`Case` per subject (id ``"IXI012"``, source ``"ixi"``), sorted by subject id.

    Raises:
        ManifestError: no such folder, no ``IXI*-T1.nii[.gz]`` file, or one subject twice.
    """
    root = Path(root)
    if not root.is_dir():
        raise ManifestError(f"IXI folder not found: {root}. Expected the unpacked IXI-T1 set.")
    pattern = re.compile(r"^(IXI\d+)-.*-T1\.nii(\.gz)?$")
    cases = []
    for path in sorted(root.rglob("IXI*-T1.nii*")):
        match = pattern.match(path.name)
        if match and path.is_file():
            cases.append(Case(match.group(1), path.resolve(), "healthy", "ixi"))
    if not cases:
        raise ManifestError(
            f"No IXI T1 volumes under {root}: expected files named like IXI012-HH-1211-T1.nii.gz."
        )
    return validate_cases(sorted(cases, key=lambda c: c.subject_id))


# --------------------------------------------------------------------------- weights, dataset


def class_weights(labels: Sequence[int], n_classes: int = len(CLASSES)) -> torch.Tensor:
    """Cross-entropy class weights ``W_c = 1 - n_c / N`` (the seed paper's formula).

    Args:
        labels: class indices of the training cases.
        n_classes: number of classes.

    Returns:
        ``(n_classes,)`` float32 tensor; rarer classes weigh more.

    Raises:
        ConfigError: no labels, or a label outside ``[0, n_classes)``.
    """
    arr = np.asarray(labels, dtype=np.int64).reshape(-1)
    if arr.size == 0:
        raise ConfigError("class_weights needs at least one label, got none.")
    if arr.min() < 0 or arr.max() >= n_classes:
        raise ConfigError(
            f"Labels must be in [0, {n_classes}), got values {sorted(set(arr.tolist()))}."
        )
    counts = np.bincount(arr, minlength=n_classes)
    return torch.as_tensor(1.0 - counts / arr.size, dtype=torch.float32)


class BalancedSampler(Sampler[int]):
    """Seeded class-balanced draws: each class an equal share of every epoch's indices.

    An epoch has ``len(labels)`` draws (rounded up to a multiple of ``num_replicas``), ``1/C`` of
    them per class present. Gliomas of unknown grade (label
    :data:`~tumortrace.config.GLIOMA_INDEX`, negative) are no class: each is drawn once an epoch,
    as in a plain shuffle, and the classes share the remaining draws. A class's indices are drawn
    without replacement, cycling through fresh permutations when the class is smaller than its
    share; the epoch's draws are then shuffled.
    Everything comes from ``(seed, epoch)`` (:meth:`set_epoch`), so a resumed run replays the same
    batches; under DDP rank ``r`` takes draws ``r, r + R, ...``.

    Args:
        labels: class index of every dataset item.
        num_replicas: number of ranks.
        rank: this rank.
        seed: the run's seed for this fold.
    """

    def __init__(
        self, labels: Sequence[int], num_replicas: int = 1, rank: int = 0, seed: int = 0
    ) -> None:
        self.labels = np.asarray(labels, dtype=np.int64)
        if (self.labels >= 0).sum() == 0:
            raise ConfigError(
                "BalancedSampler needs at least one graded label (healthy, LGG or HGG), got none."
            )
        self.num_replicas, self.rank, self.seed, self.epoch = num_replicas, rank, seed, 0
        self.total = -(-self.labels.size // num_replicas) * num_replicas

    def set_epoch(self, epoch: int) -> None:
        """Selects the epoch whose draws :meth:`__iter__` yields."""
        self.epoch = epoch

    def draws(self) -> list[int]:
        """All ranks' indices of the current epoch, in order."""
        rng = np.random.default_rng([self.seed, self.epoch])
        graded = self.labels[self.labels >= 0]
        present = [np.flatnonzero(self.labels == c) for c in np.unique(graded)]
        ungraded = np.flatnonzero(self.labels < 0)
        rest = self.total - ungraded.size
        shares = [rest // len(present) + (i < rest % len(present)) for i in range(len(present))]
        picks = [ungraded] if ungraded.size else []
        for members, share in zip(present, shares, strict=True):
            cycles = -(-share // members.size)
            picks.append(np.concatenate([rng.permutation(members) for _ in range(cycles)])[:share])
        out = np.concatenate(picks)
        return out[rng.permutation(out.size)].tolist()

    def __iter__(self):
        return iter(self.draws()[self.rank :: self.num_replicas])

    def __len__(self) -> int:
        return self.total // self.num_replicas


LESION_CACHE_VERSION = 1
"""Bumped when :meth:`VolumeDataset.load_mask` changes what it produces (part of its cache key)."""


def lesion_mask_of(case: Case) -> Path | None:
    """The lesion mask file of a tumour case: its ``mask`` column, else the
    ``<stem>_lesion.nii.gz`` beside its volume (what ``synth`` and the cohorts write, the rule
    ``explain-eval`` reads), else None. Always None for a healthy case (its mask is all zeros)."""
    if case.label == "healthy":
        return None
    return case.mask if case.mask is not None else sibling_lesion_mask(case.path)


class VolumeDataset(Dataset):
    """Cases -> ``(volume (1, D, H, W) float32, label int)`` through the one preprocessing pipeline.

    With ``cache_dir`` every preprocessed tensor is stored as ``<cache_dir>/<key>.safetensors``,
    ``key`` = SHA-256 of the volume file's content and of ``config``; a changed file or config
    therefore misses the cache, and a moved file hits it. Cache files are written atomically and
    never unpickled; an unreadable one is recomputed. ``transform`` (augmentation) runs after the
    cache, so every epoch draws fresh random transforms.

    With ``masks`` (lesion supervision) an item is ``(volume, label, lesion (1, D, H, W) float32
    {0, 1}, known bool)``: the lesion mask warped onto the model grid like the volume
    (:func:`tumortrace.standard.lesion_input`; cached beside it, keyed on the volume's key and the
    mask file's content), all zeros and known for a healthy case, all zeros and not known for a
    tumour case without a mask (:func:`lesion_mask_of`). ``transform`` is then called as
    ``transform(volume, lesion) -> (volume, lesion)`` so both get the same spatial draw
    (:func:`tumortrace.augment.build_pair_augment`).
    """

    def __init__(
        self,
        cases: Sequence[Case],
        config: PreprocessConfig,
        cache_dir: str | Path | None = None,
        transform: Callable | None = None,
        masks: bool = False,
    ) -> None:
        self.cases = list(cases)
        self.config = config
        self.cache_dir = Path(cache_dir) if cache_dir is not None else None
        self.transform = transform
        self.masks = masks
        self._keys: dict[tuple[str, int, int], str] = {}
        self._config_json = json.dumps(config.to_dict(), sort_keys=True)
        if config.space == "mni":
            from tumortrace.standard import pipeline_key

            self._config_json += f"\n{pipeline_key()}"
        if self.cache_dir is not None:
            self.cache_dir.mkdir(parents=True, exist_ok=True)

    def __len__(self) -> int:
        return len(self.cases)

    @property
    def labels(self) -> list[int]:
        """Class index of every case, in order."""
        return [c.label_index for c in self.cases]

    def _file_key(self, path: Path) -> str:
        """SHA-256 of a file's content (memoised per path, size and mtime)."""
        stat = Path(path).stat()
        ident = (str(path), stat.st_size, stat.st_mtime_ns)
        if ident not in self._keys:
            self._keys[ident] = sha256_file(path)
        return self._keys[ident]

    def cache_key(self, case: Case) -> str:
        """Hex key of ``case``'s preprocessed tensor (memoised per file size and mtime)."""
        blob = f"{self._file_key(case.path)}\n{self._config_json}".encode()
        return sha256_bytes(blob)

    def mask_key(self, case: Case, mask: Path) -> str:
        """Hex key of ``case``'s lesion on the model grid: the volume's key (its grid depends on
        the scan's registration) and the mask file's content."""
        blob = f"{self.cache_key(case)}\nlesion:{self._file_key(mask)}:{LESION_CACHE_VERSION}"
        return sha256_bytes(blob.encode())

    def _prepared(self, case: Case):
        """``(volume, Preprocessed)`` of ``case`` through the card's pipeline."""
        from tumortrace.io import load_volume
        from tumortrace.standard import prepare, standardise, standardise_cached

        volume = load_volume(case.path)
        std = None
        if self.config.space == "mni":
            # Extraction and registration run once per file content and pipeline version, whatever
            # the model grid: a new spacing or shape reuses them.
            if self.cache_dir is not None:
                std = standardise_cached(
                    volume, case.path, self.cache_dir / "standard", checks=False
                )
            else:
                std = standardise(volume)
        return volume, prepare(volume, self.config, std)

    def _compute(self, case: Case) -> torch.Tensor:
        tensor = self._prepared(case)[1].tensor
        return tensor.detach().to(torch.float32).contiguous()

    def _compute_mask(self, case: Case, mask: Path) -> torch.Tensor:
        from tumortrace.io import load_volume
        from tumortrace.standard import lesion_input

        _, pre = self._prepared(case)
        try:
            lesion_volume = load_volume(mask)
        except TumorTraceError as err:
            raise ManifestError(
                f"Lesion mask {mask} of case {case.subject_id!r} cannot be read: {err}"
            ) from err
        lesion = lesion_input(lesion_volume, pre)
        return torch.from_numpy(lesion.astype(np.uint8))[None].contiguous()

    def _cached(self, path: Path, name: str, compute: Callable[[], torch.Tensor], sid: str):
        """The tensor ``name`` stored at ``path``, else ``compute()`` stored there atomically."""
        if path.is_file():
            try:
                tensor = load_file(str(path))[name]
                if tensor.shape == (1, *self.config.shape_dhw):
                    return tensor
            except (SafetensorError, KeyError, OSError, ValueError):
                pass  # a damaged cache entry is simply rebuilt below
        tensor = compute()
        with atomic_path(path) as tmp:
            save_file({name: tensor}, str(tmp), metadata={"subject_id": sid})
        return tensor

    def load(self, index: int) -> torch.Tensor:
        """Preprocessed, un-augmented volume ``(1, D, H, W)`` float32 of case ``index``."""
        case = self.cases[index]
        if self.cache_dir is None:
            return self._compute(case)
        path = self.cache_dir / f"{self.cache_key(case)}.safetensors"
        return self._cached(path, "volume", lambda: self._compute(case), case.subject_id)

    def load_mask(self, index: int) -> tuple[torch.Tensor, bool]:
        """``(lesion (1, D, H, W) uint8 {0, 1}, known)`` of case ``index``, un-augmented.

        Raises:
            ManifestError: the mask file is missing or unreadable.
        """
        case = self.cases[index]
        mask = lesion_mask_of(case)
        if mask is None:
            empty = torch.zeros((1, *self.config.shape_dhw), dtype=torch.uint8)
            return empty, case.label == "healthy"
        if not Path(mask).is_file():
            raise ManifestError(
                f"Lesion mask {mask} of case {case.subject_id!r} does not exist; fix the "
                "manifest's mask column."
            )
        if self.cache_dir is None:
            return self._compute_mask(case, mask), True
        path = self.cache_dir / f"{self.mask_key(case, mask)}.lesion.safetensors"
        compute = lambda: self._compute_mask(case, mask)  # noqa: E731
        return self._cached(path, "lesion", compute, case.subject_id), True

    def __getitem__(self, index: int) -> tuple:
        tensor = self.load(index)
        label = self.cases[index].label_index
        if self.masks:
            lesion, known = self.load_mask(index)
            lesion = lesion.to(torch.float32)
            if self.transform is not None:
                tensor, lesion = self.transform(tensor, lesion)
            return tensor.to(torch.float32), label, lesion.to(torch.float32), known
        if self.transform is not None:
            tensor = self.transform(tensor)
            if not isinstance(tensor, torch.Tensor):
                tensor = torch.as_tensor(np.asarray(tensor))
            tensor = tensor.to(torch.float32)
        return tensor, label
