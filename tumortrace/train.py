"""Training: patient-level cross-validation of one architecture; AMP-, DDP- and resume-aware.

``run(cfg, command)`` is the whole of ``python train.py``: it validates the configuration
(:func:`validate_config`), sets up the runtime (:func:`tumortrace.runtime.setup_runtime`), loads the
cases (:func:`tumortrace.cases.load_cases`), splits them into seeded patient-level folds, trains
each fold (:func:`tumortrace.loop.fit_fold`), scores each fold's test part once, and writes the
outputs (:func:`tumortrace.cv_output.write_outputs`):

* ``<out>/<arch>.safetensors`` + ``<out>/<arch>.json`` (the model card);
* ``<out>/benchmarks/<arch>.json`` (per-fold and mean ± std metrics);
* ``<out>/benchmarks/<arch>.splits.json`` (the folds' subject ids; with ``cfg.splits``, a byte
  for byte copy of that file, whose folds are used instead of new ones).

Baselines (:mod:`tumortrace.baselines`) take the same path: the neural ones through
:func:`tumortrace.loop.fit_fold` (``conv_ae`` after :func:`tumortrace.loop.pretrain_autoencoder`,
its encoder then frozen), the HOG-SVM through :func:`tumortrace.classical.fit_hog_svm`
(un-augmented inputs; the validation part picks its ``C`` and temperature); the same folds,
metrics and outputs.

Which model ships:
    By default, the fold model with the highest **validation** macro-F1 (ties: lower validation
    loss, then the lower fold index). Test parts never influence any choice: within a fold the best
    epoch is picked on validation, and the test part is scored once with those weights. With
    ``cfg.refit`` a fresh model is instead trained on every case for the median of the folds' best
    epochs (no early stopping: there is no held-out data left) and that model ships. In both cases
    the card's metrics are the cross-validated test estimates, and ``card.shipped`` says which model
    it is (``"best_fold:N"`` or ``"refit"``). ``cfg.ship_fold`` = N ships fold N's network instead
    (``"fold:N"``).

Options (see :class:`~tumortrace.config.TrainConfig`): ``cfg.balanced`` draws class-balanced
batches with an unweighted loss; ``cfg.healthy_reference`` gives each fold's network the mean input
of its training part's healthy cases, subtracted inside the stem
(:func:`tumortrace.models.set_input_reference`; a refit takes every healthy case's mean).

Devices and precision: :mod:`tumortrace.runtime`. Distributed: under ``torchrun``
(``WORLD_SIZE`` > 1) training and evaluation use distributed samplers, predictions are gathered so
every rank takes the same early-stopping decisions, and only rank 0 writes files. Resume:
:mod:`tumortrace.resume`; the random streams are re-derived from ``(seed, fold, epoch, rank)`` at
every epoch start, so a resumed run replays the same batches and augmentations as an uninterrupted
one (with ``workers=0``).

This module never prints and never parses arguments; progress bars (tqdm, rank 0 only) go to stderr.
"""

from __future__ import annotations

import contextlib
import math
import signal
import tempfile
import threading
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch.distributed as dist
from torch import nn

from tumortrace import checkpoint, classical, files, folds, loop, metrics, models
from tumortrace.baselines import ConvAutoencoder, HogSvm
from tumortrace.cases import (
    check_cases,
    class_weight,
    healthy_mean,
    load_cases,
    part_dataset,
    subset,
    training_cases,
    warm_cache,
)
from tumortrace.config import CLASSES, LESION_LAYERS, TrainConfig
from tumortrace.cv_output import CVResult, FoldResult, benchmark_record, write_outputs
from tumortrace.errors import ConfigError
from tumortrace.manifest import Case
from tumortrace.resume import load_resume, resume_path, save_resume
from tumortrace.runtime import Runtime, barrier, setup_runtime
from tumortrace.supervision import uses_masks

# --------------------------------------------------------------------------- checks


def validate_config(cfg: TrainConfig) -> None:
    """Checks every flag that can be checked before any data is read or written.

    Builds no network: the name is looked up in the registry, the input shape is checked against
    the network's strides, and a pretrained file must exist.

    Raises:
        ConfigError: fewer than 2 folds, unknown architecture (the message lists the valid ones),
            an input shape too small for the network, bad numbers.
        CheckpointError: ``--pretrained`` without the Kinetics-400 file.
    """
    if cfg.folds < 2:
        raise ConfigError(
            f"--folds {cfg.folds} is not a cross-validation; expected --folds >= 2 "
            "(each fold holds out its own test part)."
        )
    if cfg.epochs < 1 or cfg.batch_size < 1:
        raise ConfigError(
            f"--epochs {cfg.epochs} and --batch-size {cfg.batch_size} must both be >= 1."
        )
    if cfg.lr <= 0 or cfg.weight_decay < 0:
        raise ConfigError(f"--lr {cfg.lr} must be > 0 and --weight-decay {cfg.weight_decay} >= 0.")
    if not 0.0 <= cfg.dropout < 1.0:
        raise ConfigError(f"--dropout {cfg.dropout} must be in [0, 1).")
    if cfg.workers < 0:
        raise ConfigError(f"--workers {cfg.workers} must be >= 0.")
    if cfg.ship_fold is not None and not 0 <= cfg.ship_fold < cfg.folds:
        raise ConfigError(
            f"--ship-fold {cfg.ship_fold} is not a fold of this run; expected 0 to {cfg.folds - 1}."
        )
    if cfg.ship_fold is not None and cfg.refit:
        raise ConfigError(
            "--ship-fold and --refit both choose the shipped network; give one of them."
        )
    if cfg.max_steps_per_epoch is not None and cfg.max_steps_per_epoch < 1:
        raise ConfigError(f"--max-steps-per-epoch {cfg.max_steps_per_epoch} must be >= 1.")
    if any(s <= 0 for s in cfg.preprocess.spacing_mm):
        raise ConfigError(f"--spacing {list(cfg.preprocess.spacing_mm)} must be positive (mm).")
    models.get_spec(cfg.arch)
    models.check_input_shape(cfg.arch, tuple(cfg.preprocess.shape_dhw))
    if cfg.pretrained or cfg.pretrained_path is not None:
        models.check_pretrained_file(cfg.arch, cfg.pretrained_path)
    _validate_supervision(cfg)
    if cfg.splits is not None and not Path(cfg.splits).is_file():
        raise ConfigError(
            f"--splits {cfg.splits} is not a file; expected an earlier run's "
            "benchmarks/<arch>.splits.json."
        )


def _validate_supervision(cfg: TrainConfig) -> None:
    """The lesion-supervision flags: finite non-negative weights, a known layer, a video network.

    Raises:
        ConfigError: naming the flag, the value and what is expected.
    """
    for flag, value in (("--lesion-weight", cfg.lesion_weight),
                        ("--attention-weight", cfg.attention_weight)):  # fmt: skip
        if isinstance(value, bool) or not math.isfinite(float(value)) or value < 0:
            raise ConfigError(f"{flag} {value} must be a finite number >= 0 (0: off).")
    if cfg.lesion_layer not in LESION_LAYERS:
        raise ConfigError(
            f"--lesion-layer {cfg.lesion_layer!r}; expected one of {list(LESION_LAYERS)}."
        )
    if (
        isinstance(cfg.attention_margin, bool)
        or not isinstance(cfg.attention_margin, int)
        or (not 0 <= cfg.attention_margin <= 16)
    ):
        raise ConfigError(
            f"--attention-margin {cfg.attention_margin} must be an integer from 0 to 16 (voxels)."
        )
    if uses_masks(cfg) and models.is_baseline(cfg.arch):
        raise ConfigError(
            f"--lesion-weight / --attention-weight train a video network's stages; {cfg.arch!r} "
            f"is a baseline. Use one of {models.list_models()} or drop the flags."
        )


def check_writable(out: Path) -> None:
    """Creates ``out`` and ``out/benchmarks`` and proves a file can be written there.

    Raises:
        ConfigError: the folder cannot be created or written to.
    """
    try:
        (out / "benchmarks").mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=out / "benchmarks", prefix=".probe-"):
            pass
    except OSError as err:
        raise ConfigError(
            f"Cannot write to --out {out}: {err.strerror or err}. "
            "Choose a writable folder (it is created when missing)."
        ) from err


def _new_model(cfg: TrainConfig, state: loop.StateDict | None = None) -> nn.Module:
    """A fresh network; with ``state``, one holding those weights (and its input reference)."""
    model = models.create_model(
        cfg.arch,
        num_classes=len(CLASSES),
        pretrained=cfg.pretrained,
        dropout=cfg.dropout,
        pretrained_path=cfg.pretrained_path,
    )
    if state is not None:
        models.adopt_state(model, state)
        model.load_state_dict(state)
    return model


# --------------------------------------------------------------------------- cross-validation


@dataclass
class _Run:
    """One cross-validation in progress: its settings, cases, runtime and resume bookkeeping."""

    cfg: TrainConfig
    cases: list[Case]
    rt: Runtime
    progress: bool
    completed: list[FoldResult]
    ship: dict[str, Any] | None  # {"fold", "f1", "loss", "state"} of the best fold so far
    current: dict[str, Any] | None  # the interrupted fold's snapshot, from the resume file

    def save(self, current: dict[str, Any] | None) -> None:
        """Writes the resume file (rank 0) with the finished folds and ``current``."""
        if self.rt.is_main:
            completed = [f.to_state() for f in self.completed]
            save_resume(self.cfg, {"completed": completed, "ship": self.ship, "current": current})

    def fit(
        self, fold: int, train: Sequence[Case], val: Sequence[Case] | None, **kw
    ) -> loop.FoldFit:
        """:func:`tumortrace.loop.fit_fold` on a fresh network, resumable under index ``fold``."""
        resumed = self.current if (self.current or {}).get("fold") == fold else None
        val_set = None if val is None else part_dataset(self.cfg, val, augment=False)
        model = _new_model(self.cfg)
        if self.cfg.healthy_reference:
            models.set_input_reference(model, healthy_mean(self.cfg, train))
        if isinstance(model, HogSvm):
            return _fit_classical(self.cfg, model, train, val, fold)
        train_set = part_dataset(self.cfg, train, augment=True, masks=uses_masks(self.cfg))
        pre_seconds = 0.0
        if isinstance(model, ConvAutoencoder):
            if resumed is None:  # a resumed fold's snapshot already holds the trained encoder
                _, pre_seconds = loop.pretrain_autoencoder(
                    model, train_set, self.cfg, self.rt, fold=fold, progress=self.progress,
                    epochs=kw.get("epochs"),
                )  # fmt: skip
            model.freeze_encoder()
        fit = loop.fit_fold(
            self.cfg, model, train_set, val_set,
            self.rt, class_weight(train, self.cfg.balanced), fold=fold, progress=self.progress,
            state=resumed, on_epoch=lambda s: self.save({"fold": fold, **s}), **kw,
        )  # fmt: skip
        fit.train_seconds += pre_seconds
        return fit


def _stack(cfg: TrainConfig, cases: Sequence[Case]) -> tuple[Any, np.ndarray]:
    """``(x (N, 1, D, H, W) float32, labels (N,))`` of the graded ``cases`` (gliomas of unknown
    grade left out: the HOG-SVM has no loss for them), un-augmented, from the cache."""
    import torch

    cases = [c for c in cases if c.label_index >= 0]
    ds = part_dataset(cfg, cases, augment=False)
    x = torch.stack([ds.load(i) for i in range(len(ds))])
    return x, np.array([c.label_index for c in cases], dtype=np.int64)


def _fit_classical(
    cfg: TrainConfig, model: HogSvm, train: Sequence[Case], val: Sequence[Case] | None, fold: int
) -> loop.FoldFit:
    """Fits the HOG-SVM on ``train`` (``val`` picks C and the temperature; a refit, without
    ``val``, uses ``train`` for both); the result in :class:`tumortrace.loop.FoldFit`'s form."""
    train_x, train_y = _stack(cfg, train)
    val_x, val_y = _stack(cfg, val) if val else (train_x, train_y)
    info = classical.fit_hog_svm(model, train_x, train_y, val_x, val_y, seed=cfg.seed + fold)
    return loop.FoldFit(
        best_state=loop.cpu_state(model), best_epoch=0,
        best_val_macro_f1=float(info["val_macro_f1"]), best_val_loss=float(info["val_loss"]),
        curves=[], train_seconds=float(info["seconds"]),
    )  # fmt: skip


def _test(
    run: _Run, split: folds.FoldSplit, fit: loop.FoldFit, n_train: int, n_val: int
) -> FoldResult:
    """Scores the fold's test part once, with the validation-selected weights (every case of the
    part, whatever kinds the training left out; the metrics over its graded cases, and
    ``glioma_called_tumour`` when it holds gliomas of unknown grade)."""
    cfg, rt = run.cfg, run.rt
    model = _new_model(cfg, fit.best_state)
    rt.place(model)
    test_cases = subset(run.cases, split.test)
    test_set = part_dataset(cfg, test_cases, augment=False)
    loader = loop.make_loader(test_set, cfg, rt, train=False, seed=0)
    weight = class_weight(training_cases(cfg, subset(run.cases, split.train)), cfg.balanced)
    ev = loop.evaluate_loader(model, loader, rt, weight)
    graded = ev.labels >= 0
    scores = files.jsonable(
        metrics.compute_metrics(ev.labels[graded], ev.probs[graded], classes=CLASSES).to_dict()
    )
    if not graded.all():  # gliomas of unknown grade: how many were called a tumour (LGG or HGG)
        called = ev.probs[~graded].argmax(axis=1) != CLASSES.index("healthy")
        scores.update(n_glioma=int((~graded).sum()), glioma_called_tumour=float(called.mean()))
    predictions = tuple(
        {
            "subject_id": c.subject_id,
            "label": c.label,
            "probs": [float(p) for p in row],
            **({"source": c.source, "kind": c.kind} if c.kind else {}),
        }
        for c, row in zip(test_cases, ev.probs, strict=True)
    )
    return FoldResult(
        fold=split.fold, n_train=n_train, n_val=n_val, n_test=len(split.test),
        metrics=scores, curves=tuple(fit.curves),
        train_seconds=fit.train_seconds, best_epoch=fit.best_epoch,
        best_val_macro_f1=fit.best_val_macro_f1, best_val_loss=fit.best_val_loss,
        cases=predictions,
    )  # fmt: skip


def _run_fold(run: _Run, split: folds.FoldSplit) -> None:
    """Trains, tests and records one fold; keeps its weights when it is the best so far."""
    loop.seed_everything(run.cfg.seed + split.fold)
    train = training_cases(run.cfg, subset(run.cases, split.train))
    val = training_cases(run.cfg, subset(run.cases, split.val))
    fit = run.fit(split.fold, train, val)
    run.completed.append(_test(run, split, fit, len(train), len(val)))
    ship = run.ship
    better = ship is None or (fit.best_val_macro_f1, -fit.best_val_loss) > (
        ship["f1"],
        -ship["loss"],
    )
    if run.cfg.ship_fold is not None:
        better = split.fold == run.cfg.ship_fold
    if better and not run.cfg.refit:
        run.ship = {"fold": split.fold, "f1": fit.best_val_macro_f1, "loss": fit.best_val_loss,
                    "state": fit.best_state}  # fmt: skip
    run.save(None)


def _shipped_state(run: _Run, n_folds: int) -> tuple[str, loop.StateDict]:
    """``(card.shipped, weights)``: the best fold's, fold ``cfg.ship_fold``'s, or a refit on every
    case (``cfg.refit``)."""
    if run.cfg.ship_fold is not None:
        return f"fold:{run.ship['fold']}", run.ship["state"]
    if not run.cfg.refit:
        return f"best_fold:{run.ship['fold']}", run.ship["state"]
    epochs = max(1, round(float(np.median([f.best_epoch for f in run.completed]))))
    loop.seed_everything(run.cfg.seed + n_folds)
    every = training_cases(run.cfg, run.cases)
    fit = run.fit(n_folds, every, None, epochs=epochs)  # reference: every healthy case
    return "refit", fit.best_state


def cross_validate(
    cfg: TrainConfig,
    progress: bool = True,
    *,
    command: str = "",
    runtime: Runtime | None = None,
) -> CVResult:
    """Trains and tests every fold, picks the shipped model and writes the outputs (rank 0).

    Args:
        cfg: the run's settings (already checked by :func:`validate_config`).
        progress: tqdm bars on rank 0.
        command: the exact command line, recorded in the card and the benchmark file.
        runtime: from :func:`tumortrace.runtime.setup_runtime` (default: from ``cfg.device``).

    Returns:
        The per-fold results, the shipped model and the written paths.
    """
    if runtime is None:  # called directly rather than through run()
        validate_config(cfg)
    rt = runtime or setup_runtime(cfg.device)
    if rt.is_main:
        check_writable(cfg.out)
    resumed = load_resume(cfg) if cfg.resume else {"completed": [], "ship": None, "current": None}
    cases = load_cases(cfg, rt, progress)
    check_cases(cfg, cases)
    warm_cache(cfg, cases, rt, progress)
    splits = _splits(cfg, cases)
    if rt.is_main:
        target = cfg.out / "benchmarks" / f"{cfg.arch}.splits.json"
        if cfg.splits is None:
            folds.save_splits(splits, target)
        elif Path(cfg.splits).resolve() != target.resolve():
            files.atomic_write_bytes(target, Path(cfg.splits).read_bytes())
    completed = [FoldResult.from_state(d) for d in resumed["completed"]]
    run = _Run(cfg, cases, rt, progress, completed, resumed["ship"], resumed.get("current"))
    for split in splits[len(completed) :]:
        _run_fold(run, split)
    shipped, state = _shipped_state(run, len(splits))

    model = _new_model(cfg, checkpoint.as_stored(state))
    model.eval()
    benchmark = benchmark_record(cfg, cases, run.completed, model, shipped, command, rt)
    result = CVResult(cfg.arch, run.completed, shipped, model, benchmark)
    if rt.is_main:
        write_outputs(cfg, result, command)
        resume_path(cfg).unlink(missing_ok=True)
    barrier(rt)
    return result


def _splits(cfg: TrainConfig, cases: Sequence[Case]) -> list[folds.FoldSplit]:
    """The folds: ``cfg.splits`` when given (every subject must be a case, as many folds as
    ``cfg.folds``), else new seeded, grouped, stratified folds.

    Raises:
        ManifestError: a malformed splits file or one naming subjects that are not cases.
        ConfigError: the file holds another number of folds than ``--folds``.
    """
    if cfg.splits is None:
        return folds.make_folds(
            cases, k=cfg.folds, test_fraction=cfg.test_fraction, val_fraction=cfg.val_fraction,
            seed=cfg.seed,
        )  # fmt: skip
    splits = folds.load_splits(cfg.splits, cases)
    if len(splits) != cfg.folds:
        raise ConfigError(
            f"--splits {cfg.splits} holds {len(splits)} folds but --folds is {cfg.folds}; "
            f"pass --folds {len(splits)}."
        )
    return splits


class Terminated(KeyboardInterrupt):
    """SIGTERM (what schedulers and ``kill`` send) turned into an interrupt, handled like Ctrl-C."""


@contextlib.contextmanager
def _sigterm_as_interrupt() -> Iterator[None]:
    """While training, SIGTERM raises :class:`Terminated` (main thread only; restored after)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum, frame):
        raise Terminated

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def run(cfg: TrainConfig, command: str = "", progress: bool = True) -> CVResult:
    """``python train.py``: validate, (join torchrun's group,) cross-validate, write, clean up.

    Raises:
        TumorTraceError: any invalid flag or data, before training starts where checkable.
        KeyboardInterrupt: Ctrl-C (SIGINT), or :class:`Terminated` for SIGTERM, propagated after
            the resume file holds the last finished epoch.
    """
    cfg = replace(cfg, out=Path(cfg.out), data_dir=Path(cfg.data_dir))
    validate_config(cfg)
    was_initialised = dist.is_available() and dist.is_initialized()
    rt = setup_runtime(cfg.device)
    try:
        with _sigterm_as_interrupt():
            return cross_validate(cfg, progress, command=command, runtime=rt)
    finally:
        if rt.distributed and not was_initialised and dist.is_initialized():
            dist.destroy_process_group()
