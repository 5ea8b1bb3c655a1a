"""The training loop of one fold: a step, an epoch, an evaluation, early stopping.

:func:`fit_fold` composes :func:`train_one_epoch` and :func:`evaluate_loader`, keeps the best
weights by validation macro-F1 (:class:`FoldProgress`) and hands a resumable snapshot to its caller
after every epoch. Device, precision and ranks come in a :class:`~tumortrace.runtime.Runtime`.

Under lesion supervision (``cfg.lesion_weight`` or ``cfg.attention_weight`` > 0) the network is
trained inside a :class:`tumortrace.supervision.Supervised` wrapper (the lesion head, the
``layer4`` features) on batches ``(x, y, lesion, known)`` with :func:`supervised_step`; the
selected and shipped weights are the network's alone, and the resume snapshot keeps the head.
Gliomas of unknown grade (label -1) take ``-log(p_LGG + p_HGG)``; the validation metrics are
computed over the graded cases.
"""

from __future__ import annotations

import math
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, Dataset, DistributedSampler
from tqdm.auto import tqdm

from tumortrace import metrics
from tumortrace.config import CLASSES, TrainConfig
from tumortrace.data import BalancedSampler
from tumortrace.runtime import Runtime, autocast, gather, to_device, unwrap
from tumortrace.supervision import Criterion, LossTerms, Outputs, Supervised, fc_linear, uses_masks

StateDict = dict[str, torch.Tensor]


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
    with autocast(rt):
        logits = model(x)
    loss = criterion(logits.float(), y)
    optimizer.zero_grad(set_to_none=True)
    scaler.scale(loss).backward()
    scaler.step(optimizer)
    scaler.update()
    return loss.detach()


def supervised_step(
    trainee: nn.Module,
    batch: Sequence[torch.Tensor],
    criterion: Criterion,
    optimizer: torch.optim.Optimizer,
    scaler: torch.amp.GradScaler,
    rt: Runtime,
) -> LossTerms:
    """One lesion-supervised optimisation step.

    Args:
        trainee: a :class:`~tumortrace.supervision.Supervised` network (possibly DDP-wrapped).
        batch: ``(x (N, 1, D, H, W), y (N,), lesion (N, 1, D, H, W) {0, 1}, known (N,) bool)``
            on ``rt.device``.
        criterion: the fold's :class:`~tumortrace.supervision.Criterion` (with the run's cfg).

    Returns:
        The detached loss terms.
    """
    x, y, lesion, known = batch
    with autocast(rt):
        out = Outputs(*trainee(x))
    terms = criterion.supervised(out, fc_linear(unwrap(trainee).network), y, lesion, known)
    optimizer.zero_grad(set_to_none=True)
    scaler.scale(terms.total).backward()
    scaler.step(optimizer)
    scaler.update()
    return LossTerms(*(t.detach() for t in (terms.total, terms.classification, terms.lesion,
                                            terms.attention)))  # fmt: skip


def seed_everything(seed: int) -> None:
    """Seeds Python's, NumPy's and torch's global random streams."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def epoch_seed(seed: int, fold: int, epoch: int, rank: int) -> int:
    """The seed of one epoch of one fold on one rank: a resumed run replays the same streams."""
    return seed * 1_000_003 + fold * 10_007 + epoch * 101 + rank


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
        model: the network (possibly DDP-wrapped); inputs ``(N, 1, D, H, W)`` -> logits ``(N, C)``;
            for lesion-supervised batches a :class:`~tumortrace.supervision.Supervised` one.
        loader: yields ``(x (N, 1, D, H, W) float32, y (N,) int64)``, or
            ``(x, y, lesion (N, 1, D, H, W), known (N,))`` (then :func:`supervised_step`).
        criterion: the class-weighted loss on ``rt.device`` (a
            :class:`~tumortrace.supervision.Criterion` for supervised batches).
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
    for step, batch in enumerate(loader):
        if max_steps is not None and step >= max_steps:
            break
        x, y = to_device(batch[0], rt), batch[1].to(rt.device, non_blocking=True)
        if len(batch) == 4:
            rest = (to_device(batch[2], rt), batch[3].to(rt.device, non_blocking=True))
            loss = supervised_step(model, (x, y, *rest), criterion, optimizer, scaler, rt).total
        else:
            loss = train_step(model, x, y, criterion, optimizer, scaler, rt)
        total += loss.item() * len(y)
        count += len(y)
        if bar is not None:
            bar.update()
            bar.set_postfix(loss=f"{total / count:.4f}")
    sums = gather((total, count), rt)
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
        The weighted classification loss (:func:`tumortrace.supervision.classification_loss`),
        labels ``(N,)`` (-1: a glioma of unknown grade) and probabilities ``(N, C)`` of the part,
        in dataset order, each sample once.
    """
    net = unwrap(model)
    net.eval()
    logits, labels = [], []
    for batch in loader:
        x, y = batch[0], batch[1]
        with autocast(rt):
            out = net(to_device(x, rt))
        logits.append(out.float().cpu())
        labels.append(y.cpu())
    logits_t, labels_t = torch.cat(logits), torch.cat(labels)
    if rt.distributed:
        # DistributedSampler pads with repeats: keep each dataset index once, in order.
        parts = gather((list(loader.sampler), logits_t, labels_t), rt)
        seen: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}
        for indices, lg, lb in parts:
            for i, idx in enumerate(indices):
                seen.setdefault(int(idx), (lg[i], lb[i]))
        order = sorted(seen)
        logits_t = torch.stack([seen[i][0] for i in order])
        labels_t = torch.stack([seen[i][1] for i in order])
    weight = None if class_weight is None else class_weight.float().cpu()
    loss = Criterion(weight)(logits_t, labels_t).item()
    probs = torch.softmax(logits_t.double(), dim=1).numpy()
    return EvalOutput(loss=loss, labels=labels_t.numpy().astype(np.int64), probs=probs)


def make_loader(
    dataset: Dataset, cfg: TrainConfig, rt: Runtime, *, train: bool, seed: int
) -> DataLoader:
    """DataLoader over ``dataset``; a (distributed) sampler keeps shuffling seeded per epoch.

    With ``cfg.balanced`` the training part is drawn class-balanced
    (:class:`tumortrace.data.BalancedSampler`, on ``dataset.labels``).
    """
    if train and cfg.balanced:
        sampler = BalancedSampler(
            dataset.labels, num_replicas=rt.world_size, rank=rt.rank, seed=seed
        )
    else:
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


def cpu_state(model: nn.Module) -> StateDict:
    """Contiguous CPU copies of the (unwrapped) model's state."""
    return {
        k: v.detach().to("cpu", copy=True).contiguous()
        for k, v in unwrap(model).state_dict().items()
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


@dataclass
class Optimisation:
    """Adam, the optional cosine schedule and the (fp16-only) gradient scaler of one fold."""

    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler | None
    scaler: torch.amp.GradScaler

    @classmethod
    def build(cls, cfg: TrainConfig, model: nn.Module, epochs: int, rt: Runtime) -> Optimisation:
        """Fresh optimiser state for ``model`` over ``epochs`` epochs."""
        optimizer = torch.optim.Adam(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
        scheduler = (
            torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=max(epochs, 1))
            if cfg.cosine
            else None
        )
        scaler = torch.amp.GradScaler(rt.device.type, enabled=rt.amp_dtype == torch.float16)
        return cls(optimizer, scheduler, scaler)

    def state_dict(self) -> dict[str, Any]:
        """``{"optimizer", "scheduler", "scaler"}`` for the resume file."""
        return {
            "optimizer": self.optimizer.state_dict(),
            "scheduler": None if self.scheduler is None else self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Inverse of :meth:`state_dict` (extra keys of ``state`` are ignored)."""
        self.optimizer.load_state_dict(state["optimizer"])
        if self.scheduler is not None and state.get("scheduler") is not None:
            self.scheduler.load_state_dict(state["scheduler"])
        self.scaler.load_state_dict(state["scaler"])


def _validate(
    net: nn.Module,
    loader: DataLoader | None,
    rt: Runtime,
    class_weight: torch.Tensor,
    epoch: int,
    train_loss: float,
    bar: tqdm,
) -> EpochRecord:
    """The epoch's curve point: the validation loss, accuracy and macro-F1 (None for a refit)."""
    if loader is None:
        bar.close()
        return EpochRecord(epoch, train_loss, None, None, None)
    ev = evaluate_loader(net, loader, rt, class_weight)
    graded = ev.labels >= 0  # gliomas of unknown grade have no class to score
    m = metrics.compute_metrics(ev.labels[graded], ev.probs[graded], classes=CLASSES)
    bar.set_postfix(loss=f"{train_loss:.4f}", val_loss=f"{ev.loss:.4f}",
                    val_acc=f"{m.accuracy:.3f}", val_f1=f"{m.macro_f1:.3f}")  # fmt: skip
    bar.close()
    return EpochRecord(epoch, train_loss, ev.loss, m.accuracy, m.macro_f1)


def _run_epoch(
    cfg: TrainConfig,
    net: nn.Module,
    train_loader: DataLoader,
    val_loader: DataLoader | None,
    criterion: nn.Module,
    opt: Optimisation,
    rt: Runtime,
    class_weight: torch.Tensor,
    *,
    fold: int,
    epoch: int,
    epochs: int,
    progress: bool,
    eval_net: nn.Module | None = None,
) -> tuple[EpochRecord, float]:
    """One epoch of :func:`fit_fold`: seeded training steps, the scheduler's step, validation
    (of ``eval_net``, the plain network, when ``net`` is a supervised wrapper).

    Returns:
        The epoch's curve point and its wall time in seconds (training and validation).
    """
    seed_everything(epoch_seed(cfg.seed, fold, epoch, rt.rank))
    train_loader.sampler.set_epoch(epoch)
    bar = tqdm(
        total=min(len(train_loader), cfg.max_steps_per_epoch or len(train_loader)),
        desc=f"fold {fold} epoch {epoch}/{epochs}", unit="batch",
        disable=not (progress and rt.is_main), dynamic_ncols=True,
    )  # fmt: skip
    start = time.perf_counter()
    train_loss = train_one_epoch(
        net, train_loader, criterion, opt.optimizer, opt.scaler, rt,
        max_steps=cfg.max_steps_per_epoch, bar=bar,
    )  # fmt: skip
    if opt.scheduler is not None:
        opt.scheduler.step()
    record = _validate(eval_net or net, val_loader, rt, class_weight, epoch, train_loss, bar)
    return record, time.perf_counter() - start


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
        cfg: optimiser, schedule, patience, batch size, workers, seed; lesion supervision
            (``lesion_weight``, ``lesion_layer``, ``attention_weight``, ``attention_margin``).
        model: a fresh network (moved to ``rt.device`` here; DDP-wrapped when distributed).
        train_set: yields ``(x (1, D, H, W) float32, label int)``, already augmented; under lesion
            supervision ``(x, label, lesion (1, D, H, W), known)``.
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
    trainee = model
    if uses_masks(cfg):
        trainee = Supervised(model, cfg.lesion_layer if cfg.lesion_weight > 0 else None)
    rt.place(trainee)
    net = DistributedDataParallel(trainee) if rt.distributed else trainee
    opt = Optimisation.build(cfg, trainee, epochs, rt)
    criterion = Criterion(class_weight.float().to(rt.device), cfg)
    head = getattr(trainee, "head", None)
    seed = cfg.seed + fold
    train_loader = make_loader(train_set, cfg, rt, train=True, seed=seed)
    val_loader = None if val_set is None else make_loader(val_set, cfg, rt, train=False, seed=seed)
    p = FoldProgress() if state is None else FoldProgress.from_state(state)
    if state is not None:
        model.load_state_dict(state["model"])
        if head is not None:
            head.load_state_dict(state["head"])
        opt.load_state_dict(state)

    def snapshot() -> dict[str, Any]:
        extra = {} if head is None else {"head": cpu_state(head)}
        return {**p.to_state(), "model": cpu_state(model), **extra, **opt.state_dict()}

    if on_epoch is not None and state is None:
        on_epoch(snapshot())
    while not p.done and p.epoch < epochs:
        epoch = p.epoch + 1
        record, seconds = _run_epoch(
            cfg, net, train_loader, val_loader, criterion, opt, rt, class_weight,
            fold=fold, epoch=epoch, epochs=epochs, progress=progress, eval_net=model,
        )  # fmt: skip
        p.seconds += seconds
        p.update(record, lambda: cpu_state(model), cfg.patience)
        if on_epoch is not None:
            on_epoch(snapshot())
    if p.best_state is None:  # zero epochs: keep the initial weights
        p.best_state = cpu_state(model)
    return FoldFit(
        best_state=p.best_state,
        best_epoch=p.best_epoch,
        best_val_macro_f1=p.best_f1,
        best_val_loss=p.best_loss,
        curves=list(p.curves),
        train_seconds=p.seconds,
    )


def pretrain_autoencoder(
    model: nn.Module,
    train_set: Dataset,
    cfg: TrainConfig,
    rt: Runtime,
    *,
    fold: int = 0,
    epochs: int | None = None,
    progress: bool = True,
) -> tuple[list[float], float]:
    """Trains an autoencoder baseline to reconstruct its inputs (mean squared error), before its
    classifier is trained by :func:`fit_fold` (the ``conv_ae`` baseline; one process, no DDP).

    Args:
        model: with ``reconstruct(x) -> (target, output)``, both ``(N, 1, D, H, W)``.
        train_set: the training part, ``(x (1, D, H, W), label)`` (labels unused).
        cfg: optimiser settings, batch size, workers, seed; ``cfg.epochs`` by default.
        fold: seeds the batches like :func:`fit_fold`.

    Returns:
        ``(mean loss per epoch, seconds)``.
    """
    epochs = cfg.epochs if epochs is None else epochs
    model.to(rt.device)
    optimizer = torch.optim.Adam(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    loader = make_loader(train_set, cfg, rt, train=True, seed=cfg.seed + fold)
    losses: list[float] = []
    start = time.perf_counter()
    for epoch in range(1, epochs + 1):
        seed_everything(epoch_seed(cfg.seed, fold, -epoch, rt.rank))
        loader.sampler.set_epoch(epoch)
        model.train()
        total, count = 0.0, 0
        bar = tqdm(loader, desc=f"fold {fold} autoencoder {epoch}/{epochs}", unit="batch",
                   disable=not (progress and rt.is_main), dynamic_ncols=True)  # fmt: skip
        for step, (x, _) in enumerate(bar):
            if cfg.max_steps_per_epoch is not None and step >= cfg.max_steps_per_epoch:
                break
            target, out = model.reconstruct(x.to(rt.device))
            loss = F.mse_loss(out, target)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            total += loss.item() * len(x)
            count += len(x)
        bar.close()
        losses.append(total / max(count, 1))
    return losses, time.perf_counter() - start
