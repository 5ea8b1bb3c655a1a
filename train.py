"""``python train.py --arch mc3 ...``: flags -> ``TrainConfig`` -> ``tumortrace.train.run``.

Nothing else lives here. With no data flag the embedded synthetic cohort is generated once under
``--data-dir`` and used; ``--manifest``, ``--brats`` and ``--ixi`` select real data (merged when
several are given). Multi-GPU / multi-node: ``torchrun --nproc_per_node=N train.py ...``.
Outputs: ``<out>/<arch>.safetensors``, ``<out>/<arch>.json`` (model card) and
``<out>/benchmarks/<arch>.json``; see ``tumortrace/train.py`` for which model ships.
"""

from __future__ import annotations

import argparse
import os
import shlex
import sys
from collections.abc import Sequence
from dataclasses import fields
from pathlib import Path

from tumortrace.config import PreprocessConfig, TrainConfig
from tumortrace.errors import ConfigError, TumorTraceError
from tumortrace.models import list_methods

DEFAULTS = TrainConfig()
FLAG_DERIVED = frozenset({"cosine", "pretrained", "preprocess", "carved", "healthy_made"})
"""TrainConfig fields built from differently named flags: ``--no-cosine``, ``--pretrained`` (or
``--pretrained-path``), ``--input-shape``/``--spacing``/``--percentiles``, ``--no-carved``,
``--no-healthy-made``."""
NO_FLAG = frozenset({"synthetic", "test_fraction", "val_fraction"})
"""TrainConfig fields the command line leaves at their defaults. Every other field is copied
from the flag of the same name."""


def build_parser() -> argparse.ArgumentParser:
    """The training CLI; every default is read from :class:`TrainConfig`."""
    p = argparse.ArgumentParser(
        prog="python train.py",
        description=__doc__,
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    _training_flags(p, DEFAULTS)
    _lesion_flags(p, DEFAULTS)
    _input_flags(p, DEFAULTS.preprocess)
    _run_flags(p, DEFAULTS)
    _data_flags(p, DEFAULTS)
    return p


def _training_flags(p: argparse.ArgumentParser, d: TrainConfig) -> None:
    """The network, the optimiser, the schedule and the training data's treatment."""
    # Not `choices=`: the package validates the name so its error lists the valid ones.
    p.add_argument(
        "--arch", default=d.arch, help=f"network or baseline: one of {', '.join(list_methods())}"
    )
    p.add_argument("--folds", type=int, default=d.folds, help="cross-validation folds (>= 2)")
    p.add_argument("--epochs", type=int, default=d.epochs)
    p.add_argument("--batch-size", type=int, default=d.batch_size)
    p.add_argument("--lr", type=float, default=d.lr)
    p.add_argument("--weight-decay", type=float, default=d.weight_decay)
    p.add_argument("--no-cosine", action="store_true", help="constant learning rate")
    p.add_argument(
        "--patience", type=int, default=d.patience,
        help="stop a fold after this many epochs without a better validation macro-F1 (0: never)",
    )  # fmt: skip
    p.add_argument("--dropout", type=float, default=d.dropout)
    p.add_argument("--pretrained", action="store_true", help="start from Kinetics-400 weights")
    p.add_argument("--pretrained-path", type=Path, default=None, help="Kinetics-400 .pth file")
    p.add_argument(
        "--augment", choices=("light", "heavy", "scanner", "none"), default=d.augment,
        help="scanner: registration-sized jitter and scanner variation inside the brain, for "
        "standard-space inputs",
    )  # fmt: skip
    p.add_argument(
        "--balanced", action="store_true",
        help="class-balanced batches and an unweighted loss (instead of 1 - n_c/N weights)",
    )  # fmt: skip
    p.add_argument(
        "--healthy-reference", action="store_true",
        help="the network subtracts the mean input of each fold's healthy training cases",
    )  # fmt: skip


def _lesion_flags(p: argparse.ArgumentParser, d: TrainConfig) -> None:
    """Lesion supervision (tumortrace.supervision) and the kinds of case trained on."""
    g = p.add_argument_group("lesion supervision and the cases trained on")
    g.add_argument(
        "--lesion-weight", type=float, default=d.lesion_weight, metavar="LAMBDA",
        help="weight of the auxiliary lesion head's loss LAMBDA x (BCE + soft Dice) against the "
        "lesion masks (0: off)",
    )  # fmt: skip
    g.add_argument(
        "--lesion-layer", default=d.lesion_layer, help="stage the lesion head reads: layer2 "
        "or layer3",
    )  # fmt: skip
    g.add_argument(
        "--attention-weight", type=float, default=d.attention_weight, metavar="MU",
        help="weight of the share of the layer-4 class activation outside the lesion, on tumour "
        "cases with a mask (0: off)",
    )  # fmt: skip
    g.add_argument(
        "--attention-margin", type=int, default=d.attention_margin, metavar="VOXELS",
        help="dilation of the lesion mask before the attention term measures what lies outside",
    )  # fmt: skip
    g.add_argument(
        "--no-carved", action="store_true",
        help="train without the 'carved' cases (the test parts keep them)",
    )  # fmt: skip
    g.add_argument(
        "--no-healthy-made", action="store_true",
        help="train without the 'healthy-made' cases (the test parts keep them)",
    )  # fmt: skip


def _input_flags(p: argparse.ArgumentParser, pre: PreprocessConfig) -> None:
    """The model grid and the preprocessing pipeline."""
    p.add_argument(
        "--input-shape", type=int, nargs=3, metavar=("D", "H", "W"), default=list(pre.shape_dhw),
        help="model grid (D=axial slices, H, W)",
    )  # fmt: skip
    p.add_argument(
        "--spacing", type=float, nargs="+", metavar="MM", default=list(pre.spacing_mm),
        help="voxel size in mm: one value, or three in D H W order",
    )  # fmt: skip
    p.add_argument(
        "--percentiles", type=float, nargs=2, metavar=("LO", "HI"), default=list(pre.percentiles),
        help="intensity clip percentiles of the brain voxels before z-scoring (100: no upper clip,"
        " keeps enhancing tissue brighter than white matter)",
    )  # fmt: skip
    p.add_argument(
        "--space", choices=("mni", "native"), default=pre.space,
        help="mni: the standard-space pipeline (brain extraction, registration to MNI152, the "
        "brain in a template box); native: the legacy head crop (the old demo weights)",
    )  # fmt: skip


def _run_flags(p: argparse.ArgumentParser, d: TrainConfig) -> None:
    """Device, workers, seed, output folder, resuming, what is shipped, the folds reused."""
    p.add_argument("--device", choices=("auto", "cuda", "cpu"), default=d.device)
    p.add_argument("--workers", type=int, default=d.workers, help="data-loading processes")
    p.add_argument("--seed", type=int, default=d.seed)
    p.add_argument("--out", type=Path, default=d.out, help="output folder")
    p.add_argument("--resume", action="store_true", help="continue an interrupted run")
    p.add_argument("--refit", action="store_true", help="ship a refit on all data")
    p.add_argument(
        "--ship-fold", type=int, default=d.ship_fold, metavar="N",
        help="ship fold N's network (default: the fold with the best validation macro-F1)",
    )  # fmt: skip
    p.add_argument("--max-steps-per-epoch", type=int, default=None, help="cap (smoke runs)")
    p.add_argument(
        "--splits", type=Path, default=None, metavar="FILE",
        help="reuse these folds (an earlier run's benchmarks/<arch>.splits.json, copied byte for "
        "byte) instead of making new ones; --folds must match",
    )  # fmt: skip


def _data_flags(p: argparse.ArgumentParser, d: TrainConfig) -> None:
    """Where the cases come from (default: the embedded synthetic cohort)."""
    g = p.add_argument_group("data (default: the embedded synthetic cohort)")
    g.add_argument(
        "--manifest", type=Path, default=None,
        help="CSV subject_id,path,label,source[,group] (group: the base brain, kept in one part)",
    )  # fmt: skip
    g.add_argument("--brats", type=Path, default=None, help="BraTS 2019/2020/2021+ folder")
    g.add_argument("--brats-grades", type=Path, default=None, help="CSV of BraTS 2021+ grades")
    g.add_argument("--ixi", type=Path, default=None, help="IXI T1 folder (healthy)")
    g.add_argument("--data-dir", type=Path, default=d.data_dir, help="cohort and cache folder")


def config_from_args(args: argparse.Namespace) -> TrainConfig:
    """Maps parsed flags onto :class:`TrainConfig`.

    Raises:
        ConfigError: ``--spacing`` with neither one nor three values.
    """
    if len(args.spacing) not in (1, 3):
        raise ConfigError(
            f"--spacing takes one value or three (D H W) in mm; got {len(args.spacing)}: "
            f"{args.spacing}."
        )
    spacing = tuple(args.spacing * 3 if len(args.spacing) == 1 else args.spacing)
    lo, hi = args.percentiles
    if not 0.0 <= lo < hi <= 100.0:
        raise ConfigError(f"--percentiles takes LO HI with 0 <= LO < HI <= 100; got {lo:g} {hi:g}.")
    preprocess = PreprocessConfig(
        spacing_mm=spacing,
        shape_dhw=tuple(args.input_shape),
        intensity=DEFAULTS.preprocess.intensity,
        percentiles=(lo, hi),
        space=args.space,
    )
    flags = vars(args)
    plain = {
        f.name: flags[f.name]
        for f in fields(TrainConfig)
        if f.name in flags and f.name not in FLAG_DERIVED
    }
    return TrainConfig(
        **plain,
        cosine=not args.no_cosine,
        pretrained=args.pretrained or args.pretrained_path is not None,
        preprocess=preprocess,
        carved=not args.no_carved,
        healthy_made=not args.no_healthy_made,
    )


def _command(argv: list[str]) -> str:
    """The command line as typed (torchrun's launcher named when it started this process)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world > 1:
        per_node = os.environ.get("LOCAL_WORLD_SIZE", str(world))
        return shlex.join(["torchrun", f"--nproc_per_node={per_node}", "train.py", *argv])
    return shlex.join(["python", "train.py", *argv])


def _num(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.3f}"


def main(argv: Sequence[str] | None = None) -> int:
    """Runs training; returns the exit code (0 done, 2 bad input, 130 Ctrl-C, 143 SIGTERM)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    cfg = None
    try:
        from tumortrace.resume import resume_path  # torch and torchvision load here
        from tumortrace.train import run

        cfg = config_from_args(args)
        result = run(cfg, command=_command(argv))
    except TumorTraceError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as err:
        term = type(err).__name__ == "Terminated"  # tumortrace.train.Terminated: SIGTERM
        what = "terminated (SIGTERM)" if term else "interrupted"
        where = f" from {resume_path(cfg)}" if cfg is not None else ""
        print(f"\n{what}: run again with --resume to continue{where}", file=sys.stderr)
        return 143 if term else 130
    if result.paths:  # rank 0 only
        s = result.benchmark["summary"]
        print(
            f"{result.arch}: {len(result.folds)} folds, macro-F1 {_num(s['macro_f1']['mean'])} "
            f"± {_num(s['macro_f1']['std'])}, accuracy {_num(s['accuracy']['mean'])}; shipped "
            f"{result.shipped} -> {result.paths['weights']}, {result.paths['card']}, "
            f"{result.paths['benchmark']}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
