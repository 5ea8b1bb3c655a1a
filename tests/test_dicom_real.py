"""Real scanner DICOM (issue 28): the corpus in ``../shared/real-dicom`` and pydicom's own files.

* every series of the corpus loads, or is refused with one line that says why (a 4-D series with
  its volume count, images at one slice position, too few slices, a Siemens mosaic);
* what loads matches SimpleITK's own reader: the same voxels on the same world grid (spacing
  within 1e-3 mm, direction cosines within 1e-4);
* the real transfer syntaxes (implicit and explicit VR, big endian, deflate, RLE, JPEG lossless,
  JPEG-LS, JPEG 2000) decode to the same voxels as the uncompressed file;
* a PACS-style export (files without extension, in a sub-folder, a DICOMDIR, gzipped files);
* ``predict`` gives each 3-D series a row with a verdict.

The corpus tests skip when ``../shared`` is absent; pydicom's test files ship in its wheel, so
those tests always run.
"""

from __future__ import annotations

import gzip
import json
import shutil
import warnings
import zipfile
from pathlib import Path

import numpy as np
import pydicom
import pytest
import SimpleITK as sitk  # noqa: N813 (its usual name)
from _dicom import write_dicom_series, zip_folder
from pydicom.data import get_testdata_file
from pydicom.uid import generate_uid

from tumortrace.__main__ import main
from tumortrace.errors import InvalidVolumeError, TumorTraceError
from tumortrace.io import Volume, load_volume, volume_from_array

ROOT = Path(__file__).resolve().parents[1]
CORPUS = ROOT / ".." / "shared" / "real-dicom"
needs_corpus = pytest.mark.skipif(
    not (CORPUS / "manifest.csv").is_file(), reason="../shared/real-dicom is absent"
)
_LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])

# What each real series gives: "3d" (loads) or the refusal's words. The counts are those of
# the corpus' own README and manifest (files x frames, slice positions).
EXPECTED = {
    "ge_signa_pioneer_3d_ax_t1_mprage": "3d",
    "canon_galan_enhanced_dti_gz": r"a 4-D series: 520 images at 40 slice positions, 13 volumes",
    "ge_mr750_epi_fmri_axial": r"a 4-D series: 150 images at 15 slice positions, 10 volumes",
    "philips_achieva_dti_ax": r"a 4-D series: 680 images at 40 slice positions, 17 volumes",
    "philips_achieva_fmri_phantom": r"a 4-D series: 27 images at 9 slice positions, 3 volumes",
    "siemens_prisma_xa30_enhanced_epi_sag": r"a 4-D series: 315 images at 63 slice positions, 5 ",
    "siemens_vida_enhanced_via_agfa_pacs": r"a 4-D series: 100 images at 25 slice positions, 4 ",
    "siemens_prisma_gre_fieldmap": r"holds only 5 slices; expected a 3D volume of at least 8",
    "siemens_prisma_mosaic_fmri_sag": r"a Siemens MOSAIC series: 6 images",
    **{f"siemens_trio_ts{i}": r"a Siemens MOSAIC series: 1 image," for i in range(1, 10)},
}
# One volume of a multi-frame series, alone: the enhanced reader on real files.
SINGLE_VOLUMES = {
    "siemens_prisma_xa30_enhanced_epi_sag": "0063.dcm",
    "siemens_vida_enhanced_via_agfa_pacs": "011-0001.img",
}


def _extract(name: str, dest: Path) -> Path:
    with zipfile.ZipFile(CORPUS / f"{name}.zip") as zf:
        zf.extractall(dest)
    return dest


def _sitk_volume(image: sitk.Image) -> Volume:
    """SimpleITK's own reading as a canonical-RAS volume: the reference."""
    data = sitk.GetArrayFromImage(image).transpose(2, 1, 0)
    lps = np.eye(4)
    lps[:3, :3] = np.asarray(image.GetDirection()).reshape(3, 3) * np.asarray(image.GetSpacing())
    lps[:3, 3] = image.GetOrigin()
    return volume_from_array(data, _LPS_TO_RAS @ lps, "sitk")


def _sitk_series(folder: Path) -> Volume:
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(reader.GetGDCMSeriesFileNames(str(folder)))
    return _sitk_volume(reader.Execute())


def _assert_same_geometry(vol: Volume, ref: Volume) -> None:
    assert vol.shape == ref.shape
    np.testing.assert_allclose(vol.spacing, ref.spacing, atol=1e-3)
    spacing = np.asarray(vol.spacing)
    np.testing.assert_allclose(
        vol.affine[:3, :3] / spacing, ref.affine[:3, :3] / np.asarray(ref.spacing), atol=1e-4
    )
    np.testing.assert_allclose(vol.affine[:3, 3], ref.affine[:3, 3], atol=1e-3)
    np.testing.assert_array_equal(vol.data, ref.data)


# -- the real corpus ------------------------------------------------------------------------------


@needs_corpus
def test_expected_table_covers_the_corpus() -> None:
    names = {p.stem for p in CORPUS.glob("*.zip")}
    assert names == set(EXPECTED)


@needs_corpus
@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_real_series_loads_or_is_refused_with_one_line(name, tmp_path) -> None:
    expected = EXPECTED[name]
    if expected != "3d":
        with pytest.raises(InvalidVolumeError, match=expected) as info:
            load_volume(CORPUS / f"{name}.zip")
        assert "\n" not in str(info.value) and "Error:" not in str(info.value)
        assert str(info.value).startswith(f"{name}.zip: ")
        return
    vol = load_volume(CORPUS / f"{name}.zip")
    _assert_same_geometry(vol, _sitk_series(_extract(name, tmp_path)))


@needs_corpus
@pytest.mark.parametrize("name", sorted(SINGLE_VOLUMES))
def test_one_enhanced_multiframe_volume_matches_simpleitk(name, tmp_path) -> None:
    folder = _extract(name, tmp_path / "all")
    one = tmp_path / "one"
    one.mkdir()
    shutil.copy(folder / SINGLE_VOLUMES[name], one)
    vol = load_volume(one)
    _assert_same_geometry(vol, _sitk_volume(sitk.ReadImage(str(one / SINGLE_VOLUMES[name]))))


@needs_corpus
def test_ge_series_as_a_pacs_export_loads_the_same(tmp_path) -> None:
    """GE's ``i*.MRDC.*`` files (no .dcm) under ``DICOM/ST0/SE3/`` beside a DICOMDIR, zipped."""
    name = "ge_signa_pioneer_3d_ax_t1_mprage"
    files = _extract(name, tmp_path / "flat")
    export = tmp_path / "export"
    (export / "DICOM" / "ST0" / "SE3").mkdir(parents=True)
    for f in files.iterdir():
        shutil.copy(f, export / "DICOM" / "ST0" / "SE3" / f.name)
    shutil.copy(get_testdata_file("DICOMDIR"), export / "DICOMDIR")
    (export / "README.TXT").write_text("PACS export\n")
    vol = load_volume(zip_folder(export, tmp_path / "export.zip"))
    _assert_same_geometry(vol, _sitk_series(files))


@needs_corpus
@pytest.mark.parametrize("ts", range(2, 10))
def test_real_transfer_syntaxes_decode_to_the_uncompressed_voxels(ts, tmp_path) -> None:
    """The TrioTim image in 9 transfer syntaxes, each stacked into an 8-slice series (headers
    rewritten, pixel data bytes kept): the same voxels as the explicit little-endian file."""
    base = load_volume(_stack(CORPUS_FILE(1, tmp_path), tmp_path / "ts1"))
    vol = load_volume(_stack(CORPUS_FILE(ts, tmp_path), tmp_path / f"ts{ts}"))
    np.testing.assert_array_equal(vol.data, base.data)
    np.testing.assert_allclose(vol.affine, base.affine, atol=1e-6)


def CORPUS_FILE(ts: int, tmp_path: Path) -> Path:
    folder = _extract(f"siemens_trio_ts{ts}", tmp_path / f"raw{ts}")
    return folder / f"{ts}.dcm"


@pytest.mark.slow
@needs_corpus
def test_predict_gives_the_3d_series_a_verdict_row(capsys) -> None:
    """``predict`` with the shipped weights and the input checks on the corpus' 3-D series (about
    30 s: brain extraction and registration of a 256x256x130 phantom on 2 cores)."""
    zipped = str(CORPUS / "ge_signa_pioneer_3d_ax_t1_mprage.zip")
    argv = ["predict", zipped, "--weights", str(ROOT / "weights"), "--format", "json", "--quiet"]
    code = main(argv)
    doc = json.loads(capsys.readouterr().out)
    assert code == 0 and doc["n_ok"] == 1, doc
    (row,) = doc["results"]
    assert row["ok"] and row["verdict"] and row["qc"]["checks"], row
    assert abs(sum(row["probs"].values()) - 1) < 1e-5


# -- pydicom's bundled files: always run ----------------------------------------------------------

_PYDICOM_DIR = Path(get_testdata_file("MR_small.dcm")).parent


def _image_files() -> list[str]:
    out = []
    for p in sorted(_PYDICOM_DIR.glob("*.dcm")):
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                ds = pydicom.dcmread(p, stop_before_pixels=True, force=True)
        except Exception:  # (some test files are broken on purpose: covered below too)
            out.append(p.name)
            continue
        if "Rows" in ds or "PixelData" in ds:
            out.append(p.name)
    return out


@pytest.mark.parametrize("name", _image_files())
def test_every_pydicom_image_file_loads_or_gives_one_line(name, tmp_path) -> None:
    """Each bundled image, alone in a folder: a 2-D image is refused with one line saying so."""
    folder = tmp_path / "d"
    folder.mkdir()
    shutil.copy(_PYDICOM_DIR / name, folder / "IM0001")
    try:
        vol = load_volume(folder)
    except TumorTraceError as err:
        assert "\n" not in str(err) and str(err).startswith("d")
        assert "AttributeError" not in str(err)
        return
    assert np.isfinite(vol.data).all() and min(vol.shape) >= 8


def _stack(src: Path, out: Path, n: int = 8, gz: bool = False) -> Path:
    """``n`` copies of one image as a series 2 mm apart along its normal (pixel bytes kept)."""
    out.mkdir(parents=True)
    series = generate_uid()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for k in range(n):
            ds = pydicom.dcmread(src)
            ipp = np.array([float(v) for v in ds.get("ImagePositionPatient", [0, 0, 0])])
            iop = np.array(
                [float(v) for v in ds.get("ImageOrientationPatient", [1, 0, 0, 0, 1, 0])]
            )
            ds.ImagePositionPatient = [
                f"{v:.4f}" for v in ipp + 2.0 * k * np.cross(iop[:3], iop[3:])
            ]
            ds.SeriesInstanceUID, ds.SOPInstanceUID = series, generate_uid()
            ds.InstanceNumber = k + 1
            if "ImageType" in ds:
                ds.ImageType = [t for t in ds.ImageType if t != "MOSAIC"]
            path = out / f"IM{k:04d}"
            ds.save_as(path)
            if gz:
                path.with_name(path.name + ".dcm.gz").write_bytes(gzip.compress(path.read_bytes()))
                path.unlink()
    return out


MR_SMALL = [
    "MR_small_implicit.dcm",
    "MR_small_bigendian.dcm",
    "MR_small_expb.dcm",
    "MR_small_RLE.dcm",
    "MR_small_jpeg_ls_lossless.dcm",
    "MR_small_jp2klossless.dcm",
    "MR_small_padded.dcm",
]


@pytest.mark.parametrize("name", MR_SMALL)
def test_pydicom_transfer_syntaxes_decode_like_explicit_little_endian(name, tmp_path) -> None:
    base = load_volume(_stack(Path(get_testdata_file("MR_small.dcm")), tmp_path / "base"))
    vol = load_volume(_stack(Path(get_testdata_file(name)), tmp_path / "other"))
    np.testing.assert_array_equal(vol.data, base.data)
    np.testing.assert_allclose(vol.affine, base.affine, atol=1e-6)
    _assert_same_geometry(vol, _sitk_series(tmp_path / "other"))


def test_deflated_transfer_syntax_loads_and_matches_simpleitk(tmp_path) -> None:
    folder = _stack(Path(get_testdata_file("image_dfl.dcm")), tmp_path / "dfl")
    _assert_same_geometry(load_volume(folder), _sitk_series(folder))


def test_gzipped_dicom_files_in_a_subfolder_of_a_zip(tmp_path) -> None:
    """Canon stores a series as ``.dcm.gz``: gunzipped in a private folder, then read."""
    plain = load_volume(_stack(Path(get_testdata_file("MR_small.dcm")), tmp_path / "plain"))
    gz = _stack(Path(get_testdata_file("MR_small.dcm")), tmp_path / "gz" / "In" / "enh", gz=True)
    assert all(p.name.endswith(".dcm.gz") for p in gz.iterdir())
    vol = load_volume(zip_folder(tmp_path / "gz", tmp_path / "gz.zip"))
    np.testing.assert_array_equal(vol.data, plain.data)


# -- refusals, one line each ----------------------------------------------------------------------

_VOL = np.random.default_rng(0).integers(0, 800, (12, 12, 10)).astype(np.int16)
_AFFINE = np.diag([1.5, 1.5, 3.0, 1.0])


def _edit(path: Path, **values) -> None:
    ds = pydicom.dcmread(path)
    for k, v in values.items():
        setattr(ds, k, v)
    ds.save_as(path)


def test_two_volumes_in_one_series_are_a_4d_series_with_its_count(tmp_path) -> None:
    uid = generate_uid()
    write_dicom_series(_VOL, _AFFINE, tmp_path / "d", series_uid=uid, prefix="a")
    write_dicom_series(_VOL + 1, _AFFINE, tmp_path / "d", series_uid=uid, prefix="b")
    with pytest.raises(
        InvalidVolumeError, match=r"a 4-D series: 20 images at 10 slice positions, 2 volumes"
    ):
        load_volume(tmp_path / "d")


def test_images_at_one_position_are_not_a_volume(tmp_path) -> None:
    files = write_dicom_series(_VOL, _AFFINE, tmp_path / "d")
    ipp = pydicom.dcmread(files[0]).ImagePositionPatient
    for f in files[1:]:
        _edit(f, ImagePositionPatient=ipp)
    with pytest.raises(InvalidVolumeError, match=r"all 10 images lie at one slice position"):
        load_volume(tmp_path / "d")


def test_a_few_slices_are_not_a_volume(tmp_path) -> None:
    write_dicom_series(_VOL[:, :, :3], _AFFINE, tmp_path / "d")
    with pytest.raises(InvalidVolumeError, match=r"holds only 3 slices; expected a 3D volume"):
        load_volume(tmp_path / "d")


def test_one_image_is_refused_before_decoding(tmp_path) -> None:
    write_dicom_series(_VOL[:, :, :1], _AFFINE, tmp_path / "d")
    with pytest.raises(InvalidVolumeError, match=r"holds one 2-D image; expected a 3D volume"):
        load_volume(tmp_path / "d")


def test_a_mosaic_is_refused_with_its_image_count(tmp_path) -> None:
    files = write_dicom_series(_VOL, _AFFINE, tmp_path / "d")
    for f in files:
        _edit(f, ImageType=["ORIGINAL", "PRIMARY", "M", "ND", "MOSAIC"])
    with pytest.raises(InvalidVolumeError, match=r"a Siemens MOSAIC series: 10 images"):
        load_volume(tmp_path / "d")


def test_compressed_syntax_without_encapsulated_pixel_data_is_damaged(tmp_path) -> None:
    files = write_dicom_series(_VOL, _AFFINE, tmp_path / "d")
    raw = files[0].read_bytes()  # the meta says RLE (same padded length), the data stays native
    explicit, rle = b"1.2.840.10008.1.2.1\x00", b"1.2.840.10008.1.2.5\x00"
    assert raw.count(explicit) == 1
    files[0].write_bytes(raw.replace(explicit, rle))
    with pytest.raises(InvalidVolumeError, match=r"pixel data element is not encapsulated"):
        load_volume(tmp_path / "d")


def test_compressed_pixel_data_with_fewer_fragments_than_frames(tmp_path) -> None:
    src = Path(get_testdata_file("MR_small_RLE.dcm"))
    folder = tmp_path / "d"
    folder.mkdir()
    ds = pydicom.dcmread(src)
    ds.NumberOfFrames = 3  # one fragment for one frame
    ds.save_as(folder / "IM0001")
    with pytest.raises(InvalidVolumeError, match=r"holds 1 non-empty fragment\(s\) for 3 frame"):
        load_volume(folder)


def test_damaged_fragments_are_refused(tmp_path) -> None:
    src = Path(get_testdata_file("MR_small_RLE.dcm"))
    folder = tmp_path / "d"
    folder.mkdir()
    raw = bytearray(src.read_bytes())
    start = pydicom.dcmread(src, defer_size=0).get_item(0x7FE00010, keep_deferred=True).value_tell
    bot = int.from_bytes(raw[start + 4 : start + 8], "little")
    assert raw[start + 8 + bot : start + 12 + bot] == b"\xfe\xff\x00\xe0"  # the first fragment
    raw[start + 8 + bot : start + 12 + bot] = b"\x00\x00\x00\x00"  # its item tag damaged
    (folder / "IM0001").write_bytes(bytes(raw))
    with pytest.raises(InvalidVolumeError, match=r"compressed pixel data is damaged"):
        load_volume(folder)


def _enhanced(tmp_path: Path) -> Path:
    """A small enhanced MR multi-frame file (10 frames of 12x12, 3 mm apart) from scratch."""
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.sequence import Sequence

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.4.1"
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = pydicom.uid.ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID = meta.MediaStorageSOPClassUID, generate_uid()
    ds.SeriesInstanceUID, ds.Modality = generate_uid(), "MR"
    ds.Rows = ds.Columns = 12
    ds.NumberOfFrames = 10
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 1
    shared = Dataset()
    orient, measures = Dataset(), Dataset()
    orient.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
    measures.PixelSpacing, measures.SliceThickness = [1.5, 1.5], 3
    shared.PlaneOrientationSequence = Sequence([orient])
    shared.PixelMeasuresSequence = Sequence([measures])
    ds.SharedFunctionalGroupsSequence = Sequence([shared])
    frames = []
    for k in [3, 1, 0, 2, 4, 5, 9, 7, 8, 6]:  # stored out of order: sorted along the normal
        frame, plane = Dataset(), Dataset()
        plane.ImagePositionPatient = [0, 0, 3.0 * k]
        frame.PlanePositionSequence = Sequence([plane])
        frames.append(frame)
    ds.PerFrameFunctionalGroupsSequence = Sequence(frames)
    order = [3, 1, 0, 2, 4, 5, 9, 7, 8, 6]
    ds.PixelData = np.stack([_VOL[:, :, k].T for k in order]).astype("<i2").tobytes()
    folder = tmp_path / "enh"
    folder.mkdir()
    ds.save_as(folder / "IM0001", enforce_file_format=True)
    return folder


def test_enhanced_multiframe_frames_are_put_in_slice_order(tmp_path) -> None:
    vol = load_volume(_enhanced(tmp_path))
    ref = volume_from_array(_VOL, np.diag([-1.5, -1.5, 3.0, 1.0]))  # LPS identity -> RAS
    np.testing.assert_array_equal(vol.data, ref.data)
    np.testing.assert_allclose(vol.affine, ref.affine, atol=1e-6)


def test_enhanced_frames_with_two_orientations_are_refused(tmp_path) -> None:
    path = _enhanced(tmp_path) / "IM0001"
    ds = pydicom.dcmread(path)
    other = pydicom.Dataset()
    other.ImageOrientationPatient = [0, 1, 0, 0, 0, -1]
    ds.PerFrameFunctionalGroupsSequence[4].PlaneOrientationSequence = pydicom.Sequence([other])
    ds.save_as(path)
    with pytest.raises(InvalidVolumeError, match=r"different ImageOrientationPatient values"):
        load_volume(path.parent)


def test_enhanced_frame_count_mismatch_is_refused(tmp_path) -> None:
    path = _enhanced(tmp_path) / "IM0001"
    ds = pydicom.dcmread(path)
    del ds.PerFrameFunctionalGroupsSequence[-1]
    ds.save_as(path)
    with pytest.raises(InvalidVolumeError, match=r"describes 9 frames for NumberOfFrames 10"):
        load_volume(path.parent)


def test_gzipped_member_over_the_file_cap_is_refused(tmp_path) -> None:
    from tumortrace.config import IOLimits

    folder = tmp_path / "d"
    folder.mkdir()
    (folder / "big.dcm.gz").write_bytes(gzip.compress(b"\x00" * (1 << 20)))
    limits = IOLimits(max_dicom_file_bytes=1 << 19)
    with pytest.raises(TumorTraceError, match=r"big\.dcm\.gz decompresses to more than"):
        load_volume(folder, limits)


def test_a_folder_with_no_series_names_what_it_accepts(tmp_path) -> None:
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "notes.txt").write_text("x")
    with pytest.raises(InvalidVolumeError, match=r"no DICOM series found; expected .*\.mgz"):
        load_volume(tmp_path / "d")
