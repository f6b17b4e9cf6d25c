"""The CLI's tables stay aligned whatever their cells hold: long file names, every CPU class, long labels."""

from __future__ import annotations

from pathlib import Path

from cellsdk._table import text_table
from cellsdk.artefacts.info import format_cpu_records
from cellsdk.batch.jobs import JobSummary
from cellsdk.converters.pipeline import format_manifest_table
from cellsdk.converters.targets import format_self_checks
from cellsdk.evaluation import format_sources

ALL_CLASSES = [{"cpu_class": c, "status": "passed"} for c in
               ("x86-64-avx512-vnni", "x86-64-avx512-bf16", "x86-64-avx2", "x86-64-sse4", "arm64-neoverse-n1")]


def _column_starts(line: str, cells: list[str]) -> list[int]:
    starts, at = [], 0
    for cell in cells:
        at = line.index(cell, at)
        starts.append(at)
        at += len(cell)
    return starts


def test_text_table_columns_start_where_their_headers_start():
    rows = [["a" * 40, "1", "x"], ["b", "123456789", "a long last cell that is not padded"]]
    lines = text_table(["name", "n", "status"], rows, align="lrl").splitlines()
    header = _column_starts(lines[0], ["name", "n", "status"])
    assert _column_starts(lines[1], rows[0])[2] == header[2] == _column_starts(lines[2], rows[1])[2]
    assert all(line.endswith(line.rstrip()) for line in lines)  # nothing trails
    assert lines[1].index("1") + 1 == lines[2].index("123456789") + 9 == header[1] + len("n")  # right-aligned


def test_the_conversion_tables_cpu_classes_never_run_into_status():
    artefact = {"file": "bloodmnist_efficientnet_lite0_long_name.int8.onnx", "size_bytes": 4_100_000,
                "status": "passed", "latency_ms": 1.6, "cpu_verification": ALL_CLASSES,
                "verification": {"top1_agreement": 0.998, "accuracy": 0.991, "accuracy_change": -0.001,
                                 "worst_class": "immature_granulocyte", "worst_recall_change": -0.003}}
    text = format_manifest_table({"reference": {"accuracy": 0.99}, "artefacts": [artefact, {**artefact,
                                  "file": "m.onnx", "status": "failed", "cpu_verification": []}]})
    header, first, second = text.splitlines()[1:]
    status = header.index("status")
    assert first[status:].startswith("passed") and second[status:].startswith("failed")
    assert "sse4 ok, arm64-neoverse-n1 ok  passed" in first  # a gap between the columns, whatever their width


def test_verification_and_self_check_tables_align_long_runtimes_and_classes():
    records = [{"target": "emulated-haswell", "cpu_class": "x86-64-avx512-vnni-amx", "method": "qemu-x86_64 -cpu "
                "Haswell (user-mode emulation)", "images": 12345, "status": "passed", "accuracy": 0.99},
               {"target": "native", "cpu_class": "x86-64-avx2", "method": "native", "images": 1, "status": "failed"}]
    lines = format_cpu_records(records)
    assert len({line.index(word) for line, word in zip(lines, ["status", "passed", "failed"], strict=True)}) == 1
    row = {"target": "neoverse-n1", "status": "passed", "precision": "int8", "vectors": 32, "seconds": 0.08,
           "machine": {"cpu_class": "arm64-neoverse-n1", "backend": "ai-edge-litert", "runtime_version": "1.4.0",
                       "device": "qemu-aarch64 -cpu neoverse-n1"},
           "figures": {"top1_agreement": 1.0, "logit_cosine": 0.99999, "max_probability_error": 0.001}}
    lines = format_self_checks("m.int8.tflite", [row, {**row, "target": "native", "status": "failed",
                                                        "machine": {"cpu_class": "x86-64-avx2"}}]).splitlines()
    assert lines[1].index("status") == lines[2].index("passed") == lines[3].index("failed")


def test_per_source_and_job_summaries_keep_their_columns_for_long_names_and_counts():
    report = {"n": 1_234_567, "accuracy": 0.5, "per_class": {"immature_granulocyte_long": {"recall": 0.5, "support": 1}}}
    lines = format_sources({"/data/a/very/long/path/to/the/other/lab/images": report, "b": {**report, "n": 3}}
                           ).splitlines()
    assert lines[0].index("kept") + len("kept") == lines[1].index("n/a") + 3 == lines[2].index("n/a") + 3
    table = JobSummary(Path("r.csv"), rows=12_345_678, resumed=0, per_class={"a_very_long_label_name": 12_345_677},
                       errors=1).table().splitlines()
    numbers = [line.rstrip().split()[1] if len(line.split()) > 1 else "" for line in table[1:]]
    assert numbers == ["12345677", "1", "12345678"]
    assert len({line.index(n) + len(n) for line, n in zip(table[1:], numbers, strict=True)}) == 1  # right-aligned
