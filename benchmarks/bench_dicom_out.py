"""The DICOM results' cost on a 240x240x155 series: headers read, objects built, files written.

A 240x240x155 MR series is written with the tests' writer (``tests/_dicom.py``) and loaded as the
command line loads it. With ``--weights`` (default ``weights/`` when it holds model cards) the
series is analysed once by the networks there, as ``predict`` analyses it (input checks and
all), and the DICOM results are built from that analysis (its report and maps); without, from
three random maps in [0, 1] on the stored grid (the cost does not depend on the values). Each
repeat times, in the same run, wall clock and this process's CPU time (``time.process_time``:
on a shared machine the CPU time is the steadier reading):

* ``load``: :func:`tumortrace.io.load_volume` of the series (what every analysis pays);
* ``source``: :func:`tumortrace.dicom_source.read_dicom_source` (the headers, read again);
* ``build``: :func:`tumortrace.dicom_out.build_dicom_results` (the SR and three maps);
* ``write``: :meth:`tumortrace.dicom_out.DicomResults.write`;
* ``first``: the first repeat's source + build + write, which also loads highdicom and the
  standard's tables it reads once per process.

``added`` = source + build + write, the time ``--dicom-out`` adds to an analysis;
``analysis`` = load + the networks' analysis (timed once, the first repeat's load), and the JSON
gives ``added`` over it and over the load alone. The machine's load averages are recorded at the
start and the end. Prints one line per repeat on stderr and the JSON document on stdout.

Usage::

    python benchmarks/bench_dicom_out.py --repeats 5 [--seg] [--weights DIR | --no-networks]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
for p in (ROOT, ROOT / "tests"):
    if str(p) not in sys.path:
        sys.path.insert(0, str(p))


def _timed(fn: Callable[[], Any]) -> tuple[Any, float, float]:
    """``fn()``, its wall seconds and its CPU seconds (this process, all threads)."""
    w, c = time.perf_counter(), time.process_time()
    out = fn()
    return out, time.perf_counter() - w, time.process_time() - c


def _random_inputs(shape: tuple[int, ...], rng: np.random.Generator):
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
    return report, {a: rng.random(shape, dtype=np.float32) for a in report["networks"]}


def main() -> int:
    from _dicom import write_dicom_series

    from tumortrace.dicom_out import build_dicom_results, maps_on_source
    from tumortrace.dicom_source import read_dicom_source
    from tumortrace.io import load_volume
    from tumortrace.runtime import machine_facts

    default_weights = ROOT / "weights"
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shape", type=int, nargs=3, default=(240, 240, 155))
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--seg", action="store_true", help="also build the Segmentations")
    parser.add_argument("--weights", type=Path, default=default_weights)
    parser.add_argument(
        "--no-networks", action="store_true", help="random maps, no analysis (load only)"
    )
    args = parser.parse_args()
    networks = not args.no_networks and any(args.weights.glob("*.json"))
    machine_start = machine_facts()
    rng = np.random.default_rng(0)
    rows = []
    analysis_row: dict[str, float] = {}
    with tempfile.TemporaryDirectory() as tmp:
        series = Path(tmp) / "series"
        write_dicom_series(rng.integers(0, 3000, args.shape), np.eye(4), series)
        report = maps = None
        for k in range(args.repeats):
            volume, load_w, load_c = _timed(lambda: load_volume(series))
            if report is None and networks:
                from tumortrace.infer import Predictor
                from tumortrace.standard import standardise

                predictor = Predictor.from_dir(args.weights)

                def analyse(predictor=predictor, volume=volume):
                    standard = standardise(volume) if predictor.settings.input_checks else None
                    return predictor.analyze(volume, standard=standard)

                analysis, net_w, net_c = _timed(analyse)
                report = analysis.to_dict(predictor.cards)
                maps = maps_on_source(volume, analysis.explanations)
                analysis_row = {
                    "networks_wall": net_w,
                    "networks_cpu": net_c,
                    "analysis_wall": load_w + net_w,
                    "analysis_cpu": load_c + net_c,
                }
            elif report is None:
                report, maps = _random_inputs(volume.original_shape, rng)
            source, src_w, src_c = _timed(lambda: read_dicom_source(series))
            results, build_w, build_c = _timed(
                lambda source=source, report=report, maps=maps: build_dicom_results(
                    source, report, maps, seg=args.seg
                )
            )
            out = Path(tmp) / f"out{k}"
            _, write_w, write_c = _timed(lambda results=results, out=out: results.write(out, "b"))
            row = {
                "load_wall": load_w,
                "load_cpu": load_c,
                "source_wall": src_w,
                "source_cpu": src_c,
                "build_wall": build_w,
                "build_cpu": build_c,
                "write_wall": write_w,
                "write_cpu": write_c,
            }
            row["added_wall"] = src_w + build_w + write_w
            row["added_cpu"] = src_c + build_c + write_c
            rows.append(row)
            print(
                f"repeat {k}: " + " ".join(f"{n} {v:.3f}" for n, v in row.items()) + " s",
                file=sys.stderr,
            )
    later = rows[1:] or rows
    median = {n: round(statistics.median(r[n] for r in later), 3) for n in rows[0]}
    doc: dict[str, Any] = {
        "shape": list(args.shape),
        "seg": args.seg,
        "repeats": args.repeats,
        "maps": "the networks' analysis" if networks else "random",
        "first_added_s": {
            "wall": round(rows[0]["added_wall"], 3),
            "cpu": round(rows[0]["added_cpu"], 3),
        },
        "median_s": median,
        "added_over_load": {
            t: round(median[f"added_{t}"] / median[f"load_{t}"], 2) for t in ("wall", "cpu")
        },
    }
    if analysis_row:
        doc["analysis_s"] = {n: round(v, 3) for n, v in analysis_row.items()}
        doc["added_over_analysis"] = {
            t: round(median[f"added_{t}"] / analysis_row[f"analysis_{t}"], 3)
            for t in ("wall", "cpu")
        }
    doc["machine_start"] = machine_start
    doc["machine_end"] = machine_facts()
    print(json.dumps(doc, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
