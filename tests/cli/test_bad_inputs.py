"""Every case of the bad-input matrix (tests/bad_inputs.py) gets its one-line answer and exit code; plus the
cases that need a process of their own: SIGTERM during a conversion, a closed pipe, a run that fails early."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from click.testing import CliRunner

from cellsdk import cli as cli_module
from tests.cli.bad_inputs import CASES, Case, console_command, make_fixtures

COMMANDS = {"cellsdk": cli_module.cli, "cellsdk-train": cli_module.train_command,
            "cellsdk-eval": cli_module.eval_command, "cellsdk-convert": cli_module.convert_command,
            "cellsdk-bench": cli_module.bench_command, "cellsdk-calibrate": cli_module.calibrate_command}


@pytest.fixture(scope="module")
def fixtures(tmp_path_factory):
    return make_fixtures(tmp_path_factory.mktemp("bad_inputs"))


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.name)
def test_bad_input_gets_one_clear_line(case: Case, fixtures):
    argv = case.resolve(fixtures)
    if case.script in COMMANDS:
        result = CliRunner().invoke(COMMANDS[case.script], argv, prog_name=case.script)
        output, code = result.output, result.exit_code
        assert result.exception is None or isinstance(result.exception, SystemExit), repr(result.exception)
    else:
        done = subprocess.run([*console_command(case), *argv], capture_output=True, text=True, timeout=300)
        output, code = done.stdout + done.stderr, done.returncode
    assert code == case.exit_code, output[-2000:]
    assert case.message in output, output[-2000:]
    assert "Traceback" not in output
    if code:
        errors = [line for line in output.splitlines() if line.startswith(("Error:", "error:", "overhead: error"))]
        assert len(errors) == 1 and len(errors[0]) < 600, output[-2000:]


def test_a_run_that_fails_before_training_leaves_nothing_behind(tmp_path, fixtures):
    out = tmp_path / "never"
    result = CliRunner().invoke(cli_module.train_command, [str(fixtures["noval"]), "--out", str(out), "--arch",
                                                           "test_efficientnet", "--pretrained", "none"])
    assert result.exit_code == 1 and not out.exists()
    existing = tmp_path / "existing"
    existing.mkdir()
    (existing / "notes.txt").write_text("mine")
    CliRunner().invoke(cli_module.train_command, [str(fixtures["noval"]), "--out", str(existing)])
    assert sorted(p.name for p in existing.iterdir()) == ["notes.txt"]


def _bin(name: str) -> str:
    return str(Path(sys.executable).parent / name)


def _sigint_default() -> None:
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def test_sigterm_during_conversion_leaves_no_staging_folder_and_stale_ones_are_removed(tiny_run, tmp_path):
    out = tmp_path / "conv"
    command = [_bin("cellsdk-convert"), str(tiny_run.best_checkpoint), "--out", str(out), "--calib",
               str(Path(__file__).resolve().parents[2] / "samples" / "bloodmnist_128"), "--data-cropped",
               "--quantize", "int8", "--calib-samples", "64", "--verify-cpus", "native", "--quiet"]
    # SIGTERM as the export starts (inside torch's exporter) and while an artefact is being verified / the next
    # one converted (inside ONNX Runtime / OpenVINO): exit 143, one line, nothing left (an interrupt unwound
    # through an exporter once crashed the process, SIGSEGV; OpenVINO once turned it into an artefact failure)
    onnx_written = ".conv.staging-*/model.fp32.onnx"
    for moment, sig in ((".conv.staging-*", signal.SIGTERM), (onnx_written, signal.SIGTERM), (onnx_written, signal.SIGINT)):
        # Ctrl-C as a terminal delivers it: a suite started in the background by a non-interactive shell (bash
        # without job control) inherits SIGINT ignored, and the CLI rightly leaves an ignored SIGINT ignored
        process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                   preexec_fn=_sigint_default)
        deadline = time.monotonic() + 180
        while not list(tmp_path.glob(moment)) and time.monotonic() < deadline and process.poll() is None:
            time.sleep(0.02)
        assert list(tmp_path.glob(moment)), f"the conversion never reached {moment}"
        process.send_signal(sig)
        _, stderr = process.communicate(timeout=120)
        assert process.returncode == 128 + sig, (moment, sig, process.returncode, stderr[-3000:])
        what = "terminated (SIGTERM)" if sig == signal.SIGTERM else "interrupted"
        assert stderr.strip().splitlines()[-1] == f"Error: {what}; nothing half-written was left behind"
        assert "Traceback" not in stderr and not list(tmp_path.glob(".conv.*")) and not out.exists()
    # a staging folder left by a process that no longer exists (SIGKILL) is removed by the next conversion
    stale = tmp_path / ".conv.staging-999999-abcd"
    (stale / ".work").mkdir(parents=True)
    old_umask = os.umask(0o022)
    try:
        done = subprocess.run([*command[:6], "--data-cropped", "--formats", "onnx", "--verify-cpus", "none",
                               "--no-guard", "--quiet"], capture_output=True, text=True, timeout=600)
    finally:
        os.umask(old_umask)
    assert done.returncode == 0, done.stderr[-2000:]
    assert not stale.exists() and (out.stat().st_mode & 0o777) == 0o755  # the umask's mode, not mkdtemp's 0700
    assert (out / "conversion.log").is_file()


def test_sigterm_exits_143_even_when_a_cleanup_hangs():
    """A stack that does not unwind (a thread it waits for is stuck) still ends the process, 143, one line."""
    script = """
import sys, threading, time
from cellsdk.cli import process
process.UNWIND_SECONDS = 1.0
@process.friendly_errors
def command():
    try:
        print("ready", flush=True)
        time.sleep(60)
    finally:
        threading.Event().wait()  # a cleanup that never returns
command()
"""
    child = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert child.stdout.readline() == "ready\n"
    started = time.monotonic()
    child.send_signal(signal.SIGTERM)
    _, stderr = child.communicate(timeout=30)
    assert child.returncode == 143 and time.monotonic() - started < 20
    assert stderr.strip() == "Error: terminated (SIGTERM); nothing half-written was left behind"


def test_a_closed_pipe_ends_predict_quietly(tmp_path):
    images = Path(__file__).resolve().parents[2] / "samples" / "bloodmnist_128" / "test"
    done = subprocess.run(f"'{_bin('cellsdk')}' predict '{images}' | head -n 1", shell=True, capture_output=True,
                          text=True, timeout=300)
    assert done.stdout.count("\n") == 1 and "Broken pipe" not in done.stderr and "Traceback" not in done.stderr


def test_api_arguments_are_config_errors_not_metadata_errors(tmp_path):
    from cellsdk import Classifier
    from cellsdk.errors import ConfigError
    from cellsdk.evaluation import evaluate_model
    from tests.cli.bad_inputs import CELL, SAMPLES

    classifier = Classifier.load()
    calls = {
        "predict(top_k=0)": lambda: classifier.predict(CELL, top_k=0),
        "predict_batch(batch_size=0)": lambda: classifier.predict_batch([CELL], batch_size=0),
        "predict_proba(batch_size=-1)": lambda: classifier.predict_proba([CELL], batch_size=-1),
        "load(top_k=0)": lambda: Classifier.load(top_k=0),
        "load(threads='abc')": lambda: Classifier.load(threads="abc"),
        "load(threads=0)": lambda: Classifier.load(threads=0),
        "load(bogus=1)": lambda: Classifier.load(bogus=1),
        "evaluate_model(batch_size=0)": lambda: evaluate_model(classifier.path, SAMPLES, batch_size=0),
    }
    for name, call in calls.items():
        with pytest.raises(ConfigError):
            call()
            pytest.fail(f"{name} was accepted")
