"""Classifier C's ImageNet start (``pretrained``): a local weights file, MONAI's download, errors, fingerprint."""

from __future__ import annotations

import re
import urllib.error
from pathlib import Path

import pytest
import torch
from monai.bundle import ConfigParser
from monai.networks.nets import EfficientNetBN

from scripts.classifier import FractureClassifier, load_classifier, pretrained_parts, save_classifier
from scripts.pipeline import stage_files

CONFIGS = Path(__file__).resolve().parents[1] / "bundle" / "configs"
CLASSIFIER_STAGE = {"name": "classifier", "train": ["crop_training.yaml", "classifier.yaml"]}


def _imagenet_like(seed: int = 1) -> dict[str, torch.Tensor]:
    """A randomly initialised RGB EfficientNet-b0 with 1000 classes: a stand-in for the ImageNet weights."""
    torch.manual_seed(seed)
    return EfficientNetBN("efficientnet-b0", pretrained=False, spatial_dims=2, in_channels=3).state_dict()


def _as_downloaded(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The same weights under the names of the EfficientNet-PyTorch file MONAI downloads (``_blocks.<block>.``)."""
    return {re.sub(r"(.+)\.\d+(\.\d+\..+)", r"\1\2", k): v for k, v in state.items()}


@pytest.fixture(scope="module")
def imagenet() -> dict[str, torch.Tensor]:
    return _imagenet_like()


def _assert_loaded(model: FractureClassifier, state: dict[str, torch.Tensor]) -> None:
    own = model.net.state_dict()
    for key, value in own.items():
        if not key.startswith("_fc."):
            assert torch.equal(value, state[key]), key
    assert own["_fc.weight"].shape == (1, 1280)  # the fracture logit is new


@pytest.mark.parametrize("names", ["monai", "downloaded"])
def test_local_file_loads_those_weights(imagenet, names: str, tmp_path: Path) -> None:
    path = tmp_path / "efficientnet-b0.pth"
    torch.save(imagenet if names == "monai" else _as_downloaded(imagenet), path)
    # the two from-scratch initialisations must not touch the loaded weights
    model = FractureClassifier(
        "efficientnet-b0",
        "rgb",
        pretrained=True,
        pretrained_weights=path,
        zero_init_residual=True,
        fix_depthwise_init=True,
    )
    _assert_loaded(model, imagenet)
    assert model.pretrained_source == path.name
    assert "pretrained" not in model.config and "pretrained_weights" not in model.config
    scratch = FractureClassifier("efficientnet-b0", "rgb")
    assert scratch.pretrained_source is None
    assert not torch.equal(scratch.net._conv_stem.weight, imagenet["_conv_stem.weight"])


def test_gray_stem_or_convnet_with_pretrained_is_one_clear_error(tmp_path: Path) -> None:
    for name, mode in (("efficientnet-b0", "gray"), ("convnet", "rgb")):
        with pytest.raises(ValueError, match=r"classifier#in_channels_mode rgb") as err:
            FractureClassifier(name, mode, pretrained=True, pretrained_weights=tmp_path / "never_read.pth")
        assert "\n" not in str(err.value)


def test_a_file_that_does_not_fit_is_refused(imagenet, tmp_path: Path) -> None:
    wrong = dict(imagenet, **{"_conv_stem.weight": imagenet["_conv_stem.weight"][:, :1]})  # a gray stem
    torch.save(wrong, tmp_path / "gray.pth")
    with pytest.raises(ValueError, match=r"does not fit efficientnet-b0.*_conv_stem\.weight \(32, 3, 3, 3\)"):
        FractureClassifier("efficientnet-b0", "rgb", pretrained=True, pretrained_weights=tmp_path / "gray.pth")
    with pytest.raises(FileNotFoundError, match="classifier#pretrained_weights"):
        FractureClassifier("efficientnet-b0", "rgb", pretrained=True, pretrained_weights=tmp_path / "absent.pth")


def test_download_when_it_can(imagenet, monkeypatch) -> None:
    seen = {}

    def fake_download(url: str, **kwargs) -> dict:
        seen.update(url=url, **kwargs)
        return _as_downloaded(imagenet)

    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", fake_download)
    model = FractureClassifier("efficientnet-b0", "rgb", pretrained=True)
    _assert_loaded(model, imagenet)
    assert seen["url"].endswith("efficientnet-b0-355c32eb.pth") and seen["weights_only"] is True


def test_offline_without_a_file_is_one_clear_error_naming_the_key(monkeypatch) -> None:
    def offline(url: str, **kwargs) -> dict:
        raise urllib.error.URLError("[Errno -2] Name or service not known")

    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", offline)
    with pytest.raises(RuntimeError, match=r"classifier#pretrained_weights") as err:
        FractureClassifier("efficientnet-b0", "rgb", pretrained=True)
    text = str(err.value)
    assert "\n" not in text and "https://github.com/" in text and "efficientnet-b0-355c32eb.pth" in text


def test_saved_classifier_rebuilds_without_the_start(imagenet, monkeypatch, tmp_path: Path) -> None:
    torch.save(imagenet, tmp_path / "w.pth")
    model = FractureClassifier("efficientnet-b0", "rgb", pretrained=True, pretrained_weights=tmp_path / "w.pth")
    save_classifier(tmp_path / "c.pt", model, 0.5, {"crop_size": 64})
    (tmp_path / "w.pth").unlink()
    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", lambda *a, **k: pytest.fail("downloads"))
    loaded, _ = load_classifier(tmp_path / "c.pt")
    assert torch.equal(loaded.net._conv_stem.weight, imagenet["_conv_stem.weight"])


def _stage_fingerprint(weights: Path, pretrained: bool = True) -> dict:
    parser = ConfigParser()
    parser.read_config(stage_files(CLASSIFIER_STAGE, "train", "paper"))
    parser["classifier#pretrained"] = pretrained
    parser["classifier#pretrained_weights"] = str(weights)
    parser["crops_csv"] = str(weights.with_name("crops.csv"))  # instead of making the crops
    return parser.get_parsed_content("stage_fingerprint")


def test_fingerprint_changes_with_the_file_content(tmp_path: Path) -> None:
    path = tmp_path / "imagenet.pth"
    torch.save({"w": torch.zeros(2)}, path)
    first = _stage_fingerprint(path)
    assert (
        first["pretrained_weights"]
        == pretrained_parts({"pretrained": True, "pretrained_weights": path})["pretrained_weights"]
    )
    torch.save({"w": torch.ones(2)}, path)  # same path, other weights
    assert _stage_fingerprint(path) != first
    assert "pretrained_weights" not in _stage_fingerprint(path, pretrained=False)
    assert pretrained_parts({"pretrained": True, "pretrained_weights": None}) == {}


def test_output_layer_starts_near_zero() -> None:
    """MONAI's U(-1, 1) for a one-logit output started training at logits of +-10; PyTorch's Linear init is kept."""
    torch.manual_seed(0)
    model = FractureClassifier("efficientnet-b0", "gray", std=0.0625, highpass_sigma=3.0, bn_momentum=0.1).train()
    assert model.net._fc.weight.abs().max() <= 1 / 1280**0.5
    with torch.no_grad():
        assert model(torch.rand(8, 1, 64, 64)).abs().max() < 1.0


def test_batchnorm_recalibration_averages_the_training_batches() -> None:
    from types import SimpleNamespace

    from scripts.classifier import RecalibrateBatchNorm

    net = torch.nn.Sequential(torch.nn.BatchNorm2d(1, momentum=0.1)).eval()
    batches = [{"image": torch.full((2, 1, 4, 4), float(v)), "label": torch.zeros(2, 1)} for v in (1, 3, 5, 100)]
    engine = SimpleNamespace(
        network=net,
        state=SimpleNamespace(device=torch.device("cpu")),
        non_blocking=False,
        prepare_batch=lambda b, device, non_blocking: (b["image"].to(device), b["label"]),
    )
    RecalibrateBatchNorm(batches, num_batches=3)(engine)
    bn = net[0]
    assert bn.running_mean.item() == pytest.approx(3.0)  # the plain mean of the first 3 batches, not a lagging one
    assert bn.running_var.item() == pytest.approx(0.0, abs=1e-6)
    assert bn.momentum == 0.1 and not net.training  # settings and mode restored
