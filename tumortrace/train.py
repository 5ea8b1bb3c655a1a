"""Training: patient-level cross-validation of one architecture; AMP-, DDP- and resume-aware.

``run(cfg, command)`` is the whole of ``python train.py``: it validates the configuration, loads the
cases (the cached synthetic cohort by default, else a manifest and/or BraTS + IXI discovery), splits
them into seeded patient-level folds, trains each fold (:func:`fit_fold`, which composes
:func:`train_one_epoch` and :func:`evaluate_loader`), scores each fold's test part once, and writes:

* ``<out>/<arch>.safetensors`` + ``<out>/<arch>.json`` (the model card), via
  :func:`tumortrace.checkpoint.save_checkpoint`;
* ``<out>/benchmarks/<arch>.json`` (per-fold and mean ± std metrics, DESIGN.md format);
* ``<out>/benchmarks/<arch>.splits.json`` (the folds' subject ids).

Which model ships:
    By default, the fold model with the highest **validation** macro-F1 (ties: lower validation
    loss, then the lower fold index). Test parts never influence any choice: within a fold the best
    epoch is picked on validation, and the test part is scored once with those weights. With
    ``cfg.refit`` a fresh model is instead trained on every case for the median of the folds' best
    epochs (no early stopping: there is no held-out data left) and that model ships. In both cases
    the card's metrics are the cross-validated test estimates, and ``card.shipped`` says which model
    it is (``"best_fold:N"`` or ``"refit"``).

Devices: CUDA uses AMP (bf16 where supported, else fp16 with a gradient scaler), cuDNN benchmark,
pinned memory and persistent workers. CPU uses ``channels_last_3d`` tensors (oneDNN's native
layout, faster in fp32 too) and bf16 autocast when the processor has native bf16 (AMX or
AVX512-BF16); otherwise fp32.

Distributed: under ``torchrun`` (``WORLD_SIZE`` > 1) the process group is initialised (NCCL on
CUDA, Gloo on CPU), training and evaluation use distributed samplers, predictions are gathered so
every rank takes the same early-stopping decisions, and only rank 0 writes files.

Resume: after every epoch (and at the start of each fold) rank 0 writes ``<out>/<arch>.resume.pt``
atomically; ``cfg.resume`` continues from it, and it is deleted once the outputs are written. The
random streams are re-derived from ``(seed, fold, epoch, rank)`` at every epoch start, so a resumed
run replays the same batches and augmentations as an uninterrupted one (with ``workers=0``).

This module never prints and never parses arguments; progress bars (tqdm, rank 0 only) go to stderr.
"""

from __future__ import annotations

import io
import json
import math
import os
import random
import subprocess
import tempfile
import time
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager
from dataclasses import asdict, dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch import nn
from torch.nn import functional as F
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, Dataset, DistributedSampler
from tqdm.auto import tqdm

from tumortrace import checkpoint, data, evaluate, files, models, provenance
from tumortrace.augment import build_augment
from tumortrace.config import CLASSES, TrainConfig
from tumortrace.errors import ConfigError, ManifestError
from tumortrace.manifest import Case, read_manifest, validate_cases
from tumortrace.standard import pipeline_description

RESUME_VERSION = 1
StateDict = dict[str, torch.Tensor]


# --------------------------------------------------------------------------- records


@dataclass(frozen=True)
class Runtime:
    """Where and how tensors are computed.

    Attributes:
        device: the compute device of this process.
        amp_dtype: autocast dtype (``torch.bfloat16`` / ``torch.float16``), or None for fp32.
        channels_last: use ``torch.channels_last_3d`` for weights and inputs (CPU fast path).
        rank: this process's global rank (0 when not distributed).
        world_size: number of processes (1 when not distributed).
    """

    device: torch.device
    amp_dtype: torch.dtype | None
    channels_last: bool
    rank: int = 0
    world_size: int = 1

    @property
    def distributed(self) -> bool:
        """True under torchrun with more than one process."""
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        """True on the process that writes files and shows progress bars."""
        return self.rank == 0

    def describe(self) -> str:
        """Short human description, e.g. ``"cpu bf16 channels_last_3d x2"``."""
        amp = {torch.bfloat16: "bf16", torch.float16: "fp16"}.get(self.amp_dtype, "fp32")
        layout = " channels_last_3d" if self.channels_last else ""
        procs = f" x{self.world_size}" if self.distributed else ""
        return f"{self.device.type} {amp}{layout}{procs}"


@dataclass(frozen=True)
class EpochRecord:
    """One point of a fold's learning curves (validation fields are None for a refit)."""

    epoch: int
    train_loss: float
    val_loss: float | None
    val_accuracy: float | None
    val_macro_f1: float | None


@dataclass(frozen=True)
class EvalOutput:
    """Predictions of a model on one data part (gathered over all ranks).

    Attributes:
        loss: class-weighted cross entropy over the whole part.
        labels: ``(N,)`` int64 true label indices.
        probs: ``(N, C)`` float64 softmax probabilities.
    """

    loss: float
    labels: np.ndarray
    probs: np.ndarray


@dataclass
class FoldFit:
    """What :func:`fit_fold` returns: the selected weights and the learning curves."""

    best_state: StateDict
    best_epoch: int
    best_val_macro_f1: float
    best_val_loss: float
    curves: list[EpochRecord]
    train_seconds: float


@dataclass(frozen=True)
class FoldResult:
    """One fold's outcome: test metrics with the validation-selected weights.

    Attributes:
        metrics: :meth:`tumortrace.evaluate.Metrics.to_dict` of the test part.
    """

    fold: int
    n_train: int
    n_val: int
    n_test: int
    metrics: dict[str, Any]
    curves: tuple[EpochRecord, ...]
    train_seconds: float
    best_epoch: int
    best_val_macro_f1: float
    best_val_loss: float

    def to_benchmark(self) -> dict[str, Any]:
        """The fold entry of ``benchmarks/<arch>.json`` (DESIGN.md format)."""
        out: dict[str, Any] = {
            "fold": self.fold,
            "n_train": self.n_train,
            "n_val": self.n_val,
            "n_test": self.n_test,
        }
        out.update(self.metrics)
        out.update(
            train_seconds=round(self.train_seconds, 3),
            best_epoch=self.best_epoch,
            best_val_macro_f1=self.best_val_macro_f1,
            curves=[asdict(c) for c in self.curves],
        )
        return out

    def to_state(self) -> dict[str, Any]:
        """Plain dict for the resume file (inverse: :meth:`from_state`)."""
        d = asdict(self)
        d["curves"] = [asdict(c) for c in self.curves]
        return d

    @classmethod
    def from_state(cls, d: dict[str, Any]) -> FoldResult:
        """Rebuilds a record stored by :meth:`to_state`."""
        d = dict(d)
        d["curves"] = tuple(EpochRecord(**c) for c in d["curves"])
        return cls(**d)


@dataclass
class CVResult:
    """Outcome of :func:`cross_validate`.

    Attributes:
        arch: architecture name.
        folds: one :class:`FoldResult` per fold.
        shipped: ``"best_fold:N"`` or ``"refit"``.
        model: the shipped network on CPU in eval mode, with exactly the weights written to disk
            (rounded through fp16 like the safetensors file), so its logits equal a reload's.
        benchmark: the dict written to ``benchmarks/<arch>.json``.
        card: the model card written (None on ranks other than 0).
        paths: files written, by role (empty on ranks other than 0).
    """

    arch: str
    folds: list[FoldResult]
    shipped: str
    model: nn.Module
    benchmark: dict[str, Any]
    card: checkpoint.ModelCard | None = None
    paths: dict[str, Path] = field(default_factory=dict)


# --------------------------------------------------------------------------- runtime


def cpu_has_native_bf16() -> bool:
    """True when this CPU computes bf16 natively (AMX tiles or AVX512-BF16) via oneDNN."""
    try:
        if not (
            torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported()
        ):
            return False
        return bool(torch.cpu._is_amx_tile_supported() or torch.cpu._is_avx512_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def fast_runtime(device: torch.device) -> Runtime:
    """The fastest precision and layout for training on ``device`` (one process, rank 0).

    CUDA: AMP in bf16 where supported, else fp16 (with a gradient scaler), and cuDNN benchmark.
    CPU: ``channels_last_3d`` always (oneDNN's native layout: 1-10% faster than contiguous in
    fp32 on an AMD EPYC without bf16, about 2x with bf16), plus bf16 autocast when the processor
    has native bf16 (:func:`cpu_has_native_bf16`).
    """
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
        amp = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        return Runtime(device, amp, channels_last=False)
    return Runtime(device, torch.bfloat16 if cpu_has_native_bf16() else None, channels_last=True)


def setup_runtime(device: str = "auto") -> Runtime:
    """Picks the device and precision, and joins the process group under torchrun.

    Args:
        device: ``"auto"`` (CUDA when available), ``"cuda"`` or ``"cpu"``.

    Raises:
        ConfigError: ``"cuda"`` was asked for but no CUDA device is visible.
    """
    if device not in ("auto", "cuda", "cpu"):
        raise ConfigError(f"Unknown device {device!r}; expected one of auto, cuda, cpu.")
    use_cuda = torch.cuda.is_available() and device in ("auto", "cuda")
    if device == "cuda" and not use_cuda:
        raise ConfigError(
            "--device cuda was given but torch sees no CUDA device; use --device cpu or auto."
        )
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if use_cuda:
        dev = torch.device("cuda", local_rank if world_size > 1 else torch.cuda.current_device())
        torch.cuda.set_device(dev)
    else:
        dev = torch.device("cpu")
    rt = replace(fast_runtime(dev), rank=rank, world_size=world_size)
    if rt.distributed and not dist.is_initialized():
        dist.init_process_group(backend="nccl" if use_cuda else "gloo")
    return rt


def _autocast(rt: Runtime) -> AbstractContextManager:
    return torch.autocast(
        rt.device.type, dtype=rt.amp_dtype or torch.bfloat16, enabled=rt.amp_dtype is not None
    )


def train_step(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    criterion: nn.Module,
    optimizer: torch.optim.Optimizer,
    scaler: torch.amp.GradScaler,
    rt: Runtime,
) -> torch.Tensor:
    """One optimisation step (autocast forward, scaled backward, optimiser step).

    Args:
        x: ``(N, 1, D, H, W)`` on ``rt.device`` (channels_last_3d when ``rt.channels_last``).
        y: ``(N,)`` int64 labels.

    Returns:
        the detached scalar loss.
    """
    with _autocast(rt):
        logits = model(x)
    loss = criterion(logits.float(), y)
    optimizer.zero_grad(set_to_none=True)
    scaler.scale(loss).backward()
    scaler.step(optimizer)
    scaler.update()
    return loss.detach()


def _to_device(x: torch.Tensor, rt: Runtime) -> torch.Tensor:
    x = x.to(rt.device, non_blocking=True)
    return x.contiguous(memory_format=torch.channels_last_3d) if rt.channels_last else x


def _unwrap(model: nn.Module) -> nn.Module:
    return model.module if isinstance(model, DistributedDataParallel) else model


def _seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def _epoch_seed(seed: int, fold: int, epoch: int, rank: int) -> int:
    return seed * 1_000_003 + fold * 10_007 + epoch * 101 + rank


def _gather(obj: Any, rt: Runtime) -> list[Any]:
    """All ranks' ``obj`` (a list of one element when not distributed)."""
    if not rt.distributed:
        return [obj]
    out: list[Any] = [None] * rt.world_size
    dist.all_gather_object(out, obj)
    return out


def _barrier(rt: Runtime) -> None:
    if rt.distributed:
        dist.barrier()


# --------------------------------------------------------------------------- the loop


def train_one_epoch(
    model: nn.Module,
    loader: DataLoader,
    criterion: nn.Module,
    optimizer: torch.optim.Optimizer,
    scaler: torch.amp.GradScaler,
    rt: Runtime,
    *,
    max_steps: int | None = None,
    bar: tqdm | None = None,
) -> float:
    """One pass over the training part.

    Args:
        model: the network (possibly DDP-wrapped); inputs ``(N, 1, D, H, W)`` -> logits ``(N, C)``.
        loader: yields ``(x (N, 1, D, H, W) float32, y (N,) int64)``.
        criterion: class-weighted cross entropy on ``rt.device``.
        optimizer: updates the model's parameters.
        scaler: gradient scaler (enabled only for fp16 AMP).
        rt: device and precision.
        max_steps: stop after this many batches (smoke runs).
        bar: progress bar advanced once per batch.

    Returns:
        Mean training loss over the samples seen by all ranks.
    """
    model.train()
    total, count = 0.0, 0
    for step, (x, y) in enumerate(loader):
        if max_steps is not None and step >= max_steps:
            break
        x, y = _to_device(x, rt), y.to(rt.device, non_blocking=True)
        loss = train_step(model, x, y, criterion, optimizer, scaler, rt)
        total += loss.item() * len(y)
        count += len(y)
        if bar is not None:
            bar.update()
            bar.set_postfix(loss=f"{total / count:.4f}")
    sums = _gather((total, count), rt)
    total, count = sum(s[0] for s in sums), sum(s[1] for s in sums)
    return total / max(count, 1)


@torch.inference_mode()
def evaluate_loader(
    model: nn.Module, loader: DataLoader, rt: Runtime, class_weight: torch.Tensor | None = None
) -> EvalOutput:
    """Predicts a whole data part in eval mode and gathers it from every rank.

    Args:
        model: the network (DDP wrapper or not); ``(N, 1, D, H, W)`` -> logits ``(N, C)``.
        loader: unshuffled loader; under DDP its sampler is a :class:`DistributedSampler`.
        rt: device and precision.
        class_weight: ``(C,)`` weights of the loss (None: unweighted).

    Returns:
        The weighted cross entropy, labels ``(N,)`` and probabilities ``(N, C)`` of the part,
        in dataset order, each sample once.
    """
    net = _unwrap(model)
    net.eval()
    logits, labels = [], []
    for x, y in loader:
        with _autocast(rt):
            out = net(_to_device(x, rt))
        logits.append(out.float().cpu())
        labels.append(y.cpu())
    logits_t, labels_t = torch.cat(logits), torch.cat(labels)
    if rt.distributed:
        # DistributedSampler pads with repeats: keep each dataset index once, in order.
        parts = _gather((list(loader.sampler), logits_t, labels_t), rt)
        seen: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}
        for indices, lg, lb in parts:
            for i, idx in enumerate(indices):
                seen.setdefault(int(idx), (lg[i], lb[i]))
        order = sorted(seen)
        logits_t = torch.stack([seen[i][0] for i in order])
        labels_t = torch.stack([seen[i][1] for i in order])
    weight = None if class_weight is None else class_weight.float().cpu()
    loss = F.cross_entropy(logits_t, labels_t, weight=weight).item()
    probs = torch.softmax(logits_t.double(), dim=1).numpy()
    return EvalOutput(loss=loss, labels=labels_t.numpy().astype(np.int64), probs=probs)


def _loader(
    dataset: Dataset, cfg: TrainConfig, rt: Runtime, *, train: bool, seed: int
) -> DataLoader:
    """DataLoader over ``dataset``; a (distributed) sampler keeps shuffling seeded per epoch."""
    sampler = DistributedSampler(
        dataset, num_replicas=rt.world_size, rank=rt.rank, shuffle=train, seed=seed
    )
    cuda = rt.device.type == "cuda"
    return DataLoader(
        dataset,
        batch_size=cfg.batch_size,
        sampler=sampler,
        num_workers=cfg.workers,
        pin_memory=cuda,
        persistent_workers=cuda and cfg.workers > 0,
    )


def _cpu_state(model: nn.Module) -> StateDict:
    """Contiguous CPU copies of the (unwrapped) model's state."""
    return {
        k: v.detach().to("cpu", copy=True).contiguous()
        for k, v in _unwrap(model).state_dict().items()
    }


@dataclass
class FoldProgress:
    """Early-stopping bookkeeping of one fold; round-trips through the resume file.

    An epoch improves when its validation macro-F1 is higher, or equal with a lower validation
    loss; ``patience`` epochs in a row without improvement stop the fold (0: never stop). Without
    validation (a refit) every epoch counts as the best, so the last weights are kept.
    """

    epoch: int = 0
    best_f1: float = -1.0
    best_loss: float = math.inf
    best_epoch: int = 0
    bad_epochs: int = 0
    seconds: float = 0.0
    done: bool = False
    curves: list[EpochRecord] = field(default_factory=list)
    best_state: StateDict | None = None

    def update(self, rec: EpochRecord, state: Callable[[], StateDict], patience: int) -> None:
        """Records epoch ``rec``; calls ``state()`` to keep the weights when it improves."""
        self.curves.append(rec)
        self.epoch = rec.epoch
        f1 = -1.0 if rec.val_macro_f1 is None else rec.val_macro_f1
        loss = math.inf if rec.val_loss is None else rec.val_loss
        no_val = rec.val_macro_f1 is None
        if no_val or f1 > self.best_f1 or (f1 == self.best_f1 and loss < self.best_loss):
            self.best_f1, self.best_loss, self.best_epoch, self.bad_epochs = f1, loss, rec.epoch, 0
            self.best_state = state()
        else:
            self.bad_epochs += 1
            self.done = patience > 0 and self.bad_epochs >= patience

    def to_state(self) -> dict[str, Any]:
        """Plain dict (for ``torch.save``); inverse of :meth:`from_state`."""
        d = {f: getattr(self, f) for f in self.__dataclass_fields__}
        d["curves"] = [asdict(c) for c in self.curves]
        return d

    @classmethod
    def from_state(cls, d: dict[str, Any]) -> FoldProgress:
        """Rebuilds the bookkeeping stored by :meth:`to_state`."""
        kwargs = {f: d[f] for f in cls.__dataclass_fields__ if f in d}
        kwargs["curves"] = [EpochRecord(**c) for c in kwargs.get("curves", [])]
        return cls(**kwargs)


def fit_fold(
    cfg: TrainConfig,
    model: nn.Module,
    train_set: Dataset,
    val_set: Dataset | None,
    rt: Runtime,
    class_weight: torch.Tensor,
    *,
    fold: int = 0,
    epochs: int | None = None,
    progress: bool = True,
    state: dict[str, Any] | None = None,
    on_epoch: Callable[[dict[str, Any]], None] | None = None,
) -> FoldFit:
    """Trains one fold with early stopping on validation macro-F1.

    Args:
        cfg: optimiser, schedule, patience, batch size, workers, seed.
        model: a fresh network (moved to ``rt.device`` here; DDP-wrapped when distributed).
        train_set: yields ``(x (1, D, H, W) float32, label int)``, already augmented.
        val_set: the validation part, or None for a refit (fixed epochs, last weights kept).
        rt: device, precision and ranks.
        class_weight: ``(C,)`` loss weights from the training labels.
        fold: fold index (seeds and progress labels).
        epochs: number of epochs (default ``cfg.epochs``).
        progress: show a tqdm bar per epoch on rank 0.
        state: a dict previously passed to ``on_epoch``, to continue from.
        on_epoch: called with a resumable state dict at the start and after every epoch.

    Returns:
        The best weights (by validation macro-F1, ties to lower validation loss), their epoch,
        the per-epoch curves and the training time.
    """
    epochs = cfg.epochs if epochs is None else epochs
    model.to(rt.device, memory_format=torch.channels_last_3d if rt.channels_last else None)
    net = DistributedDataParallel(model) if rt.distributed else model
    optimizer = torch.optim.Adam(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    scheduler = (
        torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=max(epochs, 1))
        if cfg.cosine
        else None
    )
    scaler = torch.amp.GradScaler(rt.device.type, enabled=rt.amp_dtype == torch.float16)
    criterion = nn.CrossEntropyLoss(weight=class_weight.float().to(rt.device))
    seed = cfg.seed + fold
    train_loader = _loader(train_set, cfg, rt, train=True, seed=seed)
    val_loader = None if val_set is None else _loader(val_set, cfg, rt, train=False, seed=seed)

    p = FoldProgress() if state is None else FoldProgress.from_state(state)
    if state is not None:
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        if scheduler is not None and state.get("scheduler") is not None:
            scheduler.load_state_dict(state["scheduler"])
        scaler.load_state_dict(state["scaler"])

    def snapshot() -> dict[str, Any]:
        return {
            **p.to_state(), "model": _cpu_state(model), "optimizer": optimizer.state_dict(),
            "scheduler": None if scheduler is None else scheduler.state_dict(),
            "scaler": scaler.state_dict(),
        }  # fmt: skip

    if on_epoch is not None and state is None:
        on_epoch(snapshot())
    while not p.done and p.epoch < epochs:
        epoch = p.epoch + 1
        _seed_everything(_epoch_seed(cfg.seed, fold, epoch, rt.rank))
        train_loader.sampler.set_epoch(epoch)
        steps = min(len(train_loader), cfg.max_steps_per_epoch or len(train_loader))
        bar = tqdm(
            total=steps, desc=f"fold {fold} epoch {epoch}/{epochs}", unit="batch",
            disable=not (progress and rt.is_main), dynamic_ncols=True,
        )  # fmt: skip
        start = time.perf_counter()
        train_loss = train_one_epoch(
            net, train_loader, criterion, optimizer, scaler, rt,
            max_steps=cfg.max_steps_per_epoch, bar=bar,
        )  # fmt: skip
        if scheduler is not None:
            scheduler.step()
        record = EpochRecord(epoch, train_loss, None, None, None)
        if val_loader is not None:
            ev = evaluate_loader(net, val_loader, rt, class_weight)
            m = evaluate.compute_metrics(ev.labels, ev.probs, classes=CLASSES)
            record = EpochRecord(epoch, train_loss, ev.loss, m.accuracy, m.macro_f1)
            bar.set_postfix(loss=f"{train_loss:.4f}", val_loss=f"{ev.loss:.4f}",
                            val_acc=f"{m.accuracy:.3f}", val_f1=f"{m.macro_f1:.3f}")  # fmt: skip
        bar.close()
        p.seconds += time.perf_counter() - start
        p.update(record, lambda: _cpu_state(model), cfg.patience)
        if on_epoch is not None:
            on_epoch(snapshot())
    if p.best_state is None:  # zero epochs: keep the initial weights
        p.best_state = _cpu_state(model)
    return FoldFit(
        best_state=p.best_state,
        best_epoch=p.best_epoch,
        best_val_macro_f1=p.best_f1,
        best_val_loss=p.best_loss,
        curves=list(p.curves),
        train_seconds=p.seconds,
    )


# --------------------------------------------------------------------------- validation and data


def validate_config(cfg: TrainConfig) -> None:
    """Checks every flag that can be checked before any data is read or written.

    Raises:
        ConfigError: fewer than 2 folds, unknown architecture (the message lists the valid ones),
            an input shape too small for the network, a missing pretrained file, bad numbers.
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
    if cfg.max_steps_per_epoch is not None and cfg.max_steps_per_epoch < 1:
        raise ConfigError(f"--max-steps-per-epoch {cfg.max_steps_per_epoch} must be >= 1.")
    if any(s <= 0 for s in cfg.preprocess.spacing_mm):
        raise ConfigError(f"--spacing {list(cfg.preprocess.spacing_mm)} must be positive (mm).")
    # Builds the network once: an unknown name and a missing pretrained file fail here, early.
    models.create_model(
        cfg.arch,
        num_classes=len(CLASSES),
        pretrained=cfg.pretrained,
        dropout=cfg.dropout,
        pretrained_path=cfg.pretrained_path,
    )
    models.check_input_shape(cfg.arch, tuple(cfg.preprocess.shape_dhw))


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


def synthetic_dir(cfg: TrainConfig) -> Path:
    """Folder of the cached embedded cohort: ``<data_dir>/synthetic-<size>-seed<seed>``."""
    return cfg.data_dir / f"synthetic-{cfg.synthetic.size}-seed{cfg.synthetic.seed}"


def _class_counts(cases: Sequence[Case]) -> dict[str, int]:
    return {c: sum(1 for x in cases if x.label == c) for c in CLASSES}


def load_cases(cfg: TrainConfig, rt: Runtime | None = None, progress: bool = True) -> list[Case]:
    """The cases to train on.

    With no data flag, the embedded synthetic cohort (``cfg.synthetic``) is generated once under
    :func:`synthetic_dir` and reused while its manifest exists with the same class counts.
    Otherwise the manifest, BraTS and IXI cases given are merged.

    Raises:
        ManifestError: a missing volume, a duplicate subject, or a class without any case.
    """
    rt = rt or Runtime(torch.device("cpu"), None, False)
    if cfg.manifest is None and cfg.brats is None and cfg.ixi is None:
        from tumortrace.synthetic import write_cohort  # heavy; only for the default cohort

        folder = synthetic_dir(cfg)
        wanted = dict(cfg.synthetic.counts)
        manifest = folder / "manifest.csv"
        if rt.is_main:
            fresh = manifest.is_file() and _class_counts(
                read_manifest(manifest, check_files=False)
            ) == {c: wanted.get(c, 0) for c in CLASSES}
            if not fresh:
                write_cohort(
                    folder, wanted, seed=cfg.synthetic.seed, size=cfg.synthetic.size,
                    progress=progress,
                )  # fmt: skip
        _barrier(rt)
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
    counts = _class_counts(cases)
    empty = [c for c, n in counts.items() if n == 0]
    if empty:
        raise ManifestError(
            f"No cases for class(es) {empty}: counts per class are {counts}. Every class of "
            f"{list(CLASSES)} needs cases (e.g. add --ixi for healthy scans, --brats for gliomas)."
        )
    return cases


def _subset(cases: Sequence[Case], ids: Sequence[str]) -> list[Case]:
    by_id = {c.subject_id: c for c in cases}
    return [by_id[i] for i in ids]


def _dataset(cfg: TrainConfig, cases: Sequence[Case], augment: bool) -> Dataset:
    transform = build_augment(cfg.augment) if augment else None
    return data.VolumeDataset(
        list(cases), cfg.preprocess, cache_dir=cfg.data_dir / "cache", transform=transform
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
    _barrier(rt)


def _class_weight(cases: Sequence[Case]) -> torch.Tensor:
    return data.class_weights([c.label_index for c in cases], n_classes=len(CLASSES))


def _new_model(cfg: TrainConfig) -> nn.Module:
    return models.create_model(
        cfg.arch,
        num_classes=len(CLASSES),
        pretrained=cfg.pretrained,
        dropout=cfg.dropout,
        pretrained_path=cfg.pretrained_path,
    )


# --------------------------------------------------------------------------- resume file


def resume_path(cfg: TrainConfig) -> Path:
    """Where the resume checkpoint of ``cfg.arch`` lives: ``<out>/<arch>.resume.pt``."""
    return cfg.out / f"{cfg.arch}.resume.pt"


def _fingerprint(cfg: TrainConfig) -> dict[str, str]:
    """Settings that must match for a resume (device, workers and resume itself may change)."""
    skip = {"resume", "device", "workers"}
    return {k: repr(v) for k, v in asdict(cfg).items() if k not in skip}


def _save_resume(cfg: TrainConfig, state: dict[str, Any]) -> None:
    buf = io.BytesIO()
    torch.save({"version": RESUME_VERSION, "config": _fingerprint(cfg), **state}, buf)
    files.atomic_write_bytes(resume_path(cfg), buf.getvalue())


def _load_resume(cfg: TrainConfig) -> dict[str, Any]:
    path = resume_path(cfg)
    if not path.is_file():
        raise ConfigError(
            f"--resume was given but there is no resume checkpoint at {path}; "
            "run without --resume to start afresh."
        )
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # a truncated or foreign file: explain, keep the cause
        raise ConfigError(
            f"Resume checkpoint {path} is unreadable ({err}); delete it and run without --resume."
        ) from err
    if state.get("version") != RESUME_VERSION:
        raise ConfigError(f"Resume checkpoint {path} has an unknown version; delete it.")
    diff = {
        k: (v, state["config"].get(k))
        for k, v in _fingerprint(cfg).items()
        if state["config"].get(k) != v
    }
    if diff:
        listed = "; ".join(f"{k}: now {a}, saved {b}" for k, (a, b) in diff.items())
        raise ConfigError(
            f"Resume checkpoint {path} was written with other settings ({listed}). "
            "Use the same flags, or run without --resume to start afresh."
        )
    return state


# --------------------------------------------------------------------------- cross-validation


def git_commit() -> str:
    """``git rev-parse HEAD`` of the source checkout, or ``"unknown"``."""
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"],
            cwd=Path(__file__).resolve().parent.parent,
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        )
        return out.stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def _data_info(cfg: TrainConfig, cases: Sequence[Case]) -> dict[str, Any]:
    sources = sorted({c.source for c in cases})
    info: dict[str, Any] = {
        "source": "+".join(sources),
        "kind": "synthetic" if sources == ["synthetic"] else "real",
        "counts": _class_counts(cases),
        "n": len(cases),
    }
    if cfg.manifest is None and cfg.brats is None and cfg.ixi is None:
        info["synthetic"] = {
            "size": cfg.synthetic.size,
            "seed": cfg.synthetic.seed,
            "folder": str(synthetic_dir(cfg)),
        }
    for key in ("manifest", "brats", "ixi"):
        if getattr(cfg, key) is not None:
            info[key] = str(getattr(cfg, key))
    return info


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
        runtime: from :func:`setup_runtime` (default: set up from ``cfg.device``).

    Returns:
        The per-fold results, the shipped model and the written paths.
    """
    if runtime is None:  # called directly rather than through run()
        validate_config(cfg)
    rt = runtime or setup_runtime(cfg.device)
    if rt.is_main:
        check_writable(cfg.out)
    resume = _load_resume(cfg) if cfg.resume else None
    cases = load_cases(cfg, rt, progress)
    warm_cache(cfg, cases, rt, progress)
    splits = data.make_folds(
        cases, k=cfg.folds, test_fraction=cfg.test_fraction, val_fraction=cfg.val_fraction,
        seed=cfg.seed,
    )  # fmt: skip
    bench_dir = cfg.out / "benchmarks"
    if rt.is_main:
        data.save_splits(splits, bench_dir / f"{cfg.arch}.splits.json")

    progress_state: dict[str, Any] = resume or {"completed": [], "ship": None, "current": None}
    completed = [FoldResult.from_state(d) for d in progress_state["completed"]]
    ship = progress_state["ship"]  # {"fold", "f1", "loss", "state"} of the best fold so far

    def save(current: dict[str, Any] | None) -> None:
        if rt.is_main:
            _save_resume(
                cfg,
                {"completed": [f.to_state() for f in completed], "ship": ship, "current": current},
            )

    def resumed(fold: int) -> dict[str, Any] | None:
        current = progress_state.get("current")
        return current if current is not None and current.get("fold") == fold else None

    for split in splits[len(completed) :]:
        _seed_everything(cfg.seed + split.fold)
        train_cases = _subset(cases, split.train)
        weight = _class_weight(train_cases)
        fit = fit_fold(
            cfg, _new_model(cfg), _dataset(cfg, train_cases, augment=True),
            _dataset(cfg, _subset(cases, split.val), augment=False), rt, weight,
            fold=split.fold, progress=progress, state=resumed(split.fold),
            on_epoch=lambda s, k=split.fold: save({"fold": k, **s}),
        )  # fmt: skip
        model = _new_model(cfg)
        model.load_state_dict(fit.best_state)
        model.to(rt.device, memory_format=torch.channels_last_3d if rt.channels_last else None)
        test_loader = _loader(
            _dataset(cfg, _subset(cases, split.test), augment=False), cfg, rt, train=False, seed=0
        )
        ev = evaluate_loader(model, test_loader, rt, weight)
        metrics = evaluate.compute_metrics(ev.labels, ev.probs, classes=CLASSES)
        completed.append(
            FoldResult(
                fold=split.fold, n_train=len(split.train), n_val=len(split.val),
                n_test=len(split.test), metrics=files.jsonable(metrics.to_dict()),
                curves=tuple(fit.curves), train_seconds=fit.train_seconds,
                best_epoch=fit.best_epoch, best_val_macro_f1=fit.best_val_macro_f1,
                best_val_loss=fit.best_val_loss,
            )
        )  # fmt: skip
        better = ship is None or (fit.best_val_macro_f1, -fit.best_val_loss) > (
            ship["f1"],
            -ship["loss"],
        )
        if better and not cfg.refit:
            ship = {"fold": split.fold, "f1": fit.best_val_macro_f1, "loss": fit.best_val_loss,
                    "state": fit.best_state}  # fmt: skip
        save(None)

    if cfg.refit:
        epochs = max(1, round(float(np.median([f.best_epoch for f in completed]))))
        weight = _class_weight(cases)
        _seed_everything(cfg.seed + len(splits))
        fit = fit_fold(
            cfg, _new_model(cfg), _dataset(cfg, cases, augment=True), None, rt, weight,
            fold=len(splits), epochs=epochs, progress=progress, state=resumed(len(splits)),
            on_epoch=lambda s: save({"fold": len(splits), **s}),
        )  # fmt: skip
        shipped, state = "refit", fit.best_state
    else:
        shipped, state = f"best_fold:{ship['fold']}", ship["state"]

    model = _new_model(cfg)
    model.load_state_dict(checkpoint.as_stored(state))
    model.eval()
    result = CVResult(
        arch=cfg.arch,
        folds=completed,
        shipped=shipped,
        model=model,
        benchmark=_benchmark(cfg, cases, completed, model, shipped, command, rt),
    )
    if rt.is_main:
        _write_outputs(cfg, cases, result, command)
        resume_path(cfg).unlink(missing_ok=True)
    _barrier(rt)
    return result


def _benchmark(
    cfg: TrainConfig,
    cases: Sequence[Case],
    folds: Sequence[FoldResult],
    model: nn.Module,
    shipped: str,
    command: str,
    rt: Runtime,
) -> dict[str, Any]:
    shape = list(cfg.preprocess.shape_dhw)
    return files.jsonable(
        {
            "arch": cfg.arch,
            "classes": list(CLASSES),
            "input_shape": shape,
            "spacing_mm": list(cfg.preprocess.spacing_mm),
            "data": _data_info(cfg, cases),
            "params": models.count_parameters(model),
            "gflops": models.count_gflops(model, tuple(shape)),
            "shipped": shipped,
            "folds": [f.to_benchmark() for f in folds],
            "summary": evaluate.summarize([f.to_benchmark() for f in folds]),
            "runtime": rt.describe(),
            "command": command,
            "git_commit": git_commit(),
            "date": datetime.now(UTC).isoformat(timespec="seconds"),
            "config": {k: repr(v) for k, v in asdict(cfg).items()},
        }
    )


def _write_outputs(cfg: TrainConfig, cases: Sequence[Case], result: CVResult, command: str) -> None:
    b = result.benchmark
    how = (
        f"the fold-{result.shipped.split(':')[1]} model, chosen by validation macro-F1"
        if result.shipped.startswith("best_fold")
        else "a refit on all cases for the median best epoch of the folds"
    )
    card = checkpoint.ModelCard(
        arch=cfg.arch,
        classes=tuple(CLASSES),
        preprocess=cfg.preprocess,
        dropout=cfg.dropout,
        data=b["data"],
        folds=cfg.folds,
        metrics=b["summary"],
        command=command,
        git_commit=b["git_commit"],
        date=b["date"],
        shipped=result.shipped,
        params=b["params"],
        pipeline=pipeline_description() if cfg.preprocess.space == "mni" else {},
        notes=(
            f"Research prototype, not for clinical use. Ships {how}; metrics are the "
            f"{cfg.folds}-fold cross-validated test estimates (mean, std). "
            f"Input shape (D, H, W) {list(cfg.preprocess.shape_dhw)}."
        ),
    )
    card_path = checkpoint.save_checkpoint(result.model, card, cfg.out)
    written = json.loads(card_path.read_text(encoding="utf-8"))  # the card exactly as on disk
    files.atomic_write_json(
        cfg.out / "benchmarks" / f"{cfg.arch}.json", provenance.seal(b, written)
    )
    result.card = checkpoint.read_card(card_path)
    result.paths = {
        "weights": cfg.out / f"{cfg.arch}.safetensors",
        "card": cfg.out / f"{cfg.arch}.json",
        "benchmark": cfg.out / "benchmarks" / f"{cfg.arch}.json",
        "splits": cfg.out / "benchmarks" / f"{cfg.arch}.splits.json",
    }


def run(cfg: TrainConfig, command: str = "", progress: bool = True) -> CVResult:
    """``python train.py``: validate, (join torchrun's group,) cross-validate, write, clean up.

    Raises:
        TumorTraceError: any invalid flag or data, before training starts where checkable.
        KeyboardInterrupt: propagated after the resume file holds the last finished epoch.
    """
    cfg = replace(cfg, out=Path(cfg.out), data_dir=Path(cfg.data_dir))
    validate_config(cfg)
    was_initialised = dist.is_available() and dist.is_initialized()
    rt = setup_runtime(cfg.device)
    try:
        return cross_validate(cfg, progress, command=command, runtime=rt)
    finally:
        if rt.distributed and not was_initialised and dist.is_initialized():
            dist.destroy_process_group()
