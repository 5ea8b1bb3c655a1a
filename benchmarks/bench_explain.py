"""Explanation cost: the default map method against the legacy Grad-CAM, in the same run.

For each input volume, :meth:`tumortrace.infer.Predictor.analyze` runs with the legacy method
(``gradcam-l4``) and with the default one, interleaved (legacy, default, legacy, ...) so that both
see the same machine load; after ``--warmup`` rounds, the medians of ``--repeats`` rounds are
reported: the whole analysis (preprocessing included, what a user waits for) and the networks'
part alone (forward, backward, map, mask, back to the volume grid; the sum of
``Prediction.seconds``), with the ratio default / legacy. Acceptance (issue 16): the whole
analysis within 1.2x.

Usage::

    python benchmarks/bench_explain.py                               # the bundled HGG sample
    python benchmarks/bench_explain.py --volumes a.nii.gz b.nii.gz --repeats 5
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

from tumortrace.explanation import DEFAULT_CAM_METHOD, LEGACY_CAM_METHOD  # noqa: E402
from tumortrace.infer import InferenceSettings, Predictor  # noqa: E402
from tumortrace.io import load_volume  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--weights", default=str(ROOT / "weights"))
    parser.add_argument("--volumes", nargs="+", default=[str(ROOT / "samples" / "hgg.nii.gz")])
    parser.add_argument("--method", default=DEFAULT_CAM_METHOD, help="the method to compare")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=1)
    args = parser.parse_args(argv)

    predictor = Predictor.from_dir(args.weights, settings=InferenceSettings(input_checks=False))
    methods = (LEGACY_CAM_METHOD, args.method)
    results = []
    for path in args.volumes:
        volume = load_volume(path)
        whole: dict[str, list[float]] = {m: [] for m in methods}
        nets: dict[str, list[float]] = {m: [] for m in methods}
        for k in range(args.warmup + args.repeats):
            for method in methods:
                start = time.perf_counter()
                analysis = predictor.analyze(volume, method=method)
                elapsed = time.perf_counter() - start
                if k >= args.warmup:
                    whole[method].append(elapsed)
                    nets[method].append(sum(p.seconds for p in analysis.predictions.values()))
        row = {"volume": Path(path).name, "shape": list(volume.data.shape)}
        for name, table in (("analysis", whole), ("networks", nets)):
            legacy, new = (statistics.median(table[m]) for m in methods)
            row[name] = {
                LEGACY_CAM_METHOD: round(legacy, 4),
                args.method: round(new, 4),
                "ratio": round(new / legacy, 3),
            }
        results.append(row)
        print(
            f"{row['volume']}: analysis {row['analysis'][LEGACY_CAM_METHOD]:.3f} s -> "
            f"{row['analysis'][args.method]:.3f} s ({row['analysis']['ratio']:.2f}x); networks "
            f"{row['networks'][LEGACY_CAM_METHOD]:.3f} s -> {row['networks'][args.method]:.3f} s "
            f"({row['networks']['ratio']:.2f}x)",
            file=sys.stderr,
        )
    doc = {
        "legacy": LEGACY_CAM_METHOD,
        "method": args.method,
        "repeats": args.repeats,
        "weights": args.weights,
        "results": results,
    }
    print(json.dumps(doc, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
