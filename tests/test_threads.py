"""CPU threads: both training paths count the cores the same way (``scripts.training.usable_cores``)."""

from __future__ import annotations

import os

import pytest
import torch

from scripts import detector_training, training


@pytest.fixture
def restore_threads():
    """Put torch's thread count back after the test."""
    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)


def test_usable_cores_is_this_process_affinity(monkeypatch):
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 3}, raising=False)
    monkeypatch.setattr(os, "cpu_count", lambda: 16)
    assert training.usable_cores() == 2  # the affinity, not the machine's cores
    monkeypatch.delattr(os, "sched_getaffinity")  # a platform without one (macOS, Windows)
    assert training.usable_cores() == 16
    monkeypatch.setattr(os, "cpu_count", lambda: None)
    assert training.usable_cores() == 1


def test_crop_stages_share_the_cores_between_torchrun_processes(monkeypatch, restore_threads):
    monkeypatch.setattr(training, "usable_cores", lambda: 8)
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "4")
    assert training.set_threads(0) == 2
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "16")
    assert training.set_threads(0) == 1  # never below one thread
    assert training.set_threads(3) == 3  # an explicit count wins
    assert training.set_threads(None) == 3  # None leaves it as it is


def test_detector_uses_every_usable_core_unshared(monkeypatch, restore_threads):
    import ultralytics.utils.torch_utils as tu

    monkeypatch.setattr(tu, "NUM_THREADS", tu.NUM_THREADS)  # restored after the test
    monkeypatch.setattr(detector_training, "usable_cores", lambda: 3)
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "4")  # never shared out: rank 0 trains the detector alone
    assert detector_training.set_threads(None) == 3
    assert torch.get_num_threads() == 3 and tu.NUM_THREADS == 3
    assert detector_training.set_threads(2) == 2
    assert torch.get_num_threads() == 2 and tu.NUM_THREADS == 2
