"""Runs the standard-space pipeline on a set of scans: QC table, registered-brain montage, Dice.

For every input (files, folders searched for ``*.nii``/``*.nii.gz``, or a manifest CSV with a
``path`` or ``local_path`` column), it loads the scan, extracts the brain (deepbet), registers it to
MNI152 and runs the input checks (:func:`tumortrace.standard.standardise`); results are cached by
file hash under ``--cache`` so a rerun resumes where it stopped. It writes:

- ``--csv``: one row per scan: the QC status, each check's value and severity, the registration
  stage and scales, the seconds per step, or the error;
- ``--montage``: the registered brain of every scan, mid-slices in three planes on the template's
  2 mm grid, with the template brain outline in red, for a person to look at.

Usage::

    .venv/bin/python scripts/standard_qc.py ../shared/real-data/manifest.csv \
        ../shared/real-samples --csv runs/qc/real.csv --montage runs/qc/real.png
"""

from __future__ import annotations

import argparse
import csv
import sys
import time
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw
from scipy import ndimage

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tumortrace.errors import TumorTraceError  # noqa: E402
from tumortrace.files import sha256_file  # noqa: E402
from tumortrace.io import load_volume  # noqa: E402
from tumortrace.standard import load_cached, save_cached, standardise, warp  # noqa: E402
from tumortrace.template import load_template  # noqa: E402


def inputs(args: list[str]) -> list[Path]:
    """Scan paths from files, folders and manifest CSVs, in the order given."""
    out: list[Path] = []
    for a in args:
        p = Path(a)
        if p.suffix == ".csv":
            with p.open() as f:
                for row in csv.DictReader(f):
                    rel = row.get("local_path") or row.get("path")
                    out.append((p.parent / rel).resolve())
        elif p.is_dir():
            out += sorted(q for q in p.rglob("*.nii*") if "_seg" not in q.name)
        else:
            out.append(p)
    return list(dict.fromkeys(out))


def tile(volume, std) -> np.ndarray:
    """Axial, coronal and sagittal mid-slices of the registered brain, uint8 RGB ``(H, W, 3)``."""
    tpl = load_template()
    aff = tpl.affine @ np.diag([2.0, 2.0, 2.0, 1.0])
    brain = tpl.brain[::2, ::2, ::2]
    img = warp(
        np.where(std.brain, volume.data, 0),
        volume.affine,
        std.registration.template_to_native,
        aff,
        brain.shape,
    )
    hi = np.percentile(img[brain], 99) if brain.any() else 1.0
    img = np.clip(img / max(hi, 1e-6), 0, 1)
    edge = brain ^ ndimage.binary_erosion(brain)
    cx, cy, cz = (s // 2 for s in brain.shape)
    cz = round((5.0 - aff[2, 3]) / 2.0)  # axial at z = +5 mm (mid-ventricles)
    views = [
        (img[:, :, cz].T[::-1], edge[:, :, cz].T[::-1]),
        (img[:, cy, :].T[::-1], edge[:, cy, :].T[::-1]),
        (img[cx, :, :].T[::-1], edge[cx, :, :].T[::-1]),
    ]
    h = max(v[0].shape[0] for v in views)
    cols = []
    for g, e in views:
        rgb = np.repeat((g * 255).astype(np.uint8)[..., None], 3, axis=2)
        rgb[e] = (255, 0, 0)
        pad = np.zeros((h, g.shape[1], 3), np.uint8)
        pad[: g.shape[0]] = rgb
        cols.append(pad)
    return np.concatenate(cols, axis=1)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("inputs", nargs="+")
    ap.add_argument("--csv", type=Path, required=True)
    ap.add_argument("--montage", type=Path)
    ap.add_argument("--cache", type=Path, default=ROOT / "data" / "cache" / "standard")
    ap.add_argument("--columns", type=int, default=6)
    args = ap.parse_args(argv)
    paths = inputs(args.inputs)
    args.csv.parent.mkdir(parents=True, exist_ok=True)
    rows, tiles = [], []
    t_all = time.perf_counter()
    for i, path in enumerate(paths, 1):
        row: dict[str, object] = {"path": str(path)}
        try:
            t0 = time.perf_counter()
            volume = load_volume(path)
            sha = sha256_file(path)
            std = load_cached(args.cache, sha, volume)
            cached = std is not None
            if std is None:
                std = standardise(volume)
                save_cached(args.cache, sha, std)
            row.update(
                status=std.qc.status,
                cached=cached,
                shape="x".join(map(str, volume.data.shape)),
                spacing="x".join(f"{s:.3g}" for s in volume.spacing),
                stage=std.registration.stage,
                scales=" ".join(f"{s:.3f}" for s in std.registration.scales),
                **{f"seconds_{k}": round(v, 2) for k, v in std.seconds.items()},
                seconds_total=round(time.perf_counter() - t0, 2),
            )
            for c in std.qc.checks:
                row[c.name] = None if not np.isfinite(c.value) else round(float(c.value), 4)
                row[f"{c.name}_severity"] = c.severity
            row["warnings"] = " | ".join(std.qc.warnings)
            if args.montage is not None and std.registration.ok:
                tiles.append((path.name, tile(volume, std)))
        except TumorTraceError as err:
            row.update(status="error", error=str(err))
        rows.append(row)
        print(
            f"[{i}/{len(paths)}] {path.name}: {row.get('status')} "
            f"dice={row.get('registration')} {row.get('seconds_total', '')}s",
            flush=True,
        )
    fields = list(dict.fromkeys(k for r in rows for k in r))
    with args.csv.open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=fields)
        w.writeheader()
        w.writerows(rows)
    if args.montage is not None and tiles:
        th, tw = max(t.shape[0] for _, t in tiles) + 14, max(t.shape[1] for _, t in tiles)
        ncol = args.columns
        nrow = (len(tiles) + ncol - 1) // ncol
        sheet = Image.new("RGB", (ncol * tw, nrow * th))
        draw = ImageDraw.Draw(sheet)
        for k, (name, t) in enumerate(tiles):
            x, y = (k % ncol) * tw, (k // ncol) * th
            sheet.paste(Image.fromarray(t), (x, y + 14))
            draw.text((x + 2, y + 1), name[:40], fill=(255, 255, 0))
        args.montage.parent.mkdir(parents=True, exist_ok=True)
        sheet.save(args.montage)
    n_err = sum(r.get("status") == "error" for r in rows)
    print(f"{len(rows)} scans, {n_err} errors, {time.perf_counter() - t_all:.0f} s; {args.csv}")
    return 1 if n_err else 0


if __name__ == "__main__":
    raise SystemExit(main())
