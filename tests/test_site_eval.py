"""tools.site_eval on the tiny untrained weights and the tiny phantom: the row, its json and the table file."""

from __future__ import annotations

import json
from pathlib import Path

from tools.site_eval import HEADER, main


def test_site_eval_row(tiny_dataset: Path, models: Path, tmp_path: Path, capsys) -> None:
    out, table = tmp_path / "eval", tmp_path / "table.md"
    args = ["--dataset_dir", str(tiny_dataset), "--models_dir", str(models), "--output_dir", str(out)]
    args += ["--profile", "tiny", "--name", "tiny", "--table", str(table), "--set", "classifier#bootstrap_resamples=20"]
    main(args)
    record = json.loads((out / "site_eval.json").read_text())
    assert record["name"] == "tiny" and record["test_images"] > 0
    assert 0 <= record["boxes_pct"] <= 100 and 0 <= record["auc"] <= 1 and len(record["auc_ci"]) == 2
    assert (out / "detector" / "evaluation.json").is_file() and (out / "classifier" / "evaluation.json").is_file()
    lines = table.read_text().splitlines()
    assert lines[0] == HEADER and lines[2] == record["row"] and lines[2].startswith("| tiny | ")
    assert record["row"] in capsys.readouterr().out
