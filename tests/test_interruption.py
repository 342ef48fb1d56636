"""A stage killed with SIGKILL in the middle of an epoch resumes where it was when the same command is run again."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

from scripts import BUNDLE_ROOT
from scripts.classifier import load_classifier
from scripts.resume import checkpoint_epoch, checkpoints_newest_first

CONFIGS = BUNDLE_ROOT / "configs"
EPOCHS = 6


def _command(dataset: Path, out: Path, models: Path) -> list[str]:
    files = [str(CONFIGS / f) for f in ("common.yaml", "crop_training.yaml", "classifier.yaml", "profiles/tiny.yaml")]
    return [
        sys.executable,
        "-m",
        "monai.bundle",
        "run",
        "--config_file",
        "[" + ",".join(f"'{f}'" for f in files) + "]",
        "--meta_file",
        str(CONFIGS / "metadata.json"),
        "--logging_file",
        str(CONFIGS / "logging.conf"),
        "--dataset_dir",
        str(dataset),
        "--output_dir",
        str(out),
        "--models_dir",
        str(models),
        "--crop_source",
        "landmarks",
        "--split_fractions",
        "[0.6,0.2,0.2]",
        "--classifier#epochs",
        str(EPOCHS),
    ]


def _epochs(folder: Path) -> list[int]:
    return [checkpoint_epoch(p) for p in checkpoints_newest_first(folder)]


def test_sigkill_mid_epoch_then_the_same_command_resumes(tiny_dataset, tmp_path) -> None:
    out, models = tmp_path / "out", tmp_path / "models"
    ckpt = out / "classifier" / "checkpoints"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(BUNDLE_ROOT), str(BUNDLE_ROOT.parent)])}
    cmd = _command(tiny_dataset, out, models)
    first_log = tmp_path / "first.log"
    with open(first_log, "w") as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env)
        try:
            deadline, seen = time.time() + 300, {}
            while time.time() < deadline and proc.poll() is None and 2 not in seen:
                seen.update({e: time.time() for e in _epochs(ckpt) if e not in seen})
                time.sleep(0.02)
            assert proc.poll() is None, "the stage ended before it could be killed:\n" + first_log.read_text()[-3000:]
            assert {1, 2} <= set(seen), f"no checkpoints of epochs 1 and 2 in time: {seen}"
            time.sleep((seen[2] - seen[1]) / 2)  # half an epoch after epoch 2 was saved: in the middle of epoch 3
            proc.send_signal(signal.SIGKILL)
            proc.wait(30)
        finally:
            if proc.poll() is None:
                proc.kill()
    killed_at = max(_epochs(ckpt))
    print(f"epoch time {seen[2] - seen[1]:.2f} s; killed after epoch {killed_at}")
    assert killed_at < EPOCHS and not (models / "classifier.pt").exists(), "killed too late to test a resume"

    second = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)
    log = second.stdout + second.stderr
    assert second.returncode == 0, log[-3000:]
    assert f"resuming from checkpoint_epoch={killed_at}.pt" in log
    # it trained only the epochs that were missing: the validator ran for epochs killed_at+1 .. EPOCHS
    validated = sorted({int(n) for n in re.findall(r"Epoch\[(\d+)\] Metrics", log)})
    assert validated == list(range(killed_at + 1, EPOCHS + 1)), validated
    assert _epochs(ckpt) == [EPOCHS]  # the resumed-from checkpoint was replaced, not left behind
    assert not list(ckpt.glob(".*.tmp"))
    net, info = load_classifier(models / "classifier.pt")
    assert 0.0 <= info["threshold"] <= 1.0 and (out / "classifier" / "best_network.pt").is_file()
