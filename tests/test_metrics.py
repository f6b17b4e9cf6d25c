from __future__ import annotations

import numpy as np
import pytest

from cellsdk.metrics import classification_report, confusion_matrix, expected_calibration_error, softmax


def test_hand_computed_report():
    # true:   0 0 0 1 1 2 ;  predicted: 0 0 1 1 2 2
    y_true = np.array([0, 0, 0, 1, 1, 2])
    predicted = np.array([0, 0, 1, 1, 2, 2])
    probabilities = np.eye(3)[predicted] * 0.7 + 0.1
    report = classification_report(y_true, probabilities, ("a", "b", "c"))
    assert report["confusion_matrix"] == [[2, 1, 0], [0, 1, 1], [0, 0, 1]]
    assert report["accuracy"] == pytest.approx(4 / 6)
    per = report["per_class"]
    assert per["a"] == pytest.approx({"precision": 1.0, "recall": 2 / 3, "f1": 0.8, "support": 3})
    assert per["b"] == pytest.approx({"precision": 0.5, "recall": 0.5, "f1": 0.5, "support": 2})
    assert per["c"] == pytest.approx({"precision": 0.5, "recall": 1.0, "f1": 2 / 3, "support": 1})
    assert report["macro_f1"] == pytest.approx((0.8 + 0.5 + 2 / 3) / 3)
    assert report["macro_recall"] == pytest.approx((2 / 3 + 0.5 + 1.0) / 3)
    assert report["min_recall"] == pytest.approx(0.5)
    # every prediction has confidence 0.8; accuracy 4/6 -> ECE = |0.8 - 0.6667|
    assert report["ece"] == pytest.approx(abs(0.8 - 4 / 6))


def test_absent_class_is_left_out_of_macro_average():
    report = classification_report(np.array([0, 1]), np.array([[0.9, 0.05, 0.05], [0.1, 0.8, 0.1]]), "abc")
    assert report["macro_f1"] == 1.0
    assert report["per_class"]["c"]["support"] == 0


def test_ece_bins_hand_computed():
    probabilities = np.array([[0.95, 0.05], [0.95, 0.05], [0.55, 0.45], [0.55, 0.45]])
    y_true = np.array([0, 1, 0, 0])
    ece, bins = expected_calibration_error(probabilities, y_true, n_bins=10)
    # bin (0.9, 1.0]: conf 0.95, acc 0.5 ; bin (0.5, 0.6]: conf 0.55, acc 1.0
    assert ece == pytest.approx(0.5 * 0.45 + 0.5 * 0.45)
    assert sum(b["count"] for b in bins) == 4
    assert bins[9]["accuracy"] == 0.5 and bins[5]["confidence"] == pytest.approx(0.55)


def test_confusion_and_softmax():
    assert confusion_matrix(np.array([1, 1]), np.array([0, 1]), 2).tolist() == [[0, 0], [1, 1]]
    out = softmax(np.array([[1000.0, 1000.0, 0.0]]))
    assert out.sum() == pytest.approx(1.0) and out[0, 0] == pytest.approx(0.5)
