from __future__ import annotations

import json

import pytest

from cellsdk.errors import MetadataError
from cellsdk.metadata import METADATA_KEY, SCHEMA_VERSION, ModelMetadata, Preprocessing


def full_metadata() -> ModelMetadata:
    return ModelMetadata(
        labels=("basophil", "eosinophil", "ig"),
        arch="tf_efficientnet_lite0",
        preprocessing=Preprocessing(input_size=128, crop_mode="pixels", crop_value=200, resize_filter="bicubic",
                                    mean=(0.5, 0.4, 0.3), std=(0.2, 0.25, 0.3), color_order="BGR"),
        precision="int8",
        quantization={"method": "static-qdq", "per_channel": True},
        source_checkpoint_sha256="a" * 64,
        calibration_sha256="b" * 64,
        reference_metrics={"accuracy": 0.98, "macro_f1": 0.97},
        dataset="bloodmnist_128",
        training={"epochs": 3},
        created="2026-11-21T00:00:00+00:00",
    )


def test_json_round_trip_keeps_every_field():
    meta = full_metadata()
    text = meta.to_json()
    assert json.loads(text)["labels"] == ["basophil", "eosinophil", "ig"]
    back = ModelMetadata.from_json(text)
    assert back == meta
    assert back.preprocessing.mean == (0.5, 0.4, 0.3)
    assert back.num_classes == 3
    assert METADATA_KEY == "cellsdk" and back.schema_version == SCHEMA_VERSION


def test_dict_round_trip_and_replace():
    meta = full_metadata()
    assert ModelMetadata.from_dict(meta.to_dict()) == meta
    assert meta.replace(precision="fp16").precision == "fp16"
    with pytest.raises(MetadataError, match="precision"):
        meta.replace(precision="int3")


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"labels": ["a"]}, "at least two"),
        ({"labels": ["a", "a"]}, "unique"),
        ({"labels": ["a", ""]}, "non-empty"),
        ({"arch": ""}, "arch"),
        ({"precision": "fp64"}, "precision"),
        ({"output": "scores"}, "logits or probabilities"),
        ({"source_checkpoint_sha256": "xyz"}, "64 lowercase hex"),
        ({"schema_version": SCHEMA_VERSION + 1}, "newer"),
        ({"surprise": 1}, "unknown fields: surprise"),
        ({"reference_metrics": {"acc": "high"}}, "reference_metrics"),
        ({"preprocessing": {"input_size": 0}}, "input_size"),
        ({"preprocessing": {"input_size": 64, "crop_mode": "fraction", "crop_value": 1.5}}, "fraction"),
        ({"preprocessing": {"input_size": 64, "crop_mode": "pixels", "crop_value": 12.5}}, "pixel size"),
        ({"preprocessing": {"input_size": 64, "std": [1, 0, 1]}}, "positive"),
        ({"preprocessing": {"input_size": 64, "mean": [1, 2]}}, "three"),
        ({"preprocessing": {"input_size": 64, "color_order": "GBR"}}, "RGB or BGR"),
        ({"preprocessing": {"input_size": 64, "resize_filter": "magic"}}, "resize_filter"),
        ({"preprocessing": {"input_size": 64, "warp": 1}}, "unknown fields: warp"),
        ({"preprocessing": "big"}, "JSON object"),
    ],
)
def test_validation_names_the_field(change, message):
    data = {**full_metadata().to_dict(), **change}
    with pytest.raises(MetadataError, match=message):
        ModelMetadata.from_dict(data)


def test_missing_required_fields_and_bad_json():
    with pytest.raises(MetadataError, match="missing required fields: arch"):
        ModelMetadata.from_dict({"labels": ["a", "b"], "preprocessing": {"input_size": 8}})
    with pytest.raises(MetadataError, match="not valid JSON"):
        ModelMetadata.from_json("{not json")
    with pytest.raises(MetadataError, match="JSON object"):
        ModelMetadata.from_json("[1, 2]")


def test_preprocessing_describe_and_without_crop():
    spec = Preprocessing(input_size=128, crop_mode="pixels", crop_value=200)
    assert "centre crop 200 px" in spec.describe()
    plain = spec.without_crop()
    assert plain.crop_mode == "none" and plain.input_size == 128 and "crop" not in plain.describe()
