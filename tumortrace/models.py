"""Registry: name -> torchvision video ResNet-18 with a 1-channel stem and a dropout head, or a
baseline of :mod:`tumortrace.baselines` (the ``"baseline"`` rows of the networks table).

Every network takes ``volume: (N, 1, D, H, W) float32`` (D = z, the axial slice axis that plays the
video networks' "time"; H = y; W = x) and returns ``logits: (N, num_classes)``.

Adapted, not forked, from torchvision's ``models/video/resnet.py``:

* ``r2plus1d`` -> ``r2plus1d_18``: stem 1->45, kernel (1,7,7), stride (1,2,2), padding (0,3,3),
  BN, ReLU, then 45->64, kernel (3,1,1) (torchvision's ``R2Plus1dStem`` with one input channel).
* ``mc3`` -> ``mc3_18`` and ``r3d`` -> ``r3d_18``: stem 1->64, kernel (3,7,7), stride (1,2,2),
  padding (1,3,3).
* ``fc`` is replaced by ``nn.Sequential(nn.Dropout(p), nn.Linear(512, num_classes))``.

With an input reference (:func:`set_input_reference`, e.g. the mean healthy input of the training
data), the stem holds it as the buffer ``stem.input_reference`` ``(1, 1, D, H, W)`` (five axes, so
``channels_last_3d`` applies to it like to the weights) and a forward
pre-hook on the stem subtracts it from every input, so every path that runs the stem (``forward``,
Grad-CAM's stage-by-stage pass) sees ``x - reference``; it is saved with the weights.

``pretrained=True`` reads torchvision's Kinetics-400 state dict from the torch hub cache (nothing is
downloadable here) and folds the RGB stem kernel into the 1-channel stem by summing over the input
channels, so a grey volume fed to the new stem gives what the old stem gave for R = G = B.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode
from torchvision.models.video import (
    MC3_18_Weights,
    R2Plus1D_18_Weights,
    R3D_18_Weights,
    mc3_18,
    r2plus1d_18,
    r3d_18,
)
from torchvision.models.video.resnet import VideoResNet

from tumortrace import baselines
from tumortrace.errors import CheckpointError, ConfigError
from tumortrace.networks import Kind, get_network

FEATURES = 512
"""Width of the pooled feature vector that feeds the head (``layer4`` channels)."""

STEM_KEY = "stem.0.weight"
"""State-dict key of the first (RGB in torchvision, grey here) stem convolution."""
INPUT_REFERENCE_KEY = "stem.input_reference"
"""State-dict key of the input reference the stem subtracts, when it has one."""


@dataclass(frozen=True)
class ModelSpec:
    """One registry entry.

    Attributes:
        name: registry name (``list_methods()`` entry).
        builder: networks: ``() -> VideoResNet`` with torchvision's 3-channel stem and 400-way
            ``fc``; baselines: ``(num_classes, dropout) -> nn.Module``, finished.
        weights_url: torchvision's Kinetics-400 download URL (networks); "" for baselines.
        strided_stages_dhw: how many stride-2 stages halve D, H and W (see :func:`min_input_shape`).
        description: one line for pickers and model cards.
        kind: the table's kind, ``"network"`` or ``"baseline"``.
        min_shape_dhw: baselines: the smallest ``(D, H, W)`` they accept.
    """

    name: str
    builder: Callable[..., nn.Module]
    weights_url: str
    strided_stages_dhw: tuple[int, int, int]
    description: str
    kind: Kind = "network"
    min_shape_dhw: tuple[int, int, int] | None = None

    @property
    def weights_file(self) -> str:
        """File name torchvision uses in ``$TORCH_HOME/hub/checkpoints``."""
        return self.weights_url.rsplit("/", 1)[-1]


_REGISTRY: dict[str, ModelSpec] = {}


def register_model(
    name: str,
    *,
    weights_url: str = "",
    strided_stages_dhw: tuple[int, int, int] = (0, 0, 0),
    min_shape_dhw: tuple[int, int, int] | None = None,
) -> Callable[[Callable[..., nn.Module]], Callable[..., nn.Module]]:
    """Decorator that adds a builder to the registry under ``name``.

    ``name`` must be a row of :data:`tumortrace.networks.NETWORKS` (its description and kind come
    from there), so the registry and every display of methods agree. Baselines give
    ``min_shape_dhw`` instead of a Kinetics-400 URL and strides.
    """

    def decorator(builder: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        if name in _REGISTRY:
            raise ValueError(f"Model {name!r} is registered twice.")
        row = get_network(name)
        if row is None:
            raise ValueError(f"Model {name!r} has no row in tumortrace.networks.NETWORKS.")
        _REGISTRY[name] = ModelSpec(
            name, builder, weights_url, strided_stages_dhw, row.description, row.kind,
            min_shape_dhw,
        )  # fmt: skip
        return builder

    return decorator


# Stride-2 stages: the stem halves H and W; layer2-4 halve H and W, and D too except in MC3, whose
# layer2-4 use torchvision's Conv3DNoTemporal (stride (1, 2, 2)).
@register_model(
    "r2plus1d",
    weights_url=R2Plus1D_18_Weights.KINETICS400_V1.url,
    strided_stages_dhw=(3, 4, 4),
)
def _r2plus1d() -> VideoResNet:
    return r2plus1d_18(weights=None)


@register_model(
    "mc3",
    weights_url=MC3_18_Weights.KINETICS400_V1.url,
    strided_stages_dhw=(0, 4, 4),
)
def _mc3() -> VideoResNet:
    return mc3_18(weights=None)


@register_model(
    "r3d",
    weights_url=R3D_18_Weights.KINETICS400_V1.url,
    strided_stages_dhw=(3, 4, 4),
)
def _r3d() -> VideoResNet:
    return r3d_18(weights=None)


# Baselines (tumortrace.baselines): every one takes (N, 1, D, H, W) and returns logits.
@register_model("hog_svm", min_shape_dhw=(1, 2, 2))
def _hog_svm(num_classes: int, dropout: float) -> nn.Module:
    return baselines.HogSvm(num_classes, dropout)


@register_model("cnn_lstm", min_shape_dhw=(1, 8, 8))
def _cnn_lstm(num_classes: int, dropout: float) -> nn.Module:
    return baselines.CnnLstm(num_classes, dropout)


@register_model("conv_ae", min_shape_dhw=(2, 2, 2))
def _conv_ae(num_classes: int, dropout: float) -> nn.Module:
    return baselines.ConvAutoencoder(num_classes, dropout)


@register_model("cnn3d_small", min_shape_dhw=(2, 2, 2))
def _cnn3d_small(num_classes: int, dropout: float) -> nn.Module:
    return baselines.Cnn3dSmall(num_classes, dropout)


@register_model("resnet18_2d", min_shape_dhw=(1, 8, 8))
def _resnet18_2d(num_classes: int, dropout: float) -> nn.Module:
    return baselines.SliceNet2d("resnet18", num_classes, dropout)


@register_model("googlenet_2d", min_shape_dhw=(1, 16, 16))
def _googlenet_2d(num_classes: int, dropout: float) -> nn.Module:
    return baselines.SliceNet2d("googlenet", num_classes, dropout)


def list_models() -> list[str]:
    """Registered video network names (kind ``"network"``), sorted: ``["mc3", "r2plus1d", "r3d"]``.
    The app and the network-specific tests read this; :func:`list_methods` adds the baselines."""
    return sorted(n for n, spec in _REGISTRY.items() if spec.kind == "network")


def list_methods() -> list[str]:
    """Every registered name, networks and baselines, sorted: what ``train.py --arch``,
    ``evaluate`` and ``predict`` accept."""
    return sorted(_REGISTRY)


def is_baseline(name: str) -> bool:
    """True when ``name`` is a registered baseline (no Grad-CAM, no Kinetics-400 weights)."""
    spec = _REGISTRY.get(name)
    return spec is not None and spec.kind == "baseline"


def get_spec(name: str) -> ModelSpec:
    """Registry entry for ``name``.

    Raises:
        ConfigError: unknown name; the message lists the valid ones.
    """
    try:
        return _REGISTRY[name]
    except (KeyError, TypeError) as err:
        raise ConfigError(
            f"Unknown architecture {name!r}; expected one of {list_methods()}."
        ) from err


def _one_channel_stem(net: VideoResNet) -> None:
    """Replaces the RGB stem convolution by a 1-channel one with the same kernel/stride/padding."""
    old = net.stem[0]
    net.stem[0] = nn.Conv3d(
        1,
        old.out_channels,
        kernel_size=old.kernel_size,
        stride=old.stride,
        padding=old.padding,
        bias=False,
    )
    nn.init.kaiming_normal_(net.stem[0].weight, mode="fan_out", nonlinearity="relu")


def create_model(
    name: str,
    num_classes: int = 3,
    pretrained: bool = False,
    dropout: float = 0.3,
    pretrained_path: str | Path | None = None,
) -> VideoResNet:
    """Builds a registered network for 1-channel volumes.

    Args:
        name: one of :func:`list_methods` (a network or a baseline).
        num_classes: size of the output layer (3 for healthy / LGG / HGG).
        pretrained: start from torchvision's Kinetics-400 weights (stem folded to one channel).
        dropout: dropout probability in front of the final linear layer, in [0, 1).
        pretrained_path: the Kinetics-400 ``.pth`` (or ``.safetensors``) file; default
            ``torch.hub.get_dir()/checkpoints/<torchvision file name>``. Implies ``pretrained``.

    Returns:
        A ``VideoResNet`` (a baseline: its :mod:`tumortrace.baselines` module) in training mode
        mapping ``(N, 1, D, H, W)`` float32 to logits
        ``(N, num_classes)``; ``model.arch`` holds ``name``.

    Raises:
        ConfigError: unknown name, ``num_classes < 2`` or ``dropout`` outside [0, 1).
        CheckpointError: pretrained weights missing, unreadable or in the wrong layout.
    """
    spec = get_spec(name)
    if not isinstance(num_classes, int) or num_classes < 2:
        raise ConfigError(f"num_classes must be an integer >= 2, got {num_classes!r}.")
    if not 0.0 <= float(dropout) < 1.0:
        raise ConfigError(f"dropout must be in [0, 1), got {dropout!r}.")
    if spec.kind == "baseline":
        if pretrained or pretrained_path is not None:
            raise ConfigError(
                f"{name!r} is a baseline: it has no pretrained weights (nothing can be "
                "downloaded here, and baselines always start from random initialisation); drop "
                "--pretrained / --pretrained-path."
            )
        net = spec.builder(num_classes=num_classes, dropout=float(dropout))
        net.arch = name
        return net
    net = spec.builder()
    _one_channel_stem(net)
    if pretrained or pretrained_path is not None:
        _load_kinetics(net, spec, pretrained_path)
    net.fc = nn.Sequential(nn.Dropout(p=float(dropout)), nn.Linear(FEATURES, num_classes))
    nn.init.normal_(net.fc[1].weight, 0, 0.01)
    nn.init.zeros_(net.fc[1].bias)
    net.arch = name
    return net


def _subtract_reference(
    stem: nn.Module, args: tuple[torch.Tensor, ...]
) -> tuple[torch.Tensor, ...]:
    """Forward pre-hook of the stem: ``x (N, 1, D, H, W) - input_reference (1, 1, D, H, W)``,
    computed in fp32 (the two are close, so a bf16 subtraction would lose the difference), then
    returned in ``x``'s dtype."""
    x = args[0]
    return ((x.float() - stem.input_reference.float()).to(dtype=x.dtype), *args[1:])


def _inner(model: nn.Module) -> nn.Module:
    """The network inside DDP (``module``) or ``torch.compile`` (``_orig_mod``) wrappers."""
    model = getattr(model, "module", model)
    return getattr(model, "_orig_mod", model)


def has_input_reference(model: nn.Module) -> bool:
    """Whether the network's stem subtracts an input reference."""
    return "input_reference" in _inner(model).stem._buffers


def set_input_reference(model: nn.Module, reference: torch.Tensor) -> nn.Module:
    """Makes the network subtract ``reference`` from every input, inside its stem.

    The first call registers the buffer ``stem.input_reference`` and the stem's forward pre-hook;
    later calls overwrite the buffer's values.

    Args:
        model: from :func:`create_model` (wrappers are fine).
        reference: ``(D, H, W)``, ``(1, D, H, W)`` or ``(1, 1, D, H, W)``: the model grid of the
            inputs; stored as ``(1, 1, D, H, W)``.

    Returns:
        ``model``.
    """
    stem = _inner(model).stem
    # A baseline's stem is an nn.Identity: take the device and dtype from the model instead.
    weight = next(iter([*stem.parameters(), *_inner(model).parameters()]), None)
    device = weight.device if weight is not None else reference.device
    dtype = weight.dtype if weight is not None else torch.float32
    ref = reference.detach().reshape(1, 1, *reference.shape[-3:])
    ref = ref.to(device=device, dtype=dtype).contiguous()
    if has_input_reference(model):
        stem.input_reference = ref
    else:
        stem.register_buffer("input_reference", ref)
        stem.register_forward_pre_hook(_subtract_reference)
    return model


def adopt_input_reference(model: nn.Module, state: Mapping[str, torch.Tensor]) -> nn.Module:
    """Gives ``model`` an input reference (zeros until loaded) when ``state`` holds one, so that
    ``model.load_state_dict(state)`` fits; a state without it leaves the model as it is."""
    if INPUT_REFERENCE_KEY in state and not has_input_reference(model):
        set_input_reference(model, torch.zeros(state[INPUT_REFERENCE_KEY].shape))
    return model


def adopt_state(model: nn.Module, state: Mapping[str, torch.Tensor]) -> nn.Module:
    """Makes ``model.load_state_dict(state)`` fit: the input reference when ``state`` holds one
    (:func:`adopt_input_reference`), and, for a model whose arrays are sized by its fit (the
    HOG-SVM baseline's ``adopt_shapes``), buffers of ``state``'s shapes."""
    adopt_input_reference(model, state)
    adopt = getattr(_inner(model), "adopt_shapes", None)
    if adopt is not None:
        adopt(state)
    return model


def pretrained_file(name: str) -> Path:
    """Where the Kinetics-400 weights of ``name`` are expected: the torch hub cache file."""
    return Path(torch.hub.get_dir()) / "checkpoints" / get_spec(name).weights_file


def _read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """Reads a state dict without unpickling arbitrary objects."""
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            state = load_file(str(path))
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # torch/safetensors raise many types for corrupt files
        raise CheckpointError(
            f"Could not read pretrained weights {path}: {err}. Expected torchvision's Kinetics-400 "
            "state dict (.pth, loadable with torch.load(weights_only=True)) or a .safetensors file."
        ) from err
    if (
        isinstance(state, Mapping)
        and "state_dict" in state
        and isinstance(state["state_dict"], Mapping)
    ):
        state = state["state_dict"]
    if not isinstance(state, Mapping) or not all(
        isinstance(v, torch.Tensor) for v in state.values()
    ):
        raise CheckpointError(
            f"Pretrained file {path} does not hold a state dict of tensors "
            f"(got {type(state).__name__}); expected torchvision's Kinetics-400 layout."
        )
    return dict(state)


def adapt_kinetics_state_dict(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Turns a torchvision Kinetics-400 state dict into one for the 1-channel, head-less trunk.

    The RGB stem kernel ``(C_out, 3, kD, kH, kW)`` becomes ``(C_out, 1, kD, kH, kW)`` by summing
    over the input channels; the 400-way ``fc.weight`` / ``fc.bias`` are dropped.
    """
    out = {k: v for k, v in state.items() if not k.startswith("fc.")}
    if STEM_KEY in out and out[STEM_KEY].ndim == 5 and out[STEM_KEY].shape[1] == 3:
        out[STEM_KEY] = out[STEM_KEY].sum(dim=1, keepdim=True)
    return out


def check_pretrained_file(name: str, path: str | Path | None = None) -> Path:
    """The Kinetics-400 file for ``name`` (``path``, default :func:`pretrained_file`), if it exists.

    Raises:
        ConfigError: unknown name.
        CheckpointError: the file is missing; the message says where to put it.
    """
    spec = get_spec(name)
    if spec.kind == "baseline":
        raise ConfigError(
            f"{name!r} is a baseline: it has no pretrained weights (nothing can be downloaded "
            "here; baselines always start from random initialisation). Drop --pretrained."
        )
    path = Path(path) if path is not None else pretrained_file(name)
    if not path.is_file():
        raise CheckpointError(
            f"Pretrained Kinetics-400 weights for {name!r} not found: {path}. Nothing can be "
            f"downloaded here: copy torchvision's {spec.weights_file} ({spec.weights_url}) into "
            f"{pretrained_file(name).parent}/ (the torch hub cache, set by $TORCH_HOME), or "
            "pass its location with --pretrained-path."
        )
    return path


def _load_kinetics(net: VideoResNet, spec: ModelSpec, path: str | Path | None) -> None:
    path = check_pretrained_file(spec.name, path)
    state = adapt_kinetics_state_dict(_read_state_dict(path))
    own = {k: v for k, v in net.state_dict().items() if not k.startswith("fc.")}
    mismatch = state_dict_mismatch(own, state)
    if mismatch:
        raise CheckpointError(
            f"Pretrained file {path} does not match torchvision's {spec.name} layout: "
            f"{mismatch}Expected {spec.weights_file} for {spec.name!r}."
        )
    own_dtypes = net.state_dict()
    net.load_state_dict({k: v.to(own_dtypes[k].dtype) for k, v in state.items()}, strict=False)


def state_dict_mismatch(
    expected: Mapping[str, torch.Tensor], state: Mapping[str, torch.Tensor], limit: int = 5
) -> str:
    """Readable summary of how ``state`` fails to fit ``expected`` ("" when it fits exactly).

    Lists missing, unexpected and mis-shaped keys (at most ``limit`` of each).
    """
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    bad = sorted(
        f"{k}: file {tuple(state[k].shape)} vs model {tuple(v.shape)}"
        for k, v in expected.items()
        if k in state and state[k].shape != v.shape
    )
    parts = []
    for items, what in ((missing, "missing"), (unexpected, "unexpected"), (bad, "mis-shaped")):
        if items:
            more = f" (+{len(items) - limit} more)" if len(items) > limit else ""
            parts.append(f"{len(items)} {what} key(s): {', '.join(items[:limit])}{more}. ")
    return "".join(parts)


def min_input_shape(name: str) -> tuple[int, int, int]:
    """Smallest ``(D, H, W)`` the network ``name`` accepts.

    Each stride-2 stage needs at least 2 voxels to halve along the axis it downsamples; a size-n
    axis leaves a stride-2, padding-1 stage with ``ceil(n / 2)`` voxels. With ``s`` such stages
    the last one receives ``ceil(n / 2**(s-1))`` voxels, so ``n >= 2**(s-1) + 1``: 9 for H and W
    (stem + layer2-4), 5 for D in R3D and R(2+1)D (layer2-4). MC3 never halves D; it needs the
    3 slices that its (3, 7, 7) stem kernel spans.

    Raises:
        ConfigError: unknown name.
    """
    spec = get_spec(name)
    if spec.min_shape_dhw is not None:  # a baseline
        return spec.min_shape_dhw
    stages = spec.strided_stages_dhw
    return tuple(2 ** (s - 1) + 1 if s > 0 else 3 for s in stages)  # type: ignore[return-value]


def check_input_shape(
    name: str, shape_dhw: tuple[int, int, int] | list[int]
) -> tuple[int, int, int]:
    """Validates a model-grid shape ``(D, H, W)`` for network ``name``; returns it as a tuple.

    Raises:
        ConfigError: not three positive integers, or smaller than :func:`min_input_shape`.
    """
    minimum = min_input_shape(name)
    try:
        shape = tuple(int(s) for s in shape_dhw)
    except (TypeError, ValueError) as err:
        raise ConfigError(
            f"Input shape must be three integers (D, H, W), got {shape_dhw!r}."
        ) from err
    if len(shape) != 3 or any(s != v for s, v in zip(shape, shape_dhw, strict=False)):
        raise ConfigError(f"Input shape must be three integers (D, H, W), got {shape_dhw!r}.")
    if any(s < m for s, m in zip(shape, minimum, strict=True)):
        stages = get_spec(name).strided_stages_dhw
        if get_spec(name).min_shape_dhw is not None:
            raise ConfigError(
                f"Input shape (D, H, W) = {shape} is too small for {name!r}: it needs at least "
                f"{minimum}. Use a larger --input-shape."
            )
        raise ConfigError(
            f"Input shape (D, H, W) = {shape} is too small for {name!r}: it needs at least "
            f"{minimum} (it halves D {stages[0]} times and H, W {stages[1]} times). "
            "Use a larger --input-shape."
        )
    return shape  # type: ignore[return-value]


def count_parameters(model: nn.Module, trainable_only: bool = False) -> int:
    """Number of parameters (all, or only those with ``requires_grad``)."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)


def count_gflops(model: nn.Module, shape_dhw: tuple[int, int, int]) -> float:
    """GFLOPs of one forward pass on a ``(1, 1, D, H, W)`` input (a multiply-add counts as 2).

    Counted with ``torch.utils.flop_counter.FlopCounterMode`` in eval mode without gradients; the
    model's training flag is restored afterwards.

    Raises:
        ConfigError: shape too small for the network (when ``model.arch`` is known).
    """
    arch = getattr(model, "arch", None)
    if arch is not None:
        shape_dhw = check_input_shape(arch, shape_dhw)
    param = next(iter([*model.parameters(), *model.buffers()]), torch.zeros(()))
    dtype = param.dtype if param.is_floating_point() else torch.float32
    x = torch.zeros((1, 1, *shape_dhw), dtype=dtype, device=param.device)
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad(), FlopCounterMode(display=False) as counter:
            model(x)
    finally:
        model.train(was_training)
    return counter.get_total_flops() / 1e9
