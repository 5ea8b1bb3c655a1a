"""About: what TumorTrace is for, what it is not, and the model card of every shipped network."""

from __future__ import annotations

import json

import pandas as pd
import streamlit as st

import app_state
from tumortrace import viz
from tumortrace.networks import display_name, in_display_order
from tumortrace.numformat import fmt_mean_std, metric_kind

app_state.require_app("pages/about.py")
st.title("About TumorTrace")
st.error(
    "**Research demo, not a medical device.** TumorTrace has not been validated for clinical "
    "use and must not inform diagnosis or treatment. Its networks may be wrong with high "
    "confidence, and a Grad-CAM map shows where a network looked, not where a tumour is.",
    icon=":material/gpp_maybe:",
)
st.markdown(
    """
### Intended use
TumorTrace sorts a 3D T1 contrast-enhanced brain MRI into **healthy**, **low-grade glioma (LGG)**
or **high-grade glioma (HGG)** with three video networks used as volume classifiers
(R(2+1)D-18, MC3-18, R3D-18; the axial direction plays the role of time), and explains each
prediction with Grad-CAM. It is meant for researchers and for clinicians curious about how such
models behave: compare the networks, see when they disagree, and check what they attend to.

### Not intended for
- any clinical decision, triage or screening;
- other sequences (T2, FLAIR), other diseases, paediatric scans or post-operative brains: the
  networks only know three classes and will still pick one of them;
- volumes that are not whole brains (single slices, partial coverage).

### How it works
The volume is reoriented to RAS, resampled and cropped around the brain exactly as in training
(the settings are stored in each model card), then each network gives class probabilities. The
ensemble averages them. Grad-CAM on the third of the four residual stages (chosen by scoring the
maps against lesions of known extent: Benchmarks, Explanations), kept inside the brain, is mapped
back onto the file's own voxel grid so the overlay lines up with the slices you scroll.
"""
)

st.header("Model cards")
folder = app_state.weights_dir()
cards = app_state.read_cards(folder)
if not cards:
    st.info(
        f"No model cards in `{folder}`: no weights are installed yet. Train them with "
        "`python train.py --arch mc3` (and r2plus1d, r3d); each run writes `<arch>.json`.",
        icon=":material/info:",
    )
for arch in in_display_order(cards):
    card = cards[arch]
    name = display_name(arch)
    with st.expander(f"{name} (`{arch}`)", expanded=True):
        if "error" in card:
            st.error(card["error"])
            continue
        data = card.get("data", {}) or {}
        counts = ", ".join(
            f"{viz.CLASS_NAMES.get(c, c)}: {n}" for c, n in (data.get("counts") or {}).items()
        )
        source = data.get("source", "unknown")
        c1, c2 = st.columns(2)
        c1.markdown(
            f"**Training data:** {source} ({counts or 'counts not stored'})  \n"
            f"**Shipped model:** {card.get('shipped') or '?'} · "
            f"{card.get('folds', '?')}-fold cross-validation  \n"
            f"**Parameters:** {card.get('params', 0) / 1e6:.1f} M  \n"
            f"**Trained:** {card.get('date') or '?'} · commit `{card.get('git_commit') or '?'}`  \n"
            f"**Weights SHA-256:** `{card.get('weights_sha256') or '?'}`"
        )
        pre = card.get("preprocess", {}) or {}
        c2.markdown(
            f"**Input D×H×W:** {'×'.join(str(s) for s in pre.get('shape_dhw', [])) or '?'} "
            f"at {'×'.join(str(s) for s in pre.get('spacing_mm', [])) or '?'} mm  \n"
            f"**Intensity:** {pre.get('intensity', '?')}  \n"
            f"**Classes:** {', '.join(card.get('classes', []))}"
        )
        st.markdown("**Command**")
        st.code(card.get("command") or "(not stored)", language="bash")
        metrics = card.get("metrics", {}) or {}
        rows = [
            {
                "metric": k.replace("_", " "),
                "mean ± std": fmt_mean_std(v.get("mean"), v.get("std"), metric_kind(k)),
            }
            for k, v in metrics.items()
            if isinstance(v, dict)
        ]
        if rows:
            st.markdown(
                f"**Cross-validated results** on the training data above ({source}; mean ± std "
                f"over {card.get('folds', '?')} folds)"
            )
            st.dataframe(pd.DataFrame(rows), hide_index=True, width="stretch")
        limits = [
            "Trained on **synthetic phantoms**: results on real scans are not meaningful."
            if str(source).startswith("synthetic")
            else f"Trained on {source}; performance elsewhere (scanners, sites) is unknown.",
            "LGG is the rarest class and the hardest to tell from HGG.",
            "Output is always one of three classes, even for an unrelated image.",
        ]
        if card.get("notes"):
            limits.append(str(card["notes"]))
        st.markdown("**Limits**\n" + "\n".join(f"- {item}" for item in limits))
        with st.popover("Raw card (JSON)"):
            st.code(json.dumps(card, indent=2), language="json")
