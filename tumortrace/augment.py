"""Random TorchIO augmentation for training only (the deterministic pipeline is in ``preprocess``).

Modes:
    * ``"none"``: no augmentation (:func:`build_augment` returns ``None``).
    * ``"light"`` (the seed paper's): ``RandomAffine(scales=(0.9, 1.2), degrees=10)`` and a
      left-right flip with probability 0.25.
    * ``"heavy"``: light plus elastic deformation, motion, spike and ghosting artefacts, each
      applied to a fraction of the volumes. The elastic grid (7 control points, up to 4 voxels of
      displacement) suits model grids of 32x64x64 and up; on smaller grids TorchIO warns that
      folding may occur.
    * ``"scanner"`` (:class:`ScannerAugment`), for standard-space inputs (the brain z-scored, a
      constant ``fill`` outside): a registration-residual jitter (rotation <= 2 degrees, scale
      <= 2 %, translation <= 1 voxel; a larger random affine moves the brain against a fixed input
      reference and stopped learning in a probe) and, each with probability 0.25, what real
      scanners vary in: bias field, gamma, noise, blur, thick slices, slight motion. Applied inside
      the brain only, then renormalised like the pipeline: z-score inside the brain, ``fill``
      outside.

The transforms take and return a model tensor ``(1, D, H, W)`` float32 (D = z, H = y, W = x).
TorchIO sees its three spatial axes as (D, H, W) with an identity affine, so left-right, the
x axis, is spatial axis **2** (tensor dim 3), and affine parameters are in voxels of the model grid.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch
import torchio as tio

from tumortrace.config import PreprocessConfig
from tumortrace.errors import ConfigError

MODES: tuple[str, ...] = ("none", "light", "heavy", "scanner")
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


class ScannerAugment:
    """Registration jitter and scanner variation for a standard-space input, inside the brain.

    Call with ``x: (1, D, H, W) float32`` (the brain z-scored, ``fill`` outside; brain = voxels
    ``!= fill``); returns a new tensor of the same shape, z-scored inside the (jittered) brain and
    ``fill`` outside. Random draws come from torch's global generator, or, with ``seed``, from
    ``torch.manual_seed(seed + n)`` at the n-th call with the global state restored (as
    :class:`SeededCompose`).

    Args:
        fill: the value outside the brain (:attr:`PreprocessConfig.fill`).
        p: probability of each scanner effect.
        seed: make the sequence of calls reproducible.
    """

    def __init__(
        self, fill: float = PreprocessConfig.fill, p: float = 0.25, seed: int | None = None
    ):
        self.fill, self.p = float(fill), float(p)
        self.seed, self.calls = seed, 0
        self.jitter = tio.RandomAffine(
            scales=0.02,
            degrees=2,
            translation=1,
            default_pad_value=0.0,
            image_interpolation="linear",
        )
        self.effects: list[tio.Transform] = [
            tio.RandomBlur(std=(0.3, 1.0)),
            tio.RandomAnisotropy(axes=(0, 1, 2), downsampling=(1.5, 3.0)),
            tio.RandomMotion(degrees=2, translation=1, num_transforms=1),
        ]

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return self.pair(x, None)[0]

    def pair(
        self, x: torch.Tensor, lesion: torch.Tensor | None
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """``(x, lesion)`` with the same jitter applied to the lesion mask ``(1, D, H, W)``
        (nearest neighbour; the scanner effects touch intensities only). ``lesion`` None: as
        ``__call__``."""
        if self.seed is None:
            return self._apply(x, lesion)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.seed + self.calls)
            self.calls += 1
            return self._apply(x, lesion)

    def _chance(self) -> bool:
        return bool(torch.rand(()) < self.p)

    def _apply(
        self, x: torch.Tensor, lesion: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        x = torch.as_tensor(x, dtype=torch.float32)
        brain = x != self.fill
        # Outside set to 0 (the brain's mean), so interpolation at the edge blends towards tissue.
        images: dict[str, tio.Image] = {
            "image": tio.ScalarImage(tensor=torch.where(brain, x, 0.0)),
            "brain": tio.LabelMap(tensor=brain.to(torch.uint8)),
        }
        if lesion is not None:
            images["lesion"] = tio.LabelMap(tensor=(torch.as_tensor(lesion) > 0.5).to(torch.uint8))
        subject = self.jitter(tio.Subject(**images))
        y, brain = subject["image"].data.float(), subject["brain"].data.bool()
        moved = None if lesion is None else subject["lesion"].data.to(torch.float32)
        if not brain.any():
            return torch.full_like(x, self.fill), moved
        if self._chance():  # multiplicative bias field, on intensities shifted to be positive
            low = y[brain].min()
            field = tio.RandomBiasField(coefficients=0.3, order=2)(torch.ones_like(y))
            y = (y - low + 1.0) * field.float() + low - 1.0
        if self._chance():  # gamma on the brain's [0, 1] range
            lo, hi = y[brain].min(), y[brain].max()
            u = ((y - lo) / (hi - lo).clamp_min(1e-6)).clamp(0, 1)
            y = u ** math.exp(float(torch.empty(()).uniform_(-0.3, 0.3)))
        y = torch.where(brain, y, y[brain].mean())
        for effect in self.effects:  # blur, thick slices, motion
            if self._chance():
                y = effect(y).float()
        if self._chance():
            y = (
                y
                + torch.randn_like(y) * float(torch.empty(()).uniform_(0.02, 0.1)) * y[brain].std()
            )
        inside = y[brain]
        z = (y - inside.mean()) / inside.std().clamp_min(1e-6)
        return torch.where(brain, z, torch.tensor(self.fill)).contiguous(), moved


def build_augment(
    mode: str, seed: int | None = None, fill: float = PreprocessConfig.fill
) -> tio.Compose | ScannerAugment | None:
    """Training augmentation for ``mode``.

    Args:
        mode: ``"none"``, ``"light"``, ``"heavy"`` or ``"scanner"``.
        seed: make the sequence of random draws reproducible (see :class:`SeededCompose`); with
            ``None`` the global torch generator is used (seed it per DataLoader worker).
        fill: the value outside the brain (``"scanner"`` only).

    Returns:
        A ``tio.Compose`` (or, for ``"scanner"``, a :class:`ScannerAugment`) mapping
        ``(1, D, H, W)`` float32 to the same shape, or ``None`` for ``"none"``.

    Raises:
        ConfigError: unknown mode.
    """
    if mode not in MODES:
        raise ConfigError(f"Unknown augmentation {mode!r}; expected one of {list(MODES)}.")
    if mode == "none":
        return None
    if mode == "scanner":
        return ScannerAugment(fill=fill, seed=seed)
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


PairTransform = Callable[[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]


def build_pair_augment(
    mode: str, seed: int | None = None, fill: float = PreprocessConfig.fill
) -> PairTransform | None:
    """:func:`build_augment` for a volume and its lesion mask: the same spatial draw for both.

    The returned callable maps ``(x (1, D, H, W) float32, lesion (1, D, H, W) {0, 1})`` to the
    pair augmented: a TorchIO ``Subject`` with the volume as a ``ScalarImage`` and the lesion as a
    ``LabelMap`` (nearest-neighbour resampling, untouched by intensity transforms), or
    :meth:`ScannerAugment.pair`. ``None`` for ``"none"``.

    Raises:
        ConfigError: unknown mode.
    """
    transform = build_augment(mode, seed=seed, fill=fill)
    if transform is None:
        return None
    if isinstance(transform, ScannerAugment):
        return transform.pair

    def pair(x: torch.Tensor, lesion: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        subject = tio.Subject(
            image=tio.ScalarImage(tensor=torch.as_tensor(x, dtype=torch.float32)),
            lesion=tio.LabelMap(tensor=(torch.as_tensor(lesion) > 0.5).to(torch.uint8)),
        )
        out = transform(subject)
        return out["image"].data.to(torch.float32), out["lesion"].data.to(torch.float32)

    return pair
