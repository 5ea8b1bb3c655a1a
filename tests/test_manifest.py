"""Manifest CSV: round trip, relative paths, and one test per validation rule."""

from __future__ import annotations

from pathlib import Path

import pytest

from tumortrace.errors import ManifestError
from tumortrace.manifest import (
    Case,
    lesion_mask_path,
    masked_volume,
    read_manifest,
    sibling_lesion_mask,
    write_manifest,
)


def _cases(tmp_path: Path) -> list[Case]:
    out = []
    for i, label in enumerate(["healthy", "lgg", "hgg"]):
        f = tmp_path / "vols" / f"s{i}.nii.gz"
        f.parent.mkdir(exist_ok=True)
        f.write_bytes(b"x")
        out.append(Case(f"s{i}", f, label, "synthetic"))
    return out


def test_round_trip_stores_relative_paths(tmp_path):
    cases = _cases(tmp_path)
    path = write_manifest(cases, tmp_path / "manifest.csv")
    text = path.read_text()
    assert "vols/s0.nii.gz" in text and str(tmp_path) not in text
    back = read_manifest(path)
    assert [(c.subject_id, c.path, c.label, c.source) for c in back] == [
        (c.subject_id, c.path.resolve(), c.label, c.source) for c in cases
    ]
    assert [c.label_index for c in back] == [0, 1, 2]


def test_group_column_round_trips_and_is_optional(tmp_path):
    cases = _cases(tmp_path)
    grouped = [Case(c.subject_id, c.path, c.label, c.source, group="brain-1") for c in cases[:2]]
    path = write_manifest([*grouped, cases[2]], tmp_path / "grouped.csv")
    assert path.read_text().splitlines()[0] == "subject_id,path,label,source,group"
    back = read_manifest(path)
    assert [c.group_id for c in back] == ["brain-1", "brain-1", "s2"]
    plain = write_manifest(cases, tmp_path / "plain.csv")
    assert plain.read_text().splitlines()[0] == "subject_id,path,label,source"
    assert [(c.group, c.group_id) for c in read_manifest(plain)] == [
        ("", "s0"),
        ("", "s1"),
        ("", "s2"),
    ]


def test_moved_folder_still_reads(tmp_path):
    write_manifest(_cases(tmp_path), tmp_path / "manifest.csv")
    moved = tmp_path.parent / (tmp_path.name + "-moved")
    tmp_path.rename(moved)
    assert all(c.path.is_file() for c in read_manifest(moved / "manifest.csv"))


def _write(tmp_path: Path, rows: list[str], header="subject_id,path,label,source") -> Path:
    p = tmp_path / "m.csv"
    p.write_text("\n".join([header, *rows]) + "\n")
    return p


def test_missing_volume_file(tmp_path):
    p = _write(tmp_path, ["a,nope.nii.gz,hgg,x"])
    with pytest.raises(ManifestError, match=r"Missing file for subject 'a'"):
        read_manifest(p)


def test_unknown_label(tmp_path):
    _cases(tmp_path)
    p = _write(tmp_path, ["a,vols/s0.nii.gz,glioblastoma,x"])
    with pytest.raises(ManifestError, match=r"Unknown label 'glioblastoma'.*healthy"):
        read_manifest(p)


def test_duplicate_subject(tmp_path):
    _cases(tmp_path)
    p = _write(tmp_path, ["a,vols/s0.nii.gz,hgg,x", "a,vols/s1.nii.gz,lgg,x"])
    with pytest.raises(ManifestError, match=r"Duplicate subject 'a'"):
        read_manifest(p)


def test_missing_columns(tmp_path):
    p = _write(tmp_path, ["a,vols/s0.nii.gz"], header="subject_id,path")
    with pytest.raises(ManifestError, match=r"lacks columns \['label', 'source'\]"):
        read_manifest(p)


def test_empty_and_absent_manifest(tmp_path):
    with pytest.raises(ManifestError, match="no cases"):
        read_manifest(_write(tmp_path, []))
    with pytest.raises(ManifestError, match="Manifest not found"):
        read_manifest(tmp_path / "absent.csv")


def test_lesion_mask_naming_one_rule(tmp_path) -> None:
    """``<stem>_lesion.nii.gz`` beside ``<stem>.nii.gz``: written, found and recognised by one
    set of helpers."""
    volume = tmp_path / "IXI1+hgg.nii.gz"
    assert lesion_mask_path(volume) == tmp_path / "IXI1+hgg_lesion.nii.gz"
    assert lesion_mask_path(tmp_path / "a.nii") == tmp_path / "a_lesion.nii.gz"
    assert sibling_lesion_mask(volume) is None  # nothing on disk yet
    volume.write_bytes(b"v")
    lesion_mask_path(volume).write_bytes(b"m")
    assert sibling_lesion_mask(volume) == lesion_mask_path(volume)
    assert masked_volume(lesion_mask_path(volume)) == volume
    assert masked_volume(volume) is None  # a volume is no mask
    (tmp_path / "b_lesion.nii").write_bytes(b"m")  # no b.nii beside it: not a companion
    assert masked_volume(tmp_path / "b_lesion.nii") is None
    with pytest.raises(ManifestError, match="not a NIfTI file name"):
        lesion_mask_path(tmp_path / "scan.zip")
