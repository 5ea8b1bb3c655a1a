"""Real tumours moved between real brains: carved into a healthy one, or filled away from their own.

Two operations, both through each scan's registration to the (left-right symmetric) MNI152 template
(:class:`tumortrace.standard.StandardSpace`), both written on a native scan grid:

* :func:`carve_tumour` (CarveMix, Zhang et al., MICCAI 2021): the donor's lesion mask plus a margin
  drawn at random, with a soft edge (:func:`soft_region`), is cut out of the donor scan and
  blended into a recipient brain at the same template position, mirrored across the midline, or
  shifted a few millimetres to another white-matter point (:class:`Placement`). The donor's
  intensities are rescaled from its own white-matter level to the recipient's
  (:func:`tumortrace.cohort.tissue_levels`), fine-scale noise is topped up to the recipient's
  level, and only voxels inside the recipient's brain change. The mask goes with the tumour.
* :func:`fill_from_mirror` ("healthy-made"): where a patient's lesion region (mask plus margin)
  and its mirror image across the template midline are disjoint and the mirror lies in the brain,
  the region is replaced, with a soft edge, by the mirrored tissue of the other hemisphere of the
  same scan. The result is the same scan format without a tumour. Mass effect is not undone.

Axis convention: native arrays are canonical RAS ``(X, Y, Z)`` (:class:`tumortrace.io.Volume`).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from tumortrace.cohort import TissueLevels
from tumortrace.errors import InvalidVolumeError
from tumortrace.standard import StandardSpace
from tumortrace.template import load_template
from tumortrace.volume import Volume

__all__ = [
    "MIRROR",
    "MIRROR_BRAIN_SHARE",
    "MIRROR_LESION_SHARE",
    "Carved",
    "Filled",
    "Placement",
    "carve_tumour",
    "choose_placement",
    "fill_from_mirror",
    "soft_region",
]

MIRROR = np.diag([-1.0, 1.0, 1.0, 1.0])
"""Template mm -> template mm reflection across the midline (x = 0 of the symmetric template)."""
MIRROR_LESION_SHARE = 0.02
"""A lesion is "in one hemisphere" when at most this share of its fill region mirrors onto it."""
MIRROR_BRAIN_SHARE = 0.95
"""The fill region's brain must mirror into the brain for at least this share (by weight)."""


@dataclass(frozen=True)
class Placement:
    """Where a carved tumour goes in template space.

    Attributes:
        kind: ``"own"`` (its own template position), ``"mirrored"`` (the other hemisphere) or
            ``"shifted"`` (moved by :attr:`shift_mm`).
        shift_mm: template-space shift ``(x, y, z)`` in mm (zero unless shifted).
    """

    kind: str
    shift_mm: tuple[float, float, float] = (0.0, 0.0, 0.0)

    def matrix(self) -> np.ndarray:
        """``(4, 4)`` donor template mm -> recipient template mm."""
        m = MIRROR.copy() if self.kind == "mirrored" else np.eye(4)
        m[:3, 3] = self.shift_mm
        return m


@dataclass(frozen=True)
class Carved:
    """A recipient scan with a donor's tumour.

    Attributes:
        data: ``(X, Y, Z)`` float32 recipient scan with the tumour, in the recipient's units.
        mask: ``(X, Y, Z)`` uint8 on the recipient grid: 1 tumour, 2 oedema (the donor's coding).
        meta: JSON-ready placement, margin, volumes (ml) and intensity scale.
    """

    data: np.ndarray
    mask: np.ndarray
    meta: dict


@dataclass(frozen=True)
class Filled:
    """A tumour scan with its lesion region filled from the mirrored hemisphere.

    Attributes:
        data: ``(X, Y, Z)`` float32, the scan without its lesion.
        weight: ``(X, Y, Z)`` float32 in [0, 1], how much of each voxel was replaced.
        meta: JSON-ready margin and volumes (ml).
    """

    data: np.ndarray
    weight: np.ndarray
    meta: dict


def _world(affine: np.ndarray, idx: np.ndarray) -> np.ndarray:
    """``(..., 3)`` voxel indices -> ``(..., 3)`` mm."""
    return idx @ affine[:3, :3].T + affine[:3, 3]


def _apply(m: np.ndarray, pts: np.ndarray) -> np.ndarray:
    return pts @ m[:3, :3].T + m[:3, 3]


def soft_region(mask: np.ndarray, spacing: tuple[float, ...], margin_mm: float, edge_mm: float):
    """``(X, Y, Z)`` float32 weight: 1 inside ``mask`` and up to ``margin_mm`` from it, falling
    linearly to 0 over the next ``edge_mm`` (distances in mm, so thick slices are handled)."""
    out = np.zeros(mask.shape, np.float32)
    if not mask.any():
        return out
    # Only the mask's box, padded by the reach, needs distances.
    reach = np.ceil((margin_mm + edge_mm) / np.asarray(spacing, float)).astype(int) + 1
    idx = np.argwhere(mask)
    lo = np.maximum(idx.min(0) - reach, 0)
    hi = np.minimum(idx.max(0) + reach + 1, mask.shape)
    box = tuple(slice(int(a), int(b)) for a, b in zip(lo, hi, strict=True))
    dist = ndimage.distance_transform_edt(~mask[box], sampling=spacing)
    out[box] = np.clip((margin_mm + edge_mm - dist) / max(edge_mm, 1e-6), 0.0, 1.0)
    return out


def _box(points_vox: np.ndarray, shape: tuple[int, ...], pad: int = 2) -> tuple[slice, ...]:
    lo = np.clip(np.floor(points_vox.min(0)).astype(int) - pad, 0, None)
    hi = np.minimum(np.ceil(points_vox.max(0)).astype(int) + pad + 1, shape)
    if np.any(hi <= lo):
        raise InvalidVolumeError("the carved region falls outside the recipient scan.")
    return tuple(slice(int(a), int(b)) for a, b in zip(lo, hi, strict=True))


def choose_placement(
    donor_mask: np.ndarray,
    donor: Volume,
    donor_std: StandardSpace,
    kind: str,
    rng: np.random.Generator,
    max_shift_mm: float = 10.0,
) -> Placement:
    """A :class:`Placement` of ``kind``; a shift is drawn (up to ``max_shift_mm``) until the
    lesion's template centroid lands where the template's white-matter prior is at least 0.5
    (falling back to no shift after 50 draws)."""
    if kind != "shifted":
        return Placement(kind)
    tpl = load_template()
    centre = _apply(
        donor_std.registration.native_to_template,
        _world(donor.affine, np.argwhere(donor_mask > 0).mean(0)),
    )
    inv = np.linalg.inv(tpl.affine)
    for _ in range(50):
        shift = rng.uniform(-max_shift_mm, max_shift_mm, 3)
        v = np.round(_apply(inv, centre + shift)).astype(int)
        if np.all(v >= 0) and np.all(v < tpl.wm.shape) and tpl.wm[tuple(v)] >= 0.5:
            return Placement("shifted", tuple(round(float(s), 2) for s in shift))
    return Placement("shifted")


def carve_tumour(
    recipient: Volume,
    recipient_std: StandardSpace,
    recipient_levels: TissueLevels,
    donor: Volume,
    donor_std: StandardSpace,
    donor_levels: TissueLevels,
    donor_mask: np.ndarray,
    placement: Placement,
    margin_mm: float,
    edge_mm: float,
    rng: np.random.Generator,
) -> Carved:
    """The recipient scan with the donor's tumour carved in (see the module docstring).

    Args:
        recipient, recipient_std: the healthy scan and its standard space.
        recipient_levels: its tissue levels (:func:`tumortrace.cohort.tissue_levels`).
        donor, donor_std: the tumour scan and its standard space.
        donor_levels: its tissue levels.
        donor_mask: ``(X, Y, Z)`` uint8 on the donor grid, 1 tumour, 2 oedema.
        placement: where the tumour goes.
        margin_mm: healthy-looking tissue carried around the mask (mm).
        edge_mm: width of the soft edge (mm).
        rng: noise.

    Raises:
        InvalidVolumeError: a registration failed, or no tumour voxel lands in the recipient brain.
    """
    for vol, std in ((recipient, recipient_std), (donor, donor_std)):
        if not std.registration.ok or not std.brain.any():
            raise InvalidVolumeError(f"{vol.source}: not registered; cannot carve.")
    lesion = donor_mask > 0
    if not lesion.any():
        raise InvalidVolumeError(f"{donor.source}: the lesion mask is empty.")
    brain_soft_d = ndimage.gaussian_filter(donor_std.brain.astype(np.float32), 1.0)
    weight = soft_region(lesion, donor.spacing, margin_mm, edge_mm) * brain_soft_d
    # Recipient voxel -> donor voxel, through both registrations and the placement.
    donor_to_recipient = (
        np.linalg.inv(recipient.affine)
        @ recipient_std.registration.template_to_native
        @ placement.matrix()
        @ donor_std.registration.native_to_template
        @ donor.affine
    )
    corners = np.argwhere(weight > 0)
    box = _box(_apply(donor_to_recipient, corners.astype(np.float64)), recipient.data.shape)
    grid = np.stack(
        np.meshgrid(*(np.arange(s.start, s.stop) for s in box), indexing="ij"), -1
    ).astype(np.float64)
    src = np.moveaxis(_apply(np.linalg.inv(donor_to_recipient), grid), -1, 0)
    image = ndimage.map_coordinates(donor.data, src, order=1, mode="nearest")
    w = ndimage.map_coordinates(weight, src, order=1, cval=0.0)
    labels = ndimage.map_coordinates(donor_mask.astype(np.float32), src, order=0, cval=0.0)
    brain_r = recipient_std.brain[box]
    alpha = w * ndimage.gaussian_filter(recipient_std.brain.astype(np.float32), 1.0)[box]
    alpha = np.clip(alpha, 0.0, 1.0).astype(np.float32)
    scale = recipient_levels.wm / donor_levels.wm
    value = image * scale
    # Top up the fine-scale noise where the donor (resampled, or quieter) is smoother.
    missing = max(recipient_levels.noise**2 - (donor_levels.noise * scale) ** 2, 0.0) ** 0.5
    value = value + missing * rng.standard_normal(value.shape).astype(np.float32)
    out = recipient.data.astype(np.float32, copy=True)
    region = out[box]
    out[box] = np.where(brain_r, np.maximum((1 - alpha) * region + alpha * value, 0.0), region)
    mask = np.zeros(recipient.data.shape, np.uint8)
    mask[box] = np.where(brain_r & (alpha >= 0.5), np.rint(labels), 0).astype(np.uint8)
    if not mask.any():
        raise InvalidVolumeError(
            f"{donor.source} -> {recipient.source}: the {placement.kind} tumour misses the brain."
        )
    voxel_ml = float(np.prod(recipient.spacing)) / 1000.0
    donor_ml = float(lesion.sum()) * float(np.prod(donor.spacing)) / 1000.0
    meta = {
        "placement": placement.kind,
        "shift_mm": list(placement.shift_mm),
        "margin_mm": round(float(margin_mm), 2),
        "edge_mm": round(float(edge_mm), 2),
        "intensity_scale": round(float(scale), 5),
        "noise_added": round(float(missing), 5),
        "donor_lesion_ml": round(donor_ml, 3),
        "lesion_ml": round(float((mask > 0).sum()) * voxel_ml, 3),
        "centre_mm": [
            round(float(v), 2) for v in _world(recipient.affine, np.argwhere(mask > 0).mean(0))
        ],
    }
    return Carved(data=out, mask=mask, meta=meta)


def fill_from_mirror(
    volume: Volume,
    std: StandardSpace,
    mask: np.ndarray,
    margin_mm: float,
    edge_mm: float,
    *,
    max_lesion_share: float = MIRROR_LESION_SHARE,
    min_brain_share: float = MIRROR_BRAIN_SHARE,
) -> Filled | None:
    """The scan with its lesion region filled from the other hemisphere, or None where that is not
    possible: the lesion is not in one hemisphere (more than ``max_lesion_share`` of the region's
    voxels mirror onto the lesion), or the mirror of the region's brain leaves the brain (less
    than ``min_brain_share`` of it lands inside).

    Args:
        volume: the tumour scan.
        std: its standard space.
        mask: ``(X, Y, Z)`` lesion mask on its grid (any value > 0 is lesion).
        margin_mm, edge_mm: the region is the lesion plus ``margin_mm``, with a soft edge.
        max_lesion_share: see above (the share found is in the meta, ``mirror_lesion_share``).
        min_brain_share: see above (``mirror_brain_share`` in the meta).
    """
    lesion = mask > 0
    if not lesion.any() or not std.registration.ok or not std.brain.any():
        return None
    weight = soft_region(lesion, volume.spacing, margin_mm, edge_mm)
    idx = np.argwhere(weight > 0)
    native_mirror = (
        np.linalg.inv(volume.affine)
        @ std.registration.template_to_native
        @ MIRROR
        @ std.registration.native_to_template
        @ volume.affine
    )
    src = _apply(native_mirror, idx.astype(np.float64)).T
    # The mirror must be healthy brain: not the lesion, and inside the brain where the region is.
    lesion_there = ndimage.map_coordinates(lesion.astype(np.float32), src, order=1, cval=0.0)
    brain = std.brain.astype(np.float32)
    brain_there = ndimage.map_coordinates(brain, src, order=1, cval=0.0)
    w = weight[tuple(idx.T)]
    brain_here = w * brain[tuple(idx.T)]
    lesion_share = float(np.mean(lesion_there > 0.5))
    brain_share = float((brain_here * brain_there).sum() / max(float(brain_here.sum()), 1e-6))
    if lesion_share > max_lesion_share or brain_share < min_brain_share:
        return None
    mirrored = ndimage.map_coordinates(volume.data, src, order=1, mode="nearest")
    out = volume.data.astype(np.float32, copy=True)
    here = tuple(idx.T)
    out[here] = (1 - w) * out[here] + w * mirrored
    voxel_ml = float(np.prod(volume.spacing)) / 1000.0
    meta = {
        "margin_mm": round(float(margin_mm), 2),
        "edge_mm": round(float(edge_mm), 2),
        "lesion_ml": round(float(lesion.sum()) * voxel_ml, 3),
        "filled_ml": round(float(w.sum()) * voxel_ml, 3),
        "mirror_lesion_share": round(lesion_share, 4),
        "mirror_brain_share": round(brain_share, 4),
    }
    return Filled(data=out, weight=weight, meta=meta)
