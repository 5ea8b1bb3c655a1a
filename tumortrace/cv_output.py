"""What cross-validation produces and writes: fold results, the benchmark JSON and the model card.

* :class:`FoldResult`: one fold's test metrics with the validation-selected weights; its
  :meth:`~FoldResult.to_benchmark` is a fold entry of ``benchmarks/<arch>.json``;
* :func:`benchmark_record`: the whole ``<out>/benchmarks/<arch>.json`` (format in
  ``docs/ARCHITECTURE.md``): per-fold metrics and curves, mean ± std, data, cost, provenance;
* :func:`write_outputs`: the shipped weights + card (:func:`tumortrace.checkpoint.save_checkpoint`)
  and the benchmark file.
"""

from __future__ import annotations

import json
import subprocess
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from torch import nn

from tumortrace import checkpoint, files, metrics, models, provenance
from tumortrace.cases import class_counts, left_out_kinds, synthetic_dir
from tumortrace.config import CLASSES, TrainConfig
from tumortrace.loop import EpochRecord
from tumortrace.manifest import Case
from tumortrace.networks import get_network, is_baseline
from tumortrace.runtime import Runtime
from tumortrace.standard import pipeline_description
from tumortrace.supervision import describe as describe_training

COMMIT_LIMIT_BYTES = 10_000_000
"""Baseline weights over this size (fp16 on disk) are not committed to the repository: their
benchmark ships, their card says so."""


@dataclass(frozen=True)
class FoldResult:
    """One fold's outcome: test metrics with the validation-selected weights.

    Attributes:
        metrics: :meth:`tumortrace.metrics.Metrics.to_dict` of the test part.
        cases: the test part's predictions, one ``{"subject_id", "label", "probs"}`` per case
            (``probs`` in :data:`CLASSES` order).
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
    cases: tuple[dict[str, Any], ...] = ()

    def to_benchmark(self) -> dict[str, Any]:
        """The fold entry of ``benchmarks/<arch>.json`` (format in ``docs/ARCHITECTURE.md``)."""
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
            cases=[dict(c) for c in self.cases],
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
        d["cases"] = tuple(d.get("cases", ()))
        return cls(**d)


@dataclass
class CVResult:
    """Outcome of :func:`cross_validate`.

    Attributes:
        arch: architecture name.
        folds: one :class:`FoldResult` per fold.
        shipped: ``"best_fold:N"``, ``"fold:N"`` (``--ship-fold``) or ``"refit"``.
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


def data_info(cfg: TrainConfig, cases: Sequence[Case]) -> dict[str, Any]:
    """The ``data`` entry of the card and the benchmark: source, kind, counts per class."""
    sources = sorted({c.source for c in cases})
    info: dict[str, Any] = {
        "source": "+".join(sources),
        "kind": "synthetic" if sources == ["synthetic"] else "real",
        "counts": class_counts(cases),
        "n": len(cases),
    }
    if any(c.kind for c in cases):
        kinds = sorted({c.kind or "unrecorded" for c in cases})
        info["kinds"] = {k: sum(1 for c in cases if (c.kind or "unrecorded") == k) for k in kinds}
    gliomas = sum(1 for c in cases if c.label_index < 0)
    if gliomas:
        info["glioma_unknown_grade"] = gliomas
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


def benchmark_record(
    cfg: TrainConfig,
    cases: Sequence[Case],
    folds: Sequence[FoldResult],
    model: nn.Module,
    shipped: str,
    command: str,
    rt: Runtime,
) -> dict[str, Any]:
    """The ``benchmarks/<arch>.json`` record of a finished cross-validation (JSON-ready)."""
    shape = list(cfg.preprocess.shape_dhw)
    row = get_network(cfg.arch)
    return files.jsonable(
        {
            "arch": cfg.arch,
            "kind": row.kind if row is not None else "network",
            "classes": list(CLASSES),
            "input_shape": shape,
            "spacing_mm": list(cfg.preprocess.spacing_mm),
            "data": data_info(cfg, cases),
            "params": fitted_values(model),
            "train_seconds": round(sum(f.train_seconds for f in folds), 3),
            "gflops": models.count_gflops(model, tuple(shape)),
            "shipped": shipped,
            "folds": [f.to_benchmark() for f in folds],
            "summary": metrics.summarize([f.to_benchmark() for f in folds]),
            "runtime": rt.describe(),
            "command": command,
            "git_commit": git_commit(),
            "date": datetime.now(UTC).isoformat(timespec="seconds"),
            "config": {k: repr(v) for k, v in asdict(cfg).items()},
        }
    )


def fitted_values(model: nn.Module) -> int:
    """The model's number of parameters; for a model fitted without gradients (the HOG-SVM,
    whose arrays are buffers), the number of stored values, its input reference left out."""
    n = models.count_parameters(model)
    if n:
        return n
    state = model.state_dict()
    return sum(v.numel() for k, v in state.items() if k != models.INPUT_REFERENCE_KEY)


def baseline_notes(arch: str, params: int) -> str:
    """The card's sentences on a baseline: what it is, nothing pretrained, whether its weights
    are small enough to be committed ("" for the networks)."""
    if not is_baseline(arch):
        return ""
    row = get_network(arch)
    megabytes = 2 * params / 1e6  # fp16 on disk
    size = (
        f" Weights about {megabytes:.1f} MB (fp16): over the {COMMIT_LIMIT_BYTES / 1e6:.0f} MB "
        "limit, so they are not committed to the repository; only the benchmark ships."
        if 2 * params > COMMIT_LIMIT_BYTES
        else f" Weights about {megabytes:.1f} MB (fp16): small enough to commit."
    )
    return (
        f" Baseline for comparison ({row.description if row else arch}), not served by the app."
        " Nothing pretrained: no weights can be downloaded here, so it starts from random "
        f"initialisation.{size}{HOG_SVM_NOTE if arch == 'hog_svm' else ''}"
    )


HOG_SVM_NOTE = (
    " Probabilities: the softmax of the three one-against-the-rest SVM decision values divided by "
    "one temperature fitted on the validation part (temperature scaling); C chosen on the "
    "validation part. Stored without pickle: PCA mean and components, standardisation, support "
    "vectors, dual coefficients, intercepts, gamma and temperature as safetensors arrays."
)


def training_notes(cfg: TrainConfig) -> str:
    """The card's sentences on how the network was trained beyond the defaults ("" when none)."""
    notes = [f" Augmentation: {cfg.augment}."]
    if cfg.lesion_weight > 0:
        notes.append(
            f" Lesion-supervised: a 1x1x1 lesion head on {cfg.lesion_layer} (training only, not "
            f"shipped), loss {cfg.lesion_weight:g} x (BCE + soft Dice) against the lesion mask."
        )
    if cfg.attention_weight > 0:
        notes.append(
            f" Attention term: {cfg.attention_weight:g} x the share of the layer-4 class "
            f"activation outside the lesion (dilated {cfg.attention_margin} voxels) on tumour "
            "cases with a mask."
        )
    drop = sorted(left_out_kinds(cfg))
    if drop:
        notes.append(f" Trained without the {' and '.join(drop)} cases (test parts keep them).")
    if cfg.balanced:
        notes.append(" Class-balanced batches, unweighted cross entropy.")
    if cfg.healthy_reference:
        notes.append(
            " Input reference: the healthy mean of the training part (the stem subtracts the "
            "buffer stem.input_reference from every input)."
        )
    return "".join(notes)


def training_record(cfg: TrainConfig, data: dict[str, Any]) -> dict[str, Any]:
    """The card's ``training`` section: the switches (:func:`tumortrace.supervision.describe`)
    and, when the cases record their kind, how many of each kind the cohort holds."""
    out = describe_training(cfg)
    if "kinds" in data:
        out["cohort_kinds"] = data["kinds"]
    return out


def write_outputs(cfg: TrainConfig, result: CVResult, command: str) -> None:
    """Writes the shipped weights, their card and the benchmark file; fills ``result.card`` and
    ``result.paths``."""
    b = result.benchmark
    if result.shipped.startswith("best_fold"):
        how = f"the fold-{result.shipped.split(':')[1]} model, chosen by validation macro-F1"
    elif result.shipped.startswith("fold"):
        how = f"the fold-{result.shipped.split(':')[1]} model, chosen by --ship-fold"
    else:
        how = "a refit on all cases for the median best epoch of the folds"
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
        training=training_record(cfg, b["data"]),
        notes=(
            f"Research prototype, not for clinical use. Ships {how}; metrics are the "
            f"{cfg.folds}-fold cross-validated test estimates (mean, std). "
            f"Input shape (D, H, W) {list(cfg.preprocess.shape_dhw)}.{training_notes(cfg)}"
            f"{baseline_notes(cfg.arch, b['params'])}"
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
