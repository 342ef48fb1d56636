"""G-D and G-D-C: losses against hand-computed values, frozen C and D, and the three stage configs end to end."""

from __future__ import annotations

import copy
import json
import math
from pathlib import Path

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader

from scripts.gdc_trainer import GDCTrainer
from scripts.losses import adjust, gd_discriminator_loss, gd_generator_loss, gdc_loss, masked_l1
from scripts.networks import Discriminator, Generator, freeze, load_networks

CONFIGS = Path(__file__).resolve().parents[1] / "bundle" / "configs"
X = torch.tensor([[[[0.2, 0.4], [0.6, 0.8]]]])
FAKE = torch.tensor([[[[1.0, 0.0], [0.5, 0.5]]]])
MASK = torch.tensor([[[[1.0, 0.0], [0.5, 0.0]]]])


def softplus(z: float) -> float:
    return math.log1p(math.exp(z))


class MeanLogit(nn.Module):
    """Stand-in for C or D: logit = mean pixel value (D_feat = (mean, max))."""

    def features(self, t: torch.Tensor) -> torch.Tensor:
        return torch.stack([t.mean((1, 2, 3)), t.amax((1, 2, 3))], dim=1)

    def features_and_logit(self, t: torch.Tensor):
        f = self.features(t)
        return f, f[:, :1]

    def forward(self, t: torch.Tensor, with_features: bool = False):
        return self.features_and_logit(t) if with_features else self.features(t)[:, :1]


@pytest.mark.parametrize(
    ("polarity", "adjusted", "l_g"),
    [
        # intent: (1 - M) X + M G(X);   L_G = |(1 - M)(X - G)| = mean(0, 0.4, 0.05, 0.3)
        ("intent", [[1.0, 0.4], [0.55, 0.8]], (0.0 + 0.4 + 0.05 + 0.3) / 4),
        # literal: X M + (1 - M) G(X); L_G = |M X - M G| = mean(0.8, 0, 0.05, 0)
        ("literal", [[0.2, 0.0], [0.55, 0.5]], (0.8 + 0.0 + 0.05 + 0.0) / 4),
    ],
)
def test_gdc_loss_matches_hand_computed_values(polarity: str, adjusted: list, l_g: float) -> None:
    adj = torch.tensor([[adjusted]])
    assert torch.allclose(adjust(X, FAKE, MASK, polarity), adj)
    assert masked_l1(X, FAKE, MASK, polarity).item() == pytest.approx(l_g)
    mean_adj = sum(sum(r) for r in adjusted) / 4
    net = MeanLogit()
    # d_input="adjust": L_D = BCE(1, D(Adjust)) = softplus(-logit); L_C = BCE(0, C(Adjust)) = softplus(logit)
    terms = gdc_loss(X, FAKE, MASK, g_net=None, d_net=net, c_net=net, polarity=polarity, d_input="adjust")
    assert terms["l_g"].item() == pytest.approx(l_g)
    assert terms["l_d"].item() == pytest.approx(softplus(-mean_adj), rel=1e-5)
    assert terms["l_c"].item() == pytest.approx(softplus(mean_adj), rel=1e-5)
    expected = 80 * l_g + softplus(-mean_adj) + 4 * softplus(mean_adj)
    assert terms["loss"].item() == pytest.approx(expected, rel=1e-5)
    # as printed in the thesis, L_D = BCE(1, D(G(Adjust(X)))): with G = 1 - t, D sees 1 - Adjust
    printed = gdc_loss(
        X,
        FAKE,
        MASK,
        g_net=lambda t: 1 - t,
        d_net=net,
        c_net=net,
        polarity=polarity,
        g_weight=2.0,
        d_weight=3.0,
        c_weight=5.0,
    )
    assert printed["l_d"].item() == pytest.approx(softplus(-(1 - mean_adj)), rel=1e-5)
    assert printed["loss"].item() == pytest.approx(
        2 * l_g + 3 * softplus(-(1 - mean_adj)) + 5 * softplus(mean_adj), rel=1e-5
    )


def test_gd_losses_match_hand_computed_values() -> None:
    net = MeanLogit()
    # D_feat(X) = (0.5, 0.8), D_feat(G) = (0.5, 1.0): L_lat = (0^2 + 0.2^2) / 2 = 0.02; L_con = mean|X - G| = 0.4
    g = gd_generator_loss(X, FAKE, net)
    assert g["con"].item() == pytest.approx((0.8 + 0.4 + 0.1 + 0.3) / 4)
    assert g["lat_g"].item() == pytest.approx(0.02, rel=1e-5)
    assert g["adv_g"].item() == pytest.approx(softplus(-0.5), rel=1e-5)
    assert g["loss"].item() == pytest.approx(softplus(-0.5) + 40 * 0.4 + 0.02, rel=1e-5)
    d = gd_discriminator_loss(X, FAKE, net)
    assert d["adv_d"].item() == pytest.approx(softplus(-0.5) + softplus(0.5), rel=1e-5)
    assert d["loss"].item() == pytest.approx(softplus(-0.5) + softplus(0.5) + 0.02, rel=1e-5)


def test_residual_generator_starts_as_identity_and_learns() -> None:
    torch.manual_seed(0)
    x = torch.rand(2, 1, 32, 32)
    gen = Generator((4, 4, 8, 8, 16, 4), residual=True)
    assert torch.allclose(gen(x), x.clamp(1e-3, 1 - 1e-3), atol=1e-6)
    plain = Generator((4, 4, 8, 8, 16, 4))
    assert (plain(x) - x).abs().mean() > 0.05  # the thesis's Skip-UNet starts far from the identity
    opt = torch.optim.Adam(gen.parameters(), lr=1e-2)
    for _ in range(3):  # the zero-initialised last layer still lets every layer learn
        opt.zero_grad()
        (gen(x) - (1 - x)).abs().mean().backward()
        opt.step()
    assert not torch.allclose(gen(x), x.clamp(1e-3, 1 - 1e-3), atol=1e-3)
    assert gen.unet.conv_0.conv_0.conv.weight.grad.abs().sum() > 0
    rebuilt = Generator(**gen.config)
    rebuilt.load_state_dict(gen.state_dict())
    assert torch.equal(rebuilt(x), gen(x))


def test_a_step_generator_may_start_as_the_identity_whatever_g_d_used(tmp_path) -> None:
    from scripts.networks import generator_from, save_networks

    save_networks(tmp_path / "gd.pt", {}, generator=Generator((4, 4, 8, 8, 16, 4)))  # the Skip-UNet of G-D
    x = torch.rand(1, 1, 32, 32)
    step = generator_from(tmp_path / "gd.pt", copy_weights=False, residual=True)
    assert step.config["residual"] and torch.allclose(step(x), x.clamp(1e-3, 1 - 1e-3), atol=1e-6)
    assert not generator_from(tmp_path / "gd.pt", copy_weights=False).config["residual"]  # None: as saved
    copied = generator_from(tmp_path / "gd.pt", copy_weights=True, residual=True)  # gdc1#init_from_gd true
    assert not copied.config["residual"]  # copied weights compute what they were trained to


def test_epoch_loss_averages_reach_metrics_before_the_loggers() -> None:
    from ignite.engine import Engine, Events

    from scripts.gdc_trainer import EpochLossAverages

    losses = iter([{"g_loss": 1.0, "d_loss": 4.0}, {"g_loss": 3.0, "d_loss": 0.0}, {"g_loss": 10.0, "d_loss": 2.0}])
    engine = Engine(lambda e, _b: setattr(e.state, "loss_terms", next(losses)))
    EpochLossAverages(prefix="train_").attach(engine)
    seen: list[dict] = []
    engine.add_event_handler(Events.EPOCH_COMPLETED, lambda e: seen.append(dict(e.state.metrics)))  # a logger
    engine.run([0, 1], max_epochs=1)
    assert seen == [{"train_g_loss": 2.0, "train_d_loss": 2.0}]
    engine.run([0], max_epochs=1)  # a new run: its epoch starts from a reset average
    assert seen[-1] == {"train_g_loss": 10.0, "train_d_loss": 2.0} and isinstance(seen[-1]["train_g_loss"], float)


def test_frozen_networks_receive_no_updates() -> None:
    from scripts.classifier import FractureClassifier

    torch.manual_seed(0)
    gen, disc, clf = Generator((4, 4, 8, 8, 16, 4)), Discriminator((4, 8), feature_dim=8), FractureClassifier()
    clf.train()  # the trainer must freeze it (eval mode) and keep it so
    frozen_before = [copy.deepcopy(m.state_dict()) for m in (clf, disc)]
    gen_before = copy.deepcopy(gen.state_dict())
    loader = DataLoader([{"image": torch.rand(1, 32, 32)} for _ in range(4)], batch_size=2)
    opt = torch.optim.Adam(gen.parameters(), lr=1e-2)
    loss = lambda x, fake, m, g: gdc_loss(x, fake, m, g, d_net=disc, c_net=clf)  # noqa: E731
    trainer = GDCTrainer(
        "cpu", 1, loader, gen, opt, loss, mask_function=lambda x: torch.full_like(x, 0.5), frozen_networks=[clf, disc]
    )
    trainer.run()
    assert trainer.state.iteration == 2
    for net, before in zip((clf, disc), frozen_before, strict=True):
        assert not net.training
        for name, value in net.state_dict().items():  # parameters and BatchNorm running statistics
            assert torch.equal(value, before[name]), name
        assert all(p.grad is None and not p.requires_grad for p in net.parameters())
    assert any(not torch.equal(v, gen_before[k]) for k, v in gen.state_dict().items())
    with pytest.raises(ValueError, match="frozen"):
        GDCTrainer(
            "cpu",
            1,
            loader,
            gen,
            torch.optim.Adam(list(gen.parameters()) + list(disc.parameters())),
            loss,
            mask_function=lambda x: x,
            frozen_networks=[freeze(disc)],
        )


def _run_stage(stage: str, overrides: dict, extra: tuple[str, ...] = ()) -> None:
    from monai.bundle import run

    files = [
        str(CONFIGS / f)
        for f in (
            "common.yaml",
            "crop_training.yaml",
            "gan_common.yaml",
            *(["gdc_common.yaml"] if stage.startswith("gdc") else []),
            f"{stage}.yaml",
            *extra,
            "profiles/tiny.yaml",
        )
    ]
    run(
        config_file=files,
        meta_file=str(CONFIGS / "metadata.json"),
        logging_file=str(CONFIGS / "logging.conf"),
        **overrides,
    )


def test_stage_configs_run_end_to_end_and_resume(tiny_dataset, tmp_path) -> None:
    from scripts.classifier import FractureClassifier, save_classifier
    from scripts.masks import load_region_model, region_map
    from scripts.splits import ensure_split

    models, out = tmp_path / "models", tmp_path / "out"
    torch.manual_seed(0)
    save_classifier(models / "classifier.pt", FractureClassifier(), 0.5, {"crop_size": 64, "box_source": "landmarks"})
    ensure_split(tiny_dataset, out / "split.csv", fractions=(0.6, 0.2, 0.2))  # a validation fracture patient
    overrides = {
        "dataset_dir": str(tiny_dataset),
        "output_dir": str(out),
        "models_dir": str(models),
        "crop_source": "landmarks",
        "split_fractions": [0.6, 0.2, 0.2],
    }
    for stage in ("gd", "gdc1", "gdc2"):
        _run_stage(stage, {**overrides, "tracking": "mlflow"})  # MONAI's own MLflow handler on the GAN trainers
        assert (out / stage / "samples" / "epoch_0001.png").is_file()
        assert len(list((out / stage / "checkpoints").glob("*.pt"))) == 1
    from mlflow import MlflowClient

    client = MlflowClient(f"sqlite:///{out / 'mlflow.db'}")
    runs = client.search_runs([client.get_experiment_by_name("nasal_bone_fracture").experiment_id])
    assert sorted(r.info.run_name.split("-")[0] for r in runs) == ["gd", "gdc1", "gdc2"]  # one run per stage
    for r in runs:
        assert r.info.status == "FINISHED" and "train_loss" in r.data.metrics  # G's loss, every iteration
    gd = next(r for r in runs if r.info.run_name.startswith("gd-"))
    assert {"g_loss", "d_loss", "con"} <= set(gd.data.metrics)  # epoch averages of each loss term
    nets, info = load_networks(models / "gd.pt")
    assert set(nets) == {"generator", "discriminator"} and info["stage"] == "gd"
    assert not nets["generator"].config["residual"]  # G-D's G is the thesis's Skip-UNet
    check = json.loads((out / "gd" / "discriminator.json").read_text())  # D measured on the validation crops
    assert check["val_crops"] > 0 and 0.0 <= check["roc_auc_real_vs_generated"] <= 1.0
    assert info["discriminator"]["roc_auc_real_vs_generated"] == pytest.approx(check["roc_auc_real_vs_generated"])
    g1, info1 = load_networks(models / "gdc1.pt")
    assert info1["mask_polarity"] == "intent" and info1["mask_mode"] == "cam"
    assert g1["generator"].config["residual"] and info1["generator_residual"]  # steps 1 and 2 start as the identity
    g2 = load_region_model(models / "gdc2.pt")
    assert g2.region["threshold_source"] == "validation" and 0 < g2.region["threshold"] < 1
    assert g2.region["mode"] in ("abs", "added", "removed") and set(g2.region["val_pointing"]) == {
        "abs",
        "added",
        "removed",
    }
    rmap, binary = region_map(g2, torch.rand(2, 1, 64, 64))
    assert rmap.shape == binary.shape == (2, 1, 64, 64)
    assert 0 <= rmap.min() and rmap.max() <= 1 and binary.dtype == torch.bool
    # rerunning a finished stage resumes from its checkpoint and trains no further
    before = {k: v.clone() for k, v in g2.state_dict().items()}
    _run_stage("gdc2", overrides)
    after = load_region_model(models / "gdc2.pt").state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
