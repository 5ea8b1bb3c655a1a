"""Data layer: discovery, folds and splits JSON (tumortrace.folds), class weights, the dataset."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

import tumortrace.standard
from tumortrace.config import CLASSES, PreprocessConfig
from tumortrace.data import (
    BalancedSampler,
    Case,
    VolumeDataset,
    class_weights,
    discover_brats,
    discover_ixi,
    read_manifest,
    write_manifest,
)
from tumortrace.errors import ConfigError, ManifestError
from tumortrace.folds import FoldSplit, load_splits, make_folds, save_splits

COUNTS = {"healthy": 13, "lgg": 7, "hgg": 12}


def _cases(counts: dict[str, int] = COUNTS) -> list[Case]:
    return [
        Case(f"{label}-{i:03d}", Path(f"/nowhere/{label}-{i:03d}.nii.gz"), label, "synthetic")
        for label, n in counts.items()
        for i in range(n)
    ]


def _tiny_nifti(path: Path, seed: int = 0) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    data = np.random.default_rng(seed).random((8, 8, 8)).astype(np.float32)
    nib.save(nib.Nifti1Image(data, np.eye(4)), path)
    return path


# ---------------------------------------------------------------- folds


@pytest.fixture(scope="module")
def cases() -> list[Case]:
    return _cases()


@pytest.fixture(scope="module")
def folds(cases) -> list[FoldSplit]:
    return make_folds(cases, k=3, test_fraction=0.2, val_fraction=0.15, seed=7)


def test_no_subject_in_two_parts(cases, folds):
    everyone = {c.subject_id for c in cases}
    assert [f.fold for f in folds] == [0, 1, 2]
    for f in folds:
        train, val, test = set(f.train), set(f.val), set(f.test)
        assert not (train & val) and not (train & test) and not (val & test)
        assert train | val | test == everyone
        assert len(f.train) + len(f.val) + len(f.test) == len(everyone)


def test_test_parts_are_disjoint_and_about_a_fifth(cases, folds):
    tests = [set(f.test) for f in folds]
    assert not (tests[0] & tests[1]) and not (tests[0] & tests[2]) and not (tests[1] & tests[2])
    for t in tests:
        assert round(len(cases) / 5) - 1 <= len(t) <= round(len(cases) / 5) + 1


def test_class_counts_balanced_within_one(cases, folds):
    label = {c.subject_id: c.label for c in cases}
    for part in ("train", "val", "test"):
        per_fold = [Counter(label[s] for s in getattr(f, part)) for f in folds]
        for cls in CLASSES:
            counts = [c[cls] for c in per_fold]
            assert max(counts) - min(counts) <= 1, (part, cls, counts)
            assert min(counts) >= 1
    # Stratified: each test part holds every class in about its overall proportion.
    for f in folds:
        test = Counter(label[s] for s in f.test)
        for cls, n in COUNTS.items():
            assert abs(test[cls] - n / 5) <= 1


def test_same_seed_same_folds_and_order_does_not_matter(cases, folds):
    assert make_folds(cases, 3, 0.2, 0.15, seed=7) == folds
    assert make_folds(list(reversed(cases)), 3, 0.2, 0.15, seed=7) == folds


def test_different_seed_different_folds(cases, folds):
    assert make_folds(cases, 3, 0.2, 0.15, seed=8) != folds


def test_more_folds_than_test_groups():
    folds = make_folds(_cases({"healthy": 10, "lgg": 10, "hgg": 10}), k=10, val_fraction=0.1)
    assert len(folds) == 10 and all(len(f.test) == 3 for f in folds)
    assert len({s for f in folds for s in f.test}) == 30


def test_no_validation_part():
    folds = make_folds(_cases({"healthy": 5, "lgg": 5, "hgg": 5}), k=2, val_fraction=0.0)
    assert all(f.val == () and len(f.train) == 12 and len(f.test) == 3 for f in folds)


def test_splits_round_trip(tmp_path, cases, folds):
    path = save_splits(folds, tmp_path / "sub" / "splits.json")
    assert load_splits(path) == folds
    assert load_splits(path, cases=cases) == folds
    assert json.loads(path.read_text())["folds"][0]["fold"] == 0


def test_splits_with_unknown_subject(tmp_path, cases, folds):
    path = save_splits(folds, tmp_path / "splits.json")
    with pytest.raises(ManifestError, match=r"are not in the manifest"):
        load_splits(path, cases=cases[1:])


def test_splits_malformed(tmp_path):
    path = tmp_path / "splits.json"
    path.write_text('{"folds": [{"fold": 0, "train": []}]}')
    with pytest.raises(ManifestError, match=r"is malformed \(KeyError"):
        load_splits(path)


def test_splits_overlapping_parts(tmp_path):
    path = tmp_path / "splits.json"
    path.write_text(json.dumps({"folds": [{"fold": 0, "train": ["a"], "val": [], "test": ["a"]}]}))
    with pytest.raises(ManifestError, match=r"\['a'\] in both train and test"):
        load_splits(path)


def test_splits_missing(tmp_path):
    with pytest.raises(ManifestError, match="Splits file not found"):
        load_splits(tmp_path / "none.json")


def test_one_fold_is_refused(cases):
    with pytest.raises(ConfigError, match=r"at least 2 folds, got k=1"):
        make_folds(cases, k=1)


def test_bad_fractions(cases):
    with pytest.raises(ConfigError, match=r"test_fraction must be in \(0, 1\), got 0"):
        make_folds(cases, test_fraction=0)
    with pytest.raises(ConfigError, match=r"val_fraction must be in \[0, 1\), got 1.0"):
        make_folds(cases, val_fraction=1.0)


def test_class_with_no_cases():
    with pytest.raises(ManifestError, match=r"Class 'lgg' has no cases"):
        make_folds(_cases({"healthy": 8, "hgg": 8}))


def test_too_few_cases_in_a_class():
    with pytest.raises(ManifestError, match=r"Class 'lgg' has 4 case\(s\).*need at least 5"):
        make_folds(_cases({"healthy": 8, "lgg": 4, "hgg": 8}))


def test_duplicate_subject_in_folds(cases):
    with pytest.raises(ManifestError, match=r"Duplicate subject 'healthy-000'"):
        make_folds([*cases, cases[0]])


def _grouped_cases(n_groups: int = 20, seed: int = 0) -> list[Case]:
    """``n_groups`` base brains, each healthy + HGG, every third one also LGG."""
    rng = np.random.default_rng(seed)
    out = []
    for g in rng.permutation(n_groups):
        brain = f"brain-{g:02d}"
        labels = ("healthy", "lgg", "hgg") if g % 3 == 0 else ("healthy", "hgg")
        for label in labels:
            sid = brain if label == "healthy" else f"{brain}+{label}"
            out.append(Case(sid, Path(f"/nowhere/{sid}.nii.gz"), label, "ixi", group=brain))
    return out


def test_groups_never_straddle_the_parts_of_a_fold():
    cases = _grouped_cases()
    group = {c.subject_id: c.group_id for c in cases}
    label = {c.subject_id: c.label for c in cases}
    folds = make_folds(cases, k=3, test_fraction=0.2, val_fraction=0.15, seed=3)
    for f in folds:
        parts = [{group[s] for s in part} for part in (f.train, f.val, f.test)]
        assert not (parts[0] & parts[1]) and not (parts[0] & parts[2]) and not (parts[1] & parts[2])
        assert sorted(f.train + f.val + f.test) == sorted(group)
        assert {label[s] for s in f.test} == set(CLASSES)
    assert make_folds(list(reversed(cases)), 3, 0.2, 0.15, seed=3) == folds


def test_one_case_groups_fold_as_subjects(cases, folds):
    named = [Case(c.subject_id, c.path, c.label, c.source, group=c.subject_id) for c in cases]
    assert make_folds(named, k=3, test_fraction=0.2, val_fraction=0.15, seed=7) == folds


def test_balanced_sampler_gives_each_class_an_equal_share_seeded_per_epoch():
    labels = [0] * 12 + [1] * 3 + [2] * 9
    sampler = BalancedSampler(labels, seed=5)
    sampler.set_epoch(1)
    first = list(sampler)
    assert len(first) == len(sampler) == 24
    assert Counter(labels[i] for i in first) == {0: 8, 1: 8, 2: 8}
    rare = Counter(i for i in first if labels[i] == 1)  # 8 draws of 3 cases: 3, 3, 2
    assert sorted(rare.values()) == [2, 3, 3]
    again = BalancedSampler(labels, seed=5)
    again.set_epoch(1)
    assert list(again) == first
    sampler.set_epoch(2)
    assert list(sampler) != first
    ranks = [BalancedSampler(labels, num_replicas=2, rank=r, seed=5) for r in (0, 1)]
    for r in ranks:
        r.set_epoch(1)
    assert sorted(list(ranks[0]) + list(ranks[1])) == sorted(first)


# ---------------------------------------------------------------- manifests


def test_manifest_round_trip(tmp_path):
    cases = [
        Case("s1", _tiny_nifti(tmp_path / "v" / "s1.nii.gz"), "lgg", "synthetic"),
        Case("s2", _tiny_nifti(tmp_path / "v" / "s2.nii.gz", 1), "hgg", "synthetic"),
    ]
    path = write_manifest(cases, tmp_path / "manifest.csv")
    assert read_manifest(path) == [
        Case(c.subject_id, c.path.resolve(), c.label, c.source) for c in cases
    ]


def _write_csv(path: Path, rows: list[str]) -> Path:
    path.write_text("\n".join(["subject_id,path,label,source", *rows]) + "\n")
    return path


def test_manifest_missing_file(tmp_path):
    path = _write_csv(tmp_path / "m.csv", ["s1,absent.nii.gz,hgg,x"])
    with pytest.raises(ManifestError, match=r"Missing file for subject 's1'"):
        read_manifest(path)


def test_manifest_unknown_label(tmp_path):
    _tiny_nifti(tmp_path / "a.nii.gz")
    path = _write_csv(tmp_path / "m.csv", ["s1,a.nii.gz,gbm,x"])
    with pytest.raises(ManifestError, match=r"Unknown label 'gbm'.*expected one of"):
        read_manifest(path)


def test_manifest_duplicate_subject(tmp_path):
    _tiny_nifti(tmp_path / "a.nii.gz")
    path = _write_csv(tmp_path / "m.csv", ["s1,a.nii.gz,hgg,x", "s1,a.nii.gz,lgg,x"])
    with pytest.raises(ManifestError, match=r"Duplicate subject 's1'"):
        read_manifest(path)


# ---------------------------------------------------------------- discovery


def test_discover_brats_2019_folders(tmp_path):
    for grade, subject in (("HGG", "BraTS19_2013_2_1"), ("LGG", "BraTS19_TCIA09_141_1")):
        _tiny_nifti(tmp_path / grade / subject / f"{subject}_t1ce.nii.gz")
        _tiny_nifti(tmp_path / grade / subject / f"{subject}_flair.nii.gz")
    cases = discover_brats(tmp_path)
    assert [(c.subject_id, c.label, c.source) for c in cases] == [
        ("BraTS19_2013_2_1", "hgg", "brats2020"),
        ("BraTS19_TCIA09_141_1", "lgg", "brats2020"),
    ]
    assert cases[0].path.name == "BraTS19_2013_2_1_t1ce.nii.gz" and cases[0].path.is_absolute()


def test_discover_brats_2020_name_mapping(tmp_path):
    for subject in ("BraTS20_Training_001", "BraTS20_Training_260"):
        _tiny_nifti(tmp_path / subject / f"{subject}_t1ce.nii.gz")
    (tmp_path / "name_mapping.csv").write_text(
        "Grade,BraTS_2017_subject_ID,BraTS_2018_subject_ID,BraTS_2019_subject_ID,"
        "BraTS_2020_subject_ID\n"
        "HGG,Brats17_x,Brats18_x,BraTS19_x,BraTS20_Training_001\n"
        "LGG,NA,NA,NA,BraTS20_Training_260\n"
    )
    cases = discover_brats(tmp_path)
    assert [(c.subject_id, c.label) for c in cases] == [
        ("BraTS20_Training_001", "hgg"),
        ("BraTS20_Training_260", "lgg"),
    ]


def test_discover_brats_2021_with_grades(tmp_path):
    for subject in ("BraTS-GLI-00000-000", "BraTS-GLI-00002-000", "BraTS-GLI-00003-000"):
        _tiny_nifti(tmp_path / subject / f"{subject}-t1c.nii.gz")
        _tiny_nifti(tmp_path / subject / f"{subject}-t1n.nii.gz")
    grades = tmp_path / "grades.csv"
    grades.write_text("subject_id,grade\nBraTS-GLI-00000-000,high\nBraTS-GLI-00002-000,LGG\n")
    with pytest.warns(UserWarning, match=r"1 BraTS subject\(s\) have no grade"):
        cases = discover_brats(tmp_path, grades_csv=grades)
    assert [(c.subject_id, c.label, c.source) for c in cases] == [
        ("BraTS-GLI-00000-000", "hgg", "brats2021"),
        ("BraTS-GLI-00002-000", "lgg", "brats2021"),
    ]


def test_discover_brats_2021_without_grades(tmp_path):
    _tiny_nifti(tmp_path / "BraTS-GLI-00000-000" / "BraTS-GLI-00000-000-t1c.nii.gz")
    with pytest.raises(ManifestError, match=r"BraTS 2021 and later do not label HGG/LGG"):
        discover_brats(tmp_path)


def test_discover_brats_bad_grade_value(tmp_path):
    _tiny_nifti(tmp_path / "BraTS-GLI-00000-000" / "BraTS-GLI-00000-000-t1c.nii.gz")
    grades = tmp_path / "grades.csv"
    grades.write_text("subject_id,grade\nBraTS-GLI-00000-000,grade IV\n")
    with pytest.raises(ManifestError, match=r"line 2: grade 'grade IV'; expected HGG, LGG"):
        discover_brats(tmp_path, grades_csv=grades)


def test_discover_brats_grades_without_columns(tmp_path):
    _tiny_nifti(tmp_path / "BraTS-GLI-00000-000" / "BraTS-GLI-00000-000-t1c.nii.gz")
    grades = tmp_path / "grades.csv"
    grades.write_text("id,who\nx,HGG\n")
    with pytest.raises(ManifestError, match=r"expected subject_id,grade"):
        discover_brats(tmp_path, grades_csv=grades)


def test_discover_brats_nothing_found(tmp_path):
    _tiny_nifti(tmp_path / "HGG" / "s" / "s_flair.nii.gz")
    with pytest.raises(ManifestError, match=r"No BraTS T1c volumes under"):
        discover_brats(tmp_path)
    with pytest.raises(ManifestError, match=r"BraTS folder not found"):
        discover_brats(tmp_path / "absent")


def test_discover_ixi(tmp_path):
    _tiny_nifti(tmp_path / "IXI012-HH-1211-T1.nii.gz")
    _tiny_nifti(tmp_path / "IXI002-Guys-0828-T1.nii.gz")
    _tiny_nifti(tmp_path / "IXI002-Guys-0828-T2.nii.gz")
    cases = discover_ixi(tmp_path)
    assert [(c.subject_id, c.label, c.source) for c in cases] == [
        ("IXI002", "healthy", "ixi"),
        ("IXI012", "healthy", "ixi"),
    ]


def test_discover_ixi_nothing_found(tmp_path):
    _tiny_nifti(tmp_path / "IXI002-Guys-0828-T2.nii.gz")
    with pytest.raises(ManifestError, match=r"No IXI T1 volumes under"):
        discover_ixi(tmp_path)


def test_discover_ixi_duplicate_subject(tmp_path):
    _tiny_nifti(tmp_path / "a" / "IXI002-Guys-0828-T1.nii.gz")
    _tiny_nifti(tmp_path / "b" / "IXI002-Guys-0828-T1.nii.gz")
    with pytest.raises(ManifestError, match=r"Duplicate subject 'IXI002'"):
        discover_ixi(tmp_path)


# ---------------------------------------------------------------- class weights


def test_class_weights_formula():
    w = class_weights([0, 0, 0, 1, 2, 2])
    assert w.dtype == torch.float32
    # N = 6: W = 1 - (3, 1, 2) / 6
    assert torch.allclose(w, torch.tensor([0.5, 5 / 6, 4 / 6]))
    assert torch.equal(class_weights([1, 1]), torch.tensor([1.0, 0.0, 1.0]))


def test_class_weights_bad_labels():
    with pytest.raises(ConfigError, match=r"Labels must be in \[0, 3\), got values \[0, 3\]"):
        class_weights([0, 3])
    with pytest.raises(ConfigError, match="needs at least one label"):
        class_weights([])


# ---------------------------------------------------------------- dataset

CONFIG = PreprocessConfig(spacing_mm=(4.0, 4.0, 4.0), shape_dhw=(8, 12, 10), space="native")


def test_dataset_caches_preprocessed_tensors(tiny_nifti, tmp_path, monkeypatch):
    cache = tmp_path / "cache"
    case = Case("s1", tiny_nifti, "lgg", "synthetic")
    ds = VolumeDataset([case], CONFIG, cache_dir=cache)
    assert len(ds) == 1 and ds.labels == [1]
    first, label = ds[0]
    assert first.shape == (1, 8, 12, 10) and first.dtype == torch.float32
    assert label == 1 and isinstance(label, int)
    assert len(list(cache.glob("*.safetensors"))) == 1

    def boom(*args, **kwargs):
        raise AssertionError("preprocess must not run on a cache hit")

    monkeypatch.setattr(tumortrace.standard, "prepare", boom)
    again = VolumeDataset([case], CONFIG, cache_dir=cache)  # a fresh instance: a disk hit
    assert torch.equal(again[0][0], first)
    # Same content elsewhere hits too: the key is the file's content, not its path.
    copy = tmp_path / "moved.nii.gz"
    copy.write_bytes(Path(tiny_nifti).read_bytes())
    assert torch.equal(VolumeDataset([Case("s1", copy, "lgg", "x")], CONFIG, cache)[0][0], first)
    # Another config misses the cache.
    other = PreprocessConfig(
        spacing_mm=(4.0, 4.0, 4.0), shape_dhw=(8, 12, 10), intensity="percentile", space="native"
    )
    with pytest.raises(AssertionError, match="must not run"):
        VolumeDataset([case], other, cache_dir=cache)[0]


def test_dataset_transform_runs_after_cache(tiny_nifti, tmp_path):
    cache = tmp_path / "cache"
    plain = VolumeDataset([Case("s1", tiny_nifti, "hgg", "x")], CONFIG, cache_dir=cache)[0][0]
    flipped, label = VolumeDataset(
        [Case("s1", tiny_nifti, "hgg", "x")], CONFIG, cache_dir=cache, transform=lambda t: t.flip(3)
    )[0]
    assert label == 2 and torch.equal(flipped, plain.flip(3))
    assert torch.equal(
        VolumeDataset([Case("s1", tiny_nifti, "hgg", "x")], CONFIG, cache)[0][0], plain
    )


def test_dataset_rebuilds_a_damaged_cache_entry(tiny_nifti, tmp_path):
    cache = tmp_path / "cache"
    ds = VolumeDataset([Case("s1", tiny_nifti, "hgg", "x")], CONFIG, cache_dir=cache)
    first = ds[0][0]
    entry = next(cache.glob("*.safetensors"))
    entry.write_bytes(b"truncated")
    assert torch.equal(ds[0][0], first)
    assert entry.stat().st_size > 100
    assert not [p for p in cache.iterdir() if p.name.startswith(".")]


def test_dataset_without_cache(tiny_nifti):
    tensor, label = VolumeDataset([Case("s1", tiny_nifti, "healthy", "x")], CONFIG)[0]
    assert tensor.shape == (1, 8, 12, 10) and label == 0
