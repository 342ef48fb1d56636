"""DICOM outputs of the inference pipeline: an RGB Secondary Capture of the overlay and a TID 1500 Comprehensive SR.

Patient identity follows one rule for both objects, ``keep_patient_identity`` (the inference config's
``dicom_keep_patient_identity``):

- ``True``, with a DICOM source (the mode for PACS use): both objects join the source's study (a new series each)
  and carry the source's Patient and Study modules intact (highdicom's ``SCImage.from_ref_dataset``, then
  ``copy_patient_and_study_information``: name, ID, other IDs, birth date, sex, accession number, study date, time,
  ID and description, referring physician, ...). The SC's Source Image Sequence and the SR's evidence and
  measurements reference the source image.
- ``False`` (the default): a de-identified new study. Nothing of the source's Patient or Study modules is copied:
  new Study, Series and SOP Instance UIDs; PatientID ``ANON``; PatientName, birth date, sex, accession number,
  Study ID, referring physician, study date and study time empty; no other patient IDs; no reference to any of the
  source's UIDs (the SR's evidence and measurements reference the SC, which is on the source's pixel grid). The
  objects say so: PatientIdentityRemoved ``YES``, DeidentificationMethod (``DEIDENTIFICATION_METHOD``) and its code
  (DCM 113100, Basic Application Confidentiality Profile), LongitudinalTemporalInformationModified ``REMOVED``. Kept
  from the source: its pixels (the overlay is drawn on them; text burnt into the input image is not removed, so the
  Clean Pixel Data Option is not claimed), the image size, Pixel Spacing, Patient Orientation and Body Part Examined.
  The only dates are those of the objects' creation (instance creation, content, and the SC's date of secondary
  capture).
- Without a usable DICOM source (PNG or NIfTI input, or a DICOM file without its UIDs): a new study as in the
  de-identified mode; the de-identification attributes are added when a DICOM source was given.

In neither mode are the source's equipment (institution, station, device), its other modules or its private
attributes copied. The source dataset is only read, never modified. The SR, its coordinates and its codes are built
in ``dicom_sr.py``.

Both objects follow the IHE AI Results conventions of ``dicom_sr.py`` (the algorithm in the Contributing Equipment
Sequence, "NOT FOR DIAGNOSTIC USE" in the series description, Content Qualification ``RESEARCH``) and pass
dicom3tools' ``dciodvfy`` without errors (``tests/test_dicom_validators.py``): the SC has a Body Part Examined (the
source's, else ``HEAD``), so General Series' Laterality (type 2C) is rightly absent for the unpaired nasal bones.
"""

from __future__ import annotations

import copy
import logging
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import highdicom as hd
import numpy as np
from pydicom.dataset import Dataset
from pydicom.sr.codedict import codes
from pydicom.tag import Tag
from pydicom.uid import ExplicitVRLittleEndian

from .dicom_sr import (
    PROJECT_NAME,
    add_algorithm_equipment,
    build_structured_report,
    bundle_version,
    new_series,
    quiet,
)

logger = logging.getLogger(__name__)

SC_SERIES_DESCRIPTION = "Nasal fracture AI overlay - NOT FOR DIAGNOSTIC USE (research)"  # LO: 64 at most
SC_SERIES_NUMBER = 9901
DEFAULT_BODY_PART = "HEAD"  # PS3.16 Annex L defined term (SCT 69536005 "Head")
CODE_STRING = re.compile(r"[A-Z0-9_ ]{0,15}[A-Z0-9_]")  # a valid CS value (16 characters at most)
ANON_PATIENT_NAME = ""  # type 2: empty
ANON_PATIENT_ID = "ANON"
# what highdicom's from_ref_dataset copies (with the flag); the rest of the two modules follows when highdicom
# knows the source's IOD
REF_KEYWORDS = (
    "SOPClassUID",
    "SOPInstanceUID",
    "StudyInstanceUID",
    "StudyDate",
    "StudyTime",
    "StudyID",
    "AccessionNumber",
    "SpecificCharacterSet",
    "PatientName",
    "PatientID",
    "PatientBirthDate",
    "PatientSex",
    "ReferringPhysicianName",
)
# DeidentificationMethod (LO, at most 64 characters a value) of the de-identified outputs
DEIDENTIFICATION_METHOD = (
    f"{PROJECT_NAME}: new study, no source identity or UIDs",
    "PS3.15 Basic Profile on attributes; pixel data not cleaned",
)
PIXEL_DATA = Tag("PixelData")


def write_dicom_outputs(
    overlay_rgb: np.ndarray,
    result: Mapping[str, Any],
    out_dir: Path | str,
    stem: str,
    source: Dataset | None = None,
    keep_patient_identity: bool = False,
    model_version: str | None = None,
) -> dict[str, Path]:
    """Write ``<stem>_sc.dcm`` (overlay) and ``<stem>_sr.dcm`` (findings) to ``out_dir`` and return their paths.

    ``result`` is the findings dict of ``dicom_sr.build_structured_report``; ``model_version`` defaults to the bundle's
    version (``configs/metadata.json``)."""
    model_version = bundle_version() if model_version is None else str(model_version)
    overlay = _check_overlay(overlay_rgb)
    usable = _usable_source(source, overlay.shape[:2])
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = {"secondary_capture": out_dir / f"{stem}_sc.dcm", "structured_report": out_dir / f"{stem}_sr.dcm"}
    _refuse_source_path(source, paths.values())

    joined = usable if keep_patient_identity else None  # the source whose study the outputs join
    sc = build_secondary_capture(overlay, source, keep_patient_identity, model_version)
    sr = build_structured_report(result, sc, joined, model_version)
    if source is not None and joined is None:
        mark_deidentified(sr)
    sc.save_as(paths["secondary_capture"], enforce_file_format=True)
    sr.save_as(paths["structured_report"], enforce_file_format=True)
    logger.debug("wrote DICOM SC %s and SR %s", sc.SOPInstanceUID, sr.SOPInstanceUID)
    return paths


def build_secondary_capture(
    overlay: np.ndarray, source: Dataset | None, keep_patient_identity: bool, model_version: str
) -> hd.sc.SCImage:
    """RGB 8-bit SC image of the overlay: in the source's study with its identity (``keep_patient_identity`` and a
    usable source), else in a new, de-identified study (see the module docstring)."""
    common: dict[str, Any] = dict(
        pixel_array=overlay,
        photometric_interpretation=hd.PhotometricInterpretationValues.RGB,
        bits_allocated=8,
        coordinate_system=hd.CoordinateSystemNames.PATIENT,
        **new_series(SC_SERIES_NUMBER, SC_SERIES_DESCRIPTION, model_version),
        transfer_syntax_uid=ExplicitVRLittleEndian,
        patient_orientation=_patient_orientation(source) or ("A", "F"),
        pixel_spacing=_pixel_spacing(source),
    )
    usable = _usable_source(source, overlay.shape[:2], warn=False)
    if keep_patient_identity and usable is not None:
        header = _header(usable)
        sc = hd.sc.SCImage.from_ref_dataset(ref_dataset=_identity_reference(header), **common)
        try:  # the whole Patient and Study modules of the source's IOD
            with quiet("highdicom.base"):  # it logs the source's SOP Instance UID at INFO
                sc.copy_patient_and_study_information(header)
        except KeyError:
            logger.debug("no IOD in highdicom for SOP class %s: from_ref_dataset's copy only", header.SOPClassUID)
        item = Dataset()
        item.ReferencedSOPClassUID = usable.SOPClassUID
        item.ReferencedSOPInstanceUID = usable.SOPInstanceUID
        sc.SourceImageSequence = [item]
    else:
        sc = hd.sc.SCImage(
            study_instance_uid=hd.UID(), patient_id=ANON_PATIENT_ID, patient_name=ANON_PATIENT_NAME, **common
        )
        if source is not None:
            mark_deidentified(sc)
    if _patient_orientation(source) is None:
        sc.PatientOrientation = None  # type 2: empty means unknown (the placeholder only satisfied highdicom)
    # General Series: with the body part, Laterality (type 2C) may be absent, as it is for an unpaired body part
    sc.BodyPartExamined = _body_part(source)
    add_algorithm_equipment(sc, model_version)  # IHE AIR: the algorithm in the Contributing Equipment Sequence
    sc.BurnedInAnnotation = "YES"
    sc.DerivationDescription = "Input X-ray with the AI nasal bone box and suspected fracture region drawn on it"
    sc.ImageComments = "Research use only; not for diagnostic use"
    return sc


def mark_deidentified(ds: Dataset) -> None:
    """Record on ``ds`` that the source's identity was removed (Patient module and SOP Common attributes)."""
    ds.PatientIdentityRemoved = "YES"
    ds.DeidentificationMethod = list(DEIDENTIFICATION_METHOD)
    ds.DeidentificationMethodCodeSequence = [
        hd.sr.CodedConcept.from_code(codes.DCM.BasicApplicationConfidentialityProfile)
    ]
    ds.LongitudinalTemporalInformationModified = "REMOVED"


def _check_overlay(overlay_rgb: np.ndarray) -> np.ndarray:
    """The overlay as a C-contiguous uint8 (rows, cols, 3) array."""
    overlay = np.asarray(overlay_rgb)
    if overlay.ndim != 3 or overlay.shape[2] != 3:
        raise ValueError(f"overlay_rgb must have shape (rows, cols, 3), got {overlay.shape}")
    if overlay.dtype != np.uint8:
        raise TypeError(f"overlay_rgb must be uint8, got {overlay.dtype}")
    return np.ascontiguousarray(overlay)


def _usable_source(source: Dataset | None, shape: tuple[int, ...], warn: bool = True) -> Dataset | None:
    """The source if it can be referenced (has study/series/SOP UIDs), else None (then a new study is made)."""
    if source is None:
        return None
    needed = ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID", "SOPClassUID")
    if any(not source.get(k) for k in needed):
        if warn:
            logger.warning("source dataset lacks study/series/SOP UIDs; DICOM outputs go to a new study")
        return None
    grid = (source.get("Rows"), source.get("Columns"))
    if warn and None not in grid and tuple(int(v) for v in grid) != tuple(shape):
        logger.warning("overlay grid %s differs from the source image grid %s", tuple(shape), grid)
    return source


def _refuse_source_path(source: Dataset | None, outputs: Any) -> None:
    """Raise if an output path is the file the source was read from (the input is never overwritten)."""
    filename = getattr(source, "filename", None) if source is not None else None
    if not isinstance(filename, str | Path):
        return
    src = Path(filename).resolve()
    if any(Path(p).resolve() == src for p in outputs):
        raise ValueError("an output path equals the input DICOM file; choose another out_dir or stem")


def _header(source: Dataset) -> Dataset:
    """A deep copy of the source without its pixel data (highdicom adds the elements it copies by reference)."""
    header = Dataset()
    for elem in source:
        if elem.tag != PIXEL_DATA:
            header.add(copy.deepcopy(elem))
    return header


def _identity_reference(header: Dataset) -> Dataset:
    """The attributes of ``header`` that ``from_ref_dataset`` copies, with a PatientSex highdicom accepts."""
    ref = Dataset()
    for keyword in REF_KEYWORDS:
        if keyword in header:
            ref[keyword] = header[keyword]
    if ref.get("PatientSex") not in (None, "", "M", "F", "O"):
        del ref.PatientSex  # highdicom only accepts M/F/O; copy_patient_and_study_information restores the value
    return ref


def _body_part(source: Dataset | None) -> str:
    """The source's Body Part Examined when it has one, else ``DEFAULT_BODY_PART`` (the bundle reads head X-rays)."""
    value = source.get("BodyPartExamined") if source is not None else None
    return value if isinstance(value, str) and CODE_STRING.fullmatch(value) else DEFAULT_BODY_PART


def _pixel_spacing(source: Dataset | None) -> tuple[float, float] | None:
    """The source's Pixel Spacing when it is a pair, else None."""
    spacing = source.get("PixelSpacing") if source is not None else None
    return tuple(float(v) for v in spacing) if spacing is not None and len(spacing) == 2 else None


def _patient_orientation(source: Dataset | None) -> tuple[str, str] | None:
    """The source's Patient Orientation when it is a valid pair, else None (unknown)."""
    value = source.get("PatientOrientation") if source is not None else None
    if value is None or isinstance(value, str) or len(value) != 2:
        return None
    try:
        pair = (str(value[0]), str(value[1]))
        for v in pair:
            hd.PatientOrientationValuesBiped(v)
        return pair
    except ValueError:
        return None
