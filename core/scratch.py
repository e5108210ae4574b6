"""Scratch directories under data_dir/tmp, named after the process that owns them, so whatever a killed
process left behind is removed by the next one to look (API start-up, worker start-up, every reaper run)."""

from __future__ import annotations

import logging
import os
import shutil
import socket
import tempfile
from pathlib import Path

log = logging.getLogger("lingua_edit.scratch")

_SEP = "~"


def make_scratch(root: Path, prefix: str) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    owner = f"{prefix}{_SEP}{socket.gethostname()}{_SEP}{os.getpid()}{_SEP}"
    return Path(tempfile.mkdtemp(prefix=owner, dir=root))


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's live process
        return True
    return True


def clean_orphans(root: Path) -> list[str]:
    """Remove this host's scratch directories whose owning process is gone; returns their names."""
    removed: list[str] = []
    if not root.is_dir():
        return removed
    host = socket.gethostname()
    for entry in root.iterdir():
        parts = entry.name.split(_SEP)
        if len(parts) != 4 or parts[1] != host or not parts[2].isdigit():
            continue
        pid = int(parts[2])
        if pid == os.getpid() or _alive(pid):
            continue
        shutil.rmtree(entry, ignore_errors=True)
        removed.append(entry.name)
    if removed:
        log.warning("removed %d scratch directories of dead processes: %s", len(removed), ", ".join(removed))
    return removed
