"""The real-scan check of the shipped weights: ``weights/benchmarks/real_scans.json``.

* Real gliomas: every non-healthy row of a data manifest (``shared/real-data/manifest.csv``:
  ``local_path``, ``label``, ``subject``), scored by each shipped network and the ensemble.
* Real-brain cohort: from the benchmark JSONs' per-case test predictions (each fold's own network),
  the share of real healthy brains called healthy, and of lesion cases whose own brain without the
  lesion is called healthy.

Usage::

    .venv/bin/python scripts/real_scan_check.py --weights weights \
        --tumours ../shared/real-data/manifest.csv --cache /work/runs/cache
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tumortrace.files import atomic_write_json  # noqa: E402
from tumortrace.manifest import Case  # noqa: E402
from tumortrace.networks import network_names  # noqa: E402
from tumortrace.real_check import cohort_calls, glioma_calls, real_scan_report  # noqa: E402

NOTES = {
    "gliomas": (
        "Real glioma scans never seen in training (BraTS 2021/2023 and TCGA-GBM, T1 post-contrast; "
        "most publish no grade): the share the shipped network calls LGG or HGG. The training "
        "brains are non-contrast T1, so part of this may be the contrast agent, not the tumour."
    ),
    "cohort": (
        "Real IXI brains in each fold's test part, scored by that fold's network: the share of "
        "the real healthy brains called healthy, and of the lesion cases (synthetic lesions in "
        "real brains) whose own brain without the lesion is called healthy."
    ),
}


def tumour_scans(manifest: Path) -> list[Case]:
    """Every non-healthy row of a data manifest, as cases (the label is a placeholder)."""
    with manifest.open(newline="") as f:
        rows = [r for r in csv.DictReader(f) if r["label"] != "healthy"]
    return [
        Case(r["subject"], (manifest.parent / r["local_path"]).resolve(), "hgg", r["label"])
        for r in rows
    ]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--weights", type=Path, default=ROOT / "weights")
    ap.add_argument("--tumours", type=Path, required=True, help="data manifest with real gliomas")
    ap.add_argument("--cache", type=Path, default=None, help="tensor / standard-space cache")
    ap.add_argument("--out", type=Path, default=None, help="default <weights>/benchmarks/...")
    args = ap.parse_args(argv)
    archs = [n for n in network_names() if (args.weights / f"{n}.json").is_file()]
    cards = [args.weights / f"{a}.json" for a in archs]
    gliomas = glioma_calls(cards, tumour_scans(args.tumours), cache_dir=args.cache)
    benches = {
        a: json.loads((args.weights / "benchmarks" / f"{a}.json").read_text()) for a in archs
    }
    cohort = cohort_calls(benches)
    report = real_scan_report(gliomas, cohort, NOTES)
    out = args.out or args.weights / "benchmarks" / "real_scans.json"
    atomic_write_json(out, report, indent=1)
    for key, table in (("gliomas called tumour", gliomas["called_tumour"]), *cohort.items()):
        cells = ", ".join(f"{k} {v['n']}/{v['total']}" for k, v in table.items())
        print(f"{key}: {cells}")
    print(out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
