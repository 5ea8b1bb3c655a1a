"""Drives a running TumorTrace app in Debian's chromium: picks each bundled sample, screenshots it.

For checking a deployment by eye (the demo-weights acceptance): start the app with the README's
command (``bash scripts/app.sh --server.port 8501 --server.headless true``), then run::

    .venv/bin/python scripts/screenshot_samples.py --url http://127.0.0.1:8501 --out test-artifacts

For each sample it waits for the three predictions and their Grad-CAM panels, saves
``<out>/sample-<class>.png`` (the whole page, Grad-CAM row included) and prints each network's
prediction line, the Grad-CAM captions (peak inside or outside the true lesion), where the viewer
opened and whether that voxel lies in the sample's true lesion (``samples/<class>_lesion.nii.gz``).
Exits 1 when a sample does not show three predictions with overlays, or the page shows an
exception.
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

SAMPLES: dict[str, str] = {
    "healthy": "Real brain (IXI049), healthy",
    "lgg": "Same brain + synthetic low-grade glioma (LGG)",
    "hgg": "Same brain + synthetic high-grade glioma (HGG)",
    "real_hgg": "Real glioblastoma (TCGA-02-0003), T1 post-contrast, 6.5 mm slices",
}
CHROMIUM = "/usr/bin/chromium"
TIMING = "Time per network"
# true once the page shows a timing caption other than ``before`` and no spinner, running
# indicator or stale (greyed, from the previous run) element is left
FINISHED_JS = """({before, timing}) => {
  const caption = [...document.querySelectorAll('[data-testid="stCaptionContainer"]')]
    .map((e) => e.innerText).find((t) => t.includes(timing));
  return caption !== undefined && caption !== before
    && !document.querySelector('[data-testid="stSpinner"]')
    && !document.querySelector('[data-testid="stStatusWidget"]')
    && !document.querySelector('[data-stale="true"]');
}"""
ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--no-first-run"]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--url", default="http://127.0.0.1:8501")
    parser.add_argument("--out", type=Path, default=Path("test-artifacts"))
    parser.add_argument("--timeout-s", type=float, default=300.0, help="per sample")
    args = parser.parse_args(argv)

    from playwright.sync_api import TimeoutError as PlaywrightTimeout
    from playwright.sync_api import expect, sync_playwright

    args.out.mkdir(parents=True, exist_ok=True)
    failures = 0
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, headless=True, args=ARGS)
        page = browser.new_page(viewport={"width": 1600, "height": 2400})
        timeout_ms = args.timeout_s * 1000
        page.set_default_timeout(timeout_ms)
        expect.set_options(timeout=timeout_ms)
        page.goto(args.url)
        expect(page.get_by_role("heading", name="Analyze a brain MRI")).to_be_visible()
        for label, option in SAMPLES.items():
            before = _timing_caption(page)
            page.get_by_role("combobox", name="Sample volume").click()
            page.get_by_role("option", name=option, exact=True).click()
            try:
                expect(page.get_by_text(f"{label}.nii.gz (bundled sample)")).to_be_visible()
                # the analysis of this sample is on screen once the timing caption is a new one
                # (each run measures its own times) and nothing is left running or stale
                page.wait_for_function(
                    FINISHED_JS, arg={"before": before, "timing": TIMING}, timeout=timeout_ms
                )
                expect(page.get_by_text(re.compile(r"^Prediction:"))).to_have_count(3)
                expect(page.get_by_text(re.compile(r"· Grad-CAM for "))).to_have_count(3)
                expect(page.locator(".js-plotly-plot")).to_have_count(3)
            except (AssertionError, PlaywrightTimeout) as err:
                print(f"{label}: FAILED ({err})", file=sys.stderr)
                failures += 1
            page.wait_for_load_state("networkidle")
            page.wait_for_timeout(1500)  # the viewer has moved to where it opens
            shot = args.out / f"sample-{label}.png"
            # Streamlit scrolls inside its own frame: a tall window shows the whole page
            page.set_viewport_size({"width": 1600, "height": 4200})
            page.wait_for_timeout(1500)
            page.screenshot(path=str(shot), full_page=True)
            page.set_viewport_size({"width": 1600, "height": 2400})
            preds = [p.inner_text() for p in page.get_by_text(re.compile(r"^Prediction:")).all()]
            verdict = page.get_by_text(re.compile("Ensemble verdict")).first.inner_text()
            print(f"{label}: {shot}")
            print(f"  {verdict.strip()}")
            for line in preds:
                print(f"  {line.strip()}")
            for line in page.get_by_text(re.compile(r"· Grad-CAM for ")).all():
                print(f"  {line.inner_text().strip()}")
            print(f"  {_opened(page, label)}")
        if page.locator("[data-testid='stException']").count():
            print("the page shows an exception", file=sys.stderr)
            failures += 1
        browser.close()
    return 1 if failures else 0


def _opened(page, label: str) -> str:
    """Where the viewer's planes cross (its canvases' slice numbers), and whether that voxel is
    in the sample's true lesion."""
    from tumortrace.io import load_volume

    said = page.get_by_text(re.compile(r"^Opened on "))
    reason = said.first.inner_text().strip() if said.count() else "Opened at the centre."
    xyz = tuple(
        int(page.locator(f"canvas[data-plane={plane}]").get_attribute("data-slice")) - 1
        for plane in ("sagittal", "coronal", "axial")
    )
    mask = ROOT / "samples" / f"{label}_lesion.nii.gz"
    if not mask.is_file():
        return f"{reason} Voxel {xyz}."
    inside = bool(load_volume(mask).data[xyz] > 0.5)
    return f"{reason} Voxel {xyz}: {'inside' if inside else 'outside'} the true lesion."


def _timing_caption(page) -> str | None:
    """The text of the analysis timing caption on screen now, or None before the first analysis."""
    caption = page.get_by_test_id("stCaptionContainer").filter(has_text=TIMING)
    return caption.first.inner_text() if caption.count() else None


if __name__ == "__main__":
    sys.exit(main())
