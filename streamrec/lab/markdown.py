"""The one markdown table writer of the lab's reports (bench, scale, serve, compare, load, matrix...).

A report builds its rows from its own figures and formats its own numbers; this module only lays
them out, so every table in every report has the same form: a header, an alignment row (text left,
figures right), one line per row, and a row of the wrong width is an error rather than a broken table.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

LEFT, RIGHT = "l", "r"


def table(header: Sequence[str], rows: Iterable[Sequence[object]], align: str = "") -> list[str]:
    """The lines of a markdown table. ``align``: a letter per column, ``l`` (left) or ``r`` (right);
    by default the first column is left and the others right."""
    align = align or LEFT + RIGHT * (len(header) - 1)
    if len(align) != len(header) or set(align) - {LEFT, RIGHT}:
        raise ValueError(f"align {align!r} does not fit {len(header)} columns of l and r")
    lines = [_line(header), "|" + "".join("---|" if a == LEFT else "---:|" for a in align)]
    for row in rows:
        if len(row) != len(header):
            raise ValueError(f"a row of {len(row)} cells in a table of {len(header)} columns: {row!r}")
        lines.append(_line(row))
    return lines


def _line(cells: Sequence[object]) -> str:
    return "|" + "|".join(f" {c} " if str(c) else " " for c in cells) + "|"
