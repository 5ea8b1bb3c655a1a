"""The batch command line (``python -m tumortrace predict``): files in, one row each, CSV or JSON.

:func:`collect_inputs` expands files and folders into volumes, :func:`predict_paths` analyses each
with a :class:`tumortrace.infer.Predictor` (a bad input becomes an error row; the rest still run),
and :func:`format_rows` writes the rows. A row's report is
:meth:`tumortrace.infer.Analysis.to_dict`, the schema the app's report download uses too.
"""

from __future__ import annotations

import csv
import io as _io
import json
import re
import sys
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from tqdm.auto import tqdm

from tumortrace.config import CLASSES
from tumortrace.dicom_out import NIFTI_SKIP, build_dicom_results, maps_on_source
from tumortrace.dicom_source import read_dicom_source
from tumortrace.errors import ConfigError, TumorTraceError
from tumortrace.explanation import save_cam_nifti
from tumortrace.infer import Analysis, Predictor, error_line
from tumortrace.io import Volume, load_volume
from tumortrace.manifest import masked_volume
from tumortrace.qc import CHECK_NAMES
from tumortrace.standard import standardise

_VOLUME_SUFFIXES = (".nii.gz", ".nii", ".mgz", ".mgh", ".zip")
_INDEX_NAMES = ("dicomdir",)  # a PACS export's index file: names the series, holds no image


@dataclass(frozen=True)
class PredictRow:
    """The outcome for one input of :func:`predict_paths`.

    Attributes:
        path: the input as given (or as found in a folder).
        ok: False when the input could not be read or analysed.
        report: :meth:`tumortrace.infer.Analysis.to_dict`, each network with ``"cam"``: the
            written Grad-CAM NIfTI's path, or None (empty on error).
        error: one-line message on error.
    """

    path: str
    ok: bool
    report: dict[str, Any] = field(default_factory=dict)
    error: str | None = None

    @classmethod
    def from_analysis(
        cls,
        path: str,
        analysis: Analysis,
        cams: dict[str, str],
        dicom: dict[str, Any] | None = None,
    ) -> PredictRow:
        """A successful row; ``cams`` is ``{arch: written Grad-CAM NIfTI path}``; ``dicom`` (when
        DICOM results were asked for) is ``{"written": [paths]}``, ``{"skipped": why}`` or
        ``{"error": message}``."""
        report = analysis.to_dict()
        for arch, network in report["networks"].items():
            network["cam"] = cams.get(arch)
        if dicom is not None:
            report["dicom"] = dicom
        return cls(path=path, ok=True, report=report)

    @property
    def networks(self) -> dict[str, dict[str, Any]]:
        """``{arch: the report's entry}`` (empty on error)."""
        return self.report.get("networks", {})

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict: the path, ``ok``, then the report (or the error)."""
        if not self.ok:
            return {"path": self.path, "ok": False, "error": self.error}
        return {"path": self.path, "ok": True, **self.report}


def _qc_columns(qc: dict[str, Any] | None) -> dict[str, Any]:
    """``qc_status``, one ``qc_<check>`` value column per check, and ``qc_warnings``."""
    if qc is None:
        return {}
    out: dict[str, Any] = {"qc_status": qc["status"]}
    for c in qc["checks"]:
        out[f"qc_{c['name']}"] = c["value"]
    out["qc_warnings"] = " | ".join(qc["warnings"])
    return out


def _csv_columns(archs: Sequence[str], with_cams: bool, with_qc: bool) -> list[str]:
    cols = ["path", "status", "label", "verdict", *(f"p_{c}" for c in CLASSES), "agree"]
    if with_qc:
        cols += ["qc_status", *(f"qc_{n}" for n in CHECK_NAMES), "qc_warnings"]
    for a in archs:
        cols += [f"{a}_label", *(f"{a}_p_{c}" for c in CLASSES), f"{a}_seconds"]
        if with_cams:
            cols.append(f"{a}_cam")
    return [*cols, "error"]


def format_rows(rows: Sequence[PredictRow], fmt: Literal["csv", "json"] = "csv") -> str:
    """Renders rows as CSV (one line per input, errors included) or one JSON document.

    Raises:
        ConfigError: unknown format.
    """
    archs = list(dict.fromkeys(a for r in rows for a in r.networks))
    if fmt == "json":
        doc = {
            "classes": list(CLASSES),
            "archs": archs,
            "n_ok": sum(r.ok for r in rows),
            "n_failed": sum(not r.ok for r in rows),
            "results": [r.to_dict() for r in rows],
        }
        return json.dumps(doc, indent=2) + "\n"
    if fmt != "csv":
        raise ConfigError(f"Unknown output format {fmt!r}; expected 'csv' or 'json'.")
    with_cams = any(n.get("cam") for r in rows for n in r.networks.values())
    with_qc = any(r.report.get("qc") for r in rows)
    buf = _io.StringIO()
    writer = csv.DictWriter(
        buf, fieldnames=_csv_columns(archs, with_cams, with_qc), lineterminator="\n"
    )
    writer.writeheader()
    for r in rows:
        line: dict[str, Any] = {"path": r.path, "status": "ok" if r.ok else "error"}
        if r.ok:
            rep = r.report
            line.update(label=rep["label"], verdict=rep["verdict"], agree=rep["agree"])
            line.update(_qc_columns(rep["qc"]))
            line.update({f"p_{c}": f"{rep['probs'][c]:.6f}" for c in CLASSES})
            for a, net in r.networks.items():
                line[f"{a}_label"] = net["label"]
                line.update({f"{a}_p_{c}": f"{net['probs'][c]:.6f}" for c in CLASSES})
                line[f"{a}_seconds"] = f"{net['seconds']:.3f}"
                if with_cams:
                    line[f"{a}_cam"] = net.get("cam") or ""
        else:
            line["error"] = r.error
        writer.writerow(line)
    return buf.getvalue()


def _is_volume_file(p: Path) -> bool:
    return p.name.lower().endswith(_VOLUME_SUFFIXES)


def collect_inputs(paths: Iterable[str | Path]) -> list[Path]:
    """Expands the CLI's inputs into the volumes to analyse, in a stable order.

    * a file is analysed as given (its format is checked when it is read);
    * a folder holding ``.nii``/``.nii.gz``/``.mgz``/``.mgh``/``.zip`` files or sub-folders
      contributes every file in it and each non-empty sub-folder (read as a DICOM series): a file
      of a kind that is not supported becomes an error row naming it, never silently dropped;
      skipped are only hidden files, a ``DICOMDIR`` index and lesion masks
      ``<subject>_lesion.nii.gz`` beside ``<subject>.nii.gz``
      (:func:`tumortrace.manifest.masked_volume`);
    * a file given is analysed, except a lesion mask whose volume is given too (a shell glob such
      as ``samples/*.nii.gz`` names both);
    * a folder holding neither is itself read as a DICOM series;
    * a path that does not exist is kept, so that it is reported as an error row.
    """
    paths = [Path(raw) for raw in paths]
    given = {p.resolve() for p in paths if p.is_file()}
    out: list[Path] = []
    for p in paths:
        if not p.is_dir():
            mask_of = masked_volume(p) if p.is_file() else None
            if mask_of is None or mask_of.resolve() not in given:
                out.append(p)
            continue
        children = sorted(c for c in p.iterdir() if not c.name.startswith("."))
        files = [
            c
            for c in children
            if c.is_file() and masked_volume(c) is None and c.name.lower() not in _INDEX_NAMES
        ]
        series = [c for c in children if c.is_dir() and any(c.iterdir())]
        if series or any(_is_volume_file(c) for c in files):
            out += files + series
        else:
            out.append(p)
    return out


def _stem(path: Path) -> str:
    name = path.name
    for suffix in _VOLUME_SUFFIXES:
        if name.lower().endswith(suffix):
            name = name[: -len(suffix)]
            break
    return re.sub(r"[^A-Za-z0-9._-]+", "_", name) or "volume"


def _unique_stem(stem: str, used: set[str]) -> str:
    candidate, n = stem, 1
    while candidate in used:
        n += 1
        candidate = f"{stem}_{n}"
    used.add(candidate)
    return candidate


def _dicom_results(
    item: Path, volume: Volume, analysis: Analysis, predictor: Predictor, out: Path, seg: bool
) -> dict[str, Any]:
    """Writes one input's DICOM results into ``out``'s folder (named by ``out``'s stem)."""
    try:
        source = read_dicom_source(item)
        if source is None:
            return {"skipped": NIFTI_SKIP}
        results = build_dicom_results(
            source,
            analysis.to_dict(predictor.cards),
            maps_on_source(volume, analysis.explanations),
            seg=seg,
        )
        return {"written": [str(p) for p in results.write(out.parent, out.name)]}
    except TumorTraceError as err:
        return {"error": error_line(err)}


def predict_paths(
    predictor: Predictor,
    paths: Iterable[str | Path],
    archs: Iterable[str] | None = None,
    cam_out: str | Path | None = None,
    progress: bool = True,
    dicom_out: str | Path | None = None,
    dicom_seg: bool = False,
) -> list[PredictRow]:
    """Analyses files and folders; a bad input becomes an error row and the rest still run.

    Args:
        predictor: the loaded networks (its settings say whether the input checks run).
        paths: NIfTI files, zips, DICOM folders, or folders of them (:func:`collect_inputs`).
        archs: networks to run (default: all loaded).
        cam_out: folder for Grad-CAM NIfTI maps ``<stem>_<arch>_cam.nii.gz`` (on each source
            file's grid, with its affine); ``None`` writes none.
        progress: show a tqdm bar on stderr.
        dicom_out: folder for each DICOM-series input's DICOM results
            (:mod:`tumortrace.dicom_out`: ``<stem>_sr.dcm``, ``<stem>_<arch>_map.dcm``); a
            NIfTI input is skipped and a series the objects cannot be built for gets an error,
            both in the row's ``"dicom"`` entry, its other outputs written. ``None`` writes none.
        dicom_seg: also write ``<stem>_<arch>_seg.dcm``, each map at or above the display
            threshold as a DICOM Segmentation.

    Returns:
        One :class:`PredictRow` per input, in input order.
    """
    archs = predictor.select(archs)
    items = collect_inputs(paths)
    cam_dir = Path(cam_out) if cam_out is not None else None
    dicom_dir = Path(dicom_out) if dicom_out is not None else None
    used_stems: set[str] = set()
    rows: list[PredictRow] = []
    for item in tqdm(items, desc="predict", unit="vol", file=sys.stderr, disable=not progress):
        try:
            volume = load_volume(item)
            standard = standardise(volume) if predictor.settings.input_checks else None
            analysis = predictor.analyze(volume, archs=archs, standard=standard)
            cams: dict[str, str] = {}
            stem = _unique_stem(_stem(item), used_stems)
            if cam_dir is not None:
                for arch, expl in analysis.explanations.items():
                    out = cam_dir / f"{stem}_{arch}_cam.nii.gz"
                    cams[arch] = str(save_cam_nifti(expl, volume, out))
            dicom = None
            if dicom_dir is not None:
                dicom = _dicom_results(
                    item, volume, analysis, predictor, dicom_dir / stem, dicom_seg
                )
            rows.append(PredictRow.from_analysis(str(item), analysis, cams, dicom))
        except (TumorTraceError, OSError) as err:
            rows.append(PredictRow(path=str(item), ok=False, error=error_line(err)))
        except Exception as err:  # one file, one row: a bug on one input spares the others
            detail = f"{type(err).__name__}: {error_line(err)}"
            rows.append(PredictRow(path=str(item), ok=False, error=f"unexpected error ({detail})"))
    return rows
