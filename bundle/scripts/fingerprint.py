"""Fingerprints: short stable hashes of what a cache, a checkpoint folder or a weights file was made from.

A fingerprint is the first 16 hex digits of a sha256 over canonical JSON (sorted keys). It is built from
named **parts** (``{"dataset": ..., "split": ..., "config": ...}``), each itself a fingerprint or a plain
value, so that a mismatch can say *which* input changed. It is recorded in a JSON sidecar next to what
it describes (``models/classifier.pt`` -> ``models/classifier.fingerprint.json``; a folder ->
``<folder>/fingerprint.json``) together with a human-readable ``inputs`` section.

Files are hashed by content (sha256, cached per path, size and mtime); a dataset folder by its
``dataset.csv`` content and the size and mtime of every file it lists (fast for thousands of images;
``content=True`` hashes the images' bytes instead).
"""

from __future__ import annotations

import csv
import hashlib
import json
import logging
import time
from pathlib import Path
from typing import Any

from .imageio import INTENSITY_CONVENTION

logger = logging.getLogger(__name__)
LENGTH = 16
MISSING = "missing"
# stage values that change nothing that was learnt: left out of a stage's fingerprint
# (pretrained_weights: a path; its content is in the classifier's fingerprint_extra, so a moved file retrains nothing)
IGNORED_KEYS = (
    "num_threads",
    "iteration_log",
    "sample_interval",
    "num_samples",
    "checkpoint_interval",
    "pretrained_weights",
)
_FILE_CACHE: dict[tuple[str, int, int], str] = {}


def digest(value: Any) -> str:
    """The fingerprint of a JSON-able value (anything else is hashed by its ``str``)."""
    text = json.dumps(value, sort_keys=True, default=str, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:LENGTH]


def file_sha256(path: str | Path) -> str:
    """The full sha256 of a file's content, or ``"missing"``; cached while its size and mtime are unchanged."""
    path = Path(path)
    if not path.is_file():
        return MISSING
    st = path.stat()
    key = (str(path.resolve()), st.st_size, st.st_mtime_ns)
    if key not in _FILE_CACHE:
        h = hashlib.sha256()
        with open(path, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                h.update(block)
        _FILE_CACHE[key] = h.hexdigest()
    return _FILE_CACHE[key]


def file_fingerprint(path: str | Path) -> str:
    """A file's content fingerprint (the sha256 prefix), or ``"missing"``."""
    sha = file_sha256(path)
    return sha if sha == MISSING else sha[:LENGTH]


def dataset_fingerprint(dataset_dir: str | Path, content: bool = False) -> str:
    """``dataset.csv`` plus every image and mask it lists: size and mtime, or the bytes with ``content=True``."""
    root = Path(dataset_dir)
    csv_path = root / "dataset.csv"
    if not csv_path.is_file():
        return MISSING
    h = hashlib.sha256(csv_path.read_bytes())
    h.update(INTENSITY_CONVENTION.encode())  # how the images load: what was made under another convention is redone
    with open(csv_path, newline="", encoding="utf-8-sig") as f:
        for row in csv.DictReader(f):
            for rel in (row.get("image") or "", row.get("fracture_mask") or ""):
                if not rel.strip():
                    continue
                path = root / rel
                if content:
                    stamp = file_sha256(path)
                elif path.is_file():
                    st = path.stat()
                    stamp = f"{st.st_size}:{st.st_mtime_ns}"
                else:
                    stamp = MISSING
                h.update(f"{rel}\0{stamp}\n".encode())
    return h.hexdigest()[:LENGTH]


def combine(parts: dict[str, Any]) -> str:
    """The fingerprint of named parts."""
    return digest(parts)


def sidecar(path: str | Path) -> Path:
    """Where the fingerprint of ``path`` is recorded: ``<stem>.fingerprint.json`` beside a file, inside a folder.

    A path already ending in ``.fingerprint.json`` is the sidecar itself.
    """
    path = Path(path)
    if path.name.endswith(".fingerprint.json"):
        return path
    if path.is_dir() or not path.suffix:
        return path / "fingerprint.json"
    return path.with_name(f"{path.name.split('.')[0]}.fingerprint.json")


def record(path: str | Path, parts: dict[str, Any], inputs: dict[str, Any] | None = None) -> str:
    """Write the sidecar of ``path`` (its fingerprint, parts and readable inputs, and the file's own content
    fingerprint when ``path`` is a file); return the fingerprint."""
    fp = combine(parts)
    out = sidecar(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    doc = {"fingerprint": fp, "parts": parts, "inputs": inputs or {}, "written": time.strftime("%Y-%m-%d %H:%M:%S")}
    if Path(path).is_file():
        doc["file"] = file_fingerprint(path)
    out.write_text(json.dumps(doc, indent=2, sort_keys=True, default=str))
    return fp


def read(path: str | Path) -> dict | None:
    """The recorded sidecar of ``path``, or None when there is none (or it is unreadable)."""
    try:
        return json.loads(sidecar(path).read_text())
    except (OSError, ValueError):
        return None


def changes(recorded: dict | None, parts: dict[str, Any]) -> list[str]:
    """Names of the parts that differ from a recorded sidecar (``["no fingerprint recorded"]`` without one)."""
    if not recorded or "fingerprint" not in recorded:
        return ["no fingerprint recorded"]
    old = recorded.get("parts") or {}
    diff = sorted(k for k in set(old) | set(parts) if old.get(k) != parts.get(k))
    if not diff and recorded["fingerprint"] != combine(parts):
        diff = ["fingerprint"]
    return diff


def why(recorded: dict | None, parts: dict[str, Any]) -> str:
    """A short reason for a log line: ``""`` if it matches, else e.g. ``"dataset, config changed"``."""
    diff = changes(recorded, parts)
    if not diff:
        return ""
    return diff[0] if diff == ["no fingerprint recorded"] else ", ".join(diff) + " changed"


def matches(path: str | Path, parts: dict[str, Any]) -> tuple[bool, str]:
    """Whether the sidecar of ``path`` records ``parts``; with the reason when it does not."""
    reason = why(read(path), parts)
    return not reason, reason


def without(values: Any, ignored: tuple[str, ...] = IGNORED_KEYS) -> Any:
    """``values`` with the keys in ``ignored`` dropped at every level of nested dicts."""
    if isinstance(values, dict):
        return {k: without(v, ignored) for k, v in values.items() if k not in ignored}
    if isinstance(values, (list, tuple)):
        return [without(v, ignored) for v in values]
    return values


def stage_fingerprint(values: Any, *files: str | Path) -> dict[str, Any]:
    """Parts of a stage's fingerprint: its config values (less ``IGNORED_KEYS``) and its input files by content.

    For a stage config: ``stage_fingerprint: "$scripts.fingerprint.stage_fingerprint(@classifier, @crops_csv)"``;
    ``scripts.resume.resume_checkpoint`` compares these parts with its folder's sidecar.
    """
    return {"config": digest(without(values)), **{f"file:{Path(f).name}": file_fingerprint(f) for f in files}}
