"""Lesion-supervised training: the auxiliary lesion head, the attention term, the glioma loss.

What a training step adds to the class label when masks exist (GAIN, Li et al. CVPR 2018, "extra
supervision"; Ross et al. IJCAI 2017, "right for the right reasons"):

* :class:`Supervised` wraps a torchvision video ResNet (the network itself is unchanged, so the
  app's architecture stays R(2+1)D-18 / MC3-18 / R3D-18) with a **lesion head**, a 1x1x1
  ``Conv3d`` on the ``layer3`` (or ``layer2``) features, and returns the logits, the head's lesion
  logits and the ``layer4`` features in one forward pass (:class:`Outputs`).
* :func:`lesion_loss`: ``BCE + soft Dice`` of the head against the lesion mask downsampled to the
  head's grid by **area** (adaptive average pooling: each cell's target is the lesion fraction of
  the model voxels it covers). A healthy case's target is all zeros; a case whose mask is unknown
  adds nothing.
* :func:`class_activation` and :func:`attention_loss`: the CAM ``Σ_k w_ck A_k`` from the
  ``layer4`` features ``A`` and the ``fc`` weights ``w`` (a plain forward expression: no double
  backward), trilinearly upsampled to the model grid as the app shows maps; the loss is the share
  of its positive energy outside the lesion dilated by ``margin`` voxels, on tumour cases with a
  known, non-empty mask.
* :func:`classification_loss`: class-weighted cross entropy for graded cases and
  ``-log(p_LGG + p_HGG)`` for a glioma of unknown grade (label
  :data:`~tumortrace.config.GLIOMA_INDEX`), right whatever the grade.

The head is used in training only: the shipped weights are the network's alone (the resume file
keeps the head so an interrupted fold continues with it).

Axes: model tensors are ``(N, 1, D, H, W)`` with D = z, H = y, W = x.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from torch.nn import functional as F

from tumortrace.config import CLASSES, GLIOMA_INDEX, LESION_LAYERS, TrainConfig
from tumortrace.errors import ConfigError
from tumortrace.stages import check_cam_layer, run_children

HEALTHY_INDEX = CLASSES.index("healthy")
TUMOUR_INDICES: tuple[int, int] = (CLASSES.index("lgg"), CLASSES.index("hgg"))
DICE_SMOOTH = 1.0
"""Additive smoothing of the soft Dice (voxels of the head's grid): an all-zero target then asks
for an all-zero prediction instead of dividing by zero."""
_EPS = 1e-6


@dataclass(frozen=True)
class Outputs:
    """One supervised forward pass.

    Attributes:
        logits: ``(N, C)`` class logits, exactly the network's own ``forward``.
        lesion: ``(N, 1, d, h, w)`` lesion logits of the head on its stage's grid, or None.
        features: ``(N, 512, d4, h4, w4)`` ``layer4`` output (what the CAM weighs).
    """

    logits: torch.Tensor
    lesion: torch.Tensor | None
    features: torch.Tensor


def stage_channels(model: nn.Module, layer: str) -> int:
    """Output channels of stage ``layer`` of a video ResNet (64, 128, 256, 512 for layer1-4): the
    width of its last batch norm."""
    norms = [m for m in getattr(model, layer).modules() if isinstance(m, nn.BatchNorm3d)]
    return int(norms[-1].num_features)


def fc_linear(model: nn.Module) -> nn.Linear:
    """The network's final ``nn.Linear`` (``fc`` or the last layer of an ``fc`` Sequential)."""
    fc = model.fc
    if isinstance(fc, nn.Linear):
        return fc
    linears = [m for m in fc.modules() if isinstance(m, nn.Linear)]
    if not linears:
        raise ConfigError(f"The network's fc ({type(fc).__name__}) holds no nn.Linear.")
    return linears[-1]


class Supervised(nn.Module):
    """A video ResNet with an optional auxiliary 1x1x1 lesion head on one of its stages.

    ``forward(x (N, 1, D, H, W))`` returns the tuple ``(logits, lesion, features)`` of
    :class:`Outputs` (a tuple, which DistributedDataParallel passes through; :meth:`outputs`
    wraps it). The children run in ``VideoResNet.forward``'s order (the stem's pre-hooks, e.g. the
    input reference, included), so ``logits`` equals ``network(x)``. State-dict keys:
    ``network.*`` and ``head.*``.

    Args:
        network: from :func:`tumortrace.models.create_model` (a video network, not a baseline).
        layer: ``"layer2"`` or ``"layer3"``: the stage the head reads; None: no head (the
            attention term alone needs only the ``layer4`` features).

    Raises:
        ConfigError: another layer, or a network without the video ResNet's stages.
    """

    def __init__(self, network: nn.Module, layer: str | None = "layer3") -> None:
        super().__init__()
        if layer is not None and layer not in LESION_LAYERS:
            raise ConfigError(f"--lesion-layer {layer!r}; expected one of {list(LESION_LAYERS)}.")
        names = check_cam_layer(network)
        self.network = network
        self.layer = layer
        self.trunk = names[: names.index("avgpool")]
        self.head: nn.Conv3d | None = None
        if layer is not None:
            self.head = nn.Conv3d(stage_channels(network, layer), 1, kernel_size=1)
            nn.init.normal_(self.head.weight, 0.0, 0.01)
            nn.init.zeros_(self.head.bias)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor]:
        lesion = None
        for name in self.trunk:
            x = getattr(self.network, name)(x)
            if name == self.layer:
                lesion = self.head(x)
        logits = run_children(self.network, x, ["avgpool", "fc"])
        return logits, lesion, x

    def outputs(self, x: torch.Tensor) -> Outputs:
        """:meth:`forward` as :class:`Outputs`."""
        return Outputs(*self(x))


# --------------------------------------------------------------------------- losses


def classification_loss(
    logits: torch.Tensor, labels: torch.Tensor, weight: torch.Tensor | None = None
) -> torch.Tensor:
    """Class-weighted cross entropy; ``-log(p_LGG + p_HGG)`` for a glioma of unknown grade.

    The mean is weighted like ``nn.CrossEntropyLoss(weight)``: ``Σ w_i ℓ_i / Σ w_i`` with
    ``w_i = weight[y_i]`` for a graded case and the mean of the LGG and HGG weights for a glioma.
    With no glioma in the batch this *is* ``F.cross_entropy(logits, labels, weight)``.

    Args:
        logits: ``(N, C)`` float.
        labels: ``(N,)`` int64 class indices, or :data:`~tumortrace.config.GLIOMA_INDEX`.
        weight: ``(C,)`` class weights (None: all ones).

    Returns:
        The scalar loss.
    """
    glioma = labels == GLIOMA_INDEX
    if not bool(glioma.any()):
        return F.cross_entropy(logits, labels, weight=weight)
    if weight is None:
        weight = torch.ones(logits.shape[1], dtype=logits.dtype, device=logits.device)
    weight = weight.to(logits.dtype)
    graded = ~glioma
    safe = torch.where(graded, labels, torch.zeros_like(labels))
    ce = F.cross_entropy(logits, safe, reduction="none")
    log_all = torch.logsumexp(logits, dim=1)
    log_tumour = torch.logsumexp(logits[:, list(TUMOUR_INDICES)], dim=1)
    per_case = torch.where(graded, ce, log_all - log_tumour)
    w_glioma = weight[list(TUMOUR_INDICES)].mean()
    w = torch.where(graded, weight[safe], w_glioma)
    return (w * per_case).sum() / w.sum()


def lesion_target(mask: torch.Tensor, grid: tuple[int, ...]) -> torch.Tensor:
    """The lesion mask on a stage's grid by area: ``(N, 1, D, H, W)`` {0, 1} ->
    ``(N, 1, d, h, w)`` float, each cell the lesion fraction of the voxels it covers."""
    return F.adaptive_avg_pool3d(mask.float(), tuple(int(g) for g in grid))


def lesion_loss(
    lesion_logits: torch.Tensor, mask: torch.Tensor, known: torch.Tensor
) -> torch.Tensor:
    """``BCE + soft Dice`` of the head against the area-downsampled mask, over the known cases.

    Per case: the mean binary cross entropy (with logits) over the head's grid plus
    ``1 - (2 Σ p t + s) / (Σ p + Σ t + s)`` (``p = sigmoid``, ``t`` the target, ``s`` =
    :data:`DICE_SMOOTH`); the loss is their mean over the cases with ``known`` true, and 0 (still
    tied to the graph) when no case is known.

    Args:
        lesion_logits: ``(N, 1, d, h, w)``.
        mask: ``(N, 1, D, H, W)`` {0, 1} on the model grid (all zeros for a healthy case).
        known: ``(N,)`` bool: the case's mask is known (healthy cases: always).
    """
    logits = lesion_logits.float()
    target = lesion_target(mask, logits.shape[2:])
    bce = F.binary_cross_entropy_with_logits(logits, target, reduction="none").flatten(1).mean(1)
    p, t = torch.sigmoid(logits).flatten(1), target.flatten(1)
    dice = 1.0 - (2.0 * (p * t).sum(1) + DICE_SMOOTH) / (p.sum(1) + t.sum(1) + DICE_SMOOTH)
    k = known.to(logits.device, torch.float32)
    return ((bce + dice) * k).sum() / k.sum().clamp_min(1.0)


def class_activation(features: torch.Tensor, fc: nn.Linear, labels: torch.Tensor) -> torch.Tensor:
    """CAM ``Σ_k w_ck A_k`` of each case's class: ``(N, 512, d, h, w)`` -> ``(N, d, h, w)``.

    The class is the true one; a glioma of unknown grade (label
    :data:`~tumortrace.config.GLIOMA_INDEX`) takes ``CAM_LGG + CAM_HGG``. Gradients flow into both
    the features and the ``fc`` weights.
    """
    w = fc.weight.to(features.dtype)
    tumour = w[list(TUMOUR_INDICES)].sum(0, keepdim=True)
    rows = torch.cat([w, tumour])  # row C: a glioma of unknown grade
    idx = torch.where(labels == GLIOMA_INDEX, torch.full_like(labels, rows.shape[0] - 1), labels)
    return torch.einsum("nkdhw,nk->ndhw", features, rows[idx])


def outside_share(cam: torch.Tensor, mask: torch.Tensor, margin: int = 1) -> torch.Tensor:
    """Share of the positive CAM energy outside the dilated lesion, per case.

    Args:
        cam: ``(N, d, h, w)`` class activation on the network's grid.
        mask: ``(N, 1, D, H, W)`` {0, 1} on the model grid.
        margin: voxels the mask is dilated by (a ``2 margin + 1`` max-pool).

    Returns:
        ``(N,)`` in [0, 1]: ``Σ relu(CAM↑)·(1 - dilated) / Σ relu(CAM↑)`` with ``CAM↑`` trilinear
        on the model grid (0 where the CAM has no positive energy).
    """
    up = F.interpolate(cam[:, None].float(), size=mask.shape[2:], mode="trilinear",
                       align_corners=False)  # fmt: skip
    energy = F.relu(up).flatten(1)
    m = mask.float()
    if margin > 0:
        m = F.max_pool3d(m, kernel_size=2 * margin + 1, stride=1, padding=margin)
    outside = (energy * (1.0 - m.flatten(1))).sum(1)
    return outside / energy.sum(1).clamp_min(_EPS)


def attention_loss(
    features: torch.Tensor,
    fc: nn.Linear,
    labels: torch.Tensor,
    mask: torch.Tensor,
    known: torch.Tensor,
    margin: int = 1,
) -> torch.Tensor:
    """Mean :func:`outside_share` of the class's CAM over the tumour cases with a known, non-empty
    mask (LGG, HGG, glioma of unknown grade); 0 (tied to the graph) when the batch has none.

    Args:
        features: ``(N, 512, d, h, w)`` ``layer4`` output.
        fc: the final linear layer.
        labels: ``(N,)`` class indices or :data:`~tumortrace.config.GLIOMA_INDEX`.
        mask: ``(N, 1, D, H, W)`` {0, 1}.
        known: ``(N,)`` bool.
        margin: dilation in model voxels.
    """
    lesion_present = mask.flatten(1).amax(1) > 0
    use = (labels != HEALTHY_INDEX) & known.to(labels.device) & lesion_present
    cam = class_activation(features, fc, labels)
    if not bool(use.any()):
        return cam.sum() * 0.0
    return outside_share(cam[use], mask[use], margin).mean()


@dataclass(frozen=True)
class LossTerms:
    """The parts of one supervised step's loss (scalars; ``total`` is what is minimised)."""

    total: torch.Tensor
    classification: torch.Tensor
    lesion: torch.Tensor
    attention: torch.Tensor


def supervised_loss(
    out: Outputs,
    fc: nn.Linear,
    labels: torch.Tensor,
    mask: torch.Tensor,
    known: torch.Tensor,
    cfg: TrainConfig,
    class_weight: torch.Tensor | None,
) -> LossTerms:
    """``classification + λ · lesion + μ · attention`` of one batch (``cfg.lesion_weight``,
    ``cfg.attention_weight``; a term whose weight is 0 is not computed)."""
    cls = classification_loss(out.logits.float(), labels, class_weight)
    zero = cls.new_zeros(())
    les = (
        lesion_loss(out.lesion, mask, known)
        if cfg.lesion_weight > 0 and out.lesion is not None
        else zero
    )
    att = (
        attention_loss(out.features.float(), fc, labels, mask, known, cfg.attention_margin)
        if cfg.attention_weight > 0
        else zero
    )
    total = cls + cfg.lesion_weight * les + cfg.attention_weight * att
    return LossTerms(total=total, classification=cls, lesion=les, attention=att)


class Criterion(nn.Module):
    """The training loss of one fold: :func:`classification_loss` with the fold's class weights,
    and with ``cfg``'s lesion and attention terms (:func:`supervised_loss`).

    ``forward(logits (N, C), labels (N,))`` is the classification loss alone (evaluation and the
    plain training step; without gliomas of unknown grade exactly ``nn.CrossEntropyLoss(weight)``).

    Args:
        weight: ``(C,)`` class weights.
        cfg: the run's settings (λ, μ, margin); None: classification only.
    """

    def __init__(self, weight: torch.Tensor | None, cfg: TrainConfig | None = None) -> None:
        super().__init__()
        self.register_buffer("weight", None if weight is None else weight.float())
        self.cfg = cfg

    def forward(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return classification_loss(logits, labels, self.weight)

    def supervised(
        self,
        out: Outputs,
        fc: nn.Linear,
        labels: torch.Tensor,
        mask: torch.Tensor,
        known: torch.Tensor,
    ) -> LossTerms:
        """:func:`supervised_loss` of one batch under this fold's weights and ``cfg``."""
        if self.cfg is None:
            raise ConfigError("Criterion.supervised needs the run's TrainConfig (cfg).")
        return supervised_loss(out, fc, labels, mask, known, self.cfg, self.weight)


def uses_masks(cfg: TrainConfig) -> bool:
    """Whether training needs the lesion masks (a lesion head or the attention term)."""
    return cfg.lesion_weight > 0 or cfg.attention_weight > 0


def describe(cfg: TrainConfig) -> dict[str, object]:
    """The card's ``training`` entry on lesion supervision and the cases used."""
    return {
        "lesion_weight": cfg.lesion_weight,
        "lesion_layer": cfg.lesion_layer if cfg.lesion_weight > 0 else None,
        "lesion_loss": "lambda * (BCE + soft Dice), target: the mask's area fraction on the "
        "head's grid; healthy: all zeros; unknown mask: no loss"
        if cfg.lesion_weight > 0
        else None,
        "lesion_head": "training only (1x1x1 Conv3d), not shipped"
        if cfg.lesion_weight > 0
        else None,
        "attention_weight": cfg.attention_weight,
        "attention_margin": cfg.attention_margin if cfg.attention_weight > 0 else None,
        "attention_loss": "mu * share of the positive layer4 CAM energy outside the dilated "
        "lesion, tumour cases with a mask"
        if cfg.attention_weight > 0
        else None,
        "glioma_loss": "-log(p_LGG + p_HGG) for a glioma of unknown grade",
        "carved": cfg.carved,
        "healthy_made": cfg.healthy_made,
        "augment": cfg.augment,
        "balanced": cfg.balanced,
        "healthy_reference": cfg.healthy_reference,
    }
