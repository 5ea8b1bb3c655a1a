"""The viewer's plane image: a PNG that reports clicks, the wheel and drags.

``st.image`` has no click events, so each plane is a small inline component (Streamlit's
components v2: HTML and JavaScript passed as strings, served by Streamlit itself, nothing fetched
from the internet). A click sends ``{"u", "v"}``, the position as a share of the image's width and
height (0-1 from the top-left corner); the wheel, or a drag up or down on the image (6 px a
slice, at most about 16 a second), sends ``{"step": +1 or -1}`` while it moves, so the slices
redraw during the drag (Streamlit's own sliders send their value only on release). The page turns
a click into a voxel with :func:`tumortrace.viz.voxel_at`. Lives beside ``app.py``: the package
never imports streamlit.
"""

from __future__ import annotations

import base64
from collections.abc import Callable

import streamlit as st

_JS = """
export default function(component) {
  const { data, setTriggerValue, parentElement } = component;
  let img = parentElement.querySelector("img");
  if (!img) {
    img = document.createElement("img");
    img.draggable = false;
    parentElement.appendChild(img);
    let last = 0;
    let drag = null;  // {y, moved}: a press that moves scrubs slices, one that does not is a click
    const step = (n) => {
      const now = Date.now();
      if (now - last < 60) return false;  // at most ~16 redraws a second
      last = now;
      setTriggerValue("wheel", { step: n });
      return true;
    };
    img.addEventListener("pointerdown", (e) => {
      drag = { y: e.clientY, moved: false };
      img.setPointerCapture(e.pointerId);
    });
    img.addEventListener("pointermove", (e) => {
      if (!drag) return;
      const dy = drag.y - e.clientY;
      if (Math.abs(dy) < 6) return;  // 6 px per slice, up = higher slice
      drag.moved = true;
      if (step(dy > 0 ? 1 : -1)) drag.y = e.clientY;
    });
    img.addEventListener("pointerup", (e) => {
      const moved = drag && drag.moved;
      drag = null;
      if (moved) return;
      const r = img.getBoundingClientRect();
      setTriggerValue("click", {
        u: (e.clientX - r.left) / r.width, v: (e.clientY - r.top) / r.height,
      });
    });
    img.addEventListener("wheel", (e) => {
      e.preventDefault();
      step(e.deltaY > 0 ? -1 : 1);  // one slice per notch, not per pixel of a touchpad
    }, { passive: false });
  }
  if (img.getAttribute("src") !== data.src) img.src = data.src;
  img.alt = data.alt;
  img.title = data.alt;
}
"""

_CSS = """
img { display: block; width: 100%; height: auto; cursor: crosshair; image-rendering: auto; }
"""

_COMPONENT = st.components.v2.component("tumortrace_plane", js=_JS, css=_CSS)


def plane_image(
    png: bytes,
    alt: str,
    *,
    key: str,
    on_click: Callable[[], None],
    on_wheel: Callable[[], None],
) -> None:
    """Shows ``png`` full width; ``on_click`` / ``on_wheel`` run (before the rerun) when it is
    clicked or scrolled over, and read the event from ``st.session_state[key]``."""
    _COMPONENT(
        key=key,
        data={"src": "data:image/png;base64," + base64.b64encode(png).decode(), "alt": alt},
        on_click_change=on_click,
        on_wheel_change=on_wheel,
        width="stretch",
        height="content",
    )


def event(key: str, name: str) -> dict | None:
    """The payload of event ``name`` ("click" or "wheel") of the component ``key``, in its
    callback; None when there is none."""
    state = st.session_state.get(key)
    if state is None:
        return None
    value = state.get(name) if isinstance(state, dict) else getattr(state, name, None)
    return value if isinstance(value, dict) else None
