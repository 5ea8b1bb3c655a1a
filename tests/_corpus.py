"""A corpus of malformed inputs, generated (nothing large is committed).

:func:`write_corpus` writes every kind of hostile input found in issue 19 (and the older rules):
damaged NIfTI headers and data, zip archives with unsupported methods, bad names or unsafe members,
DICOM series with bad headers or geometry, volumes too big or too small, non-regular files. Each
must end in one ``error:`` line. Used by ``tests/test_corpus.py`` and
``benchmarks/bench_hostile.py``.
"""

from __future__ import annotations

import gzip
import io
import os
import stat
import struct
import zipfile
from collections.abc import Callable
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
from _dicom import write_dicom_series

SHAPE = (24, 28, 20)


def _vol(seed: int = 0, shape=SHAPE) -> np.ndarray:
    return np.random.default_rng(seed).integers(1, 1000, shape).astype(np.int16)


def _nii(path: Path, data, affine=None, gz: bool | None = None) -> Path:
    img = nib.Nifti1Image(data, np.eye(4) if affine is None else affine)
    raw = img.to_bytes()
    gz = path.name.endswith(".gz") if gz is None else gz
    path.write_bytes(gzip.compress(raw, 1) if gz else raw)
    return path


def _header_only(path: Path, shape, dtype, extra: int = 1000) -> Path:
    hdr = nib.Nifti1Header()
    hdr.set_data_shape(shape)
    hdr.set_data_dtype(dtype)
    hdr["vox_offset"] = 352
    path.write_bytes(gzip.compress(hdr.binaryblock + bytes(4) + bytes(extra)))
    return path


def _zip(path: Path, members: dict[str, bytes], method=zipfile.ZIP_DEFLATED) -> Path:
    with zipfile.ZipFile(path, "w", method) as zf:
        for name, data in members.items():
            zf.writestr(name, data)
    return path


def _patch_method(path: Path, method: int, flags: int | None = None) -> Path:
    raw = bytearray(path.read_bytes())
    for sig, off in ((b"PK\x03\x04", 8), (b"PK\x01\x02", 10)):
        i = raw.find(sig)
        while i >= 0:
            struct.pack_into("<H", raw, i + off, method)
            if flags is not None:
                struct.pack_into("<H", raw, i + off - 2, flags)
            i = raw.find(sig, i + 4)
    path.write_bytes(bytes(raw))
    return path


def _series(folder: Path, edit: Callable[[list[Path]], None] | None = None, affine=None) -> Path:
    files = write_dicom_series(
        _vol(1, (16, 16, 12)), np.diag([1.0, 1.0, 3.0, 1.0]) if affine is None else affine, folder
    )
    if edit is not None:
        edit(files)
    return folder


def _zip_folder(folder: Path, path: Path) -> Path:
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zf:
        for p in sorted(folder.rglob("*")):
            if p.is_file():
                zf.write(p, "series/" + p.relative_to(folder).as_posix())
    return path


def _dcm_edit(index: int, **tags) -> Callable[[list[Path]], None]:
    def edit(files: list[Path]) -> None:
        ds = pydicom.dcmread(files[index])
        for k, v in tags.items():
            setattr(ds, k, v)
        ds.save_as(files[index])

    return edit


def _dcm_bytes(index: int, find: bytes, offset: int, value: bytes) -> Callable[[list[Path]], None]:
    def edit(files: list[Path]) -> None:
        raw = bytearray(files[index].read_bytes())
        i = raw.find(find)
        raw[i + offset : i + offset + len(value)] = value
        files[index].write_bytes(bytes(raw))

    return edit


def _dup_position(files: list[Path]) -> None:
    src = pydicom.dcmread(files[3])
    _dcm_edit(4, ImagePositionPatient=src.ImagePositionPatient)(files)


def _drop(index: int) -> Callable[[list[Path]], None]:
    return lambda files: files[index].unlink()


def _no_position(files: list[Path]) -> None:
    ds = pydicom.dcmread(files[2])
    del ds.ImagePositionPatient
    ds.save_as(files[2])


def _utf8_zip(path: Path, where: str) -> Path:
    _zip(path, {"s/\u00e9t\u00e9.dcm": b"x" * 100}, zipfile.ZIP_STORED)
    raw = bytearray(path.read_bytes())
    start = raw.find(b"PK\x01\x02") if where == "central" else 0
    i = raw.find("\u00e9".encode(), start)
    raw[i : i + 2] = b"\xff\xfe"
    path.write_bytes(bytes(raw))
    return path


def _link_zip(path: Path) -> Path:
    info = zipfile.ZipInfo("series/link.dcm")
    info.external_attr = (stat.S_IFLNK | 0o777) << 16
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr(info, "/etc/passwd")
    return path


def write_corpus(d: Path) -> dict[str, Path]:
    """Writes the corpus under ``d``; returns ``{case name: path}`` (files and folders)."""
    d.mkdir(parents=True, exist_ok=True)
    good = _vol()
    c: dict[str, Path] = {}
    # -- NIfTI ------------------------------------------------------------------------------------
    c["huge-1024x1024x512-uint8-header"] = _header_only(
        d / "huge.nii.gz", (1024, 1024, 512), np.uint8
    )
    c["ratio-bomb-header"] = _header_only(d / "ratio.nii.gz", (512, 512, 256), np.int16)
    raw = nib.Nifti1Image(np.ones((16, 16, 16), np.uint8), np.eye(4)).to_bytes()
    bomb = d / "bomb.nii.gz"
    bomb.write_bytes(gzip.compress(raw + bytes(20_000_000), 6))
    c["gzip-bomb-trailing-zeros"] = bomb
    c["complex64"] = _nii(d / "complex.nii.gz", good.astype(np.complex64))
    rgb = np.zeros((16, 16, 16), dtype=[("R", "u1"), ("G", "u1"), ("B", "u1")])
    rgb["R"] = _vol(2, (16, 16, 16)) % 255
    c["rgb24"] = _nii(d / "rgb.nii", rgb)
    img = nib.Nifti1Image(good, None)
    img.header["pixdim"][1:4] = [1.0, 0.0, 1.0]
    img.header.set_sform(None, code=0)
    img.header.set_qform(None, code=0)
    (d / "pixdim0.nii").write_bytes(img.to_bytes())
    c["pixdim-zero"] = d / "pixdim0.nii"
    img = nib.Nifti1Image(good, np.eye(4))
    img.header.set_slope_inter(1e38, 0)
    raw = bytearray(img.to_bytes())
    struct.pack_into("<f", raw, 108, 100.0)
    (d / "voxoffset.nii").write_bytes(bytes(raw))
    c["vox-offset-too-low-plus-scale-overflow"] = d / "voxoffset.nii"
    over = nib.Nifti1Image(good, np.eye(4))
    over.header.set_slope_inter(1e38, 0)
    (d / "overflow.nii").write_bytes(over.to_bytes())
    c["scale-overflow-to-inf"] = d / "overflow.nii"
    c["tiny-fov-8mm-at-0.05mm"] = _nii(
        d / "tiny_fov.nii.gz", _vol(3, (160, 160, 160)).astype(np.uint8), np.diag([0.05] * 3 + [1])
    )
    c["8x8x8-at-0.05mm"] = _nii(d / "8cube.nii.gz", _vol(3, (8, 8, 8)), np.diag([0.05] * 3 + [1]))
    good_gz = _nii(d / "good.nii.gz", good).read_bytes()
    (d / "cut.nii.gz").write_bytes(good_gz[: len(good_gz) // 2])
    c["truncated-gz"] = d / "cut.nii.gz"
    good_raw = nib.Nifti1Image(good, np.eye(4)).to_bytes()
    (d / "cut.nii").write_bytes(good_raw[:-1000])
    c["truncated-nii"] = d / "cut.nii"
    (d / "bad_gzip.nii.gz").write_bytes(b"\x1f\x8b\x08\x00 not a gzip stream")
    c["corrupt-gzip"] = d / "bad_gzip.nii.gz"
    (d / "zeros.nii").write_bytes(bytes(600))
    c["nii-without-magic"] = d / "zeros.nii"
    (d / "empty.nii.gz").write_bytes(b"")
    c["empty-file"] = d / "empty.nii.gz"
    (d / "notes.txt").write_text("not an image\n" * 50)
    c["text-file"] = d / "notes.txt"
    c["2d"] = _nii(d / "2d.nii", _vol(4, (64, 64)))
    c["4d-three-volumes"] = _nii(d / "4d.nii.gz", _vol(5, (16, 16, 16, 3)))
    nan = _vol(6, (16, 16, 16)).astype(np.float32)
    nan[3, 4, 5] = np.nan
    c["nan"] = _nii(d / "nan.nii.gz", nan)
    c["constant"] = _nii(d / "const.nii.gz", np.full((16, 16, 16), 7, np.int16))
    c["spacing-50mm"] = _nii(d / "spacing50.nii.gz", good, np.diag([1, 1, 50.0, 1]))
    (d / "bad\nname.nii").write_bytes(bytes(600))
    c["newline-in-name"] = d / "bad\nname.nii"
    # -- zip -----------------------------------------------------------------------------------
    c["zip-implode"] = _patch_method(_zip(d / "implode.zip", {"s/a.dcm": b"x" * 1000}), 6)
    c["zip-aes-method-99"] = _patch_method(_zip(d / "aes.zip", {"s/a.dcm": b"x" * 1000}), 99, 1)
    c["zip-deflate64"] = _patch_method(_zip(d / "d64.zip", {"s/a.dcm": b"x" * 1000}), 9)
    c["zip-utf8-central"] = _utf8_zip(d / "utf8c.zip", "central")
    c["zip-utf8-local"] = _utf8_zip(d / "utf8l.zip", "local")
    one = nib.Nifti1Image(good, np.eye(4)).to_bytes()
    c["zip-two-niftis"] = _zip(d / "two_nifti.zip", {"a.nii": one, "b.nii": one})
    inner = _zip(d / "inner.zip", {"s/a.dcm": b"x"}).read_bytes()
    c["zip-nested"] = _zip(d / "nested.zip", {"inner.zip": inner})
    c["zip-dotdot"] = _zip(d / "dotdot.zip", {"../escape.dcm": b"x"})
    c["zip-absolute"] = _zip(d / "abs.zip", {"/tmp/tumortrace_corpus.dcm": b"x"})
    c["zip-symlink"] = _link_zip(d / "link.zip")
    c["zip-corrupt"] = d / "corrupt.zip"
    c["zip-corrupt"].write_bytes(b"PK\x03\x04" + bytes(100))
    c["zip-empty"] = _zip(d / "empty.zip", {})
    c["zip-ratio-bomb"] = _zip(d / "ratio.zip", {"s/a.dcm": bytes(70_000_000)})
    c["zip-file-and-folder-clash"] = _zip(d / "clash.zip", {"s": b"f", "s/a.dcm": b"x"})
    # -- DICOM (zipped series, and folders) --------------------------------------------------------
    dicom_cases = {
        "dicom-corrupt-samplesperpixel": _dcm_bytes(0, b"\x28\x00\x02\x00US", 6, b"\x03\x00"),
        "dicom-samplesperpixel-3": _dcm_edit(5, SamplesPerPixel=3),
        "dicom-bitsallocated-12": _dcm_edit(5, BitsAllocated=12),
        "dicom-rows-65535-9kb-zip": _dcm_bytes(0, b"\x28\x00\x10\x00US", 8, b"\xff\xff"),
        "dicom-pixelspacing-0": _dcm_edit(5, PixelSpacing=["0", "0"]),
        "dicom-mixed-orientation": _dcm_edit(5, ImageOrientationPatient=[0, 1, 0, 0, 0, -1]),
        "dicom-missing-slice": _drop(6),
        "dicom-duplicate-position": _dup_position,
        "dicom-missing-position": _no_position,
    }
    for name, edit in dicom_cases.items():
        folder = _series(d / f"{name}-series", edit)
        c[name] = _zip_folder(folder, d / f"{name}.zip")
    c["dicom-zero-slice-spacing-folder"] = _series(
        d / "zero-spacing", affine=np.diag([1.0, 1.0, 0.0, 1.0])
    )
    c["dicom-single-file"] = sorted((d / "dicom-missing-slice-series").glob("*.dcm"))[0]
    (d / "no-dicom").mkdir()
    (d / "no-dicom" / "a.txt").write_text("hello")
    c["folder-without-dicom"] = d / "no-dicom"
    # -- not regular files ---------------------------------------------------------------------
    fifo = d / "pipe.nii.gz"
    if not fifo.exists():
        os.mkfifo(fifo)
    c["fifo"] = fifo
    if Path("/dev/zero").exists():
        c["dev-zero"] = Path("/dev/zero")
    return c


def corpus_bytes_summary(cases: dict[str, Path]) -> str:
    """One line: how many cases and their total size on disk (for reports)."""
    total = sum(p.stat().st_size for p in cases.values() if p.is_file() and p.stat().st_size)
    buf = io.StringIO()
    buf.write(f"{len(cases)} cases, {total / 1e6:.1f} MB on disk")
    return buf.getvalue()
