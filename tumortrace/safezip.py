"""The safe zip extractor: every member is checked before anything is extracted.

Refused: an unreadable archive, more than ``max_zip_members`` members, more declared bytes than
``max_decompressed_bytes`` or a compression ratio over the cap, and any member with an absolute or
``..`` path, a link, encryption, an unsupported method or a NUL byte in its name. Members are then
written with a running byte counter (a member whose header lies about its size stops at the cap),
each to a new file (a duplicated name is refused), into a folder the caller owns (a private
temporary directory, :func:`tumortrace.tempdirs.private_tempdir`).
"""

from __future__ import annotations

import re
import stat
import zipfile
from pathlib import Path, PurePosixPath

from tumortrace.config import IOLimits
from tumortrace.errors import InvalidVolumeError, TumorTraceError, UnsafeArchiveError
from tumortrace.guards import CHUNK, check_ratio, one_line, printable

__all__ = ["extract_zip"]

_ZIP_METHODS = {  # the compression methods extracted (zipfile reads them all)
    zipfile.ZIP_STORED: "stored",
    zipfile.ZIP_DEFLATED: "deflate",
    zipfile.ZIP_BZIP2: "bzip2",
    zipfile.ZIP_LZMA: "lzma",
}
_ZIP_METHOD_NAMES = {1: "shrink", 6: "implode", 9: "deflate64", 93: "zstandard", 99: "AES"}


def _is_link(info: zipfile.ZipInfo) -> bool:
    return stat.S_ISLNK(info.external_attr >> 16)


def _member_parts(info: zipfile.ZipInfo, source: str) -> tuple[str, ...]:
    """Validated relative path parts of a zip member."""
    name = info.filename
    shown = printable(name)
    if name.startswith(("/", "\\")) or re.match(r"^[A-Za-z]:", name):
        raise UnsafeArchiveError(
            f"{source}: member {shown!r} has an absolute path; expected paths relative to the "
            "archive. Re-create the zip from inside the series folder."
        )
    parts = PurePosixPath(name.replace("\\", "/")).parts
    if ".." in parts:
        raise UnsafeArchiveError(
            f"{source}: member {shown!r} points outside the archive ('..'); such archives are "
            "rejected. Re-create the zip from inside the series folder."
        )
    if _is_link(info):
        raise UnsafeArchiveError(
            f"{source}: member {shown!r} is a symbolic link; links are rejected."
        )
    if info.flag_bits & 0x1 or info.compress_type == 99:
        raise UnsafeArchiveError(f"{source}: member {shown!r} is encrypted; expected a plain zip.")
    if info.compress_type not in _ZIP_METHODS:
        method = _ZIP_METHOD_NAMES.get(info.compress_type, "unknown")
        raise InvalidVolumeError(
            f"{source}: member {shown!r} uses zip compression method {info.compress_type} "
            f"({method}), which is not supported; expected {', '.join(_ZIP_METHODS.values())}. "
            "Re-create the zip with a standard tool."
        )
    if "\x00" in name:
        raise UnsafeArchiveError(f"{source}: member {shown!r} has a NUL byte in its name.")
    return parts


def _open_zip(path: Path, source: str) -> zipfile.ZipFile:
    """Opens ``path`` as a zip archive; any failure is an :class:`InvalidVolumeError`."""
    try:
        return zipfile.ZipFile(path)
    except UnicodeDecodeError as err:
        raise InvalidVolumeError(
            f"{source} is not a readable zip archive (a member name is not valid UTF-8)."
        ) from err
    except Exception as err:  # (BadZipFile, OSError, ValueError, struct.error...)
        raise InvalidVolumeError(
            f"{source} is not a readable zip archive ({one_line(str(err))[:150]})."
        ) from err


def _checked_members(
    zf: zipfile.ZipFile, path: Path, source: str, limits: IOLimits
) -> tuple[list[tuple[zipfile.ZipInfo, tuple[str, ...]]], int]:
    """Checks the member count, the declared size and ratio, then every member's name and method.

    Returns:
        ``(members, declared)``: each member with its validated path parts, and the total
        uncompressed bytes the headers declare.
    """
    cap = limits.max_decompressed_bytes
    infos = zf.infolist()
    if len(infos) > limits.max_zip_members:
        raise UnsafeArchiveError(
            f"{source} has {len(infos):,} members, over the cap of {limits.max_zip_members:,}; "
            "expected one DICOM series. Zip only the series folder."
        )
    declared = sum(i.file_size for i in infos)
    if declared > cap:
        raise UnsafeArchiveError(
            f"{source} declares {declared:,} uncompressed bytes, over the {cap:,}-byte cap; "
            "expected one DICOM series."
        )
    check_ratio(declared, path.stat().st_size, source, limits)
    return [(info, _member_parts(info, source)) for info in infos], declared


def _extract_member(
    zf: zipfile.ZipFile,
    info: zipfile.ZipInfo,
    target: Path,
    source: str,
    limits: IOLimits,
    total: int,
    declared: int,
) -> int:
    """Writes one member to the new file ``target``, counting bytes against the decompressed cap.

    Args:
        total: bytes extracted so far from earlier members.
        declared: uncompressed bytes all headers declare (for the message).

    Returns:
        The running total after this member.
    """
    cap = limits.max_decompressed_bytes
    shown = printable(info.filename)
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        with zf.open(info) as src, target.open("xb") as dst:
            while chunk := src.read(CHUNK):
                total += len(chunk)
                if total > cap:
                    raise UnsafeArchiveError(
                        f"{source}: extracted data exceeds the {cap:,}-byte cap although "
                        f"the headers declare {declared:,}; the archive is rejected."
                    )
                dst.write(chunk)
    except TumorTraceError:
        raise
    except UnicodeDecodeError as err:
        raise InvalidVolumeError(
            f"{source}: member {shown!r} has a name that is not valid UTF-8 in its local "
            "header; the archive is damaged."
        ) from err
    except (FileExistsError, NotADirectoryError, IsADirectoryError) as err:
        raise InvalidVolumeError(
            f"{source}: member {shown!r} is duplicated or clashes with a folder of the "
            "same name; expected one file per name."
        ) from err
    except OSError as err:
        raise InvalidVolumeError(
            f"{source}: member {shown!r} cannot be extracted ({err.strerror or err})."
        ) from err
    except Exception as err:  # (BadZipFile, zlib.error, EOFError...)
        raise InvalidVolumeError(
            f"{source}: member {shown!r} is corrupt ({type(err).__name__}: "
            f"{one_line(str(err))[:150]})."
        ) from err
    return total


def extract_zip(path: Path, dest: Path, source: str, limits: IOLimits) -> None:
    """Checks every member of a zip, then extracts it into ``dest`` with a running byte counter.

    Folders, ``__MACOSX`` and ``._`` resource forks are skipped.

    Raises:
        UnsafeArchiveError: a cap is exceeded or a member breaks a safety rule.
        InvalidVolumeError: the archive or a member cannot be read or written.
    """
    with _open_zip(path, source) as zf:
        members, declared = _checked_members(zf, path, source, limits)
        total = 0
        for info, parts in members:
            if info.is_dir() or not parts or parts[0] == "__MACOSX" or parts[-1].startswith("._"):
                continue
            target = dest.joinpath(*parts)
            total = _extract_member(zf, info, target, source, limits, total, declared)
