"""tumortrace.io: format round trips, canonical orientation, validation and upload guards."""

from __future__ import annotations

import gzip
import io
import tempfile
import zipfile
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from _dicom import write_dicom_series, zip_folder
from conftest import rotation

from tumortrace.config import IOLimits
from tumortrace.errors import InvalidVolumeError, UnsafeArchiveError
from tumortrace.io import (
    load_upload,
    load_volume,
    save_nifti,
    volume_from_array,
)

SHAPE = (24, 28, 20)
AFFINE_ATOL_MM = 1e-5  # DICOM stores positions as decimal strings (9 significant digits here)


def _affine(linear: np.ndarray, origin) -> np.ndarray:
    a = np.eye(4)
    a[:3, :3] = linear
    a[:3, 3] = origin
    return a


AFFINES = {
    "oblique": _affine(
        rotation(2, 20) @ rotation(0, 10) @ np.diag([1.2, 1.0, 2.0]), [-20, -30, -15]
    ),
    "lps_flipped": _affine(np.diag([-1.5, -1.5, 2.0]), [30, 40, -10]),
    "psr_permuted": _affine(np.array([[0, 0, 2.0], [-1.2, 0, 0], [0, 1.1, 0]]), [1, 2, 3]),
}


@pytest.fixture(scope="module")
def int_volume() -> np.ndarray:
    """Integer-valued (int16-exact) volume, so every format stores it losslessly."""
    return np.random.default_rng(7).integers(0, 1000, SHAPE).astype(np.int16)


def _write_nifti(array, affine, path: Path) -> Path:
    nib.save(nib.Nifti1Image(array, affine), path)
    return path


# ------------------------------------------------------------------------------------------------
# round trip and orientation


@pytest.mark.parametrize("name", sorted(AFFINES))
def test_round_trip_all_formats_give_same_canonical_volume(tmp_path, int_volume, name):
    """.nii, .nii.gz, a DICOM folder and a DICOM zip load to one canonical array and affine."""
    affine = AFFINES[name]
    ref = nib.as_closest_canonical(nib.Nifti1Image(int_volume, affine))
    paths = [
        _write_nifti(int_volume, affine, tmp_path / "v.nii"),
        _write_nifti(int_volume, affine, tmp_path / "v.nii.gz"),
    ]
    write_dicom_series(int_volume, affine, tmp_path / "dicom")
    paths += [tmp_path / "dicom", zip_folder(tmp_path / "dicom", tmp_path / "s.zip", "series/")]
    for path in paths:
        vol = load_volume(path)
        assert vol.data.dtype == np.float32
        assert vol.data.shape == ref.shape
        np.testing.assert_array_equal(vol.data, ref.get_fdata(), err_msg=path.name)
        np.testing.assert_allclose(vol.affine, ref.affine, atol=AFFINE_ATOL_MM, err_msg=path.name)
        assert nib.aff2axcodes(vol.affine) == ("R", "A", "S")
        np.testing.assert_allclose(vol.spacing, np.sqrt((ref.affine[:3, :3] ** 2).sum(0)))
        assert vol.source == path.name


@pytest.mark.parametrize("name", sorted(AFFINES))
def test_to_original_restores_the_stored_grid(int_volume, name):
    affine = AFFINES[name]
    vol = volume_from_array(int_volume, affine, "x")
    assert vol.orientation == nib.aff2axcodes(affine)
    assert vol.original_shape == SHAPE
    np.testing.assert_array_equal(vol.to_original(vol.data), int_volume)
    np.testing.assert_array_equal(vol.original_affine, affine)
    # the same world point through both grids
    ijk = np.array([3, 5, 7, 1.0])
    world = affine @ ijk
    can = np.rint(np.linalg.inv(vol.affine) @ world).astype(int)
    assert vol.data[tuple(can[:3])] == int_volume[3, 5, 7]
    with pytest.raises(InvalidVolumeError, match="expected the canonical grid"):
        vol.to_original(np.zeros((3, 3, 3)))


def test_spacing_is_along_canonical_axes():
    affine = _affine(np.array([[0, 0, 2.0], [-1.2, 0, 0], [0, 1.1, 0]]), [0, 0, 0])  # P S R
    vol = volume_from_array(np.random.default_rng(0).random(SHAPE), affine)
    # canonical x came from stored axis 2 (2.0 mm), y from axis 0 (1.2), z from axis 1 (1.1)
    np.testing.assert_allclose(vol.spacing, (2.0, 1.2, 1.1))
    assert vol.data.shape == (SHAPE[2], SHAPE[0], SHAPE[1])


def test_real_nifti_matches_nibabel_canonical(real_samples_dir):
    path = real_samples_dir / "IXI012-HH-1211_T1_2mm_uint8.nii.gz"
    ref = nib.as_closest_canonical(nib.load(path))
    vol = load_volume(path)
    np.testing.assert_allclose(vol.data, ref.get_fdata(), rtol=1e-6)
    np.testing.assert_allclose(vol.affine, ref.affine)
    assert vol.orientation == ("P", "S", "R")
    assert vol.original_shape == (120, 120, 90)


def test_save_nifti_is_atomic_and_round_trips(tmp_path, int_volume):
    affine = AFFINES["lps_flipped"]
    out = save_nifti(int_volume.astype(np.float64), affine, tmp_path / "sub" / "x.nii.gz")
    assert out.is_file()
    assert [p.name for p in out.parent.iterdir()] == ["x.nii.gz"]  # no temp file left
    img = nib.load(out)
    assert img.get_data_dtype() == np.float32
    np.testing.assert_allclose(img.affine, affine)
    np.testing.assert_array_equal(img.get_fdata(), int_volume)
    save_nifti(np.ones(SHAPE, dtype=bool), affine, out)  # overwrite in place
    assert nib.load(out).get_data_dtype() == np.uint8
    with pytest.raises(InvalidVolumeError, match=r"\.nii or \.nii\.gz"):
        save_nifti(int_volume, affine, tmp_path / "x.png")


def test_four_d_with_one_volume_is_accepted(tmp_path, int_volume):
    path = _write_nifti(int_volume[..., None], np.eye(4), tmp_path / "one.nii.gz")
    assert load_volume(path).data.shape == SHAPE


# ------------------------------------------------------------------------------------------------
# bad input: one test per rule


def test_non_image_file(tmp_path):
    path = tmp_path / "notes.txt"
    path.write_text("not an image at all\n" * 40)
    with pytest.raises(InvalidVolumeError, match=r"not a recognised image file; expected \.nii"):
        load_volume(path)


def test_file_named_nii_that_is_not_nifti(tmp_path):
    path = tmp_path / "fake.nii"
    path.write_bytes(b"\x00" * 600)
    with pytest.raises(InvalidVolumeError, match="not a NIfTI image"):
        load_volume(path)


def test_missing_file(tmp_path):
    with pytest.raises(InvalidVolumeError, match="does not exist"):
        load_volume(tmp_path / "nope.nii.gz")


def test_truncated_nii_gz(tmp_path, int_volume):
    good = _write_nifti(int_volume, np.eye(4), tmp_path / "good.nii.gz").read_bytes()
    path = tmp_path / "cut.nii.gz"
    path.write_bytes(good[: len(good) // 2])
    with pytest.raises(InvalidVolumeError, match="truncated or corrupt"):
        load_volume(path)


def test_truncated_uncompressed_nii(tmp_path, int_volume):
    good = _write_nifti(int_volume, np.eye(4), tmp_path / "good.nii").read_bytes()
    path = tmp_path / "cut.nii"
    path.write_bytes(good[: len(good) - 1000])
    with pytest.raises(InvalidVolumeError, match="is truncated"):
        load_volume(path)


def test_gzip_bomb_stops_at_the_cap(tmp_path):
    """A valid small header followed by a long zero stream: decompression stops at the cap."""
    small = nib.Nifti1Image(np.arange(16**3, dtype=np.uint8).reshape(16, 16, 16), np.eye(4))
    raw = small.to_bytes() + bytes(20_000_000)
    path = tmp_path / "bomb.nii.gz"
    path.write_bytes(gzip.compress(raw, compresslevel=9))
    assert path.stat().st_size < 100_000  # a ~200x bomb
    limits = IOLimits(max_decompressed_bytes=1_000_000)
    with pytest.raises(UnsafeArchiveError, match="exceeds the 1,000,000-byte cap"):
        load_volume(path, limits)


def test_header_declaring_too_much_data_is_rejected_before_decompressing(tmp_path):
    hdr = nib.Nifti1Header()
    hdr.set_data_shape((512, 512, 400))
    hdr.set_data_dtype(np.float32)
    hdr["vox_offset"] = 352
    path = tmp_path / "huge.nii.gz"
    path.write_bytes(gzip.compress(hdr.binaryblock + bytes(4) + bytes(1000)))
    with pytest.raises(UnsafeArchiveError, match="header declares 419,430,752 bytes"):
        load_volume(path, IOLimits(max_decompressed_bytes=10_000_000))


def test_2d_image(tmp_path):
    path = _write_nifti(np.random.default_rng(0).random((64, 64)), np.eye(4), tmp_path / "s.nii")
    with pytest.raises(InvalidVolumeError, match="a 2D image"):
        load_volume(path)


def test_single_slice_volume_is_2d(tmp_path):
    data = np.random.default_rng(0).random((64, 64, 1))
    with pytest.raises(InvalidVolumeError, match="a 2D image"):
        volume_from_array(data, np.eye(4))


def test_4d_with_several_volumes(tmp_path):
    data = np.random.default_rng(0).random((16, 16, 16, 3)).astype(np.float32)
    path = _write_nifti(data, np.eye(4), tmp_path / "t.nii.gz")
    with pytest.raises(InvalidVolumeError, match="4D image with 3 volumes"):
        load_volume(path)


@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_nan_or_inf(tmp_path, bad):
    data = np.random.default_rng(0).random((16, 16, 16)).astype(np.float32)
    data[3, 4, 5] = bad
    path = _write_nifti(data, np.eye(4), tmp_path / "n.nii.gz")
    with pytest.raises(InvalidVolumeError, match="1 voxels are NaN or infinite"):
        load_volume(path)


def test_constant_volume(tmp_path):
    path = _write_nifti(np.full((16, 16, 16), 7, np.int16), np.eye(4), tmp_path / "c.nii.gz")
    with pytest.raises(InvalidVolumeError, match="constant"):
        load_volume(path)


def test_oversize_volume(tmp_path):
    data = np.random.default_rng(0).random((40, 16, 16)).astype(np.float32)
    path = _write_nifti(data, np.eye(4), tmp_path / "big.nii.gz")
    with pytest.raises(InvalidVolumeError, match=r"axis 0 has 40 voxels.*between 8 and 32"):
        load_volume(path, IOLimits(max_axis=32))


def test_too_small_axis():
    with pytest.raises(InvalidVolumeError, match="axis 2 has 4 voxels"):
        volume_from_array(np.random.default_rng(0).random((16, 16, 4)), np.eye(4))


def test_insane_spacing():
    with pytest.raises(InvalidVolumeError, match=r"spacing .* out of range"):
        volume_from_array(np.random.default_rng(0).random((16, 16, 16)), np.diag([1, 1, 50.0, 1]))


def test_singular_affine():
    with pytest.raises(InvalidVolumeError, match="singular"):
        volume_from_array(np.random.default_rng(0).random((16, 16, 16)), np.diag([1, 1, 0.0, 1]))


def test_single_dicom_file_asks_for_the_series(tmp_path, int_volume):
    files = write_dicom_series(int_volume, np.eye(4), tmp_path / "d")
    with pytest.raises(InvalidVolumeError, match="single DICOM file"):
        load_volume(files[0])


def test_folder_without_dicom(tmp_path):
    (tmp_path / "a.txt").write_text("hello")
    with pytest.raises(InvalidVolumeError, match="no DICOM series found"):
        load_volume(tmp_path)


def _zip_with(path: Path, members: dict[str, bytes]) -> Path:
    with zipfile.ZipFile(path, "w") as zf:
        for name, data in members.items():
            zf.writestr(zipfile.ZipInfo(name), data)
    return path


def test_zip_with_dotdot_member(tmp_path):
    path = _zip_with(tmp_path / "evil.zip", {"series/a.dcm": b"x", "../escape.dcm": b"x"})
    with pytest.raises(UnsafeArchiveError, match=r"'\.\./escape\.dcm' points outside the archive"):
        load_volume(path)
    assert not (tmp_path.parent / "escape.dcm").exists()


def test_zip_with_absolute_member(tmp_path):
    path = _zip_with(tmp_path / "abs.zip", {"/tmp/tumortrace_abs_test.dcm": b"x"})
    with pytest.raises(UnsafeArchiveError, match="has an absolute path"):
        load_volume(path)
    assert not Path("/tmp/tumortrace_abs_test.dcm").exists()


def test_zip_with_windows_absolute_member(tmp_path):
    path = _zip_with(tmp_path / "abs.zip", {"C:/x/a.dcm": b"x"})
    with pytest.raises(UnsafeArchiveError, match="has an absolute path"):
        load_volume(path)


def test_zip_with_two_series(tmp_path, int_volume):
    write_dicom_series(int_volume, np.eye(4), tmp_path / "d" / "t1")
    write_dicom_series(int_volume[::-1], np.eye(4), tmp_path / "d" / "t2")
    path = zip_folder(tmp_path / "d", tmp_path / "two.zip")
    with pytest.raises(InvalidVolumeError, match=r"found 2 DICOM series.*expected exactly one"):
        load_volume(path)


def test_zip_with_too_many_members(tmp_path):
    path = _zip_with(tmp_path / "many.zip", {f"s/{i}.dcm": b"x" for i in range(6)})
    with pytest.raises(UnsafeArchiveError, match="has 6 members, over the cap of 5"):
        load_volume(path, IOLimits(max_zip_members=5))


def test_zip_declaring_too_many_bytes(tmp_path):
    path = tmp_path / "big.zip"
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("s/a.dcm", bytes(3_000_000))
    assert path.stat().st_size < 50_000
    with pytest.raises(UnsafeArchiveError, match="declares 3,000,000 uncompressed bytes"):
        load_volume(path, IOLimits(max_decompressed_bytes=1_000_000))


def test_corrupt_zip(tmp_path):
    path = tmp_path / "bad.zip"
    path.write_bytes(b"PK\x03\x04" + b"\x00" * 100)
    with pytest.raises(InvalidVolumeError, match="not a readable zip"):
        load_volume(path)


# ------------------------------------------------------------------------------------------------
# uploads


@pytest.fixture
def spy_tempdirs(tmp_path, monkeypatch) -> list[Path]:
    """Routes tempfile into a private folder and records every directory mkdtemp creates."""
    root = tmp_path / "systmp"
    root.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(root))
    made: list[Path] = []
    real = tempfile.mkdtemp

    def mkdtemp(*args, **kwargs):
        path = real(*args, **kwargs)
        made.append(Path(path))
        return path

    monkeypatch.setattr(tempfile, "mkdtemp", mkdtemp)
    return made


def test_upload_nifti_loads_and_leaves_nothing(tmp_path, int_volume, spy_tempdirs):
    data = _write_nifti(int_volume, AFFINES["oblique"], tmp_path / "a.nii.gz").read_bytes()
    vol = load_upload(data, "C:\\Users\\me\\..\\scan 1.nii.gz")
    assert vol.source == "upload:scan 1.nii.gz"
    ref = load_volume(tmp_path / "a.nii.gz")
    np.testing.assert_array_equal(vol.data, ref.data)
    assert spy_tempdirs, "the upload was expected to go through a private temporary directory"
    assert all(not p.exists() for p in spy_tempdirs)
    assert list(Path(tempfile.tempdir).iterdir()) == []


def test_upload_dicom_zip_loads_and_leaves_nothing(tmp_path, int_volume, spy_tempdirs):
    write_dicom_series(int_volume, AFFINES["lps_flipped"], tmp_path / "d")
    data = zip_folder(tmp_path / "d", tmp_path / "s.zip").read_bytes()
    vol = load_upload(data, "series.zip")
    assert vol.source == "upload:series.zip"
    assert vol.orientation == ("L", "P", "S")
    assert len(spy_tempdirs) >= 2  # the upload's directory and the extraction directory
    assert all(not p.exists() for p in spy_tempdirs)
    assert list(Path(tempfile.tempdir).iterdir()) == []


def test_upload_temp_files_removed_on_error(tmp_path, int_volume, spy_tempdirs):
    write_dicom_series(int_volume, np.eye(4), tmp_path / "d" / "a")
    write_dicom_series(int_volume[::-1], np.eye(4), tmp_path / "d" / "b")
    data = zip_folder(tmp_path / "d", tmp_path / "two.zip").read_bytes()
    with pytest.raises(InvalidVolumeError, match="found 2 DICOM series"):
        load_upload(data, "two.zip")
    assert spy_tempdirs
    assert all(not p.exists() for p in spy_tempdirs)
    assert list(Path(tempfile.tempdir).iterdir()) == []


def test_upload_over_the_size_cap(spy_tempdirs):
    with pytest.raises(UnsafeArchiveError, match="over the upload cap of 100"):
        load_upload(b"\x00" * 101, "x.nii", IOLimits(max_upload_bytes=100))
    assert spy_tempdirs == []  # rejected before anything was written


def test_upload_unknown_content(spy_tempdirs):
    with pytest.raises(InvalidVolumeError, match=r"upload:photo\.jpg is not a recognised image"):
        load_upload(b"\xff\xd8\xff\xe0" + b"\x00" * 600, "photo.jpg")


def test_upload_gzip_bomb(spy_tempdirs):
    small = nib.Nifti1Image(np.arange(16**3, dtype=np.uint8).reshape(16, 16, 16), np.eye(4))
    buf = io.BytesIO()
    with gzip.GzipFile(fileobj=buf, mode="wb") as gz:
        gz.write(small.to_bytes() + bytes(5_000_000))
    with pytest.raises(UnsafeArchiveError, match="decompression bomb"):
        load_upload(buf.getvalue(), "b.nii.gz", IOLimits(max_decompressed_bytes=500_000))
    assert all(not p.exists() for p in spy_tempdirs)


def test_zip_holding_one_nifti_loads(tmp_path, int_volume):
    nii = _write_nifti(int_volume, AFFINES["oblique"], tmp_path / "scan.nii.gz")
    path = tmp_path / "n.zip"
    with zipfile.ZipFile(path, "w") as zf:
        zf.write(nii, "folder/scan.nii.gz")
        zf.writestr("__MACOSX/folder/._scan.nii.gz", b"resource fork junk")
    np.testing.assert_array_equal(load_volume(path).data, load_volume(nii).data)
