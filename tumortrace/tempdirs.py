"""Private temporary folders for uploads and extracted archives, and clean-up of stale ones.

Nothing a user uploads is written anywhere but a fresh mode-0700 folder that is removed when its
context exits (:func:`private_tempdir`); the folders of a process killed before it could remove
them are found by name and removed at the next start (:func:`clean_stale_tempdirs`).
"""

from __future__ import annotations

import os
import re
import shutil
import stat
import tempfile
import time
from pathlib import Path

__all__ = ["TEMP_PREFIX", "clean_stale_tempdirs", "private_tempdir"]

TEMP_PREFIX = "tumortrace-"


def private_tempdir() -> tempfile.TemporaryDirectory[str]:
    """A fresh mode-0700 temporary directory, removed when its context exits (also on error).

    Its name carries the process id (``tumortrace-<pid>-...``) so that
    :func:`clean_stale_tempdirs` can tell a dead process's leftovers from a live one's.
    """
    return tempfile.TemporaryDirectory(prefix=f"{TEMP_PREFIX}{os.getpid()}-")


def _pid_alive(pid: int) -> bool:
    """Whether process ``pid`` exists (one owned by another user counts as alive)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def clean_stale_tempdirs(max_age_s: float = 3600.0) -> list[Path]:
    """Removes ``tumortrace-*`` temporary folders left by killed processes (e.g. SIGKILL).

    A folder named ``tumortrace-<pid>-...`` is removed when that process no longer exists; an older
    unnamed-pid ``tumortrace-...`` folder when it is older than ``max_age_s``. Only folders owned by
    this user are touched. Called at start-up by the CLI and the app.

    Returns:
        The removed folders.
    """
    removed: list[Path] = []
    root = Path(tempfile.gettempdir())
    try:
        entries = list(root.glob(f"{TEMP_PREFIX}*"))
    except OSError:
        return removed
    now = time.time()
    for p in entries:
        try:
            st = p.lstat()
            if not stat.S_ISDIR(st.st_mode) or st.st_uid != os.getuid():
                continue
            m = re.match(rf"{TEMP_PREFIX}(\d+)-", p.name)
            stale = (
                not _pid_alive(int(m.group(1)))
                if m and int(m.group(1)) != os.getpid()
                else (m is None and now - st.st_mtime > max_age_s)
            )
            if stale:
                shutil.rmtree(p, ignore_errors=True)
                removed.append(p)
        except OSError:
            continue
    return removed
