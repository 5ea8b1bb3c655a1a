"""Copies the app's bundled samples from the real-brain cohort: one real IXI brain as it is
(``samples/healthy.nii.gz``), and the same brain with its synthetic LGG and HGG lesions
(``samples/{lgg,hgg}.nii.gz``) with their true lesion masks (``samples/{lgg,hgg}_lesion.nii.gz``:
1 tumour, 2 oedema), byte for byte as ``scripts/build_cohort.py`` wrote them.

The brain is chosen by a rule fixed before any network saw it: the first base brain (by subject ID)
of fold 0's test part that the cohort holds in all three versions. ``samples/samples.json``
records the rule, the subject, each file's source, SHA-256 and lesion parameters, and the licence
(IXI: CC BY-SA 3.0).

Usage::

    .venv/bin/python scripts/make_samples.py --cohort /work/runs/cohort \
        --splits weights/benchmarks/mc3.splits.json
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tumortrace.cohort import LICENCE  # noqa: E402
from tumortrace.config import CLASSES  # noqa: E402
from tumortrace.files import atomic_write_json, sha256_file  # noqa: E402
from tumortrace.folds import load_splits  # noqa: E402
from tumortrace.manifest import read_manifest  # noqa: E402

RULE = (
    "the first base brain (by subject ID) of fold 0's test part that the cohort holds as "
    "healthy, LGG and HGG; fixed before any network was trained or run on it"
)
MAX_BYTES = 1_500_000


def choose(cohort: Path, splits: Path) -> str:
    """The base brain :data:`RULE` picks."""
    cases = read_manifest(cohort / "manifest.csv", check_files=False)
    test = set(load_splits(splits, cases)[0].test)
    bases = sorted({c.group_id for c in cases if c.subject_id in test})
    return next(b for b in bases if {b, f"{b}+lgg", f"{b}+hgg"} <= test)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cohort", type=Path, required=True, help="build_cohort.py's folder")
    parser.add_argument("--splits", type=Path, required=True, help="the shipped networks' splits")
    parser.add_argument("--out", type=Path, default=ROOT / "samples")
    args = parser.parse_args(argv)
    base = choose(args.cohort, args.splits)
    by_id = {c.subject_id: c for c in read_manifest(args.cohort / "manifest.csv")}
    args.out.mkdir(parents=True, exist_ok=True)
    record: dict = {"rule": RULE, "subject": base, "licence": LICENCE, "files": {}}
    for label in CLASSES:
        case = by_id[base if label == "healthy" else f"{base}+{label}"]
        pairs = [(case.path, args.out / f"{label}.nii.gz")]
        if label != "healthy":
            mask = case.path.with_name(case.path.name.replace(".nii.gz", "_lesion.nii.gz"))
            pairs.append((mask, args.out / f"{label}_lesion.nii.gz"))
            lesion = json.loads((args.cohort / "lesions" / f"{case.subject_id}.json").read_text())
            record.setdefault("lesions", {})[label] = lesion
        for src, dst in pairs:
            if src.stat().st_size > MAX_BYTES:
                raise SystemExit(f"{src}: over the {MAX_BYTES}-byte cap for a bundled sample.")
            shutil.copyfile(src, dst)
            record["files"][dst.name] = {"from": src.name, "sha256": sha256_file(dst)}
            print(f"wrote {dst} ({dst.stat().st_size / 1e6:.2f} MB)")
    atomic_write_json(args.out / "samples.json", record, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
