"""The real-scan check: what the shipped networks say about real scans, beside the cross-fold table.

Two kinds of evidence, each labelled with what it is:

* **Real gliomas** (:func:`glioma_calls`): real tumour scans the networks never saw (e.g. BraTS and
  TCGA T1 post-contrast), scored by the shipped weights; the share called a tumour (LGG or HGG).
  The grade is not scored: most of these scans publish none.
* **Real-brain cohort, test parts** (:func:`cohort_calls`): from the per-case test predictions of
  each fold's own network in the benchmark JSON (``folds[i]["cases"]``): the share of the real
  healthy brains called healthy, and, for every lesion case, whether the *same brain without its
  lesion* (its ``group``'s healthy case, in the same test part) is called healthy.

Each is reported per network and for the ensemble (the mean of the networks' probabilities, as the
app's verdict). The baselines (:mod:`tumortrace.baselines`) get the same two checks in a section of
their own, without an ensemble: the app never serves them. :func:`real_scan_report` puts them in
one JSON (``weights/benchmarks/real_scans.json``, written by ``scripts/real_scan_check.py``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from tumortrace import checkpoint, data
from tumortrace.config import CLASSES, TUMOUR_CLASSES
from tumortrace.manifest import Case
from tumortrace.runtime import resolve_device

__all__ = ["ENSEMBLE", "Share", "cohort_calls", "glioma_calls", "real_scan_report"]

ENSEMBLE = "ensemble"
"""Key of the networks' mean probabilities in every table."""

TUMOUR = tuple(CLASSES.index(c) for c in TUMOUR_CLASSES)


@dataclass(frozen=True)
class Share:
    """``n`` of ``total`` cases meeting a condition."""

    n: int
    total: int

    @property
    def fraction(self) -> float | None:
        """``n / total`` (None when there is no case)."""
        return self.n / self.total if self.total else None

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready ``{"n", "total", "fraction"}``."""
        return {"n": self.n, "total": self.total, "fraction": self.fraction}


def _with_ensemble(probs: Mapping[str, np.ndarray], ensemble: bool = True) -> dict[str, np.ndarray]:
    """The methods' ``(N, C)`` probabilities, plus their mean under :data:`ENSEMBLE` when
    ``ensemble``."""
    out = {k: np.asarray(v, dtype=np.float64) for k, v in probs.items()}
    if ensemble:
        out[ENSEMBLE] = np.mean(np.stack(list(out.values())), axis=0)
    return out


@torch.inference_mode()
def glioma_calls(
    cards: Sequence[str | Path],
    scans: Sequence[Case],
    cache_dir: str | Path | None = None,
    progress: bool = True,
    ensemble: bool = True,
) -> dict[str, Any]:
    """Scores real tumour scans with each card's network; the share called LGG or HGG.

    Args:
        cards: ``<arch>.json`` cards (weights verified on load), networks or baselines.
        scans: the tumour scans (their ``label`` is not used: any grade).
        cache_dir: the tensor / standard-space cache (:class:`tumortrace.data.VolumeDataset`).
        progress: a progress bar per network.
        ensemble: add the cards' mean probabilities as :data:`ENSEMBLE` (the networks; not the
            baselines, which the app never combines).

    Returns:
        ``{"scans": [subject ids], "probs": {net: (N, C) list}, "called_tumour": {net: Share
        dict}}``, networks in the cards' order, then the ensemble (with ``ensemble``).
    """
    dev = resolve_device("cpu")
    probs: dict[str, np.ndarray] = {}
    for card_path in cards:
        model, card = checkpoint.load_checkpoint(card_path, device=dev)
        ds = data.VolumeDataset(list(scans), card.preprocess, cache_dir=cache_dir)
        rows = []
        for i in tqdm(range(len(ds)), desc=f"gliomas {card.arch}", disable=not progress):
            logits = model(ds.load(i)[None].to(dev)).float()
            rows.append(torch.softmax(logits, dim=1)[0].double().cpu().numpy())
        probs[card.arch] = np.stack(rows)
    probs = _with_ensemble(probs, ensemble)
    called = {
        k: Share(int(np.isin(p.argmax(1), TUMOUR).sum()), len(p)).to_dict()
        for k, p in probs.items()
    }
    return {
        "scans": [s.subject_id for s in scans],
        "probs": {k: np.round(p, 4).tolist() for k, p in probs.items()},
        "called_tumour": called,
    }


def _fold_cases(bench: Mapping[str, Any]) -> list[dict[str, Any]]:
    """Every fold's per-case test predictions, tagged with the fold."""
    out = []
    for fold in bench["folds"]:
        for case in fold.get("cases") or []:
            out.append({**case, "fold": fold["fold"]})
    return out


def _group_of(subject_id: str, groups: Mapping[str, str] | None) -> str:
    """A case's base brain: the manifest's group, else the id before ``+`` (cohort naming)."""
    if groups and subject_id in groups:
        return groups[subject_id]
    return subject_id.split("+", 1)[0]


def cohort_calls(
    benches: Mapping[str, Mapping[str, Any]],
    groups: Mapping[str, str] | None = None,
    ensemble: bool = True,
) -> dict[str, Any]:
    """Healthy brains called healthy, and lesion cases whose own brain without the lesion is.

    Args:
        benches: ``{arch: benchmark JSON}`` with per-case test predictions, all on the same folds.
        groups: ``{subject_id: group}`` (default: the cohort's ``<base>+<label>`` naming).
        ensemble: add the methods' mean as :data:`ENSEMBLE` (networks only, as for gliomas).

    Returns:
        ``{"healthy_called_healthy": {net: Share}, "lesion_removed_called_healthy": {net: Share},
        "lesion_called_tumour": {net: Share}}``, plus the ensemble with ``ensemble``.

    Raises:
        ValueError: a benchmark without per-case predictions, or networks on different folds.
    """
    per_arch: dict[str, dict[tuple[int, str], dict[str, Any]]] = {}
    for arch, bench in benches.items():
        cases = _fold_cases(bench)
        if not cases:
            raise ValueError(f"{arch}: the benchmark JSON has no per-case test predictions.")
        per_arch[arch] = {(c["fold"], c["subject_id"]): c for c in cases}
    keys = sorted(next(iter(per_arch.values())))
    for arch, rows in per_arch.items():
        if sorted(rows) != keys:
            raise ValueError(f"{arch}: its test parts differ from the other networks' folds.")
    labels = [per_arch[next(iter(per_arch))][k]["label"] for k in keys]
    probs = _with_ensemble(
        {a: np.array([rows[k]["probs"] for k in keys]) for a, rows in per_arch.items()}, ensemble
    )
    index = {k: i for i, k in enumerate(keys)}
    healthy = [i for i, lab in enumerate(labels) if lab == "healthy"]
    lesions = [i for i, lab in enumerate(labels) if lab != "healthy"]
    pairs = []  # (lesion case, its base brain's healthy case in the same test part)
    for i in lesions:
        fold, sid = keys[i]
        base = (fold, _group_of(sid, groups))
        if base in index and labels[index[base]] == "healthy":
            pairs.append((i, index[base]))
    out: dict[str, dict[str, Any]] = {
        "healthy_called_healthy": {},
        "lesion_removed_called_healthy": {},
        "lesion_called_tumour": {},
    }
    for net, p in probs.items():
        pred = p.argmax(1)
        out["healthy_called_healthy"][net] = Share(
            int((pred[healthy] == 0).sum()), len(healthy)
        ).to_dict()
        out["lesion_removed_called_healthy"][net] = Share(
            sum(int(pred[b] == 0) for _, b in pairs), len(pairs)
        ).to_dict()
        out["lesion_called_tumour"][net] = Share(
            int(np.isin(pred[lesions], TUMOUR).sum()), len(lesions)
        ).to_dict()
    return out


def real_scan_report(
    gliomas: Mapping[str, Any],
    cohort: Mapping[str, Any],
    notes: Mapping[str, str],
    baselines: Mapping[str, Mapping[str, Any]] | None = None,
) -> dict[str, Any]:
    """The ``real_scans.json`` document: both checks, each with what it measures.

    ``baselines`` (``{"gliomas": ..., "cohort_test_parts": ...}``, the same two checks for the
    baselines, without an ensemble) becomes a ``"baselines"`` section of its own, so the networks'
    tables and their ensemble are unchanged by it.
    """
    doc: dict[str, Any] = {
        "version": 1,
        "gliomas": {**gliomas, "what": notes.get("gliomas", "")},
        "cohort_test_parts": {**cohort, "what": notes.get("cohort", "")},
    }
    if baselines:
        doc["baselines"] = {
            **{k: dict(v) for k, v in baselines.items()},
            "what": notes.get("baselines", ""),
        }
    return doc
