"""Load test: N browser sessions analyse a sample at once against one local app server.

Starts ``streamlit run app.py`` on 127.0.0.1 (a free port; nothing else is contacted), opens
``--sessions`` headless Chromium sessions (Debian's ``/usr/bin/chromium`` through Playwright) that
each pick the same bundled sample at the same moment, and waits for every "Ensemble verdict".
Prints per-session times and the server's memory (RSS of the server and its children: before the
sessions, peak during, after). Bounded: at most 16 sessions, each waits at most ``--timeout`` s.

    .venv/bin/python benchmarks/load_test.py --sessions 8
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import re
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import local_app  # noqa: E402

CHROMIUM = Path("/usr/bin/chromium")
ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--no-first-run"]


def _tree_rss_mib(pid: int) -> float:
    """RSS of ``pid`` and all its descendants, MiB (from /proc)."""
    total, todo = 0, [pid]
    while todo:
        p = todo.pop()
        try:
            for line in Path(f"/proc/{p}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1])
            for task in Path(f"/proc/{p}/task").iterdir():
                kids = (task / "children").read_text().split()
                todo += [int(k) for k in kids]
        except (OSError, ValueError):
            continue
    return total / 1024


class _Sampler(threading.Thread):
    def __init__(self, pid: int) -> None:
        super().__init__(daemon=True)
        self.pid, self.peak, self.stop = pid, 0.0, threading.Event()

    def run(self) -> None:
        while not self.stop.is_set():
            self.peak = max(self.peak, _tree_rss_mib(self.pid))
            time.sleep(0.2)


async def _session(browser, url: str, i: int, start: asyncio.Event, timeout_s: float):
    from playwright.async_api import expect

    context = await browser.new_context(viewport={"width": 1400, "height": 1800})
    page = await context.new_page()
    page.set_default_timeout(timeout_s * 1000)
    try:
        await page.goto(url)
        await expect(page.get_by_role("heading", name="Analyze a brain MRI")).to_be_visible(
            timeout=timeout_s * 1000
        )
        await start.wait()
        t0 = time.perf_counter()
        await page.get_by_role("combobox", name="Sample volume").click()
        await page.get_by_role("option", name=re.compile("high-grade glioma")).click()
        await expect(page.get_by_text(re.compile("Ensemble verdict"))).to_be_visible(
            timeout=timeout_s * 1000
        )
        verdict = await page.get_by_text(re.compile("Ensemble verdict")).first.inner_text()
        return i, time.perf_counter() - t0, "ok", " ".join(verdict.split())[:60]
    except Exception as err:  # a timed-out session is a row, not a crash of the script
        return i, float("nan"), f"failed: {type(err).__name__}", ""
    finally:
        await context.close()


async def _run(url: str, n: int, timeout_s: float):
    from playwright.async_api import async_playwright

    async with async_playwright() as pw:
        browser = await pw.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=ARGS)
        start = asyncio.Event()
        tasks = [asyncio.create_task(_session(browser, url, i, start, timeout_s)) for i in range(n)]
        await asyncio.sleep(5)  # every session has loaded the page (or is about to)
        start.set()
        rows = await asyncio.gather(*tasks)
        await browser.close()
        return rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sessions", type=int, default=8)
    parser.add_argument("--timeout", type=float, default=600.0, help="per session, seconds")
    parser.add_argument("--weights", default=str(ROOT / "weights"))
    args = parser.parse_args()
    if not 1 <= args.sessions <= 16:
        parser.error("--sessions must be between 1 and 16")
    if not CHROMIUM.is_file():
        print(f"error: {CHROMIUM} not found (apt-get install chromium)", file=sys.stderr)
        return 2
    stack = contextlib.ExitStack()
    try:
        app = stack.enter_context(local_app.serve(args.weights))
    except (RuntimeError, TimeoutError) as err:
        print(f"error: the app server did not start: {err}", file=sys.stderr)
        return 2
    with stack:
        url, server = app.url, app.proc
        before = _tree_rss_mib(server.pid)
        sampler = _Sampler(server.pid)
        sampler.start()
        t0 = time.perf_counter()
        rows = asyncio.run(_run(url, args.sessions, args.timeout))
        wall = time.perf_counter() - t0
        sampler.stop.set()
        sampler.join()
        after = _tree_rss_mib(server.pid)
    print(
        f"# {args.sessions} sessions against {url}, {os.cpu_count()} CPUs, weights {args.weights}"
    )
    print("| session | seconds to verdict | status | verdict |")
    print("|---|---|---|---|")
    for i, secs, status, verdict in sorted(rows):
        print(f"| {i + 1} | {secs:.1f} | {status} | {verdict} |")
    ok = [r for r in rows if r[2] == "ok"]
    print(f"# {len(ok)}/{len(rows)} finished; wall {wall:.1f} s (including 5 s to load pages)")
    print(f"# server RSS (with children): before {before:.0f} MiB, peak {sampler.peak:.0f} MiB, "
          f"after {after:.0f} MiB")  # fmt: skip
    return 0 if len(ok) == len(rows) else 1


if __name__ == "__main__":
    sys.exit(main())
