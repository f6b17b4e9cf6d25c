"""``cellsdk adapt`` / ``cellsdk-adapt``: fine-tune a checkpoint on another lab's labelled cells (needs cellsdk[train])."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import click

from cellsdk.cli.options import POSITIVE, POSITIVE_FLOAT, SEED, TORCH_DEVICES, command, labels_option, quiet_option
from cellsdk.cli.process import friendly_errors, setup_logging

__all__ = ["adapt_command", "format_lab_checks", "format_unlabelled"]


def format_lab_checks(manifest: dict[str, Any], artefact: str = "model.int8.onnx") -> str:
    """Per lab, the fp32 checkpoint and one artefact on the lab's held-out cells (from the conversion manifest).

    Examples:
        >>> manifest = {"labs": [{"name": "labB", "images": 12, "fp32": {"accuracy": 0.9, "balanced_accuracy": 0.9}}],
        ...             "artefacts": [{"file": "model.int8.onnx", "status": "passed", "labs": {"labB": {
        ...                 "accuracy": 0.9, "balanced_accuracy": 0.875, "flagged": 0.0, "top1_agreement": 1.0}}}]}
        >>> print(format_lab_checks(manifest))
        model.int8.onnx (passed) on each lab's held-out cells:
          labB: 12 cells, accuracy 90.0 % (fp32 90.0 %), balanced 87.5 %, flagged 0.0 %, agreement with fp32 100.0 %
    """
    entry = next((a for a in manifest.get("artefacts", []) if a.get("file") == artefact), None)
    if entry is None or not manifest.get("labs"):
        return f"{artefact}: not written"
    lines = [f"{artefact} ({entry.get('status')}) on each lab's held-out cells:"]
    for lab in manifest["labs"]:
        measured = (entry.get("labs") or {}).get(lab["name"])
        if not measured or "accuracy" not in measured:
            lines.append(f"  {lab['name']}: not checked ({(measured or {}).get('error', lab.get('note', 'n/a'))})")
            continue
        lines.append(f"  {lab['name']}: {lab['images']} cells, accuracy {100 * measured['accuracy']:.1f} % (fp32 "
                     f"{100 * lab['fp32']['accuracy']:.1f} %), balanced {100 * measured['balanced_accuracy']:.1f} %, "
                     f"flagged {100 * measured['flagged']:.1f} %, agreement with fp32 "
                     f"{100 * measured['top1_agreement']:.1f} %")
    return "\n".join(lines)


def format_unlabelled(record: dict[str, Any]) -> str:
    """One line on what the unlabelled pool did (``AdaptResult.unlabelled``).

    Examples:
        >>> print(format_unlabelled({"pool": {"cells": 300}, "guard": {"trusted": 290, "left_out": 10},
        ...                          "epochs": [{"taught": 0.8}]}))
        unlabelled: 300 cells; 10 kept out as atypical; self-training: 80 % of the last epoch's draws taught
    """
    parts = [f"unlabelled: {record['pool']['cells']} cells"]
    if record["pool"].get("left_out_as_labelled"):
        parts[0] += f" ({record['pool']['left_out_as_labelled']} also labelled, left out)"
    if "recalibration" in record:
        parts.append(f"BatchNorm re-estimated on {record['recalibration']['cells']} (lab + replay)")
    if "guard" in record:
        parts.append(f"{record['guard']['left_out']} kept out as atypical")
    if record.get("epochs"):
        parts.append(f"self-training: {100 * record['epochs'][-1]['taught']:.0f} % of the last epoch's draws taught")
    cells = (record.get("pseudo_labelled") or {}).get("cells")
    if cells:
        parts.append("pseudo-labelled for the guard: " + ", ".join(f"{k} {v}" for k, v in sorted(cells.items())))
    return "; ".join(parts)


@command("adapt")
@click.argument("checkpoint", type=click.Path(path_type=Path))
@click.argument("data", type=click.Path(path_type=Path), required=False)
@click.option("--out", "out_dir", type=click.Path(path_type=Path), required=True,
              help="Folder for best.safetensors, adapt.json and converted/ (with --suggest: to_label/ and "
                   "suggested.csv).")
@click.option("--unlabelled", type=click.Path(path_type=Path, file_okay=False), default=None,
              help="The lab's unlabelled cells (a folder, or a --collect folder): BatchNorm statistics re-estimated on "
                   "them, then self-training on the model's confident answers. DATA may then be left out.")
@click.option("--unlabelled-steps", type=click.Choice(["recalibrate", "self_train", "guard"]), default="guard",
              show_default=True, help="How far to go with --unlabelled: recalibrate BatchNorm only; + self-training; "
                                      "+ the guard keeping atypical cells from teaching (everything).")
@click.option("--pseudo-threshold", type=click.FloatRange(0, 1, min_open=True, max_open=True), default=None,
              help="Confidence a pseudo-label needs [default: 0.9].")
@click.option("--suggest", type=POSITIVE, default=None, metavar="N",
              help="Do not adapt: pick the N cells of DATA (unlabelled) whose labels would help most, copy them to "
                   "OUT/to_label/ and list them in OUT/suggested.csv.")
@click.option("--data-cropped", is_flag=True, help="DATA holds single-cell crops already cut by the model's crop.")
@click.option("--replay", type=click.Path(path_type=Path), default=None,
              help="The original training data, mixed in so the original lab keeps its accuracy (needed to convert).")
@click.option("--replay-cropped", is_flag=True, help="The --replay images already have the model's crop.")
@labels_option("Class names of DATA, if its folders do not give them.")
@click.option("--add-labels", is_flag=True, help="Grow the model's head for DATA classes it does not know.")
@click.option("--convert/--no-convert", default=True, show_default=True,
              help="Convert as cellsdk-convert --quantize int8 does, each artefact checked on each lab.")
@click.option("--formats", default="onnx", show_default=True,
              help="Formats to convert to (comma-separated, or all): what a lab runs first; convert the rest later "
                   "with cellsdk-convert.")
@click.option("--verify-cpus", default=None, metavar="CLASSES",
              help="CPU classes to verify every int8 artefact on [default: this machine and the emulated ones "
                   "cellsdk-convert uses, on a class-balanced sample].")
@click.option("--epochs", type=POSITIVE, default=None, help="Override the preset's epochs.")
@click.option("--steps", type=POSITIVE, default=None, help="Override the preset's optimiser steps per epoch.")
@click.option("--lr", type=POSITIVE_FLOAT, default=None, help="Override the preset's peak learning rate.")
@click.option("--layers", type=click.Choice(["all", "top", "head"]), default=None,
              help="Which layers train [preset: all].")
@click.option("--batchnorm", type=click.Choice(["frozen", "train"]), default=None,
              help="Keep the original BatchNorm statistics or update them [preset: frozen].")
@click.option("--augment", type=click.Choice(["none", "light", "microscopy", "stain", "cross-lab"]), default=None,
              help="Augmentation preset [preset: stain].")
@click.option("--stain-normalise/--no-stain-normalise", default=None,
              help="Reinhard stain normalisation to the replay data's colours, in every runtime [preset: off].")
@click.option("--scale/--no-scale", default=None,
              help="Rescale inputs whose cells are outside the training images' size range [preset: on].")
@click.option("--val-fraction", type=click.FloatRange(0, 0.9, min_open=True), default=None,
              help="Without a val split in DATA: the share of each class held out [preset: 0.3].")
@click.option("--training-pixel-size", type=POSITIVE_FLOAT, default=None, metavar="UM",
              help="The replay images' pixel size in µm, where known: recorded so cellsdk predict --pixel-size can "
                   "rescale inputs exactly.")
@click.option("--seed", type=SEED, default=0, show_default=True)
@click.option("--device", default="auto", show_default=True, help=TORCH_DEVICES)
@quiet_option("No progress bars.")
@friendly_errors
def adapt_command(checkpoint: Path, data: Path | None, out_dir: Path, **options: Any) -> None:
    """Fine-tune CHECKPOINT on DATA, a few labelled cells from another lab (one subfolder per class), and / or on the
    lab's unlabelled cells (--unlabelled DIR); or, with --suggest N, pick the cells of DATA to label first.

    \f
    Examples:
        >>> from click.testing import CliRunner
        >>> CliRunner().invoke(adapt_command, ["--help"]).output.splitlines()[0]
        'Usage: adapt [OPTIONS] CHECKPOINT [DATA]'
    """
    from cellsdk.cli.options import split_list
    from cellsdk.training.adaptation import adapt
    from cellsdk.training.config import AugmentConfig
    from cellsdk.training.reports import flagged_shares, format_before_after

    quiet = options.pop("quiet")
    setup_logging(quiet)
    if options["suggest"] is not None:
        _suggest(checkpoint, data, out_dir, options)
        return
    overrides: dict[str, Any] = {"seed": options["seed"], "device": options["device"]}
    for option, field in (("epochs", "epochs"), ("steps", "steps_per_epoch"), ("lr", "lr"), ("layers", "layers"),
                          ("batchnorm", "batchnorm"), ("stain_normalise", "stain_normalise"), ("scale", "scale"),
                          ("val_fraction", "val_fraction")):
        if options[option] is not None:
            overrides[field] = options[option]
    if options["augment"] is not None:
        overrides["augment"] = AugmentConfig.preset(options["augment"])
    formats = options["formats"].strip()
    convert_options: dict[str, Any] = {"formats": () if formats == "all" else tuple(split_list(formats))}
    if options["verify_cpus"] is not None:
        from cellsdk.converters.adapted import adapt_cpu_targets

        convert_options["cpu_targets"] = adapt_cpu_targets(options["verify_cpus"])
    unlabelled_config = None
    if options["unlabelled"] is not None:
        from cellsdk.training.unlabelled import UnlabelledConfig

        unlabelled_config = UnlabelledConfig.ablation(options["unlabelled_steps"])
        if options["pseudo_threshold"] is not None:
            unlabelled_config = dataclasses.replace(unlabelled_config, threshold=options["pseudo_threshold"])
    result = adapt(checkpoint, data, out_dir, unlabelled=options["unlabelled"], unlabelled_config=unlabelled_config,
                   replay=options["replay"], data_cropped=options["data_cropped"],
                   replay_cropped=options["replay_cropped"], labels=options["labels"],
                   add_labels=options["add_labels"], overrides=overrides,
                   training_pixel_size=options["training_pixel_size"], convert=options["convert"],
                   convert_options=convert_options, progress=not quiet)
    for note in result.notes:
        click.echo(f"note: {note}", err=True)
    click.echo("on each source's held-out cells (before: the original model; accuracy of the fp32 checkpoints; "
               "flagged: the shipped model, then the adapted INT8 ONNX model):")
    click.echo(format_before_after(result.before, result.after, flagged_shares(result)))
    if result.unlabelled is not None:
        click.echo(format_unlabelled(result.unlabelled))
    click.echo(f"wrote {result.checkpoint} and {out_dir / 'before_after.txt'} ({result.seconds:.0f} s fine-tuning)")
    if result.conversion is None:
        return
    from cellsdk.converters import format_manifest_table

    click.echo(format_manifest_table(result.conversion))
    click.echo(format_lab_checks(result.conversion))
    click.echo(f"wrote {out_dir / 'converted' / 'manifest.json'}")
    failed = [a["file"] for a in result.conversion["artefacts"] if a["status"] == "failed"]
    if failed:
        raise click.ClickException(f"{len(failed)} artefact(s) failed verification: {', '.join(failed)} (see the "
                                   "reasons above); the checkpoint is kept")


def _suggest(checkpoint: Path, data: Path | None, out_dir: Path, options: dict[str, Any]) -> None:
    """``--suggest N``: rank DATA's unlabelled cells and write the N to label first."""
    from cellsdk.training.suggestion import suggest_for_checkpoint, write_suggestion

    if data is None:
        raise click.UsageError("--suggest N needs the folder of unlabelled cells to pick from: "
                               "cellsdk adapt CHECKPOINT --suggest N UNLABELLED --out DIR")
    picked = suggest_for_checkpoint(checkpoint, data, options["suggest"], replay=options["replay"],
                                    replay_cropped=options["replay_cropped"], cropped=options["data_cropped"],
                                    seed=options["seed"], device=options["device"])
    folder = write_suggestion(picked, out_dir)
    for row in picked.rows():
        click.echo(f"{row['rank']:>4}  {row['predicted']:<14} uncertainty {row['uncertainty']:.2f}  {row['path']}")
    click.echo(f"picked {len(picked.paths)} of {picked.pool} cells (every predicted class, uncertain and diverse "
               f"first); copies in {folder}, list in {out_dir / 'suggested.csv'}. Label them (one folder per "
               f"class), then: cellsdk adapt {checkpoint} LABELLED --unlabelled {data} --replay DATA --out RUN")


#: the commands' docstring examples, for doctest (click turns the functions into Command objects)
__test__ = {"adapt_command": adapt_command.callback.__doc__}
