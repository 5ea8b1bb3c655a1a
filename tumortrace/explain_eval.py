"""Score explanation maps against lesions of known extent: ``python -m tumortrace explain-eval``.

For every lesion case of a manifest (a ``mask`` column, or the ``<subject>_lesion.nii.gz`` that
``python -m tumortrace synth`` writes beside each volume), every network of a weights folder and
every method (:data:`tumortrace.explanation.CAM_METHODS`, plus the slow Captum references), the
map of the predicted class and of the true class is scored on the volume's own grid:

* **pointing game**: is the map's maximum inside the lesion (``hit``), or within 10 mm of it
  (``hit_near``)?
* **energy share**: the share of the map's total mass (everywhere, air included) inside the lesion,
  against the lesion's share of the brain's voxels (``concentration`` = their ratio; 1 = a map that
  ignores the lesion); and the same for the lesion grown by 10 mm (within the brain);
* **seconds** per analysis: forward, backward, map, mask and mapping back to the volume grid, for
  the predicted class (preprocessing excluded: it is the same for every method).

Two more rows per case, network ``ensemble``, target ``pooled``, from the app's own analysis
(default method): method ``focus``, the networks' pooled evidence for a tumour
(:mod:`tumortrace.focus`), scored as a map; and method ``opening``, the voxel where the app's
viewer opens (:func:`tumortrace.focus.opening_voxel`: the focus unless the ensemble calls the scan
healthy with confidence, else the centre), scored as a one-voxel map, so its pointing game is how
often the viewer opens inside the lesion.

Layers: this module runs the networks through :class:`tumortrace.infer.Predictor` (the app's own
prepared models and masks), so what is scored is what the app shows.
"""

from __future__ import annotations

import csv
import statistics
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from scipy import ndimage
from tqdm.auto import tqdm

from tumortrace.benchmark_files import FOCUS_ARCH, FOCUS_METHOD, FOCUS_TARGET, OPENING_METHOD
from tumortrace.captum_reference import guided_gradcam_captum, occlusion_captum, reference_copy
from tumortrace.config import CLASSES
from tumortrace.errors import ManifestError, TumorTraceError
from tumortrace.explain import cam_maps, explain_batch, fuse_maps, make_explanation
from tumortrace.explanation import (
    CAM_METHODS,
    DEFAULT_CAM_METHOD,
    LEGACY_CAM_METHOD,
    get_cam_method,
)
from tumortrace.focus import opening_voxel
from tumortrace.infer import InferenceSettings, Predictor
from tumortrace.io import Volume, load_volume
from tumortrace.manifest import read_manifest, sibling_lesion_mask
from tumortrace.preprocess import Preprocessed, foreground_mask
from tumortrace.standard import StandardSpace, prepare, standardise

REFERENCE_METHODS: dict[str, str] = {
    "guided-gradcam": "Captum GuidedGradCam on layer 4 (full backward to the input)",
    "occlusion": "Captum Occlusion, 4x8x8-voxel windows set to 0 (one forward per window)",
}
"""Slow reference methods, by name (not for the app: many passes per network)."""

MASK_COLUMNS = ("mask", "lesion_mask", "seg")
"""Manifest columns read, in this order, as the lesion mask's path."""

NEAR_MM = 10.0
"""Margin around the lesion for the ``*_near`` scores."""


@dataclass(frozen=True)
class LesionCase:
    """A manifest row with its lesion mask.

    Attributes:
        subject_id: the manifest's subject.
        path: the volume.
        label: true class (one of :data:`CLASSES`).
        mask: the lesion mask file (any non-zero voxel is lesion), on the volume's grid.
        brain_mask: optional brain mask file on the volume's grid (default: the volume's
            foreground, :func:`tumortrace.preprocess.foreground_mask`).
    """

    subject_id: str
    path: Path
    label: str
    mask: Path
    brain_mask: Path | None = None


def _resolve(manifest: Path, value: str | None) -> Path | None:
    value = (value or "").strip()
    if not value:
        return None
    p = Path(value)
    return p if p.is_absolute() else (manifest.parent / p).resolve()


def read_lesion_cases(manifest: str | Path) -> tuple[list[LesionCase], int]:
    """The manifest's lesion cases (label LGG or HGG) with their masks.

    A case's mask is its ``mask`` (or ``lesion_mask``, ``seg``) column, relative paths resolved
    against the manifest's folder; without one, ``<subject>_lesion.nii.gz`` beside the volume.
    An optional ``brain_mask`` column names a brain mask on the volume's grid.

    Returns:
        ``(cases, n_healthy)``: the lesion cases in manifest order, and how many healthy rows were
        skipped (a healthy volume has no lesion to point at).

    Raises:
        ManifestError: the manifest is invalid, a lesion case has no mask, or a mask file named
            in it does not exist.
    """
    manifest = Path(manifest)
    cases = read_manifest(manifest)
    with manifest.open(newline="", encoding="utf-8") as f:
        rows = {(r.get("subject_id") or "").strip(): r for r in csv.DictReader(f)}
    out: list[LesionCase] = []
    n_healthy = 0
    for case in cases:
        if case.label == "healthy":
            n_healthy += 1
            continue
        row = rows.get(case.subject_id, {})
        mask = next(
            (m for c in MASK_COLUMNS if (m := _resolve(manifest, row.get(c))) is not None), None
        )
        mask = mask or sibling_lesion_mask(case.path)
        if mask is None:
            raise ManifestError(
                f"Manifest {manifest}: {case.label} case {case.subject_id!r} has no lesion mask. "
                f"Add a 'mask' column naming it, or put {case.path.name.split('.')[0]}"
                "_lesion.nii.gz beside the volume."
            )
        if not mask.is_file():
            raise ManifestError(
                f"Manifest {manifest}: lesion mask {mask} of {case.subject_id!r} does not exist."
            )
        brain = _resolve(manifest, row.get("brain_mask"))
        if brain is not None and not brain.is_file():
            raise ManifestError(
                f"Manifest {manifest}: brain mask {brain} of {case.subject_id!r} does not exist."
            )
        out.append(LesionCase(case.subject_id, case.path, case.label, mask, brain))
    return out, n_healthy


def _mask_on(volume: Volume, path: Path, what: str) -> np.ndarray:
    """A mask file as ``(X, Y, Z)`` bool on ``volume``'s canonical grid (same grid required)."""
    try:
        mask = load_volume(path)
    except TumorTraceError as err:
        raise ManifestError(f"{what} {path} cannot be read as a mask: {err}") from err
    if mask.data.shape != volume.data.shape or not np.allclose(
        mask.affine, volume.affine, atol=1e-3
    ):
        raise ManifestError(
            f"{what} {path} is not on the grid of its volume {volume.source} (shape "
            f"{mask.data.shape} vs {volume.data.shape}, or another affine); resample it first."
        )
    return mask.data > 0.5


@dataclass(frozen=True)
class Regions:
    """Where the lesion is on a volume's grid.

    Attributes:
        lesion: ``(X, Y, Z)`` bool.
        near: ``(X, Y, Z)`` bool, the lesion grown by :data:`NEAR_MM` mm, within the brain.
        lesion_share: lesion voxels / brain voxels.
        near_share: ``near`` voxels / brain voxels.
    """

    lesion: np.ndarray
    near: np.ndarray
    lesion_share: float
    near_share: float


def lesion_regions(
    lesion: np.ndarray,
    brain: np.ndarray,
    spacing: Sequence[float],
    margin_mm: float = NEAR_MM,
) -> Regions:
    """The lesion, the lesion grown by ``margin_mm`` within the brain, and their brain shares.

    Args:
        lesion: ``(X, Y, Z)`` bool; must not be empty.
        brain: ``(X, Y, Z)`` bool (the lesion counts as brain).
        spacing: voxel size in mm along x, y, z.
        margin_mm: growth margin.

    Raises:
        ManifestError: an empty lesion mask.
    """
    if not lesion.any():
        raise ManifestError("The lesion mask is empty; a lesion case needs at least one voxel.")
    brain = brain | lesion
    distance = ndimage.distance_transform_edt(~lesion, sampling=tuple(float(s) for s in spacing))
    near = (distance <= margin_mm) & brain
    n_brain = float(brain.sum())
    return Regions(
        lesion=lesion,
        near=near,
        lesion_share=float(lesion.sum()) / n_brain,
        near_share=float(near.sum()) / n_brain,
    )


@dataclass(frozen=True)
class MapScore:
    """One map scored against one lesion (see the module docstring).

    Attributes:
        hit: the map's maximum is inside the lesion.
        hit_near: the maximum is within :data:`NEAR_MM` mm of it.
        energy_share: map mass in the lesion / total map mass (0 for an empty map).
        energy_share_near: the same for the grown lesion.
        lesion_share: lesion voxels / brain voxels (what a lesion-blind map would give).
        near_share: grown-lesion voxels / brain voxels.
    """

    hit: bool
    hit_near: bool
    energy_share: float
    energy_share_near: float
    lesion_share: float
    near_share: float

    @property
    def concentration(self) -> float:
        """``energy_share / lesion_share`` (1 = no better than a lesion-blind map)."""
        return self.energy_share / self.lesion_share

    @property
    def concentration_near(self) -> float:
        """``energy_share_near / near_share``."""
        return self.energy_share_near / self.near_share


def score_map(cam_volume: np.ndarray, regions: Regions) -> MapScore:
    """Scores one ``(X, Y, Z)`` non-negative map on the lesion's grid.

    Raises:
        ValueError: the map's shape differs from the regions'.
    """
    if cam_volume.shape != regions.lesion.shape:
        raise ValueError(
            f"map of shape {cam_volume.shape} does not match the lesion mask {regions.lesion.shape}"
        )
    total = float(cam_volume.sum(dtype=np.float64))
    if total <= 0:
        return MapScore(False, False, 0.0, 0.0, regions.lesion_share, regions.near_share)
    peak = np.unravel_index(int(np.argmax(cam_volume)), cam_volume.shape)
    return MapScore(
        hit=bool(regions.lesion[peak]),
        hit_near=bool(regions.near[peak]),
        energy_share=float(cam_volume[regions.lesion].sum(dtype=np.float64)) / total,
        energy_share_near=float(cam_volume[regions.near].sum(dtype=np.float64)) / total,
        lesion_share=regions.lesion_share,
        near_share=regions.near_share,
    )


@dataclass(frozen=True)
class CaseResult:
    """One map of one case: which network, method and target, its score and cost."""

    subject_id: str
    label: str
    arch: str
    method: str
    target_kind: str  # "predicted" or "true"
    target: str
    predicted: str
    score: MapScore
    seconds: float | None  # for the predicted target only

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready row."""
        row = {k: v for k, v in asdict(self).items() if k not in ("score", "seconds")}
        row.update(asdict(self.score))
        row["concentration"] = self.score.concentration
        row["concentration_near"] = self.score.concentration_near
        if self.seconds is not None:
            row["seconds"] = round(self.seconds, 4)
        return row


@dataclass(frozen=True)
class ExplainReport:
    """Every scored map and the per-group summary (see :func:`summarise`)."""

    manifest: str
    restrict_to_brain: bool
    cohort: str
    archs: tuple[str, ...]
    methods: tuple[str, ...]
    default_method: str
    legacy_method: str
    n_cases: int
    n_healthy_skipped: int
    weights: dict[str, str]
    results: tuple[CaseResult, ...] = field(repr=False)

    def summary(self) -> list[dict[str, Any]]:
        """See :func:`summarise`."""
        return summarise(self.results)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready document (``weights/benchmarks/explanations.json``)."""
        descriptions = {n: CAM_METHODS[n].description for n in self.methods if n in CAM_METHODS}
        descriptions |= {n: REFERENCE_METHODS[n] for n in self.methods if n in REFERENCE_METHODS}
        return {
            "kind": "explanations",
            "cohort": self.cohort,
            "manifest": self.manifest,
            "n_lesion_cases": self.n_cases,
            "n_healthy_skipped": self.n_healthy_skipped,
            "archs": list(self.archs),
            "methods": descriptions,
            "default_method": self.default_method,
            "legacy_method": self.legacy_method,
            "weights_sha256": self.weights,
            "restrict_to_brain": self.restrict_to_brain,
            "near_mm": NEAR_MM,
            "definitions": {
                "pointing": "share of maps whose maximum voxel lies inside the lesion",
                "pointing_near": f"... within {NEAR_MM:g} mm of the lesion",
                "energy_share": "map mass inside the lesion / total map mass (mean over cases)",
                "lesion_share": "lesion voxels / brain voxels (mean over cases)",
                "concentration": "median over cases of energy_share / lesion_share (1 = chance)",
                "seconds": "median seconds per analysis of one network for the predicted class "
                "(forward + backward + map + mask + back to the volume grid); for the focus "
                "rows, the whole analysis of all networks with the focus",
                "focus": "network 'ensemble', method 'focus', target 'pooled': the networks' "
                "pooled evidence for a tumour (tumortrace.focus), scored as a map",
                "opening": "network 'ensemble', method 'opening', target 'pooled': the voxel "
                "where the app's viewer opens (the focus unless healthy >= 60 %, else the "
                "centre), scored as a one-voxel map: pointing = opened inside the lesion",
            },
            "summary": self.summary(),
            "cases": [r.to_dict() for r in self.results],
        }


def summarise(results: Sequence[CaseResult]) -> list[dict[str, Any]]:
    """One row per (network, method, target kind, true class), plus an ``all`` class row.

    Each row: ``n``, ``hits`` and ``pointing`` (hits / n), ``pointing_near``, mean
    ``energy_share`` and ``lesion_share``, median ``concentration``, the same ``*_near``, and the
    median ``seconds`` of the network and method (over every case).
    """
    rows: list[dict[str, Any]] = []
    keys = list(dict.fromkeys((r.arch, r.method, r.target_kind) for r in results))
    for arch, method, kind in keys:
        group = [r for r in results if (r.arch, r.method, r.target_kind) == (arch, method, kind)]
        secs = [r.seconds for r in results if (r.arch, r.method) == (arch, method) and r.seconds]
        labels = [c for c in CLASSES if any(r.label == c for r in group)]
        for label in [*labels, "all"]:
            sub = [r for r in group if label in ("all", r.label)]
            s = [r.score for r in sub]
            rows.append(
                {
                    "arch": arch,
                    "method": method,
                    "target": kind,
                    "label": label,
                    "n": len(sub),
                    "hits": sum(x.hit for x in s),
                    "pointing": sum(x.hit for x in s) / len(s),
                    "pointing_near": sum(x.hit_near for x in s) / len(s),
                    "energy_share": float(np.mean([x.energy_share for x in s])),
                    "lesion_share": float(np.mean([x.lesion_share for x in s])),
                    "concentration": float(np.median([x.concentration for x in s])),
                    "energy_share_near": float(np.mean([x.energy_share_near for x in s])),
                    "near_share": float(np.mean([x.near_share for x in s])),
                    "concentration_near": float(np.median([x.concentration_near for x in s])),
                    "seconds": statistics.median(secs) if secs else None,
                }
            )
    return rows


def format_summary(report: ExplainReport) -> str:
    """A plain-text table of :meth:`ExplainReport.summary` (one line per group)."""
    head = (
        f"{'network':9} {'method':15} {'target':9} {'class':7} {'hits':>6} {'near':>5} "
        f"{'E_les':>6} {'share':>6} {'conc':>5} {'conc10':>6} {'sec':>6}"
    )
    lines = [f"cohort: {report.cohort} ({report.n_cases} lesion cases)", head]
    for r in report.summary():
        sec = f"{r['seconds']:.3f}" if r["seconds"] is not None else "-"
        lines.append(
            f"{r['arch']:9} {r['method']:15} {r['target']:9} {r['label']:7} "
            f"{r['hits']:>2}/{r['n']:<3} {r['pointing_near']:5.2f} {r['energy_share']:6.3f} "
            f"{r['lesion_share']:6.3f} {r['concentration']:5.2f} "
            f"{r['concentration_near']:6.2f} {sec:>6}"
        )
    return "\n".join(lines) + "\n"


def _reference_map(model, ref_model, name: str, x: torch.Tensor, target: int) -> torch.Tensor:
    """Guided Grad-CAM on the float32 copy (it hooks ReLUs), occlusion on the shared model."""
    if name == "guided-gradcam":
        return guided_gradcam_captum(ref_model, x, target)
    return occlusion_captum(model, x, target)


def evaluate_explanations(
    weights_dir: str | Path,
    manifest: str | Path,
    methods: Sequence[str] | None = None,
    archs: Sequence[str] | None = None,
    cohort: str = "",
    progress: bool = True,
    settings: InferenceSettings | None = None,
) -> ExplainReport:
    """Scores each network's maps on every lesion case of ``manifest``.

    Args:
        weights_dir: folder of ``<arch>.json`` cards.
        manifest: CSV with ``subject_id,path,label,source`` and optionally ``mask`` /
            ``brain_mask`` columns (:func:`read_lesion_cases`).
        methods: names from :data:`CAM_METHODS` or :data:`REFERENCE_METHODS` (default: the legacy
            and the default method).
        archs: networks (default: every card in ``weights_dir``).
        cohort: a description stored in the report (what the cohort is).
        progress: tqdm bar on stderr.
        settings: how the Predictor runs (default :class:`InferenceSettings`, as in the app).

    Returns:
        :class:`ExplainReport`.

    Raises:
        ManifestError: bad manifest, missing or mismatched masks, no lesion case.
        ConfigError / CheckpointError: unknown method or network, unreadable weights.
    """
    methods = list(dict.fromkeys(methods or [LEGACY_CAM_METHOD, DEFAULT_CAM_METHOD]))
    for name in methods:
        if name not in REFERENCE_METHODS:
            get_cam_method(name)  # raises with the known names
    cases, n_healthy = read_lesion_cases(manifest)
    if not cases:
        raise ManifestError(
            f"Manifest {manifest} has no LGG or HGG case; explain-eval needs lesion cases."
        )
    predictor = Predictor.from_dir(weights_dir, archs=archs, settings=settings)
    refs = {}
    if any(m in REFERENCE_METHODS for m in methods):  # Captum hooks: a float32 copy per network
        refs = {a: reference_copy(predictor.model(a)) for a in predictor.archs}
    results: list[CaseResult] = []
    for case in tqdm(cases, desc="explain-eval", unit="vol", file=sys.stderr, disable=not progress):
        volume = load_volume(case.path)
        lesion = _mask_on(volume, case.mask, "Lesion mask")
        brain = (
            _mask_on(volume, case.brain_mask, "Brain mask")
            if case.brain_mask is not None
            else foreground_mask(volume.data)
        )
        regions = lesion_regions(lesion, brain, volume.spacing)
        needs_std = any(predictor.cards[a].preprocess.space == "mni" for a in predictor.archs)
        standard = standardise(volume) if needs_std else None
        prepared: dict[Any, Preprocessed] = {}
        for arch in predictor.archs:
            config = predictor.cards[arch].preprocess
            if config not in prepared:
                prepared[config] = prepare(volume, config, standard)
            prep = prepared[config]
            results += _score_case(case, arch, prep, regions, methods, predictor, refs.get(arch))
        results += _score_focus(case, volume, standard, regions, predictor)
    return ExplainReport(
        manifest=str(manifest),
        restrict_to_brain=predictor.settings.restrict_to_brain,
        cohort=cohort,
        archs=tuple(predictor.archs),
        methods=tuple(methods),
        default_method=DEFAULT_CAM_METHOD,
        legacy_method=LEGACY_CAM_METHOD,
        n_cases=len(cases),
        n_healthy_skipped=n_healthy,
        weights={a: predictor.cards[a].weights_sha256 for a in predictor.archs},
        results=tuple(results),
    )


def _score_focus(
    case: LesionCase,
    volume: Volume,
    standard: StandardSpace | None,
    regions: Regions,
    predictor: Predictor,
) -> list[CaseResult]:
    """The app's analysis of one case (default method): its focus scored as a map and the
    viewer's opening as a one-voxel map (none when no network gave a map)."""
    start = time.perf_counter()
    analysis = predictor.analyze(volume, standard=standard)
    seconds = time.perf_counter() - start
    if analysis.focus is None:
        return []
    point = np.zeros(volume.data.shape, np.float32)
    point[opening_voxel(analysis.focus, volume.data.shape)] = 1.0
    return [
        CaseResult(
            subject_id=case.subject_id,
            label=case.label,
            arch=FOCUS_ARCH,
            method=method,
            target_kind=FOCUS_TARGET,
            target="lgg+hgg",
            predicted=analysis.ensemble_label,
            score=score_map(cam, regions),
            seconds=seconds,
        )
        for method, cam in ((FOCUS_METHOD, analysis.focus.volume()), (OPENING_METHOD, point))
    ]


def _score_case(
    case: LesionCase,
    arch: str,
    prep: Preprocessed,
    regions: Regions,
    methods: Sequence[str],
    predictor: Predictor,
    ref_model,
) -> list[CaseResult]:
    """Every method's maps of one network on one case (predicted and true class)."""
    model = predictor.model(arch)
    x = prep.tensor[None].to(predictor.device, torch.float32)
    if predictor.settings.channels_last:
        x = x.contiguous(memory_format=torch.channels_last_3d)
    shape = tuple(prep.tensor.shape[-3:])
    mask = predictor.brain_mask(prep)
    true_idx = CLASSES.index(case.label)
    predicted: int | None = None
    out: list[CaseResult] = []

    def result(method: str, kind: str, target: int, cam, seconds: float | None) -> CaseResult:
        return CaseResult(
            subject_id=case.subject_id,
            label=case.label,
            arch=arch,
            method=method,
            target_kind=kind,
            target=CLASSES[target],
            predicted=CLASSES[predicted],
            score=score_map(cam, regions),
            seconds=seconds,
        )

    for method in methods:
        if method in REFERENCE_METHODS and predicted is None:
            _, predicted, _ = explain_batch(model, x, LEGACY_CAM_METHOD)
        start = time.perf_counter()
        if method in REFERENCE_METHODS:
            x32 = x.float()
            cams = {t: _reference_map(model, ref_model, method, x32, t) for t in (predicted,)}
            expl = make_explanation(arch, predicted, cams[predicted], prep.grid, shape, mask)
            seconds = time.perf_counter() - start
            out.append(result(method, "predicted", predicted, expl.cam_volume, seconds))
            if true_idx != predicted:
                cam = _reference_map(model, ref_model, method, x32, true_idx)
                expl_true = make_explanation(arch, true_idx, cam, prep.grid, shape, mask)
            else:
                expl_true = expl
            out.append(result(method, "true", true_idx, expl_true.cam_volume, None))
            continue
        feats, target, cam = explain_batch(model, x, method, target=predicted, retain_graph=True)
        predicted = target
        expl = make_explanation(arch, predicted, cam[0], prep.grid, shape, mask, method)
        seconds = time.perf_counter() - start
        out.append(result(method, "predicted", predicted, expl.cam_volume, seconds))
        if true_idx != predicted:
            maps = cam_maps(feats, true_idx, get_cam_method(method).rule)
            cam_true = fuse_maps(maps, shape)[0]
            expl = make_explanation(arch, true_idx, cam_true, prep.grid, shape, mask, method)
        del feats
        out.append(result(method, "true", true_idx, expl.cam_volume, None))
    return out
