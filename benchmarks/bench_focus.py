"""The focus's cost: an analysis with and without it (``InferenceSettings.focus``), same run.

The focus (:mod:`tumortrace.focus`, where the app's viewer opens) adds, per network, the maps of
the tumour classes it did not predict (one short backward each, from the same forward pass), and
once per analysis their pooling, smoothing and mapping onto the volume grid. Two Predictors of the
same weights, one with the focus and one without, analyse each volume interleaved (off, on, off,
...) so both see the same machine load. The standard space (brain extraction and registration)
is computed once per volume and given to both: it is the same work with or without the focus,
and it is reported beside them, so the ratio on the whole wait can be read off too. Prints one
line per volume on stderr and the JSON document on stdout.

Usage::

    python benchmarks/bench_focus.py                                 # the bundled HGG sample
    python benchmarks/bench_focus.py --volumes a.nii.gz b.nii.gz --repeats 7
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from tumortrace.infer import InferenceSettings, Predictor  # noqa: E402
from tumortrace.io import load_volume  # noqa: E402
from tumortrace.runtime import machine_facts  # noqa: E402
from tumortrace.standard import standardise  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--weights", default=str(ROOT / "weights"))
    parser.add_argument("--volumes", nargs="+", default=[str(ROOT / "samples" / "hgg.nii.gz")])
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--warmup", type=int, default=2)
    args = parser.parse_args(argv)

    predictors = {
        on: Predictor.from_dir(args.weights, settings=InferenceSettings(focus=on))
        for on in (False, True)
    }
    results = []
    for path in args.volumes:
        volume = load_volume(path)
        start = time.perf_counter()
        std = standardise(volume)
        std_seconds = time.perf_counter() - start
        times: dict[bool, list[float]] = {False: [], True: []}
        for k in range(args.warmup + args.repeats):
            for on, predictor in predictors.items():
                start = time.perf_counter()
                analysis = predictor.analyze(volume, standard=std)
                if k >= args.warmup:
                    times[on].append(time.perf_counter() - start)
                assert (analysis.focus is not None) == on
        off, on = statistics.median(times[False]), statistics.median(times[True])
        row = {
            "volume": Path(path).name,
            "shape": list(volume.data.shape),
            "standard_space_seconds": round(std_seconds, 3),
            "analysis_without_focus": round(off, 4),
            "analysis_with_focus": round(on, 4),
            "ratio": round(on / off, 3),
            "ratio_with_standard_space": round((on + std_seconds) / (off + std_seconds), 3),
        }
        results.append(row)
        print(
            f"{row['volume']}: networks and maps {off:.3f} s -> {on:.3f} s with the focus "
            f"({row['ratio']:.2f}x); with brain extraction and registration ({std_seconds:.1f} s) "
            f"{row['ratio_with_standard_space']:.2f}x",
            file=sys.stderr,
        )
    doc = {
        "repeats": args.repeats,
        "warmup": args.warmup,
        "weights": args.weights,
        "machine": machine_facts(),
        "results": results,
    }
    print(json.dumps(doc, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
