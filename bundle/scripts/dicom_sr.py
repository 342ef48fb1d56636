"""The TID 1500 Comprehensive SR of the inference findings (``dicom_out.write_dicom_outputs`` writes it).

Findings: the nasal bone box (a planar ROI with the fracture probability, the threshold and the detector confidence,
and the qualitative evaluations "nasal bone region detected" and "nasal bone fracture"), the outline of the largest
suspected fracture region, or, without a box, a plain measurement group. Evidence: the overlay's Secondary Capture,
and the source image when ``source`` is given (``dicom_out`` gives it only when the outputs join the source's study,
with the patient identity flag; the de-identified outputs reference the SC alone, which is on the same pixel grid).

Coordinates: ``nasal_bone_box`` is ``[x1, y1, x2, y2]`` in pixels with (0, 0) the top-left corner of the top-left pixel,
which is the DICOM SCOORD convention, so it is written as is (clipped to the image). ``region_mask`` outlines come from
``skimage.measure.find_contours`` (pixel centres at integer positions) and are shifted by +0.5 to that convention.

Codes: standard codes from ``pydicom.sr.codedict.codes`` where one exists; the others are private codes of the coding
scheme ``99NASAL`` (see ``PRIVATE_CODES``), declared in the SR's Coding Scheme Identification Sequence.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
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
SR_SERIES_DESCRIPTION = "Nasal bone fracture AI findings (research use only)"
SR_SERIES_NUMBER = 9902

PRIVATE_SCHEME = "99NASAL"
NASAL_BONE_FRACTURE = hd.sr.CodedConcept("NBF", PRIVATE_SCHEME, "Nasal bone fracture")
NASAL_BONE_DETECTED = hd.sr.CodedConcept("NBDET", PRIVATE_SCHEME, "Nasal bone region detected")
DETECTOR_CONFIDENCE = hd.sr.CodedConcept("DETCONF", PRIVATE_SCHEME, "Nasal bone detector confidence")
PRIVATE_CODES = (NASAL_BONE_FRACTURE, NASAL_BONE_DETECTED, DETECTOR_CONFIDENCE)

FRACTURE_PROBABILITY = codes.DCM.Probability  # 122157 DCM "Probability"
THRESHOLD = codes.DCM.ThresholdValue  # 122411 DCM "Threshold Value"
UNITLESS = codes.UCUM.NoUnits  # "1" UCUM "no units"


def build_structured_report(
    result: Mapping[str, Any], sc: hd.sc.SCImage, source: Dataset | None, model_version: str
) -> hd.sr.ComprehensiveSR:
    """Comprehensive SR with a TID 1500 Measurement Report of the findings; evidence is the SC (and ``source``).

    Patient and study come from the SC (highdicom copies them from the first evidence), so the SR is in the SC's
    study with the SC's patient module."""
    source_ref = _source_reference(source) if source is not None else None
    algorithm = hd.sr.AlgorithmIdentification(name=PROJECT_NAME, version=str(model_version))
    region_source = hd.sr.SourceImageForRegion(sc.SOPClassUID, sc.SOPInstanceUID)
    measured_on = source_ref if source_ref is not None else sc
    measurements = _measurements(result, measured_on)
    box = result.get("nasal_bone_box")

    groups: list[Any] = []
    if box is not None:
        evaluations = [
            hd.sr.QualitativeEvaluation(NASAL_BONE_DETECTED, codes.SCT.Yes),
            hd.sr.QualitativeEvaluation(NASAL_BONE_FRACTURE, _fracture_value(result)),
        ]
        groups.append(
            hd.sr.PlanarROIMeasurementsAndQualitativeEvaluations(
                tracking_identifier=hd.sr.TrackingIdentifier(uid=hd.UID(), identifier="Nasal bone box"),
                referenced_region=hd.sr.ImageRegion(
                    hd.sr.GraphicTypeValues.POLYLINE, box_polyline(box, sc.Rows, sc.Columns), region_source
                ),
                finding_type=codes.SCT.NasalBone,
                algorithm_id=algorithm,
                measurements=measurements,
                qualitative_evaluations=evaluations,
            )
        )
        outline = largest_region_outline(result.get("region_mask"))
        if outline is not None:
            groups.append(
                hd.sr.PlanarROIMeasurementsAndQualitativeEvaluations(
                    tracking_identifier=hd.sr.TrackingIdentifier(uid=hd.UID(), identifier="Suspected fracture region"),
                    referenced_region=hd.sr.ImageRegion(hd.sr.GraphicTypeValues.POLYLINE, outline, region_source),
                    finding_type=NASAL_BONE_FRACTURE,
                    finding_sites=[hd.sr.FindingSite(codes.SCT.NasalBone)],
                    algorithm_id=algorithm,
                )
            )
    else:
        group_sources = [hd.sr.SourceImageForMeasurementGroup(sc.SOPClassUID, sc.SOPInstanceUID)]
        if source_ref is not None:
            group_sources.append(
                hd.sr.SourceImageForMeasurementGroup(source_ref.SOPClassUID, source_ref.SOPInstanceUID)
            )
        evaluations = [
            hd.sr.QualitativeEvaluation(NASAL_BONE_DETECTED, codes.SCT.No),
            hd.sr.QualitativeEvaluation(NASAL_BONE_FRACTURE, _fracture_value(result)),
        ]
        groups.append(
            hd.sr.MeasurementsAndQualitativeEvaluations(
                tracking_identifier=hd.sr.TrackingIdentifier(uid=hd.UID(), identifier="Nasal bone not found"),
                finding_type=codes.SCT.NasalBone,
                algorithm_id=algorithm,
                measurements=measurements,
                qualitative_evaluations=evaluations,
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
    return hd.sr.ComprehensiveSR(
        evidence=evidence,
        content=report[0],
        series_instance_uid=hd.UID(),
        series_number=SR_SERIES_NUMBER,
        sop_instance_uid=hd.UID(),
        instance_number=1,
        manufacturer=MANUFACTURER,
        manufacturer_model_name=PROJECT_NAME,
        software_versions=str(model_version),
        series_description=SR_SERIES_DESCRIPTION,
        content_qualification=hd.ContentQualificationValues.RESEARCH,
        coding_schemes=[
            CodingSchemeIdentificationItem(
                designator=PRIVATE_SCHEME,
                name=f"{PROJECT_NAME} private codes",
                responsible_organization=PROJECT_NAME,
            )
        ],
    )


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


def _measurements(result: Mapping[str, Any], measured_on: Dataset) -> list[hd.sr.Measurement]:
    """Fracture probability, threshold and detector confidence (each only when it is a finite number)."""
    refs = [hd.sr.SourceImageForMeasurement(measured_on.SOPClassUID, measured_on.SOPInstanceUID)]
    out = []
    for key, name in (
        ("fracture_probability", FRACTURE_PROBABILITY),
        ("threshold", THRESHOLD),
        ("detector_confidence", DETECTOR_CONFIDENCE),
    ):
        value = _number(result.get(key))
        if value is not None:
            out.append(hd.sr.Measurement(name=name, value=value, unit=UNITLESS, referenced_images=refs))
    return out


def _fracture_value(result: Mapping[str, Any]) -> Any:
    """SCT Present/Absent from ``result['fracture']`` if a probability was computed, else DCM Presence Undetermined."""
    if _number(result.get("fracture_probability")) is None or result.get("fracture") is None:
        return codes.DCM.PresenceUndetermined
    return codes.SCT.Present if bool(result["fracture"]) else codes.SCT.Absent


def _observation_context(model_version: str) -> hd.sr.ObservationContext:
    """Device observer: this software, with a UID derived from its name and version."""
    device = hd.sr.DeviceObserverIdentifyingAttributes(
        uid=generate_uid(entropy_srcs=[PROJECT_NAME, str(model_version)]),
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
