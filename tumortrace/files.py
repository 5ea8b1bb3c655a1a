"""Files: atomic writes, JSON conversion and SHA-256 hashing, one implementation of each.

Every file the package writes (weights, model cards, benchmark JSON, manifests, synthetic volumes,
splits, the tensor cache, the resume file, Grad-CAM NIfTI maps) goes through :func:`atomic_path`:
a temporary file in the destination's folder, then ``os.replace``, so a reader sees the old file
or the new one, never a partial one. The temporary file is created like any ``open(path, "w")``
file (mode ``0o666`` less the umask, i.e. ``0o644`` under the usual umask), so the result is
readable by others exactly as a plain write would be.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
import secrets
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from tumortrace.errors import ConfigError

_CHUNK = 1 << 20
_PLAIN = (str, int, float, bool, type(None))


@contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yields a temporary path to write; on success it replaces ``path`` atomically.

    The temporary name ends with ``path``'s own name (so writers that choose the format by the
    suffix, like ``nibabel.save``, behave the same). On error the temporary file is removed and
    ``path`` is left as it was.

    Raises:
        ConfigError: the folder cannot be created or written (e.g. an unwritable ``--out``).
    """
    path = Path(path)
    tmp = path.parent / f".tmp-{secrets.token_hex(6)}-{path.name}"
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        os.close(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
    except OSError as err:
        raise ConfigError(
            f"Cannot write {path}: {err.strerror or err}. Expected a writable folder; choose "
            "another output folder (e.g. --out) or fix its permissions."
        ) from err
    try:
        yield tmp
        os.replace(tmp, path)
    except OSError as err:
        raise ConfigError(f"Cannot write {path}: {err.strerror or err}.") from err
    finally:
        tmp.unlink(missing_ok=True)


def atomic_write_bytes(path: str | Path, data: bytes) -> Path:
    """Writes ``data`` to ``path`` atomically (see :func:`atomic_path`); returns ``path``."""
    path = Path(path)
    with atomic_path(path) as tmp, tmp.open("wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    return path


def atomic_write_text(path: str | Path, text: str) -> Path:
    """Writes ``text`` as UTF-8, atomically."""
    return atomic_write_bytes(path, text.encode("utf-8"))


def jsonable(obj: Any) -> Any:
    """Converts tuples, paths, numpy values, tensors and dataclasses for ``json.dumps``.

    Non-finite floats become ``None`` (JSON has no NaN), e.g. an AUC undefined for a missing class.
    Arrays and tensors (anything with ``tolist``) become nested lists.
    """
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        to_dict = getattr(obj, "to_dict", None)
        return jsonable(to_dict() if callable(to_dict) else dataclasses.asdict(obj))
    if isinstance(obj, dict):
        return {str(k): jsonable(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple | set | frozenset):
        return [jsonable(v) for v in obj]
    if isinstance(obj, Path):
        return obj.as_posix()
    if type(obj) not in _PLAIN and callable(getattr(obj, "tolist", None)):
        if hasattr(obj, "detach"):  # a torch tensor
            obj = obj.detach().cpu()
        return jsonable(obj.tolist())  # numpy arrays and scalars, torch tensors
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    return obj


def json_text(obj: Any, indent: int | None = 2) -> str:
    """``obj`` through :func:`jsonable` as JSON text (a trailing newline when indented)."""
    text = json.dumps(jsonable(obj), indent=indent, allow_nan=False)
    return text + "\n" if indent is not None else text


def atomic_write_json(path: str | Path, obj: Any, indent: int | None = 2) -> Path:
    """Writes ``obj`` (through :func:`jsonable`) as indented UTF-8 JSON, atomically."""
    return atomic_write_text(path, json_text(obj, indent))


def sha256_bytes(data: bytes) -> str:
    """Hex SHA-256 of ``data``."""
    return hashlib.sha256(data).hexdigest()


def sha256_file(path: str | Path) -> str:
    """Hex SHA-256 of a file's bytes, or of a folder's (a DICOM series) relative names and bytes.

    For a single file this equals :func:`sha256_bytes` of its contents.
    """
    path = Path(path)
    digest = hashlib.sha256()
    files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
    for file in files:
        if file is not path:
            digest.update(file.relative_to(path).as_posix().encode() + b"\0")
        with file.open("rb") as f:
            while chunk := f.read(_CHUNK):
                digest.update(chunk)
    return digest.hexdigest()
