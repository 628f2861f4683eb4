"""Feature mixins of the controller, one per OCPP profile beyond Core.

Each mixin overrides hooks of ``ControllerCore`` (see chargepoint/controller.py) and
may add start-up work by overriding ``async def start(self)`` and calling
``await super().start()``. They are combined in ``chargepoint.controller.Controller``.
"""

from __future__ import annotations

FEATURES: list[type] = []


def _load() -> None:
    import importlib

    for module_name, class_name in (
        ("chargepoint.features.firmware", "FirmwareFeature"),
        ("chargepoint.features.security", "SecurityFeature"),
    ):
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as exc:
            if exc.name != module_name:
                raise
            continue
        FEATURES.append(getattr(module, class_name))


_load()
