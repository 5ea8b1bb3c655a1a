"""The viewer's three planes, drawn in the browser: slices change without a server round trip.

Streamlit's sliders send their value to the server, which reruns the page and sends back a new
PNG: 300-400 ms a step on a loaded 2-core server, and nothing while a slider is dragged. Here the
scan travels once (8-bit grey after the chosen window, deflate-compressed, with the brain and true
lesion masks as bits) into one inline component (Streamlit's components v2: HTML and JavaScript
passed as strings, served by Streamlit itself, nothing fetched from the internet), and the browser
draws every slice itself: the sliders under the planes, the wheel, a vertical drag on a plane and
a click (which moves the other two planes to the point clicked) all redraw at once. The position
is reported back (``on_point``, at most about three times a second and on release) so the
Grad-CAM row, which the server draws, follows.

Geometry is :func:`tumortrace.viz.plane_layout`'s, sent in the header, so the browser's planes
are oriented, labelled and flipped exactly as the server's images. Lives beside ``app.py``: the
package never imports streamlit.
"""

from __future__ import annotations

import hashlib
import json
import math
import struct
import zlib
from collections.abc import Callable, Sequence
from typing import NamedTuple

import numpy as np
import streamlit as st

from tumortrace import viz

MAX_AXIS = 320
"""Longest axis sent to the browser; longer axes are subsampled by an integer step (a 512-voxel
axis travels as 256), so the payload stays under about 33 MB before compression."""

BRAIN_BIT, LESION_BIT = 1, 2
"""Bits of the mask byte: the extracted brain (cyan outline), the true lesion (green outline)."""

_JS = r"""
const PLANES = ["axial", "coronal", "sagittal"];
const NAMES = { axial: "Axial", coronal: "Coronal", sagittal: "Sagittal" };

async function inflate(bytes) {
  const stream = new Blob([bytes]).stream().pipeThrough(new DecompressionStream("deflate"));
  return new Uint8Array(await new Response(stream).arrayBuffer());
}

function parse(data) {
  const view = new DataView(data.buffer, data.byteOffset, data.byteLength);
  const n = view.getUint32(0, true);
  const header = JSON.parse(new TextDecoder().decode(data.subarray(4, 4 + n)));
  return { header, body: data.subarray(4 + n) };
}

function build(root) {  // beside the <style> Streamlit put in the shadow root
  const grid = document.createElement("div");
  grid.className = "tt-grid";
  root.appendChild(grid);
  const cells = {};
  for (const plane of PLANES) {
    const cell = document.createElement("div");
    cell.className = "tt-cell";
    const canvas = document.createElement("canvas");
    canvas.setAttribute("role", "img");
    canvas.dataset.plane = plane;
    const caption = document.createElement("div");
    caption.className = "tt-caption";
    const slider = document.createElement("input");
    slider.type = "range";
    slider.min = "1";
    slider.setAttribute("aria-label", NAMES[plane] + " slice");
    cell.append(canvas, caption, slider);
    grid.appendChild(cell);
    cells[plane] = { canvas, caption, slider, image: null };
  }
  return cells;
}

export default function (component) {
  const { data, setStateValue, parentElement } = component;
  if (!data) return;
  const root = parentElement;
  let st = root.__tt;
  if (!st) {
    st = root.__tt = { cells: build(root), vid: null, seq: null, point: null, sent: null,
                       timer: null, lastSend: 0 };
    wire(st);
  }
  st.setStateValue = setStateValue;
  const { header, body } = parse(data);
  st.header = header;
  const ready = st.vid === header.vid ? Promise.resolve() : inflate(body).then((raw) => {
    if (st.header !== header) return;  // a newer render arrived while this one inflated
    const n = header.shape[0] * header.shape[1] * header.shape[2];
    st.vol = raw.subarray(0, n);
    st.mask = raw.length >= 2 * n ? raw.subarray(n, 2 * n) : null;
    st.vid = header.vid;
  });
  ready.then(() => {
    if (st.header !== header || st.vid !== header.vid) return;  // superseded by a newer render
    // the server moved the planes (go to peak, the verdict's peak) or shows another grid
    if (st.seq !== header.seq || st.grid !== header.grid || !st.point) {
      st.seq = header.seq;
      st.grid = header.grid;
      st.point = header.point.slice();
      st.sent = header.point.join(",");
    }
    for (const plane of PLANES) {
      const layout = header.planes[plane];
      const s = st.cells[plane].slider;
      s.max = String(header.shape[layout.fixed]);
    }
    drawAll(st);
  });
}

function wire(st) {
  for (const plane of PLANES) {
    const cell = st.cells[plane];
    cell.slider.addEventListener("input", () => {
      st.point[st.header.planes[plane].fixed] = Number(cell.slider.value) - 1;
      moved(st);
    });
    cell.slider.addEventListener("change", () => report(st, true));
    let drag = null;
    let last = 0;
    const step = (n) => {
      const ax = st.header.planes[plane].fixed;
      const v = Math.min(st.header.shape[ax] - 1, Math.max(0, st.point[ax] + n));
      if (v === st.point[ax]) return;
      st.point[ax] = v;
      moved(st);
    };
    cell.canvas.addEventListener("pointerdown", (e) => {
      drag = { y: e.clientY, moved: false };
      cell.canvas.setPointerCapture(e.pointerId);
    });
    cell.canvas.addEventListener("pointermove", (e) => {
      if (!drag) return;
      const dy = drag.y - e.clientY;
      if (Math.abs(dy) < 4) return;  // 4 px per slice, up = higher slice
      drag.moved = true;
      step(dy > 0 ? 1 : -1);
      drag.y = e.clientY;
    });
    cell.canvas.addEventListener("pointerup", (e) => {
      const wasDrag = drag && drag.moved;
      drag = null;
      if (wasDrag) { report(st, true); return; }
      const r = cell.canvas.getBoundingClientRect();
      click(st, plane, (e.clientX - r.left) / r.width, (e.clientY - r.top) / r.height);
    });
    cell.canvas.addEventListener("wheel", (e) => {
      e.preventDefault();
      const now = Date.now();
      if (now - last < 30) return;  // one slice per notch, not one per pixel of a touchpad
      last = now;
      step(e.deltaY > 0 ? -1 : 1);
    }, { passive: false });
  }
  new ResizeObserver(() => { if (st.vol) drawAll(st); }).observe(st.cells.axial.canvas);
}

function click(st, plane, u, v) {
  const L = st.header.planes[plane], shape = st.header.shape;
  const nr = shape[L.row], nc = shape[L.col];
  const r = Math.min(nr - 1, Math.max(0, Math.floor(v * nr)));
  const c = Math.min(nc - 1, Math.max(0, Math.floor(u * nc)));
  st.point[L.row] = L.rowFlip ? nr - 1 - r : r;
  st.point[L.col] = L.colFlip ? nc - 1 - c : c;
  moved(st);
  report(st, true);
}

function moved(st) {
  drawAll(st);
  report(st, false);
}

// Tells the server where the planes are: at once on release or click, else at most every 300 ms.
function report(st, now) {
  clearTimeout(st.timer);
  const send = () => {
    const key = st.point.join(",");
    if (key === st.sent) return;
    st.sent = key;
    st.lastSend = Date.now();
    st.setStateValue("point", { xyz: st.point.slice(), seq: st.header.seq });
  };
  if (now) return send();
  st.timer = setTimeout(send, Math.max(0, 300 - (Date.now() - st.lastSend)));
}

function drawAll(st) {
  for (const plane of PLANES) drawPlane(st, plane);
}

function drawPlane(st, plane) {
  const h = st.header, L = h.planes[plane], cell = st.cells[plane];
  const [X, Y, Z] = h.shape;
  const strides = [Y * Z, Z, 1];
  const nr = h.shape[L.row], nc = h.shape[L.col];
  const index = st.point[L.fixed];
  // the slice at its own resolution, grey, with the outlines of the masks
  if (!cell.image || cell.image.width !== nc || cell.image.height !== nr) {
    cell.off = document.createElement("canvas");
    cell.off.width = nc;
    cell.off.height = nr;
    cell.image = new ImageData(nc, nr);
  }
  const px = cell.image.data, vol = st.vol, mask = st.mask;
  const base = index * strides[L.fixed], sr = strides[L.row], sc = strides[L.col];
  const at = (r, c) => base + (L.rowFlip ? nr - 1 - r : r) * sr + (L.colFlip ? nc - 1 - c : c) * sc;
  for (let r = 0; r < nr; r++) {
    for (let c = 0; c < nc; c++) {
      const i = at(r, c), o = 4 * (r * nc + c);
      let red = vol[i], green = vol[i], blue = vol[i];
      if (mask && mask[i]) {
        const m = mask[i];
        const edge = (bit) => (m & bit) && (r === 0 || c === 0 || r === nr - 1 || c === nc - 1
          || !(mask[at(r - 1, c)] & bit) || !(mask[at(r + 1, c)] & bit)
          || !(mask[at(r, c - 1)] & bit) || !(mask[at(r, c + 1)] & bit));
        if (edge(2)) { red = 0; green = 255; blue = 128; }        // the true lesion
        else if (edge(1)) { red = 0; green = 220; blue = 255; }   // the extracted brain
      }
      px[o] = red; px[o + 1] = green; px[o + 2] = blue; px[o + 3] = 255;
    }
  }
  cell.off.getContext("2d").putImageData(cell.image, 0, 0);
  // on screen: square millimetres, the canvas as wide as its column
  const canvas = cell.canvas;
  const mmRows = nr * h.spacing[L.row], mmCols = nc * h.spacing[L.col];
  canvas.style.aspectRatio = `${mmCols} / ${mmRows}`;
  const dpr = window.devicePixelRatio || 1;
  const W = Math.max(1, Math.round(canvas.clientWidth * dpr));
  const H = Math.max(1, Math.round(W * mmRows / mmCols));
  if (canvas.width !== W || canvas.height !== H) { canvas.width = W; canvas.height = H; }
  const ctx = canvas.getContext("2d");
  ctx.imageSmoothingEnabled = true;
  ctx.drawImage(cell.off, 0, 0, W, H);
  const font = Math.max(12, Math.round(Math.min(W, H) / 16));
  if (h.crosshair) {  // where the other two planes cut this one, short of the letters
    const rr = L.rowFlip ? nr - 1 - st.point[L.row] : st.point[L.row];
    const cc = L.colFlip ? nc - 1 - st.point[L.col] : st.point[L.col];
    const y = (rr + 0.5) * H / nr, x = (cc + 0.5) * W / nc, m = 2 * font;
    ctx.save();
    ctx.strokeStyle = "rgb(0,200,255)";
    ctx.lineWidth = Math.max(1, dpr);
    ctx.setLineDash([Math.max(4, Math.min(W, H) / 40), Math.max(4, Math.min(W, H) / 40)]);
    ctx.beginPath();
    ctx.moveTo(m, y); ctx.lineTo(W - m, y);
    ctx.moveTo(x, m); ctx.lineTo(x, H - m);
    ctx.stroke();
    ctx.restore();
  }
  ctx.save();  // orientation letters at the middle of each edge
  ctx.font = `bold ${font}px sans-serif`;
  ctx.fillStyle = "rgb(255,236,64)";
  ctx.strokeStyle = "black";
  ctx.lineWidth = Math.max(2, font / 5);
  const pad = Math.max(2, font / 4);
  const spots = [[L.labels.top, W / 2, pad, "center", "top"],
                 [L.labels.bottom, W / 2, H - pad, "center", "bottom"],
                 [L.labels.left, pad, H / 2, "left", "middle"],
                 [L.labels.right, W - pad, H / 2, "right", "middle"]];
  for (const [text, x, y, align, base] of spots) {
    ctx.textAlign = align; ctx.textBaseline = base;
    ctx.strokeText(text, x, y); ctx.fillText(text, x, y);
  }
  ctx.restore();
  // caption and slider, in the scan's own slice numbers
  const step = h.step[L.fixed], full = h.full_shape[L.fixed];
  const shown = Math.min(full, index * step + 1);
  const mm = (index * step - (full - 1) / 2) * h.full_spacing[L.fixed];
  const sign = mm >= 0 ? "+" : "\u2212";
  const text = `${NAMES[plane]} · slice ${shown}/${full} (${sign}${Math.abs(mm).toFixed(0)} mm ` +
    `from centre)${h.suffix}`;
  cell.caption.textContent = text;
  canvas.setAttribute("aria-label", `${text}. Click to move the other planes here; the wheel, ` +
    "a drag up or down or the slider steps the slice.");
  canvas.dataset.slice = String(shown);
  canvas.dataset.drawn = String(performance.now());
  if (cell.slider.value !== String(index + 1)) cell.slider.value = String(index + 1);
}
"""

_CSS = """
:host { display: block; width: 100%; container-type: inline-size; }
.tt-grid { width: 100%; display: grid; gap: 0.75rem; grid-template-columns: repeat(3, 1fr); }
/* one plane a row on a narrow page (the page's columns stack below 1100 px too) */
@container (max-width: 640px) {
  .tt-grid { grid-template-columns: minmax(0, 480px); justify-content: center; }
}
.tt-cell { min-width: 0; }
canvas { display: block; width: 100%; cursor: crosshair; touch-action: none; background: #000; }
.tt-caption { font-size: 0.85rem; opacity: 0.75; margin: 0.25rem 0 0.1rem 0; }
input[type=range] { width: 100%; accent-color: #ff4b4b; }
"""

_COMPONENT = st.components.v2.component("tumortrace_mpr", js=_JS, css=_CSS)


def steps(shape_xyz: Sequence[int]) -> tuple[int, int, int]:
    """Subsampling step per axis so no axis sent to the browser exceeds :data:`MAX_AXIS`."""
    return tuple(max(1, math.ceil(int(n) / MAX_AXIS)) for n in shape_xyz)  # type: ignore[return-value]


class Body(NamedTuple):
    """What the browser draws from, deflated once per scan, window and masks (the header, which
    carries the position, is rebuilt on every rerun)."""

    deflated: bytes
    full_shape: tuple[int, int, int]
    step: tuple[int, int, int]
    vid: str


def body(
    grey_xyz: np.ndarray,
    brain_xyz: np.ndarray | None = None,
    lesion_xyz: np.ndarray | None = None,
) -> Body:
    """The deflated ``(X, Y, Z)`` uint8 grey volume (C order, every :func:`steps`-th voxel) and,
    when a mask is given, the ``(X, Y, Z)`` mask byte (:data:`BRAIN_BIT`, :data:`LESION_BIT`).

    Args:
        grey_xyz: ``(X, Y, Z)`` uint8, the scan after its display window.
        brain_xyz, lesion_xyz: optional ``(X, Y, Z)`` bool masks to outline.
    """
    full_shape = tuple(int(n) for n in grey_xyz.shape)
    step = steps(full_shape)
    sub = (slice(None, None, step[0]), slice(None, None, step[1]), slice(None, None, step[2]))
    grey = np.ascontiguousarray(grey_xyz[sub], dtype=np.uint8)
    parts = [grey.tobytes()]
    if brain_xyz is not None or lesion_xyz is not None:
        mask = np.zeros(grey.shape, np.uint8)
        for bits, m in ((BRAIN_BIT, brain_xyz), (LESION_BIT, lesion_xyz)):
            if m is not None and m.shape == full_shape:
                mask |= np.asarray(m[sub], bool).astype(np.uint8) * np.uint8(bits)
        parts.append(mask.tobytes())
    deflated = zlib.compress(b"".join(parts), 1)
    vid = hashlib.sha1(deflated).hexdigest()[:16]
    return Body(deflated, full_shape, step, vid)  # type: ignore[arg-type]


def payload(
    b: Body,
    *,
    point_xyz: Sequence[int],
    seq: int,
    grid: str,
    spacing_xyz: Sequence[float],
    convention: str,
    crosshair: bool,
    suffix: str = "",
) -> bytes:
    """The component's bytes: ``uint32`` header length, the JSON header, then ``b``'s deflated
    volume.

    Args:
        point_xyz: voxel the planes cross at, on the full grid of ``b``.
        seq: bumped by the server each time it moves the planes itself; the browser keeps its own
            position while ``seq`` and ``grid`` are unchanged.
        grid: names what is shown (the scan, or the networks' input): a new grid also takes
            ``point_xyz``.
        spacing_xyz: voxel size in mm of the full grid.
        suffix: appended to each plane's caption.
    """
    layouts = {}
    for plane in viz.PLANES:
        lay = viz.plane_layout(plane, convention)  # type: ignore[arg-type]
        labels = viz.edge_labels(plane, convention)  # type: ignore[arg-type]
        layouts[plane] = {
            "fixed": lay.fixed_axis, "row": lay.row_axis, "rowFlip": lay.row_flip,
            "col": lay.col_axis, "colFlip": lay.col_flip, "labels": labels._asdict(),
        }  # fmt: skip
    shape = [len(range(0, n, k)) for n, k in zip(b.full_shape, b.step, strict=True)]
    header = {
        "vid": b.vid,
        "grid": grid,
        "shape": shape,
        "full_shape": list(b.full_shape),
        "step": list(b.step),
        "spacing": [float(s) * k for s, k in zip(spacing_xyz, b.step, strict=True)],
        "full_spacing": [float(s) for s in spacing_xyz],
        "point": [
            min(int(p) // k, n - 1) for p, k, n in zip(point_xyz, b.step, shape, strict=True)
        ],
        "seq": int(seq),
        "crosshair": bool(crosshair),
        "planes": layouts,
        "suffix": suffix,
    }
    head = json.dumps(header).encode()
    return struct.pack("<I", len(head)) + head + b.deflated


def read_header(data: bytes) -> dict:
    """The JSON header of :func:`payload`'s bytes (what the browser reads first)."""
    (n,) = struct.unpack("<I", data[:4])
    return json.loads(data[4 : 4 + n])


def mpr(data: bytes, *, key: str, on_point: Callable[[], None]) -> None:
    """Shows the three planes of :func:`payload`'s ``data``; ``on_point`` runs (before the
    fragment reruns) when the user has moved them, and reads :func:`reported_point`."""
    _COMPONENT(key=key, data=data, on_point_change=on_point, width="stretch", height="content")


def reported_point(key: str, full_shape: Sequence[int], seq: int) -> tuple[int, int, int] | None:
    """The voxel (on the full grid ``full_shape``) the browser reported for component ``key``, in
    its ``on_point`` callback; None when there is none, or when it was reported before the
    server last moved the planes (an older ``seq``)."""
    state = st.session_state.get(key)
    value = state.get("point") if isinstance(state, dict) else getattr(state, "point", None)
    if not isinstance(value, dict) or not isinstance(value.get("xyz"), list):
        return None
    if value.get("seq") != seq:
        return None
    xyz = value["xyz"]
    if len(xyz) != 3 or not all(isinstance(v, int) for v in xyz):
        return None
    return tuple(  # type: ignore[return-value]
        int(np.clip(v * k, 0, n - 1))
        for v, k, n in zip(xyz, steps(full_shape), full_shape, strict=True)
    )
