"""Resumption checkpoints that belong to the run they were made by.

A stage's resume folder (``@ckpt_dir``: ``<output_dir>/<stage>/checkpoints``, crop_training.yaml) records the
fingerprint of what its checkpoints were trained from in ``resume.fingerprint.json``. A run resumes only
when that fingerprint matches its own; otherwise the old checkpoints are deleted (with a log line saying
why) and training starts afresh. It resumes from the newest checkpoint that loads: a damaged one (truncated by a
kill or a full disk) is skipped with a warning in favour of the one before, and temporary files of an interrupted
write are removed. In a stage config::

    stage_fingerprint: "$scripts.fingerprint.stage_fingerprint(@classifier, @crops_csv)"
    resume_from: "$scripts.resume.resume_checkpoint(@ckpt_dir, @stage_fingerprint)"
"""

from __future__ import annotations

import logging
import re
from pathlib import Path
from typing import Any

from . import fingerprint
from .checkpoint import safe_load

logger = logging.getLogger(__name__)
SIDECAR = "resume.fingerprint.json"
# what a resumption checkpoint holds; part of the folder's fingerprint, so checkpoints of another layout (which
# CheckpointLoader could not load into this run's save_dict) are deleted instead of failing the run
CHECKPOINT_LAYOUT = "save_dict/2 (best_so_far)"
_EPOCH = re.compile(r"=(\d+)\.pt$")


def checkpoint_epoch(path: str | Path) -> int | None:
    """The epoch in a checkpoint's name (``*=N.pt``, as ``CheckpointSaver`` names them), else None."""
    found = _EPOCH.search(Path(path).name)
    return int(found.group(1)) if found else None


def checkpoints_newest_first(ckpt_dir: str | Path) -> list[Path]:
    """The ``*.pt`` files of ``ckpt_dir``: highest epoch (``*=N.pt``) first, then the others newest first."""
    folder = Path(ckpt_dir)
    files = sorted(folder.glob("*.pt")) if folder.is_dir() else []
    by_epoch = sorted(((e, p) for p in files if (e := checkpoint_epoch(p)) is not None), reverse=True)
    others = sorted((p for p in files if checkpoint_epoch(p) is None), key=lambda p: p.stat().st_mtime, reverse=True)
    return [p for _, p in by_epoch] + others


def latest_checkpoint(ckpt_dir: str | Path) -> str | None:
    """The checkpoint with the highest epoch (``*=N.pt``) in ``ckpt_dir``, else its newest ``*.pt``, or None."""
    files = checkpoints_newest_first(ckpt_dir)
    return str(files[0]) if files else None


def loadable_checkpoint(ckpt_dir: str | Path) -> str | None:
    """The newest checkpoint of ``ckpt_dir`` that loads (``weights_only``); damaged ones are skipped with a warning.

    Leftover temporary files of an interrupted atomic write (``.<name>.*.tmp``) are deleted.
    """
    folder = Path(ckpt_dir)
    for tmp in folder.glob(".*.tmp") if folder.is_dir() else []:
        tmp.unlink(missing_ok=True)
    for path in checkpoints_newest_first(folder):
        try:
            safe_load(path)
        except Exception as err:  # truncated zip, not a torch file, refused pickle... (CheckpointError names the file)
            reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
            reason = reason if str(path) in reason else f"{path}: {reason}"
            logger.warning("skipping a damaged checkpoint (an older one is used if there is one): %s", reason)
            continue
        return str(path)
    return None


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

    Without ``fingerprint_parts`` any loadable checkpoint is used (the former behaviour). With them, one is used only
    when the folder's recorded fingerprint matches; otherwise the folder's checkpoints are deleted. The
    folder then records ``fingerprint_parts`` for the checkpoints this run will write.
    """
    if fingerprint_parts is None:
        return loadable_checkpoint(ckpt_dir)
    fingerprint_parts = {**fingerprint_parts, "checkpoint_layout": CHECKPOINT_LAYOUT}
    folder = Path(ckpt_dir)
    found = loadable_checkpoint(folder)
    reason = fingerprint.why(fingerprint.read(folder / SIDECAR), fingerprint_parts)
    if found and not reason:
        logger.info(
            "%s: resuming from %s (fingerprint %s)", folder, Path(found).name, fingerprint.combine(fingerprint_parts)
        )
        return found
    if checkpoints_newest_first(folder):
        clear_checkpoints(folder, reason or "none of them loads")
    folder.mkdir(parents=True, exist_ok=True)
    fingerprint.record(folder / SIDECAR, fingerprint_parts)
    return None
