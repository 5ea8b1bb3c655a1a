"""Training augmentation: shapes kept, left-right flips only along W, seeded reproducibility."""

from __future__ import annotations

import copy

import pytest
import torch
import torchio as tio

from tumortrace.augment import build_augment
from tumortrace.errors import ConfigError

SHAPE = (1, 12, 24, 20)


def _volume() -> torch.Tensor:
    """Asymmetric along every axis, so any flip or permutation changes it."""
    g = torch.Generator().manual_seed(0)
    return torch.rand(SHAPE, generator=g) + torch.linspace(0, 1, SHAPE[3])


def test_none_and_unknown():
    assert build_augment("none") is None
    with pytest.raises(ConfigError, match=r"Unknown augmentation 'strong'; expected one of"):
        build_augment("strong")


def test_light_is_the_seed_papers_recipe():
    affine, flip = build_augment("light").transforms
    assert isinstance(affine, tio.RandomAffine) and isinstance(flip, tio.RandomFlip)
    assert affine.scales == (0.9, 1.2) * 3 and affine.degrees == (-10.0, 10.0) * 3
    assert flip.axes == (2,) and flip.flip_probability == 0.25


@pytest.mark.parametrize("mode", ["light", "heavy"])
def test_keeps_shape_and_dtype(mode):
    augment = build_augment(mode, seed=0)
    x = _volume()
    for _ in range(3):
        y = augment(x)
        assert isinstance(y, torch.Tensor) and y.shape == SHAPE and y.dtype == torch.float32
        assert torch.isfinite(y).all()
    assert torch.equal(x, _volume())  # the input is not modified in place


# TorchIO warns that elastic folding may occur on grids this tiny; real grids (>= 32x64x64) do not.
@pytest.mark.filterwarnings("ignore:The maximum displacement is larger")
def test_heavy_transforms_each_keep_shape():
    transforms = build_augment("heavy").transforms
    kinds = [type(t) for t in transforms]
    assert kinds[2:] == [
        tio.RandomElasticDeformation,
        tio.RandomMotion,
        tio.RandomSpike,
        tio.RandomGhosting,
    ]
    torch.manual_seed(0)
    for t in [transforms[0], *transforms[2:]]:  # the flip has its own per-axis probability
        forced = copy.deepcopy(t)
        forced.probability = 1.0
        y = forced(_volume())
        assert y.shape == SHAPE and torch.isfinite(y).all()
        assert not torch.equal(y, _volume()), type(t).__name__


def test_light_flips_left_right_only():
    flip = build_augment("light").transforms[1]
    x = _volume()
    torch.manual_seed(0)
    outcomes = []
    for _ in range(400):
        y = flip(x)
        if torch.equal(y, x):
            outcomes.append("kept")
        else:
            assert torch.equal(y, x.flip(3)), "a flip must reverse W (left-right) and nothing else"
            outcomes.append("flipped")
    assert 60 <= outcomes.count("flipped") <= 140  # p = 0.25 of 400; seeded


def test_seeded_is_reproducible_and_isolated():
    x = _volume()
    a, b = build_augment("light", seed=3), build_augment("light", seed=3)
    first = a(x)
    assert torch.equal(first, b(x))
    assert not torch.equal(a(x), first)  # the next call draws new parameters
    torch.manual_seed(5)
    expected = torch.rand(1)
    torch.manual_seed(5)
    build_augment("heavy", seed=1)(x)
    assert torch.equal(torch.rand(1), expected)  # the global generator is untouched


def _standard_volume(fill: float = -3.0) -> torch.Tensor:
    """An ellipsoid 'brain' z-scored inside, ``fill`` outside (a standard-space model input)."""
    d, h, w = SHAPE[1:]
    zz, yy, xx = torch.meshgrid(
        torch.linspace(-1, 1, d), torch.linspace(-1, 1, h), torch.linspace(-1, 1, w), indexing="ij"
    )
    brain = (zz**2 + yy**2 + xx**2) < 0.7
    g = torch.Generator().manual_seed(1)
    x = torch.rand(SHAPE, generator=g) + xx
    x = (x - x[:, brain].mean()) / x[:, brain].std()
    return torch.where(brain, x, torch.tensor(fill))


def test_scanner_keeps_the_standard_space_contract():
    x = _standard_volume()
    augment = build_augment("scanner", seed=0)
    for _ in range(6):
        y = augment(x)
        assert isinstance(y, torch.Tensor) and y.shape == SHAPE and y.dtype == torch.float32
        brain = y != -3.0
        assert torch.isfinite(y).all() and not torch.equal(y, x)
        assert (brain ^ (x != -3.0)).float().mean() < 0.1  # the brain moved by a voxel at most
        assert float(y[brain].mean()) == pytest.approx(0.0, abs=1e-4)
        assert float(y[brain].std()) == pytest.approx(1.0, abs=1e-3)
        assert (y[0, ::11, ::23, ::19] == -3.0).all()  # the box's corners stay fill
    assert torch.equal(x, _standard_volume())  # the input is not modified in place


def test_scanner_is_seeded_and_each_effect_runs():
    x = _standard_volume()
    a, b = build_augment("scanner", seed=3), build_augment("scanner", seed=3)
    first = a(x)
    assert torch.equal(first, b(x)) and not torch.equal(a(x), first)
    always = build_augment("scanner", seed=4)
    always.p = 1.0
    y = always(x)
    assert y.shape == SHAPE and float(y[y != -3.0].std()) == pytest.approx(1.0, abs=1e-3)
