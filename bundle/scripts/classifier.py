"""Fracture classifier C: MONAI ``EfficientNetBN`` (or a plain max-pooling CNN) behind one wrapper every stage reuses.

``FractureClassifier`` takes crops ``(B, 1, H, W)`` in ``[0, 1]`` and returns one fracture logit per
crop ``(B, 1)``. It owns the input convention (``"rgb"``: the gray channel replicated to 3, as in the
thesis; ``"gray"``: a 1-channel stem) and the intensity normalisation ``(x - mean) / std``, so a
caller never needs to know how C was trained.

The map the G-D-C stages call M(X), "the output of C's last convolutional layer", is ``features(x)``:
the head block of EfficientNet, ``swish(_bn1(_conv_head(x)))``, the last feature map before global
pooling, ``(B, C, S/32, S/32)`` with C = 1280 (b0) or 1536 (b3) and S the network's input size (the crop's
size, or ``input_size`` when the wrapper resizes crops internally). It is computed by the module named
``target_layer`` (``"head_act"``), the same layer ``gradcam`` hooks. (EfficientNet's own ``_swish``
module is shared by the stem and the head, so it cannot be hooked; ``head_act`` is the head's own.)

``model_name="convnet"`` swaps EfficientNet for ``ConvNet``: five 3x3 convolution blocks (MONAI ``Convolution``:
conv, batch norm, ReLU) with max pooling between them, global pooling and one linear output. It exists for
the quick CPU profile: EfficientNet-b0 trained from scratch on the 800 phantom training crops did not learn
within the CPU budget (validation AUC <= 0.70 after 20 epochs, 6 min), while this network reaches 0.97 in
about 12 epochs (80 s). Two problems found since are fixed here: MONAI's U(-1, 1) output layer (now PyTorch's
Linear initialisation) and BatchNorm statistics lagging the weights (``RecalibrateBatchNorm``);
``profiles/quick_efficientnet.yaml`` is the attempt with both. The CNN's feature map ``(B, 128, S/16, S/16)``
plays the same role as EfficientNet's head.

``pretrained=True`` starts EfficientNet (``"rgb"`` stem only) from ImageNet weights, as the thesis did: from
``pretrained_weights`` (a local state-dict file) or, without one, from MONAI's download (its ``url_map``). The start
is not part of ``config``: a saved classifier is rebuilt from its own weights and never downloads anything.

Checkpoints (``save_classifier``/``load_classifier``, format in ``checkpoint.py``) hold the constructor arguments,
the ``state_dict`` and an ``info`` dict (operating ``threshold`` chosen on the validation split, crop size, box source,
validation figures). Export and evaluation of the stage are in ``classifier_export.py``.
"""

from __future__ import annotations

import copy
import math
import re
import socket
from collections.abc import Iterable
from pathlib import Path

import torch
import torch.nn.functional as F
from ignite.engine import Engine, Events
from monai.networks.blocks import Convolution
from monai.networks.layers import separable_filtering
from monai.networks.nets import EfficientNetBN
from monai.networks.nets.efficientnet import url_map
from monai.visualize import GradCAM
from torch import nn

from . import checkpoint, fingerprint
from .masks import scale01

INPUT_MODES = ("rgb", "gray")
DOWNLOAD_TIMEOUT_S = 60.0  # a download that cannot reach its server fails instead of hanging


class ConvNet(nn.Module):
    """Plain CNN with EfficientNet's attribute names for the parts the wrapper uses.

    ``trunk``: blocks of 3x3 conv + batch norm + ReLU (MONAI ``Convolution``), 2x2 max pooling after every
    block but the last, whose activation is left to the wrapper's ``head_act``; then ``_avg_pooling``
    (global, replaced by max pooling when asked), ``_dropout`` and ``_fc``.
    """

    def __init__(
        self,
        in_channels: int,
        channels: tuple[int, ...] = (16, 32, 64, 128, 128),
        bn_momentum: float = 0.1,
        bn_eps: float = 1e-5,
    ) -> None:
        super().__init__()
        norm = ("batch", {"momentum": bn_momentum, "eps": bn_eps})
        layers: list[nn.Module] = []
        for i, ch in enumerate(channels):
            last = i == len(channels) - 1
            layers.append(Convolution(2, in_channels, ch, kernel_size=3, act=None if last else "relu", norm=norm))
            if not last:
                layers.append(nn.MaxPool2d(2))
            in_channels = ch
        self.trunk = nn.Sequential(*layers)
        self._avg_pooling = nn.AdaptiveAvgPool2d(1)
        self._dropout = nn.Dropout(0.0)
        self._fc = nn.Linear(in_channels, 1)


class FractureClassifier(nn.Module):
    """EfficientNetBN with one fracture logit, a fixed input convention and an exposed last feature map.

    Args:
        model_name: ``"efficientnet-b0"`` ... ``"efficientnet-b7"`` (MONAI ``EfficientNetBN``), or ``"convnet"``.
        in_channels_mode: ``"rgb"`` (1 channel replicated to 3) or ``"gray"`` (1-channel stem).
        mean, std: input normalisation ``(x - mean) / std``, applied last (after resizing and high-pass).
        bn_momentum, bn_eps: BatchNorm settings (PyTorch convention: ``momentum`` is the weight of the new batch;
            MONAI's default 0.01 is TensorFlow's 0.99 and lags far behind the weights in short trainings).
        input_size: resize every crop to ``input_size`` x ``input_size`` inside the network (bilinear, antialiased);
            None keeps the crop's size.
        highpass_sigma: if > 0, feed ``x - gaussian_blur(x, sigma)`` (sigma in pixels of the network input):
            removes the smooth soft-tissue and exposure background and keeps edges, lines and gaps.
        dropout_rate, drop_connect_rate: override EfficientNet's defaults for the variant (None: keep them).
        zero_init_residual: start every residual MBConv block as the identity (its last BN scale = 0).
        fix_depthwise_init: initialise depthwise convolutions with their real fan-out (k*k); MONAI's port uses
            k*k*channels, which makes them about sqrt(channels) times too small.
        pooling: global pooling before the output layer, ``"avg"`` (EfficientNet's) or ``"max"``.
        pretrained: start from ImageNet weights (``load_pretrained``; replaces the two initialisations above).
        pretrained_weights: the local state-dict file of those weights; None: MONAI's download.
        Only the first four and ``pooling`` change what a trained network computes; the rest shape training
        and are recorded (``pretrained``/``pretrained_weights`` in ``pretrained_source``, not in ``config``).
    """

    target_layer = "head_act"

    def __init__(
        self,
        model_name: str = "efficientnet-b0",
        in_channels_mode: str = "rgb",
        mean: float = 0.0,
        std: float = 1.0,
        bn_momentum: float = 0.01,
        bn_eps: float = 1e-3,
        input_size: int | None = None,
        highpass_sigma: float = 0.0,
        dropout_rate: float | None = None,
        drop_connect_rate: float | None = None,
        zero_init_residual: bool = False,
        fix_depthwise_init: bool = False,
        pooling: str = "avg",
        pretrained: bool = False,
        pretrained_weights: str | Path | None = None,
    ) -> None:
        super().__init__()
        if in_channels_mode not in INPUT_MODES:
            raise ValueError(f"in_channels_mode must be one of {INPUT_MODES}, got '{in_channels_mode}'")
        if pooling not in ("avg", "max"):
            raise ValueError(f"pooling must be 'avg' or 'max', got '{pooling}'")
        if std <= 0:
            raise ValueError(f"std must be positive, got {std}")
        self.config = {
            "model_name": model_name,
            "in_channels_mode": in_channels_mode,
            "mean": float(mean),
            "std": float(std),
            "bn_momentum": float(bn_momentum),
            "bn_eps": float(bn_eps),
            "input_size": None if input_size is None else int(input_size),
            "highpass_sigma": float(highpass_sigma),
            "dropout_rate": dropout_rate,
            "drop_connect_rate": drop_connect_rate,
            "zero_init_residual": bool(zero_init_residual),
            "fix_depthwise_init": bool(fix_depthwise_init),
            "pooling": pooling,
        }
        self.in_channels = 3 if in_channels_mode == "rgb" else 1
        if model_name == "convnet":
            self.net = ConvNet(self.in_channels, bn_momentum=bn_momentum, bn_eps=bn_eps)
            self.head_act = nn.ReLU()
        else:
            self.net = EfficientNetBN(
                model_name,
                pretrained=False,
                progress=False,
                spatial_dims=2,
                in_channels=self.in_channels,
                num_classes=1,
                norm=("batch", {"eps": bn_eps, "momentum": bn_momentum}),
            )
            # MONAI draws the output layer from U(+-1/sqrt(classes)): U(+-1) for one logit, which starts training at
            # logits of +-10 (loss ~2). PyTorch's own Linear initialisation, U(+-1/sqrt(features)), starts near 0.
            self.net._fc.reset_parameters()
            # The head's own activation (EfficientNet's ``_swish`` also serves the stem): hookable, parameter-free.
            self.head_act = copy.deepcopy(self.net._swish)
        if pooling == "max":  # a fracture is a small local finding: "anywhere in the crop" rather than "on average"
            self.net._avg_pooling = nn.AdaptiveMaxPool2d(1)
        self.register_buffer("blur_kernel", _gaussian_kernel(highpass_sigma), persistent=False)
        self._configure(dropout_rate, drop_connect_rate, zero_init_residual, fix_depthwise_init)
        self.pretrained_source: str | None = None
        if pretrained:
            if model_name == "convnet" or in_channels_mode != "rgb":
                raise ValueError(
                    "classifier#pretrained needs an EfficientNet with the RGB stem (ImageNet weights have 3 input "
                    f"channels): set classifier#in_channels_mode rgb, or classifier#pretrained false "
                    f"(got {model_name}, {in_channels_mode})"
                )
            self.pretrained_source = load_pretrained(self.net, model_name, pretrained_weights)

    def _configure(self, dropout_rate, drop_connect_rate, zero_init_residual: bool, fix_depthwise_init: bool) -> None:
        if dropout_rate is not None:
            self.net._dropout.p = float(dropout_rate)
        for block in getattr(self.net, "_blocks", nn.Sequential()).modules():
            if not hasattr(block, "drop_connect_rate") or not hasattr(block, "_project_conv"):
                continue
            if drop_connect_rate is not None:
                block.drop_connect_rate = float(drop_connect_rate)
            residual = block.id_skip and block.stride == 1 and block.in_channels == block.out_channels
            if zero_init_residual and residual:
                nn.init.zeros_(block._bn2.weight)
        if fix_depthwise_init:
            for m in self.net.modules():
                if isinstance(m, nn.Conv2d) and m.groups > 1:
                    fan_out = m.kernel_size[0] * m.kernel_size[1] * m.out_channels // m.groups
                    nn.init.normal_(m.weight, 0.0, math.sqrt(2.0 / fan_out))

    def prepare(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, 1, H, W)`` in [0, 1] -> the network's input ``(B, 1 or 3, S, S)``: resized, high-passed, normalised."""
        if x.ndim != 4 or x.shape[1] != 1:
            raise ValueError(f"expected crops of shape (B, 1, H, W), got {tuple(x.shape)}")
        x = x.float()
        size = self.config["input_size"]
        if size and tuple(x.shape[-2:]) != (size, size):
            x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False, antialias=True)
        if self.blur_kernel.numel() > 1:
            k = self.blur_kernel.to(x.dtype)
            x = x - separable_filtering(x, [k, k], mode="replicate")
        x = (x - self.config["mean"]) / self.config["std"]
        return x.expand(-1, self.in_channels, -1, -1)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """The last feature map before pooling: EfficientNet's ``swish(_bn1(_conv_head(...)))``, ``(B, C, S/32, S/32)``;
        ConvNet's last block, ``(B, 128, S/16, S/16)``.

        ``S`` is ``input_size`` if set, else the crop's size; upsample it to the crop's size to overlay it.
        """
        n = self.net
        if isinstance(n, ConvNet):
            return self.head_act(n.trunk(self.prepare(x)))
        h = n._swish(n._bn0(n._conv_stem(n._conv_stem_padding(self.prepare(x)))))
        h = n._blocks(h)
        h = n._bn1(n._conv_head(n._conv_head_padding(h)))
        return self.head_act(h)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Fracture logits ``(B, 1)`` (sigmoid gives the probability)."""
        n = self.net
        h = n._avg_pooling(self.features(x)).flatten(1)
        return n._fc(n._dropout(h))

    def gradcam(self, x: torch.Tensor) -> torch.Tensor:
        """Grad-CAM of the fracture logit at ``target_layer``, upsampled to ``(B, 1, H, W)``, each map scaled to [0, 1].

        Uses ``monai.visualize.GradCAM``; the model is put in eval mode for the call and restored after.
        A map that is zero everywhere (no positive evidence) stays zero.
        """
        layer = dict(self.named_modules())[self.target_layer]
        before = set(layer._forward_hooks) | set(layer._backward_hooks)
        try:
            cam = GradCAM(nn_module=self, target_layers=self.target_layer, postprocessing=scale01)
            with torch.enable_grad():
                out = cam(x.float().detach().requires_grad_(True), class_idx=0)
        finally:  # GradCAM hooks the layer on every construction: remove its hooks, keep anyone else's
            for hooks in (layer._forward_hooks, layer._backward_hooks):
                for key in set(hooks) - before:
                    del hooks[key]
        return out.detach()


class RecalibrateBatchNorm:
    """Ignite handler: at the end of every epoch (attach it before the ``ValidationHandler``), recompute the running
    statistics of every BatchNorm layer with the current weights, as the plain average over ``num_batches`` batches
    of ``loader`` in training mode without gradients ("precise BN").

    The running averages lag the weights; with EfficientNet's ~50 BN layers the lag adds up, and in short
    trainings the network validated (eval mode) falls far behind the one trained: b0 fitting 64 training crops
    scored AUC 0.87 on them in eval mode, 1.00 after recalibration. The statistics the best network is saved with
    are these.
    """

    def __init__(self, loader: Iterable, num_batches: int, network: nn.Module | None = None) -> None:
        self.loader, self.num_batches, self.network = loader, int(num_batches), network

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.EPOCH_COMPLETED, self)

    def __call__(self, engine: Engine) -> None:
        network = self.network or engine.network
        norms = [m for m in network.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
        if not norms or self.num_batches <= 0:
            return
        momenta = [m.momentum for m in norms]
        for m in norms:
            m.reset_running_stats()
            m.momentum = None  # cumulative average
        was_training = network.training
        network.train()
        try:
            with torch.no_grad():
                for i, batch in enumerate(self.loader):
                    if i >= self.num_batches:
                        break
                    network(engine.prepare_batch(batch, engine.state.device, engine.non_blocking)[0])
        finally:
            for m, momentum in zip(norms, momenta, strict=True):
                m.momentum = momentum
            network.train(was_training)


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """A weights-only state dict from ``path``: ``torch.load(weights_only=True)``, or ``.safetensors``."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"classifier#pretrained_weights: no file at {path}")
    if path.suffix == ".safetensors":
        try:
            from safetensors.torch import load_file
        except ImportError as err:
            raise ImportError(f"{path}: reading .safetensors needs the safetensors package") from err
        state = load_file(str(path))
    else:
        state = checkpoint.safe_load(path)
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ValueError(f"{path}: not a state dict (parameter name -> tensor)")
    return state


def download_state_dict(model_name: str) -> dict[str, torch.Tensor]:
    """The ImageNet weights MONAI's ``EfficientNetBN(pretrained=True)`` downloads (its ``url_map``, torch hub's
    cache, weights only); a one-line error naming ``classifier#pretrained_weights`` when that fails."""
    url = url_map.get(model_name)
    if url is None:
        raise ValueError(f"classifier#pretrained: MONAI has no ImageNet weights for '{model_name}'")
    before = socket.getdefaulttimeout()
    socket.setdefaulttimeout(before or DOWNLOAD_TIMEOUT_S)
    try:
        return torch.hub.load_state_dict_from_url(url, progress=False, weights_only=True)
    except Exception as err:  # offline (URLError), refused, a proxy's error page, a damaged download...
        why = " ".join(str(err).split())[:200]
        raise RuntimeError(
            f"classifier#pretrained: could not download the ImageNet weights of {model_name} ({type(err).__name__}: "
            f"{why}); on a machine without internet, download {url} elsewhere and set classifier#pretrained_weights "
            "to that file (or classifier#pretrained false to train from scratch)"
        ) from err
    finally:
        socket.setdefaulttimeout(before)


def load_pretrained(net: nn.Module, model_name: str, path: str | Path | None = None) -> str:
    """Copy ImageNet weights into ``net`` (an ``EfficientNetBN``) from ``path`` or MONAI's download; return the file's
    name or the URL.

    The file may use MONAI's parameter names or those of the EfficientNet-PyTorch file MONAI downloads. Every tensor
    but the output layer ``_fc`` (1000 ImageNet classes here, one fracture logit) must be there with the same shape.
    """
    source = read_state_dict(path) if path else download_state_dict(model_name)
    stacked = re.compile(r"(.+)\.\d+(\.\d+\..+)")  # MONAI "_blocks.<stage>.<block>." = the file's "_blocks.<block>."
    state, wrong = net.state_dict(), []
    for key, value in state.items():
        if key.startswith("_fc.") or key.endswith("num_batches_tracked"):
            continue
        found = next((source[k] for k in (key, stacked.sub(r"\1\2", key)) if k in source), None)
        if found is None or found.shape != value.shape:
            wrong.append(f"{key} {tuple(value.shape)} vs {'missing' if found is None else tuple(found.shape)}")
        else:
            state[key] = found.to(value.dtype)
    where = str(path) if path else url_map[model_name]
    if wrong:
        raise ValueError(
            f"classifier#pretrained_weights: {where} does not fit {model_name} with an RGB stem: "
            f"{len(wrong)} tensors missing or of another shape (first: {wrong[0]})"
        )
    net.load_state_dict(state)
    return Path(path).name if path else where  # a file's name only: paths on hospital machines can identify


def pretrained_parts(values: dict) -> dict[str, str]:
    """The fingerprint part of the ImageNet start's file, by content (``{}`` without ``pretrained`` or a file)."""
    path = values.get("pretrained_weights") if values.get("pretrained") else None
    return {"pretrained_weights": fingerprint.file_fingerprint(path)} if path else {}


def _gaussian_kernel(sigma: float) -> torch.Tensor:
    """Normalised 1D Gaussian of radius ceil(3 sigma); a single 1 (no blur) when sigma <= 0."""
    if sigma <= 0:
        return torch.ones(1)
    r = max(1, math.ceil(3 * sigma))
    t = torch.arange(-r, r + 1, dtype=torch.float32)
    k = torch.exp(-(t**2) / (2 * sigma**2))
    return k / k.sum()


def save_classifier(path: str | Path, model: FractureClassifier, threshold: float, info: dict | None = None) -> Path:
    """Write C as a ``checkpoint.CLASSIFIER_FORMAT`` file: its constructor args, weights, ``info`` + ``threshold``.

    ``info`` should say at least ``crop_size`` and ``box_source``; values must be plain Python types.
    """
    return checkpoint.save(
        path, checkpoint.CLASSIFIER_FORMAT, {"classifier": model}, {**(info or {}), "threshold": float(threshold)}
    )


def load_classifier(path: str | Path, device: str | torch.device = "cpu") -> tuple[FractureClassifier, dict]:
    """Rebuild C from ``save_classifier``'s file; return ``(model.eval(), info)`` with ``threshold`` and ``config``."""
    nets, info = checkpoint.load(path, checkpoint.CLASSIFIER_FORMAT, {"classifier": FractureClassifier}, device)
    if "classifier" not in nets or not isinstance(info.get("threshold"), (int, float)):
        raise checkpoint.CheckpointError(f"{path}: classifier checkpoint without its network or operating threshold")
    model = nets["classifier"]
    return model, {**info, "threshold": float(info["threshold"]), "config": dict(model.config)}
