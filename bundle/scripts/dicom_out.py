"""DICOM outputs of the inference pipeline: an RGB Secondary Capture of the overlay and a TID 1500 Comprehensive SR.

Both objects join the source image's study (new series) when the input was DICOM, else a new study. Patient identity
(name, ID, birth date, sex, referring physician) is only copied with ``keep_patient_identity=True``; otherwise the
objects carry an empty PatientName and ``PatientID="ANON"``. The source dataset is only read, never modified.

The SR, its coordinates and its codes are built in ``dicom_sr.py``.
"""

from __future__ import annotations

import datetime
import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import highdicom as hd
import numpy as np
from pydicom.dataset import Dataset
from pydicom.uid import ExplicitVRLittleEndian

from .dicom_sr import MANUFACTURER, PROJECT_NAME, build_structured_report

logger = logging.getLogger(__name__)

SC_SERIES_DESCRIPTION = "Nasal bone fracture AI overlay (research use only)"
SC_SERIES_NUMBER = 9901
ANON_PATIENT_NAME = ""  # type 2: empty
ANON_PATIENT_ID = "ANON"
IDENTITY_KEYWORDS = ("PatientName", "PatientID", "PatientBirthDate", "PatientSex", "ReferringPhysicianName")


def write_dicom_outputs(
    overlay_rgb: np.ndarray,
    result: Mapping[str, Any],
    out_dir: Path | str,
    stem: str,
    source: Dataset | None = None,
    keep_patient_identity: bool = False,
    model_version: str = "0.1.0",
) -> dict[str, Path]:
    """Write ``<stem>_sc.dcm`` (overlay) and ``<stem>_sr.dcm`` (findings) to ``out_dir`` and return their paths."""
    overlay = _check_overlay(overlay_rgb)
    source = _usable_source(source, overlay.shape[:2])
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = {"secondary_capture": out_dir / f"{stem}_sc.dcm", "structured_report": out_dir / f"{stem}_sr.dcm"}
    _refuse_source_path(source, paths.values())

    sc = build_secondary_capture(overlay, source, keep_patient_identity, model_version)
    sr = build_structured_report(result, sc, source, model_version)
    sc.save_as(paths["secondary_capture"], enforce_file_format=True)
    sr.save_as(paths["structured_report"], enforce_file_format=True)
    logger.debug("wrote DICOM SC %s and SR %s", sc.SOPInstanceUID, sr.SOPInstanceUID)
    return paths


def build_secondary_capture(
    overlay: np.ndarray, source: Dataset | None, keep_patient_identity: bool, model_version: str
) -> hd.sc.SCImage:
    """RGB 8-bit SC image of the overlay, in the source's study (new series) or in a new study."""
    common: dict[str, Any] = dict(
        pixel_array=overlay,
        photometric_interpretation=hd.PhotometricInterpretationValues.RGB,
        bits_allocated=8,
        coordinate_system=hd.CoordinateSystemNames.PATIENT,
        series_instance_uid=hd.UID(),
        series_number=SC_SERIES_NUMBER,
        sop_instance_uid=hd.UID(),
        instance_number=1,
        manufacturer=MANUFACTURER,
        manufacturer_model_name=PROJECT_NAME,
        software_versions=str(model_version),
        series_description=SC_SERIES_DESCRIPTION,
        content_qualification=hd.ContentQualificationValues.RESEARCH,
        transfer_syntax_uid=ExplicitVRLittleEndian,
    )
    orientation = _patient_orientation(source)
    if source is not None:
        ref = _reference_for_copy(source, keep_patient_identity)
        spacing = source.get("PixelSpacing")
        sc = hd.sc.SCImage.from_ref_dataset(
            ref_dataset=ref,
            patient_orientation=orientation or ("A", "F"),
            pixel_spacing=tuple(float(v) for v in spacing) if spacing is not None and len(spacing) == 2 else None,
            **common,
        )
    else:
        now = datetime.datetime.now()
        sc = hd.sc.SCImage(
            study_instance_uid=hd.UID(),
            patient_id=ANON_PATIENT_ID,
            patient_name=ANON_PATIENT_NAME,
            study_date=now.date(),
            study_time=now.time(),
            patient_orientation=orientation or ("A", "F"),
            **common,
        )
    if orientation is None:
        sc.PatientOrientation = None  # type 2: empty means unknown (the placeholder only satisfied highdicom)
    sc.BurnedInAnnotation = "YES"
    sc.DerivationDescription = "Input X-ray with the AI nasal bone box and suspected fracture region drawn on it"
    sc.ImageComments = "Research use only; not for diagnostic use"
    if source is not None:
        item = Dataset()
        item.ReferencedSOPClassUID = source.SOPClassUID
        item.ReferencedSOPInstanceUID = source.SOPInstanceUID
        sc.SourceImageSequence = [item]
    return sc


def _check_overlay(overlay_rgb: np.ndarray) -> np.ndarray:
    """The overlay as a C-contiguous uint8 (rows, cols, 3) array."""
    overlay = np.asarray(overlay_rgb)
    if overlay.ndim != 3 or overlay.shape[2] != 3:
        raise ValueError(f"overlay_rgb must have shape (rows, cols, 3), got {overlay.shape}")
    if overlay.dtype != np.uint8:
        raise TypeError(f"overlay_rgb must be uint8, got {overlay.dtype}")
    return np.ascontiguousarray(overlay)


def _usable_source(source: Dataset | None, shape: tuple[int, ...]) -> Dataset | None:
    """The source if it can be referenced (has study/series/SOP UIDs), else None (then a new study is made)."""
    if source is None:
        return None
    needed = ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID", "SOPClassUID")
    if any(not source.get(k) for k in needed):
        logger.warning("source dataset lacks study/series/SOP UIDs; DICOM outputs go to a new study")
        return None
    grid = (source.get("Rows"), source.get("Columns"))
    if None not in grid and tuple(int(v) for v in grid) != tuple(shape):
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


def _reference_for_copy(source: Dataset, keep_patient_identity: bool) -> Dataset:
    """A new dataset with the source's study and equipment attributes, and patient identity only if asked."""
    ref = Dataset()
    keywords = [
        "SOPClassUID",
        "SOPInstanceUID",
        "StudyInstanceUID",
        "StudyDate",
        "StudyTime",
        "StudyID",
        "AccessionNumber",
        "SpecificCharacterSet",
        "Manufacturer",
        "ManufacturerModelName",
        "SoftwareVersions",
    ]
    if keep_patient_identity:
        keywords += list(IDENTITY_KEYWORDS)
    for keyword in keywords:
        if keyword in source:
            ref[keyword] = source[keyword]
    if not keep_patient_identity:
        ref.PatientName = ANON_PATIENT_NAME
        ref.PatientID = ANON_PATIENT_ID
    if ref.get("PatientSex") not in (None, "", "M", "F", "O"):
        del ref.PatientSex  # highdicom only accepts M/F/O
    return ref


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
