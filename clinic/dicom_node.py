"""The DICOM node: a PACS sends lateral head X-rays by C-STORE, the node sends back the findings as DICOM.

::

    PACS / modality --C-STORE--> Storage SCP (AE NASALFX) --fsync--> inbox/ --> one inference worker (WarmInference)
                                                                                      |
    PACS (--forward) <--C-STORE SC + SR, retried with back-off-- forwarder <-- outbox/ (SC + SR)

- The Storage SCP takes Computed Radiography, Digital X-Ray (for presentation and for processing) and Secondary
  Capture in the usual transfer syntaxes, and answers C-ECHO. Every other storage SOP class is negotiated too, so
  that each image sent by mistake gets a clear answer: the input guard (``scripts.input_guard.refusal``: SOP class,
  modality, body part, colour, frames) refuses it with status 0122 (SOP class not supported) or C000 and the reason
  in Error Comment, and the node logs that reason, one line an image.
- An accepted image is written to disk and fsync'ed (``clinic.dicom_queue``) before the C-STORE is answered, so a
  sender whose C-STORE succeeded never needs to send it again: a busy node queues, a restarted node resumes.
- One worker thread runs the queue through the bundle's inference (``clinic.engine.WarmInference``, models loaded
  once, in the background while the SCP already receives) with DICOM outputs in the identity mode for PACS use:
  the SC and SR join the source study with its patient and study modules. An image whose inference fails is tried
  again after ``--retry-interval`` (doubling) while later images go ahead, and set aside in ``failed/`` (with the
  image) after ``--max-infer-attempts`` failures.
- A forwarder thread sends each item's SC and SR by C-STORE to ``--forward AET@host:port``; while the destination
  is unreachable it retries with a doubling interval (``--retry-interval`` up to ``--max-retry-interval``) and
  never gives up; a destination that answers with a failure status is retried ``--max-attempts`` times, then the
  item is set aside in ``failed/`` (with its SC and SR). ``--resend-failed`` puts what ``failed/`` holds back in the
  queue. A worker that stops unexpectedly is logged as CRITICAL and stops the node (exit status 1).

Logs name images by queue id and a hash of their SOP Instance UID, never by a patient's name, ID or birth date.
"""

from __future__ import annotations

import argparse
import logging
import re
import signal
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.filewriter import write_file_meta_info
from pydicom.uid import (
    JPEG2000,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGBaseline8Bit,
    JPEGExtended12Bit,
    JPEGLossless,
    JPEGLosslessSV1,
    JPEGLSLossless,
    JPEGLSNearLossless,
    RLELossless,
)
from pynetdicom import AE, AllStoragePresentationContexts, evt
from pynetdicom.sop_class import Verification

from scripts.input_guard import RADIOGRAPH_SOP_CLASSES, refusal

from .dicom_queue import DicomQueue, uid_hash

logger = logging.getLogger("clinic.dicom_node")

UNCOMPRESSED = [ImplicitVRLittleEndian, ExplicitVRLittleEndian, DeflatedExplicitVRLittleEndian, ExplicitVRBigEndian]
TRANSFER_SYNTAXES = UNCOMPRESSED + [
    JPEGBaseline8Bit,
    JPEGExtended12Bit,
    JPEGLossless,
    JPEGLosslessSV1,
    JPEGLSLossless,
    JPEGLSNearLossless,
    JPEG2000Lossless,
    JPEG2000,
    RLELossless,
]
SUCCESS, NOT_SUPPORTED, REFUSED, OUT_OF_RESOURCES, FAILED = 0x0000, 0x0122, 0xC000, 0xA700, 0xC001
WARNINGS = (0x0001, 0x0107, 0x0116, 0xB000, 0xB006, 0xB007)  # stored, with a warning: counts as stored
AET_PATTERN = re.compile(r"^[ -\[\]-~]{1,16}$")  # 1-16 printable characters, no backslash


class ForwardError(Exception):
    """The results could not be stored at the destination; ``refused`` when it answered with a failure status."""

    def __init__(self, message: str, refused: bool = False) -> None:
        super().__init__(message)
        self.refused = refused


@dataclass(frozen=True)
class Destination:
    """Where results are sent by C-STORE: ``AET@host:port``."""

    aet: str
    host: str
    port: int

    @classmethod
    def parse(cls, text: str) -> Destination:
        """``"ORTHANC@10.0.0.5:4242"`` -> Destination; a one-line ``ValueError`` for anything else."""
        match = re.fullmatch(r"(?P<aet>[^@]+)@(?P<host>[^:@]+|\[[0-9a-fA-F:]+\]):(?P<port>\d{1,5})", text.strip())
        if not match or not AET_PATTERN.match(match["aet"]) or not 0 < int(match["port"]) < 65536:
            raise ValueError(f"expected AET@host:port (e.g. ORTHANC@10.0.0.5:4242), got '{text}'")
        return cls(match["aet"], match["host"].strip("[]"), int(match["port"]))

    def __str__(self) -> str:
        return f"{self.aet}@{self.host}:{self.port}"


def check_aet(aet: str) -> str:
    """``aet`` if it is a valid AE title (1-16 printable characters, no backslash), else a one-line ``ValueError``."""
    if not AET_PATTERN.match(aet) or not aet.strip():
        raise ValueError(f"AE title must be 1-16 printable characters without a backslash, got '{aet}'")
    return aet


def store_files(
    files: list[Path], destination: Destination, calling_aet: str, timeout: float, on_stored: Callable[[Path], None]
) -> None:
    """Send ``files`` over one association by C-STORE; ``on_stored(path)`` after each one the destination stored.

    Raises ``ForwardError`` (one line) when the destination cannot be reached or refuses a file.
    """
    datasets = [dcmread(path) for path in files]
    ae = AE(ae_title=calling_aet)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = timeout
    ae.connection_timeout = timeout
    for sop_class in dict.fromkeys(ds.SOPClassUID for ds in datasets):
        syntaxes = [ds.file_meta.TransferSyntaxUID for ds in datasets if ds.SOPClassUID == sop_class]
        ae.add_requested_context(sop_class, list(dict.fromkeys([*syntaxes, ExplicitVRLittleEndian])))
    assoc = ae.associate(destination.host, destination.port, ae_title=destination.aet)
    if not assoc.is_established:
        why = "rejected the association" if assoc.is_rejected else "unreachable or aborted"
        raise ForwardError(f"{destination}: {why}")
    try:
        for path, ds in zip(files, datasets, strict=True):
            status = assoc.send_c_store(ds)
            if "Status" not in status:
                raise ForwardError(f"{destination}: no answer to C-STORE (connection lost or timed out)")
            if status.Status != SUCCESS and status.Status not in WARNINGS:
                comment = str(status.get("ErrorComment", "") or "")
                raise ForwardError(f"{destination}: C-STORE failed, status 0x{status.Status:04X} {comment}", True)
            on_stored(path)
    finally:
        if assoc.is_established:
            assoc.release()


class DicomNode:
    """Storage SCP, persistent queue, one inference worker and one forwarder (see the module's docstring).

    Args:
        work_dir: the queue's folders and the engine's scratch outputs; the node resumes whatever it holds.
        engine: a ``WarmInference`` built with ``dicom_out=True, keep_patient_identity=True``, or a function that
            builds one (called once, in the worker thread, so that the SCP receives while the models load).
        forward: where the SC and SR go.
        aet, host, port: the node's own AE title and listening address.
        retry_interval, max_retry_interval: seconds between tries to reach the destination (doubling).
        max_attempts: tries for results that the destination refuses with a failure status before ``failed/``.
        max_infer_attempts: tries for an image whose inference fails (raises) before ``failed/``.
        timeout: seconds for each network step when sending (connection, association, C-STORE answer).
        allowed_callers: AE titles that may associate (others are rejected); None: any.
    """

    def __init__(
        self,
        work_dir: str | Path,
        engine: Any,
        forward: Destination,
        aet: str = "NASALFX",
        host: str = "127.0.0.1",
        port: int = 11112,
        retry_interval: float = 5.0,
        max_retry_interval: float = 300.0,
        max_attempts: int = 20,
        timeout: float = 30.0,
        allowed_callers: list[str] | None = None,
        max_infer_attempts: int = 3,
    ) -> None:
        self.queue = DicomQueue(Path(work_dir) / "queue")
        self._engine_source = engine
        self.engine: Any = engine if hasattr(engine, "predict") else None
        self.forward, self.aet, self.host, self.port = forward, check_aet(aet), host, int(port)
        self.retry_interval, self.max_retry_interval = float(retry_interval), float(max_retry_interval)
        self.max_attempts, self.timeout = int(max_attempts), float(timeout)
        self.max_infer_attempts = max(1, int(max_infer_attempts))
        self.allowed_callers = [check_aet(a) for a in allowed_callers] if allowed_callers else None
        self._stop = threading.Event()
        self._work = threading.Event()  # something new in the inbox
        self._results = threading.Event()  # something new in the outbox
        self._threads: list[threading.Thread] = []
        self._server: Any = None
        self.failure: str | None = None  # set when the engine could not be built or a worker died: the node stops
        self.ready = threading.Event()  # the engine is loaded

    # --- lifecycle ---------------------------------------------------------------------------------------------
    def start(self) -> None:
        """Tidy the queue after a crash, listen, and start the worker and the forwarder."""
        logging.getLogger("pynetdicom").setLevel(logging.WARNING)  # its INFO/DEBUG lines carry UIDs
        waiting = self.queue.recover()
        ae = AE(ae_title=self.aet)
        ae.maximum_pdu_size = 0  # no limit on what the sender's PDUs may hold
        if self.allowed_callers:
            ae.require_calling_aet = self.allowed_callers
        for context in AllStoragePresentationContexts:  # refused image by image, with a reason (see the docstring)
            ae.add_supported_context(context.abstract_syntax, TRANSFER_SYNTAXES)
        ae.add_supported_context(Verification)
        handlers = [(evt.EVT_C_STORE, self._on_store), (evt.EVT_REJECTED, self._on_rejected)]
        self._server = ae.start_server((self.host, self.port), block=False, evt_handlers=handlers)
        if self.port == 0:
            self.port = self._server.server_address[1]
        self._threads = [
            threading.Thread(target=self._guarded, args=(self._infer_loop,), name="nasalfx-infer", daemon=True),
            threading.Thread(target=self._guarded, args=(self._forward_loop,), name="nasalfx-forward", daemon=True),
        ]
        for thread in self._threads:
            thread.start()
        logger.info(
            "DICOM node %s listening on %s:%d, results to %s; queue: %d to infer, %d to send",
            self.aet,
            self.host,
            self.port,
            self.forward,
            waiting["inbox"],
            waiting["outbox"],
        )

    def stop(self, timeout: float = 60.0) -> None:
        """Stop listening and let the worker finish the image in hand; what is queued stays queued."""
        self._stop.set()
        self._work.set()
        self._results.set()
        if self._server is not None:
            self._server.shutdown()
            self._server = None
        for thread in self._threads:
            thread.join(timeout)
        logger.info("DICOM node %s stopped", self.aet)

    @property
    def stopped(self) -> bool:
        """``stop`` was called, or the engine could not be built, or a worker thread died."""
        return self._stop.is_set()

    def _guarded(self, loop: Callable[[], None]) -> None:
        """Run a worker's loop; if it ends while the node runs, log it as CRITICAL and stop the node."""
        try:
            loop()
        except BaseException as err:
            problem = f"raised {type(err).__name__}"
        else:
            problem = "returned"
        if not self._stop.is_set():
            self.failure = f"the {threading.current_thread().name} thread {problem} unexpectedly"
            logger.critical("%s; the node stops, received images stay queued", self.failure)
            self._stop.set()

    def idle(self) -> bool:
        """Nothing waits for inference or sending."""
        return not self.queue.pending() and not self.queue.outbox()

    # --- Storage SCP -------------------------------------------------------------------------------------------
    def _on_rejected(self, event: Any) -> None:
        """Log an association the node rejected: a calling AE title not in ``allowed_callers``."""
        assoc = event.assoc
        logger.warning(
            "rejected an association from %s (%s:%s) calling %s: not an allowed caller (--allow-aet)",
            assoc.requestor.ae_title,
            assoc.requestor.address,
            assoc.requestor.port,
            assoc.acceptor.ae_title,
        )

    def _on_store(self, event: Any) -> Dataset | int:
        """Answer a C-STORE only once the image is on disk (fsync'ed) and queued; refuse what is not assessed."""
        sop_uid = str(event.request.AffectedSOPInstanceUID)
        sender = event.assoc.requestor.ae_title
        try:
            reason = refusal(event.dataset)
        except Exception as err:  # not decodable: nothing to queue
            logger.warning("refused sop#%s from %s: unreadable data set (%s)", uid_hash(sop_uid), sender, type(err))
            return _status(FAILED, "unreadable data set")
        if reason:
            logger.warning("refused sop#%s from %s: not assessed: %s", uid_hash(sop_uid), sender, reason)
            supported = str(event.context.abstract_syntax) in RADIOGRAPH_SOP_CLASSES
            return _status(REFUSED if supported else NOT_SUPPORTED, f"not assessed: {reason}")

        def write(f: IO[bytes]) -> None:
            f.write(b"\x00" * 128 + b"DICM")
            write_file_meta_info(f, event.file_meta, enforce_standard=True)
            f.write(event.request.DataSet.getvalue())

        try:
            qid = self.queue.add(sop_uid, write)
        except OSError as err:
            logger.error("could not store sop#%s (%s): answered Out of Resources", uid_hash(sop_uid), err.strerror)
            return _status(OUT_OF_RESOURCES, "cannot store the image now")
        modality = str(event.dataset.get("Modality", "") or "?")
        logger.info("received %s (%s, sop#%s) from %s", qid, modality, uid_hash(sop_uid), sender)
        self._work.set()
        return SUCCESS

    # --- inference worker --------------------------------------------------------------------------------------
    def _load_engine(self) -> bool:
        if self.engine is None:
            start = time.perf_counter()
            try:
                self.engine = self._engine_source()
            except (Exception, SystemExit) as err:
                self.failure = f"the inference engine could not be built: {err}"
                logger.critical("%s; received images stay queued", self.failure)
                self._stop.set()
                return False
            logger.info("models loaded in %.1f s", time.perf_counter() - start)
        self.ready.set()
        return True

    def _infer_loop(self) -> None:
        if not self._load_engine():
            return
        failures: dict[str, int] = {}
        not_before: dict[str, float] = {}  # queue id -> when its next try may start (monotonic clock)
        while not self._stop.is_set():
            now = time.monotonic()
            pending = self.queue.pending()
            ready = [qid for qid in pending if not_before.get(qid, 0.0) <= now]
            if not ready:  # nothing, or only images waiting for their next try
                waits = [not_before[qid] - now for qid in pending if qid in not_before]
                self._work.wait(min([1.0, *waits]))
                self._work.clear()
                continue
            qid = ready[0]
            try:
                self._infer(qid)
            except Exception as err:  # a bug, a full disk, an image the engine cannot read: later images go ahead
                failures[qid] = tries = failures.get(qid, 0) + 1
                reason = f"inference step failed ({describe(err)})"
                if tries < self.max_infer_attempts:
                    wait = min(self.retry_interval * 2 ** (tries - 1), self.max_retry_interval)
                    not_before[qid] = time.monotonic() + wait
                    logger.error(
                        "%s: %s, try %d of %d; next in %.1f s", qid, reason, tries, self.max_infer_attempts, wait
                    )
                    continue
                try:
                    record = {"queue_id": qid, "received_at": self.queue.received_at(qid), "error": reason}
                    self.queue.close(qid, "failed", record)
                except Exception as close_err:  # a full disk: tried again later
                    not_before[qid] = time.monotonic() + self.max_retry_interval
                    logger.error("%s: could not be set aside (%s)", qid, describe(close_err))
                    continue
                logger.error("%s: set aside in failed/ (with the image) after %d tries: %s", qid, tries, reason)
            failures.pop(qid, None)
            not_before.pop(qid, None)

    def _infer(self, qid: str) -> None:
        start = time.time()
        record = self.engine.predict(self.queue.image(qid), stem=qid, name=qid)
        out = Path(self.engine.output_dir)
        dicom = {key: out / name for key, name in (record.get("dicom") or {}).items()}
        record = {k: v for k, v in record.items() if k not in ("dicom", "image", "overlay", "region_mask", "heatmap")}
        record.update(queue_id=qid, received_at=self.queue.received_at(qid), inferred_at=time.time())
        record["inference_s"] = round(record["inferred_at"] - start, 3)
        if "error" in record:
            self.queue.close(qid, "refused", record)
            logger.warning("%s: %s", qid, record["error"])
        elif "dicom_error" in record or not dicom:
            self.queue.close(qid, "failed", record)
            logger.error("%s: no DICOM results (%s)", qid, record.get("dicom_error", "none written"))
        else:
            self.queue.to_outbox(qid, list(dicom.values()), record)
            logger.info(
                "%s: %s in %.1f s; SC and SR queued for %s", qid, _finding(record), record["inference_s"], self.forward
            )
            self._results.set()
        for leftover in out.glob(f"{qid}*"):  # the JSON and PNGs of this call (the DICOM files were moved)
            leftover.unlink(missing_ok=True)

    # --- forwarder ---------------------------------------------------------------------------------------------
    def _forward_loop(self) -> None:
        delay, attempts = self.retry_interval, {}
        while not self._stop.is_set():
            try:
                waiting = self.queue.outbox()
                if not waiting:
                    self._results.wait(1.0)
                    self._results.clear()
                    continue
                qid = waiting[0]
                try:
                    files = self.queue.results(qid)  # none left: all were stored before a crash or stop
                    if files:
                        store_files(files, self.forward, self.aet, self.timeout, self.queue.sent)
                except ForwardError as err:
                    if err.refused:
                        attempts[qid] = attempts.get(qid, 0) + 1
                        if attempts[qid] >= self.max_attempts:
                            self.queue.close(qid, "failed", {**self.queue.record(qid), "forward_error": str(err)})
                            logger.error(
                                "%s: set aside in failed/ (with its SC and SR) after %d refusals: %s",
                                qid,
                                attempts.pop(qid),
                                err,
                            )
                            delay = self.retry_interval
                            continue
                    logger.warning("%s: results not stored (%s); retry in %.1f s", qid, err, delay)
                    self._stop.wait(delay)
                    delay = min(delay * 2, self.max_retry_interval)
                    continue
                except Exception as err:  # an unreadable result file or a network library error: retried
                    logger.error("%s: sending failed (%s: %s); retry in %.1f s", qid, type(err).__name__, err, delay)
                    self._stop.wait(delay)
                    delay = min(delay * 2, self.max_retry_interval)
                    continue
                delay = self.retry_interval
                attempts.pop(qid, None)
                record = {**self.queue.record(qid), "stored_at": time.time(), "destination": str(self.forward)}
                record["received_to_stored_s"] = round(record["stored_at"] - record["received_at"], 3)
                self.queue.close(qid, "done", record)
                logger.info(
                    "%s: SC and SR stored at %s, %.1f s after receipt",
                    qid,
                    self.forward,
                    record["received_to_stored_s"],
                )
            except Exception as err:  # a full disk while closing an item, an unreadable record...: retried
                logger.error("forwarder: queue step failed (%s); retry in %.1f s", describe(err), delay)
                self._stop.wait(delay)
                delay = min(delay * 2, self.max_retry_interval)


def _status(code: int, comment: str) -> Dataset:
    status = Dataset()
    status.Status = code
    status.ErrorComment = comment[:64]  # LO: 64 characters at most
    return status


def _finding(record: dict[str, Any]) -> str:
    probability = record.get("fracture_probability")
    text = str(record.get("finding", "assessed"))
    return text if probability is None else f"{text} (p={float(probability):.2f})"


def describe(err: BaseException) -> str:
    """One line for an exception that cannot carry patient identity: its type, and for an OS error its reason."""
    reason = getattr(err, "strerror", None) if isinstance(err, OSError) else None
    return f"{type(err).__name__}: {reason}" if reason else type(err).__name__


def build_engine(work_dir: Path, models_dir: str | None, device: str | None) -> Callable[[], Any]:
    """A function that builds the bundle's warm inference for PACS use: DICOM outputs in the identity mode."""

    def build() -> Any:
        from .engine import WarmInference

        return WarmInference(work_dir / "engine", models_dir, device, dicom_out=True, keep_patient_identity=True)

    return build


def main(argv: list[str] | None = None) -> int:
    """``python -m clinic.dicom_node --forward AET@host:port [...]``: run the node until SIGTERM or Ctrl-C."""
    parser = argparse.ArgumentParser(prog="python -m clinic.dicom_node", description=__doc__.split("\n")[0])
    parser.add_argument("--aet", default="NASALFX", help="the node's AE title (default NASALFX)")
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    parser.add_argument("--port", type=int, default=11112, help="port to listen on (default 11112)")
    parser.add_argument("--forward", required=True, help="where results go by C-STORE: AET@host:port")
    parser.add_argument("--work-dir", default="runs/dicom_node", help="the persistent queue (default runs/dicom_node)")
    parser.add_argument("--models-dir", default=None, help="trained weights (default: the bundle's models/)")
    parser.add_argument("--device", default=None, help="torch device (default: CUDA when available, else CPU)")
    parser.add_argument("--retry-interval", type=float, default=5.0, help="first wait before a retry, s (default 5)")
    parser.add_argument("--max-retry-interval", type=float, default=300.0, help="longest wait, s (default 300)")
    parser.add_argument("--max-attempts", type=int, default=20, help="tries for results the destination refuses")
    parser.add_argument("--max-infer-attempts", type=int, default=3, help="tries for an image inference fails on")
    parser.add_argument(
        "--resend-failed", action="store_true", help="put what failed/ holds back in the queue, then run as usual"
    )
    parser.add_argument("--timeout", type=float, default=30.0, help="network timeout when sending, s (default 30)")
    parser.add_argument(
        "--allow-aet", action="append", default=None, help="a calling AE title that may send (repeat; default: any)"
    )
    args = parser.parse_args(argv)
    try:
        forward = Destination.parse(args.forward)
        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
        work_dir = Path(args.work_dir)
        node = DicomNode(
            work_dir,
            build_engine(work_dir, args.models_dir, args.device),
            forward,
            aet=args.aet,
            host=args.host,
            port=args.port,
            retry_interval=args.retry_interval,
            max_retry_interval=args.max_retry_interval,
            max_attempts=args.max_attempts,
            timeout=args.timeout,
            allowed_callers=args.allow_aet,
            max_infer_attempts=args.max_infer_attempts,
        )
        if args.resend_failed:
            logger.info("put back in the queue from failed/: %s", ", ".join(node.queue.resend_failed()) or "nothing")
        node.start()
    except (ValueError, OSError) as err:
        print(f"dicom_node: {err}", file=sys.stderr)
        return 2
    stopping = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stopping.set())
    while not stopping.wait(0.5) and not node.stopped:
        pass
    node.stop()
    if node.failure:
        print(f"dicom_node: {node.failure}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
