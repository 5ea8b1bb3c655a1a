"""What an explanation is: the named map methods and one network's map of one volume.

:data:`CAM_METHODS` names the production methods (rule and stages read; the rules are computed by
:mod:`tumortrace.explain`). :class:`Explanation` is the result the Predictor hands out, on the
model grid and on the volume grid; :func:`cam_to_volume` maps a model-grid map onto the volume and
:func:`save_cam_nifti` writes it on the source file's grid. No model code here: the report, the
batch writer and the app read these records without running a network.

Axes: maps on the model grid are ``(D, H, W)`` with D = z, H = y, W = x; maps on the volume grid
are ``(X, Y, Z)``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np

from tumortrace.errors import ConfigError
from tumortrace.io import Volume, save_nifti
from tumortrace.preprocess import GridMap, model_to_volume

Rule = Literal["gradcam", "layercam", "gradxact"]


@dataclass(frozen=True)
class CamMethod:
    """One way to turn a forward and a backward pass into a map.

    Attributes:
        name: registry key in :data:`CAM_METHODS`.
        rule: ``"gradcam"``, ``"layercam"`` or ``"gradxact"`` (:mod:`tumortrace.explain`).
        layers: the residual stages read, in forward order (their maps are averaged).
        description: one line for tables and the app.
    """

    name: str
    rule: Rule
    layers: tuple[str, ...]
    description: str


def _method(name: str, rule: Rule, layers: tuple[str, ...], description: str) -> CamMethod:
    return CamMethod(name=name, rule=rule, layers=layers, description=description)


CAM_METHODS: dict[str, CamMethod] = {
    m.name: m
    for m in (
        _method("gradcam-l4", "gradcam", ("layer4",), "Grad-CAM on layer 4 (default until 0.2)"),
        _method("gradcam-l3", "gradcam", ("layer3",), "Grad-CAM on layer 3"),
        _method("gradcam-l34", "gradcam", ("layer3", "layer4"), "Grad-CAM, layers 3 + 4 fused"),
        _method("layercam-l4", "layercam", ("layer4",), "LayerCAM on layer 4"),
        _method("layercam-l3", "layercam", ("layer3",), "LayerCAM on layer 3"),
        _method("layercam-l34", "layercam", ("layer3", "layer4"), "LayerCAM, layers 3 + 4 fused"),
        _method("gradxact-l3", "gradxact", ("layer3",), "gradient x activation on layer 3"),
        _method(
            "gradxact-l34", "gradxact", ("layer3", "layer4"), "gradient x activation, layers 3 + 4"
        ),
    )
}
"""Fast-path methods (one forward + one backward per network), by name."""

LEGACY_CAM_METHOD = "gradcam-l4"
"""The map the app showed before issue 16 (Grad-CAM on the last stage)."""

DEFAULT_CAM_METHOD = "layercam-l34"
"""The method the Predictor uses unless told otherwise (chosen with ``explain-eval``)."""


def get_cam_method(name: str) -> CamMethod:
    """The :class:`CamMethod` called ``name``.

    Raises:
        ConfigError: unknown name (lists the known ones).
    """
    try:
        return CAM_METHODS[name]
    except KeyError:
        raise ConfigError(
            f"Unknown explanation method {name!r}; expected one of {list(CAM_METHODS)} "
            f"(default {DEFAULT_CAM_METHOD!r})."
        ) from None


@dataclass(frozen=True)
class Explanation:
    """One network's map for one volume.

    Attributes:
        arch: network name (``list_models()`` entry).
        target: the class explained, one of ``CLASSES`` (the network's prediction unless the user
            chose another).
        cam_model: ``(D, H, W)`` float32 in [0, 1] on the model grid (1 = strongest evidence); 0
            outside the brain mask.
        cam_volume: ``(X, Y, Z)`` float32 in [0, 1] on ``Volume.data``'s canonical grid; 0 outside
            the model's field of view and outside the brain mask.
        grid: how the model grid maps onto the volume grid (the preprocessing used for ``arch``).
        method: the :data:`CAM_METHODS` name that made the map.
    """

    arch: str
    target: str
    cam_model: np.ndarray
    cam_volume: np.ndarray
    grid: GridMap
    method: str = LEGACY_CAM_METHOD


def cam_to_volume(cam_model: np.ndarray, grid: GridMap) -> np.ndarray:
    """Maps a ``(D, H, W)`` model-grid map onto ``Volume.data``'s ``(X, Y, Z)`` grid.

    Uses the inverse of preprocessing (:func:`tumortrace.preprocess.model_to_volume`, trilinear);
    voxels outside the model's field of view are 0. Values stay in [0, 1].
    """
    out = model_to_volume(cam_model, grid, order=1)
    return np.clip(out, 0.0, 1.0).astype(np.float32, copy=False)


def save_cam_nifti(expl: Explanation, volume: Volume, path: str | Path) -> Path:
    """Writes ``expl.cam_volume`` as NIfTI on the source file's stored grid and original affine.

    The map is moved from the canonical grid back to the array layout the file stored
    (:meth:`Volume.to_original`), so it overlays the source file voxel for voxel in any viewer.

    Args:
        expl: an explanation of ``volume``.
        volume: the volume it explains.
        path: output ``.nii`` or ``.nii.gz`` path (written atomically).

    Returns:
        The written path.

    Raises:
        ConfigError: the map's shape does not match ``volume``.
    """
    if expl.cam_volume.shape != volume.data.shape:
        raise ConfigError(
            f"Grad-CAM map of shape {expl.cam_volume.shape} does not match the volume "
            f"{volume.source!r} of shape {volume.data.shape}; explain this volume first."
        )
    stored = volume.to_original(expl.cam_volume).astype(np.float32, copy=False)
    return save_nifti(stored, volume.original_affine, path)
