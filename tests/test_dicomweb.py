"""DICOMweb against a real Orthanc (with its DICOMweb plugin): a study with two DX images and a CT is pulled by
QIDO-RS/WADO-RS, the DX images get their SC and SR back in the same study by STOW-RS, the CT is skipped with its
reason; bad addresses and unknown studies are one-line errors; no log line carries the patient's identity."""

from __future__ import annotations

import json
import logging

import pydicom
from pydicom.data import get_testdata_file
from pydicom.uid import SecondaryCaptureImageStorage

from clinic.dicomweb import connect, main, run_study
from tests.servers import free_port
from tests.test_dicom_node import _xray
from tests.test_identity import IDENTITY

COMPREHENSIVE_SR = "1.2.840.10008.5.1.4.1.1.88.33"


def test_a_study_is_pulled_assessed_and_its_results_stored(pacs_engine, orthanc, tmp_path, caplog) -> None:
    caplog.set_level(logging.DEBUG)
    paths, sources = zip(*(_xray(tmp_path, index) for index in (11, 12)), strict=True)
    study = sources[0].StudyInstanceUID
    ct = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
    ct.StudyInstanceUID, ct.PatientID = study, IDENTITY["PatientID"]  # a CT in the same study
    ct.save_as(tmp_path / "ct.dcm")
    second = pydicom.dcmread(paths[1])
    second.StudyInstanceUID = study  # both DX images in one study (two series)
    second.save_as(paths[1])
    for path in (*paths, tmp_path / "ct.dcm"):
        orthanc.upload(path)

    results = run_study(connect(orthanc.dicomweb), study, pacs_engine, tmp_path / "work")
    assert sorted("stored" in r for r in results) == [False, True, True]
    [skipped] = [r for r in results if "skipped" in r]
    assert skipped["skipped"].startswith("not assessed: Modality CT is not a radiograph")
    assert all(r["finding"] for r in results if "stored" in r)

    series = orthanc.series(study)
    classes = sorted(i["SOPClassUID"] for s in series for i in s["instances"] if s["Modality"] in ("OT", "SR"))
    assert classes == [SecondaryCaptureImageStorage] * 2 + [COMPREHENSIVE_SR] * 2
    for tags in (i for s in series for i in s["instances"] if s["Modality"] in ("OT", "SR")):
        assert tags["StudyInstanceUID"] == study and tags["PatientName"] == IDENTITY["PatientName"]
    assert not list((tmp_path / "work").glob("*.dcm"))  # the retrieved images are not kept

    text = caplog.text.lower()
    for needle in (*IDENTITY.values(), study, *(str(ds.SOPInstanceUID) for ds in sources)):
        assert needle.lower() not in text, needle


def test_unknown_study_and_unreachable_server_are_one_line_errors(orthanc, capsys) -> None:
    assert main(["--url", orthanc.dicomweb, "--study", "1.2.3.4.5.6.7.8.9"]) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("dicomweb: study #") and err.endswith(": no instances found") and "\n" not in err

    url = f"http://127.0.0.1:{free_port()}/dicom-web"
    assert main(["--url", url, "--study", "1.2.3", "--timeout", "5"]) == 2
    err = capsys.readouterr().err.strip()
    assert "search (QIDO-RS) failed: ConnectionError" in err and "\n" not in err

    assert main(["--url", "pacs:8042", "--study", "1.2.3"]) == 2
    assert "--url must be an http(s) DICOMweb root" in capsys.readouterr().err


def test_an_instance_that_fails_is_reported_and_the_others_go_on(orthanc, tmp_path, monkeypatch, capsys) -> None:
    from clinic import dicomweb

    class OneFails:  # stands in for the warm inference: the first instance raises, the next is not assessed
        output_dir = tmp_path

        def __init__(self) -> None:
            self.calls = 0

        def predict(self, path, stem: str, name: str) -> dict:
            self.calls += 1
            if self.calls == 1:
                raise ValueError(f"bad value {IDENTITY['PatientName']}")
            return {"error": "not assessed: stand-in"}

    engine = OneFails()
    paths, sources = zip(*(_xray(tmp_path, index) for index in (13, 14)), strict=True)
    study = sources[0].StudyInstanceUID
    second = pydicom.dcmread(paths[1])
    second.StudyInstanceUID = study
    second.save_as(paths[1])
    for path in paths:
        orthanc.upload(path)
    monkeypatch.setattr(dicomweb, "build_engine", lambda *_: lambda: engine)

    assert main(["--url", orthanc.dicomweb, "--study", study, "--work-dir", str(tmp_path / "work")]) == 1
    out, err = capsys.readouterr()
    results = [json.loads(line) for line in out.splitlines()]
    assert engine.calls == 2 and len(results) == 2
    assert [r.get("error") for r in results].count("could not be assessed (ValueError)") == 1
    assert [r.get("skipped") for r in results].count("not assessed: stand-in") == 1
    assert "Traceback" not in err and IDENTITY["PatientName"] not in out + err
