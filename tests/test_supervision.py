"""Lesion-supervised training: the losses against hand-computed values, the masks on the model
grid and under augmentation, the glioma loss, the switches, the card and resume."""

from __future__ import annotations

import io
import json
import math
from dataclasses import replace
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from conftest import load_train_cli, make_head
from torch.nn import functional as F

from tumortrace import loop, runtime, supervision
from tumortrace import train as tt
from tumortrace.augment import build_pair_augment
from tumortrace.cases import check_cases, class_weight, training_cases
from tumortrace.checkpoint import load_checkpoint
from tumortrace.config import PreprocessConfig, TrainConfig
from tumortrace.data import BalancedSampler, VolumeDataset
from tumortrace.errors import ConfigError
from tumortrace.io import volume_from_array
from tumortrace.manifest import Case, lesion_mask_path, write_manifest
from tumortrace.models import create_model
from tumortrace.preprocess import DHW_TO_XYZ, GridMap, Preprocessed
from tumortrace.standard import lesion_input

SHAPE = (4, 12, 12)
SPACING = (5.0, 4.0, 4.0)
cli = load_train_cli()


def lesion_of(shape=(24, 28, 20)) -> np.ndarray:
    """The bright sphere of :func:`conftest.make_head` (``lesion=True``) as a uint8 mask."""
    grid = np.stack(np.meshgrid(*[np.linspace(-1, 1, n) for n in shape], indexing="ij"))
    c = np.array([0.3, 0.1, 0.2]).reshape(3, 1, 1, 1)
    return (np.sqrt(((grid - c) ** 2).sum(0)) < 0.2).astype(np.uint8)


def write_mask_cohort(folder: Path) -> Path:
    """Tiny heads with kinds: real gliomas with masks (a mask column, or a sibling file), one
    without, one of unknown grade, carved and healthy-made cases, healthy brains."""
    folder.mkdir(parents=True, exist_ok=True)
    affine = np.diag([2.0, 2.0, 2.0, 1.0])
    rows = (
        [("healthy", "real", False)] * 4 + [("healthy", "healthy-made", False)] * 2
        + [("lgg", "real", True)] * 3 + [("lgg", "carved", True)] * 2
        + [("hgg", "real", True)] * 3 + [("hgg", "carved", True)] * 2
        + [("hgg", "real", None), ("glioma", "real", True)]
    )  # fmt: skip
    cases = []
    for i, (label, kind, masked) in enumerate(rows):
        sid = f"{label}-{kind}-{i:02d}"
        path = folder / f"{sid}.nii.gz"
        nib.save(nib.Nifti1Image(make_head((24, 28, 20), seed=i, lesion=label != "healthy"),
                                 affine), path)  # fmt: skip
        mask = None
        if masked:
            target = lesion_mask_path(path) if i % 2 else folder / f"m-{sid}.nii.gz"
            nib.save(nib.Nifti1Image(lesion_of(), affine), target)
            mask = None if i % 2 else target  # odd: the sibling <stem>_lesion.nii.gz
        cases.append(Case(sid, path, label, "test", kind=kind, patient=sid, mask=mask))
    return write_manifest(cases, folder / "manifest.csv")


@pytest.fixture(scope="module")
def mask_cohort(tmp_path_factory) -> Path:
    return write_mask_cohort(tmp_path_factory.mktemp("mask-cohort"))


def argv_for(manifest: Path, out: Path, data: Path, *extra: str) -> list[str]:
    return [
        "--arch", "mc3", "--epochs", "1", "--folds", "2", "--batch-size", "4",
        "--input-shape", *map(str, SHAPE), "--spacing", *map(str, SPACING), "--device", "cpu",
        "--workers", "0", "--augment", "light", "--manifest", str(manifest), "--out", str(out),
        "--data-dir", str(data), "--max-steps-per-epoch", "2", "--space", "native", *extra,
    ]  # fmt: skip


def config_for(argv: list[str]) -> TrainConfig:
    return cli.config_from_args(cli.build_parser().parse_args(argv))


# ----------------------------------------------------------------------------- losses by hand


def test_classification_loss_is_cross_entropy_without_gliomas():
    logits = torch.tensor([[1.0, 0.0, -1.0], [0.2, 0.3, 2.0], [0.0, 1.0, 0.5]])
    y = torch.tensor([0, 2, 1])
    w = torch.tensor([0.5, 1.0, 2.0])
    assert torch.equal(
        supervision.classification_loss(logits, y, w), F.cross_entropy(logits, y, weight=w)
    )


def test_glioma_of_unknown_grade_loss_by_hand():
    logits = torch.tensor([[1.0, 0.0, -1.0], [0.5, 1.0, 2.0]])
    y = torch.tensor([0, -1])
    w = torch.tensor([0.2, 0.6, 1.0])
    e0, e1 = np.exp([1.0, 0.0, -1.0]), np.exp([0.5, 1.0, 2.0])
    ce0 = -math.log(e0[0] / e0.sum())
    glioma = -math.log((e1[1] + e1[2]) / e1.sum())  # -log(p_LGG + p_HGG)
    w_g = (0.6 + 1.0) / 2
    expected = (0.2 * ce0 + w_g * glioma) / (0.2 + w_g)
    got = supervision.classification_loss(logits, y, w)
    assert got.item() == pytest.approx(expected, rel=1e-6)
    # right whatever the grade: the loss is the same if the network moves mass from LGG to HGG
    swapped = torch.tensor([[1.0, 0.0, -1.0], [0.5, 2.0, 1.0]])
    assert supervision.classification_loss(swapped, y, w).item() == pytest.approx(expected)


def test_lesion_loss_bce_plus_soft_dice_by_hand():
    logits = torch.tensor([0.0, 2.0]).reshape(1, 1, 1, 1, 2)
    mask = torch.zeros(1, 1, 1, 2, 4)
    mask[..., 1, 2:] = 1.0  # right half: 2 of 4 voxels lesion; left half: none
    t = np.array([0.0, 0.5])  # area fractions on the head's 1x1x2 grid
    p = 1 / (1 + np.exp(-np.array([0.0, 2.0])))
    bce = float(np.mean(-(t * np.log(p) + (1 - t) * np.log(1 - p))))
    dice = 1 - (2 * (p * t).sum() + 1.0) / (p.sum() + t.sum() + 1.0)
    got = supervision.lesion_loss(logits, mask, torch.tensor([True]))
    assert got.item() == pytest.approx(bce + dice, rel=1e-6)
    assert torch.allclose(
        supervision.lesion_target(mask, (1, 1, 2)).flatten(), torch.tensor(t).float()
    )


def test_healthy_target_is_zero_and_an_unknown_mask_gives_no_lesion_loss():
    logits = torch.full((2, 1, 1, 2, 2), -3.0, requires_grad=True)
    zeros = torch.zeros(2, 1, 2, 4, 4)
    healthy = supervision.lesion_loss(logits, zeros, torch.tensor([True, True]))
    p = 1 / (1 + math.exp(3.0))
    by_hand = -math.log(1 - p) + 1 - 1.0 / (4 * p + 1.0)  # BCE + Dice, all-zero target
    assert healthy.item() == pytest.approx(by_hand, rel=1e-6)
    unknown = supervision.lesion_loss(
        logits, torch.ones(2, 1, 2, 4, 4), torch.tensor([False, False])
    )
    assert unknown.item() == 0.0
    unknown.backward()  # still tied to the graph (DDP needs every parameter used)
    assert torch.count_nonzero(logits.grad) == 0


def test_class_activation_and_energy_outside_by_hand():
    features = torch.tensor([[1.0, -2.0], [0.5, 3.0]]).reshape(1, 2, 1, 1, 2)  # (N, K, d, h, w)
    fc = torch.nn.Linear(2, 3)
    with torch.no_grad():
        fc.weight.copy_(torch.tensor([[1.0, 0.0], [2.0, 1.0], [0.0, -1.0]]))
    cam = supervision.class_activation(features, fc, torch.tensor([1]))
    assert cam.flatten().tolist() == pytest.approx([2 * 1 + 0.5, 2 * -2 + 3])  # [2.5, -1]
    glioma = supervision.class_activation(features, fc, torch.tensor([-1]))
    assert glioma.flatten().tolist() == pytest.approx([2 + 0.5 - 0.5, -4 + 3 - 3])  # LGG + HGG
    mask = torch.tensor([0.0, 1.0]).reshape(1, 1, 1, 1, 2)
    share = supervision.outside_share(torch.tensor([[[[3.0, 1.0]]]]), mask, margin=0)
    assert share.item() == pytest.approx(3.0 / 4.0)
    assert supervision.outside_share(torch.tensor([[[[-3.0, 1.0]]]]), mask, 0).item() == 0.0
    assert supervision.outside_share(torch.tensor([[[[3.0, 1.0]]]]), mask, 1).item() == 0.0
    known = torch.tensor([True])
    healthy = supervision.attention_loss(features, fc, torch.tensor([0]), mask, known)
    assert healthy.item() == 0.0  # no attention term on a healthy case


def test_supervised_wrapper_keeps_the_logits_and_heads_the_chosen_stage():
    torch.manual_seed(0)
    net = create_model("mc3").eval()
    x = torch.randn(2, 1, 4, 16, 16)
    for layer, grid in (("layer3", (4, 2, 2)), ("layer2", (4, 4, 4))):
        trainee = supervision.Supervised(net, layer).eval()
        with torch.no_grad():
            out = trainee.outputs(x)
            assert torch.equal(out.logits, net(x))
        assert out.lesion.shape == (2, 1, *grid) and out.features.shape == (2, 512, 4, 1, 1)
        assert {k.split(".")[0] for k in trainee.state_dict()} == {"network", "head"}
    with pytest.raises(ConfigError, match="--lesion-layer 'layer4'"):
        supervision.Supervised(net, "layer4")


# ----------------------------------------------------------------------------- masks


def _shift_d(n: float) -> np.ndarray:
    m = np.eye(4)
    m[0, 3] = n
    return m


def test_lesion_input_warps_through_the_model_grid():
    mask = np.zeros((8, 9, 10), np.uint8)
    mask[5, 2, 1] = 2  # oedema counts as lesion
    affine = np.diag([2.0, 2.0, 2.0, 1.0])
    grid = GridMap(affine @ DHW_TO_XYZ, affine, (8, 9, 10))
    pre = Preprocessed(tensor=torch.zeros(1, 10, 9, 8), grid=grid)
    out = lesion_input(volume_from_array(mask, affine), pre)
    assert out.shape == (10, 9, 8) and np.argwhere(out).tolist() == [[1, 2, 5]]
    # the model grid at twice the spacing, shifted by one model voxel along D (z)
    coarse = GridMap(affine @ np.diag([2.0, 2.0, 2.0, 1.0]) @ DHW_TO_XYZ, affine, (8, 9, 10))
    coarse = GridMap(coarse.model_affine @ _shift_d(1), affine, (8, 9, 10))
    wide = np.zeros_like(mask)
    wide[4:6, 2:4, 2:4] = 1  # x 4-5, y 2-3, z 2-3 -> model d 0 (z 2 after the shift), h 1, w 2
    out = lesion_input(
        volume_from_array(wide, affine), Preprocessed(torch.zeros(1, 4, 4, 4), coarse)
    )
    assert np.argwhere(out).tolist() == [[0, 1, 2]]


def test_dataset_masks_healthy_zero_unknown_and_cached(mask_cohort, tmp_path):
    from tumortrace.manifest import read_manifest

    cases = read_manifest(mask_cohort)
    cfg = PreprocessConfig(spacing_mm=(2.0, 2.0, 2.0), shape_dhw=(20, 28, 24), space="native")
    ds = VolumeDataset(cases, cfg, cache_dir=tmp_path / "cache", masks=True)
    by_id = {c.subject_id: i for i, c in enumerate(cases)}
    healthy = next(i for c, i in by_id.items() if c.startswith("healthy"))
    x, y, lesion, known = ds[healthy]
    assert y == 0 and known and lesion.sum() == 0 and lesion.shape == (1, 20, 28, 24)
    unmasked = by_id[next(c for c in by_id if c.startswith("hgg-real-16"))]
    assert ds[unmasked][3] is False and ds[unmasked][2].sum() == 0
    for sid in ("lgg-real-06", "lgg-real-07"):  # a mask column, a sibling <stem>_lesion file
        x, y, lesion, known = ds[by_id[sid]]
        inside = x[lesion > 0]
        assert known and lesion.sum() > 20 and inside.mean() > x[(lesion == 0) & (x > 0)].mean() + 1
    assert len(list((tmp_path / "cache").glob("*.lesion.safetensors"))) == 2
    again = VolumeDataset(cases, cfg, cache_dir=tmp_path / "cache", masks=True)
    assert torch.equal(
        again.load_mask(by_id["lgg-real-06"])[0], ds.load_mask(by_id["lgg-real-06"])[0]
    )


@pytest.mark.parametrize("mode", ["light", "scanner"])
def test_mask_follows_the_spatial_augmentation(mode):
    x = torch.full((1, 8, 16, 16), -3.0)
    x[:, 1:7, 2:14, 2:14] = 0.0
    lesion = torch.zeros(1, 8, 16, 16)
    lesion[:, 2:6, 4:9, 3:7] = 1.0  # left of centre along W (left-right)
    x[lesion > 0] = 3.0
    flipped = 0
    for seed in range(10, 20):  # seeds 12, 14, 17 and 19 flip (probability 0.25)
        xa, la = build_pair_augment(mode, seed=seed)(x, lesion)
        assert set(la.unique().tolist()) <= {0.0, 1.0} and la.sum() > 0
        assert xa[la > 0].mean() > xa[(la == 0) & (xa > -2)].mean() + 1.0  # still on the lesion
        flipped += int(la.nonzero()[:, 3].float().mean() > 8)
    if mode == "light":
        assert flipped > 0  # some draws flipped left-right, and the mask went along


# ----------------------------------------------------------------------------- glioma, kinds


def test_balanced_sampler_and_class_weight_with_gliomas():
    labels = [0] * 6 + [1] * 2 + [2] * 3 + [-1] * 2
    draws = BalancedSampler(labels, seed=3).draws()
    got = np.asarray(labels)[draws]
    assert len(draws) == 13 and (got == -1).sum() == 2
    assert sorted((got == c).sum() for c in (0, 1, 2)) == [3, 4, 4]
    cases = [Case(f"s{i}", Path("x"), ("healthy", "lgg", "hgg", "glioma")[lab], "t")
             for i, lab in enumerate(labels)]  # fmt: skip
    expected = torch.tensor([1 - 6 / 11, 1 - 2 / 11, 1 - 3 / 11])
    assert torch.allclose(class_weight(cases), expected)


def test_kind_switches_filter_training_cases_only(mask_cohort, tmp_path):
    from tumortrace.manifest import read_manifest

    cases = read_manifest(mask_cohort)
    cfg = config_for(argv_for(mask_cohort, tmp_path / "w", tmp_path / "d", "--no-carved"))
    assert not cfg.carved and cfg.healthy_made
    kept = training_cases(cfg, cases)
    assert {c.kind for c in kept} == {"real", "healthy-made"} and len(kept) == len(cases) - 4
    no_kind = [replace(c, kind="") for c in cases]
    with pytest.raises(ConfigError, match="--no-carved leaves out cases by their kind"):
        check_cases(cfg, no_kind)
    lesion = replace(TrainConfig(), lesion_weight=1.0)
    with pytest.raises(ConfigError, match="need lesion masks, but no tumour case has one"):
        check_cases(lesion, [replace(c, mask=None, path=tmp_path / c.path.name) for c in cases])


@pytest.mark.parametrize(
    ("extra", "match"),
    [
        (("--lesion-weight", "-1"), "--lesion-weight -1.0 must be a finite number >= 0"),
        (("--attention-weight", "nan"), "--attention-weight nan must be a finite number >= 0"),
        (("--lesion-layer", "layer4"), "--lesion-layer 'layer4'; expected one of"),
        (("--attention-margin", "-2"), "--attention-margin -2 must be an integer from 0 to 16"),
        (("--lesion-weight", "1", "--arch", "cnn3d_small"), "'cnn3d_small' is a baseline"),
    ],
)
def test_supervision_flags_are_checked(mask_cohort, tmp_path, extra, match):
    cfg = config_for(argv_for(mask_cohort, tmp_path / "w", tmp_path / "d", *extra))
    with pytest.raises(ConfigError, match=match):
        tt.validate_config(cfg)


# ----------------------------------------------------------------------------- end to end


@pytest.fixture(scope="module")
def supervised_run(mask_cohort, tmp_path_factory):
    base = tmp_path_factory.mktemp("sup")
    extra = ("--lesion-weight", "0.5", "--lesion-layer", "layer2", "--attention-weight", "0.2",
             "--no-healthy-made", "--balanced")  # fmt: skip
    argv = argv_for(mask_cohort, base / "w", base / "data", *extra)
    return tt.run(config_for(argv), command="", progress=False), base


def test_supervised_run_records_the_switches_and_ships_the_network_alone(supervised_run):
    _, base = supervised_run
    card = json.loads((base / "w" / "mc3.json").read_text())
    t = card["training"]
    assert (t["lesion_weight"], t["lesion_layer"], t["attention_weight"]) == (0.5, "layer2", 0.2)
    assert t["healthy_made"] is False and t["carved"] is True and t["attention_margin"] == 1
    assert t["cohort_kinds"] == {"carved": 4, "healthy-made": 2, "real": 12}
    assert "lesion head on layer2" in card["notes"] and "healthy-made cases" in card["notes"]
    model, _ = load_checkpoint(base / "w" / "mc3.json")  # no head.* keys: loads as the network
    assert not any(k.startswith("head") for k in model.state_dict())
    bench = json.loads((base / "w" / "benchmarks" / "mc3.json").read_text())
    tested = [c for f in bench["folds"] for c in f["cases"]]
    assert len(tested) == sum(f["n_test"] for f in bench["folds"])
    assert "healthy-made" in {c["kind"] for c in tested}  # the test parts keep every kind
    made = sum(1 for c in tested if c["kind"] == "healthy-made")
    # every fold trains and validates without its 2 healthy-made cases, and tests on all it holds
    assert sum(18 - f["n_train"] - f["n_val"] - f["n_test"] for f in bench["folds"]) == 4 - made
    for f in bench["folds"]:
        gliomas = sum(1 for c in f["cases"] if c["label"] == "glioma")
        assert f.get("n_glioma", 0) == gliomas
        if gliomas:
            called = [
                c["probs"][0] < max(c["probs"][1:]) for c in f["cases"] if c["label"] == "glioma"
            ]
            assert f["glioma_called_tumour"] == pytest.approx(np.mean(called))
    assert all(c["label"] in ("healthy", "lgg", "hgg", "glioma") for c in tested)


def _tiny_set(n: int = 8):
    g = torch.Generator().manual_seed(5)
    x = torch.randn(n, 1, *SHAPE, generator=g)
    y = torch.tensor([0, 1, 2, -1] * (n // 4))
    lesion = torch.zeros(n, 1, *SHAPE)
    lesion[y != 0, :, 1:3, 4:8, 4:8] = 1.0
    known = torch.tensor([True, True, True, False] * (n // 4))
    return [(x[i], int(y[i]), lesion[i], bool(known[i])) for i in range(n)]


def test_supervised_fold_resumes_to_the_uninterrupted_weights():
    cfg = TrainConfig(arch="mc3", epochs=2, batch_size=4, workers=0, patience=0,
                      lesion_weight=1.0, attention_weight=0.5)  # fmt: skip
    rt = runtime.setup_runtime("cpu")
    data = _tiny_set()
    weight = torch.ones(3)
    snaps: list[bytes] = []

    def keep(state):
        buf = io.BytesIO()
        torch.save(state, buf)
        snaps.append(buf.getvalue())

    torch.manual_seed(1)
    full = loop.fit_fold(cfg, create_model("mc3"), data, None, rt, weight, progress=False,
                         on_epoch=keep)  # fmt: skip
    after_one = torch.load(io.BytesIO(snaps[1]), weights_only=True)  # the resume file's form
    assert after_one["epoch"] == 1 and set(after_one["head"]) == {"weight", "bias"}
    torch.manual_seed(99)  # another initialisation: everything must come from the snapshot
    resumed = loop.fit_fold(cfg, create_model("mc3"), data, None, rt, weight, progress=False,
                            state=after_one)  # fmt: skip
    assert full.best_state.keys() == resumed.best_state.keys()
    for k, v in full.best_state.items():
        assert torch.equal(v, resumed.best_state[k]), k
