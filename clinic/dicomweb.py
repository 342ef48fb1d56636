"""DICOMweb, for PACS that speak it: pull a study, run the bundle's inference on its radiographs, store the results.

``python -m clinic.dicomweb --url http://pacs:8042/dicom-web --study <StudyInstanceUID>``

1. QIDO-RS lists the study's instances (with Modality, SOP class and the other attributes the input guard reads);
   what is not a plain head radiograph (a CT, an SR, our own colour SC...) is skipped with the guard's reason.
2. WADO-RS retrieves each remaining instance; ``clinic.engine.WarmInference`` (models loaded once, after the study
   was found) writes the DICOM SC and SR in the identity mode for PACS use: they join the source study.
3. STOW-RS stores the SC and SR in that study.

One line per instance on stdout (by a hash of its SOP Instance UID, never the patient's identity); an instance that
fails (retrieval, inference, storing) gets an ``error`` line and the others go on. Exit status 0 when every
radiograph got its results stored, 1 when one did not (or the study has none), 2 for a bad argument or a server
that cannot be reached.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import tempfile
from pathlib import Path
from typing import Any

import requests
from dicomweb_client.api import DICOMwebClient
from pydicom import dcmread
from pydicom.dataset import Dataset

from scripts.input_guard import refusal

from .dicom_node import build_engine, describe
from .dicom_queue import uid_hash

logger = logging.getLogger("clinic.dicomweb")

# what QIDO-RS is asked for: the input guard's attributes and the UIDs to retrieve an instance
QIDO_FIELDS = (
    "SeriesInstanceUID",
    "SOPInstanceUID",
    "SOPClassUID",
    "Modality",
    "BodyPartExamined",
    "PhotometricInterpretation",
    "NumberOfFrames",
)


class DicomWebError(Exception):
    """The study could not be read or the results not stored (one line)."""


def connect(url: str, timeout: float = 30.0) -> DICOMwebClient:
    """A DICOMweb client for ``url`` (the service root, e.g. ``http://pacs:8042/dicom-web``) that retries 429/503."""
    if not url.startswith(("http://", "https://")):
        raise ValueError(f"--url must be an http(s) DICOMweb root (e.g. http://pacs:8042/dicom-web), got '{url}'")
    for library in ("dicomweb_client", "urllib3"):  # their INFO and DEBUG lines carry study and instance UIDs
        logging.getLogger(library).setLevel(logging.WARNING)
    client = DICOMwebClient(url=url.rstrip("/"), timeout=timeout)
    client.set_http_retry_params(retry=True, max_attempts=3, wait_exponential_multiplier=500)
    return client


def run_study(client: DICOMwebClient, study_uid: str, engine: Any, work_dir: str | Path) -> list[dict[str, Any]]:
    """Pull ``study_uid``, infer on each radiograph, STOW the SC and SR; one result dict per instance.

    ``engine`` is a ``WarmInference`` (``dicom_out=True, keep_patient_identity=True``) or a function that builds one
    (called only when the study has a radiograph). Each result has ``instance`` (the UID's hash) and either
    ``finding``/``fracture_probability``/``stored`` or ``skipped`` (the guard's reason) or ``error``.
    """
    study = uid_hash(study_uid)
    try:
        found = client.search_for_instances(study_instance_uid=study_uid, fields=QIDO_FIELDS, get_remaining=True)
    except requests.RequestException as err:
        raise DicomWebError(f"study #{study}: search (QIDO-RS) failed: {_http_problem(err)}") from err
    if not found:
        raise DicomWebError(f"study #{study}: no instances found")
    work = Path(work_dir)
    work.mkdir(parents=True, exist_ok=True)
    results = []
    for item in found:
        header = Dataset.from_json(item)
        instance = uid_hash(header.get("SOPInstanceUID", ""))
        reason = refusal(header)
        if reason:
            results.append({"instance": instance, "skipped": f"not assessed: {reason}"})
            continue
        if not hasattr(engine, "predict"):
            engine = engine()
        results.append(_run_instance(client, study_uid, header, engine, work, instance))
    for result in results:
        logger.info("study #%s instance #%s: %s", study, result["instance"], _summary(result))
    return results


def _run_instance(
    client: DICOMwebClient, study_uid: str, header: Dataset, engine: Any, work: Path, instance: str
) -> dict[str, Any]:
    path = work / f"{instance}.dcm"
    out = Path(engine.output_dir)
    try:
        try:
            ds = client.retrieve_instance(study_uid, header.SeriesInstanceUID, header.SOPInstanceUID)
        except requests.RequestException as err:
            return {"instance": instance, "error": f"retrieve (WADO-RS) failed: {_http_problem(err)}"}
        ds.save_as(path, enforce_file_format=True)
        record = engine.predict(path, stem=instance, name=f"instance #{instance}")
        if "error" in record:
            return {"instance": instance, "skipped" if "not assessed" in record["error"] else "error": record["error"]}
        if "dicom_error" in record or not record.get("dicom"):
            return {"instance": instance, "error": record.get("dicom_error", "no DICOM results written")}
        results = [dcmread(out / name) for name in record["dicom"].values()]
        try:
            answer = client.store_instances(results, study_instance_uid=study_uid)
        except requests.RequestException as err:
            return {"instance": instance, "error": f"store (STOW-RS) failed: {_http_problem(err)}"}
        failed = answer.get("FailedSOPSequence", []) if answer is not None else []
        if failed:
            reasons = sorted({str(item.get("FailureReason", "?")) for item in failed})
            return {"instance": instance, "error": f"store (STOW-RS) refused {len(failed)} of 2, reason {reasons}"}
        keep = ("finding", "fracture_probability", "finding_reason")
        return {"instance": instance, **{k: record[k] for k in keep if k in record}, "stored": ["SC", "SR"]}
    except Exception as err:  # saving, inference or reading the results: this instance only, the others go on
        return {"instance": instance, "error": f"could not be assessed ({describe(err)})"}
    finally:
        path.unlink(missing_ok=True)
        for leftover in out.glob(f"{instance}*"):
            leftover.unlink(missing_ok=True)


def _http_problem(err: requests.RequestException) -> str:
    """One line for a failed HTTP call: status and reason, or the kind of connection error."""
    response = getattr(err, "response", None)
    if response is not None:
        return f"HTTP {response.status_code} {response.reason}"
    return type(err).__name__


def _summary(result: dict[str, Any]) -> str:
    if "stored" in result:
        probability = result.get("fracture_probability")
        odds = "" if probability is None else f" (p={float(probability):.2f})"
        return f"{result.get('finding', 'assessed')}{odds}; SC and SR stored (STOW-RS)"
    return result.get("skipped") or f"error: {result['error']}"


def main(argv: list[str] | None = None) -> int:
    """The command line (see the module's docstring)."""
    parser = argparse.ArgumentParser(prog="python -m clinic.dicomweb", description=__doc__.split("\n")[0])
    parser.add_argument("--url", required=True, help="DICOMweb service root, e.g. http://pacs:8042/dicom-web")
    parser.add_argument("--study", required=True, help="StudyInstanceUID of the study to assess")
    parser.add_argument("--models-dir", default=None, help="trained weights (default: the bundle's models/)")
    parser.add_argument("--device", default=None, help="torch device (default: CUDA when available, else CPU)")
    parser.add_argument("--work-dir", default=None, help="scratch folder (default: a temporary one, removed)")
    parser.add_argument("--timeout", type=float, default=30.0, help="HTTP timeout, s (default 30)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    try:
        client = connect(args.url, args.timeout)
        with tempfile.TemporaryDirectory(prefix="nasalfx-dicomweb-") as scratch:
            work = Path(args.work_dir or scratch)
            results = run_study(client, args.study, build_engine(work, args.models_dir, args.device), work)
    except ValueError as err:
        print(f"dicomweb: {err}", file=sys.stderr)
        return 2
    except DicomWebError as err:
        print(f"dicomweb: {err}", file=sys.stderr)
        return 2 if "search (QIDO-RS) failed" in str(err) else 1
    for result in results:
        print(json.dumps(result))
    assessed = [r for r in results if "skipped" not in r]
    return 0 if assessed and all("stored" in r for r in assessed) else 1


if __name__ == "__main__":
    sys.exit(main())
