"""Weights files: round trip of every network kind, refusal of foreign or unsafe files, atomic writes."""

from __future__ import annotations

import os
import pickle
from pathlib import Path

import pytest
import torch

from scripts import checkpoint
from scripts.checkpoint import CLASSIFIER_FORMAT, GAN_FORMAT, CheckpointError
from scripts.classifier import FractureClassifier, load_classifier, save_classifier
from scripts.masks import load_region_model
from scripts.networks import Discriminator, Generator, load_network, load_networks, save_networks

SMALL_G = {"features": (4, 4, 8, 8, 8, 4)}


def _same_weights(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def test_roundtrip_of_every_network_kind(tmp_path) -> None:
    torch.manual_seed(0)
    c = FractureClassifier("convnet", "gray", mean=0.2, std=0.5)
    g, d = Generator(**SMALL_G, residual=True), Discriminator(channels=(4, 8), pool=2, feature_dim=8)
    save_classifier(tmp_path / "c.pt", c, 0.25, {"crop_size": 64})
    save_networks(tmp_path / "gd.pt", {"stage": "gd"}, generator=g, discriminator=d)
    save_networks(tmp_path / "gdc2.pt", {"region": {"threshold": 0.3, "sigma": 2.0}}, generator=g)

    c2, info = load_classifier(tmp_path / "c.pt")
    assert isinstance(c2, FractureClassifier) and c2.config == c.config and _same_weights(c, c2)
    assert info["threshold"] == 0.25 and info["crop_size"] == 64 and info["config"] == c.config
    nets, info = load_networks(tmp_path / "gd.pt")
    assert info == {"stage": "gd"} and set(nets) == {"generator", "discriminator"}
    assert _same_weights(g, nets["generator"]) and _same_weights(d, nets["discriminator"])
    assert nets["generator"].config == g.config and not nets["discriminator"].training
    assert _same_weights(d, load_network(tmp_path / "gd.pt", "discriminator"))
    region = load_region_model(tmp_path / "gdc2.pt")
    assert _same_weights(g, region) and region.region == {"threshold": 0.3, "sigma": 2.0}
    raw = torch.load(tmp_path / "gd.pt", weights_only=True)
    assert raw["format"] == GAN_FORMAT and set(raw) == {"format", "networks", "info", "generator", "discriminator"}
    assert raw["generator"] is raw["networks"]["generator"]["state_dict"]  # an alias for ckpt_export, stored once
    assert raw["networks"]["discriminator"]["config"] == d.config


def test_previous_gan_layout_still_loads(tmp_path) -> None:
    g = Generator(**SMALL_G)
    old = {"format": "nasal-fracture-gan/1", "info": {"stage": "gd"}}
    old["generator"] = {"config": g.config, "state_dict": g.state_dict()}
    torch.save(old, tmp_path / "v1.pt")
    nets, info = load_networks(tmp_path / "v1.pt")
    assert info == {"stage": "gd"} and _same_weights(g, nets["generator"])


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ({"state_dict": {}}, r"a dict without a format tag"),
        ([1, 2, 3], r"a list without a format tag"),
        ({"format": "someone-else/3"}, r"found format 'someone-else/3'"),
        ({"format": CLASSIFIER_FORMAT, "networks": {}, "info": {}}, r"found format 'nasal-fracture-classifier/2'"),
        ({"format": GAN_FORMAT, "networks": {"generator": {"config": {}}}, "info": {}}, r"without its networks"),
        ({"format": GAN_FORMAT, "networks": {"critic": {"config": {}, "state_dict": {}}}, "info": {}}, "'critic'"),
    ],
)
def test_foreign_files_give_one_clear_line(tmp_path, content, message) -> None:
    path = tmp_path / "foreign.pt"
    torch.save(content, path)
    with pytest.raises(CheckpointError, match=message) as err:
        load_networks(path)
    assert str(err.value).startswith(f"{path}: ") and "\n" not in str(err.value)


def test_mismatched_config_and_weights_are_refused(tmp_path) -> None:
    g = Generator(**SMALL_G)
    bad = {"config": {**g.config, "features": [8, 8, 8, 8, 8, 8]}, "state_dict": g.state_dict()}
    torch.save({"format": GAN_FORMAT, "networks": {"generator": bad}, "info": {}}, tmp_path / "bad.pt")
    with pytest.raises(CheckpointError, match="does not rebuild from its config"):
        load_networks(tmp_path / "bad.pt")


class _Payload:
    """Unpickling this runs ``Path.touch(marker)``: what a malicious weights file would do."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


@pytest.mark.parametrize("wrap", ["bare", "inside_a_checkpoint"])
def test_a_pickle_with_code_is_refused_and_never_runs(tmp_path, wrap) -> None:
    marker = tmp_path / "pwned"
    obj = _Payload(marker)
    if wrap == "inside_a_checkpoint":
        obj = {"format": CLASSIFIER_FORMAT, "networks": {}, "info": {"x": obj}}
    path = tmp_path / "evil.pt"
    torch.save(obj, path)
    for loader in (load_classifier, load_networks, load_region_model, checkpoint.state_dict_from):
        with pytest.raises(CheckpointError, match=r"evil\.pt: not a weights file that loads safely") as err:
            loader(path)
        assert "\n" not in str(err.value)
    with open(path, "wb") as f:  # the same with a plain pickle instead of torch's zip format
        pickle.dump(obj, f)
    with pytest.raises(CheckpointError):
        load_networks(path)
    assert not marker.exists()


def test_a_failed_write_leaves_the_previous_file_intact(tmp_path, monkeypatch) -> None:
    g = Generator(**SMALL_G)
    path = save_networks(tmp_path / "gd.pt", {"version": 1}, generator=g)
    before = path.read_bytes()
    real_save = torch.save

    def half_then_fail(obj, f, *args, **kwargs):
        real_save(obj, f, *args, **kwargs)  # bytes reach the temporary file, then the "disk" fails
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", half_then_fail)
    with pytest.raises(OSError, match="disk full"):
        save_networks(path, {"version": 2}, generator=g)
    assert path.read_bytes() == before and load_networks(path)[1] == {"version": 1}
    assert sorted(os.listdir(tmp_path)) == ["gd.pt"]  # no temporary file left behind


def test_state_dict_from_reads_ignite_checkpoint_files(tmp_path) -> None:
    g = Generator(**SMALL_G)
    torch.save({"network": g.state_dict(), "optimizer": {}}, tmp_path / "resume.pt")
    torch.save(g.state_dict(), tmp_path / "best.pt")
    for name in ("resume.pt", "best.pt"):
        state = checkpoint.state_dict_from(tmp_path / name)
        assert state.keys() == g.state_dict().keys()
    torch.save([1], tmp_path / "list.pt")
    with pytest.raises(CheckpointError, match="expected a state dict"):
        checkpoint.state_dict_from(tmp_path / "list.pt")


@pytest.mark.parametrize("umask", [0o022, 0o077])
def test_atomic_replace_gives_the_umask_permissions_without_changing_it(tmp_path: Path, monkeypatch, umask) -> None:
    tmp = tmp_path / ".x.tmp"
    tmp.write_bytes(b"data")
    tmp.chmod(0o600)  # what mkstemp makes
    old = os.umask(umask)
    try:
        calls: list[int] = []
        real_umask = os.umask
        monkeypatch.setattr(os, "umask", lambda mask: calls.append(mask) or real_umask(mask))
        checkpoint.atomic_replace(tmp, tmp_path / "x.json")
        assert not calls  # read from /proc/self/status: never set, not even briefly (other threads write files)
    finally:
        monkeypatch.undo()
        os.umask(old)
    assert ((tmp_path / "x.json").stat().st_mode & 0o777) == 0o666 & ~umask and not tmp.exists()


def test_atomic_write_text_replaces_whole_and_leaves_nothing_on_failure(tmp_path: Path) -> None:
    target = tmp_path / "record.json"
    target.write_text("old")
    checkpoint.atomic_write_text(target, '{"new": 1}')
    assert target.read_text() == '{"new": 1}' and sorted(p.name for p in tmp_path.iterdir()) == ["record.json"]
    blocked = tmp_path / "blocked.json"  # a non-empty folder in the way: the rename fails
    blocked.mkdir()
    (blocked / "keep").write_text("x")
    with pytest.raises(OSError):
        checkpoint.atomic_write_text(blocked, "text", tmp_path / "blocked.json.part")
    assert (blocked / "keep").read_text() == "x" and not (tmp_path / "blocked.json.part").exists()
