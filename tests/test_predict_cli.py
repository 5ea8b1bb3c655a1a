"""`python -m tumortrace predict`: folders, bad files, CSV/JSON, Grad-CAM NIfTI, exit codes."""

from __future__ import annotations

import csv
import io
import json
import os
import struct
import subprocess
import sys
import zipfile
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from conftest import make_head

from tumortrace.__main__ import main
from tumortrace.batch import collect_inputs
from tumortrace.checkpoint import ModelCard, save_checkpoint
from tumortrace.config import CLASSES, PreprocessConfig
from tumortrace.models import create_model, list_models
from tumortrace.qc import CHECK_NAMES

TINY = PreprocessConfig(spacing_mm=(5.0, 3.0, 3.0), shape_dhw=(16, 32, 32), space="native")
ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def weights_dir(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("weights")
    for i, arch in enumerate(list_models()):
        torch.manual_seed(i)
        save_checkpoint(create_model(arch), ModelCard(arch=arch, preprocess=TINY), out)
    return out


@pytest.fixture(scope="module")
def cohort(tmp_path_factory) -> Path:
    """4 small volumes (RAS, LPS-flipped, with a lesion, FreeSurfer MGZ) + 1 corrupt file + 1 file
    of a kind not supported + a lesion mask to skip."""
    d = tmp_path_factory.mktemp("cohort")
    ras = np.diag([2.0, 2.0, 2.0, 1.0])
    lps = np.diag([-2.0, -2.0, 2.0, 1.0])
    nib.save(nib.Nifti1Image(make_head(seed=1), ras), d / "a_ras.nii.gz")
    nib.save(nib.Nifti1Image(make_head(seed=2), lps), d / "b_lps.nii.gz")
    nib.save(nib.Nifti1Image(make_head(seed=3, lesion=True), ras), d / "c_lesion.nii")
    lesion_mask = (make_head(seed=3, lesion=True) > 150).astype(np.uint8)
    nib.save(nib.Nifti1Image(lesion_mask, ras), d / "c_lesion_lesion.nii")  # synth's mask: skipped
    (d / "d_broken.nii.gz").write_bytes(b"\x1f\x8b\x08\x00 this is not a gzip stream")
    nib.save(nib.MGHImage(make_head(seed=4).astype(np.float32), lps), d / "e_freesurfer.mgz")
    (d / "manifest.csv").write_text("subject_id,path,label,source\n")  # not a volume: error row
    return d


def _run(argv: list[str], capsys) -> tuple[int, str, str]:
    code = main(argv)
    out = capsys.readouterr()
    return code, out.out, out.err


def test_collect_inputs_expands_folders(cohort, tmp_path) -> None:
    names = [p.name for p in collect_inputs([cohort])]
    assert names == [
        "a_ras.nii.gz",
        "b_lps.nii.gz",
        "c_lesion.nii",
        "d_broken.nii.gz",
        "e_freesurfer.mgz",
        "manifest.csv",
    ]
    dicom_dir = tmp_path / "series"
    dicom_dir.mkdir()
    (dicom_dir / "IM0001").write_bytes(b"x")
    assert collect_inputs([dicom_dir]) == [dicom_dir]  # a folder of plain files: one DICOM series
    assert collect_inputs([tmp_path / "missing.nii"]) == [tmp_path / "missing.nii"]


def test_collect_inputs_skips_a_mask_given_beside_its_volume(cohort) -> None:
    """A shell glob (``predict cohort/*``) names each volume and its lesion mask: the mask is
    skipped when its volume is given too, and analysed when given alone."""
    files = sorted(cohort.iterdir())
    names = [p.name for p in collect_inputs(files)]
    assert "c_lesion_lesion.nii" in [f.name for f in files]
    assert "c_lesion_lesion.nii" not in names and "c_lesion.nii" in names
    mask = cohort / "c_lesion_lesion.nii"
    assert collect_inputs([mask]) == [mask]


@pytest.mark.slow
def test_folder_with_a_corrupt_and_an_unsupported_file_gives_their_error_rows_and_exit_1(
    cohort, weights_dir, capsys
) -> None:
    code, out, err = _run(
        ["predict", str(cohort), "--weights", str(weights_dir), "--skip-checks", "--quiet"], capsys
    )
    assert code == 1
    rows = list(csv.DictReader(io.StringIO(out)))
    assert len(rows) == 6
    ok = [r for r in rows if r["status"] == "ok"]
    bad = [r for r in rows if r["status"] == "error"]
    assert [Path(r["path"]).name for r in ok] == [
        "a_ras.nii.gz",
        "b_lps.nii.gz",
        "c_lesion.nii",
        "e_freesurfer.mgz",
    ]
    assert len(bad) == 2
    for r in ok:
        assert sum(float(r[f"p_{c}"]) for c in CLASSES) == pytest.approx(1.0, abs=1e-5)
        for arch in list_models():
            assert sum(float(r[f"{arch}_p_{c}"]) for c in CLASSES) == pytest.approx(1.0, abs=1e-5)
            assert r[f"{arch}_label"] in CLASSES
        assert r["label"] in CLASSES and r["error"] == ""
    assert bad[0]["path"].endswith("d_broken.nii.gz") and bad[0]["p_healthy"] == ""
    assert "d_broken.nii.gz" in bad[0]["error"] and len(bad[0]["error"]) > 20
    assert bad[1]["path"].endswith("manifest.csv")
    assert "manifest.csv is not a recognised image file" in bad[1]["error"]
    err_lines = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(err_lines) == 2 and "d_broken.nii.gz" in err_lines[0]
    assert "manifest.csv" in err_lines[1]


def test_json_output_and_cam_maps_on_the_source_grid(cohort, weights_dir, tmp_path, capsys) -> None:
    cams = tmp_path / "cams"
    argv = [
        "predict",
        str(cohort / "b_lps.nii.gz"),
        "--weights",
        str(weights_dir),
        "--arch",
        "r3d",
        "--cam-out",
        str(cams),
        "--format",
        "json",
        "--quiet",
    ]
    code, out, err = _run(argv, capsys)
    assert code == 0, err
    doc = json.loads(out)
    assert doc["archs"] == ["r3d"] and doc["n_ok"] == 1 and doc["n_failed"] == 0
    (result,) = doc["results"]
    assert result["ok"] and sum(result["probs"].values()) == pytest.approx(1.0)
    cam_path = Path(result["networks"]["r3d"]["cam"])
    assert cam_path == cams / "b_lps_r3d_cam.nii.gz"
    cam, source = nib.load(cam_path), nib.load(cohort / "b_lps.nii.gz")
    assert cam.shape == source.shape
    np.testing.assert_allclose(cam.affine, source.affine)
    data = np.asarray(cam.dataobj)
    assert data.min() >= 0 and 0 < data.max() <= 1


def test_unknown_arch_flag_exits_2_with_the_choices(cohort, weights_dir, capsys) -> None:
    argv = ["predict", str(cohort), "--weights", str(weights_dir), "--arch", "vgg", "--quiet"]
    code, out, err = _run(argv, capsys)
    assert code == 2 and out == ""
    assert "Unknown architecture" in err and "r2plus1d" in err


def test_missing_input_is_an_error_row(weights_dir, tmp_path, capsys) -> None:
    argv = ["predict", str(tmp_path / "nope.nii.gz"), "--weights", str(weights_dir), "--quiet"]
    code, out, err = _run(argv, capsys)
    assert code == 1
    (row,) = list(csv.DictReader(io.StringIO(out)))
    assert row["status"] == "error" and "nope.nii.gz" in err


@pytest.mark.slow
def test_subprocess_without_weights_fails_cleanly(cohort, tmp_path) -> None:
    """The real entry point: one error line, exit 2, no traceback."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.run(
        [sys.executable, "-m", "tumortrace", "predict", str(cohort), "--weights", str(tmp_path)],
        capture_output=True,
        text=True,
        env=env,
        cwd=ROOT,
        timeout=300,
    )
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    assert "No model cards in" in proc.stderr


def test_hostile_file_among_good_ones_gives_a_row_for_every_file(
    cohort, weights_dir, tmp_path, capsys, monkeypatch
) -> None:
    """good, an implode zip (a NotImplementedError before), good, a bug on one input: 4 rows."""
    bad_zip = tmp_path / "implode.zip"
    with zipfile.ZipFile(bad_zip, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("s/a.dcm", b"x" * 1000)
    raw = bytearray(bad_zip.read_bytes())
    for sig, off in ((b"PK\x03\x04", 8), (b"PK\x01\x02", 10)):
        struct.pack_into("<H", raw, raw.find(sig) + off, 6)  # method 6: implode
    bad_zip.write_bytes(bytes(raw))
    odd = tmp_path / "odd\nname.nii.gz"
    odd.write_bytes((cohort / "a_ras.nii.gz").read_bytes())

    import tumortrace.batch as batch

    real = batch.load_volume

    def flaky(path):  # an unexpected library error on one input only
        if Path(path).name.startswith("odd"):
            raise ValueError("boom\nsecond line")
        return real(path)

    monkeypatch.setattr(batch, "load_volume", flaky)
    paths = [cohort / "a_ras.nii.gz", bad_zip, cohort / "b_lps.nii.gz", odd]
    argv = ["predict", *map(str, paths), "--weights", str(weights_dir), "--arch", "mc3"]
    argv += ["--skip-checks", "--quiet"]
    code, out, err = _run(argv, capsys)
    assert code == 1
    rows = list(csv.DictReader(io.StringIO(out)))
    assert [r["status"] for r in rows] == ["ok", "error", "ok", "error"]
    assert "compression method 6 (implode)" in rows[1]["error"]
    assert rows[3]["error"] == "unexpected error (ValueError: boom second line)"
    lines = err.splitlines()
    assert len(lines) == 2 and all(line.startswith("error: ") for line in lines)
    assert "odd\\nname.nii.gz" in lines[1]


@pytest.mark.slow
def test_predict_reports_the_input_checks(weights_dir, real_samples_dir, capsys):
    """Without --skip-checks every row carries the input checks: JSON and CSV columns."""
    scan = str(real_samples_dir / "IXI012-HH-1211_T1_2mm_uint8.nii.gz")
    argv = ["predict", scan, "--weights", str(weights_dir), "--arch", "mc3", "--quiet"]
    code, out, _ = _run([*argv, "--format", "json"], capsys)
    assert code == 0
    (row,) = json.loads(out)["results"]
    names = [c["name"] for c in row["qc"]["checks"]]
    assert names == list(CHECK_NAMES)  # every check, in the documented order
    skull = next(c for c in row["qc"]["checks"] if c["name"] == "skull")
    assert "Skull present" in skull["message"]
    assert row["verdict"] == row["label"]  # reliable input: the verdict is the label
    code, out, _ = _run(argv, capsys)
    (line,) = list(csv.DictReader(io.StringIO(out)))
    assert line["qc_status"] in ("ok", "warning") and float(line["qc_registration"]) >= 0.85
