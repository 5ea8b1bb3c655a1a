"""Before / after a change: ``bench_infer.py`` of two commits, interleaved in one run.

A refactor should leave inference speed unchanged, and "unchanged" is only measurable in one run on
one machine: the processor, its load and its clock differ from run to run. This script checks out
``--base`` (default ``HEAD~1``) into a temporary git worktree, then runs ``bench_infer.py`` of that
checkout and of the working tree alternately (A B A B ..., ``--rounds`` pairs), each in its own
process with the same arguments and ``--out`` to a temporary file, and prints per round and as
medians the "ours" seconds per network and in total, and the ratio new / old. A ratio within the
spread of the rounds is noise.

Usage::

    .venv/bin/python benchmarks/bench_commits.py --base b657aa2 --rounds 5 -- \\
        --weights weights --shape 32 40 32 --repeats 7 --warmup 2
    # a base older than the cards and the layer-3 default map: random init, the old map pinned
    .venv/bin/python benchmarks/bench_commits.py --base 36e6a56 --new-args "--cam-method \
        gradcam-l4" -- --shape 32 40 32 --repeats 7 --warmup 2
"""

from __future__ import annotations

import argparse
import json
import shlex
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BENCH = Path("benchmarks") / "bench_infer.py"


def _run(checkout: Path, args: list[str], out: Path) -> dict:
    """One ``bench_infer.py`` process of ``checkout``; its JSON report."""
    cmd = [sys.executable, str(checkout / BENCH), *args, "--out", str(out)]
    subprocess.run(cmd, cwd=checkout, check=True, stdout=subprocess.DEVNULL)
    return json.loads(out.read_text())


def _weights_args(args: list[str]) -> list[str]:
    """``--weights`` made absolute, so both checkouts read the same cards."""
    out = list(args)
    if "--weights" in out:
        i = out.index("--weights") + 1
        out[i] = str(Path(out[i]).resolve())
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--base", default="HEAD~1", help="the commit to compare with (default HEAD~1)")
    ap.add_argument("--rounds", type=int, default=5, help="pairs of runs, interleaved")
    ap.add_argument(
        "--new-args",
        default="",
        help="extra bench_infer.py args for the working tree only, e.g. '--cam-method gradcam-l4' "
        "to pin a setting whose default changed on purpose to the base's behaviour",
    )
    ap.add_argument("bench_args", nargs=argparse.REMAINDER, help="-- then bench_infer.py args")
    args = ap.parse_args(argv)
    bench_args = _weights_args([a for a in args.bench_args if a != "--"])
    new_args = shlex.split(args.new_args)
    rows: dict[str, list[dict[str, float]]] = {"old": [], "new": []}
    with tempfile.TemporaryDirectory(prefix="bench-commits-") as tmp:
        old = Path(tmp) / "old"
        subprocess.run(
            ["git", "-C", str(ROOT), "worktree", "add", "--detach", str(old), args.base],
            check=True,
            capture_output=True,
        )
        try:
            for r in range(args.rounds):
                for name, checkout, extra in (("old", old, []), ("new", ROOT, new_args)):
                    report = _run(checkout, [*bench_args, *extra], Path(tmp) / f"{name}.json")
                    rows[name].append(report["fast"])
                print(
                    f"round {r + 1}: old {rows['old'][-1]['total']:.4f} s, "
                    f"new {rows['new'][-1]['total']:.4f} s",
                    flush=True,
                )
        finally:
            subprocess.run(
                ["git", "-C", str(ROOT), "worktree", "remove", "--force", str(old)], check=False
            )
    pinned = f"; new side also {args.new_args}" if args.new_args else ""
    print(f"\nbase {args.base}, {args.rounds} interleaved rounds{pinned}, medians (s, 'ours'):")
    print("| network | old | new | new / old | spread of old (min-max) |")
    print("|---|---|---|---|---|")
    for key in rows["old"][0]:
        o = [row[key] for row in rows["old"]]
        n = [row[key] for row in rows["new"]]
        mo, mn = statistics.median(o), statistics.median(n)
        print(f"| {key} | {mo:.4f} | {mn:.4f} | {mn / mo:.3f} | {min(o):.4f}-{max(o):.4f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
