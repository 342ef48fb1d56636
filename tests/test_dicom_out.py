"""DICOM outputs: SC of the overlay and TID 1500 SR, with and without a DICOM source, patient identity rules
(with the flag: the source's study and patient module; without: a de-identified new study, nothing of the source);
the SR's findings (finding, operating points, region, "not assessable") and the IHE AI Results conventions.
``test_dicom_validators.py`` runs dicom3tools' and dcmtk's validators over the same outputs."""

from __future__ import annotations

import copy
import logging
from pathlib import Path

import highdicom as hd
import numpy as np
import pydicom
import pytest
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sr.codedict import codes
from pydicom.uid import DigitalXRayImageStorageForPresentation, ExplicitVRLittleEndian, generate_uid

from scripts.dicom_out import DEIDENTIFICATION_METHOD, write_dicom_outputs
from scripts.dicom_sr import (
    DETECTED,
    DETECTOR_CONFIDENCE,
    FRACTURE_OF_BONE,
    NASAL_BONE,
    NOT_DETECTED,
    bundle_version,
    largest_region_outline,
)

ROWS, COLS = 64, 48
BOX = [3.5, 4.0, 30.0, 50.0]
# the source's Patient and Study module attributes that are copied with the flag and emptied without it
IDENTITY = ("PatientName", "PatientID", "PatientBirthDate", "PatientSex", "ReferringPhysicianName")
STUDY = ("AccessionNumber", "StudyID", "StudyDate", "StudyTime")


def _source() -> Dataset:
    """A DX MONOCHROME2 16-bit image with patient identity, as a file-format dataset."""
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SOPClassUID = DigitalXRayImageStorageForPresentation
    ds.SOPInstanceUID = generate_uid()
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.StudyInstanceUID = generate_uid()
    ds.SeriesInstanceUID = generate_uid()
    ds.PatientName = "DOE^JANE"
    ds.PatientID = "12345"
    ds.PatientBirthDate = "19800101"
    ds.PatientSex = "F"
    ds.StudyDate = "20240102"
    ds.StudyTime = "101010"
    ds.AccessionNumber = "ACC1"
    ds.StudyID = "S1"
    ds.Modality = "DX"
    ds.Manufacturer = "ACME"
    ds.InstitutionName = "General Hospital"
    ds.ReferringPhysicianName = "WHO^DOCTOR"
    ds.StudyDescription = "NASAL BONES"
    other = Dataset()
    other.PatientID = "OTHER-778"
    other.TypeOfPatientID = "TEXT"
    ds.OtherPatientIDsSequence = [other]
    ds.PatientComments = "allergic to nothing"
    ds.Rows, ds.Columns = ROWS, COLS
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 0
    ds.PixelData = np.random.default_rng(0).integers(0, 4096, (ROWS, COLS), dtype=np.uint16).tobytes()
    return ds


def _overlay() -> np.ndarray:
    return np.random.default_rng(1).integers(0, 256, (ROWS, COLS, 3), dtype=np.uint8)


def _result(box: list[float] | None = BOX) -> dict:
    mask = np.zeros((ROWS, COLS), bool)
    mask[10:20, 5:15] = True  # largest region
    mask[40:42, 40:42] = True  # smaller region, ignored
    return {
        "nasal_bone_box": box,
        "detector_confidence": 0.91,
        "fracture_probability": 0.73,
        "fracture": True,
        "threshold": 0.42,
        "region_mask": mask,
    }


def _read(paths: dict[str, Path]) -> tuple[hd.Image, hd.sr.ComprehensiveSR]:
    """Read back with highdicom (SCImage has no from_dataset in 0.28; hd.imread is the generic image reader)."""
    assert paths["secondary_capture"].is_file() and paths["structured_report"].is_file()
    sc = hd.imread(paths["secondary_capture"])
    assert sc.SOPClassUID == "1.2.840.10008.5.1.4.1.1.7"  # Secondary Capture Image Storage
    sr = hd.sr.srread(paths["structured_report"])
    assert isinstance(sr, hd.sr.ComprehensiveSR)
    return sc, sr


def _values(group) -> dict[str, float]:
    return {m.name.meaning: m.value for m in group.get_measurements()}


def _evaluations(group) -> dict:
    return {q.name.meaning: q.value for q in group.get_qualitative_evaluations()}


def _qualitative_evaluations(sr) -> dict[str, Dataset]:
    """The report's TID 1500 Qualitative Evaluations container: concept name meaning -> content item."""
    container = [i for i in sr.ContentSequence if i.ConceptNameCodeSequence[0].CodeValue == "C0034375"]
    assert len(container) == 1
    return {item.ConceptNameCodeSequence[0].CodeMeaning: item for item in container[0].ContentSequence}


@pytest.mark.parametrize("keep", [False, True])
def test_with_dicom_source(tmp_path: Path, keep: bool) -> None:
    source = _source()
    src_file = tmp_path / "input.dcm"
    source.save_as(src_file, enforce_file_format=True)
    source = pydicom.dcmread(src_file, stop_before_pixels=True)
    before_ds, before_bytes = copy.deepcopy(source), src_file.read_bytes()
    overlay = _overlay()

    paths = write_dicom_outputs(
        overlay,
        _result(),
        tmp_path / "out",
        "case001",
        source=source,
        keep_patient_identity=keep,
        model_version="9.9.9",
    )
    assert paths["secondary_capture"].name == "case001_sc.dcm"
    assert paths["structured_report"].name == "case001_sr.dcm"
    sc, sr = _read(paths)

    assert source == before_ds and src_file.read_bytes() == before_bytes
    np.testing.assert_array_equal(sc.pixel_array, overlay)
    assert sc.PhotometricInterpretation == "RGB" and sc.BitsAllocated == 8 and sc.BurnedInAnnotation == "YES"
    assert sc.SoftwareVersions == "9.9.9" and "NOT FOR DIAGNOSTIC USE" in sc.SeriesDescription
    assert sc.StudyInstanceUID == sr.StudyInstanceUID and sc.PatientID == sr.PatientID
    assert sc.SeriesInstanceUID != sr.SeriesInstanceUID
    for ds in (sc, sr):
        assert ds.SeriesInstanceUID != source.SeriesInstanceUID
        assert "InstitutionName" not in ds  # equipment of the source: never copied
        if keep:  # the source's study, its patient and study modules intact
            assert ds.StudyInstanceUID == source.StudyInstanceUID
            for keyword in IDENTITY + STUDY + ("StudyDescription", "OtherPatientIDsSequence", "PatientComments"):
                assert ds[keyword].value == source[keyword].value, keyword
            assert "PatientIdentityRemoved" not in ds
        else:  # a new, de-identified study
            assert ds.StudyInstanceUID != source.StudyInstanceUID
            assert ds.PatientID == "ANON"
            assert all(not ds.get(k) for k in IDENTITY + STUDY if k != "PatientID")
            assert "OtherPatientIDsSequence" not in ds and "StudyDescription" not in ds
            assert ds.PatientIdentityRemoved == "YES" and list(ds.DeidentificationMethod) == list(
                DEIDENTIFICATION_METHOD
            )
            assert ds.DeidentificationMethodCodeSequence[0].CodeValue == "113100"
            assert ds.LongitudinalTemporalInformationModified == "REMOVED"
    # what dcentvfy checks: one PatientID per StudyInstanceUID across the source and the outputs
    ids: dict[str, set] = {}
    for ds in (source, sc, sr):
        ids.setdefault(ds.StudyInstanceUID, set()).add(ds.PatientID)
    assert all(len(v) == 1 for v in ids.values()) and len(ids) == (1 if keep else 2)
    if not keep:  # identity strings and source UIDs appear nowhere in either file (e.g. through sequences)
        source_uids = {source.StudyInstanceUID, source.SeriesInstanceUID, source.SOPInstanceUID}
        for path in paths.values():
            raw = path.read_bytes()
            for text in (b"DOE^JANE", b"General Hospital", b"WHO^DOCTOR", b"OTHER-778", b"NASAL BONES", b"ACC1"):
                assert text not in raw
            assert b"19800101" not in raw and b"20240102" not in raw
            elements = list(pydicom.dcmread(path).iterall())
            values = {str(elem.value) for elem in elements if elem.VR in ("PN", "LO", "SH")}
            assert "12345" not in values  # (a byte search could hit a random UID)
            assert not source_uids & {str(elem.value) for elem in elements if elem.VR == "UI"}

    evidence = {
        item.ReferencedSOPInstanceUID
        for series in sr.CurrentRequestedProcedureEvidenceSequence[0].ReferencedSeriesSequence
        for item in series.ReferencedSOPSequence
    }
    assert evidence == ({sc.SOPInstanceUID, source.SOPInstanceUID} if keep else {sc.SOPInstanceUID})
    assert "PertinentOtherEvidenceSequence" not in sr
    assert ("SourceImageSequence" in sc) == keep

    groups = sr.content.get_planar_roi_measurement_groups()
    assert len(groups) == 2
    box_group = sr.content.get_planar_roi_measurement_groups(finding_type=codes.SCT.NasalBone)[0]
    assert box_group.roi.graphic_type == hd.sr.GraphicTypeValues.POLYLINE
    np.testing.assert_allclose(box_group.roi.value, [[3.5, 4], [30, 4], [30, 50], [3.5, 50], [3.5, 4]])
    assert box_group.roi.ContentSequence[0].referenced_sop_instance_uid == sc.SOPInstanceUID
    values = _values(box_group)
    assert values["Probability"] == pytest.approx(0.73)
    assert values["Threshold Value"] == pytest.approx(0.42)
    assert values[DETECTOR_CONFIDENCE.meaning] == pytest.approx(0.91)
    evaluations = _evaluations(box_group)
    assert evaluations[FRACTURE_OF_BONE.meaning] == codes.SCT.Present
    assert evaluations[NASAL_BONE.meaning] == DETECTED
    for ds in (sc, sr):  # the only private scheme, IHE's, is declared
        assert [i.CodingSchemeDesignator for i in ds.CodingSchemeIdentificationSequence] == ["99IHE"]

    region_group = sr.content.get_planar_roi_measurement_groups(finding_type=FRACTURE_OF_BONE)[0]
    outline = region_group.roi.value
    np.testing.assert_allclose(outline[0], outline[-1])  # closed
    assert outline[:, 0].min() == pytest.approx(5, abs=0.5) and outline[:, 0].max() == pytest.approx(15, abs=0.5)
    assert outline[:, 1].min() == pytest.approx(10, abs=0.5) and outline[:, 1].max() == pytest.approx(20, abs=0.5)


def test_without_source_new_study(tmp_path: Path) -> None:
    overlay = _overlay()
    result = _result()
    result["fracture"], result["fracture_probability"] = False, 0.1
    result["region_mask"] = np.zeros((ROWS, COLS), bool)
    paths = write_dicom_outputs(overlay, result, tmp_path, "png_case")
    sc, sr = _read(paths)
    np.testing.assert_array_equal(sc.pixel_array, overlay)
    assert sc.StudyInstanceUID == sr.StudyInstanceUID
    assert sc.PatientID == sr.PatientID == "ANON"
    other = write_dicom_outputs(overlay, result, tmp_path / "again", "png_case")
    assert pydicom.dcmread(other["secondary_capture"]).StudyInstanceUID != sc.StudyInstanceUID  # a new study each time

    groups = sr.content.get_planar_roi_measurement_groups()
    assert len(groups) == 1  # empty region mask: no fracture-region ROI
    np.testing.assert_allclose(groups[0].roi.value[[0, 2]], [[3.5, 4], [30, 50]])
    assert _values(groups[0])["Probability"] == pytest.approx(0.1)
    assert _evaluations(groups[0])[FRACTURE_OF_BONE.meaning] == codes.SCT.Absent


def test_no_box_still_writes_report(tmp_path: Path) -> None:
    source = _source()
    before = copy.deepcopy(source)
    result = _result(box=None)
    result["fracture_probability"], result["fracture"] = None, False
    paths = write_dicom_outputs(_overlay(), result, tmp_path, "nobox", source=source, keep_patient_identity=True)
    sc, sr = _read(paths)
    assert source == before
    assert sr.StudyInstanceUID == source.StudyInstanceUID
    assert sr.content.get_planar_roi_measurement_groups() == []
    groups = sr.content.get_image_measurement_groups()
    assert len(groups) == 1
    evaluations = _evaluations(groups[0])
    assert evaluations[NASAL_BONE.meaning] == NOT_DETECTED
    assert evaluations[FRACTURE_OF_BONE.meaning] == codes.DCM.PresenceUndetermined
    assert "Probability" not in _values(groups[0])
    sources = {  # the group's source images and the image library: the SC and the source
        elem.value
        for item in sr.ContentSequence
        for elem in item.iterall()
        if elem.keyword == "ReferencedSOPInstanceUID"
    }
    assert sources == {sc.SOPInstanceUID, source.SOPInstanceUID}


def test_keep_identity_with_a_sop_class_highdicom_does_not_know(tmp_path: Path) -> None:
    source = _source()
    source.SOPClassUID = "1.2.826.0.1.3680043.8.498.1"  # a private SOP class: from_ref_dataset's copy only
    paths = write_dicom_outputs(_overlay(), _result(), tmp_path, "private", source=source, keep_patient_identity=True)
    sc, sr = _read(paths)
    for ds in (sc, sr):
        assert ds.StudyInstanceUID == source.StudyInstanceUID
        assert all(ds[k].value == source[k].value for k in IDENTITY + STUDY)


def test_rejects_bad_overlay_and_source_path(tmp_path: Path) -> None:
    with pytest.raises(ValueError):
        write_dicom_outputs(np.zeros((8, 8), np.uint8), _result(), tmp_path, "x")
    with pytest.raises(TypeError):
        write_dicom_outputs(np.zeros((8, 8, 3), np.float32), _result(), tmp_path, "x")
    src_file = tmp_path / "x_sc.dcm"
    _source().save_as(src_file, enforce_file_format=True)
    before = src_file.read_bytes()
    with pytest.raises(ValueError):
        write_dicom_outputs(_overlay(), _result(), tmp_path, "x", source=pydicom.dcmread(src_file))
    assert src_file.read_bytes() == before


def test_largest_region_outline_touching_border() -> None:
    mask = np.zeros((10, 10), bool)
    mask[0:4, 0:3] = True
    outline = largest_region_outline(mask)
    np.testing.assert_allclose(outline[0], outline[-1])
    assert outline.min() >= 0 and outline[:, 0].max() <= 3 and outline[:, 1].max() <= 4
    assert largest_region_outline(np.zeros((4, 4), bool)) is None


def _findings(finding: str, box: list[float] | None = BOX, probability: float | None = 0.5) -> dict:
    """The findings dict with the keys of the two operating points (the region mask is not empty)."""
    result = _result(box)
    result.update(
        fracture_probability=probability,
        fracture=None if probability is None else probability >= 0.42,
        finding=finding,
        thresholds={"suspicious": 0.3, "fracture": 0.7},
    )
    if finding == "not assessable":
        result["finding_reason"] = "no nasal bone found"
    return result


def _thresholds(group) -> dict[str, float]:
    """Each Threshold Value of the group by the operating point its Algorithm Parameters item names."""
    out = {}
    for item in group[0].ContentSequence:
        if item.ValueType == "NUM" and item.ConceptNameCodeSequence[0].CodeValue == "122411":
            names = [i.TextValue for i in item.ContentSequence if i.ConceptNameCodeSequence[0].CodeValue == "111002"]
            assert len(names) == 1
            out[names[0]] = float(item.MeasuredValueSequence[0].NumericValue)
    return out


@pytest.mark.parametrize(
    ("finding", "value", "region"),
    [
        ("fracture", codes.SCT.Present, True),
        ("suspicious", codes.SCT.Suspected, True),
        ("no fracture", codes.SCT.Absent, False),  # a region mask that is not empty is still left out
        ("not assessable", codes.DCM.PresenceUndetermined, False),
    ],
)
def test_finding_operating_points_and_region(tmp_path: Path, finding: str, value, region: bool) -> None:
    _, sr = _read(write_dicom_outputs(_overlay(), _findings(finding), tmp_path, "f"))
    box_group = sr.content.get_planar_roi_measurement_groups(finding_type=NASAL_BONE)[0]
    assert _evaluations(box_group)[FRACTURE_OF_BONE.meaning] == value
    assert len(sr.content.get_planar_roi_measurement_groups(finding_type=FRACTURE_OF_BONE)) == int(region)
    assert _thresholds(box_group) == {
        "operating point: main": pytest.approx(0.42),
        "operating point: suspicious": pytest.approx(0.3),
        "operating point: fracture": pytest.approx(0.7),
    }
    # no probability on an image that is not assessable, even if the caller gave one
    assert ("Probability" in _values(box_group)) == (finding != "not assessable")
    evaluations = _qualitative_evaluations(sr)
    assert evaluations[FRACTURE_OF_BONE.meaning].ConceptCodeSequence[0].CodeValue == value.value
    comment = evaluations["Comment"].TextValue
    assert f"finding: {finding}" in comment and "not for diagnostic use" in comment
    assert "suspicious operating point 0.300; fracture operating point 0.700" in comment.lower()
    assert ("no nasal bone found" in comment) == (finding == "not assessable")


def test_not_assessable_without_box_or_probability(tmp_path: Path) -> None:
    result = _findings("not assessable", box=None, probability=None)
    _, sr = _read(write_dicom_outputs(_overlay(), result, tmp_path, "na", source=_source()))
    assert sr.content.get_planar_roi_measurement_groups() == []
    (group,) = sr.content.get_image_measurement_groups()
    assert _evaluations(group) == {
        NASAL_BONE.meaning: NOT_DETECTED,
        FRACTURE_OF_BONE.meaning: codes.DCM.PresenceUndetermined,
    }
    assert set(_values(group)) == {"Threshold Value", DETECTOR_CONFIDENCE.meaning}
    comment = _qualitative_evaluations(sr)["Comment"].TextValue
    assert comment.startswith("Nasal bone fracture AI finding: not assessable: no nasal bone found.")
    assert "fracture probability" not in comment.lower()


def test_unknown_finding_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="unknown finding"):
        write_dicom_outputs(_overlay(), _findings("maybe"), tmp_path, "x")


def test_ihe_ai_results_conventions(tmp_path: Path) -> None:
    source = _source()
    source.BodyPartExamined = "SKULL"
    for keep in (False, True):
        sc, sr = _read(write_dicom_outputs(_overlay(), _result(), tmp_path / str(keep), "x", source, keep))
        assert sr.VerificationFlag == "UNVERIFIED"
        for ds in (sc, sr):
            assert "NOT FOR DIAGNOSTIC USE" in ds.SeriesDescription and ds.ContentQualification == "RESEARCH"
            (algorithm,) = [
                item
                for item in ds.ContributingEquipmentSequence
                if item.PurposeOfReferenceCodeSequence[0].CodeValue == "Newcode1"
            ]
            assert algorithm.PurposeOfReferenceCodeSequence[0].CodingSchemeDesignator == "99IHE"
            assert algorithm.PurposeOfReferenceCodeSequence[0].CodeMeaning == "Processing Algorithm"
            assert algorithm.ManufacturerModelName == "nasal-fracture-bundle"
            assert algorithm.SoftwareVersions == bundle_version() != "unknown"  # the bundle's version by default
        assert sc.BodyPartExamined == "SKULL" and "Laterality" not in sc  # the source's body part
    sc, _ = _read(write_dicom_outputs(_overlay(), _result(), tmp_path / "png", "x"))
    assert sc.BodyPartExamined == "HEAD" and "Laterality" not in sc


@pytest.mark.parametrize("keep", [False, True])
def test_writing_logs_no_uid_from_highdicom(tmp_path: Path, keep: bool, caplog) -> None:
    """highdicom logs the source's SOP Instance UID (and the SR's evidence's) at INFO while copying the Patient and
    Study modules; a batch's log must not list the source's UIDs (they link the log to the patient's study)."""
    source = _source()
    with caplog.at_level(logging.DEBUG):
        paths = write_dicom_outputs(
            _overlay(), _result(), tmp_path, "case", source=source, keep_patient_identity=keep, model_version="1"
        )
    _read(paths)
    text = "\n".join(r.getMessage() for r in caplog.records)
    for uid in (source.SOPInstanceUID, source.StudyInstanceUID, source.SeriesInstanceUID):
        assert uid not in text
    assert not [r for r in caplog.records if r.name.startswith("highdicom") and r.levelno < logging.WARNING]
    assert logging.getLogger("highdicom.base").level == logging.NOTSET  # the level is put back
