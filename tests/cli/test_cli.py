from __future__ import annotations

import json

from click.testing import CliRunner

from cellsdk.cli import bench_command, cli, convert_command, eval_command, train_command
from tests.conftest import SAMPLES, TINY_ARCH


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
    result = runner.invoke(cli, ["info", str(run / "best.safetensors"), "--json"])
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
        (convert_command, ["missing.safetensors", "--out", str(tmp_path / "c"), "--eval", str(SAMPLES)],
         "checkpoint not found"),
        (bench_command, [str(tmp_path / "none.onnx"), "--quiet"], "no such model file or folder"),
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


def test_predict_text_json_and_failures(artefacts, tmp_path):
    runner = CliRunner()
    model = str(artefacts["onnxruntime"])
    images = sorted(SAMPLES.glob("test/basophil/*.jpg"))[:2]
    result = runner.invoke(cli, ["predict", *map(str, images), "--model", model, "--top-k", "2"])
    assert result.exit_code == 0, result.output
    lines = result.stdout.strip().splitlines()
    assert len(lines) == 2 and lines[0].startswith(str(images[0])) and lines[0].count("%") == 2
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"nope")
    result = runner.invoke(cli, ["predict", str(images[0]), str(broken), str(images[1]), "--model", model, "--json"])
    assert result.exit_code == 1
    records = [json.loads(line) for line in result.stdout.strip().splitlines()]
    assert [("error" in r) for r in records] == [False, True, False]
    assert records[0]["label"] and 0 <= records[0]["confidence"] <= 1 and "broken.png" in records[1]["error"]
    assert "error: " in result.stderr
    folder = runner.invoke(cli, ["predict", str(SAMPLES / "test" / "ig"), "--model", model])
    assert folder.exit_code == 0 and len(folder.stdout.strip().splitlines()) == 4
    missing = runner.invoke(cli, ["predict", str(images[0]), "--model", str(tmp_path / "none.onnx")])
    assert missing.exit_code == 1 and "no such model" in missing.output and "Traceback" not in missing.output


def test_predict_collect_keeps_each_classified_cell_once_for_adapt(tmp_path):
    from tests.conftest import RAW_SAMPLES

    folder = RAW_SAMPLES / "lymphocyte"
    cells = sorted(folder.iterdir())
    (tmp_path / "broken.png").write_bytes(b"not a png")
    runner = CliRunner()
    for _ in range(2):  # the same cells asked about again are kept once
        result = runner.invoke(cli, ["predict", str(folder), str(tmp_path / "broken.png"), "--collect",
                                     str(tmp_path / "lab"), "--quiet"])
        assert result.exit_code == 1 and "broken.png" in result.output  # the bad file is reported, not kept
    kept = sorted(p.read_bytes() for p in (tmp_path / "lab" / "unlabelled").iterdir())
    assert kept == sorted(p.read_bytes() for p in cells)
    job = runner.invoke(cli, ["predict", str(RAW_SAMPLES / "ig"), "--out", str(tmp_path / "rows.csv"), "--collect",
                              str(tmp_path / "lab"), "--quiet"])
    assert job.exit_code == 0, job.output
    assert len(list((tmp_path / "lab" / "unlabelled").iterdir())) == len(cells) + len(list((RAW_SAMPLES / "ig").iterdir()))
    ray = runner.invoke(cli, ["predict", str(folder), "--engine", "ray", "--out", str(tmp_path / "x.parquet"),
                              "--collect", str(tmp_path / "lab")])
    assert ray.exit_code == 2 and "leave out --engine ray" in ray.output
