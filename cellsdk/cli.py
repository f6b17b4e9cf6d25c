"""Command-line tools: ``cellsdk`` (a group) and ``cellsdk-train``, ``-eval``, ``-calibrate``, ``-convert``, ``-bench``.

The CLI is thin: each command parses its options, calls the Python API and
prints. Errors cellsdk raises on purpose become one line on stderr and a
non-zero exit, never a traceback.

Example:
    >>> from click.testing import CliRunner
    >>> CliRunner().invoke(cli, ["--version"]).output.startswith("cellsdk")
    True
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import signal
import sys
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import click

from cellsdk._capture import console_stream
from cellsdk._io import _ON_TERMINATE, remove_registered
from cellsdk._version import __version__
from cellsdk.errors import CellSDKError, describe_os_error

__all__ = [
    "bench_command",
    "calibrate_command",
    "cli",
    "convert_command",
    "eval_command",
    "info_command",
    "predict_command",
    "serve_command",
    "train_command",
    "verify_command",
]


CONTEXT = {"help_option_names": ["-h", "--help"]}
POSITIVE = click.IntRange(min=1)
NON_NEGATIVE = click.IntRange(min=0)
SEED = click.IntRange(0, 2**32 - 1)
POSITIVE_FLOAT = click.FloatRange(min=0, min_open=True)
THREADS = click.IntRange(1, 256)  # cellsdk.backends.MAX_THREADS
NON_NEGATIVE_FLOAT = click.FloatRange(min=0)
PERCENT = click.FloatRange(0, 100)


def _friendly_errors(function: Callable[..., Any]) -> Callable[..., Any]:
    """Turn cellsdk errors and OS errors into a one-line message and exit status 1."""

    @functools.wraps(function)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            with _terminate_as_interrupt():
                return function(*args, **kwargs)
        except CellSDKError as err:
            raise click.ClickException(str(err)) from None
        except BrokenPipeError:  # e.g. `cellsdk predict DIR | head`: the reader left; not an error of ours
            _silence_stdout()
            raise SystemExit(0) from None
        except OSError as err:
            raise click.ClickException(describe_os_error(err)) from None
        except _Terminated:  # the stack has unwound (temporary files removed); leave without interpreter
            _exit_terminated()  # teardown, which can crash inside native libraries interrupted mid-call
        except KeyboardInterrupt:
            raise click.ClickException("interrupted; nothing half-written was left behind") from None

    return wrapper


def _exit_terminated(signum: int = signal.SIGTERM) -> None:
    """Remove registered staging paths, say so on the real terminal, and exit 128 + signum without teardown."""
    remove_registered()
    stream = console_stream()  # the terminal even while a conversion sends fds 1 and 2 to its tool log
    what = "terminated (SIGTERM)" if signum == signal.SIGTERM else "interrupted"
    with contextlib.suppress(OSError, ValueError):
        stream.write(f"Error: {what}; nothing half-written was left behind\n")
        stream.flush()
        sys.stdout.flush()
    os._exit(128 + signum)


class _Terminated(KeyboardInterrupt):
    """SIGTERM, raised like Ctrl-C so that every cleanup (staging folders, temporary files) runs."""


@contextlib.contextmanager
def _terminate_as_interrupt() -> Iterator[None]:
    """While a command runs, SIGTERM unwinds the stack like Ctrl-C instead of killing the process mid-write.

    Inside native-heavy work that registered its staging folder (a conversion; see
    :func:`cellsdk._io.remove_on_terminate`), SIGTERM and Ctrl-C instead remove what is registered and exit at
    once: an interrupt unwound through torch's exporter can crash the process (SIGSEGV), and OpenVINO can turn
    it into an ordinary error that fails an artefact instead of stopping the conversion.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def on_term(signum: int, frame: Any) -> None:
        if _ON_TERMINATE:
            _exit_terminated(signum)
        raise _Terminated()

    def on_int(signum: int, frame: Any) -> None:
        if _ON_TERMINATE:
            _exit_terminated(signum)
        raise KeyboardInterrupt()

    previous = {signal.SIGTERM: signal.signal(signal.SIGTERM, on_term)}
    if signal.getsignal(signal.SIGINT) is signal.default_int_handler:  # not when Ctrl-C is ignored or handled
        previous[signal.SIGINT] = signal.signal(signal.SIGINT, on_int)
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


def _silence_stdout() -> None:
    """Point stdout at /dev/null so Python's exit-time flush does not fail again on the closed pipe."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError):
        pass


def _setup_logging(quiet: bool) -> None:
    """cellsdk's own progress messages at INFO; third-party libraries only from WARNING (their INFO chatter,
    e.g. ONNX export optimiser passes, is not for the user)."""
    logging.basicConfig(level=logging.WARNING, format="%(message)s", force=True)
    logging.getLogger("cellsdk").setLevel(logging.WARNING if quiet else logging.INFO)
    logging.captureWarnings(False)
    _show_cellsdk_warnings_in_one_line()


def _show_cellsdk_warnings_in_one_line() -> None:
    """cellsdk's warnings (e.g. an int8 model on an unverified CPU class) as ``warning: ...`` lines, no source line."""
    import warnings

    from cellsdk.errors import CpuVerificationWarning

    original = warnings.showwarning
    if getattr(original, "_cellsdk", False):
        return

    def show(message: Warning | str, category: type[Warning], filename: str, lineno: int, file: Any = None,
             line: str | None = None) -> None:
        if issubclass(category, CpuVerificationWarning):
            click.echo(f"warning: {message}", err=True)
        else:
            original(message, category, filename, lineno, file, line)

    show._cellsdk = True  # type: ignore[attr-defined]
    warnings.showwarning = show


RUN_DEVICES = ("auto, cpu, cuda[:N], tensorrt (onnxruntime), mps (torchscript), gpu / npu (openvino); "
               "`cellsdk devices` lists what works here.")


@click.group(context_settings=CONTEXT)
@click.version_option(__version__, prog_name="cellsdk")
def cli() -> None:
    """cellsdk: train, convert, verify, run and benchmark microscopy cell classifiers."""


@click.command("train", context_settings=CONTEXT)
@click.version_option(__version__, prog_name="cellsdk")
@click.argument("data", type=click.Path(path_type=Path))
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
@click.option("--input-size", type=click.IntRange(8, 4096), default=128, show_default=True, help="Model input side in pixels.")
@click.option("--crop", default="none", show_default=True,
              help="Centre crop of raw images before resizing: none, a fraction (0.875) or pixels (200px).")
@click.option("--data-cropped", is_flag=True,
              help="The training images already have that crop (e.g. bloodmnist_128); skip it in training.")
@click.option("--resize-filter", default="bilinear", show_default=True)
@click.option("--labels", default=None, help="Class names: a known map (bloodmnist) or comma-separated names.")
@click.option("--label-smoothing", type=click.FloatRange(0, 1, max_open=True), default=0.1, show_default=True)
@click.option("--accumulate", type=POSITIVE, default=1, show_default=True, help="Micro-batches per optimiser step.")
@click.option("--clip-grad", type=NON_NEGATIVE_FLOAT, default=2.0, show_default=True, help="Gradient-norm clip (0: off).")
@click.option("--amp", type=click.Choice(["auto", "off", "bf16", "fp16"]), default="auto", show_default=True)
@click.option("--channels-last/--no-channels-last", default=True, show_default=True)
@click.option("--freeze-epochs", type=NON_NEGATIVE, default=0, show_default=True, help="Epochs training the head alone.")
@click.option("--class-weights", type=click.Choice(["none", "balanced"]), default="none", show_default=True)
@click.option("--augment", type=click.Choice(["none", "light", "microscopy"]), default="microscopy",
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
@click.option("--resume", is_flag=True,
              help="Continue the run in --out from its last checkpoint, with its stored recipe.")
@click.option("--quiet", is_flag=True, help="No progress bars or per-epoch log.")
@_friendly_errors
def train_command(data: Path, out_dir: Path, **options: Any) -> None:
    """Fine-tune a timm backbone on DATA (a .npz file or an image folder)."""
    from cellsdk.training import AugmentConfig, TrainConfig, parse_crop, train

    quiet = options.pop("quiet")
    resume = options.pop("resume")
    _setup_logging(quiet)
    crop_mode, crop_value = parse_crop(options.pop("crop"))
    if resume:  # the run's stored recipe is used; only --epochs may extend it
        epochs = options["epochs"]
        result = train(data, out_dir, TrainConfig(epochs=epochs) if epochs else None, resume=True,
                       progress=not quiet)
        _print_result(result)
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
    )
    _print_result(train(data, out_dir, config, progress=not quiet))


def _print_result(result: Any) -> None:
    click.echo(_history_table(result.history, result.best_epoch))
    click.echo(f"best epoch {result.best_epoch}: val accuracy {result.best_metrics['val_accuracy'] * 100:.2f} %, "
               f"macro-F1 {result.best_metrics['val_macro_f1'] * 100:.2f} % "
               f"({result.seconds:.1f} s{', stopped early' if result.stopped_early else ''})")
    click.echo(f"checkpoints: {result.best_checkpoint}  {result.last_checkpoint}")


def _history_table(history: list[dict[str, Any]], best_epoch: int) -> str:
    rows = [f"{'epoch':>5} {'train loss':>10} {'val loss':>9} {'val acc':>8} {'val F1':>7} {'lr':>9} {'sec':>7}"]
    for h in history:
        mark = " *" if h["epoch"] == best_epoch else ""
        rows.append(f"{h['epoch']:>5} {h['train_loss']:>10.4f} {h['val_loss']:>9.4f} {h['val_accuracy'] * 100:>7.2f}% "
                    f"{h['val_macro_f1'] * 100:>6.2f}% {h['lr']:>9.2e} {h['seconds']:>7.1f}{mark}")
    return "\n".join(rows)


@click.command("eval", context_settings=CONTEXT)
@click.version_option(__version__, prog_name="cellsdk")
@click.argument("model", type=click.Path(path_type=Path))
@click.option("--data", type=click.Path(path_type=Path), required=True, help="Dataset (.npz or image folder).")
@click.option("--split", default="test", show_default=True, help="train, val, test or all.")
@click.option("--out", "out_dir", type=click.Path(path_type=Path), default=None,
              help="Folder for report.json, confusion_matrix.csv/.png, reliability.png.")
@click.option("--data-cropped", is_flag=True, help="The images already have the model's crop.")
@click.option("--labels", default=None, help="Class names of the data, if its folders do not give them.")
@click.option("--batch-size", type=POSITIVE, default=64, show_default=True)
@click.option("--backend", default=None, help="Deployed models: force a backend (onnxruntime, openvino, ...).")
@click.option("--option", "runtime_options", multiple=True, metavar="KEY=VALUE",
              help="Deployed models: a backend option, e.g. precision=f32 or threads=2; repeatable.")
@click.option("--device", default="auto", show_default=True, help="auto, cpu, cuda, cuda:N or mps (PyTorch).")
@click.option("--workers", type=NON_NEGATIVE, default=0, show_default=True, help="Checkpoints: data-loading processes.")
@click.option("--strict", is_flag=True, help="Refuse a model that failed verification, or an int8 model not verified "
              "on this machine's CPU class.")
@click.option("--ood", "ood_folders", multiple=True, type=click.Path(path_type=Path),
              help="Deployed models: a folder of images from outside the training domain; the guard's AUROC, "
                   "FPR at 95 % TPR and share flagged are reported. Repeatable.")
@click.option("--explain", type=click.IntRange(0, 64), default=0, show_default=True, metavar="N",
              help="Deployed models: write explanations.png into --out, the N most confident errors and N random "
                   "correct images with heat-map overlays, truth and prediction.")
@click.option("--quiet", is_flag=True)
@_friendly_errors
def eval_command(model: Path, data: Path, split: str, out_dir: Path | None, data_cropped: bool,
                 labels: str | None, batch_size: int, backend: str | None, runtime_options: tuple[str, ...],
                 device: str, workers: int, strict: bool, ood_folders: tuple[Path, ...], explain: int,
                 quiet: bool) -> None:
    """Evaluate MODEL on a split of --data: accuracy, macro-F1, per class, confusion, calibration.

    MODEL is a training checkpoint (.safetensors, run in PyTorch fp32) or a deployed model: any file or
    conversion folder Classifier.load reads, run through its runtime exactly as deployed.
    """
    from cellsdk.checkpoints import CHECKPOINT_SUFFIX

    _setup_logging(quiet)
    if model.suffix.lower() == CHECKPOINT_SUFFIX:
        if backend or runtime_options or strict or ood_folders or explain:
            raise click.ClickException("--backend / --option / --strict / --ood / --explain are for deployed models; "
                                       "a checkpoint runs in PyTorch (convert it to get its OOD guard and "
                                       "explanations; Grad-CAM of a checkpoint: cellsdk.training.explain.grad_cam)")
        from cellsdk.training import evaluate

        report = evaluate(model, data, split=split, out_dir=out_dir, data_cropped=data_cropped, labels=labels,
                          batch_size=batch_size, device=device, workers=workers, progress=not quiet)
    else:
        from cellsdk.evaluation import evaluate_model

        report = evaluate_model(model, data, split=split, out_dir=out_dir, data_cropped=data_cropped,
                                labels=labels, backend=backend, device=device, batch_size=min(batch_size, 32),
                                options=_parse_options(runtime_options), progress=not quiet, strict=strict,
                                ood=ood_folders, explain=explain)
        click.echo(f"{report['model']} on {report['backend']} ({report['device']}), CPU class "
                   f"{report['cpu']['cpu_class']}: {report['cpu_check']}")
    click.echo(format_report(report))
    for path in report.get("files", {}).values():
        click.echo(f"wrote {path}")


def _parse_options(pairs: tuple[str, ...]) -> dict[str, Any]:
    """``KEY=VALUE`` strings as a dict; whole numbers become ints.

    Example:
        >>> _parse_options(("precision=f32", "threads=2"))
        {'precision': 'f32', 'threads': 2}
    """
    options: dict[str, Any] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            raise click.ClickException(f"--option {pair!r}: write KEY=VALUE, e.g. precision=f32")
        options[key.strip()] = int(value) if value.strip().lstrip("-").isdigit() else value.strip()
    return options


@click.command("calibrate", context_settings=CONTEXT)
@click.version_option(__version__, prog_name="cellsdk")
@click.argument("checkpoint", type=click.Path(path_type=Path))
@click.option("--data", type=click.Path(path_type=Path), required=True, help="Dataset with a held-out split.")
@click.option("--split", default="val", show_default=True, help="The held-out split to fit on (not test).")
@click.option("--out", "out_path", type=click.Path(path_type=Path), default=None,
              help="Calibrated checkpoint [default: <checkpoint>.calibrated.safetensors].")
@click.option("--data-cropped", is_flag=True, help="The images already have the model's crop.")
@click.option("--labels", default=None, help="Class names of the data, if its folders do not give them.")
@click.option("--batch-size", type=POSITIVE, default=64, show_default=True)
@click.option("--device", default="auto", show_default=True, help="auto, cpu, cuda, cuda:N or mps (PyTorch).")
@click.option("--workers", type=NON_NEGATIVE, default=0, show_default=True)
@click.option("--quiet", is_flag=True)
@_friendly_errors
def calibrate_command(checkpoint: Path, data: Path, split: str, out_path: Path | None, data_cropped: bool,
                      labels: str | None, batch_size: int, device: str, workers: int, quiet: bool) -> None:
    """Temperature-scale CHECKPOINT on a held-out split and fold it into the weights (predictions unchanged)."""
    from cellsdk.training.calibrate import calibrate_checkpoint

    _setup_logging(quiet)
    result = calibrate_checkpoint(checkpoint, data, out=out_path, split=split, data_cropped=data_cropped,
                                  labels=labels, batch_size=batch_size, device=device, workers=workers,
                                  progress=not quiet)
    before, after = result["before"], result["after"]
    click.echo(f"temperature {result['temperature']:.4f} fitted on {result['split']} ({result['n']} images)")
    click.echo(f"  before: ECE {before['ece'] * 100:.2f} %, NLL {before['nll']:.4f}, "
               f"mean confidence {before['mean_confidence'] * 100:.2f} %, accuracy {before['accuracy'] * 100:.2f} %")
    click.echo(f"  after:  ECE {after['ece'] * 100:.2f} %, NLL {after['nll']:.4f}, "
               f"mean confidence {after['mean_confidence'] * 100:.2f} %, accuracy {after['accuracy'] * 100:.2f} %")
    click.echo(f"wrote {result['out']} ({result['seconds']:.1f} s)")


def format_report(report: dict[str, Any]) -> str:
    """A terminal table of an evaluation report.

    Example:
        >>> r = {"split": "test", "n": 2, "accuracy": 1.0, "macro_f1": 1.0, "min_recall": 1.0, "ece": 0.0,
        ...      "per_class": {"a": {"precision": 1.0, "recall": 1.0, "f1": 1.0, "support": 2}}}
        >>> print(format_report(r).splitlines()[0])
        test split, 2 images: accuracy 100.00 %, macro-F1 100.00 %, min recall 100.00 %, ECE 0.00 %
    """
    lines = [
        f"{report['split']} split, {report['n']} images: accuracy {report['accuracy'] * 100:.2f} %, "
        f"macro-F1 {report['macro_f1'] * 100:.2f} %, min recall {report['min_recall'] * 100:.2f} %, "
        f"ECE {report['ece'] * 100:.2f} %",
        f"{'class':<16}{'precision':>10}{'recall':>8}{'F1':>8}{'support':>9}",
    ]
    for label, row in report["per_class"].items():
        lines.append(f"{label:<16}{row['precision'] * 100:>9.2f}%{row['recall'] * 100:>7.2f}%"
                     f"{row['f1'] * 100:>7.2f}%{row['support']:>9}")
    curve = report.get("risk_coverage") or {}
    if curve.get("points"):
        lines.append("risk-coverage (accuracy of the most confident answers): " + ", ".join(
            f"{p['coverage'] * 100:.0f} % -> {p['accuracy'] * 100:.2f} %" for p in curve["points"]
            if p["coverage"] in (0.8, 0.9, 0.95, 1.0)) + f"; AURC {curve['aurc']:.4f}")
    guard = report.get("guard")
    if guard:
        lines.append(f"guard ({guard['score']}): kept {guard['kept'] * 100:.1f} % (out of distribution "
                     f"{guard['flagged_out_of_distribution'] * 100:.1f} %, uncertain {guard['uncertain'] * 100:.1f} %); "
                     f"accuracy of the kept answers {guard['accuracy_kept'] * 100:.2f} % (all: "
                     f"{guard['accuracy_all'] * 100:.2f} %)")
    elif "guard" in report:
        lines.append("guard: none in this model (every answer has status ok)")
    if report.get("ood"):
        lines.append(f"{'OOD folder':<40}{'images':>7}{'AUROC':>8}{'FPR@95':>8}{'flagged':>9}")
        for folder, row in report["ood"].items():
            auc = f"{row['auroc']:.3f}" if "auroc" in row else "-"
            fpr = f"{row['fpr_at_95_tpr']:.2f}" if "fpr_at_95_tpr" in row else "-"
            lines.append(f"{folder[-39:]:<40}{row['images']:>7}{auc:>8}{fpr:>8}{row['flagged'] * 100:>8.1f}%")
    return "\n".join(lines)


@click.command("info", context_settings=CONTEXT)
@click.version_option(__version__, prog_name="cellsdk")
@click.argument("path", type=click.Path(path_type=Path))
@click.option("--json", "as_json", is_flag=True,
              help="Print the metadata document as JSON (the guard's arrays as dtype and shape).")
@_friendly_errors
def info_command(path: Path, as_json: bool) -> None:
    """Describe a checkpoint, any model file or a conversion folder: metadata and the CPU classes it was verified on.

    Checkpoints are read without torch; a TorchScript archive needs torch.
    """
    import json

    from cellsdk.info import describe, read_metadata
    from cellsdk.ood_scores import without_arrays

    if as_json:
        click.echo(json.dumps(without_arrays(read_metadata(path).to_dict()), indent=2, sort_keys=True))
    else:
        click.echo(describe(path))


@click.command("devices", context_settings=CONTEXT)
@click.version_option(__version__, prog_name="cellsdk")
@click.option("--json", "as_json", is_flag=True, help="One JSON list of {device, runtime, available, detail}.")
@click.option("--require", "required", default=None, metavar="DEVICE",
              help="Exit 1 with the reason unless some runtime can use DEVICE (cpu, cuda, tensorrt, mps, coreml).")
@click.option("--no-torch", is_flag=True, help="Leave PyTorch out (importing it takes seconds).")
@_friendly_errors
def devices_command(as_json: bool, required: str | None, no_torch: bool) -> None:
    """Which devices each runtime can use here (CPU class, NVIDIA driver, CUDA, TensorRT, MPS, OpenVINO, CoreML),
    and for each one that cannot, what to install."""
    import json

    from cellsdk.devices import device_report, format_device_report, require_device

    rows = device_report(torch=not no_torch)
    if as_json:
        click.echo(json.dumps([row.to_dict() for row in rows], indent=2))
    else:
        click.echo(format_device_report(rows))
    if required:
        require_device(required, rows)


@click.command("predict", context_settings=CONTEXT)
@click.version_option(__version__, prog_name="cellsdk")
@click.argument("images", nargs=-1, type=click.Path(path_type=Path))
@click.option("--from-list", "from_list", type=click.Path(path_type=Path, allow_dash=True), default=None,
              help="A file with one image path (or folder) per line; - reads standard input.")
@click.option("--model", "model_path", type=click.Path(path_type=Path), default=None,
              help="A model file or a cellsdk-convert output folder [default: the shipped blood-cell model].")
@click.option("--backend", default=None, help="Force a backend: onnxruntime, openvino, torchscript, coreml.")
@click.option("--device", default="auto", show_default=True, help=RUN_DEVICES)
@click.option("--threads", type=THREADS, default=None,
              help="Inference threads [default: half the cores, at least 1; with --engine ray, 1 per actor].")
@click.option("--top-k", type=POSITIVE, default=1, show_default=True, help="Classes to show per image.")
@click.option("--batch-size", type=POSITIVE, default=32, show_default=True, help="Images per runtime call.")
@click.option("--workers", type=click.IntRange(1, 256), default=None,
              help="Decoding threads, overlapped with inference [default: the cores --threads leaves, at least 1].")
@click.option("--out", "out_path", type=click.Path(path_type=Path), default=None,
              help="Write one row per image to a .csv, .jsonl or .parquet file instead of printing; an interrupted "
                   "run continues where it stopped.")
@click.option("--overwrite", is_flag=True, help="With --out: start again instead of continuing.")
@click.option("--engine", type=click.Choice(["local", "ray"]), default="local", show_default=True,
              help="local: this machine; ray: a Ray cluster (needs --out DIR.parquet and cellsdk[ray]).")
@click.option("--address", default=None, help="With --engine ray: the cluster (auto, ray://host:10001) "
              "[default: start a local one].")
@click.option("--actors", type=click.IntRange(1, 1024), default=None,
              help="With --engine ray: model replicas, one CPU each [default: 1].")
@click.option("--json", "as_json", is_flag=True, help="One JSON object per line.")
@click.option("--strict", is_flag=True, help="Refuse a model that failed verification, or an int8 model not verified "
              "on this machine's CPU class.")
@click.option("--ood", "ood_mode", type=click.Choice(["flag", "reject", "off"]), default="flag", show_default=True,
              help="The model's out-of-distribution guard: flag (status and reasons beside the label), reject "
                   "(no label for images it flags) or off.")
@click.option("--explain", "explain_dir", type=click.Path(path_type=Path, file_okay=False), default=None,
              help="Also write a heat-map overlay PNG per image (where the model looked) into this folder.")
@click.option("--quiet", is_flag=True, help="No progress bar.")
@_friendly_errors
def predict_command(images: tuple[Path, ...], from_list: Path | None, model_path: Path | None, backend: str | None,
                    device: str, threads: int | None, top_k: int, batch_size: int, workers: int | None,
                    out_path: Path | None, overwrite: bool, engine: str, address: str | None, actors: int | None,
                    as_json: bool, strict: bool, ood_mode: str, explain_dir: Path | None, quiet: bool) -> None:
    """Classify IMAGES (files or folders) and/or the paths in --from-list: one line per image, or a result file
    (--out). Exit status 1 if any image failed."""
    from cellsdk.engine import default_split
    from cellsdk.jobs import count_inputs, iter_inputs, run_job

    if not images and from_list is None:
        raise click.UsageError("give IMAGES (files or folders) or --from-list FILE")
    if explain_dir is not None and (out_path is not None or engine == "ray"):
        raise click.UsageError("--explain writes overlays beside the printed predictions: leave out --out and "
                               "--engine ray")
    if engine == "ray":
        _predict_on_ray(images, from_list, model_path, out_path, overwrite=overwrite, address=address,
                        actors=actors or 1, batch_size=batch_size, threads=threads, workers=workers,
                        ood=ood_mode, strict=strict, backend=backend, device=device, quiet=quiet)
        return
    for name, value in (("--address", address), ("--actors", actors)):
        if value is not None:
            raise click.UsageError(f"{name} is a Ray option: add --engine ray")
    if overwrite and out_path is None:
        raise click.UsageError("--overwrite goes with --out FILE")
    decoders, threads = default_split(runtime=threads)
    workers = decoders if workers is None else workers
    classifier = _load_for_predict(model_path, backend, device, threads, top_k, strict, ood_mode)
    inputs = iter_inputs(images, from_list)
    if out_path is not None:
        total = None if quiet else count_inputs(images, from_list)
        summary = run_job(classifier, inputs, out_path, batch_size=batch_size, workers=workers, overwrite=overwrite,
                          progress=not quiet, total=total,
                          on_error=lambda path, reason: click.echo(f"error: {reason}", err=True))
        _print_summary(summary)
        if summary.errors:
            raise SystemExit(1)
        return
    if explain_dir is not None:
        _print_explanations(classifier, inputs, explain_dir, as_json=as_json)
        return
    _print_predictions(classifier, inputs, batch_size=batch_size, workers=workers, as_json=as_json)


def _print_explanations(classifier: Any, inputs: Any, out_dir: Path, *, as_json: bool) -> None:
    """predict --explain: each image's prediction line, and its overlay PNG in ``out_dir`` (one image at a time:
    a bad image is reported and skipped, nothing else is lost)."""
    import json

    from cellsdk.explain import require_cams

    require_cams(classifier)  # one line before anything is written, for a model that cannot explain
    out_dir.mkdir(parents=True, exist_ok=True)
    used: set[str] = set()
    failed = 0
    for path in inputs:
        try:
            explanation = classifier.explain(path)
        except CellSDKError as err:
            failed += 1
            if as_json:
                click.echo(json.dumps({"path": str(path), "error": str(err)}))
            click.echo(f"error: {err}", err=True)
            continue
        prediction = explanation.prediction
        name = f"{Path(path).stem}.{explanation.target}.png"
        counter = 2
        while name in used:
            name, counter = f"{Path(path).stem}-{counter}.{explanation.target}.png", counter + 1
        used.add(name)
        overlay = explanation.save(out_dir / name)
        if as_json:
            record = prediction.to_dict()
            keys = ("label", "index", "confidence", "top_k", "status", "ood_score", "reasons")
            click.echo(json.dumps({"path": str(path), **{k: record[k] for k in keys}, "explanation": str(overlay),
                                   **{f"explained_{k}": v for k, v in explanation.to_dict().items()
                                      if k in ("target", "peak", "box")}}))
        else:
            ranked = ", ".join(f"{label} {p * 100:.1f}%" for label, p in prediction.top_k) or "(no answer)"
            status = "" if prediction.ok else f"\t{prediction.status.upper()}: {prediction.reasons[0]}"
            click.echo(f"{path}\t{ranked}{status}\t{overlay}")
    if failed:
        raise SystemExit(1)


def _load_for_predict(model_path: Path | None, backend: str | None, device: str, threads: int, top_k: int,
                      strict: bool, ood_mode: str) -> Any:
    from cellsdk.classifier import Classifier

    _show_cellsdk_warnings_in_one_line()
    classifier = Classifier.load(model_path, backend=backend, device=device, top_k=top_k, strict=strict,
                                 ood=ood_mode, threads=threads)
    if classifier.chosen:
        click.echo(f"using {classifier.chosen}", err=True)
    elif model_path is None:
        click.echo(f"using the shipped blood-cell model {classifier.path.name} ({classifier.verification.describe()}; "
                   "MODEL_CARD.md in the cellsdk repository)", err=True)
    else:
        click.echo(f"using {classifier.path.name}: {classifier.verification.describe()}", err=True)
    return classifier


def _print_predictions(classifier: Any, inputs: Any, *, batch_size: int, workers: int | None, as_json: bool) -> None:
    import json

    failed = 0
    for item in classifier.predict_iter(inputs, batch_size=batch_size, workers=workers, errors="skip"):
        path, prediction = item.source, item.value
        if item.error is not None or prediction is None:
            failed += 1
            if as_json:
                click.echo(json.dumps({"path": str(path), "error": str(item.error)}))
            click.echo(f"error: {item.error}", err=True)
            continue
        if as_json:
            record = prediction.to_dict()
            keys = ("label", "index", "confidence", "top_k", "status", "ood_score", "reasons")
            click.echo(json.dumps({"path": str(path), **{k: record[k] for k in keys}}))
        else:
            ranked = ", ".join(f"{label} {p * 100:.1f}%" for label, p in prediction.top_k) or "(no answer)"
            status = "" if prediction.ok else f"\t{prediction.status.upper()}: {prediction.reasons[0]}" + (
                f" (+{len(prediction.reasons) - 1} more)" if len(prediction.reasons) > 1 else "")
            click.echo(f"{path}\t{ranked}{status}")
    if failed:
        raise SystemExit(1)


def _print_summary(summary: Any) -> None:
    from cellsdk.jobs import job_file

    click.echo(summary.table())
    resumed = f", {summary.resumed} from an earlier run" if summary.resumed else ""
    rate = summary.new / summary.seconds if summary.seconds > 0 else 0.0
    where = (f"{summary.out}/ (a Parquet folder)" if summary.out.is_dir() else
             f"{summary.out} (summary in {job_file(summary.out).name})")
    click.echo(f"wrote {where}: {summary.rows} rows, {summary.new} new{resumed}; {summary.seconds:.1f} s, "
               f"{rate:.0f} images/s")


def _predict_on_ray(images: tuple[Path, ...], from_list: Path | None, model_path: Path | None,
                    out_path: Path | None, **options: Any) -> None:
    from cellsdk.distributed import predict_files
    from cellsdk.jobs import iter_inputs

    if out_path is None:
        raise click.UsageError("--engine ray writes Parquet: add --out DIR.parquet")
    if out_path.suffix.lower() != ".parquet":
        raise click.UsageError(f"--engine ray writes a Parquet folder, not {out_path.suffix or 'no suffix'}: use "
                               f"--out {out_path.with_suffix('.parquet')}")
    options.pop("quiet")  # Ray's own progress output is off; the summary prints at the end
    if options["workers"] is None:
        options.pop("workers")
    else:
        options["workers_per_actor"] = options.pop("workers")
    threads = options.pop("threads")
    if threads is not None:
        options["threads_per_actor"] = threads
    for key in ("backend", "device"):
        if options[key] in (None, "auto"):
            options.pop(key)
    listed = [str(p) for p in iter_inputs((), from_list)] if from_list is not None else []
    summary = predict_files([*map(str, images), *listed], out_path, model_path, **options)
    _print_summary(summary)
    if summary.errors:
        raise SystemExit(1)


def _split_list(values: tuple[str, ...]) -> tuple[str, ...]:
    return tuple(part.strip() for value in values for part in value.split(",") if part.strip())


@click.command("convert", context_settings=CONTEXT)
@click.version_option(__version__, prog_name="cellsdk")
@click.argument("checkpoint", type=click.Path(path_type=Path))
@click.option("--out", "out_dir", type=click.Path(path_type=Path), required=True, help="Output folder (replaced).")
@click.option("--formats", default="all", show_default=True, help="onnx,torchscript,openvino,coreml or all.")
@click.option("--quantize", multiple=True,
              help="fp16, int8, bf16 (OpenVINO, computed in bf16 where the CPU has it; CoreML also int6, int4); "
                   "repeat or comma-separate.")
@click.option("--calib", type=click.Path(path_type=Path), default=None, help="Calibration data (train split sampled).")
@click.option("--eval", "eval_data", type=click.Path(path_type=Path), default=None,
              help="Held-out data for verification [default: --calib].")
@click.option("--eval-split", default="val", show_default=True)
@click.option("--eval-limit", type=POSITIVE, default=None, help="Verify on a stratified sample of this many images.")
@click.option("--calib-samples", type=POSITIVE, default=256, show_default=True)
@click.option("--seed", type=SEED, default=0, show_default=True)
@click.option("--input-size", type=click.IntRange(8, 4096), default=None,
              help="Export at this input size [default: the checkpoint's].")
@click.option("--dynamic-batch/--static-batch", default=True, show_default=True,
              help="Batch dimension: dynamic (any batch per call) or fixed at 1.")
@click.option("--data-cropped", is_flag=True, help="The data's images already have the model's crop.")
@click.option("--labels", default=None, help="Class names of the data, if its folders do not give them.")
@click.option("--max-accuracy-drop", type=PERCENT, default=0.5, show_default=True, help="Points.")
@click.option("--max-recall-drop", type=PERCENT, default=2.0, show_default=True, help="Points, for every class.")
@click.option("--min-agreement", type=PERCENT, default=99.5, show_default=True, help="Percent, fp32/fp16 top-1.")
@click.option("--min-int8-agreement", type=PERCENT, default=98.0, show_default=True,
              help="Percent, top-1 agreement of quantized artefacts with fp32 (fails when its 95 % interval is "
                   "wholly below).")
@click.option("--min-logit-cosine", type=click.FloatRange(-1, 1), default=0.98, show_default=True,
              help="Quantized artefacts: smallest mean cosine similarity of their logits to fp32's.")
@click.option("--allow-regression", is_flag=True, help="Exit 0 even if an artefact fails verification.")
@click.option("--force-calib", is_flag=True, help="Accept few calibration images or ones that overlap evaluation.")
@click.option("--int8-recipe", type=click.Choice(["portable", "vnni"]), default="portable", show_default=True,
              help="portable: 7-bit weights, correct on every CPU class; vnni: full 8-bit weights, exact only on "
                   "CPUs with VNNI / AMX (saturates on AVX2 and AVX-512 without VNNI).")
@click.option("--verify-cpus", default="native,haswell,nehalem", show_default=True,
              help="CPU classes to verify on: native (this machine), QEMU x86-64 models (haswell, nehalem, "
                   "skylake-client, sandybridge, westmere) and ARM64 ones (cortex-a72, neoverse-n1, arm64-max; "
                   "qemu-aarch64 with the environment scripts/setup.sh builds); none to skip.")
@click.option("--verify-cpus-images", type=POSITIVE, default=50, show_default=True,
              help="Emulated checks: at most this many evaluation images per class.")
@click.option("--verify-cpus-float", is_flag=True, help="Also check fp32 / fp16 artefacts under emulation.")
@click.option("--guard/--no-guard", default=True, show_default=True,
              help="Fit an out-of-distribution guard into every artefact (needs train and val splits in the data).")
@click.option("--guard-score", type=click.Choice(["auto", "msp", "energy", "mahalanobis", "knn"]), default="auto",
              show_default=True, help="auto: the score with the best AUROC on synthetic shifts of the val images.")
@click.option("--guard-retention", type=click.FloatRange(50, 100), default=95.0, show_default=True,
              help="Percent of in-distribution (val) images the OOD threshold keeps.")
@click.option("--explain/--no-explain", default=True, show_default=True,
              help="Add a class-activation-map output for Classifier.explain (pooling -> linear heads).")
@click.option("--test-vectors", type=click.IntRange(0, 1000), default=32, show_default=True,
              help="Held-out images every artefact carries for its self-check on other machines (as many as fit "
                   "in min(10 %, 400 KB) of it); 0 for none.")
@click.option("--quiet", is_flag=True)
@_friendly_errors
def convert_command(checkpoint: Path, out_dir: Path, formats: str, quantize: tuple[str, ...], **options: Any) -> None:
    """Convert CHECKPOINT to verified ONNX, TorchScript, OpenVINO and CoreML models with a manifest."""
    from cellsdk.converters import ConvertConfig, VerifyConfig, convert, format_manifest_table
    from cellsdk.converters.guard import GuardConfig
    from cellsdk.converters.targets import CpuTargets

    quiet = options.pop("quiet")
    _setup_logging(quiet)
    chosen = () if formats.strip() == "all" else _split_list((formats,))
    config = ConvertConfig(
        formats=chosen, precisions=_split_list(quantize),
        calib=str(options["calib"]) if options["calib"] else None,
        eval=str(options["eval_data"]) if options["eval_data"] else None,
        eval_split=options["eval_split"], eval_limit=options["eval_limit"], calib_samples=options["calib_samples"],
        seed=options["seed"], data_cropped=options["data_cropped"], labels=options["labels"],
        input_size=options["input_size"], dynamic_batch=options["dynamic_batch"], force_calib=options["force_calib"],
        int8_recipe=options["int8_recipe"],
        cpu_targets=CpuTargets.parse(options["verify_cpus"], images_per_class=options["verify_cpus_images"],
                                     float_artefacts=options["verify_cpus_float"]),
        guard=GuardConfig(score=options["guard_score"], retention=options["guard_retention"] / 100)
        if options["guard"] else GuardConfig.off(),
        explain=options["explain"], test_vectors=options["test_vectors"],
        verify=VerifyConfig(max_accuracy_drop=options["max_accuracy_drop"] / 100,
                            max_recall_drop=options["max_recall_drop"] / 100,
                            min_agreement=options["min_agreement"] / 100,
                            min_quantized_agreement=options["min_int8_agreement"] / 100,
                            min_logit_cosine=options["min_logit_cosine"]),
    )
    result = convert(checkpoint, out_dir, config, progress=not quiet)
    click.echo(format_manifest_table(result.manifest))
    for line in result.manifest["evaluation"].get("warnings", []):
        click.echo(f"note: the verification sample is small: {line}", err=True)
    for line in _cpu_notes(result.manifest):
        click.echo(line, err=True)
    click.echo(f"wrote {out_dir / 'manifest.json'} ({result.manifest['seconds']:.1f} s)")
    if result.failed and not options["allow_regression"]:
        names = ", ".join(a["file"] for a in result.failed)
        raise click.ClickException(f"{len(result.failed)} artefact(s) failed verification: {names} "
                                   "(see the reasons above; --allow-regression keeps the exit status 0)")


@click.command("verify", context_settings=CONTEXT)
@click.version_option(__version__, prog_name="cellsdk")
@click.argument("model", type=click.Path(path_type=Path))
@click.option("--self", "self_only", is_flag=True,
              help="Run MODEL's own test vectors here (its self-check; torch-free, no --reference or --data), print "
                   "the figures and cache the verdict for this machine.")
@click.option("--reference", type=click.Path(path_type=Path), default=None,
              help="The fp32 checkpoint MODEL was converted from, or a fp32 artefact of it (torch-free).")
@click.option("--data", type=click.Path(path_type=Path), default=None, help="Held-out real images (a dataset).")
@click.option("--split", default="val", show_default=True)
@click.option("--data-cropped", is_flag=True, help="The data's images already have the model's crop.")
@click.option("--labels", default=None, help="Class names of the data, if its folders do not give them.")
@click.option("--eval-limit", type=POSITIVE, default=None, help="Verify natively on a stratified sample of this many.")
@click.option("--verify-cpus", default="native", show_default=True,
              help="native (this machine) and / or emulated QEMU classes: haswell, nehalem, cortex-a72, "
                   "neoverse-n1, ... (with --self: where to run the self-check)")
@click.option("--verify-cpus-images", type=POSITIVE, default=50, show_default=True,
              help="Emulated checks: at most this many images per class.")
@click.option("--max-accuracy-drop", type=PERCENT, default=0.5, show_default=True, help="Points.")
@click.option("--max-recall-drop", type=PERCENT, default=2.0, show_default=True, help="Points, for every class.")
@click.option("--device", default="cpu", show_default=True,
              help="cpu (the CPU classes above), or an NVIDIA GPU: cuda, cuda:N, tensorrt (the gate runs MODEL there).")
@click.option("--no-write", is_flag=True, help="Report only; leave the model file unchanged.")
@click.option("--vectors", type=click.Choice(["missing", "replace", "keep"]), default="missing", show_default=True,
              help="Embed test vectors for the self-check (needs the fp32 checkpoint as --reference): when MODEL "
                   "has none, always, or never.")
@click.option("--quiet", is_flag=True)
@_friendly_errors
def verify_command(model: Path, reference: Path | None, data: Path | None, quiet: bool, self_only: bool,
                   **options: Any) -> None:
    """Verify MODEL on this machine's CPU class (and emulated ones), or on its GPU, and record the result inside MODEL.

    With --self, run the test vectors MODEL carries instead (the check Classifier.load makes on first use here).
    """
    if self_only:
        _self_check_command(model, options["device"], options["verify_cpus"])
        return
    if reference is None or data is None:
        raise click.UsageError("--reference and --data are needed (or --self, to run the model's own test vectors)")
    from cellsdk.converters import VerifyConfig
    from cellsdk.converters.reverify import verify_deployed
    from cellsdk.converters.targets import CpuTargets
    from cellsdk.info import format_cpu_records, format_gpu_records

    _setup_logging(quiet)
    result = verify_deployed(
        model, data, reference=reference, split=options["split"], data_cropped=options["data_cropped"],
        labels=options["labels"], limit=options["eval_limit"],
        targets=CpuTargets.parse(options["verify_cpus"], images_per_class=options["verify_cpus_images"]),
        verify=VerifyConfig(max_accuracy_drop=options["max_accuracy_drop"] / 100,
                            max_recall_drop=options["max_recall_drop"] / 100),
        write=not options["no_write"], progress=not quiet, device=options["device"], vectors=options["vectors"])
    click.echo(f"{model}: {result['images']} held-out images")
    if "gpu_verification" in result:
        click.echo("\n".join(format_gpu_records(result["records"])))
        if result["written"]:
            click.echo(f"recorded in {model} ({len(result['gpu_verification'])} GPU records in all)")
        if result["status"] != "passed":
            raise click.ClickException(f"{model} failed verification on {options['device']} (see the table above)")
        return
    click.echo("\n".join(format_cpu_records(result["records"])))
    if result["written"]:
        click.echo(f"recorded in {model} ({len(result['cpu_verification'])} CPU-class records in all)")
    vectors = result.get("test_vectors")
    if vectors is not None:
        check = vectors.get("self_check") or {}
        click.echo(f"test vectors: {vectors['images']} images, {vectors.get('bytes', 0) / 1e3:.0f} KB (budget "
                   f"{vectors['budget_bytes'] / 1e3:.0f} KB); self-check here: {check.get('status', 'not run')}"
                   + (f" ({'; '.join(check['reasons'])})" if check.get("reasons") else ""))
    for line in _cpu_notes({"artefacts": [{"cpu_verification": result["records"]}]}):
        click.echo(line, err=True)
    if result["status"] != "passed":
        raise click.ClickException(f"{model} failed verification on a CPU class (see the table above)")


def _self_check_command(model: Path, device: str, cpus: str) -> None:
    """``cellsdk verify MODEL --self``: the self-check, run now, as a table; exit 1 when it fails or cannot run.

    ``--verify-cpus`` names where: ``native`` (this machine; the verdict is cached) and emulated classes.
    """
    import warnings

    from cellsdk.classifier import Classifier
    from cellsdk.selfcheck import self_check

    names = [n.strip().lower() for n in cpus.split(",") if n.strip()]
    emulated = [n for n in names if n != "native"]
    if emulated:
        from cellsdk.converters.targets import CpuTargets

        CpuTargets.parse(emulated)  # unknown names: one line naming the known ones
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the verdict below says it all
        classifier = Classifier.load(model, device=device, self_check=False)
    if classifier.metadata.test_vectors is None:
        raise click.ClickException(f"{model} carries no test vectors (converted before metadata schema 5, or not by "
                                   "cellsdk-convert): re-convert it, or embed them with cellsdk verify MODEL "
                                   "--reference CHECKPOINT --data DATA")
    rows: list[dict[str, Any]] = []
    if "native" in names or not names:
        verdict = self_check(classifier, refresh=True)
        rows.append({**verdict.to_dict(), "target": "native", "method": "native (verdict cached)"})
    for name in emulated:
        from cellsdk.converters.targets import self_check_emulated

        rows.append(self_check_emulated(model, name))
    click.echo(f"{model}: self-check, {classifier.metadata.precision}, "
               f"{len(classifier.metadata.test_vectors.get('images') or [])} test vectors (guard Δ: the OOD score's "
               "largest difference from fp32's, drift: from this artefact's own where its gate passed; both as a "
               "share of the spread of fp32's scores on the vectors)")
    click.echo(f"  {'target':<13}{'CPU class':<21}{'runtime (device)':<44}{'agree %':>8}{'logit cos':>10}{'max Δp':>8}"
               f"{'guard Δ':>8}{'drift':>7}{'ms':>7}  status")
    for row in rows:
        f, m = row.get("figures") or {}, row.get("machine") or {}
        where = m.get("cpu_class") or m.get("gpu") or "-"
        runtime = f"{m.get('backend', '-')} {m.get('runtime_version', '')} ({m.get('device', '-')})"
        guard = f"{f['guard_score_error'] * 100:.1f}%" if "guard_score_error" in f else "-"
        drift = f"{f['guard_drift'] * 100:.1f}%" if "guard_drift" in f else "-"
        numbers = (f"{f['top1_agreement'] * 100:>8.1f}{f['logit_cosine']:>10.5f}{f['max_probability_error']:>8.4f}"
                   if f else f"{'-':>8}{'-':>10}{'-':>8}")
        reasons = "; ".join(row.get("reasons") or [])
        click.echo(f"  {row['target']:<13}{where:<21}{runtime[:43]:<44}{numbers}{guard:>8}{drift:>7}"
                   f"{row.get('seconds', 0) * 1e3:>7.0f}  {row['status']}" + (f" ({reasons})" if reasons else ""))
    bad = [r["target"] for r in rows if r["status"] != "passed"]
    if bad:
        raise click.ClickException(f"{model} did not pass its self-check on {', '.join(bad)} (see the table above)")


def _cpu_notes(manifest: dict[str, Any]) -> list[str]:
    """One line per reason a requested CPU class could not be verified (e.g. QEMU missing, with its install)."""
    reasons = {reason for a in manifest["artefacts"] for r in a.get("cpu_verification") or []
               if r.get("status") not in ("passed", "failed") for reason in r.get("reasons") or []}
    return [f"warning: CPU classes not verified: {reason}" for reason in sorted(reasons)]


@click.command("bench", context_settings=CONTEXT)
@click.version_option(__version__, prog_name="cellsdk")
@click.argument("models", nargs=-1, type=click.Path(path_type=Path))
@click.option("--device", "devices", default="auto", show_default=True, help="cpu,cuda,tensorrt,mps,coreml or auto (all).")
@click.option("--batch", "batches", default="1,32", show_default=True, help="Batch sizes, comma-separated.")
@click.option("--threads", type=THREADS, default=None, help="Inference threads (default: each runtime's).")
@click.option("--warmup", type=NON_NEGATIVE, default=10, show_default=True)
@click.option("--iterations", type=POSITIVE, default=100, show_default=True)
@click.option("--duration", type=POSITIVE_FLOAT, default=None, help="Seconds per measurement instead of --iterations.")
@click.option("--data", type=click.Path(path_type=Path), default=None, help="Image folder: accuracy and macro-F1.")
@click.option("--data-split", default="test", show_default=True)
@click.option("--data-cropped", is_flag=True, help="The data's images already have the model's crop.")
@click.option("--eval-limit", type=POSITIVE, default=None, help="Use at most this many images for accuracy.")
@click.option("--targets", "targets_file", type=click.Path(path_type=Path), default=None,
              help="Latency targets TOML [default: the mission's, benchmarks/targets.toml].")
@click.option("--no-eager", is_flag=True, help="Leave out the PyTorch eager fp32 reference rows.")
@click.option("--strict", is_flag=True, help="Leave out artefacts that failed verification (or int8 ones not "
              "verified on this CPU class) instead of measuring them and judging them FAIL.")
@click.option("--out", "out_dir", type=click.Path(path_type=Path), default=None,
              help="Folder for results.json / .md / .csv and latency.png (throughput.json / .md with --throughput).")
@click.option("--throughput", "throughput_dir", type=click.Path(path_type=Path, file_okay=False), default=None,
              help="Instead: images/s, CPU use and peak memory over this folder for the local engine, the Ray "
                   "engine and a hand-written reference pipeline (MODELS: at most one ONNX model [default: the "
                   "shipped one]).")
@click.option("--splits", default=None, help="With --throughput: decode x runtime thread splits, e.g. 1x1,1x2 "
              "[default: every useful split of this machine's cores].")
@click.option("--ray-actors", default="1,2", show_default=True, help="With --throughput: Ray actor counts, or none.")
@click.option("--repeat", type=POSITIVE, default=1, show_default=True,
              help="With --throughput: go over the folder's images this many times.")
@click.option("--rounds", type=click.IntRange(1, 100), default=3, show_default=True,
              help="With --throughput: runs of every configuration, interleaved (medians reported).")
@click.option("--serve-load", "serve_load_dir", type=click.Path(path_type=Path, file_okay=False), default=None,
              help="Instead: load-test cellsdk serve on a loopback port with this folder's images, with and without "
                   "micro-batching, against in-process predict_batch (MODELS: at most one [default: the shipped "
                   "one]; --duration: seconds per mode [default: 60]).")
@click.option("--clients", type=click.IntRange(1, 4096), default=32, show_default=True,
              help="With --serve-load: concurrent clients.")
@click.option("--quiet", is_flag=True)
@_friendly_errors
def bench_command(models: tuple[Path, ...], devices: str, batches: str, out_dir: Path | None, quiet: bool,
                  throughput_dir: Path | None, splits: str | None, ray_actors: str, repeat: int, rounds: int,
                  serve_load_dir: Path | None, clients: int, **options: Any) -> None:
    """Benchmark MODELS (files or cellsdk-convert folders): latency, throughput, memory, accuracy, PASS/FAIL;
    or, with --throughput DIR, whole-folder throughput of every engine against a hand-written reference;
    or, with --serve-load DIR, the REST service under load."""
    from cellsdk.benchmarks import BenchConfig, format_table, run_benchmark, write_reports

    if serve_load_dir is not None:
        _bench_serve_load(serve_load_dir, models, out_dir, quiet, clients, options["duration"] or 60.0)
        return
    if throughput_dir is not None:
        _bench_throughput(throughput_dir, models, out_dir, quiet, splits, ray_actors, repeat, rounds)
        return
    if not models:
        raise click.UsageError("give MODELS (files or cellsdk-convert folders), or --throughput DIR")

    try:
        batch_sizes = tuple(int(b) for b in _split_list((batches,)))
    except ValueError:
        raise click.ClickException(f"--batch {batches!r}: use whole numbers such as 1,8,32") from None
    config = BenchConfig(
        devices=() if devices.strip() == "auto" else _split_list((devices,)), batches=batch_sizes,
        threads=options["threads"], warmup=options["warmup"], iterations=options["iterations"],
        duration=options["duration"], data=str(options["data"]) if options["data"] else None,
        data_split=options["data_split"], data_cropped=options["data_cropped"], eval_limit=options["eval_limit"],
        targets=str(options["targets_file"]) if options["targets_file"] else None, eager=not options["no_eager"],
        strict=options["strict"],
    )
    report = run_benchmark(models, config, progress=not quiet)
    click.echo(format_table(report))
    if out_dir is not None:
        for path in write_reports(report, out_dir).values():
            click.echo(f"wrote {path}")
    if report["failed"]:
        raise click.ClickException(f"{report['failed']} row(s) failed: latency target missed, artefact failed "
                                   "verification, or an error (see the result column and the notes)")
    if not report["rows"] and config.devices:
        first = report["skipped"][0]["reason"] if report["skipped"] else "no artefact runs on them"
        raise click.ClickException(f"nothing measured on --device {','.join(config.devices)}: every row was skipped "
                                   f"({first}); `cellsdk devices` shows what each device needs")

def _bench_throughput(folder: Path, models: tuple[Path, ...], out_dir: Path | None, quiet: bool, splits: str | None,
                      ray_actors: str, repeat: int, rounds: int) -> None:
    from cellsdk.benchmarks.throughput import ThroughputConfig, format_throughput, run_throughput, write_throughput

    if len(models) > 1:
        raise click.UsageError("--throughput measures one model: give at most one")
    try:
        pairs = tuple(tuple(int(n) for n in part.lower().split("x")) for part in _split_list((splits,))) \
            if splits else None
        actors = () if ray_actors.strip().lower() == "none" else tuple(int(n) for n in _split_list((ray_actors,)))
    except ValueError:
        raise click.ClickException(f"--splits {splits!r} / --ray-actors {ray_actors!r}: use e.g. --splits 1x1,1x2 "
                                   "--ray-actors 1,2 (or none)") from None
    if pairs is not None and any(len(pair) != 2 for pair in pairs):
        raise click.ClickException(f"--splits {splits!r}: each split is DECODExRUNTIME, e.g. 1x2")
    config = ThroughputConfig(folder=str(folder), model=str(models[0]) if models else None, ray_actors=actors,
                              repeat=repeat, rounds=rounds, **({"splits": pairs} if pairs else {}))  # type: ignore[arg-type]
    report = run_throughput(config, progress=None if quiet else lambda line: click.echo(line, err=True))
    click.echo(format_throughput(report))
    if out_dir is not None:
        for path in write_throughput(report, out_dir):
            click.echo(f"wrote {path}")


@click.command("serve", context_settings=CONTEXT)
@click.version_option(__version__, prog_name="cellsdk")
@click.option("--model", "model_path", type=click.Path(path_type=Path), default=None,
              help="A model file or a cellsdk-convert output folder [default: the shipped blood-cell model].")
@click.option("--backend", default=None, help="Force a backend: onnxruntime, openvino, torchscript, coreml.")
@click.option("--device", default="auto", show_default=True, help=RUN_DEVICES)
@click.option("--host", default="127.0.0.1", show_default=True,
              help="Address to bind; anything but loopback needs an API key.")
@click.option("--port", type=click.IntRange(0, 65535), default=8000, show_default=True, help="0: any free port.")
@click.option("--max-batch", type=click.IntRange(1, 4096), default=32, show_default=True,
              help="Images per runtime call across concurrent requests (1: no micro-batching).")
@click.option("--max-wait-ms", type=click.FloatRange(0, 10_000), default=5.0, show_default=True,
              help="At most how long queued images wait for admitted ones still being decoded (a lone request "
                   "never waits).")
@click.option("--max-queue", type=POSITIVE, default=256, show_default=True,
              help="Images in progress at once; beyond it requests get 503 with Retry-After.")
@click.option("--max-images", type=POSITIVE, default=64, show_default=True, help="Images in one request.")
@click.option("--max-upload-mb", type=POSITIVE_FLOAT, default=32.0, show_default=True, help="Request body limit.")
@click.option("--max-pixels", type=POSITIVE, default=None, help="Pixels in one image [default: the SDK's "
              "decompression-bomb limit, 64,000,000].")
@click.option("--top-k", type=POSITIVE, default=3, show_default=True, help="Classes per image unless a request "
              "says top_k.")
@click.option("--api-key", default=None, envvar="CELLSDK_API_KEY", show_envvar=True,
              help="Require this key (X-API-Key or Authorization: Bearer); prefer the environment variable.")
@click.option("--cors-origin", "cors_origins", multiple=True, help="Allow browser calls from this origin "
              "(repeat for several) [default: CORS off].")
@click.option("--threads", type=THREADS, default=None, help="Inference threads [default: half the cores].")
@click.option("--workers", type=click.IntRange(1, 256), default=None,
              help="Decoding threads [default: the cores --threads leaves, at least 1].")
@click.option("--drain-seconds", type=NON_NEGATIVE_FLOAT, default=30.0, show_default=True,
              help="On SIGTERM, how long requests in flight may take to finish.")
@click.option("--strict", is_flag=True, help="Refuse a model that failed verification, or an int8 model not verified "
              "on this machine's CPU class.")
@click.option("--ood", "ood_mode", type=click.Choice(["flag", "reject", "off"]), default="flag", show_default=True,
              help="The model's out-of-distribution guard (see cellsdk predict --help).")
@click.option("--log-level", type=click.Choice(["critical", "error", "warning", "info", "debug"]), default="warning",
              show_default=True, help="Server log level (info: every start and stop).")
@_friendly_errors
def serve_command(model_path: Path | None, backend: str | None, device: str, host: str, port: int, max_batch: int,
                  max_wait_ms: float, max_queue: int, max_images: int, max_upload_mb: float, max_pixels: int | None,
                  top_k: int, api_key: str | None, cors_origins: tuple[str, ...], threads: int | None,
                  workers: int | None, drain_seconds: float, strict: bool, ood_mode: str, log_level: str) -> None:
    """Serve a model over HTTP: POST /v1/predict, GET /v1/model, /healthz, /readyz, /metrics, the web page at /
    and the API docs at /docs. Needs cellsdk[serve]."""
    from cellsdk.engine import default_split
    from cellsdk.serve import ServeConfig, require_serve_packages, serve

    require_serve_packages()
    decoders, threads = default_split(runtime=threads)
    config = ServeConfig(host=host, port=port, max_batch=max_batch, max_wait_ms=max_wait_ms, max_queue=max_queue,
                         max_images=max_images, max_upload_bytes=int(max_upload_mb * 1024 * 1024),
                         top_k=top_k, api_key=api_key or None, cors_origins=cors_origins,
                         decode_workers=workers or decoders, drain_seconds=drain_seconds,
                         **({"max_pixels": max_pixels} if max_pixels else {})).check()
    classifier = _load_for_predict(model_path, backend, device, threads, top_k, strict, ood_mode)
    serve(classifier, config, log_level=log_level, announce=lambda line: click.echo(line, err=True))


def _bench_serve_load(folder: Path, models: tuple[Path, ...], out_dir: Path | None, quiet: bool, clients: int,
                      duration: float) -> None:
    from cellsdk.benchmarks.serve_load import ServeLoadConfig, format_serve_load, run_serve_load, write_serve_load

    if len(models) > 1:
        raise click.UsageError("--serve-load takes at most one model")
    config = ServeLoadConfig(folder=str(folder), model=str(models[0]) if models else None, duration=duration,
                             clients=clients)
    report = run_serve_load(config, progress=None if quiet else lambda line: click.echo(line, err=True))
    click.echo(format_serve_load(report))
    if out_dir is not None:
        for path in write_serve_load(report, out_dir):
            click.echo(f"wrote {path}")
    failed = [row["mode"] for row in report["rows"] if row["errors"] or row["service_exit_code"] != 0]
    if failed:
        raise click.ClickException(f"the service answered with errors, or did not stop cleanly, in: {', '.join(failed)}")


for _command in (train_command, eval_command, calibrate_command, predict_command, info_command, convert_command,
                 verify_command, bench_command, serve_command, devices_command):
    cli.add_command(_command)
