"""What inference refuses to assess: DICOM that is not a plain head radiograph.

The networks were made for lateral head X-rays. A DICOM input is read up to its pixel data (which is not decoded)
and refused, with a one-line reason in its JSON and no probability, when

- its ``Modality`` is set and is not a radiograph: anything but ``CR``, ``DX``, ``RG`` (radiographic imaging) or
  ``OT`` (other, what many PACS exports of radiographs carry); CT, MR, US, NM, PT, SEG, RT*, SR... are refused;
- its ``SOPClassUID`` is set and is not a radiograph's or a Secondary Capture's storage class
  (``RADIOGRAPH_SOP_CLASSES``);
- its ``BodyPartExamined`` is set and is not the head (``HEAD_BODY_PARTS``: HEAD, SKULL, FACE, NOSE, SINUS...);
- it is colour (``PhotometricInterpretation`` RGB, YBR or PALETTE COLOR: a photograph, not an X-ray) or has more
  than one frame.

Attributes that are absent do not refuse a file (many exports drop them). PNG, JPEG and NIfTI carry none of this;
for them (and for every input) the detector's confidence floor, chosen on validation, is the guard: below it the
finding is "not assessable". ``allow_any_modality`` (``--allow_any_modality True``) turns this check off.

A nasal bone crop whose intensity mean or standard deviation lies far outside what the validation crops had
(``FlagCropIntensityd``: beyond their 0.5th-99.5th percentile range widened by half its width on each side,
stored in ``classifier.pt``) keeps its finding but gets a one-line ``warnings`` entry in its JSON.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from monai.config import KeysCollection
from monai.transforms import MapTransform

from .imageio import XrayReadError, image_format

RADIOGRAPH_MODALITIES = ("CR", "DX", "RG", "OT")
RADIOGRAPH_SOP_CLASSES = {
    "1.2.840.10008.5.1.4.1.1.1": "Computed Radiography",
    "1.2.840.10008.5.1.4.1.1.1.1": "Digital X-Ray for Presentation",
    "1.2.840.10008.5.1.4.1.1.1.1.1": "Digital X-Ray for Processing",
    "1.2.840.10008.5.1.4.1.1.7": "Secondary Capture",
}
HEAD_BODY_PARTS = ("HEAD", "SKULL", "FACE", "NOSE", "NASAL", "NASALBONE", "SINUS", "ORBIT", "MAXILLA", "HEADNECK")
COLOUR = ("RGB", "YBR", "PALETTE")


def refusal(header: Any) -> str | None:
    """Why a DICOM header (a pydicom ``Dataset``) is not a plain head radiograph, or None if it may be assessed."""
    modality = str(header.get("Modality", "") or "").strip().upper()
    if modality and modality not in RADIOGRAPH_MODALITIES:
        return f"Modality {modality} is not a radiograph (assessed: {', '.join(RADIOGRAPH_MODALITIES)})"
    sop = str(header.get("SOPClassUID", "") or "").strip()
    if sop and sop not in RADIOGRAPH_SOP_CLASSES:
        return f"SOP class {sop} is not a radiograph or a Secondary Capture"
    body = str(header.get("BodyPartExamined", "") or "").strip().upper()
    if body and body.replace(" ", "").replace("_", "") not in HEAD_BODY_PARTS:
        return f"BodyPartExamined {body} is not the head"
    photometric = str(header.get("PhotometricInterpretation", "") or "").strip().upper()
    if photometric.startswith(COLOUR):
        return f"a colour image ({photometric}), not an X-ray"
    frames = int(header.get("NumberOfFrames", 1) or 1)
    if frames > 1:
        return f"{frames} frames; expected one radiograph"
    return None


def check_input(path: str | Path, allow_any_modality: bool = False) -> None:
    """Raise ``XrayReadError`` (one line: "not assessed: ...") if ``path`` is a DICOM that ``refusal`` refuses."""
    if allow_any_modality or image_format(path) != "dicom":
        return
    import pydicom

    try:
        header = pydicom.dcmread(path, stop_before_pixels=True, force=True)
    except Exception:  # an unreadable header is the loader's to report, with its own message
        return
    reason = refusal(header)
    if reason:
        raise XrayReadError(path, f"not assessed: {reason}; pass --allow_any_modality True to run it anyway")


def intensity_warning(crop: np.ndarray, ranges: dict[str, list[float]]) -> str | None:
    """A one-line warning if the crop's mean or standard deviation is far outside the validation crops' ``ranges``
    (``{"mean": [lo, hi], "std": [lo, hi]}``; widened by half their width each side), else None."""
    stats = {"mean": float(np.mean(crop)), "std": float(np.std(crop))}
    for name, value in stats.items():
        if name not in ranges:
            continue
        lo, hi = (float(v) for v in ranges[name])
        margin = 0.5 * (hi - lo)
        if not lo - margin <= value <= hi + margin:
            return (
                f"crop intensity {name} {value:.3f} is far outside the validation crops' {lo:.3f}-{hi:.3f}: "
                "the image may not be like the training data"
            )
    return None


class FlagCropIntensityd(MapTransform):
    """Inference preprocessing, after the crop: append ``intensity_warning`` to ``warnings`` when it applies.

    ``ranges``: the validation crops' intensity ranges stored in ``classifier.pt`` (empty: no check).
    """

    def __init__(self, keys: KeysCollection = "crop", ranges: dict | None = None, warnings_key: str = "warnings"):
        super().__init__(keys)
        self.ranges, self.warnings_key = dict(ranges or {}), warnings_key

    def __call__(self, data: dict[str, Any]) -> dict[str, Any]:
        d = dict(data)
        for key in self.key_iterator(d):
            crop = d[key]
            crop = crop.detach().cpu().numpy() if hasattr(crop, "detach") else np.asarray(crop)
            warning = intensity_warning(crop, self.ranges) if self.ranges else None
            if warning:
                d[self.warnings_key] = [*d.get(self.warnings_key, []), warning]
        return d


class CheckHeadRadiographd(MapTransform):
    """Inference preprocessing, before loading: refuse a DICOM that is not a plain head radiograph (``check_input``).

    ``keys`` hold file paths; ``allow_any_modality`` turns the check off.
    """

    def __init__(self, keys: KeysCollection, allow_any_modality: bool = False) -> None:
        super().__init__(keys)
        self.allow_any_modality = bool(allow_any_modality)

    def __call__(self, data: dict[str, Any]) -> dict[str, Any]:
        for key in self.key_iterator(data):
            check_input(str(data[key]), self.allow_any_modality)
        return data
