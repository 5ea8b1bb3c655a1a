"""The guards every volume reader shares: size caps read from headers, the library-error wrapper,
and one-line messages.

A reader checks sizes before any array exists (:func:`check_voxels`, :func:`check_ratio`) and runs
inside :func:`guarded`, so only the project's errors leave it: a library's exception on hostile
bytes becomes an :class:`~tumortrace.errors.InvalidVolumeError` naming the user's file, and
library warnings and log chatter are dropped. Messages stay on one line (:func:`printable`,
:func:`one_line`) and never show a temporary path.
"""

from __future__ import annotations

import contextlib
import logging
import re
import tempfile
import warnings
from collections.abc import Iterator

import nibabel as nib
import numpy as np

from tumortrace.config import IOLimits
from tumortrace.errors import InvalidVolumeError, TumorTraceError, UnsafeArchiveError

__all__ = [
    "CHUNK",
    "SUPPORTED",
    "TRAILING_SLACK",
    "check_declared_bytes",
    "check_ratio",
    "check_voxels",
    "guarded",
    "nums",
    "one_line",
    "printable",
    "read_capped",
]

SUPPORTED = (
    ".nii, .nii.gz, .mgz/.mgh (FreeSurfer), a folder holding one DICOM series, or a .zip of "
    "one DICOM series"
)
"""What :func:`tumortrace.io.load_volume` accepts, as shown in error messages."""

CHUNK = 1 << 20
"""Bytes per read of a counted stream (a decompressing NIfTI, a zip member)."""

TRAILING_SLACK = 16 << 20
"""Bytes tolerated after the data a NIfTI or MGH header declares (never read into memory)."""


def printable(text: str) -> str:
    """``text`` with control and undecodable characters escaped, so a message stays one line."""
    return "".join(c if c.isprintable() else c.encode("unicode_escape").decode() for c in text)


def one_line(text: str) -> str:
    """Whitespace runs (newlines included) collapsed to one space; temporary paths hidden."""
    text = re.sub(
        re.escape(tempfile.gettempdir().rstrip("/")) + r"/tumortrace-[^\s'\"]*", "<archive>", text
    )
    return " ".join(printable(text).split())


def nums(values, digits: int = 4) -> str:
    """``[1.0, 0.5]``: numbers rounded, as plain Python floats (no ``np.float64(...)``)."""
    return str([round(float(v), digits) for v in np.ravel(values)])


def _gb(n: float) -> str:
    return f"{n / 1e9:.2f} GB"


@contextlib.contextmanager
def _quiet_nibabel() -> Iterator[None]:
    """Library log chatter neither printed nor logged: nibabel's header fixes ("vox offset ...
    setting to minimum") and pydicom's value warnings ("Invalid value for VR UI ...")."""
    loggers = [nib.imageglobals.logger, logging.getLogger("pydicom")]
    saved = [(lg.handlers, lg.propagate) for lg in loggers]
    for lg in loggers:
        lg.handlers, lg.propagate = [logging.NullHandler()], False
    try:
        yield
    finally:
        for lg, (handlers, propagate) in zip(loggers, saved, strict=True):
            lg.handlers, lg.propagate = handlers, propagate


@contextlib.contextmanager
def guarded(source: str) -> Iterator[None]:
    """Only the project's errors leave a reader; library warnings and log chatter are dropped.

    A :class:`TumorTraceError` passes through; anything else a library raises on hostile bytes
    (``NotImplementedError``, ``UnicodeDecodeError``, GDCM's ``RuntimeError``, ``MemoryError``...)
    becomes an :class:`InvalidVolumeError` naming the user's file, never a temporary path.
    """
    try:
        with (
            warnings.catch_warnings(),
            np.errstate(all="ignore"),
            _quiet_nibabel(),
        ):
            warnings.simplefilter("ignore")
            yield
    except TumorTraceError as err:
        text = str(err)
        clean = one_line(text)  # a header value (e.g. a UID) may hold a newline
        if clean == text:
            raise
        raise type(err)(clean) from err
    except MemoryError as err:
        raise InvalidVolumeError(
            f"{source}: reading it needs more memory than this process may use; expected one "
            "brain MRI volume. Crop or resample it first."
        ) from err
    except OSError as err:
        raise InvalidVolumeError(
            f"{source}: cannot be read ({err.strerror or type(err).__name__})."
        ) from err
    except Exception as err:  # (the point: any library error on user bytes)
        detail = one_line(str(err))[:300] or "no details"
        raise InvalidVolumeError(
            f"{source}: cannot read the file ({type(err).__name__}: {detail}); expected "
            f"{SUPPORTED}."
        ) from err


def check_ratio(decompressed: int, compressed: int, source: str, limits: IOLimits) -> None:
    """Rejects a decompressed/compressed ratio over the cap (checked above a size floor)."""
    if decompressed <= limits.ratio_check_bytes:
        return
    ratio = decompressed / max(compressed, 1)
    if ratio > limits.max_compression_ratio:
        raise UnsafeArchiveError(
            f"{source}: {compressed:,} compressed bytes declare {decompressed:,} decompressed "
            f"({ratio:,.0f}x, over the {limits.max_compression_ratio:g}x cap); MRI compresses "
            "2-10x, so the file was rejected as a decompression bomb."
        )


def check_declared_bytes(declared: int, source: str, limits: IOLimits) -> None:
    """Rejects a header that declares more image bytes than ``limits.max_decompressed_bytes``
    (NIfTI, MGH: before any voxel is read)."""
    cap = limits.max_decompressed_bytes
    if declared > cap:
        raise UnsafeArchiveError(
            f"{source}: the header declares {declared:,} bytes of image data, over the "
            f"{cap:,}-byte cap; expected a single brain MRI volume. Resample or crop it first."
        )


def check_voxels(shape: tuple[int, ...], source: str, limits: IOLimits, what: str) -> None:
    """Rejects more voxels than ``limits.max_voxels`` (from a header, before any array exists)."""
    n = int(np.prod(np.asarray(shape, dtype=np.int64)))
    if n > limits.max_voxels:
        dims = "x".join(str(int(s)) for s in shape)
        raise UnsafeArchiveError(
            f"{source}: {what} declares {dims} = {n:,} voxels ({_gb(4.0 * n)} as float32), over "
            f"the {limits.max_voxels:,}-voxel cap; expected one brain MRI volume. Crop or "
            "resample it first."
        )


def read_capped(stream, head: bytes, declared: int, limit: int, source: str) -> bytes:
    """The rest of a (possibly decompressing) stream after ``head``, read in chunks with a counter.

    A stream longer than ``limit`` bytes stops there (a decompression bomb behind a small header
    never reaches memory); one shorter than the ``declared`` bytes is truncated.

    Raises:
        UnsafeArchiveError: over ``limit``.
        InvalidVolumeError: fewer than ``declared`` bytes.
    """
    buf = bytearray(head)
    while True:
        chunk = stream.read(CHUNK)
        if not chunk:
            break
        buf += chunk
        if len(buf) > limit:
            raise UnsafeArchiveError(
                f"{source}: decompressed data exceeds the {limit:,}-byte cap (the header declares "
                f"{declared:,} bytes); the file looks like a decompression bomb and was rejected."
            )
    if len(buf) < declared:
        raise InvalidVolumeError(
            f"{source} is truncated: {len(buf):,} of {declared:,} bytes present. Copy or download "
            "the file again."
        )
    return bytes(buf)
