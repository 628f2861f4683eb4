"""Undelivered non-transaction messages kept across a restart (status and security notifications).

A small JSON file in the state directory: written atomically at stop, read and removed at start.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

Message = tuple[str, dict[str, Any]]


def save_pending(path: Path, messages: Iterable[Message], what: str) -> None:
    """Write ``messages`` (or remove the file when there are none). A failure is logged, never raised."""
    items = [[action, payload] for action, payload in messages]
    try:
        if items:
            tmp = path.with_name(path.name + ".tmp")
            tmp.write_text(json.dumps(items))
            os.replace(tmp, path)
        else:
            path.unlink(missing_ok=True)
    except OSError as exc:
        log.error("undelivered %s could not be saved: %s", what, exc)


def take_pending(path: Path, actions: Iterable[str]) -> list[Message]:
    """Read and remove the file; only well-formed entries of the given ``actions`` come back."""
    allowed = set(actions)
    try:
        items = json.loads(path.read_text())
    except FileNotFoundError:
        return []
    except (OSError, ValueError) as exc:
        log.warning("ignoring unreadable %s: %s", path, exc)
        items = []
    out: list[Message] = []
    for item in items if isinstance(items, list) else []:
        if isinstance(item, list) and len(item) == 2 and item[0] in allowed and isinstance(item[1], dict):
            out.append((item[0], item[1]))
    with contextlib.suppress(OSError):
        path.unlink()
    return out
