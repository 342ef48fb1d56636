"""Shared fixtures: tiny phantom datasets built once per session, offline switches for every test."""

from __future__ import annotations

import os

import pytest

os.environ.setdefault("YOLO_OFFLINE", "1")
os.environ.setdefault("YOLO_AUTOINSTALL", "0")
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")


@pytest.fixture(scope="session")
def tiny_dataset(tmp_path_factory):
    """A 48-image phantom dataset (24 patients, about half fractured; both labels in every split) at 256 px."""
    from tools.phantom import write_dataset

    out = tmp_path_factory.mktemp("phantom")
    write_dataset(out, n_images=48, fracture_rate=0.5, seed=3, size=256)
    return out
