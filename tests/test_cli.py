from __future__ import annotations

import json

from click.testing import CliRunner

from cellsdk.cli import bench_command, cli, convert_command, eval_command, train_command

from .conftest import SAMPLES, TINY_ARCH


def test_train_then_eval_then_info(tmp_path):
    runner = CliRunner()
    run = tmp_path / "run"
    result = runner.invoke(train_command, [
        str(SAMPLES), "--out", str(run), "--arch", TINY_ARCH, "--pretrained", "none", "--epochs", "1",
        "--input-size", "24", "--batch-size", "16", "--max-steps", "2", "--crop", "200px", "--data-cropped",
        "--quiet",
    ])
    assert result.exit_code == 0, result.output
    assert "best epoch 1" in result.output and (run / "best.safetensors").is_file()
    result = runner.invoke(eval_command, [str(run / "best.safetensors"), "--data", str(SAMPLES), "--split", "val",
                                          "--data-cropped", "--out", str(tmp_path / "eval"), "--quiet"])
    assert result.exit_code == 0, result.output
    assert "val split, 32 images" in result.output and "confusion_matrix.png" in result.output
    result = runner.invoke(cli, ["info", str(run / "best.safetensors")])
    assert result.exit_code == 0 and json.loads(result.output)["arch"] == TINY_ARCH
    result = runner.invoke(train_command, [str(SAMPLES), "--out", str(run), "--resume", "--quiet"])
    assert result.exit_code == 1 and "already has 1 epochs" in result.output
    result = runner.invoke(train_command, [str(SAMPLES), "--out", str(run), "--resume", "--epochs", "2", "--quiet"])
    assert result.exit_code == 0, result.output
    assert json.loads((run / "history.json").read_text())[-1]["epoch"] == 2


def test_errors_are_one_line(tmp_path):
    runner = CliRunner()
    cases = [
        (train_command, [str(tmp_path / "nothing"), "--out", str(tmp_path / "r")], "no such file or folder"),
        (train_command, [str(SAMPLES), "--out", str(tmp_path / "r"), "--crop", "big"], "crop 'big' not understood"),
        (train_command, [str(SAMPLES), "--out", str(tmp_path / "r"), "--arch", "nope_net", "--quiet"],
         "unknown architecture"),
        (eval_command, [str(tmp_path / "x.safetensors"), "--data", str(SAMPLES)], "checkpoint not found"),
        (convert_command, ["anything"], "not yet available"),
        (bench_command, [], "not yet available"),
    ]
    for command, args, message in cases:
        result = runner.invoke(command, args)
        assert result.exit_code == 1, (args, result.output)
        assert message in result.output
        assert "Traceback" not in result.output
        assert len(result.output.strip().splitlines()) == 1, result.output


def test_group_lists_every_command():
    result = CliRunner().invoke(cli, ["--help"])
    for name in ("train", "eval", "info", "convert", "bench"):
        assert name in result.output
