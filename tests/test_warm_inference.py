"""The warm engine (clinic.engine.WarmInference) gives what the inference command gives, file by file, and survives
bad files."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import pytest

from tests.test_inference import CONFIG, DETECT, ENV, META

STEM_KEYS = ("region_mask", "heatmap", "overlay")  # file names: <stem>_region.png... differ between the two runs


@pytest.fixture(scope="module")
def warm(models, tmp_path_factory):
    from clinic.engine import WarmInference

    return WarmInference(tmp_path_factory.mktemp("warm"), models, device="cpu", overrides={DETECT.lstrip("-"): 0.0})


def _without_names(record: dict) -> dict:
    return {k: v for k, v in record.items() if k not in (*STEM_KEYS, "image")}


def test_warm_records_equal_the_command_line(warm, models, inputs, tmp_path) -> None:
    out = tmp_path / "cli"
    cmd = [sys.executable, "-m", "monai.bundle", "run", "--config_file", str(CONFIG), "--meta_file", str(META)]
    cmd += ["--input_dir", str(inputs), "--output_dir", str(out), "--models_dir", str(models), DETECT, "0.0"]
    result = subprocess.run(cmd, capture_output=True, text=True, env={**ENV, "CUDA_VISIBLE_DEVICES": ""}, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    for i, name in enumerate(["xray0", "xray1", "xray0"]):  # the same file twice: a warm engine keeps no state
        record = warm.predict(inputs / f"{name}.png", stem=f"call{i}")
        expected = json.loads((out / f"{name}.json").read_text())
        assert _without_names(record) == _without_names(expected), name  # same code, same device: equal
        assert record["image"] == f"call{i}" and record["overlay"] == f"call{i}_overlay.png"
        assert (warm.output_dir / f"call{i}.json").is_file() and (warm.output_dir / record["overlay"]).is_file()


def test_a_bad_file_gives_an_error_record_and_the_next_call_works(warm, inputs, tmp_path) -> None:
    record = warm.predict(inputs / "broken.png", stem="bad", name="upload-1")
    assert set(record) == {"image", "error"} and record["error"].startswith("upload-1: ")
    assert str(inputs) not in record["error"]  # never the path on this machine
    missing = warm.predict(tmp_path / "gone.png", stem="gone")
    assert "error" in missing
    copy = tmp_path / "again.png"
    shutil.copy(inputs / "xray1.png", copy)
    assert "error" not in warm.predict(copy, stem="good")


def test_info_reports_the_operating_points(warm) -> None:
    info = warm.info()
    assert info["thresholds"] == {"suspicious": 0.4, "fracture": 0.4} and info["threshold"] == 0.4
    assert info["device"] == "cpu" and info["bundle_version"]


def test_a_failing_call_does_not_spoil_the_next(warm, inputs, monkeypatch) -> None:
    """An exception inside the workflow (e.g. out of memory) reaches the caller; the next call runs for real."""
    inferer = warm.evaluator.inferer
    original = type(inferer).__call__

    def broken(self, *args, **kwargs):
        raise MemoryError("simulated")

    monkeypatch.setattr(type(inferer), "__call__", broken)
    with pytest.raises(MemoryError):
        warm.predict(inputs / "xray0.png", stem="fails")
    monkeypatch.setattr(type(inferer), "__call__", original)
    record = warm.predict(inputs / "xray1.png", stem="after")
    assert record["image"] == "after" and "error" not in record and record["fracture_probability"] is not None
