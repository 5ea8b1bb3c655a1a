"""Benchmarks: the stored cross-fold results of our networks, and the published figures apart.

Reads ``<weights>/benchmarks/<arch>.json`` (per-fold metrics, confusion matrices, ROC points,
training curves), ``heldout/<arch>.json`` (``python -m tumortrace evaluate`` on a cohort the
networks never saw), ``inference.json`` (CPU cost), ``explanations.json`` (``explain-eval``: do
the maps point at lesions of known extent?) and ``published.json`` (figures transcribed from two
papers). Nothing is computed from a model here; the page only displays stored files.
"""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import streamlit as st

import app_state
from tumortrace import figures, tables, viz
from tumortrace.config import CLASSES
from tumortrace.metrics import mean_std
from tumortrace.networks import display_name
from tumortrace.provenance import verify

ROOT = app_state.ROOT
NOT_ARCH = {"inference", "published", "explanations"}


@st.cache_data(show_spinner=False, max_entries=32)
def _read_json(path: str, mtime_ns: int) -> dict | None:
    """A JSON file as a dict, or None when unreadable (``mtime_ns`` only keys the cache)."""
    try:
        obj = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return obj if isinstance(obj, dict) else None


def _load(path: Path) -> dict | None:
    return _read_json(str(path), path.stat().st_mtime_ns) if path.is_file() else None


def _benchmarks(folder: Path) -> tuple[dict[str, dict], list[str]]:
    """``{arch: record}`` of every readable benchmark file, and the names of unreadable ones."""
    benches: dict[str, dict] = {}
    broken: list[str] = []
    for path in sorted(folder.glob("*.json")) if folder.is_dir() else []:
        if path.stem in NOT_ARCH or path.stem.endswith(".splits"):
            continue
        record = _load(path)
        if record is None or not isinstance(record.get("folds"), list):
            broken.append(path.name)
            continue
        benches[str(record.get("arch", path.stem))] = record
    order = [a for a in ("r2plus1d", "mc3", "r3d") if a in benches]
    return {a: benches[a] for a in order + [a for a in benches if a not in order]}, broken


@st.cache_data(show_spinner=False, max_entries=16)
def _verify(bench_path: str, card_path: str, stamp: tuple) -> tuple[bool, str]:
    """Seal check of one benchmark against its card and weights (``stamp`` keys the cache)."""
    record = _load(Path(bench_path)) or {}
    check = verify(record, card_path)
    return check.verified, check.reason


def _unverified(folder: Path, benches: dict[str, dict]) -> dict[str, str]:
    """``{arch: reason}`` of benchmarks whose seal does not match their card and weights."""
    out = {}
    for arch in benches:
        paths = [folder / f"{arch}.json", folder.parent / f"{arch}.json"]
        paths.append(folder.parent / f"{arch}.safetensors")
        stamp = tuple(p.stat().st_mtime_ns if p.is_file() else 0 for p in paths)
        ok, reason = _verify(str(paths[0]), str(paths[1]), stamp)
        if not ok:
            out[arch] = reason
    return out


def _heldout(folder: Path, archs) -> dict[str, dict]:
    """``{arch: evaluate report}`` of the readable ``<folder>/heldout/<arch>.json`` files."""
    reports = {a: _load(folder / "heldout" / f"{a}.json") for a in archs}
    return {a: r for a, r in reports.items() if r is not None}


def _heldout_section(benches: dict[str, dict], heldout: dict[str, dict]) -> None:
    """The held-out cohort's scores beside the cross-fold means, with what the gap means."""
    st.header("Held-out cohort")
    report = next(iter(heldout.values()))
    support = [sum(row) for row in report.get("confusion", []) if isinstance(row, list)]
    cohort = ", ".join(
        f"{viz.CLASS_NAMES.get(c, c)} {n}" for c, n in zip(CLASSES, support, strict=False)
    )
    st.caption(
        "Measured by TumorTrace: the shipped weights scored with `python -m tumortrace evaluate` "
        f"on a cohort none of them saw in training (`{report.get('manifest', '?')}`: "
        f"{cohort or 'sizes not stored'}). Plain accuracy depends on the class balance: when a "
        "cohort holds more of a class the network often misses (LGG here) than the cross-"
        "validation folds did, accuracy drops even without overfitting. Two like-for-like "
        "comparisons: *accuracy at training mix* weights the held-out per-class recalls by the "
        "training cohort's class shares (what this cohort would score at the folds' balance), "
        "and balanced accuracy (mean recall over classes) does not depend on the balance at all. "
        "Δ: held-out minus cross-fold, in percentage points."
    )
    table = tables.heldout_table(benches, heldout)
    st.dataframe(table, hide_index=True, height=_rows_height(len(table)))


def _rows_height(n_rows: int) -> int:
    """Pixel height that shows a dataframe's ``n_rows`` rows without an inner scroll bar."""
    return 35 * (n_rows + 1) + 3


def _data_line(bench: dict) -> str:
    data = bench.get("data", {})
    counts = ", ".join(
        f"{viz.CLASS_NAMES.get(c, c)} {n}" for c, n in data.get("counts", {}).items()
    )
    shape = "×".join(str(s) for s in bench.get("input_shape", []))
    spacing = "×".join(str(s) for s in bench.get("spacing_mm", []))
    return (
        f"data: **{data.get('source', 'unknown')}** ({counts or 'counts not stored'}) · "
        f"{len(bench.get('folds', []))} folds · input D×H×W {shape or '?'} at {spacing or '?'} mm"
    )


def _network_tab(arch: str, bench: dict) -> None:
    """Per-fold table, confusion matrix, ROC curves and training curves of one network."""
    folds = bench["folds"]
    st.markdown(_data_line(bench))
    st.dataframe(tables.per_fold_table(bench), hide_index=True)
    labels = ["all folds", *[f"fold {f.get('fold', i)}" for i, f in enumerate(folds)]]
    choice = st.selectbox("Folds shown", labels, key=f"bench_fold_{arch}")
    chosen = folds if choice == "all folds" else [folds[labels.index(choice) - 1]]
    aucs = {
        c: mean_std(tables.fold_values(chosen, "auc", c))[0]
        for c in CLASSES
        if mean_std(tables.fold_values(chosen, "auc", c))[2]
    }
    c1, c2 = st.columns(2)
    title = "summed over folds" if len(chosen) > 1 else choice
    c1.plotly_chart(
        figures.confusion_figure(
            tables.summed_confusion(chosen), title=f"Confusion matrix ({title})"
        ),
        key=f"cm_{arch}",
    )
    c2.plotly_chart(
        figures.roc_figure([f.get("roc", {}) for f in chosen], aucs=aucs, title="ROC, one vs rest"),
        key=f"roc_{arch}",
    )
    curves = [f.get("curves", []) for f in chosen]
    if any(curves):
        st.plotly_chart(
            figures.training_curves_figure(curves, title="Training curves"), key=f"curves_{arch}"
        )
    else:
        st.caption("No training curves stored.")


def _explanations(doc: dict) -> None:
    """The explain-eval scores: does each network's map point at the lesion?"""
    st.header("Explanations")
    n = doc.get("n_lesion_cases", "?")
    st.caption(
        f"Measured by TumorTrace with `python -m tumortrace explain-eval` on "
        f"**{doc.get('cohort') or doc.get('manifest', '?')}** ({n} lesion cases with known "
        "lesion masks; healthy cases have no lesion to point at). *Max in lesion*: the pointing "
        "game, is the map's maximum inside the lesion? *Energy in lesion*: the share of the map's "
        "mass inside it, against the lesion's share of the brain (what a map blind to the lesion "
        "would give); *concentration* is their ratio per case (median; 1 = chance). Seconds: one "
        "network's forward, backward and map per analysis."
    )
    target = st.radio(
        "Map of",
        ["true", "predicted"],
        horizontal=True,
        key="bench_expl_target",
        format_func=lambda t: "the true class" if t == "true" else "the predicted class",
    )
    table = tables.explanations_table(doc, target)
    if table.empty:
        st.info("This explanations file has no summary rows for that target.")
        return
    st.dataframe(table, hide_index=True, height=_rows_height(min(len(table), 30)))


def _published(path: Path) -> None:
    """The two papers' figures, in their own section, never merged with our tables."""
    st.header("Published results (not measured here)")
    pub = _load(path)
    if pub is None:
        st.info(f"No readable published-results file at {path}.")
        return
    st.warning(
        "Published on BraTS (T1ce) + IXI (T1) by other authors, with their own data splits. "
        "**Not measured by TumorTrace**; shown for context only.",
        icon=":material/menu_book:",
    )
    sources = pub.get("sources", {})
    st.markdown("##### Seed paper, Tables 1 and 2 (per class, test set)")
    st.caption(sources.get("seed_paper", ""))
    seed = pub.get("seed_paper", {})
    cols = st.columns(max(1, len(seed)))
    for col, (arch, record) in zip(cols, seed.items(), strict=False):
        df = pd.DataFrame.from_dict(record.get("per_class", {}), orient="index")
        df.index = [viz.CLASS_NAMES.get(c, c) for c in df.index]
        col.markdown(f"**{display_name(arch)}**")
        col.dataframe(df)
    chat = pub.get("chatterjee2022", {})
    st.markdown("##### Chatterjee et al. 2022 (Scientific Reports)")
    st.caption(sources.get("chatterjee2022", ""))
    best = chat.get("best", {})
    if best:
        m1, m2, m3 = st.columns(3)
        pre = "pre-trained" if best.get("pretrained") else "from scratch"
        m1.metric("Best model", f"{display_name(best.get('model'))}")
        m1.caption(pre)
        m2.metric("Accuracy (published)", f"{100 * best.get('accuracy', float('nan')):.2f} %")
        m3.metric("Macro-F1 (published)", f"{best.get('macro_f1', float('nan')):.4f}")
    order = chat.get("per_class_order", ["precision", "recall", "specificity", "f1"])
    rows = []
    for variant, per_class in chat.get("per_class", {}).items():
        arch, _, init = variant.rpartition("_")
        for cls, values in per_class.items():
            row = {"network": display_name(arch), "weights": init}
            row["class"] = viz.CLASS_NAMES.get(cls, cls)
            row.update(dict(zip(order, values, strict=False)))
            rows.append(row)
    if rows:
        st.dataframe(pd.DataFrame(rows), hide_index=True, height=_rows_height(len(rows)))


app_state.require_app("pages/benchmarks.py")
st.title("Benchmarks")
folder = app_state.weights_dir() / "benchmarks"
benches, broken = _benchmarks(folder)
if broken:
    st.error(
        f"Unreadable benchmark files in {folder}: {', '.join(broken)}. Expected the JSON layout "
        "written by train.py (see docs/ARCHITECTURE.md); re-run training or remove them."
    )
if not benches:
    st.info(
        f"No benchmark files in `{folder}` yet. They are written by `python train.py --arch NAME` "
        "(one `<arch>.json` per network, with every fold's metrics).",
        icon=":material/info:",
    )
else:
    st.caption(
        "Measured by TumorTrace: stratified, subject-grouped cross-validation; each fold's "
        "metrics are on its own held-out test part. Mean ± sample standard deviation over folds."
    )
    unverified = _unverified(folder, benches)
    for arch, reason in unverified.items():
        st.warning(
            f"**{display_name(arch)}: unverified.** Its benchmark does not match the weights and "
            f"card in this folder ({reason}); its figures below may not describe these weights.",
            icon=":material/gpp_maybe:",
        )
    st.header("Summary")
    summary = tables.summary_table(benches)
    n_overall = len(tables.OVERALL_METRICS)
    st.dataframe(summary.iloc[:n_overall], height=_rows_height(n_overall))
    st.markdown("**Per class** (one class against the rest)")
    st.dataframe(summary.iloc[n_overall:], height=_rows_height(len(summary) - n_overall))
    heldout = _heldout(folder, benches)
    if heldout:
        _heldout_section(benches, heldout)
    st.header("Per network")
    tabs = st.tabs(
        [display_name(a) + (" (unverified)" if a in unverified else "") for a in benches]
    )
    for tab, (arch, bench) in zip(tabs, benches.items(), strict=True):
        with tab:
            _network_tab(arch, bench)
    st.header("Cost")
    inference = _load(folder / "inference.json")
    st.dataframe(tables.cost_table(benches, inference), hide_index=True)
    if inference:
        shape = "×".join(str(s) for s in inference.get("shape", []))
        st.caption(
            f"CPU seconds per volume from benchmarks/bench_infer.py at D×H×W {shape}, "
            f"{inference.get('threads', '?')} threads; 'fast' = {inference.get('settings', {})}."
        )
    else:
        st.caption("No inference.json: run `python benchmarks/bench_infer.py` for CPU timings.")

explanations = _load(folder / "explanations.json")
if explanations:
    _explanations(explanations)

published = folder / "published.json"
_published(published if published.is_file() else ROOT / "weights" / "benchmarks" / "published.json")
