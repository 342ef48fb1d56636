"""Distributed training (torchrun, DDP, gloo on the CPU): the chained training in 2 processes, one epoch of the
classifier and of G-D-C step 1 on the tiny profile. It runs; rank 1 writes nothing (Python audit events of every
process, recorded by a ``sitecustomize`` put on the workers' path); the checkpoints load in one process; the
validation AUC gathered across ranks, the threshold and the calibration are those of one process on the same weights.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = ROOT / "bundle" / "configs"
STAGE_FILES = [str(CONFIGS / f) for f in ("common.yaml", "crop_training.yaml", "classifier.yaml", "profiles/tiny.yaml")]

# Records every file a process creates, writes, renames or deletes under WATCHED, one line each, in AUDIT_LOG.<rank>
AUDIT = """
import os, sys
_root, _log = os.environ["WATCHED"], os.environ["AUDIT_LOG"] + "." + os.environ.get("RANK", "x")
_fd = os.open(_log, os.O_WRONLY | os.O_CREAT | os.O_APPEND)
_WRITE = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_APPEND

def _writes(event, args):
    if event == "open":
        path, mode, flags = args
        return (isinstance(mode, str) and any(c in mode for c in "wax+")) or (mode is None and flags & _WRITE)
    return event in ("os.rename", "os.remove", "os.mkdir", "os.rmdir", "shutil.rmtree", "shutil.move")

def _hook(event, args):
    if _writes(event, args) and args and str(args[0]).startswith(_root):
        os.write(_fd, f"{event} {args[0]}\\n".encode())

sys.addaudithook(_hook)
"""


@pytest.fixture(scope="module")
def ddp_run(tiny_dataset, tmp_path_factory) -> dict:
    """The chained training of the classifier and G-D-C step 1 under ``torchrun --nproc_per_node=2`` (G-D's weights
    made here: untrained tiny G and D)."""
    from scripts.networks import Discriminator, Generator, save_networks
    from scripts.splits import ensure_split

    root = tmp_path_factory.mktemp("ddp")
    out, models, site = root / "out", root / "models", tmp_path_factory.mktemp("site")
    ensure_split(tiny_dataset, out / "split.csv", fractions=(0.6, 0.2, 0.2))
    torch.manual_seed(0)
    gd = (Generator(features=(4, 4, 8, 8, 16, 4)), Discriminator(channels=(4, 8), feature_dim=8))
    save_networks(models / "gd.pt", {"stage": "gd", "crop_size": 64}, generator=gd[0], discriminator=gd[1])
    (site / "sitecustomize.py").write_text(AUDIT)
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(site), str(ROOT / "bundle"), str(ROOT)]),
        "WATCHED": str(root),
        "AUDIT_LOG": str(site / "writes"),
        "OMP_NUM_THREADS": "1",
    }
    stage_args = {"crop_source": "landmarks", "split_fractions": [0.6, 0.2, 0.2]}
    command = [
        *(sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"),
        *("-m", "monai.bundle", "run", "training", "--config_file", str(CONFIGS / "train.yaml")),
        *("--profile", "tiny", "--dataset_dir", str(tiny_dataset), "--output_dir", str(out)),
        *("--models_dir", str(models), "--only", "['classifier','gdc1']", "--evaluate", "false"),
        *("--stage_args", json.dumps(stage_args)),
    ]
    done = subprocess.run(command, env=env, cwd=ROOT, capture_output=True, text=True, timeout=400)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-6000:]
    writes = {r: (site / f"writes.{r}").read_text().splitlines() for r in (0, 1)}
    return {"out": out, "models": models, "writes": writes, "stage_args": stage_args, "dataset": tiny_dataset}


def test_both_stages_train_and_only_rank_0_writes(ddp_run) -> None:
    summary = json.loads((ddp_run["out"] / "pipeline.json").read_text())
    assert summary["status"] == "FINISHED" and set(summary["stages"]) == {"classifier", "gdc1"}
    assert (ddp_run["models"] / "classifier.pt").is_file() and (ddp_run["models"] / "gdc1.pt").is_file()
    rank0 = "\n".join(ddp_run["writes"][0])
    assert "classifier.pt" in rank0 and "checkpoint_epoch=1.pt" in rank0  # the audit sees rank 0's writes
    assert ddp_run["writes"][1] == []  # and none of rank 1


def test_checkpoints_load_in_one_process(ddp_run) -> None:
    from scripts.checkpoint import safe_load
    from scripts.classifier import load_classifier
    from scripts.networks import generator_from, load_networks

    net, _ = load_classifier(ddp_run["models"] / "classifier.pt")
    ckpt = safe_load(ddp_run["out"] / "classifier" / "checkpoints" / "checkpoint_epoch=1.pt")
    net.load_state_dict(ckpt["network"])  # strict: the plain network's keys, no DDP "module." prefix
    assert ckpt["trainer"]["iteration"] == ckpt["trainer"]["epoch_length"]  # one epoch
    generator = generator_from(ddp_run["models"] / "gd.pt", copy_weights=False)
    generator.load_state_dict(safe_load(ddp_run["out"] / "gdc1" / "checkpoints" / "checkpoint_epoch=1.pt")["generator"])
    nets, info = load_networks(ddp_run["models"] / "gdc1.pt")
    assert set(nets) == {"generator"} and info["stage"] == "gdc1"


def test_validation_figures_equal_one_process_on_the_same_weights(ddp_run, tmp_path) -> None:
    from monai.bundle import ConfigParser

    from scripts.checkpoint import safe_load, state_dict_from
    from scripts.classifier import load_classifier
    from scripts.classifier_export import export_classifier, predict_loader
    from scripts.evaluation import roc_auc

    parser = ConfigParser()
    parser.read_config(STAGE_FILES)
    parser.update({"dataset_dir": str(ddp_run["dataset"]), "output_dir": str(ddp_run["out"]), **ddp_run["stage_args"]})
    loader = parser.get_parsed_content("validate#dataloader")  # one process: every validation crop
    best = ddp_run["out"] / "classifier" / "best_network.pt"
    net, info = load_classifier(ddp_run["models"] / "classifier.pt")
    net.load_state_dict(state_dict_from(best))
    val = predict_loader(net, loader, "cpu")
    assert len(set(val["label"])) == 2 and info["n_validation_images"] == len(val["label"]) == len(loader.dataset)
    # the AUC of the 2 ranks' shares, gathered by MONAI's metric, that chose the best network
    gathered = safe_load(ddp_run["out"] / "classifier" / "checkpoints" / "checkpoint_epoch=1.pt")["best_so_far"]
    assert gathered["best_metric"] == pytest.approx(roc_auc(val["label"], val["prob"]), abs=1e-6)
    # the calibration and thresholds one process chooses on the same weights
    single = export_classifier(net, best, loader, tmp_path / "single.pt", parser.get_parsed_content("crops_csv"), "cpu")
    _, one = load_classifier(single)
    assert one["threshold"] == pytest.approx(info["threshold"], abs=1e-6)
    assert one["calibration"]["temperature"] == pytest.approx(info["calibration"]["temperature"], rel=1e-6)
    for point in ("suspicious", "fracture"):
        assert one["operating_points"][point]["threshold"] == pytest.approx(
            info["operating_points"][point]["threshold"], abs=1e-6
        )
