"""FreeSurfer MGH/MGZ input (issue 28): read like nibabel, under the NIfTI's header-first caps."""

from __future__ import annotations

import gzip
import struct

import nibabel as nib
import numpy as np
import pytest
from conftest import make_head

from tumortrace.config import IOLimits
from tumortrace.errors import InvalidVolumeError, UnsafeArchiveError
from tumortrace.io import load_upload, load_volume, volume_from_array

AFFINE = np.array([[-1.0, 0, 0, 90], [0, 0, 1.2, -100], [0, -1.1, 0, 110], [0, 0, 0, 1]])


def _mgh_bytes(data: np.ndarray, affine: np.ndarray = AFFINE) -> bytes:
    return nib.MGHImage(data, affine).to_bytes()


@pytest.fixture(scope="module")
def head() -> np.ndarray:
    return make_head((20, 24, 18), seed=5).astype(np.float32)


@pytest.mark.parametrize(("name", "gz"), [("brain.mgz", True), ("brain.mgh", False)])
def test_mgz_and_mgh_load_as_nibabel_reads_them(head, tmp_path, name, gz) -> None:
    raw = _mgh_bytes(head)
    path = tmp_path / name
    path.write_bytes(gzip.compress(raw) if gz else raw)
    vol = load_volume(path)
    ref = volume_from_array(nib.load(path).get_fdata(dtype=np.float32), nib.load(path).affine)
    np.testing.assert_array_equal(vol.data, ref.data)
    np.testing.assert_allclose(vol.affine, ref.affine, atol=1e-5)
    assert vol.spacing == pytest.approx((1.0, 1.2, 1.1), abs=1e-5)  # R, A, S


@pytest.mark.parametrize("dtype", [np.uint8, np.int16, np.int32, np.float32])
def test_every_mgh_voxel_type(head, tmp_path, dtype) -> None:
    path = tmp_path / "t.mgz"
    path.write_bytes(gzip.compress(_mgh_bytes(head.astype(dtype))))
    np.testing.assert_array_equal(
        load_volume(path).data, volume_from_array(head.astype(dtype), AFFINE).data
    )


def test_an_mgz_is_recognised_by_content_under_any_name(head, tmp_path) -> None:
    path = tmp_path / "scan.gz"
    path.write_bytes(gzip.compress(_mgh_bytes(head)))
    assert load_volume(path).shape == volume_from_array(head, AFFINE).shape


def test_mgz_upload(head) -> None:
    vol = load_upload(gzip.compress(_mgh_bytes(head)), "subject/mri/T1.mgz")
    assert vol.source == "upload:T1.mgz" and vol.shape == volume_from_array(head, AFFINE).shape


def test_4d_mgz_is_refused_with_its_frame_count(head, tmp_path) -> None:
    path = tmp_path / "bold.mgz"
    path.write_bytes(gzip.compress(_mgh_bytes(np.stack([head] * 3, axis=-1))))
    with pytest.raises(InvalidVolumeError, match=r"a 4D image with 3 volumes"):
        load_volume(path)


def _with_header(raw: bytes, offset: int, fmt: str, value) -> bytes:
    b = bytearray(raw)
    struct.pack_into(fmt, b, offset, value)
    return bytes(b)


def test_mgz_bomb_is_refused_from_its_header(head, tmp_path) -> None:
    """Dimensions of 1000^3 float32 behind a small stream: refused before any voxel is read."""
    raw = _mgh_bytes(head)
    for off in (4, 8, 12):
        raw = _with_header(raw, off, ">i", 1000)
    path = tmp_path / "bomb.mgz"
    path.write_bytes(gzip.compress(raw))
    with pytest.raises(UnsafeArchiveError, match=r"declares 4,000,000,284 bytes of image data"):
        load_volume(path)
    small = IOLimits(max_decompressed_bytes=10_000)
    path.write_bytes(gzip.compress(_mgh_bytes(head)))
    with pytest.raises(UnsafeArchiveError, match=r"the header declares [\d,]+ bytes"):
        load_volume(path, small)


def test_mgz_longer_than_declared_stops_at_the_cap(head, tmp_path) -> None:
    path = tmp_path / "long.mgz"
    path.write_bytes(gzip.compress(_mgh_bytes(head) + b"\x00" * (17 << 20)))
    with pytest.raises(UnsafeArchiveError, match=r"decompression bomb"):
        load_volume(path)


def test_truncated_mgz(head, tmp_path) -> None:
    path = tmp_path / "cut.mgz"
    path.write_bytes(gzip.compress(_mgh_bytes(head)[:5000]))
    with pytest.raises(InvalidVolumeError, match=r"is truncated: 5,000 of"):
        load_volume(path)


def test_unknown_mgh_voxel_type(head, tmp_path) -> None:
    path = tmp_path / "type.mgz"
    path.write_bytes(gzip.compress(_with_header(_mgh_bytes(head), 20, ">i", 7)))
    with pytest.raises(InvalidVolumeError, match=r"the MGH header is damaged"):
        load_volume(path)


def test_zero_mgh_voxel_size(head, tmp_path) -> None:
    path = tmp_path / "zero.mgz"
    path.write_bytes(gzip.compress(_with_header(_mgh_bytes(head), 30, ">f", 0.0)))
    with pytest.raises(InvalidVolumeError, match=r"voxel size is \(0\.0"):
        load_volume(path)


def test_mgz_name_without_mgh_content(tmp_path) -> None:
    path = tmp_path / "fake.mgz"
    path.write_bytes(gzip.compress(b"not an image" * 40))
    with pytest.raises(InvalidVolumeError, match=r"fake\.mgz is not a FreeSurfer MGH image"):
        load_volume(path)
