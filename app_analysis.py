"""The Analyze page's analyses: the per-session caches, the queued jobs and their progress.

The volume and each analysis are kept in this session's state, keyed by the file's SHA-256 (and
the Grad-CAM target), so the networks run once per file and target. The networks themselves run
on the worker thread of :class:`app_state.AnalysisQueue`: :func:`analysis_job` submits one,
:func:`show_progress` polls it while it runs and :func:`collect` keeps its result once it is done.

Lives beside ``app.py`` (the package never imports streamlit); the page and :mod:`app_viewer`
import it as an ordinary module.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import numpy as np
import streamlit as st

import app_state
from tumortrace import viz
from tumortrace.errors import TumorTraceError
from tumortrace.io import Volume
from tumortrace.networks import display_name, in_display_order

if TYPE_CHECKING:  # torch-heavy modules load on first use: the page must render at once
    from tumortrace.standard import StandardSpace

MAX_CACHED = 4  # volumes / analyses per session (a 240x240x155 analysis holds ~110 MB of maps)


def tone(label: str) -> str:
    """The Streamlit colour a class label is written in (``:green[...]`` and so on)."""
    return {"healthy": "green", "lgg": "orange", "hgg": "red"}.get(label, "blue")


# ----------------------------------------------------------------------------- session caches


def lru(name: str) -> OrderedDict:
    """A small per-session LRU dict in ``st.session_state``."""
    if name not in st.session_state:
        st.session_state[name] = OrderedDict()
    return st.session_state[name]


def remember(cache: OrderedDict, key: Any, value: Any) -> Any:
    """Stores ``value`` under ``key`` as the newest entry, dropping the oldest past
    :data:`MAX_CACHED`; returns ``value``."""
    cache[key] = value
    cache.move_to_end(key)
    while len(cache) > MAX_CACHED:
        cache.popitem(last=False)
    return value


def volume_entry(key: str, loader: Callable[[], Volume]) -> tuple[Volume, dict]:
    """The volume for ``key`` and its window presets, loading it once per session."""
    cache = lru("tt_volumes")
    if key in cache:
        cache.move_to_end(key)
        return cache[key]
    volume = loader()
    return remember(cache, key, (volume, viz.window_presets(volume.data)))


def cached(name: str, key: Any) -> Any:
    """The entry ``key`` of the session LRU ``name``, or None."""
    cache = lru(name)
    if key in cache:
        cache.move_to_end(key)
        return cache[key]
    return None


# ----------------------------------------------------------------------------- the queued jobs


@st.cache_resource(show_spinner=False)
def _standard_store() -> OrderedDict:
    """Process-wide results of :func:`standardise` by file hash, shared read-only by sessions, so
    the same file is never brain-extracted twice (a plain dict, filled by the analysis queue's
    worker thread)."""
    return OrderedDict()


def _standard(volume: Volume, sha: str, store: OrderedDict, say) -> StandardSpace:
    """The scan's :class:`StandardSpace` (brain, registration, input checks), computed once per
    file content; runs on the queue's worker thread (``say`` reports each step)."""
    found = store.get(sha)
    if found is None:
        from tumortrace.standard import standardise

        found = store[sha] = standardise(volume, progress=say)
        while len(store) > 2 * MAX_CACHED:
            store.popitem(last=False)
    return found


def _work(shared, volume: Volume, sha: str, target: str | None, std, store: OrderedDict):
    """What the queue's worker thread runs for one analysis: the standard space (once per file),
    then the networks, writing each step and each network's result into the job as it lands."""

    def work(job: app_state.Job):
        def say(step: str) -> None:
            job.step = step

        def running(step: str) -> None:  # "<arch> (i/n)"
            arch, count = step.split(maxsplit=1)
            job.step = f"Running {display_name(arch)} {count}"

        job.standard = std if std is not None else _standard(volume, sha, store, say)
        return shared.predictor.analyze(
            volume,
            target=target,
            standard=job.standard,
            progress=running,
            on_result=job.results.__setitem__,
        )

    return work


def analysis_key(shared, sha: str, target: str | None) -> tuple:
    """What one analysis computes: the file's hash, the Grad-CAM target, the predictor."""
    return (sha, target, id(shared.predictor))


def analysis_job(shared, volume: Volume, sha: str, target: str | None, std=None) -> app_state.Job:
    """The queued job analysing ``volume`` for one Grad-CAM target (the one already queued,
    running or done when another session or an earlier run asked for the same)."""
    work = _work(shared, volume, sha, target, std, _standard_store())
    return shared.queue.submit(analysis_key(shared, sha, target), work)


def collect(shared, job: app_state.Job):
    """The finished job's analysis, kept in this session; on failure shows why and gives None."""
    err = job.error
    if err is None:
        return remember(lru("tt_analyses"), job.key, job.value)
    shared.queue.forget(job)  # a later visit to the file tries again
    if isinstance(err, TumorTraceError):
        st.error(str(err), icon=":material/error:")
    else:
        st.error(
            f"The networks could not analyse this volume ({type(err).__name__}). "
            "Try another file; the details are in the server log.",
            icon=":material/error:",
        )
    return None


def waiting_line(shared, job: app_state.Job) -> str:
    """The job's state in words: its place in the queue, or the step running now."""
    ahead = shared.queue.ahead(job)
    if ahead:
        return f"Waiting for another analysis (position {ahead} in the queue)"
    return job.step


@st.fragment(run_every=0.5)
def show_progress(shared, job: app_state.Job) -> None:
    """While the networks run: the step running now, and each network's prediction as it
    lands; reruns the whole page once the analysis is done."""
    if job.done.is_set():
        st.rerun()
    st.session_state["tt_pending"] = True
    with st.status(f"{waiting_line(shared, job)}…", state="running"):
        pass
    std = job.standard
    unreliable = std is not None and not std.reliable  # no network output reads as a verdict
    if unreliable:
        st.error(
            "**Unreliable input: no verdict.** " + " ".join(std.qc.warnings),
            icon=":material/block:",
        )
    archs = in_display_order(shared.predictor.archs)
    for col, arch in zip(st.columns(len(archs)), archs, strict=True):
        pred = job.results.get(arch)
        with col, st.container(border=True):
            st.markdown(f"#### {display_name(arch)}")
            if pred is None:
                running = display_name(arch) in job.step
                st.caption("Running…" if running else "Waiting for its turn")
                continue
            if unreliable:
                st.caption("Done (its output is not a verdict on this input)")
                continue
            p = float(np.max(pred.probs))
            st.markdown(
                f"Prediction: **:{tone(pred.label)}[{viz.CLASS_NAMES[pred.label]}]** "
                f"({100 * p:.1f} %)"
            )
            st.caption(f"{pred.seconds:.2f} s · Grad-CAM and the verdict follow")


def network_input(volume: Volume, sha: str, config, std) -> tuple[np.ndarray, Any, dict]:
    """What the networks see, as ``(X, Y, Z)``, its grid and window presets (once per session)."""
    key = (sha, config)
    found = cached("tt_inputs", key)
    if found is None:
        from tumortrace.preprocess import from_model_axes
        from tumortrace.standard import prepare

        prep = prepare(volume, config, std)
        xyz = np.ascontiguousarray(from_model_axes(prep.tensor[0].numpy()))
        found = remember(lru("tt_inputs"), key, (xyz, prep.grid, viz.window_presets(xyz)))
    return found
