"""Where commands write: checked before any work, so that a bad path fails in a second, not after a run."""

from __future__ import annotations

import os
from pathlib import Path

from ..errors import UsageError


def check_output_path(path: str | Path | None, flag: str, folder: bool = False) -> None:
    """Refuse an output `path` (a file, or a folder with `folder`) that the command could not write at
    the end: a file path naming a folder (or the reverse), a parent that is a file, or a place this user
    may not write in. Nothing is created."""
    if path is None:
        return
    path = Path(path)
    if not folder and path.is_dir():
        raise UsageError(f"{flag} {path} is a folder; pass a file path")
    if folder and path.exists() and not path.is_dir():
        raise UsageError(f"{flag} {path} is a file; pass a folder")
    existing = path if folder and path.is_dir() else path.parent
    while not existing.exists():  # the folders that will be created: the first that exists decides
        existing = existing.parent
    if not existing.is_dir():
        raise UsageError(f"{flag} {path}: {existing} is a file, not a folder; choose another path")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise UsageError(f"{flag} {path}: {existing} is not writable; choose another path")
