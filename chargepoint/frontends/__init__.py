"""Front ends: clients of :mod:`chargepoint.api` only (web UI, MQTT / Home Assistant, status socket)."""
