"""Regenerates the app's bundled samples, ``samples/{healthy,lgg,hgg}.nii.gz``, and the true
lesion masks of the tumour samples, ``samples/{lgg,hgg}_lesion.nii.gz`` (uint8, same grid), which
the Analyze page can outline so a user can judge the maps.

Each is a small synthetic phantom from :func:`tumortrace.synthetic.make_phantom` (fixed seed),
stored as int16 (as scanners store T1 volumes) and gzipped with a zero timestamp, so re-running
this script on the same kind of CPU reproduces identical files; on another CPU float rounding may
move a handful of voxels by one unit. Each file must stay under 1.5 MB.

Usage::

    .venv/bin/python scripts/make_samples.py [--out samples]
"""

from __future__ import annotations

import argparse
import gzip
import sys
from pathlib import Path

import nibabel as nib
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tumortrace.config import CLASSES  # noqa: E402
from tumortrace.synthetic import make_phantom  # noqa: E402

SEEDS: dict[str, int] = {"healthy": 1101, "lgg": 1102, "hgg": 1103}
SIZE = "small"
MAX_BYTES = 1_500_000


def sample_bytes(label: str) -> bytes:
    """The .nii.gz bytes of one sample (deterministic: fixed seed, int16, gzip mtime 0)."""
    ph = make_phantom(label, seed=SEEDS[label], size=SIZE)
    data = np.clip(np.rint(ph.data), np.iinfo(np.int16).min, np.iinfo(np.int16).max)
    img = nib.Nifti1Image(data.astype(np.int16), ph.affine)
    img.header.set_xyzt_units("mm", "sec")
    img.header["descrip"] = f"TumorTrace synthetic {label} seed {SEEDS[label]}".encode()
    return gzip.compress(img.to_bytes(), compresslevel=9, mtime=0)


def lesion_bytes(label: str) -> bytes:
    """The .nii.gz bytes of a sample's lesion mask (uint8, the sample's grid and affine)."""
    ph = make_phantom(label, seed=SEEDS[label], size=SIZE)
    img = nib.Nifti1Image(ph.lesion.astype(np.uint8), ph.affine)
    img.header.set_xyzt_units("mm", "sec")
    img.header["descrip"] = f"TumorTrace synthetic {label} seed {SEEDS[label]} lesion".encode()
    return gzip.compress(img.to_bytes(), compresslevel=9, mtime=0)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=ROOT / "samples")
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    for label in CLASSES:
        blob = sample_bytes(label)
        if len(blob) > MAX_BYTES:
            raise SystemExit(f"{label}: {len(blob)} bytes exceeds the {MAX_BYTES} byte cap.")
        path = args.out / f"{label}.nii.gz"
        path.write_bytes(blob)
        print(f"wrote {path} ({len(blob) / 1e6:.2f} MB)")
        if label != "healthy":
            mask = args.out / f"{label}_lesion.nii.gz"
            mask.write_bytes(lesion_bytes(label))
            print(f"wrote {mask}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
