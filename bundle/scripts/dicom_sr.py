"""The TID 1500 Comprehensive SR of the inference findings (``dicom_out.write_dicom_outputs`` writes it).

Content: one measurement group for the nasal bone box (a planar ROI with the fracture probability, the thresholds,
each named by its operating point when ``thresholds`` is given, the detector's confidence as "Certainty of Feature"
and the coded evaluations "Nasal bone: Detected" and "Fracture of bone: Present | Suspected | Absent | Presence
Undetermined"; no probability for a "not assessable" finding), one for the outline of the largest suspected fracture
region (only for a ``fracture`` or ``suspicious`` finding, or, without a ``finding``, for any non-empty mask), or,
without a box, a plain measurement group ("Nasal bone: Not detected"); and the report's Qualitative Evaluations
(TID 1500): the finding once more and a "Comment" text of it (with ``finding_reason``).
Evidence: the overlay's Secondary Capture, and the source image when ``source`` is given (``dicom_out`` gives it only
when the outputs join the source's study, with the patient identity flag; the de-identified outputs reference the SC
alone, which is on the same pixel grid).

The findings dict: ``nasal_bone_box``, ``detector_confidence``, ``fracture_probability``, ``fracture``, ``threshold``
and ``region_mask`` as before, and when present ``finding`` ("fracture" | "suspicious" | "no fracture" |
"not assessable"), ``finding_reason`` and ``thresholds`` (``{"suspicious": p, "fracture": p}``). Without ``finding``
the coded evaluation follows ``fracture`` (the main threshold), as it did before the two operating points.

IHE AI Results (AIR) conventions, as MONAI Deploy's writers follow them: Verification Flag ``UNVERIFIED``, the algorithm
(manufacturer, name, version) in the Contributing Equipment Sequence with the purpose (Newcode1, 99IHE, "Processing
Algorithm"), and a series description that says "NOT FOR DIAGNOSTIC USE". AIR also asks for a Device UID there; it is
left out because the DICOM edition of Debian's dicom3tools does not know that attribute in this sequence (the same UID,
derived from name and version, is the SR's Device Observer UID).

Coordinates: ``nasal_bone_box`` is ``[x1, y1, x2, y2]`` in pixels with (0, 0) the top-left corner of the top-left pixel,
which is the DICOM SCOORD convention, so it is written as is (clipped to the image). ``region_mask`` outlines come from
``skimage.measure.find_contours`` (pixel centres at integer positions) and are shifted by +0.5 to that convention.

Codes: only standard codes (DCM, SCT, UCUM, UMLS) in the content, so DICOM validators recognise every coding scheme;
the fracture is post-coordinated, "Fracture of bone" (SCT 125605004) with the finding site "Nasal bone" (SCT 74386004).
The one private scheme, IHE's ``99IHE`` of the Contributing Equipment item, is declared in the Coding Scheme
Identification Sequence.
"""

from __future__ import annotations

import contextlib
import functools
import json
import logging
import math
from collections.abc import Iterator, Mapping
from typing import Any

import highdicom as hd
import numpy as np
from highdicom.coding_schemes import CodingSchemeIdentificationItem
from pydicom.dataset import Dataset
from pydicom.sr.codedict import codes
from pydicom.uid import generate_uid
from scipy import ndimage
from skimage import measure

PROJECT_NAME = "nasal-fracture-bundle"
MANUFACTURER = "nasal-fracture-bundle (research software)"
SR_SERIES_DESCRIPTION = "Nasal fracture AI findings - NOT FOR DIAGNOSTIC USE (research)"  # LO: 64 at most
SR_SERIES_NUMBER = 9902

FRACTURE_OF_BONE = hd.sr.CodedConcept("125605004", "SCT", "Fracture of bone")  # with finding site Nasal bone
NASAL_BONE = codes.SCT.NasalBone  # 74386004 SCT "Nasal bone"
DETECTED = hd.sr.CodedConcept("260373001", "SCT", "Detected")
NOT_DETECTED = hd.sr.CodedConcept("260415000", "SCT", "Not detected")
FRACTURE_PROBABILITY = codes.DCM.Probability  # 122157 DCM "Probability"
THRESHOLD = codes.DCM.ThresholdValue  # 122411 DCM "Threshold Value"
DETECTOR_CONFIDENCE = codes.DCM.CertaintyOfFeature  # 111011 DCM "Certainty of Feature"
QUALITATIVE_EVALUATIONS = hd.sr.CodedConcept("C0034375", "UMLS", "Qualitative Evaluations")  # TID 1500 row 12
COMMENT = codes.DCM.Comment  # 121106 DCM "Comment"
UNITLESS = codes.UCUM.NoUnits  # "1" UCUM "no units"
# the value of "Fracture of bone" for each finding of the findings dict
FINDING_CODES = {
    "fracture": codes.SCT.Present,  # 52101004
    "suspicious": codes.SCT.Suspected,  # 415684004
    "no fracture": codes.SCT.Absent,  # 272519000
    "not assessable": codes.DCM.PresenceUndetermined,  # 121059
}
REGION_FINDINGS = ("fracture", "suspicious")  # the findings for which the suspected region is reported
OPERATING_POINTS = ("suspicious", "fracture")  # the keys of ``thresholds``

# IHE AIR Rev 1.1, 6.5.3.1: the purpose of the Contributing Equipment item that describes the algorithm
IHE_SCHEME = "99IHE"
PROCESSING_ALGORITHM = hd.sr.CodedConcept("Newcode1", IHE_SCHEME, "Processing Algorithm")
CODING_SCHEMES = (
    CodingSchemeIdentificationItem(
        designator=IHE_SCHEME,
        name="IHE Radiology Technical Framework codes (AI Results profile)",
        responsible_organization="IHE International",
    ),
)


@functools.cache
def bundle_version() -> str:
    """The bundle's version (``configs/metadata.json``), or "unknown"."""
    from . import BUNDLE_ROOT

    try:
        return str(json.loads((BUNDLE_ROOT / "configs" / "metadata.json").read_text())["version"])
    except (OSError, ValueError, KeyError):
        return "unknown"


def algorithm_uid(model_version: str) -> str:
    """A UID for this software at ``model_version`` (the SR's Device Observer UID)."""
    return generate_uid(entropy_srcs=[PROJECT_NAME, str(model_version)])


def add_algorithm_equipment(ds: Dataset, model_version: str) -> None:
    """Describe the algorithm in ``ds``'s Contributing Equipment Sequence (IHE AIR) and declare the ``99IHE`` scheme."""
    item = Dataset()
    item.PurposeOfReferenceCodeSequence = [PROCESSING_ALGORITHM]
    item.Manufacturer = MANUFACTURER
    item.ManufacturerModelName = PROJECT_NAME
    item.SoftwareVersions = str(model_version)
    item.ContributionDescription = "AI algorithm that produced these results (research use only)"
    ds.ContributingEquipmentSequence = [*ds.get("ContributingEquipmentSequence", []), item]
    declared = {i.CodingSchemeDesignator for i in ds.get("CodingSchemeIdentificationSequence", [])}
    new = [i for i in CODING_SCHEMES if i.CodingSchemeDesignator not in declared]
    if new:
        ds.CodingSchemeIdentificationSequence = [*ds.get("CodingSchemeIdentificationSequence", []), *new]


def build_structured_report(
    result: Mapping[str, Any], sc: hd.sc.SCImage, source: Dataset | None, model_version: str
) -> hd.sr.ComprehensiveSR:
    """Comprehensive SR with a TID 1500 Measurement Report of the findings; evidence is the SC (and ``source``).

    Patient and study come from the SC (highdicom copies them from the first evidence), so the SR is in the SC's
    study with the SC's patient module."""
    finding = _finding(result)
    source_ref = _source_reference(source) if source is not None else None
    algorithm = hd.sr.AlgorithmIdentification(name=PROJECT_NAME, version=str(model_version))
    region_source = hd.sr.SourceImageForRegion(sc.SOPClassUID, sc.SOPInstanceUID)
    measured_on = source_ref if source_ref is not None else sc
    measurements = _measurements(result, finding, measured_on, model_version)
    fracture_value = _fracture_value(result, finding)
    box = result.get("nasal_bone_box")

    groups: list[Any] = []
    if box is not None:
        groups.append(
            hd.sr.PlanarROIMeasurementsAndQualitativeEvaluations(
                tracking_identifier=hd.sr.TrackingIdentifier(uid=hd.UID(), identifier="Nasal bone box"),
                referenced_region=hd.sr.ImageRegion(
                    hd.sr.GraphicTypeValues.POLYLINE, box_polyline(box, sc.Rows, sc.Columns), region_source
                ),
                finding_type=NASAL_BONE,
                algorithm_id=algorithm,
                measurements=measurements,
                qualitative_evaluations=[
                    hd.sr.QualitativeEvaluation(NASAL_BONE, DETECTED),
                    hd.sr.QualitativeEvaluation(FRACTURE_OF_BONE, fracture_value),
                ],
            )
        )
        outline = largest_region_outline(result.get("region_mask")) if _reports_region(finding) else None
        if outline is not None:
            groups.append(
                hd.sr.PlanarROIMeasurementsAndQualitativeEvaluations(
                    tracking_identifier=hd.sr.TrackingIdentifier(uid=hd.UID(), identifier="Suspected fracture region"),
                    referenced_region=hd.sr.ImageRegion(hd.sr.GraphicTypeValues.POLYLINE, outline, region_source),
                    finding_type=FRACTURE_OF_BONE,
                    finding_sites=[hd.sr.FindingSite(NASAL_BONE)],
                    algorithm_id=algorithm,
                )
            )
    else:
        group_sources = [hd.sr.SourceImageForMeasurementGroup(sc.SOPClassUID, sc.SOPInstanceUID)]
        if source_ref is not None:
            group_sources.append(
                hd.sr.SourceImageForMeasurementGroup(source_ref.SOPClassUID, source_ref.SOPInstanceUID)
            )
        groups.append(
            hd.sr.MeasurementsAndQualitativeEvaluations(
                tracking_identifier=hd.sr.TrackingIdentifier(uid=hd.UID(), identifier="Nasal bone not found"),
                finding_type=NASAL_BONE,
                algorithm_id=algorithm,
                measurements=measurements,
                qualitative_evaluations=[
                    hd.sr.QualitativeEvaluation(NASAL_BONE, NOT_DETECTED),
                    hd.sr.QualitativeEvaluation(FRACTURE_OF_BONE, fracture_value),
                ],
                source_images=group_sources,
            )
        )

    evidence: list[Dataset] = [sc] + ([source_ref] if source_ref is not None else [])
    report = hd.sr.MeasurementReport(
        observation_context=_observation_context(model_version),
        procedure_reported=codes.SCT.PlainRadiography,
        imaging_measurements=groups,
        referenced_images=_library_images(evidence),
    )
    report[0].ContentSequence.append(_qualitative_evaluations(result, finding, fracture_value))
    with quiet("highdicom.base"):  # it logs the evidence's SOP Instance UID at INFO, for every report
        sr = hd.sr.ComprehensiveSR(
            evidence=evidence,
            content=report[0],
            **new_series(SR_SERIES_NUMBER, SR_SERIES_DESCRIPTION, model_version),
            is_verified=False,  # IHE AIR: VerificationFlag UNVERIFIED (nobody attested these results)
        )
    add_algorithm_equipment(sr, model_version)
    return sr


def new_series(series_number: int, series_description: str, model_version: str) -> dict[str, Any]:
    """What highdicom's SC and SR constructors take for one new series of this software's output: new series and
    instance UIDs, instance 1, the manufacturer and model version, and RESEARCH content qualification."""
    return dict(
        series_instance_uid=hd.UID(),
        series_number=series_number,
        sop_instance_uid=hd.UID(),
        instance_number=1,
        manufacturer=MANUFACTURER,
        manufacturer_model_name=PROJECT_NAME,
        software_versions=str(model_version),
        series_description=series_description,
        content_qualification=hd.ContentQualificationValues.RESEARCH,
    )


@contextlib.contextmanager
def quiet(name: str) -> Iterator[None]:
    """Logger ``name`` at WARNING or above for the duration (for library logs that would name the source)."""
    log = logging.getLogger(name)
    level = log.level
    log.setLevel(max(level, logging.WARNING))
    try:
        yield
    finally:
        log.setLevel(level)


def finding_text(result: Mapping[str, Any]) -> str:
    """One paragraph of the findings (the SR's Comment): the finding, its reason, the probability, the thresholds."""
    finding = _finding(result)
    if finding is None:  # a caller without the operating points: the main threshold's call
        if _number(result.get("fracture_probability")) is None or result.get("fracture") is None:
            words = ["Nasal bone fracture: undetermined (no nasal bone found)."]
        else:
            words = [f"Nasal bone fracture: {'present' if result['fracture'] else 'absent'} at the main threshold."]
    else:
        reason = str(result.get("finding_reason") or "").strip().rstrip(".")
        words = [f"Nasal bone fracture AI finding: {finding}" + (f": {reason}." if reason else ".")]
    numbers = []
    probability = _number(result.get("fracture_probability"))
    if probability is not None and finding != "not assessable":
        numbers.append(f"fracture probability {probability:.3f}")
    thresholds = result.get("thresholds") if isinstance(result.get("thresholds"), Mapping) else {}
    for point in OPERATING_POINTS:
        value = _number(thresholds.get(point))
        if value is not None:
            numbers.append(f"{point} operating point {value:.3f}")
    main = _number(result.get("threshold"))
    if main is not None:
        numbers.append(f"main threshold {main:.3f}")
    if numbers:
        text = "; ".join(numbers)
        words.append(text[0].upper() + text[1:] + ".")
    words.append("Research use only, not for diagnostic use; unverified.")
    return " ".join(words)


def box_polyline(box: Any, rows: int, cols: int) -> np.ndarray:
    """Closed rectangle (5 points, (column, row)) of an ``[x1, y1, x2, y2]`` box clipped to the image."""
    x1, y1, x2, y2 = (float(v) for v in box)
    x1, x2 = sorted((min(max(x1, 0.0), cols), min(max(x2, 0.0), cols)))
    y1, y2 = sorted((min(max(y1, 0.0), rows), min(max(y2, 0.0), rows)))
    return np.array([[x1, y1], [x2, y1], [x2, y2], [x1, y2], [x1, y1]], dtype=np.float32)


def largest_region_outline(mask: np.ndarray | None) -> np.ndarray | None:
    """Closed outline ((column, row), DICOM pixel convention) of the largest connected region, or None if empty."""
    if mask is None:
        return None
    mask = np.asarray(mask).astype(bool)
    labels = measure.label(mask, connectivity=2)
    if labels.max() == 0:
        return None
    sizes = np.bincount(labels.ravel())
    sizes[0] = 0
    region = ndimage.binary_fill_holes(labels == int(sizes.argmax()))
    contours = measure.find_contours(np.pad(region, 1).astype(np.float32), 0.5)  # padded: contours are closed
    contour = measure.approximate_polygon(max(contours, key=len), tolerance=0.5)
    rows = contour[:, 0] - 1.0 + 0.5
    cols = contour[:, 1] - 1.0 + 0.5
    return np.stack([cols, rows], axis=1).astype(np.float32)


def _finding(result: Mapping[str, Any]) -> str | None:
    """``result['finding']`` if given (one of ``FINDING_CODES``), else None; ValueError for any other value."""
    finding = result.get("finding")
    if finding is None:
        return None
    if finding not in FINDING_CODES:
        raise ValueError(f"unknown finding {finding!r}; expected one of {', '.join(FINDING_CODES)}")
    return str(finding)


def _reports_region(finding: str | None) -> bool:
    """Whether the suspected region goes into the SR: for a fracture or suspicious finding (any, without a finding)."""
    return finding is None or finding in REGION_FINDINGS


def _source_reference(source: Dataset) -> Dataset:
    """UIDs and matrix size of the source, for SR references (no patient data)."""
    ref = Dataset()
    for keyword in ("SOPClassUID", "SOPInstanceUID", "StudyInstanceUID", "SeriesInstanceUID", "Rows", "Columns"):
        if keyword in source:
            ref[keyword] = source[keyword]
    return ref


def _number(value: Any) -> float | None:
    """``value`` as a finite float, or None."""
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None


def _measurements(
    result: Mapping[str, Any], finding: str | None, measured_on: Dataset, model_version: str
) -> list[hd.sr.Measurement]:
    """Probability (not for a "not assessable" finding), the thresholds and the detector's certainty, each only when it
    is a finite number. With ``thresholds``, each Threshold Value names its operating point in an Algorithm
    Parameters item (main, suspicious, fracture)."""
    refs = [hd.sr.SourceImageForMeasurement(measured_on.SOPClassUID, measured_on.SOPInstanceUID)]
    thresholds = result.get("thresholds") if isinstance(result.get("thresholds"), Mapping) else None
    named = thresholds is not None and any(_number(thresholds.get(p)) is not None for p in OPERATING_POINTS)

    def threshold(value: Any, point: str) -> hd.sr.Measurement | None:
        number = _number(value)
        if number is None:
            return None
        algorithm = None
        if named:
            algorithm = hd.sr.AlgorithmIdentification(
                name=PROJECT_NAME, version=str(model_version), parameters=[f"operating point: {point}"]
            )
        return hd.sr.Measurement(
            name=THRESHOLD, value=number, unit=UNITLESS, algorithm_id=algorithm, referenced_images=refs
        )

    out: list[hd.sr.Measurement | None] = []
    probability = _number(result.get("fracture_probability"))
    if probability is not None and finding != "not assessable":  # no probability on an image nobody should trust
        out.append(hd.sr.Measurement(FRACTURE_PROBABILITY, probability, UNITLESS, referenced_images=refs))
    out.append(threshold(result.get("threshold"), "main"))
    for point in OPERATING_POINTS if named else ():
        out.append(threshold(thresholds.get(point), point))
    confidence = _number(result.get("detector_confidence"))
    if confidence is not None:
        out.append(hd.sr.Measurement(DETECTOR_CONFIDENCE, confidence, UNITLESS, referenced_images=refs))
    return [m for m in out if m is not None]


def _fracture_value(result: Mapping[str, Any], finding: str | None) -> Any:
    """The value of "Fracture of bone": from ``finding`` when given; else SCT Present/Absent from ``fracture`` if a
    probability was computed, DCM Presence Undetermined if not."""
    if finding is not None:
        return FINDING_CODES[finding]
    if _number(result.get("fracture_probability")) is None or result.get("fracture") is None:
        return codes.DCM.PresenceUndetermined
    return codes.SCT.Present if bool(result["fracture"]) else codes.SCT.Absent


def _qualitative_evaluations(result: Mapping[str, Any], finding: str | None, value: Any) -> hd.sr.ContainerContentItem:
    """TID 1500's Qualitative Evaluations: "Fracture of bone" and the Comment of ``finding_text``."""
    container = hd.sr.ContainerContentItem(
        name=QUALITATIVE_EVALUATIONS, relationship_type=hd.sr.RelationshipTypeValues.CONTAINS
    )
    container.ContentSequence = hd.sr.ContentSequence(
        [
            hd.sr.CodeContentItem(FRACTURE_OF_BONE, value, relationship_type=hd.sr.RelationshipTypeValues.CONTAINS),
            hd.sr.TextContentItem(
                COMMENT, finding_text(result), relationship_type=hd.sr.RelationshipTypeValues.CONTAINS
            ),
        ]
    )
    return container


def _observation_context(model_version: str) -> hd.sr.ObservationContext:
    """Device observer: this software, with a UID derived from its name and version."""
    device = hd.sr.DeviceObserverIdentifyingAttributes(
        uid=algorithm_uid(model_version),
        name=PROJECT_NAME,
        manufacturer_name=MANUFACTURER,
        model_name=f"{PROJECT_NAME} {model_version}",
    )
    return hd.sr.ObservationContext(
        observer_device_context=hd.sr.ObserverContext(
            observer_type=codes.DCM.Device, observer_identifying_attributes=device
        )
    )


def _library_images(images: list[Dataset]) -> list[Dataset]:
    """The images highdicom can describe in the TID 1600 image library (needs an image SOP class, rows, columns)."""
    usable = []
    for image in images:
        try:
            hd.sr.ImageLibraryEntryDescriptors(image)
        except (AttributeError, KeyError, ValueError):
            continue
        usable.append(image)
    return usable
