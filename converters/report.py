"""The conversion manifest as a terminal table (``cellsdk-convert`` and ``cellsdk adapt`` print it).

Examples:
    >>> print(format_manifest_table({"artefacts": [], "reference": {"accuracy": 0.9}}).splitlines()[0][:22])
    fp32 PyTorch reference
"""

from __future__ import annotations

from typing import Any

from cellsdk._table import text_table
from cellsdk.artefacts.manifest import STATUS_FAILED, STATUS_PASSED

__all__ = ["format_manifest_table"]


def format_manifest_table(manifest: dict[str, Any]) -> str:
    """The manifest as a terminal table: size, agreement, accuracy change, worst class, status.

    Examples:
        >>> print(format_manifest_table({"artefacts": [], "reference": {"accuracy": 0.9}}).splitlines()[0][:22])
        fp32 PyTorch reference
    """
    reference = manifest.get("reference", {})
    title = (f"fp32 PyTorch reference: accuracy {reference.get('accuracy', 0) * 100:.2f} %, "
             f"macro-F1 {reference.get('macro_f1', 0) * 100:.2f} % on "
             f"{manifest.get('evaluation', {}).get('images', '?')} held-out images")
    rows = []
    for a in manifest["artefacts"]:
        v = a.get("verification") or {}
        measured = "top1_agreement" in v  # absent when the artefact could not be run
        size = f"{a['size_bytes'] / 1e6:.2f}" if "size_bytes" in a else "-"
        agree = f"{v['top1_agreement'] * 100:.2f}%" if measured else "-"
        acc = f"{v['accuracy'] * 100:.2f}" if measured else "-"
        delta = f"{v['accuracy_change'] * 100:+.2f}" if measured else "-"
        worst = f"{v['worst_class']} {v['worst_recall_change'] * 100:+.2f}" if measured else "-"
        latency = f"{a['latency_ms']:.2f}" if "latency_ms" in a else "-"
        reasons = "; ".join(a.get("reasons") or [])
        if reasons and a["status"] != STATUS_FAILED and len(reasons) > 60:  # failures show every regressed class
            reasons = reasons[:57] + "..."
        status = a["status"] + (f" ({reasons})" if reasons else "")
        rows.append([a["file"], size, agree, acc, delta, worst, latency, _cpu_summary(a.get("cpu_verification") or []),
                     status])
    table = text_table(["artefact", "size MB", "top-1 agr", "acc", "Δacc", "worst class Δrecall", "ms", "CPU classes",
                        "status"], rows, align="lrrrrrrll")
    return f"{title}\n{table}"


def _cpu_summary(records: list[dict[str, Any]]) -> str:
    """``avx2 ok, sse4 FAIL, avx2 n/v`` for the CPU records of one artefact (native first)."""
    marks = {STATUS_PASSED: "ok", STATUS_FAILED: "FAIL"}
    parts = [f"{str(r.get('cpu_class', '?')).replace('x86-64-', '')} {marks.get(str(r.get('status')), 'n/v')}"
             for r in records]
    return ", ".join(dict.fromkeys(parts)) or "-"

