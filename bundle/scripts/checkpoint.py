"""Self-describing weights files of the classifier C and of the G-D-C networks: one format, safe loading, atomic writes.

A file is one dict, readable with ``torch.load(path, weights_only=True)`` and nothing else::

    {"format": "<kind>/<version>",
     "networks": {name: {"config": constructor kwargs, "state_dict": tensors}},
     "info": plain Python values (stage, crop size, operating threshold, region settings...),
     name: the same state dict (for MONAI's ckpt_export --key_in_ckpt name), for each network}

Every network keeps its constructor kwargs as ``module.config``; ``load`` rebuilds it from them with the class the
caller names, so a file never chooses what code runs. Files are loaded only with ``weights_only=True`` (a pickled
class or ``__reduce__`` is refused, never executed) and written atomically (temporary file in the same folder,
``fsync``, ``os.replace``): a failed write leaves the previous file as it was.

Files of the previous layout (``/1``: the classifier's ``config``/``state_dict``/``threshold`` at the top level, or
the GAN's networks at the top level) are read too. The Ignite ``CheckpointSaver`` files of a training run (resumption
and best-model files) are plain state dicts; ``state_dict_from`` reads those.
"""

from __future__ import annotations

import os
import re
import tempfile
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

CLASSIFIER_FORMAT = "nasal-fracture-classifier/2"
GAN_FORMAT = "nasal-fracture-gan/2"
# previous layouts, still readable: tag -> current tag
LEGACY_FORMATS = {"nasal-fracture-classifier/1": CLASSIFIER_FORMAT, "nasal-fracture-gan/1": GAN_FORMAT}


class CheckpointError(ValueError):
    """A weights file that is not the kind of checkpoint asked for (foreign, old, damaged or unsafe)."""


def fsync_dir(folder: Path) -> None:
    """Make a rename in ``folder`` durable (POSIX; a no-op elsewhere)."""
    if hasattr(os, "O_DIRECTORY"):
        dir_fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)


def _umask() -> int:
    """This process's umask, read without changing it where Linux tells it (``/proc/self/status``): setting it to
    read it, the only portable way, would briefly change it for files that other threads create meanwhile."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except OSError:
        pass
    umask = os.umask(0)
    os.umask(umask)
    return umask


def atomic_replace(tmp: str | Path, path: str | Path) -> Path:
    """``fsync`` the finished file ``tmp``, give it the usual permissions, and ``os.replace`` it onto ``path``."""
    tmp, path = Path(tmp), Path(path)
    with open(tmp, "rb+") as f:
        os.fsync(f.fileno())
    os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600 files; weights are shared like any other output
    os.replace(tmp, path)
    fsync_dir(path.parent)
    return path


def atomic_write_text(path: str | Path, text: str, tmp: str | Path | None = None) -> Path:
    """Write ``text`` to ``tmp`` (default ``.<name>.tmp`` beside ``path``), then ``atomic_replace`` it onto ``path``
    (fsync, rename, fsync of the folder); a failed write removes ``tmp`` and leaves ``path`` as it was."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp") if tmp is None else Path(tmp)
    try:
        tmp.write_text(text)
        return atomic_replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def atomic_save(obj: Any, path: str | Path) -> Path:
    """``torch.save`` to a temporary file beside ``path``, ``fsync`` it, then ``os.replace`` it onto ``path``.

    A kill or an error at any point leaves ``path`` as it was (old content or absent), never truncated.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(obj, f)
        atomic_replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def safe_load(path: str | Path) -> Any:
    """``torch.load(path, map_location="cpu", weights_only=True)``; a file it refuses raises ``CheckpointError``."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except OSError:
        raise
    except Exception as err:  # UnpicklingError (a pickled class or __reduce__), RuntimeError (not a torch file)...
        raise CheckpointError(f"{path}: not a weights file that loads safely ({_why_refused(err)})") from err


def _why_refused(err: Exception) -> str:
    """One line on why ``torch.load(weights_only=True)`` refused a file, without its advice to load it unsafely."""
    text = " ".join(str(err).split())
    found = re.search(r"Unsupported global: GLOBAL (\S+)", text)
    if found:
        return f"it holds code or objects other than weights: {found.group(1)}"
    found = re.search(r"WeightsUnpickler error: (.+?)(?: Check the documentation|$)", text)
    if found:
        return f"not weights data: {found.group(1).strip()[:200]}"
    if "PytorchStreamReader" in text:
        return "damaged or truncated: " + text.split(". ")[0].removeprefix("PytorchStreamReader ")
    return f"{type(err).__name__}: {text.split('. ')[0][:300]}" if text else type(err).__name__


def save(path: str | Path, fmt: str, networks: Mapping[str, nn.Module], info: Mapping | None = None) -> Path:
    """Write ``networks`` (name -> module with a ``config`` dict of constructor kwargs) and ``info`` as ``fmt``."""
    entries = {}
    for name, net in networks.items():
        if not isinstance(getattr(net, "config", None), dict):
            raise TypeError(f"network '{name}' ({type(net).__name__}) has no 'config' dict to rebuild it from")
        entries[name] = {
            "config": dict(net.config),
            "state_dict": {k: v.detach().cpu() for k, v in net.state_dict().items()},
        }
    # each state dict also at the top level under its network's name (the same tensors: stored once), so MONAI's
    # `ckpt_export --key_in_ckpt <name>` and `CheckpointLoader` read it like any Model Zoo checkpoint
    aliases = {name: entry["state_dict"] for name, entry in entries.items()}
    return atomic_save({**aliases, "format": fmt, "networks": entries, "info": dict(info or {})}, path)


def _upgrade(ckpt: dict) -> dict:
    """A ``/1`` file's content in the current layout."""
    old = ckpt["format"]
    if old == "nasal-fracture-classifier/1":
        net = {"config": ckpt.get("config"), "state_dict": ckpt.get("state_dict")}
        info = {**ckpt.get("info", {}), "threshold": ckpt.get("threshold")}
        return {"format": CLASSIFIER_FORMAT, "networks": {"classifier": net}, "info": info}
    nets = {k: v for k, v in ckpt.items() if k not in ("format", "info")}
    return {"format": LEGACY_FORMATS[old], "networks": nets, "info": ckpt.get("info", {})}


def read(path: str | Path, fmt: str) -> dict:
    """The checked content of a ``fmt`` file: ``{"format", "networks", "info"}``; anything else raises."""
    ckpt = safe_load(path)
    found = ckpt.get("format") if isinstance(ckpt, dict) else None
    if found in LEGACY_FORMATS:
        ckpt = _upgrade(ckpt)
        found = ckpt["format"]
    if found != fmt:
        what = f"format '{found}'" if found else f"a {type(ckpt).__name__} without a format tag"
        raise CheckpointError(f"{path}: expected a '{fmt}' checkpoint, found {what}")
    nets, info = ckpt.get("networks"), ckpt.get("info")
    entries_ok = isinstance(nets, dict) and all(
        isinstance(e, dict) and isinstance(e.get("config"), dict) and isinstance(e.get("state_dict"), dict)
        for e in nets.values()
    )
    if not entries_ok or not isinstance(info, dict):
        raise CheckpointError(f"{path}: '{fmt}' checkpoint without its networks' config/state_dict or info")
    return ckpt


def load(
    path: str | Path,
    fmt: str,
    builders: Mapping[str, Callable[..., nn.Module]],
    device: str | torch.device = "cpu",
) -> tuple[dict[str, nn.Module], dict]:
    """Rebuild every network of a ``fmt`` file with ``builders[name](**config)``, load its weights, eval mode.

    Returns ``(networks, info)``. A network name without a builder raises ``CheckpointError``.
    """
    ckpt = read(path, fmt)
    nets = {}
    for name, entry in ckpt["networks"].items():
        if name not in builders:
            raise CheckpointError(f"{path}: unknown network '{name}' in a '{fmt}' file (expected {sorted(builders)})")
        try:
            net = builders[name](**entry["config"])
            net.load_state_dict(entry["state_dict"])
        except (TypeError, RuntimeError) as err:
            first = str(err).strip().splitlines()[0]
            raise CheckpointError(f"{path}: network '{name}' does not rebuild from its config ({first})") from err
        nets[name] = net.to(device).eval()
    return nets, dict(ckpt["info"])


def state_dict_from(path: str | Path, key: str = "network") -> dict[str, torch.Tensor]:
    """The weights of an Ignite ``CheckpointSaver`` file: its ``key`` entry, or the file itself if it has none."""
    ckpt = safe_load(path)
    state = ckpt[key] if isinstance(ckpt, dict) and key in ckpt else ckpt
    if not isinstance(state, dict):
        raise CheckpointError(f"{path}: expected a state dict (or a dict with '{key}'), found {type(state).__name__}")
    return state
