"""Procedural phantoms: healthy / LGG / HGG T1 brain volumes built on the MNI152 2009a template.

Each phantom is the MNI152 2009a T1 template (shipped inside the nilearn wheel, read with
nibabel, no network) warped per subject by a random affine and a smooth elastic field, optionally
wrapped in a synthetic skull and scalp, then given a bias field, Rician or Gaussian noise, a
gamma/contrast change, a scanner-like intensity scale, a storage dtype and a storage order
(RAS, LPS or LAS).

Only the pathology depends on the class: every global property is drawn
from a generator seeded by ``(seed, 0)`` alone, so the phantoms of the three classes made from the
same seed share their field of view, voxel size, orientation, deformation, noise and intensity
scaling, and a network can only tell them apart by finding the lesion.

The pathology is the lesion model of :mod:`tumortrace.lesion` (LGG, HGG and their atypical cases),
and the template is the padded head of :mod:`tumortrace.head_template`; the grid helpers are in
:mod:`tumortrace.phantom_grid`, and :mod:`tumortrace.phantom_cohort` writes a cohort of phantoms
to disk.

Speed: all geometry (affine, elastic, mass effect, bias field) is evaluated on a coarse grid
(~5 mm) and interpolated trilinearly, then each output voxel is sampled once with
:func:`torch.nn.functional.grid_sample`, restricted to the bounding box of the head.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import numpy as np
import torch
from scipy import ndimage as ndi

from tumortrace.config import CLASSES
from tumortrace.errors import ConfigError, TumorTraceError
from tumortrace.files import jsonable
from tumortrace.head_template import PaddedTemplate, padded_template
from tumortrace.lesion import LesionParams, draw_lesion, mass_effect, render_lesion
from tumortrace.phantom_grid import (
    coarse_axes,
    coarse_bbox,
    densify,
    fine_box,
    rotation_matrix,
    sample_volume,
    to_grid_coords,
    upsample,
)

SIZES: tuple[str, str, str] = ("brats", "ixi", "small")
"""Grid presets: BraTS (240x240x155 at 1 mm), IXI-like native (256x256x150), small (tests, CPU)."""

ORIENTATIONS: tuple[str, str, str] = ("RAS", "LPS", "LAS")
"""Storage orders a phantom may be written in (the first two axes are flipped as needed)."""

_FOV_CENTRE_MNI = np.array([0.0, -17.0, 12.0])  # centre of the head's field of view in MNI mm


@dataclass(frozen=True)
class Phantom:
    """One synthetic subject.

    Attributes:
        data: (X, Y, Z) float32 as stored (any of RAS/LPS/LAS), intensities as a scanner would give
            (integer-valued when ``meta["global"]["dtype"] == "int16"`` or raw float32, z-scored
            with a negative background when ``meta["global"]["zscore"]``).
        affine: (4, 4) float64 voxel -> world (RAS mm) of ``data`` as stored.
        lesion: (X, Y, Z) uint8 mask on the same grid; 1 = lesion (any part), all 0 for healthy.
        label: one of :data:`tumortrace.config.CLASSES`.
        meta: JSON-ready dict: ``label``, ``seed``, ``size``, ``global`` (every class-independent
            parameter), ``lesion`` (lesion parameters or None), ``lesion_volume_ml``,
            ``lesion_centre_voxel`` (stored grid), ``lesion_centre_mm`` (world), ``atypical``.
        parts: (X, Y, Z) uint8 lesion compartments: 0 none, 1 infiltration/oedema, 2 enhancing
            tissue, 3 necrosis. An addition to the spec, used by tests and Grad-CAM checks.
    """

    data: np.ndarray
    affine: np.ndarray
    lesion: np.ndarray
    label: str
    meta: dict
    parts: np.ndarray | None = field(default=None, repr=False)


@dataclass(frozen=True)
class _Preset:
    shape: tuple[int, int, int]
    spacing: tuple[float, float, float]
    p_skull: float  # probability that the skull and scalp are present
    step: int  # coarse grid step in voxels


_PRESETS: dict[str, _Preset] = {
    "brats": _Preset((240, 240, 155), (1.0, 1.0, 1.0), 0.15, 5),
    "ixi": _Preset((256, 256, 150), (0.9375, 0.9375, 1.2), 0.85, 5),
    "small": _Preset((64, 76, 64), (2.5, 2.5, 2.5), 0.5, 2),
}


@dataclass(frozen=True)
class _Global:
    """Every class-independent property of one subject (drawn from the seed alone)."""

    size: str
    shape: tuple[int, int, int]
    spacing: tuple[float, float, float]
    orientation: str
    rotation_deg: tuple[float, float, float]
    scale: tuple[float, float, float]
    translation_mm: tuple[float, float, float]
    fov_shift_mm: tuple[float, float, float]
    elastic_mm: float
    skull: bool
    gamma: float
    contrast: float
    bias: float
    noise: float
    wm_level: float
    dtype: str
    zscore: bool


def _draw_global(seed: int, size: str) -> tuple[_Global, np.random.Generator]:
    """Draws every class-independent parameter from ``(seed, 0)`` only.

    Returns the parameters and the generator (for the elastic and bias fields that follow).
    """
    rng = np.random.default_rng(np.random.SeedSequence([seed, 0]))
    p = _PRESETS[size]
    u = rng.uniform
    zscore = bool(u() < 0.15)
    g = _Global(
        size=size,
        shape=p.shape,
        spacing=p.spacing,
        orientation=ORIENTATIONS[int(rng.integers(len(ORIENTATIONS)))],
        rotation_deg=tuple(float(v) for v in u(-8.0, 8.0, 3)),
        scale=tuple(float(v) for v in u(0.9, 1.1, 3) * u(0.95, 1.05)),
        translation_mm=tuple(float(v) for v in u(-4.0, 4.0, 3)),
        fov_shift_mm=tuple(float(v) for v in u(-6.0, 6.0, 3)),
        elastic_mm=float(u(0.5, 3.0)),
        skull=bool(u() < p.p_skull),
        gamma=float(np.exp(u(np.log(0.75), np.log(1.33)))),
        contrast=float(u(-0.12, 0.12)),
        bias=float(u(0.02, 0.1)),
        noise=float(u(0.01, 0.05)),
        wm_level=float(np.exp(u(np.log(150.0), np.log(3000.0)))),
        dtype="float32" if zscore or u() < 0.4 else "int16",
        zscore=zscore,
    )
    return g, rng


def check_label(label: str) -> None:
    """Raises ConfigError unless ``label`` is one of :data:`tumortrace.config.CLASSES`."""
    if label not in CLASSES:
        raise ConfigError(f"Unknown phantom label {label!r}; expected one of {list(CLASSES)}.")


def check_size(size: str) -> None:
    """Raises ConfigError unless ``size`` is one of :data:`SIZES`."""
    if size not in SIZES:
        raise ConfigError(f"Unknown phantom size {size!r}; expected one of {list(SIZES)}.")


def make_phantom(label: str, seed: int, size: str = "small") -> Phantom:
    """Synthesises one subject.

    Args:
        label: ``"healthy"``, ``"lgg"`` or ``"hgg"``.
        seed: any non-negative int; the same (label, seed, size) gives byte-identical arrays, and
            phantoms of different labels with the same seed share every global property.
        size: one of :data:`SIZES`.

    Returns:
        A :class:`Phantom` whose ``data`` is (X, Y, Z) float32 on the preset's grid.

    Raises:
        ConfigError: unknown label or size, or a negative seed.
    """
    check_label(label)
    check_size(size)
    if not isinstance(seed, int | np.integer) or seed < 0:
        raise ConfigError(f"Phantom seed must be a non-negative int, got {seed!r}.")
    seed = int(seed)
    tpl = padded_template()
    g, grng = _draw_global(seed, size)
    les = draw_lesion(label, seed, tpl)
    step = _PRESETS[size].step
    out_affine, centre = _output_grid(g)
    q, p, coarse = _coarse_geometry(g, grng, les, tpl, out_affine, centre, step)
    obox, tissue, bias = _anatomy(g, tpl, p, coarse, step, f"{label}/{seed}")
    lesion_mask, parts = _insert_lesion(tissue, les, q, seed, tpl, step)
    data = _acquire(tissue, obox, bias, g, seed)
    affine, (data, lesion_mask, parts) = _storage_order(
        out_affine, g.orientation, data, lesion_mask, parts
    )
    meta = _meta(label, seed, size, g, les, lesion_mask, affine)
    return Phantom(
        data=data, affine=affine, lesion=lesion_mask, label=label, meta=meta, parts=parts
    )


def _output_grid(g: _Global) -> tuple[np.ndarray, np.ndarray]:
    """The output grid's affine (canonical RAS) around the jittered head centre, and that centre.

    Returns:
        ``(4, 4)`` affine of the ``g.shape`` grid at ``g.spacing``, and the centre ``(3,)`` in mm.
    """
    shape, spacing = g.shape, np.asarray(g.spacing)
    centre = _FOV_CENTRE_MNI + np.asarray(g.fov_shift_mm)
    out_affine = np.diag([*spacing, 1.0])
    out_affine[:3, 3] = centre - spacing * (np.asarray(shape) - 1) / 2.0
    return out_affine, centre


def _coarse_geometry(
    g: _Global,
    grng: np.random.Generator,
    les: LesionParams | None,
    tpl: PaddedTemplate,
    out_affine: np.ndarray,
    centre: np.ndarray,
    step: int,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Output mm -> (affine + elastic) -> MNI ``q`` -> mass effect -> template ``p``, every ``step``
    output voxels, with the log bias field.

    Returns:
        ``q`` and ``p``: ``(cx, cy, cz, 3)`` float32 mm; ``coarse``: ``(cx, cy, cz, 4)``, the
        template's grid coordinates of ``p`` and the log bias.
    """
    shape, spacing = g.shape, np.asarray(g.spacing)
    axes = coarse_axes(shape, step)
    cshape = tuple(len(a) for a in axes)
    w = np.stack(np.meshgrid(*axes, indexing="ij"), -1) * spacing + out_affine[:3, 3]
    lin = rotation_matrix(np.asarray(g.rotation_deg)) @ np.diag(g.scale)
    elastic = np.stack(
        [upsample(grng.standard_normal((5, 5, 5)).astype(np.float32), cshape) for _ in range(3)],
        -1,
    )
    q = (w - centre) @ lin.T + centre + np.asarray(g.translation_mm) + g.elastic_mm * elastic
    q = q.astype(np.float32)
    p = mass_effect(q, les)
    log_bias = g.bias * upsample(grng.standard_normal((4, 4, 4)).astype(np.float32), cshape)
    source = tpl.head if g.skull else tpl.brain
    dims = tuple(source.shape[2:])
    coarse = np.concatenate([to_grid_coords(p, tpl.inv_affine, dims), log_bias[..., None]], -1)
    return q, p, coarse


def _anatomy(
    g: _Global, tpl: PaddedTemplate, p: np.ndarray, coarse: np.ndarray, step: int, name: str
) -> tuple[tuple[slice, ...], np.ndarray, np.ndarray]:
    """The template's tissue on the output grid, sampled only inside the box where it is non-zero.

    Returns:
        ``obox`` (the output box), ``tissue`` ``g.shape`` float32 (zero outside the box) and the
        bias field on the box.

    Raises:
        TumorTraceError: the head falls outside the field of view.
    """
    source = tpl.head if g.skull else tpl.brain
    pv = np.moveaxis(p @ tpl.inv_affine[:3, :3].T + tpl.inv_affine[:3, 3], -1, 0)
    inside = ndi.map_coordinates(source[0, 0].numpy(), pv, order=1, cval=0.0) > 0
    box = coarse_bbox(inside)
    if box is None:
        raise TumorTraceError(f"Phantom {name}: the head falls outside the field of view.")
    obox = fine_box(box, step, g.shape)
    dense = densify(coarse, obox, step)
    tissue = np.zeros(g.shape, np.float32)
    tissue[obox] = sample_volume(source, dense)[0].numpy()
    return obox, tissue, np.exp(dense[..., 3].numpy())


def _insert_lesion(
    tissue: np.ndarray,
    les: LesionParams | None,
    q: np.ndarray,
    seed: int,
    tpl: PaddedTemplate,
    step: int,
) -> tuple[np.ndarray, np.ndarray]:
    """Blends the lesion into ``tissue`` (in place) where its box meets the output grid.

    Returns:
        ``lesion`` and ``parts``: uint8 masks of ``tissue``'s shape (parts: 1 oedema or LGG
        tumour, 2 enhancing tumour, 3 necrosis); zeros for a healthy subject.
    """
    lesion_mask = np.zeros(tissue.shape, np.uint8)
    parts = np.zeros(tissue.shape, np.uint8)
    if les is None:
        return lesion_mask, parts
    lrng = np.random.default_rng(np.random.SeedSequence([seed, 2]))
    chans, origin, res = render_lesion(les, lrng, tpl)
    ldims = tuple(chans.shape[2:])
    box_affine = np.diag([res, res, res, 1.0])
    box_affine[:3, 3] = origin
    lcoarse = to_grid_coords(q, np.linalg.inv(box_affine), ldims)
    lbox = coarse_bbox(np.all(np.abs(lcoarse[..., ::-1]) <= 1.0, axis=-1))
    if lbox is None:
        return lesion_mask, parts
    lout = fine_box(lbox, step, tissue.shape)
    lv = sample_volume(chans, densify(lcoarse, lout, step))
    alpha, absolute, relative, tumour, necrosis = (c.numpy() for c in lv)
    t = tissue[lout]
    tissue[lout] = t * (1.0 - alpha) + absolute + relative * (0.4 + 0.6 * np.minimum(t, 1))
    m = alpha >= 0.5
    lesion_mask[lout] = m
    code = np.where(tumour >= 0.5, np.where(necrosis >= 0.5, 3, 2), 1)
    if les.grade == "lgg":
        code = np.where(tumour >= 0.5, 1, 0)
    parts[lout] = np.where(m, code, 0).astype(np.uint8)
    return lesion_mask, parts


def _acquire(
    tissue: np.ndarray, obox: tuple[slice, ...], bias: np.ndarray, g: _Global, seed: int
) -> np.ndarray:
    """Contrast, gamma, bias field, noise and the scanner's scale: the stored intensities.

    Returns:
        ``tissue``'s shape, float32 (z-scored, or whole numbers as the scanner stores them).
    """
    shape = tissue.shape
    tissue = tissue[obox]
    brain_mask = tissue > 0.02
    x = np.clip(tissue, 0.0, None)
    x = x**g.gamma
    x = x * (1.0 + g.contrast * (x - 1.0)) * bias
    gen = torch.Generator().manual_seed(int(np.random.SeedSequence([seed, 3]).generate_state(1)[0]))
    data = np.zeros(shape, np.float32)
    if g.skull:  # magnitude image: Rician noise everywhere, Rayleigh in the air
        data[obox] = x
        n1 = torch.randn(shape, generator=gen).numpy()
        n2 = torch.randn(shape, generator=gen).numpy()
        data += g.noise * n1
        np.square(data, out=data)
        data += (g.noise * n2) ** 2
        np.sqrt(data, out=data)
    else:  # skull-stripped, as BraTS: Gaussian noise in the brain, exact zeros outside
        n1 = torch.randn(x.shape, generator=gen).numpy()
        data[obox] = np.where(brain_mask, np.abs(x + g.noise * n1), 0.0)
    data *= g.wm_level
    if g.zscore:
        fg = data > 0.1 * g.wm_level
        data = (data - data[fg].mean()) / data[fg].std()
    elif g.dtype == "int16":
        data = np.clip(np.rint(data), 0, 32767)
    else:
        data = np.rint(data)
    return data.astype(np.float32)


def _storage_order(
    out_affine: np.ndarray, orientation: str, *arrays: np.ndarray
) -> tuple[np.ndarray, list[np.ndarray]]:
    """The canonical RAS arrays flipped into the subject's storage ``orientation``, and its affine.

    Returns:
        The ``(4, 4)`` affine of the stored arrays, and ``arrays`` in storage order.
    """
    affine = out_affine.copy()
    flips = {"RAS": (), "LPS": (0, 1), "LAS": (0,)}[orientation]
    for ax in flips:
        n = arrays[0].shape[ax]
        affine[:3, 3] += affine[:3, ax] * (n - 1)
        affine[:3, ax] *= -1.0
    if not flips:
        return affine, list(arrays)
    return affine, [np.ascontiguousarray(np.flip(a, flips)) for a in arrays]


def _meta(
    label: str,
    seed: int,
    size: str,
    g: _Global,
    les: LesionParams | None,
    lesion_mask: np.ndarray,
    affine: np.ndarray,
) -> dict:
    """The phantom's JSON-ready record: every drawn property, the lesion's volume and centre."""
    volume_ml = float(lesion_mask.sum() * np.prod(np.asarray(g.spacing)) / 1000.0)
    if lesion_mask.any():
        cvox = np.argwhere(lesion_mask).mean(0)
        cmm = affine[:3, :3] @ cvox + affine[:3, 3]
        centre_voxel, centre_mm = [float(v) for v in cvox], [float(v) for v in cmm]
    else:
        centre_voxel = centre_mm = None
    return jsonable(
        {
            "label": label,
            "seed": seed,
            "size": size,
            "global": asdict(g),
            "lesion": asdict(les) if les is not None else None,
            "lesion_volume_ml": round(volume_ml, 3),
            "lesion_centre_voxel": centre_voxel,
            "lesion_centre_mm": centre_mm,
            "atypical": bool(les.atypical) if les is not None else False,
        }
    )


def subject_seed(seed: int, label: str, index: int) -> int:
    """The phantom seed of subject ``index`` of class ``label`` in a cohort seeded ``seed``.

    Derived from ``(seed, class index, index)`` so cohorts of different sizes share their first
    subjects and every subject is independent of the others.
    """
    state = np.random.SeedSequence([int(seed), CLASSES.index(label), int(index)])
    return int(state.generate_state(1)[0] & 0x7FFFFFFF)
