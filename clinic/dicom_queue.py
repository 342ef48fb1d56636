"""The DICOM node's persistent queue: folders on disk, so that nothing received is lost on a crash or a restart.

One item a received image, named by a queue id (its receipt time in UTC and a hash of its SOP Instance UID, so that
names sort in arrival order and tell nothing about the patient). An item moves through folders by atomic renames::

    inbox/<id>.dcm        received (written and fsync'ed before the C-STORE is acknowledged), waiting for inference
    outbox/<id>/          inference done: the SC and SR to send and record.json; each file removed once stored
    done/<id>.json        results stored at the destination: the record with its timings (no image, no identity)
    refused/<id>.json     not assessed (a CT, a colour image...): the one-line reason
    failed/<id>.json      inference kept failing or gave no DICOM, or the destination kept refusing the results;
    failed/<id>.dcm       with the received image (when inference failed) or
    failed/<id>/          the outbox folder (when the destination refused), for an operator to resend: ``resend_failed``

``recover`` (called on start) removes what a crash can leave half-written (``*.part`` files, ``staging/``) and
finishes moves that a crash interrupted; everything else resumes where it stood.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

from scripts.checkpoint import atomic_replace, atomic_write_text, fsync_dir

FOLDERS = ("inbox", "staging", "outbox", "done", "refused", "failed")


def uid_hash(uid: str) -> str:
    """A short, stable stand-in for a UID in logs and names (``sha256``, 12 hex digits): never the UID itself."""
    return hashlib.sha256(str(uid).strip().encode()).hexdigest()[:12]


def write_json(path: Path, data: dict[str, Any]) -> None:
    """Write ``data`` to ``path`` atomically and durably (``scripts.checkpoint.atomic_write_text``, through a
    ``.part`` file that ``recover`` removes if a crash leaves one)."""
    atomic_write_text(path, json.dumps(data, indent=1, default=str), path.with_name(path.name + ".part"))


class DicomQueue:
    """The folders under ``root`` (see the module's docstring); safe to use from the receiver and two workers."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)
        for name in FOLDERS:
            (self.root / name).mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._moves = threading.RLock()  # closing an item and resending failed/ never interleave
        self._last = 0  # the microseconds of the last id

    def folder(self, name: str) -> Path:
        """One of ``FOLDERS``."""
        return self.root / name

    def new_id(self, sop_instance_uid: str) -> str:
        """A queue id that sorts after every earlier one: ``<UTC time to the microsecond>-<uid_hash>``."""
        with self._lock:  # a clock that stepped back (or the same microsecond): one microsecond after the last id
            self._last = max(int(time.time() * 1e6), self._last + 1)
            seconds, micro = divmod(self._last, 1_000_000)
            return time.strftime("%Y%m%dT%H%M%S", time.gmtime(seconds)) + f".{micro:06d}Z-" + uid_hash(sop_instance_uid)

    @staticmethod
    def received_at(qid: str) -> float:
        """The receipt time (seconds since the epoch) that ``qid`` holds."""
        import calendar

        stamp, micro = qid.split("-")[0].rstrip("Z").split(".")
        return calendar.timegm(time.strptime(stamp, "%Y%m%dT%H%M%S")) + int(micro) / 1e6

    def add(self, sop_instance_uid: str, write: Callable[[IO[bytes]], None]) -> str:
        """Store one received image durably (``write`` fills the file) and return its queue id.

        The file is complete, fsync'ed and renamed into ``inbox/`` before this returns: only then may the sender be
        told it was stored. On any error nothing is queued and the error propagates.
        """
        qid = self.new_id(sop_instance_uid)
        final = self.folder("inbox") / f"{qid}.dcm"
        part = final.with_name(final.name + ".part")
        try:
            with open(part, "wb") as f:
                write(f)
            atomic_replace(part, final)  # fsync, rename, fsync of inbox/
        except BaseException:
            part.unlink(missing_ok=True)
            raise
        return qid

    def pending(self) -> list[str]:
        """Queue ids waiting for inference, oldest first."""
        return sorted(p.name[: -len(".dcm")] for p in self.folder("inbox").glob("*.dcm"))

    def image(self, qid: str) -> Path:
        """The received image of a pending item."""
        return self.folder("inbox") / f"{qid}.dcm"

    def to_outbox(self, qid: str, files: list[Path], record: dict[str, Any]) -> Path:
        """Inference done: ``files`` (SC and SR) and ``record.json`` go into ``outbox/<qid>/``; the image goes."""
        staging = self.folder("staging") / qid
        shutil.rmtree(staging, ignore_errors=True)
        staging.mkdir()
        for path in files:
            shutil.move(str(path), staging / path.name)
            with open(staging / path.name, "rb") as f:
                os.fsync(f.fileno())
        write_json(staging / "record.json", record)
        fsync_dir(staging)
        target = self.folder("outbox") / qid
        os.replace(staging, target)
        fsync_dir(target.parent)
        self._drop_image(qid)
        return target

    def close(self, qid: str, state: str, record: dict[str, Any]) -> Path:
        """End an item in ``done``, ``refused`` or ``failed`` with ``record``; its image and outbox folder go, into
        ``failed/`` for ``failed`` (to be resent)."""
        if state not in ("done", "refused", "failed"):
            raise ValueError(f"unknown final state '{state}' (expected done, refused or failed)")
        path = self.folder(state) / f"{qid}.json"
        with self._moves:
            write_json(path, record)
            if state == "failed":
                self._set_aside(qid)
            self._drop_image(qid)
            shutil.rmtree(self.folder("outbox") / qid, ignore_errors=True)
        return path

    def resend_failed(self) -> list[str]:
        """Put what ``failed/`` kept back in the queue (an image into ``inbox/``, results into ``outbox/``); its ids.

        Safe while the node runs (an item being closed finishes first). The record goes first, so that a crash
        halfway leaves the files in ``failed/``.
        """
        with self._moves:
            return self._resend_failed()

    def _resend_failed(self) -> list[str]:
        failed = self.folder("failed")
        ids = sorted({p.stem for p in failed.glob("*.dcm")} | {p.name for p in failed.iterdir() if p.is_dir()})
        for qid in ids:
            (failed / f"{qid}.json").unlink(missing_ok=True)
            fsync_dir(failed)
            if (failed / qid).is_dir():
                os.replace(failed / qid, self.folder("outbox") / qid)
                fsync_dir(self.folder("outbox"))
            if (failed / f"{qid}.dcm").is_file():
                os.replace(failed / f"{qid}.dcm", self.image(qid))
                fsync_dir(self.folder("inbox"))
        return ids

    def outbox(self) -> list[str]:
        """Queue ids whose results wait to be sent, oldest first."""
        return sorted(p.name for p in self.folder("outbox").iterdir() if p.is_dir())

    def results(self, qid: str) -> list[Path]:
        """The DICOM files of ``outbox/<qid>/`` still to send (the SC before the SR that references it)."""
        return sorted((self.folder("outbox") / qid).glob("*.dcm"), key=lambda p: (not p.name.endswith("_sc.dcm"), p))

    def record(self, qid: str) -> dict[str, Any]:
        """The record kept with an outbox item."""
        return json.loads((self.folder("outbox") / qid / "record.json").read_text())

    def sent(self, path: Path) -> None:
        """One result file was stored at the destination: it is not sent again."""
        path.unlink()
        fsync_dir(path.parent)

    def recover(self) -> dict[str, int]:
        """Tidy up after a crash (see the module's docstring); return how many items wait in inbox and outbox."""
        for part in self.root.glob("*/*.part"):
            part.unlink()
        for leftover in self.folder("staging").iterdir():
            shutil.rmtree(leftover, ignore_errors=True)
        closed = {p.stem for state in ("done", "refused", "failed") for p in self.folder(state).glob("*.json")}
        moved = set(self.outbox())
        failed = {p.stem for p in self.folder("failed").glob("*.json")}
        for qid in (set(self.pending()) | moved) & failed:  # a crash while setting a failed item aside
            self._set_aside(qid)
        for qid in self.pending():
            if qid in closed or qid in moved:  # a crash between the move and dropping the image
                self._drop_image(qid)
        for qid in moved & closed:  # a crash between closing and removing the outbox folder
            shutil.rmtree(self.folder("outbox") / qid, ignore_errors=True)
        return {"inbox": len(self.pending()), "outbox": len(self.outbox())}

    def _set_aside(self, qid: str) -> None:
        """Move a failed item's image and outbox folder into ``failed/`` (what is already there stays)."""
        failed = self.folder("failed")
        for source, target in ((self.image(qid), failed / f"{qid}.dcm"), (self.folder("outbox") / qid, failed / qid)):
            if source.exists() and not target.exists():
                os.replace(source, target)
                fsync_dir(source.parent)
                fsync_dir(failed)

    def _drop_image(self, qid: str) -> None:
        image = self.image(qid)
        if image.exists():
            image.unlink()
            fsync_dir(image.parent)
