"""``cellsdk adapt --suggest N UNLABELLED``: the lab's cells to label first, ranked by a checkpoint.

The ranking is :func:`cellsdk.suggest.rank_for_labelling` (uncertain and diverse, every predicted class
represented) on the checkpoint's features. With the training data (``replay``) the checkpoint first sees the lab
as :func:`cellsdk.training.adapt` will: inputs rescaled to the training lab's cell size and BatchNorm statistics
re-estimated on the lab's and the training lab's cells (:func:`cellsdk.training.unlabelled.prepare_pool`), so the
features it ranks by are the ones adaptation starts from, not those of a model blinded by the new stain.

Examples:
    >>> picked = suggest_for_checkpoint("models/bloodmnist_effnet_lite0_128.safetensors", "labB/unlabelled", 40,
    ...                                 replay="bloodmnist_128", replay_cropped=True)  # doctest: +SKIP
    >>> picked.paths[:2]  # doctest: +SKIP
    [PosixPath('labB/unlabelled/0193.png'), PosixPath('labB/unlabelled/0077.png')]
"""

from __future__ import annotations

import dataclasses
import os
import shutil
from pathlib import Path

import numpy as np

from cellsdk._io import write_json, write_text
from cellsdk.errors import ConfigError
from cellsdk.suggest import Suggestion

__all__ = ["suggest_for_checkpoint", "write_suggestion"]


def suggest_for_checkpoint(checkpoint: str | os.PathLike, unlabelled: str | os.PathLike, n: int, *,
                           replay: str | os.PathLike | None = None, replay_cropped: bool = False,
                           cropped: bool = False, seed: int = 0, device: str = "auto",
                           exclude: tuple[str | os.PathLike, ...] = ()) -> Suggestion:
    """Rank ``unlabelled`` (a folder, or a ``--collect`` folder) with ``checkpoint`` and pick ``n`` cells.

    Raises:
        CheckpointError, DatasetError, ConfigError: with what to fix.

    Examples:
        >>> suggest_for_checkpoint("best.safetensors", "labB/pool", 40)  # doctest: +SKIP
    """
    from cellsdk.training.checkpoint import load_checkpoint
    from cellsdk.training.finetune import fit_scale_range
    from cellsdk.training.sources import Source, SourceSet
    from cellsdk.training.torchdata import pick_device
    from cellsdk.training.unlabelled import UnlabelledConfig, UnlabelledPool, outputs, prepare_pool

    if not isinstance(n, int) or n < 1:
        raise ConfigError(f"--suggest needs a whole number of cells >= 1, got {n!r}")
    model, metadata = load_checkpoint(checkpoint)
    torch_device = pick_device(device)
    model = model.to(torch_device)
    pool = UnlabelledPool(unlabelled, exclude=exclude, limit=UnlabelledConfig().limit, seed=seed)
    preprocessing = metadata.preprocessing
    if replay is not None:
        sources = SourceSet([Source.parse(replay, cropped=replay_cropped)], metadata.labels, seed=seed)
        if preprocessing.scale_range is None:
            preprocessing = dataclasses.replace(preprocessing, scale_range=fit_scale_range(
                sources, 0, preprocessing, 400, seed))
        specs = [sources.loaded[0].source.spec(preprocessing)]
        pool_spec = Source(str(unlabelled), cropped=cropped).spec(preprocessing)
        prepare_pool(model, pool, pool_spec, sources, specs, None, 0, torch_device,
                     UnlabelledConfig(guard=False, self_train=False), seed)
    else:
        pool_spec = Source(str(unlabelled), cropped=cropped).spec(preprocessing)
    feats, probs = [], []
    for chunk in np.array_split(np.arange(len(pool)), max(1, len(pool) // 128)):
        f, p = outputs(model, pool.arrays(chunk, pool_spec), torch_device)
        feats.append(f)
        probs.append(p)
    features, probabilities = np.concatenate(feats), np.concatenate(probs)
    return Suggestion.ranked(pool.paths, features, probabilities, metadata.labels, n)


def write_suggestion(suggestion: Suggestion, out_dir: str | os.PathLike) -> Path:
    """``out_dir/to_label/``: copies of the picked cells named ``<rank>_<name>`` (sort them into class folders, then
    ``cellsdk adapt CKPT out_dir/labelled``), plus ``suggested.csv`` and ``suggested.json``. Returns the copies'
    folder.

    Examples:
        >>> write_suggestion(picked, "runs/labB_suggest")  # doctest: +SKIP
        PosixPath('runs/labB_suggest/to_label')
    """
    import csv
    import io

    out = Path(out_dir)
    folder = out / "to_label"
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise ConfigError(f"{out}: output folder is not writable ({err.strerror or err}); choose another --out") from None
    width = len(str(len(suggestion.paths)))
    for rank, path in enumerate(suggestion.paths, 1):
        shutil.copyfile(path, folder / f"{rank:0{width}d}_{path.name}")
    rows = suggestion.rows()
    text = io.StringIO()
    writer = csv.DictWriter(text, fieldnames=list(rows[0]) if rows else ["rank", "path", "predicted", "uncertainty"])
    writer.writeheader()
    writer.writerows(rows)
    write_text(out / "suggested.csv", text.getvalue())
    write_json(out / "suggested.json", {"pool": suggestion.pool, "cells": rows})
    return folder
