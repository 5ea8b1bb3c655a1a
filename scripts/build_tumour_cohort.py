"""Builds the real-tumour cohort: real gliomas with masks, real tumours carved into real healthy
brains, tumour brains made healthy, other sites' healthy brains and synthetic lesions.

Every real scan of a ``shared/real-data``-style folder goes through the standard-space pipeline
(cached under ``--cache``, so a rerun resumes), then :func:`tumortrace.tumour_cohort.
build_tumour_cohort` writes the made cases, the masks, ``manifest.csv`` (with ``group``, ``kind``,
``patient``, ``donor`` and ``mask``), the card ``cohort.json`` and ``montage.png``: an axial slice
through 16 carved and 8 healthy-made cases beside the scan they were made from, with the lesion
(red) or the filled region (cyan) outlined, for a person to look at.

Usage::

    .venv/bin/python scripts/build_tumour_cohort.py ../shared/real-data \
        --out /work/runs/tumour_cohort --cache /work/runs/cache/standard
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections import Counter
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw
from scipy import ndimage

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tumortrace.errors import TumorTraceError  # noqa: E402
from tumortrace.io import load_volume  # noqa: E402
from tumortrace.manifest import Case  # noqa: E402
from tumortrace.tumour_cohort import TumourCohortSpec, build_tumour_cohort  # noqa: E402

TILE = 160


def _tile(data: np.ndarray, outline: np.ndarray | None, z: int, colour: tuple) -> np.ndarray:
    """``(TILE, TILE, 3)`` uint8 axial slice ``z`` with an outline."""
    sl = data[:, :, z]
    hi = float(np.percentile(sl, 99.5)) or 1.0
    grey = (np.clip(sl / hi, 0, 1) * 255).astype(np.uint8).T[::-1]
    rgb = np.repeat(grey[..., None], 3, -1)
    if outline is not None:
        m = outline[:, :, z].T[::-1] > 0
        edge = m & ~ndimage.binary_erosion(m)
        rgb[edge] = colour
    img = Image.fromarray(rgb).resize((TILE, TILE), Image.NEAREST)
    return np.asarray(img)


def _label(tile: np.ndarray, text: str) -> np.ndarray:
    img = Image.fromarray(tile)
    ImageDraw.Draw(img).text((3, 2), text[:28], fill=(255, 255, 0))
    return np.asarray(img)


def montage(cases: list[Case], real_data: Path, out: Path, n_carved: int = 16, n_made: int = 8):
    """Pairs (source scan | made case) of carved and healthy-made cases, 4 pairs a row."""
    by_id = {c.subject_id: c for c in cases}
    rng = np.random.default_rng(0)
    carved = [c for c in cases if c.kind == "carved"]
    made = [c for c in cases if c.kind == "healthy-made"]
    pick = [carved[i] for i in sorted(rng.choice(len(carved), min(n_carved, len(carved)), False))]
    pick += [made[i] for i in sorted(rng.choice(len(made), min(n_made, len(made)), False))]
    pairs = []
    for c in pick:
        vol = load_volume(c.path).data
        if c.kind == "carved":
            base = load_volume(by_id[c.patient].path).data
            mask = load_volume(c.mask).data
            colour = (255, 40, 40)
            text = c.subject_id.split("+carve-")[1]
        else:
            src = by_id[c.subject_id.removesuffix("+healthy-made")]
            base = load_volume(src.path).data
            mask = load_volume(src.mask).data
            colour = (40, 220, 255)
            text = f"{src.subject_id} made healthy"
        z = int(np.argwhere(mask > 0)[:, 2].mean())
        pairs.append(
            np.concatenate(
                [_label(_tile(base, None, z, colour), text), _tile(vol, mask, z, colour)], 1
            )
        )
    rows = [np.concatenate(pairs[i : i + 4], 1) for i in range(0, len(pairs) - 3, 4)]
    if rows:
        Image.fromarray(np.concatenate(rows, 0)).save(out)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("real_data", type=Path, help="a shared/real-data-style folder")
    ap.add_argument("--out", type=Path, required=True, help="cohort folder")
    ap.add_argument("--cache", type=Path, required=True, help="standard-space cache folder")
    ap.add_argument("--seed", type=int, default=TumourCohortSpec.seed)
    for flag in ("carved", "healthy-made", "synthetic"):
        ap.add_argument(f"--no-{flag}", action="store_true", help=f"make no {flag} cases")
    args = ap.parse_args(argv)
    spec = TumourCohortSpec(
        seed=args.seed,
        carved=not args.no_carved,
        healthy_made=not args.no_healthy_made,
        synthetic=not args.no_synthetic,
    )
    t0 = time.perf_counter()
    try:
        cases = build_tumour_cohort(args.real_data, args.out, args.cache, spec)
        montage(cases, args.real_data, args.out / "montage.png")
    except TumorTraceError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    card = json.loads((args.out / "cohort.json").read_text())
    print(card["description"])
    print(f"{'label':8} {'source':11} {'kind':13} n")
    for row in card["counts"]:
        print(f"{row['label']:8} {row['source']:11} {row['kind']:13} {row['n']}")
    print("by kind:", dict(Counter(c.kind for c in cases)))
    print("mask check (template ml / volume scale vs native):", card["mask_check"])
    print(
        f"{len(cases)} cases in {card['groups']} groups, {time.perf_counter() - t0:.0f} s: "
        f"{args.out / 'manifest.csv'}"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
