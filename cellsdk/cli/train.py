"""``cellsdk-train`` / ``cellsdk train`` and ``cellsdk-calibrate`` / ``cellsdk calibrate`` (need cellsdk[train])."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from cellsdk.cli.options import (
    NON_NEGATIVE,
    NON_NEGATIVE_FLOAT,
    POSITIVE,
    POSITIVE_FLOAT,
    SEED,
    TORCH_DEVICES,
    command,
    dataset_options,
    labels_option,
    quiet_option,
)
from cellsdk.cli.process import friendly_errors, setup_logging

__all__ = ["calibrate_command", "prune_command", "train_command"]


@command("train")
@click.argument("data", type=click.Path(path_type=Path), nargs=-1, required=True)
@click.option("--out", "out_dir", type=click.Path(path_type=Path), required=True, help="Run folder to write.")
@click.option("--arch", default="efficientnet_lite0", show_default=True, help="timm model name.")
@click.option("--pretrained", default="auto", show_default=True,
              help="auto (hub if online, else local ImageNet weights), hub, none, or a weights file.")
@click.option("--epochs", type=POSITIVE, default=None,
              help="Epochs to train [default: 30]; with --resume, the new total (default: the run's own).")
@click.option("--batch-size", type=POSITIVE, default=64, show_default=True)
@click.option("--lr", type=POSITIVE_FLOAT, default=1e-3, show_default=True, help="Peak learning rate (AdamW).")
@click.option("--weight-decay", type=NON_NEGATIVE_FLOAT, default=0.01, show_default=True)
@click.option("--warmup-epochs", type=NON_NEGATIVE_FLOAT, default=1.0, show_default=True)
@click.option("--input-size", type=click.IntRange(8, 4096), default=128, show_default=True,
              help="Model input side in pixels.")
@click.option("--crop", default="none", show_default=True,
              help="Centre crop of raw images before resizing: none, a fraction (0.875) or pixels (200px).")
@click.option("--data-cropped", is_flag=True,
              help="The training images already have that crop (e.g. bloodmnist_128); skip it in training.")
@click.option("--resize-filter", default="bilinear", show_default=True)
@labels_option("Class names: a known map (bloodmnist) or comma-separated names.")
@click.option("--label-smoothing", type=click.FloatRange(0, 1, max_open=True), default=0.1, show_default=True)
@click.option("--accumulate", type=POSITIVE, default=1, show_default=True, help="Micro-batches per optimiser step.")
@click.option("--clip-grad", type=NON_NEGATIVE_FLOAT, default=2.0, show_default=True,
              help="Gradient-norm clip (0: off).")
@click.option("--amp", type=click.Choice(["auto", "off", "bf16", "fp16"]), default="auto", show_default=True)
@click.option("--channels-last/--no-channels-last", default=True, show_default=True)
@click.option("--freeze-epochs", type=NON_NEGATIVE, default=0, show_default=True,
              help="Epochs training the head alone.")
@click.option("--class-weights", type=click.Choice(["none", "balanced"]), default="none", show_default=True)
@click.option("--augment", type=click.Choice(["none", "light", "microscopy", "stain", "cross-lab"]), default="microscopy",
              show_default=True)
@click.option("--patience", type=NON_NEGATIVE, default=0, show_default=True,
              help="Early stopping: epochs without a better validation macro-F1 (0: off).")
@click.option("--seed", type=SEED, default=0, show_default=True)
@click.option("--device", default="auto", show_default=True, help="auto, cpu, cuda, cuda:N or mps.")
@click.option("--workers", type=NON_NEGATIVE, default=0, show_default=True, help="Data-loading processes.")
@click.option("--max-steps", type=POSITIVE, default=None, help="Cap optimiser steps per epoch (quick runs).")
@click.option("--val-fraction", type=click.FloatRange(0, 0.9, min_open=True), default=None,
              help="Data without a val split: set this share of each training class aside as validation (seeded; "
                   "conversion and evaluation carve the same images).")
@click.option("--check-duplicates/--no-check-duplicates", default=True, show_default=True,
              help="Before training, warn about val / test images that copy training images (perceptual hash, "
                   "flips and rotations included).")
@click.option("--cropped", "cropped_sources", multiple=True, type=click.Path(path_type=Path),
              help="With several DATA: this one already has the crop (repeat per source; --data-cropped: all).")
@click.option("--source-labels", multiple=True, metavar="DATA=NAMES",
              help="With several DATA: class names of one source (a known map or comma-separated), repeatable.")
@click.option("--teacher", "teachers", multiple=True, type=click.Path(path_type=Path),
              help="Distil from this cellsdk checkpoint (repeat for an ensemble: their soft targets are averaged; "
                   "each runs its own input size and preprocessing).")
@click.option("--distill-weight", type=click.FloatRange(0, 1), default=0.5, show_default=True,
              help="The teachers' share of the loss (the hard labels keep the rest).")
@click.option("--distill-temperature", type=click.FloatRange(0, 100, min_open=True), default=2.0, show_default=True,
              help="Softmax temperature of the teachers' soft targets.")
@click.option("--prune", "prune_target", type=click.FloatRange(0, 1, min_open=True, max_open=True), default=None,
              help="After training, prune the best checkpoint to this share of its multiply-accumulates and "
                   "fine-tune it (OUT/pruned; needs cellsdk[prune]).")
@click.option("--prune-epochs", type=POSITIVE, default=3, show_default=True, help="Fine-tuning epochs after --prune.")
@click.option("--resume", is_flag=True,
              help="Continue the run in --out from its last checkpoint, with its stored recipe.")
@quiet_option("No progress bars or per-epoch log.")
@friendly_errors
def train_command(data: tuple[Path, ...], out_dir: Path, **options: Any) -> None:
    """Fine-tune a timm backbone on DATA (a .npz file or an image folder); several DATA train one model on all of
    them (combined training: each source's loss counts only the classes it labels; per-source report).

    \f
    Examples:
        >>> from click.testing import CliRunner
        >>> CliRunner().invoke(train_command, ["--help"]).output.splitlines()[0]
        'Usage: train [OPTIONS] DATA...'
    """
    from cellsdk.training import AugmentConfig, TrainConfig, parse_crop, train
    from cellsdk.training.reports import format_train_result

    quiet = options.pop("quiet")
    setup_logging(quiet)
    prune_target, prune_epochs = options.pop("prune_target"), options.pop("prune_epochs")
    if options["teachers"] and (len(data) > 1 or options["resume"]):
        raise click.UsageError("--teacher goes with a single-source run that starts afresh")
    for teacher in options["teachers"]:
        if not teacher.is_file():
            raise click.BadParameter(f"{teacher}: no such checkpoint", param_hint="--teacher")
    if prune_target is not None and (len(data) > 1 or options["resume"]):
        raise click.UsageError("--prune goes with a single-source run that starts afresh; prune a finished run with "
                               "cellsdk prune CHECKPOINT --target-macs X")
    crop_mode, crop_value = parse_crop(options.pop("crop"))
    cropped_sources, source_labels = options.pop("cropped_sources"), options.pop("source_labels")
    if len(data) > 1:
        if options["resume"]:
            raise click.UsageError("--resume continues a single-source run; combined runs start afresh")
        _train_combined(data, out_dir, crop_mode, crop_value, cropped_sources, source_labels, quiet, options)
        return
    if cropped_sources or source_labels:
        raise click.UsageError("--cropped and --source-labels go with several DATA; for one, use --data-cropped "
                               "and --labels")
    single = data[0]
    if options.pop("resume"):  # the run's stored recipe is used; only --epochs may extend it
        epochs = options["epochs"]
        result = train(single, out_dir, TrainConfig(epochs=epochs) if epochs else None, resume=True,
                       progress=not quiet)
        click.echo(format_train_result(result))
        return
    config = TrainConfig(
        arch=options["arch"], pretrained=options["pretrained"], epochs=options["epochs"] or 30,
        batch_size=options["batch_size"], lr=options["lr"], weight_decay=options["weight_decay"],
        warmup_epochs=options["warmup_epochs"], input_size=options["input_size"], crop_mode=crop_mode,
        crop_value=crop_value, data_cropped=options["data_cropped"], resize_filter=options["resize_filter"],
        labels=options["labels"], label_smoothing=options["label_smoothing"], accumulate=options["accumulate"],
        clip_grad_norm=options["clip_grad"], amp=options["amp"], channels_last=options["channels_last"],
        freeze_epochs=options["freeze_epochs"], class_weights=options["class_weights"],
        augment=AugmentConfig.preset(options["augment"]), patience=options["patience"], seed=options["seed"],
        device=options["device"], workers=options["workers"], max_steps_per_epoch=options["max_steps"],
        val_fraction=options["val_fraction"], check_duplicates=options["check_duplicates"],
        teachers=tuple(str(t) for t in options["teachers"]), distill_weight=options["distill_weight"],
        distill_temperature=options["distill_temperature"],
    )
    if prune_target is not None:
        from cellsdk.training.pruning import require_pruner

        require_pruner()  # before the dense stage, not after it
    result = train(single, out_dir, config, progress=not quiet)
    click.echo(format_train_result(result))
    if prune_target is not None:  # the seeds' two-stage plan: dense first, then pruned and fine-tuned
        from cellsdk.training.pruning import format_pruning, prune_and_finetune

        pruned, record = prune_and_finetune(result.best_checkpoint, single, out_dir / "pruned", prune_target,
                                            epochs=prune_epochs, lr=config.lr * 0.3,
                                            max_steps_per_epoch=config.max_steps_per_epoch, progress=not quiet)
        click.echo(format_pruning(record))
        click.echo(format_train_result(pruned))


def _train_combined(data: tuple[Path, ...], out_dir: Path, crop_mode: str, crop_value: float,
                    cropped_sources: tuple[Path, ...], source_labels: tuple[str, ...], quiet: bool,
                    options: dict[str, Any]) -> None:
    from cellsdk.training import AugmentConfig, TrainConfig
    from cellsdk.training.combined import format_per_source, train_combined
    from cellsdk.training.sources import Source

    given = {str(p): p for p in data}
    unknown = [str(p) for p in cropped_sources if str(p) not in given]
    named: dict[str, str] = {}
    for item in source_labels:
        path, sep, names = item.partition("=")
        if not sep or not names:
            raise click.UsageError(f"--source-labels {item!r}: use DATA=NAMES, e.g. labB=neutrophil,lymphocyte")
        if path not in given:
            unknown.append(path)
        named[path] = names
    if unknown:
        raise click.UsageError(f"{unknown[0]} is not one of the DATA arguments ({', '.join(given)})")
    cropped = {str(p) for p in cropped_sources}
    sources = [Source.parse(p, cropped=options["data_cropped"] or str(p) in cropped, labels=named.get(str(p)))
               for p in data]
    config = TrainConfig(
        arch=options["arch"], pretrained=options["pretrained"], epochs=options["epochs"] or 30,
        batch_size=options["batch_size"], lr=options["lr"], weight_decay=options["weight_decay"],
        warmup_epochs=options["warmup_epochs"], input_size=options["input_size"], crop_mode=crop_mode,
        crop_value=crop_value, resize_filter=options["resize_filter"], labels=options["labels"],
        label_smoothing=options["label_smoothing"], clip_grad_norm=options["clip_grad"],
        augment=AugmentConfig.preset(options["augment"]), seed=options["seed"], device=options["device"],
        workers=options["workers"], max_steps_per_epoch=options["max_steps"], val_fraction=options["val_fraction"],
        check_duplicates=False)
    result = train_combined(sources, out_dir, config, progress=not quiet)
    for note in result.notes:
        click.echo(f"note: {note}", err=True)
    click.echo(f"best epoch {result.best_epoch} of {config.epochs}; per source, on its held-out cells:")
    click.echo(format_per_source(result.per_source))
    click.echo(f"wrote {result.best_checkpoint} ({result.seconds:.0f} s)")


@command("calibrate")
@click.argument("checkpoint", type=click.Path(path_type=Path))
@dataset_options(split="val", data_help="Dataset with a held-out split.",
                 split_help="The held-out split to fit on (not test).")
@click.option("--out", "out_path", type=click.Path(path_type=Path), default=None,
              help="Calibrated checkpoint [default: <checkpoint>.calibrated.safetensors].")
@click.option("--batch-size", type=POSITIVE, default=64, show_default=True)
@click.option("--device", default="auto", show_default=True, help=TORCH_DEVICES)
@click.option("--workers", type=NON_NEGATIVE, default=0, show_default=True)
@quiet_option()
@friendly_errors
def calibrate_command(checkpoint: Path, data: Path, split: str, out_path: Path | None, data_cropped: bool,
                      labels: str | None, batch_size: int, device: str, workers: int, quiet: bool) -> None:
    """Temperature-scale CHECKPOINT on a held-out split and fold it into the weights (predictions unchanged).

    \f
    Examples:
        >>> from click.testing import CliRunner
        >>> CliRunner().invoke(calibrate_command, ["--help"]).output.splitlines()[0]
        'Usage: calibrate [OPTIONS] CHECKPOINT'
    """
    from cellsdk.training.calibrate import calibrate_checkpoint
    from cellsdk.training.reports import format_calibration

    setup_logging(quiet)
    result = calibrate_checkpoint(checkpoint, data, out=out_path, split=split, data_cropped=data_cropped,
                                  labels=labels, batch_size=batch_size, device=device, workers=workers,
                                  progress=not quiet)
    click.echo(format_calibration(result))

#: the commands' docstring examples, for doctest (click turns the functions into Command objects)
__test__ = {"train_command": train_command.callback.__doc__, "calibrate_command": calibrate_command.callback.__doc__}


@command("prune")
@click.argument("checkpoint", type=click.Path(path_type=Path))
@click.option("--target-macs", type=click.FloatRange(0, 1, min_open=True, max_open=True), required=True,
              help="Share of CHECKPOINT's multiply-accumulates to keep, e.g. 0.5 (whole channels are removed).")
@click.option("--data", type=click.Path(path_type=Path), required=True,
              help="The training data to fine-tune on (the dataset CHECKPOINT was trained on).")
@click.option("--out", "out_dir", type=click.Path(path_type=Path), required=True, help="Run folder to write.")
@click.option("--epochs", type=POSITIVE, default=3, show_default=True, help="Fine-tuning epochs after pruning.")
@click.option("--lr", type=POSITIVE_FLOAT, default=3e-4, show_default=True, help="Fine-tuning peak learning rate.")
@click.option("--max-steps", type=POSITIVE, default=None, help="Cap optimiser steps per epoch (quick runs).")
@click.option("--teacher", "teachers", multiple=True, type=click.Path(path_type=Path, dir_okay=False, exists=True),
              help="Distil from this checkpoint while the pruned model recovers (e.g. CHECKPOINT itself; repeat for "
                   "several).")
@quiet_option("No progress bars or per-epoch log.")
@friendly_errors
def prune_command(checkpoint: Path, target_macs: float, data: Path, out_dir: Path, epochs: int, lr: float,
                  max_steps: int | None, teachers: tuple[Path, ...], quiet: bool) -> None:
    """Prune CHECKPOINT to --target-macs of its multiply-accumulates (structured: whole channels, so the int8 model
    runs faster) and fine-tune it on --data with its own recipe; needs cellsdk[prune].

    \f
    Examples:
        >>> from click.testing import CliRunner
        >>> CliRunner().invoke(prune_command, ["--help"]).output.splitlines()[0]
        'Usage: prune [OPTIONS] CHECKPOINT'
    """
    from cellsdk.training.pruning import format_pruning, prune_and_finetune
    from cellsdk.training.reports import format_train_result

    setup_logging(quiet)
    result, record = prune_and_finetune(checkpoint, data, out_dir, target_macs, epochs=epochs, lr=lr,
                                        max_steps_per_epoch=max_steps,
                                        teachers=tuple(str(t) for t in teachers) or None, progress=not quiet)
    click.echo(format_pruning(record))
    click.echo(format_train_result(result))
