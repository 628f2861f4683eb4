"""A simulated RFID reader: ``present(tag)`` is a tap."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from hal.interfaces import Emit, TagPresented
from hal.registry import BuildContext
from hal.sim.board import bench


class SimReader:
    def __init__(self, name: str = "sim") -> None:
        self.name = name
        self._emit: Emit | None = None

    async def start(self, emit: Emit) -> None:
        self._emit = emit

    async def stop(self) -> None:
        self._emit = None

    def present(self, id_tag: str) -> None:
        if self._emit is not None:
            self._emit(TagPresented(id_tag.strip().upper(), self.name))


def build_reader(options: Mapping[str, Any], key: str, connector_id: int, ctx: BuildContext) -> SimReader:
    reader = SimReader(str(options.get("name", "sim")))
    bench(ctx).readers.append(reader)
    return reader
