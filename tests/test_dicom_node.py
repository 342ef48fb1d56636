"""The DICOM node against a real Orthanc: Orthanc (the PACS) sends DX images to the node by C-STORE, the node runs the
bundle's inference and sends the SC and SR back, and they land in the source study; a CT is refused; results wait
while Orthanc is down and arrive once it is back; a node killed with SIGKILL resumes its queue on restart. No log
line carries the patient's identity or a raw SOP Instance UID."""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pydicom
import pytest
from pydicom.data import get_testdata_file
from pydicom.uid import RLELossless, SecondaryCaptureImageStorage
from pynetdicom import AE
from pynetdicom.sop_class import Verification

from clinic import REPO_ROOT
from clinic.dicom_node import Destination, DicomNode
from tests.servers import free_port, stop_process_group
from tests.test_identity import IDENTITY, _source_dicom
from tests.test_inference import ENV

AET = "NASALFX"
RETRY = {"retry_interval": 0.2, "max_retry_interval": 1.0, "timeout": 5.0}


@pytest.fixture
def node(pacs_engine, orthanc, tmp_path):
    """A node on a free port, forwarding to Orthanc, known to Orthanc as modality ``nasalfx``."""
    dicom_node = DicomNode(tmp_path / "node", pacs_engine, Destination.parse(orthanc.destination), AET, port=0, **RETRY)
    dicom_node.start()
    orthanc.request("PUT", "/modalities/nasalfx", {"AET": AET, "Host": "127.0.0.1", "Port": dicom_node.port})
    yield dicom_node
    dicom_node.stop()


def _xray(folder: Path, index: int, rle: bool = False) -> tuple[Path, pydicom.Dataset]:
    """A phantom lateral head X-ray as a DX image with the fake identity of tests.test_identity (UIDs by index)."""
    from tools.phantom import render_patient

    image = render_patient(100 + index, fracture=index % 2 == 0, n_views=1, size=256)[0].image
    ds = _source_dicom(image, index)
    if rle:
        ds.compress(RLELossless, encoding_plugin="pydicom")
    path = folder / f"xray{index}.dcm"
    ds.save_as(path, enforce_file_format=True)
    return path, ds


def _send(port: int, *datasets: pydicom.Dataset) -> list[tuple[int, str]]:
    """C-STORE ``datasets`` to the node as a modality would; their statuses and error comments."""
    ae = AE(ae_title="MODALITY")
    for ds in datasets:
        ae.add_requested_context(ds.SOPClassUID, ds.file_meta.TransferSyntaxUID)
    assoc = ae.associate("127.0.0.1", port, ae_title=AET)
    assert assoc.is_established
    try:
        answers = [assoc.send_c_store(ds) for ds in datasets]
    finally:
        assoc.release()
    return [(a.Status, str(a.get("ErrorComment", ""))) for a in answers]


def _assert_no_identity(caplog, *datasets: pydicom.Dataset) -> None:
    text = "\n".join(record.getMessage() for record in caplog.records)
    assert text  # the node did log
    needles = [*IDENTITY.values(), "ZZTESTNAME"] + [str(ds.SOPInstanceUID) for ds in datasets]
    for needle in needles:
        assert needle.lower() not in text.lower(), f"{needle} appears in the log"


def _wait(condition, timeout: float, what: str) -> None:
    deadline = time.time() + timeout
    while not condition():
        if time.time() > deadline:
            pytest.fail(f"{what}: not within {timeout} s")
        time.sleep(0.1)


def test_pacs_sends_images_and_gets_sc_and_sr_in_the_same_study(node, orthanc, tmp_path, caplog) -> None:
    caplog.set_level(logging.DEBUG)
    ae = AE(ae_title="MODALITY")
    ae.add_requested_context(Verification)
    assoc = ae.associate("127.0.0.1", node.port, ae_title=AET)
    assert assoc.is_established and assoc.send_c_echo().Status == 0x0000
    assoc.release()

    sources = [_xray(tmp_path, 1), _xray(tmp_path, 2, rle=True)]  # explicit VR little endian and RLE lossless
    ids = [orthanc.upload(path)["ID"] for path, _ in sources]
    answer = orthanc.request("POST", "/modalities/nasalfx/store", {"Resources": ids, "Synchronous": True})
    assert answer["FailedInstancesCount"] == 0 and answer["InstancesCount"] == 2

    for _, ds in sources:
        series = orthanc.wait_for_modalities(ds.StudyInstanceUID, {"DX", "OT", "SR"}, timeout=60)
        assert sorted(s["Modality"] for s in series) == ["DX", "OT", "SR"]  # one SC and one SR, in the source study
        results = {s["Modality"]: s["instances"][0] for s in series if s["Modality"] != "DX"}
        assert results["OT"]["SOPClassUID"] == SecondaryCaptureImageStorage  # the SC of the overlay, Modality OT
        for tags in results.values():
            assert tags["StudyInstanceUID"] == ds.StudyInstanceUID
            assert tags["PatientID"] == IDENTITY["PatientID"] and tags["PatientName"] == IDENTITY["PatientName"]
            assert "NOT FOR DIAGNOSTIC USE" in tags["SeriesDescription"]
    _wait(node.idle, 10, "queue empty")
    done = sorted((node.queue.folder("done")).glob("*.json"))
    assert len(done) == 2
    seconds = [json.loads(p.read_text())["received_to_stored_s"] for p in done]
    print(f"\nC-STORE received -> SC and SR stored in Orthanc (tiny weights): {seconds} s")
    assert not any(node.queue.folder("inbox").iterdir())  # the received images are not kept
    _assert_no_identity(caplog, *(ds for _, ds in sources))


def test_a_ct_is_refused_with_its_reason_logged(node, caplog) -> None:
    caplog.set_level(logging.INFO)
    ct = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
    [(status, comment)] = _send(node.port, ct)  # CT Image Storage
    assert status == 0x0122 and comment.startswith("not assessed: Modality CT is not a radiograph")

    ct.SOPClassUID = ct.file_meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage  # a CT saved as SC
    [(status, comment)] = _send(node.port, ct)
    assert status == 0xC000 and comment.startswith("not assessed: Modality CT is not a radiograph")
    refusals = [r.getMessage() for r in caplog.records if r.getMessage().startswith("refused sop#")]
    assert len(refusals) == 2 and all("not assessed: Modality CT is not a radiograph" in line for line in refusals)
    assert not node.queue.pending() and not node.queue.outbox()
    assert str(ct.SOPInstanceUID) not in caplog.text


def test_results_wait_while_orthanc_is_down_and_arrive_when_it_is_back(node, orthanc, tmp_path, caplog) -> None:
    caplog.set_level(logging.INFO)
    _, ds = _xray(tmp_path, 3)
    orthanc.stop()
    try:
        assert _send(node.port, ds) == [(0x0000, "")]  # the node takes the image while the destination is down
        _wait(lambda: "results not stored" in caplog.text, 60, "a failed send to the stopped Orthanc")
        assert len(node.queue.outbox()) == 1
        time.sleep(1.5)  # a few more retries
    finally:
        orthanc.start()
    series = orthanc.wait_for_modalities(ds.StudyInstanceUID, {"OT", "SR"}, timeout=30)
    assert sorted(s["Modality"] for s in series) == ["OT", "SR"]
    _wait(node.idle, 10, "queue empty")
    _assert_no_identity(caplog, ds)


def test_a_killed_node_resumes_its_queue_on_restart(pacs_engine, models, orthanc, tmp_path, caplog) -> None:
    """The command-line node takes an image, is killed with SIGKILL before it could send anything (its destination
    is a closed port), and a new node on the same work folder sends the results to Orthanc."""
    work, port = tmp_path / "node", free_port()
    cmd = [sys.executable, "-m", "clinic.dicom_node", "--aet", AET, "--port", str(port), "--work-dir", str(work)]
    cmd += ["--forward", f"NOBODY@127.0.0.1:{free_port()}", "--models-dir", str(models), "--device", "cpu"]
    env = {**ENV, "PYTHONPATH": f"{REPO_ROOT / 'bundle'}:{REPO_ROOT}", "CUDA_VISIBLE_DEVICES": ""}
    log = tmp_path / "node.log"
    with open(log, "w") as out:
        proc = subprocess.Popen(
            cmd, cwd=REPO_ROOT, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )
    _, ds = _xray(tmp_path, 4)
    try:
        _wait(lambda: "listening on" in log.read_text() or proc.poll() is not None, 90, "the node listening")
        assert proc.poll() is None, log.read_text()[-3000:]
        assert _send(port, ds) == [(0x0000, "")]
    finally:
        stop_process_group(proc, signal.SIGKILL)
    assert f"listening on 127.0.0.1:{port}" in log.read_text()
    queue = work / "queue"
    waiting = list((queue / "inbox").glob("*.dcm")) + list((queue / "outbox").iterdir())
    assert len(waiting) == 1 and not list((queue / "done").iterdir())
    (queue / "inbox" / "half-written.dcm.part").write_bytes(b"\0" * 10)  # what a crash mid-receipt leaves

    caplog.set_level(logging.INFO)
    restarted = DicomNode(work, pacs_engine, Destination.parse(orthanc.destination), AET, port=0, **RETRY)
    restarted.start()
    try:
        series = orthanc.wait_for_modalities(ds.StudyInstanceUID, {"OT", "SR"}, timeout=60)
        assert sorted(s["Modality"] for s in series) == ["OT", "SR"]
        _wait(restarted.idle, 10, "queue empty")
    finally:
        restarted.stop()
    assert not (queue / "inbox" / "half-written.dcm.part").exists()
    assert "queue: 1 to infer, 0 to send" in caplog.text or "queue: 0 to infer, 1 to send" in caplog.text
    for text in (caplog.text, log.read_text()):
        for needle in (*IDENTITY.values(), str(ds.SOPInstanceUID)):
            assert needle not in text


def test_an_outbox_item_whose_results_were_all_stored_is_closed(pacs_engine, orthanc, tmp_path) -> None:
    """A crash after the last C-STORE and before the item was closed: the restarted node closes it, sends nothing."""
    from clinic.dicom_queue import DicomQueue, write_json

    queue = DicomQueue(tmp_path / "node" / "queue")
    qid = queue.new_id("1.2.3")
    (queue.folder("outbox") / qid).mkdir()
    write_json(queue.folder("outbox") / qid / "record.json", {"queue_id": qid, "received_at": time.time()})
    restarted = DicomNode(tmp_path / "node", pacs_engine, Destination.parse(orthanc.destination), AET, port=0, **RETRY)
    restarted.start()
    try:
        _wait(restarted.idle, 10, "the item closed")
    finally:
        restarted.stop()
    assert (queue.folder("done") / f"{qid}.json").is_file()


def test_only_allowed_callers_may_send(pacs_engine, orthanc, tmp_path, caplog) -> None:
    caplog.set_level(logging.INFO)
    forward = Destination.parse(orthanc.destination)
    guarded = DicomNode(tmp_path / "node", pacs_engine, forward, AET, port=0, allowed_callers=["PACS"], **RETRY)
    guarded.start()
    try:
        for caller, expected in (("MODALITY", False), ("PACS", True)):
            ae = AE(ae_title=caller)
            ae.add_requested_context(Verification)
            assoc = ae.associate("127.0.0.1", guarded.port, ae_title=AET)
            assert assoc.is_established is expected, caller
            if assoc.is_established:
                assoc.release()
    finally:
        guarded.stop()
    assert "rejected an association from MODALITY" in caplog.text


@pytest.mark.parametrize(
    ("text", "problem"),
    [("ORTHANC@host", "expected AET@host:port"), ("@h:1", "expected AET@host:port"), ("A@h:99999", "expected")],
)
def test_bad_forward_addresses_are_one_line_errors(text: str, problem: str) -> None:
    with pytest.raises(ValueError, match=problem):
        Destination.parse(text)
    assert Destination.parse("PACS@10.0.0.5:104") == Destination("PACS", "10.0.0.5", 104)


def test_the_command_refuses_a_bad_forward_address(tmp_path) -> None:
    from clinic.dicom_node import main

    assert main(["--forward", "nowhere", "--work-dir", str(tmp_path)]) == 2
    assert not os.listdir(tmp_path)


class StandInEngine:
    """Stands in for the warm inference: raises (with the patient's name in the message) for the queue ids in
    ``bad``, and answers "not assessed" for the others; ``calls`` lists the queue ids it was given."""

    def __init__(self, output_dir: Path) -> None:
        self.output_dir = output_dir
        self.bad: set[str] = set()
        self.calls: list[str] = []

    def predict(self, path: Path, stem: str, name: str) -> dict:
        self.calls.append(stem)
        if stem in self.bad:
            raise RuntimeError(f"cannot read the image of {IDENTITY['PatientName']}")
        return {"error": "not assessed: stand-in"}


def _outbox_item(queue, source: Path) -> str:
    """An outbox item as inference leaves it: one result file (here the source X-ray itself) and its record."""
    import shutil

    from clinic.dicom_queue import write_json

    qid = queue.new_id(str(pydicom.dcmread(source, stop_before_pixels=True).SOPInstanceUID))
    (queue.folder("outbox") / qid).mkdir()
    shutil.copy(source, queue.folder("outbox") / qid / f"{qid}_sc.dcm")
    write_json(queue.folder("outbox") / qid / "record.json", {"queue_id": qid, "received_at": time.time()})
    return qid


def test_an_image_whose_inference_keeps_failing_is_set_aside_and_later_ones_go_ahead(
    tmp_path, caplog, monkeypatch
) -> None:
    caplog.set_level(logging.INFO)
    engine = StandInEngine(tmp_path)
    nowhere = Destination("NOBODY", "127.0.0.1", free_port())
    node = DicomNode(tmp_path / "node", engine, nowhere, AET, port=0, max_infer_attempts=3, **RETRY)
    drop_image = node.queue._drop_image

    def slow_drop_image(qid: str) -> None:  # widens the window in which a resend meets an item being closed
        time.sleep(0.3)
        drop_image(qid)

    monkeypatch.setattr(node.queue, "_drop_image", slow_drop_image)
    bad, good = (node.queue.add(uid, lambda f: f.write(b"image")) for uid in ("1.2.3.1", "1.2.3.2"))
    engine.bad.add(bad)
    failed = node.queue.folder("failed")
    node.start()
    try:
        # close() writes the record first, then moves the image: wait for both, and for the queue to be empty
        set_aside = (failed / f"{bad}.json", failed / f"{bad}.dcm")
        _wait(lambda: all(p.exists() for p in set_aside) and not node.queue.pending(), 10, "the image set aside")
        assert engine.calls == [bad, good, bad, bad]  # the later image went ahead while the first waited
        assert (node.queue.folder("refused") / f"{good}.json").is_file() and not node.queue.pending()
        assert (failed / f"{bad}.dcm").read_bytes() == b"image"  # kept for the operator to resend
        assert json.loads((failed / f"{bad}.json").read_text())["error"] == "inference step failed (RuntimeError)"

        engine.bad.clear()  # the operator fixed the cause and resends
        assert node.queue.resend_failed() == [bad]
        node._work.set()
        _wait(lambda: (node.queue.folder("refused") / f"{bad}.json").exists(), 10, "the resent image assessed")
        assert not any(failed.iterdir()) and not node.stopped
    finally:
        node.stop()
    assert f"{bad}: set aside in failed/ (with the image) after 3 tries" in caplog.text
    assert IDENTITY["PatientName"] not in caplog.text


def test_a_full_disk_after_sending_does_not_stop_the_forwarder(orthanc, tmp_path, monkeypatch, caplog) -> None:
    caplog.set_level(logging.INFO)
    forward = Destination.parse(orthanc.destination)
    node = DicomNode(tmp_path / "node", StandInEngine(tmp_path), forward, AET, port=0, **RETRY)
    path, ds = _xray(tmp_path, 5)
    qid = _outbox_item(node.queue, path)
    close, calls = node.queue.close, []

    def close_on_a_full_disk(*args, **kwargs):  # the first time only: the results were stored, the record not
        calls.append(args)
        if len(calls) == 1:
            raise OSError(28, "No space left on device", str(node.queue.folder("done") / f"{qid}.json.part"))
        return close(*args, **kwargs)

    monkeypatch.setattr(node.queue, "close", close_on_a_full_disk)
    node.start()
    try:
        _wait(lambda: (node.queue.folder("done") / f"{qid}.json").exists(), 10, "the item closed after the error")
        assert not node.stopped and all(thread.is_alive() for thread in node._threads)
    finally:
        node.stop()
    assert "forwarder: queue step failed (OSError: No space left on device); retry in 0.2 s" in caplog.text
    _assert_no_identity(caplog, ds)


def test_a_worker_thread_that_dies_stops_the_node_with_a_critical_line(tmp_path, monkeypatch, capsys, caplog) -> None:
    from clinic import dicom_node

    def dies(self) -> None:
        raise RuntimeError("a bug")

    monkeypatch.setattr(dicom_node.DicomNode, "_forward_loop", dies)
    monkeypatch.setattr(dicom_node, "build_engine", lambda *_: lambda: StandInEngine(tmp_path))
    monkeypatch.setattr(signal, "signal", lambda *_: None)  # keep pytest's own handlers
    argv = ["--forward", f"PACS@127.0.0.1:{free_port()}", "--port", "0", "--work-dir", str(tmp_path / "node")]
    assert dicom_node.main([*argv, "--max-infer-attempts", "2"]) == 1
    assert "the nasalfx-forward thread raised RuntimeError unexpectedly" in capsys.readouterr().err
    assert [r.levelname for r in caplog.records if "thread raised" in r.getMessage()] == ["CRITICAL"]


def test_results_the_destination_refuses_are_kept_in_failed_and_can_be_resent(tmp_path, caplog) -> None:
    from pynetdicom import AllStoragePresentationContexts, evt

    caplog.set_level(logging.INFO)
    refuse, stored = [True], []

    def on_store(event) -> int:
        if refuse[0]:
            return 0xA700  # Out of Resources: a failure status
        stored.append(event.request.AffectedSOPInstanceUID)
        return 0x0000

    pacs = AE(ae_title="PACS")
    for context in AllStoragePresentationContexts:
        pacs.add_supported_context(context.abstract_syntax)
    server = pacs.start_server(("127.0.0.1", 0), block=False, evt_handlers=[(evt.EVT_C_STORE, on_store)])
    forward = Destination("PACS", "127.0.0.1", server.server_address[1])
    node = DicomNode(tmp_path / "node", StandInEngine(tmp_path), forward, AET, port=0, max_attempts=2, **RETRY)
    first, second = (_outbox_item(node.queue, _xray(tmp_path, index)[0]) for index in (6, 7))
    failed = node.queue.folder("failed")
    node.start()
    try:
        # close() writes the record first, then moves the results folder: wait for both, and for the outbox to empty
        _wait(
            lambda: (
                all((failed / f"{q}.json").exists() and (failed / q).is_dir() for q in (first, second))
                and not node.queue.outbox()
            ),
            10,
            "both set aside",
        )
        for qid in (first, second):
            assert sorted(p.name for p in (failed / qid).iterdir()) == [f"{qid}_sc.dcm", "record.json"]
            assert "status 0xA700" in json.loads((failed / f"{qid}.json").read_text())["forward_error"]
        retries = [r.getMessage() for r in caplog.records if r.getMessage().startswith(f"{second}: results not")]
        assert retries[0].endswith("retry in 0.2 s")  # the interval starts afresh after an item was set aside

        refuse[0] = False
        assert node.queue.resend_failed() == [first, second]
        node._results.set()
        _wait(lambda: all((node.queue.folder("done") / f"{q}.json").exists() for q in (first, second)), 10, "sent")
        assert len(stored) == 2 and not any(failed.iterdir())
    finally:
        node.stop()
        server.shutdown()


def test_queue_ids_keep_their_order_when_the_clock_steps_back(monkeypatch, tmp_path) -> None:
    import threading
    from types import SimpleNamespace

    from clinic import dicom_queue

    queue = dicom_queue.DicomQueue(tmp_path / "queue")
    clock = iter([1000.5, 1000.5, 999.0])  # then 999.0 for ever: an NTP step back of 1.5 s
    fake = {name: getattr(time, name) for name in ("strftime", "gmtime", "strptime", "sleep")}
    monkeypatch.setattr(dicom_queue, "time", SimpleNamespace(**fake, time=lambda: next(clock, 999.0)))
    ids: list[str] = []
    worker = threading.Thread(target=lambda: ids.extend(queue.new_id(f"1.2.{i}") for i in range(4)), daemon=True)
    worker.start()
    worker.join(5)
    assert not worker.is_alive(), "new_id waits for the clock"
    assert ids == sorted(ids) and len(set(ids)) == 4
    assert [round(queue.received_at(q) - 1000.5, 6) for q in ids] == [0, 1e-6, 2e-6, 3e-6]
