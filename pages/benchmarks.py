"""Benchmarks: the stored cross-fold results of our networks, and the published figures apart.

Reads ``<weights>/benchmarks/<arch>.json`` (per-fold metrics, confusion matrices, ROC points,
training curves), ``heldout/<arch>.json`` (``python -m tumortrace evaluate`` on a cohort the
networks never saw), ``inference.json`` (CPU cost), ``explanations.json`` (``explain-eval``: do
the maps point at lesions of known extent?) and ``published.json`` (figures transcribed from two
papers). Nothing is computed from a model here; the page only displays stored files.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import streamlit as st

import app_state
from tumortrace import figures, tables, viz
from tumortrace.benchmark_files import BenchmarkFolder, folder_stamp, read_folder, read_json
from tumortrace.config import CLASSES
from tumortrace.metrics import mean_std
from tumortrace.networks import display_name, is_baseline, network_names
from tumortrace.provenance import valid_weights_file, verify, weights_path

ROOT = app_state.ROOT


@st.cache_data(show_spinner=False, max_entries=8)
def _read_folder(folder: str, stamp: tuple) -> BenchmarkFolder:
    """Every stored file of the benchmark folder (``stamp`` only keys the cache)."""
    return read_folder(Path(folder))


@st.cache_data(show_spinner=False, max_entries=16)
def _verify(bench_path: str, card_path: str, stamp: tuple) -> tuple[bool, str]:
    """Seal check of one benchmark against its card and weights (``stamp`` keys the cache)."""
    check = verify(read_json(Path(bench_path)) or {}, card_path)
    return check.verified, check.reason


def _benchmark_only(card_path: Path) -> bool:
    """A baseline card whose weights were too large to commit (its notes say so) and are absent."""
    card = read_json(card_path) or {}
    name = card.get("weights_file") or f"{card_path.stem}.safetensors"
    missing = not valid_weights_file(name) or not weights_path(card_path, name).is_file()
    return missing and "not committed" in str(card.get("notes", ""))


def _unverified(folder: Path, benches: dict[str, dict]) -> dict[str, str]:
    """``{arch: reason}`` of benchmarks whose seal does not match their card and weights. A
    baseline's card is in ``<weights>/baselines/``; one shipped as a benchmark only (weights too
    large to commit, as its card says) is not reported."""
    out = {}
    for arch in benches:
        cards = folder.parent / "baselines" if is_baseline(arch) else folder.parent
        if is_baseline(arch) and _benchmark_only(cards / f"{arch}.json"):
            continue
        paths = [folder / f"{arch}.json", cards / f"{arch}.json"]
        name = (read_json(paths[1]) or {}).get("weights_file", "")
        if valid_weights_file(name):  # an invalid name is the seal check's to report
            paths.append(weights_path(paths[1], name))
        stamp = tuple(p.stat().st_mtime_ns if p.is_file() else 0 for p in paths)
        ok, reason = _verify(str(paths[0]), str(paths[1]), stamp)
        if not ok:
            out[arch] = reason
    return out


def _data_caption(benches: dict[str, dict]) -> str:
    """What the cross-validation was measured on: one line, or one per network if they differ."""
    lines = {arch: tables.data_description(b) for arch, b in benches.items()}
    if len(set(lines.values())) == 1:
        return f"Data: {next(iter(lines.values()))}."
    return "  \n".join(f"Data, {display_name(a)}: {line}." for a, line in lines.items())


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
    st.dataframe(table, hide_index=True, height=_rows_height(len(table)), width="stretch")


def _real_scans_section(doc: dict) -> None:
    """The real-scan check of the shipped weights (``real_scans.json``), each row labelled."""
    st.header("Real scans")
    what = tables.real_scans_what(doc)
    st.caption(f"Shipped weights on real scans, not cross-validation: {what}")
    table = tables.real_scans_table(doc)
    st.dataframe(table, hide_index=True, height=_rows_height(len(table)), width="stretch")


def _rows_height(n_rows: int) -> int:
    """Pixel height that shows a dataframe's ``n_rows`` rows without an inner scroll bar."""
    return 35 * (n_rows + 1) + 3


def _network_tab(arch: str, bench: dict) -> None:
    """Per-fold table, confusion matrix, ROC curves and training curves of one network."""
    folds = bench["folds"]
    st.markdown(f"Data: {tables.data_description(bench)}.")
    st.dataframe(tables.per_fold_table(bench), hide_index=True, width="stretch")
    breakdown = tables.breakdown_table(bench)
    if len(breakdown):
        st.markdown(
            "**By source and kind** (every fold's test part: where each scan came from, and "
            "whether it is real, a real tumour carved into a healthy brain, a tumour scan made "
            "healthy, or a synthetic lesion)"
        )
        st.dataframe(breakdown, hide_index=True, width="stretch")
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


def _comparison(benches: dict[str, dict], real_scans: dict | None, unverified: dict) -> None:
    """Every method on the same folds: one table and one ROC figure, the networks first."""
    st.header("Networks and baselines")
    st.caption(
        "Measured by TumorTrace: every method on the same folds (the baselines reuse the "
        "networks' splits file), the same preprocessing and the same metrics code; mean ± std "
        "over the folds' test parts. Baselines: HOG + PCA + SVM, CNN-LSTM and the convolutional "
        "autoencoder after the seed paper; the small 3D CNN, ResNet-18 and GoogLeNet on slices "
        "after the project's milestone. Nothing is pretrained. *Real gliomas called tumour*: "
        "real tumour scans none of them saw (`real_scans.json`; — where not measured). "
        "Training seconds: all folds together on the machine that trained it."
    )
    table = tables.comparison_table(benches, real_scans)
    if unverified:
        marks = {display_name(a) for a in unverified}
        table["method"] = [m + " (unverified)" if m in marks else m for m in table["method"]]
    st.dataframe(table, hide_index=True, height=_rows_height(len(table)), width="stretch")
    rocs = tables.pooled_tumour_rocs(benches)
    if rocs:
        st.plotly_chart(
            figures.comparison_roc_figure(
                rocs,
                names={a: display_name(a) for a in rocs},
                highlight=network_names(),
                title="Tumour (LGG or HGG) against healthy, every fold's test cases pooled",
            ),
            key="roc_comparison",
        )
    else:
        st.caption("No per-case test predictions stored: no ROC curves to draw.")


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
        "network's forward, backward and map per analysis. *All networks*: their maps of what "
        "raised the odds of a tumour over a healthy brain, averaged and smoothed over 10 mm, and "
        "the point where the Analyze "
        "viewer opens (that pooled peak unless the verdict is healthy at 60 % or more, else the "
        "centre; "
        "scored as one voxel, so *max in lesion* is how often it opens inside the lesion); "
        "their seconds are the whole analysis of all networks."
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


def _published(pub: dict | None, path: Path) -> None:
    """The two papers' figures, in their own section, never merged with our tables.

    Shown with the papers' own decimals (transcribed, not measured here).
    """
    st.header("Published results (not measured here)")
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
stored = _read_folder(str(folder), folder_stamp(folder))
every_method = stored.benches
benches = {a: b for a, b in every_method.items() if not is_baseline(a)}  # the sections below
if stored.broken:
    st.error(
        f"Unreadable benchmark files in {folder}: {', '.join(stored.broken)}. Expected the JSON "
        "layout written by train.py (see docs/ARCHITECTURE.md); re-run training or remove them."
    )
if not every_method:
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
    unverified = _unverified(folder, every_method)
    for arch, reason in unverified.items():
        st.warning(
            f"**{display_name(arch)}: unverified.** Its benchmark does not match the weights and "
            f"card in this folder ({reason}); its figures below may not describe these weights.",
            icon=":material/gpp_maybe:",
        )
    if len(every_method) > len(benches):
        _comparison(every_method, stored.real_scans, unverified)
    if benches:  # the three networks in detail
        st.header("Summary")
        st.markdown(_data_caption(benches))
        summary = tables.summary_table(benches)
        n_overall = len(tables.OVERALL_METRICS)
        st.dataframe(summary.iloc[:n_overall], height=_rows_height(n_overall), width="stretch")
        st.markdown("**Per class** (one class against the rest)")
        st.dataframe(
            summary.iloc[n_overall:], height=_rows_height(len(summary) - n_overall), width="stretch"
        )
        if stored.real_scans:
            _real_scans_section(stored.real_scans)
        if stored.heldout:
            _heldout_section(benches, stored.heldout)
        st.header("Per network")
        tabs = st.tabs(
            [display_name(a) + (" (unverified)" if a in unverified else "") for a in benches]
        )
        for tab, (arch, bench) in zip(tabs, benches.items(), strict=True):
            with tab:
                _network_tab(arch, bench)
        st.header("Cost")
        inference = stored.inference
        st.dataframe(tables.cost_table(benches, inference), hide_index=True, width="stretch")
        if inference:
            shape = "×".join(str(s) for s in inference.get("shape", []))
            st.caption(
                f"CPU seconds per volume from benchmarks/bench_infer.py at D×H×W {shape}, "
                f"{inference.get('threads', '?')} threads. Settings of 'fast': "
                f"{tables.settings_text(inference.get('settings') or {})}. "
                f"{tables.peak_text(inference)}".rstrip()
            )
        else:
            st.caption("No inference.json: run `python benchmarks/bench_infer.py` for CPU timings.")

if stored.explanations:
    _explanations(stored.explanations)

if stored.published is not None:
    _published(stored.published, folder / "published.json")
else:  # the papers' figures ship with the app, whatever weights folder is in use
    shipped = ROOT / "weights" / "benchmarks" / "published.json"
    _published(read_json(shipped), shipped)
