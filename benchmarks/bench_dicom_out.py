"""The DICOM results' cost on a 240x240x155 series: headers read, objects built, files written.

A 240x240x155 MR series is written with the tests' writer (``tests/_dicom.py``), loaded as the
command line loads it, and given three maps (one per network, random values in [0, 1] on the
stored grid: the cost does not depend on the values). Each repeat times, in the same run:

* ``load``: :func:`tumortrace.io.load_volume` of the series (what every analysis pays);
* ``source``: :func:`tumortrace.dicom_source.read_dicom_source` (the headers, read again);
* ``build``: :func:`tumortrace.dicom_out.build_dicom_results` (the SR and three maps);
* ``write``: :meth:`tumortrace.dicom_out.DicomResults.write`;
* ``first``: the first repeat's source + build + write, which also loads highdicom and the
  standard's tables it reads once per process.

``added`` = source + build + write, the time ``--dicom-out`` adds to an analysis. Prints one line
per repeat on stderr and the JSON document on stdout.

Usage::

    python benchmarks/bench_dicom_out.py --repeats 5 [--seg]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
for p in (ROOT, ROOT / "tests"):
    if str(p) not in sys.path:
        sys.path.insert(0, str(p))


def main() -> int:
    from _dicom import write_dicom_series

    from tumortrace.dicom_out import build_dicom_results
    from tumortrace.dicom_source import read_dicom_source
    from tumortrace.io import load_volume
    from tumortrace.runtime import machine_facts

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shape", type=int, nargs=3, default=(240, 240, 155))
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--seg", action="store_true", help="also build the Segmentations")
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    probs = {"healthy": 0.2, "lgg": 0.3, "hgg": 0.5}
    net = {"label": "hgg", "probs": probs, "weights": {"weights_sha256": "0" * 64, "date": "x"}}
    report = {
        "label": "hgg",
        "verdict": "hgg",
        "probs": probs,
        "agree": True,
        "qc": None,
        "networks": {a: net for a in ("r2plus1d", "mc3", "r3d")},
    }
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        series = Path(tmp) / "series"
        write_dicom_series(rng.integers(0, 3000, args.shape), np.eye(4), series)
        for k in range(args.repeats):
            t0 = time.perf_counter()
            volume = load_volume(series)
            t1 = time.perf_counter()
            source = read_dicom_source(series)
            t2 = time.perf_counter()
            maps = {
                a: rng.random(volume.original_shape, dtype=np.float32) for a in report["networks"]
            }
            t3 = time.perf_counter()
            results = build_dicom_results(source, report, maps, seg=args.seg)
            t4 = time.perf_counter()
            results.write(Path(tmp) / f"out{k}", "bench")
            t5 = time.perf_counter()
            row = {"load": t1 - t0, "source": t2 - t1, "build": t4 - t3, "write": t5 - t4}
            row["added"] = row["source"] + row["build"] + row["write"]
            rows.append(row)
            print(" ".join(f"{n} {v:.3f} s" for n, v in row.items()), file=sys.stderr)
    later = rows[1:] or rows
    doc = {
        "shape": list(args.shape),
        "seg": args.seg,
        "repeats": args.repeats,
        "first_added_s": round(rows[0]["added"], 3),
        "median_s": {n: round(statistics.median(r[n] for r in later), 3) for n in rows[0]},
        "machine": machine_facts(),
    }
    doc["added_over_load"] = round(doc["median_s"]["added"] / doc["median_s"]["load"], 2)
    print(json.dumps(doc, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
