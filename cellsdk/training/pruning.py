"""Structured pruning: remove whole channels (not single weights) so the int8 model really runs faster.

Unstructured zeros save nothing on CPU kernels; removing channels makes every convolution smaller. The pruner is
`torch-pruning <https://github.com/VainF/Torch-Pruning>`_'s dependency-graph ``MetaPruner`` with L2 group
magnitude importance: it follows each channel through every layer it touches (depthwise convolutions, batch norms,
residual additions) and removes it everywhere at once. :func:`prune_to_macs` searches the channel ratio that brings
the model to a target share of its multiply-accumulates, channel counts rounded to multiples of 8 (what SIMD int8
kernels like). The classifier head keeps its outputs.

A pruned checkpoint records what was done in ``metadata.training["pruning"]`` (MACs and parameters before and
after, the ratio, the method); :func:`cellsdk.training.checkpoint.load_checkpoint` rebuilds the architecture and
shapes each layer to the stored weights (:func:`shape_like`), so conversion and the gate work unchanged.

Examples:
    >>> from cellsdk.training.models import create_model
    >>> model, _ = create_model("test_efficientnet", num_classes=3, pretrained="none")
    >>> pruned, record = prune_to_macs(model, 64, 0.5)  # doctest: +SKIP
    >>> record["macs_after"] <= 0.5 * record["macs_before"]  # doctest: +SKIP
    True
"""

from __future__ import annotations

import copy
import os
from pathlib import Path
from typing import Any

import torch

from cellsdk.errors import BackendNotInstalledError, ConfigError
from cellsdk.training.shapes import shape_like

__all__ = ["PRUNE_INSTALL", "count_macs", "format_pruning", "prune_and_finetune", "prune_checkpoint", "prune_to_macs",
           "require_pruner", "shape_like"]

PRUNE_INSTALL = "pip install 'cellsdk[prune]' (torch-pruning)"


def _torch_pruning() -> Any:
    try:
        import torch_pruning
    except ImportError:
        raise BackendNotInstalledError(f"structured pruning needs torch-pruning, which is not installed: "
                                       f"{PRUNE_INSTALL}") from None
    return torch_pruning


def require_pruner() -> None:
    """Raise one clear line when torch-pruning is missing.

    Examples:
        >>> require_pruner() is None  # installed here
        True
    """
    _torch_pruning()


def format_pruning(record: dict[str, Any]) -> str:
    """One line: MACs and parameters before and after.

    Examples:
        >>> format_pruning({"macs_before": 121_600_000, "macs_after": 60_200_000, "params_before": 3_381_256,
        ...                 "params_after": 1_751_808, "channel_ratio": 0.282})
        'pruned: 0.122 -> 0.060 GMAC (49.5 %), 3.38 -> 1.75 M parameters, 28.2 % of the channels removed'
    """
    return (f"pruned: {record['macs_before'] / 1e9:.3f} -> {record['macs_after'] / 1e9:.3f} GMAC "
            f"({record['macs_after'] / record['macs_before'] * 100:.1f} %), {record['params_before'] / 1e6:.2f} -> "
            f"{record['params_after'] / 1e6:.2f} M parameters, {record['channel_ratio'] * 100:.1f} % of the channels "
            "removed")


def count_macs(model: Any, input_size: int) -> tuple[int, int]:
    """(multiply-accumulates, parameters) of one ``input_size`` x ``input_size`` image through ``model``.

    Examples:
        >>> from cellsdk.training.models import create_model
        >>> macs, params = count_macs(create_model("test_efficientnet", 3, "none")[0], 64)
        >>> macs > 0 and params > 0
        True
    """
    tp = _torch_pruning()
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            macs, params = tp.utils.count_ops_and_params(model, torch.zeros(1, 3, input_size, input_size))
    finally:
        model.train(was_training)
    return int(macs), int(params)


def _pruned_copy(model: Any, input_size: int, ratio: float, round_to: int) -> Any:
    tp = _torch_pruning()
    candidate = copy.deepcopy(model).eval()
    head = candidate.get_classifier() if hasattr(candidate, "get_classifier") else None
    pruner = tp.pruner.MetaPruner(candidate, torch.zeros(1, 3, input_size, input_size),
                                  importance=tp.importance.GroupMagnitudeImportance(p=2), pruning_ratio=ratio,
                                  ignored_layers=[head] if isinstance(head, torch.nn.Module) else [],
                                  round_to=round_to, global_pruning=False)
    with torch.no_grad():
        pruner.step()
    return candidate


def prune_to_macs(model: Any, input_size: int, target: float, *, round_to: int = 8,
                  arch: str = "the model") -> tuple[Any, dict[str, Any]]:
    """A copy of ``model`` with whole channels removed until its MACs are at most ``target`` (a share of today's,
    e.g. 0.5), and the record of it. ``model`` itself is left as it is.

    Raises:
        ConfigError: ``target`` out of (0, 1), or an architecture the dependency-graph pruner cannot handle (one
            line naming it). BackendNotInstalledError: torch-pruning is missing.

    Examples:
        >>> from cellsdk.training.models import create_model
        >>> model, _ = create_model("efficientnet_lite0", 8, "none", 128)  # doctest: +SKIP
        >>> round(prune_to_macs(model, 128, 0.5)[1]["macs_after"] / 1e9, 3)  # doctest: +SKIP
        0.063
    """
    if not 0.0 < target < 1.0:
        raise ConfigError(f"--target-macs {target}: give the share of today's multiply-accumulates to keep, "
                          "between 0 and 1 (e.g. 0.5)")
    tp = _torch_pruning()
    macs_before, params_before = count_macs(model, input_size)
    goal = target * macs_before
    low, high, best = 0.0, 0.95, None
    try:
        for _ in range(12):  # bisection on the channel ratio: MACs fall monotonically as it grows
            ratio = (low + high) / 2
            candidate = _pruned_copy(model, input_size, ratio, round_to)
            macs, _ = count_macs(candidate, input_size)
            if macs <= goal:
                best, high = (ratio, candidate, macs), ratio
            else:
                low = ratio
            if best is not None and macs <= goal and macs >= 0.97 * goal:
                break
        if best is None:
            ratio = high
            candidate = _pruned_copy(model, input_size, ratio, round_to)
            best = (ratio, candidate, count_macs(candidate, input_size)[0])
    except (RuntimeError, ValueError, TypeError, KeyError, IndexError, AttributeError, AssertionError) as err:
        first = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise ConfigError(f"{arch}: the dependency-graph pruner cannot prune this architecture ({first}); train it "
                          "dense, or prune a convolutional network such as efficientnet_lite0") from None
    ratio, pruned, macs_after = best
    params_after = sum(p.numel() for p in pruned.parameters())
    record = {"method": f"torch-pruning {getattr(tp, '__version__', '?')} MetaPruner, L2 group magnitude, "
                        f"channels rounded to {round_to}",
              "target_macs": target, "channel_ratio": round(ratio, 4), "input_size": input_size,
              "macs_before": macs_before, "macs_after": macs_after,
              "params_before": params_before, "params_after": params_after}
    return pruned, record


def prune_checkpoint(checkpoint: str | os.PathLike, out: str | os.PathLike, target: float) -> tuple[Path,
                                                                                                      dict[str, Any]]:
    """Prune a cellsdk checkpoint to ``target`` of its MACs (no fine-tuning: see ``cellsdk prune``) and save it.

    Examples:
        >>> path, record = prune_checkpoint("runs/a/best.safetensors", "runs/a/pruned.safetensors", 0.5)
        ... # doctest: +SKIP
    """
    import dataclasses

    from cellsdk.training.checkpoint import load_checkpoint, save_checkpoint

    model, metadata = load_checkpoint(checkpoint)
    if metadata.training.get("pruning"):
        before = metadata.training["pruning"]
        raise ConfigError(f"{checkpoint} is pruned already (to {before['macs_after'] / before['macs_before']:.0%} "
                          "of its MACs): prune the dense checkpoint it came from instead")
    pruned, record = prune_to_macs(model, metadata.preprocessing.input_size, target, arch=metadata.arch)
    training = {**metadata.training, "pruning": {**record, "source": str(checkpoint), "fine_tuned_epochs": 0}}
    path = save_checkpoint(out, pruned, dataclasses.replace(metadata, training=training))
    return path, training["pruning"]


def prune_and_finetune(checkpoint: str | os.PathLike, data: str | os.PathLike, out_dir: str | os.PathLike,
                       target: float, *, epochs: int = 3, lr: float = 3e-4, max_steps_per_epoch: int | None = None,
                       teachers: tuple[str, ...] | None = None, progress: bool = True) -> tuple[Any, dict[str, Any]]:
    """The seeds' two-stage plan, second stage: prune a dense checkpoint to ``target`` of its MACs, then fine-tune
    it on ``data`` with its own recipe (same input size, crop, labels, augmentation) for ``epochs`` at a lower
    ``lr``. Writes ``out_dir/pruned_start.safetensors`` (pruned, not fine-tuned) and a normal run folder.
    ``teachers`` (e.g. the dense checkpoint itself) distil into the pruned model while it recovers; None keeps
    the recipe's own (if it was distilled).

    Returns:
        (the :class:`~cellsdk.training.trainer.TrainResult`, the pruning record).

    Examples:
        >>> result, record = prune_and_finetune("runs/a/best.safetensors", "data/bloodmnist_128", "runs/a50", 0.5)
        ... # doctest: +SKIP
        >>> record["macs_after"] / record["macs_before"] <= 0.5  # doctest: +SKIP
        True
    """
    import dataclasses

    from cellsdk.artefacts.checkpoints import read_checkpoint_metadata
    from cellsdk.training.config import TrainConfig
    from cellsdk.training.trainer import train

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    start, record = prune_checkpoint(checkpoint, out / "pruned_start.safetensors", target)
    metadata = read_checkpoint_metadata(checkpoint)
    recipe = metadata.training.get("config")
    base = TrainConfig.from_dict(recipe) if isinstance(recipe, dict) else TrainConfig(
        input_size=metadata.preprocessing.input_size)
    config = dataclasses.replace(base, arch=metadata.arch, pretrained=str(start), epochs=epochs, lr=lr,
                                 warmup_epochs=min(base.warmup_epochs, 0.25), freeze_epochs=0,
                                 max_steps_per_epoch=max_steps_per_epoch, check_duplicates=False,
                                 teachers=base.teachers if teachers is None else tuple(str(t) for t in teachers))
    return train(data, out, config, progress=progress), record
