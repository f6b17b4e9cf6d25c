"""Terminal tables whose columns fit their widest cell, whatever the content (file names, CPU classes, reasons).

Examples:
    >>> print(text_table(["file", "MB", "status"], [["a.onnx", "1.50", "passed"], ["model.int8.onnx", "12.25", "ok"]],
    ...                  align="lrl"))
    file                MB  status
    a.onnx            1.50  passed
    model.int8.onnx  12.25  ok
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

__all__ = ["text_table"]


def text_table(header: Sequence[str], rows: Sequence[Sequence[Any]], *, align: str = "", indent: str = "",
               gap: str = "  ") -> str:
    """Rows under a header, each column as wide as its widest cell and ``gap`` between columns.

    Args:
        header: the column titles.
        rows: the cells (turned into text with ``str``; None shows as ``-``).
        align: one letter per column, ``l`` (left) or ``r`` (right); missing letters mean ``l``. The last column
            is never padded, so a long last cell (a reason) does not widen the others.
        indent: put before every line.
        gap: between two columns.

    Examples:
        >>> print(text_table(["a", "b"], [["x", 1], ["yyyy", None]], align="lr"))
        a     b
        x     1
        yyyy  -
    """
    table = [[str(h) for h in header]] + [["-" if cell is None else str(cell) for cell in row] for row in rows]
    columns = max(len(line) for line in table)
    table = [line + [""] * (columns - len(line)) for line in table]
    widths = [max(len(line[i]) for line in table) for i in range(columns)]
    sides = (align + "l" * columns)[:columns]
    out = []
    for line in table:
        cells = [cell.rjust(width) if side == "r" else cell.ljust(width)
                 for cell, width, side in zip(line, widths, sides, strict=True)]
        if sides[-1] == "l":
            cells[-1] = line[-1]
        out.append((indent + gap.join(cells)).rstrip())
    return "\n".join(out)
