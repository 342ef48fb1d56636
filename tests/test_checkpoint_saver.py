"""Training checkpoints that survive a kill: atomic files, damaged ones skipped, the best score kept on resume."""

from __future__ import annotations

import logging
import stat
import zipfile
from pathlib import Path

import torch
from ignite.engine import Engine, Events

from scripts import checkpoint, checkpoint_saver, fingerprint
from scripts.checkpoint_saver import AtomicCheckpointSaver, BestSoFar
from scripts.detector_training import _loads
from scripts.resume import resume_checkpoint


def _trainer(net: torch.nn.Module, epochs_done: list[int]) -> Engine:
    def step(engine: Engine, batch: int) -> None:
        with torch.no_grad():
            net.weight.fill_(float(engine.state.epoch))

    engine = Engine(step)
    engine.add_event_handler(Events.EPOCH_COMPLETED, lambda e: epochs_done.append(e.state.epoch))
    return engine


def test_interval_checkpoints_replace_the_previous_only_after_writing(tmp_path, monkeypatch) -> None:
    net = torch.nn.Linear(2, 1, bias=False)
    existing_at_write: list[list[str]] = []
    real_save = checkpoint_saver.atomic_save

    def spy(obj, path):
        existing_at_write.append(sorted(p.name for p in Path(path).parent.glob("*.pt")))
        return real_save(obj, path)

    monkeypatch.setattr(checkpoint_saver, "atomic_save", spy)
    trainer = _trainer(net, [])
    AtomicCheckpointSaver(str(tmp_path), {"network": net}, save_interval=1, n_saved=1).attach(trainer)
    trainer.run(range(2), max_epochs=3)
    # while epoch k+1 is written, epoch k is still on disk; afterwards only the newest is left, readable by all
    assert existing_at_write == [[], ["network_epoch=1.pt"], ["network_epoch=2.pt"]]
    (last,) = tmp_path.glob("*.pt")
    assert last.name == "network_epoch=3.pt" and last.stat().st_mode & stat.S_IROTH
    assert torch.equal(checkpoint.state_dict_from(last)["weight"], torch.full((1, 2), 3.0))
    assert not list(tmp_path.glob(".*.tmp"))


def test_the_first_save_of_a_resumed_run_replaces_the_file_it_resumed_from(tmp_path) -> None:
    net = torch.nn.Linear(2, 1, bias=False)
    torch.save({"network": net.state_dict()}, tmp_path / "network_epoch=4.pt")
    trainer = _trainer(net, [])
    saver = AtomicCheckpointSaver(
        str(tmp_path), {"network": net}, save_interval=1, n_saved=1, previous=tmp_path / "network_epoch=4.pt"
    )
    saver.attach(trainer)
    trainer.load_state_dict({"epoch": 4, "max_epochs": 5, "epoch_length": 1})  # what CheckpointLoader restores
    trainer.run(range(1))
    assert [p.name for p in tmp_path.glob("*.pt")] == ["network_epoch=5.pt"]


def _validate(net: torch.nn.Module, saver: AtomicCheckpointSaver, score: float, weight: float) -> Engine:
    """One validation epoch of a fake evaluator reporting ``auc = score`` with the network's weights at ``weight``."""
    evaluator = Engine(lambda e, b: None)
    evaluator.state.best_metric, evaluator.state.best_metric_epoch = -1, -1
    evaluator.state.key_metric_name = "auc"

    def report(engine: Engine) -> None:
        engine.state.metrics["auc"] = score
        with torch.no_grad():
            net.weight.fill_(weight)

    evaluator.add_event_handler(Events.EPOCH_COMPLETED, report)
    saver.attach(evaluator)
    return evaluator


def _best_saver(folder: Path, net: torch.nn.Module) -> AtomicCheckpointSaver:
    return AtomicCheckpointSaver(
        str(folder), {"network": net}, save_key_metric=True, key_metric_filename="best_network.pt"
    )


def _best_weight(folder: Path) -> float:
    return float(checkpoint.state_dict_from(folder / "best_network.pt")["weight"][0, 0])


def test_the_best_network_survives_a_resume(tmp_path) -> None:
    net = torch.nn.Linear(2, 1, bias=False)
    saver = _best_saver(tmp_path, net)
    evaluator = _validate(net, saver, score=0.9, weight=1.0)
    evaluator.run(range(1))
    evaluator.state.best_metric, evaluator.state.best_metric_epoch = 0.9, 1
    state = BestSoFar(evaluator, [saver]).state_dict()
    torch.save({"best_so_far": state}, tmp_path / "resume.pt")
    state = checkpoint.safe_load(tmp_path / "resume.pt")["best_so_far"]  # what a resumed run reads back
    assert _best_weight(tmp_path) == 1.0 and state["best_metric"] == 0.9

    # a new process: fresh saver and evaluator; with the state restored a worse epoch does not replace the best
    saver2 = _best_saver(tmp_path, net)
    evaluator2 = _validate(net, saver2, score=0.7, weight=2.0)
    BestSoFar(evaluator2, [saver2]).load_state_dict(state)
    assert evaluator2.state.best_metric == 0.9
    evaluator2.run(range(1))
    assert _best_weight(tmp_path) == 1.0
    # a better one does
    evaluator3 = _validate(net, saver2, score=0.95, weight=3.0)
    evaluator3.run(range(1))
    assert _best_weight(tmp_path) == 3.0

    # control: without the restored state, the worse epoch would have replaced it (what happened before)
    fresh = _validate(net, _best_saver(tmp_path, net), score=0.1, weight=4.0)
    fresh.run(range(1))
    assert _best_weight(tmp_path) == 4.0


def test_a_damaged_newest_checkpoint_is_skipped_for_the_previous(tmp_path, caplog) -> None:
    folder = tmp_path / "checkpoints"
    parts = fingerprint.stage_fingerprint({"lr": 0.1})
    assert resume_checkpoint(folder, parts) is None  # a new run records its fingerprint
    torch.save({"epoch": 1}, folder / "checkpoint_epoch=1.pt")
    torch.save({"epoch": 2, "weights": torch.zeros(1000)}, folder / "checkpoint_epoch=2.pt")
    whole = (folder / "checkpoint_epoch=2.pt").read_bytes()
    (folder / "checkpoint_epoch=2.pt").write_bytes(whole[: len(whole) // 2])  # killed mid-write (old, in-place)
    (folder / ".checkpoint_epoch=3.pt.abc.tmp").write_bytes(b"partial")  # an interrupted atomic write
    with caplog.at_level(logging.WARNING):
        found = resume_checkpoint(folder, parts)
    assert found and Path(found).name == "checkpoint_epoch=1.pt"
    assert "skipping a damaged checkpoint" in caplog.text and "checkpoint_epoch=2.pt" in caplog.text
    assert len(caplog.records) == 1 and "\n" not in caplog.records[0].getMessage()
    assert not list(folder.glob(".*.tmp"))


def test_a_damaged_ultralytics_last_pt_is_not_resumed(tmp_path, caplog) -> None:
    whole = tmp_path / "last.pt"
    torch.save({"epoch": 3, "ema": torch.zeros(1000)}, whole)
    assert _loads(whole)
    assert zipfile.is_zipfile(whole)
    cut = tmp_path / "cut.pt"
    cut.write_bytes(whole.read_bytes()[:-200])
    with caplog.at_level(logging.WARNING):
        assert not _loads(cut)
    assert "damaged" in caplog.text and not _loads(tmp_path / "missing.pt")
