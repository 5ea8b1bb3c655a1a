"""Score any saved weights on any manifest: ``python -m tumortrace evaluate``.

The volumes are preprocessed with the card's own :class:`~tumortrace.config.PreprocessConfig`
(exactly as at training), the model runs in eval mode in fp32, and the metrics come from
:func:`tumortrace.metrics.compute_metrics`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from tumortrace import checkpoint, data, files
from tumortrace.config import CLASSES
from tumortrace.manifest import read_manifest
from tumortrace.metrics import Metrics, accuracy_at_class_mix, compute_metrics
from tumortrace.runtime import resolve_device


@dataclass(frozen=True)
class CaseScore:
    """One scored case.

    Attributes:
        subject_id: the manifest's subject.
        label: true class name.
        predicted: arg-max class name.
        probs: class name -> probability, in :data:`CLASSES` order.
    """

    subject_id: str
    label: str
    predicted: str
    probs: dict[str, float]

    @property
    def correct(self) -> bool:
        """True when the prediction equals the label."""
        return self.label == self.predicted

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready row."""
        return {
            "subject_id": self.subject_id,
            "label": self.label,
            "predicted": self.predicted,
            "correct": self.correct,
            "probs": self.probs,
        }


@dataclass(frozen=True)
class ScoreReport:
    """Metrics of one weights card on one manifest, with the per-case rows.

    Attributes:
        training_mix: the card's training class counts (``card.data["counts"]``), in
            :data:`CLASSES` order; None when the card does not state them.
    """

    arch: str
    card_path: Path
    manifest_path: Path
    metrics: Metrics
    cases: tuple[CaseScore, ...]
    training_mix: tuple[int, ...] | None = None

    @property
    def accuracy_at_training_mix(self) -> float | None:
        """Accuracy re-weighted to the training cohort's class mix (``sum_c pi_c recall_c``).

        What this cohort's per-class recalls would give at the class balance the cross-validation
        folds had, so the two accuracies compare like for like; None without a training mix or
        when a class of it has no case here.
        """
        if self.training_mix is None:
            return None
        value = accuracy_at_class_mix(self.metrics.confusion, self.training_mix)
        return value if np.isfinite(value) else None

    def to_dict(self) -> dict[str, Any]:
        """One JSON-ready document: the metrics at top level, plus arch, n and the cases."""
        mix = self.training_mix
        return files.jsonable(
            {
                "arch": self.arch,
                "weights": str(self.card_path),
                "manifest": str(self.manifest_path),
                "n": len(self.cases),
                **self.metrics.to_dict(),
                "training_mix": None if mix is None else dict(zip(CLASSES, mix, strict=True)),
                "accuracy_at_training_mix": self.accuracy_at_training_mix,
                "cases": [c.to_dict() for c in self.cases],
            }
        )


def training_mix(card: checkpoint.ModelCard) -> tuple[int, ...] | None:
    """The card's training class counts in :data:`CLASSES` order, or None if not all stated."""
    counts = (card.data or {}).get("counts") or {}
    try:
        mix = tuple(int(counts[c]) for c in CLASSES)
    except (KeyError, TypeError, ValueError):
        return None
    return mix if sum(mix) > 0 and min(mix) >= 0 else None


def score_manifest(
    card_path: str | Path,
    manifest_path: str | Path,
    device: str = "auto",
    progress: bool = True,
    batch_size: int = 4,
) -> tuple[Metrics, list[CaseScore]]:
    """Scores the weights behind ``card_path`` on every case of ``manifest_path``.

    Args:
        card_path: ``<arch>.json`` card (or its ``.safetensors``), verified by SHA-256.
        manifest_path: CSV ``subject_id,path,label,source``.
        device: ``"auto"``, ``"cpu"`` or ``"cuda"``.
        progress: tqdm bar (stderr) over batches.
        batch_size: volumes per forward pass.

    Returns:
        ``(metrics, rows)``: the metrics over all cases and one :class:`CaseScore` per case, in
        manifest order.

    Raises:
        CheckpointError: missing, corrupt or mismatched weights or card.
        ManifestError: bad manifest or a missing volume.
        InvalidVolumeError: a volume that cannot be read.
    """
    _, metrics, rows = _score(card_path, manifest_path, device, progress, batch_size)
    return metrics, rows


@torch.inference_mode()
def _score(
    card_path: str | Path, manifest_path: str | Path, device: str, progress: bool, batch_size: int
) -> tuple[checkpoint.ModelCard, Metrics, list[CaseScore]]:
    dev = resolve_device(device)
    model, card = checkpoint.load_checkpoint(card_path, device=dev)
    cases = read_manifest(manifest_path)
    loader = DataLoader(data.VolumeDataset(cases, card.preprocess), batch_size=batch_size)
    probs, labels = [], []
    for x, y in tqdm(loader, desc=f"scoring {card.arch}", unit="batch", disable=not progress):
        probs.append(torch.softmax(model(x.to(dev)).float(), dim=1).double().cpu())
        labels.append(y)
    p = torch.cat(probs).numpy()
    y_true = torch.cat(labels).numpy().astype(np.int64)
    metrics = compute_metrics(y_true, p, classes=CLASSES)
    rows = [
        CaseScore(
            subject_id=case.subject_id,
            label=case.label,
            predicted=CLASSES[int(p[i].argmax())],
            probs={c: float(p[i, j]) for j, c in enumerate(CLASSES)},
        )
        for i, case in enumerate(cases)
    ]
    return card, metrics, rows


def score_report(
    card_path: str | Path, manifest_path: str | Path, device: str = "auto", progress: bool = True
) -> ScoreReport:
    """:func:`score_manifest` wrapped in a :class:`ScoreReport` (what the CLI prints)."""
    card, metrics, rows = _score(card_path, manifest_path, device, progress, batch_size=4)
    return ScoreReport(
        card.arch,
        Path(card_path),
        Path(manifest_path),
        metrics,
        tuple(rows),
        training_mix=training_mix(card),
    )


def format_report(report: ScoreReport) -> str:
    """A readable plain-text table of the metrics, per class and the confusion matrix."""
    d = report.to_dict()

    def num(v: Any) -> str:
        return "  n/a" if v is None else f"{v:.3f}"

    lines = [
        f"{report.arch} on {report.manifest_path} ({d['n']} cases)",
        f"  accuracy {num(d['accuracy'])}   balanced accuracy {num(d['balanced_accuracy'])}   "
        f"macro-F1 {num(d['macro_f1'])}   AUC {num(d['auc_macro'])}   ECE {num(d['ece'])}",
    ]
    if d["accuracy_at_training_mix"] is not None:
        mix = "/".join(str(n) for n in d["training_mix"].values())
        lines.append(
            f"  accuracy at the training class mix ({'/'.join(CLASSES)} = {mix}) "
            f"{num(d['accuracy_at_training_mix'])}"
        )
    lines += [
        "",
        f"  {'class':<8} {'precision':>9} {'recall':>7} {'F1':>6} {'specif.':>7} {'AUC':>6}",
    ]
    for cls in CLASSES:
        pc = d["per_class"][cls]
        lines.append(
            f"  {cls:<8} {num(pc['precision']):>9} {num(pc['recall']):>7} {num(pc['f1']):>6} "
            f"{num(pc['specificity']):>7} {num(pc['auc']):>6}"
        )
    lines += ["", "  confusion (rows: true, columns: predicted)"]
    lines.append("  " + " " * 8 + "".join(f"{c:>8}" for c in CLASSES))
    for cls, row in zip(CLASSES, d["confusion"], strict=True):
        lines.append(f"  {cls:<8}" + "".join(f"{v:>8}" for v in row))
    return "\n".join(lines)
