"""The malformed-input corpus through the CLI: one ``error:`` line per input, a row per input,
a non-zero exit, no traceback, no other stderr output; and each through the loader alone."""

from __future__ import annotations

import csv
import io
import json
import shutil
from pathlib import Path

import pytest
import torch
from _corpus import write_corpus

from tumortrace.__main__ import main
from tumortrace.checkpoint import ModelCard, save_checkpoint
from tumortrace.config import PreprocessConfig
from tumortrace.errors import TumorTraceError
from tumortrace.guards import printable
from tumortrace.io import load_volume
from tumortrace.models import create_model
from tumortrace.preprocess import preprocess

CARD = PreprocessConfig(spacing_mm=(5.0, 5.0, 5.0), shape_dhw=(16, 16, 16), space="native")


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> dict[str, Path]:
    return write_corpus(tmp_path_factory.mktemp("corpus"))


@pytest.fixture(scope="module")
def weights(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("weights")
    torch.manual_seed(0)
    save_checkpoint(create_model("mc3"), ModelCard(arch="mc3", preprocess=CARD), out)
    return out


def test_corpus_is_large_enough(corpus):
    assert len(corpus) >= 40


def test_every_case_is_a_project_error_in_the_loader(corpus, capfd):
    """Loader then preprocessing: only TumorTraceError, and nothing printed by any library."""
    accepted = []
    for name, path in corpus.items():
        try:
            preprocess(load_volume(path), CARD)
            accepted.append(name)
        except TumorTraceError as err:
            assert "\n" not in str(err), name
    assert accepted == []
    out = capfd.readouterr()
    assert out.err == "" and out.out == ""


def test_cli_batch_one_error_line_and_one_row_per_case(corpus, weights, capsys):
    paths = list(corpus.values())
    code = main(["predict", *map(str, paths), "--weights", str(weights), "--quiet"])
    out, err = capsys.readouterr()
    assert code == 1
    rows = list(csv.DictReader(io.StringIO(out)))
    assert [r["path"] for r in rows] == [str(p) for p in paths]
    assert all(r["status"] == "error" and r["error"] for r in rows)
    lines = err.splitlines()
    assert "Traceback" not in err
    assert len(lines) == len(paths)
    for line, path in zip(lines, paths, strict=True):
        assert line.startswith(f"error: {printable(str(path))}: "), line


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("spacing_mm", [0, 5, 5]),
        ("intensity", "foo"),
        ("shape_dhw", [2, 2, 2]),
        ("percentiles", [100, 0]),
        ("shape_dhw", [128, 192, 192]),
    ],
)
def test_cli_tampered_card_is_one_line(corpus, weights, tmp_path, capsys, field, value):
    d = tmp_path / "w"
    shutil.copytree(weights, d)
    card = json.loads((d / "mc3.json").read_text())
    card["preprocess"][field] = value
    (d / "mc3.json").write_text(json.dumps(card))
    good = corpus["tiny-fov-8mm-at-0.05mm"]
    code = main(["predict", str(good), "--weights", str(d), "--quiet"])
    out, err = capsys.readouterr()
    assert code == 2 and out == ""
    (line,) = err.splitlines()
    assert line.startswith("error: ") and f"preprocess.{field}" in line
