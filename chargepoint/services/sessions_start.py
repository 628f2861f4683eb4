"""Starting and stopping sessions from an identifier: a tap on the reader, or a RemoteStartTransaction.

The follow-a-tap path, top to bottom (docs/architecture.md): the reader's ``TagPresented`` reaches
:meth:`SessionStarter.on_tag`, which

1. lets a different identifier of the same group stop a running transaction (OCPP 1.6 §4.10);
2. lets the same identifier stop its own transaction, or cancel a session still waiting for the plug;
3. asks the authorization service (list, cache, LocalPreAuthorize, Authorize.req, offline rules, §3.5 / §4.1);
4. lets an accepted identifier of the same group stop its group's transaction (§5.2 parentIdTag);
5. asks the reservation service which connector it may use (§5.13), and
6. posts ``cm.Authorize`` to that connector: the dispatcher applies it to the connector state machine, whose
   actions switch the hardware and queue StartTransaction (the transactions service).

This service owns no state: it decides, and changes a connector only by posting an event (or through the
transactions service's :meth:`~chargepoint.services.transactions.TransactionService.stop_with_tag`).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from chargepoint import connector as cm
from chargepoint.keys import ConfigurationKeys
from chargepoint.logsetup import log_fields
from chargepoint.privacy import mask_id_tag
from chargepoint.services.authorization import Authorization
from chargepoint.services.reservations import ReservationService
from chargepoint.services.smartcharging import SmartCharging
from chargepoint.services.station import Connectors, Emit, Post
from chargepoint.services.transactions import TransactionService
from hal.interfaces import IndicatorPattern

log = logging.getLogger(__name__)


class SessionStarter:
    """The tap flow and the start after an accepted RemoteStartTransaction."""

    def __init__(
        self,
        connectors: Connectors,
        *,
        keys: ConfigurationKeys,
        post: Post,
        flash: Callable[[int | None, IndicatorPattern], None],
        emit: Emit,
        authorization: Authorization,
        reservations: ReservationService,
        transactions: TransactionService,
        smart: SmartCharging,
    ) -> None:
        self._connectors = connectors
        self._keys = keys
        self._post = post
        self._flash = flash
        self._emit = emit
        self._authorization = authorization
        self._reservations = reservations
        self._transactions = transactions
        self._smart = smart

    async def on_tag(self, id_tag: str) -> None:
        """A tap: stop what it stops, otherwise ask the authorization service and start a session."""
        group_stop = self._authorization.group_stop_target(id_tag)
        if group_stop is not None:
            # A different identifier of the same group (parentIdTag) ends a running transaction (§4.10).
            log.info(
                "tag %s of the same group stops connector %d",
                mask_id_tag(id_tag),
                group_stop,
                extra=log_fields(connector_id=group_stop, id_tag=id_tag),
            )
            self._emit("tap", id_tag=id_tag)
            self._flash(group_stop, IndicatorPattern.ACCEPTED)
            self._transactions.stop_with_tag(group_stop, id_tag)
            return
        log.info("tag presented: %s", mask_id_tag(id_tag), extra={"ID_TAG": mask_id_tag(id_tag)})
        self._emit("tap", id_tag=id_tag)
        # A tap on a running session stops it: same tag, or same parentIdTag (OCPP 1.6 §3.5 / §5.2).
        own = self._transactions.connector_of_tag(id_tag)
        if own is not None:
            self._flash(own, IndicatorPattern.ACCEPTED)
            self._transactions.stop_with_tag(own, id_tag)
            return
        for rt in self._connectors.values():
            if rt.state.session_tag == id_tag and not rt.state.in_transaction:
                self._post(rt.id, cm.Stop("Local"))  # second tap before plugging in: cancel
                return
        answer = await self._authorization.authorize(id_tag)
        accepted, info = answer
        parent = (info or {}).get("parentIdTag")
        if accepted and parent:
            group = self._transactions.connector_of_parent(parent)
            if group is not None:
                self._transactions.stop_with_tag(group, id_tag)
                return
        target = self._reservations.reserved_connector_for(id_tag, parent) or self._reservations.connector_for_tag(
            id_tag
        )
        if not accepted or target is None:
            why = "no free connector" if accepted else getattr(answer, "reason", "") or "not authorized"
            log.info("tag %s refused (%s)", mask_id_tag(id_tag), why, extra={"ID_TAG": mask_id_tag(id_tag)})
            self._emit("refused", id_tag=id_tag)
            self._flash(target.id if target else None, IndicatorPattern.REFUSED)
            return
        self._emit("authorized", connector=target.id, id_tag=id_tag)
        self._flash(target.id, IndicatorPattern.ACCEPTED)
        self._post(target.id, cm.Authorize(id_tag))

    async def remote_start(self, id_tag: str, connector_id: int | None, profile: dict[str, Any] | None) -> None:
        """After RemoteStartTransaction was accepted (§5.11): authorize if AuthorizeRemoteTxRequests, then start."""
        if connector_id in self._connectors and not self._reservations.reservation_allows(connector_id, id_tag):  # type: ignore[arg-type]
            # Defence in depth: the ``@after`` of RemoteStartTransaction runs whatever the answer was.
            log.warning(
                "remote start for %s on reserved connector %d not done",
                mask_id_tag(id_tag),
                connector_id,
                extra=log_fields(connector_id=connector_id, id_tag=id_tag),
            )
            return
        rt = (
            self._connectors.get(connector_id)
            if connector_id is not None
            else self._reservations.connector_for_tag(id_tag)
        )
        if profile is not None and (rt is None or not self._smart.remote_profile_usable(rt.id, profile)):
            return
        if rt is None:
            return
        if self._keys["AuthorizeRemoteTxRequests"]:
            accepted, _info = await self._authorization.authorize(id_tag)
            if not accepted:
                log.info("remote start for %s refused by authorization", mask_id_tag(id_tag))
                self._emit("refused", id_tag=id_tag)
                return
        self._smart.remote_start_profile(rt.id, profile)
        self._emit("authorized", connector=rt.id, id_tag=id_tag, remote=True)
        self._post(rt.id, cm.Authorize(id_tag))
