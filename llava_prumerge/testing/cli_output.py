"""What a command prints, as tests read it: its stdout, and the rows of a Markdown table it writes."""

from __future__ import annotations

import contextlib
import io


def printed_by(*argv: str) -> str:
    """Run `llava-prumerge ARGV...` in this process and return what it printed."""
    from ..cli import main

    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        main(list(argv))
    return printed.getvalue()


def table_rows(markdown: str) -> list[dict]:
    """The first Markdown table of `markdown` as one dict per row, keyed by the header."""
    lines = [line for line in markdown.splitlines() if line.startswith("|")]
    header = [cell.strip() for cell in lines[0].strip("|").split("|")]
    return [
        dict(zip(header, (cell.strip() for cell in line.strip("|").split("|")), strict=True))
        for line in lines[2:]
    ]
