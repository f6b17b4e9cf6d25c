"""The benchmark harness behind ``cellsdk-bench``, installed as ``cellsdk.benchmarks``.

Latency, throughput, memory, size and accuracy per backend and device, with
pass/fail against latency targets. It builds on the runtime ``Classifier``.

Not yet available: ``cellsdk-bench`` arrives with the benchmark issue.
"""

from __future__ import annotations

__all__: list[str] = []

AVAILABLE = False
