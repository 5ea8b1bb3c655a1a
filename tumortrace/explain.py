"""Class-activation maps for the video ResNets, on the model grid and on the volume grid.

Every production method (:data:`tumortrace.explanation.CAM_METHODS`) costs one
forward and one backward pass per network and reads activations ``A`` of one or two residual stages
and the gradient ``g = d logit_t / d A``:

* ``gradcam`` (Selvaraju et al., 2017): ``relu(sum_k mean_{d,h,w}(g_k) * A_k)``; the reference is
  Captum's ``LayerGradCam(..., relu_attributions=True)``
  (:func:`tumortrace.captum_reference.gradcam_captum`);
* ``layercam`` (Jiang et al., 2021, LayerCAM): ``sum_k relu(g_k) * A_k``, a weight per location,
  so it keeps the detail of an earlier, finer stage;
* ``gradxact`` (gradient x activation): ``relu(sum_k g_k * A_k)``; the reference is Captum's
  ``LayerGradientXActivation`` summed over channels.

Maps of several stages (e.g. ``layercam-l34``, layer 3 and layer 4) are each upsampled
(trilinear) to the model grid, scaled to a maximum of 1 and averaged. The map is then restricted to
a brain mask on the model grid (:func:`brain_mask_on_model_grid`) and scaled to [0, 1];
:func:`make_explanation` turns it into an :class:`~tumortrace.explanation.Explanation`.

The same rules map any score of the logits (:func:`score_maps`); the focus
(:mod:`tumortrace.focus`) maps the tumour log-odds :func:`tumour_log_odds`, what raised the odds
of LGG or HGG over healthy, with one more backward from the same forward pass.

Fast path (:func:`forward_features` + :func:`cam_maps`): the trunk (stem .. the first stage read,
:class:`~tumortrace.stages.Trunk`) runs once under ``torch.inference_mode``, in the trunk's own
dtype (bf16 weights where the Predictor stores them); the rest of the network runs with autograd
from a leaf copy of the trunk's output and gives the logits; one ``torch.autograd.grad`` call
returns the gradients of every stage read. Nothing before the first stage read changes those
gradients, so that is the whole backward.

Slow references, for the benchmark only (:mod:`tumortrace.explain_eval`), live in
:mod:`tumortrace.captum_reference`: Captum's ``GuidedGradCam`` (``guided_gradcam_captum``, a full
backward to the input through guided ReLUs) and ``Occlusion`` (``occlusion_captum``, one forward
per occluded window).

Nothing here registers hooks on a model except the Captum references (temporary, removed by
Captum even on error), so the fast path may run concurrently on a shared, read-only model.
torchvision's blocks use in-place ReLU; autograd's version counters guard the stages that the
fast path differentiates through.

Axes: model tensors are ``(N, 1, D, H, W)`` with D = z, H = y, W = x (see
:func:`tumortrace.preprocess.to_model_axes`); maps on the volume grid are ``(X, Y, Z)``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from tumortrace.config import CLASSES, TUMOUR_CLASSES
from tumortrace.errors import ConfigError
from tumortrace.explanation import (
    LEGACY_CAM_METHOD,
    CamMethod,
    Explanation,
    Rule,
    cam_to_volume,
    get_cam_method,
)
from tumortrace.preprocess import GridMap, foreground_mask, from_model_axes
from tumortrace.stages import (
    CAM_LAYERS,
    DEFAULT_CAM_LAYER,
    check_cam_layer,
    run_children,
    trunk_dtype,
)


@dataclass(frozen=True)
class Features:
    """What one forward pass leaves for the maps.

    Attributes:
        activations: ``{stage: (N, C, d, h, w)}`` outputs of the stages read; the first is a leaf
            tensor that requires grad (detached from the trunk), the others depend on it.
        logits: ``(N, num_classes)`` float32, computed from the first activation with autograd on.
    """

    activations: dict[str, torch.Tensor]
    logits: torch.Tensor


def _check_layers(model: nn.Module, layers: Sequence[str]) -> list[str]:
    """The model's children after validating ``layers`` (non-empty, in forward order)."""
    if not layers:
        raise ConfigError("An explanation method must read at least one stage; got none.")
    names = check_cam_layer(model, layers[0])
    for layer in layers[1:]:
        check_cam_layer(model, layer)
    order = [names.index(layer) for layer in layers]
    if order != sorted(set(order)):
        raise ConfigError(f"Stages {list(layers)} must be distinct and in forward order.")
    return names


def forward_features(
    model: nn.Module,
    x: torch.Tensor,
    layers: str | Sequence[str] = DEFAULT_CAM_LAYER,
    trunk: Callable[[torch.Tensor], torch.Tensor] | None = None,
) -> Features:
    """One forward pass that yields both the logits and what the maps need.

    The trunk (up to and including ``layers[0]``) runs under ``torch.inference_mode`` in its own
    dtype; the remaining stages run with autograd on, from a leaf copy of the trunk's output, in
    their own dtype; pooling and ``fc`` run in float32. ``model`` is only read: no hooks, no flag
    changes.

    Args:
        model: a ``VideoResNet`` from ``create_model`` in eval mode.
        x: ``(N, 1, D, H, W)`` float32 (any memory format; channels_last_3d is fastest on CPU when
            the model is in channels_last_3d too).
        layers: the stage (``"layer1"`` .. ``"layer4"``) or stages, in forward order, to read.
        trunk: a callable equivalent to :class:`tumortrace.stages.Trunk` ``(model, layers[0])``
            (e.g. its compiled version); default: the model's children, eagerly.

    Returns:
        :class:`Features` with ``activations {stage: (N, C, d, h, w)}`` and ``logits (N, K)``.

    Raises:
        ConfigError: unsupported model structure or stage names.
    """
    layers = (layers,) if isinstance(layers, str) else tuple(layers)
    names = _check_layers(model, layers)
    cut = names.index(layers[0]) + 1
    x = x.to(dtype=trunk_dtype(model))
    with torch.inference_mode():
        trunk_out = trunk(x) if trunk is not None else run_children(model, x, names[:cut])
    # A normal (non-inference) leaf: autograd can differentiate the rest w.r.t. it. It stays in the
    # dtype of the stages that follow it (float32 when only the pooling and fc follow).
    rest = names[cut:]
    stage_dtype = (
        next(getattr(model, rest[0]).parameters()).dtype
        if rest[0] in CAM_LAYERS
        else (torch.float32)
    )
    leaf = trunk_out.to(dtype=stage_dtype, memory_format=torch.contiguous_format, copy=True)
    leaf.requires_grad_(True)
    activations = {layers[0]: leaf}
    with torch.enable_grad():
        h = leaf
        for name in rest:
            if name == "avgpool":
                h = h.float()
            if name == "fc":
                h = h.flatten(1)
            h = getattr(model, name)(h)
            if name in layers:
                activations[name] = h
        logits = h.float()
    return Features(activations=activations, logits=logits)


def _check_target(features: Features, target: int) -> None:
    n_classes = features.logits.shape[1]
    if not 0 <= target < n_classes:
        raise ConfigError(
            f"Grad-CAM target index {target} is out of range; expected 0..{n_classes - 1}."
        )


def cam_maps(
    features: Features, target: int, rule: Rule = "gradcam", retain_graph: bool = False
) -> dict[str, torch.Tensor]:
    """Each stage's map of class ``target`` at its own resolution, from a
    :func:`forward_features` result (:func:`score_maps` of the target's logit).

    One backward serves the whole batch (items are independent, so the gradient of the summed
    target logits is each item's own gradient) and every stage read.

    Args:
        features: the forward pass's activations and logits.
        target: class index to explain, the same for every item of the batch.
        rule: ``"gradcam"``, ``"layercam"`` or ``"gradxact"`` (module docstring).
        retain_graph: keep the graph so that another target can be explained from the same
            forward pass (the last call should leave it False to free it).

    Returns:
        ``{stage: (N, d, h, w)}`` float32, >= 0, not normalised.

    Raises:
        ConfigError: ``target`` out of range or unknown rule.
    """
    _check_target(features, target)
    return score_maps(features, features.logits[:, target], rule, retain_graph)


def tumour_log_odds(logits: torch.Tensor) -> torch.Tensor:
    """``(N,)`` log-odds of a tumour: ``log((P(LGG) + P(HGG)) / P(healthy))`` from ``(N, 3)``
    logits in :data:`CLASSES` order (a logsumexp of the tumour logits minus the healthy one)."""
    tumour = [CLASSES.index(c) for c in TUMOUR_CLASSES]
    return torch.logsumexp(logits[:, tumour], dim=1) - logits[:, CLASSES.index("healthy")]


def score_maps(
    features: Features, score: torch.Tensor, rule: Rule = "gradcam", retain_graph: bool = False
) -> dict[str, torch.Tensor]:
    """Each stage's map of any ``(N,)`` score computed from ``features.logits`` (a class logit,
    or :func:`tumour_log_odds`): what raised that score, by ``rule``.

    Returns:
        ``{stage: (N, d, h, w)}`` float32, >= 0, not normalised.

    Raises:
        ConfigError: unknown rule.
    """
    if rule not in ("gradcam", "layercam", "gradxact"):
        raise ConfigError(f"Unknown map rule {rule!r}; expected gradcam, layercam or gradxact.")
    stages = list(features.activations)
    grads = torch.autograd.grad(
        score.sum(),
        [features.activations[s] for s in stages],
        retain_graph=retain_graph,
    )
    out: dict[str, torch.Tensor] = {}
    for stage, grad in zip(stages, grads, strict=True):
        act = features.activations[stage].detach().float()
        grad = grad.float()
        if rule == "gradcam":
            weights = grad.mean(dim=(2, 3, 4), keepdim=True)  # (N, C, 1, 1, 1)
            out[stage] = F.relu((weights * act).sum(dim=1))
        elif rule == "layercam":
            out[stage] = (F.relu(grad) * act).sum(dim=1).clamp_min(0)
        else:
            out[stage] = F.relu((grad * act).sum(dim=1))
    return out


def gradcam_from_features(
    features: Features, target: int, retain_graph: bool = False
) -> torch.Tensor:
    """Grad-CAM at the first stage read, from a :func:`forward_features` result.

    Same formula as Captum's ``LayerGradCam(..., relu_attributions=True)``:
    ``relu(sum_k mean_{d,h,w}(dy_t / dA_k) * A_k)``.

    Returns:
        ``(N, d, h, w)`` float32, >= 0, not normalised.

    Raises:
        ConfigError: ``target`` out of range.
    """
    _check_target(features, target)
    first = next(iter(features.activations))
    single = Features(activations={first: features.activations[first]}, logits=features.logits)
    return cam_maps(single, target, "gradcam", retain_graph=retain_graph)[first]


def fuse_maps(maps: Mapping[str, torch.Tensor], shape_dhw: tuple[int, int, int]) -> torch.Tensor:
    """Upsamples each stage's map (trilinear) to the model grid and averages their unit-max copies.

    Args:
        maps: ``{stage: (N, d, h, w)}`` non-negative maps (from :func:`cam_maps`).
        shape_dhw: the model grid ``(D, H, W)``.

    Returns:
        ``(N, D, H, W)`` float32, >= 0; a single stage is upsampled but not rescaled.
    """
    ups = []
    for cam in maps.values():
        up = F.interpolate(
            cam.detach().float()[:, None],
            size=tuple(shape_dhw),
            mode="trilinear",
            align_corners=False,
        )[:, 0].clamp_min_(0)
        ups.append(up)
    if len(ups) == 1:
        return ups[0]
    scaled = [u / u.amax(dim=(1, 2, 3), keepdim=True).clamp_min(1e-12) for u in ups]
    return torch.stack(scaled).mean(0)


def finish_map(cam: torch.Tensor, mask: np.ndarray | torch.Tensor | None = None) -> np.ndarray:
    """Restricts a model-grid map to ``mask`` and scales it to [0, 1] by its maximum.

    Args:
        cam: ``(D, H, W)`` non-negative map on the model grid.
        mask: ``(D, H, W)`` bool brain mask on the model grid, or None (no restriction).

    Returns:
        ``(D, H, W)`` float32 in [0, 1]; all zeros when no positive evidence is left.

    Raises:
        ConfigError: a mask of another shape.
    """
    out = cam.detach().float().clamp_min(0)
    if mask is not None:
        m = torch.as_tensor(np.asarray(mask, dtype=bool) if not torch.is_tensor(mask) else mask)
        if tuple(m.shape) != tuple(out.shape):
            raise ConfigError(
                f"Brain mask of shape {tuple(m.shape)} does not match the model grid "
                f"{tuple(out.shape)}; pass a (D, H, W) mask on the model grid."
            )
        out = out * m.to(device=out.device, dtype=out.dtype)
    peak = float(out.max())
    if peak > 0:
        out = out / peak
    return out.cpu().numpy().astype(np.float32, copy=False)


def brain_mask_on_model_grid(tensor: torch.Tensor | np.ndarray) -> np.ndarray:
    """The foreground (head or brain) of a preprocessed model input, as a model-grid mask.

    Stand-in until the standard-space pipeline supplies a brain mask on the model grid (pass that
    one to :func:`finish_map` instead): :func:`tumortrace.preprocess.foreground_mask` (Otsu, largest
    component, holes filled) on the normalised input, so air is excluded, the skull of a skull-on
    head is not.

    Args:
        tensor: ``(1, D, H, W)`` or ``(D, H, W)`` model input.

    Returns:
        ``(D, H, W)`` bool.
    """
    a = tensor.detach().cpu().float().numpy() if torch.is_tensor(tensor) else np.asarray(tensor)
    a = a.reshape(a.shape[-3:])
    return np.ascontiguousarray(from_model_axes(foreground_mask(from_model_axes(a))))


def explain_batch(
    model: nn.Module,
    x: torch.Tensor,
    method: str | CamMethod,
    target: int | None = None,
    trunk: Callable[[torch.Tensor], torch.Tensor] | None = None,
    retain_graph: bool = False,
) -> tuple[Features, int, torch.Tensor]:
    """Forward, prediction and the (upsampled, fused, not yet masked) map of one method.

    Args:
        model: a prepared ``VideoResNet``.
        x: ``(N, 1, D, H, W)`` input.
        method: a :data:`tumortrace.explanation.CAM_METHODS` name or :class:`CamMethod`.
        target: class index to explain; None explains the prediction (mean probabilities).
        trunk: compiled trunk up to ``method.layers[0]``, or None.
        retain_graph: keep the graph to explain another target with :func:`cam_maps`.

    Returns:
        ``(features, target, cam (N, D, H, W) float32 >= 0)``.
    """
    m = get_cam_method(method) if isinstance(method, str) else method
    feats = forward_features(model, x, m.layers, trunk=trunk)
    if target is None:
        probs = torch.softmax(feats.logits.detach().double(), dim=1).mean(0)
        target = int(torch.argmax(probs))
    maps = cam_maps(feats, target, m.rule, retain_graph=retain_graph)
    return feats, target, fuse_maps(maps, tuple(x.shape[-3:]))


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


def make_explanation(
    arch: str,
    target: int,
    cam: torch.Tensor,
    grid: GridMap,
    shape_dhw: tuple[int, int, int],
    mask: np.ndarray | torch.Tensor | None = None,
    method: str = LEGACY_CAM_METHOD,
) -> Explanation:
    """An :class:`Explanation` from a raw map (upsample if needed, mask, normalise, map back).

    Args:
        arch: network name.
        target: class index explained.
        cam: ``(d, h, w)`` map at a stage's resolution or ``(D, H, W)`` on the model grid, >= 0.
        grid: the model grid -> volume grid map.
        shape_dhw: the model grid ``(D, H, W)``.
        mask: ``(D, H, W)`` bool brain mask on the model grid, or None.
        method: the method name recorded in the explanation.
    """
    if tuple(cam.shape) != tuple(shape_dhw):
        cam = fuse_maps({"map": cam[None]}, shape_dhw)[0]
    cam_model = finish_map(cam, mask)
    return Explanation(
        arch=arch,
        target=CLASSES[target],
        cam_model=cam_model,
        cam_volume=cam_to_volume(cam_model, grid),
        grid=grid,
        method=method,
    )
