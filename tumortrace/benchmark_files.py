"""The one reader of the stored benchmark folder (``weights/benchmarks/``).

Used by the Benchmarks page and ``scripts/results_table.py``, so both see the same records in the
same order. The folder holds ``<arch>.json`` (cross-validation, written by
:func:`tumortrace.cv_output.write_outputs`; ``<arch>.splits.json`` beside it is the folds, not a
benchmark), ``heldout/<arch>.json`` (``python -m tumortrace evaluate --format json`` on a cohort
the networks never saw), ``inference.json``, ``explanations.json``, ``published.json`` and
``real_scans.json`` (``scripts/real_scan_check.py``). The baselines' benchmarks sit beside the
networks' (``<method>.json``, the same layout).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tumortrace.networks import in_display_order

OTHER_FILES: frozenset[str] = frozenset({"inference", "published", "explanations", "real_scans"})
"""Stems of the files in the folder that are not one network's benchmark."""

FOCUS_ARCH, FOCUS_TARGET = "ensemble", "pooled"
FOCUS_METHOD, OPENING_METHOD = "focus", "opening"
"""How ``explanations.json`` names the rows of the networks' pooled evidence for a tumour
(:mod:`tumortrace.focus`) and of where the viewer opens: network, target kind and methods."""


@dataclass(frozen=True)
class BenchmarkFolder:
    """Everything stored in one benchmark folder; a file that is absent is empty or None.

    Attributes:
        benches: ``{arch: cross-validation record}`` in display order.
        broken: names of ``<arch>.json`` files that are not readable benchmark records.
        heldout: ``{arch: evaluate report}`` for the networks in ``benches``.
        inference, explanations, published, real_scans: the other files' documents.
    """

    benches: dict[str, dict[str, Any]] = field(default_factory=dict)
    broken: list[str] = field(default_factory=list)
    heldout: dict[str, dict[str, Any]] = field(default_factory=dict)
    inference: dict[str, Any] | None = None
    explanations: dict[str, Any] | None = None
    published: dict[str, Any] | None = None
    real_scans: dict[str, Any] | None = None


def read_json(path: Path) -> dict[str, Any] | None:
    """A JSON object from ``path``, or None when the file is absent, unreadable or not an object."""
    try:
        obj = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return obj if isinstance(obj, dict) else None


def is_benchmark_file(path: Path) -> bool:
    """True for ``<arch>.json``; False for the folds (``*.splits.json``) and :data:`OTHER_FILES`."""
    return path.suffix == ".json" and path.stem not in OTHER_FILES and ".splits" not in path.stem


def read_benchmarks(folder: Path) -> tuple[dict[str, dict[str, Any]], list[str]]:
    """``({arch: record}, broken)``: every benchmark file with a ``folds`` list, in display order.

    The network is the record's ``arch`` (else the file's stem); ``broken`` names the files that do
    not parse or hold no ``folds`` list.
    """
    found: dict[str, dict[str, Any]] = {}
    broken: list[str] = []
    paths = sorted(folder.glob("*.json")) if folder.is_dir() else []
    for path in filter(is_benchmark_file, paths):
        record = read_json(path)
        if record is None or not isinstance(record.get("folds"), list):
            broken.append(path.name)
            continue
        found[str(record.get("arch", path.stem))] = record
    return {a: found[a] for a in in_display_order(found)}, broken


def read_heldout(folder: Path, archs) -> dict[str, dict[str, Any]]:
    """``{arch: evaluate report}`` of the readable ``<folder>/heldout/<arch>.json`` files."""
    reports = {a: read_json(folder / "heldout" / f"{a}.json") for a in archs}
    return {a: r for a, r in reports.items() if r is not None}


def heldout_metrics(report: dict[str, Any]) -> dict[str, Any]:
    """The metrics of an ``evaluate --format json`` report (top level or under ``metrics``)."""
    return report.get("metrics", report)


def read_folder(folder: Path) -> BenchmarkFolder:
    """Every file of a benchmark folder (see the module docstring)."""
    folder = Path(folder)
    benches, broken = read_benchmarks(folder)
    return BenchmarkFolder(
        benches=benches,
        broken=broken,
        heldout=read_heldout(folder, benches),
        inference=read_json(folder / "inference.json"),
        explanations=read_json(folder / "explanations.json"),
        published=read_json(folder / "published.json"),
        real_scans=read_json(folder / "real_scans.json"),
    )


def folder_stamp(folder: Path) -> tuple[tuple[str, int, int], ...]:
    """Names, sizes and mtimes of the folder's JSON files: keys a cache of :func:`read_folder`."""
    folder = Path(folder)
    paths = [*folder.glob("*.json"), *folder.glob("heldout/*.json")] if folder.is_dir() else []
    return tuple(
        (str(p.relative_to(folder)), p.stat().st_size, p.stat().st_mtime_ns) for p in sorted(paths)
    )
