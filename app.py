"""TumorTrace: the Streamlit entry point (``streamlit run app.py``).

Frames every page: navigation (Analyze, Benchmarks, About), the shared sidebar (which weights are
loaded, the research-only notice) and the predictor, loaded once per process with
``st.cache_resource`` and shared read-only by every session. Grad-CAM registers hooks on the shared
networks, so analyses run one at a time behind a lock.

The weights folder is ``$TUMORTRACE_WEIGHTS_DIR`` (default ``weights`` beside this file); the pages
find it, and the predictor loader, in ``st.session_state``.
"""

from __future__ import annotations

import json
import os
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import streamlit as st

from tumortrace.errors import CheckpointError
from tumortrace.networks import display_name, network_names

ROOT = Path(__file__).resolve().parent
WEIGHTS_ENV = "TUMORTRACE_WEIGHTS_DIR"
PAGE_WANTED = "tt_page_wanted"  # session key: the page a visitor opened before app.py ran
NOTICE = (
    "**Research demo, not a medical device.** TumorTrace is not cleared for clinical use. "
    "Do not use its output for diagnosis or treatment decisions."
)


@dataclass(frozen=True)
class SharedPredictor:
    """The process-wide predictor and the lock that serialises its (hook-registering) analyses."""

    predictor: Any  # tumortrace.infer.Predictor (imported lazily: torch is slow to import)
    lock: threading.Lock


def weights_dir() -> Path:
    """The weights folder: ``$TUMORTRACE_WEIGHTS_DIR`` or ``weights/`` beside app.py."""
    env = os.environ.get(WEIGHTS_ENV, "").strip()
    return Path(env).expanduser().resolve() if env else ROOT / "weights"


def read_cards(folder: Path) -> dict[str, dict]:
    """The model cards ``<folder>/<arch>.json`` that exist, as plain dicts (no weights loaded).

    Unreadable cards are returned as ``{"error": message}`` so the sidebar can say what is wrong.
    """
    cards: dict[str, dict] = {}
    for arch in network_names():
        path = folder / f"{arch}.json"
        if not path.is_file():
            continue
        try:
            cards[arch] = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as err:
            cards[arch] = {"error": f"{path.name} is not a readable JSON model card ({err})."}
    return cards


def _weights_stamp(folder: Path) -> tuple[tuple[str, int, int], ...]:
    """Names, sizes and mtimes of the weight files: a new training run invalidates the cache."""
    files = (
        sorted([*folder.glob("*.json"), *folder.glob("*.safetensors")]) if folder.is_dir() else []
    )
    return tuple((p.name, p.stat().st_size, p.stat().st_mtime_ns) for p in files)


@st.cache_resource(show_spinner="Loading the networks…", max_entries=2)
def _load_predictor(folder: str, stamp: tuple) -> SharedPredictor:
    """Loads every card in ``folder`` (``stamp`` only keys the cache)."""
    from tumortrace.infer import Predictor

    return SharedPredictor(Predictor.from_dir(folder), threading.Lock())


def get_predictor() -> SharedPredictor:
    """The cached predictor for the current weights folder.

    Raises:
        CheckpointError: no model card in the folder, or the weights do not load.
    """
    folder = weights_dir()
    cards = [a for a, c in read_cards(folder).items() if "error" not in c]
    if not cards:
        raise CheckpointError(
            f"No trained weights in {folder}: expected model cards such as "
            f"{', '.join(f'{a}.json' for a in network_names())} beside their .safetensors files. "
            "Train them with `python train.py --arch mc3` (and r2plus1d, r3d), or point "
            f"{WEIGHTS_ENV} at a folder that has them."
        )
    return _load_predictor(str(folder), _weights_stamp(folder))


def sidebar(folder: Path) -> None:
    """Weights status and the research-only notice, shown on every page."""
    with st.sidebar:
        st.markdown("### Weights")
        st.caption(f"Folder: `{folder}`")
        cards = read_cards(folder)
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
st.session_state["weights_dir"] = str(weights_dir())
st.session_state["get_predictor"] = get_predictor
st.session_state["read_cards"] = read_cards

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
wanted = PAGES.get(st.session_state.pop(PAGE_WANTED, None))
if wanted is not None and wanted.url_path != page.url_path:
    st.switch_page(wanted)
sidebar(weights_dir())
page.run()
