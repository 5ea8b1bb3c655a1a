"""The baselines: one registry with the networks, their forward shapes, the HOG-SVM's arrays
against scikit-learn, a tiny cross-validation on the networks' folds (byte-identical splits),
reloading without pickle, and evaluate / predict on a baseline card."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import load_train_cli, write_head_cohort
from sklearn.decomposition import PCA

from tumortrace import classical, models
from tumortrace import train as tt
from tumortrace.baselines import HogSvm, hog_slices
from tumortrace.checkpoint import load_checkpoint
from tumortrace.errors import ConfigError, ManifestError
from tumortrace.infer import InferenceSettings, Predictor
from tumortrace.io import load_volume
from tumortrace.networks import baseline_names, method_names, network_names
from tumortrace.scoring import score_manifest

ROOT = Path(__file__).resolve().parents[1]
SHAPE = (4, 16, 16)  # GoogLeNet's pooling needs 16 x 16 slices
BASELINES = ("hog_svm", "cnn_lstm", "conv_ae", "cnn3d_small", "resnet18_2d", "googlenet_2d")


cli = load_train_cli()


def test_one_table_two_kinds():
    assert network_names() == ("r2plus1d", "mc3", "r3d")  # what the app shows, unchanged
    assert baseline_names() == BASELINES
    assert method_names() == network_names() + BASELINES
    assert models.list_models() == ["mc3", "r2plus1d", "r3d"]
    assert models.list_methods() == sorted(method_names())
    assert all(models.is_baseline(b) for b in BASELINES)
    assert not any(models.is_baseline(n) for n in network_names())


@pytest.mark.parametrize("name", BASELINES[1:])
def test_neural_baseline_takes_the_networks_input(name):
    torch.manual_seed(0)
    model = models.create_model(name).eval()
    with torch.no_grad():
        out = model(torch.randn(2, 1, *SHAPE))
    assert out.shape == (2, 3) and torch.isfinite(out).all()
    assert model.arch == name and models.count_parameters(model) > 0


def test_baselines_are_never_pretrained():
    with pytest.raises(ConfigError, match="no pretrained weights"):
        models.create_model("cnn3d_small", pretrained=True)
    with pytest.raises(ConfigError, match="too small for 'googlenet_2d'"):
        models.check_input_shape("googlenet_2d", (4, 8, 8))


def test_hog_svm_fit_picks_c_and_a_temperature_on_validation():
    rng = np.random.default_rng(0)
    x = torch.as_tensor(rng.normal(size=(24, 1, *SHAPE)), dtype=torch.float32)
    y = np.arange(24) % 3
    x[y == 2, :, :, 4:10, 4:10] += 3.0  # something to find
    model = HogSvm()
    info = classical.fit_hog_svm(model, x[:18], y[:18], x[18:], y[18:], seed=0)
    assert info["c"] in classical.C_GRID and info["temperature"] > 0
    feats = hog_slices(x).double().numpy()
    z = model.project(torch.as_tensor(feats)).numpy()
    logits = model(x).double()
    expected = model.decision(torch.as_tensor(z)) / model.temperature.double()
    np.testing.assert_allclose(logits.numpy(), expected.numpy(), rtol=1e-4, atol=1e-4)


def test_hog_svm_arrays_give_scikit_learns_decision_values():
    rng = np.random.default_rng(1)
    z = rng.normal(size=(30, 5))
    y = np.arange(30) % 3
    z[y == 1] += 1.0
    svms = classical._fit_svms(z, y, 1.0, 0.2, 0)
    pca = PCA(n_components=5).fit(z)
    model = HogSvm()
    classical._load(model, classical._state(pca, np.zeros(5), np.ones(5), svms, 0.2, 1.0))
    ours = model.decision(torch.as_tensor(z)).numpy()
    for k, svm in enumerate(svms):  # float32 arrays: equal up to their rounding
        np.testing.assert_allclose(ours[:, k], svm.decision_function(z), rtol=1e-4, atol=1e-4)


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """mc3 (the networks' folds), then three baselines on its splits file: 2 folds, tiny grid."""
    base = tmp_path_factory.mktemp("baselines")
    manifest = write_head_cohort(base / "cohort")

    def run(arch: str, out: Path, *extra: str):
        argv = [
            "--arch", arch, "--epochs", "1", "--folds", "2", "--batch-size", "4",
            "--input-shape", *map(str, SHAPE), "--spacing", "5", "4", "4", "--device", "cpu",
            "--workers", "0", "--manifest", str(manifest), "--out", str(out),
            "--data-dir", str(base / "data"), "--max-steps-per-epoch", "1", "--space", "native",
            "--healthy-reference", "--balanced", *extra,
        ]  # fmt: skip
        cfg = cli.config_from_args(cli.build_parser().parse_args(argv))
        return tt.run(cfg, command="python train.py " + " ".join(argv), progress=False)

    networks = base / "networks"
    run("mc3", networks)
    splits = networks / "benchmarks" / "mc3.splits.json"
    results = {a: run(a, base / "baselines", "--splits", str(splits)) for a in BASELINES[:3]}
    return base, manifest, splits, results, run


def test_baselines_reuse_the_networks_splits_byte_for_byte(runs):
    base, _, splits, results, _ = runs
    for arch in results:
        copy = base / "baselines" / "benchmarks" / f"{arch}.splits.json"
        assert copy.read_bytes() == splits.read_bytes()
        bench = json.loads((base / "baselines" / "benchmarks" / f"{arch}.json").read_text())
        folds = json.loads(splits.read_text())["folds"]
        for fold, split in zip(bench["folds"], folds, strict=True):
            assert sorted(c["subject_id"] for c in fold["cases"]) == sorted(split["test"])


def test_baseline_benchmark_has_the_networks_schema_and_its_cost(runs):
    base, _, _, results, _ = runs
    net = json.loads((base / "networks" / "benchmarks" / "mc3.json").read_text())
    for arch, result in results.items():
        bench = json.loads((base / "baselines" / "benchmarks" / f"{arch}.json").read_text())
        assert set(net) <= set(bench)
        assert set(net["folds"][0]) <= set(bench["folds"][0])
        assert bench["kind"] == "baseline" and bench["params"] > 0
        assert bench["train_seconds"] == pytest.approx(
            sum(f["train_seconds"] for f in bench["folds"]), abs=0.01
        )
        assert "Nothing pretrained" in result.card.notes
        assert "small enough to commit" in result.card.notes


def test_hog_svm_reloads_from_safetensors_without_pickle(runs):
    base, _, _, results, _ = runs
    card = base / "baselines" / "hog_svm.json"
    model, read = load_checkpoint(card)
    x = torch.randn(3, 1, *SHAPE)
    with torch.no_grad():
        np.testing.assert_allclose(model(x).numpy(), results["hog_svm"].model(x).numpy(), atol=1e-4)
    assert "temperature" in read.notes
    blob = (base / "baselines" / "hog_svm.safetensors").read_bytes()
    assert b"pca_components" in blob and b"support_0" in blob


def test_evaluate_and_predict_take_a_baseline_card(runs):
    base, manifest, _, _, _ = runs
    scores, cases = score_manifest(base / "baselines" / "hog_svm.json", manifest, device="cpu",
                                   progress=False)  # fmt: skip
    assert len(cases) == 15 and 0.0 <= scores.accuracy <= 1.0
    predictor = Predictor.from_dir(base / "baselines", settings=InferenceSettings(device="cpu"))
    assert predictor.archs == sorted(BASELINES[:3])
    volume = load_volume(manifest.parent / "hgg-00.nii.gz")
    analysis = predictor.analyze(volume, standard=None)
    report = analysis.to_dict()
    assert set(report["networks"]) == set(BASELINES[:3])
    assert all(n["cam_target"] is None for n in report["networks"].values())
    assert analysis.explanations == {}


def test_splits_of_other_data_or_fold_count_are_refused(runs):
    base, _, splits, _, run = runs
    with pytest.raises(ConfigError, match="holds 2 folds but --folds is 3"):
        run("hog_svm", base / "other", "--splits", str(splits), "--folds", "3")
    bad = base / "bad.splits.json"
    raw = json.loads(splits.read_text())
    raw["folds"][0]["test"].append("nobody")
    bad.write_text(json.dumps(raw))
    with pytest.raises(ManifestError, match="not in the manifest"):
        run("hog_svm", base / "other", "--splits", str(bad))
