"""The padded MNI152 head the phantoms are built on and the lesion models are drawn in.

The MNI152 2009a T1 template (nilearn's files, found by :func:`tumortrace.template.template_path`),
normalised so white matter is 1, padded with room for a scalp and a neck, and given a synthetic
skull, scalp and neck; with its brain and white-matter probabilities and the plausible lesion
centres (deep cerebral white matter). Loaded once per process (:func:`padded_template`).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np
import torch
from scipy import ndimage as ndi

from tumortrace.phantom_grid import smooth_noise, upsample
from tumortrace.template import template_path

_PAD = ((24, 24), (24, 24), (40, 16))  # room for a scalp and a neck around the brain template (mm)


@dataclass(frozen=True)
class PaddedTemplate:
    """The MNI152 2009a template padded for a head, on its 1 mm grid (MNI mm world)."""

    brain: torch.Tensor  # (1, 1, X, Y, Z) skull-stripped T1, white matter = 1
    head: torch.Tensor  # (1, 1, X, Y, Z) same with a synthetic skull, scalp and neck
    mask: np.ndarray  # (X, Y, Z) float32 brain probability (padded template grid)
    wm: np.ndarray  # (X, Y, Z) float32 white-matter probability
    affine: np.ndarray  # (4, 4) padded voxel -> MNI mm
    inv_affine: np.ndarray
    candidates: np.ndarray  # (K, 3) MNI mm: plausible lesion centres (deep cerebral WM)


def _load_uint8(path: Path) -> np.ndarray:
    """A template file's (X, Y, Z) uint8 values as float32 in [0, 1]."""
    return np.asarray(nib.load(path).dataobj, dtype=np.float32) / 255.0


def _synth_head(brain: np.ndarray, affine: np.ndarray) -> np.ndarray:
    """Non-brain head tissue around a padded brain mask: CSF, skull tables, diploe, scalp, neck.

    Args:
        brain: (X, Y, Z) bool brain mask on the padded 1 mm template grid.
        affine: (4, 4) its voxel -> MNI mm affine.

    Returns:
        (X, Y, Z) float32 intensities relative to white matter, 0 inside the brain and in air.
    """
    b2 = brain[::2, ::2, ::2].astype(np.float32)
    env = ndi.binary_fill_holes(ndi.gaussian_filter(b2, 2.5) > 0.2)
    z_mm = affine[2, 3] + 2.0 * np.arange(b2.shape[2])
    k_ref = int(np.searchsorted(z_mm, -40.0))
    neck = ndi.binary_erosion(env[:, :, k_ref], iterations=4)
    env[:, :, :k_ref] |= neck[:, :, None]
    rng = np.random.default_rng(152)  # fixed: the skull belongs to the template, not the subject
    dist = ndi.distance_transform_edt(~env) * 2.0 + 1.2 * smooth_noise(rng, b2.shape, 3.0)
    texture = 1.0 + 0.08 * smooth_noise(rng, b2.shape, 1.0)
    inside = np.where(z_mm[None, None, :] < -50.0, 0.45, 0.12)
    extra = np.select(
        [env, dist < 1.5, dist < 3.5, dist < 6.5, dist < 8.5, dist < 13.0, dist < 15.0],
        [inside, 0.12, 0.05, 0.55, 0.05, 0.9, 0.45],
        0.0,
    ).astype(np.float32)
    extra = upsample(extra * texture, brain.shape)
    extra[brain] = 0.0
    return extra


@functools.lru_cache(maxsize=1)
def padded_template() -> PaddedTemplate:
    """Loads, normalises and pads the MNI152 2009a template once per process."""
    t1, gm, wm = (_load_uint8(template_path(k)) for k in ("t1", "gm", "wm"))
    t1 = t1 / float(np.median(t1[wm > 0.9]))  # white matter = 1
    t1, gm, wm = (np.pad(a, _PAD) for a in (t1, gm, wm))
    src_affine = nib.load(template_path("t1")).affine
    affine = src_affine.copy()
    affine[:3, 3] -= src_affine[:3, :3] @ np.array([p[0] for p in _PAD], dtype=float)
    brain = t1 > 0
    head = t1 + _synth_head(brain, affine)
    mask = ndi.gaussian_filter(brain.astype(np.float32), 0.7)

    # Lesion centres: deep cerebral white matter (>= 12 mm inside the brain, above the cerebellum).
    depth = ndi.distance_transform_edt(brain[::2, ::2, ::2]) * 2.0
    ok = (wm[::2, ::2, ::2] > 0.6) & (depth > 12.0)
    vox = np.argwhere(ok).astype(float) * 2.0
    mm = vox @ affine[:3, :3].T + affine[:3, 3]
    candidates = mm[(mm[:, 2] > -15.0) & (np.abs(mm[:, 0]) > 8.0)]

    def as_tensor(a: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(np.ascontiguousarray(a, dtype=np.float32))[None, None]

    return PaddedTemplate(
        brain=as_tensor(t1),
        head=as_tensor(head),
        mask=mask.astype(np.float32),
        wm=wm.astype(np.float32),
        affine=affine,
        inv_affine=np.linalg.inv(affine),
        candidates=candidates,
    )
