"""Builds the real-brain demo cohort: real healthy scans, and the same scans with synthetic lesions.

Every healthy IXI scan of a data manifest (``shared/real-data/manifest.csv``) goes through the
standard-space pipeline (cached under ``--cache``, so a rerun resumes), then gets an HGG lesion
and, for the seed paper's share of brains (74:260), an LGG lesion
(:func:`tumortrace.cohort.build_cohort`). It writes ``<out>/manifest.csv`` (with the ``group``
column: the base brain), the lesion cases and masks under ``<out>/volumes/``, their parameters
under ``<out>/lesions/``, and a montage of the first cases for a person to look at.

Usage::

    .venv/bin/python scripts/build_cohort.py ../shared/real-data/manifest.csv \
        --out /work/runs/cohort --cache /work/runs/cache/standard
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tumortrace.cases import class_counts  # noqa: E402
from tumortrace.cohort import CohortSpec, build_cohort, read_bases  # noqa: E402
from tumortrace.errors import TumorTraceError  # noqa: E402
from tumortrace.io import load_volume  # noqa: E402


def montage(cases, path: Path, n: int = 6) -> None:
    """Axial slice through each of the first ``n`` lesions, beside its base brain."""
    rows = []
    by_id = {c.subject_id: c for c in cases}
    lesioned = [c for c in cases if c.label != "healthy"][:n]
    for case in lesioned:
        base = load_volume(by_id[case.group_id].path).data
        data = load_volume(case.path).data
        mask = load_volume(case.path.with_name(case.path.name.replace(".nii.gz", "_lesion.nii.gz")))
        z = int(np.argwhere(mask.data > 0)[:, 2].mean())
        hi = float(np.percentile(base, 99.5)) or 1.0
        tiles = []
        for a in (base[:, :, z], data[:, :, z]):
            tiles.append((np.clip(a / hi, 0, 1) * 255).astype(np.uint8).T[::-1])
        rows.append(np.concatenate(tiles, axis=1))
    if rows:
        w = max(r.shape[1] for r in rows)
        rows = [np.pad(r, ((0, 0), (0, w - r.shape[1]))) for r in rows]
        Image.fromarray(np.concatenate(rows, axis=0)).save(path)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("manifest", type=Path, help="data manifest (local_path,label,subject,...)")
    ap.add_argument("--out", type=Path, required=True, help="cohort folder")
    ap.add_argument("--cache", type=Path, required=True, help="standard-space cache folder")
    ap.add_argument("--seed", type=int, default=CohortSpec.seed)
    ap.add_argument("--limit", type=int, default=None, help="first N bases only (smoke runs)")
    args = ap.parse_args(argv)
    t0 = time.perf_counter()
    try:
        bases = read_bases(args.manifest)[: args.limit]
        cases = build_cohort(bases, args.out, args.cache, CohortSpec(seed=args.seed))
        montage(cases, args.out / "montage.png")
    except TumorTraceError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    print(
        f"{len(cases)} cases {class_counts(cases)} from {len(bases)} brains in "
        f"{time.perf_counter() - t0:.0f} s: {args.out / 'manifest.csv'}"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
