"""The resume file ``<out>/<arch>.resume.pt``: where an interrupted ``train.py`` run continues.

Written atomically by rank 0 after every epoch (and at the start of each fold) with
``torch.save``; read with ``torch.load(weights_only=True)`` (tensors and plain containers only,
never arbitrary pickles). It holds the finished folds, the best fold so far, the current fold's
:class:`~tumortrace.loop.FoldProgress` and optimiser state, and a fingerprint of the settings:
a resume with other settings is refused. Deleted once the run's outputs are written.
"""

from __future__ import annotations

import io
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch

from tumortrace.config import TrainConfig
from tumortrace.errors import ConfigError
from tumortrace.files import atomic_write_bytes

RESUME_VERSION = 1


def resume_path(cfg: TrainConfig) -> Path:
    """Where the resume checkpoint of ``cfg.arch`` lives: ``<out>/<arch>.resume.pt``."""
    return cfg.out / f"{cfg.arch}.resume.pt"


def _fingerprint(cfg: TrainConfig) -> dict[str, str]:
    """Settings that must match for a resume (device, workers and resume itself may change)."""
    skip = {"resume", "device", "workers"}
    return {k: repr(v) for k, v in asdict(cfg).items() if k not in skip}


def save_resume(cfg: TrainConfig, state: dict[str, Any]) -> None:
    """Writes ``state`` (plain containers of tensors and numbers) with the settings' fingerprint."""
    buf = io.BytesIO()
    torch.save({"version": RESUME_VERSION, "config": _fingerprint(cfg), **state}, buf)
    atomic_write_bytes(resume_path(cfg), buf.getvalue())


def load_resume(cfg: TrainConfig) -> dict[str, Any]:
    """The state saved by :func:`save_resume` for the same settings.

    Raises:
        ConfigError: no file, an unreadable or foreign file, or one written with other settings.
    """
    path = resume_path(cfg)
    if not path.is_file():
        raise ConfigError(
            f"--resume was given but there is no resume checkpoint at {path}; "
            "run without --resume to start afresh."
        )
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # a truncated or foreign file: explain, keep the cause
        raise ConfigError(
            f"Resume checkpoint {path} is unreadable ({err}); delete it and run without --resume."
        ) from err
    if state.get("version") != RESUME_VERSION:
        raise ConfigError(f"Resume checkpoint {path} has an unknown version; delete it.")
    diff = {
        k: (v, state["config"].get(k))
        for k, v in _fingerprint(cfg).items()
        if state["config"].get(k) != v
    }
    if diff:
        listed = "; ".join(f"{k}: now {a}, saved {b}" for k, (a, b) in diff.items())
        raise ConfigError(
            f"Resume checkpoint {path} was written with other settings ({listed}). "
            "Use the same flags, or run without --resume to start afresh."
        )
    return state
