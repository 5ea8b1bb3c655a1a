"""Predictor: loading and validating weights cards, analysis records, ensemble, TTA, sharing."""

from __future__ import annotations

import dataclasses
import json
import shutil
import threading
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from tumortrace import infer
from tumortrace.checkpoint import ModelCard, save_checkpoint
from tumortrace.config import CLASSES, PreprocessConfig
from tumortrace.errors import CheckpointError, ConfigError
from tumortrace.infer import InferenceSettings, Predictor
from tumortrace.io import load_volume
from tumortrace.models import create_model, list_models
from tumortrace.preprocess import preprocess

TINY = PreprocessConfig(spacing_mm=(5.0, 3.0, 3.0), shape_dhw=(16, 32, 32), space="native")
FP32 = InferenceSettings(precision="fp32")


def _model(arch: str, seed: int = 0, bias: tuple[float, float, float] | None = None) -> nn.Module:
    torch.manual_seed(seed)
    model = create_model(arch)
    nn.init.normal_(model.fc[1].weight, 0, 0.05)
    if bias is not None:
        model.fc[1].bias.data = torch.tensor(bias)
    return model.eval()


def _card(arch: str, config: PreprocessConfig = TINY) -> ModelCard:
    return ModelCard(arch=arch, preprocess=config, data={"source": "test"})


@pytest.fixture(scope="module")
def weights_dir(tmp_path_factory) -> Path:
    """Random-init weights for every network at a 16x32x32 model grid."""
    out = tmp_path_factory.mktemp("weights")
    for i, arch in enumerate(list_models()):
        save_checkpoint(_model(arch, seed=i), _card(arch), out)
    return out


@pytest.fixture(scope="module")
def predictor(weights_dir) -> Predictor:
    return Predictor.from_dir(weights_dir)


@pytest.fixture(scope="module")
def volume(tiny_nifti):
    return load_volume(tiny_nifti)


def _copy_weights(src: Path, dst: Path, archs=None) -> Path:
    dst.mkdir(parents=True, exist_ok=True)
    for arch in archs or list_models():
        for ext in (".json", ".safetensors"):
            shutil.copy(src / f"{arch}{ext}", dst / f"{arch}{ext}")
    return dst


def _edit_card(path: Path, **changes) -> None:
    card = json.loads(path.read_text())
    card.update(changes)
    path.write_text(json.dumps(card))


# -- analysis --------------------------------------------------------------------------------------


def test_analysis_records_for_every_network(predictor, volume) -> None:
    assert predictor.archs == list_models()
    assert set(predictor.cards) == set(list_models())
    analysis = predictor.analyze(volume)
    assert list(analysis.predictions) == list_models() == list(analysis.explanations)
    for arch, pred in analysis.predictions.items():
        assert pred.arch == arch and pred.probs.shape == (3,)
        assert pred.probs.sum() == pytest.approx(1.0) and (pred.probs >= 0).all()
        assert pred.label == CLASSES[int(np.argmax(pred.probs))] and pred.seconds > 0
        expl = analysis.explanations[arch]
        assert expl.target == pred.label  # default target: the network's own prediction
        assert expl.cam_model.shape == TINY.shape_dhw
        assert expl.cam_volume.shape == volume.data.shape
        assert expl.cam_model.max() == pytest.approx(1.0) and expl.cam_model.min() >= 0
        assert expl.cam_volume.min() >= 0 and expl.cam_volume.max() <= 1
    assert analysis.grid is analysis.explanations[list_models()[0]].grid
    assert analysis.seconds >= sum(p.seconds for p in analysis.predictions.values())
    focus = analysis.focus  # every network's map of the tumour log-odds, pooled
    assert focus is not None and focus.archs == tuple(list_models())
    assert focus.evidence.shape == TINY.shape_dhw and focus.evidence.min() >= 0
    assert focus.evidence.max() == pytest.approx(1.0)
    tumour = np.mean([p.probs[1:].sum() for p in analysis.predictions.values()])
    assert focus.p_tumour == pytest.approx(tumour)
    assert focus.xyz is not None and focus.volume()[focus.xyz] == focus.volume().max()


@pytest.mark.slow
def test_fast_path_probabilities_agree_with_fp32(weights_dir, volume) -> None:
    """The fast path as this machine runs it (bf16 trunk where ``native_bf16``, else fp32) +
    folded BatchNorm + channels_last vs plain fp32 eager: within 0.02, all three networks.

    (The fp32 preparation alone is exact up to rounding: see test_explain. Where bf16 is emulated,
    an AVX2 EPYC, three bf16 networks took 392 s here: the bf16 path is covered there by
    :func:`test_bf16_trunk_agrees_with_fp32_on_every_machine`, one network.)
    """
    plain = Predictor.from_dir(
        weights_dir,
        settings=InferenceSettings(precision="fp32", fuse_bn=False, channels_last=False),
    )
    fast = Predictor.from_dir(weights_dir, settings=InferenceSettings(precision="auto"))
    a, b = plain.analyze(volume), fast.analyze(volume)
    for arch in list_models():
        diff = np.abs(a.predictions[arch].probs - b.predictions[arch].probs).max()
        assert diff < 0.02, arch
        corr = np.corrcoef(
            a.explanations[arch].cam_model.ravel(), b.explanations[arch].cam_model.ravel()
        )
        assert corr[0, 1] > 0.9, arch


def test_bf16_trunk_agrees_with_fp32_on_every_machine(volume) -> None:
    """The bf16 trunk runs wherever the suite runs, emulated bf16 included (one network, the tiny
    grid, no focus): probabilities within 0.02 of fp32, the map correlated."""
    cards = {"mc3": _card("mc3")}
    plain = Predictor({"mc3": _model("mc3")}, cards, InferenceSettings("fp32", focus=False))
    fast = Predictor({"mc3": _model("mc3")}, cards, InferenceSettings("bf16", focus=False))
    assert fast._dtype == torch.bfloat16
    a, b = plain.analyze(volume), fast.analyze(volume)
    assert np.abs(a.predictions["mc3"].probs - b.predictions["mc3"].probs).max() < 0.02
    corr = np.corrcoef(
        a.explanations["mc3"].cam_model.ravel(), b.explanations["mc3"].cam_model.ravel()
    )
    assert corr[0, 1] > 0.9


@pytest.mark.slow
def test_ensemble_is_the_mean_and_agreement_is_detected(volume) -> None:
    models = {
        "mc3": _model("mc3", bias=(0.0, 4.0, 0.0)),
        "r2plus1d": _model("r2plus1d", bias=(0.0, 4.0, 0.0)),
        "r3d": _model("r3d", bias=(0.0, 0.0, 6.0)),
    }
    pred = Predictor(models, {a: _card(a) for a in models}, FP32)
    both = pred.analyze(volume)
    assert [both.predictions[a].label for a in list_models()] == ["lgg", "lgg", "hgg"]
    assert not both.agree
    mean = np.mean([p.probs for p in both.predictions.values()], axis=0)
    np.testing.assert_allclose(both.ensemble_probs, mean)
    assert both.ensemble_label == CLASSES[int(np.argmax(mean))]
    lgg_only = pred.analyze(volume, archs=["mc3", "r2plus1d"])
    assert lgg_only.agree and lgg_only.ensemble_label == "lgg"
    assert list(lgg_only.predictions) == ["mc3", "r2plus1d"]
    single = pred.analyze(volume, archs=["r3d"])
    assert single.agree and single.ensemble_label == "hgg"
    np.testing.assert_allclose(single.ensemble_probs, single.predictions["r3d"].probs)


def test_user_target_is_explained(predictor, volume) -> None:
    analysis = predictor.analyze(volume, archs=["mc3"], target="lgg")
    assert analysis.explanations["mc3"].target == "lgg"


def test_unknown_target_is_rejected(predictor, volume) -> None:
    with pytest.raises(ConfigError, match=r"Unknown target class 'tumour'.*healthy"):
        predictor.analyze(volume, target="tumour")


def test_network_not_loaded_is_rejected(weights_dir, volume) -> None:
    only = Predictor.from_dir(weights_dir, archs=["mc3"])
    assert only.archs == ["mc3"]
    with pytest.raises(
        ConfigError, match=r"\['r3d'\] are not loaded; this predictor has \['mc3'\]"
    ):
        only.analyze(volume, archs=["r3d"])


def test_preprocessing_runs_once_per_distinct_config(monkeypatch, volume) -> None:
    other = dataclasses.replace(TINY, shape_dhw=(16, 24, 24))
    cards = {"mc3": _card("mc3"), "r2plus1d": _card("r2plus1d"), "r3d": _card("r3d", other)}
    pred = Predictor({a: _model(a) for a in cards}, cards, FP32)
    calls = []

    def counting(vol, config, std=None):
        calls.append(config)
        return preprocess(vol, config)

    monkeypatch.setattr(infer, "prepare", counting)
    analysis = pred.analyze(volume)
    assert calls == [TINY, other]
    assert analysis.explanations["r3d"].cam_model.shape == (16, 24, 24)
    assert analysis.explanations["mc3"].grid is analysis.explanations["r2plus1d"].grid


def test_concurrent_analyses_match_sequential_ones(predictor, volume) -> None:
    """Models are shared read-only: two threads at once give what one thread gives alone."""
    expected = predictor.analyze(volume, archs=["mc3"], target="hgg")
    results: list = [None, None]
    errors: list = []

    def work(i: int) -> None:
        try:
            results[i] = predictor.analyze(volume, archs=["mc3"], target="hgg")
        except Exception as err:  # reported below; a thread cannot raise into pytest
            errors.append(err)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    for r in results:
        np.testing.assert_allclose(r.predictions["mc3"].probs, expected.predictions["mc3"].probs)
        np.testing.assert_allclose(
            r.explanations["mc3"].cam_model, expected.explanations["mc3"].cam_model, atol=1e-6
        )
    for model in predictor._models.values():
        assert all(not m._forward_hooks and not m._backward_hooks for m in model.modules())


# -- validation ------------------------------------------------------------------------------------


def test_missing_weights_folder(tmp_path) -> None:
    with pytest.raises(CheckpointError, match=r"Weights folder .*nowhere not found"):
        Predictor.from_dir(tmp_path / "nowhere")


def test_folder_without_cards(tmp_path) -> None:
    with pytest.raises(CheckpointError, match=r"No model cards in .*mc3\.json"):
        Predictor.from_dir(tmp_path)


def test_unknown_architecture_requested(weights_dir) -> None:
    with pytest.raises(ConfigError, match=r"Unknown architecture\(s\) \['vgg'\].*'r3d'"):
        Predictor.from_dir(weights_dir, archs=["vgg"])


def test_requested_card_missing(weights_dir, tmp_path) -> None:
    d = _copy_weights(weights_dir, tmp_path / "w", ["mc3"])
    with pytest.raises(CheckpointError, match=r"Model card not found: .*r3d\.json"):
        Predictor.from_dir(d, archs=["r3d"])


def test_missing_weights_file(weights_dir, tmp_path) -> None:
    d = _copy_weights(weights_dir, tmp_path / "w", ["mc3"])
    (d / "mc3.safetensors").unlink()
    with pytest.raises(CheckpointError, match=r"Weights file .*mc3\.safetensors is missing"):
        Predictor.from_dir(d)


def test_tampered_weights_file(weights_dir, tmp_path) -> None:
    d = _copy_weights(weights_dir, tmp_path / "w", ["r3d"])
    blob = bytearray((d / "r3d.safetensors").read_bytes())
    blob[-10] ^= 0xFF
    (d / "r3d.safetensors").write_bytes(bytes(blob))
    with pytest.raises(CheckpointError, match=r"SHA-256 .*modified or corrupted"):
        Predictor.from_dir(d)


def test_unknown_architecture_in_card(weights_dir, tmp_path) -> None:
    d = _copy_weights(weights_dir, tmp_path / "w", ["mc3"])
    _edit_card(d / "mc3.json", arch="resnet50")
    with pytest.raises(ConfigError, match=r"Unknown architecture 'resnet50'"):
        Predictor.from_dir(d)


def test_card_for_another_network_than_its_file_name(weights_dir, tmp_path) -> None:
    d = _copy_weights(weights_dir, tmp_path / "w", ["mc3"])
    for ext in (".json", ".safetensors"):
        (d / f"mc3{ext}").rename(d / f"r3d{ext}")
    with pytest.raises(CheckpointError, match=r"describes a 'mc3' network, but its file name"):
        Predictor.from_dir(d)


def test_class_mismatch_in_card(weights_dir, tmp_path) -> None:
    d = _copy_weights(weights_dir, tmp_path / "w", ["mc3"])
    _edit_card(d / "mc3.json", classes=["healthy", "tumour"])
    with pytest.raises(CheckpointError, match=r"classes \['healthy', 'tumour'\]; expected"):
        Predictor.from_dir(d)


def test_network_with_wrong_number_of_outputs() -> None:
    with pytest.raises(CheckpointError, match=r"network has 2 outputs; expected 3"):
        Predictor({"mc3": create_model("mc3", num_classes=2)}, {"mc3": _card("mc3")})


def test_card_with_other_classes_given_directly() -> None:
    card = dataclasses.replace(_card("mc3"), classes=("a", "b", "c"))
    with pytest.raises(CheckpointError, match=r"classes \['a', 'b', 'c'\]; expected"):
        Predictor({"mc3": create_model("mc3")}, {"mc3": card})


def test_models_and_cards_must_pair_up() -> None:
    with pytest.raises(CheckpointError, match=r"do not match; give one card per network"):
        Predictor({"mc3": create_model("mc3")}, {"r3d": _card("r3d")})


def test_unknown_precision_is_rejected() -> None:
    with pytest.raises(ConfigError, match=r"Unknown precision 'fp8'"):
        Predictor({"mc3": create_model("mc3")}, {"mc3": _card("mc3")}, InferenceSettings("fp8"))


@pytest.mark.slow
def test_compiled_trunk_matches_eager(volume) -> None:
    """InferenceSettings(compile=True): same probabilities and maps as the eager fast path."""
    cards = {"r3d": _card("r3d")}
    eager = Predictor({"r3d": _model("r3d", seed=7)}, cards).analyze(volume)
    compiled = Predictor({"r3d": _model("r3d", seed=7)}, cards, InferenceSettings(compile=True))
    got = compiled.analyze(volume)
    np.testing.assert_allclose(
        got.predictions["r3d"].probs, eager.predictions["r3d"].probs, atol=0.01
    )
    cams = [r.explanations["r3d"].cam_model.ravel() for r in (got, eager)]
    assert np.corrcoef(*cams)[0, 1] > 0.95


# -- the one report schema -------------------------------------------------------------------------


def test_one_report_schema_for_the_cli_rows_and_the_app(predictor, volume) -> None:
    from tumortrace.batch import PredictRow, format_rows

    analysis = predictor.analyze(volume)
    report = analysis.to_dict()
    assert list(report) == ["label", "verdict", "probs", "agree", "qc", "networks"]
    assert list(report["probs"]) == list(CLASSES) and report["label"] == analysis.ensemble_label
    assert report["probs"]["hgg"] == float(analysis.ensemble_probs[2])  # not rounded
    assert list(report["networks"]) == list(analysis.predictions)
    assert "weights" not in report["networks"]["mc3"]
    # the CLI's JSON row is the same report, with the path, ok and each written map's path
    row = PredictRow.from_analysis("a.nii.gz", analysis, {"mc3": "a_mc3_cam.nii.gz"}).to_dict()
    assert list(row)[:2] == ["path", "ok"] and row["ok"] is True
    cams = {a: n.pop("cam") for a, n in row["networks"].items()}
    assert cams == {"mc3": "a_mc3_cam.nii.gz", "r2plus1d": None, "r3d": None}
    assert {k: v for k, v in row.items() if k not in ("path", "ok")} == report
    doc = json.loads(format_rows([PredictRow.from_analysis("a", analysis, {})], "json"))
    assert doc["results"][0]["probs"] == report["probs"]
    # the app's download adds each network's weights (the card it ran with)
    with_cards = analysis.to_dict(predictor.cards)
    assert with_cards["networks"]["r3d"]["weights"]["arch"] == "r3d"
    assert {k: v for k, v in with_cards["networks"]["r3d"].items() if k != "weights"} == (
        report["networks"]["r3d"]
    )
