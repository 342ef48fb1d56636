"""Classifier C: input convention, last feature map, Grad-CAM, checkpoints, and the stage end to end."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from scripts.checkpoint import CLASSIFIER_FORMAT, CheckpointError
from scripts.classifier import FractureClassifier, load_classifier, save_classifier
from scripts.imageio import INTENSITY_CONVENTION
from scripts.networks import Generator, save_networks
from scripts.resume import latest_checkpoint

CONFIGS = Path(__file__).resolve().parents[1] / "bundle" / "configs"


@pytest.fixture(scope="module")
def model() -> FractureClassifier:
    torch.manual_seed(0)
    return FractureClassifier("efficientnet-b0", "gray", mean=0.3, std=0.25).eval()


def test_forward_is_the_efficientnet_on_the_normalised_input(model) -> None:
    x = torch.rand(2, 1, 64, 64)
    with torch.no_grad():
        logits = model(x)
        direct = model.net((x - 0.3) / 0.25)
    assert logits.shape == (2, 1)
    assert torch.allclose(logits, direct, atol=1e-5)
    rgb = FractureClassifier("efficientnet-b0", "rgb").eval()
    assert rgb.net._conv_stem.in_channels == 3 and model.net._conv_stem.in_channels == 1
    with torch.no_grad():
        assert torch.allclose(rgb(x), rgb.net(x.repeat(1, 3, 1, 1)), atol=1e-5)  # gray replicated to 3 channels
    with pytest.raises(ValueError, match=r"\(B, 1, H, W\)"):
        model(torch.rand(2, 3, 64, 64))


def test_features_are_the_head_output_before_pooling(model) -> None:
    x = torch.rand(2, 1, 64, 64)
    seen = {}
    layer = dict(model.named_modules())[model.target_layer]
    handle = layer.register_forward_hook(lambda _m, _i, out: seen.setdefault("out", out))
    try:
        with torch.no_grad():
            feats = model.features(x)
            logits = model(x)
    finally:
        handle.remove()
    assert model.target_layer == "head_act"
    assert feats.shape == (2, 1280, 2, 2)  # b0: 1280 channels, input / 32
    assert torch.equal(seen["out"], feats)  # the hooked layer is the one `features` returns
    n = model.net
    head = n._swish(
        n._bn1(
            n._conv_head(
                n._conv_head_padding(n._blocks(n._swish(n._bn0(n._conv_stem(n._conv_stem_padding((x - 0.3) / 0.25))))))
            )
        )
    )
    assert torch.allclose(feats, head, atol=1e-5)
    assert torch.allclose(n._fc(feats.mean((2, 3))), logits, atol=1e-5)  # pooling + linear layer give the logit
    assert FractureClassifier("efficientnet-b0").features(torch.rand(1, 1, 128, 128)).shape == (1, 1280, 4, 4)


def test_internal_resize_highpass_and_initialisation_options() -> None:
    torch.manual_seed(0)
    m = FractureClassifier(
        "efficientnet-b0",
        "gray",
        std=0.0625,
        input_size=64,
        highpass_sigma=2.0,
        dropout_rate=0.0,
        drop_connect_rate=0.0,
        zero_init_residual=True,
        fix_depthwise_init=True,
    ).eval()
    x = torch.rand(2, 1, 128, 128)
    assert m.prepare(x).shape == (2, 1, 64, 64)  # resized inside the network
    assert m.features(x).shape == (2, 1280, 2, 2)
    assert m.gradcam(x).shape == (2, 1, 128, 128)  # maps come back on the crop's grid
    flat = torch.full((1, 1, 128, 128), 0.7)
    assert m.prepare(flat).abs().max() < 1e-5  # the high-pass removes a uniform background
    ramp = torch.linspace(0, 1, 64).expand(1, 1, 64, 64)
    assert m.prepare(ramp)[..., 8:-8, 8:-8].abs().max() < 1e-3  # and a linear gradient away from the borders
    blocks = [b for b in m.net._blocks.modules() if hasattr(b, "_bn2")]
    residual = [b for b in blocks if b.stride == 1 and b.in_channels == b.out_channels]
    assert residual and all(float(b._bn2.weight.abs().max()) == 0 for b in residual)
    assert all(b.drop_connect_rate == 0 for b in blocks) and m.net._dropout.p == 0
    dw = next(c for c in m.net.modules() if isinstance(c, torch.nn.Conv2d) and c.groups > 1)
    assert 0.3 < float(dw.weight.std()) < 0.7  # ~ sqrt(2 / 9) for a 3x3 kernel (MONAI: ~0.05)
    loaded = FractureClassifier(**m.config)
    assert loaded.config == m.config


def test_convnet_backbone_max_pooling_and_its_feature_map() -> None:
    torch.manual_seed(0)
    m = FractureClassifier("convnet", "gray", std=0.0625, highpass_sigma=3.0, pooling="max").eval()
    x = torch.rand(2, 1, 128, 128)
    with torch.no_grad():
        feats = m.features(x)
        logits = m(x)
    assert feats.shape == (2, 128, 8, 8) and feats.min() >= 0  # 4 max-pool steps, ReLU at the hooked head
    assert torch.allclose(m.net._fc(feats.amax((2, 3))), logits, atol=1e-5)  # global max pooling, then linear
    assert m.gradcam(x).shape == (2, 1, 128, 128)
    avg = FractureClassifier("convnet", "gray", pooling="avg").eval()
    with torch.no_grad():
        assert torch.allclose(avg.net._fc(avg.features(x).mean((2, 3))), avg(x), atol=1e-5)
    with pytest.raises(ValueError, match="pooling"):
        FractureClassifier("convnet", pooling="median")


def test_gradcam_shape_range_and_no_leftover_hooks(model) -> None:
    x = torch.rand(3, 1, 64, 64)
    layer = dict(model.named_modules())[model.target_layer]
    for _ in range(2):
        cam = model.gradcam(x)
        assert cam.shape == (3, 1, 64, 64)
        assert cam.min() >= 0 and cam.max() <= 1
        assert not layer._forward_hooks and not layer._backward_hooks
    assert not model.training and x.grad is None


def test_checkpoint_roundtrip_is_self_describing(tmp_path, model) -> None:
    path = save_classifier(tmp_path / "c.pt", model, 0.37, {"crop_size": 64, "box_source": "landmarks"})
    raw = torch.load(path, weights_only=True)
    assert raw["format"] == CLASSIFIER_FORMAT and raw["info"]["threshold"] == pytest.approx(0.37)
    assert raw["networks"]["classifier"]["config"]["model_name"] == "efficientnet-b0"
    loaded, info = load_classifier(path)
    assert not loaded.training
    assert info["threshold"] == pytest.approx(0.37) and info["crop_size"] == 64 and info["box_source"] == "landmarks"
    x = torch.rand(2, 1, 64, 64)
    with torch.no_grad():
        assert torch.allclose(loaded(x), model(x))
    torch.save({"state_dict": {}}, tmp_path / "other.pt")
    with pytest.raises(CheckpointError, match="other.pt: expected a 'nasal-fracture-classifier/2' checkpoint"):
        load_classifier(tmp_path / "other.pt")
    save_networks(tmp_path / "gan.pt", generator=Generator(features=(4, 4, 8, 8, 8, 4)))
    with pytest.raises(CheckpointError, match="found format 'nasal-fracture-gan/2'"):
        load_classifier(tmp_path / "gan.pt")


def test_previous_checkpoint_layout_still_loads(tmp_path, model) -> None:
    state = {k: v.clone() for k, v in model.state_dict().items()}
    old = {"format": "nasal-fracture-classifier/1", "config": model.config, "state_dict": state, "threshold": 0.4}
    torch.save({**old, "info": {"crop_size": 64}}, tmp_path / "v1.pt")
    loaded, info = load_classifier(tmp_path / "v1.pt")
    assert info["threshold"] == pytest.approx(0.4) and info["crop_size"] == 64
    assert all(torch.equal(a, b) for a, b in zip(state.values(), loaded.state_dict().values(), strict=True))


def test_latest_checkpoint_picks_the_highest_epoch(tmp_path) -> None:
    assert latest_checkpoint(tmp_path) is None
    for n in (2, 10, 9):
        (tmp_path / f"checkpoint_epoch={n}.pt").write_bytes(b"")
    assert Path(latest_checkpoint(tmp_path)).name == "checkpoint_epoch=10.pt"


def _run(files: tuple[str, ...], overrides: dict) -> None:
    from monai.bundle import run

    run(
        config_file=[str(CONFIGS / f) for f in ("common.yaml", "crop_training.yaml", *files, "profiles/tiny.yaml")],
        meta_file=str(CONFIGS / "metadata.json"),
        logging_file=str(CONFIGS / "logging.conf"),
        **overrides,
    )


def test_stage_trains_exports_evaluates_and_resumes(tiny_dataset, tmp_path) -> None:
    from scripts.crops import crop_records
    from scripts.splits import ensure_split

    models, out = tmp_path / "models", tmp_path / "out"
    ensure_split(tiny_dataset, out / "split.csv", fractions=(0.6, 0.2, 0.2))  # both classes in validation and test
    overrides = {
        "dataset_dir": str(tiny_dataset),
        "output_dir": str(out),
        "models_dir": str(models),
        "crop_source": "landmarks",
        "split_fractions": [0.6, 0.2, 0.2],
    }
    _run(("classifier.yaml",), {**overrides, "tracking": "mlflow"})
    from mlflow import MlflowClient

    client = MlflowClient(f"sqlite:///{out / 'mlflow.db'}")  # common.yaml's tracking_uri: a store in output_dir
    (run,) = client.search_runs([client.get_experiment_by_name("nasal_bone_fracture").experiment_id])
    assert run.info.status == "FINISHED" and {"train_loss", "val_auc", "val_accuracy"} <= set(run.data.metrics)
    model, info = load_classifier(models / "classifier.pt")
    assert 0.0 <= info["threshold"] <= 1.0
    assert info["crop_size"] == 64 and info["box_source"] == "landmarks" and info["threshold_rule"] == "youden"
    assert info["validation"]["tp"] + info["validation"]["fn"] > 0  # chosen on validation crops with fractures
    assert info["intensity"] == INTENSITY_CONVENTION  # how its images were loaded (inference checks it)
    assert set(info["crop_intensity"]) == {"mean", "std"}  # the validation crops' ranges (inference flags outliers)
    assert info["calibration"]["method"] == "temperature" and info["calibration"]["fitted_on"] == "validation"
    points = info["operating_points"]  # chosen on validation, on the calibrated probabilities
    assert points["suspicious"]["validation"]["sensitivity"] >= 0.95
    assert points["fracture"]["validation"]["specificity"] >= 0.95
    assert points["suspicious"]["threshold"] <= points["fracture"]["threshold"]
    assert latest_checkpoint(out / "classifier" / "checkpoints").endswith("checkpoint_epoch=1.pt")
    assert (out / "classifier" / "best_network.pt").is_file()

    _run(("classifier.yaml", "classifier_evaluate.yaml"), {**overrides, "classifier#bootstrap_resamples": 50})
    ev = json.loads((out / "classifier" / "evaluation.json").read_text())
    assert ev["split"] == "test" and ev["box_source"] == "landmarks" and ev["threshold"] == info["threshold"]
    test = crop_records(next((out / "crops").glob("*/crops.csv")), "test")
    assert ev["n_images"] == len(test) and ev["n_patients"] == len({r["patient_id"] for r in test})
    assert ev["bootstrap"]["unit"] == "patient" and ev["bootstrap"]["n_resamples"] == 50
    assert set(ev["metrics"]) >= {"roc_auc", "accuracy", "sensitivity", "specificity", "brier"}
    assert (out / "classifier" / "evaluation_roc.png").is_file()
    assert ev["temperature"] == info["calibration"]["temperature"] and {"ece", "brier"} <= set(ev["calibration_before"])
    assert ev["thresholds"] == {k: points[k]["threshold"] for k in ("suspicious", "fracture")}
    for name in ("suspicious", "fracture"):
        point = ev["operating_points"][name]
        assert {"value", "ci_low", "ci_high"} <= set(point["sensitivity"]) and "value" in point["specificity"]
    assert sum(n for f in ev["findings"].values() for n in f.values()) == ev["n_images"]
    assert (out / "classifier" / "evaluation_calibration_before.csv").is_file()
    assert ev["by_format"]  # per format at the main threshold, on the calibrated probabilities

    # a finished run resumes from its checkpoint, trains no further and exports the same network
    _run(("classifier.yaml",), overrides)
    again, _ = load_classifier(models / "classifier.pt")
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), again.state_dict().values(), strict=True))
