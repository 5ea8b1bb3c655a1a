"""The Analyze page's viewer: three planes with slice sliders, and each network's Grad-CAM.

:func:`viewer` is a fragment: its widgets (display controls, the position the browser reports,
the Grad-CAM row's controls, "Go to peak") rerun it alone, never the networks (the analyses come
from the session cache of :mod:`app_analysis`). The three planes are drawn in the browser by
:mod:`mpr_view` (sliders, wheel, drag and click redraw there at once); the position they cross at
lives in ``st.session_state`` under a key of the file (:func:`_go_to` and :func:`open_at_peak`
move it, the browser reports it back).

Lives beside ``app.py`` (the package never imports streamlit); the page imports it as an ordinary
module. The Grad-CAM row's drawing is :mod:`tumortrace.draw`.
"""

from __future__ import annotations

from functools import partial
from typing import TYPE_CHECKING, NamedTuple

import numpy as np
import streamlit as st

import mpr_view
from app_analysis import (
    analysis_job,
    analysis_key,
    cached,
    collect,
    lru,
    network_input,
    remember,
    waiting_line,
)
from app_report import cam_nifti_bytes, download_stem
from tumortrace import draw, viz
from tumortrace.config import CAM_DISPLAY_THRESHOLD, CLASSES
from tumortrace.focus import opening_voxel
from tumortrace.io import Volume, load_volume
from tumortrace.networks import display_name, in_display_order
from tumortrace.numformat import fmt

if TYPE_CHECKING:  # torch-heavy modules load on first use: the page must render at once
    from tumortrace.standard import StandardSpace

OWN_PREDICTION = "own"  # "Explain class": each network's own prediction


class Opening(NamedTuple):
    """Where the viewer opens once the verdict is in, and why (shown under the planes)."""

    xyz: tuple[int, int, int]
    reason: str


def _centre_of_attention(analysis, volume: Volume) -> Opening:
    """Where the viewer opens (:func:`tumortrace.focus.opening_voxel`), and why.

    * Unless the ensemble calls the scan healthy with confidence
      (:data:`tumortrace.config.LOW_CONFIDENCE`): the analysis's focus (:mod:`tumortrace.focus`:
      every network's map of what raised the odds of a tumour over a healthy brain, pooled over
      about a centimetre), also for an uncertain verdict, where it is what a reader must check
      first. It lies inside the lesion more often than any one network's peak; "Go to peak"
      still shows each network's own.
    * A confident healthy verdict, or no evidence at all: the volume's centre (evidence for
      "healthy" has no lesion to point at).
    """
    focus = None if analysis is None else analysis.focus
    xyz = opening_voxel(focus, volume.data.shape)  # type: ignore[arg-type]
    if focus is None or not focus.opens:
        return Opening(xyz, "")
    return Opening(
        xyz,
        "where the networks' pooled evidence for a tumour concentrates "
        f"(ensemble LGG or HGG: {fmt(focus.p_tumour, 'percent')} %)",
    )


def _true_lesion(volume: Volume) -> np.ndarray | None:
    """``(X, Y, Z)`` bool true lesion of a bundled sample (``samples/<name>_lesion.nii.gz``)."""
    path = st.session_state.get("tt_lesion_path")
    if not path:
        return None
    cache = lru("tt_lesions")
    if path not in cache:
        mask = load_volume(path).data > 0.5
        remember(cache, path, mask if mask.shape == volume.data.shape else None)
    return cache[path]


def _point_key(sha: str) -> str:
    # keyed by file, so a new volume opens at its own centre of attention
    return f"tt_point_{sha[:12]}"


def _seq_key(sha: str) -> str:
    return f"tt_seq_{sha[:12]}"


def _opening_key(sha: str) -> str:
    return f"tt_opened_{sha[:12]}"


def current_point(sha: str, volume: Volume) -> tuple[int, int, int]:
    """The scan voxel the three planes cross at (the centre until anything moves them)."""
    point = st.session_state.get(_point_key(sha))
    if point is None:
        return tuple(n // 2 for n in volume.data.shape)  # type: ignore[return-value]
    return tuple(int(v) for v in point)  # type: ignore[return-value]


def _go_to(sha: str, xyz: tuple[int, int, int]) -> None:
    """Moves the three planes to voxel ``xyz`` (a network's peak): the browser takes the new
    position because the move's number (``seq``) changes."""
    st.session_state[_point_key(sha)] = [int(v) for v in xyz]
    st.session_state[_seq_key(sha)] = st.session_state.get(_seq_key(sha), 0) + 1


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


def _display_controls(volume: Volume, presets: dict, shared, std: StandardSpace | None) -> Display:
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


def _shown(volume: Volume, sha: str, point, display: Display, shared, std: StandardSpace | None):
    """``(volume (X, Y, Z), point, spacing, window, to_scan)`` of what the planes show: the scan,
    or the first network's input ("What the networks see") at the same world position;
    ``to_scan`` maps a voxel of what is shown back to the scan's voxel."""
    if display.mode != "What the networks see":
        return volume.data, point, volume.spacing, display.window, tuple
    config = shared.predictor.cards[shared.predictor.archs[0]].preprocess
    shown, grid, model_presets = network_input(volume, sha, config, std)
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


MPR_KEY = "tt_mpr"


def _on_point(sha: str, shape_shown, to_scan) -> None:
    """The browser moved the planes (slider, wheel, drag or click): the server follows, so the
    Grad-CAM row shows the same slice."""
    seq = st.session_state.get(_seq_key(sha), 0)
    xyz = mpr_view.reported_point(MPR_KEY, shape_shown, seq)
    if xyz is not None:
        st.session_state[_point_key(sha)] = list(to_scan(xyz))


def _grey(sha: str, mode: str, shown: np.ndarray, window: viz.Window, display: Display, std):
    """The component's body for what is shown, cached per file, mode, window and outlines (the
    window and the deflate cost tens of ms on a big scan)."""
    outline = std is not None and display.mode == "Scan + brain outline"
    lesion = display.lesion is not None and mode == "scan"
    key = (sha, mode, round(window.level, 6), round(window.width, 6), outline, lesion)
    cache = lru("tt_mpr_bodies")
    if key not in cache:
        remember(
            cache, key,
            mpr_view.body(
                viz.apply_window(shown, window),
                brain_xyz=std.brain if outline else None,
                lesion_xyz=display.lesion if lesion else None,
            ),
        )  # fmt: skip
    return cache[key]


def _planes(sha: str, volume: Volume, display: Display, shared, std: StandardSpace | None):
    """The three planes with their sliders, drawn in the browser; returns the scan voxel they
    cross at (as last reported).

    A click on a plane moves the other two there; the wheel or a drag over a plane steps its
    slice; each redraws in the browser at once.
    """
    point = current_point(sha, volume)
    shown, shown_point, spacing, window, to_scan = _shown(volume, sha, point, display, shared, std)
    mode = "scan" if shown is volume.data else "network"
    b = _grey(sha, mode, shown, window, display, std)
    mpr_view.mpr(
        mpr_view.payload(
            b, point_xyz=shown_point, seq=st.session_state.get(_seq_key(sha), 0),
            grid=f"{sha[:12]}-{mode}", spacing_xyz=spacing, convention=display.convention,
            crosshair=display.crosshair, suffix=" · network input" if mode == "network" else "",
        ),
        key=MPR_KEY,
        on_point=partial(_on_point, sha, shown.shape, to_scan),
    )  # fmt: skip
    opening = st.session_state.get(_opening_key(sha))
    if opening is not None and opening.reason:
        said, back = st.columns([5, 1], vertical_alignment="center")
        said.caption(f"Opened on {opening.reason}.")
        back.button(
            "Back to it",
            key="tt_back_to_opening",
            on_click=_go_to,
            args=(sha, opening.xyz),
            disabled=tuple(point) == tuple(opening.xyz),
            icon=":material/my_location:",
            help="Move the three planes back to where the viewer opened.",
        )
    return list(point)


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
        CAM_DISPLAY_THRESHOLD,
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
                data=lambda e=expl: cam_nifti_bytes(e, volume),
                file_name=f"{download_stem(volume)}_{arch}_gradcam_{expl.target}.nii.gz",
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
def viewer(
    sha: str, volume: Volume, presets: dict, shared, base, std: StandardSpace | None = None
) -> None:
    """Three planes with slice sliders, and the per-network Grad-CAM of one plane.

    "Show" switches between the scan, the scan with the extracted brain's outline, and what the
    networks see (the first network's input grid; in standard space, the brain registered to
    MNI152), all driven by the same sliders.

    Runs as a fragment: its sliders rerun this function only, never the networks (the analyses
    come from the session cache). Shown with ``base`` None while the networks run.
    """
    display = _display_controls(volume, presets, shared, std)
    point = _planes(sha, volume, display, shared, std)
    if shared is None or base is None:
        return
    st.markdown("##### Grad-CAM: where each network looked")
    cam = _cam_controls()
    analysis = base
    if cam.target is not None:
        analysis = cached("tt_analyses", analysis_key(shared, sha, cam.target))
    if analysis is None:
        job = analysis_job(shared, volume, sha, cam.target, std)
        with st.spinner(
            f"Grad-CAM for {viz.CLASS_NAMES[cam.target]}: {waiting_line(shared, job)}…"
        ):
            job.done.wait()
        analysis = collect(shared, job)
    if analysis is not None:
        _gradcam_row(sha, volume, analysis, point, display, cam)


def open_at_peak(sha: str, volume: Volume, analysis) -> None:
    """Moves the planes to where the viewer opens once the verdict is in
    (:func:`_centre_of_attention`) and remembers why, unless the user has moved them while
    waiting."""
    if current_point(sha, volume) != tuple(n // 2 for n in volume.data.shape):
        return
    opening = _centre_of_attention(analysis, volume)
    st.session_state[_opening_key(sha)] = opening
    _go_to(sha, opening.xyz)
