"""About: what TumorTrace is for, what it is not, and the model card of every shipped network."""

from __future__ import annotations

import json

import pandas as pd
import streamlit as st

import app_state
from tumortrace.networks import display_name, in_display_order
from tumortrace.numformat import fmt_mean_std, metric_kind
from tumortrace.tables import training_data_words

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
TumorTrace sorts a 3D T1-weighted brain MRI into **healthy**, **low-grade glioma (LGG)**
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
The volume is reoriented to RAS, its brain is extracted (deepbet) and registered to the MNI152
template, and the brain alone is resampled into one fixed box exactly as in training (the settings
are stored in each model card), so a whole-head scan and a skull-stripped one look the same to the
networks; input checks flag what the networks were not trained for. Each network gives class
probabilities; the ensemble averages them.

### What the shipped networks learned from
Real healthy brains: 150 T1 scans of IXI volunteers, used as they are, and the same brains with a
**synthetic** lesion inserted (a tumour-like model drawn into the brain, scaled to each subject's
own white matter). They have **never seen a real tumour**, and every training scan was
non-contrast. On real gliomas (contrast-enhanced) and on real healthy brains they have not seen,
their calls are measured on the Benchmarks page under "Real scans"; treat every verdict as a
research output. The map is LayerCAM, a Grad-CAM variant, on the last two of the four residual
stages (chosen by scoring the maps against real tumours with expert masks: Benchmarks,
Explanations; its maximum falls inside the tumour in 2-3 of 10 per network), kept inside the
brain, and mapped back onto the file's own voxel grid so the overlay lines up with the slices you
scroll. The viewer opens where the three networks together see the most evidence for a tumour:
each network's map of what raised the odds of LGG or HGG over a healthy brain, averaged and
smoothed over about a centimetre (unless the verdict is healthy at 60 % or more: then at the
centre). It opens inside the tumour in 4 of those 10 real tumours; the rest of the time the
lesion may be elsewhere, so scroll the whole scan.

### DICOM results
For an uploaded DICOM series, "DICOM report + maps (.zip)" holds objects a PACS or a DICOM
viewer (e.g. OHIF, 3D Slicer, Weasis) files with the scan, as they carry its patient, study and
frame of reference: a **Structured Report** (TID 1500) with each network's probabilities, its
class, its weights' identity (name, training date, sha256 prefix), the ensemble verdict, whether
the networks agree, each input check and its message ("Unreliable input: no verdict" when a check
fails), and the statement "research use only, not for clinical use"; and each network's map as
a **Parametric Map** (0-1 floats) on the series' own frames. A healthy brain is coded SNOMED CT
"Normal"; LGG, HGG and the probabilities are TumorTrace's private codes (scheme `99TMTR`).
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
        source = training_data_words(data)
        c1, c2 = st.columns(2)
        c1.markdown(
            f"**Training data:** {source}  \n"
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
        cohort = data.get("cohort") or {}
        limits = [
            "Trained on **synthetic phantoms**: results on real scans are not meaningful."
            if str(data.get("source", "")).startswith("synthetic")
            else f"Trained on {source}; performance elsewhere (scanners, sites) is unknown.",
            *(
                [
                    f"Lesions in training: {cohort['lesions']}. Licence of the brains: "
                    f"{cohort.get('licence', '?')}."
                ]
                if isinstance(cohort, dict) and cohort.get("lesions")
                else []
            ),
            "LGG is the rarest class and the hardest to tell from HGG.",
            "Output is always one of three classes, even for an unrelated image.",
        ]
        if card.get("notes"):
            limits.append(str(card["notes"]))
        st.markdown("**Limits**\n" + "\n".join(f"- {item}" for item in limits))
        with st.popover("Raw card (JSON)"):
            st.code(json.dumps(card, indent=2), language="json")
