"""The local service (clinic.service): health, valid uploads of every accepted kind, every bad upload refused with
its one-line reason while the service keeps working, the work folder as the only place written, retention, the
bounded queue, and the offline viewer and OpenAPI pages."""

from __future__ import annotations

import logging
import re
import tempfile
import threading
import time

import pytest
from fastapi.testclient import TestClient

from tests.test_inference import DETECT, JSON_KEYS

LIMIT = 2_000_000  # bytes: the tests' upload limit
PATIENT = "DOE^JANE"  # a patient name that must never reach the logs, the answers or the work folder's names


@pytest.fixture(scope="module")
def service(models, tmp_path_factory):
    """The service on untrained tiny weights (detector floor 0, so that it finds a box), its work folder in tmp."""
    from clinic.engine import WarmInference
    from clinic.service import ServiceSettings, create_app

    work = tmp_path_factory.mktemp("service")
    settings = ServiceSettings(work_dir=work, max_upload_bytes=LIMIT, retention_s=600, max_pending=3)
    engine = WarmInference(work / "results", models, device="cpu", overrides={DETECT.lstrip("-"): 0.0})
    app = create_app(settings, engine)
    with TestClient(app) as client:
        yield client, app.state.service


@pytest.fixture(scope="module")
def xrays(tmp_path_factory):
    """One phantom head X-ray written as PNG, JPEG, DICOM and NIfTI (gzip-compressed, and plain)."""
    import gzip

    from scripts.imageio import save_xray
    from tools.phantom import render_patient

    folder = tmp_path_factory.mktemp("uploads")
    image = render_patient(5, True, n_views=1, size=256)[0].image
    files = {kind: save_xray(folder / kind, image, kind) for kind in ("png8", "jpeg", "dcm", "nii")}
    files["nii.gz"] = files["nii"]  # save_xray writes .nii.gz
    files["nii"] = folder / "plain.nii"
    files["nii"].write_bytes(gzip.decompress(files["nii.gz"].read_bytes()))
    return files


def _post(client: TestClient, data: bytes, filename: str = "x.png", field: str = "file"):
    return client.post("/predict", files={field: (filename, data, "application/octet-stream")})


def test_health_reports_models_version_device_points_and_limits(service) -> None:
    client, _ = service
    info = client.get("/health").json()
    assert info["status"] == "ok" and info["models_loaded"] is True and info["bundle_version"]
    assert info["device"] == "cpu" and info["thresholds"] == {"suspicious": 0.4, "fracture": 0.4}
    assert info["limits"]["max_upload_bytes"] == LIMIT and info["limits"]["max_pending"] == 3


@pytest.mark.parametrize("kind", ["png8", "jpeg", "dcm", "nii", "nii.gz"])
def test_a_valid_upload_gives_the_command_json_with_links(service, xrays, kind) -> None:
    client, svc = service
    res = _post(client, xrays[kind].read_bytes(), filename=f"{PATIENT}.{kind}")
    assert res.status_code == 200, res.text
    answer = res.json()
    rid = answer["request_id"]
    assert re.fullmatch(r"[0-9a-f]{32}", rid) and answer["image"] == rid  # named by the request, not the file
    assert JSON_KEYS <= set(answer) and answer["finding"] in ("fracture", "suspicious", "no fracture")
    on_disk = client.get(answer["links"]["json"]).json()  # the inference command's per-image JSON
    assert {k: v for k, v in answer.items() if k not in ("request_id", "links", "seconds")} == on_disk
    assert set(answer["links"]) == {"json", "overlay", "region_mask", "heatmap", "xray", "crop", "repaired"}
    for kind_, link in answer["links"].items():
        got = client.get(link)
        assert got.status_code == 200 and got.headers["cache-control"] == "no-store", kind_
        assert kind_ == "json" or got.content.startswith(b"\x89PNG"), kind_
    assert not list(svc.uploads.iterdir())  # the upload is deleted once assessed
    assert PATIENT not in res.text and not any(PATIENT in p.name for p in svc.settings.work_dir.rglob("*"))


@pytest.mark.parametrize(
    ("body", "status", "words"),
    [
        (b"", 400, "empty"),
        (b"just some text, not an image\n" * 40, 415, "DICOM, PNG, JPEG or NIfTI"),
        (b"\x89PNG\r\n\x1a\n" + b"\x00garbage" * 100, 422, "not a readable image"),  # looks like a PNG, is not one
        (b"\x1f\x8b" + b"\x00" * 600, 415, "DICOM, PNG, JPEG or NIfTI"),  # gzip, not a NIfTI
        (b"\x00" * (LIMIT + 1), 413, "too large"),
    ],
    ids=["empty", "junk", "broken-png", "junk-gzip", "huge"],
)
def test_a_bad_upload_is_refused_with_its_reason_and_the_service_goes_on(service, xrays, body, status, words) -> None:
    client, svc = service
    res = _post(client, body)
    assert res.status_code == status, res.text
    detail = res.json()["detail"]
    assert words in detail and "\n" not in detail and str(svc.settings.work_dir) not in detail
    assert not list(svc.uploads.iterdir())
    assert _post(client, xrays["png8"].read_bytes()).status_code == 200


def test_a_huge_upload_sent_in_chunks_is_cut_off_at_the_limit(service) -> None:
    client, svc = service
    boundary = "b0undary"
    head = f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="x.png"\r\n\r\n'.encode()
    sent = []

    def body():  # no Content-Length: the limit is enforced while the bytes arrive
        yield head + b"\x89PNG\r\n\x1a\n"
        for _ in range(40):
            sent.append(1)
            yield b"\x00" * 100_000

    headers = {"content-type": f"multipart/form-data; boundary={boundary}"}
    res = client.post("/predict", content=body(), headers=headers)
    assert res.status_code == 413 and "too large" in res.json()["detail"]
    assert not list(svc.uploads.iterdir())


@pytest.mark.parametrize(
    ("part", "status", "words"),
    [
        # five 4 kB headers: each line within python-multipart's own limit (4224 bytes), together over 16 KiB
        (b'name="file"; filename="x.png"' + (b"\r\nX-Pad: " + b"a" * 4000) * 5 + b"\r\n\r\njunk", 400, "too long"),
        (b'name="note"\r\n\r\n' + b"n" * 3_000_000, 413, "too large"),  # not the file, yet over the limit
    ],
    ids=["huge-part-header", "huge-other-field"],
)
def test_a_chunked_body_with_a_huge_header_or_field_is_cut_off(service, part, status, words) -> None:
    client, svc = service
    boundary = b"b0undary"
    whole = b"--" + boundary + b"\r\nContent-Disposition: form-data; " + part + b"\r\n--" + boundary + b"--\r\n"

    def body():  # no Content-Length: only the streaming parser's limits apply
        for i in range(0, len(whole), 50_000):
            yield whole[i : i + 50_000]

    headers = {"content-type": f"multipart/form-data; boundary={boundary.decode()}"}
    res = client.post("/predict", content=body(), headers=headers)
    assert res.status_code == status and words in res.json()["detail"], res.text
    assert "\n" not in res.json()["detail"] and not list(svc.uploads.iterdir())


def test_a_ct_dicom_is_not_assessed_and_no_identity_reaches_the_logs(service, caplog) -> None:
    import pydicom
    from pydicom.data import get_testdata_file

    client, svc = service
    ct = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
    ct.PatientName, ct.PatientID = PATIENT, "MRN-9911"
    path = svc.settings.work_dir.parent / "ct.dcm"
    ct.save_as(path)
    with caplog.at_level(logging.INFO):
        res = _post(client, path.read_bytes(), filename=f"{PATIENT}.dcm")
    detail = res.json()["detail"]
    assert res.status_code == 422 and detail.startswith("not assessed: Modality CT"), res.text
    assert "head radiographs only" in detail and "--allow_any_modality" not in detail  # the service's own advice
    assert res.json()["request_id"] in caplog.text  # logged by its request id...
    for secret in (PATIENT, "MRN-9911", "CompressedSamples", "ct.dcm"):  # ...never by name or DICOM attribute
        assert secret not in caplog.text and secret not in res.text


@pytest.mark.parametrize(
    ("kwargs", "words"),
    [
        ({"files": {"image": ("x.png", b"\x89PNG\r\n\x1a\n", "image/png")}}, "field 'file'"),
        ({"json": {"file": "x.png"}}, "multipart/form-data"),
    ],
    ids=["other-field", "not-multipart"],
)
def test_a_request_without_a_file_says_how_to_send_one(service, kwargs, words) -> None:
    client, _ = service
    res = client.post("/predict", **kwargs)
    assert res.status_code == 400 and words in res.json()["detail"]


def test_nothing_is_written_outside_the_work_folder(service, xrays, tmp_path, monkeypatch) -> None:
    client, _ = service
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))  # where Python's temporary files would go
    big = xrays["png8"].read_bytes() + b"\x00" * 1_500_000  # larger than Starlette's in-memory spool (1 MB)
    assert _post(client, big).status_code == 200
    assert not list(tmp_path.iterdir())


def test_results_are_deleted_after_the_retention_time(service, xrays) -> None:
    client, svc = service
    answer = _post(client, xrays["png8"].read_bytes()).json()
    rid = answer["request_id"]
    assert client.get(answer["links"]["overlay"]).status_code == 200
    assert svc.sweep(now=time.time() + svc.settings.retention_s + 1) >= 7
    assert not list(svc.results.glob(f"{rid}*"))
    gone = client.get(answer["links"]["overlay"])
    assert gone.status_code == 404 and "deleted" in gone.json()["detail"]


def test_a_running_service_deletes_results_by_itself(service, xrays) -> None:
    from clinic.service import ServiceSettings, create_app

    _, svc = service
    settings = ServiceSettings(work_dir=svc.settings.work_dir, retention_s=1)  # the same engine, kept for 1 s
    with TestClient(create_app(settings, svc.engine)) as client:
        answer = _post(client, xrays["png8"].read_bytes()).json()
        deadline = time.time() + 10
        while list(svc.results.glob(f"{answer['request_id']}*")) and time.time() < deadline:
            time.sleep(0.2)
        assert not list(svc.results.glob(f"{answer['request_id']}*"))


@pytest.mark.parametrize("name", ["..%2F..%2Fetc%2Fpasswd", "x.png", "0" * 32 + "_secret.txt"])
def test_only_result_files_are_served(service, name) -> None:
    client, _ = service
    assert client.get(f"/results/{name}").status_code == 404


def test_requests_are_queued_one_at_a_time_and_refused_past_the_bound(service, xrays) -> None:
    client, svc = service
    data = xrays["png8"].read_bytes()
    answers: list = []
    threads = [threading.Thread(target=lambda: answers.append(_post(client, data))) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert [a.status_code for a in answers] == [200] * 3
    assert len({a.json()["request_id"] for a in answers}) == 3
    svc.pending = svc.settings.max_pending  # as if that many were in /predict
    try:
        res = _post(client, data)
    finally:
        svc.pending = 0
    assert res.status_code == 503 and "busy" in res.json()["detail"] and res.headers["retry-after"]


def test_the_viewer_and_openapi_pages_load_nothing_from_elsewhere(service) -> None:
    from clinic.service import STATIC

    client, _ = service
    page = client.get("/")
    assert page.status_code == 200 and "default-src 'self'" in page.headers["content-security-policy"]
    for path in STATIC.iterdir():
        text = path.read_text()
        assert not re.search(r"(https?:)?//(?!www\.w3\.org/2000/svg)[\w.-]+\.\w+/", text), path.name  # no URL
        assert client.get(f"/static/{path.name}").status_code == 200
    docs = client.get("/docs").text
    assert "cdn" not in docs.lower() and "/static-docs/swagger-ui-bundle.js" in docs
    assert client.get("/static-docs/swagger-ui-bundle.js").status_code == 200
    body = client.get("/openapi.json").json()["paths"]["/predict"]["post"]["requestBody"]
    assert "file" in body["content"]["multipart/form-data"]["schema"]["properties"]


def test_command_line_settings() -> None:
    from clinic.service import parse_args

    host, port, settings = parse_args(["--port", "9000", "--max-upload-mb", "5", "--set", "max_pixels=100"])
    assert (host, port) == ("127.0.0.1", 9000)
    assert settings.max_upload_bytes == 5_000_000 and settings.overrides == {"max_pixels": 100}
    assert settings.retention_s == 3600 and settings.max_pending == 4
    with pytest.raises(SystemExit):
        parse_args(["--set", "no-equals-sign"])
