"""The benchmark harness behind ``cellsdk-bench``, installed as ``cellsdk.benchmarks``.

Latency (model-only and end-to-end, p50 / p90 / p95 / p99), throughput, cold
start, peak memory, size and accuracy per model x backend x device x batch,
with PyTorch eager fp32 and the bare runtime call as reference rows, and
PASS / FAIL against the latency targets in ``targets.toml``. Built on the
runtime ``Classifier``; torch only for the eager reference row.

Examples:
    >>> from cellsdk.benchmarks import BenchConfig, run_benchmark, format_table
    >>> report = run_benchmark(["runs/a/converted"], BenchConfig(batches=(1,)))  # doctest: +SKIP
    >>> print(format_table(report))  # doctest: +SKIP
"""

from __future__ import annotations

from cellsdk.benchmarks.harness import BenchConfig, bench_failure, discover, parse_batches, run_benchmark
from cellsdk.benchmarks.reports import format_table, write_reports
from cellsdk.benchmarks.stats import judge, latency_summary, load_targets

__all__ = ["BenchConfig", "bench_failure", "discover", "format_table", "judge", "latency_summary", "load_targets",
           "parse_batches", "run_benchmark", "write_reports"]
