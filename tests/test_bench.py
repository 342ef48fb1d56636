"""``make bench`` in its seconds-long mode: every section runs and reports what the full run reports."""

from __future__ import annotations

import json

from tools.bench.stats import PeakMemory, summary
from tools.bench.table import markdown


def test_summary_is_median_and_quartiles() -> None:
    s = summary([4.0, 1.0, 3.0, 2.0, 100.0])
    assert s["median"] == 3.0 and s["p25"] == 2.0 and s["p75"] == 4.0 and s["n"] == 5
    assert summary([])["median"] is None


def test_peak_memory_sees_a_large_allocation() -> None:
    import numpy as np

    with PeakMemory() as small:
        np.ones(1000)
    with PeakMemory() as large:
        block = np.ones(64 * 2**20 // 8)  # 64 MiB, touched
        del block
    assert large.mib is None or large.mib > 48 > (small.mib or 0)


def test_quick_bench_writes_every_section(models, tmp_path) -> None:
    from tools.bench.__main__ import main

    results = main(["--quick", "--out", str(tmp_path), "--models_dir", str(models)])
    saved = json.loads((tmp_path / "results.json").read_text())
    assert saved["meta"]["command"] == results["meta"]["command"]
    cpu = saved["devices"]["cpu"]
    assert cpu["gemm"]["peak_gflops"] > 0
    assert {r["network"] for r in cpu["networks"]} == {"detector", "classifier", "generator"}
    for row in cpu["networks"]:
        assert row["flops_per_image"] > 0 and row["latency_s"]["median"] > 0 and row["gemm_fraction_best"] > 0
        assert row["training"]["images_per_s"]["median"] > 0
    warm = {w["runtime"]: w for w in saved["end_to_end"]["warm"]}
    assert set(warm) == {"torch", "onnxruntime"}
    for split in warm.values():
        assert split["ratio_to_networks"] > 1 and split["networks_s"]["median"] > 0
        steps = split["steps_s"]
        assert {"load", "detector network", "classifier network", "generator network", "write: overlay_png"} <= set(
            steps
        )
    batch = {b["dicom_out"]: b for b in saved["end_to_end"]["batch"]}
    assert batch[False]["images"] == batch[True]["images"] == 4 and set(batch[True]["seconds_at"]) == {"2", "4"}
    assert set(saved["training"]["epochs"]) == {"detector", "classifier", "gd", "gdc1", "gdc2"}
    report = (tmp_path / "results.md").read_text()
    assert report == markdown(saved) and "ONNX Runtime" in report and "call / networks" in report
