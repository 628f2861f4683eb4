"""Installer pages."""

from __future__ import annotations

from typing import Any


def add_routes(app: Any, ui: Any) -> None:
    return None
