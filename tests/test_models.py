"""The network registry: shapes, stems, minimum input, FLOPs and the Kinetics-400 adaptation."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn
from torchvision.models.video import mc3_18, r2plus1d_18, r3d_18

from tumortrace.errors import CheckpointError, ConfigError
from tumortrace.models import (
    INPUT_REFERENCE_KEY,
    adopt_input_reference,
    check_input_shape,
    count_gflops,
    count_parameters,
    create_model,
    get_spec,
    has_input_reference,
    list_models,
    min_input_shape,
    pretrained_file,
    set_input_reference,
)
from tumortrace.networks import display_name, in_display_order, network_names

TORCHVISION = {"mc3": mc3_18, "r2plus1d": r2plus1d_18, "r3d": r3d_18}
SMALL = (8, 16, 16)


@pytest.fixture(scope="module")
def models() -> dict[str, nn.Module]:
    torch.manual_seed(0)
    return {name: create_model(name).eval() for name in list_models()}


def test_list_models_is_sorted_registry():
    assert list_models() == ["mc3", "r2plus1d", "r3d"]


def test_registry_builds_exactly_the_networks_table():
    assert list_models() == sorted(network_names())
    assert network_names() == ("r2plus1d", "mc3", "r3d")  # display order: the seed paper's
    assert [display_name(n) for n in network_names()] == ["R(2+1)D-18", "MC3-18", "R3D-18"]
    assert in_display_order(["r3d", "new", "mc3"]) == ["mc3", "r3d", "new"]


@pytest.mark.parametrize("name", list_models())
def test_forward_shape(models, name):
    x = torch.randn(2, 1, *SMALL)
    with torch.no_grad():
        logits = models[name](x)
    assert logits.shape == (2, 3)
    assert logits.dtype == torch.float32
    assert torch.isfinite(logits).all()


@pytest.mark.parametrize("name", list_models())
def test_stem_and_head_layout(models, name):
    model = models[name]
    conv = model.stem[0]
    assert conv.in_channels == 1 and conv.bias is None
    if name == "r2plus1d":
        assert (conv.out_channels, conv.kernel_size) == (45, (1, 7, 7))
        assert (conv.stride, conv.padding) == ((1, 2, 2), (0, 3, 3))
        second = model.stem[3]
        assert (second.in_channels, second.out_channels) == (45, 64)
        assert second.kernel_size == (3, 1, 1)
    else:
        assert (conv.out_channels, conv.kernel_size) == (64, (3, 7, 7))
        assert (conv.stride, conv.padding) == ((1, 2, 2), (1, 3, 3))
    assert isinstance(model.fc, nn.Sequential) and len(model.fc) == 2
    assert isinstance(model.fc[0], nn.Dropout) and model.fc[0].p == pytest.approx(0.3)
    assert (model.fc[1].in_features, model.fc[1].out_features) == (512, 3)
    assert model.arch == name


def test_create_model_options():
    model = create_model("mc3", num_classes=5, dropout=0.5)
    assert model.fc[1].out_features == 5 and model.fc[0].p == 0.5


def test_unknown_architecture_lists_valid_ones():
    with pytest.raises(ConfigError, match=r"'resnet50'.*'mc3', 'r2plus1d', 'r3d'"):
        create_model("resnet50")


def test_bad_dropout():
    with pytest.raises(ConfigError, match=r"dropout must be in \[0, 1\), got 1.5"):
        create_model("mc3", dropout=1.5)


def test_bad_num_classes():
    with pytest.raises(ConfigError, match="num_classes must be an integer >= 2, got 1"):
        create_model("mc3", num_classes=1)


@pytest.mark.parametrize("name", list_models())
def test_parameter_count_matches_torchvision_minus_stem_and_head(models, name):
    tv = TORCHVISION[name](weights=None)
    stem = tv.stem[0].weight.numel()
    expected = count_parameters(tv) - stem + stem // 3 - (512 * 400 + 400) + (512 * 3 + 3)
    assert count_parameters(models[name]) == expected


def _strided_inputs(model: nn.Module, shape: tuple[int, int, int]) -> list[tuple[int, int]]:
    """(axis, input size) for every stride-2 convolution axis during one forward pass."""
    seen: list[tuple[int, int]] = []

    def hook(module, args):
        for axis, stride in enumerate(module.stride):
            if stride > 1:
                seen.append((axis, args[0].shape[2 + axis]))

    handles = [
        m.register_forward_pre_hook(hook)
        for m in model.modules()
        if isinstance(m, nn.Conv3d) and max(m.stride) > 1
    ]
    try:
        with torch.no_grad():
            model(torch.zeros(1, 1, *shape))
    finally:
        for h in handles:
            h.remove()
    return seen


@pytest.mark.parametrize("name", list_models())
def test_min_input_shape_is_the_real_minimum(models, name):
    minimum = min_input_shape(name)
    # At the minimum every stride-2 stage has at least 2 voxels to halve, and the net runs.
    seen = _strided_inputs(models[name], minimum)
    assert seen and min(size for _, size in seen) == 2
    assert check_input_shape(name, minimum) == minimum
    strided_axes = {axis for axis, _ in seen}
    for axis in range(3):
        smaller = list(minimum)
        smaller[axis] -= 1
        if axis in strided_axes:
            # One voxel less and some stride-2 stage gets a single voxel: nothing left to halve.
            assert (
                min(s for a, s in _strided_inputs(models[name], tuple(smaller)) if a == axis) == 1
            )
        with pytest.raises(ConfigError, match=rf"too small for '{name}': it needs at least"):
            check_input_shape(name, smaller)


def test_mc3_never_halves_depth(models):
    assert {axis for axis, _ in _strided_inputs(models["mc3"], (3, 16, 16))} == {1, 2}


def test_check_input_shape_needs_three_integers():
    with pytest.raises(ConfigError, match=r"three integers \(D, H, W\), got \(16, 16\)"):
        check_input_shape("r3d", (16, 16))
    with pytest.raises(ConfigError, match="three integers"):
        check_input_shape("r3d", (16, 16.5, 16))


def test_count_gflops_equals_convolution_and_linear_macs(models):
    model = models["r3d"]
    macs = 0

    def hook(module, args, out):
        nonlocal macs
        if isinstance(module, nn.Conv3d):
            k = math.prod(module.kernel_size) * module.in_channels // module.groups
            macs += out.numel() * k
        else:
            macs += out.numel() * module.in_features

    handles = [
        m.register_forward_hook(hook)
        for m in model.modules()
        if isinstance(m, nn.Conv3d | nn.Linear)
    ]
    try:
        with torch.no_grad():
            model(torch.zeros(1, 1, *SMALL))
    finally:
        for h in handles:
            h.remove()
    assert count_gflops(model, SMALL) == pytest.approx(2 * macs / 1e9, rel=1e-9)
    assert model.training is False


def test_count_gflops_checks_shape(models):
    with pytest.raises(ConfigError, match="too small"):
        count_gflops(models["r3d"], (4, 8, 8))


def _torchvision_state(name: str, seed: int = 1) -> dict[str, torch.Tensor]:
    """A Kinetics-layout state dict (3-channel stem, 400-way fc) with random, non-default values."""
    torch.manual_seed(seed)
    state = TORCHVISION[name](weights=None).state_dict()
    return {k: (torch.randn_like(v) if v.is_floating_point() else v + 7) for k, v in state.items()}


@pytest.mark.parametrize("name", list_models())
def test_pretrained_stem_is_sum_of_rgb_kernels(tmp_path, name):
    state = _torchvision_state(name)
    path = tmp_path / get_spec(name).weights_file
    torch.save(state, path)
    model = create_model(name, pretrained=True, pretrained_path=path)
    got = model.state_dict()
    rgb = state["stem.0.weight"]
    assert rgb.shape[1] == 3
    assert torch.equal(got["stem.0.weight"], rgb.sum(dim=1, keepdim=True))
    for key, value in state.items():
        if key.startswith("fc.") or key == "stem.0.weight":
            continue
        assert torch.equal(got[key], value), key
    assert got["fc.1.weight"].shape == (3, 512)
    assert "fc.weight" not in got


def test_pretrained_reads_the_torch_hub_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    path = tmp_path / "hub" / "checkpoints" / "mc3_18-a90a0ba3.pth"
    assert pretrained_file("mc3") == path
    path.parent.mkdir(parents=True)
    state = _torchvision_state("mc3", seed=3)
    torch.save(state, path)
    model = create_model("mc3", pretrained=True)
    assert torch.equal(model.layer4[1].conv2[0].weight, state["layer4.1.conv2.0.weight"])


def test_pretrained_missing_file_names_file_and_folder(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    folder = tmp_path / "hub" / "checkpoints"
    with pytest.raises(CheckpointError, match=rf"r3d_18-b3b3357e\.pth.*into {folder}"):
        create_model("r3d", pretrained=True)


def test_pretrained_wrong_layout(tmp_path):
    path = tmp_path / "mc3.pth"
    torch.save(_torchvision_state("mc3"), path)
    with pytest.raises(
        CheckpointError, match=r"does not match torchvision's r3d layout: .*mis-shaped"
    ):
        create_model("r3d", pretrained_path=path)


def test_pretrained_unreadable_file(tmp_path):
    path = tmp_path / "garbage.pth"
    path.write_bytes(b"not a torch file at all")
    with pytest.raises(CheckpointError, match="Could not read pretrained weights"):
        create_model("mc3", pretrained_path=path)


@pytest.mark.parametrize("name", list_models())
def test_input_reference_is_subtracted_inside_the_stem(models, name):
    import copy

    plain = models[name]
    ref = torch.randn(1, *SMALL, generator=torch.Generator().manual_seed(2))
    x = torch.randn(2, 1, *SMALL, generator=torch.Generator().manual_seed(3))
    with_ref = set_input_reference(copy.deepcopy(plain), ref)
    assert has_input_reference(with_ref) and not has_input_reference(plain)
    assert INPUT_REFERENCE_KEY in with_ref.state_dict()
    assert INPUT_REFERENCE_KEY not in plain.state_dict()
    with torch.no_grad():
        torch.testing.assert_close(with_ref(x), plain(x - ref))
        set_input_reference(with_ref, torch.zeros(SMALL))  # overwrites, one hook
        torch.testing.assert_close(with_ref(x), plain(x))
    assert len(with_ref.stem._forward_pre_hooks) == 1
    fresh = adopt_input_reference(create_model(name), {INPUT_REFERENCE_KEY: ref})
    assert fresh.stem.input_reference.shape == (1, 1, *SMALL)
    assert not has_input_reference(adopt_input_reference(create_model(name), {}))
