"""Self-verifying artefacts: the test vectors every artefact carries, and the self-check on first use on a machine."""

from __future__ import annotations

import json
import shutil
import warnings

import numpy as np
import pytest
from click.testing import CliRunner

from cellsdk import Classifier, SelfCheckError, SelfCheckWarning
from cellsdk.artefacts.info import describe, read_metadata
from cellsdk.artefacts.selfcheck import SelfCheckConfig, artefact_digest, cache_dir, judge, machine_key, self_check
from cellsdk.backends import backend_for_path
from cellsdk.converters import get_converter
from cellsdk.errors import MetadataError
from cellsdk.platform.cpu import host_cpu
from cellsdk.testvectors import MAX_BYTES, TestVectors, size_budget


@pytest.fixture(autouse=True)
def _own_cache(tmp_path, monkeypatch):
    """Each test gets an empty verdict cache."""
    monkeypatch.setenv("CELLSDK_CACHE", str(tmp_path / "cache"))


def _runnable(converted):
    for entry in converted.manifest["artefacts"]:
        path = converted.out_dir / entry["file"]
        if entry["status"] == "passed" and not backend_for_path(path).unavailable_reason():
            yield entry, path


def _without_records(path, tmp_path, **changes):
    """A copy of an artefact that has no gate record for any machine (as when it lands on a new one)."""
    copy = tmp_path / path.name
    for f in [path, path.with_suffix(".bin")] if path.suffix == ".xml" else [path]:
        shutil.copy(f, tmp_path / f.name)
    fmt = {".onnx": "onnx", ".xml": "openvino", ".torchscript": "torchscript"}[path.suffix]
    meta = read_metadata(copy)
    get_converter(fmt).write_metadata(copy, meta.replace(cpu_verification=(), **changes))
    return copy


def test_vectors_round_trip_and_refuse_what_they_cannot_read():
    logits = np.arange(6, dtype=np.float32).reshape(3, 2)
    vectors = TestVectors((b"a", b"bb", b"ccc"), ("image/png",) * 3, ("x", "y", "z"), (0, 1, 0), logits,
                          features=np.ones((3, 4)), thresholds={"min_agreement": 0.9})
    back = TestVectors.from_dict(json.loads(json.dumps(vectors.to_dict())))
    assert back.images == vectors.images and back.targets == (0, 1, 0) and back.thresholds == {"min_agreement": 0.9}
    assert np.array_equal(back.logits, logits) and back.features.shape == (3, 4) and back.cams is None
    assert vectors.subset([2]).ids == ("z",) and len(vectors.subset([0, 1])) == 2
    with pytest.raises(MetadataError, match="newer"):
        TestVectors.from_dict({**vectors.to_dict(), "format": 99})
    with pytest.raises(MetadataError, match="malformed"):
        TestVectors.from_dict({**vectors.to_dict(), "images": [{"base64": "!!"}]})
    with pytest.raises(MetadataError, match="3 images"):
        TestVectors((b"a", b"b", b"c"), ("image/png",) * 3, ("x", "y", "z"), (0, 1, 0), logits[:2])
    assert size_budget(100_000_000) == MAX_BYTES and size_budget(100_000) == 10_000


def test_every_artefact_carries_balanced_vectors_within_its_budget(converted):
    checked = 0
    for entry in converted.manifest["artefacts"]:
        if entry["status"] == "skipped":
            continue
        path = converted.out_dir / entry["file"]
        meta = read_metadata(path)
        summary = entry["test_vectors"]
        assert summary["bytes"] <= summary["budget_bytes"] == size_budget(summary["artefact_bytes_without"])
        vectors = TestVectors.from_dict(meta.test_vectors)
        assert len(vectors) == summary["images"] >= 8
        assert vectors.nbytes() == summary["bytes"] and meta.schema_version == 5
        counts = np.bincount(vectors.targets, minlength=len(meta.labels))
        assert counts.max() - counts.min() <= 1, entry["file"]  # classes in turn: any prefix is balanced
        assert vectors.features is not None and vectors.cams is not None  # the guard's input and the maps
        assert vectors.thresholds == converted.manifest["thresholds"]
        if entry["status"] == "passed":  # checked here: with the artefact's own OOD scores on the vectors
            assert entry["self_check"]["status"] == "passed" and entry["self_check"]["figures"]["guard_drift"] == 0
            assert vectors.expected_scores is not None and vectors.expected_on["cpu_class"] == host_cpu().cpu_class
        checked += 1
    assert checked >= 6
    assert converted.manifest["test_vectors"]["images"] == 32


def test_a_new_machine_runs_the_vectors_once_then_reads_the_cached_verdict(converted, tmp_path):
    _, path = next(e for e in _runnable(converted) if e[0]["file"] == "model.int8.onnx")
    copy = _without_records(path, tmp_path)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a pass is silent: no CPU-class warning either
        first = Classifier.load(copy)
        second = Classifier.load(copy)
    assert first.self_check.status == "passed" and not first.self_check.cached and first.self_check.seconds > 0
    assert second.self_check.cached and second.self_check.figures == first.self_check.figures
    assert first.cpu_check.status == "verified"  # the self-check stands for a CPU-class verification
    key = machine_key(first)
    assert key["cpu_class"] == host_cpu().cpu_class and key["runtime_version"] and key["precision"] == "int8"
    cached = json.loads((cache_dir() / f"{artefact_digest(copy)}.json").read_text())
    assert next(iter(cached["verdicts"].values()))["status"] == "passed"
    assert "self-check cached: " + host_cpu().cpu_class in describe(copy)
    fresh = self_check(second, refresh=True)
    assert not fresh.cached and fresh.figures["top1_agreement"] == first.self_check.figures["top1_agreement"]


def test_the_converting_machine_needs_no_self_check_its_gate_record_covers_it(converted):
    _, path = next(e for e in _runnable(converted) if e[0]["file"] == "model.int8.onnx")
    clf = Classifier.load(path)
    assert clf.self_check.status == "passed" and clf.self_check.source == "record"
    assert not cache_dir().exists()  # nothing ran, nothing was written


@pytest.mark.parametrize("name", ["model.fp32.onnx", "model.fp16.onnx", "model.fp32.xml", "model.int8.xml",
                                  "model.fp32.torchscript", "model.int8.torchscript"])
def test_every_correct_artefact_passes_its_self_check_here(converted, tmp_path, name):
    entry, path = next((e for e in _runnable(converted) if e[0]["file"] == name), (None, None))
    if entry is None:
        pytest.skip(f"{name} was not written or cannot run here")
    clf = Classifier.load(_without_records(path, tmp_path), **entry.get("runtime_options", {}))
    assert clf.self_check.status == "passed", clf.self_check.describe()
    assert {"top1_agreement", "logit_cosine", "max_probability_error", "guard_score_error"} <= set(clf.self_check.figures)


def test_a_wrong_artefact_fails_warns_once_and_strict_refuses(converted, tmp_path):
    """An artefact whose arithmetic here is wrong: simulated by vectors whose reference the artefact cannot meet."""
    _, path = next(e for e in _runnable(converted) if e[0]["file"] == "model.fp32.onnx")
    meta = read_metadata(path)
    vectors = TestVectors.from_dict(meta.test_vectors)
    wrong = TestVectors(vectors.images, vectors.media_types, vectors.ids, vectors.targets,
                        np.roll(vectors.logits, 1, axis=1), vectors.features, vectors.cams, vectors.thresholds,
                        vectors.preprocessing)
    copy = _without_records(path, tmp_path, test_vectors=wrong.to_dict())
    with pytest.warns(SelfCheckWarning, match="self-check FAILED here .*agreement") as caught:
        clf = Classifier.load(copy)
        again = Classifier.load(copy)  # cached, and warned once only
    assert len([w for w in caught if issubclass(w.category, SelfCheckWarning)]) == 1
    assert clf.self_check.failed and again.self_check.cached and clf.self_check.reasons
    with pytest.raises(SelfCheckError, match="refused: strict mode"):
        Classifier.load(copy, strict=True)
    off = Classifier.load(copy, self_check=False)
    assert off.self_check.status == "off"


def test_scores_that_drift_from_the_artefacts_own_fail(converted, tmp_path):
    """int8 moves OOD scores away from fp32's by a quantizer-dependent amount; on a new machine a correct artefact
    gives the scores it gave where its gate passed, so drifting from those fails."""
    _, path = next(e for e in _runnable(converted) if e[0]["file"] == "model.int8.onnx")
    vectors = TestVectors.from_dict(read_metadata(path).test_vectors)
    reference = vectors.subset(list(range(len(vectors))))
    spread = float(np.ptp(Classifier.load(path).guard.scores(reference.logits, reference.features)))
    moved = vectors.with_expected(vectors.expected_scores + 0.5 * spread, vectors.expected_on)
    copy = _without_records(path, tmp_path, test_vectors=moved.to_dict())
    with pytest.warns(SelfCheckWarning, match="differs from this artefact's own on"):
        clf = Classifier.load(copy)
    assert clf.self_check.figures["guard_drift"] == pytest.approx(0.5, abs=0.01)


def test_an_artefact_without_vectors_loads_as_before(converted, tmp_path):
    _, path = next(e for e in _runnable(converted) if e[0]["file"] == "model.fp32.onnx")
    copy = _without_records(path, tmp_path, test_vectors=None)
    clf = Classifier.load(copy)
    assert clf.self_check.status == "unavailable" and "no test vectors" in clf.self_check.describe()
    assert "test vectors: none" in describe(copy)


def test_damaged_vectors_are_named_with_the_fix(converted, tmp_path):
    _, path = next(e for e in _runnable(converted) if e[0]["file"] == "model.fp32.onnx")
    record = read_metadata(path).test_vectors
    record = {**record, "images": [{**image, "base64": "bm90IGFuIGltYWdl"} for image in record["images"]]}
    copy = _without_records(path, tmp_path, test_vectors=record)
    with pytest.raises(MetadataError, match=r"test vectors are damaged .* self_check=False"):
        Classifier.load(copy)
    assert Classifier.load(copy, self_check=False).self_check.status == "off"


def test_an_unwritable_cache_costs_a_check_per_load_nothing_else(converted, tmp_path, monkeypatch):
    _, path = next(e for e in _runnable(converted) if e[0]["file"] == "model.fp32.onnx")
    copy = _without_records(path, tmp_path)
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("x")
    monkeypatch.setenv("CELLSDK_CACHE", str(blocker))
    assert Classifier.load(copy).self_check.status == "passed"
    assert not Classifier.load(copy).self_check.cached


def test_judge_applies_the_gates_criteria_per_precision():
    reference = np.array([[4.0, 0.0, 0.0], [0.0, 4.0, 0.0], [0.0, 0.0, 4.0], [4.0, 0.0, 0.0]])
    vectors = TestVectors((b"",) * 4, ("image/png",) * 4, tuple("abcd"), (0, 1, 2, 0), reference)
    nudged = reference + np.array([0.0, 0.0, 0.3])  # logit cosine 0.997, probabilities move < 1 point
    pushed = reference + np.array([0.0, 0.0, 1.0])  # logit cosine 0.97, probabilities move ~3 points
    figures, reasons = judge({"logits": reference.copy()}, vectors, "fp32", "logits", None, SelfCheckConfig())
    assert reasons == [] and figures["top1_agreement"] == 1.0
    _, reasons = judge({"logits": nudged}, vectors, "fp16", "logits", None, SelfCheckConfig())
    assert [r[:12] for r in reasons] == ["logit cosine"]  # within fp16's probability error, not its cosine
    _, reasons = judge({"logits": pushed}, vectors, "fp32", "logits", None, SelfCheckConfig())
    assert any("probability error" in r for r in reasons) and any("logit cosine" in r for r in reasons)
    _, reasons = judge({"logits": nudged}, vectors, "int8", "logits", None, SelfCheckConfig())
    assert reasons == []  # within int8's tolerances
    flipped = reference.copy()
    flipped[:2] = flipped[:2, ::-1]
    _, reasons = judge({"logits": flipped}, vectors, "int8", "logits", None, SelfCheckConfig())
    assert any("agreement" in r for r in reasons) and any("cosine" in r for r in reasons)
    assert SelfCheckConfig.from_gate({"min_logit_cosine": 0.9, "latency_runs": 3}).min_logit_cosine == 0.9


def test_cellsdk_verify_self_prints_the_figures_and_caches_the_verdict(converted, tmp_path):
    from cellsdk.cli import cli as main

    _, path = next(e for e in _runnable(converted) if e[0]["file"] == "model.int8.onnx")
    copy = _without_records(path, tmp_path)
    result = CliRunner().invoke(main, ["verify", str(copy), "--self"])
    assert result.exit_code == 0, result.output
    row = next(line for line in result.output.splitlines() if line.strip().startswith("native"))
    assert host_cpu().cpu_class in row and row.rstrip().endswith("passed") and "onnxruntime" in row
    assert Classifier.load(copy).self_check.cached  # cellsdk verify --self cached its verdict
    result = CliRunner().invoke(main, ["verify", str(copy), "--self", "--verify-cpus", "native,pentium4x"])
    assert result.exit_code == 1 and "unknown CPU class 'pentium4x'" in result.output
    (tmp_path / "bare").mkdir()
    bare = _without_records(path, tmp_path / "bare", test_vectors=None)
    result = CliRunner().invoke(main, ["verify", str(bare), "--self"])
    assert result.exit_code == 1 and "carries no test vectors" in result.output and "Traceback" not in result.output
    result = CliRunner().invoke(main, ["verify", str(copy)])
    assert result.exit_code == 2 and "--reference and --data" in result.output


@pytest.mark.skipif("avx512_bf16" not in host_cpu().features and "amx_bf16" not in host_cpu().features,
                    reason="needs a CPU with AVX-512 BF16 or AMX (OpenVINO computes in f32 elsewhere)")
def test_a_silent_bf16_downcast_of_a_float_artefact_is_caught(converted, tmp_path):
    """OpenVINO's own default on BF16 CPUs: an "fp32" IR computed in bf16. cellsdk pins f32; forced, the
    self-check sees it."""
    _, path = next(e for e in _runnable(converted) if e[0]["file"] == "model.fp32.xml")
    copy = _without_records(path, tmp_path)
    assert "f32" in Classifier.load(copy).backend.describe()
    with pytest.warns(SelfCheckWarning, match="cosine|probability error|OOD score"):
        clf = Classifier.load(copy, precision="bf16")
    assert clf.self_check.failed and "bf16" in clf.self_check.machine["runtime"]


def test_images_without_files_are_stored_as_lossless_png_of_the_model_input():
    """A .npz dataset has no files: its vector is the model input undone to 8-bit RGB, as PNG, which decodes and
    preprocesses back to the same input (within one 8-bit level)."""
    from types import SimpleNamespace

    from PIL import Image

    from cellsdk.converters.testvectors import _reencode
    from cellsdk.metadata import Preprocessing
    from cellsdk.preprocessing import preprocess

    spec = Preprocessing(input_size=16, mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225), color_order="BGR")
    pixels = np.random.default_rng(0).integers(0, 256, (16, 16, 3), dtype=np.uint8)
    array = preprocess(Image.fromarray(pixels), spec)
    blob, media = _reencode(SimpleNamespace(ids=("bloodmnist.npz[val][0]",), arrays=array[None]), 0, spec)
    assert media == "image/png" and blob.startswith(b"\x89PNG")
    back = preprocess(blob, spec)
    assert np.abs(back - array).max() <= 1 / 255 / min(spec.std) + 1e-6
