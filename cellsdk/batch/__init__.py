"""Batch work on a loaded model (nothing is imported here: ``python -m cellsdk.batch.worker`` starts light).

* :mod:`~cellsdk.batch.engine`: decode and preprocess on threads, overlapped with batched inference, in order;
* :mod:`~cellsdk.batch.jobs` and :mod:`~cellsdk.batch.results`: large resumable jobs into CSV, JSONL or Parquet;
* :mod:`~cellsdk.batch.distributed`: the same on a Ray cluster (Ray Data);
* :mod:`~cellsdk.batch.worker`: one artefact run in a separate process (CPU classes under emulation).

Examples:
    >>> from cellsdk.batch.engine import run_pipeline
    >>> [item.value for item in run_pipeline([1, 2], prepare=str, infer=lambda batch: batch)]
    ['1', '2']
"""
