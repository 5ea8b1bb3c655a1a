"""Grad-CAM for the video ResNets: a heat map on the model grid and on the original voxel grid.

Grad-CAM (Selvaraju et al., 2017) weights the activations ``A`` of a layer by the spatial mean of
``d logit_target / d A`` and keeps the positive part. The reference implementation is Captum's
``LayerGradCam`` with ``relu_attributions=True`` (:func:`gradcam_captum`). The fast path
(:func:`forward_features` + :func:`gradcam_from_features`) computes the same map from the SAME
forward pass that gives the probabilities:

1. the trunk (stem .. ``layer``) runs once, without autograd (optionally bf16 autocast and
   channels_last_3d), and its output is kept;
2. a float32 leaf copy of that output feeds the rest of the network (``layer``'s successors, the
   pooling and ``fc``) with autograd on, giving the logits;
3. one backward, ``torch.autograd.grad(logit_target, A)``, through those successors only: that is
   the whole backward Grad-CAM needs, because nothing before ``layer`` changes ``d logit / d A``.

Nothing here registers hooks on a model, except :func:`gradcam_captum` (Captum's own, temporary,
removed by Captum even on error), so the fast path may run concurrently on a shared, read-only
model.
torchvision's blocks use in-place ReLU; the fast path never differentiates through them when
``layer`` is the last stage, and where it does (an earlier ``layer``) autograd's version counters
guard correctness.

Axes: model tensors are ``(N, 1, D, H, W)`` with D = z, H = y, W = x (see
:func:`tumortrace.preprocess.to_model_axes`); maps on the volume grid are ``(X, Y, Z)``.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from captum.attr import LayerGradCam
from torch import nn

from tumortrace.config import CLASSES
from tumortrace.errors import ConfigError
from tumortrace.io import Volume, save_nifti
from tumortrace.preprocess import GridMap, model_to_volume

DEFAULT_CAM_LAYER = "layer4"
"""The last residual stage of every network (:func:`tumortrace.models.cam_layer`)."""

_CAM_LAYERS = ("layer1", "layer2", "layer3", "layer4")


@dataclass(frozen=True)
class Explanation:
    """One network's Grad-CAM for one volume.

    Attributes:
        arch: network name (``list_models()`` entry).
        target: the class explained, one of ``CLASSES`` (the network's prediction unless the user
            chose another).
        cam_model: ``(D, H, W)`` float32 in [0, 1] on the model grid (1 = strongest evidence).
        cam_volume: ``(X, Y, Z)`` float32 in [0, 1] on ``Volume.data``'s canonical grid; 0 outside
            the model's field of view.
        grid: how the model grid maps onto the volume grid (the preprocessing used for ``arch``).
    """

    arch: str
    target: str
    cam_model: np.ndarray
    cam_volume: np.ndarray
    grid: GridMap


@dataclass(frozen=True)
class Features:
    """What one forward pass leaves for Grad-CAM.

    Attributes:
        activations: ``(N, C, d, h, w)`` float32 leaf tensor that requires grad: the output of the
            CAM layer, detached from the trunk.
        logits: ``(N, num_classes)`` float32, computed from ``activations`` with autograd on.
    """

    activations: torch.Tensor
    logits: torch.Tensor


def check_cam_layer(model: nn.Module, layer: str = DEFAULT_CAM_LAYER) -> list[str]:
    """Validates that ``model`` is a torchvision ``VideoResNet`` and ``layer`` one of its stages.

    Returns:
        The model's child names in forward order (``stem, layer1 .. layer4, avgpool, fc``).

    Raises:
        ConfigError: unknown layer name (lists the valid ones) or a model of another structure.
    """
    names = [name for name, _ in model.named_children()]
    if names[:1] != ["stem"] or names[-2:] != ["avgpool", "fc"]:
        raise ConfigError(
            f"Grad-CAM expects a network from tumortrace.models.create_model (children stem, "
            f"layer1..layer4, avgpool, fc); got {type(model).__name__} with children {names}."
        )
    if layer not in _CAM_LAYERS or layer not in names:
        raise ConfigError(
            f"Unknown Grad-CAM layer {layer!r}; expected one of {list(_CAM_LAYERS)} "
            f"(default {DEFAULT_CAM_LAYER!r}, the last residual stage)."
        )
    return names


def _run_children(model: nn.Module, x: torch.Tensor, names: list[str]) -> torch.Tensor:
    """Applies the named children in order, exactly as ``VideoResNet.forward`` does."""
    for name in names:
        if name == "fc":
            x = x.flatten(1)
        x = getattr(model, name)(x)
    return x


def _autocast(device_type: str, dtype: torch.dtype | None) -> contextlib.AbstractContextManager:
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device_type, dtype=dtype)


class Trunk(nn.Module):
    """The part of a network up to and including its CAM layer, as one module (e.g. to compile).

    Holds references to the network's own children (no copy). ``forward``:
    ``(N, 1, D, H, W) -> (N, C, d, h, w)``.
    """

    def __init__(self, model: nn.Module, layer: str = DEFAULT_CAM_LAYER) -> None:
        super().__init__()
        names = check_cam_layer(model, layer)
        self.names = names[: names.index(layer) + 1]
        self.body = nn.ModuleDict({n: getattr(model, n) for n in self.names})

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for name in self.names:
            x = self.body[name](x)
        return x


def trunk_dtype(model: nn.Module) -> torch.dtype:
    """Floating dtype of the network's first (stem) parameters: the dtype its input must have."""
    return next(model.stem.parameters()).dtype


def forward_features(
    model: nn.Module,
    x: torch.Tensor,
    layer: str = DEFAULT_CAM_LAYER,
    autocast_dtype: torch.dtype | None = None,
    trunk: Callable[[torch.Tensor], torch.Tensor] | None = None,
) -> Features:
    """One forward pass that yields both the logits and what Grad-CAM needs.

    The trunk (up to and including ``layer``) runs under ``torch.inference_mode`` (and
    autocast when ``autocast_dtype`` is given; a trunk whose weights are already bf16 gets a bf16
    input); the remaining layers run in float32 with autograd on, from a leaf copy of the trunk's
    output. ``model`` is only read: no hooks, no flag changes.

    Args:
        model: a ``VideoResNet`` from ``create_model`` in eval mode.
        x: ``(N, 1, D, H, W)`` float32 (any memory format; channels_last_3d is fastest on CPU when
            the model is in channels_last_3d too).
        layer: the CAM layer (``"layer1"`` .. ``"layer4"``).
        autocast_dtype: e.g. ``torch.bfloat16`` to autocast an fp32 trunk; ``None`` runs the
            trunk in its own dtype.
        trunk: a callable equivalent to :class:`Trunk` ``(model, layer)`` (e.g. its compiled
            version); default: the model's children, eagerly.

    Returns:
        :class:`Features` with ``activations (N, C, d, h, w)`` and ``logits (N, num_classes)``.

    Raises:
        ConfigError: unsupported model structure or layer name.
    """
    names = check_cam_layer(model, layer)
    cut = names.index(layer) + 1
    x = x.to(dtype=trunk_dtype(model))
    with torch.inference_mode(), _autocast(x.device.type, autocast_dtype):
        trunk_out = trunk(x) if trunk is not None else _run_children(model, x, names[:cut])
    # A normal (non-inference) float32 leaf: autograd can differentiate the head w.r.t. it.
    activations = trunk_out.to(
        dtype=torch.float32, memory_format=torch.contiguous_format, copy=True
    )
    activations.requires_grad_(True)
    with torch.enable_grad():
        logits = _run_children(model, activations, names[cut:]).float()
    return Features(activations=activations, logits=logits)


def gradcam_from_features(
    features: Features, target: int, retain_graph: bool = False
) -> torch.Tensor:
    """Grad-CAM at the CAM layer's resolution from a :func:`forward_features` result.

    Same formula as Captum's ``LayerGradCam(..., relu_attributions=True)``:
    ``relu(sum_k mean_{d,h,w}(dy_t / dA_k) * A_k)``. One backward serves the whole batch (items
    are independent, so the gradient of the summed target logits is each item's own gradient).

    Args:
        features: the forward pass's activations and logits.
        target: class index to explain, the same for every item of the batch.
        retain_graph: keep the head's graph so that another target can be explained from the
            same forward pass (the last call should leave it False to free it).

    Returns:
        ``(N, d, h, w)`` float32, >= 0, not normalised.

    Raises:
        ConfigError: ``target`` out of range.
    """
    n_classes = features.logits.shape[1]
    if not 0 <= target < n_classes:
        raise ConfigError(
            f"Grad-CAM target index {target} is out of range; expected 0..{n_classes - 1}."
        )
    (grads,) = torch.autograd.grad(
        features.logits[:, target].sum(), features.activations, retain_graph=retain_graph
    )
    weights = grads.mean(dim=(2, 3, 4), keepdim=True)  # (N, C, 1, 1, 1)
    return F.relu((weights * features.activations.detach()).sum(dim=1))


def gradcam_captum(
    model: nn.Module, x: torch.Tensor, target: int, layer: str = DEFAULT_CAM_LAYER
) -> torch.Tensor:
    """Reference Grad-CAM: Captum ``LayerGradCam`` on ``layer`` with ``relu_attributions=True``.

    Runs its own float32 forward and backward. Captum registers temporary hooks on ``layer`` (and
    removes them even on error), so do not call this on a model that another thread is using; the
    fast path (:func:`forward_features`) has no such restriction.

    Args:
        model: a ``VideoResNet`` in eval mode.
        x: ``(1, 1, D, H, W)`` float32.
        target: class index.
        layer: the CAM layer name.

    Returns:
        ``(d, h, w)`` float32, >= 0, not normalised.
    """
    check_cam_layer(model, layer)
    explainer = LayerGradCam(model, getattr(model, layer))
    with torch.enable_grad():
        attr = explainer.attribute(x, target=target, relu_attributions=True)
    return attr.detach()[0, 0].float()


def upsample_cam(cam: torch.Tensor, shape_dhw: tuple[int, int, int]) -> np.ndarray:
    """Trilinear upsampling to the model grid, then scaling to [0, 1] by the maximum.

    Args:
        cam: ``(d, h, w)`` non-negative map at the CAM layer's resolution.
        shape_dhw: the model grid ``(D, H, W)``.

    Returns:
        ``(D, H, W)`` float32 in [0, 1]; all zeros when the map has no positive evidence.
    """
    up = F.interpolate(
        cam.detach().float()[None, None],
        size=tuple(shape_dhw),
        mode="trilinear",
        align_corners=False,
    )[0, 0].clamp_min_(0)
    peak = float(up.max())
    if peak > 0:
        up /= peak
    return up.cpu().numpy().astype(np.float32, copy=False)


def cam_to_volume(cam_model: np.ndarray, grid: GridMap) -> np.ndarray:
    """Maps a ``(D, H, W)`` model-grid map onto ``Volume.data``'s ``(X, Y, Z)`` grid.

    Uses the inverse of preprocessing (:func:`tumortrace.preprocess.model_to_volume`, trilinear);
    voxels outside the model's field of view are 0. Values stay in [0, 1].
    """
    out = model_to_volume(cam_model, grid, order=1)
    return np.clip(out, 0.0, 1.0).astype(np.float32, copy=False)


def make_explanation(
    arch: str, target: int, cam: torch.Tensor, grid: GridMap, shape_dhw: tuple[int, int, int]
) -> Explanation:
    """An :class:`Explanation` from a raw ``(d, h, w)`` map (upsample, normalise, map back)."""
    cam_model = upsample_cam(cam, shape_dhw)
    return Explanation(
        arch=arch,
        target=CLASSES[target],
        cam_model=cam_model,
        cam_volume=cam_to_volume(cam_model, grid),
        grid=grid,
    )


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
