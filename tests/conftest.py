"""Shared fixtures: tiny seeded volumes written as NIfTI, made with numpy only."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from tumortrace.config import CLASSES
from tumortrace.manifest import Case, write_manifest


def make_head(shape=(40, 48, 36), seed=0, lesion: bool = False) -> np.ndarray:
    """A tiny head-like volume (X, Y, Z) float32: ellipsoid brain on a noisy nonzero background."""
    rng = np.random.default_rng(seed)
    grid = np.stack(np.meshgrid(*[np.linspace(-1, 1, n) for n in shape], indexing="ij"))
    r = np.sqrt((grid**2).sum(0))
    vol = np.where(r < 0.8, 100.0, 5.0) + rng.normal(0, 3, shape)
    if lesion:
        c = np.array([0.3, 0.1, 0.2]).reshape(3, 1, 1, 1)
        vol[np.sqrt(((grid - c) ** 2).sum(0)) < 0.2] = 200.0
    return vol.astype(np.float32)


def rotation(axis: int, degrees: float) -> np.ndarray:
    """(3, 3) rotation by ``degrees`` about world axis ``axis`` (0 = x, 1 = y, 2 = z)."""
    t = np.deg2rad(degrees)
    i, j = (a for a in range(3) if a != axis)
    r = np.eye(3)
    r[i, i] = r[j, j] = np.cos(t)
    r[i, j], r[j, i] = -np.sin(t), np.sin(t)
    return r


def write_head_cohort(folder: Path, per_class: int = 5, labels=CLASSES) -> Path:
    """Tiny 24x28x20 NIfTI heads at 2 mm (a bright lesion for gliomas) and their manifest."""
    folder.mkdir(parents=True, exist_ok=True)
    cases = []
    for k, label in enumerate(labels):
        for i in range(per_class):
            sid = f"{label}-{i:02d}"
            vol = make_head((24, 28, 20), seed=100 * k + i, lesion=label != "healthy")
            nib.save(nib.Nifti1Image(vol, np.diag([2.0, 2.0, 2.0, 1.0])), folder / f"{sid}.nii.gz")
            cases.append(Case(sid, folder / f"{sid}.nii.gz", label, "test"))
    return write_manifest(cases, folder / "manifest.csv")


@pytest.fixture(scope="session")
def tiny_nifti(tmp_path_factory) -> Path:
    """A 40x48x36 RAS NIfTI at 2 mm, seeded."""
    path = tmp_path_factory.mktemp("vol") / "tiny.nii.gz"
    affine = np.diag([2.0, 2.0, 2.0, 1.0])
    nib.save(nib.Nifti1Image(make_head(), affine), path)
    return path


REAL_SAMPLES = Path(__file__).resolve().parent / "data"


def load_script(relative: str):
    """A script of the repository (``train.py``, ``scripts/*.py``, ``benchmarks/*.py``: not in a
    package), imported as a module under its file name."""
    import importlib.util

    path = Path(__file__).resolve().parents[1] / relative
    spec = importlib.util.spec_from_file_location(path.stem, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def load_train_cli():
    """The ``train.py`` script at the repository root, imported as a module (its parser)."""
    return load_script("train.py")


@pytest.fixture(scope="session")
def real_samples_dir() -> Path:
    """tests/data: two real public scans shipped with the repository (provenance in its README)."""
    return REAL_SAMPLES
