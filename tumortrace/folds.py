"""Patient-level cross-validation folds: stratified, grouped, seeded; the splits JSON.

:func:`make_folds` deals groups of cases (base brains) into stratified, seeded folds
(:class:`FoldSplit`); :func:`save_splits` and :func:`load_splits` write and read them as JSON, so a
later run (the baselines) reuses the very same folds. Re-exported by :mod:`tumortrace.data`.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from tumortrace.config import CLASSES
from tumortrace.errors import ConfigError, ManifestError
from tumortrace.files import atomic_write_json
from tumortrace.manifest import Case, validate_cases


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
    _check_fold_arguments(k, test_fraction, val_fraction)
    cases = validate_cases(cases, check_files=False)
    n_groups = max(k, round(1.0 / test_fraction))
    members, strata, by_stratum = _strata(cases)
    _check_class_sizes(cases, members, by_stratum, k, test_fraction, val_fraction, n_groups)
    rng = np.random.default_rng(seed)
    bins, shuffled = _deal_test_groups(strata, by_stratum, n_groups, rng)
    folds = []
    for i in range(k):
        test = set(bins[i])
        train, val = _train_and_val(strata, shuffled, test, val_fraction, rng)
        folds.append(FoldSplit(i, *(_subjects(part, members) for part in (train, val, test))))
    return folds


def _check_fold_arguments(k: int, test_fraction: float, val_fraction: float) -> None:
    """Raises ConfigError for ``k < 2`` or a fraction outside its range."""
    if not isinstance(k, int) or k < 2:
        raise ConfigError(
            f"Cross-validation needs at least 2 folds, got k={k!r}. Use --folds 2 or more."
        )
    if not 0.0 < test_fraction < 1.0:
        raise ConfigError(f"test_fraction must be in (0, 1), got {test_fraction!r}.")
    if not 0.0 <= val_fraction < 1.0:
        raise ConfigError(f"val_fraction must be in [0, 1), got {val_fraction!r}.")


def _check_class_sizes(
    cases: Sequence[Case],
    members: dict[str, list[str]],
    by_stratum: dict[tuple[int, ...], list[str]],
    k: int,
    test_fraction: float,
    val_fraction: float,
    n_groups: int,
) -> None:
    """Raises ManifestError when a class has no cases, or too few groups for every fold's parts."""
    need = _min_per_class(n_groups, val_fraction)
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


def _deal_test_groups(
    strata: list[tuple[int, ...]],
    by_stratum: dict[tuple[int, ...], list[str]],
    n_groups: int,
    rng: np.random.Generator,
) -> tuple[list[list[str]], dict[tuple[int, ...], list[str]]]:
    """Each stratum's groups shuffled and dealt round-robin into ``n_groups`` test groups.

    The deal continues across strata, so the test groups' sizes differ by at most one group.

    Returns:
        ``(test groups, {stratum: its groups in shuffled order})``.
    """
    bins: list[list[str]] = [[] for _ in range(n_groups)]
    cursor = 0
    shuffled: dict[tuple[int, ...], list[str]] = {}
    for stratum in strata:
        groups = by_stratum[stratum]
        shuffled[stratum] = [groups[i] for i in rng.permutation(len(groups))]
        for group in shuffled[stratum]:
            bins[cursor % n_groups].append(group)
            cursor += 1
    return bins, shuffled


def _train_and_val(
    strata: list[tuple[int, ...]],
    shuffled: dict[tuple[int, ...], list[str]],
    test: set[str],
    val_fraction: float,
    rng: np.random.Generator,
) -> tuple[list[str], list[str]]:
    """One fold's training and validation groups: per stratum, the groups outside ``test``
    reshuffled; ``round(val_fraction * n)`` of them (at least one while two remain) validate."""
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
    return train, val


def _subjects(groups: Iterable[str], members: dict[str, list[str]]) -> tuple[str, ...]:
    """The sorted subject ids of ``groups``."""
    return tuple(sorted(s for g in groups for s in members[g]))


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
