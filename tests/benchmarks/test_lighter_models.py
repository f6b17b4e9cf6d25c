"""The lighter-models comparison (python -m cellsdk.benchmarks.studies.lighter_models): its command line refuses bad input in
one line before it writes anything; its table is what MODEL_CARD.md's "Lighter and better models" shows."""

from __future__ import annotations

import subprocess
import sys

from cellsdk.benchmarks.studies.lighter_models import format_report


def _run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "cellsdk.benchmarks.studies.lighter_models", *args], capture_output=True,
                          text=True, check=False)


def test_a_missing_checkpoint_or_a_model_without_a_name_is_one_line_and_writes_nothing(tmp_path):
    out = tmp_path / "report"
    missing = _run("--model", f"a={tmp_path / 'none.safetensors'}", "--data", str(tmp_path), "--out", str(out))
    assert missing.returncode == 1 and "Traceback" not in missing.stderr
    assert missing.stderr.strip() == (f"lighter_models: error: {tmp_path / 'none.safetensors'}: no such checkpoint; "
                                      "train or prune it first")
    unnamed = _run("--model", "runs/a/best.safetensors", "--data", str(tmp_path), "--out", str(out))
    assert unnamed.returncode == 1 and "write NAME=CHECKPOINT" in unnamed.stderr and len(unnamed.stderr.splitlines()) == 1
    twice = _run("--model", "a=x.safetensors", "--model", "A=y.safetensors", "--data", ".", "--out", str(out))
    assert "is used twice" in twice.stderr
    assert not out.exists()


def test_the_table_gives_ratios_to_the_first_row_and_every_int8_refusal_with_its_reasons():
    base = {"model": "today", "accuracy": 0.9915, "worst_class": "neutrophil", "worst_recall": 0.979, "ece": 0.0022,
            "gmac": 0.122, "mac_ratio": 1.0, "params_m": 3.38, "int8_mb": 4.8, "int8_status": "passed",
            "model_p50_ms": 1.6, "speedup": 1.0, "cpu_ms_per_image": 6.8, "joules_per_image": None}
    pruned = base | {"model": "pruned 30 %", "gmac": 0.036, "mac_ratio": 0.3, "int8_status": "failed",
                     "int8_reasons": ["accuracy fell 10.34 points (limit 0.50)"], "model_p50_ms": 0.87,
                     "speedup": 1.84, "distillation": {"teachers": [{"arch": "lite0", "input_size": 160}]}}
    text = format_report({"machine": {"model": "EPYC", "cpu_class": "x86-64-avx2"}, "data": "d", "rows": [base, pruned]})
    rows = [line for line in text.splitlines() if line.startswith("| ")]
    assert rows[1].split(" | ")[:2] == ["| today", "99.15"]
    assert "| 0.036 | 0.30 |" in rows[2] and "| 0.870 | 1.84 |" in rows[2]
    assert rows[2].endswith("| lite0 160 px |") and "| n/a |" in rows[2]
    assert text.rstrip().endswith("- pruned 30 %: int8 failed: accuracy fell 10.34 points (limit 0.50)")
