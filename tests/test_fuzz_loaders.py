"""Property-based fuzzing of the NIfTI, zip and DICOM loaders (hypothesis).

The property: whatever the bytes, :func:`tumortrace.io.load_volume` returns a :class:`Volume` or
raises a :class:`TumorTraceError`; nothing else leaves it.

Profiles (environment variable ``TUMORTRACE_FUZZ``):

* ``ci`` (default): a fixed-seed run of about 60 s in all on 2 CPU cores; any other exception
  fails the test (hypothesis shrinks it to a minimal example).
* ``long``: unbounded examples for a run stopped from outside (``timeout -s INT``); other
  exceptions are counted instead of failing, so the whole run is measured. With
  ``TUMORTRACE_FUZZ_STATS=DIR`` each loader writes ``DIR/<loader>.json`` after every example:
  examples, accepted, project errors, other exceptions (by type), slowest example (wall and CPU
  seconds) and peak RSS of the process (MiB). See the README ("Fuzzing").
"""

from __future__ import annotations

import contextlib
import gzip
import io
import json
import os
import resource
import struct
import tempfile
import time
import warnings
import zipfile
from collections import Counter
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
import pytest
from _dicom import write_dicom_series
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tumortrace.errors import TumorTraceError
from tumortrace.io import Volume, load_volume

PROFILE = os.environ.get("TUMORTRACE_FUZZ", "ci")
LONG = PROFILE == "long"
STATS_DIR = os.environ.get("TUMORTRACE_FUZZ_STATS")
CI_EXAMPLES = {"nifti": 1500, "zip": 400, "dicom": 250}


def _settings(loader: str):
    return settings(
        max_examples=10**9 if LONG else CI_EXAMPLES[loader],
        deadline=None,
        derandomize=not LONG,
        database=None,
        suppress_health_check=list(HealthCheck),
        print_blob=True,
    )


class _Stats:
    """Counts one loader's outcomes; in the long profile, written after every example."""

    def __init__(self, loader: str) -> None:
        self.loader = loader
        self.examples = self.accepted = self.project_errors = 0
        self.other: Counter[str] = Counter()
        self.max_s = self.max_cpu_s = 0.0
        self.started = time.time()

    def record(self, seconds: float, outcome: str, cpu_s: float = 0.0) -> None:
        self.examples += 1
        self.max_s = max(self.max_s, seconds)
        self.max_cpu_s = max(self.max_cpu_s, cpu_s)
        if outcome == "accepted":
            self.accepted += 1
        elif outcome == "project":
            self.project_errors += 1
        else:
            self.other[outcome] += 1
        if STATS_DIR:
            rss_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
            doc = {
                "loader": self.loader,
                "profile": PROFILE,
                "examples": self.examples,
                "accepted": self.accepted,
                "project_errors": self.project_errors,
                "other_exceptions": dict(self.other),
                "max_example_s": round(self.max_s, 3),
                "max_example_cpu_s": round(self.max_cpu_s, 3),
                "peak_rss_mib": round(rss_mib, 1),
                "wall_s": round(time.time() - self.started, 1),
            }
            out = Path(STATS_DIR) / f"{self.loader}.json"
            out.parent.mkdir(parents=True, exist_ok=True)
            tmp = out.with_suffix(".tmp")
            tmp.write_text(json.dumps(doc, indent=1))
            os.replace(tmp, out)


def _check(path: Path, stats: _Stats) -> None:
    """The property, timed; the long profile counts other exceptions instead of failing."""
    t0, c0 = time.perf_counter(), time.process_time()
    try:
        result = load_volume(path)
        outcome = "accepted"
        assert isinstance(result, Volume)
        assert np.isfinite(result.data).all()
    except TumorTraceError as err:
        outcome = "project"
        assert "\n" not in str(err)
    except Exception as err:
        stats.record(time.perf_counter() - t0, type(err).__name__, time.process_time() - c0)
        if not LONG:
            raise
        return
    stats.record(time.perf_counter() - t0, outcome, time.process_time() - c0)


# -- NIfTI -------------------------------------------------------------------------------------

_HEADER_FIELDS = {  # (offset, struct format) in a NIfTI-1 header
    "sizeof_hdr": (0, "<i"),
    "dim0": (40, "<h"),
    "dim1": (42, "<h"),
    "dim2": (44, "<h"),
    "dim3": (46, "<h"),
    "dim4": (48, "<h"),
    "datatype": (70, "<h"),
    "bitpix": (72, "<h"),
    "pixdim1": (80, "<f"),
    "pixdim3": (88, "<f"),
    "vox_offset": (108, "<f"),
    "scl_slope": (112, "<f"),
    "scl_inter": (116, "<f"),
    "qform_code": (252, "<h"),
    "sform_code": (254, "<h"),
    "quatern_b": (256, "<f"),
    "srow_x0": (280, "<f"),
    "srow_z2": (320, "<f"),
}


def _base_nifti() -> bytes:
    data = np.random.default_rng(0).integers(0, 500, (12, 12, 10)).astype(np.int16)
    return nib.Nifti1Image(data, np.diag([2.0, 2.0, 2.0, 1.0])).to_bytes()


NIFTI = _base_nifti()
_values = st.one_of(
    st.integers(-(2**15), 2**15 - 1),
    st.sampled_from([0, 1, -1, 1024, 32767, 2**31 - 1]),
    st.floats(allow_nan=True, allow_infinity=True, width=32),
)


def _pack(raw: bytearray, off: int, fmt: str, value) -> None:
    """Writes ``value`` into a header field, wrapped into the field's range."""
    if fmt.endswith("f"):
        v = float(value)
        struct.pack_into(fmt, raw, off, v if abs(v) < 3.4e38 or not np.isfinite(v) else np.inf)
        return
    bits = 8 * struct.calcsize(fmt)
    v = (int(value) if np.isfinite(value) else 0) % (1 << bits)
    struct.pack_into(fmt, raw, off, v - (1 << bits) if v >= 1 << (bits - 1) else v)


@st.composite
def nifti_bytes(draw) -> tuple[bytes, bool]:
    raw = bytearray(NIFTI)
    for name, value in draw(
        st.lists(st.tuples(st.sampled_from(sorted(_HEADER_FIELDS)), _values), max_size=4)
    ):
        off, fmt = _HEADER_FIELDS[name]
        _pack(raw, off, fmt, value)
    for pos, byte in draw(
        st.lists(st.tuples(st.integers(0, len(raw) - 1), st.integers(0, 255)), max_size=6)
    ):
        raw[pos] = byte
    cut = draw(st.one_of(st.none(), st.integers(0, len(raw))))
    if cut is not None:
        raw = raw[:cut]
    gz = draw(st.booleans())
    out = gzip.compress(bytes(raw), compresslevel=1) if gz else bytes(raw)
    if gz and draw(st.booleans()):  # damage the compressed stream too
        flips = draw(
            st.lists(st.tuples(st.integers(0, len(out) - 1), st.integers(0, 255)), max_size=3)
        )
        b = bytearray(out)
        for pos, byte in flips:
            b[pos] = byte
        out = bytes(b)
    return out, gz


_NIFTI_STATS = _Stats("nifti")


@pytest.mark.slow
@_settings("nifti")
@given(case=nifti_bytes())
def test_fuzz_nifti(case) -> None:
    raw, gz = case
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / ("f.nii.gz" if gz else "f.nii")
        path.write_bytes(raw)
        _check(path, _NIFTI_STATS)


# -- DICOM series (folder) and zip ---------------------------------------------------------------

_SERIES_DIR = Path(tempfile.mkdtemp(prefix="fuzz-series-"))
_FILES = write_dicom_series(
    np.random.default_rng(1).integers(0, 800, (12, 12, 10)).astype(np.int16),
    np.diag([1.5, 1.5, 3.0, 1.0]),
    _SERIES_DIR,
)
SERIES = {p.name: p.read_bytes() for p in _FILES}
_TAGS = {
    "Rows": st.integers(0, 70000),
    "Columns": st.integers(0, 70000),
    "BitsAllocated": st.sampled_from([0, 1, 8, 12, 16, 32, 64]),
    "BitsStored": st.integers(0, 64),
    "SamplesPerPixel": st.integers(0, 4),
    "PixelRepresentation": st.integers(0, 2),
    "NumberOfFrames": st.integers(0, 2000),
    "PixelSpacing": st.lists(st.sampled_from(["0", "1", "-1", "1e9", "nan", "x"]), max_size=3),
    "ImagePositionPatient": st.lists(st.sampled_from(["0", "3", "-3", "6", "inf", ""]), max_size=4),
    "ImageOrientationPatient": st.lists(st.sampled_from(["0", "1", "-1", "0.5"]), max_size=7),
    "PhotometricInterpretation": st.sampled_from(["MONOCHROME2", "RGB", "PALETTE COLOR", ""]),
    "SeriesInstanceUID": st.sampled_from(["1.2.3", "1.2.4", ""]),
}


def _set_tag(raw: bytes, name: str, value) -> bytes:
    ds = pydicom.dcmread(io.BytesIO(raw))
    buf = io.BytesIO()
    with warnings.catch_warnings():  # pydicom warns about the invalid values we write on purpose
        warnings.simplefilter("ignore")
        setattr(ds, name, value)
        ds.save_as(buf)
    return buf.getvalue()


@st.composite
def dicom_series(draw) -> dict[str, bytes]:
    files = dict(SERIES)
    names = sorted(files)
    for name, value in draw(
        st.lists(
            st.tuples(
                st.sampled_from(names),
                st.sampled_from(sorted(_TAGS)).flatmap(lambda t: st.tuples(st.just(t), _TAGS[t])),
            ),
            max_size=3,
        )
    ):
        tag, v = value
        with contextlib.suppress(Exception):  # pydicom refuses some values: file kept as it was
            files[name] = _set_tag(files[name], tag, v)
    for name, flips in draw(
        st.lists(
            st.tuples(
                st.sampled_from(names),
                st.lists(
                    st.tuples(st.integers(128, 900), st.integers(0, 255)), min_size=1, max_size=4
                ),
            ),
            max_size=2,
        )
    ):
        b = bytearray(files[name])
        for pos, byte in flips:
            if pos < len(b):
                b[pos] = byte
        files[name] = bytes(b)
    for name in draw(st.lists(st.sampled_from(names), max_size=2, unique=True)):
        action = draw(st.sampled_from(["delete", "duplicate", "truncate"]))
        if action == "delete":
            files.pop(name, None)
        elif action == "duplicate" and name in files:
            files[f"copy_{name}"] = files[name]
        elif name in files:
            files[name] = files[name][: draw(st.integers(0, len(files[name])))]
    return files


_DICOM_STATS = _Stats("dicom")


@pytest.mark.slow
@_settings("dicom")
@given(files=dicom_series())
def test_fuzz_dicom_folder(files) -> None:
    with tempfile.TemporaryDirectory() as d:
        folder = Path(d) / "series"
        folder.mkdir()
        for name, raw in files.items():
            (folder / name).write_bytes(raw)
        _check(folder, _DICOM_STATS)


def _zip_bytes(files: dict[str, bytes], method: int) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", method) as zf:
        for name, raw in files.items():
            zf.writestr(f"series/{name}", raw)
    return buf.getvalue()


ZIP_SERIES = _zip_bytes(SERIES, zipfile.ZIP_DEFLATED)


@st.composite
def zip_bytes(draw) -> bytes:
    kind = draw(st.sampled_from(["series", "mutated-series", "nifti", "mixed"]))
    if kind == "series":
        raw = ZIP_SERIES
    elif kind == "mutated-series":
        method = draw(st.sampled_from([zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED]))
        raw = _zip_bytes(draw(dicom_series()), method)
    elif kind == "nifti":
        raw = _zip_bytes({"scan.nii": NIFTI}, zipfile.ZIP_DEFLATED)
    else:
        raw = _zip_bytes(
            {"a.nii": NIFTI, "b.zip": ZIP_SERIES, "c.dcm": SERIES[min(SERIES)]}, zipfile.ZIP_STORED
        )
    b = bytearray(raw)
    for pos, byte in draw(
        st.lists(st.tuples(st.integers(0, len(b) - 1), st.integers(0, 255)), max_size=6)
    ):
        b[pos] = byte
    for sig, off in draw(
        st.lists(
            st.sampled_from(
                [(b"PK\x03\x04", 8), (b"PK\x01\x02", 10), (b"PK\x03\x04", 6), (b"PK\x01\x02", 8)]
            ),
            max_size=2,
        )
    ):
        i = b.find(sig)
        if i >= 0:
            struct.pack_into(
                "<H", b, i + off, draw(st.sampled_from([1, 6, 9, 12, 14, 93, 99, 0x800, 0xFFFF]))
            )
    cut = draw(st.one_of(st.none(), st.integers(0, len(b))))
    return bytes(b[:cut] if cut is not None else b)


_ZIP_STATS = _Stats("zip")


@pytest.mark.slow
@_settings("zip")
@given(raw=zip_bytes())
def test_fuzz_zip(raw) -> None:
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "upload.zip"
        path.write_bytes(raw)
        _check(path, _ZIP_STATS)


# -- real scanner series (../shared/real-dicom, issue 28) ------------------------------------------

_CORPUS = Path(__file__).resolve().parents[1] / ".." / "shared" / "real-dicom"


def _real_bases() -> dict[str, dict[str, bytes]]:
    """Small real series to mutate: 10 GE MPRAGE slices (a volume that loads and decodes), the
    TrioTim image in its 9 transfer syntaxes stacked 8 slices deep (compressed data GDCM decodes),
    one enhanced multi-frame volume of each vendor, a 4-D series and the field map."""
    if not (_CORPUS / "manifest.csv").is_file():
        return {}

    def members(name: str, keep=None) -> dict[str, bytes]:
        with zipfile.ZipFile(_CORPUS / f"{name}.zip") as zf:
            names = sorted(n for n in zf.namelist() if not n.endswith("/"))
            return {Path(n).name: zf.read(n) for n in names if keep is None or keep(n)}

    ge = members("ge_signa_pioneer_3d_ax_t1_mprage")
    by_position = sorted(
        ge,
        key=lambda n: float(
            pydicom.dcmread(io.BytesIO(ge[n]), stop_before_pixels=True).ImagePositionPatient[2]
        ),
    )
    bases = {"ge": {n: ge[n] for n in by_position[60:70]}}
    for ts in range(1, 10):
        (raw,) = members(f"siemens_trio_ts{ts}").values()
        files = {}
        series = pydicom.uid.generate_uid()
        for k in range(8):
            ds = pydicom.dcmread(io.BytesIO(raw))
            ipp = [float(v) for v in ds.ImagePositionPatient]
            ds.ImagePositionPatient = [ipp[0], ipp[1], ipp[2] + 2.0 * k]
            ds.SeriesInstanceUID, ds.SOPInstanceUID = series, pydicom.uid.generate_uid()
            ds.ImageType = ["ORIGINAL", "PRIMARY", "M", "ND"]
            buf = io.BytesIO()
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                ds.save_as(buf)
            files[f"IM{k}"] = buf.getvalue()
        bases[f"trio_ts{ts}"] = files
    bases["xa30_enhanced"] = members("siemens_prisma_xa30_enhanced_epi_sag", lambda n: "0063" in n)
    bases["vida_enhanced_img"] = members(
        "siemens_vida_enhanced_via_agfa_pacs", lambda n: "0001" in n
    )
    bases["philips_4d"] = members("philips_achieva_fmri_phantom")
    bases["fieldmap"] = members("siemens_prisma_gre_fieldmap")
    return bases


REAL = _real_bases()


@st.composite
def real_dicom_series(draw) -> dict[str, bytes]:
    """One real series, mutated: header tags set, bytes flipped anywhere (pixel data included),
    files truncated, deleted or duplicated, a file gzipped."""
    files = dict(REAL[draw(st.sampled_from(sorted(REAL)))])
    names = sorted(files)
    for name, (tag, v) in draw(
        st.lists(
            st.tuples(
                st.sampled_from(names),
                st.sampled_from(sorted(_TAGS)).flatmap(lambda t: st.tuples(st.just(t), _TAGS[t])),
            ),
            max_size=2,
        )
    ):
        with contextlib.suppress(Exception):
            files[name] = _set_tag(files[name], tag, v)
    for name, flips in draw(
        st.lists(
            st.tuples(
                st.sampled_from(names),
                st.lists(st.tuples(st.floats(0, 1), st.integers(0, 255)), min_size=1, max_size=8),
            ),
            max_size=3,
        )
    ):
        b = bytearray(files[name])
        for where, byte in flips:
            b[min(int(where * len(b)), len(b) - 1)] = byte
        files[name] = bytes(b)
    for name in draw(st.lists(st.sampled_from(names), max_size=2, unique=True)):
        action = draw(st.sampled_from(["delete", "duplicate", "truncate", "gzip"]))
        if action == "delete":
            files.pop(name, None)
        elif action == "duplicate":
            files[f"copy_{name}"] = files[name]
        elif action == "gzip":
            files[f"{name}.gz"] = gzip.compress(files.pop(name), compresslevel=1)
        else:
            files[name] = files[name][: int(draw(st.floats(0, 1)) * len(files[name]))]
    return files


_REAL_STATS = _Stats("real_dicom")


@pytest.mark.slow
@pytest.mark.skipif(not REAL, reason="../shared/real-dicom is absent")
@settings(
    max_examples=10**9 if LONG else 100,
    deadline=None,
    derandomize=not LONG,
    database=None,
    suppress_health_check=list(HealthCheck),
    print_blob=True,
)
@given(files=real_dicom_series())
def test_fuzz_real_dicom(files) -> None:
    with tempfile.TemporaryDirectory() as d:
        folder = Path(d) / "series"
        folder.mkdir()
        for name, raw in files.items():
            (folder / name).write_bytes(raw)
        _check(folder, _REAL_STATS)
