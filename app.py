"""TumorTrace: the Streamlit entry point (``streamlit run app.py``).

Frames every page: navigation (Analyze, Benchmarks, About) and the shared sidebar (which weights are
loaded, the research-only notice). What the pages share (the weights folder, the model cards, the
predictor loaded once per process with ``st.cache_resource``) lives in :mod:`app_state`.
"""

from __future__ import annotations

from pathlib import Path

import streamlit as st

import app_state
from tumortrace.networks import display_name, network_names

NOTICE = (
    "**Research demo, not a medical device.** TumorTrace is not cleared for clinical use. "
    "Do not use its output for diagnosis or treatment decisions."
)


def sidebar(folder: Path) -> None:
    """Weights status and the research-only notice, shown on every page."""
    with st.sidebar:
        st.markdown("### Weights")
        st.caption(f"Folder: `{folder}`")
        cards = app_state.read_cards(folder)
        for arch in network_names():
            name = display_name(arch)
            card = cards.get(arch)
            if card is None:
                st.markdown(f":grey[○ {name}: not found]")
            elif "error" in card:
                st.markdown(f":red[✕ {name}: {card['error']}]")
            else:
                sha = str(card.get("weights_sha256", ""))[:10]
                date = str(card.get("date", ""))[:10]
                st.markdown(f":green[● {name}] · {date} · `{sha}`")
        if not any("error" not in c for c in cards.values()):
            st.info("No weights yet: the viewer works, predictions need trained weights.")
        st.divider()
        st.warning(NOTICE)


@st.cache_resource(show_spinner=False)
def _clean_once() -> int:
    """Removes extracted series left in ``tumortrace-*`` temp folders by killed loads (once)."""
    from tumortrace.io import clean_stale_tempdirs

    return len(clean_stale_tempdirs())


st.set_page_config(page_title="TumorTrace", page_icon=":material/neurology:", layout="wide")
_clean_once()
app_state.mark_app_ran()

PAGES = {
    "pages/analyze.py": st.Page(
        "pages/analyze.py", title="Analyze", icon=":material/neurology:", default=True
    ),
    "pages/benchmarks.py": st.Page(
        "pages/benchmarks.py", title="Benchmarks", icon=":material/monitoring:"
    ),
    "pages/about.py": st.Page("pages/about.py", title="About", icon=":material/info:"),
}
page = st.navigation(list(PAGES.values()))
# A page opened before this script ever ran (a link to /benchmarks as the first request after the
# server starts runs pages/benchmarks.py on its own) sends the visitor here, naming itself: go on
# to that page, now with the navigation and session state in place.
wanted = PAGES.get(st.session_state.pop(app_state.PAGE_WANTED, None))
if wanted is not None and wanted.url_path != page.url_path:
    st.switch_page(wanted)
sidebar(app_state.weights_dir())
page.run()
