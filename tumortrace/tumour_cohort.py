"""The real-tumour cohort: real gliomas with masks, real tumours carved into real healthy brains,
tumour brains made healthy, other sites' healthy brains and synthetic lesions, every format seen
with and without a tumour.

Built by :func:`build_tumour_cohort` from a ``shared/real-data``-style folder
(:func:`tumortrace.sources.discover_real`); every scan goes through the standard-space pipeline once
(:func:`tumortrace.standard.standardise_cached`, each scan's input checks kept in ``checks.json``).
The cases, by ``kind`` (the manifest's column):

* ``real``: every real scan as it is (IXI, other sites, NFBS, BraTS, TCGA-LGG; post- and
  non-contrast scans of one patient are two cases of one patient). A lesion mask is rewritten on
  the scan's grid as 1 tumour (BraTS necrotic core 1 and enhancing tumour 4, or TCGA-LGG's FLAIR
  abnormality), 2 oedema (BraTS 2), and warped into the template (nearest neighbour) to check that
  its volume survives (``mask_check.csv``). The bundled sample's patient (``held_out``) is left out.
* ``carved``: a real tumour with its mask carved into an IXI brain
  (:func:`tumortrace.carve.carve_tumour`). Donors and recipients are dealt into small clusters
  (:attr:`TumourCohortSpec.donors_per_cluster` patients with masks, and
  :attr:`~TumourCohortSpec.recipients_per_cluster` IXI brains); each donor is carved
  :attr:`~TumourCohortSpec.carves_per_donor` times into its cluster's recipients, cycling through
  the placements and its scans (TCGA-LGG and BraTS format, non-contrast and post-contrast), so a
  patient never links more than one cluster. The class is the donor's.
* ``healthy-made``: a masked tumour scan whose lesion region could be filled from the mirrored
  hemisphere (:func:`tumortrace.carve.fill_from_mirror`), label healthy, in the donor's own format.
* ``synthetic``: synthetic lesions (:func:`tumortrace.cohort.insert_lesion`) in IXI brains, and a
  synthetic HGG in each healthy-made brain, so HGG is seen in every format too.

**Groups.** A case holds the data of its patient, its base brain and its donor
(:attr:`tumortrace.manifest.Case.patients`); the manifest's ``group`` is the connected component
of "shares a patient", so a fold never puts one person in two parts.

Axis convention: native arrays are canonical RAS ``(X, Y, Z)``.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

import nibabel as nib
import numpy as np
from tqdm.auto import tqdm

from tumortrace.carve import carve_tumour, choose_placement, fill_from_mirror
from tumortrace.cohort import TissueLevels, insert_lesion, tissue_levels, write_like, write_mask
from tumortrace.errors import InvalidVolumeError, ManifestError
from tumortrace.files import atomic_path, atomic_write_json, atomic_write_text, sha256_file
from tumortrace.io import Volume, load_volume
from tumortrace.manifest import Case, lesion_mask_path, write_manifest
from tumortrace.sources import RealScan, discover_real
from tumortrace.standard import StandardSpace, save_cached, standardise_cached, warp
from tumortrace.synthetic import subject_seed
from tumortrace.template import load_template

__all__ = [
    "KINDS",
    "TumourCohortSpec",
    "build_tumour_cohort",
    "carving_clusters",
    "describe_tumour_cohort",
    "lesion_labels",
    "patient_components",
]

KINDS: tuple[str, ...] = ("real", "carved", "healthy-made", "synthetic")
"""How a case was made, in the order the card lists them."""

LICENCES: dict[str, str] = {
    "ixi": "IXI: CC BY-SA 3.0 (brain-development.org)",
    "brats": "BraTS data terms (cite Menze et al. 2015, Bakas et al. 2017, Baid et al. 2021)",
    "tcga-lgg": (
        "TCGA-LGG via TCIA (TCIA data usage policy, CC BY 3.0); LGG Segmentation Dataset, Buda et "
        "al. 2019 (Kaggle page: CC BY-NC-SA 4.0)"
    ),
    "tcga-gbm": "TCGA-GBM via TCIA (TCIA data usage policy, CC BY 3.0)",
    "nfbs": "NFBS (NKI-Rockland), CC BY",
    "other-site": "NiChart demo data and MRtrix3 test data: no data licence stated (development)",
}
"""Each source's terms, named in every card trained on the cohort."""


@dataclass(frozen=True)
class TumourCohortSpec:
    """What :func:`build_tumour_cohort` makes (every switch is recorded in the cohort card).

    Attributes:
        seed: seeds the clusters, margins, placements and synthetic lesions.
        carved: make carved cases.
        healthy_made: make healthy-made cases.
        synthetic: make synthetic-lesion cases.
        donors_per_cluster: tumour patients per carving cluster.
        recipients_per_cluster: IXI brains per carving cluster.
        carves_per_donor: carved cases per donor.
        placements: cycled per donor: ``own``, ``mirrored``, ``shifted``.
        margin_mm: range of the random margin carried around a carved mask.
        edge_mm: soft edge of a carved region.
        fill_margin_mm: range of the random margin of a healthy-made fill.
        synthetic_lgg_share: IXI brains that also get a synthetic LGG (every one gets an HGG).
        synthetic_hgg_in_healthy_made: a synthetic HGG in every healthy-made brain.
        held_out: patients left out entirely (the bundled real sample).
    """

    seed: int = 2026
    carved: bool = True
    healthy_made: bool = True
    synthetic: bool = True
    donors_per_cluster: int = 2
    recipients_per_cluster: int = 3
    carves_per_donor: int = 4
    placements: tuple[str, ...] = ("own", "mirrored", "shifted")
    margin_mm: tuple[float, float] = (0.0, 6.0)
    edge_mm: float = 4.0
    fill_margin_mm: tuple[float, float] = (3.0, 8.0)
    synthetic_lgg_share: float = 0.2
    synthetic_hgg_in_healthy_made: bool = True
    held_out: tuple[str, ...] = ("TCGA-02-0003",)


@dataclass
class _Scan:
    """A loaded real scan with its standard space and tissue levels (built lazily)."""

    scan: RealScan
    cache: Path
    volume: Volume | None = None
    std: StandardSpace | None = None
    levels: TissueLevels | None = None
    mask: np.ndarray | None = None
    notes: list[str] = field(default_factory=list)

    def load(self) -> _Scan:
        if self.volume is None:
            self.volume = load_volume(self.scan.path)
            self.std = standardise_cached(self.volume, self.scan.path, self.cache, checks=False)
            if self.scan.mask is not None:
                raw = load_volume(self.scan.mask).data
                if raw.shape != self.volume.data.shape:
                    raise InvalidVolumeError(
                        f"{self.scan.mask.name}: mask grid {raw.shape} is not the scan's "
                        f"{self.volume.data.shape}."
                    )
                self.mask = lesion_labels(raw, self.scan.mask_labels)
        return self

    def tissue(self) -> TissueLevels:
        if self.levels is None:
            assert self.volume is not None and self.std is not None
            self.levels = tissue_levels(self.volume, self.std)
        return self.levels


def lesion_labels(raw: np.ndarray, coding: str) -> np.ndarray:
    """A source's mask as the project's labels: ``(X, Y, Z)`` uint8, 1 tumour, 2 oedema.

    ``"brats"``: 1 necrotic core and 4 enhancing tumour -> 1, 2 oedema -> 2 (every labelled voxel
    is "tumour, any part"); ``"binary"``: anything > 0 -> 1.
    """
    r = np.rint(np.asarray(raw)).astype(np.int16)
    if coding == "brats":
        return np.where((r == 1) | (r == 4), 1, np.where(r == 2, 2, 0)).astype(np.uint8)
    return (r > 0).astype(np.uint8)


def carving_clusters(
    donors: Sequence[str], recipients: Sequence[str], spec: TumourCohortSpec
) -> list[tuple[list[str], list[str]]]:
    """Seeded ``[(donor patients, recipient patients)]``: every donor in exactly one cluster, every
    cluster with :attr:`~TumourCohortSpec.recipients_per_cluster` recipients of its own (as many
    clusters as the recipients allow; donors beyond them are left out)."""
    rng = np.random.default_rng([spec.seed, 11])
    d = [donors[i] for i in rng.permutation(len(donors))] if donors else []
    r = [recipients[i] for i in rng.permutation(len(recipients))] if recipients else []
    n = min(-(-len(d) // spec.donors_per_cluster), len(r) // spec.recipients_per_cluster)
    per = spec.recipients_per_cluster
    return [(d[i::n] if n else [], r[i * per : (i + 1) * per]) for i in range(n)]


def patient_components(cases: Iterable[Case]) -> dict[str, str]:
    """``{subject_id: group}``: the connected components of "shares a patient"
    (:attr:`~tumortrace.manifest.Case.patients`), each named by its smallest patient id."""
    cases = list(cases)
    parent: dict[str, str] = {}

    def find(x: str) -> str:
        parent.setdefault(x, x)
        while parent[x] != x:
            parent[x] = parent[parent[x]]
            x = parent[x]
        return x

    for c in cases:
        ps = sorted(c.patients)
        for p in ps[1:]:
            a, b = find(ps[0]), find(p)
            if a != b:
                parent[max(a, b)] = min(a, b)
    return {c.subject_id: find(min(c.patients)) for c in cases}


def _standard_mask_check(entry: _Scan, out: Path) -> dict:
    """Warps a real case's mask into the template (nearest neighbour); its volume in ml natively
    and in the template, and the template volume divided by the registration's volume scale (so a
    brain scaled to the template's size does not count as mask lost or gained)."""
    assert entry.volume is not None and entry.std is not None and entry.mask is not None
    tpl = load_template()
    t2n = entry.std.registration.template_to_native
    warped = warp(entry.mask, entry.volume.affine, t2n, tpl.affine, tpl.t1.shape, order=0)
    warped = np.rint(warped).astype(np.uint8)
    path = out / "standard" / f"{entry.scan.subject_id}_lesion.nii.gz"
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        nib.save(nib.Nifti1Image(warped, tpl.affine), tmp)
    native_ml = float((entry.mask > 0).sum()) * float(np.prod(entry.volume.spacing)) / 1000.0
    tpl_ml = float((warped > 0).sum()) * float(np.prod(tpl.spacing)) / 1000.0
    det = abs(float(np.linalg.det(entry.std.registration.native_to_template[:3, :3])))
    return {
        "subject_id": entry.scan.subject_id,
        "native_ml": round(native_ml, 3),
        "template_ml": round(tpl_ml, 3),
        "volume_scale": round(det, 4),
        "template_ml_native_scale": round(tpl_ml / det, 3),
        "ratio": round(tpl_ml / det / native_ml, 4) if native_ml else None,
    }


def _write_case(
    out: Path, sid: str, like: Path, volume: Volume, data: np.ndarray, mask: np.ndarray | None
) -> Path:
    path = out / "volumes" / f"{sid}.nii.gz"
    write_like(like, volume, data, path)
    if mask is not None:
        write_mask(volume, mask, lesion_mask_path(path))
    return path


def _done(out: Path, sid: str) -> dict | None:
    """The stored meta of a case written by an earlier run, or None."""
    meta = out / "lesions" / f"{sid}.json"
    if not meta.is_file():
        return None
    d = json.loads(meta.read_text())
    return (
        d if (not d.get("written", True) or (out / "volumes" / f"{sid}.nii.gz").is_file()) else None
    )


def build_tumour_cohort(
    real_data: str | Path,
    out: str | Path,
    cache_dir: str | Path,
    spec: TumourCohortSpec = TumourCohortSpec(),
    progress: bool = True,
    log: Callable[[str], None] = print,
) -> list[Case]:
    """Writes the cohort (see the module docstring) under ``out`` and returns its cases.

    Args:
        real_data: a ``shared/real-data``-style folder.
        out: ``volumes/`` (made cases with their masks), ``masks/`` (real cases' masks),
            ``standard/`` (real masks in the template), ``lesions/`` (per-case parameters),
            ``manifest.csv``, ``cohort.json`` (the card), ``checks.json``, ``mask_check.csv``.
        cache_dir: the standard-space cache; every made case gets its base scan's entry.
        spec: what to make.
        progress: show progress bars.
        log: where skipped scans are reported.

    A rerun reuses what was written (resumable).

    Raises:
        ManifestError: no usable scans.
    """
    t0 = time.perf_counter()
    out, cache = Path(out), Path(cache_dir)
    for sub in ("volumes", "masks", "lesions", "standard"):
        (out / sub).mkdir(parents=True, exist_ok=True)
    scans = [s for s in discover_real(real_data) if s.patient not in spec.held_out]
    entries = {s.subject_id: _Scan(s, cache) for s in scans}
    cases: list[Case] = []
    checks: dict[str, dict] = {}
    mask_rows: list[dict] = []
    usable: dict[str, _Scan] = {}

    # 1. Every real scan through the standard space, as it is.
    for sid, e in tqdm(entries.items(), desc="real scans", unit="scan", disable=not progress):
        try:
            e.load()
        except InvalidVolumeError as err:
            log(f"skipped {sid}: {err}")
            continue
        assert e.std is not None and e.volume is not None
        checks[sid] = {**e.std.qc.to_dict(), "registered": bool(e.std.registration.ok)}
        if not e.std.registration.ok or not e.std.brain.any():
            log(f"skipped {sid}: {'; '.join(e.std.qc.warnings)}")
            continue
        usable[sid] = e
        mask_path = None
        if e.mask is not None:
            mask_path = out / "masks" / f"{sid}_lesion.nii.gz"
            if not mask_path.is_file():
                write_mask(e.volume, e.mask, mask_path)
            mask_rows.append(_standard_mask_check(e, out))
        s = e.scan
        cases.append(
            Case(
                sid,
                s.path.resolve(),
                s.label,
                s.source,
                kind="real",
                patient=s.patient,
                mask=mask_path.resolve() if mask_path else None,
            )
        )
        e.volume = e.std = e.mask = None  # reloaded when carving needs it (memory)

    # 2. Healthy-made: each masked scan's lesion filled from the mirrored hemisphere.
    healthy_made: dict[str, bool] = {}
    if spec.healthy_made:
        masked = [sid for sid, e in usable.items() if e.scan.mask is not None]
        for i, sid in enumerate(tqdm(masked, desc="healthy-made", disable=not progress)):
            e = usable[sid].load()
            try:
                cases += _healthy_made(out, cache, e, i, spec, healthy_made, log)
            finally:
                e.volume = e.std = e.mask = None

    # 3. Carved: real tumours into IXI brains, cluster by cluster.
    if spec.carved:
        cases += _carve_all(out, cache, usable, spec, progress, log)

    # 4. Synthetic lesions in the IXI brains.
    if spec.synthetic:
        ixi = sorted(sid for sid, e in usable.items() if e.scan.source == "ixi")
        rng = np.random.default_rng([spec.seed, 17])
        lgg = {
            ixi[i] for i in rng.permutation(len(ixi))[: round(spec.synthetic_lgg_share * len(ixi))]
        }
        for sid in tqdm(ixi, desc="synthetic", disable=not progress):
            e = usable[sid].load()
            labels = (["lgg"] if sid in lgg else []) + ["hgg"]
            cases += _synthetic(out, cache, e, e.volume, sid, labels, spec, log)
            e.volume = e.std = e.mask = None

    if not cases:
        raise ManifestError("build_tumour_cohort: every scan was skipped (see the log).")
    groups = patient_components(cases)
    cases = [replace(c, group=groups[c.subject_id]) for c in cases]
    write_manifest(cases, out / "manifest.csv", relative=False)
    atomic_write_json(out / "checks.json", checks, indent=1)
    _write_mask_check(out / "mask_check.csv", mask_rows)
    card = describe_tumour_cohort(cases, spec, healthy_made, mask_rows, time.perf_counter() - t0)
    atomic_write_json(out / "cohort.json", card, indent=1)
    return cases


def _healthy_made(
    out: Path,
    cache: Path,
    e: _Scan,
    index: int,
    spec: TumourCohortSpec,
    possible: dict[str, bool],
    log: Callable[[str], None],
) -> list[Case]:
    """The healthy-made case of one masked scan (and its synthetic HGG), or nothing where the fill
    is not possible (recorded in ``possible``)."""
    assert e.volume is not None and e.std is not None and e.mask is not None
    sid = e.scan.subject_id
    hid = f"{sid}+healthy-made"
    meta = _done(out, hid)
    if meta is None:
        rng = np.random.default_rng([spec.seed, 13, index])
        margin = float(rng.uniform(*spec.fill_margin_mm))
        filled = fill_from_mirror(e.volume, e.std, e.mask, margin, spec.edge_mm)
        meta = {"subject_id": hid, "donor_scan": sid, "written": filled is not None}
        if filled is not None:
            _write_case(out, hid, e.scan.path, e.volume, filled.data, None)
            meta.update(filled.meta)
        atomic_write_json(out / "lesions" / f"{hid}.json", meta)
    possible[sid] = bool(meta["written"])
    if not meta["written"]:
        return []
    path = out / "volumes" / f"{hid}.nii.gz"
    save_cached(cache, sha256_file(path), e.std)
    s = e.scan
    made = [Case(hid, path.resolve(), "healthy", s.source, kind="healthy-made", patient=s.patient)]
    if spec.synthetic and spec.synthetic_hgg_in_healthy_made:
        made += _synthetic(out, cache, e, load_volume(path), hid, ["hgg"], spec, log)
    return made


def _write_mask_check(path: Path, rows: Sequence[dict]) -> None:
    cols = [
        "subject_id",
        "native_ml",
        "template_ml",
        "volume_scale",
        "template_ml_native_scale",
        "ratio",
    ]
    lines = [",".join(cols)] + [",".join(str(r[c]) for c in cols) for r in rows]
    atomic_write_text(path, "\n".join(lines) + "\n")


def _synthetic(
    out: Path,
    cache: Path,
    e: _Scan,
    volume: Volume,
    base: str,
    labels: Sequence[str],
    spec: TumourCohortSpec,
    log: Callable[[str], None],
) -> list[Case]:
    """Synthetic lesions of ``labels`` in ``volume`` (a real scan or a healthy-made one, on the
    grid of ``e``'s scan, sharing its standard space)."""
    assert e.std is not None
    made = []
    like = out / "volumes" / f"{base}.nii.gz" if e.scan.subject_id != base else e.scan.path
    try:
        levels = tissue_levels(volume, e.std)
    except InvalidVolumeError as err:
        log(f"no synthetic lesion in {base}: {err}")
        return []
    for label in labels:
        sid = f"{base}+{label}"
        path = out / "volumes" / f"{sid}.nii.gz"
        if _done(out, sid) is None:
            seed = subject_seed(spec.seed, label, _name_index(sid))
            try:
                case = insert_lesion(volume, e.std, levels, label, seed)
            except InvalidVolumeError as err:
                log(f"no synthetic {label} in {base}: {err}")
                continue
            _write_case(out, sid, like, volume, case.data, case.mask)
            atomic_write_json(
                out / "lesions" / f"{sid}.json", {"subject_id": sid, "base": base, **case.meta}
            )
        save_cached(cache, sha256_file(path), e.std)
        made.append(
            Case(
                sid,
                path.resolve(),
                label,
                e.scan.source,
                kind="synthetic",
                patient=e.scan.patient,
                mask=lesion_mask_path(path).resolve(),
            )
        )
    return made


def _name_index(name: str) -> int:
    """A stable index from a subject id (seeds that do not depend on the order of the cases)."""
    return int(hashlib.sha256(name.encode()).hexdigest()[:8], 16) % 1_000_000


def _donor_scans(patient: str, usable: dict[str, _Scan]) -> list[str]:
    """A donor patient's masked scans, interleaved by format and contrast (BraTS t1, TCGA t1c,
    BraTS t1c, TCGA t1, ...), so successive carves use each of them."""
    own = sorted(
        (sid for sid, e in usable.items() if e.scan.patient == patient and e.scan.mask is not None),
        key=lambda sid: (usable[sid].scan.contrast != "t1", usable[sid].scan.source != "brats"),
    )
    by_source: dict[str, list[str]] = {}
    for sid in own:
        by_source.setdefault(usable[sid].scan.source, []).append(sid)
    lists = list(by_source.values())
    return [
        x
        for i in range(max(map(len, lists), default=0))
        for lst in lists
        if i < len(lst)
        for x in [lst[i]]
    ]


def _carve_all(
    out: Path,
    cache: Path,
    usable: dict[str, _Scan],
    spec: TumourCohortSpec,
    progress: bool,
    log: Callable[[str], None],
) -> list[Case]:
    donors = sorted({e.scan.patient for e in usable.values() if e.scan.mask is not None})
    recipients = sorted(sid for sid, e in usable.items() if e.scan.source == "ixi")
    made: list[Case] = []
    clusters = carving_clusters(donors, recipients, spec)
    for ci, (cd, cr) in enumerate(tqdm(clusters, desc="carved", disable=not progress)):
        for di, donor in enumerate(cd):
            options = _donor_scans(donor, usable)
            for t in range(spec.carves_per_donor):
                rid = cr[(di + t) % len(cr)]
                dsid = options[t % len(options)]
                sid = f"{rid}+carve-{dsid}"
                if any(c.subject_id == sid for c in made):
                    sid = f"{sid}-{t}"
                path = out / "volumes" / f"{sid}.nii.gz"
                r, d = usable[rid].load(), usable[dsid].load()
                if _done(out, sid) is None:
                    rng = np.random.default_rng([spec.seed, 19, ci, di, t])
                    kind = spec.placements[t % len(spec.placements)]
                    try:
                        placement = choose_placement(d.mask, d.volume, d.std, kind, rng)
                        carved = carve_tumour(
                            r.volume,
                            r.std,
                            r.tissue(),
                            d.volume,
                            d.std,
                            d.tissue(),
                            d.mask,
                            placement,
                            float(rng.uniform(*spec.margin_mm)),
                            spec.edge_mm,
                            rng,
                        )
                    except InvalidVolumeError as err:
                        log(f"no carve {sid}: {err}")
                        continue
                    _write_case(out, sid, r.scan.path, r.volume, carved.data, carved.mask)
                    atomic_write_json(
                        out / "lesions" / f"{sid}.json",
                        {
                            "subject_id": sid,
                            "recipient": rid,
                            "donor_scan": dsid,
                            "donor_source": d.scan.source,
                            "donor_contrast": d.scan.contrast,
                            **carved.meta,
                        },
                    )
                save_cached(cache, sha256_file(path), r.std)
                made.append(
                    Case(
                        sid,
                        path.resolve(),
                        d.scan.label,
                        r.scan.source,
                        kind="carved",
                        patient=r.scan.patient,
                        donor=donor,
                        mask=lesion_mask_path(path).resolve(),
                    )
                )
        for sid in {*cr, *(x for p in cd for x in _donor_scans(p, usable))}:
            e = usable[sid]
            e.volume = e.std = e.mask = None
            e.levels = None
    return made


def describe_tumour_cohort(
    cases: Sequence[Case],
    spec: TumourCohortSpec,
    healthy_made: dict[str, bool],
    mask_rows: Sequence[dict],
    seconds: float,
) -> dict:
    """The cohort card: counts by class x source x kind, patients, what was possible, mask checks,
    the switches, the licences and the build time."""
    counts = Counter((c.label, c.source, c.kind) for c in cases)
    tumour_patients = sorted(
        {c.patient for c in cases if c.kind == "real" and c.label != "healthy"}
    )
    ratios = [r["ratio"] for r in mask_rows if r["ratio"] is not None]
    worst = max(mask_rows, key=lambda r: abs((r["ratio"] or 1.0) - 1.0), default=None)
    sources = sorted({c.source for c in cases})
    return {
        "description": (
            f"{len(tumour_patients)} real tumour patients, "
            f"{sum(1 for c in cases if c.kind == 'carved')} real tumours carved into IXI brains, "
            f"{sum(1 for c in cases if c.kind == 'healthy-made')} tumour scans made healthy, "
            f"{sum(1 for c in cases if c.kind == 'synthetic')} synthetic lesions, and "
            f"{sum(1 for c in cases if c.kind == 'real' and c.label == 'healthy')} real healthy "
            "brains"
        ),
        "counts": [
            {"label": k[0], "source": k[1], "kind": k[2], "n": n} for k, n in sorted(counts.items())
        ],
        "n": len(cases),
        "groups": len({c.group for c in cases}),
        "real_tumour_patients": len(tumour_patients),
        "healthy_made_possible": {k: v for k, v in sorted(healthy_made.items())},
        "mask_check": {
            "cases": len(mask_rows),
            "ratio_min": min(ratios, default=None),
            "ratio_max": max(ratios, default=None),
            "worst": worst,
            "rule": "template ml / registration volume scale vs native ml (nearest neighbour)",
        },
        "spec": {k: list(v) if isinstance(v, tuple) else v for k, v in vars(spec).items()},
        "held_out": list(spec.held_out),
        "licences": {s: LICENCES.get(s, "see the data folder's README") for s in sources},
        "seconds": round(seconds, 1),
    }
