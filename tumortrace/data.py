"""Cases, dataset discovery (BraTS, IXI), patient-level folds, class weights and a cached dataset.

The universal input is a manifest CSV (``subject_id,path,label,source``, see
:mod:`tumortrace.manifest`, re-exported here). Discovery helpers turn a BraTS or IXI tree into
:class:`Case` records; :func:`make_folds` splits groups of cases (base brains) into stratified,
seeded folds; and
:class:`VolumeDataset` serves ``(tensor (1, D, H, W) float32, label)`` pairs, caching each
preprocessed tensor on disk so only the first epoch pays for loading and resampling.
"""

from __future__ import annotations

import csv
import json
import re
import warnings
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch.utils.data import Dataset, Sampler

from tumortrace.config import CLASSES, PreprocessConfig
from tumortrace.errors import ConfigError, ManifestError
from tumortrace.files import atomic_path, atomic_write_json, sha256_bytes, sha256_file
from tumortrace.manifest import Case, read_manifest, validate_cases, write_manifest

__all__ = [
    "BalancedSampler",
    "Case",
    "FoldSplit",
    "VolumeDataset",
    "class_weights",
    "discover_brats",
    "discover_ixi",
    "load_splits",
    "make_folds",
    "read_manifest",
    "save_splits",
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


# --------------------------------------------------------------------------- folds


@dataclass(frozen=True)
class FoldSplit:
    """Subject ids of one cross-validation fold; the three parts are disjoint.

    Attributes:
        fold: index from 0.
        train: subjects the network is fitted on.
        val: subjects for model selection (early stopping), carved from the training part.
        test: held-out subjects, used only for the reported metrics.
    """

    fold: int
    train: tuple[str, ...]
    val: tuple[str, ...]
    test: tuple[str, ...]

    def to_dict(self) -> dict[str, object]:
        """JSON-ready dict."""
        return {
            "fold": self.fold,
            "train": list(self.train),
            "val": list(self.val),
            "test": list(self.test),
        }


def _min_per_class(n_groups: int, val_fraction: float) -> int:
    """Fewest cases a class needs so every fold has >= 1 of it in test, train (and val)."""
    need_rest = 2 if val_fraction > 0 else 1
    n = n_groups
    while n - -(-n // n_groups) < need_rest:  # n minus the largest test share, ceil(n / groups)
        n += 1
    return n


def _strata(cases: Sequence[Case]) -> tuple[dict[str, list[str]], list[tuple[int, ...]], dict]:
    """``({group: sorted subject ids}, strata, {stratum: sorted groups})``.

    A group's stratum is the sorted tuple of its cases' label indices; strata are ordered by
    descending number of labels, then by the tuple (one-case groups: :data:`CLASSES` order).
    """
    members: dict[str, list[str]] = {}
    labels: dict[str, set[int]] = {}
    for c in cases:
        members.setdefault(c.group_id, []).append(c.subject_id)
        labels.setdefault(c.group_id, set()).add(c.label_index)
    by_stratum: dict[tuple[int, ...], list[str]] = {}
    for group in sorted(members):
        by_stratum.setdefault(tuple(sorted(labels[group])), []).append(group)
    order = sorted(by_stratum, key=lambda s: (-len(s), s))
    return {g: sorted(m) for g, m in members.items()}, order, by_stratum


def make_folds(
    cases: Sequence[Case],
    k: int = 3,
    test_fraction: float = 0.2,
    val_fraction: float = 0.15,
    seed: int = 42,
) -> list[FoldSplit]:
    """Stratified, group-level, seeded cross-validation folds.

    The unit dealt is the group (:attr:`Case.group_id`: the base brain; without a ``group`` column
    every case is its own group), so all cases of one group land in the same part of a fold.
    Groups are stratified by their set of labels: each stratum (e.g. groups holding healthy, LGG and
    HGG versions first, then healthy and HGG, ...; one-case groups in :data:`CLASSES` order) is
    sorted, shuffled with ``seed`` and dealt round-robin into
    ``G = max(k, round(1 / test_fraction))`` test groups, continuing the deal across strata so
    their sizes differ by at most one group.
    Fold ``i`` tests on test group ``i`` (test parts never overlap; with the defaults, k = 3 and 5
    test groups, each fold is an 8:2 train:test split as in the seed paper); ``round(val_fraction *
    n)`` of each stratum's remaining groups (at least one while two remain) form the validation
    part, and the rest train. The result does not depend on the order of ``cases``; with one case
    per group it is the subject-level split of earlier versions, unchanged.

    Raises:
        ConfigError: ``k < 2`` or a fraction outside its range.
        ManifestError: an empty or invalid case list, a class with no cases, or too few groups
            holding a class for the split.
    """
    if not isinstance(k, int) or k < 2:
        raise ConfigError(
            f"Cross-validation needs at least 2 folds, got k={k!r}. Use --folds 2 or more."
        )
    if not 0.0 < test_fraction < 1.0:
        raise ConfigError(f"test_fraction must be in (0, 1), got {test_fraction!r}.")
    if not 0.0 <= val_fraction < 1.0:
        raise ConfigError(f"val_fraction must be in [0, 1), got {val_fraction!r}.")
    cases = validate_cases(cases, check_files=False)
    n_groups = max(k, round(1.0 / test_fraction))
    need = _min_per_class(n_groups, val_fraction)
    members, strata, by_stratum = _strata(cases)
    for i, label in enumerate(CLASSES):
        holding = sum(len(g) for s, g in by_stratum.items() if i in s)
        if not holding:
            counts = {c: sum(1 for x in cases if x.label == c) for c in CLASSES}
            raise ManifestError(
                f"Class {label!r} has no cases (counts {counts}); every class in {list(CLASSES)} "
                "needs cases. Add data for it."
            )
        if holding < need:
            where = " in distinct groups" if len(members) < len(cases) else ""
            raise ManifestError(
                f"Class {label!r} has {holding} case(s){where}; {k} folds with test_fraction="
                f"{test_fraction} ({n_groups} test groups) need at least {need} per class (one in "
                "each test part, plus training and validation cases). Add cases or use fewer folds."
            )
    rng = np.random.default_rng(seed)
    bins: list[list[str]] = [[] for _ in range(n_groups)]
    cursor = 0
    shuffled: dict[tuple[int, ...], list[str]] = {}
    for stratum in strata:
        groups = by_stratum[stratum]
        shuffled[stratum] = [groups[i] for i in rng.permutation(len(groups))]
        for group in shuffled[stratum]:
            bins[cursor % n_groups].append(group)
            cursor += 1

    def subjects(groups: Iterable[str]) -> tuple[str, ...]:
        return tuple(sorted(s for g in groups for s in members[g]))

    folds = []
    for i in range(k):
        test = set(bins[i])
        train: list[str] = []
        val: list[str] = []
        for stratum in strata:
            rest = [g for g in shuffled[stratum] if g not in test]
            rest = [rest[j] for j in rng.permutation(len(rest))]
            n_val = (
                max(0, min(max(1, round(val_fraction * len(rest))), len(rest) - 1))
                if val_fraction
                else 0
            )
            val += rest[:n_val]
            train += rest[n_val:]
        folds.append(FoldSplit(i, subjects(train), subjects(val), subjects(test)))
    return folds


def _check_fold(fold: FoldSplit, where: str) -> None:
    parts = {"train": set(fold.train), "val": set(fold.val), "test": set(fold.test)}
    for a, b in (("train", "val"), ("train", "test"), ("val", "test")):
        both = parts[a] & parts[b]
        if both:
            raise ManifestError(
                f"{where}: fold {fold.fold} has subject(s) {sorted(both)[:3]} in both {a} and {b}; "
                "each subject must be in exactly one part."
            )


def save_splits(folds: Iterable[FoldSplit], path: str | Path) -> Path:
    """Writes folds as JSON (``{"folds": [{"fold", "train", "val", "test"}]}``), atomically."""
    folds = list(folds)
    for fold in folds:
        _check_fold(fold, "save_splits")
    return atomic_write_json(path, {"version": 1, "folds": [f.to_dict() for f in folds]}, indent=1)


def load_splits(path: str | Path, cases: Sequence[Case] | None = None) -> list[FoldSplit]:
    """Reads folds written by :func:`save_splits`.

    Args:
        path: the splits JSON.
        cases: when given, every subject in the splits must be one of these cases.

    Raises:
        ManifestError: missing or malformed file, overlapping parts, or unknown subjects.
    """
    path = Path(path)
    if not path.is_file():
        raise ManifestError(f"Splits file not found: {path}. Write one with save_splits().")
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
        folds = [
            FoldSplit(
                int(f["fold"]),
                tuple(map(str, f["train"])),
                tuple(map(str, f["val"])),
                tuple(map(str, f["test"])),
            )
            for f in raw["folds"]
        ]
    except (UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError, ValueError) as err:
        raise ManifestError(
            f"Splits file {path} is malformed ({type(err).__name__}: {err}); expected "
            '{"folds": [{"fold", "train", "val", "test"}, ...]}.'
        ) from err
    known = {c.subject_id for c in cases} if cases is not None else None
    for fold in folds:
        _check_fold(fold, str(path))
        if known is not None:
            unknown = sorted(set(fold.train + fold.val + fold.test) - known)
            if unknown:
                raise ManifestError(
                    f"Splits file {path}, fold {fold.fold}: subject(s) {unknown[:3]} are not in "
                    "the manifest. Delete the splits file to make new folds for this data."
                )
    return folds


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
    them per class present. A class's indices are drawn without replacement, cycling through fresh
    permutations when the class is smaller than its share; the epoch's draws are then shuffled.
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
        if self.labels.size == 0:
            raise ConfigError("BalancedSampler needs at least one label, got none.")
        self.num_replicas, self.rank, self.seed, self.epoch = num_replicas, rank, seed, 0
        self.total = -(-self.labels.size // num_replicas) * num_replicas

    def set_epoch(self, epoch: int) -> None:
        """Selects the epoch whose draws :meth:`__iter__` yields."""
        self.epoch = epoch

    def draws(self) -> list[int]:
        """All ranks' indices of the current epoch, in order."""
        rng = np.random.default_rng([self.seed, self.epoch])
        present = [np.flatnonzero(self.labels == c) for c in np.unique(self.labels)]
        shares = [
            self.total // len(present) + (i < self.total % len(present))
            for i in range(len(present))
        ]
        picks = []
        for members, share in zip(present, shares, strict=True):
            cycles = -(-share // members.size)
            picks.append(np.concatenate([rng.permutation(members) for _ in range(cycles)])[:share])
        out = np.concatenate(picks)
        return out[rng.permutation(out.size)].tolist()

    def __iter__(self):
        return iter(self.draws()[self.rank :: self.num_replicas])

    def __len__(self) -> int:
        return self.total // self.num_replicas


class VolumeDataset(Dataset):
    """Cases -> ``(volume (1, D, H, W) float32, label int)`` through the one preprocessing pipeline.

    With ``cache_dir`` every preprocessed tensor is stored as ``<cache_dir>/<key>.safetensors``,
    ``key`` = SHA-256 of the volume file's content and of ``config``; a changed file or config
    therefore misses the cache, and a moved file hits it. Cache files are written atomically and
    never unpickled; an unreadable one is recomputed. ``transform`` (augmentation) runs after the
    cache, so every epoch draws fresh random transforms.
    """

    def __init__(
        self,
        cases: Sequence[Case],
        config: PreprocessConfig,
        cache_dir: str | Path | None = None,
        transform: Callable[[torch.Tensor], torch.Tensor] | None = None,
    ) -> None:
        self.cases = list(cases)
        self.config = config
        self.cache_dir = Path(cache_dir) if cache_dir is not None else None
        self.transform = transform
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

    def cache_key(self, case: Case) -> str:
        """Hex key of ``case``'s preprocessed tensor (memoised per file size and mtime)."""
        stat = Path(case.path).stat()
        ident = (str(case.path), stat.st_size, stat.st_mtime_ns)
        if ident not in self._keys:
            content = sha256_file(case.path)
            blob = f"{content}\n{self._config_json}".encode()
            self._keys[ident] = sha256_bytes(blob)
        return self._keys[ident]

    def _compute(self, case: Case) -> torch.Tensor:
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
        tensor = prepare(volume, self.config, std).tensor
        return tensor.detach().to(torch.float32).contiguous()

    def load(self, index: int) -> torch.Tensor:
        """Preprocessed, un-augmented volume ``(1, D, H, W)`` float32 of case ``index``."""
        case = self.cases[index]
        if self.cache_dir is None:
            return self._compute(case)
        path = self.cache_dir / f"{self.cache_key(case)}.safetensors"
        if path.is_file():
            try:
                tensor = load_file(str(path))["volume"]
                if tensor.shape == (1, *self.config.shape_dhw):
                    return tensor
            except (SafetensorError, KeyError, OSError, ValueError):
                pass  # a damaged cache entry is simply rebuilt below
        tensor = self._compute(case)
        with atomic_path(path) as tmp:
            save_file({"volume": tensor}, str(tmp), metadata={"subject_id": case.subject_id})
        return tensor

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        tensor = self.load(index)
        if self.transform is not None:
            tensor = self.transform(tensor)
            if not isinstance(tensor, torch.Tensor):
                tensor = torch.as_tensor(np.asarray(tensor))
            tensor = tensor.to(torch.float32)
        return tensor, self.cases[index].label_index
