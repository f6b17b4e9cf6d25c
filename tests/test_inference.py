"""The one inference path (cellsdk.inference): what the facade, explanations, the engine and the service share."""

from __future__ import annotations

import numpy as np
import pytest

from cellsdk import Classifier, InvalidImageError, MetadataError
from cellsdk.inference import IDENTITY, Inference, PreparedImage
from cellsdk.tta import tta_views
from tests.conftest import RAW_SAMPLES

IMAGES = sorted(RAW_SAMPLES.glob("*/*.jpg"))[:4]


@pytest.fixture(scope="module")
def shipped():
    return Classifier.load(self_check=False)


def test_prepare_gives_the_model_input_and_the_input_check_statistics(shipped):
    prepared = shipped.inference.prepare(IMAGES[0])
    assert isinstance(prepared, PreparedImage)
    assert prepared.array.shape == (3, 128, 128) and prepared.array.dtype == np.float32
    assert prepared.stats is not None and "sharpness" in prepared.stats  # the shipped guard checks its inputs


def test_run_is_what_every_predict_method_returns(shipped):
    inference = shipped.inference
    result = inference.run([inference.prepare(image) for image in IMAGES], top_k=2)
    assert [p.label for p in result.predictions] == [shipped.predict(image).label for image in IMAGES]
    assert [p.top_k for p in result.predictions] == [shipped.predict(image, top_k=2).top_k for image in IMAGES]
    assert result.outputs["logits"].shape == (len(IMAGES), len(shipped.labels))
    assert {"features", "cams"} <= set(result.outputs)


def test_views_are_expanded_into_one_call_and_merged_back(shipped):
    inference = shipped.inference
    prepared = [inference.prepare(image) for image in IMAGES[:2]]
    plain = inference.run(prepared, views=IDENTITY)
    augmented = inference.run(prepared, views=tta_views("dihedral"))
    assert augmented.outputs["logits"].shape[0] == 16  # 8 views of 2 images, one call
    assert len(augmented.predictions) == 2
    for p, q, image in zip(plain.predictions, augmented.predictions, IMAGES, strict=False):
        assert q.ood_score == pytest.approx(p.ood_score)  # the guard scores each image as it is
        assert q.probabilities == pytest.approx(shipped.predict(image, tta="dihedral").probabilities)


def test_reject_withholds_the_label_of_an_image_the_guard_flags(shipped):
    strict = Inference(shipped.backend, shipped.metadata, path=shipped.path,
                       guard=shipped.guard.with_thresholds(threshold=-1e9), ood="reject")
    prediction = strict.run([strict.prepare(IMAGES[0])]).predictions[0]
    assert prediction.status == "out_of_distribution" and prediction.label is None and prediction.top_k == ()


def test_an_unusable_image_and_a_wrong_model_say_so(shipped, tmp_path):
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"not an image")
    with pytest.raises(InvalidImageError):
        shipped.inference.prepare(broken)
    fewer = Inference(shipped.backend, shipped.metadata.replace(labels=("a", "b")), path=shipped.path)
    with pytest.raises(MetadataError, match="expected"):
        fewer.run_outputs(np.zeros((1, 3, 128, 128), np.float32))
