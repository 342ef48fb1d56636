"""The inference networks run by ONNX Runtime instead of eager torch (``runtime: onnxruntime`` in inference.yaml).

``for_runtime(module, runtime, input_shape)`` returns ``module`` itself for ``"torch"``, else an ``OnnxModule``: the
same network exported to ONNX (torch's exporter) and run by an ONNX Runtime CPU session with the torch thread count,
called like the module (a float32 tensor in, a tensor out). The export is cached by its content key (the weights,
the input shape, torch and the exporter's version) in ``cache_dir``, so only the first run pays for it (seconds a
network); an ONNX file is a graph, never a pickle. The batch dimension is dynamic unless ``dynamic_batch=False``.
"""

from __future__ import annotations

import contextlib
import hashlib
import inspect
import io
import json
import logging
import os
import stat
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

logger = logging.getLogger("nasal.inference")
RUNTIMES = ("torch", "onnxruntime")
OPSET = 18


def default_cache_dir() -> Path:
    """Where exports are cached when the config gives no folder: this user's cache folder (``$XDG_CACHE_HOME`` or
    ``~/.cache``), never a folder other users can write to (they could plant a graph that gives other answers)."""
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "nasal-fracture-bundle" / "onnx"


def _private(path: Path) -> bool:
    """``path`` is owned by this user and no one else may write to it."""
    info = path.stat()
    return info.st_uid == os.getuid() and not info.st_mode & (stat.S_IWGRP | stat.S_IWOTH)


def content_key(module: nn.Module, input_shape: Sequence[int], dynamic_batch: bool) -> str:
    """A digest of everything the exported graph depends on: the bundle's version and this module's source (a new
    ``forward`` or preprocessing), the class, its ``config`` (e.g. C's mean, std and high-pass settings), every
    parameter and buffer (persistent or not), the input shape and the exporter's versions."""
    import onnx

    digest = hashlib.sha256()
    digest.update(f"{type(module).__module__}.{type(module).__qualname__}|{list(input_shape)}|{dynamic_batch}".encode())
    digest.update(f"{OPSET}|{torch.__version__}|{onnx.__version__}|{_bundle_version()}".encode())
    digest.update(repr(getattr(module, "config", None)).encode())
    digest.update(_code_digest(module).encode())
    for name, tensor in [*module.named_parameters(), *module.named_buffers()]:
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()[:24]


def _bundle_version() -> str:
    try:
        return json.loads((Path(__file__).resolve().parent.parent / "configs" / "metadata.json").read_text())["version"]
    except (OSError, ValueError, KeyError):
        return "unknown"


def _code_digest(module: nn.Module) -> str:
    """A digest of the source files of the classes in ``module`` (itself and its submodules)."""
    digest = hashlib.sha256()
    for source in sorted({inspect.getsourcefile(type(m)) or "" for m in module.modules()}):
        with contextlib.suppress(OSError):
            digest.update(Path(source).read_bytes())
    return digest.hexdigest()


def export_onnx(module: nn.Module, input_shape: Sequence[int], dynamic_batch: bool = True) -> bytes:
    """``module`` (eval mode, on the CPU) as an ONNX model: input ``x`` of ``input_shape``, output ``y``."""
    module = module.eval()
    example = torch.rand(*input_shape)
    dims = ({0: torch.export.Dim("batch", min=1, max=4096)},) if dynamic_batch else None
    quiet = io.StringIO()
    with warnings.catch_warnings(), contextlib.redirect_stdout(quiet), torch.no_grad():
        warnings.simplefilter("ignore")
        program = torch.onnx.export(
            module,
            (example,),
            None,
            dynamo=True,
            input_names=["x"],
            output_names=["y"],
            dynamic_shapes=dims,
            opset_version=OPSET,
            verbose=False,
        )
    return program.model_proto.SerializeToString()


def cached_export(
    module: nn.Module, input_shape: Sequence[int], dynamic_batch: bool = True, cache_dir: str | Path | None = None
) -> Path | bytes:
    """The ONNX file of ``module`` in ``cache_dir`` (exported and written atomically when not there yet).

    A cache folder or file that another user owns or may write to is not trusted: the graph is then exported again
    and returned as bytes (with one warning), and nothing is cached.
    """
    folder = Path(cache_dir) if cache_dir else default_cache_dir()
    path = folder / f"{type(module).__name__.lower()}-{content_key(module, input_shape, dynamic_batch)}.onnx"
    try:
        folder.mkdir(mode=0o700, parents=True, exist_ok=True)
        trusted = _private(folder) and (not path.exists() or _private(path))
    except OSError as err:
        logger.warning("ONNX cache %s unusable (%s): exporting without a cache", folder, err)
        return export_onnx(module, input_shape, dynamic_batch)
    if not trusted:
        logger.warning("ONNX cache %s is writable by other users: not used, exporting without a cache", folder)
        return export_onnx(module, input_shape, dynamic_batch)
    if not path.is_file():
        logger.info("exporting %s to ONNX (%s); cached for later runs", type(module).__name__, path.name)
        data = export_onnx(module, input_shape, dynamic_batch)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        with os.fdopen(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600), "wb") as f:  # private, any umask
            f.write(data)
        os.replace(tmp, path)
    return path


def session(model: str | Path | bytes, threads: int | None = None):
    """An ONNX Runtime CPU session of ``model`` using ``threads`` intra-op threads (default: torch's)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = int(threads or torch.get_num_threads())
    options.inter_op_num_threads = 1
    options.log_severity_level = 3
    # no busy-waiting after each run: spinning threads would take the cores from torch and the writer between calls
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    source = model if isinstance(model, bytes) else str(model)
    return ort.InferenceSession(source, options, providers=["CPUExecutionProvider"])


class OnnxModule(nn.Module):
    """A network run by ONNX Runtime, called like the torch module it was exported from (CPU tensors out).

    Attributes set on the torch module that inference reads (e.g. the generator's ``region`` settings) are
    copied by ``for_runtime``; ``train()``/``eval()`` change nothing (the graph is an inference graph).
    """

    def __init__(self, model: str | Path | bytes, threads: int | None = None, name: str = "") -> None:
        super().__init__()
        self.session = session(model, threads)
        self.input_name = self.session.get_inputs()[0].name
        self.name = name
        self.eval()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        array = np.ascontiguousarray(x.detach().cpu().numpy(), dtype=np.float32)
        (out,) = self.session.run(None, {self.input_name: array})
        return torch.from_numpy(out)


def for_runtime(
    module: nn.Module,
    runtime: str,
    input_shape: Sequence[int],
    dynamic_batch: bool = True,
    cache_dir: str | Path | None = None,
    keep_attributes: Sequence[str] = ("region", "config"),
) -> nn.Module:
    """``module`` (eager torch) or its ONNX Runtime twin, by ``runtime`` (``"torch"`` or ``"onnxruntime"``).

    ONNX Runtime is used on the CPU only: a module on another device is returned as it is, with a log line.
    """
    if runtime not in RUNTIMES:
        raise ValueError(f"runtime must be one of {RUNTIMES}, got {runtime!r}")
    if runtime == "torch":
        return module
    device = next((p.device for p in module.parameters()), torch.device("cpu"))
    if device.type != "cpu":
        logger.info("runtime onnxruntime is CPU only: %s stays in torch on %s", type(module).__name__, device)
        return module
    graph = cached_export(module, input_shape, dynamic_batch, cache_dir)
    twin = OnnxModule(graph, name=type(module).__name__)
    for attr in keep_attributes:
        if hasattr(module, attr):
            setattr(twin, attr, getattr(module, attr))
    return twin


def max_difference(a: Any, b: Any) -> float:
    """The largest absolute difference between two outputs (tensors or arrays)."""
    x = a.detach().cpu().numpy() if isinstance(a, torch.Tensor) else np.asarray(a)
    y = b.detach().cpu().numpy() if isinstance(b, torch.Tensor) else np.asarray(b)
    return float(np.abs(x.astype(np.float64) - y.astype(np.float64)).max()) if x.size else 0.0
