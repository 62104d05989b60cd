"""Markdown for people: GitHub-flavoured tables. A leaf: no first-party imports."""

from __future__ import annotations

from typing import Any, List, Sequence


def markdown_table(header: Sequence[str], rows: List[Sequence[Any]]) -> str:
    """A GitHub-flavoured Markdown table."""
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)
