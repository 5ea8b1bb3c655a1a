"""Untrusted uploads parsed in a child process with a memory and a time limit.

The app's server is shared by every user: a hostile upload that made a library allocate gigabytes
or spin would hurt all of them. :func:`load_upload_isolated` runs :func:`tumortrace.io.load_upload`
in a child process (``forkserver``: a clean, single-threaded parent for the child, safe to use from
a threaded server) whose address space is capped with ``RLIMIT_AS``
(:attr:`IOLimits.worker_memory_bytes`) and which is killed after
:attr:`IOLimits.worker_timeout_s`. The child sends back the validated :class:`Volume` (arrays
pickled by our own code; no user bytes are ever unpickled) or the error's message.
"""

from __future__ import annotations

import contextlib
import multiprocessing as mp
import resource
from multiprocessing.connection import Connection

from tumortrace.config import IOLimits
from tumortrace.errors import InvalidVolumeError, TumorTraceError, UnsafeArchiveError
from tumortrace.io import Volume, load_upload

__all__ = ["load_upload_isolated"]

_ERRORS = {cls.__name__: cls for cls in (InvalidVolumeError, UnsafeArchiveError)}


def _child(conn: Connection, data: bytes, filename: str, limits: IOLimits) -> None:
    """Runs in the child: caps the address space, parses, sends ``("ok", volume)`` or an error."""
    cap = int(limits.worker_memory_bytes)
    with contextlib.suppress(ValueError, OSError):  # a lower hard limit may apply: keep it
        resource.setrlimit(resource.RLIMIT_AS, (cap, cap))
    try:
        conn.send(("ok", load_upload(data, filename, limits)))
    except TumorTraceError as err:
        name = type(err).__name__ if type(err).__name__ in _ERRORS else "InvalidVolumeError"
        conn.send(("error", name, str(err)))
    except MemoryError:
        conn.send(("memory", "", ""))
    finally:
        conn.close()


def _shown(filename: str) -> str:
    from tumortrace.guards import printable

    return "upload:" + printable(str(filename).replace("\\", "/").split("/")[-1])[:200]


def load_upload_isolated(
    data: bytes,
    filename: str,
    limits: IOLimits = IOLimits(),  # noqa: B008 (frozen, immutable default)
) -> Volume:
    """:func:`tumortrace.io.load_upload` in a child process with memory and time limits.

    Args:
        data: the uploaded bytes.
        filename: the name the user gave (for messages).
        limits: the loader's guards plus ``worker_memory_bytes`` and ``worker_timeout_s``.

    Returns:
        The validated :class:`Volume` (``source = "upload:<name>"``).

    Raises:
        InvalidVolumeError / UnsafeArchiveError: what :func:`load_upload` raises, or the child ran
            out of its memory or time, or stopped without an answer.
    """
    if len(data) > limits.max_upload_bytes:  # refused before a byte is copied to the child
        return load_upload(data, filename, limits)
    ctx = mp.get_context("forkserver")
    ctx.set_forkserver_preload(["tumortrace.io"])
    receiver, sender = ctx.Pipe(duplex=False)
    proc = ctx.Process(target=_child, args=(sender, data, filename, limits), daemon=True)
    proc.start()
    sender.close()
    source = _shown(filename)
    try:
        if not receiver.poll(limits.worker_timeout_s):
            raise UnsafeArchiveError(
                f"{source}: reading it took longer than {limits.worker_timeout_s:g} s and was "
                "stopped; expected one brain MRI volume."
            )
        try:
            message = receiver.recv()
        except (EOFError, OSError) as err:
            proc.join(timeout=5)
            raise InvalidVolumeError(
                f"{source}: the reader stopped without an answer (exit code {proc.exitcode}), "
                "probably out of memory; expected one brain MRI volume."
            ) from err
    finally:
        receiver.close()
        if proc.is_alive():
            proc.kill()
        proc.join(timeout=5)
    kind, *rest = message
    if kind == "ok":
        return rest[0]
    if kind == "memory":
        gib = limits.worker_memory_bytes / 2**30
        raise InvalidVolumeError(
            f"{source}: reading it needs more memory than the {gib:.1f} GiB an upload may use; "
            "expected one brain MRI volume. Crop or resample it first."
        )
    name, text = rest
    raise _ERRORS.get(name, InvalidVolumeError)(text)
