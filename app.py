"""TumorTrace: the Streamlit entry point (``streamlit run app.py``).

Frames every page: navigation (Analyze, Benchmarks, About) in a bar at the top, and one line above
each page (the research-only notice, which weights are loaded). What the pages share (the weights
folder, the model cards, the predictor loaded once per process with ``st.cache_resource``) lives
in :mod:`app_state`.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import streamlit as st
from PIL import Image

import app_state
from tumortrace.networks import display_name, network_names

NOTICE = (
    "**Research demo, not a medical device.** TumorTrace is not cleared for clinical use. "
    "Do not use its output for diagnosis or treatment decisions."
)


def banner(folder: Path) -> None:
    """One line on every page, above its title: the research-only notice, and which networks are
    loaded and when they were trained (no server paths or hashes: they mean nothing to a
    clinician; the About page and the report hold the weights' identities).

    Not a sidebar: at 800 px Streamlit keeps a sidebar open beside a page squeezed to 470 px."""
    cards = app_state.read_cards(folder)
    states = []
    for arch in network_names():
        name = display_name(arch)
        card = cards.get(arch)
        if card is None:
            states.append(f":grey[○ {name}: no weights]")
        elif "error" in card:
            states.append(f":red[✕ {name}: its model card cannot be read]")
        else:
            states.append(f":green[● {name}] trained {str(card.get('date', ''))[:10]}")
    st.caption(f":orange[{NOTICE}]  \nNetworks: " + " · ".join(states))
    if not any("error" not in c for c in cards.values()):
        st.info("No weights yet: the viewer works, predictions need trained weights.")


def _icon() -> Image.Image:
    """The tab icon, drawn here: a material icon as ``page_icon`` makes the browser fetch it from
    fonts.gstatic.com, and the app must work offline."""
    yy, xx = np.mgrid[-1:1:32j, -1:1:32j]
    rgb = np.zeros((32, 32, 3), np.uint8)
    rgb[xx**2 + yy**2 <= 0.95] = (60, 60, 70)  # a head
    rgb[(xx - 0.25) ** 2 + (yy + 0.2) ** 2 <= 0.09] = (252, 160, 20)  # its hot spot
    return Image.fromarray(rgb)


# Columns stack below about 1100 px (Streamlit's own breakpoint is 640 px: at 800-1100 px three
# images were 145 px wide and buttons read "Repor…"); labels and buttons wrap, never truncate.
LAYOUT_CSS = """<style>
@media (max-width: 1100px) {
  div[data-testid="stHorizontalBlock"] { flex-wrap: wrap; }
  div[data-testid="stHorizontalBlock"] > div[data-testid="stColumn"] {
    flex: 1 1 100% !important; min-width: 100% !important; width: 100% !important;
  }
}
</style>"""


@st.cache_resource(show_spinner=False)
def _clean_once() -> int:
    """Removes extracted series left in ``tumortrace-*`` temp folders by killed loads (once)."""
    from tumortrace.tempdirs import clean_stale_tempdirs

    return len(clean_stale_tempdirs())


st.set_page_config(page_title="TumorTrace", page_icon=_icon(), layout="wide")
st.html(LAYOUT_CSS)
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
page = st.navigation(list(PAGES.values()), position="top")
# A page opened before this script ever ran (a link to /benchmarks as the first request after the
# server starts runs pages/benchmarks.py on its own) sends the visitor here, naming itself: go on
# to that page, now with the navigation and session state in place.
wanted = PAGES.get(st.session_state.pop(app_state.PAGE_WANTED, None))
if wanted is not None and wanted.url_path != page.url_path:
    st.switch_page(wanted)
banner(app_state.weights_dir())
page.run()
