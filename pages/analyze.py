"""Analyze: load a volume, scroll it in three planes, compare the three networks with Grad-CAM.

Reads top to bottom like the page: the input, the facts of the volume, the networks (their
progress while they run, then the verdict), the viewer, the report. The page holds the input and
the verdict; what it shares with its parts lives in modules beside ``app.py``:
:mod:`app_analysis` (the session caches and the queued analyses: the networks run once per file
and Grad-CAM target), :mod:`app_viewer` (the planes and the Grad-CAM row, a fragment, so moving a
slider redraws only the images) and :mod:`app_report` (the downloads).
"""

from __future__ import annotations

import contextlib
import json
import logging
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import streamlit as st

import app_state
from app_analysis import (
    analysis_job,
    analysis_key,
    cached,
    collect,
    lru,
    remember,
    show_progress,
    tone,
    volume_entry,
)
from app_report import analysis_report, dicom_zip_bytes, download_stem, report_csv
from app_viewer import open_at_peak, viewer
from tumortrace import figures, viz
from tumortrace.config import LOW_CONFIDENCE, IOLimits
from tumortrace.errors import TumorTraceError
from tumortrace.files import sha256_bytes, sha256_file
from tumortrace.io import SUPPORTED, Volume, load_volume
from tumortrace.isolate import load_upload_isolated
from tumortrace.manifest import sibling_lesion_mask
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
    "Real glioblastoma (TCGA-02-0003), T1 post-contrast, 6.5 mm slices": "real_hgg.nii.gz",
}
UPLOAD_MIB = IOLimits().max_upload_bytes // 2**20
UPLOADABLE = ".nii, .nii.gz or a .zip of one DICOM series"


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
                "inserted, and one real glioblastoma as its scanner wrote it (TCGA-GBM, "
                "CC BY 3.0); see samples/README.md.",
            )
            if name is None:
                return None
            path = SAMPLES_DIR / SAMPLES[name]
            sha = sha256_file(path)
            volume, presets = volume_entry(sha, lambda: load_volume(path))
            lesion = sibling_lesion_mask(path)
            st.session_state["tt_lesion_path"] = str(lesion) if lesion else None
            return sha, volume, presets
        upload = st.file_uploader(
            "MRI volume: NIfTI (.nii, .nii.gz), FreeSurfer (.mgz, .mgh) or a zipped DICOM "
            "series (.zip)",
            type=["nii", "nii.gz", "mgz", "mgh", "zip"],
            max_upload_size=UPLOAD_MIB,
            key="tt_upload",
            help="A 3D T1-weighted brain scan (what the networks were trained on). "
            "The file is read in a private temporary folder that is deleted straight away.",
        )
        if upload is None:
            return None
        ids = lru("tt_upload_sha")
        if upload.file_id not in ids:
            remember(ids, upload.file_id, sha256_bytes(upload.getvalue()))
        sha = ids[upload.file_id]
        st.session_state["tt_lesion_path"] = None  # an upload has no known lesion
        volume, presets = volume_entry(
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
                f"Prediction: **:{tone(pred.label)}[{viz.CLASS_NAMES[pred.label]}]** "
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
    st.caption(f"Time per network (forward pass and maps): {times} · total {total:.2f} s")


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
    base = cached("tt_analyses", analysis_key(shared, sha, None))
    if base is None:  # the scan first: the networks run on the queue's thread
        job = analysis_job(shared, volume, sha, None)
        if job.done.is_set():
            base = collect(shared, job)
            job = None
            if base is not None:
                open_at_peak(sha, volume, base)
    std = base.standard if base is not None else None

if job is not None:
    st.subheader("Networks")
    show_progress(shared, job)
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
    report = analysis_report(volume, sha, base, cards)
    stem = download_stem(volume)
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
        report_csv(report),
        f"{stem}_tumortrace.csv",
        "text/csv",
        key="dl_csv",
        on_click="ignore",
        icon=":material/download:",
    )
    upload = st.session_state.get("tt_upload")
    if volume.source.startswith("upload:") and upload is not None and upload.name.endswith(".zip"):
        buttons.download_button(  # built on click: the report and the maps of the series
            "DICOM report + maps (.zip)",
            lambda: dicom_zip_bytes(upload.getvalue(), upload.name, volume, base, cards),
            f"{stem}_tumortrace_dicom.zip",
            "application/zip",
            key="dl_dicom",
            on_click="ignore",
            icon=":material/download:",
            help="A DICOM Structured Report (each network's probabilities and class, the "
            "verdict, the input checks) and each network's map as a DICOM Parametric Map on "
            "the series' own frames, for a PACS or a DICOM viewer. Research use only.",
        )
