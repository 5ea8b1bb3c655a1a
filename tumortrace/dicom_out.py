"""DICOM results for a DICOM input: a Structured Report, one Parametric Map per network, and
optionally one Segmentation per network (highdicom).

* **Structured Report** (TID 1500 Measurement Report in a Comprehensive 3D SR): one measurement
  group per network (its probability of each class, its predicted class, the weights' identity
  as the algorithm), one for the ensemble (probabilities, verdict, whether the networks agree,
  the "research use only, not for clinical use" statement) and one for the input checks (each
  check's severity and message). Its image library and evidence reference every source
  instance; each network's group references its Parametric Map.
* **Parametric Map** per network: the map (float32, 0-1) on the source frames, each frame on one
  source slice with its position, orientation and spacing (highdicom sorts the frames along the
  slice normal; each frame's Plane Position and Derivation Image name its slice).
* **Segmentation** per network (``seg=True``): the map at or above
  :data:`tumortrace.config.CAM_DISPLAY_THRESHOLD`, for viewers without Parametric Map support.

Findings are coded: a healthy brain is SNOMED CT 17621005 "Normal"; the two tumour classes, the
probabilities, the input checks and the map are private codes of the ``99TMTR`` scheme (named in
each object's Coding Scheme Identification), as no standard code names them. Every object has new
UIDs, ``Manufacturer`` "TumorTrace" and ``SoftwareVersions`` the package version; the patient
and study attributes come from the source headers (:mod:`tumortrace.dicom_source`).

The three maps share one geometry: the plane positions, orientation and pixel measures are built
once from the source headers. Only the first map is built by highdicom (which checks it against
the source); the others are derived from it (:func:`_derived_map`): new UIDs, their own label,
value mapping and pixels, and the per-frame functional groups and source references, which
depend only on the source frames, encoded once and written as the same bytes in each. A test
checks that a derived map equals the map highdicom builds for that network, but for its UIDs and
times. This is what keeps ``--dicom-out`` near a second on a 240x240x155 series
(``benchmarks/bench_dicom_out.py``).
"""

from __future__ import annotations

import io
import warnings
import zipfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from pydicom.dataset import Dataset
from pydicom.sr.codedict import codes
from pydicom.sr.coding import Code

from tumortrace import __version__
from tumortrace.config import CAM_DISPLAY_THRESHOLD, CLASSES
from tumortrace.dicom_source import DicomSource
from tumortrace.errors import DicomExportError
from tumortrace.explanation import Explanation
from tumortrace.guards import one_line
from tumortrace.networks import display_name
from tumortrace.volume import Volume

__all__ = [
    "CLASS_CODES",
    "NIFTI_SKIP",
    "PRIVATE_SCHEME",
    "DicomResults",
    "build_dicom_results",
    "maps_on_source",
]

PRIVATE_SCHEME = "99TMTR"
"""Coding scheme designator of TumorTrace's private codes."""

MANUFACTURER = "TumorTrace"
NOTICE = "research use only, not for clinical use"
_DEVICE: dict[str, str] = {
    "manufacturer": MANUFACTURER,
    "manufacturer_model_name": "TumorTrace",
    "software_versions": __version__,
    "device_serial_number": "none",
}
"""The equipment attributes every map and segmentation names (highdicom keyword arguments)."""
_SERIES_SR, _SERIES_PM, _SERIES_SEG = 9100, 9101, 9201


def _private(value: str, meaning: str) -> Code:
    return Code(value, PRIVATE_SCHEME, meaning)


CLASS_CODES: dict[str, Code] = {
    "healthy": codes.SCT.Normal,
    "lgg": _private("LGG", "Low-grade glioma (TumorTrace class)"),
    "hgg": _private("HGG", "High-grade glioma (TumorTrace class)"),
}
"""The finding each class label is written as."""

_CLASS_WORDS = {"healthy": "a healthy brain", "lgg": "low-grade glioma", "hgg": "high-grade glioma"}
_PROBABILITY = {c: _private(f"P-{c.upper()}", f"Probability of {_CLASS_WORDS[c]}") for c in CLASSES}
_UNRELIABLE = _private("UNRELIABLE", "Unreliable input: no verdict")
_AGREE = _private("AGREE", "Networks agree")
_VERDICT = _private("VERDICT", "Ensemble verdict")
_CLASSIFICATION = _private("CLASSIFICATION", "Brain MRI classification (healthy, LGG, HGG)")
_CHECKS = _private("CHECKS", "Input checks")
_SEVERITY = {
    "ok": _private("QC-OK", "Input check passed"),
    "info": _private("QC-INFO", "Input check note"),
    "warning": _private("QC-WARNING", "Input check warning: the verdict is doubtful"),
    "unreliable": _private("QC-UNRELIABLE", "Input check failed: no verdict"),
}
_CAM = _private("CAM", "Class-activation map (0-1)")
_CAM_REGION = _private("CAM-REGION", "Class-activation map at or above the display threshold")


def _check_code(name: str) -> Code:
    return _private(f"QC-{name.upper()}", f"Input check: {name}")


@dataclass(frozen=True)
class DicomResults:
    """The DICOM objects for one analysed series.

    Attributes:
        sr: the Structured Report.
        maps: ``{arch: Parametric Map}`` in the order analysed.
        segs: ``{arch: Segmentation}`` (empty unless asked for).
    """

    sr: Dataset
    maps: dict[str, Dataset]
    segs: dict[str, Dataset] = field(default_factory=dict)

    def named(self, stem: str) -> dict[str, Dataset]:
        """``{file name: object}``: ``<stem>_sr.dcm``, ``<stem>_<arch>_map.dcm``, ``_seg.dcm``."""
        out = {f"{stem}_sr.dcm": self.sr}
        out |= {f"{stem}_{arch}_map.dcm": ds for arch, ds in self.maps.items()}
        out |= {f"{stem}_{arch}_seg.dcm": ds for arch, ds in self.segs.items()}
        return out

    def write(self, folder: str | Path, stem: str) -> list[Path]:
        """Writes every object into ``folder`` (created); returns the paths."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        paths = []
        for name, ds in self.named(stem).items():
            ds.save_as(folder / name, enforce_file_format=True)
            paths.append(folder / name)
        return paths

    def zip_bytes(self, stem: str) -> bytes:
        """Every object in one zip (deflated at level 1: the maps are mostly zeros)."""
        buf = io.BytesIO()
        with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED, compresslevel=1) as zf:
            for name, ds in self.named(stem).items():
                part = io.BytesIO()
                ds.save_as(part, enforce_file_format=True)
                zf.writestr(name, part.getvalue())
        return buf.getvalue()


@dataclass(frozen=True)
class _Geometry:
    """The source frames' geometry, built once and shared by every map."""

    positions: list[Any]
    orientation: Any
    measures: Any


def _geometry(source: DicomSource) -> _Geometry:
    import highdicom as hd

    first = source.datasets[0]
    iop = np.asarray(first.ImageOrientationPatient, float)
    normal = np.cross(iop[:3], iop[3:])
    pos = [np.asarray(ds.ImagePositionPatient, float) for ds in source.datasets]
    spacing = float(abs((pos[-1] - pos[0]) @ normal) / max(len(pos) - 1, 1))
    thickness = float(first.get("SliceThickness") or spacing or 1.0)
    return _Geometry(
        positions=[hd.PlanePositionSequence("PATIENT", [float(v) for v in p]) for p in pos],
        orientation=hd.PlaneOrientationSequence("PATIENT", [float(v) for v in iop]),
        measures=hd.PixelMeasuresSequence(
            pixel_spacing=[float(v) for v in first.PixelSpacing],
            slice_thickness=thickness,
            spacing_between_slices=spacing or None,
        ),
    )


def _frames(stored_xyz: np.ndarray) -> np.ndarray:
    """``(X, Y, Z)`` map on the stored grid -> ``(frames, rows, columns)`` float32."""
    return np.ascontiguousarray(np.asarray(stored_xyz, np.float32).transpose(2, 1, 0))


def _equipment(ds: Dataset, description: str) -> None:
    ds.Manufacturer = MANUFACTURER
    ds.ManufacturerModelName = "TumorTrace"
    ds.SoftwareVersions = __version__
    ds.SeriesDescription = description[:64]
    scheme = Dataset()
    scheme.CodingSchemeDesignator = PRIVATE_SCHEME
    scheme.CodingSchemeName = "TumorTrace private codes"
    scheme.CodingSchemeResponsibleOrganization = "TumorTrace project"
    ds.CodingSchemeIdentificationSequence = [scheme]


def _mapping(arch: str):
    """The map's real-world value mapping: 0-1, no units, quantity "class-activation map"."""
    import highdicom as hd

    return hd.pm.RealWorldValueMapping(
        lut_label=arch[:16],
        lut_explanation=f"{display_name(arch)} class-activation map"[:64],
        unit=codes.UCUM.NoUnits,
        value_range=(0.0, 1.0),
        slope=1.0,
        intercept=0.0,
        quantity_definition=_CAM,
    )


def _parametric_map(source: DicomSource, frames: np.ndarray, arch: str, geom: _Geometry, n: int):
    """The first network's map, built by highdicom (which checks it against the source)."""
    import highdicom as hd

    pm = hd.pm.ParametricMap(
        source_images=list(source.datasets),
        pixel_array=frames,
        series_instance_uid=hd.UID(),
        series_number=_SERIES_PM + n,
        sop_instance_uid=hd.UID(),
        instance_number=1,
        **_DEVICE,
        contains_recognizable_visual_features=False,
        real_world_value_mappings=[_mapping(arch)],
        voi_lut_transformations=[hd.VOILUTTransformation(window_center=0.5, window_width=1.0)],
        pixel_measures=geom.measures,
        plane_orientation=geom.orientation,
        plane_positions=geom.positions,
        content_label=_content_label(arch),
        content_description=_content_description(arch),
        derived_pixel_contrast=hd.pm.DerivedPixelContrastValues.NONE,
    )
    _equipment(pm, _map_series_description(arch))
    anatomy = Dataset()  # the brain is not a paired organ: laterality "U"
    anatomy.FrameLaterality = "U"
    anatomy.AnatomicRegionSequence = [hd.sr.CodedConcept.from_code(codes.SCT.Brain)]
    pm.SharedFunctionalGroupsSequence[0].FrameAnatomySequence = [anatomy]
    return pm


def _content_label(arch: str) -> str:
    return f"CAM_{arch}".upper()[:16]


def _content_description(arch: str) -> str:
    return f"{display_name(arch)} class-activation map"[:64]


def _map_series_description(arch: str) -> str:
    return f"TumorTrace {display_name(arch)} class-activation map, research use"


_SHARED_SEQUENCES = (
    "PerFrameFunctionalGroupsSequence",
    "SourceImageSequence",
    "ReferencedSeriesSequence",
)
"""The maps' large sequences that depend only on the source frames (one item per frame or per
source instance): encoded once, the same bytes in every map."""


def _encoded(ds: Dataset, keyword: str):
    """``ds``'s sequence ``keyword`` encoded once (explicit VR little endian), as a raw element."""
    from pydicom.charset import default_encoding
    from pydicom.dataelem import RawDataElement
    from pydicom.filebase import DicomBytesIO
    from pydicom.filewriter import write_data_element

    elem = ds[keyword]
    buf = DicomBytesIO()
    buf.is_little_endian, buf.is_implicit_VR = True, False
    write_data_element(buf, elem, ds.get("SpecificCharacterSet") or default_encoding)
    data = buf.getvalue()
    value = data[12:]  # tag (4), "SQ" (2), reserved (2), length (4)
    if data[4:6] != b"SQ" or int.from_bytes(data[8:12], "little") != len(value):
        raise ValueError(f"{keyword} did not encode as one defined-length sequence")
    return RawDataElement(elem.tag, "SQ", len(value), value, 0, False, True)


def _prepare_for_copies(pm: Dataset) -> None:
    """Resolves ``pm``'s ambiguous VRs and swaps its source-only sequences for their encoding.

    ``pm`` is then written as explicit VR little endian with its elements as they are: the
    encoded sequences are written byte for byte (and decoded again if read).
    """
    from pydicom.charset import convert_encodings, default_encoding
    from pydicom.filewriter import correct_ambiguous_vr

    correct_ambiguous_vr(pm, True)
    for keyword in _SHARED_SEQUENCES:
        if keyword in pm:
            raw = _encoded(pm, keyword)
            del pm[keyword]
            pm[raw.tag] = raw
    charset = pm.get("SpecificCharacterSet")
    pm.set_original_encoding(
        False, True, convert_encodings(charset) if charset else default_encoding
    )


def _frame_order(pm: Dataset, frames: np.ndarray, geom: _Geometry) -> np.ndarray | None:
    """The source frame that each of ``pm``'s frames holds (highdicom sorts them along the
    slice normal); None where they cannot be matched one to one or the pixels disagree."""

    def xyz(plane) -> list[float]:
        return [float(v) for v in plane[0].ImagePositionPatient]

    src = np.array([xyz(p) for p in geom.positions])
    got = np.array([xyz(f.PlanePositionSequence) for f in pm.PerFrameFunctionalGroupsSequence])
    if got.shape != src.shape:
        return None
    dist = np.abs(got[:, None, :] - src[None, :, :]).max(axis=2)
    order = dist.argmin(axis=1)
    if sorted(order.tolist()) != list(range(len(src))) or dist.min(axis=1).max() > 1e-3:
        return None
    data, size = pm.get("FloatPixelData"), frames[0].nbytes
    if data is None or len(data) != frames.nbytes:
        return None
    if data[:size] != frames[order[0]].tobytes() or data[-size:] != frames[order[-1]].tobytes():
        return None
    return order


def _derived_map(
    base: Dataset, stored_xyz: np.ndarray, order: np.ndarray, arch: str, n: int
) -> Dataset:
    """Another network's Parametric Map made from ``base`` (:func:`_prepare_for_copies`).

    The maps differ only in their identity and their values: new SOP instance, series and
    dimension organization UIDs, the series number, label, description and real-world value
    mapping of ``arch``, and its pixels. Everything else (patient, study, frame of reference,
    the source references, the per-frame positions) is the same source frames' and is shared.
    """
    import copy

    import highdicom as hd
    from pydicom.dataelem import DataElement

    ds = Dataset()
    for tag in base.keys():  # noqa: SIM118 (iterating a Dataset decodes its raw elements)
        elem = base.get_item(tag)
        if tag == 0x7FE00008:  # FloatPixelData: this network's values below
            continue
        ds[tag] = elem if elem.is_raw else copy.deepcopy(elem)
    ds.file_meta = copy.deepcopy(base.file_meta)
    ds.set_original_encoding(*base.original_encoding, base.original_character_set)
    uid = hd.UID()
    ds.SOPInstanceUID = uid
    ds.file_meta.MediaStorageSOPInstanceUID = uid
    ds.SeriesInstanceUID = hd.UID()
    ds.SeriesNumber = _SERIES_PM + n
    ds.ContentLabel = _content_label(arch)
    ds.ContentDescription = _content_description(arch)
    ds.SeriesDescription = _map_series_description(arch)[:64]
    organization = hd.UID()
    ds.DimensionOrganizationSequence[0].DimensionOrganizationUID = organization
    for item in ds.DimensionIndexSequence:
        item.DimensionOrganizationUID = organization
    ds.SharedFunctionalGroupsSequence[0].RealWorldValueMappingSequence = [_mapping(arch)]
    # frames (k, j, i) of an (i, j, k) array, C order, are its Fortran-order bytes
    n_frames = len(order)
    if np.array_equal(order, np.arange(n_frames)):
        pick: Any = slice(None)
    elif np.array_equal(order, np.arange(n_frames)[::-1]):
        pick = slice(None, None, -1)
    else:
        pick = order
    pixels = np.asarray(stored_xyz, np.float32)[:, :, pick].tobytes(order="F")
    ds[0x7FE00008] = DataElement(0x7FE00008, "OF", pixels)
    return ds


def _maps(source: DicomSource, maps_stored: Mapping[str, np.ndarray], geom: _Geometry):
    """``{arch: Parametric Map}``: the first built by highdicom, the others derived from it."""
    items = list(maps_stored.items())
    if not items:
        return {}
    arch, stored = items[0]
    frames = _frames(stored)
    base = _parametric_map(source, frames, arch, geom, 0)
    order = _frame_order(base, frames, geom)
    if order is None:  # not seen: highdicom's frames are the source's, sorted along the normal
        return {
            arch: base,
            **{
                a: _parametric_map(source, _frames(m), a, geom, n)
                for n, (a, m) in enumerate(items[1:], 1)
            },
        }
    _prepare_for_copies(base)
    pms = {arch: base}
    for n, (a, m) in enumerate(items[1:], 1):
        pms[a] = _derived_map(base, m, order, a, n)
    return pms


def _segmentation(source: DicomSource, frames: np.ndarray, arch: str, geom: _Geometry, n: int):
    import highdicom as hd

    algorithm = hd.AlgorithmIdentificationSequence(
        name=f"TumorTrace {arch}", family=codes.DCM.ArtificialIntelligence, version=__version__
    )
    segment = hd.seg.SegmentDescription(
        segment_number=1,
        segment_label=f"{arch} map >= {CAM_DISPLAY_THRESHOLD:g}",
        segmented_property_category=codes.SCT.SpatialAndRelationalConcept,
        segmented_property_type=_CAM_REGION,
        algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
        algorithm_identification=algorithm,
    )
    seg = hd.seg.Segmentation(
        source_images=list(source.datasets),
        pixel_array=frames >= CAM_DISPLAY_THRESHOLD,
        segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
        segment_descriptions=[segment],
        series_instance_uid=hd.UID(),
        series_number=_SERIES_SEG + n,
        sop_instance_uid=hd.UID(),
        instance_number=1,
        **_DEVICE,
        pixel_measures=geom.measures,
        plane_orientation=geom.orientation,
        plane_positions=geom.positions,
        omit_empty_frames=False,
    )
    _equipment(
        seg, f"TumorTrace {display_name(arch)} map >= {CAM_DISPLAY_THRESHOLD:g}, research use"
    )
    return seg


def _text(name: Code, value: str):
    import highdicom as hd

    return hd.sr.TextContentItem(
        name=name, value=value[:1024], relationship_type=hd.sr.RelationshipTypeValues.CONTAINS
    )


def _add(group, *items) -> None:
    """Appends content items to a measurement group's container."""
    group[0].ContentSequence.extend(items)


def _probabilities(probs: Mapping[str, float], algorithm) -> list:
    import highdicom as hd

    return [
        hd.sr.Measurement(
            name=_PROBABILITY[c],
            value=float(probs[c]),
            unit=codes.UCUM.NoUnits,
            algorithm_id=algorithm,
        )
        for c in CLASSES
    ]


def _network_group(arch: str, net: Mapping[str, Any], pm: Dataset | None):
    """One network's group: its probabilities, its class, its weights and its map."""
    import highdicom as hd

    weights = net.get("weights") or {}
    sha = str(weights.get("weights_sha256") or "")[:12] or "unknown"
    algorithm = hd.sr.AlgorithmIdentification(
        name=f"TumorTrace {display_name(arch)} ({arch})",
        version=f"{__version__}; weights sha256 {sha}",
        parameters=[f"trained {weights.get('date') or 'unknown'}", f"sha256 prefix {sha}"],
    )
    group = hd.sr.MeasurementsAndQualitativeEvaluations(
        tracking_identifier=hd.sr.TrackingIdentifier(
            uid=hd.UID(), identifier=f"{display_name(arch)} classification"
        ),
        finding_type=_CLASSIFICATION,
        algorithm_id=algorithm,
        finding_sites=[hd.sr.FindingSite(codes.SCT.Brain)],
        measurements=_probabilities(net["probs"], algorithm),
        qualitative_evaluations=[
            hd.sr.QualitativeEvaluation(codes.DCM.Finding, CLASS_CODES[net["label"]])
        ],
    )
    if pm is not None:
        _add(
            group,
            hd.sr.ImageContentItem(
                name=_CAM,
                referenced_sop_class_uid=pm.SOPClassUID,
                referenced_sop_instance_uid=pm.SOPInstanceUID,
                relationship_type=hd.sr.RelationshipTypeValues.CONTAINS,
            ),
        )
    return group


def _ensemble_group(report: Mapping[str, Any]):
    import highdicom as hd

    reliable = report["verdict"] != "unreliable input"
    algorithm = hd.sr.AlgorithmIdentification(
        name="TumorTrace ensemble (mean of the networks' probabilities)",
        version=__version__,
        parameters=[", ".join(report["networks"])],
    )
    group = hd.sr.MeasurementsAndQualitativeEvaluations(
        tracking_identifier=hd.sr.TrackingIdentifier(uid=hd.UID(), identifier="Ensemble verdict"),
        finding_type=_CLASSIFICATION,
        algorithm_id=algorithm,
        finding_sites=[hd.sr.FindingSite(codes.SCT.Brain)],
        measurements=_probabilities(report["probs"], algorithm),
        qualitative_evaluations=[
            hd.sr.QualitativeEvaluation(
                _VERDICT, CLASS_CODES[report["label"]] if reliable else _UNRELIABLE
            ),
            hd.sr.QualitativeEvaluation(_AGREE, codes.SCT.Yes if report["agree"] else codes.SCT.No),
        ],
    )
    _add(group, _text(codes.DCM.Comment, f"TumorTrace {__version__}: {NOTICE}."))
    return group


def _checks_group(qc: Mapping[str, Any] | None):
    import highdicom as hd

    group = hd.sr.MeasurementsAndQualitativeEvaluations(
        tracking_identifier=hd.sr.TrackingIdentifier(uid=hd.UID(), identifier="Input checks"),
        finding_type=_CHECKS,
        qualitative_evaluations=[
            hd.sr.QualitativeEvaluation(_check_code(c["name"]), _SEVERITY[c["severity"]])
            for c in (qc or {}).get("checks", [])
        ],
    )
    if qc is None:
        _add(group, _text(codes.DCM.Comment, "The input checks were not run."))
    else:
        for c in qc["checks"]:
            _add(group, _text(_check_code(c["name"]), c["message"]))
        if qc["status"] == "unreliable":
            _add(group, _text(codes.DCM.Comment, "Unreliable input: no verdict."))
    return group


def _report(source: DicomSource, report: Mapping[str, Any], maps: Mapping[str, Dataset]):
    import highdicom as hd

    observer = hd.sr.ObserverContext(
        observer_type=codes.DCM.Device,
        observer_identifying_attributes=hd.sr.DeviceObserverIdentifyingAttributes(
            uid=hd.UID(), name="TumorTrace", manufacturer_name=MANUFACTURER, model_name=__version__
        ),
    )
    groups = [_network_group(a, n, maps.get(a)) for a, n in report["networks"].items()]
    groups += [_ensemble_group(report), _checks_group(report.get("qc"))]
    content = hd.sr.MeasurementReport(
        observation_context=hd.sr.ObservationContext(observer_device_context=observer),
        procedure_reported=codes.LN.BrainMRI,
        imaging_measurements=groups,
    )
    sr = hd.sr.Comprehensive3DSR(
        evidence=[*source.datasets, *maps.values()],
        content=content[0],
        series_instance_uid=hd.UID(),
        series_number=_SERIES_SR,
        sop_instance_uid=hd.UID(),
        instance_number=1,
        manufacturer=MANUFACTURER,
        is_complete=True,
    )
    _equipment(sr, f"TumorTrace report, {NOTICE}")
    return sr


def build_dicom_results(
    source: DicomSource,
    report: Mapping[str, Any],
    maps_stored: Mapping[str, np.ndarray],
    *,
    seg: bool = False,
) -> DicomResults:
    """Builds the Structured Report, the Parametric Maps and (``seg``) the Segmentations.

    Args:
        source: the input's series headers (:func:`tumortrace.dicom_source.read_dicom_source`).
        report: :meth:`tumortrace.infer.Analysis.to_dict` with the weights' cards.
        maps_stored: ``{arch: (X, Y, Z) float map in [0, 1]}`` on the stored grid
            (:meth:`tumortrace.volume.Volume.to_original` of each explanation's ``cam_volume``).
        seg: also build a Segmentation of each map at or above the display threshold.

    Returns:
        The objects, in memory (:meth:`DicomResults.write` or :meth:`DicomResults.zip_bytes`).

    Raises:
        DicomExportError: the headers lack an attribute the objects need (named), or highdicom
            refuses one (its message, on one line).
    """
    shapes = {m.shape for m in maps_stored.values()}
    if len(shapes) > 1:
        raise DicomExportError(f"{source.source}: the maps have different shapes {shapes}.")
    if shapes:
        source.check(shapes.pop())
    else:
        source.check(
            (int(source.datasets[0].Columns), int(source.datasets[0].Rows), len(source.datasets))
        )
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # highdicom's deprecation notes are not the user's
            geom = _geometry(source)
            pms = _maps(source, maps_stored, geom)
            segs = (
                {
                    arch: _segmentation(source, _frames(m), arch, geom, n)
                    for n, (arch, m) in enumerate(maps_stored.items())
                }
                if seg
                else {}
            )
            sr = _report(source, report, pms)
    except DicomExportError:
        raise
    except (ValueError, TypeError, AttributeError, KeyError) as err:
        raise DicomExportError(
            f"{source.source}: the DICOM results were refused ({type(err).__name__}: "
            f"{one_line(str(err))[:200]})."
        ) from err
    return DicomResults(sr=sr, maps=pms, segs=segs)


NIFTI_SKIP = (
    "not a DICOM series: DICOM results reference the source series' instances, and this input "
    "has none (a NIfTI file); its other outputs are written"
)
"""Why an input gets no DICOM results (the CLI and the report say it)."""


def maps_on_source(
    volume: Volume, explanations: Mapping[str, Explanation]
) -> dict[str, np.ndarray]:
    """``{arch: (X, Y, Z) float32}``: each map moved onto the grid the source stored."""
    return {
        arch: volume.to_original(expl.cam_volume).astype(np.float32, copy=False)
        for arch, expl in explanations.items()
    }
