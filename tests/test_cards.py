"""Cards and benchmarks under tampering: schema errors naming the field, the weights' own copy of
the preprocessing, the benchmark seal, byte-identical safetensors, one refused network."""

from __future__ import annotations

import json
import shutil
import struct
from pathlib import Path

import pytest
import torch

from tumortrace import provenance
from tumortrace.checkpoint import (
    ModelCard,
    canonical_safetensors,
    load_checkpoint,
    read_card,
    save_checkpoint,
)
from tumortrace.config import PreprocessConfig
from tumortrace.errors import CheckpointError
from tumortrace.files import atomic_write_json, sha256_file
from tumortrace.infer import Predictor
from tumortrace.models import create_model, list_models

ROOT = Path(__file__).resolve().parents[1]
TINY = PreprocessConfig(spacing_mm=(5.0, 5.0, 5.0), shape_dhw=(16, 16, 16), space="native")


def _model(arch: str = "mc3", seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    return create_model(arch).eval()


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> Path:
    """mc3 and r3d weights + cards + sealed benchmarks, as train.py writes them."""
    out = tmp_path_factory.mktemp("weights")
    for i, arch in enumerate(("mc3", "r3d")):
        card = ModelCard(
            arch=arch, preprocess=TINY, metrics={"accuracy": {"mean": 0.7, "std": 0.1}}
        )
        card_path = save_checkpoint(_model(arch, i), card, out)
        bench = {"arch": arch, "folds": [{"accuracy": 0.7}], "summary": card.metrics}
        written = json.loads(card_path.read_text())
        atomic_write_json(out / "benchmarks" / f"{arch}.json", provenance.seal(bench, written))
    return out


def _copy(folder: Path, dest: Path) -> Path:
    shutil.copytree(folder, dest)
    return dest


def _edit(path: Path, **fields) -> None:
    doc = json.loads(path.read_text())
    for key, value in fields.items():
        if "." in key:
            outer, inner = key.split(".")
            doc[outer][inner] = value
        else:
            doc[key] = value
    path.write_text(json.dumps(doc))


# -- schema: a clear message naming the field -----------------------------------------------------


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("preprocess.intensity", "foo", r"preprocess\.intensity is 'foo'; expected one of"),
        ("preprocess.spacing_mm", [0, 5, 5], r"preprocess\.spacing_mm is \[0, 5, 5\]; expected 3"),
        ("preprocess.spacing_mm", [5, 5], r"preprocess\.spacing_mm is \[5, 5\]"),
        ("preprocess.shape_dhw", [2, 2, 2], r"preprocess\.shape_dhw is \[2, 2, 2\]; expected 3"),
        ("preprocess.shape_dhw", [4, 8, 8], r"preprocess\.shape_dhw: Input shape .* too small"),
        ("preprocess.shape_dhw", [0, 16, 16], r"preprocess\.shape_dhw is \[0, 16, 16\]; expected"),
        ("preprocess.shape_dhw", [128, 192, 192], r"shape_dhw is \[128, 192, 192\] = 4,718,592"),
        ("preprocess.shape_dhw", [16.5, 16, 16], r"preprocess\.shape_dhw is \[16\.5, 16, 16\]"),
        ("preprocess.percentiles", [100, 0], r"percentiles is \[100, 0\]; expected the lower"),
        ("preprocess.percentiles", [-1, 50], r"percentiles is \[-1, 50\]; expected 2 numbers"),
        ("preprocess", "zscore", r"preprocess is 'zscore'; expected an object"),
        ("dropout", 1.5, r"dropout is 1\.5; expected a number in \[0, 1\)"),
        ("folds", -1, r"folds is -1; expected a non-negative integer"),
        ("weights_sha256", "abc", r"weights_sha256 is 'abc'; expected 64 lower-case hex"),
        ("classes", "healthy", r"classes is 'healthy'; expected a list"),
        ("metrics", [0.9], r"metrics is \[0\.9\]; expected an object"),
        ("format_version", 99, r"format_version is 99; expected at most 1"),
    ],
)
def test_card_schema_names_the_field(folder, tmp_path, field, value, message):
    d = _copy(folder, tmp_path / "w")
    _edit(d / "mc3.json", **{field: value})
    with pytest.raises(CheckpointError, match=rf"mc3\.json: Malformed model card .*{message}"):
        read_card(d / "mc3.json")


def test_card_preprocessing_must_match_the_weights(folder, tmp_path):
    """spacing 5 -> 2 is within range, but the weights file keeps the spacing it was trained at."""
    d = _copy(folder, tmp_path / "w")
    _edit(d / "mc3.json", **{"preprocess.spacing_mm": [2.0, 5.0, 5.0]})
    read_card(d / "mc3.json")  # a valid card on its own
    with pytest.raises(
        CheckpointError,
        match=r"preprocess\.spacing_mm is \[2\.0, 5\.0, 5\.0\] but the weights file mc3\.safet"
        r"ensors was trained with \[5\.0, 5\.0, 5\.0\]",
    ):
        load_checkpoint(d / "mc3.json")


# -- the seal: benchmark <-> card <-> weights -----------------------------------------------------


def _check(d: Path, arch: str = "mc3") -> provenance.Verification:
    bench = json.loads((d / "benchmarks" / f"{arch}.json").read_text())
    return provenance.verify(bench, d / f"{arch}.json")


def test_sealed_benchmark_verifies(folder):
    assert _check(folder) == provenance.Verification(True, "benchmark, card and weights match")


def test_benchmark_metrics_edited(folder, tmp_path):
    d = _copy(folder, tmp_path / "w")
    bench = d / "benchmarks" / "mc3.json"
    _edit(bench, summary={"accuracy": {"mean": 0.999, "std": 0.0}})
    assert _check(d) == provenance.Verification(
        False, "the benchmark file was edited after it was written"
    )


def test_card_metrics_edited(folder, tmp_path):
    d = _copy(folder, tmp_path / "w")
    _edit(d / "mc3.json", metrics={"accuracy": {"mean": 0.999, "std": 0.0}})
    check = _check(d)
    assert not check.verified and "card was edited after training" in check.reason


def test_head_zeroed_with_the_cards_hash_recomputed(folder, tmp_path):
    """The card's hash is in an editable card: load accepts it, the seal does not."""
    d = _copy(folder, tmp_path / "w")
    model, card = load_checkpoint(d / "mc3.json")
    with torch.no_grad():
        model.fc[-1].weight.zero_()
    save_checkpoint(model, card, d)  # rewrites the weights and the card's weights_sha256
    load_checkpoint(d / "mc3.json")  # accepted: the hash matches the edited file
    check = _check(d)
    assert not check.verified and check.reason == (
        "it was measured on other weights than mc3.safetensors"
    )


def test_unsealed_or_missing_pieces(folder, tmp_path):
    d = _copy(folder, tmp_path / "w")
    bench = json.loads((d / "benchmarks" / "mc3.json").read_text())
    bench.pop("seal")
    assert "no seal" in provenance.verify(bench, d / "mc3.json").reason
    (d / "r3d.safetensors").unlink()
    assert _check(d, "r3d").reason == "the weights file r3d.safetensors is missing"


def test_shipped_benchmarks_are_sealed():
    """The shipped networks' benchmarks verify against their cards and the weights files the
    cards name (``weights_file``); the baselines' are checked in test_shipped_weights."""
    weights = ROOT / "weights"
    for arch in list_models():
        bench = json.loads((weights / "benchmarks" / f"{arch}.json").read_text())
        result = provenance.verify(bench, weights / f"{arch}.json")
        assert result.verified, f"{arch}: {result.reason}"


# -- deterministic bytes ------------------------------------------------------------------------


def test_identical_tensors_give_identical_files(tmp_path):
    a = save_checkpoint(_model(), ModelCard(arch="mc3", preprocess=TINY), tmp_path / "a")
    b = save_checkpoint(_model(), ModelCard(arch="mc3", preprocess=TINY), tmp_path / "b")
    blob = a.with_suffix(".safetensors").read_bytes()
    assert blob == b.with_suffix(".safetensors").read_bytes()
    assert (
        read_card(a).weights_sha256
        == read_card(b).weights_sha256
        == sha256_file(a.with_suffix(".safetensors"))
    )
    (n,) = struct.unpack("<Q", blob[:8])
    header = blob[8 : 8 + n]
    assert n % 8 == 0
    doc = json.loads(header)
    assert list(doc) == sorted(doc) and list(doc["__metadata__"]) == sorted(doc["__metadata__"])


def test_canonical_header_ignores_key_order():
    from safetensors.torch import load, save

    t = {"b": torch.ones(3), "a": torch.zeros(2, dtype=torch.int64)}
    one = save(t, metadata={"z": "1", "a": "2", "m": "3"})
    two = save(dict(reversed(t.items())), metadata={"m": "3", "a": "2", "z": "1"})
    assert canonical_safetensors(one) == canonical_safetensors(two)
    back = load(canonical_safetensors(one))
    assert torch.equal(back["b"], t["b"]) and torch.equal(back["a"], t["a"])


# -- one network refused, the others predict ----------------------------------------------------


def test_one_refused_network_leaves_the_others(folder, tmp_path):
    d = _copy(folder, tmp_path / "w")
    blob = bytearray((d / "r3d.safetensors").read_bytes())
    blob[-10] ^= 0xFF
    (d / "r3d.safetensors").write_bytes(bytes(blob))
    predictor = Predictor.from_dir(d)
    assert predictor.archs == ["mc3"]
    assert list(predictor.refused) == ["r3d"] and "SHA-256" in predictor.refused["r3d"]
    with pytest.raises(CheckpointError, match=r"SHA-256 .*modified or corrupted"):
        Predictor.from_dir(d, archs=["mc3", "r3d"])  # asked for by name: all must load
