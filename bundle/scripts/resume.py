"""Resumption checkpoints that belong to the run they were made by.

A stage's resume folder (``@ckpt_dir``: ``<output_dir>/<stage>/checkpoints``, crop_training.yaml) records the
fingerprint of what its checkpoints were trained from in ``resume.fingerprint.json``. A run resumes only
when that fingerprint matches its own; otherwise the old checkpoints are deleted (with a log line saying
why) and training starts afresh. In a stage config::

    stage_fingerprint: "$scripts.fingerprint.stage_fingerprint(@classifier, @crops_csv)"
    resume_from: "$scripts.resume.resume_checkpoint(@ckpt_dir, @stage_fingerprint)"
"""

from __future__ import annotations

import logging
import re
from pathlib import Path
from typing import Any

from . import fingerprint

logger = logging.getLogger(__name__)
SIDECAR = "resume.fingerprint.json"
_EPOCH = re.compile(r"=(\d+)\.pt$")


def latest_checkpoint(ckpt_dir: str | Path) -> str | None:
    """The checkpoint with the highest epoch (``*=N.pt``) in ``ckpt_dir``, else its newest ``*.pt``, or None."""
    folder = Path(ckpt_dir)
    files = sorted(folder.glob("*.pt")) if folder.is_dir() else []
    by_epoch = [(int(m.group(1)), p) for p in files if (m := _EPOCH.search(p.name))]
    if by_epoch:
        return str(max(by_epoch)[1])
    return str(max(files, key=lambda p: p.stat().st_mtime)) if files else None


def clear_checkpoints(folder: str | Path, reason: str, recursive: bool = False) -> int:
    """Delete the ``*.pt`` files of ``folder`` (and below with ``recursive``); log ``reason``; return the count."""
    folder = Path(folder)
    if not folder.is_dir():
        return 0
    files = sorted(folder.rglob("*.pt") if recursive else folder.glob("*.pt"))
    for path in files:
        path.unlink()
    if files:
        logger.info("%s: deleted %d old checkpoint(s), training from scratch: %s", folder, len(files), reason)
    return len(files)


def resume_checkpoint(ckpt_dir: str | Path, fingerprint_parts: dict[str, Any] | None = None) -> str | None:
    """The checkpoint to resume from in ``ckpt_dir``, or None to start afresh.

    Without ``fingerprint_parts`` any checkpoint is used (the former behaviour). With them, a checkpoint is used
    only when the folder's recorded fingerprint matches; otherwise the folder's checkpoints are deleted. The
    folder then records ``fingerprint_parts`` for the checkpoints this run will write.
    """
    if fingerprint_parts is None:
        return latest_checkpoint(ckpt_dir)
    folder = Path(ckpt_dir)
    found = latest_checkpoint(folder)
    reason = fingerprint.why(fingerprint.read(folder / SIDECAR), fingerprint_parts)
    if found and not reason:
        logger.info(
            "%s: resuming from %s (fingerprint %s)", folder, Path(found).name, fingerprint.combine(fingerprint_parts)
        )
        return found
    if found:
        clear_checkpoints(folder, reason)
    folder.mkdir(parents=True, exist_ok=True)
    fingerprint.record(folder / SIDECAR, fingerprint_parts)
    return None
