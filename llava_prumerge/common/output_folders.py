"""Output folders written whole or not at all (Hub folders, tiny inputs).

Everything is written into a hidden sibling `.NAME.partial-PID-XXXX`, then renamed into place; a
folder being replaced is first renamed to `.NAME.replaced-PID-XXXX` and removed once the new one is
in place. A run killed outright (SIGKILL, power loss) cannot clean up after itself, so each run first
removes the leftovers of earlier runs on the same output whose process is gone, and says so.
"""

from __future__ import annotations

import os
import re
import shutil
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from ..errors import OutputExistsError

LEFTOVER = re.compile(r"\.(?P<name>.+)\.(?:partial|replaced)-(?:(?P<pid>\d+)-)?[0-9a-f]{8}")


def refuse_existing(out_dir: Path, overwrite: bool) -> None:
    """Checked before any work and again before the rename."""
    if out_dir.exists() and not overwrite:
        raise OutputExistsError(f"{out_dir} already exists; choose another output folder or pass --overwrite")


def _is_running(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's live process
        return True
    return True


def remove_leftovers(out_dir: Path) -> list[Path]:
    """Remove the staging and replaced folders that interrupted runs on `out_dir` left; return them."""
    if not out_dir.parent.is_dir():
        return []
    removed = []
    for path in sorted(out_dir.parent.iterdir()):
        match = LEFTOVER.fullmatch(path.name)
        if not match or match["name"] != out_dir.name or not path.is_dir():
            continue
        if match["pid"] is not None and _is_running(int(match["pid"])):
            continue  # a run in progress (this package's own naming: the pid says whose)
        shutil.rmtree(path, ignore_errors=True)
        removed.append(path)
    if removed:
        print(f"Removed what interrupted runs left: {', '.join(path.name for path in removed)}")
    return removed


def _sibling(out_dir: Path, kind: str) -> Path:
    return out_dir.parent / f".{out_dir.name}.{kind}-{os.getpid()}-{uuid.uuid4().hex[:8]}"


def _move_into_place(staging: Path, out_dir: Path, overwrite: bool) -> None:
    refuse_existing(out_dir, overwrite)
    if not out_dir.exists():
        os.rename(staging, out_dir)
        return
    replaced = _sibling(out_dir, "replaced")
    os.rename(out_dir, replaced)
    try:
        os.rename(staging, out_dir)
    except BaseException:
        os.rename(replaced, out_dir)  # keep the old folder rather than none
        raise
    shutil.rmtree(replaced)


@contextmanager
def written_whole(out_dir: Path, overwrite: bool) -> Iterator[Path]:
    """Yield a staging folder to fill; on success it becomes `out_dir`, on any failure it is removed."""
    refuse_existing(out_dir, overwrite)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    remove_leftovers(out_dir)
    staging = _sibling(out_dir, "partial")
    staging.mkdir()
    try:
        yield staging
        _move_into_place(staging, out_dir, overwrite)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
