"""Labels where they help most: uncertain, diverse cells, every predicted class represented."""

from __future__ import annotations

import shutil

import numpy as np
import pytest

from cellsdk import Classifier
from cellsdk.errors import ConfigError
from cellsdk.suggest import image_files, rank_for_labelling, suggest_cells, uncertainty
from tests.conftest import RAW_SAMPLES


def clusters(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Three predicted classes; class 0 is large (90 cells in three tight sub-clusters), classes 1 and 2 small."""
    centres = [rng.normal(0, 10, 16) for _ in range(5)]
    features = np.concatenate([rng.normal(centres[i % 3], 0.1, (30, 16)) for i in range(3)]
                              + [rng.normal(centres[3], 0.1, (6, 16)), rng.normal(centres[4], 0.1, (4, 16))])
    probabilities = np.zeros((100, 3))
    probabilities[:90] = [0.98, 0.01, 0.01]
    probabilities[90:96] = [0.1, 0.8, 0.1]
    probabilities[96:] = [0.1, 0.1, 0.8]
    return features, probabilities


def test_every_predicted_class_gets_its_share_before_a_large_class_takes_more():
    features, probabilities = clusters(np.random.default_rng(0))
    picks = rank_for_labelling(features, probabilities, 9)
    predicted = probabilities[picks].argmax(axis=1)
    assert np.bincount(predicted, minlength=3).tolist() == [3, 3, 3]
    assert predicted[:3].tolist() == [0, 1, 2]  # interleaved: stopping early still covers every class
    assert len(set(picks)) == 9


def test_picks_spread_over_the_sub_clusters_of_a_class_instead_of_repeating_one():
    features, probabilities = clusters(np.random.default_rng(1))
    picks = [p for p in rank_for_labelling(features, probabilities, 9) if p < 90]
    assert sorted({p // 30 for p in picks}) == [0, 1, 2]  # one from each of class 0's three sub-clusters


def test_among_equally_distant_cells_the_uncertain_one_is_picked():
    features = np.array([[0.0, 0.0], [10.0, 0.0], [-10.0, 0.0]])
    probabilities = np.array([[0.9, 0.1], [0.99, 0.01], [0.55, 0.45]])
    assert rank_for_labelling(features, probabilities, 2)[1] == 2
    assert uncertainty(probabilities).argmax() == 2


def test_more_cells_asked_for_than_there_are_gives_every_eligible_one_and_bad_counts_are_refused():
    features, probabilities = clusters(np.random.default_rng(2))
    eligible = np.zeros(100, bool)
    eligible[[1, 50, 92, 97]] = True
    assert sorted(rank_for_labelling(features, probabilities, 10, eligible=eligible)) == [1, 50, 92, 97]
    with pytest.raises(ConfigError, match=">= 1"):
        rank_for_labelling(features, probabilities, 0)
    with pytest.raises(ConfigError, match="one row per cell"):
        rank_for_labelling(features[:5], probabilities, 3)


def test_suggest_cells_runs_a_deployed_model_over_a_folder_and_skips_what_it_cannot_read(tmp_path):
    pool = tmp_path / "pool"
    shutil.copytree(RAW_SAMPLES, pool)
    (pool / "broken.png").write_bytes(b"not a png")
    classifier = Classifier.load(self_check=False)
    picked = suggest_cells(classifier, pool, 8, exclude=[next(iter(sorted(pool.glob("ig/*"))))])
    assert picked.pool == 15 and len(picked.paths) == 8 and len(set(picked.paths)) == 8
    assert [p for p, _ in picked.skipped] == [pool / "broken.png"]
    assert len(set(picked.predicted)) >= 6  # the samples hold every class once or twice: nearly all covered
    assert picked.rows()[0]["rank"] == 1 and 0 <= picked.rows()[0]["uncertainty"] <= 1
    with pytest.raises(ConfigError, match="not a folder"):
        image_files(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ConfigError, match="no readable cell"):
        suggest_cells(classifier, tmp_path / "empty", 3)
