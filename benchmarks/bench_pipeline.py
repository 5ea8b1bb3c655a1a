"""End-to-end seconds per step for one scan: load -> brain -> registration -> checks -> networks.

What a user of the app or ``python -m tumortrace predict`` waits for, step by step, on one scan
(default: the 240x240x155 BraTS scan shipped in tests/data):

1. load (:func:`tumortrace.io.load_volume`);
2. brain extraction (deepbet, :func:`tumortrace.brain.extract_brain`);
3. registration to MNI152 (:func:`tumortrace.register.register_to_template`);
4. input checks (:func:`tumortrace.standard.measure`);
5. the network input (:func:`tumortrace.standard.prepare`, per distinct card grid);
6. each network: one forward + Grad-CAM + the map back onto the scan's own grid
   (:meth:`tumortrace.infer.Predictor.analyze`).

Networks: the cards in ``--weights`` (default ``weights/``) or, with ``--standard D H W``,
random-init networks with standard-space cards at that grid (``--spacing`` mm), which is what
weights trained on the standard space cost. Each step is the median of ``--repeats`` runs after one
warm-up; the table ends with the total against the 15 s target, as a ratio, measured in this run.

Usage::

    python benchmarks/bench_pipeline.py
    python benchmarks/bench_pipeline.py --standard 40 48 40 --spacing 4
"""

from __future__ import annotations

import argparse
import platform
import statistics
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from tumortrace.brain import extract_brain  # noqa: E402
from tumortrace.checkpoint import ModelCard  # noqa: E402
from tumortrace.config import PreprocessConfig  # noqa: E402
from tumortrace.infer import Predictor  # noqa: E402
from tumortrace.io import load_volume  # noqa: E402
from tumortrace.models import create_model, list_models  # noqa: E402
from tumortrace.register import register_to_template  # noqa: E402
from tumortrace.runtime import bf16_support  # noqa: E402
from tumortrace.standard import StandardSpace, measure, pipeline_description, prepare  # noqa: E402

TARGET_S = 15.0


def _median_time(fn, repeats: int):
    """(median seconds, last result) of ``repeats`` calls after one warm-up call."""
    out = fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times), out


def _predictor(args) -> Predictor:
    if args.standard is None:
        return Predictor.from_dir(args.weights)
    pre = PreprocessConfig(
        spacing_mm=(args.spacing,) * 3, shape_dhw=tuple(args.standard), space="mni"
    )
    torch.manual_seed(0)
    models = {a: create_model(a).eval() for a in list_models()}
    cards = {a: ModelCard(arch=a, preprocess=pre, pipeline=pipeline_description()) for a in models}
    return Predictor(models, cards)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument(
        "--scan", type=Path, default=ROOT / "tests" / "data" / "BraTS-GLI-00001-000-t1c.nii.gz"
    )
    ap.add_argument("--weights", type=Path, default=ROOT / "weights")
    ap.add_argument("--standard", type=int, nargs=3, metavar=("D", "H", "W"), default=None)
    ap.add_argument("--spacing", type=float, default=4.0)
    ap.add_argument("--repeats", type=int, default=2)
    args = ap.parse_args(argv)

    predictor = _predictor(args)
    rows: list[tuple[str, float]] = []
    t_load, volume = _median_time(lambda: load_volume(args.scan), args.repeats)
    rows.append(("load", t_load))
    t_bet, bet = _median_time(lambda: extract_brain(volume.data, volume.spacing), args.repeats)
    rows.append(("brain extraction (deepbet)", t_bet))
    t_reg, reg = _median_time(
        lambda: register_to_template(volume.data, bet.mask, volume.affine), args.repeats
    )
    rows.append(("registration (SimpleITK)", t_reg))
    t_qc, report = _median_time(lambda: measure(volume, bet, reg), args.repeats)
    rows.append(("input checks", t_qc))
    std = StandardSpace(bet.mask, bet.volume_ml, reg, report)
    configs = list(dict.fromkeys(c.preprocess for c in predictor.cards.values()))
    t_prep = sum(
        _median_time(lambda c=c: prepare(volume, c, std), args.repeats)[0] for c in configs
    )
    rows.append((f"network input ({len(configs)} grid{'s' * (len(configs) > 1)})", t_prep))
    per_net: dict[str, list[float]] = {a: [] for a in predictor.archs}
    predictor.analyze(volume, standard=std)  # warm-up
    for _ in range(args.repeats):
        analysis = predictor.analyze(volume, standard=std)
        for a, p in analysis.predictions.items():
            per_net[a].append(p.seconds)
    for a in predictor.archs:
        grid = "x".join(map(str, predictor.cards[a].preprocess.shape_dhw))
        rows.append((f"{a} forward + Grad-CAM + map back ({grid})", statistics.median(per_net[a])))
    total = sum(s for _, s in rows)

    shape = "x".join(map(str, volume.data.shape))
    bf16 = bf16_support(torch.device("cpu"))  # the rule the Predictor's "auto" follows
    native = "yes" if bf16.native else f"no ({bf16.reason}, so fp32)"
    print(
        f"# {args.scan.name} ({shape}), {platform.processor() or platform.machine()}, "
        f"{torch.get_num_threads()} threads, bf16 native: {native}; QC status {report.status}"
    )
    print("| step | seconds | share |\n|---|---|---|")
    for name, s in rows:
        print(f"| {name} | {s:.2f} | {100 * s / total:.0f} % |")
    ratio = total / TARGET_S
    print(f"| **total** | **{total:.2f}** | total / {TARGET_S:.0f} s target = {ratio:.2f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
