"""Releases a training run's networks into the shipped weights folder.

For each network of ``--run`` (``<run>/<arch>/<arch>.json`` and its weights, as
``scripts/train_demo.sh`` writes them): the weights are copied to
``<weights>/<arch>-<tag>.safetensors`` and the card to ``<weights>/<arch>.json`` naming that file
(:func:`tumortrace.checkpoint.release`), with the cohort's description (``cohort.json`` of
``scripts/build_cohort.py``: real subjects, licence, synthetic lesions) added to its ``data``; the
benchmark JSON and the splits go to ``<weights>/benchmarks/``. The seal of each benchmark is
checked against the released card.

A new file name lets the new weights land while the previous file is still in the repository: a
commit that replaced all three files at once would be too large to submit.

Usage::

    .venv/bin/python scripts/release_weights.py --run /work/runs/out \
        --cohort /work/runs/cohort/cohort.json --tag ixi
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tumortrace.checkpoint import release  # noqa: E402
from tumortrace.networks import network_names  # noqa: E402
from tumortrace.provenance import verify  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--run", type=Path, required=True, help="folder with <arch>/<arch>.json")
    ap.add_argument("--weights", type=Path, default=ROOT / "weights")
    ap.add_argument("--cohort", type=Path, default=None, help="cohort.json of build_cohort.py")
    ap.add_argument("--tag", required=True, help="weights file name tag, e.g. ixi")
    args = ap.parse_args(argv)
    cohort = json.loads(args.cohort.read_text()) if args.cohort else None
    status = 0
    for arch in network_names():
        card = args.run / arch / f"{arch}.json"
        if not card.is_file():
            continue
        out = release(card, args.weights, f"{arch}-{args.tag}.safetensors", data={"cohort": cohort})
        bench_dir = args.weights / "benchmarks"
        bench_dir.mkdir(parents=True, exist_ok=True)
        for name in (f"{arch}.json", f"{arch}.splits.json"):
            shutil.copyfile(args.run / arch / "benchmarks" / name, bench_dir / name)
        check = verify(json.loads((bench_dir / f"{arch}.json").read_text()), out)
        print(f"{arch}: {out} ({check.reason})")
        status |= not check.verified
    return status


if __name__ == "__main__":
    raise SystemExit(main())
