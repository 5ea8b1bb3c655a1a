"""Brain extraction with deepbet (Fisch et al. 2024, MIT licence).

deepbet's two TorchScript networks (a bounding-box net at 128^3 and a mask net at 256^3) ship
inside its wheel, so extraction works offline. They are files of an installed package, not user
input. deepbet resizes the head's bounding box to 256^3 itself, so any voxel size works; it was
measured here to give tight inner-skull masks on 2 mm whole-head IXI scans and on a 6.5 mm TCGA scan
with skull, and to keep 95.6-99.8 % of already skull-stripped BraTS brains.

The networks are loaded once per process and shared: inference is read-only, and a lock serialises
calls because the TorchScript modules keep per-call state (``BrainExtraction.bbox``).

Packaging note: deepbet's wheel installs a top-level ``data/`` folder (its models) into
site-packages; it finds it by file path, never by ``import data``, and so does this module (see
:func:`model_files`), so the project's own ``data/`` cohort folder cannot shadow it.
"""

from __future__ import annotations

import functools
import importlib.metadata
import threading
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from scipy import ndimage

from tumortrace.errors import TumorTraceError
from tumortrace.intensity import largest_component

__all__ = ["BrainMask", "deepbet_version", "extract_brain", "model_files"]

_LOCK = threading.Lock()
_THRESHOLD = 0.5
MIN_FOV_MM = 50.0
"""A scan whose field of view is smaller than this along any axis cannot hold a whole brain
(an adult brain spans about 120-170 mm): extraction is not attempted."""


@dataclass(frozen=True)
class BrainMask:
    """Result of :func:`extract_brain`.

    Attributes:
        mask: ``(X, Y, Z)`` bool brain mask on the volume's canonical grid (all False if no brain
            was found).
        volume_ml: mask volume in millilitres.
        found: False when deepbet found nothing usable (then ``reason`` says why).
        reason: plain-language reason when ``found`` is False, else ``""``.
        seconds: wall time of the extraction.
    """

    mask: np.ndarray
    volume_ml: float
    found: bool
    reason: str
    seconds: float


def deepbet_version() -> str:
    """Installed deepbet version, recorded in model cards and cache keys."""
    try:
        return importlib.metadata.version("deepbet")
    except importlib.metadata.PackageNotFoundError:
        return "missing"


def model_files() -> tuple[Path, Path]:
    """Paths of deepbet's mask and bounding-box TorchScript files inside its wheel.

    Raises:
        TumorTraceError: if deepbet or its model files are missing.
    """
    try:
        from deepbet import utils
    except ImportError as err:
        raise TumorTraceError(
            "Brain extraction needs the deepbet package, which is not installed; install the "
            "project's requirements (pip install -r requirements.txt)."
        ) from err
    folder = Path(utils.DATA_PATH) / "models"
    files = (folder / "model.pt", folder / "bbox_model.pt")
    missing = [str(f) for f in files if not f.is_file()]
    if missing:
        raise TumorTraceError(
            f"deepbet's model files are missing ({', '.join(missing)}); reinstall deepbet "
            f"({deepbet_version()}) from the project's requirements."
        )
    return files


@functools.lru_cache(maxsize=1)
def _extractor():
    """deepbet's BrainExtraction on the CPU, built once per process."""
    from deepbet import BrainExtraction

    model, bbox_model = model_files()
    with warnings.catch_warnings():
        # torch.jit.load's deprecation notice is about deepbet's code, not the user's scan.
        warnings.simplefilter("ignore", FutureWarning)
        return BrainExtraction(no_gpu=True, model_path=str(model), bbox_model_path=str(bbox_model))


def extract_brain(data: np.ndarray, spacing: tuple[float, float, float]) -> BrainMask:
    """Brain mask of a canonical RAS volume.

    Never raises for a bad image: an image in which deepbet finds nothing (noise, a tiny volume,
    an empty field of view) gives ``found=False`` with the reason, so the caller can warn.

    Args:
        data: ``(X, Y, Z)`` intensities in canonical RAS (what deepbet expects).
        spacing: voxel size in mm along x, y, z.

    Returns:
        :class:`BrainMask`.
    """
    t0 = time.perf_counter()
    x = np.nan_to_num(np.asarray(data, dtype=np.float32))
    voxel_ml = float(np.prod(spacing)) / 1000.0
    empty = np.zeros(x.shape, dtype=bool)
    fov = np.asarray(x.shape, dtype=np.float64) * np.asarray(spacing, dtype=np.float64)
    if float(fov.min()) < MIN_FOV_MM:
        shown = "x".join(f"{v:.0f}" for v in fov)
        return BrainMask(
            empty, 0.0, False, f"the scan covers only {shown} mm, too small for a brain", 0.0
        )
    if min(x.shape) < 8 or float(x.max()) <= float(x.min()):
        return BrainMask(empty, 0.0, False, "the image is too small or has no contrast", 0.0)
    extractor = _extractor()
    try:
        with _LOCK:
            prob = extractor.run_model(x.copy())
    except (AssertionError, RuntimeError, ValueError, IndexError) as err:
        # deepbet asserts when its bounding-box net finds no head at all.
        return BrainMask(empty, 0.0, False, f"no brain found ({err})", time.perf_counter() - t0)
    mask = prob > _THRESHOLD
    if not mask.any():
        return BrainMask(empty, 0.0, False, "no brain found", time.perf_counter() - t0)
    mask = ndimage.binary_fill_holes(largest_component(mask))
    return BrainMask(
        mask=mask,
        volume_ml=float(mask.sum()) * voxel_ml,
        found=True,
        reason="",
        seconds=time.perf_counter() - t0,
    )
