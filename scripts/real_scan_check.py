"""The real-scan check of the shipped weights: ``weights/benchmarks/real_scans.json``.

* Real gliomas: every non-healthy row of a data manifest (``shared/real-data/manifest.csv``:
  ``local_path``, ``label``, ``subject``), scored by each shipped network and the ensemble.
* Real-brain cohort: from the benchmark JSONs' per-case test predictions (each fold's own network),
  the share of real healthy brains called healthy, and of lesion cases whose own brain without the
  lesion is called healthy.
* Baselines: the same two checks for every baseline with a card and weights in one of the
  ``--baselines`` folders (the first that has it: ``weights/baselines`` holds the small ones; a
  training run's output folder holds those too large to commit), without an ensemble. A baseline
  whose weights are nowhere is left out of the glioma check and said so.

Usage::

    .venv/bin/python scripts/real_scan_check.py --weights weights \
        --tumours ../shared/real-data/manifest.csv --cache /work/runs/cache \
        --baselines weights/baselines /work/runs/out/baselines/*/
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
from tumortrace.networks import baseline_names, network_names  # noqa: E402
from tumortrace.provenance import weights_path  # noqa: E402
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
    "baselines": (
        "The seed papers' baselines, trained on the same cohort and folds: the same two checks "
        "(real gliomas with the shipped fold-0 model, cohort test parts from each fold's own "
        "model), without an ensemble."
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


def baseline_cards(folders: list[Path]) -> dict[str, Path]:
    """``{method: card}`` for each baseline whose card and weights are in one of ``folders``
    (the first folder holding both wins; a run folder ``<run>/<method>/`` counts too)."""
    found: dict[str, Path] = {}
    for method in baseline_names():
        for folder in folders:
            for card in (folder / f"{method}.json", folder / method / f"{method}.json"):
                if method not in found and card.is_file():
                    doc = json.loads(card.read_text())
                    if weights_path(card, doc.get("weights_file", "")).is_file():
                        found[method] = card
    return found


def baselines_section(args, scans: list[Case]) -> dict | None:
    """The baselines' glioma and cohort checks; None when no baseline has a benchmark."""
    bench_dir = args.weights / "benchmarks"
    benches = {
        m: json.loads((bench_dir / f"{m}.json").read_text())
        for m in baseline_names()
        if (bench_dir / f"{m}.json").is_file()
    }
    if not benches:
        return None
    cards = baseline_cards(args.baselines)
    missing = sorted(set(benches) - set(cards))
    if missing:
        print(f"no weights for {', '.join(missing)}: left out of the glioma check", file=sys.stderr)
    gliomas = glioma_calls(
        [cards[m] for m in baseline_names() if m in cards],
        scans,
        cache_dir=args.cache,
        ensemble=False,
    )
    return {"gliomas": gliomas, "cohort_test_parts": cohort_calls(benches, ensemble=False)}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--weights", type=Path, default=ROOT / "weights")
    ap.add_argument("--tumours", type=Path, required=True, help="data manifest with real gliomas")
    ap.add_argument("--cache", type=Path, default=None, help="tensor / standard-space cache")
    ap.add_argument("--out", type=Path, default=None, help="default <weights>/benchmarks/...")
    ap.add_argument(
        "--baselines",
        type=Path,
        nargs="*",
        default=[ROOT / "weights" / "baselines"],
        help="folders with baseline cards and weights (default weights/baselines)",
    )
    args = ap.parse_args(argv)
    archs = [n for n in network_names() if (args.weights / f"{n}.json").is_file()]
    cards = [args.weights / f"{a}.json" for a in archs]
    scans = tumour_scans(args.tumours)
    gliomas = glioma_calls(cards, scans, cache_dir=args.cache)
    benches = {
        a: json.loads((args.weights / "benchmarks" / f"{a}.json").read_text()) for a in archs
    }
    cohort = cohort_calls(benches)
    baselines = baselines_section(args, scans)
    report = real_scan_report(gliomas, cohort, NOTES, baselines)
    out = args.out or args.weights / "benchmarks" / "real_scans.json"
    atomic_write_json(out, report, indent=1)
    for key, table in (("gliomas called tumour", gliomas["called_tumour"]), *cohort.items()):
        cells = ", ".join(f"{k} {v['n']}/{v['total']}" for k, v in table.items())
        print(f"{key}: {cells}")
    for method, share in (baselines or {}).get("gliomas", {}).get("called_tumour", {}).items():
        print(f"baseline {method}: gliomas called tumour {share['n']}/{share['total']}")
    print(out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
