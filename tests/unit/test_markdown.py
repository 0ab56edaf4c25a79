"""The lab's one markdown table writer: every report's tables take their form from it."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from streamrec.lab.markdown import table

LAB = Path(__file__).resolve().parents[2] / "streamrec" / "lab"


def test_a_table_is_a_header_an_alignment_row_and_its_rows():
    assert table(["log", "rows", "note"], [["a", 1, ""], ["b", 22, "x"]], align="lrl") == [
        "| log | rows | note |", "|---|---:|---|", "| a | 1 | |", "| b | 22 | x |"]
    assert table(["", "hashmap"], [])[0] == "| | hashmap |"


def test_a_row_of_the_wrong_width_or_a_bad_alignment_is_an_error():
    with pytest.raises(ValueError, match="a row of 1 cells"):
        table(["a", "b"], [["only one"]])
    with pytest.raises(ValueError, match="align"):
        table(["a", "b"], [], align="lc")


def test_no_lab_module_writes_a_table_of_its_own():
    """An alignment row written by hand ('|---') anywhere in the lab but the writer is a second writer."""
    own = []
    for path in LAB.rglob("*.py"):
        if path.name == "markdown.py":
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Constant) and isinstance(node.value, str) and "|---" in node.value:
                own.append(f"{path.relative_to(LAB)}:{node.lineno}")
    assert own == []
