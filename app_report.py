"""The Analyze page's downloads: the JSON and CSV report of one analysis, each Grad-CAM map as
NIfTI, and the file-name stem they share.

The report is the volume's identity followed by :meth:`tumortrace.infer.Analysis.to_dict`, the one
report schema the command line's rows use too. Nothing here draws: no streamlit import. Lives
beside ``app.py`` because only the app's downloads take this shape (one file, one row per
network); the command line writes its own rows (:mod:`tumortrace.batch`).
"""

from __future__ import annotations

import csv
import io
import tempfile
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tumortrace.config import CLASSES
from tumortrace.io import Volume
from tumortrace.networks import in_display_order

if TYPE_CHECKING:  # torch-heavy modules load on first use: the page must render at once
    from tumortrace.explanation import Explanation
    from tumortrace.infer import Analysis


def download_stem(volume: Volume) -> str:
    """A safe file-name stem for downloads, from the volume's source name."""
    name = volume.source.removeprefix("upload:")
    base = Path(name).name.split(".")[0]
    return "".join(ch if ch.isalnum() or ch in "-_" else "_" for ch in base) or "volume"


def analysis_report(volume: Volume, sha: str, analysis: Analysis, cards: dict) -> dict[str, Any]:
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


def report_csv(report: dict[str, Any]) -> str:
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


def cam_nifti_bytes(expl: Explanation, volume: Volume) -> bytes:
    """Grad-CAM map as .nii.gz bytes on the file's own stored grid (written in a temp dir)."""
    from tumortrace.infer import save_cam_nifti

    with tempfile.TemporaryDirectory(prefix="tumortrace-cam-") as tmp:
        path = save_cam_nifti(expl, volume, Path(tmp) / "cam.nii.gz")
        return Path(path).read_bytes()


def dicom_zip_bytes(data: bytes, filename: str, volume: Volume, analysis: Analysis, cards) -> bytes:
    """The DICOM results of an uploaded DICOM series, zipped: the Structured Report and one
    Parametric Map per network (:mod:`tumortrace.dicom_out`). A series the objects cannot be
    built for gets a zip holding only ``DICOM_RESULTS_NOT_WRITTEN.txt`` with the one-line reason
    (the page's other downloads are unaffected)."""
    import zipfile

    from tumortrace.dicom_out import NIFTI_SKIP, build_dicom_results, maps_on_source
    from tumortrace.dicom_source import read_dicom_upload
    from tumortrace.errors import TumorTraceError

    try:
        source = read_dicom_upload(data, filename)
        if source is None:
            raise TumorTraceError(f"{filename}: {NIFTI_SKIP}.")
        results = build_dicom_results(
            source, analysis.to_dict(cards), maps_on_source(volume, analysis.explanations)
        )
        return results.zip_bytes(download_stem(volume))
    except TumorTraceError as err:
        buf = io.BytesIO()
        with zipfile.ZipFile(buf, "w") as zf:
            zf.writestr("DICOM_RESULTS_NOT_WRITTEN.txt", " ".join(str(err).split()) + "\n")
        return buf.getvalue()
