"""ONNX Runtime beside eager torch: every inference network gives the same outputs, and the config's runtime switch
gives the same JSON."""

from __future__ import annotations

import os

import pytest
import torch

TOLERANCE = 1e-4  # largest absolute difference allowed, times max(1, largest absolute eager output)


def _close(eager: torch.Tensor, other: torch.Tensor) -> None:
    scale = max(1.0, float(eager.abs().max()))
    assert other.shape == eager.shape
    assert float((eager - other).abs().max()) <= TOLERANCE * scale


def test_each_network_gives_the_same_outputs_in_both_runtimes(models, tmp_path) -> None:
    from scripts.classifier import load_classifier
    from scripts.detector import NasalBoneDetector
    from scripts.masks import load_region_model
    from scripts.onnx_runtime import OnnxModule, for_runtime

    torch.manual_seed(1)
    classifier, _ = load_classifier(models / "classifier.pt")
    generator = load_region_model(models / "gdc2.pt").eval()
    crops = torch.rand(3, 1, 64, 64)  # a batch of 3: the batch dimension is dynamic
    for eager in (classifier.eval(), generator):
        twin = for_runtime(eager, "onnxruntime", (1, 1, 64, 64), cache_dir=tmp_path)
        assert isinstance(twin, OnnxModule) and for_runtime(eager, "torch", (1, 1, 64, 64)) is eager
        with torch.no_grad():
            _close(eager(crops), twin(crops))
    assert twin.region == generator.region  # what region_map reads travels with the twin
    torch_det = NasalBoneDetector(models / "detector.pt", conf=0.0)
    onnx_det = NasalBoneDetector(models / "detector.pt", conf=0.0, runtime="onnxruntime", cache_dir=tmp_path)
    x = torch.rand(1, 3, torch_det.imgsz, torch_det.imgsz)
    with torch.no_grad():
        _close(torch_det.network(x), onnx_det.network(x))
    image = torch.rand(90, 70).numpy()
    (box_t, conf_t), (box_o, conf_o) = torch_det.predict(image), onnx_det.predict(image)
    assert conf_o == pytest.approx(conf_t, abs=1e-4) and box_o == pytest.approx(box_t, abs=1e-2)
    assert len(list(tmp_path.glob("*.onnx"))) == 3  # cached by content: a second build exports nothing
    NasalBoneDetector(models / "detector.pt", runtime="onnxruntime", cache_dir=tmp_path)
    assert len(list(tmp_path.glob("*.onnx"))) == 3


def test_a_cache_other_users_may_write_to_is_not_used(tmp_path, caplog) -> None:
    """A graph planted in a shared cache under the expected name must never be run: the export is made again."""
    from scripts.onnx_runtime import cached_export, content_key, for_runtime

    torch.manual_seed(0)
    net = torch.nn.Conv2d(1, 1, 3).eval()
    shared = tmp_path / "shared"
    shared.mkdir()
    planted = shared / f"conv2d-{content_key(net, (1, 1, 8, 8), True)}.onnx"
    planted.write_bytes(b"not the network")
    shared.chmod(0o777)
    assert isinstance(cached_export(net, (1, 1, 8, 8), cache_dir=shared), bytes)
    assert "writable by other users" in caplog.text and planted.read_bytes() == b"not the network"
    x = torch.rand(1, 1, 8, 8)
    _close(net(x).detach(), for_runtime(net, "onnxruntime", (1, 1, 8, 8), cache_dir=shared)(x))
    private = tmp_path / "private"
    assert cached_export(net, (1, 1, 8, 8), cache_dir=private).parent == private  # created 0700: cached
    assert (private.stat().st_mode & 0o777) == 0o700


def test_the_cache_key_follows_settings_and_is_reused_under_any_umask(tmp_path) -> None:
    """Same weights but other preprocessing (C's mean/std, high-pass) must never share a graph; a cached graph is
    reused (not exported again) whatever the umask."""
    from scripts.classifier import FractureClassifier
    from scripts.onnx_runtime import cached_export, content_key

    torch.manual_seed(0)
    a = FractureClassifier("convnet", "gray", mean=0.0, std=0.0625, highpass_sigma=3.0)
    b = FractureClassifier("convnet", "gray", mean=0.1, std=0.0625, highpass_sigma=3.0)
    c = FractureClassifier("convnet", "gray", mean=0.0, std=0.0625, highpass_sigma=2.0)
    b.load_state_dict(a.state_dict())
    c.load_state_dict(a.state_dict(), strict=False)
    keys = {content_key(net, (1, 1, 64, 64), True) for net in (a, b, c)}
    assert len(keys) == 3
    old = os.umask(0o002)
    try:
        first = cached_export(a, (1, 1, 64, 64), cache_dir=tmp_path / "cache")
        mtime = first.stat().st_mtime_ns
        assert cached_export(a, (1, 1, 64, 64), cache_dir=tmp_path / "cache") == first
        assert first.stat().st_mtime_ns == mtime and (first.stat().st_mode & 0o777) == 0o600
    finally:
        os.umask(old)


def test_an_unknown_runtime_is_refused() -> None:
    from scripts.onnx_runtime import for_runtime

    with pytest.raises(ValueError, match="runtime must be one of"):
        for_runtime(torch.nn.Conv2d(1, 1, 3), "tensorrt", (1, 1, 8, 8))


def test_the_runtime_switch_gives_the_same_json(models, inputs, tmp_path) -> None:
    from clinic.engine import WarmInference
    from tests.test_inference import DETECT

    records = {}
    for runtime in ("torch", "onnxruntime"):
        engine = WarmInference(
            tmp_path / runtime, models, "cpu", overrides={DETECT.lstrip("-"): 0.0, "runtime": runtime}
        )
        records[runtime] = [engine.predict(inputs / f"xray{i}.png", f"x{i}") for i in range(2)]
    for eager, onnx in zip(records["torch"], records["onnxruntime"], strict=True):
        assert set(eager) == set(onnx) and eager["finding"] == onnx["finding"]
        for key in ("logit", "fracture_probability", "detector_confidence"):
            assert onnx[key] == pytest.approx(eager[key], abs=1e-4), key
        assert onnx["nasal_bone_box"] == pytest.approx(eager["nasal_bone_box"], abs=0.11)  # rounded to 0.1 px
        same = {k: v for k, v in eager.items() if k not in ("logit", "fracture_probability", "detector_confidence")}
        assert {k: onnx[k] for k in same if k != "nasal_bone_box"} == {
            k: v for k, v in same.items() if k != "nasal_bone_box"
        }
