"""Training: the tiny end-to-end run, learning, reproducibility, resume, DDP and bad input."""

from __future__ import annotations

import json
from dataclasses import fields, replace
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import load_train_cli, write_head_cohort
from torch.utils.data import Dataset

from tumortrace import cases as tcases
from tumortrace import loop, resume, runtime
from tumortrace import train as tt
from tumortrace.checkpoint import load_checkpoint
from tumortrace.config import CLASSES, PreprocessConfig, SyntheticCohort, TrainConfig
from tumortrace.data import class_weights
from tumortrace.errors import CheckpointError, ConfigError, ManifestError
from tumortrace.folds import load_splits, make_folds
from tumortrace.manifest import read_manifest, write_manifest
from tumortrace.models import create_model

ROOT = Path(__file__).resolve().parents[1]
SHAPE = (4, 12, 12)  # tiny on purpose: mc3 keeps D, so 4 slices are enough
SPACING = (5.0, 4.0, 4.0)


cli = load_train_cli()


@pytest.fixture(scope="module")
def cohort(tmp_path_factory) -> Path:
    return write_head_cohort(tmp_path_factory.mktemp("cohort"))


def argv_for(manifest: Path, out: Path, data_dir: Path, *extra: str) -> list[str]:
    return [
        "--arch", "mc3", "--epochs", "1", "--folds", "2", "--batch-size", "4",
        "--input-shape", *map(str, SHAPE), "--spacing", *map(str, SPACING), "--device", "cpu",
        "--workers", "0", "--augment", "light", "--manifest", str(manifest),
        "--out", str(out), "--data-dir", str(data_dir), "--max-steps-per-epoch", "2",
        "--space", "native", *extra,
    ]  # fmt: skip


def config_for(argv: list[str]) -> TrainConfig:
    return cli.config_from_args(cli.build_parser().parse_args(argv))


@pytest.fixture(scope="module")
def tiny_run(cohort, tmp_path_factory):
    base = tmp_path_factory.mktemp("run")
    argv = argv_for(cohort, base / "weights", base / "data")
    result = tt.run(config_for(argv), command="python train.py " + " ".join(argv), progress=False)
    return result, base, argv


# ----------------------------------------------------------------------------- end to end


def test_tiny_run_writes_three_files(tiny_run):
    result, base, _ = tiny_run
    out = base / "weights"
    assert (out / "mc3.safetensors").is_file()
    assert (out / "mc3.json").is_file()
    assert (out / "benchmarks" / "mc3.json").is_file()
    assert not resume.resume_path(replace(TrainConfig(), out=out)).exists()
    assert not list(out.rglob("*.tmp")), "no temporary files may be left behind"

    bench = json.loads((out / "benchmarks" / "mc3.json").read_text())
    splits = load_splits(out / "benchmarks" / "mc3.splits.json")
    assert bench["arch"] == "mc3" and bench["classes"] == list(CLASSES)
    assert bench["input_shape"] == list(SHAPE) and bench["spacing_mm"] == list(SPACING)
    assert bench["data"]["counts"] == {"healthy": 5, "lgg": 5, "hgg": 5}
    assert bench["params"] == sum(p.numel() for p in result.model.parameters())
    assert bench["gflops"] > 0
    assert [f["fold"] for f in bench["folds"]] == [0, 1]
    for fold in bench["folds"]:
        assert fold["n_train"] + fold["n_val"] + fold["n_test"] == 15
        assert np.sum(fold["confusion"]) == fold["n_test"]
        assert set(fold["per_class"]) == set(CLASSES)
        assert set(fold["per_class"]["lgg"]) >= {"precision", "recall", "f1", "specificity", "auc"}
        assert set(fold["roc"]) == set(CLASSES)
        assert [c["epoch"] for c in fold["curves"]] == [1]
        assert fold["curves"][0]["train_loss"] > 0 and fold["best_epoch"] == 1
        assert fold["train_seconds"] >= 0
        assert len(fold["cases"]) == fold["n_test"]
        assert {c["subject_id"] for c in fold["cases"]} == set(splits[fold["fold"]].test)
        for case in fold["cases"]:
            assert case["label"] in CLASSES and len(case["probs"]) == 3
            assert sum(case["probs"]) == pytest.approx(1.0)
        hits = [CLASSES[int(np.argmax(c["probs"]))] == c["label"] for c in fold["cases"]]
        assert np.mean(hits) == pytest.approx(fold["accuracy"])
    accs = [f["accuracy"] for f in bench["folds"]]
    assert bench["summary"]["accuracy"]["mean"] == pytest.approx(np.mean(accs))
    assert bench["summary"]["accuracy"]["std"] == pytest.approx(np.std(accs, ddof=1))


def test_card_describes_the_run_and_ships_the_best_validation_fold(tiny_run):
    result, base, argv = tiny_run
    card = json.loads((base / "weights" / "mc3.json").read_text())
    assert card["arch"] == "mc3" and card["classes"] == list(CLASSES)
    assert card["preprocess"]["shape_dhw"] == list(SHAPE)
    assert card["data"]["counts"] == {"healthy": 5, "lgg": 5, "hgg": 5}
    assert card["folds"] == 2 and card["command"].endswith(" ".join(argv))
    assert card["git_commit"] and card["date"]
    assert "not for clinical use" in card["notes"]
    assert card["metrics"]["macro_f1"].keys() == {"mean", "std"}
    val_f1 = [f.best_val_macro_f1 for f in result.folds]
    assert card["shipped"] == f"best_fold:{int(np.argmax(val_f1))}" == result.shipped


def test_card_reloads_into_identical_logits(tiny_run):
    result, base, _ = tiny_run
    model, card = load_checkpoint(base / "weights" / "mc3.json")
    x = torch.randn(2, 1, *SHAPE, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert torch.equal(model(x), result.model.eval()(x))
    assert card.shipped == result.shipped


def test_refit_ships_a_model_trained_on_all_cases(cohort, tmp_path):
    argv = argv_for(cohort, tmp_path / "w", tmp_path / "data", "--refit")
    result = tt.run(config_for(argv), command="", progress=False)
    assert result.shipped == "refit"
    model, card = load_checkpoint(tmp_path / "w" / "mc3.json")
    assert card.shipped == "refit" and "refit on all cases" in card.notes
    x = torch.randn(1, 1, *SHAPE, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        assert torch.equal(model(x), result.model(x))


def test_ship_fold_ships_that_fold(cohort, tmp_path):
    extra = ("--ship-fold", "1", "--augment", "scanner")
    argv = argv_for(cohort, tmp_path / "w", tmp_path / "data", *extra)
    result = tt.run(config_for(argv), command="", progress=False)
    _, card = load_checkpoint(tmp_path / "w" / "mc3.json")
    assert result.shipped == card.shipped == "fold:1" and "--ship-fold" in card.notes
    assert "Augmentation: scanner." in card.notes


@pytest.mark.parametrize(
    ("extra", "match"),
    [(("--ship-fold", "2"), "expected 0 to 1"), (("--ship-fold", "0", "--refit"), "give one")],
)
def test_ship_fold_is_checked(cohort, tmp_path, extra, match):
    argv = argv_for(cohort, tmp_path / "w", tmp_path / "data", *extra)
    with pytest.raises(ConfigError, match=match):
        tt.validate_config(config_for(argv))


def test_folds_and_first_epoch_loss_reproducible(tiny_run, cohort):
    result, base, _ = tiny_run
    again_out = base / "again"
    again = tt.run(
        config_for(argv_for(cohort, again_out, base / "data")), command="", progress=False
    )
    first = load_splits(base / "weights" / "benchmarks" / "mc3.splits.json")
    assert load_splits(again_out / "benchmarks" / "mc3.splits.json") == first
    assert first == make_folds(read_manifest(cohort), k=2, seed=42)
    assert [f.curves[0].train_loss for f in again.folds] == [
        f.curves[0].train_loss for f in result.folds
    ]


def test_default_data_is_the_cached_synthetic_cohort(tmp_path):
    counts = (("healthy", 1), ("lgg", 1), ("hgg", 1))
    cfg = TrainConfig(data_dir=tmp_path, synthetic=SyntheticCohort(counts, "small", seed=3))
    assert tcases.synthetic_dir(cfg) == tmp_path / "synthetic-small-seed3"
    cases = tcases.load_cases(cfg, progress=False)
    assert sorted(c.label for c in cases) == sorted(CLASSES)
    assert {c.source for c in cases} == {"synthetic"}
    manifest = tcases.synthetic_dir(cfg) / "manifest.csv"
    stamp = manifest.stat().st_mtime_ns
    assert tcases.load_cases(cfg, progress=False) == cases
    assert manifest.stat().st_mtime_ns == stamp, "the cached cohort is reused, not regenerated"


# ----------------------------------------------------------------------------- the loop learns


class BlobSet(Dataset):
    """Noise volumes (1, 8, 16, 16); label 2 (hgg) hides a bright 3x5x5 blob at a random place."""

    shape, blob = (8, 16, 16), (3, 5, 5)

    def __init__(self, n: int, seed: int):
        g = torch.Generator().manual_seed(seed)
        self.x = torch.randn(n, 1, *self.shape, generator=g)
        self.y = torch.arange(n) % 2 * 2  # 0 (healthy) / 2 (hgg), balanced
        for i in range(n):
            if self.y[i]:
                d, h, w = (int(torch.randint(0, s - b, (1,), generator=g)) for s, b in
                           zip(self.shape, self.blob, strict=True))  # fmt: skip
                bd, bh, bw = self.blob
                self.x[i, 0, d : d + bd, h : h + bh, w : w + bw] += 3.0

    def __len__(self) -> int:
        return len(self.y)

    def __getitem__(self, i: int):
        return self.x[i], int(self.y[i])


@pytest.mark.slow
def test_loop_learns_a_blob_within_a_few_epochs():
    # ~36 steps: enough for BatchNorm running statistics to settle (eval mode uses them).
    cfg = TrainConfig(arch="mc3", epochs=3, batch_size=8, lr=1e-3, patience=0, workers=0)
    rt = runtime.setup_runtime("cpu")
    torch.manual_seed(0)
    train, val, test = BlobSet(96, 1), BlobSet(16, 2), BlobSet(16, 3)
    weight = class_weights(train.y.tolist(), n_classes=3)
    fit = loop.fit_fold(cfg, create_model("mc3"), train, val, rt, weight, progress=False)
    assert len(fit.curves) == 3
    assert max(c.val_accuracy for c in fit.curves) >= 0.8  # chance is 0.5
    model = create_model("mc3")
    model.load_state_dict(fit.best_state)
    loader = torch.utils.data.DataLoader(test, batch_size=8)
    ev = loop.evaluate_loader(model, loader, rt, weight)
    assert (ev.probs.argmax(1) == ev.labels).mean() >= 0.75
    assert fit.curves[-1].train_loss < fit.curves[0].train_loss


# ----------------------------------------------------------------------------- resume


def test_interrupted_run_resumes_to_the_end(cohort, tmp_path, monkeypatch, capsys):
    calls = {"n": 0, "stop_at": 2}
    real = loop.train_one_epoch

    def flaky(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == calls["stop_at"]:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(loop, "train_one_epoch", flaky)
    argv = argv_for(cohort, tmp_path / "w", tmp_path / "data", "--epochs", "2", "--patience", "5")
    assert cli.main(argv) == 130
    assert "--resume" in capsys.readouterr().err
    resume = tmp_path / "w" / "mc3.resume.pt"
    assert resume.is_file() and not (tmp_path / "w" / "mc3.json").exists()

    calls.update(n=0, stop_at=-1)
    assert cli.main([*argv, "--resume"]) == 0
    assert calls["n"] == 3  # 2 folds x 2 epochs, one of which finished before the interrupt
    assert (tmp_path / "w" / "mc3.safetensors").is_file() and not resume.exists()
    bench = json.loads((tmp_path / "w" / "benchmarks" / "mc3.json").read_text())
    assert [len(f["curves"]) for f in bench["folds"]] == [2, 2]


def test_resume_without_checkpoint_is_refused(cohort, tmp_path, capsys):
    argv = argv_for(cohort, tmp_path / "w", tmp_path / "data", "--resume")
    assert cli.main(argv) == 2
    err = capsys.readouterr().err
    assert "no resume checkpoint" in err and len(err.strip().splitlines()) == 1


# ----------------------------------------------------------------------------- bad input


@pytest.fixture
def cfg(cohort, tmp_path) -> TrainConfig:
    return config_for(argv_for(cohort, tmp_path / "w", tmp_path / "data"))


def test_unknown_architecture_lists_valid_ones(cfg):
    with pytest.raises(ConfigError, match=r"(?s)resnet50.*mc3.*r2plus1d.*r3d"):
        tt.run(replace(cfg, arch="resnet50"), progress=False)


def test_unknown_architecture_on_the_cli_is_one_line_exit_2(cohort, tmp_path, capsys):
    argv = argv_for(cohort, tmp_path / "w", tmp_path / "data")
    argv[argv.index("mc3")] = "vgg"
    assert cli.main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error:") and "r2plus1d" in err and len(err.splitlines()) == 1


def test_manifest_with_missing_file(cfg, tmp_path, cohort):
    cases = read_manifest(cohort)
    cases[0] = replace(cases[0], path=tmp_path / "gone.nii.gz")
    bad = write_manifest(cases, tmp_path / "bad.csv")
    with pytest.raises(ManifestError, match="Missing file"):
        tt.run(replace(cfg, manifest=bad), progress=False)


def test_class_with_no_cases(cfg, tmp_path, cohort):
    cases = [c for c in read_manifest(cohort) if c.label != "lgg"]
    bad = write_manifest(cases, tmp_path / "no-lgg.csv")
    with pytest.raises(ManifestError, match=r"No cases for class\(es\) \['lgg'\]"):
        tt.run(replace(cfg, manifest=bad), progress=False)


def test_one_fold_is_refused(cfg):
    with pytest.raises(ConfigError, match="--folds 1"):
        tt.run(replace(cfg, folds=1), progress=False)


def test_input_shape_too_small(cfg):
    small = replace(cfg.preprocess, shape_dhw=(4, 8, 8))
    with pytest.raises(ConfigError, match="too small for 'r3d'"):
        tt.run(replace(cfg, arch="r3d", preprocess=small), progress=False)


def test_unwritable_out(cfg, tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    with pytest.raises(ConfigError, match="Cannot write to --out"):
        tt.run(replace(cfg, out=blocker / "weights"), progress=False)


def test_spacing_needs_one_or_three_values(cohort, tmp_path):
    argv = argv_for(cohort, tmp_path / "w", tmp_path / "data")
    i = argv.index("--spacing")
    argv[i + 1 : i + 4] = ["2", "3"]
    with pytest.raises(ConfigError, match="one value or three"):
        config_for(argv)


def test_spacing_flags_map_onto_the_preprocess_config(cfg, cohort, tmp_path):
    assert cfg.preprocess == PreprocessConfig(spacing_mm=SPACING, shape_dhw=SHAPE, space="native")
    argv = argv_for(cohort, tmp_path / "w", tmp_path / "data")
    i = argv.index("--spacing")
    argv[i + 1 : i + 4] = ["3"]
    assert config_for(argv).preprocess.spacing_mm == (3.0, 3.0, 3.0)


def test_percentiles_flag_maps_onto_the_preprocess_config(cohort, tmp_path):
    argv = argv_for(cohort, tmp_path / "w", tmp_path / "data")
    assert config_for(argv).preprocess.percentiles == PreprocessConfig().percentiles
    assert config_for([*argv, "--percentiles", "1", "100"]).preprocess.percentiles == (1.0, 100.0)


@pytest.mark.parametrize("bad", [["50", "50"], ["-1", "99"], ["1", "101"], ["99", "1"]])
def test_percentiles_flag_rejects_out_of_range(cohort, tmp_path, bad):
    argv = argv_for(cohort, tmp_path / "w", tmp_path / "data")
    with pytest.raises(ConfigError, match="--percentiles takes LO HI"):
        config_for([*argv, "--percentiles", *bad])


def test_every_config_field_is_a_flag_or_named_as_derived():
    dests = {a.dest for a in cli.build_parser()._actions}
    names = {f.name for f in fields(TrainConfig)}
    assert names - cli.FLAG_DERIVED - cli.NO_FLAG <= dests
    assert cli.config_from_args(cli.build_parser().parse_args([])) == TrainConfig()


def test_missing_pretrained_file_is_refused_before_any_network_is_built(cfg, tmp_path, monkeypatch):
    monkeypatch.setattr(tt, "_new_model", lambda cfg: pytest.fail("a network was built"))
    monkeypatch.setattr("tumortrace.models.create_model", lambda *a, **k: pytest.fail("built"))
    with pytest.raises(
        CheckpointError, match="Pretrained Kinetics-400 weights for 'mc3' not found"
    ):
        tt.validate_config(replace(cfg, pretrained_path=tmp_path / "none.pth"))
    tt.validate_config(cfg)


def test_sigterm_mid_epoch_resumes_to_the_uninterrupted_weights(cohort, tmp_path, capsys):
    """A real SIGTERM inside an epoch: exit 143, a resume file, one line and no traceback; then
    --resume gives the same .safetensors bytes as an uninterrupted run, and two uninterrupted
    runs give identical bytes."""
    import os
    import signal

    data = tmp_path / "data"
    extra = ("--epochs", "2", "--patience", "5", "--balanced", "--healthy-reference")
    runs = {name: argv_for(cohort, tmp_path / name, data, *extra) for name in ("a", "b", "t")}
    assert cli.main(runs["a"]) == 0
    assert cli.main(runs["b"]) == 0
    capsys.readouterr()

    real = loop.train_one_epoch
    calls = {"n": 0}

    def terminated_mid_epoch(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 2:  # fold 0, epoch 2: the signal lands inside the epoch's first step
            os.kill(os.getpid(), signal.SIGTERM)
        return real(*args, **kwargs)

    loop.train_one_epoch = terminated_mid_epoch
    try:
        assert cli.main(runs["t"]) == 143
    finally:
        loop.train_one_epoch = real
    err = capsys.readouterr().err
    assert "Traceback" not in err
    said = [ln for ln in err.splitlines() if ln.startswith(("terminated", "interrupted", "err"))]
    assert said == [
        f"terminated (SIGTERM): run again with --resume to continue from "
        f"{tmp_path / 't' / 'mc3.resume.pt'}"
    ]
    assert (tmp_path / "t" / "mc3.resume.pt").is_file()
    assert not (tmp_path / "t" / "mc3.safetensors").exists()
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL  # handler restored

    assert cli.main([*runs["t"], "--resume"]) == 0
    blobs = {n: (tmp_path / n / "mc3.safetensors").read_bytes() for n in runs}
    assert blobs["a"] == blobs["b"]  # two identical runs: identical bytes
    assert blobs["t"] == blobs["a"]  # terminated + resumed: the uninterrupted weights
    model, card = load_checkpoint(tmp_path / "a" / "mc3.json")
    assert model.stem.input_reference.shape == (1, 1, *SHAPE)
    assert "healthy mean of the training part" in card.notes and "balanced" in card.notes
