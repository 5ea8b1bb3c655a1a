"""Checkpoints: fp16 safetensors + JSON card, atomic writes, verification on load."""

from __future__ import annotations

import copy
import dataclasses
import json
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from tumortrace import provenance
from tumortrace.checkpoint import (
    ModelCard,
    load_checkpoint,
    read_card,
    release,
    save_checkpoint,
)
from tumortrace.config import PreprocessConfig
from tumortrace.errors import CheckpointError, ConfigError
from tumortrace.files import sha256_bytes
from tumortrace.models import (
    INPUT_REFERENCE_KEY,
    create_model,
    has_input_reference,
    list_models,
    set_input_reference,
)

X = torch.randn(2, 1, 8, 16, 16, generator=torch.Generator().manual_seed(0))


def _trained_like(name: str) -> torch.nn.Module:
    """A model whose BatchNorm running statistics moved away from their defaults."""
    torch.manual_seed(0)
    model = create_model(name, dropout=0.2)
    model.train()
    with torch.no_grad():
        model(torch.randn(2, 1, 8, 16, 16) * 3 + 1)
    return model.eval()


def _card(arch: str = "mc3") -> ModelCard:
    return ModelCard(
        arch=arch,
        preprocess=PreprocessConfig(shape_dhw=(8, 16, 16), intensity="percentile", space="native"),
        data={"source": "synthetic", "counts": {"healthy": 4, "lgg": 2, "hgg": 4}},
        folds=2,
        metrics={"accuracy": {"mean": 0.9, "std": float("nan")}},
        command="python train.py --arch mc3",
        date="2025-01-01T00:00:00",
        shipped="best_fold:0",
    )


@pytest.fixture(scope="module")
def saved(tmp_path_factory) -> tuple[torch.nn.Module, Path]:
    model = _trained_like("mc3")
    out = tmp_path_factory.mktemp("weights")
    return model, save_checkpoint(model, _card(), out)


def _fp16_rounded(model: torch.nn.Module) -> torch.nn.Module:
    rounded = copy.deepcopy(model)
    with torch.no_grad():
        for t in rounded.state_dict().values():
            if t.is_floating_point():
                t.copy_(t.half().float())
    return rounded


@pytest.mark.parametrize("name", list_models())
def test_round_trip_gives_identical_logits(tmp_path, name):
    model = _trained_like(name)
    card_path = save_checkpoint(model, _card(name), tmp_path)
    assert card_path == tmp_path / f"{name}.json"
    loaded, card = load_checkpoint(card_path)
    assert loaded.training is False
    assert card.arch == name and card.preprocess.shape_dhw == (8, 16, 16)
    assert next(loaded.parameters()).dtype == torch.float32
    with torch.no_grad():
        assert torch.equal(loaded(X), _fp16_rounded(model)(X))
        assert torch.allclose(loaded(X), model(X), atol=2e-2)


def test_input_reference_round_trips_through_the_file(tmp_path, saved):
    _, plain_card = saved
    assert not has_input_reference(load_checkpoint(plain_card)[0])  # old files load as before
    model = set_input_reference(
        _trained_like("mc3"), torch.randn(1, 8, 16, 16, generator=torch.Generator().manual_seed(1))
    )
    card_path = save_checkpoint(model, _card("mc3"), tmp_path)
    with safe_open(str(card_path.with_suffix(".safetensors")), framework="pt") as f:
        assert INPUT_REFERENCE_KEY in set(f.keys())
    loaded, _ = load_checkpoint(card_path)
    assert has_input_reference(loaded)
    with torch.no_grad():
        assert torch.equal(loaded(X), _fp16_rounded(model)(X))


def test_file_layout(saved):
    model, card_path = saved
    weights = card_path.with_suffix(".safetensors")
    assert weights.is_file()
    with safe_open(str(weights), framework="pt") as f:
        keys = set(f.keys())
        assert f.metadata()["arch"] == "mc3"
        assert f.get_tensor("stem.0.weight").dtype == torch.float16
        assert f.get_tensor("stem.1.running_var").dtype == torch.float16
        assert f.get_tensor("stem.1.num_batches_tracked").dtype == torch.int64
        assert int(f.get_tensor("stem.1.num_batches_tracked")) == 1
    assert keys == set(model.state_dict())
    card = json.loads(card_path.read_text())
    assert card["weights_sha256"] == sha256_bytes(weights.read_bytes())
    assert card["metrics"]["accuracy"]["std"] is None  # NaN is not JSON
    assert card["dropout"] == 0.2  # taken from the model's head
    assert card["params"] == sum(p.numel() for p in model.parameters())
    assert not [p for p in card_path.parent.iterdir() if p.name.startswith(".")]


def test_card_round_trip():
    card = dataclasses.replace(_card(), metrics={"accuracy": {"mean": 0.9, "std": 0.1}})
    assert ModelCard.from_dict(json.loads(card.to_json())) == card


def test_load_accepts_weights_path_and_folder(saved):
    _, card_path = saved
    a, _ = load_checkpoint(card_path.with_suffix(".safetensors"))
    b, _ = load_checkpoint(card_path.parent, arch="mc3", dtype=torch.bfloat16)
    assert next(b.parameters()).dtype == torch.bfloat16
    assert torch.equal(a.stem[0].weight.to(torch.bfloat16), b.stem[0].weight)


def test_folder_without_arch(saved):
    _, card_path = saved
    with pytest.raises(CheckpointError, match=r"is a folder: also give the architecture"):
        load_checkpoint(card_path.parent)


def _copy(card_path: Path, dst: Path) -> Path:
    for suffix in (".json", ".safetensors"):
        (dst / f"mc3{suffix}").write_bytes(card_path.with_suffix(suffix).read_bytes())
    return dst / "mc3.json"


def test_tampered_weights(saved, tmp_path):
    card_path = _copy(saved[1], tmp_path)
    weights = card_path.with_suffix(".safetensors")
    blob = bytearray(weights.read_bytes())
    blob[-3] ^= 0x01
    weights.write_bytes(bytes(blob))
    with pytest.raises(CheckpointError, match=r"SHA-256 .* modified or corrupted"):
        load_checkpoint(card_path)


def test_missing_weights_file(saved, tmp_path):
    card_path = _copy(saved[1], tmp_path)
    card_path.with_suffix(".safetensors").unlink()
    with pytest.raises(CheckpointError, match=r"mc3\.safetensors is missing"):
        load_checkpoint(card_path)


def test_missing_card(tmp_path):
    with pytest.raises(CheckpointError, match="Model card not found"):
        load_checkpoint(tmp_path / "r3d.json")


def test_card_not_json(saved, tmp_path):
    card_path = _copy(saved[1], tmp_path)
    card_path.write_text("{not json")
    with pytest.raises(CheckpointError, match="is not valid JSON"):
        load_checkpoint(card_path)


def _edit_card(card_path: Path, **changes) -> None:
    card = json.loads(card_path.read_text())
    card.update(changes)
    card_path.write_text(json.dumps(card))


def test_card_unknown_arch(saved, tmp_path):
    card_path = _copy(saved[1], tmp_path)
    _edit_card(card_path, arch="vit")
    with pytest.raises(ConfigError, match=r"Unknown architecture 'vit'; expected one of"):
        read_card(card_path)


def test_card_other_classes(saved, tmp_path):
    card_path = _copy(saved[1], tmp_path)
    _edit_card(card_path, classes=["hgg", "lgg", "healthy"])
    with pytest.raises(CheckpointError, match=r"has classes \['hgg', 'lgg', 'healthy'\]"):
        load_checkpoint(card_path)


def test_card_malformed_field(saved, tmp_path):
    card_path = _copy(saved[1], tmp_path)
    _edit_card(card_path, folds="three")
    with pytest.raises(CheckpointError, match="Malformed model card"):
        load_checkpoint(card_path)


def test_card_arch_differs_from_weights(saved, tmp_path):
    card_path = _copy(saved[1], tmp_path)
    _edit_card(card_path, arch="r3d")  # the hash still matches: the weights are untouched
    with pytest.raises(CheckpointError, match=r"holds a 'mc3' network but its card says 'r3d'"):
        load_checkpoint(card_path)


def test_mis_shaped_and_missing_tensors(saved, tmp_path):
    model, _ = saved
    state = {k: v.half() if v.is_floating_point() else v for k, v in model.state_dict().items()}
    state["fc.1.weight"] = torch.zeros(4, 512, dtype=torch.float16)
    del state["layer4.1.conv2.1.running_mean"]
    weights = tmp_path / "mc3.safetensors"
    save_file(state, str(weights), metadata={"arch": "mc3"})
    card = dataclasses.replace(_card(), weights_sha256=sha256_bytes(weights.read_bytes()))
    (tmp_path / "mc3.json").write_text(card.to_json())
    with pytest.raises(
        CheckpointError,
        match=r"1 missing key\(s\): layer4.1.conv2.1.running_mean.*1 mis-shaped key\(s\): "
        r"fc.1.weight: file \(4, 512\) vs model \(3, 512\)",
    ):
        load_checkpoint(tmp_path / "mc3.json")


def test_save_refuses_card_for_other_arch(saved, tmp_path):
    model, _ = saved
    with pytest.raises(CheckpointError, match=r"model is a 'mc3' network but the card says 'r3d'"):
        save_checkpoint(model, _card("r3d"), tmp_path)


def test_released_weights_load_under_their_new_name_and_keep_the_seal(saved, tmp_path):
    """A release writes the weights under a new name the card records; the card's sealed fields
    are untouched, so a benchmark sealed against the trained card still verifies."""
    model, card_path = saved
    bench = provenance.seal({"arch": "mc3"}, json.loads(card_path.read_text()))
    out = release(card_path, tmp_path, "mc3-v2.safetensors")
    assert json.loads(out.read_text())["weights_file"] == "mc3-v2.safetensors"
    assert (tmp_path / "mc3-v2.safetensors").is_file()
    assert not (tmp_path / "mc3.safetensors").exists()
    loaded, card = load_checkpoint(out)
    assert card.weights_file == "mc3-v2.safetensors"
    x = torch.randn(1, 1, 8, 16, 16)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), _fp16_rounded(model)(x))
    assert provenance.verify(bench, out).verified
    (tmp_path / "mc3-v2.safetensors").unlink()
    with pytest.raises(CheckpointError, match=r"mc3-v2\.safetensors is missing"):
        load_checkpoint(out)
    assert "missing" in provenance.verify(bench, out).reason


@pytest.mark.parametrize(
    "name",
    ["../mc3.safetensors", "/etc/passwd", "sub/mc3.safetensors", "mc3.pt", ".safetensors", 7],
)
def test_a_card_cannot_point_its_weights_outside_its_folder(saved, tmp_path, name):
    card_path = _copy(saved[1], tmp_path)
    raw = json.loads(card_path.read_text())
    raw["weights_file"] = name
    card_path.write_text(json.dumps(raw))
    with pytest.raises(CheckpointError, match="weights_file"):
        load_checkpoint(card_path)
    bench = provenance.seal({"arch": "mc3"}, raw)
    assert not provenance.verify(bench, card_path).verified
    with pytest.raises(CheckpointError, match="bare"):
        release(saved[1], tmp_path / "out", str(name))
