"""The cost of lesion supervision per training step, against the plain step, in one run.

    python benchmarks/bench_lesion.py --arch mc3 --shape 32 40 32 --batch-size 8 --steps 5

Times one optimisation step (forward, loss, backward, Adam) of one network on random
``(N, 1, D, H, W)`` inputs with a random lesion in every tumour case, in four variants, each a
warm-up then the median of ``--steps`` steps, interleaved so drift hits them alike:

* ``plain``: today's step (:func:`tumortrace.loop.train_step`, class-weighted cross entropy);
* ``head``: + the lesion head (``λ = 1``, ``--lesion-layer``);
* ``attention``: + the CAM attention term alone (``μ = 1``);
* ``both``: head and attention term.

The supervised variants run :func:`tumortrace.loop.supervised_step`. Prints seconds per step and
each variant's ratio to ``plain``; ``--json`` writes them. Ratios, not absolute times, carry from
one machine to the next.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from dataclasses import replace
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tumortrace.config import TrainConfig
from tumortrace.loop import supervised_step, train_step
from tumortrace.models import check_input_shape, create_model
from tumortrace.runtime import fast_runtime, resolve_device, set_threads
from tumortrace.supervision import Criterion, Supervised

VARIANTS = {"plain": (0.0, 0.0), "head": (1.0, 0.0), "attention": (0.0, 1.0), "both": (1.0, 1.0)}
"""Variant -> (λ, μ)."""


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _setup(arch: str, layer: str, lam: float, mu: float, device: torch.device, rt):
    torch.manual_seed(0)
    model = create_model(arch)
    cfg = replace(TrainConfig(), arch=arch, lesion_weight=lam, attention_weight=mu,
                  lesion_layer=layer)  # fmt: skip
    trainee = model if lam == 0 and mu == 0 else Supervised(model, layer if lam > 0 else None)
    rt.place(trainee)
    weight = torch.tensor([0.5, 0.9, 0.6], device=device)
    optimizer = torch.optim.Adam(trainee.parameters(), lr=1e-4)
    scaler = torch.amp.GradScaler(device.type, enabled=rt.amp_dtype == torch.float16)
    trainee.train()
    return trainee, Criterion(weight, cfg), optimizer, scaler


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--arch", default="mc3")
    p.add_argument("--shape", type=int, nargs=3, default=[32, 40, 32], metavar=("D", "H", "W"))
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--layer", default="layer3", choices=("layer2", "layer3"))
    p.add_argument("--steps", type=int, default=5)
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--json", type=Path, default=None)
    args = p.parse_args(argv)
    shape = tuple(args.shape)
    check_input_shape(args.arch, shape)
    device = resolve_device(args.device)
    if args.threads:
        set_threads(args.threads)
    rt = fast_runtime(device)
    g = torch.Generator().manual_seed(0)
    n = args.batch_size
    x = torch.randn(n, 1, *shape, generator=g).to(device)
    y = torch.arange(n, device=device) % 3
    lesion = torch.zeros(n, 1, *shape, device=device)
    d, h, w = shape
    lesion[y > 0, :, d // 4 : d // 2, h // 4 : h // 2, w // 4 : w // 2] = 1.0
    known = torch.ones(n, dtype=torch.bool, device=device)
    if rt.channels_last:
        x = x.contiguous(memory_format=torch.channels_last_3d)
    runs = {k: _setup(args.arch, args.layer, *v, device, rt) for k, v in VARIANTS.items()}
    times: dict[str, list[float]] = {k: [] for k in VARIANTS}
    for i in range(args.warmup + args.steps):
        for name, (trainee, criterion, optimizer, scaler) in runs.items():
            _sync(device)
            t0 = time.perf_counter()
            if name == "plain":
                train_step(trainee, x, y, criterion, optimizer, scaler, rt)
            else:
                supervised_step(trainee, (x, y, lesion, known), criterion, optimizer, scaler, rt)
            _sync(device)
            if i >= args.warmup:
                times[name].append(time.perf_counter() - t0)
    med = {k: statistics.median(v) for k, v in times.items()}
    print(f"{args.arch} {list(shape)} batch {n}, head on {args.layer}, {rt.describe()}")
    for name, t in med.items():
        print(f"  {name:10s} {t:8.3f} s/step   x{t / med['plain']:.2f} of plain")
    if args.json is not None:
        out = {
            "arch": args.arch, "shape": list(shape), "batch_size": n, "layer": args.layer,
            "runtime": rt.describe(), "seconds": med,
            "ratio": {k: v / med["plain"] for k, v in med.items()},
        }  # fmt: skip
        args.json.write_text(json.dumps(out, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
