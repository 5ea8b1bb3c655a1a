"""A digest ("seal") tying each benchmark JSON to its model card and its weights file.

``train.py`` writes ``<out>/benchmarks/<arch>.json`` with a ``seal``::

    {"weights_sha256": <SHA-256 of <arch>.safetensors>,
     "card_sha256": <SHA-256 of the card's sealed fields>,
     "digest": <SHA-256 of the benchmark's own content plus the two hashes above>}

:func:`verify` recomputes all three from the files on disk; the Benchmarks page shows a
benchmark whose seal does not match as **unverified**, with the reason.

What the seal protects against: a benchmark shown beside weights it was not measured on (weights
retrained, swapped or edited, even with the card's ``weights_sha256`` recomputed); a card whose
sealed fields (architecture, classes, preprocessing, dropout, metrics, weights hash) were edited
after training; a benchmark file edited by hand (e.g. metrics raised to 0.999); stale or corrupt
files. What it does NOT protect against: someone who edits a file on purpose and recomputes the
digests, which anyone can do with this module: the seal is a checksum, not a signature, and the
card's own hash sits in the same editable folder. Trust in the weights folder itself must come from
where it was obtained (a signed release, a checksum published elsewhere).

Every JSON document is hashed in one canonical form (:func:`canonical_sha256`: keys sorted, no
spaces, NaN as null), so formatting or key order do not matter, values do.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tumortrace.files import jsonable, sha256_bytes, sha256_file

__all__ = [
    "SEALED_CARD_FIELDS",
    "SEAL_KEY",
    "Verification",
    "canonical_sha256",
    "card_sha256",
    "seal",
    "valid_weights_file",
    "verify",
    "weights_path",
]

SEAL_KEY = "seal"
SEALED_CARD_FIELDS = ("arch", "classes", "preprocess", "dropout", "metrics", "weights_sha256")
"""The card fields a benchmark's seal covers (what changes predictions or claims results)."""


_WEIGHTS_FILE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,200}\.safetensors")


def valid_weights_file(name: object) -> bool:
    """True for a card's ``weights_file``: empty, or a bare ``*.safetensors`` name (no folder,
    no ``..``), so a card can never point outside its own folder."""
    return name == "" or (isinstance(name, str) and _WEIGHTS_FILE.fullmatch(name) is not None)


def weights_path(card_path: str | Path, weights_file: str = "") -> Path:
    """Where a card's weights are: ``weights_file`` beside the card, else
    ``<card stem>.safetensors``.

    Raises:
        ValueError: an invalid ``weights_file`` (see :func:`valid_weights_file`).
    """
    if not valid_weights_file(weights_file):
        raise ValueError(f"invalid weights file name {weights_file!r}")
    card_path = Path(card_path)
    if weights_file:
        return card_path.parent / weights_file
    return card_path.with_suffix(".safetensors")


def canonical_sha256(obj: Any) -> str:
    """SHA-256 of ``obj`` as canonical JSON (keys sorted, compact, non-finite floats as null)."""
    text = json.dumps(jsonable(obj), sort_keys=True, separators=(",", ":"), allow_nan=False)
    return sha256_bytes(text.encode("utf-8"))


def card_sha256(card: dict[str, Any]) -> str:
    """Hash of a card dict's :data:`SEALED_CARD_FIELDS` (missing fields hash as null)."""
    return canonical_sha256({k: card.get(k) for k in SEALED_CARD_FIELDS})


def _digest(doc: dict[str, Any], weights: str, card: str) -> str:
    body = {k: v for k, v in doc.items() if k != SEAL_KEY}
    return canonical_sha256({"benchmark": body, "weights_sha256": weights, "card_sha256": card})


def seal(benchmark: dict[str, Any], card: dict[str, Any]) -> dict[str, Any]:
    """``benchmark`` (made JSON-ready) with a ``seal`` tying it to ``card`` and its weights.

    Args:
        benchmark: the benchmark document as it will be written.
        card: the model card as written (``ModelCard.to_dict()``), with ``weights_sha256`` set.

    Returns:
        A new dict: the benchmark's keys plus :data:`SEAL_KEY`.
    """
    doc = {k: v for k, v in jsonable(benchmark).items() if k != SEAL_KEY}
    weights, core = str(card.get("weights_sha256", "")), card_sha256(jsonable(card))
    return {
        **doc,
        SEAL_KEY: {
            "weights_sha256": weights,
            "card_sha256": core,
            "digest": _digest(doc, weights, core),
        },
    }


@dataclass(frozen=True)
class Verification:
    """Whether a benchmark matches its card and weights on disk.

    Attributes:
        verified: True when the seal, the card's sealed fields and the weights file all match.
        reason: what matched, or the first thing that did not, in plain words.
    """

    verified: bool
    reason: str


def verify(benchmark: dict[str, Any], card_path: str | Path) -> Verification:
    """Checks a benchmark document against ``card_path`` and the ``.safetensors`` beside it.

    Never raises: anything missing or unreadable gives ``verified=False`` with the reason.
    """
    card_path = Path(card_path)
    s = benchmark.get(SEAL_KEY) if isinstance(benchmark, dict) else None
    if not isinstance(s, dict) or not all(
        isinstance(s.get(k), str) for k in ("weights_sha256", "card_sha256", "digest")
    ):
        return Verification(False, "the benchmark has no seal (written before sealing, or edited)")
    try:
        card = json.loads(card_path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:
        return Verification(False, f"its model card {card_path.name} is unreadable ({err})")
    if not isinstance(card, dict):
        return Verification(False, f"its model card {card_path.name} is not a JSON object")
    name = card.get("weights_file") or ""
    if not valid_weights_file(name):
        return Verification(
            False, f"its model card names an invalid weights file {str(name)[:40]!r}"
        )
    weights = weights_path(card_path, name)
    if not weights.is_file():
        return Verification(False, f"the weights file {weights.name} is missing")
    try:
        actual = sha256_file(weights)
    except OSError as err:
        return Verification(False, f"the weights file {weights.name} is unreadable ({err})")
    if actual != card.get("weights_sha256"):
        return Verification(False, f"{weights.name} does not match its card's hash")
    if s["weights_sha256"] != actual:
        return Verification(False, f"it was measured on other weights than {weights.name}")
    if s["card_sha256"] != card_sha256(card):
        fields = ", ".join(SEALED_CARD_FIELDS)
        return Verification(False, f"the card was edited after training (one of: {fields})")
    if s["digest"] != _digest(benchmark, s["weights_sha256"], s["card_sha256"]):
        return Verification(False, "the benchmark file was edited after it was written")
    return Verification(True, "benchmark, card and weights match")
