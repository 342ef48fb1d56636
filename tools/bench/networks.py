"""Each network of a profile (detector, classifier C, generator G) built from the bundle's configs and measured.

Networks are built untrained from the stage configs merged with the profile (``common.yaml`` + stage + profile):
a network's speed does not depend on its weights. Per network: latency at batch 1, throughput at the best batch
size tried, training images/s (forward, backward and an Adam step in train mode, on a stand-in loss: the mean of
the outputs; the stages' own losses add little to the networks' cost), peak resident memory of one inference and
one training step, FLOPs per image counted by ``torch.utils.flop_counter`` and the achieved FLOP/s as a fraction
of the measured GEMM peak. Each is exported to TorchScript (MONAI's ``convert_to_torchscript``, what
``ckpt_export`` calls, by tracing) and to ONNX (``scripts.onnx_runtime``), both run beside eager torch and their
outputs compared: equal when the largest absolute difference is at most ``TOLERANCE`` times max(1, largest
absolute eager output).
"""

from __future__ import annotations

import contextlib
import copy
import io
import warnings
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from .stats import PeakMemory, summary, timings

TOLERANCE = 1e-4
CONFIGS = {
    "classifier": ("crop_training.yaml", "classifier.yaml"),
    "generator": ("crop_training.yaml", "gan_common.yaml", "gd.yaml"),
}


@dataclass
class Network:
    """A network to measure: the module (train mode as built), one image's input shape, its training batch."""

    name: str
    module: nn.Module
    shape: tuple[int, ...]
    train_batch: int
    detail: str


def _parser(profile: str, stage_files: tuple[str, ...] = ()):
    from monai.bundle import ConfigParser

    from scripts import BUNDLE_ROOT

    configs = BUNDLE_ROOT / "configs"
    files = [configs / "common.yaml", *(configs / f for f in stage_files), configs / "profiles" / f"{profile}.yaml"]
    parser = ConfigParser()
    parser.read_config([str(f) for f in files])
    return parser


class _FirstOutput(nn.Module):
    """A detection model's raw predictions in eval mode (``scripts.detector.RawPredictions``), all outputs in train
    mode (the feature maps the loss reads)."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> Any:
        out = self.model(x)
        return out[0] if not self.training and isinstance(out, (tuple, list)) else out


def build(profile: str) -> list[Network]:
    """The detector, classifier C and generator G of ``profile``, untrained, as its configs build them."""
    from scripts.yolo_export import prepare_ultralytics

    common = _parser(profile)
    detector = common.get_parsed_content("detector")
    prepare_ultralytics(None)
    from ultralytics.nn.tasks import DetectionModel

    with contextlib.redirect_stdout(io.StringIO()):
        yolo = DetectionModel(cfg=str(detector["model"]), nc=1, verbose=False)
    crop = int(common.get_parsed_content("crop_size"))
    imgsz = int(detector["imgsz"])
    classifier = _parser(profile, CONFIGS["classifier"])
    classifier["classifier#pretrained"] = False  # the architecture is what is timed: no ImageNet download
    generator = _parser(profile, CONFIGS["generator"])
    c_cfg = classifier.get_parsed_content("classifier")
    g_cfg = generator.get_parsed_content("gd")
    return [
        Network(
            "detector", _FirstOutput(yolo), (3, imgsz, imgsz), int(detector["batch"]), f"{detector['model']} {imgsz} px"
        ),
        Network(
            "classifier",
            classifier.get_parsed_content("network_def"),
            (1, crop, crop),
            int(c_cfg["batch_size"]),
            f"{c_cfg['model_name']} {crop} px",
        ),
        Network(
            "generator",
            generator.get_parsed_content("network_def"),
            (1, crop, crop),
            int(g_cfg["batch_size"]),
            f"BasicUNet {list(g_cfg['generator_features'])} {crop} px",
        ),
    ]


def _inference_copy(net: Network) -> nn.Module:
    module = copy.deepcopy(net.module).eval()
    inner = getattr(module, "model", None)
    if net.name == "detector" and hasattr(inner, "fuse"):  # conv + batch norm folded, as scripts.detector runs it
        module.model = inner.fuse(verbose=False)
    return module


def _sync(device: str) -> None:
    if device != "cpu":
        torch.cuda.synchronize()


def count_flops(module: nn.Module, x: torch.Tensor) -> int:
    """FLOPs of one forward pass of ``module`` on ``x`` (``torch.utils.flop_counter``)."""
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter, torch.no_grad():
        module(x)
    return int(counter.get_total_flops())


def _loss(out: Any) -> torch.Tensor:
    if isinstance(out, torch.Tensor):
        return out.float().mean()
    if isinstance(out, dict):
        out = list(out.values())
    return sum(_loss(o) for o in out if isinstance(o, (torch.Tensor, list, tuple, dict)))


def training_rate(net: Network, device: str, batch: int, iterations: int) -> dict[str, Any]:
    """Images/s of forward + backward + Adam step in train mode at ``batch``, and the peak memory of one step."""
    module = copy.deepcopy(net.module).to(device).train()
    optimiser = torch.optim.Adam(module.parameters(), lr=1e-4)
    x = torch.rand(batch, *net.shape, device=device)

    def step() -> None:
        optimiser.zero_grad(set_to_none=True)
        _loss(module(x)).backward()
        optimiser.step()
        _sync(device)

    step()
    with PeakMemory(cuda=device != "cpu") as memory:
        step()
    seconds = timings(step, iterations, warmup=0)
    rates = [batch / s for s in seconds]
    return {"batch": batch, "images_per_s": summary(rates), "peak_mib": memory.cuda_mib or memory.mib}


def _latency(fn, x: torch.Tensor, device: str, repeat: int) -> list[float]:
    def call() -> None:
        with torch.no_grad():
            fn(x)
        _sync(device)

    return timings(call, repeat, warmup=2)


def _equal(reference: torch.Tensor, other: Any) -> dict[str, Any]:
    from scripts.onnx_runtime import max_difference

    diff = max_difference(reference, other)
    scale = max(1.0, float(reference.abs().max()))
    return {"max_abs_diff": diff, "tolerance": TOLERANCE * scale, "equal": diff <= TOLERANCE * scale}


def exports(net: Network, module: nn.Module, device: str, repeat: int) -> dict[str, Any]:
    """TorchScript (MONAI, traced) and ONNX Runtime twins of ``module``: outputs against eager, latency at batch 1."""
    from monai.networks.utils import convert_to_torchscript

    from scripts.onnx_runtime import OnnxModule, export_onnx

    x1 = torch.rand(1, *net.shape, device=device)
    dynamic = net.name != "detector"
    xs = torch.rand(2 if dynamic else 1, *net.shape, device=device)
    with torch.no_grad():
        reference = module(xs)
    out: dict[str, Any] = {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        scripted = convert_to_torchscript(module, use_trace=True, inputs=[x1])
    with torch.no_grad():
        out["torchscript"] = {
            **_equal(reference, scripted(xs)),
            "latency_s": summary(_latency(scripted, x1, device, repeat)),
        }
    if device == "cpu":
        cpu = module
        head = getattr(getattr(cpu, "model", None), "model", None)
        dyn = head[-1] if head is not None and hasattr(head[-1], "dynamic") else None
        if dyn is not None:
            dyn.dynamic = True  # anchors from the input while tracing (as Ultralytics' exporter does)
        try:
            onnx = OnnxModule(export_onnx(cpu, (1, *net.shape), dynamic_batch=dynamic))
        finally:
            if dyn is not None:
                dyn.dynamic = False
        out["onnxruntime"] = {**_equal(reference, onnx(xs)), "latency_s": summary(_latency(onnx, x1, device, repeat))}
    return out


def measure(
    net: Network,
    device: str,
    gemm_gflops: float,
    repeat: int = 10,
    batches: tuple[int, ...] = (1, 2, 4, 8, 16),
    train_batch: int | None = None,
    train_iterations: int = 3,
    with_exports: bool = True,
) -> dict[str, Any]:
    """Every figure of one network (see the module doc)."""
    module = _inference_copy(net).to(device)
    x1 = torch.rand(1, *net.shape, device=device)
    flops = count_flops(module, x1)
    with PeakMemory(cuda=device != "cpu") as memory:
        with torch.no_grad():
            module(x1)
    latency = _latency(module, x1, device, repeat)
    rates = {}
    for b in batches:
        xb = torch.rand(b, *net.shape, device=device)
        rates[b] = summary([b / s for s in _latency(module, xb, device, max(3, repeat // 3))])
    best = max(rates, key=lambda b: rates[b]["median"])
    result: dict[str, Any] = {
        "network": net.name,
        "detail": net.detail,
        "parameters": sum(p.numel() for p in module.parameters()),
        "device": device,
        "flops_per_image": flops,
        "latency_s": summary(latency),
        "throughput": {str(b): r for b, r in rates.items()},
        "best_batch": best,
        "best_images_per_s": rates[best]["median"],
        "peak_mib_inference": memory.cuda_mib or memory.mib,
        "training": training_rate(net, device, min(net.train_batch, train_batch or net.train_batch), train_iterations),
    }
    result["gemm_fraction_batch1"] = flops / result["latency_s"]["median"] / (gemm_gflops * 1e9)
    result["gemm_fraction_best"] = flops * result["best_images_per_s"] / (gemm_gflops * 1e9)
    if with_exports:
        result["exports"] = exports(net, module, device, repeat)
    return result
