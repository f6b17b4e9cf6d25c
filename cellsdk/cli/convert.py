"""``cellsdk-convert`` / ``cellsdk convert`` (checkpoint to verified artefacts) and ``cellsdk verify`` (an existing
artefact: the gate on this machine, emulated CPU classes or a GPU, or its own test vectors)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from cellsdk.cli.options import (
    PERCENT,
    POSITIVE,
    SEED,
    command,
    data_cropped_option,
    dataset_options,
    gate_options,
    labels_option,
    quiet_option,
    split_list,
)
from cellsdk.cli.process import friendly_errors, setup_logging

__all__ = ["convert_command", "verify_command"]


@command("convert")
@click.argument("checkpoint", type=click.Path(path_type=Path))
@click.option("--out", "out_dir", type=click.Path(path_type=Path), required=True, help="Output folder (replaced).")
@click.option("--formats", default="all", show_default=True, help="onnx,torchscript,openvino,coreml,litert,executorch or all.")
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
@data_cropped_option()
@labels_option()
@gate_options()
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
@click.option("--guard-originals", type=click.Path(path_type=Path, exists=True, file_okay=False), default=None,
              help="The training lab's images as its microscope delivers them (full resolution; a folder with a val "
                   "split): each artefact's OOD threshold also keeps --guard-retention of them.")
@click.option("--explain/--no-explain", default=True, show_default=True,
              help="Add a class-activation-map output for Classifier.explain (pooling -> linear heads).")
@click.option("--test-vectors", type=click.IntRange(0, 1000), default=32, show_default=True,
              help="Held-out images every artefact carries for its self-check on other machines (as many as fit "
                   "in min(10 %, 400 KB) of it); 0 for none.")
@quiet_option()
@friendly_errors
def convert_command(checkpoint: Path, out_dir: Path, formats: str, quantize: tuple[str, ...], **options: Any) -> None:
    """Convert CHECKPOINT to verified ONNX, TorchScript, OpenVINO, CoreML, LiteRT and ExecuTorch models with a manifest.

    \f
    Examples:
        >>> from click.testing import CliRunner
        >>> CliRunner().invoke(convert_command, ["--help"]).output.splitlines()[0]
        'Usage: convert [OPTIONS] CHECKPOINT'
    """
    from cellsdk.converters import ConvertConfig, VerifyConfig, convert, format_manifest_table
    from cellsdk.converters.guard import GuardConfig
    from cellsdk.converters.targets import CpuTargets, unverified_notes

    quiet = options.pop("quiet")
    setup_logging(quiet)
    config = ConvertConfig(
        formats=() if formats.strip() == "all" else split_list(formats), precisions=split_list(*quantize),
        calib=str(options["calib"]) if options["calib"] else None,
        eval=str(options["eval_data"]) if options["eval_data"] else None,
        eval_split=options["eval_split"], eval_limit=options["eval_limit"], calib_samples=options["calib_samples"],
        seed=options["seed"], data_cropped=options["data_cropped"], labels=options["labels"],
        input_size=options["input_size"], dynamic_batch=options["dynamic_batch"], force_calib=options["force_calib"],
        int8_recipe=options["int8_recipe"],
        cpu_targets=CpuTargets.parse(options["verify_cpus"], images_per_class=options["verify_cpus_images"],
                                     float_artefacts=options["verify_cpus_float"]),
        guard=GuardConfig(score=options["guard_score"], retention=options["guard_retention"] / 100,
                          originals=str(options["guard_originals"]) if options["guard_originals"] else None)
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
    for line in unverified_notes(result.manifest["artefacts"]):
        click.echo(line, err=True)
    click.echo(f"wrote {out_dir / 'manifest.json'} ({result.manifest['seconds']:.1f} s)")
    if result.failed and not options["allow_regression"]:
        names = ", ".join(a["file"] for a in result.failed)
        raise click.ClickException(f"{len(result.failed)} artefact(s) failed verification: {names} "
                                   "(see the reasons above; --allow-regression keeps the exit status 0)")


@command("verify")
@click.argument("model", type=click.Path(path_type=Path))
@click.option("--self", "self_only", is_flag=True,
              help="Run MODEL's own test vectors here (its self-check; torch-free, no --reference or --data), print "
                   "the figures and cache the verdict for this machine.")
@click.option("--reference", type=click.Path(path_type=Path), default=None,
              help="The fp32 checkpoint MODEL was converted from, or a fp32 artefact of it (torch-free).")
@dataset_options(split="val", required=False, data_help="Held-out real images (a dataset).")
@click.option("--eval-limit", type=POSITIVE, default=None, help="Verify natively on a stratified sample of this many.")
@click.option("--verify-cpus", default="native", show_default=True,
              help="native (this machine) and / or emulated QEMU classes: haswell, nehalem, cortex-a72, "
                   "neoverse-n1, ... (with --self: where to run the self-check)")
@click.option("--verify-cpus-images", type=POSITIVE, default=50, show_default=True,
              help="Emulated checks: at most this many images per class.")
@gate_options()
@click.option("--device", default="cpu", show_default=True,
              help="cpu (the CPU classes above), or an NVIDIA GPU: cuda, cuda:N, tensorrt (the gate runs MODEL there).")
@click.option("--no-write", is_flag=True, help="Report only; leave the model file unchanged.")
@click.option("--vectors", type=click.Choice(["missing", "replace", "keep"]), default="missing", show_default=True,
              help="Embed test vectors for the self-check (needs the fp32 checkpoint as --reference): when MODEL "
                   "has none, always, or never.")
@quiet_option()
@friendly_errors
def verify_command(model: Path, reference: Path | None, data: Path | None, quiet: bool, self_only: bool,
                   **options: Any) -> None:
    """Verify MODEL on this machine's CPU class (and emulated ones), or on its GPU, and record the result inside MODEL.

    With --self, run the test vectors MODEL carries instead (the check Classifier.load makes on first use here).

    \f
    Examples:
        >>> from click.testing import CliRunner
        >>> CliRunner().invoke(verify_command, ["--help"]).output.splitlines()[0]
        'Usage: verify [OPTIONS] MODEL'
    """
    if self_only:
        from cellsdk.converters.targets import format_self_checks, self_check_everywhere

        rows = self_check_everywhere(model, split_list(options["verify_cpus"]), device=options["device"])
        click.echo(format_self_checks(model, rows))
        from cellsdk.artefacts.manifest import STATUS_NOT_VERIFIED

        bad = [row["target"] for row in rows if row["status"] not in ("passed", STATUS_NOT_VERIFIED)]
        if bad:
            raise click.ClickException(f"{model} did not pass its self-check on {', '.join(bad)} (see the table above)")
        unchecked = [row["target"] for row in rows if row["status"] == STATUS_NOT_VERIFIED]
        if unchecked:
            raise click.ClickException(f"{model} could not be checked on {', '.join(unchecked)} (the reason is in the "
                                       "table above)")
        return
    if reference is None or data is None:
        raise click.UsageError("--reference and --data are needed (or --self, to run the model's own test vectors)")
    from cellsdk.converters import VerifyConfig
    from cellsdk.converters.targets import CpuTargets
    from cellsdk.converters.verify_deployed import format_verification, verify_deployed

    setup_logging(quiet)
    result = verify_deployed(
        model, data, reference=reference, split=options["split"], data_cropped=options["data_cropped"],
        labels=options["labels"], limit=options["eval_limit"],
        targets=CpuTargets.parse(options["verify_cpus"], images_per_class=options["verify_cpus_images"]),
        verify=VerifyConfig(max_accuracy_drop=options["max_accuracy_drop"] / 100,
                            max_recall_drop=options["max_recall_drop"] / 100),
        write=not options["no_write"], progress=not quiet, device=options["device"], vectors=options["vectors"])
    report, notes = format_verification(model, result)
    click.echo(report)
    for line in notes:
        click.echo(line, err=True)
    if result["status"] != "passed":
        where = options["device"] if "gpu_verification" in result else "a CPU class"
        raise click.ClickException(f"{model} failed verification on {where} (see the table above)")

#: the commands' docstring examples, for doctest (click turns the functions into Command objects)
__test__ = {"convert_command": convert_command.callback.__doc__, "verify_command": verify_command.callback.__doc__}
