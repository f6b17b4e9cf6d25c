"""The TTA measurement (benchmarks/studies/tta.py) runs on the shipped samples and reports both modes."""

from __future__ import annotations

import shutil

import pytest

from cellsdk.benchmarks.studies.tta import TtaConfig, format_tta, run_tta
from cellsdk.errors import ConfigError
from tests.conftest import RAW_SAMPLES, SAMPLES


def test_tta_report_on_the_samples(tmp_path) -> None:
    originals = tmp_path / "originals"
    rows = ["path,class,bloodmnist_split"]
    for path in sorted(RAW_SAMPLES.glob("*/*.jpg"))[::2]:
        (originals / path.parent.name).mkdir(parents=True, exist_ok=True)
        shutil.copy(path, originals / path.parent.name / path.name)
        rows.append(f"{path.parent.name}/{path.name},{path.parent.name},test")
    (originals / "labels.csv").write_text("\n".join(rows) + "\n")
    report = run_tta(TtaConfig(crops=str(SAMPLES), originals=str(originals), latency_images=3, rounds=1))
    for name in ("crops", "originals"):
        result = report["sets"][name]
        assert result["images"] > 0 and result["throughput_ratio"] > 0
        for mode in ("none", "dihedral"):
            assert 0 <= result[mode]["accuracy"] <= 1 and 0 <= result[mode]["ece"] <= 1
    assert report["sets"]["originals"]["images"] == 8
    assert report["latency_batch1_ms"]["calls_each"] == 3
    assert "| crops:" in format_tta(report)
    with pytest.raises(ConfigError, match=r"no labels\.csv"):
        run_tta(TtaConfig(originals=str(RAW_SAMPLES)))
