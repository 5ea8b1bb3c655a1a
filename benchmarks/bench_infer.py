"""Inference benchmark: naive (fp32 eager, separate forwards) vs ours (``Predictor.analyze``).

For each network, on one preprocessed input of ``--shape D H W``:

* **naive**: fp32 eager model; a ``torch.no_grad`` forward for the probabilities, then Captum
  ``LayerGradCam`` (its own forward + backward) for the map; trilinear upsampling; map back.
* **ours**: :meth:`tumortrace.infer.Predictor.analyze` (BatchNorm folded, channels_last_3d, bf16
  trunk weights where supported, one forward feeding both the probabilities and Grad-CAM).

Reports medians of ``--repeats`` runs after ``--warmup`` runs: seconds per network and in total
(preprocessing excluded from both, reported once), the speed-up, achieved GFLOP/s against a matmul
peak measured in this run (fp32; bf16 only where :func:`tumortrace.runtime.native_bf16`, else
``null`` with the reason in ``bf16``: an emulated bf16 matmul runs at 1-2 GFLOP/s and would take
minutes), peak RSS, and the largest probability difference from fp32. Writes
``weights/benchmarks/inference.json`` (format in docs/ARCHITECTURE.md) atomically.

Usage::

    python benchmarks/bench_infer.py                       # random-init networks, 64x128x128
    python benchmarks/bench_infer.py --weights weights     # the shipped cards
    python benchmarks/bench_infer.py --shape 32 64 64 --repeats 3
    python benchmarks/bench_infer.py --peak-size 64 ...    # a tiny matmul: no peak (the tests)
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime as dt
import os
import resource
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from tumortrace.captum_reference import gradcam_captum  # noqa: E402
from tumortrace.checkpoint import ModelCard, load_checkpoint  # noqa: E402
from tumortrace.config import PreprocessConfig  # noqa: E402
from tumortrace.errors import ConfigError  # noqa: E402
from tumortrace.explanation import CAM_METHODS, DEFAULT_CAM_METHOD, cam_to_volume  # noqa: E402
from tumortrace.files import atomic_write_json  # noqa: E402
from tumortrace.infer import InferenceSettings, Predictor  # noqa: E402
from tumortrace.io import Volume, volume_from_array  # noqa: E402
from tumortrace.models import count_gflops, create_model, list_models  # noqa: E402
from tumortrace.numformat import fmt  # noqa: E402
from tumortrace.preprocess import preprocess  # noqa: E402
from tumortrace.runtime import Bf16Support, bf16_support, machine_facts  # noqa: E402


def peak_rss_mb() -> float:
    """Peak resident set size of this process so far, in MiB (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def matmul_peaks(n: int, bf16: Bf16Support) -> dict[str, float | None]:
    """``{"fp32", "bf16"}`` GFLOP/s of :func:`matmul_peak` at ``n``; bf16 is None (not measured)
    unless ``bf16.native``."""
    return {
        "fp32": matmul_peak(torch.float32, n),
        "bf16": matmul_peak(torch.bfloat16, n) if bf16.native else None,
    }


def peak_words(peak: dict[str, float | None], bf16: Bf16Support) -> str:
    """The peaks as the run prints them, e.g. ``"fp32 192 GFLOP/s, bf16 not native: emulated on
    this CPU"``."""
    words = f"fp32 {fmt(peak['fp32'], 'quantity')} GFLOP/s, bf16 "
    if peak["bf16"] is None:
        return words + f"not native: {bf16.reason}"
    return words + f"{fmt(peak['bf16'], 'quantity')} GFLOP/s"


def matmul_peak(dtype: torch.dtype, n: int = 2048, repeats: int = 5) -> float:
    """GFLOP/s of an ``n x n`` matmul (best of ``repeats``) in ``dtype``: the CPU's usable peak."""
    g = torch.Generator().manual_seed(0)
    a = torch.randn(n, n, generator=g).to(dtype)
    b = torch.randn(n, n, generator=g).to(dtype)
    torch.matmul(a, b)
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        torch.matmul(a, b)
        best = min(best, time.perf_counter() - start)
    return 2 * n**3 / best / 1e9


def brain_volume(
    shape_dhw: tuple[int, int, int], spacing_dhw: tuple[float, ...], seed: int
) -> Volume:
    """A seeded brain-like volume: skull shell, ellipsoid brain, bright lesion, noise, bias field.

    Built on a grid slightly larger than the model grid at the model's spacing (stored LPS, as
    DICOM-derived files are), so preprocessing resamples, crops and reorients as for real input.
    """
    rng = np.random.default_rng(seed)
    shape_xyz = tuple(round(n * 1.1) for n in shape_dhw[::-1])
    g = np.stack(np.meshgrid(*[np.linspace(-1, 1, n) for n in shape_xyz], indexing="ij"))
    r = np.sqrt((g**2).sum(0))
    data = np.where(r < 0.8, 400.0, 30.0)
    data[(r > 0.82) & (r < 0.9)] = 700.0  # skull
    lesion = np.sqrt(((g - np.array([0.3, 0.1, 0.2]).reshape(3, 1, 1, 1)) ** 2).sum(0)) < 0.18
    data[lesion] = 650.0
    data *= 1.0 + 0.15 * g[0]  # bias field
    data += rng.normal(0, 12, shape_xyz)
    sx, sy, sz = spacing_dhw[::-1]
    affine = np.diag([-sx, -sy, sz, 1.0])  # LPS storage
    return volume_from_array(data[::-1, ::-1].astype(np.float32), affine, source="bench-phantom")


def naive_once(model: torch.nn.Module, x: torch.Tensor, grid) -> tuple[float, np.ndarray]:
    """fp32 eager: a forward for the probabilities, then Captum Grad-CAM (forward + backward)."""
    start = time.perf_counter()
    with torch.no_grad():
        probs = torch.softmax(model(x).double(), dim=1)[0]
    target = int(probs.argmax())
    cam = gradcam_captum(model, x, target)
    up = F.interpolate(cam[None, None], size=x.shape[-3:], mode="trilinear", align_corners=False)
    up = up[0, 0].clamp_min(0)
    up = (up / up.max().clamp_min(1e-12)).numpy()
    cam_to_volume(up, grid)
    return time.perf_counter() - start, probs.numpy()


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--shape", type=int, nargs=3, default=(64, 128, 128), metavar=("D", "H", "W")
    )
    parser.add_argument(
        "--weights", default=None, help="folder of <arch>.json cards (default: random init)"
    )
    parser.add_argument("--archs", nargs="+", default=list_models(), choices=list_models())
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--precision", choices=("auto", "bf16", "fp32"), default="auto")
    parser.add_argument("--out", default=str(ROOT / "weights" / "benchmarks" / "inference.json"))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--peak-size",
        type=int,
        default=2048,
        help="n of the n x n matmul that measures the peaks (default 2048; a small n only checks "
        "the path, its figure is no peak)",
    )
    parser.add_argument("--compile", action="store_true", help="torch.compile the trunks (ours)")
    parser.add_argument(
        "--cam-method",
        default=DEFAULT_CAM_METHOD,
        choices=sorted(CAM_METHODS),
        help="the map computed with the probabilities (ours; default: the app's)",
    )
    return parser


def _build(args: argparse.Namespace, arch: str) -> tuple[torch.nn.Module, ModelCard]:
    """The network and its card; the benchmark shape replaces the card's model grid (the networks
    are fully convolutional up to the global pooling, so any grid above the minimum works)."""
    shape = tuple(args.shape)
    if args.weights:
        model, card = load_checkpoint(Path(args.weights) / f"{arch}.json")
    else:
        torch.manual_seed(args.seed)  # the same weights every time it is built
        # The head-crop input: the standard space would need a brain that deepbet finds and
        # registration aligns, and the network timings exclude preprocessing anyway.
        native = PreprocessConfig(space="native")
        model, card = create_model(arch).eval(), ModelCard(arch=arch, preprocess=native)
    config = dataclasses.replace(card.preprocess, shape_dhw=shape)
    return model, dataclasses.replace(card, preprocess=config)


def _time_ours(args: argparse.Namespace, volume) -> dict:
    """``Predictor.analyze`` runs: per-network seconds, whole analyses, settings, peak RSS."""
    archs = list(args.archs)
    built = {a: _build(args, a) for a in archs}
    settings = InferenceSettings(
        precision=args.precision, compile=args.compile, cam_method=args.cam_method
    )
    start = time.perf_counter()
    predictor = Predictor(
        {a: m for a, (m, _) in built.items()}, {a: c for a, (_, c) in built.items()}, settings
    )
    setup_seconds = time.perf_counter() - start
    print(f"predictor ready in {setup_seconds:.1f} s (compile={args.compile})", flush=True)
    runs: dict[str, list[float]] = {a: [] for a in archs}
    analyses: list[float] = []
    for i in range(args.warmup + args.repeats):
        analysis = predictor.analyze(volume, archs=archs)
        if i >= args.warmup:
            for a in archs:
                runs[a].append(analysis.predictions[a].seconds)
            analyses.append(analysis.seconds)
        print(f"ours  run {i}: {analysis.seconds:.2f} s", flush=True)
    return {
        "seconds": {a: statistics.median(runs[a]) for a in archs},
        "analyze_seconds": statistics.median(analyses),
        "probs": {a: analysis.predictions[a].probs for a in archs},
        "dtype": "bf16" if predictor._dtype == torch.bfloat16 else "fp32",
        "settings": settings,
        "setup_seconds": setup_seconds,
        "rss": peak_rss_mb(),  # before the naive models exist
        "config": built[archs[0]][1].preprocess,
    }


def _time_naive(args: argparse.Namespace, volume, config: PreprocessConfig) -> dict:
    """Preprocessing once, then the fp32 eager forward + Captum Grad-CAM of each network."""
    archs = list(args.archs)
    prep_runs = []
    for _ in range(max(1, args.repeats)):
        start = time.perf_counter()
        prep = preprocess(volume, config)
        prep_runs.append(time.perf_counter() - start)
    x = prep.tensor[None]
    models = {a: _build(args, a)[0] for a in archs}
    runs: dict[str, list[float]] = {a: [] for a in archs}
    probs: dict[str, np.ndarray] = {}
    for i in range(args.warmup + args.repeats):
        for a in archs:
            seconds, probs[a] = naive_once(models[a], x, prep.grid)
            if i >= args.warmup:
                runs[a].append(seconds)
        print(f"naive run {i} done", flush=True)
    return {
        "seconds": {a: statistics.median(runs[a]) for a in archs},
        "probs": probs,
        "gflops": {a: count_gflops(models[a], tuple(args.shape)) for a in archs},
        "preprocess_seconds": statistics.median(prep_runs),
    }


def _record(
    args: argparse.Namespace, peak: dict, bf16: Bf16Support, ours: dict, naive_run: dict
) -> dict:
    """The ``inference.json`` document (format in docs/ARCHITECTURE.md); a fraction of a peak
    not measured (bf16 not native) is None."""
    archs, gflops, settings = list(args.archs), naive_run["gflops"], ours["settings"]
    fast, naive = dict(ours["seconds"]), dict(naive_run["seconds"])
    fast["total"], naive["total"] = sum(fast.values()), sum(naive.values())
    achieved = {
        "naive": {a: 2 * gflops[a] / naive[a] for a in archs},  # two forwards (+ a head backward)
        "fast": {a: gflops[a] / fast[a] for a in archs},
    }
    max_diff = max(float(np.abs(ours["probs"][a] - naive_run["probs"][a]).max()) for a in archs)
    fast_peak = peak[ours["dtype"]]
    return {
        "shape": list(args.shape),
        "threads": torch.get_num_threads(),
        "peak_gflops": peak,
        "peak_matmul_n": args.peak_size,
        "bf16": dataclasses.asdict(bf16),
        "naive": naive,
        "fast": fast,
        "speedup": naive["total"] / fast["total"],
        "peak_rss_mb": ours["rss"],
        "peak_rss_mb_with_naive": peak_rss_mb(),
        "max_prob_diff": max_diff,
        "gflops_per_forward": gflops,
        "achieved_gflops": achieved,
        "fraction_of_peak": {
            "naive": {a: v / peak["fp32"] for a, v in achieved["naive"].items()},
            "fast": {
                a: None if fast_peak is None else v / fast_peak for a, v in achieved["fast"].items()
            },
        },
        "preprocess_seconds": naive_run["preprocess_seconds"],
        "analyze_seconds": ours["analyze_seconds"],
        "repeats": args.repeats,
        "warmup": args.warmup,
        "weights": args.weights or "random-init (create_model)",
        "settings": {
            "precision": ours["dtype"],
            "channels_last_3d": settings.channels_last,
            "fuse_batchnorm": settings.fuse_bn,
            "trunk_inference_mode": True,
            "grad_cam": "one forward; backward through the layers after the CAM layer only",
            "cam_method": settings.cam_method,
            "torch_compile": settings.compile,
            "predictor_setup_seconds": ours["setup_seconds"],
            "threads": torch.get_num_threads(),
        },
        "machine": machine_facts(),
        "torch": torch.__version__,
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
    }


def _print_table(result: dict, archs: list[str], out: str) -> None:
    naive, fast, achieved = result["naive"], result["fast"], result["achieved_gflops"]
    print(f"\n{'network':<10}{'naive s':>10}{'ours s':>10}{'speed-up':>10}{'GFLOP/s ours':>14}")
    for a in [*archs, "total"]:
        gf = f"{achieved['fast'][a]:.0f}" if a in achieved["fast"] else ""
        print(f"{a:<10}{naive[a]:>10.2f}{fast[a]:>10.2f}{naive[a] / fast[a]:>9.1f}x{gf:>14}")
    print(
        f"preprocess {result['preprocess_seconds']:.2f} s (once, both paths); whole analyze "
        f"{result['analyze_seconds']:.2f} s; peak RSS {result['peak_rss_mb']:.0f} MiB (ours), "
        f"{result['peak_rss_mb_with_naive']:.0f} MiB (with naive); "
        f"max |p - p_fp32| {result['max_prob_diff']:.4f}"
    )
    print(f"load average {os.getloadavg()}; wrote {out}")


def main(argv: list[str] | None = None) -> int:
    """Times ours then the naive path (so ours' peak RSS is read alone) and writes the JSON."""
    args = _parser().parse_args(argv)
    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} threads, shape {tuple(args.shape)}",
        flush=True,
    )
    if args.peak_size < 1:
        print(f"error: --peak-size must be at least 1, got {args.peak_size}", file=sys.stderr)
        return 2
    try:
        bf16 = bf16_support(torch.device("cpu"))
    except ConfigError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    peak = matmul_peaks(args.peak_size, bf16)
    print(f"matmul peak (n={args.peak_size}): {peak_words(peak, bf16)}", flush=True)
    if args.precision == "bf16" and not bf16.native:
        print(f"warning: --precision bf16 asked for, bf16 {bf16.reason}: slower than fp32")
    config = _build(args, args.archs[0])[1].preprocess
    volume = brain_volume(tuple(args.shape), config.spacing_mm, args.seed)
    ours = _time_ours(args, volume)
    result = _record(args, peak, bf16, ours, _time_naive(args, volume, ours["config"]))
    atomic_write_json(args.out, result)
    _print_table(result, list(args.archs), args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
