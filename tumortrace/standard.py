"""The standard-space pipeline: every scan in one template space before the networks see it.

Steps (one function each, in this order):

1. :func:`tumortrace.io.load_volume` -> canonical RAS :class:`~tumortrace.io.Volume`.
2. :func:`tumortrace.brain.extract_brain` -> brain mask (deepbet).
3. :func:`tumortrace.register.register_to_template` -> affine map to MNI152 2009a (SimpleITK).
4. :func:`measure` -> the input checks (:mod:`tumortrace.qc`) on the native mask and on the scan
   resampled into the template's 2 mm grid.
   Steps 2-4 are :func:`standardise`, which returns a :class:`StandardSpace` (cached by file hash
   and :func:`pipeline_key`, on disk by :func:`load_cached` / :func:`save_cached`).
5. :func:`model_input` -> the brain resampled into the fixed template-space box
   (:func:`tumortrace.template.box_affine`) at the card's spacing, intensities clipped and z-scored
   inside the brain mask, a constant outside it.

So a whole-head scan and a skull-stripped one, at any resolution or orientation, reach the networks
as the same picture of the same brain. The model grid's :class:`~tumortrace.preprocess.GridMap`
holds the model voxel -> *scan* world affine (the registration folded in), so every model-grid map
(Grad-CAM) goes back onto the uploaded file's own grid with
:func:`tumortrace.preprocess.model_to_volume`, exactly as with the native pipeline.

Axis convention: native and template arrays are RAS ``(X, Y, Z)``; the model tensor is
``(1, D, H, W)`` = (z, y, x) of the template box.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import nibabel as nib
import numpy as np
import torch
from scipy import ndimage

from tumortrace import qc
from tumortrace.brain import BrainMask, deepbet_version, extract_brain
from tumortrace.config import PreprocessConfig
from tumortrace.errors import InvalidVolumeError
from tumortrace.files import sha256_file
from tumortrace.io import Volume
from tumortrace.preprocess import (
    DHW_TO_XYZ,
    GridMap,
    Preprocessed,
    antialias_sigmas,
    clip_range,
    preprocess,
    smooth_axes,
    to_model_axes,
)
from tumortrace.register import REGISTRATION_SETTINGS, Registration, register_to_template
from tumortrace.template import TEMPLATE_NAME, box_affine, load_template

__all__ = [
    "PIPELINE_VERSION",
    "STEPS",
    "StandardSpace",
    "lesion_input",
    "load_cached",
    "measure",
    "model_input",
    "pipeline_description",
    "pipeline_key",
    "prepare",
    "save_cached",
    "standardise",
    "standardise_cached",
    "warp",
]

PIPELINE_VERSION = 1
"""Bumped whenever extraction, registration or the checks change what they produce."""


def _geometry_description() -> dict[str, object]:
    """What brain extraction and registration depend on (the cache key hashes this)."""
    return {
        "version": PIPELINE_VERSION,
        "brain_extraction": f"deepbet {deepbet_version()} (threshold 0.5, largest component)",
        "template": TEMPLATE_NAME,
        "registration": REGISTRATION_SETTINGS,
    }


def pipeline_description() -> dict[str, object]:
    """What model cards record about the pipeline: extraction, template, registration, checks."""
    return {**_geometry_description(), "qc_thresholds": dict(qc.QC_THRESHOLDS)}


def pipeline_key() -> str:
    """Short hash of the extraction and registration settings: cache entries made with other
    settings are ignored. The checks are not in it: they are re-measured from a cached entry."""
    blob = json.dumps(_geometry_description(), sort_keys=True).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


@dataclass(frozen=True)
class StandardSpace:
    """Brain extraction, registration and input checks of one scan.

    Attributes:
        brain: ``(X, Y, Z)`` bool native brain mask (canonical grid of the :class:`Volume`).
        brain_ml: its volume in ml.
        registration: the affine map to the template.
        qc: the input checks.
        seconds: wall time per step (``"brain"``, ``"registration"``, ``"checks"``).
    """

    brain: np.ndarray
    brain_ml: float
    registration: Registration
    qc: qc.QCReport
    seconds: dict[str, float] = field(default_factory=dict)

    @property
    def reliable(self) -> bool:
        """False when a check says no verdict should be read from this input."""
        return self.qc.reliable


def warp(
    array: np.ndarray,
    native_affine: np.ndarray,
    template_to_native: np.ndarray,
    out_affine: np.ndarray,
    out_shape: tuple[int, int, int],
    order: int = 1,
    cval: float = 0.0,
) -> np.ndarray:
    """Resamples a native ``(X, Y, Z)`` array onto a template-space grid.

    Output voxel ``v`` reads the native voxel ``inv(native_affine) @ template_to_native @
    out_affine @ v``.

    Args:
        array: ``(X, Y, Z)`` on the scan's canonical grid.
        native_affine: its voxel -> RAS mm.
        template_to_native: registration, template RAS mm -> scan RAS mm.
        out_affine: output voxel -> template RAS mm.
        out_shape: output ``(X, Y, Z)``.
        order: spline order (0 nearest, 1 trilinear).
        cval: value outside the scan.

    Returns:
        ``(X, Y, Z)`` float32 on the output grid.
    """
    m = np.linalg.inv(native_affine) @ template_to_native @ out_affine
    return ndimage.affine_transform(
        np.asarray(array, dtype=np.float32),
        m[:3, :3],
        offset=m[:3, 3],
        output_shape=tuple(int(s) for s in out_shape),
        order=order,
        mode="constant",
        cval=cval,
    )


def measure(volume: Volume, bet: BrainMask, reg: Registration) -> qc.QCReport:
    """Runs every input check of :mod:`tumortrace.qc` on one scan.

    Args:
        volume: the canonical scan.
        bet: its brain mask.
        reg: its registration to the template.
    """
    spacing = tuple(float(s) for s in volume.spacing)
    voxel_ml = float(np.prod(spacing)) / 1000.0
    checks = [qc.check_brain(bet.found, bet.volume_ml, bet.reason)]
    checks.append(qc.check_skull(qc.skull_ratio(volume.data, bet.mask, voxel_ml)))
    checks.append(qc.check_structure(qc.neighbour_correlation(volume.data, bet.mask, spacing)))
    dice, ncc, ratio, share = (float("nan"),) * 4
    if bet.found and reg.ok:
        tpl = load_template()
        out_affine = tpl.affine @ np.diag([2.0, 2.0, 2.0, 1.0])
        tb = tpl.brain[::2, ::2, ::2]
        t2n = reg.template_to_native
        # Template voxels inside the scan's field of view: what is outside is the coverage
        # check's business, not the registration's.
        fov = warp(np.ones(volume.data.shape, np.float32), volume.affine, t2n, out_affine, tb.shape)
        seen = tb & (fov > 0.5)
        warped = warp(bet.mask, volume.affine, t2n, out_affine, tb.shape) > 0.5
        dice = qc.dice(warped & (fov > 0.5), seen)
        image = warp(np.where(bet.mask, volume.data, 0.0), volume.affine, t2n, out_affine, tb.shape)
        ncc = qc.correlation(image, warped, tpl.t1[::2, ::2, ::2], tb, fov > 0.5)
        ratio = qc.wm_gm_ratio(image, tpl.wm[::2, ::2, ::2], tpl.gm[::2, ::2, ::2])
        share = float(seen.sum()) / max(float(tb.sum()), 1.0)
    checks.append(qc.check_registration(bet.found and reg.ok, dice, reg.reason))
    checks.append(qc.check_tissue(ncc))
    checks.append(qc.check_slices(spacing))
    checks.append(qc.check_coverage(share))
    checks.append(qc.check_contrast(ratio))
    return qc.merge(checks)


STEPS: tuple[str, str, str] = (
    "Finding the brain (deepbet)",
    "Aligning it to the MNI152 template",
    "Checking the input",
)
"""What :func:`standardise` reports to its ``progress`` callback, in order."""


def standardise(volume: Volume, progress: Callable[[str], None] | None = None) -> StandardSpace:
    """Brain extraction, registration to the template and the input checks of one scan.

    Never raises for a doubtful scan: what went wrong is in :attr:`StandardSpace.qc`.

    Args:
        volume: the canonical scan.
        progress: called with each of :data:`STEPS` before that step runs (e.g. the app's status).
    """
    say = progress or (lambda _step: None)
    say(STEPS[0])
    bet = extract_brain(volume.data, volume.spacing)
    say(STEPS[1])
    reg = register_to_template(volume.data, bet.mask, volume.affine)
    say(STEPS[2])
    t0 = time.perf_counter()
    report = measure(volume, bet, reg)
    return StandardSpace(
        brain=bet.mask,
        brain_ml=bet.volume_ml,
        registration=reg,
        qc=report,
        seconds={
            "brain": bet.seconds,
            "registration": reg.seconds,
            "checks": time.perf_counter() - t0,
        },
    )


def model_input(volume: Volume, std: StandardSpace, config: PreprocessConfig) -> Preprocessed:
    """The brain in the template-space box at the card's spacing, normalised inside the brain.

    Anti-aliasing (a Gaussian matched to the downsampling, as in the native pipeline), trilinear
    resampling into :func:`tumortrace.template.box_affine`, intensity clipped to the card's
    percentiles and z-scored inside the warped brain mask, and ``config.fill`` everywhere
    outside it, the same in every case.

    Args:
        volume: the canonical scan.
        std: its :class:`StandardSpace` (from :func:`standardise` or the cache).
        config: the card's preprocessing (``space == "mni"``).

    Returns:
        :class:`Preprocessed`: ``(1, D, H, W)`` float32 tensor, its grid (model voxel -> scan world)
        and the ``(D, H, W)`` bool brain mask.

    Raises:
        InvalidVolumeError: if no brain was found or registered (the checks say why), or the brain
            has no intensity contrast.
    """
    if not std.brain.any() or not std.registration.ok:
        msgs = "; ".join(std.qc.warnings) or "no brain found"
        raise InvalidVolumeError(f"{volume.source}: cannot build the network input: {msgs}")
    spacing_dhw = tuple(float(s) for s in config.spacing_mm)
    shape_dhw = tuple(int(s) for s in config.shape_dhw)
    box = box_affine(shape_dhw, spacing_dhw)
    out_shape = shape_dhw[::-1]
    t2n = std.registration.template_to_native
    # Native voxel size along the box axes: the registration's scale times the target spacing.
    scale = np.linalg.norm(t2n[:3, :3], axis=0)
    target_native = tuple(float(s) for s in (np.asarray(spacing_dhw[::-1]) * scale.mean()))
    data = torch.from_numpy(np.where(std.brain, volume.data, 0.0).astype(np.float32))[None]
    sigmas = antialias_sigmas(tuple(volume.spacing), target_native)
    smooth = smooth_axes(data, sigmas)[0].numpy()
    image = warp(smooth, volume.affine, t2n, box, out_shape)
    mask = warp(std.brain, volume.affine, t2n, box, out_shape) > 0.5
    if mask.sum() < 8:
        raise InvalidVolumeError(f"{volume.source}: the brain is outside the template box.")
    lo, hi = clip_range(image[mask], config.percentiles, volume.source)
    clipped = np.clip(image, lo, hi)
    if config.intensity == "zscore":
        inside = clipped[mask]
        z = (clipped - inside.mean()) / max(float(inside.std()), 1e-6)
        z = np.where(mask, z, config.fill).astype(np.float32)
    else:  # percentile: [0, 1] inside the brain, 0 (the darkest tissue) outside
        z = np.where(mask, (clipped - lo) / (hi - lo), 0.0).astype(np.float32)
    tensor = to_model_axes(torch.from_numpy(z)[None]).contiguous()
    grid = GridMap(
        model_affine=t2n @ box @ DHW_TO_XYZ,
        volume_affine=np.asarray(volume.affine, dtype=np.float64),
        volume_shape=tuple(int(s) for s in volume.data.shape),
    )
    brain_dhw = np.ascontiguousarray(to_model_axes(mask))
    return Preprocessed(tensor=tensor, grid=grid, brain=brain_dhw)


def lesion_input(mask: Volume, pre: Preprocessed) -> np.ndarray:
    """A lesion mask on the model grid, warped exactly as the image was.

    The model voxel -> scan world map of ``pre.grid`` (the registration and the template box
    folded in, or the native crop) is the one :func:`model_input` built the image with; the mask
    is resampled through it and its own affine by :func:`warp` (trilinear on the 0/1 lesion, then
    ``> 0.5``), so image and mask stay aligned in either pipeline.

    Args:
        mask: the lesion labels as a canonical :class:`Volume` (any non-zero voxel is lesion:
            1 tumour, 2 oedema), normally on the scan's own grid.
        pre: the scan's model input (:func:`prepare`).

    Returns:
        ``(D, H, W)`` bool lesion on the model grid.
    """
    shape_dhw = tuple(int(s) for s in pre.tensor.shape[1:])
    lesion = (np.asarray(mask.data) > 0.5).astype(np.float32)
    on_grid = warp(lesion, mask.affine, pre.grid.model_affine, np.eye(4), shape_dhw, order=1)
    return on_grid > 0.5


def prepare(
    volume: Volume, config: PreprocessConfig, std: StandardSpace | None = None
) -> Preprocessed:
    """The network input of a card's pipeline: standard space or the legacy native crop.

    Args:
        volume: the canonical scan.
        config: the card's preprocessing.
        std: the scan's :class:`StandardSpace` if already computed (``space == "mni"`` only;
            computed here when None).
    """
    if config.space == "native":
        return preprocess(volume, config)
    return model_input(volume, std if std is not None else standardise(volume), config)


# ------------------------------------------------------------------------- on-disk cache


def _entry(cache_dir: Path, sha256: str) -> Path:
    return Path(cache_dir) / f"{sha256[:32]}-{pipeline_key()}"


def save_cached(cache_dir: str | Path, sha256: str, std: StandardSpace) -> Path:
    """Stores a :class:`StandardSpace` (mask as NIfTI, the rest as JSON), atomically.

    Args:
        cache_dir: cache folder (created if missing).
        sha256: content hash of the scan file.
        std: the result to store.

    Returns:
        The entry's folder.
    """
    entry = _entry(Path(cache_dir), sha256)
    entry.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".tmp-", dir=entry.parent))
    nib.save(nib.Nifti1Image(std.brain.astype(np.uint8), np.eye(4)), tmp / "brain.nii.gz")
    reg = std.registration
    meta = {
        "brain_ml": std.brain_ml,
        "brain_found": bool(std.brain.any()),
        "registration": {
            "template_to_native": reg.template_to_native.tolist(),
            "ok": reg.ok,
            "reason": reg.reason,
            "metric": reg.metric,
            "stage": reg.stage,
            "seconds": reg.seconds,
        },
        "qc": std.qc.to_dict(),
        "seconds": std.seconds,
        "pipeline": pipeline_description(),
    }
    (tmp / "standard.json").write_text(json.dumps(meta, indent=1))
    try:
        os.replace(tmp, entry)
    except OSError:  # another process stored the same entry first
        for f in tmp.iterdir():
            f.unlink()
        tmp.rmdir()
    return entry


def load_cached(
    cache_dir: str | Path, sha256: str, volume: Volume, checks: bool = True
) -> StandardSpace | None:
    """The stored :class:`StandardSpace` of a file hash under this pipeline, or None.

    The brain mask and the registration come from the cache; the input checks are measured again
    on ``volume`` (about a second), so new thresholds never need a new extraction. With
    ``checks=False`` (training, which never reads them) the stored checks are returned instead.
    """
    entry = _entry(Path(cache_dir), sha256)
    try:
        meta = json.loads((entry / "standard.json").read_text())
        brain = np.asarray(nib.load(entry / "brain.nii.gz").dataobj).astype(bool)
    except (OSError, ValueError, KeyError):
        return None
    if brain.shape != volume.data.shape:
        return None
    r = meta["registration"]
    t2n = np.asarray(r["template_to_native"], dtype=np.float64)
    reg = Registration(
        template_to_native=t2n,
        native_to_template=np.linalg.inv(t2n),
        ok=bool(r["ok"]),
        reason=r["reason"],
        metric=float(r["metric"]),
        stage=r["stage"],
        seconds=float(r["seconds"]),
    )
    bet = BrainMask(
        mask=brain,
        volume_ml=float(meta["brain_ml"]),
        found=bool(meta.get("brain_found", brain.any())),
        reason=meta.get("brain_reason", ""),
        seconds=float(meta["seconds"].get("brain", 0.0)),
    )
    t0 = time.perf_counter()
    report = measure(volume, bet, reg) if checks else _stored_checks(meta["qc"])
    seconds = {k: float(v) for k, v in meta["seconds"].items()}
    seconds["checks"] = time.perf_counter() - t0
    return StandardSpace(
        brain=brain, brain_ml=bet.volume_ml, registration=reg, qc=report, seconds=seconds
    )


def _stored_checks(d: dict) -> qc.QCReport:
    """A :class:`tumortrace.qc.QCReport` as :meth:`~tumortrace.qc.QCReport.to_dict` stored it."""
    rows = [{**c, "value": float("nan") if c["value"] is None else c["value"]} for c in d["checks"]]
    return qc.merge([qc.QCCheck(**c) for c in rows])


def standardise_cached(
    volume: Volume, path: str | Path, cache_dir: str | Path, checks: bool = True
) -> StandardSpace:
    """:func:`standardise` of a scan file through the on-disk cache: loaded when the file's
    content was seen under this pipeline, else computed and stored.

    Args:
        volume: the canonical scan read from ``path``.
        path: the scan file (its SHA-256 is the cache key).
        cache_dir: the cache folder (:func:`save_cached`).
        checks: re-measure the input checks of a cached entry (see :func:`load_cached`).
    """
    sha = sha256_file(path)
    std = load_cached(cache_dir, sha, volume, checks=checks)
    if std is None:
        std = standardise(volume)
        save_cached(cache_dir, sha, std)
    return std
