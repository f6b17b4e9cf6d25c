"""``cellsdk-eval`` / ``cellsdk eval``: a checkpoint (PyTorch) or a deployed model (its runtime) on a dataset split."""

from __future__ import annotations

from pathlib import Path

import click

from cellsdk.cli.options import (
    NON_NEGATIVE,
    POSITIVE,
    TORCH_DEVICES,
    command,
    dataset_options,
    parse_key_values,
    quiet_option,
    strict_option,
)
from cellsdk.cli.process import friendly_errors, setup_logging

__all__ = ["eval_command"]


@command("eval")
@click.argument("model", type=click.Path(path_type=Path))
@dataset_options(split="test", split_help="train, val, test or all.")
@click.option("--out", "out_dir", type=click.Path(path_type=Path), default=None,
              help="Folder for report.json, confusion_matrix.csv/.png, reliability.png.")
@click.option("--batch-size", type=POSITIVE, default=64, show_default=True)
@click.option("--backend", default=None, help="Deployed models: force a backend (onnxruntime, openvino, ...).")
@click.option("--option", "runtime_options", multiple=True, metavar="KEY=VALUE",
              help="Deployed models: a backend option, e.g. precision=f32 or threads=2; repeatable.")
@click.option("--device", default="auto", show_default=True, help=TORCH_DEVICES)
@click.option("--workers", type=NON_NEGATIVE, default=0, show_default=True, help="Checkpoints: data-loading processes.")
@strict_option()
@click.option("--ood", "ood_folders", multiple=True, type=click.Path(path_type=Path),
              help="Deployed models: a folder of images from outside the training domain; the guard's AUROC, "
                   "FPR at 95 % TPR and share flagged are reported. Repeatable.")
@click.option("--explain", type=click.IntRange(0, 64), default=0, show_default=True, metavar="N",
              help="Deployed models: write explanations.png into --out, the N most confident errors and N random "
                   "correct images with heat-map overlays, truth and prediction.")
@click.option("--source", "sources", multiple=True, type=click.Path(path_type=Path),
              help="Another lab's data, evaluated on its own (all its images; per-source table). Repeatable.")
@click.option("--source-cropped", "cropped_sources", multiple=True, type=click.Path(path_type=Path),
              help="As --source, for data that already has the model's crop. Repeatable.")
@quiet_option()
@friendly_errors
def eval_command(model: Path, data: Path, split: str, out_dir: Path | None, data_cropped: bool,
                 labels: str | None, batch_size: int, backend: str | None, runtime_options: tuple[str, ...],
                 device: str, workers: int, strict: bool, ood_folders: tuple[Path, ...], explain: int,
                 sources: tuple[Path, ...], cropped_sources: tuple[Path, ...], quiet: bool) -> None:
    """Evaluate MODEL on a split of --data: accuracy, macro-F1, per class, confusion, calibration; with --source,
    also on other labs' data, one row per source.

    MODEL is a training checkpoint (.safetensors, run in PyTorch fp32) or a deployed model: any file or
    conversion folder Classifier.load reads, run through its runtime exactly as deployed.

    \f
    Examples:
        >>> from click.testing import CliRunner
        >>> CliRunner().invoke(eval_command, ["--help"]).output.splitlines()[0]
        'Usage: eval [OPTIONS] MODEL'
    """
    from cellsdk.artefacts.checkpoints import is_checkpoint
    from cellsdk.evaluation import format_report

    setup_logging(quiet)
    if is_checkpoint(model):
        if backend or runtime_options or strict or ood_folders or explain:
            raise click.ClickException("--backend / --option / --strict / --ood / --explain are for deployed models; "
                                       "a checkpoint runs in PyTorch (convert it to get its OOD guard and "
                                       "explanations; Grad-CAM of a checkpoint: cellsdk.training.gradcam.grad_cam)")
        from cellsdk.training import evaluate  # torch: only for checkpoints

        report = evaluate(model, data, split=split, out_dir=out_dir, data_cropped=data_cropped, labels=labels,
                          batch_size=batch_size, device=device, workers=workers, progress=not quiet)
    else:
        from cellsdk.evaluation import evaluate_model

        report = evaluate_model(model, data, split=split, out_dir=out_dir, data_cropped=data_cropped,
                                labels=labels, backend=backend, device=device, batch_size=min(batch_size, 32),
                                options=parse_key_values(runtime_options), progress=not quiet, strict=strict,
                                ood=ood_folders, explain=explain)
    click.echo(format_report(report))
    for path in report.get("files", {}).values():
        click.echo(f"wrote {path}")
    if sources or cropped_sources:
        from cellsdk.evaluation import format_sources

        rows = {f"{data.name} ({split})": report}
        for source, cropped in [(p, False) for p in sources] + [(p, True) for p in cropped_sources]:
            name = source.name if source.name not in ("test", "val", "train", "adapt") else \
                f"{source.parent.name}/{source.name}"
            if is_checkpoint(model):
                rows[name] = evaluate(model, source, split="all", data_cropped=cropped, labels=None,
                                             batch_size=batch_size, device=device, workers=workers, progress=False)
            else:
                rows[name] = evaluate_model(model, source, split="all", data_cropped=cropped, backend=backend,
                                                   device=device, batch_size=min(batch_size, 32),
                                                   options=parse_key_values(runtime_options), progress=False,
                                                   strict=strict)
        click.echo(format_sources(rows))

#: the commands' docstring examples, for doctest (click turns the functions into Command objects)
__test__ = {"eval_command": eval_command.callback.__doc__}
