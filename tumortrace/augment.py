"""Random TorchIO augmentation for training only (the deterministic pipeline is in ``preprocess``).

Modes:
    * ``"none"``: no augmentation (:func:`build_augment` returns ``None``).
    * ``"light"`` (the seed paper's): ``RandomAffine(scales=(0.9, 1.2), degrees=10)`` and a
      left-right flip with probability 0.25.
    * ``"heavy"``: light plus elastic deformation, motion, spike and ghosting artefacts, each
      applied to a fraction of the volumes. The elastic grid (7 control points, up to 4 voxels of
      displacement) suits model grids of 32x64x64 and up; on smaller grids TorchIO warns that
      folding may occur.

The transforms take and return a model tensor ``(1, D, H, W)`` float32 (D = z, H = y, W = x).
TorchIO sees its three spatial axes as (D, H, W) with an identity affine, so left-right, the
x axis, is spatial axis **2** (tensor dim 3), and affine parameters are in voxels of the model grid.
"""

from __future__ import annotations

from typing import Any

import torch
import torchio as tio

from tumortrace.errors import ConfigError

MODES: tuple[str, ...] = ("none", "light", "heavy")
LEFT_RIGHT_AXIS = 2
"""Spatial axis of a ``(1, D, H, W)`` tensor that runs left-right (W = x)."""
FLIP_PROBABILITY = 0.25


class SeededCompose(tio.Compose):
    """A ``Compose`` whose n-th call draws from ``torch.manual_seed(seed + n)``.

    The global torch random state is saved and restored around each call, so a seeded augmenter
    is reproducible on its own and does not disturb other random streams.
    """

    def __init__(self, transforms: list[tio.Transform], seed: int, **kwargs: Any) -> None:
        super().__init__(transforms, **kwargs)
        self.seed = int(seed)
        self.calls = 0

    def __call__(self, data: Any) -> Any:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.seed + self.calls)
            self.calls += 1
            return super().__call__(data)


def build_augment(mode: str, seed: int | None = None) -> tio.Compose | None:
    """Training augmentation for ``mode``.

    Args:
        mode: ``"none"``, ``"light"`` or ``"heavy"``.
        seed: make the sequence of random draws reproducible (see :class:`SeededCompose`); with
            ``None`` the global torch generator is used (seed it per DataLoader worker).

    Returns:
        A ``tio.Compose`` mapping ``(1, D, H, W)`` float32 to the same shape, or ``None`` for
        ``"none"``.

    Raises:
        ConfigError: unknown mode.
    """
    if mode not in MODES:
        raise ConfigError(f"Unknown augmentation {mode!r}; expected one of {list(MODES)}.")
    if mode == "none":
        return None
    transforms: list[tio.Transform] = [
        tio.RandomAffine(scales=(0.9, 1.2), degrees=10),
        tio.RandomFlip(axes=(LEFT_RIGHT_AXIS,), flip_probability=FLIP_PROBABILITY),
    ]
    if mode == "heavy":
        transforms += [
            tio.RandomElasticDeformation(num_control_points=7, max_displacement=4.0, p=0.3),
            tio.RandomMotion(degrees=5, translation=5, num_transforms=2, p=0.2),
            tio.RandomSpike(num_spikes=1, intensity=(0.1, 0.4), p=0.1),
            tio.RandomGhosting(num_ghosts=(2, 6), intensity=(0.2, 0.6), p=0.2),
        ]
    if seed is None:
        return tio.Compose(transforms)
    return SeededCompose(transforms, seed)
