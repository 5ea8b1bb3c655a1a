"""Viewer slider step in a real browser: key press to new pixels; target median <= 150 ms.

Starts ``streamlit run app.py`` on 127.0.0.1 (:func:`local_app.serve`: a free port, nothing else is
contacted), opens it in
headless Chromium (Debian's ``/usr/bin/chromium`` through Playwright), uploads a volume (default:
a synthetic 240x240x155 HGG phantom, BraTS's size) and, once the verdict and maps are in, steps
the axial slider with the arrow key ``--steps`` times. Each step is timed from the key press to
the moment the axial canvas has its new pixels (the viewer stamps ``data-drawn``), so it includes
the browser's own drawing; the server follows in the background (the Grad-CAM row).

With ``--base REV`` (e.g. ``6cade99``, before the planes were drawn in the browser) the same is
measured, in the same run and on the same upload, on that commit's app (checked out into a
temporary git worktree): there a key press on Streamlit's axial slider reran the viewer fragment
on the server, which sent a new PNG; the step ends when the axial ``<img>`` gets its new source.
The ratio new / base is printed.

Usage::

    .venv/bin/python benchmarks/bench_viewer.py [--steps 30] [--weights weights] [--volume FILE]
        [--base REV]
"""

from __future__ import annotations

import argparse
import gzip
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import local_app  # noqa: E402
from tumortrace.io import Volume, load_volume, volume_from_array  # noqa: E402

CHROMIUM = Path("/usr/bin/chromium")
CANVAS_DRAWN = """(plane) => {
  const out = [];
  const walk = (root) => root.querySelectorAll('*').forEach((e) => {
    if (e.tagName === 'CANVAS' && e.dataset.plane === plane) out.push(e);
    if (e.shadowRoot) walk(e.shadowRoot);
  });
  walk(document);
  return out.length ? out[0].dataset.drawn || null : null;
}"""


def volume(path: Path | None) -> Volume:
    """The volume to view: ``path``, or a synthetic 240x240x155 HGG phantom."""
    if path is not None:
        return load_volume(path)
    from tumortrace.synthetic import make_phantom

    ph = make_phantom("hgg", seed=0, size="brats")
    return volume_from_array(ph.data, ph.affine, source="bench")


# The base commit's viewer: the axial plane is an <img> whose alt starts with "Axial", redrawn by
# the server; the step ends when its source changes.
IMG_WATCH = """() => {
  const out = [];
  const walk = (root) => root.querySelectorAll('*').forEach((e) => {
    if (e.tagName === 'IMG' && (e.alt || '').startsWith('Axial')) out.push(e);
    if (e.shadowRoot) walk(e.shadowRoot);
  });
  walk(document);
  window.__ttChanged = null;
  new MutationObserver((m, obs) => { window.__ttChanged = performance.now(); obs.disconnect(); })
    .observe(out[0], {attributes: true, attributeFilter: ['src']});
}"""


def browser_step_ms(
    upload: Path, weights: Path, steps: int, app_dir: Path = ROOT, base: bool = False
) -> tuple[list[float], float]:
    """(milliseconds per slider step in the browser, seconds from upload to the planes drawn),
    for the app in ``app_dir`` (``base``: the old viewer of images redrawn by the server)."""
    from playwright.sync_api import expect, sync_playwright

    with local_app.serve(weights, app_dir=app_dir, timeout=120) as app:
        with sync_playwright() as pw:
            browser = pw.chromium.launch(
                executable_path=str(CHROMIUM), headless=True, args=["--no-sandbox"]
            )
            page = browser.new_page(viewport={"width": 1600, "height": 1000})
            page.set_default_timeout(600_000)
            page.goto(app.url)
            page.get_by_text("Upload a file").click()
            t0 = time.monotonic()
            page.locator("input[type=file]").set_input_files(str(upload))
            if base:
                page.locator("img[alt^='Axial']").first.wait_for()
            else:
                page.wait_for_function(f"() => ({CANVAS_DRAWN})('axial') !== null")
            scan_s = time.monotonic() - t0
            expect(page.get_by_text(re.compile("Ensemble verdict"))).to_be_visible(timeout=600_000)
            page.wait_for_timeout(3000)  # the viewer settles (the opening position, the maps)
            if base:
                return _base_steps(page, steps), scan_s
            slider = page.get_by_role("slider", name="Axial slice", exact=True)
            times = []
            for _ in range(steps):
                before = page.evaluate(f"({CANVAS_DRAWN})('axial')")
                start = page.evaluate("performance.now()")
                slider.press("ArrowRight")
                page.wait_for_function(f"() => ({CANVAS_DRAWN})('axial') !== '{before}'")
                times.append(float(page.evaluate(f"({CANVAS_DRAWN})('axial')")) - start)
            browser.close()
        return times, scan_s


def _base_steps(page, steps: int) -> list[float]:
    """The base commit's steps: Streamlit's axial slider (the first slider), key to new image."""
    times = []
    for _ in range(steps):
        page.evaluate(IMG_WATCH)
        start = page.evaluate("performance.now()")
        page.get_by_role("slider").first.press("ArrowRight")
        page.wait_for_function("() => window.__ttChanged !== null")
        times.append(page.evaluate("window.__ttChanged") - start)
        page.wait_for_timeout(300)  # the rerun's other elements settle before the next step
    return times


def report(name: str, ms: list[float]) -> float:
    ms = sorted(ms)
    median = statistics.median(ms)
    p90 = ms[min(len(ms) - 1, int(0.9 * len(ms)))]
    print(f"{name}: median {median:.1f} ms, p90 {p90:.1f} ms over {len(ms)} steps")
    return median


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--weights", type=Path, default=ROOT / "weights")
    parser.add_argument("--volume", type=Path, default=None, help="volume file (default phantom)")
    parser.add_argument("--base", default=None, help="also measure this commit's viewer")
    args = parser.parse_args()
    if not CHROMIUM.is_file():
        raise SystemExit(
            f"{CHROMIUM} not found: install Debian's chromium (apt-get install chromium)"
        )
    vol = volume(args.volume)
    print(f"volume {'x'.join(map(str, vol.data.shape))}, {os.cpu_count()} CPUs")
    with tempfile.TemporaryDirectory() as tmp:
        upload = args.volume
        if upload is None:
            import nibabel as nib

            upload = Path(tmp) / "phantom.nii.gz"
            img = nib.Nifti1Image(vol.data.astype(np.float32), vol.affine)
            upload.write_bytes(gzip.compress(img.to_bytes(), compresslevel=1))
        browser_ms, scan_s = browser_step_ms(upload, args.weights, args.steps)
        base_ms = None
        if args.base:
            tree = Path(tmp) / "base"
            subprocess.run(
                ["git", "worktree", "add", "--detach", str(tree), args.base],
                cwd=ROOT, check=True, capture_output=True,
            )  # fmt: skip
            try:
                base_ms, _ = browser_step_ms(upload, args.weights, args.steps, tree, base=True)
            finally:
                subprocess.run(["git", "worktree", "remove", "--force", str(tree)], cwd=ROOT)
    print(f"upload to the three planes drawn: {scan_s:.2f} s")
    new = report("browser: slider key -> new axial pixels", browser_ms)
    if base_ms is not None:
        old = report(f"base {args.base}: slider key -> new axial image (server rerun)", base_ms)
        print(f"ratio new / base: {new / old:.3f}")
    print(f"target <= 150 ms per step: {'meets' if new <= 150 else 'MISSES'}")


if __name__ == "__main__":
    main()
