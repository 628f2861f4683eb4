"""Sessions page (history, filters, CSV) — filled in once chargepoint.sessions lands."""

from __future__ import annotations

from typing import Any


def add_routes(app: Any, ui: Any) -> None:
    return None
