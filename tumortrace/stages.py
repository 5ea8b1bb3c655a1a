"""A torchvision video ResNet walked stage by stage, as the maps and the Predictor need it.

:func:`check_cam_layer` validates the network's structure and a stage name; :func:`run_children`
applies children in ``VideoResNet.forward``'s order; :class:`Trunk` is the network up to a stage
as one module (to cast or compile); :func:`trunk_dtype` is the dtype the input must have; and
:func:`logits_of` runs the whole network without autograd when the stages may be bf16.

Nothing here registers hooks or changes flags: a shared, read-only model stays so.

Axes: model tensors are ``(N, 1, D, H, W)`` with D = z, H = y, W = x.
"""

from __future__ import annotations

import torch
from torch import nn

from tumortrace.errors import ConfigError

DEFAULT_CAM_LAYER = "layer4"
"""The last residual stage of every network (:func:`tumortrace.models.create_model`)."""

CAM_LAYERS = ("layer1", "layer2", "layer3", "layer4")
"""The residual stages a map may read, in forward order."""


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
    if layer not in CAM_LAYERS or layer not in names:
        raise ConfigError(
            f"Unknown Grad-CAM layer {layer!r}; expected one of {list(CAM_LAYERS)} "
            f"(default {DEFAULT_CAM_LAYER!r}, the last residual stage)."
        )
    return names


def run_children(model: nn.Module, x: torch.Tensor, names: list[str]) -> torch.Tensor:
    """Applies the named children in order, exactly as ``VideoResNet.forward`` does."""
    for name in names:
        if name == "fc":
            x = x.flatten(1)
        x = getattr(model, name)(x)
    return x


class Trunk(nn.Module):
    """The part of a network up to and including a stage, as one module (e.g. to compile).

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


def logits_of(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """``(N, K)`` float32 logits without autograd, for a model whose stages may be bf16.

    The input is cast to the stem's dtype and the stages' output to float32 before the pooling
    (how the Predictor's prepared models run).
    """
    names = check_cam_layer(model)
    with torch.inference_mode():
        h = run_children(model, x.to(trunk_dtype(model)), names[: names.index("avgpool")])
        return run_children(model, h.float(), names[names.index("avgpool") :]).float()
