"""The one table renderer loadtest uses: aligned columns for terminals and logs, GitHub pipe
tables for Markdown. Numbers go through fmt() so every table spells them the same way."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any


def fmt(v: Any) -> str:
    """Numbers the way a results table wants them: 3 significant-ish digits, no NaN noise."""
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, float):
        if v != v:  # NaN
            return "n/a"
        if abs(v) >= 100:
            return f"{v:,.0f}"
        if abs(v) >= 10:
            return f"{v:.1f}"
        return f"{v:.2f}"
    if isinstance(v, int):
        return f"{v:,}"
    return "n/a" if v is None else str(v)


def render(
    headers: Sequence[str],
    rows: Sequence[Sequence[Any]],
    *,
    markdown: bool = False,
    indent: str = "",
) -> str:
    """The table as text: Markdown (`| a | b |` rows under a `|---|` rule) or aligned columns
    two spaces apart, each line prefixed with `indent`."""
    cells = [[fmt(v) for v in row] for row in rows]
    if markdown:
        lines = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
        lines += ["| " + " | ".join(row) + " |" for row in cells]
        return "\n".join(lines)
    grid = [[str(h) for h in headers], *cells]
    widths = [max(len(row[i]) for row in grid) for i in range(len(headers))]
    return "\n".join(
        indent + "  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip()
        for row in grid
    )
