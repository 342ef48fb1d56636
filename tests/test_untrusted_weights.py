"""Weights files are data: resumption checkpoints and Ultralytics' own checkpoints that carry code are refused unrun.

(The bundle's weights files, detector.pt included, are covered in test_checkpoint.py and test_detector.py.)
"""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
import torch

from scripts.resume import resume_checkpoint
from scripts.yolo_export import prepare_ultralytics


class _Payload:
    """Unpickling this touches ``marker``: what a malicious weights file would do."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def test_a_resumption_checkpoint_with_code_is_skipped_unrun(tmp_path, caplog) -> None:
    from monai.handlers import CheckpointLoader

    marker = tmp_path / "ran"
    folder = tmp_path / "checkpoints"
    folder.mkdir()
    torch.save({"network": {"w": torch.zeros(1)}}, folder / "checkpoint_epoch=1.pt")
    torch.save({"network": _Payload(marker)}, folder / "checkpoint_epoch=2.pt")
    with caplog.at_level(logging.WARNING):
        assert Path(resume_checkpoint(folder)).name == "checkpoint_epoch=1.pt"
    assert "checkpoint_epoch=2.pt" in caplog.text and not marker.exists()
    net = torch.nn.Linear(1, 1)
    with pytest.raises(Exception, match="Weights only load failed|Unsupported global"):
        CheckpointLoader(str(folder / "checkpoint_epoch=2.pt"), {"network": net})(None)  # MONAI loads weights_only
    assert not marker.exists()


def test_an_ultralytics_checkpoint_with_code_is_refused_unrun(tmp_path, monkeypatch) -> None:
    import ultralytics.nn.tasks
    import ultralytics.utils

    # as if Ultralytics had been imported before the switch was set (it reads it once, at import)
    monkeypatch.setattr(ultralytics.utils, "SAFE_LOAD", False)
    monkeypatch.setattr(ultralytics.nn.tasks, "SAFE_LOAD", False)
    prepare_ultralytics(tmp_path / "ultralytics")
    assert ultralytics.nn.tasks.SAFE_LOAD and ultralytics.utils.SAFE_LOAD
    from ultralytics.nn.tasks import torch_safe_load

    marker = tmp_path / "ran"
    last = tmp_path / "last.pt"
    torch.save({"model": _Payload(marker), "epoch": 3}, last)  # what a resumed detector run would load
    with pytest.raises(Exception):  # noqa: B017 - whatever Ultralytics raises, it must not run the payload
        torch_safe_load(str(last))
    assert not marker.exists()
