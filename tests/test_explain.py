"""Grad-CAM: agreement with Captum, geometry back onto the original grid, NIfTI export, meaning."""

from __future__ import annotations

import copy

import nibabel as nib
import numpy as np
import pytest
import torch
from app_fixtures import TINY, make_tiny_weights
from captum.attr import LayerGradientXActivation
from conftest import make_head
from scipy import ndimage
from torch import nn

from tumortrace.captum_reference import (
    gradcam_captum,
    guided_gradcam_captum,
    occlusion_captum,
    reference_copy,
)
from tumortrace.config import PreprocessConfig
from tumortrace.errors import ConfigError
from tumortrace.explain import (
    brain_mask_on_model_grid,
    cam_maps,
    finish_map,
    forward_features,
    fuse_maps,
    gradcam_from_features,
    upsample_cam,
)
from tumortrace.explanation import Explanation, cam_to_volume, get_cam_method, save_cam_nifti
from tumortrace.infer import InferenceSettings, Predictor, prepare_model
from tumortrace.io import load_volume
from tumortrace.models import create_model, list_models
from tumortrace.preprocess import preprocess
from tumortrace.stages import check_cam_layer, logits_of

SHAPE = (16, 32, 32)


def _randomise_batchnorm(model: nn.Module, seed: int = 0) -> nn.Module:
    """Non-trivial BatchNorm statistics, so that folding and eval mode are really exercised."""
    g = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm3d):
            n = m.num_features
            m.running_mean.copy_(torch.rand(n, generator=g) * 0.4 - 0.2)
            m.running_var.copy_(torch.rand(n, generator=g) * 1.5 + 0.5)
            m.weight.data.copy_(torch.rand(n, generator=g) + 0.5)
            m.bias.data.copy_(torch.rand(n, generator=g) * 0.4 - 0.2)
    return model.eval()


@pytest.fixture(scope="module", params=list_models())
def arch_model(request) -> tuple[str, nn.Module]:
    torch.manual_seed(0)
    model = _randomise_batchnorm(create_model(request.param))
    nn.init.normal_(model.fc[1].weight, 0, 0.5)  # logits far enough apart to matter
    return request.param, model


def test_fast_path_equals_captum_layergradcam(arch_model) -> None:
    arch, model = arch_model
    x = torch.randn(2, 1, *SHAPE, generator=torch.Generator().manual_seed(1))
    feats = forward_features(model, x)
    with torch.no_grad():
        assert torch.allclose(feats.logits, model(x), atol=1e-5)
    for target in (0, 2):
        cams = gradcam_from_features(feats, target, retain_graph=target == 0)  # both items
        assert cams.shape[0] == 2 and cams.shape[1:] == feats.activations["layer4"].shape[2:]
        for i in range(2):
            ref = gradcam_captum(model, x[i : i + 1], target)
            assert ref.abs().max() > 0, f"{arch}: degenerate reference map"
            torch.testing.assert_close(cams[i], ref, atol=1e-5 * float(ref.max()), rtol=1e-4)


def test_explain_path_subtracts_the_input_reference(arch_model) -> None:
    from tumortrace.models import set_input_reference

    _, model = arch_model
    ref = torch.randn(1, *SHAPE, generator=torch.Generator().manual_seed(4))
    x = torch.randn(1, 1, *SHAPE, generator=torch.Generator().manual_seed(5))
    with_ref = set_input_reference(copy.deepcopy(model), ref)
    layers = ("layer3", "layer4")
    feats, plain = forward_features(with_ref, x, layers), forward_features(model, x - ref, layers)
    torch.testing.assert_close(feats.logits, plain.logits)
    torch.testing.assert_close(feats.activations["layer3"], plain.activations["layer3"])
    with torch.no_grad():
        torch.testing.assert_close(feats.logits, with_ref(x), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(cam_maps(feats, 2, "layercam"), cam_maps(plain, 2, "layercam"))


def test_bf16_preparation_keeps_the_input_reference_in_fp32(arch_model) -> None:
    """The input and the healthy reference are close, so the subtraction runs in fp32 and the
    reference is not rounded to bf16 when the trunk is: what reaches the stem is the fp32
    difference, rounded once."""
    from tumortrace.models import set_input_reference

    _, model = arch_model
    ref = 1.0 + 0.001 * torch.randn(1, *SHAPE, generator=torch.Generator().manual_seed(6))
    with_ref = set_input_reference(copy.deepcopy(model), ref)
    fast = prepare_model(with_ref, InferenceSettings(precision="bf16"))
    assert fast.stem.input_reference.dtype == torch.float32
    torch.testing.assert_close(fast.stem.input_reference[0], ref)
    seen = []
    hook = fast.stem[0].register_forward_pre_hook(lambda m, a: seen.append(a[0]))
    x = ref[None] + 0.003
    with torch.no_grad():
        fast.stem(x.to(torch.bfloat16).contiguous(memory_format=torch.channels_last_3d))
    hook.remove()
    want = (x.to(torch.bfloat16).float() - ref).to(torch.bfloat16)
    torch.testing.assert_close(seen[0].float(), want.float())


def test_prepared_fp32_model_gives_the_same_map(arch_model) -> None:
    """BatchNorm folding + channels_last_3d (the Predictor's preparation) change nothing in fp32."""
    _, model = arch_model
    fast = prepare_model(copy.deepcopy(model), InferenceSettings(precision="fp32"))
    assert not any(isinstance(m, nn.BatchNorm3d) for m in fast.modules())
    x = torch.randn(1, 1, *SHAPE, generator=torch.Generator().manual_seed(2))
    ref = gradcam_captum(model, x, 1)
    feats = forward_features(fast, x.contiguous(memory_format=torch.channels_last_3d))
    cam = gradcam_from_features(feats, 1)[0]
    with torch.no_grad():
        assert torch.allclose(feats.logits, model(x), atol=1e-4)
    torch.testing.assert_close(cam, ref, atol=1e-4 * float(ref.max()), rtol=1e-3)


def test_forward_features_leaves_the_shared_model_untouched(arch_model) -> None:
    _, model = arch_model
    before = {k: v.clone() for k, v in model.state_dict().items()}
    grads_flags = [p.requires_grad for p in model.parameters()]
    feats = forward_features(model, torch.randn(1, 1, *SHAPE), ("layer3", "layer4"))
    cam_maps(feats, 0, "layercam")
    assert not model.training
    assert [p.requires_grad for p in model.parameters()] == grads_flags
    assert all(p.grad is None for p in model.parameters())
    for m in model.modules():
        assert not m._forward_hooks and not m._forward_pre_hooks and not m._backward_hooks
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k]), k


def test_unknown_cam_layer_is_rejected() -> None:
    model = create_model("mc3")
    with pytest.raises(ConfigError, match=r"Unknown Grad-CAM layer 'layer9'.*layer4"):
        check_cam_layer(model, "layer9")


def test_model_of_another_structure_is_rejected() -> None:
    with pytest.raises(ConfigError, match=r"expects a network from .*create_model"):
        check_cam_layer(nn.Sequential(nn.Conv3d(1, 2, 3)), "layer4")


def test_target_out_of_range_is_rejected(arch_model) -> None:
    _, model = arch_model
    feats = forward_features(model, torch.randn(1, 1, *SHAPE))
    with pytest.raises(ConfigError, match=r"target index 3 is out of range; expected 0\.\.2"):
        gradcam_from_features(feats, 3)


def test_upsample_cam_scales_to_unit_range_and_keeps_zero_maps_zero() -> None:
    cam = torch.tensor([[[0.0, 2.0], [1.0, 4.0]]])  # (1, 2, 2)
    up = upsample_cam(cam, (4, 8, 8))
    assert up.shape == (4, 8, 8) and up.dtype == np.float32
    assert up.min() >= 0 and up.max() == pytest.approx(1.0)
    assert up[:, 7, 7] == pytest.approx(1.0)  # the 4.0 corner (h=1, w=1)
    assert up[:, 0, 0] == pytest.approx(0.0)  # the 0.0 corner
    assert not upsample_cam(torch.zeros(2, 2, 2), (4, 4, 4)).any()


# -- geometry --------------------------------------------------------------------------------------

_GEOMETRY_CONFIG = PreprocessConfig(
    spacing_mm=(3.0, 3.0, 3.0), shape_dhw=(16, 24, 24), space="native"
)


def _stored_affine(kind: str) -> np.ndarray:
    """Affines as a file might store them: LPS-flipped, or oblique (rotated 25 degrees about z)."""
    if kind == "flipped":
        return np.array([[-2.0, 0, 0, 40.0], [0, -2.0, 0, 50.0], [0, 0, 2.0, -30.0], [0, 0, 0, 1]])
    a = np.deg2rad(25.0)
    rot = np.array([[np.cos(a), -np.sin(a), 0], [np.sin(a), np.cos(a), 0], [0, 0, 1]])
    affine = np.eye(4)
    affine[:3, :3] = rot @ np.diag([2.0, 2.0, 2.0])
    affine[:3, 3] = (-35.0, -45.0, -40.0)
    return affine


@pytest.mark.parametrize("kind", ["flipped", "oblique"])
def test_hot_voxel_lands_at_its_world_position_on_the_original_grid(tmp_path, kind) -> None:
    """A model-grid map with one hot voxel, mapped back and exported, points at the same mm.

    The tolerance is one model voxel (3 mm): the position is checked on Volume.data's grid and in
    the exported NIfTI (read back with nibabel, through its own affine).
    """
    src = tmp_path / f"{kind}.nii.gz"
    stored_affine = _stored_affine(kind)
    nib.save(nib.Nifti1Image(make_head(seed=3), stored_affine), src)
    volume = load_volume(src)
    grid = preprocess(volume, _GEOMETRY_CONFIG).grid

    hot = (9, 10, 14)  # (d, h, w)
    cam_model = np.zeros(_GEOMETRY_CONFIG.shape_dhw, dtype=np.float32)
    cam_model[hot] = 1.0
    expected_mm = (grid.model_affine @ np.array([*hot, 1.0]))[:3]
    tolerance = max(_GEOMETRY_CONFIG.spacing_mm)

    cam_volume = cam_to_volume(cam_model, grid)
    assert cam_volume.shape == volume.data.shape and cam_volume.max() > 0

    def centroid_mm(arr: np.ndarray, affine: np.ndarray) -> np.ndarray:
        ijk = (np.argwhere(arr > 0) * arr[arr > 0][:, None]).sum(0) / arr.sum()
        return (affine @ np.array([*ijk, 1.0]))[:3]

    def peak_mm(arr: np.ndarray, affine: np.ndarray) -> np.ndarray:
        return (affine @ np.array([*np.unravel_index(arr.argmax(), arr.shape), 1.0]))[:3]

    for where in (centroid_mm(cam_volume, volume.affine), peak_mm(cam_volume, volume.affine)):
        assert np.linalg.norm(where - expected_mm) <= tolerance

    expl = Explanation("mc3", "hgg", cam_model, cam_volume, grid)
    out = save_cam_nifti(expl, volume, tmp_path / "cam.nii.gz")
    written, source = nib.load(out), nib.load(src)
    assert written.shape == source.shape
    np.testing.assert_allclose(written.affine, source.affine, atol=1e-5)
    stored = np.asarray(written.dataobj, dtype=np.float32)
    for where in (centroid_mm(stored, written.affine), peak_mm(stored, written.affine)):
        assert np.linalg.norm(where - expected_mm) <= tolerance


def test_save_cam_nifti_rejects_a_map_of_another_volume(tmp_path, tiny_nifti) -> None:
    volume = load_volume(tiny_nifti)
    grid = preprocess(volume, _GEOMETRY_CONFIG).grid
    wrong = np.zeros((5, 5, 5), dtype=np.float32)
    expl = Explanation("mc3", "hgg", np.zeros(_GEOMETRY_CONFIG.shape_dhw, np.float32), wrong, grid)
    with pytest.raises(ConfigError, match=r"does not match the volume"):
        save_cam_nifti(expl, volume, tmp_path / "x.nii.gz")


# -- meaning ---------------------------------------------------------------------------------------

_MEANING_SHAPE = (16, 24, 24)
_G = np.stack(np.meshgrid(*[np.linspace(-1, 1, n) for n in _MEANING_SHAPE], indexing="ij"))
_BRAIN = (_G**2).sum(0) < 0.85**2


def _lesion_sample(rng: np.random.Generator, lesion: bool) -> tuple[torch.Tensor, np.ndarray]:
    """(1, D, H, W) brain with a bright sphere at a random place, or a matched diffuse brightening.

    Healthy volumes get the lesion's mean extra intensity spread over the whole brain, so the
    classes differ only by where that intensity is: a network must find the lesion.
    """
    x = np.where(_BRAIN, 1.0, 0.0) + rng.normal(0, 0.2, _MEANING_SHAPE)
    mask = np.zeros(_MEANING_SHAPE, dtype=bool)
    if lesion:
        centre = rng.uniform(-0.45, 0.45, 3).reshape(3, 1, 1, 1)
        mask = (((_G - centre) ** 2).sum(0) < 0.3**2) & _BRAIN
        x[mask] += 1.0
    else:
        x[_BRAIN] += 0.045
    return torch.tensor(x, dtype=torch.float32)[None], mask


class _TinyVideoNet(nn.Module):
    """A few-thousand-parameter net with the VideoResNet layout (stem, layer1..4, avgpool, fc)."""

    def __init__(self) -> None:
        super().__init__()

        def block(cin: int, cout: int, k: int = 1, stride: int = 1) -> nn.Sequential:
            conv = nn.Conv3d(cin, cout, k, stride=stride, padding=k // 2, bias=False)
            return nn.Sequential(conv, nn.BatchNorm3d(cout), nn.ReLU(inplace=True))

        self.stem = block(1, 8, k=3)
        self.layer1 = block(8, 16, k=3, stride=2)
        self.layer2, self.layer3, self.layer4 = block(16, 16), block(16, 16), block(16, 16)
        self.avgpool = nn.AdaptiveAvgPool3d(1)
        self.fc = nn.Sequential(nn.Dropout(0.0), nn.Linear(16, 3))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.layer4(self.layer3(self.layer2(self.layer1(self.stem(x)))))
        return self.fc(self.avgpool(x).flatten(1))


@pytest.mark.slow
def test_gradcam_of_a_trained_network_concentrates_on_the_lesion() -> None:
    """Measure: for lesion ("hgg") cases, the share of the brain's CAM mass that lies inside the
    lesion, divided by the lesion's share of the brain's voxels (= what a map that ignores the
    lesion would give, 1.0). A small net is trained here for 40 steps on fresh phantoms.
    """
    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    model = _TinyVideoNet()
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    labels = [False, True] * 4
    for _ in range(40):
        x = torch.stack([_lesion_sample(rng, lesion)[0] for lesion in labels])
        y = torch.tensor([2 if lesion else 0 for lesion in labels])
        loss = nn.functional.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    for m in model.modules():  # settle BatchNorm statistics on the final weights
        if isinstance(m, nn.BatchNorm3d):
            m.reset_running_stats()
            m.momentum = None
    with torch.no_grad():
        for _ in range(3):
            model(torch.stack([_lesion_sample(rng, lesion)[0] for lesion in labels]))
    model.eval()

    ratios, peaks_inside, p_hgg = [], 0, []
    test_rng = np.random.default_rng(1)
    for _ in range(6):
        x, mask = _lesion_sample(test_rng, lesion=True)
        feats = forward_features(model, x[None])
        p_hgg.append(float(feats.logits.detach().softmax(1)[0, 2]))
        cam = upsample_cam(gradcam_from_features(feats, 2)[0], _MEANING_SHAPE)
        share = cam[mask].sum() / cam[_BRAIN].sum()
        chance = mask.sum() / _BRAIN.sum()
        ratios.append(share / chance)
        peaks_inside += bool(mask[np.unravel_index(cam.argmax(), cam.shape)])
    assert np.mean(p_hgg) > 0.5, f"the network did not learn the task: p(hgg)={p_hgg}"
    assert np.median(ratios) > 2.5, f"CAM mass in lesion / chance = {np.round(ratios, 2)}"
    assert peaks_inside >= 5


# -- methods beyond layer-4 Grad-CAM ---------------------------------------------------------------


def test_layer3_gradcam_from_a_two_stage_pass_equals_captum(arch_model) -> None:
    _, model = arch_model
    x = torch.randn(1, 1, *SHAPE, generator=torch.Generator().manual_seed(3))
    feats = forward_features(model, x, ("layer3", "layer4"))
    assert list(feats.activations) == ["layer3", "layer4"]
    with torch.no_grad():
        assert torch.allclose(feats.logits, model(x), atol=1e-5)
    maps = cam_maps(feats, 2, "gradcam")
    ref3 = gradcam_captum(model, x, 2, "layer3")
    ref4 = gradcam_captum(model, x, 2, "layer4")
    torch.testing.assert_close(maps["layer3"][0], ref3, atol=1e-5 * float(ref3.max()), rtol=1e-4)
    torch.testing.assert_close(maps["layer4"][0], ref4, atol=1e-5 * float(ref4.max()), rtol=1e-4)


def test_gradient_x_activation_equals_captum(arch_model) -> None:
    _, model = arch_model
    x = torch.randn(1, 1, *SHAPE, generator=torch.Generator().manual_seed(4))
    feats = forward_features(model, x, "layer3")
    ours = cam_maps(feats, 1, "gradxact")["layer3"][0]
    with torch.enable_grad():
        ref = LayerGradientXActivation(model, model.layer3).attribute(x, target=1)
    ref = torch.relu(ref.detach()[0].sum(0))
    assert ref.max() > 0
    torch.testing.assert_close(ours, ref, atol=1e-5 * float(ref.max()), rtol=1e-4)


def test_layercam_is_positive_gradients_times_activations(arch_model) -> None:
    """LayerCAM against the formula computed from a hooked forward and a plain backward."""
    _, model = arch_model
    x = torch.randn(1, 1, *SHAPE, generator=torch.Generator().manual_seed(5))
    ours = cam_maps(forward_features(model, x, "layer4"), 0, "layercam")["layer4"][0]
    kept = {}
    handle = model.layer4.register_forward_hook(lambda m, i, o: kept.setdefault("a", o))
    try:
        with torch.enable_grad():
            logits = model(x.requires_grad_(True))
            (grad,) = torch.autograd.grad(logits[0, 0], kept["a"])
    finally:
        handle.remove()
    ref = (torch.relu(grad) * kept["a"].detach()).sum(1)[0]
    assert ref.max() > 0
    torch.testing.assert_close(ours, ref, atol=1e-5 * float(ref.max()), rtol=1e-4)


def test_fused_map_is_restricted_to_the_mask_and_peaks_inside() -> None:
    l3 = torch.zeros(1, 4, 8, 8)
    l3[0, 0, 0, 0] = 5.0  # strongest at a corner that the mask removes
    l3[0, 2, 4, 4] = 1.0
    l4 = torch.ones(1, 2, 4, 4)
    fused = fuse_maps({"layer3": l3, "layer4": l4}, (8, 16, 16))
    assert fused.shape == (1, 8, 16, 16)
    assert float(fused.max()) <= 1.0 + 1e-6  # each stage scaled to 1, then averaged
    mask = np.zeros((8, 16, 16), dtype=bool)
    mask[2:7, 4:14, 4:14] = True
    out = finish_map(fused[0], mask)
    assert out.max() == pytest.approx(1.0) and not out[~mask].any()
    assert mask[np.unravel_index(out.argmax(), out.shape)]
    with pytest.raises(ConfigError, match=r"does not match the model grid"):
        finish_map(fused[0], mask[:4])


def test_brain_mask_on_model_grid_excludes_the_air(tiny_nifti) -> None:
    prep = preprocess(load_volume(tiny_nifti), _GEOMETRY_CONFIG)
    mask = brain_mask_on_model_grid(prep.tensor)
    assert mask.shape == _GEOMETRY_CONFIG.shape_dhw
    d, h, w = (s // 2 for s in mask.shape)
    assert mask[d, h, w] and not mask[0, 0, 0] and not mask[-1, -1, -1]
    assert 0.1 < mask.mean() < 0.9


def test_predictor_maps_have_no_heat_outside_the_brain(tmp_path, tiny_nifti) -> None:
    weights = make_tiny_weights(tmp_path / "w")
    predictor = Predictor.from_dir(weights, settings=InferenceSettings(cam_method="layercam-l34"))
    volume = load_volume(tiny_nifti)
    analysis = predictor.analyze(volume)
    prep = preprocess(volume, TINY)
    mask = brain_mask_on_model_grid(prep.tensor)
    head = make_head() > 50  # the tiny head's brain (ellipsoid) on the volume grid
    for expl in analysis.explanations.values():
        assert expl.method == "layercam-l34"
        assert expl.cam_model.max() == pytest.approx(1.0)
        assert not expl.cam_model[~mask].any()
        # Margin: the model-grid mask may extend one 6 mm model voxel past the brain (it is taken
        # on the smoothed model input) and trilinear mapping back spreads one more: 12 mm = 6
        # voxels of this 2 mm volume. Beyond that, nothing.
        far = ndimage.binary_dilation(head, iterations=6)
        assert not expl.cam_volume[~far].any()
    unmasked = Predictor.from_dir(weights, settings=InferenceSettings(restrict_to_brain=False))
    assert any(e.cam_model[~mask].any() for e in unmasked.analyze(volume).explanations.values())


def test_occlusion_is_the_drop_of_the_target_logit(arch_model) -> None:
    _, model = arch_model
    x = torch.randn(1, 1, *SHAPE, generator=torch.Generator().manual_seed(6))
    attr = occlusion_captum(model, x, 2, window_dhw=(8, 16, 16), per_eval=4)
    assert attr.shape == SHAPE and attr.min() >= 0
    occluded = x.clone()
    occluded[..., :8, 16:, :16] = 0.0
    drop = float(logits_of(model, x)[0, 2] - logits_of(model, occluded)[0, 2])
    assert float(attr[3, 20, 5]) == pytest.approx(max(drop, 0.0), abs=1e-4)


def test_guided_gradcam_on_a_reference_copy_leaves_the_model_unhooked(arch_model) -> None:
    _, model = arch_model
    x = torch.randn(1, 1, *SHAPE, generator=torch.Generator().manual_seed(7))
    ref = reference_copy(model)
    attr = guided_gradcam_captum(ref, x, 0)
    assert attr.shape == SHAPE and attr.min() >= 0 and attr.max() > 0
    assert all(not m.inplace for m in ref.modules() if isinstance(m, nn.ReLU))
    for m in list(model.modules()) + list(ref.modules()):
        assert not m._forward_hooks and not m._backward_hooks


def test_unknown_method_is_named() -> None:
    with pytest.raises(ConfigError, match=r"Unknown explanation method 'x'.*layercam-l34"):
        get_cam_method("x")
