"""Server time of one viewer slider step at BraTS size (240x240x155); target <= 150 ms.

A slider step reruns only the Analyze page's viewer fragment. Its work is what this script times,
through the very routines the page calls (:func:`tumortrace.draw.draw_planes` and
:func:`tumortrace.draw.draw_overlays`, default settings): three planes (window, orientation labels,
crosshair, PNG) plus the Grad-CAM overlay of the three networks on one plane. ``--all-planes``
also times the heavier variant with an overlay for every plane and network (3 + 9 images).
``--apptest WEIGHTS`` additionally times a whole-page rerun through ``AppTest`` (an upper bound:
AppTest cannot rerun a fragment alone), with the analysis cached as in the app.

Usage::

    .venv/bin/python benchmarks/bench_viewer.py [--steps 30] [--all-planes] [--apptest DIR]
        [--volume FILE]
"""

from __future__ import annotations

import argparse
import gzip
import os
import statistics
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tumortrace import draw, viz  # noqa: E402
from tumortrace.io import Volume, load_volume, volume_from_array  # noqa: E402
from tumortrace.networks import network_names  # noqa: E402

ARCHS = network_names()


def brats_volume(path: Path | None = None) -> tuple[Volume, dict[str, np.ndarray]]:
    """A BraTS-sized volume and three smooth Grad-CAM-like maps on its grid.

    Args:
        path: a volume file; default a synthetic 240x240x155 HGG phantom.
    """
    if path is None:
        from tumortrace.synthetic import make_phantom

        ph = make_phantom("hgg", seed=0, size="brats")
        vol = volume_from_array(ph.data, ph.affine, source="bench")
    else:
        vol = load_volume(path)
    shape = vol.data.shape
    grid = np.stack(np.meshgrid(*[np.linspace(-1, 1, n) for n in shape], indexing="ij"))
    cams = {}
    for k, arch in enumerate(ARCHS):
        centre = np.array([0.2, -0.1 + 0.1 * k, 0.1]).reshape(3, 1, 1, 1)
        cams[arch] = np.exp(-((grid - centre) ** 2).sum(0) / 0.08).astype(np.float32)
    return vol, cams


def viewer_step(vol, presets, cams, point, cam_planes) -> int:
    """What the fragment draws for one slider position (the page's own calls, with its default
    settings); returns the PNG bytes produced."""
    window = presets["brain"]
    images = list(draw.draw_planes(vol.data, point, window, spacing_xyz=vol.spacing).values())
    for plane in cam_planes:
        index = point[viz.plane_layout(plane).fixed_axis]
        images += draw.draw_overlays(
            vol.data, plane, index, window, cams, spacing_xyz=vol.spacing
        ).values()
    return sum(len(png) for png in images)


def time_render(steps: int, all_planes: bool, path: Path | None = None) -> list[float]:
    vol, cams = brats_volume(path)
    presets = viz.window_presets(vol.data)
    cam_planes = viz.PLANES if all_planes else ("axial",)
    shape = vol.data.shape
    times = []
    for s in range(steps + 2):
        z = (shape[2] // 4 + s * 3) % shape[2]  # walk the axial slider
        point = (shape[0] // 2, shape[1] // 2, z)
        t = time.perf_counter()
        viewer_step(vol, presets, cams, point, cam_planes)
        times.append(time.perf_counter() - t)
    return times[2:]  # first steps warm caches


def time_apptest(weights: Path, steps: int, path: Path | None = None) -> list[float]:
    """Whole-page reruns after a slider move, through AppTest, on a 240x240x155 upload."""
    import nibabel as nib
    from streamlit.testing.v1 import AppTest

    os.environ["TUMORTRACE_WEIGHTS_DIR"] = str(weights)
    vol, _ = brats_volume(path)
    img = nib.Nifti1Image(vol.data, vol.affine)
    data = gzip.compress(img.to_bytes(), compresslevel=1)
    at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=600).run()
    at.radio(key="tt_source").set_value("Upload a file").run()
    at.file_uploader(key="tt_upload").set_value(("brats.nii.gz", data, "application/gzip"))
    at.run()
    if at.exception or at.error:
        raise SystemExit(f"app failed: {[e.value for e in [*at.exception, *at.error]]}")
    slider = next(s for s in at.slider if s.key.startswith("tt_slice_axial"))
    times = []
    for s in range(steps):
        slider.set_value((20 + 3 * s) % 155)
        t = time.perf_counter()
        at.run()
        times.append(time.perf_counter() - t)
        slider = next(x for x in at.slider if x.key.startswith("tt_slice_axial"))
    return times


def report(name: str, times: list[float]) -> None:
    ms = sorted(1000 * t for t in times)
    p90 = ms[min(len(ms) - 1, int(0.9 * len(ms)))]
    print(f"{name}: median {statistics.median(ms):.1f} ms, p90 {p90:.1f} ms over {len(ms)} steps")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--all-planes", action="store_true", help="overlay every plane (3+9)")
    parser.add_argument("--apptest", type=Path, default=None, help="weights folder for AppTest")
    parser.add_argument("--volume", type=Path, default=None, help="volume file (default phantom)")
    args = parser.parse_args()
    times = time_render(args.steps, all_planes=False, path=args.volume)
    report("viewer step, 3 planes + 3 Grad-CAM overlays (fragment work)", times)
    if args.all_planes:
        times_all = time_render(args.steps, True, args.volume)
        report("3 planes + 9 overlays (every plane x network)", times_all)
    if args.apptest:
        times_app = time_apptest(args.apptest, 10, args.volume)
        report("whole-page AppTest rerun after a slider move", times_app)
    verdict = "meets" if statistics.median(times) <= 0.150 else "MISSES"
    print(f"target <= 150 ms per step: {verdict}")


if __name__ == "__main__":
    main()
