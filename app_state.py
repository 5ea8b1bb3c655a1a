"""What the Streamlit app's pages share: the weights folder, the model cards, the cached predictor
and the "opened before app.py" guard. Imported by ``app.py`` and every page in ``pages/``.

Lives beside ``app.py`` (not in the package, which never imports streamlit). Pages import it as an
ordinary module (``import app_state``) instead of finding callables in ``st.session_state``.
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
from tumortrace.networks import network_names

ROOT = Path(__file__).resolve().parent
WEIGHTS_ENV = "TUMORTRACE_WEIGHTS_DIR"
APP_RAN = "tt_app_ran"  # session key: app.py has set up the navigation in this session
PAGE_WANTED = "tt_page_wanted"  # session key: the page a visitor opened before app.py ran


@dataclass(frozen=True)
class SharedPredictor:
    """The process-wide predictor and the lock that runs its analyses one at a time.

    The predictor's networks are only read during an analysis (no hooks, no flags; see
    :mod:`tumortrace.infer`), so the lock is not needed for correctness. It is there for the
    machine: on a few CPU cores two simultaneous analyses each take about twice as long and
    together need twice the peak memory, so sessions queue instead.
    """

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


def mark_app_ran() -> None:
    """Called by app.py once the navigation is set up in this session."""
    st.session_state[APP_RAN] = True


def require_app(page: str) -> None:
    """Hands a visitor who opened ``page`` before app.py ever ran over to app.py.

    A link to /benchmarks as the first request after the server starts runs that page on its own,
    without the navigation; app.py then comes back to ``page`` (see :data:`PAGE_WANTED`).
    """
    if APP_RAN not in st.session_state:
        st.session_state[PAGE_WANTED] = page
        st.switch_page("app.py")
