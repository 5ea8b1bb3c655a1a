"""Procedural brain MRI phantoms: healthy, LGG and HGG T1-contrast volumes with known lesion masks.

Anatomy is the MNI152 2009a T1 template (with its GM/WM maps) that ships inside the nilearn wheel,
warped per subject by a random affine and a smooth elastic field and sampled onto the field of view
and voxel size of a preset (``"brats"``: 240x240x155 at 1 mm; ``"ixi"``: 256x256x150 at
0.94x0.94x1.2 mm; ``"small"``: 64x76x64 at 2.5 mm for tests and CPU training).

Every *global* property (grid, storage orientation, skull or not, bias field, noise, gamma,
intensity scaling, dtype) is drawn from one random stream that never sees the label, so all three
classes share one distribution and a network can only succeed by finding the lesion:

* **LGG**: diffuse, T1-hypointense, non-enhancing lesion with ill-defined margins and little mass
  effect; atypical cases (about 20%) carry faint patchy enhancement.
* **HGG**: enhancing ring around a necrotic core, surrounding T1-hypointense oedema and mass effect
  that pushes the anatomy outward; atypical cases (about 20%) are small, solid and enhancing.

Lesion shapes are irregular (a noise-perturbed radial field, not spheres), centred in white or deep
grey matter, and the size ranges of both grades overlap. The lesion mask is saved beside each
volume (``1`` = tumour, ``2`` = oedema; ``0`` = none) so Grad-CAM can be checked against it.

Speed: the whole warp (affine + elastic + mass effect) is built on a coarse grid, upsampled once and
applied with one ``grid_sample``; about a second per BraTS-size volume on two cores.
"""

from __future__ import annotations

import gzip
import io
import json
import os
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageDraw
from scipy import ndimage
from tqdm.auto import tqdm

from tumortrace.config import CLASSES
from tumortrace.errors import ConfigError
from tumortrace.manifest import Case, write_manifest

__all__ = ["SIZES", "Phantom", "make_phantom", "write_cohort"]


@dataclass(frozen=True)
class SizePreset:
    """Field of view of one preset: grid ``shape`` (x, y, z) at ``spacing`` mm."""

    shape: tuple[int, int, int]
    spacing: tuple[float, float, float]
    p_skull: float
    """Probability that the volume keeps skull and scalp (else skull-stripped)."""
    orientations: tuple[tuple[str, str, str], ...]
    blur_mm: float
    """Anti-aliasing of the 1 mm template before sampling a coarser grid."""


PRESETS: dict[str, SizePreset] = {
    "brats": SizePreset(
        (240, 240, 155), (1.0, 1.0, 1.0), 0.15, (("L", "P", "S"), ("R", "A", "S")), 0.0
    ),
    "ixi": SizePreset(
        (256, 256, 150),
        (0.9375, 0.9375, 1.2),
        0.9,
        (("P", "S", "R"), ("R", "A", "S"), ("L", "A", "S")),
        0.0,
    ),
    "small": SizePreset(
        (64, 76, 64),
        (2.5, 2.5, 2.5),
        0.5,
        (("L", "P", "S"), ("R", "A", "S"), ("L", "A", "S")),
        1.0,
    ),
}
SIZES: tuple[str, ...] = tuple(PRESETS)

_COARSE = 4
"""The warp is built on a grid this many output voxels apart, then upsampled trilinearly."""


@dataclass(frozen=True)
class Phantom:
    """One synthetic subject.

    Attributes:
        data: ``(X, Y, Z)`` float32 or int16-valued float32 intensities as a scanner would store
            them, in the storage orientation of ``affine`` (RAS, LPS, LAS or PSR).
        affine: ``(4, 4)`` voxel -> world (RAS mm).
        lesion: ``(X, Y, Z)`` uint8 on the same grid: 0 none, 1 tumour, 2 oedema (all 0 if healthy).
        label: one of :data:`CLASSES`.
        meta: lesion volume (ml), centre (world mm), radius, atypical flag, global draws.
        dtype: the on-disk dtype (``"int16"`` or ``"float32"``).
    """

    data: np.ndarray
    affine: np.ndarray
    lesion: np.ndarray
    label: str
    meta: dict[str, Any] = field(default_factory=dict)
    dtype: str = "float32"


@dataclass(frozen=True)
class _Template:
    t1_head: np.ndarray  # (X, Y, Z) float32, WM ~ 1.0, with skull and scalp
    t1_brain: np.ndarray  # skull-stripped
    brain: np.ndarray  # (X, Y, Z) bool
    wm: np.ndarray  # (X, Y, Z) float32 in [0, 1]
    affine: np.ndarray  # template voxel -> MNI mm
    centre_mm: np.ndarray  # (3,) brain centre
    seeds: np.ndarray  # (K, 3) template voxel indices where a lesion may be centred
    seed_depth: np.ndarray  # (K,) distance (mm) from each candidate to the brain surface


def _template_dir() -> Path:
    import nilearn

    return Path(nilearn.__file__).parent / "datasets" / "data"


@lru_cache(maxsize=1)
def _template() -> _Template:
    """Loads the MNI152 2009a T1/GM/WM maps shipped in nilearn (cached in-process)."""
    d = _template_dir()

    def load(kind: str) -> tuple[np.ndarray, np.ndarray]:
        img = nib.load(d / f"mni_icbm152_{kind}_tal_nlin_sym_09a_converted.nii.gz")
        return np.asarray(img.dataobj, dtype=np.float32), img.affine

    t1, affine = load("t1")
    gm, _ = load("gm")
    wm, _ = load("wm")
    gm, wm = gm / 255.0, wm / 255.0
    brain = ndimage.binary_closing((gm + wm) > 0.3, iterations=2)
    brain = ndimage.binary_fill_holes(brain)
    wm_level = float(np.median(t1[wm > 0.9]))
    t1 = t1 / wm_level
    dist = ndimage.distance_transform_edt(brain)
    # Lesions grow from white matter or deep grey matter, at least 12 mm inside the brain.
    ok = (dist > 12) & ((wm > 0.6) | ((gm > 0.6) & (dist > 25)))
    seeds = np.argwhere(ok)[::7]
    centre = affine[:3, :3] @ np.argwhere(brain).mean(0) + affine[:3, 3]
    return _Template(
        t1_head=_with_head(t1, brain),
        t1_brain=np.where(brain, t1, 0.0).astype(np.float32),
        brain=brain,
        wm=wm,
        affine=affine,
        centre_mm=centre,
        seeds=seeds,
        seed_depth=dist[tuple(seeds.T)],
    )


# (outer distance from the brain surface in mm, T1 level relative to white matter)
_HEAD_LAYERS = ((2.5, 0.12), (4.0, 0.05), (6.5, 0.55), (8.0, 0.05), (11.5, 1.05), (13.0, 0.45))
"""CSF, inner table, diploe (marrow), outer table, scalp fat, skin: a T1 head around the brain."""


def _with_head(t1: np.ndarray, brain: np.ndarray) -> np.ndarray:
    """Adds CSF, skull and scalp shells around the (brain-extracted) template."""
    outer = ndimage.distance_transform_edt(~brain)
    smooth = ndimage.gaussian_filter(outer, 2.0)  # rounder shells than the gyral surface
    head = t1.copy()
    inner = 0.0
    for depth, level in _HEAD_LAYERS:
        head[(smooth > inner) & (smooth <= depth) & ~brain] = level
        inner = depth
    return ndimage.gaussian_filter(head, 0.6).astype(np.float32)


@lru_cache(maxsize=4)
def _blurred(kind: str, blur_mm: float) -> np.ndarray:
    t = _template()
    src = t.t1_head if kind == "head" else t.t1_brain
    return ndimage.gaussian_filter(src, blur_mm) if blur_mm > 0 else src


# ----------------------------------------------------------------------------- geometry


def _rotation(rng: np.random.Generator, max_deg: float) -> np.ndarray:
    a, b, c = np.deg2rad(rng.uniform(-max_deg, max_deg, 3))
    rx = np.array([[1, 0, 0], [0, np.cos(a), -np.sin(a)], [0, np.sin(a), np.cos(a)]])
    ry = np.array([[np.cos(b), 0, np.sin(b)], [0, 1, 0], [-np.sin(b), 0, np.cos(b)]])
    rz = np.array([[np.cos(c), -np.sin(c), 0], [np.sin(c), np.cos(c), 0], [0, 0, 1]])
    return rz @ ry @ rx


def _output_affine(
    preset: SizePreset, codes: tuple[str, str, str], centre_mm: np.ndarray
) -> np.ndarray:
    """Voxel -> world affine of a grid stored in ``codes`` order, centred on ``centre_mm``.

    The preset's shape and spacing are given in RAS (x, y, z) terms; a permuted storage order
    (e.g. PSR) permutes them with the axes.
    """
    ras_axis = {"L": 0, "R": 0, "P": 1, "A": 1, "I": 2, "S": 2}
    sign = {"L": -1.0, "R": 1.0, "P": -1.0, "A": 1.0, "I": -1.0, "S": 1.0}
    shape = tuple(preset.shape[ras_axis[c]] for c in codes)
    m = np.zeros((4, 4))
    for i, c in enumerate(codes):
        m[ras_axis[c], i] = sign[c] * preset.spacing[ras_axis[c]]
    m[3, 3] = 1.0
    half = (np.array(shape) - 1) / 2.0
    m[:3, 3] = centre_mm - m[:3, :3] @ half
    return m, shape


def _smooth_noise(rng: np.random.Generator, shape: tuple[int, ...], sigma: float) -> np.ndarray:
    """Unit-variance Gaussian noise smoothed with ``sigma`` voxels.

    Wide kernels are applied on a grid ``f = sigma // 2`` times coarser and upsampled, which looks
    the same and is many times faster.
    """
    f = max(1, int(sigma // 2))
    small = tuple(max(2, -(-n // f)) for n in shape)
    n = ndimage.gaussian_filter(rng.standard_normal(small).astype(np.float32), sigma / f)
    if f > 1:
        t = torch.from_numpy(n)[None, None]
        n = F.interpolate(t, size=shape, mode="trilinear", align_corners=True)[0, 0].numpy()
    return n / (n.std() + 1e-6)


# ----------------------------------------------------------------------------- lesions


@dataclass(frozen=True)
class _Lesion:
    centre_vox: np.ndarray  # template voxel (x, y, z)
    radius: float  # mm, tumour
    mass_effect: float  # fraction of radius
    atypical: bool
    kind: str


def _draw_lesion(label: str, rng: np.random.Generator) -> _Lesion:
    t = _template()
    atypical = rng.random() < 0.2
    if label == "lgg":
        radius = rng.uniform(9.0, 26.0)
        mass = rng.uniform(0.0, 0.08)
    else:
        radius = rng.uniform(5.0, 11.0) if atypical else rng.uniform(9.0, 26.0)
        mass = rng.uniform(0.1, 0.2) if atypical else rng.uniform(0.2, 0.38)
    deep = np.flatnonzero(t.seed_depth > min(radius * 0.8, 30.0))
    pick = (
        t.seeds[deep[rng.integers(len(deep))]] if len(deep) else t.seeds[rng.integers(len(t.seeds))]
    )
    return _Lesion(pick.astype(np.float64), float(radius), float(mass), bool(atypical), label)


def _paint(
    t1: np.ndarray, lesion: _Lesion, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray, tuple[slice, ...]]:
    """Paints the lesion into ``t1`` (a copy of the template) in place, in template space.

    Returns:
        tumour and any-lesion soft memberships ``(bx, by, bz)`` float32 on the box, and the box.
    """
    t = _template()
    r = lesion.radius
    reach = int(np.ceil(r * 1.4 + 30))
    c = np.round(lesion.centre_vox).astype(int)
    box = tuple(
        slice(max(ci - reach, 0), min(ci + reach + 1, n)) for ci, n in zip(c, t1.shape, strict=True)
    )
    grids = np.meshgrid(*[np.arange(s.start, s.stop, dtype=np.float32) for s in box], indexing="ij")
    d = np.sqrt(sum((g - ci) ** 2 for g, ci in zip(grids, lesion.centre_vox, strict=True)))
    shape = d.shape
    brain = ndimage.gaussian_filter(t.brain[box].astype(np.float32), 1.0)
    # Irregular outline: the radial field is perturbed by smooth noise of about a third of a radius.
    bumpy = d / r - 0.38 * _smooth_noise(rng, shape, max(r / 3.5, 2.0))
    wm_mean = 1.0
    region = t1[box]
    if lesion.kind == "lgg":
        margin = rng.uniform(0.15, 0.3)  # ill-defined: a wide soft edge, in radius units
        m = 1.0 / (1.0 + np.exp((bumpy - 1.0) / margin)) * brain
        level = rng.uniform(0.45, 0.66) * wm_mean
        texture = 1.0 + 0.06 * _smooth_noise(rng, shape, 1.5)
        region[:] = region * (1 - m) + m * level * texture
        if lesion.atypical:  # faint patchy enhancement
            patch = np.clip(_smooth_noise(rng, shape, 2.0) - 0.8, 0, None) * (m > 0.6)
            region += rng.uniform(0.12, 0.25) * patch
        tumour = m
        anything = m
    else:
        rim_w = 0.06
        core = 1.0 / (1.0 + np.exp((bumpy - 1.0) / rim_w)) * brain
        oedema_r = r + rng.uniform(5.0, 20.0)  # mm beyond the tumour
        bumpy_e = d / oedema_r - 0.3 * _smooth_noise(rng, shape, max(r / 2.5, 2.0))
        oed = 1.0 / (1.0 + np.exp((bumpy_e - 1.0) / 0.12)) * brain
        region[:] = region * (1 - oed * rng.uniform(0.18, 0.3))
        enh = rng.uniform(1.35, 1.8) * wm_mean
        if lesion.atypical:  # small solid enhancing tumour, no necrosis
            inside = enh * (1.0 + 0.05 * _smooth_noise(rng, shape, 1.0))
        else:
            thick = rng.uniform(2.0, 5.0) / r
            necrotic = 1.0 / (1.0 + np.exp((bumpy - (1.0 - thick)) / rim_w))
            necro_level = rng.uniform(0.3, 0.5) * wm_mean
            inside = enh * (1 - necrotic) + necro_level * necrotic
        region[:] = region * (1 - core) + core * inside
        tumour = core
        anything = np.maximum(core, oed)
    return tumour.astype(np.float32), anything.astype(np.float32), box


def _mass_effect(coords: np.ndarray, lesion: _Lesion, t_affine: np.ndarray) -> np.ndarray:
    """Radially pulls sampling positions toward the lesion: the anatomy looks pushed outward.

    Args:
        coords: ``(3, ...)`` template voxel coordinates (1 mm grid).

    The map r -> r (1 - a exp(-(r / 2R)^2)) is monotone for a < 1, so nothing folds.
    """
    if lesion.mass_effect <= 0:
        return coords
    c = lesion.centre_vox.reshape(3, *([1] * (coords.ndim - 1)))
    diff = coords - c
    r2 = (diff**2).sum(0)
    s = 1.0 - lesion.mass_effect * np.exp(-r2 / (2.0 * lesion.radius) ** 2)
    return c + diff * s


# ----------------------------------------------------------------------------- phantom


def _check(label: str, size: str) -> SizePreset:
    if label not in CLASSES:
        raise ConfigError(f"Unknown label {label!r}; expected one of {list(CLASSES)}.")
    if size not in PRESETS:
        raise ConfigError(f"Unknown size preset {size!r}; expected one of {list(SIZES)}.")
    return PRESETS[size]


def make_phantom(label: str, seed: int, size: str = "small") -> Phantom:
    """Generates one subject; the same ``(label, seed, size)`` always gives the same arrays.

    Global properties come from ``default_rng([seed, 0])`` and never depend on ``label``; the lesion
    from ``default_rng([seed, 1])``.

    Args:
        label: ``"healthy"``, ``"lgg"`` or ``"hgg"``.
        seed: non-negative integer.
        size: one of :data:`SIZES`.

    Returns:
        a :class:`Phantom` with ``data``/``lesion`` of the preset's shape (permuted by the drawn
        storage orientation).
    """
    preset = _check(label, size)
    t = _template()
    g = np.random.default_rng([seed, 0])  # global stream: identical for every class
    lz = np.random.default_rng([seed, 1])  # lesion stream
    # --- global draws (fixed order; never label-dependent)
    codes = preset.orientations[g.integers(len(preset.orientations))]
    skull = bool(g.random() < preset.p_skull)
    rot = _rotation(g, 8.0)
    scale = g.uniform(0.92, 1.08, 3)
    shift = g.uniform(-6.0, 6.0, 3)
    fov_shift = g.uniform(-5.0, 5.0, 3)
    elastic_mm = g.uniform(1.0, 3.0)
    elastic_seed = int(g.integers(2**31))
    bias_amp = g.uniform(0.05, 0.25)
    bias_seed = int(g.integers(2**31))
    gamma = g.uniform(0.8, 1.25)
    noise = g.uniform(0.01, 0.04)
    scanner_max = g.uniform(300.0, 4000.0)
    as_int16 = bool(g.random() < 0.6)
    noise_seed = int(g.integers(2**31))

    out_affine, shape = _output_affine(preset, codes, t.centre_mm + fov_shift)
    # --- warp on a coarse grid of output voxels (every _COARSE-th voxel, possibly past the edge):
    #     output world -> subject space -> template voxel, plus elastic and mass-effect fields.
    kmax = [int(np.ceil((n - 1) / _COARSE)) for n in shape]
    vox = np.stack(np.meshgrid(*[np.arange(k + 1) * float(_COARSE) for k in kmax], indexing="ij"))
    world = np.tensordot(out_affine[:3, :3], vox, 1) + out_affine[:3, 3].reshape(3, 1, 1, 1)
    rel = world - (t.centre_mm + shift).reshape(3, 1, 1, 1)
    src_mm = np.tensordot(rot @ np.diag(scale), rel, 1) + t.centre_mm.reshape(3, 1, 1, 1)
    er = np.random.default_rng(elastic_seed)
    sig = 24.0 / (_COARSE * float(np.mean(preset.spacing)))  # displacement correlation ~24 mm
    src_mm = src_mm + elastic_mm * np.stack(
        [_smooth_noise(er, vox.shape[1:], sig) for _ in range(3)]
    )
    inv_t = np.linalg.inv(t.affine)
    src_vox = np.tensordot(inv_t[:3, :3], src_mm, 1) + inv_t[:3, 3].reshape(3, 1, 1, 1)
    bias = 1.0 + bias_amp * _smooth_noise(
        np.random.default_rng(bias_seed),
        vox.shape[1:],
        64.0 / (_COARSE * float(np.mean(preset.spacing))),
    )

    base = _blurred("head" if skull else "brain", preset.blur_mm)
    lesion = None
    tmpl = base
    if label != "healthy":
        lesion = _draw_lesion(label, lz)
        src_vox = _mass_effect(src_vox, lesion, t.affine)
        tmpl = base.copy()
        tumour_box, anything_box, box = _paint(tmpl, lesion, lz)

    # Only the part of the field of view that sees the head is upsampled and sampled.
    head = ndimage.map_coordinates((base > 0.02).astype(np.float32), src_vox, order=1) > 0
    block = _coarse_block(head, shape)
    img_block, grid = _warp(tmpl, src_vox, bias, block)
    img = torch.zeros(shape, dtype=torch.float32)
    img[block.full] = img_block

    lesion_mask = np.zeros(shape, np.uint8)
    meta: dict[str, Any] = {
        "label": label,
        "size": size,
        "orientation": "".join(codes),
        "skull": skull,
        "dtype": "int16" if as_int16 else "float32",
    }
    if lesion is not None:
        lo = np.array([s.start for s in box], dtype=np.float64).reshape(3, 1, 1, 1)
        hi = np.array([s.stop - 1 for s in box], dtype=np.float64).reshape(3, 1, 1, 1)
        in_box = np.all((src_vox >= lo - 2) & (src_vox <= hi + 2), axis=0)
        if in_box.any():
            sub = _coarse_block(in_box, shape).clip_to(block)
            lesion_mask[sub.full] = _sample_lesion(
                tumour_box, anything_box, box, grid[(slice(None), *sub.within(block))], base.shape
            )
        vox_ml = float(abs(np.linalg.det(out_affine[:3, :3]))) / 1000.0
        centre_world = t.affine[:3, :3] @ lesion.centre_vox + t.affine[:3, 3]
        meta.update(
            lesion_ml=round(float((lesion_mask > 0).sum()) * vox_ml, 2),
            tumour_ml=round(float((lesion_mask == 1).sum()) * vox_ml, 2),
            radius_mm=round(lesion.radius, 2),
            mass_effect=round(lesion.mass_effect, 3),
            atypical=lesion.atypical,
            centre_template_mm=[round(float(v), 1) for v in centre_world],
        )

    # --- scanner effects: gamma, Rician noise (also in the background), scaling
    gen = torch.Generator().manual_seed(noise_seed)
    img = (img.clamp_(min=0) / 2.0).pow_(gamma).mul_(2.0)
    n1 = torch.randn(shape, generator=gen).mul_(noise)
    n2 = torch.randn(shape, generator=gen).mul_(noise)
    outside = img <= 0 if not skull else None
    img = torch.sqrt((img + n1).square_() + n2.square_()).mul_(scanner_max / 2.0)
    if outside is not None:  # skull-stripped scans (BraTS) store an exact zero background
        img[outside] = 0.0
    if as_int16:
        img = img.round_().clamp_(0, 32767)
    return Phantom(
        data=img.numpy(),
        affine=out_affine,
        lesion=lesion_mask,
        label=label,
        meta=meta,
        dtype="int16" if as_int16 else "float32",
    )


@dataclass(frozen=True)
class _Block:
    """A block of the output grid given by coarse indices ``lo..hi`` (inclusive)."""

    lo: tuple[int, int, int]
    hi: tuple[int, int, int]
    shape: tuple[int, int, int]  # full output grid

    @property
    def full(self) -> tuple[slice, slice, slice]:
        """Full-resolution voxel slices of the block (clipped to the grid)."""
        return tuple(
            slice(a * _COARSE, min(b * _COARSE + 1, n))
            for a, b, n in zip(self.lo, self.hi, self.shape, strict=True)
        )

    def clip_to(self, outer: _Block) -> _Block:
        """This block intersected with ``outer``."""
        lo = tuple(max(a, b) for a, b in zip(self.lo, outer.lo, strict=True))
        hi = tuple(max(min(a, b), c) for a, b, c in zip(self.hi, outer.hi, lo, strict=True))
        return _Block(lo, hi, self.shape)

    def within(self, outer: _Block) -> tuple[slice, slice, slice]:
        """Slices of this block inside the full-resolution array of ``outer``."""
        return tuple(
            slice(s.start - o.start, s.stop - o.start)
            for s, o in zip(self.full, outer.full, strict=True)
        )


def _coarse_block(mask: np.ndarray, shape: tuple[int, int, int]) -> _Block:
    """Bounding block (one coarse cell of margin) of ``mask`` on the coarse grid."""
    idx = np.argwhere(mask)
    if len(idx) == 0:
        idx = np.zeros((1, 3), int)
    lo = np.maximum(idx.min(0) - 1, 0)
    hi = np.minimum(idx.max(0) + 1, np.array(mask.shape) - 1)
    return _Block(tuple(int(v) for v in lo), tuple(int(v) for v in hi), shape)


def _warp(
    tmpl: np.ndarray, src_vox: np.ndarray, bias: np.ndarray, block: _Block
) -> tuple[torch.Tensor, torch.Tensor]:
    """Upsamples the coarse field over ``block`` and samples the template through it.

    Returns:
        the biased image on the block ``(bx, by, bz)`` and the sampling grid
        ``(1, bx, by, bz, 3)`` (normalised template coordinates in grid_sample's (z, y, x) order).
    """
    c = tuple(slice(a, b + 1) for a, b in zip(block.lo, block.hi, strict=True))
    n = np.array(tmpl.shape, dtype=np.float64).reshape(3, 1, 1, 1) - 1
    norm = src_vox[(slice(None), *c)] / n * 2 - 1
    chans = np.concatenate([norm[::-1], bias[c][None]]).astype(np.float32)
    size = tuple((b - a) * _COARSE + 1 for a, b in zip(block.lo, block.hi, strict=True))
    up = F.interpolate(
        torch.from_numpy(chans)[None], size=size, mode="trilinear", align_corners=True
    )
    full = block.full
    up = up[(slice(None), slice(None), *(slice(0, s.stop - s.start) for s in full))]
    grid = up[:, :3].permute(0, 2, 3, 4, 1)
    img = F.grid_sample(
        torch.from_numpy(tmpl)[None, None],
        grid,
        mode="bilinear",
        padding_mode="zeros",
        align_corners=True,
    )[0, 0]
    return img.mul_(up[0, 3]), grid


def _sample_lesion(
    tumour: np.ndarray, anything: np.ndarray, box: tuple[slice, ...], grid: torch.Tensor, tshape
) -> np.ndarray:
    """Warps template-space lesion memberships (on ``box``) through the image's own sampling grid.

    Args:
        grid: ``(1, X', Y', Z', 3)`` normalised template coordinates of the output voxels to label.

    Returns:
        ``(X', Y', Z')`` uint8 labels: 1 tumour, 2 oedema, 0 none.
    """
    lo = torch.tensor([s.start for s in box], dtype=torch.float32)
    hi = torch.tensor([s.stop - 1 for s in box], dtype=torch.float32)
    n = torch.tensor(tshape, dtype=torch.float32) - 1
    # Re-express the (z, y, x) template coordinates in the box's own normalised frame.
    order = [2, 1, 0]
    tv = (grid + 1) / 2 * n[order] - lo[order]
    sub = tv / torch.clamp(hi - lo, min=1.0)[order] * 2 - 1
    stack = torch.from_numpy(np.stack([tumour, anything]))[None]
    vals = F.grid_sample(stack, sub, mode="bilinear", padding_mode="zeros", align_corners=True)[0]
    labels = torch.where(vals[0] >= 0.5, 1, torch.where(vals[1] >= 0.5, 2, 0))
    return labels.to(torch.uint8).numpy()


# ----------------------------------------------------------------------------- cohort


def _write_nifti_fast(array: np.ndarray, affine: np.ndarray, path: Path, dtype: str) -> None:
    """Writes ``.nii.gz`` with gzip level 1 (nibabel's default level is several times slower)."""
    img = nib.Nifti1Image(array.astype(dtype), affine)
    img.set_qform(affine, code=1)
    img.set_sform(affine, code=1)
    buf = io.BytesIO()
    file_map = nib.Nifti1Image.make_file_map({"image": buf, "header": buf})
    img.to_file_map(file_map)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".synth-", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(gzip.compress(buf.getvalue(), compresslevel=1))
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def _mid_slice(ph: Phantom) -> np.ndarray:
    """Axial slice (canonical RAS, anterior up) through the lesion centre, or the middle."""
    img = nib.as_closest_canonical(nib.Nifti1Image(ph.data, ph.affine))
    les = nib.as_closest_canonical(nib.Nifti1Image(ph.lesion, ph.affine))
    data = np.asarray(img.dataobj)
    mask = np.asarray(les.dataobj)
    z = int(ndimage.center_of_mass(mask > 0)[2]) if mask.any() else data.shape[2] // 2
    sl = data[:, :, z]
    lo, hi = np.percentile(sl, [1, 99.5])
    sl = np.clip((sl - lo) / max(hi - lo, 1e-6), 0, 1)
    return (np.rot90(sl) * 255).astype(np.uint8)  # anterior at the top, patient left on the left


def _montage(rows: dict[str, list[np.ndarray]], path: Path, tile: int = 160) -> None:
    """A PNG with one labelled row of mid axial slices per class."""
    n = max((len(v) for v in rows.values()), default=1)
    label_w = 70
    canvas = Image.new("L", (label_w + n * tile, len(rows) * tile), 0)
    draw = ImageDraw.Draw(canvas)
    for r, (cls, slices) in enumerate(rows.items()):
        draw.text((6, r * tile + tile // 2 - 6), cls.upper(), fill=255)
        for c, sl in enumerate(slices):
            im = Image.fromarray(sl).resize((tile, tile), Image.BILINEAR)
            canvas.paste(im, (label_w + c * tile, r * tile))
    canvas.save(path)


def write_cohort(
    out: str | Path,
    counts: Mapping[str, int],
    seed: int = 0,
    size: str = "small",
    progress: bool = True,
    montage_per_class: int = 6,
) -> list[Case]:
    """Writes a cohort: volumes, lesion masks, ``manifest.csv``, ``phantoms.json`` and a montage.

    Subject ``k`` of the cohort (counted over all classes) uses seed ``seed * 100_003 + k``, so
    its global properties do not depend on its class.

    Args:
        out: output folder (created).
        counts: cases per class, e.g. ``{"healthy": 20, "lgg": 20, "hgg": 20}``.
        seed: cohort seed.
        size: one of :data:`SIZES`.
        progress: show a tqdm bar.

    Returns:
        the cases written, in manifest order (source ``"synthetic"``).
    """
    out = Path(out)
    for cls, n in counts.items():
        _check(cls, size)
        if int(n) < 0:
            raise ConfigError(f"Count for {cls!r} must be >= 0, got {n}.")
    if sum(int(n) for n in counts.values()) == 0:
        raise ConfigError("write_cohort needs at least one case; all counts are 0.")
    out.mkdir(parents=True, exist_ok=True)
    jobs = [(cls, i) for cls in CLASSES for i in range(int(counts.get(cls, 0)))]
    cases: list[Case] = []
    metas: dict[str, Any] = {}
    rows: dict[str, list[np.ndarray]] = {c: [] for c in CLASSES if counts.get(c, 0)}
    for k, (cls, i) in enumerate(
        tqdm(jobs, desc=f"synth {size}", unit="vol", disable=not progress)
    ):
        ph = make_phantom(cls, seed * 100_003 + k, size)
        sid = f"syn-{cls}-{i:04d}"
        vol_path = out / f"{sid}.nii.gz"
        _write_nifti_fast(ph.data, ph.affine, vol_path, ph.dtype)
        _write_nifti_fast(ph.lesion, ph.affine, out / f"{sid}_lesion.nii.gz", "uint8")
        cases.append(Case(sid, vol_path, cls, "synthetic"))
        metas[sid] = ph.meta
        if len(rows[cls]) < montage_per_class:
            rows[cls].append(_mid_slice(ph))
    write_manifest(cases, out / "manifest.csv")
    (out / "phantoms.json").write_text(json.dumps(metas, indent=1))
    _montage(rows, out / "montage.png")
    return cases
