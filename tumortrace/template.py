"""The MNI152 2009a template (nilearn's copy) and the fixed template-space box the networks see.

The ICBM 2009a nonlinear symmetric template ships inside the nilearn wheel as 1 mm, brain-only
(skull-stripped) T1, grey-matter and white-matter probability maps, all ``(197, 233, 189)`` in RAS
with the same affine, so it works offline. This module is the one place that finds and reads those
files; :mod:`tumortrace.head_template` pads them into the phantoms' head, and the standard-space
pipeline (:mod:`tumortrace.standard`) registers every scan to them.

Axis convention: arrays here are canonical RAS ``(X, Y, Z)`` like :class:`tumortrace.io.Volume`.
"""

from __future__ import annotations

import functools
import importlib.util
from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np

from tumortrace.errors import TumorTraceError

__all__ = [
    "BOX_CENTRE_MNI",
    "TEMPLATE_NAME",
    "Template",
    "box_affine",
    "load_template",
    "template_path",
]

TEMPLATE_NAME = "MNI152 ICBM 2009a nonlinear symmetric (nilearn copy, 1 mm)"
"""Recorded in model cards: the space every standard-space input lives in."""

_FILES = {k: f"mni_icbm152_{k}_tal_nlin_sym_09a_converted.nii.gz" for k in ("t1", "gm", "wm")}

BOX_CENTRE_MNI: tuple[float, float, float] = (0.0, -17.0, 5.0)
"""Centre (x, y, z) in MNI mm of the template brain's bounding box (x -72..72, y -107..73,
z -72..82 mm): the model grid of the standard-space pipeline is centred here."""


def template_path(kind: str) -> Path:
    """Path of one template file inside the nilearn wheel.

    Args:
        kind: ``"t1"``, ``"gm"`` or ``"wm"``.

    Raises:
        TumorTraceError: if nilearn or the file is missing (the message says how to fix it).
    """
    if kind not in _FILES:
        raise ValueError(f"unknown template kind {kind!r}; expected one of {sorted(_FILES)}")
    spec = importlib.util.find_spec("nilearn")
    if spec is None or spec.origin is None:
        raise TumorTraceError(
            "The MNI152 template ships inside the nilearn package, which is not installed; "
            "install the project's requirements (pip install -r requirements.txt)."
        )
    path = Path(spec.origin).parent / "datasets" / "data" / _FILES[kind]
    if not path.is_file():
        raise TumorTraceError(
            f"MNI152 template file {path} not found; expected it inside the nilearn wheel. "
            "Reinstall nilearn from the project's requirements."
        )
    return path


@dataclass(frozen=True)
class Template:
    """The template at 1 mm, read once per process.

    Attributes:
        t1: ``(X, Y, Z)`` float32 T1 intensities, white matter = 1, 0 outside the brain.
        gm: ``(X, Y, Z)`` float32 grey-matter probability in [0, 1].
        wm: ``(X, Y, Z)`` float32 white-matter probability in [0, 1].
        brain: ``(X, Y, Z)`` bool brain mask (the template's non-zero voxels, CSF included).
        affine: ``(4, 4)`` voxel -> MNI (RAS) mm.
    """

    t1: np.ndarray
    gm: np.ndarray
    wm: np.ndarray
    brain: np.ndarray
    affine: np.ndarray

    @property
    def spacing(self) -> tuple[float, float, float]:
        """Voxel size in mm (1, 1, 1)."""
        return tuple(float(s) for s in np.linalg.norm(self.affine[:3, :3], axis=0))


def _read_unit(path: Path) -> np.ndarray:
    """A uint8 template file as float32 in [0, 1]."""
    return np.asarray(nib.load(path).dataobj, dtype=np.float32) / 255.0


@functools.lru_cache(maxsize=1)
def load_template() -> Template:
    """Loads the template once per process (about 0.3 s); the arrays are read-only."""
    t1, gm, wm = (_read_unit(template_path(k)) for k in ("t1", "gm", "wm"))
    brain = t1 > 0
    t1 = t1 / float(np.median(t1[wm > 0.9]))
    affine = np.asarray(nib.load(template_path("t1")).affine, dtype=np.float64)
    for a in (t1, gm, wm, brain):
        a.flags.writeable = False
    return Template(t1=t1, gm=gm, wm=wm, brain=brain, affine=affine)


def box_affine(
    shape_dhw: tuple[int, int, int], spacing_dhw: tuple[float, float, float]
) -> np.ndarray:
    """Voxel ``(x, y, z)`` -> MNI mm affine of the template-space box the networks see.

    The box is axis-aligned in RAS, ``shape_dhw[::-1]`` voxels of ``spacing_dhw[::-1]`` mm, centred
    on :data:`BOX_CENTRE_MNI`; the model tensor is this box in ``(D, H, W) = (z, y, x)`` order.

    Args:
        shape_dhw: model grid ``(D, H, W)``.
        spacing_dhw: voxel size ``(D, H, W)`` in mm.

    Returns:
        ``(4, 4)`` float64 affine of the ``(X, Y, Z)`` box.
    """
    shape = np.asarray(shape_dhw[::-1], dtype=np.float64)
    spacing = np.asarray(spacing_dhw[::-1], dtype=np.float64)
    affine = np.diag([*spacing, 1.0])
    affine[:3, 3] = np.asarray(BOX_CENTRE_MNI) - spacing * (shape - 1) / 2
    return affine
