"""A synthetic cohort on disk: each phantom's volume, lesion mask and sidecar JSON, the manifest
and a montage of axial slices (``python -m tumortrace synth``, and the training run's embedded
cohort)."""

from __future__ import annotations

import gzip
from collections.abc import Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

import nibabel as nib
import numpy as np
from PIL import Image, ImageDraw
from tqdm.auto import tqdm

from tumortrace.config import CLASSES
from tumortrace.errors import ConfigError
from tumortrace.files import atomic_path, atomic_write_bytes, atomic_write_json
from tumortrace.manifest import Case, lesion_mask_path, write_manifest
from tumortrace.synthetic import Phantom, check_label, check_size, make_phantom, subject_seed


def _nifti_gz(array: np.ndarray, affine: np.ndarray, dtype: str) -> bytes:
    """NIfTI-1 bytes gzipped at level 1 with a fixed mtime (nibabel's level 6 is much slower)."""
    img = nib.Nifti1Image(array.astype(dtype), affine)
    img.header.set_xyzt_units("mm")
    img.set_qform(affine, code=1)
    img.set_sform(affine, code=1)
    return gzip.compress(img.to_bytes(), compresslevel=1, mtime=0)


def _write_case(out: Path, sid: str, ph: Phantom) -> Path:
    """Writes one phantom's volume, lesion mask and sidecar JSON; returns the volume's path."""
    path = out / f"{sid}.nii.gz"
    atomic_write_bytes(path, _nifti_gz(ph.data, ph.affine, ph.meta["global"]["dtype"]))
    atomic_write_bytes(lesion_mask_path(path), _nifti_gz(ph.lesion, ph.affine, "uint8"))
    atomic_write_json(out / f"{sid}.json", dict(ph.meta, subject_id=sid), indent=1)
    return path


def _axial_tile(ph: Phantom, height: int = 180) -> Image.Image:
    """Axial slice through the lesion centroid (mid slice if healthy), anterior up, RAS display."""
    flips = {"RAS": (), "LPS": (0, 1), "LAS": (0,)}[ph.meta["global"]["orientation"]]
    data = np.flip(ph.data, flips) if flips else ph.data
    if ph.lesion.any():
        k = int(np.argwhere(np.flip(ph.lesion, flips) if flips else ph.lesion)[:, 2].mean())
    else:
        k = data.shape[2] // 2
    sl = data[:, :, k].T[::-1]
    lo, hi = np.percentile(sl, [0.5, 99.8])
    img8 = (np.clip((sl - lo) / max(hi - lo, 1e-6), 0, 1) * 255).astype(np.uint8)
    sx, sy = ph.meta["global"]["spacing"][:2]
    width = round(height * sl.shape[1] * sx / (sl.shape[0] * sy))
    return Image.fromarray(img8).resize((width, height), Image.BILINEAR)


def _montage(tiles: dict[str, list[tuple[str, dict, Image.Image]]], path: Path) -> Path:
    """A PNG with one labelled row of axial tiles per class: ``{class: [(id, meta, tile)]}``."""
    tw = max((t.width for items in tiles.values() for _, _, t in items), default=180)
    th, label_h, left = 180, 16, 70
    ncol = max((len(v) for v in tiles.values()), default=1)
    canvas = Image.new("L", (left + ncol * (tw + 4), len(tiles) * (th + label_h + 6) + 4), 0)
    draw = ImageDraw.Draw(canvas)
    for r, (cls, items) in enumerate(tiles.items()):
        y = 4 + r * (th + label_h + 6)
        draw.text((6, y + th // 2), cls.upper(), fill=255)
        for c, (sid, meta, tile) in enumerate(items):
            x = left + c * (tw + 4)
            canvas.paste(tile, (x, y))
            ml = meta["lesion_volume_ml"]
            atyp = " atyp" if meta["atypical"] else ""
            text = f"{sid} {ml:.0f}ml{atyp}" if cls != "healthy" else sid
            draw.text((x + 2, y + th + 2), text, fill=255)
    with atomic_path(path) as tmp:
        canvas.save(tmp, format="PNG")
    return path


def write_cohort(
    out: Path,
    counts: Mapping[str, int],
    seed: int = 0,
    size: str = "small",
    progress: bool = True,
) -> list[Case]:
    """Writes a synthetic cohort: volumes, lesion masks, sidecar JSON, manifest and montage.

    Files: ``<out>/<subject_id>.nii.gz`` (the volume, in its drawn dtype and storage order),
    ``<out>/<subject_id>_lesion.nii.gz`` (uint8 mask, same grid and affine),
    ``<out>/<subject_id>.json`` (:attr:`Phantom.meta`), ``<out>/manifest.csv`` (relative paths)
    and ``<out>/montage.png``.
    Subject ids look like ``syn-hgg-0003``; subject i of class c uses :func:`subject_seed`.

    Args:
        out: output folder (created).
        counts: volumes per class, e.g. ``{"healthy": 20, "lgg": 20, "hgg": 20}``.
        seed: cohort seed.
        size: one of :data:`tumortrace.synthetic.SIZES`.
        progress: show a tqdm progress bar.

    Returns:
        The written cases (absolute paths, ``source="synthetic"``), in class order.

    Raises:
        ConfigError: unknown class or size, negative or non-integer count, or an empty cohort.
    """
    check_size(size)
    for cls, n in counts.items():
        check_label(cls)
        if not isinstance(n, int | np.integer) or n < 0:
            raise ConfigError(f"Count for {cls!r} must be a non-negative int, got {n!r}.")
    if sum(counts.values()) == 0:
        raise ConfigError(f"Empty cohort: counts {dict(counts)} ask for no volumes; ask for >= 1.")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    jobs = [(c, i) for c in CLASSES for i in range(int(counts.get(c, 0)))]
    cases: list[Case] = []
    shown: dict[str, list[tuple[str, dict, Image.Image]]] = {
        c: [] for c in CLASSES if counts.get(c, 0)
    }
    pending: list[Future] = []
    # Writing (gzip) overlaps with synthesising the next phantom; zlib releases the GIL.
    with ThreadPoolExecutor(max_workers=1) as pool:
        for cls, i in tqdm(jobs, desc=f"synth {size}", unit="vol", disable=not progress):
            sid = f"syn-{cls}-{i:04d}"
            ph = make_phantom(cls, subject_seed(seed, cls, i), size)
            pending.append(pool.submit(_write_case, out, sid, ph))
            if len(shown[cls]) < 6:
                shown[cls].append((sid, ph.meta, _axial_tile(ph)))
            if len(pending) > 2:
                pending.pop(0).result()
            cases.append(Case(sid, (out / f"{sid}.nii.gz").resolve(), cls, "synthetic"))
        for f in pending:
            f.result()
    write_manifest(cases, out / "manifest.csv")
    _montage(shown, out / "montage.png")
    return cases
