"""The app served on this machine for a real browser: the browser test and the browser benchmarks.

:func:`serve` runs ``streamlit run app.py`` on 127.0.0.1 at a free port, headless, without the
file watcher or usage statistics (nothing else is contacted), with ``$TUMORTRACE_WEIGHTS_DIR``
set, waits until the server answers its health check, and stops it afterwards. Lives beside
``app.py``; it starts the app as a separate process and never imports streamlit itself.
"""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import IO, NamedTuple

ROOT = Path(__file__).resolve().parent


class LocalApp(NamedTuple):
    """A running app server: its base URL and process."""

    url: str
    proc: subprocess.Popen


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_healthy(url: str, proc: subprocess.Popen, timeout: float = 120.0) -> None:
    """Returns once ``url`` answers Streamlit's health check.

    Raises:
        RuntimeError: the server process exited.
        TimeoutError: no answer within ``timeout`` seconds.
    """
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"streamlit exited with code {proc.returncode}")
        try:
            with urllib.request.urlopen(f"{url}/_stcore/health", timeout=2) as r:
                if r.read().strip() == b"ok":
                    return
        except OSError:
            time.sleep(0.5)
    raise TimeoutError(f"streamlit did not answer at {url} within {timeout:.0f} s")


@contextlib.contextmanager
def serve(
    weights: str | Path,
    *,
    app_dir: Path = ROOT,
    log: IO | int = subprocess.DEVNULL,
    timeout: float = 120.0,
) -> Iterator[LocalApp]:
    """``streamlit run app.py`` in ``app_dir`` (another checkout's app too) with ``weights``,
    its output to ``log``; yields once it is healthy, terminates it on exit (killed after 20 s).
    """
    port = free_port()
    cmd = [
        sys.executable, "-m", "streamlit", "run", "app.py",
        "--server.port", str(port), "--server.address", "127.0.0.1",
        "--server.headless", "true", "--server.fileWatcherType", "none",
        "--browser.gatherUsageStats", "false",
    ]  # fmt: skip
    env = os.environ | {"TUMORTRACE_WEIGHTS_DIR": str(weights)}
    proc = subprocess.Popen(cmd, cwd=app_dir, env=env, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_healthy(url, proc, timeout)
        yield LocalApp(url, proc)
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
