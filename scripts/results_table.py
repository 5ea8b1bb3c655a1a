"""Writes the README's results section from the stored JSON, so the README never drifts from it.

Reads ``weights/benchmarks/<arch>.json`` (cross-validation, written by ``train.py``),
``weights/benchmarks/heldout/<arch>.json`` (``python -m tumortrace evaluate --format json`` on a
synthetic cohort made with another seed, written by ``scripts/heldout.sh``) and
``weights/benchmarks/real_scans.json`` (``scripts/real_scan_check.py``) and
``weights/benchmarks/published.json`` (the papers' figures), renders Markdown tables (mean ± std
over the folds) and replaces the text between the ``<!-- results:start -->`` and
``<!-- results:end -->`` markers in ``README.md``.

Usage::

    .venv/bin/python scripts/results_table.py            # rewrite README.md
    .venv/bin/python scripts/results_table.py --check    # exit 1 if README.md is out of date
    .venv/bin/python scripts/results_table.py --print    # print the section only
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tumortrace.benchmark_files import (  # noqa: E402
    heldout_metrics,
    read_benchmarks,
    read_heldout,
    read_json,
)
from tumortrace.config import CLASSES  # noqa: E402
from tumortrace.networks import display_name, is_baseline  # noqa: E402
from tumortrace.numformat import fmt, fmt_mean_std  # noqa: E402
from tumortrace.tables import (  # noqa: E402
    comparison_table,
    data_description,
    real_scans_table,
    real_scans_what,
)

START, END = "<!-- results:start -->", "<!-- results:end -->"


def _pct(stat: dict[str, Any] | None) -> str:
    """``{"mean", "std"}`` of a fraction as ``"91.2 ± 2.3"`` (percent), or ``"—"``."""
    stat = stat or {}
    return fmt_mean_std(stat.get("mean"), stat.get("std"), "percent")


def _f(stat: dict[str, Any] | None) -> str:
    """``{"mean", "std"}`` of a score in [0, 1] as ``"0.912 ± 0.023"``, or ``"—"``."""
    stat = stat or {}
    return fmt_mean_std(stat.get("mean"), stat.get("std"), "score")


def load_benchmarks(folder: Path) -> dict[str, dict[str, Any]]:
    """``{arch: record}`` of the folder's benchmark files, in display order.

    Raises:
        SystemExit: a benchmark file is unreadable (the README must not silently drop a network).
    """
    benches, broken = read_benchmarks(folder)
    if broken:
        raise SystemExit(f"error: unreadable benchmark files in {folder}: {', '.join(broken)}")
    return benches


def _epochs(bench: dict[str, Any]) -> str:
    """Epochs each fold ran (early stopping may end a fold before the maximum), e.g. ``"6/4/6"``."""
    return "/".join(str(len(f.get("curves") or [])) for f in bench.get("folds", []))


def _diff(a: float | None, b: float | None) -> str:
    """``a - b`` in percentage points, signed, or ``"—"``."""
    return fmt(None if a is None or b is None else a - b, "points")


def render(
    benches: dict[str, dict[str, Any]],
    heldout: dict[str, dict[str, Any]],
    published: dict[str, Any] | None,
    real_scans: dict[str, Any] | None = None,
) -> str:
    """The README results section (Markdown, without the markers). The networks' table lists the
    three networks; when baselines are stored, a comparison table follows with every method (the
    Benchmarks page's rows, :func:`tumortrace.tables.comparison_table`)."""
    networks = {a: b for a, b in benches.items() if not is_baseline(a)}
    lines = _networks(networks)
    if len(benches) > len(networks):
        lines += _comparison(benches, real_scans)
    if real_scans:
        lines += _real_scans(real_scans)
    if heldout:
        lines += _heldout(heldout, networks)
    if published:
        lines += _published(published)
    return "\n".join(lines).rstrip() + "\n"


def _networks(benches: dict[str, dict[str, Any]]) -> list[str]:
    """The networks' cross-validation table (or a line saying none is stored yet)."""
    if not benches:
        return ["No trained weights are stored in `weights/benchmarks/` yet.", ""]
    first = next(iter(benches.values()))
    lines = [
        "**Measured here**: one `python train.py --arch NAME ...` per network (each card "
        f"holds its exact command), {len(first['folds'])}-fold cross-validation grouped by "
        f"subject (by base brain where the manifest has groups) on "
        f"**{data_description(first)}**, training runtime `{first.get('runtime', 'cpu')}`. "
        "Test-part figures, mean ± std over the folds (percent for accuracies and recall); "
        "epochs run per fold.",
        "",
        "| network | accuracy | balanced acc. | macro-F1 | LGG recall | LGG F1 | HGG F1 "
        "| healthy F1 | AUC (macro) | epochs | train min | shipped |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for arch, b in benches.items():
        s = b.get("summary", {})
        minutes = sum(f.get("train_seconds", 0.0) for f in b["folds"]) / 60
        lines.append(
            f"| {display_name(arch)} | {_pct(s.get('accuracy'))} "
            f"| {_pct(s.get('balanced_accuracy'))} | {_f(s.get('macro_f1'))} "
            f"| {_pct(s.get('lgg_recall'))} | {_f(s.get('lgg_f1'))} | {_f(s.get('hgg_f1'))} "
            f"| {_f(s.get('healthy_f1'))} | {_f(s.get('auc_macro'))} | {_epochs(b)} "
            f"| {fmt(minutes, 'quantity')} | {b.get('shipped', '?')} |"
        )
    lines.append("")
    return lines


def _heldout(heldout: dict[str, dict[str, Any]], benches: dict[str, dict[str, Any]]) -> list[str]:
    """The held-out cohort against the networks' cross-fold means (percentage points)."""
    any_report = next(iter(heldout.values()))
    support = [sum(row) for row in any_report.get("confusion", [])]
    cohort = ", ".join(f"{n} {c}" for c, n in zip(CLASSES, support, strict=False))
    train_counts = (next(iter(benches.values()), {}).get("data") or {}).get("counts") or {}
    lgg_share = {
        "held-out": support[CLASSES.index("lgg")] / sum(support) if sum(support) else None,
        "training": train_counts.get("lgg", 0) / sum(train_counts.values())
        if train_counts
        else None,
    }
    shares = " and ".join(
        f"{100 * v:.0f}% of the {k} cohort" for k, v in lgg_share.items() if v is not None
    )
    lines = [
        "**Generalisation** (measured here): the shipped weights scored with "
        "`python -m tumortrace evaluate` on a new synthetic cohort made with another seed "
        f"(`{any_report.get('manifest', '?')}`: {cohort}; `scripts/heldout.sh`), against "
        f"their cross-fold means. LGG is {shares}, so plain accuracy moves with LGG recall "
        "even without any overfitting. Two like-for-like comparisons: *at training mix* is "
        "the held-out per-class recalls weighted by the training cohort's class shares "
        "(`accuracy_at_training_mix` in the report: the accuracy this cohort would give at "
        "the folds' class balance), and balanced accuracy (mean recall) does not depend on "
        "the class balance. Differences in percentage points (held-out minus cross-fold).",
        "",
        "| network | accuracy held-out | cross-fold | difference | at training mix "
        "| difference | balanced acc. held-out | cross-fold | difference "
        "| LGG recall held-out | cross-fold |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for arch, report in heldout.items():
        m = heldout_metrics(report)
        s = (benches.get(arch) or {}).get("summary") or {}
        acc, bal = m.get("accuracy"), m.get("balanced_accuracy")
        mix = report.get("accuracy_at_training_mix")
        cv_acc, cv_bal = (s.get(k, {}).get("mean") for k in ("accuracy", "balanced_accuracy"))
        lgg = (m.get("per_class", {}).get("lgg") or {}).get("recall")
        lines.append(
            f"| {display_name(arch)} | {fmt(acc, 'percent')} | {_pct(s.get('accuracy'))} "
            f"| {_diff(acc, cv_acc)} | {fmt(mix, 'percent')} | {_diff(mix, cv_acc)} "
            f"| {fmt(bal, 'percent')} "
            f"| {_pct(s.get('balanced_accuracy'))} | {_diff(bal, cv_bal)} "
            f"| {fmt(lgg, 'percent')} | {_pct(s.get('lgg_recall'))} |"
        )
    lines.append("")
    return lines


def _markdown(table) -> list[str]:
    """A DataFrame of text cells as a Markdown table."""
    lines = ["| " + " | ".join(table.columns) + " |", "|" + "---|" * len(table.columns)]
    lines += [
        "| " + " | ".join(str(v) for v in row) + " |" for row in table.itertuples(index=False)
    ]
    return lines


def _real_scans(doc: dict[str, Any]) -> list[str]:
    """The real-scan check of the shipped weights (``real_scans.json``), labelled as such."""
    head = "**Real scans** (measured here, `scripts/real_scan_check.py`; not cross-validation): "
    return [head + real_scans_what(doc), "", *_markdown(real_scans_table(doc)), ""]


def _comparison(benches: dict[str, dict[str, Any]], real_scans: dict[str, Any] | None) -> list[str]:
    """The networks and the baselines on the same folds: the Benchmarks page's comparison rows."""
    return [
        "**Networks and baselines** (measured here): every method on the same folds (the "
        "baselines reuse the networks' splits file), the same preprocessing and metrics; test "
        "parts, mean ± std over the folds. Nothing is pretrained. Real gliomas called tumour: "
        "`real_scans.json` (— where not measured); training seconds: all folds together.",
        "",
        *_markdown(comparison_table(benches, real_scans)),
        "",
    ]


def _published(pub: dict[str, Any]) -> list[str]:
    """Published figures on BraTS T1ce + IXI T1, clearly labelled as not measured here.

    With the papers' own decimals: they are transcribed, not measured, so not reformatted.
    """
    lines = [
        "**Published, not measured here** (real BraTS T1ce + IXI T1, the authors' own splits and "
        "full-resolution inputs; the two papers are cited in `weights/benchmarks/published.json`).",
        "",
        "| source | network | accuracy | macro-F1 | LGG F1 | HGG F1 | healthy F1 |",
        "|---|---|---|---|---|---|---|",
    ]
    chat = pub.get("chatterjee2022", {})
    order = chat.get("per_class_order", [])
    f1_at = order.index("f1") if "f1" in order else None
    best = chat.get("best", {})
    for key, per_class in chat.get("per_class", {}).items():
        arch, _, init = key.partition("_")
        acc = f1 = "—"
        if best.get("model") == arch and (init == "pretrained") == bool(best.get("pretrained")):
            acc, f1 = f"{100 * best['accuracy']:.2f}", f"{best['macro_f1']:.4f}"
        cells = [
            f"{per_class[c][f1_at]:.3f}" if f1_at is not None and c in per_class else "—"
            for c in ("lgg", "hgg", "healthy")
        ]
        lines.append(
            f"| Chatterjee et al. 2022 | {display_name(arch)} ({init}) | {acc} | {f1} "
            f"| {' | '.join(cells)} |"
        )
    for arch, rec in pub.get("seed_paper", {}).items():
        pc = rec.get("per_class", {})
        cells = [f"{pc[c]['f1']:.2f}" if c in pc else "—" for c in ("lgg", "hgg", "healthy")]
        lines.append(f"| seed paper | {display_name(arch)} | — | — | {' | '.join(cells)} |")
    lines.append("")
    return lines


def update_readme(readme: str, section: str) -> str:
    """``readme`` with the text between the markers replaced by ``section``.

    Raises:
        ValueError: the markers are missing or out of order.
    """
    start, end = readme.find(START), readme.find(END)
    if start < 0 or end < start:
        raise ValueError(f"README.md must contain {START} ... {END}")
    return readme[: start + len(START)] + "\n" + section + readme[end:]


def build(root: Path = ROOT) -> str:
    """The section rendered from ``<root>/weights/benchmarks``."""
    folder = root / "weights" / "benchmarks"
    benches = load_benchmarks(folder)
    return render(
        benches,
        read_heldout(folder, benches),
        read_json(folder / "published.json"),
        read_json(folder / "real_scans.json"),
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--check", action="store_true", help="exit 1 if README.md is out of date")
    mode.add_argument("--print", action="store_true", help="print the section, write nothing")
    args = parser.parse_args(argv)
    section = build()
    if args.print:
        print(section, end="")
        return 0
    readme_path = ROOT / "README.md"
    readme = readme_path.read_text(encoding="utf-8")
    new = update_readme(readme, section)
    if args.check:
        if new != readme:
            print(
                "README.md results are out of date: run scripts/results_table.py", file=sys.stderr
            )
            return 1
        return 0
    readme_path.write_text(new, encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
