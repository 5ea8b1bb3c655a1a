"""Analyze: load a volume, scroll it in three planes, compare the three networks with Grad-CAM.

Speed: the volume and each analysis are kept in this session's state, keyed by the file's SHA-256
(and the Grad-CAM target), so the networks run once per file and target. Sliders live in a
fragment (:func:`viewer`), so moving one redraws only the images.
"""

from __future__ import annotations

import contextlib
import csv
import io
import json
import logging
import tempfile
from collections import OrderedDict
from datetime import UTC, datetime
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

import numpy as np
import streamlit as st

import app_state
import plane_view
from tumortrace import draw, figures, viz
from tumortrace.config import CLASSES, IOLimits
from tumortrace.errors import TumorTraceError
from tumortrace.files import sha256_bytes, sha256_file
from tumortrace.io import SUPPORTED, Volume, load_volume
from tumortrace.isolate import load_upload_isolated
from tumortrace.networks import display_name, in_display_order
from tumortrace.tables import training_data_words

if TYPE_CHECKING:  # torch-heavy modules load on first use: the page must render at once
    from tumortrace.standard import StandardSpace

LOG = logging.getLogger("tumortrace.app")
SAMPLES_DIR = Path(__file__).resolve().parent.parent / "samples"
SAMPLES: dict[str, str] = {
    "Real brain (IXI049), healthy": "healthy.nii.gz",
    "Same brain + synthetic low-grade glioma (LGG)": "lgg.nii.gz",
    "Same brain + synthetic high-grade glioma (HGG)": "hgg.nii.gz",
}
MAX_CACHED = 4  # volumes / analyses per session (a 240x240x155 analysis holds ~110 MB of maps)
UPLOAD_MIB = IOLimits().max_upload_bytes // 2**20
LOW_CONFIDENCE = 0.6  # below this top probability a verdict is flagged as low confidence
UPLOADABLE = ".nii, .nii.gz or a .zip of one DICOM series"
OWN_PREDICTION = "own"  # "Explain class": each network's own prediction


# ----------------------------------------------------------------------------- session caches


def _lru(name: str) -> OrderedDict:
    """A small per-session LRU dict in ``st.session_state``."""
    if name not in st.session_state:
        st.session_state[name] = OrderedDict()
    return st.session_state[name]


def _remember(cache: OrderedDict, key: Any, value: Any) -> Any:
    cache[key] = value
    cache.move_to_end(key)
    while len(cache) > MAX_CACHED:
        cache.popitem(last=False)
    return value


def _volume_entry(key: str, loader) -> tuple[Volume, dict]:
    """The volume for ``key`` and its window presets, loading it once per session."""
    cache = _lru("tt_volumes")
    if key in cache:
        cache.move_to_end(key)
        return cache[key]
    volume = loader()
    return _remember(cache, key, (volume, viz.window_presets(volume.data)))


def _cached(name: str, key: Any) -> Any:
    """The entry ``key`` of the session LRU ``name``, or None."""
    cache = _lru(name)
    if key in cache:
        cache.move_to_end(key)
        return cache[key]
    return None


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


def _analysis_key(shared, sha: str, target: str | None) -> tuple:
    return (sha, target, id(shared.predictor))


def _analysis(shared, volume: Volume, sha: str, target: str | None, std=None) -> app_state.Job:
    """The queued job analysing ``volume`` for one Grad-CAM target (the one already queued,
    running or done when another session or an earlier run asked for the same)."""
    work = _work(shared, volume, sha, target, std, _standard_store())
    return shared.queue.submit(_analysis_key(shared, sha, target), work)


def _collect(shared, job: app_state.Job):
    """The finished job's analysis, kept in this session; on failure shows why and gives None."""
    err = job.error
    if err is None:
        return _remember(_lru("tt_analyses"), job.key, job.value)
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


def _waiting_line(shared, job: app_state.Job) -> str:
    """The job's state in words: its place in the queue, or the step running now."""
    ahead = shared.queue.ahead(job)
    if ahead:
        return f"Waiting for another analysis (position {ahead} in the queue)"
    return job.step


@st.fragment(run_every=0.5)
def _progress(shared, job: app_state.Job) -> None:
    """While the networks run: the step running now, and each network's prediction as it
    lands; reruns the whole page once the analysis is done."""
    if job.done.is_set():
        st.rerun()
    st.session_state["tt_pending"] = True
    with st.status(f"{_waiting_line(shared, job)}…", state="running"):
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
                f"Prediction: **:{_tone(pred.label)}[{viz.CLASS_NAMES[pred.label]}]** "
                f"({100 * p:.1f} %)"
            )
            st.caption(f"{pred.seconds:.2f} s · Grad-CAM and the verdict follow")


def _network_input(volume: Volume, sha: str, config, std) -> tuple[np.ndarray, Any, dict]:
    """What the networks see, as ``(X, Y, Z)``, its grid and window presets (once per session)."""
    key = (sha, config)
    found = _cached("tt_inputs", key)
    if found is None:
        from tumortrace.preprocess import from_model_axes
        from tumortrace.standard import prepare

        prep = prepare(volume, config, std)
        xyz = np.ascontiguousarray(from_model_axes(prep.tensor[0].numpy()))
        found = _remember(_lru("tt_inputs"), key, (xyz, prep.grid, viz.window_presets(xyz)))
    return found


# ----------------------------------------------------------------------------- input


def _pick_input() -> tuple[str, Volume, dict] | None:
    """Input widgets; returns (sha256, volume, window presets), or None when nothing is chosen;
    on a file that cannot be read, shows why and stops the page."""
    source = st.radio(
        "Input", ["Bundled sample", "Upload a file"], horizontal=True, key="tt_source"
    )
    try:
        if source == "Bundled sample":
            name = st.selectbox(
                "Sample volume",
                list(SAMPLES),
                index=None,
                placeholder="Choose a sample…",
                key="tt_sample",
                help="One real IXI T1 scan (CC BY-SA 3.0) as it is and with synthetic lesions "
                "inserted; see samples/README.md. No real tumour is in these files.",
            )
            if name is None:
                return None
            path = SAMPLES_DIR / SAMPLES[name]
            sha = sha256_file(path)
            volume, presets = _volume_entry(sha, lambda: load_volume(path))
            lesion = path.with_name(path.name.replace(".nii.gz", "_lesion.nii.gz"))
            st.session_state["tt_lesion_path"] = str(lesion) if lesion.is_file() else None
            return sha, volume, presets
        upload = st.file_uploader(
            "MRI volume: NIfTI (.nii, .nii.gz) or a zipped DICOM series (.zip)",
            type=["nii", "nii.gz", "zip"],
            max_upload_size=UPLOAD_MIB,
            key="tt_upload",
            help="A 3D T1-weighted brain scan (what the networks were trained on). "
            "The file is read in a private temporary folder that is deleted straight away.",
        )
        if upload is None:
            return None
        ids = _lru("tt_upload_sha")
        if upload.file_id not in ids:
            _remember(ids, upload.file_id, sha256_bytes(upload.getvalue()))
        sha = ids[upload.file_id]
        st.session_state["tt_lesion_path"] = None  # an upload has no known lesion
        volume, presets = _volume_entry(
            sha, lambda: load_upload_isolated(upload.getvalue(), upload.name)
        )
        return sha, volume, presets
    except TumorTraceError as err:
        st.error(_for_upload(str(err)), icon=":material/error:")
    except Exception as err:  # never a traceback in the page; the server log keeps it
        LOG.exception("unexpected error while reading a volume")
        st.error(
            f"Could not read this file ({type(err).__name__}). Expected a 3D NIfTI or a zipped "
            "DICOM series of one MRI volume. Try another file.",
            icon=":material/error:",
        )
    st.stop()  # the error says what to do; no "choose a sample" hint under it


def _for_upload(message: str) -> str:
    """A loader's message as an uploader reads it: the file by its own name (not
    ``upload:<name>``), and only the formats one can upload (a folder cannot be)."""
    return message.replace("upload:", "", 1).replace(SUPPORTED, UPLOADABLE)


def _facts(volume: Volume) -> None:
    """Shape, voxel size and orientation of the loaded volume."""
    x, y, z = volume.data.shape
    sx, sy, sz = volume.spacing
    fov = f"{x * sx:.0f}×{y * sy:.0f}×{z * sz:.0f} mm"
    cols = st.columns(4)
    source = volume.source.removeprefix("upload:")
    origin = "uploaded" if volume.source.startswith("upload:") else "bundled sample"
    cols[0].markdown(f"**Source**  \n{source} ({origin})")
    cols[1].markdown(f"**Shape (x×y×z)**  \n{x}×{y}×{z} voxels ({fov})")
    cols[2].markdown(f"**Voxel size**  \n{sx:.2f}×{sy:.2f}×{sz:.2f} mm")
    cols[3].markdown(
        f"**Orientation**  \nstored {''.join(volume.orientation)}, shown as RAS",
        help="Volumes are reoriented to RAS (x: left→right, y: posterior→anterior, "
        "z: inferior→superior) before display and analysis; the file itself is unchanged.",
    )


# ----------------------------------------------------------------------------- networks


def _trained_on(cards: dict) -> str:
    """One line: what the loaded weights were trained on (from their cards)."""
    datas = [getattr(c, "data", {}) or {} for c in cards.values()]
    sources = {str(d.get("source", "unknown")) for d in datas}
    if sources and all(s.startswith("synthetic") for s in sources):
        return (
            "Weights trained on synthetic phantoms only: on real scans their output is not "
            "meaningful."
        )
    words = sorted({training_data_words(d) for d in datas})
    return f"Weights trained on {'; '.join(words)}. Research use only, not for clinical use."


def _input_checks(std: StandardSpace | None) -> None:
    """The input checks beside the verdict: warnings shown, every check in an expander."""
    if std is None:
        return
    for check in std.qc.checks:
        if check.severity == "warning":
            st.warning(check.message, icon=":material/warning:")
    with st.expander(f"Input checks: {std.qc.status}", icon=":material/fact_check:"):
        st.table(
            [
                {
                    "check": c.name,
                    "measured": "n/a" if not np.isfinite(c.value) else f"{c.value:.3g} {c.unit}",
                    "result": c.severity,
                    "meaning": c.message,
                }
                for c in std.qc.checks
            ]
        )
        st.caption(
            "Every scan is brain-extracted (deepbet) and aligned to the MNI152 template "
            "(SimpleITK, affine) before these checks run."
        )


def _network_columns(analysis, cards: dict) -> None:
    """One column per network: class, probabilities, time."""
    archs = in_display_order(analysis.predictions)
    cols = st.columns(len(archs))
    for col, arch in zip(cols, archs, strict=True):
        pred = analysis.predictions[arch]
        p = float(np.max(pred.probs))
        with col, st.container(border=True):
            st.markdown(f"#### {display_name(arch)}")
            st.markdown(
                f"Prediction: **:{_tone(pred.label)}[{viz.CLASS_NAMES[pred.label]}]** "
                f"({100 * p:.1f} %)" + (" · :orange[low confidence]" if p < LOW_CONFIDENCE else "")
            )
            st.plotly_chart(
                figures.probability_figure(pred.probs),
                key=f"probs_{arch}",
                config={"displayModeBar": False},
            )
            sha = getattr(cards.get(arch), "weights_sha256", "")[:10]
            st.caption(f"{pred.seconds:.2f} s · weights `{sha}`")


def _predictions(analysis, cards: dict) -> None:
    """The verdict with the input checks beside it, then one column per network."""
    archs = in_display_order(analysis.predictions)
    std = analysis.standard
    if not analysis.reliable:
        st.error(
            "**Unreliable input: no verdict.** " + " ".join(std.qc.warnings),
            icon=":material/block:",
        )
        _input_checks(std)
        with st.expander("Network outputs on this input (not a diagnosis)"):
            _network_columns(analysis, cards)
        return
    label = viz.CLASS_NAMES[analysis.ensemble_label]
    p = 100 * float(np.max(analysis.ensemble_probs))
    if analysis.agree and p >= 100 * LOW_CONFIDENCE:
        st.info(
            f"**Ensemble verdict: {label}** ({p:.1f} %, mean of {len(archs)} networks). "
            "All networks agree.",
            icon=":material/info:",
        )
    else:
        votes = ", ".join(
            f"{display_name(a)}: {viz.CLASS_NAMES[analysis.predictions[a].label]}" for a in archs
        )
        why = (
            f"The networks disagree ({votes})"
            if not analysis.agree
            else f"The networks agree, but below {100 * LOW_CONFIDENCE:.0f} % confidence"
        )
        st.warning(
            f"**Ensemble verdict: {label}** ({p:.1f} %, mean of {len(archs)} networks). "
            f"{why}: treat the result as uncertain.",
            icon=":material/warning:",
        )
    st.caption(_trained_on(cards))
    _input_checks(std)
    _network_columns(analysis, cards)
    total = sum(analysis.predictions[a].seconds for a in archs)
    times = " · ".join(f"{display_name(a)} {analysis.predictions[a].seconds:.2f} s" for a in archs)
    st.caption(f"Time per network (forward pass + Grad-CAM): {times} · total {total:.2f} s")


def _stem(volume: Volume) -> str:
    """A safe file-name stem for downloads, from the volume's source name."""
    name = volume.source.removeprefix("upload:")
    stem = Path(name).name.split(".")[0]
    return "".join(ch if ch.isalnum() or ch in "-_" else "_" for ch in stem) or "volume"


def _tone(label: str) -> str:
    return {"healthy": "green", "lgg": "orange", "hgg": "red"}.get(label, "blue")


def _report(volume: Volume, sha: str, analysis, cards: dict) -> dict:
    """The JSON report: the volume's identity, then the CLI's schema
    (:meth:`tumortrace.infer.Analysis.to_dict`) with each network's weights."""
    return {
        "tool": "TumorTrace",
        "notice": "research demo, not a medical device",
        "generated_utc": datetime.now(UTC).isoformat(timespec="seconds"),
        "volume": {
            "source": volume.source,
            "sha256": sha,
            "shape_xyz": list(volume.data.shape),
            "spacing_mm": [round(float(s), 4) for s in volume.spacing],
            "orientation_stored": "".join(volume.orientation),
        },
        "classes": list(CLASSES),
        **analysis.to_dict(cards),
    }


def _report_csv(report: dict) -> str:
    """One CSV row per network plus the ensemble, with the weights' identifiers."""
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(
        [
            "source",
            "sha256",
            "model",
            "label",
            *[f"p_{c}" for c in CLASSES],
            "seconds",
            "weights_sha256",
            "weights_date",
            "git_commit",
        ]
    )
    vol, nets = report["volume"], report["networks"]
    for arch in in_display_order(nets):
        net, weights = nets[arch], nets[arch]["weights"]
        w.writerow(
            [
                vol["source"],
                vol["sha256"],
                arch,
                net["label"],
                *[f"{net['probs'][c]:.6f}" for c in CLASSES],
                net["seconds"],
                weights["weights_sha256"],
                weights["date"],
                weights["git_commit"],
            ]
        )
    w.writerow(
        [
            vol["source"],
            vol["sha256"],
            "ensemble",
            report["label"],
            *[f"{report['probs'][c]:.6f}" for c in CLASSES],
            "",
            "",
            "",
            "",
        ]
    )
    return buf.getvalue()


def _cam_nifti_bytes(expl, volume: Volume) -> bytes:
    """Grad-CAM map as .nii.gz bytes on the file's own stored grid (written in a temp dir)."""
    from tumortrace.infer import save_cam_nifti

    with tempfile.TemporaryDirectory(prefix="tumortrace-cam-") as tmp:
        path = save_cam_nifti(expl, volume, Path(tmp) / "cam.nii.gz")
        return Path(path).read_bytes()


# ----------------------------------------------------------------------------- viewer


def _centre_of_attention(analysis, volume: Volume) -> tuple[int, int, int]:
    """The ensemble's Grad-CAM peak: the voxel of highest mean map (where the viewer opens), or
    the centre.

    The viewer opens on the peak only for a confident tumour verdict: the heat of a guess has no
    focus, and evidence for "healthy" has no lesion to point at. The maps are already zero
    outside the brain; no intensity mask on top (it hid the dark necrotic core of an HGG).
    """
    shape = volume.data.shape
    if analysis is None or not analysis.explanations:
        return tuple(s // 2 for s in shape)
    guess = float(np.max(analysis.ensemble_probs)) < LOW_CONFIDENCE
    if guess or analysis.ensemble_label not in ("lgg", "hgg"):
        return tuple(s // 2 for s in shape)
    mean = np.mean([e.cam_volume for e in analysis.explanations.values()], axis=0)
    if not np.any(mean > 0):
        return tuple(s // 2 for s in shape)
    return tuple(int(i) for i in np.unravel_index(int(np.argmax(mean)), mean.shape))


def _true_lesion(volume: Volume) -> np.ndarray | None:
    """``(X, Y, Z)`` bool true lesion of a bundled sample (``samples/<name>_lesion.nii.gz``)."""
    path = st.session_state.get("tt_lesion_path")
    if not path:
        return None
    cache = _lru("tt_lesions")
    if path not in cache:
        mask = load_volume(path).data > 0.5
        _remember(cache, path, mask if mask.shape == volume.data.shape else None)
    return cache[path]


def _go_to(sha: str, xyz: tuple[int, int, int]) -> None:
    """Moves the three slice sliders to voxel ``xyz`` (a network's peak)."""
    for plane in viz.PLANES:
        st.session_state[_slider_key(plane, sha)] = int(xyz[viz.plane_layout(plane).fixed_axis]) + 1


class Display(NamedTuple):
    """The viewer's display controls."""

    window: viz.Window
    convention: str
    crosshair: bool
    mode: str  # "Scan", "Scan + brain outline" or "What the networks see"
    lesion: np.ndarray | None  # the true lesion (bundled samples), when its outline is shown


class CamSettings(NamedTuple):
    """The Grad-CAM row's controls."""

    target: str | None
    plane: str
    opacity: float
    threshold: float
    cmap: str


def _display_controls(volume: Volume, presets: dict, shared, std) -> Display:
    """Window, display convention, crosshair and "Show" widgets."""
    c1, c2, c3 = st.columns([1.3, 1.3, 1.0])
    preset = c1.selectbox(
        "Window",
        [*viz.WINDOW_PRESETS, "manual"],
        key="tt_window",
        help="Intensity window. MRI has no fixed units, so presets come from this volume's "
        "histogram: brain = tissue 1st-99th percentile.",
    )
    convention = c2.radio(
        "Display convention",
        viz.CONVENTIONS,
        horizontal=True,
        key="tt_convention",
        format_func=str.capitalize,
        help="Radiological: patient's left on the screen's right. Neurological: left on left.",
    )
    crosshair = c3.toggle(
        "Crosshair",
        value=True,
        key="tt_crosshair",
        help="Dashed lines show where the other two planes cut this one.",
    )
    modes = ["Scan"]
    if std is not None:
        modes += ["Scan + brain outline"]
    if std is not None and std.reliable and shared is not None and shared.predictor.archs:
        modes += ["What the networks see"]
    mode = st.radio(
        "Show",
        modes,
        horizontal=True,
        key="tt_show",
        help="The brain outline is deepbet's brain mask. 'What the networks see' is the input of "
        f"{display_name(shared.predictor.archs[0]) if shared else 'the networks'}: for "
        "standard-space weights the brain alone, registered to MNI152 and z-scored.",
    )
    window = presets.get(preset)
    if preset == "manual":
        full = presets["full range"]
        m1, m2 = st.columns(2)
        level = m1.slider("Level", full.low, full.high, presets["brain"].level, key="tt_level")
        width = m2.slider(
            "Width", full.width / 200, full.width, presets["brain"].width, key="tt_width"
        )
        window = viz.Window(level, width)
    lesion = _true_lesion(volume)
    if lesion is not None and not st.toggle(
        "Outline the true lesion",
        value=True,
        key="tt_lesion",
        help="This bundled sample is a phantom whose lesion is known exactly: its outline (green) "
        "lets you judge whether each network's map points at it.",
    ):
        lesion = None
    return Display(window, convention, crosshair, mode, lesion)


def _slider_key(plane: str, sha: str) -> str:
    # keyed by file, so a new volume opens at its own centre of attention
    return f"tt_slice_{plane}_{sha[:12]}"


def _shown(volume: Volume, sha: str, point, display: Display, shared, std):
    """``(volume (X, Y, Z), point, spacing, window, to_scan)`` of what the planes show: the scan,
    or the first network's input ("What the networks see") at the same world position;
    ``to_scan`` maps a voxel of what is shown back to the scan's voxel."""
    if display.mode != "What the networks see":
        return volume.data, point, volume.spacing, display.window, tuple
    config = shared.predictor.cards[shared.predictor.archs[0]].preprocess
    shown, grid, model_presets = _network_input(volume, sha, config, std)
    dhw = grid.world_to_model((volume.affine @ np.array([*point, 1.0]))[:3])
    shown_point = [
        int(np.clip(round(v), 0, s - 1)) for v, s in zip(dhw[::-1], shown.shape, strict=True)
    ]
    spacing = tuple(float(s) for s in config.spacing_mm[::-1])
    to_world = np.linalg.inv(volume.affine) @ grid.model_affine

    def to_scan(xyz) -> tuple[int, int, int]:
        ijk = (to_world @ np.array([*xyz[::-1], 1.0]))[:3]
        return tuple(
            int(np.clip(round(v), 0, n - 1)) for v, n in zip(ijk, volume.data.shape, strict=True)
        )

    return shown, shown_point, spacing, model_presets["brain"], to_scan


def _view_key(plane: str) -> str:
    return f"tt_view_{plane}"


def _on_plane_click(sha: str, plane: str, shape, index: int, convention: str, to_scan) -> None:
    """A click on one plane moves the other two (and the crosshair) to the voxel clicked."""
    click = plane_view.event(_view_key(plane), "click")
    if click is not None:
        _go_to(sha, to_scan(viz.voxel_at(shape, plane, index, click["u"], click["v"], convention)))


def _on_plane_wheel(sha: str, plane: str, n: int) -> None:
    """The mouse wheel over a plane steps its slice, one per notch."""
    wheel = plane_view.event(_view_key(plane), "wheel")
    key = _slider_key(plane, sha)
    if wheel is not None and key in st.session_state:
        st.session_state[key] = int(np.clip(st.session_state[key] + wheel["step"], 1, n))


def _planes(sha: str, volume: Volume, start, display: Display, shared, std) -> list[int]:
    """The three planes with their slice sliders; returns the scan voxel they cross at.

    A click on a plane moves the other two there; the wheel over a plane steps its slice.
    """
    point = list(start)
    for plane in viz.PLANES:
        key = _slider_key(plane, sha)
        if key in st.session_state:  # sliders count from 1, like captions
            point[viz.plane_layout(plane).fixed_axis] = int(st.session_state[key]) - 1
    shown, shown_point, spacing, window, to_scan = _shown(volume, sha, point, display, shared, std)
    images = draw.draw_planes(
        shown, shown_point, window, spacing_xyz=spacing, convention=display.convention,
        crosshair=display.crosshair,
        outline_xyz=std.brain if display.mode == "Scan + brain outline" else None,
        lesion_xyz=display.lesion if shown is volume.data else None,
    )  # fmt: skip
    what = " · network input" if shown is not volume.data else ""
    for plane, col in zip(viz.PLANES, st.columns(3), strict=True):
        axis = viz.plane_layout(plane).fixed_axis
        n = viz.slice_count(volume.data.shape, plane)
        mm = (point[axis] - (n - 1) / 2) * volume.spacing[axis]
        caption = f"{plane.capitalize()} · slice {point[axis] + 1}/{n} ({mm:+.0f} mm from centre)"
        with col:
            plane_view.plane_image(
                images[plane],
                f"{caption}. Click to move the other planes here; the wheel steps the slice.",
                key=_view_key(plane),
                on_click=partial(
                    _on_plane_click, sha, plane, shown.shape, shown_point[axis],
                    display.convention, to_scan,
                ),
                on_wheel=partial(_on_plane_wheel, sha, plane, n),
            )  # fmt: skip
            st.caption(caption + what)
            st.slider(
                f"{plane.capitalize()} slice", 1, n, start[axis] + 1,
                key=_slider_key(plane, sha), label_visibility="collapsed",
            )  # fmt: skip
    return point


def _cam_controls() -> CamSettings:
    """Target class, plane, opacity, threshold and colour map of the Grad-CAM row."""
    o1, o2, o3, o4, o5 = st.columns([1.3, 1.3, 1, 1, 0.8])
    plane = o2.radio(
        "Plane",
        viz.PLANES,
        horizontal=True,
        key="tt_cam_plane",
        format_func=str.capitalize,
        help="Which plane the comparison shows; its slider above picks the slice.",
    )
    # A string, not None, for "own prediction": a None option reads as "nothing chosen" and the
    # box showed "Choose an option" after a sample then an upload in one session.
    target = o1.selectbox(
        "Explain class",
        [OWN_PREDICTION, *CLASSES],
        key="tt_target",
        format_func=lambda c: (
            "each network's own prediction" if c == OWN_PREDICTION else f"why {viz.CLASS_NAMES[c]}?"
        ),
        help="Grad-CAM answers 'which regions raised the score of this class?'",
    )
    opacity = o3.slider("Overlay opacity", 0.0, 1.0, 0.45, 0.05, key="tt_opacity")
    threshold = o4.slider(
        "Hide heat below",
        0.0,
        0.9,
        0.2,
        0.05,
        key="tt_threshold",
        help="Grad-CAM values (0-1, per network) below this are not drawn.",
    )
    cmap = o5.selectbox(
        "Colour map",
        viz.COLORMAPS,
        key="tt_cmap",
        help="inferno and magma are perceptually uniform: equal steps in value look like equal "
        "steps in brightness, dark = weak, bright = strong.",
    )
    return CamSettings(
        None if target == OWN_PREDICTION else target, plane, opacity, threshold, cmap
    )


def _gradcam_row(
    sha: str, volume: Volume, analysis, point, display: Display, cam: CamSettings
) -> None:
    """One column per network: the same slice with its map and a ring at the map's peak, a
    "Go to peak" button, the map's download; then the colour bar."""
    axis = viz.plane_layout(cam.plane).fixed_axis
    archs = in_display_order(analysis.explanations)
    lesion = display.lesion
    st.caption(
        f"{cam.plane.capitalize()} slice {point[axis] + 1} (follows the {cam.plane} slider "
        "above), same slice in every column. Colour: how strongly each region raised the score "
        "of the class explained, relative to that network's own maximum (colour bar below); none "
        "outside the brain. Ring: the network's peak (solid on its slice, dashed when the peak "
        "lies on another slice; 'Go to peak' moves the sliders there)."
        + (" Green outline: the true lesion." if lesion is not None else "")
    )
    peaks = {a: viz.peak_voxel(analysis.explanations[a].cam_volume) for a in archs}
    images = draw.draw_overlays(
        volume.data, cam.plane, point[axis], display.window,
        {a: analysis.explanations[a].cam_volume for a in archs},
        spacing_xyz=volume.spacing, convention=display.convention, opacity=cam.opacity,
        threshold=cam.threshold, cmap=cam.cmap, lesion_xyz=lesion,
        markers={a: [draw.Marker(p, "peak", (80, 220, 255))] for a, p in peaks.items() if p},
    )  # fmt: skip
    n_slices = viz.slice_count(volume.data.shape, cam.plane)
    for col, arch in zip(st.columns(len(archs)), archs, strict=True):
        expl, pred = analysis.explanations[arch], analysis.predictions[arch]
        peak = peaks[arch]
        where = "no peak (empty map)"
        if peak is not None:
            where = f"peak on {cam.plane} slice {peak[axis] + 1}/{n_slices}"
            if lesion is not None:
                where += " · inside the lesion" if lesion[peak] else " · outside the lesion"
        with col:
            st.image(
                images[arch],
                caption=f"{display_name(arch)} · Grad-CAM for "
                f"{viz.CLASS_NAMES[expl.target]} · predicted {viz.CLASS_NAMES[pred.label]} · "
                f"{where}",
                width="stretch",
            )
            st.button(
                "Go to peak",
                key=f"tt_peak_{arch}",
                on_click=_go_to,
                args=(sha, peak),
                disabled=peak is None,
                icon=":material/my_location:",
                help=f"Move the three slice sliders to {display_name(arch)}'s strongest evidence.",
            )
            st.download_button(
                "Grad-CAM map (.nii.gz)",
                data=lambda e=expl: _cam_nifti_bytes(e, volume),
                file_name=f"{_stem(volume)}_{arch}_gradcam_{expl.target}.nii.gz",
                mime="application/gzip",
                key=f"dl_cam_{arch}",
                on_click="ignore",
                icon=":material/download:",
            )
    st.image(
        draw.colorbar_legend(cam.cmap, cam.threshold),
        caption="Share of each network's own maximum: 0 = no evidence for the class explained, "
        "1 = that network's strongest evidence. Grey: below 'Hide heat below', not drawn.",
        width=360,
    )


@st.fragment
def viewer(sha: str, volume: Volume, presets: dict, shared, base, std=None) -> None:
    """Three planes with slice sliders, and the per-network Grad-CAM of one plane.

    "Show" switches between the scan, the scan with the extracted brain's outline, and what the
    networks see (the first network's input grid; in standard space, the brain registered to
    MNI152), all driven by the same sliders.

    Runs as a fragment: its sliders rerun this function only, never the networks (the analyses
    come from the session cache). Shown with ``base`` None while the networks run.
    """
    display = _display_controls(volume, presets, shared, std)
    point = _planes(sha, volume, tuple(n // 2 for n in volume.data.shape), display, shared, std)
    if shared is None or base is None:
        return
    st.markdown("##### Grad-CAM: where each network looked")
    cam = _cam_controls()
    analysis = base
    if cam.target is not None:
        analysis = _cached("tt_analyses", _analysis_key(shared, sha, cam.target))
    if analysis is None:
        job = _analysis(shared, volume, sha, cam.target, std)
        with st.spinner(
            f"Grad-CAM for {viz.CLASS_NAMES[cam.target]}: {_waiting_line(shared, job)}…"
        ):
            job.done.wait()
        analysis = _collect(shared, job)
    if analysis is not None:
        _gradcam_row(sha, volume, analysis, point, display, cam)


def _open_at_peak(sha: str, volume: Volume, analysis) -> None:
    """Moves the sliders to where the viewer opens once the verdict is in (the ensemble's Grad-CAM
    peak for a confident tumour verdict), unless the user has moved them while waiting."""
    centre = [n // 2 for n in volume.data.shape]
    for plane in viz.PLANES:
        value = st.session_state.get(_slider_key(plane, sha))
        if value is not None and value != centre[viz.plane_layout(plane).fixed_axis] + 1:
            return
    _go_to(sha, _centre_of_attention(analysis, volume))


# ----------------------------------------------------------------------------- page

app_state.require_app("pages/analyze.py")
st.title("Analyze a brain MRI")
st.caption(
    "Classifies a 3D T1-weighted brain volume as healthy, low-grade glioma (LGG) or "
    "high-grade glioma (HGG) with three networks, and shows where each one looked. "
    "Research demo, not a medical device."
)
picked = _pick_input()
if picked is None:
    st.info("Choose a bundled sample or upload a volume to begin.", icon=":material/upload_file:")
    st.stop()

sha, volume, presets = picked
_facts(volume)
shared = base = std = job = None
loading = not app_state.predictor_ready()  # first visit to this server: the scan first
if loading:
    st.subheader("Networks")
    st.status("Loading the networks (once per server start)…", state="running")
else:
    try:
        shared = app_state.get_predictor()
    except TumorTraceError as err:
        st.warning(f"{err}\n\nThe viewer below still works; predictions need weights.")

cards = {}
st.session_state["tt_pending"] = False
if shared is not None:
    cards = shared.predictor.cards
    for arch, reason in getattr(shared.predictor, "refused", {}).items():
        st.warning(
            f"**{display_name(arch)}** is not available (its weights were refused): {reason} "
            "The other networks still predict.",
            icon=":material/warning:",
        )
    base = _cached("tt_analyses", _analysis_key(shared, sha, None))
    if base is None:  # the scan first: the networks run on the queue's thread
        job = _analysis(shared, volume, sha, None)
        if job.done.is_set():
            base = _collect(shared, job)
            job = None
            if base is not None:
                _open_at_peak(sha, volume, base)
    std = base.standard if base is not None else None

if job is not None:
    st.subheader("Networks")
    _progress(shared, job)
elif base is not None:
    st.subheader("Networks")
    _predictions(base, cards)

st.subheader("Viewer")
viewer(sha, volume, presets, shared, base, std)
if loading:
    with contextlib.suppress(TumorTraceError):  # said above the viewer on the rerun
        app_state.get_predictor()
    st.rerun()
if base is not None:
    st.subheader("Report")
    report = _report(volume, sha, base, cards)
    stem = _stem(volume)
    buttons = st.container(horizontal=True)
    buttons.download_button(
        "Report (.json)",
        json.dumps(report, indent=2),
        f"{stem}_tumortrace.json",
        "application/json",
        key="dl_json",
        on_click="ignore",
        icon=":material/download:",
    )
    buttons.download_button(
        "Report (.csv)",
        _report_csv(report),
        f"{stem}_tumortrace.csv",
        "text/csv",
        key="dl_csv",
        on_click="ignore",
        icon=":material/download:",
    )
