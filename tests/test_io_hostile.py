"""Hostile inputs to tumortrace.io: each is refused with a project error naming the file.

Header-first guards (voxels, ratio, dtype, pixdim), zip compression methods and names, DICOM
header validation with pydicom before SimpleITK, non-regular files, names with control characters,
stale temporary folders, and the resampling guard of :func:`tumortrace.preprocess.preprocess`.
"""

from __future__ import annotations

import contextlib
import gzip
import logging
import os
import struct
import tempfile
import warnings
import zipfile
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
import pytest
from _dicom import write_dicom_series, zip_folder

from tumortrace.config import IOLimits, PreprocessConfig
from tumortrace.errors import InvalidVolumeError, UnsafeArchiveError
from tumortrace.guards import printable
from tumortrace.io import load_upload, load_volume, volume_from_array
from tumortrace.preprocess import check_resampling, preprocess
from tumortrace.tempdirs import clean_stale_tempdirs

SHAPE = (24, 28, 20)


@pytest.fixture(scope="module")
def vol() -> np.ndarray:
    return np.random.default_rng(3).integers(0, 1000, SHAPE).astype(np.int16)


def _header_only(path: Path, shape, dtype, extra: int = 1000, gz: bool = True) -> Path:
    """A NIfTI header declaring ``shape``/``dtype`` followed by only ``extra`` data bytes."""
    hdr = nib.Nifti1Header()
    hdr.set_data_shape(shape)
    hdr.set_data_dtype(dtype)
    hdr["vox_offset"] = 352
    raw = hdr.binaryblock + bytes(4) + bytes(extra)
    path.write_bytes(gzip.compress(raw) if gz else raw)
    return path


# -- NIfTI header guards ---------------------------------------------------------------------


def test_huge_volume_refused_from_its_header(tmp_path):
    """1024x1024x512 uint8 is within the byte cap but over the voxel cap: refused, no decoding."""
    path = _header_only(tmp_path / "huge.nii.gz", (1024, 1024, 512), np.uint8)
    with pytest.raises(UnsafeArchiveError, match=r"1024x1024x512 = 536,870,912 voxels.*cap"):
        load_volume(path)


def test_compression_ratio_cap(tmp_path):
    path = _header_only(tmp_path / "ratio.nii.gz", (256, 256, 256), np.int16)  # 33.5 MB declared
    limits = IOLimits(ratio_check_bytes=1_000_000)
    with pytest.raises(UnsafeArchiveError, match=r"x, over the 100x cap.*decompression bomb"):
        load_volume(path, limits)


@pytest.mark.parametrize("dtype", [np.complex64, np.complex128])
def test_complex_nifti_refused_before_decoding(tmp_path, dtype):
    # only the header is valid: the data block is truncated, so a reader that decoded first
    # would report truncation instead
    path = _header_only(tmp_path / "c.nii.gz", (16, 16, 16), dtype, extra=10)
    with pytest.raises(InvalidVolumeError, match=r"voxel type complex.* not a real scalar"):
        load_volume(path)


def test_rgb_nifti_refused(tmp_path):
    rgb = np.zeros((16, 16, 16), dtype=[("R", "u1"), ("G", "u1"), ("B", "u1")])
    path = tmp_path / "rgb.nii"
    nib.save(nib.Nifti1Image(rgb, np.eye(4)), path)
    with pytest.raises(InvalidVolumeError, match=r"voxel type RGB .* not a real scalar"):
        load_volume(path)


def test_pixdim_zero_refused(tmp_path, vol):
    img = nib.Nifti1Image(vol, None)
    img.header["pixdim"][1:4] = [1.0, 0.0, 1.0]
    img.header.set_sform(None, code=0)
    img.header.set_qform(None, code=0)
    path = tmp_path / "p.nii"
    path.write_bytes(img.to_bytes())
    with pytest.raises(InvalidVolumeError, match=r"pixdim\) is \(1\.0, 0\.0, 1\.0\)"):
        load_volume(path)


def test_library_noise_is_silenced(tmp_path, vol, capfd, caplog):
    """nibabel's "vox offset ... setting to minimum" and a scaling overflow: silent."""
    img = nib.Nifti1Image(vol, np.eye(4))
    img.header.set_slope_inter(1e38, 0)  # int16 x 1e38 overflows float32: numpy warns
    raw = bytearray(img.to_bytes())
    struct.pack_into("<f", raw, 108, 100.0)  # vox_offset 100: nibabel logs and fixes it
    path = tmp_path / "noisy.nii"
    path.write_bytes(bytes(raw))
    caplog.set_level(logging.DEBUG)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with contextlib.suppress(InvalidVolumeError):
            load_volume(path)
    out = capfd.readouterr()
    assert out.err == "" and out.out == ""
    assert not [r for r in caplog.records if r.name.startswith("nibabel")]


# -- files that are not files ------------------------------------------------------------------


@pytest.mark.skipif(not Path("/dev/zero").exists(), reason="no /dev/zero")
def test_dev_zero_is_not_a_regular_file():
    with pytest.raises(InvalidVolumeError, match=r"/dev/zero is not a regular file"):
        load_volume("/dev/zero")


def test_fifo_is_not_read(tmp_path):
    fifo = tmp_path / "pipe.nii.gz"
    os.mkfifo(fifo)
    with pytest.raises(InvalidVolumeError, match=r"pipe\.nii\.gz is not a regular file"):
        load_volume(fifo)


def test_name_with_newline_stays_on_one_line(tmp_path):
    path = tmp_path / "bad\nname.nii"
    path.write_bytes(b"\x00" * 600)
    with pytest.raises(InvalidVolumeError, match=r"bad\\nname\.nii is not a NIfTI") as info:
        load_volume(path)
    assert "\n" not in str(info.value)
    assert printable("a\tb\udcff") == "a\\tb\\udcff"


# -- zip archives ------------------------------------------------------------------------------


def _patch_method(path: Path, method: int) -> None:
    """Rewrites the compression method of every member (local headers and central directory)."""
    raw = bytearray(path.read_bytes())
    for sig, off in ((b"PK\x03\x04", 8), (b"PK\x01\x02", 10)):
        i = raw.find(sig)
        while i >= 0:
            struct.pack_into("<H", raw, i + off, method)
            i = raw.find(sig, i + 4)
    path.write_bytes(bytes(raw))


@pytest.mark.parametrize(
    ("method", "error", "message"),
    [
        (6, InvalidVolumeError, r"compression method 6 \(implode\), which is not supported"),
        (99, UnsafeArchiveError, r"is encrypted"),
        (9, InvalidVolumeError, r"compression method 9 \(deflate64\)"),
    ],
)
def test_zip_compression_methods(tmp_path, method, error, message):
    path = tmp_path / "m.zip"
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("s/a.dcm", b"x" * 1000)
    _patch_method(path, method)
    with pytest.raises(error, match=message):
        load_volume(path)


def _utf8_zip(path: Path) -> bytes:
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("s/\u00e9t\u00e9.dcm", b"x" * 100)  # non-ASCII: the UTF-8 flag is set
    return path.read_bytes()


def test_zip_with_invalid_utf8_name_in_central_directory(tmp_path):
    raw = bytearray(_utf8_zip(tmp_path / "u.zip"))
    cd = raw.find(b"PK\x01\x02")
    name_at = raw.find("\u00e9".encode(), cd)
    raw[name_at : name_at + 2] = b"\xff\xfe"
    (tmp_path / "u.zip").write_bytes(bytes(raw))
    with pytest.raises(InvalidVolumeError, match=r"member name is not valid UTF-8"):
        load_volume(tmp_path / "u.zip")


def test_zip_with_invalid_utf8_name_in_local_header(tmp_path):
    raw = bytearray(_utf8_zip(tmp_path / "u.zip"))
    name_at = raw.find("\u00e9".encode())  # first occurrence: the local header
    raw[name_at : name_at + 2] = b"\xff\xfe"
    (tmp_path / "u.zip").write_bytes(bytes(raw))
    with pytest.raises(InvalidVolumeError, match=r"not valid UTF-8"):
        load_volume(tmp_path / "u.zip")


def test_zip_with_two_niftis(tmp_path, vol):
    path = tmp_path / "two.zip"
    one = nib.Nifti1Image(vol, np.eye(4)).to_bytes()
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("a.nii", one)
        zf.writestr("b.nii", one)
    with pytest.raises(InvalidVolumeError, match=r"holds 2 NIfTI files \(a\.nii, b\.nii\)"):
        load_volume(path)


def test_nested_zip(tmp_path):
    inner = tmp_path / "inner.zip"
    with zipfile.ZipFile(inner, "w") as zf:
        zf.writestr("s/a.dcm", b"x")
    outer = tmp_path / "outer.zip"
    with zipfile.ZipFile(outer, "w") as zf:
        zf.write(inner, "inner.zip")
    with pytest.raises(InvalidVolumeError, match=r"holds another zip archive \(inner\.zip\)"):
        load_volume(outer)


def test_zip_member_clash_names_no_temporary_path(tmp_path):
    path = tmp_path / "clash.zip"
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("s", b"a file")
        zf.writestr("s/a.dcm", b"then a folder of the same name")
    with pytest.raises(InvalidVolumeError, match=r"member 's/a\.dcm' is duplicated") as info:
        load_volume(path)
    assert tempfile.gettempdir() not in str(info.value)


def test_zip_ratio_cap(tmp_path):
    path = tmp_path / "dense.zip"
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("s/a.dcm", bytes(3_000_000))
    with pytest.raises(UnsafeArchiveError, match=r"over the 100x cap"):
        load_volume(path, IOLimits(ratio_check_bytes=1_000_000))


# -- DICOM -------------------------------------------------------------------------------------


def _series(tmp_path: Path, vol: np.ndarray, affine=None) -> list[Path]:
    return write_dicom_series(
        vol, np.diag([1.0, 1.0, 3.0, 1.0]) if affine is None else affine, tmp_path / "d"
    )


def _edit(path: Path, **tags) -> None:
    ds = pydicom.dcmread(path)
    for k, v in tags.items():
        setattr(ds, k, v)
    ds.save_as(path)


@pytest.mark.parametrize(
    ("tags", "message"),
    [
        ({"SamplesPerPixel": 3}, r"SamplesPerPixel is 3; expected 1"),
        ({"BitsAllocated": 12}, r"BitsAllocated is 12; expected 8, 16 or 32"),
        ({"Rows": 65535}, r"Rows is 65535; expected between 8 and 1024"),
        ({"PixelSpacing": ["0", "1"]}, r"PixelSpacing is \[0\.0, 1\.0\] mm"),
        ({"ImageOrientationPatient": ["0", "1", "0", "0", "0", "-1"]}, r"mixes slice orient"),
    ],
)
def test_dicom_header_checks(tmp_path, vol, tags, message):
    files = _series(tmp_path, vol)
    _edit(files[5], **tags)
    with pytest.raises(InvalidVolumeError, match=message):
        load_volume(tmp_path / "d")


def test_dicom_damaged_tag_value(tmp_path, vol):
    """A SamplesPerPixel value of the wrong length (GDCM raised RuntimeError on it)."""
    files = _series(tmp_path, vol)
    raw = bytearray(files[0].read_bytes())
    i = raw.find(b"\x28\x00\x02\x00US")  # (0028,0002) SamplesPerPixel, explicit VR
    raw[i + 6 : i + 8] = struct.pack("<H", 3)  # length 3 for a 2-byte US
    files[0].write_bytes(bytes(raw))
    with pytest.raises(InvalidVolumeError, match=r"slice0000\.dcm: the DICOM"):
        load_volume(tmp_path / "d")


def test_dicom_missing_slice(tmp_path, vol):
    files = _series(tmp_path, vol)
    files[7].unlink()
    with pytest.raises(InvalidVolumeError, match=r"spacing is not uniform \(from 3\.000 to 6\.0"):
        load_volume(tmp_path / "d")


def test_dicom_duplicate_position(tmp_path, vol):
    files = _series(tmp_path, vol)
    ds = pydicom.dcmread(files[3])
    _edit(files[4], ImagePositionPatient=ds.ImagePositionPatient)
    with pytest.raises(InvalidVolumeError, match=r"at the same position .*duplicated slices"):
        load_volume(tmp_path / "d")


def test_dicom_zero_slice_spacing(tmp_path, vol):
    files = _series(tmp_path, vol, affine=np.diag([1.0, 1.0, 0.0, 1.0]))
    assert len(files) == SHAPE[2]
    with pytest.raises(InvalidVolumeError, match=r"zero slice spacing"):
        load_volume(tmp_path / "d")


def test_dicom_series_voxel_cap_from_headers(tmp_path, vol):
    _series(tmp_path, vol)
    with pytest.raises(UnsafeArchiveError, match=r"the DICOM series declares 24x28x20"):
        load_volume(tmp_path / "d", IOLimits(max_voxels=10_000))


def test_dicom_per_file_cap(tmp_path, vol):
    _series(tmp_path, vol)
    with pytest.raises(UnsafeArchiveError, match=r"over the 1,000-byte cap for one DICOM file"):
        load_volume(tmp_path / "d", IOLimits(max_dicom_file_bytes=1000))


def test_dicom_zip_still_loads(tmp_path, vol):
    _series(tmp_path, vol)
    v = load_volume(zip_folder(tmp_path / "d", tmp_path / "s.zip"))
    assert v.shape == SHAPE
    np.testing.assert_allclose(v.spacing, (1.0, 1.0, 3.0), atol=1e-5)


# -- temporary folders, uploads ------------------------------------------------------------------


def test_stale_tempdirs_are_cleaned(tmp_path, monkeypatch):
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    dead = tmp_path / "tumortrace-999999999-abc"  # no such pid
    live = tmp_path / f"tumortrace-{os.getpid()}-abc"
    old = tmp_path / "tumortrace-legacy"
    for d in (dead, live, old):
        (d / "series").mkdir(parents=True)
    os.utime(old, (0, 0))
    removed = clean_stale_tempdirs()
    assert sorted(removed) == sorted([dead, old])
    assert live.is_dir() and not dead.exists() and not old.exists()


def test_upload_errors_are_project_errors(tmp_path):
    path = tmp_path / "m.zip"
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("s/a.dcm", b"x" * 1000)
    _patch_method(path, 6)
    with pytest.raises(InvalidVolumeError, match=r"upload:m\.zip: member 's/a\.dcm' uses zip"):
        load_upload(path.read_bytes(), "m.zip")


# -- after resampling ----------------------------------------------------------------------------


def test_tiny_field_of_view_refused_before_resampling():
    data = np.random.default_rng(0).random((8, 8, 8)).astype(np.float32)
    volume = volume_from_array(data, np.diag([0.05, 0.05, 0.05, 1.0]), "tiny")
    with pytest.raises(InvalidVolumeError, match=r"tiny: the field of view is \(0\.4, 0\.4, 0\.4"):
        preprocess(volume, PreprocessConfig(spacing_mm=(5.0, 5.0, 5.0), shape_dhw=(16, 16, 16)))


def test_too_few_voxels_after_resampling():
    data = np.random.default_rng(0).random((30, 30, 30)).astype(np.float32)
    volume = volume_from_array(data, np.eye(4), "small")
    cfg = PreprocessConfig(spacing_mm=(10.0, 10.0, 10.0), shape_dhw=(16, 16, 16))
    with pytest.raises(InvalidVolumeError, match=r"would be \(3, 3, 3\) voxels"):
        check_resampling(volume, cfg)


def test_antialias_cost_bound():
    data = np.random.default_rng(0).random((40, 40, 40)).astype(np.float32)
    volume = volume_from_array(data, np.diag([0.5, 0.5, 0.5, 1.0]), "fine")
    cfg = PreprocessConfig(spacing_mm=(5.0, 5.0, 5.0), shape_dhw=(16, 16, 16))
    check_resampling(volume, cfg)  # within the default bound
    with pytest.raises(InvalidVolumeError, match=r"anti-aliasing filter of 81 taps"):
        check_resampling(volume, cfg, IOLimits(max_antialias_macs=1e6))


def test_dicom_uid_with_newline_and_pydicom_chatter(tmp_path, vol, capfd, caplog):
    """A SeriesInstanceUID holding a newline (found by the fuzzer): one-line message, no log."""
    files = _series(tmp_path, vol)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        _edit(files[2], SeriesInstanceUID="1.2\n3")
    caplog.set_level(logging.DEBUG)
    caplog.clear()
    capfd.readouterr()
    with pytest.raises(InvalidVolumeError, match=r"found 2 DICOM series") as info:
        load_volume(tmp_path / "d")
    assert "\n" not in str(info.value) and "1.2\\n3" in str(info.value)
    assert capfd.readouterr().err == ""
    assert not [r for r in caplog.records if r.name.startswith("pydicom")]


def test_dicom_damaged_element_length_is_refused_before_gdcm(tmp_path, vol):
    """A length field that swallows the rest of the file (found by the fuzzer: GDCM then
    allocated 1.4 GB for that length): refused from the pydicom read, no pixel data found."""
    files = _series(tmp_path, vol)
    raw = bytearray(files[3].read_bytes())
    i = raw.find(b"\x28\x00\x03\x01US")  # (0028,0103) PixelRepresentation, explicit VR
    raw[i + 6 : i + 8] = struct.pack("<H", 0xFFF0)
    files[3].write_bytes(bytes(raw))
    with pytest.raises(InvalidVolumeError, match=r"slice0003\.dcm: no pixel data was found"):
        load_volume(tmp_path / "d")


def test_dicom_pixel_data_shorter_than_declared(tmp_path, vol):
    files = _series(tmp_path, vol)
    _edit(files[1], Rows=SHAPE[1] + 2)  # the pixel data no longer matches Rows x Columns
    with pytest.raises(InvalidVolumeError, match=r"slice0001\.dcm: the pixel data holds 1,344"):
        load_volume(tmp_path / "d")


def test_dicom_invalid_vr_is_refused_before_gdcm(tmp_path, vol):
    """An unknown VR ("SH" -> "S5", found by the fuzzer): GDCM read it as a 4-byte length and
    allocated 1.2 GB; pydicom's read refuses it first."""
    files = _series(tmp_path, vol)
    raw = bytearray(files[3].read_bytes())
    i = raw.find(b"\x02\x00\x13\x00SH")  # (0002,0013) ImplementationVersionName
    raw[i + 4 : i + 6] = b"S5"
    files[3].write_bytes(bytes(raw))
    with pytest.raises(InvalidVolumeError, match=r"slice0003\.dcm: .*\(0002,0013\) has an invalid"):
        load_volume(tmp_path / "d")
