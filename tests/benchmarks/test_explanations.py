"""The explanation sanity measurement (benchmarks/studies/explanations.py) on the shipped samples, and its nucleus mask."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image, ImageDraw

from tests.conftest import REPO, SAMPLES

pytest.importorskip("pytorch_grad_cam", reason="Grad-CAM needs the grad-cam package (cellsdk[explain])")
pytest.importorskip("scipy", reason="the nucleus mask needs scipy")

from cellsdk.benchmarks.studies.explanations import ExplainBenchConfig, format_explain, nucleus_mask, run_explain

CHECKPOINT = REPO / "models" / "bloodmnist_effnet_lite0_128.safetensors"


def test_the_nucleus_mask_is_the_dark_violet_blob_nearest_the_centre() -> None:
    image = Image.new("RGB", (128, 128), (235, 215, 205))  # pale background
    draw = ImageDraw.Draw(image)
    draw.ellipse((40, 40, 88, 88), fill=(215, 170, 190))  # pink cytoplasm
    draw.ellipse((52, 50, 80, 78), fill=(90, 40, 140))  # the centred cell's nucleus
    draw.ellipse((2, 2, 22, 22), fill=(85, 35, 135))  # a nucleus at the edge
    mask = nucleus_mask(np.asarray(image), dilate=0)
    assert mask[64, 66] and not mask[12, 12] and not mask[44, 64]
    assert 0.03 < mask.mean() < 0.06


def test_the_sanity_report_on_the_samples(tmp_path) -> None:
    if not CHECKPOINT.is_file():
        pytest.skip(f"{CHECKPOINT} is not in this checkout")
    from cellsdk.classifier import default_model_path

    shipped = str(default_model_path())
    report = run_explain(ExplainBenchConfig(crops=str(SAMPLES), checkpoint=str(CHECKPOINT), fp32=shipped,
                                            images=16, latency_images=3, rounds=1))
    assert report["images"] == 16 and report["int8_vs_fp32"]["grid"] == [4, 4]
    assert report["int8_vs_fp32"]["spearman"]["mean"] == pytest.approx(1.0)  # the same file on both sides
    assert report["grad_cam_spearman"]["mean"] > 0.9  # int8 CAM against fp32 Grad-CAM: the same map up to scale
    assert 0 <= report["pointing_game"]["runtime map"] <= 1
    deletion = report["deletion"]
    assert all(0 <= deletion[k]["map"] <= 1 and 0 <= deletion[k]["random"] <= 1 for k in ("5%", "10%", "20%", "40%"))
    assert report["cost_batch1"]["calls_each"] == 3
    text = format_explain(report)
    assert "Grad-CAM" in text and "pointing game" in text and "| 40% |" in text
