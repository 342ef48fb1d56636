"""A real Orthanc (Debian packages ``orthanc`` and ``orthanc-dicomweb``) that tests start and stop: loopback ports, a
throwaway configuration and storage folder. Missing packages fail the test (``make system-packages`` installs them)."""

from __future__ import annotations

import json
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from tests.servers import free_port, stop_process_group

ORTHANC = Path("/usr/sbin/Orthanc")
DICOMWEB_PLUGIN = Path("/usr/share/orthanc/plugins/libOrthancDicomWeb.so")


class Orthanc:
    """One Orthanc server: DICOM on ``dicom_port`` as AE ``aet``, REST and DICOMweb on ``url``; restartable on the
    same ports and storage (``stop`` then ``start``)."""

    def __init__(self, root: Path, aet: str = "ORTHANC") -> None:
        for path, package in ((ORTHANC, "orthanc"), (DICOMWEB_PLUGIN, "orthanc-dicomweb")):
            if not path.is_file():
                pytest.fail(f"{path} not found: install the Debian package {package} (make system-packages)")
        self.root, self.aet = root, aet
        self.http_port, self.dicom_port = free_port(), free_port()
        self.url = f"http://127.0.0.1:{self.http_port}"
        self.dicomweb = f"{self.url}/dicom-web"
        self.proc: subprocess.Popen | None = None
        root.mkdir(parents=True, exist_ok=True)
        config = {
            "Name": "nasalfx-test",
            "StorageDirectory": str(root / "storage"),
            "IndexDirectory": str(root / "storage"),
            "HttpPort": self.http_port,
            "DicomPort": self.dicom_port,
            "DicomAet": aet,
            "RemoteAccessAllowed": False,
            "AuthenticationEnabled": False,
            "DicomCheckCalledAet": False,
            "DicomAlwaysAllowStore": True,
            "Plugins": [str(DICOMWEB_PLUGIN)],
            "DicomWeb": {"Enable": True, "Root": "/dicom-web/"},
            "StableAge": 1,
            "ConcurrentJobs": 1,
        }
        (root / "orthanc.json").write_text(json.dumps(config, indent=1))

    @property
    def destination(self) -> str:
        """Its address for ``--forward``: ``AET@127.0.0.1:port``."""
        return f"{self.aet}@127.0.0.1:{self.dicom_port}"

    def start(self, timeout: float = 30.0) -> Orthanc:
        """Start the server and wait until its REST API answers."""
        log = open(self.root / "orthanc.log", "a")  # noqa: SIM115 (the process keeps it)
        self.proc = subprocess.Popen(
            [str(ORTHANC), str(self.root / "orthanc.json")],
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        log.close()
        deadline = time.time() + timeout
        while time.time() < deadline:
            try:
                self.get("/system")
                return self
            except OSError:
                if self.proc.poll() is not None:
                    pytest.fail("Orthanc exited: " + (self.root / "orthanc.log").read_text()[-2000:])
                time.sleep(0.1)
        self.stop()
        pytest.fail(f"Orthanc did not answer within {timeout} s")

    def stop(self) -> None:
        """Stop the server (its storage stays)."""
        if self.proc is not None:
            stop_process_group(self.proc)
            self.proc = None

    def request(self, method: str, path: str, body: Any = None, content_type: str = "application/json") -> Any:
        """One REST call; the JSON answer (or raw bytes when it is not JSON)."""
        data = body if isinstance(body, bytes) or body is None else json.dumps(body).encode()
        req = urllib.request.Request(self.url + path, data=data, method=method, headers={"Content-Type": content_type})
        with urllib.request.urlopen(req, timeout=30) as answer:
            raw = answer.read()
        try:
            return json.loads(raw)
        except ValueError:
            return raw

    def get(self, path: str) -> Any:
        return self.request("GET", path)

    def upload(self, path: Path) -> dict[str, Any]:
        """Store a DICOM file through the REST API (as a modality's C-STORE would)."""
        return self.request("POST", "/instances", path.read_bytes(), "application/dicom")

    def series(self, study_uid: str) -> list[dict[str, Any]]:
        """The series of a study (by StudyInstanceUID), each with ``Modality`` and its instances' tags."""
        found = self.request("POST", "/tools/find", {"Level": "Series", "Query": {"StudyInstanceUID": study_uid}})
        out = []
        for series_id in found:
            series = self.get(f"/series/{series_id}")
            tags = [self.get(f"/instances/{i}/simplified-tags") for i in series["Instances"]]
            out.append({"Modality": series["MainDicomTags"].get("Modality"), "instances": tags})
        return out

    def wait_for_modalities(self, study_uid: str, modalities: set[str], timeout: float) -> list[dict[str, Any]]:
        """Wait until the study holds a series of each of ``modalities``; its series (fails the test on timeout)."""
        deadline = time.time() + timeout
        while True:
            try:
                series = self.series(study_uid)
            except (OSError, urllib.error.HTTPError):
                series = []
            if modalities <= {s["Modality"] for s in series}:
                return series
            if time.time() > deadline:
                pytest.fail(f"study has {sorted(s['Modality'] for s in series)} after {timeout} s, not {modalities}")
            time.sleep(0.2)
