"""The verification gate's int8 agreement criteria and its honesty about small samples (converters/gate.py)."""

from __future__ import annotations

import numpy as np
import pytest

from cellsdk.converters.gate import VerifyConfig, judge, sample_warnings, wilson_interval
from cellsdk.metadata import ModelMetadata, Preprocessing

LABELS = tuple(f"c{i}" for i in range(8))
META = ModelMetadata(labels=LABELS, arch="x", preprocessing=Preprocessing(input_size=8))


def _near_chance(n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    return rng.normal(size=(n, 8)), rng.integers(0, 8, size=n)


def test_a_broken_int8_model_of_a_near_chance_reference_fails_on_agreement_and_cosine() -> None:
    """The blind spot of issue 16: accuracy cannot drop much from chance, so only agreement catches it."""
    reference, targets = _near_chance(400)
    rng = np.random.default_rng(1)
    broken = reference.copy()
    scrambled = rng.random(400) < 0.55  # about half the images get unrelated logits
    broken[scrambled] = rng.normal(size=(int(scrambled.sum()), 8))
    record = judge(broken, "int8", META, targets, reference, VerifyConfig(max_accuracy_drop=0.2, max_recall_drop=1))
    assert abs(record["accuracy_change"]) < 0.1  # the old criteria alone let it through
    assert record["top1_agreement"] < 0.6 and record["logit_cosine"] < 0.8
    assert any("top-1 agreement" in r and "int8 limit 98.0 %" in r for r in record["reasons"])
    assert any("logit cosine" in r for r in record["reasons"])
    lo, hi = record["agreement_interval"]
    assert lo < record["top1_agreement"] < hi


def test_a_good_int8_model_passes_and_small_samples_are_judged_by_their_interval() -> None:
    noise, targets = _near_chance(1712)
    reference = noise + 4 * np.eye(8)[targets]  # a confident, perfect reference
    good = reference + np.random.default_rng(2).normal(scale=0.05, size=reference.shape)
    record = judge(good, "int8", META, targets, reference, VerifyConfig())
    assert record["reasons"] == [] and record["top1_agreement"] > 0.99 and record["logit_cosine"] > 0.999
    # 31 of 32 agreeing is 96.9 %, but its 95 % interval (84-99 %) reaches the limit: not a failure ...
    few_ref, few_targets = reference[:32], targets[:32]
    one_off = few_ref.copy()
    one_off[0] = np.roll(one_off[0], 1)
    record = judge(one_off, "int8", META, few_targets, few_ref, VerifyConfig(max_accuracy_drop=1, max_recall_drop=1))
    assert record["top1_agreement"] == pytest.approx(31 / 32) and not any("agreement" in r for r in record["reasons"])
    # ... while fp32 keeps its plain 99.5 % agreement limit
    record = judge(one_off, "fp32", META, few_targets, few_ref, VerifyConfig(max_accuracy_drop=1, max_recall_drop=1))
    assert any("agreement" in r for r in record["reasons"])


def test_sample_warnings_say_when_the_gate_cannot_resolve_its_limits() -> None:
    targets = np.repeat(np.arange(8), 4)  # 32 images, 4 per class: one image is 25 recall points
    warnings = sample_warnings(targets, LABELS, VerifyConfig())
    assert len(warnings) == 2 and "25.0 points" in warnings[0] and "at least 50 images per class" in warnings[0]
    assert "32 evaluation images" in warnings[1]
    assert sample_warnings(np.repeat(np.arange(8), 214), LABELS, VerifyConfig()) == []  # 1,712 val images
    assert wilson_interval(0, 0) == (0.0, 1.0)
    lo, hi = wilson_interval(1705, 1712)
    assert 0.99 < lo < 1705 / 1712 < hi < 1


def test_thresholds_are_checked_and_recorded() -> None:
    from cellsdk.errors import ConfigError

    with pytest.raises(ConfigError, match="min_quantized_agreement"):
        VerifyConfig(min_quantized_agreement=1.5)
    with pytest.raises(ConfigError, match="min_logit_cosine"):
        VerifyConfig(min_logit_cosine=2)
    assert VerifyConfig().to_dict()["min_quantized_agreement"] == 0.98
