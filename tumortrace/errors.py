"""The project's exceptions.

Every boundary (file read, upload, manifest, CLI flag, checkpoint) raises a subclass of
:class:`TumorTraceError` whose message says what was received, what was expected and what to do.
The app shows the message and keeps running; the CLI prints it and exits non-zero.
"""

from __future__ import annotations


class TumorTraceError(Exception):
    """Base class of every error a user can cause."""


class InvalidVolumeError(TumorTraceError):
    """A file is not a usable 3D MRI volume (format, shape, values, spacing)."""


class UnsafeArchiveError(TumorTraceError):
    """An upload or archive breaks a safety rule (size cap, gzip bomb, path traversal)."""


class ManifestError(TumorTraceError):
    """A manifest, dataset tree or fold split is malformed or inconsistent."""


class CheckpointError(TumorTraceError):
    """Weights or a model card are missing, tampered with or do not match."""


class ConfigError(TumorTraceError):
    """A configuration value or CLI flag is invalid (unknown architecture, shape too small...)."""


class DicomExportError(TumorTraceError):
    """A DICOM series cannot be given DICOM results (missing geometry, an attribute refused)."""
