"""The lesion model: LGG and HGG pathology drawn in MNI space, shared by the phantoms
(:mod:`tumortrace.synthetic`) and the real-brain cohort (:mod:`tumortrace.cohort`).

* **LGG**: a diffuse, T1-hypointense, non-enhancing lesion with ill-defined margins (a soft blend
  over several millimetres) and little mass effect.
* **HGG**: an enhancing rim around a necrotic core, surrounded by oedema (hypointense, following the
  white matter), with mass effect (a radial displacement of the surrounding anatomy).
* **Atypical cases** (about 15% of each grade): LGG with faint patchy enhancement; small solid
  enhancing HGG without necrosis. Lesion sizes of the grades overlap.

Lesion shapes are level sets of an anisotropic distance perturbed by smooth random fields
(lobulated, never spheres), centred in deep white matter of the cerebrum.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from scipy import ndimage as ndi

from tumortrace.head_template import PaddedTemplate
from tumortrace.phantom_grid import rotation_matrix, smooth_noise, upsample


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
    rot = rotation_matrix(rng.uniform(-180.0, 180.0, 3)).astype(np.float32)
    aniso = np.asarray(les.anisotropy, dtype=np.float32)
    rho2 = np.zeros((n, n, n), np.float32)
    for i in range(3):
        ui = (rot[i, 0] * x + rot[i, 1] * y + rot[i, 2] * z) / aniso[i]
        rho2 += ui * ui
    rho = np.sqrt(rho2)

    def field(scale_mm: float) -> np.ndarray:
        m = int(np.ceil(2.0 * outer / scale_mm)) + 4
        return upsample(smooth_noise(rng, (m, m, m), 0.8), (n, n, n))

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
