"""The pipelined local engine: order, errors, bounded memory, and the same answers as one image at a time."""

from __future__ import annotations

import itertools
import random
import threading
import time

import numpy as np
import pytest

from cellsdk import Classifier
from cellsdk.batch.engine import run_pipeline
from cellsdk.errors import ConfigError, InvalidImageError
from tests.conftest import RAW_SAMPLES, SAMPLES


def _slow_prepare(value: int) -> int:
    time.sleep(random.random() * 0.003)  # workers finish out of order
    if value % 7 == 3:
        raise InvalidImageError(f"item{value}: not an image")
    return value * 2


@pytest.mark.parametrize("workers", [1, 3])
@pytest.mark.parametrize("batch_size", [1, 4, 64])
def test_results_come_in_input_order_and_bad_inputs_keep_their_place(workers, batch_size):
    items = list(run_pipeline(range(40), prepare=_slow_prepare, infer=lambda batch: [v + 1 for v in batch],
                              batch_size=batch_size, workers=workers, errors="skip",
                              describe=lambda i, v: f"item{v}"))
    assert [item.index for item in items] == list(range(40))
    for item in items:
        if item.index % 7 == 3:
            assert not item.ok and str(item.error) == f"item{item.index}: not an image"
        else:
            assert item.ok and item.value == item.index * 2 + 1


def test_the_first_bad_input_raises_naming_it():
    with pytest.raises(InvalidImageError, match="input 3: item3: not an image"):
        list(run_pipeline(range(10), prepare=_slow_prepare, infer=lambda batch: batch, batch_size=2))


def test_memory_is_bounded_and_sources_are_read_lazily():
    pulled = 0
    held = 0
    most_held = 0
    lock = threading.Lock()

    def source():
        nonlocal pulled
        for i in itertools.count():  # endless: only a bounded window may ever be pulled ahead
            pulled += 1
            yield i

    def prepare(value):
        nonlocal held, most_held
        with lock:
            held += 1
            most_held = max(most_held, held)
        return value

    def infer(batch):
        nonlocal held
        with lock:
            held -= len(batch)
        return batch

    results = run_pipeline(source(), prepare=prepare, infer=infer, batch_size=8, workers=4, prefetch=2)
    first = [item.value for item in itertools.islice(results, 100)]
    assert first == list(range(100))
    # in flight at most: the prefetch window (8 x 3) plus the batch being assembled (8)
    assert pulled <= 100 + 8 * 4 and most_held <= 8 * 4


def test_an_error_does_not_wait_for_a_stuck_decoder_and_cancels_the_rest():
    release = threading.Event()
    started: list[int] = []

    def prepare(value):
        started.append(value)
        if value == 1:
            release.wait(30)  # a decoder that hangs
        return value

    def infer(batch):
        raise RuntimeError("the runtime failed")

    begun = time.monotonic()
    with pytest.raises(RuntimeError, match="the runtime failed"):
        list(run_pipeline(range(1000), prepare=prepare, infer=infer, batch_size=1, workers=2, prefetch=8))
    assert time.monotonic() - begun < 10  # not the stuck decoder's 30 s
    release.set()
    assert len(started) < 20  # the queued inputs were cancelled, not decoded after the error


@pytest.mark.parametrize("options", [{"batch_size": 0}, {"workers": 0}, {"prefetch": -1}, {"errors": "ignore"}])
def test_bad_engine_options_are_config_errors(options):
    with pytest.raises(ConfigError):
        list(run_pipeline([1], prepare=lambda v: v, infer=lambda b: b, **options))


def test_classifier_batches_give_exactly_the_single_image_answers(tmp_path):
    classifier = Classifier.load()
    paths = sorted(RAW_SAMPLES.rglob("*.jpg")) + sorted(SAMPLES.glob("test/*/*.jpg"))[:8]
    single = [classifier.predict(p) for p in paths]
    for workers in (1, 4):
        batched = classifier.predict_batch(paths, batch_size=5, workers=workers)
        assert [b.probabilities for b in batched] == [s.probabilities for s in single]
        assert [(b.status, b.reasons) for b in batched] == [(s.status, s.reasons) for s in single]
        # the guard's score is a matrix product: batched and single BLAS calls round differently (~1e-13)
        assert np.allclose([b.ood_score for b in batched], [s.ood_score for s in single], rtol=1e-9, atol=0)
    proba = classifier.predict_proba(paths, batch_size=3)
    assert np.array_equal(proba, np.asarray([[s.probabilities[label] for label in classifier.labels] for s in single]))
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"not a jpeg")
    mixed = classifier.predict_batch([paths[0], broken, paths[1]], errors="skip")
    assert mixed[1] is None and mixed[0].probabilities == single[0].probabilities
    with pytest.raises(InvalidImageError, match=r"broken\.jpg"):
        classifier.predict_batch([paths[0], broken, paths[1]])
    items = list(classifier.predict_iter([paths[0], broken], errors="skip"))
    assert items[0].ok and not items[1].ok and "broken.jpg" in str(items[1].error)
