"""The count's summary (``summary.json``) and the report a pathologist reads (``report.html``).

The report is one self-contained HTML page beside its images: the counts per class with their 95 % intervals and
the share flagged, the flagged cells first (what a technician must look at), a gallery per class, and every field
with its boxes. :func:`write_report` builds both from what :func:`cellsdk.fields.count.count_fields` wrote, so a
resumed count reports every field, not only the last run's.

Examples:
    >>> "<table" in counts_table([{"label": "a", "cells": 3, "share": 0.75, "ci95": [0.3, 0.95], "flagged": 0}])
    True
"""

from __future__ import annotations

import csv
import html
import json
import statistics
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cellsdk._io import write_json, write_text
from cellsdk.metrics import wilson_interval

__all__ = ["CELL_COLUMNS", "CountResult", "counts_table", "differential", "summarise", "write_report"]

CELL_COLUMNS = ("field", "cell", "left", "top", "right", "bottom", "cut_by_edge", "label", "confidence", "status",
                "ood_score", "crop")



@dataclass
class CountResult:
    """What a count wrote: the summary (also ``summary.json``) and where the outputs are."""

    out: Path
    summary: dict[str, Any]
    rows: list[dict[str, Any]]
    fields: list[dict[str, Any]]


def differential(labels: Sequence[str], rows: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per class: the cells counted, their share of all cells and its 95 % Wilson interval, and how many the
    guard flagged.

    Examples:
        >>> rows = [{"label": "a", "status": "ok"}] * 3 + [{"label": "b", "status": "uncertain"}]
        >>> [(d["label"], d["cells"], round(d["share"], 2), d["flagged"]) for d in differential(["a", "b"], rows)]
        [('a', 3, 0.75, 0), ('b', 1, 0.25, 1)]
    """
    total = len(rows)
    by_label = Counter(str(row["label"]) for row in rows)
    flagged = Counter(str(row["label"]) for row in rows if row["status"] != "ok")
    table = []
    for name in labels:
        n = by_label.get(name, 0)
        low, high = wilson_interval(n, total)
        table.append({"label": name, "cells": n, "share": n / total if total else 0.0, "ci95": [low, high],
                      "flagged": flagged.get(name, 0)})
    return table


def _read(out: Path) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    rows: list[dict[str, Any]] = []
    if (out / "cells.csv").exists():
        with open(out / "cells.csv", newline="") as handle:
            for row in csv.DictReader(handle):
                row["cut_by_edge"] = row["cut_by_edge"] == "True"
                row["confidence"] = float(row["confidence"])
                row["ood_score"] = float(row["ood_score"]) if row["ood_score"] not in ("", "None") else None
                for key in ("cell", "left", "top", "right", "bottom"):
                    row[key] = int(row[key])
                rows.append(row)
    fields = [json.loads(line) for line in (out / "fields.jsonl").read_text().splitlines() if line.strip()] \
        if (out / "fields.jsonl").exists() else []
    return rows, fields


def summarise(labels: list[str], rows: list[dict[str, Any]], fields: list[dict[str, Any]], *, rbc_diameter: float,
              measured: bool, stopped: bool, target: int | None) -> dict[str, Any]:
    """The count's summary: fields read / empty / failed, cells, the differential, the share flagged.

    Examples:
        >>> s = summarise(["a"], [{"label": "a", "status": "ok", "cut_by_edge": False}], [{"field": "f", "cells": 1}],
        ...               rbc_diameter=70.0, measured=True, stopped=False, target=None)
        >>> s["cells"], s["differential"][0]["cells"], s["flagged"]["cells"]
        (1, 1, 0)
    """
    failed = [f for f in fields if "error" in f]
    read = [f for f in fields if "error" not in f]
    flagged = sum(1 for row in rows if row["status"] != "ok")
    low, high = wilson_interval(flagged, len(rows))
    seconds = [f["seconds"] for f in read if "seconds" in f]
    return {
        "fields": {"read": len(read), "without_cells": sum(1 for f in read if f["cells"] == 0), "failed": len(failed),
                   "errors": [{"field": f["field"], "error": f["error"]} for f in failed]},
        "cells": len(rows),
        "cut_by_edge": sum(1 for row in rows if row["cut_by_edge"]),
        "target_cells": target,
        "stopped_at_target": stopped,
        "differential": differential(labels, rows),
        "flagged": {"cells": flagged, "share": flagged / len(rows) if rows else 0.0, "ci95": [low, high]},
        "ruler": {"rbc_diameter_px": round(rbc_diameter, 2), "measured": measured},
        "seconds_per_field": {"median": statistics.median(seconds) if seconds else None,
                              "max": max(seconds) if seconds else None},
        "counting_rule": "every located white cell counts, a cell cut by the field's edge too (marked cut_by_edge); "
                         "flagged cells count under their label and are listed apart for review",
    }


def counts_table(table: list[dict[str, Any]]) -> str:
    """The differential as an HTML table (class, cells, share, 95 % interval, flagged).

    Examples:
        >>> "75.0 %" in counts_table([{"label": "a", "cells": 3, "share": 0.75, "ci95": [0.3, 0.95], "flagged": 0}])
        True
    """
    lines = ["<table><tr><th>class</th><th>cells</th><th>share</th><th>95 % interval</th><th>flagged</th></tr>"]
    for entry in table:
        low, high = entry["ci95"]
        lines.append(f"<tr><td>{html.escape(entry['label'])}</td><td>{entry['cells']}</td>"
                     f"<td>{100 * entry['share']:.1f} %</td><td>{100 * low:.1f} – {100 * high:.1f} %</td>"
                     f"<td>{entry['flagged']}</td></tr>")
    lines.append("</table>")
    return "\n".join(lines)


_STYLE = """body{font-family:system-ui,sans-serif;margin:1.5em;color:#222}table{border-collapse:collapse}
td,th{border:1px solid #ccc;padding:.25em .6em;text-align:right}th{background:#f3f3f3}td:first-child{text-align:left}
.cells{display:flex;flex-wrap:wrap;gap:6px}.cell{width:104px;font-size:11px;text-align:center}
.cell img{width:96px;height:96px;border:3px solid #3a3}.flag img{border-color:#e80}
.fields{display:flex;flex-wrap:wrap;gap:10px}.fields figure{margin:0;width:320px;font-size:12px}
.fields img{width:320px}.warn{color:#b60}"""


def _cell(row: dict[str, Any]) -> str:
    flag = row["status"] != "ok"
    title = html.escape(f"{row['field']} cell {row['cell']}: {row['label']} {row['confidence']:.2f} {row['status']}")
    edge = " (edge)" if row["cut_by_edge"] else ""
    return (f'<div class="cell{" flag" if flag else ""}" title="{title}"><img src="{html.escape(row["crop"])}" '
            f'alt="{html.escape(row["label"])}"><br>{html.escape(row["label"])} {row["confidence"]:.2f}'
            f'{"<br>" + html.escape(row["status"]) if flag else ""}{edge}</div>')


def _page(labels: list[str], rows: list[dict[str, Any]], fields: list[dict[str, Any]], summary: dict[str, Any],
          model: str) -> str:
    parts = [f"<!doctype html><html><head><meta charset='utf-8'><title>cellsdk differential count</title>"
             f"<style>{_STYLE}</style></head><body><h1>Differential count</h1>",
             f"<p>{summary['cells']} white cells in {summary['fields']['read']} fields "
             f"({summary['fields']['without_cells']} without a white cell, {summary['fields']['failed']} not read); "
             f"model {html.escape(model)}; red cell {summary['ruler']['rbc_diameter_px']} px"
             f"{'' if summary['ruler']['measured'] else ' (assumed)'}.</p>"]
    if summary["stopped_at_target"]:
        parts.append(f"<p>Stopped at the {summary['target_cells']}-cell target.</p>")
    flagged = summary["flagged"]
    parts.append(f"<h2>Counts</h2>{counts_table(summary['differential'])}<p>Flagged by the guard: "
                 f"{flagged['cells']} ({100 * flagged['share']:.1f} %, 95 % interval {100 * flagged['ci95'][0]:.1f} – "
                 f"{100 * flagged['ci95'][1]:.1f} %). Pre-classification: confirm the flagged cells first.</p>")
    for error in summary["fields"]["errors"]:
        parts.append(f"<p class='warn'>Not read: {html.escape(error['error'])}</p>")
    review = [row for row in rows if row["status"] != "ok"]
    parts.append(f"<h2>Flagged cells ({len(review)})</h2><div class='cells'>{''.join(map(_cell, review))}</div>")
    for name in labels:
        members = sorted((row for row in rows if row["label"] == name), key=lambda row: row["confidence"])
        if members:
            parts.append(f"<h2>{html.escape(name)} ({len(members)})</h2><div class='cells'>"
                         f"{''.join(map(_cell, members))}</div>")
    figures = "".join(f"<figure><img src='{html.escape(f['image'])}' alt=''><figcaption>{html.escape(f['field'])}: "
                      f"{f['cells']} cell{'s' if f['cells'] != 1 else ''}</figcaption></figure>"
                      for f in fields if "image" in f)
    parts.append(f"<h2>Fields</h2><div class='fields'>{figures}</div></body></html>")
    return "\n".join(parts)


def write_report(classifier: Any, out: Path, config: Any, ruler: Any, *, stopped: bool) -> Any:
    """Write ``summary.json``, ``report.html`` (and ``cells.parquet`` if asked) from the count in ``out``.

    Examples:
        >>> write_report  # doctest: +ELLIPSIS
        <function write_report at ...>
    """
    labels = list(classifier.metadata.labels)
    rows, fields = _read(out)
    summary = summarise(labels, rows, fields, rbc_diameter=ruler.rbc_diameter, measured=ruler.measured,
                        stopped=stopped, target=config.cells)
    model = f"{classifier.metadata.arch} {classifier.metadata.precision}"
    summary["model"] = model
    if config.parquet:
        from cellsdk.batch.results import open_writer

        target = out / "cells.parquet"
        target.unlink(missing_ok=True)
        writer = open_writer(target, CELL_COLUMNS)
        writer.write([{key: row[key] for key in CELL_COLUMNS} for row in rows])
        writer.close()
    write_json(out / "summary.json", summary)
    write_text(out / "report.html", _page(labels, rows, fields, summary, model))
    return CountResult(out, summary, rows, fields)
