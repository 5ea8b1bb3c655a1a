"""Training throughput per architecture: fp32 eager against the fast path, in one run.

    python benchmarks/bench_train.py --shape 32 64 64 --batch-size 8 --steps 3

For each network one training step (forward, class-weighted cross entropy, backward, Adam) is timed
on random ``(N, 1, D, H, W)`` inputs: a warm-up, then the median of ``--steps`` steps. The fast path
is the one :mod:`tumortrace.train` uses (:func:`tumortrace.runtime.fast_runtime`): on CPU
``channels_last_3d``, plus bf16 autocast when the CPU has native bf16; on CUDA AMP (bf16 where
supported, else fp16) with cuDNN benchmark. Prints samples/s and the speed-up, and optionally
writes them as JSON.
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
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tumortrace.loop import train_step
from tumortrace.models import check_input_shape, create_model, list_models
from tumortrace.runtime import CPU_FP32, bf16_support, fast_runtime, resolve_device, set_threads


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_steps(
    arch: str,
    shape: tuple[int, int, int],
    batch: int,
    device: torch.device,
    fast: bool,
    steps: int,
    warmup: int,
) -> float:
    """Median seconds of one training step of ``arch`` on a ``(batch, 1, *shape)`` input."""
    torch.manual_seed(0)
    model = create_model(arch).to(device)
    x = torch.randn(batch, 1, *shape, device=device)
    y = torch.randint(0, 3, (batch,), device=device)
    rt = fast_runtime(device) if fast else replace(CPU_FP32, device=device)
    if rt.channels_last:
        model = model.to(memory_format=torch.channels_last_3d)
        x = x.contiguous(memory_format=torch.channels_last_3d)
    criterion = nn.CrossEntropyLoss(weight=torch.tensor([0.5, 0.9, 0.6], device=device))
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-4)
    scaler = torch.amp.GradScaler(device.type, enabled=rt.amp_dtype == torch.float16)
    model.train()
    times = []
    for i in range(warmup + steps):
        _sync(device)
        start = time.perf_counter()
        train_step(model, x, y, criterion, optimizer, scaler, rt)
        _sync(device)
        if i >= warmup:
            times.append(time.perf_counter() - start)
    return statistics.median(times)


def main(argv: list[str] | None = None) -> int:
    """Runs the benchmark; prints one row per architecture and returns 0."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--shape", type=int, nargs=3, default=[32, 64, 64], metavar=("D", "H", "W"))
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--steps", type=int, default=3, help="timed steps (median)")
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--archs", nargs="+", default=list_models(), choices=list_models())
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    p.add_argument("--json", type=Path, default=None, help="also write the results here")
    args = p.parse_args(argv)
    set_threads(args.threads)
    device = resolve_device(args.device)
    use_cuda = device.type == "cuda"
    shape = tuple(args.shape)
    bf16 = bf16_support(device)  # the rule fast_runtime follows: bf16 autocast only where native
    fast_name = (
        "AMP" if use_cuda else ("bf16+channels_last_3d" if bf16.native else "fp32+channels_last_3d")
    )
    if not bf16.native:
        print(f"bf16 not native: {bf16.reason}")
    print(
        f"device {device} ({torch.get_num_threads()} threads), input {args.batch_size}x1x"
        f"{'x'.join(map(str, shape))}, median of {args.steps} steps after {args.warmup} warm-up"
    )
    print(f"{'arch':<10} {'fp32 samples/s':>15} {fast_name + ' samples/s':>32} {'speed-up':>9}")
    results = {}
    for arch in args.archs:
        check_input_shape(arch, shape)
        slow = time_steps(arch, shape, args.batch_size, device, False, args.steps, args.warmup)
        fast = time_steps(arch, shape, args.batch_size, device, True, args.steps, args.warmup)
        results[arch] = {
            "fp32_samples_per_s": args.batch_size / slow,
            "fast_samples_per_s": args.batch_size / fast,
            "speedup": slow / fast,
        }
        r = results[arch]
        print(
            f"{arch:<10} {r['fp32_samples_per_s']:>15.2f} {r['fast_samples_per_s']:>32.2f} "
            f"{r['speedup']:>8.2f}x",
            flush=True,
        )
    if args.json is not None:
        args.json.write_text(
            json.dumps(
                {
                    "device": str(device),
                    "threads": torch.get_num_threads(),
                    "shape": list(shape),
                    "batch_size": args.batch_size,
                    "fast_path": fast_name,
                    "bf16": {"native": bf16.native, "reason": bf16.reason},
                    "results": results,
                },
                indent=2,
            )
            + "\n"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
