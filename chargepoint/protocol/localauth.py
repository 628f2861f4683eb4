"""Local Auth List Management profile handlers (OCPP 1.6 §5.10 GetLocalListVersion, §5.15 SendLocalList)."""

from __future__ import annotations

from typing import Any

from ocpp.routing import on
from ocpp.v16 import call_result


class LocalAuthHandlers:
    controller: Any

    # -------------------------------------------------------------- GetLocalListVersion §5.10
    @on("GetLocalListVersion")
    def on_get_local_list_version(self, **_: Any) -> Any:
        return call_result.GetLocalListVersion(list_version=self.controller.authorization.local_list_version())

    # -------------------------------------------------------------- SendLocalList §5.15
    # The link has already checked the request against the 1.6 schema (a bad frame got its CALLERROR
    # there); checking 10,000 entries a second time in the library would double the cost of a Full list.
    @on("SendLocalList", skip_schema_validation=True)
    def on_send_local_list(
        self,
        list_version: int,
        update_type: str,
        local_authorization_list: list[dict[str, Any]] | None = None,
        **_: Any,
    ) -> Any:
        status = self.controller.authorization.send_local_list(list_version, update_type, local_authorization_list)
        return call_result.SendLocalList(status=status)
