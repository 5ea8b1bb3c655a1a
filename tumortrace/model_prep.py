"""Model preparation for inference: the settings record and a loaded network made fast and shared.

:class:`InferenceSettings` says how the Predictor runs its networks; :func:`prepare_model` makes
a freshly loaded network ready for shared, read-only inference (eval mode, frozen, BatchNorm
folded by :func:`fuse_batchnorm`, channels_last_3d, the trunk cast to bf16 where the device
computes it natively). Re-exported by :mod:`tumortrace.infer`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_eval

from tumortrace.errors import ConfigError
from tumortrace.explanation import DEFAULT_CAM_METHOD, get_cam_method
from tumortrace.models import is_baseline
from tumortrace.runtime import fast_dtype, resolve_device
from tumortrace.stages import Trunk, check_cam_layer

Precision = Literal["auto", "bf16", "fp32"]


@dataclass(frozen=True)
class InferenceSettings:
    """How the Predictor runs its networks (defaults are what measured fastest on CPU).

    Attributes:
        precision: ``"bf16"`` weights and activations in the convolutional trunk, ``"fp32"``, or
            ``"auto"`` (bf16 where the device computes it natively, else fp32: the one rule of
            :func:`tumortrace.runtime.native_bf16`, shared with training). The layers after
            the CAM layer always run in fp32. Probabilities agree with fp32 within 0.02 (tested).
        channels_last: keep weights and inputs in ``channels_last_3d`` (oneDNN's native layout;
            about 2x faster than contiguous with bf16 on CPU).
        fuse_bn: fold eval-mode BatchNorm into the preceding convolutions (exact up to rounding).
        cam_method: the map (:data:`tumortrace.explanation.CAM_METHODS`), one forward + one
            backward.
        restrict_to_brain: zero the map outside the brain mask on the model grid.
        device: ``"cpu"``, ``"cuda"`` or ``"auto"``.
        compile: ``torch.compile`` the trunk (inductor, weights frozen) when the Predictor is built,
            warmed up at each card's model grid; later calls at that grid skip compilation.
        input_checks: :func:`tumortrace.batch.predict_paths` runs brain extraction, registration and
            the input checks (:mod:`tumortrace.standard`) for every file, also for legacy
            native-space cards (standard-space cards always need them, whatever this says).
        focus: also map each network's tumour log-odds and pool the maps into the analysis's
            :class:`tumortrace.focus.Focus` (where the app's viewer opens; one more short backward
            per network). Off: ``Analysis.focus`` is None.
    """

    precision: Precision = "auto"
    channels_last: bool = True
    fuse_bn: bool = True
    cam_method: str = DEFAULT_CAM_METHOD
    restrict_to_brain: bool = True
    device: str = "cpu"
    compile: bool = False
    input_checks: bool = True
    focus: bool = True

    def resolved_device(self) -> torch.device:
        """The torch device (:func:`tumortrace.runtime.resolve_device`)."""
        return resolve_device(self.device)

    def compute_dtype(self) -> torch.dtype:
        """``torch.bfloat16`` or ``torch.float32``: the dtype of the trunk's weights and input."""
        if self.precision not in ("auto", "bf16", "fp32"):
            raise ConfigError(
                f"Unknown precision {self.precision!r}; expected 'auto', 'bf16' or 'fp32'."
            )
        if self.precision == "fp32":
            return torch.float32
        if self.precision == "bf16":
            return torch.bfloat16
        return fast_dtype(self.resolved_device())


def fuse_batchnorm(model: nn.Module) -> nn.Module:
    """Folds every eval-mode ``BatchNorm3d`` into the convolution that feeds it, in place.

    In torchvision's video ResNets a BatchNorm always follows, inside an ``nn.Sequential``, either a
    ``Conv3d`` or a ``Sequential`` ending in one (``Conv2Plus1D``); the BatchNorm becomes an
    ``nn.Identity``. Call only on a model in eval mode that nothing else uses yet.

    Returns:
        ``model`` (for chaining).
    """

    def last_conv(m: nn.Module) -> tuple[nn.Module, int] | None:
        # (parent, index) of the Conv3d whose output m produces, when m ends in one.
        if isinstance(m, nn.Sequential) and len(m) > 0:
            if isinstance(m[-1], nn.Conv3d):
                return m, len(m) - 1
            return last_conv(m[-1])
        return None

    for seq in [m for m in model.modules() if isinstance(m, nn.Sequential)]:
        for i in range(len(seq) - 1):
            if not isinstance(seq[i + 1], nn.BatchNorm3d):
                continue
            if isinstance(seq[i], nn.Conv3d):
                parent, j = seq, i
            else:
                found = last_conv(seq[i])
                if found is None:
                    continue
                parent, j = found
            parent[j] = fuse_conv_bn_eval(parent[j], seq[i + 1])
            seq[i + 1] = nn.Identity()
    return model


def prepare_model(model: nn.Module, settings: InferenceSettings) -> nn.Module:
    """Makes a freshly loaded model ready for shared, read-only inference, in place.

    Eval mode, no parameter gradients, BatchNorm folded (``settings.fuse_bn``), moved to the
    device, channels_last_3d (``settings.channels_last``), and the trunk (up to the CAM layer)
    cast to :meth:`InferenceSettings.compute_dtype`. Storing bf16 weights gives the numerics of
    bf16 autocast without re-casting every weight on every call (about 30% faster here); the
    pooling and ``fc`` stay fp32 for the logits.
    """
    model.eval()
    model.requires_grad_(False)
    if is_baseline(getattr(model, "arch", "")):  # no map, no trunk: fp32 on the device
        return model.to(settings.resolved_device())
    get_cam_method(settings.cam_method)
    check_cam_layer(model, "layer4")
    if settings.fuse_bn:
        fuse_batchnorm(model)
    model.to(settings.resolved_device())
    if settings.channels_last:
        model.to(memory_format=torch.channels_last_3d)
    reference = getattr(getattr(model, "stem", None), "input_reference", None)
    Trunk(model, "layer4").to(settings.compute_dtype())  # every stage; pooling and fc stay fp32
    if reference is not None:  # the input reference stays fp32 (see models._subtract_reference)
        model.stem.input_reference = reference.float()
    return model
