"""Uploads parsed in a child process: same volume, project errors, memory and time limits."""

from __future__ import annotations

import gzip
from dataclasses import replace

import nibabel as nib
import numpy as np
import pytest

from tumortrace.config import IOLimits
from tumortrace.errors import InvalidVolumeError, UnsafeArchiveError
from tumortrace.io import load_upload
from tumortrace.isolate import load_upload_isolated


def _nifti_gz(shape=(40, 48, 36), seed: int = 0) -> bytes:
    data = np.random.default_rng(seed).integers(0, 1000, shape).astype(np.int16)
    return gzip.compress(nib.Nifti1Image(data, np.diag([2.0, 2.0, 2.0, 1.0])).to_bytes(), 1)


def test_isolated_upload_gives_the_same_volume():
    raw = _nifti_gz()
    here, there = load_upload(raw, "a.nii.gz"), load_upload_isolated(raw, "a.nii.gz")
    assert there.source == here.source == "upload:a.nii.gz"
    np.testing.assert_array_equal(there.data, here.data)
    np.testing.assert_array_equal(there.affine, here.affine)


def test_isolated_upload_passes_project_errors_through():
    with pytest.raises(InvalidVolumeError, match=r"upload:x\.nii is not a NIfTI image"):
        load_upload_isolated(b"\x00" * 600, "x.nii")
    with pytest.raises(UnsafeArchiveError, match=r"over the upload cap of 100"):
        load_upload_isolated(b"\x00" * 101, "x.nii", IOLimits(max_upload_bytes=100))


def test_isolated_upload_memory_limit():
    """A 128^3 volume under a 64 MiB address-space cap: refused with a message, server intact."""
    limits = replace(IOLimits(), worker_memory_bytes=64 * 2**20)
    with pytest.raises(InvalidVolumeError, match=r"upload:big\.nii\.gz: .*(memory|stopped)"):
        load_upload_isolated(_nifti_gz((128, 128, 128)), "big.nii.gz", limits)


def test_isolated_upload_time_limit():
    limits = replace(IOLimits(), worker_timeout_s=0.001)
    with pytest.raises(UnsafeArchiveError, match=r"upload:a\.nii\.gz: reading it took longer"):
        load_upload_isolated(_nifti_gz(), "a.nii.gz", limits)
