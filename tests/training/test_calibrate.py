"""Temperature scaling: fitted on held-out data, folded into the weights, predictions unchanged."""

from __future__ import annotations

import numpy as np
import pytest

from cellsdk.errors import CheckpointError, ConfigError
from cellsdk.metrics import fit_temperature, nll, softmax
from tests.conftest import SAMPLES


def test_fit_temperature_recovers_a_known_scale():
    rng = np.random.default_rng(3)
    logits = rng.normal(size=(5000, 4)) * 2.0
    y = np.array([rng.choice(4, p=p) for p in softmax(logits)])
    for scale in (0.5, 1.0, 4.0):
        assert fit_temperature(logits * scale, y) == pytest.approx(scale, rel=0.1)
    best = fit_temperature(logits * 4.0, y)
    assert nll(logits * 4.0, y, best) <= min(nll(logits * 4.0, y, t) for t in (1.0, 3.5, 4.5)) + 1e-9


def test_fold_temperature_divides_the_logits(tiny_run):
    import torch

    from cellsdk.training import load_checkpoint
    from cellsdk.training.calibrate import fold_temperature

    model, _ = load_checkpoint(tiny_run.best_checkpoint)
    x = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        before = model(x)
        fold_temperature(model, 2.5)
        after = model(x)
    torch.testing.assert_close(after, before / 2.5, rtol=1e-4, atol=1e-5)
    with pytest.raises(ConfigError):
        fold_temperature(model, 0.0)
    with pytest.raises(CheckpointError, match="Linear"):
        fold_temperature(torch.nn.Sequential(torch.nn.ReLU()), 2.0)


def test_calibrated_checkpoint_keeps_predictions_and_records_the_fit(tiny_run, tmp_path):
    from cellsdk.artefacts.checkpoints import read_checkpoint_metadata
    from cellsdk.training import evaluate
    from cellsdk.training.calibrate import calibrate_checkpoint

    out = tmp_path / "calibrated.safetensors"
    result = calibrate_checkpoint(tiny_run.best_checkpoint, SAMPLES, out=out, data_cropped=True, progress=False)
    assert result["temperature"] > 0 and result["n"] == 32 and result["split"] == "val"
    assert result["after"]["nll"] <= result["before"]["nll"] + 1e-9
    assert result["after"]["accuracy"] == result["before"]["accuracy"]
    meta = read_checkpoint_metadata(out)
    record = meta.training["temperature_scaling"]
    assert record["temperature"] == pytest.approx(result["temperature"])
    assert meta.reference_metrics["val_ece"] == pytest.approx(result["after"]["ece"])
    old = evaluate(tiny_run.best_checkpoint, SAMPLES, split="val", data_cropped=True, progress=False)
    new = evaluate(out, SAMPLES, split="val", data_cropped=True, progress=False)
    assert new["confusion_matrix"] == old["confusion_matrix"]
    assert new["ece"] == pytest.approx(result["after"]["ece"], abs=1e-4)
    with pytest.raises(CheckpointError, match="already calibrated"):
        calibrate_checkpoint(out, SAMPLES, out=tmp_path / "twice.safetensors", data_cropped=True, progress=False)


def test_calibration_refuses_the_test_split_and_overwriting(tiny_run, tmp_path):
    from cellsdk.training.calibrate import calibrate_checkpoint

    with pytest.raises(ConfigError, match="test split"):
        calibrate_checkpoint(tiny_run.best_checkpoint, SAMPLES, split="test", out=tmp_path / "x.safetensors")
    with pytest.raises(ConfigError, match="checkpoint itself"):
        calibrate_checkpoint(tiny_run.best_checkpoint, SAMPLES, out=tiny_run.best_checkpoint)


def test_cli_calibrate(tiny_run, tmp_path):
    from click.testing import CliRunner

    from cellsdk.cli import cli

    out = tmp_path / "c.safetensors"
    result = CliRunner().invoke(cli, ["calibrate", str(tiny_run.best_checkpoint), "--data", str(SAMPLES),
                                      "--data-cropped", "--out", str(out), "--quiet"])
    assert result.exit_code == 0, result.output
    assert "temperature" in result.output and "after:  ECE" in result.output and out.exists()
