"""The real-brain cohort: real healthy scans, and the same scans with a synthetic lesion inserted.

Every base scan (e.g. a real IXI T1) goes through the standard-space pipeline once
(:func:`tumortrace.standard.standardise_cached`: brain mask and registration to MNI152). Then:

* **healthy** is the scan as it is (its own file, untouched);
* **LGG** / **HGG** is the same scan with a lesion from :mod:`tumortrace.lesion`'s lesion models
  (:func:`tumortrace.lesion.draw_lesion`, :func:`tumortrace.lesion.render_lesion`), drawn in
  MNI space and mapped onto the scan's own voxel grid through its registration:

  1. the lesion's centre is a deep white-matter point of the template, so it lands in the subject's
     deep white matter;
  2. the mass effect (:func:`tumortrace.lesion.mass_effect`) displaces the subject's *own*
     tissue radially away from the lesion;
  3. intensities are relative to the subject's own tissue: the lesion model is written in units of
     white matter (WM = 1), so the subject's WM level (median under the registered template's WM
     prior, :func:`tissue_levels`) scales it; infiltration and oedema darken the subject's own
     tissue (grey or white matter) in proportion;
  4. voxels the lesion replaces get back the subject's own fine-scale noise level, so a lesion is
     never told apart by being smoother than the brain around it;
  5. the result is written in the base file's orientation, header and dtype (nibabel rescales an
     integer dtype so the brighter rim is never clipped).

The lesion mask (1 tumour, 2 oedema) is written beside each lesion case as
``<subject>_lesion.nii.gz`` (what ``explain-eval`` reads), with its parameters in
``lesions/<subject>.json``. Subjects are ``<base>`` (healthy), ``<base>+lgg`` and ``<base>+hgg``;
the manifest's ``group`` column is the base, so cross-validation keeps one brain in one part.

Axis convention: native arrays are canonical RAS ``(X, Y, Z)`` (:class:`tumortrace.io.Volume`).
"""

from __future__ import annotations

import csv
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np
from scipy import ndimage
from tqdm.auto import tqdm

from tumortrace.errors import ConfigError, InvalidVolumeError, ManifestError
from tumortrace.files import atomic_path, atomic_write_json, jsonable, sha256_file
from tumortrace.head_template import padded_template
from tumortrace.io import Volume, load_volume
from tumortrace.lesion import LesionParams, draw_lesion, mass_effect, render_lesion
from tumortrace.manifest import Case, lesion_mask_path, write_manifest
from tumortrace.standard import StandardSpace, save_cached, standardise_cached
from tumortrace.synthetic import subject_seed
from tumortrace.template import load_template

__all__ = [
    "COHORT_FILE",
    "CohortSpec",
    "LesionCase",
    "TissueLevels",
    "build_cohort",
    "choose_lesion_bases",
    "describe_cohort",
    "insert_lesion",
    "tissue_levels",
    "write_like",
    "write_mask",
]

COHORT_FILE = "cohort.json"
"""What :func:`build_cohort` writes beside the manifest: :func:`describe_cohort`."""

LICENCE = "IXI: CC BY-SA 3.0 (brain-development.org)"
"""The base scans' licence, named in every model card trained on the cohort."""

SEED_PAPER_COUNTS: dict[str, int] = {"healthy": 260, "lgg": 74, "hgg": 260}
"""The seed paper's class balance; the cohort keeps its proportions."""


@dataclass(frozen=True)
class CohortSpec:
    """What :func:`build_cohort` makes.

    Attributes:
        seed: seeds the choice of LGG bases and every lesion.
        lgg_share: LGG cases per base brain (default: the seed paper's 74 / 260).
        healthy_source: the manifest's ``source`` of the real scans as they are.
        source: the manifest's ``source`` of the lesion cases.
    """

    seed: int = 2026
    lgg_share: float = SEED_PAPER_COUNTS["lgg"] / SEED_PAPER_COUNTS["healthy"]
    healthy_source: str = "ixi"
    source: str = "ixi+synthetic-lesion"


@dataclass(frozen=True)
class TissueLevels:
    """A subject's own intensity levels, in the scan's units.

    Attributes:
        wm: median intensity under the registered template's white-matter prior (> 0.9).
        gm: median under its grey-matter prior (> 0.7).
        noise: fine-scale noise standard deviation (neighbouring-voxel differences in WM).
    """

    wm: float
    gm: float
    noise: float


@dataclass(frozen=True)
class LesionCase:
    """One written lesion case.

    Attributes:
        data: ``(X, Y, Z)`` float32 canonical scan with the lesion.
        mask: ``(X, Y, Z)`` uint8, 1 tumour (enhancing tissue, necrosis or LGG body), 2 oedema.
        meta: JSON-ready lesion parameters, volume (ml) and centre (scan mm).
    """

    data: np.ndarray
    mask: np.ndarray
    meta: dict


def _world(volume: Volume, idx: np.ndarray) -> np.ndarray:
    """``(..., 3)`` voxel indices -> ``(..., 3)`` scan RAS mm."""
    return idx @ volume.affine[:3, :3].T + volume.affine[:3, 3]


def _apply(m: np.ndarray, pts: np.ndarray) -> np.ndarray:
    """``(4, 4)`` affine applied to ``(..., 3)`` points."""
    return pts @ m[:3, :3].T + m[:3, 3]


def tissue_levels(volume: Volume, std: StandardSpace) -> TissueLevels:
    """The subject's white- and grey-matter levels and noise (see :class:`TissueLevels`).

    Raises:
        InvalidVolumeError: no brain or too little white matter to measure.
    """
    if not std.brain.any():
        raise InvalidVolumeError(f"{volume.source}: no brain mask to measure tissue levels on.")
    tpl = load_template()
    idx = np.argwhere(std.brain).astype(np.float64)
    mni = _apply(std.registration.native_to_template, _world(volume, idx))
    vox = _apply(np.linalg.inv(tpl.affine), mni).T
    wm = ndimage.map_coordinates(tpl.wm, vox, order=1, cval=0.0)
    gm = ndimage.map_coordinates(tpl.gm, vox, order=1, cval=0.0)
    values = volume.data[std.brain]
    if (wm > 0.9).sum() < 50:
        raise InvalidVolumeError(f"{volume.source}: too little white matter under the template.")
    wm_level = float(np.median(values[wm > 0.9]))
    gm_level = float(np.median(values[gm > 0.7])) if (gm > 0.7).sum() >= 50 else 0.7 * wm_level
    # Noise: robust spread of x-neighbour differences inside deep white matter.
    deep = np.zeros(volume.data.shape, bool)
    deep[tuple(idx[wm > 0.9].astype(int).T)] = True
    both = deep[:-1] & deep[1:]
    diff = (volume.data[1:] - volume.data[:-1])[both]
    noise = float(1.4826 * np.median(np.abs(diff - np.median(diff))) / np.sqrt(2.0))
    return TissueLevels(wm=wm_level, gm=gm_level, noise=noise)


def _lesion_region(volume: Volume, std: StandardSpace, les: LesionParams) -> tuple[slice, ...]:
    """Native voxel box holding the lesion, its oedema and the reach of its mass effect (where the
    displacement of :func:`tumortrace.lesion.mass_effect` exceeds about 0.25 mm)."""
    size = les.radius_mm + les.oedema_mm
    reach = max(1.45 * size + 4.0, 2.3 * (1.2 * size + 5.0))
    centre = _apply(std.registration.template_to_native, np.asarray(les.centre_mni))
    corners = np.array(
        [[sx, sy, sz] for sx in (-1, 1) for sy in (-1, 1) for sz in (-1, 1)], dtype=np.float64
    )
    lin = std.registration.template_to_native[:3, :3]
    pts = centre + (corners * reach) @ lin.T
    vox = _apply(np.linalg.inv(volume.affine), pts)
    lo = np.clip(np.floor(vox.min(0)).astype(int), 0, None)
    hi = np.minimum(np.ceil(vox.max(0)).astype(int) + 1, volume.data.shape)
    return tuple(slice(int(a), int(b)) for a, b in zip(lo, hi, strict=True))


def insert_lesion(
    volume: Volume, std: StandardSpace, levels: TissueLevels, label: str, seed: int
) -> LesionCase:
    """The scan with one synthetic ``label`` lesion (see the module docstring for the steps).

    Args:
        volume: the canonical base scan.
        std: its brain mask and registration.
        levels: its tissue levels (:func:`tissue_levels`).
        label: ``"lgg"`` or ``"hgg"``.
        seed: lesion seed (shape, size, place, intensities).

    Returns:
        :class:`LesionCase` on the scan's canonical grid.

    Raises:
        ConfigError: a label other than ``"lgg"`` / ``"hgg"``.
        InvalidVolumeError: the registration failed, or the lesion fell outside the scan.
    """
    if label not in ("lgg", "hgg"):
        raise ConfigError(f"insert_lesion needs label 'lgg' or 'hgg', got {label!r}.")
    if not std.registration.ok:
        raise InvalidVolumeError(f"{volume.source}: not registered; cannot place a lesion.")
    tpl = padded_template()
    les = draw_lesion(label, seed, tpl)
    assert les is not None  # a lesion label always draws one
    chans, origin, res = render_lesion(les, np.random.default_rng([seed, 2]), tpl)
    box = _lesion_region(volume, std, les)
    grid = np.stack(
        np.meshgrid(*(np.arange(s.start, s.stop) for s in box), indexing="ij"), -1
    ).astype(np.float64)
    q = _apply(std.registration.native_to_template, _world(volume, grid))  # subject's MNI mm

    # The lesion's channels at each native voxel (box voxels, trilinear).
    lvox = np.moveaxis((q - origin) / res, -1, 0)
    ch = [ndimage.map_coordinates(c, lvox, order=1, cval=0.0) for c in chans[0].numpy()]
    alpha, absolute, relative, tumour, _necrosis = ch

    # Mass effect: each voxel shows the subject's tissue from the displaced position.
    p = mass_effect(q.astype(np.float32), les).astype(np.float64)
    src = _apply(np.linalg.inv(volume.affine) @ std.registration.template_to_native, p)
    moved = ndimage.map_coordinates(
        volume.data, np.moveaxis(src, -1, 0), order=1, mode="nearest"
    ).astype(np.float32)
    brain_soft = ndimage.gaussian_filter(std.brain.astype(np.float32), 1.0)[box]
    alpha, absolute, relative, tumour = (
        c * brain_soft for c in (alpha, absolute, relative, tumour)
    )

    t = moved / levels.wm
    t_new = t * (1.0 - alpha) + absolute + relative * (0.4 + 0.6 * np.minimum(t, 1.0))
    rng = np.random.default_rng([seed, 4])
    # Restore the noise the replaced share of each voxel lost: (1-a)^2 + k^2 = 1.
    k = np.sqrt(np.clip(1.0 - (1.0 - alpha) ** 2, 0.0, 1.0))
    noise = k * (levels.noise / levels.wm) * rng.standard_normal(t.shape).astype(np.float32)
    out = volume.data.astype(np.float32, copy=True)
    inside = std.brain[box]
    out[box] = np.where(inside, (t_new + noise) * levels.wm, out[box])
    out[box] = np.where(inside, np.maximum(out[box], 0.0), out[box])

    mask = np.zeros(volume.data.shape, np.uint8)
    region = np.where(tumour >= 0.5, 1, np.where(alpha >= 0.5, 2, 0)).astype(np.uint8)
    mask[box] = np.where(inside, region, 0)
    if not (mask == 1).any():
        raise InvalidVolumeError(f"{volume.source}: lesion seed {seed} fell outside the brain.")
    voxel_ml = float(np.prod(volume.spacing)) / 1000.0
    centre_vox = np.argwhere(mask == 1).mean(0)
    meta = jsonable(
        {
            "label": label,
            "seed": seed,
            "lesion": les,
            "tumour_ml": round(float((mask == 1).sum()) * voxel_ml, 3),
            "lesion_ml": round(float((mask > 0).sum()) * voxel_ml, 3),
            "centre_mm": [round(float(v), 2) for v in _world(volume, centre_vox)],
            "tissue": {"wm": levels.wm, "gm": levels.gm, "noise": levels.noise},
        }
    )
    return LesionCase(data=out, mask=mask, meta=meta)


def write_like(base_path: Path, volume: Volume, array_xyz: np.ndarray, path: Path) -> None:
    """Writes a canonical array in the base file's orientation, header and dtype (atomically)."""
    base = nib.load(base_path)
    data = volume.to_original(array_xyz)
    header = base.header.copy()
    dtype = np.dtype(header.get_data_dtype())
    img = nib.Nifti1Image(data.astype(np.float32), base.affine, header=header)
    img.set_data_dtype(dtype)  # integer: nibabel picks a scale factor, so nothing is clipped
    if np.issubdtype(dtype, np.integer):
        img.header.set_slope_inter(np.nan, np.nan)
    with atomic_path(path) as tmp:
        nib.save(img, tmp)


def write_mask(volume: Volume, mask: np.ndarray, path: Path) -> None:
    """Writes a canonical ``(X, Y, Z)`` label array as uint8 NIfTI on the file's own grid."""
    img = nib.Nifti1Image(volume.to_original(mask).astype(np.uint8), volume.original_affine)
    img.set_qform(volume.original_affine, code=1)
    img.set_sform(volume.original_affine, code=1)
    with atomic_path(path) as tmp:
        nib.save(img, tmp)


def choose_lesion_bases(bases: Sequence[str], spec: CohortSpec) -> dict[str, list[str]]:
    """``{base: labels}``: every base is healthy and HGG; ``round(lgg_share * n)`` are also LGG.

    The LGG bases are a seeded draw, independent of the order of ``bases``.
    """
    ordered = sorted(bases)
    n_lgg = round(spec.lgg_share * len(ordered))
    rng = np.random.default_rng([spec.seed, 7])
    lgg = {ordered[i] for i in rng.permutation(len(ordered))[:n_lgg]}
    return {b: ["healthy", *(["lgg"] if b in lgg else []), "hgg"] for b in ordered}


def build_cohort(
    bases: Sequence[tuple[str, Path]],
    out: str | Path,
    cache_dir: str | Path,
    spec: CohortSpec = CohortSpec(),
    progress: bool = True,
    log: Callable[[str], None] = print,
) -> list[Case]:
    """Writes the cohort's lesion cases, masks and manifest under ``out``.

    Args:
        bases: ``(base subject id, scan path)`` of every real healthy scan.
        out: cohort folder: ``volumes/``, ``lesions/``, ``manifest.csv``.
        cache_dir: the standard-space cache (brain masks and registrations), filled as needed; a
            lesion case gets its base's entry (same grid, same brain), so training never runs
            deepbet and registration again for it.
        spec: seeds and class shares.
        progress: show a progress bar.
        log: where skipped bases are reported.

    Returns:
        The cases, in base order (healthy, lgg, hgg), with ``group`` = base subject id. A rerun
        reuses the lesion cases already written (resumable).

    Raises:
        ManifestError: no bases, or a duplicate base id.
    """
    bases = list(bases)
    if not bases:
        raise ManifestError("build_cohort needs at least one base scan.")
    ids = [b for b, _ in bases]
    if len(set(ids)) != len(ids):
        raise ManifestError("build_cohort: duplicate base subject ids.")
    out = Path(out)
    (out / "volumes").mkdir(parents=True, exist_ok=True)
    (out / "lesions").mkdir(parents=True, exist_ok=True)
    plan = choose_lesion_bases(ids, spec)
    paths = dict(bases)
    cases: list[Case] = []
    for base in tqdm(sorted(plan), desc="cohort", unit="brain", disable=not progress):
        path = Path(paths[base])
        try:
            volume = load_volume(path)
            std = standardise_cached(volume, path, cache_dir)
            if not std.registration.ok or not std.brain.any():
                raise InvalidVolumeError(f"{path.name}: {'; '.join(std.qc.warnings)}")
            levels = tissue_levels(volume, std)
        except InvalidVolumeError as err:
            log(f"skipped {base}: {err}")
            continue
        written = [Case(base, path.resolve(), "healthy", spec.healthy_source, group=base)]
        for label in plan[base][1:]:
            sid = f"{base}+{label}"
            vol_path = out / "volumes" / f"{sid}.nii.gz"
            meta_path = out / "lesions" / f"{sid}.json"
            if not (vol_path.is_file() and meta_path.is_file()):
                seed = subject_seed(spec.seed, label, ids.index(base))
                case = insert_lesion(volume, std, levels, label, seed)
                write_like(path, volume, case.data, vol_path)
                write_mask(volume, case.mask, lesion_mask_path(vol_path))
                atomic_write_json(meta_path, {"subject_id": sid, "base": base, **case.meta})
            # The lesion case shares its base's grid and brain: its cache entry is the base's.
            save_cached(cache_dir, sha256_file(vol_path), std)
            written.append(Case(sid, vol_path.resolve(), label, spec.source, group=base))
        cases += written
    if not cases:
        raise ManifestError("build_cohort: every base scan was skipped (see the log).")
    write_manifest(cases, out / "manifest.csv", relative=False)
    atomic_write_json(out / COHORT_FILE, describe_cohort(cases, spec), indent=1)
    return cases


def describe_cohort(cases: Sequence[Case], spec: CohortSpec) -> dict:
    """What a model card says about the cohort: the real brains by subject ID, their licence,
    that every lesion is synthetic, the class counts and a one-line description."""
    bases = sorted({c.group_id for c in cases})
    counts = {lab: sum(1 for c in cases if c.label == lab) for lab in ("healthy", "lgg", "hgg")}
    return {
        "description": (
            f"{len(bases)} real healthy T1 brains (IXI) as they are, and the same brains with "
            f"synthetic lesions ({counts['hgg']} HGG, {counts['lgg']} LGG); no real tumour"
        ),
        "base_subjects": bases,
        "licence": LICENCE,
        "lesions": "synthetic (tumortrace.synthetic lesion models inserted by tumortrace.cohort)",
        "counts": counts,
        "seed": spec.seed,
    }


def read_bases(manifest: str | Path, label: str = "healthy", prefix: str = "IXI") -> list:
    """``(subject, path)`` of a data manifest's rows with ``label`` whose subject starts with
    ``prefix`` (the layout of ``shared/real-data/manifest.csv``: ``local_path``, ``label``,
    ``subject``)."""
    manifest = Path(manifest)
    with manifest.open(newline="") as f:
        rows = list(csv.DictReader(f))
    out = []
    for r in rows:
        sid = r.get("subject") or r.get("subject_id") or ""
        rel = r.get("local_path") or r.get("path") or ""
        if r.get("label") == label and sid.startswith(prefix):
            out.append((sid, (manifest.parent / rel).resolve()))
    return out
