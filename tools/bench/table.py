"""The markdown report of a ``make bench`` run (``results.md`` beside ``results.json``)."""

from __future__ import annotations

from typing import Any


def _ms(s: dict[str, Any] | None) -> str:
    """Median milliseconds with the interquartile range."""
    if not s or s.get("median") is None:
        return "-"
    return f"{1000 * s['median']:.1f} ({1000 * s['p25']:.1f}-{1000 * s['p75']:.1f})"


def _num(value: Any, fmt: str = "{:.1f}") -> str:
    return "-" if value is None else fmt.format(value)


def networks_table(rows: list[dict[str, Any]], peak: float) -> list[str]:
    lines = [
        f"Networks (untrained, built from the configs; fp32 GEMM peak {peak:.0f} GFLOP/s). Times: median (p25-p75).",
        "",
        "| profile | network | GFLOP/img | eager b1 ms | TorchScript b1 ms | ONNX Runtime b1 ms | ONNX = eager"
        " | best batch: img/s | % GEMM peak (b1 / best) | train img/s (batch) | peak MiB infer / train |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        ex = r.get("exports", {})
        ort = ex.get("onnxruntime", {})
        ts = ex.get("torchscript", {})
        same = (
            "-"
            if not ort
            else f"{'yes' if ort['equal'] else 'NO'} ({ort['max_abs_diff']:.1e} <= {ort['tolerance']:.0e})"
        )
        tr = r["training"]
        lines.append(
            f"| {r['profile']} | {r['network']} ({r['detail']}) | {r['flops_per_image'] / 1e9:.2f} | "
            f"{_ms(r['latency_s'])} | {_ms(ts.get('latency_s'))} | {_ms(ort.get('latency_s'))} | {same} | "
            f"{r['best_batch']}: {r['best_images_per_s']:.1f} | {100 * r['gemm_fraction_batch1']:.1f} / "
            f"{100 * r['gemm_fraction_best']:.1f}"
            f" | {_num(tr['images_per_s']['median'])} ({tr['batch']}) | {_num(r['peak_mib_inference'], '{:.0f}')} / "
            f"{_num(tr['peak_mib'], '{:.0f}')} |"
        )
    return lines


def warm_table(splits: list[dict[str, Any]]) -> list[str]:
    runtimes = [s["runtime"] for s in splits]
    steps: list[str] = []
    for s in splits:
        steps += [k for k in s["steps_s"] if k not in steps]
    lines = [
        "One X-ray in a warm process (clinic.engine.WarmInference: its files written before the call returns), "
        "per-image median ms (p25-p75):",
        "",
        "| step | " + " | ".join(runtimes) + " |",
        "|---|" + "---|" * len(runtimes),
    ]
    for step in steps:
        lines.append(f"| {step} | " + " | ".join(_ms(s["steps_s"].get(step)) for s in splits) + " |")
    lines.append("| **whole call** | " + " | ".join(f"**{_ms(s['wall_s'])}**" for s in splits) + " |")
    lines.append("| networks' own time | " + " | ".join(_ms(s["networks_s"]) for s in splits) + " |")
    lines.append("| call / networks | " + " | ".join(_num(s["ratio_to_networks"], "{:.2f}x") for s in splits) + " |")
    return lines


def batch_table(runs: list[dict[str, Any]]) -> list[str]:
    marks = sorted({int(m) for r in runs for m in r["seconds_at"]})
    lines = [
        "The batch command over a folder (in process, warm networks; seconds until the N-th file's summary row, i.e."
        " its files, is written):",
        "",
        "| outputs | " + " | ".join(f"{m} files s" for m in marks) + " | s/file (steady) | fit s/file | networks s/file"
        " | per file / networks |",
        "|---|" + "---|" * (len(marks) + 4),
    ]
    for r in runs:
        kind = "JSON + PNG + DICOM SC/SR" if r["dicom_out"] else "JSON + PNG"
        cells = [_num(r["seconds_at"].get(str(m)), "{:.2f}") for m in marks]
        lines.append(
            f"| {kind} | " + " | ".join(cells) + f" | {_num(r['per_image_s_steady'], '{:.4f}')} | "
            f"{_num(r['linear_fit']['seconds_per_image'], '{:.4f}')} | {_num(r['networks_s_per_image'], '{:.4f}')} | "
            f"{_num(r['ratio_to_networks'], '{:.2f}x')} |"
        )
    return lines


def training_table(epochs: dict[str, dict[str, float]], iterations: dict[str, Any]) -> list[str]:
    sizes = list(next(iter(epochs.values())))
    lines = [
        "Training seconds per epoch (quick profile; measured iteration time x ceil(0.8 N / batch) iterations; data"
        " loading, augmentation and validation not included):",
        "",
        "| stage | batch | s/iteration | " + " | ".join(f"N = {n}" for n in sizes) + " |",
        "|---|---|---|" + "---|" * len(sizes),
    ]
    for stage, row in epochs.items():
        it = iterations[stage]
        lines.append(
            f"| {stage} | {it['batch']} | {_num(it['seconds_per_iteration']['median'], '{:.3f}')} | "
            + " | ".join(f"{row[n]:.0f}" for n in sizes)
            + " |"
        )
    return lines


def markdown(results: dict[str, Any]) -> str:
    """The whole report."""
    meta = results["meta"]
    out = [
        f"# make bench ({meta['command']})",
        "",
        f"{meta['when']}; {meta['machine']}; torch {meta['torch']}, ONNX Runtime {meta['onnxruntime']}, "
        f"{meta['threads']} threads; weights: {meta['weights']}; total {meta['total_s']:.0f} s.",
        "",
    ]
    for device, section in results["devices"].items():
        out += [f"## {device}", ""]
        out += networks_table(section["networks"], section["gemm"]["peak_gflops"]) + [""]
    e2e = results.get("end_to_end")
    if e2e:
        out += ["## End to end (CPU)", ""] + warm_table(e2e["warm"]) + [""]
        if e2e.get("batch"):
            out += batch_table(e2e["batch"]) + [""]
        if e2e.get("cold_start"):
            cold = e2e["cold_start"]
            imports = ", ".join(
                f"{k} {v:.1f} s" for k, v in sorted(cold["top_level_imports_s"].items(), key=lambda kv: -kv[1])
            )
            out += [
                f"Cold start of the inference command on one image: {_ms(cold['wall_s'])} ms; top-level imports "
                f"(cumulative, -X importtime): {imports}.",
                "",
            ]
    service = (e2e or {}).get("service")
    if service:
        single, many = service["single"], service["concurrent"]
        out += [
            f"Service (clinic.service_bench): warm POST /predict of one {service['image_size'][0]} px X-ray over HTTP, "
            f"{service['requests']} requests: one client median {single.get('median_ms')} ms "
            f"({service['server_median_ms']} ms inside the service); {many['clients']} clients median "
            f"{many.get('median_ms')} ms, {many['throughput_per_s']} requests/s.",
            "",
        ]
    if results.get("training"):
        out += ["## Training", ""] + training_table(results["training"]["epochs"], results["training"]["iterations"])
    return "\n".join(out) + "\n"
