"""The cases a training run uses: the cached synthetic cohort or real data, and their datasets.

:func:`load_cases` reads them (generating the embedded synthetic cohort once), :func:`warm_cache`
preprocesses each (and, under lesion supervision, its lesion mask) into the tensor cache before
training, :func:`part_dataset` serves one part of a fold (augmented for training only; with the
lesion masks for lesion-supervised training), :func:`training_cases` leaves out the kinds of case
the run trains without (``--no-carved``, ``--no-healthy-made``), :func:`healthy_mean` gives a
part's mean healthy input and :func:`class_weight` gives the loss weights of a part.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch
from torch.utils.data import Dataset
from tqdm.auto import tqdm

from tumortrace import data
from tumortrace.augment import build_augment, build_pair_augment
from tumortrace.config import CLASSES, TrainConfig
from tumortrace.errors import ConfigError, ManifestError
from tumortrace.manifest import Case, read_manifest, validate_cases
from tumortrace.runtime import CPU_FP32, Runtime, barrier
from tumortrace.supervision import uses_masks


def synthetic_dir(cfg: TrainConfig) -> Path:
    """Folder of the cached embedded cohort: ``<data_dir>/synthetic-<size>-seed<seed>``."""
    return cfg.data_dir / f"synthetic-{cfg.synthetic.size}-seed{cfg.synthetic.seed}"


def class_counts(cases: Sequence[Case]) -> dict[str, int]:
    """``{class: number of cases}`` for every class of :data:`CLASSES`."""
    return {c: sum(1 for x in cases if x.label == c) for c in CLASSES}


def load_cases(cfg: TrainConfig, rt: Runtime | None = None, progress: bool = True) -> list[Case]:
    """The cases to train on.

    With no data flag, the embedded synthetic cohort (``cfg.synthetic``) is generated once under
    :func:`synthetic_dir` and reused while its manifest exists with the same class counts.
    Otherwise the manifest, BraTS and IXI cases given are merged.

    Raises:
        ManifestError: a missing volume, a duplicate subject, or a class without any case.
    """
    rt = rt or CPU_FP32
    if cfg.manifest is None and cfg.brats is None and cfg.ixi is None:
        from tumortrace.phantom_cohort import write_cohort  # heavy; only for the default cohort

        folder = synthetic_dir(cfg)
        wanted = dict(cfg.synthetic.counts)
        manifest = folder / "manifest.csv"
        if rt.is_main:
            fresh = manifest.is_file() and class_counts(
                read_manifest(manifest, check_files=False)
            ) == {c: wanted.get(c, 0) for c in CLASSES}
            if not fresh:
                write_cohort(
                    folder, wanted, seed=cfg.synthetic.seed, size=cfg.synthetic.size,
                    progress=progress,
                )  # fmt: skip
        barrier(rt)
        cases = read_manifest(manifest)
    else:
        cases = []
        if cfg.manifest is not None:
            cases += read_manifest(cfg.manifest)
        if cfg.brats is not None:
            cases += data.discover_brats(cfg.brats, grades_csv=cfg.brats_grades)
        if cfg.ixi is not None:
            cases += data.discover_ixi(cfg.ixi)
        cases = validate_cases(cases)
    counts = class_counts(cases)
    empty = [c for c, n in counts.items() if n == 0]
    if empty:
        raise ManifestError(
            f"No cases for class(es) {empty}: counts per class are {counts}. Every class of "
            f"{list(CLASSES)} needs cases (e.g. add --ixi for healthy scans, --brats for gliomas)."
        )
    return cases


def subset(cases: Sequence[Case], ids: Sequence[str]) -> list[Case]:
    """The cases whose subject ids are ``ids``, in that order."""
    by_id = {c.subject_id: c for c in cases}
    return [by_id[i] for i in ids]


def part_dataset(
    cfg: TrainConfig, cases: Sequence[Case], augment: bool, masks: bool = False
) -> Dataset:
    """``(x (1, D, H, W) float32, label)`` pairs of ``cases`` from the tensor cache; ``augment``
    applies ``cfg.augment`` (the training part only). With ``masks``, items are
    ``(x, label, lesion (1, D, H, W), known)`` and the lesion follows the same spatial draw
    (:class:`tumortrace.data.VolumeDataset`)."""
    fill = cfg.preprocess.fill
    if masks:
        transform = build_pair_augment(cfg.augment, fill=fill) if augment else None
    else:
        transform = build_augment(cfg.augment, fill=fill) if augment else None
    return data.VolumeDataset(
        list(cases), cfg.preprocess, cache_dir=cfg.data_dir / "cache", transform=transform,
        masks=masks,
    )  # fmt: skip


LEFT_OUT_KINDS: dict[str, str] = {"carved": "carved", "healthy_made": "healthy-made"}
"""TrainConfig switch -> the ``kind`` of case it leaves out of training when False."""


def left_out_kinds(cfg: TrainConfig) -> set[str]:
    """The case kinds the run trains without (``--no-carved``, ``--no-healthy-made``)."""
    return {kind for flag, kind in LEFT_OUT_KINDS.items() if not getattr(cfg, flag)}


def training_cases(cfg: TrainConfig, cases: Sequence[Case]) -> list[Case]:
    """``cases`` without the kinds the run trains without; for the training and validation parts
    only (the test parts keep every case, so runs with and without a kind score the same cases)."""
    drop = left_out_kinds(cfg)
    return [c for c in cases if c.kind not in drop]


def check_cases(cfg: TrainConfig, cases: Sequence[Case]) -> None:
    """What the run's switches need from its cases, checked before any training.

    Raises:
        ConfigError: ``--no-carved`` / ``--no-healthy-made`` on cases that record no kind (the
            switch would do nothing), or lesion supervision with no tumour case that has a mask.
    """
    drop = left_out_kinds(cfg)
    if drop and not any(c.kind for c in cases):
        flags = ", ".join(f"--no-{k}" for k in sorted(drop))
        raise ConfigError(
            f"{flags} leaves out cases by their kind, but no case records one; use a manifest "
            "with a 'kind' column (the real-tumour cohort's) or drop the flag."
        )
    if uses_masks(cfg) and not any(
        data.lesion_mask_of(c) is not None for c in training_cases(cfg, cases)
    ):
        raise ConfigError(
            "--lesion-weight / --attention-weight need lesion masks, but no tumour case has one "
            "(a 'mask' column, or <stem>_lesion.nii.gz beside the volume); drop the flags or "
            "use a cohort with masks."
        )


def warm_cache(cfg: TrainConfig, cases: Sequence[Case], rt: Runtime, progress: bool = True) -> None:
    """Preprocesses every case into the tensor cache once, before any training.

    Besides sparing the first epoch, this keeps preprocessing from consuming random numbers in
    the middle of an epoch, so runs (and resumed runs) draw identical augmentations. Under DDP
    each rank fills its share of the cache.
    """
    ds = data.VolumeDataset(list(cases), cfg.preprocess, cache_dir=cfg.data_dir / "cache")
    indices = range(rt.rank, len(ds), rt.world_size)
    bar = tqdm(indices, desc="preprocessing", unit="volume", disable=not (progress and rt.is_main))
    for i in bar:
        ds.load(i)
        if uses_masks(cfg):
            ds.load_mask(i)
    barrier(rt)


def healthy_mean(cfg: TrainConfig, cases: Sequence[Case]) -> torch.Tensor:
    """``(1, D, H, W)`` float32: the mean un-augmented model input of the healthy ``cases``, from
    the tensor cache (the network's input reference under ``cfg.healthy_reference``).

    Raises:
        ManifestError: no healthy case among ``cases``.
    """
    healthy = [c for c in cases if c.label == "healthy"]
    if not healthy:
        raise ManifestError(
            "--healthy-reference needs healthy cases in every training part; this one has none."
        )
    ds = part_dataset(cfg, healthy, augment=False)
    total = torch.zeros((1, *cfg.preprocess.shape_dhw), dtype=torch.float64)
    for i in range(len(ds)):
        total += ds.load(i).double()
    return (total / len(ds)).float()


def class_weight(cases: Sequence[Case], balanced: bool = False) -> torch.Tensor:
    """``(C,)`` loss weights ``1 - n_c / N`` of the graded ``cases`` (see
    :func:`data.class_weights`; gliomas of unknown grade are not counted, and their loss weighs
    the mean of the LGG and HGG weights, :func:`tumortrace.supervision.classification_loss`); all
    ones when ``balanced`` (the batches already are)."""
    if balanced:
        return torch.ones(len(CLASSES), dtype=torch.float32)
    graded = [c.label_index for c in cases if c.label_index >= 0]
    return data.class_weights(graded, n_classes=len(CLASSES))
