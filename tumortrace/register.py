"""Affine registration of an extracted brain to the MNI152 template with SimpleITK.

Two stages, each multi-resolution with Mattes mutual information: a similarity transform (rotation,
translation, one isotropic scale), then a full affine initialised from it. Both images are brains
on a zero background (the template ships skull-stripped; the subject is masked by
:mod:`tumortrace.brain`), on a 2 mm copy of the template, so the brain's outline and its tissue
contrast drive the fit and the skull cannot pull it (a whole-head start wrapped some masks around
the head). Starts: the masks' centres of mass, the scale from their volume ratio, and three head
pitches (-15, 0, +15 degrees); the best coarse metric wins. Scales outside ``MAX_SCALE`` are
rejected: the affine falls back to the similarity fit, and a similarity outside the bounds is a
failed registration.

Coordinates: SimpleITK works in LPS millimetres; everything this module returns is RAS, as nibabel
and the rest of the project use. :attr:`Registration.template_to_native` maps template RAS mm to
native RAS mm (the direction ITK's resampling uses); :attr:`Registration.native_to_template` is
its inverse, used to bring the model grid's maps back onto the uploaded file's grid.
"""

from __future__ import annotations

import functools
import time
from dataclasses import dataclass

import numpy as np
import SimpleITK as sitk  # noqa: N813 (the library's own convention)
from scipy import ndimage

from tumortrace.template import load_template

__all__ = [
    "MAX_SCALE",
    "REGISTRATION_SETTINGS",
    "Registration",
    "register_to_template",
    "to_sitk",
]

_LPS = np.diag([-1.0, -1.0, 1.0, 1.0])
MAX_SCALE: tuple[float, float] = (0.65, 1.5)
"""Allowed range of each axis scale (template -> native); outside it the fit is not believed."""

REGISTRATION_SETTINGS: dict[str, object] = {
    "library": f"SimpleITK {sitk.Version.VersionString()}",
    "stages": ["similarity", "affine"],
    "metric": "Mattes mutual information, 32 bins, 10 % random samples",
    "levels_mm": {"starts": [8.0], "similarity": [4.0], "affine": [8.0, 4.0]},
    "smoothing_mm": {"starts": [4.0], "similarity": [2.0], "affine": [4.0, 2.0]},
    "iterations": {"starts": 40, "similarity": 60, "affine": 60},
    "moving": "brain block-averaged to about 2 mm",
    "fixed_spacing_mm": 2.0,
    "pitch_starts_deg": [-15.0, 0.0, 15.0],
    "max_scale": list(MAX_SCALE),
}
"""Recorded in model cards and in the standard-space cache key."""

_FIXED_SPACING = 2.0


@dataclass(frozen=True)
class Registration:
    """An affine map between a scan and the template.

    Attributes:
        template_to_native: ``(4, 4)`` RAS mm (template) -> RAS mm (scan).
        native_to_template: ``(4, 4)`` inverse of :attr:`template_to_native`.
        ok: False when the fit failed or its scales left :data:`MAX_SCALE`.
        reason: plain-language reason when ``ok`` is False, else ``""``.
        metric: final Mattes MI value (lower is better; 0 when not run).
        stage: ``"affine"``, ``"similarity"`` (affine rejected) or ``"none"``.
        seconds: wall time.
    """

    template_to_native: np.ndarray
    native_to_template: np.ndarray
    ok: bool
    reason: str
    metric: float
    stage: str
    seconds: float

    @property
    def scales(self) -> np.ndarray:
        """``(3,)`` singular values of the linear part (template -> native)."""
        return np.linalg.svd(self.template_to_native[:3, :3], compute_uv=False)


def to_sitk(data: np.ndarray, affine: np.ndarray) -> sitk.Image:
    """A canonical RAS array ``(X, Y, Z)`` with its RAS affine as a SimpleITK image (LPS)."""
    a = np.asarray(affine, dtype=np.float64)
    spacing = np.linalg.norm(a[:3, :3], axis=0)
    img = sitk.GetImageFromArray(np.ascontiguousarray(np.transpose(data, (2, 1, 0))))
    img.SetSpacing([float(s) for s in spacing])
    img.SetOrigin([float(v) for v in (_LPS[:3, :3] @ a[:3, 3])])
    img.SetDirection([float(v) for v in (_LPS[:3, :3] @ (a[:3, :3] / spacing)).ravel()])
    return img


def _matrix_ras(transform: sitk.Transform) -> np.ndarray:
    """A SimpleITK affine-family transform (fixed LPS -> moving LPS) as a RAS ``(4, 4)``."""
    t = sitk.AffineTransform(3)
    t.SetMatrix(transform.GetMatrix())
    t.SetTranslation(transform.GetTranslation())
    t.SetCenter(transform.GetCenter())
    m = np.asarray(t.GetMatrix(), dtype=np.float64).reshape(3, 3)
    c = np.asarray(t.GetCenter(), dtype=np.float64)
    lps = np.eye(4)
    lps[:3, :3] = m
    lps[:3, 3] = np.asarray(t.GetTranslation()) + c - m @ c
    return _LPS @ lps @ _LPS


@functools.lru_cache(maxsize=1)
def _fixed() -> tuple[sitk.Image, sitk.Image, float]:
    """Template brain at 2 mm (intensities, mask) and its brain volume in ml."""
    tpl = load_template()
    smooth = ndimage.gaussian_filter(tpl.t1, 0.85)[::2, ::2, ::2]
    brain = tpl.brain[::2, ::2, ::2]
    affine = tpl.affine @ np.diag([2.0, 2.0, 2.0, 1.0])
    image = to_sitk(np.where(brain, smooth, 0.0).astype(np.float32), affine)
    mask = to_sitk(brain.astype(np.uint8), affine)
    return image, mask, float(tpl.brain.sum()) / 1000.0


def _moving(
    data: np.ndarray, mask: np.ndarray, affine: np.ndarray
) -> tuple[sitk.Image, sitk.Image]:
    """The masked brain, reduced to about 2 mm, as SimpleITK images (intensity, mask)."""
    spacing = np.linalg.norm(affine[:3, :3], axis=0)
    step = np.maximum(1, np.floor(_FIXED_SPACING / spacing + 1e-6)).astype(int)
    brain = np.where(mask, data, 0.0).astype(np.float32)
    lo, hi = np.percentile(data[mask], (0.5, 99.5)) if mask.any() else (0.0, 1.0)
    brain = np.clip((brain - lo) / max(hi - lo, 1e-6), 0.0, 1.0) * mask
    # Block averages: anti-aliased and far cheaper than a Gaussian on a 1 mm volume.
    n = [int(d // s) for d, s in zip(brain.shape, step, strict=True)]
    blocks = [(k, int(s)) for k, s in zip(n, step, strict=True)]
    shape = [v for b in blocks for v in b]
    crop = tuple(slice(0, k * int(s)) for k, s in zip(n, step, strict=True))
    small = brain[crop].reshape(shape).mean(axis=(1, 3, 5))
    small_mask = mask[crop].reshape(shape).mean(axis=(1, 3, 5)) > 0.5
    # Block (i, j, k) is centred on voxel i * s + (s - 1) / 2 of the original grid.
    aff = affine @ np.diag([*step.astype(float), 1.0])
    aff[:3, 3] = affine[:3, :3] @ ((step - 1) / 2.0) + affine[:3, 3]
    return to_sitk(small.astype(np.float32), aff), to_sitk(small_mask.astype(np.uint8), aff)


def _method(
    shrink: list[int], smooth: list[float], iterations: int
) -> sitk.ImageRegistrationMethod:
    reg = sitk.ImageRegistrationMethod()
    reg.SetMetricAsMattesMutualInformation(numberOfHistogramBins=32)
    reg.SetMetricSamplingStrategy(reg.RANDOM)
    reg.SetMetricSamplingPercentage(0.1, seed=1234)
    reg.SetInterpolator(sitk.sitkLinear)
    reg.SetOptimizerAsRegularStepGradientDescent(
        learningRate=1.0,
        minStep=1e-4,
        numberOfIterations=iterations,
        relaxationFactor=0.6,
        gradientMagnitudeTolerance=1e-6,
    )
    reg.SetOptimizerScalesFromPhysicalShift()
    reg.SetShrinkFactorsPerLevel(shrink)
    reg.SetSmoothingSigmasPerLevel(smooth)
    reg.SmoothingSigmasAreSpecifiedInPhysicalUnitsOn()
    return reg


def _start(
    fixed_mask: sitk.Image, moving_mask: sitk.Image, scale: float, pitch_deg: float
) -> sitk.Similarity3DTransform:
    """Similarity start: centres of mass aligned, isotropic ``scale``, a rotation about x."""
    init = sitk.CenteredTransformInitializer(
        sitk.Cast(fixed_mask, sitk.sitkFloat32),
        sitk.Cast(moving_mask, sitk.sitkFloat32),
        sitk.Similarity3DTransform(),
        sitk.CenteredTransformInitializerFilter.MOMENTS,
    )
    t = sitk.Similarity3DTransform(init)
    t.SetScale(scale)
    t.SetRotation((1.0, 0.0, 0.0), float(np.deg2rad(pitch_deg)))
    return t


def _scales_ok(m: np.ndarray) -> bool:
    s = np.linalg.svd(m[:3, :3], compute_uv=False)
    return bool((s >= MAX_SCALE[0]).all() and (s <= MAX_SCALE[1]).all())


def _failed(reason: str, t0: float) -> Registration:
    eye = np.eye(4)
    return Registration(eye, eye, False, reason, 0.0, "none", time.perf_counter() - t0)


def register_to_template(data: np.ndarray, mask: np.ndarray, affine: np.ndarray) -> Registration:
    """Registers an extracted brain to the template (similarity, then affine).

    Never raises for a bad image: a failed fit gives ``ok=False`` with the reason.

    Args:
        data: ``(X, Y, Z)`` canonical RAS intensities.
        mask: ``(X, Y, Z)`` bool brain mask from :func:`tumortrace.brain.extract_brain`.
        affine: ``(4, 4)`` voxel -> RAS mm of ``data``.

    Returns:
        :class:`Registration`.
    """
    t0 = time.perf_counter()
    if mask.sum() < 1000:
        return _failed("too little brain to register", t0)
    fixed, fixed_mask, fixed_ml = _fixed()
    moving, moving_mask = _moving(data, mask, affine)
    voxel_ml = float(abs(np.linalg.det(affine[:3, :3]))) / 1000.0
    scale = float(np.clip((mask.sum() * voxel_ml / fixed_ml) ** (1 / 3), *MAX_SCALE))
    try:
        best, best_metric = None, np.inf
        for pitch in REGISTRATION_SETTINGS["pitch_starts_deg"]:
            reg = _method([4], [4.0], 40)
            reg.SetInitialTransform(_start(fixed_mask, moving_mask, scale, pitch), inPlace=True)
            t = reg.Execute(fixed, moving)
            if reg.GetMetricValue() < best_metric:
                best, best_metric = t, reg.GetMetricValue()
        reg = _method([2], [2.0], 60)
        reg.SetInitialTransform(best, inPlace=True)
        similarity = reg.Execute(fixed, moving)
        sim_metric = reg.GetMetricValue()
        sim = _matrix_ras(similarity)
        if not _scales_ok(sim):
            return _failed(
                "the brain could not be matched to the template (scale out of range)", t0
            )
        affine_t = sitk.AffineTransform(3)
        affine_t.SetMatrix(similarity.GetMatrix())
        affine_t.SetTranslation(similarity.GetTranslation())
        affine_t.SetCenter(similarity.GetCenter())
        reg = _method([4, 2], [4.0, 2.0], 60)
        reg.SetInitialTransform(affine_t, inPlace=True)
        result = reg.Execute(fixed, moving)
        full = _matrix_ras(result)
        metric = reg.GetMetricValue()
    except RuntimeError as err:
        return _failed(f"registration did not converge ({str(err).splitlines()[-1][:120]})", t0)
    stage = "affine"
    if not _scales_ok(full):
        full, metric, stage = sim, sim_metric, "similarity"
    return Registration(
        template_to_native=full,
        native_to_template=np.linalg.inv(full),
        ok=True,
        reason="",
        metric=float(metric),
        stage=stage,
        seconds=time.perf_counter() - t0,
    )
