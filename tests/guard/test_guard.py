"""The OOD guard: scores, input checks, metadata, every format's artefact, the Classifier, the CLI and evaluation."""

from __future__ import annotations

import json
import logging

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from cellsdk import Classifier
from cellsdk.backends import backend_for_path
from cellsdk.cli import cli
from cellsdk.converters.guard import GuardConfig, GuardProbe, check_guard
from cellsdk.converters.shifts import SHIFTS, apply_shift
from cellsdk.errors import ConfigError, MetadataError
from cellsdk.guard import Guard
from cellsdk.guard.input_checks import InputChecks, measure
from cellsdk.guard.scores import SCORES, fit_score, score_from_dict
from cellsdk.metadata import ModelMetadata, Preprocessing
from cellsdk.metrics import auroc, fpr_at_tpr, risk_coverage
from tests.conftest import RAW_SAMPLES, SAMPLES

RAW = sorted(p for p in RAW_SAMPLES.rglob("*.jpg"))


def _gaussian(seed: int = 0):
    rng = np.random.default_rng(seed)
    centres = rng.normal(scale=3.0, size=(3, 24))
    labels = np.repeat(np.arange(3), 200)
    features = centres[labels] + rng.normal(size=(600, 24))
    logits = features[:, :3] * 2
    return features, labels, logits


# ------------------------------------------------------------------ scores and metrics


@pytest.mark.parametrize("name", list(SCORES))
def test_every_score_round_trips_through_its_record(name):
    features, labels, logits = _gaussian()
    score = fit_score(name, features, labels, dims=8)
    record = json.loads(json.dumps(score.to_dict()))  # as it travels in the metadata
    back = score_from_dict(record)
    np.testing.assert_allclose(back.score(logits[:20], features[:20]), score.score(logits[:20], features[:20]),
                               rtol=2e-3, atol=5e-3 if name == "knn" else 1e-6)  # float16 directions / bank


@pytest.mark.parametrize("name", [n for n, cls in SCORES.items() if cls.needs_features])
def test_feature_scores_rank_far_features_above_training_ones(name):
    features, labels, logits = _gaussian()
    score = fit_score(name, features[::2], labels[::2], dims=8)
    inliers = score.score(logits[1::2], features[1::2])
    outliers = score.score(logits[1::2], features[1::2] + np.random.default_rng(1).normal(scale=4, size=(300, 24)))
    assert auroc(inliers, outliers) > 0.95


def test_mahalanobis_with_all_directions_is_the_full_tied_covariance_distance():
    features, labels, _ = _gaussian()
    score = fit_score("mahalanobis", features, labels, dims=24)
    means = np.stack([features[labels == c].mean(0) for c in range(3)])
    residual = features - means[labels]
    precision = np.linalg.inv(residual.T @ residual / len(features))
    query = features[:5] + 0.5
    expected = np.min([np.einsum("nd,de,ne->n", query - m, precision, query - m) for m in means], axis=0)
    np.testing.assert_allclose(score.score(np.zeros((5, 3)), query), expected, rtol=1e-6)


def test_unknown_or_malformed_scores_are_metadata_errors():
    with pytest.raises(MetadataError, match="unknown OOD score"):
        score_from_dict({"name": "bogus"})
    record = fit_score("mahalanobis", *_gaussian()[:2], dims=4).to_dict()
    record["directions"]["base64"] = "not base64!"
    with pytest.raises(MetadataError, match="malformed"):
        score_from_dict(record)


def test_auroc_fpr_and_risk_coverage_match_brute_force():
    rng = np.random.default_rng(0)
    inliers, outliers = rng.normal(size=50).round(1), rng.normal(1, size=40).round(1)
    pairs = (outliers[:, None] > inliers[None]).mean() + 0.5 * (outliers[:, None] == inliers[None]).mean()
    assert auroc(inliers, outliers) == pytest.approx(pairs)
    assert fpr_at_tpr(inliers, outliers) == pytest.approx((outliers <= np.quantile(inliers, 0.95)).mean())
    curve = risk_coverage(np.array([1, 1, 0, 1]), np.array([0.9, 0.8, 0.7, 0.6]))
    assert curve["accuracy"].tolist() == [1.0, 1.0, 2 / 3, 0.75]


# ------------------------------------------------------------------ input checks


def test_sampled_statistics_agree_with_every_pixel_and_give_the_same_verdicts():
    """measure() estimates the shares, means and centroid on every other pixel; focus, size and levels on all."""
    from cellsdk.preprocessing import load_image, prepare_image

    shipped = Classifier.load(self_check=False)
    checks, spec = shipped.guard.input_checks, shipped.metadata.preprocessing
    images = [load_image(p) for p in RAW] + [load_image(p) for p in sorted((SAMPLES / "test").rglob("*.jpg"))[:16]]
    for image in images:
        pixels = np.asarray(prepare_image(image, spec if image.width > 128 else spec.without_crop()))
        sampled, exact = measure(pixels), measure(pixels, every_pixel=True)
        assert set(sampled) == set(exact)
        for name in ("sharpness", "object_size", "brightness"):
            assert sampled[name] == exact[name]
        for name, (low, high) in checks.ranges.items():
            if np.isfinite(exact[name]):
                assert abs(sampled[name] - exact[name]) <= 0.06 * (high - low), name
        assert checks.reasons(sampled) == checks.reasons(exact)
    small = np.full((40, 40, 3), 200, np.uint8)  # below 64 px every pixel is measured
    assert json.dumps(measure(small)) == json.dumps(measure(small, every_pixel=True))



def test_input_checks_pass_training_like_images_and_name_each_shift():
    from cellsdk.preprocessing import load_image, prepare_image

    spec = Preprocessing(input_size=128, crop_mode="pixels", crop_value=200)
    stats = [measure(np.asarray(prepare_image(load_image(p), spec))) for p in RAW]
    checks = InputChecks.fit(stats, quantile=0.0, margin=0.2)
    assert all(checks.reasons(s) == [] for s in stats)
    fired = {}
    for shift in ("blur", "overexposed", "hue_shift"):
        shifted = [measure(np.asarray(prepare_image(apply_shift(shift, load_image(p)), spec))) for p in RAW]
        fired[shift] = " ".join(r for s in shifted for r in checks.reasons(s))
    assert "focus:" in fired["blur"] and "exposure:" in fired["overexposed"] and "stain:" in fired["hue_shift"]
    back = InputChecks.from_dict(json.loads(json.dumps(checks.to_dict())))
    assert back.ranges == checks.ranges
    with pytest.raises(MetadataError):
        InputChecks.from_dict({"ranges": {"brightness": "x"}})


def test_shifts_are_deterministic_images():
    image = Image.open(RAW[0]).convert("RGB")
    for name in SHIFTS:
        a, b = apply_shift(name, image), apply_shift(name, image)
        assert a.mode == "RGB" and np.array_equal(np.asarray(a), np.asarray(b)), name
    with pytest.raises(KeyError, match="unknown shift"):
        apply_shift("bogus", image)


# ------------------------------------------------------------------ guard and metadata


def _guard_record(**changes):
    features, labels, _ = _gaussian()
    record = {"score": fit_score("mahalanobis", features, labels, dims=4).to_dict(), "threshold": 50.0,
              "retention": 0.95, "confidence_threshold": 0.6}
    return {**record, **changes}


def test_guard_statuses_follow_the_thresholds():
    features, _, _ = _gaussian()
    guard = Guard.from_record(_guard_record())
    logits = np.array([[5.0, 0, 0], [0.2, 0.1, 0], [5.0, 0, 0]])
    feats = np.stack([features[0], features[0], features[0] + 40])
    verdicts = guard.assess(logits, feats, None)
    assert [v.status for v in verdicts] == ["ok", "uncertain", "out_of_distribution"]
    assert "above the threshold" in verdicts[2].reasons[0] and "confidence" in verdicts[1].reasons[0]
    assert guard.with_thresholds(threshold=1e9).assess(logits[2:], feats[2:], None)[0].status == "ok"
    with pytest.raises(ConfigError):
        guard.with_thresholds(confidence_threshold=2.0)


def test_metadata_schema_3_round_trips_and_older_documents_load():
    meta = ModelMetadata(labels=("a", "b", "c"), arch="x", preprocessing=Preprocessing(16),
                         outputs=("logits", "features"), guard=_guard_record())
    back = ModelMetadata.from_json(meta.to_json())
    assert back == meta and Guard.from_metadata(back).threshold == 50.0
    old = json.loads(meta.to_json())
    for key in ("outputs", "guard"):
        old.pop(key)
    old["schema_version"] = 2
    legacy = ModelMetadata.from_dict(old)
    assert legacy.outputs == ("logits",) and legacy.guard is None and Guard.from_metadata(legacy) is None
    with pytest.raises(MetadataError, match="features"):
        meta.replace(outputs=("logits",))
    with pytest.raises(MetadataError, match="outputs"):
        meta.replace(outputs=("features", "logits"))
    with pytest.raises(MetadataError, match="guard"):
        meta.replace(guard={"threshold": 1})


def test_guard_config_refuses_bad_values():
    with pytest.raises(ConfigError, match="unknown OOD score"):
        GuardConfig(score="bogus")
    with pytest.raises(ConfigError, match="retention"):
        GuardConfig(retention=1.0)


# ------------------------------------------------------------------ converted artefacts


def _runnable(converted):
    out = []
    for entry in converted.manifest["artefacts"]:
        path = converted.out_dir / entry["file"]
        if entry["status"] != "skipped" and path.exists() and not backend_for_path(path).unavailable_reason():
            out.append(path)
    return out


def test_every_artefact_carries_the_guard_and_the_gate_checked_it(converted):
    guard = converted.manifest["metadata"]["guard"]
    assert guard["score"]["name"] in SCORES and "base64" not in json.dumps(guard)  # manifest: no arrays
    assert set(guard["validation"]["candidates"]) == set(SCORES)
    for entry in converted.manifest["artefacts"]:
        if entry["status"] == "skipped":
            continue
        from cellsdk.artefacts.info import read_metadata

        meta = read_metadata(converted.out_dir / entry["file"])  # CoreML's too, off macOS
        own = entry.get("guard_threshold")
        assert meta.outputs == ("logits", "features", "cams"), entry["file"]
        assert meta.guard["threshold"] == (own if own is not None else guard["threshold"]), entry["file"]
        if own is not None:  # re-set on the artefact's own scores: fp32's is kept beside it, with the reason
            assert meta.guard["fp32_threshold"] == guard["threshold"] and "re-set" in meta.guard["threshold_note"]
        if "verification" in entry and entry["verification"].get("top1_agreement") is not None:
            figures = entry["verification"]["guard"]
            assert figures["reference_mean_auroc"] == pytest.approx(guard["validation"]["mean_auroc"])
            assert 0 <= figures["eval_kept"] <= 1


def test_the_score_agrees_across_formats(converted):
    scores = {}
    for path in _runnable(converted):
        clf = Classifier.load(path, device="cpu")
        assert clf.guard is not None and clf.guard.score.name == converted.manifest["metadata"]["guard"]["score"]["name"]
        predictions = clf.predict_batch(RAW[:8])
        scores[path.name] = np.asarray([p.ood_score for p in predictions])
    reference = scores["model.fp32.onnx"]
    spread = np.ptp(reference) + 1e-9
    for name, values in scores.items():
        if ".fp" in name:  # int8 moves the features; the gate checks its score's AUROC instead
            assert np.abs(values - reference).max() <= 0.02 * spread + 1e-6, name
        else:
            assert np.isfinite(values).all(), name


def test_a_shifted_sample_is_flagged_and_the_in_distribution_samples_pass(converted):
    clf = Classifier.load(converted.out_dir / "model.fp32.onnx")
    tight = clf.guard.with_thresholds(threshold=clf.guard.threshold)
    val = sorted((SAMPLES / "val").rglob("*.jpg"))
    kept = [p.status != "out_of_distribution" for p in clf.with_preprocessing(
        clf.metadata.preprocessing.without_crop()).predict_batch(val)]
    assert np.mean(kept) >= 0.75  # the threshold keeps 95 % of these very images (32 of them)
    noise = [np.random.default_rng(i).integers(0, 256, (360, 363, 3), dtype=np.uint8) for i in range(4)]
    bright = [np.asarray(apply_shift("overexposed", Image.open(p).convert("RGB"))) for p in RAW[:4]]
    flagged = clf.predict_batch(noise + bright)
    assert all(p.status == "out_of_distribution" and p.reasons for p in flagged)
    assert tight.threshold == clf.guard.threshold


def test_ood_modes(converted):
    path = converted.out_dir / "model.fp32.onnx"
    noise = np.random.default_rng(0).integers(0, 256, (360, 363, 3), dtype=np.uint8)
    flagged = Classifier.load(path).predict(noise)
    rejected = Classifier.load(path, ood="reject").predict(noise)
    off = Classifier.load(path, ood="off").predict(noise)
    assert flagged.status == "out_of_distribution" and flagged.label is not None
    assert rejected.label is None and rejected.index is None and rejected.top_k == () and rejected.reasons
    assert off.status == "ok" and off.ood_score is None and off.label == flagged.label
    assert json.loads(json.dumps(rejected.to_dict()))["status"] == "out_of_distribution"
    with pytest.raises(ConfigError, match="ood="):
        Classifier.load(path, ood="maybe")


def test_models_without_a_guard_load_with_status_ok_and_one_note(artefacts, caplog):
    with caplog.at_level(logging.INFO, logger="cellsdk"):
        clf = Classifier.load(artefacts["onnxruntime"])
        Classifier.load(artefacts["onnxruntime"])
    assert clf.guard is None and clf.predict(RAW[0]).status == "ok"
    assert sum("carries no OOD guard" in r.getMessage() for r in caplog.records) <= 1


def test_the_gate_fails_an_artefact_whose_score_collapses(converted):
    clf = Classifier.load(converted.out_dir / "model.fp32.onnx")
    arrays = np.stack([clf.inference.prepare(p).array for p in RAW[:8]])
    outputs = clf.run_outputs(arrays)
    probe = GuardProbe({"_inliers": arrays, "same": arrays}, reference_auroc=0.99, retention=0.95)
    record, reasons = check_guard(clf, outputs, probe, GuardConfig())
    assert record["mean_auroc"] == pytest.approx(0.5) and any("AUROC fell" in r for r in reasons)


def test_an_artefact_whose_scores_shift_gets_its_own_threshold(converted):
    clf = Classifier.load(converted.out_dir / "model.fp32.onnx")
    arrays = np.stack([clf.inference.prepare(p).array for p in RAW])
    outputs = clf.run_outputs(arrays)
    own = clf.guard.scores(outputs["logits"], outputs["features"])
    clf.guard = clf.guard.with_thresholds(threshold=float(own.min()) - 1)  # as if int8 had shifted every score up
    probe = GuardProbe({"_inliers": arrays, "same": arrays}, reference_auroc=0.5, retention=0.95)
    record, reasons = check_guard(clf, outputs, probe, GuardConfig())
    assert not reasons and record["eval_kept"] == 0.0
    assert record["threshold"] == pytest.approx(np.quantile(own, 0.95)) and "re-set" in record["threshold_note"]


# ------------------------------------------------------------------ CLI and evaluation


def test_predict_prints_the_status_and_its_json_carries_the_fields(converted, tmp_path):
    bright = tmp_path / "bright.png"
    apply_shift("overexposed", Image.open(RAW[0]).convert("RGB")).save(bright)
    model = str(converted.out_dir / "model.fp32.onnx")
    result = CliRunner().invoke(cli, ["predict", "--model", model, str(bright), str(RAW[1])])
    assert result.exit_code == 0, result.output
    assert "OUT_OF_DISTRIBUTION" in result.stdout.splitlines()[0]
    result = CliRunner().invoke(cli, ["predict", "--model", model, "--json", "--ood", "reject", str(bright)])
    record = json.loads(result.stdout.strip().splitlines()[-1])
    assert record["status"] == "out_of_distribution" and record["label"] is None and record["reasons"]
    assert isinstance(record["ood_score"], float)


def test_eval_reports_ood_folders_and_the_risk_coverage_curve(converted, tmp_path):
    ood = tmp_path / "ood" / "blurred"
    ood.mkdir(parents=True)
    for p in RAW:
        apply_shift("blur", Image.open(p).convert("RGB")).save(ood / f"{p.stem}.png")
    result = CliRunner().invoke(cli, ["eval", str(converted.out_dir / "model.fp32.onnx"), "--data", str(RAW_SAMPLES),
                                      "--split", "all", "--ood", str(ood), "--out", str(tmp_path / "eval"), "--quiet"])
    assert result.exit_code == 0, result.output
    assert "risk-coverage" in result.output and "OOD folder" in result.output and "kept" in result.output
    report = json.loads((tmp_path / "eval" / "report.json").read_text())
    row = report["ood"][str(ood)]
    assert row["images"] == len(RAW) and 0 <= row["auroc"] <= 1 and 0 <= row["flagged"] <= 1
    assert report["guard"]["kept"] > 0 and report["risk_coverage"]["points"][-1]["coverage"] == 1.0
    assert (tmp_path / "eval" / "risk_coverage.png").is_file()
    bad = CliRunner().invoke(cli, ["eval", str(converted.out_dir / "model.fp32.onnx"), "--data", str(RAW_SAMPLES),
                                   "--split", "all", "--ood", str(tmp_path / "missing"), "--quiet"])
    assert bad.exit_code != 0 and "--ood" in bad.output and "Traceback" not in bad.output


def test_data_without_a_val_split_names_the_guard_and_the_way_out(tiny_run, tmp_path):
    import shutil

    from cellsdk.converters import ConvertConfig, convert
    from cellsdk.converters.targets import CpuTargets
    from cellsdk.errors import DatasetError

    data = tmp_path / "data"
    for split in ("train", "test"):
        shutil.copytree(SAMPLES / split, data / split)
    config = ConvertConfig(formats=("onnx",), eval=str(data), eval_split="test", data_cropped=True,
                           cpu_targets=CpuTargets.parse("none"))
    with pytest.raises(DatasetError, match=r"OOD guard.*--no-guard"):
        convert(tiny_run.best_checkpoint, tmp_path / "out", config, progress=False)
    assert not (tmp_path / "out").exists()
    off = convert(tiny_run.best_checkpoint, tmp_path / "out", ConvertConfig(
        formats=("onnx",), eval=str(data), eval_split="test", data_cropped=True, guard=GuardConfig.off(),
        cpu_targets=CpuTargets.parse("none")), progress=False)
    meta = Classifier.load(off.out_dir / "model.fp32.onnx").metadata
    assert meta.outputs == ("logits", "cams") and meta.guard is None  # no guard, still explains


def test_metadata_listing_outputs_the_model_lacks_is_refused(artefacts, tmp_path):
    from cellsdk.artefacts.info import read_metadata
    from cellsdk.converters.onnx import write_onnx_metadata

    meta = read_metadata(artefacts["onnxruntime"])
    record = {"score": {"name": "energy", "temperature": 1.0}, "threshold": 0.0, "retention": 0.95}
    target = tmp_path / "lying.onnx"
    write_onnx_metadata(artefacts["onnxruntime"], target, meta.replace(outputs=("logits", "features"), guard=record))
    with pytest.raises(MetadataError, match=r"1 output.*features"):
        Classifier.load(target)


# ------------------------------------------------------------------ the threshold on full-resolution originals


def _originals(root, copies: int = 2):
    """A folder with a val split of full-resolution originals (the samples, each linked ``copies`` times)."""
    for image in RAW:
        target = root / "val" / image.parent.name
        target.mkdir(parents=True, exist_ok=True)
        for copy in range(copies):
            (target / f"{copy}_{image.name}").symlink_to(image)
    return root


def test_the_originals_threshold_keeps_the_stated_share_and_never_lowers_the_old_one(tmp_path):
    from cellsdk.converters.guard import deployed_threshold, retention_quantile
    from cellsdk.errors import DatasetError

    shipped = Classifier.load(self_check=False)
    originals = _originals(tmp_path / "originals")
    strict = deployed_threshold(shipped, str(originals), 0.95, base=-1e9)  # a base that keeps nothing
    assert strict["images"] == 2 * len(RAW) and strict["kept_before"] == 0
    assert strict["quantile"] == pytest.approx(retention_quantile(0.95, 2 * len(RAW)))
    assert strict["kept_after"] >= 0.95 and strict["threshold"] > -1e9
    lenient = deployed_threshold(shipped, str(originals), 0.95, base=1e12)  # already keeps every one: unchanged
    assert lenient["threshold"] == 1e12 and lenient["kept_before"] == lenient["kept_after"] == 1.0
    few = _originals(tmp_path / "few", copies=1)
    with pytest.raises(DatasetError, match="at least 20"):
        deployed_threshold(shipped, str(few), 0.95)
    with pytest.raises(DatasetError, match="val"):
        deployed_threshold(shipped, str(SAMPLES / "train"), 0.95)


@pytest.mark.slow  # a conversion (~15 s)
def test_convert_with_originals_raises_each_artefacts_threshold_and_records_why(tiny_checkpoint, tmp_path):
    from cellsdk.converters import ConvertConfig, convert
    from cellsdk.converters.targets import CpuTargets
    from tests.conftest import TINY_GATE

    originals = _originals(tmp_path / "originals")
    config = ConvertConfig(formats=("onnx",), calib=str(SAMPLES), data_cropped=True, calib_samples=64,
                           verify=TINY_GATE, cpu_targets=CpuTargets.parse("none"),
                           guard=GuardConfig(originals=str(originals)))
    result = convert(tiny_checkpoint, tmp_path / "out", config, progress=False)
    entry = next(a for a in result.manifest["artefacts"] if a["file"] == "model.fp32.onnx")
    record = entry["verification"]["guard"]["originals"]
    assert record["images"] == 2 * len(RAW) and record["kept_after"] >= 0.95
    guard = Classifier.load(result.out_dir / "model.fp32.onnx", self_check=False).guard
    assert guard.threshold == pytest.approx(record["threshold"]) and guard.record["originals"] == record
    assert guard.threshold >= record["base_threshold"]
    if record["threshold"] > record["base_threshold"]:
        assert "full-resolution originals" in guard.record["threshold_note"]
