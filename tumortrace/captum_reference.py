"""Captum's maps, the slow references the fast path is checked and benchmarked against.

* :func:`gradcam_captum`: ``LayerGradCam(..., relu_attributions=True)``, the formula of the fast
  ``gradcam`` rule (:func:`tumortrace.explain.gradcam_from_features`);
* :func:`guided_gradcam_captum`: ``GuidedGradCam``, a full backward to the input through guided
  ReLUs (on a :func:`reference_copy`);
* :func:`occlusion_captum`: ``Occlusion``, one forward per occluded window.

Used by the tests and the benchmark (:mod:`tumortrace.explain_eval`), never by the Predictor.
Captum registers temporary hooks (removed even on error), so never call these on a model that
another thread is using; the fast path (:func:`tumortrace.explain.forward_features`) has no such
restriction.

Axes: model tensors are ``(N, 1, D, H, W)`` with D = z, H = y, W = x.
"""

from __future__ import annotations

import copy

import torch
from captum.attr import GuidedGradCam, LayerGradCam, Occlusion
from torch import nn

from tumortrace.stages import DEFAULT_CAM_LAYER, check_cam_layer, logits_of


def reference_copy(model: nn.Module) -> nn.Module:
    """A float32 copy with out-of-place ReLUs, for Captum's hooks (the original is untouched)."""
    ref = copy.deepcopy(model).float().eval()  # keeps channels_last_3d weights (faster on CPU)
    for m in ref.modules():
        if isinstance(m, nn.ReLU):
            m.inplace = False
    return ref


def gradcam_captum(
    model: nn.Module, x: torch.Tensor, target: int, layer: str = DEFAULT_CAM_LAYER
) -> torch.Tensor:
    """Reference Grad-CAM: Captum ``LayerGradCam`` on ``layer`` with ``relu_attributions=True``.

    Runs its own float32 forward and backward. Captum registers temporary hooks on ``layer`` (and
    removes them even on error), so do not call this on a model that another thread is using; the
    fast path (:func:`tumortrace.explain.forward_features`) has no such restriction.

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


def guided_gradcam_captum(
    model: nn.Module, x: torch.Tensor, target: int, layer: str = DEFAULT_CAM_LAYER
) -> torch.Tensor:
    """Reference Guided Grad-CAM: Captum ``GuidedGradCam`` (guided backprop x upsampled Grad-CAM).

    A full backward to the input through guided ReLUs. Captum hooks every ReLU of ``model``
    (temporarily), which needs float32 weights and out-of-place ReLUs: pass a
    :func:`reference_copy`, never a model other threads use. The positive part is kept.

    Args:
        model: a float32 ``VideoResNet`` in eval mode with out-of-place ReLUs.
        x: ``(1, 1, D, H, W)`` input.
        target: class index.
        layer: the stage whose Grad-CAM gates the guided gradients.

    Returns:
        ``(D, H, W)`` float32 >= 0 on the model grid, not normalised.
    """
    check_cam_layer(model, layer)
    explainer = GuidedGradCam(model, getattr(model, layer))
    xin = x.detach().float().clone().requires_grad_(True)
    with torch.enable_grad():
        attr = explainer.attribute(xin, target=target, interpolate_mode="trilinear")
    return attr.detach()[0, 0].float().clamp_min(0)


def occlusion_captum(
    model: nn.Module,
    x: torch.Tensor,
    target: int,
    window_dhw: tuple[int, int, int] = (4, 8, 8),
    per_eval: int = 16,
) -> torch.Tensor:
    """Reference occlusion map: Captum ``Occlusion``, the drop in the target logit per window.

    Windows of ``window_dhw`` voxels (stride = window) are set to 0, the mean brain intensity of a
    z-scored input; one forward per window, ``per_eval`` windows per batch.

    Args:
        model: a ``VideoResNet`` in eval mode, e.g. a Predictor's prepared one (read only).
        x: ``(1, 1, D, H, W)`` input.
        target: class index.
        window_dhw: occluded block size in model voxels.
        per_eval: occluded copies per forward batch.

    Returns:
        ``(D, H, W)`` float32 >= 0 on the model grid, not normalised.
    """
    explainer = Occlusion(lambda inp: logits_of(model, inp))
    with torch.inference_mode():
        attr = explainer.attribute(
            x.detach().float(),
            sliding_window_shapes=(1, *window_dhw),
            strides=(1, *window_dhw),
            baselines=0.0,
            target=target,
            perturbations_per_eval=per_eval,
        )
    return attr.detach()[0, 0].float().clamp_min(0)
