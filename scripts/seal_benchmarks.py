"""Seals ``<weights>/benchmarks/<arch>.json`` to ``<weights>/<arch>.json`` and its weights.

``train.py`` seals every benchmark it writes (see :mod:`tumortrace.provenance`); this script seals
benchmarks written before that existed, after checking that each card's ``weights_sha256`` matches
its ``.safetensors`` file. It attests that the three files belong together *now*: run it only on a
folder you trust (e.g. right after training), never to make an edited benchmark look verified.

    .venv/bin/python scripts/seal_benchmarks.py [--weights weights]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tumortrace import provenance  # noqa: E402
from tumortrace.checkpoint import read_card  # noqa: E402
from tumortrace.files import atomic_write_json, sha256_file  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--weights", type=Path, default=ROOT / "weights")
    args = parser.parse_args(argv)
    status = 0
    for bench_path in sorted((args.weights / "benchmarks").glob("*.json")):
        card_path = args.weights / bench_path.name
        if not card_path.is_file():
            continue  # inference.json, published.json, splits
        card = read_card(card_path)
        weights = provenance.weights_path(card_path, card.weights_file)
        if sha256_file(weights) != card.weights_sha256:
            print(f"{card_path.name}: weights do not match the card; not sealed", file=sys.stderr)
            status = 1
            continue
        written = json.loads(card_path.read_text(encoding="utf-8"))
        bench = json.loads(bench_path.read_text(encoding="utf-8"))
        atomic_write_json(bench_path, provenance.seal(bench, written))
        check = provenance.verify(json.loads(bench_path.read_text()), card_path)
        print(f"sealed {bench_path} ({check.reason})")
    return status


if __name__ == "__main__":
    sys.exit(main())
