"""Small edits tests make to files on disk, to break a folder in a known way."""

from __future__ import annotations

import json
from pathlib import Path


def edit_json(path: Path, **changes) -> None:
    """Update top-level keys of a JSON file."""
    path.write_text(json.dumps({**json.loads(path.read_text()), **changes}))


def truncate_file(path: Path, missing_bytes: int = 100) -> None:
    """Drop the last bytes of a file, as an interrupted download or copy does."""
    path.write_bytes(path.read_bytes()[:-missing_bytes])
