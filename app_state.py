"""What the Streamlit app's pages share: the weights folder, the model cards, the cached predictor
and the "opened before app.py" guard. Imported by ``app.py`` and every page in ``pages/``.

Lives beside ``app.py`` (not in the package, which never imports streamlit). Pages import it as an
ordinary module (``import app_state``) instead of finding callables in ``st.session_state``.
"""

from __future__ import annotations

import json
import logging
import os
import threading
from collections import OrderedDict, deque
from collections.abc import Callable, Hashable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import streamlit as st

from tumortrace.errors import CheckpointError, TumorTraceError
from tumortrace.networks import network_names

ROOT = Path(__file__).resolve().parent
WEIGHTS_ENV = "TUMORTRACE_WEIGHTS_DIR"
APP_RAN = "tt_app_ran"  # session key: app.py has set up the navigation in this session
PAGE_WANTED = "tt_page_wanted"  # session key: the page a visitor opened before app.py ran
LOG = logging.getLogger("tumortrace.app")


@dataclass(eq=False)
class Job:
    """One analysis in the queue. The worker thread writes its fields; pages only read them.

    Attributes:
        key: what it computes (file hash, Grad-CAM target, predictor), shared by every session
            that asks for the same thing.
        work: ``work(job) -> value``, run on the worker thread (it must not call streamlit).
        step: what runs now, in words ("Finding the brain (deepbet)", "Running MC3-18 (2/3)").
        results: ``{arch: Prediction}``, filled in as each network finishes.
        standard: the scan's StandardSpace once computed.
        value: what ``work`` returned; ``error``: what it raised instead.
        done: set when ``value`` or ``error`` is final.
    """

    key: Hashable
    work: Callable[[Job], Any]
    step: str = "Queued"
    results: dict[str, Any] = field(default_factory=dict)
    standard: Any = None
    value: Any = None
    error: BaseException | None = None
    done: threading.Event = field(default_factory=threading.Event)


class AnalysisQueue:
    """Runs analyses one at a time, first come first served, on one worker thread.

    The page is never blocked by the networks: it submits a job, shows the scan at once and polls
    the job (its step, each network's result as it lands, its place in the queue). One at a time
    is for the machine, not for correctness (the networks are only read): on a few CPU cores two
    simultaneous analyses each take about twice as long and together need twice the peak memory.
    """

    def __init__(self, keep: int = 8):
        self._cond = threading.Condition()
        self._waiting: deque[Job] = deque()
        self._running: Job | None = None
        self._jobs: OrderedDict[Hashable, Job] = OrderedDict()
        self._keep = keep  # finished jobs remembered, so a second session gets them at once
        threading.Thread(target=self._loop, name="tumortrace-analyses", daemon=True).start()

    def submit(self, key: Hashable, work: Callable[[Job], Any]) -> Job:
        """The job computing ``key``: the one already queued, running or finished, else a new
        one running ``work`` after those queued before it."""
        with self._cond:
            job = self._jobs.get(key)
            if job is not None:
                self._jobs.move_to_end(key)
                return job
            job = self._jobs[key] = Job(key, work)
            self._waiting.append(job)
            finished = [k for k, j in self._jobs.items() if j.done.is_set()]
            for old in finished[: max(0, len(finished) - self._keep)]:
                del self._jobs[old]
            self._cond.notify()
            return job

    def ahead(self, job: Job) -> int:
        """How many analyses run or wait before ``job`` (0 once it runs or is done)."""
        with self._cond:
            if job not in self._waiting:
                return 0
            return self._waiting.index(job) + (self._running is not None)

    def forget(self, job: Job) -> None:
        """Drops a finished job, so the next :meth:`submit` of its key runs it again."""
        with self._cond:
            if job.done.is_set() and self._jobs.get(job.key) is job:
                del self._jobs[job.key]

    def _loop(self) -> None:
        while True:
            with self._cond:
                while not self._waiting:
                    self._cond.wait()
                job = self._running = self._waiting.popleft()
            try:
                job.value = job.work(job)
            except BaseException as err:  # handed to the page, which shows it
                if not isinstance(err, TumorTraceError):
                    LOG.exception("unexpected error while analysing a volume")
                job.error = err
            finally:
                with self._cond:
                    self._running = None
                job.done.set()


@dataclass(frozen=True)
class SharedPredictor:
    """The process-wide predictor and the queue that runs its analyses one at a time."""

    predictor: Any  # tumortrace.infer.Predictor (imported lazily: torch is slow to import)
    queue: AnalysisQueue


def weights_dir() -> Path:
    """The weights folder: ``$TUMORTRACE_WEIGHTS_DIR`` or ``weights/`` beside app.py."""
    env = os.environ.get(WEIGHTS_ENV, "").strip()
    return Path(env).expanduser().resolve() if env else ROOT / "weights"


def read_cards(folder: Path) -> dict[str, dict]:
    """The model cards ``<folder>/<arch>.json`` that exist, as plain dicts (no weights loaded).

    Unreadable cards are returned as ``{"error": message}`` so the sidebar can say what is wrong.
    """
    cards: dict[str, dict] = {}
    for arch in network_names():
        path = folder / f"{arch}.json"
        if not path.is_file():
            continue
        try:
            cards[arch] = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as err:
            cards[arch] = {"error": f"{path.name} is not a readable JSON model card ({err})."}
    return cards


def _weights_stamp(folder: Path) -> tuple[tuple[str, int, int], ...]:
    """Names, sizes and mtimes of the weight files: a new training run invalidates the cache."""
    files = (
        sorted([*folder.glob("*.json"), *folder.glob("*.safetensors")]) if folder.is_dir() else []
    )
    return tuple((p.name, p.stat().st_size, p.stat().st_mtime_ns) for p in files)


_TRIED: set[tuple[str, tuple]] = set()  # (folder, stamp) whose networks this process has loaded


@st.cache_resource(show_spinner="Loading the networks…", max_entries=2)
def _load_predictor(folder: str, stamp: tuple) -> SharedPredictor:
    """Loads every card in ``folder`` (``stamp`` only keys the cache)."""
    from tumortrace.infer import Predictor

    return SharedPredictor(Predictor.from_dir(folder), AnalysisQueue())


def predictor_ready() -> bool:
    """Whether :func:`get_predictor` answers at once: this process has loaded (or failed to load)
    the current weights (the first load imports torch and reads every weight file: seconds, so
    the page shows the scan first)."""
    folder = weights_dir()
    return (str(folder), _weights_stamp(folder)) in _TRIED


def get_predictor() -> SharedPredictor:
    """The cached predictor for the current weights folder.

    Raises:
        CheckpointError: no model card in the folder, or the weights do not load.
    """
    folder = weights_dir()
    cards = [a for a, c in read_cards(folder).items() if "error" not in c]
    if not cards:
        _TRIED.add((str(folder), _weights_stamp(folder)))
        raise CheckpointError(
            f"No trained weights in {folder}: expected model cards such as "
            f"{', '.join(f'{a}.json' for a in network_names())} beside their .safetensors files. "
            "Train them with `python train.py --arch mc3` (and r2plus1d, r3d), or point "
            f"{WEIGHTS_ENV} at a folder that has them."
        )
    stamp = _weights_stamp(folder)
    try:
        return _load_predictor(str(folder), stamp)
    finally:
        _TRIED.add((str(folder), stamp))


def mark_app_ran() -> None:
    """Called by app.py once the navigation is set up in this session."""
    st.session_state[APP_RAN] = True


def require_app(page: str) -> None:
    """Hands a visitor who opened ``page`` before app.py ever ran over to app.py.

    A link to /benchmarks as the first request after the server starts runs that page on its own,
    without the navigation; app.py then comes back to ``page`` (see :data:`PAGE_WANTED`).
    """
    if APP_RAN not in st.session_state:
        st.session_state[PAGE_WANTED] = page
        st.switch_page("app.py")
