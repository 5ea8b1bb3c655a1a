"""The Streamlit app through ``AppTest``: every page, uploads, errors, the fast slider path.

The app reads its weights from ``$TUMORTRACE_WEIGHTS_DIR``; these tests point it at tiny untrained
networks (16x32x32 model grid) written once per session by :mod:`app_fixtures`.
"""

from __future__ import annotations

import contextlib
import csv
import dataclasses
import gzip
import hashlib
import io
import json
import threading
import time
import tomllib
import zlib
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from app_fixtures import make_benchmark_files, make_tiny_weights
from conftest import make_head
from streamlit.testing.v1 import AppTest

import app_state
import mpr_view
from tumortrace import draw, viz
from tumortrace.config import CLASSES, IOLimits
from tumortrace.infer import Predictor
from tumortrace.io import load_volume
from tumortrace.networks import in_display_order

ROOT = Path(__file__).resolve().parents[1]
SAMPLE_RAS_SHAPE = (90, 120, 120)
"""The bundled samples' canonical (RAS) grid: IXI stores 120x120x90 as PSR."""
APP = str(ROOT / "app.py")
TIMEOUT = 180  # first analysis loads three networks on a shared 2-core machine


@pytest.fixture(scope="session")
def tiny_weights(tmp_path_factory) -> Path:
    folder = make_tiny_weights(tmp_path_factory.mktemp("weights"))
    make_benchmark_files(folder)
    return folder


@pytest.fixture(autouse=True)
def fresh_queue():
    """Each test gets a fresh predictor and analysis queue: the queue's finished jobs outlive an
    AppTest, as they outlive a session (the standard spaces are kept: deepbet is slow)."""
    app_state._load_predictor.clear()


@pytest.fixture
def app(tiny_weights, monkeypatch) -> AppTest:
    monkeypatch.setenv("TUMORTRACE_WEIGHTS_DIR", str(tiny_weights))
    return AppTest.from_file(APP, default_timeout=TIMEOUT)


@pytest.fixture(scope="session")
def head_nifti_gz() -> bytes:
    """A real brain with a synthetic HGG lesion (the bundled sample, 2 mm, stored PSR), as bytes.

    A brain, so that brain extraction and registration pass their checks and the networks'
    verdict is shown (a non-brain gets "unreliable input": see the test below).
    """
    return (ROOT / "samples" / "hgg.nii.gz").read_bytes()


@pytest.fixture(scope="session")
def blob_nifti_gz() -> bytes:
    """A 40x48x36 ellipsoid 'head' with a bright blob: no brain, as .nii.gz bytes."""
    img = nib.Nifti1Image(make_head((40, 48, 36), lesion=True), np.diag([3.0, 3.0, 3.0, 1.0]))
    return gzip.compress(img.to_bytes())


def no_exception(at: AppTest) -> None:
    assert not at.exception, [e.value for e in at.exception]


def settle(at: AppTest, timeout: float = TIMEOUT) -> AppTest:
    """Reruns the page until the queued analysis is in (the page itself polls every 0.5 s)."""
    deadline = time.monotonic() + timeout
    while at.session_state.get("tt_pending"):
        assert time.monotonic() < deadline, "the analysis did not finish"
        time.sleep(0.2)
        at.run()
    return at


def upload(at: AppTest, name: str, data: bytes) -> AppTest:
    at.run()
    at.radio(key="tt_source").set_value("Upload a file").run()
    at.file_uploader(key="tt_upload").set_value((name, data, "application/octet-stream"))
    return settle(at.run())


def pick_sample(at: AppTest, name: str) -> AppTest:
    at.run()
    return settle(at.selectbox(key="tt_sample").set_value(name).run())


def cam_captions(at: AppTest) -> list[str]:
    return [c for img in at.image for c in img.captions if "Grad-CAM for" in c]


def viewer_header(at: AppTest) -> dict | None:
    """The header of the viewer component's data (what the browser draws the planes from):
    ``point`` (on the grid sent, ``step`` voxels a step), ``full_shape``, ``suffix``..."""
    views = [e for e in at.get("bidi_component") if "tumortrace_mpr" in e.proto.component_name]
    assert len(views) <= 1
    return mpr_view.read_header(views[0].proto.bytes) if views else None


def viewer_point(at: AppTest) -> dict[str, int] | None:
    """1-based slice of each plane the viewer shows, as the browser's captions number them."""
    header = viewer_header(at)
    if header is None:
        return None
    xyz = [p * k for p, k in zip(header["point"], header["step"], strict=True)]
    return {"sagittal": xyz[0] + 1, "coronal": xyz[1] + 1, "axial": xyz[2] + 1}


def prediction_lines(at: AppTest) -> list[str]:
    return [m.value for m in at.markdown if m.value.startswith("Prediction:")]


class Recorder:
    """Wraps a function and keeps its calls (the app's modules are shared with the test)."""

    def __init__(self, fn):
        self.fn, self.calls = fn, []

    def __call__(self, *args, **kwargs):
        out = self.fn(*args, **kwargs)
        self.calls.append((args, kwargs, out))
        return out


def test_upload_cap_matches_iolimits():
    config = tomllib.loads((ROOT / ".streamlit" / "config.toml").read_text())
    assert config["server"]["maxUploadSize"] == IOLimits().max_upload_bytes // 2**20
    assert config["client"]["showErrorDetails"] == "none"  # no tracebacks for users


def test_analyze_page_renders_empty(app, tiny_weights):
    app.run()
    no_exception(app)
    assert any("Choose a bundled sample" in i.value for i in app.info)
    assert not app.sidebar.children  # no sidebar: at 800 px it squeezed the page to 470 px
    banner = next(c.value for c in app.caption if "Networks:" in c.value)
    assert "R(2+1)D-18" in banner and "MC3-18" in banner and "R3D-18" in banner
    assert "trained 2026-01-01" in banner and "not a medical device" in banner
    # no server paths or hashes for a clinician
    assert str(tiny_weights) not in banner and "/" not in banner and "`" not in banner
    # columns stack below about 1100 px (the browser test looks at the result)
    assert any("max-width: 1100px" in h.proto.body for h in app.get("html"))


def test_upload_gives_three_predictions_with_overlays(app, head_nifti_gz, monkeypatch):
    render = Recorder(draw.render_slice)
    monkeypatch.setattr(draw, "render_slice", render)
    upload(app, "head.nii.gz", head_nifti_gz)
    no_exception(app)
    assert not app.error, [e.value for e in app.error]
    assert len(prediction_lines(app)) == 3
    assert [c.split(" · ")[0] for c in cam_captions(app)] == ["R(2+1)D-18", "MC3-18", "R3D-18"]
    overlays = [(a, k, out) for a, k, out in render.calls if k.get("heat_xyz") is not None]
    assert len(overlays) == 3
    for args, kwargs, out in overlays:
        heat = kwargs["heat_xyz"]
        assert heat.shape == SAMPLE_RAS_SHAPE  # Grad-CAM on the uploaded volume's own grid
        assert heat.max() > 0
        plain = draw.render_slice(
            args[0], args[1], args[2], args[3], **(kwargs | {"heat_xyz": None})
        )
        if viz.extract_slice(heat, args[1], args[2], kwargs["convention"]).max() >= 0.2:
            assert not np.array_equal(out, plain)  # the overlay is drawn on this slice
    facts = " ".join(m.value for m in app.markdown)
    assert "90×120×120 voxels" in facts and "2.00×2.00×2.00 mm" in facts
    assert not app.success  # a verdict is never shown as a success
    assert any("Ensemble verdict" in x.value for x in [*app.info, *app.warning])
    assert any(e.label.startswith("Input checks") for e in app.expander)
    # The tiny test weights' cards say "synthetic (test)": the page must still say so plainly.
    assert any("trained on synthetic phantoms only" in c.value for c in app.caption)
    labels = [b.label for b in app.get("download_button")]
    assert labels.count("Grad-CAM map (.nii.gz)") == 3
    assert "Report (.json)" in labels and "Report (.csv)" in labels


def test_mgz_upload_gets_a_verdict(app, head_nifti_gz, tmp_path):
    """Issue 28: a FreeSurfer .mgz (here the bundled HGG sample, saved by nibabel as MGZ)."""
    src = tmp_path / "hgg.nii.gz"
    src.write_bytes(head_nifti_gz)
    img = nib.load(src)
    mgz = tmp_path / "brain.mgz"
    nib.save(nib.MGHImage(np.asarray(img.dataobj, dtype=np.float32), img.affine), mgz)
    upload(app, "brain.mgz", mgz.read_bytes())
    no_exception(app)
    assert not app.error, [e.value for e in app.error]
    assert len(prediction_lines(app)) == 3
    assert any("Ensemble verdict" in x.value for x in [*app.info, *app.warning])
    facts = " ".join(m.value for m in app.markdown)
    assert "90×120×120 voxels" in facts and "2.00×2.00×2.00 mm" in facts


def test_slider_redraws_without_rerunning_networks(app, head_nifti_gz, monkeypatch):
    calls = Recorder(Predictor.analyze)
    monkeypatch.setattr(Predictor, "analyze", lambda self, *a, **k: calls(self, *a, **k))
    upload(app, "head.nii.gz", head_nifti_gz)
    assert len(calls.calls) == 1
    # the browser reports a new position (a slider moved there): the server follows
    sha = hashlib.sha256(head_nifti_gz).hexdigest()
    now = viewer_point(app)
    app.session_state[f"tt_point_{sha[:12]}"] = [now["sagittal"] - 1, now["coronal"] - 1, 3]
    app.run()
    no_exception(app)
    assert viewer_point(app)["axial"] == 4
    assert any("Axial slice 4 (follows the axial slider" in c.value for c in app.caption)
    assert all("Grad-CAM for" in c for c in cam_captions(app))
    assert len(calls.calls) == 1  # the analysis came from the session cache
    settle(app.selectbox(key="tt_target").set_value("hgg").run())
    assert len(calls.calls) == 2 and calls.calls[-1][1].get("target") == "hgg"
    assert all("Grad-CAM for HGG" in c for c in cam_captions(app))
    app.selectbox(key="tt_target").set_value("own").run()
    settle(app.selectbox(key="tt_target").set_value("hgg").run())
    assert len(calls.calls) == 2  # both targets cached


def test_corrupt_upload_shows_error_and_page_keeps_working(app, head_nifti_gz):
    upload(app, "broken.nii.gz", b"this is not a NIfTI file at all" * 10)
    no_exception(app)
    assert app.error, "a corrupt file must produce a visible error"
    message = app.error[0].value
    assert "Traceback" not in message
    # the user's own file by its name, and advice that applies to an upload
    assert message.startswith("broken.nii.gz is not a NIfTI image"), message
    assert "upload:" not in message and "folder" not in message
    assert "expected .nii, .nii.gz or a .zip of one DICOM series" in message
    assert not app.info  # no "choose a sample" hint under the error
    assert not prediction_lines(app)
    app.file_uploader(key="tt_upload").set_value(
        ("head.nii.gz", head_nifti_gz, "application/octet-stream")
    )
    settle(app.run())
    no_exception(app)
    assert not app.error
    assert len(prediction_lines(app)) == 3


def test_2d_upload_is_rejected_with_the_io_message(app):
    flat = nib.Nifti1Image(np.ones((32, 32), np.float32), np.eye(4))
    upload(app, "flat.nii", flat.to_bytes())
    no_exception(app)
    assert app.error and "3D" in app.error[0].value
    assert app.error[0].value.startswith("flat.nii: a 2D image")


def test_missing_weights_keep_the_viewer(tmp_path, monkeypatch, head_nifti_gz):
    monkeypatch.setenv("TUMORTRACE_WEIGHTS_DIR", str(tmp_path))
    at = AppTest.from_file(APP, default_timeout=TIMEOUT)
    upload(at, "head.nii.gz", head_nifti_gz)
    no_exception(at)
    assert any("No trained weights" in w.value for w in at.warning)
    assert viewer_point(at) is not None and not cam_captions(at)  # the three planes, no predictions


def test_benchmarks_page_renders_stored_files(app):
    app.run()
    app.switch_page("pages/benchmarks.py").run()
    no_exception(app)
    assert not app.error
    summary = app.dataframe[0].value
    assert list(summary.columns) == ["MC3-18", "R3D-18"]
    assert "±" in summary.loc["accuracy", "MC3-18"]
    headers = [h.value for h in app.header]
    assert "Published results (not measured here)" in headers
    # the held-out report beside the cross-fold means (balanced accuracy 0.70/0.75, LGG recall
    # 0.6/0.7 in the two fixture folds)
    assert "Held-out cohort" in headers
    held = next(d.value for d in app.dataframe if "held-out %" in d.value.columns)
    rows = held.set_index(["network", "metric"])
    assert rows.loc[("MC3-18", "accuracy"), "held-out %"] == "60.0"
    assert rows.loc[("MC3-18", "accuracy at training mix"), "held-out %"] == "66.0"
    assert rows.loc[("MC3-18", "balanced accuracy")].tolist()[2:] == ["72.5", "-12.5"]
    assert rows.loc[("MC3-18", "LGG recall")].tolist()[1:3] == ["30.0", "65.0"]
    assert set(held["network"]) == {"MC3-18"}  # R3D-18 has no held-out report
    assert any("Not measured by TumorTrace" in w.value for w in app.warning)
    published = {m.label: m.value for m in app.metric}
    assert published["Accuracy (published)"] == "96.98 %"
    assert published["Macro-F1 (published)"] == "0.9345"
    assert len(app.get("plotly_chart")) >= 4
    # the explain-eval scores, true class by default, then the predicted class
    assert "Explanations" in headers
    expl = next(d.value for d in app.dataframe if "max in lesion" in d.value.columns)
    rows = expl.set_index(["network", "method"])
    assert rows.loc[("MC3-18", "layercam-l34 (default)"), "max in lesion"] == "3/4"
    assert rows.loc[("MC3-18", "gradcam-l4 (before)"), "max in lesion %"] == "25.0"
    assert rows.loc[("R3D-18", "layercam-l34 (default)"), "concentration ×"] == "4.00"
    assert any("fixture phantoms" in c.value for c in app.caption)
    assert rows.loc[("all networks", "pooled evidence for a tumour"), "max in lesion"] == "2/4"
    assert rows.loc[("all networks", "where the viewer opens"), "max in lesion %"] == "25.0"
    assert rows.loc[("all networks", "where the viewer opens"), "concentration ×"] == "—"
    assert expl["network"].iloc[0] == "all networks"  # the pooled rows come first
    app.radio(key="bench_expl_target").set_value("predicted").run()
    no_exception(app)
    expl = next(d.value for d in app.dataframe if "max in lesion" in d.value.columns)
    rows = expl.set_index(["network", "method"])  # the pooled rows show for either target
    assert rows.loc[("all networks", "where the viewer opens"), "max in lesion"] == "1/4"


def test_benchmarks_page_without_files(tmp_path, monkeypatch):
    monkeypatch.setenv("TUMORTRACE_WEIGHTS_DIR", str(tmp_path))
    at = AppTest.from_file(APP, default_timeout=TIMEOUT).run()
    at.switch_page("pages/benchmarks.py").run()
    no_exception(at)
    assert any("No benchmark files" in i.value for i in at.info)
    # the published figures still show, from the copy shipped in weights/benchmarks/
    assert "Published results (not measured here)" in [h.value for h in at.header]


def test_about_page_renders_cards(app):
    app.run()
    app.switch_page("pages/about.py").run()
    no_exception(app)
    assert [e.label for e in app.expander] == [
        "R(2+1)D-18 (`r2plus1d`)",
        "MC3-18 (`mc3`)",
        "R3D-18 (`r3d`)",
    ]
    text = " ".join(m.value for m in app.markdown)
    assert "synthetic (test)" in text and "Untrained test weights." in text
    assert any("not a medical device" in e.value for e in app.error)


def test_downloads_report_and_gradcam_nifti(app, head_nifti_gz, tiny_weights, monkeypatch):
    from streamlit.runtime.media_file_manager import MediaFileManager

    files, deferred = {}, {}
    add, add_deferred = MediaFileManager.add, MediaFileManager.add_deferred

    def record(self, data, mimetype, coordinates, file_name=None, **kw):
        files[file_name] = data
        return add(self, data, mimetype, coordinates, file_name, **kw)

    def record_deferred(self, fn, mimetype, coordinates, file_name=None, **kw):
        deferred[file_name] = fn
        return add_deferred(self, fn, mimetype, coordinates, file_name, **kw)

    monkeypatch.setattr(MediaFileManager, "add", record)
    monkeypatch.setattr(MediaFileManager, "add_deferred", record_deferred)
    upload(app, "my scan.nii.gz", head_nifti_gz)
    no_exception(app)
    report = json.loads(files["my_scan_tumortrace.json"])
    assert report["volume"]["sha256"] == hashlib.sha256(head_nifti_gz).hexdigest()
    assert report["notice"] == "research demo, not a medical device"
    assert in_display_order(report["networks"]) == ["r2plus1d", "mc3", "r3d"]
    assert report["verdict"] in (report["label"], "unreliable input") and "qc" in report
    for arch, net in report["networks"].items():
        card = json.loads((tiny_weights / f"{arch}.json").read_text())
        assert net["weights"]["weights_sha256"] == card["weights_sha256"]
        assert net["weights"]["date"] == card["date"]
        assert sum(net["probs"].values()) == pytest.approx(1.0, abs=1e-4)
    rows = list(csv.DictReader(io.StringIO(files["my_scan_tumortrace.csv"].decode())))
    assert [r["model"] for r in rows] == ["r2plus1d", "mc3", "r3d", "ensemble"]
    cam_name = next(n for n in deferred if n.startswith("my_scan_mc3_gradcam_"))
    cam = nib.Nifti1Image.from_bytes(gzip.decompress(deferred[cam_name]()))
    assert cam.shape == nib.load(ROOT / "samples" / "hgg.nii.gz").shape  # the file's own grid
    values = np.asarray(cam.dataobj)
    assert values.min() >= 0.0 and values.max() <= 1.0 and values.max() > 0


def test_sample_picker_runs_the_networks(app):
    pick_sample(app, "Same brain + synthetic high-grade glioma (HGG)")
    no_exception(app)
    assert not app.error
    assert "hgg.nii.gz" in " ".join(m.value for m in app.markdown)
    assert len(prediction_lines(app)) == 3 and len(cam_captions(app)) == 3


def test_the_real_glioblastoma_sample_is_analysed_end_to_end_with_its_thick_slices_flagged(app):
    """The bundled real tumour (TCGA-02-0003, 6.5 mm slices, skull on, int16): every network's
    verdict and map, and the thick slices said in the input checks the user sees."""
    pick_sample(app, "Real glioblastoma (TCGA-02-0003), T1 post-contrast, 6.5 mm slices")
    no_exception(app)
    assert not app.error
    assert "real_hgg.nii.gz" in " ".join(m.value for m in app.markdown)
    assert len(prediction_lines(app)) == 3 and len(cam_captions(app)) == 3
    checks = [e for e in app.expander if e.label.startswith("Input checks")]
    assert checks and checks[0].label == "Input checks: warning"  # a warning, not a verdict hidden
    said = " ".join(t.value.astype(str).to_string() for e in checks for t in e.table)
    assert "Thick slices (6.5 mm)" in said


def test_the_healthy_sample_opens_where_the_shipped_weights_point(monkeypatch):
    """The shipped weights on the bundled healthy sample: the viewer opens where the same
    analysis run here says (its focus unless the verdict is confidently healthy, else the
    centre), and the caption agrees."""
    monkeypatch.setenv("TUMORTRACE_WEIGHTS_DIR", str(ROOT / "weights"))
    at = AppTest.from_file(APP, default_timeout=TIMEOUT)
    pick_sample(at, "Real brain (IXI049), healthy")
    no_exception(at)
    assert any("Ensemble verdict: Healthy" in x.value for x in [*at.info, *at.warning])
    volume = load_volume(ROOT / "samples" / "healthy.nii.gz")  # canonical RAS (stored PSR)
    focus = Predictor.from_dir(ROOT / "weights").analyze(volume).focus
    xyz = focus.xyz if focus.opens else tuple(n // 2 for n in volume.shape)
    # 1-based slider positions (x, y, z = sagittal, coronal, axial)
    planes = ("sagittal", "coronal", "axial")
    assert viewer_point(at) == dict(zip(planes, [v + 1 for v in xyz], strict=True))
    said = [c.value for c in at.caption if c.value.startswith("Opened on ")]
    assert len(said) == int(focus.opens)


def test_non_brain_upload_is_unreliable_input_not_a_verdict(app, blob_nifti_gz):
    """No brain in the image: the checks say why and no verdict is given, not even while the
    networks' outputs come in one by one."""
    app.run()
    app.radio(key="tt_source").set_value("Upload a file").run()
    with first_network_then_pause() as first_done:
        app.file_uploader(key="tt_upload").set_value(("blob.nii.gz", blob_nifti_gz, "x")).run()
        assert first_done.wait(TIMEOUT)
        app.run()
        no_exception(app)
        errors = [e.value for e in app.error]
        assert len(errors) == 1 and errors[0].startswith("**Unreliable input: no verdict.**")
        assert not prediction_lines(app)
        assert any(c.value.startswith("Done (its output is not a verdict") for c in app.caption)
    settle(app)
    no_exception(app)
    errors = [e.value for e in app.error]
    assert len(errors) == 1 and errors[0].startswith("**Unreliable input: no verdict.**")
    assert not any("Ensemble verdict" in x.value for x in [*app.info, *app.warning])
    assert any(e.label.startswith("Input checks: unreliable") for e in app.expander)


def viewer_volumes(at: AppTest) -> tuple[np.ndarray, np.ndarray | None]:
    """The ``(X, Y, Z)`` grey volume and mask byte the viewer component sent to the browser."""
    views = [e for e in at.get("bidi_component") if "tumortrace_mpr" in e.proto.component_name]
    data = views[0].proto.bytes
    header = mpr_view.read_header(data)
    raw = zlib.decompress(data[4 + int.from_bytes(data[:4], "little") :])
    n = int(np.prod(header["shape"]))
    grey = np.frombuffer(raw[:n], np.uint8).reshape(header["shape"])
    mask = np.frombuffer(raw[n:], np.uint8).reshape(header["shape"]) if len(raw) > n else None
    return grey, mask


def test_viewer_shows_the_brain_outline_and_the_network_input(app, head_nifti_gz):
    upload(app, "head.nii.gz", head_nifti_gz)
    show = app.radio(key="tt_show")
    assert show.options == ["Scan", "Scan + brain outline", "What the networks see"]
    grey, mask = viewer_volumes(app)
    assert grey.shape == SAMPLE_RAS_SHAPE and mask is None  # an upload: no true lesion
    show.set_value("Scan + brain outline").run()
    no_exception(app)
    grey, mask = viewer_volumes(app)
    brain = (mask & mpr_view.BRAIN_BIT) > 0
    assert grey.shape == mask.shape == SAMPLE_RAS_SHAPE
    assert 0.05 < brain.mean() < 0.6  # deepbet's brain, not an empty or full mask
    assert grey[brain].mean() > grey[~brain].mean()  # the brain is brighter than what is around
    app.radio(key="tt_show").set_value("What the networks see").run()
    no_exception(app)
    grey, mask = viewer_volumes(app)
    assert grey.shape == (32, 32, 16) and mask is None  # the card's 16x32x32 grid, as XYZ
    header = viewer_header(app)
    assert header["suffix"] == " · network input" and header["full_shape"] == [32, 32, 16]


def test_viewer_peaks_go_to_peak_colour_bar_and_true_lesion(app, tiny_weights):
    """The HGG sample: a ring at each network's peak, 'Go to peak' moves the sliders to it, the
    default colour map is inferno with a labelled colour bar, and the true lesion can be outlined;
    an upload has no lesion to outline."""
    pick_sample(app, "Same brain + synthetic high-grade glioma (HGG)")
    no_exception(app)
    assert app.selectbox(key="tt_cmap").value == "inferno"
    assert any("Share of each network's own maximum" in c for i in app.image for c in i.captions)
    assert app.toggle(key="tt_lesion").value is True
    captions = cam_captions(app)
    assert len(captions) == 3 and all("peak on axial slice" in c for c in captions)
    assert all(("inside the lesion" in c) != ("outside the lesion" in c) for c in captions)
    # the peaks as the package computes them, on the same sample with the same weights
    volume = load_volume(ROOT / "samples" / "hgg.nii.gz")
    analysis = Predictor.from_dir(tiny_weights).analyze(volume)
    sha = hashlib.sha256((ROOT / "samples" / "hgg.nii.gz").read_bytes()).hexdigest()
    lesion = load_volume(ROOT / "samples" / "hgg_lesion.nii.gz").data > 0.5
    for arch, caption in zip(in_display_order(analysis.explanations), captions, strict=True):
        peak = viz.peak_voxel(analysis.explanations[arch].cam_volume)
        assert f"slice {peak[2] + 1}/" in caption
        assert ("inside the lesion" in caption) == bool(lesion[peak])
    arch = in_display_order(analysis.explanations)[-1]
    peak = viz.peak_voxel(analysis.explanations[arch].cam_volume)
    app.button(key=f"tt_peak_{arch}").click().run()
    no_exception(app)
    seq = viewer_header(app)["seq"]
    assert viewer_point(app) == {
        "axial": peak[2] + 1,
        "coronal": peak[1] + 1,
        "sagittal": peak[0] + 1,
    }
    assert app.session_state[f"tt_point_{sha[:12]}"] == list(peak)
    app.button(key=f"tt_peak_{arch}").click().run()  # again: a new move, the browser follows
    assert viewer_header(app)["seq"] == seq + 1
    app.toggle(key="tt_lesion").set_value(False).run()
    assert not any("lesion" in c for c in cam_captions(app))


def test_upload_has_no_true_lesion_toggle(app, head_nifti_gz):
    upload(app, "head.nii.gz", head_nifti_gz)
    no_exception(app)
    assert not [t for t in app.toggle if t.key == "tt_lesion"]
    assert len([b for b in app.button if str(b.key).startswith("tt_peak_")]) == 3


@contextlib.contextmanager
def first_network_then_pause():
    """Analyses hold after their first network until the block ends; yields the event set
    when the first network's result is in."""
    first_done, go_on = threading.Event(), threading.Event()
    analyze = Predictor.analyze

    def one_network_then_pause(self, *args, on_result=None, **kwargs):
        def hold(arch, pred):
            on_result(arch, pred)
            if not first_done.is_set():
                first_done.set()
                go_on.wait(TIMEOUT)

        return analyze(self, *args, on_result=hold, **kwargs)

    Predictor.analyze = one_network_then_pause
    try:
        yield first_done
    finally:
        go_on.set()
        Predictor.analyze = analyze


def test_the_scan_shows_at_once_and_a_queued_analysis_says_its_place(app, head_nifti_gz):
    """Another session's analysis holds the queue: this one shows the scan's three planes at
    once, says it waits (position 1), then fills in the networks one by one."""
    app.run()
    shared = app_state.get_predictor()
    release = threading.Event()
    shared.queue.submit("another session's scan", lambda job: release.wait(TIMEOUT))
    app.radio(key="tt_source").set_value("Upload a file").run()
    app.file_uploader(key="tt_upload").set_value(("head.nii.gz", head_nifti_gz, "x")).run()
    no_exception(app)
    assert [s.label for s in app.status] == [
        "Waiting for another analysis (position 1 in the queue)…"
    ]
    assert viewer_point(app)["axial"] == 61 and viewer_header(app)["full_shape"][2] == 120
    assert not prediction_lines(app) and not cam_captions(app)
    assert app.session_state["tt_pending"]

    with first_network_then_pause() as first_done:
        release.set()
        assert first_done.wait(TIMEOUT)
        app.run()
        no_exception(app)
        assert len(prediction_lines(app)) == 1  # the first network is in, the others run
        assert len(app.status) == 1 and app.status[0].label.startswith("Running ")
        assert sum("Grad-CAM and the verdict follow" in c.value for c in app.caption) == 1
    settle(app)
    no_exception(app)
    assert not app.status and len(prediction_lines(app)) == 3 and len(cam_captions(app)) == 3


def test_explain_class_keeps_its_choice_across_a_sample_then_an_upload(app, head_nifti_gz):
    """Issue 17: after a sample, then an upload, "Explain class" read "Choose an option"."""
    pick_sample(app, "Same brain + synthetic high-grade glioma (HGG)")
    target = app.selectbox(key="tt_target")
    assert target.value == "own" and target.index == 0
    app.radio(key="tt_source").set_value("Upload a file").run()
    app.file_uploader(key="tt_upload").set_value(("scan.nii.gz", head_nifti_gz, "x"))
    settle(app.run())
    no_exception(app)
    target = app.selectbox(key="tt_target")
    assert target.value == "own" and target.index == 0
    assert target.format_func(target.value) == "each network's own prediction"
    assert len(cam_captions(app)) == 3


def _with_focus(xyz, ensemble_probs):
    """``Predictor.analyze`` whose analysis has its focus at voxel ``xyz`` and these ensemble
    probabilities (the rest as the shipped weights say)."""
    analyze = Predictor.analyze

    def patched(self, *args, **kwargs):
        got = analyze(self, *args, **kwargs)
        probs = np.asarray(ensemble_probs, float)
        return dataclasses.replace(
            got,
            focus=dataclasses.replace(got.focus, xyz=xyz, p_tumour=float(1.0 - probs[0])),
            ensemble_probs=probs,
            ensemble_label=CLASSES[int(np.argmax(probs))],
        )

    return patched


def _lesion_middle() -> tuple[int, int, int]:
    lesion = load_volume(ROOT / "samples" / "hgg_lesion.nii.gz").data > 0.5
    voxels = np.argwhere(lesion)
    nearest = np.argmin(((voxels - np.median(voxels, axis=0)) ** 2).sum(axis=1))
    return tuple(int(i) for i in voxels[nearest])  # the lesion voxel nearest its middle


@pytest.mark.parametrize("probs", [(0.05, 0.15, 0.8), (0.41, 0.17, 0.42), (0.59, 0.2, 0.21)])
def test_a_verdict_not_confidently_healthy_opens_the_viewer_on_the_focus(app, monkeypatch, probs):
    """A confident HGG, a split and a low-confidence healthy ensemble (healthy 5, 41 and 59 %):
    the viewer opens on the analysis's focus (the slider positions), not at the volume's centre,
    and says why with the ensemble's tumour probability. The focus is set here, so the test holds
    whatever the weights say."""
    inside = _lesion_middle()
    monkeypatch.setattr(Predictor, "analyze", _with_focus(inside, probs))
    pick_sample(app, "Same brain + synthetic high-grade glioma (HGG)")
    no_exception(app)
    opened = viewer_point(app)
    assert opened == {"sagittal": inside[0] + 1, "coronal": inside[1] + 1, "axial": inside[2] + 1}
    said = [c.value for c in app.caption if c.value.startswith("Opened on ")]
    share = f"{100 * (probs[1] + probs[2]):.1f} %"
    assert len(said) == 1 and "pooled evidence for a tumour" in said[0] and share in said[0], said


def test_back_to_the_opening_after_going_to_a_peak(app, monkeypatch):
    """ "Go to peak" moves the planes to a network's peak; "Back to it", beside the "Opened on"
    line, returns them to where the viewer opened (and is disabled while they are there)."""
    inside = _lesion_middle()
    monkeypatch.setattr(Predictor, "analyze", _with_focus(inside, (0.3, 0.2, 0.5)))
    pick_sample(app, "Same brain + synthetic high-grade glioma (HGG)")
    no_exception(app)
    planes = ("sagittal", "coronal", "axial")
    opened = dict(zip(planes, [v + 1 for v in inside], strict=True))
    assert viewer_point(app) == opened and app.button(key="tt_back_to_opening").disabled
    peak_buttons = [b for b in app.button if b.key and b.key.startswith("tt_peak_")]
    moved = None
    for button in peak_buttons:  # the first network whose peak is elsewhere
        button.click().run()
        moved = viewer_point(app)
        if moved != opened:
            break
    assert moved is not None and moved != opened, "every network's peak is the opening"
    back = app.button(key="tt_back_to_opening")
    assert not back.disabled
    back.click().run()
    no_exception(app)
    assert viewer_point(app) == opened


@pytest.mark.parametrize("probs", [(0.8, 0.1, 0.1), (0.6, 0.2, 0.2)])
def test_a_confident_healthy_verdict_opens_at_the_centre(app, monkeypatch, probs):
    """Healthy at 80 and 60 % (the confidence line): the focus (set inside the lesion) is not
    used; the planes stay at the volume's centre and no "Opened on" line is shown."""
    monkeypatch.setattr(Predictor, "analyze", _with_focus(_lesion_middle(), probs))
    pick_sample(app, "Same brain + synthetic high-grade glioma (HGG)")
    no_exception(app)
    shape = load_volume(ROOT / "samples" / "hgg.nii.gz").data.shape
    centre = [n // 2 + 1 for n in shape]
    assert viewer_point(app) == dict(zip(("sagittal", "coronal", "axial"), centre, strict=True))
    assert not [c.value for c in app.caption if c.value.startswith("Opened on ")]


def test_viewer_payload_subsamples_long_axes_and_maps_points_back(monkeypatch):
    """A 700-voxel axis travels every 3rd voxel (at most 320); the header, the deflated body and
    a reported point agree with that step, and a report from before the server's last move (an
    older ``seq``) is ignored."""
    grey = (np.arange(700 * 6 * 5) % 251).astype(np.uint8).reshape(700, 6, 5)
    lesion = np.zeros(grey.shape, bool)
    lesion[300:330, 2:4, 1:3] = True
    body = mpr_view.body(grey, lesion_xyz=lesion)
    assert body.step == (3, 1, 1) and body.full_shape == (700, 6, 5)
    data = mpr_view.payload(
        body, point_xyz=(400, 5, 4), seq=7, grid="g", spacing_xyz=(0.5, 1.0, 2.0),
        convention="radiological", crosshair=True,
    )  # fmt: skip
    header = mpr_view.read_header(data)
    assert header["shape"] == [234, 6, 5] and header["point"] == [133, 5, 4]
    assert header["spacing"] == [1.5, 1.0, 2.0] and header["full_spacing"] == [0.5, 1.0, 2.0]
    assert header["planes"]["axial"]["labels"] == {
        "top": "A",
        "bottom": "P",
        "left": "R",
        "right": "L",
    }
    raw = zlib.decompress(data[4 + int.from_bytes(data[:4], "little") :])
    n = 234 * 6 * 5
    sent = np.frombuffer(raw[:n], np.uint8).reshape(234, 6, 5)
    np.testing.assert_array_equal(sent, grey[::3])
    bits = np.frombuffer(raw[n:], np.uint8).reshape(234, 6, 5)
    np.testing.assert_array_equal(bits == mpr_view.LESION_BIT, lesion[::3])
    state = {"tt_mpr": {"point": {"xyz": [133, 5, 4], "seq": 7}}}
    monkeypatch.setattr(mpr_view.st, "session_state", state)
    assert mpr_view.reported_point("tt_mpr", (700, 6, 5), 7) == (399, 5, 4)
    assert mpr_view.reported_point("tt_mpr", (700, 6, 5), 8) is None  # moved since: stale
    state["tt_mpr"] = {"point": {"xyz": ["x", 1, 2], "seq": 7}}
    assert mpr_view.reported_point("tt_mpr", (700, 6, 5), 7) is None  # not voxel indices


def test_a_dicom_upload_downloads_the_dicom_report_and_maps(app, tmp_path, monkeypatch):
    """A zipped DICOM series (the bundled sample written as one) gets "DICOM report + maps"; the
    zip holds the SR and one Parametric Map per network, referencing the uploaded series."""
    import zipfile

    import pydicom
    from _dicom import zip_folder
    from streamlit.runtime.media_file_manager import MediaFileManager
    from test_dicom_out import sample_series

    deferred = {}
    add_deferred = MediaFileManager.add_deferred

    def record_deferred(self, fn, mimetype, coordinates, file_name=None, **kw):
        deferred[file_name] = fn
        return add_deferred(self, fn, mimetype, coordinates, file_name, **kw)

    monkeypatch.setattr(MediaFileManager, "add_deferred", record_deferred)
    series = sample_series(tmp_path / "series")
    upload(app, "my series.zip", zip_folder(series, tmp_path / "s.zip").read_bytes())
    no_exception(app)
    assert "DICOM report + maps (.zip)" in [b.label for b in app.get("download_button")]
    with zipfile.ZipFile(io.BytesIO(deferred["my_series_tumortrace_dicom.zip"]())) as zf:
        names = zf.namelist()
        objects = {n: pydicom.dcmread(io.BytesIO(zf.read(n))) for n in names}
    maps = [f"my_series_{a}_map.dcm" for a in ("r2plus1d", "mc3", "r3d")]
    assert sorted(names) == sorted(["my_series_sr.dcm", *maps])
    source_series = pydicom.dcmread(next(series.iterdir())).SeriesInstanceUID
    sr = objects["my_series_sr.dcm"]
    (study,) = sr.CurrentRequestedProcedureEvidenceSequence
    assert source_series in [s.SeriesInstanceUID for s in study.ReferencedSeriesSequence]


def test_a_nifti_upload_offers_no_dicom_download(app, head_nifti_gz):
    upload(app, "scan.nii.gz", head_nifti_gz)
    assert "DICOM report + maps (.zip)" not in [b.label for b in app.get("download_button")]
