"""Files: one atomic writer (one file mode), one JSON conversion, one SHA-256 per purpose."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import numpy as np
import pytest
import torch

from tumortrace.errors import ConfigError
from tumortrace.files import (
    atomic_path,
    atomic_write_json,
    atomic_write_text,
    sha256_bytes,
    sha256_file,
)
from tumortrace.manifest import Case, write_manifest
from tumortrace.phantom_cohort import write_cohort


@pytest.fixture
def umask_022():
    old = os.umask(0o022)
    yield
    os.umask(old)


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_unwritable_output(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(ConfigError, match=r"Cannot write .*choose another output folder"):
        atomic_write_json(blocker / "sub" / "out.json", {"a": 1})


def test_atomic_write_json_is_json_safe(tmp_path):
    path = atomic_write_json(
        tmp_path / "b.json",
        {
            "t": (1, 2),
            "nan": float("nan"),
            "p": Path("a/b"),
            "x": torch.ones(2),
            "n": np.float32(0.5),
            "i": np.arange(2),
        },
    )
    assert json.loads(path.read_text()) == {
        "t": [1, 2], "nan": None, "p": "a/b", "x": [1.0, 1.0], "n": 0.5, "i": [0, 1],
    }  # fmt: skip
    assert [p.name for p in tmp_path.iterdir()] == ["b.json"]


def test_failed_write_leaves_the_old_file_and_no_temporary(tmp_path):
    path = atomic_write_text(tmp_path / "a.txt", "old")
    with pytest.raises(RuntimeError), atomic_path(path) as tmp:
        tmp.write_text("half")
        raise RuntimeError("interrupted")
    assert path.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["a.txt"]


def test_every_writer_leaves_the_mode_a_plain_write_leaves(tmp_path, umask_022):
    plain = tmp_path / "plain.txt"
    plain.write_text("x")
    cohort = tmp_path / "cohort"
    write_cohort(cohort, {"healthy": 1, "lgg": 0, "hgg": 0}, size="small", progress=False)
    written = [atomic_write_text(tmp_path / "a.txt", "x"), *sorted(cohort.iterdir())]
    written.append(write_manifest([Case("s", plain, "healthy", "t")], tmp_path / "m.csv"))
    assert _mode(plain) == 0o644
    assert {p.name: _mode(p) for p in written} == {p.name: 0o644 for p in written}


def test_sha256_of_file_bytes_and_folder(tmp_path):
    p = tmp_path / "b.bin"
    p.write_bytes(b"tumortrace")
    assert sha256_file(p) == sha256_bytes(b"tumortrace")
    assert len(sha256_bytes(b"")) == 64
    series = tmp_path / "series"
    series.mkdir()
    (series / "1.dcm").write_bytes(b"a")
    first = sha256_file(series)
    (series / "1.dcm").rename(series / "2.dcm")  # names count, not only bytes
    assert sha256_file(series) != first
