"""Self-describing weights: ``<name>.safetensors`` (fp16 on disk) beside a ``<name>.json`` card.

The card (:class:`ModelCard`) holds everything needed to rebuild the network and its preprocessing
(architecture, classes, :class:`~tumortrace.config.PreprocessConfig`, dropout) plus provenance
(data, folds, metrics, command, git commit, date) and the SHA-256 of the weights file, so a
tampered or mismatched file is refused before any tensor is used. Nothing here unpickles: weights
are safetensors and cards are JSON. Every file is written atomically (temporary file + rename), so
an interrupted run never leaves a half-written weights file or card.
"""

from __future__ import annotations

import dataclasses
import json
import re
import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load as load_safetensors_bytes
from safetensors.torch import save as save_safetensors_bytes
from torch import nn

from tumortrace.config import CLASSES, PreprocessConfig
from tumortrace.errors import CheckpointError, ConfigError
from tumortrace.files import (
    atomic_write_bytes,
    atomic_write_text,
    json_text,
    jsonable,
    sha256_bytes,
)
from tumortrace.models import (
    adopt_state,
    check_input_shape,
    create_model,
    get_spec,
    list_methods,
    state_dict_mismatch,
)
from tumortrace.provenance import valid_weights_file, weights_path
from tumortrace.runtime import resolve_device

CARD_FORMAT = 1
"""Version of the card layout; bumped on an incompatible change."""

_FP16_MAX = float(torch.finfo(torch.float16).max)
_WRAPPER_PREFIXES = ("module.", "_orig_mod.")  # DistributedDataParallel, torch.compile


@dataclass(frozen=True)
class ModelCard:
    """What a weights file is, how to rebuild it and where it came from.

    Attributes:
        arch: registry name (:func:`tumortrace.models.list_methods`: a network or a baseline).
        classes: output order; must equal :data:`tumortrace.config.CLASSES`.
        preprocess: the exact pipeline inference must use.
        dropout: head dropout the network was trained with.
        data: training data description, e.g. ``{"source": "synthetic", "counts": {"hgg": 130}}``.
        folds: number of cross-validation folds behind :attr:`metrics`.
        metrics: summary metrics (``{metric: {"mean", "std"}}``) of the cross-validation.
        command: the exact command line that produced the weights.
        git_commit: commit of the code that trained them.
        date: ISO 8601 date-time of training.
        weights_sha256: SHA-256 of the ``.safetensors`` file (filled in by :func:`save_checkpoint`).
        shipped: which model this is: ``"best_fold:N"``, ``"fold:N"`` (``--ship-fold``) or
            ``"refit"``.
        notes: free text.
        params: number of parameters.
        format_version: card layout version (:data:`CARD_FORMAT`).
        pipeline: the standard-space pipeline the weights were trained with
            (:func:`tumortrace.standard.pipeline_description`: version, deepbet, template,
            registration settings, input-check thresholds); empty for native-space cards.
        weights_file: the weights' file name beside the card (a bare ``*.safetensors`` name);
            empty means ``<card stem>.safetensors``
            (:func:`tumortrace.provenance.weights_path`). Lets a release add new weights under a
            new name while the old file is removed separately.
        training: how the network was trained beyond the optimiser: lesion supervision (λ, the
            head's layer, μ), the kinds of case trained without, augmentation
            (:func:`tumortrace.supervision.describe`); empty on cards written before it existed.
    """

    arch: str
    classes: tuple[str, ...] = CLASSES
    preprocess: PreprocessConfig = field(default_factory=PreprocessConfig)
    dropout: float = 0.3
    data: dict[str, Any] = field(default_factory=dict)
    folds: int = 0
    metrics: dict[str, Any] = field(default_factory=dict)
    command: str = ""
    git_commit: str = ""
    date: str = ""
    weights_sha256: str = ""
    shipped: str = ""
    notes: str = ""
    params: int = 0
    format_version: int = CARD_FORMAT
    pipeline: dict[str, Any] = field(default_factory=dict)
    weights_file: str = ""
    training: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict (tuples become lists, NaN becomes ``None``)."""
        out = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        out["classes"] = list(self.classes)
        out["preprocess"] = self.preprocess.to_dict()
        return jsonable(out)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ModelCard:
        """Inverse of :meth:`to_dict`; unknown keys are ignored (newer cards stay readable).

        Raises:
            CheckpointError: not a dict, no ``arch``, or a field of the wrong type.
        """
        if not isinstance(d, dict) or not isinstance(d.get("arch"), str):
            raise CheckpointError(
                f"A model card must be a JSON object with a string 'arch'; got {str(d)[:200]!r}."
            )
        known = {f.name for f in dataclasses.fields(cls)}
        kwargs = {k: v for k, v in d.items() if k in known}
        try:
            _check_card_fields(kwargs)
            if "classes" in kwargs:
                kwargs["classes"] = tuple(kwargs["classes"])
            if "preprocess" in kwargs:
                kwargs["preprocess"] = PreprocessConfig.from_dict(kwargs["preprocess"])
            for name, kind in (("dropout", float), ("folds", int), ("params", int)):
                if name in kwargs:
                    kwargs[name] = kind(kwargs[name])
            return cls(**kwargs)
        except (TypeError, ValueError, AttributeError, ConfigError) as err:
            detail = str(err).rstrip(".")
            raise CheckpointError(f"Malformed model card for {d.get('arch')!r}: {detail}.") from err

    def to_json(self) -> str:
        """The card as indented JSON text."""
        return json_text(self.to_dict())


def _check_card_fields(d: dict[str, Any]) -> None:
    """Types and ranges of a card's fields other than ``preprocess`` (checked by its own schema).

    Raises:
        ConfigError: naming the field, its value and what is expected.
    """

    def bad(name: str, expected: str) -> ConfigError:
        shown = repr(d[name])
        return ConfigError(f"{name} is {shown[:80]}; expected {expected}")

    if "classes" in d and (
        not isinstance(d["classes"], list | tuple)
        or not all(isinstance(c, str) for c in d["classes"])
    ):
        raise bad("classes", f"a list of class names like {list(CLASSES)}")
    if "dropout" in d and (
        isinstance(d["dropout"], bool)
        or not isinstance(d["dropout"], int | float)
        or not 0.0 <= d["dropout"] < 1.0
    ):
        raise bad("dropout", "a number in [0, 1)")
    for name in ("folds", "params", "format_version"):
        if name in d and (isinstance(d[name], bool) or not isinstance(d[name], int) or d[name] < 0):
            raise bad(name, "a non-negative integer")
    if d.get("format_version", CARD_FORMAT) > CARD_FORMAT:
        raise bad("format_version", f"at most {CARD_FORMAT} (a newer TumorTrace wrote this card)")
    sha = d.get("weights_sha256", "")
    if not isinstance(sha, str) or (sha and re.fullmatch(r"[0-9a-f]{64}", sha) is None):
        raise bad("weights_sha256", "64 lower-case hexadecimal digits")
    for name in ("data", "metrics", "training"):
        if name in d and not isinstance(d[name], dict):
            raise bad(name, "an object")
    for name in ("command", "git_commit", "date", "shipped", "notes"):
        if name in d and not isinstance(d[name], str):
            raise bad(name, "a string")
    if "weights_file" in d and not valid_weights_file(d["weights_file"]):
        raise bad("weights_file", "a bare file name ending in .safetensors (no folder), or empty")


def canonical_safetensors(blob: bytes) -> bytes:
    """The same safetensors file with its JSON header in one canonical order.

    ``safetensors`` writes its header from a hash map, so the key order of ``__metadata__`` (and
    so the file's bytes and SHA-256) could differ between two runs saving identical tensors. The
    header is re-serialised with sorted keys (tensor offsets unchanged, padded with spaces to a
    multiple of 8 bytes as the format requires); the tensor data is left as it is.
    """
    (n,) = struct.unpack("<Q", blob[:8])
    header = json.loads(blob[8 : 8 + n])
    text = json.dumps(header, sort_keys=True, separators=(",", ":")).encode("utf-8")
    text += b" " * (-len(text) % 8)
    return struct.pack("<Q", len(text)) + text + blob[8 + n :]


def unwrap_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """The model's state dict with DDP (``module.``) and ``torch.compile`` prefixes removed."""
    out = {}
    for key, value in model.state_dict().items():
        for prefix in _WRAPPER_PREFIXES:
            while key.startswith(prefix):
                key = key[len(prefix) :]
        out[key] = value
    return out


def fits_fp16(t: torch.Tensor) -> bool:
    """The one "fp16 unless it overflows" rule: a floating tensor is stored as fp16 when every
    value fits (fp16 halves the file), else as fp32 rather than turn into inf."""
    return t.is_floating_point() and (t.numel() == 0 or float(t.abs().max()) <= _FP16_MAX)


def _to_disk(t: torch.Tensor) -> torch.Tensor:
    t = t.detach().to("cpu")
    if t.is_floating_point():
        t = t.to(torch.float16 if fits_fp16(t) else torch.float32)
    elif t.dtype != torch.bool:
        t = t.to(torch.int64)
    return t.contiguous().clone()


def as_stored(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """``state`` rounded as :func:`save_checkpoint` stores it (fp16 where it fits), back in fp32,
    so a model loaded with it gives the logits a reload of the written file gives."""
    return {k: v.half().float() if fits_fp16(v) else v for k, v in state.items()}


def save_checkpoint(
    model: nn.Module, card: ModelCard, out_dir: str | Path, name: str | None = None
) -> Path:
    """Writes ``<out_dir>/<name>.safetensors`` and its card ``<out_dir>/<name>.json``.

    Floating tensors are stored as fp16 (BatchNorm running statistics included);
    ``num_batches_tracked`` stays int64. The card's ``weights_sha256`` is set to the file's hash.
    The weights are written before the card, so an interruption in between leaves a card whose hash
    no longer matches, which :func:`load_checkpoint` refuses.

    Args:
        model: from :func:`tumortrace.models.create_model` (DDP or compiled wrappers are fine).
        card: its description; ``card.arch`` names the network.
        out_dir: output folder (created if needed).
        name: file stem; default ``card.arch``.

    Returns:
        Path of the written card (``<out_dir>/<name>.json``).

    Raises:
        ConfigError: unknown architecture, or an unwritable folder.
        CheckpointError: the model does not match the card (architecture or number of classes).
    """
    get_spec(card.arch)
    inner = getattr(model, "module", model)
    inner = getattr(inner, "_orig_mod", inner)
    model_arch = getattr(inner, "arch", card.arch)
    if model_arch != card.arch:
        raise CheckpointError(
            f"The model is a {model_arch!r} network but the card says {card.arch!r}; "
            "pass a card built for this model."
        )
    head = getattr(inner, "fc", None)
    if isinstance(head, nn.Sequential) and isinstance(head[-1], nn.Linear):
        if head[-1].out_features != len(card.classes):
            raise CheckpointError(
                f"The model has {head[-1].out_features} outputs but the card lists "
                f"{len(card.classes)} classes {list(card.classes)}."
            )
        if isinstance(head[0], nn.Dropout):
            card = dataclasses.replace(card, dropout=float(head[0].p))
    tensors = {k: _to_disk(v) for k, v in unwrap_state_dict(model).items()}
    metadata = {
        "format": "tumortrace",
        "arch": card.arch,
        "classes": json.dumps(card.classes),
        "preprocess": json.dumps(card.preprocess.to_dict(), sort_keys=True),
    }
    blob = canonical_safetensors(save_safetensors_bytes(tensors, metadata=metadata))
    out_dir = Path(out_dir)
    stem = name or card.arch
    atomic_write_bytes(out_dir / f"{stem}.safetensors", blob)
    card = dataclasses.replace(
        card,
        weights_sha256=sha256_bytes(blob),
        params=card.params or sum(p.numel() for p in model.parameters()),
    )
    return atomic_write_text(out_dir / f"{stem}.json", card.to_json())


def resolve_card_path(path: str | Path, arch: str | None = None) -> Path:
    """Maps a card path, a weights path or a folder (+ ``arch``) to the card's path.

    Raises:
        CheckpointError: a folder without ``arch``, or a path that is neither ``.json`` nor
            ``.safetensors``.
    """
    path = Path(path)
    if path.is_dir():
        if arch is None:
            cards = sorted(p.name for p in path.glob("*.json"))
            raise CheckpointError(
                f"{path} is a folder: also give the architecture (one of {list_methods()}); "
                f"cards there: {cards}."
            )
        return path / f"{arch}.json"
    if path.suffix == ".safetensors":
        return path.with_suffix(".json")
    if path.suffix == ".json":
        return path
    raise CheckpointError(
        f"Unsupported weights path {path}; expected a <arch>.json card, its <arch>.safetensors "
        "file, or a folder holding them."
    )


def read_card(path: str | Path) -> ModelCard:
    """Reads and validates a card (no weights are read).

    Raises:
        CheckpointError: missing file, invalid JSON, malformed fields, or classes other than
            :data:`CLASSES`.
        ConfigError: unknown architecture.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(
            f"Model card not found: {path}. Train weights with `python train.py --arch ARCH` or "
            "point to a folder holding <arch>.json and <arch>.safetensors."
        )
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise CheckpointError(f"Model card {path} is not valid JSON: {err}.") from err
    try:
        card = ModelCard.from_dict(raw)
    except CheckpointError as err:
        raise CheckpointError(f"{path}: {err}") from err
    get_spec(card.arch)
    try:
        check_input_shape(card.arch, card.preprocess.shape_dhw)
    except ConfigError as err:
        raise CheckpointError(
            f"{path}: Malformed model card for {card.arch!r}: preprocess.shape_dhw: {err}"
        ) from err
    if tuple(card.classes) != CLASSES:
        raise CheckpointError(
            f"Model card {path} has classes {list(card.classes)}; expected {list(CLASSES)} "
            "(in this order). These weights belong to another task."
        )
    return card


def _check_preprocess_metadata(text: str, card: ModelCard, weights: Path) -> None:
    """The card's preprocessing must equal the one stored inside the weights file."""
    try:
        stored = json.loads(text)
    except ValueError as err:
        raise CheckpointError(f"Weights file {weights} has damaged metadata ({err}).") from err
    ours = card.preprocess.to_dict()
    if not isinstance(stored, dict):
        stored = {}
    for key in sorted(set(ours) | set(stored)):
        if stored.get(key) != ours.get(key):
            raise CheckpointError(
                f"Model card field preprocess.{key} is {ours.get(key)!r} but the weights file "
                f"{weights.name} was trained with {stored.get(key)!r}: the card was edited after "
                "training. Restore the card's original value."
            )


def load_checkpoint(
    card_path: str | Path,
    device: str | torch.device = "cpu",
    dtype: torch.dtype = torch.float32,
    arch: str | None = None,
) -> tuple[nn.Module, ModelCard]:
    """Rebuilds a network from its card and verified weights, in eval mode.

    Args:
        card_path: ``<name>.json``, ``<name>.safetensors`` or a folder (then give ``arch``).
        device: ``"cpu"``, ``"cuda"``, ``"auto"`` or a ``torch.device``.
        dtype: floating dtype of the returned parameters (fp16 on disk is widened).
        arch: architecture when ``card_path`` is a folder.

    Returns:
        ``(model, card)``: the model maps ``(N, 1, D, H, W)`` to logits ``(N, 3)`` and is in
        eval mode.

    Raises:
        CheckpointError: missing/malformed card, missing weights file, SHA-256 mismatch (tampered or
            corrupt), architecture mismatch, or missing/unexpected/mis-shaped tensors.
        ConfigError: unknown architecture or device.
    """
    path = resolve_card_path(card_path, arch)
    card = read_card(path)
    weights = weights_path(path, card.weights_file)
    if not weights.is_file():
        raise CheckpointError(
            f"Weights file {weights} is missing for card {path}; keep the weights file the card "
            "names (default <name>.safetensors) beside <name>.json (save_checkpoint writes both)."
        )
    blob = weights.read_bytes()
    digest = sha256_bytes(blob)
    if digest != card.weights_sha256:
        raise CheckpointError(
            f"Weights file {weights} has SHA-256 {digest[:16]}..., but its card expects "
            f"{card.weights_sha256[:16] or '(none)'}...: the file was modified or corrupted after "
            "it was saved. Restore the original file or retrain."
        )
    try:
        state = load_safetensors_bytes(blob)
        with safe_open(str(weights), framework="pt") as f:
            metadata = f.metadata() or {}
    except (SafetensorError, ValueError, OSError) as err:
        raise CheckpointError(
            f"Weights file {weights} is not a readable safetensors file: {err}."
        ) from err
    if metadata.get("arch", card.arch) != card.arch:
        raise CheckpointError(
            f"Weights file {weights} holds a {metadata['arch']!r} network but its card says "
            f"{card.arch!r}."
        )
    if "preprocess" in metadata:  # weights saved before this field have none
        _check_preprocess_metadata(metadata["preprocess"], card, weights)
    model = create_model(card.arch, num_classes=len(card.classes), dropout=card.dropout)
    adopt_state(model, state)
    expected = model.state_dict()
    mismatch = state_dict_mismatch(expected, state)
    if mismatch:
        raise CheckpointError(
            f"Weights file {weights} does not fit a {card.arch!r} network: "
            f"{mismatch}The file was saved from another architecture or shape."
        )
    model.load_state_dict({k: state[k].to(v.dtype) for k, v in expected.items()})
    model.to(device=resolve_device(device), dtype=dtype)
    model.eval()
    return model, card


def release(
    card_path: str | Path,
    out_dir: str | Path,
    weights_file: str,
    data: dict[str, Any] | None = None,
) -> Path:
    """Copies a trained network into a weights folder under a new weights file name.

    The card keeps every sealed field (the benchmark's seal stays valid) and gains
    :attr:`ModelCard.weights_file`; the bytes are verified against the card first.

    Args:
        card_path: the trained ``<arch>.json`` (its weights beside it).
        out_dir: the shipped weights folder; the card is written as ``<out_dir>/<arch>.json``.
        weights_file: the new weights file name, e.g. ``"mc3-ixi-2026-12.safetensors"``.
        data: added to the card's ``data`` (e.g. the cohort's subjects, licence, description).

    Returns:
        The written card's path.

    Raises:
        CheckpointError: an unreadable card, weights that do not match it, or a bad file name.
    """
    path = resolve_card_path(card_path)
    card = read_card(path)
    if not valid_weights_file(weights_file):
        raise CheckpointError(f"{weights_file!r} is not a bare *.safetensors file name.")
    blob = weights_path(path, card.weights_file).read_bytes()
    if sha256_bytes(blob) != card.weights_sha256:
        raise CheckpointError(f"{path}: its weights do not match the card; not released.")
    out_dir = Path(out_dir)
    atomic_write_bytes(out_dir / weights_file, blob)
    raw = json.loads(path.read_text(encoding="utf-8"))
    raw["weights_file"] = weights_file
    raw["data"] = {**(raw.get("data") or {}), **(data or {})}
    return atomic_write_text(out_dir / f"{card.arch}.json", json_text(raw))
