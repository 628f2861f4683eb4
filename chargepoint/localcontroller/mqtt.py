"""The local controller's site view on MQTT (``[local_controller.mqtt]``): a client of :class:`.api.SiteApi`.

The charge point's MQTT front end (:class:`chargepoint.frontends.mqtt.MqttFrontend`) with other topics:
the connection, reconnection with backoff, TLS, MQTT 5 session, last will, retained state coalesced to at
most one publish per topic per second, and the removal of Home Assistant configs no longer published are
the same code. Read-only: no command topic is subscribed (the site view shows, it does not command).

Topics under the prefix (default ``chargepoint/<local controller id>``)::

    <prefix>/status                        online | offline (retained; offline is the last will)
    <prefix>/csms                          connected | offline (the local controller's own identity)
    <prefix>/queued                        messages stored for the central system, all boxes
    <prefix>/site/limit_source             what sets the site limit now (site fuse, group limit, meter …)
    <prefix>/site/L<n>/limit               A, site limit of phase n (1-3)
    <prefix>/site/L<n>/committed           A committed to the charge points on phase n
    <prefix>/site/L<n>/fuse                A, the configured fuse
    <prefix>/cp/<id>/link                  up | down (the box's websocket to us)
    <prefix>/cp/<id>/upstream              connected | connecting | offline (its connection upstream)
    <prefix>/cp/<id>/allocation            A in force on the box (None: only its safe default)
    <prefix>/cp/<id>/measured/L<n>         A measured by the box on site phase n (its phases only)
    <prefix>/cp/<id>/safe_default          A
    <prefix>/cp/<id>/queued                its messages stored for the central system
    <prefix>/cp/<id>/why                   the site policy's reason for the allocation
    <prefix>/discovery                     the Home Assistant config topics last published (retained)

Home Assistant discovery: one device (the local controller) with the site sensors and, per charge point,
its allocation and measured currents; every entity unavailable while ``<prefix>/status`` is offline.
"""

from __future__ import annotations

import json
import logging
import re
from typing import Any

from chargepoint.frontends.mqtt import DeviceInfo, MqttConfig, MqttFrontend, mqtt_number, node_id
from chargepoint.localcontroller.api import SiteApi

log = logging.getLogger(__name__)


def cp_level(cp_id: str) -> str:
    """A charge point id as one topic level: '+' and '#' (allowed in an OCPP identity, not in a topic
    name, MQTT 3.1.1 §4.7) become '_'."""
    return re.sub(r"[+#\x00]", "_", cp_id) or "_"


def site_values(snap: dict[str, Any]) -> dict[str, str]:
    """Relative topic → retained payload for the whole site (pure)."""
    site = snap.get("site") or {}
    out = {
        "csms": str(snap.get("csms") or "offline"),
        "queued": str(snap.get("queued", 0)),
        "site/limit_source": str(site.get("limit_source") or "None"),
    }
    for key, name in (("limit_a", "limit"), ("committed_a", "committed"), ("fuse_a", "fuse")):
        for i, v in enumerate(site.get(key) or []):
            out[f"site/L{i + 1}/{name}"] = mqtt_number(v, 1)
    for b in snap.get("charge_points") or []:
        t = f"cp/{cp_level(str(b.get('id')))}/"
        out[t + "link"] = "up" if b.get("connected") else "down"
        out[t + "upstream"] = str(b.get("upstream") or "offline")
        out[t + "allocation"] = mqtt_number(b.get("allocation_a"), 1)
        out[t + "safe_default"] = mqtt_number(b.get("safe_default_a"), 1)
        out[t + "queued"] = str(b.get("queued", 0))
        out[t + "why"] = str(b.get("why") or "None")
        measured = list(b.get("measured_a") or [])
        for i, phase in enumerate(b.get("phases") or []):
            out[t + f"measured/{phase}"] = mqtt_number(measured[i] if i < len(measured) else None, 1)
    return out


def site_discovery(cfg: MqttConfig, site_id: str, snap: dict[str, Any]) -> dict[str, str]:
    """Home Assistant discovery topic → config JSON for the site's entities (pure)."""
    from chargepoint import __version__

    node = node_id(site_id)
    prefix = cfg.topic_prefix
    common = {
        "availability_topic": f"{prefix}/status", "payload_available": "online", "payload_not_available": "offline",
        "device": {"identifiers": [f"pi-chargepoint-lc_{node}"], "name": f"Local controller {site_id}",
                   "manufacturer": "pi-chargepoint", "model": "local-controller", "sw_version": __version__},
        "origin": {"name": "pi-chargepoint"},
    }
    out: dict[str, str] = {}
    amps = {"device_class": "current", "state_class": "measurement", "unit_of_measurement": "A"}

    def add(component: str, obj: str, name: str, **fields: Any) -> None:
        body = {"name": name, "unique_id": f"lc_{node}_{obj}", **fields, **common}
        out[f"{cfg.discovery_prefix}/{component}/lc_{node}/{obj}/config"] = json.dumps(body, separators=(",", ":"))

    add("sensor", "csms", "Central system link", state_topic=f"{prefix}/csms", device_class="enum",
        options=["connected", "offline"], entity_category="diagnostic")
    add("sensor", "queued", "Queued messages", state_topic=f"{prefix}/queued", state_class="measurement",
        entity_category="diagnostic")
    add("sensor", "limit_source", "Site limit source", state_topic=f"{prefix}/site/limit_source",
        entity_category="diagnostic")
    for i in range(len((snap.get("site") or {}).get("limit_a") or [])):
        ph = f"L{i + 1}"
        add("sensor", f"{ph}_limit", f"Site limit {ph}", state_topic=f"{prefix}/site/{ph}/limit", **amps)
        add("sensor", f"{ph}_committed", f"Committed {ph}", state_topic=f"{prefix}/site/{ph}/committed", **amps)
    for b in snap.get("charge_points") or []:
        cid = str(b.get("id"))
        t = f"{prefix}/cp/{cp_level(cid)}"
        o = f"cp_{node_id(cid)}_"
        add("sensor", o + "allocation", f"{cid} allocation", state_topic=f"{t}/allocation", **amps)
        for phase in b.get("phases") or []:
            add("sensor", o + f"measured_{phase}", f"{cid} current {phase}", state_topic=f"{t}/measured/{phase}",
                **amps)
        add("binary_sensor", o + "link", f"{cid} link", state_topic=f"{t}/link", device_class="connectivity",
            payload_on="up", payload_off="down", entity_category="diagnostic")
        add("sensor", o + "why", f"{cid} allocation reason", state_topic=f"{t}/why", entity_category="diagnostic")
    return out


class SiteMqtt(MqttFrontend):
    """The site on an MQTT broker: ``await start()``; ``await stop()`` publishes ``offline`` and leaves."""

    COMMAND_PATTERNS = ()  # read-only

    def __init__(self, api: SiteApi, config: MqttConfig, site_id: str, **kwargs: Any) -> None:
        super().__init__(api, config, DeviceInfo(site_id, "pi-chargepoint", "local-controller"),  # type: ignore[arg-type]
                         **kwargs)
        self.site = api
        self.site_id = site_id

    def _compose(self) -> tuple[dict[str, str], dict[str, str]]:
        snap = self.site.snapshot()
        self.stats.snapshots += 1
        key = tuple((b.get("id"), tuple(b.get("phases") or [])) for b in snap.get("charge_points") or [])
        if key != self._discovery_key:  # configs change only with the boxes and their phases
            self._discovery_key = key
            self._configs = site_discovery(self.config, self.site_id, snap)
        return site_values(snap), self._configs


async def start_site_mqtt(api: SiteApi, config: MqttConfig | None, site_id: str, **kwargs: Any) -> SiteMqtt | None:
    """The site's MQTT front end when configured, else None. Never raises for a broker that is away: it
    connects in the background and keeps trying."""
    if config is None or not config.enabled:
        return None
    frontend = SiteMqtt(api, config, site_id, **kwargs)
    await frontend.start()
    return frontend


__all__ = ["SiteMqtt", "site_discovery", "site_values", "start_site_mqtt"]
