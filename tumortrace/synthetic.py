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

* **LGG**: a diffuse, T1-hypointense, non-enhancing lesion with ill-defined margins (a soft blend
  over several millimetres) and little mass effect.
* **HGG**: an enhancing rim around a necrotic core, surrounded by oedema (hypointense, following the
  white matter), with mass effect (a radial displacement of the surrounding anatomy).
* **Atypical cases** (about 15% of each grade): LGG with faint patchy enhancement; small solid
  enhancing HGG without necrosis. Lesion sizes of the grades overlap.

Lesion shapes are level sets of an anisotropic distance perturbed by smooth random fields
(lobulated, never spheres), centred in deep white matter of the cerebrum.

Speed: all geometry (affine, elastic, mass effect, bias field) is evaluated on a coarse grid
(~5 mm) and interpolated trilinearly, then each output voxel is sampled once with
:func:`torch.nn.functional.grid_sample`, restricted to the bounding box of the head.
"""

from __future__ import annotations

import functools
import gzip
import importlib.util
from collections.abc import Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path

import nibabel as nib
import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageDraw
from scipy import ndimage as ndi
from tqdm.auto import tqdm

from tumortrace.config import CLASSES
from tumortrace.errors import ConfigError, TumorTraceError
from tumortrace.files import atomic_path, atomic_write_bytes, atomic_write_json, jsonable
from tumortrace.manifest import Case, write_manifest

SIZES: tuple[str, str, str] = ("brats", "ixi", "small")
"""Grid presets: BraTS (240x240x155 at 1 mm), IXI-like native (256x256x150), small (tests, CPU)."""

ORIENTATIONS: tuple[str, str, str] = ("RAS", "LPS", "LAS")
"""Storage orders a phantom may be written in (the first two axes are flipped as needed)."""

_TEMPLATE_FILES = {
    k: f"mni_icbm152_{k}_tal_nlin_sym_09a_converted.nii.gz" for k in ("t1", "gm", "wm")
}
_PAD = ((24, 24), (24, 24), (40, 16))  # room for a scalp and a neck around the brain template (mm)
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
class PaddedTemplate:
    brain: torch.Tensor  # (1, 1, X, Y, Z) skull-stripped T1, white matter = 1
    head: torch.Tensor  # (1, 1, X, Y, Z) same with a synthetic skull, scalp and neck
    mask: np.ndarray  # (X, Y, Z) float32 brain probability (padded template grid)
    wm: np.ndarray  # (X, Y, Z) float32 white-matter probability
    affine: np.ndarray  # (4, 4) padded voxel -> MNI mm
    inv_affine: np.ndarray
    candidates: np.ndarray  # (K, 3) MNI mm: plausible lesion centres (deep cerebral WM)


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


@dataclass(frozen=True)
class LesionParams:
    """Class-specific pathology parameters (MNI mm, relative-to-WM intensities)."""

    grade: str
    atypical: bool
    centre_mni: tuple[float, float, float]
    radius_mm: float
    anisotropy: tuple[float, float, float]
    irregularity: float
    margin: float  # relative width of the soft boundary
    intensity: float  # LGG body or HGG enhancing rim, relative to WM
    necrosis_fraction: float  # 0 = solid
    necrosis_intensity: float
    oedema_mm: float
    oedema_intensity: float
    enhancement: float  # faint enhancement of atypical LGG (0 = none)
    mass_effect: float


# --------------------------------------------------------------------------- template


def _template_dir() -> Path:
    spec = importlib.util.find_spec("nilearn")
    if spec is None or spec.origin is None:
        raise TumorTraceError(
            "The MNI152 template ships inside the nilearn package, which is not installed; "
            "install the project's requirements (pip install -r requirements.txt)."
        )
    return Path(spec.origin).parent / "datasets" / "data"


def _load_uint8(path: Path) -> np.ndarray:
    if not path.is_file():
        raise TumorTraceError(
            f"MNI152 template file {path} not found; expected it inside the nilearn wheel. "
            "Reinstall nilearn from the project's requirements."
        )
    return np.asarray(nib.load(path).dataobj, dtype=np.float32) / 255.0


def _smooth_noise(rng: np.random.Generator, shape: tuple[int, ...], sigma: float) -> np.ndarray:
    """Gaussian-smoothed white noise with unit standard deviation, float32."""
    n = ndi.gaussian_filter(rng.standard_normal(shape).astype(np.float32), sigma, mode="wrap")
    return (n / (n.std() + 1e-6)).astype(np.float32)


def _upsample(a: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """Trilinear resize of a (X, Y, Z) float32 array to ``shape`` (corner-aligned)."""
    t = torch.from_numpy(np.ascontiguousarray(a, dtype=np.float32))[None, None]
    return F.interpolate(t, size=shape, mode="trilinear", align_corners=True)[0, 0].numpy()


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
    dist = ndi.distance_transform_edt(~env) * 2.0 + 1.2 * _smooth_noise(rng, b2.shape, 3.0)
    texture = 1.0 + 0.08 * _smooth_noise(rng, b2.shape, 1.0)
    inside = np.where(z_mm[None, None, :] < -50.0, 0.45, 0.12)
    extra = np.select(
        [env, dist < 1.5, dist < 3.5, dist < 6.5, dist < 8.5, dist < 13.0, dist < 15.0],
        [inside, 0.12, 0.05, 0.55, 0.05, 0.9, 0.45],
        0.0,
    ).astype(np.float32)
    extra = _upsample(extra * texture, brain.shape)
    extra[brain] = 0.0
    return extra


@functools.lru_cache(maxsize=1)
def padded_template() -> PaddedTemplate:
    """Loads, normalises and pads the MNI152 2009a template once per process."""
    folder = _template_dir()
    t1, gm, wm = (_load_uint8(folder / _TEMPLATE_FILES[k]) for k in ("t1", "gm", "wm"))
    t1 = t1 / float(np.median(t1[wm > 0.9]))  # white matter = 1
    t1, gm, wm = (np.pad(a, _PAD) for a in (t1, gm, wm))
    src_affine = nib.load(folder / _TEMPLATE_FILES["t1"]).affine
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


# --------------------------------------------------------------------------- parameters


def _rotation(deg: np.ndarray) -> np.ndarray:
    """(3, 3) rotation matrix from angles in degrees about x, y, z."""
    ax, ay, az = np.deg2rad(deg)
    rx = np.array([[1, 0, 0], [0, np.cos(ax), -np.sin(ax)], [0, np.sin(ax), np.cos(ax)]])
    ry = np.array([[np.cos(ay), 0, np.sin(ay)], [0, 1, 0], [-np.sin(ay), 0, np.cos(ay)]])
    rz = np.array([[np.cos(az), -np.sin(az), 0], [np.sin(az), np.cos(az), 0], [0, 0, 1]])
    return rz @ ry @ rx


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


def draw_lesion(label: str, seed: int, tpl: PaddedTemplate) -> LesionParams | None:
    """Draws the pathology of an ``"lgg"`` or ``"hgg"`` subject (None for healthy)."""
    if label == "healthy":
        return None
    rng = np.random.default_rng(np.random.SeedSequence([seed, 1]))
    u = rng.uniform
    centre = tpl.candidates[int(rng.integers(len(tpl.candidates)))] + u(-1.0, 1.0, 3)
    aniso = np.exp(u(-0.25, 0.25, 3))
    aniso = aniso / np.prod(aniso) ** (1.0 / 3.0)
    atypical = bool(u() < 0.15)
    common = {
        "grade": label,
        "atypical": atypical,
        "centre_mni": tuple(float(v) for v in centre),
        "anisotropy": tuple(float(v) for v in aniso),
        "irregularity": float(u(0.15, 0.3) if label == "lgg" else u(0.2, 0.4)),
    }
    if label == "lgg":
        return LesionParams(
            **common,
            radius_mm=float(u(16.0, 32.0)),
            margin=float(u(0.12, 0.3)),
            intensity=float(u(0.38, 0.66)),
            necrosis_fraction=0.0,
            necrosis_intensity=0.0,
            oedema_mm=0.0,
            oedema_intensity=0.0,
            enhancement=float(u(1.05, 1.2)) if atypical else 0.0,
            mass_effect=float(u(0.0, 0.1)),
        )
    if atypical:  # small, solid, modestly enhancing, little oedema
        return LesionParams(
            **common,
            radius_mm=float(u(8.0, 14.0)),
            margin=float(u(0.05, 0.12)),
            intensity=float(u(1.12, 1.4)),
            necrosis_fraction=0.0,
            necrosis_intensity=0.0,
            oedema_mm=float(u(0.0, 6.0)),
            oedema_intensity=float(u(0.7, 0.88)),
            enhancement=0.0,
            mass_effect=float(u(0.05, 0.2)),
        )
    return LesionParams(
        **common,
        radius_mm=float(u(13.0, 27.0)),
        margin=float(u(0.04, 0.08)),
        intensity=float(u(1.4, 1.9)),
        necrosis_fraction=float(u(0.45, 0.75)),
        necrosis_intensity=float(u(0.2, 0.45)),
        oedema_mm=float(u(5.0, 18.0)),
        oedema_intensity=float(u(0.62, 0.85)),
        enhancement=0.0,
        mass_effect=float(u(0.2, 0.45)),
    )


# --------------------------------------------------------------------------- geometry


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return (0.5 * (1.0 + np.tanh(0.5 * x))).astype(np.float32)


def mass_effect(q: np.ndarray, les: LesionParams | None) -> np.ndarray:
    """Radial push away from the lesion centre: (..., 3) MNI mm -> (..., 3) template mm.

    The map ``p = c + (q - c) (1 - m exp(-|q - c|^2 / L^2))`` is monotone in ``|q - c|`` for
    ``m < 1``: tissue near the lesion is displaced outwards, far tissue is untouched.
    """
    if les is None or les.mass_effect <= 0:
        return q
    c = np.asarray(les.centre_mni, dtype=np.float32)
    reach = 1.2 * (les.radius_mm + les.oedema_mm) + 5.0
    d = q - c
    r2 = (d * d).sum(-1, keepdims=True)
    return (c + d * (1.0 - les.mass_effect * np.exp(-r2 / reach**2))).astype(np.float32)


def render_lesion(les: LesionParams, rng: np.random.Generator, tpl: PaddedTemplate):
    """Renders the lesion in a local MNI box.

    Returns:
        channels: (1, 5, n, n, n) float32 tensor: alpha (blend weight), absolute intensity,
            relative intensity, tumour weight, necrosis weight. A voxel of normal intensity ``t``
            becomes ``t (1 - alpha) + absolute + relative * (0.4 + 0.6 min(t, 1))``: enhancing
            tissue and necrosis replace the anatomy, while infiltration and oedema darken it
            (so a lesion reaching the cortex stays hypointense to grey matter too).
        origin: (3,) MNI mm of box voxel (0, 0, 0); res: box spacing in mm.
    """
    outer = 1.45 * (les.radius_mm + les.oedema_mm) + 4.0
    res = max(1.0, 2.0 * outer / 72.0)
    n = int(np.ceil(2.0 * outer / res)) + 1
    axis = (np.arange(n, dtype=np.float32) * res - outer).astype(np.float32)
    x, y, z = np.meshgrid(axis, axis, axis, indexing="ij")
    rot = _rotation(rng.uniform(-180.0, 180.0, 3)).astype(np.float32)
    aniso = np.asarray(les.anisotropy, dtype=np.float32)
    rho2 = np.zeros((n, n, n), np.float32)
    for i in range(3):
        ui = (rot[i, 0] * x + rot[i, 1] * y + rot[i, 2] * z) / aniso[i]
        rho2 += ui * ui
    rho = np.sqrt(rho2)

    def field(scale_mm: float) -> np.ndarray:
        m = int(np.ceil(2.0 * outer / scale_mm)) + 4
        return _upsample(_smooth_noise(rng, (m, m, m), 0.8), (n, n, n))

    n1, n2, n3 = field(10.0), field(4.0), field(6.0)
    radius = les.radius_mm * (1.0 + les.irregularity * n1 + 0.35 * les.irregularity * n2)
    s = rho / np.maximum(radius, 0.3 * les.radius_mm)

    centre = np.asarray(les.centre_mni, dtype=np.float32)
    q = np.stack([x, y, z], -1) + centre
    p = mass_effect(q, les)
    vox = p @ tpl.inv_affine[:3, :3].T.astype(np.float32) + tpl.inv_affine[:3, 3]
    coords = np.moveaxis(vox, -1, 0)
    brain = ndi.map_coordinates(tpl.mask, coords, order=1).astype(np.float32)
    wm = ndi.map_coordinates(tpl.wm, coords, order=1).astype(np.float32)

    if les.grade == "lgg":
        tumour = _sigmoid((1.0 - s) / les.margin) * brain
        necrosis = np.zeros_like(s)
        patch = np.zeros_like(s)
        if les.enhancement > 0:  # faint, patchy enhancement inside the lesion
            patch = _sigmoid((n2 - 1.0) / 0.25) * _sigmoid((0.8 - s) / 0.1)
        alpha = tumour
        absolute = tumour * patch * les.enhancement
        relative = tumour * (1.0 - patch) * les.intensity * (1.0 + 0.05 * n2)
    else:
        tumour = _sigmoid((1.0 - s) / les.margin) * brain
        if les.necrosis_fraction > 0:
            frac = les.necrosis_fraction * (1.0 + 0.2 * n3)
            necrosis = _sigmoid((frac - s) / les.margin)
        else:
            necrosis = np.zeros_like(s)
        solid = les.intensity * (1.0 + 0.08 * n2)
        core = les.necrosis_intensity * (1.0 + 0.15 * n3)
        target = solid * (1.0 - necrosis) + core * necrosis
        if les.oedema_mm > 0:
            reach = 1.0 + les.oedema_mm / les.radius_mm * (1.0 + 0.4 * n3)
            oed = _sigmoid((reach - s) / 0.2) * (0.3 + 0.7 * wm) * brain
        else:
            oed = np.zeros_like(s)
        alpha = tumour + (1.0 - tumour) * oed
        absolute = tumour * target
        relative = (1.0 - tumour) * oed * les.oedema_intensity
    chans = np.stack([alpha, absolute, relative, tumour, necrosis * tumour]).astype(np.float32)
    return torch.from_numpy(chans)[None], centre - outer, res


def _coarse_axes(shape: tuple[int, int, int], step: int) -> list[np.ndarray]:
    """Voxel indices of the coarse grid along each axis (0, step, ...; last one >= n - 1)."""
    return [np.arange(int(np.ceil((n - 1) / step)) + 1, dtype=np.float32) * step for n in shape]


def _to_grid_coords(mm: np.ndarray, inv_affine: np.ndarray, dims: tuple[int, ...]) -> np.ndarray:
    """(..., 3) mm -> (..., 3) normalised grid_sample coordinates, ordered (z, y, x)."""
    vox = mm @ inv_affine[:3, :3].T + inv_affine[:3, 3]
    norm = 2.0 * vox / (np.asarray(dims, dtype=np.float64) - 1.0) - 1.0
    return norm[..., ::-1].astype(np.float32)


def _bbox(inside: np.ndarray) -> tuple[slice, slice, slice] | None:
    """Coarse-index box of the True cells of a (cx, cy, cz) mask, grown by one cell."""
    idx = np.argwhere(inside)
    if idx.size == 0:
        return None
    lo = np.maximum(idx.min(0) - 1, 0)
    hi = np.minimum(idx.max(0) + 2, inside.shape)
    return tuple(slice(int(a), int(b)) for a, b in zip(lo, hi, strict=True))


def _hat_matrix(fine: slice, step: int, n_coarse: int) -> torch.Tensor:
    """(n_fine, n_coarse) linear-interpolation weights from a coarse axis onto fine voxels."""
    pos = np.arange(fine.start, fine.stop, dtype=np.float32)[:, None] / step
    w = np.clip(1.0 - np.abs(pos - np.arange(n_coarse, dtype=np.float32)[None, :]), 0.0, None)
    return torch.from_numpy(w)


def _densify(coarse: np.ndarray, out: tuple[slice, slice, slice], step: int) -> torch.Tensor:
    """Trilinear upsampling of coarse fields onto a block of output voxels.

    Done as three small matrix products (separable hat weights), much faster than
    ``F.interpolate`` here and directly in the channels-last layout ``grid_sample`` wants.

    Args:
        coarse: (cx, cy, cz, K) fields on the coarse grid (voxel ``i * step``).
        out: output-voxel slices of the block.
        step: coarse step in output voxels.

    Returns:
        (x, y, z, K) float32 contiguous tensor.
    """
    cx, cy, cz, k = coarse.shape
    ux, uy, uz = (_hat_matrix(o, step, n) for o, n in zip(out, (cx, cy, cz), strict=True))
    t = torch.from_numpy(np.ascontiguousarray(coarse, dtype=np.float32))
    t = torch.einsum("zc,abcq->abzq", uz, t)
    t = torch.einsum("yb,abzq->ayzq", uy, t).reshape(cx, -1)
    return (ux @ t).reshape(ux.shape[0], uy.shape[0], uz.shape[0], k)


def _fine_box(box: tuple[slice, ...], step: int, shape: tuple[int, ...]) -> tuple[slice, ...]:
    """Output-voxel slices covered by a coarse-index box."""
    return tuple(
        slice(s.start * step, min((s.stop - 1) * step + 1, n))
        for s, n in zip(box, shape, strict=True)
    )


def _sample(volume: torch.Tensor, dense: torch.Tensor) -> torch.Tensor:
    """Samples ``volume`` (1, C, X', Y', Z') at grid ``dense`` (x, y, z, >=3) -> (C, x, y, z)."""
    grid = dense[None, ..., :3]
    vals = F.grid_sample(volume, grid, mode="bilinear", padding_mode="zeros", align_corners=True)
    return vals[0]


# --------------------------------------------------------------------------- phantom


def _check_label(label: str) -> None:
    if label not in CLASSES:
        raise ConfigError(f"Unknown phantom label {label!r}; expected one of {list(CLASSES)}.")


def _check_size(size: str) -> None:
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
    _check_label(label)
    _check_size(size)
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
    axes = _coarse_axes(shape, step)
    cshape = tuple(len(a) for a in axes)
    w = np.stack(np.meshgrid(*axes, indexing="ij"), -1) * spacing + out_affine[:3, 3]
    lin = _rotation(np.asarray(g.rotation_deg)) @ np.diag(g.scale)
    elastic = np.stack(
        [_upsample(grng.standard_normal((5, 5, 5)).astype(np.float32), cshape) for _ in range(3)],
        -1,
    )
    q = (w - centre) @ lin.T + centre + np.asarray(g.translation_mm) + g.elastic_mm * elastic
    q = q.astype(np.float32)
    p = mass_effect(q, les)
    log_bias = g.bias * _upsample(grng.standard_normal((4, 4, 4)).astype(np.float32), cshape)
    source = tpl.head if g.skull else tpl.brain
    dims = tuple(source.shape[2:])
    coarse = np.concatenate([_to_grid_coords(p, tpl.inv_affine, dims), log_bias[..., None]], -1)
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
    box = _bbox(inside)
    if box is None:
        raise TumorTraceError(f"Phantom {name}: the head falls outside the field of view.")
    obox = _fine_box(box, step, g.shape)
    dense = _densify(coarse, obox, step)
    tissue = np.zeros(g.shape, np.float32)
    tissue[obox] = _sample(source, dense)[0].numpy()
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
    lcoarse = _to_grid_coords(q, np.linalg.inv(box_affine), ldims)
    lbox = _bbox(np.all(np.abs(lcoarse[..., ::-1]) <= 1.0, axis=-1))
    if lbox is None:
        return lesion_mask, parts
    lout = _fine_box(lbox, step, tissue.shape)
    lv = _sample(chans, _densify(lcoarse, lout, step))
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


# --------------------------------------------------------------------------- cohort


def subject_seed(seed: int, label: str, index: int) -> int:
    """The phantom seed of subject ``index`` of class ``label`` in a cohort seeded ``seed``.

    Derived from ``(seed, class index, index)`` so cohorts of different sizes share their first
    subjects and every subject is independent of the others.
    """
    state = np.random.SeedSequence([int(seed), CLASSES.index(label), int(index)])
    return int(state.generate_state(1)[0] & 0x7FFFFFFF)


def _nifti_gz(array: np.ndarray, affine: np.ndarray, dtype: str) -> bytes:
    """NIfTI-1 bytes gzipped at level 1 with a fixed mtime (nibabel's level 6 is much slower)."""
    img = nib.Nifti1Image(array.astype(dtype), affine)
    img.header.set_xyzt_units("mm")
    img.set_qform(affine, code=1)
    img.set_sform(affine, code=1)
    return gzip.compress(img.to_bytes(), compresslevel=1, mtime=0)


def _write_case(out: Path, sid: str, ph: Phantom) -> Path:
    path = out / f"{sid}.nii.gz"
    atomic_write_bytes(path, _nifti_gz(ph.data, ph.affine, ph.meta["global"]["dtype"]))
    atomic_write_bytes(out / f"{sid}_lesion.nii.gz", _nifti_gz(ph.lesion, ph.affine, "uint8"))
    atomic_write_json(out / f"{sid}.json", dict(ph.meta, subject_id=sid), indent=1)
    return path


def _axial_tile(ph: Phantom, height: int = 180) -> Image.Image:
    """Axial slice through the lesion centroid (mid slice if healthy), anterior up, RAS display."""
    flips = {"RAS": (), "LPS": (0, 1), "LAS": (0,)}[ph.meta["global"]["orientation"]]
    data = np.flip(ph.data, flips) if flips else ph.data
    if ph.lesion.any():
        k = int(np.argwhere(np.flip(ph.lesion, flips) if flips else ph.lesion)[:, 2].mean())
    else:
        k = data.shape[2] // 2
    sl = data[:, :, k].T[::-1]
    lo, hi = np.percentile(sl, [0.5, 99.8])
    img8 = (np.clip((sl - lo) / max(hi - lo, 1e-6), 0, 1) * 255).astype(np.uint8)
    sx, sy = ph.meta["global"]["spacing"][:2]
    width = round(height * sl.shape[1] * sx / (sl.shape[0] * sy))
    return Image.fromarray(img8).resize((width, height), Image.BILINEAR)


def _montage(tiles: dict[str, list[tuple[str, dict, Image.Image]]], path: Path) -> Path:
    """A PNG with one labelled row of axial tiles per class: ``{class: [(id, meta, tile)]}``."""
    tw = max((t.width for items in tiles.values() for _, _, t in items), default=180)
    th, label_h, left = 180, 16, 70
    ncol = max((len(v) for v in tiles.values()), default=1)
    canvas = Image.new("L", (left + ncol * (tw + 4), len(tiles) * (th + label_h + 6) + 4), 0)
    draw = ImageDraw.Draw(canvas)
    for r, (cls, items) in enumerate(tiles.items()):
        y = 4 + r * (th + label_h + 6)
        draw.text((6, y + th // 2), cls.upper(), fill=255)
        for c, (sid, meta, tile) in enumerate(items):
            x = left + c * (tw + 4)
            canvas.paste(tile, (x, y))
            ml = meta["lesion_volume_ml"]
            atyp = " atyp" if meta["atypical"] else ""
            text = f"{sid} {ml:.0f}ml{atyp}" if cls != "healthy" else sid
            draw.text((x + 2, y + th + 2), text, fill=255)
    with atomic_path(path) as tmp:
        canvas.save(tmp, format="PNG")
    return path


def write_cohort(
    out: Path,
    counts: Mapping[str, int],
    seed: int = 0,
    size: str = "small",
    progress: bool = True,
) -> list[Case]:
    """Writes a synthetic cohort: volumes, lesion masks, sidecar JSON, manifest and montage.

    Files: ``<out>/<subject_id>.nii.gz`` (the volume, in its drawn dtype and storage order),
    ``<out>/<subject_id>_lesion.nii.gz`` (uint8 mask, same grid and affine),
    ``<out>/<subject_id>.json`` (:attr:`Phantom.meta`), ``<out>/manifest.csv`` (relative paths)
    and ``<out>/montage.png``.
    Subject ids look like ``syn-hgg-0003``; subject i of class c uses :func:`subject_seed`.

    Args:
        out: output folder (created).
        counts: volumes per class, e.g. ``{"healthy": 20, "lgg": 20, "hgg": 20}``.
        seed: cohort seed.
        size: one of :data:`SIZES`.
        progress: show a tqdm progress bar.

    Returns:
        The written cases (absolute paths, ``source="synthetic"``), in class order.

    Raises:
        ConfigError: unknown class or size, negative or non-integer count, or an empty cohort.
    """
    _check_size(size)
    for cls, n in counts.items():
        _check_label(cls)
        if not isinstance(n, int | np.integer) or n < 0:
            raise ConfigError(f"Count for {cls!r} must be a non-negative int, got {n!r}.")
    if sum(counts.values()) == 0:
        raise ConfigError(f"Empty cohort: counts {dict(counts)} ask for no volumes; ask for >= 1.")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    jobs = [(c, i) for c in CLASSES for i in range(int(counts.get(c, 0)))]
    cases: list[Case] = []
    shown: dict[str, list[tuple[str, dict, Image.Image]]] = {
        c: [] for c in CLASSES if counts.get(c, 0)
    }
    pending: list[Future] = []
    # Writing (gzip) overlaps with synthesising the next phantom; zlib releases the GIL.
    with ThreadPoolExecutor(max_workers=1) as pool:
        for cls, i in tqdm(jobs, desc=f"synth {size}", unit="vol", disable=not progress):
            sid = f"syn-{cls}-{i:04d}"
            ph = make_phantom(cls, subject_seed(seed, cls, i), size)
            pending.append(pool.submit(_write_case, out, sid, ph))
            if len(shown[cls]) < 6:
                shown[cls].append((sid, ph.meta, _axial_tile(ph)))
            if len(pending) > 2:
                pending.pop(0).result()
            cases.append(Case(sid, (out / f"{sid}.nii.gz").resolve(), cls, "synthetic"))
        for f in pending:
            f.result()
    write_manifest(cases, out / "manifest.csv")
    _montage(shown, out / "montage.png")
    return cases
