"""Test-time augmentation: the eight dihedral views, their mean, and the facade's ``tta`` option."""

from __future__ import annotations

import numpy as np
import pytest

from cellsdk import Classifier
from cellsdk.errors import ConfigError
from cellsdk.metrics import softmax
from cellsdk.preprocessing import preprocess
from cellsdk.tta import expand, first_view, merge, views
from tests.conftest import RAW_SAMPLES

IMAGES = sorted(RAW_SAMPLES.glob("*/*.jpg"))[::3]


@pytest.fixture(scope="module")
def classifier() -> Classifier:
    return Classifier.load()


def test_the_eight_views_are_the_dihedral_group_identity_first() -> None:
    image = np.arange(3 * 5 * 5, dtype=np.float32).reshape(1, 3, 5, 5)  # no symmetry: 8 different views
    views_ = expand(image, "dihedral")
    assert views_.shape == (8, 3, 5, 5) and views_.flags["C_CONTIGUOUS"]
    assert np.array_equal(views_[0], image[0])
    assert len({v.tobytes() for v in views_}) == 8
    expected = [np.rot90(image[0], k, axes=(1, 2)) for k in range(4)]
    expected += [np.rot90(image[0][..., ::-1], k, axes=(1, 2)) for k in range(4)]
    for got, want in zip(views_, expected, strict=True):
        assert np.array_equal(got, want)
    # the group is closed: every view of a view is one of the eight
    for view in views_:
        assert {v.tobytes() for v in expand(view[None], "dihedral")} == {v.tobytes() for v in views_}


def test_views_stay_with_their_image_and_merge_back() -> None:
    batch = np.random.default_rng(0).normal(size=(3, 3, 4, 4)).astype(np.float32)
    expanded = expand(batch, "dihedral")
    assert np.array_equal(first_view(expanded, "dihedral"), batch)
    values = np.repeat(np.arange(3.0)[:, None], 8, axis=0)  # image i's 8 views all carry i
    assert merge(values, "dihedral").ravel().tolist() == [0.0, 1.0, 2.0]
    assert expand(batch, "none") is batch and views("none") == 1


def test_tta_is_the_mean_of_the_eight_transformed_predictions(classifier: Classifier) -> None:
    spec = classifier.metadata.preprocessing
    for path in IMAGES:
        array = preprocess(path, spec)
        by_hand = np.mean([softmax(classifier.raw_outputs(view[None]).astype(np.float64))[0]
                           for view in expand(array[None], "dihedral")], axis=0)
        got = classifier.predict(path, tta="dihedral")
        assert list(got.probabilities.values()) == pytest.approx(by_hand.tolist(), abs=1e-9)
        assert got.label == classifier.labels[int(np.argmax(by_hand))]
        assert classifier.predict_proba(path, tta="dihedral") == pytest.approx(by_hand, abs=1e-9)


def test_the_classifier_default_and_every_predict_method_agree(classifier: Classifier) -> None:
    with_tta = Classifier.load(tta="dihedral")
    one_by_one = [with_tta.predict(p) for p in IMAGES]
    batched = with_tta.predict_batch(IMAGES, batch_size=2)
    per_call = classifier.predict_batch(IMAGES, tta="dihedral")
    for a, b, c in zip(one_by_one, batched, per_call, strict=True):
        assert a.label == b.label == c.label
        assert list(a.probabilities.values()) == pytest.approx(list(b.probabilities.values()), abs=1e-9)
        assert a.status == b.status == c.status and a.ood_score == pytest.approx(b.ood_score)
    plain = classifier.predict(IMAGES[0])
    assert with_tta.predict(IMAGES[0], tta="none").probabilities == plain.probabilities
    assert with_tta.predict(IMAGES[0]).ood_score == pytest.approx(plain.ood_score)  # the guard scores the image as is
    assert with_tta.with_preprocessing(with_tta.metadata.preprocessing).tta == "dihedral"
    probabilities = with_tta.predict_proba(IMAGES)
    assert probabilities.shape == (len(IMAGES), len(classifier.labels))
    assert np.allclose(probabilities.sum(axis=1), 1.0)


@pytest.mark.parametrize("call", ["load", "predict", "batch"])
def test_an_unknown_mode_is_one_line(classifier: Classifier, call: str) -> None:
    with pytest.raises(ConfigError, match="tta='flips': use one of none, dihedral"):
        if call == "load":
            Classifier.load(tta="flips")
        elif call == "predict":
            classifier.predict(IMAGES[0], tta="flips")
        else:
            classifier.predict_batch(IMAGES, tta="flips")
