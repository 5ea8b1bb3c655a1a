"""DICOM results (:mod:`tumortrace.dicom_out`): SR, Parametric Maps, SEG; validation, round trip,
the command line's ``--dicom-out`` (a NIfTI input skipped, a broken series an error)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import highdicom as hd
import nibabel as nib
import numpy as np
import pydicom
import pytest
import torch
from _dicom import write_dicom_series, zip_folder

from tumortrace.__main__ import main
from tumortrace.checkpoint import ModelCard, save_checkpoint
from tumortrace.config import CAM_DISPLAY_THRESHOLD, CLASSES, PreprocessConfig
from tumortrace.dicom_out import CLASS_CODES, PRIVATE_SCHEME, build_dicom_results, maps_on_source
from tumortrace.dicom_source import read_dicom_source, read_dicom_upload
from tumortrace.errors import DicomExportError
from tumortrace.explanation import save_cam_nifti
from tumortrace.infer import InferenceSettings, Predictor
from tumortrace.io import load_volume
from tumortrace.models import create_model, list_models

ROOT = Path(__file__).resolve().parents[1]
TINY = PreprocessConfig(spacing_mm=(6.0, 6.0, 6.0), shape_dhw=(16, 32, 32), space="native")
STUDY = {
    "StudyDate": "20260101",
    "StudyTime": "120000",
    "StudyID": "S1",
    "AccessionNumber": "A1",
    "PatientBirthDate": "19700101",
    "PatientSex": "O",
    "ReferringPhysicianName": "Referrer^Test",
}


def sample_series(folder: Path, name: str = "hgg.nii.gz", **study) -> Path:
    """The bundled sample written as a DICOM MR series (its stored grid and affine)."""
    img = nib.load(ROOT / "samples" / name)
    data = np.asarray(img.dataobj, dtype=np.float64)
    pixels = np.round(data / data.max() * 3000)
    for path in write_dicom_series(pixels, img.affine, folder):
        ds = pydicom.dcmread(path)
        for key, value in {**STUDY, **study}.items():
            setattr(ds, key, value)
        ds.save_as(path, enforce_file_format=True)
    return folder


@pytest.fixture(scope="module")
def series(tmp_path_factory) -> Path:
    return sample_series(tmp_path_factory.mktemp("series") / "hgg_dicom")


@pytest.fixture(scope="module")
def weights_dir(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("weights")
    for i, arch in enumerate(list_models()):
        torch.manual_seed(i)
        card = ModelCard(arch=arch, preprocess=TINY, date="2026-01-01T00:00:00+00:00")
        save_checkpoint(create_model(arch), card, out)
    return out


@pytest.fixture(scope="module")
def analysed(series, weights_dir, tmp_path_factory):
    """The sample series analysed; its DICOM results and NIfTI maps written."""
    predictor = Predictor.from_dir(weights_dir, settings=InferenceSettings(input_checks=False))
    volume = load_volume(series)
    analysis = predictor.analyze(volume)
    report = analysis.to_dict(predictor.cards)
    source = read_dicom_source(series)
    results = build_dicom_results(
        source, report, maps_on_source(volume, analysis.explanations), seg=True
    )
    out = tmp_path_factory.mktemp("dicom_out")
    paths = results.write(out, "hgg")
    niftis = {
        arch: save_cam_nifti(expl, volume, out / f"{arch}.nii.gz")
        for arch, expl in analysis.explanations.items()
    }
    return report, source, paths, niftis


def _value(item) -> float:
    mv = item.MeasuredValueSequence[0]
    return float(mv.FloatingPointValue) if "FloatingPointValue" in mv else float(mv.NumericValue)


def _groups(sr) -> dict[str, list]:
    """``{tracking identifier: content items}`` of the report's measurement groups."""
    (measurements,) = [
        c for c in sr.ContentSequence if c.ConceptNameCodeSequence[0].CodeValue == "126010"
    ]
    out = {}
    for group in measurements.ContentSequence:
        items = list(group.ContentSequence)
        name = next(
            i.TextValue for i in items if i.ConceptNameCodeSequence[0].CodeValue == "112039"
        )
        out[name] = items
    return out


def _by_meaning(items, meaning: str):
    return [i for i in items if i.ConceptNameCodeSequence[0].CodeMeaning == meaning]


def test_the_report_holds_each_network_the_ensemble_and_the_weights(analysed) -> None:
    report, _, paths, _ = analysed
    sr = pydicom.dcmread(next(p for p in paths if p.name == "hgg_sr.dcm"))
    hd.sr.Comprehensive3DSR.from_dataset(sr)  # highdicom reads it back
    groups = _groups(sr)
    for arch, net in report["networks"].items():
        items = groups[f"{_display(arch)} classification"]
        for c in CLASSES:
            (m,) = [i for i in items if i.ConceptNameCodeSequence[0].CodeValue == f"P-{c.upper()}"]
            assert _value(m) == net["probs"][c]  # exact
        (finding,) = [  # (the finding type is a "Finding" too: the classification)
            f
            for f in _by_meaning(items, "Finding")
            if f.ConceptCodeSequence[0].CodeValue != "CLASSIFICATION"
        ]
        assert finding.ConceptCodeSequence[0].CodeValue == CLASS_CODES[net["label"]].value
        sha = net["weights"]["weights_sha256"][:12]
        texts = [i.get("TextValue") for i in items]
        assert f"sha256 prefix {sha}" in texts and f"trained {net['weights']['date']}" in texts
    ens = groups["Ensemble verdict"]
    for c in CLASSES:
        (m,) = [i for i in ens if i.ConceptNameCodeSequence[0].CodeValue == f"P-{c.upper()}"]
        assert _value(m) == report["probs"][c]
    (agree,) = _by_meaning(ens, "Networks agree")
    assert agree.ConceptCodeSequence[0].CodeMeaning == ("Yes" if report["agree"] else "No")
    assert any("research use only, not for clinical use" in str(i.get("TextValue")) for i in ens)
    assert sr.Manufacturer == "TumorTrace" and sr.SoftwareVersions
    schemes = [s.CodingSchemeDesignator for s in sr.CodingSchemeIdentificationSequence]
    assert PRIVATE_SCHEME in schemes


def _display(arch: str) -> str:
    from tumortrace.networks import display_name

    return display_name(arch)


def test_the_objects_reference_the_source_and_copy_its_patient_and_study(analysed) -> None:
    _, source, paths, _ = analysed
    src_uids = {ds.SOPInstanceUID for ds in source.datasets}
    first = source.datasets[0]
    objects = [pydicom.dcmread(p) for p in paths]
    sr = next(o for o in objects if o.Modality == "SR")
    (study,) = sr.CurrentRequestedProcedureEvidenceSequence
    assert study.StudyInstanceUID == first.StudyInstanceUID
    referenced = {
        i.ReferencedSOPInstanceUID
        for s in study.ReferencedSeriesSequence
        for i in s.ReferencedSOPSequence
        if s.SeriesInstanceUID == first.SeriesInstanceUID
    }
    assert referenced == src_uids
    for ds in objects:
        assert ds.SOPInstanceUID not in src_uids and ds.SeriesInstanceUID != first.SeriesInstanceUID
        for key in ("PatientID", "PatientName", "StudyInstanceUID", "StudyDate", "StudyID"):
            assert ds[key].value == first[key].value, key
        if ds.Modality != "SR":
            assert ds.FrameOfReferenceUID == first.FrameOfReferenceUID
            derived = {
                d.SourceImageSequence[0].ReferencedSOPInstanceUID
                for f in ds.PerFrameFunctionalGroupsSequence
                for d in f.DerivationImageSequence
            }
            assert derived == src_uids
    assert len({ds.SOPInstanceUID for ds in objects}) == len(objects)


def _lps_to_nifti_voxels(pm) -> tuple[np.ndarray, np.ndarray]:
    """Every frame's pixel centres in RAS mm, from the map's own geometry: ``(F, R, C, 3)``."""
    shared = pm.SharedFunctionalGroupsSequence[0]
    iop = np.asarray(shared.PlaneOrientationSequence[0].ImageOrientationPatient, float)
    dr, dc = (float(v) for v in shared.PixelMeasuresSequence[0].PixelSpacing)
    ipp = np.asarray(
        [
            f.PlanePositionSequence[0].ImagePositionPatient
            for f in pm.PerFrameFunctionalGroupsSequence
        ],
        float,
    )
    r, c = np.meshgrid(np.arange(pm.Rows), np.arange(pm.Columns), indexing="ij")
    lps = (
        ipp[:, None, None, :]
        + c[None, ..., None] * dc * iop[:3]
        + r[None, ..., None] * dr * iop[3:]
    )
    return lps * np.array([-1.0, -1.0, 1.0]), pm.pixel_array


def test_each_map_resampled_by_its_geometry_equals_the_nifti_map(analysed) -> None:
    _, _, paths, niftis = analysed
    for arch, nifti_path in niftis.items():
        pm = pydicom.dcmread(next(p for p in paths if p.name == f"hgg_{arch}_map.dcm"))
        hd.pm.ParametricMap.from_dataset(pm)
        ras, values = _lps_to_nifti_voxels(pm)
        img = nib.load(nifti_path)
        ijk = (np.linalg.inv(img.affine) @ np.c_[ras.reshape(-1, 3), np.ones(ras[..., 0].size)].T)[
            :3
        ]
        nearest = np.round(ijk).astype(int)
        assert np.abs(ijk - nearest).max() < 1e-3  # the frames lie on the source grid
        cam = np.asarray(img.dataobj)
        resampled = cam[nearest[0], nearest[1], nearest[2]].reshape(values.shape)
        assert cam.max() > 0
        assert np.abs(resampled - values).max() < 1e-3 * (cam.max() - cam.min())


def test_segmentation_is_the_map_at_or_above_the_display_threshold(analysed) -> None:
    _, _, paths, _ = analysed
    for arch in list_models():
        pm = pydicom.dcmread(next(p for p in paths if p.name == f"hgg_{arch}_map.dcm"))
        seg = hd.seg.segread(next(p for p in paths if p.name == f"hgg_{arch}_seg.dcm"))
        mask = seg.pixel_array.astype(bool)
        np.testing.assert_array_equal(mask, pm.pixel_array >= CAM_DISPLAY_THRESHOLD)


def _dciodvfy(path: Path) -> tuple[list[str], list[str]]:
    run = subprocess.run(["dciodvfy", str(path)], capture_output=True, text=True, timeout=120)
    lines = [ln.strip() for ln in (run.stdout + run.stderr).splitlines() if ln.strip()]
    return [ln for ln in lines if ln.startswith("Error")], [
        ln for ln in lines if ln.startswith("Warning")
    ]


@pytest.mark.skipif(
    shutil.which("dciodvfy") is None and not os.environ.get("TUMORTRACE_REQUIRE_DICOM3TOOLS"),
    reason="dciodvfy (Debian's dicom3tools) is not installed; CI installs it",
)
def test_dciodvfy_finds_no_error_in_the_sr_the_maps_and_the_segs(analysed) -> None:
    _, _, paths, _ = analysed
    assert len(paths) == 1 + 2 * len(list_models())
    for path in paths:
        errors, warnings = _dciodvfy(path)
        assert not errors, (path.name, errors)
        # what remains: our private coding scheme designator is not a standard one
        assert all(PRIVATE_SCHEME in w for w in warnings), (path.name, warnings)


def _identity_blanked(ds: pydicom.Dataset) -> pydicom.Dataset:
    """``ds`` written and read back, its UIDs, times and per-network texts blanked."""
    import io

    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    out = pydicom.dcmread(io.BytesIO(buf.getvalue()))
    for name in (
        "SOPInstanceUID",
        "SeriesInstanceUID",
        "InstanceCreationDate",
        "InstanceCreationTime",
        "ContentDate",
        "ContentTime",
    ):
        setattr(out, name, None)
    out.DimensionOrganizationSequence[0].DimensionOrganizationUID = None
    for item in out.DimensionIndexSequence:
        item.DimensionOrganizationUID = None
    out.ContributingEquipmentSequence[0].ContributionDateTime = None
    return out


def test_each_later_map_is_the_first_rebuilt_with_its_identity_and_values(series) -> None:
    """The maps after the first are derived from it: each equals the map highdicom builds for
    its network element for element, but for new UIDs (instance, series, dimension
    organisation) and the creation times; its frames are its own values, in highdicom's order."""
    import warnings

    from tumortrace.dicom_out import _frames, _geometry, _maps, _parametric_map

    source = read_dicom_source(series)
    first = source.datasets[0]
    shape = (int(first.Columns), int(first.Rows), len(source.datasets))
    rng = np.random.default_rng(3)
    stored = {a: rng.random(shape, dtype=np.float32) for a in ("r3d", "mc3", "r2plus1d")}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        geom = _geometry(source)
        pms = _maps(source, stored, geom)
        built = {
            a: _parametric_map(source, _frames(m), a, geom, n)
            for n, (a, m) in enumerate(stored.items())
        }
    uids = {pm.SOPInstanceUID for pm in pms.values()} | {pm.SOPInstanceUID for pm in built.values()}
    assert len(uids) == 6
    assert len({pm.SeriesInstanceUID for pm in pms.values()}) == 3
    for arch in stored:
        derived, expected = _identity_blanked(pms[arch]), _identity_blanked(built[arch])
        assert derived.file_meta.MediaStorageSOPInstanceUID == pms[arch].SOPInstanceUID
        assert derived == expected, arch
        assert derived.ContentLabel == f"CAM_{arch}".upper()[:16]
        rwv = derived.SharedFunctionalGroupsSequence[0].RealWorldValueMappingSequence[0]
        assert rwv.LUTLabel == arch


def test_the_report_says_unreliable_input_and_the_check_messages() -> None:
    from tumortrace.dicom_out import _report

    checks = [
        {
            "name": "brain",
            "value": None,
            "unit": "ml",
            "severity": "unreliable",
            "message": "No brain.",
        },
        {"name": "slices", "value": 5.0, "unit": "mm", "severity": "warning", "message": "Thick."},
    ]
    probs = dict.fromkeys(CLASSES, 1 / 3)
    report = {
        "label": "hgg",
        "verdict": "unreliable input",
        "probs": probs,
        "agree": True,
        "qc": {"status": "unreliable", "checks": checks, "warnings": ["No brain.", "Thick."]},
        "networks": {},
    }
    src = pydicom.dcmread(pydicom.data.get_testdata_file("MR_small.dcm"), stop_before_pixels=True)
    from tumortrace.dicom_source import DicomSource

    sr = _report(DicomSource(datasets=(src,), source="MR_small"), report, {})
    groups = _groups(sr)
    (verdict,) = _by_meaning(groups["Ensemble verdict"], "Ensemble verdict")
    assert verdict.ConceptCodeSequence[0].CodeMeaning == "Unreliable input: no verdict"
    texts = [str(i.get("TextValue")) for i in groups["Input checks"]]
    assert "No brain." in texts and "Thick." in texts and "Unreliable input: no verdict." in texts
    brain = _by_meaning(groups["Input checks"], "Input check: brain")
    coded = [b.ConceptCodeSequence[0].CodeMeaning for b in brain if b.ValueType == "CODE"]
    assert coded == ["Input check failed: no verdict"]
    assert [b.TextValue for b in brain if b.ValueType == "TEXT"] == ["No brain."]


def test_an_upload_is_read_like_the_folder(series, tmp_path) -> None:
    data = zip_folder(series, tmp_path / "s.zip").read_bytes()
    upload = read_dicom_upload(data, "scan.zip")
    folder = read_dicom_source(series)
    assert [d.SOPInstanceUID for d in upload.datasets] == [
        d.SOPInstanceUID for d in folder.datasets
    ]
    assert read_dicom_upload((ROOT / "samples" / "hgg.nii.gz").read_bytes(), "hgg.nii.gz") is None
    assert read_dicom_source(ROOT / "samples" / "hgg.nii.gz") is None


def _predict(argv: list[str], capsys) -> tuple[int, dict, str]:
    code = main(["predict", *argv, "--format", "json", "--quiet", "--skip-checks"])
    out = capsys.readouterr()
    return code, json.loads(out.out), out.err


def test_cli_writes_a_zip_inputs_results_and_skips_a_nifti_clearly(
    series, weights_dir, tmp_path, capsys
) -> None:
    zipped = zip_folder(series, tmp_path / "scan.zip")
    out = tmp_path / "dicom"
    nifti = ROOT / "samples" / "healthy.nii.gz"
    code, doc, err = _predict(
        [str(zipped), str(nifti), "--weights", str(weights_dir), "--dicom-out", str(out)], capsys
    )
    assert code == 0, err
    by_path = {Path(r["path"]).name: r for r in doc["results"]}
    written = [Path(p).name for p in by_path["scan.zip"]["dicom"]["written"]]
    assert written == [
        "scan_sr.dcm",
        *(f"scan_{a}_map.dcm" for a in by_path["scan.zip"]["networks"]),
    ]
    assert sorted(p.name for p in out.iterdir()) == sorted(written)
    skipped = by_path["healthy.nii.gz"]["dicom"]["skipped"]
    assert "not a DICOM series" in skipped and "NIfTI" in skipped
    assert f"note: {nifti}: no DICOM results, not a DICOM series" in err


@pytest.mark.parametrize("attribute", ["FrameOfReferenceUID", "PixelSpacing"])
def test_a_broken_attribute_is_one_line_naming_it_and_the_rest_is_written(
    attribute, weights_dir, tmp_path, capsys
) -> None:
    folder = sample_series(tmp_path / "broken")
    victim = sorted(folder.iterdir())[3]
    ds = pydicom.dcmread(victim)
    delattr(ds, attribute)
    if attribute == "PixelSpacing":  # every slice, or the loader refuses the mixed series
        for p in folder.iterdir():
            d = pydicom.dcmread(p)
            del d.PixelSpacing
            d.save_as(p, enforce_file_format=True)
    else:
        ds.save_as(victim, enforce_file_format=True)
    cams, out = tmp_path / "cams", tmp_path / "dicom"
    code, doc, err = _predict(
        [
            str(folder),
            "--weights",
            str(weights_dir),
            "--cam-out",
            str(cams),
            "--dicom-out",
            str(out),
        ],
        capsys,
    )
    assert code == 1
    (row,) = doc["results"]
    assert row["ok"] and sum(row["probs"].values()) == pytest.approx(1.0)  # the verdict is written
    assert all(Path(n["cam"]).is_file() for n in row["networks"].values())  # and the NIfTI maps
    message = row["dicom"]["error"]
    assert attribute in message and "\n" not in message
    (line,) = [ln for ln in err.splitlines() if "DICOM results not written" in ln]
    assert attribute in line
    assert not out.exists() or not any(out.iterdir())


def test_build_refuses_maps_that_do_not_fit_the_series(series) -> None:
    source = read_dicom_source(series)
    with pytest.raises(DicomExportError, match=r"the volume was stored as 10x10x10"):
        build_dicom_results(source, {}, {"mc3": np.zeros((10, 10, 10), np.float32)})
