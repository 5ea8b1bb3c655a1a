"""Every default of the project, in frozen dataclasses.

Axis convention (fixed project-wide): a loaded volume is an array in canonical RAS indexed
``(x, y, z)`` = (left->right, posterior->anterior, inferior->superior). The network input is
``(N, 1, D, H, W)`` with ``D = z`` (the axial slice axis is the video networks' "time"),
``H = y`` and ``W = x``. Every tuple named ``*_dhw`` below is in that D, H, W order.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Literal

CLASSES: tuple[str, str, str] = ("healthy", "lgg", "hgg")
"""Class order used everywhere: label index i means ``CLASSES[i]``."""

TUMOUR_CLASSES: tuple[str, str] = ("lgg", "hgg")
"""The classes that are a tumour (everything but healthy)."""

GLIOMA = "glioma"
"""A manifest label beside :data:`CLASSES`: a real glioma whose grade no evidence gives (trained
with a loss over LGG + HGG, never given a guessed grade)."""

LABELS: tuple[str, str, str, str] = (*CLASSES, GLIOMA)
"""Every label a manifest may hold."""

GLIOMA_INDEX = -1
"""The label index of :data:`GLIOMA` (no class of its own: not an index into :data:`CLASSES`)."""

IntensityMode = Literal["zscore", "percentile"]
Space = Literal["native", "mni"]
AugmentMode = Literal["none", "light", "heavy", "scanner"]
DeviceMode = Literal["auto", "cuda", "cpu"]
LesionLayer = Literal["layer2", "layer3"]

LESION_LAYERS: tuple[str, str] = ("layer2", "layer3")
"""The stages the auxiliary lesion head may read (:mod:`tumortrace.supervision`)."""


@dataclass(frozen=True)
class PreprocessConfig:
    """The one deterministic pipeline shared by training and inference.

    Stored in every model card; inference always uses the card's own copy.

    Attributes:
        spacing_mm: target voxel size in millimetres, in (D, H, W) = (z, y, x) order.
        shape_dhw: model grid size (D, H, W) after the brain-centred crop or pad.
        intensity: ``"zscore"`` over the foreground, or ``"percentile"`` rescale to [0, 1].
        percentiles: lower/upper percentiles for clipping (both modes clip to these first).
        space: ``"mni"``, the standard-space pipeline (:mod:`tumortrace.standard`: brain
            extraction, registration to MNI152, the brain in a fixed template box, z-scored inside
            the brain mask), or ``"native"``, the legacy head-crop pipeline
            (:func:`tumortrace.preprocess.preprocess`) that weights made before the standard space
            were trained with. Cards without this key are legacy: read as ``"native"``.
        fill: standard space only: the value outside the brain mask after z-scoring, the same in
            every case (below the brain's darkest tissue, never mid-range).
    """

    spacing_mm: tuple[float, float, float] = (2.5, 1.5, 1.5)
    shape_dhw: tuple[int, int, int] = (64, 128, 128)
    intensity: IntensityMode = "zscore"
    percentiles: tuple[float, float] = (0.5, 99.5)
    space: Space = "mni"
    fill: float = -3.0

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict (tuples become lists)."""
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}

    @classmethod
    def from_dict(cls, d: dict[str, Any], where: str = "preprocess") -> PreprocessConfig:
        """Inverse of :meth:`to_dict`, checked against :data:`PREPROCESS_SCHEMA`.

        Missing keys take the defaults; unknown keys are ignored.

        Raises:
            ValueError: not an object, or a field of the wrong type or out of range; the message
                names the field (``<where>.<field>``), the value and what is expected (the card
                reader turns it into a :class:`~tumortrace.errors.CheckpointError`).
        """
        if not isinstance(d, dict):
            raise ValueError(f"{where} is {_short(d)}; expected an object.")
        known = {f.name for f in fields(cls)}
        kwargs = {k: tuple(v) if isinstance(v, list) else v for k, v in d.items() if k in known}
        for name, value in kwargs.items():
            _check_field(f"{where}.{name}", value, PREPROCESS_SCHEMA[name])
        lo, hi = kwargs.get("percentiles", cls.percentiles)
        if not lo < hi:
            raise ValueError(
                f"{where}.percentiles is {[lo, hi]}; expected the lower below the upper."
            )
        n = 1
        for s in kwargs.get("shape_dhw", cls.shape_dhw):
            n *= int(s)
        if n > MAX_MODEL_VOXELS:
            raise ValueError(
                f"{where}.shape_dhw is {list(kwargs['shape_dhw'])} = {n:,} voxels; expected at "
                f"most {MAX_MODEL_VOXELS:,} (e.g. 128x128x128), a bound on inference memory."
            )
        kwargs.setdefault("space", "native")  # cards written before the standard space existed
        return cls(**kwargs)


LOW_CONFIDENCE = 0.6
"""Below this top probability a verdict is flagged as low confidence (the app's verdict lines);
a healthy verdict at or above it is confident, and the viewer then opens at the centre."""

CAM_DISPLAY_THRESHOLD = 0.2
"""Map values (0-1) below this are not drawn over the scan by default; the optional DICOM
Segmentation of a map (:mod:`tumortrace.dicom_out`) holds the voxels at or above it."""

MAX_MODEL_VOXELS = 2**21
"""Largest model grid a card may ask for (inference memory and time grow with it)."""

PREPROCESS_SCHEMA: dict[str, tuple[Any, ...]] = {
    "spacing_mm": ("numbers", 3, 0.1, 20.0, "mm"),
    "shape_dhw": ("integers", 3, 4, 512, "voxels"),
    "intensity": ("choice", "zscore", "percentile"),
    "percentiles": ("numbers", 2, 0.0, 100.0, "percent"),
    "space": ("choice", "mni", "native"),
    "fill": ("number", -10.0, 10.0, "z-score"),
}
"""Types and ranges of every :class:`PreprocessConfig` field as read from a card."""


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def _check_field(name: str, value: Any, rule: tuple[Any, ...]) -> None:
    """Raises ``ValueError`` naming ``name`` when ``value`` breaks ``rule``."""
    kind = rule[0]
    if kind == "choice":
        if value not in rule[1:]:
            choices = ", ".join(repr(c) for c in rule[1:])
            raise ValueError(f"{name} is {_short(value)}; expected one of {choices}.")
        return
    if kind == "number":
        _, lo, hi, unit = rule
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not lo <= value <= hi:
            raise ValueError(
                f"{name} is {_short(value)}; expected a number between {lo:g} and {hi:g} ({unit})."
            )
        return
    _, n, lo, hi, unit = rule
    plain = int if kind == "integers" else (int, float)
    items = value if isinstance(value, tuple) else None
    if (
        items is None
        or len(items) != n
        or any(isinstance(v, bool) or not isinstance(v, plain) for v in items)
        or not all(lo <= v <= hi for v in items)  # also False for NaN
    ):
        what = "integers" if kind == "integers" else "numbers"
        shown = list(value) if isinstance(value, tuple) else value
        raise ValueError(
            f"{name} is {_short(shown)}; expected {n} {what} between {lo:g} and {hi:g} ({unit})."
        )


@dataclass(frozen=True)
class IOLimits:
    """Guards for reading user files and uploads.

    Every size guard is checked from headers (NIfTI header, zip central directory, DICOM tags)
    before any voxel array exists; the decompression counters then hold the headers to their word.
    """

    max_decompressed_bytes: int = 1_500_000_000
    """Cap on bytes after gzip/zip decompression (a gzip bomb stops here)."""
    max_upload_bytes: int = 1_000_000_000
    """Cap on the raw bytes of an upload (matches ``.streamlit/config.toml``)."""
    max_zip_members: int = 5000
    min_axis: int = 8
    max_axis: int = 1024
    min_spacing_mm: float = 0.05
    max_spacing_mm: float = 20.0
    max_voxels: int = 2**27
    """Cap on voxels of one volume (512**3; 0.5 GB as the float32 working copy), from headers."""
    max_compression_ratio: float = 100.0
    """Cap on decompressed / compressed size (gzip or zip), checked once the decompressed size
    declared by the headers exceeds :attr:`ratio_check_bytes`. MRI compresses 2-10x."""
    ratio_check_bytes: int = 64_000_000
    """Below this many decompressed bytes the ratio is not checked (small masks compress well)."""
    max_dicom_file_bytes: int = 64_000_000
    """Cap on one DICOM file's size on disk and on its declared pixel bytes."""
    min_fov_mm: float = 20.0
    """Smallest field of view (mm) along each axis that preprocessing accepts."""
    min_resampled_axis: int = 4
    """Fewest voxels along each axis after resampling to the model spacing."""
    max_antialias_macs: float = 1.5e10
    """Cap on the anti-aliasing filter's cost: input voxels x total Gaussian taps over the axes."""
    worker_memory_bytes: int = 3 * 2**30
    """Address-space limit (RLIMIT_AS) of the child process that parses an upload."""
    worker_timeout_s: float = 120.0
    """Wall-clock limit of the child process that parses an upload."""


@dataclass(frozen=True)
class SyntheticCohort:
    """The embedded default training cohort: the seed paper's class balance (260/74/260), halved."""

    counts: tuple[tuple[str, int], ...] = (("healthy", 130), ("lgg", 37), ("hgg", 130))
    size: Literal["brats", "ixi", "small"] = "small"
    seed: int = 2024


@dataclass(frozen=True)
class TrainConfig:
    """Everything one ``python train.py`` run needs. ``train.py`` maps flags onto this."""

    arch: str = "mc3"
    folds: int = 3
    test_fraction: float = 0.2
    val_fraction: float = 0.15
    epochs: int = 30
    batch_size: int = 8
    lr: float = 1e-4
    """Adam learning rate. From scratch on the synthetic cohort, 1e-3 and 3e-4 stalled near chance
    for 5+ epochs while 1e-4 learned (``scripts/train_demo.sh``)."""
    weight_decay: float = 1e-4
    cosine: bool = True
    patience: int = 8
    dropout: float = 0.3
    pretrained: bool = False
    pretrained_path: Path | None = None
    augment: AugmentMode = "light"
    """``scanner``: registration-residual jitter and scanner variation for standard-space inputs
    (:mod:`tumortrace.augment`)."""
    balanced: bool = False
    """Class-balanced batches (each class an equal share of every epoch's draws) and an unweighted
    cross entropy, instead of shuffled batches and the ``1 - n_c / N`` weights."""
    healthy_reference: bool = False
    """Subtract, inside the network, the mean input of the training part's healthy cases."""
    ship_fold: int | None = None
    """Ship this fold's network (default: the best fold by validation macro-F1, or ``refit``)."""
    preprocess: PreprocessConfig = field(default_factory=PreprocessConfig)
    device: DeviceMode = "auto"
    workers: int = 2
    seed: int = 42
    out: Path = Path("weights")
    resume: bool = False
    refit: bool = False
    """Ship a model refitted on all data (train+val of every fold) instead of the best fold."""
    manifest: Path | None = None
    brats: Path | None = None
    brats_grades: Path | None = None
    ixi: Path | None = None
    data_dir: Path = Path("data")
    """Where the embedded synthetic cohort and the preprocessed-tensor cache live."""
    synthetic: SyntheticCohort = field(default_factory=SyntheticCohort)
    max_steps_per_epoch: int | None = None
    lesion_weight: float = 0.0
    """λ of the auxiliary lesion loss ``λ · (BCE + soft Dice)`` (:mod:`tumortrace.supervision`):
    a 1x1x1 convolution on :attr:`lesion_layer` predicts the lesion mask; 0 turns it off."""
    lesion_layer: LesionLayer = "layer3"
    """The stage the lesion head reads (``layer2`` keeps a finer grid; MC3 keeps every slice)."""
    attention_weight: float = 0.0
    """μ of the attention term: the share of the positive class-activation energy (CAM from
    ``layer4`` and the ``fc`` weights) outside the dilated lesion, on tumour cases with a mask."""
    attention_margin: int = 1
    """Voxels (model grid) the lesion mask is dilated by before the attention term measures what
    lies outside it."""
    carved: bool = True
    """Train on the ``carved`` cases (False: left out of the training and validation parts; the
    test parts keep them)."""
    healthy_made: bool = True
    """Train on the ``healthy-made`` cases (False: as :attr:`carved`)."""
    splits: Path | None = None
    """A splits file (``<out>/benchmarks/<arch>.splits.json`` of an earlier run) to reuse instead of
    making folds: the baselines train on the networks' folds. It is copied byte for byte."""
